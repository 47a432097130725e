//! `keycore_in_flight` never leaks (issue 12 item 7): a connection reset
//! while its requests are with an off-reactor backend (PKCS#11 offload on a
//! SoftHSM2 token) gives its in-flight entries back.

use crate::support::{request, serve, Client, DIGEST};
use keycore_protocol::Op;
use keycore_testsupport::softhsm::{softhsm_available, Token};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keycore_testsupport::SOFTHSM_MODULE as MODULE;

/// A fresh SoftHSM2 token with one P-256 key; returns (conf, SPKI DER).
pub(crate) fn token(root: &Path) -> Option<(PathBuf, Vec<u8>)> {
    if !softhsm_available() {
        return None;
    }
    let conf = keycore_testsupport::softhsm_conf(root);
    let token = Token::init(&conf, "hostile", "4321");
    token.keypair("EC:prime256v1", "01", "ec");
    Some((conf, token.public_key(root, "01")))
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
    let srv = serve().stores(&store).env("SOFTHSM2_CONF", &conf).start();
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
