//! The daemon behind its real agent servers: `AgentClient` over TCP and the Unix socket
//! against in-process nodes, and against the `dtnd` binary across a SIGTERM restart (pending
//! bundles survive in the sled store and are delivered once, after the restart).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use node::agent::client::AgentClient;
use node::api::{Priority, SendRequest, StatusRequests};
use node::config::{Config, Link, NeighbourConfig};
use node::daemon::Node;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(60);

fn request(dest: &str, payload: Bytes) -> SendRequest {
    SendRequest {
        source: None,
        destination: dest.into(),
        payload,
        lifetime_ms: 3_600_000,
        priority: Priority::Normal,
        report_to: None,
        requests: StatusRequests::default(),
        no_fragment: false,
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("dtnd-ag-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_clients_over_tcp_and_unix_between_two_nodes() {
    let dir = temp_dir("pair");
    let sock = dir.join("b.sock");
    let mut bc = Config::for_test("ipn:2.0");
    bc.metrics = None;
    bc.agent.unix = Some(sock.clone());
    let b = Node::start(bc).await.unwrap();
    let mut ac = Config::for_test("ipn:1.0");
    ac.metrics = None;
    ac.neighbours.push(NeighbourConfig {
        name: "b".into(),
        node: "ipn:2.0".into(),
        link: Link::Tcpcl(b.addresses().tcpcl.unwrap()),
        max_bundle_size: 0,
        accept_primary_without_crc: false,
        emulation: None,
    });
    let a = Node::start(ac).await.unwrap();

    let mut receiver = AgentClient::connect(sock.to_str().unwrap()).await.unwrap();
    let reg = receiver.register("ipn:2.17").await.unwrap();
    let mut sender = AgentClient::connect(&a.addresses().agent.unwrap().to_string())
        .await
        .unwrap();
    let info = sender.info().await.unwrap();
    assert_eq!(info.node_id, "ipn:1.0");
    let payloads: Vec<Bytes> = (0..5u8)
        .map(|i| Bytes::from(vec![i; 100 + i as usize]))
        .collect();
    for p in &payloads {
        sender.send(request("ipn:2.17", p.clone())).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..payloads.len() {
        let d = timeout(WAIT, receiver.next_delivery())
            .await
            .expect("delivery in time")
            .unwrap();
        receiver.ack(reg, d.token).await.unwrap();
        got.push(d.payload);
    }
    got.sort();
    let mut want = payloads.clone();
    want.sort();
    assert_eq!(got, want);
    let stats = sender.stats().await.unwrap();
    assert!(stats.total("dtn_cla_bundles_sent_total").unwrap_or(0.0) >= 5.0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn ready(child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).expect("ready line in time");
    serde_json::from_str(line.strip_prefix("dtnd ready ").expect("ready line").trim()).unwrap()
}

fn terminate(child: Child) -> Option<i32> {
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait().map(|s| s.code()));
    });
    rx.recv_timeout(WAIT).expect("exit after SIGTERM").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_pending_bundles_for_the_next_run() {
    let dir = temp_dir("term");
    let file = dir.join("dtnd.toml");
    std::fs::write(
        &file,
        format!(
            "node_id = \"ipn:4.0\"\n[store]\npath = \"{}\"\n[agent]\ntcp = \"127.0.0.1:0\"\n\
             [metrics]\nhttp = \"off\"\n[tcpcl]\nlisten = \"off\"\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_dtnd"))
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = start();
    let agent = ready(&mut child)["agent"].as_str().unwrap().to_string();
    let mut c = AgentClient::connect(&agent).await.unwrap();
    let payloads: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 64])).collect();
    for p in &payloads {
        // Addressed to a local endpoint nobody has registered yet: the bundles wait.
        c.send(request("ipn:4.9", p.clone())).await.unwrap();
    }
    drop(c);
    assert_eq!(terminate(child), Some(0));

    let mut child = start();
    let agent = ready(&mut child)["agent"].as_str().unwrap().to_string();
    let mut c = AgentClient::connect(&agent).await.unwrap();
    let reg = c.register("ipn:4.9").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = timeout(WAIT, c.next_delivery())
            .await
            .expect("delivery")
            .unwrap();
        c.ack(reg, d.token).await.unwrap();
        got.push(d.payload);
    }
    got.sort();
    assert_eq!(got, payloads);
    drop(c);
    assert_eq!(terminate(child), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
