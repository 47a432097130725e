//! Reload of a PKCS#11 store that is kept open (issue 14): its URI is a
//! whole token (no `id`/`object`), unchanged across reloads, so the store
//! and its sessions stay, and a SIGHUP must still pick up what changed on
//! the token. A real `keycore serve` process and a real SoftHSM2 token,
//! changed with `pkcs11-tool` while the server runs: a key generated on the
//! token signs after the reload (checked against the public key read back
//! from the token) on a connection opened before it; a key deleted from the
//! token answers `0x02`; a key that cannot be used refuses the reload
//! (naming the URI, never the PIN) unless `key_load_errors: skip`. And no
//! session was opened for any of it: `keycore_pkcs11_sessions_opened_total`
//! (every `C_OpenSession` keycore makes for the token) does not move, so the
//! cores' sessions (inline) and the worker threads' sessions (offload) are
//! the ones opened at start-up, and the new key was found on them.

use crate::reload::{setup, wait_metric, RELOAD_ERROR, RELOAD_OK};
use crate::support::{request, serve, Client, Server};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use keycore_keys::KeyKind;
use keycore_protocol::{ErrorCode, Op, Ski};
use keycore_testsupport::softhsm::{softhsm_available, Token};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SESSIONS_OPENED: &str = "keycore_pkcs11_sessions_opened_total";
const MESSAGE: &[u8] = b"keycore reload: a key generated on the token while serving";

/// Sign [`MESSAGE`]'s SHA-256 with the key `ski` on `c`: the signature, or
/// the error code.
fn sign(c: &mut Client, id: u32, ski: &Ski) -> Result<Vec<u8>, ErrorCode> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, MESSAGE);
    c.send(&request(
        id,
        Op::ECDSA_SIGN_SHA256,
        Some(ski),
        digest.as_ref(),
    ))
    .unwrap();
    let (rid, op, payload) = c.recv().unwrap().expect("an answer, not EOF");
    assert_eq!(rid, id);
    match op {
        Op::RESPONSE => Ok(payload),
        Op::ERROR if payload.len() == 1 => Err(ErrorCode(payload[0])),
        other => panic!("unexpected answer {other:?} {payload:?}"),
    }
}

/// Whether `sig` is a valid ECDSA P-256 signature of [`MESSAGE`] by the key
/// whose SubjectPublicKeyInfo is `spki`.
fn verifies(spki: &[u8], sig: &[u8]) -> bool {
    let bits = keycore_keys::spki_key_bits(spki).expect("an SPKI");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, bits)
        .verify(MESSAGE, sig)
        .is_ok()
}

/// The sessions keycore has opened on the token, once the count has held
/// still for a second (offload workers open theirs on their own threads
/// after start-up; on a loaded machine that can lag the first answer).
fn settled_sessions(srv: &Server) -> u64 {
    let mut last = srv.metric(SESSIONS_OPENED);
    let t = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = srv.metric(SESSIONS_OPENED);
        if now == last {
            return now;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "sessions never settled"
        );
        last = now;
    }
}

/// The thread ids of the server's threads whose name starts with `prefix`
/// (offload workers are `p11-c<core>-p<partition>-<n>`).
fn threads(srv: &Server, prefix: &str) -> std::collections::BTreeSet<u32> {
    let task = format!("/proc/{}/task", srv.child.id());
    std::fs::read_dir(&task)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with(prefix)
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

fn keys_follow_the_token(dispatch: &str, skip: bool) {
    let dir = tempfile::tempdir().unwrap();
    let conf = keycore_testsupport::softhsm_conf(dir.path());
    let token = Token::init(&conf, "reloaded", "4321");
    token.keypair("EC:prime256v1", "01", "one");
    let spki1 = token.public_key(dir.path(), "01");
    let ski1 = keycore_keys::ski_from_spki(&spki1).unwrap();

    let s = setup(&[KeyKind::EcdsaP256]);
    let extra = if skip { "key_load_errors: skip\n" } else { "" };
    let store = format!(
        "  - uri: \"pkcs11:token=reloaded?module-path={}&pin-value=4321&x-dispatch={dispatch}\"\n",
        keycore_testsupport::SOFTHSM_MODULE
    );
    let srv = serve()
        .env("SOFTHSM2_CONF", &conf)
        .env("KEYCORE_LOG", PathBuf::from("info"))
        .config(|p, m| s.yaml(p, m, extra, &store))
        .start();
    let mut c = Client::connect(srv.addr).unwrap();
    let sig = sign(&mut c, 1, &ski1).expect("the token's key signs");
    assert!(verifies(&spki1, &sig));
    let sessions = settled_sessions(&srv);
    assert!(
        sessions > 0,
        "{SESSIONS_OPENED} counts the start-up sessions"
    );

    // A key generated on the token while serving: not served until a
    // reload, then served on the connection opened before it.
    token.keypair("EC:prime256v1", "02", "two");
    let spki2 = token.public_key(dir.path(), "02");
    let ski2 = keycore_keys::ski_from_spki(&spki2).unwrap();
    assert_eq!(sign(&mut c, 2, &ski2), Err(ErrorCode::KEY_NOT_FOUND));
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_OK, 1, Duration::from_secs(30));
    let t = Instant::now();
    let sig = loop {
        // A core takes a published reload up within its control tick.
        match sign(&mut c, 3, &ski2) {
            Ok(sig) => break sig,
            Err(ErrorCode::KEY_NOT_FOUND) if t.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the new key after the reload: {e:?}\n{}", srv.log()),
        }
    };
    assert!(verifies(&spki2, &sig), "signed by the new key");
    assert!(!verifies(&spki1, &sig), "not by the other key");
    let sig = sign(&mut c, 4, &ski1).expect("the first key still signs");
    assert!(verifies(&spki1, &sig));
    let log = srv.log();
    assert!(log.contains("kept open: pkcs11"), "{log}");
    assert!(log.contains("key added"), "{log}");

    // The first key deleted from the token: 0x02 after the reload.
    token.delete("01");
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_OK, 2, Duration::from_secs(30));
    let t = Instant::now();
    while sign(&mut c, 5, &ski1) != Err(ErrorCode::KEY_NOT_FOUND) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a deleted key still served"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sig = sign(&mut c, 6, &ski2).expect("the second key still signs");
    assert!(verifies(&spki2, &sig));

    // A key keycore cannot use (secp256k1): refused without
    // `key_load_errors: skip` (the old keys keep serving), skipped with it.
    token.keypair("EC:secp256k1", "03", "unusable");
    srv.signal(libc::SIGHUP);
    if skip {
        wait_metric(&srv, RELOAD_OK, 3, Duration::from_secs(30));
        let log = srv.log();
        assert!(log.contains("skipping a private key"), "{log}");
    } else {
        wait_metric(&srv, RELOAD_ERROR, 1, Duration::from_secs(30));
        assert_eq!(srv.metric(RELOAD_OK), 2);
        let log = srv.log();
        assert!(log.contains("reload refused"), "{log}");
        assert!(
            log.contains("pkcs11:token=reloaded"),
            "names the URI: {log}"
        );
        assert!(log.contains("key_load_errors: skip"), "{log}");
    }
    assert!(
        !srv.log().contains("pin-value=4321"),
        "a PIN reached the log"
    );
    let sig = sign(&mut c, 7, &ski2).expect("the second key signs on");
    assert!(verifies(&spki2, &sig));
    assert_eq!(sign(&mut c, 8, &ski1), Err(ErrorCode::KEY_NOT_FOUND));

    // None of it opened a session: the new key was found on the sessions
    // (and worker threads) of start-up, the scans ran on the login session.
    assert_eq!(
        srv.metric(SESSIONS_OPENED),
        sessions,
        "sessions were opened by the reloads\n{}",
        srv.scrape()
    );
}

#[test]
fn a_kept_pkcs11_store_finds_added_and_deleted_keys_on_reload_inline() {
    if !softhsm_available() {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    }
    keys_follow_the_token("inline", false);
}

#[test]
fn a_kept_pkcs11_store_finds_added_and_deleted_keys_on_reload_offload_with_skip() {
    if !softhsm_available() {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    }
    keys_follow_the_token("offload", true);
}

/// A reload that changes one PKCS#11 URI keeps the other tokens open: two
/// tokens of one SoftHSM2 module (one module instance, `C_Initialize`d once
/// per process), offload dispatch; the second token's URI moves from key 01
/// to key 02. The first token's partition opens no session (its login
/// session, worker threads and their sessions carry over to the reopened
/// store) and its key signs throughout; the second token is opened afresh
/// and serves its new key, its old one answers `0x02`. Proof that the first
/// token was not reopened: its worker threads are the same threads (ids
/// from `/proc`) before and after, while the second token's are new (a
/// reopened partition's sessions counter would restart at the same count,
/// so `keycore_pkcs11_sessions_opened_total` alone could not tell).
#[test]
fn a_changed_pkcs11_uri_reopens_only_its_own_token() {
    if !softhsm_available() {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = keycore_testsupport::softhsm_conf(dir.path());
    let kept = Token::init(&conf, "kept", "4321");
    kept.keypair("EC:prime256v1", "01", "kept");
    let changed = Token::init(&conf, "changed", "4321");
    changed.keypair("EC:prime256v1", "01", "old");
    changed.keypair("EC:prime256v1", "02", "new");
    let spki = |t: &Token, id: &str| {
        let der = t.public_key(dir.path(), id);
        (keycore_keys::ski_from_spki(&der).unwrap(), der)
    };
    let (kept_ski, kept_spki) = spki(&kept, "01");
    let (old_ski, old_spki) = spki(&changed, "01");
    let (new_ski, new_spki) = spki(&changed, "02");

    let s = setup(&[KeyKind::EcdsaP256]);
    let stores = |changed_id: &str| {
        let m = keycore_testsupport::SOFTHSM_MODULE;
        format!(
            "  - uri: \"pkcs11:token=kept?module-path={m}&pin-value=4321&x-dispatch=offload\"\n  - uri: \"pkcs11:token=changed;id=%{changed_id}?module-path={m}&pin-value=4321&x-dispatch=offload\"\n"
        )
    };
    let srv = serve()
        .env("SOFTHSM2_CONF", &conf)
        .env("KEYCORE_LOG", PathBuf::from("info"))
        .config(|p, m| s.yaml(p, m, "", &stores("01")))
        .start();
    let mut c = Client::connect(srv.addr).unwrap();
    assert!(verifies(&kept_spki, &sign(&mut c, 1, &kept_ski).unwrap()));
    assert!(verifies(&old_spki, &sign(&mut c, 2, &old_ski).unwrap()));
    assert_eq!(sign(&mut c, 3, &new_ski), Err(ErrorCode::KEY_NOT_FOUND));
    settled_sessions(&srv);
    let kept_label = "partition=\"kept/";
    let kept_sessions = srv.metric_where(SESSIONS_OPENED, kept_label);
    assert!(kept_sessions > 0);
    let kept_threads = threads(&srv, "p11-c0-p0-");
    let changed_threads = threads(&srv, "p11-c0-p1-");
    assert!(!kept_threads.is_empty() && !changed_threads.is_empty());

    s.write_config(&srv, "", &stores("02"));
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_OK, 1, Duration::from_secs(60));
    let t = Instant::now();
    while sign(&mut c, 4, &new_ski).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the changed URI's key is not served\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(verifies(&new_spki, &sign(&mut c, 5, &new_ski).unwrap()));
    assert_eq!(sign(&mut c, 6, &old_ski), Err(ErrorCode::KEY_NOT_FOUND));
    for id in 7..20 {
        assert!(verifies(&kept_spki, &sign(&mut c, id, &kept_ski).unwrap()));
    }
    assert_eq!(
        srv.metric_where(SESSIONS_OPENED, kept_label),
        kept_sessions,
        "the unchanged token opened sessions on reload\n{}",
        srv.scrape()
    );
    assert_eq!(
        threads(&srv, "p11-c0-p0-"),
        kept_threads,
        "the unchanged token's worker threads were replaced"
    );
    let now = threads(&srv, "p11-c0-p1-");
    assert!(
        now.iter().any(|t| !changed_threads.contains(t)),
        "the changed token got no new workers: {changed_threads:?} then {now:?}"
    );
    let log = srv.log();
    assert!(
        log.contains("PKCS#11 store reopened")
            && log.contains("kept=1")
            && log.contains("opened=1"),
        "{log}"
    );
}
