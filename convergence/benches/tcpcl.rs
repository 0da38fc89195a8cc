//! TCPCLv4 benchmark (a plain bench binary, `harness = false`): goodput of 1 MiB bundles between
//! two `TcpclAdapter`s on loopback, compared with a plain TCP copy loop measured in the same run,
//! and bundles per second for 1 KiB bundles. Run: `cargo bench -p convergence --bench tcpcl`
//! (`TCPCL_BENCH_MIB` sets the volume, default 256 MiB).

use std::time::{Duration, Instant};

use bytes::Bytes;
use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
use convergence::{AdapterChannels, ConvergenceLayer, PeerAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Machine reference: bytes/s of a plain TCP copy loop on loopback (1 MiB writes).
async fn plain_tcp(total: usize) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rx = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        while n < total {
            let r = s.read(&mut buf).await.unwrap();
            assert!(r > 0);
            n += r;
        }
        s.write_all(b"k").await.unwrap();
    });
    let chunk = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    let mut k = [0u8; 1];
    s.read_exact(&mut k).await.unwrap();
    rx.await.unwrap();
    total as f64 / start.elapsed().as_secs_f64()
}

/// Sends `count` bundles of `size` bytes from one adapter to another; returns the elapsed time
/// until every bundle was received and acknowledged.
async fn tcpcl(count: usize, size: usize) -> Duration {
    let (rtx, mut received) = mpsc::channel(64);
    let (otx, _o) = mpsc::channel(1);
    let mut cfg = TcpclConfig::new("dtn://sink/", Some("127.0.0.1:0".parse().unwrap()));
    cfg.segment_mru = 4 << 20;
    let sink = TcpclAdapter::start(
        cfg,
        AdapterChannels {
            received: rtx,
            outcomes: otx,
        },
    )
    .await
    .unwrap();
    let (rtx, _r) = mpsc::channel(1);
    let (otx, mut outcomes) = mpsc::channel(count.max(1));
    let mut cfg = TcpclConfig::new("dtn://source/", None);
    cfg.max_queue = count;
    let source = TcpclAdapter::start(
        cfg,
        AdapterChannels {
            received: rtx,
            outcomes: otx,
        },
    )
    .await
    .unwrap();
    let peer = PeerAddr::Socket(sink.local_addr().unwrap());
    let bundle = Bytes::from(vec![5u8; size]);
    // Warm up the session.
    source.send(&peer, u64::MAX, bundle.clone()).unwrap();
    received.recv().await.unwrap();
    outcomes.recv().await.unwrap();
    let start = Instant::now();
    for i in 0..count {
        source.send(&peer, i as u64, bundle.clone()).unwrap();
    }
    for _ in 0..count {
        let r = received.recv().await.unwrap();
        assert_eq!(r.bundle.len(), size);
    }
    for _ in 0..count {
        outcomes.recv().await.unwrap();
    }
    let t = start.elapsed();
    source.shutdown();
    sink.shutdown();
    t
}

fn main() {
    let mib: usize = std::env::var("TCPCL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = plain_tcp(mib << 20).await;
        let t = tcpcl(mib, 1 << 20).await;
        let goodput = (mib << 20) as f64 / t.as_secs_f64();
        println!(
            "plain TCP loopback: {:.0} MB/s; TCPCL 1 MiB bundles: {:.0} MB/s goodput ({:.0}% of plain TCP)",
            plain / 1e6,
            goodput / 1e6,
            100.0 * goodput / plain
        );
        let n = 20_000;
        let t = tcpcl(n, 1024).await;
        println!(
            "TCPCL 1 KiB bundles: {:.0} bundles/s ({n} bundles in {:.2} s)",
            n as f64 / t.as_secs_f64(),
            t.as_secs_f64()
        );
    });
}
