//! The audit trail's writer (issue 18): one thread that merges what the
//! cores send (per-core counts, refusal samples) and the individual records
//! (key loads, reloads, TLS refusals, HSM logins), appends them to the
//! JSON-lines `audit_file`, rotates it by size, and keeps the merged totals
//! that `/metrics` shows.
//!
//! Owns: the file (open, append, stat, rotate `FILE` → `FILE.1` … `FILE.N`),
//! the record format, the interval merge, the totals with bounded label
//! cardinality, and the "audit file is writable" flag that
//! `audit_fail_closed` turns into a refusal on the data path.
//!
//! Must not: ever make a core wait (cores only `try_send` to a bounded
//! queue, see `security::AuditTx`), write a payload, digest, PIN or key
//! material (records carry SKIs, sources, identity labels, opcode names,
//! result names and counts only), or grow without bound (the interval map
//! is bounded by cores × `MAX_AUDIT_CELLS`, pending text by
//! [`MAX_PENDING_BYTES`], the totals by the identity cap and
//! [`MAX_KEY_LABELS`], the disk by `(audit_keep + 1) × audit_max_bytes`).
//!
//! Failure policy: a write that fails (disk full, directory removed, file
//! replaced) is counted (`keycore_audit_write_errors_total`), logged at most
//! once per [`ERROR_LOG_INTERVAL`], and retried at the next tick by opening
//! the path again. Signing goes on unless `audit_fail_closed`, in which
//! case the cores refuse key operations until a write succeeds again.
//! The writer checks before each write that the path still names the file
//! it holds open (same device and inode): writes into a deleted file would
//! otherwise "succeed" into nothing.

use crate::config::Security as SecurityConfig;
use crate::metrics::{op_label, op_type, Render, OP_TYPES};
pub use crate::security::KeyLabel;
use crate::security::{
    hex, prom_escape, split_key_ref, unpack, AuditMsg, AuditTx, ClientId, Identities, Refusal,
    RefusalSample, AUDIT_EPOCHS, AUDIT_QUEUE, NO_KEY, OVERFLOW_KEY,
};
use keycore_keys::KeyIndex;
use keycore_protocol::{ErrorCode, Op};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Text waiting to be written while the file is down; beyond it the oldest
/// records are dropped (counted in `keycore_audit_dropped_total`).
pub const MAX_PENDING_BYTES: usize = 4 << 20;
/// Distinct keys with their own label in `keycore_policy_refused_total`;
/// the rest are `other`.
pub const MAX_KEY_LABELS: usize = 256;
/// At most one log line per this interval about a failing audit file.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Totals behind the metrics (merged every interval).
#[derive(Debug, Default)]
struct Totals {
    /// (identity, op type, result byte) → operations.
    ops: HashMap<(ClientId, u8, u8), u64>,
    /// (key label, reason) → refusals.
    refused: HashMap<(String, Refusal), u64>,
}

/// The writer's shared state: counters, totals and the writable flag.
#[derive(Debug)]
pub struct Audit {
    /// False while the audit file cannot be written (true without a file).
    ok: Arc<AtomicBool>,
    fail_closed: bool,
    /// An `audit_file` is configured (a reload may set or clear it).
    has_file: AtomicBool,
    records: AtomicU64,
    write_errors: AtomicU64,
    rotations: AtomicU64,
    dropped: Arc<AtomicU64>,
    totals: Mutex<Totals>,
    ids: Arc<Identities>,
}

impl Audit {
    /// The flag cores check with `audit_fail_closed` (`None` otherwise).
    pub fn fail_closed_flag(&self) -> Option<Arc<AtomicBool>> {
        self.fail_closed.then(|| self.ok.clone())
    }

    /// Whether the last write succeeded (or there is no file).
    pub fn file_ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// The client identities (labels for records and metrics).
    pub fn identities(&self) -> Arc<Identities> {
        self.ids.clone()
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
}

impl Render for Audit {
    fn render(&self, s: &mut String) {
        let labels = self.ids.labels();
        let t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        s.push_str("# HELP keycore_client_requests_total Key operations by client identity, operation type and result (merged from the cores every audit_interval; identities capped, the rest \"other\").\n# TYPE keycore_client_requests_total counter\n");
        let mut ops: Vec<_> = t.ops.iter().collect();
        ops.sort();
        for (&(id, ty, res), n) in ops {
            let _ = writeln!(
                s,
                "keycore_client_requests_total{{identity=\"{}\",type=\"{}\",result=\"{}\"}} {n}",
                prom_escape(labels.get(id as usize).map_or("other", String::as_str)),
                OP_TYPES[ty as usize],
                result_name(res)
            );
        }
        s.push_str("# HELP keycore_policy_refused_total Key operations refused before any backend, by key (SKI; at most 256, the rest \"other\") and reason.\n# TYPE keycore_policy_refused_total counter\n");
        let mut refused: Vec<_> = t.refused.iter().collect();
        refused.sort();
        for ((key, why), n) in refused {
            let _ = writeln!(
                s,
                "keycore_policy_refused_total{{key=\"{key}\",reason=\"{}\"}} {n}",
                why.label()
            );
        }
        drop(t);
        for (name, help, v) in [
            (
                "keycore_audit_records_total",
                "Records appended to audit_file.",
                self.records.load(Ordering::Relaxed),
            ),
            (
                "keycore_audit_write_errors_total",
                "Failed writes or re-opens of audit_file (disk full, directory removed...).",
                self.write_errors.load(Ordering::Relaxed),
            ),
            (
                "keycore_audit_dropped_total",
                "Audit messages or records dropped (writer queue full, or text beyond the pending bound while the file was down).",
                self.dropped.load(Ordering::Relaxed),
            ),
            (
                "keycore_audit_rotations_total",
                "Times audit_file was rotated.",
                self.rotations.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP keycore_audit_file_ok 1 while audit_file is writable (or none is configured).\n# TYPE keycore_audit_file_ok gauge\nkeycore_audit_file_ok {}",
            u8::from(self.file_ok())
        );
        self.ids.render(s);
    }
}

/// `ok`, an error code's name, or `refused:<reason>`.
fn result_name(b: u8) -> String {
    if let Some(r) = Refusal::from_result_byte(b) {
        return format!("refused:{}", r.label());
    }
    if b == 0 {
        return "ok".to_owned();
    }
    ErrorCode(b)
        .name()
        .map_or_else(|| format!("0x{b:02x}"), str::to_owned)
}

/// The running writer.
#[derive(Debug)]
pub struct AuditWriter {
    shared: Arc<Audit>,
    tx: AuditTx,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Labels of every key, by key index.
pub fn key_labels(index: &KeyIndex) -> Vec<KeyLabel> {
    index
        .entries()
        .iter()
        .map(|e| KeyLabel {
            ski: hex(&e.ski),
            source: crate::config::redact_uri_pins(&e.source),
        })
        .collect()
}

/// One record of `kind` (`key_load`, `key_unload`) per key of `index`.
pub fn key_records(tx: &AuditTx, kind: &str, index: &KeyIndex) {
    for (l, e) in key_labels(index).iter().zip(index.entries()) {
        tx.event(
            kind,
            &[
                ("key", &l.ski),
                ("source", &l.source),
                ("kind", &format!("{:?}", e.kind)),
            ],
        );
    }
}

impl AuditWriter {
    /// Start the writer thread. `ids_for` builds the client identities
    /// (labels for records and metrics) around the writer's sender; the key
    /// labels come by [`AuditMsg::Keys`]. The dropped-message counter is
    /// shared with the senders ([`AuditWriter::tx`]).
    pub fn start(
        cfg: &SecurityConfig,
        ids_for: impl FnOnce(AuditTx) -> Arc<Identities>,
    ) -> std::io::Result<AuditWriter> {
        let (tx, rx) = sync_channel(AUDIT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let tx = AuditTx::new(tx, dropped.clone());
        let ids = ids_for(tx.clone());
        let shared = Arc::new(Audit {
            ok: Arc::new(AtomicBool::new(true)),
            fail_closed: cfg.audit_fail_closed,
            has_file: AtomicBool::new(cfg.audit_file.is_some()),
            records: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            dropped,
            totals: Mutex::new(Totals::default()),
            ids,
        });
        let mut w = Writer {
            shared: shared.clone(),
            path: cfg.audit_file.clone(),
            max_bytes: cfg.audit_max_bytes,
            keep: cfg.audit_keep,
            interval: cfg.audit_interval,
            keys: HashMap::new(),
            file: None,
            pending: String::new(),
            merged: HashMap::new(),
            last_error_log: None,
        };
        // Fail fast on a path that cannot be opened at all at start-up
        // (typo, missing directory): that is a configuration error, not an
        // outage.
        if let Some(p) = &w.path {
            w.file = Some(open_append(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("audit_file {}: {e}", p.display()))
            })?);
        }
        let thread = std::thread::Builder::new()
            .name("keycore-audit".into())
            .spawn(move || w.run(rx))?;
        Ok(AuditWriter {
            shared,
            tx,
            thread: Some(thread),
        })
    }

    /// A sender for cores, the verifier and the control plane.
    pub fn tx(&self) -> AuditTx {
        self.tx.clone()
    }

    /// The shared state (metrics, fail-closed flag).
    pub fn shared(&self) -> Arc<Audit> {
        self.shared.clone()
    }

    /// Write what is queued and stop the thread (after the cores stopped
    /// and sent their last counts).
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            // A blocking send: the queue may be full of the cores' last
            // counts, and Stop must come after them.
            let _ = self.tx.send_blocking(AuditMsg::Stop);
            let _ = t.join();
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Open (creating) `p` for appending: the writer's one way in, and what a
/// reload checks a new `audit_file` with before it applies.
pub(crate) fn open_append(p: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Audit>,
    path: Option<PathBuf>,
    max_bytes: u64,
    keep: u32,
    interval: Duration,
    /// Key labels by epoch (the last [`AUDIT_EPOCHS`] generations).
    keys: HashMap<u8, Vec<KeyLabel>>,
    file: Option<File>,
    /// Records not yet written (bounded by [`MAX_PENDING_BYTES`]).
    pending: String,
    /// This interval's counts, merged over cores.
    merged: HashMap<u64, u64>,
    last_error_log: Option<Instant>,
}

/// A JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Writer {
    fn run(&mut self, rx: Receiver<AuditMsg>) {
        self.record(SystemTime::now(), "audit_started", &[]);
        let mut next_tick = Instant::now() + self.interval;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(AuditMsg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // Everything the cores sent before Stop is in.
                    while let Ok(m) = rx.try_recv() {
                        self.take(m);
                    }
                    self.tick();
                    self.record(SystemTime::now(), "audit_stopped", &[]);
                    self.write_out();
                    return;
                }
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + self.interval;
            }
        }
    }

    fn key_label(&self, key: u32) -> (&str, &str) {
        match key {
            NO_KEY => ("unknown", ""),
            OVERFLOW_KEY => ("overflow", ""),
            k => {
                let (epoch, index) = split_key_ref(k);
                self.keys
                    .get(&epoch)
                    .and_then(|l| l.get(index as usize))
                    .map_or(("unknown", ""), |l| (l.ski.as_str(), l.source.as_str()))
            }
        }
    }

    fn take(&mut self, m: AuditMsg) {
        match m {
            AuditMsg::Counts {
                cells,
                refusals,
                suppressed,
                core: _,
            } => {
                for (c, n) in cells {
                    *self.merged.entry(c).or_insert(0) += n;
                }
                for r in refusals {
                    self.refusal(&r);
                }
                if suppressed > 0 {
                    let n = suppressed.to_string();
                    self.record(
                        SystemTime::now(),
                        "policy_refusals_suppressed",
                        &[("count", &n)],
                    );
                }
            }
            AuditMsg::Event { at, kind, fields } => {
                let f: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.record(at, &kind, &f);
            }
            AuditMsg::Keys { epoch, labels } => {
                self.keys.insert(epoch, labels);
                self.keys.remove(&epoch.wrapping_sub(AUDIT_EPOCHS));
            }
            AuditMsg::Settings {
                path,
                max_bytes,
                keep,
            } => self.settings(path, max_bytes, keep),
            AuditMsg::Stop => {}
        }
    }

    /// A reload's `audit_file`, `audit_max_bytes`, `audit_keep`. A new path:
    /// the old file gets a last record naming the new one (and whatever
    /// was written since the last tick), then is closed; records not yet
    /// written (the old file was down) go to the new one; the new one is
    /// opened now (the reload checked that it can be). The interval's
    /// counts are not split: the next tick writes them to the new file.
    fn settings(&mut self, path: Option<PathBuf>, max_bytes: u64, keep: u32) {
        self.max_bytes = max_bytes;
        self.keep = keep;
        if path == self.path {
            return;
        }
        let to = path
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string());
        self.record(SystemTime::now(), "audit_file_changed", &[("to", &to)]);
        self.write_out();
        self.file = None;
        self.path = path;
        self.shared
            .has_file
            .store(self.path.is_some(), Ordering::Relaxed);
        if self.path.is_none() {
            self.pending.clear();
            self.shared.ok.store(true, Ordering::Relaxed);
            return;
        }
        self.write_out();
    }

    fn refusal(&mut self, r: &RefusalSample) {
        let (ski, source) = self.key_label(r.key);
        let (ski, source) = (ski.to_owned(), source.to_owned());
        let identity = self.shared.ids.label(r.client);
        let op = op_label(r.op);
        self.record(
            r.at,
            "policy_refusal",
            &[
                ("key", &ski),
                ("source", &source),
                ("identity", &identity),
                ("op", &op),
                ("reason", r.reason.label()),
            ],
        );
    }

    /// Append one record to the pending text.
    fn record(&mut self, at: SystemTime, kind: &str, fields: &[(&str, &str)]) {
        let mut line = String::with_capacity(128);
        line.push_str("{\"ts\":");
        json_str(&mut line, &crate::config::format_rfc3339(at));
        line.push_str(",\"type\":");
        json_str(&mut line, kind);
        for (k, v) in fields {
            line.push(',');
            json_str(&mut line, k);
            line.push(':');
            json_str(&mut line, v);
        }
        line.push_str("}\n");
        self.push_line(&line);
    }

    fn push_line(&mut self, line: &str) {
        if !self.shared.has_file.load(Ordering::Relaxed) {
            return;
        }
        if self.pending.len() + line.len() > MAX_PENDING_BYTES {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pending.push_str(line);
    }

    /// The interval is over: write its merged counts (one line per key,
    /// identity, opcode and result), update the totals, write out.
    fn tick(&mut self) {
        let merged = std::mem::take(&mut self.merged);
        let now = SystemTime::now();
        let labels = self.shared.ids.labels();
        let mut cells: Vec<(u64, u64)> = merged.into_iter().collect();
        cells.sort_unstable();
        {
            let mut t = self.shared.totals.lock().unwrap_or_else(|p| p.into_inner());
            for &(c, n) in &cells {
                let (key, client, op, res) = unpack(c);
                *t.ops.entry((client, op_type(op) as u8, res)).or_insert(0) += n;
                if let Some(why) = Refusal::from_result_byte(res) {
                    let label = match key {
                        NO_KEY => "none".to_owned(),
                        k => {
                            let l = self.key_label(k).0;
                            let known = t.refused.keys().any(|(x, _)| x == l);
                            let distinct = t
                                .refused
                                .keys()
                                .map(|(x, _)| x)
                                .collect::<std::collections::HashSet<_>>()
                                .len();
                            if known || distinct < MAX_KEY_LABELS {
                                l.to_owned()
                            } else {
                                "other".to_owned()
                            }
                        }
                    };
                    *t.refused.entry((label, why)).or_insert(0) += n;
                }
            }
        }
        let interval = format!("{}", self.interval.as_secs_f64());
        for (c, n) in cells {
            let (key, client, op, res) = unpack(c);
            let (ski, source) = self.key_label(key);
            let (ski, source) = (ski.to_owned(), source.to_owned());
            let identity = labels
                .get(client as usize)
                .cloned()
                .unwrap_or_else(|| "other".into());
            let op = op_label(Op(op.0));
            let res = result_name(res);
            let count = n.to_string();
            self.record(
                now,
                "ops",
                &[
                    ("key", &ski),
                    ("source", &source),
                    ("identity", &identity),
                    ("op", &op),
                    ("result", &res),
                    ("count", &count),
                    ("interval_s", &interval),
                ],
            );
        }
        self.write_out();
    }

    fn error(&mut self, what: &str, e: &std::io::Error) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.ok.store(false, Ordering::Relaxed);
        self.file = None;
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now >= t + ERROR_LOG_INTERVAL)
        {
            self.last_error_log = Some(now);
            tracing::error!(
                file = %self.path.as_deref().unwrap_or(Path::new("")).display(),
                error = %e,
                fail_closed = self.shared.fail_closed,
                "audit file: {what} failed; records are kept in memory (bounded) and the write is retried every audit_interval"
            );
        }
    }

    /// Write pending records, reopening the file if it was lost, and rotate
    /// when it is full.
    fn write_out(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        // The path must still name the file held open.
        let same = match (&self.file, std::fs::metadata(&path)) {
            (Some(f), Ok(m)) => f
                .metadata()
                .is_ok_and(|h| h.dev() == m.dev() && h.ino() == m.ino()),
            _ => false,
        };
        if !same {
            match open_append(&path) {
                Ok(f) => self.file = Some(f),
                Err(e) => return self.error("open", &e),
            }
        }
        if self.pending.is_empty() {
            self.shared.ok.store(true, Ordering::Relaxed);
            return;
        }
        let f = self.file.as_mut().expect("opened above");
        let r = f
            .write_all(self.pending.as_bytes())
            .and_then(|()| f.flush());
        if let Err(e) = r {
            return self.error("write", &e);
        }
        let lines = self.pending.bytes().filter(|&b| b == b'\n').count() as u64;
        self.shared.records.fetch_add(lines, Ordering::Relaxed);
        self.pending.clear();
        self.shared.ok.store(true, Ordering::Relaxed);
        let size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        if size >= self.max_bytes {
            if let Err(e) = self.rotate(&path) {
                self.error("rotate", &e);
            }
        }
    }

    /// `FILE` → `FILE.1`, `FILE.1` → `FILE.2`, ...; `FILE.keep` is
    /// overwritten (dropped). Then a fresh `FILE`.
    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        let numbered = |i: u32| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        for i in (1..self.keep).rev() {
            match std::fs::rename(numbered(i), numbered(i + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::rename(path, numbered(1))?;
        self.file = Some(open_append(path)?);
        self.shared.rotations.fetch_add(1, Ordering::Relaxed);
        self.record(
            SystemTime::now(),
            "audit_rotated",
            &[("previous", &numbered(1).to_string_lossy())],
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::CoreSecurity;

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn cfg(file: &Path) -> SecurityConfig {
        SecurityConfig {
            audit_file: Some(file.to_owned()),
            audit_interval: Duration::from_millis(50),
            audit_max_bytes: 4096,
            audit_keep: 2,
            ..Default::default()
        }
    }

    #[test]
    fn counts_from_cores_are_merged_into_one_line_and_totals() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let c = cfg(&file);
        let w = AuditWriter::start(&c, |tx| Arc::new(Identities::new(&c, Some(tx)))).unwrap();
        // Two generations: epoch 1's key 0 and epoch 2's key 0 are
        // different keys (a reload between the counts).
        for (epoch, ski) in [(1u8, "ab"), (2, "cd")] {
            w.tx()
                .send_blocking(AuditMsg::Keys {
                    epoch,
                    labels: vec![KeyLabel {
                        ski: ski.repeat(20),
                        source: format!("/k/{ski}.key"),
                    }],
                })
                .unwrap();
        }
        let k1 = crate::security::key_ref(1, 0);
        let k2 = crate::security::key_ref(2, 0);
        let ids = w.shared().ids.clone();
        let rules = crate::security::ClientRules::build(&c, &ids).unwrap();
        let a = rules.identify(None);
        assert!(a.is_err());
        for core in 0..2 {
            let cs = CoreSecurity::new(core, 2, &rules, Some(w.tx()), None);
            for _ in 0..5 {
                cs.count(k1, 0, Op::ECDSA_SIGN_SHA256, 0);
            }
            cs.count(k2, 0, Op::ECDSA_SIGN_SHA256, 0);
            cs.count(k1, 0, Op::RSA_DECRYPT, Refusal::OpDenied.result_byte());
            cs.sample_refusal(k1, 0, Op::RSA_DECRYPT, Refusal::OpDenied);
            cs.flush();
        }
        let shared = w.shared();
        w.stop();
        let text = lines(&file);
        let ops: Vec<&String> = text
            .iter()
            .filter(|l| l.contains("\"type\":\"ops\""))
            .collect();
        assert!(
            ops.iter()
                .any(|l| l.contains("\"op\":\"OpECDSASignSHA256\"")
                    && l.contains("\"result\":\"ok\"")
                    && l.contains("\"count\":\"10\"")
                    && l.contains(&"ab".repeat(20))),
            "{text:#?}"
        );
        assert!(
            ops.iter().any(|l| l.contains(&"cd".repeat(20))
                && l.contains("\"count\":\"2\"")
                && l.contains("/k/cd.key")),
            "{text:#?}"
        );
        assert_eq!(
            text.iter()
                .filter(|l| l.contains("\"type\":\"policy_refusal\""))
                .count(),
            2
        );
        assert!(text[0].contains("audit_started"));
        assert!(text.last().unwrap().contains("audit_stopped"));
        let mut m = String::new();
        shared.render(&mut m);
        assert!(
            m.contains(
                "keycore_client_requests_total{identity=\"other\",type=\"ecdsa\",result=\"ok\"} 12"
            ),
            "{m}"
        );
        assert!(m.contains(&format!(
            "keycore_policy_refused_total{{key=\"{}\",reason=\"op_denied\"}} 2",
            "ab".repeat(20)
        )));
        assert_eq!(shared.records(), text.len() as u64);
    }

    #[test]
    fn rotates_by_size_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let c = cfg(&file);
        let w = AuditWriter::start(&c, |tx| Arc::new(Identities::new(&c, Some(tx)))).unwrap();
        let tx = w.tx();
        // ~100 bytes per record, 4 KiB per file: ~40 records per file.
        for i in 0..400 {
            tx.send_blocking(AuditMsg::Event {
                at: SystemTime::now(),
                kind: "key_load".into(),
                fields: vec![("n".into(), i.to_string())],
            })
            .unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(60));
            }
        }
        let shared = w.shared();
        w.stop();
        assert!(shared.rotations.load(Ordering::Relaxed) >= 2);
        let mut kept: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        kept.sort();
        assert_eq!(kept.len(), 3, "FILE, FILE.1, FILE.2: {kept:?}");
        for p in &kept {
            // A file may end over the limit by one write batch.
            assert!(std::fs::metadata(p).unwrap().len() < 4096 + 64 * 1024);
            for l in lines(p) {
                assert!(l.starts_with("{\"ts\":") && l.ends_with('}'), "{l}");
            }
        }
        // The newest record is in FILE, and nothing was lost in the files
        // kept: their record numbers are contiguous up to the last one.
        let all: Vec<u32> = [2, 1]
            .iter()
            .map(|i| dir.path().join(format!("audit.jsonl.{i}")))
            .chain([file.clone()])
            .flat_map(|p| lines(&p))
            .filter_map(|l| {
                l.split("\"n\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        assert_eq!(*all.last().unwrap(), 399);
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    }

    #[test]
    fn a_removed_directory_is_counted_and_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("audit");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("audit.jsonl");
        let mut c = cfg(&file);
        c.audit_fail_closed = true;
        let w = AuditWriter::start(&c, |tx| Arc::new(Identities::new(&c, Some(tx)))).unwrap();
        let shared = w.shared();
        let flag = shared.fail_closed_flag().unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        w.tx().event("key_load", &[("n", "1")]);
        let t = Instant::now();
        while flag.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!flag.load(Ordering::Relaxed), "the loss was noticed");
        assert!(shared.write_errors.load(Ordering::Relaxed) >= 1);
        std::fs::create_dir(&sub).unwrap();
        let t = Instant::now();
        while !flag.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(flag.load(Ordering::Relaxed), "recovered once writable");
        w.stop();
        assert!(lines(&file).iter().any(|l| l.contains("\"n\":\"1\"")));
    }
}
