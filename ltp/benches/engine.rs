//! Benchmarks of the LTP segment codec (RFC 5326 §3) and of a 1 MiB red block transferred
//! between two in-memory engines (no sockets, no loss, a shared virtual clock), whole and the
//! sender's share alone (taking the block's segments from the engine, as its driver does).
//!
//! Reference point: each group also measures a plain `memcpy` of the same number of octets
//! (`*/memcpy_reference`), so codec and engine throughput can be read as a fraction of the
//! cost of touching the data once.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ltp::segment::{CheckpointInfo, DataKind, DataSegment, Segment, SegmentBody, SessionId};
use ltp::{Engine, EngineConfig, Event, SpanConfig};

fn data_segment(len: usize) -> Segment {
    Segment {
        session: SessionId {
            originator: 0x0dea_dbee_fbee,
            number: 0xab_cdef,
        },
        header_extensions: vec![],
        trailer_extensions: vec![],
        body: SegmentBody::Data(DataSegment {
            kind: DataKind::RedCheckpoint,
            client_service_id: 1,
            offset: 123_456_789,
            data: Bytes::from(vec![0x5a; len]),
            checkpoint: Some(CheckpointInfo {
                checkpoint_serial: 0x1234_5678,
                report_serial: 0,
            }),
        }),
    }
}

fn codec(c: &mut Criterion) {
    for len in [1400usize, 60_000] {
        let seg = data_segment(len);
        let wire = seg.to_bytes();
        let mut g = c.benchmark_group(format!("segment_{len}"));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function("encode", |b| {
            let mut out = BytesMut::with_capacity(wire.len() * 64);
            b.iter(|| {
                if out.capacity() - out.len() < wire.len() {
                    out = BytesMut::with_capacity(wire.len() * 64);
                }
                black_box(&seg).encode(&mut out);
                black_box(out.split());
            })
        });
        g.bench_function("decode", |b| {
            b.iter(|| Segment::decode(black_box(&wire)).unwrap())
        });
        g.bench_function("memcpy_reference", |b| {
            let mut dst = vec![0u8; wire.len()];
            b.iter(|| dst.copy_from_slice(black_box(&wire)))
        });
        g.finish();
    }
}

/// A sender and a receiver engine with a span of 1400-octet segments to each other.
fn engine_pair() -> (Engine, Engine) {
    let span = SpanConfig {
        max_segment_size: 1400,
        ..SpanConfig::default()
    };
    let mut a = Engine::new(1, EngineConfig::default());
    let mut b = Engine::new(2, EngineConfig::default());
    a.add_span(2, span.clone());
    b.add_span(1, span);
    (a, b)
}

/// Moves every datagram between the two engines until the block is delivered and
/// acknowledged. The engines live across iterations, as in a node taking block after block
/// (buffers they keep for reuse are reused).
fn transfer((a, b): &mut (Engine, Engine), block: &Bytes, now: &mut Instant) -> usize {
    a.send_block(2, 1, block.clone(), block.len(), *now)
        .unwrap();
    run_until_done(a, b, block.len(), now)
}

/// Moves datagrams both ways until B delivered a red part of `len` octets and A completed;
/// the clock moves on 1 ms (timers fire) whenever neither has anything to send. Returns how
/// many datagrams moved.
fn run_until_done(a: &mut Engine, b: &mut Engine, len: usize, now: &mut Instant) -> usize {
    let (mut delivered, mut completed, mut datagrams) = (false, false, 0);
    for _ in 0..1_000_000 {
        let mut moved = false;
        while let Some((_, d)) = a.poll_transmit(*now) {
            b.handle_datagram(d, *now);
            datagrams += 1;
            moved = true;
        }
        while let Some((_, d)) = b.poll_transmit(*now) {
            a.handle_datagram(d, *now);
            datagrams += 1;
            moved = true;
        }
        while let Some(e) = b.poll_event() {
            if let Event::BlockReceived { red, .. } = e {
                assert_eq!(red.len(), len);
                delivered = true;
            }
        }
        while let Some(e) = a.poll_event() {
            if matches!(e, Event::TransmissionCompleted { .. }) {
                completed = true;
            }
        }
        if delivered && completed {
            return datagrams;
        }
        if !moved {
            *now += Duration::from_millis(1);
            a.handle_timeout(*now);
            b.handle_timeout(*now);
        }
    }
    panic!("transfer did not finish");
}

fn engine_transfer(c: &mut Criterion) {
    let block: Bytes = (0..1 << 20).map(|i| i as u8).collect::<Vec<u8>>().into();
    let mut g = c.benchmark_group("engine_1MiB");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.sample_size(10);
    let (mut engines, mut now) = (engine_pair(), Instant::now());
    g.bench_function("two_engines_in_memory", |b| {
        b.iter(|| transfer(&mut engines, &block, &mut now))
    });
    g.bench_function("sender_segments_out", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                spent += sender_segments_out(&mut engines, &block, &mut now);
            }
            spent
        })
    });
    g.bench_function("memcpy_reference", |b| {
        let mut dst = vec![0u8; block.len()];
        b.iter(|| dst.copy_from_slice(black_box(&block)))
    });
    g.finish();
}

/// The sender's share of a transfer, as its driver sees it: the time to take every segment of
/// a new block from `poll_transmit_parts` (dropped, as after the socket sent them). The
/// receiver then gets them, untimed, and the block completes as in [`transfer`], so that the
/// engines carry no state into the next block.
fn sender_segments_out(
    (a, b): &mut (Engine, Engine),
    block: &Bytes,
    now: &mut Instant,
) -> Duration {
    a.send_block(2, 1, block.clone(), block.len(), *now)
        .unwrap();
    let mut out = Vec::with_capacity(1024);
    let start = Instant::now();
    while let Some(t) = a.poll_transmit_parts(*now) {
        out.push(black_box(t));
    }
    let spent = start.elapsed();
    for t in out {
        b.handle_datagram(t.into_datagram(), *now);
    }
    run_until_done(a, b, block.len(), now);
    spent
}

criterion_group!(benches, codec, engine_transfer);
criterion_main!(benches);
