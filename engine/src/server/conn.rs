//! One client connection's I/O: the TLS handshake (bounded by
//! `handshake_timeout` and the drain deadline), then the async shell around
//! the sans-IO core ([`super::conn_state::ConnState`]), then a bounded close.
//!
//! Owns the socket, the TLS session and the connection's completion queue.
//! Must not decide anything the core decides (framing, limits, deadlines,
//! when to close): this file only moves bytes between the socket and the
//! core, and waits. Everything here has a deadline: the handshake, every
//! send (the core's write-stall deadline), the close_notify (`CLOSE_GRACE`,
//! or the drain deadline), so no peer pins a slot, task or buffer.
//!
//! Writes: all answers of a turn are encrypted into the core's shared
//! ciphertext buffer and sent with one `send` (see [`encrypt`]). While a send
//! waits on a full socket the connection keeps reading (the no-mutual-stall
//! rule lives in the core); the next chunk is encrypted once the previous
//! one is out.

use super::conn_state::{CloseReason, ConnState, Dispatched, Dispatcher};
use super::dispatch::{self, DispatchCtx, Pending};
use super::{CoreCtx, CoreServed, DrainSlot, HandshakeTicket, CLOSE_GRACE};
use crate::refusals::Refusal;
use crate::security::{CertFacts, ClientId, ConnSlot, CoreSecurity};
use crate::trace::SpanRecord;
use futures_lite::future::{self, FutureExt as _};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use keycore_protocol::{ErrorCode, Message, Op};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub use super::conn_state::INITIAL_READ_BUFFER;

/// How long a turn's yield waits on the reactor's timer: just long enough
/// that the timer is not already due when first polled, so the task really
/// goes through the reactor (which also reaps other sockets' readiness).
const YIELD: Duration = Duration::from_micros(1);

/// One finished off-reactor operation: ID, opcode, read time, key index,
/// result, and its span when sampled.
type Completion = (
    u32,
    Op,
    Instant,
    u32,
    Result<Vec<u8>, ErrorCode>,
    Option<Box<SpanRecord>>,
);

/// Completions of offloaded operations, pushed by their tasks and drained by
/// the connection loop. Bounded by `max_in_flight` (one entry per request).
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

    fn poll_ready(&self, cx: &Context<'_>) -> Poll<()> {
        if self.done.borrow().is_empty() {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// The core's deadline as one glommio timer for the connection's life,
/// registered once per re-arm. A later deadline does not re-arm it: it fires
/// early, the core finds nothing expired, and it is re-armed then (a request
/// moving the idle deadline costs nothing).
struct DeadlineTimer {
    timer: Timer,
    at: Option<Instant>,
    registered: bool,
}

impl DeadlineTimer {
    fn new() -> DeadlineTimer {
        DeadlineTimer {
            timer: Timer::new(Duration::from_secs(3600)),
            at: None,
            registered: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, want: Option<Instant>, now: Instant) -> Poll<()> {
        let Some(want) = want else {
            return Poll::Pending;
        };
        if now >= want {
            return Poll::Ready(());
        }
        if self.at.is_none_or(|at| want < at || now >= at) {
            self.at = Some(want);
            self.timer.reset(want - now);
            self.registered = false;
        }
        if !self.registered {
            if Pin::new(&mut self.timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.registered = true;
        }
        Poll::Pending
    }
}

type Tls = futures_rustls::server::TlsStream<TcpStream>;

/// Serve one accepted TCP connection to the end.
pub async fn serve(core: Rc<CoreCtx>, tcp: TcpStream, peer: SocketAddr, ticket: HandshakeTicket) {
    let stats = &core.stats;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, core = core.index, error = %e, "set TCP_NODELAY failed");
    }
    let slot = core.drain_slot();
    let hs_deadline = Instant::now() + core.limits.handshake_timeout;
    // The TLS configuration in force when the connection arrived (a reload
    // applies to connections accepted after it).
    let (at_accept, accept_gen) = (core.served(), core.served_generation());
    let handshake = at_accept.acceptor.accept(tcp);
    let r = handshake
        .or(async {
            until(&core, &slot, hs_deadline).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timeout",
            ))
        })
        .await;
    ticket.finish();
    let mut tls = match r {
        Ok(s) => s,
        // Unauthenticated peers choose how often these happen: counted by
        // reason and summarised (`refusals`), never a line each.
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            core.refused(Refusal::HandshakeTimeout, Some(peer), None);
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, core = core.index, error = %e, "TLS handshake refused");
            core.refused(Refusal::of_handshake(&e), Some(peer), Some(&e));
            return;
        }
    };
    // Issue 18: who is this? (The allow-list, if any, already refused a
    // foreign identity inside the handshake; this names the connection and
    // takes its identity's connection slot before any request is read.)
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref());
    // Kept for the connection's life: a reload checks it again.
    let facts = der.and_then(CertFacts::of);
    let rules = &at_accept.served.clients;
    let client = match rules.identify(facts.as_ref()) {
        Ok(id) => id,
        Err(why) => {
            core.identities.refuse(why, "", None);
            tracing::warn!(%peer, core = core.index, reason = why.label(), "client certificate refused after the handshake");
            return;
        }
    };
    let Some(identity_slot) = rules.connect(client) else {
        // Counted (keycore_client_refused_total) and recorded by connect().
        tracing::debug!(%peer, core = core.index, "client identity at max_connections; closed");
        return;
    };
    if !core.take_connection_slot() {
        core.refused(Refusal::ConnectionLimit, Some(peer), None);
        return;
    }
    tracing::debug!(%peer, core = core.index, "connection established");
    let completions = Rc::new(Completions::default());
    let mut st = ConnState::new(super::conn_limits(&core.limits), Instant::now());
    let who = Who {
        facts,
        slot: identity_slot,
    };
    // The generation the handshake was admitted under: if a reload came
    // meanwhile, the first turn checks the connection against it.
    let admitted = (at_accept, accept_gen);
    let reason = run(&core, &mut tls, &mut st, &completions, &slot, who, admitted).await;
    core.release_connection_slot();
    // Whatever is still with a backend will never be written: its gauge
    // entry goes now (the task's late completion lands in a dropped queue).
    stats.in_flight.sub(st.pending() as u64);
    let unanswered = st.unanswered() as u64;
    stats.unanswered.add(unanswered);
    match reason {
        CloseReason::Idle => stats.idle_timeouts.inc(),
        CloseReason::Framing => stats.framing_errors.inc(),
        CloseReason::WriteStalled => stats.write_stalls.inc(),
        _ => {}
    }
    if reason.graceful() {
        let deadline = core
            .drain_deadline()
            .map_or(Instant::now() + CLOSE_GRACE, |d| {
                d.min(Instant::now() + CLOSE_GRACE)
            });
        close_notify(&mut tls, deadline).await;
    }
    let served = st.served();
    match reason {
        CloseReason::PeerClosed | CloseReason::Drain => {
            tracing::debug!(%peer, core = core.index, ?reason, requests = served, "connection closed")
        }
        _ => {
            tracing::info!(%peer, core = core.index, ?reason, requests = served, unanswered, "connection closed")
        }
    }
}

/// Resolves at `base` or at the core's drain deadline, whichever is first
/// (re-evaluated when a drain starts or is hurried).
async fn until(core: &CoreCtx, slot: &DrainSlot<'_>, base: Instant) {
    loop {
        let d = core.drain_deadline().map_or(base, |x| x.min(base));
        let now = Instant::now();
        if now >= d {
            return;
        }
        let seen = core.control_gen();
        glommio::timer::sleep(d - now).or(slot.changed(seen)).await;
    }
}

/// The core's dispatch, behind the sans-IO core's one call.
struct CoreDispatch<'a> {
    /// The served generation this connection uses (see `served.rs`),
    /// refreshed at the start of every turn.
    served: Rc<CoreServed>,
    served_gen: u64,
    stats: &'a crate::metrics::CoreStats,
    /// This core's limiter and audit counts.
    sec: &'a CoreSecurity,
    /// The connection's client identity.
    client: ClientId,
    /// This core's tracer, when `tracing_enabled`.
    tracer: Option<&'a crate::trace::CoreTracer>,
    /// This core's traffic recorder, when `record_file` is set.
    recorder: Option<&'a crate::record::CoreRecorder>,
    /// The connection's id in the recording.
    conn: u32,
    scratch: Vec<u8>,
    completions: &'a Rc<Completions>,
    /// Something was handed to an off-reactor backend since the last flush.
    submitted: bool,
}

impl Dispatcher for CoreDispatch<'_> {
    #[inline]
    fn dispatch(&mut self, msg: &Message<'_>, read_at: Instant, out: &mut Vec<u8>) -> Dispatched {
        let ctx = DispatchCtx {
            keys: &self.served.served.keys,
            stores: &self.served.stores,
            stats: self.stats,
            sec: self.sec,
            policy: &self.served.served.policy,
            client: self.client,
            epoch: self.served_gen as u8,
            tracer: self.tracer,
            recorder: self.recorder,
            conn: self.conn,
        };
        let h = dispatch::handle(&ctx, msg, read_at, &mut self.scratch, out);
        match h.pending {
            None => Dispatched::Answered { cost: h.cost },
            Some(p) => {
                self.submitted = true;
                self.stats.in_flight.inc();
                // The operation keeps its generation's stores alive until it
                // completes, even if a reload removes them meanwhile.
                spawn_pending(p, self.completions.clone(), self.served.clone());
                Dispatched::Pending { cost: h.cost }
            }
        }
    }
}

/// Who the connection is (issue 18): its certificate's facts and its
/// identity's connection slot (whose id counts, limits and policy use).
struct Who {
    facts: Option<CertFacts>,
    slot: ConnSlot,
}

impl Who {
    /// Check the connection again under `now`'s client rules (a reload was
    /// taken up): false if it must close (counted, with the reason, by the
    /// identity table). A connection the rules now map to another identity
    /// moves its connection slot there.
    fn readmit(&mut self, core: &CoreCtx, now: &CoreServed) -> bool {
        let rules = &now.served.clients;
        let was = self.slot.id();
        match rules.readmit(self.facts.as_ref(), was) {
            Ok(id) if id == was => true,
            // Counted (max_connections) by connect() when it is full.
            Ok(id) => match rules.connect(id) {
                Some(s) => {
                    self.slot = s;
                    true
                }
                None => false,
            },
            Err(why) => {
                let spki = self.facts.as_ref().map(|f| &f.spki_sha256);
                core.identities
                    .refuse(why, &core.identities.label(was), spki);
                false
            }
        }
    }
}

/// A chunk of ciphertext being sent.
struct Chunk {
    buf: Vec<u8>,
    off: usize,
}

enum Ev {
    Written,
    Read(usize),
    IoError,
    SocketEmpty,
    Other,
}

async fn run(
    core: &CoreCtx,
    tls: &mut Tls,
    st: &mut ConnState,
    completions: &Rc<Completions>,
    slot: &DrainSlot<'_>,
    mut who: Who,
    admitted: (Rc<CoreServed>, u64),
) -> CloseReason {
    let stats = &core.stats;
    let mut disp = CoreDispatch {
        served: admitted.0,
        served_gen: admitted.1,
        stats,
        sec: &core.sec,
        client: who.slot.id(),
        tracer: core.tracer.as_ref(),
        recorder: core.recorder.as_ref(),
        conn: core.recorder.as_ref().map_or(0, |r| r.next_conn()),
        scratch: Vec::with_capacity(1024),
        completions,
        submitted: false,
    };
    let mut chunk: Option<Chunk> = None;
    let mut timer = DeadlineTimer::new();
    let mut seen_gen = u64::MAX;
    loop {
        let now = Instant::now();
        if disp.served_gen != core.served_generation() {
            // A reload was taken up by the core: this turn's requests use it,
            // once its allow-list has admitted the connection again.
            disp.served = core.served();
            disp.served_gen = core.served_generation();
            if !who.readmit(core, &disp.served) {
                if let Some(c) = chunk.take() {
                    give_back(core, c.buf);
                }
                return CloseReason::Revoked;
            }
            disp.client = who.slot.id();
        }
        if seen_gen != core.control_gen() {
            seen_gen = core.control_gen();
            if let Some(d) = core.drain_deadline() {
                st.begin_drain(d);
            }
        }
        // Answers that came back from off-reactor backends.
        loop {
            let Some((id, op, read_at, key, r, span)) = completions.done.borrow_mut().pop_front()
            else {
                break;
            };
            stats.in_flight.sub(1);
            let mut code = ErrorCode::NONE;
            st.on_completion(now, |out| {
                code = dispatch::finish(stats, out, id, op, read_at, r.as_deref().map_err(|e| *e))
            });
            core.sec.count(key, disp.client, op, code.0);
            if let (Some(t), Some(rec)) = (&core.tracer, span) {
                t.submit(*rec, op, code, stats);
            }
        }
        st.process(now, &mut disp);
        if std::mem::take(&mut disp.submitted) {
            // This turn's off-reactor requests go out now, as one batch.
            dispatch::flush(&disp.served.stores);
        }
        if chunk.is_none() {
            if let Some(plain) = st.poll_output() {
                let n = plain.len();
                match encrypt(core, tls, plain) {
                    Ok(buf) => {
                        st.output_taken(n, now);
                        chunk = Some(Chunk { buf, off: 0 });
                    }
                    Err(_) => st.on_io_error(),
                }
            }
        }
        if st.next_timeout().is_some_and(|t| now >= t) {
            st.handle_timeout(now);
        }
        if let Some(r) = st.poll_close() {
            if let Some(c) = chunk.take() {
                give_back(core, c.buf);
            }
            return r;
        }
        let turn_over = st.has_work();
        let mut waited = false;
        let ev = future::poll_fn(|cx| {
            let r = poll_events(
                cx,
                tls,
                st,
                &mut chunk,
                completions,
                slot,
                seen_gen,
                &mut timer,
            );
            match r {
                Poll::Pending if turn_over => Poll::Ready(None),
                Poll::Pending => {
                    waited = true;
                    Poll::Pending
                }
                Poll::Ready(ev) => Poll::Ready(Some(ev)),
            }
        })
        .await;
        let now = Instant::now();
        match ev {
            None => {
                // The turn's budget is spent and work is left: let every
                // other ready connection (and the reactor) have a turn.
                glommio::timer::sleep(YIELD).await;
                st.end_turn();
                continue;
            }
            Some(Ev::Written) => {
                let c = chunk.take().expect("a chunk was being written");
                give_back(core, c.buf);
                let plain_before = st.unsent_bytes();
                let n = st.on_write_done(now);
                stats.responses.add(n as u64);
                stats
                    .bytes_out
                    .add((plain_before - st.unsent_bytes()) as u64);
            }
            Some(Ev::Read(n)) => st.on_read(n, now),
            Some(Ev::IoError) => st.on_io_error(),
            Some(Ev::SocketEmpty) => st.on_socket_empty(now),
            Some(Ev::Other) => {}
        }
        if waited {
            st.end_turn();
        }
    }
}

/// One pass over everything the connection waits for; the first ready
/// event wins. Registers wakers for all of them when none is ready.
#[allow(clippy::too_many_arguments)]
fn poll_events(
    cx: &mut Context<'_>,
    tls: &mut Tls,
    st: &mut ConnState,
    chunk: &mut Option<Chunk>,
    completions: &Completions,
    slot: &DrainSlot<'_>,
    seen_gen: u64,
    timer: &mut DeadlineTimer,
) -> Poll<Ev> {
    if let Some(c) = chunk {
        let (io, _) = tls.get_mut();
        while c.off < c.buf.len() {
            match Pin::new(&mut *io).poll_write(cx, &c.buf[c.off..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::IoError),
                Poll::Ready(Ok(n)) => c.off += n,
                Poll::Pending => break,
            }
        }
        if c.off == c.buf.len() {
            return Poll::Ready(Ev::Written);
        }
    }
    if completions.poll_ready(cx).is_ready() {
        return Poll::Ready(Ev::Other);
    }
    if slot.poll_changed(cx, seen_gen).is_ready() {
        return Poll::Ready(Ev::Other);
    }
    // Probe the socket once per quiet period; after that the timer ends it.
    let probe_empty = st.is_draining() && !st.drain_quiet_started();
    if let Some(buf) = st.read_buf() {
        match Pin::new(&mut *tls).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => return Poll::Ready(Ev::Read(n)),
            Poll::Ready(Err(_)) => return Poll::Ready(Ev::IoError),
            Poll::Pending => {
                // Draining: stop reading once the kernel holds nothing more
                // (glommio may report Pending while a readiness poll is
                // outstanding, so ask the socket itself).
                if probe_empty && socket_is_empty(tls) {
                    return Poll::Ready(Ev::SocketEmpty);
                }
            }
        }
    }
    let now = Instant::now();
    if timer.poll(cx, st.next_timeout(), now).is_ready() {
        return Poll::Ready(Ev::Other);
    }
    Poll::Pending
}

/// Whether the socket's receive queue is empty right now (no data, no EOF).
fn socket_is_empty(tls: &Tls) -> bool {
    let fd = tls.get_ref().0.as_raw_fd();
    let mut b = [0u8; 1];
    // SAFETY: a 1-byte peek into a local buffer on a socket this connection
    // owns; MSG_DONTWAIT makes it non-blocking.
    let r = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Send close_notify, giving up at `deadline` (a full socket is dropped).
async fn close_notify(tls: &mut Tls, deadline: Instant) {
    let (io, conn) = tls.get_mut();
    conn.send_close_notify();
    let mut buf = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut buf).is_err() {
            return;
        }
    }
    let _ = io
        .write_all(&buf)
        .or(async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            Ok(())
        })
        .await;
}

/// Put a ciphertext buffer back for the core's next write.
fn give_back(core: &CoreCtx, mut buf: Vec<u8>) {
    buf.clear();
    *core.tls_out.borrow_mut() = buf;
}

/// Encrypt `plain` into TLS records, all into one buffer for one send.
///
/// Why not `write_all` + `flush` on the TLS stream: futures-rustls hands the
/// socket one record (at most 16 KiB) per `send`, as glommio's socket has no
/// vectored write, so a full 64 KiB write buffer cost four `send` calls (each
/// also running the loopback peer's receive path). Here rustls encrypts
/// everything into the core's shared ciphertext buffer first; the buffer is
/// given back once sent (a connection that finds it taken, because another
/// one's send waits on a full socket, gets a fresh one).
fn encrypt(core: &CoreCtx, tls: &mut Tls, plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut net = std::mem::take(&mut *core.tls_out.borrow_mut());
    net.clear();
    let (_, conn) = tls.get_mut();
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
    Ok(net)
}

fn spawn_pending(p: Pending, completions: Rc<Completions>, served: Rc<CoreServed>) {
    glommio::spawn_local(async move {
        let r = p.fut.await;
        drop(served);
        completions.push((p.id, p.op, p.read_at, p.key, r, p.trace));
    })
    .detach();
}
