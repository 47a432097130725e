//! Issue 17, record and replay, against real `keycore serve` processes
//! (this suite's process fixture): a server records a known open-loop mix,
//! the recording is replayed against a second server with its own key
//! store (a copy of the keys in another directory), which records too; the
//! two recordings must agree on the mix (within 2% per operation) and on
//! the inter-arrival distribution (two-sample KS distance and quantile
//! ratios, bounds below). Also: rotation bounds the disk, and a core's
//! full record buffer drops and counts instead of waiting.
//!
//! Bounds are limits on a shared, loaded 2-core machine with a debug
//! server; they are not benchmarks.

use crate::support::{pki, serve, start, Server};
use keycore_keys::KeyKind;
use keycore_loadgen::replay::{self, ReplayOptions};
use keycore_loadgen::{ClientTlsPaths, LoadSpec, LoopMode, Profile};
use keycore_protocol::record::{parse, Record, HEADER_LEN, RECORD_LEN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn key_file(kind: KeyKind) -> PathBuf {
    pki().key_file(kind).to_path_buf()
}

/// The three keys the load uses (no RSA-4096: its debug-build cost would
/// dominate the timing the test compares).
fn keys() -> Vec<PathBuf> {
    [
        KeyKind::EcdsaP256,
        KeyKind::Ed25519,
        KeyKind::Rsa { bits: 2048 },
    ]
    .into_iter()
    .map(key_file)
    .collect()
}

fn spec(s: &Server) -> LoadSpec {
    let p = &pki().pki;
    let mut spec = LoadSpec::new(
        s.addr,
        ClientTlsPaths {
            ca: p.ca_cert.clone(),
            cert: p.client_cert.clone(),
            key: p.client_key.clone(),
        },
        keys(),
    );
    spec.server_name = Some("localhost".into());
    spec
}

fn stop(mut s: Server) {
    s.signal(libc::SIGTERM);
    assert!(
        s.wait_exit(Duration::from_secs(30)).is_some(),
        "server did not stop"
    );
}

fn records(p: &Path) -> Vec<Record> {
    let b = std::fs::read(p).unwrap();
    assert_eq!((b.len() - HEADER_LEN) % RECORD_LEN, 0);
    let (_, mut r) = parse(&b).unwrap();
    r.sort_by_key(|r| r.t_ns);
    r
}

fn mix(r: &[Record]) -> BTreeMap<u8, usize> {
    let mut m = BTreeMap::new();
    for x in r {
        *m.entry(x.op).or_default() += 1;
    }
    m
}

/// Gaps between consecutive arrivals, µs.
fn gaps(r: &[Record]) -> Vec<f64> {
    let mut g: Vec<f64> = r
        .windows(2)
        .map(|w| (w[1].t_ns - w[0].t_ns) as f64 / 1e3)
        .collect();
    g.sort_by(f64::total_cmp);
    g
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Two-sample Kolmogorov–Smirnov distance of two sorted samples.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

#[test]
fn a_replayed_recording_reproduces_the_mix_and_the_arrival_distribution() {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let rec_a = dir.path().join("a.rec");
    let a = start(&format!("record_file: {}\n", rec_a.display()));
    let mut s = spec(&a);
    s.profile = Profile {
        mode: LoopMode::Open,
        // ~10 ms mean gap: this shared machine's scheduling jitter (ms on a
        // loaded 2-core VM) stays small beside it.
        rate: 100.0,
        duration_s: 10.0,
        warmup_s: 0.0,
        connections: 4,
        seed: Some(17),
        mix: Profile::parse_mix("ecdsa-p256-sha256=60,ed25519=20,rsa-pss-sha256=10,ping=10")
            .unwrap(),
        ..Profile::default()
    };
    let ra = keycore_loadgen::run(&s).unwrap();
    assert_eq!(ra.total.errors, 0, "{:?}", ra.errors);
    stop(a);
    let recorded_a = records(&rec_a);
    // The load, plus the fixture's start-up ping.
    assert_eq!(recorded_a.len() as u64, ra.sent + 1);

    // Server B: its own key store directory (a copy), its own recording.
    let keys_b = dir.path().join("keys-b");
    std::fs::create_dir(&keys_b).unwrap();
    for k in keys() {
        std::fs::copy(&k, keys_b.join(k.file_name().unwrap())).unwrap();
    }
    let rec_b = dir.path().join("b.rec");
    let p = &pki().pki;
    let b = serve()
        .config(|port, mport| {
            format!(
                "loglevel: 1\nport: {port}\nmetrics_port: {mport}\nmetrics_address: 127.0.0.1\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nlisten_address: 127.0.0.1\ncores: 1\nrecord_file: {}\nprivate_key_stores:\n  - dir: {}\n",
                p.server_cert.display(),
                p.server_key.display(),
                p.ca_cert.display(),
                rec_b.display(),
                keys_b.display()
            )
        })
        .start();
    let mut s = spec(&b);
    s.replay = Some(ReplayOptions {
        files: vec![rec_a.clone()],
        scale: 1.0,
        ..Default::default()
    });
    let rb = keycore_loadgen::run(&s).unwrap();
    assert_eq!(rb.total.errors, 0, "{:?}", rb.errors);
    assert_eq!(rb.sent, recorded_a.len() as u64);
    assert_eq!(rb.profile.connections, 5, "4 load connections + the ping's");
    stop(b);
    let recorded_b = records(&rec_b);

    // Mix: within 2% per operation.
    same_mix(&recorded_a, &recorded_b);
    // Keys: the same SKIs in the same numbers.
    let skis = |r: &[Record]| {
        let mut m: BTreeMap<Option<[u8; 20]>, usize> = BTreeMap::new();
        for x in r {
            *m.entry(x.ski).or_default() += 1;
        }
        m
    };
    let (sa, sb) = (skis(&recorded_a), skis(&recorded_b));
    for (k, &na) in &sa {
        let nb = sb.get(k).copied().unwrap_or(0);
        assert!((nb as f64 - na as f64).abs() <= 0.02 * na as f64 + 1.0);
    }
    // Inter-arrival distribution, as the servers saw it. Bounds
    // (measured on the loaded shared machine at 100 req/s: KS 0.037-0.048,
    // p50/p90/p99 ratios 0.97-1.06): KS under 0.1 (for
    // ~1,000 gaps each the 1% critical value of two samples from one
    // distribution is ~0.073), p50/p90/p99 within x1.2. p10 (at most ~1 ms)
    // is not checked: a generator can only be late, never early, so its
    // scheduling jitter shortens short gaps, and a replay adds its jitter
    // to the one already recorded (measured p10 ratios 0.18-0.65).
    same_arrivals(&recorded_a, &recorded_b, 0.1, 1.2, lag(&ra, &rb));

    // Scaled x2: the same requests in half the time.
    let c = start("");
    let mut s = spec(&c);
    s.replay = Some(ReplayOptions {
        files: vec![rec_a.clone()],
        scale: 2.0,
        ..Default::default()
    });
    let rc = keycore_loadgen::run(&s).unwrap();
    assert_eq!(rc.total.errors, 0, "{:?}", rc.errors);
    assert_eq!(rc.sent, recorded_a.len() as u64);
    let ratio = rc.total.throughput_per_s / rb.total.throughput_per_s;
    assert!((1.8..=2.2).contains(&ratio), "x2 replay ran at x{ratio:.2}");
    stop(c);
}

/// Compare two recordings' inter-arrival distributions: KS distance under
/// `max_ks`, p50/p90/p99 ratios within `max_ratio`; p10 is printed, not
/// checked (sub-millisecond gaps: below this machine's scheduling resolution).
///
/// Only when neither generator was starved: with a send lag p99 over
/// [`MAX_LAG_US`] (a machine so loaded that the generator sends in bursts:
/// seen at load average 13 on this 2-core VM, lag p99 24-42 ms, median
/// gap 0.2 ms instead of 7 ms) the arrivals say more about the scheduler
/// than about the replay; the comparison is then printed, not asserted.
fn same_arrivals(a: &[Record], b: &[Record], max_ks: f64, max_ratio: f64, lag: (u64, u64)) {
    let (ga, gb) = (gaps(a), gaps(b));
    let d = ks(&ga, &gb);
    let mut report = format!(
        "generator send lag p99 {} µs recorded, {} µs replayed; KS distance {d:.4}; gaps (µs) recorded vs replayed:",
        lag.0, lag.1
    );
    let mut worst: f64 = 1.0;
    for q in [0.1, 0.5, 0.9, 0.99] {
        let (x, y) = (quantile(&ga, q), quantile(&gb, q));
        let ratio = y / x.max(1.0);
        report.push_str(&format!(" p{}: {x:.0} / {y:.0} ({ratio:.2})", q * 100.0));
        if q >= 0.5 {
            worst = worst.max(ratio).max(1.0 / ratio);
        }
    }
    eprintln!("{report}");
    if lag.0.max(lag.1) > MAX_LAG_US {
        eprintln!("NOT CHECKED (generator starved): the inter-arrival comparison above");
        return;
    }
    assert!(d < max_ks, "{report}");
    assert!(worst <= max_ratio, "{report}");
}

/// Generator send lag p99 above which arrival timing is not compared.
const MAX_LAG_US: u64 = 5_000;

/// The send lag p99 of the recorded and the replayed run, µs.
fn lag(a: &keycore_loadgen::Report, b: &keycore_loadgen::Report) -> (u64, u64) {
    let p99 = |r: &keycore_loadgen::Report| r.send_lag.as_ref().map_or(u64::MAX, |l| l.p99_us);
    (p99(a), p99(b))
}

/// The timing tests run one at a time: two generators and four servers
/// at once on a 2-core machine measure the scheduler, not the replay.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Requests per opcode within 2%.
fn same_mix(a: &[Record], b: &[Record]) {
    let (ma, mb) = (mix(a), mix(b));
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>());
    for (op, &na) in &ma {
        let nb = mb[op];
        let rel = (nb as f64 - na as f64).abs() / na as f64;
        assert!(
            rel <= 0.02,
            "opcode 0x{op:02x}: {na} recorded, {nb} replayed"
        );
    }
}

/// A migration rehearsal onto another backend: software keys recorded,
/// replayed against a SoftHSM2 token whose key is a different one, named
/// with `--replay-map` (its SKI differs); the token server's recording
/// carries the new SKI with the recorded mix and arrivals.
#[test]
fn a_recording_replays_onto_a_softhsm_token_with_a_key_map() {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some((conf, spki)) = crate::leak::token(dir.path()) else {
        eprintln!("SKIP: softhsm2 / pkcs11-tool not installed");
        return;
    };
    let rec_a = dir.path().join("a.rec");
    let a = start(&format!("record_file: {}\n", rec_a.display()));
    let mut s = spec(&a);
    s.keys = vec![key_file(KeyKind::EcdsaP256)];
    s.profile = Profile {
        mode: LoopMode::Open,
        rate: 100.0,
        duration_s: 8.0,
        warmup_s: 0.0,
        connections: 2,
        seed: Some(18),
        mix: Profile::parse_mix("ecdsa-p256-sha256=90,ping=10").unwrap(),
        ..Profile::default()
    };
    let ra = keycore_loadgen::run(&s).unwrap();
    assert_eq!(ra.total.errors, 0, "{:?}", ra.errors);
    stop(a);
    let recorded_a = records(&rec_a);

    let rec_b = dir.path().join("b.rec");
    // Offloaded, as an HSM is run in production: an inline token call
    // holds the reactor, so requests arriving meanwhile are read (and
    // recorded) together when it returns (docs/record-format.md).
    let store = format!(
        "  - uri: \"pkcs11:token=hostile;id=%01?module-path={}&pin-value=4321&x-dispatch=offload\"\n",
        keycore_testsupport::SOFTHSM_MODULE
    );
    let b = serve()
        .yaml(&format!("record_file: {}\n", rec_b.display()))
        .stores(&store)
        .env("SOFTHSM2_CONF", &conf)
        .start();
    let pub_b = dir.path().join("hsm.pub.der");
    std::fs::write(&pub_b, &spki).unwrap();
    let old =
        keycore_loadgen::keys::load_public_keys(&[key_file(KeyKind::EcdsaP256)]).unwrap()[0].ski;
    let new = keycore_keys::ski_from_spki(&spki).unwrap();
    assert_ne!(old, new);
    let mut s = spec(&b);
    s.keys = vec![pub_b];
    let mut o = ReplayOptions {
        files: vec![rec_a.clone()],
        scale: 1.0,
        ..Default::default()
    };
    // Without the map: refused, naming the recorded key.
    s.replay = Some(o.clone());
    let e = format!("{:#}", keycore_loadgen::run(&s).unwrap_err());
    assert!(
        e.contains(&replay::hex(&old)) && e.contains("--replay-map"),
        "{e}"
    );
    o.map = replay::parse_map(&[format!("{}={}", replay::hex(&old), replay::hex(&new))]).unwrap();
    s.replay = Some(o);
    let rb = keycore_loadgen::run(&s).unwrap();
    assert_eq!(rb.total.errors, 0, "{:?}", rb.errors);
    stop(b);
    let recorded_b = records(&rec_b);
    // Every recorded key operation reached the token's key.
    assert!(recorded_b
        .iter()
        .filter(|r| r.op != keycore_protocol::Op::PING.0)
        .all(|r| r.ski == Some(new)));
    same_mix(&recorded_a, &recorded_b);
    // ~800 gaps: the 1% critical KS value is ~0.082.
    same_arrivals(&recorded_a, &recorded_b, 0.12, 1.25, lag(&ra, &rb));
}

#[test]
fn rotation_bounds_the_disk_and_a_full_buffer_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("r.rec");
    // 4096-byte files (112 records each), two rotations kept, 16 records
    // buffered per core between the writer's 50 ms takes.
    let srv = start(&format!(
        "record_file: {}\nrecord_max_bytes: 4096\nrecord_files: 2\nrecord_buffer: 16\n",
        rec.display()
    ));
    let mut s = spec(&srv);
    s.profile = Profile {
        mode: LoopMode::Closed,
        concurrency: 32,
        duration_s: 2.0,
        warmup_s: 0.0,
        connections: 4,
        mix: Profile::parse_mix("ping=1").unwrap(),
        ..Profile::default()
    };
    let r = keycore_loadgen::run(&s).unwrap();
    assert_eq!(r.total.errors, 0);
    let requests = srv.metric("keycore_requests_total");
    let written = srv.metric("keycore_record_records_total");
    let dropped = srv.metric("keycore_record_dropped_total");
    stop(srv);
    assert!(dropped > 0, "{requests} requests, {written} written");
    // Every request is either written or counted as dropped (the scrape
    // itself is no request; the writer wrote before the scrape or after).
    assert!(
        written + dropped <= requests,
        "{written} + {dropped} > {requests}"
    );
    assert!(
        written + dropped + 16 * 2 >= requests,
        "{written} + {dropped} << {requests}"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["r.rec", "r.rec.1", "r.rec.2"], "written {written}");
    for n in &names {
        let b = std::fs::read(dir.path().join(n)).unwrap();
        assert!(b.len() <= 4096, "{n}: {} bytes", b.len());
        parse(&b).unwrap();
    }
}
