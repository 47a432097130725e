//! The server's TLS configuration: rustls 0.23 with the aws-lc-rs provider,
//! a mandatory client certificate chaining to `cloudflare_ca_cert`, no name
//! check on the client certificate (PROTOCOL.md "Transport").
//!
//! TLS 1.2 keeps the two suites the edge offers
//! (ECDHE-ECDSA/RSA-AES256-GCM-SHA384) among the provider's defaults; TLS 1.3
//! is on unless `tls12_only` pins the reference's behaviour.
//!
//! With `client_identities` configured, the verifier is wrapped by
//! `security::AllowListVerifier` (chain first, then the allow-list).

use crate::security::{AllowListVerifier, ClientRules};
use rustls::crypto::aws_lc_rs;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Paths and switches for [`server_config`].
#[derive(Debug, Clone)]
pub struct TlsSettings<'a> {
    /// Server certificate chain (PEM), `auth_cert`.
    pub cert: &'a Path,
    /// Server private key (PEM), `auth_key`.
    pub key: &'a Path,
    /// CA that client certificates must chain to (PEM), `cloudflare_ca_cert`.
    pub client_ca: &'a Path,
    /// Offer TLS 1.2 only (the reference's behaviour).
    pub tls12_only: bool,
    /// Use this time instead of now for certificate checks (`current_time`).
    pub current_time: Option<SystemTime>,
}

/// Why the TLS configuration could not be built. Every variant names the
/// setting and its file; the PEM reader's or rustls' error is the source.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file that cannot be opened or read.
    #[error("{setting} {}: cannot read", path.display())]
    Read {
        /// `auth_cert` or `cloudflare_ca_cert`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file with a section that is not PEM.
    #[error("{setting} {}: {what}", path.display())]
    NotPem {
        /// `auth_cert` or `cloudflare_ca_cert`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file should have been.
        what: &'static str,
        /// The reader's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// `auth_cert` holds no certificate.
    #[error("auth_cert {}: no CERTIFICATE block", .0.display())]
    NoCertificate(PathBuf),
    /// `auth_key` holds no private key the reader knows.
    #[error("auth_key {}: no usable PEM private key", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A CA certificate rustls refuses.
    #[error("cloudflare_ca_cert {}: unusable CA certificate", path.display())]
    UnusableCa {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// `cloudflare_ca_cert` holds no certificate.
    #[error("cloudflare_ca_cert {}: no CA certificate", .0.display())]
    NoCa(PathBuf),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the protocol versions.
    #[error("TLS protocol versions")]
    Versions(#[source] rustls::Error),
    /// The key does not fit the certificate (or is of a kind rustls refuses).
    #[error("auth_cert {} / auth_key {}: key does not match certificate or is unsupported", cert.display(), key.display())]
    KeyMismatch {
        /// `auth_cert`.
        cert: PathBuf,
        /// `auth_key`.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// A clock fixed at the configured `current_time` (testing, as the reference).
#[derive(Debug)]
struct FixedTime(UnixTime);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

/// Build the server's rustls configuration. Every error names the file.
pub fn server_config(s: &TlsSettings<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(s, None)
}

/// [`server_config`] with the client-identity allow-list (issue 18): when
/// `rules` has one, a certificate that chains but matches no configured
/// identity is refused inside the handshake.
pub fn server_config_with(
    s: &TlsSettings<'_>,
    rules: Option<Arc<ClientRules>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |setting, path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read {
            setting,
            path,
            source,
        }
    };
    let not_pem = |setting, path: &Path, what| {
        let path = path.to_path_buf();
        move |source| TlsError::NotPem {
            setting,
            path,
            what,
            source,
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(s.cert)
        .map_err(read("auth_cert", s.cert))?
        .collect::<Result<_, _>>()
        .map_err(not_pem("auth_cert", s.cert, "not a PEM certificate chain"))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(s.cert.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(s.key).map_err(|source| TlsError::Key {
        path: s.key.to_path_buf(),
        source,
    })?;

    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(s.client_ca)
        .map_err(read("cloudflare_ca_cert", s.client_ca))?
        .collect::<Result<_, _>>()
        .map_err(not_pem(
            "cloudflare_ca_cert",
            s.client_ca,
            "not a PEM certificate file",
        ))?;
    for ca in cas {
        roots.add(ca).map_err(|source| TlsError::UnusableCa {
            path: s.client_ca.to_path_buf(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa(s.client_ca.to_path_buf()));
    }

    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut verifier: Arc<dyn ClientCertVerifier> =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(TlsError::Verifier)?;
    if let Some(rules) = rules.filter(|r| r.has_allow_list()) {
        verifier = Arc::new(AllowListVerifier::new(verifier, rules));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if s.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = match s.current_time {
        Some(t) => {
            let secs = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            ServerConfig::builder_with_details(
                provider,
                Arc::new(FixedTime(UnixTime::since_unix_epoch(secs))),
            )
        }
        None => ServerConfig::builder_with_provider(provider),
    };
    let mut cfg = builder
        .with_protocol_versions(versions)
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::KeyMismatch {
            cert: s.cert.to_path_buf(),
            key: s.key.to_path_buf(),
            source,
        })?;
    // The edge keeps connections open for a long time; tickets only help
    // reconnects after churn and cost nothing on the data path.
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}
