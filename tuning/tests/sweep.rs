//! A concurrency sweep against the real key server on loopback.

use keycore_loadgen::{ClientTlsPaths, LoadSpec, Profile};
use keycore_tuning::{sweep, SweepSpec};

#[test]
fn sweep_measures_every_point_and_recommends_one_within_the_slo() {
    let pki = &keycore_testsupport::pki::shared().pki;
    let (index, _) = keycore_testsupport::inproc::software_keys(&pki.keys_dir);
    let handle = keycore_testsupport::inproc::start(
        &Default::default(),
        pki,
        &pki.server_cert,
        &pki.server_key,
        index,
        Vec::new(),
    );
    let mut spec = LoadSpec::new(
        handle.addr,
        ClientTlsPaths {
            ca: pki.ca_cert.clone(),
            cert: pki.client_cert.clone(),
            key: pki.client_key.clone(),
        },
        vec![pki.keys_dir.clone()],
    );
    spec.server_name = Some("localhost".into());
    spec.profile = Profile {
        mix: Profile::parse_mix("ecdsa-p256-sha256=1").unwrap(),
        ..Profile::default()
    };
    let s = SweepSpec {
        connections: vec![1, 2],
        concurrency: vec![1, 16],
        step_duration_s: 0.5,
        step_warmup_s: 0.1,
        // Generous: a shared test machine; the point is the mechanics.
        slo_p99_ms: 1000.0,
    };
    let mut seen = 0;
    let rep = sweep(&spec, &s, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 4);
    assert_eq!(rep.points.len(), 4);
    assert!(rep
        .points
        .iter()
        .all(|p| p.errors == 0 && p.throughput_per_s > 0.0));
    let best = rep.recommended.clone().expect("a point within a 1 s SLO");
    let max = rep
        .points
        .iter()
        .filter(|p| p.meets_slo)
        .map(|p| p.throughput_per_s)
        .fold(0.0, f64::max);
    assert_eq!(best.throughput_per_s, max);
    let mut out = Vec::new();
    rep.print_text(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("recommended:"), "{text}");
    assert_eq!(rep.to_json()["points"].as_array().unwrap().len(), 4);

    // An SLO no server meets: nothing recommended, and the note says why.
    let strict = SweepSpec {
        connections: vec![1],
        concurrency: vec![4],
        slo_p99_ms: 0.000_001,
        ..s
    };
    let rep = sweep(&spec, &strict, &mut |_| {}).unwrap();
    assert!(rep.recommended.is_none());
    assert!(
        rep.notes.iter().any(|n| n.contains("can't meet")),
        "{:?}",
        rep.notes
    );
    handle.shutdown();
    handle.join().unwrap();
}
