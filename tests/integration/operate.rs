//! What a service manager and an orchestrator see of a real `keycore serve`
//! process: `serve --check`, `/healthz` and `/readyz` on the metrics
//! listener, the pid file (never through a planted symlink), systemd's
//! `READY=1`/`STOPPING=1`, and log lines without ANSI codes (text) or as JSON.

use crate::harness::serve;
use keycore_testsupport::server::{free_port, standard_config};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

#[test]
fn serve_check_passes_a_complete_config_and_fails_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("gokeyless.yaml");
    std::fs::write(&cfg, standard_config(port, 0, "", "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["serve", "--check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("OK     key ECDSA P-256"), "{text}");
    assert!(text.contains("PASSED: "), "{text}");
    // --check binds nothing: the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("--check left the port free");

    // The defaults (no key store, server.pem in the working directory):
    // what an unfilled sample config gives. Run from an empty directory.
    let empty = tempfile::tempdir().unwrap();
    let p = empty.path().join("gokeyless.yaml");
    std::fs::write(&p, "# nothing filled in yet\nloglevel: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .current_dir(empty.path())
        .args(["serve", "--check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL   tls") && text.contains("server.pem"),
        "{text}"
    );
    assert!(text.contains("FAIL   private_key_stores"), "{text}");
}

#[test]
fn probes_pid_file_notify_and_json_logs_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    // A planted symlink at the pid file's name must not be followed.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid_file = dir.path().join("keycore.pid");
    std::os::unix::fs::symlink(&victim, &pid_file).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Not waited for by the fixture: READY=1 is the readiness signal here.
    let mut srv = serve()
        .yaml(&format!(
            "pid_file: {}\nlog_format: json\n",
            pid_file.display()
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(
        msg.contains(&format!("MAINPID={}", srv.child.id())),
        "{msg}"
    );

    // Ready means listening: probes answer at once.
    let (status, h) = srv.get("/healthz").expect("metrics listener up at READY");
    assert!(status == 200 && h.contains("core 0: ok"), "{status} {h}");
    let (status, r) = srv.get("/readyz").unwrap();
    assert!(status == 200 && r.ends_with("ready\n"), "{status} {r}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(std::fs::symlink_metadata(&pid_file)
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        srv.child.id().to_string()
    );

    srv.signal(libc::SIGTERM);
    let n = notify.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let status = srv
        .wait_exit(Duration::from_secs(20))
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "pid file removed on exit");
    let err = srv.log();
    assert!(!err.contains('\u{1b}'), "ANSI escape in logs: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    assert!(err.contains("\"message\":\"serving\""), "{err}");
}

#[test]
fn text_logs_to_a_pipe_have_no_ansi_codes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gokeyless.yaml");
    // A bad value: serve logs nothing but the error; a warning comes first.
    std::fs::write(
        &p,
        "loglevel: 1\nno_such_key: 1\nport: 0\nmetrics_port: 0\nauth_cert: /nonexistent\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["serve", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("WARN") && err.contains("no_such_key"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped logs: {err:?}"
    );
}
