//! The operations the generator sends, how each request is built, and how
//! each response is judged.
//!
//! Verification uses only aws-lc-rs public-key operations. The trick that
//! keeps it exact: the generator never invents a bare digest. It makes a real
//! message (shaped like TLS 1.3's CertificateVerify input), hashes it, sends
//! the digest as the server would get it from the edge, and keeps the digest
//! to verify the returned signature with `verify_digest_sig`. Ed25519 signs
//! the message itself. RSA decrypt sends a PKCS#1 v1.5 block encrypted with
//! the public key; the server returns the raw `c^d mod n` (padding kept), so
//! the check unpads it and compares with the plaintext.
//!
//! This module owns no I/O and no clock; it is pure and unit-tested.

use crate::keys::{KeyKind, PublicKeyInfo};
use aws_lc_rs::digest;
use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey};
use keycore_protocol::{ErrorCode, Message, Op};
use std::fmt;
use std::str::FromStr;

/// Ciphertexts precomputed per RSA key for decrypt requests (encryption with
/// the public key costs about as much as a verify; a small rotating pool
/// keeps that off the hot path while still varying the input).
pub const DECRYPT_POOL_PER_KEY: usize = 8;

/// Length of the TLS premaster secret used as decrypt plaintext (RFC 5246 7.4.7.1).
const PREMASTER_LEN: usize = 48;

/// Minimum PKCS#1 v1.5 padding string length (RFC 8017 7.2.2).
const MIN_PS_LEN: usize = 8;

/// TLS 1.3 CertificateVerify content prefix (RFC 8446 4.4.3): 64 spaces,
/// the context string and a zero byte, followed by a 32-byte transcript hash.
const TLS13_CV_PREFIX: &[u8] = b"                                                                TLS 1.3, server CertificateVerify\0";

/// Length of the message that is signed (prefix + SHA-256 transcript hash).
pub const SIGNED_MESSAGE_LEN: usize = TLS13_CV_PREFIX.len() + 32;

/// An operation the generator can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum OpKind {
    /// ECDSA P-256 over a SHA-256 digest (opcode 0x15).
    EcdsaP256Sha256,
    /// RSA PKCS#1 v1.5 over a SHA-256 digest (opcode 0x05).
    RsaPkcs1Sha256,
    /// RSA-PSS SHA-256, salt 32 (opcode 0x35).
    RsaPssSha256,
    /// Ed25519 over the message (opcode 0x18).
    Ed25519,
    /// Raw RSA decrypt of a PKCS#1 v1.5 block (opcode 0x01).
    RsaDecrypt,
    /// Ping (opcode 0xF1), no key.
    Ping,
}

impl OpKind {
    /// Every operation, in report order.
    pub const ALL: [OpKind; 6] = [
        OpKind::EcdsaP256Sha256,
        OpKind::RsaPkcs1Sha256,
        OpKind::RsaPssSha256,
        OpKind::Ed25519,
        OpKind::RsaDecrypt,
        OpKind::Ping,
    ];

    /// Index into per-op tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name used on the command line, in profiles and reports.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            OpKind::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
            OpKind::RsaPssSha256 => "rsa-pss-sha256",
            OpKind::Ed25519 => "ed25519",
            OpKind::RsaDecrypt => "rsa-decrypt",
            OpKind::Ping => "ping",
        }
    }

    /// The wire opcode.
    pub const fn opcode(self) -> Op {
        match self {
            OpKind::EcdsaP256Sha256 => Op::ECDSA_SIGN_SHA256,
            OpKind::RsaPkcs1Sha256 => Op::RSA_SIGN_SHA256,
            OpKind::RsaPssSha256 => Op::RSA_PSS_SIGN_SHA256,
            OpKind::Ed25519 => Op::ED25519_SIGN,
            OpKind::RsaDecrypt => Op::RSA_DECRYPT,
            OpKind::Ping => Op::PING,
        }
    }

    /// Whether a key of this kind can serve this operation (`Ping` needs none).
    pub fn accepts(self, kind: KeyKind) -> bool {
        match self {
            OpKind::EcdsaP256Sha256 => kind == KeyKind::EcdsaP256,
            OpKind::RsaPkcs1Sha256 | OpKind::RsaPssSha256 | OpKind::RsaDecrypt => {
                matches!(kind, KeyKind::Rsa { bits } if bits >= 2048)
            }
            OpKind::Ed25519 => kind == KeyKind::Ed25519,
            OpKind::Ping => false,
        }
    }

    /// Whether the operation uses a key.
    pub const fn needs_key(self) -> bool {
        !matches!(self, OpKind::Ping)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operation name the generator does not know (the error names the
/// known ones).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?} (known: {known})", known = OpKind::ALL.map(OpKind::name).join(", "))]
pub struct UnknownOp(pub String);

impl FromStr for OpKind {
    type Err = UnknownOp;
    fn from_str(s: &str) -> Result<Self, UnknownOp> {
        OpKind::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| UnknownOp(s.to_owned()))
    }
}

/// Why a key's public half cannot be used to check answers; names the
/// key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyCtxError {
    /// aws-lc refuses the public key for a verification algorithm.
    #[error("{}: public key rejected", path.display())]
    Rejected {
        /// The key's source file.
        path: std::path::PathBuf,
        /// aws-lc's reason.
        #[source]
        source: aws_lc_rs::error::KeyRejected,
    },
    /// An RSA key aws-lc cannot encrypt to (decrypt requests need it).
    #[error("{}: RSA key can't encrypt", .0.display())]
    CannotEncrypt(std::path::PathBuf),
    /// Encrypting a decrypt request's plaintext failed.
    #[error("{}: RSA encryption failed", .0.display())]
    Encrypt(std::path::PathBuf),
}

/// One RSA ciphertext and the plaintext it must decrypt to.
#[derive(Clone, Debug)]
pub struct DecryptCase {
    /// PKCS#1 v1.5 ciphertext (k bytes).
    pub ciphertext: Vec<u8>,
    /// The premaster-shaped plaintext.
    pub plaintext: [u8; PREMASTER_LEN],
}

/// Everything needed to build requests for and verify responses from one key.
/// Built once at start-up per executor.
pub struct KeyCtx {
    /// The public key.
    pub info: PublicKeyInfo,
    /// Verifier for the key's signature operation(s).
    pkcs1: Option<ParsedPublicKey>,
    pss: Option<ParsedPublicKey>,
    ecdsa: Option<ParsedPublicKey>,
    ed25519: Option<ParsedPublicKey>,
    /// Precomputed decrypt requests (RSA only).
    pub decrypt: Vec<DecryptCase>,
}

impl fmt::Debug for KeyCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCtx")
            .field("source", &self.info.source)
            .field("kind", &self.info.kind)
            .finish()
    }
}

fn parse(
    alg: &'static dyn signature::VerificationAlgorithm,
    bits: &[u8],
) -> Result<ParsedPublicKey, aws_lc_rs::error::KeyRejected> {
    UnparsedPublicKey::new(alg, bits).parse()
}

impl KeyCtx {
    /// Parse the public key for its operations; for RSA, encrypt the decrypt pool.
    pub fn new(info: PublicKeyInfo, rng: &mut impl rand::Rng) -> Result<KeyCtx, KeyCtxError> {
        let mut k = KeyCtx {
            info,
            pkcs1: None,
            pss: None,
            ecdsa: None,
            ed25519: None,
            decrypt: Vec::new(),
        };
        let bits = k.info.key_bits.clone();
        let src = k.info.source.clone();
        let ctx = |source| KeyCtxError::Rejected {
            path: src.clone(),
            source,
        };
        match k.info.kind {
            KeyKind::Rsa { .. } => {
                k.pkcs1 = Some(parse(&signature::RSA_PKCS1_2048_8192_SHA256, &bits).map_err(ctx)?);
                k.pss = Some(parse(&signature::RSA_PSS_2048_8192_SHA256, &bits).map_err(ctx)?);
                let enc = PublicEncryptingKey::from_der(&k.info.spki_der)
                    .ok()
                    .and_then(|p| Pkcs1PublicEncryptingKey::new(p).ok())
                    .ok_or_else(|| KeyCtxError::CannotEncrypt(src.clone()))?;
                for _ in 0..DECRYPT_POOL_PER_KEY {
                    let mut plaintext = [0u8; PREMASTER_LEN];
                    rng.fill(&mut plaintext[..]);
                    plaintext[0] = 0x03;
                    plaintext[1] = 0x03;
                    let mut ct = vec![0u8; enc.ciphertext_size()];
                    let n = enc
                        .encrypt(&plaintext, &mut ct)
                        .map_err(|_| KeyCtxError::Encrypt(src.clone()))?
                        .len();
                    ct.truncate(n);
                    k.decrypt.push(DecryptCase {
                        ciphertext: ct,
                        plaintext,
                    });
                }
            }
            KeyKind::EcdsaP256 => {
                k.ecdsa = Some(parse(&signature::ECDSA_P256_SHA256_ASN1, &bits).map_err(ctx)?)
            }
            KeyKind::Ed25519 => k.ed25519 = Some(parse(&signature::ED25519, &bits).map_err(ctx)?),
            KeyKind::EcdsaP384 | KeyKind::EcdsaP521 => {}
        }
        Ok(k)
    }
}

/// What a response must be checked against; kept per in-flight request.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A signature over this SHA-256 digest.
    Digest(digest::Digest),
    /// An Ed25519 signature over this message.
    Message([u8; SIGNED_MESSAGE_LEN]),
    /// Raw RSA result that unpads to `DecryptCase` number `n` of the key.
    Decrypt(usize),
    /// A pong echoing these bytes.
    Pong([u8; 8]),
}

/// A request ready to send: payload bytes plus what to expect.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The operation.
    pub op: OpKind,
    /// Index of the key in the key table (unused for ping).
    pub key: usize,
    /// Bytes of the payload item.
    pub payload: PayloadBuf,
    /// What the response must satisfy.
    pub expect: Expect,
}

/// Payload storage without a heap allocation for the common cases.
#[derive(Clone, Debug)]
pub enum PayloadBuf {
    /// Up to `SIGNED_MESSAGE_LEN` inline bytes.
    Inline([u8; SIGNED_MESSAGE_LEN], usize),
    /// The `n`th decrypt ciphertext of the key.
    Decrypt(usize),
}

/// Build a request for `op` with key `key` (ignored for ping).
pub fn prepare(op: OpKind, key: usize, keys: &[KeyCtx], rng: &mut impl rand::Rng) -> Prepared {
    let mut msg = [0u8; SIGNED_MESSAGE_LEN];
    msg[..TLS13_CV_PREFIX.len()].copy_from_slice(TLS13_CV_PREFIX);
    rng.fill(&mut msg[TLS13_CV_PREFIX.len()..]);
    match op {
        OpKind::EcdsaP256Sha256 | OpKind::RsaPkcs1Sha256 | OpKind::RsaPssSha256 => {
            let d = digest::digest(&digest::SHA256, &msg);
            let mut buf = [0u8; SIGNED_MESSAGE_LEN];
            buf[..32].copy_from_slice(d.as_ref());
            Prepared {
                op,
                key,
                payload: PayloadBuf::Inline(buf, 32),
                expect: Expect::Digest(d),
            }
        }
        OpKind::Ed25519 => Prepared {
            op,
            key,
            payload: PayloadBuf::Inline(msg, SIGNED_MESSAGE_LEN),
            expect: Expect::Message(msg),
        },
        OpKind::RsaDecrypt => {
            let n = rng.random_range(0..keys[key].decrypt.len().max(1));
            Prepared {
                op,
                key,
                payload: PayloadBuf::Decrypt(n),
                expect: Expect::Decrypt(n),
            }
        }
        OpKind::Ping => {
            let mut p = [0u8; 8];
            rng.fill(&mut p);
            let mut buf = [0u8; SIGNED_MESSAGE_LEN];
            buf[..8].copy_from_slice(&p);
            Prepared {
                op,
                key,
                payload: PayloadBuf::Inline(buf, 8),
                expect: Expect::Pong(p),
            }
        }
    }
}

impl Prepared {
    /// The payload bytes.
    pub fn payload<'a>(&'a self, keys: &'a [KeyCtx]) -> &'a [u8] {
        match &self.payload {
            PayloadBuf::Inline(b, n) => &b[..*n],
            PayloadBuf::Decrypt(n) => &keys[self.key].decrypt[*n].ciphertext,
        }
    }
}

/// Optional request items the edge adds (PROTOCOL.md "Tags").
#[derive(Clone, Debug, Default)]
pub struct Extras<'a> {
    /// SNI item.
    pub sni: Option<&'a [u8]>,
    /// Client IP item.
    pub client_ip: Option<std::net::IpAddr>,
    /// Server IP item.
    pub server_ip: Option<std::net::IpAddr>,
}

/// The wire message for a prepared request (ID filled in by the client).
pub fn message<'a>(p: &'a Prepared, keys: &'a [KeyCtx], extras: &Extras<'a>) -> Message<'a> {
    Message {
        opcode: Some(p.op.opcode()),
        payload: Some(p.payload(keys)),
        ski: p.op.needs_key().then(|| &keys[p.key].info.ski),
        sni: extras.sni,
        client_ip: extras.client_ip,
        server_ip: extras.server_ip,
        ..Message::default()
    }
}

/// Why a response was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The server answered with this error code.
    Server(ErrorCode),
    /// Success opcode but the signature or plaintext is wrong.
    BadResult,
    /// The response opcode is not the one this request calls for.
    WrongOpcode(Op),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Server(c) => write!(f, "server error 0x{:02x} ({c})", c.0),
            Failure::BadResult => f.write_str("wrong signature / plaintext"),
            Failure::WrongOpcode(op) => write!(f, "unexpected response opcode {op:?}"),
        }
    }
}

/// Judge a response. `verify` false skips the public-key check (sampling)
/// but still checks the opcode and error code. Returns whether a public-key
/// verification was performed.
pub fn check(
    p: &Prepared,
    keys: &[KeyCtx],
    opcode: Op,
    payload: &[u8],
    verify: bool,
) -> Result<bool, Failure> {
    if opcode == Op::ERROR {
        let code = payload.first().copied().unwrap_or(ErrorCode::INTERNAL.0);
        return Err(Failure::Server(ErrorCode(code)));
    }
    let want = if p.op == OpKind::Ping {
        Op::PONG
    } else {
        Op::RESPONSE
    };
    if opcode != want {
        return Err(Failure::WrongOpcode(opcode));
    }
    if let Expect::Pong(b) = &p.expect {
        // Ping is cheap to check: always do it.
        return if payload == b {
            Ok(true)
        } else {
            Err(Failure::BadResult)
        };
    }
    if !verify {
        return Ok(false);
    }
    let k = &keys[p.key];
    let ok = match (&p.expect, p.op) {
        (Expect::Digest(d), OpKind::EcdsaP256Sha256) => verify_digest(&k.ecdsa, d, payload),
        (Expect::Digest(d), OpKind::RsaPkcs1Sha256) => verify_digest(&k.pkcs1, d, payload),
        (Expect::Digest(d), OpKind::RsaPssSha256) => verify_digest(&k.pss, d, payload),
        (Expect::Message(m), OpKind::Ed25519) => k
            .ed25519
            .as_ref()
            .is_some_and(|v| v.verify_sig(m, payload).is_ok()),
        (Expect::Decrypt(n), OpKind::RsaDecrypt) => k
            .decrypt
            .get(*n)
            .is_some_and(|c| unpad_pkcs1_v15(payload) == Some(&c.plaintext[..])),
        _ => false,
    };
    if ok {
        Ok(true)
    } else {
        Err(Failure::BadResult)
    }
}

fn verify_digest(v: &Option<ParsedPublicKey>, d: &digest::Digest, sig: &[u8]) -> bool {
    v.as_ref()
        .is_some_and(|v| v.verify_digest_sig(d, sig).is_ok())
}

/// Remove PKCS#1 v1.5 encryption padding from a raw RSA result:
/// `00 02 PS 00 M` with PS at least 8 non-zero bytes. `None` if malformed.
pub fn unpad_pkcs1_v15(em: &[u8]) -> Option<&[u8]> {
    let rest = em.strip_prefix(&[0x00, 0x02])?;
    let zero = rest.iter().position(|&b| b == 0)?;
    if zero < MIN_PS_LEN {
        return None;
    }
    Some(&rest[zero + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::info_from_spki;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    use rand::SeedableRng;
    use std::path::Path;

    fn rng() -> rand::rngs::SmallRng {
        rand::rngs::SmallRng::seed_from_u64(7)
    }

    #[test]
    fn op_names_round_trip_and_reject_unknown() {
        for op in OpKind::ALL {
            assert_eq!(op.name().parse::<OpKind>(), Ok(op));
        }
        let e = "rsa-md5".parse::<OpKind>().unwrap_err().to_string();
        assert!(
            e.contains("rsa-md5") && e.contains("ecdsa-p256-sha256"),
            "{e}"
        );
    }

    #[test]
    fn ecdsa_signature_over_sent_digest_verifies_and_a_wrong_one_does_not() {
        let kp =
            signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let info = info_from_spki(
            Path::new("t"),
            kp.public_key().as_der().unwrap().as_ref().to_vec(),
        )
        .unwrap();
        let mut r = rng();
        let keys = vec![KeyCtx::new(info, &mut r).unwrap()];
        let p = prepare(OpKind::EcdsaP256Sha256, 0, &keys, &mut r);
        let m = message(&p, &keys, &Extras::default());
        assert_eq!(m.opcode, Some(Op::ECDSA_SIGN_SHA256));
        assert_eq!(m.ski, Some(&keys[0].info.ski));
        let Expect::Digest(d) = &p.expect else {
            panic!()
        };
        assert_eq!(m.payload.unwrap(), d.as_ref());
        // The server signs the digest it received.
        let sig = kp.sign_digest(d).unwrap();
        assert_eq!(check(&p, &keys, Op::RESPONSE, sig.as_ref(), true), Ok(true));
        assert_eq!(
            check(&p, &keys, Op::RESPONSE, sig.as_ref(), false),
            Ok(false)
        );
        let other = prepare(OpKind::EcdsaP256Sha256, 0, &keys, &mut r);
        assert_eq!(
            check(&other, &keys, Op::RESPONSE, sig.as_ref(), true),
            Err(Failure::BadResult)
        );
        assert_eq!(
            check(&p, &keys, Op::ERROR, &[0x02], true),
            Err(Failure::Server(ErrorCode::KEY_NOT_FOUND))
        );
        assert_eq!(
            check(&p, &keys, Op::PONG, sig.as_ref(), true),
            Err(Failure::WrongOpcode(Op::PONG))
        );
    }

    #[test]
    fn rsa_pkcs1_and_pss_over_digest_verify() {
        let kp = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let info = info_from_spki(
            Path::new("t"),
            kp.public_key().as_der().unwrap().as_ref().to_vec(),
        )
        .unwrap();
        let mut r = rng();
        let keys = vec![KeyCtx::new(info, &mut r).unwrap()];
        for (op, alg) in [
            (OpKind::RsaPkcs1Sha256, &signature::RSA_PKCS1_SHA256),
            (OpKind::RsaPssSha256, &signature::RSA_PSS_SHA256),
        ] {
            let p = prepare(op, 0, &keys, &mut r);
            let Expect::Digest(d) = &p.expect else {
                panic!()
            };
            let mut sig = vec![0u8; kp.public_modulus_len()];
            kp.sign_digest(alg, d, &mut sig).unwrap();
            assert_eq!(check(&p, &keys, Op::RESPONSE, &sig, true), Ok(true), "{op}");
            sig[10] ^= 1;
            assert_eq!(
                check(&p, &keys, Op::RESPONSE, &sig, true),
                Err(Failure::BadResult),
                "{op}"
            );
        }
        // A PKCS#1 signature is not accepted as PSS.
        let p = prepare(OpKind::RsaPssSha256, 0, &keys, &mut r);
        let Expect::Digest(d) = &p.expect else {
            panic!()
        };
        let mut sig = vec![0u8; kp.public_modulus_len()];
        kp.sign_digest(&signature::RSA_PKCS1_SHA256, d, &mut sig)
            .unwrap();
        assert_eq!(
            check(&p, &keys, Op::RESPONSE, &sig, true),
            Err(Failure::BadResult)
        );
    }

    #[test]
    fn ed25519_signs_the_message_itself() {
        let kp = signature::Ed25519KeyPair::generate().unwrap();
        let info = info_from_spki(
            Path::new("t"),
            kp.public_key().as_der().unwrap().as_ref().to_vec(),
        )
        .unwrap();
        let mut r = rng();
        let keys = vec![KeyCtx::new(info, &mut r).unwrap()];
        let p = prepare(OpKind::Ed25519, 0, &keys, &mut r);
        let payload = p.payload(&keys).to_vec();
        assert_eq!(payload.len(), SIGNED_MESSAGE_LEN);
        assert!(payload.starts_with(b"    "));
        let sig = kp.sign(&payload);
        assert_eq!(check(&p, &keys, Op::RESPONSE, sig.as_ref(), true), Ok(true));
        assert_eq!(
            check(&p, &keys, Op::RESPONSE, &[0u8; 64], true),
            Err(Failure::BadResult)
        );
    }

    #[test]
    fn rsa_decrypt_ciphertexts_decrypt_to_their_plaintext() {
        let kp = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap();
        let spki = kp.public_key().as_der().unwrap().as_ref().to_vec();
        let info = info_from_spki(Path::new("t"), spki).unwrap();
        let mut r = rng();
        let keys = vec![KeyCtx::new(info, &mut r).unwrap()];
        assert_eq!(keys[0].decrypt.len(), DECRYPT_POOL_PER_KEY);
        let dec = aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey::new(kp).unwrap();
        let p = prepare(OpKind::RsaDecrypt, 0, &keys, &mut r);
        let Expect::Decrypt(n) = p.expect else {
            panic!()
        };
        let mut out = vec![0u8; 256];
        let pt = dec.decrypt(p.payload(&keys), &mut out).unwrap();
        assert_eq!(pt, &keys[0].decrypt[n].plaintext[..]);
        // The server returns the raw block; build one around the plaintext.
        let mut em = vec![0x00, 0x02];
        em.extend(std::iter::repeat_n(0x5a, 256 - 3 - PREMASTER_LEN));
        em.push(0);
        em.extend_from_slice(&keys[0].decrypt[n].plaintext);
        assert_eq!(check(&p, &keys, Op::RESPONSE, &em, true), Ok(true));
        em[5] = 0; // padding string now too short before the first zero
        assert_eq!(
            check(&p, &keys, Op::RESPONSE, &em, true),
            Err(Failure::BadResult)
        );
    }

    #[test]
    fn unpad_rejects_malformed_blocks() {
        assert_eq!(
            unpad_pkcs1_v15(&[0, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 9]),
            Some(&[9u8][..])
        );
        assert_eq!(unpad_pkcs1_v15(&[0, 2, 1, 1, 1, 1, 1, 1, 1, 0, 9]), None);
        assert_eq!(unpad_pkcs1_v15(&[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 9]), None);
        assert_eq!(unpad_pkcs1_v15(&[0, 2, 1, 1]), None);
        assert_eq!(unpad_pkcs1_v15(&[]), None);
    }

    #[test]
    fn ping_expects_an_echo() {
        let mut r = rng();
        let p = prepare(OpKind::Ping, 0, &[], &mut r);
        let m = message(&p, &[], &Extras::default());
        assert_eq!(m.ski, None);
        let echo = m.payload.unwrap().to_vec();
        assert_eq!(check(&p, &[], Op::PONG, &echo, false), Ok(true));
        assert_eq!(
            check(&p, &[], Op::PONG, b"nope", false),
            Err(Failure::BadResult)
        );
    }
}
