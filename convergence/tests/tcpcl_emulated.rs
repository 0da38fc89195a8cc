//! TCPCL link emulation on loopback ([`TcpclConfig::emulation`]): sessions a node opens to an
//! emulated address run over an `EmulatedStream`, so the profile's delay applies to the data and
//! to the XFER_ACK coming back, and its rate to the byte stream; bundles arrive byte-identical;
//! sessions to other addresses are not emulated; a SESS_TERM reply still held back by the delay
//! reaches the peer before the connection closes.
//!
//! Durations are only bounded from below (the machine running the tests may be slow); every wait
//! is bounded by [`WAIT`] and every loop by a count.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{pattern, tcpcl_node, Node};
use convergence::emulation::LinkProfile;
use convergence::tcpcl::message::{ContactHeader, DecodeLimits, Message};
use convergence::tcpcl::TcpclAdapter;
use convergence::{ConvergenceLayer, FailureReason, Outcome, PeerAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(60);
const DELAY: Duration = Duration::from_millis(300);
const MIB: usize = 1 << 20;

/// A TCPCL node on loopback whose sessions to each `(peer, profile)` are emulated.
async fn node(name: &str, emulation: Vec<(PeerAddr, &str)>) -> Node<TcpclAdapter> {
    tcpcl_node(name, |cfg| {
        for (peer, profile) in emulation {
            let PeerAddr::Socket(addr) = peer else {
                panic!("not a socket address")
            };
            cfg.emulation
                .push((addr, profile.parse::<LinkProfile>().unwrap()));
        }
    })
    .await
}

/// Times of one transfer from `send`: until the receiver got the bundle, and until the sender
/// got its outcome (which needs the final XFER_ACK).
struct Timing {
    received: Duration,
    outcome: Duration,
}

/// Sends `bundle` from `from` to `to` and waits (bounded) for its delivery and its outcome;
/// checks that the bundle arrived byte-identical and was reported transferred.
async fn transfer(
    from: &mut Node<TcpclAdapter>,
    to: &mut Node<TcpclAdapter>,
    id: u64,
    bundle: Bytes,
) -> Timing {
    let start = Instant::now();
    from.cla.send(&to.addr(), id, bundle.clone()).unwrap();
    let r = to.next_received(WAIT).await;
    let received = start.elapsed();
    assert_eq!(r.bundle.len(), bundle.len());
    assert!(r.bundle == bundle, "bundle {id} differs");
    let o = from.next_outcome(WAIT).await;
    let outcome = start.elapsed();
    assert_eq!((o.id, o.outcome), (id, Outcome::Transferred));
    Timing { received, outcome }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_applies_to_data_and_acks() {
    let mut b = node("b", vec![]).await;
    let mut a = node("a", vec![(b.addr(), "delay=300ms")]).await;

    // First bundle: session setup (contact headers, SESS_INIT) and the transfer, all delayed.
    let t = transfer(&mut a, &mut b, 1, pattern(10, 1)).await;
    assert!(
        t.outcome >= 2 * DELAY,
        "first outcome after {:?}",
        t.outcome
    );
    // On the established session: the data takes one delay, the XFER_ACK another.
    for (id, len) in [(2u64, MIB), (3, 10)] {
        let t = transfer(&mut a, &mut b, id, pattern(len, id as u8)).await;
        assert!(
            t.received >= DELAY,
            "bundle {id} received after {:?}",
            t.received
        );
        assert!(
            t.outcome >= 2 * DELAY,
            "bundle {id} outcome after {:?}",
            t.outcome
        );
    }
    // Exactly one outcome per bundle, and no bad input on either side.
    assert!(timeout(Duration::from_millis(200), a.outcomes.recv())
        .await
        .is_err());
    assert_eq!(a.cla.counters().bundles_out, 3);
    assert_eq!(b.cla.counters().bundles_in, 3);
    assert_eq!(a.cla.counters().bad_input + b.cla.counters().bad_input, 0);
    a.cla.shutdown();
    b.cla.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_the_byte_stream() {
    let mut b = node("b", vec![]).await;
    let mut a = node("a", vec![(b.addr(), "rate=2000000")]).await;
    // Set the session up first, so the measured time is the 1 MiB transfer's.
    transfer(&mut a, &mut b, 1, pattern(10, 1)).await;
    let t = transfer(&mut a, &mut b, 2, pattern(MIB, 2)).await;
    // 1 MiB at 2 MB/s is 0.52 s of serialisation.
    assert!(
        t.received >= Duration::from_millis(450),
        "1 MiB received after {:?}",
        t.received
    );
    assert!(t.outcome >= t.received);
    a.cla.shutdown();
    b.cla.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_are_not_emulated() {
    let mut b = node("b", vec![]).await;
    let mut c = node("c", vec![]).await;
    let mut a = node("a", vec![(b.addr(), "delay=300ms")]).await;

    // Both sessions start together; the one to `c` is plain TCP and finishes while the one to
    // `b` is still setting up through its delays (at least five of them before an outcome).
    let start = Instant::now();
    a.cla.send(&b.addr(), 1, pattern(MIB, 1)).unwrap();
    a.cla.send(&c.addr(), 2, pattern(MIB, 2)).unwrap();
    let mut order = Vec::new();
    let mut elapsed = Vec::new();
    for _ in 0..2 {
        let o = a.next_outcome(WAIT).await;
        assert_eq!(o.outcome, Outcome::Transferred);
        order.push(o.id);
        elapsed.push(start.elapsed());
    }
    assert_eq!(order, vec![2, 1], "outcomes after {elapsed:?}");
    assert!(
        elapsed[1] >= 2 * DELAY,
        "emulated outcome after {:?}",
        elapsed[1]
    );
    for (n, seed) in [(&mut c, 2u8), (&mut b, 1)] {
        let r = n.next_received(WAIT).await;
        assert!(r.bundle == pattern(MIB, seed));
    }

    // The emulation is on sessions `a` opens: `b` sending to `a` (a passive session at `a`)
    // is plain TCP whatever `a` emulates towards `b`; it works and is fine both ways.
    let t = transfer(&mut b, &mut a, 3, pattern(10, 3)).await;
    assert!(t.outcome >= t.received);
    a.cla.shutdown();
    b.cla.shutdown();
    c.cla.shutdown();
}

/// A passive peer written by hand: it ends the session itself once set up, and the emulated
/// active side must still get its SESS_TERM reply (held back by the delay) through before the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sess_term_reply_survives_the_delay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = PeerAddr::Socket(listener.local_addr().unwrap());
    let mut a = node("a", vec![(peer.clone(), "delay=300ms")]).await;

    // A bundle above the peer's transfer MRU makes `a` open the session and fail the bundle
    // without starting a transfer (§4.7), leaving an idle established session.
    a.cla.send(&peer, 1, pattern(1000, 1)).unwrap();
    let (mut s, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut buf = BytesMut::new();
    let limits = DecodeLimits::default();
    async fn fill(s: &mut TcpStream, buf: &mut BytesMut) -> usize {
        timeout(WAIT, s.read_buf(buf))
            .await
            .expect("peer silent")
            .unwrap()
    }
    // Contact header from the active side, then ours.
    let mut got_header = false;
    for _ in 0..100 {
        if ContactHeader::decode(&mut buf).unwrap().is_some() {
            got_header = true;
            break;
        }
        assert!(
            fill(&mut s, &mut buf).await > 0,
            "closed before contact header"
        );
    }
    assert!(got_header);
    s.write_all(&[0x64, 0x74, 0x6e, 0x21, 4, 0]).await.unwrap();
    // SESS_INIT from the active side, then ours: no keepalive, 16-byte transfer MRU.
    let mut got_init = false;
    for _ in 0..100 {
        if let Some(m) = Message::decode(&mut buf, &limits).unwrap() {
            assert!(matches!(m, Message::SessInit(_)), "{m:?}");
            got_init = true;
            break;
        }
        assert!(fill(&mut s, &mut buf).await > 0, "closed before SESS_INIT");
    }
    assert!(got_init);
    let mut init = vec![7u8, 0, 0];
    init.extend_from_slice(&(1u64 << 20).to_be_bytes());
    init.extend_from_slice(&16u64.to_be_bytes());
    init.extend_from_slice(&(7u16).to_be_bytes());
    init.extend_from_slice(b"ipn:2.0");
    init.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&init).await.unwrap();
    let o = a.next_outcome(WAIT).await;
    assert_eq!(o.id, 1);
    assert!(
        matches!(o.outcome, Outcome::Failed(FailureReason::TooLarge { .. })),
        "{o:?}"
    );

    // We end the session; `a` answers through its delay and closes only after that.
    s.write_all(&[5, 0, 0]).await.unwrap();
    let mut messages = Vec::new();
    for _ in 0..1000 {
        while let Some(m) = Message::decode(&mut buf, &limits).unwrap() {
            messages.push(m);
        }
        if fill(&mut s, &mut buf).await == 0 {
            break;
        }
    }
    assert!(buf.is_empty(), "trailing bytes {buf:?}");
    match messages.as_slice() {
        [Message::SessTerm(t)] => assert!(t.is_reply(), "{t:?}"),
        other => panic!("expected one SESS_TERM reply, got {other:?}"),
    }
    a.cla.shutdown();
}
