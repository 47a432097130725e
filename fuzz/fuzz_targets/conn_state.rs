//! Fuzz target: the sans-IO connection core (`keycore_engine::server::
//! conn_state::ConnState`) driven by a script, with a fake clock and a fake
//! dispatcher, the way the async wrapper drives it.
//!
//! The input is a script of one-byte actions with their arguments: the peer
//! sends a well-formed request (some answered at once, some left pending),
//! sends raw bytes, the socket delivers k bytes, the peer closes, a turn runs,
//! a pending answer completes, the writer takes a (partial) chunk, a write
//! finishes, the clock moves and deadlines are applied, a drain starts, the
//! socket is found empty, the turn ends, an I/O error happens.
//!
//! Asserts, after every action:
//! - nothing panics (no debug assertion either: the fuzz build has them on);
//! - requests in flight never exceed `max_in_flight`, the read buffer never
//!   exceeds `read_buffer_bytes`, and unsent answer bytes stay below
//!   `answer_queue_bytes` plus one answer per request that may still arrive;
//! - a chunk offered to the writer is at most `write_buffer_bytes`;
//! - when it closes because the peer closed or a drain finished, every
//!   request it dispatched was answered exactly once on the wire (the bytes
//!   the writer took decode to one answer per request, same ids), none is
//!   counted unanswered, and `served` counts them.
#![no_main]

use keycore_engine::server::conn_state::{
    CloseReason, ConnLimits, ConnState, Dispatched, Dispatcher,
};
use keycore_protocol::codec::encode_response;
use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{Message, Op, MAX_BODY_LEN, MAX_MESSAGE_LEN, PADDED_LEN};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Answers at once, or leaves the request pending when its id is a multiple
/// of three. Cost: the first payload byte.
#[derive(Default)]
struct Fake {
    dispatched: Vec<u32>,
    pending: VecDeque<u32>,
    largest_answer: usize,
}

impl Dispatcher for Fake {
    fn dispatch(&mut self, msg: &Message<'_>, _at: Instant, out: &mut Vec<u8>) -> Dispatched {
        self.dispatched.push(msg.id);
        let cost = msg.payload.and_then(|p| p.first()).copied().unwrap_or(1) as u32 * 8;
        if msg.id % 3 == 0 {
            self.pending.push_back(msg.id);
            return Dispatched::Pending { cost };
        }
        let before = out.len();
        encode_response(out, msg.id, Op::PONG, &[]).unwrap();
        self.largest_answer = self.largest_answer.max(out.len() - before);
        Dispatched::Answered { cost }
    }
}

struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

fn limits(b: u8) -> ConnLimits {
    ConnLimits {
        max_in_flight: 1 + (b & 7) as usize,
        answer_queue_bytes: (1 + (b >> 3 & 3) as usize) * PADDED_LEN,
        idle_timeout: Duration::from_secs(30),
        read_buffer_bytes: if b & 0x20 != 0 {
            MAX_MESSAGE_LEN
        } else {
            2 * PADDED_LEN
        },
        write_buffer_bytes: (1 + (b >> 6) as usize) * 700,
        max_body_len: MAX_BODY_LEN,
        turn_budget: 100,
    }
}

/// Decode the answers in what the writer took: their ids, in order.
fn answers(wire: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        match frame::check(&wire[at..], MAX_BODY_LEN) {
            Ok(FrameStatus::Complete { len, .. }) => {
                let m = Message::decode(&wire[at..at + len]).expect("our own answer");
                ids.push(m.id);
                at += len;
            }
            other => panic!("the writer took a partial or bad answer: {other:?}"),
        }
    }
    ids
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let Some(lb) = s.byte() else { return };
    let lim = limits(lb);
    let t0 = Instant::now();
    let mut now = t0;
    let mut c = ConnState::new(lim.clone(), now);
    let mut d = Fake::default();
    let mut peer: Vec<u8> = Vec::new(); // sent by the peer, not yet read
    let mut taken: Vec<u8> = Vec::new(); // plaintext handed to the writer
    let mut next_id = 1u32;
    let mut garbage = false;
    let mut steps = 0;
    while let Some(op) = s.byte() {
        steps += 1;
        if steps > 4096 {
            break;
        }
        match op % 13 {
            0 | 1 => {
                // A well-formed request; its id decides answered / pending.
                let cost = s.byte().unwrap_or(1);
                let payload = [cost];
                let m = Message {
                    id: next_id,
                    opcode: Some(Op::PING),
                    payload: Some(&payload),
                    ..Default::default()
                };
                next_id += 1;
                m.encode(&mut peer).unwrap();
            }
            2 => {
                // Raw bytes (may be a malformed message).
                let n = s.byte().unwrap_or(0) as usize % 16;
                for _ in 0..n {
                    peer.push(s.byte().unwrap_or(0));
                }
                garbage |= n > 0;
            }
            3 | 4 => {
                // The socket delivers up to k bytes.
                let k = 1 + s.byte().unwrap_or(0) as usize * 16;
                if let Some(buf) = c.read_buf() {
                    assert!(buf.len() <= lim.read_buffer_bytes);
                    let n = k.min(buf.len()).min(peer.len());
                    if n > 0 {
                        buf[..n].copy_from_slice(&peer[..n]);
                        peer.drain(..n);
                        c.on_read(n, now);
                    }
                }
            }
            5 => {
                if peer.is_empty() && c.read_buf().is_some() {
                    c.on_read(0, now);
                }
            }
            6 => c.process(now, &mut d),
            7 => {
                if let Some(id) = d.pending.pop_front() {
                    c.on_completion(now, |out| {
                        encode_response(out, id, Op::PONG, &[]).unwrap();
                    });
                }
            }
            8 => {
                if let Some(chunk) = c.poll_output() {
                    assert!(!chunk.is_empty() && chunk.len() <= lim.write_buffer_bytes);
                    let n = if s.byte().unwrap_or(255) & 1 == 0 {
                        1 + chunk.len() / 2
                    } else {
                        chunk.len()
                    };
                    taken.extend_from_slice(&chunk[..n]);
                    c.output_taken(n, now);
                }
            }
            9 => {
                c.on_write_done(now);
            }
            10 => {
                now += Duration::from_millis(s.byte().unwrap_or(0) as u64 * 250);
                if let Some(t) = c.next_timeout() {
                    assert!(t >= t0);
                }
                c.handle_timeout(now);
            }
            11 => match s.byte().unwrap_or(0) % 4 {
                0 => c.begin_drain(now + Duration::from_secs(5)),
                1 => c.on_socket_empty(now),
                2 => c.end_turn(),
                _ => {
                    if s.byte().unwrap_or(0) == 0xEE {
                        c.on_io_error();
                    }
                }
            },
            _ => {
                // What the wrapper does each loop: a turn, then flush.
                c.process(now, &mut d);
                while let Some(chunk) = c.poll_output() {
                    let n = chunk.len();
                    taken.extend_from_slice(chunk);
                    c.output_taken(n, now);
                    c.on_write_done(now);
                }
                c.end_turn();
            }
        }
        assert!(
            c.in_flight() <= lim.max_in_flight,
            "in flight {} > {}",
            c.in_flight(),
            lim.max_in_flight
        );
        let answer = d.largest_answer.max(PADDED_LEN + 64);
        assert!(
            c.unsent_bytes() <= lim.answer_queue_bytes + (1 + lim.max_in_flight) * answer,
            "unsent {} bytes",
            c.unsent_bytes()
        );
        // The wrapper ends the connection at the first close.
        if c.poll_close().is_some() {
            break;
        }
    }
    if let Some(r @ (CloseReason::PeerClosed | CloseReason::Drain)) = c.poll_close() {
        if garbage {
            return; // bytes of a malformed message may be skipped whole
        }
        let ids = answers(&taken);
        let mut want = d.dispatched.clone();
        let mut got = ids.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(
            got, want,
            "{r:?}: answers on the wire do not match requests dispatched"
        );
        assert_eq!(c.unanswered(), 0, "{r:?} with requests unanswered");
        assert_eq!(c.served(), ids.len() as u64, "served count");
    }
});
