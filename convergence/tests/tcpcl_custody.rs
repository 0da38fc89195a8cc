//! TCPCL custody acknowledgement: with `custody_acks`, the final XFER_ACK of a received bundle
//! waits for the node's verdict; a refusal becomes XFER_REFUSE with the matching RFC 9174
//! §5.2.4 reason, and a handle dropped without an answer refuses with "Retransmit".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convergence::adapter::Refusal;
use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
use convergence::{
    AdapterChannels, ConvergenceLayer, FailureReason, Outcome, OutcomeReport, PeerAddr, Received,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

struct Node {
    adapter: Arc<TcpclAdapter>,
    received: mpsc::Receiver<Received>,
    outcomes: mpsc::Receiver<OutcomeReport>,
}

async fn node(name: &str, custody: bool) -> Node {
    let (rtx, received) = mpsc::channel(4);
    let (otx, outcomes) = mpsc::channel(64);
    let mut cfg = TcpclConfig::new(
        format!("dtn://{name}/"),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    cfg.custody_acks = custody;
    cfg.max_pending_custody = 2;
    let adapter = TcpclAdapter::start(
        cfg,
        AdapterChannels {
            received: rtx,
            outcomes: otx,
        },
    )
    .await
    .unwrap();
    Node {
        adapter,
        received,
        outcomes,
    }
}

const WAIT: Duration = Duration::from_secs(30);

async fn recv(n: &mut Node) -> Received {
    timeout(WAIT, n.received.recv())
        .await
        .expect("no bundle")
        .expect("channel open")
}

async fn outcome(n: &mut Node) -> OutcomeReport {
    timeout(WAIT, n.outcomes.recv())
        .await
        .expect("no outcome")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_ack_waits_for_verdict_and_refusals_map_to_reasons() {
    let mut a = node("a", false).await;
    let mut b = node("b", true).await;
    let pb = PeerAddr::Socket(b.adapter.local_addr().unwrap());

    // Accept: the sender's outcome comes only after the verdict.
    a.adapter
        .send(&pb, 1, Bytes::from_static(b"first"))
        .unwrap();
    let r = recv(&mut b).await;
    assert_eq!(&r.bundle[..], b"first");
    let ack = r.custody.clone().expect("custody handle with custody_acks");
    assert!(
        timeout(Duration::from_millis(300), a.outcomes.recv())
            .await
            .is_err(),
        "transfer acknowledged before the node's verdict"
    );
    ack.accept();
    let o = outcome(&mut a).await;
    assert_eq!((o.id, o.outcome), (1, Outcome::Transferred));

    // Refuse for lack of resources: XFER_REFUSE "No Resources".
    a.adapter
        .send(&pb, 2, Bytes::from_static(b"second"))
        .unwrap();
    let r = recv(&mut b).await;
    r.custody.as_ref().unwrap().refuse(Refusal::NoResources);
    let o = outcome(&mut a).await;
    assert_eq!(o.id, 2);
    match o.outcome {
        Outcome::Failed(FailureReason::Refused(why)) => {
            assert!(why.contains("NoResources"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Not acceptable.
    a.adapter
        .send(&pb, 3, Bytes::from_static(b"third"))
        .unwrap();
    let r = recv(&mut b).await;
    r.custody.as_ref().unwrap().refuse(Refusal::NotAcceptable);
    let o = outcome(&mut a).await;
    match o.outcome {
        Outcome::Failed(FailureReason::Refused(why)) => {
            assert!(why.contains("NotAcceptable"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Dropped without an answer: "Retransmit".
    a.adapter
        .send(&pb, 4, Bytes::from_static(b"fourth"))
        .unwrap();
    drop(recv(&mut b).await);
    let o = outcome(&mut a).await;
    match o.outcome {
        Outcome::Failed(FailureReason::Refused(why)) => {
            assert!(why.contains("Retransmit"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The session survives refusals: a later bundle is still accepted on it.
    a.adapter
        .send(&pb, 5, Bytes::from_static(b"fifth"))
        .unwrap();
    let r = recv(&mut b).await;
    r.custody.as_ref().unwrap().accept();
    let o = outcome(&mut a).await;
    assert_eq!((o.id, o.outcome), (5, Outcome::Transferred));
    a.adapter.shutdown();
    b.adapter.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_verdicts_bound_reading_and_answers_release_it() {
    let mut a = node("a", false).await;
    let mut b = node("b", true).await;
    let pb = PeerAddr::Socket(b.adapter.local_addr().unwrap());
    for i in 0..6u64 {
        a.adapter
            .send(&pb, i, Bytes::from(format!("bundle {i}")))
            .unwrap();
    }
    // max_pending_custody = 2: two bundles reach the node, then the session stops reading.
    let first = recv(&mut b).await;
    let second = recv(&mut b).await;
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
        let r = recv(&mut b).await;
        r.custody.as_ref().unwrap().accept();
        held.push(r);
    }
    let mut ids = Vec::new();
    for _ in 0..6 {
        let o = outcome(&mut a).await;
        assert_eq!(o.outcome, Outcome::Transferred);
        ids.push(o.id);
    }
    ids.sort();
    assert_eq!(ids, (0..6).collect::<Vec<_>>());
    a.adapter.shutdown();
    b.adapter.shutdown();
}
