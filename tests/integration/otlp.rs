//! Tracing and log fields (issue 14) against the real `keycore serve`
//! process: spans arrive over OTLP/HTTP at a receiver run by the test (a
//! tiny HTTP server on loopback) with the right attributes, a caller's span
//! context makes a child span; connection-scoped log lines carry core and
//! peer in both log formats.

use crate::harness::{client, req, serve};
use keycore_keys::{software, KeyKind};
use keycore_loadgen::client::BlockingClient;
use keycore_protocol::{ErrorCode, Message, Op};
use keycore_testsupport::pki;
use keycore_testsupport::server::Server;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An OTLP/HTTP receiver: every POST body (JSON) to /v1/traces is kept;
/// answers 200 `{}`. Each connection is read within 10 s, at most 8 MiB.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let body = loop {
                    let Ok(n) = s.read(&mut chunk) else {
                        break None;
                    };
                    if n == 0 || buf.len() > 8 << 20 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                    assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
                    assert!(head.contains("content-type: application/json"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap();
                    if buf.len() >= h + 4 + len {
                        break Some(buf[h + 4..h + 4 + len].to_vec());
                    }
                };
                if let Some(body) = body {
                    b.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).expect("OTLP JSON"));
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                    );
                }
            }
        });
        Receiver { addr, bodies }
    }

    /// Every span received, flattened.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for b in self.bodies.lock().unwrap().iter() {
            let rs = &b["resourceSpans"][0];
            assert_eq!(
                rs["resource"]["attributes"][0]["value"]["stringValue"],
                "keycore"
            );
            for s in rs["scopeSpans"][0]["spans"].as_array().unwrap() {
                out.push(s.clone());
            }
        }
        out
    }
}

fn attrs(span: &Value) -> HashMap<String, Value> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
        .collect()
}

/// `keycore serve` on the shared PKI with the `extra` YAML lines; no
/// readiness ping (it would be a traced request of its own).
fn start(extra: &str) -> Server {
    serve().yaml(extra).ready_on_connect().start()
}

#[test]
fn sampled_requests_reach_an_otlp_receiver_with_their_attributes() {
    // A failed export is dropped and counted by design (never retried), so
    // one POST that misses its 2 s deadline (`EXPORT_TIMEOUT`) on a starved
    // machine loses the run's spans: an export failed once in CI
    // (2026-12-04; the cause was not seen, the failure printed only the
    // scrape). So a failure says why (the server's own export warning), and
    // only a missed deadline earns a second attempt on a fresh receiver and
    // server: any other cause fails at once, and a deadline missed twice
    // fails too.
    let first = match export_attempt() {
        Ok(()) => return,
        Err(e) => e,
    };
    assert!(
        first.contains("no complete answer within"),
        "span export failed, not by its deadline: {first}"
    );
    if let Err(second) = export_attempt() {
        panic!("spans not exported in two attempts: {first}\n{second}");
    }
}

/// One server and receiver: three requests traced and exported, then every
/// span's attributes checked. `Err`: the export did not happen (with the
/// scrape and the server's warnings); a wrong span panics at once.
fn export_attempt() -> Result<(), String> {
    let rx = Receiver::start();
    let mut srv = start(&format!(
        "tracing_enabled: true\ntracing_address: {}\ntracing_sample_rate: 1.0\n",
        rx.addr
    ));
    let key = software::load_dir(&pki::shared().pki.keys_dir)
        .into_iter()
        .flatten()
        .find(|k| k.kind == KeyKind::EcdsaP256)
        .unwrap();
    let mut c = client(&srv);
    let digest = [7u8; 32];
    let r = c
        .call(&req(Op::ECDSA_SIGN_SHA256, Some(&key.ski), &digest))
        .unwrap();
    assert_eq!(r.opcode, Op::RESPONSE);
    let unknown = [0xeeu8; 20];
    let r = c
        .call(&req(Op::ECDSA_SIGN_SHA256, Some(&unknown), &digest))
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::KEY_NOT_FOUND));
    // The caller's context (Jaeger text form, sampled).
    let ctx = b"4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1";
    let m = Message {
        span_context: Some(&ctx[..]),
        ..req(Op::ECDSA_SIGN_SHA256, Some(&key.ski), &digest)
    };
    assert_eq!(c.call(&m).unwrap().opcode, Op::RESPONSE);
    drop(c);
    let t0 = Instant::now();
    loop {
        let m = srv.scrape();
        if m.contains("keycore_trace_spans_exported_total 3") {
            assert!(
                m.contains("keycore_trace_spans_sampled_total{core=\"0\"} 3"),
                "{m}"
            );
            assert!(
                m.contains("keycore_trace_spans_dropped_total{core=\"0\"} 0"),
                "{m}"
            );
            assert!(m.contains("keycore_trace_export_failures_total 0"), "{m}");
            break;
        }
        if m.contains("keycore_trace_spans_export_failed_total 3")
            || t0.elapsed() > Duration::from_secs(20)
        {
            let warnings: Vec<String> = srv
                .log()
                .lines()
                .filter(|l| l.contains("span export") || l.contains("tracing"))
                .map(str::to_owned)
                .collect();
            let counters: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("keycore_trace_"))
                .collect();
            srv.stop(Duration::from_secs(30));
            return Err(format!(
                "spans not exported after {:?}: counters {counters:?}; server log {warnings:?}",
                t0.elapsed()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    srv.stop(Duration::from_secs(30));
    let spans = rx.spans();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let ski_hex: String = key.ski.iter().map(|b| format!("{b:02x}")).collect();
    let (ok, err, child) = (&spans[0], &spans[1], &spans[2]);
    for s in &spans {
        assert_eq!(s["name"], "keyless OpECDSASignSHA256");
        assert_eq!(s["kind"], 2);
        let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(end >= start && start > 1_600_000_000_000_000_000, "{s}");
        let a = attrs(s);
        assert_eq!(a["keyless.opcode"]["stringValue"], "OpECDSASignSHA256");
        assert_eq!(a["keycore.core"]["intValue"], "0");
        assert!(a["keycore.queue_time_us"]["doubleValue"].as_f64().unwrap() >= 0.0);
        assert!(a["keycore.exec_time_us"]["doubleValue"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["traceId"].as_str().unwrap().len(), 32);
        assert_eq!(s["spanId"].as_str().unwrap().len(), 16);
    }
    let a = attrs(ok);
    assert_eq!(a["keyless.result"]["stringValue"], "ok");
    assert_eq!(a["keycore.key.backend"]["stringValue"], "software");
    assert_eq!(a["keycore.key.ski"]["stringValue"], ski_hex.as_str());
    assert!(a["keycore.key.source"]["stringValue"]
        .as_str()
        .unwrap()
        .ends_with(".key"));
    assert_eq!(ok["status"]["code"], 1);
    assert!(ok.get("parentSpanId").is_none());
    let a = attrs(err);
    assert_eq!(a["keyless.result"]["stringValue"], "key not found");
    assert!(!a.contains_key("keycore.key.backend"));
    assert_eq!(err["status"]["code"], 2);
    assert_eq!(child["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(child["parentSpanId"], "00f067aa0ba902b7");
    assert_ne!(ok["traceId"], err["traceId"]);
    Ok(())
}

#[test]
fn connection_log_lines_carry_core_and_peer_in_text_and_json() {
    for format in ["text", "json"] {
        let mut srv = start(&format!("loglevel: 0\nlog_format: {format}\n"));
        // One good connection and one refused handshake (a client
        // certificate from another CA).
        let mut c = client(&srv);
        assert_eq!(c.call(&req(Op::PING, None, b"x")).unwrap().opcode, Op::PONG);
        drop(c);
        let p = pki::shared();
        let tls = p.client_tls_as(&p.pki.foreign_client_cert, &p.pki.foreign_client_key);
        if let Ok(mut bad) = BlockingClient::connect(srv.addr, &tls) {
            // TLS 1.3: the refusal shows at the first exchange.
            let _ = bad.call(&req(Op::PING, None, b"x"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let log = srv.stop(Duration::from_secs(30));
        let mut seen = Vec::new();
        for line in log.lines().filter(|l| !l.is_empty()) {
            let (msg, has_core, has_peer) = if format == "json" {
                let v: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                let f = &v["fields"];
                (
                    f["message"].as_str().unwrap_or("").to_owned(),
                    f.get("core").is_some(),
                    f.get("peer").is_some(),
                )
            } else {
                (
                    line.to_owned(),
                    line.contains(" core="),
                    line.contains(" peer="),
                )
            };
            for m in [
                "connection established",
                "connection closed",
                "TLS handshake refused",
            ] {
                if msg.contains(m) {
                    assert!(has_core && has_peer, "{format}: {line}");
                    seen.push(m);
                }
            }
            if has_peer {
                assert!(has_core, "{format}: a line with peer but no core: {line}");
            }
        }
        for m in [
            "connection established",
            "connection closed",
            "TLS handshake refused",
        ] {
            assert!(seen.contains(&m), "{format}: no {m:?} line in:\n{log}");
        }
    }
}
