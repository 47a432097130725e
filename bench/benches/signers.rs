//! Software signers: keycore's `SoftwareKey::perform` against the raw
//! aws-lc-rs API on the same key, to show what the wrapper costs.
//!
//! Each group signs with one key two or three ways: `keycore` (our API,
//! appending into a reused `Vec`), `aws-lc-rs` (`sign` over a short message,
//! which hashes it first) and, where aws-lc-rs has it, `aws-lc-rs digest`
//! (`sign_digest` over an imported digest, the closest equivalent). Run with
//! `cargo bench -p keycore-bench --bench signers`.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion};
use keycore_keys::{software, Backend, KeyEntry};
use keycore_protocol::{Hash, OpClass};
use std::hint::black_box;
use std::time::Duration;

/// Counts Rust heap allocations, so the paired run can show that
/// `perform` makes none (aws-lc's own C allocations go through libc malloc
/// and are not counted, on either side).
mod counting_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    pub struct Counting;

    // SAFETY: forwards every call unchanged to the system allocator; the
    // counter is the only addition.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: same contract as our caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as our caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: same contract as our caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Rust allocations made by `n` calls of `f` (after one warm-up call).
    pub fn per_call(n: u64, f: &mut dyn FnMut()) -> f64 {
        f();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..n {
            f();
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
    }
}

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// The 32-byte "message" the raw API hashes; our API gets its SHA-256.
const MSG: &[u8; 32] = b"keycore bench message, 32 bytes!";

fn entry(pkcs8: &[u8]) -> KeyEntry {
    software::from_der_or_pem(pkcs8, "bench").expect("generated key loads")
}

fn ours(g: &mut BenchmarkGroup<'_, WallTime>, e: &KeyEntry, op: OpClass, input: &[u8]) {
    let Backend::Inline(k) = &e.backend else {
        panic!("software keys are inline")
    };
    let mut out = Vec::with_capacity(1024);
    g.bench_function("keycore", |b| {
        b.iter(|| {
            out.clear();
            k.perform(op, black_box(input), &mut out).unwrap();
            black_box(&out);
        })
    });
}

fn rsa(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let e = entry(
        AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
            .unwrap()
            .as_ref(),
    );
    let d = digest::digest(&digest::SHA256, MSG);
    let mut sig = vec![0u8; kp.public_modulus_len()];

    for (group, op, alg) in [
        (
            "rsa2048 pkcs1 sha256",
            OpClass::RsaPkcs1(Hash::Sha256),
            &signature::RSA_PKCS1_SHA256 as &'static dyn signature::RsaEncoding,
        ),
        (
            "rsa2048 pss sha256",
            OpClass::RsaPss(Hash::Sha256),
            &signature::RSA_PSS_SHA256,
        ),
    ] {
        let mut g = c.benchmark_group(group);
        ours(&mut g, &e, op, d.as_ref());
        g.bench_function("aws-lc-rs", |b| {
            b.iter(|| kp.sign(alg, &rng, black_box(MSG), &mut sig).unwrap())
        });
        g.bench_function("aws-lc-rs digest", |b| {
            b.iter(|| {
                let dg = Digest::import_less_safe(black_box(d.as_ref()), &digest::SHA256).unwrap();
                kp.sign_digest(alg, &dg, &mut sig).unwrap()
            })
        });
        g.finish();
    }

    // Raw decrypt has no aws-lc-rs equivalent; PKCS#1 v1.5 decryption (which
    // also checks and strips the padding) is the nearest.
    let dk = PrivateDecryptingKey::from_pkcs8(
        AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let pk = aws_lc_rs::rsa::Pkcs1PublicEncryptingKey::new(dk.public_key()).unwrap();
    let mut ct = vec![0u8; 256];
    let ct = pk.encrypt(&[7u8; 48], &mut ct).unwrap().to_vec();
    let pdk = aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey::new(dk).unwrap();
    let mut pt = vec![0u8; 256];
    let mut g = c.benchmark_group("rsa2048 decrypt");
    ours(&mut g, &e, OpClass::RsaDecrypt, &ct);
    g.bench_function("aws-lc-rs pkcs1", |b| {
        b.iter(|| {
            pdk.decrypt(black_box(&ct), &mut pt).unwrap();
        })
    });
    g.finish();
}

fn ecdsa(c: &mut Criterion) {
    let rng = SystemRandom::new();
    for (group, alg, dalg, hash) in [
        (
            "ecdsa p256 sha256",
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &digest::SHA256,
            Hash::Sha256,
        ),
        (
            "ecdsa p384 sha384",
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &digest::SHA384,
            Hash::Sha384,
        ),
    ] {
        let kp = EcdsaKeyPair::generate(alg).unwrap();
        let e = entry(kp.to_pkcs8v1().unwrap().as_ref());
        let d = digest::digest(dalg, MSG);
        let mut g = c.benchmark_group(group);
        ours(&mut g, &e, OpClass::Ecdsa(hash), d.as_ref());
        g.bench_function("aws-lc-rs", |b| {
            b.iter(|| black_box(kp.sign(&rng, black_box(MSG)).unwrap()))
        });
        g.bench_function("aws-lc-rs digest", |b| {
            b.iter(|| {
                let dg = Digest::import_less_safe(black_box(d.as_ref()), dalg).unwrap();
                black_box(kp.sign_digest(&dg).unwrap())
            })
        });
        g.finish();
    }
}

fn ed25519(c: &mut Criterion) {
    let kp = Ed25519KeyPair::generate().unwrap();
    let e = entry(kp.to_pkcs8().unwrap().as_ref());
    assert!(e.spki_der.ends_with(kp.public_key().as_ref()));
    let mut g = c.benchmark_group("ed25519");
    ours(&mut g, &e, OpClass::Ed25519, MSG);
    g.bench_function("aws-lc-rs", |b| {
        b.iter(|| black_box(kp.sign(black_box(MSG))))
    });
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the machine is shared; differences of a few percent show
    // up well within these windows for µs-scale operations.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40)
}

criterion_group! {
    name = signers;
    config = config();
    targets = rsa, ecdsa, ed25519
}

/// A paired A/B comparison that tolerates a busy machine better than
/// criterion's separate runs: blocks of `BLOCK` operations alternate between
/// the two APIs, and the fastest and median block of each are compared.
/// Run with `KEYCORE_PAIRED=1 cargo bench -p keycore-bench --bench signers`.
fn paired() {
    const BLOCK: usize = 50;
    const ROUNDS: usize = 60;
    fn compare(name: &str, mut a: impl FnMut(), mut b: impl FnMut()) {
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let time = |f: &mut dyn FnMut(), out: &mut Vec<f64>| {
                let t0 = std::time::Instant::now();
                for _ in 0..BLOCK {
                    f();
                }
                out.push(t0.elapsed().as_secs_f64() * 1e6 / BLOCK as f64);
            };
            if round % 2 == 0 {
                time(&mut a, &mut ta);
                time(&mut b, &mut tb);
            } else {
                time(&mut b, &mut tb);
                time(&mut a, &mut ta);
            }
        }
        let allocs_a = counting_alloc::per_call(20, &mut a);
        let allocs_b = counting_alloc::per_call(20, &mut b);
        for v in [&mut ta, &mut tb] {
            v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        }
        let (min_a, min_b, med_a, med_b) = (ta[0], tb[0], ta[ROUNDS / 2], tb[ROUNDS / 2]);
        println!(
            "{name:<34} keycore min {min_a:8.2} µs med {med_a:8.2} µs | aws-lc-rs min {min_b:8.2} µs \
             med {med_b:8.2} µs | keycore/aws-lc-rs min {:+.1}% med {:+.1}% | Rust allocs/op \
             {allocs_a} vs {allocs_b}",
            (min_a / min_b - 1.0) * 100.0,
            (med_a / med_b - 1.0) * 100.0
        );
    }
    let rng = SystemRandom::new();

    let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let e = entry(
        AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
            .unwrap()
            .as_ref(),
    );
    let d = digest::digest(&digest::SHA256, MSG).as_ref().to_vec();
    let mut sig = vec![0u8; 256];
    compare(
        "rsa2048 pkcs1 sha256 (vs sign)",
        perform(&e, OpClass::RsaPkcs1(Hash::Sha256), d.clone()),
        || {
            kp.sign(&signature::RSA_PKCS1_SHA256, &rng, black_box(MSG), &mut sig)
                .unwrap()
        },
    );
    let mut sig = vec![0u8; 256];
    compare(
        "rsa2048 pss sha256 (vs sign)",
        perform(&e, OpClass::RsaPss(Hash::Sha256), d.clone()),
        || {
            kp.sign(&signature::RSA_PSS_SHA256, &rng, black_box(MSG), &mut sig)
                .unwrap()
        },
    );
    for (name, alg, dalg, hash) in [
        (
            "ecdsa p256 sha256 (vs sign)",
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &digest::SHA256,
            Hash::Sha256,
        ),
        (
            "ecdsa p384 sha384 (vs sign)",
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &digest::SHA384,
            Hash::Sha384,
        ),
    ] {
        let kp = EcdsaKeyPair::generate(alg).unwrap();
        let e = entry(kp.to_pkcs8v1().unwrap().as_ref());
        let d = digest::digest(dalg, MSG).as_ref().to_vec();
        compare(name, perform(&e, OpClass::Ecdsa(hash), d), || {
            black_box(kp.sign(&rng, black_box(MSG)).unwrap());
        });
    }
    let kp = Ed25519KeyPair::generate().unwrap();
    let e = entry(kp.to_pkcs8().unwrap().as_ref());
    compare(
        "ed25519 (vs sign)",
        perform(&e, OpClass::Ed25519, MSG.to_vec()),
        || {
            black_box(kp.sign(black_box(MSG)));
        },
    );
}

/// Our API as a closure for [`paired`].
fn perform(e: &KeyEntry, op: OpClass, input: Vec<u8>) -> impl FnMut() + '_ {
    let Backend::Inline(k) = &e.backend else {
        panic!("software keys are inline")
    };
    let mut out = Vec::with_capacity(1024);
    move || {
        out.clear();
        k.perform(op, black_box(&input), &mut out).unwrap();
        black_box(&out);
    }
}

fn main() {
    if std::env::var_os("KEYCORE_PAIRED").is_some() {
        paired();
        return;
    }
    signers();
    Criterion::default().configure_from_args().final_summary();
}
