//! `/readyz` follows an HSM token (issue 14, "health and readiness"): 200
//! while the key's partition is up, 503 with a reason naming the PKCS#11
//! key while the token is gone, 200 again once it is back, and `/healthz`
//! stays 200 throughout (the reactor still answers: a missing token is not a
//! stuck core). The token is a real SoftHSM2 token behind hsmsim, whose
//! `token_removed` fault (no duration: it lasts while it is in the file)
//! makes every call answer `CKR_TOKEN_NOT_PRESENT` and drops the token from
//! `C_GetSlotList(tokenPresent)`.

use crate::support::{request, serve, Client, Server, DIGEST};
use keycore_protocol::Op;
use std::path::Path;
use std::time::{Duration, Instant};

/// One ECDSA sign on a fresh connection: did it come back signed? (Any
/// failure, including a refused connection, is "no".)
fn signs(srv: &Server, ski: &keycore_protocol::Ski) -> bool {
    let Ok(mut c) = Client::connect(srv.addr) else {
        return false;
    };
    if c.send(&request(7, Op::ECDSA_SIGN_SHA256, Some(ski), &DIGEST))
        .is_err()
    {
        return false;
    }
    matches!(c.recv(), Ok(Some((7, Op::RESPONSE, _))))
}

/// Poll `/readyz` (driving one sign per look, so the backend sees the token
/// state on the request path too) until it answers `want`; the last body.
fn wait_ready(srv: &Server, ski: &keycore_protocol::Ski, want: u16, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let _ = signs(srv, ski);
        if let Ok((status, body)) = srv.get("/readyz") {
            if status == want {
                return body;
            }
            assert!(
                t.elapsed() < limit,
                "/readyz still {status} ({body:?}) after {:?}, waiting for {want}",
                t.elapsed()
            );
        } else {
            assert!(t.elapsed() < limit, "/readyz did not answer");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sim_config(path: &Path, removed: bool) {
    let faults = if removed {
        r#", "faults": [{"kind": "token_removed"}]"#
    } else {
        ""
    };
    std::fs::write(
        path,
        format!(
            r#"{{"module": "{}"{faults}}}"#,
            keycore_testsupport::SOFTHSM_MODULE
        ),
    )
    .unwrap();
}

#[test]
fn readyz_follows_an_hsm_token_that_disappears_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some((conf, spki)) = crate::leak::token(dir.path()) else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let sim = dir.path().join("hsmsim.json");
    sim_config(&sim, false);
    let store = format!(
        "  - uri: \"pkcs11:token=hostile;id=%01?module-path={}&pin-value=4321\"\n",
        keycore_testsupport::hsmsim_module().display()
    );
    let srv = serve()
        .stores(&store)
        .env("SOFTHSM2_CONF", &conf)
        .env("KEYCORE_HSMSIM_CONFIG", &sim)
        .start();
    let ski = keycore_keys::ski_from_spki(&spki).unwrap();
    wait_ready(&srv, &ski, 200, Duration::from_secs(15));
    assert!(signs(&srv, &ski), "the token's key signs while ready");

    // The token goes away.
    sim_config(&sim, true);
    let why = wait_ready(&srv, &ski, 503, Duration::from_secs(30));
    assert!(
        why.contains("pkcs11"),
        "503 names the PKCS#11 store: {why:?}"
    );
    let health = srv.get("/healthz").expect("/healthz answers");
    assert_eq!(
        health.0, 200,
        "a missing token is not a stuck core: {health:?}"
    );

    // It comes back: ready again, and the key signs again.
    sim_config(&sim, false);
    wait_ready(&srv, &ski, 200, Duration::from_secs(30));
    let t = Instant::now();
    while !signs(&srv, &ski) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the key never signed again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
