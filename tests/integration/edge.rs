//! `keycore edge` end to end: a real key server (in this process, software
//! keys), the edge as a separate `keycore edge` process holding only
//! certificate chains, and real clients (curl, `openssl s_client`).
//!
//! "The edge never had the key" is checked two ways: its command line and
//! files hold no key (the chain loader refuses a PEM with a key in it), and
//! its process memory holds none of the private keys' bytes. The memory check
//! reads every readable region listed in /proc/PID/maps through
//! /proc/PID/mem (we are its parent, so ptrace access is allowed; no core
//! dump is written) and searches for each private key's secret integers, big-
//! and little-endian (aws-lc keeps BIGNUMs as little-endian words), and for
//! the PKCS#8 DER of the key file. A positive control runs the same scan on a
//! `keycore serve` process that loaded the same keys, so a scan that can't
//! see keys can't pass.

use crate::harness::{serve, TestServer};
use keycore_engine::pki::{self, DemoPki};
use keycore_testsupport::server::Server;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines of stderr seen so far (logs), without waiting.
    fn log(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

struct EdgeProc {
    p: Proc,
    addr: SocketAddr,
    metrics: SocketAddr,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keycore")
}

/// Forward a pipe into a channel, line by line, from a thread.
fn pump(r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn start_edge(pki: &DemoPki, certs: &[&Path], keyservers: &[String], extra: &[&str]) -> EdgeProc {
    let mut cmd = Command::new(bin());
    cmd.arg("edge")
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--workers", "16"])
        .arg("--keyserver-ca")
        .arg(&pki.ca_cert)
        .arg("--client-cert")
        .arg(&pki.client_cert)
        .arg("--client-key")
        .arg(&pki.client_key)
        .args(extra)
        .env("KEYCORE_LOG", "keycore_edge=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for c in certs {
        cmd.arg("--cert").arg(c);
    }
    for k in keyservers {
        cmd.args(["--keyserver", k]);
    }
    let mut child = cmd.spawn().expect("spawn keycore edge");
    let out = pump(child.stdout.take().unwrap());
    let err = pump(child.stderr.take().unwrap());
    let p = Proc { child, lines: err };
    let line = out
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("edge did not start: {:?}", p.log()));
    let (addr, metrics) = keycore_edge::parse_ready_line(&line).expect(&line);
    // Give key servers that are up a moment to get a connection, so tests
    // measure handshakes, not the first connect (a dead one never will).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let m = scrape(metrics);
        let all_up = m
            .lines()
            .filter(|l| l.starts_with("keycore_edge_keyserver_up{"))
            .all(|l| !l.ends_with(" 0"));
        if all_up {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    EdgeProc { p, addr, metrics }
}

fn scrape(addr: SocketAddr) -> String {
    let mut c = std::net::TcpStream::connect(addr).expect("metrics");
    write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// Value of one sample line (exact series text before the space).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Site certificates for localhost, one per key kind the key server holds.
fn site_certs(srv: &TestServer) -> Vec<(String, PathBuf)> {
    let pki = &srv.pki;
    let mut out = Vec::new();
    for (i, k) in ["p256", "rsa2048", "p384", "ed25519", "p521"]
        .iter()
        .enumerate()
    {
        let path = srv.dir().join(format!("site-{k}.pem"));
        pki::issue_site_cert(
            pki,
            &pki.keys_dir.join(format!("{k}.key")),
            "localhost",
            30 + i as u8,
            &path,
        )
        .expect("site certificate");
        out.push((k.to_string(), path));
    }
    out
}

fn curl(pki: &DemoPki, edge: SocketAddr, extra: &[&str]) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-v", "-sS", "--max-time", "15", "--cacert"])
        .arg(&pki.ca_cert)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", edge.port())])
        .args(extra)
        .arg(format!("https://localhost:{}/", edge.port()))
        .output()
        .expect("curl is installed");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        ),
    )
}

fn s_client(pki: &DemoPki, edge: SocketAddr, extra: &[&str]) -> String {
    let mut c = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &edge.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(&pki.ca_cert)
        .args(["-verify_return_error", "-ign_eof"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    c.stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "openssl s_client hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = c.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn curl_and_openssl_complete_handshakes_signed_by_the_key_server() {
    let srv = TestServer::start();
    let certs = site_certs(&srv);
    let paths: Vec<&Path> = certs.iter().map(|(_, p)| p.as_path()).collect();
    let edge = start_edge(&srv.pki, &paths, &[srv.addr.to_string()], &[]);

    // curl, TLS 1.3 and TLS 1.2: the first certificate (ECDSA P-256).
    let (ok, out) = curl(&srv.pki, edge.addr, &["--tlsv1.3"]);
    assert!(ok, "{out}");
    assert!(out.contains("SSL connection using TLSv1.3"), "{out}");
    assert!(out.contains("SSL certificate verify ok"), "{out}");
    assert!(
        out.contains("Signature:    ECDSA_NISTP256_SHA256 (opcode 0x15"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Key server:   {}", srv.addr)),
        "{out}"
    );
    let (ok, out) = curl(&srv.pki, edge.addr, &["--tlsv1.2", "--tls-max", "1.2"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SSL connection using TLSv1.2 / ECDHE-ECDSA"),
        "{out}"
    );
    // curl with only ECDHE-RSA suites over TLS 1.2: the RSA certificate, PKCS#1 or PSS.
    let (ok, out) = curl(
        &srv.pki,
        edge.addr,
        &[
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("SSL connection using TLSv1.2 / ECDHE-RSA-AES128-GCM-SHA256"),
        "{out}"
    );
    assert!(out.contains("Signature:    RSA_"), "{out}");

    // openssl s_client: every scheme, each to the opcode of its hash.
    let cases: [(&[&str], &str, &str); 8] = [
        (
            &["-tls1_3", "-sigalgs", "ecdsa_secp256r1_sha256"],
            "ECDSA_NISTP256_SHA256",
            "0x15",
        ),
        (
            &["-tls1_3", "-sigalgs", "ecdsa_secp384r1_sha384"],
            "ECDSA_NISTP384_SHA384",
            "0x16",
        ),
        (
            &["-tls1_3", "-sigalgs", "ecdsa_secp521r1_sha512"],
            "ECDSA_NISTP521_SHA512",
            "0x17",
        ),
        (
            &["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"],
            "RSA_PSS_SHA256",
            "0x35",
        ),
        (
            &["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha512"],
            "RSA_PSS_SHA512",
            "0x37",
        ),
        (&["-tls1_3", "-sigalgs", "ed25519"], "ED25519", "0x18"),
        (
            &["-tls1_2", "-sigalgs", "RSA+SHA384"],
            "RSA_PKCS1_SHA384",
            "0x06",
        ),
        (
            &["-tls1_2", "-sigalgs", "ECDSA+SHA256"],
            "ECDSA_NISTP256_SHA256",
            "0x15",
        ),
    ];
    for (args, scheme, op) in cases {
        let out = s_client(&srv.pki, edge.addr, args);
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{args:?}\n{out}"
        );
        assert!(
            out.contains(&format!("Signature:    {scheme} (opcode {op}")),
            "{args:?}\n{out}"
        );
    }
    let m = scrape(edge.metrics);
    let ok = metric(&m, "keycore_edge_handshakes_total");
    assert!(ok >= 10, "{m}");
    assert_eq!(
        metric(&m, "keycore_edge_keyless_rtt_seconds_count"),
        ok,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "keycore_edge_keyserver_requests_total{{keyserver=\"{}\",result=\"ok\"}}",
                srv.addr
            )
        ),
        ok
    );
    // The key server did the signing: it answered at least those requests.
    assert!(srv.registry().sum(|c| c.responses.get()) >= ok);
}

#[test]
fn the_edge_process_holds_no_private_key_bytes() {
    let srv = TestServer::start();
    let certs = site_certs(&srv);
    let paths: Vec<&Path> = certs.iter().map(|(_, p)| p.as_path()).collect();
    let edge = start_edge(&srv.pki, &paths, &[srv.addr.to_string()], &[]);
    // Make it sign with every key first, so whatever it touched is in memory.
    for sig in [
        "ecdsa_secp256r1_sha256",
        "rsa_pss_rsae_sha256",
        "ecdsa_secp384r1_sha384",
        "ed25519",
        "ecdsa_secp521r1_sha512",
    ] {
        let out = s_client(&srv.pki, edge.addr, &["-tls1_3", "-sigalgs", sig]);
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    let secrets: Vec<(String, Vec<Vec<u8>>)> = certs
        .iter()
        .map(|(k, _)| {
            (
                k.clone(),
                secret_patterns(&srv.pki.keys_dir.join(format!("{k}.key"))),
            )
        })
        .collect();
    let found = scan(edge.p.pid(), &secrets);
    assert!(
        found.is_empty(),
        "edge memory holds key material: {found:?}"
    );

    // Positive control: a key server process that loaded the same keys.
    let ks = start_serve(&srv.pki);
    let found = scan(ks.child.id(), &secrets);
    let names: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        ["p256", "rsa2048", "p384", "ed25519", "p521"]
            .iter()
            .all(|k| names.contains(k)),
        "the scan must see every key in the key server's memory, saw {found:?}"
    );
}

#[test]
fn key_server_down_erroring_or_failing_over() {
    let srv = TestServer::start();
    let certs = site_certs(&srv);
    let p256 = certs[0].1.as_path();
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };

    // Down: the visitor's handshake fails, with a counted reason and a log
    // line; the edge keeps serving (metrics answer) and never signs itself.
    let edge = start_edge(
        &srv.pki,
        &[p256],
        &[dead.to_string()],
        &["--keyless-timeout-ms", "300"],
    );
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(!ok, "{out}");
    // The visitor is told with an alert (close_notify: rustls has no API
    // for another one), not left with a silent close.
    assert!(out.contains("TLS alert"), "{out}");
    let m = scrape(edge.metrics);
    assert_eq!(metric(&m, "keycore_edge_handshakes_total"), 0);
    assert_eq!(
        metric(
            &m,
            "keycore_edge_handshake_failures_total{reason=\"keyless_unavailable\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("keycore_edge_keyserver_up{{keyserver=\"{dead}\"}}")
        ),
        0
    );
    std::thread::sleep(Duration::from_millis(100));
    let log = edge.p.log().join("\n");
    assert!(
        log.contains("handshake failed") && log.contains("keyless_unavailable"),
        "{log}"
    );
    drop(edge);

    // Failover: the dead server first, the live one second; every visitor gets through.
    let edge = start_edge(
        &srv.pki,
        &[p256],
        &[dead.to_string(), srv.addr.to_string()],
        &["--keyless-timeout-ms", "2000"],
    );
    for _ in 0..5 {
        let (ok, out) = curl(&srv.pki, edge.addr, &[]);
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("Key server:   {}", srv.addr)),
            "{out}"
        );
    }
    let m = scrape(edge.metrics);
    assert_eq!(metric(&m, "keycore_edge_handshakes_total"), 5, "{m}");
    drop(edge);

    // Erroring: a certificate whose key the key server doesn't have (key not found).
    // (The foreign client's P-256 key: no key server holds it.)
    let foreign_site = srv.dir().join("site-unknown-key.pem");
    pki::issue_site_cert(
        &srv.pki,
        &srv.pki.foreign_client_key,
        "localhost",
        40,
        &foreign_site,
    )
    .unwrap();
    let edge = start_edge(&srv.pki, &[&foreign_site], &[srv.addr.to_string()], &[]);
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(!ok, "{out}");
    let m = scrape(edge.metrics);
    assert_eq!(
        metric(
            &m,
            "keycore_edge_handshake_failures_total{reason=\"keyless_error\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "keycore_edge_keyserver_requests_total{{keyserver=\"{}\",result=\"error\"}}",
                srv.addr
            )
        ),
        1
    );
}

#[test]
fn a_black_hole_key_server_fails_only_its_visitors_within_the_deadline() {
    let srv = TestServer::start();
    let certs = site_certs(&srv);
    // Accepts TCP and never says a word: connections to it never come up.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let edge = start_edge(
        &srv.pki,
        &[&certs[0].1],
        &[hole_addr.to_string()],
        &["--keyless-timeout-ms", "400"],
    );
    let t0 = Instant::now();
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(!ok, "{out}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let m = scrape(edge.metrics);
    let failed = metric(
        &m,
        "keycore_edge_handshake_failures_total{reason=\"keyless_unavailable\"}",
    ) + metric(
        &m,
        "keycore_edge_handshake_failures_total{reason=\"keyless_timeout\"}",
    );
    assert_eq!(failed, 1, "{m}");
    drop(hole);
}

/// `keycore serve` on `pki`'s demo keys, as a child process (positive
/// control).
fn start_serve(pki: &DemoPki) -> Server {
    serve().pki(pki).start()
}

/// `keycore serve` on `pki`'s demo keys on `port`.
fn start_serve_on(pki: &DemoPki, port: u16) -> Server {
    serve().pki(pki).port(port).start()
}

/// The byte strings that would betray a private key: its PKCS#8 DER, and
/// each secret integer (EC/Ed25519 scalar; RSA d, p, q) big- and
/// little-endian.
fn secret_patterns(key_file: &Path) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(key_file).unwrap();
    let der = der.secret_pkcs8_der().to_vec();
    let mut ints = Vec::new();
    // PKCS#8: SEQUENCE { INTEGER version, SEQUENCE alg, OCTET STRING key }.
    let top = tlv(&der).1;
    let (_, rest) = next(top);
    let (_, rest) = next(rest);
    let (inner, _) = next(rest);
    let inner = tlv(inner).1;
    if inner.first() == Some(&0x04) {
        // Ed25519: OCTET STRING { 32 bytes }.
        ints.push(tlv(inner).1.to_vec());
    } else {
        // RSAPrivateKey { version 0, n, e, d, p, q, ... } or
        // ECPrivateKey { version 1, OCTET STRING d, ... }.
        let (ver, mut r) = next(tlv(inner).1);
        if tlv(ver).1 == [1] {
            ints.push(tlv(next(r).0).1.to_vec());
        } else {
            for i in 0..5 {
                let (item, rest) = next(r);
                if i >= 2 {
                    ints.push(strip_zero(tlv(item).1).to_vec());
                }
                r = rest;
            }
        }
    }
    let mut pats = vec![der];
    for i in ints {
        assert!(i.len() >= 32, "secret integer too short to search for");
        let mut le = i.clone();
        le.reverse();
        pats.push(i);
        pats.push(le);
    }
    pats
}

fn strip_zero(b: &[u8]) -> &[u8] {
    match b {
        [0, rest @ ..] => rest,
        _ => b,
    }
}

/// (this element's header+content, the rest)
fn next(b: &[u8]) -> (&[u8], &[u8]) {
    let (hl, cl) = header(b);
    b.split_at(hl + cl)
}

/// (tag, content) of the first element.
fn tlv(b: &[u8]) -> (u8, &[u8]) {
    let (hl, cl) = header(b);
    (b[0], &b[hl..hl + cl])
}

fn header(b: &[u8]) -> (usize, usize) {
    let l = b[1] as usize;
    if l < 0x80 {
        (2, l)
    } else {
        let n = l & 0x7f;
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | x as usize);
        (2 + n, len)
    }
}

/// Which (key, pattern index) occur in the readable memory of `pid`.
fn scan(pid: u32, secrets: &[(String, Vec<Vec<u8>>)]) -> Vec<(String, usize)> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem =
        std::fs::File::open(format!("/proc/{pid}/mem")).expect("read /proc/PID/mem of a child");
    let mut found = Vec::new();
    let mut scanned = 0usize;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).unwrap_or("");
        // Readable, and not the kernel's vsyscall page. File-backed
        // read-only mappings (the binary, libraries) are scanned too.
        if !perms.starts_with('r') || path == "[vsyscall]" || path == "[vvar]" {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        let Ok(n) = mem.read_at(&mut buf, a) else {
            continue;
        };
        buf.truncate(n);
        scanned += n;
        for (k, pats) in secrets {
            for (i, p) in pats.iter().enumerate() {
                if memchr::memmem::find(&buf, p).is_some() {
                    found.push((k.clone(), i));
                }
            }
        }
    }
    assert!(
        scanned > 1 << 20,
        "scanned only {scanned} bytes of pid {pid}"
    );
    found.sort();
    found.dedup();
    found
}

#[test]
fn loadgen_handshakes_measures_full_and_resumed_handshakes_through_the_edge() {
    let srv = TestServer::start();
    let certs = site_certs(&srv);
    let edge = start_edge(&srv.pki, &[&certs[0].1], &[srv.addr.to_string()], &[]);
    let html = srv.dir().join("hs.html");
    let hdr = srv.dir().join("hs.hlog");
    let run = |extra: &[&str]| -> serde_json::Value {
        let o = Command::new(bin())
            .args([
                "loadgen",
                "--handshakes",
                "--server",
                &edge.addr.to_string(),
                "--ca",
            ])
            .arg(&srv.pki.ca_cert)
            .args([
                "--rate",
                "40",
                "--duration",
                "2",
                "--warmup",
                "0.5",
                "--json",
                "--quiet",
            ])
            .args([
                "--keyserver-metrics",
                &format!("http://{}/metrics", edge.metrics),
            ])
            .args(extra)
            .output()
            .expect("keycore loadgen");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("JSON report")
    };
    let r = run(&[
        "--html",
        html.to_str().unwrap(),
        "--hdr-log",
        hdr.to_str().unwrap(),
    ]);
    // 80 scheduled in the window; a loaded CI host may lose a few to the deadline.
    let full = r["full"].as_u64().unwrap();
    assert!(full >= 40, "{r:#}");
    assert_eq!(r["resumed"], 0, "{r:#}");
    assert!(r["errors"].as_object().unwrap().is_empty(), "{r:#}");
    // The generator's own executor threads did the TLS client work.
    assert!(r["generator_cpu_pct"].as_f64().unwrap() > 0.0, "{r:#}");
    let k = &r["keyless"];
    assert_eq!(k["source"], "keycore_edge_keyless_rtt_seconds", "{r:#}");
    // One signature per full handshake in the window (give or take the edges of the window).
    assert!(k["calls"].as_u64().unwrap() + 5 >= full, "{r:#}");
    assert!(k["mean_us"].as_f64().unwrap() > 0.0);
    assert!(
        k["mean_us"].as_f64().unwrap() < k["handshake_mean_us"].as_f64().unwrap(),
        "{r:#}"
    );
    let phase = |r: &serde_json::Value, name: &str| {
        r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap()["latency"]
            .clone()
    };
    assert!(phase(&r, "handshake-full")["p99_us"].as_u64().unwrap() > 0);
    assert!(phase(&r, "handshake-resumed").is_null());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("handshake-full"));
    let log = std::fs::read_to_string(&hdr).unwrap();
    assert!(log.contains("Tag=handshake-full,"), "{log}");

    // With resumption allowed, most connections skip the key server.
    let before = metric(
        &scrape(edge.metrics),
        "keycore_edge_handshakes_resumed_total",
    );
    let r = run(&["--resume-ratio", "1"]);
    let resumed = r["resumed"].as_u64().unwrap();
    assert!(resumed >= 30, "{r:#}");
    assert!(phase(&r, "handshake-resumed")["p50_us"].as_u64().unwrap() > 0);
    let after = metric(
        &scrape(edge.metrics),
        "keycore_edge_handshakes_resumed_total",
    );
    assert!(after - before >= resumed, "{before} {after} {r:#}");
}

#[test]
fn tls12_only_edge_talks_to_a_tls12_only_key_server() {
    // Parity with the deployed edge: TLS 1.2 with the two ECDHE-AES256-GCM
    // suites towards the key server (PROTOCOL.md "Transport").
    let srv = TestServer::start_with(crate::harness::Opts {
        tls12_only: true,
        ..Default::default()
    });
    let certs = site_certs(&srv);
    let edge = start_edge(
        &srv.pki,
        &[&certs[0].1],
        &[srv.addr.to_string()],
        &["--tls12-only"],
    );
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("Signature:    ECDSA_NISTP256_SHA256"), "{out}");
    let m = scrape(edge.metrics);
    assert_eq!(metric(&m, "keycore_edge_handshakes_total"), 1, "{m}");
}

#[test]
fn the_edge_reconnects_when_its_key_server_comes_back() {
    let srv = TestServer::start();
    let certs = site_certs(&srv);
    let port = keycore_testsupport::server::free_port();
    let ks = format!("127.0.0.1:{port}");
    let first = start_serve_on(&srv.pki, port);
    let edge = start_edge(&srv.pki, &[&certs[0].1], std::slice::from_ref(&ks), &[]);
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(ok, "{out}");
    drop(first);
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(!ok, "no key server, no handshake: {out}");
    let _second = start_serve_on(&srv.pki, port);
    // The pool redials with backoff (at most 2 s between attempts).
    let deadline = Instant::now() + Duration::from_secs(15);
    let up = format!("keycore_edge_keyserver_up{{keyserver=\"{ks}\"}}");
    while metric(&scrape(edge.metrics), &up) == 0 {
        assert!(Instant::now() < deadline, "the edge did not reconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = curl(&srv.pki, edge.addr, &[]);
    assert!(ok, "{out}");
    let m = scrape(edge.metrics);
    assert_eq!(metric(&m, "keycore_edge_handshakes_total"), 2, "{m}");
}
