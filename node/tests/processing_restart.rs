//! Restart recovery of the bundle engine (RFC 9171 §5: retained bundles survive the node):
//! a new engine over the same store resumes every pending bundle and delivers nothing twice.

mod processing_common;

use bytes::Bytes;
use processing_common::*;

use node::processing::{Action, BundleEngine, NeighbourId};
use node::store::{Durability, Store, StoreConfig};

fn drain(e: &mut BundleEngine) -> Vec<Action> {
    let mut v = Vec::new();
    while let Some(a) = e.poll_action() {
        v.push(a);
    }
    v
}

fn deliveries(actions: &[Action]) -> Vec<(u64, u64, Bytes)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver {
                registration,
                delivery,
            } => Some((*registration, delivery.token, delivery.payload.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn delivery_only_once_across_restart() {
    let store = memory_store(1000, 1 << 30);
    let mut e = BundleEngine::new(config(3, &[("b", 2)]), store.clone(), T0).unwrap();
    // Three bundles for ipn:3.1 arrive while nobody is registered.
    for i in 0..3u8 {
        let raw = bpv7::BundleBuilder::new(
            bpv7::Eid::ipn(1, 1),
            bpv7::Eid::ipn(3, 1),
            bpv7::CreationTimestamp::new(T0, u64::from(i)),
            3_600_000,
        )
        .payload(vec![i; 10])
        .build()
        .unwrap()
        .to_bytes()
        .unwrap();
        e.receive(Some(NeighbourId(0)), None, raw, T0);
    }
    e.register(7, "ipn:3.1", T0).unwrap();
    let d = deliveries(&drain(&mut e));
    assert_eq!(d.len(), 3);
    // The first is acknowledged, the others not; then the node restarts.
    e.ack_delivery(7, d[0].1, T0).unwrap().unwrap();
    drop(e);
    let mut e = BundleEngine::new(config(3, &[("b", 2)]), store.clone(), T0 + 10).unwrap();
    assert_eq!(e.bundle_count(), 2);
    assert!(drain(&mut e).is_empty(), "no registration yet");
    e.register(8, "ipn:3.1", T0 + 10).unwrap();
    let d2 = deliveries(&drain(&mut e));
    let mut payloads: Vec<u8> = d2.iter().map(|(_, _, p)| p[0]).collect();
    payloads.sort();
    assert_eq!(
        payloads,
        vec![1, 2],
        "the acknowledged one is not delivered again"
    );
    // A retransmission of the delivered one is a duplicate.
    let raw0 = bpv7::BundleBuilder::new(
        bpv7::Eid::ipn(1, 1),
        bpv7::Eid::ipn(3, 1),
        bpv7::CreationTimestamp::new(T0, 0),
        3_600_000,
    )
    .payload(vec![0u8; 10])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap();
    assert_eq!(
        e.receive(Some(NeighbourId(0)), None, raw0, T0 + 20),
        node::processing::Reception::Consumed
    );
    for (r, t, _) in d2 {
        e.ack_delivery(r, t, T0 + 30).unwrap().unwrap();
    }
    assert_eq!(store.usage().bundles, 0);
}

#[test]
fn forwarding_resumes_after_restart_and_sequence_numbers_do_not_repeat() {
    let store = memory_store(1000, 1 << 30);
    let mut e = BundleEngine::new(config(1, &[("b", 2)]), store.clone(), T0).unwrap();
    e.link_state(NeighbourId(0), false, T0);
    let (a1, _) = e.send(request("ipn:2.1", b"one"), None, T0).unwrap();
    let (a2, _) = e.send(request("ipn:2.1", b"two"), None, T0).unwrap();
    assert_eq!(a1.id.creation_ms, a2.id.creation_ms);
    assert_eq!(a2.id.sequence, a1.id.sequence + 1);
    drop(e);
    // Restart at the same millisecond (or with the clock stepped back).
    let mut e = BundleEngine::new(config(1, &[("b", 2)]), store.clone(), T0 - 5).unwrap();
    let tx: Vec<_> = drain(&mut e)
        .into_iter()
        .filter(|a| matches!(a, Action::Transmit { .. }))
        .collect();
    assert_eq!(tx.len(), 2, "both resume (neighbours start up)");
    let (a3, _) = e.send(request("ipn:2.1", b"three"), None, T0 - 5).unwrap();
    assert!((a3.id.creation_ms, a3.id.sequence) > (a2.id.creation_ms, a2.id.sequence));
    for a in tx {
        if let Action::Transmit { transfer, .. } = a {
            e.transfer_outcome(transfer, Ok(()), T0);
        }
    }
    assert_eq!(store.usage().bundles, 1);
}

#[test]
fn fragments_are_reassembled_after_restart() {
    let store = memory_store(1000, 1 << 30);
    let whole = bpv7::BundleBuilder::new(
        bpv7::Eid::ipn(1, 1),
        bpv7::Eid::ipn(3, 1),
        bpv7::CreationTimestamp::new(T0, 5),
        3_600_000,
    )
    .payload(vec![9u8; 3000])
    .build()
    .unwrap();
    let frags = bpv7::fragment(&whole, 800).unwrap();
    assert!(frags.len() >= 4);
    let mut e = BundleEngine::new(config(3, &[("b", 2)]), store.clone(), T0).unwrap();
    for f in &frags[..frags.len() - 1] {
        e.receive(Some(NeighbourId(0)), None, f.to_bytes().unwrap(), T0);
    }
    drop(e);
    let mut e = BundleEngine::new(config(3, &[("b", 2)]), store.clone(), T0 + 1).unwrap();
    e.register(1, "ipn:3.1", T0 + 1).unwrap();
    assert!(deliveries(&drain(&mut e)).is_empty());
    e.receive(
        Some(NeighbourId(0)),
        None,
        frags.last().unwrap().to_bytes().unwrap(),
        T0 + 2,
    );
    let d = deliveries(&drain(&mut e));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].2, whole.payload().clone());
    assert_eq!(store.usage().bundles, 1, "fragments removed, whole held");
}

#[test]
fn durable_store_restart_resumes_pending_bundles() {
    let dir = std::env::temp_dir().join(format!("proc-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = StoreConfig {
        path: dir.clone(),
        durability: Durability::GroupCommit {
            max_delay: std::time::Duration::from_millis(5),
        },
        quota_bytes: 1 << 30,
        quota_bundles: 1000,
    };
    {
        let store = Store::open(&cfg).unwrap();
        let mut e = BundleEngine::new(config(1, &[("b", 2)]), store.clone(), T0).unwrap();
        e.link_state(NeighbourId(0), false, T0);
        for i in 0..5u8 {
            e.send(request("ipn:2.1", &[i; 100]), None, T0).unwrap();
        }
        store.flush().unwrap();
    }
    let store = Store::open(&cfg).unwrap();
    let mut e = BundleEngine::new(config(1, &[("b", 2)]), store.clone(), T0 + 1).unwrap();
    assert_eq!(e.bundle_count(), 5);
    let n = drain(&mut e)
        .iter()
        .filter(|a| matches!(a, Action::Transmit { .. }))
        .count();
    assert_eq!(n, 5);
    drop(e);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acknowledged_but_not_removed_is_not_delivered_again() {
    // A crash between the delivered-id record and the removal leaves both in the store.
    let store = memory_store(1000, 1 << 30);
    let mut e = BundleEngine::new(config(3, &[("b", 2)]), store.clone(), T0).unwrap();
    let bundle = bpv7::BundleBuilder::new(
        bpv7::Eid::ipn(1, 1),
        bpv7::Eid::ipn(3, 1),
        bpv7::CreationTimestamp::new(T0, 42),
        3_600_000,
    )
    .payload(&b"once"[..])
    .build()
    .unwrap();
    e.receive(Some(NeighbourId(0)), None, bundle.to_bytes().unwrap(), T0);
    drop(e);
    let key = node::store::BundleKey::from_id(&bundle.id());
    store.record_delivered(&key, T0 + 3_600_000).unwrap();
    assert_eq!(store.usage().bundles, 1);
    let mut e = BundleEngine::new(config(3, &[("b", 2)]), store.clone(), T0 + 5).unwrap();
    e.register(1, "ipn:3.1", T0 + 5).unwrap();
    assert!(deliveries(&drain(&mut e)).is_empty());
    assert_eq!(store.usage().bundles, 0);
}
