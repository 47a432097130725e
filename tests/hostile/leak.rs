//! `keycore_in_flight` never leaks (issue 12 item 7): a connection reset
//! while its requests are with an off-reactor backend (PKCS#11 offload on a
//! SoftHSM2 token) gives its in-flight entries back.

use crate::support::{request, Client, Server, DIGEST};
use keycore_protocol::Op;
use keycore_testsupport::run_ok as run;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keycore_testsupport::SOFTHSM_MODULE as MODULE;

/// A fresh SoftHSM2 token with one P-256 key; returns (conf, SPKI DER).
pub(crate) fn token(root: &Path) -> Option<(PathBuf, Vec<u8>)> {
    if !Path::new(MODULE).exists() || Command::new("pkcs11-tool").arg("--help").output().is_err() {
        return None;
    }
    let conf = keycore_testsupport::softhsm_conf(root);
    run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "hostile"])
        .args(["--so-pin", "1111", "--pin", "4321"]));
    let tool = |args: &[&str]| {
        let mut c = Command::new("pkcs11-tool");
        c.env("SOFTHSM2_CONF", &conf)
            .args(["--module", MODULE, "--token-label", "hostile"])
            .args(["--login", "--pin", "4321"])
            .args(args);
        c
    };
    run(&mut tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "ec",
    ]));
    let pubder = root.join("ec.pub.der");
    run(tool(&["--read-object", "--type", "pubkey", "--id", "01", "-o"]).arg(&pubder));
    Some((conf, std::fs::read(&pubder).unwrap()))
}

#[test]
fn in_flight_gauge_returns_to_zero_after_a_reset_with_offloaded_requests() {
    let dir = tempfile::tempdir().unwrap();
    let Some((conf, spki)) = token(dir.path()) else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let store = format!(
        "  - uri: \"pkcs11:token=hostile;id=%01?module-path={MODULE}&pin-value=4321&x-dispatch=offload\"\n"
    );
    let srv = Server::start_with("", &store, &[("SOFTHSM2_CONF", &conf)]);
    let ski = keycore_keys::ski_from_spki(&spki).unwrap();
    for round in 0..3 {
        let mut c = Client::connect(srv.addr).unwrap();
        let mut wire = Vec::new();
        for id in 1..=300 {
            wire.extend(request(id, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST));
        }
        c.send(&wire).unwrap();
        // Reset (not a clean close) while the token works on them.
        socket2::SockRef::from(&c.tls.sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        let t = Instant::now();
        loop {
            let open = srv.metric("keycore_connections_open");
            let in_flight = srv.metric("keycore_in_flight");
            if open == 0 && in_flight == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: keycore_in_flight {in_flight} with {open} connections open"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The token still answers on a fresh connection.
    let mut c = Client::connect(srv.addr).unwrap();
    c.send(&request(9, Op::ECDSA_SIGN_SHA256, Some(&ski), &DIGEST))
        .unwrap();
    let r = c.recv().unwrap().unwrap();
    assert_eq!((r.0, r.1), (9, Op::RESPONSE));
}
