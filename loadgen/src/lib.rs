//! # keycore-loadgen
//!
//! A keyless client library and an edge-traffic load generator.
//!
//! The client ([`client`]) is what the edge does to reach a key server:
//! mutual TLS, many requests pipelined over a few long-lived connections,
//! request IDs, timeouts, reconnects. The generator ([`runner`]) drives it
//! thread-per-core with an open- or closed-loop traffic model ([`profile`]),
//! checks every answer with the public key ([`check`]), and reports latency
//! the way capacity planning needs it ([`report`]): measured from each
//! request's scheduled time, so a stalled server shows in the tail.
//!
//! What it is not: it has no server code and does not parse the wire format
//! itself (both come from `keycore-engine` and `keycore-protocol`). It is a
//! separate crate so tests, the edge and the CLI can use the client without
//! the server.
//!
//! Entry points: [`run_cli`] for `keycore loadgen`, [`run`] with a
//! [`LoadSpec`] for programs (`keycore demo`, tests), [`capacity`] and
//! [`compare`] for the two multi-run modes; [`replay`] turns a recording
//! of `keycore serve` (`record_file`) into the arrivals of an open-loop run
//! (`--replay`).
//!
//! Errors: enums, the cause as `#[source]` (render with
//! `keycore_keys::error_chain` or anyhow's `{:#}`): [`LoadgenError`] from the
//! entry points, wrapping the parts' own ([`TlsConfigError`],
//! `keys::KeyLoadError`, `profile::ProfileError`, `runner::RunError`,
//! `report::HdrLogError`, `replay::ReplayError`, `handshake::HandshakeError`);
//! [`ClientError`] per request (cheap, `Clone`); `merge::MergeError`.

pub mod check;
pub mod client;
mod error;
pub mod floor;
pub mod handshake;
pub mod keys;
pub mod merge;
pub mod profile;
pub mod replay;
pub mod report;
pub mod runner;
pub mod stats;
mod sys;
mod testsrv;
pub mod tls;

pub use client::{BlockingClient, ClientError, OwnedResponse, Pool, PoolConfig, PoolCounters};
pub use error::LoadgenError;
pub use profile::{Arrivals, LoopMode, Profile};
pub use report::Report;
pub use tls::{ClientTls, ClientTlsPaths, TlsConfigError, TlsOptions};

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

/// Most servers in one compare run (each is a full run, one after another).
pub const MAX_COMPARE_SERVERS: usize = 16;

/// Most steps of a capacity search (with the default ×1.5 factor from 100
/// req/s this passes 10 million req/s; it bounds a runaway search).
pub const MAX_CAPACITY_STEPS: usize = 40;

/// A programmatic load test: where, with what credentials and keys, and the
/// traffic model.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Key server address.
    pub server: SocketAddr,
    /// Client TLS files (CA, client certificate, client key).
    pub tls: ClientTlsPaths,
    /// Name to check the server certificate against; `None`: its IP address.
    pub server_name: Option<String>,
    /// Files or directories with public keys, certificates or private keys.
    pub keys: Vec<PathBuf>,
    /// The traffic model.
    pub profile: Profile,
    /// Print the live line to stderr every second. Default false for
    /// programs; the CLI turns it on.
    pub live: bool,
    /// Write an HdrHistogram interval log here.
    pub hdr_log: Option<PathBuf>,
    /// Replay these recordings instead of generating arrivals (the
    /// profile's connections, cores, timeout and verification still apply).
    pub replay: Option<replay::ReplayOptions>,
}

impl LoadSpec {
    /// A spec with the default profile.
    pub fn new(server: SocketAddr, tls: ClientTlsPaths, keys: Vec<PathBuf>) -> LoadSpec {
        LoadSpec {
            server,
            tls,
            server_name: None,
            keys,
            profile: Profile::default(),
            live: false,
            hdr_log: None,
            replay: None,
        }
    }
}

/// Run one load test and return its report.
pub fn run(spec: &LoadSpec) -> Result<Report, LoadgenError> {
    let tls = ClientTls::from_paths(
        &spec.tls,
        &TlsOptions {
            tls12_only: spec.profile.tls12_only,
            server_name: spec.server_name.clone(),
        },
    )?;
    let keys = keys::load_public_keys(&spec.keys)?;
    let plan = match &spec.replay {
        None => profile::Plan::new(spec.profile.clone(), keys)?,
        Some(o) => replay_plan(&spec.profile, keys, o)?,
    };
    run_with(spec, &tls, Arc::new(plan))
}

/// The plan of a replay: the recording's arrivals, mix (as counts) and
/// span; open loop, no warm-up (every recorded request is measured), one
/// client connection per recorded connection (at most
/// [`replay::MAX_CONNECTIONS`]) unless `o.connections` says otherwise.
pub fn replay_plan(
    profile: &Profile,
    keys: Vec<keys::PublicKeyInfo>,
    o: &replay::ReplayOptions,
) -> Result<profile::Plan, LoadgenError> {
    let recs = replay::read(&o.files)?;
    let keys: Vec<_> = keys.into_iter().take(profile::MAX_KEYS).collect();
    let r = replay::build(&recs, &keys, o)?;
    let mut p = profile.clone();
    p.mode = LoopMode::Open;
    p.warmup_s = 0.0;
    p.ramp_s = 0.0;
    p.keys = None;
    // The last arrival lies inside the measured window.
    p.duration_s = r.span_s + 0.001;
    p.rate = (r.arrivals.len() as f64 / p.duration_s).min(profile::MAX_RATE);
    p.mix = r.counts.clone();
    p.connections = o
        .connections
        .unwrap_or(r.recorded_connections.clamp(1, replay::MAX_CONNECTIONS));
    let mut plan = profile::Plan::new(p, keys)?;
    plan.replay = Some(Arc::new(r));
    Ok(plan)
}

fn run_with(
    spec: &LoadSpec,
    tls: &ClientTls,
    plan: Arc<profile::Plan>,
) -> Result<Report, LoadgenError> {
    let mut hdr = spec
        .hdr_log
        .as_deref()
        .map(report::HdrLog::create)
        .transpose()?;
    let mut hdr_err = None;
    let mut timeline = Vec::new();
    let cores = plan.profile.cores;
    let live = spec.live;
    let mut sink = |i: &runner::IntervalStats| {
        let row = report::IntervalRow::of(i);
        // The drain interval after the last request is empty: nothing to say.
        let idle = row.latency.is_none() && row.errors == 0 && row.in_flight == 0;
        if live && !idle {
            let mut line = row.live_line();
            if let Some(w) = row.generator_warning(cores) {
                line.push_str("  WARNING: ");
                line.push_str(&w);
            }
            eprintln!("{line}");
        }
        if let Some(h) = &mut hdr {
            if let Err(e) = h.write_interval(i) {
                hdr_err.get_or_insert(e);
            }
        }
        timeline.push(row);
    };
    let result = runner::run_plan(spec.server, tls, plan.clone(), &mut sink)?;
    if let Some(source) = hdr_err {
        return Err(LoadgenError::HdrLogWrite {
            path: spec.hdr_log.clone().unwrap_or_default(),
            source,
        });
    }
    Ok(Report::new(
        spec.server.to_string(),
        &plan,
        result,
        timeline,
    ))
}

/// Capacity search settings. Defaults are assumptions, documented per field.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CapacitySpec {
    /// First rate tried, req/s. Default 100 (assumption: any server holds it).
    pub start_rate: f64,
    /// Each step multiplies the rate by this (> 1). Default 1.5: about 6
    /// steps per decade, a ±25% answer in few steps.
    pub step_factor: f64,
    /// Measured seconds per step. Default 10 (assumption: long enough for a
    /// stable p99 at modest rates; raise it for p99.9).
    pub step_duration_s: f64,
    /// Warm-up seconds per step. Default 2 (assumption).
    pub step_warmup_s: f64,
    /// A step holds while its p99 (all operations) is at most this, ms.
    /// Default 10 (assumption: a handshake signing budget well under the
    /// edge's TLS handshake timeout).
    pub slo_p99_ms: f64,
    /// ...and its failed fraction at most this. Default 0 (any error fails).
    pub max_error_ratio: f64,
    /// Most steps (a sweep of many points bounds each point's search with
    /// it). Default and ceiling [`MAX_CAPACITY_STEPS`].
    pub max_steps: usize,
}

impl Default for CapacitySpec {
    fn default() -> Self {
        CapacitySpec {
            start_rate: 100.0,
            step_factor: 1.5,
            step_duration_s: 10.0,
            step_warmup_s: 2.0,
            slo_p99_ms: 10.0,
            max_error_ratio: 0.0,
            max_steps: MAX_CAPACITY_STEPS,
        }
    }
}

/// Achieved throughput below this fraction of the offered rate fails a step
/// (the server is shedding or queueing without bound).
const CAPACITY_MIN_ACHIEVED: f64 = 0.95;

/// One step of a capacity search.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CapacityStep {
    /// Offered rate, req/s.
    pub offered_per_s: f64,
    /// OK responses per second.
    pub achieved_per_s: f64,
    /// p99 of OK responses, ms.
    pub p99_ms: Option<f64>,
    /// Failed requests.
    pub errors: u64,
    /// Whether it met the SLO.
    pub held: bool,
    /// Why it did not hold, or what limits the result.
    pub note: String,
}

/// Result of a capacity search.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CapacityReport {
    /// Server.
    pub server: String,
    /// Settings used.
    pub spec: CapacitySpec,
    /// Steps in order.
    pub steps: Vec<CapacityStep>,
    /// Highest offered rate that held, req/s.
    pub highest_held_per_s: Option<f64>,
    /// True if the search ended because the generator, not the server, ran
    /// out: then the highest rate is a lower bound.
    pub generator_bound: bool,
}

impl CapacityReport {
    /// Human-readable table.
    pub fn print_text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "capacity search against {} (SLO: p99 <= {} ms, error ratio <= {})",
            self.server, self.spec.slo_p99_ms, self.spec.max_error_ratio
        )?;
        writeln!(
            w,
            "{:>12} {:>12} {:>10} {:>8}  result",
            "offered/s", "achieved/s", "p99", "errors"
        )?;
        for s in &self.steps {
            writeln!(
                w,
                "{:>12.1} {:>12.1} {:>10} {:>8}  {}{}",
                s.offered_per_s,
                s.achieved_per_s,
                s.p99_ms.map_or("-".into(), |p| format!("{p:.3}ms")),
                s.errors,
                if s.held { "held" } else { "FAILED" },
                if s.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.note)
                }
            )?;
        }
        match self.highest_held_per_s {
            Some(r) => writeln!(
                w,
                "highest rate that held: {r:.1} req/s{}",
                if self.generator_bound {
                    " (a lower bound: the generator was the limit)"
                } else {
                    ""
                }
            ),
            None => writeln!(w, "no rate held (not even the first step)"),
        }
    }
}

/// Step the open-loop rate up until p99 passes the SLO or errors appear;
/// report the highest rate that held. `on_step` sees each step's report.
pub fn capacity(
    spec: &LoadSpec,
    cap: &CapacitySpec,
    on_step: &mut dyn FnMut(&Report),
) -> Result<CapacityReport, LoadgenError> {
    if !(cap.step_factor > 1.0 && cap.step_factor.is_finite()) {
        return Err(LoadgenError::CapacityStepFactor(cap.step_factor));
    }
    if !(cap.start_rate > 0.0 && cap.slo_p99_ms > 0.0) {
        return Err(LoadgenError::CapacityNotPositive {
            start_rate: cap.start_rate,
            slo_p99_ms: cap.slo_p99_ms,
        });
    }
    let tls = ClientTls::from_paths(
        &spec.tls,
        &TlsOptions {
            tls12_only: spec.profile.tls12_only,
            server_name: spec.server_name.clone(),
        },
    )?;
    let keys = keys::load_public_keys(&spec.keys)?;
    let mut steps = Vec::new();
    let mut highest = None;
    let mut generator_bound = false;
    let mut rate = cap.start_rate;
    for _ in 0..cap.max_steps.min(MAX_CAPACITY_STEPS) {
        if rate > profile::MAX_RATE {
            break;
        }
        let mut s = spec.clone();
        s.profile.mode = LoopMode::Open;
        s.profile.rate = rate;
        s.profile.duration_s = cap.step_duration_s;
        s.profile.warmup_s = cap.step_warmup_s;
        s.profile.ramp_s = 0.0;
        let plan = Arc::new(profile::Plan::new(s.profile.clone(), keys.clone())?);
        let r = run_with(&s, &tls, plan)?;
        on_step(&r);
        let p99_ms = r.total.latency.as_ref().map(|p| p.p99_us as f64 / 1000.0);
        let sent = r.total.ok + r.total.errors;
        let err_ratio = r.total.errors as f64 / (sent.max(1)) as f64;
        let achieved = r.total.throughput_per_s;
        // Only the generator's own CPU makes a step "generator-bound"; send
        // lag alone is also what a server's backpressure looks like.
        let gen_limited = r.warnings.iter().any(|w| w.starts_with("generator CPU"));
        let mut notes = Vec::new();
        if p99_ms.is_none_or(|p| p > cap.slo_p99_ms) {
            notes.push(format!("p99 over {} ms", cap.slo_p99_ms));
        }
        if err_ratio > cap.max_error_ratio {
            notes.push(format!("{} errors", r.total.errors));
        }
        // Against what this step really scheduled, not the nominal rate: a
        // Poisson count over a few seconds at a few hundred req/s is itself
        // several % off the rate (250 arrivals: sd 6%), which failed steps of
        // a healthy server. Unanswered requests are errors (timeouts), so a
        // server that falls behind still fails here or on p99.
        let scheduled = (sent as f64 / cap.step_duration_s).min(rate);
        if achieved < CAPACITY_MIN_ACHIEVED * scheduled {
            notes.push(format!(
                "achieved only {:.0}% of the {scheduled:.0}/s scheduled",
                100.0 * achieved / scheduled
            ));
        }
        let held = notes.is_empty();
        if gen_limited {
            notes.push("generator-bound".into());
        }
        steps.push(CapacityStep {
            offered_per_s: rate,
            achieved_per_s: achieved,
            p99_ms,
            errors: r.total.errors,
            held,
            note: notes.join("; "),
        });
        if !held {
            break;
        }
        highest = Some(rate);
        if gen_limited {
            generator_bound = true;
            break;
        }
        rate *= cap.step_factor;
    }
    Ok(CapacityReport {
        server: spec.server.to_string(),
        spec: cap.clone(),
        steps,
        highest_held_per_s: highest,
        generator_bound,
    })
}

/// Run the same spec against each server in turn.
pub fn compare(spec: &LoadSpec, servers: &[SocketAddr]) -> Result<Vec<Report>, LoadgenError> {
    if !(2..=MAX_COMPARE_SERVERS).contains(&servers.len()) {
        return Err(LoadgenError::CompareServers(servers.len()));
    }
    servers
        .iter()
        .map(|s| {
            let mut one = spec.clone();
            one.server = *s;
            if let Some(p) = &spec.hdr_log {
                one.hdr_log = Some(suffixed(p, &s.to_string()));
            }
            run(&one).map_err(|e| LoadgenError::RunAgainst {
                server: *s,
                source: Box::new(e),
            })
        })
        .collect()
}

/// `run.hlog` + `127.0.0.1:2407` → `run.127.0.0.1_2407.hlog`.
fn suffixed(p: &std::path::Path, tag: &str) -> PathBuf {
    let tag = tag.replace([':', '/', '[', ']'], "_");
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(e) => format!("{stem}.{tag}.{}", e.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    p.with_file_name(name)
}

/// `keycore loadgen`: every setting of the traffic model as a flag; a
/// profile file supplies defaults that flags override.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Key server address (host:port). Give it two or more times to compare
    /// servers side by side with the same profile.
    #[arg(long = "server", required = true, value_name = "HOST:PORT")]
    pub servers: Vec<String>,
    /// CA certificate(s) (PEM) the server certificate must chain to.
    #[arg(long, value_name = "PEM")]
    pub ca: PathBuf,
    /// Client certificate chain (PEM) presented to the server (keyless
    /// load; not used with --handshakes).
    #[arg(long, value_name = "PEM", required_unless_present = "handshakes")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(
        long = "key",
        value_name = "PEM",
        required_unless_present = "handshakes"
    )]
    pub client_key: Option<PathBuf>,
    /// Name to verify the server certificate against. Default: the server's IP.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Public keys, certificates or private keys (PEM or DER), as files or
    /// directories; repeat as needed. Their SKIs name keys on the wire.
    #[arg(
        long = "keys",
        required_unless_present = "handshakes",
        value_name = "PATH"
    )]
    pub keys: Vec<PathBuf>,
    /// Profile file (YAML, or JSON if it ends in .json); flags override it.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,

    /// open (default) or closed loop.
    #[arg(long, value_parser = ["open", "closed"])]
    pub mode: Option<String>,
    /// Open loop: total requests per second. Default 1000.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: poisson (default) or constant arrivals.
    #[arg(long, value_parser = ["poisson", "constant"])]
    pub arrivals: Option<String>,
    /// Closed loop: requests outstanding. Default 64.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Measured seconds. Default 30.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Warm-up seconds (load offered but not counted). Default 5.
    #[arg(long, value_name = "SECONDS")]
    pub warmup: Option<f64>,
    /// Seconds over which the open-loop rate ramps from 1% to --rate. Default 0.
    #[arg(long, value_name = "SECONDS")]
    pub ramp: Option<f64>,
    /// Operation mix, e.g. "ecdsa-p256-sha256=70,rsa-pss-sha256=20,rsa-pkcs1-sha256=8,rsa-decrypt=2"
    /// (also: ed25519, ping). Default: that mix, minus operations without keys.
    #[arg(long)]
    pub mix: Option<String>,
    /// Use only the first K keys (files in name order). Default: all.
    #[arg(long = "num-keys", value_name = "K")]
    pub num_keys: Option<usize>,
    /// Zipf exponent of key popularity (0 = uniform). Default 1.0.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Edge connections in total. Default 8.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Replace each connection after this many seconds (churn). Default: never.
    #[arg(long, value_name = "SECONDS")]
    pub conn_lifetime: Option<f64>,
    /// Per-request timeout, ms (from the scheduled time in open loop). Default 5000.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Fraction of responses verified with the public key. Default 1.
    #[arg(long)]
    pub verify_fraction: Option<f64>,
    /// Add SNI items.
    #[arg(long)]
    pub sni: bool,
    /// Add client IP items (198.18.0.0/15).
    #[arg(long)]
    pub client_ip: bool,
    /// Add this server IP item.
    #[arg(long, value_name = "IP")]
    pub server_ip: Option<std::net::IpAddr>,
    /// Generator cores (pinned executors). Default 1.
    #[arg(long)]
    pub cores: Option<usize>,
    /// First CPU to pin to. Default: the machine's last CPUs.
    #[arg(long)]
    pub first_cpu: Option<usize>,
    /// Offer only TLS 1.2 with ECDHE-{ECDSA,RSA}-AES256-GCM-SHA384, like the edge.
    #[arg(long)]
    pub tls12_only: bool,
    /// Random seed (same seed, same request sequence).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Open loop: requests outstanding per generator core at most; further
    /// arrivals are counted as "not sent". Default 262144.
    #[arg(long)]
    pub max_outstanding_per_core: Option<usize>,
    /// Microseconds each generator executor polls for work before it sleeps
    /// (spinning keeps a sleeping CPU's wake-up delay out of the measured
    /// latency, on a CPU nothing else wants). Default 0: sleep at once.
    #[arg(long, value_name = "US")]
    pub spin_us: Option<u64>,

    /// Print the report as JSON on stdout (live lines still go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// After the run, measure the generator's own latency floor: the same
    /// shape, pings only, against a do-nothing responder in this process
    /// (at most 5 s), and print it under the report.
    #[arg(long)]
    pub floor: bool,
    /// Write an HdrHistogram interval log (one tag per operation) to this file.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
    /// No live line.
    #[arg(long)]
    pub quiet: bool,

    /// Replay recordings of `keycore serve` (record_file; rotated files of
    /// one recording, or several servers' recordings, merge on the clock)
    /// in open loop: the recorded opcodes, keys (by SKI, among --keys) and
    /// connections at the recorded times. --connections, --cores,
    /// --timeout-ms, --verify-fraction still apply; --rate, --mix,
    /// --duration and --warmup come from the recording.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub replay: Vec<PathBuf>,
    /// Replay: rate multiplier K (recorded inter-arrival gaps divided by K). Default 1.
    #[arg(long, value_name = "K")]
    pub scale: Option<f64>,
    /// Replay: use target key NEW for requests recorded with key OLD
    /// ("OLD_SKI=NEW_SKI", hex; repeat or comma-separate). A recorded SKI
    /// neither among --keys nor mapped is refused.
    #[arg(long = "replay-map", value_name = "OLD=NEW")]
    pub replay_map: Vec<String>,
    /// Replay: skip (and count) recorded requests the generator cannot send
    /// (opcodes other than the six it knows, keys named by digest) instead
    /// of refusing the recording.
    #[arg(long)]
    pub replay_skip_unsupported: bool,

    /// Handshake mode: new TLS connections at --rate per second to an HTTPS
    /// edge (`keycore edge`), one `GET /` each; measures connect, handshake
    /// and first byte. Uses --server (the edge), --ca, --server-name (SNI,
    /// default localhost), --rate, --arrivals, --duration, --warmup,
    /// --timeout-ms, --cores, --first-cpu, --tls12-only,
    /// --max-outstanding-per-core, --json, --html, --hdr-log, --quiet.
    #[arg(long)]
    pub handshakes: bool,
    /// Handshake mode: fraction of connections allowed to resume a TLS
    /// session (0 = every handshake full, the default).
    #[arg(long, value_name = "0..1")]
    pub resume_ratio: Option<f64>,
    /// Handshake mode: Prometheus URL (http://HOST:PORT/metrics) of the edge
    /// or key server, to report the keyless share of handshake time.
    #[arg(long, value_name = "URL")]
    pub keyserver_metrics: Option<String>,

    /// Capacity mode: step the rate up until p99 passes --slo-p99-ms or
    /// errors appear; report the highest rate that held.
    #[arg(long)]
    pub capacity: bool,
    /// Capacity: p99 SLO in ms. Default 10.
    #[arg(long, value_name = "MS")]
    pub slo_p99_ms: Option<f64>,
    /// Capacity: first rate. Default 100.
    #[arg(long)]
    pub start_rate: Option<f64>,
    /// Capacity: rate multiplier per step. Default 1.5.
    #[arg(long)]
    pub step_factor: Option<f64>,
    /// Capacity: measured seconds per step. Default 10.
    #[arg(long, value_name = "SECONDS")]
    pub step_duration: Option<f64>,
    /// Capacity: tolerated failed fraction per step. Default 0.
    #[arg(long)]
    pub max_error_ratio: Option<f64>,

    /// Comparison report: a capacity search against each --server in turn
    /// and one HTML page side by side (curves, knees, errors, operation
    /// latency, published ceilings), written to FILE. Run by the `keycore`
    /// binary (keycore-tuning owns the report).
    #[arg(long, value_name = "FILE")]
    pub compare_report: Option<PathBuf>,
    /// Comparison report: SERVER=NAME names a backend; an hsmsim profile name
    /// or aws-kms / azure-key-vault-premium / gcp-kms overlays its published
    /// ceiling.
    #[arg(long, value_name = "SERVER=NAME")]
    pub label: Vec<String>,
    /// Comparison report: SERVER=PATH uses these keys (public halves) for
    /// that server instead of --keys (a cloud stand-in holds its own keys).
    #[arg(long, value_name = "SERVER=PATH")]
    pub backend_keys: Vec<String>,
}

/// `host:port` to its first address.
pub fn resolve(s: &str) -> Result<SocketAddr, LoadgenError> {
    s.to_socket_addrs()
        .map_err(|source| LoadgenError::Resolve {
            addr: s.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| LoadgenError::NoAddress(s.to_string()))
}

impl LoadgenArgs {
    /// The profile: file (if any), then flags on top.
    pub fn to_profile(&self) -> Result<Profile, LoadgenError> {
        let mut p = match &self.profile {
            Some(f) => Profile::from_file(f)?,
            None => Profile::default(),
        };
        if let Some(m) = &self.mode {
            p.mode = if m == "closed" {
                LoopMode::Closed
            } else {
                LoopMode::Open
            };
        }
        if let Some(a) = &self.arrivals {
            p.arrivals = if a == "constant" {
                Arrivals::Constant
            } else {
                Arrivals::Poisson
            };
        }
        macro_rules! set {
            ($($field:ident <- $flag:ident),*) => {$( if let Some(v) = self.$flag { p.$field = v; } )*};
        }
        set!(rate <- rate, concurrency <- concurrency, duration_s <- duration, warmup_s <- warmup,
             ramp_s <- ramp, zipf_exponent <- zipf, connections <- connections,
             timeout_ms <- timeout_ms, verify_fraction <- verify_fraction, cores <- cores,
             max_outstanding_per_core <- max_outstanding_per_core, spin_us <- spin_us);
        if let Some(m) = &self.mix {
            p.mix = Profile::parse_mix(m)?;
        }
        if self.num_keys.is_some() {
            p.keys = self.num_keys;
        }
        if self.conn_lifetime.is_some() {
            p.conn_lifetime_s = self.conn_lifetime;
        }
        if self.server_ip.is_some() {
            p.server_ip = self.server_ip;
        }
        if self.first_cpu.is_some() {
            p.first_cpu = self.first_cpu;
        }
        if self.seed.is_some() {
            p.seed = self.seed;
        }
        p.sni |= self.sni;
        p.client_ip |= self.client_ip;
        p.tls12_only |= self.tls12_only;
        p.validate()?;
        Ok(p)
    }

    /// The spec for the first server.
    pub fn to_spec(&self) -> Result<LoadSpec, LoadgenError> {
        let first = self
            .servers
            .first()
            .ok_or(LoadgenError::MissingFlag("--server"))?;
        Ok(LoadSpec {
            server: resolve(first)?,
            tls: ClientTlsPaths {
                ca: self.ca.clone(),
                cert: self
                    .cert
                    .clone()
                    .ok_or(LoadgenError::MissingFlag("--cert"))?,
                key: self
                    .client_key
                    .clone()
                    .ok_or(LoadgenError::MissingFlag("--key"))?,
            },
            server_name: self.server_name.clone(),
            keys: self.keys.clone(),
            profile: self.to_profile()?,
            live: !self.quiet,
            hdr_log: self.hdr_log.clone(),
            replay: self.replay_options()?,
        })
    }

    /// The replay the flags describe, if `--replay` is given.
    pub fn replay_options(&self) -> Result<Option<replay::ReplayOptions>, LoadgenError> {
        if self.replay.is_empty() {
            if self.scale.is_some() || !self.replay_map.is_empty() || self.replay_skip_unsupported {
                return Err(LoadgenError::ReplayOptionsWithoutReplay);
            }
            return Ok(None);
        }
        if self.servers.len() != 1 || self.capacity || self.compare_report.is_some() {
            return Err(LoadgenError::ReplayNotAlone);
        }
        Ok(Some(replay::ReplayOptions {
            files: self.replay.clone(),
            scale: self.scale.unwrap_or(1.0),
            map: replay::parse_map(&self.replay_map)?,
            skip_unsupported: self.replay_skip_unsupported,
            connections: self.connections,
        }))
    }

    /// The capacity search the flags describe.
    pub fn capacity_spec(&self) -> CapacitySpec {
        let d = CapacitySpec::default();
        CapacitySpec {
            start_rate: self.start_rate.unwrap_or(d.start_rate),
            step_factor: self.step_factor.unwrap_or(d.step_factor),
            step_duration_s: self.step_duration.unwrap_or(d.step_duration_s),
            step_warmup_s: self.warmup.unwrap_or(d.step_warmup_s),
            slo_p99_ms: self.slo_p99_ms.unwrap_or(d.slo_p99_ms),
            max_error_ratio: self.max_error_ratio.unwrap_or(d.max_error_ratio),
            max_steps: d.max_steps,
        }
    }
}

/// `keycore loadgen ...`: run, capacity, compare or handshakes, and print.
pub fn run_cli(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    if args.handshakes {
        return Ok(handshake::run_cli(args)?);
    }
    if args.compare_report.is_some() {
        return Err(LoadgenError::CompareReportElsewhere);
    }
    let spec = args.to_spec()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write = |path: &std::path::Path, text: String| {
        std::fs::write(path, text).map_err(|source| LoadgenError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    if args.capacity {
        if args.servers.len() != 1 {
            return Err(LoadgenError::CapacityOneServer);
        }
        let live = spec.live;
        let rep = capacity(&spec, &args.capacity_spec(), &mut |r| {
            if live {
                eprintln!(
                    "step {:.1} req/s: achieved {:.1}/s, p99 {}, errors {}",
                    r.profile.rate,
                    r.total.throughput_per_s,
                    r.total
                        .latency
                        .as_ref()
                        .map_or("-".into(), |p| report::ms(p.p99_us)),
                    r.total.errors
                );
            }
        })?;
        let printed = if args.json {
            json_line(&mut out, &rep)
        } else {
            rep.print_text(&mut out)
        };
        return printed.map_err(LoadgenError::Output);
    }
    if args.servers.len() > 1 {
        let servers = args
            .servers
            .iter()
            .map(|s| resolve(s))
            .collect::<Result<Vec<_>, _>>()?;
        let reports = compare(&spec, &servers)?;
        let printed = if args.json {
            let v: Vec<serde_json::Value> = reports.iter().map(Report::to_json).collect();
            json_line(&mut out, &v)
        } else {
            reports
                .iter()
                .try_for_each(|r| {
                    r.print_text(&mut out)?;
                    writeln!(out)
                })
                .and_then(|()| report::print_compare(&reports, &mut out))
        };
        printed.map_err(LoadgenError::Output)?;
        if let Some(h) = &args.html {
            for r in &reports {
                write(&suffixed(h, &r.server), r.to_html())?;
            }
        }
        return Ok(());
    }
    let r = run(&spec)?;
    // After the run, not before, so that the floor does not load the
    // machine while the server is measured.
    let fl = if args.floor {
        Some(floor::floor(&spec)?)
    } else {
        None
    };
    let printed = if args.json {
        let mut v = r.to_json();
        if let (Some(f), Some(o)) = (&fl, v.as_object_mut()) {
            o.insert(
                "generator_floor".into(),
                f.total
                    .latency
                    .as_ref()
                    .map_or(serde_json::Value::Null, |p| {
                        serde_json::to_value(p).unwrap_or_default()
                    }),
            );
        }
        json_line(&mut out, &v)
    } else {
        r.print_text(&mut out).and_then(|()| match &fl {
            Some(f) => writeln!(out, "{}", floor::floor_line(f)),
            None => Ok(()),
        })
    };
    printed.map_err(LoadgenError::Output)?;
    if let Some(h) = &args.html {
        write(h, r.to_html())?;
    }
    Ok(())
}

/// `v` as pretty JSON and a newline.
fn json_line(out: &mut dyn Write, v: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn parse(extra: &[&str]) -> LoadgenArgs {
        let mut v = vec![
            "loadgen",
            "--server",
            "127.0.0.1:2407",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "--keys",
            "keys/",
        ];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().args
    }

    #[test]
    fn flags_override_the_profile_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "rate: 500\nconnections: 3\nsni: true\n").unwrap();
        let a = parse(&[
            "--profile",
            f.to_str().unwrap(),
            "--rate",
            "2000",
            "--mix",
            "ping=1",
            "--mode",
            "closed",
            "--conn-lifetime",
            "7.5",
        ]);
        let p = a.to_profile().unwrap();
        assert_eq!(p.rate, 2000.0);
        assert_eq!(p.connections, 3);
        assert!(p.sni);
        assert_eq!(p.mode, LoopMode::Closed);
        assert_eq!(p.conn_lifetime_s, Some(7.5));
        assert_eq!(p.mix.len(), 1);
        let spec = a.to_spec().unwrap();
        assert_eq!(spec.server.port(), 2407);
        assert!(spec.live);
    }

    #[test]
    fn bad_flags_are_rejected() {
        assert!(parse(&["--verify-fraction", "2"]).to_profile().is_err());
        assert!(
            parse(&["--mix", "rsa-md5=1"]).to_spec().is_ok(),
            "mix names are checked against keys in run()"
        );
        let e = parse(&["--mix", "nonsense"])
            .to_profile()
            .unwrap_err()
            .to_string();
        assert!(e.contains("name=weight"), "{e}");
        let mut a = parse(&[]);
        a.servers = vec!["not an address".into()];
        assert!(
            matches!(&a.to_spec(), Err(LoadgenError::Resolve { addr, .. }) if addr == "not an address"),
            "{:?}",
            a.to_spec()
        );
        let mut a = parse(&[]);
        a.cert = None;
        assert!(matches!(
            a.to_spec(),
            Err(LoadgenError::MissingFlag("--cert"))
        ));
        assert!(matches!(
            parse(&["--scale", "2"]).to_spec(),
            Err(LoadgenError::ReplayOptionsWithoutReplay)
        ));
        // A part's error passes through unchanged (same text, same source).
        let e = parse(&["--verify-fraction", "2"]).to_profile().unwrap_err();
        assert!(matches!(e, LoadgenError::Profile(_)), "{e:?}");
    }

    /// A comparison run's failure names its server and keeps the run's
    /// error as the source, so the binary prints the whole chain.
    #[test]
    fn a_comparison_failure_names_the_server_and_keeps_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ClientTlsPaths {
            ca: dir.path().join("no-ca.pem"),
            cert: dir.path().join("no-cert.pem"),
            key: dir.path().join("no-key.pem"),
        };
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let spec = LoadSpec::new(a, missing, vec![]);
        let e = compare(&spec, &[a, b]).unwrap_err();
        assert!(
            matches!(&e, LoadgenError::RunAgainst { server, source }
                if *server == a && matches!(**source, LoadgenError::Tls(_))),
            "{e:?}"
        );
        let text = keycore_keys::error_chain(&e);
        assert!(
            text.starts_with("run against 127.0.0.1:9: ") && text.contains("no-ca.pem"),
            "{text}"
        );
        assert!(matches!(
            compare(&spec, &[a]),
            Err(LoadgenError::CompareServers(1))
        ));
    }

    #[test]
    fn hdr_log_names_get_the_server_suffix() {
        let p = suffixed(std::path::Path::new("/tmp/run.hlog"), "127.0.0.1:2407");
        assert_eq!(p, PathBuf::from("/tmp/run.127.0.0.1_2407.hlog"));
    }

    #[test]
    fn run_end_to_end_against_the_test_server_with_every_output() {
        let srv = testsrv::TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut spec = LoadSpec::new(srv.addr, srv.tls.clone(), vec![srv.key_dir.clone()]);
        spec.profile.rate = 300.0;
        spec.profile.duration_s = 1.0;
        spec.profile.warmup_s = 0.5;
        spec.profile.connections = 2;
        spec.hdr_log = Some(dir.path().join("r.hlog"));
        let r = run(&spec).unwrap();
        // Default mix on EC + RSA + Ed25519 keys: the test server can't do
        // raw RSA decrypt, so those come back as crypto errors.
        assert!(r.total_ok() > 200, "{}", r.total_ok());
        assert!(
            r.errors.iter().all(|e| e.op == "rsa-decrypt"),
            "{:?}",
            r.errors
        );
        assert_eq!(r.ops.len(), 4);
        let mut text = Vec::new();
        r.print_text(&mut text).unwrap();
        assert!(String::from_utf8(text).unwrap().contains("rsa-pss-sha256"));
        assert!(std::fs::read_to_string(dir.path().join("r.hlog"))
            .unwrap()
            .contains("HIST"));
        assert_eq!(r.to_json()["total"]["ok"].as_u64(), Some(r.total_ok()));
    }

    #[test]
    fn capacity_finds_the_rate_where_a_slow_server_breaks_the_slo() {
        let srv = testsrv::TestServer::start();
        // Every batch takes 20 ms: p99 stays under a 50 ms SLO at low rates
        // and breaks once batches queue behind each other.
        srv.knobs
            .delay_ms
            .store(20, std::sync::atomic::Ordering::Relaxed);
        let mut spec = LoadSpec::new(srv.addr, srv.tls.clone(), vec![srv.key_dir.clone()]);
        spec.profile.mix = Profile::parse_mix("ping=1").unwrap();
        spec.profile.connections = 1;
        spec.profile.arrivals = Arrivals::Constant;
        spec.profile.timeout_ms = 1000;
        let cap = CapacitySpec {
            start_rate: 20.0,
            step_factor: 4.0,
            step_duration_s: 0.5,
            step_warmup_s: 0.0,
            slo_p99_ms: 35.0,
            max_error_ratio: 0.0,
            max_steps: 10,
        };
        let mut seen = 0;
        let rep = capacity(&spec, &cap, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, rep.steps.len());
        assert!(rep.highest_held_per_s.is_some(), "{rep:?}");
        assert!(!rep.steps.last().unwrap().held, "{rep:?}");
        let mut out = Vec::new();
        rep.print_text(&mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("highest rate that held"));
    }
}
