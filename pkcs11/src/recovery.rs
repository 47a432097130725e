//! The control path of one partition: logging in again, re-initialising the
//! module and probing, done once per event on one thread per partition,
//! rate-limited, never on a reactor and never by the workers that serve.
//!
//! Owns: [`Recovery`] (what is wanted, an epoch that moves when a step
//! finishes, and the condition variables workers wait on) and the thread
//! that carries the steps out.
//! Must not: answer requests, or hold the module's gate while waiting.
//!
//! How it is used (docs/pkcs11/README.md "Failure policy"):
//! - a worker whose operation got `CKR_USER_NOT_LOGGED_IN` asks for a login
//!   with the login epoch it saw before its call; the thread logs in once on
//!   the control session (the login belongs to the application, so every
//!   session is logged in again) and the worker retries the request;
//! - a worker whose operation says the module lost the device asks for a
//!   re-initialisation with the module generation it saw; the thread does it
//!   once (at most one per [`REINIT_MIN_INTERVAL`]);
//! - a run of failures across sessions ([`super::token::SUSPECT_STREAK`])
//!   asks for a probe: find the token, open a session, see the keys. Only a
//!   failed probe takes the partition out; while out, the thread probes again
//!   with the partition's backoff (20 ms doubling to 2 s) and brings it back.

use super::token::{now_ns, Partition, TokenError};
use keycore_keys::error_chain;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Shortest time between two module re-initialisations of one partition: a
/// burst of "device gone" answers costs one `C_Finalize`/`C_Initialize`.
pub const REINIT_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often the thread looks at a partition that is out (for its next
/// probe) when nothing is asked of it.
const TICK: Duration = Duration::from_millis(20);
/// How often an idle thread checks that its store still exists (asks wake
/// it at once).
const IDLE_TICK: Duration = Duration::from_millis(250);

/// A step a worker may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Log in again, unless the login epoch already moved past this value.
    Login(u64),
    /// Re-initialise the module, unless its generation moved past this value.
    Reinit(u64),
    /// Check the partition (token, session, keys).
    Probe,
}

#[derive(Debug, Default)]
struct Ctl {
    /// Bumped after every finished round of steps.
    epoch: u64,
    login: Option<u64>,
    reinit: Option<u64>,
    probe: bool,
    /// When the last re-initialisation ran ([`now_ns`]).
    last_reinit_ns: u64,
}

/// One partition's control-path state (a field of [`Partition`]).
#[derive(Debug, Default)]
pub struct Recovery {
    ctl: Mutex<Ctl>,
    /// The thread waits here for work.
    work: Condvar,
    /// Workers wait here for the epoch to move.
    changed: Condvar,
    started: AtomicBool,
}

impl Recovery {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch (to wait past after asking for something).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Wait until the epoch moves past `seen` or `deadline_ns` ([`now_ns`])
    /// passes. Returns whether it moved.
    pub fn wait_past(&self, seen: u64, deadline_ns: u64) -> bool {
        let mut c = self.lock();
        loop {
            if c.epoch != seen {
                return true;
            }
            let now = now_ns();
            if now >= deadline_ns {
                return false;
            }
            let wait = Duration::from_nanos(deadline_ns - now);
            c = self
                .changed
                .wait_timeout(c, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Ask `part`'s control path for `w`; returns the epoch to wait past.
/// Starts the partition's recovery thread on first use.
pub fn want(part: &Arc<Partition>, w: Want) -> u64 {
    let r = &part.recovery;
    if !r.started.swap(true, Ordering::AcqRel) {
        let weak = Arc::downgrade(part);
        let rec = part.recovery.clone();
        let name = format!("p11-recover-p{}", part.index);
        if std::thread::Builder::new()
            .name(name)
            .spawn(move || run(rec, weak))
            .is_err()
        {
            // No thread: allow the next caller to try again.
            r.started.store(false, Ordering::Release);
        }
    }
    let mut c = r.lock();
    match w {
        Want::Login(seen) => c.login = Some(c.login.map_or(seen, |s| s.max(seen))),
        Want::Reinit(g) => c.reinit = Some(c.reinit.map_or(g, |s| s.max(g))),
        Want::Probe => c.probe = true,
    }
    r.work.notify_one();
    c.epoch
}

/// The recovery thread: lives while the partition does. It waits on the
/// shared [`Recovery`] without holding the partition, so a dropped store's
/// sessions close at once.
fn run(rec: Arc<Recovery>, weak: Weak<Partition>) {
    loop {
        let (tick, due) = match weak.upgrade() {
            None => return,
            Some(p) => (
                if p.health.is_up() { IDLE_TICK } else { TICK },
                !p.health.is_up() && p.health.usable(),
            ),
        };
        let (login, reinit, probe, last_reinit) = {
            let mut c = rec.lock();
            if c.login.is_none() && c.reinit.is_none() && !c.probe && !due {
                c = rec
                    .work
                    .wait_timeout(c, tick)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let probe = std::mem::take(&mut c.probe) || due;
            (c.login.take(), c.reinit.take(), probe, c.last_reinit_ns)
        };
        if login.is_none() && reinit.is_none() && !probe {
            continue;
        }
        let Some(p) = weak.upgrade() else {
            return;
        };
        let mut probe = probe;
        if let Some(gen) = reinit {
            if gen == p.module.generation() {
                // Rate limit: one re-initialisation per interval.
                let next = last_reinit + REINIT_MIN_INTERVAL.as_nanos() as u64;
                let now = now_ns();
                if now < next {
                    std::thread::sleep(Duration::from_nanos(next - now));
                }
                p.recovery.lock().last_reinit_ns = now_ns();
                match p.module.reinit(gen) {
                    Ok(()) => p.health.reinitialised(),
                    Err(e) => p
                        .health
                        .note_error(&format!("re-initialisation: {}", error_chain(&e))),
                }
            }
            // After a re-initialisation the token and login must be found again.
            probe = true;
        }
        if let Some(seen) = login {
            if p.health.login_epoch() <= seen {
                match p.relogin() {
                    Ok(()) => p.health.relogged(),
                    Err(e) => {
                        p.health
                            .note_error(&format!("login again: {}", error_chain(&e)));
                        probe = true;
                    }
                }
            }
        }
        if probe {
            match p.probe() {
                Ok(()) => {
                    p.health.probed(true);
                    p.health.ok();
                }
                Err(first) => {
                    // The module may have lost its state (token gone and
                    // back): re-initialise once, rate-limited, and look again.
                    let last = p.recovery.lock().last_reinit_ns;
                    let r = if now_ns() >= last + REINIT_MIN_INTERVAL.as_nanos() as u64 {
                        p.recovery.lock().last_reinit_ns = now_ns();
                        let gen = p.module.generation();
                        p.module
                            .reinit(gen)
                            .map_err(TokenError::from)
                            .and_then(|()| {
                                p.health.reinitialised();
                                p.probe()
                            })
                            .map_err(|e| error_chain(&e))
                    } else {
                        Err(error_chain(&first))
                    };
                    match r {
                        Ok(()) => {
                            p.health.probed(true);
                            p.health.ok();
                        }
                        Err(e) => {
                            p.health.probed(false);
                            p.health
                                .fail(&format!("probe failed: {}; {e}", error_chain(&first)));
                        }
                    }
                }
            }
        }
        let mut c = p.recovery.lock();
        c.epoch += 1;
        p.recovery.changed.notify_all();
    }
}
