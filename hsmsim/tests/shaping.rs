//! Latency and capacity come out as configured (within 10% on the side the simulator controls;
//! host load, which can only add latency and cut throughput, gets 30% on the other side):
//! measured from the caller's side through cryptoki, with ECDSA P-256 keys (cheap in SoftHSM, so
//! the 2-core test machine's own work stays far below the simulated service times). Each
//! scenario runs a few seconds. The README's accuracy table records the measured errors.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Relative tolerance the issue asks for.
const TOLERANCE: f64 = 0.10;
/// Tolerance on the side host load pushes (more latency, less throughput): a 2-core machine at
/// load average 18 measured +13% latency and -4% throughput.
const LOADED_HOST_TOLERANCE: f64 = 0.30;

struct Run {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// `threads` threads each sign in a loop for `duration` on their own session.
fn run_signers(h: &Harness, threads: usize, duration: Duration) -> Run {
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let s = h.session();
                    let key = private_key(&s, EC_LABEL);
                    let mut lat = Vec::new();
                    while start.elapsed() < duration {
                        let t0 = Instant::now();
                        ec_sign(&s, key).expect("sign");
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|j| j.join().unwrap())
            .collect()
    });
    let elapsed = start.elapsed();
    latencies.sort();
    Run {
        ops: latencies.len(),
        elapsed,
        latencies,
    }
}

fn mean(d: &[Duration]) -> Duration {
    d.iter().sum::<Duration>() / d.len() as u32
}

fn assert_between(what: &str, measured: f64, expected: f64, below: f64, above: f64) {
    let err = (measured - expected) / expected;
    eprintln!(
        "{what}: measured {measured:.1}, configured {expected:.1} ({:+.1}%)",
        err * 100.0
    );
    assert!(
        (-below..=above).contains(&err),
        "{what}: measured {measured:.1} vs configured {expected:.1} ({:+.1}%, allowed -{}%..+{}%)",
        err * 100.0,
        below * 100.0,
        above * 100.0
    );
}

#[test]
fn uncontended_latency_matches_rtt_plus_fixed_plus_lognormal() {
    let (_g, h) = lock();
    // Per cryptoki sign: C_SignInit (one RTT) + C_Sign (one RTT + ECDSA service time); the size
    // query in between is answered locally.
    let rtt_us = 1000.0;
    let (fixed_us, median_us, sigma) = (4000.0, 1000.0, 0.5);
    h.set_config(&config_with(&format!(
        r#""seed": 1, "rtt": {{"fixed_us": {rtt_us}}},
           "latency": {{"mechanisms": {{"CKM_ECDSA": {{"fixed_us": {fixed_us}, "median_us": {median_us}, "sigma": {sigma}}}}}}}"#
    )));
    let run = run_signers(h, 2, Duration::from_millis(2000));
    let expected_mean_us = 2.0 * rtt_us + fixed_us + median_us * (sigma * sigma / 2.0f64).exp();
    // A busy host (other builds on 2 cores) can only add time to an uncontended call, so the
    // upper side allows more; the README's accuracy table records quieter runs.
    assert_between(
        "mean latency (us)",
        mean(&run.latencies).as_secs_f64() * 1e6,
        expected_mean_us,
        TOLERANCE,
        LOADED_HOST_TOLERANCE,
    );
    // The distribution is there: p10..p90 of a log-normal(median, sigma) spans
    // median * (e^{1.2816 sigma} - e^{-1.2816 sigma}). Host jitter can only widen the measured
    // spread, so this is a lower bound (a missing log-normal part would give ~0).
    let spread_us =
        (percentile(&run.latencies, 0.9) - percentile(&run.latencies, 0.1)).as_secs_f64() * 1e6;
    let expected_spread = median_us * ((1.2816 * sigma).exp() - (-1.2816 * sigma).exp());
    eprintln!("p90 - p10 spread (us): measured {spread_us:.0}, configured {expected_spread:.0}");
    assert!(
        spread_us >= 0.6 * expected_spread,
        "log-normal spread missing: {spread_us:.0} us"
    );
    assert_between(
        "median latency (us)",
        percentile(&run.latencies, 0.5).as_secs_f64() * 1e6,
        2.0 * rtt_us + fixed_us + median_us,
        TOLERANCE,
        LOADED_HOST_TOLERANCE,
    );
}

#[test]
fn concurrency_cap_bounds_throughput_to_cores_over_service_time() {
    let (_g, h) = lock();
    // 4 cores x 5 ms service = 800 ops/s; 8 signers keep all cores busy and 4 calls queued.
    h.set_config(&config_with(
        r#""capacity": {"max_concurrent": 4},
           "latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 5000}}}"#,
    ));
    let run = run_signers(h, 8, Duration::from_millis(2000));
    let throughput = run.ops as f64 / run.elapsed.as_secs_f64();
    // A busy host can only lower throughput and add latency: the loose side allows for it.
    assert_between(
        "throughput (ops/s)",
        throughput,
        800.0,
        LOADED_HOST_TOLERANCE,
        TOLERANCE,
    );
    // Little's law: 8 callers always in the system at 800/s -> 10 ms each, half of it queueing.
    assert_between(
        "mean latency (us)",
        mean(&run.latencies).as_secs_f64() * 1e6,
        8.0 / 800.0 * 1e6,
        TOLERANCE,
        LOADED_HOST_TOLERANCE,
    );
}

#[test]
fn rate_cap_bounds_throughput_and_excess_calls_queue() {
    let (_g, h) = lock();
    // The issue's scenario: 5 ms service, 4 concurrent, 400 ops/s, 8 threads. The rate (400/s)
    // binds before the cores (800/s), so callers queue for tokens: mean latency 8 / 400 = 20 ms.
    h.set_config(&config_with(
        r#""capacity": {"max_concurrent": 4, "max_ops_per_sec": 400},
           "latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 5000}}}"#,
    ));
    let run = run_signers(h, 8, Duration::from_millis(2000));
    let throughput = run.ops as f64 / run.elapsed.as_secs_f64();
    assert_between(
        "throughput (ops/s)",
        throughput,
        400.0,
        LOADED_HOST_TOLERANCE,
        TOLERANCE,
    );
    assert_between(
        "mean latency (us)",
        mean(&run.latencies).as_secs_f64() * 1e6,
        8.0 / 400.0 * 1e6,
        TOLERANCE,
        LOADED_HOST_TOLERANCE,
    );
}

#[test]
fn a_profile_applies_its_round_trip_and_service_time() {
    let (_g, h) = lock();
    // hsm1.medium: 4 cores at 250 EC P-256 sign/s -> 16 ms service; RTT 500 us per call.
    h.set_config(&config_with(
        r#""profile": "aws-cloudhsm-hsm1.medium", "seed": 5"#,
    ));
    let run = run_signers(h, 1, Duration::from_millis(1000));
    let expected_us = 2.0 * 500.0 + 4.0 * 1e6 / 250.0;
    // Wider margin: ~60 samples of a distribution with a log-normal tail; a busy host only
    // adds time.
    assert_between(
        "hsm1.medium EC sign (us)",
        mean(&run.latencies).as_secs_f64() * 1e6,
        expected_us,
        0.15,
        LOADED_HOST_TOLERANCE,
    );
}

/// One crypto core; the first `C_Sign` hangs 400 ms `at` the device or the
/// network while a second signer starts 100 ms later. Returns when each
/// finished (from the start) and how long the second one took.
fn hang_beside_a_signer(h: &Harness, at: &str) -> (Duration, (Duration, Duration)) {
    h.set_config(&config_with(&format!(
        r#""capacity": {{"max_concurrent": 1}},
           "latency": {{"mechanisms": {{"CKM_ECDSA": {{"fixed_us": 1000}}}}}},
           "faults": [{{"kind": "hang", "duration_ms": 400, "at": "{at}", "max_fires": 1, "functions": ["C_Sign"]}}]"#
    )));
    let start = Instant::now();
    let (hung, waiter) = std::thread::scope(|scope| {
        let hung = scope.spawn(|| {
            let s = h.session();
            let key = private_key(&s, EC_LABEL);
            ec_sign(&s, key).expect("hang then proceed");
            start.elapsed()
        });
        let waiter = scope.spawn(|| {
            let s = h.session();
            let key = private_key(&s, EC_LABEL);
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            ec_sign(&s, key).expect("after the hung call");
            (start.elapsed(), t.elapsed())
        });
        (hung.join().unwrap(), waiter.join().unwrap())
    });
    eprintln!(
        "{at} hang: hung call done at {hung:?}; other call done at {:?}",
        waiter.0
    );
    assert!(hung >= Duration::from_millis(400));
    (hung, waiter)
}

#[test]
fn a_hung_crypto_call_holds_its_core() {
    let (_g, h) = lock();
    let (_, waiter) = hang_beside_a_signer(h, "device");
    // The queued call could only start when the hung one released the core.
    assert!(
        waiter.0 >= Duration::from_millis(395),
        "the second call did not wait for the hung core: {waiter:?}"
    );
}

/// A stall on the way (`"at": "network"`: an HA client failing over, a lost
/// packet) holds no core: the other signer is served meanwhile.
#[test]
fn a_network_hang_leaves_the_core_free() {
    let (_g, h) = lock();
    let (hung, waiter) = hang_beside_a_signer(h, "network");
    assert!(
        waiter.0 < hung && waiter.1 < Duration::from_millis(200),
        "the second call waited for a network stall: {waiter:?}, hung call {hung:?}"
    );
}

#[test]
fn a_full_queue_throttles_with_the_vendor_code_instead_of_queueing() {
    let (_g, h) = lock();
    // One core, no waiting room: while a call is in service, the next one is refused at once.
    h.set_config(&config_with(
        r#""behaviour": "kmsp11", "capacity": {"max_concurrent": 1, "max_queue": 0},
           "latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 300000}}}"#,
    ));
    let results: Vec<Result<Vec<u8>, cryptoki::error::Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                scope.spawn(move || {
                    let s = h.session();
                    let key = private_key(&s, EC_LABEL);
                    std::thread::sleep(Duration::from_millis(100 * i));
                    ec_sign(&s, key)
                })
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap()).collect()
    });
    // Normally the first signer is served and the second (100 ms later) refused; on a badly
    // loaded host the order can flip, but exactly one is served and one shed either way.
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(served, 1, "{results:?}");
    let e = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(
        rv_of(e),
        Some(cryptoki::error::RvError::DeviceError),
        "kmsp11 throttles as CKR_DEVICE_ERROR: {e}"
    );
}

/// Mean latency of `n` signs with `key`/`mech` on `s`.
fn mean_sign(
    s: &cryptoki::session::Session,
    key: cryptoki::object::ObjectHandle,
    mech: &cryptoki::mechanism::Mechanism,
    n: u32,
) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        s.sign(mech, key, &[0x5a; 32]).expect("sign");
    }
    t.elapsed() / n
}

#[test]
fn key_size_is_modelled_bigger_keys_cost_more() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    let (_g, h) = lock();
    h.set_config(&config_with(""));
    let s = h.session();
    // Session keys (not stored): a P-384 and an RSA-1024 next to the harness' P-256 / RSA-2048.
    let p384_oid = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let (_, p384) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(p384_oid)],
            &[Attribute::Sign(true), Attribute::Private(true)],
        )
        .expect("P-384 key");
    let (_, rsa1024) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(1024.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ],
            &[Attribute::Sign(true), Attribute::Private(true)],
        )
        .expect("RSA-1024 key");
    let p256 = private_key(&s, EC_LABEL);
    let rsa2048 = private_key(&s, RSA_LABEL);
    // Reference keys cost the configured 8 ms (long next to SoftHSM's own work, even on a
    // loaded host); by the default cube law P-384 costs (384/256)^3 = 3.375x (27 ms),
    // RSA-1024 (1024/2048)^3 = 0.125x (1 ms); RSA-2048 is set to 2x (16 ms).
    h.set_config(&config_with(
        r#""latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 8000}, "CKM_RSA_PKCS": {"fixed_us": 8000}},
                       "key_sizes": {"RSA-2048": 2.0}}"#,
    ));
    let n = 8;
    let t256 = mean_sign(&s, p256, &Mechanism::Ecdsa, n);
    let t384 = mean_sign(&s, p384, &Mechanism::Ecdsa, n);
    let t1024 = mean_sign(&s, rsa1024, &Mechanism::RsaPkcs, n);
    let t2048 = mean_sign(&s, rsa2048, &Mechanism::RsaPkcs, n);
    eprintln!("P-256 {t256:?}, P-384 {t384:?}, RSA-1024 {t1024:?}, RSA-2048 {t2048:?}");
    // Limits, not benchmarks: a sleep is never much shorter than asked, so the floors are
    // firm; the ceilings only say "clearly cheaper than the bigger key".
    let ms = Duration::from_millis;
    assert!(t256 >= ms(7), "{t256:?}");
    assert!(t384 >= ms(25), "P-384 must cost ~27 ms: {t384:?}");
    assert!(t384 > t256 * 2, "P-384 {t384:?} vs P-256 {t256:?}");
    assert!(t2048 >= ms(15), "RSA-2048 set to 2x: {t2048:?}");
    assert!(
        t1024 < t2048 / 2,
        "RSA-1024 {t1024:?} vs RSA-2048 {t2048:?}"
    );
    // Switched off: every key costs the mechanism's time.
    h.set_config(&config_with(
        r#""latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 8000}}, "key_size_exponent": 0}"#,
    ));
    let off = mean_sign(&s, p384, &Mechanism::Ecdsa, n);
    eprintln!("P-384 with key size off: {off:?}");
    assert!(off >= ms(7), "{off:?}");
    assert!(off + ms(8) < t384, "key size off: {off:?} vs on: {t384:?}");
}
