//! rustls' signing seam, answered by a key server.
//!
//! Owns: the mapping from a TLS signature scheme to a keyless opcode and what
//! goes in its payload (a digest of the handshake message, or the whole
//! message for Ed25519), checking the key server's signature against the
//! certificate's public key before it goes to the visitor, and the
//! per-handshake record of who signed and how long it took.
//!
//! | key | schemes offered to rustls (preference order) | opcode |
//! |---|---|---|
//! | ECDSA P-256 / P-384 / P-521 | `ecdsa_secp256r1_sha256` / `ecdsa_secp384r1_sha384` / `ecdsa_secp521r1_sha512` | 0x15 / 0x16 / 0x17 |
//! | RSA (any size) | `rsa_pss_rsae_sha256/384/512`, then `rsa_pkcs1_sha256/384/512` | 0x35–0x37, 0x05–0x07 |
//! | Ed25519 | `ed25519` | 0x18 (whole message) |
//!
//! TLS 1.2 RSA key exchange (`RSA decrypt`, opcode 0x01) never happens here:
//! rustls offers only ECDHE suites, so RSA decrypt stays a load-generator
//! operation.
//!
//! Must not: hold or derive private key material (there is none), or return
//! an unchecked signature.

use crate::certs::PublicKey;
use crate::keyless::{Hub, KeylessError, Signed, Visitor};
use aws_lc_rs::digest;
use aws_lc_rs::signature as sig;
use keycore_keys::KeyKind;
use keycore_protocol::Op;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one scheme is done over the keyless protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemeOp {
    /// The TLS scheme.
    pub scheme: SignatureScheme,
    /// The keyless opcode.
    pub op: Op,
    /// Hash the edge applies before sending (`None`: the message goes whole).
    pub hash: Option<&'static digest::Algorithm>,
}

const fn so(scheme: SignatureScheme, op: Op, hash: Option<&'static digest::Algorithm>) -> SchemeOp {
    SchemeOp { scheme, op, hash }
}

const RSA_SCHEMES: [SchemeOp; 6] = [
    so(
        SignatureScheme::RSA_PSS_SHA256,
        Op::RSA_PSS_SIGN_SHA256,
        Some(&digest::SHA256),
    ),
    so(
        SignatureScheme::RSA_PSS_SHA384,
        Op::RSA_PSS_SIGN_SHA384,
        Some(&digest::SHA384),
    ),
    so(
        SignatureScheme::RSA_PSS_SHA512,
        Op::RSA_PSS_SIGN_SHA512,
        Some(&digest::SHA512),
    ),
    so(
        SignatureScheme::RSA_PKCS1_SHA256,
        Op::RSA_SIGN_SHA256,
        Some(&digest::SHA256),
    ),
    so(
        SignatureScheme::RSA_PKCS1_SHA384,
        Op::RSA_SIGN_SHA384,
        Some(&digest::SHA384),
    ),
    so(
        SignatureScheme::RSA_PKCS1_SHA512,
        Op::RSA_SIGN_SHA512,
        Some(&digest::SHA512),
    ),
];
const P256_SCHEMES: [SchemeOp; 1] = [so(
    SignatureScheme::ECDSA_NISTP256_SHA256,
    Op::ECDSA_SIGN_SHA256,
    Some(&digest::SHA256),
)];
const P384_SCHEMES: [SchemeOp; 1] = [so(
    SignatureScheme::ECDSA_NISTP384_SHA384,
    Op::ECDSA_SIGN_SHA384,
    Some(&digest::SHA384),
)];
const P521_SCHEMES: [SchemeOp; 1] = [so(
    SignatureScheme::ECDSA_NISTP521_SHA512,
    Op::ECDSA_SIGN_SHA512,
    Some(&digest::SHA512),
)];
const ED25519_SCHEMES: [SchemeOp; 1] = [so(SignatureScheme::ED25519, Op::ED25519_SIGN, None)];

/// The schemes a key of this kind can make, in the order the edge prefers.
pub fn schemes_for(kind: KeyKind) -> &'static [SchemeOp] {
    match kind {
        KeyKind::Rsa { .. } => &RSA_SCHEMES,
        KeyKind::EcdsaP256 => &P256_SCHEMES,
        KeyKind::EcdsaP384 => &P384_SCHEMES,
        KeyKind::EcdsaP521 => &P521_SCHEMES,
        KeyKind::Ed25519 => &ED25519_SCHEMES,
    }
}

/// The keyless operation of a scheme the edge makes, if it makes it.
pub fn schemes_for_scheme(scheme: SignatureScheme) -> Option<SchemeOp> {
    RSA_SCHEMES
        .iter()
        .chain(&P256_SCHEMES)
        .chain(&P384_SCHEMES)
        .chain(&P521_SCHEMES)
        .chain(&ED25519_SCHEMES)
        .find(|s| s.scheme == scheme)
        .copied()
}

fn verify_alg(scheme: SignatureScheme) -> &'static dyn sig::VerificationAlgorithm {
    match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => &sig::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::ECDSA_NISTP384_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::ECDSA_NISTP521_SHA512 => &sig::ECDSA_P521_SHA512_ASN1,
        SignatureScheme::RSA_PSS_SHA256 => &sig::RSA_PSS_2048_8192_SHA256,
        SignatureScheme::RSA_PSS_SHA384 => &sig::RSA_PSS_2048_8192_SHA384,
        SignatureScheme::RSA_PSS_SHA512 => &sig::RSA_PSS_2048_8192_SHA512,
        SignatureScheme::RSA_PKCS1_SHA256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        SignatureScheme::RSA_PKCS1_SHA512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        // Only the schemes of `schemes_for` reach here.
        _ => &sig::ED25519,
    }
}

/// What happened to the signature of the handshake on this thread.
#[derive(Clone, Debug)]
pub struct SignRecord {
    /// The scheme negotiated.
    pub scheme: SignatureScheme,
    /// The key's SKI.
    pub ski: keycore_protocol::Ski,
    /// The outcome.
    pub result: Result<Signed, SignError>,
}

/// Why the signer refused to hand rustls a signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No key server gave one.
    #[error(transparent)]
    Keyless(#[from] KeylessError),
    /// A key server gave one that does not verify with the certificate's key.
    #[error("key server {0} returned a signature that does not verify with the certificate's public key")]
    BadSignature(std::net::SocketAddr),
}

thread_local! {
    // rustls calls `Signer::sign` synchronously on the thread driving the
    // handshake, and a worker drives one handshake at a time, so a
    // thread-local is exactly "this handshake's signature"; the worker
    // clears it before and reads it after (for the page and the failure
    // reason). It holds no key material.
    static LAST_SIGN: RefCell<Option<SignRecord>> = const { RefCell::new(None) };
    // The visitor of the handshake on this thread (set by the worker).
    static VISITOR: RefCell<Visitor> = RefCell::new(Visitor::default());
}

/// Forget the previous handshake's record and name this one's visitor.
pub fn begin_handshake(visitor: Visitor) {
    LAST_SIGN.with(|s| *s.borrow_mut() = None);
    VISITOR.with(|v| *v.borrow_mut() = visitor);
}

/// Record the SNI of the handshake on this thread (the certificate
/// resolver sees it first; the signer sends it to the key server).
pub fn note_sni(sni: Option<&str>) {
    VISITOR.with(|v| v.borrow_mut().sni = sni.map(str::to_owned));
}

/// The signature record of the handshake on this thread, if one was asked for.
pub fn take_record() -> Option<SignRecord> {
    LAST_SIGN.with(|s| s.borrow_mut().take())
}

/// A certificate's key, as rustls sees it: it can sign, by asking a key server.
#[derive(Debug)]
pub struct KeylessKey {
    info: PublicKey,
    hub: Hub,
    keyless_timeout: Duration,
}

impl KeylessKey {
    /// A key known by its public half; signatures come from `hub`, each
    /// within `keyless_timeout`.
    pub fn new(info: PublicKey, hub: Hub, keyless_timeout: Duration) -> KeylessKey {
        KeylessKey {
            info,
            hub,
            keyless_timeout,
        }
    }

    /// Whether this is an RSA key.
    pub fn is_rsa(&self) -> bool {
        matches!(self.info.kind, KeyKind::Rsa { .. })
    }

    /// Whether this key can answer any of `offered`.
    pub fn can_sign_any(&self, offered: &[SignatureScheme]) -> bool {
        schemes_for(self.info.kind)
            .iter()
            .any(|s| offered.contains(&s.scheme))
    }
}

impl SigningKey for KeylessKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let s = schemes_for(self.info.kind)
            .iter()
            .find(|s| offered.contains(&s.scheme))?;
        Some(Box::new(KeylessSigner {
            op: *s,
            info: self.info.clone(),
            hub: self.hub.clone(),
            keyless_timeout: self.keyless_timeout,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.info.kind {
            KeyKind::Rsa { .. } => SignatureAlgorithm::RSA,
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521 => {
                SignatureAlgorithm::ECDSA
            }
            KeyKind::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }
}

/// One handshake's signer.
#[derive(Debug)]
struct KeylessSigner {
    op: SchemeOp,
    info: PublicKey,
    hub: Hub,
    keyless_timeout: Duration,
}

impl KeylessSigner {
    fn sign_inner(&self, message: &[u8]) -> Result<Signed, SignError> {
        let payload = match self.op.hash {
            Some(h) => digest::digest(h, message).as_ref().to_vec(),
            None => message.to_vec(),
        };
        let visitor = VISITOR.with(|v| v.borrow().clone());
        let deadline = Instant::now() + self.keyless_timeout;
        let signed =
            self.hub
                .sign_blocking(self.op.op, self.info.ski, payload, visitor, deadline)?;
        // A broken or hostile key server must not get garbage to the
        // visitor: check it here, where the failure can be named.
        sig::UnparsedPublicKey::new(verify_alg(self.op.scheme), &self.info.key_bits)
            .verify(message, &signed.signature)
            .map_err(|_| SignError::BadSignature(signed.keyserver))?;
        Ok(signed)
    }
}

impl Signer for KeylessSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let r = self.sign_inner(message);
        let out = match &r {
            Ok(s) => Ok(s.signature.clone()),
            Err(e) => Err(rustls::Error::General(format!("keyless signature: {e}"))),
        };
        LAST_SIGN.with(|l| {
            *l.borrow_mut() = Some(SignRecord {
                scheme: self.op.scheme,
                ski: self.info.ski,
                result: r,
            })
        });
        out
    }

    fn scheme(&self) -> SignatureScheme {
        self.op.scheme
    }
}

/// Shared handle type rustls wants.
pub fn arc(k: KeylessKey) -> Arc<dyn SigningKey> {
    Arc::new(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_maps_to_the_opcode_of_its_hash_and_padding() {
        for s in RSA_SCHEMES {
            let name = format!("{:?}", s.scheme);
            let op = s.op.name().unwrap();
            let h = s.hash.unwrap();
            assert!(
                op.contains(&format!("SHA{}", h.output_len() * 8)),
                "{name} {op}"
            );
            assert_eq!(name.contains("PSS"), op.contains("PSS"), "{name} {op}");
        }
        assert_eq!(schemes_for(KeyKind::EcdsaP256)[0].op, Op::ECDSA_SIGN_SHA256);
        assert_eq!(schemes_for(KeyKind::EcdsaP384)[0].op, Op::ECDSA_SIGN_SHA384);
        assert_eq!(schemes_for(KeyKind::EcdsaP521)[0].op, Op::ECDSA_SIGN_SHA512);
        assert_eq!(schemes_for(KeyKind::Ed25519)[0].op, Op::ED25519_SIGN);
        assert!(schemes_for(KeyKind::Ed25519)[0].hash.is_none());
        // TLS 1.3 offers PSS only for RSA: it must come first so 1.2 clients
        // that offer both get PSS too.
        assert_eq!(
            schemes_for(KeyKind::Rsa { bits: 2048 })[0].scheme,
            SignatureScheme::RSA_PSS_SHA256
        );
    }
}
