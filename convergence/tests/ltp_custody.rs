//! Custody over LTP: with `EngineConfig::confirm_red_parts` on the receiving engine, the
//! sender's bundles are reported transferred only after the receiving node has answered for
//! every bundle of the block, and a refusal cancels the block so the sender keeps it.

mod common;

use std::time::Duration;

use common::{fake_bundle, ltp_node, ltp_node_with, LtpSpan, Node};
use convergence::adapter::{ConvergenceLayer, FailureReason, Outcome, PeerAddr, Refusal};
use convergence::ltp_adapter::{LtpAdapter, SpanPolicy};
use ltp::driver::SimpleImpairment;
use ltp::{EngineConfig, SpanConfig};

const A: u64 = 30;
const B: u64 = 40;
const WAIT: Duration = Duration::from_secs(30);

fn span_to(peer: u64, addr: Option<std::net::SocketAddr>) -> LtpSpan {
    LtpSpan {
        peer,
        addr,
        config: SpanConfig {
            timer_margin: Duration::from_millis(50),
            // The test keeps the node's answer back for 0.6 s: more than 10 checkpoint
            // timers of 52 ms (the sender would give up, RLEXC, before it).
            max_checkpoint_retransmissions: 100,
            ..SpanConfig::default()
        },
        policy: SpanPolicy {
            aggregation_size: 1 << 20,
            aggregation_time: Duration::from_millis(20),
            ..SpanPolicy::new(peer)
        },
    }
}

/// A sends to B; B's engine holds red parts until its node answers.
async fn pair() -> (Node<LtpAdapter>, Node<LtpAdapter>) {
    let b = ltp_node_with(
        B,
        EngineConfig {
            seed: B,
            confirm_red_parts: true,
            ..EngineConfig::default()
        },
        vec![span_to(A, None)],
        None::<SimpleImpairment>,
    );
    let a = ltp_node(
        A,
        vec![span_to(B, Some(b.ltp_addr()))],
        None::<SimpleImpairment>,
    );
    b.learn_span_address(A, &a).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transferred_only_after_the_receiving_node_accepts() {
    let (mut a, mut b) = pair().await;
    for i in 0..3u64 {
        a.cla
            .send(&PeerAddr::LtpEngine(B), i, fake_bundle(500, i as u8))
            .unwrap();
    }
    let mut acks = Vec::new();
    for i in 0..3u8 {
        let r = b.next_received(WAIT).await;
        assert_eq!(r.bundle, fake_bundle(500, i));
        acks.push(r.custody.expect("red bundles carry a custody handle"));
    }
    // Unanswered (several of the sender's checkpoint timers long): no outcome yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), a.outcomes.recv())
            .await
            .is_err(),
        "sender completed before the receiving node answered"
    );
    acks[0].accept();
    acks[1].refuse(Refusal::NotAcceptable); // discarded: retrying would not help
    if let Ok(o) = tokio::time::timeout(Duration::from_millis(200), a.outcomes.recv()).await {
        panic!("sender completed before every bundle was answered: {o:?}");
    }
    acks[2].accept();
    for _ in 0..3 {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred, "{o:?}");
    }
    let st = b.cla.ltp().stats().await.unwrap();
    assert_eq!(st.engine.import_sessions_cancelled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_cancels_the_block_and_the_sender_keeps_its_bundles() {
    let (mut a, mut b) = pair().await;
    for i in 0..2u64 {
        a.cla
            .send(&PeerAddr::LtpEngine(B), i, fake_bundle(300, i as u8))
            .unwrap();
    }
    let first = b.next_received(WAIT).await;
    let second = b.next_received(WAIT).await;
    first.custody.unwrap().accept();
    second.custody.unwrap().refuse(Refusal::NoResources);
    for _ in 0..2 {
        let o = a.next_outcome(WAIT).await;
        assert!(
            matches!(o.outcome, Outcome::Failed(FailureReason::Cancelled(_))),
            "{o:?}"
        );
    }
    // Dropping a handle unanswered refuses too (the node could not keep the bundle).
    a.cla
        .send(&PeerAddr::LtpEngine(B), 9, fake_bundle(100, 9))
        .unwrap();
    drop(b.next_received(WAIT).await);
    let o = a.next_outcome(WAIT).await;
    assert!(
        matches!(o.outcome, Outcome::Failed(FailureReason::Cancelled(_))),
        "{o:?}"
    );
    let st = b.cla.ltp().stats().await.unwrap();
    assert_eq!(st.engine.import_sessions_cancelled, 2);
}
