//! Two `TcpclAdapter`s on 127.0.0.1 exchanging bundles both ways, refusal of oversized bundles,
//! exactly one outcome per bundle, and the RFC 9174 answers to a misbehaving peer over a socket.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{pattern, tcpcl_node, Node};
use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
use convergence::{ConvergenceLayer, FailureReason, Outcome, PeerAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A TCPCL node on loopback accepting transfers of up to 12 MiB, once `f` adjusted its
/// configuration.
async fn node(name: &str, f: impl FnOnce(&mut TcpclConfig)) -> Node<TcpclAdapter> {
    tcpcl_node(name, |cfg| {
        cfg.transfer_mru = 12 << 20;
        f(cfg);
    })
    .await
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_both_ways_byte_identical() {
    let mut a = node("a", |_| {}).await;
    let mut b = node("b", |_| {}).await;
    let pa = a.addr();
    let pb = b.addr();
    let sizes = [10usize, 100 * 1024, 10 * 1024 * 1024];
    let mut sent_ab = Vec::new();
    let mut sent_ba = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let x = pattern(len, i as u8);
        let y = pattern(len, 100 + i as u8);
        a.cla.send(&pb, i as u64, x.clone()).unwrap();
        b.cla.send(&pa, 10 + i as u64, y.clone()).unwrap();
        sent_ab.push(x);
        sent_ba.push(y);
    }
    let mut got_b = Vec::new();
    let mut got_a = Vec::new();
    let mut out_a = Vec::new();
    let mut out_b = Vec::new();
    let all = async {
        while got_a.len() < 3 || got_b.len() < 3 || out_a.len() < 3 || out_b.len() < 3 {
            tokio::select! {
                Some(r) = b.received.recv() => got_b.push(r),
                Some(r) = a.received.recv() => got_a.push(r),
                Some(o) = a.outcomes.recv() => out_a.push(o),
                Some(o) = b.outcomes.recv() => out_b.push(o),
            }
        }
    };
    timeout(WAIT, all).await.expect("transfers did not finish");
    for (got, sent) in [(&got_b, &sent_ab), (&got_a, &sent_ba)] {
        for (r, s) in got.iter().zip(sent.iter()) {
            assert_eq!(r.bundle.len(), s.len());
            assert!(r.bundle == *s, "bundle differs");
            assert_eq!(r.cla, "tcpcl");
        }
    }
    assert_eq!(got_b[0].peer_node_id.as_deref(), Some("dtn://a/"));
    let mut ids: Vec<u64> = out_a.iter().map(|o| o.id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    let mut ids: Vec<u64> = out_b.iter().map(|o| o.id).collect();
    ids.sort();
    assert_eq!(ids, vec![10, 11, 12]);
    assert!(out_a
        .iter()
        .chain(&out_b)
        .all(|o| o.outcome == Outcome::Transferred));
    // Exactly one outcome per bundle: nothing more arrives.
    assert!(timeout(Duration::from_millis(200), a.outcomes.recv())
        .await
        .is_err());
    let c = a.cla.counters();
    assert_eq!((c.bundles_out, c.bundles_in), (3, 3));
    assert_eq!(c.bad_input, 0);
    a.cla.shutdown();
    b.cla.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bundles_fail_or_are_refused() {
    let mut a = node("a", |_| {}).await;
    let mut lax = node("lax", |c| c.enforce_peer_transfer_mru = false).await;
    let b = node("b", |c| c.transfer_mru = 1 << 20).await;
    let pb = b.addr();
    // The sender honours the peer's transfer MRU (§4.7) ...
    a.cla.send(&pb, 1, pattern(2 << 20, 1)).unwrap();
    let o = a.next_outcome(WAIT).await;
    assert_eq!(
        o.outcome,
        Outcome::Failed(FailureReason::TooLarge {
            size: 2 << 20,
            limit: 1 << 20
        })
    );
    // ... and a sender that ignores it (as dtn7-rs does) is refused by the receiver.
    lax.cla.send(&pb, 2, pattern(2 << 20, 2)).unwrap();
    lax.cla.send(&pb, 3, pattern(1000, 3)).unwrap();
    let o = lax.next_outcome(WAIT).await;
    assert_eq!(o.id, 2);
    assert!(
        matches!(o.outcome, Outcome::Failed(FailureReason::Refused(_))),
        "{o:?}"
    );
    let o = lax.next_outcome(WAIT).await;
    assert_eq!((o.id, o.outcome), (3, Outcome::Transferred));
    // Locally too large: not accepted at all.
    assert!(a
        .cla
        .send(&pb, 4, Bytes::from(vec![0u8; (64 << 20) + 1]))
        .is_err());
    // Unreachable peer: one Unreachable outcome.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut d = node("d", |c| {
        c.connect_attempts = 2;
        c.backoff_initial = Duration::from_millis(10);
    })
    .await;
    d.cla
        .send(&PeerAddr::Socket(dead), 5, pattern(10, 0))
        .unwrap();
    let o = d.next_outcome(WAIT).await;
    assert!(matches!(
        o.outcome,
        Outcome::Failed(FailureReason::Unreachable(_))
    ));
    drop(b);
}

async fn read_exact_timeout(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("peer did not answer")
        .unwrap();
    buf
}

async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("connection not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "unexpected bytes {:?}", &buf[..n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_peer_over_socket() {
    let b = node("b", |_| {}).await;
    let addr = b.cla.local_addr().unwrap();

    // Wrong magic: closed, nothing sent (§4.3).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    expect_closed(&mut s).await;

    // Version 3: our contact header, then SESS_TERM "Version mismatch" (§4.3).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x64, 0x74, 0x6e, 0x21, 3, 0]).await.unwrap();
    assert_eq!(
        read_exact_timeout(&mut s, 9).await,
        vec![0x64, 0x74, 0x6e, 0x21, 4, 0, 5, 0, 2]
    );
    expect_closed(&mut s).await;

    // Valid setup, then an unknown message type: MSG_REJECT "Message Type Unknown" (§5.1.2).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = vec![0x64, 0x74, 0x6e, 0x21, 4, 0];
    hello.extend_from_slice(
        &hex::decode("0712340000000000030d400000000040000000000769706e3a312e3000000000").unwrap(),
    );
    s.write_all(&hello).await.unwrap();
    let head = read_exact_timeout(&mut s, 6 + 1 + 2 + 8 + 8 + 2).await;
    assert_eq!(&head[..7], &[0x64, 0x74, 0x6e, 0x21, 4, 0, 7]);
    let id_len = u16::from_be_bytes([head[25], head[26]]) as usize;
    let rest = read_exact_timeout(&mut s, id_len + 4).await;
    assert_eq!(&rest[..id_len], b"dtn://b/");
    s.write_all(&[0x0f]).await.unwrap();
    assert_eq!(read_exact_timeout(&mut s, 3).await, vec![6, 1, 0x0f]);

    // Oversized segment length: SESS_TERM "Resource exhaustion", connection closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let _ = read_exact_timeout(&mut s, 6 + 33).await;
    let mut seg = vec![1u8, 3];
    seg.extend_from_slice(&1u64.to_be_bytes());
    seg.extend_from_slice(&0u32.to_be_bytes());
    seg.extend_from_slice(&(1u64 << 40).to_be_bytes());
    s.write_all(&seg).await.unwrap();
    assert_eq!(read_exact_timeout(&mut s, 3).await, vec![5, 0, 5]);
    expect_closed(&mut s).await;

    // The adapter is unharmed and counted the bad input.
    let bad = b.cla.counters().bad_input;
    assert!(bad >= 4, "bad_input = {bad}");
    let mut a = node("a", |_| {}).await;
    a.cla
        .send(&PeerAddr::Socket(addr), 1, pattern(1000, 9))
        .unwrap();
    let o = a.next_outcome(WAIT).await;
    assert_eq!(o.outcome, Outcome::Transferred);
}
