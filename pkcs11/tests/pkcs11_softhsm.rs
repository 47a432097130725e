//! The PKCS#11 backend against a real SoftHSM2 token that this test creates.
//!
//! One SoftHSM configuration (own `SOFTHSM2_CONF` and token directory in a
//! temp dir) for the whole binary: SoftHSM reads the variable at
//! `C_Initialize`, and the loaded module is shared by every test in the
//! process. Each test uses its own token (by label), and the tests are
//! serialised (`LOCK`) because recovery may re-initialise the shared module.
//! Keys are made with openssl and imported with pkcs11-tool, so a deleted key
//! can be re-created identical (same SKI).

mod common;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use common::offload_rate;
use keycore_keys::{Backend, KeyEntry, KeyKind, StoreId};
use keycore_pkcs11::{DispatchMode, KeyRef, Pkcs11Options, Pkcs11Store};
use keycore_protocol::{ErrorCode, Hash, OpClass};
use keycore_testsupport::run_ok as run;
use keycore_testsupport::softhsm::{openssl_key, KeyFiles, Token};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use keycore_testsupport::SOFTHSM_MODULE as MODULE;
const PIN: &str = "2222";

static LOCK: Mutex<()> = Mutex::new(());

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tokens: PathBuf,
}

fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let conf = keycore_testsupport::softhsm_conf(&root);
        // Set before the first C_Initialize in this process (tests are
        // serialised by LOCK, so no other thread reads the environment now).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Env {
            _dir: dir,
            tokens: root.join("tokens"),
            root,
        }
    })
}

/// Create a token; returns its directory under the token dir.
fn init_token(label: &str) -> PathBuf {
    let e = env();
    let before: Vec<_> = std::fs::read_dir(&e.tokens)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .collect();
    Token::init(&e.root.join("softhsm2.conf"), label, PIN);
    std::fs::read_dir(&e.tokens)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| !before.contains(p))
        .expect("new token directory")
}

/// The token `label` in this binary's SoftHSM configuration (made or not).
fn token(label: &str) -> Token {
    Token {
        conf: env().root.join("softhsm2.conf"),
        label: label.into(),
        pin: PIN.into(),
    }
}

/// Make a key with openssl (`algo`: "rsa" or "ec").
fn make_key(name: &str, algo: &str) -> KeyFiles {
    openssl_key(&env().root, name, algo)
}

fn uri(token: &str, id: &str, extra: &str) -> String {
    format!("pkcs11:token={token};id=%{id}?module-path={MODULE}&pin-value={PIN}{extra}")
}

/// The subjectPublicKey BIT STRING contents of a DER SPKI.
fn spki_key(spki: &[u8]) -> &[u8] {
    fn tlv(b: &[u8]) -> (&[u8], &[u8]) {
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n].iter().fold(0usize, |a, &x| a << 8 | x as usize),
                2 + n,
            )
        };
        (&b[hdr..hdr + len], &b[hdr + len..])
    }
    let (seq, _) = tlv(spki);
    let (_, rest) = tlv(seq);
    let (bits, _) = tlv(rest);
    &bits[1..]
}

fn sha(h: Hash, msg: &[u8]) -> Vec<u8> {
    let alg = match h {
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha224 => &digest::SHA224,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
        Hash::Md5Sha1 => unreachable!(),
    };
    digest::digest(alg, msg).as_ref().to_vec()
}

/// Recover the PKCS#1 v1.5 payload of an RSA signature with the openssl CLI.
fn openssl_recover(spki: &[u8], sig: &[u8]) -> Vec<u8> {
    let e = env();
    let key = e.root.join("recover.pub.der");
    let s = e.root.join("recover.sig");
    std::fs::write(&key, spki).unwrap();
    std::fs::write(&s, sig).unwrap();
    let out = Command::new("openssl")
        .args([
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-keyform",
            "DER",
            "-inkey",
        ])
        .arg(&key)
        .arg("-in")
        .arg(&s)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn key_ref(e: &KeyEntry) -> KeyRef {
    match e.backend {
        Backend::Store(k) => KeyRef(k.key),
        _ => panic!("not a PKCS#11 key"),
    }
}

/// Check one RSA key: every PKCS#1 and PSS hash, decrypt, and the
/// refusals; each signature verified against the public key read from the
/// token.
type Perform<'a> = dyn FnMut(OpClass, &[u8]) -> Result<Vec<u8>, ErrorCode> + 'a;
type Checker = for<'a, 'b> fn(&'b mut Perform<'a>, &KeyEntry);

fn check_rsa(perform: &mut Perform<'_>, e: &KeyEntry) {
    let msg = b"keycore pkcs11 test message";
    let pk = spki_key(&e.spki_der);
    assert_eq!(e.kind, KeyKind::Rsa { bits: 2048 });
    for (h, alg) in [
        (
            Hash::Sha1,
            &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ),
        (Hash::Sha256, &signature::RSA_PKCS1_2048_8192_SHA256),
        (Hash::Sha384, &signature::RSA_PKCS1_2048_8192_SHA384),
        (Hash::Sha512, &signature::RSA_PKCS1_2048_8192_SHA512),
    ] {
        let sig = perform(OpClass::RsaPkcs1(h), &sha(h, msg)).unwrap();
        UnparsedPublicKey::new(alg, pk)
            .verify(msg, &sig)
            .unwrap_or_else(|_| panic!("PKCS#1 {h:?}"));
    }
    // SHA-224 and MD5+SHA1: no aws-lc verifier; recover the payload instead.
    let d = sha(Hash::Sha224, msg);
    let sig = perform(OpClass::RsaPkcs1(Hash::Sha224), &d).unwrap();
    let mut want = Hash::Sha224.digest_info_prefix().to_vec();
    want.extend_from_slice(&d);
    assert_eq!(openssl_recover(&e.spki_der, &sig), want);
    let md5sha1 = [0x5au8; 36];
    let sig = perform(OpClass::RsaPkcs1(Hash::Md5Sha1), &md5sha1).unwrap();
    assert_eq!(openssl_recover(&e.spki_der, &sig), md5sha1);
    for (h, alg) in [
        (Hash::Sha256, &signature::RSA_PSS_2048_8192_SHA256),
        (Hash::Sha384, &signature::RSA_PSS_2048_8192_SHA384),
        (Hash::Sha512, &signature::RSA_PSS_2048_8192_SHA512),
    ] {
        let sig = perform(OpClass::RsaPss(h), &sha(h, msg)).unwrap();
        UnparsedPublicKey::new(alg, pk)
            .verify(msg, &sig)
            .unwrap_or_else(|_| panic!("PSS {h:?}"));
    }
    // Decrypt: openssl encrypts with PKCS#1 v1.5; keycore returns the raw
    // block (00 02 PS 00 M), like a software key.
    let root = &env().root;
    std::fs::write(root.join("enc.pub.der"), &e.spki_der).unwrap();
    std::fs::write(root.join("plain"), b"premaster secret").unwrap();
    run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
        .arg(root.join("enc.pub.der"))
        .arg("-in")
        .arg(root.join("plain"))
        .arg("-out")
        .arg(root.join("cipher")));
    let c = std::fs::read(root.join("cipher")).unwrap();
    let m = perform(OpClass::RsaDecrypt, &c).unwrap();
    assert_eq!(m.len(), 256);
    assert_eq!(&m[..2], &[0, 2]);
    assert!(m.ends_with(b"\0premaster secret"));
    // Refusals. Wrong digest length and short ciphertext: the one rule,
    // `check_input`, which dispatch runs before any backend (the backend no
    // longer repeats it). Wrong kind: the backend refuses it too.
    for (op, input) in [
        (OpClass::RsaPkcs1(Hash::Sha256), &[0u8; 20][..]),
        (OpClass::RsaPss(Hash::Sha256), &[0u8; 48][..]),
        (OpClass::RsaDecrypt, &[1u8; 10][..]),
    ] {
        assert_eq!(
            keycore_keys::check_input(e.kind, op, input),
            Err(ErrorCode::CRYPTO),
            "{op:?}"
        );
    }
    assert_eq!(
        perform(OpClass::Ecdsa(Hash::Sha256), &[0u8; 32]),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(perform(OpClass::Ed25519, b"m"), Err(ErrorCode::CRYPTO));
}

fn check_ec(perform: &mut Perform<'_>, e: &KeyEntry) {
    let msg = b"keycore pkcs11 ec message";
    assert_eq!(e.kind, KeyKind::EcdsaP256);
    let pk = spki_key(&e.spki_der);
    let sig = perform(OpClass::Ecdsa(Hash::Sha256), &sha(Hash::Sha256, msg)).unwrap();
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, pk)
        .verify(msg, &sig)
        .unwrap();
    // The hash opcode only selects the hash: a SHA-1 digest is signed as given.
    let sig = perform(OpClass::Ecdsa(Hash::Sha1), &sha(Hash::Sha1, msg)).unwrap();
    assert_eq!(sig[0], 0x30);
    assert_eq!(
        perform(OpClass::RsaPkcs1(Hash::Sha256), &[0u8; 32]),
        Err(ErrorCode::CRYPTO)
    );
    assert_eq!(
        perform(OpClass::RsaDecrypt, &[0u8; 32]),
        Err(ErrorCode::CRYPTO)
    );
}

struct Fixture {
    token: String,
    dir: PathBuf,
    rsa: KeyFiles,
    ec: KeyFiles,
}

fn fixture(token: &str) -> Fixture {
    let dir = init_token(token);
    let rsa = make_key(&format!("{token}-rsa"), "rsa");
    let ec = make_key(&format!("{token}-ec"), "ec");
    let t = self::token(token);
    t.import(&rsa, "01", "rsa-key");
    t.import(&ec, "02", "ec-key");
    Fixture {
        token: token.into(),
        dir,
        rsa,
        ec,
    }
}

fn open(uris: &[String], dispatch: DispatchMode) -> (Pkcs11Store, Vec<KeyEntry>) {
    let opts = Pkcs11Options {
        dispatch: Some(dispatch),
        op_timeout: Duration::from_secs(2),
        ..Pkcs11Options::default()
    };
    Pkcs11Store::open(uris, &opts, StoreId(0)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_operation_inline_and_offload_verified() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture("ops");
    // An Ed25519 key made on the token (SoftHSM's CKA_EC_PARAMS for it is the
    // PrintableString "edwards25519").
    token(&f.token).keypair("EC:edwards25519", "03", "ed-key");
    let (store, keys) = open(&[uri(&f.token, "03", "")], DispatchMode::Inline);
    assert_eq!(keys[0].kind, KeyKind::Ed25519);
    let core = store.core(0);
    let mut sig = Vec::new();
    let msg = b"the whole message, not a digest";
    core.perform_inline(key_ref(&keys[0]), OpClass::Ed25519, msg, &mut sig)
        .unwrap();
    assert_eq!(sig.len(), 64);
    UnparsedPublicKey::new(&signature::ED25519, spki_key(&keys[0].spki_der))
        .verify(msg, &sig)
        .unwrap();
    assert_eq!(
        core.perform_inline(
            key_ref(&keys[0]),
            OpClass::Ecdsa(Hash::Sha256),
            &[0; 32],
            &mut sig
        ),
        Err(ErrorCode::CRYPTO)
    );
    drop(core);
    drop(store);

    let uris = [uri(&f.token, "01", ""), uri(&f.token, "02", "")];
    // Inline.
    let (store, keys) = open(&uris, DispatchMode::Inline);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0].ski,
        keycore_keys::ski_from_spki(&std::fs::read(&f.rsa.public_der).unwrap()).unwrap()
    );
    assert_eq!(
        keys[1].ski,
        keycore_keys::ski_from_spki(&std::fs::read(&f.ec.public_der).unwrap()).unwrap()
    );
    assert!(keys[0].legacy_digest.is_some());
    assert!(!keys[0].source.contains(PIN), "{}", keys[0].source);
    let core = store.core(0);
    assert!(core.is_inline(key_ref(&keys[0])));
    for (i, check) in [(0usize, check_rsa as Checker), (1, check_ec as Checker)] {
        let k = key_ref(&keys[i]);
        let mut p = |op, input: &[u8]| {
            let mut out = vec![0xee]; // perform_inline appends
            core.perform_inline(k, op, input, &mut out)
                .map(|()| out[1..].to_vec())
        };
        check(&mut p, &keys[i]);
    }
    assert_eq!(
        core.perform_inline(
            KeyRef(99),
            OpClass::Ecdsa(Hash::Sha256),
            &[0; 32],
            &mut Vec::new()
        ),
        Err(ErrorCode::INTERNAL)
    );
    drop(core);
    drop(store);

    // Offload, inside a glommio executor: futures resolve through foreign wakes.
    let (store, keys) = open(&uris, DispatchMode::Offload);
    let store = std::sync::Arc::new(store);
    let keys = std::sync::Arc::new(keys);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let core = store.core(0);
            assert!(!core.is_inline(key_ref(&keys[0])));
            for (i, check) in [(0usize, check_rsa as Checker), (1, check_ec as Checker)] {
                let k = key_ref(&keys[i]);
                // Gather the answers synchronously for the shared checker:
                // each call is a real submit awaited on this executor.
                let mut p = |op, input: &[u8]| {
                    let fut = core.submit(k, op, input);
                    futures_lite::future::block_on(fut)
                };
                check(&mut p, &keys[i]);
            }
            // Many at once: one batch, all answered, all verifiable.
            let msg = b"batch";
            let d = sha(Hash::Sha256, msg);
            let futs: Vec<_> = (0..64)
                .map(|i| {
                    core.submit(
                        key_ref(&keys[i % 2]),
                        if i % 2 == 0 {
                            OpClass::RsaPkcs1(Hash::Sha256)
                        } else {
                            OpClass::Ecdsa(Hash::Sha256)
                        },
                        &d,
                    )
                })
                .collect();
            for (i, f) in futs.into_iter().enumerate() {
                let sig = f.await.unwrap();
                let pk = spki_key(&keys[i % 2].spki_der);
                if i % 2 == 0 {
                    UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, pk)
                        .verify(msg, &sig)
                        .unwrap();
                } else {
                    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, pk)
                        .verify(msg, &sig)
                        .unwrap();
                }
            }
            let h = store.health();
            assert_eq!(h.len(), 1);
            assert!(h[0].healthy, "{h:?}");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Two reactors (glommio executors on two threads) at once, each with its
/// own `CoreHsm`: inline and offload keys on the same token, every
/// signature verified. Nothing is shared between the cores but the store.
#[test]
fn two_cores_at_once_inline_and_offload() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture("cores");
    for mode in [DispatchMode::Inline, DispatchMode::Offload] {
        let (store, keys) = open(&[uri(&f.token, "01", ""), uri(&f.token, "02", "")], mode);
        let store = std::sync::Arc::new(store);
        let keys = std::sync::Arc::new(keys);
        let handles: Vec<_> = (0..2)
            .map(|core_id| {
                let (store, keys) = (store.clone(), keys.clone());
                glommio::LocalExecutorBuilder::default()
                    .name(&format!("core{core_id}"))
                    .spawn(move || async move {
                        let core = std::rc::Rc::new(store.core(core_id));
                        let msg = format!("core {core_id}");
                        let d = sha(Hash::Sha256, msg.as_bytes());
                        let tasks: Vec<_> = (0..32)
                            .map(|i| {
                                let (core, keys, d, msg) =
                                    (core.clone(), keys.clone(), d.clone(), msg.clone());
                                glommio::spawn_local(async move {
                                    let (k, op, alg): (
                                        _,
                                        _,
                                        &dyn signature::VerificationAlgorithm,
                                    ) = if i % 2 == 0 {
                                        (
                                            &keys[0],
                                            OpClass::RsaPkcs1(Hash::Sha256),
                                            &signature::RSA_PKCS1_2048_8192_SHA256,
                                        )
                                    } else {
                                        (
                                            &keys[1],
                                            OpClass::Ecdsa(Hash::Sha256),
                                            &signature::ECDSA_P256_SHA256_ASN1,
                                        )
                                    };
                                    for _ in 0..4 {
                                        let sig = if core.is_inline(key_ref(k)) {
                                            let mut out = Vec::new();
                                            core.perform_inline(key_ref(k), op, &d, &mut out)
                                                .map(|()| out)
                                        } else {
                                            core.submit(key_ref(k), op, &d).await
                                        }
                                        .unwrap();
                                        UnparsedPublicKey::new(alg, spki_key(&k.spki_der))
                                            .verify(msg.as_bytes(), &sig)
                                            .unwrap();
                                    }
                                })
                                .detach()
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    })
                    .unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(store.health().iter().all(|h| h.healthy));
    }
}

#[test]
fn startup_errors_name_uri_and_attribute() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture("errs");
    let opts = Pkcs11Options::default();
    let err = |u: String| {
        Pkcs11Store::open(&[u], &opts, StoreId(0))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    let e = err(format!(
        "pkcs11:token=errs;id=%01?module-path={MODULE}&pin-value=9999"
    ));
    assert!(
        e.contains("pkcs11:token=errs") && e.contains("pin-value") && e.contains("PIN"),
        "{e}"
    );
    assert!(!e.contains("9999"), "{e}");
    let e = err(format!(
        "pkcs11:token=errs;id=%01?module-path=/nonexistent/libp11.so&pin-value={PIN}"
    ));
    assert!(
        e.contains("module-path") && e.contains("/nonexistent/libp11.so"),
        "{e}"
    );
    let e = err(format!(
        "pkcs11:token=nosuchtoken;id=%01?module-path={MODULE}&pin-value={PIN}"
    ));
    assert!(
        e.contains("`token`") && e.contains("no token matches") && e.contains("errs"),
        "{e}"
    );
    let e = err(format!(
        "pkcs11:token=errs;id=%7f?module-path={MODULE}&pin-value={PIN}"
    ));
    assert!(e.contains("`id`") && e.contains("no private key"), "{e}");
    let e = err(format!(
        "pkcs11:token=errs;object=nolabel?module-path={MODULE}&pin-value={PIN}"
    ));
    assert!(e.contains("`object`"), "{e}");
    // SoftHSM has no Crypto User role: the vendor user type is refused at
    // login, and the error blames the user type, not the PIN.
    let e = err(format!(
        "pkcs11:token=errs;id=%01?module-path={MODULE}&pin-value={PIN}&x-login-user=crypto-user"
    ));
    assert!(
        e.contains("`x-login-user`") && e.contains("CKR_USER_TYPE_INVALID"),
        "{e}"
    );
    let e = err(format!("pkcs11:token=errs;id=%01?module-path={MODULE}"));
    assert!(e.contains("requires a login"), "{e}");
    // A URI without id/object loads every private key of the token; by label works.
    let (_s, keys) = Pkcs11Store::open(
        &[format!(
            "pkcs11:token=errs?module-path={MODULE}&pin-value={PIN}"
        )],
        &opts,
        StoreId(0),
    )
    .unwrap();
    assert_eq!(keys.len(), 2);
    let (_s, keys) = Pkcs11Store::open(&[format!("pkcs11:token=errs;object=ec-key;type=private?module-path={MODULE}&pin-value={PIN}&max-sessions=4")], &opts, StoreId(0)).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kind, KeyKind::EcdsaP256);
    let _ = (&f.dir, &f.rsa, &f.ec);
}

/// Sign with `perform` until it succeeds or `limit` passes; every call must
/// return (none may hang). Returns how long recovery took.
fn until_ok(limit: Duration, mut perform: impl FnMut() -> Result<Vec<u8>, ErrorCode>) -> Duration {
    let t = Instant::now();
    loop {
        let c = Instant::now();
        let r = perform();
        assert!(
            c.elapsed() < Duration::from_secs(3),
            "one call took {:?}",
            c.elapsed()
        );
        if r.is_ok() {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "no recovery within {limit:?}: {r:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn move_away_and_back(f: &Fixture, mut perform: impl FnMut() -> Result<Vec<u8>, ErrorCode>) {
    perform().unwrap();
    let away = env().root.join(format!("{}-away", f.token));
    std::fs::rename(&f.dir, &away).unwrap();
    let mut failures = 0;
    for _ in 0..5 {
        let t = Instant::now();
        if perform().is_err() {
            failures += 1;
        }
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    std::fs::rename(&away, &f.dir).unwrap();
    let took = until_ok(Duration::from_secs(10), &mut perform);
    eprintln!(
        "token {}: {failures}/5 failed while away; recovered {took:?} after moving back",
        f.token
    );
    for _ in 0..20 {
        perform().unwrap();
    }
}

/// Delete the RSA key (id 01) while in use and import it again. The EC key
/// (id 02) on the same token must keep working meanwhile: a deleted key does
/// not take its partition out of use.
fn delete_and_recreate(
    f: &Fixture,
    mut perform: impl FnMut() -> Result<Vec<u8>, ErrorCode>,
    mut other: impl FnMut() -> Result<Vec<u8>, ErrorCode>,
) {
    perform().unwrap();
    token(&f.token).delete("01");
    for _ in 0..5 {
        let t = Instant::now();
        assert!(perform().is_err(), "signed with a deleted key");
        assert!(t.elapsed() < Duration::from_secs(3));
        other().expect("another key on the same token while one is deleted");
    }
    token(&f.token).import(&f.rsa, "01", "rsa-key");
    let took = until_ok(Duration::from_secs(10), &mut perform);
    eprintln!("token {}: key re-created, recovered in {took:?}", f.token);
    other().unwrap();
}

#[test]
fn recovers_inline_from_token_dir_moved_and_keys_recreated() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture("recin");
    let (store, keys) = open(
        &[uri(&f.token, "01", ""), uri(&f.token, "02", "")],
        DispatchMode::Inline,
    );
    let core = store.core(0);
    let (k, ke) = (key_ref(&keys[0]), key_ref(&keys[1]));
    let d = sha(Hash::Sha256, b"x");
    let perform = || {
        let mut out = Vec::new();
        core.perform_inline(k, OpClass::RsaPkcs1(Hash::Sha256), &d, &mut out)
            .map(|()| out)
    };
    let other = || {
        let mut out = Vec::new();
        core.perform_inline(ke, OpClass::Ecdsa(Hash::Sha256), &d, &mut out)
            .map(|()| out)
    };
    move_away_and_back(&f, perform);
    let failures = store.health()[0].failures;
    delete_and_recreate(&f, perform, other);
    assert_eq!(
        store.health()[0].failures,
        failures,
        "a deleted key took the partition down"
    );
    let h = store.health();
    assert!(h[0].healthy, "{h:?}");
    eprintln!("{h:?}");
}

#[test]
fn recovers_offload_from_token_dir_moved_and_keys_recreated() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture("recoff");
    let (store, keys) = open(
        &[uri(&f.token, "01", ""), uri(&f.token, "02", "")],
        DispatchMode::Offload,
    );
    let store = std::sync::Arc::new(store);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let core = store.core(0);
            let (k, ke) = (key_ref(&keys[0]), key_ref(&keys[1]));
            let d = sha(Hash::Sha256, b"x");
            let perform = || {
                futures_lite::future::block_on(core.submit(k, OpClass::RsaPkcs1(Hash::Sha256), &d))
            };
            let other = || {
                futures_lite::future::block_on(core.submit(ke, OpClass::Ecdsa(Hash::Sha256), &d))
            };
            move_away_and_back(&f, perform);
            delete_and_recreate(&f, perform, other);
            let h = store.health();
            assert!(h[0].healthy, "{h:?}");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn ha_group_spreads_and_survives_a_member_going_away() {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // The same key imported into two tokens: one KeyEntry, two members.
    let a = init_token("ha-a");
    let _b = init_token("ha-b");
    let k = make_key("ha-rsa", "rsa");
    token("ha-a").import(&k, "01", "k");
    token("ha-b").import(&k, "01", "k");
    let (store, keys) = open(
        &[uri("ha-a", "01", ""), uri("ha-b", "01", "")],
        DispatchMode::Inline,
    );
    assert_eq!(keys.len(), 1);
    assert_eq!(store.partitions(), 2);
    let core = store.core(0);
    let kr = key_ref(&keys[0]);
    let d = sha(Hash::Sha256, b"ha");
    let sign = || {
        let mut out = Vec::new();
        core.perform_inline(kr, OpClass::RsaPkcs1(Hash::Sha256), &d, &mut out)
            .map(|()| out)
    };
    for _ in 0..10 {
        sign().unwrap();
    }
    // Member a goes away: every request still answered, by b.
    let away = env().root.join("ha-a-away");
    std::fs::rename(&a, &away).unwrap();
    let mut ok = 0;
    for _ in 0..20 {
        if sign().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(
        ok,
        20,
        "only {ok}/20 answered while a member was away: {:?}",
        store.health()
    );
    std::fs::rename(&away, &a).unwrap();
    // a is probed back in once its backoff expires.
    let t = Instant::now();
    loop {
        sign().unwrap();
        if store.health().iter().all(|h| h.healthy) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            store.health()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{:?}", store.health());
}

/// Seconds each bench measurement runs.
const BENCH_SECS: f64 = 3.0;

fn timed(secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// SoftHSM's own in-process rate (cryptoki directly, one session) next to
/// keycore's inline and offload dispatch. Run alone:
/// `cargo test -p keycore-pkcs11 --test pkcs11_softhsm -- --ignored --exact bench_softhsm_inline_vs_offload --nocapture`
#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_softhsm_inline_vs_offload() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture("bench");
    let uris = [uri(&f.token, "01", ""), uri(&f.token, "02", "")];
    let d = sha(Hash::Sha256, b"bench");
    let mut rsa_in = Hash::Sha256.digest_info_prefix().to_vec();
    rsa_in.extend_from_slice(&d);

    // SoftHSM directly.
    let ctx = Pkcs11::new(MODULE).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|t| t.label() == "bench")
                .unwrap_or(false)
        })
        .expect("bench token");
    let s = ctx.open_ro_session(slot).unwrap();
    let _ = s.login(cryptoki::session::UserType::User, Some(&PIN.into()));
    let find = |id: u8| {
        s.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(vec![id]),
        ])
        .unwrap()[0]
    };
    let (hr, he) = (find(1), find(2));
    let raw_rsa = timed(BENCH_SECS, || {
        s.sign(&Mechanism::RsaPkcs, hr, &rsa_in).unwrap();
    });
    let raw_ec = timed(BENCH_SECS, || {
        s.sign(&Mechanism::Ecdsa, he, &d).unwrap();
    });

    let (store, keys) = open(&uris, DispatchMode::Inline);
    let core = store.core(0);
    let (kr, ke) = (key_ref(&keys[0]), key_ref(&keys[1]));
    let mut out = Vec::new();
    let in_rsa = timed(BENCH_SECS, || {
        out.clear();
        core.perform_inline(kr, OpClass::RsaPkcs1(Hash::Sha256), &d, &mut out)
            .unwrap();
    });
    let in_ec = timed(BENCH_SECS, || {
        out.clear();
        core.perform_inline(ke, OpClass::Ecdsa(Hash::Sha256), &d, &mut out)
            .unwrap();
    });
    drop(core);
    drop(store);

    // One session per key, every request queued behind it: the reference's
    // default, modelled as offload with a single worker.
    let one = Pkcs11Options {
        dispatch: Some(DispatchMode::Offload),
        sessions_per_core: 1,
        ..Pkcs11Options::default()
    };
    let (store1, keys1) = Pkcs11Store::open(&uris, &one, StoreId(0)).unwrap();
    let store1 = std::sync::Arc::new(store1);
    let one_rsa = offload_rate(
        store1.clone(),
        key_ref(&keys1[0]),
        OpClass::RsaPkcs1(Hash::Sha256),
        d.clone(),
        32,
        BENCH_SECS,
    );
    let one_ec = offload_rate(
        store1,
        key_ref(&keys1[1]),
        OpClass::Ecdsa(Hash::Sha256),
        d.clone(),
        32,
        BENCH_SECS,
    );

    let (store, keys) = open(&uris, DispatchMode::Offload);
    let store = std::sync::Arc::new(store);
    let (kr, ke) = (key_ref(&keys[0]), key_ref(&keys[1]));
    let off = |k, op, n| offload_rate(store.clone(), k, op, d.clone(), n, BENCH_SECS);
    let off_rsa_1 = off(kr, OpClass::RsaPkcs1(Hash::Sha256), 1);
    let off_rsa_32 = off(kr, OpClass::RsaPkcs1(Hash::Sha256), 32);
    let off_ec_1 = off(ke, OpClass::Ecdsa(Hash::Sha256), 1);
    let off_ec_32 = off(ke, OpClass::Ecdsa(Hash::Sha256), 32);
    println!("SoftHSM2 in-process, one reactor thread, {BENCH_SECS} s each (ops/s):");
    println!("  RSA-2048 PKCS#1 SHA-256: softhsm direct {raw_rsa:.0} | keycore inline {in_rsa:.0} | offload 2 workers, 1 in flight {off_rsa_1:.0}, 32 in flight {off_rsa_32:.0}");
    println!("  ECDSA P-256:             softhsm direct {raw_ec:.0} | keycore inline {in_ec:.0} | offload 2 workers, 1 in flight {off_ec_1:.0}, 32 in flight {off_ec_32:.0}");
    println!("  one session per key (reference default), 32 in flight: RSA-2048 {one_rsa:.0}, P-256 {one_ec:.0}");
}
