//! Cloud key services end to end: keycore's real KMS client (kms/) against
//! the in-process stand-ins (keycore-kmssim) over loopback TLS. Every
//! signature is verified with aws-lc-rs (or compared byte for byte with a
//! local PKCS#1 v1.5 signature, which is deterministic); throttling, token
//! expiry, checksum corruption and stalls are driven through the stand-ins'
//! knobs.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use keycore_keys::ski_from_spki;
use keycore_keys::{Backend, KeyEntry, KeyKind, KeyStore, PromWriter, StoreId, StoreKey};
use keycore_kms::{AwsCredential, AzureCredential, GcpCredential, KeyRef, KmsOptions, KmsStore};
use keycore_kmssim::{get, KeyType, Sim, SimKey};
use keycore_protocol::{ErrorCode, Hash, OpClass};
use std::time::{Duration, Instant};
use x509_parser::prelude::FromDer;

struct Env {
    sim: Sim,
    dir: tempfile::TempDir,
    opts: KmsOptions,
}

const TENANT: &str = "tenant-1";
const CLIENT: &str = "client-1";
const SECRET: &str = "secret-1";
const SA_EMAIL: &str = "keycore@proj.iam.gserviceaccount.com";
const AK: &str = "AKIDKEYCORETEST";
const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYKEYCORE";

/// Stand-ins plus options pointing every endpoint at them, with the primary
/// credential of each service (client secret, service-account file, env keys).
fn env() -> Env {
    let sim = Sim::start().expect("stand-ins start");
    let dir = tempfile::tempdir().unwrap();
    let mut o = KmsOptions {
        ca_file: Some(sim.write_ca(dir.path()).unwrap()),
        azure_endpoint: Some(sim.https_url.clone()),
        azure_authority: Some(sim.https_url.clone()),
        azure_imds_endpoint: format!("{}/metadata/identity/oauth2/token", sim.http_url),
        gcp_endpoint: sim.https_url.clone(),
        gcp_metadata_endpoint: sim.http_url.clone(),
        aws_endpoint: Some(sim.https_url.clone()),
        aws_imds_endpoint: sim.http_url.clone(),
        ..KmsOptions::default()
    };
    sim.azure_client_secret(TENANT, CLIENT, SECRET);
    o.azure_credential = Some(AzureCredential::ClientSecret {
        tenant: TENANT.into(),
        client_id: CLIENT.into(),
        secret: SECRET.into(),
    });
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, sim.gcp_service_account(SA_EMAIL).unwrap()).unwrap();
    o.gcp_credential = Some(GcpCredential::ServiceAccountFile(sa));
    sim.aws_access_key(AK, SK);
    o.aws_credential = Some(AwsCredential::Static {
        access_key: AK.into(),
        secret_key: SK.into(),
        session_token: None,
    });
    // Fast retries so the throttling tests stay short.
    for l in [&mut o.azure_limits, &mut o.gcp_limits, &mut o.aws_limits] {
        l.backoff_base = Duration::from_millis(20);
        l.backoff_max = Duration::from_millis(100);
    }
    o.op_timeout = Duration::from_secs(10);
    o.startup_timeout = Duration::from_secs(20);
    Env { sim, dir, opts: o }
}

fn run(store: &KmsStore, key: usize, op: OpClass, input: &[u8]) -> Result<Vec<u8>, ErrorCode> {
    futures_lite::future::block_on(store.submit(KeyRef(key as u32), op, input))
}

/// The subjectPublicKey contents (RSAPublicKey or EC point) of an SPKI.
fn spk(spki: &[u8]) -> Vec<u8> {
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).unwrap();
    info.subject_public_key.data.to_vec()
}

fn verify(alg: &'static dyn VerificationAlgorithm, spki: &[u8], msg: &[u8], sig: &[u8]) {
    UnparsedPublicKey::new(alg, spk(spki))
        .verify(msg, sig)
        .unwrap_or_else(|_| panic!("signature does not verify ({alg:?})"));
}

fn dig(alg: &'static digest::Algorithm, msg: &[u8]) -> Vec<u8> {
    digest::digest(alg, msg).as_ref().to_vec()
}

fn check_entry(e: &KeyEntry, key: &SimKey, i: usize, uri: &str) {
    assert_eq!(e.ski, ski_from_spki(&key.spki).unwrap(), "{uri}");
    assert_eq!(e.spki_der, key.spki);
    assert_eq!(e.kind, key.kind);
    assert_eq!(e.source, uri);
    assert!(matches!(e.backend, Backend::Store(StoreKey { key: k, .. }) if k as usize == i));
    assert_eq!(
        e.legacy_digest.is_some(),
        matches!(key.kind, KeyKind::Rsa { .. })
    );
}

/// Verify a signature over a bare digest with the openssl CLI (pkeyutl
/// treats the input as the digest, as the edge's TLS stack does).
fn openssl_verify_digest(dir: &std::path::Path, spki: &[u8], digest: &[u8], sig: &[u8]) {
    let (pk, d, s) = (
        dir.join("pub.der"),
        dir.join("digest.bin"),
        dir.join("sig.bin"),
    );
    std::fs::write(&pk, spki).unwrap();
    std::fs::write(&d, digest).unwrap();
    std::fs::write(&s, sig).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey"])
        .arg(&pk)
        .arg("-in")
        .arg(&d)
        .arg("-sigfile")
        .arg(&s)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const MSG: &[u8] = b"keycore cloud key test message";

/// RSA PKCS#1 v1.5 and PSS with every hash the service has, checked.
fn check_rsa_signing(store: &KmsStore, i: usize, spki: &[u8], pss: bool, pkcs1: bool) {
    type Row = (
        Hash,
        &'static digest::Algorithm,
        &'static dyn VerificationAlgorithm,
        &'static dyn VerificationAlgorithm,
    );
    let rows: [Row; 3] = [
        (
            Hash::Sha256,
            &digest::SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &signature::RSA_PSS_2048_8192_SHA256,
        ),
        (
            Hash::Sha384,
            &digest::SHA384,
            &signature::RSA_PKCS1_2048_8192_SHA384,
            &signature::RSA_PSS_2048_8192_SHA384,
        ),
        (
            Hash::Sha512,
            &digest::SHA512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
            &signature::RSA_PSS_2048_8192_SHA512,
        ),
    ];
    for (h, d, v_pkcs1, v_pss) in rows {
        if pkcs1 {
            let sig = run(store, i, OpClass::RsaPkcs1(h), &dig(d, MSG)).unwrap();
            verify(v_pkcs1, spki, MSG, &sig);
        }
        if pss {
            let sig = run(store, i, OpClass::RsaPss(h), &dig(d, MSG)).unwrap();
            verify(v_pss, spki, MSG, &sig);
        }
    }
}

#[test]
fn azure_key_vault_and_managed_hsm_every_operation() {
    let e = env();
    let (u_rsa, k_rsa) = e
        .sim
        .azure_key("kv-test", false, "rsa", KeyType::Rsa2048)
        .unwrap();
    let (u_p256, k_p256) = e
        .sim
        .azure_key("kv-test", false, "ec256", KeyType::EcP256)
        .unwrap();
    let (u_p384, k_p384) = e
        .sim
        .azure_key("hsm-test", true, "ec384", KeyType::EcP384)
        .unwrap();
    let uris = vec![u_rsa.clone(), u_p256.clone(), u_p384.clone()];
    let (store, entries) = KmsStore::open(&uris, &e.opts, StoreId(0)).expect("open");
    assert_eq!(entries.len(), 3);
    check_entry(&entries[0], &k_rsa, 0, &u_rsa);
    check_entry(&entries[1], &k_p256, 1, &u_p256);
    check_entry(&entries[2], &k_p384, 2, &u_p384);
    // Two audiences (vault, Managed HSM): two tokens.
    assert_eq!(get(&e.sim.stats().azure_tokens), 2);

    check_rsa_signing(&store, 0, &k_rsa.spki, true, true);
    // MD5SHA1, SHA-1, SHA-224 through RSNULL: byte-identical to a local
    // PKCS#1 v1.5 signature (deterministic).
    for (h, len) in [(Hash::Md5Sha1, 36), (Hash::Sha1, 20), (Hash::Sha224, 28)] {
        let d = vec![0x5a; len];
        let sig = run(&store, 0, OpClass::RsaPkcs1(h), &d).unwrap();
        assert_eq!(sig, k_rsa.sign_pkcs1(h, &d).unwrap(), "{h:?}");
    }
    // ECDSA: raw r‖s from the service, DER to the edge.
    let sig = run(
        &store,
        1,
        OpClass::Ecdsa(Hash::Sha256),
        &dig(&digest::SHA256, MSG),
    )
    .unwrap();
    verify(&signature::ECDSA_P256_SHA256_ASN1, &k_p256.spki, MSG, &sig);
    let sig = run(
        &store,
        2,
        OpClass::Ecdsa(Hash::Sha384),
        &dig(&digest::SHA384, MSG),
    )
    .unwrap();
    verify(&signature::ECDSA_P384_SHA384_ASN1, &k_p384.spki, MSG, &sig);
    // A SHA-256 digest on P-384 (TLS 1.2 lets the hash differ from the curve).
    let sig = run(
        &store,
        2,
        OpClass::Ecdsa(Hash::Sha256),
        &dig(&digest::SHA256, MSG),
    )
    .unwrap();
    verify(&signature::ECDSA_P384_SHA256_ASN1, &k_p384.spki, MSG, &sig);

    // RSA decrypt: RSA1_5 at the service, a PKCS#1 v1.5 type-2 block of k
    // bytes to the edge with the premaster at its end.
    let premaster = [0x03u8; 48];
    let pk = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&k_rsa.spki).unwrap();
    let enc = aws_lc_rs::rsa::Pkcs1PublicEncryptingKey::new(pk).unwrap();
    let mut ct = vec![0u8; 256];
    let ct = enc.encrypt(&premaster, &mut ct).unwrap().to_vec();
    let block = run(&store, 0, OpClass::RsaDecrypt, &ct).unwrap();
    assert_eq!(block.len(), 256);
    assert_eq!(&block[..2], &[0, 2]);
    assert!(block[2..256 - 49].iter().all(|&b| b != 0));
    assert_eq!(block[256 - 49], 0);
    assert_eq!(&block[256 - 48..], &premaster);
    // A ciphertext with bad padding: the service refuses, the edge gets CRYPTO.
    assert_eq!(
        run(&store, 0, OpClass::RsaDecrypt, &[0x01; 256]),
        Err(ErrorCode::CRYPTO)
    );

    // Ops a key cannot do: refused without a request.
    let before = get(&e.sim.stats().key_requests);
    assert_eq!(
        run(&store, 1, OpClass::RsaPkcs1(Hash::Sha256), &[0; 32]),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(
        run(&store, 0, OpClass::Ed25519, b"m"),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(get(&e.sim.stats().key_requests), before);
    // A digest of the wrong length never reaches a backend: dispatch runs
    // the one rule, `check_input`, first (the backend no longer repeats it).
    assert_eq!(
        keycore_keys::check_input(
            KeyKind::Rsa { bits: 2048 },
            OpClass::RsaPkcs1(Hash::Sha256),
            &[0; 31]
        ),
        Err(ErrorCode::CRYPTO)
    );
    // An unknown key reference.
    assert_eq!(
        run(&store, 9, OpClass::RsaPkcs1(Hash::Sha256), &[0; 32]),
        Err(ErrorCode::INTERNAL)
    );

    let mut m = String::new();
    store.render_metrics(&mut PromWriter::new(&mut m));
    assert!(
        m.contains("keycore_kms_operations_ok_total{service=\"azure\"}"),
        "{m}"
    );
    assert!(
        m.contains("keycore_kms_operations_refused_total{service=\"azure\"} 2"),
        "{m}"
    );
    drop(e.dir);
}

#[test]
fn google_cloud_kms_each_algorithm_and_refusals() {
    let e = env();
    let base = "projects/proj-1/locations/europe-west1/keyRings/ring/cryptoKeys";
    let keys = [
        ("pss", "RSA_SIGN_PSS_2048_SHA256", KeyType::Rsa2048),
        ("pkcs1", "RSA_SIGN_PKCS1_2048_SHA256", KeyType::Rsa2048),
        ("raw", "RSA_SIGN_RAW_PKCS1_2048", KeyType::Rsa2048),
        ("ec256", "EC_SIGN_P256_SHA256", KeyType::EcP256),
        ("ec384", "EC_SIGN_P384_SHA384", KeyType::EcP384),
        ("ed", "EC_SIGN_ED25519", KeyType::Ed25519),
    ];
    let mut uris = Vec::new();
    let mut sim_keys = Vec::new();
    for (n, alg, t) in keys {
        let name = format!("{base}/{n}/cryptoKeyVersions/1");
        sim_keys.push(e.sim.gcp_key(&name, alg, t).unwrap());
        uris.push(name);
    }
    let (store, entries) = KmsStore::open(&uris, &e.opts, StoreId(0)).expect("open");
    for (i, (ent, k)) in entries.iter().zip(&sim_keys).enumerate() {
        check_entry(ent, k, i, &uris[i]);
    }
    assert_eq!(get(&e.sim.stats().gcp_tokens), 1);
    let d256 = dig(&digest::SHA256, MSG);
    let d384 = dig(&digest::SHA384, MSG);

    // PSS key: PSS SHA-256 only.
    let sig = run(&store, 0, OpClass::RsaPss(Hash::Sha256), &d256).unwrap();
    verify(
        &signature::RSA_PSS_2048_8192_SHA256,
        &sim_keys[0].spki,
        MSG,
        &sig,
    );
    // PKCS#1 key: PKCS#1 SHA-256 only.
    let sig = run(&store, 1, OpClass::RsaPkcs1(Hash::Sha256), &d256).unwrap();
    verify(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        &sim_keys[1].spki,
        MSG,
        &sig,
    );
    // Raw PKCS#1 key: every PKCS#1 v1.5 hash, MD5SHA1 included.
    let sig = run(&store, 2, OpClass::RsaPkcs1(Hash::Sha384), &d384).unwrap();
    verify(
        &signature::RSA_PKCS1_2048_8192_SHA384,
        &sim_keys[2].spki,
        MSG,
        &sig,
    );
    for (h, len) in [(Hash::Md5Sha1, 36), (Hash::Sha1, 20), (Hash::Sha224, 28)] {
        let d = vec![0x42; len];
        assert_eq!(
            run(&store, 2, OpClass::RsaPkcs1(h), &d).unwrap(),
            sim_keys[2].sign_pkcs1(h, &d).unwrap()
        );
    }
    // EC keys.
    let sig = run(&store, 3, OpClass::Ecdsa(Hash::Sha256), &d256).unwrap();
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &sim_keys[3].spki,
        MSG,
        &sig,
    );
    let sig = run(&store, 4, OpClass::Ecdsa(Hash::Sha384), &d384).unwrap();
    verify(
        &signature::ECDSA_P384_SHA384_ASN1,
        &sim_keys[4].spki,
        MSG,
        &sig,
    );
    // Ed25519 over the whole message.
    let sig = run(&store, 5, OpClass::Ed25519, MSG).unwrap();
    verify(&signature::ED25519, &sim_keys[5].spki, MSG, &sig);

    // Algorithm mismatches: refused, and no request reaches the service.
    let before = get(&e.sim.stats().key_requests);
    let refused = [
        (0, OpClass::RsaPkcs1(Hash::Sha256), d256.clone()),
        (0, OpClass::RsaPss(Hash::Sha384), d384.clone()),
        (1, OpClass::RsaPss(Hash::Sha256), d256.clone()),
        (1, OpClass::RsaPkcs1(Hash::Sha384), d384.clone()),
        (1, OpClass::RsaDecrypt, vec![1; 256]),
        (2, OpClass::RsaPss(Hash::Sha256), d256.clone()),
        (3, OpClass::RsaPkcs1(Hash::Sha256), d256.clone()),
        (5, OpClass::Ecdsa(Hash::Sha256), d256.clone()),
    ];
    for (k, op, input) in refused {
        assert_eq!(
            run(&store, k, op, &input),
            Err(ErrorCode::CRYPTO),
            "key {k} op {op:?}"
        );
    }
    assert_eq!(get(&e.sim.stats().key_requests), before);
}

#[test]
fn google_decryption_key_is_refused_at_startup() {
    let e = env();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/dec/cryptoKeyVersions/2";
    e.sim
        .gcp_key(name, "RSA_DECRYPT_OAEP_2048_SHA256", KeyType::Rsa2048)
        .unwrap();
    let err = KmsStore::open(&[name.to_string()], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains(name) && err.contains("OAEP"), "{err}");
}

#[test]
fn aws_kms_sign_with_digest_and_refusals() {
    let e = env();
    let (a_rsa, k_rsa) = e.sim.aws_key("eu-west-1", KeyType::Rsa2048).unwrap();
    let (a_p256, k_p256) = e.sim.aws_key("eu-west-1", KeyType::EcP256).unwrap();
    let (a_key384, k_p384) = e.sim.aws_key("eu-west-1", KeyType::EcP384).unwrap();
    // The P-384 key by its alias ARN.
    let a_p384 = e.sim.aws_alias(&a_key384, "keyless/tls-ec384");
    assert!(a_p384.ends_with(":alias/keyless/tls-ec384"));
    let uris = vec![a_rsa.clone(), a_p256.clone(), a_p384.clone()];
    let (store, entries) = KmsStore::open(&uris, &e.opts, StoreId(0)).expect("open");
    check_entry(&entries[0], &k_rsa, 0, &a_rsa);
    check_entry(&entries[1], &k_p256, 1, &a_p256);
    check_entry(&entries[2], &k_p384, 2, &a_p384);
    check_rsa_signing(&store, 0, &k_rsa.spki, true, true);
    let sig = run(
        &store,
        1,
        OpClass::Ecdsa(Hash::Sha256),
        &dig(&digest::SHA256, MSG),
    )
    .unwrap();
    verify(&signature::ECDSA_P256_SHA256_ASN1, &k_p256.spki, MSG, &sig);
    let sig = run(
        &store,
        2,
        OpClass::Ecdsa(Hash::Sha384),
        &dig(&digest::SHA384, MSG),
    )
    .unwrap();
    verify(&signature::ECDSA_P384_SHA384_ASN1, &k_p384.spki, MSG, &sig);
    // SHA-1 ECDSA on P-256: the 20-byte digest padded to 32 keeps its value.
    let d1 = dig(&digest::SHA1_FOR_LEGACY_USE_ONLY, MSG);
    let sig = run(&store, 1, OpClass::Ecdsa(Hash::Sha1), &d1).unwrap();
    openssl_verify_digest(e.dir.path(), &k_p256.spki, &d1, &sig);
    let before = get(&e.sim.stats().key_requests);
    for (op, len) in [
        (OpClass::RsaPkcs1(Hash::Md5Sha1), 36),
        (OpClass::RsaPkcs1(Hash::Sha1), 20),
        (OpClass::RsaDecrypt, 256),
    ] {
        assert_eq!(
            run(&store, 0, op, &vec![1; len]),
            Err(ErrorCode::CRYPTO),
            "{op:?}"
        );
    }
    assert_eq!(get(&e.sim.stats().key_requests), before);
}

#[test]
fn aws_wrong_secret_is_refused_by_sigv4_verification() {
    let mut e = env();
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    e.opts.aws_credential = Some(AwsCredential::Static {
        access_key: AK.into(),
        secret_key: "not-the-secret".into(),
        session_token: None,
    });
    let err = KmsStore::open(std::slice::from_ref(&arn), &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&arn) && err.contains("InvalidSignatureException"),
        "{err}"
    );
    e.opts.aws_credential = Some(AwsCredential::Static {
        access_key: "AKIDUNKNOWN".into(),
        secret_key: SK.into(),
        session_token: None,
    });
    let err = KmsStore::open(&[arn], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("UnrecognizedClientException"), "{err}");
}

#[test]
fn throttling_is_retried_honouring_retry_after() {
    let e = env();
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "rsa", KeyType::Rsa2048)
        .unwrap();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/ec/cryptoKeyVersions/1";
    let gk = e
        .sim
        .gcp_key(name, "EC_SIGN_P256_SHA256", KeyType::EcP256)
        .unwrap();
    let (arn, ak) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (store, _) = KmsStore::open(&[u, name.to_string(), arn], &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    // Azure: two 429s with Retry-After: 1, then success; the wait is honoured.
    e.sim.knobs(|k| {
        k.throttle_next = 2;
        k.retry_after_s = 1;
    });
    let t0 = Instant::now();
    let sig = run(&store, 0, OpClass::RsaPss(Hash::Sha256), &d).unwrap();
    let took = t0.elapsed();
    verify(&signature::RSA_PSS_2048_8192_SHA256, &k.spki, MSG, &sig);
    assert!(
        took >= Duration::from_millis(1900),
        "Retry-After not honoured: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get(&e.sim.stats().throttled), 2);
    // Google: one 429 (Retry-After: 0), then success.
    e.sim.knobs(|k| {
        k.throttle_next = 1;
        k.retry_after_s = 0;
    });
    let sig = run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    verify(&signature::ECDSA_P256_SHA256_ASN1, &gk.spki, MSG, &sig);
    // AWS: ThrottlingException (HTTP 400, no Retry-After) twice, backoff, success.
    e.sim.knobs(|k| k.throttle_next = 2);
    let sig = run(&store, 2, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    verify(&signature::ECDSA_P256_SHA256_ASN1, &ak.spki, MSG, &sig);
    // 5xx are retried too.
    e.sim.knobs(|k| k.fail_next = 1);
    run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    assert_eq!(get(&e.sim.stats().throttled), 5);
    let mut m = String::new();
    store.render_metrics(&mut PromWriter::new(&mut m));
    for s in ["azure\"} 2", "gcp\"} 1", "aws\"} 2"] {
        assert!(
            m.contains(&format!("keycore_kms_throttled_total{{service=\"{s}")),
            "{s}: {m}"
        );
    }
}

#[test]
fn sustained_throttling_gives_crypto_after_bounded_retries() {
    let e = env();
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (u, _) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let (store, _) = KmsStore::open(&[arn, u], &e.opts, StoreId(0)).unwrap();
    e.sim.knobs(|k| {
        k.throttle_always = true;
        k.retry_after_s = 0;
    });
    for key in [0, 1] {
        let before = get(&e.sim.stats().key_requests);
        let t0 = Instant::now();
        assert_eq!(
            run(&store, key, OpClass::Ecdsa(Hash::Sha256), &[7; 32]),
            Err(ErrorCode::CRYPTO)
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        // First try + retries = max_attempts requests, no more.
        assert_eq!(
            get(&e.sim.stats().key_requests) - before,
            u64::from(e.opts.aws_limits.max_attempts)
        );
    }
    // A Retry-After longer than the deadline fails at once instead of waiting.
    e.sim.knobs(|k| k.retry_after_s = 30);
    let t0 = Instant::now();
    assert_eq!(
        run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &[7; 32]),
        Err(ErrorCode::CRYPTO)
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn tokens_are_refreshed_before_expiry_and_after_a_401() {
    let e = env();
    e.sim.knobs(|k| k.token_lifetime_s = 2);
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/ec/cryptoKeyVersions/1";
    let gk = e
        .sim
        .gcp_key(name, "EC_SIGN_P256_SHA256", KeyType::EcP256)
        .unwrap();
    let (store, _) = KmsStore::open(&[u, name.to_string()], &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    let stats = e.sim.stats();
    assert_eq!((get(&stats.azure_tokens), get(&stats.gcp_tokens)), (1, 1));
    // Past the refresh point (half of a 2 s life) but before expiry: a new
    // token is fetched proactively; the service never sees an expired one.
    std::thread::sleep(Duration::from_millis(1200));
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &k.spki,
        MSG,
        &run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &gk.spki,
        MSG,
        &run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    assert_eq!((get(&stats.azure_tokens), get(&stats.gcp_tokens)), (2, 2));
    assert_eq!(get(&stats.unauthorized), 0);
    // The service revokes every token: 401, the client drops its token,
    // fetches a new one and the operation still succeeds.
    e.sim.knobs(|k| k.token_lifetime_s = 3600);
    e.sim.state.expire_all_tokens();
    run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    assert_eq!(get(&stats.unauthorized), 2);
    assert_eq!((get(&stats.azure_tokens), get(&stats.gcp_tokens)), (3, 3));
}

#[test]
fn crc32c_mismatch_is_detected() {
    let e = env();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/pss/cryptoKeyVersions/1";
    let gk = e
        .sim
        .gcp_key(name, "RSA_SIGN_PSS_2048_SHA256", KeyType::Rsa2048)
        .unwrap();
    let (store, _) = KmsStore::open(&[name.to_string()], &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    // One corrupted answer: detected, retried, the good one is returned.
    e.sim.knobs(|k| k.corrupt_crc_next = 1);
    let before = get(&e.sim.stats().operations);
    let sig = run(&store, 0, OpClass::RsaPss(Hash::Sha256), &d).unwrap();
    verify(&signature::RSA_PSS_2048_8192_SHA256, &gk.spki, MSG, &sig);
    assert_eq!(get(&e.sim.stats().operations) - before, 2);
    // Always corrupted: never passed on; CRYPTO after bounded retries (1 + 4
    // checksum retries counted).
    e.sim.knobs(|k| k.corrupt_crc_always = true);
    assert_eq!(
        run(&store, 0, OpClass::RsaPss(Hash::Sha256), &d),
        Err(ErrorCode::CRYPTO)
    );
    let mut m = String::new();
    store.render_metrics(&mut PromWriter::new(&mut m));
    assert!(
        m.contains("keycore_kms_retried_errors_total{service=\"gcp\"} 5"),
        "{m}"
    );
}

#[test]
fn every_request_is_answered_when_the_service_stalls() {
    let mut e = env();
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    e.opts.op_timeout = Duration::from_millis(600);
    e.opts.attempt_timeout = Duration::from_millis(250);
    let (store, _) = KmsStore::open(&[arn], &e.opts, StoreId(0)).unwrap();
    e.sim.knobs(|k| k.delay = Duration::from_secs(3));
    let t0 = Instant::now();
    let futs: Vec<_> = (0..20)
        .map(|_| store.submit(KeyRef(0), OpClass::Ecdsa(Hash::Sha256), &[7; 32]))
        .collect();
    for f in futs {
        assert_eq!(futures_lite::future::block_on(f), Err(ErrorCode::CRYPTO));
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Requests in flight when the store goes away are answered too.
    let f = store.submit(KeyRef(0), OpClass::Ecdsa(Hash::Sha256), &[7; 32]);
    drop(store);
    assert_eq!(futures_lite::future::block_on(f), Err(ErrorCode::CRYPTO));
}

#[test]
fn other_credentials_client_certificate_managed_identity_metadata_imds_profile() {
    let mut e = env();
    // Azure client certificate: PS256 assertion with x5t#S256 (the current
    // Entra format), verified by the stand-in, which refuses RS256.
    let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["keycore-app".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    e.sim
        .azure_client_certificate(TENANT, "cert-app", cert.der())
        .unwrap();
    let pem = e.dir.path().join("app.pem");
    std::fs::write(&pem, format!("{}{}", cert.pem(), kp.serialize_pem())).unwrap();
    e.opts.azure_credential = Some(AzureCredential::ClientCertificate {
        tenant: TENANT.into(),
        client_id: "cert-app".into(),
        pem,
    });
    // Google metadata server; AWS instance metadata (IMDSv2), short-lived.
    e.opts.gcp_credential = Some(GcpCredential::Metadata);
    e.opts.aws_credential = Some(AwsCredential::InstanceMetadata);
    e.sim.knobs(|k| k.token_lifetime_s = 2);
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/ec/cryptoKeyVersions/1";
    let gk = e
        .sim
        .gcp_key(name, "EC_SIGN_P256_SHA256", KeyType::EcP256)
        .unwrap();
    let (arn, ak) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let uris = [u.clone(), name.to_string(), arn.clone()];
    let (store, _) = KmsStore::open(&uris, &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    for (i, spki) in [&k.spki, &gk.spki, &ak.spki].into_iter().enumerate() {
        verify(
            &signature::ECDSA_P256_SHA256_ASN1,
            spki,
            MSG,
            &run(&store, i, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
        );
    }
    let st = e.sim.stats();
    assert_eq!(get(&st.azure_tokens), 1);
    assert_eq!(get(&st.gcp_metadata_tokens), 1);
    assert_eq!(get(&st.aws_imds_credentials), 1);
    // Temporary AWS credentials are renewed before they expire.
    std::thread::sleep(Duration::from_millis(1200));
    run(&store, 2, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    assert_eq!(get(&st.aws_imds_credentials), 2);
    drop(store);

    // Azure managed identity (IMDS) and an AWS profile file.
    e.opts.azure_credential = Some(AzureCredential::ManagedIdentity { client_id: None });
    let creds = e.dir.path().join("credentials");
    std::fs::write(&creds, format!("[default]\naws_access_key_id = x\naws_secret_access_key = y\n\n[edge]\naws_access_key_id = {AK}\naws_secret_access_key = {SK}\n")).unwrap();
    e.opts.aws_credential = Some(AwsCredential::Profile {
        file: creds,
        name: "edge".into(),
    });
    let (store, _) = KmsStore::open(&[u, arn], &e.opts, StoreId(0)).unwrap();
    run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    assert_eq!(get(&st.azure_imds_tokens), 1);
}

#[test]
fn glommio_reactor_awaits_kms_operations_without_blocking() {
    let e = env();
    let (arn, ak) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (store, _) = KmsStore::open(&[arn], &e.opts, StoreId(0)).unwrap();
    let store = std::sync::Arc::new(store);
    let s2 = store.clone();
    let d = dig(&digest::SHA256, MSG);
    let (sigs, ticks) = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            // A ticker task keeps running while the KMS calls are pending:
            // the reactor is never blocked by them.
            let ticks = std::rc::Rc::new(std::cell::Cell::new(0u32));
            let t2 = ticks.clone();
            let ticker = glommio::spawn_local(async move {
                for _ in 0..20 {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    t2.set(t2.get() + 1);
                }
            })
            .detach();
            let futs: Vec<_> = (0..8)
                .map(|_| s2.submit(KeyRef(0), OpClass::Ecdsa(Hash::Sha256), &d))
                .collect();
            let mut sigs = Vec::new();
            for f in futs {
                sigs.push(f.await);
            }
            ticker.await;
            (sigs, ticks.get())
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(ticks, 20);
    for s in sigs {
        verify(
            &signature::ECDSA_P256_SHA256_ASN1,
            &ak.spki,
            MSG,
            &s.unwrap(),
        );
    }
}

#[test]
fn connections_are_pooled_and_in_flight_is_capped() {
    let mut e = env();
    e.opts.aws_limits.max_in_flight = 3;
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (store, _) = KmsStore::open(&[arn], &e.opts, StoreId(0)).unwrap();
    // Sequential operations reuse one kept-alive TLS connection.
    let conns = get(&e.sim.stats().connections);
    for _ in 0..30 {
        run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &[9; 32]).unwrap();
    }
    assert_eq!(
        get(&e.sim.stats().connections),
        conns,
        "a new connection per request"
    );
    // 12 at once against a slow service: never more than 3 in flight.
    e.sim.knobs(|k| k.delay = Duration::from_millis(100));
    let t0 = Instant::now();
    let futs: Vec<_> = (0..12)
        .map(|_| store.submit(KeyRef(0), OpClass::Ecdsa(Hash::Sha256), &[9; 32]))
        .collect();
    for f in futs {
        futures_lite::future::block_on(f).unwrap();
    }
    assert_eq!(get(&e.sim.stats().max_in_flight), 3);
    // 12 / 3 = 4 rounds of 100 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(380),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn startup_errors_name_the_key() {
    let e = env();
    // A key the vault does not have.
    let uri = "https://kv-test.vault.azure.net/keys/missing/0123456789abcdef";
    let err = KmsStore::open(&[uri.to_string()], &e.opts, StoreId(0)).unwrap_err();
    // The whole chain, as the binary prints it (`{:#}`): the variant names
    // the service, its source the file or the answer.
    let err = keycore_keys::error_chain(&err);
    assert!(err.contains(uri) && err.contains("KeyNotFound"), "{err}");
    // A refused client secret.
    let mut o = e.opts.clone();
    o.azure_credential = Some(AzureCredential::ClientSecret {
        tenant: TENANT.into(),
        client_id: CLIENT.into(),
        secret: "wrong".into(),
    });
    let (u, _) = e
        .sim
        .azure_key("kv-test", false, "k", KeyType::EcP256)
        .unwrap();
    let err = KmsStore::open(std::slice::from_ref(&u), &o, StoreId(0)).unwrap_err();
    let err = keycore_keys::error_chain(&err);
    assert!(err.contains(&u) && err.contains("invalid_client"), "{err}");
    // An unreadable service-account file.
    o.gcp_credential = Some(GcpCredential::ServiceAccountFile(
        e.dir.path().join("nope.json"),
    ));
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1";
    let err = KmsStore::open(&[name.to_string()], &o, StoreId(0)).unwrap_err();
    let err = keycore_keys::error_chain(&err);
    assert!(
        err.contains("Google Cloud credentials") && err.contains("nope.json"),
        "{err}"
    );
}

#[test]
fn failed_keys_can_be_skipped() {
    let mut e = env();
    let missing = "https://kv-test.vault.azure.net/keys/missing/0123456789abcdef".to_string();
    let (good, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    e.opts.skip_failed_keys = true;
    let (store, entries) = KmsStore::open(&[missing, good.clone()], &e.opts, StoreId(0)).unwrap();
    assert_eq!(entries.len(), 1);
    // KeyRef 0 is the first key served, whatever its place in the list.
    check_entry(&entries[0], &k, 0, &good);
    let d = dig(&digest::SHA256, MSG);
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &k.spki,
        MSG,
        &run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
}

#[test]
fn a_wrong_signature_from_the_service_is_never_passed_on() {
    let e = env();
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "rsa", KeyType::Rsa2048)
        .unwrap();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/ec/cryptoKeyVersions/1";
    e.sim
        .gcp_key(name, "EC_SIGN_P384_SHA384", KeyType::EcP384)
        .unwrap();
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::Rsa2048).unwrap();
    let (store, _) = KmsStore::open(&[u, name.to_string(), arn], &e.opts, StoreId(0)).unwrap();
    let cases = [
        (0, OpClass::RsaPss(Hash::Sha256), dig(&digest::SHA256, MSG)),
        (
            0,
            OpClass::RsaPkcs1(Hash::Sha1),
            dig(&digest::SHA1_FOR_LEGACY_USE_ONLY, MSG),
        ),
        (1, OpClass::Ecdsa(Hash::Sha256), dig(&digest::SHA256, MSG)),
        (
            2,
            OpClass::RsaPkcs1(Hash::Sha512),
            dig(&digest::SHA512, MSG),
        ),
    ];
    for (key, op, d) in &cases {
        e.sim.knobs(|k| k.wrong_signature_next = 1);
        assert_eq!(
            run(&store, *key, *op, d),
            Err(ErrorCode::CRYPTO),
            "key {key} {op:?}"
        );
        // The next one is right again and passes.
        run(&store, *key, *op, d).unwrap();
    }
    let mut m = String::new();
    store.render_metrics(&mut PromWriter::new(&mut m));
    for s in ["azure\"} 2", "gcp\"} 1", "aws\"} 1"] {
        assert!(
            m.contains(&format!("keycore_kms_bad_signatures_total{{service=\"{s}")),
            "{s}: {m}"
        );
    }
    // With checking off, the wrong signature would go out (shows the check is what stops it).
    let mut o = e.opts.clone();
    o.verify_signatures = false;
    let (u2, _) = e
        .sim
        .azure_key("kv-test", false, "rsa2", KeyType::Rsa2048)
        .unwrap();
    let (store2, _) = KmsStore::open(&[u2], &o, StoreId(0)).unwrap();
    e.sim.knobs(|k| k.wrong_signature_next = 1);
    let sig = run(
        &store2,
        0,
        OpClass::RsaPss(Hash::Sha256),
        &dig(&digest::SHA256, MSG),
    )
    .unwrap();
    assert!(
        UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, spk(&k.spki))
            .verify(MSG, &sig)
            .is_err()
    );
}

#[test]
fn https_proxy_tunnels_service_calls_and_no_proxy_bypasses_it() {
    let mut e = env();
    let proxy = keycore_kmssim::proxy::ConnectProxy::start(Some("edge:p@ss")).unwrap();
    let (arn, ak) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    e.opts.https_proxy = Some(proxy.url.clone());
    let (store, _) = KmsStore::open(&[arn.clone(), u.clone()], &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &ak.spki,
        MSG,
        &run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &k.spki,
        MSG,
        &run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    assert!(proxy.tunnels() >= 1, "nothing went through the proxy");
    drop(store);
    // NO_PROXY: the stand-ins' host is reached directly.
    let before = proxy.tunnels();
    e.opts.no_proxy = vec!["127.0.0.1".into()];
    let (store, _) = KmsStore::open(std::slice::from_ref(&arn), &e.opts, StoreId(0)).unwrap();
    run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    assert_eq!(proxy.tunnels(), before);
    drop(store);
    // Wrong proxy credentials: the proxy refuses and start-up says so.
    e.opts.no_proxy.clear();
    e.opts.https_proxy = Some(proxy.url.replace("p@ss", "nope"));
    e.opts.startup_timeout = Duration::from_secs(3);
    let err = KmsStore::open(&[arn], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("407") || err.to_lowercase().contains("proxy"),
        "{err}"
    );
}

#[test]
fn a_full_queue_answers_at_once() {
    let mut e = env();
    e.opts.queue_depth = 4;
    e.opts.op_timeout = Duration::from_secs(2);
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (store, _) = KmsStore::open(&[arn], &e.opts, StoreId(0)).unwrap();
    e.sim.knobs(|k| k.delay = Duration::from_millis(300));
    // 4 in progress + 4 queued; the rest are refused without waiting.
    let t0 = Instant::now();
    let futs: Vec<_> = (0..20)
        .map(|_| store.submit(KeyRef(0), OpClass::Ecdsa(Hash::Sha256), &[7; 32]))
        .collect();
    let results: Vec<_> = futs
        .into_iter()
        .map(futures_lite::future::block_on)
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!((4..=8).contains(&ok), "{ok} succeeded: {results:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let mut m = String::new();
    store.render_metrics(&mut PromWriter::new(&mut m));
    let full: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("keycore_kms_queue_full_total "))
        .unwrap()
        .parse()
        .unwrap();
    // Every request answered: the accepted ones signed, the others refused
    // by the full queue (none timed out).
    assert_eq!(ok + full as usize, 20, "{results:?}");
}

#[test]
fn container_credentials_and_app_service_identity() {
    let mut e = env();
    // AWS ECS task role / EKS Pod Identity, token read from a file.
    e.sim.aws_container_token("pod-identity-token");
    let token_file = e.dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, "pod-identity-token\n").unwrap();
    e.opts.aws_credential = Some(AwsCredential::Container {
        url: format!("{}/v2/credentials/0d1c2b3a", e.sim.http_url),
        auth: Some(keycore_kms::ContainerAuth::File(token_file.clone())),
    });
    // Azure App Service / Functions identity.
    e.sim.azure_app_service_identity("identity-header-secret");
    e.opts.azure_credential = Some(AzureCredential::AppServiceIdentity {
        endpoint: format!("{}/msi/token", e.sim.http_url),
        header: "identity-header-secret".into(),
        client_id: None,
    });
    let (arn, ak) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let (store, _) = KmsStore::open(&[arn, u], &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &ak.spki,
        MSG,
        &run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &k.spki,
        MSG,
        &run(&store, 1, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    assert_eq!(get(&e.sim.stats().aws_container_credentials), 1);
    assert_eq!(get(&e.sim.stats().azure_imds_tokens), 1);
    drop(store);
    // A wrong container token: start-up names the endpoint's refusal.
    e.sim.aws_container_token("rotated");
    let (arn2, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let err = KmsStore::open(&[arn2], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("container credentials") && err.contains("401"),
        "{err}"
    );
    // Issue 20 item 12: over plain http the SDKs fetch container credentials
    // only from loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23.
    // 0.0.0.0 is none of them, yet on Linux it reaches this machine, so
    // without the check the stand-in would hand out credentials.
    e.sim.aws_container_token("pod-identity-token");
    let port = e.sim.http_url.rsplit(':').next().unwrap().to_owned();
    e.opts.aws_credential = Some(AwsCredential::Container {
        url: format!("http://0.0.0.0:{port}/v2/credentials/0d1c2b3a"),
        auth: Some(keycore_kms::ContainerAuth::File(token_file)),
    });
    let (arn3, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let before = get(&e.sim.stats().aws_container_credentials);
    let err = KmsStore::open(&[arn3], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused") && err.contains("169.254.170.2"),
        "{err}"
    );
    assert_eq!(
        get(&e.sim.stats().aws_container_credentials),
        before,
        "credentials fetched from a host the SDKs refuse"
    );
}

#[test]
fn web_identity_credentials_through_sts() {
    let mut e = env();
    let role = "arn:aws:iam::111122223333:role/keycore-edge";
    e.sim.aws_web_identity(role, "eyJ.oidc.token");
    e.sim.knobs(|k| k.token_lifetime_s = 2);
    let token_file = e.dir.path().join("web-identity-token");
    std::fs::write(&token_file, "eyJ.oidc.token\n").unwrap();
    e.opts.aws_credential = Some(AwsCredential::WebIdentity {
        token_file,
        role_arn: role.into(),
        session_name: "keycore".into(),
        sts_endpoint: e.sim.https_url.clone(),
    });
    let (arn, ak) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let (store, _) = KmsStore::open(std::slice::from_ref(&arn), &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &ak.spki,
        MSG,
        &run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    // Renewed before the 2 s session ends.
    std::thread::sleep(Duration::from_millis(1200));
    run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    assert_eq!(get(&e.sim.stats().aws_sts_credentials), 2);
    drop(store);
    // A role STS does not grant: start-up names STS's answer.
    e.opts.aws_credential = Some(AwsCredential::WebIdentity {
        token_file: e.dir.path().join("web-identity-token"),
        role_arn: "arn:aws:iam::111122223333:role/other".into(),
        session_name: "keycore".into(),
        sts_endpoint: e.sim.https_url.clone(),
    });
    let err = KmsStore::open(&[arn], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AssumeRoleWithWebIdentity") && err.contains("AccessDenied"),
        "{err}"
    );
}

#[test]
fn azure_workload_identity_federation() {
    let mut e = env();
    e.sim
        .azure_federated_credential(TENANT, "aks-app", "eyJ.federated.token");
    let token_file = e.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "eyJ.federated.token\n").unwrap();
    e.opts.azure_credential = Some(AzureCredential::WorkloadIdentity {
        tenant: TENANT.into(),
        client_id: "aks-app".into(),
        token_file: token_file.clone(),
    });
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let (store, _) = KmsStore::open(std::slice::from_ref(&u), &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &k.spki,
        MSG,
        &run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap(),
    );
    drop(store);
    // A token the app does not trust is refused at start-up.
    std::fs::write(&token_file, "eyJ.other").unwrap();
    let err = KmsStore::open(&[u], &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid_client"), "{err}");
}

// ---- Vendor behaviours (issue 20): each test below fails against the
// client as it was before the fix it names. ----

/// AWS KMS Ed25519 (`ECC_NIST_EDWARDS25519`): `ED25519_SHA_512` over the
/// whole message with `MessageType` RAW (the stand-in refuses DIGEST for it).
/// Before: keycore loaded the key and refused every operation.
#[test]
fn aws_ed25519_key_signs_the_raw_message() {
    let e = env();
    let (arn, key) = e.sim.aws_key("eu-west-1", KeyType::Ed25519).unwrap();
    let (store, entries) = KmsStore::open(std::slice::from_ref(&arn), &e.opts, StoreId(0)).unwrap();
    assert_eq!(entries[0].kind, KeyKind::Ed25519);
    // What TLS 1.3 has an Ed25519 key sign: the whole CertificateVerify
    // content (64 spaces, context string, 0, transcript hash).
    let mut msg = vec![0x20u8; 64];
    msg.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    msg.extend_from_slice(&dig(&digest::SHA256, MSG));
    let sig = run(&store, 0, OpClass::Ed25519, &msg).unwrap();
    verify(&signature::ED25519, &key.spki, &msg, &sig);
    // Over AWS's 4096-byte message limit: refused before any request.
    let before = get(&e.sim.stats().key_requests);
    assert_eq!(
        run(&store, 0, OpClass::Ed25519, &[7u8; 4097]),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(get(&e.sim.stats().key_requests), before);
}

/// `LimitExceededException` is a quota: answered at once, not retried as if
/// it were throttling. Disabled and pending-deletion keys fail start-up
/// naming the state; a key disabled later fails its operation with one
/// request. Before: LimitExceeded was retried 4 times as throttling.
#[test]
fn aws_quota_and_key_state_errors_are_final_and_named() {
    let e = env();
    let (arn, _) = e.sim.aws_key("us-east-1", KeyType::EcP256).unwrap();
    let one = std::slice::from_ref(&arn);
    e.sim
        .set_key_state(&arn, keycore_kmssim::KeyState::Disabled);
    let err = KmsStore::open(one, &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DisabledException") && err.contains("enable-key"),
        "{err}"
    );
    e.sim
        .set_key_state(&arn, keycore_kmssim::KeyState::PendingDeletion);
    let err = KmsStore::open(one, &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KMSInvalidStateException") && err.contains("pending deletion"),
        "{err}"
    );
    e.sim.set_key_state(&arn, keycore_kmssim::KeyState::Enabled);
    let (store, _) = KmsStore::open(one, &e.opts, StoreId(0)).unwrap();
    let d = dig(&digest::SHA256, MSG);
    e.sim.knobs(|k| k.aws_limit_exceeded_next = 1);
    let before = get(&e.sim.stats().key_requests);
    assert_eq!(
        run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(get(&e.sim.stats().key_requests) - before, 1, "not retried");
    run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
    e.sim
        .set_key_state(&arn, keycore_kmssim::KeyState::Disabled);
    let before = get(&e.sim.stats().key_requests);
    assert_eq!(
        run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(get(&e.sim.stats().key_requests) - before, 1);
}

/// IRSA in the China partition: STS is `sts.<region>.amazonaws.com.cn`.
/// The client is configured as a pod would be (AWS_REGION, role and token
/// file from the environment) and reaches the stand-in through the CONNECT
/// proxy's name map, so the host name it asks for is visible; the STS
/// stand-in takes `arn:aws-cn:` roles only at a `.amazonaws.com.cn` host.
/// Before: keycore asked `sts.cn-north-1.amazonaws.com`, which refused the
/// role. Without AWS_REGION the key's region decides (never the global
/// endpoint, which serves only the aws partition).
#[test]
fn china_partition_web_identity_uses_the_com_cn_sts_host() {
    let mut e = env();
    let role = "arn:aws-cn:iam::111122223333:role/keycore-edge";
    e.sim.aws_web_identity(role, "eyJ.cn.token");
    let token_file = e.dir.path().join("token");
    std::fs::write(&token_file, "eyJ.cn.token\n").unwrap();
    let at = e.sim.https_addr();
    let names: Vec<(&str, std::net::SocketAddr)> = keycore_kmssim::STAND_IN_HOST_NAMES
        .iter()
        .map(|n| (*n, at))
        .collect();
    let proxy = keycore_kmssim::proxy::ConnectProxy::start_with_names(None, &names).unwrap();
    let (arn, key) = e.sim.aws_key("cn-north-1", KeyType::EcP256).unwrap();
    assert!(arn.starts_with("arn:aws-cn:kms:cn-north-1:"), "{arn}");
    let tf = token_file.to_string_lossy().into_owned();
    for region in [Some("cn-north-1"), None] {
        let mut env_vars = vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE", tf.clone()),
            ("AWS_ROLE_ARN", role.to_string()),
        ];
        if let Some(r) = region {
            env_vars.push(("AWS_REGION", r.to_string()));
        }
        let from_env = KmsOptions::from_lookup(|k| {
            env_vars
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        e.opts.aws_credential = from_env.aws_credential;
        // KMS itself is the stand-in's loopback address, reached directly.
        e.opts.https_proxy = Some(proxy.url.clone());
        e.opts.no_proxy = vec!["127.0.0.1".into()];
        let before = proxy.targets().len();
        let (store, _) = KmsStore::open(std::slice::from_ref(&arn), &e.opts, StoreId(0))
            .unwrap_or_else(|err| panic!("region {region:?}: {err}"));
        verify(
            &signature::ECDSA_P256_SHA256_ASN1,
            &key.spki,
            MSG,
            &run(
                &store,
                0,
                OpClass::Ecdsa(Hash::Sha256),
                &dig(&digest::SHA256, MSG),
            )
            .unwrap(),
        );
        assert_eq!(
            proxy.targets()[before..],
            ["sts.cn-north-1.amazonaws.com.cn:443".to_string()],
            "region {region:?}"
        );
    }
    assert_eq!(get(&e.sim.stats().aws_sts_credentials), 2);
}

/// Azure IMDS answers 404 and 410 while it updates and 429 when busy;
/// Microsoft says to retry them. Before: 404/410 failed start-up at once.
#[test]
fn azure_imds_transient_answers_are_retried() {
    let mut e = env();
    e.opts.azure_credential = Some(AzureCredential::ManagedIdentity { client_id: None });
    e.sim.knobs(|k| k.azure_imds_statuses = vec![404, 410, 429]);
    let (u, k) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let (store, _) = KmsStore::open(std::slice::from_ref(&u), &e.opts, StoreId(0)).unwrap();
    assert_eq!(get(&e.sim.stats().azure_imds_tokens), 1);
    verify(
        &signature::ECDSA_P256_SHA256_ASN1,
        &k.spki,
        MSG,
        &run(
            &store,
            0,
            OpClass::Ecdsa(Hash::Sha256),
            &dig(&digest::SHA256, MSG),
        )
        .unwrap(),
    );
    drop(store);
    // A 400 (no such identity) is final, and IMDS that stays in 410 past
    // the deadline fails naming it.
    e.opts.startup_timeout = Duration::from_secs(2);
    e.sim.knobs(|k| k.azure_imds_statuses = vec![410; 50]);
    let err = KmsStore::open(std::slice::from_ref(&u), &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("410") && err.contains("IMDS"), "{err}");
}

/// Key Vault throttles per vault: each vault gets the configured rate, so a
/// busy vault does not starve another; Managed HSM pools are not rate
/// limited by keycore. Before: one bucket for every Azure key.
#[test]
fn azure_rate_limit_is_per_vault() {
    let mut e = env();
    // One request per 4 s per vault, burst 1; a 1.5 s operation deadline
    // (the third call below fails unless 2.5 s pass between two calls).
    e.opts.azure_limits.max_per_second = 0.25;
    e.opts.op_timeout = Duration::from_millis(1500);
    let (ua, ka) = e
        .sim
        .azure_key("kv-one", false, "ec", KeyType::EcP256)
        .unwrap();
    let (ub, kb) = e
        .sim
        .azure_key("kv-two", false, "ec", KeyType::EcP256)
        .unwrap();
    let (uh, kh) = e
        .sim
        .azure_key("hsm-one", true, "ec", KeyType::EcP256)
        .unwrap();
    let (store, _) = KmsStore::open(&[ua, ub, uh], &e.opts, StoreId(0)).unwrap();
    // Start-up spent each vault's token; one refill each.
    std::thread::sleep(Duration::from_millis(4200));
    let d = dig(&digest::SHA256, MSG);
    for (i, k) in [(0, &ka), (1, &kb)] {
        let sig = run(&store, i, OpClass::Ecdsa(Hash::Sha256), &d)
            .unwrap_or_else(|c| panic!("vault {i}: {c:?}"));
        verify(&signature::ECDSA_P256_SHA256_ASN1, &k.spki, MSG, &sig);
    }
    // The vault's own limit still holds: its next token is 4 s away.
    assert_eq!(
        run(&store, 0, OpClass::Ecdsa(Hash::Sha256), &d),
        Err(ErrorCode::CRYPTO)
    );
    // Managed HSM: no rate limit.
    for _ in 0..3 {
        let sig = run(&store, 2, OpClass::Ecdsa(Hash::Sha256), &d).unwrap();
        verify(&signature::ECDSA_P256_SHA256_ASN1, &kh.spki, MSG, &sig);
    }
}

/// Azure 403s explained: no data-plane role (ForbiddenByRbac), a disabled
/// key (KeyDisabled). Not retried.
#[test]
fn azure_missing_role_and_disabled_key_are_named() {
    let e = env();
    let (u, _) = e
        .sim
        .azure_key("kv-test", false, "ec", KeyType::EcP256)
        .unwrap();
    let one = std::slice::from_ref(&u);
    e.sim.knobs(|k| k.azure_missing_role = true);
    let err = KmsStore::open(one, &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ForbiddenByRbac") && err.contains("Key Vault Crypto User"),
        "{err}"
    );
    e.sim.knobs(|k| k.azure_missing_role = false);
    let (store, _) = KmsStore::open(one, &e.opts, StoreId(0)).unwrap();
    e.sim.set_key_state(&u, keycore_kmssim::KeyState::Disabled);
    let before = get(&e.sim.stats().key_requests);
    assert_eq!(
        run(
            &store,
            0,
            OpClass::Ecdsa(Hash::Sha256),
            &dig(&digest::SHA256, MSG)
        ),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(get(&e.sim.stats().key_requests) - before, 1);
}

/// Google: a metadata-server token without the cloud-platform / cloudkms
/// access scope, a missing IAM role and a disabled key version each stop
/// start-up with the cause and the fix. Before: a bare "HTTP 403".
#[test]
fn google_scope_role_and_disabled_version_are_named() {
    let mut e = env();
    let name = "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/ec/cryptoKeyVersions/1";
    e.sim
        .gcp_key(name, "EC_SIGN_P256_SHA256", KeyType::EcP256)
        .unwrap();
    let one = [name.to_string()];
    let sa = e.opts.gcp_credential.clone();
    e.opts.gcp_credential = Some(GcpCredential::Metadata);
    e.sim.knobs(|k| {
        k.gcp_metadata_scopes = vec![
            "https://www.googleapis.com/auth/devstorage.read_only".into(),
            "https://www.googleapis.com/auth/logging.write".into(),
        ]
    });
    let err = KmsStore::open(&one, &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("scope") && err.contains("--scopes=cloud-platform"),
        "{err}"
    );
    // The cloudkms scope alone is enough.
    e.sim
        .knobs(|k| k.gcp_metadata_scopes = vec!["https://www.googleapis.com/auth/cloudkms".into()]);
    drop(KmsStore::open(&one, &e.opts, StoreId(0)).unwrap());
    e.opts.gcp_credential = sa;
    e.sim.knobs(|k| k.gcp_missing_role = true);
    let err = KmsStore::open(&one, &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("roles/cloudkms.signerVerifier"),
        "{err}"
    );
    e.sim.knobs(|k| k.gcp_missing_role = false);
    e.sim
        .set_key_state(name, keycore_kmssim::KeyState::Disabled);
    let err = KmsStore::open(&one, &e.opts, StoreId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("not enabled"),
        "{err}"
    );
}
