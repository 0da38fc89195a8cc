//! The agent tools as a user runs them, against an agent server with a fake node core in the
//! test process: output, exit codes, and the node-not-running message.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use node::agent::server::{serve_tcp, AgentServerConfig};
use node::agent::testing::{shutdown_pair, FakeNode};
use node::api::{AgentError, Metric, MetricKind, NodeStats, Priority};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const T: Duration = Duration::from_secs(20);

async fn start() -> (FakeNode, String, tokio::sync::watch::Sender<bool>) {
    let (fake, handle) = FakeNode::start("ipn:1.0");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = shutdown_pair();
    tokio::spawn(serve_tcp(
        listener,
        handle,
        AgentServerConfig::default(),
        rx,
    ));
    (fake, addr, stop)
}

async fn run(bin: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("DTN_NODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tool starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect("tool exits in time")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn bpsend_sends_a_file_and_stdin() {
    let (fake, addr, _stop) = start().await;
    let dir = std::env::temp_dir().join(format!("bpsend-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("payload.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let out = run(
        env!("CARGO_BIN_EXE_bpsend"),
        &[
            "--node",
            &addr,
            "--source",
            "ipn:1.5",
            "--lifetime",
            "5m",
            "--priority",
            "bulk",
            "--report-to",
            "ipn:1.9",
            "--request",
            "received,deleted",
            "--no-fragment",
            "ipn:2.1",
            file.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ipn:1.5/1000000/1\n");
    let s = fake.with(|s| s.sent[0].clone());
    assert_eq!(&s.payload[..], b"from a file");
    assert_eq!(s.destination, "ipn:2.1");
    assert_eq!(s.lifetime_ms, 300_000);
    assert_eq!(s.priority, Priority::Bulk);
    assert_eq!(s.report_to.as_deref(), Some("ipn:1.9"));
    assert!(s.requests.received && s.requests.deleted && !s.requests.delivered);
    assert!(s.no_fragment);

    let out = run(
        env!("CARGO_BIN_EXE_bpsend"),
        &["--node", &addr, "ipn:2.1", "-"],
        b"stdin data",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = fake.with(|s| s.sent[1].clone());
    assert_eq!(&s.payload[..], b"stdin data");
    assert_eq!(s.lifetime_ms, 86_400_000, "default lifetime one day");
    assert!(
        text(&out.stderr).is_empty(),
        "no progress when stderr is not a terminal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bpsend_reports_refusal_and_node_not_running() {
    let (fake, addr, stop) = start().await;
    fake.with(|s| s.refuse_sends = Some(AgentError::StoreFull("quota reached".into())));
    let out = run(
        env!("CARGO_BIN_EXE_bpsend"),
        &["--node", &addr, "ipn:2.1"],
        b"x",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "bpsend: refused by the node: store full: quota reached"
    );

    let out = run(
        env!("CARGO_BIN_EXE_bpsend"),
        &["--node", &addr, "--lifetime", "5x", "ipn:2.1"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "usage error");

    drop(stop);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().to_string();
    drop(l);
    let out = run(
        env!("CARGO_BIN_EXE_bpsend"),
        &["--node", &dead, "ipn:2.1"],
        b"x",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        format!("bpsend: cannot reach the node at {dead}: connection refused — is dtnd running?")
    );
}

#[tokio::test]
async fn bprecv_prints_saves_and_acks() {
    let (fake, addr, _stop) = start().await;
    // Raw output, two bundles.
    let a = addr.clone();
    let recv = tokio::spawn(async move {
        run(
            env!("CARGO_BIN_EXE_bprecv"),
            &["--node", &a, "--count", "2", "--timeout", "15s", "ipn:1.5"],
            b"",
        )
        .await
    });
    assert!(fake.wait_for(T, |s| s.registrations.len() == 1).await);
    fake.push("ipn:1.5", "ipn:2.1", Bytes::from_static(b"one "))
        .unwrap();
    fake.push("ipn:1.5", "ipn:2.1", Bytes::from_static(b"two"))
        .unwrap();
    let out = recv.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one two");
    assert!(fake.wait_for(T, |s| s.acks.len() == 2).await);

    // JSON lines.
    let a = addr.clone();
    let recv = tokio::spawn(async move {
        run(
            env!("CARGO_BIN_EXE_bprecv"),
            &["--node", &a, "--count", "1", "--json", "ipn:1.6"],
            b"",
        )
        .await
    });
    assert!(
        fake.wait_for(T, |s| s.registrations.values().any(|(e, _)| e == "ipn:1.6"))
            .await
    );
    fake.push("ipn:1.6", "ipn:3.1", Bytes::from_static(&[0xde, 0xad]))
        .unwrap();
    let out = recv.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "ipn:3.1");
    assert_eq!(v["destination"], "ipn:1.6");
    assert_eq!(v["length"], 2);
    assert_eq!(v["payload_hex"], "dead");

    // Files.
    let dir = std::env::temp_dir().join(format!("bprecv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = addr.clone();
    let d = dir.to_str().unwrap().to_string();
    let recv = tokio::spawn(async move {
        run(
            env!("CARGO_BIN_EXE_bprecv"),
            &["--node", &a, "--count", "1", "--output", &d, "ipn:1.7"],
            b"",
        )
        .await
    });
    assert!(
        fake.wait_for(T, |s| s.registrations.values().any(|(e, _)| e == "ipn:1.7"))
            .await
    );
    let acks_before = fake.with(|s| s.acks.len());
    fake.push("ipn:1.7", "ipn:3.1", Bytes::from_static(b"saved"))
        .unwrap();
    let out = recv.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = text(&out.stdout).trim().to_string();
    assert!(
        path.ends_with(".bin") && path.contains("ipn_3.1-2000000-"),
        "{path}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"saved");
    assert!(fake.wait_for(T, |s| s.acks.len() == acks_before + 1).await);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bprecv_times_out_with_a_count() {
    let (fake, addr, _stop) = start().await;
    let a = addr.clone();
    let recv = tokio::spawn(async move {
        run(
            env!("CARGO_BIN_EXE_bprecv"),
            &[
                "--node",
                &a,
                "--count",
                "3",
                "--timeout",
                "1500ms",
                "ipn:1.5",
            ],
            b"",
        )
        .await
    });
    assert!(fake.wait_for(T, |s| s.registrations.len() == 1).await);
    fake.push("ipn:1.5", "ipn:2.1", Bytes::from_static(b"only one"))
        .unwrap();
    let out = recv.await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stderr).trim(),
        "bprecv: timeout: received 1 of 3 bundles"
    );
    assert_eq!(text(&out.stdout), "only one");
    // The client went away: its registration is unregistered.
    assert!(fake.wait_for(T, |s| s.registrations.is_empty()).await);
}

#[tokio::test]
async fn bpstats_text_and_json() {
    let (fake, addr, _stop) = start().await;
    let m = |name: &str, labels: Vec<(&str, &str)>, value| Metric {
        name: name.into(),
        help: "help".into(),
        kind: MetricKind::Counter,
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        value,
    };
    fake.with(|s| {
        s.stats = NodeStats {
            metrics: vec![
                m("dtn_bundles_received_total", vec![], 12.0),
                m(
                    "dtn_bundles_deleted_total",
                    vec![("reason", "hop_limit")],
                    2.0,
                ),
                m(
                    "dtn_bundles_deleted_total",
                    vec![("reason", "lifetime_expired")],
                    3.0,
                ),
            ],
        }
    });
    let out = run(env!("CARGO_BIN_EXE_bpstats"), &["--node", &addr], b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("node ipn:1.0 (fake 0)\n"), "{t}");
    assert!(t.contains("neighbours: n2\n"), "{t}");
    let deleted = t
        .lines()
        .find(|l| l.starts_with("dtn_bundles_deleted_total"))
        .unwrap();
    assert!(
        deleted.contains(" 5 ") || deleted.contains(" 5  ("),
        "{deleted}"
    );
    assert!(
        deleted.contains("reason=hop_limit 2; reason=lifetime_expired 3"),
        "{deleted}"
    );
    let received = t
        .lines()
        .find(|l| l.starts_with("dtn_bundles_received_total"))
        .unwrap();
    assert!(received.trim_end().ends_with(" 12"), "{received}");

    let out = run(
        env!("CARGO_BIN_EXE_bpstats"),
        &["--node", &addr, "--json"],
        b"",
    )
    .await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"], "ipn:1.0");
    assert_eq!(v["metrics"].as_array().unwrap().len(), 3);
    assert_eq!(v["metrics"][1]["labels"]["reason"], "hop_limit");
    assert_eq!(v["metrics"][1]["kind"], "counter");
}

#[tokio::test]
async fn bping_measures_round_trips_to_the_echo_service() {
    let (fake, addr, _stop) = start().await;
    // The fake node is ipn:1.0 with an echo service on 7: ping ourselves.
    fake.with(|s| s.echo_service = Some(7));
    let out = run(
        env!("CARGO_BIN_EXE_bping"),
        &[
            "--node",
            &addr,
            "--count",
            "3",
            "--interval",
            "50ms",
            "--size",
            "100",
            "ipn:1.0",
        ],
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("BPING ipn:1.7 from ipn:1."), "{t}");
    assert_eq!(
        t.lines()
            .filter(|l| l.starts_with("100 bytes from ipn:1.7: seq="))
            .count(),
        3,
        "{t}"
    );
    assert!(t.contains("3 sent, 3 received, 0% loss"), "{t}");
    assert!(t.contains("rtt min/avg/max/mdev = "), "{t}");
    let sent = fake.with(|s| s.sent.clone());
    assert_eq!(sent.len(), 3);
    assert!(sent
        .iter()
        .all(|r| r.destination == "ipn:1.7" && r.payload.len() == 100));
    assert!(
        fake.wait_for(T, |s| s.registrations.is_empty()).await,
        "ephemeral endpoint unregistered"
    );

    // No echo service: no reply, exit 1 after the wait.
    fake.with(|s| s.echo_service = None);
    let out = run(
        env!("CARGO_BIN_EXE_bping"),
        &[
            "--node", &addr, "--count", "1", "--wait", "300ms", "ipn:1.0",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("1 sent, 0 received, 100% loss"));
}
