//! Issue 18 against the real `keycore serve` process (real TLS, loopback):
//! the client-certificate allow-list, per-key policies, per-identity limits
//! and the audit trail. Each refusal is checked twice: on the wire (the
//! answer or the refused handshake) and in the counters; allowed traffic is
//! checked to go through unchanged. Timings are limits, never benchmarks.

// The hostile suite's process and client fixtures (one copy): this suite
// uses part of them.
#[allow(dead_code)]
#[path = "../hostile/support.rs"]
mod support;

use keycore_keys::KeyKind;
use keycore_protocol::{ErrorCode, Op};
use rustls_pki_types::pem::PemObject as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{pki, request, ski, Client, Server, DIGEST};

/// Hex SHA-256 of a PEM certificate's DER SubjectPublicKeyInfo (what an
/// operator gets from `openssl x509 -pubkey | openssl pkey -pubin -outform
/// der | sha256sum`).
fn spki_pin(cert: &Path) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        c.tbs_certificate.subject_pki.raw,
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn second() -> (PathBuf, PathBuf) {
    let p = &pki().pki;
    (p.second_client_cert.clone(), p.second_client_key.clone())
}

/// One request, one answer: (opcode, payload).
fn call(c: &mut Client, id: u32, op: Op, kind: KeyKind, payload: &[u8]) -> (Op, Vec<u8>) {
    let s = ski(kind);
    c.send(&request(id, op, Some(&s), payload)).unwrap();
    let (rid, rop, p) = c.recv().unwrap().expect("an answer");
    assert_eq!(rid, id);
    (rop, p)
}

fn refused(a: &(Op, Vec<u8>)) -> bool {
    a.0 == Op::ERROR && a.1 == [ErrorCode::INTERNAL.0]
}

fn ok(a: &(Op, Vec<u8>)) -> bool {
    a.0 == Op::RESPONSE && !a.1.is_empty()
}

/// Poll a metric until `pred` holds, at most 10 s; returns the last value.
fn wait_metric(s: &Server, name: &str, pred: impl Fn(u64) -> bool) -> u64 {
    let t = Instant::now();
    loop {
        let v = s.metric(name);
        if pred(v) || t.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a TLS session with these credentials is refused: the handshake
/// fails, or (TLS 1.3, where the client's certificate is checked after the
/// client already finished) the first request gets no answer.
fn is_refused(s: &Server, cert: &Path, key: &Path) -> bool {
    match Client::connect_as(s.addr, cert, key) {
        Err(_) => true,
        Ok(mut c) => c.ping(b"x").is_err(),
    }
}

#[test]
fn allow_list_refuses_unknown_names_and_unpinned_keys_in_the_handshake() {
    let p = &pki().pki;
    let (cert2, key2) = second();
    let bogus = "ab".repeat(32);
    // edge-a: the demo client by CN, with two pins (its own and a bogus
    // one: a rotation in progress). edge-b: the second client's SAN, pinned
    // to a key it does not have.
    let yaml = format!(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n    spki_sha256: [{bogus}, {}]\n  - name: edge-b\n    names: [\"*.keycore.test\"]\n    spki_sha256: [{bogus}]\n",
        spki_pin(&p.client_cert)
    );
    let s = support::start(&yaml);
    let mut a = Client::connect(s.addr).unwrap();
    assert!(ok(&call(
        &mut a,
        1,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    assert!(is_refused(&s, &cert2, &key2), "edge-b's key is not pinned");
    let pin = "keycore_client_refused_total{reason=\"spki_pin_mismatch\"}";
    assert_eq!(wait_metric(&s, pin, |v| v >= 1), 1);
    assert_eq!(
        s.metric("keycore_client_refused_total{reason=\"unknown_name\"}"),
        0
    );
    // The allowed edge is unaffected, on the same and on a new connection.
    assert!(ok(&call(
        &mut a,
        2,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    Client::connect(s.addr)
        .unwrap()
        .ping(b"still here")
        .unwrap();
    drop(s);

    // Pinning the second client's real key lets it in.
    let yaml = format!(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n  - name: edge-b\n    names: [\"*.keycore.test\"]\n    spki_sha256: [{bogus}, {}]\n",
        spki_pin(&cert2)
    );
    let s = support::start(&yaml);
    let mut b = Client::connect_as(s.addr, &cert2, &key2).unwrap();
    assert!(ok(&call(
        &mut b,
        1,
        Op::ED25519_SIGN,
        KeyKind::Ed25519,
        b"m"
    )));
    drop(s);

    // A certificate that chains but whose names match no identity.
    let s = support::start(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n",
    );
    assert!(is_refused(&s, &cert2, &key2));
    let name = "keycore_client_refused_total{reason=\"unknown_name\"}";
    assert_eq!(wait_metric(&s, name, |v| v >= 1), 1);
    assert_eq!(s.metric("keycore_tls_failures_total"), 1);
}

#[test]
fn key_policies_refuse_denied_ops_and_clients_with_0x08_and_count_them() {
    let p = &pki().pki;
    let (cert2, key2) = second();
    let rsa = p.keys_dir.join("rsa2048.key");
    let yaml = format!(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n  - name: edge-b\n    names: [\"edge2.keycore.test\"]\nkey_policies:\n  - store: {}\n    deny_ops: [rsa_decrypt, sha1, md5sha1]\n  - ski: {}\n    clients: [edge-b]\naudit_interval: 200ms\n",
        rsa.display(),
        hex(&ski(KeyKind::EcdsaP256))
    );
    let s = support::start(&yaml);
    let rsa2048 = KeyKind::Rsa { bits: 2048 };
    let mut a = Client::connect(s.addr).unwrap();
    let mut b = Client::connect_as(s.addr, &cert2, &key2).unwrap();
    // Denied operations on the RSA key, for every client.
    assert!(refused(&call(
        &mut a,
        1,
        Op::RSA_DECRYPT,
        rsa2048,
        &[1u8; 256]
    )));
    assert!(refused(&call(
        &mut a,
        2,
        Op::RSA_SIGN_SHA1,
        rsa2048,
        &[7u8; 20]
    )));
    assert!(refused(&call(
        &mut b,
        3,
        Op::RSA_SIGN_MD5SHA1,
        rsa2048,
        &[7u8; 36]
    )));
    // Allowed ones still work, and keys the policy does not select are
    // untouched (RSA decrypt on RSA-3072 is answered by the key).
    assert!(ok(&call(&mut a, 4, Op::RSA_SIGN_SHA256, rsa2048, &DIGEST)));
    assert!(ok(&call(
        &mut a,
        5,
        Op::RSA_PSS_SIGN_SHA256,
        rsa2048,
        &DIGEST
    )));
    let mut c = vec![0u8; 384];
    c[383] = 2;
    assert!(ok(&call(
        &mut a,
        6,
        Op::RSA_DECRYPT,
        KeyKind::Rsa { bits: 3072 },
        &c
    )));
    // The P-256 key is edge-b's only.
    assert!(refused(&call(
        &mut a,
        7,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    assert!(ok(&call(
        &mut b,
        8,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    assert!(ok(&call(
        &mut a,
        9,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP384,
        &DIGEST
    )));
    // The connection stays up after refusals.
    a.ping(b"up").unwrap();
    assert_eq!(
        s.metric("keycore_requests_refused_total{reason=\"op_denied\"}"),
        3
    );
    assert_eq!(
        s.metric("keycore_requests_refused_total{reason=\"client_denied\"}"),
        1
    );
    assert_eq!(
        s.metric("keycore_requests_refused_total{reason=\"rate_limited\"}"),
        0
    );
    // Per key and reason, once the cores' counts reach the writer.
    let rsa_ski = hex(&ski(rsa2048));
    let per_key = format!("keycore_policy_refused_total{{key=\"{rsa_ski}\",reason=\"op_denied\"}}");
    assert_eq!(wait_metric(&s, &per_key, |v| v == 3), 3);
    let p256 = format!(
        "keycore_policy_refused_total{{key=\"{}\",reason=\"client_denied\"}}",
        hex(&ski(KeyKind::EcdsaP256))
    );
    assert_eq!(s.metric(&p256), 1);
    let allowed = "keycore_client_requests_total{identity=\"edge-b\",type=\"ecdsa\",result=\"ok\"}";
    assert_eq!(wait_metric(&s, allowed, |v| v == 1), 1);
}

/// Send `n` pipelined ECDSA requests (ids from `base`) and count the
/// answers: signed, and refused by a rate limit (each refusal asserted to
/// be the protocol's internal error).
fn burst(c: &mut Client, base: u32, n: u32) -> (u32, u32) {
    let s = ski(KeyKind::EcdsaP256);
    let mut all = Vec::new();
    for id in 0..n {
        all.extend(request(base + id, Op::ECDSA_SIGN_SHA256, Some(&s), &DIGEST));
    }
    c.send(&all).unwrap();
    let (mut good, mut limited) = (0, 0);
    for _ in 0..n {
        let (_, op, p) = c.recv().unwrap().unwrap();
        if op == Op::RESPONSE {
            good += 1;
        } else {
            assert_eq!((op, p), (Op::ERROR, vec![ErrorCode::INTERNAL.0]));
            limited += 1;
        }
    }
    (good, limited)
}

#[test]
fn per_identity_rate_limit_answers_0x08_and_spares_other_identities() {
    let (cert2, key2) = second();
    // One core: edge-a gets 20/s with a burst of 20; edge-b no limit.
    let s = support::start(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n    max_rps: 20\n  - name: edge-b\n    names: [\"edge2.keycore.test\"]\n",
    );
    let mut a = Client::connect(s.addr).unwrap();
    let mut b = Client::connect_as(s.addr, &cert2, &key2).unwrap();
    let t = Instant::now();
    let (good, limited) = burst(&mut a, 0, 200);
    // The burst, plus what the rate refilled while the batch ran.
    let refill = (t.elapsed().as_secs_f64() * 20.0).ceil() as u32;
    assert!(
        (20..=20 + refill).contains(&good),
        "{good} allowed, refill {refill}"
    );
    assert_eq!(good + limited, 200);
    // Another identity on the same core is not slowed by edge-a's limit.
    assert_eq!(burst(&mut b, 0, 200), (200, 0));
    assert_eq!(
        s.metric("keycore_requests_refused_total{reason=\"rate_limited\"}"),
        limited as u64
    );
    // After a second, edge-a has its rate back.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(ok(&call(
        &mut a,
        999,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
}

#[test]
fn connections_per_identity_are_capped_before_any_request_is_read() {
    let (cert2, key2) = second();
    let s = support::start(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n    max_connections: 2\n  - name: edge-b\n    names: [\"edge2.keycore.test\"]\n",
    );
    let open = "keycore_client_connections{identity=\"edge-a\"}";
    // The start-up probe's connection is gone first.
    assert_eq!(wait_metric(&s, open, |v| v == 0), 0);
    let mut c1 = Client::connect(s.addr).unwrap();
    c1.ping(b"1").unwrap();
    let mut c2 = Client::connect(s.addr).unwrap();
    c2.ping(b"2").unwrap();
    assert_eq!(s.metric(open), 2);
    let mut c3 = Client::connect(s.addr).unwrap();
    assert!(
        c3.ping(b"3").is_err(),
        "a third edge-a connection is closed"
    );
    let max = "keycore_client_refused_total{reason=\"max_connections\"}";
    assert_eq!(wait_metric(&s, max, |v| v == 1), 1);
    // edge-b is not counted against edge-a.
    let mut b = Client::connect_as(s.addr, &cert2, &key2).unwrap();
    b.ping(b"b").unwrap();
    // A closed connection gives its slot back.
    drop(c1);
    assert_eq!(wait_metric(&s, open, |v| v == 1), 1);
    Client::connect(s.addr).unwrap().ping(b"4").unwrap();
    c2.ping(b"2 still up").unwrap();
}

/// Every JSON record of the audit file and its rotated copies, oldest first.
fn audit_records(file: &Path, keep: u32) -> (Vec<serde_json::Value>, usize) {
    let mut paths: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|i| PathBuf::from(format!("{}.{i}", file.display())))
        .filter(|p| p.exists())
        .collect();
    paths.push(file.to_owned());
    let files = paths.len();
    let mut out = Vec::new();
    for p in paths {
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{p:?}: {e}: {line}")));
        }
    }
    (out, files)
}

#[test]
fn audit_file_round_trips_counts_and_rotates_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let (cert2, key2) = second();
    let keep = 200;
    let yaml = format!(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n  - name: edge-b\n    names: [\"edge2.keycore.test\"]\nkey_policies:\n  - ski: {}\n    deny_ops: [sha1]\naudit_file: {}\naudit_interval: 100ms\naudit_max_bytes: 4096\naudit_keep: {keep}\n",
        hex(&ski(KeyKind::EcdsaP384)),
        file.display()
    );
    let mut s = support::start(&yaml);
    let mut a = Client::connect(s.addr).unwrap();
    let mut b = Client::connect_as(s.addr, &cert2, &key2).unwrap();
    // Load in rounds spread over several intervals: what was sent, by
    // (identity, opcode, result).
    let mut sent: HashMap<(String, String, String), u64> = HashMap::new();
    let mut id = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0..20 {
        for (c, who) in [(&mut a, "edge-a"), (&mut b, "edge-b")] {
            let mut batch = Vec::new();
            let mut want = Vec::new();
            for i in 0..40u32 {
                id += 1;
                let (op, kind, payload, name, result): (Op, KeyKind, &[u8], &str, &str) =
                    match i % 4 {
                        0 => (
                            Op::ECDSA_SIGN_SHA256,
                            KeyKind::EcdsaP256,
                            &DIGEST,
                            "OpECDSASignSHA256",
                            "ok",
                        ),
                        1 => (
                            Op::ED25519_SIGN,
                            KeyKind::Ed25519,
                            b"msg",
                            "OpEd25519Sign",
                            "ok",
                        ),
                        2 => (
                            Op::ECDSA_SIGN_SHA1,
                            KeyKind::EcdsaP384,
                            &DIGEST[..20],
                            "OpECDSASignSHA1",
                            "refused:op_denied",
                        ),
                        _ => (
                            Op::ECDSA_SIGN_SHA384,
                            KeyKind::EcdsaP384,
                            &[7u8; 48],
                            "OpECDSASignSHA384",
                            "ok",
                        ),
                    };
                batch.extend(request(id, op, Some(&ski(kind)), payload));
                want.push(result);
                *sent
                    .entry((who.to_owned(), name.to_owned(), result.to_owned()))
                    .or_default() += 1;
            }
            c.send(&batch).unwrap();
            for w in want {
                let (_, op, _) = c.recv().unwrap().unwrap();
                assert_eq!(op == Op::RESPONSE, w == "ok", "round {round}");
            }
        }
        std::thread::sleep(Duration::from_millis(30));
        assert!(Instant::now() < deadline, "load took too long");
    }
    // SIGTERM: the cores send their last counts, the writer appends them,
    // the unload records and its stop record.
    s.signal(libc::SIGTERM);
    assert!(s
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|e| e.success()));
    let (records, files) = audit_records(&file, keep);
    assert!(files >= 3, "rotated under load: {files} files");
    for i in 1..files {
        let p = format!("{}.{i}", file.display());
        // A file ends at most one write batch past the limit.
        assert!(
            std::fs::metadata(&p).unwrap().len() < 4096 + 64 * 1024,
            "{p}"
        );
    }
    let mut got: HashMap<(String, String, String), u64> = HashMap::new();
    for r in records.iter().filter(|r| r["type"] == "ops") {
        let key = (
            r["identity"].as_str().unwrap().to_owned(),
            r["op"].as_str().unwrap().to_owned(),
            r["result"].as_str().unwrap().to_owned(),
        );
        *got.entry(key).or_default() += r["count"].as_str().unwrap().parse::<u64>().unwrap();
        assert!(r["key"].as_str().unwrap().len() == 40, "{r}");
    }
    assert_eq!(got, sent, "the file's counts are exactly the traffic sent");
    let kinds = |t: &str| records.iter().filter(|r| r["type"] == t).count();
    assert_eq!(kinds("key_load"), pki().keys.len());
    assert_eq!(kinds("key_unload"), pki().keys.len());
    assert_eq!(kinds("server_started"), 1);
    assert_eq!(kinds("server_stopped"), 1);
    assert!(kinds("policy_refusal") >= 1);
    assert!(kinds("audit_rotated") >= 2);
    assert_eq!(records.last().unwrap()["type"], "audit_stopped");
    // Never a payload or a digest: the digest bytes (07...) and the
    // Ed25519 message appear nowhere.
    let all = records.iter().map(|r| r.to_string()).collect::<String>();
    assert!(!all.contains(&hex(&DIGEST[..20])) && !all.contains("msg\""));
}

#[test]
fn rotation_keeps_at_most_audit_keep_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let yaml = format!(
        "audit_file: {}\naudit_interval: 50ms\naudit_max_bytes: 4096\naudit_keep: 2\n",
        file.display()
    );
    let s = support::start(&yaml);
    let mut a = Client::connect(s.addr).unwrap();
    let rot = "keycore_audit_rotations_total";
    // Many distinct cells per interval (every opcode of the ECDSA key).
    let t = Instant::now();
    let mut id = 0;
    while s.metric(rot) < 5 && t.elapsed() < Duration::from_secs(60) {
        for op in [0x13u8, 0x14, 0x15, 0x16, 0x17, 0x12] {
            id += 1;
            call(&mut a, id, Op(op), KeyKind::EcdsaP256, &DIGEST);
        }
        for kind in [KeyKind::EcdsaP384, KeyKind::EcdsaP521, KeyKind::Ed25519] {
            id += 1;
            call(&mut a, id, Op::ED25519_SIGN, kind, b"m");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(s.metric(rot) >= 5);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.len() <= 3, "FILE, FILE.1, FILE.2 only: {names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".3")));
}

#[test]
fn losing_the_audit_directory_does_not_stop_signing() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("audit");
    std::fs::create_dir(&sub).unwrap();
    let yaml = format!(
        "audit_file: {}\naudit_interval: 100ms\n",
        sub.join("audit.jsonl").display()
    );
    let s = support::start(&yaml);
    let mut a = Client::connect(s.addr).unwrap();
    std::fs::remove_dir_all(&sub).unwrap();
    for id in 0..20 {
        assert!(ok(&call(
            &mut a,
            id,
            Op::ECDSA_SIGN_SHA256,
            KeyKind::EcdsaP256,
            &DIGEST
        )));
    }
    assert!(wait_metric(&s, "keycore_audit_write_errors_total", |v| v >= 1) >= 1);
    assert_eq!(s.metric("keycore_audit_file_ok"), 0);
    for id in 20..40 {
        assert!(ok(&call(
            &mut a,
            id,
            Op::ECDSA_SIGN_SHA256,
            KeyKind::EcdsaP256,
            &DIGEST
        )));
    }
    assert_eq!(
        s.metric("keycore_requests_refused_total{reason=\"audit_unavailable\"}"),
        0
    );
}

#[test]
fn fail_closed_audit_refuses_key_operations_until_the_file_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("audit");
    std::fs::create_dir(&sub).unwrap();
    let file = sub.join("audit.jsonl");
    let yaml = format!(
        "audit_file: {}\naudit_interval: 100ms\naudit_fail_closed: true\n",
        file.display()
    );
    let s = support::start(&yaml);
    let mut a = Client::connect(s.addr).unwrap();
    assert!(ok(&call(
        &mut a,
        1,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    std::fs::remove_dir_all(&sub).unwrap();
    assert_eq!(wait_metric(&s, "keycore_audit_file_ok", |v| v == 0), 0);
    assert!(refused(&call(
        &mut a,
        2,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    a.ping(b"pings are not key operations").unwrap();
    let why = "keycore_requests_refused_total{reason=\"audit_unavailable\"}";
    assert_eq!(s.metric(why), 1);
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(wait_metric(&s, "keycore_audit_file_ok", |v| v == 1), 1);
    assert!(ok(&call(
        &mut a,
        3,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST
    )));
    // The refusal itself reached the new file.
    let t = Instant::now();
    let mut text = String::new();
    while !text.contains("audit_unavailable") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(&file).unwrap_or_default();
    }
    assert!(text.contains("\"reason\":\"audit_unavailable\""), "{text}");
}

#[test]
fn key_policies_reload_and_audit_counts_keep_their_key_across_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let p256 = hex(&ski(KeyKind::EcdsaP256));
    // A long interval: the counts from before the reload reach the writer
    // after it (at SIGTERM), when the key indices have moved.
    let yaml = format!(
        "key_policies:\n  - ski: {p256}\n    deny_ops: [ecdsa]\naudit_file: {}\naudit_interval: 30s\n",
        file.display()
    );
    let mut s = support::start(&yaml);
    let mut a = Client::connect(s.addr).unwrap();
    for id in 0..3 {
        assert!(refused(&call(
            &mut a,
            id,
            Op::ECDSA_SIGN_SHA256,
            KeyKind::EcdsaP256,
            &DIGEST
        )));
    }
    assert!(ok(&call(
        &mut a,
        3,
        Op::ED25519_SIGN,
        KeyKind::Ed25519,
        b"m"
    )));
    // The reload: the policy now denies only SHA-384, and a copy of the
    // RSA-4096 key loaded first shifts every other key's index by one.
    let extra = dir.path().join("first.key");
    std::fs::copy(pki().pki.keys_dir.join("rsa4096.key"), &extra).unwrap();
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("deny_ops: [ecdsa]", "deny_ops: [sha384]")
        .replace(
            "private_key_stores:\n",
            &format!("private_key_stores:\n  - file: {}\n", extra.display()),
        );
    std::fs::write(&s.config, text).unwrap();
    s.signal(libc::SIGHUP);
    wait_metric(&s, "keycore_reload_total{result=\"ok\"}", |v| v >= 1);
    let t = Instant::now();
    let mut id = 10;
    while !ok(&call(
        &mut a,
        id,
        Op::ECDSA_SIGN_SHA256,
        KeyKind::EcdsaP256,
        &DIGEST,
    )) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the new policy never applied"
        );
        id += 1;
    }
    assert!(refused(&call(
        &mut a,
        99,
        Op::ECDSA_SIGN_SHA384,
        KeyKind::EcdsaP256,
        &[7u8; 48]
    )));
    s.signal(libc::SIGTERM);
    assert!(s
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|e| e.success()));
    let (records, _) = audit_records(&file, 5);
    assert_eq!(records.iter().filter(|r| r["type"] == "reload").count(), 1);
    let ecdsa: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "ops" && r["op"].as_str().unwrap().starts_with("OpECDSA"))
        .collect();
    let refused_before: u64 = ecdsa
        .iter()
        .filter(|r| r["result"] == "refused:op_denied" && r["op"] == "OpECDSASignSHA256")
        .map(|r| r["count"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(refused_before >= 3, "{ecdsa:#?}");
    for r in &ecdsa {
        assert_eq!(
            r["key"],
            p256.as_str(),
            "every ECDSA count is the P-256 key's: {r}"
        );
    }
}

/// Rewrite the running server's config file with `edit` and reload it
/// (SIGHUP); waits until `keycore_reload_total{result}` has counted one
/// more (`ok` or `error`), then one `CONTROL_POLL` and some for every
/// core to take the new state up.
fn reload_with(s: &Server, result: &str, edit: impl FnOnce(String) -> String) {
    let name = format!("keycore_reload_total{{result=\"{result}\"}}");
    let before = s.metric(&name);
    let text = std::fs::read_to_string(&s.config).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changed the config");
    std::fs::write(&s.config, new).unwrap();
    s.signal(libc::SIGHUP);
    assert_eq!(
        wait_metric(s, &name, |v| v > before),
        before + 1,
        "reload counted as {result}"
    );
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn a_reload_rotates_client_pins_under_traffic_without_failing_an_unchanged_identity() {
    let p = &pki().pki;
    let (cert2, key2) = second();
    // edge-b's certificate rotates: same names, a new key (and pin).
    let dir = tempfile::tempdir().unwrap();
    let (rotated, rotated_key) = keycore_engine::pki::issue_client_cert(
        p,
        dir.path(),
        "edge2-rotated",
        "keycore second client",
        &["edge2.keycore.test"],
        9,
    )
    .unwrap();
    let (old_pin, new_pin) = (spki_pin(&cert2), spki_pin(&rotated));
    let yaml = format!(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n    spki_sha256: [{}]\n  - name: edge-b\n    names: [\"*.keycore.test\"]\n    spki_sha256: [{old_pin}]\n",
        spki_pin(&p.client_cert)
    );
    let s = support::start(&yaml);
    let mut b_old = Client::connect_as(s.addr, &cert2, &key2).unwrap();
    assert!(ok(&call(
        &mut b_old,
        1,
        Op::ED25519_SIGN,
        KeyKind::Ed25519,
        b"m"
    )));
    assert!(is_refused(&s, &rotated, &rotated_key), "not pinned yet");

    // edge-a's traffic through the reload: one long-lived connection
    // signing, plus a fresh connection every 10th request. Bounded in
    // count and time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = s.addr;
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut good, mut failed) = (0u64, Vec::new());
            let t = Instant::now();
            let mut c = Client::connect(addr).unwrap();
            let mut id = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t.elapsed() < Duration::from_secs(30)
                && id < 100_000
            {
                id += 1;
                let s = ski(KeyKind::EcdsaP256);
                let r = c
                    .send(&request(id, Op::ECDSA_SIGN_SHA256, Some(&s), &DIGEST))
                    .and_then(|_| c.recv());
                match r {
                    Ok(Some((rid, Op::RESPONSE, p))) if rid == id && !p.is_empty() => good += 1,
                    other => failed.push(format!("request {id}: {other:?}")),
                }
                if id.is_multiple_of(10) {
                    match Client::connect(addr).and_then(|mut n| n.ping(b"new")) {
                        Ok(()) => good += 1,
                        Err(e) => failed.push(format!("new connection after {id}: {e}")),
                    }
                }
            }
            (good, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    reload_with(&s, "ok", |t| t.replace(&old_pin, &new_pin));
    // The established connection of the old certificate is closed (its
    // next request gets no answer), counted once.
    let revoked = "keycore_client_refused_total{reason=\"revoked_by_reload\"}";
    assert_eq!(wait_metric(&s, revoked, |v| v >= 1), 1);
    let s2 = ski(KeyKind::Ed25519);
    let after = b_old
        .send(&request(2, Op::ED25519_SIGN, Some(&s2), b"m"))
        .and_then(|_| b_old.recv());
    assert!(
        matches!(after, Err(_) | Ok(None)),
        "the revoked connection answered: {after:?}"
    );
    // New connections: the old certificate is refused, the rotated one in.
    let pin_refused = "keycore_client_refused_total{reason=\"spki_pin_mismatch\"}";
    let before = s.metric(pin_refused);
    assert!(is_refused(&s, &cert2, &key2), "the old pin is gone");
    assert_eq!(wait_metric(&s, pin_refused, |v| v > before), before + 1);
    let mut b_new = Client::connect_as(s.addr, &rotated, &rotated_key).unwrap();
    assert!(ok(&call(
        &mut b_new,
        3,
        Op::ED25519_SIGN,
        KeyKind::Ed25519,
        b"m"
    )));
    // edge-a kept going across the reload with no failed request.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (good, failed) = traffic.join().unwrap();
    assert!(failed.is_empty(), "edge-a failures: {failed:?}");
    assert!(good >= 10, "edge-a traffic ran ({good} answers)");
    assert_eq!(
        s.metric("keycore_client_connections{identity=\"edge-b\"}"),
        1,
        "only the rotated connection is open"
    );
}

#[test]
fn a_reload_changes_a_rate_limit_and_it_applies_on_open_connections() {
    let s = support::start(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n    max_rps: 20\n",
    );
    let mut a = Client::connect(s.addr).unwrap();
    let t = Instant::now();
    let (good, _) = burst(&mut a, 0, 200);
    let refill = (t.elapsed().as_secs_f64() * 20.0).ceil() as u32;
    assert!(
        (20..=20 + refill).contains(&good),
        "{good}, refill {refill}"
    );
    // Raised by reload: the same connection gets the new rate (a fresh
    // bucket with the new burst) at once.
    reload_with(&s, "ok", |t| {
        t.replace("max_rps: 20\n", "max_rps: 100000\n")
    });
    assert_eq!(burst(&mut a, 1000, 200), (200, 0));
    // Lowered again, through the default this time: the identity's own
    // limit goes and client_max_rps applies.
    reload_with(&s, "ok", |t| {
        t.replace("    max_rps: 100000\n", "").replace(
            "client_identities:",
            "client_max_rps: 10\nclient_identities:",
        )
    });
    let t = Instant::now();
    let (good, limited) = burst(&mut a, 2000, 200);
    let refill = (t.elapsed().as_secs_f64() * 10.0).ceil() as u32;
    assert!(
        (10..=10 + refill).contains(&good),
        "{good}, refill {refill}"
    );
    assert_eq!(good + limited, 200);
    // Nothing about identities needed a restart.
    assert_eq!(
        s.metric_where("keycore_config_restart_needed", "client_max_rps"),
        0
    );
}

#[test]
fn a_bad_client_identities_section_keeps_the_old_allow_list_and_counts_an_error() {
    let (cert2, key2) = second();
    let s = support::start(
        "client_identities:\n  - name: edge-a\n    names: [\"keycore demo client\"]\n",
    );
    let mut a = Client::connect(s.addr).unwrap();
    a.ping(b"before").unwrap();
    assert!(is_refused(&s, &cert2, &key2));
    // A pin that is not 64 hex digits, and an entry for the second client:
    // the whole file is refused, nothing of it applies.
    reload_with(&s, "error", |t| {
        t.replace(
            "client_identities:\n",
            "client_identities:\n  - name: edge-b\n    names: [\"*.keycore.test\"]\n    spki_sha256: [abc]\n",
        )
    });
    assert_eq!(s.metric("keycore_reload_total{result=\"ok\"}"), 0);
    assert!(is_refused(&s, &cert2, &key2), "edge-b was not let in");
    a.ping(b"after").unwrap();
    Client::connect(s.addr).unwrap().ping(b"new").unwrap();
    assert_eq!(
        s.metric("keycore_client_refused_total{reason=\"revoked_by_reload\"}"),
        0
    );
}

#[test]
fn a_reload_moves_the_audit_file_and_a_path_that_cannot_open_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let missing = dir.path().join("missing").join("x.jsonl");
    let s = support::start(&format!(
        "audit_file: {}\naudit_interval: 200ms\n",
        a.display()
    ));
    let mut c = Client::connect(s.addr).unwrap();
    let sign = |c: &mut Client, id: u32| {
        assert!(ok(&call(
            c,
            id,
            Op::ECDSA_SIGN_SHA256,
            KeyKind::EcdsaP256,
            &DIGEST
        )))
    };
    sign(&mut c, 1);
    // A directory that does not exist: refused as a whole, nothing moves.
    reload_with(&s, "error", |t| {
        t.replace(&a.display().to_string(), &missing.display().to_string())
    });
    sign(&mut c, 2);
    // The file moves; the running connection's counts follow it.
    reload_with(&s, "ok", |t| {
        t.replace(&missing.display().to_string(), &b.display().to_string())
    });
    sign(&mut c, 3);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    // ECDSA signatures counted in a file (counts not yet written when the
    // file moved are written to the new one).
    let signed = |text: &str| -> u64 {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["type"] == "ops" && r["op"] == "OpECDSASignSHA256" && r["result"] == "ok")
            .map(|r| r["count"].as_str().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let t = Instant::now();
    while signed(&read(&a)) + signed(&read(&b)) < 3 || signed(&read(&b)) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "counts: old file {}, new file {}",
            signed(&read(&a)),
            signed(&read(&b))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (old, new) = (read(&a), read(&b));
    assert_eq!(
        signed(&old) + signed(&new),
        3,
        "every signature counted once"
    );
    assert!(!missing.exists());
    let last = old.lines().last().unwrap();
    assert!(
        last.contains("\"type\":\"audit_file_changed\"") && last.contains("b.jsonl"),
        "the old file ends naming the new one: {last}"
    );
    assert!(new.contains("\"type\":\"reload\""), "{new}");
    assert_eq!(s.metric("keycore_audit_file_ok"), 1);
    assert_eq!(
        s.metric_where("keycore_config_restart_needed", "audit_file"),
        0
    );
}
