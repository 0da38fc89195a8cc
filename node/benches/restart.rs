//! Restart benchmark: `BundleEngine::new` over a sled store (group commit) holding 100,000
//! stored 1 KiB bundles, and the resident memory per stored bundle.
//!
//! The store is built once in a temporary directory (`$TMPDIR/dtn-restart-bench-<n>`) and
//! reused by later runs. Reference figure from the same run: `Store::iter_meta` alone (the
//! metadata scan that a restart cannot avoid). Plain `main` (harness = false) because one
//! iteration takes about a second and RSS must be read around it; `BENCH_BUNDLES` overrides
//! the count, `BENCH_ITERS` the repetitions (default 3).
//!
//! Figures on the 2-core shared build machine (2026-11-22, release, median of 3):
//! `BundleEngine::new` incl. `Store::open` 324 ms (reference: open 120 ms, metadata scan
//! 75 ms); RSS 334 B per stored bundle for the engine index, 653 B with the open sled store;
//! relay engine 127,000 bundles/s (memory store) and 118,000 bundles/s (sled group commit)
//! against 450,000/s for bpv7 decode+forward alone (`BENCH_RELAY=0` skips it).

use std::time::{Duration, Instant};

use bytes::Bytes;
use node::api::{Priority, SendRequest, StatusRequests};
use node::processing::{BundleEngine, EngineConfig, Neighbour, NeighbourId, StatusReportPolicy};
use node::store::{Durability, Store, StoreConfig};

const T0: u64 = 800_000_000_000;

fn engine_config() -> EngineConfig {
    EngineConfig {
        node_id: "ipn:1.0".parse().unwrap(),
        neighbours: vec![Neighbour {
            name: "b".into(),
            node_id: Some("ipn:2.0".parse().unwrap()),
            max_bundle_size: None,
            reliable: true,
            max_in_flight: 64,
            accept_primary_without_crc: false,
            pace_at_contact_rate: false,
        }],
        routes: Vec::new(),
        router: None,
        status_reports: StatusReportPolicy {
            enabled: true,
            max_per_second: 100,
        },
        max_bundle_size: 64 << 20,
        max_reassembly_bytes: 256 << 20,
        echo_service: Some(7),
        default_hop_limit: 32,
        retry_delay_ms: 1000,
        delivery_window: 64,
    }
}

fn store_config(path: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: path.to_path_buf(),
        durability: Durability::GroupCommit {
            max_delay: Duration::from_millis(5),
        },
        quota_bytes: 1 << 40,
        quota_bundles: 10_000_000,
    }
}

/// Resident set size of this process in KiB (Linux `/proc/self/status`).
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn build(path: &std::path::Path, n: usize) {
    let _ = std::fs::remove_dir_all(path);
    let store = Store::open(&store_config(path)).expect("open store");
    let mut engine = BundleEngine::new(engine_config(), store.clone(), T0).expect("engine");
    // The only neighbour is down: every bundle waits in the store.
    engine.link_state(NeighbourId(0), false, T0);
    let payload = Bytes::from(vec![0x5au8; 1024]);
    let t = Instant::now();
    for i in 0..n {
        let req = SendRequest {
            source: None,
            destination: format!("ipn:{}.1", 2 + (i % 50)),
            payload: payload.clone(),
            lifetime_ms: 30 * 86_400_000,
            priority: Priority::Normal,
            report_to: None,
            requests: StatusRequests::default(),
            no_fragment: false,
        };
        engine.send(req, None, T0 + (i / 100) as u64).expect("send");
    }
    store.flush().expect("flush");
    eprintln!(
        "built store: {n} bundles of 1 KiB in {:.2} s ({:.0} sends/s, group commit)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    std::fs::write(path.join("COMPLETE"), n.to_string()).unwrap();
}

/// Bundles per second through one relay engine (receive → Transmit → Transferred), 1 KiB
/// payloads, with the given store; and the bpv7 decode + forward + concat reference.
fn relay(store: Store, label: &str, count: usize) {
    let mut cfg = engine_config();
    cfg.neighbours = vec![
        Neighbour {
            name: "a".into(),
            node_id: Some("ipn:1.0".parse().unwrap()),
            max_bundle_size: None,
            reliable: true,
            max_in_flight: 64,
            accept_primary_without_crc: false,
            pace_at_contact_rate: false,
        },
        Neighbour {
            name: "c".into(),
            node_id: Some("ipn:3.0".parse().unwrap()),
            max_bundle_size: None,
            reliable: true,
            max_in_flight: 64,
            accept_primary_without_crc: false,
            pace_at_contact_rate: false,
        },
    ];
    cfg.node_id = "ipn:2.0".parse().unwrap();
    let mut engine = BundleEngine::new(cfg, store, T0).expect("engine");
    let bundles: Vec<Bytes> = (0..count)
        .map(|i| {
            bpv7::BundleBuilder::new(
                bpv7::Eid::ipn(1, 1),
                bpv7::Eid::ipn(3, 1),
                bpv7::CreationTimestamp::new(T0, i as u64),
                3_600_000,
            )
            .hop_count(32, 1)
            .payload(vec![0x33u8; 1024])
            .build()
            .unwrap()
            .to_bytes()
            .unwrap()
        })
        .collect();
    let t = Instant::now();
    let mut forwarded = 0usize;
    for b in &bundles {
        engine.receive(Some(NeighbourId(0)), None, b.clone(), T0 + 1);
        while let Some(a) = engine.poll_action() {
            if let node::processing::Action::Transmit { transfer, .. } = a {
                engine.transfer_outcome(transfer, Ok(()), T0 + 1);
                forwarded += 1;
            }
        }
    }
    let el = t.elapsed().as_secs_f64();
    assert_eq!(forwarded, count);
    println!(
        "  relay engine, {label:<28}: {:>9.0} bundles/s ({count} bundles of 1 KiB)",
        count as f64 / el
    );
}

fn relay_reference(count: usize) {
    let b = bpv7::BundleBuilder::new(
        bpv7::Eid::ipn(1, 1),
        bpv7::Eid::ipn(3, 1),
        bpv7::CreationTimestamp::new(T0, 0),
        3_600_000,
    )
    .hop_count(32, 1)
    .payload(vec![0x33u8; 1024])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap();
    let params = bpv7::ForwardParams {
        previous_node: Some(bpv7::Eid::ipn(2, 0)),
        ..Default::default()
    };
    let t = Instant::now();
    let mut total = 0usize;
    for _ in 0..count {
        let p = bpv7::ParsedBundle::decode(b.clone()).unwrap();
        total += p.forward(&params).unwrap().concat().len();
    }
    let el = t.elapsed().as_secs_f64();
    assert!(total > 0);
    println!(
        "  reference bpv7 decode+forward+concat   : {:>9.0} bundles/s",
        count as f64 / el
    );
}

fn main() {
    let n: usize = std::env::var("BENCH_BUNDLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let path = std::env::temp_dir().join(format!("dtn-restart-bench-{n}"));
    let relay_n: usize = std::env::var("BENCH_RELAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let complete = std::fs::read_to_string(path.join("COMPLETE")).ok();
    if complete.as_deref() != Some(n.to_string().as_str()) {
        build(&path, n);
    }

    let built_here = complete.as_deref() != Some(n.to_string().as_str());
    let mut scan = Vec::new();
    let mut restart = Vec::new();
    let mut open_only = Vec::new();
    let mut rss = (0u64, 0u64, 0u64);
    for i in 0..iters {
        // The engine first, so the first iteration's RSS is not inflated by the reference.
        let before = rss_kib().unwrap_or(0);
        let t = Instant::now();
        let store = Store::open(&store_config(&path)).expect("open");
        let opened = rss_kib().unwrap_or(0);
        let engine = BundleEngine::new(engine_config(), store.clone(), T0 + 1).expect("engine");
        let took = t.elapsed();
        let after = rss_kib().unwrap_or(0);
        assert_eq!(engine.bundle_count(), n);
        restart.push(took);
        if i == 0 {
            rss = (before, opened, after);
        }
        drop(engine);
        drop(store);

        // Reference: open + metadata scan alone.
        let t = Instant::now();
        let store = Store::open(&store_config(&path)).expect("open");
        open_only.push(t.elapsed());
        let t = Instant::now();
        let count = store.iter_meta().filter(|r| r.is_ok()).count();
        scan.push(t.elapsed());
        assert_eq!(count, n);
        drop(store);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (before, opened, after) = rss;
    println!("restart with {n} stored 1 KiB bundles (sled, group commit), {iters} runs, median:");
    println!(
        "  BundleEngine::new incl. Store::open : {:>8.1} ms",
        med(&mut restart).as_secs_f64() * 1e3
    );
    println!(
        "  reference Store::open               : {:>8.1} ms",
        med(&mut open_only).as_secs_f64() * 1e3
    );
    println!(
        "  reference Store::iter_meta scan     : {:>8.1} ms",
        med(&mut scan).as_secs_f64() * 1e3
    );
    println!(
        "  RSS: before open {} KiB, after open {} KiB, after engine {} KiB",
        before, opened, after
    );
    if built_here {
        println!("  (store built in this process: run again for clean RSS figures)");
    }
    println!(
        "  resident memory per stored bundle: engine index {:.0} B, store open + engine {:.0} B",
        after.saturating_sub(opened) as f64 * 1024.0 / n as f64,
        after.saturating_sub(before) as f64 * 1024.0 / n as f64
    );
    if relay_n > 0 {
        println!("relay throughput (engine only, no convergence layer):");
        relay_reference(relay_n);
        let mem = Store::open(&StoreConfig {
            path: path.join("unused"),
            durability: Durability::Memory,
            quota_bytes: 1 << 40,
            quota_bundles: 10_000_000,
        })
        .unwrap();
        relay(mem, "memory store", relay_n);
        let dir = std::env::temp_dir().join(format!("dtn-relay-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let durable = Store::open(&store_config(&dir)).unwrap();
        relay(durable.clone(), "sled, group commit 5 ms", relay_n);
        drop(durable);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
