//! The PKCS#11 path under sustained faults at load (issue 19), short enough
//! for CI: hsmsim (the network-HSM simulator, a real PKCS#11 module over
//! SoftHSM2) with issue 19's latency and capacity, each fault kind alone and
//! all four together, 64 requests in flight on one reactor for
//! [`ROW`] each, every signature verified.
//!
//! The limits asserted are the issue's targets, loosened only where a busy
//! CI machine makes a ratio noisy (throughput): errors no higher than the
//! non-recoverable part of what was injected (a hung call is one error, a
//! device error retried on another session is none), every quarter second
//! has answers, the partition is never taken out. The long version with the
//! real server and an independent load client is
//! `scripts/pkcs11-faults-at-load.sh` (figures in docs/pkcs11/README.md).
//!
//! A separate test binary: hsmsim loads SoftHSM itself, and SOFTHSM2_CONF /
//! KEYCORE_HSMSIM_CONFIG are read once per process.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use keycore_keys::{Backend, StoreId};
use keycore_pkcs11::{DispatchMode, KeyRef, PartitionHealth, Pkcs11Options, Pkcs11Store};
use keycore_protocol::{Hash, OpClass};
use keycore_testsupport::softhsm::Token;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const PIN: &str = "2222";
/// Length of one load row.
const ROW: Duration = Duration::from_millis(1500);
/// Requests in flight (issue 19: 4 connections x 16).
const INFLIGHT: usize = 64;
/// Issue 19's simulator settings, with a fast reload for live switching.
const BASE: &str = r#""module": "/usr/lib/softhsm/libsofthsm2.so", "reload_interval_ms": 10,
    "rtt": {"fixed_us": 300}, "capacity": {"max_concurrent": 8},
    "latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 1000}}}"#;
const F_ERROR: &str =
    r#"{"kind": "error", "rv": "CKR_DEVICE_ERROR", "rate": 0.02, "functions": ["C_Sign"]}"#;
const F_LOGOUT: &str = r#"{"kind": "logout", "rate": 0.0005}"#;
const F_INVALIDATE: &str =
    r#"{"kind": "invalidate_sessions", "scope": "all", "after_ops": 1000, "max_fires": 3}"#;
/// Issue 19's hang is a network HSM's stall on the way (an HA client failing
/// over, a lost reply), so `"at": "network"`: it holds no crypto core. Held
/// in the device instead, 0.1% of ~7,000 calls/s each holding one of 8 cores
/// for 1.5 s is ~10 cores' worth: the simulated device itself runs out of
/// cores within the row and no server could answer (what made this row fail
/// intermittently on a quiet machine, where the rate is highest).
const F_HANG: &str = r#"{"kind": "hang", "at": "network", "duration_ms": 1500, "then_rv": "CKR_DEVICE_ERROR", "rate": 0.001, "functions": ["C_Sign"]}"#;

struct Env {
    _dir: tempfile::TempDir,
    sim_conf: PathBuf,
    store: Arc<Pkcs11Store>,
    key: KeyRef,
    spki: Vec<u8>,
}

static SERIAL: Mutex<()> = Mutex::new(());

/// The hsmsim cdylib cargo built for this run (found through cargo's
/// layout, not a fixed path).
fn sim_path() -> PathBuf {
    keycore_testsupport::hsmsim_module()
}

fn env() -> (MutexGuard<'static, ()>, &'static Env) {
    static E: OnceLock<Env> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let e = E.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let conf = keycore_testsupport::softhsm_conf(dir.path());
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let sim_conf = dir.path().join("hsmsim.json");
        std::fs::write(&sim_conf, format!("{{{BASE}}}")).unwrap();
        std::env::set_var("KEYCORE_HSMSIM_CONFIG", &sim_conf);
        Token::init(&conf, "faults", PIN).keypair("EC:prime256v1", "02", "ec");
        let uri = format!(
            "pkcs11:token=faults;id=%02?module-path={}&pin-value={PIN}&x-sessions-per-core=16&x-op-timeout=500ms",
            sim_path().display()
        );
        let opts = Pkcs11Options {
            dispatch: Some(DispatchMode::Offload),
            ..Pkcs11Options::default()
        };
        let (store, keys) = Pkcs11Store::open(&[uri], &opts, StoreId(0)).unwrap_or_else(|e| panic!("{e}"));
        let key = match keys[0].backend {
            Backend::Store(k) => KeyRef(k.key),
            _ => unreachable!(),
        };
        Env {
            _dir: dir,
            sim_conf,
            store: Arc::new(store),
            key,
            spki: keys[0].spki_der.clone(),
        }
    });
    (guard, e)
}

/// The public key bits of a P-256 SPKI (its last 65 bytes).
fn ec_point(spki: &[u8]) -> &[u8] {
    &spki[spki.len() - 65..]
}

/// What one row produced.
#[derive(Debug)]
struct Row {
    ok: u64,
    errors: u64,
    /// Successes per quarter second.
    buckets: Vec<u64>,
    health: PartitionHealth,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ok as f64 / ROW.as_secs_f64()
    }
}

/// Switch the simulator to `faults` (live reload) and drive [`INFLIGHT`]
/// requests for [`ROW`], verifying every signature.
fn load(e: &Env, faults: &[&str]) -> Row {
    std::fs::write(
        &e.sim_conf,
        format!("{{{BASE}, \"faults\": [{}]}}", faults.join(", ")),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(60)); // past the reload interval
    let store = e.store.clone();
    let key = e.key;
    let point = ec_point(&e.spki).to_vec();
    let (ok, errors, buckets) = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let core = Rc::new(store.core(0));
            let msg = b"keycore fault-at-load".to_vec();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &msg);
            let digest = digest.as_ref().to_vec();
            let start = Instant::now();
            let end = start + ROW;
            let nb = (ROW.as_millis() / 250) as usize + 1;
            let stats = Rc::new(RefCell::new((0u64, 0u64, vec![0u64; nb])));
            let tasks: Vec<_> = (0..INFLIGHT)
                .map(|_| {
                    let (core, stats, digest, msg, point) = (
                        core.clone(),
                        stats.clone(),
                        digest.clone(),
                        msg.clone(),
                        point.clone(),
                    );
                    glommio::spawn_local(async move {
                        let op = OpClass::Ecdsa(Hash::Sha256);
                        while Instant::now() < end {
                            let r = core.submit(key, op, &digest).await;
                            let mut s = stats.borrow_mut();
                            match r {
                                Ok(sig) => {
                                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
                                        .verify(&msg, &sig)
                                        .expect("a signature that does not verify");
                                    s.0 += 1;
                                    let b = (start.elapsed().as_millis() / 250) as usize;
                                    if let Some(x) = s.2.get_mut(b) {
                                        *x += 1;
                                    }
                                }
                                Err(_) => s.1 += 1,
                            }
                        }
                    })
                    .detach()
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let s = stats.borrow();
            (s.0, s.1, s.2[..nb - 1].to_vec())
        })
        .unwrap()
        .join()
        .unwrap();
    std::fs::write(&e.sim_conf, format!("{{{BASE}}}")).unwrap();
    let row = Row {
        ok,
        errors,
        buckets,
        health: e.store.health().remove(0),
    };
    eprintln!("{faults:?}: {row:?}");
    row
}

/// Every quarter second had answers, and the partition stayed in use.
fn continuous(r: &Row, what: &str) {
    assert!(
        r.buckets.iter().all(|&b| b > 0),
        "{what}: a quarter second without answers: {r:?}"
    );
    assert!(r.health.healthy, "{what}: partition out at the end: {r:?}");
}

#[test]
fn device_errors_are_retried_on_another_session() {
    let (_g, e) = env();
    let clean = load(e, &[]);
    assert_eq!(clean.errors, 0, "{clean:?}");
    let before = e.store.health().remove(0);
    let r = load(e, &[F_ERROR]);
    continuous(&r, "2% CKR_DEVICE_ERROR");
    // A request fails only if three sessions in a row fail it (2% each).
    assert!(r.errors <= 2, "device errors reached clients: {r:?}");
    assert_eq!(
        r.health.failures, before.failures,
        "partition taken out: {r:?}"
    );
    assert_eq!(
        r.health.reinits, before.reinits,
        "module re-initialised for a session error: {r:?}"
    );
    // The issue's target is 90% (scripts/pkcs11-faults-at-load.sh measures
    // it); a CI machine shared with other jobs gets a looser floor.
    assert!(
        r.rate() >= 0.6 * clean.rate(),
        "throughput {:.0}/s with 2% device errors vs {:.0}/s without",
        r.rate(),
        clean.rate()
    );
}

#[test]
fn logout_is_one_login_and_requests_are_requeued() {
    let (_g, e) = env();
    let r = load(e, &[F_LOGOUT]);
    continuous(&r, "logout");
    assert_eq!(r.errors, 0, "a logout failed requests: {r:?}");
    // One logout while 64 requests are in flight on 16 sessions: the
    // affected requests are requeued, and the login is made exactly once
    // (not once per session or per request).
    let before = r.health.clone();
    let one = load(
        e,
        &[r#"{"kind": "logout", "after_ops": 300, "max_fires": 1}"#],
    );
    continuous(&one, "one logout");
    assert_eq!(one.errors, 0, "{one:?}");
    let logins = one.health.relogins - before.relogins;
    let affected = one.health.errors[4] - before.errors[4];
    assert_eq!(logins, 1, "{logins} logins for one logout: {one:?}");
    assert!(affected >= 1, "the logout touched no request: {one:?}");
}

#[test]
fn all_sessions_invalidated_costs_nothing() {
    let (_g, e) = env();
    let before = e.store.health().remove(0);
    let r = load(e, &[F_INVALIDATE]);
    continuous(&r, "invalidate_sessions");
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(
        r.health.reopens > before.reopens,
        "no session was rebuilt: {r:?}"
    );
    assert_eq!(
        r.health.failures, before.failures,
        "partition taken out: {r:?}"
    );
}

#[test]
fn a_hung_call_is_one_error() {
    let (_g, e) = env();
    let before = e.store.health().remove(0);
    let r = load(e, &[F_HANG]);
    continuous(&r, "hang");
    let hung = r.health.timeouts - before.timeouts;
    assert!(
        r.errors <= hung,
        "more errors ({}) than hung calls ({hung}): {r:?}",
        r.errors
    );
    assert_eq!(
        r.health.failures, before.failures,
        "partition taken out: {r:?}"
    );
}

#[test]
fn all_faults_together_serve_continuously() {
    let (_g, e) = env();
    let before = e.store.health().remove(0);
    let r = load(e, &[F_ERROR, F_LOGOUT, F_INVALIDATE, F_HANG]);
    continuous(&r, "all four faults");
    let hung = r.health.timeouts - before.timeouts;
    // Hung calls are one error each; the rest is recoverable. A small
    // allowance for a request that meets three bad sessions in a row.
    assert!(
        r.errors <= hung + 3,
        "errors {} above the hung calls {hung}: {r:?}",
        r.errors
    );
    assert!(r.ok > 0);
}
