//! One client connection: TLS handshake, then read → frame → dispatch →
//! coalesced write, until the peer leaves, a limit trips or the core drains.
//!
//! Owns the connection's buffers and its in-flight table; nothing here is
//! shared with another connection or core. Limits (all from `Limits`, sized
//! at start-up): the read buffer holds one largest message plus slack; the
//! write buffer is flushed once it passes `write_buffer_bytes` (so one batch
//! of responses is bounded); at most `max_in_flight_per_connection` requests wait on an
//! off-reactor backend, after which the connection stops reading
//! (backpressure: the peer's TCP window fills, nothing is buffered here).
//!
//! Responses go out as operations complete, in any order, matched by ID.
//! Everything that completed in one pass is written with one TLS write and
//! one flush.

use super::dispatch::{self, DispatchCtx, Pending};
use super::{CoreCtx, Limits};
use futures_lite::future::{self, FutureExt as _};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use keycore_protocol::codec::encode_error;
use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{ErrorCode, Message, Op};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Read buffer a connection starts with: sixteen padded requests per read.
/// It grows (up to `read_buffer_bytes`) only for a message that does not
/// fit, so an idle or ordinary connection holds 16 KiB, not 64 KiB.
pub const INITIAL_READ_BUFFER: usize = 16 * 1024;

/// Write buffer a connection starts with; grows up to `write_buffer_bytes`
/// plus one largest message under pipelined load.
const INITIAL_WRITE_BUFFER: usize = 4 * 1024;

/// Why a connection ended (for the per-connection log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side.
    PeerClosed,
    /// No complete request within `idle_timeout`.
    Idle,
    /// A malformed message; stream position lost.
    Framing,
    /// Read or write failed.
    Io,
    /// A write made no progress within `idle_timeout`.
    WriteStalled,
    /// The core is shutting down.
    Drain,
}

/// Completions of offloaded operations, pushed by their tasks and drained by
/// the connection loop. Bounded by `max_in_flight_per_connection` (one entry per request).
/// One finished off-reactor operation: ID, opcode, read time, result.
type Completion = (u32, Op, Instant, Result<Vec<u8>, ErrorCode>);

#[derive(Default)]
struct Completions {
    done: RefCell<VecDeque<Completion>>,
    waker: RefCell<Option<Waker>>,
}

impl Completions {
    fn push(&self, item: Completion) {
        self.done.borrow_mut().push_back(item);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once at least one completion is queued.
    async fn ready(&self) {
        future::poll_fn(|cx| {
            if self.done.borrow().is_empty() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// A connection's idle deadline: one glommio timer for the connection's
/// life, registered with the reactor once and moved only when it fires.
/// Creating a `sleep` per wait (as before) allocated a timer and inserted
/// and removed it from the reactor's timer map on every read; here a wait
/// costs one clock read. The deadline is allowed to lag behind the last
/// request: when it fires, the caller checks the real idle time and re-arms.
struct IdleTimer {
    timer: Timer,
    deadline: Instant,
    /// Registered with the reactor since the last re-arm.
    armed: bool,
}

impl IdleTimer {
    fn new(after: Duration) -> IdleTimer {
        IdleTimer {
            timer: Timer::new(after),
            deadline: Instant::now() + after,
            armed: false,
        }
    }

    /// Fire at `deadline` instead.
    fn rearm(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.timer
            .reset(deadline.saturating_duration_since(Instant::now()));
        self.armed = false;
    }

    /// Resolves once the deadline has passed.
    async fn expired(&mut self) {
        future::poll_fn(|cx| {
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            if !self.armed {
                // Registers the connection task's waker with the reactor; the
                // task's waker never changes, so once is enough.
                if Pin::new(&mut self.timer).poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                self.armed = true;
            }
            Poll::Pending
        })
        .await
    }
}

/// Serve one accepted TCP connection to the end.
pub async fn serve(core: Rc<CoreCtx>, tcp: TcpStream, peer: SocketAddr) {
    let stats = &core.stats;
    let limits: &Limits = &core.limits;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
    }
    let handshake = core.acceptor.accept(tcp);
    let tls = match handshake
        .or(async {
            glommio::timer::sleep(limits.handshake_timeout).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timeout",
            ))
        })
        .await
    {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            stats.handshake_timeouts.inc();
            tracing::warn!(%peer, core = core.index, "TLS handshake timed out");
            return;
        }
        Err(e) => {
            stats.tls_failures.inc();
            tracing::warn!(%peer, core = core.index, error = %e, "TLS handshake refused");
            return;
        }
    };
    tracing::debug!(%peer, core = core.index, "connection established");
    let mut tls = tls;
    let (reason, served) = run(&core, &mut tls).await;
    let _ = tls.close().await;
    match reason {
        CloseReason::PeerClosed | CloseReason::Drain => {
            tracing::debug!(%peer, core = core.index, ?reason, requests = served, "connection closed")
        }
        _ => {
            tracing::info!(%peer, core = core.index, ?reason, requests = served, "connection closed")
        }
    }
}

type Tls = futures_rustls::server::TlsStream<TcpStream>;

async fn run(core: &CoreCtx, tls: &mut Tls) -> (CloseReason, u64) {
    let limits = &core.limits;
    let stats = &core.stats;
    let ctx = DispatchCtx {
        keys: &core.keys,
        stores: &core.stores,
        stats,
    };
    let completions = Rc::new(Completions::default());
    let mut rbuf = vec![0u8; INITIAL_READ_BUFFER.min(limits.read_buffer_bytes)];
    let (mut start, mut end) = (0usize, 0usize);
    let mut wbuf: Vec<u8> = Vec::with_capacity(INITIAL_WRITE_BUFFER);
    let mut scratch: Vec<u8> = Vec::with_capacity(1024);
    let mut in_flight = 0usize;
    let mut served = 0u64;
    let mut last_request = Instant::now();
    let mut peer_closed = false;
    let mut fatal: Option<CloseReason> = None;
    let drain = core.drain_slot();
    let mut idle = IdleTimer::new(limits.idle_timeout);

    loop {
        // 1. Answers that came back from off-reactor backends.
        {
            let mut done = completions.done.borrow_mut();
            while let Some((id, op, read_at, r)) = done.pop_front() {
                in_flight -= 1;
                stats.in_flight.sub(1);
                dispatch::finish(
                    stats,
                    &mut wbuf,
                    id,
                    op,
                    read_at,
                    r.as_deref().map_err(|e| *e),
                );
                served += 1;
            }
        }

        // 2. Every complete request buffered, while limits allow.
        let read_at = Instant::now();
        let submitted_before = in_flight;
        while fatal.is_none()
            && in_flight < limits.max_in_flight_per_connection
            && wbuf.len() < limits.write_buffer_bytes
        {
            let avail = &rbuf[start..end];
            match frame::check(avail, limits.max_body_len) {
                Ok(FrameStatus::NeedMore(_)) => break,
                Ok(FrameStatus::Complete { len, .. }) => {
                    match Message::decode(&avail[..len]) {
                        Ok(msg) => {
                            last_request = read_at;
                            if let Some(p) =
                                dispatch::handle(&ctx, &msg, read_at, &mut scratch, &mut wbuf)
                            {
                                in_flight += 1;
                                stats.in_flight.inc();
                                spawn_pending(p, completions.clone());
                            } else {
                                served += 1;
                            }
                        }
                        Err(e) => {
                            let id = frame::Header::parse(avail).map(|h| h.id).unwrap_or(0);
                            tracing::info!(core = core.index, error = %e, id, "malformed request; closing");
                            encode_error(&mut wbuf, id, ErrorCode::FORMAT);
                            stats.framing_errors.inc();
                            fatal = Some(CloseReason::Framing);
                        }
                    }
                    start += len;
                }
                Err(e) => {
                    let id = frame::Header::parse(avail).map(|h| h.id).unwrap_or(0);
                    tracing::info!(core = core.index, error = %e, id, "oversized request; closing");
                    encode_error(&mut wbuf, id, ErrorCode::FORMAT);
                    stats.framing_errors.inc();
                    fatal = Some(CloseReason::Framing);
                }
            }
        }
        if in_flight > submitted_before {
            // This pass's off-reactor requests go out now, as one batch.
            dispatch::flush(&ctx);
        }
        if start == end {
            start = 0;
            end = 0;
            if rbuf.len() > INITIAL_READ_BUFFER {
                // A large message has been consumed: give its memory back.
                rbuf.truncate(INITIAL_READ_BUFFER);
                rbuf.shrink_to_fit();
            }
        }

        // 3. One coalesced write for everything answered in this pass.
        if !wbuf.is_empty() {
            let n = wbuf.len();
            let w = write_records(core, tls, &wbuf);
            let timed = w
                .or(async {
                    glommio::timer::sleep(limits.idle_timeout).await;
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "write stalled",
                    ))
                })
                .await;
            match timed {
                Ok(()) => {
                    stats
                        .responses
                        .add((n / keycore_protocol::PADDED_LEN).max(1) as u64);
                    stats.bytes_out.add(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return (CloseReason::WriteStalled, served)
                }
                Err(_) => return (CloseReason::Io, served),
            }
            wbuf.clear();
        }
        if let Some(r) = fatal {
            return (r, served);
        }
        if core.draining.get() && in_flight == 0 {
            return (CloseReason::Drain, served);
        }
        if peer_closed {
            if in_flight == 0 {
                return (CloseReason::PeerClosed, served);
            }
            completions.ready().await;
            continue;
        }

        // 4. Wait for the next event.
        let has_complete = matches!(
            frame::check(&rbuf[start..end], limits.max_body_len),
            Ok(FrameStatus::Complete { .. }) | Err(_)
        );
        if in_flight >= limits.max_in_flight_per_connection {
            // Backpressure: read nothing until something completes.
            completions.ready().await;
            continue;
        }
        if has_complete {
            continue; // the write buffer limit cut the last pass short
        }
        // Make room: move a partial message to the front, and grow the
        // buffer (up to the limit) if that message is larger than it.
        if start > 0 && (end == rbuf.len() || rbuf.len() - end < keycore_protocol::HEADER_LEN) {
            rbuf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if let Ok(FrameStatus::NeedMore(n)) = frame::check(&rbuf[start..end], limits.max_body_len) {
            let need = end + n;
            if need > rbuf.len() {
                if start > 0 {
                    rbuf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                let want = (end + n).clamp(rbuf.len(), limits.read_buffer_bytes);
                rbuf.resize(want, 0);
            }
        }
        if in_flight == 0 && last_request.elapsed() >= limits.idle_timeout {
            core.stats.idle_timeouts.inc();
            return (CloseReason::Idle, served);
        }
        enum Ev {
            Read(std::io::Result<usize>),
            Completed,
            Timeout,
            Drain,
        }
        debug_assert!(end < rbuf.len(), "no room to read");
        let ev = async { Ev::Read(tls.read(&mut rbuf[end..]).await) }
            .or(async {
                completions.ready().await;
                Ev::Completed
            })
            .or(async {
                idle.expired().await;
                Ev::Timeout
            })
            .or(async {
                drain.notice().await;
                Ev::Drain
            })
            .await;
        match ev {
            Ev::Read(Ok(0)) => peer_closed = true,
            Ev::Read(Ok(n)) => end += n,
            Ev::Read(Err(_)) => return (CloseReason::Io, served),
            Ev::Completed => {}
            Ev::Timeout => {
                if in_flight == 0 && last_request.elapsed() >= limits.idle_timeout {
                    core.stats.idle_timeouts.inc();
                    return (CloseReason::Idle, served);
                }
                // Not idle after all: requests came since the timer was set,
                // or some are in flight (which restarts the full timeout).
                idle.rearm(if in_flight > 0 {
                    Instant::now() + limits.idle_timeout
                } else {
                    last_request + limits.idle_timeout
                });
            }
            Ev::Drain => {
                if in_flight == 0 {
                    return (CloseReason::Drain, served);
                }
            }
        }
    }
}

/// Encrypt `plain` into TLS records and send them all with one write.
///
/// Why not `write_all` + `flush` on the TLS stream: futures-rustls hands the
/// socket one record (at most 16 KiB) per `send`, as glommio's socket has no
/// vectored write, so a full 64 KiB write buffer cost four `send` calls (each
/// also running the loopback peer's receive path). Here rustls encrypts
/// everything into the core's shared ciphertext buffer first.
async fn write_records(core: &CoreCtx, tls: &mut Tls, plain: &[u8]) -> std::io::Result<()> {
    let mut net = std::mem::take(&mut *core.tls_out.borrow_mut());
    net.clear();
    let (io, conn) = tls.get_mut();
    let mut off = 0;
    while off < plain.len() || conn.wants_write() {
        // rustls takes at most its buffer limit per call; draining its
        // records into `net` after each call makes room for the next.
        let n = conn.writer().write(&plain[off..])?;
        off += n;
        let mut drained = false;
        while conn.wants_write() {
            // Writing into a Vec cannot fail or stop short.
            conn.write_tls(&mut net)?;
            drained = true;
        }
        if n == 0 && !drained && off < plain.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "TLS layer accepted no plaintext",
            ));
        }
    }
    let r = io.write_all(&net).await;
    net.clear();
    *core.tls_out.borrow_mut() = net;
    r
}

fn spawn_pending(p: Pending, completions: Rc<Completions>) {
    glommio::spawn_local(async move {
        let r = p.fut.await;
        completions.push((p.id, p.op, p.read_at, r));
    })
    .detach();
}
