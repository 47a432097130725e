//! `local_tls`: the baseline for the edge's handshake figures. The same
//! HTTPS server as `keycore edge` (same accept loop, worker pool, HTTP page
//! and metrics), but rustls holds the private key and signs in-process, as a
//! conventional TLS terminator does. Comparing `keycore loadgen --handshakes`
//! against both, in one run, isolates what keyless signing costs.
//!
//! Not a product: benchmarking only, loopback only.
//!
//! Usage: `local_tls --listen 127.0.0.1:9443 --cert site.pem --key site.key`
//! (prints the same ready line as `keycore edge`; stops on SIGTERM/SIGINT or
//! when stdin closes).

use anyhow::Context;
use clap::Parser;
use keycore_edge::{certs, metrics, server};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM), held in this process.
    #[arg(long)]
    key: PathBuf,
    /// Handshake worker threads (as `keycore edge --workers`).
    #[arg(long, default_value_t = 256)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&a.cert)
        .with_context(|| a.cert.display().to_string())?
        .collect::<Result<_, _>>()
        .with_context(|| a.cert.display().to_string())?;
    let key = PrivateKeyDer::from_pem_file(&a.key).with_context(|| a.key.display().to_string())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("certificate and key")?;
    // Same session cache and ALPN as the edge (keycore-edge lib.rs).
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stats = Arc::new(metrics::EdgeStats::new(&[]));
    let mut srv = server::HttpsServer::start(
        a.listen,
        Arc::new(cfg),
        Arc::new(certs::Resolver::new(Vec::new())),
        stats,
        server::Limits {
            workers: a.workers,
            ..server::Limits::default()
        },
    )?;
    println!(
        "{}{} (metrics http://127.0.0.1:0/metrics), local key",
        keycore_edge::READY_PREFIX,
        srv.addr
    );
    // Run until stdin closes (the harness holds it open) or a signal ends us.
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    srv.stop();
    Ok(())
}
