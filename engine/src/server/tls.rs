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
use anyhow::{bail, Context, Result};
use rustls::crypto::aws_lc_rs;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::path::Path;
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

/// A clock fixed at the configured `current_time` (testing, as the reference).
#[derive(Debug)]
struct FixedTime(UnixTime);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

/// Build the server's rustls configuration. Every error names the file.
pub fn server_config(s: &TlsSettings<'_>) -> Result<Arc<ServerConfig>> {
    server_config_with(s, None)
}

/// [`server_config`] with the client-identity allow-list (issue 18): when
/// `rules` has one, a certificate that chains but matches no configured
/// identity is refused inside the handshake.
pub fn server_config_with(
    s: &TlsSettings<'_>,
    rules: Option<Arc<ClientRules>>,
) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(s.cert)
        .with_context(|| format!("auth_cert {}: cannot read", s.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "auth_cert {}: not a PEM certificate chain",
                s.cert.display()
            )
        })?;
    if certs.is_empty() {
        bail!("auth_cert {}: no CERTIFICATE block", s.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(s.key)
        .with_context(|| format!("auth_key {}: no usable PEM private key", s.key.display()))?;

    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(s.client_ca)
        .with_context(|| format!("cloudflare_ca_cert {}: cannot read", s.client_ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "cloudflare_ca_cert {}: not a PEM certificate file",
                s.client_ca.display()
            )
        })?;
    for ca in cas {
        roots.add(ca).with_context(|| {
            format!(
                "cloudflare_ca_cert {}: unusable CA certificate",
                s.client_ca.display()
            )
        })?;
    }
    if roots.is_empty() {
        bail!(
            "cloudflare_ca_cert {}: no CA certificate",
            s.client_ca.display()
        );
    }

    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut verifier: Arc<dyn ClientCertVerifier> =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("client certificate verifier")?;
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
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "auth_cert {} / auth_key {}: key does not match certificate or is unsupported",
                s.cert.display(),
                s.key.display()
            )
        })?;
    // The edge keeps connections open for a long time; tickets only help
    // reconnects after churn and cost nothing on the data path.
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}
