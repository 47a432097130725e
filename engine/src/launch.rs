//! Start-up: turn a validated [`Config`] into a running server.
//!
//! Control plane only (runs once, may allocate, log and take its time):
//! load every key store into the [`KeyIndex`], build the TLS configuration,
//! register the start-up gauges, start the reactors and the metrics endpoint,
//! write the pid file. Errors name the file, key or URI involved.
//!
//! Key-load policy: `key_load_errors: fail` (default, as the reference)
//! stops start-up at the first key that can't be read or parsed;
//! `skip` logs it with its path and reason and goes on. A duplicate key (same
//! SKI from two sources) is always logged and the first one kept.

use crate::config::{Config, KeyLoadErrors, KeyStore, Pkcs11Dispatch};
use crate::health::{Health, ReadyCheck, HEARTBEAT_DEADLINE};
use crate::keys::{software, KeyEntry, KeyIndex};
use crate::kms::{KmsOptions, KmsStore};
use crate::metrics::{MetricsServer, Registry, StaticGauge};
use crate::ops::{self, PidFile};
use crate::pkcs11::{DispatchMode, Pkcs11Options, Pkcs11Store};
use crate::server::{self, tls, Limits, ServerHandle, ServerSettings};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

/// A running server with its metrics endpoint.
#[derive(Debug)]
pub struct Running {
    /// The reactors.
    pub server: ServerHandle,
    /// The metrics endpoint, if enabled.
    pub metrics: Option<MetricsServer>,
    /// What `/healthz` and `/readyz` answer.
    pub health: Arc<Health>,
    pid_file: Option<PidFile>,
}

impl Running {
    /// Drain and stop everything; returns when every core has exited.
    /// `/readyz` answers 503 "draining" from the start of the drain, while
    /// the metrics listener stays up until the cores are gone.
    pub fn stop(self) -> Result<()> {
        self.health.set_draining();
        self.server.shutdown();
        let r = self.server.join();
        drop(self.metrics);
        if let Some(p) = &self.pid_file {
            p.remove();
        }
        r
    }
}

/// The readiness checks of a launched server (issue 14): keys loaded, and
/// every PKCS#11 key with at least one partition up. Cloud keys need no
/// check here: `launch` returns only after their start-up fetch answered.
fn readiness_checks(keys: usize, pkcs11: &Arc<Pkcs11Store>) -> Vec<ReadyCheck> {
    let mut checks: Vec<ReadyCheck> = vec![Box::new(move || {
        if keys == 0 {
            Err("no private keys loaded".into())
        } else {
            Ok(())
        }
    })];
    if pkcs11.partitions() > 0 {
        let p = pkcs11.clone();
        checks.push(Box::new(move || {
            let down = p.keys_without_healthy_partition();
            if down.is_empty() {
                return Ok(());
            }
            let mut names: Vec<&str> = down.iter().map(String::as_str).collect();
            names.dedup();
            Err(format!(
                "pkcs11: {} key(s) with no healthy partition ({})",
                down.len(),
                names.join(", ")
            ))
        }));
    }
    checks
}

/// Raise the open-file limit and warn when it cannot cover the
/// configuration (issue 12 item 13).
pub fn check_nofile_limit(cfg: &Config) -> Option<ops::NofileLimit> {
    let cores = cfg.core_ids(&server::available_cpus()).len();
    let needed = ops::nofile_needed(cores, u64::from(cfg.max_connections_per_core));
    match ops::raise_nofile_limit(needed) {
        Ok(l) => {
            if l.soft != l.before {
                tracing::info!(
                    from = l.before,
                    to = l.soft,
                    "raised the open-file soft limit to the hard limit"
                );
            }
            if !l.enough() {
                tracing::warn!(
                    limit = l.soft,
                    needed,
                    "open-file limit (RLIMIT_NOFILE) is below cores x max_connections_per_core + {}: connections beyond it fail with EMFILE; raise LimitNOFILE / ulimit -n or lower max_connections_per_core",
                    ops::NOFILE_SLACK
                );
            }
            Some(l)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            None
        }
    }
}

/// Limits from the config.
pub fn limits(cfg: &Config) -> Limits {
    Limits {
        max_connections_per_core: cfg.max_connections_per_core as usize,
        max_in_flight: cfg.max_in_flight_per_connection as usize,
        idle_timeout: cfg.idle_timeout,
        handshake_timeout: cfg.handshake_timeout,
        drain_timeout: cfg.drain_timeout,
        read_buffer_bytes: cfg.read_buffer_bytes,
        write_buffer_bytes: cfg.write_buffer_bytes,
        max_body_len: keycore_protocol::MAX_BODY_LEN,
    }
}

/// Load every key store. Returns the index, the PKCS#11 and KMS stores and
/// the seconds each store took (for `keyless_key_load_duration`).
pub fn load_keys(cfg: &Config) -> Result<(KeyIndex, Pkcs11Store, KmsStore, Vec<f64>)> {
    let mut index = KeyIndex::default();
    let mut seconds = Vec::new();
    let mut pkcs11_uris = Vec::new();
    let mut kms_uris = Vec::new();
    for store in &cfg.private_key_stores {
        let t0 = Instant::now();
        let results: Vec<Result<KeyEntry, software::KeyLoadError>> = match store {
            KeyStore::Dir(d) => {
                if !d.is_dir() {
                    bail!("private_key_stores: dir {}: not a readable directory", d.display());
                }
                software::load_dir(d)
            }
            KeyStore::File(f) => vec![software::load_file(f)],
            // RFC 3986 schemes are case-insensitive; the PKCS#11 parser
            // accepts `PKCS11:` too, so it must be routed there as well.
            KeyStore::Uri(u) if u.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:")) => {
                pkcs11_uris.push(u.clone());
                continue;
            }
            KeyStore::Uri(u) if KmsStore::handles(u) => {
                kms_uris.push(u.clone());
                continue;
            }
            KeyStore::Uri(u) => bail!(
                "private_key_stores: uri {u}: not a PKCS#11 URI, Azure Key Vault / Managed HSM key URL, Google Cloud KMS key version or AWS KMS key ARN"
            ),
        };
        for r in results {
            match r {
                Ok(e) => add(&mut index, e),
                Err(e) if cfg.key_load_errors == KeyLoadErrors::Skip => {
                    tracing::error!(error = %e, "skipping key that failed to load (key_load_errors: skip)");
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(
                        "loading private keys (set key_load_errors: skip to start without it)",
                    ))
                }
            }
        }
        seconds.push(t0.elapsed().as_secs_f64());
    }
    let pkcs11 = if pkcs11_uris.is_empty() {
        Pkcs11Store::default()
    } else {
        let t0 = Instant::now();
        let opts = Pkcs11Options {
            cores: cfg.core_ids(&server::available_cpus()).len(),
            dispatch: match cfg.pkcs11_dispatch {
                Pkcs11Dispatch::Auto => None,
                Pkcs11Dispatch::Inline => Some(DispatchMode::Inline),
                Pkcs11Dispatch::Offload => Some(DispatchMode::Offload),
            },
            // The reference's sign_timeout bounds one sign attempt; it is the
            // natural default for the per-operation watchdog.
            op_timeout: cfg
                .sign_timeout
                .unwrap_or(Pkcs11Options::default().op_timeout),
            skip_failed_keys: cfg.key_load_errors == KeyLoadErrors::Skip,
            ..Pkcs11Options::default()
        };
        let (store, entries) =
            Pkcs11Store::open(&pkcs11_uris, &opts).context("private_key_stores: PKCS#11")?;
        for e in entries {
            add(&mut index, e);
        }
        seconds.push(t0.elapsed().as_secs_f64());
        store
    };
    let kms = if kms_uris.is_empty() {
        KmsStore::default()
    } else {
        let t0 = Instant::now();
        let mut opts = KmsOptions::from_env().context("cloud key service settings")?;
        opts.skip_failed_keys = cfg.key_load_errors == KeyLoadErrors::Skip;
        let (store, entries) = KmsStore::open(&kms_uris, &opts)
            .context("loading cloud keys (Azure Key Vault / Google Cloud KMS / AWS KMS)")?;
        for e in entries {
            add(&mut index, e);
        }
        seconds.push(t0.elapsed().as_secs_f64());
        store
    };
    Ok((index, pkcs11, kms, seconds))
}

fn add(index: &mut KeyIndex, e: KeyEntry) {
    let source = e.source.clone();
    if let Err(dup) = index.insert(e) {
        tracing::warn!(
            source = %dup.source,
            kept = %index.entries().iter().find(|k| k.ski == dup.ski).map(|k| k.source.as_str()).unwrap_or("?"),
            "duplicate key (same SKI); keeping the first"
        );
    } else {
        tracing::debug!(%source, "key loaded");
    }
}

/// Expiry of the first certificate in a PEM file, as a Unix timestamp.
pub fn cert_expiry(path: &Path) -> Option<f64> {
    cert_expiry_gauge("", path).map(|g| g.value)
}

/// Expiry gauge for a certificate file (`certificate_expiration_timestamp_seconds`).
fn cert_expiry_gauge(which: &str, path: &Path) -> Option<StaticGauge> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let subject = cert.subject().to_string().replace('"', "'");
    Some(StaticGauge {
        name: "certificate_expiration_timestamp_seconds".into(),
        help: "Expiry of the server's certificates, as a Unix timestamp.".into(),
        labels: format!(
            "source=\"{which}\",path=\"{}\",subject=\"{subject}\",serial_number=\"{}\"",
            path.display(),
            cert.raw_serial_as_string()
        ),
        value: cert.validity().not_after.timestamp() as f64,
    })
}

/// `keycore_pkcs11_*` series: health of each partition, read at scrape time.
fn render_pkcs11_health(p: &Pkcs11Store, s: &mut String) {
    use std::fmt::Write as _;
    let health = p.health();
    type Get = fn(&crate::pkcs11::PartitionHealth) -> u64;
    let series: [(&str, &str, &str, Get); 11] = [
        (
            "keycore_pkcs11_partition_healthy",
            "gauge",
            "1 while the partition is in use, 0 while it is out (a probe failed).",
            |h| h.healthy as u64,
        ),
        (
            "keycore_pkcs11_partition_failures_total",
            "counter",
            "Times the partition was taken out of use.",
            |h| h.failures,
        ),
        (
            "keycore_pkcs11_partition_recoveries_total",
            "counter",
            "Times the partition came back.",
            |h| h.recoveries,
        ),
        (
            "keycore_pkcs11_session_reopens_total",
            "counter",
            "Sessions re-opened after a session error.",
            |h| h.reopens,
        ),
        (
            "keycore_pkcs11_op_timeouts_total",
            "counter",
            "Operations that exceeded the per-operation timeout, or waited past it.",
            |h| h.timeouts,
        ),
        (
            "keycore_pkcs11_retries_total",
            "counter",
            "Requests tried again after an error (on another session, after a login, after a busy answer).",
            |h| h.retries,
        ),
        (
            "keycore_pkcs11_relogins_total",
            "counter",
            "Logins made again on the control path after the token logged keycore out.",
            |h| h.relogins,
        ),
        (
            "keycore_pkcs11_module_reinits_total",
            "counter",
            "Module re-initialisations (C_Finalize + C_Initialize) made for the partition.",
            |h| h.reinits,
        ),
        (
            "keycore_pkcs11_probes_total",
            "counter",
            "Probes of the partition (token, session, keys) after a run of failures or while out.",
            |h| h.probes,
        ),
        (
            "keycore_pkcs11_probe_failures_total",
            "counter",
            "Probes that failed: each takes the partition out or keeps it out.",
            |h| h.probe_failures,
        ),
        (
            "keycore_pkcs11_sessions_quarantined",
            "gauge",
            "Worker threads stuck in a call past the timeout (their sessions close when the call returns).",
            |h| h.quarantined,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for h in &health {
            let label = h.partition.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(s, "{name}{{partition=\"{label}\"}} {}", get(h));
        }
    }
    let name = "keycore_pkcs11_op_errors_total";
    let _ = writeln!(
        s,
        "# HELP {name} Errors of PKCS#11 key operations by what the error policy did about them (fail, busy, session, handle, login, device).\n# TYPE {name} counter"
    );
    for h in &health {
        let label = h.partition.replace('\\', "\\\\").replace('"', "\\\"");
        for (i, a) in crate::pkcs11::policy::Action::ALL.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}{{partition=\"{label}\",action=\"{}\"}} {}",
                a.name(),
                h.errors[i]
            );
        }
    }
}

/// Start everything the config describes.
pub fn launch(cfg: &Config) -> Result<Running> {
    // Keys the reference has that keycore parses but does not act on yet:
    // say so once instead of silently ignoring them.
    if cfg.tracing_enabled {
        tracing::warn!(
            "tracing_enabled: Jaeger tracing is not implemented by keycore yet; ignored"
        );
    }
    if cfg.sign_retry_count > 0 {
        tracing::warn!(
            "sign_retry_count: not applied; PKCS#11 keys retry once on a healthy session after a recoverable error, software keys cannot fail transiently"
        );
    }
    check_nofile_limit(cfg);
    let (index, pkcs11, kms, key_load_seconds) = load_keys(cfg)?;
    let key_count = index.len();
    if index.is_empty() {
        tracing::warn!(
            "no private keys loaded: every key operation will be answered 'key not found'"
        );
    } else {
        tracing::info!(keys = index.len(), "private keys loaded");
    }
    let tls = tls::server_config(&tls::TlsSettings {
        cert: &cfg.auth_cert,
        key: &cfg.auth_key,
        client_ca: &cfg.cloudflare_ca_cert,
        tls12_only: cfg.tls12_only,
        current_time: cfg.current_time,
    })?;
    let mut registry = Registry {
        key_load_seconds,
        ..Default::default()
    };
    for (which, p) in [
        ("auth_cert", &cfg.auth_cert),
        ("cloudflare_ca_cert", &cfg.cloudflare_ca_cert),
    ] {
        if let Some(g) = cert_expiry_gauge(which, p) {
            let left = g.value - UNIX_EPOCH.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
            if left < 0.0 {
                tracing::error!(file = %p.display(), "{which} has expired");
            } else if left < 30.0 * 86400.0 {
                tracing::warn!(file = %p.display(), days = (left / 86400.0) as u64, "{which} expires soon");
            }
            registry.gauges.push(g);
        }
    }
    let pkcs11 = Arc::new(pkcs11);
    let pkcs11_for_health = pkcs11.clone();
    let kms = Arc::new(kms);
    {
        let (p, k) = (pkcs11.clone(), kms.clone());
        registry.extra = Some(Arc::new(move |s: &mut String| {
            if p.partitions() > 0 {
                render_pkcs11_health(&p, s);
            }
            k.render_metrics(s);
        }));
    }
    let cpus = cfg.core_ids(&server::available_cpus());
    let server = server::start(
        ServerSettings {
            listen: cfg.listen_addr(),
            cpus,
            limits: limits(cfg),
        },
        tls,
        Arc::new(index),
        server::Backends { pkcs11, kms },
        registry,
    )
    .with_context(|| format!("listen on {} (port)", cfg.listen_addr()))?;
    let health = Arc::new(Health::new(
        readiness_checks(key_count, &pkcs11_for_health),
        HEARTBEAT_DEADLINE,
    ));
    let metrics = match cfg.metrics_addr() {
        Some(a) => Some(
            MetricsServer::start_with_health(a, server.registry.clone(), health.clone())
                .with_context(|| format!("metrics_port: cannot listen on {a}"))?,
        ),
        None => None,
    };
    let pid_file = match &cfg.pid_file {
        Some(p) => Some(
            PidFile::create(p)
                .with_context(|| format!("pid_file {}: cannot write", p.display()))?,
        ),
        None => None,
    };
    Ok(Running {
        server,
        metrics,
        health,
        pid_file,
    })
}
