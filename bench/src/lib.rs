//! # keycore-bench
//!
//! Benchmarks, not a library anyone ships: criterion benches for pure
//! functions (`benches/codec.rs`: the wire codec) and the shared fixtures they
//! use. It is a separate crate so that benchmark-only dependencies (criterion)
//! never reach the server's dependency tree.
//!
//! The fixtures here are the messages the edge sends most: an ECDSA P-256
//! SHA-256 sign request, padded to 1024 bytes, and its response.
//!
//! Public surface: [`DIGEST_SHA256`], [`SKI`], [`SNI`],
//! [`ecdsa_p256_signature_der`], [`ecdsa_p256_request`].

use keycore_protocol::{Message, Op};
use std::net::{IpAddr, Ipv4Addr};

/// SHA-256 digest the request carries (SHA-256 of "abc").
pub const DIGEST_SHA256: [u8; 32] = [
    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
];

/// SKI the request names.
pub const SKI: [u8; 20] = [
    0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50, 0xc2, 0x6c,
    0x9c, 0xd0, 0xd8, 0x9d,
];

/// SNI the request carries.
pub const SNI: &[u8] = b"www.example.com";

/// A typical ECDSA P-256 signature: DER `SEQUENCE { r, s }` with both
/// integers 33 bytes (a leading 0x00 because the top bit is set), 72 bytes.
pub fn ecdsa_p256_signature_der() -> [u8; 72] {
    let mut sig = [0u8; 72];
    sig[..4].copy_from_slice(&[0x30, 0x46, 0x02, 0x21]);
    sig[4] = 0x00;
    for (i, b) in sig[5..37].iter_mut().enumerate() {
        *b = 0x80 | i as u8;
    }
    sig[37..40].copy_from_slice(&[0x02, 0x21, 0x00]);
    for (i, b) in sig[40..72].iter_mut().enumerate() {
        *b = 0x90 ^ i as u8;
    }
    sig
}

/// The request as the edge sends it: opcode, digest, SNI, client IP, SKI,
/// server IP (encoded with padding to 1024 bytes).
pub fn ecdsa_p256_request(id: u32) -> Message<'static> {
    Message {
        id,
        version: (1, 0),
        opcode: Some(Op::ECDSA_SIGN_SHA256),
        payload: Some(&DIGEST_SHA256),
        sni: Some(SNI),
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        ski: Some(&SKI),
        server_ip: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
        ..Message::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_protocol::{encode_response, PADDED_LEN};

    #[test]
    fn fixtures_encode_to_padded_messages_that_decode_back() {
        let mut out = Vec::new();
        let req = ecdsa_p256_request(7);
        req.encode(&mut out).unwrap();
        assert_eq!(out.len(), PADDED_LEN);
        assert_eq!(Message::decode(&out).unwrap(), req);

        let sig = ecdsa_p256_signature_der();
        out.clear();
        encode_response(&mut out, 7, Op::RESPONSE, &sig).unwrap();
        assert_eq!(out.len(), PADDED_LEN);
        assert_eq!(Message::decode(&out).unwrap().payload, Some(&sig[..]));
        // The DER lengths are consistent: SEQUENCE of two 33-byte INTEGERs.
        assert_eq!(sig[1] as usize, sig.len() - 2);
        assert_eq!((sig[3], sig[38]), (33, 33));
    }
}
