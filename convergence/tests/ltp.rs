//! The LTP convergence layer over loopback: aggregated red blocks through 5 % loss in both
//! directions deliver every bundle byte-identically, with exactly one outcome each.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{fake_bundle, ltp_node, vector, LtpSpan, Node};
use convergence::adapter::{ConvergenceLayer, Outcome, PeerAddr, SendError};
use convergence::ltp_adapter::{LtpAdapter, SpanPolicy};
use ltp::driver::SimpleImpairment;
use ltp::SpanConfig;

type Side = Node<LtpAdapter>;

const A: u64 = 10;
const B: u64 = 20;
const WAIT: Duration = Duration::from_secs(30);

fn span() -> SpanConfig {
    SpanConfig {
        max_segment_size: 1400,
        timer_margin: Duration::from_millis(50),
        max_checkpoint_retransmissions: 50,
        max_report_retransmissions: 50,
        ..SpanConfig::default()
    }
}

/// The LTP node of engine `local` with a span to `peer` (at `peer_addr` if known yet), `loss` on
/// the datagrams it sends.
fn side(
    local: u64,
    peer: u64,
    peer_addr: Option<SocketAddr>,
    loss: f64,
    policy: SpanPolicy,
) -> Side {
    let span = LtpSpan {
        peer,
        addr: peer_addr,
        config: span(),
        policy,
    };
    let loss = SimpleImpairment::new(loss, Duration::ZERO, local + 100);
    ltp_node(local, vec![span], Some(loss))
}

async fn pair(loss: f64, policy_a: SpanPolicy) -> (Side, Side) {
    pair_with(loss, policy_a, SpanPolicy::new(A)).await
}

async fn pair_with(loss: f64, policy_a: SpanPolicy, policy_b: SpanPolicy) -> (Side, Side) {
    let b = side(B, A, None, loss, policy_b);
    let a = side(A, B, Some(b.ltp_addr()), loss, policy_a);
    b.learn_span_address(A, &a).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_bundles_all_delivered_through_loss() {
    let policy = SpanPolicy {
        aggregation_size: 20_000,
        aggregation_time: Duration::from_millis(20),
        ..SpanPolicy::new(B)
    };
    let (mut a, mut b) = pair(0.05, policy).await;
    let mut sent = Vec::new();
    for i in 0..200u64 {
        let bundle = match i % 3 {
            0 => vector("ipn_simple_bp7"),
            1 => fake_bundle(100 + (i as usize * 37) % 3000, i as u8),
            _ => fake_bundle(5000, i as u8),
        };
        a.cla
            .send(&PeerAddr::LtpEngine(B), i, bundle.clone())
            .unwrap();
        sent.push(bundle);
    }
    let mut ids = HashSet::new();
    for _ in 0..sent.len() {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred, "{o:?}");
        assert_eq!(o.peer, PeerAddr::LtpEngine(B));
        assert!(ids.insert(o.id));
    }
    // Blocks may complete out of order, but bundles within a block keep their order, and every
    // bundle arrives exactly once.
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let r = b.next_received(WAIT).await;
        assert_eq!(r.cla, "ltp");
        assert_eq!(r.from, PeerAddr::LtpEngine(A));
        got.push(r.bundle);
    }
    let mut want = sent.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // Aggregation happened: fewer sessions than bundles.
    let stats = a.cla.ltp().stats().await.unwrap();
    assert!(
        stats.engine.export_sessions_completed < sent.len() as u64 / 2,
        "{stats:?}"
    );
    assert!(
        stats.engine.data_segments_retransmitted > 0,
        "loss was exercised"
    );
    assert_eq!(b.cla.counters().bundles_in, sent.len() as u64);
    assert_eq!(a.cla.counters().bundles_out, sent.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_bypasses_aggregation() {
    // A long aggregation time: only the urgent send can make the block leave quickly.
    let policy = SpanPolicy {
        aggregation_time: Duration::from_secs(3600),
        ..SpanPolicy::new(B)
    };
    let (mut a, mut b) = pair(0.0, policy).await;
    let x = vector("ipn_simple_bp7");
    a.cla.send(&PeerAddr::LtpEngine(B), 1, x.clone()).unwrap();
    a.cla
        .send_urgent(&PeerAddr::LtpEngine(B), 2, fake_bundle(10, 2))
        .unwrap();
    let first = b.next_received(WAIT).await;
    let second = b.next_received(WAIT).await;
    assert_eq!((first.bundle, second.bundle), (x, fake_bundle(10, 2)));
    for _ in 0..2 {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred);
    }
    assert!(matches!(
        a.cla.send(&PeerAddr::LtpEngine(99), 3, fake_bundle(1, 0)),
        Err(SendError::UnknownPeer(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_span_delivers_without_loss() {
    let green = SpanPolicy {
        green: true,
        aggregation_size: 8000,
        aggregation_time: Duration::from_millis(10),
        ..SpanPolicy::new(A)
    };
    let (mut a, mut b) = pair_with(0.0, SpanPolicy::new(B), green).await;
    let mut sent = Vec::new();
    for i in 0..20u64 {
        let bundle = fake_bundle(500 + 100 * i as usize, i as u8);
        b.cla
            .send(&PeerAddr::LtpEngine(A), i, bundle.clone())
            .unwrap();
        sent.push(bundle);
    }
    for _ in 0..sent.len() {
        let o = b.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred);
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(a.next_received(WAIT).await.bundle);
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    // Sent green: the sender got no reports, the receiver delivered green data.
    let sender = b.cla.ltp().stats().await.unwrap();
    assert_eq!(sender.engine.reports_received, 0, "{sender:?}");
    let receiver = a.cla.ltp().stats().await.unwrap();
    assert!(receiver.engine.green_bytes_delivered > 0, "{receiver:?}");
    assert_eq!(receiver.engine.red_bytes_delivered, 0, "{receiver:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_bundles_fail_with_shutdown() {
    let policy = SpanPolicy {
        aggregation_time: Duration::from_secs(3600),
        ..SpanPolicy::new(B)
    };
    let (mut a, _b) = pair(0.0, policy).await;
    a.cla
        .send(&PeerAddr::LtpEngine(B), 7, fake_bundle(10, 7))
        .unwrap();
    a.cla.shutdown();
    let o = a.next_outcome(WAIT).await;
    assert_eq!(o.id, 7);
    assert_eq!(
        o.outcome,
        Outcome::Failed(convergence::adapter::FailureReason::Shutdown)
    );
    assert!(matches!(
        a.cla.send(&PeerAddr::LtpEngine(B), 8, fake_bundle(10, 8)),
        Err(SendError::Shutdown)
    ));
}
