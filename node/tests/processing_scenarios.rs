//! Scenarios of RFC 9171 §5 bundle processing with two or three engines in memory on a
//! virtual clock (see `processing_common`).

mod processing_common;

use bytes::Bytes;
use processing_common::*;

use bpv7::{BlockFlags, BlockType, BundleBuilder, CreationTimestamp, Eid};
use node::api::{AgentError, Priority, StatusRequests};
use node::processing::{NeighbourId, Reception};

/// A — B — C in a line; A routes ipn:3.* via B, B reaches C directly.
fn line() -> Net {
    let mut a = config(1, &[("b", 2)]);
    a.routes.push(route("ipn:3.*", 0));
    let b = config(2, &[("a", 1), ("c", 3)]);
    let mut c = config(3, &[("b", 2)]);
    c.routes.push(route("ipn:1.*", 0));
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
        (c, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.link(1, 1, 2, 0);
    net
}

#[test]
fn forwarding_chain_delivers_once_and_releases_custody() {
    let mut net = line();
    net.engines[2].register(1, "ipn:3.5", net.now).unwrap();
    let payload = vec![0xa5u8; 5000];
    let (acc, _t) = net.engines[0]
        .send(request("ipn:3.5", &payload), None, net.now)
        .unwrap();
    net.run();
    let d = net.delivered_to(2);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload, Bytes::from(payload));
    assert_eq!(d[0].id, acc.id);
    assert_eq!(d[0].destination, "ipn:3.5");
    // In custody at C until acknowledged; A and B released it on Transferred.
    assert_eq!(net.stores[0].usage().bundles, 0);
    assert_eq!(net.stores[1].usage().bundles, 0);
    assert_eq!(net.stores[2].usage().bundles, 1);
    net.ack_all();
    assert_eq!(net.stores[2].usage().bundles, 0);
    assert_eq!(net.metric(0, "dtn_bundles_forwarded_total"), 1.0);
    assert_eq!(net.metric(1, "dtn_bundles_forwarded_total"), 1.0);
    assert_eq!(net.metric(1, "dtn_bundles_received_total"), 1.0);
    assert_eq!(net.metric(2, "dtn_bundles_delivered_total"), 1.0);
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_bundles_out_total", ("neighbour", "b")),
        1.0
    );
    // The forwarded bundle carries B as previous node and two hops.
    let last = net.sent.iter().find(|s| s.from == 1).unwrap();
    let b = bpv7::Bundle::decode(last.bytes.clone()).unwrap();
    assert_eq!(b.previous_node(), Some(Eid::ipn(2, 0)));
    assert_eq!(b.hop_count().unwrap().count, 2);
}

#[test]
fn bundle_waits_for_a_link_then_is_delivered() {
    let mut net = line();
    net.engines[2].register(1, "ipn:3.5", net.now).unwrap();
    net.engines[0].link_state(NeighbourId(0), false, net.now);
    net.engines[0]
        .send(request("ipn:3.5", b"later"), None, net.now)
        .unwrap();
    net.run();
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 1.0);
    assert!(net.sent.is_empty());
    net.advance_to(T0 + 60_000);
    assert!(net.delivered_to(2).is_empty());
    net.engines[0].link_state(NeighbourId(0), true, net.now);
    net.run();
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 0.0);
    assert_eq!(net.delivered_to(2).len(), 1);
}

#[test]
fn no_route_waits_until_the_route_appears_via_link_state() {
    // A has no route to ipn:9.*; B is directly reachable: a bundle for B's node with B's
    // link down waits; for an unknown node it waits forever (until expiry).
    let mut net = line();
    let mut req = request("ipn:9.1", b"nowhere");
    req.lifetime_ms = 10_000;
    req.requests.deleted = true;
    net.engines[0].register(1, "ipn:1.0", net.now).unwrap_or(());
    net.engines[0].send(req, None, net.now).unwrap();
    net.run();
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 1.0);
    net.advance_to(T0 + 10_001);
    assert_eq!(net.metric(0, "dtn_bundles_expired_total"), 1.0);
    assert_eq!(
        net.metric_with(
            0,
            "dtn_bundles_deleted_total",
            ("reason", "lifetime_expired")
        ),
        1.0
    );
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 0.0);
    // The deletion report (report-to = source = ipn:1.0, registered) reached the admin
    // registration.
    let d = net.delivered_to(0);
    assert_eq!(d.len(), 1);
    let rec = bpv7::AdminRecord::decode(&d[0].payload).unwrap();
    match rec {
        bpv7::AdminRecord::StatusReport(sr) => {
            assert!(sr.deleted.asserted);
            assert_eq!(sr.reason, bpv7::ReasonCode::LifetimeExpired);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn expiry_while_waiting_deletes_with_reason_1() {
    let mut net = line();
    net.engines[0].link_state(NeighbourId(0), false, net.now);
    let mut req = request("ipn:3.5", b"short");
    req.lifetime_ms = 5_000;
    net.engines[0].send(req, None, net.now).unwrap();
    net.run();
    assert_eq!(net.stores[0].usage().bundles, 1);
    assert_eq!(net.engines[0].poll_timeout(), Some(T0 + 5_000));
    net.advance_to(T0 + 4_999);
    assert_eq!(net.stores[0].usage().bundles, 1);
    net.advance_to(T0 + 5_000);
    assert_eq!(net.stores[0].usage().bundles, 0);
    assert_eq!(net.metric(0, "dtn_bundles_expired_total"), 1.0);
    net.engines[0].link_state(NeighbourId(0), true, net.now);
    net.run();
    assert!(net.sent.is_empty());
}

fn raw_bundle(hop_limit: u64, hop_count: u64, dest: &str) -> Bytes {
    BundleBuilder::new(
        Eid::ipn(1, 1),
        dest.parse().unwrap(),
        CreationTimestamp::new(T0, 1),
        3_600_000,
    )
    .flags(bpv7::BundleFlags::REPORT_DELETION)
    .hop_count(hop_limit, hop_count)
    .payload(&b"hops"[..])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
}

#[test]
fn hop_limit_exceeded_is_deleted_with_reason_9() {
    let mut net = line();
    // Arrives at B with count 2 of limit 2: B may not forward it (count would be 3).
    let r = net.engines[1].receive(
        Some(NeighbourId(0)),
        None,
        raw_bundle(2, 2, "ipn:3.1"),
        net.now,
    );
    assert!(matches!(r, Reception::Accepted(_)), "{r:?}");
    net.run();
    assert_eq!(
        net.metric_with(
            1,
            "dtn_bundles_deleted_total",
            ("reason", "hop_limit_exceeded")
        ),
        1.0
    );
    // Nothing left at B: the deletion report went on to the report-to node A.
    assert_eq!(net.stores[1].usage().bundles, 0);
    assert_eq!(net.metric(1, "dtn_status_reports_sent_total"), 1.0);
    assert_eq!(
        net.stores[0].usage().bundles,
        1,
        "the report waits at A for ipn:1.1"
    );
    // Over the limit on arrival: deleted at reception.
    let r = net.engines[2].receive(
        Some(NeighbourId(0)),
        None,
        raw_bundle(2, 3, "ipn:3.1"),
        net.now,
    );
    assert_eq!(r, Reception::Consumed);
    assert_eq!(
        net.metric_with(
            2,
            "dtn_bundles_deleted_total",
            ("reason", "hop_limit_exceeded")
        ),
        1.0
    );
}

/// The status reports delivered at engine `i` (all must be status reports).
fn reports_at(net: &Net, i: usize) -> Vec<bpv7::StatusReport> {
    net.delivered_to(i)
        .iter()
        .map(|d| match bpv7::AdminRecord::decode(&d.payload).unwrap() {
            bpv7::AdminRecord::StatusReport(sr) => sr,
            other => panic!("not a status report: {other:?}"),
        })
        .collect()
}

#[test]
fn reception_report_precedes_deletion_at_reception() {
    // RFC 9171 §5.6 step 2 (reception report, if requested) comes before the §5.10 deletion
    // report, also when the bundle is deleted during reception.
    let mut net = line();
    net.engines[1].register(1, "ipn:2.1", net.now).unwrap();
    let both = bpv7::BundleFlags::REPORT_RECEPTION | bpv7::BundleFlags::REPORT_DELETION;
    let hop_limited = BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(3, 1),
        CreationTimestamp::new(T0, 21),
        3_600_000,
    )
    .flags(both)
    .report_to(Eid::ipn(2, 1))
    .hop_count(2, 3)
    .payload(&b"hops"[..])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap();
    let expired = BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(3, 1),
        CreationTimestamp::new(T0 - 10_000, 22),
        5_000,
    )
    .flags(both)
    .report_to(Eid::ipn(2, 1))
    .payload(&b"late"[..])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap();
    for raw in [hop_limited, expired] {
        let r = net.engines[1].receive(Some(NeighbourId(0)), None, raw, net.now);
        assert_eq!(r, Reception::Consumed);
    }
    net.run();
    let reports = reports_at(&net, 1);
    assert_eq!(reports.len(), 4, "{reports:?}");
    for (pair, reason) in reports.chunks(2).zip([
        bpv7::ReasonCode::HopLimitExceeded,
        bpv7::ReasonCode::LifetimeExpired,
    ]) {
        assert!(pair[0].received.asserted && !pair[0].deleted.asserted);
        assert_eq!(pair[0].reason, bpv7::ReasonCode::NoInformation);
        assert!(pair[1].deleted.asserted && !pair[1].received.asserted);
        assert_eq!(pair[1].reason, reason);
        assert_eq!(pair[0].timestamp, pair[1].timestamp);
    }
    // Without the reception request only the deletion is reported.
    let only_deletion = raw_bundle(2, 3, "ipn:3.1");
    let r = net.engines[1].receive(Some(NeighbourId(0)), None, only_deletion, net.now);
    assert_eq!(r, Reception::Consumed);
    net.run();
    assert_eq!(reports_at(&net, 1).len(), 4);
}

#[test]
fn duplicates_are_consumed_without_storing() {
    let mut net = line();
    net.engines[2].register(1, "ipn:3.1", net.now).unwrap();
    let raw = raw_bundle(10, 0, "ipn:3.1");
    let r1 = net.engines[2].receive(Some(NeighbourId(0)), None, raw.clone(), net.now);
    assert!(matches!(r1, Reception::Accepted(_)));
    let r2 = net.engines[2].receive(Some(NeighbourId(0)), None, raw.clone(), net.now);
    assert_eq!(r2, Reception::Consumed);
    net.run();
    assert_eq!(net.delivered_to(2).len(), 1);
    net.ack_all();
    // After delivery the delivered-id record catches it.
    let r3 = net.engines[2].receive(Some(NeighbourId(0)), None, raw, net.now);
    assert_eq!(r3, Reception::Consumed);
    net.run();
    assert_eq!(net.delivered_to(2).len(), 1);
    assert_eq!(net.metric(2, "dtn_bundles_duplicate_total"), 2.0);
    assert_eq!(net.stores[2].usage().bundles, 0);
}

#[test]
fn invalid_bytes_are_discarded_and_counted() {
    let mut net = line();
    let mut raw = raw_bundle(10, 0, "ipn:3.1").to_vec();
    let n = raw.len();
    raw[n - 3] ^= 0xff; // payload CRC broken
    for bad in [
        Bytes::from(raw),
        Bytes::from_static(b"garbage"),
        Bytes::new(),
    ] {
        let r = net.engines[2].receive(Some(NeighbourId(0)), None, bad, net.now);
        assert!(matches!(r, Reception::Discarded(_)), "{r:?}");
    }
    assert_eq!(net.metric(2, "dtn_bundles_discarded_total"), 3.0);
    assert_eq!(net.stores[2].usage().bundles, 0);
}

#[test]
fn proactive_fragmentation_and_reassembly_at_the_destination() {
    let mut a = config(1, &[("b", 2)]);
    a.neighbours[0].max_bundle_size = Some(400);
    let b = config(2, &[("a", 1)]);
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.engines[1].register(1, "ipn:2.9", net.now).unwrap();
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    net.engines[0]
        .send(request("ipn:2.9", &payload), None, net.now)
        .unwrap();
    net.run();
    assert!(net.sent.len() > 10, "fragments: {}", net.sent.len());
    assert!(net.sent.iter().all(|s| s.bytes.len() <= 400));
    let d = net.delivered_to(1);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload, Bytes::from(payload));
    assert_eq!(d[0].id.fragment, None);
    // Fragments gone, the whole bundle held until acknowledged.
    assert_eq!(net.stores[1].usage().bundles, 1);
    assert_eq!(net.stores[0].usage().bundles, 0);
    net.ack_all();
    assert_eq!(net.stores[1].usage().bundles, 0);
}

/// Node 1 linked to node 2 by a link that carries at most `max_in_flight` transfers (and
/// fragments bundles above `max_bundle_size`, if given); transfers are held (not confirmed)
/// until the test acks them.
fn held_link(max_in_flight: usize, max_bundle_size: Option<u64>) -> Net {
    let mut a = config(1, &[("b", 2)]);
    a.neighbours[0].max_bundle_size = max_bundle_size;
    a.neighbours[0].max_in_flight = max_in_flight;
    let b = config(2, &[("a", 1)]);
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.hold = true;
    net
}

#[test]
fn fragments_count_against_max_in_flight() {
    // Two bundles of 3 fragments each over a link with a window of 4 transfers: the second
    // waits until the first one's fragments are confirmed.
    let mut net = held_link(4, Some(400));
    for i in 0..2u8 {
        net.engines[0]
            .send(request("ipn:2.9", &[i; 700]), None, net.now)
            .unwrap();
    }
    net.run();
    let first = net.held.len();
    assert!(
        (2..=4).contains(&first),
        "one bundle's fragments in flight, not more than the window: {first}"
    );
    assert!(net.sent.iter().all(|s| s.bytes.len() <= 400));
    // Each confirmation frees one place; the second bundle goes once all its fragments fit.
    let mut most = first;
    while !net.held.is_empty() {
        let (e, t) = net.held.remove(0);
        net.engines[e].transfer_outcome(t, Ok(()), net.now);
        net.run();
        most = most.max(net.held.len());
    }
    assert!(most <= 4, "{most} transfers in flight with max_in_flight 4");
    assert_eq!(net.sent.len(), 2 * first);
    // Every fragment confirmed: both bundles left A's custody.
    assert_eq!(net.stores[0].usage().bundles, 0);
    assert_eq!(net.metric(0, "dtn_bundles_forwarded_total"), 2.0);
}

#[test]
fn a_bundle_with_more_fragments_than_the_window_goes_alone() {
    let mut net = held_link(2, Some(400));
    net.engines[0]
        .send(request("ipn:2.9", b"small"), None, net.now)
        .unwrap();
    net.engines[0]
        .send(request("ipn:2.9", &[7u8; 2000]), None, net.now)
        .unwrap();
    net.run();
    // The small one is in flight; the large one (more fragments than the window) waits.
    assert_eq!(net.held.len(), 1);
    let (e, t) = net.held.remove(0);
    net.engines[e].transfer_outcome(t, Ok(()), net.now);
    net.run();
    let fragments = net.held.len();
    assert!(fragments > 2, "sent alone, all at once: {fragments}");
    while !net.held.is_empty() {
        let (e, t) = net.held.remove(0);
        net.engines[e].transfer_outcome(t, Ok(()), net.now);
        net.run();
    }
    assert_eq!(net.stores[0].usage().bundles, 0);
    assert_eq!(net.metric(0, "dtn_bundles_forwarded_total"), 2.0);
}

#[test]
fn must_not_fragment_over_a_small_link_is_deleted_with_reason_6() {
    let mut a = config(1, &[("b", 2)]);
    a.neighbours[0].max_bundle_size = Some(400);
    let b = config(2, &[("a", 1)]);
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    let mut req = request("ipn:2.9", &[1u8; 2000]);
    req.no_fragment = true;
    net.engines[0].send(req, None, net.now).unwrap();
    net.run();
    assert!(net.sent.is_empty());
    assert_eq!(
        net.metric_with(0, "dtn_bundles_deleted_total", ("reason", "no_known_route")),
        1.0
    );
}

#[test]
fn too_large_outcome_makes_the_next_attempt_fragment() {
    let a = config(1, &[("b", 2)]);
    let b = config(2, &[("a", 1)]);
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.engines[1].register(1, "ipn:2.9", net.now).unwrap();
    net.hold = true;
    net.engines[0]
        .send(request("ipn:2.9", &[3u8; 3000]), None, net.now)
        .unwrap();
    net.run();
    let (_, t) = net.held.pop().unwrap();
    net.hold = false;
    net.engines[0].transfer_outcome(
        t,
        Err(convergence::FailureReason::TooLarge {
            size: 3100,
            limit: 1000,
        }),
        net.now,
    );
    net.run();
    let later: Vec<_> = net.sent.iter().skip(1).collect();
    assert!(later.len() >= 4);
    assert!(later.iter().all(|s| s.bytes.len() <= 1000));
    assert_eq!(net.delivered_to(1).len(), 1);
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_failures_total", ("reason", "too_large")),
        1.0
    );
}

#[test]
fn failed_transfer_is_retried_after_the_delay() {
    let mut net = line();
    net.engines[2].register(1, "ipn:3.5", net.now).unwrap();
    net.cut.insert((0, 0), true);
    net.engines[0]
        .send(request("ipn:3.5", b"retry"), None, net.now)
        .unwrap();
    net.run();
    assert_eq!(net.sent.len(), 1);
    assert_eq!(net.engines[0].poll_timeout(), Some(T0 + 1000));
    net.cut.clear();
    net.advance_to(T0 + 999);
    assert_eq!(net.sent.len(), 1);
    net.advance_to(T0 + 1000);
    assert_eq!(net.delivered_to(2).len(), 1);
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_failures_total", ("reason", "unreachable")),
        1.0
    );
}

#[test]
fn previous_hop_is_excluded() {
    // B's only route for ipn:3.* points back to A, where the bundle came from: it waits.
    let mut a = config(1, &[("b", 2)]);
    a.routes.push(route("ipn:3.*", 0));
    let mut b = config(2, &[("a", 1)]);
    b.routes.push(route("*", 0));
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.engines[0]
        .send(request("ipn:3.5", b"loop"), None, net.now)
        .unwrap();
    net.run();
    assert_eq!(net.sent.len(), 1);
    assert_eq!(net.metric(1, "dtn_bundles_waiting"), 1.0);
}

#[test]
fn expedited_bundles_go_first() {
    let mut net = held_link(1, None);
    for (i, p) in [
        Priority::Bulk,
        Priority::Normal,
        Priority::Expedited,
        Priority::Normal,
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = request("ipn:2.1", &[i as u8]);
        r.priority = p;
        net.engines[0].send(r, None, net.now).unwrap();
    }
    net.run();
    assert_eq!(net.held.len(), 1, "max_in_flight 1");
    let mut order = Vec::new();
    for _ in 0..4 {
        net.run();
        let (e, t) = net.held.remove(0);
        net.engines[e].transfer_outcome(t, Ok(()), net.now);
        net.run();
    }
    for s in &net.sent {
        order.push(bpv7::Bundle::decode(s.bytes.clone()).unwrap().payload()[0]);
    }
    // The first was handed out at once; then expedited, normal (FIFO), bulk.
    assert_eq!(order, vec![0, 2, 1, 3]);
}

#[test]
fn link_down_requeues_to_another_route() {
    let mut a = config(1, &[("b", 2), ("c", 3)]);
    a.routes.push(route("ipn:9.*", 0));
    a.routes.push(route("ipn:9.*", 1));
    a.neighbours[0].max_in_flight = 1;
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (config(2, &[("a", 1)]), memory_store(1000, 1 << 30)),
        (config(3, &[("a", 1)]), memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.link(0, 1, 2, 0);
    net.hold = true;
    for i in 0..3u8 {
        net.engines[0]
            .send(request("ipn:9.1", &[i]), None, net.now)
            .unwrap();
    }
    net.run();
    assert_eq!(net.held.len(), 1);
    net.hold = false;
    net.engines[0].link_state(NeighbourId(0), false, net.now);
    net.run();
    // The two queued for b went to c.
    assert_eq!(net.stores[2].usage().bundles, 2);
}

#[test]
fn quota_refuses_sends_and_receptions() {
    let a = config(1, &[("b", 2)]);
    let mut net = Net::new(vec![(a, memory_store(2, 1 << 30))]);
    net.engines[0].link_state(NeighbourId(0), false, net.now);
    net.engines[0]
        .send(request("ipn:2.1", b"1"), None, net.now)
        .unwrap();
    net.engines[0]
        .send(request("ipn:2.1", b"2"), None, net.now)
        .unwrap();
    let e = net.engines[0]
        .send(request("ipn:2.1", b"3"), None, net.now)
        .unwrap_err();
    assert!(matches!(e, AgentError::StoreFull(_)), "{e:?}");
    let r = net.engines[0].receive(
        Some(NeighbourId(0)),
        None,
        raw_bundle(10, 0, "ipn:2.1"),
        net.now,
    );
    assert!(matches!(r, Reception::Refused(_)), "{r:?}");
    assert_eq!(net.stores[0].usage().bundles, 2);
}

#[test]
fn status_reports_respect_requests_and_rate_limit() {
    let mut net = line();
    net.engines[1] = {
        let mut b = config(2, &[("a", 1), ("c", 3)]);
        b.status_reports.max_per_second = 2;
        node::processing::BundleEngine::new(b, net.stores[1].clone(), net.now).unwrap()
    };
    net.engines[0].register(1, "ipn:1.1", net.now).unwrap();
    net.engines[2].register(1, "ipn:3.1", net.now).unwrap();
    for i in 0..5u8 {
        let mut r = request("ipn:3.1", &[i]);
        r.source = Some("ipn:1.1".into());
        r.requests = StatusRequests {
            received: true,
            ..Default::default()
        };
        net.engines[0].send(r, None, net.now).unwrap();
    }
    // one without requests: no report
    let mut r = request("ipn:3.1", b"x");
    r.source = Some("ipn:1.1".into());
    net.engines[0].send(r, None, net.now).unwrap();
    net.run();
    // B: 2 reports (rate limit), C: 5 reports; all to ipn:1.1 at A.
    assert_eq!(net.metric(1, "dtn_status_reports_sent_total"), 2.0);
    assert_eq!(net.metric(1, "dtn_status_reports_suppressed_total"), 3.0);
    assert_eq!(net.metric(2, "dtn_status_reports_sent_total"), 5.0);
    let reports = net.delivered_to(0);
    assert_eq!(reports.len(), 7);
    for d in &reports {
        let bpv7::AdminRecord::StatusReport(sr) = bpv7::AdminRecord::decode(&d.payload).unwrap()
        else {
            panic!("not a report")
        };
        assert!(sr.received.asserted);
        assert_eq!(sr.source, Eid::ipn(1, 1));
    }
    // Reports are not reported on (C received admin records? none requested anyway), and a
    // second later the bucket is full again.
    net.advance_to(net.now + 1000);
    let mut r = request("ipn:3.1", b"y");
    r.source = Some("ipn:1.1".into());
    r.requests.received = true;
    net.engines[0].send(r, None, net.now).unwrap();
    net.run();
    assert_eq!(net.metric(1, "dtn_status_reports_sent_total"), 3.0);
}

#[test]
fn echo_service_answers_with_the_same_payload() {
    let mut net = line();
    net.engines[0].register(1, "ipn:1.1", net.now).unwrap();
    let mut r = request("ipn:3.7", b"ping 1");
    r.source = Some("ipn:1.1".into());
    net.engines[0].send(r, None, net.now).unwrap();
    net.run();
    let d = net.delivered_to(0);
    assert_eq!(d.len(), 1);
    assert_eq!(&d[0].payload[..], b"ping 1");
    assert_eq!(d[0].id.source, "ipn:3.7");
    assert_eq!(net.stores[2].usage().bundles, 0, "the request is not kept");
    // dtn-scheme echo
    let dtn_node = {
        let mut c = config(4, &[]);
        c.node_id = "dtn://n4/".parse().unwrap();
        c
    };
    let mut e =
        node::processing::BundleEngine::new(dtn_node, memory_store(10, 1 << 20), T0).unwrap();
    e.register(1, "dtn://n4/app", T0).unwrap();
    let mut r = request("dtn://n4/echo", b"ping 2");
    r.source = Some("dtn://n4/app".into());
    e.send(r, None, T0).unwrap();
    let mut got = Vec::new();
    while let Some(a) = e.poll_action() {
        got.push(a);
    }
    assert!(
        matches!(&got[..], [node::processing::Action::Deliver { delivery, .. }] if &delivery.payload[..] == b"ping 2" && delivery.id.source == "dtn://n4/echo")
    );
}

fn with_unknown_block(flags: BlockFlags) -> Bytes {
    BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(3, 1),
        CreationTimestamp::new(T0, 9),
        3_600_000,
    )
    .flags(bpv7::BundleFlags::REPORT_DELETION | bpv7::BundleFlags::REPORT_RECEPTION)
    .report_to(Eid::ipn(2, 1))
    .block(
        BlockType::Unknown(200),
        flags,
        bpv7::CrcType::None,
        &b"x"[..],
    )
    .hop_count(10, 0)
    .payload(&b"blocks"[..])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
}

#[test]
fn unknown_blocks_follow_their_flags() {
    let mut net = line();
    net.engines[1].register(1, "ipn:2.1", net.now).unwrap();
    net.engines[2].register(1, "ipn:3.1", net.now).unwrap();
    // delete-bundle flag → deleted at B, reason 11, deletion report to ipn:2.1 (local).
    let r = net.engines[1].receive(
        Some(NeighbourId(0)),
        None,
        with_unknown_block(BlockFlags::DELETE_BUNDLE_IF_UNPROCESSABLE),
        net.now,
    );
    assert_eq!(r, Reception::Consumed);
    net.run();
    assert_eq!(
        net.metric_with(
            1,
            "dtn_bundles_deleted_total",
            ("reason", "block_unsupported")
        ),
        1.0
    );
    assert!(net.delivered_to(2).is_empty());
    // discard flag + report flag → forwarded without the block; reception report reason 11.
    let r = net.engines[1].receive(
        Some(NeighbourId(0)),
        None,
        with_unknown_block(
            BlockFlags::DISCARD_IF_UNPROCESSABLE | BlockFlags::REPORT_IF_UNPROCESSABLE,
        ),
        net.now,
    );
    assert!(matches!(r, Reception::Accepted(_)));
    net.run();
    let fwd = net.sent.iter().find(|s| s.from == 1 && s.to == 2).unwrap();
    let b = bpv7::Bundle::decode(fwd.bytes.clone()).unwrap();
    assert!(b.block_of_type(BlockType::Unknown(200)).is_none());
    assert_eq!(net.delivered_to(2).len(), 1);
    let reports: Vec<_> = net
        .delivered_to(1)
        .iter()
        .map(|d| match bpv7::AdminRecord::decode(&d.payload).unwrap() {
            bpv7::AdminRecord::StatusReport(sr) => sr,
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        reports.len(),
        2 + 2,
        "received(B) then deleted(B) + received(B, reason 11) + received(C)"
    );
    // RFC 9171 §5.6 step 2 before §5.10: the bundle deleted at reception was received first.
    assert!(reports[0].received.asserted && reports[0].reason == bpv7::ReasonCode::NoInformation);
    assert!(reports[1].deleted.asserted && reports[1].reason == bpv7::ReasonCode::BlockUnsupported);
    assert!(reports
        .iter()
        .any(|r| r.deleted.asserted && r.reason == bpv7::ReasonCode::BlockUnsupported));
    assert!(reports
        .iter()
        .any(|r| r.received.asserted && r.reason == bpv7::ReasonCode::BlockUnsupported));
    // no flags → kept and forwarded.
    let keep = BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(3, 1),
        CreationTimestamp::new(T0, 10),
        3_600_000,
    )
    .block(
        BlockType::Unknown(201),
        BlockFlags::empty(),
        bpv7::CrcType::None,
        &b"k"[..],
    )
    .payload(&b"k"[..])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap();
    net.engines[1].receive(Some(NeighbourId(0)), None, keep, net.now);
    net.run();
    let fwd = net
        .sent
        .iter()
        .rev()
        .find(|s| s.from == 1 && s.to == 2)
        .unwrap();
    let b = bpv7::Bundle::decode(fwd.bytes.clone()).unwrap();
    assert!(b.block_of_type(BlockType::Unknown(201)).is_some());
}

#[test]
fn expired_on_arrival_is_deleted_with_reason_1() {
    let mut net = line();
    let old = BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(3, 1),
        CreationTimestamp::new(T0 - 20_000, 0),
        10_000,
    )
    .payload(&b"old"[..])
    .build()
    .unwrap()
    .to_bytes()
    .unwrap();
    assert_eq!(
        net.engines[1].receive(Some(NeighbourId(0)), None, old, net.now),
        Reception::Consumed
    );
    assert_eq!(net.metric(1, "dtn_bundles_expired_total"), 1.0);
    assert_eq!(net.stores[1].usage().bundles, 0);
}

#[test]
fn primary_without_crc_only_from_a_lenient_neighbour() {
    let mut b = config(2, &[("strict", 1), ("dtn7", 5)]);
    b.neighbours[1].accept_primary_without_crc = true;
    let mut e = node::processing::BundleEngine::new(b, memory_store(10, 1 << 20), T0).unwrap();
    let mut bundle = BundleBuilder::new(
        Eid::ipn(5, 1),
        Eid::ipn(2, 1),
        CreationTimestamp::new(T0, 0),
        60_000,
    )
    .payload(&b"dtn7"[..])
    .build()
    .unwrap();
    bundle.primary.crc_type = bpv7::CrcType::None;
    let raw = Bytes::from(
        bundle
            .encode_with(&bpv7::DecodeOptions::rfc9173_examples())
            .unwrap(),
    );
    assert!(matches!(
        e.receive(Some(NeighbourId(0)), None, raw.clone(), T0),
        Reception::Discarded(_)
    ));
    assert!(matches!(
        e.receive(Some(NeighbourId(1)), None, raw, T0),
        Reception::Accepted(_)
    ));
}

#[test]
fn cgr_route_waits_for_the_contact_then_forwards() {
    use node::routing::{ContactPlan, PlanOptions, Router};
    let plan = ContactPlan::parse_ion(
        "a contact +10 +3600 1 2 1000000\na contact +10 +3600 2 1 1000000\na range +0 +3600 1 2 1\n",
        "plan.rc",
        &PlanOptions::new(T0),
    )
    .unwrap();
    let mut a = config(1, &[("b", 2)]);
    a.router = Some(Router::new(1, plan));
    let b = config(2, &[("a", 1)]);
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.engines[1].register(1, "ipn:2.1", net.now).unwrap();
    net.engines[0]
        .send(request("ipn:2.1", b"cgr"), None, net.now)
        .unwrap();
    net.run();
    assert!(net.sent.is_empty(), "the contact starts in 10 s");
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 1.0);
    assert_eq!(net.engines[0].poll_timeout(), Some(T0 + 10_000));
    net.advance_to(T0 + 10_000);
    assert_eq!(net.delivered_to(1).len(), 1);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Arbitrary bytes from a neighbour never panic the engine and never touch the store.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut e = node::processing::BundleEngine::new(config(2, &[("a", 1)]), memory_store(100, 1 << 20), T0).unwrap();
            let r = e.receive(Some(NeighbourId(0)), None, Bytes::from(bytes), T0);
            prop_assert!(matches!(r, Reception::Discarded(_)));
        }

        /// A valid bundle with bytes flipped is either discarded or processed, never a panic.
        #[test]
        fn mutated_bundles_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), dest in 1u64..4) {
            let mut e = node::processing::BundleEngine::new(config(2, &[("a", 1), ("c", 3)]), memory_store(100, 1 << 20), T0).unwrap();
            e.register(1, "ipn:2.1", T0).unwrap();
            let mut raw = raw_bundle(10, 0, &format!("ipn:{dest}.1")).to_vec();
            let i = pos.index(raw.len());
            raw[i] = val;
            let _ = e.receive(Some(NeighbourId(0)), None, Bytes::from(raw), T0);
            for _ in 0..100 {
                if e.poll_action().is_none() {
                    break;
                }
            }
            e.handle_timeout(T0 + 10_000_000);
        }
    }
}

#[test]
fn a_dead_neighbour_is_probed_once_per_retry_delay_not_per_bundle() {
    let mut net = line();
    net.engines[2].register(1, "ipn:3.5", net.now).unwrap();
    net.cut.insert((0, 0), true);
    for i in 0..40u8 {
        net.engines[0]
            .send(request("ipn:3.5", &[i]), None, net.now)
            .unwrap();
    }
    net.run();
    // At most one window (max_in_flight 8) was tried; the rest wait for the pause to end.
    assert_eq!(net.sent.len(), 8);
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 40.0);
    net.advance_to(T0 + 1000);
    assert_eq!(net.sent.len(), 16);
    net.cut.clear();
    net.advance_to(T0 + 2000);
    // All at C: the delivery window (16) is pushed, the rest wait for acknowledgements.
    assert_eq!(net.stores[2].usage().bundles, 40);
    assert_eq!(net.delivered_to(2).len(), 16);
    assert_eq!(net.stores[0].usage().bundles, 0);
    for _ in 0..3 {
        let before = net.deliveries.len();
        net.ack_all();
        net.deliveries.drain(..before);
    }
    assert_eq!(net.stores[2].usage().bundles, 0);
    assert_eq!(net.metric(2, "dtn_bundles_delivered_total"), 40.0);
}

#[test]
fn reports_to_the_admin_endpoint_are_consumed_and_counted() {
    let mut net = line();
    net.engines[2].register(1, "ipn:3.5", net.now).unwrap();
    // Source (and report-to) is A's node ID, i.e. its administrative endpoint; no one is
    // registered there.
    let mut r = request("ipn:3.5", b"report me");
    r.requests = StatusRequests {
        received: true,
        forwarded: true,
        delivered: true,
        deleted: false,
    };
    net.engines[0].send(r, None, net.now).unwrap();
    net.run();
    net.ack_all();
    // forwarded at A (the source reports its own forwarding too, §5.4 step 5), received +
    // forwarded at B, received + delivered at C.
    assert_eq!(net.metric(0, "dtn_admin_records_received_total"), 5.0);
    assert_eq!(net.metric(0, "dtn_status_reports_sent_total"), 1.0);
    assert_eq!(net.stores[0].usage().bundles, 0, "consumed, not stored");
    assert!(net.delivered_to(0).is_empty());
    assert_eq!(net.metric(1, "dtn_status_reports_sent_total"), 2.0);
    assert_eq!(net.metric(2, "dtn_status_reports_sent_total"), 2.0);
}
