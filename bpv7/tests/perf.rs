//! Timing probe (ignored by default; run with `--ignored --nocapture`): forwarding cost must
//! not grow with payload size. Prints a machine reference (1 MiB memcpy) in the same run.

use bpv7::*;
use bytes::Bytes;
use std::time::Instant;

fn bundle(size: usize) -> Bytes {
    BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(2, 1),
        CreationTimestamp::new(1, 1),
        60_000,
    )
    .previous_node(&Eid::ipn(3, 0))
    .hop_count(30, 0)
    .bundle_age(5)
    .payload((0..size).map(|i| i as u8).collect::<Vec<u8>>())
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
}

fn per_iter(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[test]
#[ignore]
fn forward_cost_independent_of_payload() {
    let params = ForwardParams {
        previous_node: Some(Eid::ipn(9, 0)),
        dwell_ms: 10,
        ..Default::default()
    };
    let src = vec![7u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    let memcpy = per_iter(200, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
    });
    let mut fwd = Vec::new();
    for size in [1 << 10, 1 << 20] {
        let raw = bundle(size);
        let p = ParsedBundle::decode(raw.clone()).unwrap();
        let dec = per_iter(50, || {
            std::hint::black_box(ParsedBundle::decode(raw.clone()).unwrap());
        });
        let f = per_iter(20000, || {
            std::hint::black_box(p.forward(&params).unwrap());
        });
        println!("payload {size:>8} B: decode {dec:>9.2} µs, forward {f:>6.2} µs");
        fwd.push(f);
    }
    println!("reference: memcpy 1 MiB {memcpy:.2} µs");
    // Forwarding a 1 MiB bundle costs far less than copying its payload once.
    assert!(
        fwd[1] < memcpy,
        "forward {} µs vs memcpy {} µs",
        fwd[1],
        memcpy
    );
}
