//! The edge's counters and its Prometheus `/metrics` listener.
//!
//! Owns: handshake outcomes (by failure reason), the keyless round-trip
//! histogram, per-key-server request outcomes and health, and the small HTTP
//! listener that serves them on its own port (never on the TLS port).
//!
//! Many threads write (handshake workers, the keyless hub), so counters are
//! atomics with `fetch_add`; a scrape reads them with relaxed loads and may
//! see one counter a few events behind another, which is fine for monitoring.
//! The histogram uses the engine's bucket layout (100 µs doubling, 15
//! buckets, as the reference's `ExponentialBuckets(0.0001, 2, 15)`) so one
//! dashboard can put key-server and edge latency side by side.
//!
//! Must not: block a handshake on a scrape, or let a scraper hold a
//! connection open (one request per connection, short deadlines).

use keycore_keys::{MetricKind, PromWriter};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Histogram buckets (upper bounds): 100 µs doubling, 15 buckets, as the
/// engine's `keyless_request_*_duration` families.
pub const BUCKETS: usize = 15;
const BUCKET0_NS: u64 = 100_000;

/// Why a handshake failed. One counter each; the label is [`Reason::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Every key server tried timed out within the keyless deadline.
    KeylessTimeout,
    /// No key server had a connection up (all down or refusing us).
    KeylessUnavailable,
    /// A key server answered with an error code (key not found, crypto...).
    KeylessError,
    /// The keyless hub's queue was full: shed at once rather than queue.
    KeylessOverload,
    /// A key server returned a signature that does not verify.
    KeylessBadSignature,
    /// The certificate's key can sign none of the schemes the client offered,
    /// or the client sent no acceptable SNI/hello (rustls refused the hello).
    TlsNegotiation,
    /// The client sent bad TLS, an alert, or closed mid-handshake.
    ClientTls,
    /// The client was too slow: handshake deadline or socket timeout.
    ClientTimeout,
    /// A socket error other than a timeout.
    Io,
    /// The accept queue was full: the connection was closed unserved.
    AcceptOverload,
}

impl Reason {
    /// Every reason, in exposition order.
    pub const ALL: [Reason; 10] = [
        Reason::KeylessTimeout,
        Reason::KeylessUnavailable,
        Reason::KeylessError,
        Reason::KeylessOverload,
        Reason::KeylessBadSignature,
        Reason::TlsNegotiation,
        Reason::ClientTls,
        Reason::ClientTimeout,
        Reason::Io,
        Reason::AcceptOverload,
    ];

    /// The `reason` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::KeylessTimeout => "keyless_timeout",
            Reason::KeylessUnavailable => "keyless_unavailable",
            Reason::KeylessError => "keyless_error",
            Reason::KeylessOverload => "keyless_overload",
            Reason::KeylessBadSignature => "keyless_bad_signature",
            Reason::TlsNegotiation => "tls_negotiation",
            Reason::ClientTls => "client_tls",
            Reason::ClientTimeout => "client_timeout",
            Reason::Io => "io",
            Reason::AcceptOverload => "accept_overload",
        }
    }
}

/// Outcome of one keyless request to one key server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KsResult {
    /// A signature came back.
    Ok,
    /// The key server answered with an error code.
    Error,
    /// No answer within the per-attempt deadline.
    Timeout,
    /// No connection up, or the connection was lost with the request on it.
    Unavailable,
}

impl KsResult {
    const ALL: [KsResult; 4] = [
        KsResult::Ok,
        KsResult::Error,
        KsResult::Timeout,
        KsResult::Unavailable,
    ];
    const fn label(self) -> &'static str {
        match self {
            KsResult::Ok => "ok",
            KsResult::Error => "error",
            KsResult::Timeout => "timeout",
            KsResult::Unavailable => "unavailable",
        }
    }
}

/// A histogram with fixed buckets, written by many threads.
#[derive(Debug, Default)]
pub struct Hist {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

/// Index of the bucket holding `ns` (the last one is +Inf).
pub fn bucket_of(ns: u64) -> usize {
    let mut bound = BUCKET0_NS;
    for i in 0..BUCKETS {
        if ns <= bound {
            return i;
        }
        bound *= 2;
    }
    BUCKETS
}

impl Hist {
    /// Record one observation.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn render(&self, w: &mut PromWriter<'_>, name: &str, labels: &[(&str, &str)]) {
        let mut cum = 0;
        let bucket = format!("{name}_bucket");
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            let le = if i < BUCKETS {
                ((BUCKET0_NS << i) as f64 / 1e9).to_string()
            } else {
                "+Inf".to_string()
            };
            let mut l = labels.to_vec();
            l.push(("le", &le));
            w.sample(&bucket, &l, cum);
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        w.sample(&format!("{name}_sum"), labels, sum);
        w.sample(&format!("{name}_count"), labels, cum);
    }
}

/// Per key server: request outcomes and connection health.
#[derive(Debug)]
pub struct KeyServerStats {
    /// `HOST:PORT` as given on the command line (the label value).
    pub name: String,
    results: [AtomicU64; 4],
    /// Connections to it that are up (written by the hub).
    pub connections_up: AtomicU64,
    /// Round trips of successful requests to it.
    pub rtt: Hist,
}

impl KeyServerStats {
    fn new(name: String) -> KeyServerStats {
        KeyServerStats {
            name,
            results: Default::default(),
            connections_up: AtomicU64::new(0),
            rtt: Hist::default(),
        }
    }

    /// Count one request outcome.
    pub fn count(&self, r: KsResult) {
        self.results[r as usize].fetch_add(1, Relaxed);
    }

    /// Requests with this outcome so far.
    pub fn get(&self, r: KsResult) -> u64 {
        self.results[r as usize].load(Relaxed)
    }
}

/// Everything the edge counts. Shared (`Arc`) by every thread.
#[derive(Debug)]
pub struct EdgeStats {
    /// Handshakes completed.
    pub handshakes_ok: AtomicU64,
    /// Of those, resumed (no signature needed).
    pub handshakes_resumed: AtomicU64,
    failures: [AtomicU64; Reason::ALL.len()],
    /// Keyless round trip as the handshake saw it (queueing in the hub,
    /// failover and retries included), successful signatures only.
    pub keyless_rtt: Hist,
    /// HTTP requests answered.
    pub http_requests: AtomicU64,
    /// Handshakes being served by a worker right now.
    pub busy_workers: AtomicU64,
    /// Per key server, in command-line order.
    pub keyservers: Vec<KeyServerStats>,
}

impl EdgeStats {
    /// Counters for these key servers, all zero.
    pub fn new(keyservers: &[String]) -> EdgeStats {
        EdgeStats {
            handshakes_ok: AtomicU64::new(0),
            handshakes_resumed: AtomicU64::new(0),
            failures: Default::default(),
            keyless_rtt: Hist::default(),
            http_requests: AtomicU64::new(0),
            busy_workers: AtomicU64::new(0),
            keyservers: keyservers
                .iter()
                .map(|k| KeyServerStats::new(k.clone()))
                .collect(),
        }
    }

    /// Count one failed handshake.
    pub fn fail(&self, r: Reason) {
        self.failures[r as usize].fetch_add(1, Relaxed);
    }

    /// Failed handshakes for this reason so far.
    pub fn failures(&self, r: Reason) -> u64 {
        self.failures[r as usize].load(Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4), through the project's one
    /// writer ([`keycore_keys::PromWriter`]: headers, label escaping).
    pub fn render(&self) -> String {
        use MetricKind::{Counter, Gauge, Histogram};
        let mut s = String::with_capacity(8 * 1024);
        let mut w = PromWriter::new(&mut s);
        let n = "keycore_edge_handshakes_total";
        w.family(n, Counter, "TLS handshakes completed by the edge.");
        w.sample(n, &[], self.handshakes_ok.load(Relaxed));
        let n = "keycore_edge_handshakes_resumed_total";
        w.family(
            n,
            Counter,
            "Completed handshakes that resumed a session (no key server call).",
        );
        w.sample(n, &[], self.handshakes_resumed.load(Relaxed));
        let n = "keycore_edge_handshake_failures_total";
        w.family(n, Counter, "Failed handshakes by reason.");
        for r in Reason::ALL {
            w.sample(n, &[("reason", r.label())], self.failures(r));
        }
        let n = "keycore_edge_keyless_rtt_seconds";
        w.family(n, Histogram, "Time a handshake waited for its signature (hub queue, failover and key server round trip), successful signatures.");
        self.keyless_rtt.render(&mut w, n, &[]);
        let n = "keycore_edge_keyserver_requests_total";
        w.family(n, Counter, "Keyless requests by key server and outcome.");
        for k in &self.keyservers {
            for r in KsResult::ALL {
                w.sample(
                    n,
                    &[("keyserver", &k.name), ("result", r.label())],
                    k.get(r),
                );
            }
        }
        let n = "keycore_edge_keyserver_rtt_seconds";
        w.family(
            n,
            Histogram,
            "Round trip of one successful keyless request, by key server.",
        );
        for k in &self.keyservers {
            k.rtt.render(&mut w, n, &[("keyserver", &k.name)]);
        }
        let n = "keycore_edge_keyserver_up";
        w.family(
            n,
            Gauge,
            "Mutual-TLS connections up to each key server (0: down).",
        );
        for k in &self.keyservers {
            w.sample(n, &[("keyserver", &k.name)], k.connections_up.load(Relaxed));
        }
        let n = "keycore_edge_http_requests_total";
        w.family(n, Counter, "HTTP requests answered.");
        w.sample(n, &[], self.http_requests.load(Relaxed));
        let n = "keycore_edge_busy_workers";
        w.family(n, Gauge, "Handshake workers serving a connection now.");
        w.sample(n, &[], self.busy_workers.load(Relaxed));
        s
    }
}

/// Longest a scraper may take to send its request.
const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read from a scraper.
const SCRAPE_MAX_REQUEST: usize = 4096;

/// The `/metrics` listener: one thread, one request per connection.
#[derive(Debug)]
pub struct MetricsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Listen on `addr` and serve `stats`.
    pub fn start(addr: SocketAddr, stats: Arc<EdgeStats>) -> std::io::Result<MetricsServer> {
        let l = TcpListener::bind(addr)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("edge-metrics".into())
            .spawn(move || {
                for c in l.incoming() {
                    if stop2.load(Relaxed) {
                        break;
                    }
                    if let Ok(c) = c {
                        let _ = serve_scrape(c, &stats);
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the listener thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_scrape(mut c: TcpStream, stats: &EdgeStats) -> std::io::Result<()> {
    c.set_read_timeout(Some(SCRAPE_READ_TIMEOUT))?;
    c.set_write_timeout(Some(SCRAPE_READ_TIMEOUT))?;
    let mut buf = vec![0u8; SCRAPE_MAX_REQUEST];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let r = c.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        ("200 OK", stats.render())
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_from_100us() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100_000), 0);
        assert_eq!(bucket_of(100_001), 1);
        assert_eq!(bucket_of(1_638_400_000), 14);
        assert_eq!(bucket_of(1_638_400_001), BUCKETS);
    }

    #[test]
    fn render_has_every_family_and_cumulative_buckets() {
        let s = EdgeStats::new(&["127.0.0.1:1".into(), "ks2:2407".into()]);
        s.handshakes_ok.fetch_add(3, Relaxed);
        s.fail(Reason::KeylessTimeout);
        s.fail(Reason::KeylessTimeout);
        s.keyless_rtt.record(Duration::from_micros(50));
        s.keyless_rtt.record(Duration::from_millis(3));
        s.keyservers[1].count(KsResult::Timeout);
        s.keyservers[0].connections_up.store(2, Relaxed);
        let t = s.render();
        assert!(t.contains("keycore_edge_handshakes_total 3\n"), "{t}");
        assert!(t.contains("keycore_edge_handshake_failures_total{reason=\"keyless_timeout\"} 2\n"));
        assert!(t.contains("keycore_edge_keyless_rtt_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(t.contains("keycore_edge_keyless_rtt_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(t.contains("keycore_edge_keyless_rtt_seconds_count 2\n"));
        assert!(t.contains(
            "keycore_edge_keyserver_requests_total{keyserver=\"ks2:2407\",result=\"timeout\"} 1\n"
        ));
        assert!(t.contains("keycore_edge_keyserver_up{keyserver=\"127.0.0.1:1\"} 2\n"));
        // Every sample line belongs to a family announced with TYPE.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let fam = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(t.contains(&format!("# TYPE {fam} ")), "{line}");
        }
    }

    #[test]
    fn scrape_listener_serves_metrics_and_404s_the_rest() {
        let stats = Arc::new(EdgeStats::new(&[]));
        stats.http_requests.fetch_add(7, Relaxed);
        let mut m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), stats).unwrap();
        let get = |path: &str| {
            let mut c = TcpStream::connect(m.addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        let r = get("/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("keycore_edge_http_requests_total 7\n"));
        assert!(get("/").starts_with("HTTP/1.1 404"));
        m.stop();
    }
}
