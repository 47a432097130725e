//! Enrollment (issue 14) against the certificates API stand-in (kmssim's
//! `cfapi`, HTTPS, checking the JSON and the credential header, signing the
//! CSR with its test CA), with the real `keycore` binary: a wrong token
//! fails clearly and writes nothing; `serve` enrolls by itself when the
//! certificate is missing, then serves a real signature to a client that
//! trusts only the stand-in's CA; manual activation writes key and CSR.

use crate::harness::{openssl_verify, req, serve};
use keycore_keys::{software, KeyKind};
use keycore_loadgen::client::BlockingClient;
use keycore_loadgen::tls::{ClientTls, ClientTlsPaths, TlsOptions};
use keycore_protocol::Op;
use keycore_testsupport::server::free_port;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const HOST: &str = "keyless.enroll.test";

struct Setup {
    dir: tempfile::TempDir,
    pki: keycore_engine::pki::DemoPki,
    cfg: PathBuf,
    /// The text of `cfg`.
    yaml: String,
    port: u16,
}

impl Setup {
    fn new(sim: &keycore_kmssim::Sim) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pki = keycore_testsupport::pki::shared().pki.clone();
        let sim_ca = sim.write_ca(dir.path()).unwrap();
        let port = free_port();
        let yaml = format!(
            "hostname: {HOST}\nzone_id: zone-1\nauth_cert: {d}/server.pem\nauth_key: {d}/server-key.pem\n\
             auth_csr: {d}/server.csr\ncloudflare_ca_cert: {ca}\nprivate_key_stores:\n  - dir: {keys}\n\
             listen_address: 127.0.0.1\nport: {port}\nmetrics_port: 0\ncores: 1\n\
             enroll_endpoint: {url}/client/v4/certificates/\nenroll_ca_file: {sim_ca}\nenroll_timeout: 20s\n",
            d = dir.path().display(),
            ca = pki.ca_cert.display(),
            keys = pki.keys_dir.display(),
            url = sim.https_url,
            sim_ca = sim_ca.display(),
        );
        let cfg = dir.path().join("gokeyless.yaml");
        std::fs::write(&cfg, &yaml).unwrap();
        Setup {
            dir,
            pki,
            cfg,
            yaml,
            port,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn mode(p: &Path) -> u32 {
    let m = std::fs::symlink_metadata(p).unwrap();
    assert!(m.file_type().is_file(), "{}", p.display());
    m.permissions().mode() & 0o777
}

#[test]
fn enroll_against_the_stand_in_then_serve_signs_with_the_issued_certificate() {
    let sim = keycore_kmssim::Sim::start().unwrap();
    let api = &sim.state.cfapi;
    api.add_token("good-token-7f3a");
    api.add_zone("zone-1");
    let s = Setup::new(&sim);

    // A wrong token: a clear error naming the API's answer, nothing written,
    // the token nowhere in the output.
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["enroll", "-c"])
        .arg(&s.cfg)
        .env("KEYLESS_ENROLL_API_TOKEN", "wrong-token-91c2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("answered HTTP 403 Forbidden: code 10000: Authentication error"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-token-91c2"),
        "token in the output: {err}"
    );
    for f in ["server.pem", "server-key.pem", "server.csr"] {
        assert!(!s.path(f).exists(), "{f} written after a failed enrollment");
    }
    assert_eq!(keycore_kmssim::get(&api.auth_failures), 1);

    // `serve` with the right token and no certificate enrolls first, then
    // serves with what it wrote.
    let yaml = s.yaml.clone();
    let mut srv = serve()
        .port(s.port)
        .config(move |_, _| yaml)
        .no_metrics_wait()
        .env("KEYLESS_ENROLL_API_TOKEN", "good-token-7f3a")
        .deadline(Duration::from_secs(60))
        .start();
    assert_eq!(keycore_kmssim::get(&api.issued), 1);
    assert_eq!(mode(&s.path("server-key.pem")), 0o600);
    assert_eq!(mode(&s.path("server.csr")), 0o600);
    assert_eq!(mode(&s.path("server.pem")), 0o644);

    // A client trusting only the stand-in's CA, checking the hostname.
    let keyless_ca = s.path("keyless-ca.pem");
    std::fs::write(&keyless_ca, api.ca_pem().unwrap()).unwrap();
    let tls = ClientTls::from_paths(
        &ClientTlsPaths {
            ca: keyless_ca,
            cert: s.pki.client_cert.clone(),
            key: s.pki.client_key.clone(),
        },
        &TlsOptions {
            tls12_only: false,
            server_name: Some(HOST.into()),
        },
    )
    .unwrap();
    let mut c = BlockingClient::connect(srv.addr, &tls).expect("TLS with the enrolled certificate");
    let key = software::load_dir(&s.pki.keys_dir)
        .into_iter()
        .flatten()
        .find(|k| k.kind == KeyKind::EcdsaP256)
        .unwrap();
    let digest = [0x5au8; 32];
    let r = c
        .call(&req(Op::ECDSA_SIGN_SHA256, Some(&key.ski), &digest))
        .unwrap();
    assert_eq!(r.opcode, Op::RESPONSE, "{:?}", r.error_code());
    assert!(openssl_verify(
        &key.spki_der,
        &digest,
        &r.payload,
        Some("sha256"),
        false
    ));
    drop(c);

    let e = srv.stop(Duration::from_secs(30));
    assert!(
        e.contains("enrolled: certificate, key and CSR written"),
        "{e}"
    );
    assert!(
        !e.contains("good-token-7f3a") && !e.contains("PRIVATE KEY"),
        "{e}"
    );

    // The legacy service key still works, with a warning; --force replaces.
    api.add_service_key("v1.0-legacy-key");
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["enroll", "--force", "-c"])
        .arg(&s.cfg)
        .env("KEYLESS_ORIGIN_CA_API_KEY", "v1.0-legacy-key")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retired service keys on 2026-09-30"), "{err}");
    assert!(!err.contains("v1.0-legacy-key"), "{err}");
    assert_eq!(keycore_kmssim::get(&api.issued), 2);
}

#[test]
fn manual_activation_writes_key_and_csr_and_prints_the_csr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("g.yaml");
    std::fs::write(
        &cfg,
        format!(
            "hostname: {HOST}\nauth_cert: {d}/c.pem\nauth_key: {d}/k.pem\nauth_csr: {d}/r.csr\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["enroll", "--manual", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("r.csr")).unwrap(),
        stdout
    );
    assert_eq!(mode(&dir.path().join("k.pem")), 0o600);
    assert_eq!(mode(&dir.path().join("r.csr")), 0o600);
    assert!(!dir.path().join("c.pem").exists());
    // serve without a credential says what is missing instead of a bare
    // "file not found".
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["serve", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not exist and enrollment cannot run: zone_id, enroll_api_token"),
        "{err}"
    );
}
