//! The stand-ins' keys: generated with rcgen (aws-lc-rs), held as keycore
//! software keys so every signature and decryption is the real math.
//!
//! Owns: key generation, the public half in the forms the services publish
//! (SPKI DER, PEM, JWK members), raw PKCS#1 v1.5 signing and DER <-> `r‖s`.

use crate::{ApiError, SimError};
use keycore_keys::{software, Backend, KeyKind, PrivateKeyOps};
use keycore_protocol::{Hash, OpClass};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Key types the stand-ins can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// ECDSA P-521.
    EcP521,
    /// Ed25519.
    Ed25519,
}

/// A key a stand-in holds.
pub struct SimKey {
    /// Kind.
    pub kind: KeyKind,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// PKCS#8 private key (tests may load it to compare).
    pub pkcs8: Vec<u8>,
    ops: Box<dyn PrivateKeyOps>,
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl SimKey {
    /// Generate a fresh key.
    pub fn generate(t: KeyType) -> Result<SimKey, SimError> {
        let kp = match t {
            KeyType::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyType::Rsa3072 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyType::EcP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::EcP521 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512),
            KeyType::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
        .map_err(|source| SimError::Cert {
            what: "key generation",
            source,
        })?;
        SimKey::from_pkcs8(&kp.serialize_der())
    }

    /// Load a PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SimKey, SimError> {
        let e = software::from_der_or_pem(pkcs8, "kmssim").map_err(SimError::Key)?;
        let Backend::Inline(ops) = e.backend else {
            return Err(SimError::NotInline);
        };
        Ok(SimKey {
            kind: e.kind,
            spki: e.spki_der,
            pkcs8: pkcs8.to_vec(),
            ops,
        })
    }

    /// Modulus length in bytes (RSA) or 0.
    pub fn rsa_len(&self) -> usize {
        match self.kind {
            KeyKind::Rsa { bits } => bits.div_ceil(8),
            _ => 0,
        }
    }

    /// Perform a protocol op with the key.
    pub fn perform(&self, op: OpClass, input: &[u8]) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::new();
        self.ops
            .perform(op, input, &mut out)
            .map_err(|code| ApiError::KeyOperation { op, code })?;
        Ok(out)
    }

    /// PKCS#1 v1.5 signature over `data` as given (no DigestInfo added):
    /// `00 01 FF.. 00 data` through the raw RSA private operation.
    pub fn sign_raw_pkcs1(&self, data: &[u8]) -> Result<Vec<u8>, ApiError> {
        let k = self.rsa_len();
        if k == 0 || data.len() + 11 > k {
            return Err(ApiError::RawPkcs1TooLong { len: data.len() });
        }
        let mut em = vec![0x00, 0x01];
        em.extend(std::iter::repeat_n(0xff, k - 3 - data.len()));
        em.push(0x00);
        em.extend_from_slice(data);
        self.perform(OpClass::RsaDecrypt, &em)
    }

    /// PKCS#1 v1.5 signature with DigestInfo for `h`.
    pub fn sign_pkcs1(&self, h: Hash, digest: &[u8]) -> Result<Vec<u8>, ApiError> {
        self.perform(OpClass::RsaPkcs1(h), digest)
    }

    /// RSA modulus and exponent (big-endian), for JWKs.
    pub fn rsa_components(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&self.spki).ok()?;
        match info.parsed().ok()? {
            PublicKey::RSA(r) => {
                let strip =
                    |b: &[u8]| b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..].to_vec();
                Some((strip(r.modulus), strip(r.exponent)))
            }
            _ => None,
        }
    }

    /// The uncompressed EC point `04‖X‖Y`.
    pub fn ec_point(&self) -> Option<Vec<u8>> {
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&self.spki).ok()?;
        match info.parsed().ok()? {
            PublicKey::EC(p) => Some(p.data().to_vec()),
            _ => None,
        }
    }

    /// SPKI as PEM.
    pub fn spki_pem(&self) -> String {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(&self.spki);
        let mut s = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            s.push('\n');
        }
        s.push_str("-----END PUBLIC KEY-----\n");
        s
    }
}

/// DER `SEQUENCE { r, s }` -> fixed-width `r‖s` (JWS form, as Key Vault answers).
pub fn der_to_raw(der: &[u8], width: usize) -> Option<Vec<u8>> {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&l, b) = b.split_first()?;
        let (len, b) = if l < 0x80 {
            (l as usize, b)
        } else {
            let n = (l & 0x7f) as usize;
            if n == 0 || n > 2 || b.len() < n {
                return None;
            }
            (
                b[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize),
                &b[n..],
            )
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (0x30, body, []) = tlv(der)? else {
        return None;
    };
    let (0x02, r, rest) = tlv(body)? else {
        return None;
    };
    let (0x02, s, []) = tlv(rest)? else {
        return None;
    };
    let mut out = vec![0u8; 2 * width];
    for (i, v) in [r, s].into_iter().enumerate() {
        let v = &v[v.iter().position(|&x| x != 0).unwrap_or(v.len())..];
        if v.len() > width {
            return None;
        }
        out[(i + 1) * width - v.len()..(i + 1) * width].copy_from_slice(v);
    }
    Some(out)
}

/// Coordinate width of an EC key kind.
pub fn ec_width(kind: KeyKind) -> usize {
    match kind {
        KeyKind::EcdsaP256 => 32,
        KeyKind::EcdsaP384 => 48,
        KeyKind::EcdsaP521 => 66,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_pkcs1_equals_pkcs1_with_digest_info() {
        let k = SimKey::generate(KeyType::Rsa2048).unwrap();
        let d = [7u8; 32];
        let mut di = vec![
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        di.extend_from_slice(&d);
        assert_eq!(
            k.sign_raw_pkcs1(&di).unwrap(),
            k.sign_pkcs1(Hash::Sha256, &d).unwrap()
        );
        let (n, e) = k.rsa_components().unwrap();
        assert_eq!((n.len(), e), (256, vec![1, 0, 1]));
    }

    /// Refusals are variants; their text is what the simulated API answers.
    #[test]
    fn refusals_carry_what_was_wrong_and_read_as_the_api_answers() {
        let rsa = SimKey::generate(KeyType::Rsa2048).unwrap();
        let e = rsa.sign_raw_pkcs1(&[0; 250]).unwrap_err();
        assert!(matches!(e, ApiError::RawPkcs1TooLong { len: 250 }), "{e:?}");
        assert_eq!(e.to_string(), "250 bytes do not fit a raw PKCS#1 signature");
        let ec = SimKey::generate(KeyType::EcP256).unwrap();
        let e = ec.perform(OpClass::RsaDecrypt, &[0; 256]).unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::KeyOperation {
                    op: OpClass::RsaDecrypt,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("key operation RsaDecrypt failed"),
            "{e}"
        );
    }

    #[test]
    fn ecdsa_der_raw() {
        let k = SimKey::generate(KeyType::EcP384).unwrap();
        let der = k.perform(OpClass::Ecdsa(Hash::Sha384), &[1; 48]).unwrap();
        let raw = der_to_raw(&der, 48).unwrap();
        assert_eq!(raw.len(), 96);
        assert_eq!(k.ec_point().unwrap().len(), 97);
    }
}
