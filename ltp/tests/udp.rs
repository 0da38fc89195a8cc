//! Two UDP drivers on 127.0.0.1 transfer blocks through the real engine: mixed red/green
//! blocks, and red blocks through a 5 % loss impairment (RFC 5326 §6 retransmission).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ltp::driver::{DriverConfig, LtpDriver, LtpHandle, SimpleImpairment};
use ltp::{Engine, EngineConfig, Event, SpanConfig};
use tokio::sync::mpsc;

const A: u64 = 10;
const B: u64 = 20;

fn span() -> SpanConfig {
    SpanConfig {
        max_segment_size: 1400,
        max_export_sessions: 8,
        timer_margin: Duration::from_millis(50),
        max_checkpoint_retransmissions: 50,
        max_report_retransmissions: 50,
        ..SpanConfig::default()
    }
}

fn engine(local: u64, peer: u64, seed: u64) -> Engine {
    let mut e = Engine::new(
        local,
        EngineConfig {
            seed,
            ..EngineConfig::default()
        },
    );
    e.add_span(peer, span());
    e
}

fn block(len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect::<Vec<u8>>()
        .into()
}

async fn pair(
    loss: f64,
) -> (
    (LtpHandle, mpsc::Receiver<Event>),
    (LtpHandle, mpsc::Receiver<Event>),
) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // B first so A can be told its address; B learns A's address afterwards.
    let b = LtpDriver::spawn(DriverConfig::new(any), engine(B, A, 2)).unwrap();
    let mut ca = DriverConfig::new(any);
    ca.spans = vec![(B, b.0.local_addr())];
    if loss > 0.0 {
        ca.impairment = Some(Box::new(SimpleImpairment::new(loss, Duration::ZERO, 7)));
    }
    let a = LtpDriver::spawn(ca, engine(A, B, 1)).unwrap();
    b.0.set_span_address(A, a.0.local_addr()).await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_red_green_blocks_arrive() {
    let ((ha, mut ea), (hb, mut eb)) = pair(0.0).await;
    let blocks = [
        (block(1 << 20, 1), 1 << 20), // all red, 1 MiB
        (block(1 << 20, 2), 600_000), // mixed
        (block(200_000, 3), 0),       // all green
        (block(1000, 4), 1000),
    ];
    let mut sessions = Vec::new();
    for (b, red) in &blocks {
        sessions.push(ha.send_block(B, 1, b.clone(), *red).await.unwrap());
    }
    let mut red_received = Vec::new();
    let mut green_octets = 0u64;
    let mut green_eob = 0;
    let mut completed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let expected_red = blocks.iter().filter(|(_, r)| *r > 0).count();
    let expected_green: u64 = blocks.iter().map(|(b, r)| (b.len() - r) as u64).sum();
    while red_received.len() < expected_red
        || completed < blocks.len()
        || green_eob < blocks.iter().filter(|(b, r)| *r < b.len()).count()
    {
        tokio::select! {
            e = eb.recv() => match e.expect("events") {
                Event::BlockReceived { session, red, client_service_id } => {
                    assert_eq!(client_service_id, 1);
                    red_received.push((session, red));
                }
                Event::GreenSegment { data, end_of_block, .. } => {
                    green_octets += data.len() as u64;
                    if end_of_block { green_eob += 1; }
                }
                other => panic!("receiver: unexpected {other:?}"),
            },
            e = ea.recv() => match e.expect("events") {
                Event::TransmissionCompleted { session } => {
                    assert!(sessions.contains(&session));
                    completed += 1;
                }
                other => panic!("sender: unexpected {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!(
                "timeout: red {} completed {} green {} eob {}",
                red_received.len(), completed, green_octets, green_eob),
        }
    }
    // Green data over loopback without loss should all arrive.
    assert_eq!(green_octets, expected_green);
    for (session, red) in red_received {
        let i = sessions.iter().position(|s| *s == session).unwrap();
        let (b, r) = &blocks[i];
        assert_eq!(red, b.slice(..*r));
    }
    let sa = ha.stats().await.unwrap();
    assert!(sa.datagrams_sent > 1500, "{sa:?}");
    assert_eq!(sa.no_route, 0);
    ha.shutdown().await;
    hb.shutdown().await;
    assert!(matches!(
        ha.send_block(B, 1, block(10, 0), 10).await,
        Err(ltp::driver::DriverError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_blocks_survive_5_percent_loss() {
    let ((ha, mut ea), (hb, mut eb)) = pair(0.05).await;
    let n = 8;
    let mut sent = Vec::new();
    for i in 0..n {
        let b = block(256 * 1024, i as u8);
        let s = ha.send_block(B, 1, b.clone(), b.len()).await.unwrap();
        sent.push((s, b));
    }
    let mut got = 0;
    let mut completed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got < n || completed < n {
        tokio::select! {
            e = eb.recv() => if let Event::BlockReceived { session, red, .. } = e.expect("events") {
                let (_, b) = sent.iter().find(|(s, _)| *s == session).expect("known session");
                assert_eq!(&red, b);
                got += 1;
            } else { panic!("receiver: unexpected event") },
            e = ea.recv() => match e.expect("events") {
                Event::TransmissionCompleted { .. } => completed += 1,
                other => panic!("sender: unexpected {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!("timeout: {got} received, {completed} completed"),
        }
    }
    let sa = ha.stats().await.unwrap();
    assert!(sa.engine.data_segments_retransmitted > 0, "{sa:?}");
    ha.shutdown().await;
    hb.shutdown().await;
}
