//! # keycore-protocol
//!
//! The Keyless wire protocol (version 1) exactly as the deployed edge speaks it
//! (`shared/PROTOCOL.md`): framing, items, typed decode and encode. Computing a
//! key's identifiers (SKI, legacy digest) needs a hash and lives in
//! `keycore-keys`; this crate depends on nothing.
//!
//! What this crate is **not**: it does no I/O, reads no clock, spawns nothing and
//! knows nothing of TLS or reactors. That keeps it deterministic and testable
//! byte for byte, and lets the server, the load generator and the fuzzer share
//! one codec. It is a separate crate so that those three can depend on it
//! without pulling in glommio or rustls.
//!
//! Shape of use:
//! 1. [`frame::check`] tells "need more bytes" from "one complete message of N
//!    bytes" from "malformed" by looking at the 8-byte header alone.
//! 2. [`Message::decode`] parses one complete message, borrowing every value
//!    from the input (no payload copy).
//! 3. [`Message::encode`] / [`encode_response`] append one padded message to a
//!    caller-owned `Vec<u8>` that the caller clears and reuses.
//!
//! Public surface: modules [`record`] (the traffic-recording file format),
//! [`codec`] ([`Message`], [`encode_response`] and
//! the other encoders), [`frame`] ([`FrameStatus`], [`Header`],
//! [`FrameError`]) and [`types`] ([`Op`], [`OpClass`], [`enum@Hash`],
//! [`ErrorCode`], [`Tag`]); the size constants (`HEADER_LEN`,
//! `MAX_BODY_LEN`, `MAX_MESSAGE_LEN`, `PADDED_LEN`, `ITEM_HEADER_LEN`,
//! `SKI_LEN`, `CERT_DIGEST_LEN`), [`Ski`] and the version bytes.
#![forbid(unsafe_code)]

pub mod codec;
pub mod frame;
pub mod record;
pub mod types;

pub use codec::{
    encode_error, encode_response, padded_body_len, DecodeError, EncodeError, Message, Response,
};
pub use frame::{FrameError, FrameStatus, Header};
pub use types::{ErrorCode, Hash, Op, OpClass, Tag};

/// Length of the fixed message header: version (2), body length (2), ID (4).
pub const HEADER_LEN: usize = 8;

/// Largest body the header can describe (the length field is 16 bits).
pub const MAX_BODY_LEN: usize = u16::MAX as usize;

/// Largest whole message: header plus the largest body.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

/// Messages shorter than this are padded up to it with a padding item, as the
/// reference server and the edge do (hides operation and key size on the wire).
pub const PADDED_LEN: usize = 1024;

/// Size of an item's tag + length prefix.
pub const ITEM_HEADER_LEN: usize = 3;

/// Length of a SKI value (SHA-1).
pub const SKI_LEN: usize = 20;

/// A subject key identifier as carried on the wire (tag 0x04).
pub type Ski = [u8; SKI_LEN];

/// Length of the legacy certificate digest value (SHA-256).
pub const CERT_DIGEST_LEN: usize = 32;

/// Version written on every message we encode.
pub const VERSION_MAJOR: u8 = 1;
/// Minor version written on every message we encode.
pub const VERSION_MINOR: u8 = 0;

const _: () = assert!(PADDED_LEN > HEADER_LEN + ITEM_HEADER_LEN);
const _: () = assert!(PADDED_LEN <= MAX_MESSAGE_LEN);
const _: () = assert!(HEADER_LEN + 4 * ITEM_HEADER_LEN + 1 + 1 < PADDED_LEN);
