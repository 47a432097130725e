//! Tests for software keys: keys are made by the `openssl` CLI in a tempdir
//! (so loading is checked against another implementation's files), every
//! signature is verified by aws-lc-rs's public verifiers or byte for byte
//! through the raw public operation, and each key type is cross-checked with
//! `openssl pkeyutl -verify`.

use super::*;
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use std::process::Command;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const ALL_HASHES: [Hash; 6] = [
    Hash::Md5Sha1,
    Hash::Sha1,
    Hash::Sha224,
    Hash::Sha256,
    Hash::Sha384,
    Hash::Sha512,
];

fn openssl_status(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed")
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = openssl_status(dir, args);
    assert!(
        o.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One key per kind, in the formats openssl's usual commands write.
fn make_keys(dir: &Path) {
    // PKCS#1 ("RSA PRIVATE KEY"), the traditional format.
    openssl(
        dir,
        &["genrsa", "-traditional", "-out", "rsa2048.pem", "2048"],
    );
    // SEC1 preceded by an "EC PARAMETERS" block.
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "p256.pem",
        ],
    );
    // PKCS#8 ("PRIVATE KEY").
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "p384.pem",
        ],
    );
    // SEC1 alone.
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "secp521r1",
            "-genkey",
            "-noout",
            "-out",
            "p521.pem",
        ],
    );
    openssl(
        dir,
        &["genpkey", "-algorithm", "ed25519", "-out", "ed25519.pem"],
    );
    for k in ["rsa2048", "p256", "p384", "p521", "ed25519"] {
        openssl(
            dir,
            &[
                "pkey",
                "-in",
                &format!("{k}.pem"),
                "-pubout",
                "-out",
                &format!("{k}.pub"),
            ],
        );
    }
}

fn load(dir: &Path, name: &str) -> KeyEntry {
    load_file(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn ops(e: &KeyEntry) -> &dyn PrivateKeyOps {
    match &e.backend {
        Backend::Inline(k) => k.as_ref(),
        #[allow(unreachable_patterns)]
        _ => panic!("software keys are inline"),
    }
}

fn run(e: &KeyEntry, op: OpClass, input: &[u8]) -> Result<Vec<u8>, ErrorCode> {
    let mut out = Vec::new();
    ops(e).perform(op, input, &mut out).map(|()| out)
}

/// The subjectPublicKey bits (what aws-lc-rs's verifiers take).
fn public_bits(e: &KeyEntry) -> Vec<u8> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(&e.spki_der).expect("valid SPKI");
    spki.subject_public_key.data.to_vec()
}

fn verify(alg: &'static dyn VerificationAlgorithm, e: &KeyEntry, msg: &[u8], signature: &[u8]) {
    UnparsedPublicKey::new(alg, public_bits(e))
        .verify(msg, signature)
        .unwrap_or_else(|_| panic!("{:?}: signature does not verify with {alg:?}", e.kind));
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SystemRandom::new().fill(&mut v).unwrap();
    v
}

fn md(hash: Hash) -> Option<&'static digest::Algorithm> {
    Some(match hash {
        Hash::Md5Sha1 => return None,
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha224 => &digest::SHA224,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    })
}

/// A message and its digest under `hash` (36 random bytes for MD5‖SHA1,
/// which aws-lc-rs can't compute; it is signed bare either way).
fn message_and_digest(hash: Hash) -> (Vec<u8>, Vec<u8>) {
    let msg = random(100);
    let d = match md(hash) {
        Some(alg) => digest::digest(alg, &msg).as_ref().to_vec(),
        None => random(36),
    };
    (msg, d)
}

fn openssl_digest_name(hash: Hash) -> &'static str {
    match hash {
        Hash::Md5Sha1 => "md5-sha1",
        Hash::Sha1 => "sha1",
        Hash::Sha224 => "sha224",
        Hash::Sha256 => "sha256",
        Hash::Sha384 => "sha384",
        Hash::Sha512 => "sha512",
    }
}

/// `openssl pkeyutl -verify` of `signature` over `input` with the key's
/// public half; `opts` are extra -pkeyopt values.
fn openssl_verifies(
    dir: &Path,
    pubkey: &str,
    input: &[u8],
    signature: &[u8],
    extra: &[&str],
) -> bool {
    let n = random(8)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let (inf, sigf) = (format!("in-{n}.bin"), format!("sig-{n}.bin"));
    std::fs::write(dir.join(&inf), input).unwrap();
    std::fs::write(dir.join(&sigf), signature).unwrap();
    let mut args = vec![
        "pkeyutl", "-verify", "-pubin", "-inkey", pubkey, "-in", &inf, "-sigfile", &sigf,
    ];
    args.extend_from_slice(extra);
    let o = openssl_status(dir, &args);
    o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains("Signature Verified Successfully")
}

/// Load a key file as the concrete type (for the raw-RSA checks).
fn software_key(path: &Path) -> SoftwareKey {
    let bytes = std::fs::read(path).unwrap();
    let (kind, der) = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .map(|r| r.unwrap())
        .find(|(k, _)| *k != SectionKind::PublicKey)
        .unwrap();
    let format = match kind {
        SectionKind::RsaPrivateKey => DerFormat::Pkcs1,
        SectionKind::EcPrivateKey => DerFormat::Sec1,
        _ => DerFormat::Pkcs8,
    };
    SoftwareKey::from_der(&der, format).unwrap()
}

/// The PKCS#1 v1.5 type-1 encoded message for `t` in a k-byte block.
fn emsa_pkcs1(k: usize, t: &[u8]) -> Vec<u8> {
    let mut em = vec![0x00, 0x01];
    em.resize(k - t.len() - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(t);
    em
}

#[test]
fn loads_every_format_with_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    // DER forms and the other PEM structure for the same keys.
    openssl(d, &["pkey", "-in", "rsa2048.pem", "-out", "rsa2048.p8.pem"]);
    openssl(
        d,
        &[
            "rsa",
            "-in",
            "rsa2048.pem",
            "-traditional",
            "-outform",
            "DER",
            "-out",
            "rsa2048.p1.der",
        ],
    );
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "rsa2048.pem",
            "-outform",
            "DER",
            "-out",
            "rsa2048.p8.der",
        ],
    );
    openssl(
        d,
        &[
            "ec",
            "-in",
            "p256.pem",
            "-outform",
            "DER",
            "-out",
            "p256.sec1.der",
        ],
    );
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "p256.pem",
            "-outform",
            "DER",
            "-out",
            "p256.p8.der",
        ],
    );
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "ed25519.pem",
            "-outform",
            "DER",
            "-out",
            "ed25519.der",
        ],
    );

    let groups: [(&str, KeyKind, &[&str]); 5] = [
        (
            "rsa2048",
            KeyKind::Rsa { bits: 2048 },
            &[
                "rsa2048.pem",
                "rsa2048.p8.pem",
                "rsa2048.p1.der",
                "rsa2048.p8.der",
            ],
        ),
        (
            "p256",
            KeyKind::EcdsaP256,
            &["p256.pem", "p256.sec1.der", "p256.p8.der"],
        ),
        ("p384", KeyKind::EcdsaP384, &["p384.pem"]),
        ("p521", KeyKind::EcdsaP521, &["p521.pem"]),
        ("ed25519", KeyKind::Ed25519, &["ed25519.pem", "ed25519.der"]),
    ];
    for (base, kind, files) in groups {
        // What openssl says the public key is.
        openssl(
            d,
            &[
                "pkey",
                "-in",
                &format!("{base}.pem"),
                "-pubout",
                "-outform",
                "DER",
                "-out",
                "pub.der",
            ],
        );
        let spki = std::fs::read(d.join("pub.der")).unwrap();
        let ski = ski_from_spki(&spki).unwrap();
        for f in files {
            let e = load(d, f);
            assert_eq!(e.kind, kind, "{f}");
            assert_eq!(e.spki_der, spki, "{f}: SPKI differs from openssl's");
            assert_eq!(e.ski, ski, "{f}");
            assert_eq!(
                e.legacy_digest.is_some(),
                matches!(kind, KeyKind::Rsa { .. }),
                "{f}"
            );
            assert_eq!(ops(&e).kind(), kind);
            assert_eq!(ops(&e).spki_der(), &spki[..]);
            assert_eq!(e.source, d.join(f).display().to_string());
        }
    }
}

#[test]
fn refuses_bad_keys_with_a_reason_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    openssl(
        d,
        &["genrsa", "-traditional", "-out", "rsa1024.key", "1024"],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp256k1",
            "-genkey",
            "-out",
            "k256.key",
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp224r1",
            "-genkey",
            "-noout",
            "-out",
            "p224.key",
        ],
    );
    openssl(
        d,
        &["genpkey", "-algorithm", "X25519", "-out", "x25519.key"],
    );
    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "ed.pem",
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            "enc-p8.key",
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "p256.pem",
        ],
    );
    openssl(
        d,
        &[
            "ec",
            "-in",
            "p256.pem",
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            "enc-trad.key",
        ],
    );
    let two = [
        std::fs::read(d.join("ed.pem")).unwrap(),
        std::fs::read(d.join("p256.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("two.key"), two).unwrap();
    std::fs::write(d.join("garbage.key"), random(300)).unwrap();
    std::fs::write(d.join("empty.key"), b"").unwrap();
    let ed_der = {
        openssl(
            d,
            &["pkey", "-in", "ed.pem", "-outform", "DER", "-out", "ed.der"],
        );
        std::fs::read(d.join("ed.der")).unwrap()
    };
    std::fs::write(d.join("truncated.key"), &ed_der[..ed_der.len() - 1]).unwrap();
    std::fs::write(d.join("trailing.key"), [&ed_der[..], &[0u8]].concat()).unwrap();
    openssl(
        d,
        &["pkey", "-in", "ed.pem", "-pubout", "-out", "pubonly.key"],
    );
    std::fs::write(
        d.join("badpem.key"),
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();

    type Check = fn(&KeyLoadReason) -> bool;
    let cases: [(&str, Check, &str); 14] = [
        (
            "rsa1024.key",
            |r| matches!(r, KeyLoadReason::RsaSize(1024)),
            "1024 bits",
        ),
        (
            "k256.key",
            |r| matches!(r, KeyLoadReason::Curve(c) if c == "secp256k1"),
            "",
        ),
        (
            "p224.key",
            |r| matches!(r, KeyLoadReason::Curve(c) if c == "P-224"),
            "P-224",
        ),
        (
            "x25519.key",
            |r| matches!(r, KeyLoadReason::Algorithm(a) if a == "X25519"),
            "",
        ),
        (
            "enc-p8.key",
            |r| matches!(r, KeyLoadReason::Encrypted),
            "encrypted",
        ),
        (
            "enc-trad.key",
            |r| matches!(r, KeyLoadReason::Encrypted),
            "encrypted",
        ),
        (
            "two.key",
            |r| matches!(r, KeyLoadReason::MultipleKeys(2)),
            "2 private keys",
        ),
        (
            "garbage.key",
            |r| matches!(r, KeyLoadReason::Malformed(_)),
            "not a valid",
        ),
        ("empty.key", |r| matches!(r, KeyLoadReason::Empty), "empty"),
        (
            "truncated.key",
            |r| matches!(r, KeyLoadReason::Malformed(_)),
            "not a valid",
        ),
        (
            "trailing.key",
            |r| matches!(r, KeyLoadReason::Malformed(_)),
            "not a valid",
        ),
        (
            "pubonly.key",
            |r| matches!(r, KeyLoadReason::NoPrivateKey),
            "no private key",
        ),
        (
            "badpem.key",
            |r| matches!(r, KeyLoadReason::Pem(_)),
            "bad PEM",
        ),
        (
            "missing.key",
            |r| matches!(r, KeyLoadReason::Io(_)),
            "cannot read",
        ),
    ];
    for (name, check, text) in cases {
        let path = d.join(name);
        let err = load_file(&path).expect_err(name);
        assert!(
            check(&err.reason),
            "{name}: unexpected reason {:?}",
            err.reason
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
        assert!(msg.contains(text), "{name}: {msg}");
    }
}

#[test]
fn rsa_pkcs1_signatures_verify_for_every_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let e = load(d, "rsa2048.pem");
    let raw = software_key(&d.join("rsa2048.pem"));
    let Secret::Rsa(rsa) = &raw.secret else {
        panic!()
    };
    for hash in ALL_HASHES {
        let (msg, digest) = message_and_digest(hash);
        let s = run(&e, OpClass::RsaPkcs1(hash), &digest).unwrap();
        assert_eq!(s.len(), 256, "{hash:?}");
        // Byte for byte: s^e mod n is the EMSA-PKCS1-v1_5 block of
        // DigestInfo‖digest (bare digest for MD5‖SHA1).
        let t = [hash.digest_info_prefix(), &digest[..]].concat();
        assert_eq!(rsa.public_raw(&s).unwrap(), emsa_pkcs1(256, &t), "{hash:?}");
        // aws-lc-rs's verifier, where it has the hash.
        let alg: Option<&'static dyn VerificationAlgorithm> = match hash {
            Hash::Sha1 => Some(&sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY),
            Hash::Sha256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
            Hash::Sha384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
            Hash::Sha512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
            _ => None,
        };
        if let Some(alg) = alg {
            verify(alg, &e, &msg, &s);
        }
        // openssl: with the digest named (it adds the DigestInfo), or raw for
        // MD5‖SHA1 (no DigestInfo).
        let dopt = format!("digest:{}", openssl_digest_name(hash));
        let extra: &[&str] = if hash == Hash::Md5Sha1 {
            &[]
        } else {
            &["-pkeyopt", &dopt]
        };
        assert!(
            openssl_verifies(d, "rsa2048.pub", &digest, &s, extra),
            "openssl: {hash:?}"
        );
    }
}

#[test]
fn rsa_pss_signatures_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let e = load(d, "rsa2048.pem");
    let cases: [(Hash, &'static dyn VerificationAlgorithm); 3] = [
        (Hash::Sha256, &sig::RSA_PSS_2048_8192_SHA256),
        (Hash::Sha384, &sig::RSA_PSS_2048_8192_SHA384),
        (Hash::Sha512, &sig::RSA_PSS_2048_8192_SHA512),
    ];
    for (hash, alg) in cases {
        let (msg, digest) = message_and_digest(hash);
        let s = run(&e, OpClass::RsaPss(hash), &digest).unwrap();
        assert_eq!(s.len(), 256);
        verify(alg, &e, &msg, &s);
        let dopt = format!("digest:{}", openssl_digest_name(hash));
        let extra = [
            "-pkeyopt",
            "rsa_padding_mode:pss",
            "-pkeyopt",
            "rsa_pss_saltlen:digest",
            "-pkeyopt",
            &dopt,
        ];
        assert!(
            openssl_verifies(d, "rsa2048.pub", &digest, &s, &extra),
            "openssl: {hash:?}"
        );
        // The salt is exactly the hash length: a verifier demanding a longer
        // salt refuses it.
        let wrong = [
            "-pkeyopt",
            "rsa_padding_mode:pss",
            "-pkeyopt",
            "rsa_pss_saltlen:max",
            "-pkeyopt",
            &dopt,
        ];
        assert!(
            !openssl_verifies(d, "rsa2048.pub", &digest, &s, &wrong),
            "{hash:?}"
        );
    }
}

#[test]
fn rsa_decrypt_returns_the_raw_padded_block() {
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let e = load(d, "rsa2048.pem");
    let public =
        Pkcs1PublicEncryptingKey::new(PublicEncryptingKey::from_der(&e.spki_der).unwrap()).unwrap();
    let secret = random(48); // a TLS premaster secret's size
    let mut ct = vec![0u8; 256];
    let ct = public.encrypt(&secret, &mut ct).unwrap().to_vec();
    let pt = run(&e, OpClass::RsaDecrypt, &ct).unwrap();
    assert_eq!(pt.len(), 256);
    assert_eq!(&pt[..2], &[0x00, 0x02]);
    let ps_end = 2 + pt[2..].iter().position(|&b| b == 0).unwrap();
    assert!(
        ps_end - 2 >= 8,
        "padding string is at least 8 nonzero bytes"
    );
    assert_eq!(&pt[ps_end + 1..], &secret[..]);

    // The result is c^d mod n itself: raising it to e gives c back. (Every
    // PKCS#1 block above starts with 0x00, so left-padding is covered.)
    let raw = software_key(&d.join("rsa2048.pem"));
    let Secret::Rsa(rsa) = &raw.secret else {
        panic!()
    };
    let mut two = vec![0u8; 256];
    two[255] = 2;
    let r = run(&e, OpClass::RsaDecrypt, &two).unwrap();
    assert_eq!(r.len(), 256);
    assert_eq!(rsa.public_raw(&r).unwrap(), two);

    // aws-lc refuses the trivial inputs 0, 1 and n-1 (their result would
    // equal the input); a real ciphertext is never one of them.
    let mut one = vec![0u8; 256];
    one[255] = 1;
    assert_eq!(run(&e, OpClass::RsaDecrypt, &one), Err(ErrorCode::CRYPTO));
    assert_eq!(
        run(&e, OpClass::RsaDecrypt, &[0u8; 256]),
        Err(ErrorCode::CRYPTO)
    );

    // Refused: not k bytes, or not less than n.
    assert_eq!(
        run(&e, OpClass::RsaDecrypt, &ct[1..]),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(
        run(&e, OpClass::RsaDecrypt, &[ct.clone(), vec![0]].concat()),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(
        run(&e, OpClass::RsaDecrypt, &[0xff; 256]),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(run(&e, OpClass::RsaDecrypt, &[]), Err(ErrorCode::CRYPTO));
}

#[test]
fn ecdsa_signatures_verify_for_every_curve_and_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    for (file, pubf) in [
        ("p256.pem", "p256.pub"),
        ("p384.pem", "p384.pub"),
        ("p521.pem", "p521.pub"),
    ] {
        let e = load(d, file);
        for hash in ALL_HASHES {
            let (msg, digest) = message_and_digest(hash);
            let s = run(&e, OpClass::Ecdsa(hash), &digest).unwrap();
            assert_eq!(s[0], 0x30, "DER SEQUENCE");
            use sig::*;
            let alg: Option<&'static dyn VerificationAlgorithm> = match (e.kind, hash) {
                (KeyKind::EcdsaP256, Hash::Sha1) => Some(&ECDSA_P256_SHA1_ASN1),
                (KeyKind::EcdsaP256, Hash::Sha256) => Some(&ECDSA_P256_SHA256_ASN1),
                (KeyKind::EcdsaP256, Hash::Sha384) => Some(&ECDSA_P256_SHA384_ASN1),
                (KeyKind::EcdsaP256, Hash::Sha512) => Some(&ECDSA_P256_SHA512_ASN1),
                (KeyKind::EcdsaP384, Hash::Sha256) => Some(&ECDSA_P384_SHA256_ASN1),
                (KeyKind::EcdsaP384, Hash::Sha384) => Some(&ECDSA_P384_SHA384_ASN1),
                (KeyKind::EcdsaP384, Hash::Sha512) => Some(&ECDSA_P384_SHA512_ASN1),
                (KeyKind::EcdsaP521, Hash::Sha1) => Some(&ECDSA_P521_SHA1_ASN1),
                (KeyKind::EcdsaP521, Hash::Sha224) => Some(&ECDSA_P521_SHA224_ASN1),
                (KeyKind::EcdsaP521, Hash::Sha256) => Some(&ECDSA_P521_SHA256_ASN1),
                (KeyKind::EcdsaP521, Hash::Sha384) => Some(&ECDSA_P521_SHA384_ASN1),
                (KeyKind::EcdsaP521, Hash::Sha512) => Some(&ECDSA_P521_SHA512_ASN1),
                _ => None,
            };
            if let Some(alg) = alg {
                verify(alg, &e, &msg, &s);
            }
            // openssl verifies over the digest as given, whatever its length.
            assert!(
                openssl_verifies(d, pubf, &digest, &s, &[]),
                "openssl {file} {hash:?}"
            );
        }
        // The digest length is not enforced and odd lengths don't panic:
        // a long digest is truncated to the order's length (FIPS 186).
        for len in [0usize, 1, 200, 65535] {
            let digest = random(len);
            let s = run(&e, OpClass::Ecdsa(Hash::Sha256), &digest).unwrap();
            // openssl takes at most 64 bytes; for P-256/P-384 the order's
            // length of prefix is what ECDSA signs, so the signature must
            // verify over just that prefix.
            let order_len = match e.kind {
                KeyKind::EcdsaP256 => 32,
                KeyKind::EcdsaP384 => 48,
                _ => continue,
            };
            if len >= order_len {
                assert!(
                    openssl_verifies(d, pubf, &digest[..order_len], &s, &[]),
                    "openssl {file} len {len}"
                );
            } else if len > 0 {
                assert!(
                    openssl_verifies(d, pubf, &digest, &s, &[]),
                    "openssl {file} len {len}"
                );
            }
        }
    }
}

#[test]
fn ed25519_signs_the_whole_message() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let e = load(d, "ed25519.pem");
    for msg in [Vec::new(), random(1), random(1000)] {
        let s = run(&e, OpClass::Ed25519, &msg).unwrap();
        assert_eq!(s.len(), 64);
        verify(&sig::ED25519, &e, &msg, &s);
        // (The openssl CLI can't read an empty message.)
        if !msg.is_empty() {
            assert!(
                openssl_verifies(d, "ed25519.pub", &msg, &s, &["-rawin"]),
                "openssl"
            );
        }
    }
}

#[test]
fn ops_that_do_not_fit_the_key_are_crypto_errors_and_leave_out_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let all_ops: Vec<OpClass> = [OpClass::RsaDecrypt, OpClass::Ed25519]
        .into_iter()
        .chain(
            ALL_HASHES
                .iter()
                .flat_map(|&h| [OpClass::RsaPkcs1(h), OpClass::RsaPss(h), OpClass::Ecdsa(h)]),
        )
        .chain([
            OpClass::Seal,
            OpClass::Unseal,
            OpClass::Rpc,
            OpClass::Custom,
            OpClass::Ping,
            OpClass::Unknown,
        ])
        .collect();
    for file in [
        "rsa2048.pem",
        "p256.pem",
        "p384.pem",
        "p521.pem",
        "ed25519.pem",
    ] {
        let e = load(d, file);
        for &op in &all_ops {
            let fits = matches!(
                (e.kind, op),
                (
                    KeyKind::Rsa { .. },
                    OpClass::RsaDecrypt | OpClass::RsaPkcs1(_)
                ) | (KeyKind::Ed25519, OpClass::Ed25519)
                    | (
                        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521,
                        OpClass::Ecdsa(_)
                    )
            ) || matches!((e.kind, op), (KeyKind::Rsa { .. }, OpClass::RsaPss(h)) if h != Hash::Md5Sha1);
            // Right-length input where a length matters, so only the key/op
            // fit decides.
            let input = match op {
                OpClass::RsaPkcs1(h) | OpClass::RsaPss(h) | OpClass::Ecdsa(h) => random(h.len()),
                OpClass::RsaDecrypt => {
                    let mut v = random(256);
                    v[0] = 0;
                    v
                }
                _ => random(32),
            };
            let mut out = b"prefix".to_vec();
            let r = ops(&e).perform(op, &input, &mut out);
            if fits {
                assert_eq!(r, Ok(()), "{file} {op:?}");
                assert!(
                    out.starts_with(b"prefix") && out.len() > 6,
                    "{file} {op:?}: appends"
                );
            } else {
                assert_eq!(r, Err(ErrorCode::CRYPTO), "{file} {op:?}");
                assert_eq!(out, b"prefix", "{file} {op:?}: out untouched");
            }
        }
    }
}

/// The digest-length rule is `check_input`'s (run once by dispatch; the
/// server-level test is tests/integration/ops.rs
/// `rsa_digest_of_wrong_length_is_a_crypto_error`). The signer itself must
/// still never panic or read past its input when a caller skips that check:
/// PSS and over-long PKCS#1 input are refused, a short PKCS#1 digest is
/// whatever the raw RSA operation makes of it.
#[test]
fn rsa_digest_of_the_wrong_length_is_refused_by_check_input_and_never_panics_the_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let e = load(d, "rsa2048.pem");
    for hash in ALL_HASHES {
        for len in [0, hash.len() - 1, hash.len() + 1, 300] {
            for op in [OpClass::RsaPkcs1(hash), OpClass::RsaPss(hash)] {
                assert_eq!(
                    crate::check_input(e.kind, op, &random(len)),
                    Err(ErrorCode::CRYPTO),
                    "{op:?} {len}"
                );
            }
            assert_eq!(
                run(&e, OpClass::RsaPss(hash), &random(len)),
                Err(ErrorCode::CRYPTO),
                "{hash:?} {len}"
            );
            let pkcs1 = run(&e, OpClass::RsaPkcs1(hash), &random(len));
            if len > 64 {
                assert_eq!(pkcs1, Err(ErrorCode::CRYPTO), "{hash:?} {len}");
            }
        }
    }
    let decrypt = |len| run(&e, OpClass::RsaDecrypt, &random(len));
    for len in [0, 255, 257, 600] {
        assert_eq!(decrypt(len), Err(ErrorCode::CRYPTO), "decrypt {len}");
    }
}

#[test]
fn one_key_signs_from_many_threads_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(d);
    let keys = [
        load(d, "rsa2048.pem"),
        load(d, "p256.pem"),
        load(d, "ed25519.pem"),
    ];
    std::thread::scope(|s| {
        for t in 0..4 {
            let keys = &keys;
            s.spawn(move || {
                let mut out = Vec::with_capacity(512);
                for i in 0..40 {
                    let msg = format!("thread {t} message {i}").into_bytes();
                    let dg = digest::digest(&digest::SHA256, &msg);
                    for e in keys {
                        out.clear();
                        let (op, input, alg): (_, &[u8], &'static dyn VerificationAlgorithm) =
                            match e.kind {
                                KeyKind::Rsa { .. } => (
                                    OpClass::RsaPkcs1(Hash::Sha256),
                                    dg.as_ref(),
                                    &sig::RSA_PKCS1_2048_8192_SHA256,
                                ),
                                KeyKind::EcdsaP256 => (
                                    OpClass::Ecdsa(Hash::Sha256),
                                    dg.as_ref(),
                                    &sig::ECDSA_P256_SHA256_ASN1,
                                ),
                                _ => (OpClass::Ed25519, &msg, &sig::ED25519),
                            };
                        ops(e).perform(op, input, &mut out).unwrap();
                        verify(alg, e, &msg, &out);
                    }
                }
            });
        }
    });
}

#[test]
fn load_dir_recurses_in_sorted_order_and_survives_symlink_loops() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("b/nested")).unwrap();
    std::fs::create_dir_all(d.join("a")).unwrap();
    openssl(
        d,
        &["genpkey", "-algorithm", "ed25519", "-out", "b/nested/z.key"],
    );
    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "a/y.key"]);
    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "x.key"]);
    // Not key files by name.
    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", ".key"]);
    openssl(
        d,
        &["genpkey", "-algorithm", "ed25519", "-out", "x.key.bak"],
    );
    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "x.pem"]);
    std::fs::write(d.join("broken.key"), b"not a key").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink("..", d.join("b/nested/loop")).unwrap(); // a loop back up
        symlink(d, d.join("a/root")).unwrap(); // another
        symlink("x.key", d.join("w-link-to-x.key")).unwrap(); // same file twice
        symlink("does-not-exist", d.join("dangling.key")).unwrap();
    }
    let results = load_dir(d);
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for r in results {
        match r {
            Ok(e) => ok.push(e.source),
            Err(e) => errs.push(e.path),
        }
    }
    let rel = |p: &str| {
        p.strip_prefix(&format!("{}/", d.display()))
            .unwrap_or(p)
            .to_string()
    };
    let ok: Vec<_> = ok.iter().map(|p| rel(p)).collect();
    let errs: Vec<_> = errs.iter().map(|p| rel(p)).collect();
    // Sorted by path; x.key reached directly and through a link loads once
    // (whichever path sorts first).
    assert_eq!(ok, ["a/y.key", "b/nested/z.key", "w-link-to-x.key"]);
    #[cfg(unix)]
    assert_eq!(errs, ["broken.key", "dangling.key"]);
    // A missing directory is one error naming it.
    let missing = load_dir(&d.join("nope"));
    assert_eq!(missing.len(), 1);
    assert!(missing[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

#[test]
fn fifos_and_sockets_named_like_keys_are_refused_without_blocking() {
    // Regression (issue 12 item 9): a FIFO named *.key hung start-up forever
    // in open(2), even with key_load_errors: skip. The whole walk runs on a
    // thread with a limit so a hang fails the test instead of the run.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    openssl(
        &d,
        &["genpkey", "-algorithm", "ed25519", "-out", "good.key"],
    );
    let status = std::process::Command::new("mkfifo")
        .arg(d.join("fifo.key"))
        .status()
        .unwrap();
    assert!(status.success());
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock.key")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let dd = d.clone();
    std::thread::spawn(move || {
        let dir: Vec<_> = load_dir(&dd)
            .into_iter()
            .map(|r| r.map(|e| e.source).map_err(|e| e.to_string()))
            .collect();
        // A `file:` store naming the FIFO directly goes through load_file.
        let file = load_file(&dd.join("fifo.key")).map(|e| e.source);
        let _ = tx.send((dir, file.map_err(|e| e.to_string())));
    });
    let (dir, file) = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("loading a directory with a FIFO returned");
    assert_eq!(dir.len(), 3, "{dir:?}");
    assert!(dir[0].as_ref().unwrap_err().contains("fifo.key"), "{dir:?}");
    assert!(
        dir[0]
            .as_ref()
            .unwrap_err()
            .contains("not a regular file (a FIFO)"),
        "{dir:?}"
    );
    assert!(dir[1].as_ref().unwrap().ends_with("good.key"), "{dir:?}");
    assert!(
        dir[2]
            .as_ref()
            .unwrap_err()
            .contains("not a regular file (a socket)"),
        "{dir:?}"
    );
    assert!(
        file.as_ref()
            .unwrap_err()
            .contains("not a regular file (a FIFO)"),
        "{file:?}"
    );
}

#[test]
fn key_file_names_need_a_stem() {
    use std::ffi::OsStr;
    assert!(is_key_file_name(OsStr::new("a.key")));
    assert!(is_key_file_name(OsStr::new(".a.key")));
    assert!(!is_key_file_name(OsStr::new(".key")));
    assert!(!is_key_file_name(OsStr::new("a.key.pem")));
    assert!(!is_key_file_name(OsStr::new("a.KEY")));
}

#[test]
fn rsa_above_4096_bits_is_refused() {
    // Stored fixture: generating a >4096-bit key takes seconds.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys/rsa4160-too-big.key");
    let err = load_file(&path).unwrap_err();
    assert!(matches!(err.reason, KeyLoadReason::RsaSize(4160)), "{err}");
    assert!(err.to_string().contains("2048 to 4096"), "{err}");
}

#[test]
fn mangled_key_bytes_never_panic() {
    // Every byte of a valid PKCS#8 (DER and PEM) and a valid PKCS#1 DER
    // flipped, plus every truncation: each must load or be refused, never
    // panic.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "p256.pem",
        ],
    );
    openssl(
        d,
        &[
            "pkey", "-in", "p256.pem", "-outform", "DER", "-out", "p256.der",
        ],
    );
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.pem", "2048"]);
    openssl(
        d,
        &[
            "rsa", "-in", "rsa.pem", "-outform", "DER", "-out", "rsa.der",
        ],
    );
    for f in ["p256.der", "p256.pem", "rsa.der"] {
        let good = std::fs::read(d.join(f)).unwrap();
        assert!(from_der_or_pem(&good, f).is_ok());
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x41;
            let _ = from_der_or_pem(&flipped, f); // either way, no panic
                                                  // A DER key cut short is always refused.
            let cut = from_der_or_pem(&good[..i], f);
            if f.ends_with(".der") {
                assert!(cut.is_err(), "{f} cut at {i} loaded");
            }
        }
    }
}
