//! TLS: client certificates required and checked, TLS 1.2 with the edge's
//! suites, TLS 1.3 by default, 1.2-only parity switch, `openssl s_client`.

use crate::harness::{req, Opts, TestServer};
use crate::protocol_errors::raw_msg;
use keycore_engine::server::Limits;
use keycore_loadgen::client::BlockingClient;
use keycore_protocol::Op;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn edge_tls12_client_with_aes256_gcm_sha384_works() {
    let srv = TestServer::start();
    let mut c = BlockingClient::connect(srv.addr, &srv.client_tls(true)).expect("TLS 1.2 client");
    let (version, suite) = c.negotiated();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        suite.map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        "server certificate is ECDSA"
    );
    assert_eq!(
        c.call(&req(Op::PING, None, b"12")).unwrap().opcode,
        Op::PONG
    );
}

#[test]
fn edge_tls12_client_with_ecdhe_rsa_aes256_gcm_sha384_works() {
    let srv = TestServer::start_with(Opts {
        rsa_server_cert: true,
        tls12_only: true,
        ..Opts::default()
    });
    let mut c = BlockingClient::connect(srv.addr, &srv.client_tls(true)).expect("TLS 1.2 client");
    let (version, suite) = c.negotiated();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        suite.map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
    );
    assert_eq!(
        c.call(&req(Op::PING, None, b"rsa")).unwrap().opcode,
        Op::PONG
    );
}

#[test]
fn tls13_by_default_and_tls12_only_switch() {
    let srv = TestServer::start();
    let c = srv.client();
    assert_eq!(c.negotiated().0, Some(rustls::ProtocolVersion::TLSv1_3));
    let srv12 = TestServer::start_with(Opts {
        tls12_only: true,
        ..Opts::default()
    });
    let mut c = srv12.client();
    assert_eq!(c.negotiated().0, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(c.call(&req(Op::PING, None, b"x")).unwrap().opcode, Op::PONG);
}

fn refused(srv: &TestServer, cert: &std::path::Path, key: &std::path::Path) -> bool {
    match BlockingClient::connect(srv.addr, &srv.client_tls_with(cert, key, false)) {
        Err(_) => true,
        // TLS 1.3: the client finishes before the server checks its
        // certificate; the refusal arrives on the first read.
        Ok(mut c) => c.call(&req(Op::PING, None, b"x")).is_err(),
    }
}

#[test]
fn foreign_and_expired_client_certificates_are_refused_and_counted() {
    let srv = TestServer::start();
    assert!(refused(
        &srv,
        &srv.pki.foreign_client_cert,
        &srv.pki.foreign_client_key
    ));
    assert!(refused(
        &srv,
        &srv.pki.expired_client_cert,
        &srv.pki.expired_client_key
    ));
    // Counted once per refused connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while srv.registry().sum(|c| c.tls_failures.get()) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.registry().sum(|c| c.tls_failures.get()), 2);
    // A good client still works.
    assert_eq!(
        srv.client()
            .call(&req(Op::PING, None, b"ok"))
            .unwrap()
            .opcode,
        Op::PONG
    );
}

#[test]
fn missing_client_certificate_is_refused() {
    let srv = TestServer::start();
    let mut roots = rustls::RootCertStore::empty();
    for c in keycore_loadgen::tls::read_certs(&srv.pki.ca_cert).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "localhost".try_into().unwrap())
            .unwrap();
    let mut sock = std::net::TcpStream::connect(srv.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::Stream::new(&mut conn, &mut sock);
    let ping = raw_msg(1, &[0x11, 0, 1, 0xF1]);
    let wrote = s.write_all(&ping).and_then(|_| s.flush());
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut s, &mut buf);
    assert!(
        wrote.is_err() || read.is_err() || read.unwrap() == 0,
        "must be refused"
    );
}

/// `openssl s_client` offering only TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384,
/// as the edge does, gets a pong.
#[test]
fn openssl_s_client_tls12_aes256_gcm_sha384() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: openssl not installed");
        return;
    }
    let srv = TestServer::start_with(Opts {
        limits: Limits {
            idle_timeout: Duration::from_millis(1500),
            ..Limits::default()
        },
        ..Opts::default()
    });
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-ign_eof",
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
        ])
        .arg("-connect")
        .arg(srv.addr.to_string())
        .arg("-cert")
        .arg(&srv.pki.client_cert)
        .arg("-key")
        .arg(&srv.pki.client_key)
        .arg("-CAfile")
        .arg(&srv.pki.ca_cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    let ping = raw_msg(
        0x0102_0304,
        &[0x11, 0, 1, 0xF1, 0x12, 0, 3, b'a', b'b', b'c'],
    );
    child.stdin.take().unwrap().write_all(&ping).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = out.stdout;
    let pos = stdout
        .windows(8)
        .position(|w| w[4..8] == [1, 2, 3, 4] && w[0] == 1)
        .unwrap_or_else(|| {
            panic!(
                "no pong in s_client output; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let msg = &stdout[pos..];
    assert!(msg.len() >= 1024);
    let m = keycore_protocol::Message::decode(&msg[..1024]).unwrap();
    assert_eq!((m.opcode, m.payload), (Some(Op::PONG), Some(&b"abc"[..])));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("alert"), "{err}");
}
