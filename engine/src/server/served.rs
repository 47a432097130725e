//! What a reload replaces: the key index, the opened key stores and the TLS
//! configuration, as one value ([`Served`]) shared by every core, and each
//! core's own view of it ([`CoreServed`]: its part of every store, its TLS
//! acceptor).
//!
//! Design (issue 14, "reload"): the control plane builds a complete new
//! [`Served`] off the reactors (`crate::reload`) and stores it in the
//! process's [`Swap`] cell. Each core's control task, which already wakes
//! every `CONTROL_POLL` for the drain flag and the heartbeat, compares the
//! cell's generation (one atomic load) with its own; on a change it loads
//! the new value, builds a [`CoreServed`] on its own thread (keeping its
//! part of every store that is the same `Arc` as before, so PKCS#11 sessions
//! of an unchanged store stay open), swaps it into the core and wakes every
//! connection. A connection reads the core's `Rc<CoreServed>` once per turn
//! (a `Cell<u64>` compare, no lock, no atomic) and a handshake takes the
//! acceptor when it starts, so: new keys serve from the next turn, removed
//! keys answer `0x02`, new TLS material applies to new connections,
//! established connections keep their TLS session, and a request already
//! with a backend holds the generation it started on until it completes.
//!
//! Adding reloadable state: add a field to [`Served`], build it in
//! `crate::load::build`, and read it on the data path through the
//! connection's `CoreServed::served` (as the key policies are).
//!
//! Must not: read files or the configuration (building is `reload`'s job),
//! or be looked up through the [`Swap`] on the data path.

#[cfg(doc)]
use crate::swap::Swap;
use keycore_keys::{CoreStore, KeyIndex, KeyStore};
use std::rc::Rc;
use std::sync::Arc;

/// The opened key stores, shared by every core, in `StoreId` order (the
/// registry's `open_all`). Each core takes its own part.
pub type Stores = Vec<Arc<dyn KeyStore>>;

/// The reloadable state every core serves from.
#[derive(Debug)]
pub struct Served {
    /// Every key, by SKI and legacy digest.
    pub keys: Arc<KeyIndex>,
    /// The opened key stores, in `StoreId` order.
    pub stores: Stores,
    /// The server's TLS configuration (certificate, key, client CA, and
    /// the client-identity allow-list's verifier).
    pub tls: Arc<rustls::ServerConfig>,
    /// The key policies compiled against `keys` (issue 18): reloaded with
    /// the keys, since a policy is indexed by key.
    pub policy: Arc<crate::security::Policy>,
    /// The client identities' allow-list and limits (issue 18; the same
    /// rules `tls`'s verifier admits by). Established connections are
    /// checked again when their core takes a new generation up.
    pub clients: Arc<crate::security::ClientRules>,
}

/// One core's view of a [`Served`]: its part of every store and its
/// acceptor. Lives in an `Rc` on its reactor.
pub struct CoreServed {
    /// The shared state.
    pub served: Arc<Served>,
    /// This core's part of every store, indexed by `StoreId`.
    pub stores: Vec<Rc<dyn CoreStore>>,
    /// TLS acceptor for new connections.
    pub acceptor: futures_rustls::TlsAcceptor,
}

impl std::fmt::Debug for CoreServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreServed")
            .field("keys", &self.served.keys.len())
            .field("stores", &self.stores.len())
            .finish()
    }
}

impl CoreServed {
    /// Core `core`'s view of `served`, built on that core's reactor thread.
    /// A store that is the same `Arc` as one of `previous`'s keeps its
    /// existing core part (sessions, worker threads, batches).
    pub fn build(served: Arc<Served>, core: usize, previous: Option<&CoreServed>) -> CoreServed {
        let stores = served
            .stores
            .iter()
            .map(|s| {
                let kept = previous.and_then(|p| {
                    p.served
                        .stores
                        .iter()
                        .position(|old| Arc::ptr_eq(old, s))
                        .map(|i| p.stores[i].clone())
                });
                kept.unwrap_or_else(|| Rc::from(s.clone().core(core)))
            })
            .collect();
        CoreServed {
            acceptor: futures_rustls::TlsAcceptor::from(served.tls.clone()),
            stores,
            served,
        }
    }
}
