//! TCPCL custody acknowledgement: with `custody_acks`, the final XFER_ACK of a received bundle
//! waits for the node's verdict; a refusal becomes XFER_REFUSE with the matching RFC 9174
//! §5.2.4 reason, and a handle dropped without an answer refuses with "Retransmit".

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{tcpcl_node, Node};
use convergence::adapter::Refusal;
use convergence::tcpcl::TcpclAdapter;
use convergence::{ConvergenceLayer, FailureReason, Outcome};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

/// A TCPCL node on loopback; with `custody`, final XFER_ACKs wait for its verdict (at most two
/// pending).
async fn node(name: &str, custody: bool) -> Node<TcpclAdapter> {
    tcpcl_node(name, |cfg| {
        cfg.custody_acks = custody;
        cfg.max_pending_custody = 2;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_ack_waits_for_verdict_and_refusals_map_to_reasons() {
    let mut a = node("a", false).await;
    let mut b = node("b", true).await;
    let pb = b.addr();

    // Accept: the sender's outcome comes only after the verdict.
    a.cla.send(&pb, 1, Bytes::from_static(b"first")).unwrap();
    let r = b.next_received(WAIT).await;
    assert_eq!(&r.bundle[..], b"first");
    let ack = r.custody.clone().expect("custody handle with custody_acks");
    assert!(
        timeout(Duration::from_millis(300), a.outcomes.recv())
            .await
            .is_err(),
        "transfer acknowledged before the node's verdict"
    );
    ack.accept();
    let o = a.next_outcome(WAIT).await;
    assert_eq!((o.id, o.outcome), (1, Outcome::Transferred));

    // Refuse for lack of resources: XFER_REFUSE "No Resources".
    a.cla.send(&pb, 2, Bytes::from_static(b"second")).unwrap();
    let r = b.next_received(WAIT).await;
    r.custody.as_ref().unwrap().refuse(Refusal::NoResources);
    let o = a.next_outcome(WAIT).await;
    assert_eq!(o.id, 2);
    match o.outcome {
        Outcome::Failed(FailureReason::Refused(why)) => {
            assert!(why.contains("NoResources"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Not acceptable.
    a.cla.send(&pb, 3, Bytes::from_static(b"third")).unwrap();
    let r = b.next_received(WAIT).await;
    r.custody.as_ref().unwrap().refuse(Refusal::NotAcceptable);
    let o = a.next_outcome(WAIT).await;
    match o.outcome {
        Outcome::Failed(FailureReason::Refused(why)) => {
            assert!(why.contains("NotAcceptable"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Dropped without an answer: "Retransmit".
    a.cla.send(&pb, 4, Bytes::from_static(b"fourth")).unwrap();
    drop(b.next_received(WAIT).await);
    let o = a.next_outcome(WAIT).await;
    match o.outcome {
        Outcome::Failed(FailureReason::Refused(why)) => {
            assert!(why.contains("Retransmit"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The session survives refusals: a later bundle is still accepted on it.
    a.cla.send(&pb, 5, Bytes::from_static(b"fifth")).unwrap();
    let r = b.next_received(WAIT).await;
    r.custody.as_ref().unwrap().accept();
    let o = a.next_outcome(WAIT).await;
    assert_eq!((o.id, o.outcome), (5, Outcome::Transferred));
    a.cla.shutdown();
    b.cla.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_verdicts_bound_reading_and_answers_release_it() {
    let mut a = node("a", false).await;
    let mut b = node("b", true).await;
    let pb = b.addr();
    for i in 0..6u64 {
        a.cla
            .send(&pb, i, Bytes::from(format!("bundle {i}")))
            .unwrap();
    }
    // max_pending_custody = 2: two bundles reach the node, then the session stops reading.
    let first = b.next_received(WAIT).await;
    let second = b.next_received(WAIT).await;
    assert!(
        timeout(Duration::from_millis(300), b.received.recv())
            .await
            .is_err(),
        "session read past its pending-verdict bound"
    );
    first.custody.as_ref().unwrap().accept();
    second.custody.as_ref().unwrap().accept();
    let mut held = Vec::new();
    for _ in 2..6 {
        let r = b.next_received(WAIT).await;
        r.custody.as_ref().unwrap().accept();
        held.push(r);
    }
    let mut ids = Vec::new();
    for _ in 0..6 {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred);
        ids.push(o.id);
    }
    ids.sort();
    assert_eq!(ids, (0..6).collect::<Vec<_>>());
    a.cla.shutdown();
    b.cla.shutdown();
}
