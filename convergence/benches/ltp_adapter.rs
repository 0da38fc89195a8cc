//! LTP convergence-layer benchmark (a plain bench binary, `harness = false`): bundles per second
//! for 1 KiB bundles between two `LtpAdapter`s on loopback (red, aggregated into blocks), each
//! bundle's outcome awaited, compared with raw UDP datagrams of the same segment size sent and
//! received on loopback in the same run. Run: `cargo bench -p convergence --bench ltp_adapter`
//! (`LTP_BENCH_BUNDLES` sets the count, default 200,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use convergence::adapter::{AdapterChannels, ConvergenceLayer, OutcomeReport, PeerAddr, Received};
use convergence::ltp_adapter::{LtpAdapter, LtpAdapterConfig, SpanPolicy};
use ltp::driver::DriverConfig;
use ltp::{Engine, EngineConfig, SpanConfig};
use tokio::sync::mpsc;

const A: u64 = 1;
const B: u64 = 2;
const SEGMENT: usize = 1400;
/// Bundles handed to the adapter and not yet reported (the node's window).
const WINDOW: usize = 4096;

/// Machine reference: datagrams/s of `SEGMENT`-byte UDP datagrams on loopback, counted at the
/// receiver (sender and receiver in two tasks, like the LTP engines).
async fn raw_udp(count: usize) -> f64 {
    // The same 8 MiB receive buffer as the LTP driver's default.
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    sock.set_recv_buffer_size(8 << 20).unwrap();
    sock.set_nonblocking(true).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let rx = tokio::net::UdpSocket::from_std(sock.into()).unwrap();
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dest = rx.local_addr().unwrap();
    let start = Instant::now();
    let recv = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut n = 0usize;
        let mut last = Instant::now();
        // Bounded: stops at `count` or after 200 ms of silence (datagrams may be dropped); the
        // rate counts up to the last datagram received.
        while n < count {
            match tokio::time::timeout(Duration::from_millis(200), rx.recv(&mut buf)).await {
                Ok(Ok(_)) => {
                    n += 1;
                    last = Instant::now();
                }
                _ => break,
            }
        }
        (n, last)
    });
    let d = vec![7u8; SEGMENT];
    for i in 0..count {
        tx.send_to(&d, dest).await.unwrap();
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let (n, end) = recv.await.unwrap();
    n as f64 / end.duration_since(start).as_secs_f64()
}

fn side(
    local: u64,
    peer: u64,
) -> (
    Arc<LtpAdapter>,
    mpsc::Receiver<Received>,
    mpsc::Receiver<OutcomeReport>,
) {
    let mut engine = Engine::new(local, EngineConfig::default());
    engine.add_span(
        peer,
        SpanConfig {
            max_segment_size: SEGMENT,
            max_export_sessions: 64,
            timer_margin: Duration::from_millis(100),
            ..SpanConfig::default()
        },
    );
    let driver = DriverConfig::new("127.0.0.1:0".parse().unwrap());
    let (rtx, rx) = mpsc::channel(WINDOW);
    let (otx, outcomes) = mpsc::channel(WINDOW);
    let config = LtpAdapterConfig {
        spans: vec![SpanPolicy {
            aggregation_size: 64 * 1024,
            aggregation_time: Duration::from_millis(5),
            ..SpanPolicy::new(peer)
        }],
        ..LtpAdapterConfig::default()
    };
    let cla = LtpAdapter::spawn(
        engine,
        driver,
        config,
        AdapterChannels {
            received: rtx,
            outcomes: otx,
        },
    )
    .unwrap();
    (cla, rx, outcomes)
}

/// A bundle-shaped CBOR item of `len` payload bytes: `[_ bstr]` (the adapter splits blocks
/// back into CBOR items).
fn bundle(len: usize) -> Bytes {
    let mut v = vec![0x9f, 0x59, (len >> 8) as u8, len as u8];
    v.resize(4 + len, 0x42);
    v.push(0xff);
    Bytes::from(v)
}

async fn ltp_bundles(count: usize) -> (f64, usize) {
    let (b, mut b_rx, _b_out) = side(B, A);
    let (a, _a_rx, mut a_out) = side(A, B);
    a.ltp()
        .set_span_address(B, b.ltp().local_addr())
        .await
        .unwrap();
    b.ltp()
        .set_span_address(A, a.ltp().local_addr())
        .await
        .unwrap();
    let received = tokio::spawn(async move {
        let mut n = 0usize;
        while n < count {
            match tokio::time::timeout(Duration::from_secs(30), b_rx.recv()).await {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        n
    });
    let one = bundle(1024);
    let peer = PeerAddr::LtpEngine(B);
    let start = Instant::now();
    let (mut sent, mut done) = (0usize, 0usize);
    // Bounded: every bundle gets one outcome; a 60 s deadline stops a stalled run.
    let deadline = start + Duration::from_secs(60);
    while done < count && Instant::now() < deadline {
        while sent < count && sent - done < WINDOW {
            if a.send(&peer, sent as u64, one.clone()).is_err() {
                break;
            }
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), a_out.recv()).await {
            Ok(Some(_)) => done += 1,
            _ => break,
        }
        while a_out.try_recv().is_ok() {
            done += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let got = received.await.unwrap();
    a.shutdown();
    b.shutdown();
    (done as f64 / elapsed, got)
}

fn main() {
    let count: usize = std::env::var("LTP_BENCH_BUNDLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let udp = raw_udp(count).await;
        println!("raw UDP, {SEGMENT} B datagrams on loopback: {udp:.0} datagrams/s received");
        let (rate, got) = ltp_bundles(count).await;
        println!(
            "LTP adapter, 1 KiB red bundles, outcomes awaited: {rate:.0} bundles/s, {:.1} MB/s \
             ({got}/{count} received); raw UDP carries {:.1} MB/s",
            rate * 1024.0 / 1e6,
            udp * SEGMENT as f64 / 1e6,
        );
    });
}
