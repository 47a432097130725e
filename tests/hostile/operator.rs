//! Operator mistakes at start-up (issue 12 items 4, 9, 10, 13): a second
//! instance on the same address, a FIFO named like a key, a pid file that
//! cannot be written, a fixed `current_time`.

use crate::support::{serve, start, Client};
use std::time::{Duration, SystemTime};

#[test]
fn a_second_server_on_the_same_address_fails_at_start_up_naming_the_owner() {
    // Before: glommio's SO_REUSEPORT let the second one start, and the
    // kernel split connections between the two (27 of 40 got 0x02).
    let first = start("");
    let mut second = serve().port(first.addr.port()).spawn();
    let status = second
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the second server is still running:\n{}", second.log()));
    assert!(!status.success(), "{status:?}");
    let log = second.log();
    assert!(log.contains("address in use"), "{log}");
    assert!(
        log.contains(&format!("pid {} (keycore)", first.child.id())),
        "the owner's pid is named: {log}"
    );
    // `serve --check` on the second config says so too (a warning: --check
    // is often run beside the instance it will replace).
    let bin = std::env::var_os("KEYCORE_HOSTILE_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_keycore").into());
    let out = std::process::Command::new(bin)
        .args(["serve", "--check", "-c"])
        .arg(&second.config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.lines().any(|l| l.contains("listen")
            && l.contains("address in use")
            && l.contains(&format!("pid {}", first.child.id()))),
        "{text}"
    );
    // Every new connection still reaches the first server.
    for i in 0..40 {
        let mut c = Client::connect(first.addr).unwrap_or_else(|e| panic!("conn {i}: {e}"));
        c.ping(b"first").unwrap_or_else(|e| panic!("conn {i}: {e}"));
    }
}

#[test]
fn a_fifo_named_like_a_key_does_not_hang_start_up() {
    // Before: open(2) on the FIFO blocked start-up forever, even with
    // `key_load_errors: skip`.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("evil.key");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    let store = format!("  - dir: {}\n", dir.path().display());

    // skip: serves the other keys; the FIFO is logged and counted.
    let srv = serve()
        .yaml("key_load_errors: skip\n")
        .stores(&store)
        .start();
    let log = srv.log();
    assert!(log.contains("evil.key"), "{log}");
    assert!(log.contains("not a regular file (a FIFO)"), "{log}");
    assert_eq!(srv.metric("keycore_keys_skipped"), 1);
    drop(srv);

    // fail (the default): start-up stops at once, naming the file.
    let mut strict = serve().stores(&store).spawn();
    let status = strict
        .wait_exit(Duration::from_secs(30))
        .expect("start-up ended instead of hanging on the FIFO");
    assert!(!status.success());
    let log = strict.log();
    assert!(
        log.contains("evil.key") && log.contains("not a regular file"),
        "{log}"
    );
}

#[test]
fn a_fixed_current_time_is_warned_about_at_start_up() {
    // A day ahead: the test PKI (made now) is valid then.
    let at = keycore_config::format_rfc3339(SystemTime::now() + Duration::from_secs(86_400));
    let srv = serve().yaml(&format!("current_time: \"{at}\"\n")).start();
    let log = srv.log();
    assert!(log.contains("current_time is set"), "{log}");
    assert!(log.contains("real-time expiry checks are off"), "{log}");
}

#[test]
fn a_pid_file_that_cannot_be_written_stops_start_up_before_any_reactor_listens() {
    // Before: the pid file was written after the reactors were listening,
    // so edges were answered by a process that then exited for its pid
    // file (and a reader of the file could see a serving process without
    // it). Now it is written first.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("keycore.pid");
    let mut srv = serve()
        .env("KEYCORE_LOG", "info")
        .yaml(&format!("pid_file: {}\n", missing.display()))
        .spawn();
    let status = srv
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the server is still running:\n{}", srv.log()));
    assert!(!status.success(), "{status:?}");
    let log = srv.log();
    assert!(
        log.contains("pid_file") && log.contains("cannot write"),
        "{log}"
    );
    // At info the log would show each reactor's "reactor listening" line;
    // "private keys loaded" (logged before either) shows the level took.
    assert!(log.contains("private keys loaded"), "{log}");
    assert!(
        !log.contains("reactor listening"),
        "a reactor listened before the pid file was written:\n{log}"
    );
    assert!(!missing.exists());
}
