//! Criterion benchmarks of the bundle codec (RFC 9171 §4), with dtn7-rs's `bp7` codec as the
//! reference measured in the same run.
//!
//! Every bundle carries a CRC-32C on each block, a previous node, bundle age and hop count
//! block, and a payload of 0 B, 1 KiB, 64 KiB or 1 MiB. Measured:
//! - `decode`: decode + validate the wire bytes (ours: `Bundle::decode`, zero-copy payload;
//!   bp7: `Bundle::try_from(&[u8])` then `validate()`), with throughput in bundle bytes;
//! - `encode`: the canonical encoding of an owned bundle (ours: `Bundle::encode`; bp7:
//!   `to_cbor`, which also recomputes every CRC);
//! - `forward`: the forwarding rewrite of a decoded bundle (previous node, hop count, age),
//!   whose cost must not grow with the payload size.
//!
//! Run: `cargo bench -p bpv7 --bench codec`.

use bpv7::{Bundle, BundleBuilder, CrcType, CreationTimestamp, Eid, ForwardParams, ParsedBundle};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [(usize, &str); 4] = [
    (0, "0B"),
    (1024, "1KiB"),
    (65536, "64KiB"),
    (1 << 20, "1MiB"),
];

fn wire_bundle(payload_len: usize) -> Bytes {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let bundle = BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(2, 1),
        CreationTimestamp::new(784_111_200_000, 1),
        86_400_000,
    )
    .crc_type(CrcType::Crc32c)
    .previous_node(&Eid::ipn(7, 0))
    .bundle_age(10)
    .hop_count(32, 1)
    .payload(payload)
    .build()
    .expect("benchmark bundle is valid");
    Bytes::from(bundle.encode().expect("encodes"))
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (len, name) in SIZES {
        let wire = wire_bundle(len);
        // bp7 must read the same bytes, or the comparison means nothing.
        let mut reference = bp7::Bundle::try_from(&wire[..]).expect("bp7 decodes our bundle");
        assert!(reference.validate().is_ok(), "bp7 validates our bundle");
        assert_eq!(
            reference.to_cbor(),
            wire.to_vec(),
            "bp7 re-encodes our bundle identically"
        );
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new("bpv7", name), &wire, |b, wire| {
            b.iter(|| Bundle::decode(black_box(wire.clone())).expect("valid"))
        });
        group.bench_with_input(BenchmarkId::new("bp7", name), &wire, |b, wire| {
            b.iter(|| {
                let bundle = bp7::Bundle::try_from(black_box(&wire[..])).expect("valid");
                bundle.validate().expect("valid");
                bundle
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (len, name) in SIZES {
        let wire = wire_bundle(len);
        let ours = Bundle::decode(wire.clone()).expect("valid");
        let theirs = bp7::Bundle::try_from(&wire[..]).expect("valid");
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new("bpv7", name), &ours, |b, bundle| {
            b.iter(|| black_box(bundle).encode().expect("encodes"))
        });
        group.bench_with_input(BenchmarkId::new("bp7", name), &theirs, |b, bundle| {
            b.iter_batched_ref(
                || bundle.clone(),
                |bundle| bundle.to_cbor(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    let params = ForwardParams {
        previous_node: Some(Eid::ipn(9, 0)),
        dwell_ms: 25,
        ..Default::default()
    };
    for (len, name) in SIZES {
        let parsed = ParsedBundle::decode(wire_bundle(len)).expect("valid");
        group.bench_with_input(BenchmarkId::new("bpv7", name), &parsed, |b, parsed| {
            b.iter(|| black_box(parsed).forward(&params).expect("forwardable"))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, forward);
criterion_main!(benches);
