//! Per-core counters and their Prometheus text rendering (served by `endpoint`).
//!
//! Each core owns one [`CoreStats`] and is its only writer: counters are
//! bumped with a relaxed load + store (a plain `mov`, no `lock` prefix, no
//! shared cache line with another core), so the data path never waits on the
//! metrics. A scrape (control plane, its own thread) reads every core's
//! counters with relaxed loads and sums them; a scrape may see one core a few
//! requests behind another, which is fine for monitoring.
//!
//! Names follow the reference server's so existing dashboards keep working:
//! `keyless_requests{opcode}`, `keyless_request_exec_duration_per_opcode` and
//! `keyless_request_total_duration_per_opcode{type,error}` (seconds, buckets
//! 100 µs doubling to 1.64 s), `keyless_failed_connection`,
//! `keyless_key_load_duration`, `certificate_expiration_timestamp_seconds`.
//! `keycore_request_total_duration_fine_seconds{type}` is the read → answer-queued
//! time again with finer buckets (25 µs steps to 200 µs; issue 13).
//! keycore's own per-core series are prefixed `keycore_`.
//!
//! This module must not: allocate or format on the data path, or hold a lock
//! that a reactor could contend on.

use crate::refusals::Refusal;
use crate::swap::Swap;
use keycore_keys::{KeyStore, MetricKind, PromWriter};
use keycore_protocol::{ErrorCode, Op, OpClass};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

// The HTTP endpoint that serves `Registry::render` is endpoint.rs (it imports
// this module, never the other way round).

/// Heartbeat value of a core that exited normally (after a drain).
pub(crate) const STOPPED: u64 = u64::MAX;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds on the process's monotonic clock, starting at 1 (0 means
/// "never beat").
pub fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One core's heartbeat. Written only by its reactor.
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    /// Record that the reactor's control task ran now.
    #[inline]
    pub fn beat(&self) {
        self.0.store(now_ms(), Relaxed);
    }

    /// Record that the reactor exited normally (drain finished).
    pub fn stop(&self) {
        self.0.store(STOPPED, Relaxed);
    }

    /// Store a raw clock value (tests: a heartbeat in the past).
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A counter with exactly one writer (its core).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one. Only the owning core may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    /// Add `n`. Only the owning core may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: load + store is exact and avoids a locked RMW.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtract `n` (for gauges). Only the owning core may call this.
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// Current value (any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Histogram bucket upper bounds in nanoseconds: 100 µs doubling, 15 buckets
/// (to 1.6384 s), as the reference's `ExponentialBuckets(0.0001, 2, 15)`.
pub const BUCKETS: usize = 15;
const BUCKET0_NS: u64 = 100_000;

/// The reference's `type` label values.
pub const OP_TYPES: [&str; 6] = ["rsa", "ecdsa", "ed25519", "custom", "rpc", "other"];
/// Error codes 0x00..=0x0B get their own `error` label value.
pub const ERROR_LABELS: usize = 12;

/// Index of the `type` label for an opcode.
#[inline]
pub fn op_type(op: Op) -> usize {
    match op.class() {
        OpClass::RsaDecrypt | OpClass::RsaPkcs1(_) | OpClass::RsaPss(_) => 0,
        OpClass::Ecdsa(_) => 1,
        OpClass::Ed25519 => 2,
        OpClass::Custom => 3,
        OpClass::Rpc => 4,
        _ => 5,
    }
}

/// One labelled family of histograms: [type][error] → buckets + sum + count.
#[derive(Debug)]
pub struct Histograms {
    buckets: Vec<Counter>, // OP_TYPES × ERROR_LABELS × (BUCKETS + 1)
    sum_ns: Vec<Counter>,  // OP_TYPES × ERROR_LABELS
}

impl Default for Histograms {
    fn default() -> Self {
        let cells = OP_TYPES.len() * ERROR_LABELS;
        Histograms {
            buckets: (0..cells * (BUCKETS + 1))
                .map(|_| Counter::default())
                .collect(),
            sum_ns: (0..cells).map(|_| Counter::default()).collect(),
        }
    }
}

/// Bucket index (0..=BUCKETS, the last being +Inf) for a duration.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    if ns <= BUCKET0_NS {
        return 0;
    }
    // Smallest k with ns <= BUCKET0_NS << k.
    let q = (ns - 1) / BUCKET0_NS; // >= 1
    let k = 64 - q.leading_zeros() as usize;
    k.min(BUCKETS)
}

impl Histograms {
    /// Record one observation. Only the owning core may call this.
    #[inline]
    pub fn record(&self, op: Op, err: ErrorCode, ns: u64) {
        let cell = op_type(op) * ERROR_LABELS + (err.0 as usize).min(ERROR_LABELS - 1);
        self.buckets[cell * (BUCKETS + 1) + bucket_of(ns)].inc();
        self.sum_ns[cell].add(ns);
    }
}

/// Upper bounds (ns) of keycore's own finer read → answer-queued histogram:
/// 25 µs steps up to 200 µs, then about ×1.5 to 12.8 ms. The reference
/// family's buckets double from 100 µs, too coarse to split a p99 of a few
/// hundred µs from a millisecond (issue 13).
pub const FINE_BOUNDS_NS: [u64; 20] = [
    25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 300_000, 400_000, 500_000,
    600_000, 800_000, 1_000_000, 1_200_000, 1_600_000, 2_400_000, 3_200_000, 6_400_000, 12_800_000,
];

/// Bucket index (0..=FINE_BOUNDS_NS.len(), the last being +Inf) for a duration.
#[inline]
pub fn fine_bucket_of(ns: u64) -> usize {
    FINE_BOUNDS_NS.partition_point(|&b| b < ns)
}

/// keycore's own read → answer-queued histogram by `type` (every answer,
/// errors included), with [`FINE_BOUNDS_NS`] buckets.
#[derive(Debug)]
pub struct FineHistogram {
    buckets: Vec<Counter>, // OP_TYPES × (FINE_BOUNDS_NS.len() + 1)
    sum_ns: Vec<Counter>,  // OP_TYPES
}

impl Default for FineHistogram {
    fn default() -> Self {
        FineHistogram {
            buckets: (0..OP_TYPES.len() * (FINE_BOUNDS_NS.len() + 1))
                .map(|_| Counter::default())
                .collect(),
            sum_ns: (0..OP_TYPES.len()).map(|_| Counter::default()).collect(),
        }
    }
}

impl FineHistogram {
    /// Record one observation. Only the owning core may call this.
    #[inline]
    pub fn record(&self, op: Op, ns: u64) {
        let t = op_type(op);
        self.buckets[t * (FINE_BOUNDS_NS.len() + 1) + fine_bucket_of(ns)].inc();
        self.sum_ns[t].add(ns);
    }
}

/// Counters of one core. Written only by that core's reactor.
#[derive(Debug)]
pub struct CoreStats {
    /// Which core (index in the configured list).
    pub core: usize,
    /// Requests by opcode (all 256 values, unknown ones too).
    pub requests_by_op: Vec<Counter>,
    /// Time spent performing the operation.
    pub exec: Histograms,
    /// Time from the request being read to its response being queued.
    pub total: Histograms,
    /// The same, every answer, finer buckets (keycore's own family).
    pub total_fine: FineHistogram,
    /// Connections accepted (TLS not yet done).
    pub accepted: Counter,
    /// Connections currently open (gauge).
    pub open: Counter,
    /// Connections closed at once because the core was at its limit.
    pub refused: Counter,
    /// TLS handshakes that failed (bad, missing, expired or foreign client
    /// certificate...), all reasons.
    pub tls_failures: Counter,
    /// The same by reason, in the order of `Refusal::TLS`.
    pub tls_failure_reasons: [Counter; Refusal::TLS.len()],
    /// Failed accept(2) calls by reason, in the order of `Refusal::ACCEPT`.
    pub accept_errors: [Counter; Refusal::ACCEPT.len()],
    /// Handshakes that did not finish within the handshake timeout.
    pub handshake_timeouts: Counter,
    /// Connections closed for a framing error.
    pub framing_errors: Counter,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: Counter,
    /// Requests being worked on off the reactor (gauge).
    pub in_flight: Counter,
    /// Responses written.
    pub responses: Counter,
    /// Bytes written to the network (TLS plaintext).
    pub bytes_out: Counter,
    /// Stored by the core's control task each tick; read by `/healthz`.
    pub heartbeat: Heartbeat,
    /// Connections still in the TLS handshake (gauge).
    pub handshaking: Counter,
    /// Connections closed at accept: their source address already had
    /// `max_handshakes_per_source` handshakes in progress.
    pub refused_source: Counter,
    /// Connections aborted because a write made no progress within idle_timeout.
    pub write_stalls: Counter,
    /// Requests received but never answered (drain deadline, stalled or
    /// failed connection).
    pub unanswered: Counter,
    /// Key operations refused before any backend, by
    /// `security::Refusal` (policy, rate limit, fail-closed audit).
    pub requests_refused: [Counter; 4],
    /// Sampled request spans handed to the trace exporter.
    pub trace_spans_sampled: Counter,
    /// Sampled request spans dropped: the exporter's queue was full.
    pub trace_spans_dropped: Counter,
}

impl CoreStats {
    /// Fresh counters for `core`.
    pub fn new(core: usize) -> Self {
        CoreStats {
            core,
            requests_by_op: (0..256).map(|_| Counter::default()).collect(),
            exec: Histograms::default(),
            total: Histograms::default(),
            total_fine: FineHistogram::default(),
            accepted: Counter::default(),
            open: Counter::default(),
            refused: Counter::default(),
            tls_failures: Counter::default(),
            tls_failure_reasons: Default::default(),
            accept_errors: Default::default(),
            handshake_timeouts: Counter::default(),
            framing_errors: Counter::default(),
            idle_timeouts: Counter::default(),
            in_flight: Counter::default(),
            responses: Counter::default(),
            bytes_out: Counter::default(),
            heartbeat: Heartbeat::default(),
            handshaking: Counter::default(),
            refused_source: Counter::default(),
            write_stalls: Counter::default(),
            unanswered: Counter::default(),
            requests_refused: Default::default(),
            trace_spans_sampled: Counter::default(),
            trace_spans_dropped: Counter::default(),
        }
    }
}

/// A gauge line added by the control plane (certificate expiry, partition
/// health...): name, labels (already formatted `k="v",...`), value.
#[derive(Debug, Clone)]
pub struct StaticGauge {
    /// Metric name.
    pub name: String,
    /// Help text.
    pub help: String,
    /// Label names and values, e.g. `("source", "auth_cert")`; values are
    /// escaped by the writer.
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

/// The part of a scrape that start-up builds and a reload replaces as a
/// whole (with the served state): certificate gauges, key-load times, the
/// key stores.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Control-plane gauges (certificate expiry).
    pub gauges: Vec<StaticGauge>,
    /// Seconds each key store took to load (at start-up or the last
    /// reload; a store a reload kept counts its original time).
    pub key_load_seconds: Vec<f64>,
    /// The key stores, each rendering its own families at scrape time.
    pub stores: Vec<Arc<dyn KeyStore>>,
}

/// Reload outcomes (issue 14), written by the reload path (control plane).
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads that were applied.
    pub ok: AtomicU64,
    /// Reloads refused (the old state kept serving).
    pub error: AtomicU64,
    /// Unix time of the last successful load (start-up counts), in ms.
    pub last_success_unix_ms: AtomicU64,
    /// Settings the config file changed that the running process has not
    /// applied (they need a restart), as of the last successful reload.
    /// Control plane only (reload thread, scrapes).
    pub restart_needed: std::sync::Mutex<Vec<&'static str>>,
}

/// A part of the server that renders its own families at scrape time
/// (control plane; e.g. the audit totals and the client identities).
pub trait Render: Send + Sync {
    /// Append Prometheus text.
    fn render(&self, s: &mut String);
}

/// Everything a scrape reads.
#[derive(Default)]
pub struct Registry {
    /// Other renderers (audit totals, client identities, the span
    /// exporter's and the traffic recorder's counters). They render
    /// themselves: this module knows none of them (no module circle).
    pub renderers: Vec<Arc<dyn Render>>,
    /// One per core.
    pub cores: Vec<Arc<CoreStats>>,
    /// What start-up and reloads loaded.
    pub loaded: Swap<Loaded>,
    /// Reload outcomes.
    pub reload: ReloadStats,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("cores", &self.cores.len())
            .finish()
    }
}

impl Registry {
    /// Sum of a counter over cores.
    pub fn sum(&self, f: impl Fn(&CoreStats) -> u64) -> u64 {
        self.cores.iter().map(|c| f(c)).sum()
    }

    /// Total requests of every opcode.
    pub fn total_requests(&self) -> u64 {
        self.sum(|c| c.requests_by_op.iter().map(Counter::get).sum())
    }

    /// Render the Prometheus text exposition format: the server's own
    /// families, then each key store's, all through the one writer
    /// (`keycore_keys::PromWriter`, which owns the syntax and label escaping).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(64 * 1024);
        let mut w = PromWriter::new(&mut s);
        self.render_into(&mut w);
        for store in &self.loaded.get().stores {
            store.render_metrics(&mut w);
        }
        for r in &self.renderers {
            r.render(&mut s);
        }
        s
    }

    fn render_into(&self, w: &mut PromWriter<'_>) {
        w.family(
            "keyless_requests",
            MetricKind::Counter,
            "Number of requests received, by opcode.",
        );
        for v in 0..=255u8 {
            let n = self.sum(|c| c.requests_by_op[v as usize].get());
            if n > 0 || Op(v).is_known() {
                w.sample("keyless_requests", &[("opcode", &op_label(Op(v)))], n);
            }
        }
        self.render_hist(
            w,
            "keyless_request_exec_duration_per_opcode",
            "Time to perform the key operation, in seconds.",
            |c| &c.exec,
        );
        self.render_hist(
            w,
            "keyless_request_total_duration_per_opcode",
            "Time from request read to response queued, in seconds.",
            |c| &c.total,
        );
        self.render_fine(w);
        let failed = self.sum(|c| c.tls_failures.get() + c.handshake_timeouts.get());
        w.family(
            "keyless_failed_connection",
            MetricKind::Counter,
            "Connections that failed the TLS handshake.",
        );
        w.sample("keyless_failed_connection", &[], failed);

        let loaded = self.loaded.get();
        w.family(
            "keyless_key_load_duration",
            MetricKind::Histogram,
            "Time to load each key store at start-up, in seconds.",
        );
        let mut cum = 0u64;
        let mut counts = [0u64; BUCKETS + 1];
        for &sec in &loaded.key_load_seconds {
            counts[bucket_of((sec * 1e9) as u64)] += 1;
        }
        for (k, c) in counts.iter().take(BUCKETS).enumerate() {
            cum += c;
            w.sample(
                "keyless_key_load_duration_bucket",
                &[("le", &le(k).to_string())],
                cum,
            );
        }
        let loads = loaded.key_load_seconds.len();
        w.sample("keyless_key_load_duration_bucket", &[("le", "+Inf")], loads);
        w.sample(
            "keyless_key_load_duration_sum",
            &[],
            loaded.key_load_seconds.iter().sum::<f64>(),
        );
        w.sample("keyless_key_load_duration_count", &[], loads);

        let mut last = "";
        for g in &loaded.gauges {
            if g.name != last {
                w.family(&g.name, MetricKind::Gauge, &g.help);
                last = &g.name;
            }
            let labels: Vec<(&str, &str)> =
                g.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            w.sample(&g.name, &labels, g.value);
        }

        type Get = fn(&CoreStats) -> u64;
        use MetricKind::{Counter as C, Gauge as G};
        let per_core: [(&str, MetricKind, &str, Get); 16] = [
            ("keycore_connections_open", G, "Open connections.", |c| c.open.get()),
            ("keycore_connections_accepted_total", C, "Connections accepted.", |c| c.accepted.get()),
            ("keycore_connections_refused_total", C, "Connections closed at once: core at max_connections_per_core.", |c| c.refused.get()),
            ("keycore_handshake_timeouts_total", C, "TLS handshakes not finished within handshake_timeout.", |c| c.handshake_timeouts.get()),
            ("keycore_framing_errors_total", C, "Connections closed for a malformed message.", |c| c.framing_errors.get()),
            ("keycore_idle_timeouts_total", C, "Connections closed by idle_timeout.", |c| c.idle_timeouts.get()),
            ("keycore_in_flight", G, "Requests being performed off the reactor (queue depth to HSM workers).", |c| c.in_flight.get()),
            ("keycore_responses_total", C, "Responses written.", |c| c.responses.get()),
            ("keycore_bytes_out_total", C, "Plaintext bytes written to connections.", |c| c.bytes_out.get()),
            ("keycore_requests_total", C, "Requests received.", |c| c.requests_by_op.iter().map(Counter::get).sum()),
            ("keycore_handshakes_in_progress", G, "Connections in the TLS handshake (bounded by max_handshakes_per_core).", |c| c.handshaking.get()),
            ("keycore_connections_refused_source_total", C, "Connections closed at accept: their source had max_handshakes_per_source handshakes in progress.", |c| c.refused_source.get()),
            ("keycore_write_stalls_total", C, "Connections aborted: a write made no progress within idle_timeout (peer not reading).", |c| c.write_stalls.get()),
            ("keycore_requests_unanswered_total", C, "Requests received but closed unanswered (drain deadline, stalled or failed connection).", |c| c.unanswered.get()),
            ("keycore_trace_spans_sampled_total", C, "Request spans sampled and queued for export (tracing_enabled).", |c| c.trace_spans_sampled.get()),
            ("keycore_trace_spans_dropped_total", C, "Sampled request spans dropped because the exporter's queue was full.", |c| c.trace_spans_dropped.get()),
        ];
        for (name, kind, help, get) in per_core {
            w.family(name, kind, help);
            for c in &self.cores {
                w.sample(name, &[("core", &c.core.to_string())], get(c));
            }
        }
        // Per core and reason: connections dropped before they were served.
        type ByReason = fn(&CoreStats) -> &[Counter];
        let by_reason: [(&str, &str, &[Refusal], ByReason); 2] = [
            ("keycore_tls_failures_total", "TLS handshakes refused, by reason (bad_cert: client certificate did not verify; no_cert; peer_alert; protocol: not TLS or a violation; peer_closed; tls_other).", &Refusal::TLS, |c| &c.tls_failure_reasons),
            ("keycore_accept_errors_total", "accept(2) failures, by reason (accept_fd_limit: EMFILE/ENFILE; accept_other).", &Refusal::ACCEPT, |c| &c.accept_errors),
        ];
        for (name, help, reasons, get) in by_reason {
            w.family(name, MetricKind::Counter, help);
            for c in &self.cores {
                let core = c.core.to_string();
                for (r, n) in reasons.iter().zip(get(c)) {
                    w.sample(name, &[("core", &core), ("reason", r.label())], n.get());
                }
            }
        }
        w.family(
            "keycore_requests_refused_total",
            MetricKind::Counter,
            "Key operations refused before any backend (answered 0x08), by reason: key policy (op_denied, client_denied), per-identity rate (rate_limited), audit_fail_closed (audit_unavailable).",
        );
        for why in crate::security::Refusal::ALL {
            w.sample(
                "keycore_requests_refused_total",
                &[("reason", why.label())],
                self.sum(|c| c.requests_refused[why as usize].get()),
            );
        }
        self.render_reload(w);
    }

    fn render_reload(&self, w: &mut PromWriter<'_>) {
        w.family(
            "keycore_reload_total",
            MetricKind::Counter,
            "Reloads (SIGHUP, keycore reload) by result: ok (applied) or error (refused; the previous state kept serving).",
        );
        w.sample(
            "keycore_reload_total",
            &[("result", "ok")],
            self.reload.ok.load(Relaxed),
        );
        w.sample(
            "keycore_reload_total",
            &[("result", "error")],
            self.reload.error.load(Relaxed),
        );
        w.family(
            "keycore_config_last_reload_success_timestamp_seconds",
            MetricKind::Gauge,
            "Unix time of the last successful configuration load (start-up or reload).",
        );
        w.sample(
            "keycore_config_last_reload_success_timestamp_seconds",
            &[],
            self.reload.last_success_unix_ms.load(Relaxed) as f64 / 1e3,
        );
        w.family(
            "keycore_config_restart_needed",
            MetricKind::Gauge,
            "1 for each setting the config file changed that needs a restart to apply (as of the last successful reload); none after a restart.",
        );
        let pending = self
            .reload
            .restart_needed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for setting in pending {
            w.sample("keycore_config_restart_needed", &[("setting", setting)], 1);
        }
    }

    fn render_hist(
        &self,
        w: &mut PromWriter<'_>,
        name: &str,
        help: &str,
        h: fn(&CoreStats) -> &Histograms,
    ) {
        w.family(name, MetricKind::Histogram, help);
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        for (t, tname) in OP_TYPES.iter().enumerate() {
            for e in 0..ERROR_LABELS {
                let cell = t * ERROR_LABELS + e;
                let total: u64 = (0..=BUCKETS)
                    .map(|b| self.sum(|c| h(c).buckets[cell * (BUCKETS + 1) + b].get()))
                    .sum();
                if total == 0 {
                    continue;
                }
                let ename = ErrorCode(e as u8).name().unwrap_or("unknown");
                let mut cum = 0;
                for b in 0..BUCKETS {
                    cum += self.sum(|c| h(c).buckets[cell * (BUCKETS + 1) + b].get());
                    let le = le(b).to_string();
                    w.sample(
                        &bucket,
                        &[("type", tname), ("error", ename), ("le", &le)],
                        cum,
                    );
                }
                w.sample(
                    &bucket,
                    &[("type", tname), ("error", ename), ("le", "+Inf")],
                    total,
                );
                let sum_ns = self.sum(|c| h(c).sum_ns[cell].get());
                w.sample(
                    &sum,
                    &[("type", tname), ("error", ename)],
                    sum_ns as f64 / 1e9,
                );
                w.sample(&count, &[("type", tname), ("error", ename)], total);
            }
        }
    }
}

impl Registry {
    fn render_fine(&self, w: &mut PromWriter<'_>) {
        const NAME: &str = "keycore_request_total_duration_fine_seconds";
        w.family(
            NAME,
            MetricKind::Histogram,
            "Time from request read to response queued (every answer, errors too), finer buckets than keyless_request_total_duration_per_opcode, in seconds.",
        );
        let n = FINE_BOUNDS_NS.len() + 1;
        for (t, tname) in OP_TYPES.iter().enumerate() {
            let get = |b: usize| self.sum(|c| c.total_fine.buckets[t * n + b].get());
            let total: u64 = (0..n).map(get).sum();
            if total == 0 {
                continue;
            }
            let mut cum = 0;
            for (b, bound) in FINE_BOUNDS_NS.iter().enumerate() {
                cum += get(b);
                let le = (*bound as f64 / 1e9).to_string();
                w.sample(
                    &format!("{NAME}_bucket"),
                    &[("type", tname), ("le", &le)],
                    cum,
                );
            }
            w.sample(
                &format!("{NAME}_bucket"),
                &[("type", tname), ("le", "+Inf")],
                total,
            );
            let sum_ns = self.sum(|c| c.total_fine.sum_ns[t].get());
            w.sample(
                &format!("{NAME}_sum"),
                &[("type", tname)],
                sum_ns as f64 / 1e9,
            );
            w.sample(&format!("{NAME}_count"), &[("type", tname)], total);
        }
    }
}

fn le(bucket: usize) -> f64 {
    (BUCKET0_NS << bucket) as f64 / 1e9
}

/// The reference's label for an opcode (`OpECDSASignSHA256`, or hex).
pub fn op_label(op: Op) -> String {
    match op.name() {
        Some(n) => n.to_string(),
        None => format!("0x{:02x}", op.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_buckets_split_the_first_reference_buckets() {
        assert_eq!(fine_bucket_of(0), 0);
        assert_eq!(fine_bucket_of(25_000), 0);
        assert_eq!(fine_bucket_of(25_001), 1);
        assert_eq!(fine_bucket_of(150_000), 5);
        assert_eq!(fine_bucket_of(700_000), 12);
        assert_eq!(fine_bucket_of(12_800_001), FINE_BOUNDS_NS.len());
        assert!(FINE_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn buckets_double_from_100us() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100_000), 0);
        assert_eq!(bucket_of(100_001), 1);
        assert_eq!(bucket_of(200_000), 1);
        assert_eq!(bucket_of(200_001), 2);
        assert_eq!(bucket_of(1_638_400_000), 14);
        assert_eq!(bucket_of(1_638_400_001), 15);
        assert_eq!(bucket_of(u64::MAX), 15);
        assert!((le(14) - 1.6384).abs() < 1e-12);
    }

    #[test]
    fn render_sums_cores_and_uses_reference_names() {
        let a = Arc::new(CoreStats::new(0));
        let b = Arc::new(CoreStats::new(1));
        a.requests_by_op[Op::ECDSA_SIGN_SHA256.0 as usize].add(3);
        b.requests_by_op[Op::ECDSA_SIGN_SHA256.0 as usize].add(4);
        a.exec
            .record(Op::ECDSA_SIGN_SHA256, ErrorCode::NONE, 150_000);
        b.exec
            .record(Op::RSA_SIGN_SHA256, ErrorCode::KEY_NOT_FOUND, 50_000);
        let r = Registry {
            cores: vec![a, b],
            ..Default::default()
        };
        let text = r.render();
        assert!(
            text.contains("keyless_requests{opcode=\"OpECDSASignSHA256\"} 7\n"),
            "{text}"
        );
        assert!(text.contains(
            "keyless_request_exec_duration_per_opcode_bucket{type=\"ecdsa\",error=\"no error\",le=\"0.0001\"} 0\n"
        ));
        assert!(text.contains(
            "keyless_request_exec_duration_per_opcode_bucket{type=\"ecdsa\",error=\"no error\",le=\"0.0002\"} 1\n"
        ));
        assert!(text.contains(
            "keyless_request_exec_duration_per_opcode_count{type=\"rsa\",error=\"key not found\"} 1\n"
        ));
        assert!(text.contains("keycore_requests_total{core=\"1\"} 4\n"));
        assert_eq!(r.total_requests(), 7);
        // The finer family sums cores too: 60 µs and 140 µs ECDSA answers.
        r.cores[0].total_fine.record(Op::ECDSA_SIGN_SHA256, 60_000);
        r.cores[1].total_fine.record(Op::ECDSA_SIGN_SHA256, 140_000);
        let text = r.render();
        for (le, n) in [
            ("0.00005", 0),
            ("0.000075", 1),
            ("0.000125", 1),
            ("0.00015", 2),
        ] {
            let line = format!(
                "keycore_request_total_duration_fine_seconds_bucket{{type=\"ecdsa\",le=\"{le}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains("keycore_request_total_duration_fine_seconds_count{type=\"ecdsa\"} 2\n")
        );
    }

    /// Control-plane gauges go through the one writer: a certificate subject
    /// or path with a quote, backslash or newline stays one valid sample
    /// (before, the subject's quotes were swapped for `'` and the path was
    /// written raw).
    #[test]
    fn gauge_labels_are_escaped_by_the_shared_writer() {
        let r = Registry {
            loaded: Swap::new(Arc::new(Loaded {
                gauges: vec![StaticGauge {
                    name: "certificate_expiration_timestamp_seconds".into(),
                    help: "Expiry.".into(),
                    labels: vec![
                        ("source", "auth_cert".into()),
                        ("path", "/etc/a\"b\\c\nd.pem".into()),
                    ],
                    value: 1.5e9,
                }],
                key_load_seconds: vec![0.25],
                ..Default::default()
            })),
            ..Default::default()
        };
        let text = r.render();
        assert!(
            text.contains(
                "certificate_expiration_timestamp_seconds{source=\"auth_cert\",path=\"/etc/a\\\"b\\\\c\\nd.pem\"} 1500000000\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE certificate_expiration_timestamp_seconds gauge\n"));
        assert!(text.contains("keyless_key_load_duration_bucket{le=\"0.2048\"} 0\n"));
        assert!(text.contains("keyless_key_load_duration_bucket{le=\"0.4096\"} 1\n"));
        assert!(text.contains("keyless_key_load_duration_count 1\n"));
        // Every line is a comment or `name{labels} value` / `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(!series.contains('\n'));
        }
    }
}
