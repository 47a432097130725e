//! The sans-IO connection core (the quinn-proto model): everything one
//! connection decides, with no socket, no clock and no task of its own.
//!
//! Owns: the read buffer and framing; the count of requests in flight (read
//! but not yet written out, whether waiting on an off-reactor backend or
//! answered and queued); the bounded answer queue; the idle, write-stall and
//! drain deadlines; the peer-closed / draining / closing state; and the
//! per-turn crypto budget. Must not: do I/O, read the clock (every call takes
//! `now`), spawn tasks, log per request, or know which backend answered (the
//! [`Dispatcher`] it is handed does that).
//!
//! The async wrapper (`conn.rs`) only moves bytes and waits:
//! `read_buf()` → socket read → `on_read(n, now)`; `process(now, d)` runs one
//! turn; `poll_output()` → encrypt and send → `output_taken()` and later
//! `on_write_done()`; `on_completion()` for off-reactor answers;
//! `next_timeout()` / `handle_timeout(now)`; `poll_close()` says when and why
//! to end.
//!
//! Scheduling policy (issue 13), stated once here:
//! - **Cost-budgeted turns.** Each dispatched request reports an estimated
//!   crypto cost (about one microsecond of this project's VM per unit: ECDSA
//!   P-256 ≈ 20, RSA-2048 ≈ 260, a ping 1; the table is `dispatch::cost`). A
//!   turn ends once it has spent `turn_budget` units (at least one request per
//!   turn), whatever the count. The wrapper then sends what the turn answered
//!   and yields *through the reactor* (a timer, not a task-queue yield, so
//!   other connections' socket readiness is seen), which puts every ready
//!   connection's turn in round-robin order. So a cheap request on one
//!   connection waits at most one turn of each other ready connection (about
//!   `turn_budget` µs each), never behind another connection's whole batch.
//!   Within a connection, requests are answered in the order they arrive.
//! - **No mutual stall.** Reading never waits for a write: while a send is
//!   blocked on a full socket, complete requests keep being read, answered and
//!   queued, until `max_in_flight` requests are read-but-unwritten or the
//!   unwritten answers reach `answer_queue_bytes`. Only then does reading
//!   stop (backpressure). So a client that stops reading while its own write
//!   is blocked is always unblocked by the server reading, and memory per
//!   connection stays bounded by the read buffer plus the answer queue.
//!
//! Deadlines (issue 12): a chunk handed to the socket must be fully written
//! within `idle_timeout` or the connection is aborted (no close_notify into a
//! full socket); with nothing in flight or queued, no complete request for
//! `idle_timeout` closes it; while draining, everything ends by the drain
//! deadline and whatever was read but not answered is counted.

use keycore_protocol::codec::encode_error;
use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{ErrorCode, Message};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Read buffer a connection starts with: sixteen padded requests per read.
/// It grows (up to `read_buffer_bytes`) only for a message that does not
/// fit, so an idle or ordinary connection holds 16 KiB, not 64 KiB.
pub const INITIAL_READ_BUFFER: usize = 16 * 1024;

/// Estimated-cost units one connection may spend per turn before the others
/// get theirs: about 1 ms of signing on this project's VM (4 RSA-2048 signs,
/// ~50 ECDSA P-256 signs). Large enough that the per-turn send and reactor
/// round trip (a few µs) stay under 1% of the work; small enough that a
/// cheap request behind four busy RSA connections waits ~4 ms, not a batch.
pub const TURN_BUDGET: u32 = 1_000;

/// The connection's limits, fixed at start-up.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Requests read but not yet written out (waiting on a backend, or
    /// answered and queued) before the connection stops reading.
    pub max_in_flight: usize,
    /// Unwritten answer bytes before the connection stops reading.
    pub answer_queue_bytes: usize,
    /// Idle and write-stall deadline.
    pub idle_timeout: Duration,
    /// Largest read buffer (at least one largest message).
    pub read_buffer_bytes: usize,
    /// Largest plaintext chunk handed to one send.
    pub write_buffer_bytes: usize,
    /// Largest request body accepted.
    pub max_body_len: usize,
    /// Cost units per turn (see the module header).
    pub turn_budget: u32,
}

/// What dispatching one request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// The answer was appended to the output.
    Answered {
        /// Estimated cost units spent.
        cost: u32,
    },
    /// The operation runs elsewhere; its answer comes through
    /// [`ConnState::on_completion`].
    Pending {
        /// Estimated cost units spent on the reactor.
        cost: u32,
    },
}

/// The one call from the connection core into the rest of the server.
pub trait Dispatcher {
    /// Handle one decoded request read at `read_at`: append its answer to
    /// `out`, or arrange for a later completion.
    fn dispatch(&mut self, msg: &Message<'_>, read_at: Instant, out: &mut Vec<u8>) -> Dispatched;
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side and everything was answered.
    PeerClosed,
    /// No complete request within `idle_timeout`.
    Idle,
    /// A malformed message (answered with 0x07); stream position lost.
    Framing,
    /// Read or write failed.
    Io,
    /// A send did not complete within `idle_timeout` (peer not reading).
    WriteStalled,
    /// Drained: everything received was answered.
    Drain,
    /// The drain deadline passed with requests unanswered.
    DrainTimeout,
    /// A reload's client allow-list no longer admits the connection's
    /// certificate (issue 18): closed at once, nothing more is read or
    /// answered.
    Revoked,
}

impl CloseReason {
    /// Whether to send close_notify (with its own bounded deadline). Not
    /// after a stalled write or an I/O error: the socket is full or broken.
    pub fn graceful(self) -> bool {
        !matches!(
            self,
            CloseReason::Io
                | CloseReason::WriteStalled
                | CloseReason::DrainTimeout
                | CloseReason::Revoked
        )
    }
}

/// How long a draining connection's socket must stay empty before reading
/// stops. One empty read is not proof that the peer's requests have all
/// arrived: a receive already submitted to io_uring may hold the next bytes,
/// and the peer's kernel may still be moving queued data as our window
/// opens. 50 ms covers both on loopback and a LAN; a drain never waits past
/// its own deadline for it.
pub const DRAIN_QUIET: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Drain {
    deadline: Instant,
    /// When a read last found the socket empty with nothing read since.
    empty_since: Option<Instant>,
    /// The socket stayed empty for [`DRAIN_QUIET`]: stop reading, answer,
    /// close.
    socket_empty: bool,
}

impl Drain {
    /// When the quiet period that would end reading is over.
    fn quiet_until(&self) -> Option<Instant> {
        match self.empty_since {
            Some(t) if !self.socket_empty => Some(t + DRAIN_QUIET),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Writing {
    /// Plaintext bytes the chunk carries.
    plain: usize,
    /// It must be fully written by then.
    deadline: Instant,
}

/// One connection's state. See the module header.
#[derive(Debug)]
pub struct ConnState {
    lim: ConnLimits,
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Answers; `out[out_head..]` are not yet handed to the writer.
    out: Vec<u8>,
    out_head: usize,
    /// Cumulative plaintext offset at which each unwritten answer ends.
    answer_ends: VecDeque<u64>,
    queued_total: u64,
    sent_total: u64,
    writing: Option<Writing>,
    /// Requests waiting on an off-reactor backend.
    pending: usize,
    /// Last complete request or completion (the idle clock).
    last_activity: Instant,
    turn_spent: u32,
    peer_closed: bool,
    /// Close once the output is written (framing error).
    fatal: Option<CloseReason>,
    /// Close now.
    close_now: Option<CloseReason>,
    drain: Option<Drain>,
    served: u64,
}

impl ConnState {
    /// A fresh connection at `now`.
    pub fn new(lim: ConnLimits, now: Instant) -> ConnState {
        let rbuf = vec![0u8; INITIAL_READ_BUFFER.min(lim.read_buffer_bytes)];
        ConnState {
            lim,
            rbuf,
            start: 0,
            end: 0,
            out: Vec::with_capacity(4 * 1024),
            out_head: 0,
            answer_ends: VecDeque::new(),
            queued_total: 0,
            sent_total: 0,
            writing: None,
            pending: 0,
            last_activity: now,
            turn_spent: 0,
            peer_closed: false,
            fatal: None,
            close_now: None,
            drain: None,
            served: 0,
        }
    }

    /// Requests read and not yet written out.
    pub fn in_flight(&self) -> usize {
        self.pending + self.answer_ends.len()
    }

    /// Requests waiting on an off-reactor backend.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Answers written so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Answer bytes not yet fully written.
    pub fn unsent_bytes(&self) -> usize {
        (self.queued_total - self.sent_total) as usize
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Whether reads are wanted now (drain: until the socket is found empty).
    pub fn wants_read(&self) -> bool {
        self.close_now.is_none()
            && self.fatal.is_none()
            && !self.peer_closed
            && !self.drain.as_ref().is_some_and(|d| d.socket_empty)
            && self.gates_open()
            && !self.has_complete()
    }

    /// Room for the next read, or `None` when reading must wait.
    pub fn read_buf(&mut self) -> Option<&mut [u8]> {
        if !self.wants_read() {
            return None;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // Move a partial message to the front when the tail is short, and
        // grow the buffer (up to the limit) for a message larger than it.
        let room = self.rbuf.len() - self.end;
        if self.start > 0 && (room == 0 || room < keycore_protocol::HEADER_LEN) {
            self.compact();
        }
        if let Ok(FrameStatus::NeedMore(n)) =
            frame::check(&self.rbuf[self.start..self.end], self.lim.max_body_len)
        {
            if self.end + n > self.rbuf.len() {
                self.compact();
                let want = (self.end + n).clamp(self.rbuf.len(), self.lim.read_buffer_bytes.max(1));
                self.rbuf.resize(want, 0);
            }
        }
        if self.end == self.rbuf.len() {
            return None; // cannot happen: a frame larger than the limit is refused
        }
        Some(&mut self.rbuf[self.end..])
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// `n` bytes were read into [`Self::read_buf`]; 0 means the peer closed.
    pub fn on_read(&mut self, n: usize, _now: Instant) {
        if n == 0 {
            self.peer_closed = true;
        } else {
            self.end += n;
            debug_assert!(self.end <= self.rbuf.len());
            if let Some(d) = &mut self.drain {
                d.empty_since = None;
            }
        }
    }

    /// While draining, a read found nothing more in the socket. Reading
    /// stops once it has stayed empty for [`DRAIN_QUIET`] (checked here and
    /// by [`Self::handle_timeout`]); bytes read meanwhile start it again.
    pub fn on_socket_empty(&mut self, now: Instant) {
        if let Some(d) = &mut self.drain {
            let since = *d.empty_since.get_or_insert(now);
            if now >= since + DRAIN_QUIET {
                d.socket_empty = true;
            }
        }
    }

    /// Whether a draining connection already found its socket empty and is
    /// waiting out [`DRAIN_QUIET`] (the shell then waits for bytes or the
    /// timer instead of probing the socket again).
    pub fn drain_quiet_started(&self) -> bool {
        self.drain.as_ref().is_some_and(|d| d.empty_since.is_some())
    }

    /// A read or write failed.
    pub fn on_io_error(&mut self) {
        self.close_now.get_or_insert(CloseReason::Io);
    }

    /// Start draining: answer what was received, close by `deadline`.
    pub fn begin_drain(&mut self, deadline: Instant) {
        match &mut self.drain {
            Some(d) => d.deadline = d.deadline.min(deadline),
            None => {
                self.drain = Some(Drain {
                    deadline,
                    empty_since: None,
                    socket_empty: false,
                })
            }
        }
    }

    fn gates_open(&self) -> bool {
        self.in_flight() < self.lim.max_in_flight
            && self.unsent_bytes() < self.lim.answer_queue_bytes
    }

    fn has_complete(&self) -> bool {
        matches!(
            frame::check(&self.rbuf[self.start..self.end], self.lim.max_body_len),
            Ok(FrameStatus::Complete { .. }) | Err(_)
        )
    }

    /// Whether [`Self::process`] has buffered work it left for the next turn.
    pub fn has_work(&self) -> bool {
        self.close_now.is_none() && self.fatal.is_none() && self.gates_open() && self.has_complete()
    }

    /// The wrapper yielded (or waited): the next turn starts with a full budget.
    pub fn end_turn(&mut self) {
        self.turn_spent = 0;
    }

    /// Run one turn: frame, decode and dispatch complete requests while the
    /// budget, the in-flight cap and the answer queue allow.
    pub fn process(&mut self, now: Instant, d: &mut impl Dispatcher) {
        while self.close_now.is_none()
            && self.fatal.is_none()
            && self.turn_spent < self.lim.turn_budget
            && self.gates_open()
        {
            let avail = &self.rbuf[self.start..self.end];
            let before = self.out.len();
            match frame::check(avail, self.lim.max_body_len) {
                Ok(FrameStatus::NeedMore(_)) => break,
                Ok(FrameStatus::Complete { len, .. }) => {
                    match Message::decode(&avail[..len]) {
                        Ok(msg) => {
                            self.last_activity = now;
                            match d.dispatch(&msg, now, &mut self.out) {
                                Dispatched::Answered { cost } => {
                                    self.turn_spent += cost.max(1);
                                }
                                Dispatched::Pending { cost } => {
                                    self.turn_spent += cost.max(1);
                                    self.pending += 1;
                                }
                            }
                        }
                        Err(_) => {
                            let id = frame::Header::parse(avail).map(|h| h.id).unwrap_or(0);
                            encode_error(&mut self.out, id, ErrorCode::FORMAT);
                            self.fatal = Some(CloseReason::Framing);
                        }
                    }
                    self.start += len;
                }
                Err(_) => {
                    let id = frame::Header::parse(avail).map(|h| h.id).unwrap_or(0);
                    encode_error(&mut self.out, id, ErrorCode::FORMAT);
                    self.fatal = Some(CloseReason::Framing);
                }
            }
            self.queued(before);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.rbuf.len() > INITIAL_READ_BUFFER {
                // A large message has been consumed: give its memory back.
                self.rbuf.truncate(INITIAL_READ_BUFFER);
                self.rbuf.shrink_to_fit();
            }
        }
    }

    /// Record an answer appended to `out` since it was `before` bytes long.
    fn queued(&mut self, before: usize) {
        let added = self.out.len() - before;
        if added > 0 {
            self.queued_total += added as u64;
            self.answer_ends.push_back(self.queued_total);
        }
    }

    /// An off-reactor operation finished; `encode` appends its answer.
    pub fn on_completion(&mut self, now: Instant, encode: impl FnOnce(&mut Vec<u8>)) {
        debug_assert!(self.pending > 0);
        self.pending = self.pending.saturating_sub(1);
        self.last_activity = now;
        let before = self.out.len();
        encode(&mut self.out);
        self.queued(before);
    }

    /// The next plaintext chunk to encrypt and send, if no send is under way.
    pub fn poll_output(&self) -> Option<&[u8]> {
        if self.writing.is_some() || self.out_head == self.out.len() || self.close_now.is_some() {
            return None;
        }
        let end = self
            .out
            .len()
            .min(self.out_head + self.lim.write_buffer_bytes);
        Some(&self.out[self.out_head..end])
    }

    /// The first `n` bytes of [`Self::poll_output`] were handed to a send.
    pub fn output_taken(&mut self, n: usize, now: Instant) {
        self.out_head += n;
        if self.out_head == self.out.len() {
            self.out.clear();
            self.out_head = 0;
        } else if self.out_head >= self.out.len() / 2 {
            // Amortised: each byte is moved at most once per halving.
            self.out.drain(..self.out_head);
            self.out_head = 0;
        }
        self.writing = Some(Writing {
            plain: n,
            deadline: now + self.lim.idle_timeout,
        });
    }

    /// The chunk handed last is fully written. Returns the answers it
    /// completed.
    pub fn on_write_done(&mut self, _now: Instant) -> usize {
        let Some(w) = self.writing.take() else {
            return 0;
        };
        self.sent_total += w.plain as u64;
        let mut n = 0;
        while self
            .answer_ends
            .front()
            .is_some_and(|&e| e <= self.sent_total)
        {
            self.answer_ends.pop_front();
            n += 1;
        }
        self.served += n as u64;
        n
    }

    /// Whether a send is under way.
    pub fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    fn quiet(&self) -> bool {
        self.pending == 0 && self.writing.is_none() && self.out_head == self.out.len()
    }

    /// The earliest deadline the wrapper must wake up for.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.close_now.is_some() {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(w) = &self.writing {
            at(w.deadline);
        }
        if self.quiet() && !self.peer_closed && self.fatal.is_none() {
            at(self.last_activity + self.lim.idle_timeout);
        }
        if let Some(d) = &self.drain {
            at(d.deadline);
            if let Some(q) = d.quiet_until() {
                at(q);
            }
        }
        t
    }

    /// Apply every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.close_now.is_some() {
            return;
        }
        if let Some(d) = &mut self.drain {
            if now >= d.deadline {
                self.close_now = Some(CloseReason::DrainTimeout);
                return;
            }
            if d.quiet_until().is_some_and(|q| now >= q) {
                d.socket_empty = true;
            }
        }
        if self.writing.as_ref().is_some_and(|w| now >= w.deadline) {
            self.close_now = Some(CloseReason::WriteStalled);
            return;
        }
        if self.quiet()
            && !self.peer_closed
            && self.fatal.is_none()
            && now >= self.last_activity + self.lim.idle_timeout
        {
            self.close_now = Some(CloseReason::Idle);
        }
    }

    /// `Some(reason)` once the connection should end.
    pub fn poll_close(&self) -> Option<CloseReason> {
        if let Some(r) = self.close_now {
            return Some(r);
        }
        let flushed = self.writing.is_none() && self.out_head == self.out.len();
        if let Some(r) = self.fatal {
            return flushed.then_some(r);
        }
        let settled = flushed && self.pending == 0 && !self.has_complete();
        if self.peer_closed && settled {
            return Some(CloseReason::PeerClosed);
        }
        if self.drain.as_ref().is_some_and(|d| d.socket_empty) && settled {
            return Some(CloseReason::Drain);
        }
        None
    }

    /// Requests received and never answered (counted at close): waiting on a
    /// backend, answered but not written, or complete in the read buffer.
    pub fn unanswered(&self) -> usize {
        let mut n = self.in_flight();
        let mut at = self.start;
        while let Ok(FrameStatus::Complete { len, .. }) =
            frame::check(&self.rbuf[at..self.end], self.lim.max_body_len)
        {
            n += 1;
            at += len;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_protocol::codec::encode_response;
    use keycore_protocol::{Op, PADDED_LEN};

    /// Answers every request with a padded pong; ops listed in `pending`
    /// are left for `on_completion`. Cost: the first payload byte.
    #[derive(Default)]
    struct Fake {
        seen: Vec<u32>,
        pending_op: Option<Op>,
    }

    impl Dispatcher for Fake {
        fn dispatch(&mut self, msg: &Message<'_>, _at: Instant, out: &mut Vec<u8>) -> Dispatched {
            self.seen.push(msg.id);
            let cost = msg.payload.and_then(|p| p.first()).copied().unwrap_or(1) as u32;
            if msg.opcode.is_some() && msg.opcode == self.pending_op {
                return Dispatched::Pending { cost };
            }
            encode_response(out, msg.id, Op::PONG, &[]).unwrap();
            Dispatched::Answered { cost }
        }
    }

    fn lim() -> ConnLimits {
        ConnLimits {
            max_in_flight: 8,
            answer_queue_bytes: 8 * PADDED_LEN,
            idle_timeout: Duration::from_secs(30),
            read_buffer_bytes: keycore_protocol::MAX_MESSAGE_LEN,
            write_buffer_bytes: 4 * PADDED_LEN,
            max_body_len: keycore_protocol::MAX_BODY_LEN,
            turn_budget: 100,
        }
    }

    fn request(id: u32, op: Op, cost: u8) -> Vec<u8> {
        let payload = [cost];
        let m = Message {
            id,
            opcode: Some(op),
            payload: Some(&payload),
            ..Default::default()
        };
        let mut v = Vec::new();
        m.encode(&mut v).unwrap();
        v
    }

    /// Feed bytes as the wrapper would (as much as the buffer takes).
    fn feed(s: &mut ConnState, mut bytes: &[u8], now: Instant) -> usize {
        let mut fed = 0;
        while !bytes.is_empty() {
            let Some(buf) = s.read_buf() else { break };
            let n = buf.len().min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            s.on_read(n, now);
            bytes = &bytes[n..];
            fed += n;
        }
        fed
    }

    /// Write everything out as a socket that accepts all would.
    fn flush(s: &mut ConnState, now: Instant) -> usize {
        let mut answers = 0;
        while let Some(p) = s.poll_output() {
            let n = p.len();
            s.output_taken(n, now);
            answers += s.on_write_done(now);
        }
        answers
    }

    fn ids_in(out: &[u8]) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut at = 0;
        while let Ok(FrameStatus::Complete { header, len }) =
            frame::check(&out[at..], keycore_protocol::MAX_BODY_LEN)
        {
            ids.push(header.id);
            at += len;
        }
        ids
    }

    #[test]
    fn answers_pipelined_requests_in_order_and_counts_them() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        let mut wire = Vec::new();
        for id in 1..=3 {
            wire.extend(request(id, Op::PING, 1));
        }
        assert_eq!(feed(&mut s, &wire, t0), wire.len());
        s.process(t0, &mut d);
        assert_eq!(d.seen, [1, 2, 3]);
        assert_eq!(s.in_flight(), 3, "answered but unwritten still count");
        let out = s.poll_output().unwrap().to_vec();
        assert_eq!(ids_in(&out), [1, 2, 3]);
        s.output_taken(out.len(), t0);
        assert_eq!(s.on_write_done(t0), 3);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.served(), 3);
        assert_eq!(s.poll_close(), None);
    }

    #[test]
    fn idle_deadline_only_when_nothing_is_in_flight() {
        let t0 = Instant::now();
        let idle = lim().idle_timeout;
        let mut s = ConnState::new(lim(), t0);
        assert_eq!(s.next_timeout(), Some(t0 + idle));
        s.handle_timeout(t0 + idle - Duration::from_millis(1));
        assert_eq!(s.poll_close(), None);

        // A request 10 s in moves the deadline.
        let t1 = t0 + Duration::from_secs(10);
        let mut d = Fake {
            pending_op: Some(Op::ECDSA_SIGN_SHA256),
            ..Default::default()
        };
        feed(&mut s, &request(7, Op::ECDSA_SIGN_SHA256, 1), t1);
        s.process(t1, &mut d);
        assert_eq!(s.pending(), 1);
        assert_eq!(
            s.next_timeout(),
            None,
            "no idle clock while a backend works"
        );
        s.handle_timeout(t1 + idle * 3);
        assert_eq!(s.poll_close(), None);

        let t2 = t1 + idle * 3;
        s.on_completion(t2, |out| encode_error(out, 7, ErrorCode::INTERNAL));
        assert_eq!(flush(&mut s, t2), 1);
        assert_eq!(s.next_timeout(), Some(t2 + idle));
        s.handle_timeout(t2 + idle);
        assert_eq!(s.poll_close(), Some(CloseReason::Idle));
        assert!(CloseReason::Idle.graceful());
    }

    #[test]
    fn keeps_reading_while_a_write_is_blocked_up_to_the_in_flight_cap() {
        // The mutual-stall case: the send is stuck, the peer keeps sending.
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        feed(&mut s, &request(1, Op::PING, 1), t0);
        s.process(t0, &mut d);
        let n = s.poll_output().unwrap().len();
        s.output_taken(n, t0); // never completes
        let mut wire = Vec::new();
        for id in 2..=20 {
            wire.extend(request(id, Op::PING, 1));
        }
        let mut fed = 0;
        loop {
            let f = feed(&mut s, &wire[fed..], t0);
            s.process(t0, &mut d);
            s.end_turn();
            fed += f;
            if f == 0 {
                break;
            }
        }
        assert_eq!(s.in_flight(), lim().max_in_flight, "read up to the cap");
        assert_eq!(d.seen.len(), lim().max_in_flight);
        assert!(!s.wants_read(), "then backpressure");
        assert!(s.read_buf().is_none());
        assert!(s.poll_output().is_none(), "one send at a time");
        // The queue is bounded: 7 answers waiting behind the blocked chunk.
        assert_eq!(s.unsent_bytes(), 8 * PADDED_LEN);
        // The send completes: everything flows again.
        assert_eq!(s.on_write_done(t0), 1);
        assert!(s.has_work(), "buffered requests are processed again");
        assert_eq!(flush(&mut s, t0), 7);
        s.process(t0, &mut d);
        assert_eq!(
            d.seen.len(),
            2 * lim().max_in_flight,
            "the next 8 go through"
        );
    }

    #[test]
    fn answer_queue_bytes_bound_reading_too() {
        let t0 = Instant::now();
        let mut l = lim();
        l.answer_queue_bytes = 3 * PADDED_LEN;
        let mut s = ConnState::new(l, t0);
        let mut d = Fake::default();
        let mut wire = Vec::new();
        for id in 1..=6 {
            wire.extend(request(id, Op::PING, 1));
        }
        feed(&mut s, &wire, t0);
        s.process(t0, &mut d);
        assert_eq!(d.seen.len(), 3);
        assert!(!s.has_work() && !s.wants_read());
        flush(&mut s, t0);
        s.process(t0, &mut d);
        assert_eq!(d.seen.len(), 6);
    }

    #[test]
    fn a_stalled_write_aborts_after_idle_timeout_without_close_notify() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        feed(&mut s, &request(1, Op::PING, 1), t0);
        s.process(t0, &mut d);
        let n = s.poll_output().unwrap().len();
        let t1 = t0 + Duration::from_secs(5);
        s.output_taken(n, t1);
        assert_eq!(s.next_timeout(), Some(t1 + lim().idle_timeout));
        s.handle_timeout(t1 + lim().idle_timeout);
        let r = s.poll_close().unwrap();
        assert_eq!(r, CloseReason::WriteStalled);
        assert!(!r.graceful(), "never close_notify into a full socket");
        assert_eq!(s.unanswered(), 1);
    }

    #[test]
    fn turns_are_bounded_by_cost_not_count() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        let mut wire = Vec::new();
        // Budget 100: two costly requests (60 each) make one turn, while
        // cheap ones (1 each) fill a turn up to the in-flight cap.
        for id in 1..=3 {
            wire.extend(request(id, Op::PING, 60));
        }
        feed(&mut s, &wire, t0);
        s.process(t0, &mut d);
        assert_eq!(d.seen, [1, 2], "turn ends once the budget is spent");
        assert!(s.has_work());
        s.end_turn();
        s.process(t0, &mut d);
        assert_eq!(d.seen, [1, 2, 3]);
        assert!(!s.has_work());
        flush(&mut s, t0);

        let mut wire = Vec::new();
        for id in 10..18 {
            wire.extend(request(id, Op::PING, 1));
        }
        s.end_turn();
        feed(&mut s, &wire, t0);
        s.process(t0, &mut d);
        assert_eq!(d.seen.len(), 3 + 8, "eight cheap requests in one turn");

        // One request always goes through even if it alone exceeds the budget.
        flush(&mut s, t0);
        s.end_turn();
        feed(&mut s, &request(99, Op::PING, 250), t0);
        s.process(t0, &mut d);
        assert_eq!(*d.seen.last().unwrap(), 99);
    }

    #[test]
    fn framing_error_is_answered_then_closes() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        // A header announcing a body over the limit: refused from the header.
        let mut l = lim();
        l.max_body_len = 100;
        let mut s2 = ConnState::new(l, t0);
        feed(&mut s2, &[1, 0, 0x10, 0x00, 0, 0, 0, 42], t0);
        s2.process(t0, &mut d);
        assert_eq!(s2.poll_close(), None, "the 0x07 answer goes out first");
        let out = s2.poll_output().unwrap().to_vec();
        assert_eq!(ids_in(&out), [42]);
        s2.output_taken(out.len(), t0);
        s2.on_write_done(t0);
        assert_eq!(s2.poll_close(), Some(CloseReason::Framing));

        // A complete message whose items are malformed (an item overruns).
        let bad = [1, 0, 0, 4, 0, 0, 0, 9, 0x11, 0, 9, 0];
        feed(&mut s, &bad, t0);
        s.process(t0, &mut d);
        assert!(d.seen.is_empty());
        assert_eq!(flush(&mut s, t0), 1);
        assert_eq!(s.poll_close(), Some(CloseReason::Framing));
        assert!(!s.wants_read());
    }

    #[test]
    fn peer_close_waits_for_pending_answers() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake {
            pending_op: Some(Op::ECDSA_SIGN_SHA256),
            ..Default::default()
        };
        let mut wire = request(1, Op::ECDSA_SIGN_SHA256, 1);
        wire.extend(request(2, Op::PING, 1));
        feed(&mut s, &wire, t0);
        s.on_read(0, t0);
        s.process(t0, &mut d);
        flush(&mut s, t0);
        assert_eq!(s.poll_close(), None, "request 1 is still with the backend");
        s.on_completion(t0, |out| encode_error(out, 1, ErrorCode::INTERNAL));
        assert_eq!(s.poll_close(), None, "its answer is not written yet");
        assert_eq!(flush(&mut s, t0), 1);
        assert_eq!(s.poll_close(), Some(CloseReason::PeerClosed));
        assert_eq!(s.unanswered(), 0);
    }

    #[test]
    fn drain_answers_everything_received_then_closes() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        let mut wire = Vec::new();
        for id in 1..=5 {
            wire.extend(request(id, Op::PING, 1));
        }
        feed(&mut s, &wire[..3000], t0);
        let deadline = t0 + Duration::from_secs(10);
        s.begin_drain(deadline);
        assert!(s.wants_read() || s.has_work(), "still reads what was sent");
        s.process(t0, &mut d);
        feed(&mut s, &wire[3000..], t0);
        s.process(t0, &mut d);
        s.on_socket_empty(t0);
        assert!(
            s.wants_read(),
            "one empty read does not end reading: bytes may still be arriving"
        );
        assert_eq!(s.next_timeout(), Some(t0 + DRAIN_QUIET));
        feed(&mut s, &request(6, Op::PING, 1), t0 + DRAIN_QUIET / 2);
        s.on_socket_empty(t0 + DRAIN_QUIET / 2);
        s.handle_timeout(t0 + DRAIN_QUIET);
        s.process(t0, &mut d);
        assert!(
            s.wants_read(),
            "bytes read during the quiet period restart it"
        );
        let t1 = t0 + DRAIN_QUIET / 2 + DRAIN_QUIET;
        s.handle_timeout(t1);
        assert_eq!(s.poll_close(), None, "answers not written yet");
        assert!(
            !s.wants_read(),
            "nothing more is read once the socket stayed empty"
        );
        assert_eq!(flush(&mut s, t1), 6);
        assert_eq!(s.poll_close(), Some(CloseReason::Drain));
        assert_eq!(s.next_timeout(), Some(deadline));
    }

    #[test]
    fn drain_deadline_counts_what_was_not_answered() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake {
            pending_op: Some(Op::ECDSA_SIGN_SHA256),
            ..Default::default()
        };
        let mut wire = request(1, Op::ECDSA_SIGN_SHA256, 1);
        wire.extend(request(2, Op::PING, 1));
        wire.extend(request(3, Op::PING, 200)); // over this turn's budget
        wire.extend(request(4, Op::PING, 1));
        feed(&mut s, &wire, t0);
        s.process(t0, &mut d);
        assert_eq!(d.seen, [1, 2, 3]);
        let deadline = t0 + Duration::from_secs(1);
        s.begin_drain(deadline + Duration::from_secs(5));
        s.begin_drain(deadline); // a second signal only shortens it
        s.handle_timeout(deadline);
        assert_eq!(s.poll_close(), Some(CloseReason::DrainTimeout));
        // pending 1, two answers unwritten (2, 3), one complete request (4)
        assert_eq!(s.unanswered(), 4);
        assert!(s.poll_output().is_none(), "nothing more is written");
    }

    #[test]
    fn read_buffer_grows_for_a_large_message_and_shrinks_after() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        let payload = vec![1u8; 40_000];
        let m = Message {
            id: 5,
            opcode: Some(Op::PING),
            payload: Some(&payload),
            ..Default::default()
        };
        let mut wire = Vec::new();
        m.encode(&mut wire).unwrap();
        assert_eq!(feed(&mut s, &wire, t0), wire.len());
        assert!(s.rbuf.len() >= wire.len());
        s.process(t0, &mut d);
        assert_eq!(d.seen, [5]);
        assert_eq!(s.rbuf.len(), INITIAL_READ_BUFFER);
    }

    #[test]
    fn chunks_split_answers_and_count_each_answer_once_fully_sent() {
        let t0 = Instant::now();
        let mut l = lim();
        l.write_buffer_bytes = 1500; // answers are 1024 bytes: chunks cut them
        let mut s = ConnState::new(l, t0);
        let mut d = Fake::default();
        let mut wire = Vec::new();
        for id in 1..=3 {
            wire.extend(request(id, Op::PING, 1));
        }
        feed(&mut s, &wire, t0);
        s.process(t0, &mut d);
        let mut sent = Vec::new();
        let mut done = Vec::new();
        while let Some(p) = s.poll_output() {
            sent.extend_from_slice(p);
            let n = p.len();
            s.output_taken(n, t0);
            done.push(s.on_write_done(t0));
        }
        assert_eq!(
            done,
            [1, 1, 1],
            "1500, 1500, 72 bytes: one answer completes per chunk"
        );
        assert_eq!(ids_in(&sent), [1, 2, 3], "the byte stream is intact");
        assert_eq!(s.in_flight(), 0);
        assert!(s.out.is_empty(), "the queue is reset once drained");
    }

    #[test]
    fn io_error_closes_at_once_and_counts_the_unanswered() {
        let t0 = Instant::now();
        let mut s = ConnState::new(lim(), t0);
        let mut d = Fake::default();
        feed(&mut s, &request(1, Op::PING, 1), t0);
        s.process(t0, &mut d);
        s.on_io_error();
        assert_eq!(s.poll_close(), Some(CloseReason::Io));
        assert_eq!(s.unanswered(), 1);
    }
}
