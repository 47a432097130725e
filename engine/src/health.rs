//! Liveness and readiness: what `GET /healthz` and `GET /readyz` answer.
//!
//! Owns: [`Health`], which judges the per-core [`Heartbeat`]s (single-writer
//! atomics in each core's `CoreStats`, stored by the reactor's control task
//! every `CONTROL_POLL`; they live in `metrics.rs` with the other per-core
//! atomics so that module does not import this one), and
//! judges them (liveness) and runs the start-up readiness checks (keys
//! loaded, every PKCS#11 key with a healthy partition, not draining).
//!
//! Liveness means "every reactor still turns": a core whose control task has
//! not run for [`HEARTBEAT_DEADLINE`] is stuck (a blocking call on the
//! reactor, a panic that killed its thread) and the answer names it. It is
//! not a load signal: a busy core still beats, because its control task is a
//! task like any connection's.
//!
//! Must not: take a lock or allocate on a reactor (a reactor only stores its
//! own atomic); probes run on the metrics endpoint's threads and read.

#[cfg(doc)]
use crate::metrics::Heartbeat;
use crate::metrics::{now_ms, CoreStats, STOPPED};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A core whose control task has not run for this long is reported stuck.
/// The control task ticks every 20 ms; 5 s leaves room for a reactor that is
/// busy with a long batch of RSA-4096 signatures (hundreds of ms per turn
/// under overload) without calling it dead, and is still well inside what an
/// orchestrator's liveness probe (period × failure threshold) waits.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(5);

/// A readiness check: `Err(reason)` while the process should not get traffic.
pub type ReadyCheck = Box<dyn Fn() -> Result<(), Unready> + Send + Sync>;

/// Why the process should not get traffic now (`/readyz`'s 503 text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unready {
    /// A drain has begun.
    #[error("draining")]
    Draining,
    /// No key is served.
    #[error("no private keys loaded")]
    NoKeys,
    /// A key store cannot serve its keys (it says which and why).
    #[error(transparent)]
    Store(#[from] keycore_keys::NotReady),
}

/// Why the process is not live (`/healthz`'s 503 text): one line per
/// stuck core, or no reactor at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotLive {
    /// No reactor was started (or every one is gone).
    #[error("no reactor running\n")]
    NoReactor,
    /// These cores missed the heartbeat deadline (one line each).
    #[error("{}", stuck_lines(.0))]
    Stuck(Vec<StuckCore>),
}

/// A core that missed the heartbeat deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StuckCore {
    /// The core.
    pub core: usize,
    /// Milliseconds since its last heartbeat; `None`: it never beat.
    pub last_beat_ms_ago: Option<u64>,
    /// The deadline it missed, ms.
    pub deadline_ms: u64,
}

fn stuck_lines(stuck: &[StuckCore]) -> String {
    let mut s = String::new();
    for c in stuck {
        let _ = match c.last_beat_ms_ago {
            None => writeln!(s, "core {}: stuck: never answered", c.core),
            Some(ago) => writeln!(
                s,
                "core {}: stuck: last heartbeat {ago} ms ago (deadline {} ms)",
                c.core, c.deadline_ms
            ),
        };
    }
    s
}

/// Liveness and readiness of the process, shared with the metrics endpoint.
pub struct Health {
    draining: AtomicBool,
    checks: Vec<ReadyCheck>,
    heartbeat_deadline: Duration,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("draining", &self.draining.load(Relaxed))
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Vec::new(), HEARTBEAT_DEADLINE)
    }
}

impl Health {
    /// Readiness `checks` (all must pass) and the heartbeat deadline.
    pub fn new(checks: Vec<ReadyCheck>, heartbeat_deadline: Duration) -> Health {
        Health {
            draining: AtomicBool::new(false),
            checks,
            heartbeat_deadline,
        }
    }

    /// The process is draining: `/readyz` answers 503 from now on so load
    /// balancers stop sending new connections.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Whether [`Self::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// `Ok(text)` when every core beat within the deadline (or exited
    /// normally), else `Err(text)` naming each stuck core and how long ago it
    /// last beat.
    pub fn live(&self, cores: &[Arc<CoreStats>]) -> Result<String, NotLive> {
        let now = now_ms();
        let deadline = self.heartbeat_deadline.as_millis() as u64;
        let mut stuck = Vec::new();
        let mut ok = String::new();
        for c in cores {
            match c.heartbeat.get() {
                STOPPED => {
                    let _ = writeln!(ok, "core {}: stopped (drained)", c.core);
                }
                0 => stuck.push(StuckCore {
                    core: c.core,
                    last_beat_ms_ago: None,
                    deadline_ms: deadline,
                }),
                t if now.saturating_sub(t) > deadline => stuck.push(StuckCore {
                    core: c.core,
                    last_beat_ms_ago: Some(now - t),
                    deadline_ms: deadline,
                }),
                t => {
                    let _ = writeln!(ok, "core {}: ok ({} ms ago)", c.core, now.saturating_sub(t));
                }
            }
        }
        if cores.is_empty() {
            return Err(NotLive::NoReactor);
        }
        if stuck.is_empty() {
            Ok(ok)
        } else {
            Err(NotLive::Stuck(stuck))
        }
    }

    /// `Ok(())` when the process should get traffic, else a short reason.
    pub fn ready(&self) -> Result<(), Unready> {
        if self.is_draining() {
            return Err(Unready::Draining);
        }
        for c in &self.checks {
            c()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(n: usize) -> Vec<Arc<CoreStats>> {
        (0..n).map(|i| Arc::new(CoreStats::new(i))).collect()
    }

    #[test]
    fn live_while_every_core_beats_and_names_the_stuck_one() {
        let h = Health::new(Vec::new(), Duration::from_millis(200));
        let c = cores(3);
        for x in &c {
            x.heartbeat.beat();
        }
        assert!(h.live(&c).is_ok());
        // Core 1 last beat long ago: it is named, the others are not.
        // now_ms() counts from the first call in this process: run alone,
        // this test starts near 0, where "long ago" cannot be expressed, so
        // first let the clock pass the deadline by a margin.
        let wait = 400u64.saturating_sub(now_ms());
        std::thread::sleep(Duration::from_millis(wait));
        for x in &c {
            x.heartbeat.beat();
        }
        c[1].heartbeat.set_ms(1);
        let err = h.live(&c).unwrap_err();
        assert!(
            matches!(&err, NotLive::Stuck(s) if s.len() == 1 && s[0].core == 1
                && s[0].last_beat_ms_ago.is_some_and(|ms| ms > 200)
                && s[0].deadline_ms == 200),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("core 1: stuck"), "{err}");
        assert!(!err.contains("core 0") && !err.contains("core 2"), "{err}");
        // A core that exited after a drain is not stuck.
        c[1].heartbeat.stop();
        assert!(h.live(&c).unwrap().contains("core 1: stopped"));
        // A core that never beat is stuck.
        c[2].heartbeat.set_ms(0);
        assert!(h
            .live(&c)
            .unwrap_err()
            .to_string()
            .contains("core 2: stuck: never"));
        assert!(h.live(&[]).is_err());
    }

    #[test]
    fn ready_runs_every_check_and_draining_wins() {
        let flag = Arc::new(AtomicBool::new(false));
        let f2 = flag.clone();
        let h = Health::new(
            vec![
                Box::new(|| Ok(())),
                Box::new(move || {
                    if f2.load(Relaxed) {
                        Ok(())
                    } else {
                        Err(keycore_keys::NotReady {
                            store: "pkcs11",
                            detail: "token gone".into(),
                        }
                        .into())
                    }
                }),
            ],
            HEARTBEAT_DEADLINE,
        );
        assert_eq!(h.ready().unwrap_err().to_string(), "pkcs11: token gone");
        flag.store(true, Relaxed);
        assert!(h.ready().is_ok());
        h.set_draining();
        assert_eq!(h.ready().unwrap_err(), Unready::Draining);
    }
}
