//! Criterion benchmarks of the wire codec on the hottest shape: an ECDSA
//! P-256 SHA-256 sign request (padded to 1024 bytes) and its response with a
//! 72-byte DER signature (padded). Decoding includes `frame::check`, as a
//! server's read path does; encoding writes into one reused `Vec`.
//!
//! `cargo bench -p keycore-bench --bench codec -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keycore_bench::{ecdsa_p256_request, ecdsa_p256_signature_der};
use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{encode_response, Message, Op, MAX_BODY_LEN, PADDED_LEN};
use std::hint::black_box;

fn decode(buf: &[u8]) -> Message<'_> {
    match frame::check(buf, MAX_BODY_LEN) {
        Ok(FrameStatus::Complete { len, .. }) => Message::decode(&buf[..len]).unwrap(),
        other => panic!("fixture does not frame: {other:?}"),
    }
}

fn codec(c: &mut Criterion) {
    let request = ecdsa_p256_request(0x0102_0304);
    let sig = ecdsa_p256_signature_der();
    let mut request_bytes = Vec::new();
    request.encode(&mut request_bytes).unwrap();
    let mut response_bytes = Vec::new();
    encode_response(&mut response_bytes, 0x0102_0304, Op::RESPONSE, &sig).unwrap();
    assert_eq!(request_bytes.len(), PADDED_LEN);
    assert_eq!(response_bytes.len(), PADDED_LEN);

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    g.bench_function("decode_request_ecdsa_p256", |b| {
        b.iter(|| decode(black_box(&request_bytes)))
    });
    let mut out = Vec::with_capacity(PADDED_LEN);
    g.bench_function("encode_request_ecdsa_p256", |b| {
        b.iter(|| {
            out.clear();
            black_box(&request).encode(&mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("decode_response_der72", |b| {
        b.iter(|| decode(black_box(&response_bytes)))
    });
    g.bench_function("encode_response_der72", |b| {
        b.iter(|| {
            out.clear();
            encode_response(
                &mut out,
                black_box(0x0102_0304),
                Op::RESPONSE,
                black_box(&sig),
            )
            .unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
