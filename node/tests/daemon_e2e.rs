//! In-process nodes (memory or sled stores, every listener on 127.0.0.1 port 0 or a port
//! reserved just before) exchanging bundles through `NodeHandle` agent commands over TCPCL,
//! UDP and LTP; store-and-forward while a neighbour is down; custody refusal at the quota;
//! restart with pending bundles; the metrics endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use node::api::{
    AgentCommand, Delivery, NodeHandle, NodeStats, Priority, SendRequest, StatusRequests,
};
use node::config::{Config, DurabilityMode, Link, LtpLink, LtpSection, LtpTuning, NeighbourConfig};
use node::daemon::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(60);

/// The nodes' log, captured with each test's output (shown when it fails): warnings, and
/// `node::daemon`'s debug lines, which time each stage of a node's shutdown. `RUST_LOG`
/// overrides the filter.
fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,node::daemon=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Ends the whole test process, with a message naming the test, if the test is still running
/// (or hangs after a panic, e.g. in the runtime's shutdown) after `limit`: a hang fails the
/// suite at once instead of holding CI until its time limit. Disarmed when the test ends
/// normally.
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

fn watchdog(test: &'static str, limit: Duration) -> Watchdog {
    capture_logs();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let step = Duration::from_millis(100);
        for _ in 0..limit.as_millis() / step.as_millis() {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(step);
        }
        eprintln!("{test} still running after {limit:?}: ending the test process");
        std::process::exit(101);
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(node: u64) -> Config {
    let mut c = Config::for_test(&format!("ipn:{node}.0"));
    c.agent.tcp = None;
    c.metrics = None;
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

fn ltp_link(engine: u64, addr: SocketAddr) -> Link {
    Link::Ltp(LtpLink {
        engine,
        addr,
        owlt: None,
        rate: None,
        green: false,
        segment_size: 1400,
        window: 8,
        aggregation_size: 65536,
        aggregation_time: Duration::from_millis(5),
        max_bytes_in_flight: None,
        tuning: LtpTuning::default(),
    })
}

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

async fn send(h: &NodeHandle, dest: &str, payload: Bytes) {
    timeout(
        WAIT,
        h.request(|reply| AgentCommand::Send {
            request: request(dest, payload),
            reply,
        }),
    )
    .await
    .expect("send answered in time")
    .expect("node running")
    .expect("send accepted");
}

async fn register(h: &NodeHandle, endpoint: &str) -> (u64, mpsc::Receiver<Delivery>) {
    let (tx, rx) = mpsc::channel(64);
    let id = timeout(
        WAIT,
        h.request(|reply| AgentCommand::Register {
            endpoint: endpoint.into(),
            deliveries: tx,
            reply,
        }),
    )
    .await
    .expect("registration answered in time")
    .unwrap()
    .unwrap();
    (id, rx)
}

/// The node's counters and gauges (answered within [`WAIT`]).
async fn stats(h: &NodeHandle) -> NodeStats {
    timeout(WAIT, h.request(|reply| AgentCommand::Stats { reply }))
        .await
        .expect("stats answered in time")
        .expect("node running")
}

async fn stats_total(h: &NodeHandle, name: &str) -> f64 {
    stats(h).await.total(name).unwrap_or(0.0)
}

/// The node's LTP reassembly gauge once it is zero, or after 2 s (an import closes when
/// the report-ack for its last report arrives, which may trail the delivery).
async fn reassembly_settles(h: &NodeHandle) -> f64 {
    let mut held = f64::NAN;
    for _ in 0..100 {
        held = stats_total(h, "dtn_ltp_reassembly_bytes").await;
        if held == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held
}

fn payload(i: usize, len: usize) -> Bytes {
    (0..len)
        .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// Receives `expected.len()` deliveries, acknowledges each, and checks they are exactly the
/// expected payloads (any order), then that nothing more arrives.
async fn receive_all(
    h: &NodeHandle,
    reg: u64,
    rx: &mut mpsc::Receiver<Delivery>,
    expected: &[Bytes],
) {
    let mut got: Vec<Bytes> = Vec::new();
    while got.len() < expected.len() {
        let d = timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} bundles arrived", got.len(), expected.len()))
            .expect("registration open");
        h.request(|reply| AgentCommand::Ack {
            registration: reg,
            token: d.token,
            reply,
        })
        .await
        .unwrap()
        .unwrap();
        got.push(d.payload);
    }
    let mut a: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
    let mut b: Vec<&[u8]> = expected.iter().map(|b| &b[..]).collect();
    a.sort();
    b.sort();
    assert!(a == b, "received payloads differ from those sent");
    assert!(
        timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a bundle was delivered twice"
    );
}

fn mixed(n: usize) -> Vec<Bytes> {
    let sizes = [10usize, 1000, 70_000, 1 << 20];
    (0..n).map(|i| payload(i, sizes[i % sizes.len()])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcpcl_line_of_three() {
    let _watchdog = watchdog("tcpcl_line_of_three", Duration::from_secs(240));
    let c = Node::start(config(3)).await.unwrap();
    let mut bc = config(2);
    bc.neighbours
        .push(neighbour("c", 3, Link::Tcpcl(c.addresses().tcpcl.unwrap())));
    let b = Node::start(bc).await.unwrap();
    let mut ac = config(1);
    ac.neighbours
        .push(neighbour("b", 2, Link::Tcpcl(b.addresses().tcpcl.unwrap())));
    ac.routes.push(node::config::RouteConfig {
        dest: "ipn:3.*".into(),
        via: "b".into(),
    });
    let a = Node::start(ac).await.unwrap();

    let (reg, mut rx) = register(&c.handle(), "ipn:3.1").await;
    let sent = mixed(12);
    for p in &sent {
        send(&a.handle(), "ipn:3.1", p.clone()).await;
    }
    receive_all(&c.handle(), reg, &mut rx, &sent).await;
    assert!(stats_total(&b.handle(), "dtn_bundles_forwarded_total").await >= 12.0);
    assert!(stats_total(&b.handle(), "dtn_cla_bundles_received_total").await >= 12.0);
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_pair() {
    let mut bc = config(2);
    bc.udp_listen = Some(any());
    bc.tcpcl_listen = None;
    let b = Node::start(bc).await.unwrap();
    let mut ac = config(1);
    ac.udp_listen = Some(any());
    ac.tcpcl_listen = None;
    ac.neighbours
        .push(neighbour("b", 2, Link::Udp(b.addresses().udp.unwrap())));
    let a = Node::start(ac).await.unwrap();
    assert!(a.addresses().tcpcl.is_none());
    let (reg, mut rx) = register(&b.handle(), "ipn:2.9").await;
    let sent: Vec<Bytes> = (0..10).map(|i| payload(i, 10 + i * 500)).collect();
    for p in &sent {
        send(&a.handle(), "ipn:2.9", p.clone()).await;
    }
    receive_all(&b.handle(), reg, &mut rx, &sent).await;
    assert!(stats_total(&a.handle(), "dtn_cla_bundles_sent_total").await >= 10.0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ltp_line_of_three() {
    let _watchdog = watchdog("ltp_line_of_three", Duration::from_secs(240));
    let (pa, pb, pc) = (
        test_support::free_udp_addr(),
        test_support::free_udp_addr(),
        test_support::free_udp_addr(),
    );
    let ltp = |engine, listen| Some(LtpSection::new(engine, listen));
    let mut cc = config(3);
    cc.ltp = ltp(3, pc);
    cc.neighbours.push(neighbour("b", 2, ltp_link(2, pb)));
    let mut bc = config(2);
    bc.ltp = ltp(2, pb);
    bc.neighbours.push(neighbour("a", 1, ltp_link(1, pa)));
    bc.neighbours.push(neighbour("c", 3, ltp_link(3, pc)));
    let mut ac = config(1);
    ac.ltp = ltp(1, pa);
    // The first hop copies the checkpoints that end its transmissions on any link; the
    // second has the default, which copies only once the peer's reports show loss.
    let mut a_to_b = ltp_link(2, pb);
    if let Link::Ltp(l) = &mut a_to_b {
        l.tuning.checkpoint_copies = 1;
        l.tuning.checkpoint_copies_min_loss = 0.0;
    }
    ac.neighbours.push(neighbour("b", 2, a_to_b));
    ac.routes.push(node::config::RouteConfig {
        dest: "ipn:3.*".into(),
        via: "b".into(),
    });
    let c = Node::start(cc).await.unwrap();
    let b = Node::start(bc).await.unwrap();
    let a = Node::start(ac).await.unwrap();
    assert_eq!(a.addresses().ltp, Some(pa));

    let (reg, mut rx) = register(&c.handle(), "ipn:3.1").await;
    let sent = mixed(8);
    for p in &sent {
        send(&a.handle(), "ipn:3.1", p.clone()).await;
    }
    receive_all(&c.handle(), reg, &mut rx, &sent).await;
    // The relay reports its LTP engine.
    let s = stats(&b.handle()).await;
    assert!(s.total("dtn_ltp_sessions_open").is_some());
    assert!(s.total("dtn_ltp_retransmissions_total").is_some());
    assert!(s.total("dtn_ltp_segments_dropped_total").is_some());
    assert!(s.total("dtn_ltp_reassembly_bytes").is_some());
    // Every block was delivered: once the last imports close (their final reports
    // acknowledged), nothing is held for reassembly.
    assert_eq!(
        reassembly_settles(&b.handle()).await,
        0.0,
        "octets held for reassembly after all blocks"
    );
    // It sent blocks on to c, whose reports were round-trip samples.
    assert!(s.total("dtn_ltp_round_trip_microseconds").is_some());
    // And measured the loss on that link from them (none on loopback, or hardly any).
    assert!(
        s.total("dtn_ltp_loss_ratio")
            .is_some_and(|l| (0.0..=1.0).contains(&l)),
        "no loss estimate for c"
    );
    // a copied its checkpoints (configured so on its link to b); b, with the default, did not
    // on its clean link to c.
    assert_eq!(s.total("dtn_ltp_checkpoint_copies_total"), Some(0.0));
    let a_stats = stats(&a.handle()).await;
    assert!(
        a_stats
            .total("dtn_ltp_checkpoint_copies_total")
            .is_some_and(|n| n >= 1.0),
        "no checkpoint copy from a"
    );
    // Named, so that a node that does not stop says which one it is. A shutdown here once
    // waited out WAIT: the node and its LTP adapter stopped the driver at the same moment, and
    // one stop's command entered the queue after the driver's last drain (fixed by waiting
    // for the queue's end too, `LtpHandle::reply`).
    for (name, n) in [("a", a), ("b", b), ("c", c)] {
        timeout(WAIT, n.shutdown())
            .await
            .unwrap_or_else(|_| panic!("node {name} did not stop within {WAIT:?}"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ltp_blocks_for_another_client_service_are_refused_at_once() {
    let _watchdog = watchdog(
        "ltp_blocks_for_another_client_service_are_refused_at_once",
        Duration::from_secs(120),
    );
    let (pa, pb) = (test_support::free_udp_addr(), test_support::free_udp_addr());
    let mut bc = config(2);
    bc.ltp = Some(LtpSection::new(2, pb));
    bc.neighbours.push(neighbour("a", 1, ltp_link(1, pa)));
    let b = Node::start(bc).await.unwrap();
    // Engine 1 is a bare LTP engine, not a node: it sends a block to client service 2, which
    // dtnd does not serve (bundles are client service 1).
    let block = Bytes::from(vec![0x5a; 100_000]);
    let (h, end) = bare_ltp_export(1, pa, ltp::SpanConfig::default(), pb, 2, block).await;
    assert_eq!(end, Err((ltp::CancelReason::UnreachableClient, true)));
    // Refused at its first segment, not once reassembled: the rest of its segments were
    // dropped, for a session never opened, and nothing is held.
    let stats = h.stats().await.unwrap();
    assert_eq!(stats.engine.export_sessions_cancelled, 1);
    let dropped = stats_total(&b.handle(), "dtn_ltp_segments_dropped_total").await;
    assert!(dropped >= 1.0, "{dropped} segments dropped");
    assert_eq!(stats_total(&b.handle(), "dtn_ltp_sessions_open").await, 0.0);
    assert_eq!(
        stats_total(&b.handle(), "dtn_ltp_reassembly_bytes").await,
        0.0
    );
    timeout(WAIT, b.shutdown())
        .await
        .expect("node stopped in time")
        .unwrap();
}

/// How a bare LTP engine's export ended: `Ok` completed, `Err((reason, by_peer))` cancelled.
type ExportEnd = Result<(), (ltp::CancelReason, bool)>;

/// A bare LTP engine (`id`, on `bind`, not a node) sends `block` for `client_service` to
/// dtnd's engine 2 at `to`, over a span with `span`; returns its driver and how the export
/// ended.
async fn bare_ltp_export(
    id: u64,
    bind: SocketAddr,
    span: ltp::SpanConfig,
    to: SocketAddr,
    client_service: u64,
    block: Bytes,
) -> (ltp::driver::LtpHandle, ExportEnd) {
    use ltp::driver::{DriverConfig, LtpDriver};
    use ltp::{Engine, EngineConfig, Event};
    let mut engine = Engine::new(id, EngineConfig::default());
    engine.add_span(2, span);
    let mut dc = DriverConfig::new(bind);
    dc.spans = vec![(2, to)];
    let (h, mut events) = LtpDriver::spawn(dc, engine).unwrap();
    let len = block.len();
    let session = h.send_block(2, client_service, block, len).await.unwrap();
    let end = timeout(WAIT, async {
        loop {
            match events.recv().await.expect("driver events") {
                Event::TransmissionCompleted { session: s } if s == session => return Ok(()),
                Event::ExportCancelled {
                    session: s,
                    reason,
                    by_peer,
                } if s == session => return Err((reason, by_peer)),
                _ => {}
            }
        }
    })
    .await
    .expect("the export ended in time");
    (h, end)
}

/// An encoded bundle from `ipn:7.1` to `ipn:2.1` whose payload is `payload(7, 5000)`.
fn bundle_from_node_7() -> Bytes {
    bpv7::BundleBuilder::new(
        bpv7::Eid::ipn(7, 1),
        bpv7::Eid::ipn(2, 1),
        bpv7::CreationTimestamp::new(node::daemon::dtn_now(), 0),
        3_600_000,
    )
    .payload(payload(7, 5000))
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
}

/// A bare LTP engine (7) that is no neighbour of dtnd's sends it a block of one bundle.
/// Returns whether the export completed.
async fn block_from_an_unknown_engine(b_ltp: SocketAddr) -> bool {
    // Few checkpoint retransmissions, so that an export nobody answers ends soon.
    let span = ltp::SpanConfig {
        max_checkpoint_retransmissions: 3,
        timer_margin: Duration::from_millis(100),
        ..ltp::SpanConfig::default()
    };
    let bundle = bundle_from_node_7();
    let (h, end) = bare_ltp_export(7, test_support::free_udp_addr(), span, b_ltp, 1, bundle).await;
    h.shutdown().await;
    end.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ltp_blocks_from_unknown_engines_are_taken_only_when_configured() {
    let _watchdog = watchdog(
        "ltp_blocks_from_unknown_engines_are_taken_only_when_configured",
        Duration::from_secs(120),
    );
    for accept in [false, true] {
        let pb = test_support::free_udp_addr();
        let mut bc = config(2);
        let mut ltp = LtpSection::new(2, pb);
        ltp.accept_unknown_peers = accept;
        bc.ltp = Some(ltp);
        let b = Node::start(bc).await.unwrap();
        let (reg, mut rx) = register(&b.handle(), "ipn:2.1").await;
        let completed = block_from_an_unknown_engine(pb).await;
        if accept {
            // Answered at the address its segments came from, and the bundle delivered.
            assert!(completed, "the block to an accepting dtnd did not complete");
            receive_all(&b.handle(), reg, &mut rx, &[payload(7, 5000)]).await;
        } else {
            // Dropped unopened and counted: the sender's checkpoints go unanswered.
            assert!(!completed, "a block from an unknown engine was taken");
            assert!(stats_total(&b.handle(), "dtn_ltp_segments_dropped_total").await >= 1.0);
            assert!(rx.try_recv().is_err(), "a bundle was delivered");
        }
        assert_eq!(reassembly_settles(&b.handle()).await, 0.0);
        timeout(WAIT, b.shutdown())
            .await
            .expect("node stopped in time")
            .unwrap();
    }
}

/// dtnd and licklider 0.1.1 (an independent LTP implementation, installed by `.ci/run`) over
/// LTP: licklider sends dtnd a block holding one bundle, which dtnd delivers; dtnd sends a
/// bundle to licklider's engine, and the block licklider writes out is that bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtnd_and_licklider_exchange_bundles_over_ltp() {
    let Some(bin) = test_support::interop_peer(test_support::peers::LICKLIDER) else {
        return;
    };
    let _watchdog = watchdog(
        "dtnd_and_licklider_exchange_bundles_over_ltp",
        Duration::from_secs(180),
    );
    let temp = test_support::TempDir::new("licklider");
    let dir = temp.path();
    let (ours, theirs) = (test_support::free_udp_addr(), test_support::free_udp_addr());
    let mut bc = config(2);
    bc.ltp = Some(LtpSection::new(2, ours));
    bc.neighbours.push(neighbour("l", 7, ltp_link(7, theirs)));
    let b = Node::start(bc).await.unwrap();
    let (reg, mut rx) = register(&b.handle(), "ipn:2.1").await;
    let (ours_arg, theirs_arg) = (format!("2@{ours}"), theirs.to_string());

    // licklider -> dtnd: one bundle, as the red part of one block for client service 1.
    let bundle = bundle_from_node_7();
    let file = dir.join("to-dtnd.bundle");
    std::fs::write(&file, &bundle).unwrap();
    let log = [("RUST_LOG", "info")];
    let mut sender = test_support::PeerProcess::spawn(
        &bin,
        &[
            "send",
            file.to_str().unwrap(),
            "--to",
            &ours_arg,
            "--engine",
            "7",
            "--listen",
            &theirs_arg,
            "--owlt-ms",
            "1",
            "--red",
            "all",
        ],
        &log,
    );
    receive_all(&b.handle(), reg, &mut rx, &[payload(7, 5000)]).await;
    let status = tokio::task::block_in_place(|| sender.wait_exit(WAIT));
    assert!(status.success(), "licklider send ended with {status}");
    drop(sender);

    // dtnd -> licklider: a bundle for node 7 leaves as a block that licklider writes out.
    let out = dir.join("from-dtnd.bundle");
    let mut receiver = test_support::PeerProcess::spawn(
        &bin,
        &[
            "recv",
            "--listen",
            &theirs_arg,
            "--engine",
            "7",
            "--peer",
            &ours_arg,
            "--owlt-ms",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        &log,
    );
    tokio::task::block_in_place(|| receiver.wait_for_line("listening", WAIT));
    send(&b.handle(), "ipn:7.1", payload(8, 3000)).await;
    let status = tokio::task::block_in_place(|| receiver.wait_exit(WAIT));
    assert!(status.success(), "licklider recv ended with {status}");
    let block = Bytes::from(std::fs::read(&out).expect("licklider wrote the block"));
    let got = bpv7::Bundle::decode(block).expect("the block is one bundle");
    assert_eq!(got.primary.destination, bpv7::Eid::ipn(7, 1));
    assert_eq!(got.payload(), &payload(8, 3000));
    timeout(WAIT, b.shutdown())
        .await
        .expect("node stopped in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_wait_while_the_neighbour_is_down() {
    let b_addr = test_support::free_tcp_addr();
    let mut ac = config(1);
    ac.neighbours.push(neighbour("b", 2, Link::Tcpcl(b_addr)));
    let a = Node::start(ac).await.unwrap();
    let sent: Vec<Bytes> = (0..3).map(|i| payload(i, 100)).collect();
    for p in &sent {
        send(&a.handle(), "ipn:2.4", p.clone()).await;
    }
    // The neighbour is down: the bundles wait in A's store.
    assert_eq!(stats_total(&a.handle(), "dtn_store_bundles").await, 3.0);
    let mut bc = config(2);
    bc.tcpcl_listen = Some(b_addr);
    let b = Node::start(bc).await.unwrap();
    let (reg, mut rx) = register(&b.handle(), "ipn:2.4").await;
    receive_all(&b.handle(), reg, &mut rx, &sent).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_refuses_tcpcl_transfers() {
    let mut bc = config(2);
    bc.store.quota_bundles = 1;
    let b = Node::start(bc).await.unwrap();
    let mut ac = config(1);
    ac.neighbours
        .push(neighbour("b", 2, Link::Tcpcl(b.addresses().tcpcl.unwrap())));
    ac.routes.push(node::config::RouteConfig {
        dest: "*".into(),
        via: "b".into(),
    });
    let a = Node::start(ac).await.unwrap();
    // Nobody is registered at B: the first bundle fills its store, the next are refused.
    for i in 0..3 {
        send(&a.handle(), "ipn:2.1", payload(i, 100)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let refused = stats(&b.handle()).await;
        let failures = stats(&a.handle()).await;
        let cla_refused: f64 = failures
            .metrics
            .iter()
            .filter(|m| {
                m.name == "dtn_cla_failures_total"
                    && m.labels.contains(&("reason".into(), "refused".into()))
            })
            .map(|m| m.value)
            .sum();
        if refused.total("dtn_bundles_refused_total").unwrap_or(0.0) >= 2.0 && cla_refused >= 2.0 {
            assert_eq!(refused.total("dtn_store_bundles"), Some(1.0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal seen: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused bundles stay in A's store for a later attempt.
    assert_eq!(stats_total(&a.handle(), "dtn_store_bundles").await, 2.0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("dtnd-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_pending_bundles() {
    let dir = temp_dir("restart");
    let mut cfg = config(1);
    cfg.store.durability = DurabilityMode::Group;
    cfg.store.path = dir.join("store");
    cfg.tcpcl_listen = None;
    let a = Node::start(cfg.clone()).await.unwrap();
    for i in 0..5 {
        send(&a.handle(), "ipn:1.20", payload(i, 300)).await;
    }
    a.shutdown().await.unwrap();
    // Restarted, the node still holds the five bundles and delivers them once registered.
    let a = Node::start(cfg).await.unwrap();
    assert_eq!(stats_total(&a.handle(), "dtn_store_bundles").await, 5.0);
    let (reg, mut rx) = register(&a.handle(), "ipn:1.20").await;
    let sent: Vec<Bytes> = (0..5).map(|i| payload(i, 300)).collect();
    receive_all(&a.handle(), reg, &mut rx, &sent).await;
    a.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_node_stats() {
    let mut cfg = config(1);
    cfg.metrics = Some(any());
    let a = Node::start(cfg).await.unwrap();
    send(&a.handle(), "ipn:1.3", Bytes::from_static(b"hello")).await;
    let addr = a.addresses().metrics.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("# TYPE dtn_store_bundles gauge"), "{out}");
    assert!(out.contains("dtn_store_bundles 1\n"), "{out}");
    assert!(
        out.contains("dtn_cla_bundles_received_total{cla=\"tcpcl\"} 0"),
        "{out}"
    );
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_registration_errors() {
    let a = Node::start(config(1)).await.unwrap();
    let h = a.handle();
    let (reg, _rx) = register(&h, "ipn:1.5").await;
    let info = h
        .request(|reply| AgentCommand::Info { reply })
        .await
        .unwrap();
    assert_eq!(info.node_id, "ipn:1.0");
    assert_eq!(info.registrations, vec!["ipn:1.5".to_string()]);
    let r = h
        .request(|reply| AgentCommand::Unregister {
            registration: reg + 100,
            reply,
        })
        .await
        .unwrap();
    assert!(r.is_err());
    h.request(|reply| AgentCommand::Unregister {
        registration: reg,
        reply,
    })
    .await
    .unwrap()
    .unwrap();
    let bad = h
        .request(|reply| AgentCommand::Send {
            request: request("not an eid", Bytes::from_static(b"x")),
            reply,
        })
        .await
        .unwrap();
    assert!(bad.is_err());
    a.shutdown().await.unwrap();
    // After shutdown the handle reports it.
    assert!(h
        .request(|reply| AgentCommand::Info { reply })
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_agent_socket_is_bound_and_removed() {
    let dir = temp_dir("unix");
    let path = dir.join("dtnd.sock");
    // A stale socket file from a dead node is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut cfg = config(1);
    cfg.agent.unix = Some(path.clone());
    let a = Node::start(cfg).await.unwrap();
    assert_eq!(a.addresses().unix.as_deref(), Some(path.as_path()));
    assert!(path.exists());
    tokio::net::UnixStream::connect(&path).await.unwrap();
    // A second node cannot take a live node's socket.
    let mut cfg = config(2);
    cfg.agent.unix = Some(path.clone());
    assert!(Node::start(cfg).await.is_err());
    a.shutdown().await.unwrap();
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundles_from_a_tcpcl_peer_are_answered_and_counted() {
    use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
    use convergence::{AdapterChannels, ConvergenceLayer, FailureReason, Outcome, PeerAddr};
    let mut bc = config(2);
    bc.limits.max_bundle_size = 10_000;
    let b = Node::start(bc).await.unwrap();
    let b_addr = PeerAddr::Socket(b.addresses().tcpcl.unwrap());
    // A raw TCPCL peer that sends whatever bytes it is given.
    let (rtx, _rrx) = mpsc::channel(4);
    let (otx, mut outcomes) = mpsc::channel(16);
    let raw = TcpclAdapter::start(
        TcpclConfig::new("ipn:9.0", None),
        AdapterChannels {
            received: rtx,
            outcomes: otx,
        },
    )
    .await
    .unwrap();
    // Not a bundle: refused "Not Acceptable" (RFC 9174 §5.2.4), discarded and counted.
    raw.send(&b_addr, 1, Bytes::from_static(b"\x9f\x01garbage"))
        .unwrap();
    let o = timeout(WAIT, outcomes.recv()).await.unwrap().unwrap();
    assert_eq!(o.id, 1);
    assert!(
        matches!(o.outcome, Outcome::Failed(FailureReason::Refused(_))),
        "{o:?}"
    );
    // Over the node's size limit: refused by TCPCL (RFC 9174 transfer MRU).
    raw.send(&b_addr, 2, Bytes::from(vec![0x9f; 20_000]))
        .unwrap();
    let o = timeout(WAIT, outcomes.recv()).await.unwrap().unwrap();
    assert_eq!(o.id, 2);
    assert!(
        matches!(
            o.outcome,
            Outcome::Failed(FailureReason::Refused(_) | FailureReason::TooLarge { .. })
        ),
        "{o:?}"
    );
    let s = stats(&b.handle()).await;
    assert!(
        s.total("dtn_bundles_discarded_total").unwrap_or(0.0) >= 1.0,
        "{s:?}"
    );
    assert_eq!(s.total("dtn_store_bundles"), Some(0.0));
    // The node keeps serving good neighbours.
    let mut ac = config(1);
    ac.neighbours
        .push(neighbour("b", 2, Link::Tcpcl(b.addresses().tcpcl.unwrap())));
    let a = Node::start(ac).await.unwrap();
    let (reg, mut rx) = register(&b.handle(), "ipn:2.1").await;
    let good = vec![payload(1, 500)];
    send(&a.handle(), "ipn:2.1", good[0].clone()).await;
    receive_all(&b.handle(), reg, &mut rx, &good).await;
    raw.shutdown();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// `[contact_plan]` in a running node: a bundle waits while the plan has no contact to its next
/// hop; a reload (the API SIGHUP uses) with a contact now sends it without a restart; a bad plan
/// is refused with its file and line and the running plan stays; the metrics count both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_plan_reload_while_running() {
    use node::config::{ContactEndPolicy, ContactPlanSection, PlanSource};
    let dir = temp_dir("plan-reload");
    let plan_file = dir.join("plan.txt");
    std::fs::write(
        &plan_file,
        "a contact +3600 +3700 1 2 100000\na contact +3600 +3700 2 1 100000\n",
    )
    .unwrap();
    let b = Node::start(config(2)).await.unwrap();
    let mut ac = config(1);
    ac.neighbours
        .push(neighbour("b", 2, Link::Tcpcl(b.addresses().tcpcl.unwrap())));
    ac.contact_plan = Some(ContactPlanSection {
        source: PlanSource::File(plan_file.clone()),
        reload_check: None,
        on_contact_end: ContactEndPolicy::Suspend,
        alternate_routes: 1,
        hdtn_unix_time: false,
    });
    let a = Node::start(ac).await.unwrap();
    let (ha, hb) = (a.handle(), b.handle());
    let (reg, mut rx) = register(&hb, "ipn:2.1").await;
    assert_eq!(stats_total(&ha, "dtn_contact_plan_contacts").await, 2.0);
    let p = payload(1, 2000);
    send(&ha, "ipn:2.1", p.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats_total(&ha, "dtn_bundles_waiting").await, 1.0);
    assert!(rx.try_recv().is_err(), "no contact: nothing may arrive");

    // A bad plan: refused with file and line, nothing changes.
    std::fs::write(&plan_file, "a contact +0 +60 1 2 100000\na contact oops\n").unwrap();
    let e = a.reload_plan().await.unwrap_err();
    assert!(e.contains("plan.txt:2:"), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "the refused plan must not apply");
    assert_eq!(stats_total(&ha, "dtn_contact_plan_contacts").await, 2.0);

    // A contact now: delivered without a restart.
    std::fs::write(
        &plan_file,
        "a contact +0 +3600 1 2 100000\na contact +0 +3600 2 1 100000\na contact +0 +10 1 7 1\n",
    )
    .unwrap();
    assert_eq!(a.reload_plan().await, Ok(3));
    receive_all(&hb, reg, &mut rx, &[p]).await;
    let s = stats(&ha).await;
    let reloads = |result: &str| {
        s.metrics
            .iter()
            .find(|m| {
                m.name == "dtn_contact_plan_reloads_total"
                    && m.labels.iter().any(|(k, v)| k == "result" && v == result)
            })
            .map(|m| m.value)
    };
    assert_eq!((reloads("ok"), reloads("refused")), (Some(1.0), Some(1.0)));
    assert_eq!(s.total("dtn_contact_plan_contacts"), Some(3.0));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A node without a plan answers a reload with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_a_plan_is_an_error() {
    let a = Node::start(config(1)).await.unwrap();
    let e = a.reload_plan().await.unwrap_err();
    assert!(e.contains("no [contact_plan]"), "{e}");
    a.shutdown().await.unwrap();
}

/// Emulation on a TCPCL neighbour delays the byte stream: a bundle takes at least the one-way
/// delay to arrive (and the session's setup several more), and arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcpcl_neighbour_emulation_delays_the_stream() {
    let b = Node::start(config(2)).await.unwrap();
    let mut ac = config(1);
    let mut n = neighbour("b", 2, Link::Tcpcl(b.addresses().tcpcl.unwrap()));
    n.emulation = Some("delay=250ms".parse().unwrap());
    ac.neighbours.push(n);
    let a = Node::start(ac).await.unwrap();
    let (ha, hb) = (a.handle(), b.handle());
    let (reg, mut rx) = register(&hb, "ipn:2.1").await;
    let p = payload(3, 100_000);
    let t0 = std::time::Instant::now();
    send(&ha, "ipn:2.1", p.clone()).await;
    receive_all(&hb, reg, &mut rx, &[p]).await;
    // Contact header, SESS_INIT exchange (two one-way trips each way) and the transfer.
    assert!(
        t0.elapsed() >= Duration::from_millis(750),
        "arrived after {:?}",
        t0.elapsed()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
