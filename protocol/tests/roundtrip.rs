//! Property tests for the codec: round trips, the shape of everything the
//! encoder writes, and "no input makes the decoder panic".
//!
//! The golden vectors (`golden.rs`) pin exact bytes for chosen shapes; these
//! properties cover the space between them: any mix of items, any IDs and
//! opcodes, payloads from empty to past the padding boundary, IPv4 and IPv6.

use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{
    encode_error, encode_response, padded_body_len, EncodeError, ErrorCode, Message, Op, Response,
    HEADER_LEN, MAX_BODY_LEN, PADDED_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::IpAddr;

/// A message's items, owned, so a `Message` can borrow from it.
#[derive(Clone, Debug)]
struct Owned {
    id: u32,
    opcode: Option<u8>,
    payload: Option<Vec<u8>>,
    cert_digest: Option<[u8; 32]>,
    sni: Option<Vec<u8>>,
    client_ip: Option<IpAddr>,
    ski: Option<[u8; 20]>,
    server_ip: Option<IpAddr>,
    cert_id: Option<Vec<u8>>,
    custom_func_name: Option<Vec<u8>>,
    extra: Option<Vec<u8>>,
    span_context: Option<Vec<u8>>,
    req_context: Option<Vec<u8>>,
    compliance_region: Option<u8>,
}

impl Owned {
    fn message(&self) -> Message<'_> {
        Message {
            id: self.id,
            version: (1, 0),
            opcode: self.opcode.map(Op),
            payload: self.payload.as_deref(),
            cert_digest: self.cert_digest.as_ref(),
            sni: self.sni.as_deref(),
            client_ip: self.client_ip,
            ski: self.ski.as_ref(),
            server_ip: self.server_ip,
            cert_id: self.cert_id.as_deref(),
            custom_func_name: self.custom_func_name.as_deref(),
            extra: self.extra.as_deref(),
            span_context: self.span_context.as_deref(),
            req_context: self.req_context.as_deref(),
            compliance_region: self.compliance_region,
        }
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// Short optional byte strings (SNI, cert ID, ...): empty values included.
fn small() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(vec(any::<u8>(), 0..80))
}

fn opcode() -> impl Strategy<Value = u8> {
    // Mostly defined opcodes, sometimes any byte.
    prop_oneof![
        3 => proptest::sample::select(Op::ALL.map(|o| o.0).to_vec()),
        1 => any::<u8>(),
    ]
}

fn owned() -> impl Strategy<Value = Owned> {
    let a = (
        any::<u32>(),
        proptest::option::of(opcode()),
        // 0..2000 crosses the 1013..1016 padding boundary and goes past 1024.
        proptest::option::of(vec(any::<u8>(), 0..2000)),
        proptest::option::of(any::<[u8; 32]>()),
        small(),
        proptest::option::of(ip()),
        proptest::option::of(any::<[u8; 20]>()),
    );
    let b = (
        proptest::option::of(ip()),
        small(),
        small(),
        small(),
        small(),
        small(),
        proptest::option::of(any::<u8>()),
    );
    (a, b).prop_map(
        |(
            (id, opcode, payload, cert_digest, sni, client_ip, ski),
            (server_ip, cert_id, custom_func_name, extra, span_context, req_context, region),
        )| Owned {
            id,
            opcode,
            payload,
            cert_digest,
            sni,
            client_ip,
            ski,
            server_ip,
            cert_id,
            custom_func_name,
            extra,
            span_context,
            req_context,
            compliance_region: region,
        },
    )
}

/// Check the shape every encoded message must have.
fn assert_well_formed(out: &[u8], items: usize) {
    assert!(
        out.len() >= PADDED_LEN,
        "{} bytes < {PADDED_LEN}",
        out.len()
    );
    let body = u16::from_be_bytes([out[2], out[3]]) as usize;
    assert_eq!(HEADER_LEN + body, out.len(), "header length != body length");
    assert_eq!(&out[..2], &[1, 0], "version");
    assert_eq!(padded_body_len(items), Some(body));
    // The padding rule, spelled out independently of `padded_body_len`.
    let want_len = match HEADER_LEN + items {
        n if n + 3 <= PADDED_LEN => PADDED_LEN,
        n if n < PADDED_LEN => n + 3, // 1014 / 1015: an empty padding item
        n => n,
    };
    assert_eq!(out.len(), want_len, "items {items}");
    assert_eq!(
        frame::check(out, MAX_BODY_LEN),
        Ok(FrameStatus::Complete {
            header: keycore_protocol::Header::parse(out).unwrap(),
            len: out.len()
        })
    );
}

proptest! {
    #[test]
    fn request_round_trips(o in owned()) {
        let m = o.message();
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        assert_well_formed(&out, m.items_len());
        prop_assert_eq!(Message::decode(&out).unwrap(), m);

        // Encoding into a reused buffer appends exactly the same bytes.
        let mut reused = b"previous message".to_vec();
        m.encode(&mut reused).unwrap();
        prop_assert_eq!(&reused[16..], &out[..]);
    }

    #[test]
    fn response_round_trips(
        id in any::<u32>(),
        op in prop_oneof![Just(Op::RESPONSE), Just(Op::PONG), Just(Op::ERROR), any::<u8>().prop_map(Op)],
        payload in vec(any::<u8>(), 0..2000),
    ) {
        let mut out = Vec::new();
        encode_response(&mut out, id, op, &payload).unwrap();
        let items = 4 + if payload.is_empty() { 0 } else { 3 + payload.len() };
        assert_well_formed(&out, items);
        let m = Message::decode(&out).unwrap();
        let want = Message {
            id,
            version: (1, 0),
            opcode: Some(op),
            // An empty payload is omitted on the wire.
            payload: (!payload.is_empty()).then_some(&payload[..]),
            ..Message::default()
        };
        prop_assert_eq!(m, want);
        // The general encoder writes the same bytes for the same items.
        let mut again = Vec::new();
        want.encode(&mut again).unwrap();
        prop_assert_eq!(&again, &out);
        if op == Op::RESPONSE {
            let mut r = Vec::new();
            Response::ok(id, &payload).encode(&mut r).unwrap();
            prop_assert_eq!(&r, &out);
        }
        if op == Op::PONG {
            let mut r = Vec::new();
            Response::pong(id, &payload).encode(&mut r).unwrap();
            prop_assert_eq!(&r, &out);
        }
    }

    #[test]
    fn error_responses_round_trip(id in any::<u32>(), code in any::<u8>()) {
        let mut out = Vec::new();
        encode_error(&mut out, id, ErrorCode(code));
        assert_well_formed(&out, 8);
        let m = Message::decode(&out).unwrap();
        prop_assert_eq!(m.opcode, Some(Op::ERROR));
        prop_assert_eq!(m.payload, Some(&[code][..]));
        prop_assert_eq!(m.id, id);
    }

    /// Any bytes: neither frame::check nor decode panics, and whatever decodes
    /// re-encodes to something that decodes to the same items.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..3000), limit in 0..=MAX_BODY_LEN) {
        check_any(&bytes, limit);
    }

    /// Structured garbage reaches deeper than random bytes: a correct header
    /// over a soup of items with known and unknown tags and random lengths
    /// (sometimes lying), plus 0..3 stray bytes.
    #[test]
    fn item_soup_never_panics(
        version in any::<(u8, u8)>(),
        id in any::<u32>(),
        items in vec(
            (
                prop_oneof![
                    4 => proptest::sample::select(vec![0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x20]),
                    1 => any::<u8>(),
                ],
                vec(any::<u8>(), 0..40),
                prop_oneof![8 => Just(None), 1 => any::<u16>().prop_map(Some)],
            ),
            0..12,
        ),
        stray in vec(any::<u8>(), 0..3),
    ) {
        let mut body = Vec::new();
        for (tag, v, lie) in &items {
            body.push(*tag);
            body.extend_from_slice(&lie.unwrap_or(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
        }
        body.extend_from_slice(&stray);
        let mut msg = vec![version.0, version.1];
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&body);
        check_any(&msg, MAX_BODY_LEN);
    }
}

fn check_any(bytes: &[u8], limit: usize) {
    let whole = match frame::check(bytes, limit) {
        Ok(FrameStatus::Complete { len, header }) => {
            assert!(len <= bytes.len() && len == header.message_len());
            Some(&bytes[..len])
        }
        Ok(FrameStatus::NeedMore(n)) => {
            assert!(n > 0);
            None
        }
        Err(_) => None,
    };
    // decode must cope with anything, framed or not.
    let _ = Message::decode(bytes);
    if let Some(whole) = whole {
        if let Ok(m) = Message::decode(whole) {
            let mut out = Vec::new();
            match m.encode(&mut out) {
                Ok(()) => assert_eq!(
                    Message::decode(&out).unwrap(),
                    Message {
                        version: (1, 0),
                        ..m
                    }
                ),
                // Items that filled a 65535-byte body can't take padding;
                // never the case under 1016 bytes.
                Err(EncodeError::TooLong(n)) => assert!(n > MAX_BODY_LEN),
            }
        }
    }
}

#[test]
fn too_long_to_encode_appends_nothing() {
    let payload = vec![0u8; MAX_BODY_LEN];
    let m = Message {
        opcode: Some(Op::RSA_DECRYPT),
        payload: Some(&payload),
        ..Message::default()
    };
    let mut out = b"kept".to_vec();
    assert_eq!(
        m.encode(&mut out),
        Err(EncodeError::TooLong(MAX_BODY_LEN + 7))
    );
    assert_eq!(
        encode_response(&mut out, 1, Op::RESPONSE, &payload),
        Err(EncodeError::TooLong(MAX_BODY_LEN + 7))
    );
    assert_eq!(out, b"kept");
}

#[test]
fn largest_body_encodes_and_decodes() {
    // opcode (4) + payload prefix (3) + payload = 65535 exactly.
    let payload = vec![0x5au8; MAX_BODY_LEN - 7];
    let mut out = Vec::new();
    encode_response(&mut out, 9, Op::RESPONSE, &payload).unwrap();
    assert_eq!(out.len(), HEADER_LEN + MAX_BODY_LEN);
    let m = Message::decode(&out).unwrap();
    assert_eq!(m.payload, Some(&payload[..]));
}

#[test]
fn every_payload_length_across_the_padding_edge() {
    // Random lengths rarely land on items of exactly 1013..=1016 bytes; walk
    // every payload length from empty to well past 1024 instead.
    let payload = vec![0xabu8; 1300];
    let mut out = Vec::new();
    for n in 0..=payload.len() {
        let m = Message {
            id: n as u32,
            opcode: Some(Op::ECDSA_SIGN_SHA256),
            payload: Some(&payload[..n]),
            version: (1, 0),
            ..Message::default()
        };
        out.clear();
        m.encode(&mut out).unwrap();
        assert_well_formed(&out, 4 + 3 + n);
        assert_eq!(Message::decode(&out).unwrap(), m, "payload of {n} bytes");
    }
}
