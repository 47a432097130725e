//! The key-backend registry: the one place that knows which backends exist.
//!
//! Owns the list of [`Registration`]s and the routing of `uri:` store entries
//! to them: each backend says which URIs it claims, the registry groups the
//! configured URIs by backend (in configuration order), opens each backend
//! once with its URIs and a [`StoreId`], and returns the opened stores in
//! `StoreId` order with their keys. The server then gives each core its part
//! of every store (`KeyStore::core`) and the metrics endpoint renders each
//! store (`KeyStore::render_metrics`).
//!
//! Adding a backend: a crate (or module) implementing
//! `keycore_keys::{KeyStore, CoreStore}`, a `Registration` for it below
//! (its `open` turns the `Config` into the backend's own options) and its
//! line in [`BACKENDS`]. See docs/CONTRIBUTING.md "Add a backend".
//!
//! Reload: [`open_all_reusing`] keeps a previously opened store (same
//! `Arc`, so its sessions and connections stay) when its backend gets the
//! same URIs (PINs included) and the same settings (`Registration::settings`)
//! as before, and asks it for its keys again (`KeyStore::rescan`: a PKCS#11
//! store searches its tokens on their login sessions; a store without it
//! keeps its list). A store whose settings are unchanged but whose URIs
//! changed is reopened through the old one (`KeyStore::reopen`: a PKCS#11
//! store keeps each token whose URI did not change, with its login,
//! sessions and worker threads); a store that does not reopen, or whose
//! settings changed, is opened afresh.
//!
//! Must not: be consulted on the data path (dispatch goes by `StoreId`), or
//! know a backend's internals beyond its options struct.

use crate::config::{Config, Pkcs11Dispatch};
use keycore_keys::{Backend, KeyEntry, KeyStore, StoreId, StoreKey};
use std::sync::Arc;

/// What a backend's `open` yields: the shared store and its keys.
pub type Opened = (Arc<dyn KeyStore>, Vec<KeyEntry>);

/// One opened store, as [`open_all`] returns it.
#[derive(Debug)]
pub struct OpenedStore {
    /// The store (its `StoreId` is its position in `open_all`'s answer).
    pub store: Arc<dyn KeyStore>,
    /// Its keys, each with `Backend::Store` naming this store.
    pub keys: Vec<KeyEntry>,
    /// How long opening took (for `keyless_key_load_duration`).
    pub seconds: f64,
    /// Whether [`open_all_reusing`] kept it from a previous load.
    pub reused: bool,
    /// What it was opened from, for reuse by a later reload.
    pub record: StoreRecord,
}

/// What a later reload needs to reuse an opened store: the backend, what
/// it was opened with (URIs with their PINs, and its settings: kept in
/// memory only, never logged), the store and its keys' identities.
#[derive(Debug, Clone)]
pub struct StoreRecord {
    backend: &'static str,
    opened_with: String,
    /// The settings part of `opened_with` (`Registration::settings`).
    settings: String,
    store: Arc<dyn KeyStore>,
    keys: Vec<KeyCopy>,
    seconds: f64,
}

impl StoreRecord {
    /// Whether this record is of `store` (the same open store).
    pub fn is(&self, store: &Arc<dyn KeyStore>) -> bool {
        Arc::ptr_eq(&self.store, store)
    }
}

/// A store key's identity, enough to put it in a new index again.
#[derive(Debug, Clone)]
struct KeyCopy {
    ski: keycore_keys::Ski,
    legacy_digest: Option<[u8; keycore_protocol::CERT_DIGEST_LEN]>,
    kind: keycore_keys::KeyKind,
    spki_der: Vec<u8>,
    source: String,
    key: u32,
}

impl KeyCopy {
    fn of(e: &KeyEntry) -> Option<KeyCopy> {
        let Backend::Store(sk) = e.backend else {
            return None;
        };
        Some(KeyCopy {
            ski: e.ski,
            legacy_digest: e.legacy_digest,
            kind: e.kind,
            spki_der: e.spki_der.clone(),
            source: e.source.clone(),
            key: sk.key,
        })
    }

    fn entry(&self, store: StoreId) -> KeyEntry {
        KeyEntry {
            ski: self.ski,
            legacy_digest: self.legacy_digest,
            kind: self.kind,
            spki_der: self.spki_der.clone(),
            source: self.source.clone(),
            backend: Backend::Store(StoreKey {
                store,
                key: self.key,
            }),
        }
    }
}

/// A backend failed to open: which one, what it was doing, and why.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A `uri:` store entry no registered backend claims.
    #[error("private_key_stores: uri {uri}: not {expected}")]
    Unclaimed {
        /// The entry.
        uri: String,
        /// What the registered backends accept, joined.
        expected: String,
    },
    /// A backend refused its URIs or settings.
    #[error("{context}")]
    Backend {
        /// The backend (`Registration::name`).
        backend: &'static str,
        /// What failed, for the message (names the setting or the stores).
        context: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One backend, as the registry knows it.
#[derive(Debug)]
pub struct Registration {
    /// Short name (logs, errors).
    pub name: &'static str,
    /// What its URIs look like, for the "not claimed" error.
    pub accepts: &'static str,
    /// Whether a `uri:` store entry belongs to this backend.
    pub claims: fn(&str) -> bool,
    /// Open every claimed URI as one store with this id.
    pub open: fn(&[String], &Config, StoreId) -> Result<Opened, OpenError>,
    /// The settings `open` reads from the `Config`, as text: a reload
    /// reuses the open store only when these and the URIs are unchanged.
    pub settings: fn(&Config) -> String,
}

/// Every backend compiled in. Order is routing priority (first claim wins).
pub static BACKENDS: &[Registration] = &[
    PKCS11,
    #[cfg(feature = "kms")]
    KMS,
];

/// Which registered backend claims `uri`, if any.
pub fn claim(uri: &str) -> Option<&'static Registration> {
    BACKENDS.iter().find(|b| (b.claims)(uri))
}

/// Route `uris` to their backends and open each backend that got any, in
/// registration order. The n-th opened store gets `StoreId(n)`.
pub fn open_all(uris: &[String], cfg: &Config) -> Result<Vec<OpenedStore>, OpenError> {
    open_all_reusing(uris, cfg, &[])
}

/// [`open_all`], keeping each store of `previous` whose backend gets the
/// same URIs and settings again: it is asked for its keys again
/// ([`KeyStore::rescan`]) as entries of its new `StoreId`; a store that
/// does not rescan keeps its previous keys, re-numbered to the new id. A
/// failed rescan fails the whole call (the reload is refused).
pub fn open_all_reusing(
    uris: &[String],
    cfg: &Config,
    previous: &[StoreRecord],
) -> Result<Vec<OpenedStore>, OpenError> {
    let mut routed: Vec<Vec<String>> = vec![Vec::new(); BACKENDS.len()];
    for u in uris {
        let Some(i) = BACKENDS.iter().position(|b| (b.claims)(u)) else {
            return Err(OpenError::Unclaimed {
                uri: u.clone(),
                expected: BACKENDS
                    .iter()
                    .map(|b| b.accepts)
                    .collect::<Vec<_>>()
                    .join(", or "),
            });
        };
        routed[i].push(u.clone());
    }
    let mut out = Vec::new();
    for (b, uris) in BACKENDS.iter().zip(&routed) {
        if uris.is_empty() {
            continue;
        }
        let id = StoreId(u16::try_from(out.len()).expect("fewer than 65536 backends"));
        let settings = (b.settings)(cfg);
        let opened_with = format!("{uris:?}\n{settings}");
        if let Some(r) = previous
            .iter()
            .find(|r| r.backend == b.name && r.opened_with == opened_with)
        {
            tracing::debug!(backend = b.name, "key backend unchanged; keeping it open");
            let t0 = std::time::Instant::now();
            let rescanned = r.store.rescan(id).map_err(|e| OpenError::Backend {
                backend: b.name,
                context: RESCAN_CONTEXT,
                source: e.source,
            })?;
            let (keys, seconds) = match rescanned {
                Some(keys) => (keys, t0.elapsed().as_secs_f64()),
                None => (r.keys.iter().map(|k| k.entry(id)).collect(), r.seconds),
            };
            let record = StoreRecord {
                keys: keys.iter().filter_map(KeyCopy::of).collect(),
                seconds,
                ..r.clone()
            };
            out.push(OpenedStore {
                store: r.store.clone(),
                keys,
                seconds,
                reused: true,
                record,
            });
            continue;
        }
        let t0 = std::time::Instant::now();
        // Same settings, other URIs: the store may take over what it has
        // open for the parts that did not change (a PKCS#11 token whose
        // URI is the same keeps its login, sessions and worker threads).
        let reopened = match previous
            .iter()
            .find(|r| r.backend == b.name && r.settings == settings)
        {
            Some(r) => r.store.reopen(uris, id).map_err(|e| OpenError::Backend {
                backend: b.name,
                context: REOPEN_CONTEXT,
                source: e.source,
            })?,
            None => None,
        };
        let (store, keys) = match reopened {
            Some(opened) => opened,
            None => {
                tracing::debug!(backend = b.name, stores = uris.len(), "opening key backend");
                (b.open)(uris, cfg, id)?
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        let record = StoreRecord {
            backend: b.name,
            opened_with,
            settings,
            store: store.clone(),
            keys: keys.iter().filter_map(KeyCopy::of).collect(),
            seconds,
        };
        out.push(OpenedStore {
            store,
            keys,
            seconds,
            reused: false,
            record,
        });
    }
    Ok(out)
}

/// What a kept store's failed rescan is reported as (its error names the
/// URI).
const RESCAN_CONTEXT: &str =
    "reload: finding the keys of an unchanged key store again (its sessions stay open)";

/// What a failed reopen (URIs changed, settings not) is reported as (its
/// error names the URI).
const REOPEN_CONTEXT: &str =
    "reload: opening a key store whose URIs changed (its unchanged tokens stay open)";

fn backend_error(
    backend: &'static str,
    context: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> OpenError {
    move |source| OpenError::Backend {
        backend,
        context,
        source,
    }
}

const PKCS11: Registration = Registration {
    name: "pkcs11",
    accepts: "a PKCS#11 URI",
    claims: |u| u.starts_with("pkcs11:"),
    open: open_pkcs11,
    settings: |c| {
        format!(
            "{:?} {:?} {:?} {:?}",
            c.core_ids(&crate::server::available_cpus()).len(),
            c.pkcs11,
            c.pkcs11_op_timeout(),
            c.key_load_errors
        )
    },
};

fn open_pkcs11(uris: &[String], cfg: &Config, id: StoreId) -> Result<Opened, OpenError> {
    use keycore_pkcs11::{DispatchMode, Pkcs11Options, Pkcs11Store};
    let opts = Pkcs11Options {
        cores: cfg.core_ids(&crate::server::available_cpus()).len(),
        dispatch: match cfg.pkcs11.dispatch {
            Pkcs11Dispatch::Auto => None,
            Pkcs11Dispatch::Inline => Some(DispatchMode::Inline),
            Pkcs11Dispatch::Offload => Some(DispatchMode::Offload),
        },
        sessions_per_core: cfg.pkcs11.sessions_per_core,
        op_timeout: cfg.pkcs11_op_timeout(),
        skip_failed_keys: cfg.key_load_errors == crate::config::KeyLoadErrors::Skip,
    };
    let (store, entries) = Pkcs11Store::open(uris, &opts, id)
        .map_err(|e| backend_error("pkcs11", "private_key_stores: PKCS#11")(e.into()))?;
    Ok((Arc::new(store), entries))
}

#[cfg(feature = "kms")]
const KMS: Registration = Registration {
    name: "kms",
    accepts:
        "an Azure Key Vault / Managed HSM key URL, Google Cloud KMS key version or AWS KMS key ARN",
    claims: keycore_kms::KmsStore::handles,
    open: open_kms,
    settings: |c| format!("{:?} {:?}", c.kms, c.key_load_errors),
};

#[cfg(feature = "kms")]
fn open_kms(uris: &[String], cfg: &Config, id: StoreId) -> Result<Opened, OpenError> {
    use keycore_kms::{KmsOptions, KmsStore};
    // Tunables from the config; credentials and proxy from the environment.
    let mut opts = KmsOptions::new(&cfg.kms, |k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    })
    .map_err(|e| backend_error("kms", "cloud key service settings")(e.into()))?;
    opts.skip_failed_keys = cfg.key_load_errors == crate::config::KeyLoadErrors::Skip;
    let (store, entries) = KmsStore::open(uris, &opts, id).map_err(|e| {
        backend_error(
            "kms",
            "loading cloud keys (Azure Key Vault / Google Cloud KMS / AWS KMS)",
        )(e.into())
    })?;
    Ok((Arc::new(store), entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_route_to_the_backend_that_claims_them() {
        assert_eq!(
            claim("pkcs11:token=a;object=b?pin-value=1").map(|b| b.name),
            Some("pkcs11")
        );
        #[cfg(feature = "kms")]
        for u in [
            "https://v.vault.azure.net/keys/k/1",
            "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
            "arn:aws:kms:eu-west-1:123456789012:key/x",
        ] {
            assert_eq!(claim(u).map(|b| b.name), Some("kms"), "{u}");
        }
        assert!(claim("file:/x.key").is_none());
    }

    #[test]
    fn an_unclaimed_uri_names_every_accepted_form() {
        let e = open_all(&["ftp://x".to_string()], &Config::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("private_key_stores: uri ftp://x: not a PKCS#11 URI"),
            "{msg}"
        );
        #[cfg(feature = "kms")]
        assert!(msg.contains("AWS KMS key ARN"), "{msg}");
    }

    #[test]
    fn no_uris_open_no_store() {
        assert!(open_all(&[], &Config::default()).unwrap().is_empty());
    }
}
