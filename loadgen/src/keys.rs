//! The public keys the generator asks the server to use.
//!
//! The generator never needs a private key: it needs each key's SKI (to name
//! the key on the wire) and its public key (to verify signatures and to
//! encrypt RSA-decrypt requests). So it accepts whatever an operator has at
//! hand: public keys, certificates or private key files, PEM or DER, given as
//! files or directories, and reduces each to its SubjectPublicKeyInfo.
//!
//! This module owns that reduction and nothing else: it does no network I/O
//! and never keeps private key material (a private key is parsed only to
//! derive its public half, then dropped).

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::{self, KeyPair};
use keycore_keys::ski_from_spki;
use keycore_protocol::Ski;
use rustls_pki_types::pem::{PemObject, SectionKind};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Largest key file read (a certificate chain or key is a few KiB; this
/// stops a mistaken path to a large file from being read whole).
const MAX_KEY_FILE_LEN: u64 = 1024 * 1024;

/// The one key kind of the workspace (RSA of any size, ECDSA P-256/P-384/P-521,
/// Ed25519); which operations the generator sends a key is `check::OpKind::accepts`.
pub use keycore_keys::KeyKind;

/// One public key, ready to be named on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// The file it came from (for messages).
    pub source: PathBuf,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// The contents of the subjectPublicKey BIT STRING: DER RSAPublicKey,
    /// uncompressed EC point, or the raw Ed25519 key. The form aws-lc-rs
    /// verification takes.
    pub key_bits: Vec<u8>,
    /// SKI as the edge sends it (PROTOCOL.md "Key identification").
    pub ski: Ski,
    /// Kind of key.
    pub kind: KeyKind,
}

/// A key file that can't be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    /// The file or directory can't be read.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds nothing usable as a key.
    #[error("{path}: {reason}")]
    Unusable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn unusable(path: &Path, reason: impl Into<String>) -> KeyLoadError {
    KeyLoadError::Unusable {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Load public keys from files and directories (one level deep, files in
/// name order). Keys found twice (say a key and its certificate) are kept
/// once. A named file without a key is an error; in a directory, files
/// without a key (CA bundles, configs) are skipped, but at least one key must
/// be found overall.
pub fn load_public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKeyInfo>, KeyLoadError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| KeyLoadError::Io {
            path: p.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| KeyLoadError::Io {
                    path: p.clone(),
                    source: e,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            for f in files {
                // Skip what isn't a key: directories of keys often hold other files.
                if let Ok(keys) = load_file(&f) {
                    push_unique(&mut out, &mut seen, keys);
                }
            }
        } else {
            let keys = load_file(p)?;
            push_unique(&mut out, &mut seen, keys);
        }
    }
    if out.is_empty() {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(KeyLoadError::Unusable {
            path: PathBuf::from(list.join(", ")),
            reason: "no public key, certificate or private key found".into(),
        });
    }
    Ok(out)
}

fn push_unique(out: &mut Vec<PublicKeyInfo>, seen: &mut HashSet<Ski>, keys: Vec<PublicKeyInfo>) {
    for k in keys {
        if seen.insert(k.ski) {
            out.push(k);
        }
    }
}

/// Every key in one file (a PEM file may hold several sections).
pub fn load_file(path: &Path) -> Result<Vec<PublicKeyInfo>, KeyLoadError> {
    let io = |e| KeyLoadError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_KEY_FILE_LEN {
        return Err(unusable(
            path,
            format!("{len} bytes is too large for a key file (limit {MAX_KEY_FILE_LEN})"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let mut out = Vec::new();
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
            let (kind, der) = item.map_err(|e| unusable(path, format!("bad PEM: {e}")))?;
            let spki = match kind {
                SectionKind::PublicKey => Some(der),
                SectionKind::Certificate => Some(spki_from_cert(path, &der)?),
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => Some(spki_from_private(path, &der)?),
                _ => None,
            };
            if let Some(spki) = spki {
                out.push(info_from_spki(path, spki)?);
            }
        }
    } else {
        // DER: the file itself is one object; try each shape in turn.
        let spki = if info_from_spki(path, bytes.clone()).is_ok() {
            bytes
        } else if let Ok(s) = spki_from_cert(path, &bytes) {
            s
        } else {
            spki_from_private(path, &bytes).map_err(|_| {
                unusable(
                    path,
                    "not a PEM file and not a DER public key, certificate or private key",
                )
            })?
        };
        out.push(info_from_spki(path, spki)?);
    }
    if out.is_empty() {
        return Err(unusable(
            path,
            "no PUBLIC KEY, CERTIFICATE or PRIVATE KEY section",
        ));
    }
    Ok(out)
}

fn spki_from_cert(path: &Path, der: &[u8]) -> Result<Vec<u8>, KeyLoadError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| unusable(path, format!("bad certificate: {e}")))?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

fn x509(
    path: &Path,
    r: Result<PublicKeyX509Der<'static>, aws_lc_rs::error::Unspecified>,
) -> Result<Vec<u8>, KeyLoadError> {
    r.map(|d| d.as_ref().to_vec())
        .map_err(|_| unusable(path, "can't encode the public key"))
}

/// The SPKI of a private key (PKCS#8, PKCS#1 RSA or SEC1 EC, DER).
fn spki_from_private(path: &Path, der: &[u8]) -> Result<Vec<u8>, KeyLoadError> {
    if let Ok(k) =
        signature::RsaKeyPair::from_pkcs8(der).or_else(|_| signature::RsaKeyPair::from_der(der))
    {
        return x509(path, k.public_key().as_der());
    }
    for alg in [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(alg, der)
            .or_else(|_| signature::EcdsaKeyPair::from_private_key_der(alg, der))
        {
            return x509(path, k.public_key().as_der());
        }
    }
    if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return x509(path, k.public_key().as_der());
    }
    Err(unusable(
        path,
        "private key is not RSA, ECDSA P-256/P-384 or Ed25519 (or is malformed)",
    ))
}

/// Classify a DER SPKI (with the one classifier, `keycore_keys::classify_spki`)
/// and compute its SKI.
pub fn info_from_spki(path: &Path, spki_der: Vec<u8>) -> Result<PublicKeyInfo, KeyLoadError> {
    let kind = keycore_keys::classify_spki(&spki_der).map_err(|e| unusable(path, e.to_string()))?;
    let key_bits = keycore_keys::spki_key_bits(&spki_der)
        .map_err(|e| unusable(path, e.to_string()))?
        .to_vec();
    let ski = ski_from_spki(&spki_der).map_err(|e| unusable(path, e.to_string()))?;
    Ok(PublicKeyInfo {
        source: path.to_path_buf(),
        spki_der,
        key_bits,
        ski,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;

    fn pem(label: &str, der: &[u8]) -> String {
        // Minimal PEM writer for the tests (base64 from rcgen's dependency tree is not ours).
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for c in der.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    b64.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            body.join("\n")
        )
    }

    #[test]
    fn loads_every_form_of_every_kind_and_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let ec =
            signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let ec_pkcs8 = ec.to_pkcs8v1().unwrap();
        let ec_spki = ec.public_key().as_der().unwrap();
        let ed = signature::Ed25519KeyPair::generate().unwrap();
        let ed_pkcs8 = ed.to_pkcs8().unwrap();
        let rsa = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pkcs8: aws_lc_rs::encoding::Pkcs8V1Der = rsa.as_der().unwrap();
        let rsa_spki = rsa.public_key().as_der().unwrap();

        std::fs::write(
            dir.path().join("a-ec.key"),
            pem("PRIVATE KEY", ec_pkcs8.as_ref()),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b-ec.pub"),
            pem("PUBLIC KEY", ec_spki.as_ref()),
        )
        .unwrap();
        std::fs::write(dir.path().join("c-ed.der"), ed_pkcs8.as_ref()).unwrap();
        std::fs::write(dir.path().join("d-rsa.pub.der"), rsa_spki.as_ref()).unwrap();
        std::fs::write(
            dir.path().join("e-rsa.key"),
            pem("PRIVATE KEY", rsa_pkcs8.as_ref()),
        )
        .unwrap();
        std::fs::write(dir.path().join("f-notes.txt"), "not a key").unwrap();

        let keys = load_public_keys(&[dir.path().to_path_buf()]).unwrap();
        let kinds: Vec<KeyKind> = keys.iter().map(|k| k.kind).collect();
        assert_eq!(
            kinds,
            vec![
                KeyKind::EcdsaP256,
                KeyKind::Ed25519,
                KeyKind::Rsa { bits: 2048 }
            ]
        );
        assert_eq!(keys[0].ski, ski_from_spki(ec_spki.as_ref()).unwrap());
        assert_eq!(keys[0].key_bits, ec.public_key().as_ref());
        assert_eq!(keys[1].key_bits, ed.public_key().as_ref());
    }

    #[test]
    fn certificate_gives_its_subject_key() {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["k.example".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let p = dir.path().join("c.pem");
        std::fs::write(&p, cert.pem()).unwrap();
        let keys = load_file(&p).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].spki_der,
            rcgen::PublicKeyData::subject_public_key_info(&kp)
        );
        assert_eq!(keys[0].kind, KeyKind::EcdsaP256);
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.pem");
        std::fs::write(
            &p,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let e = load_file(&p).unwrap_err().to_string();
        assert!(e.contains("junk.pem"), "{e}");
        let q = dir.path().join("random.bin");
        std::fs::write(&q, [1u8, 2, 3]).unwrap();
        assert!(load_file(&q)
            .unwrap_err()
            .to_string()
            .contains("random.bin"));
        let e = load_public_keys(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no public key"), "{e}");
        assert!(load_public_keys(&[dir.path().join("missing")]).is_err());
    }
}
