//! `keycore demo`: the README's first command. Generates a throwaway PKI
//! and keys of every kind, writes a gokeyless.yaml for them, serves it on
//! loopback through the same config path as `keycore serve`, drives load and
//! prints a summary with the server's own counters.

use anyhow::{Context, Result};
use keycore_engine::config;
use keycore_engine::keys::KeyKind;
use keycore_loadgen::client::BlockingClient;
use keycore_loadgen::tls::{ClientTls, ClientTlsPaths, TlsOptions};
use keycore_protocol::{Message, Op, Ski};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `keycore demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where to write the PKI, keys and gokeyless.yaml. Default: a fresh
    /// temporary directory, removed at exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long to drive load, per operation.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Reactor cores for the server. Default 1 (the other core drives load).
    #[arg(long, default_value_t = 1)]
    pub server_cores: usize,
    /// Client connections driving load.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Requests pipelined per connection per round trip.
    #[arg(long, default_value_t = 64)]
    pub depth: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::duration::parse_duration(s)
}

/// Run the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let t0 = Instant::now();
    let pki = keycore_engine::pki::generate(&dir)?;
    println!(
        "PKI and {} keys generated in {} ms under {}",
        pki.key_files.len(),
        t0.elapsed().as_millis(),
        dir.display()
    );
    let yaml = format!(
        "# written by `keycore demo`\nloglevel: 2\nport: 0\nmetrics_port: 0\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - dir: {}\nlisten_address: 127.0.0.1\ncores: {}\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display(),
        pki.keys_dir.display(),
        args.server_cores,
    );
    let cfg_path = dir.join("gokeyless.yaml");
    std::fs::write(&cfg_path, &yaml).with_context(|| format!("write {}", cfg_path.display()))?;
    let loaded = config::from_yaml_str(&yaml, &cfg_path, &|_| None)?;
    let running = keycore_engine::launch::launch(&loaded.config)?;
    let addr = running.server.addr;
    println!(
        "keycore serving on {addr} ({} core(s)); config {}",
        args.server_cores,
        cfg_path.display()
    );

    let tls = ClientTls::from_paths(
        &ClientTlsPaths {
            ca: pki.ca_cert.clone(),
            cert: pki.client_cert.clone(),
            key: pki.client_key.clone(),
        },
        &TlsOptions {
            tls12_only: false,
            server_name: Some("localhost".into()),
        },
    )?;
    let keys: Vec<(KeyKind, Ski)> = keycore_engine::keys::software::load_dir(&pki.keys_dir)
        .into_iter()
        .filter_map(|r| r.ok())
        .map(|e| (e.kind, e.ski))
        .collect();
    let plan: [(&str, Op, KeyKind, usize); 5] = [
        (
            "ECDSA P-256 SHA-256",
            Op::ECDSA_SIGN_SHA256,
            KeyKind::EcdsaP256,
            32,
        ),
        (
            "RSA-2048 PKCS#1 SHA-256",
            Op::RSA_SIGN_SHA256,
            KeyKind::Rsa { bits: 2048 },
            32,
        ),
        (
            "RSA-2048 PSS SHA-256",
            Op::RSA_PSS_SIGN_SHA256,
            KeyKind::Rsa { bits: 2048 },
            32,
        ),
        ("Ed25519", Op::ED25519_SIGN, KeyKind::Ed25519, 64),
        ("ping", Op::PING, KeyKind::EcdsaP256, 8),
    ];
    println!(
        "\n{:<26} {:>10} {:>12} {:>8}   ({} connections x {} pipelined, {:?} each)",
        "operation", "ops/s", "mean µs/op", "errors", args.connections, args.depth, args.duration
    );
    for (name, op, kind, len) in plan {
        let ski = keys.iter().find(|(k, _)| *k == kind).map(|(_, s)| *s);
        let (ok, errors, secs) = drive(addr, &tls, op, ski, len, args)?;
        println!(
            "{name:<26} {:>10.0} {:>12.1} {errors:>8}",
            ok as f64 / secs,
            secs * 1e6 * args.connections as f64 / (ok.max(1)) as f64
        );
    }
    let reg = running.server.registry.clone();
    println!(
        "\nserver counters: {} requests, {} responses, {} connections accepted, {} TLS failures",
        reg.total_requests(),
        reg.sum(|c| c.responses.get()),
        reg.sum(|c| c.accepted.get()),
        reg.sum(|c| c.tls_failures.get())
    );
    running.stop()?;
    println!("server drained and stopped.");
    Ok(())
}

/// Closed-loop load: each connection keeps `depth` requests pipelined.
fn drive(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
    op: Op,
    ski: Option<Ski>,
    len: usize,
    args: &DemoArgs,
) -> Result<(u64, u64, f64)> {
    let start = Instant::now();
    let results: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..args.connections)
            .map(|_| {
                s.spawn(move || -> Result<(u64, u64)> {
                    let mut c = BlockingClient::connect(addr, tls)?;
                    let payload = vec![0x5au8; len];
                    let msg = Message {
                        opcode: Some(op),
                        payload: Some(&payload),
                        ski: if op == Op::PING { None } else { ski.as_ref() },
                        ..Message::default()
                    };
                    let batch = vec![msg; args.depth];
                    let (mut ok, mut err) = (0u64, 0u64);
                    while start.elapsed() < args.duration {
                        for r in c.pipeline(&batch)? {
                            if r.error_code().is_none() {
                                ok += 1
                            } else {
                                err += 1
                            }
                        }
                    }
                    Ok((ok, err))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("driver thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let (mut ok, mut err) = (0, 0);
    for r in results {
        let (o, e) = r?;
        ok += o;
        err += e;
    }
    Ok((ok, err, secs))
}
