//! Acknowledgements wait for the disk (issue 5, DESIGN.md principle 4), seen from the bundle
//! engine over a group-commit store whose holds never end by themselves: a "received" status
//! report about a stored bundle is generated only once the bundle is durable, and a bundle
//! forwarded over a link that confirms nothing (UDP) is written before it leaves the store,
//! so that the upstream acknowledgement of a bundle in transit never stands for a bundle that
//! is on no disk.

mod processing_common;

use std::time::Duration;

use bytes::Bytes;
use processing_common::*;

use node::processing::{Action, BundleEngine, NeighbourId, Reception};
use node::store::{Durability, Store, StoreConfig, Ticket};

/// A group-commit store in a fresh directory whose held inserts stay held for an hour.
fn held_store(tag: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("proc-custody-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&StoreConfig {
        path: dir.clone(),
        durability: Durability::GroupCommit {
            max_delay: Duration::from_secs(3600),
        },
        quota_bytes: 1 << 30,
        quota_bundles: 1000,
    })
    .expect("store");
    (store, dir)
}

/// A bundle from ipn:1.1 to ipn:3.1, in transit at ipn:2.
fn bundle_for_c(seq: u64, flags: bpv7::BundleFlags) -> Bytes {
    bpv7::BundleBuilder::new(
        bpv7::Eid::ipn(1, 1),
        bpv7::Eid::ipn(3, 1),
        bpv7::CreationTimestamp::new(T0, seq),
        3_600_000,
    )
    .flags(flags)
    .report_to(bpv7::Eid::ipn(1, 1))
    .payload(vec![7u8; 100])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
}

fn drain(e: &mut BundleEngine) -> Vec<Action> {
    let mut v = Vec::new();
    while let Some(a) = e.poll_action() {
        v.push(a);
    }
    v
}

/// A transmit: (neighbour index, transfer id, bundle).
type Transmitted = (usize, u64, Bytes);

/// The transmits among `actions`, and the AwaitDurable tickets and tokens.
fn split(actions: Vec<Action>) -> (Vec<Transmitted>, Vec<(Ticket, u64)>) {
    let mut transmits = Vec::new();
    let mut waits = Vec::new();
    for a in actions {
        match a {
            Action::Transmit {
                neighbour,
                transfer,
                bundle,
                ..
            } => transmits.push((neighbour.0, transfer, bundle)),
            Action::AwaitDurable { ticket, token } => waits.push((ticket, token)),
            other => panic!("unexpected action {other:?}"),
        }
    }
    (transmits, waits)
}

fn is_received_report(bundle: &Bytes) -> bool {
    let b = bpv7::Bundle::decode(bundle.clone()).expect("bundle");
    match bpv7::AdminRecord::decode(b.payload()) {
        Ok(bpv7::AdminRecord::StatusReport(sr)) => sr.received.asserted,
        _ => false,
    }
}

#[test]
fn a_received_report_leaves_only_once_the_bundle_is_on_disk() {
    let (store, dir) = held_store("report");
    let mut b = BundleEngine::new(config(2, &[("a", 1), ("c", 3)]), store.clone(), T0).unwrap();
    for (seq, persisted) in [(1, true), (2, false)] {
        let raw = bundle_for_c(seq, bpv7::BundleFlags::REPORT_RECEPTION);
        let Reception::Accepted(ticket) = b.receive(Some(NeighbourId(0)), None, raw, T0) else {
            panic!("not accepted");
        };
        assert!(ticket.is_held(), "a bundle in transit is a held insert");
        // The bundle goes on to C at once; the report to A waits for the bundle's write.
        let (transmits, waits) = split(drain(&mut b));
        assert_eq!(transmits.len(), 1, "{transmits:?}");
        assert_eq!(transmits[0].0, 1, "the bundle itself, to C");
        assert_eq!(waits.len(), 1);
        assert_eq!(
            waits[0].0, ticket,
            "the report waits for the bundle's own write"
        );
        // The store answers: durable, or failed (then no report: nothing is held).
        b.durable(waits[0].1, persisted, T0);
        let (transmits, waits) = split(drain(&mut b));
        assert!(waits.is_empty());
        if persisted {
            assert_eq!(transmits.len(), 1, "{transmits:?}");
            assert_eq!(transmits[0].0, 0, "the report, to A");
            assert!(is_received_report(&transmits[0].2));
        } else {
            assert!(transmits.is_empty(), "a report for a write that failed");
        }
    }
    // A bundle that asks for no report defers nothing.
    let raw = bundle_for_c(3, bpv7::BundleFlags::default());
    b.receive(Some(NeighbourId(0)), None, raw, T0);
    let (transmits, waits) = split(drain(&mut b));
    assert_eq!((transmits.len(), waits.len()), (1, 0));
    drop(b);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bundle_forwarded_over_an_unreliable_link_is_written_before_it_leaves_the_store() {
    for reliable in [false, true] {
        let (store, dir) = held_store(if reliable { "reliable" } else { "unreliable" });
        let mut cfg = config(2, &[("a", 1), ("c", 3)]);
        cfg.neighbours[1].reliable = reliable;
        let mut b = BundleEngine::new(cfg, store.clone(), T0).unwrap();
        let raw = bundle_for_c(1, bpv7::BundleFlags::default());
        let Reception::Accepted(upstream) = b.receive(Some(NeighbourId(0)), None, raw, T0) else {
            panic!("not accepted");
        };
        let (transmits, waits) = split(drain(&mut b));
        assert_eq!((transmits.len(), waits.len()), (1, 0));
        b.transfer_outcome(transmits[0].1, Ok(()), T0);
        let (transmits, waits) = split(drain(&mut b));
        assert!(transmits.is_empty());
        if reliable {
            // Confirmed by the next hop: released at once, never written, and the upstream
            // acknowledgement may go.
            assert!(waits.is_empty());
            assert_eq!(store.usage().bundles, 0);
            block_on(store.persisted(upstream)).unwrap();
            let c = store.counters();
            assert_eq!((c.held_released, c.held_flushed), (1, 0));
        } else {
            // Sent, but nothing confirms it: still in the store until it is on disk.
            assert_eq!(waits.len(), 1);
            assert_eq!(store.usage().bundles, 1);
            block_on(store.persisted(waits[0].0.clone())).unwrap();
            let c = store.counters();
            assert_eq!(
                (c.held_released, c.held_flushed),
                (0, 1),
                "written, not dropped"
            );
            // The upstream acknowledgement stood for exactly that write.
            block_on(store.persisted(upstream)).unwrap();
            b.durable(waits[0].1, true, T0);
            assert!(drain(&mut b).is_empty());
            assert_eq!(store.usage().bundles, 0, "released once on disk");
        }
        assert_eq!(b.stats().total("dtn_bundles_forwarded_total"), Some(1.0));
        drop(b);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
