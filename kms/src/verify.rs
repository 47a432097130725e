//! Check every signature a cloud service returns against the key's public
//! half before it goes to the edge.
//!
//! Why: the edge would put a wrong signature into a handshake that then
//! fails at the client, with nothing pointing at the key server. A service
//! can answer wrongly (a misunderstood algorithm such as Azure's RSNULL,
//! which Microsoft documents only as "reserved"; a key version rotated under
//! us; corruption that Azure and AWS answers carry no checksum for). A
//! verification costs tens of microseconds on the KMS thread, against
//! milliseconds for the call itself.
//!
//! Covered: PKCS#1 v1.5 with SHA-1/256/384/512, PSS with SHA-256/384/512,
//! ECDSA (over the digest as fitted for the service), Ed25519. Not covered
//! (aws-lc-rs has no verifier for them): PKCS#1 v1.5 over MD5‖SHA1 and
//! SHA-224; those are passed on unchecked.
//!
//! Must not: allocate beyond aws-lc-rs's own parsing, or log (the caller
//! counts and logs).

use super::util::fit_ecdsa_digest;
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};

/// Outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The signature verifies.
    Good,
    /// It does not: never pass it on.
    Bad,
    /// No verifier for this op (MD5‖SHA1, SHA-224 PKCS#1; decrypt).
    Unchecked,
}

/// The subjectPublicKey contents (RSAPublicKey, EC point, Ed25519 key) of an
/// SPKI, which is what aws-lc-rs verifiers take.
pub fn public_bits(spki: &[u8]) -> Option<Vec<u8>> {
    keycore_keys::spki_key_bits(spki).ok().map(<[u8]>::to_vec)
}

fn digest_of(d: &[u8], alg: &'static digest::Algorithm) -> Option<Digest> {
    Digest::import_less_safe(d, alg).ok()
}

/// Verify `sig`, returned for `op` over `input` by a key of `kind` whose
/// public key bits are `public`.
pub fn check(kind: KeyKind, public: &[u8], op: OpClass, input: &[u8], sig: &[u8]) -> Checked {
    type Alg = &'static dyn VerificationAlgorithm;
    let (alg, digest): (Alg, Option<Digest>) = match (kind, op) {
        (KeyKind::Rsa { .. }, OpClass::RsaPkcs1(h)) => match h {
            Hash::Sha1 => (
                &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                digest_of(input, &digest::SHA1_FOR_LEGACY_USE_ONLY),
            ),
            Hash::Sha256 => (
                &signature::RSA_PKCS1_2048_8192_SHA256,
                digest_of(input, &digest::SHA256),
            ),
            Hash::Sha384 => (
                &signature::RSA_PKCS1_2048_8192_SHA384,
                digest_of(input, &digest::SHA384),
            ),
            Hash::Sha512 => (
                &signature::RSA_PKCS1_2048_8192_SHA512,
                digest_of(input, &digest::SHA512),
            ),
            Hash::Md5Sha1 | Hash::Sha224 => return Checked::Unchecked,
        },
        (KeyKind::Rsa { .. }, OpClass::RsaPss(h)) => match h {
            Hash::Sha256 => (
                &signature::RSA_PSS_2048_8192_SHA256,
                digest_of(input, &digest::SHA256),
            ),
            Hash::Sha384 => (
                &signature::RSA_PSS_2048_8192_SHA384,
                digest_of(input, &digest::SHA384),
            ),
            Hash::Sha512 => (
                &signature::RSA_PSS_2048_8192_SHA512,
                digest_of(input, &digest::SHA512),
            ),
            _ => return Checked::Unchecked,
        },
        (KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521, OpClass::Ecdsa(_)) => {
            let Some(fitted) = fit_ecdsa_digest(kind, input) else {
                return Checked::Bad;
            };
            match kind {
                KeyKind::EcdsaP256 => (
                    &signature::ECDSA_P256_SHA256_ASN1,
                    digest_of(&fitted, &digest::SHA256),
                ),
                KeyKind::EcdsaP384 => (
                    &signature::ECDSA_P384_SHA384_ASN1,
                    digest_of(&fitted, &digest::SHA384),
                ),
                _ => (
                    &signature::ECDSA_P521_SHA512_ASN1,
                    digest_of(&fitted, &digest::SHA512),
                ),
            }
        }
        (KeyKind::Ed25519, OpClass::Ed25519) => {
            return match UnparsedPublicKey::new(&signature::ED25519, public).verify(input, sig) {
                Ok(()) => Checked::Good,
                Err(_) => Checked::Bad,
            };
        }
        _ => return Checked::Unchecked,
    };
    let Some(d) = digest else {
        return Checked::Bad;
    };
    match UnparsedPublicKey::new(alg, public).verify_digest(&d, sig) {
        Ok(()) => Checked::Good,
        Err(_) => Checked::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};

    #[test]
    fn good_and_bad_signatures() {
        let rng = SystemRandom::new();
        let msg = b"verify me";
        let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = kp.public_key().as_ref().to_vec();
        let kind = KeyKind::Rsa { bits: 2048 };
        let d = digest::digest(&digest::SHA256, msg);
        let mut sig = vec![0; kp.public_modulus_len()];
        kp.sign(&signature::RSA_PSS_SHA256, &rng, msg, &mut sig)
            .unwrap();
        assert_eq!(
            check(
                kind,
                &public,
                OpClass::RsaPss(Hash::Sha256),
                d.as_ref(),
                &sig
            ),
            Checked::Good
        );
        // A PSS signature is not a PKCS#1 one, nor over another digest.
        assert_eq!(
            check(
                kind,
                &public,
                OpClass::RsaPkcs1(Hash::Sha256),
                d.as_ref(),
                &sig
            ),
            Checked::Bad
        );
        assert_eq!(
            check(kind, &public, OpClass::RsaPss(Hash::Sha256), &[0; 32], &sig),
            Checked::Bad
        );
        assert_eq!(
            check(
                kind,
                &public,
                OpClass::RsaPkcs1(Hash::Md5Sha1),
                &[0; 36],
                &sig
            ),
            Checked::Unchecked
        );
        // (SHA-1 PKCS#1: aws-lc-rs cannot sign it; the Azure RSNULL test in
        // tests/kms_services.rs checks that a good one passes this verifier.)
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        let ec =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref())
                .unwrap();
        let sig = ec.sign(&rng, msg).unwrap();
        let d384 = digest::digest(&digest::SHA384, msg);
        let public = ec.public_key().as_ref().to_vec();
        assert_eq!(
            check(
                KeyKind::EcdsaP384,
                &public,
                OpClass::Ecdsa(Hash::Sha384),
                d384.as_ref(),
                sig.as_ref()
            ),
            Checked::Good
        );
        let mut bad = sig.as_ref().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            check(
                KeyKind::EcdsaP384,
                &public,
                OpClass::Ecdsa(Hash::Sha384),
                d384.as_ref(),
                &bad
            ),
            Checked::Bad
        );
    }
}
