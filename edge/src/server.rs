//! The HTTPS side: accept, handshake on a bounded pool of workers, answer
//! one HTTP request with a small page, close.
//!
//! Design (why threads): rustls asks for the signature synchronously in the
//! middle of `process_new_packets`, and the transcript it signs only exists
//! there, so the signature can't be fetched ahead of time. Each handshake is
//! therefore driven by a worker thread from a fixed pool; when rustls asks
//! for a signature the worker hands the job to the keyless hub
//! ([`crate::keyless`]) and sleeps on the answer. A slow key server costs
//! sleeping threads, not CPU, and never delays a handshake on another worker:
//! other handshakes keep going on the other workers and their signatures are
//! pipelined on the same key-server connections.
//!
//! Limits (all settable): `workers` handshakes at once (default 256); an
//! accept queue of `accept_queue` connections (default 1024) beyond which new
//! connections are closed unserved and counted (`accept_overload`); every
//! handshake must finish within `handshake_timeout` (default 10 s) and every
//! signature within `keyless_timeout` (default 1 s, failover included); each
//! socket read or write within `io_timeout` (default 5 s); the HTTP request
//! head is read up to 8 KiB. So a key server that stalls holds at most
//! `workers` handshakes for at most `keyless_timeout` each.
//!
//! HTTP: one request per connection, answered with `Connection: close` (the
//! edge exists to show and measure handshakes; keep-alive would hide them).
//!
//! Must not: fall back to anything when a signature is missing (the
//! handshake fails with an alert), or read more than the bounds above.

use crate::certs::Resolver;
use crate::metrics::{EdgeStats, Reason};
use crate::signer::{self, SignError};
use crate::EdgeError;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustls::ServerConnection;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest HTTP request head read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Limits of the HTTPS side.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Worker threads, each driving one connection at a time. Default 256
    /// (assumption: enough to cover ~250 ms of key-server stall at 1,000
    /// handshakes/s; each costs a 256 KiB stack, mostly untouched).
    pub workers: usize,
    /// Accepted connections waiting for a worker at most. Default 1024.
    pub accept_queue: usize,
    /// Accept to handshake done. Default 10 s.
    pub handshake_timeout: Duration,
    /// One socket read or write. Default 5 s.
    pub io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: 256,
            accept_queue: 1024,
            handshake_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// Worker stack size: rustls + aws-lc need well under this.
const WORKER_STACK: usize = 256 * 1024;

/// The running HTTPS listener.
#[derive(Debug)]
pub struct HttpsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HttpsServer {
    /// Bind and start the acceptor and the workers.
    pub fn start(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        resolver: Arc<Resolver>,
        stats: Arc<EdgeStats>,
        limits: Limits,
    ) -> Result<HttpsServer, EdgeError> {
        if limits.workers == 0 {
            return Err(EdgeError::NoWorkers);
        }
        let listen_err = |source| EdgeError::Listen {
            what: "listen on",
            addr: listen.to_string(),
            source,
        };
        let l = TcpListener::bind(listen).map_err(listen_err)?;
        let addr = l.local_addr().map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(limits.accept_queue.max(1));
        let mut threads = Vec::with_capacity(limits.workers + 1);
        for i in 0..limits.workers {
            let rx: Receiver<(TcpStream, Instant)> = rx.clone();
            let w = Worker {
                tls: tls.clone(),
                resolver: resolver.clone(),
                stats: stats.clone(),
                limits: limits.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("edge-hs-{i}"))
                    .stack_size(WORKER_STACK)
                    .spawn(move || {
                        while let Ok((sock, at)) = rx.recv() {
                            w.stats.busy_workers.fetch_add(1, Relaxed);
                            w.serve(sock, at);
                            w.stats.busy_workers.fetch_sub(1, Relaxed);
                        }
                    })
                    .map_err(EdgeError::Thread)?,
            );
        }
        let stop2 = stop.clone();
        let stats2 = stats.clone();
        threads.push(
            std::thread::Builder::new()
                .name("edge-accept".into())
                .spawn(move || accept_loop(l, tx, stats2, stop2))
                .map_err(EdgeError::Thread)?,
        );
        Ok(HttpsServer {
            addr,
            stop,
            threads,
        })
    }

    /// Stop accepting, let workers finish their connection, join.
    pub fn stop(&mut self) {
        if self.stop.swap(true, Relaxed) {
            return;
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    l: TcpListener,
    tx: Sender<(TcpStream, Instant)>,
    stats: Arc<EdgeStats>,
    stop: Arc<AtomicBool>,
) {
    let mut last_overload_log: Option<Instant> = None;
    for c in l.incoming() {
        if stop.load(Relaxed) {
            break;
        }
        let sock = match c {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        match tx.try_send((sock, Instant::now())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                stats.fail(Reason::AcceptOverload);
                if last_overload_log.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!("accept queue full: closing new connections unserved");
                    last_overload_log = Some(Instant::now());
                }
            }
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
}

struct Worker {
    tls: Arc<rustls::ServerConfig>,
    resolver: Arc<Resolver>,
    stats: Arc<EdgeStats>,
    limits: Limits,
}

/// What a finished handshake tells the page.
struct Done {
    sign: Option<signer::SignRecord>,
}

impl Worker {
    fn serve(&self, mut sock: TcpStream, accepted: Instant) {
        let peer = sock.peer_addr().ok();
        let _ = sock.set_read_timeout(Some(self.limits.io_timeout));
        let _ = sock.set_write_timeout(Some(self.limits.io_timeout));
        let mut conn = match ServerConnection::new(self.tls.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("TLS session: {e}");
                self.stats.fail(Reason::Io);
                return;
            }
        };
        signer::begin_handshake(crate::keyless::Visitor {
            sni: None,
            ip: peer.map(|p| p.ip()),
        });
        let done = match self.handshake(&mut conn, &mut sock, accepted) {
            Ok(d) => d,
            Err((reason, why)) => {
                self.stats.fail(reason);
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                let sni = conn.server_name().unwrap_or("-");
                if reason.label().starts_with("keyless") {
                    tracing::warn!(%peer, sni, reason = reason.label(), "handshake failed: {why}");
                } else {
                    tracing::debug!(%peer, sni, reason = reason.label(), "handshake failed: {why}");
                }
                // rustls sends no alert of its own when the signer fails;
                // close_notify at least tells the visitor the edge ended it.
                conn.send_close_notify();
                let _ = conn.write_tls(&mut sock);
                linger_close(&mut sock);
                return;
            }
        };
        self.stats.handshakes_ok.fetch_add(1, Relaxed);
        if let Some(Ok(s)) = done.sign.as_ref().map(|r| &r.result) {
            self.stats.keyless_rtt.record(s.rtt);
        }
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.stats.handshakes_resumed.fetch_add(1, Relaxed);
        }
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        match read_head(&mut tls, deadline) {
            Ok(head) if head.starts_with(b"GET ") || head.starts_with(b"HEAD ") => {
                let body = self.page(tls.conn, &done);
                let head_only = head.starts_with(b"HEAD ");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nServer: keycore-edge\r\n\r\n{}",
                    body.len(),
                    if head_only { "" } else { body.as_str() }
                );
                if tls.write_all(resp.as_bytes()).is_ok() {
                    self.stats.http_requests.fetch_add(1, Relaxed);
                }
            }
            Ok(_) => {
                let _ = tls.write_all(
                    b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
            Err(_) => {}
        }
        conn.send_close_notify();
        let _ = conn.complete_io(&mut sock);
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }

    fn handshake(
        &self,
        conn: &mut ServerConnection,
        sock: &mut TcpStream,
        accepted: Instant,
    ) -> Result<Done, (Reason, String)> {
        let deadline = accepted + self.limits.handshake_timeout;
        while conn.is_handshaking() {
            if Instant::now() >= deadline {
                return Err((Reason::ClientTimeout, "handshake deadline".into()));
            }
            if let Err(e) = conn.complete_io(sock) {
                // A signature failure surfaces as a TLS error; name it by
                // what the signer saw, not by what rustls made of it.
                if let Some(rec) = signer::take_record() {
                    if let Err(se) = rec.result {
                        return Err((sign_reason(&se), se.to_string()));
                    }
                }
                return Err((io_reason(&e), e.to_string()));
            }
        }
        Ok(Done {
            sign: signer::take_record(),
        })
    }

    fn page(&self, conn: &ServerConnection, done: &Done) -> String {
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let sni = conn.server_name().unwrap_or("(none)");
        let mut s = format!(
            "Hello from keycore edge.\n\nTLS:          {version} {suite}\nServer name:  {sni}\n"
        );
        match &done.sign {
            Some(rec) => {
                let cert = self
                    .resolver
                    .entries()
                    .find(|c| c.key.ski == rec.ski)
                    .map(|c| c.subject.clone())
                    .unwrap_or_default();
                let ski: String = rec.ski.iter().map(|b| format!("{b:02x}")).collect();
                let op = crate::signer::schemes_for_scheme(rec.scheme)
                    .map(|o| format!("opcode 0x{:02x} {}", o.op.0, o.op.name().unwrap_or("")))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "Certificate:  {cert}\nSignature:    {:?} ({op})\nKey SKI:      {ski}\n",
                    rec.scheme
                ));
                if let Ok(signed) = &rec.result {
                    s.push_str(&format!(
                        "Key server:   {}\nKeyless RTT:  {:.3} ms\n",
                        signed.keyserver,
                        signed.rtt.as_secs_f64() * 1e3
                    ));
                }
                s.push_str("\nThis edge holds no private key: the key server made the handshake signature.\n");
            }
            None if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) => {
                s.push_str("Signature:    none (session resumed, no key server call)\n")
            }
            None => s.push_str("Signature:    made in this process (no key server call)\n"),
        }
        s
    }
}

/// How long a failed connection is drained before closing.
const LINGER: Duration = Duration::from_millis(100);

/// Close after a failed handshake so the alert rustls queued reaches the
/// visitor: closing with unread input makes the kernel send a reset, which
/// can overtake the alert. Bounded by [`LINGER`] and 16 KiB.
fn linger_close(sock: &mut TcpStream) {
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(LINGER));
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        if Instant::now() >= until {
            break;
        }
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn sign_reason(e: &SignError) -> Reason {
    use crate::keyless::KeylessError as K;
    match e {
        SignError::BadSignature(_) => Reason::KeylessBadSignature,
        SignError::Keyless(K::Timeout(_)) => Reason::KeylessTimeout,
        SignError::Keyless(K::Unavailable | K::Stopped) => Reason::KeylessUnavailable,
        SignError::Keyless(K::Server { .. }) => Reason::KeylessError,
        SignError::Keyless(K::Overloaded(_)) => Reason::KeylessOverload,
    }
}

fn io_reason(e: &std::io::Error) -> Reason {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::WouldBlock | K::TimedOut => Reason::ClientTimeout,
        K::InvalidData => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::PeerIncompatible(_)) | Some(rustls::Error::General(_)) => {
                Reason::TlsNegotiation
            }
            _ => Reason::ClientTls,
        },
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            Reason::ClientTls
        }
        _ => Reason::Io,
    }
}

/// Read until the end of the HTTP request head, at most
/// [`MAX_REQUEST_HEAD`] bytes, by `deadline`.
fn read_head(r: &mut impl Read, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut n = 0;
    loop {
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            buf.truncate(n);
            return Ok(buf);
        }
        if n == buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head over 8 KiB",
            ));
        }
        if Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let k = r.read(&mut buf[n..])?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n += k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_is_bounded_and_complete() {
        let far = Instant::now() + Duration::from_secs(5);
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        let h = read_head(&mut r, far).unwrap();
        assert!(h.starts_with(b"GET / "));
        let big = vec![b'a'; MAX_REQUEST_HEAD + 10];
        let e = read_head(&mut big.as_slice(), far).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let e = read_head(&mut &b"GET / HTTP/1.1\r\n"[..], far).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn io_errors_map_to_reasons() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            io_reason(&ErrorKind::WouldBlock.into()),
            Reason::ClientTimeout
        );
        assert_eq!(
            io_reason(&ErrorKind::UnexpectedEof.into()),
            Reason::ClientTls
        );
        let e = Error::new(
            ErrorKind::InvalidData,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoSignatureSchemesInCommon),
        );
        assert_eq!(io_reason(&e), Reason::TlsNegotiation);
        let e = Error::new(ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(io_reason(&e), Reason::ClientTls);
    }
}
