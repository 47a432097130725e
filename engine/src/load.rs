//! One load of what the cores serve, for start-up and reload alike: every
//! key store (software keys read, backend stores opened or kept through the
//! registry), the TLS configuration, the client rules and key policies, and
//! the control-plane gauges of that load.
//!
//! Owns: [`build`] (the one function start-up and a reload both run, so
//! they cannot load differently), [`load_keys`] (also `serve --check`'s
//! loader) and [`LoadError`].
//!
//! Must not: publish anything (the caller swaps the result in), start
//! threads or reactors, or depend on `launch` / `reload` (both call it; the
//! layering check keeps the engine's modules free of circles).
//!
//! Key-load policy: `key_load_errors: fail` (default, as the reference)
//! stops the load at the first key that can't be read or parsed; `skip` logs
//! it with its path and reason and goes on. A duplicate key (same SKI from
//! two sources) is always logged and the first one kept.

use crate::config::{Config, KeyLoadErrors, KeyStore};
use crate::metrics::{Loaded, StaticGauge};
use crate::registry::{self, StoreRecord};
use crate::security::{ClientRules, Identities, Policy};
use crate::server::{tls, Served, Stores};
use keycore_keys::{software, KeyEntry, KeyIndex};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

/// Why a load failed (start-up stops; a reload keeps the running state).
/// Every variant names the setting and its file; the cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A `dir:` key store that is not a readable directory.
    #[error("private_key_stores: dir {}: not a readable directory", .0.display())]
    KeyDir(PathBuf),
    /// A key file failed under `key_load_errors: fail`.
    #[error("loading private keys (set key_load_errors: skip to start without it)")]
    KeyLoad(#[source] software::KeyLoadError),
    /// A backend store (PKCS#11, KMS) could not be opened.
    #[error(transparent)]
    Open(#[from] registry::OpenError),
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The client identities have no slot left.
    #[error(transparent)]
    Clients(#[from] crate::security::NoIdentitySlot),
}

/// Load every key store. Returns the index, the opened backend stores (in
/// `StoreId` order) and the seconds each store took (for
/// `keyless_key_load_duration`). `uri:` entries go to the backend registry,
/// which routes each to the backend that claims it.
pub fn load_keys(cfg: &Config) -> Result<(KeyIndex, Stores, Vec<f64>), LoadError> {
    let k = load_keys_reusing(cfg, &[])?;
    Ok((k.index, k.stores, k.seconds))
}

/// What [`load_keys_reusing`] loaded.
#[derive(Debug)]
pub struct LoadedKeys {
    /// Every key.
    pub index: KeyIndex,
    /// The opened backend stores, in `StoreId` order.
    pub stores: Stores,
    /// Each store's record for the next reload, in `StoreId` order.
    pub records: Vec<StoreRecord>,
    /// Seconds each store took (`keyless_key_load_duration`).
    pub seconds: Vec<f64>,
    /// Key files that failed and were skipped (`key_load_errors: skip`;
    /// each is logged with its path and reason).
    pub skipped: u64,
}

/// [`load_keys`] for start-up and reload: every software key is read; a
/// backend store whose URIs and settings are unchanged since `previous` is
/// kept open (see `registry::open_all_reusing`).
pub fn load_keys_reusing(cfg: &Config, previous: &[StoreRecord]) -> Result<LoadedKeys, LoadError> {
    let mut skipped = 0u64;
    let mut index = KeyIndex::default();
    let mut seconds = Vec::new();
    let mut uris = Vec::new();
    for store in &cfg.private_key_stores {
        let t0 = Instant::now();
        let results: Vec<Result<KeyEntry, software::KeyLoadError>> = match store {
            KeyStore::Dir(d) => {
                if !d.is_dir() {
                    return Err(LoadError::KeyDir(d.clone()));
                }
                software::load_dir(d)
            }
            KeyStore::File(f) => vec![software::load_file(f)],
            KeyStore::Uri(u) => {
                uris.push(u.clone());
                continue;
            }
        };
        for r in results {
            match r {
                Ok(e) => add(&mut index, e),
                Err(e) if cfg.key_load_errors == KeyLoadErrors::Skip => {
                    skipped += 1;
                    tracing::error!(error = %e, "skipping key that failed to load (key_load_errors: skip)");
                }
                Err(e) => return Err(LoadError::KeyLoad(e)),
            }
        }
        seconds.push(t0.elapsed().as_secs_f64());
    }
    let mut stores = Stores::new();
    let mut records = Vec::new();
    for opened in registry::open_all_reusing(&uris, cfg, previous)? {
        for e in opened.keys {
            add(&mut index, e);
        }
        seconds.push(opened.seconds);
        stores.push(opened.store);
        records.push(opened.record);
    }
    Ok(LoadedKeys {
        index,
        stores,
        records,
        seconds,
        skipped,
    })
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

/// The control-plane gauges of one load (start-up or reload): key files
/// skipped, and the certificate expiry of `auth_cert` and
/// `cloudflare_ca_cert` (warning about a certificate that expired or
/// expires within 30 days).
fn gauges(cfg: &Config, skipped: u64) -> Vec<StaticGauge> {
    let mut gauges = vec![StaticGauge {
        name: "keycore_keys_skipped".into(),
        help: "Key files that failed to load at start-up (or the last reload) and were skipped (key_load_errors: skip); each is logged with its path and reason.".into(),
        labels: Vec::new(),
        value: skipped as f64,
    }];
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
            gauges.push(g);
        }
    }
    gauges
}

/// Expiry gauge for a certificate file (`certificate_expiration_timestamp_seconds`).
fn cert_expiry_gauge(which: &str, path: &Path) -> Option<StaticGauge> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    // Label values are escaped by the metrics writer (a quote in a subject
    // or a path no longer needs replacing here).
    Some(StaticGauge {
        name: "certificate_expiration_timestamp_seconds".into(),
        help: "Expiry of the server's certificates, as a Unix timestamp.".into(),
        labels: vec![
            ("source", which.to_owned()),
            ("path", path.display().to_string()),
            ("subject", cert.subject().to_string()),
            ("serial_number", cert.raw_serial_as_string()),
        ],
        value: cert.validity().not_after.timestamp() as f64,
    })
}

/// Everything loaded from one configuration.
#[derive(Debug)]
pub struct Built {
    /// What the cores serve.
    pub served: Served,
    /// What the scrape shows of it.
    pub loaded: Loaded,
    /// Each backend store's record, for the next reload's reuse.
    pub records: Vec<StoreRecord>,
    /// Backends kept open from `previous`.
    pub kept: Vec<&'static str>,
    /// Backends opened afresh.
    pub opened: Vec<&'static str>,
}

/// Load keys, stores and TLS material for `cfg`, keeping each store of
/// `previous` whose URIs and settings are unchanged. Publishes nothing.
pub fn build(
    cfg: &Config,
    previous: &[StoreRecord],
    identities: &Arc<Identities>,
) -> Result<Built, LoadError> {
    let LoadedKeys {
        index: keys,
        stores,
        records,
        seconds: key_load_seconds,
        skipped,
    } = load_keys_reusing(cfg, previous)?;
    // The client allow-list and limits (issue 18), compiled against the
    // process's identity table (ids by name, kept across reloads); the
    // verifier of this generation's TLS configuration admits by them.
    let clients = Arc::new(ClientRules::build(&cfg.security, identities)?);
    let tls = tls::server_config_with(
        &tls::TlsSettings {
            cert: &cfg.auth_cert,
            key: &cfg.auth_key,
            client_ca: &cfg.cloudflare_ca_cert,
            tls12_only: cfg.tls12_only,
            current_time: cfg.current_time,
        },
        Some(clients.clone()),
    )?;
    let policy = Arc::new(Policy::build(&cfg.security, &keys, &clients));
    let mut kept = Vec::new();
    let mut opened = Vec::new();
    for s in &stores {
        if previous.iter().any(|r| r.is(s)) {
            kept.push(s.name());
        } else {
            opened.push(s.name());
        }
    }
    Ok(Built {
        loaded: Loaded {
            gauges: gauges(cfg, skipped),
            key_load_seconds,
            stores: stores.clone(),
        },
        served: Served {
            keys: Arc::new(keys),
            stores,
            tls,
            policy,
            clients,
        },
        records,
        kept,
        opened,
    })
}
