//! The keyless client: what the edge does to reach a key server.
//!
//! Two clients share the codec (`keycore-protocol`) and the TLS settings
//! ([`crate::tls::ClientTls`]):
//! - [`Pool`]: asynchronous, for glommio. A fixed set of long-lived mutual-TLS
//!   connections, each carrying many requests at once (pipelined, matched to
//!   responses by request ID, since responses come back in any order), with a
//!   per-request timeout, a cap on requests in flight per connection, reconnect
//!   with exponential backoff, and optional connection churn. One pool belongs
//!   to one executor (it is `Rc`-based, never shared across threads).
//! - [`BlockingClient`]: one connection on a std `TcpStream`, one thread, for
//!   tests and tools.
//!
//! Requests are encoded with [`Message::encode`], which pads them to 1024 bytes
//! exactly as the edge does. This module does not judge responses (that is
//! [`crate::check`]) and keeps no latency statistics (that is
//! [`crate::stats`]); it only counts connection-level events.

use crate::tls::ClientTls;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use keycore_protocol::{
    frame, EncodeError, ErrorCode, FrameStatus, Message, Op, MAX_BODY_LEN, MAX_MESSAGE_LEN,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Requests in flight on one connection at most: the reference server's
/// limit (PROTOCOL.md "Transport"); more would only queue inside the server.
pub const MAX_IN_FLIGHT_PER_CONN: usize = 1024;

/// Read buffer per connection: two whole messages of the largest size, so a
/// complete message always fits after the unparsed tail is compacted.
const READ_BUF_LEN: usize = 2 * MAX_MESSAGE_LEN;

/// How many read/write rounds a connection driver makes before yielding to
/// other tasks on the executor (fairness with the request scheduler).
const DRIVER_ROUNDS_PER_POLL: usize = 32;

/// [`Pool::wait_connected`] gives up once no handshake succeeded and each
/// connection failed this many times (with the default backoff: ~350 ms).
pub const GIVE_UP_AFTER_FAILURES: usize = 3;

/// While no connection is up, a request waiting for one re-checks this often.
const NOT_CONNECTED_POLL: Duration = Duration::from_millis(1);

/// What went wrong with a request or a connection.
///
/// `Timeout`, `ConnectionLost` and `NotConnected` are unit variants because
/// they happen on the hot path under overload and must not format strings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A pool without connections or without room for a request.
    #[error("a pool needs at least one connection and one request in flight")]
    PoolSettings {
        /// Connections asked for.
        connections: usize,
        /// Requests in flight per connection asked for.
        max_in_flight_per_conn: usize,
    },
    /// Could not connect or complete the TLS handshake.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// Where we dialled.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
    /// No response within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection carrying the request closed before its response came.
    #[error("connection lost before the response arrived")]
    ConnectionLost,
    /// No connection was up for the whole timeout.
    #[error("no connection to the server is up")]
    NotConnected,
    /// The server sent bytes that are not a valid message.
    #[error("malformed message from server: {0}")]
    Protocol(String),
    /// The request can't be encoded (items over 65535 bytes).
    #[error("request can't be encoded: {0}")]
    Encode(EncodeError),
    /// A socket or TLS error on an established connection.
    #[error("i/o: {0}")]
    Io(String),
    /// A response whose ID matches no request we sent (blocking client only).
    #[error("response has ID {got}, expected one of the requests sent")]
    UnexpectedId {
        /// The ID that came back.
        got: u32,
    },
}

/// A decoded response that owns its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedResponse {
    /// Echoed request ID.
    pub id: u32,
    /// Response opcode (`RESPONSE`, `PONG`, `ERROR`, or whatever the server sent).
    pub opcode: Op,
    /// Payload bytes (empty when the item was absent).
    pub payload: Vec<u8>,
    /// When the request left and the answer arrived ([`Pool`] only; the
    /// blocking client leaves both `None`).
    pub timing: Timing,
}

/// Where a pooled request's time went on the client side (issue 13: the
/// generator's own share of a latency is printed, never subtracted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// When the write that carried the request returned from the socket
    /// (its bytes were in the kernel; flushed through TLS).
    pub written: Option<Instant>,
    /// When the read that completed the answer returned from the socket,
    /// before it was parsed, handed to its waiter or checked.
    pub read: Option<Instant>,
}

impl OwnedResponse {
    fn from_message(m: &Message<'_>) -> OwnedResponse {
        OwnedResponse {
            id: m.id,
            opcode: m.opcode.unwrap_or(Op(0)),
            payload: m.payload.unwrap_or(&[]).to_vec(),
            timing: Timing::default(),
        }
    }

    /// The error code if this is an error response (`None` for success).
    /// An error response without a payload reads as `INTERNAL`.
    pub fn error_code(&self) -> Option<ErrorCode> {
        (self.opcode == Op::ERROR).then(|| {
            ErrorCode(
                self.payload
                    .first()
                    .copied()
                    .unwrap_or(ErrorCode::INTERNAL.0),
            )
        })
    }
}

/// Settings of a [`Pool`]. Every default is documented with where it comes from.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Connections kept open. Default 4 (assumption: a handful of edge
    /// processes per key server per core).
    pub connections: usize,
    /// Requests in flight per connection at most. Default
    /// [`MAX_IN_FLIGHT_PER_CONN`] (the reference server's limit).
    pub max_in_flight_per_conn: usize,
    /// Per-request timeout. Default 5 s (assumption: well above any healthy
    /// HSM latency, short enough to notice a stall within a run).
    pub request_timeout: Duration,
    /// TCP connect + TLS handshake timeout. Default 5 s (assumption).
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failure. Default 50 ms (assumption).
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default 2 s (assumption).
    pub backoff_max: Duration,
    /// Replace each connection after this long (connection churn); `None`
    /// keeps connections for the whole run. Default `None` (assumption: the
    /// edge keeps key-server connections open).
    pub conn_lifetime: Option<Duration>,
}

impl PoolConfig {
    /// Defaults for a server at `addr`.
    pub fn new(addr: SocketAddr) -> PoolConfig {
        PoolConfig {
            addr,
            connections: 4,
            max_in_flight_per_conn: MAX_IN_FLIGHT_PER_CONN,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            conn_lifetime: None,
        }
    }
}

/// Connection-level counters of a pool (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolCounters {
    /// Completed TLS handshakes.
    pub handshakes: u64,
    /// Failed connect or handshake attempts.
    pub connect_failures: u64,
    /// Connections that ended unexpectedly (EOF, I/O or protocol error).
    pub connections_lost: u64,
    /// Connections closed on purpose by churn.
    pub connections_churned: u64,
    /// Responses whose request had already timed out (or whose ID we never sent).
    pub late_responses: u64,
}

/// One in-flight request's mailbox.
struct Slot {
    result: Option<Result<OwnedResponse, ClientError>>,
    waker: Option<Waker>,
    /// When the request's bytes were written (see [`Timing::written`]).
    written: Option<Instant>,
}

/// State of one connection shared between the driver task and callers.
/// Owner: the pool (one executor). Bounded: `waiters` by
/// `max_in_flight_per_conn`, `out` by that times the largest message.
struct ConnShared {
    /// Handshake done and driver running.
    up: bool,
    /// Churn: take no new requests, close when the in-flight ones are done.
    draining: bool,
    /// Encoded requests not yet handed to TLS.
    out: Vec<u8>,
    /// IDs of the requests in `out`, in order (their write is timestamped).
    out_ids: Vec<u32>,
    /// In-flight requests by ID.
    waiters: HashMap<u32, Slot>,
    /// Wakes the driver when `out` gains bytes.
    driver_waker: Option<Waker>,
}

impl ConnShared {
    /// A draining connection closes once its last request is done; the
    /// driver must be told, since nothing on the socket will wake it.
    fn wake_driver_if_drained(&mut self) {
        if self.draining && self.waiters.is_empty() {
            if let Some(w) = self.driver_waker.take() {
                w.wake();
            }
        }
    }

    fn fail_all(&mut self, err: ClientError) {
        for slot in self.waiters.values_mut() {
            if slot.result.is_none() {
                slot.result = Some(Err(err.clone()));
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
        self.out.clear();
        self.out_ids.clear();
    }
}

struct PoolInner {
    cfg: PoolConfig,
    tls: ClientTls,
    conns: Vec<Rc<RefCell<ConnShared>>>,
    rr: Cell<usize>,
    /// Request IDs: unique per pool for 2^32 requests.
    next_id: Cell<u32>,
    counters: RefCell<PoolCounters>,
    stop: Cell<bool>,
    capacity: glommio::sync::Semaphore,
    /// The most recent connect/handshake failure, for error messages.
    last_connect_error: RefCell<Option<ClientError>>,
    /// Why an established connection was last lost (a TLS 1.3 server
    /// refusing our certificate shows up only here, after the handshake).
    last_loss: RefCell<Option<String>>,
}

/// A pool of pipelined connections to one server, for one glommio executor.
///
/// Cloning is cheap (an `Rc`). Dropping every clone does not stop the
/// connection tasks; call [`Pool::close`].
#[derive(Clone)]
pub struct Pool {
    inner: Rc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.inner.cfg.addr)
            .field("connections", &self.inner.cfg.connections)
            .finish()
    }
}

impl Pool {
    /// Start the pool's connection tasks on the current executor. Returns at
    /// once; use [`Pool::wait_connected`] to wait for the first handshakes.
    pub fn start(cfg: PoolConfig, tls: ClientTls) -> Result<Pool, ClientError> {
        if cfg.connections == 0 || cfg.max_in_flight_per_conn == 0 {
            return Err(ClientError::PoolSettings {
                connections: cfg.connections,
                max_in_flight_per_conn: cfg.max_in_flight_per_conn,
            });
        }
        let conns = (0..cfg.connections)
            .map(|_| {
                Rc::new(RefCell::new(ConnShared {
                    up: false,
                    draining: false,
                    out: Vec::with_capacity(64 * 1024),
                    out_ids: Vec::with_capacity(64),
                    waiters: HashMap::with_capacity(cfg.max_in_flight_per_conn),
                    driver_waker: None,
                }))
            })
            .collect();
        let capacity =
            glommio::sync::Semaphore::new((cfg.connections * cfg.max_in_flight_per_conn) as u64);
        let inner = Rc::new(PoolInner {
            cfg,
            tls,
            conns,
            rr: Cell::new(0),
            next_id: Cell::new(1),
            counters: RefCell::new(PoolCounters::default()),
            stop: Cell::new(false),
            capacity,
            last_connect_error: RefCell::new(None),
            last_loss: RefCell::new(None),
        });
        for i in 0..inner.conns.len() {
            glommio::spawn_local(supervise(inner.clone(), i)).detach();
        }
        Ok(Pool { inner })
    }

    /// Wait until `n` connections are up. Fails with the last connect error
    /// once every connection has failed [`GIVE_UP_AFTER_FAILURES`] times in a
    /// row (the server is not there, or refuses our certificate), or after
    /// `within`.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + within;
        let want = n.min(self.inner.conns.len());
        let give_up = (GIVE_UP_AFTER_FAILURES * self.inner.conns.len()) as u64;
        loop {
            if self.connections_up() >= want {
                return Ok(());
            }
            let c = self.counters();
            let hopeless = c.handshakes == 0 && c.connect_failures >= give_up;
            if hopeless || Instant::now() >= deadline {
                return Err(self
                    .inner
                    .last_connect_error
                    .borrow()
                    .clone()
                    .unwrap_or(ClientError::NotConnected));
            }
            Timer::new(Duration::from_millis(2)).await;
        }
    }

    /// The most recent connect or handshake failure, if any.
    pub fn last_connect_error(&self) -> Option<ClientError> {
        self.inner.last_connect_error.borrow().clone()
    }

    /// Why an established connection was last lost, if one was.
    pub fn last_connection_loss(&self) -> Option<String> {
        self.inner.last_loss.borrow().clone()
    }

    /// Connections currently up.
    pub fn connections_up(&self) -> usize {
        self.inner.conns.iter().filter(|c| c.borrow().up).count()
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.inner
            .conns
            .iter()
            .map(|c| c.borrow().waiters.len())
            .sum()
    }

    /// Connection-level counters so far.
    pub fn counters(&self) -> PoolCounters {
        *self.inner.counters.borrow()
    }

    /// Stop reconnecting and close every connection (in-flight requests fail
    /// with `ConnectionLost`).
    pub fn close(&self) {
        self.inner.stop.set(true);
        for c in &self.inner.conns {
            let mut c = c.borrow_mut();
            c.draining = true;
            if let Some(w) = c.driver_waker.take() {
                w.wake();
            }
        }
    }

    /// Send `msg` (its `id` is replaced by a fresh one) and wait for the
    /// response, within the pool's request timeout.
    pub async fn call(&self, msg: &Message<'_>) -> Result<OwnedResponse, ClientError> {
        self.call_until(msg, Instant::now() + self.inner.cfg.request_timeout)
            .await
    }

    /// Like [`Pool::call`] with an explicit deadline, so an open-loop caller
    /// can time out relative to the request's scheduled time.
    pub async fn call_until(
        &self,
        msg: &Message<'_>,
        deadline: Instant,
    ) -> Result<OwnedResponse, ClientError> {
        self.call_on_until(msg, deadline, None).await
    }

    /// Like [`Pool::call_until`], on connection `prefer` (modulo the pool's
    /// size) when it is up and has room, else on the next one that has
    /// (replay maps each recorded connection onto one client connection).
    pub async fn call_on_until(
        &self,
        msg: &Message<'_>,
        deadline: Instant,
        prefer: Option<usize>,
    ) -> Result<OwnedResponse, ClientError> {
        let timer = async {
            Timer::new(deadline.saturating_duration_since(Instant::now())).await;
            Err(ClientError::Timeout)
        };
        futures_lite::future::or(self.call_inner(msg, deadline, prefer), timer).await
    }

    async fn call_inner(
        &self,
        msg: &Message<'_>,
        deadline: Instant,
        prefer: Option<usize>,
    ) -> Result<OwnedResponse, ClientError> {
        let inner = &self.inner;
        // Total in flight is capped at connections × per-connection cap, so
        // once a permit is held a connection with room exists if all are up.
        let _permit = inner
            .capacity
            .acquire_permit(1)
            .await
            .map_err(|_| ClientError::ConnectionLost)?;
        let conn = loop {
            if let Some(c) = self.pick(prefer) {
                break c;
            }
            if Instant::now() >= deadline || inner.stop.get() {
                return Err(ClientError::NotConnected);
            }
            Timer::new(NOT_CONNECTED_POLL).await;
        };
        let id = inner.next_id.get();
        inner.next_id.set(id.wrapping_add(1));
        {
            let mut c = conn.borrow_mut();
            let m = Message { id, ..*msg };
            m.encode(&mut c.out).map_err(ClientError::Encode)?;
            c.out_ids.push(id);
            c.waiters.insert(
                id,
                Slot {
                    result: None,
                    waker: None,
                    written: None,
                },
            );
            if let Some(w) = c.driver_waker.take() {
                w.wake();
            }
        }
        ResponseFuture { conn, id }.await
    }

    /// Round-robin over connections that are up, not draining and not full
    /// (from `prefer`, when given, without moving the round-robin).
    fn pick(&self, prefer: Option<usize>) -> Option<Rc<RefCell<ConnShared>>> {
        let n = self.inner.conns.len();
        if let Some(p) = prefer {
            for k in 0..n {
                let c = &self.inner.conns[(p + k) % n];
                let s = c.borrow();
                if s.up && !s.draining && s.waiters.len() < self.inner.cfg.max_in_flight_per_conn {
                    return Some(c.clone());
                }
            }
            return None;
        }
        let start = self.inner.rr.get();
        for k in 0..n {
            let i = (start + k) % n;
            let c = &self.inner.conns[i];
            let s = c.borrow();
            if s.up && !s.draining && s.waiters.len() < self.inner.cfg.max_in_flight_per_conn {
                self.inner.rr.set(i + 1);
                return Some(c.clone());
            }
        }
        None
    }
}

/// Waits for one response; removes its slot when dropped (e.g. on timeout),
/// so a response arriving later is counted as late.
struct ResponseFuture {
    conn: Rc<RefCell<ConnShared>>,
    id: u32,
}

impl Future for ResponseFuture {
    type Output = Result<OwnedResponse, ClientError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut c = self.conn.borrow_mut();
        let Some(slot) = c.waiters.get_mut(&self.id) else {
            return Poll::Ready(Err(ClientError::ConnectionLost));
        };
        if let Some(r) = slot.result.take() {
            c.waiters.remove(&self.id);
            c.wake_driver_if_drained();
            return Poll::Ready(r);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conn.try_borrow_mut() {
            if c.waiters.remove(&self.id).is_some() {
                c.wake_driver_if_drained();
            }
        }
    }
}

type Tls = futures_rustls::client::TlsStream<TcpStream>;

async fn connect(inner: &PoolInner) -> Result<Tls, ClientError> {
    let addr = inner.cfg.addr;
    let err = |reason: String| ClientError::Connect { addr, reason };
    let tcp = TcpStream::connect_timeout(addr, inner.cfg.connect_timeout)
        .await
        .map_err(|e| err(e.to_string()))?;
    // Without NODELAY, Nagle holds small writes back and latency explodes.
    tcp.set_nodelay(true).map_err(|e| err(e.to_string()))?;
    let connector = futures_rustls::TlsConnector::from(inner.tls.config.clone());
    let handshake = connector.connect(inner.tls.server_name_for(addr), tcp);
    let timeout = async {
        Timer::new(inner.cfg.connect_timeout).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    };
    futures_lite::future::or(handshake, timeout)
        .await
        .map_err(|e| err(format!("TLS: {e}")))
}

/// Keep connection `idx` open: connect, drive, and on loss fail its
/// in-flight requests and reconnect with exponential backoff.
async fn supervise(inner: Rc<PoolInner>, idx: usize) {
    let conn = inner.conns[idx].clone();
    let mut backoff = inner.cfg.backoff_min;
    let mut failing = false;
    // Stagger the first churn of each connection over one lifetime, so the
    // pool never replaces all its connections at once.
    let mut first_life = inner
        .cfg
        .conn_lifetime
        .map(|l| l.mul_f64((idx + 1) as f64 / inner.conns.len() as f64));
    while !inner.stop.get() {
        let stream = match connect(&inner).await {
            Ok(s) => s,
            Err(e) => {
                inner.counters.borrow_mut().connect_failures += 1;
                *inner.last_connect_error.borrow_mut() = Some(e.clone());
                if !failing {
                    tracing::warn!(conn = idx, error = %e, "connect failed; retrying with backoff");
                    failing = true;
                }
                Timer::new(backoff).await;
                backoff = (backoff * 2).min(inner.cfg.backoff_max);
                continue;
            }
        };
        if failing {
            tracing::info!(conn = idx, "connected after failures");
        }
        failing = false;
        backoff = inner.cfg.backoff_min;
        inner.counters.borrow_mut().handshakes += 1;
        {
            let mut c = conn.borrow_mut();
            c.up = true;
            c.draining = inner.stop.get();
        }
        let end = Driver {
            stream,
            conn: conn.clone(),
            inner: inner.clone(),
            rbuf: vec![0; READ_BUF_LEN],
            rlen: 0,
            wbuf: Vec::with_capacity(64 * 1024),
            wbuf_ids: Vec::with_capacity(64),
            wpos: 0,
            need_flush: false,
            churn: inner
                .cfg
                .conn_lifetime
                .map(|l| Timer::new(first_life.take().unwrap_or(l))),
            drain_deadline: None,
        }
        .await;
        {
            let mut c = conn.borrow_mut();
            c.up = false;
            c.draining = false;
            c.driver_waker = None;
            c.fail_all(ClientError::ConnectionLost);
        }
        match end {
            DriveEnd::Closed => inner.counters.borrow_mut().connections_churned += 1,
            DriveEnd::Lost(reason) => {
                inner.counters.borrow_mut().connections_lost += 1;
                if !inner.stop.get() {
                    *inner.last_loss.borrow_mut() = Some(reason.clone());
                    tracing::warn!(conn = idx, %reason, "connection lost; reconnecting");
                    Timer::new(backoff).await;
                }
            }
        }
    }
}

enum DriveEnd {
    /// Closed on purpose (churn or pool close).
    Closed,
    /// Ended by the peer or an error.
    Lost(String),
}

/// Moves bytes for one connection: writes queued requests, reads responses
/// and hands each to its waiter. One future per connection, so reading and
/// writing never need to split the TLS stream.
struct Driver {
    stream: Tls,
    conn: Rc<RefCell<ConnShared>>,
    inner: Rc<PoolInner>,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    /// IDs of the requests handed to TLS and not yet stamped as written
    /// (`wbuf`'s, and an earlier batch's still waiting for its flush).
    wbuf_ids: Vec<u32>,
    wpos: usize,
    need_flush: bool,
    churn: Option<Timer>,
    drain_deadline: Option<Timer>,
}

impl Driver {
    /// The whole write buffer is in the kernel: stamp its requests (one
    /// clock read per batch; a request that timed out meanwhile is gone).
    fn stamp_written(&mut self) {
        if self.wbuf_ids.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut c = self.conn.borrow_mut();
        for id in self.wbuf_ids.drain(..) {
            if let Some(slot) = c.waiters.get_mut(&id) {
                slot.written = Some(now);
            }
        }
    }

    /// A write failed (typically EPIPE): the peer may have said why in a TLS
    /// alert that is already in our receive buffer (a TLS 1.3 server refusing
    /// our certificate does exactly that). Read once to surface it.
    fn write_failure(&mut self, cx: &mut Context<'_>, e: std::io::Error) -> String {
        let mut scratch = [0u8; 512];
        match Pin::new(&mut self.stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Err(alert)) => format!("{alert} (then: {e})"),
            _ => e.to_string(),
        }
    }

    /// Parse and deliver every complete message in the read buffer; `read`
    /// is when the read that completed them returned.
    fn deliver(&mut self, read: Instant) -> Result<(), ReadError> {
        let mut pos = 0;
        loop {
            match frame::check(&self.rbuf[pos..self.rlen], MAX_BODY_LEN) {
                Ok(FrameStatus::Complete { len, .. }) => {
                    let m = Message::decode(&self.rbuf[pos..pos + len])
                        .map_err(ReadError::Malformed)?;
                    pos += len;
                    let mut c = self.conn.borrow_mut();
                    match c.waiters.get_mut(&m.id) {
                        Some(slot) if slot.result.is_none() => {
                            let mut r = OwnedResponse::from_message(&m);
                            r.timing = Timing {
                                written: slot.written,
                                read: Some(read),
                            };
                            slot.result = Some(Ok(r));
                            if let Some(w) = slot.waker.take() {
                                w.wake();
                            }
                        }
                        _ => self.inner.counters.borrow_mut().late_responses += 1,
                    }
                }
                Ok(FrameStatus::NeedMore(_)) => break,
                Err(e) => return Err(ReadError::Frame(e)),
            }
        }
        if pos > 0 {
            self.rbuf.copy_within(pos..self.rlen, 0);
            self.rlen -= pos;
        }
        Ok(())
    }
}

/// Why the server's bytes cannot be read as answers (the connection is
/// then lost).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// A complete frame that does not decode.
    #[error("malformed response: {0}")]
    Malformed(keycore_protocol::DecodeError),
    /// A frame header that is not the protocol's.
    #[error("bad frame from server: {0}")]
    Frame(keycore_protocol::frame::FrameError),
}

impl Future for Driver {
    type Output = DriveEnd;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DriveEnd> {
        let this = &mut *self;
        if let Some(t) = &mut this.churn {
            if Pin::new(t).poll(cx).is_ready() {
                this.churn = None;
                this.conn.borrow_mut().draining = true;
            }
        }
        if this.conn.borrow().draining && this.drain_deadline.is_none() {
            this.drain_deadline = Some(Timer::new(this.inner.cfg.request_timeout));
        }
        if let Some(t) = &mut this.drain_deadline {
            if Pin::new(t).poll(cx).is_ready() {
                return Poll::Ready(DriveEnd::Closed);
            }
        }
        for _ in 0..DRIVER_ROUNDS_PER_POLL {
            let mut progress = false;
            {
                let mut c = this.conn.borrow_mut();
                if this.wpos == this.wbuf.len() && !c.out.is_empty() {
                    this.wbuf.clear();
                    this.wpos = 0;
                    std::mem::swap(&mut this.wbuf, &mut c.out);
                    // Appended, not replaced: the previous batch may be
                    // handed to TLS but not yet flushed (then it is stamped
                    // with this one, when both are in the kernel).
                    this.wbuf_ids.append(&mut c.out_ids);
                }
                match &c.driver_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => c.driver_waker = Some(cx.waker().clone()),
                }
            }
            while this.wpos < this.wbuf.len() {
                match Pin::new(&mut this.stream).poll_write(cx, &this.wbuf[this.wpos..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(DriveEnd::Lost("write closed".into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        this.wpos += n;
                        this.need_flush = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(DriveEnd::Lost(this.write_failure(cx, e)))
                    }
                    Poll::Pending => break,
                }
            }
            if this.need_flush {
                match Pin::new(&mut this.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        this.need_flush = false;
                        if this.wpos == this.wbuf.len() {
                            this.stamp_written();
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(DriveEnd::Lost(this.write_failure(cx, e)))
                    }
                    Poll::Pending => {}
                }
            }
            match Pin::new(&mut this.stream).poll_read(cx, &mut this.rbuf[this.rlen..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(DriveEnd::Lost("server closed the connection".into()))
                }
                Poll::Ready(Ok(n)) => {
                    let read = Instant::now();
                    this.rlen += n;
                    progress = true;
                    if let Err(e) = this.deliver(read) {
                        return Poll::Ready(DriveEnd::Lost(e.to_string()));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(DriveEnd::Lost(e.to_string())),
                Poll::Pending => {}
            }
            let idle = {
                let c = this.conn.borrow();
                c.draining
                    && c.waiters.is_empty()
                    && c.out.is_empty()
                    && this.wpos == this.wbuf.len()
            };
            if idle {
                // Best effort close_notify; then drop the socket. (Waiting on
                // glommio's poll_close can hang, and the peer needs nothing more.)
                this.stream.get_mut().1.send_close_notify();
                let _ = Pin::new(&mut this.stream).poll_flush(cx);
                return Poll::Ready(DriveEnd::Closed);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One blocking mutual-TLS connection on a std socket, for tests and tools.
/// One request at a time ([`BlockingClient::call`]) or a batch pipelined on
/// the wire ([`BlockingClient::pipeline`]).
pub struct BlockingClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    next_id: u32,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient")
            .field("peer", &self.stream.sock.peer_addr().ok())
            .finish()
    }
}

fn io_err(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout,
        std::io::ErrorKind::UnexpectedEof => ClientError::ConnectionLost,
        _ => ClientError::Io(e.to_string()),
    }
}

impl BlockingClient {
    /// Connect and complete the TLS handshake. Reads time out after 10 s
    /// (change with [`BlockingClient::set_timeout`]).
    pub fn connect(addr: SocketAddr, tls: &ClientTls) -> Result<BlockingClient, ClientError> {
        let err = |reason: String| ClientError::Connect { addr, reason };
        let sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| err(e.to_string()))?;
        sock.set_nodelay(true).map_err(|e| err(e.to_string()))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| err(e.to_string()))?;
        let conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name_for(addr))
            .map_err(|e| err(format!("TLS: {e}")))?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| err(format!("TLS handshake: {e}")))?;
        }
        Ok(BlockingClient {
            stream,
            next_id: 1,
            rbuf: Vec::with_capacity(READ_BUF_LEN),
            wbuf: Vec::with_capacity(4096),
        })
    }

    /// Change the read timeout (`None`: wait forever).
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<(), ClientError> {
        self.stream.sock.set_read_timeout(t).map_err(io_err)
    }

    /// The negotiated TLS version and cipher suite, for tests.
    pub fn negotiated(
        &self,
    ) -> (
        Option<rustls::ProtocolVersion>,
        Option<rustls::SupportedCipherSuite>,
    ) {
        (
            self.stream.conn.protocol_version(),
            self.stream.conn.negotiated_cipher_suite(),
        )
    }

    /// Send one request (its `id` replaced by a fresh one) and wait for its response.
    pub fn call(&mut self, msg: &Message<'_>) -> Result<OwnedResponse, ClientError> {
        let mut v = self.pipeline(std::slice::from_ref(msg))?;
        Ok(v.remove(0))
    }

    /// Send all requests in one write, then read every response. Responses
    /// may arrive in any order; they are returned in request order.
    pub fn pipeline(&mut self, msgs: &[Message<'_>]) -> Result<Vec<OwnedResponse>, ClientError> {
        self.wbuf.clear();
        let first = self.next_id;
        for m in msgs {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            Message { id, ..*m }
                .encode(&mut self.wbuf)
                .map_err(ClientError::Encode)?;
        }
        self.stream.write_all(&self.wbuf).map_err(io_err)?;
        self.stream.flush().map_err(io_err)?;
        let mut out: Vec<Option<OwnedResponse>> = vec![None; msgs.len()];
        for _ in 0..msgs.len() {
            let r = self.read_response()?;
            let idx = r.id.wrapping_sub(first) as usize;
            match out.get_mut(idx) {
                Some(o @ None) => *o = Some(r),
                _ => return Err(ClientError::UnexpectedId { got: r.id }),
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Write raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(io_err)?;
        self.stream.flush().map_err(io_err)
    }

    /// Read the next whole message from the server, whatever its ID.
    pub fn read_response(&mut self) -> Result<OwnedResponse, ClientError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match frame::check(&self.rbuf, MAX_BODY_LEN) {
                Ok(FrameStatus::Complete { len, .. }) => {
                    let r = Message::decode(&self.rbuf[..len])
                        .map(|m| OwnedResponse::from_message(&m))
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                    self.rbuf.drain(..len);
                    return r;
                }
                Ok(FrameStatus::NeedMore(_)) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let n = self.stream.read(&mut chunk).map_err(io_err)?;
            if n == 0 {
                return Err(ClientError::ConnectionLost);
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsrv::TestServer;
    use crate::tls::TlsOptions;
    use std::sync::atomic::Ordering;

    /// Run `f` on a fresh glommio executor and return its result.
    pub(crate) fn on_executor<T: Send + 'static, F, Fut>(f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn tls(srv: &TestServer) -> ClientTls {
        ClientTls::from_paths(&srv.tls, &TlsOptions::default()).unwrap()
    }

    fn ping(p: &[u8]) -> Message<'_> {
        Message {
            opcode: Some(Op::PING),
            payload: Some(p),
            ..Message::default()
        }
    }

    #[test]
    fn blocking_client_pipelines_and_matches_responses_sent_in_reverse() {
        let srv = TestServer::start();
        let mut c = BlockingClient::connect(srv.addr, &tls(&srv)).unwrap();
        let payloads: Vec<[u8; 4]> = (0..10u32).map(|i| i.to_be_bytes()).collect();
        let msgs: Vec<Message<'_>> = payloads.iter().map(|p| ping(p)).collect();
        let rs = c.pipeline(&msgs).unwrap();
        assert_eq!(rs.len(), 10);
        for (r, p) in rs.iter().zip(&payloads) {
            assert_eq!(r.opcode, Op::PONG);
            assert_eq!(&r.payload, p);
        }
        let r = c.call(&ping(b"x")).unwrap();
        assert_eq!((r.opcode, r.payload.as_slice()), (Op::PONG, &b"x"[..]));
        // A request with an unknown SKI gets the server's error code.
        let ski = [7u8; 20];
        let r = c
            .call(&Message {
                opcode: Some(Op::ECDSA_SIGN_SHA256),
                ski: Some(&ski),
                payload: Some(&[0; 32]),
                ..Message::default()
            })
            .unwrap();
        assert_eq!(r.error_code(), Some(ErrorCode::KEY_NOT_FOUND));
    }

    #[test]
    fn tls12_only_negotiates_the_edges_suite() {
        let srv = TestServer::start();
        let opts = TlsOptions {
            tls12_only: true,
            server_name: None,
        };
        let t = ClientTls::from_paths(&srv.tls, &opts).unwrap();
        let c = BlockingClient::connect(srv.addr, &t).unwrap();
        let (v, suite) = c.negotiated();
        assert_eq!(v, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(
            suite.unwrap().suite(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        );
    }

    #[test]
    fn wrong_ca_fails_the_handshake_with_a_clear_error() {
        let srv = TestServer::start();
        let other = TestServer::start();
        let mut paths = srv.tls.clone();
        paths.ca = other.tls.ca.clone();
        let t = ClientTls::from_paths(&paths, &TlsOptions::default()).unwrap();
        let e = BlockingClient::connect(srv.addr, &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS"), "{e}");
        let mut bad = srv.tls.clone();
        bad.key = srv.tls.ca.clone();
        let e = ClientTls::from_paths(&bad, &TlsOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }

    #[test]
    fn pool_multiplexes_many_requests_over_few_connections() {
        let srv = TestServer::start();
        let t = tls(&srv);
        let mut cfg = PoolConfig::new(srv.addr);
        cfg.connections = 2;
        let (ok, counters) = on_executor(move || async move {
            let pool = Pool::start(cfg, t).unwrap();
            pool.wait_connected(2, Duration::from_secs(5))
                .await
                .unwrap();
            let tasks: Vec<_> = (0..500u32)
                .map(|i| {
                    let pool = pool.clone();
                    glommio::spawn_local(async move {
                        let p = i.to_be_bytes();
                        let r = pool.call(&ping(&p)).await.unwrap();
                        r.opcode == Op::PONG && r.payload == p
                    })
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                ok += t.await as usize;
            }
            let c = pool.counters();
            pool.close();
            (ok, c)
        });
        assert_eq!(ok, 500);
        assert_eq!(counters.handshakes, 2);
        assert_eq!(counters.late_responses, 0);
        assert_eq!(srv.knobs.connections.load(Ordering::Relaxed), 2);
        assert_eq!(srv.knobs.requests.load(Ordering::Relaxed), 500);
    }

    /// Each pooled answer carries when its request was written and when
    /// the answer was read: in order, around the server's 30 ms hold, and
    /// inside the call; the blocking client carries none.
    #[test]
    fn pool_answers_carry_when_they_were_written_and_read() {
        let srv = TestServer::start();
        srv.knobs.delay_ms.store(30, Ordering::Relaxed);
        let t = tls(&srv);
        let mut cfg = PoolConfig::new(srv.addr);
        cfg.connections = 1;
        let (before, r, after) = on_executor(move || async move {
            let pool = Pool::start(cfg, t).unwrap();
            pool.wait_connected(1, Duration::from_secs(5))
                .await
                .unwrap();
            let before = Instant::now();
            let r = pool.call(&ping(b"t")).await.unwrap();
            let after = Instant::now();
            pool.close();
            (before, r, after)
        });
        let (w, rd) = (r.timing.written.unwrap(), r.timing.read.unwrap());
        assert!(before <= w && w <= rd && rd <= after, "{:?}", r.timing);
        assert!(
            rd - w >= Duration::from_millis(30),
            "the server held the answer 30 ms: {:?}",
            rd - w
        );
        let mut c = BlockingClient::connect(srv.addr, &tls(&srv)).unwrap();
        assert_eq!(c.call(&ping(b"b")).unwrap().timing, Timing::default());
    }

    #[test]
    fn pool_times_out_a_stalled_request_and_counts_its_late_response() {
        let srv = TestServer::start();
        srv.knobs.delay_ms.store(300, Ordering::Relaxed);
        let t = tls(&srv);
        let mut cfg = PoolConfig::new(srv.addr);
        cfg.connections = 1;
        cfg.request_timeout = Duration::from_millis(100);
        let (r, counters) = on_executor(move || async move {
            let pool = Pool::start(cfg, t).unwrap();
            pool.wait_connected(1, Duration::from_secs(5))
                .await
                .unwrap();
            let start = Instant::now();
            let r = pool.call(&ping(b"slow")).await;
            assert!(start.elapsed() < Duration::from_millis(250));
            Timer::new(Duration::from_millis(400)).await;
            (r, pool.counters())
        });
        assert_eq!(r, Err(ClientError::Timeout));
        assert_eq!(counters.late_responses, 1);
    }

    #[test]
    fn pool_reconnects_when_the_server_closes() {
        let srv = TestServer::start();
        srv.knobs.close_after.store(5, Ordering::Relaxed);
        let t = tls(&srv);
        let mut cfg = PoolConfig::new(srv.addr);
        cfg.connections = 1;
        cfg.backoff_min = Duration::from_millis(5);
        let (ok, counters) = on_executor(move || async move {
            let pool = Pool::start(cfg, t).unwrap();
            let mut ok = 0;
            for _ in 0..30 {
                if pool.call(&ping(b"p")).await.is_ok() {
                    ok += 1;
                }
            }
            (ok, pool.counters())
        });
        assert!(ok >= 25, "{ok} of 30 succeeded");
        assert!(counters.handshakes >= 5, "{counters:?}");
        assert!(counters.connections_lost >= 4, "{counters:?}");
    }

    #[test]
    fn churn_replaces_connections_without_failing_requests() {
        let srv = TestServer::start();
        let t = tls(&srv);
        let mut cfg = PoolConfig::new(srv.addr);
        cfg.connections = 2;
        cfg.conn_lifetime = Some(Duration::from_millis(60));
        let (failed, counters) = on_executor(move || async move {
            let pool = Pool::start(cfg, t).unwrap();
            pool.wait_connected(2, Duration::from_secs(5))
                .await
                .unwrap();
            let end = Instant::now() + Duration::from_millis(400);
            let mut failed = 0;
            while Instant::now() < end {
                if pool.call(&ping(b"c")).await.is_err() {
                    failed += 1;
                }
            }
            (failed, pool.counters())
        });
        assert_eq!(failed, 0);
        assert!(counters.connections_churned >= 4, "{counters:?}");
        assert!(counters.handshakes >= 6, "{counters:?}");
    }
}
