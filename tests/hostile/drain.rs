//! Drain and signals (issue 12 item 3, "Drain", "Signals"): SIGTERM answers
//! every complete request already sent, including on a connection whose
//! handshake finishes during the drain; a second signal shortens the drain,
//! a third exits at once; SIGHUP/USR1/USR2/QUIT never kill the server.

use crate::support::{request, ski, start, Client, DIGEST};
use keycore_keys::KeyKind;
use keycore_protocol::Op;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn sigterm_answers_every_request_already_sent() {
    let mut srv = start("drain_timeout: 20s\n");
    let rsa = ski(KeyKind::Rsa { bits: 2048 });
    let mut c = Client::connect(srv.addr).unwrap();
    // A second edge connects (TCP) but starts its TLS handshake only after
    // the drain has begun.
    let late = TcpStream::connect(srv.addr).unwrap();
    let n = 1000u32;
    let mut wire = Vec::new();
    for id in 1..=n {
        wire.extend(request(id, Op::RSA_SIGN_SHA256, Some(&rsa), &DIGEST));
    }
    let sender = std::thread::spawn(move || {
        c.send(&wire).unwrap();
        c
    });
    std::thread::sleep(Duration::from_millis(50));
    srv.signal(libc::SIGTERM);
    let mut c = sender.join().unwrap();
    let mut late = Client::over(late).expect("handshake during the drain");
    late.send(&request(77, Op::PING, None, b"late")).unwrap();
    let r = late.recv().expect("late answer");
    assert!(
        matches!(&r, Some((77, Op::PONG, p)) if p == b"late"),
        "a connection finishing its handshake during the drain got {r:?}"
    );
    let mut ok = 0u32;
    let mut seen = vec![false; n as usize + 1];
    while let Some((id, op, _)) = c.recv().expect("read answers") {
        assert_eq!(op, Op::RESPONSE, "request {id} answered with an error");
        assert!(!std::mem::replace(&mut seen[id as usize], true), "dup {id}");
        ok += 1;
    }
    assert_eq!(ok, n, "every request sent before SIGTERM is answered");
    let status = srv.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn second_signal_shortens_the_drain_third_exits_at_once() {
    // A client that never reads holds the drain (its answers cannot be
    // written) until drain_timeout, far longer than this test allows.
    let mut srv = start("drain_timeout: 60s\nidle_timeout: 60s\n");
    let mut hog = Client::connect(srv.addr).unwrap();
    hog.tls
        .sock
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let big = vec![1u8; 60_000];
    let msg = request(1, Op::PING, None, &big);
    while hog.send(&msg).is_ok() {}
    srv.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(srv.child.try_wait().unwrap().is_none(), "still draining");
    let t = Instant::now();
    srv.signal(libc::SIGTERM);
    let status = srv
        .wait_exit(Duration::from_secs(5))
        .expect("a second SIGTERM ends the drain within ~0.5 s");
    assert!(status.success(), "hurried drain exits cleanly: {status:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Third signal: exits at once even while a drain is stuck.
    let mut srv = start("drain_timeout: 60s\nidle_timeout: 60s\n");
    let mut hog = Client::connect(srv.addr).unwrap();
    hog.tls
        .sock
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while hog.send(&msg).is_ok() {}
    srv.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    srv.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    srv.signal(libc::SIGINT);
    let status = srv
        .wait_exit(Duration::from_secs(2))
        .expect("third signal exits");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
    drop(hog);
}

#[test]
fn hup_usr1_usr2_quit_do_not_kill_a_serving_process() {
    let mut srv = start("");
    let mut c = Client::connect(srv.addr).unwrap();
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGQUIT] {
        srv.signal(sig);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            srv.child.try_wait().unwrap().is_none(),
            "signal {sig} killed the server"
        );
        c.ping(b"still here").unwrap();
    }
    srv.signal(libc::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success());
}
