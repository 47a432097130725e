//! `keycore demo`: the README's first command. Generates a throwaway PKI
//! and keys of every kind, writes a gokeyless.yaml for them, serves it on
//! loopback through the same config path as `keycore serve`, drives load and
//! prints a summary with the server's own counters.

use anyhow::{Context, Result};
use keycore_config as config;
use keycore_loadgen::profile::LoopMode;
use keycore_loadgen::tls::ClientTlsPaths;
use keycore_loadgen::LoadSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `keycore demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where to write the PKI, keys and gokeyless.yaml. Default: a fresh
    /// temporary directory, removed at exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long to drive load in the measured pass.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Reactor cores for the server. Default 1 (the other core drives load).
    #[arg(long, default_value_t = 1)]
    pub server_cores: usize,
    /// Client connections driving load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests outstanding in total (closed loop).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Instead of load: start `keycore edge` with only a site certificate
    /// and fetch its page with `curl -v` (the key stays with the key server).
    #[arg(long)]
    pub edge: bool,
    /// With --edge: the site's key (a file of the demo's keys directory:
    /// p256.key, p384.key, rsa2048.key, ed25519.key...).
    #[arg(long, default_value = "p256.key")]
    pub site_key: String,
    /// With --edge: keep the edge and key server running until Ctrl-C.
    #[arg(long)]
    pub hold: bool,
}

fn parse_duration(s: &str) -> Result<Duration, config::DurationError> {
    config::parse_duration(s)
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
    if args.edge {
        return crate::demo_edge::run(&dir, &args.site_key, args.hold);
    }
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

    let tls_paths = ClientTlsPaths {
        ca: pki.ca_cert.clone(),
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
    };
    let mix: BTreeMap<String, f64> = [
        ("ecdsa-p256-sha256", 40.0),
        ("rsa-pss-sha256", 15.0),
        ("rsa-pkcs1-sha256", 15.0),
        ("ed25519", 20.0),
        ("rsa-decrypt", 5.0),
        ("ping", 5.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The server serves every kind; the load uses the sizes an edge mostly
    // sees (RSA-2048, P-256, Ed25519) so each line of the report means one
    // key size. `keycore loadgen --keys DIR` drives any set.
    let load_keys: Vec<PathBuf> = ["rsa2048.key", "p256.key", "ed25519.key"]
        .iter()
        .map(|f| pki.keys_dir.join(f))
        .collect();
    let mut spec = LoadSpec::new(addr, tls_paths, load_keys);
    spec.server_name = Some("localhost".into());
    spec.profile.mode = LoopMode::Closed;
    spec.profile.mix = mix;
    spec.profile.connections = args.connections;
    spec.profile.concurrency = args.concurrency;
    spec.profile.cores = 1;
    spec.profile.zipf_exponent = 0.0;

    // 1. Correctness: every response checked against the public key.
    spec.profile.duration_s = 1.0;
    spec.profile.warmup_s = 0.0;
    spec.profile.verify_fraction = 1.0;
    let check = keycore_loadgen::run(&spec)?;
    println!(
        "\ncorrectness pass: {} responses, every signature / plaintext verified, {} errors",
        check.total_ok(),
        check.total_errors()
    );
    if check.total_errors() > 0 {
        check.print_text(&mut std::io::stdout())?;
        anyhow::bail!("the server answered some requests wrongly");
    }

    // 2. Throughput and latency: closed loop, 2% of responses verified so
    // the generator's own verification doesn't cap the rate.
    spec.profile.duration_s = args.duration.as_secs_f64();
    spec.profile.warmup_s = 1.0;
    spec.profile.verify_fraction = 0.02;
    println!(
        "load pass: closed loop, {} requests outstanding over {} connections, {:.0} s (+1 s warm-up), generator on 1 core\n",
        args.concurrency, args.connections, spec.profile.duration_s
    );
    let report = keycore_loadgen::run(&spec)?;
    report.print_text(&mut std::io::stdout())?;

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
