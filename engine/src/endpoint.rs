//! The metrics listener: `GET /metrics` (Prometheus text), `GET /healthz`
//! (liveness) and `GET /readyz` (readiness) over plain HTTP/1.1.
//!
//! Owns: the listener, its accept thread and one short-lived thread per
//! connection. Every connection is bounded: at most [`MAX_CONNECTIONS`] at
//! once (more are closed at accept and counted), a request head of at most
//! [`MAX_HTTP_HEAD`] bytes, and one total deadline ([`REQUEST_DEADLINE`])
//! for reading the request and writing the answer, however slowly the client
//! trickles bytes. So a slow or stuck client costs one thread for at most
//! the deadline and never delays another scrape or a probe.
//!
//! Shutdown ([`Drop`]) stops the accept thread (it polls with a 100 ms
//! timeout) and joins only that thread: connection threads are detached and
//! end by their own deadline, so a stuck client can never hold the process
//! past its drain.
//!
//! Must not: touch a reactor (it reads the per-core single-writer atomics
//! and the [`Health`] state only), or answer anything but GET.

use crate::health::Health;
use crate::metrics::Registry;
use keycore_keys::{MetricKind, PromWriter};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head read (request line and headers).
pub const MAX_HTTP_HEAD: usize = 8 * 1024;
/// Connections served at once; further ones are closed at accept. A
/// Prometheus server or two, a kubelet's probes and an operator's curl need
/// a handful; 16 leaves room without letting a flood spawn threads.
pub const MAX_CONNECTIONS: usize = 16;
/// Total time for one request: read the head, render, write the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How often the accept thread looks at the stop flag.
const ACCEPT_POLL_MS: i32 = 100;

/// Counters of the endpoint itself, appended to `/metrics`. Several threads
/// write them (unlike the reactors' single-writer counters), so `fetch_add`.
#[derive(Debug, Default)]
struct EndpointStats {
    refused: AtomicUsize,
    timeouts: AtomicUsize,
    too_large: AtomicUsize,
}

/// The running endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    /// Bound address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    registry: Arc<Registry>,
    health: Arc<Health>,
    active: AtomicUsize,
    stats: EndpointStats,
}

impl MetricsServer {
    /// Bind and serve `registry` with no readiness checks beyond liveness
    /// and draining.
    pub fn start(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<MetricsServer> {
        Self::start_with_health(addr, registry, Arc::new(Health::default()))
    }

    /// Bind and serve `registry`, `/healthz` and `/readyz` from `health`.
    pub fn start_with_health(
        addr: SocketAddr,
        registry: Arc<Registry>,
        health: Arc<Health>,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let shared = Arc::new(Shared {
            registry,
            health,
            active: AtomicUsize::new(0),
            stats: EndpointStats::default(),
        });
        let thread = std::thread::Builder::new()
            .name("keycore-metrics".into())
            .spawn(move || accept_loop(listener, &stop2, &shared))?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Only the accept thread: it wakes within ACCEPT_POLL_MS.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, shared: &Arc<Shared>) {
    let mut last_warn: Option<Instant> = None;
    while !stop.load(Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ACCEPT_POLL_MS) };
        if n <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((s, _)) => {
                if shared.active.load(Relaxed) >= MAX_CONNECTIONS {
                    shared.stats.refused.fetch_add(1, Relaxed);
                    drop(s);
                    continue;
                }
                shared.active.fetch_add(1, Relaxed);
                let sh = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("keycore-metrics-conn".into())
                    .spawn(move || {
                        let deadline = Instant::now() + REQUEST_DEADLINE;
                        let _ = serve_conn(s, &sh, deadline);
                        sh.active.fetch_sub(1, Relaxed);
                    });
                if spawned.is_err() {
                    shared.active.fetch_sub(1, Relaxed);
                    shared.stats.refused.fetch_add(1, Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // EMFILE and friends: log at most once a minute, back off.
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "metrics accept failed");
                    last_warn = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Time left before `deadline`, or a timeout error.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(std::io::ErrorKind::TimedOut.into())
    } else {
        Ok(d)
    }
}

fn serve_conn(mut s: TcpStream, sh: &Shared, deadline: Instant) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let t = match left(deadline) {
            Ok(t) => t,
            Err(e) => {
                sh.stats.timeouts.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        s.set_read_timeout(Some(t))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                sh.stats.timeouts.fetch_add(1, Relaxed);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        if head.len() + n > MAX_HTTP_HEAD {
            sh.stats.too_large.fetch_add(1, Relaxed);
            respond(
                &mut s,
                deadline,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )?;
            // Closing with unread input would reset the connection and could
            // destroy the answer in flight: half-close, then discard what
            // the client still sends (bounded by size and the deadline).
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut left_bytes = 64 * 1024usize;
            while left_bytes > 0 {
                let Ok(t) = left(deadline) else { break };
                if s.set_read_timeout(Some(t)).is_err() {
                    break;
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left_bytes = left_bytes.saturating_sub(n),
                }
            }
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(
            &mut s,
            deadline,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        );
    }
    match path {
        "/metrics" => {
            let mut body = sh.registry.render();
            render_endpoint_stats(sh, &mut body);
            respond(
                &mut s,
                deadline,
                "200 OK",
                "text/plain; version=0.0.4",
                &body,
            )
        }
        "/healthz" => match sh.health.live(&sh.registry.cores) {
            Ok(text) => respond(
                &mut s,
                deadline,
                "200 OK",
                "text/plain",
                &format!("ok\n{text}"),
            ),
            Err(text) => respond(
                &mut s,
                deadline,
                "503 Service Unavailable",
                "text/plain",
                &text.to_string(),
            ),
        },
        "/readyz" => match sh.health.ready() {
            Ok(()) => respond(&mut s, deadline, "200 OK", "text/plain", "ready\n"),
            Err(why) => respond(
                &mut s,
                deadline,
                "503 Service Unavailable",
                "text/plain",
                &format!("not ready: {why}\n"),
            ),
        },
        _ => respond(
            &mut s,
            deadline,
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn respond(
    s: &mut TcpStream,
    deadline: Instant,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    s.set_write_timeout(Some(left(deadline)?))?;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A client that does not read its answer is bounded by the write
    // timeout, re-armed with what is left of the deadline per chunk.
    for chunk in [head.as_bytes(), body.as_bytes()] {
        let mut off = 0;
        while off < chunk.len() {
            s.set_write_timeout(Some(left(deadline)?))?;
            match s.write(&chunk[off..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Client side of the probes, for `keycore healthcheck` (a container's
/// HEALTHCHECK or an exec probe where no curl exists): GET `path` from
/// `addr` within `timeout`; returns the status code and the body.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_write_timeout(Some(left(deadline)?))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        match s.read(&mut buf)? {
            0 => break,
            // A probe answer is short; cap what is kept.
            n if out.len() < 1 << 20 => out.extend_from_slice(&buf[..n]),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
        })?;
    Ok((code, body.to_string()))
}

fn render_endpoint_stats(sh: &Shared, s: &mut String) {
    let series = [
        (
            "keycore_metrics_connections_refused_total",
            "Metrics-listener connections closed at accept: too many at once.",
            &sh.stats.refused,
        ),
        (
            "keycore_metrics_request_timeouts_total",
            "Metrics-listener requests not read within the request deadline.",
            &sh.stats.timeouts,
        ),
        (
            "keycore_metrics_requests_too_large_total",
            "Metrics-listener requests whose head exceeded the size limit.",
            &sh.stats.too_large,
        ),
    ];
    let mut w = PromWriter::new(s);
    for (name, help, v) in series {
        w.family(name, MetricKind::Counter, help);
        w.sample(name, &[], v.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreStats;

    fn get(addr: SocketAddr, path: &str) -> (String, Duration) {
        try_get(addr, path).expect("GET failed")
    }

    /// A GET that may be refused (connection reset at the cap).
    fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, Duration)> {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok((out, t.elapsed()))
    }

    fn registry(cores: usize) -> Arc<Registry> {
        let r = Registry {
            cores: (0..cores).map(|i| Arc::new(CoreStats::new(i))).collect(),
            ..Default::default()
        };
        for c in &r.cores {
            c.heartbeat.beat();
        }
        Arc::new(r)
    }

    /// Issue 12 item 5: one client trickling a byte at a time (or sending
    /// nothing) must neither delay another scrape nor stop shutdown. On the
    /// single-threaded endpoint it failed both: the scrape waited behind the
    /// trickler and drop() joined a thread serving it.
    #[test]
    fn slow_clients_delay_neither_scrapes_nor_shutdown() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry(1)).unwrap();
        let addr = m.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tricklers = Vec::new();
        for _ in 0..3 {
            let stop = stop.clone();
            tricklers.push(std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let _ = s.write_all(b"G");
                while !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(300));
                    if s.write_all(b"E").is_err() {
                        break;
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(300));
        let (text, took) = get(addr, "/metrics");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            took < Duration::from_secs(2),
            "scrape waited {took:?} behind slow clients"
        );
        let t = Instant::now();
        drop(m);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "shutdown waited {:?} for slow clients",
            t.elapsed()
        );
        stop.store(true, Relaxed);
        for t in tricklers {
            let _ = t.join();
        }
    }

    #[test]
    fn trickling_client_is_cut_at_the_request_deadline_and_counted() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry(1)).unwrap();
        let mut s = TcpStream::connect(m.addr).unwrap();
        s.set_read_timeout(Some(REQUEST_DEADLINE * 3)).unwrap();
        let t = Instant::now();
        let mut closed = false;
        // One byte every 200 ms never completes a head: cut by the deadline.
        while t.elapsed() < REQUEST_DEADLINE * 3 {
            if s.write_all(b"X").is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut b = [0u8; 1];
            s.set_nonblocking(true).unwrap();
            let r = s.read(&mut b);
            s.set_nonblocking(false).unwrap();
            if matches!(r, Ok(0)) {
                closed = true;
                break;
            }
        }
        assert!(closed, "connection still open after {:?}", t.elapsed());
        assert!(t.elapsed() < REQUEST_DEADLINE + Duration::from_secs(2));
        let (text, _) = get(m.addr, "/metrics");
        assert!(
            text.contains("keycore_metrics_request_timeouts_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_and_counted() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry(1)).unwrap();
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(m.addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        // The cap is reached: the next one is closed at once.
        let mut extra = TcpStream::connect(m.addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut b = [0u8; 16];
        assert!(matches!(extra.read(&mut b), Ok(0) | Err(_)));
        drop(idle);
        // Slots come back when the idle ones go.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = try_get(m.addr, "/metrics").map(|r| r.0).unwrap_or_default();
            if text.starts_with("HTTP/1.1 200") {
                assert!(
                    text.contains("keycore_metrics_connections_refused_total ")
                        && !text.contains("keycore_metrics_connections_refused_total 0\n"),
                    "{text}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "slots never freed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn head_over_the_limit_is_refused() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry(1)).unwrap();
        let mut s = TcpStream::connect(m.addr).unwrap();
        let _ = s.write_all(
            format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_HTTP_HEAD)).as_bytes(),
        );
        // Done sending: the server's discard loop ends at our EOF.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    }

    #[test]
    fn healthz_and_readyz_answer_from_heartbeats_and_checks() {
        let reg = registry(2);
        let ready = Arc::new(AtomicBool::new(false));
        let r2 = ready.clone();
        let health = Arc::new(Health::new(
            vec![Box::new(move || {
                if r2.load(Relaxed) {
                    Ok(())
                } else {
                    Err(keycore_keys::NotReady {
                        store: "pkcs11",
                        detail: "no healthy partition for 1 key".into(),
                    }
                    .into())
                }
            })],
            Duration::from_millis(500),
        ));
        let m = MetricsServer::start_with_health(
            "127.0.0.1:0".parse().unwrap(),
            reg.clone(),
            health.clone(),
        )
        .unwrap();
        let (t, _) = get(m.addr, "/healthz");
        assert!(t.starts_with("HTTP/1.1 200 OK"), "{t}");
        let (t, _) = get(m.addr, "/readyz");
        assert!(t.starts_with("HTTP/1.1 503"), "{t}");
        assert!(
            t.ends_with("not ready: pkcs11: no healthy partition for 1 key\n"),
            "{t}"
        );
        ready.store(true, Relaxed);
        let (t, _) = get(m.addr, "/readyz?verbose");
        assert!(t.starts_with("HTTP/1.1 200 OK"), "{t}");
        // Core 1 stops beating: liveness names it.
        reg.cores[0].heartbeat.beat();
        std::thread::sleep(Duration::from_millis(700));
        reg.cores[0].heartbeat.beat();
        let (t, _) = get(m.addr, "/healthz");
        assert!(t.starts_with("HTTP/1.1 503"), "{t}");
        assert!(t.contains("core 1: stuck") && !t.contains("core 0"), "{t}");
        let (code, body) = probe(m.addr, "/healthz", Duration::from_secs(3)).unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("core 1: stuck"), "{body}");
        health.set_draining();
        let (t, _) = get(m.addr, "/readyz");
        assert!(t.contains("not ready: draining"), "{t}");
        let mut s = TcpStream::connect(m.addr).unwrap();
        write!(s, "POST /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    }
}
