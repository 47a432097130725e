//! `keycore loadgen --handshakes`: visitor load against an HTTPS edge.
//!
//! Opens new TLS connections at an open-loop rate (Poisson or constant
//! arrivals, the same [`Schedule`] as the keyless load), sends one
//! `GET /` on each and measures, per connection: TCP connect, TLS handshake,
//! time to the first response byte, and the total from the connection's
//! *scheduled* time to that first byte (what a visitor waits, so a stalled
//! edge shows in the tail instead of slowing the generator down). No session
//! resumption unless `--resume-ratio` asks for it (then that fraction of
//! connections uses a client with a session cache, and resumed handshakes
//! are counted apart).
//!
//! With `--keyserver-metrics URL` it scrapes a Prometheus endpoint before and
//! after the measured window and reports the mean keyless round trip over
//! the window next to the mean handshake: the edge's
//! `keycore_edge_keyless_rtt_seconds` if the URL is the edge's, else the key
//! server's `keyless_request_total_duration_per_opcode`.
//!
//! Owns: the handshake generator, its statistics and report. It reuses the
//! keyless generator's schedule, histogram bounds, percentiles, HTML charts
//! and HdrHistogram log; it sends nothing but TLS and one HTTP request, and
//! only to the address given.

use crate::profile::{Arrivals, Schedule};
use crate::report::{self, HdrLog, Percentiles};
use crate::runner::RunError;
use crate::stats::{new_hist, record};
use crate::tls::read_certs;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rustls_pki_types::ServerName;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest response read per connection (the edge's page is ~0.5 KiB);
/// the rest is left unread when the connection closes.
const MAX_RESPONSE: usize = 64 * 1024;

/// Generator CPU (percent of its cores) from which the report warns that the
/// generator, not the edge, may be what limits the rate.
const GENERATOR_BOUND_PCT: f64 = 90.0;

/// Phases measured on each connection, in report order.
/// Full and resumed handshakes are kept apart: with a slow key server the
/// first wait for a signature, the second must not wait at all.
pub const PHASES: [&str; 5] = [
    "total",
    "connect",
    "handshake-full",
    "handshake-resumed",
    "first-byte",
];

/// A handshake load test.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HandshakeSpec {
    /// The edge.
    pub server: SocketAddr,
    /// SNI and the name the certificate is checked against.
    pub server_name: String,
    /// CA certificate(s) (PEM) the edge's certificate must chain to.
    pub ca: PathBuf,
    /// New connections per second, over all generator cores.
    pub rate: f64,
    /// Poisson or constant arrivals.
    pub arrivals: Arrivals,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds (offered, not counted).
    pub warmup_s: f64,
    /// Fraction of connections that may resume a session (0: every
    /// handshake is full, which is what costs a signature).
    pub resume_ratio: f64,
    /// Offer TLS 1.2 only.
    pub tls12_only: bool,
    /// From scheduled time to first byte at most, ms.
    pub timeout_ms: u64,
    /// Generator executors.
    pub cores: usize,
    /// First CPU to pin to (`None`: the machine's last CPUs).
    pub first_cpu: Option<usize>,
    /// Connections in flight per core at most; arrivals beyond are counted
    /// "not sent".
    pub max_outstanding_per_core: usize,
    /// Prometheus URL (http://HOST:PORT/path) to read the keyless share from.
    pub keyserver_metrics: Option<String>,
    /// Random seed.
    pub seed: u64,
    /// Print a line per second per core to stderr.
    #[serde(skip)]
    pub live: bool,
    /// HdrHistogram interval log.
    pub hdr_log: Option<PathBuf>,
}

impl HandshakeSpec {
    /// Defaults for an edge at `server` trusted through `ca`.
    pub fn new(server: SocketAddr, ca: PathBuf) -> HandshakeSpec {
        HandshakeSpec {
            server,
            server_name: "localhost".into(),
            ca,
            rate: 100.0,
            arrivals: Arrivals::Poisson,
            duration_s: 10.0,
            warmup_s: 2.0,
            resume_ratio: 0.0,
            tls12_only: false,
            timeout_ms: 5000,
            cores: 1,
            first_cpu: None,
            max_outstanding_per_core: 4096,
            keyserver_metrics: None,
            seed: 1,
            live: false,
            hdr_log: None,
        }
    }
}

/// Why a connection did not count as OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HsError {
    /// TCP connect failed.
    Connect,
    /// The TLS handshake failed (alert, bad certificate, closed).
    Tls,
    /// No first byte by the deadline.
    Timeout,
    /// The response was not `HTTP/1.1 200`.
    Http,
    /// Not started: too many connections already in flight.
    NotSent,
}

impl HsError {
    const fn name(self) -> &'static str {
        match self {
            HsError::Connect => "connect",
            HsError::Tls => "tls",
            HsError::Timeout => "timeout",
            HsError::Http => "http",
            HsError::NotSent => "not-sent",
        }
    }
}

/// Why a handshake run could not start or finish (a connection's own
/// failure is an [`HsError`] in the report, not this).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A setting outside its range.
    #[error("{flag} must be {rule}")]
    Setting {
        /// The flag.
        flag: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// `--handshakes` with more than one `--server`.
    #[error("--handshakes takes one --server (the edge)")]
    OneServer,
    /// The edge address does not resolve.
    #[error("edge address {addr:?}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The edge address resolves to no address.
    #[error("edge address {0:?} resolves to nothing")]
    NoAddress(String),
    /// The CA file could not be read.
    #[error(transparent)]
    Ca(#[from] crate::TlsConfigError),
    /// A CA certificate rustls refuses as a trust anchor.
    #[error("CA certificate")]
    CaCert(#[source] rustls::Error),
    /// The TLS version choice (rustls refuses the provider's suites).
    #[error("TLS versions")]
    TlsVersions(#[source] rustls::Error),
    /// `--server-name` is not a DNS name or IP address.
    #[error("server name {name:?}")]
    ServerName {
        /// The name.
        name: String,
        /// rustls' reason.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// A generator executor could not start.
    #[error(transparent)]
    Spawn(#[from] RunError),
    /// A generator executor ended abnormally (glommio's error, as text: it
    /// is not `Send`).
    #[error("generator executor {id}: {reason}")]
    Executor {
        /// The executor.
        id: usize,
        /// glommio's reason.
        reason: String,
    },
    /// The thread scraping the metrics before the window panicked.
    #[error("scrape thread")]
    ScrapeThread,
    /// Scraping `--keyserver-metrics` failed.
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    /// The HdrHistogram log could not be created.
    #[error(transparent)]
    HdrLog(#[from] crate::report::HdrLogError),
    /// The HdrHistogram log could not be written.
    #[error("writing HdrHistogram log {}", path.display())]
    HdrLogWrite {
        /// The log.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTML report could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report could not be written to stdout.
    #[error("writing the report")]
    Output(#[source] std::io::Error),
}

/// Why a Prometheus scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Not an `http://` URL.
    #[error("{0}: only http:// metrics URLs")]
    NotHttp(String),
    /// The host does not resolve, or the connection or transfer failed.
    #[error("{url}")]
    Io {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host resolves to no address.
    #[error("{0}: no address")]
    NoAddress(String),
    /// The server answered with something other than 200.
    #[error("{url}: {status}")]
    Status {
        /// The URL.
        url: String,
        /// The answer's status line as the server sent it ("no answer" if empty).
        status: String,
    },
}

/// Outcomes and phase histograms (µs) of a set of connections.
#[derive(Clone, Debug)]
pub struct HsStats {
    /// One histogram per [`PHASES`] entry.
    pub hists: Vec<Histogram<u64>>,
    /// Full handshakes that succeeded.
    pub full: u64,
    /// Resumed handshakes that succeeded.
    pub resumed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<HsError, u64>,
}

impl Default for HsStats {
    fn default() -> Self {
        HsStats {
            hists: PHASES.iter().map(|_| new_hist()).collect(),
            full: 0,
            resumed: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl HsStats {
    fn merge(&mut self, o: &HsStats) {
        for (a, b) in self.hists.iter_mut().zip(&o.hists) {
            let _ = a.add(b);
        }
        self.full += o.full;
        self.resumed += o.resumed;
        for (k, v) in &o.errors {
            *self.errors.entry(*k).or_default() += v;
        }
    }

    fn ok(&self) -> u64 {
        self.full + self.resumed
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One phase's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhaseRow {
    /// Phase name.
    pub phase: &'static str,
    /// Percentiles (µs), if any connection got that far.
    pub latency: Option<Percentiles>,
}

/// The keyless share of the handshake, from a metrics endpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeylessShare {
    /// The series read.
    pub source: String,
    /// Keyless calls in the window.
    pub calls: u64,
    /// Mean keyless time, µs.
    pub mean_us: f64,
    /// Mean time of full TLS handshakes in the window, µs.
    pub handshake_mean_us: f64,
}

/// The result of a handshake run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HsReport {
    /// What was run.
    pub spec: HandshakeSpec,
    /// Successful connections per second in the measured window.
    pub handshakes_per_s: f64,
    /// Full handshakes.
    pub full: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Per phase.
    pub phases: Vec<PhaseRow>,
    /// Per second: (end of interval s, ok/s, p50 µs, p99 µs, max µs) of the total.
    pub timeline: Vec<(f64, f64, u64, u64, u64)>,
    /// The keyless share, with `--keyserver-metrics`.
    pub keyless: Option<KeylessShare>,
    /// Generator CPU over the measured window, percent of its cores.
    pub generator_cpu_pct: f64,
    /// Generator CPUs (pinned executors).
    pub cpus: Vec<Option<usize>>,
    /// Final histograms per phase (not serialised).
    #[serde(skip)]
    pub hists: Vec<Histogram<u64>>,
}

struct Shared {
    interval: RefCell<HsStats>,
    totals: RefCell<HsStats>,
    in_flight: Cell<usize>,
}

/// Build the client configs: (no resumption, with a session cache).
fn client_configs(
    spec: &HandshakeSpec,
) -> Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>), HandshakeError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&spec.ca)? {
        roots.add(c).map_err(HandshakeError::CaCert)?;
    }
    let prov = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(prov);
    let b = if spec.tls12_only {
        b.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        b.with_safe_default_protocol_versions()
    }
    .map_err(HandshakeError::TlsVersions)?;
    let mut base = b.with_root_certificates(roots).with_no_client_auth();
    base.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut fresh = base.clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let mut resume = base;
    resume.resumption = rustls::client::Resumption::in_memory_sessions(1024);
    Ok((Arc::new(fresh), Arc::new(resume)))
}

/// Run the handshake load and report.
pub fn run(spec: &HandshakeSpec) -> Result<HsReport, HandshakeError> {
    let checks = [
        (spec.rate > 0.0, "--rate", "positive"),
        (spec.cores >= 1, "--cores", "at least 1"),
        (
            (0.0..=1.0).contains(&spec.resume_ratio),
            "--resume-ratio",
            "within 0..1",
        ),
        (
            spec.duration_s > 0.0 && spec.duration_s <= 86_400.0,
            "--duration",
            "within (0, 86400] s",
        ),
    ];
    if let Some(&(_, flag, rule)) = checks.iter().find(|c| !c.0) {
        return Err(HandshakeError::Setting { flag, rule });
    }
    let (fresh, resume) = client_configs(spec)?;
    let name = ServerName::try_from(spec.server_name.clone()).map_err(|source| {
        HandshakeError::ServerName {
            name: spec.server_name.clone(),
            source,
        }
    })?;
    let cpus = crate::runner::pick_cpus(spec.cores, spec.first_cpu);
    let start = Instant::now() + Duration::from_millis(50);
    let warm_end = start + Duration::from_secs_f64(spec.warmup_s);
    let end = warm_end + Duration::from_secs_f64(spec.duration_s);
    let scrape_before = spec.keyserver_metrics.as_ref().map(|u| {
        (
            u.clone(),
            std::thread::spawn({
                let u = u.clone();
                move || {
                    // Read at the end of the warm-up.
                    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
                    scrape(&u)
                }
            }),
        )
    });
    let mut handles = Vec::new();
    for (i, cpu) in cpus.iter().enumerate() {
        let placement = match cpu {
            Some(c) => glommio::Placement::Fixed(*c),
            None => glommio::Placement::Unbound,
        };
        let (fresh, resume, name) = (fresh.clone(), resume.clone(), name.clone());
        let spec = spec.clone();
        let h = glommio::LocalExecutorBuilder::new(placement)
            // "loadgen-" so crate::sys counts this thread's CPU.
            .name(&format!("loadgen-hs-{i}"))
            .io_memory(512 * 1024)
            .spawn(move || shard(i, spec, fresh, resume, name, (start, warm_end, end)))
            .map_err(|e| RunError::Spawn {
                id: i,
                reason: e.to_string(),
            })?;
        handles.push(h);
    }
    // Generator CPU over the measured window, sampled while the executors
    // are alive (a thread's CPU time disappears with it).
    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
    let cpu0 = crate::sys::generator_cpu();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu1 = crate::sys::generator_cpu();
    let generator_cpu_pct =
        100.0 * cpu1.saturating_sub(cpu0).as_secs_f64() / (spec.duration_s * spec.cores as f64);
    let mut totals = HsStats::default();
    let mut intervals: Vec<HsStats> = Vec::new();
    for (id, h) in handles.into_iter().enumerate() {
        let (t, iv) = h.join().map_err(|e| HandshakeError::Executor {
            id,
            reason: e.to_string(),
        })?;
        totals.merge(&t);
        for (k, s) in iv.into_iter().enumerate() {
            if intervals.len() <= k {
                intervals.push(HsStats::default());
            }
            intervals[k].merge(&s);
        }
    }
    let keyless = match scrape_before {
        Some((url, before)) => {
            let before = before.join().map_err(|_| HandshakeError::ScrapeThread)??;
            let after = scrape(&url)?;
            keyless_share(&before, &after, &totals)
        }
        None => None,
    };
    if let Some(p) = &spec.hdr_log {
        let mut log = HdrLog::create(p)?;
        for (k, s) in intervals.iter().enumerate() {
            let tagged: Vec<(&str, &Histogram<u64>)> = PHASES
                .iter()
                .zip(&s.hists)
                .filter(|(_, h)| !h.is_empty())
                .map(|(n, h)| (*n, h))
                .collect();
            log.write_tagged(k as u64, &tagged)
                .map_err(|source| HandshakeError::HdrLogWrite {
                    path: p.clone(),
                    source,
                })?;
        }
    }
    let timeline = intervals
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let h = &s.hists[0];
            let (p50, p99, max) = if h.is_empty() {
                (0, 0, 0)
            } else {
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
            };
            ((k + 1) as f64, s.ok() as f64, p50, p99, max)
        })
        .collect::<Vec<_>>();
    Ok(HsReport {
        spec: spec.clone(),
        handshakes_per_s: totals.ok() as f64 / spec.duration_s,
        full: totals.full,
        resumed: totals.resumed,
        errors: totals.errors.iter().map(|(k, v)| (k.name(), *v)).collect(),
        phases: PHASES
            .iter()
            .zip(&totals.hists)
            .map(|(p, h)| PhaseRow {
                phase: p,
                latency: Percentiles::of(h),
            })
            .collect(),
        timeline,
        keyless,
        generator_cpu_pct,
        cpus,
        hists: totals.hists,
    })
}

type ShardOut = (HsStats, Vec<HsStats>);

async fn shard(
    id: usize,
    spec: HandshakeSpec,
    fresh: Arc<rustls::ClientConfig>,
    resume: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    (start, warm_end, end): (Instant, Instant, Instant),
) -> ShardOut {
    let shared = Rc::new(Shared {
        interval: RefCell::new(HsStats::default()),
        totals: RefCell::new(HsStats::default()),
        in_flight: Cell::new(0),
    });
    let intervals: Rc<RefCell<Vec<HsStats>>> = Rc::new(RefCell::new(Vec::new()));
    // Interval ticker: move the interval's stats out every second.
    let ticker = {
        let shared = shared.clone();
        let intervals = intervals.clone();
        let live = spec.live && id == 0;
        glommio::spawn_local(async move {
            let mut k = 1u32;
            loop {
                let at = start + Duration::from_secs(k as u64);
                Timer::new(at.saturating_duration_since(Instant::now())).await;
                let s = std::mem::take(&mut *shared.interval.borrow_mut());
                if live {
                    let h = &s.hists[0];
                    eprintln!(
                        "[{k:>4} s] core 0: {} ok ({} resumed), {} failed, in flight {}, p50 {} p99 {}",
                        s.ok(),
                        s.resumed,
                        s.failed(),
                        shared.in_flight.get(),
                        report::ms(if h.is_empty() { 0 } else { h.value_at_quantile(0.5) }),
                        report::ms(if h.is_empty() { 0 } else { h.value_at_quantile(0.99) }),
                    );
                }
                intervals.borrow_mut().push(s);
                if at >= end {
                    break;
                }
                k += 1;
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed.wrapping_add(id as u64 * 7919));
    let mut sched = Schedule::new(spec.rate / spec.cores as f64, 0.0, spec.arrivals);
    let timeout = Duration::from_millis(spec.timeout_ms);
    loop {
        let t = sched.next(rng.random::<f64>());
        let at = start + Duration::from_secs_f64(t);
        if at >= end {
            break;
        }
        let now = Instant::now();
        if at > now {
            Timer::new(at - now).await;
        }
        let measured = at >= warm_end;
        if shared.in_flight.get() >= spec.max_outstanding_per_core {
            let mut iv = shared.interval.borrow_mut();
            *iv.errors.entry(HsError::NotSent).or_default() += 1;
            if measured {
                *shared
                    .totals
                    .borrow_mut()
                    .errors
                    .entry(HsError::NotSent)
                    .or_default() += 1;
            }
            continue;
        }
        let cfg = if rng.random::<f64>() < spec.resume_ratio {
            resume.clone()
        } else {
            fresh.clone()
        };
        shared.in_flight.set(shared.in_flight.get() + 1);
        let (shared, name, host) = (shared.clone(), name.clone(), spec.server_name.clone());
        let addr = spec.server;
        glommio::spawn_local(async move {
            let r = futures_lite::future::or(one(addr, cfg, name, &host, at), async {
                Timer::new((at + timeout).saturating_duration_since(Instant::now())).await;
                Err(HsError::Timeout)
            })
            .await;
            shared.in_flight.set(shared.in_flight.get() - 1);
            let mut targets = vec![&shared.interval];
            if measured {
                targets.push(&shared.totals);
            }
            for t in targets {
                let mut s = t.borrow_mut();
                match &r {
                    Ok(c) => {
                        let [total, connect, hs, first] = c.phases_us;
                        record(&mut s.hists[0], total);
                        record(&mut s.hists[1], connect);
                        record(&mut s.hists[if c.resumed { 3 } else { 2 }], hs);
                        record(&mut s.hists[4], first);
                        if c.resumed {
                            s.resumed += 1;
                        } else {
                            s.full += 1;
                        }
                    }
                    Err(e) => *s.errors.entry(*e).or_default() += 1,
                }
            }
        })
        .detach();
    }
    // Every connection ends by its deadline; wait for the last ones.
    let drain_until = end + timeout + Duration::from_secs(1);
    while shared.in_flight.get() > 0 && Instant::now() < drain_until {
        Timer::new(Duration::from_millis(5)).await;
    }
    ticker.await;
    let totals = std::mem::take(&mut *shared.totals.borrow_mut());
    let iv = std::mem::take(&mut *intervals.borrow_mut());
    (totals, iv)
}

struct Conn {
    phases_us: [u64; 4],
    resumed: bool,
}

async fn one(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    host: &str,
    scheduled: Instant,
) -> Result<Conn, HsError> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|_| HsError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let t1 = Instant::now();
    let mut tls = futures_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|_| HsError::Tls)?;
    let t2 = Instant::now();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|_| HsError::Tls)?;
    tls.flush().await.map_err(|_| HsError::Tls)?;
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.map_err(|_| HsError::Http)?;
    let t3 = Instant::now();
    if n == 0 {
        return Err(HsError::Http);
    }
    let mut got = n;
    // Read the rest (bounded) so the edge's close is clean.
    while got < MAX_RESPONSE {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    if !buf[..n.min(buf.len())].starts_with(b"HTTP/1.1 200") && got == n {
        return Err(HsError::Http);
    }
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
    Ok(Conn {
        phases_us: [us(scheduled, t3), us(t0, t1), us(t1, t2), us(t2, t3)],
        resumed,
    })
}

/// GET a Prometheus text page over plain HTTP (bounded: 5 s, 8 MiB).
pub fn scrape(url: &str) -> Result<String, ScrapeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ScrapeError::NotHttp(url.to_string()))?;
    let io = |source| ScrapeError::Io {
        url: url.to_string(),
        source,
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .map_err(io)?
        .next()
        .ok_or_else(|| ScrapeError::NoAddress(url.to_string()))?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut body = Vec::new();
    c.take(8 << 20).read_to_end(&mut body).map_err(io)?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if !(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200")) {
        return Err(ScrapeError::Status {
            url: url.to_string(),
            status: text.lines().next().unwrap_or("no answer").to_string(),
        });
    }
    Ok(text)
}

/// Sum of every sample of `family` (e.g. `x_sum`), over all label sets.
fn sum_series(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            total += v;
            found = true;
        }
    }
    found.then_some(total)
}

fn keyless_share(before: &str, after: &str, totals: &HsStats) -> Option<KeylessShare> {
    let hs_mean = {
        let h = &totals.hists[2];
        if h.is_empty() {
            0.0
        } else {
            h.mean()
        }
    };
    for fam in [
        "keycore_edge_keyless_rtt_seconds",
        "keyless_request_total_duration_per_opcode",
    ] {
        let d = |suffix: &str| -> Option<f64> {
            let n = format!("{fam}{suffix}");
            Some(sum_series(after, &n)? - sum_series(before, &n)?)
        };
        if let (Some(sum), Some(count)) = (d("_sum"), d("_count")) {
            if count > 0.0 {
                return Some(KeylessShare {
                    source: fam.into(),
                    calls: count as u64,
                    mean_us: sum / count * 1e6,
                    handshake_mean_us: hs_mean,
                });
            }
        }
    }
    None
}

impl HsReport {
    /// The human report.
    pub fn print_text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let s = &self.spec;
        writeln!(
            w,
            "keycore loadgen --handshakes against {} (SNI {})",
            s.server, s.server_name
        )?;
        writeln!(
            w,
            "  open loop, {:?} arrivals at {} new connections/s; {} s measured after {} s warm-up; resume ratio {}; {}; {} generator core(s) {:?}",
            s.arrivals,
            s.rate,
            s.duration_s,
            s.warmup_s,
            s.resume_ratio,
            if s.tls12_only { "TLS 1.2 only" } else { "TLS 1.3 and 1.2 offered" },
            s.cores,
            self.cpus
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "  handshakes/s: {:.1} OK ({} full, {} resumed); failed: {}",
            self.handshakes_per_s,
            self.full,
            self.resumed,
            if self.errors.is_empty() {
                "none".to_string()
            } else {
                self.errors
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )?;
        writeln!(
            w,
            "  {:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "phase (ms)", "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        let label = |p: &str| match p {
            "total" => "total (scheduled -> first byte)",
            "connect" => "TCP connect",
            "handshake-full" => "TLS handshake, full",
            "handshake-resumed" => "TLS handshake, resumed",
            _ => "request -> first byte",
        };
        for r in &self.phases {
            match &r.latency {
                Some(p) => writeln!(
                    w,
                    "  {:<34} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                    label(r.phase),
                    p.p50_us as f64 / 1e3,
                    p.p90_us as f64 / 1e3,
                    p.p99_us as f64 / 1e3,
                    p.p999_us as f64 / 1e3,
                    p.max_us as f64 / 1e3,
                    p.mean_us / 1e3
                )?,
                None => writeln!(w, "  {:<34} {:>10}", label(r.phase), "-")?,
            }
        }
        writeln!(
            w,
            "\n  generator CPU: {:.0}% of its {} core(s){}",
            self.generator_cpu_pct,
            s.cores,
            if self.generator_cpu_pct >= GENERATOR_BOUND_PCT {
                " -- WARNING: the generator may be the bottleneck (add --cores)"
            } else {
                ""
            }
        )?;
        if let Some(k) = &self.keyless {
            writeln!(
                w,
                "\n  keyless round trip ({}): {} calls in the window, mean {:.3} ms = {:.0}% of the mean full TLS handshake ({:.3} ms)",
                k.source,
                k.calls,
                k.mean_us / 1e3,
                if k.handshake_mean_us > 0.0 { 100.0 * k.mean_us / k.handshake_mean_us } else { 0.0 },
                k.handshake_mean_us / 1e3
            )?;
        }
        Ok(())
    }

    /// A self-contained HTML page: the text report and the charts.
    pub fn to_html(&self) -> String {
        let mut text = Vec::new();
        let _ = self.print_text(&mut text);
        let text = String::from_utf8_lossy(&text);
        let nines = 5.0;
        let dist = report::svg_chart(&report::Chart {
            title: "Latency by percentile (measured window)",
            x_label: "percentile",
            y_label: "latency (ms, log)",
            log_y: true,
            x_ticks: Some(
                ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as f64, l.to_string()))
                    .collect(),
            ),
            shade_until: None,
            series: PHASES
                .iter()
                .zip(&self.hists)
                .filter(|(_, h)| !h.is_empty())
                .map(|(n, h)| {
                    let pts = (0..=100)
                        .map(|i| {
                            let x = nines * i as f64 / 100.0;
                            (x, h.value_at_quantile(1.0 - 10f64.powf(-x)) as f64 / 1e3)
                        })
                        .collect();
                    (n.to_string(), pts)
                })
                .collect(),
        });
        let warm = self.spec.warmup_s;
        let over_time = report::svg_chart(&report::Chart {
            title: "Total (scheduled -> first byte) over time",
            x_label: "seconds from start",
            y_label: "latency (ms, log)",
            log_y: true,
            x_ticks: None,
            shade_until: Some(warm),
            series: vec![
                (
                    "p50".into(),
                    self.timeline
                        .iter()
                        .map(|r| (r.0, r.2 as f64 / 1e3))
                        .collect(),
                ),
                (
                    "p99".into(),
                    self.timeline
                        .iter()
                        .map(|r| (r.0, r.3 as f64 / 1e3))
                        .collect(),
                ),
                (
                    "max".into(),
                    self.timeline
                        .iter()
                        .map(|r| (r.0, r.4 as f64 / 1e3))
                        .collect(),
                ),
            ],
        });
        let rate = report::svg_chart(&report::Chart {
            title: "Handshakes per second",
            x_label: "seconds from start",
            y_label: "OK connections / s",
            log_y: false,
            x_ticks: None,
            shade_until: Some(warm),
            series: vec![(
                "rate".into(),
                self.timeline.iter().map(|r| (r.0, r.1)).collect(),
            )],
        });
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>keycore loadgen --handshakes: {s}</title>\
<style>body{{font-family:sans-serif;margin:2em;}} pre{{background:#f6f6f6;padding:1em;}}</style></head><body>\n\
<h1>keycore loadgen --handshakes against {s}</h1>\n<pre>{t}</pre>\n{dist}\n{over_time}\n{rate}\n</body></html>\n",
            s = self.spec.server,
            t = report::html_escape(&text),
        )
    }
}

impl HandshakeSpec {
    /// From `keycore loadgen --handshakes` flags.
    pub fn from_args(a: &crate::LoadgenArgs) -> Result<HandshakeSpec, HandshakeError> {
        if a.servers.len() != 1 {
            return Err(HandshakeError::OneServer);
        }
        let addr = &a.servers[0];
        let server = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
            .map_err(|source| HandshakeError::Resolve {
                addr: addr.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| HandshakeError::NoAddress(addr.clone()))?;
        let mut s = HandshakeSpec::new(server, a.ca.clone());
        if let Some(n) = &a.server_name {
            s.server_name = n.clone();
        }
        macro_rules! set {
            ($($field:ident <- $flag:ident),*) => {$( if let Some(v) = a.$flag { s.$field = v; } )*};
        }
        set!(rate <- rate, duration_s <- duration, warmup_s <- warmup, timeout_ms <- timeout_ms,
             cores <- cores, max_outstanding_per_core <- max_outstanding_per_core,
             resume_ratio <- resume_ratio, seed <- seed);
        if let Some(x) = &a.arrivals {
            s.arrivals = if x == "constant" {
                Arrivals::Constant
            } else {
                Arrivals::Poisson
            };
        }
        s.first_cpu = a.first_cpu;
        s.tls12_only = a.tls12_only;
        s.keyserver_metrics = a.keyserver_metrics.clone();
        s.live = !a.quiet;
        s.hdr_log = a.hdr_log.clone();
        Ok(s)
    }
}

/// `keycore loadgen --handshakes ...`: run and print.
pub fn run_cli(a: &crate::LoadgenArgs) -> Result<(), HandshakeError> {
    let spec = HandshakeSpec::from_args(a)?;
    let r = run(&spec)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let printed = if a.json {
        serde_json::to_writer_pretty(&mut out, &r)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        r.print_text(&mut out)
    };
    printed.map_err(HandshakeError::Output)?;
    if let Some(h) = &a.html {
        std::fs::write(h, r.to_html()).map_err(|source| HandshakeError::Write {
            path: h.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyless_share_reads_the_window_delta_of_either_family() {
        let before = "keycore_edge_keyless_rtt_seconds_sum 1.0\nkeycore_edge_keyless_rtt_seconds_count 100\n";
        let after = "keycore_edge_keyless_rtt_seconds_sum 1.5\nkeycore_edge_keyless_rtt_seconds_count 600\n";
        let mut t = HsStats::default();
        record(&mut t.hists[2], 4000);
        let k = keyless_share(before, after, &t).unwrap();
        assert_eq!(k.calls, 500);
        assert!((k.mean_us - 1000.0).abs() < 1e-6, "{k:?}");
        assert!((k.handshake_mean_us - 4000.0).abs() < 10.0, "{k:?}");
        let ks_before = "keyless_request_total_duration_per_opcode_sum{opcode=\"a\"} 1\nkeyless_request_total_duration_per_opcode_sum{opcode=\"b\"} 1\nkeyless_request_total_duration_per_opcode_count{opcode=\"a\"} 10\n";
        let ks_after = "keyless_request_total_duration_per_opcode_sum{opcode=\"a\"} 1.01\nkeyless_request_total_duration_per_opcode_sum{opcode=\"b\"} 1.01\nkeyless_request_total_duration_per_opcode_count{opcode=\"a\"} 30\n";
        let k = keyless_share(ks_before, ks_after, &t).unwrap();
        assert_eq!(k.calls, 20);
        assert!((k.mean_us - 1000.0).abs() < 1e-3, "{k:?}");
        assert!(keyless_share("", "", &t).is_none());
    }
}
