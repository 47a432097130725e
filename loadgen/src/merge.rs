//! `keycore loadgen merge LOG...`: one report from the HdrHistogram interval
//! logs of several load generator instances (e.g. the pods of a Kubernetes
//! Job with parallelism, `deploy/kubernetes/loadgen/`).
//!
//! Owns: reading V2 interval logs (as [`crate::report::HdrLog`] writes them,
//! or any HdrHistogram tool), merging every interval's histogram per tag
//! (operation) into one histogram, and the text/JSON/HTML rendering of the
//! merged figures.
//!
//! Percentiles are read from the merged histogram, never averaged across
//! instances: the p99 of two runs is not the mean of their p99s. Rates are
//! the merged count over the union of the logs' wall-clock spans (each log's
//! `#[StartTime]` plus its interval offsets), so instances that ran at the
//! same time add up.
//!
//! Must not: drive load or open sockets; it only reads files.

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};

/// `keycore loadgen merge` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// HdrHistogram interval logs (`--hdr-log` files of each instance).
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// Merged figures of one tag (operation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergedOp {
    /// The log's tag (operation name); "untagged" for untagged lines.
    pub op: String,
    /// Operations recorded.
    pub count: u64,
    /// `count` over the merged wall-clock span.
    pub rate_per_s: f64,
    /// Latency percentiles in microseconds, from the merged histogram.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Intervals merged (over all logs).
    pub intervals: usize,
    /// The merged histogram itself (for further merging / tests).
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

/// The merged report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Merged {
    /// The input files.
    pub logs: Vec<String>,
    /// Seconds from the earliest interval start to the latest interval end.
    pub span_s: f64,
    /// One entry per tag, sorted by name.
    pub ops: Vec<MergedOp>,
}

/// One parsed interval.
struct Interval {
    tag: String,
    start_s: f64,
    end_s: f64,
    hist: Histogram<u64>,
}

/// Why logs could not be merged or the report written; names the file and
/// the entry or interval at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A log or report file that cannot be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// "reading", "writing".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A log entry the interval-log parser refuses.
    #[error("{}: entry {entry}: {reason}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// 1-based entry number.
        entry: usize,
        /// The parser's reason.
        reason: String,
    },
    /// An interval whose histogram does not decode.
    #[error("{}: interval {interval}: {reason}", path.display())]
    Interval {
        /// The file.
        path: PathBuf,
        /// 1-based interval number.
        interval: usize,
        /// "bad base64 (...)", "bad histogram: ...".
        reason: String,
    },
    /// A file with no interval at all.
    #[error("{}: no histogram intervals (not an HdrHistogram log?)", .0.display())]
    Empty(PathBuf),
    /// Histograms of incompatible ranges.
    #[error("{}: cannot merge: {reason}", path.display())]
    Merge {
        /// The file.
        path: PathBuf,
        /// The histogram library's reason.
        reason: String,
    },
}

/// A base64 text that is not standard base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Base64Error {
    #[error("truncated base64")]
    Truncated,
    #[error("invalid base64 character")]
    Character,
}

fn read_log(path: &Path) -> Result<Vec<Interval>, MergeError> {
    let bytes = std::fs::read(path).map_err(|source| MergeError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let mut de = Deserializer::new();
    let mut base = 0.0f64;
    let mut out = Vec::new();
    for (i, e) in IntervalLogIterator::new(&bytes).enumerate() {
        let e = e.map_err(|e| MergeError::Entry {
            path: path.to_path_buf(),
            entry: i + 1,
            reason: format!("{e:?}"),
        })?;
        match e {
            // StartTime and BaseTime are absolute (seconds since the epoch);
            // interval timestamps are relative to BaseTime when it is given,
            // which is how HdrLog writes them.
            LogEntry::StartTime(t) | LogEntry::BaseTime(t) => base = t.as_secs_f64(),
            LogEntry::Interval(h) => {
                let interval = |reason: String| MergeError::Interval {
                    path: path.to_path_buf(),
                    interval: out.len() + 1,
                    reason,
                };
                let raw = decode_base64(h.encoded_histogram())
                    .map_err(|e| interval(format!("bad base64: {e}")))?;
                let hist: Histogram<u64> = de
                    .deserialize(&mut &raw[..])
                    .map_err(|e| interval(format!("bad histogram: {e:?}")))?;
                let start_s = base + h.start_timestamp().as_secs_f64();
                out.push(Interval {
                    tag: h
                        .tag()
                        .map_or("untagged".into(), |t| t.as_str().to_string()),
                    start_s,
                    end_s: start_s + h.duration().as_secs_f64(),
                    hist,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(MergeError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

/// Merge the logs at `paths`.
pub fn merge_logs(paths: &[PathBuf]) -> Result<Merged, MergeError> {
    let mut by_tag: std::collections::BTreeMap<String, (Histogram<u64>, usize)> =
        Default::default();
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in paths {
        for iv in read_log(p)? {
            first = first.min(iv.start_s);
            last = last.max(iv.end_s);
            let e = by_tag
                .entry(iv.tag)
                .or_insert_with(|| (Histogram::new(3).expect("3 significant digits is valid"), 0));
            e.0.add(&iv.hist).map_err(|err| MergeError::Merge {
                path: p.clone(),
                reason: format!("{err:?}"),
            })?;
            e.1 += 1;
        }
    }
    let span_s = (last - first).max(0.0);
    let ops = by_tag
        .into_iter()
        .map(|(op, (hist, intervals))| MergedOp {
            count: hist.len(),
            rate_per_s: if span_s > 0.0 {
                hist.len() as f64 / span_s
            } else {
                0.0
            },
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            mean_us: hist.mean(),
            intervals,
            op,
            hist,
        })
        .collect();
    Ok(Merged {
        logs: paths.iter().map(|p| p.display().to_string()).collect(),
        span_s,
        ops,
    })
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

impl Merged {
    /// Text table.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "merged {} log(s) over {:.1} s (percentiles from merged histograms)\n",
            self.logs.len(),
            self.span_s
        );
        let _ = writeln!(
            s,
            "{:<24} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11}",
            "op", "count", "rate/s", "p50", "p90", "p99", "p99.9", "max"
        );
        for o in &self.ops {
            let _ = writeln!(
                s,
                "{:<24} {:>10} {:>10.1} {:>11} {:>11} {:>11} {:>11} {:>11}",
                o.op,
                o.count,
                o.rate_per_s,
                ms(o.p50_us),
                ms(o.p90_us),
                ms(o.p99_us),
                ms(o.p999_us),
                ms(o.max_us)
            );
        }
        s
    }

    /// JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Self-contained HTML page.
    pub fn to_html(&self) -> String {
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut rows = String::new();
        for o in &self.ops {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&o.op),
                o.count,
                o.rate_per_s,
                ms(o.p50_us),
                ms(o.p90_us),
                ms(o.p99_us),
                ms(o.p999_us),
                ms(o.max_us)
            ));
        }
        let logs: Vec<String> = self.logs.iter().map(|l| esc(l)).collect();
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>keycore loadgen merge</title>\
<style>body{{font-family:sans-serif}}td,th{{padding:2px 10px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>\
<h1>keycore loadgen: merged report</h1><p>{} log(s) over {:.1} s; percentiles from merged histograms.</p>\
<table><tr><th>op</th><th>count</th><th>rate/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n{rows}</table>\
<p>Logs: {}</p></body></html>\n",
            self.logs.len(),
            self.span_s,
            logs.join(", ")
        )
    }
}

/// Run `keycore loadgen merge`.
pub fn run(args: &MergeArgs) -> Result<(), MergeError> {
    let m = merge_logs(&args.logs)?;
    if args.json {
        println!("{}", m.to_json());
    } else {
        print!("{}", m.to_text());
    }
    if let Some(p) = &args.html {
        std::fs::write(p, m.to_html()).map_err(|source| MergeError::Io {
            what: "writing",
            path: p.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Standard base64 (the interval log's histogram encoding).
fn decode_base64(s: &str) -> Result<Vec<u8>, Base64Error> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return Err(Base64Error::Truncated);
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c).ok_or(Base64Error::Character)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::OpKind;
    use crate::report::HdrLog;
    use crate::runner::IntervalStats;
    use crate::stats::OpSet;

    /// Write a loadgen-format log with `per_interval` latencies (µs) for
    /// ECDSA P-256 in each of `intervals.len()` intervals.
    fn write_log(path: &Path, intervals: &[Vec<u64>]) {
        let mut log = HdrLog::create(path).unwrap();
        for (i, values) in intervals.iter().enumerate() {
            let mut set = OpSet::new(false);
            for &us in values {
                set.op(OpKind::EcdsaP256Sha256).ok(us, false);
            }
            log.write_interval(&IntervalStats {
                index: i as u64,
                len: crate::runner::INTERVAL,
                drain: false,
                warmup: false,
                stats: set,
                in_flight: 0,
                cpu_pct: 0.0,
            })
            .unwrap();
        }
    }

    #[test]
    fn merge_equals_one_run_with_every_value_never_averaged_percentiles() {
        let d = tempfile::tempdir().unwrap();
        // Instance A: fast (100..=1099 µs), instance B: a slow tail
        // (20,000..=20,099 µs), in two intervals each.
        let a: Vec<Vec<u64>> = vec![(100..600).collect(), (600..1100).collect()];
        let b: Vec<Vec<u64>> = vec![(20_000..20_050).collect(), (20_050..20_100).collect()];
        let (pa, pb) = (d.path().join("a.hlog"), d.path().join("b.hlog"));
        write_log(&pa, &a);
        write_log(&pb, &b);
        let m = merge_logs(&[pa.clone(), pb.clone()]).unwrap();
        assert_eq!(m.ops.len(), 1);
        let op = &m.ops[0];
        assert_eq!(op.op, "ecdsa-p256-sha256");
        assert_eq!(op.count, 1100);
        assert_eq!(op.intervals, 4);

        // The single-run reference: one histogram with every value, as one
        // generator would have recorded them.
        let mut single = crate::stats::new_hist();
        for v in a.iter().chain(b.iter()).flatten() {
            single.record(*v).unwrap();
        }
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                op.hist.value_at_quantile(q),
                single.value_at_quantile(q),
                "quantile {q}"
            );
        }
        assert_eq!(op.p99_us, single.value_at_quantile(0.99));
        assert_eq!(op.max_us, single.max());

        // Averaging the instances' p99s would be wrong here: A's p99 is
        // ~1 ms, B's ~20 ms, their mean ~10.5 ms, the true p99 ~20 ms.
        let pa99 = merge_logs(&[pa]).unwrap().ops[0].p99_us;
        let pb99 = merge_logs(&[pb]).unwrap().ops[0].p99_us;
        let averaged = (pa99 + pb99) / 2;
        assert!(op.p99_us > averaged + 5_000, "{} vs {averaged}", op.p99_us);

        let text = m.to_text();
        assert!(
            text.contains("ecdsa-p256-sha256") && text.contains("1100"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(json["ops"][0]["count"], 1100);
        assert_eq!(json["ops"][0]["p99_us"], op.p99_us);
        assert!(m
            .to_html()
            .contains("<td>ecdsa-p256-sha256</td><td>1100</td>"));
    }

    #[test]
    fn junk_and_empty_files_are_errors_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("junk.hlog");
        std::fs::write(&p, "not a log\n").unwrap();
        let e = keycore_keys::error_chain(&merge_logs(&[p]).unwrap_err());
        assert!(e.contains("junk.hlog"), "{e}");
        let missing = d.path().join("missing.hlog");
        let e = keycore_keys::error_chain(&merge_logs(&[missing]).unwrap_err());
        assert!(e.contains("missing.hlog"), "{e}");
    }

    #[test]
    fn base64_round_trip_of_known_vectors() {
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert_eq!(decode_base64("TWE=").unwrap(), b"Ma");
        assert_eq!(decode_base64("TQ==").unwrap(), b"M");
        assert!(decode_base64("T").is_err());
        assert!(decode_base64("TW!u").is_err());
    }
}
