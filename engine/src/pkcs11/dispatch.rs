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

use super::session::{Lane, LaneError};
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
/// may have before it stops replacing them and answers queued requests with
/// `CRYPTO` directly.
pub const MAX_STUCK_PER_GROUP: usize = 8;
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
    /// worker reaches it is answered `CRYPTO` without calling the token.
    pub queued_ns: u64,
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
    group: Arc<GroupShared>,
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

fn worker_main(g: Arc<GroupShared>, slot: Arc<WorkerSlot>) {
    let mut lane = Lane::new(g.part.clone());
    // Open the session before the first request; a failure is recorded in
    // the partition's health and retried on use.
    if let Err(e) = lane.warm_up() {
        g.part.health.fail(&e);
    }
    let timeout_ns = g.part.op_timeout.as_nanos() as u64;
    let run = |lane: &mut Lane, job: Job| -> bool {
        if now_ns().saturating_sub(job.queued_ns) > timeout_ns {
            g.part.health.timed_out();
            job.done.complete(Err(LaneError::Crypto));
            return true;
        }
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.done.clone());
        slot.busy_since_ns.store(now_ns(), Ordering::Release);
        let mut out = Vec::with_capacity(512);
        let r = lane.perform(job.key, job.op, &job.input, &mut out);
        slot.busy_since_ns.store(0, Ordering::Release);
        slot.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if slot.quarantined.load(Ordering::Acquire) {
            // The watchdog answered and replaced us; this session is suspect.
            lane.quarantined = true;
            return false;
        }
        job.done.complete(r.map(|()| out));
        true
    };
    'outer: loop {
        // Jobs spilled by a peer first, then new work.
        if let Ok(j) = g.spill_rx.try_recv() {
            if !run(&mut lane, j) {
                break;
            }
            continue;
        }
        g.idle.fetch_add(1, Ordering::AcqRel);
        let w = crossbeam_channel::select! {
            recv(g.rx) -> w => w.map(Some),
            recv(g.spill_rx) -> j => Ok(j.ok().map(Work::One)),
        };
        g.idle.fetch_sub(1, Ordering::AcqRel);
        let jobs = match w {
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
        };
        let mut jobs = jobs.into_iter();
        for j in jobs.by_ref() {
            if !run(&mut lane, j) {
                break 'outer;
            }
        }
    }
    // Left-over jobs are answered by their `Drop`.
    if slot.quarantined.load(Ordering::Acquire) {
        g.stuck.fetch_sub(1, Ordering::AcqRel);
    }
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
        Ok(Workers { tx, group })
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

    /// The partition served.
    pub fn partition(&self) -> &Arc<Partition> {
        &self.group.part
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
        // Overran: answer now, quarantine the thread and its session.
        w.quarantined.store(true, Ordering::Release);
        g.stuck.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = w.current.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // Down: the partition is going out of use; an HA peer may answer.
            c.complete(Err(LaneError::Down));
        }
        g.part.health.timed_out();
        g.part
            .health
            .fail("operation timed out; session quarantined");
        if g.stuck.load(Ordering::Acquire) <= MAX_STUCK_PER_GROUP && spawn_worker(g).is_ok() {
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
        drop(Job {
            key: 0,
            op: OpClass::Ed25519,
            input: vec![],
            done: c.clone(),
            queued_ns: 0,
        });
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
