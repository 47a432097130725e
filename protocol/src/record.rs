//! The traffic-recording file format (issue 17, `record_file`): what
//! `keycore serve` writes and `keycore loadgen --replay` reads, byte for
//! byte (docs/record-format.md is the prose version).
//!
//! A file is a [`FileHeader`] ([`HEADER_LEN`] bytes: magic, version, the
//! header's and a record's length, the recording's wall-clock origin, the
//! file's sequence number) followed by fixed-size records ([`RECORD_LEN`]
//! bytes each, little-endian): arrival time in nanoseconds since the
//! origin, connection id (unique per core), core, opcode, flags and the
//! key's SKI. Nothing else: no payload, digest, SNI, client address or
//! identity ever enters a record.
//!
//! Owns: the layout, [`push_record`] (one record appended to a buffer, no
//! allocation beyond the buffer's growth) and [`parse`] (a whole file,
//! refused with a [`RecordError`] naming what is wrong: not a recording,
//! another version, a truncated record). Must not: do I/O or read a clock
//! (callers pass bytes and times).

use crate::{Ski, SKI_LEN};

/// First bytes of every recording file.
pub const MAGIC: [u8; 8] = *b"KCRECORD";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 32;
/// Bytes of one record.
pub const RECORD_LEN: usize = 36;
/// Record flag: the request carried a SKI (else the SKI bytes are zero:
/// a ping, or a request naming its key by the legacy digest only, which is
/// never recorded).
pub const FLAG_SKI: u8 = 1;

/// A file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Wall-clock time of the recording's origin (record time 0), ns since
    /// the Unix epoch. Every file of one recording has the same origin, so
    /// rotated files merge by record time.
    pub origin_unix_ns: u64,
    /// This file's number within the recording (0 = first written).
    pub seq: u32,
}

/// One recorded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// When the request was read, ns since the recording's origin
    /// (monotonic clock).
    pub t_ns: u64,
    /// Connection id, unique within its core for the recording's life.
    pub conn: u32,
    /// The server core (reactor) that read it.
    pub core: u16,
    /// The opcode byte as received (0 when the request had none).
    pub op: u8,
    /// The key's SKI, when the request carried one.
    pub ski: Option<Ski>,
}

/// Why a file is not a readable recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than a header.
    TooShort(usize),
    /// The magic bytes do not match.
    NotARecording,
    /// A version this code does not read.
    Version(u16),
    /// Header or record length differ from this version's.
    Lengths {
        /// Header length in the file.
        header: u16,
        /// Record length in the file.
        record: u16,
    },
    /// The file ends inside a record.
    Truncated {
        /// Whole records before the cut.
        records: usize,
        /// Bytes of the partial record.
        extra: usize,
    },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::TooShort(n) => write!(
                f,
                "not a keycore recording: {n} bytes, shorter than the {HEADER_LEN}-byte header"
            ),
            RecordError::NotARecording => {
                write!(f, "not a keycore recording (the file does not start with KCRECORD)")
            }
            RecordError::Version(v) => write!(
                f,
                "recording format version {v}; this keycore reads version {VERSION}"
            ),
            RecordError::Lengths { header, record } => write!(
                f,
                "recording header says {header}-byte header / {record}-byte records; version {VERSION} has {HEADER_LEN} / {RECORD_LEN}"
            ),
            RecordError::Truncated { records, extra } => write!(
                f,
                "recording truncated: {records} whole records, then {extra} bytes of a cut record (the writer stopped mid-write)"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

/// Append a file header.
pub fn push_header(out: &mut Vec<u8>, h: &FileHeader) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    out.extend_from_slice(&(RECORD_LEN as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&h.origin_unix_ns.to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Append one record.
#[inline]
pub fn push_record(out: &mut Vec<u8>, t_ns: u64, conn: u32, core: u16, op: u8, ski: Option<&Ski>) {
    let mut r = [0u8; RECORD_LEN];
    r[0..8].copy_from_slice(&t_ns.to_le_bytes());
    r[8..12].copy_from_slice(&conn.to_le_bytes());
    r[12..14].copy_from_slice(&core.to_le_bytes());
    r[14] = op;
    if let Some(s) = ski {
        r[15] = FLAG_SKI;
        r[16..16 + SKI_LEN].copy_from_slice(s);
    }
    out.extend_from_slice(&r);
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parse a whole file: its header and every record, in file order.
pub fn parse(b: &[u8]) -> Result<(FileHeader, Vec<Record>), RecordError> {
    if b.len() < HEADER_LEN {
        return Err(if b.len() >= 8 && b[..8] != MAGIC {
            RecordError::NotARecording
        } else {
            RecordError::TooShort(b.len())
        });
    }
    if b[..8] != MAGIC {
        return Err(RecordError::NotARecording);
    }
    let version = u16_at(b, 8);
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let (header, record) = (u16_at(b, 10), u16_at(b, 12));
    if header as usize != HEADER_LEN || record as usize != RECORD_LEN {
        return Err(RecordError::Lengths { header, record });
    }
    let h = FileHeader {
        origin_unix_ns: u64_at(b, 16),
        seq: u32_at(b, 24),
    };
    let body = &b[HEADER_LEN..];
    let (records, extra) = (body.len() / RECORD_LEN, body.len() % RECORD_LEN);
    if extra != 0 {
        return Err(RecordError::Truncated { records, extra });
    }
    let out = body
        .chunks_exact(RECORD_LEN)
        .map(|r| {
            let mut ski = [0u8; SKI_LEN];
            ski.copy_from_slice(&r[16..16 + SKI_LEN]);
            Record {
                t_ns: u64_at(r, 0),
                conn: u32_at(r, 8),
                core: u16_at(r, 12),
                op: r[14],
                ski: (r[15] & FLAG_SKI != 0).then_some(ski),
            }
        })
        .collect();
    Ok((h, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[Record]) -> Vec<u8> {
        let mut b = Vec::new();
        push_header(
            &mut b,
            &FileHeader {
                origin_unix_ns: 1_764_000_000_123_456_789,
                seq: 7,
            },
        );
        for r in records {
            push_record(&mut b, r.t_ns, r.conn, r.core, r.op, r.ski.as_ref());
        }
        b
    }

    fn sample() -> Vec<Record> {
        vec![
            Record {
                t_ns: 0,
                conn: 1,
                core: 0,
                op: 0xF1,
                ski: None,
            },
            Record {
                t_ns: 1_500_000,
                conn: 0xDEAD_BEEF,
                core: 513,
                op: 0x15,
                ski: Some([0xAB; 20]),
            },
            Record {
                t_ns: u64::MAX,
                conn: 2,
                core: 1,
                op: 0x35,
                ski: Some(core::array::from_fn(|i| i as u8)),
            },
        ]
    }

    #[test]
    fn records_round_trip_with_the_header() {
        let recs = sample();
        let b = file(&recs);
        assert_eq!(b.len(), HEADER_LEN + 3 * RECORD_LEN);
        let (h, back) = parse(&b).unwrap();
        assert_eq!(h.origin_unix_ns, 1_764_000_000_123_456_789);
        assert_eq!(h.seq, 7);
        assert_eq!(back, recs);
        // A header alone is an empty recording, not an error.
        let (_, none) = parse(&file(&[])).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn bad_headers_and_truncated_files_are_refused_with_a_reason() {
        let good = file(&sample());
        assert_eq!(parse(&good[..10]), Err(RecordError::TooShort(10)));
        let mut other = good.clone();
        other[0] = b'X';
        assert_eq!(parse(&other), Err(RecordError::NotARecording));
        assert_eq!(
            parse(b"{\"json\": \"not a recording at all\"}"),
            Err(RecordError::NotARecording)
        );
        let mut v2 = good.clone();
        v2[8] = 2;
        let e = parse(&v2).unwrap_err();
        assert_eq!(e, RecordError::Version(2));
        assert!(e.to_string().contains("version 2"), "{e}");
        let mut lens = good.clone();
        lens[12] = 40;
        assert!(matches!(
            parse(&lens),
            Err(RecordError::Lengths { record: 40, .. })
        ));
        let cut = &good[..good.len() - 5];
        let e = parse(cut).unwrap_err();
        assert_eq!(
            e,
            RecordError::Truncated {
                records: 2,
                extra: RECORD_LEN - 5
            }
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
