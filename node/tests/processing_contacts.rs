//! Contacts drive the links (issue 6): engines with a contact plan on a virtual clock (see
//! `processing_common`). A neighbour named by the plan is up only during its contacts, bundles
//! wait for them, a contact ending with bundles queued routes them again (by an alternate
//! route if there is one), and a plan reload changes all of it without a restart.

mod processing_common;

use node::processing::{NeighbourId, PlannedLink};
use node::routing::{ContactPlan, PlanOptions, Router};
use processing_common::*;

fn plan(text: &str) -> ContactPlan {
    ContactPlan::parse_ion(text, "plan.rc", &PlanOptions::new(T0)).unwrap()
}

/// Contacts 1↔2 at +10..+20 s and +40..+50 s, light time 1 s.
const LINE_PLAN: &str = "\
a contact +10 +20 1 2 50000
a contact +10 +20 2 1 50000
a contact +40 +50 1 2 80000
a contact +40 +50 2 1 80000
a range +0 +3600 1 2 1
";

fn two_nodes(text: &str) -> Net {
    two_nodes_with(text, |_| {})
}

/// Nodes 1 and 2 linked, both routing by `text`; `adjust` changes node 1's configuration.
fn two_nodes_with(text: &str, adjust: impl FnOnce(&mut node::processing::EngineConfig)) -> Net {
    let mut a = config(1, &[("b", 2)]);
    a.router = Some(Router::new(1, plan(text)));
    adjust(&mut a);
    let mut b = config(2, &[("a", 1)]);
    b.router = Some(Router::new(2, plan(text)));
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net
}

#[test]
fn link_follows_its_contacts_and_bundles_wait_for_them() {
    let mut net = two_nodes(LINE_PLAN);
    net.engines[1].register(1, "ipn:2.1", net.now).unwrap();
    // At start the plan says down: both engines announce it.
    net.run();
    let down = |next_contact: Option<u64>| PlannedLink {
        up: false,
        rate: None,
        owlt_ms: Some(1000),
        next_contact,
    };
    let first = down(Some(T0 + 10_000));
    assert_eq!(
        net.link_changes,
        vec![(0, 0, Some(first), T0), (1, 0, Some(first), T0)]
    );
    assert_eq!(
        net.engines[0].planned_link_state(NeighbourId(0)),
        Some(first)
    );
    for i in 0..5u8 {
        net.engines[0]
            .send(request("ipn:2.1", &[i]), None, net.now)
            .unwrap();
    }
    net.run();
    assert!(net.sent.is_empty(), "no contact yet");
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 5.0);
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_up", ("neighbour", "b")),
        0.0
    );

    net.advance_to(T0 + 9_999);
    assert!(net.sent.is_empty());
    net.advance_to(T0 + 10_000);
    assert_eq!(
        net.delivered_to(1).len(),
        5,
        "delivered at the contact's start"
    );
    assert!(net.sent.iter().all(|_| net.now == T0 + 10_000));
    let up = PlannedLink {
        up: true,
        rate: Some(50_000),
        owlt_ms: Some(1000),
        next_contact: Some(T0 + 40_000),
    };
    assert!(net.link_changes.contains(&(0, 0, Some(up), T0 + 10_000)));
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_up", ("neighbour", "b")),
        1.0
    );

    // The contact ends at +20 s: a bundle sent at +25 s waits for the next one at +40 s, and
    // goes at that contact's rate.
    net.advance_to(T0 + 25_000);
    assert!(net
        .link_changes
        .contains(&(0, 0, Some(down(Some(T0 + 40_000))), T0 + 20_000)));
    net.engines[0]
        .send(request("ipn:2.1", b"late"), None, net.now)
        .unwrap();
    net.run();
    assert_eq!(net.delivered_to(1).len(), 5);
    assert_eq!(net.metric(0, "dtn_bundles_waiting"), 1.0);
    net.advance_to(T0 + 40_000);
    assert_eq!(net.delivered_to(1).len(), 6);
    assert!(net.link_changes.contains(&(
        0,
        0,
        Some(PlannedLink {
            up: true,
            rate: Some(80_000),
            owlt_ms: Some(1000),
            next_contact: None,
        }),
        T0 + 40_000
    )));
    // After the last contact no more changes than the end of it.
    net.advance_to(T0 + 100_000);
    let last = net.link_changes.iter().rfind(|c| c.0 == 0).unwrap();
    // The last contact's end says so: nothing would resume a suspended session.
    assert_eq!(*last, (0, 0, Some(down(None)), T0 + 50_000));
}

/// A diamond 1 → {2, 3} → 4: via 2 is faster (light time 1 s against 5 s).
const DIAMOND: &str = "\
a contact +0 +30 1 2 1000000
a contact +0 +3600 1 3 1000000
a contact +0 +3600 2 4 1000000
a contact +0 +3600 3 4 1000000
a range +0 +3600 1 2 1
a range +0 +3600 1 3 5
a range +0 +3600 2 4 1
a range +0 +3600 3 4 5
";

fn diamond(text: &str) -> Net {
    let mut a = config(1, &[("b", 2), ("c", 3)]);
    a.router = Some(Router::new(1, plan(text)));
    for n in &mut a.neighbours {
        n.max_in_flight = 2;
    }
    let mut b = config(2, &[("a", 1), ("d", 4)]);
    b.router = Some(Router::new(2, plan(text)));
    let mut c = config(3, &[("a", 1), ("d", 4)]);
    c.router = Some(Router::new(3, plan(text)));
    let d = config(4, &[("b", 2), ("c", 3)]);
    let mut net = Net::new(vec![
        (a, memory_store(1000, 1 << 30)),
        (b, memory_store(1000, 1 << 30)),
        (c, memory_store(1000, 1 << 30)),
        (d, memory_store(1000, 1 << 30)),
    ]);
    net.link(0, 0, 1, 0);
    net.link(0, 1, 2, 0);
    net.link(1, 1, 3, 0);
    net.link(2, 1, 3, 1);
    net
}

#[test]
fn a_contact_ending_with_bundles_queued_sends_them_by_the_alternate_route() {
    let mut net = diamond(DIAMOND);
    net.engines[3].register(1, "ipn:4.1", net.now).unwrap();
    // Transfers to b stay in flight (outcomes withheld) so the rest queue behind the window.
    net.hold = true;
    for i in 0..10u8 {
        net.engines[0]
            .send(request("ipn:4.1", &[i]), None, net.now)
            .unwrap();
    }
    net.run();
    assert_eq!(net.held.len(), 2, "the window of 2 to b");
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_queued", ("neighbour", "b")),
        8.0
    );
    // The contact 1→2 ends at +30 s with eight bundles queued: routed again, via c.
    net.hold = false;
    net.advance_to(T0 + 30_000);
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_queued", ("neighbour", "b")),
        0.0
    );
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_bundles_out_total", ("neighbour", "c")),
        8.0
    );
    assert_eq!(net.delivered_to(3).len(), 8);
    // The two in flight over the ended contact fail (the adapter cancels them): they go via
    // c as well, and nothing is delivered twice.
    for (engine, transfer) in std::mem::take(&mut net.held) {
        net.engines[engine].transfer_outcome(
            transfer,
            Err(convergence::FailureReason::Unreachable(
                "contact ended".into(),
            )),
            net.now,
        );
    }
    net.advance_to(T0 + 40_000);
    let mut got: Vec<u8> = net.delivered_to(3).iter().map(|d| d.payload[0]).collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<u8>>());
}

#[test]
fn a_plan_reload_changes_the_links_without_a_restart() {
    // No contact 1→2 for an hour.
    let mut net = two_nodes("a contact +3600 +3700 1 2 1000\na contact +3600 +3700 2 1 1000\n");
    net.engines[1].register(1, "ipn:2.1", net.now).unwrap();
    net.engines[0]
        .send(request("ipn:2.1", b"x"), None, net.now)
        .unwrap();
    net.advance_to(T0 + 5_000);
    assert!(net.delivered_to(1).is_empty());

    // Reload: a contact now.
    let now = net.now;
    let new = ContactPlan::parse_ion(
        "a contact +0 +100 1 2 1000\na contact +0 +100 2 1 1000\n",
        "plan.rc",
        &PlanOptions::new(now),
    )
    .unwrap();
    net.engines[0].replace_router(Some(Router::new(1, new)), now);
    net.run();
    assert_eq!(net.delivered_to(1).len(), 1);

    // A plan that no longer names b: b is back to always-up (static use), announced as such.
    let empty = ContactPlan::parse_ion("a contact +0 +100 1 9 1000\n", "p", &PlanOptions::new(now))
        .unwrap();
    net.engines[0].replace_router(Some(Router::new(1, empty)), now);
    net.run();
    assert_eq!(net.link_changes.last(), Some(&(0, 0, None, now)));
    assert_eq!(net.engines[0].planned_link_state(NeighbourId(0)), None);
    assert_eq!(
        net.metric_with(0, "dtn_neighbour_up", ("neighbour", "b")),
        1.0
    );
    // And no plan at all: the same.
    net.engines[0].replace_router(None, now);
    net.run();
    assert_eq!(net.engines[0].planned_link_state(NeighbourId(0)), None);
}

#[test]
fn a_light_time_change_within_a_contact_is_announced_when_it_happens() {
    let mut net = two_nodes(
        "a contact +0 +100 1 2 1000\na contact +0 +100 2 1 1000\n\
         a range +0 +30 1 2 1\na range +30 +100 1 2 4\n",
    );
    net.run();
    net.advance_to(T0 + 29_999);
    assert_eq!(
        net.engines[0]
            .planned_link_state(NeighbourId(0))
            .unwrap()
            .owlt_ms,
        Some(1000)
    );
    net.advance_to(T0 + 30_000);
    let now = net.engines[0].planned_link_state(NeighbourId(0)).unwrap();
    assert_eq!((now.up, now.owlt_ms), (true, Some(4000)));
    assert!(net
        .link_changes
        .iter()
        .any(|c| c.0 == 0 && c.3 == T0 + 30_000 && c.2.is_some_and(|l| l.owlt_ms == Some(4000))));
}

#[test]
fn a_paced_neighbour_gets_bundles_at_the_contact_rate() {
    // 10,000 bytes/s from +10 s: bundles of about 1 KiB go about 100 ms apart.
    let text = "a contact +10 +100 1 2 10000\na contact +10 +100 2 1 10000\n";
    let mut net = two_nodes_with(text, |a| {
        a.neighbours[0].pace_at_contact_rate = true;
        a.neighbours[0].max_in_flight = 1000;
    });
    net.engines[1].register(1, "ipn:2.1", net.now).unwrap();
    for i in 0..10u8 {
        net.engines[0]
            .send(request("ipn:2.1", &[i; 950]), None, net.now)
            .unwrap();
    }
    net.advance_to(T0 + 10_000);
    let first = net.delivered_to(1).len();
    assert!((1..=2).contains(&first), "{first} at the contact's start");
    net.advance_to(T0 + 10_450);
    let mid = net.delivered_to(1).len();
    assert!((4..=6).contains(&mid), "{mid} after 450 ms at 10 kB/s");
    net.advance_to(T0 + 11_100);
    assert_eq!(net.delivered_to(1).len(), 10);
    assert_eq!(net.sent.len(), 10, "each bundle handed over once");
}
