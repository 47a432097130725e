//! [`Swap`]: a value the control plane replaces as a whole and readers
//! pick up by generation, the cell behind reload.
//!
//! Readers on a reactor never lock on the data path: a core's control task
//! (every `CONTROL_POLL`) compares [`Swap::generation`] (one relaxed-acquire
//! atomic load) with the generation it holds and only on a change calls
//! [`Swap::load`] (a short mutex hold to clone the `Arc`, on the control
//! path). Connections then read the core's own copy once per turn
//! (`server::CoreCtx::served`), so a request never touches the mutex.
//!
//! Owns nothing but the cell. Must not: hold a value's lock while building
//! the next one (the writer builds first, then [`Swap::store`]s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A shared `Arc<T>` replaced as a whole; each replacement bumps a
/// generation counter readers compare cheaply.
#[derive(Debug)]
pub struct Swap<T> {
    generation: AtomicU64,
    current: Mutex<Arc<T>>,
}

impl<T> Swap<T> {
    /// A cell holding `value` at generation 1.
    pub fn new(value: Arc<T>) -> Swap<T> {
        Swap {
            generation: AtomicU64::new(1),
            current: Mutex::new(value),
        }
    }

    /// The generation of the value now in the cell (starts at 1, +1 per
    /// [`Swap::store`]).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation. Control plane: takes the
    /// mutex for the time of an `Arc` clone.
    pub fn load(&self) -> (Arc<T>, u64) {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (g.clone(), self.generation.load(Ordering::Acquire))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.load().0
    }

    /// Replace the value; returns the new generation. Readers holding the
    /// old `Arc` keep it until they look again.
    pub fn store(&self, value: Arc<T>) -> u64 {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *g = value;
        // Bumped under the lock, so `load` never pairs a value with a
        // generation it does not belong to.
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

impl<T: Default> Default for Swap<T> {
    fn default() -> Self {
        Swap::new(Arc::new(T::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_bumps_the_generation_and_old_readers_keep_their_value() {
        let s = Swap::new(Arc::new(1));
        let (old, g1) = s.load();
        assert_eq!((*old, g1), (1, 1));
        assert_eq!(s.store(Arc::new(2)), 2);
        assert_eq!(s.generation(), 2);
        assert_eq!(*old, 1, "a reader's copy is untouched by the swap");
        assert_eq!(*s.get(), 2);
    }
}
