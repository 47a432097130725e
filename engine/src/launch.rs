//! Start-up: turn a validated [`Config`] into a running server.
//!
//! Control plane only (runs once, may allocate, log and take its time):
//! load every key store into the [`KeyIndex`], build the TLS configuration,
//! register the start-up gauges, start the reactors and the metrics endpoint,
//! write the pid file. Errors name the file, key or URI involved.
//!
//! What start-up loads (keys, stores, TLS, certificate gauges) is built by
//! [`crate::load::build`], the same function a reload runs, so start-up
//! and reload cannot load differently (the key-load policy is described
//! there).

use crate::audit::{self, AuditWriter};
use crate::config::Config;
use crate::endpoint::MetricsServer;
use crate::health::{Health, ReadyCheck, Unready, HEARTBEAT_DEADLINE};
use crate::load;
use crate::metrics::Registry;
use crate::ops::{self, PidFile};
use crate::record::{RecordSettings, Recorder};
use crate::reload::{self, Reloader};
use crate::security::{AuditMsg, Identities};
use crate::server::ServerError;
use crate::server::{self, SecurityParts, Served, ServerHandle, ServerSettings};
use crate::swap::Swap;
use crate::trace::TraceConfigError;
use crate::trace::{TraceSettings, Tracer};
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the server could not start (or a load failed). Every variant names
/// the setting and its file or address; the underlying error is the source
/// (the binary prints the chain).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The key stores, TLS material or client rules failed to load.
    #[error(transparent)]
    Load(#[from] load::LoadError),
    /// `tracing_address` cannot be used.
    #[error(transparent)]
    Trace(#[from] TraceConfigError),
    /// The address is taken, or the reactors could not start on it.
    #[error("listen on {addr} (port)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: ServerError,
    },
    /// A reactor failed while stopping.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A file or thread of the process could not be created: the audit
    /// file, the span exporter, the record file, the metrics listener, the
    /// pid file.
    #[error("{what}")]
    Io {
        /// The setting and file or address, and what failed.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `map_err` for an I/O failure described by `what`.
fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// A running server with its metrics endpoint.
#[derive(Debug)]
pub struct Running {
    /// The reactors.
    pub server: ServerHandle,
    /// The metrics endpoint, if enabled.
    pub metrics: Option<MetricsServer>,
    /// What `/healthz` and `/readyz` answer.
    pub health: Arc<Health>,
    /// Reloads the configuration, keys and TLS material (SIGHUP).
    pub reloader: Arc<Reloader>,
    /// The request tracer, when `tracing_enabled`.
    pub tracer: Option<Arc<Tracer>>,
    /// The traffic recorder, when `record_file` is set.
    pub recorder: Option<Arc<Recorder>>,
    pid_file: Option<PidFile>,
    /// The audit writer (always running: it also merges the per-identity
    /// metrics; it writes a file only with `audit_file`).
    audit: AuditWriter,
    /// The served state in force (for the unload records at stop).
    served: Arc<Swap<Served>>,
}

impl Running {
    /// Drain and stop everything; returns when every core has exited.
    /// `/readyz` answers 503 "draining" from the start of the drain, while
    /// the metrics listener stays up until the cores are gone.
    pub fn stop(self) -> Result<(), LaunchError> {
        self.health.set_draining();
        self.server.shutdown();
        let r = self.server.join();
        // The cores are gone: export what they traced, then stop.
        if let Some(t) = &self.tracer {
            t.shutdown();
        }
        // The cores are gone: their last records go to the file.
        if let Some(r) = &self.recorder {
            r.stop();
        }
        // The cores sent their last counts before exiting; the keys are
        // unloaded with the process.
        let tx = self.audit.tx();
        audit::key_records(&tx, "key_unload", &self.served.get().keys);
        tx.event("server_stopped", &[]);
        keycore_keys::set_event_sink(None);
        self.audit.stop();
        drop(self.metrics);
        if let Some(p) = &self.pid_file {
            p.remove();
        }
        Ok(r?)
    }
}

/// The readiness checks of a launched server (issue 14): keys loaded, and
/// every key store ready by its own account (`KeyStore::readiness`: for
/// PKCS#11, every key with at least one partition up; cloud keys are ready
/// once `launch` returns, after their start-up fetch answered). Both read
/// the served state in force at probe time (a reload changes them).
fn readiness_checks(served: Arc<Swap<Served>>) -> Vec<ReadyCheck> {
    vec![Box::new(move || {
        let s = served.get();
        if s.keys.is_empty() {
            return Err(Unready::NoKeys);
        }
        for store in &s.stores {
            store.readiness()?;
        }
        Ok(())
    })]
}

/// Raise the open-file limit and warn when it cannot cover the
/// configuration (issue 12 item 13).
pub fn check_nofile_limit(cfg: &Config) -> Option<ops::NofileLimit> {
    let cores = cfg.core_ids(&server::available_cpus()).len();
    let needed = ops::nofile_needed(cores, cfg.limits.max_connections_per_core as u64);
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

/// Start everything the config describes.
pub fn launch(cfg: &Config) -> Result<Running, LaunchError> {
    // Keys the reference has that keycore parses but does not act on yet:
    // say so once instead of silently ignoring them.
    if cfg.sign_retry_count > 0 {
        tracing::warn!(
            "sign_retry_count: not applied; PKCS#11 keys retry by their failure policy (another session, after a login or a busy answer; docs/pkcs11/README.md), software keys cannot fail transiently"
        );
    }
    if let Some(t) = cfg.current_time {
        // A fixed clock turns off real-time certificate checks: expired or
        // not-yet-valid client certificates are accepted. Testing only.
        let at = crate::config::format_rfc3339(t);
        tracing::warn!(
            current_time = %at,
            "current_time is set: client and server certificates are checked against this fixed time, not the clock (real-time expiry checks are off; for tests only)"
        );
    }
    check_nofile_limit(cfg);
    // Fail before loading keys (a PKCS#11 login or a cloud fetch can take a
    // while) when another process has the address; `server::start` claims
    // it for good (see `server::port`).
    if cfg.listen_addr().port() != 0 {
        drop(
            server::port::PortClaim::take(cfg.listen_addr()).map_err(|e| LaunchError::Listen {
                addr: cfg.listen_addr(),
                source: e.into(),
            })?,
        );
    }
    // Issue 18: the audit writer starts before the keys load, so the
    // backends' start-up events (HSM logins) are recorded; it also owns the
    // client identities (labels for its records and metrics, kept for the
    // process's life; a reload rebuilds the key policies).
    let audit = AuditWriter::start(&cfg.security, |tx| {
        Arc::new(Identities::new(&cfg.security, Some(tx)))
    })
    .map_err(io_err(
        "audit_file: cannot open (does its directory exist?)",
    ))?;
    let identities = audit.shared().identities();
    // Backends' control-plane events (HSM logins) go to the same writer.
    {
        let tx = audit.tx();
        keycore_keys::set_event_sink(Some(Arc::new(move |kind, fields| tx.event(kind, fields))));
    }
    let built = load::build(cfg, &[], &identities);
    if built.is_err() {
        keycore_keys::set_event_sink(None);
    }
    let built = built?;
    if built.served.keys.is_empty() {
        tracing::warn!(
            "no private keys loaded: every key operation will be answered 'key not found'"
        );
    } else {
        tracing::info!(keys = built.served.keys.len(), "private keys loaded");
    }
    let trace_settings = TraceSettings::from_config(cfg)?;
    let tracer = match trace_settings {
        None => None,
        Some(t) => Some(Tracer::start(t).map_err(io_err("start the span exporter thread"))?),
    };
    // Blocking: the writer must know the keys before the first counts. The
    // first served generation is 1 (`Swap::new`), so its epoch is 1.
    let _ = audit.tx().send_blocking(AuditMsg::Keys {
        epoch: 1,
        labels: audit::key_labels(&built.served.keys),
    });
    {
        let tx = audit.tx();
        tx.event(
            "server_started",
            &[
                ("listen", &cfg.listen_addr().to_string()),
                ("keys", &built.served.keys.len().to_string()),
                (
                    "client_identities",
                    &cfg.security.client_identities.len().to_string(),
                ),
                ("key_policies", &cfg.security.key_policies.len().to_string()),
            ],
        );
        audit::key_records(&tx, "key_load", &built.served.keys);
    }
    if !cfg.security.client_identities.is_empty() {
        tracing::info!(
            identities = cfg.security.client_identities.len(),
            "client certificate allow-list on: certificates matching no client_identities entry are refused in the handshake"
        );
    }
    if !cfg.security.key_policies.is_empty() {
        tracing::info!(
            restricted_keys = built.served.policy.restricted(),
            "key policies compiled"
        );
    }
    let cpus = cfg.core_ids(&server::available_cpus());
    let recorder = match RecordSettings::from_config(cfg) {
        None => None,
        Some(s) => {
            let r = Recorder::start(&s, cpus.len()).map_err(io_err(format!(
                "record_file {}: cannot create (does its directory exist?)",
                s.path.display()
            )))?;
            tracing::info!(file = %s.path.display(), max_bytes = s.max_bytes, files = s.files, "recording traffic shape (no payloads)");
            Some(r)
        }
    };
    let mut registry = Registry {
        loaded: Swap::new(Arc::new(built.loaded)),
        ..Default::default()
    };
    registry.renderers.push(audit.shared());
    if let Some(t) = &tracer {
        registry.renderers.push(t.clone());
    }
    if let Some(r) = &recorder {
        registry.renderers.push(r.clone());
    }
    reload::record_success(&registry);
    let served = Arc::new(Swap::new(Arc::new(built.served)));
    let security = SecurityParts {
        identities: identities.clone(),
        audit: Some(audit.tx()),
        audit_ok: audit.shared().fail_closed_flag(),
        audit_interval: cfg.security.audit_interval,
    };
    // The pid file is written before the listener serves (issue 12 item 10):
    // whoever reads it (`keycore reload`, an init script) never finds a
    // serving process without it, and a pid file that cannot be written
    // stops start-up before any edge is answered. A later start-up failure
    // drops it, which removes it. A second instance never gets here: the
    // exclusive port check above refused it, so it cannot clobber the
    // owner's file.
    let pid_file = match &cfg.pid_file {
        Some(p) => Some(
            PidFile::create(p)
                .map_err(io_err(format!("pid_file {}: cannot write", p.display())))?,
        ),
        None => None,
    };
    let server = server::start_served(
        ServerSettings {
            listen: cfg.listen_addr(),
            cpus,
            limits: cfg.limits.clone(),
            tracer: tracer.clone(),
            recorder: recorder.clone(),
        },
        served.clone(),
        registry,
        security,
    )
    .map_err(|source| LaunchError::Listen {
        addr: cfg.listen_addr(),
        source,
    })?;
    let health = Arc::new(Health::new(
        readiness_checks(served.clone()),
        HEARTBEAT_DEADLINE,
    ));
    let reloader = Arc::new(Reloader::new(
        cfg.clone(),
        built.records,
        served.clone(),
        server.registry.clone(),
        identities,
        Some(audit.tx()),
    ));
    let metrics = match cfg.metrics_addr() {
        Some(a) => Some(
            MetricsServer::start_with_health(a, server.registry.clone(), health.clone())
                .map_err(io_err(format!("metrics_port: cannot listen on {a}")))?,
        ),
        None => None,
    };
    Ok(Running {
        server,
        metrics,
        health,
        reloader,
        tracer,
        recorder,
        pid_file,
        audit,
        served,
    })
}
