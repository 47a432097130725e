//! Every opcode on every key kind over real loopback TLS; every signature
//! verified against the public key (aws-lc-rs where it verifies prehashed
//! input, the openssl CLI for SHA-224, MD5SHA1 and PSS).

use crate::harness::{openssl_verify, req, TestServer};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use keycore_keys::KeyKind;
use keycore_protocol::{ErrorCode, Hash, Op, OpClass};

fn digest_of(h: Hash, msg: &[u8]) -> Vec<u8> {
    let one = |a: &'static digest::Algorithm| digest::digest(a, msg).as_ref().to_vec();
    match h {
        Hash::Md5Sha1 => {
            // MD5 is not in aws-lc-rs's digest API; the server treats the 36
            // bytes as opaque, so any 16 bytes || SHA-1 exercises it exactly.
            let mut v = vec![0x5a; 16];
            v.extend(one(&digest::SHA1_FOR_LEGACY_USE_ONLY));
            v
        }
        Hash::Sha1 => one(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        Hash::Sha224 => one(&digest::SHA224),
        Hash::Sha256 => one(&digest::SHA256),
        Hash::Sha384 => one(&digest::SHA384),
        Hash::Sha512 => one(&digest::SHA512),
    }
}

fn md_name(h: Hash) -> Option<&'static str> {
    match h {
        Hash::Md5Sha1 => None,
        Hash::Sha1 => Some("sha1"),
        Hash::Sha224 => Some("sha224"),
        Hash::Sha256 => Some("sha256"),
        Hash::Sha384 => Some("sha384"),
        Hash::Sha512 => Some("sha512"),
    }
}

fn spki_key_bits(spki: &[u8]) -> Vec<u8> {
    // The subjectPublicKey BIT STRING contents, which aws-lc-rs verifiers take.
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).expect("SPKI");
    parsed.subject_public_key.data.to_vec()
}

#[test]
fn every_opcode_on_every_key_kind_verifies() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let msg = b"keycore integration test message";
    let mut checked = 0;
    for key in &srv.keys {
        for op in Op::ALL {
            let class = op.class();
            let fits = matches!(
                (class, key.kind),
                (
                    OpClass::RsaDecrypt | OpClass::RsaPkcs1(_) | OpClass::RsaPss(_),
                    KeyKind::Rsa { .. }
                ) | (
                    OpClass::Ecdsa(_),
                    KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521
                ) | (OpClass::Ed25519, KeyKind::Ed25519)
            );
            let is_key_op = matches!(
                class,
                OpClass::RsaDecrypt
                    | OpClass::RsaPkcs1(_)
                    | OpClass::RsaPss(_)
                    | OpClass::Ecdsa(_)
                    | OpClass::Ed25519
            );
            if !is_key_op {
                continue;
            }
            let input: Vec<u8> = match class {
                OpClass::RsaPkcs1(h) | OpClass::RsaPss(h) | OpClass::Ecdsa(h) => digest_of(h, msg),
                OpClass::Ed25519 => msg.to_vec(),
                OpClass::RsaDecrypt => match key.kind {
                    KeyKind::Rsa { bits } => {
                        rsa_encrypt(&key.spki_der, bits / 8, b"premaster secret")
                    }
                    _ => vec![0u8; 256],
                },
                _ => unreachable!(),
            };
            let r = c.call(&req(op, Some(&key.ski), &input)).expect("call");
            if !fits {
                assert_eq!(
                    r.error_code(),
                    Some(ErrorCode::CRYPTO),
                    "{op:?} on {:?} must be refused",
                    key.kind
                );
                continue;
            }
            assert_eq!(
                r.opcode,
                Op::RESPONSE,
                "{op:?} on {:?}: {:?}",
                key.kind,
                r.error_code()
            );
            let sig = &r.payload;
            let ok = match class {
                OpClass::RsaDecrypt => {
                    let KeyKind::Rsa { bits } = key.kind else {
                        unreachable!()
                    };
                    sig.len() == bits / 8
                        && sig[0] == 0
                        && sig[1] == 2
                        && sig.ends_with(b"\0premaster secret")
                }
                OpClass::Ed25519 => {
                    UnparsedPublicKey::new(&signature::ED25519, spki_key_bits(&key.spki_der))
                        .verify(msg, sig)
                        .is_ok()
                }
                OpClass::Ecdsa(h) => {
                    let alg: Option<&dyn VerificationAlgorithm> = match (key.kind, h) {
                        (KeyKind::EcdsaP256, Hash::Sha256) => {
                            Some(&signature::ECDSA_P256_SHA256_ASN1)
                        }
                        (KeyKind::EcdsaP384, Hash::Sha384) => {
                            Some(&signature::ECDSA_P384_SHA384_ASN1)
                        }
                        (KeyKind::EcdsaP521, Hash::Sha512) => {
                            Some(&signature::ECDSA_P521_SHA512_ASN1)
                        }
                        _ => None,
                    };
                    match alg {
                        Some(a) => UnparsedPublicKey::new(a, spki_key_bits(&key.spki_der))
                            .verify(msg, sig)
                            .is_ok(),
                        None => openssl_verify(&key.spki_der, &input, sig, None, false),
                    }
                }
                OpClass::RsaPkcs1(h) => {
                    openssl_verify(&key.spki_der, &input, sig, md_name(h), false)
                }
                OpClass::RsaPss(h) => openssl_verify(&key.spki_der, &input, sig, md_name(h), true),
                _ => unreachable!(),
            };
            assert!(ok, "{op:?} on {:?}: signature does not verify", key.kind);
            checked += 1;
        }
    }
    // 3 RSA keys × 10 RSA ops + 3 EC keys × 6 ECDSA ops + 1 Ed25519.
    assert_eq!(checked, 3 * 10 + 3 * 6 + 1);
}

/// PKCS#1 v1.5 type-2 encryption with the public key (aws-lc-rs).
fn rsa_encrypt(spki: &[u8], k: usize, msg: &[u8]) -> Vec<u8> {
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    let pk = PublicEncryptingKey::from_der(spki).expect("RSA public key");
    let enc = Pkcs1PublicEncryptingKey::new(pk).expect("pkcs1 key");
    let mut out = vec![0u8; k];
    let n = enc.encrypt(msg, &mut out).expect("encrypt").len();
    out.truncate(n);
    out
}

#[test]
fn rsa_digest_of_wrong_length_is_a_crypto_error() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let key = srv.key(KeyKind::Rsa { bits: 2048 });
    for (op, len) in [
        (Op::RSA_SIGN_SHA256, 31),
        (Op::RSA_SIGN_SHA256, 48),
        (Op::RSA_PSS_SIGN_SHA384, 32),
        (Op::RSA_SIGN_MD5SHA1, 32),
    ] {
        let r = c.call(&req(op, Some(&key.ski), &vec![7u8; len])).unwrap();
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::CRYPTO),
            "{op:?} with {len} bytes"
        );
    }
    // ECDSA does not enforce the digest length (as the reference).
    let ec = srv.key(KeyKind::EcdsaP256);
    let r = c
        .call(&req(Op::ECDSA_SIGN_SHA256, Some(&ec.ski), &[1u8; 20]))
        .unwrap();
    assert_eq!(r.opcode, Op::RESPONSE);
}

#[test]
fn legacy_digest_finds_rsa_key_without_ski() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let key = srv.key(KeyKind::Rsa { bits: 2048 });
    let legacy = keycore_keys::legacy_digest_from_spki(&key.spki_der).unwrap();
    let d = digest_of(Hash::Sha256, b"m");
    let m = keycore_protocol::Message {
        opcode: Some(Op::RSA_SIGN_SHA256),
        payload: Some(&d),
        cert_digest: Some(&legacy),
        ..Default::default()
    };
    let r = c.call(&m).unwrap();
    assert_eq!(r.opcode, Op::RESPONSE);
    assert!(openssl_verify(
        &key.spki_der,
        &d,
        &r.payload,
        Some("sha256"),
        false
    ));
}
