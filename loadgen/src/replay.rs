//! Replay of recorded traffic (issue 17, `keycore loadgen --replay`): turns
//! the files `keycore serve` wrote with `record_file` into an open-loop
//! arrival list for [`crate::runner`]: the same opcodes at the same
//! (optionally scaled) times, each key named by its recorded SKI mapped
//! onto the target's keys, each recorded connection onto one client
//! connection.
//!
//! Owns: reading recordings (the format is `keycore_protocol::record`),
//! merging several files (rotated files of one recording, or recordings of
//! several servers) on the wall clock, the opcode → [`OpKind`] and SKI →
//! key mapping with its refusals, and the connection mapping. Must not:
//! send anything (the runner does) or guess a key: a recorded SKI the
//! target's keys do not have is refused by name unless `--replay-map`
//! says which key stands in for it.

use crate::check::OpKind;
use crate::keys::PublicKeyInfo;
use keycore_protocol::record::{parse, RecordError, RECORD_LEN};
use keycore_protocol::Ski;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Most records replayed in one run (36 bytes each on disk, ~40 in memory:
/// about 2 GB at the limit; a week of a busy server is not one run).
pub const MAX_RECORDS: usize = 50_000_000;

/// Most client connections a replay opens when `--connections` is not
/// given (one per recorded connection up to this).
pub const MAX_CONNECTIONS: usize = 256;

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Recording files (any order).
    pub files: Vec<PathBuf>,
    /// Rate multiplier: inter-arrival gaps are divided by it. Default 1.
    pub scale: f64,
    /// Recorded SKI → target SKI.
    pub map: HashMap<Ski, Ski>,
    /// Skip (and count) requests the generator cannot send instead of
    /// refusing the recording.
    pub skip_unsupported: bool,
    /// Client connections; default one per recorded connection (at most
    /// [`MAX_CONNECTIONS`]).
    pub connections: Option<usize>,
}

/// Why a recording cannot be replayed. The key variants carry what the
/// recording asked for, so the message can name every missing key.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A `--replay-map` entry without `=`.
    #[error("--replay-map {entry:?}: want OLD_SKI=NEW_SKI (hex)")]
    MapEntry {
        /// The entry as given.
        entry: String,
    },
    /// A SKI that is not 40 hex digits (colons aside).
    #[error("SKI {ski:?}: want 40 hex digits")]
    SkiLength {
        /// The SKI as given.
        ski: String,
    },
    /// A SKI with a non-hex digit pair.
    #[error("SKI {ski:?}: not hex")]
    SkiNotHex {
        /// The SKI as given.
        ski: String,
        /// The digit pair's parse error.
        #[source]
        source: std::num::ParseIntError,
    },
    /// `--replay` without files.
    #[error("--replay needs at least one file")]
    NoFiles,
    /// A recording file could not be read.
    #[error("recording {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a readable recording.
    #[error("recording {}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the format check found.
        #[source]
        source: RecordError,
    },
    /// The files hold more than [`MAX_RECORDS`] records together.
    #[error("recording {}: more than {MAX_RECORDS} records in all; replay a part", path.display())]
    TooManyRecords {
        /// The file that passed the bound.
        path: PathBuf,
    },
    /// `--scale` not a positive number.
    #[error("--scale must be a positive number, got {0}")]
    Scale(f64),
    /// Recorded SKIs the target's keys lack: (SKI, requests), most
    /// [`LISTED`] of them, and how many SKIs in all.
    #[error("{}", missing_message(.keys, *.total))]
    MissingKeys {
        /// The first missing SKIs (after `--replay-map`) and their request counts.
        keys: Vec<(Ski, usize)>,
        /// Missing SKIs in all.
        total: usize,
    },
    /// Recorded operations on keys that cannot do them: (SKI, operation, requests).
    #[error("{}", unfit_message(.0))]
    UnfitKeys(Vec<(Ski, &'static str, usize)>),
    /// Requests the generator cannot send, by what they are (an opcode, or
    /// an operation naming its key by digest), without `--replay-skip-unsupported`.
    #[error("the recording holds {} requests the generator cannot send ({}); --replay-skip-unsupported skips them",
        .0.iter().map(|(_, n)| n).sum::<usize>(),
        .0.iter().map(|(what, n)| format!("{what}: {n}")).collect::<Vec<_>>().join(", "))]
    Unsupported(Vec<(String, usize)>),
    /// Nothing left to replay.
    #[error("the recording holds no request to replay")]
    Empty,
}

/// Most missing SKIs a [`ReplayError::MissingKeys`] lists.
pub const LISTED: usize = 10;

fn missing_message(keys: &[(Ski, usize)], total: usize) -> String {
    let mut msg = String::from("the target's keys (--keys) lack keys the recording uses:");
    for (s, n) in keys {
        let _ = write!(msg, "\n  SKI {} ({n} requests)", hex(s));
    }
    if total > keys.len() {
        let _ = write!(msg, "\n  ... and {} more", total - keys.len());
    }
    msg.push_str("\ngive the target's public keys with --keys, or name a stand-in with --replay-map OLD_SKI=NEW_SKI");
    msg
}

fn unfit_message(keys: &[(Ski, &'static str, usize)]) -> String {
    let mut msg = String::from("keys that do not fit the recorded operation:");
    for (s, op, n) in keys {
        let _ = write!(msg, "\n  SKI {} cannot serve {op} ({n} requests)", hex(s));
    }
    msg
}

/// One arrival to replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    /// Seconds from the start of the replay (already scaled).
    pub t_s: f64,
    /// The operation.
    pub op: OpKind,
    /// Index of its key in the plan's keys (0 for ping).
    pub key: usize,
    /// Index of the recorded connection (order of first appearance).
    pub conn: usize,
}

/// A recording ready to replay.
#[derive(Clone, Debug)]
pub struct Replay {
    /// Arrivals in time order.
    pub arrivals: Vec<Arrival>,
    /// Distinct recorded connections.
    pub recorded_connections: usize,
    /// Seconds from the first to the last arrival (scaled).
    pub span_s: f64,
    /// Requests skipped as unsupported (with `skip_unsupported`).
    pub skipped: usize,
    /// Requests per operation (the mix, as counts).
    pub counts: BTreeMap<String, f64>,
}

/// Parse a `--replay-map` value: `OLD=NEW[,OLD=NEW...]`, SKIs in hex
/// (colons allowed).
pub fn parse_map(items: &[String]) -> Result<HashMap<Ski, Ski>, ReplayError> {
    let mut m = HashMap::new();
    for part in items
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (a, b) = part.split_once('=').ok_or_else(|| ReplayError::MapEntry {
            entry: part.to_string(),
        })?;
        m.insert(ski_hex(a)?, ski_hex(b)?);
    }
    Ok(m)
}

fn ski_hex(s: &str) -> Result<Ski, ReplayError> {
    let h: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 20];
    if h.len() != 40 || !h.is_ascii() {
        return Err(ReplayError::SkiLength { ski: s.to_string() });
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|source| {
            ReplayError::SkiNotHex {
                ski: s.to_string(),
                source,
            }
        })?;
    }
    Ok(out)
}

/// Lowercase hex of a SKI.
pub fn hex(s: &Ski) -> String {
    s.iter().fold(String::with_capacity(40), |mut o, b| {
        let _ = write!(o, "{b:02x}");
        o
    })
}

/// A recorded request on the merged timeline: absolute time (ns since the
/// epoch), recording, core, connection, opcode, SKI.
type Merged = (u64, usize, u16, u32, u8, Option<Ski>);

/// Read and merge recording files (refused with the file's name and the
/// format's reason when one is not a readable recording).
pub fn read(files: &[PathBuf]) -> Result<Vec<Merged>, ReplayError> {
    if files.is_empty() {
        return Err(ReplayError::NoFiles);
    }
    let mut out: Vec<Merged> = Vec::new();
    // Files of one recording share an origin: connection ids are per
    // (origin, core), so two servers' recordings never share a connection.
    let mut origins: Vec<u64> = Vec::new();
    for f in files {
        let read_err = |source| ReplayError::Read {
            path: f.clone(),
            source,
        };
        let len = std::fs::metadata(f).map_err(read_err)?.len();
        if (out.len() as u64).saturating_add(len / RECORD_LEN as u64) > MAX_RECORDS as u64 {
            return Err(ReplayError::TooManyRecords { path: f.clone() });
        }
        let bytes = std::fs::read(f).map_err(read_err)?;
        let (h, recs) = parse(&bytes).map_err(|source| ReplayError::Format {
            path: f.clone(),
            source,
        })?;
        let rec_id = match origins.iter().position(|&o| o == h.origin_unix_ns) {
            Some(i) => i,
            None => {
                origins.push(h.origin_unix_ns);
                origins.len() - 1
            }
        };
        out.extend(recs.into_iter().map(|r| {
            (
                h.origin_unix_ns.saturating_add(r.t_ns),
                rec_id,
                r.core,
                r.conn,
                r.op,
                r.ski,
            )
        }));
    }
    out.sort_by_key(|r| r.0);
    Ok(out)
}

/// Map merged records onto the target's keys.
pub fn build(
    records: &[Merged],
    keys: &[PublicKeyInfo],
    o: &ReplayOptions,
) -> Result<Replay, ReplayError> {
    if !(o.scale.is_finite() && o.scale > 0.0) {
        return Err(ReplayError::Scale(o.scale));
    }
    let by_ski: HashMap<Ski, usize> = keys.iter().enumerate().map(|(i, k)| (k.ski, i)).collect();
    let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
    let mut missing: BTreeMap<Ski, usize> = BTreeMap::new();
    let mut unfit: BTreeMap<(Ski, &'static str), usize> = BTreeMap::new();
    let mut conns: HashMap<(usize, u16, u32), usize> = HashMap::new();
    let mut arrivals = Vec::with_capacity(records.len());
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let first = records.first().map_or(0, |r| r.0);
    let mut skipped = 0;
    for &(t, rec, core, conn, opb, ski) in records {
        let Some(op) = OpKind::ALL.into_iter().find(|k| k.opcode().0 == opb) else {
            *unsupported
                .entry(format!("opcode 0x{opb:02x}"))
                .or_default() += 1;
            continue;
        };
        let key = if op.needs_key() {
            let Some(s) = ski else {
                *unsupported
                    .entry(format!("{op} naming its key by digest, not SKI"))
                    .or_default() += 1;
                continue;
            };
            let s = o.map.get(&s).copied().unwrap_or(s);
            match by_ski.get(&s) {
                None => {
                    *missing.entry(s).or_default() += 1;
                    continue;
                }
                Some(&i) if !op.accepts(keys[i].kind) => {
                    *unfit.entry((s, op.name())).or_default() += 1;
                    continue;
                }
                Some(&i) => i,
            }
        } else {
            0
        };
        let n = conns.len();
        let conn = *conns.entry((rec, core, conn)).or_insert(n);
        *counts.entry(op.name().to_string()).or_default() += 1.0;
        arrivals.push(Arrival {
            t_s: (t - first) as f64 / 1e9 / o.scale,
            op,
            key,
            conn,
        });
    }
    if !missing.is_empty() {
        return Err(ReplayError::MissingKeys {
            total: missing.len(),
            keys: missing.into_iter().take(LISTED).collect(),
        });
    }
    if !unfit.is_empty() {
        return Err(ReplayError::UnfitKeys(
            unfit.into_iter().map(|((s, op), n)| (s, op, n)).collect(),
        ));
    }
    if !unsupported.is_empty() {
        if !o.skip_unsupported {
            return Err(ReplayError::Unsupported(unsupported.into_iter().collect()));
        }
        skipped = unsupported.values().sum();
    }
    if arrivals.is_empty() {
        return Err(ReplayError::Empty);
    }
    let span_s = arrivals.last().map_or(0.0, |a| a.t_s);
    Ok(Replay {
        arrivals,
        recorded_connections: conns.len(),
        span_s,
        skipped,
        counts,
    })
}

/// Which executor and which of its connections a recorded connection uses:
/// recorded connection `c` → client connection `c % total`, spread over
/// executors like [`crate::profile::share`] spreads connections.
pub fn place(conn: usize, total: usize, executors: usize) -> (usize, usize) {
    let g = conn % total.max(1);
    (g % executors.max(1), g / executors.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyKind;
    use crate::profile::tests::key;
    use keycore_protocol::record::{push_header, push_record, FileHeader};

    fn write(
        dir: &std::path::Path,
        name: &str,
        origin: u64,
        recs: &[(u64, u32, u8, Option<u8>)],
    ) -> PathBuf {
        let mut b = Vec::new();
        push_header(
            &mut b,
            &FileHeader {
                origin_unix_ns: origin,
                seq: 0,
            },
        );
        for &(t, conn, op, ski) in recs {
            push_record(&mut b, t, conn, 0, op, ski.map(|n| [n; 20]).as_ref());
        }
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    fn opts(files: Vec<PathBuf>) -> ReplayOptions {
        ReplayOptions {
            files,
            scale: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn files_merge_on_the_wall_clock_and_scale_divides_the_gaps() {
        let d = tempfile::tempdir().unwrap();
        // Two files of one recording given newest first, plus another
        // server's recording that started 1 ms later.
        let a = write(
            d.path(),
            "r.1",
            1_000_000_000,
            &[(0, 0, 0x15, Some(1)), (2_000_000, 1, 0xF1, None)],
        );
        let b = write(
            d.path(),
            "r",
            1_000_000_000,
            &[(4_000_000, 0, 0x35, Some(2))],
        );
        let c = write(d.path(), "other", 1_001_000_000, &[(0, 0, 0x15, Some(1))]);
        let recs = read(&[b.clone(), a.clone(), c.clone()]).unwrap();
        let keys = [
            key(KeyKind::EcdsaP256, 1),
            key(KeyKind::Rsa { bits: 2048 }, 2),
        ];
        let mut o = opts(vec![a, b, c]);
        o.scale = 2.0;
        let r = build(&recs, &keys, &o).unwrap();
        let got: Vec<(f64, OpKind, usize, usize)> = r
            .arrivals
            .iter()
            .map(|a| ((a.t_s * 1e6).round() / 1e6, a.op, a.key, a.conn))
            .collect();
        assert_eq!(
            got,
            [
                (0.0, OpKind::EcdsaP256Sha256, 0, 0),
                // The other recording's connection 0 is its own connection.
                (0.0005, OpKind::EcdsaP256Sha256, 0, 1),
                (0.001, OpKind::Ping, 0, 2),
                (0.002, OpKind::RsaPssSha256, 1, 0),
            ]
        );
        assert_eq!(r.recorded_connections, 3);
        assert_eq!(r.counts.get("ecdsa-p256-sha256"), Some(&2.0));
    }

    #[test]
    fn a_missing_key_or_unsupported_opcode_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "r",
            0,
            &[
                (0, 0, 0x15, Some(9)),
                (1, 0, 0x15, Some(9)),
                (2, 0, 0x42, None),
            ],
        );
        let recs = read(std::slice::from_ref(&f)).unwrap();
        let keys = [key(KeyKind::EcdsaP256, 1)];
        let e = build(&recs, &keys, &opts(vec![f.clone()])).unwrap_err();
        assert!(
            matches!(&e, ReplayError::MissingKeys { keys, total: 1 } if keys[..] == [([9; 20], 2)]),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains(&hex(&[9; 20])) && e.contains("2 requests"),
            "{e}"
        );
        assert!(e.contains("--replay-map"), "{e}");
        // Mapped onto key 1, the unknown opcode remains.
        let mut o = opts(vec![f.clone()]);
        o.map = parse_map(&[format!("{}={}", hex(&[9; 20]), hex(&[1; 20]))]).unwrap();
        let e = build(&recs, &keys, &o).unwrap_err().to_string();
        assert!(e.contains("opcode 0x42: 1"), "{e}");
        o.skip_unsupported = true;
        let r = build(&recs, &keys, &o).unwrap();
        assert_eq!((r.arrivals.len(), r.skipped), (2, 1));
        // A key of the wrong kind for the recorded operation.
        let rsa = [key(KeyKind::Rsa { bits: 2048 }, 9)];
        let e = build(&recs, &rsa, &opts(vec![f])).unwrap_err().to_string();
        assert!(e.contains("cannot serve ecdsa-p256-sha256"), "{e}");
    }

    #[test]
    fn a_broken_file_is_refused_with_its_name_and_reason() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "r", 0, &[(0, 0, 0x15, Some(1))]);
        let mut b = std::fs::read(&f).unwrap();
        b.truncate(b.len() - 1);
        std::fs::write(&f, &b).unwrap();
        let e = read(std::slice::from_ref(&f)).unwrap_err();
        assert!(
            matches!(&e, ReplayError::Format { path, .. } if *path == f),
            "{e:?}"
        );
        // The binary prints the chain: the file, then the format's reason.
        let text = keycore_keys::error_chain(&e);
        assert!(
            text.contains("truncated") && text.contains(&f.display().to_string()),
            "{text}"
        );
        assert!(matches!(
            parse_map(&["abc".into()]),
            Err(ReplayError::MapEntry { entry }) if entry == "abc"
        ));
        assert!(matches!(
            parse_map(&["abc=def".into()]),
            Err(ReplayError::SkiLength { ski }) if ski == "abc"
        ));
    }

    #[test]
    fn connections_spread_over_executors() {
        assert_eq!(place(0, 4, 2), (0, 0));
        assert_eq!(place(1, 4, 2), (1, 0));
        assert_eq!(place(2, 4, 2), (0, 1));
        assert_eq!(place(5, 4, 2), (1, 0));
    }
}
