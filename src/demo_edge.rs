//! `keycore demo --edge`: the announcement's picture, on loopback.
//!
//! 1. a throwaway PKI and keys; a site certificate for localhost whose key is
//!    one the key server serves;
//! 2. the key server (this process, software keys, same config path as
//!    `keycore serve`);
//! 3. `keycore edge` as a separate process (this binary), given only the
//!    certificate chain and its mutual-TLS client credential;
//! 4. `curl -v --cacert ca.pem https://localhost:PORT/`, output shown.
//!
//! The edge runs in its own process so that "the edge never had the key" is
//! true of a whole address space, not of a module.

use anyhow::{Context, Result};
use keycore_engine::config;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Longest wait for the edge process to print its ready line.
const EDGE_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Kill the edge child when the demo ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the edge demo in `dir` with the site key file `site_key` (a name in
/// the demo's keys directory, e.g. `p256.key`).
pub fn run(dir: &Path, site_key: &str, hold: bool) -> Result<()> {
    let pki = keycore_engine::pki::generate(dir)?;
    let key_file = pki.keys_dir.join(site_key);
    anyhow::ensure!(
        key_file.exists(),
        "no key {site_key} in {} (have: {})",
        pki.keys_dir.display(),
        pki.key_files
            .iter()
            .filter_map(|(_, p)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let site_cert = dir.join("site.pem");
    keycore_engine::pki::issue_site_cert(&pki, &key_file, "localhost", 20, &site_cert)?;
    println!("1. site certificate for localhost: {}", site_cert.display());
    println!(
        "   its private key {} is given to the key server only",
        key_file.display()
    );

    let yaml = format!(
        "# written by `keycore demo --edge`\nloglevel: 2\nport: 0\nmetrics_port: 0\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - dir: {}\nlisten_address: 127.0.0.1\ncores: 1\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display(),
        pki.keys_dir.display(),
    );
    let cfg_path = dir.join("gokeyless.yaml");
    std::fs::write(&cfg_path, &yaml).with_context(|| format!("write {}", cfg_path.display()))?;
    let loaded = config::from_yaml_str(&yaml, &cfg_path, &|_| None)?;
    let running = keycore_engine::launch::launch(&loaded.config)?;
    let ks = running.server.addr;
    println!(
        "2. key server on {ks} (software keys from {})",
        pki.keys_dir.display()
    );

    let exe = std::env::current_exe().context("this program's path")?;
    let mut cmd = Command::new(exe);
    cmd.arg("edge")
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--cert")
        .arg(&site_cert)
        .args(["--keyserver", &ks.to_string()])
        .arg("--keyserver-ca")
        .arg(&pki.ca_cert)
        .arg("--client-cert")
        .arg(&pki.client_cert)
        .arg("--client-key")
        .arg(&pki.client_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!(
        "3. keycore edge --cert {} --keyserver {ks} --keyserver-ca {} --client-cert {} --client-key {}",
        site_cert.display(),
        pki.ca_cert.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut child = ChildGuard(cmd.spawn().context("starting keycore edge")?);
    let (edge, metrics) = wait_ready(&mut child.0)?;
    println!(
        "   edge serving https://{edge} (pid {}), metrics http://{metrics}/metrics",
        child.0.id()
    );

    let url = format!("https://localhost:{}/", edge.port());
    println!("4. curl -v --cacert {} {url}\n", pki.ca_cert.display());
    let out = Command::new("curl")
        .args(["-v", "-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca_cert)
        .arg(&url)
        .output();
    match out {
        Ok(o) => {
            print!("{}", String::from_utf8_lossy(&o.stderr));
            print!("{}", String::from_utf8_lossy(&o.stdout));
            anyhow::ensure!(o.status.success(), "curl failed ({})", o.status);
        }
        Err(e) => println!("(curl not available: {e}; try it from another terminal)"),
    }
    let reg = running.server.registry.clone();
    println!(
        "\nkey server counters: {} keyless requests answered",
        reg.sum(|c| c.responses.get())
    );
    if hold {
        println!(
            "\nedge and key server keep running; try: curl -v --cacert {} {url}\nCtrl-C to stop.",
            pki.ca_cert.display()
        );
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
            .context("install signal handlers")?;
        let _ = signals.forever().next();
    }
    drop(child);
    running.stop()?;
    Ok(())
}

/// Read the edge's stdout until its ready line (bounded in time by a
/// watchdog that kills the child, which ends the read).
fn wait_ready(child: &mut Child) -> Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    let stdout = child.stdout.take().context("edge stdout")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(a) = keycore_edge::parse_ready_line(&line) {
                let _ = tx.send(Ok(a));
                // Keep draining so the edge never blocks on a full pipe.
                for _ in lines.by_ref() {}
                return;
            }
            println!("   edge: {line}");
        }
        let _ = tx.send(Err(anyhow::anyhow!("keycore edge exited before serving")));
    });
    match rx.recv_timeout(EDGE_START_TIMEOUT) {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "keycore edge (pid {pid}) did not report ready within {EDGE_START_TIMEOUT:?}"
        ),
    }
}
