//! Relay throughput figure (run on demand: `cargo test --release -p node --test
//! daemon_relay_bench -- --ignored --nocapture`): 1 KiB bundles from node A through relay B to
//! node C over TCPCL, with B's store in memory and with sled group commit, against a machine
//! reference measured in the same run: the same number of 1 KiB length-prefixed frames relayed
//! A → B → C by plain tokio tasks over loopback TCP (no bundle processing, no storage).

use std::time::{Duration, Instant};

use bytes::Bytes;
use node::api::{AgentCommand, Priority, SendRequest, StatusRequests};
use node::config::{Config, DurabilityMode, Link, NeighbourConfig, RouteConfig};
use node::daemon::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const N: usize = 20_000;
const SIZE: usize = 1024;

fn config(node: u64) -> Config {
    let mut c = Config::for_test(&format!("ipn:{node}.0"));
    c.agent.tcp = None;
    c.metrics = None;
    c.limits.max_in_flight = 256;
    c.limits.delivery_window = 256;
    c
}

fn neighbour(name: &str, node: u64, link: Link) -> NeighbourConfig {
    NeighbourConfig {
        name: name.into(),
        node: format!("ipn:{node}.0"),
        link,
        max_bundle_size: 0,
        accept_primary_without_crc: false,
        emulation: None,
    }
}

async fn relay_run(durability: DurabilityMode, dir: &std::path::Path) -> f64 {
    let c = Node::start(config(3)).await.unwrap();
    let mut bc = config(2);
    bc.store.durability = durability;
    bc.store.path = dir.join(format!("relay-{durability:?}"));
    bc.neighbours
        .push(neighbour("c", 3, Link::Tcpcl(c.addresses().tcpcl.unwrap())));
    let b = Node::start(bc).await.unwrap();
    let mut ac = config(1);
    ac.neighbours
        .push(neighbour("b", 2, Link::Tcpcl(b.addresses().tcpcl.unwrap())));
    ac.routes.push(RouteConfig {
        dest: "ipn:3.*".into(),
        via: "b".into(),
    });
    let a = Node::start(ac).await.unwrap();
    let (tx, mut rx) = mpsc::channel(512);
    let reg = c
        .handle()
        .request(|reply| AgentCommand::Register {
            endpoint: "ipn:3.1".into(),
            deliveries: tx,
            reply,
        })
        .await
        .unwrap()
        .unwrap();
    let payload = Bytes::from(vec![0x5a; SIZE]);
    let start = Instant::now();
    let ah = a.handle();
    let sender = tokio::spawn(async move {
        let mut replies = Vec::with_capacity(N);
        for _ in 0..N {
            let (reply, rx) = tokio::sync::oneshot::channel();
            ah.command(AgentCommand::Send {
                request: SendRequest {
                    source: None,
                    destination: "ipn:3.1".into(),
                    payload: payload.clone(),
                    lifetime_ms: 3_600_000,
                    priority: Priority::Normal,
                    report_to: None,
                    requests: StatusRequests::default(),
                    no_fragment: false,
                },
                reply,
            })
            .await
            .unwrap();
            replies.push(rx);
        }
        for r in replies {
            r.await.unwrap().unwrap();
        }
    });
    let ch = c.handle();
    for i in 0..N {
        let d = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {i} bundles"))
            .unwrap();
        // The answer (the delivered-id record is on disk) is not awaited: the acks of a
        // fast application overlap.
        let (reply, _answer) = tokio::sync::oneshot::channel();
        ch.command(AgentCommand::Ack {
            registration: reg,
            token: d.token,
            reply,
        })
        .await
        .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    sender.await.unwrap();
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
    N as f64 / secs
}

/// The machine reference: N length-prefixed 1 KiB frames A → B → C through a plain TCP relay.
async fn reference() -> f64 {
    let lc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ac, ab) = (lc.local_addr().unwrap(), lb.local_addr().unwrap());
    let sink = tokio::spawn(async move {
        let (s, _) = lc.accept().await.unwrap();
        let mut r = BufReader::new(s);
        let mut buf = vec![0u8; SIZE];
        for _ in 0..N {
            let len = r.read_u32().await.unwrap() as usize;
            r.read_exact(&mut buf[..len]).await.unwrap();
        }
    });
    let relay = tokio::spawn(async move {
        let (s, _) = lb.accept().await.unwrap();
        let mut r = BufReader::new(s);
        let mut w = BufWriter::new(TcpStream::connect(ac).await.unwrap());
        let mut buf = vec![0u8; SIZE];
        for _ in 0..N {
            let len = r.read_u32().await.unwrap() as usize;
            r.read_exact(&mut buf[..len]).await.unwrap();
            w.write_u32(len as u32).await.unwrap();
            w.write_all(&buf[..len]).await.unwrap();
        }
        w.flush().await.unwrap();
    });
    let start = Instant::now();
    let mut w = BufWriter::new(TcpStream::connect(ab).await.unwrap());
    let frame = vec![0x5au8; SIZE];
    for _ in 0..N {
        w.write_u32(SIZE as u32).await.unwrap();
        w.write_all(&frame).await.unwrap();
    }
    w.flush().await.unwrap();
    relay.await.unwrap();
    sink.await.unwrap();
    N as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
async fn relay_bundles_per_second() {
    let dir = std::env::temp_dir().join(format!("dtnd-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reference = reference().await;
    let memory = relay_run(DurabilityMode::Memory, &dir).await;
    let group = relay_run(DurabilityMode::Group, &dir).await;
    println!(
        "machine reference (plain TCP relay of {N} x {SIZE} B frames): {reference:.0} frames/s"
    );
    println!("dtnd relay, memory store:        {memory:.0} bundles/s");
    println!("dtnd relay, sled group commit:   {group:.0} bundles/s");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(memory > 0.0 && group > 0.0);
}
