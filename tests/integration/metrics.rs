//! The Prometheus endpoint over real HTTP: reference metric names, per-core
//! counters summed, counts that agree with what was sent.

use crate::harness::{req, TestServer};
use keycore_engine::endpoint::MetricsServer;
use keycore_keys::KeyKind;
use keycore_protocol::Op;
use std::io::{Read, Write};

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_what_was_served() {
    let srv = TestServer::start_with(crate::harness::Opts {
        cores: 2,
        ..Default::default()
    });
    let m = MetricsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        srv.handle.as_ref().unwrap().registry.clone(),
    )
    .unwrap();
    let ec = srv.key(KeyKind::EcdsaP256);
    let d = [3u8; 32];
    let unknown = [9u8; 20];
    let mut sent = 0;
    for _ in 0..4 {
        let mut c = srv.client();
        let batch: Vec<_> = (0..25)
            .map(|i| {
                if i % 5 == 0 {
                    req(Op::ECDSA_SIGN_SHA256, Some(&unknown), &d)
                } else {
                    req(Op::ECDSA_SIGN_SHA256, Some(&ec.ski), &d)
                }
            })
            .collect();
        c.pipeline(&batch).unwrap();
        c.call(&req(Op::PING, None, b"p")).unwrap();
        sent += 26;
    }
    let text = scrape(m.addr, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(
        value(&text, "keyless_requests{opcode=\"OpECDSASignSHA256\"}"),
        100.0
    );
    assert_eq!(value(&text, "keyless_requests{opcode=\"OpPing\"}"), 4.0);
    assert_eq!(
        value(
            &text,
            "keyless_request_total_duration_per_opcode_count{type=\"ecdsa\",error=\"no error\"}"
        ),
        80.0
    );
    assert_eq!(
        value(&text, "keyless_request_total_duration_per_opcode_count{type=\"ecdsa\",error=\"key not found\"}"),
        20.0
    );
    assert_eq!(
        value(
            &text,
            "keyless_request_exec_duration_per_opcode_count{type=\"ecdsa\",error=\"no error\"}"
        ),
        80.0
    );
    let per_core: f64 = (0..2)
        .map(|c| value(&text, &format!("keycore_requests_total{{core=\"{c}\"}}")))
        .sum();
    assert_eq!(per_core, sent as f64);
    assert_eq!(value(&text, "keyless_failed_connection"), 0.0);
    assert!(text.contains("# TYPE keyless_request_exec_duration_per_opcode histogram"));
    assert!(scrape(m.addr, "/other").starts_with("HTTP/1.1 404"));
}
