//! Client-side TLS settings for talking to a key server: the CA that signs the
//! server's certificate, the client certificate and key the server demands
//! (PROTOCOL.md "Transport": mutual TLS is mandatory), and which protocol
//! versions and suites to offer.
//!
//! This module owns building one `rustls::ClientConfig`, once, from files or
//! DER. It does no I/O on sockets. The config is shared read-only by every
//! connection of every core (an `Arc`), as DESIGN.md asks of shared state.

use rustls::crypto::aws_lc_rs as provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Paths of the PEM files a client needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientTlsPaths {
    /// CA certificate(s) that the server's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain (leaf first), presented to the server.
    pub cert: PathBuf,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
}

/// Which TLS the client offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Offer only TLS 1.2 with `ECDHE-ECDSA-AES256-GCM-SHA384` and
    /// `ECDHE-RSA-AES256-GCM-SHA384`, exactly what the deployed edge offers
    /// (PROTOCOL.md "Transport"). Default false: rustls defaults (TLS 1.3 and
    /// 1.2), which is what a modern client would do.
    pub tls12_only: bool,
    /// Name to verify the server certificate against. `None`: the IP address
    /// of the server being dialled (so the server certificate needs an IP SAN).
    pub server_name: Option<String>,
}

/// A ready client TLS configuration.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Shared by every connection; built once.
    pub config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

/// Why client TLS material cannot be used; each variant names the file or
/// value, the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A certificate file that cannot be read as PEM.
    #[error("{}", path.display())]
    ReadCerts {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file without a certificate.
    #[error("{}: no CERTIFICATE in file", .0.display())]
    NoCertificate(PathBuf),
    /// The client key file.
    #[error("client key {} (want a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A CA certificate rustls refuses as a trust anchor.
    #[error("CA certificate rejected")]
    Ca(#[source] rustls::Error),
    /// rustls refuses the protocol versions with its provider.
    #[error("TLS versions")]
    Versions(#[source] rustls::Error),
    /// The client certificate chain and key do not go together (or are unusable).
    #[error("client certificate/key rejected")]
    ClientCert(#[source] rustls::Error),
    /// `server_name` is not a DNS name or IP address.
    #[error("server name {name:?}")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

impl ClientTls {
    /// Load the CA, client certificate chain and key from PEM files.
    pub fn from_paths(
        paths: &ClientTlsPaths,
        opts: &TlsOptions,
    ) -> Result<ClientTls, TlsConfigError> {
        let ca = read_certs(&paths.ca)?;
        let chain = read_certs(&paths.cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&paths.key).map_err(|source| TlsConfigError::Key {
                path: paths.key.clone(),
                source,
            })?;
        ClientTls::from_der(ca, chain, key, opts)
    }

    /// Build from DER values already in memory.
    pub fn from_der(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        opts: &TlsOptions,
    ) -> Result<ClientTls, TlsConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(TlsConfigError::Ca)?;
        }
        let mut prov = provider::default_provider();
        let builder = if opts.tls12_only {
            prov.cipher_suites = vec![
                provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ];
            rustls::ClientConfig::builder_with_provider(Arc::new(prov))
                .with_protocol_versions(&[&rustls::version::TLS12])
        } else {
            rustls::ClientConfig::builder_with_provider(Arc::new(prov))
                .with_safe_default_protocol_versions()
        }
        .map_err(TlsConfigError::Versions)?;
        let config = builder
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(TlsConfigError::ClientCert)?;
        let server_name = match &opts.server_name {
            None => None,
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|source| {
                TlsConfigError::ServerName {
                    name: n.clone(),
                    source,
                }
            })?),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name to verify the server at `addr` against.
    pub fn server_name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(addr.ip().into()),
        }
    }
}

/// Every certificate in a PEM file; an error naming the file if none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let read = |source| TlsConfigError::ReadCerts {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unusable TLS files are refused by name, the cause as the source.
    #[test]
    fn unusable_tls_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(
            read_certs(&empty),
            Err(TlsConfigError::NoCertificate(p)) if p == empty
        ));
        let missing = dir.path().join("missing.pem");
        let e = read_certs(&missing).unwrap_err();
        assert!(
            matches!(&e, TlsConfigError::ReadCerts { path, .. } if *path == missing),
            "{e:?}"
        );
        let chain = keycore_keys::error_chain(&e);
        assert_eq!(chain.matches("missing.pem").count(), 1, "{chain}");
        assert!(
            chain.len() > missing.display().to_string().len() + 2,
            "{chain}"
        );
        let e = ClientTls::from_der(
            Vec::new(),
            Vec::new(),
            PrivateKeyDer::Pkcs8(vec![0u8; 8].into()),
            &TlsOptions {
                tls12_only: false,
                server_name: Some("not a name!".into()),
            },
        )
        .unwrap_err();
        assert!(matches!(e, TlsConfigError::ClientCert(_)), "{e:?}");
    }
}
