//! `keycore serve --check`: everything start-up would do except listening.
//!
//! Owns: the check report (one row per thing checked, OK / WARN / FAIL, a
//! detail an operator can act on) and its text table. It runs the same
//! start-up steps as [`crate::launch::launch`] — the TLS material through
//! the same `server_config`, every key store through the same `load_keys`
//! (so PKCS#11 modules are loaded and logged in to, and cloud keys fetched)
//! — then drops them. It is what an operator runs before a reload or a
//! restart, and what the Debian package's sample config fails until filled.
//!
//! Must not: bind the keyless or metrics port, write the pid file, or
//! change anything on disk.

use crate::config::Config;
use crate::launch;
use crate::load;
use crate::server::{self, tls};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but an operator should look.
    Warn,
    /// `serve` would fail to start (or serve nothing useful).
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Outcome.
    pub status: Status,
    /// What was checked (a setting, file or key).
    pub what: String,
    /// The finding.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Rows in check order.
    pub rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, status: Status, what: impl Into<String>, detail: impl Into<String>) {
        self.rows.push(Row {
            status,
            what: what.into(),
            detail: detail.into(),
        });
    }

    /// True when no row failed (exit 0).
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.status != Status::Fail)
    }

    /// The report as an aligned text table with a closing verdict line.
    pub fn render(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|r| r.what.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut s = format!("{:<6} {:<w$}  DETAIL\n", "STATUS", "CHECK");
        for r in &self.rows {
            // Multi-line details (error chains) stay under their row.
            let mut lines = r.detail.lines();
            let _ = writeln!(
                s,
                "{:<6} {:<w$}  {}",
                r.status.label(),
                r.what,
                lines.next().unwrap_or("")
            );
            for l in lines {
                let _ = writeln!(s, "{:<6} {:<w$}  {l}", "", "");
            }
        }
        let count = |st| self.rows.iter().filter(|r| r.status == st).count();
        let _ = writeln!(
            s,
            "{}: {} ok, {} warnings, {} failed",
            if self.passed() { "PASSED" } else { "FAILED" },
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        s
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run every check for `cfg` (read from `source`, with the loader's
/// `warnings`).
pub fn run(cfg: &Config, source: Option<&Path>, warnings: &[String]) -> Report {
    let mut r = Report::default();
    r.push(
        Status::Ok,
        "config",
        match source {
            Some(p) => format!("{} parsed", p.display()),
            None => "no config file; defaults and environment".into(),
        },
    );
    for w in warnings {
        r.push(Status::Warn, "config", w.clone());
    }
    if let Err(e) = cfg.limits.validate() {
        r.push(Status::Fail, "limits", format!("{e:#}"));
    }
    match crate::enroll::decide(cfg) {
        crate::enroll::Decision::Nothing => {}
        crate::enroll::Decision::Enroll => r.push(
            Status::Warn,
            "enroll",
            format!(
                "auth_cert {} or auth_key {} missing: serve will first enroll with {}",
                cfg.auth_cert.display(),
                cfg.auth_key.display(),
                cfg.enroll.endpoint
            ),
        ),
        crate::enroll::Decision::Incomplete(why) => r.push(Status::Fail, "enroll", why),
    }
    match crate::trace::TraceSettings::from_config(cfg) {
        Ok(None) => {}
        Ok(Some(t)) => r.push(
            Status::Ok,
            "tracing",
            format!(
                "spans to {} (OTLP/HTTP), sample rate {}",
                t.url_text, t.sample_rate
            ),
        ),
        Err(e) => r.push(Status::Fail, "tracing", e.to_string()),
    }

    // TLS material, exactly as the listener would load it.
    match tls::server_config(&tls::TlsSettings {
        cert: &cfg.auth_cert,
        key: &cfg.auth_key,
        client_ca: &cfg.cloudflare_ca_cert,
        tls12_only: cfg.tls12_only,
        current_time: cfg.current_time,
    }) {
        Ok(_) => r.push(
            Status::Ok,
            "tls",
            format!(
                "auth_cert {}, auth_key {}, cloudflare_ca_cert {} load and match",
                cfg.auth_cert.display(),
                cfg.auth_key.display(),
                cfg.cloudflare_ca_cert.display()
            ),
        ),
        Err(e) => r.push(Status::Fail, "tls", keycore_keys::error_chain(&e)),
    }
    let now = cfg
        .current_time
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    for (which, p) in [
        ("auth_cert", &cfg.auth_cert),
        ("cloudflare_ca_cert", &cfg.cloudflare_ca_cert),
    ] {
        if let Some(expiry) = load::cert_expiry(p) {
            let days = (expiry - now) / 86400.0;
            let (st, d) = if days < 0.0 {
                (
                    Status::Fail,
                    format!("{} expired {:.0} days ago", p.display(), -days),
                )
            } else if days < 30.0 {
                (
                    Status::Warn,
                    format!("{} expires in {days:.0} days", p.display()),
                )
            } else {
                (
                    Status::Ok,
                    format!("{} valid for {days:.0} more days", p.display()),
                )
            };
            r.push(st, which, d);
        }
    }
    if cfg.current_time.is_some() {
        r.push(
            Status::Warn,
            "current_time",
            "set: certificates are checked against a fixed time, not the clock (testing only)",
        );
    }

    // Keys: the same loader as serve (PKCS#11 login, cloud public-key fetch).
    match load::load_keys(cfg) {
        Ok((index, stores, _)) => {
            for e in index.entries() {
                r.push(
                    Status::Ok,
                    format!("key {}", e.kind),
                    format!("{} (SKI {})", e.source, hex(&e.ski)),
                );
            }
            for line in stores.iter().flat_map(|s| s.status()) {
                r.push(
                    if line.ok { Status::Ok } else { Status::Fail },
                    line.what,
                    line.detail,
                );
            }
            if index.is_empty() {
                r.push(
                    Status::Fail,
                    "private_key_stores",
                    "no private keys loaded: every request would be answered 'key not found'; add a dir:, file: or uri: store",
                );
            } else {
                r.push(
                    Status::Ok,
                    "private_key_stores",
                    format!("{} keys loaded", index.len()),
                );
            }
        }
        Err(e) => r.push(
            Status::Fail,
            "private_key_stores",
            keycore_keys::error_chain(&e),
        ),
    }

    // Listeners are not bound (a running server may hold them); say what
    // serve would bind, and whether another process has the address now
    // (the exclusive claim serve takes; a warning, since --check is often
    // run beside the instance it will replace).
    let metrics = cfg
        .metrics_addr()
        .map_or("disabled".into(), |a| a.to_string());
    let claim = if cfg.listen_addr().port() == 0 {
        Ok(())
    } else {
        server::port::PortClaim::take(cfg.listen_addr()).map(drop)
    };
    match claim {
        Ok(()) => r.push(
            Status::Ok,
            "listen",
            format!(
                "{} (not bound by --check); metrics {metrics}",
                cfg.listen_addr()
            ),
        ),
        Err(e) => r.push(
            Status::Warn,
            "listen",
            format!(
                "{}; serve would refuse to start while it runs",
                keycore_keys::error_chain(&e)
            ),
        ),
    }
    let cores = cfg.core_ids(&server::available_cpus()).len();
    match launch::check_nofile_limit(cfg) {
        Some(l) if l.enough() => r.push(
            Status::Ok,
            "open files",
            format!(
                "limit {} covers {cores} cores x {} connections + slack = {}",
                l.soft, cfg.limits.max_connections_per_core, l.needed
            ),
        ),
        Some(l) => r.push(
            Status::Warn,
            "open files",
            format!(
                "limit {} (hard {}) is below {cores} cores x {} connections + slack = {}: raise LimitNOFILE / ulimit -n",
                l.soft, l.hard, cfg.limits.max_connections_per_core, l.needed
            ),
        ),
        None => r.push(Status::Warn, "open files", "cannot read RLIMIT_NOFILE"),
    }
    if let Some(p) = &cfg.pid_file {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if dir.is_dir() {
            r.push(
                Status::Ok,
                "pid_file",
                format!("{} (directory exists)", p.display()),
            );
        } else {
            r.push(
                Status::Fail,
                "pid_file",
                format!(
                    "{}: directory {} does not exist",
                    p.display(),
                    dir.display()
                ),
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyStore;

    #[test]
    fn defaults_fail_with_a_reason_per_row() {
        // The defaults name server.pem etc. in the working directory and
        // no key store: that is what an unfilled config looks like.
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            auth_cert: d.path().join("server.pem"),
            auth_key: d.path().join("server-key.pem"),
            cloudflare_ca_cert: d.path().join("ca.pem"),
            ..Config::default()
        };
        let r = run(
            &cfg,
            None,
            &["hostname is set: registration is not supported".into()],
        );
        assert!(!r.passed());
        let text = r.render();
        assert!(text.contains("FAIL   tls"), "{text}");
        assert!(text.contains("server.pem"), "{text}");
        assert!(
            text.contains("FAIL   private_key_stores  no private keys"),
            "{text}"
        );
        assert!(text.contains("WARN   config"), "{text}");
        assert!(
            text.lines().last().unwrap().starts_with("FAILED: "),
            "{text}"
        );
    }

    #[test]
    fn a_complete_config_passes_and_lists_every_key() {
        let d = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate(d.path()).unwrap();
        let cfg = Config {
            auth_cert: pki.server_cert.clone(),
            auth_key: pki.server_key.clone(),
            cloudflare_ca_cert: pki.ca_cert.clone(),
            private_key_stores: vec![KeyStore::Dir(pki.keys_dir.clone())],
            pid_file: Some(d.path().join("k.pid")),
            ..Config::default()
        };
        let r = run(&cfg, Some(Path::new("/x/gokeyless.yaml")), &[]);
        let text = r.render();
        assert!(r.passed(), "{text}");
        let keys = std::fs::read_dir(&pki.keys_dir).unwrap().count();
        assert_eq!(
            r.rows.iter().filter(|r| r.what.starts_with("key ")).count(),
            keys,
            "{text}"
        );
        assert!(text.contains("OK     key RSA-2048"), "{text}");
        assert!(text.contains("(SKI "), "{text}");
        assert!(!d.path().join("k.pid").exists(), "--check writes nothing");
    }

    #[test]
    fn a_broken_key_file_fails_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate(d.path()).unwrap();
        let bad = d.path().join("bad.key");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let cfg = Config {
            auth_cert: pki.server_cert.clone(),
            auth_key: pki.server_key.clone(),
            cloudflare_ca_cert: pki.ca_cert.clone(),
            private_key_stores: vec![KeyStore::File(bad.clone())],
            ..Config::default()
        };
        let r = run(&cfg, None, &[]);
        assert!(!r.passed());
        let row = r
            .rows
            .iter()
            .find(|r| r.what == "private_key_stores")
            .unwrap();
        assert_eq!(row.status, Status::Fail);
        assert!(row.detail.contains("bad.key"), "{}", row.detail);
    }

    #[test]
    fn enrollment_and_tracing_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let base = Config {
            auth_cert: d.path().join("server.pem"),
            auth_key: d.path().join("server-key.pem"),
            hostname: "k.example".into(),
            zone_id: "z".into(),
            tracing_enabled: true,
            tracing_address: "127.0.0.1:4318".into(),
            ..Config::default()
        };
        let text = run(&base, None, &[]).render();
        assert!(
            text.contains("FAIL   enroll") && text.contains("enroll_api_token"),
            "{text}"
        );
        assert!(
            text.contains("OK     tracing") && text.contains("http://127.0.0.1:4318/v1/traces"),
            "{text}"
        );
        let cfg = Config {
            enroll: crate::config::EnrollSettings {
                api_token: crate::config::SecretString::new("t"),
                ..base.enroll.clone()
            },
            tracing_address: "https://collector:4318".into(),
            ..base
        };
        let text = run(&cfg, None, &[]).render();
        assert!(
            text.contains("WARN   enroll") && text.contains("serve will first enroll"),
            "{text}"
        );
        assert!(text.contains("FAIL   tracing"), "{text}");
    }
}
