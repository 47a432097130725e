//! `keycore serve`'s path with keys in a real SoftHSM2 token: config with
//! `uri: pkcs11:` stores → launch → TLS → token, every signature verified;
//! responses out of order when an offloaded HSM key and a software key share
//! one connection.
//!
//! SoftHSM reads SOFTHSM2_CONF once per process at C_Initialize, so this
//! module sets up one configuration and token directory for the whole test
//! binary and serialises its tests.

use crate::harness::openssl_verify;
use keycore_engine::config;
use keycore_loadgen::client::BlockingClient;
use keycore_loadgen::tls::ClientTls;
use keycore_protocol::{Message, Op};
use keycore_testsupport::softhsm::{openssl_key, softhsm_available, Token};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use keycore_testsupport::SOFTHSM_MODULE as MODULE;
const PIN: &str = "4321";
static LOCK: Mutex<()> = Mutex::new(());

struct Hsm {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// (label, RSA public SPKI DER, EC public SPKI DER)
    token: (String, Vec<u8>, Vec<u8>),
}

fn hsm() -> Option<&'static Hsm> {
    static H: OnceLock<Option<Hsm>> = OnceLock::new();
    H.get_or_init(|| {
        if !softhsm_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let conf = keycore_testsupport::softhsm_conf(&root);
        // Before any C_Initialize in this process; nothing else reads it.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let label = "keycore-it";
        let token = Token::init(&conf, label, PIN);
        let mut spkis = Vec::new();
        for (name, id, algo) in [("rsa", "01", "rsa"), ("ec", "02", "ec")] {
            let key = openssl_key(&root, name, algo);
            token.import(&key, id, name);
            spkis.push(std::fs::read(&key.public_der).unwrap());
        }
        let ec = spkis.pop().unwrap();
        let rsa = spkis.pop().unwrap();
        Some(Hsm {
            _dir: dir,
            root,
            token: (label.to_string(), rsa, ec),
        })
    })
    .as_ref()
}

struct Served {
    running: Option<keycore_engine::launch::Running>,
    tls: ClientTls,
    pki: keycore_engine::pki::DemoPki,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().unwrap();
        }
    }
}

/// Launch through the config path, with the token's two keys (extra URI
/// query `extra`) and the demo's software keys.
fn serve(hsm: &Hsm, extra: &str) -> Served {
    serve_on(hsm, extra, 1)
}

fn serve_on(hsm: &Hsm, extra: &str, cores: usize) -> Served {
    serve_with(hsm, extra, cores, "")
}

/// [`serve_on`] with extra top-level YAML lines.
fn serve_with(hsm: &Hsm, extra: &str, cores: usize, more_yaml: &str) -> Served {
    let shared = keycore_testsupport::pki::shared();
    let pki = shared.pki.clone();
    let label = &hsm.token.0;
    let yaml = format!(
        "{more_yaml}port: 0\nmetrics_port: 0\nlisten_address: 127.0.0.1\ncores: {cores}\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - dir: {}\n  - uri: \"pkcs11:token={label};id=%01?module-path={MODULE}&pin-value={PIN}{extra}\"\n  - uri: \"pkcs11:token={label};object=ec?module-path={MODULE}&pin-value={PIN}{extra}\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display(),
        pki.keys_dir.display(),
    );
    let path = hsm.root.join("gokeyless.yaml");
    let loaded = config::from_yaml_str(&yaml, &path, &|_| None).unwrap();
    let running = keycore_engine::launch::launch(&loaded.config).expect("launch with PKCS#11 keys");
    Served {
        running: Some(running),
        tls: shared.client_tls(),
        pki,
    }
}

fn ski(spki: &[u8]) -> [u8; 20] {
    keycore_keys::ski_from_spki(spki).unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[test]
fn hsm_logins_are_audit_records_without_the_pin() {
    // Issue 18: the token's C_Login at start-up is an audit record (the
    // partition and the result); the PIN appears nowhere in the trail.
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(h) = hsm() else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let s = serve_with(h, "", 1, &format!("audit_file: {}\n", file.display()));
    drop(s);
    let text = std::fs::read_to_string(&file).unwrap();
    let logins: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"type\":\"hsm_login\""))
        .collect();
    assert!(!logins.is_empty(), "{text}");
    assert!(
        logins.iter().all(|l| l.contains("\"result\":\"ok\"")),
        "{text}"
    );
    assert!(
        text.contains("pin-value=<redacted>"),
        "key sources are redacted: {text}"
    );
    assert!(!text.contains(&format!("pin-value={PIN}")), "{text}");
}

#[test]
fn serve_signs_with_softhsm_keys_inline_and_offload() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(h) = hsm() else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    for extra in ["&x-dispatch=inline", "&x-dispatch=offload"] {
        let s = serve(h, extra);
        let addr = s.running.as_ref().unwrap().server.addr;
        let mut c = BlockingClient::connect(addr, &s.tls).unwrap();
        let (rsa_ski, ec_ski) = (ski(&h.token.1), ski(&h.token.2));
        let d = sha256(b"through the token");
        for (op, which, md, pss) in [
            (Op::RSA_SIGN_SHA256, &rsa_ski, "sha256", false),
            (Op::RSA_PSS_SIGN_SHA256, &rsa_ski, "sha256", true),
            (Op::ECDSA_SIGN_SHA256, &ec_ski, "sha256", false),
        ] {
            let r = c
                .call(&Message {
                    opcode: Some(op),
                    ski: Some(which),
                    payload: Some(&d),
                    ..Message::default()
                })
                .unwrap();
            assert_eq!(
                r.opcode,
                Op::RESPONSE,
                "{op:?} {extra}: {:?}",
                r.error_code()
            );
            let spki = if which == &rsa_ski {
                &h.token.1
            } else {
                &h.token.2
            };
            assert!(
                openssl_verify(spki, &d, &r.payload, Some(md), pss),
                "{op:?} {extra}"
            );
        }
    }
}

/// An offloaded HSM request and a software request pipelined in one write:
/// the software answer (computed inline) goes out first, the HSM answer when
/// its worker finishes; both matched by ID.
#[test]
fn responses_complete_out_of_order() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(h) = hsm() else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let s = serve(h, "&x-dispatch=offload");
    let addr = s.running.as_ref().unwrap().server.addr;
    let mut c = BlockingClient::connect(addr, &s.tls).unwrap();
    let sw = keycore_keys::software::load_dir(&s.pki.keys_dir)
        .into_iter()
        .map(|r| r.unwrap())
        .find(|e| e.kind == keycore_keys::KeyKind::EcdsaP256)
        .unwrap();
    let rsa_ski = ski(&h.token.1);
    let d = sha256(b"order");
    let mut buf = Vec::new();
    for i in 0..5u32 {
        Message {
            id: 100 + i,
            opcode: Some(Op::RSA_SIGN_SHA256),
            ski: Some(&rsa_ski),
            payload: Some(&d),
            ..Message::default()
        }
        .encode(&mut buf)
        .unwrap();
        Message {
            id: 200 + i,
            opcode: Some(Op::ECDSA_SIGN_SHA256),
            ski: Some(&sw.ski),
            payload: Some(&d),
            ..Message::default()
        }
        .encode(&mut buf)
        .unwrap();
    }
    c.send_raw(&buf).unwrap();
    let ids: Vec<u32> = (0..10)
        .map(|_| {
            let r = c.read_response().unwrap();
            assert_eq!(r.opcode, Op::RESPONSE, "id {}: {:?}", r.id, r.error_code());
            r.id
        })
        .collect();
    // Requests alternate HSM, software; the five software answers come first.
    assert_eq!(&ids[..5], &[200, 201, 202, 203, 204], "order seen: {ids:?}");
    let mut hsm_ids = ids[5..].to_vec();
    hsm_ids.sort();
    assert_eq!(hsm_ids, vec![100, 101, 102, 103, 104]);
}

#[test]
fn wrong_pin_is_a_startup_error_naming_the_uri() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(h) = hsm() else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = &keycore_testsupport::pki::shared().pki;
    let yaml = format!(
        "port: 0\nmetrics_port: 0\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - uri: \"pkcs11:token={};id=%01?module-path={MODULE}&pin-value=0000\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display(),
        h.token.0,
    );
    let loaded = config::from_yaml_str(&yaml, &dir.path().join("g.yaml"), &|_| None).unwrap();
    // The whole cause chain, as the binary prints it.
    let err =
        keycore_keys::error_chain(&keycore_engine::launch::launch(&loaded.config).unwrap_err());
    assert!(
        err.contains("pkcs11:token=keycore-it") && !err.contains("0000"),
        "{err}"
    );
}

/// Many connections spread over every core at once, each pipelining signs
/// on both token keys (inline and offload): every answer verified.
#[test]
fn many_connections_on_all_cores_at_once() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(h) = hsm() else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let cores = keycore_engine::server::available_cpus().len().max(2);
    for extra in ["&x-dispatch=inline", "&x-dispatch=offload"] {
        let s = serve_on(h, extra, cores);
        let addr = s.running.as_ref().unwrap().server.addr;
        let (rsa_ski, ec_ski) = (ski(&h.token.1), ski(&h.token.2));
        let d = sha256(b"many");
        std::thread::scope(|sc| {
            for t in 0..16 {
                let (tls, d, rsa_ski, ec_ski) = (&s.tls, &d, &rsa_ski, &ec_ski);
                sc.spawn(move || {
                    let mut c = BlockingClient::connect(addr, tls).unwrap();
                    let msgs: Vec<Message<'_>> = (0..20)
                        .map(|i| Message {
                            opcode: Some(if (i + t) % 2 == 0 {
                                Op::RSA_SIGN_SHA256
                            } else {
                                Op::ECDSA_SIGN_SHA256
                            }),
                            ski: Some(if (i + t) % 2 == 0 { rsa_ski } else { ec_ski }),
                            payload: Some(d),
                            ..Message::default()
                        })
                        .collect();
                    for (m, r) in msgs.iter().zip(c.pipeline(&msgs).unwrap()) {
                        assert_eq!(r.opcode, Op::RESPONSE, "{extra}: {:?}", r.error_code());
                        // Verify a sample with openssl (each check spawns a process).
                        if r.id % 5 == 0 {
                            let spki = if m.ski == Some(rsa_ski) {
                                &h.token.1
                            } else {
                                &h.token.2
                            };
                            assert!(openssl_verify(spki, d, &r.payload, Some("sha256"), false));
                        }
                    }
                });
            }
        });
        let reg = &s.running.as_ref().unwrap().server.registry;
        assert_eq!(reg.total_requests(), 16 * 20, "{extra}");
        // SO_REUSEPORT spreads 16 connections over the cores (all on one
        // core has probability 2^-15 with two cores).
        let busy = reg
            .cores
            .iter()
            .filter(|c| c.requests_by_op.iter().map(|x| x.get()).sum::<u64>() > 0)
            .count();
        assert!(busy >= 2, "{extra}: only {busy} core(s) served requests");
    }
}
