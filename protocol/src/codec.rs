//! Decode and encode whole messages.
//!
//! Decoding borrows: every value in a [`Message`] is a slice of the input, so
//! a request's payload is never copied. Every parsing rule the edge relies on
//! (PROTOCOL.md "Framing" and "Tags") lives in [`Message::decode`] and only
//! there. Encoding appends to a caller-owned `Vec<u8>` (cleared and reused by
//! the caller, so steady state allocates nothing) in the fixed item order
//! opcode, payload, other items by tag, padding.

use crate::frame::Header;
use crate::types::{ErrorCode, Op, Tag};
use crate::{
    CERT_DIGEST_LEN, HEADER_LEN, ITEM_HEADER_LEN, MAX_BODY_LEN, PADDED_LEN, SKI_LEN, VERSION_MAJOR,
    VERSION_MINOR,
};
use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a complete message could not be decoded. Every variant is a framing
/// error: the connection's stream position can no longer be trusted and it
/// must be closed (after an optional `ErrorCode::FORMAT` answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header announces, or fewer than a header.
    Truncated {
        /// Bytes the header says the message has.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// An item's length runs past the end of the body.
    ItemOverrun {
        /// The item's tag.
        tag: Tag,
        /// Its announced length.
        len: usize,
        /// Bytes left in the body after its 3-byte prefix.
        remaining: usize,
    },
    /// A known tag appeared a second time.
    DuplicateTag(Tag),
    /// The opcode item is not exactly one byte.
    BadOpcodeLength(usize),
    /// A client or server IP item is neither 4 nor 16 bytes.
    BadIpLength {
        /// `Tag::CLIENT_IP` or `Tag::SERVER_IP`.
        tag: Tag,
        /// Its length.
        len: usize,
    },
    /// The compliance region item is not exactly one byte.
    BadComplianceRegionLength(usize),
}

impl DecodeError {
    /// The error code a server may answer with before closing.
    pub const fn code(&self) -> ErrorCode {
        ErrorCode::FORMAT
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Truncated { expected, got } => {
                write!(
                    f,
                    "message truncated: header says {expected} bytes, got {got}"
                )
            }
            DecodeError::ItemOverrun {
                tag,
                len,
                remaining,
            } => write!(
                f,
                "item {tag:?} of {len} bytes runs past the body ({remaining} bytes left)"
            ),
            DecodeError::DuplicateTag(t) => write!(f, "duplicate item {t:?}"),
            DecodeError::BadOpcodeLength(n) => write!(f, "opcode item of {n} bytes (must be 1)"),
            DecodeError::BadIpLength { tag, len } => {
                write!(f, "{tag:?} item of {len} bytes (must be 4 or 16)")
            }
            DecodeError::BadComplianceRegionLength(n) => {
                write!(f, "compliance region item of {n} bytes (must be 1)")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// One message, request or response, with every known item. Values borrow
/// from the decoded buffer; for encoding they borrow from the caller.
///
/// Absent items are `None`. Rules applied by `decode`: a SKI that is not 20
/// bytes and a digest that is not 32 bytes decode as `None` (the item is
/// still counted for the duplicate rule); unknown tags and padding are
/// skipped and not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message<'a> {
    /// Message ID.
    pub id: u32,
    /// Version bytes as received (encode always writes 1.0).
    pub version: (u8, u8),
    /// Opcode, if present.
    pub opcode: Option<Op>,
    /// Payload, if present (an empty payload item decodes as `Some(&[])`).
    pub payload: Option<&'a [u8]>,
    /// Legacy certificate digest (32 bytes).
    pub cert_digest: Option<&'a [u8; CERT_DIGEST_LEN]>,
    /// SNI.
    pub sni: Option<&'a [u8]>,
    /// Client IP.
    pub client_ip: Option<IpAddr>,
    /// SKI (20 bytes).
    pub ski: Option<&'a [u8; SKI_LEN]>,
    /// Server IP.
    pub server_ip: Option<IpAddr>,
    /// Certificate ID.
    pub cert_id: Option<&'a [u8]>,
    /// Custom function name.
    pub custom_func_name: Option<&'a [u8]>,
    /// Extra.
    pub extra: Option<&'a [u8]>,
    /// Tracing span context.
    pub span_context: Option<&'a [u8]>,
    /// Request context (JSON).
    pub req_context: Option<&'a [u8]>,
    /// Compliance region.
    pub compliance_region: Option<u8>,
}

/// Bit for each known tag, for the duplicate rule without allocation.
const fn tag_bit(t: Tag) -> Option<u32> {
    let i = match t.0 {
        0x01..=0x06 => t.0 - 0x01,
        0x11..=0x17 => t.0 - 0x11 + 6,
        0x20 => 13,
        _ => return None,
    };
    Some(1 << i)
}

fn ip(tag: Tag, v: &[u8]) -> Result<IpAddr, DecodeError> {
    match v.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        len => Err(DecodeError::BadIpLength { tag, len }),
    }
}

impl<'a> Message<'a> {
    /// Decode one complete message (header + body). `buf` must hold exactly
    /// the message, as [`crate::frame::check`] measured it; extra bytes after
    /// the announced length are not looked at.
    pub fn decode(buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let header = Header::parse(buf).ok_or(DecodeError::Truncated {
            expected: HEADER_LEN,
            got: buf.len(),
        })?;
        let len = header.message_len();
        let body = buf.get(HEADER_LEN..len).ok_or(DecodeError::Truncated {
            expected: len,
            got: buf.len(),
        })?;
        let mut m = Message {
            id: header.id,
            version: (header.major, header.minor),
            ..Message::default()
        };
        let mut seen: u32 = 0;
        let mut rest = body;
        // Fewer than 3 bytes can't be an item: the edge may leave one or two
        // stray bytes after the last item, and they are ignored.
        while rest.len() >= ITEM_HEADER_LEN {
            let tag = Tag(rest[0]);
            let ilen = u16::from_be_bytes([rest[1], rest[2]]) as usize;
            let after = &rest[ITEM_HEADER_LEN..];
            if ilen > after.len() {
                return Err(DecodeError::ItemOverrun {
                    tag,
                    len: ilen,
                    remaining: after.len(),
                });
            }
            let (v, next) = after.split_at(ilen);
            rest = next;
            let Some(bit) = tag_bit(tag) else { continue };
            if seen & bit != 0 {
                return Err(DecodeError::DuplicateTag(tag));
            }
            seen |= bit;
            match tag {
                Tag::CERT_DIGEST => m.cert_digest = v.try_into().ok(),
                Tag::SNI => m.sni = Some(v),
                Tag::CLIENT_IP => m.client_ip = Some(ip(tag, v)?),
                Tag::SKI => m.ski = v.try_into().ok(),
                Tag::SERVER_IP => m.server_ip = Some(ip(tag, v)?),
                Tag::CERT_ID => m.cert_id = Some(v),
                Tag::OPCODE => match v {
                    [op] => m.opcode = Some(Op(*op)),
                    _ => return Err(DecodeError::BadOpcodeLength(v.len())),
                },
                Tag::PAYLOAD => m.payload = Some(v),
                Tag::CUSTOM_FUNC_NAME => m.custom_func_name = Some(v),
                Tag::EXTRA => m.extra = Some(v),
                Tag::SPAN_CONTEXT => m.span_context = Some(v),
                Tag::REQ_CONTEXT => m.req_context = Some(v),
                Tag::COMPLIANCE_REGION => match v {
                    [r] => m.compliance_region = Some(*r),
                    _ => return Err(DecodeError::BadComplianceRegionLength(v.len())),
                },
                // Padding: counted for duplicates, otherwise ignored.
                _ => {}
            }
        }
        Ok(m)
    }

    /// The body length (items only, before padding) this message encodes to.
    pub fn items_len(&self) -> usize {
        let mut n = 0;
        self.for_each_item(|_, v| n += ITEM_HEADER_LEN + v.len());
        n
    }

    /// Append this message, padded, to `out`. Fails only if the items don't
    /// fit a 16-bit body length; then nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let items = self.items_len();
        let body = padded_body_len(items).ok_or(EncodeError::TooLong(items))?;
        out.reserve(HEADER_LEN + body);
        put_header(out, self.id, body);
        self.for_each_item(|t, v| put_item(out, t, v));
        put_padding(out, items);
        Ok(())
    }

    /// Visit items in wire order: opcode, payload, other items by tag.
    fn for_each_item(&self, mut f: impl FnMut(Tag, &[u8])) {
        let mut ipbuf = [0u8; 16];
        if let Some(op) = self.opcode {
            f(Tag::OPCODE, &[op.0]);
        }
        if let Some(p) = self.payload {
            f(Tag::PAYLOAD, p);
        }
        if let Some(d) = self.cert_digest {
            f(Tag::CERT_DIGEST, d);
        }
        if let Some(v) = self.sni {
            f(Tag::SNI, v);
        }
        if let Some(a) = self.client_ip {
            f(Tag::CLIENT_IP, ip_bytes(a, &mut ipbuf));
        }
        if let Some(s) = self.ski {
            f(Tag::SKI, s);
        }
        if let Some(a) = self.server_ip {
            f(Tag::SERVER_IP, ip_bytes(a, &mut ipbuf));
        }
        for (t, v) in [
            (Tag::CERT_ID, self.cert_id),
            (Tag::CUSTOM_FUNC_NAME, self.custom_func_name),
            (Tag::EXTRA, self.extra),
            (Tag::SPAN_CONTEXT, self.span_context),
            (Tag::REQ_CONTEXT, self.req_context),
        ] {
            if let Some(v) = v {
                f(t, v);
            }
        }
        if let Some(r) = self.compliance_region {
            f(Tag::COMPLIANCE_REGION, &[r]);
        }
    }
}

fn ip_bytes(a: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match a {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            *buf = v6.octets();
            &buf[..]
        }
    }
}

/// A message that can't be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// Items total this many bytes, over the 65535-byte body limit.
    TooLong(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong(n) => write!(f, "items of {n} bytes exceed the body limit"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// A response: opcode (`RESPONSE`, `PONG` or `ERROR`), ID and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// Echoed request ID.
    pub id: u32,
    /// Response opcode.
    pub opcode: Op,
    /// Result bytes; omitted on the wire when empty.
    pub payload: &'a [u8],
}

impl<'a> Response<'a> {
    /// A successful result.
    pub const fn ok(id: u32, payload: &'a [u8]) -> Self {
        Response {
            id,
            opcode: Op::RESPONSE,
            payload,
        }
    }

    /// A pong echoing the ping's payload.
    pub const fn pong(id: u32, payload: &'a [u8]) -> Self {
        Response {
            id,
            opcode: Op::PONG,
            payload,
        }
    }

    /// Append this response, padded, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_response(out, self.id, self.opcode, self.payload)
    }
}

/// Append an error response carrying `code`.
#[inline]
pub fn encode_error(out: &mut Vec<u8>, id: u32, code: ErrorCode) {
    // One opcode item and a one-byte payload always fit.
    let _ = encode_response(out, id, Op::ERROR, &[code.0]);
}

/// Append a response: opcode, payload (omitted when empty), padding.
#[inline]
pub fn encode_response(
    out: &mut Vec<u8>,
    id: u32,
    opcode: Op,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let items = ITEM_HEADER_LEN
        + 1
        + if payload.is_empty() {
            0
        } else {
            ITEM_HEADER_LEN + payload.len()
        };
    let body = padded_body_len(items).ok_or(EncodeError::TooLong(items))?;
    out.reserve(HEADER_LEN + body);
    put_header(out, id, body);
    put_item(out, Tag::OPCODE, &[opcode.0]);
    if !payload.is_empty() {
        put_item(out, Tag::PAYLOAD, payload);
    }
    put_padding(out, items);
    Ok(())
}

/// Body length once padding is added, or `None` if the items alone overflow.
///
/// The rule (PROTOCOL.md "Responses and padding"): when header + items is
/// under 1024 bytes, a padding item of `max(0, 1024 - (8 + items + 3))` zero
/// bytes follows. So items of 1014 or 1015 bytes get an empty padding item
/// (the message ends up 1025 or 1026 bytes) and items of 1016 or more get none.
#[inline]
pub const fn padded_body_len(items: usize) -> Option<usize> {
    let body = items + padding_item_len(items);
    if body > MAX_BODY_LEN {
        None
    } else {
        Some(body)
    }
}

/// Bytes the padding item adds (its 3-byte prefix included), 0 for none.
#[inline]
const fn padding_item_len(items: usize) -> usize {
    if HEADER_LEN + items < PADDED_LEN {
        ITEM_HEADER_LEN + PADDED_LEN.saturating_sub(HEADER_LEN + items + ITEM_HEADER_LEN)
    } else {
        0
    }
}

#[inline]
fn put_header(out: &mut Vec<u8>, id: u32, body: usize) {
    debug_assert!(body <= MAX_BODY_LEN);
    out.extend_from_slice(&[VERSION_MAJOR, VERSION_MINOR]);
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
}

#[inline]
fn put_item(out: &mut Vec<u8>, tag: Tag, v: &[u8]) {
    debug_assert!(v.len() <= MAX_BODY_LEN);
    out.push(tag.0);
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

#[inline]
fn put_padding(out: &mut Vec<u8>, items: usize) {
    let n = padding_item_len(items);
    if n > 0 {
        let zeros = n - ITEM_HEADER_LEN;
        out.push(Tag::PADDING.0);
        out.extend_from_slice(&(zeros as u16).to_be_bytes());
        out.resize(out.len() + zeros, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hexbytes(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn protocol_md_ping_example() {
        let mut out = Vec::new();
        encode_response(&mut out, 7, Op::PONG, &[]).unwrap();
        // The PROTOCOL.md example shows the layout for a ping message; a pong
        // with no payload has the same shape.
        assert_eq!(out.len(), 1024);
        assert_eq!(
            &out[..15],
            &hexbytes("01 00 03f8 00000007 11 0001 f2 20 03f1")[..]
        );
        assert!(out[15..].iter().all(|&b| b == 0));
    }

    #[test]
    fn protocol_md_error_example() {
        let mut out = Vec::new();
        encode_error(&mut out, 7, ErrorCode::KEY_NOT_FOUND);
        assert_eq!(out.len(), 1024);
        assert_eq!(
            &out[..19],
            &hexbytes("01 00 03f8 00000007 11 0001 ff 12 0001 02 20 03ed")[..]
        );
    }

    #[test]
    fn padding_edge_cases() {
        assert_eq!(padded_body_len(1013), Some(1016)); // 1024 total, empty pad item
        assert_eq!(padded_body_len(1014), Some(1017)); // 1025 total
        assert_eq!(padded_body_len(1015), Some(1018)); // 1026 total
        assert_eq!(padded_body_len(1016), Some(1016)); // no padding
        assert_eq!(padded_body_len(4), Some(1016));
        assert_eq!(padded_body_len(65535), Some(65535));
        assert_eq!(padded_body_len(65536), None);
    }

    #[test]
    fn decode_rules() {
        // opcode, 19-byte SKI (=> no SKI), 31-byte digest (=> none), unknown tag, 2 stray bytes
        let mut body = vec![0x11, 0, 1, 0x15];
        body.extend([0x04, 0, 19]);
        body.extend([0xAB; 19]);
        body.extend([0x01, 0, 31]);
        body.extend([0xCD; 31]);
        body.extend([0x7E, 0, 2, 1, 2]);
        body.extend([0xEE, 0xEE]);
        let mut msg = vec![9, 9];
        msg.extend((body.len() as u16).to_be_bytes());
        msg.extend(5u32.to_be_bytes());
        msg.extend(&body);
        let m = Message::decode(&msg).unwrap();
        assert_eq!(m.opcode, Some(Op::ECDSA_SIGN_SHA256));
        assert_eq!(m.ski, None);
        assert_eq!(m.cert_digest, None);
        assert_eq!(m.version, (9, 9));
        assert_eq!(m.id, 5);
    }
}
