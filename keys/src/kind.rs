//! What a key is, and which requests it can answer.
//!
//! Owns the one [`KeyKind`] of the workspace (every RSA size, the three NIST
//! curves, Ed25519) and the one rule deciding whether an operation with a
//! given input fits a key ([`check_input`]). Dispatch runs that rule once,
//! before any backend sees the request, so a backend receives only inputs of
//! the right shape. Must not: know how any backend performs an operation.

use keycore_protocol::{ErrorCode, OpClass};
use std::fmt;

/// What kind of key this is; decides which operations it can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with this modulus size in bits.
    Rsa {
        /// Modulus size.
        bits: usize,
    },
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// ECDSA on P-521.
    EcdsaP521,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// Length in bytes of an RSA modulus (and so of an RSA signature or
    /// ciphertext); `None` for other kinds.
    pub fn rsa_len(self) -> Option<usize> {
        match self {
            KeyKind::Rsa { bits } => Some(bits.div_ceil(8)),
            _ => None,
        }
    }

    /// Whether this is an ECDSA key (any curve).
    pub fn is_ecdsa(self) -> bool {
        matches!(
            self,
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521
        )
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::EcdsaP521 => f.write_str("ECDSA P-521"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Whether `op` is an operation a key of `kind` performs at all (an RSA op
/// on an RSA key, ECDSA on an EC key, Ed25519 on an Ed25519 key).
#[inline]
pub fn op_fits(op: OpClass, kind: KeyKind) -> bool {
    matches!(
        (op, kind),
        (
            OpClass::RsaPkcs1(_) | OpClass::RsaPss(_) | OpClass::RsaDecrypt,
            KeyKind::Rsa { .. }
        ) | (
            OpClass::Ecdsa(_),
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521
        ) | (OpClass::Ed25519, KeyKind::Ed25519)
    )
}

/// The one check of a request against its key, run by dispatch before any
/// backend: the operation must fit the key ([`op_fits`]), an RSA signature's
/// input must be a digest of exactly the named hash's length, and an RSA
/// decryption's input exactly the modulus length. Anything else is
/// `ErrorCode::CRYPTO` (as the reference answers a signer error). ECDSA
/// digests of any length are accepted (ECDSA truncates); Ed25519 signs the
/// message as given.
#[inline]
pub fn check_input(kind: KeyKind, op: OpClass, input: &[u8]) -> Result<(), ErrorCode> {
    if !op_fits(op, kind) {
        return Err(ErrorCode::CRYPTO);
    }
    let ok = match op {
        OpClass::RsaPkcs1(hash) | OpClass::RsaPss(hash) => input.len() == hash.len(),
        OpClass::RsaDecrypt => Some(input.len()) == kind.rsa_len(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::CRYPTO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_protocol::Hash;

    #[test]
    fn ops_fit_only_their_key_kind() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        assert!(op_fits(OpClass::RsaPss(Hash::Sha256), rsa));
        assert!(op_fits(OpClass::RsaDecrypt, rsa));
        assert!(!op_fits(OpClass::Ecdsa(Hash::Sha256), rsa));
        for ec in [KeyKind::EcdsaP256, KeyKind::EcdsaP384, KeyKind::EcdsaP521] {
            assert!(op_fits(OpClass::Ecdsa(Hash::Sha384), ec));
            assert!(!op_fits(OpClass::RsaPkcs1(Hash::Sha256), ec));
            assert!(!op_fits(OpClass::Ed25519, ec));
        }
        assert!(op_fits(OpClass::Ed25519, KeyKind::Ed25519));
        assert!(!op_fits(OpClass::Ecdsa(Hash::Sha256), KeyKind::Ed25519));
    }

    #[test]
    fn rsa_inputs_must_have_the_exact_length() {
        let rsa = KeyKind::Rsa { bits: 2047 };
        let sig = OpClass::RsaPkcs1(Hash::Sha256);
        assert_eq!(check_input(rsa, sig, &[0; 32]), Ok(()));
        assert_eq!(check_input(rsa, sig, &[0; 31]), Err(ErrorCode::CRYPTO));
        assert_eq!(check_input(rsa, sig, &[0; 48]), Err(ErrorCode::CRYPTO));
        assert_eq!(
            check_input(rsa, OpClass::RsaPss(Hash::Sha512), &[0; 64]),
            Ok(())
        );
        // 2047 bits round up to 256 bytes.
        assert_eq!(check_input(rsa, OpClass::RsaDecrypt, &[1; 256]), Ok(()));
        assert_eq!(
            check_input(rsa, OpClass::RsaDecrypt, &[1; 255]),
            Err(ErrorCode::CRYPTO)
        );
    }

    #[test]
    fn ecdsa_and_ed25519_take_any_length_but_only_their_key() {
        assert_eq!(
            check_input(KeyKind::EcdsaP521, OpClass::Ecdsa(Hash::Sha256), &[0; 32]),
            Ok(())
        );
        assert_eq!(
            check_input(KeyKind::Ed25519, OpClass::Ed25519, b"any message"),
            Ok(())
        );
        assert_eq!(
            check_input(KeyKind::Ed25519, OpClass::RsaDecrypt, &[0; 32]),
            Err(ErrorCode::CRYPTO)
        );
    }
}
