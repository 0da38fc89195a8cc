//! LTP spans changed at run time, over loopback: `LtpAdapter::cancel_span` fails every bundle
//! of a span exactly once (aggregating, in open sessions, in sessions queued in the engine)
//! while its link holds datagrams back for a long time, and the span works again afterwards;
//! per-link emulation in the LTP driver keeps two peers' links apart, and a link gate holds a
//! span's transfers until it opens.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fake_bundle, ltp_node, LtpSpan, Node};
use convergence::adapter::{ConvergenceLayer, FailureReason, Outcome, PeerAddr, SendError};
use convergence::emulation::{LinkGate, LinkProfile, LtpImpairment};
use convergence::ltp_adapter::{LtpAdapter, SpanCancelled, SpanPolicy};
use ltp::{EngineId, SpanConfig};
use tokio::time::timeout;

const A: EngineId = 10;
const B: EngineId = 20;
const C: EngineId = 30;
const WAIT: Duration = Duration::from_secs(30);

fn span(window: usize) -> SpanConfig {
    SpanConfig {
        max_export_sessions: window,
        timer_margin: Duration::from_millis(50),
        max_checkpoint_retransmissions: 200,
        max_report_retransmissions: 200,
        max_cancel_retransmissions: 200,
        ..SpanConfig::default()
    }
}

/// An LTP node `local` with spans to `peers` (engine, address if known, policy), window
/// `window`, and `impairment` on its sent datagrams.
fn node(
    local: EngineId,
    peers: &[(EngineId, Option<SocketAddr>, SpanPolicy)],
    window: usize,
    impairment: Option<LtpImpairment>,
) -> Node<LtpAdapter> {
    let spans = peers
        .iter()
        .map(|(peer, addr, policy)| LtpSpan {
            peer: *peer,
            addr: *addr,
            config: span(window),
            policy: policy.clone(),
        })
        .collect();
    ltp_node(local, spans, impairment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_span_fails_every_bundle_once_and_the_span_works_again() {
    let mut b = node(B, &[(A, None, SpanPolicy::new(A))], 2, None);
    let b_addr = b.ltp_addr();
    // Everything A sends to B takes 20 s: no session can complete during the test.
    let mut imp = LtpImpairment::empty();
    let start = Instant::now();
    imp.add_link(b_addr, "delay=20s".parse().unwrap(), 1, start, None);
    // One bundle per block (a second one would pass the size), blocks leave only when full,
    // and two export sessions at a time: the rest queue in the engine.
    let policy = SpanPolicy {
        aggregation_size: 4000,
        aggregation_time: Duration::from_secs(3600),
        ..SpanPolicy::new(B)
    };
    let mut a = node(A, &[(B, Some(b_addr), policy)], 2, Some(imp.clone()));
    b.learn_span_address(A, &a).await;

    // Bundles 0..=8 go out in 9 blocks (2 sessions open, 7 queued); bundle 9 is aggregating.
    let n = 10u64;
    for id in 0..n {
        a.cla
            .send(&PeerAddr::LtpEngine(B), id, fake_bundle(3000, id as u8))
            .unwrap();
    }
    let done = a.cla.cancel_span(B).await.unwrap();
    assert_eq!(
        done,
        SpanCancelled {
            sessions: 9,
            bundles: n as usize
        }
    );
    // The failures were reported before cancel_span returned: exactly one per bundle.
    let mut failed = HashSet::new();
    for _ in 0..n {
        let o = a.outcomes.try_recv().expect("reported before the return");
        assert_eq!(o.peer, PeerAddr::LtpEngine(B));
        assert!(
            matches!(&o.outcome, Outcome::Failed(FailureReason::Cancelled(m)) if m.contains("cancelled")),
            "{o:?}"
        );
        assert!(failed.insert(o.id), "second outcome for {}", o.id);
    }
    assert_eq!(failed, (0..n).collect::<HashSet<_>>());
    let stats = a.cla.ltp().stats().await.unwrap();
    assert_eq!(stats.engine.export_sessions_cancelled, 9, "{stats:?}");
    assert_eq!(stats.engine.queued_blocks, 0, "{stats:?}");
    assert_eq!(stats.engine.export_sessions_completed, 0, "{stats:?}");
    // Nothing left to cancel.
    assert_eq!(
        a.cla.cancel_span(B).await.unwrap(),
        SpanCancelled::default()
    );
    assert!(matches!(
        a.cla.cancel_span(99).await,
        Err(SendError::UnknownPeer(PeerAddr::LtpEngine(99)))
    ));

    // The contact comes back as a fast link with a wider window (the two cancelled sessions
    // that had sent data still hold their slots until their cancels are acknowledged).
    imp.add_link(b_addr, LinkProfile::default(), 2, Instant::now(), None);
    a.cla.ltp().configure_span(B, span(8)).await.unwrap();
    let later: Vec<Bytes> = (0..3).map(|i| fake_bundle(500, 100 + i)).collect();
    for (i, bundle) in later.iter().enumerate() {
        a.cla
            .send_urgent(&PeerAddr::LtpEngine(B), 100 + i as u64, bundle.clone())
            .unwrap();
    }
    let mut ids = HashSet::new();
    for _ in 0..later.len() {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred, "{o:?}");
        assert!(ids.insert(o.id));
    }
    assert_eq!(ids, (100..103).collect::<HashSet<_>>());
    let mut got = Vec::new();
    for _ in 0..later.len() {
        got.push(b.next_received(WAIT).await.bundle);
    }
    got.sort();
    assert_eq!(got, later);
    // No late outcome for a cancelled bundle (the engine's own cancel events are absorbed).
    assert!(
        timeout(Duration::from_millis(300), a.outcomes.recv())
            .await
            .is_err(),
        "no further outcome"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the held-back datagrams were never needed"
    );
    let link = imp.link_stats(&b_addr).unwrap();
    assert!(link.delivered > 0, "{link:?}");
    a.cla.shutdown();
    b.cla.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_link_emulation_and_gate_in_one_driver() {
    let mut b = node(B, &[(A, None, SpanPolicy::new(A))], 8, None);
    let mut c = node(C, &[(A, None, SpanPolicy::new(A))], 8, None);
    let (b_addr, c_addr) = (b.ltp_addr(), c.ltp_addr());
    // B: a 300 ms link; C: a perfect link behind a gate that starts down.
    let mut imp = LtpImpairment::empty();
    let now = Instant::now();
    imp.add_link(b_addr, "delay=300ms".parse().unwrap(), 1, now, None);
    let gate = LinkGate::new(false);
    imp.add_link(c_addr, LinkProfile::default(), 2, now, Some(gate.clone()));
    let urgent = |e| SpanPolicy {
        aggregation_time: Duration::from_millis(1),
        ..SpanPolicy::new(e)
    };
    let mut a = node(
        A,
        &[(B, Some(b_addr), urgent(B)), (C, Some(c_addr), urgent(C))],
        8,
        Some(imp.clone()),
    );
    for n in [&b, &c] {
        n.learn_span_address(A, &a).await;
    }
    let sent_at = Instant::now();
    a.cla
        .send(&PeerAddr::LtpEngine(B), 1, fake_bundle(1000, 1))
        .unwrap();
    a.cla
        .send(&PeerAddr::LtpEngine(C), 2, fake_bundle(1000, 2))
        .unwrap();
    // B's bundle arrives after the link's delay; C's link is down meanwhile.
    assert_eq!(b.next_received(WAIT).await.bundle, fake_bundle(1000, 1));
    assert!(sent_at.elapsed() >= Duration::from_millis(300));
    let o = a.next_outcome(WAIT).await;
    assert_eq!((o.id, o.outcome), (1, Outcome::Transferred));
    assert!(
        c.received.try_recv().is_err(),
        "nothing passes a closed gate"
    );
    let dropped = imp.link_stats(&c_addr).unwrap().dropped_down;
    assert!(dropped > 0, "C's datagrams were dropped as an outage");
    assert_eq!(imp.link_stats(&b_addr).unwrap().dropped_down, 0);
    // The contact with C starts: checkpoint retransmission (RFC 5326 §6.7) gets it through.
    gate.set(true);
    assert_eq!(c.next_received(WAIT).await.bundle, fake_bundle(1000, 2));
    let o = a.next_outcome(WAIT).await;
    assert_eq!((o.id, o.outcome), (2, Outcome::Transferred));
    let stats: HashMap<SocketAddr, _> = imp
        .links()
        .into_iter()
        .map(|l| (l, imp.link_stats(&l).unwrap()))
        .collect();
    assert!(stats[&c_addr].delivered > 0 && stats[&b_addr].delivered > 0);
    a.cla.shutdown();
    b.cla.shutdown();
    c.cla.shutdown();
}
