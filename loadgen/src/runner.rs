//! The generator engine: thread-per-core, like the server it measures.
//!
//! One glommio executor per selected core, pinned. Each owns its share of the
//! connections, its share of the offered load, its own RNG and its own stats
//! (nothing shared on the data path). Every second each executor ships its
//! interval stats to the coordinating thread (the caller's), which merges
//! them, prints the live line, writes the HdrHistogram interval log and, at
//! the end, merges the totals into a [`RunResult`].
//!
//! Open loop: a scheduler task computes arrival times from the start of the
//! run and spawns each request at its time whatever the server is doing; the
//! request's latency and timeout are counted from its scheduled time, so a
//! server stall shows up as latency of every request scheduled during it (no
//! coordinated omission). How late the generator itself sent each request is
//! recorded separately ("lag") to tell a slow generator from a slow server.
//! Closed loop: N workers, each sends, waits, sends again; latency from send.
//!
//! Totals count requests *scheduled* inside the measured window (after
//! warm-up); intervals count completions by completion time.

use crate::check::{self, Extras, KeyCtx, OpKind};
use crate::client::{Pool, PoolConfig, PoolCounters};
use crate::profile::{share, LoopMode, Plan, Schedule};
use crate::stats::{record, ErrorKind, OpSet};
use crate::sys::generator_cpu;
use crate::tls::ClientTls;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use glommio::timer::Timer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stats interval (live line, timeline, interval log).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long executors get to connect before the run is abandoned.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Arrivals due within this much are not slept for (a timer wake-up comes
/// later than that): the scheduler spins until the arrival's time instead
/// ([`wait_exactly`]), so that no request leaves before its schedule (one
/// that did would have its latency shortened by the difference). Not
/// when the executor spins (`spin_us`): then its timers cost no wake-up.
const SLEEP_GRANULARITY: Duration = Duration::from_micros(50);

/// Spin until `at` (at most [`SLEEP_GRANULARITY`] when called as the open
/// loop does): blocks the executor for that long, which costs less than a
/// timer wake-up and keeps every send at or after its scheduled time.
fn wait_exactly(at: Instant) {
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// The scheduler yields to request tasks after this many spawns in a row.
const SPAWNS_PER_YIELD: u32 = 32;

/// After the last arrival, wait this long beyond the timeout for stragglers.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Arrivals this close to the end of the run are not sent (float drift).
const END_EPSILON_S: f64 = 1e-9;

/// I/O memory per executor: the generator does no storage I/O, and glommio's
/// 10 MiB default does not fit the default 8 MiB locked-memory limit.
const EXECUTOR_IO_MEMORY: usize = 512 * 1024;

/// Interval stats of the whole generator, merged over executors.
#[derive(Clone, Debug)]
pub struct IntervalStats {
    /// Interval number from the start of the run (interval i covers [i, i+1) s).
    pub index: u64,
    /// How much of the interval was covered: [`INTERVAL`], except for the
    /// last one, which ends when the run does (a partial interval's counts
    /// are divided by this, not by a whole interval, or its rate would plot
    /// as a drop).
    pub len: Duration,
    /// Whether the interval starts after the last scheduled request: only
    /// the drain of answers still in flight, no offered load (so its rate
    /// is not a throughput).
    pub drain: bool,
    /// Whether the interval lies in the warm-up.
    pub warmup: bool,
    /// Completions in this interval.
    pub stats: OpSet,
    /// Requests in flight at the end of the interval.
    pub in_flight: usize,
    /// Generator CPU use over the interval, percent of its executors' cores.
    pub cpu_pct: f64,
}

/// Everything a run measured.
#[derive(Debug)]
pub struct RunResult {
    /// Requests scheduled in the measured window, by outcome.
    pub totals: OpSet,
    /// Connection-level counters, summed over executors.
    pub counters: PoolCounters,
    /// Requests sent over the whole run (warm-up included).
    pub sent: u64,
    /// Generator CPU use over the measured window, percent of its cores.
    pub cpu_pct: f64,
    /// Executors used and where pinned (`None` = not pinned).
    pub cpus: Vec<Option<usize>>,
    /// Warnings raised during the run (generator-bound etc.), deduplicated.
    pub warnings: Vec<String>,
}

/// Called once per interval (merged over executors), in order.
pub type IntervalSink<'a> = dyn FnMut(&IntervalStats) + 'a;

enum ShardMsg {
    Ready,
    Failed(String),
    Interval {
        index: u64,
        len: Duration,
        stats: Box<OpSet>,
        in_flight: usize,
        /// Time the executor spent running tasks and polling I/O in this
        /// interval (glommio's `total_runtime`: spinning and sleeping while
        /// idle are not in it).
        busy: Duration,
    },
    Done {
        totals: Box<OpSet>,
        counters: PoolCounters,
        sent: u64,
        last_loss: Option<String>,
    },
}

struct ShardCtx {
    id: usize,
    n: usize,
    addr: SocketAddr,
    tls: ClientTls,
    plan: Arc<Plan>,
    seed: u64,
    tx: Sender<(usize, ShardMsg)>,
    start_rx: Receiver<Option<Instant>>,
}

/// Which CPUs to pin executors to, among those this process may use: from
/// `first` upwards if given, else the last `n` (servers tend to start at CPU
/// 0). `None` (unpinned) for executors beyond the CPUs available.
pub fn pick_cpus(n: usize, first: Option<usize>) -> Vec<Option<usize>> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    let chosen: Vec<usize> = match first {
        Some(f) => ids.into_iter().filter(|&c| c >= f).take(n).collect(),
        None => {
            let skip = ids.len().saturating_sub(n);
            ids.into_iter().skip(skip).collect()
        }
    };
    (0..n).map(|i| chosen.get(i).copied()).collect()
}

/// Why a load test could not start (the generator's executors, or their
/// connections to the server).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A generator executor could not be started (glommio's error, as
    /// text: it is not `Send`).
    #[error("starting generator executor {id}: {reason}")]
    Spawn {
        /// The executor.
        id: usize,
        /// glommio's reason.
        reason: String,
    },
    /// An executor could not connect or prepare ("executor N: why"), or
    /// they did not get ready in time.
    #[error("load generator could not start against {addr}: {failure}")]
    Start {
        /// The server.
        addr: SocketAddr,
        /// Which executor and why.
        failure: String,
    },
}

/// Run one load test against `addr`; `sink` sees each interval as it completes.
pub fn run_plan(
    addr: SocketAddr,
    tls: &ClientTls,
    plan: Arc<Plan>,
    sink: &mut IntervalSink<'_>,
) -> Result<RunResult, RunError> {
    let p = &plan.profile;
    let n = p.cores;
    let cpus = pick_cpus(n, p.first_cpu);
    let seed = p.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let (tx, rx) = unbounded();
    let mut start_txs = Vec::new();
    let mut handles = Vec::new();
    for (id, cpu) in cpus.iter().enumerate() {
        let (stx, srx) = bounded(1);
        start_txs.push(stx);
        let ctx = ShardCtx {
            id,
            n,
            addr,
            tls: tls.clone(),
            plan: plan.clone(),
            seed: seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            tx: tx.clone(),
            start_rx: srx,
        };
        let placement = match cpu {
            Some(c) => glommio::Placement::Fixed(*c),
            None => glommio::Placement::Unbound,
        };
        let mut builder = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("loadgen-{id}"))
            .io_memory(EXECUTOR_IO_MEMORY);
        if p.spin_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(p.spin_us));
        }
        let h = builder
            .spawn(move || shard_main(ctx))
            .map_err(|e| RunError::Spawn {
                id,
                reason: e.to_string(),
            })?;
        handles.push(h);
    }
    drop(tx);

    // Wait until every executor is connected (or one failed).
    let mut ready = 0;
    let mut failure = None;
    while ready < n && failure.is_none() {
        match rx.recv_timeout(CONNECT_WITHIN + Duration::from_secs(5)) {
            Ok((_, ShardMsg::Ready)) => ready += 1,
            Ok((id, ShardMsg::Failed(e))) => failure = Some(format!("executor {id}: {e}")),
            Ok(_) => {}
            Err(_) => failure = Some("executors did not get ready in time".into()),
        }
    }
    if let Some(f) = failure {
        for s in &start_txs {
            let _ = s.send(None);
        }
        for h in handles {
            let _ = h.join();
        }
        return Err(RunError::Start { addr, failure: f });
    }

    let start = Instant::now() + Duration::from_millis(20);
    for s in &start_txs {
        let _ = s.send(Some(start));
    }
    let warmup_intervals = (p.warmup_s / INTERVAL.as_secs_f64()).ceil() as u64;
    let load_end_s = p.warmup_s + p.duration_s;
    // Per interval: executors reported, merged stats, in flight, covered
    // length, busy time summed over executors.
    let mut pending: std::collections::BTreeMap<u64, (usize, OpSet, usize, Duration, Duration)> =
        Default::default();
    let mut next_emit = 0u64;
    let mut done = 0;
    let mut totals = OpSet::new(p.mode == LoopMode::Open);
    let mut counters = PoolCounters::default();
    let mut sent = 0;
    let mut cpu_mark = (Instant::now(), generator_cpu());
    let mut measured_cpu = (Duration::ZERO, Duration::ZERO);
    let mut warnings: Vec<String> = Vec::new();
    let mut last_loss: Option<String> = None;
    let mut emit = |index: u64,
                    set: OpSet,
                    in_flight: usize,
                    len: Duration,
                    busy: Duration,
                    sink: &mut IntervalSink<'_>| {
        let now = (Instant::now(), generator_cpu());
        let wall = now.0.duration_since(cpu_mark.0);
        // A spinning executor is on the CPU while it has nothing to do:
        // its CPU time is then its busy time (without spinning, busy
        // time also counts moments it was preempted, so CPU is lower).
        let cpu = now.1.saturating_sub(cpu_mark.1).min(busy);
        cpu_mark = now;
        let cpu_pct = 100.0 * cpu.as_secs_f64() / (wall.as_secs_f64() * n as f64).max(1e-9);
        let warmup = index < warmup_intervals;
        let drain = (INTERVAL * index as u32).as_secs_f64() >= load_end_s - END_EPSILON_S;
        if !warmup {
            measured_cpu.0 += cpu;
            measured_cpu.1 += wall;
        }
        sink(&IntervalStats {
            index,
            len,
            drain,
            warmup,
            stats: set,
            in_flight,
            cpu_pct,
        });
    };
    while done < n {
        let Ok((_, msg)) = rx.recv() else { break };
        match msg {
            ShardMsg::Interval {
                index,
                len,
                stats,
                in_flight,
                busy,
            } => {
                let e = pending.entry(index).or_insert_with(|| {
                    (
                        0,
                        OpSet::new(p.mode == LoopMode::Open),
                        0,
                        Duration::ZERO,
                        Duration::ZERO,
                    )
                });
                e.0 += 1;
                e.1.merge(&stats);
                e.2 += in_flight;
                // Executors end at slightly different times: the interval
                // lasted as long as the longest of them.
                e.3 = e.3.max(len);
                e.4 += busy;
                // Emit every interval all executors have reported, in order.
                while pending.get(&next_emit).is_some_and(|e| e.0 == n) {
                    if let Some((_, set, inf, len, busy)) = pending.remove(&next_emit) {
                        emit(next_emit, set, inf, len, busy, sink);
                    }
                    next_emit += 1;
                }
            }
            ShardMsg::Done {
                totals: t,
                counters: c,
                sent: s,
                last_loss: l,
            } => {
                done += 1;
                if l.is_some() {
                    last_loss = l;
                }
                totals.merge(&t);
                counters.handshakes += c.handshakes;
                counters.connect_failures += c.connect_failures;
                counters.connections_lost += c.connections_lost;
                counters.connections_churned += c.connections_churned;
                counters.late_responses += c.late_responses;
                sent += s;
            }
            ShardMsg::Failed(e) => warnings.push(e),
            ShardMsg::Ready => {}
        }
    }
    // Partial last intervals (executors end at slightly different times).
    for (index, (_, set, inf, len, busy)) in std::mem::take(&mut pending) {
        emit(index, set, inf, len, busy, sink);
    }
    for (id, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            warnings.push(format!("generator executor {id} ended abnormally: {e}"));
        }
    }
    if counters.connections_lost > 0 {
        warnings.push(format!(
            "{} connection(s) to {addr} were lost during the run; last cause: {}",
            counters.connections_lost,
            last_loss.as_deref().unwrap_or("unknown")
        ));
    }
    let cpu_pct =
        100.0 * measured_cpu.0.as_secs_f64() / (measured_cpu.1.as_secs_f64() * n as f64).max(1e-9);
    Ok(RunResult {
        totals,
        counters,
        sent,
        cpu_pct,
        cpus,
        warnings,
    })
}

/// One executor's state; lives in an `Rc` on that executor only.
struct Shard {
    plan: Arc<Plan>,
    keys: Vec<KeyCtx>,
    sni: Vec<Vec<u8>>,
    pool: Pool,
    rng: RefCell<SmallRng>,
    /// Completions of the current interval.
    cur: RefCell<OpSet>,
    /// Requests scheduled in the measured window.
    total: RefCell<OpSet>,
    outstanding: Cell<usize>,
    sent: Cell<u64>,
    measure_from: Instant,
    measure_to: Instant,
    timeout: Duration,
    open: bool,
}

async fn shard_main(ctx: ShardCtx) {
    let send = |m: ShardMsg| {
        let _ = ctx.tx.send((ctx.id, m));
    };
    let p = &ctx.plan.profile;
    let mut rng = SmallRng::seed_from_u64(ctx.seed);
    let mut keys = Vec::with_capacity(ctx.plan.keys.len());
    for k in &ctx.plan.keys {
        match KeyCtx::new(k.clone(), &mut rng) {
            Ok(k) => keys.push(k),
            Err(e) => {
                send(ShardMsg::Failed(keycore_keys::error_chain(&e)));
                let _ = ctx.start_rx.recv();
                return;
            }
        }
    }
    let sni = (0..keys.len())
        .map(|i| format!("k{i}.example.com").into_bytes())
        .collect();
    let mut cfg = PoolConfig::new(ctx.addr);
    cfg.connections = share(p.connections, ctx.id, ctx.n).max(1);
    cfg.request_timeout = p.timeout();
    cfg.conn_lifetime = p.conn_lifetime_s.map(Duration::from_secs_f64);
    let pool = match Pool::start(cfg.clone(), ctx.tls.clone()) {
        Ok(pool) => pool,
        Err(e) => {
            send(ShardMsg::Failed(e.to_string()));
            let _ = ctx.start_rx.recv();
            return;
        }
    };
    if let Err(e) = pool.wait_connected(cfg.connections, CONNECT_WITHIN).await {
        pool.close();
        send(ShardMsg::Failed(format!(
            "could not open {} TLS connection(s) to {}: {e}",
            cfg.connections, ctx.addr
        )));
        let _ = ctx.start_rx.recv();
        return;
    }
    send(ShardMsg::Ready);
    // Blocking here is fine: nothing else runs on this executor yet.
    let Ok(Some(start)) = ctx.start_rx.recv() else {
        pool.close();
        return;
    };
    let open = p.mode == LoopMode::Open;
    let measure_from = start + p.warmup();
    let measure_to = measure_from + p.duration();
    let st = Rc::new(Shard {
        plan: ctx.plan.clone(),
        keys,
        sni,
        pool,
        rng: RefCell::new(rng),
        cur: RefCell::new(OpSet::new(open)),
        total: RefCell::new(OpSet::new(open)),
        outstanding: Cell::new(0),
        sent: Cell::new(0),
        measure_from,
        measure_to,
        timeout: p.timeout(),
        open,
    });
    let finished = Rc::new(Cell::new(false));
    let ticker = {
        let (st, finished, tx, id) = (st.clone(), finished.clone(), ctx.tx.clone(), ctx.id);
        glommio::spawn_local(async move {
            // Busy time from here on (connecting is not in interval 0).
            let _ = glommio::executor().executor_stats();
            let mut index = 0u64;
            loop {
                let due = start + INTERVAL * (index as u32 + 1);
                while Instant::now() < due && !finished.get() {
                    Timer::new(
                        due.saturating_duration_since(Instant::now())
                            .min(INTERVAL / 10),
                    )
                    .await;
                }
                // Cut short when the run finished before `due`.
                let len = Instant::now()
                    .min(due)
                    .saturating_duration_since(start + INTERVAL * index as u32);
                let set = {
                    let mut cur = st.cur.borrow_mut();
                    let fresh = OpSet::new(st.open);
                    Box::new(std::mem::replace(&mut *cur, fresh))
                };
                let busy = glommio::executor().executor_stats().total_runtime();
                let _ = tx.send((
                    id,
                    ShardMsg::Interval {
                        index,
                        len,
                        stats: set,
                        in_flight: st.outstanding.get(),
                        busy,
                    },
                ));
                index += 1;
                if finished.get() {
                    break;
                }
            }
        })
    };
    Timer::new(start.saturating_duration_since(Instant::now())).await;
    if let Some(r) = ctx.plan.replay.clone() {
        replay_loop(&st, start, ctx.id, ctx.n, &r, cfg.connections).await;
    } else if open {
        open_loop(&st, start, ctx.id, ctx.n).await;
    } else {
        closed_loop(&st, ctx.id, ctx.n).await;
    }
    // Drain: everything still in flight times out by `timeout` after its schedule.
    let drain_until = Instant::now() + st.timeout + DRAIN_GRACE;
    while st.outstanding.get() > 0 && Instant::now() < drain_until {
        Timer::new(Duration::from_millis(5)).await;
    }
    finished.set(true);
    ticker.await;
    let counters = st.pool.counters();
    let last_loss = st.pool.last_connection_loss();
    st.pool.close();
    let totals = Box::new(std::mem::take(&mut *st.total.borrow_mut()));
    send(ShardMsg::Done {
        totals,
        counters,
        sent: st.sent.get(),
        last_loss,
    });
}

async fn open_loop(st: &Rc<Shard>, start: Instant, id: usize, n: usize) {
    let p = &st.plan.profile;
    let mut sched = Schedule::new(p.rate / n as f64, p.ramp_s, p.arrivals);
    let end_s = p.warmup_s + p.duration_s;
    // Stagger executors' first arrivals so constant-rate shards interleave.
    let offset = (id as f64) / (n as f64) / (p.rate / n as f64);
    // A spinning executor sees its timers as they fall due (it polls them
    // while idle), so even a short wait costs no wake-up: never send early.
    let granularity = if p.spin_us > 0 {
        Duration::ZERO
    } else {
        SLEEP_GRANULARITY
    };
    let mut spawned = 0u32;
    loop {
        let u = 1.0 - st.rng.borrow_mut().random::<f64>();
        let t = sched.next(u) + offset;
        // Tolerance: summed gaps drift below exact multiples (400 × 1/400 < 1).
        if t >= end_s - END_EPSILON_S {
            break;
        }
        let at = start + Duration::from_secs_f64(t);
        let now = Instant::now();
        if at > now + granularity {
            Timer::new(at - now).await;
            spawned = 0;
        } else {
            spawned += 1;
            if spawned >= SPAWNS_PER_YIELD {
                spawned = 0;
                futures_lite::future::yield_now().await;
            }
        }
        if st.outstanding.get() >= p.max_outstanding_per_core {
            not_sent(st, at);
            continue;
        }
        wait_exactly(at);
        glommio::spawn_local(request(st.clone(), at, None)).detach();
    }
}

/// Open loop over recorded arrivals (`--replay`): this executor's share
/// (the recorded connections [`replay::place`] gives it), each at its
/// recorded time from `start`, on its mapped connection; same spawning,
/// lag and not-sent accounting as [`open_loop`].
async fn replay_loop(
    st: &Rc<Shard>,
    start: Instant,
    id: usize,
    n: usize,
    r: &crate::replay::Replay,
    local_conns: usize,
) {
    let p = &st.plan.profile;
    let total = p.connections.max(1);
    let mut spawned = 0u32;
    for a in &r.arrivals {
        let (exec, conn) = crate::replay::place(a.conn, total, n);
        if exec != id {
            continue;
        }
        let at = start + Duration::from_secs_f64(a.t_s);
        let now = Instant::now();
        if at > now + SLEEP_GRANULARITY {
            Timer::new(at - now).await;
            spawned = 0;
        } else {
            spawned += 1;
            if spawned >= SPAWNS_PER_YIELD {
                spawned = 0;
                futures_lite::future::yield_now().await;
            }
        }
        if st.outstanding.get() >= p.max_outstanding_per_core {
            st.cur.borrow_mut().op(a.op).error(ErrorKind::NotSent);
            if at >= st.measure_from && at < st.measure_to {
                st.total.borrow_mut().op(a.op).error(ErrorKind::NotSent);
            }
            continue;
        }
        let fixed = (a.op, a.key, conn % local_conns.max(1));
        wait_exactly(at);
        glommio::spawn_local(request(st.clone(), at, Some(fixed))).detach();
    }
}

/// Count an arrival the generator had no room to send.
fn not_sent(st: &Shard, at: Instant) {
    let (op, _) = {
        let mut rng = st.rng.borrow_mut();
        st.plan.pick(rng.random(), rng.random())
    };
    st.cur.borrow_mut().op(op).error(ErrorKind::NotSent);
    if at >= st.measure_from && at < st.measure_to {
        st.total.borrow_mut().op(op).error(ErrorKind::NotSent);
    }
}

async fn closed_loop(st: &Rc<Shard>, id: usize, n: usize) {
    let workers = share(st.plan.profile.concurrency, id, n);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let st = st.clone();
            glommio::spawn_local(async move {
                while Instant::now() < st.measure_to {
                    request(st.clone(), Instant::now(), None).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
}

/// Send one request scheduled at `at`, check the answer, record the
/// outcome. `fixed`: a replayed request's operation, key and connection
/// (else drawn from the mix, on any connection).
async fn request(st: Rc<Shard>, at: Instant, fixed: Option<(OpKind, usize, usize)>) {
    st.outstanding.set(st.outstanding.get() + 1);
    st.sent.set(st.sent.get() + 1);
    let p = &st.plan.profile;
    let (prep, client_ip, verify) = {
        let mut rng = st.rng.borrow_mut();
        let (op, key) = match fixed {
            Some((op, key, _)) => (op, key),
            None => st.plan.pick(rng.random(), rng.random()),
        };
        let prep = check::prepare(op, key, &st.keys, &mut *rng);
        let ip = p.client_ip.then(|| {
            let r: u32 = rng.random_range(0..1 << 17);
            IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | r))
        });
        let verify = p.verify_fraction >= 1.0 || rng.random::<f64>() < p.verify_fraction;
        (prep, ip, verify)
    };
    let measured = at >= st.measure_from && at < st.measure_to;
    if st.open {
        let lag_us = Instant::now().saturating_duration_since(at).as_micros() as u64;
        if let Some(l) = &mut st.cur.borrow_mut().lag {
            record(l, lag_us);
        }
        if measured {
            if let Some(l) = &mut st.total.borrow_mut().lag {
                record(l, lag_us);
            }
        }
    }
    let extras = Extras {
        sni: if p.sni && prep.op.needs_key() {
            Some(&st.sni[prep.key])
        } else {
            None
        },
        client_ip,
        server_ip: p.server_ip,
    };
    let msg = check::message(&prep, &st.keys, &extras);
    let r = st
        .pool
        .call_on_until(&msg, at + st.timeout, fixed.map(|f| f.2))
        .await;
    // The latency ends when the answer's bytes were read from the socket,
    // not when this task got to run after that (its wake-up and the
    // answer's check are the tool's; they are recorded as `after_read`).
    let woke = Instant::now();
    let timing = r.as_ref().map(|resp| resp.timing).unwrap_or_default();
    let read = timing.read.unwrap_or(woke);
    let lat_us = read.saturating_duration_since(at).as_micros() as u64;
    let outcome = match r {
        Ok(resp) => check::check(&prep, &st.keys, resp.opcode, &resp.payload, verify)
            .map_err(ErrorKind::from_failure),
        Err(e) => Err(ErrorKind::from_client(&e)),
    };
    let recorded = Instant::now();
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
    let apply = |set: &mut OpSet, op: OpKind| match outcome {
        Ok(v) => {
            set.op(op).ok(lat_us, v);
            if let Some(w) = timing.written {
                record(&mut set.phases.to_wire, us(at, w));
                record(&mut set.phases.round_trip, us(w, read));
            }
            record(&mut set.phases.after_read, us(read, recorded));
        }
        Err(k) => set.op(op).error(k),
    };
    apply(&mut st.cur.borrow_mut(), prep.op);
    if measured {
        apply(&mut st.total.borrow_mut(), prep.op);
    }
    st.outstanding.set(st.outstanding.get() - 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::load_public_keys;
    use crate::profile::{Arrivals, Profile};
    use crate::testsrv::TestServer;
    use crate::tls::TlsOptions;
    use std::sync::atomic::Ordering;

    fn plan(srv: &TestServer, profile: Profile) -> Arc<Plan> {
        let keys = load_public_keys(std::slice::from_ref(&srv.key_dir)).unwrap();
        Arc::new(Plan::new(profile, keys).unwrap())
    }

    #[test]
    fn open_loop_run_verifies_every_response_and_counts_agree_with_the_server() {
        let srv = TestServer::start();
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 400.0,
            arrivals: Arrivals::Constant,
            duration_s: 1.0,
            warmup_s: 0.0,
            connections: 2,
            mix: Profile::parse_mix(
                "ecdsa-p256-sha256=1,rsa-pkcs1-sha256=1,rsa-pss-sha256=1,ed25519=1,ping=1",
            )
            .unwrap(),
            sni: true,
            client_ip: true,
            seed: Some(3),
            ..Profile::default()
        };
        let mut intervals = Vec::new();
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |i| {
            intervals.push((i.index, i.stats.all().ok))
        })
        .unwrap();
        let all = r.totals.all();
        assert_eq!(all.error_count(), 0, "{:?}", all.errors);
        // 400/s for 1 s, constant arrivals from t=0: exactly 400 scheduled.
        assert_eq!(all.ok, 400);
        assert_eq!(all.verified, 400);
        assert_eq!(r.sent, 400);
        assert_eq!(srv.knobs.requests.load(Ordering::Relaxed), 400);
        for op in [OpKind::EcdsaP256Sha256, OpKind::Ed25519, OpKind::Ping] {
            assert!(r.totals.ops[op.index()].ok > 50, "{op}");
        }
        let per_interval: u64 = intervals.iter().map(|(_, ok)| ok).sum();
        assert_eq!(per_interval, 400);
        assert_eq!(r.counters.handshakes, 2);
    }

    #[test]
    fn open_loop_shows_a_server_stall_in_the_tail_and_closed_loop_hides_it() {
        let srv = TestServer::start();
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 200.0,
            arrivals: Arrivals::Constant,
            duration_s: 1.0,
            warmup_s: 0.0,
            connections: 1,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        // The server pauses 300 ms once, at the start of the run.
        srv.knobs.stall_once_ms.store(300, Ordering::Relaxed);
        let r = run_plan(srv.addr, &tls, plan(&srv, profile.clone()), &mut |_| {}).unwrap();
        let ping = &r.totals.ops[OpKind::Ping.index()];
        assert_eq!(ping.ok, 200, "{:?} {:?}", ping.errors, r.counters);
        // ~60 requests were scheduled during the pause; each waited for its
        // end, measured from its scheduled time: p90 and p99 show the stall.
        let p = |q| ping.hist.value_at_quantile(q);
        assert!(p(0.99) >= 200_000, "p99 {} µs", p(0.99));
        assert!(p(0.90) >= 50_000, "p90 {} µs", p(0.90));
        assert!(p(0.50) < 50_000, "p50 {} µs", p(0.50));
        // The same pause under a closed loop delays one request only: its
        // p99 stays small (coordinated omission), which is why open is default.
        srv.knobs.stall_once_ms.store(300, Ordering::Relaxed);
        let closed = Profile {
            mode: LoopMode::Closed,
            concurrency: 1,
            ..profile
        };
        let c = run_plan(srv.addr, &tls, plan(&srv, closed), &mut |_| {}).unwrap();
        let cp = &c.totals.ops[OpKind::Ping.index()];
        assert!(
            cp.hist.max() >= 290_000,
            "the stall happened: max {}",
            cp.hist.max()
        );
        assert!(
            cp.hist.value_at_quantile(0.99) < 50_000,
            "closed p99 {}",
            cp.hist.value_at_quantile(0.99)
        );
    }

    /// A spinning generator (issue 13) sends every arrival and its CPU
    /// figure leaves the idle spinning out: at 200
    /// pings/s it polls through most of each 5 ms gap (spin 1 ms) but is
    /// busy for a small part of it.
    #[test]
    fn a_spinning_generator_counts_its_spinning_as_idle() {
        let srv = TestServer::start();
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 200.0,
            arrivals: Arrivals::Constant,
            duration_s: 1.0,
            warmup_s: 0.0,
            connections: 1,
            spin_us: 1000,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        let mut cpu = Vec::new();
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |i| {
            cpu.push(i.cpu_pct)
        })
        .unwrap();
        let ping = &r.totals.ops[OpKind::Ping.index()];
        assert_eq!(ping.ok, 200, "{:?}", ping.errors);
        // Spinning ~20% of the time (1 ms of each 5 ms gap) is not CPU use:
        // the figure stays far below what the spinning itself would give.
        assert!(
            r.cpu_pct < 15.0,
            "generator CPU {:.1}% (intervals {cpu:?})",
            r.cpu_pct
        );
    }

    /// The generator's split of each latency (issue 13): every OK request
    /// has all three parts, and a server holding each answer 20 ms shows
    /// up in the round trip, not in the generator's own parts.
    #[test]
    fn the_latency_split_puts_a_slow_server_in_the_round_trip() {
        let srv = TestServer::start();
        srv.knobs.delay_ms.store(20, Ordering::Relaxed);
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 100.0,
            arrivals: Arrivals::Constant,
            duration_s: 0.5,
            warmup_s: 0.0,
            connections: 1,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |_| {}).unwrap();
        let ping = &r.totals.ops[OpKind::Ping.index()];
        assert_eq!(ping.ok, 50, "{:?}", ping.errors);
        let ph = &r.totals.phases;
        for h in [&ph.to_wire, &ph.round_trip, &ph.after_read] {
            assert_eq!(h.len(), 50);
        }
        assert!(ph.round_trip.min() >= 20_000, "{}", ph.round_trip.min());
        let to_wire_p50 = ph.to_wire.value_at_quantile(0.5);
        assert!(to_wire_p50 < 20_000, "{to_wire_p50}");
        // Latency = scheduled → written + written → read, per request.
        assert!(ping.hist.min() >= ph.round_trip.min());
        assert!(ping.hist.max() >= ph.round_trip.max());
    }

    /// Arrivals closer together than a timer wake-up are waited for, not
    /// sent early: every request is written after its scheduled time (an
    /// early one would show as a 0 µs scheduled → written, clamped to 1).
    #[test]
    fn no_request_leaves_before_its_scheduled_time() {
        let srv = TestServer::start();
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 25_000.0,
            arrivals: Arrivals::Constant,
            duration_s: 0.1,
            warmup_s: 0.0,
            connections: 1,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |_| {}).unwrap();
        let ping = &r.totals.ops[OpKind::Ping.index()];
        assert_eq!(ping.ok, 2500, "{:?}", ping.errors);
        let w = &r.totals.phases.to_wire;
        assert_eq!(w.len(), 2500);
        assert!(
            w.min() > 1,
            "a request was written before its time: {}",
            w.min()
        );
    }

    #[test]
    fn two_executors_split_the_load_and_merge_exactly() {
        let srv = TestServer::start();
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 400.0,
            arrivals: Arrivals::Constant,
            duration_s: 1.0,
            warmup_s: 0.0,
            connections: 3,
            cores: 2,
            mix: Profile::parse_mix("ecdsa-p256-sha256=1,ping=1").unwrap(),
            ..Profile::default()
        };
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |_| {}).unwrap();
        assert_eq!(r.cpus.len(), 2);
        assert_eq!(r.totals.all().ok, 400, "{:?}", r.totals.all().errors);
        assert_eq!(r.sent, 400);
        // 3 connections over 2 executors: 2 + 1.
        assert_eq!(r.counters.handshakes, 3);
        assert_eq!(srv.knobs.requests.load(Ordering::Relaxed), 400);
    }

    #[test]
    fn arrivals_beyond_the_outstanding_limit_are_counted_not_queued() {
        let srv = TestServer::start();
        srv.knobs.stall_once_ms.store(400, Ordering::Relaxed);
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 200.0,
            arrivals: Arrivals::Constant,
            duration_s: 0.2,
            warmup_s: 0.0,
            connections: 1,
            max_outstanding_per_core: 5,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |_| {}).unwrap();
        let ping = &r.totals.ops[OpKind::Ping.index()];
        // 40 arrivals during a 400 ms stall: 5 sent (and answered after it).
        assert_eq!(ping.ok, 5);
        assert_eq!(ping.errors.get(&ErrorKind::NotSent), Some(&35));
        assert_eq!(r.sent, 5);
    }

    #[test]
    fn cpus_are_picked_from_the_allowed_set() {
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let last = pick_cpus(1, None);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0], allowed.iter().copied().max());
        let many = pick_cpus(allowed.len() + 2, Some(0));
        assert_eq!(many.iter().flatten().count(), allowed.len());
        assert_eq!(many.last(), Some(&None));
    }

    #[test]
    fn timeouts_are_counted_when_the_server_is_slower_than_the_timeout() {
        let srv = TestServer::start();
        srv.knobs.delay_ms.store(200, Ordering::Relaxed);
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        let profile = Profile {
            rate: 50.0,
            arrivals: Arrivals::Constant,
            duration_s: 0.5,
            warmup_s: 0.0,
            connections: 1,
            timeout_ms: 50,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |_| {}).unwrap();
        let ping = &r.totals.ops[OpKind::Ping.index()];
        assert_eq!(ping.ok, 0);
        assert_eq!(ping.errors.get(&ErrorKind::Timeout), Some(&25));
    }

    #[test]
    fn a_client_certificate_the_server_refuses_is_reported_with_the_tls_cause() {
        let srv = TestServer::start();
        let other = TestServer::start();
        // Our client certificate is from another CA: the server rejects it.
        let mut paths = srv.tls.clone();
        paths.cert = other.tls.cert.clone();
        paths.key = other.tls.key.clone();
        let profile = Profile {
            duration_s: 0.2,
            warmup_s: 0.0,
            connections: 1,
            mix: Profile::parse_mix("ping=1").unwrap(),
            ..Profile::default()
        };
        // TLS 1.2: the refusal ends the handshake, so the run can't start.
        let opts = TlsOptions {
            tls12_only: true,
            server_name: None,
        };
        let tls = ClientTls::from_paths(&paths, &opts).unwrap();
        let e = match run_plan(srv.addr, &tls, plan(&srv, profile.clone()), &mut |_| {}) {
            Ok(_) => panic!("a refused certificate must fail the run"),
            Err(e) => e.to_string(),
        };
        // The alert, or a broken pipe if the server's close raced our write.
        assert!(e.contains("TLS"), "{e}");
        // TLS 1.3: the client finishes its handshake before the server
        // checks the certificate; the refusal arrives as an alert on the
        // first read. Requests fail and the report says why.
        let tls = ClientTls::from_paths(&paths, &TlsOptions::default()).unwrap();
        let r = run_plan(srv.addr, &tls, plan(&srv, profile), &mut |_| {}).unwrap();
        assert_eq!(r.totals.all().ok, 0);
        assert!(r.counters.connections_lost > 0);
        let w = r.warnings.join("\n");
        assert!(w.contains("were lost") && w.contains("last cause"), "{w}");
    }

    #[test]
    fn unreachable_server_is_a_clear_error() {
        let srv = TestServer::start();
        let tls = ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap();
        // A port with nothing listening.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let profile = Profile {
            duration_s: 0.2,
            warmup_s: 0.0,
            connections: 1,
            ..Profile::default()
        };
        let t0 = Instant::now();
        let e = run_plan(free, &tls, plan(&srv, profile), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(&free.to_string()), "{e}");
        assert!(
            e.to_lowercase().contains("refused"),
            "the cause is named: {e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "gives up early");
    }
}
