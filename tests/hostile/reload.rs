//! Reload (issue 14) against the real `keycore serve` process: SIGHUP and
//! `keycore reload`. Under load, a key is added, another removed and the
//! server certificate rotated with no request failing; established
//! connections keep working and see the new keys, new connections get the
//! new certificate. A reload that cannot load everything (bad YAML, a broken
//! key file, a wrong PKCS#11 PIN) changes nothing, is counted and logged
//! with the file or URI. Timings are limits, not benchmarks.

use crate::support::{pki, request, serve, Client, Server, DIGEST};
use keycore_keys::KeyKind;
use keycore_protocol::{ErrorCode, Op, Ski};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shared PKI's key file of `kind`.
fn key_file(kind: KeyKind) -> PathBuf {
    pki().key_file(kind).to_path_buf()
}

fn ski_of(kind: KeyKind) -> Ski {
    crate::support::ski(kind)
}

/// Copy `from` to `to` through a temporary name and a rename, so a reader
/// never sees half a file.
pub(crate) fn put(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A test directory: `keys/` holding copies of `kinds`, the server
/// certificate and key copied (so the test may replace them).
pub(crate) struct Setup {
    dir: tempfile::TempDir,
    pub(crate) keys: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

pub(crate) fn setup(kinds: &[KeyKind]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    for &k in kinds {
        let f = key_file(k);
        put(&f, &keys.join(f.file_name().unwrap()));
    }
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server-key.pem");
    put(&pki().pki.server_cert, &cert);
    put(&pki().pki.server_key, &key);
    Setup {
        dir,
        keys,
        cert,
        key,
    }
}

impl Setup {
    /// The config file text: `extra` lines, then the key stores (the keys
    /// directory and `stores` lines).
    pub(crate) fn yaml(&self, port: u16, mport: u16, extra: &str, stores: &str) -> String {
        format!(
            "loglevel: 1\nport: {port}\nmetrics_port: {mport}\nmetrics_address: 127.0.0.1\nlisten_address: 127.0.0.1\ncores: 1\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\npid_file: {}\n{extra}private_key_stores:\n  - dir: {}\n{stores}",
            self.cert.display(),
            self.key.display(),
            pki().pki.ca_cert.display(),
            self.dir.path().join("keycore.pid").display(),
            self.keys.display()
        )
    }

    /// Start a server on this setup, logging at info to its log file (the
    /// setup, holding the directory, must outlive it).
    fn start(self, env: &[(&str, &Path)]) -> (Server, Setup) {
        let info = PathBuf::from("info");
        let mut serve = serve();
        for (k, v) in env {
            serve = serve.env(k, v);
        }
        let srv = serve
            .env("KEYCORE_LOG", &info)
            .config(|p, m| self.yaml(p, m, "", ""))
            .start();
        (srv, self)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn pid(&self) -> PathBuf {
        self.root().join("keycore.pid")
    }

    /// Rewrite the server's config file (through a rename).
    pub(crate) fn write_config(&self, srv: &Server, extra: &str, stores: &str) {
        let text = self.yaml(srv.addr.port(), srv.metrics.port(), extra, stores);
        let tmp = srv.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &srv.config).unwrap();
    }
}

/// Wait until `/metrics` shows `series` at `want` or more; panics after
/// `limit`.
pub(crate) fn wait_metric(srv: &Server, series: &str, want: u64, limit: Duration) {
    let t = Instant::now();
    loop {
        if let Err(e) = std::net::TcpStream::connect(srv.metrics) {
            panic!(
                "metrics listener gone ({e}); the server's log:\n{}",
                srv.log()
            );
        }
        let v = srv.metric(series);
        if v >= want {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "{series} stayed at {v} (want {want}) for {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) const RELOAD_OK: &str = "keycore_reload_total{result=\"ok\"}";
pub(crate) const RELOAD_ERROR: &str = "keycore_reload_total{result=\"error\"}";

/// One key operation on `c`: (answer opcode, payload).
fn op(c: &mut Client, id: u32, kind: KeyKind) -> (Op, Vec<u8>) {
    let (opcode, input): (Op, &[u8]) = match kind {
        KeyKind::EcdsaP256 => (Op::ECDSA_SIGN_SHA256, &DIGEST),
        KeyKind::EcdsaP384 => (Op::ECDSA_SIGN_SHA384, &[9u8; 48]),
        KeyKind::Ed25519 => (Op::ED25519_SIGN, b"a message"),
        other => panic!("no op for {other:?} in this test"),
    };
    c.send(&request(id, opcode, Some(&ski_of(kind)), input))
        .unwrap();
    let (rid, rop, payload) = c.recv().unwrap().expect("an answer, not EOF");
    assert_eq!(rid, id);
    (rop, payload)
}

fn served(c: &mut Client, id: u32, kind: KeyKind) -> bool {
    match op(c, id, kind) {
        (Op::RESPONSE, _) => true,
        (Op::ERROR, p) if p == [ErrorCode::KEY_NOT_FOUND.0] => false,
        other => panic!("{kind:?}: unexpected answer {other:?}"),
    }
}

/// Wait (at most `limit`) until `kind` is served (`want`) or not on `c`:
/// a core takes a published reload up within its 20 ms control tick.
fn wait_served(c: &mut Client, kind: KeyKind, want: bool, limit: Duration) {
    let t = Instant::now();
    let mut id = 10_000;
    while served(c, id, kind) != want {
        assert!(
            t.elapsed() < limit,
            "{kind:?} still {} after {limit:?}",
            if want { "not served" } else { "served" }
        );
        id += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn peer_cert(c: &Client) -> Vec<u8> {
    c.tls.conn.peer_certificates().expect("server certificate")[0].to_vec()
}

fn first_cert_der(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .unwrap()
        .to_vec()
}

#[test]
fn reload_under_load_adds_and_removes_keys_and_rotates_the_certificate() {
    let (srv, paths) = setup(&[KeyKind::EcdsaP256, KeyKind::Ed25519]).start(&[]);
    let mut old = Client::connect(srv.addr).unwrap();
    let old_cert = peer_cert(&old);
    assert_eq!(old_cert, first_cert_der(&pki().pki.server_cert));
    assert!(served(&mut old, 1, KeyKind::Ed25519));
    assert!(!served(&mut old, 2, KeyKind::EcdsaP384));

    // Load: connections opened before the reload, each pipelining batches
    // of P-256 signatures and checking every answer. Bounded in time and
    // count.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(srv.addr).unwrap();
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ski = ski_of(KeyKind::EcdsaP256);
        load.push(std::thread::spawn(move || {
            let t = Instant::now();
            let mut id = 0u32;
            while !stop.load(Ordering::Relaxed)
                && t.elapsed() < Duration::from_secs(60)
                && id < 2_000_000
            {
                let mut wire = Vec::new();
                for i in 0..8 {
                    wire.extend(request(id + i, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST));
                }
                c.send(&wire).unwrap();
                for _ in 0..8 {
                    match c.recv() {
                        Ok(Some((_, Op::RESPONSE, p))) if !p.is_empty() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("load: failed answer {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                id += 8;
            }
        }));
    }
    let t = Instant::now();
    while ok.load(Ordering::Relaxed) < 200 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "load never got going"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Add P-384, remove Ed25519, rotate the server certificate (a new one
    // for localhost from the same CA, with the P-256 key).
    put(&key_file(KeyKind::EcdsaP384), &paths.keys.join("p384.key"));
    std::fs::remove_file(paths.keys.join("ed25519.key")).unwrap();
    let rotated = paths.root().join("rotated.pem");
    keycore_engine::pki::issue_site_cert(
        &pki().pki,
        &key_file(KeyKind::EcdsaP256),
        "keycore rotated server",
        77,
        &rotated,
    )
    .unwrap();
    put(&rotated, &paths.cert);
    put(&key_file(KeyKind::EcdsaP256), &paths.key);
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_OK, 1, Duration::from_secs(20));
    let at_reload = ok.load(Ordering::Relaxed);

    // The established connection serves the new key set.
    wait_served(&mut old, KeyKind::EcdsaP384, true, Duration::from_secs(2));
    assert!(
        !served(&mut old, 20, KeyKind::Ed25519),
        "removed key answers 0x02"
    );
    assert!(served(&mut old, 21, KeyKind::EcdsaP256));
    old.ping(b"still here").unwrap();
    assert_eq!(
        peer_cert(&old),
        old_cert,
        "an established session is untouched"
    );

    // A new connection gets the rotated certificate and the same keys.
    let mut new = Client::connect(srv.addr).unwrap();
    assert_eq!(peer_cert(&new), first_cert_der(&rotated));
    assert_ne!(peer_cert(&new), old_cert);
    assert!(served(&mut new, 1, KeyKind::EcdsaP384));
    assert!(!served(&mut new, 2, KeyKind::Ed25519));

    // Load went on across the reload without a single failure.
    let t = Instant::now();
    while ok.load(Ordering::Relaxed) < at_reload + 200 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "load stalled after the reload"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert_eq!(srv.metric(RELOAD_ERROR), 0, "{}", srv.log());
    assert!(srv.metric("keycore_config_last_reload_success_timestamp_seconds") > 1_700_000_000);
    let log = srv.log();
    assert!(log.contains("reload applied"), "{log}");
}

#[test]
fn failed_reloads_keep_the_old_state_serving_and_are_counted() {
    let token_dir = tempfile::tempdir().unwrap();
    let token = crate::leak::token(token_dir.path());
    let env: Vec<(&str, &Path)> = match &token {
        Some((conf, _)) => vec![("SOFTHSM2_CONF", conf.as_path())],
        None => {
            eprintln!("softhsm2 / pkcs11-tool not installed: the wrong-PIN case is skipped");
            Vec::new()
        }
    };
    let (srv, paths) = setup(&[KeyKind::EcdsaP256]).start(&env);
    let mut c = Client::connect(srv.addr).unwrap();
    assert!(served(&mut c, 1, KeyKind::EcdsaP256));
    let mut errors = 0;

    // 1. The config file is not YAML any more.
    std::fs::write(&srv.config, "port: [2407\nauth_cert: {\n").unwrap();
    srv.signal(libc::SIGHUP);
    errors += 1;
    wait_metric(&srv, RELOAD_ERROR, errors, Duration::from_secs(20));

    // 2. A good config, a new key in the directory, and a key file that
    // cannot be read: all or nothing, so the new key is not served either.
    put(&key_file(KeyKind::EcdsaP384), &paths.keys.join("p384.key"));
    let broken = paths.root().join("broken.key");
    std::fs::write(
        &broken,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    paths.write_config(&srv, "", &format!("  - file: {}\n", broken.display()));
    srv.signal(libc::SIGHUP);
    errors += 1;
    wait_metric(&srv, RELOAD_ERROR, errors, Duration::from_secs(20));

    // 3. A PKCS#11 token with the wrong PIN.
    let uri = |pin: &str| {
        format!(
            "  - uri: \"pkcs11:token=hostile;id=%01?module-path={}&pin-value={pin}\"\n",
            keycore_testsupport::SOFTHSM_MODULE
        )
    };
    if token.is_some() {
        paths.write_config(&srv, "", &uri("0000"));
        srv.signal(libc::SIGHUP);
        errors += 1;
        wait_metric(&srv, RELOAD_ERROR, errors, Duration::from_secs(30));
    }

    // Through all of it: nothing applied, the old keys serve, on the
    // established connection and on a new one.
    assert_eq!(srv.metric(RELOAD_OK), 0);
    std::thread::sleep(Duration::from_millis(100)); // > 2 control ticks
    for conn in [&mut c, &mut Client::connect(srv.addr).unwrap()] {
        assert!(served(conn, 2, KeyKind::EcdsaP256));
        assert!(
            !served(conn, 3, KeyKind::EcdsaP384),
            "half a reload was applied"
        );
    }
    let log = srv.log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains(&broken.display().to_string()),
        "the log names the key file: {log}"
    );
    if token.is_some() {
        assert!(
            log.contains("pkcs11:token=hostile"),
            "the log names the URI: {log}"
        );
        assert!(
            !log.contains("pin-value=0000"),
            "a PIN reached the log: {log}"
        );
    }

    // 4. Fixed: the new key (and the token's key, with the right PIN) serve.
    let stores = if token.is_some() {
        uri("4321")
    } else {
        String::new()
    };
    paths.write_config(&srv, "", &stores);
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_OK, 1, Duration::from_secs(30));
    wait_served(&mut c, KeyKind::EcdsaP384, true, Duration::from_secs(2));
    assert_eq!(srv.metric(RELOAD_ERROR), errors);
    if let Some((_, spki)) = &token {
        let ski = keycore_keys::ski_from_spki(spki).unwrap();
        c.send(&request(50, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST))
            .unwrap();
        let r = c.recv().unwrap().unwrap();
        assert_eq!((r.0, r.1), (50, Op::RESPONSE), "the token's key serves");
        // 5. Reloading the same token again keeps its store (sessions) open.
        srv.signal(libc::SIGHUP);
        wait_metric(&srv, RELOAD_OK, 2, Duration::from_secs(30));
        let log = srv.log();
        assert!(log.contains("kept open: pkcs11"), "{log}");
        // 6. A wrong new PIN for the token that is open and logged in: this
        // process's C_Login would answer "already logged in" to any PIN, so
        // the reload checks it in a fresh process and refuses it.
        paths.write_config(&srv, "", &uri("0000"));
        srv.signal(libc::SIGHUP);
        errors += 1;
        wait_metric(&srv, RELOAD_ERROR, errors, Duration::from_secs(60));
        assert_eq!(srv.metric(RELOAD_OK), 2);
        c.send(&request(51, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST))
            .unwrap();
        let r = c.recv().unwrap().unwrap();
        assert_eq!(
            (r.0, r.1),
            (51, Op::RESPONSE),
            "the open token keeps serving"
        );
        let log = srv.log();
        assert!(log.contains("wrong PIN"), "{log}");
        assert!(
            !log.contains("pin-value=0000"),
            "a PIN reached the log: {log}"
        );
    }
}

#[test]
fn keycore_reload_signals_the_pid_file_and_reports_restart_only_changes() {
    let (mut srv, paths) = setup(&[KeyKind::EcdsaP256]).start(&[]);
    let t = Instant::now();
    while !paths.pid().exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no pid file");
        std::thread::sleep(Duration::from_millis(10));
    }
    let config = srv.config.clone();
    let reload = || {
        Command::new(env!("CARGO_BIN_EXE_keycore"))
            .args(["reload", "--timeout-secs", "30", "-c"])
            .arg(&config)
            .output()
            .unwrap()
    };
    // A key added and a setting that needs a restart changed.
    put(&key_file(KeyKind::EcdsaP384), &paths.keys.join("p384.key"));
    paths.write_config(&srv, "idle_timeout: 7s\n", "");
    let out = reload();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reload applied"), "{stdout}");
    assert!(
        stdout.contains("NOT applied, need a restart: idle_timeout"),
        "{stdout}"
    );
    assert_eq!(
        srv.metric("keycore_config_restart_needed{setting=\"idle_timeout\"}"),
        1
    );
    let mut c = Client::connect(srv.addr).unwrap();
    wait_served(&mut c, KeyKind::EcdsaP384, true, Duration::from_secs(2));
    let log = srv.log();
    assert!(
        log.contains("needs a restart") && log.contains("idle_timeout"),
        "{log}"
    );

    // Server gone: its pid file is removed, and `keycore reload` says so.
    drop(c);
    srv.signal(libc::SIGTERM);
    assert!(srv.wait_exit(Duration::from_secs(20)).is_some());
    let out = reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("keycore.pid") && stderr.contains("cannot read"),
        "{stderr}"
    );

    // A stale pid file (a process that no longer exists) is refused too.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(paths.pid(), format!("{pid}\n")).unwrap();
    let out = reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("stale pid file"), "{stderr}");
}

#[test]
fn reload_watch_picks_up_an_added_and_a_removed_key_without_a_signal() {
    let s = setup(&[KeyKind::EcdsaP256]);
    let info = PathBuf::from("info");
    let srv = serve()
        .env("KEYCORE_LOG", &info)
        .config(|p, m| s.yaml(p, m, "reload_watch: 100ms\n", ""))
        .start();
    let mut c = Client::connect(srv.addr).unwrap();
    assert!(!served(&mut c, 1, KeyKind::EcdsaP384));
    put(&key_file(KeyKind::EcdsaP384), &s.keys.join("p384.key"));
    // Two looks (debounce) plus the reload and a control tick: well under 5 s.
    wait_served(&mut c, KeyKind::EcdsaP384, true, Duration::from_secs(5));
    std::fs::remove_file(s.keys.join("p384.key")).unwrap();
    wait_served(&mut c, KeyKind::EcdsaP384, false, Duration::from_secs(5));
    assert!(served(&mut c, 2, KeyKind::EcdsaP256));
    assert_eq!(srv.metric(RELOAD_ERROR), 0, "{}", srv.log());
    let ok = srv.metric(RELOAD_OK);
    assert!(
        (2..=4).contains(&ok),
        "one reload per change, give or take: {ok}"
    );
    assert!(
        srv.log().contains("reload_watch: files changed"),
        "{}",
        srv.log()
    );
}

/// Cloud keys through the local AWS KMS stand-in: a reload that adds a key
/// reopens the KMS store and serves it; a reload whose KMS endpoint cannot
/// be reached (here: the endpoint setting pointed at a closed port) fails
/// within `kms_startup_timeout` and the keys keep being served by the store
/// that was open.
#[test]
fn an_unreachable_kms_on_reload_keeps_the_cloud_keys_serving() {
    use keycore_kmssim::{KeyType, Sim};
    let sim = Sim::start().unwrap();
    sim.aws_access_key("AKIDRELOAD", "reload-secret");
    let (uri_a, key_a) = sim.aws_key("eu-west-1", KeyType::EcP256).unwrap();
    let (uri_b, key_b) = sim.aws_key("eu-west-1", KeyType::EcP256).unwrap();
    let s = setup(&[KeyKind::EcdsaP256]);
    let ca = sim.write_ca(s.root()).unwrap();
    let kms = |endpoint: &str| {
        format!("kms_aws_endpoint: {endpoint}\nkms_startup_timeout: 3s\nkms_attempt_timeout: 1s\n")
    };
    let live = kms(&sim.https_url);
    let dead = kms(&format!(
        "https://127.0.0.1:{}",
        keycore_testsupport::server::free_port()
    ));
    let info = PathBuf::from("info");
    let (id, secret) = (PathBuf::from("AKIDRELOAD"), PathBuf::from("reload-secret"));
    let env: [(&str, &Path); 4] = [
        ("KEYCORE_LOG", &info),
        ("KEYCORE_KMS_CA_FILE", &ca),
        ("AWS_ACCESS_KEY_ID", &id),
        ("AWS_SECRET_ACCESS_KEY", &secret),
    ];
    let store =
        |uris: &[&str]| -> String { uris.iter().map(|u| format!("  - uri: {u}\n")).collect() };
    let mut srv = serve().config(|p, m| s.yaml(p, m, &live, &store(&[&uri_a])));
    for (k, v) in env {
        srv = srv.env(k, v);
    }
    let srv = srv.start();
    let sign = |c: &mut Client, id: u32, spki: &[u8]| -> Op {
        let ski = keycore_keys::ski_from_spki(spki).unwrap();
        c.send(&request(id, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST))
            .unwrap();
        let r = c.recv().unwrap().unwrap();
        assert_eq!(r.0, id);
        r.1
    };
    let mut c = Client::connect(srv.addr).unwrap();
    assert_eq!(sign(&mut c, 1, &key_a.spki), Op::RESPONSE);
    assert_eq!(sign(&mut c, 2, &key_b.spki), Op::ERROR);

    // Add key B: the KMS store is reopened with both and B serves.
    s.write_config(&srv, &live, &store(&[&uri_a, &uri_b]));
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_OK, 1, Duration::from_secs(20));
    let t = Instant::now();
    while sign(&mut c, 3, &key_b.spki) != Op::RESPONSE {
        assert!(t.elapsed() < Duration::from_secs(2), "key B never served");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(srv.log().contains("opened: kms"), "{}", srv.log());

    // The service cannot be reached: refused, within the start-up timeout
    // (3 s) plus slack, and both keys keep serving from the open store.
    s.write_config(&srv, &dead, &store(&[&uri_a, &uri_b]));
    let t = Instant::now();
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_ERROR, 1, Duration::from_secs(15));
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(srv.metric(RELOAD_OK), 1);
    std::thread::sleep(Duration::from_millis(100)); // > 2 control ticks
    for (i, spki) in [&key_a.spki, &key_b.spki].into_iter().enumerate() {
        assert_eq!(sign(&mut c, 10 + i as u32, spki), Op::RESPONSE);
    }
    let log = srv.log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        !log.contains("reload-secret"),
        "a credential reached the log: {log}"
    );
}

/// Requests already with an off-reactor backend when a reload removes that
/// backend's store finish on the store they started on: a PKCS#11 token in
/// offload mode works through a pipelined batch while the reload drops its
/// URI. Every request is answered, each with a signature (read before the
/// swap) or `0x02` (read after it); none is lost or answered with a
/// backend error, and the in-flight gauge goes back to 0.
#[test]
fn in_flight_operations_finish_on_the_store_a_reload_removes() {
    let token_dir = tempfile::tempdir().unwrap();
    let Some((conf, spki)) = crate::leak::token(token_dir.path()) else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let s = setup(&[KeyKind::EcdsaP256]);
    let uri = format!(
        "  - uri: \"pkcs11:token=hostile;id=%01?module-path={}&pin-value=4321&x-dispatch=offload\"\n",
        keycore_testsupport::SOFTHSM_MODULE
    );
    let srv = serve()
        .env("SOFTHSM2_CONF", &conf)
        .config(|p, m| s.yaml(p, m, "", &uri))
        .start();
    let ski = keycore_keys::ski_from_spki(&spki).unwrap();
    let mut c = Client::connect(srv.addr).unwrap();
    let n = 3000u32;
    let mut wire = Vec::new();
    for id in 1..=n {
        wire.extend(request(id, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST));
    }
    let sender = std::thread::spawn(move || {
        c.send(&wire).unwrap();
        c
    });
    // Reload as soon as the token has work in flight.
    let t = Instant::now();
    while srv.metric("keycore_in_flight") == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    s.write_config(&srv, "", "");
    srv.signal(libc::SIGHUP);
    let mut c = sender.join().unwrap();
    let (mut signed, mut gone) = (0u32, 0u32);
    let mut seen = vec![false; n as usize + 1];
    for _ in 0..n {
        let (id, op, payload) = c.recv().unwrap().expect("an answer for every request");
        assert!(
            !std::mem::replace(&mut seen[id as usize], true),
            "answered twice: {id}"
        );
        match op {
            Op::RESPONSE if !payload.is_empty() => signed += 1,
            Op::ERROR if payload == [ErrorCode::KEY_NOT_FOUND.0] => gone += 1,
            other => panic!("request {id}: {other:?} {payload:?}"),
        }
    }
    eprintln!("signed {signed}, key not found {gone}");
    assert!(signed > 0);
    wait_metric(&srv, RELOAD_OK, 1, Duration::from_secs(20));
    // After the reload the token's key is gone for good.
    wait_served_ski(&mut c, &ski);
    let t = Instant::now();
    while srv.metric("keycore_in_flight") != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "in-flight gauge stuck"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (at most 2 s) until `ski` answers `0x02`.
fn wait_served_ski(c: &mut Client, ski: &Ski) {
    let t = Instant::now();
    let mut id = 90_000;
    loop {
        c.send(&request(id, Op::ECDSA_SIGN_SHA256, Some(ski), &DIGEST))
            .unwrap();
        let (_, op, p) = c.recv().unwrap().unwrap();
        if op == Op::ERROR && p == [ErrorCode::KEY_NOT_FOUND.0] {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "key still served");
        id += 1;
    }
}

/// An HSM whose login never comes back (the simulator delays `C_Login` by
/// 15 s) must not hang reload: the reload is refused at `reload_timeout`
/// (1 s here), the old keys keep serving, and while the hung call is still
/// out the next reload is refused at once with that reason.
#[test]
fn a_reload_hung_in_an_hsm_login_is_refused_at_reload_timeout() {
    let token_dir = tempfile::tempdir().unwrap();
    let Some((conf, _)) = crate::leak::token(token_dir.path()) else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let sim = token_dir.path().join("hsmsim.json");
    std::fs::write(
        &sim,
        format!(
            r#"{{"module": "{}", "latency": {{"functions": {{"C_Login": {{"fixed_us": 15000000}}}}}}}}"#,
            keycore_testsupport::SOFTHSM_MODULE
        ),
    )
    .unwrap();
    let s = setup(&[KeyKind::EcdsaP256]);
    let info = PathBuf::from("info");
    let srv = serve()
        .env("SOFTHSM2_CONF", &conf)
        .env("KEYCORE_HSMSIM_CONFIG", &sim)
        .env("KEYCORE_LOG", &info)
        .config(|p, m| s.yaml(p, m, "reload_timeout: 1s\n", ""))
        .start();
    let uri = format!(
        "  - uri: \"pkcs11:token=hostile;id=%01?module-path={}&pin-value=4321\"\n",
        keycore_testsupport::hsmsim_module().display()
    );
    s.write_config(&srv, "reload_timeout: 1s\n", &uri);
    let t = Instant::now();
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_ERROR, 1, Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let mut c = Client::connect(srv.addr).unwrap();
    assert!(served(&mut c, 1, KeyKind::EcdsaP256));
    // The login is still hung (15 s): the next reload is refused at once.
    srv.signal(libc::SIGHUP);
    wait_metric(&srv, RELOAD_ERROR, 2, Duration::from_secs(5));
    assert_eq!(srv.metric(RELOAD_OK), 0);
    let log = srv.log();
    assert!(
        log.contains("did not finish within reload_timeout"),
        "{log}"
    );
    assert!(log.contains("still waiting on a key store call"), "{log}");
}
