//! What real HSMs' PKCS#11 libraries do differently (issue 20), against
//! hsmsim's vendor behaviour modes over SoftHSM2: AWS CloudHSM SDK 5
//! (read-write sessions only, session-specific object handles, throttling
//! codes), Google kmsp11 (every failure is CKR_DEVICE_ERROR), Thales Luna
//! (vendor Ed25519 constants, CKR_AGAIN), YubiHSM 2 (no CKM_RSA_X_509),
//! private-key-only imports, a CKR_OPERATION_ACTIVE left on a session,
//! sessions of stuck calls, and the session-count checks. Every signature
//! is verified.
//!
//! A separate test binary: hsmsim loads SoftHSM itself, and SOFTHSM2_CONF /
//! KEYCORE_HSMSIM_CONFIG are read once per process. Tests share one token
//! and take turns (the simulator config is one file).

use aws_lc_rs::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519, RSA_PKCS1_2048_8192_SHA256,
};
use keycore_keys::{Backend, KeyEntry, KeyKind, StoreId};
use keycore_pkcs11::{CoreHsm, DispatchMode, KeyRef, Pkcs11Options, Pkcs11Store};
use keycore_protocol::{ErrorCode, Hash, OpClass};
use keycore_testsupport::run_ok as run;
use keycore_testsupport::softhsm::Token;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const PIN: &str = "3333";
use keycore_testsupport::SOFTHSM_MODULE as SOFTHSM;
const MSG: &[u8] = b"keycore vendor behaviour";

struct Env {
    _dir: tempfile::TempDir,
    sim_conf: PathBuf,
    sim: PathBuf,
}

static SERIAL: Mutex<()> = Mutex::new(());

/// The hsmsim cdylib cargo built for this run (found through cargo's
/// layout, not a fixed path).
fn sim_path() -> PathBuf {
    keycore_testsupport::hsmsim_module()
}

/// One token "vend" with: RSA-2048 (id 01, label rsa), P-256 (id 02, label
/// ec), Ed25519 (id 03, label ed) key pairs, made directly in SoftHSM.
fn env() -> (MutexGuard<'static, ()>, &'static Env) {
    static E: OnceLock<Env> = OnceLock::new();
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let e = E.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let conf = keycore_testsupport::softhsm_conf(dir.path());
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let sim_conf = dir.path().join("hsmsim.json");
        std::fs::write(&sim_conf, "{}").unwrap();
        std::env::set_var("KEYCORE_HSMSIM_CONFIG", &sim_conf);
        let token = Token::init(&conf, "vend", PIN);
        for (id, label, ty) in [
            ("01", "rsa", "rsa:2048"),
            ("02", "ec", "EC:prime256v1"),
            ("03", "ed", "EC:edwards25519"),
        ] {
            token.keypair(ty, id, label);
        }
        Env {
            _dir: dir,
            sim_conf,
            sim: sim_path(),
        }
    });
    (g, e)
}

/// Set the simulator's config (read live: reload interval 10 ms).
fn sim(e: &Env, json_body: &str) {
    let sep = if json_body.is_empty() { "" } else { ", " };
    // Written aside and renamed: the simulator re-reads the file every
    // 10 ms and must never see it half-written.
    let tmp = e.sim_conf.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!(r#"{{"module": "{SOFTHSM}", "reload_interval_ms": 10{sep}{json_body}}}"#),
    )
    .unwrap();
    std::fs::rename(&tmp, &e.sim_conf).unwrap();
    std::thread::sleep(Duration::from_millis(40));
}

fn uri(e: &Env, path: &str, query: &str) -> String {
    format!(
        "pkcs11:token=vend;{path}?module-path={}&pin-value={PIN}{query}",
        e.sim.display()
    )
}

fn open(uris: &[String], opts: Pkcs11Options) -> Result<(Pkcs11Store, Vec<KeyEntry>), String> {
    Pkcs11Store::open(uris, &opts, StoreId(0)).map_err(|e| e.to_string())
}

fn offload(sessions: u32) -> Pkcs11Options {
    Pkcs11Options {
        dispatch: Some(DispatchMode::Offload),
        sessions_per_core: sessions,
        op_timeout: Duration::from_secs(2),
        ..Pkcs11Options::default()
    }
}

fn key_ref(e: &KeyEntry) -> KeyRef {
    match e.backend {
        Backend::Store(k) => KeyRef(k.key),
        _ => unreachable!(),
    }
}

fn digest(msg: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg)
        .as_ref()
        .to_vec()
}

/// The key bits of an SPKI (last BIT STRING contents, after its 0 byte).
fn key_bits(spki: &[u8], kind: KeyKind) -> &[u8] {
    match kind {
        KeyKind::EcdsaP256 => &spki[spki.len() - 65..],
        KeyKind::Ed25519 => &spki[spki.len() - 32..],
        // RSA: the RSAPublicKey follows "03 82 01 0f 00" in a 2048-bit SPKI.
        KeyKind::Rsa { .. } => &spki[24..],
        _ => unreachable!(),
    }
}

/// Sign [`MSG`] `n` times, round-robin over `entries`, through one core's
/// offload path; every signature is verified against its key.
fn sign_and_verify(
    store: &Pkcs11Store,
    entries: &[KeyEntry],
    n: usize,
) -> Vec<Result<(), ErrorCode>> {
    sign_and_verify_on(&store.core(0), entries, n)
}

/// [`sign_and_verify`] on a core the caller keeps (its worker sessions
/// stay open between calls).
fn sign_and_verify_on(
    core: &CoreHsm,
    entries: &[KeyEntry],
    n: usize,
) -> Vec<Result<(), ErrorCode>> {
    let mut results = Vec::new();
    for i in 0..n {
        let e = &entries[i % entries.len()];
        let (op, input) = match e.kind {
            KeyKind::Rsa { .. } => (OpClass::RsaPkcs1(Hash::Sha256), digest(MSG)),
            KeyKind::Ed25519 => (OpClass::Ed25519, MSG.to_vec()),
            _ => (OpClass::Ecdsa(Hash::Sha256), digest(MSG)),
        };
        let r = futures_lite::future::block_on(core.submit(key_ref(e), op, &input));
        results.push(r.map(|sig| {
            let alg: &dyn aws_lc_rs::signature::VerificationAlgorithm = match e.kind {
                KeyKind::Rsa { .. } => &RSA_PKCS1_2048_8192_SHA256,
                KeyKind::Ed25519 => &ED25519,
                _ => &ECDSA_P256_SHA256_ASN1,
            };
            UnparsedPublicKey::new(alg, key_bits(&e.spki_der, e.kind))
                .verify(MSG, &sig)
                .unwrap_or_else(|_| {
                    panic!("signature from {} does not verify (wrong key?)", e.source)
                });
        }));
    }
    results
}

/// Issue 20 items 1 and 2: CloudHSM SDK 5 refuses read-only sessions and
/// gives every session its own object handles. Start-up works, and every
/// signature from every worker session is made with the right key.
#[test]
fn cloudhsm_sdk5_rw_sessions_and_session_handles() {
    let (_g, e) = env();
    sim(e, r#""behaviour": "cloudhsm-sdk5""#);
    let uris = [uri(e, "id=%01", ""), uri(e, "id=%02", "")];
    let (store, entries) = open(&uris, offload(4)).unwrap();
    let r = sign_and_verify(&store, &entries, 40);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    sim(e, "");
}

/// Issue 20 item 3: YubiHSM 2 has no CKM_RSA_X_509: said at start-up, RSA
/// decrypt answered 0x01 without a call, signing unaffected.
#[test]
fn yubihsm_without_rsa_x509_refuses_decrypt_clearly() {
    let (_g, e) = env();
    sim(e, r#""behaviour": "yubihsm""#);
    let (store, entries) = open(&[uri(e, "id=%01", "")], offload(2)).unwrap();
    assert!(
        store.warnings().iter().any(|w| w.contains("CKM_RSA_X_509")),
        "{:?}",
        store.warnings()
    );
    let core = store.core(0);
    let ct = vec![0x42u8; 256];
    let r =
        futures_lite::future::block_on(core.submit(key_ref(&entries[0]), OpClass::RsaDecrypt, &ct));
    assert_eq!(r, Err(ErrorCode::CRYPTO));
    assert_eq!(
        store.health()[0].errors.iter().sum::<u64>(),
        0,
        "the token was called"
    );
    drop(core);
    let r = sign_and_verify(&store, &entries, 4);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    sim(e, "");
}

/// Issue 20 item 5: Luna's vendor-defined Ed25519 key type and mechanism.
#[test]
fn luna_vendor_ed25519() {
    let (_g, e) = env();
    sim(e, r#""behaviour": "luna""#);
    let (store, entries) = open(&[uri(e, "id=%03", "")], offload(2)).unwrap();
    assert_eq!(entries[0].kind, KeyKind::Ed25519);
    let r = sign_and_verify(&store, &entries, 6);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    sim(e, "");
}

/// Issue 20 items 5 and 10: a key whose public half cannot be found fails
/// start-up clearly — or, with key_load_errors: skip, is skipped while the
/// token's other keys load. Private-key-only imports load where the token
/// offers CKA_PUBLIC_KEY_INFO or CKA_EC_POINT on the private object, and
/// keys without CKA_ID are found by label.
#[test]
fn keys_without_public_objects_or_ids() {
    let (_g, e) = env();
    let all = uri(e, "type=private", "");
    // Public objects hidden, nothing on the private object: no EC/Ed key.
    sim(
        e,
        r#""behaviour": {"preset": "generic", "hide_public_keys": true}"#,
    );
    let err = open(std::slice::from_ref(&all), offload(1)).unwrap_err();
    assert!(err.contains("key_load_errors: skip"), "{err}");
    let opts = Pkcs11Options {
        skip_failed_keys: true,
        ..offload(1)
    };
    let (store, entries) = open(std::slice::from_ref(&all), opts).unwrap();
    assert_eq!(
        entries.len(),
        1,
        "only the RSA key (modulus on the private object)"
    );
    assert!(matches!(entries[0].kind, KeyKind::Rsa { .. }));
    assert_eq!(store.warnings().len(), 2, "{:?}", store.warnings());
    drop(store);
    // CloudHSM-style private-key-only import, the point on the private key.
    for switch in ["ec_point_on_private", "public_key_info_on_private"] {
        sim(
            e,
            &format!(
                r#""behaviour": {{"preset": "generic", "hide_public_keys": true, "{switch}": true}}"#
            ),
        );
        let (store, entries) = open(std::slice::from_ref(&all), offload(2)).unwrap();
        assert_eq!(entries.len(), 3, "{switch}");
        let r = sign_and_verify(&store, &entries, 9);
        assert!(r.iter().all(|r| r.is_ok()), "{switch}: {r:?}");
    }
    // Luna keys made without -id: found by label, public object by label.
    sim(
        e,
        r#""behaviour": {"preset": "generic", "hide_cka_id": true}"#,
    );
    let (store, entries) = open(&[uri(e, "object=ec", "")], offload(2)).unwrap();
    let r = sign_and_verify(&store, &entries, 4);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    sim(e, "");
}

/// Run `n` signs on a partition while `faults` are injected; the health
/// snapshot after.
fn under(
    e: &Env,
    behaviour_and_faults: &str,
    query: &str,
    n: usize,
) -> (Vec<Result<(), ErrorCode>>, keycore_pkcs11::PartitionHealth) {
    sim(e, "");
    let (store, entries) = open(&[uri(e, "id=%02", query)], offload(4)).unwrap();
    sim(e, behaviour_and_faults);
    let r = sign_and_verify(&store, &entries, n);
    sim(e, "");
    (r, store.health().remove(0))
}

/// Issue 20 item 8: each vendor's busy/throttle answer backs off and
/// retries — no session rebuilt, no module re-initialised, no error.
#[test]
fn throttling_backs_off_per_vendor() {
    let (_g, e) = env();
    // kmsp11: every RPC failure is CKR_DEVICE_ERROR.
    let (r, h) = under(
        e,
        r#""behaviour": "kmsp11", "faults": [{"kind": "error", "rv": "CKR_DEVICE_ERROR", "rate": 0.1, "functions": ["C_Sign"]}]"#,
        "&x-vendor=kmsp11",
        60,
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert!(h.errors[1] > 0, "no busy answer seen: {h:?}");
    assert_eq!((h.reopens, h.reinits, h.failures), (0, 0, 0), "{h:?}");
    // CloudHSM SDK 5: throttling is CKR_FUNCTION_FAILED (and
    // CKR_DEVICE_ERROR from C_GetAttributeValue) once the SDK's own 3
    // retries are spent (turned off here, so keycore sees every one).
    let (r, h) = under(
        e,
        r#""behaviour": {"preset": "cloudhsm-sdk5", "client_retries": 0}, "faults": [{"kind": "throttle", "rate": 0.1, "functions": ["C_Sign"]}]"#,
        "&x-vendor=cloudhsm",
        60,
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert!(h.errors[1] > 0, "{h:?}");
    assert_eq!((h.reinits, h.failures), (0, 0), "{h:?}");
    // Luna: CKR_AGAIN.
    let (r, h) = under(
        e,
        r#""behaviour": "luna", "faults": [{"kind": "throttle", "rate": 0.1, "functions": ["C_Sign"]}]"#,
        "&x-vendor=luna",
        60,
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert!(h.errors[1] > 0, "{h:?}");
    // An override: the generic policy fails CKR_FUNCTION_FAILED; told it is
    // busy, keycore retries it.
    let (r, _) = under(
        e,
        r#""faults": [{"kind": "error", "rv": "CKR_FUNCTION_FAILED", "rate": 0.1, "functions": ["C_Sign"]}]"#,
        "&x-on-error=CKR_FUNCTION_FAILED:busy",
        60,
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}

/// Issue 20 item 8: a CKR_OPERATION_ACTIVE left on a session would fail
/// every later request on it; keycore rebuilds that session.
#[test]
fn operation_left_active_rebuilds_the_session() {
    let (_g, e) = env();
    let (r, h) = under(
        e,
        r#""faults": [{"kind": "operation_active", "max_fires": 2}]"#,
        "",
        40,
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert!(h.reopens >= 1, "{h:?}");
}

/// Issue 20 item 9: a worker that times out closes its session when its
/// call returns, so repeated stuck calls do not use up the device's
/// sessions (here 5 per application: the login session, two workers and
/// room for two replacements).
#[test]
fn stuck_calls_do_not_leak_sessions() {
    let (_g, e) = env();
    sim(
        e,
        r#""behaviour": {"preset": "generic", "max_sessions": 5}"#,
    );
    let (store, entries) = open(&[uri(e, "id=%02", "&x-op-timeout=150ms")], offload(2)).unwrap();
    let k = key_ref(&entries[0]);
    let d = digest(MSG);
    let core = store.core(0);
    let op = OpClass::Ecdsa(Hash::Sha256);
    for round in 0..4 {
        sim(
            e,
            r#""behaviour": {"preset": "generic", "max_sessions": 5}, "faults": [{"kind": "hang", "duration_ms": 300, "functions": ["C_Sign"], "max_fires": 1}]"#,
        );
        let r = futures_lite::future::block_on(core.submit(k, op, &d));
        assert!(r.is_err(), "round {round}: the hung call was answered ok");
        std::thread::sleep(Duration::from_millis(400)); // the call returns
        sim(
            e,
            r#""behaviour": {"preset": "generic", "max_sessions": 5}"#,
        );
    }
    let t = Instant::now();
    for i in 0..20 {
        let r = futures_lite::future::block_on(core.submit(k, op, &d));
        assert!(
            r.is_ok(),
            "request {i} after 4 stuck calls: {:?}",
            store.health()
        );
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    let h = store.health().remove(0);
    assert_eq!(h.timeouts, 4, "{h:?}");
    assert_eq!(h.quarantined, 0, "{h:?}");
    // Leaked sessions show as a session that will not open (CKR_SESSION_COUNT)
    // and then a module re-initialisation, which closes every session and so
    // would hide the leak from the requests above: neither may happen.
    assert_eq!(
        (h.errors[2], h.reinits),
        (0, 0),
        "a session would not open: {h:?}"
    );
    drop(core);
    sim(e, "");
}

/// Issue 20 item 9: cores x sessions per core is checked against
/// CloudHSM's 1,024 sessions per application, and max-sessions below the
/// core count is said, not silently raised.
#[test]
fn session_counts_are_checked() {
    let (_g, e) = env();
    sim(e, "");
    let opts = Pkcs11Options {
        cores: 64,
        ..offload(2)
    };
    let err = open(
        &[uri(
            e,
            "id=%02",
            "&x-vendor=cloudhsm&x-sessions-per-core=32",
        )],
        opts.clone(),
    )
    .unwrap_err();
    assert!(
        err.contains("1024") && err.contains("x-sessions-per-core"),
        "{err}"
    );
    let (store, _) = open(
        &[uri(e, "id=%02", "&x-vendor=cloudhsm&max-sessions=8")],
        Pkcs11Options {
            cores: 16,
            ..offload(2)
        },
    )
    .unwrap();
    assert!(
        store
            .warnings()
            .iter()
            .any(|w| w.contains("max-sessions=8") && w.contains("16")),
        "{:?}",
        store.warnings()
    );
}

/// Issue 12 item 13: the HSM path signs an empty ECDSA digest as software
/// keys do (its integer is 0; the signature verifies for any all-zero
/// digest, checked here with openssl).
#[test]
fn empty_ecdsa_digest_is_signed() {
    let (_g, e) = env();
    sim(e, "");
    let (store, entries) = open(&[uri(e, "id=%02", "")], offload(1)).unwrap();
    let core = store.core(0);
    let sig = futures_lite::future::block_on(core.submit(
        key_ref(&entries[0]),
        OpClass::Ecdsa(Hash::Sha256),
        &[],
    ))
    .expect("empty digest refused");
    let dir = tempfile::tempdir().unwrap();
    let (pubf, sigf, dgf) = (
        dir.path().join("pub.der"),
        dir.path().join("sig"),
        dir.path().join("digest"),
    );
    std::fs::write(&pubf, &entries[0].spki_der).unwrap();
    std::fs::write(&sigf, &sig).unwrap();
    std::fs::write(&dgf, [0u8; 32]).unwrap();
    run(Command::new("openssl").args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        pubf.to_str().unwrap(),
        "-in",
        dgf.to_str().unwrap(),
        "-sigfile",
        sigf.to_str().unwrap(),
    ]));
}

/// Issue 20 item 11: a token that refuses RSA decryption (FIPS-mode
/// CloudHSM / Luna) is reported clearly, once, in the partition's last
/// error (and the log), and the request is answered 0x01.
#[test]
fn fips_decrypt_refusal_is_reported() {
    let (_g, e) = env();
    sim(e, "");
    let (store, entries) = open(&[uri(e, "id=%01", "")], offload(1)).unwrap();
    sim(
        e,
        r#""faults": [{"kind": "error", "rv": "CKR_MECHANISM_INVALID", "functions": ["C_DecryptInit"]}]"#,
    );
    let core = store.core(0);
    let ct = vec![0x42u8; 256];
    let r =
        futures_lite::future::block_on(core.submit(key_ref(&entries[0]), OpClass::RsaDecrypt, &ct));
    assert_eq!(r, Err(ErrorCode::CRYPTO));
    let h = store.health().remove(0);
    assert!(
        h.last_error.contains("FIPS") && h.last_error.contains("CKR_MECHANISM_INVALID"),
        "{h:?}"
    );
    assert_eq!(
        (h.reopens, h.failures),
        (0, 0),
        "a refusal is not a broken session: {h:?}"
    );
    drop(core);
    sim(e, "");
}

/// Issue 20 item 1: when the token refuses a session at start-up (here:
/// its per-application session limit is reached), the error says which
/// call failed and names the token, not the PIN.
#[test]
fn session_refused_at_startup_does_not_blame_the_pin() {
    let (_g, e) = env();
    sim(e, "");
    // A store that holds one session (its login session) on the device.
    let (_held, _) = open(&[uri(e, "id=%02", "")], offload(1)).unwrap();
    sim(
        e,
        r#""behaviour": {"preset": "generic", "max_sessions": 1}"#,
    );
    let err = open(&[uri(e, "id=%01", "")], offload(1)).unwrap_err();
    assert!(
        err.contains("`token`") && err.contains("C_OpenSession") && !err.contains("PIN"),
        "{err}"
    );
    sim(e, "");
}

/// Issue 20 item 8 (AWS known issue ki-pkcs11-15): CloudHSM answers a
/// throttled `C_GetAttributeValue` with `CKR_DEVICE_ERROR`. Met while a
/// session looks its key up again, that is "busy: back off and retry", not a
/// broken session (rebuilt, a strike) nor a missing key.
#[test]
fn cloudhsm_throttled_key_lookup_is_busy() {
    let (_g, e) = env();
    let behaviour = r#""behaviour": {"preset": "cloudhsm-sdk5", "client_retries": 0}"#;
    sim(e, behaviour);
    let (store, entries) = open(&[uri(e, "id=%02", "&x-vendor=cloudhsm")], offload(2)).unwrap();
    let core = store.core(0);
    let r = sign_and_verify_on(&core, &entries, 4);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    // The token forgets one session's handle once, so that session looks
    // the key up again, and that lookup is throttled once.
    sim(
        e,
        &format!(
            r#"{behaviour}, "faults": [{{"kind": "error", "rv": "CKR_KEY_HANDLE_INVALID", "functions": ["C_SignInit"], "max_fires": 1}}, {{"kind": "throttle", "functions": ["C_GetAttributeValue"], "max_fires": 1}}]"#
        ),
    );
    let r = sign_and_verify_on(&core, &entries, 8);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    let h = store.health().remove(0);
    assert!(
        h.errors[1] >= 1,
        "the throttled lookup was not read as busy: {h:?}"
    );
    assert_eq!(
        (h.reopens, h.failures),
        (0, 0),
        "a throttled lookup is not a broken session: {h:?}"
    );
    drop(core);
    sim(e, "");
}

/// Issue 20 item 8: Luna's connection codes. `CKR_UNABLE_TO_CONNECT`
/// (0x8000001F: every HA member lost) makes keycore re-initialise the
/// module, as Thales says to (`C_Finalize` + `C_Initialize`); the request
/// waits for it and is answered.
#[test]
fn luna_lost_connection_reinitialises_the_module() {
    let (_g, e) = env();
    let (r, h) = under(
        e,
        r#""behaviour": "luna", "faults": [{"kind": "error", "rv": "CKR_UNABLE_TO_CONNECT", "functions": ["C_Sign"], "max_fires": 1}]"#,
        "&x-vendor=luna",
        10,
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert_eq!(h.errors[5], 1, "not read as a lost device: {h:?}");
    assert!(h.reinits >= 1, "the module was not re-initialised: {h:?}");
}
