//! # keycore-edge
//!
//! `keycore edge`: an HTTPS server (rustls) that holds certificates but no
//! private keys. Every handshake signature is made by a key server over the
//! keyless protocol, through the load generator's client
//! ([`keycore_loadgen::Pool`]: mutual TLS, pipelined, long-lived connections
//! with reconnects), with timeouts and failover across `--keyserver`s.
//!
//! Why a crate of its own: the edge is the *other side* of the product, and
//! its only route to a signature must be the keyless client. It constructs
//! no key store and loads no private key (a `--cert` file holding one is
//! refused; the integration tests scan its process memory for key bytes);
//! the key server (`keycore-engine`) is only a dev-dependency, for tests;
//! `keycore-keys` is linked for the one Prometheus writer (and, through the
//! load generator, the SKI code), never to sign. Keeping it out of the
//! engine also keeps rustls' server-side handshake code, its threads and
//! HTTP out of the key server.
//!
//! Modules: [`certs`] (chains and SNI), [`signer`] (rustls' signing seam →
//! keyless opcodes), [`keyless`] (the hub: pools, failover, health),
//! [`server`] (accept, bounded handshake workers, the page), [`metrics`]
//! (Prometheus on its own listener).
//!
//! What it is not: a reverse proxy (it answers every request with a page
//! describing the handshake), or a general web server (one request per
//! connection).

pub mod certs;
pub mod keyless;
pub mod metrics;
pub mod server;
pub mod signer;

use keycore_loadgen::{ClientTls, ClientTlsPaths, TlsConfigError, TlsOptions};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `keycore edge` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EdgeArgs {
    /// Address to serve HTTPS on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Certificate chain (PEM, leaf first), no key. Repeat for several
    /// sites; SNI picks among them (the first is the default).
    #[arg(long = "cert", required = true, value_name = "CHAIN.pem")]
    pub certs: Vec<PathBuf>,
    /// Key server (HOST:PORT). Repeat for failover; tried healthiest first.
    #[arg(long = "keyserver", required = true, value_name = "HOST:PORT")]
    pub keyservers: Vec<String>,
    /// CA certificate(s) (PEM) the key servers' certificates must chain to.
    #[arg(long, value_name = "PEM")]
    pub keyserver_ca: PathBuf,
    /// Client certificate (PEM) the edge presents to key servers.
    #[arg(long, value_name = "PEM")]
    pub client_cert: PathBuf,
    /// Private key (PEM) of that client certificate (the mutual-TLS
    /// credential towards the key server, not a site key).
    #[arg(long, value_name = "PEM")]
    pub client_key: PathBuf,
    /// Name to verify key server certificates against. Default: the IP
    /// address dialled (the certificate needs an IP SAN).
    #[arg(long, value_name = "NAME")]
    pub keyserver_name: Option<String>,
    /// Talk to key servers with TLS 1.2 only and the deployed edge's two
    /// suites (PROTOCOL.md "Transport"), for parity tests.
    #[arg(long)]
    pub tls12_only: bool,
    /// Prometheus /metrics listener.
    #[arg(
        long = "metrics",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8444"
    )]
    pub metrics: String,
    /// Handshake worker threads (handshakes in progress at most).
    #[arg(long, default_value_t = 256)]
    pub workers: usize,
    /// Accepted connections waiting for a worker at most; beyond, closed unserved.
    #[arg(long, default_value_t = 1024)]
    pub accept_queue: usize,
    /// Deadline of one handshake's signature, failover included (ms).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub keyless_timeout_ms: u64,
    /// Deadline of a whole handshake from accept (ms).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Mutual-TLS connections per key server.
    #[arg(long, default_value_t = 2)]
    pub keyserver_connections: usize,
    /// Signing jobs waiting in the keyless hub at most; beyond, refused.
    #[arg(long, default_value_t = 4096)]
    pub keyless_queue: usize,
}

/// Why the edge could not start. Names the flag, file or address; the
/// underlying error is the source (the binary prints the chain).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A `--cert` file that cannot be read.
    #[error("{}", path.display())]
    CertRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `--cert` file larger than any chain.
    #[error("{}: {len} bytes is too large for a certificate chain", path.display())]
    CertTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// A PEM section that does not parse.
    #[error("{}", path.display())]
    CertPem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A `--cert` file holding a private key.
    #[error("{}: holds a private key; the edge must never have one (the key server signs)", .0.display())]
    HoldsPrivateKey(PathBuf),
    /// A `--cert` file without a certificate.
    #[error("{}: no CERTIFICATE in file", .0.display())]
    NoCertificate(PathBuf),
    /// The leaf certificate does not parse.
    #[error("{}: leaf certificate: {reason}", path.display())]
    Leaf {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// The leaf's public key is of a kind the edge cannot sign with.
    #[error("{}: leaf public key", path.display())]
    LeafKey {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: keycore_keys::SpkiError,
    },
    /// An address flag that does not resolve.
    #[error("address {addr:?}")]
    Address {
        /// The flag's value.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// An address flag that resolves to nothing.
    #[error("address {0:?} resolves to nothing")]
    Unresolved(String),
    /// The key-server client TLS material.
    #[error(transparent)]
    KeyserverTls(#[from] TlsConfigError),
    /// rustls refused the protocol versions.
    #[error("TLS versions")]
    TlsVersions(#[source] rustls::Error),
    /// `--workers 0`.
    #[error("--workers must be at least 1")]
    NoWorkers,
    /// No `--keyserver`.
    #[error("at least one --keyserver")]
    NoKeyservers,
    /// A listener could not be opened or read back.
    #[error("{what} {addr}")]
    Listen {
        /// "listen on", "metrics listener on".
        what: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker or acceptor thread could not be started.
    #[error("starting an HTTPS thread")]
    Thread(#[source] std::io::Error),
    /// The keyless hub's executor could not start (glommio's error, as
    /// text: it is not `Send`).
    #[error("starting the keyless hub: {0}")]
    Hub(String),
}

/// How long start-up waits for a first key-server connection.
const STARTUP_CONNECT_WAIT: Duration = Duration::from_secs(2);

fn resolve(s: &str) -> Result<SocketAddr, EdgeError> {
    s.to_socket_addrs()
        .map_err(|source| EdgeError::Address {
            addr: s.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| EdgeError::Unresolved(s.to_owned()))
}

/// A running edge.
#[derive(Debug)]
pub struct Edge {
    /// HTTPS address.
    pub addr: SocketAddr,
    /// `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// Counters.
    pub stats: Arc<metrics::EdgeStats>,
    https: server::HttpsServer,
    hub: keyless::HubThread,
    metrics: metrics::MetricsServer,
}

impl Edge {
    /// Start from flags: load certificates, start the hub, listen.
    pub fn start(args: &EdgeArgs) -> Result<Edge, EdgeError> {
        let keyservers = args
            .keyservers
            .iter()
            .map(|k| resolve(k))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = ClientTls::from_paths(
            &ClientTlsPaths {
                ca: args.keyserver_ca.clone(),
                cert: args.client_cert.clone(),
                key: args.client_key.clone(),
            },
            &TlsOptions {
                tls12_only: args.tls12_only,
                server_name: args.keyserver_name.clone(),
            },
        )?;
        let sites = args
            .certs
            .iter()
            .map(|p| certs::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let stats = Arc::new(metrics::EdgeStats::new(&args.keyservers));
        let keyless_timeout = Duration::from_millis(args.keyless_timeout_ms.max(1));
        let hub = keyless::HubThread::start(
            keyless::HubConfig {
                keyservers,
                tls,
                connections: args.keyserver_connections,
                attempt_timeout: keyless_timeout,
                queue_cap: args.keyless_queue,
            },
            stats.clone(),
        )?;
        // Serve as soon as one key server is connected (or after a short
        // wait: a key server that is down must not keep the edge from
        // starting; its visitors fail with a counted reason meanwhile).
        let up_by = std::time::Instant::now() + STARTUP_CONNECT_WAIT;
        while std::time::Instant::now() < up_by
            && stats
                .keyservers
                .iter()
                .all(|k| k.connections_up.load(std::sync::atomic::Ordering::Relaxed) == 0)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if stats
            .keyservers
            .iter()
            .all(|k| k.connections_up.load(std::sync::atomic::Ordering::Relaxed) == 0)
        {
            tracing::warn!(
                "no key server connected within {STARTUP_CONNECT_WAIT:?}; serving anyway (handshakes fail until one is up)"
            );
        }
        let resolver = Arc::new(certs::Resolver::new(
            sites
                .into_iter()
                .map(|s| {
                    let k =
                        signer::KeylessKey::new(s.key.clone(), hub.hub.clone(), keyless_timeout);
                    (s, k)
                })
                .collect(),
        ));
        let mut server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(EdgeError::TlsVersions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
        // Stateful resumption (session IDs / TLS 1.3 PSK by ID), so a
        // visitor that resumes skips the key server, as at a real edge.
        server_cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        server_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let metrics = metrics::MetricsServer::start(resolve(&args.metrics)?, stats.clone())
            .map_err(|source| EdgeError::Listen {
                what: "metrics listener on",
                addr: args.metrics.clone(),
                source,
            })?;
        let https = server::HttpsServer::start(
            resolve(&args.listen)?,
            Arc::new(server_cfg),
            resolver.clone(),
            stats.clone(),
            server::Limits {
                workers: args.workers,
                accept_queue: args.accept_queue,
                handshake_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
                ..server::Limits::default()
            },
        )?;
        for s in resolver.entries() {
            let ski: String = s.key.ski.iter().map(|b| format!("{b:02x}")).collect();
            tracing::info!(
                cert = %s.path.display(),
                names = ?s.names,
                key = %s.key.kind,
                ski,
                "serving certificate (key held by the key server)"
            );
        }
        Ok(Edge {
            addr: https.addr,
            metrics_addr: metrics.addr,
            stats,
            https,
            hub,
            metrics,
        })
    }

    /// Stop accepting, finish in-flight connections, close key-server
    /// connections.
    pub fn stop(mut self) {
        self.https.stop();
        self.hub.stop();
        self.metrics.stop();
    }
}

/// The first line `keycore edge` prints on stdout once it serves starts
/// with this, then the HTTPS and metrics addresses (see [`start_cli`]).
pub const READY_PREFIX: &str = "keycore edge: https://";

/// Parse the ready line: `(https address, metrics address)`.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix(READY_PREFIX)?;
    let (https, rest) = rest.split_once(' ')?;
    let m = rest.strip_prefix("(metrics http://")?.split_once('/')?.0;
    Some((https.parse().ok()?, m.parse().ok()?))
}

/// `keycore edge`: start, print where it listens, run until SIGTERM/SIGINT
/// (the caller waits for the signal and then calls [`Edge::stop`]).
pub fn start_cli(args: &EdgeArgs) -> Result<Edge, EdgeError> {
    let e = Edge::start(args)?;
    println!(
        "{READY_PREFIX}{} (metrics http://{}/metrics), {} certificate(s), key servers {}",
        e.addr,
        e.metrics_addr,
        args.certs.len(),
        args.keyservers.join(", ")
    );
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let line = format!(
            "{READY_PREFIX}127.0.0.1:4443 (metrics http://127.0.0.1:9/metrics), 1 certificate(s), key servers a:1"
        );
        assert_eq!(
            parse_ready_line(&line),
            Some((
                "127.0.0.1:4443".parse().unwrap(),
                "127.0.0.1:9".parse().unwrap()
            ))
        );
        assert_eq!(parse_ready_line("keycore edge: starting"), None);
    }
}
