//! Every error case of PROTOCOL.md, and every framing-error case, over a
//! real connection.

use crate::harness::{req, Opts, TestServer};
use keycore_engine::server::Limits;
use keycore_keys::KeyKind;
use keycore_protocol::{ErrorCode, Message, Op};

#[test]
fn error_codes_match_the_protocol() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let ec = srv.key(KeyKind::EcdsaP256);
    let unknown_ski = [0xEEu8; 20];
    let d = [1u8; 32];
    let cases: Vec<(Message<'_>, ErrorCode, &str)> = vec![
        (
            req(Op::ECDSA_SIGN_SHA256, Some(&unknown_ski), &d),
            ErrorCode::KEY_NOT_FOUND,
            "unknown SKI",
        ),
        (
            req(Op::ECDSA_SIGN_SHA256, None, &d),
            ErrorCode::INTERNAL,
            "no SKI",
        ),
        (
            req(Op::RESPONSE, Some(&ec.ski), &d),
            ErrorCode::UNEXPECTED_OPCODE,
            "response opcode",
        ),
        (
            req(Op::PONG, None, &d),
            ErrorCode::UNEXPECTED_OPCODE,
            "pong opcode",
        ),
        (
            req(Op::ERROR, None, &d),
            ErrorCode::UNEXPECTED_OPCODE,
            "error opcode",
        ),
        (
            req(Op(0x99), Some(&ec.ski), &d),
            ErrorCode::BAD_OPCODE,
            "unknown opcode",
        ),
        (
            Message {
                payload: Some(&d),
                ski: Some(&ec.ski),
                ..Message::default()
            },
            ErrorCode::BAD_OPCODE,
            "missing opcode",
        ),
        (
            req(Op::SEAL, None, &d),
            ErrorCode::INTERNAL,
            "seal without sealer",
        ),
        (
            req(Op::UNSEAL, None, &d),
            ErrorCode::INTERNAL,
            "unseal without sealer",
        ),
        (
            req(Op::RPC, None, &d),
            ErrorCode::INTERNAL,
            "rpc without handler",
        ),
        (
            req(Op::CUSTOM, None, &d),
            ErrorCode::BAD_OPCODE,
            "custom without function",
        ),
        (
            req(Op::ED25519_SIGN, Some(&ec.ski), &d),
            ErrorCode::CRYPTO,
            "ed25519 op on EC key",
        ),
    ];
    for (m, want, what) in &cases {
        let r = c.call(m).unwrap();
        assert_eq!(r.error_code(), Some(*want), "{what}");
        assert_eq!(r.payload.len(), 1, "{what}: error payload is one byte");
    }
    // The connection survived every error.
    let r = c
        .call(&req(Op::ECDSA_SIGN_SHA256, Some(&ec.ski), &d))
        .unwrap();
    assert_eq!(r.opcode, Op::RESPONSE);
}

#[test]
fn ski_of_wrong_length_is_no_ski() {
    let srv = TestServer::start();
    let mut c = srv.client();
    // Encode by hand: Message can only carry a 20-byte SKI.
    let mut raw = vec![1, 0, 0, 0, 0, 0, 0, 42];
    raw.extend([0x11, 0, 1, Op::ECDSA_SIGN_SHA256.0]);
    raw.extend([0x12, 0, 32]);
    raw.extend([3u8; 32]);
    raw.extend([0x04, 0, 19]);
    raw.extend([9u8; 19]);
    let len = (raw.len() - 8) as u16;
    raw[2..4].copy_from_slice(&len.to_be_bytes());
    c.send_raw(&raw).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.id, r.error_code()), (42, Some(ErrorCode::INTERNAL)));
}

#[test]
fn ping_echoes_payload_and_empty_ping_has_no_payload() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let r = c.call(&req(Op::PING, None, b"hello")).unwrap();
    assert_eq!((r.opcode, r.payload.as_slice()), (Op::PONG, &b"hello"[..]));
    // Raw check of the padded pong with no payload item.
    c.send_raw(&raw_msg(7, &[0x11, 0, 1, 0xF1])).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.id, r.opcode, r.payload.len()), (7, Op::PONG, 0));
}

#[test]
fn version_bytes_are_not_checked_and_stray_bytes_ignored() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let mut m = raw_msg(9, &[0x11, 0, 1, 0xF1, 0x7E, 0, 1, 0xAA, 0xEE, 0xEE]);
    m[0] = 9;
    m[1] = 9;
    c.send_raw(&m).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.id, r.opcode), (9, Op::PONG));
}

pub fn raw_msg(id: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![1, 0];
    m.extend((body.len() as u16).to_be_bytes());
    m.extend(id.to_be_bytes());
    m.extend(body);
    m
}

/// After a framing error the server answers 0x07 with the message's ID and
/// closes; a well-framed request sent before it still gets its answer.
#[test]
fn framing_errors_close_the_connection() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("item overrun", vec![0x11, 0, 1, 0xF1, 0x12, 0, 50, 1, 2]),
        ("duplicate opcode", vec![0x11, 0, 1, 0xF1, 0x11, 0, 1, 0xF1]),
        (
            "duplicate padding",
            vec![0x11, 0, 1, 0xF1, 0x20, 0, 0, 0x20, 0, 0],
        ),
        ("opcode of 2 bytes", vec![0x11, 0, 2, 0xF1, 0xF1]),
        ("opcode of 0 bytes", vec![0x11, 0, 0]),
        (
            "client IP of 5 bytes",
            vec![0x11, 0, 1, 0xF1, 0x03, 0, 5, 1, 2, 3, 4, 5],
        ),
        (
            "server IP of 3 bytes",
            vec![0x11, 0, 1, 0xF1, 0x05, 0, 3, 1, 2, 3],
        ),
        (
            "compliance region of 2 bytes",
            vec![0x11, 0, 1, 0xF1, 0x17, 0, 2, 1, 1],
        ),
    ];
    let srv = TestServer::start();
    for (what, body) in cases {
        let mut c = srv.client();
        let mut bytes = raw_msg(1, &[0x11, 0, 1, 0xF1]);
        bytes.extend(raw_msg(2, &body));
        bytes.extend(raw_msg(3, &[0x11, 0, 1, 0xF1])); // never answered
        c.send_raw(&bytes).unwrap();
        let r1 = c.read_response().unwrap();
        assert_eq!((r1.id, r1.opcode), (1, Op::PONG), "{what}");
        let r2 = c.read_response().unwrap();
        assert_eq!(
            (r2.id, r2.error_code()),
            (2, Some(ErrorCode::FORMAT)),
            "{what}"
        );
        assert!(
            c.read_response().is_err(),
            "{what}: connection must be closed"
        );
    }
    let framing: u64 = srv.registry().sum(|c| c.framing_errors.get());
    assert_eq!(framing, 8);
}

#[test]
fn body_over_the_limit_is_refused_from_the_header() {
    let srv = TestServer::start_with(Opts {
        limits: Limits {
            max_body_len: 2048,
            ..Limits::default()
        },
        ..Opts::default()
    });
    let mut c = srv.client();
    // Header announcing 4096 bytes; only the header is sent.
    c.send_raw(&[1, 0, 0x10, 0x00, 0, 0, 0, 5]).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.id, r.error_code()), (5, Some(ErrorCode::FORMAT)));
    assert!(c.read_response().is_err());
}

#[test]
fn every_well_framed_request_gets_exactly_one_response() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let ec = srv.key(KeyKind::EcdsaP256);
    let d = [5u8; 32];
    let bad_ski = [1u8; 20];
    let msgs: Vec<Message<'_>> = (0..300)
        .map(|i| match i % 5 {
            0 => req(Op::ECDSA_SIGN_SHA256, Some(&ec.ski), &d),
            1 => req(Op::PING, None, &d),
            2 => req(Op::ECDSA_SIGN_SHA256, Some(&bad_ski), &d),
            3 => req(Op(0x77), None, &d),
            _ => req(Op::RPC, None, &d),
        })
        .collect();
    let rs = c.pipeline(&msgs).unwrap();
    assert_eq!(rs.len(), 300);
    for (i, r) in rs.iter().enumerate() {
        let want = match i % 5 {
            0 => None,
            1 => None,
            2 => Some(ErrorCode::KEY_NOT_FOUND),
            3 => Some(ErrorCode::BAD_OPCODE),
            _ => Some(ErrorCode::INTERNAL),
        };
        assert_eq!(r.error_code(), want, "request {i}");
    }
    assert_eq!(srv.registry().total_requests(), 300);
}

/// A message larger than the initial 16 KiB read buffer grows it (up to the
/// limit) and the connection goes on with ordinary messages afterwards.
#[test]
fn large_message_grows_the_read_buffer_and_shrinks_back() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let r = c.call(&req(Op::PING, None, &big)).unwrap();
    assert_eq!((r.opcode, r.payload.len()), (Op::PONG, big.len()));
    assert_eq!(r.payload, big);
    for _ in 0..3 {
        let r = c.call(&req(Op::PING, None, b"small")).unwrap();
        assert_eq!(r.payload, b"small");
    }
    // Largest possible body: 65535 bytes of items.
    let max: Vec<u8> = vec![7u8; 65_535 - 3 - 4];
    let r = c.call(&req(Op::PING, None, &max)).unwrap();
    assert_eq!(r.payload.len(), max.len());
}
