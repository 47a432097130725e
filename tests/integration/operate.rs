//! What a service manager and an orchestrator see of a real `keycore serve`
//! process: `serve --check`, `/healthz` and `/readyz` on the metrics
//! listener, the pid file (never through a planted symlink), systemd's
//! `READY=1`/`STOPPING=1`, and log lines without ANSI codes (text) or as JSON.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn config(dir: &Path, pki: &keycore_engine::pki::DemoPki, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "auth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nprivate_key_stores:\n  - dir: {}\nlisten_address: 127.0.0.1\nmetrics_address: 127.0.0.1\ncores: 1\n{extra}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display(),
        pki.keys_dir.display()
    );
    let p = dir.join("gokeyless.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

#[test]
fn serve_check_passes_a_complete_config_and_fails_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = keycore_engine::pki::generate(dir.path()).unwrap();
    let port = free_port();
    let cfg = config(dir.path(), &pki, &format!("port: {port}\n"));
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
    let pki = keycore_engine::pki::generate(dir.path()).unwrap();
    let (port, mport) = (free_port(), free_port());
    // A planted symlink at the pid file's name must not be followed.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid_file = dir.path().join("keycore.pid");
    std::os::unix::fs::symlink(&victim, &pid_file).unwrap();
    let cfg = config(
        dir.path(),
        &pki,
        &format!(
            "port: {port}\nmetrics_port: {mport}\npid_file: {}\nlog_format: json\n",
            pid_file.display()
        ),
    );
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keycore"))
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", child.id())), "{msg}");

    // Ready means listening: probes answer at once.
    let h = get(mport, "/healthz").expect("metrics listener up at READY");
    assert!(
        h.starts_with("HTTP/1.1 200 OK") && h.contains("core 0: ok"),
        "{h}"
    );
    let r = get(mport, "/readyz").unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ready\n"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(std::fs::symlink_metadata(&pid_file)
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        child.id().to_string()
    );

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "pid file removed on exit");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
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
