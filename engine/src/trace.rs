//! OpenTelemetry tracing of requests: one span per sampled request, sent
//! over OTLP/HTTP (JSON encoding) by one exporter thread.
//!
//! The reference's Jaeger keys map onto it: `tracing_enabled` switches it
//! on, `tracing_address` names the OTLP/HTTP receiver (`host:port` →
//! `http://host:port/v1/traces`; a collector or Jaeger's own OTLP port
//! 4318), `tracing_sample_rate` is the fraction of requests traced. A
//! request carrying a span context (tag 0x15, Jaeger's
//! `trace:span:parent:flags` text or its 33-byte binary form) whose flags
//! say sampled is traced as a child of that span whatever the rate; one
//! whose flags say not sampled is not traced.
//!
//! Owns: the sampling decision ([`CoreTracer::sample`], a per-core
//! xorshift generator, no lock, no allocation), the fixed-size span record
//! handed to the exporter through one bounded lock-free queue
//! ([`QUEUE_SPANS`]; `try_send` only: when it is full the span is dropped and
//! counted in `keycore_trace_spans_dropped_total`, the reactor never
//! waits), and the exporter thread (batches of at most [`BATCH_MAX`] spans
//! or [`FLUSH_EVERY`], each POST bounded by [`EXPORT_TIMEOUT`]; a failed
//! batch is dropped and counted, never retried, so a dead collector costs
//! one bounded attempt per batch).
//!
//! Span content: name `keyless <opcode name>`, kind SERVER, start when the
//! request was read, end when its answer was queued; attributes
//! `keyless.opcode`, `keyless.result` (`ok` or the error's name),
//! `keycore.core`, `keycore.key.backend` (`software` or the store's name),
//! `keycore.key.ski`, `keycore.key.source` (path or redacted URI),
//! `keycore.hsm.partition` (PKCS#11 keys: the token URI of the key, for an
//! HA group its first member), `keycore.queue_time_us` (read → operation
//! start) and `keycore.exec_time_us` (operation start → answer).
//!
//! Must not: block, lock or allocate on a reactor for an unsampled request
//! (a sampled one costs a 300-byte copy, plus one `Box` when the operation
//! completes later), log per span, or carry request payloads.

use crate::config::Config;
use crate::http1::{self, Url};
use crate::metrics::CoreStats;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use keycore_keys::{Backend, KeyEntry};
use keycore_protocol::{ErrorCode, Op};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Spans waiting for the exporter, all cores together. ~300 bytes each, so
/// about 1.2 MiB when full; at 100% sampling a 2-core server makes ~100k
/// spans/s, so this is 40 ms of headroom for a slow POST before spans drop.
pub const QUEUE_SPANS: usize = 4096;

/// Most spans in one export request.
pub const BATCH_MAX: usize = 512;

/// A partial batch is sent after at most this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One export POST, connect included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes of a key's source kept in a span (longer ones are cut).
pub const SOURCE_BYTES: usize = 128;

/// Largest answer read from the receiver.
const MAX_EXPORT_ANSWER: usize = 64 * 1024;

/// At most one log line per this interval about failing exports.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Where and how much to trace.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL.
    pub url: Url,
    /// The text of `url`, for logs.
    pub url_text: String,
    /// `tracing_sample_rate`.
    pub sample_rate: f64,
}

/// Why `tracing_address` cannot be used; names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceConfigError {
    /// An `https://` receiver.
    #[error("tracing_address {0:?}: https is not supported; send to a local collector over http (it forwards over TLS)")]
    Https(String),
    /// Neither `host:port` nor an `http://` URL.
    #[error("tracing_address {0:?}: expected host:port or an http:// URL")]
    Address(String),
}

impl TraceSettings {
    /// From the config: `None` when `tracing_enabled` is off. `Err` names
    /// the key and what is wrong with it.
    pub fn from_config(cfg: &Config) -> Result<Option<TraceSettings>, TraceConfigError> {
        if !cfg.tracing_enabled {
            return Ok(None);
        }
        let a = cfg.tracing_address.trim();
        let text = if a.is_empty() {
            "http://127.0.0.1:4318/v1/traces".to_owned()
        } else if a.starts_with("https://") {
            return Err(TraceConfigError::Https(a.to_owned()));
        } else if a.starts_with("http://") {
            a.to_owned()
        } else {
            format!("http://{a}")
        };
        let mut url = Url::parse(&text).map_err(|_| TraceConfigError::Address(a.to_owned()))?;
        if url.path == "/" {
            url.path = "/v1/traces".into();
        }
        if url.port == 6831 || url.port == 6832 {
            tracing::warn!(
                tracing_address = a,
                "port {} is the Jaeger agent's UDP port; keycore sends OTLP over HTTP (use the \
                 collector's OTLP/HTTP port, 4318)",
                url.port
            );
        }
        let url_text = format!(
            "http://{}:{}{}",
            if url.host.contains(':') {
                format!("[{}]", url.host)
            } else {
                url.host.clone()
            },
            url.port,
            url.path
        );
        Ok(Some(TraceSettings {
            url,
            url_text,
            sample_rate: cfg.tracing_sample_rate,
        }))
    }
}

/// Trace and span identity of a sampled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace (the caller's, or new).
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The caller's span; all zero when none.
    pub parent: [u8; 8],
}

/// A parsed span context: (trace, span, sampled).
fn parse_context(ctx: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    // Jaeger binary: trace id high, low, span id, parent id (8 bytes each,
    // big-endian), flags (1 byte), then baggage we ignore.
    if ctx.len() >= 33 && !ctx.contains(&b':') {
        let mut t = [0u8; 16];
        t.copy_from_slice(&ctx[..16]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&ctx[16..24]);
        return (t != [0; 16] && s != [0; 8]).then_some((t, s, ctx[32] & 1 == 1));
    }
    // Text: trace:span:parent:flags, hex.
    let text = std::str::from_utf8(ctx).ok()?;
    let mut it = text.trim().split(':');
    let (t, s, _p, f) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || t.is_empty() || t.len() > 32 || s.is_empty() || s.len() > 16 {
        return None;
    }
    let tv = u128::from_str_radix(t, 16).ok()?;
    let sv = u64::from_str_radix(s, 16).ok()?;
    let fv = u8::from_str_radix(f, 16).ok()?;
    (tv != 0 && sv != 0).then_some((tv.to_be_bytes(), sv.to_be_bytes(), fv & 1 == 1))
}

/// One finished (or, while pending, started) request span. Fixed size: it
/// crosses the queue by copy.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord {
    /// Identity.
    pub ids: SpanIds,
    /// When the request was read.
    pub read_at: Instant,
    /// When its operation started (= `read_at` for answers without one).
    pub started: Instant,
    /// When its answer was queued.
    pub ended: Instant,
    /// Opcode byte.
    pub op: u8,
    /// Error code byte (0 = ok).
    pub code: u8,
    /// Core index.
    pub core: u16,
    /// Backend: 0 software, n + 1 store n, `u16::MAX` no key.
    pub backend: u16,
    /// The key's SKI, when there was a key.
    pub ski: Option<[u8; 20]>,
    source_len: u8,
    source: [u8; SOURCE_BYTES],
}

impl SpanRecord {
    /// A span for `ids` read at `read_at` on `core`, no key yet.
    pub fn new(ids: SpanIds, read_at: Instant, core: u16) -> SpanRecord {
        SpanRecord {
            ids,
            read_at,
            started: read_at,
            ended: read_at,
            op: 0,
            code: 0,
            core,
            backend: u16::MAX,
            ski: None,
            source_len: 0,
            source: [0; SOURCE_BYTES],
        }
    }

    /// Note the key and when its operation started.
    #[inline]
    pub fn key(&mut self, entry: &KeyEntry, started: Instant) {
        self.started = started;
        self.backend = match &entry.backend {
            Backend::Inline(_) => 0,
            Backend::Store(sk) => sk.store.0.saturating_add(1),
        };
        self.ski = Some(entry.ski);
        let s = entry.source.as_bytes();
        let n = s.len().min(SOURCE_BYTES);
        self.source[..n].copy_from_slice(&s[..n]);
        self.source_len = n as u8;
    }

    /// The key's source as stored (cut at [`SOURCE_BYTES`]).
    pub fn source(&self) -> &str {
        let b = &self.source[..self.source_len as usize];
        match std::str::from_utf8(b) {
            Ok(s) => s,
            // A cut inside a UTF-8 sequence: keep the valid prefix.
            Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// Counters of the exporter (control plane).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the receiver accepted.
    pub exported: AtomicU64,
    /// Export requests that failed (their spans are dropped).
    pub failed_batches: AtomicU64,
    /// Spans lost with failed requests.
    pub failed_spans: AtomicU64,
}

/// The process's tracer: the queue's sending side, the sampling threshold
/// and the exporter thread.
#[derive(Debug)]
pub struct Tracer {
    tx: Sender<SpanRecord>,
    threshold: u64,
    /// Exporter counters.
    pub stats: Arc<ExportStats>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One core's handle: its generator and a queue sender. Lives on the
/// reactor thread.
#[derive(Debug)]
pub struct CoreTracer {
    tx: Sender<SpanRecord>,
    threshold: u64,
    rng: Cell<u64>,
    core: u16,
}

/// Random u64 from the OS (seeds; never zero).
fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b) | 1
}

impl Tracer {
    /// Start the exporter for `settings`.
    pub fn start(settings: TraceSettings) -> std::io::Result<Arc<Tracer>> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_SPANS);
        let rate = settings.sample_rate.clamp(0.0, 1.0);
        // Sampled when the generator's value is below the threshold; 1.0
        // samples everything (u64::MAX is compared with <=).
        let threshold = if rate >= 1.0 {
            u64::MAX
        } else {
            (rate * u64::MAX as f64) as u64
        };
        let stats = Arc::new(ExportStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = Exporter {
            rx,
            url: settings.url.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            anchor: (Instant::now(), SystemTime::now()),
            last_failure_log: None,
            failures_unlogged: 0,
        };
        let thread = std::thread::Builder::new()
            .name("keycore-trace-export".into())
            .spawn(move || exporter.run())?;
        tracing::info!(
            endpoint = %settings.url_text,
            sample_rate = rate,
            "tracing: exporting spans over OTLP/HTTP"
        );
        Ok(Arc::new(Tracer {
            tx,
            threshold,
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The handle for core `index` (call on any thread; used on the core).
    pub fn core(&self, index: usize) -> CoreTracer {
        CoreTracer {
            tx: self.tx.clone(),
            threshold: self.threshold,
            rng: Cell::new(seed()),
            core: index.min(u16::MAX as usize) as u16,
        }
    }

    /// Export what is queued and stop the exporter (bounded by one export
    /// timeout per remaining batch; the queue holds at most
    /// `QUEUE_SPANS / BATCH_MAX` of them).
    pub fn shutdown(&self) {
        self.stop.store(true, Relaxed);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl crate::metrics::Render for Tracer {
    /// The span exporter's counters.
    fn render(&self, s: &mut String) {
        let mut w = keycore_keys::PromWriter::new(s);
        let st = &self.stats;
        for (name, help, v) in [
            (
                "keycore_trace_spans_exported_total",
                "Spans the OTLP receiver accepted.",
                &st.exported,
            ),
            (
                "keycore_trace_export_failures_total",
                "Span export requests that failed (their spans are dropped, not retried).",
                &st.failed_batches,
            ),
            (
                "keycore_trace_spans_export_failed_total",
                "Spans lost with failed export requests.",
                &st.failed_spans,
            ),
        ] {
            w.family(name, keycore_keys::MetricKind::Counter, help);
            w.sample(name, &[], v.load(Relaxed));
        }
    }
}

impl CoreTracer {
    #[inline]
    fn next(&self) -> u64 {
        // xorshift64*: fast, good enough to pick requests and make IDs.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Whether to trace a request with span context `ctx`, and its IDs.
    #[inline]
    pub fn sample(&self, ctx: Option<&[u8]>) -> Option<SpanIds> {
        if let Some(c) = ctx {
            if let Some((trace_id, parent, sampled)) = parse_context(c) {
                if !sampled {
                    return None;
                }
                return Some(SpanIds {
                    trace_id,
                    span_id: self.span_id(),
                    parent,
                });
            }
        }
        if self.threshold == 0 || (self.threshold != u64::MAX && self.next() >= self.threshold) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&self.next().to_be_bytes());
        trace_id[8..].copy_from_slice(&self.next().to_be_bytes());
        Some(SpanIds {
            trace_id,
            span_id: self.span_id(),
            parent: [0; 8],
        })
    }

    fn span_id(&self) -> [u8; 8] {
        (self.next() | 1).to_be_bytes()
    }

    /// A record for a sampled request read at `read_at`.
    #[inline]
    pub fn record(&self, ids: SpanIds, read_at: Instant) -> SpanRecord {
        SpanRecord::new(ids, read_at, self.core)
    }

    /// Hand a finished span to the exporter; never waits. A full queue (or
    /// a stopped exporter) drops it and counts it.
    #[inline]
    pub fn submit(&self, mut rec: SpanRecord, op: Op, code: ErrorCode, stats: &CoreStats) {
        rec.ended = Instant::now();
        rec.op = op.0;
        rec.code = code.0;
        match self.tx.try_send(rec) {
            Ok(()) => stats.trace_spans_sampled.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                stats.trace_spans_dropped.inc()
            }
        }
    }
}

/// The exporter thread's state.
struct Exporter {
    rx: Receiver<SpanRecord>,
    url: Url,
    stats: Arc<ExportStats>,
    stop: Arc<AtomicBool>,
    /// (monotonic, wall) at start: span times are wall = anchor + offset,
    /// so a clock step during the run does not reorder spans.
    anchor: (Instant, SystemTime),
    last_failure_log: Option<Instant>,
    failures_unlogged: u64,
}

impl Exporter {
    fn run(mut self) {
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH_MAX);
        let mut since = Instant::now();
        loop {
            let stopping = self.stop.load(Relaxed);
            let wait = if stopping {
                Duration::ZERO
            } else {
                FLUSH_EVERY.saturating_sub(since.elapsed())
            };
            match self.rx.recv_timeout(wait) {
                Ok(r) => {
                    if batch.is_empty() {
                        since = Instant::now();
                    }
                    batch.push(r);
                    while batch.len() < BATCH_MAX {
                        match self.rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.export(&batch);
                    return;
                }
            }
            let due = since.elapsed() >= FLUSH_EVERY || stopping;
            if batch.len() >= BATCH_MAX || (due && !batch.is_empty()) {
                self.export(&batch);
                batch.clear();
                since = Instant::now();
            }
            if stopping && self.rx.is_empty() && batch.is_empty() {
                return;
            }
        }
    }

    fn export(&mut self, batch: &[SpanRecord]) {
        if batch.is_empty() {
            return;
        }
        let body = self.encode(batch);
        let r = http1::post(
            &self.url,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
            None,
            EXPORT_TIMEOUT,
            MAX_EXPORT_ANSWER,
        );
        let failure = match r {
            Ok(a) if (200..300).contains(&a.status) => {
                self.stats.exported.fetch_add(batch.len() as u64, Relaxed);
                return;
            }
            Ok(a) => format!("HTTP {} {}", a.status, a.reason),
            Err(e) => keycore_keys::error_chain(&e),
        };
        self.stats.failed_batches.fetch_add(1, Relaxed);
        self.stats
            .failed_spans
            .fetch_add(batch.len() as u64, Relaxed);
        self.failures_unlogged += 1;
        let now = Instant::now();
        if self
            .last_failure_log
            .is_none_or(|t| now >= t + FAILURE_LOG_INTERVAL)
        {
            tracing::warn!(
                error = %failure,
                failed_batches_since_last_log = self.failures_unlogged,
                "tracing: span export failed; spans dropped"
            );
            self.last_failure_log = Some(now);
            self.failures_unlogged = 0;
        }
    }

    fn unix_nanos(&self, t: Instant) -> u128 {
        let wall = if t >= self.anchor.0 {
            self.anchor.1 + (t - self.anchor.0)
        } else {
            self.anchor.1 - (self.anchor.0 - t)
        };
        wall.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    /// OTLP/JSON `ExportTraceServiceRequest` for `batch`.
    fn encode(&self, batch: &[SpanRecord]) -> String {
        let mut s = String::with_capacity(600 * batch.len() + 300);
        let _ = write!(
            s,
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"keycore"}}}},{{"key":"service.version","value":{{"stringValue":"{}"}}}}]}},"scopeSpans":[{{"scope":{{"name":"keycore","version":"{}"}},"spans":["#,
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_VERSION")
        );
        for (i, r) in batch.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            self.encode_span(&mut s, r);
        }
        s.push_str("]}]}]}");
        s
    }

    fn encode_span(&self, s: &mut String, r: &SpanRecord) {
        let op = Op(r.op);
        let op_name = op.name().unwrap_or("unknown");
        let code = ErrorCode(r.code);
        let result = if r.code == 0 {
            "ok"
        } else {
            code.name().unwrap_or("unknown")
        };
        let _ = write!(
            s,
            r#"{{"traceId":"{}","spanId":"{}","#,
            hex(&r.ids.trace_id),
            hex(&r.ids.span_id)
        );
        if r.ids.parent != [0; 8] {
            let _ = write!(s, r#""parentSpanId":"{}","#, hex(&r.ids.parent));
        }
        let _ = write!(
            s,
            r#""name":"keyless {op_name}","kind":2,"startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":["#,
            self.unix_nanos(r.read_at),
            self.unix_nanos(r.ended.max(r.read_at))
        );
        attr_str(s, "keyless.opcode", op_name, true);
        attr_str(s, "keyless.result", result, false);
        let _ = write!(
            s,
            r#",{{"key":"keycore.core","value":{{"intValue":"{}"}}}}"#,
            r.core
        );
        let queue_us = r.started.saturating_duration_since(r.read_at).as_secs_f64() * 1e6;
        let exec_us = r.ended.saturating_duration_since(r.started).as_secs_f64() * 1e6;
        let _ = write!(
            s,
            r#",{{"key":"keycore.queue_time_us","value":{{"doubleValue":{queue_us:.3}}}}},{{"key":"keycore.exec_time_us","value":{{"doubleValue":{exec_us:.3}}}}}"#
        );
        if r.backend != u16::MAX {
            let source = r.source();
            let backend = backend_name(r.backend, source);
            attr_str(s, "keycore.key.backend", backend, false);
            attr_str(s, "keycore.key.source", source, false);
            if backend == "pkcs11" {
                attr_str(s, "keycore.hsm.partition", source, false);
            }
        }
        if let Some(ski) = &r.ski {
            attr_str(s, "keycore.key.ski", &hex(ski), false);
        }
        s.push_str("],\"status\":");
        if r.code == 0 {
            s.push_str(r#"{"code":1}"#);
        } else {
            s.push_str(r#"{"code":2,"message":""#);
            json_escape(s, result);
            s.push_str("\"}");
        }
        s.push('}');
    }
}

/// The backend of a span's key: software keys are inline; a store's key
/// is named by its URI's form (PKCS#11 URIs start `pkcs11:`; every other
/// `uri:` store is a cloud KMS). Read from the key, not a store table, so a
/// reload that reorders stores cannot mislabel a span.
fn backend_name(backend: u16, source: &str) -> &'static str {
    match backend {
        0 => "software",
        _ if source.starts_with("pkcs11:") => "pkcs11",
        _ => "kms",
    }
}

fn attr_str(s: &mut String, key: &str, value: &str, first: bool) {
    if !first {
        s.push(',');
    }
    let _ = write!(s, r#"{{"key":"{key}","value":{{"stringValue":""#);
    json_escape(s, value);
    s.push_str("\"}}");
}

fn json_escape(s: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_tracer(threshold: u64) -> (CoreTracer, Receiver<SpanRecord>) {
        let (tx, rx) = crossbeam_channel::bounded(4);
        (
            CoreTracer {
                tx,
                threshold,
                rng: Cell::new(seed()),
                core: 3,
            },
            rx,
        )
    }

    #[test]
    fn span_contexts_parse_in_text_and_binary() {
        let (t, s, sampled) =
            parse_context(b"4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1").unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s), "00f067aa0ba902b7");
        assert!(sampled);
        let (t, _, sampled) = parse_context(b"abc:1:0:0").unwrap();
        assert_eq!(hex(&t), "00000000000000000000000000000abc");
        assert!(!sampled);
        let mut bin = vec![0u8; 33];
        bin[15] = 7;
        bin[23] = 9;
        bin[32] = 1;
        bin.extend_from_slice(&[0, 0, 0, 0]);
        let (t, s, sampled) = parse_context(&bin).unwrap();
        assert_eq!((t[15], s[7], sampled), (7, 9, true));
        for bad in [
            &b""[..],
            b"x:y:z:w",
            b"0:0:0:1",
            b"1:2:3",
            b"1:2:3:4:5",
            &[0u8; 33],
        ] {
            assert!(parse_context(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn sampling_follows_the_rate_and_the_callers_decision() {
        let (never, _) = core_tracer(0);
        let (always, _) = core_tracer(u64::MAX);
        let (tenth, _) = core_tracer(u64::MAX / 10);
        assert!((0..1000).all(|_| never.sample(None).is_none()));
        assert!((0..1000).all(|_| always.sample(None).is_some()));
        let n = (0..100_000)
            .filter(|_| tenth.sample(None).is_some())
            .count();
        assert!((9_000..11_000).contains(&n), "{n}");
        // A sampled caller is traced even at rate 0, as its child.
        let ids = never.sample(Some(b"abc:def:0:1")).unwrap();
        assert_eq!(hex(&ids.trace_id), "00000000000000000000000000000abc");
        assert_eq!(hex(&ids.parent), "0000000000000def");
        assert_ne!(ids.span_id, [0; 8]);
        // An unsampled caller is not traced even at rate 1.
        assert!(always.sample(Some(b"abc:def:0:0")).is_none());
        // New traces get distinct IDs.
        let a = always.sample(None).unwrap();
        let b = always.sample(None).unwrap();
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.parent, [0; 8]);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (t, rx) = core_tracer(u64::MAX);
        let stats = CoreStats::new(3);
        for _ in 0..10 {
            let ids = t.sample(None).unwrap();
            t.submit(
                t.record(ids, Instant::now()),
                Op(0x15),
                ErrorCode::NONE,
                &stats,
            );
        }
        assert_eq!(rx.len(), 4);
        assert_eq!(stats.trace_spans_sampled.get(), 4);
        assert_eq!(stats.trace_spans_dropped.get(), 6);
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let (t, _) = core_tracer(u64::MAX);
        let ids = t.sample(Some(b"abc:def:0:1")).unwrap();
        let t0 = Instant::now();
        let mut r = t.record(ids, t0);
        let entry = KeyEntry {
            ski: [0xab; 20],
            legacy_digest: None,
            kind: keycore_keys::KeyKind::EcdsaP256,
            spki_der: Vec::new(),
            source: "pkcs11:token=\"a\\b".into(),
            backend: Backend::Store(keycore_keys::StoreKey {
                store: keycore_keys::StoreId(0),
                key: 0,
            }),
        };
        r.key(&entry, t0 + Duration::from_micros(30));
        r.ended = t0 + Duration::from_micros(530);
        r.op = 0x15;
        r.code = 0;
        let (_, rx) = crossbeam_channel::bounded(1);
        let ex = Exporter {
            rx,
            url: Url::parse("http://127.0.0.1:1/v1/traces").unwrap(),
            stats: Arc::default(),
            stop: Arc::default(),
            anchor: (t0, UNIX_EPOCH + Duration::from_secs(1_000)),
            last_failure_log: None,
            failures_unlogged: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&ex.encode(&[r])).unwrap();
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "00000000000000000000000000000abc");
        assert_eq!(span["parentSpanId"], "0000000000000def");
        assert_eq!(span["name"], "keyless OpECDSASignSHA256");
        assert_eq!(span["startTimeUnixNano"], "1000000000000");
        assert_eq!(span["endTimeUnixNano"], "1000000530000");
        assert_eq!(span["status"]["code"], 1);
        let attrs: std::collections::HashMap<String, serde_json::Value> = span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
            .collect();
        assert_eq!(attrs["keyless.opcode"]["stringValue"], "OpECDSASignSHA256");
        assert_eq!(attrs["keyless.result"]["stringValue"], "ok");
        assert_eq!(attrs["keycore.core"]["intValue"], "3");
        assert_eq!(attrs["keycore.key.backend"]["stringValue"], "pkcs11");
        assert_eq!(
            attrs["keycore.hsm.partition"]["stringValue"],
            "pkcs11:token=\"a\\b"
        );
        assert_eq!(attrs["keycore.queue_time_us"]["doubleValue"], 30.0);
        assert_eq!(attrs["keycore.exec_time_us"]["doubleValue"], 500.0);
        assert_eq!(attrs["keycore.key.ski"]["stringValue"], "ab".repeat(20));
    }

    #[test]
    fn addresses_map_from_the_references_keys() {
        assert!(TraceSettings::from_config(&Config::default())
            .unwrap()
            .is_none());
        let mut c = Config {
            tracing_enabled: true,
            tracing_sample_rate: 0.25,
            ..Config::default()
        };
        let s = TraceSettings::from_config(&c).unwrap().unwrap();
        assert_eq!(s.url_text, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(s.sample_rate, 0.25);
        c.tracing_address = "collector.local:4318".into();
        let s = TraceSettings::from_config(&c).unwrap().unwrap();
        assert_eq!(s.url_text, "http://collector.local:4318/v1/traces");
        c.tracing_address = "http://[::1]:9999/custom".into();
        let s = TraceSettings::from_config(&c).unwrap().unwrap();
        assert_eq!(s.url_text, "http://[::1]:9999/custom");
        c.tracing_address = "https://x:1".into();
        assert!(TraceSettings::from_config(&c)
            .unwrap_err()
            .to_string()
            .contains("https"));
        c.tracing_address = "no port here:".into();
        assert!(TraceSettings::from_config(&c).is_err());
    }
}
