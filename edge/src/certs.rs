//! The edge's certificates and choosing one per handshake (SNI).
//!
//! Owns: reading `--cert` chain files (and refusing any that carries a
//! private key: the edge holds none), reducing each leaf to its public key
//! and SKI, the names it is valid for, and the rustls certificate resolver.
//!
//! Choice per handshake: the certificates whose names match the SNI (exact,
//! or a `*.` wildcard one label deep); if none match (or no SNI, e.g. a
//! visitor dialling an IP) all of them, in command-line order. Among those,
//! the first whose key can make a signature scheme the visitor offered (so a
//! visitor that only offers ECDSA gets the ECDSA certificate of a name that
//! has both).
//!
//! Must not: parse or keep private keys.

use crate::signer::KeylessKey;
use crate::EdgeError;
use keycore_keys::{classify_spki, ski_from_spki, spki_key_bits, KeyKind, Ski};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest certificate file read.
const MAX_CERT_FILE_LEN: u64 = 1024 * 1024;

/// A certificate's public key, as the edge needs it: to name it on the wire
/// (SKI), to choose schemes (kind) and to check signatures (key bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// SKI (SHA-1 of the subjectPublicKey bits).
    pub ski: Ski,
    /// Which kind of key.
    pub kind: KeyKind,
    /// The subjectPublicKey bits: DER RSAPublicKey, uncompressed EC point or
    /// raw Ed25519 key (what aws-lc-rs verifies with).
    pub key_bits: Vec<u8>,
}

impl PublicKey {
    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki(spki: &[u8]) -> Result<PublicKey, keycore_keys::SpkiError> {
        Ok(PublicKey {
            ski: ski_from_spki(spki)?,
            kind: classify_spki(spki)?,
            key_bits: spki_key_bits(spki)?.to_vec(),
        })
    }
}

/// One certificate chain the edge serves.
#[derive(Debug, Clone)]
pub struct SiteCert {
    /// Where it came from.
    pub path: PathBuf,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's public key and SKI.
    pub key: PublicKey,
    /// DNS names (SAN, else CN), lower-case.
    pub names: Vec<String>,
    /// Subject, for the page and logs.
    pub subject: String,
}

/// Read a chain file. Fails, naming the file, if it holds no certificate,
/// holds a private key, or its leaf key is of a kind the edge can't sign with.
pub fn load(path: &Path) -> Result<SiteCert, EdgeError> {
    let read = |source| EdgeError::CertRead {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_CERT_FILE_LEN {
        return Err(EdgeError::CertTooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let pem = std::fs::read(path).map_err(read)?;
    let mut chain = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
        let (kind, der) = item.map_err(|source| EdgeError::CertPem {
            path: path.to_path_buf(),
            source,
        })?;
        match kind {
            SectionKind::Certificate => chain.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(EdgeError::HoldsPrivateKey(path.to_path_buf()))
            }
            _ => {}
        }
    }
    if chain.is_empty() {
        return Err(EdgeError::NoCertificate(path.to_path_buf()));
    }
    let (_, leaf) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| EdgeError::Leaf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let spki = leaf.tbs_certificate.subject_pki.raw.to_vec();
    let key = PublicKey::from_spki(&spki).map_err(|source| EdgeError::LeafKey {
        path: path.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = leaf.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(SiteCert {
        path: path.to_path_buf(),
        subject: leaf.subject().to_string(),
        chain,
        key,
        names,
    })
}

/// Whether certificate name `pattern` covers host `name` (both lower-case).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern == name {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => false,
    }
}

/// A certificate ready for rustls, with what the page shows about it.
#[derive(Debug)]
pub struct Entry {
    /// The certificate.
    pub site: SiteCert,
    /// Its keyless key.
    key: Arc<KeylessKey>,
    certified: Arc<CertifiedKey>,
}

/// The resolver: SNI (and offered schemes) to certificate.
#[derive(Debug)]
pub struct Resolver {
    entries: Vec<Entry>,
}

impl Resolver {
    /// Build from loaded certificates and their keyless keys.
    pub fn new(sites: Vec<(SiteCert, KeylessKey)>) -> Resolver {
        let entries = sites
            .into_iter()
            .map(|(site, key)| {
                let key = Arc::new(key);
                let certified = Arc::new(CertifiedKey::new(
                    site.chain.clone(),
                    key.clone() as Arc<dyn rustls::sign::SigningKey>,
                ));
                Entry {
                    site,
                    key,
                    certified,
                }
            })
            .collect();
        Resolver { entries }
    }

    /// The entry for a handshake with this SNI offering these schemes and
    /// cipher suites.
    pub fn pick(
        &self,
        sni: Option<&str>,
        offered: &[rustls::SignatureScheme],
        suites: &[rustls::CipherSuite],
    ) -> Option<&Entry> {
        let sni = sni.map(str::to_ascii_lowercase);
        let matching = |e: &&Entry| match &sni {
            Some(n) => e.site.names.iter().any(|p| name_matches(p, n)),
            None => false,
        };
        let fits = |e: &&Entry| e.key.can_sign_any(offered) && suites_fit(e, suites);
        self.entries
            .iter()
            .filter(matching)
            .find(fits)
            .or_else(|| self.entries.iter().find(fits))
    }

    /// Every certificate served.
    pub fn entries(&self) -> impl Iterator<Item = &SiteCert> {
        self.entries.iter().map(|e| &e.site)
    }
}

/// In TLS 1.2 the suite names the certificate's key type (ECDHE_ECDSA
/// also covers Ed25519, RFC 8422); a TLS 1.3 suite fits any key.
fn suites_fit(e: &Entry, suites: &[rustls::CipherSuite]) -> bool {
    use rustls::CipherSuite as C;
    let rsa = e.key.is_rsa();
    suites.iter().any(|s| match *s {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS13_AES_256_GCM_SHA384
        | C::TLS13_CHACHA20_POLY1305_SHA256 => true,
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => rsa,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => !rsa,
        _ => false,
    })
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        crate::signer::note_sni(hello.server_name());
        let e = self.pick(
            hello.server_name(),
            hello.signature_schemes(),
            hello.cipher_suites(),
        );
        if e.is_none() {
            tracing::debug!(
                sni = ?hello.server_name(),
                "no certificate can sign any scheme the visitor offered"
            );
        }
        e.map(|e| e.certified.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(name_matches("localhost", "localhost"));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("example.com", "a.example.com"));
    }

    #[test]
    fn a_chain_file_with_a_private_key_is_refused() {
        let dir = tempdir();
        let p = dir.join("bad.pem");
        std::fs::write(
            &p,
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("private key"), "{e}");
        std::fs::write(&p, "nothing here\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "keycore-edge-certs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
