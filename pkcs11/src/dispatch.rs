//! Offload dispatch: worker threads that own sessions, the completion that
//! wakes the reactor's task from a worker thread, and the watchdog that turns
//! a stuck HSM call into an error.
//!
//! Owns: [`Workers`] (one group per core per offload partition: a bounded
//! batch queue and `sessions_per_core` threads, each with its own [`Lane`]),
//! [`Completion`] and the [`Watchdog`].
//! Must not: block the reactor. The reactor only `try_send`s a batch (a full
//! queue answers `CRYPTO` at once) and polls a completion.
//!
//! Waking: the completion stores the task's `Waker` and the worker calls
//! `wake()` on its own thread. glommio 0.9 supports that: a waker woken from
//! a foreign thread is queued to the owning executor's foreign-wake channel
//! and the executor's eventfd is written (`task/raw.rs` `do_wake`,
//! `sys/mod.rs` `SleepNotifier::queue_waker`); the test
//! `foreign_thread_wakes_glommio_task` below checks it end to end.
//!
//! The completion is a mutex per request held by two parties for a few
//! instructions each (never contended across cores): the reactor's poll and
//! the one worker that answers it.

use super::policy::Action;
use super::recovery::{self, Want};
use super::session::{Fail, Lane, LaneError};
use super::token::{now_ns, Partition};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use keycore_protocol::OpClass;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Batches a core may have queued for one partition before it answers
/// `CRYPTO` instead of queueing more (each batch holds one reactor turn's
/// requests for that partition).
pub const QUEUE_BATCHES: usize = 1024;
/// Stuck worker threads (quarantined, still inside the library) one group
/// may have before it stops replacing them: at least this many, or as many
/// as the group has sessions (see [`max_stuck`]).
pub const MAX_STUCK_PER_GROUP: usize = 8;
/// Attempts one request may make on sessions of one partition (the first
/// plus retries on other or rebuilt sessions), all within its deadline.
pub const MAX_ATTEMPTS: u8 = 3;
/// Dead sessions (closed by the token) one request may meet without it
/// counting against [`MAX_ATTEMPTS`].
pub const MAX_DEAD_SESSIONS: u8 = 8;
/// Times one request may wait for the control path (a login, a
/// re-initialisation) before it is answered.
pub const MAX_WAITS: u8 = 3;
/// Busy answers one request may back off from before it is answered.
pub const MAX_BUSY: u8 = 4;
/// First back-off after a busy answer; doubles per busy answer, at most
/// [`BUSY_BACKOFF_MAX`], never past the request's deadline.
pub const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(2);
/// See [`BUSY_BACKOFF_MIN`].
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Most stuck threads a group of `sessions_per_core` workers may have
/// (each keeps its session until its call returns).
pub fn max_stuck(sessions_per_core: u32) -> usize {
    MAX_STUCK_PER_GROUP.max(sessions_per_core as usize)
}
/// Shortest watchdog tick.
const WATCHDOG_TICK_MIN: Duration = Duration::from_millis(1);

/// The result an offloaded operation ends with.
pub type JobResult = Result<Vec<u8>, LaneError>;

#[derive(Debug, Default)]
struct CState {
    result: Option<JobResult>,
    waker: Option<Waker>,
    done: bool,
}

/// One request's answer slot, shared by the reactor's future and the worker
/// (or watchdog) that answers it. Answered at most once.
#[derive(Debug, Default)]
pub struct Completion(Mutex<CState>);

impl Completion {
    /// Answer; `false` if it was already answered (e.g. by the watchdog).
    pub fn complete(&self, r: JobResult) -> bool {
        let waker = {
            let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if s.done {
                return false;
            }
            s.done = true;
            s.result = Some(r);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Poll for the answer.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<JobResult> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = s.result.take() {
            return Poll::Ready(r);
        }
        if s.done {
            // Already taken: a future polled after completion.
            return Poll::Ready(Err(LaneError::Crypto));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// One offloaded request.
#[derive(Debug)]
pub struct Job {
    /// Key position within the partition.
    pub key: usize,
    /// Operation.
    pub op: OpClass,
    /// Digest, message or ciphertext.
    pub input: Vec<u8>,
    /// Where the answer goes.
    pub done: Arc<Completion>,
    /// When it was queued ([`now_ns`]): a job older than the timeout when a
    /// worker reaches it is answered `CRYPTO` without calling the token, and
    /// no retry starts after that deadline.
    pub queued_ns: u64,
    /// Whether another member of the key's HA group could take it: then a
    /// partition that is out answers it `Down` at once instead of holding it.
    pub fail_over: bool,
    /// Attempts made on sessions so far.
    pub attempts: u8,
    /// Sessions found dead while serving it so far.
    pub dead: u8,
    /// Waits for the control path so far.
    pub waits: u8,
    /// Busy answers so far.
    pub busy: u8,
}

impl Job {
    /// A new request for key position `key` of the partition.
    pub fn new(
        key: usize,
        op: OpClass,
        input: Vec<u8>,
        done: Arc<Completion>,
        fail_over: bool,
    ) -> Job {
        Job {
            key,
            op,
            input,
            done,
            queued_ns: now_ns(),
            fail_over,
            attempts: 0,
            dead: 0,
            waits: 0,
            busy: 0,
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Every request gets an answer, even one dropped with a queue.
        self.done.complete(Err(LaneError::Crypto));
    }
}

/// What travels to a worker.
#[derive(Debug)]
enum Work {
    Batch(Vec<Job>),
    One(Job),
}

/// Per-worker state the watchdog reads.
#[derive(Debug, Default)]
struct WorkerSlot {
    /// When the current call started ([`now_ns`]); 0 when idle.
    busy_since_ns: AtomicU64,
    /// The request being worked on.
    current: Mutex<Option<Arc<Completion>>>,
    /// Set by the watchdog: the call overran; its answer was sent already.
    quarantined: AtomicBool,
    /// Set by the thread when it ends.
    exited: AtomicBool,
}

/// State shared by a group's workers and the watchdog.
#[derive(Debug)]
struct GroupShared {
    part: Arc<Partition>,
    rx: Receiver<Work>,
    /// Jobs a worker hands to idle peers (from a batch it received).
    spill_tx: Sender<Job>,
    spill_rx: Receiver<Job>,
    idle: AtomicUsize,
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
    /// Quarantined threads still inside the library.
    stuck: AtomicUsize,
    name: String,
}

/// One core's worker threads for one partition.
#[derive(Debug)]
pub struct Workers {
    tx: Sender<Work>,
}

fn spawn_worker(g: &Arc<GroupShared>) -> std::io::Result<()> {
    let slot = Arc::new(WorkerSlot::default());
    let n = {
        let mut slots = g.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.push(slot.clone());
        slots.len()
    };
    let g2 = g.clone();
    std::thread::Builder::new()
        .name(format!("{}-{n}", g.name))
        .spawn(move || worker_main(g2, slot))
        .map(|_| ())
}

/// What became of a job a worker took.
enum Step {
    /// Answered (or handed to a peer); take the next one.
    Next,
    /// The session failed: the job went to a peer; rebuild the session
    /// before taking more work.
    Reopen,
    /// The watchdog answered and replaced this thread: exit.
    Quarantined,
}

/// Serve one job on this worker's lane, retrying as the error policy says
/// (docs/pkcs11/README.md "Failure policy").
fn serve(g: &GroupShared, slot: &WorkerSlot, lane: &mut Lane, mut job: Job) -> Step {
    let part = &g.part;
    let deadline = job.queued_ns + part.op_timeout.as_nanos() as u64;
    loop {
        if now_ns() > deadline {
            // Waited (queue, back-offs, control path) past its deadline.
            tracing::debug!(partition = %part.name, attempts = job.attempts, waits = job.waits, "PKCS#11 request past its deadline");
            part.health.expired();
            job.done.complete(Err(LaneError::Crypto));
            return Step::Next;
        }
        if !part.health.is_up() {
            if job.fail_over {
                job.done.complete(Err(LaneError::Down));
                return Step::Next;
            }
            // The last member of its group is never given up on to fail
            // faster: hold the request until the control path brings the
            // partition back or its deadline passes.
            let seen = part.recovery.epoch();
            if !part.health.is_up() {
                part.recovery.wait_past(seen, deadline);
            }
            continue;
        }
        let login_seen = part.health.login_epoch();
        let gen_seen = part.module.generation();
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.done.clone());
        slot.busy_since_ns.store(now_ns(), Ordering::Release);
        let mut out = Vec::with_capacity(512);
        let r = lane.attempt(job.key, job.op, &job.input, &mut out);
        slot.busy_since_ns.store(0, Ordering::Release);
        slot.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if slot.quarantined.load(Ordering::Acquire) {
            // The watchdog answered and replaced us; the session closes when
            // the lane is dropped (the call has returned, so it can be).
            lane.quarantined = true;
            return Step::Quarantined;
        }
        let f = match r {
            Ok(()) => {
                part.health.ok();
                job.done.complete(Ok(out));
                return Step::Next;
            }
            Err(f) => f,
        };
        // A session that turns out dead (the token closed it) was never a
        // healthy session for this request: that costs the request its
        // time, not one of its attempts. Bounded by the deadline and by
        // MAX_DEAD_SESSIONS (every dead session is rebuilt before reuse).
        if f.dead_session() {
            job.dead = job.dead.saturating_add(1);
            if job.dead > MAX_DEAD_SESSIONS {
                job.attempts = job.attempts.saturating_add(1);
            }
        } else {
            job.attempts = job.attempts.saturating_add(1);
        }
        if let Fail::Input = f {
            job.done.complete(Err(LaneError::Crypto));
            return Step::Next;
        }
        let action = f.action();
        if part.health.error(action) {
            recovery::want(part, Want::Probe);
        }
        if matches!(f, Fail::KeyGone) || action == Action::Fail {
            tracing::debug!(partition = %part.name, error = %f.describe(), "PKCS#11 request failed");
            // A refusal of one request says nothing about the partition;
            // only a missing key is worth the health report (the lane
            // explains refusals that matter, e.g. a FIPS-mode decrypt).
            if matches!(f, Fail::KeyGone) {
                part.health.note_error(&f.describe());
            }
            job.done.complete(Err(LaneError::Failed));
            return Step::Next;
        }
        match action {
            Action::Busy => {
                job.busy += 1;
                if job.busy > MAX_BUSY {
                    tracing::debug!(partition = %part.name, error = %f.describe(), "PKCS#11 request failed: still busy");
                    job.done.complete(Err(LaneError::Failed));
                    return Step::Next;
                }
                let pause = BUSY_BACKOFF_MIN
                    .saturating_mul(1 << (job.busy - 1))
                    .min(BUSY_BACKOFF_MAX)
                    .min(Duration::from_nanos(deadline.saturating_sub(now_ns())));
                std::thread::sleep(pause);
            }
            Action::Handle => {
                // Found again on this session by the next attempt.
                if job.attempts >= MAX_ATTEMPTS {
                    job.done.complete(Err(LaneError::Failed));
                    return Step::Next;
                }
            }
            Action::Session => {
                // This session's problem: another session takes the request
                // now, this one is rebuilt off the request's path.
                lane.reset();
                part.health.reopened();
                if job.attempts >= MAX_ATTEMPTS {
                    tracing::debug!(partition = %part.name, error = %f.describe(), "PKCS#11 request failed after {MAX_ATTEMPTS} attempts");
                    part.health.note_error(&f.describe());
                    job.done.complete(Err(LaneError::Failed));
                } else {
                    part.health.retried();
                    if let Err(e) = g.spill_tx.try_send(job) {
                        // Unbounded channel: only fails if every receiver
                        // is gone; retry here then.
                        job = e.into_inner();
                        continue;
                    }
                }
                return Step::Reopen;
            }
            Action::Login | Action::Device => {
                job.waits += 1;
                if job.waits > MAX_WAITS {
                    tracing::debug!(partition = %part.name, error = %f.describe(), "PKCS#11 request failed after {MAX_WAITS} waits");
                    part.health.note_error(&f.describe());
                    job.done.complete(Err(LaneError::Failed));
                    return Step::Next;
                }
                if action == Action::Device {
                    lane.reset();
                }
                let want = if action == Action::Login {
                    Want::Login(login_seen)
                } else {
                    Want::Reinit(gen_seen)
                };
                let mut epoch = recovery::want(part, want);
                // Requeued, not failed: wait for the one login (or
                // re-initialisation) the control path makes.
                loop {
                    let done = match action {
                        Action::Login => part.health.login_epoch() != login_seen,
                        _ => part.module.generation() != gen_seen,
                    };
                    if done || !part.recovery.wait_past(epoch, deadline) {
                        break;
                    }
                    epoch = part.recovery.epoch();
                }
            }
            Action::Fail => unreachable!("answered above"),
        }
        part.health.retried();
    }
}

/// Rebuild this worker's session after a session error, within the
/// partition's re-open rate.
fn reopen(g: &GroupShared, lane: &mut Lane) {
    let mut waited = Duration::ZERO;
    while let Some(w) = g.part.health.reopen_wait() {
        if waited > Duration::from_secs(1) {
            return; // opened on the next request instead
        }
        let w = w.min(Duration::from_millis(50));
        std::thread::sleep(w);
        waited += w;
    }
    if let Err(e) = lane.warm_up() {
        g.part.health.note_error(&format!(
            "re-opening a session: {}",
            keycore_keys::error_chain(&e)
        ));
        if g.part.health.error(Action::Session) {
            recovery::want(&g.part, Want::Probe);
        }
    }
}

fn worker_main(g: Arc<GroupShared>, slot: Arc<WorkerSlot>) {
    let mut lane = Lane::new(g.part.clone());
    // Open the session before the first request; a failure is evidence
    // against the partition and retried on use.
    if let Err(e) = lane.warm_up() {
        g.part.health.note_error(&keycore_keys::error_chain(&e));
        if g.part.health.error(Action::Session) {
            recovery::want(&g.part, Want::Probe);
        }
    }
    'outer: loop {
        // Jobs spilled or requeued by a peer first, then new work.
        let jobs = if let Ok(j) = g.spill_rx.try_recv() {
            vec![j]
        } else {
            g.idle.fetch_add(1, Ordering::AcqRel);
            let w = crossbeam_channel::select! {
                recv(g.rx) -> w => w.map(Some),
                recv(g.spill_rx) -> j => Ok(j.ok().map(Work::One)),
            };
            g.idle.fetch_sub(1, Ordering::AcqRel);
            match w {
                Err(_) => break, // the core went away
                Ok(None) => continue,
                Ok(Some(Work::One(j))) => vec![j],
                Ok(Some(Work::Batch(mut v))) => {
                    // Hand part of the batch to idle peers so a batch of N on a
                    // slow HSM is not done one after another on one session.
                    let give = g
                        .idle
                        .load(Ordering::Acquire)
                        .min(v.len().saturating_sub(1));
                    let keep = v.len() - give;
                    for j in v.split_off(keep) {
                        if let Err(e) = g.spill_tx.try_send(j) {
                            v.push(e.into_inner());
                        }
                    }
                    v
                }
            }
        };
        let mut jobs = jobs.into_iter();
        while let Some(j) = jobs.next() {
            let step = serve(&g, &slot, &mut lane, j);
            if !matches!(step, Step::Next) {
                // The rest of this batch goes to healthy peers (the
                // replacement, if this thread was quarantined).
                for j in jobs.by_ref() {
                    if let Err(e) = g.spill_tx.try_send(j) {
                        drop(e.into_inner()); // answered by Drop
                    }
                }
            }
            match step {
                Step::Next => {}
                Step::Quarantined => break 'outer,
                Step::Reopen => reopen(&g, &mut lane),
            }
        }
    }
    // Left-over jobs are answered by their `Drop`.
    if slot.quarantined.load(Ordering::Acquire) {
        g.stuck.fetch_sub(1, Ordering::AcqRel);
        g.part.health.quarantine(-1);
    }
    // The lane's session is closed here (its call has returned).
    drop(lane);
    slot.exited.store(true, Ordering::Release);
}

impl Workers {
    /// Start `part.sessions_per_core` workers for core `core`.
    pub fn start(part: Arc<Partition>, core: usize, wd: &Watchdog) -> std::io::Result<Workers> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_BATCHES);
        let (spill_tx, spill_rx) = crossbeam_channel::unbounded();
        let group = Arc::new(GroupShared {
            name: format!("p11-c{core}-p{}", part.index),
            part,
            rx,
            spill_tx,
            spill_rx,
            idle: AtomicUsize::new(0),
            slots: Mutex::new(Vec::new()),
            stuck: AtomicUsize::new(0),
        });
        for _ in 0..group.part.sessions_per_core.max(1) {
            spawn_worker(&group)?;
        }
        wd.register(&group);
        Ok(Workers { tx })
    }

    /// Queue one turn's jobs for this partition. Never blocks: a full queue
    /// answers the jobs `CRYPTO` (through their `Drop`).
    pub fn send_batch(&self, mut jobs: Vec<Job>) {
        let w = if jobs.len() == 1 {
            Work::One(jobs.pop().expect("one job"))
        } else {
            Work::Batch(jobs)
        };
        match self.tx.try_send(w) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One thread per store that times out stuck offloaded calls.
#[derive(Debug)]
pub struct Watchdog {
    groups: Arc<Mutex<Vec<Weak<GroupShared>>>>,
    started: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            groups: Arc::new(Mutex::new(Vec::new())),
            started: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Watchdog {
    fn register(&self, g: &Arc<GroupShared>) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(g));
        if !self.started.swap(true, Ordering::AcqRel) {
            let groups = self.groups.clone();
            let stop = self.stop.clone();
            let _ = std::thread::Builder::new()
                .name("p11-watchdog".into())
                .spawn(move || watchdog_main(groups, stop));
        }
    }
}

fn watchdog_main(groups: Arc<Mutex<Vec<Weak<GroupShared>>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        let live: Vec<Arc<GroupShared>> = {
            let mut gs = groups.lock().unwrap_or_else(|p| p.into_inner());
            gs.retain(|w| w.strong_count() > 0);
            gs.iter().filter_map(Weak::upgrade).collect()
        };
        let mut tick = Duration::from_millis(10);
        for g in &live {
            let timeout = g.part.op_timeout;
            tick = tick.min((timeout / 10).max(WATCHDOG_TICK_MIN));
            check_group(g, timeout.as_nanos() as u64);
        }
        drop(live);
        std::thread::sleep(tick);
    }
}

fn check_group(g: &Arc<GroupShared>, timeout_ns: u64) {
    let now = now_ns();
    let slots: Vec<Arc<WorkerSlot>> = {
        let mut s = g.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|w| !w.exited.load(Ordering::Acquire));
        s.clone()
    };
    let mut healthy = 0;
    for w in &slots {
        if w.quarantined.load(Ordering::Acquire) {
            continue;
        }
        let since = w.busy_since_ns.load(Ordering::Acquire);
        if since == 0 || now.saturating_sub(since) <= timeout_ns {
            healthy += 1;
            continue;
        }
        // Overran: answer now, quarantine the thread (it exits and closes
        // its session when the call returns) and start a replacement. One
        // stuck call is that session's problem, a strike against the
        // partition but not a reason to take it out.
        w.quarantined.store(true, Ordering::Release);
        g.stuck.fetch_add(1, Ordering::AcqRel);
        g.part.health.quarantine(1);
        if let Some(c) = w.current.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // Down: an HA peer may answer (else CRYPTO).
            c.complete(Err(LaneError::Down));
        }
        if g.part.health.timed_out() {
            recovery::want(&g.part, Want::Probe);
        }
        g.part
            .health
            .note_error("operation timed out; its session is quarantined until the call returns");
        if g.stuck.load(Ordering::Acquire) <= max_stuck(g.part.sessions_per_core)
            && spawn_worker(g).is_ok()
        {
            healthy += 1;
        }
    }
    if healthy == 0 {
        // Nobody can take queued work: answer what has waited too long.
        while let Ok(w) = g.rx.try_recv() {
            drop(w); // each Job's Drop answers CRYPTO
        }
        while let Ok(j) = g.spill_rx.try_recv() {
            drop(j);
        }
    }
}

/// The future of one request that went to a worker.
#[derive(Debug)]
pub struct Pending {
    pub(super) done: Arc<Completion>,
}

impl Future for Pending {
    type Output = JobResult;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResult> {
        self.done.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_answers_once_and_wakes() {
        let c = Arc::new(Completion::default());
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            assert!(c2.complete(Ok(vec![1])));
            assert!(!c2.complete(Err(LaneError::Crypto)));
        });
        t.join().unwrap();
        let w = futures_lite::future::block_on(std::future::poll_fn(|cx| c.poll(cx)));
        assert_eq!(w, Ok(vec![1]));
    }

    #[test]
    fn dropped_job_is_answered() {
        let c = Arc::new(Completion::default());
        drop(Job::new(0, OpClass::Ed25519, vec![], c.clone(), false));
        let r = futures_lite::future::block_on(std::future::poll_fn(|cx| c.poll(cx)));
        assert_eq!(r, Err(LaneError::Crypto));
    }

    /// A waker woken on a plain thread must wake a task parked in a glommio
    /// executor that is otherwise idle (asleep on its ring).
    #[test]
    fn foreign_thread_wakes_glommio_task() {
        let r = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let c = Arc::new(Completion::default());
                let c2 = c.clone();
                let t = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    c2.complete(Ok(vec![7]));
                });
                let started = std::time::Instant::now();
                let r = std::future::poll_fn(|cx| c.poll(cx)).await;
                t.join().unwrap();
                (r, started.elapsed())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(r.0, Ok(vec![7]));
        assert!(r.1 < Duration::from_secs(2), "woken after {:?}", r.1);
    }
}
