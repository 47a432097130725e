//! Pipelining, idle timeout, connection limit and drain over real sockets.

use crate::harness::{req, Opts, TestServer};
use crate::protocol_errors::raw_msg;
use keycore_engine::server::Limits;
use keycore_keys::KeyKind;
use keycore_protocol::{Message, Op};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// 10,000 pipelined requests with random IDs on one connection: every ID is
/// answered exactly once, every signature present.
#[test]
fn ten_thousand_pipelined_requests_with_random_ids() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let ec = srv.key(KeyKind::EcdsaP256);
    let d = [0x42u8; 32];
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_id = || {
        // xorshift64*: deterministic, no dependency, spread over u32.
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        (rng_state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    };
    let mut want: HashSet<u32> = HashSet::new();
    let mut got = 0usize;
    let mut buf = Vec::new();
    // Sent in bursts of 200 so neither side's socket buffers can deadlock a
    // blocking single-threaded client; the server still sees deep pipelines.
    for _ in 0..50 {
        buf.clear();
        let mut ids = Vec::new();
        for _ in 0..200 {
            let mut id = next_id();
            while want.contains(&id) {
                id = next_id();
            }
            want.insert(id);
            ids.push(id);
            Message {
                id,
                ..req(Op::ECDSA_SIGN_SHA256, Some(&ec.ski), &d)
            }
            .encode(&mut buf)
            .unwrap();
        }
        c.send_raw(&buf).unwrap();
        for _ in 0..200 {
            let r = c.read_response().unwrap();
            assert_eq!(r.opcode, Op::RESPONSE);
            assert!(
                r.payload.len() >= 8 && r.payload[0] == 0x30,
                "DER signature"
            );
            assert!(want.remove(&r.id), "unexpected or repeated id {}", r.id);
            got += 1;
        }
        assert!(ids.iter().all(|i| !want.contains(i)));
    }
    assert_eq!(got, 10_000);
    assert!(want.is_empty());
}

#[test]
fn idle_connection_is_closed_after_idle_timeout() {
    let srv = TestServer::start_with(Opts {
        limits: Limits {
            idle_timeout: Duration::from_millis(600),
            ..Limits::default()
        },
        ..Opts::default()
    });
    let mut c = srv.client();
    c.set_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = c.call(&req(Op::PING, None, b"x")).unwrap();
    assert_eq!(r.opcode, Op::PONG);
    let t = Instant::now();
    assert!(
        c.read_response().is_err(),
        "server must close the idle connection"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(srv.registry().sum(|c| c.idle_timeouts.get()), 1);
}

#[test]
fn a_partial_request_does_not_reset_the_idle_timer() {
    let srv = TestServer::start_with(Opts {
        limits: Limits {
            idle_timeout: Duration::from_millis(600),
            ..Limits::default()
        },
        ..Opts::default()
    });
    let mut c = srv.client();
    c.set_timeout(Some(Duration::from_secs(5))).unwrap();
    let m = raw_msg(1, &[0x11, 0, 1, 0xF1]);
    // Trickle the header a byte at a time: no complete request is ever read.
    let t = Instant::now();
    for b in &m[..6] {
        if c.send_raw(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(c.read_response().is_err());
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn connections_over_the_core_limit_are_closed() {
    let srv = TestServer::start_with(Opts {
        limits: Limits {
            max_connections_per_core: 2,
            ..Limits::default()
        },
        ..Opts::default()
    });
    let mut a = srv.client();
    let mut b = srv.client();
    assert_eq!(a.call(&req(Op::PING, None, b"a")).unwrap().opcode, Op::PONG);
    assert_eq!(b.call(&req(Op::PING, None, b"b")).unwrap().opcode, Op::PONG);
    let third = keycore_loadgen::client::BlockingClient::connect(srv.addr, &srv.client_tls(false));
    let refused = match third {
        Err(_) => true,
        Ok(mut c) => c.call(&req(Op::PING, None, b"c")).is_err(),
    };
    assert!(refused, "third connection must be refused");
    assert_eq!(srv.registry().sum(|c| c.refused.get()), 1);
    // The first two still work.
    assert_eq!(a.call(&req(Op::PING, None, b"a")).unwrap().opcode, Op::PONG);
}

#[test]
fn shutdown_answers_what_was_read_then_closes_quickly() {
    let mut srv = TestServer::start_with(Opts {
        cores: 2,
        ..Opts::default()
    });
    let mut busy = srv.client();
    let _idle = srv.client();
    let rsa = srv.key(KeyKind::Rsa { bits: 2048 });
    let d = [9u8; 32];
    let mut buf = Vec::new();
    for id in 0..64u32 {
        Message {
            id,
            ..req(Op::RSA_SIGN_SHA256, Some(&rsa.ski), &d)
        }
        .encode(&mut buf)
        .unwrap();
    }
    busy.send_raw(&buf).unwrap();
    // Wait until the server has read them (first answer), then drain.
    let first = busy.read_response().unwrap();
    assert_eq!(first.opcode, Op::RESPONSE);
    let took = srv.stop();
    let mut answered = 1;
    while let Ok(r) = busy.read_response() {
        assert_eq!(r.opcode, Op::RESPONSE);
        answered += 1;
    }
    assert_eq!(
        answered, 64,
        "every request read before the drain is answered"
    );
    assert!(
        took < Duration::from_secs(2),
        "drain with an idle connection took {took:?}"
    );
}
