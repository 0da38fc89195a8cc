//! The UDP convergence layer over loopback: byte-identical exchange, size limits on both
//! sides, plausibility check, emulated delay and loss, back-pressure, one outcome per send.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{vector, Node};
use convergence::adapter::{ConvergenceLayer, Outcome, PeerAddr, SendError};
use convergence::emulation::{LinkGate, LinkProfile};
use convergence::udp::{UdpAdapter, UdpConfig};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A bundle-shaped datagram of `len` bytes (starts with 0x9f; the adapter checks no more).
fn fake_bundle(len: usize, tag: u8) -> Bytes {
    let mut v = vec![tag; len];
    v[0] = 0x9f;
    Bytes::from(v)
}

/// A UDP adapter on loopback with room for `received_capacity` received bundles; the node
/// keeps a copy of the adapter's channels (dropped by the tests that wait for them to close).
async fn node(config: UdpConfig, received_capacity: usize) -> Node<UdpAdapter> {
    let (channels, received, outcomes) = common::channels(received_capacity, 4096);
    let cla = UdpAdapter::bind(config, channels.clone()).await.unwrap();
    Node {
        cla,
        received,
        outcomes,
        channels: Some(channels),
    }
}

#[tokio::test]
async fn exchange_real_bundles_both_directions() {
    let mut a = node(UdpConfig::default(), 16).await;
    let mut b = node(UdpConfig::default(), 16).await;
    let simple = vector("ipn_simple_bp7");
    let other = vector("dtn_eids_bp7");

    a.cla.send(&b.addr(), 1, simple.clone()).unwrap();
    let got = b.next_received(WAIT).await;
    assert_eq!(got.bundle, simple);
    assert_eq!(got.cla, "udp");
    assert_eq!(got.from, a.addr());
    assert_eq!(got.peer_node_id, None);
    let o = a.next_outcome(WAIT).await;
    assert_eq!((o.id, o.outcome), (1, Outcome::Transferred));
    assert_eq!(o.peer, b.addr());

    b.cla.send(&a.addr(), 2, other.clone()).unwrap();
    assert_eq!(a.next_received(WAIT).await.bundle, other);
    assert_eq!(b.next_outcome(WAIT).await.outcome, Outcome::Transferred);

    let ca = a.cla.counters();
    assert_eq!((ca.bundles_out, ca.bytes_out), (1, simple.len() as u64));
    assert_eq!((ca.bundles_in, ca.bytes_in), (1, other.len() as u64));
    assert_eq!(ca.bad_input, 0);
}

#[tokio::test]
async fn oversize_refused_on_both_sides() {
    let small = UdpConfig {
        max_bundle_size: 100,
        ..UdpConfig::default()
    };
    let a = node(small.clone(), 16).await;
    let mut b = node(small, 16).await;
    let big = node(UdpConfig::default(), 16).await;

    // Sender side: refused before sending, no outcome.
    match a.cla.send(&b.addr(), 1, fake_bundle(101, 1)) {
        Err(SendError::TooLarge { size, limit }) => assert_eq!((size, limit), (101, 100)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    a.cla.send(&b.addr(), 2, fake_bundle(100, 2)).unwrap();
    assert_eq!(b.next_received(WAIT).await.bundle.len(), 100);

    // Receiver side: a 101-byte datagram from a sender with a larger limit is dropped and
    // counted; the 100-byte one sent after it arrives (loopback keeps order).
    big.cla.send(&b.addr(), 3, fake_bundle(101, 3)).unwrap();
    big.cla.send(&b.addr(), 4, fake_bundle(100, 4)).unwrap();
    let got = b.next_received(WAIT).await;
    assert_eq!(got.bundle, fake_bundle(100, 4));
    assert_eq!(b.cla.counters().bad_input, 1);
    assert_eq!(b.cla.counters().bundles_in, 2);
}

#[tokio::test]
async fn non_bundle_datagrams_are_counted_and_dropped() {
    let mut b = node(UdpConfig::default(), 16).await;
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = b.cla.local_addr();
    raw.send_to(b"\x82\x01\x02", to).await.unwrap(); // definite array: not a bundle
    raw.send_to(b"", to).await.unwrap(); // empty
    raw.send_to(&vector("ipn_simple_bp7"), to).await.unwrap();
    let got = b.next_received(WAIT).await;
    assert_eq!(got.bundle, vector("ipn_simple_bp7"));
    assert_eq!(b.cla.counters().bad_input, 2);
}

#[tokio::test]
async fn unknown_peer_and_shutdown() {
    let mut a = node(UdpConfig::default(), 16).await;
    assert!(matches!(
        a.cla.send(&PeerAddr::LtpEngine(5), 1, fake_bundle(10, 0)),
        Err(SendError::UnknownPeer(PeerAddr::LtpEngine(5)))
    ));
    a.cla.shutdown();
    assert!(matches!(
        a.cla.send(&a.addr(), 2, fake_bundle(10, 0)),
        Err(SendError::Shutdown)
    ));
    // No outcome for refused sends: the channel closes empty once the adapter's tasks end.
    drop(a.channels.take());
    let next = timeout(WAIT, a.outcomes.recv())
        .await
        .expect("channel closes");
    assert!(next.is_none());
}

#[tokio::test]
async fn exactly_one_outcome_per_send() {
    let mut a = node(UdpConfig::default(), 16).await;
    let mut b = node(UdpConfig::default(), 4096).await;
    let n = 500u64;
    for id in 0..n {
        a.cla
            .send(&b.addr(), id, fake_bundle(200, id as u8))
            .unwrap();
    }
    let mut ids = HashSet::new();
    for _ in 0..n {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred);
        assert!(ids.insert(o.id), "duplicate outcome for {}", o.id);
    }
    // Shut down and close our copy of the channels: the outcome channel must end with no
    // further report.
    a.cla.shutdown();
    drop(a.channels.take());
    let rest = timeout(WAIT, a.outcomes.recv())
        .await
        .expect("channel closes");
    assert!(rest.is_none(), "extra outcome {rest:?}");
    assert_eq!(ids.len() as u64, n);
    // All arrived (loopback, no emulation).
    for _ in 0..n {
        b.next_received(WAIT).await;
    }
}

#[tokio::test]
async fn back_pressure_holds_bundles_until_consumed() {
    let a = node(UdpConfig::default(), 16).await;
    // A received channel of one slot: the adapter stops reading the socket while it is full,
    // and the kernel buffer holds the rest.
    let mut b = node(UdpConfig::default(), 1).await;
    let n = 50u8;
    for i in 0..n {
        a.cla
            .send(&b.addr(), i as u64, fake_bundle(300, i))
            .unwrap();
    }
    for i in 0..n {
        assert_eq!(b.next_received(WAIT).await.bundle, fake_bundle(300, i));
    }
}

#[tokio::test]
async fn emulated_delay_and_loss() {
    let mut b = node(UdpConfig::default(), 4096).await;
    let delay = Duration::from_millis(30);
    let loss = 0.2;
    let profile = LinkProfile::builder()
        .delay(delay)
        .loss(loss)
        .build()
        .unwrap();
    let config = UdpConfig {
        emulation: vec![(b.cla.local_addr(), profile)],
        emulation_seed: 99,
        send_queue: 4096,
        ..UdpConfig::default()
    };
    let mut a = node(config, 16).await;
    let n = 2000u64;
    let start = Instant::now();
    for id in 0..n {
        a.cla
            .send(&b.addr(), id, fake_bundle(100, id as u8))
            .unwrap();
    }
    // Every send is reported Transferred: loss on the (emulated) network is invisible to UDP.
    for _ in 0..n {
        assert_eq!(a.next_outcome(WAIT).await.outcome, Outcome::Transferred);
    }
    let stats = a.cla.emulation_stats(&b.cla.local_addr()).unwrap();
    assert_eq!(stats.submitted, n);
    let expected = n - stats.dropped_loss;
    let first = b.next_received(WAIT).await;
    assert!(
        start.elapsed() >= delay,
        "delivered before the emulated delay"
    );
    drop(first);
    for _ in 1..expected {
        b.next_received(WAIT).await;
    }
    // Delivered fraction: 0.8 ± 0.04 (σ ≈ 0.009 for 2000 datagrams).
    let fraction = expected as f64 / n as f64;
    assert!(
        (fraction - (1.0 - loss)).abs() < 0.04,
        "fraction {fraction}"
    );
    assert_eq!(b.cla.counters().bundles_in, expected);
}

#[tokio::test]
async fn gated_peer_receives_nothing_until_the_gate_opens() {
    let mut b = node(UdpConfig::default(), 64).await;
    let mut c = node(UdpConfig::default(), 64).await;
    let gate = LinkGate::new(false);
    let config = UdpConfig {
        gates: vec![(b.cla.local_addr(), gate.clone())],
        ..UdpConfig::default()
    };
    let mut a = node(config, 16).await;
    for id in 0..10u64 {
        a.cla
            .send(&b.addr(), id, fake_bundle(100, id as u8))
            .unwrap();
    }
    // UDP cannot tell: every send is Transferred, but the gate dropped all of them.
    for _ in 0..10 {
        assert_eq!(a.next_outcome(WAIT).await.outcome, Outcome::Transferred);
    }
    let stats = a.cla.emulation_stats(&b.cla.local_addr()).unwrap();
    assert_eq!((stats.submitted, stats.dropped_down), (10, 10));
    // Another peer is not gated.
    a.cla.send(&c.addr(), 50, fake_bundle(100, 50)).unwrap();
    assert_eq!(c.next_received(WAIT).await.bundle, fake_bundle(100, 50));
    assert!(a.cla.emulation_stats(&c.cla.local_addr()).is_none());
    // The contact starts: the next bundle arrives, and only it.
    gate.set(true);
    a.cla.send(&b.addr(), 99, fake_bundle(100, 99)).unwrap();
    assert_eq!(b.next_received(WAIT).await.bundle, fake_bundle(100, 99));
    assert!(b.received.try_recv().is_err());
    // A gate attached at run time closes the other peer's link.
    let gate_c = LinkGate::new(false);
    a.cla.set_gate(c.cla.local_addr(), gate_c);
    a.cla.send(&c.addr(), 51, fake_bundle(100, 51)).unwrap();
    for _ in 0..3 {
        a.next_outcome(WAIT).await;
    }
    let stats = a.cla.emulation_stats(&c.cla.local_addr()).unwrap();
    assert_eq!((stats.submitted, stats.dropped_down), (1, 1));
}

#[tokio::test]
async fn socket_error_reports_failed_unreachable() {
    let mut a = node(UdpConfig::default(), 16).await;
    // An IPv6 destination from an IPv4 socket: the send fails with a socket error.
    let v6: std::net::SocketAddr = "[::1]:9".parse().unwrap();
    a.cla
        .send(&PeerAddr::Socket(v6), 5, fake_bundle(10, 0))
        .unwrap();
    let o = a.next_outcome(WAIT).await;
    assert_eq!(o.id, 5);
    assert!(
        matches!(
            o.outcome,
            Outcome::Failed(convergence::adapter::FailureReason::Unreachable(_))
        ),
        "{o:?}"
    );
    assert_eq!(a.cla.counters().failures.get("unreachable"), Some(&1));
    assert_eq!(a.cla.counters().bundles_out, 0);
}
