//! The simulated device: what happens to one call between the application and the real module.
//! Owns the live config (re-read from its file while running), the partition's crypto cores and
//! rate budget, the session table (live, dead, each session's running mechanism, its key's size
//! cost and an operation a fault left active), the per-session object handle tables of
//! `session_handles`, and the fault state (logged out, token removed, idle drop). It decides how
//! a call is answered: faults compose here, throttles are retried here for a retrying vendor
//! client, and a hung crypto call holds its core here. Must not touch the real module's state
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
    CKR_FUNCTION_FAILED, CKR_OK, CKR_OPERATION_ACTIVE, CKR_SESSION_HANDLE_INVALID,
    CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN, CK_FUNCTION_LIST, CK_MECHANISM_TYPE,
    CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::behaviour::{Behaviour, KeyClass};
use crate::config::{Capacity, Config, FaultKind, Latency};
use crate::func::Func;

/// How long a queued caller sleeps before re-checking the core count (covers a reload that
/// raised `max_concurrent` while nobody released a core).
const CORE_WAIT_RECHECK: Duration = Duration::from_millis(50);
/// Objects one session may learn handles for under `session_handles` (then the call that would
/// learn one more fails with `CKR_DEVICE_MEMORY`): far above what a key server touches, small
/// enough that a leak cannot eat the host (16 B per entry, times the session cap).
pub(crate) const MAX_HANDLES_PER_SESSION: usize = 65_536;
/// Keys whose size class is remembered (for the key-size cost); the cache is cleared when full.
const MAX_KEY_CLASSES: usize = 4096;

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
        self.acquire_bounded(max, ready, None)
            .expect("an unbounded queue always admits")
    }

    /// As `acquire`, but returns None at once when `max_queue` calls are already waiting (the
    /// device sheds load instead of queueing it).
    fn acquire_bounded(
        &self,
        max: u32,
        ready: Instant,
        max_queue: Option<u32>,
    ) -> Option<CoreGuard<'_>> {
        let max = max as u64;
        let mut st = lock(&self.state);
        if let Some(q) = max_queue {
            let inside_or_waiting = st.next_ticket - st.released;
            if inside_or_waiting >= max + q as u64 {
                return None;
            }
        }
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
        Some(CoreGuard {
            cores: self,
            start,
            end: start,
        })
    }
}

/// What the simulator knows about one open session.
struct LiveSession {
    slot: CK_SLOT_ID,
    /// The running operation's mechanism (as the real module names it), for its service time.
    mech: Option<CK_MECHANISM_TYPE>,
    /// The running operation's key-size cost factor (1 = the reference key).
    key_cost: f64,
    /// An `operation_active` fault left an operation active: `*Init` answers
    /// `CKR_OPERATION_ACTIVE` until an operation step ends it or the session closes.
    stuck: bool,
}

impl LiveSession {
    fn new(slot: CK_SLOT_ID) -> LiveSession {
        LiveSession {
            slot,
            mech: None,
            key_cost: 1.0,
            stuck: false,
        }
    }
}

#[derive(Default)]
struct Sessions {
    live: HashMap<CK_SESSION_HANDLE, LiveSession>,
    /// Sessions a fault killed (handle -> slot). The real session stays open until the
    /// application closes the handle.
    dead: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    /// `C_OpenSession` calls admitted under `max_sessions` but not finished yet.
    opening: u32,
}

/// One session's object handles under `session_handles`: the application sees 1, 2, 3... in the
/// order this session learned each object (found, created, generated, unwrapped, derived).
///
/// Model (an ASSUMPTION: AWS documents that CloudHSM SDK 5 handles are session-specific, not
/// how they are numbered): a handle from another session is unknown here (the call fails with
/// `CKR_OBJECT_HANDLE_INVALID` / `CKR_KEY_HANDLE_INVALID`) or, worse, names whatever object
/// this session learned under that number. Both are deterministic, so an application that
/// reuses handles across sessions fails or signs with the wrong key every time.
#[derive(Default)]
struct HandleTable {
    to_real: Vec<CK_OBJECT_HANDLE>,
    to_virt: HashMap<CK_OBJECT_HANDLE, CK_OBJECT_HANDLE>,
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
    /// Per-session object handles (only used while `session_handles` is on).
    handles: Mutex<HashMap<CK_SESSION_HANDLE, HandleTable>>,
    /// Size class of keys used by operations (real handle -> class), for the key-size cost.
    key_classes: Mutex<HashMap<CK_OBJECT_HANDLE, KeyClass>>,
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

/// How a call is answered instead of being served.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// Answer with this value (the real operation, if any, is ended first).
    Fail(CK_RV),
    /// Answer with this value; the call's session is dead so nothing is forwarded.
    FailDead(CK_RV),
}

/// The combined effect of every fault that fired on one call (see `check_faults`).
#[derive(Default)]
struct Outcome {
    /// Stall on the way to the device (hangs `"at": "network"`), added up.
    hang: Duration,
    /// Stall inside the device, holding a crypto core (hangs `"at":
    /// "device"`), added up.
    core_hang: Duration,
    /// The first failure in file order, if any; None = the call proceeds.
    answer: Option<Answer>,
    /// That first failure is a throttle (a retrying client library may try again).
    throttled: bool,
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
            handles: Mutex::new(HashMap::new()),
            key_classes: Mutex::new(HashMap::new()),
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

    /// Forget the library's state (C_Initialize / C_Finalize): sessions,
    /// handles, the login. A removed token stays removed: it is the device,
    /// not the library, and re-initialising the library does not plug it
    /// back in. (Clearing it here let a client's module re-initialisation
    /// "repair" the token, so keycore's partition probe passed while every
    /// signature failed and `/readyz` never went to 503.) The removal still
    /// ends by its own rule, its duration or its fault leaving the config.
    pub fn reset(&self) {
        *lock(&self.sessions) = Sessions::default();
        lock(&self.handles).clear();
        lock(&self.key_classes).clear();
        self.forced_logout.store(false, Ordering::Relaxed);
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
        let b = &cfg.behaviour;
        // A vendor client that retries throttled calls itself (CloudHSM SDK >= 5.8) sends the
        // call again after a back-off; each try meets the device (and its faults) anew.
        let mut tries = 0;
        let outcome = loop {
            let o = self.check_faults(&active, &call);
            if !o.throttled || tries >= b.client_retries {
                break o;
            }
            ready += o.hang + o.core_hang + b.retry_backoff(tries) + leg * 2;
            sleep_until(ready);
            tries += 1;
        };
        let mut answer = outcome.answer;
        if answer.is_none() {
            answer = self.stuck_answer(&call);
        }
        if answer.is_none() && call.func.needs_login() && self.is_logged_out() {
            answer = Some(Answer::Fail(CKR_USER_NOT_LOGGED_IN));
        }
        // A hung crypto call holds a crypto core for the whole stall (as a real HSM's stuck
        // command does); other calls stall outside the cores.
        let cores = cfg
            .capacity
            .max_concurrent
            .filter(|_| call.func.is_crypto());
        // Without a core limit there is no core to hold: a device stall is
        // then spent like a network one.
        let core_hang = if cores.is_some() {
            outcome.core_hang
        } else {
            Duration::ZERO
        };
        let outside = outcome.hang + (outcome.core_hang - core_hang);
        let hang_in_core = !core_hang.is_zero();
        if !outside.is_zero() {
            ready += outside;
            sleep_until(ready);
        }
        match answer {
            None => {}
            Some(Answer::FailDead(rv)) => {
                if hang_in_core {
                    ready += core_hang;
                    sleep_until(ready);
                }
                return rv;
            }
            Some(Answer::Fail(rv)) => {
                if let (true, Some(max)) = (hang_in_core, cores) {
                    let mut core = self.cores.acquire(max, ready);
                    core.end = core.start + core_hang;
                    sleep_until(core.end);
                    ready = core.end;
                }
                return self.fail(&call, forward, rv, ready + leg);
            }
        }

        // Only crypto calls are timed by mechanism: a *Init carries the mechanism but does no
        // work (it is timed by its function entry or the default).
        let (mech, key_cost) = if !call.func.is_crypto() {
            (None, 1.0)
        } else if call.mech.is_some() {
            (call.mech, 1.0)
        } else {
            call.session
                .and_then(|h| {
                    lock(&self.sessions)
                        .live
                        .get(&h)
                        .map(|s| (s.mech, s.key_cost))
                })
                .unwrap_or((None, 1.0))
        };
        let service = cfg.service_latency(call.func, mech);
        let (rv, answered) = if call.func.is_crypto() {
            let ready = self.wait_for_rate(&cfg.capacity, ready);
            match cores {
                Some(max) => {
                    let mut ready = ready;
                    let mut core = loop {
                        if let Some(core) =
                            self.cores
                                .acquire_bounded(max, ready, cfg.capacity.max_queue)
                        {
                            break core;
                        }
                        // Load shed: the device refuses rather than queues; a retrying client
                        // tries again after its back-off.
                        if tries >= b.client_retries {
                            let rv = b.fault_rv(b.throttle_rv(call.func));
                            return self.fail(&call, forward, rv, ready + leg);
                        }
                        ready += b.retry_backoff(tries) + leg * 2;
                        sleep_until(ready);
                        tries += 1;
                    };
                    let start = if hang_in_core {
                        core.start + core_hang
                    } else {
                        core.start
                    };
                    let (rv, end) = self.serve(start, service, key_cost, forward);
                    core.end = end;
                    (rv, end)
                }
                None => self.serve(ready, service, key_cost, forward),
            }
        } else {
            self.serve(ready, service, 1.0, forward)
        };
        sleep_until(answered + leg);
        if call.func.is_op_init() && rv == CKR_OK {
            self.set_mechanism(call.session, call.mech);
        }
        rv
    }

    /// Answers `rv` instead of serving the call, at simulated time `answer_at`. PKCS#11: a
    /// failed step ends the operation, so the real module's operation is ended too, or the
    /// caller's next `*Init` would get `CKR_OPERATION_ACTIVE`.
    fn fail(
        &self,
        call: &Call,
        forward: impl FnOnce(&CK_FUNCTION_LIST) -> CK_RV,
        rv: CK_RV,
        answer_at: Instant,
    ) -> CK_RV {
        if call.func.is_op_step() {
            forward(self.real);
            if let (Some(fin), Some(h)) = (call.func.final_for_update(), call.session) {
                crate::ffi::end_operation(self.real, fin, h);
            }
            self.set_mechanism(call.session, None);
        }
        sleep_until(answer_at);
        rv
    }

    /// A session with an operation left active refuses new operations; a step call ends the
    /// leftover operation (and fails, as a step whose data is not what the operation expected).
    fn stuck_answer(&self, call: &Call) -> Option<Answer> {
        let h = call.session?;
        let mut sessions = lock(&self.sessions);
        let s = sessions.live.get_mut(&h)?;
        if !s.stuck {
            return None;
        }
        if call.func.is_op_init() {
            return Some(Answer::Fail(CKR_OPERATION_ACTIVE));
        }
        if call.func.is_op_step() {
            s.stuck = false;
            return Some(Answer::Fail(CKR_FUNCTION_FAILED));
        }
        None
    }

    /// The real call, padded so it ends at `start` + the sampled service time (the real
    /// module's own time counts toward it; if the real module is slower, its time wins).
    /// Returns the value and the simulated end of service.
    fn serve(
        &self,
        start: Instant,
        service: &Latency,
        key_cost: f64,
        forward: impl FnOnce(&CK_FUNCTION_LIST) -> CK_RV,
    ) -> (CK_RV, Instant) {
        if service.is_zero() {
            return (forward(self.real), start);
        }
        let end = start + self.sample(service).mul_f64(key_cost);
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
                s.mech = mech;
                s.key_cost = 1.0;
            }
        }
    }

    /// Records the key of the operation just started on `session`, so its steps cost what a
    /// key of that size costs. `class` is looked up (and cached) by the caller's `lookup`.
    pub fn set_operation_key(
        &self,
        session: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        lookup: impl FnOnce() -> KeyClass,
    ) {
        let cached = lock(&self.key_classes).get(&key).copied();
        let class = cached.unwrap_or_else(|| {
            let c = lookup();
            let mut classes = lock(&self.key_classes);
            if classes.len() >= MAX_KEY_CLASSES {
                classes.clear();
            }
            classes.insert(key, c);
            c
        });
        let cost = self.active().cfg.key_cost(class);
        if let Some(s) = lock(&self.sessions).live.get_mut(&session) {
            s.key_cost = cost;
        }
    }

    /// Forgets a destroyed object's size class (a real module may reuse the handle).
    pub fn object_destroyed(&self, key: CK_OBJECT_HANDLE) {
        lock(&self.key_classes).remove(&key);
    }

    /// The config in force (reloading it if due).
    fn active(&self) -> Arc<Active> {
        self.config.current(self.epoch)
    }

    /// The vendor behaviour in force.
    pub fn behaviour(&self) -> Behaviour {
        self.active().cfg.behaviour
    }

    fn check_idle(&self, cfg: &Config, now: Instant) {
        let now_ns = (now - self.epoch).as_nanos() as u64 + 1;
        let prev = self.last_call_ns.swap(now_ns, Ordering::Relaxed);
        // An `idle_drop` fault wins over the vendor's own idle timeout (YubiHSM's 30 s).
        if let Some(idle) = cfg.idle_drop.or(cfg.behaviour.idle_timeout()) {
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
                .map(|(k, v)| (*k, v.slot))
                .into_iter()
                .collect(),
            None => s.live.iter().map(|(k, v)| (*k, v.slot)).collect(),
        };
        for (h, slot) in victims {
            s.live.remove(&h);
            s.dead.insert(h, slot);
        }
        if s.live.is_empty() {
            self.forced_logout.store(true, Ordering::Relaxed);
        }
    }

    /// Faults compose: every fault whose trigger fires on this call takes effect, in file
    /// order. Stalls add up; state changes (dead sessions, lost login, removed token, an
    /// operation left active) all happen; the call's answer is the first failure in file order.
    fn check_faults(&self, active: &Active, call: &Call) -> Outcome {
        let mut out = Outcome::default();
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
            let answer = self.fire(fault.kind, call, &active.cfg.behaviour, &mut out);
            if out.answer.is_none() && answer.is_some() {
                out.answer = answer;
                out.throttled = matches!(fault.kind, FaultKind::Throttle { .. });
            }
        }
        out
    }

    /// Applies one fault's effects; returns the answer it asks for, if any.
    fn fire(
        &self,
        kind: FaultKind,
        call: &Call,
        b: &Behaviour,
        out: &mut Outcome,
    ) -> Option<Answer> {
        let own_session_dead = |sim: &Sim| {
            call.session
                .is_some_and(|h| lock(&sim.sessions).dead.contains_key(&h))
        };
        match kind {
            FaultKind::Error { rv } => Some(Answer::Fail(b.fault_rv(rv))),
            FaultKind::Throttle { rv } => Some(Answer::Fail(
                b.fault_rv(rv.unwrap_or_else(|| b.throttle_rv(call.func))),
            )),
            FaultKind::Hang {
                duration,
                then_rv,
                holds_core,
            } => {
                if holds_core {
                    out.core_hang += duration;
                } else {
                    out.hang += duration;
                }
                then_rv.map(|rv| Answer::Fail(b.fault_rv(rv)))
            }
            FaultKind::InvalidateSessions { all } => {
                self.kill_sessions(if all { None } else { call.session });
                own_session_dead(self).then_some(Answer::FailDead(CKR_SESSION_HANDLE_INVALID))
            }
            FaultKind::Logout => {
                self.forced_logout.store(true, Ordering::Relaxed);
                None // the caller's login check answers CKR_USER_NOT_LOGGED_IN
            }
            FaultKind::TokenRemoved { rv, duration } => {
                self.kill_sessions(None);
                self.forced_logout.store(true, Ordering::Relaxed);
                *lock(&self.removal) = Some(Removal {
                    until: duration.map(|d| Instant::now() + d),
                    rv,
                });
                self.removed.store(true, Ordering::Relaxed);
                Some(Answer::FailDead(rv))
            }
            FaultKind::OperationActive => {
                let h = call.session?;
                if let Some(s) = lock(&self.sessions).live.get_mut(&h) {
                    s.stuck = true;
                }
                // Fired on an *Init: that init already meets the leftover operation.
                call.func
                    .is_op_init()
                    .then_some(Answer::Fail(CKR_OPERATION_ACTIVE))
            }
        }
    }

    /// Admits one more `C_OpenSession` under the behaviour's `max_sessions` (false = over the
    /// cap). Every admitted call ends in `session_opened` or `open_failed`.
    pub fn reserve_session(&self, max: Option<u32>) -> bool {
        let mut s = lock(&self.sessions);
        if let Some(max) = max {
            if s.live.len() as u64 + s.opening as u64 >= max as u64 {
                return false;
            }
        }
        s.opening += 1;
        true
    }

    /// An admitted `C_OpenSession` failed.
    pub fn open_failed(&self) {
        let mut s = lock(&self.sessions);
        s.opening = s.opening.saturating_sub(1);
    }

    pub fn session_opened(&self, h: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
        let mut s = lock(&self.sessions);
        s.opening = s.opening.saturating_sub(1);
        // A real module may reuse a handle the application closed; a new session is live.
        s.dead.remove(&h);
        s.live.insert(h, LiveSession::new(slot));
        drop(s);
        lock(&self.handles).remove(&h);
    }

    /// Returns true if the handle was dead (the caller reports CKR_SESSION_HANDLE_INVALID).
    pub fn session_closed(&self, h: CK_SESSION_HANDLE) -> bool {
        let mut s = lock(&self.sessions);
        s.live.remove(&h);
        let was_dead = s.dead.remove(&h).is_some();
        drop(s);
        lock(&self.handles).remove(&h);
        was_dead
    }

    /// The slot a live session belongs to.
    pub fn session_slot(&self, h: CK_SESSION_HANDLE) -> Option<CK_SLOT_ID> {
        lock(&self.sessions).live.get(&h).map(|s| s.slot)
    }

    /// The real object behind handle `v` on `session` (None: not an object of this session).
    /// Identity unless `b.session_handles`.
    pub fn real_handle(
        &self,
        b: &Behaviour,
        session: CK_SESSION_HANDLE,
        v: CK_OBJECT_HANDLE,
    ) -> Option<CK_OBJECT_HANDLE> {
        if !b.session_handles || v == 0 {
            return Some(v);
        }
        let handles = lock(&self.handles);
        let t = handles.get(&session)?;
        t.to_real.get((v as usize).checked_sub(1)?).copied()
    }

    /// The handle `session` shows for real object `r`, learning it if new (None: the session's
    /// table is full). Identity unless `b.session_handles`.
    pub fn session_handle(
        &self,
        b: &Behaviour,
        session: CK_SESSION_HANDLE,
        r: CK_OBJECT_HANDLE,
    ) -> Option<CK_OBJECT_HANDLE> {
        if !b.session_handles || r == 0 {
            return Some(r);
        }
        let mut handles = lock(&self.handles);
        let t = handles.entry(session).or_default();
        if let Some(v) = t.to_virt.get(&r) {
            return Some(*v);
        }
        if t.to_real.len() >= MAX_HANDLES_PER_SESSION {
            return None;
        }
        t.to_real.push(r);
        let v = t.to_real.len() as CK_OBJECT_HANDLE;
        t.to_virt.insert(r, v);
        Some(v)
    }

    pub fn is_dead(&self, h: CK_SESSION_HANDLE) -> bool {
        lock(&self.sessions).dead.contains_key(&h)
    }

    pub fn slot_closed(&self, slot: CK_SLOT_ID) {
        let mut s = lock(&self.sessions);
        let gone: Vec<_> = s
            .live
            .iter()
            .filter(|(_, v)| v.slot == slot)
            .map(|(k, _)| *k)
            .chain(s.dead.iter().filter(|(_, v)| **v == slot).map(|(k, _)| *k))
            .collect();
        s.live.retain(|_, v| v.slot != slot);
        s.dead.retain(|_, v| *v != slot);
        drop(s);
        let mut handles = lock(&self.handles);
        for h in gone {
            handles.remove(&h);
        }
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
