//! Framing: is a whole message in the buffer yet?
//!
//! Two-step framing (as mini-redis does it): first decide from the 8-byte
//! header alone whether a complete message is buffered, and reject one whose
//! body is over the configured limit before a single body byte is buffered;
//! only then decode. This module owns the header layout and nothing else.

use crate::{HEADER_LEN, MAX_BODY_LEN};
use core::fmt;

/// The fixed 8-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Major version; written as 1, never checked on input.
    pub major: u8,
    /// Minor version; written as 0, never checked on input.
    pub minor: u8,
    /// Body length in bytes.
    pub body_len: u16,
    /// Message ID, echoed by the response.
    pub id: u32,
}

impl Header {
    /// Parse the header from the first 8 bytes. `None` if fewer are given.
    #[inline]
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            major: h[0],
            minor: h[1],
            body_len: u16::from_be_bytes([h[2], h[3]]),
            id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        })
    }

    /// Whole message length (header + body).
    #[inline]
    pub const fn message_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// What the buffered bytes amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// At least this many more bytes are needed before anything can be said
    /// (or before the message is complete).
    NeedMore(usize),
    /// A complete message occupies the first `len` bytes.
    Complete {
        /// Its header.
        header: Header,
        /// Whole message length, header included.
        len: usize,
    },
}

/// A header that can't be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces a body longer than this server accepts.
    BodyTooLong {
        /// What the header announced.
        announced: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BodyTooLong { announced, limit } => {
                write!(f, "body of {announced} bytes exceeds the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Look at the start of `buf` and say whether a complete message is there.
///
/// `max_body_len` is the largest body this reader accepts (at most
/// [`MAX_BODY_LEN`]); a header announcing more is an error at once, so a
/// hostile peer can't make the reader buffer a body it will refuse anyway.
#[inline]
pub fn check(buf: &[u8], max_body_len: usize) -> Result<FrameStatus, FrameError> {
    debug_assert!(max_body_len <= MAX_BODY_LEN);
    let Some(header) = Header::parse(buf) else {
        return Ok(FrameStatus::NeedMore(HEADER_LEN - buf.len()));
    };
    let body = header.body_len as usize;
    if body > max_body_len {
        return Err(FrameError::BodyTooLong {
            announced: body,
            limit: max_body_len,
        });
    }
    let len = header.message_len();
    if buf.len() < len {
        Ok(FrameStatus::NeedMore(len - buf.len()))
    } else {
        Ok(FrameStatus::Complete { header, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_header_first() {
        assert_eq!(check(&[], 100), Ok(FrameStatus::NeedMore(8)));
        assert_eq!(check(&[1, 0, 0], 100), Ok(FrameStatus::NeedMore(5)));
    }

    #[test]
    fn rejects_long_body_from_header_alone() {
        let hdr = [1, 0, 0x01, 0x00, 0, 0, 0, 1]; // 256-byte body
        assert_eq!(
            check(&hdr, 255),
            Err(FrameError::BodyTooLong {
                announced: 256,
                limit: 255
            })
        );
        assert_eq!(check(&hdr, 256), Ok(FrameStatus::NeedMore(256)));
    }

    #[test]
    fn complete_when_body_buffered_and_ignores_version() {
        let mut m = vec![9, 9, 0, 2, 0, 0, 0, 7, 0xaa, 0xbb, 0xcc];
        match check(&m, 100).unwrap() {
            FrameStatus::Complete { header, len } => {
                assert_eq!(len, 10);
                assert_eq!(header.id, 7);
                assert_eq!((header.major, header.minor), (9, 9));
            }
            s => panic!("{s:?}"),
        }
        m.truncate(9);
        assert_eq!(check(&m, 100), Ok(FrameStatus::NeedMore(1)));
    }
}
