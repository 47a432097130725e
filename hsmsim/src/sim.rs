//! The simulated device: what happens to one call between the application and the real module.
//! Owns the live config (re-read from its file while running), the partition's crypto cores and
//! rate budget, the session table (live, dead, and each session's running mechanism) and the
//! fault state (logged out, token removed, idle drop). Must not touch the real module's state
//! behind the caller's back: a fault never closes or logs out a real session (another thread may
//! be inside the real module on it); the simulator answers on the real module's behalf instead.
//!
//! Locks are fine here: this code *simulates* a device whose cores are a shared resource. The
//! counting semaphore is FIFO (ticket order) so queueing looks like a real HSM's request queue.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cryptoki_sys::{
    CKR_OK, CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN,
    CK_FUNCTION_LIST, CK_MECHANISM_TYPE, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{Capacity, Config, FaultKind, Latency};
use crate::func::Func;

/// How long a queued caller sleeps before re-checking the core count (covers a reload that
/// raised `max_concurrent` while nobody released a core).
const CORE_WAIT_RECHECK: Duration = Duration::from_millis(50);

/// Token bucket as GCRA (generic cell rate algorithm): reserves the next start slot for a call
/// that reached the device at `ready`, given the theoretical arrival time `tat` of the next call.
/// Calls start at most `rate` per second, with up to `burst` back to back after an idle spell.
/// Pure, so it is tested without clocks.
fn gcra_reserve(tat: &mut Option<Instant>, ready: Instant, rate: f64, burst: u32) -> Instant {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let tolerance = interval * burst.saturating_sub(1);
    let t = tat.map_or(ready, |t| t.max(ready));
    let start = t.checked_sub(tolerance).map_or(ready, |s| s.max(ready));
    *tat = Some(t + interval);
    start
}

/// What the shaper needs to know about one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub func: Func,
    pub session: Option<CK_SESSION_HANDLE>,
    pub slot: Option<CK_SLOT_ID>,
    /// The mechanism passed to this call (`*Init`, key generation, wrap/unwrap/derive).
    pub mech: Option<CK_MECHANISM_TYPE>,
    /// A size query (output buffer NULL): real client libraries answer these without a round
    /// trip, so they are forwarded at once and neither timed, counted nor faulted.
    pub length_query: bool,
}

impl Call {
    pub fn none(func: Func) -> Call {
        Call {
            func,
            session: None,
            slot: None,
            mech: None,
            length_query: false,
        }
    }
    pub fn slot(func: Func, slot: CK_SLOT_ID) -> Call {
        Call {
            slot: Some(slot),
            ..Call::none(func)
        }
    }
    pub fn session(func: Func, session: CK_SESSION_HANDLE) -> Call {
        Call {
            session: Some(session),
            ..Call::none(func)
        }
    }
    pub fn mech(self, mech: Option<CK_MECHANISM_TYPE>) -> Call {
        Call { mech, ..self }
    }
    pub fn length_query(self, is_query: bool) -> Call {
        Call {
            length_query: is_query && self.func.is_crypto(),
            ..self
        }
    }
}

/// A config plus the fault counters that belong to it (they restart when the file changes).
struct Active {
    cfg: Config,
    /// Per fault: matching calls seen, times fired.
    counters: Vec<(AtomicU64, AtomicU64)>,
}

impl Active {
    fn new(cfg: Config) -> Arc<Active> {
        let counters = cfg
            .faults
            .iter()
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect();
        Arc::new(Active { cfg, counters })
    }
}

/// The live config and the file it comes from.
struct ConfigHolder {
    path: Option<PathBuf>,
    active: RwLock<Arc<Active>>,
    /// Earliest time (ns since `epoch`) the next `stat` may happen; claimed by CAS so exactly
    /// one caller polls per interval.
    next_poll_ns: AtomicU64,
    /// (mtime, length, inode) of the file last loaded; a change means "re-read".
    stamp: Mutex<Option<(SystemTime, u64, u64)>>,
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl ConfigHolder {
    fn current(&self, epoch: Instant) -> Arc<Active> {
        let active = lock_read(&self.active);
        if let Some(path) = &self.path {
            let now_ns = epoch.elapsed().as_nanos() as u64;
            let next = self.next_poll_ns.load(Ordering::Relaxed);
            let interval_ns = active.cfg.reload_interval.as_nanos() as u64;
            if now_ns >= next
                && self
                    .next_poll_ns
                    .compare_exchange(
                        next,
                        now_ns + interval_ns,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                drop(active);
                self.poll(path);
                return lock_read(&self.active);
            }
        }
        active
    }

    fn poll(&self, path: &std::path::Path) {
        let stamp = file_stamp(path);
        let mut last = lock(&self.stamp);
        if stamp.is_none() || stamp == *last {
            // Missing file: keep the last good config (a test may be replacing it).
            return;
        }
        *last = stamp;
        drop(last);
        match Config::load(path) {
            Ok(cfg) => *self.active.write().unwrap_or_else(|e| e.into_inner()) = Active::new(cfg),
            // A library has no other channel to its user; this happens once per file change.
            Err(e) => eprintln!("keycore-hsmsim: keeping the previous config: {e}"),
        }
    }
}

/// The partition's crypto cores: a FIFO counting semaphore that also keeps the cores' timeline.
struct Cores {
    state: Mutex<CoreState>,
    released: Condvar,
}

struct CoreState {
    /// Next ticket to hand out. Ticket t may run when t < released + max, so callers enter in
    /// arrival order and at most `max` are inside.
    next_ticket: u64,
    released: u64,
    /// When released cores became free in simulated time. A queued caller starts its service
    /// at that time, not when its thread got scheduled: host wake-up delays must not cost the
    /// simulated device capacity.
    free_at: BinaryHeap<Reverse<Instant>>,
}

struct CoreGuard<'a> {
    cores: &'a Cores,
    /// Simulated start of service on this core.
    start: Instant,
    /// Simulated end of service (set by the caller before release).
    end: Instant,
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.cores.state);
        st.released += 1;
        st.free_at.push(Reverse(self.end));
        drop(st);
        self.cores.released.notify_all();
    }
}

impl Cores {
    /// Waits for a core; `ready` is when the request reached the device (simulated time).
    fn acquire(&self, max: u32, ready: Instant) -> CoreGuard<'_> {
        let max = max as u64;
        let mut st = lock(&self.state);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        while ticket >= st.released + max {
            st = self
                .released
                .wait_timeout(st, CORE_WAIT_RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // Every release pushes one time and every acquire pops one, so the heap holds the free
        // times of idle cores; an empty heap means a never-used core (free since forever).
        let freed = st.free_at.pop().map_or(ready, |Reverse(t)| t);
        let start = ready.max(freed);
        CoreGuard {
            cores: self,
            start,
            end: start,
        }
    }
}

#[derive(Default)]
struct Sessions {
    /// Open sessions: slot and the mechanism of the running operation.
    live: HashMap<CK_SESSION_HANDLE, (CK_SLOT_ID, Option<CK_MECHANISM_TYPE>)>,
    /// Sessions a fault killed (handle -> slot). The real session stays open until the
    /// application closes the handle.
    dead: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
}

/// A removed token: until when (None = while the config has a token_removed fault), and what
/// session calls return meanwhile.
#[derive(Clone, Copy)]
struct Removal {
    until: Option<Instant>,
    rv: CK_RV,
}

/// The simulated device.
pub(crate) struct Sim {
    real: &'static CK_FUNCTION_LIST,
    epoch: Instant,
    config: ConfigHolder,
    cores: Cores,
    /// Token bucket as GCRA: the theoretical arrival time of the next operation.
    tat: Mutex<Option<Instant>>,
    sessions: Mutex<Sessions>,
    /// Set by a logout fault / idle drop / token removal; cleared by a successful C_Login.
    forced_logout: AtomicBool,
    removal: Mutex<Option<Removal>>,
    /// Fast check before taking `removal`'s lock.
    removed: AtomicBool,
    /// Time of the last call (ns since `epoch`, 0 = none yet), for the idle drop.
    last_call_ns: AtomicU64,
    /// Seed for per-thread RNGs (the config's `seed`, or fresh from the OS).
    seed: u64,
    thread_counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data consistent; keep simulating.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_read(l: &RwLock<Arc<Active>>) -> Arc<Active> {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// How late `thread::sleep` wakes up on this host, as a moving average (ns). On a busy machine
/// a wake-up is often 0.1-1 ms late; three sleeps per call would bias every configured mean by
/// that much, so each sleep asks to wake this much early and the mean lands on the deadline.
static OVERSHOOT_NS: AtomicU64 = AtomicU64::new(0);
/// Weight of a new observation in `OVERSHOOT_NS` (1/16: smooth, adapts within ~50 sleeps).
const OVERSHOOT_EWMA_SHIFT: u32 = 4;
/// Largest lateness fed to the average: one descheduled outlier must not skew it for long.
const OVERSHOOT_SAMPLE_CAP: Duration = Duration::from_millis(2);

/// Sleeps until `deadline`, correcting for the host's mean wake-up lateness.
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    let remaining = deadline - now;
    // Never ask for less than half the time: the correction must not eat a short sleep.
    let early = Duration::from_nanos(OVERSHOOT_NS.load(Ordering::Relaxed)).min(remaining / 2);
    let requested = remaining - early;
    std::thread::sleep(requested);
    let late = now
        .elapsed()
        .saturating_sub(requested)
        .min(OVERSHOOT_SAMPLE_CAP)
        .as_nanos() as i64;
    let old = OVERSHOOT_NS.load(Ordering::Relaxed) as i64;
    let new = old + ((late - old) >> OVERSHOOT_EWMA_SHIFT);
    OVERSHOOT_NS.store(new.max(0) as u64, Ordering::Relaxed);
}

thread_local! {
    static RNG: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// The outcome of the fault check for one call.
enum Verdict {
    Proceed,
    /// Stall this long, then fail with the value or (None) proceed.
    Hang(Duration, Option<CK_RV>),
    /// Answer with this value (the real operation, if any, is ended first).
    Fail(CK_RV),
    /// Answer with this value; the call's session is dead so nothing is forwarded.
    FailDead(CK_RV),
}

impl Sim {
    pub fn new(real: &'static CK_FUNCTION_LIST, cfg: Config, path: Option<PathBuf>) -> Sim {
        let stamp = path.as_deref().and_then(file_stamp);
        let seed = cfg.seed.unwrap_or_else(|| rand::rng().random());
        let epoch = Instant::now();
        Sim {
            real,
            epoch,
            config: ConfigHolder {
                path,
                active: RwLock::new(Active::new(cfg)),
                next_poll_ns: AtomicU64::new(0),
                stamp: Mutex::new(stamp),
            },
            cores: Cores {
                state: Mutex::new(CoreState {
                    next_ticket: 0,
                    released: 0,
                    free_at: BinaryHeap::new(),
                }),
                released: Condvar::new(),
            },
            tat: Mutex::new(None),
            sessions: Mutex::new(Sessions::default()),
            forced_logout: AtomicBool::new(false),
            removal: Mutex::new(None),
            removed: AtomicBool::new(false),
            last_call_ns: AtomicU64::new(0),
            seed,
            thread_counter: AtomicU64::new(0),
        }
    }

    pub fn real(&self) -> &'static CK_FUNCTION_LIST {
        self.real
    }

    /// Forget all device state (C_Initialize / C_Finalize).
    pub fn reset(&self) {
        *lock(&self.sessions) = Sessions::default();
        self.forced_logout.store(false, Ordering::Relaxed);
        *lock(&self.removal) = None;
        self.removed.store(false, Ordering::Relaxed);
        self.last_call_ns.store(0, Ordering::Relaxed);
    }

    fn sample(&self, l: &Latency) -> Duration {
        if l.median_us == 0 || l.sigma == 0.0 {
            return l.sample_with(0.0);
        }
        let z = RNG.with(|cell| {
            let mut cell = cell.borrow_mut();
            let rng = cell.get_or_insert_with(|| {
                let n = self.thread_counter.fetch_add(1, Ordering::Relaxed);
                SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            });
            // Box-Muller: a standard normal draw from two uniforms.
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1], so ln is finite
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        });
        l.sample_with(z)
    }

    fn chance(&self, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        RNG.with(|cell| {
            let mut cell = cell.borrow_mut();
            let rng = cell.get_or_insert_with(|| {
                let n = self.thread_counter.fetch_add(1, Ordering::Relaxed);
                SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            });
            rng.random::<f64>() < rate
        })
    }

    /// Runs one call through the simulated device. `forward` makes the real call.
    pub fn run(&self, call: Call, forward: impl FnOnce(&CK_FUNCTION_LIST) -> CK_RV) -> CK_RV {
        let active = self.config.current(self.epoch);
        let cfg = &active.cfg;
        let now = Instant::now();
        self.check_idle(cfg, now);
        if let Some(rv) = self.removed_answer(cfg, &call, now) {
            return rv;
        }
        if let Some(h) = call.session {
            if lock(&self.sessions).dead.contains_key(&h) {
                return CKR_SESSION_HANDLE_INVALID;
            }
        }
        if call.length_query {
            return forward(self.real);
        }
        // `ready`: when the request reaches the device, in simulated time. Later stages start
        // from it rather than from when this thread woke, so wake-up delays do not add up.
        // The round trip is two legs: the request before the device sees the call, the
        // response after it answered (the real module's own time for cheap calls hides there).
        let leg = if cfg.rtt.is_zero() {
            Duration::ZERO
        } else {
            self.sample(&cfg.rtt) / 2
        };
        let mut ready = now + leg;
        sleep_until(ready);
        let mut verdict = self.check_faults(&active, &call);
        if let Verdict::Hang(duration, then_rv) = verdict {
            ready += duration;
            sleep_until(ready);
            verdict = then_rv.map_or(Verdict::Proceed, Verdict::Fail);
        }
        if matches!(verdict, Verdict::Proceed) && call.func.needs_login() && self.is_logged_out() {
            verdict = Verdict::Fail(CKR_USER_NOT_LOGGED_IN);
        }
        match verdict {
            Verdict::Proceed | Verdict::Hang(..) => {}
            Verdict::FailDead(rv) => return rv,
            Verdict::Fail(rv) => {
                if call.func.is_op_step() {
                    // PKCS#11: a failed step ends the operation. Let the real module end it too,
                    // or the caller's next *Init would get CKR_OPERATION_ACTIVE.
                    forward(self.real);
                    if let (Some(fin), Some(h)) = (call.func.final_for_update(), call.session) {
                        crate::ffi::end_operation(self.real, fin, h);
                    }
                    self.set_mechanism(call.session, None);
                }
                sleep_until(ready + leg);
                return rv;
            }
        }

        // Only crypto calls are timed by mechanism: a *Init carries the mechanism but does no
        // work (it is timed by its function entry or the default).
        let mech = if !call.func.is_crypto() {
            None
        } else if call.mech.is_some() {
            call.mech
        } else {
            call.session
                .and_then(|h| lock(&self.sessions).live.get(&h).and_then(|s| s.1))
        };
        let service = cfg.service_latency(call.func, mech);
        let (rv, answered) = if call.func.is_crypto() {
            let ready = self.wait_for_rate(&cfg.capacity, ready);
            match cfg.capacity.max_concurrent {
                Some(max) => {
                    let mut core = self.cores.acquire(max, ready);
                    let (rv, end) = self.serve(core.start, service, forward);
                    core.end = end;
                    (rv, end)
                }
                None => self.serve(ready, service, forward),
            }
        } else {
            self.serve(ready, service, forward)
        };
        sleep_until(answered + leg);
        if call.func.is_op_init() && rv == CKR_OK {
            self.set_mechanism(call.session, call.mech);
        }
        rv
    }

    /// The real call, padded so it ends at `start` + the sampled service time (the real
    /// module's own time counts toward it; if the real module is slower, its time wins).
    /// Returns the value and the simulated end of service.
    fn serve(
        &self,
        start: Instant,
        service: &Latency,
        forward: impl FnOnce(&CK_FUNCTION_LIST) -> CK_RV,
    ) -> (CK_RV, Instant) {
        if service.is_zero() {
            return (forward(self.real), start);
        }
        let end = start + self.sample(service);
        let rv = forward(self.real);
        sleep_until(end);
        (rv, end)
    }

    /// Waits for a token; returns the simulated time the call may start (>= `ready`).
    fn wait_for_rate(&self, cap: &Capacity, ready: Instant) -> Instant {
        let Some(rate) = cap.max_ops_per_sec else {
            return ready;
        };
        let start = gcra_reserve(&mut lock(&self.tat), ready, rate, cap.burst);
        sleep_until(start);
        start
    }

    fn set_mechanism(&self, session: Option<CK_SESSION_HANDLE>, mech: Option<CK_MECHANISM_TYPE>) {
        if let Some(h) = session {
            if let Some(s) = lock(&self.sessions).live.get_mut(&h) {
                s.1 = mech;
            }
        }
    }

    fn check_idle(&self, cfg: &Config, now: Instant) {
        let now_ns = (now - self.epoch).as_nanos() as u64 + 1;
        let prev = self.last_call_ns.swap(now_ns, Ordering::Relaxed);
        if let Some(idle) = cfg.idle_drop {
            if prev != 0 && now_ns.saturating_sub(prev) > idle.as_nanos() as u64 {
                self.kill_sessions(None);
                self.forced_logout.store(true, Ordering::Relaxed);
            }
        }
    }

    /// While the token is out: session calls get the removal's value, token calls get
    /// CKR_TOKEN_NOT_PRESENT. Ends the removal when its time is up or its fault left the config.
    fn removed_answer(&self, cfg: &Config, call: &Call, now: Instant) -> Option<CK_RV> {
        if !self.removed.load(Ordering::Relaxed) {
            return None;
        }
        let mut removal = lock(&self.removal);
        let r = (*removal)?;
        let over = match r.until {
            Some(until) => now >= until,
            None => !cfg.has_token_removed_fault(),
        };
        if over {
            *removal = None;
            self.removed.store(false, Ordering::Relaxed);
            return None;
        }
        if call.session.is_some() {
            return Some(r.rv);
        }
        use Func::*;
        match call.func {
            GetTokenInfo | OpenSession | GetMechanismList | GetMechanismInfo | InitToken
            | CloseAllSessions
                if call.slot.is_some() =>
            {
                Some(CKR_TOKEN_NOT_PRESENT)
            }
            _ => None,
        }
    }

    /// Is the token currently removed (for C_GetSlotInfo's CKF_TOKEN_PRESENT)?
    pub fn token_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub fn is_logged_out(&self) -> bool {
        self.forced_logout.load(Ordering::Relaxed)
    }

    pub fn clear_logout(&self) {
        self.forced_logout.store(false, Ordering::Relaxed);
    }

    /// Marks sessions dead: one, or all (None). Losing every session loses the login, as in
    /// PKCS#11 (the login belongs to the application's sessions on the token).
    fn kill_sessions(&self, only: Option<CK_SESSION_HANDLE>) {
        let mut s = lock(&self.sessions);
        let victims: Vec<_> = match only {
            Some(h) => s
                .live
                .get_key_value(&h)
                .map(|(k, v)| (*k, v.0))
                .into_iter()
                .collect(),
            None => s.live.iter().map(|(k, v)| (*k, v.0)).collect(),
        };
        for (h, slot) in victims {
            s.live.remove(&h);
            s.dead.insert(h, slot);
        }
        if s.live.is_empty() {
            self.forced_logout.store(true, Ordering::Relaxed);
        }
    }

    fn check_faults(&self, active: &Active, call: &Call) -> Verdict {
        for (fault, (matched, fired)) in active.cfg.faults.iter().zip(&active.counters) {
            let t = &fault.trigger;
            if !t.functions.contains(call.func) {
                continue;
            }
            let n = matched.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= t.after_ops || !self.chance(t.rate) {
                continue;
            }
            if let Some(max) = t.max_fires {
                if fired.fetch_add(1, Ordering::Relaxed) >= max {
                    continue;
                }
            }
            return self.fire(fault.kind, call);
        }
        Verdict::Proceed
    }

    fn fire(&self, kind: FaultKind, call: &Call) -> Verdict {
        let own_session_dead = |sim: &Sim| {
            call.session
                .is_some_and(|h| lock(&sim.sessions).dead.contains_key(&h))
        };
        match kind {
            FaultKind::Error { rv } => Verdict::Fail(rv),
            FaultKind::Hang { duration, then_rv } => Verdict::Hang(duration, then_rv),
            FaultKind::InvalidateSessions { all } => {
                self.kill_sessions(if all { None } else { call.session });
                if own_session_dead(self) {
                    Verdict::FailDead(CKR_SESSION_HANDLE_INVALID)
                } else {
                    Verdict::Proceed
                }
            }
            FaultKind::Logout => {
                self.forced_logout.store(true, Ordering::Relaxed);
                Verdict::Proceed // the caller's login check answers CKR_USER_NOT_LOGGED_IN
            }
            FaultKind::TokenRemoved { rv, duration } => {
                self.kill_sessions(None);
                self.forced_logout.store(true, Ordering::Relaxed);
                *lock(&self.removal) = Some(Removal {
                    until: duration.map(|d| Instant::now() + d),
                    rv,
                });
                self.removed.store(true, Ordering::Relaxed);
                Verdict::FailDead(rv)
            }
        }
    }

    pub fn session_opened(&self, h: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
        let mut s = lock(&self.sessions);
        // A real module may reuse a handle the application closed; a new session is live.
        s.dead.remove(&h);
        s.live.insert(h, (slot, None));
    }

    /// Returns true if the handle was dead (the caller reports CKR_SESSION_HANDLE_INVALID).
    pub fn session_closed(&self, h: CK_SESSION_HANDLE) -> bool {
        let mut s = lock(&self.sessions);
        s.live.remove(&h);
        s.dead.remove(&h).is_some()
    }

    pub fn is_dead(&self, h: CK_SESSION_HANDLE) -> bool {
        lock(&self.sessions).dead.contains_key(&h)
    }

    pub fn slot_closed(&self, slot: CK_SLOT_ID) {
        let mut s = lock(&self.sessions);
        s.live.retain(|_, v| v.0 != slot);
        s.dead.retain(|_, v| *v != slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_spaces_starts_at_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut tat = None;
        // 100/s, burst 3: three start at once, then one every 10 ms.
        let starts: Vec<_> = (0..6)
            .map(|_| gcra_reserve(&mut tat, t0, 100.0, 3) - t0)
            .collect();
        assert_eq!(starts, [ms(0), ms(0), ms(0), ms(10), ms(20), ms(30)]);
        // After a long idle spell the burst is available again.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(gcra_reserve(&mut tat, later, 100.0, 3), later);
        // Burst 1: strict spacing.
        let mut tat = None;
        let starts: Vec<_> = (0..3)
            .map(|_| gcra_reserve(&mut tat, t0, 400.0, 1) - t0)
            .collect();
        assert_eq!(starts, [ms(0), Duration::from_micros(2500), ms(5)]);
    }

    #[test]
    fn cores_admit_at_most_max_and_queued_calls_start_when_a_core_frees() {
        let cores = Cores {
            state: Mutex::new(CoreState {
                next_ticket: 0,
                released: 0,
                free_at: BinaryHeap::new(),
            }),
            released: Condvar::new(),
        };
        let t0 = Instant::now();
        let a = cores.acquire(2, t0);
        let mut b = cores.acquire(2, t0);
        assert_eq!((a.start, b.start), (t0, t0), "idle cores start at once");
        let ready = t0 + Duration::from_millis(1);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| cores.acquire(2, ready).start);
            std::thread::sleep(Duration::from_millis(30));
            assert!(!waiter.is_finished(), "a third call must wait for a core");
            b.end = t0 + Duration::from_millis(5);
            drop(b);
            // It starts when b's core became free in simulated time, not when it woke up.
            assert_eq!(waiter.join().unwrap(), t0 + Duration::from_millis(5));
        });
        drop(a);
    }

    #[test]
    fn sleep_until_lands_near_the_deadline_on_average() {
        let n = 40;
        let mut total_late = Duration::ZERO;
        for _ in 0..n {
            let deadline = Instant::now() + Duration::from_millis(2);
            sleep_until(deadline);
            total_late += Instant::now().saturating_duration_since(deadline);
        }
        // Generous: this only guards against a gross error (e.g. compensation in the wrong
        // direction), not against a loaded test machine.
        assert!(
            total_late / n < Duration::from_millis(2),
            "{:?}",
            total_late / n
        );
    }
}
