//! `keycore plan` and the server-side `keycore tune` through the real binary.

use std::process::Command;

fn keycore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keycore"))
}

/// The README's worked example: 20,000 new handshakes/s, 70% ECDSA, 50% resumed, N+1,
/// headroom 2 — text with the arithmetic and sources, JSON, HTML; bad input refused.
#[test]
fn plan_prints_the_worked_example_with_arithmetic_and_sources() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("plan.html");
    let args = [
        "plan",
        "--handshakes-per-s",
        "20000",
        "--ecdsa-share",
        "0.7",
        "--resumption",
        "0.5",
        "--server-spares",
        "1",
        "--target",
        "software,aws-cloudhsm-hsm2m.medium,aws-kms",
    ];
    let out = keycore()
        .args(args)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "full handshakes = 20000 x (1 - 0.50 resumed) = 10000/s",
        "ECDSA P-256 signatures = 10000 x 0.70 = 7000/s",
        "14000 ECDSA P-256/s / 1167 + 6000 RSA-2048/s / 833 = 19.20",
        "HSMs = ceil(19.20, the largest constraint) + 1 spare = 21",
        "docs.aws.amazon.com/cloudhsm",
        "ASSUMED",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("aws-cloudhsm-hsm2m.medium") && page.contains("binding constraint"));
    let out = keycore().args(args).arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hsm = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "aws-cloudhsm-hsm2m.medium")
        .unwrap();
    assert_eq!(hsm["units"], 21);
    let out = keycore()
        .args(["plan", "--handshakes-per-s", "100", "--resumption", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumption ratio"));
}

/// Server-side sweep: one `keycore serve` per point (the file, then one setting changed), an
/// open-loop capacity search each, a recommendation with the YAML line the server printed, a
/// confirmation run, and no server left behind.
#[test]
fn tune_launches_a_server_per_point_recommends_and_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let pki = &keycore_testsupport::pki::shared().pki;
    let port = keycore_testsupport::server::free_port();
    let cfg = dir.path().join("gokeyless.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - dir: {}\ncores: 1\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca_cert.display(),
            pki.keys_dir.display()
        ),
    )
    .unwrap();
    let out = keycore()
        .arg("tune")
        .arg("--serve-config")
        .arg(&cfg)
        .args(["--set", "max_in_flight_per_connection=64"])
        .args(["--server", &format!("127.0.0.1:{port}")])
        .arg("--ca")
        .arg(&pki.ca_cert)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .arg("--keys")
        .arg(&pki.keys_dir)
        .args(["--server-name", "localhost", "--mix", "ecdsa-p256-sha256=1"])
        // Constant arrivals: a short step's Poisson count alone can miss the 95%-of-offered
        // rule; 1 s steps for the same reason.
        .args(["--connections", "2", "--arrivals", "constant"])
        .args(["--start-rate", "100", "--step-factor", "2"])
        .args([
            "--step-duration",
            "1",
            "--warmup",
            "0.2",
            "--max-steps",
            "3",
        ])
        .args([
            "--slo-p99-ms",
            "500",
            "--confirm",
            "--confirm-duration",
            "1",
        ])
        .arg("--json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("expected at most"), "{err}");
    assert!(
        err.contains("[2/2] max_in_flight_per_connection = 64"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert!(points[0]["change"].is_null());
    for p in points {
        assert!(p["error"].is_null(), "{p}");
        let steps = p["steps"].as_u64().unwrap();
        assert!((1..=3).contains(&steps), "{p}");
    }
    // On this shared machine a point's first step can miss (a stall of another engineer's
    // build); at least one point must have held a rate for there to be a recommendation.
    assert!(
        points
            .iter()
            .any(|p| p["capacity_per_s"].as_f64() >= Some(100.0)),
        "{points:?}\n{err}"
    );
    let rec = &v["recommended"];
    let yaml = rec["yaml"][0].as_str().unwrap();
    if rec["change"].is_null() {
        assert_eq!(yaml, "# keep the file's settings");
    } else {
        assert!(
            yaml.starts_with("max_in_flight_per_connection: 64"),
            "{yaml}"
        );
    }
    let c = &v["confirmation"];
    assert_eq!(c["predicted_per_s"], rec["capacity_per_s"]);
    let steps = c["steps"].as_array().unwrap();
    assert!((1..=3).contains(&steps.len()), "{c}");
    let first = steps[0]["offered_per_s"].as_f64().unwrap();
    let predicted = rec["capacity_per_s"].as_f64().unwrap();
    assert!((first - 0.9 * predicted).abs() < 1e-6, "{c}");
    // Every launched server was stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
