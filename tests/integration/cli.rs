//! The `keycore` binary: `serve` reads a gokeyless.yaml unchanged, drains
//! and exits 0 on SIGTERM.

use crate::harness::{client, req, serve};
use std::process::Command;
use std::time::Duration;

#[test]
fn serve_reads_gokeyless_yaml_and_exits_0_on_sigterm() {
    let mut srv = serve().start();
    let r = client(&srv)
        .call(&req(keycore_protocol::Op::PING, None, b"cli"))
        .unwrap();
    assert_eq!(r.opcode, keycore_protocol::Op::PONG);
    // Exits 0 within the limit, or `stop` panics with the log.
    srv.stop(Duration::from_secs(15));
}

#[test]
fn bad_config_value_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gokeyless.yaml");
    std::fs::write(&cfg, "loglevel: 1\nport: not-a-port\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["serve", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gokeyless.yaml:2") && err.contains("port"),
        "{err}"
    );
}

/// `keycore serve -o` through the real binary: every setting (KMS and
/// PKCS#11 tunables included) with its source; secrets only with
/// `--show-secrets`.
#[test]
fn output_config_shows_every_source_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gokeyless.yaml");
    std::fs::write(
        &cfg,
        "port: 12407\nprivate_key_stores:\n  - uri: pkcs11:token=t;id=%01?module-path=/m.so&pin-value=98765\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
            .current_dir(dir.path())
            .args(["serve", "-c"])
            .arg(&cfg)
            .args(["--idle-timeout", "45s"])
            .args(extra)
            .env("KEYCORE_AWS_MAX_RPS", "300")
            .env("KEYLESS_ORIGIN_CA_API_KEY", "v1.0-very-secret")
            .env("KEYLESS_AUTH_CERT", &cfg) // present, so registration is not attempted
            .env("KEYLESS_AUTH_KEY", &cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&["-o"]);
    for want in [
        "port: 12407  # ",
        "idle_timeout: \"45s\"  # flag --idle-timeout",
        "kms_aws_max_rps: 300  # env KEYCORE_AWS_MAX_RPS",
        "origin_ca_api_key: \"<redacted>\"  # env KEYLESS_ORIGIN_CA_API_KEY",
        "pkcs11_sessions_per_core: 2  # default",
        "kms_verify: true  # default",
        "pin-value=<redacted>",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(
        out.contains("gokeyless.yaml:1") && out.contains("gokeyless.yaml:2"),
        "{out}"
    );
    assert!(
        !out.contains("98765") && !out.contains("very-secret"),
        "{out}"
    );
    let shown = run(&["-o", "--show-secrets"]);
    assert!(shown.contains("pin-value=98765") && shown.contains("v1.0-very-secret"));
}

/// `keycore serve` with cloud keys named in gokeyless.yaml (an Azure Key
/// Vault key URL and an AWS KMS ARN), credentials and endpoints from the
/// environment as an operator sets them, against the local stand-ins.
#[test]
fn serve_with_cloud_keys_from_gokeyless_yaml() {
    use keycore_kmssim::{KeyType, Sim};
    let sim = Sim::start().unwrap();
    sim.azure_client_secret("tenant-1", "client-1", "s3cret");
    sim.aws_access_key("AKIDCLI", "cli-secret");
    let (az_uri, az_key) = sim
        .azure_key("kv-cli", false, "tls-rsa", KeyType::Rsa2048)
        .unwrap();
    let (aws_uri, aws_key) = sim.aws_key("eu-west-1", KeyType::EcP256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = &keycore_testsupport::pki::shared().pki;
    let ca = sim.write_ca(dir.path()).unwrap();
    let mut srv = serve()
        .config(|port, _| {
            format!(
                "port: {port}\nmetrics_port: 0\nlisten_address: 127.0.0.1\ncores: 1\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - uri: {az_uri}\n  - uri: {aws_uri}\n",
                pki.server_cert.display(),
                pki.server_key.display(),
                pki.ca_cert.display(),
            )
        })
        .no_metrics_wait()
        .env("KEYCORE_KMS_CA_FILE", &ca)
        .env("KEYCORE_AZURE_ENDPOINT", &sim.https_url)
        .env("KEYCORE_AZURE_AUTHORITY", &sim.https_url)
        .env("KEYCORE_AWS_KMS_ENDPOINT", &sim.https_url)
        .env("AZURE_TENANT_ID", "tenant-1")
        .env("AZURE_CLIENT_ID", "client-1")
        .env("AZURE_CLIENT_SECRET", "s3cret")
        .env("AWS_ACCESS_KEY_ID", "AKIDCLI")
        .env("AWS_SECRET_ACCESS_KEY", "cli-secret")
        .start();
    let mut c = client(&srv);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"cloud");
    for (op, spki, md, pss) in [
        (
            keycore_protocol::Op::RSA_PSS_SIGN_SHA256,
            &az_key.spki,
            "sha256",
            true,
        ),
        (
            keycore_protocol::Op::RSA_SIGN_SHA256,
            &az_key.spki,
            "sha256",
            false,
        ),
        (
            keycore_protocol::Op::ECDSA_SIGN_SHA256,
            &aws_key.spki,
            "sha256",
            false,
        ),
    ] {
        let ski = keycore_keys::ski_from_spki(spki).unwrap();
        let r = c.call(&req(op, Some(&ski), d.as_ref())).unwrap();
        assert_eq!(
            r.opcode,
            keycore_protocol::Op::RESPONSE,
            "{op:?}: {:?}",
            r.error_code()
        );
        assert!(
            crate::harness::openssl_verify(spki, d.as_ref(), &r.payload, Some(md), pss),
            "{op:?}"
        );
    }
    srv.stop(Duration::from_secs(30));
}
