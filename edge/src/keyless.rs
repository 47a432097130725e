//! The keyless hub: the one place the edge talks to key servers.
//!
//! Owns: one glommio executor thread holding a [`keycore_loadgen::Pool`] per
//! `--keyserver` (the load generator's client: mutual TLS, pipelined,
//! long-lived connections, reconnect with backoff), a bounded queue that
//! handshake workers put signing jobs into, failover across key servers, and
//! key-server health.
//!
//! Why a hub: rustls asks for a signature synchronously, on the thread that
//! drives the handshake (a worker of [`crate::server`]). The worker hands the
//! job over here and blocks on a one-shot reply with a deadline; the hub
//! multiplexes every waiting handshake over a few connections, so a thousand
//! handshakes in flight cost a thousand pipelined requests, not a thousand
//! key-server connections.
//!
//! Failover: key servers are tried healthiest first (connections up, then
//! fewest recent failures). An attempt that times out, finds no connection or
//! loses its connection moves on to the next key server while the job's
//! deadline lasts. An error *answer* (key not found, crypto error) also moves
//! on, since another key server may hold the key; if none succeeds the job
//! fails with the last reason. There is no fallback of any other kind: no
//! answer means no signature, and the handshake fails.
//!
//! Must not: block the executor (the queue lock is held for a push or a
//! drain only), or keep a job past its deadline.

use crate::metrics::{EdgeStats, KsResult};
use futures_lite::future::poll_fn;
use glommio::timer::Timer;
use keycore_loadgen::{ClientError, ClientTls, Pool, PoolConfig};
use keycore_protocol::{ErrorCode, Message, Op, Ski};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often the hub copies each pool's connection count into the metrics.
const HEALTH_PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// A key server that failed is tried last for this long (unless all did).
const DEMOTE_FOR: Duration = Duration::from_secs(2);

/// Why a signature could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeylessError {
    /// The deadline passed with attempts outstanding.
    #[error("no key server answered within {0:?}")]
    Timeout(Duration),
    /// No key server had a connection up.
    #[error("no key server is reachable")]
    Unavailable,
    /// A key server answered with an error code (the last one tried).
    #[error("key server {addr} answered error {code}")]
    Server {
        /// Which key server.
        addr: SocketAddr,
        /// Its error code.
        code: ErrorCode,
    },
    /// The hub's queue was full.
    #[error("keyless queue full ({0} jobs waiting)")]
    Overloaded(usize),
    /// The hub is stopped.
    #[error("edge is shutting down")]
    Stopped,
}

/// A signature and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The signature bytes, as TLS wants them.
    pub signature: Vec<u8>,
    /// The key server that made it.
    pub keyserver: SocketAddr,
    /// From job submission to answer (queueing and failover included).
    pub rtt: Duration,
}

/// What the key server is told about the visitor (SNI and client IP items,
/// for its logs and policies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visitor {
    /// The server name the visitor asked for.
    pub sni: Option<String>,
    /// The visitor's IP address.
    pub ip: Option<std::net::IpAddr>,
}

/// One job: sign `payload` with the key `ski` using `op`.
#[derive(Debug)]
struct Job {
    op: Op,
    ski: Ski,
    payload: Vec<u8>,
    visitor: Visitor,
    deadline: Instant,
    submitted: Instant,
    reply: Arc<Reply>,
}

#[derive(Debug, Default)]
struct Reply {
    slot: Mutex<Option<Result<Signed, KeylessError>>>,
    cv: Condvar,
}

impl Reply {
    fn set(&self, r: Result<Signed, KeylessError>) {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(r);
        }
        self.cv.notify_one();
    }
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    waker: Option<Waker>,
    stopped: bool,
}

/// Settings of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Key servers, in the operator's order of preference.
    pub keyservers: Vec<SocketAddr>,
    /// Client TLS towards them.
    pub tls: ClientTls,
    /// Connections per key server. Default 2 (assumption: pipelining makes
    /// a few enough; two so one reconnecting never leaves a server unused).
    pub connections: usize,
    /// Longest one attempt at one key server may take. Default 1 s.
    pub attempt_timeout: Duration,
    /// Jobs waiting in the hub at most; more are refused at once
    /// ([`KeylessError::Overloaded`]). Default 4096.
    pub queue_cap: usize,
}

/// Handle to the hub: cheap to clone, `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Hub {
    queue: Arc<Mutex<Queue>>,
    cap: usize,
}

impl Hub {
    /// Ask for a signature and wait for it, at most until `deadline`.
    /// Blocks the calling thread (a handshake worker), never the hub.
    pub fn sign_blocking(
        &self,
        op: Op,
        ski: Ski,
        payload: Vec<u8>,
        visitor: Visitor,
        deadline: Instant,
    ) -> Result<Signed, KeylessError> {
        let reply = Arc::new(Reply::default());
        let submitted = Instant::now();
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.stopped {
                return Err(KeylessError::Stopped);
            }
            if q.jobs.len() >= self.cap {
                return Err(KeylessError::Overloaded(q.jobs.len()));
            }
            q.jobs.push_back(Job {
                op,
                ski,
                payload,
                visitor,
                deadline,
                submitted,
                reply: reply.clone(),
            });
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
        let mut slot = reply.slot.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = slot.take() {
                return r;
            }
            let now = Instant::now();
            // The hub answers every job by its deadline; the extra 100 ms is
            // only a backstop should the hub thread itself be gone.
            let backstop = deadline + Duration::from_millis(100);
            if now >= backstop {
                return Err(KeylessError::Timeout(deadline - submitted));
            }
            slot = reply
                .cv
                .wait_timeout(slot, backstop - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The running hub thread.
#[derive(Debug)]
pub struct HubThread {
    /// Submit jobs here.
    pub hub: Hub,
    join: Option<glommio::ExecutorJoinHandle<()>>,
}

impl HubThread {
    /// Start the executor and its pools. Returns at once; connections come
    /// up in the background (a key server that is down is retried with
    /// backoff, and the edge serves through the others meanwhile).
    pub fn start(cfg: HubConfig, stats: Arc<EdgeStats>) -> Result<HubThread, crate::EdgeError> {
        if cfg.keyservers.is_empty() {
            return Err(crate::EdgeError::NoKeyservers);
        }
        let cap = cfg.queue_cap.max(1);
        let queue = Arc::new(Mutex::new(Queue::default()));
        let q2 = queue.clone();
        let join = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("edge-keyless")
            // No storage I/O here; glommio's 10 MiB default would not fit
            // the default 8 MiB locked-memory limit.
            .io_memory(512 * 1024)
            .spawn(move || hub_main(cfg, q2, stats))
            .map_err(|e| crate::EdgeError::Hub(e.to_string()))?;
        Ok(HubThread {
            hub: Hub { queue, cap },
            join: Some(join),
        })
    }

    /// Refuse new jobs, fail queued ones, close connections, join the thread.
    pub fn stop(&mut self) {
        {
            let mut q = self.hub.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.stopped = true;
            for j in q.jobs.drain(..) {
                j.reply.set(Err(KeylessError::Stopped));
            }
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for HubThread {
    fn drop(&mut self) {
        self.stop();
    }
}

struct KsState {
    addr: SocketAddr,
    pool: Pool,
    demoted_until: std::cell::Cell<Option<Instant>>,
}

async fn hub_main(cfg: HubConfig, queue: Arc<Mutex<Queue>>, stats: Arc<EdgeStats>) {
    let mut servers = Vec::with_capacity(cfg.keyservers.len());
    for &addr in &cfg.keyservers {
        let mut pc = PoolConfig::new(addr);
        pc.connections = cfg.connections.max(1);
        pc.request_timeout = cfg.attempt_timeout;
        pc.connect_timeout = cfg.attempt_timeout.max(Duration::from_secs(1));
        match Pool::start(pc, cfg.tls.clone()) {
            Ok(pool) => servers.push(KsState {
                addr,
                pool,
                demoted_until: std::cell::Cell::new(None),
            }),
            Err(e) => {
                tracing::error!(keyserver = %addr, "keyless pool: {e}");
                return;
            }
        }
    }
    let servers = Rc::new(servers);
    let stopped = Rc::new(std::cell::Cell::new(false));

    // Health publisher: connection counts into the metrics, and a log line
    // when a key server goes down or comes back.
    {
        let servers = servers.clone();
        let stats = stats.clone();
        let stopped = stopped.clone();
        glommio::spawn_local(async move {
            let mut was_up: Vec<Option<bool>> = vec![None; servers.len()];
            while !stopped.get() {
                for (i, s) in servers.iter().enumerate() {
                    let up = s.pool.connections_up();
                    stats.keyservers[i].connections_up.store(up as u64, Relaxed);
                    let now_up = up > 0;
                    if was_up[i] != Some(now_up) {
                        if now_up {
                            tracing::info!(keyserver = %s.addr, connections = up, "key server up");
                        } else if was_up[i].is_some() {
                            let why = s
                                .pool
                                .last_connection_loss()
                                .or_else(|| s.pool.last_connect_error().map(|e| e.to_string()))
                                .unwrap_or_default();
                            tracing::warn!(keyserver = %s.addr, "key server down: {why}");
                        }
                        was_up[i] = Some(now_up);
                    }
                }
                Timer::new(HEALTH_PUBLISH_EVERY).await;
            }
        })
        .detach();
    }

    loop {
        let jobs = poll_fn(|cx| {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            if !q.jobs.is_empty() {
                return Poll::Ready(Some(q.jobs.drain(..).collect::<Vec<_>>()));
            }
            if q.stopped {
                return Poll::Ready(None);
            }
            q.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(jobs) = jobs else { break };
        for job in jobs {
            let servers = servers.clone();
            let stats = stats.clone();
            glommio::spawn_local(async move {
                let r = run_job(&servers, &stats, &job).await;
                job.reply.set(r);
            })
            .detach();
        }
    }
    stopped.set(true);
    for s in servers.iter() {
        s.pool.close();
    }
    // Let the drivers see the close before the executor goes away.
    Timer::new(Duration::from_millis(20)).await;
}

/// Key servers in the order to try: up and not demoted first, then up but
/// demoted, then down (a down pool may have reconnected by the time we get
/// there); command-line order within a class.
fn order(servers: &[KsState], now: Instant) -> Vec<usize> {
    let class = |s: &KsState| {
        let up = s.pool.connections_up() > 0;
        let demoted = s.demoted_until.get().is_some_and(|t| t > now);
        match (up, demoted) {
            (true, false) => 0,
            (true, true) => 1,
            (false, _) => 2,
        }
    };
    let mut idx: Vec<usize> = (0..servers.len()).collect();
    idx.sort_by_key(|&i| class(&servers[i]));
    idx
}

async fn run_job(
    servers: &[KsState],
    stats: &EdgeStats,
    job: &Job,
) -> Result<Signed, KeylessError> {
    let msg = Message {
        opcode: Some(job.op),
        ski: Some(&job.ski),
        sni: job.visitor.sni.as_deref().map(str::as_bytes),
        client_ip: job.visitor.ip,
        payload: Some(&job.payload),
        ..Message::default()
    };
    let mut last = KeylessError::Unavailable;
    let mut any_tried = false;
    for i in order(servers, Instant::now()) {
        let s = &servers[i];
        let ks = &stats.keyservers[i];
        let now = Instant::now();
        if now >= job.deadline {
            break;
        }
        // A pool with nothing up would wait for a connection for the whole
        // attempt; skip it while another server may still answer.
        if s.pool.connections_up() == 0 {
            ks.count(KsResult::Unavailable);
            continue;
        }
        any_tried = true;
        let t0 = Instant::now();
        match s.pool.call_until(&msg, job.deadline).await {
            Ok(r) if r.opcode == Op::RESPONSE && !r.payload.is_empty() => {
                ks.count(KsResult::Ok);
                ks.rtt.record(t0.elapsed());
                s.demoted_until.set(None);
                return Ok(Signed {
                    signature: r.payload,
                    keyserver: s.addr,
                    rtt: job.submitted.elapsed(),
                });
            }
            Ok(r) => {
                ks.count(KsResult::Error);
                let code = r.error_code().unwrap_or(ErrorCode::INTERNAL);
                tracing::warn!(keyserver = %s.addr, op = ?job.op, "key server answered error {code}");
                last = KeylessError::Server { addr: s.addr, code };
            }
            Err(ClientError::Timeout) => {
                ks.count(KsResult::Timeout);
                s.demoted_until.set(Some(Instant::now() + DEMOTE_FOR));
                tracing::warn!(keyserver = %s.addr, "keyless request timed out");
                last = KeylessError::Timeout(job.deadline - job.submitted);
            }
            Err(e) => {
                ks.count(KsResult::Unavailable);
                s.demoted_until.set(Some(Instant::now() + DEMOTE_FOR));
                tracing::warn!(keyserver = %s.addr, "keyless request failed: {e}");
                if !matches!(last, KeylessError::Server { .. } | KeylessError::Timeout(_)) {
                    last = KeylessError::Unavailable;
                }
            }
        }
    }
    if !any_tried && Instant::now() < job.deadline {
        // Every pool is down: wait briefly for a reconnect rather than fail a
        // visitor in the first milliseconds after a key-server restart.
        let wait_until = job
            .deadline
            .min(Instant::now() + Duration::from_millis(200));
        while Instant::now() < wait_until {
            Timer::new(Duration::from_millis(5)).await;
            if servers.iter().any(|s| s.pool.connections_up() > 0) {
                return Box::pin(run_job(servers, stats, job)).await;
            }
        }
    }
    if Instant::now() >= job.deadline && !matches!(last, KeylessError::Server { .. }) {
        if any_tried {
            last = KeylessError::Timeout(job.deadline - job.submitted);
        } else {
            last = KeylessError::Unavailable;
        }
    }
    Err(last)
}
