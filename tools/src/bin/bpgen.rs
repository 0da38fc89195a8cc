//! `bpgen`: a bundle load generator over the agent protocol, for throughput measurements.
//!
//! `bpgen [--node A] [--count N] [--size B] [--window W] [--recv-node C] [--recv-eid EID] DEST`
//! sends N bundles of B bytes to DEST through the node at A with W sends in flight (W agent
//! connections, each sending its next bundle as soon as the node accepted the previous one, so W
//! bundles wait for the store's commit together). With `--recv-node`, it first registers
//! `--recv-eid` (default DEST) at the node C, receives and acknowledges every delivery there,
//! and reports end-to-end bundles/s and MB/s (first send to last delivery). Each payload carries
//! its index in its first 8 bytes; duplicates and foreign payloads are counted and reported.
//!
//! `bpgen --tcp-reference [--count N] [--size B]` measures the machine reference instead: N
//! writes of B bytes through a plain TCP connection on 127.0.0.1 (reader in another thread).
//!
//! `bpgen --tcpcl-to ADDR --tcpcl-sink LISTEN [--count N] [--size B] [--window W] DEST` measures
//! one node alone, without its agent and without a destination node: bpgen itself is a TCPCLv4
//! neighbour (RFC 9174) on both sides. It builds the N bundles first (source `ipn:1.1`, CRC-32C,
//! hop limit 64), then sends them over one session to the node at ADDR (as node `ipn:1.0`) with
//! W transfers in flight, and listens at LISTEN as DEST's node (e.g. `ipn:3.0`), acknowledging
//! each transfer as soon as it is received and counting the bundles by their payload index.
//! Pointing `--tcpcl-to` at LISTEN itself measures the generator alone (no node in between).
//!
//! `--json` prints the summary as one JSON object on the last line. Figures are in bundles per
//! second and megabytes (10^6 bytes) of payload per second.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use node::agent::client::AgentClient;
use node::api::{Priority, SendRequest, StatusRequests};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bpgen",
    about = "Bundle load generator (agent protocol) and TCP reference"
)]
struct Cli {
    /// Agent address of the sending node (HOST:PORT or a Unix socket path; default
    /// `$DTN_NODE`, else 127.0.0.1:4550).
    #[arg(long)]
    node: Option<String>,
    /// Number of bundles.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Payload size in bytes (at least 8: the index header).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Sends in flight (one agent connection each).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Bundle lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
    /// Agent address of the receiving node: count deliveries there.
    #[arg(long)]
    recv_node: Option<String>,
    /// Endpoint to register at the receiving node (default: DEST).
    #[arg(long)]
    recv_eid: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print the summary as JSON on the last line.
    #[arg(long)]
    json: bool,
    /// Measure raw TCP on loopback (N writes of SIZE bytes) instead of sending bundles.
    #[arg(long)]
    tcp_reference: bool,
    /// Send the bundles over TCPCLv4 to this node address instead of its agent (with
    /// `--tcpcl-sink`).
    #[arg(long, requires = "tcpcl_sink")]
    tcpcl_to: Option<std::net::SocketAddr>,
    /// Receive the bundles over TCPCLv4 as DEST's node, listening here (with `--tcpcl-to`).
    #[arg(long, requires = "tcpcl_to")]
    tcpcl_sink: Option<std::net::SocketAddr>,
    /// Destination EID.
    #[arg(required_unless_present = "tcp_reference")]
    dest: Option<String>,
}

fn rate(n: u64, bytes: u64, d: Duration) -> (f64, f64) {
    let s = d.as_secs_f64().max(1e-9);
    (n as f64 / s, bytes as f64 / s / 1e6)
}

fn make_payload(idx: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size.max(8)];
    v[..8].copy_from_slice(&idx.to_be_bytes());
    for (i, b) in v[8..].iter_mut().enumerate() {
        *b = (i as u64 ^ idx) as u8;
    }
    Bytes::from(v)
}

/// Raw TCP loopback: `count` writes of `size` bytes, timed until the reader has them all.
fn tcp_reference(count: u64, size: usize) -> Result<Duration> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = count * size as u64;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok(got)
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let chunk = vec![0x5au8; size];
    let start = Instant::now();
    for _ in 0..count {
        s.write_all(&chunk)?;
    }
    s.flush()?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let d = start.elapsed();
    if got != total {
        bail!("reader got {got} of {total} bytes");
    }
    Ok(d)
}

#[derive(Default)]
struct RecvResult {
    unique: u64,
    duplicates: u64,
    foreign: u64,
    last: Option<Instant>,
}

async fn receive(
    mut client: AgentClient,
    reg: node::api::RegistrationId,
    count: u64,
    size: usize,
    deadline: tokio::time::Instant,
) -> Result<RecvResult> {
    let mut seen = HashSet::with_capacity(count as usize);
    let mut r = RecvResult::default();
    while r.unique < count {
        let d = match tokio::time::timeout_at(deadline, client.next_delivery()).await {
            Ok(d) => d.context("receiving a delivery")?,
            Err(_) => break,
        };
        let p = &d.payload;
        if p.len() == size.max(8) {
            let idx = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
            if idx < count && seen.insert(idx) {
                r.unique += 1;
            } else if idx < count {
                r.duplicates += 1;
            } else {
                r.foreign += 1;
            }
        } else {
            r.foreign += 1;
        }
        r.last = Some(Instant::now());
        // Not awaited one by one: each answer waits for the node's disk.
        client
            .send_ack(reg, d.token)
            .await
            .context("acknowledging")?;
    }
    client.settle_acks().await.context("acknowledging")?;
    Ok(r)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.size < 8 {
        bail!("--size must be at least 8 (the payload carries its index)");
    }
    if cli.tcp_reference {
        let d = tcp_reference(cli.count, cli.size)?;
        let (bps, mbs) = rate(cli.count, cli.count * cli.size as u64, d);
        println!(
            "tcp reference: {} writes of {} B in {:.3} s: {:.0} writes/s, {:.1} MB/s",
            cli.count,
            cli.size,
            d.as_secs_f64(),
            bps,
            mbs
        );
        if cli.json {
            println!(
                "{}",
                json!({"mode": "tcp_reference", "count": cli.count, "size": cli.size,
                       "seconds": d.as_secs_f64(), "per_second": bps, "mb_per_second": mbs})
            );
        }
        return Ok(());
    }
    let dest = cli.dest.clone().expect("clap requires DEST");
    if let (Some(to), Some(sink)) = (cli.tcpcl_to, cli.tcpcl_sink) {
        return tcpcl_run(&cli, &dest, to, sink).await;
    }
    let node_addr = cli
        .node
        .clone()
        .or_else(|| std::env::var("DTN_NODE").ok())
        .unwrap_or_else(|| "127.0.0.1:4550".to_string());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.timeout);

    // Register first, so no delivery waits for us.
    let receiver = match &cli.recv_node {
        Some(addr) => {
            let mut c = AgentClient::connect(addr)
                .await
                .with_context(|| format!("connecting to the receiving node at {addr}"))?;
            let eid = cli.recv_eid.clone().unwrap_or_else(|| dest.clone());
            let reg = c
                .register(&eid)
                .await
                .with_context(|| format!("registering {eid}"))?;
            Some((c, reg))
        }
        None => None,
    };

    let window = cli.window.max(1).min(cli.count.max(1) as usize);
    let mut senders = Vec::with_capacity(window);
    for _ in 0..window {
        senders.push(
            AgentClient::connect(&node_addr)
                .await
                .with_context(|| format!("connecting to {node_addr}"))?,
        );
    }
    let start = Instant::now();
    let recv_task =
        receiver.map(|(c, reg)| tokio::spawn(receive(c, reg, cli.count, cli.size, deadline)));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(window);
    for mut c in senders {
        let next = next.clone();
        let dest = dest.clone();
        let (count, size, lifetime) = (cli.count, cli.size, cli.lifetime);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                if idx >= count {
                    return Ok::<u64, anyhow::Error>(sent);
                }
                let req = SendRequest {
                    source: None,
                    destination: dest.clone(),
                    payload: make_payload(idx, size),
                    lifetime_ms: lifetime * 1000,
                    priority: Priority::Normal,
                    report_to: None,
                    requests: StatusRequests::default(),
                    no_fragment: false,
                };
                match tokio::time::timeout_at(deadline, c.send(req)).await {
                    Ok(r) => {
                        r.with_context(|| format!("sending bundle {idx}"))?;
                    }
                    Err(_) => bail!("timed out sending bundle {idx}"),
                }
                sent += 1;
            }
        }));
    }
    let mut sent = 0u64;
    for t in tasks {
        sent += t.await.context("sender task")??;
    }
    let send_time = start.elapsed();
    let bytes = cli.size as u64;
    let (sbps, smbs) = rate(sent, sent * bytes, send_time);
    println!(
        "sent {sent} bundles of {} B in {:.3} s (window {window}): {sbps:.0} bundles/s, {smbs:.1} MB/s",
        cli.size,
        send_time.as_secs_f64()
    );
    let mut summary = json!({
        "mode": "bundles", "count": cli.count, "size": cli.size, "window": window,
        "sent": sent, "send_seconds": send_time.as_secs_f64(),
        "send_per_second": sbps, "send_mb_per_second": smbs,
    });
    if let Some(task) = recv_task {
        let r = task.await.context("receiver task")??;
        let e2e = r.last.map(|l| l - start).unwrap_or_default();
        let (rbps, rmbs) = rate(r.unique, r.unique * bytes, e2e);
        println!(
            "received {} of {} ({} duplicates, {} foreign) in {:.3} s end to end: {rbps:.0} bundles/s, {rmbs:.1} MB/s",
            r.unique,
            cli.count,
            r.duplicates,
            r.foreign,
            e2e.as_secs_f64()
        );
        summary["received"] = json!(r.unique);
        summary["duplicates"] = json!(r.duplicates);
        summary["foreign"] = json!(r.foreign);
        summary["e2e_seconds"] = json!(e2e.as_secs_f64());
        summary["per_second"] = json!(rbps);
        summary["mb_per_second"] = json!(rmbs);
        if cli.json {
            println!("{summary}");
        }
        if r.unique < cli.count {
            bail!(
                "only {} of {} bundles arrived within {} s",
                r.unique,
                cli.count,
                cli.timeout
            );
        }
        if r.duplicates > 0 {
            bail!("{} duplicate deliveries", r.duplicates);
        }
        return Ok(());
    }
    if cli.json {
        println!("{summary}");
    }
    Ok(())
}

/// `--tcpcl-to` / `--tcpcl-sink`: bundles over TCPCLv4 from a source session to a sink listener
/// (see the module docs).
async fn tcpcl_run(
    cli: &Cli,
    dest: &str,
    to: std::net::SocketAddr,
    sink: std::net::SocketAddr,
) -> Result<()> {
    use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
    use convergence::{AdapterChannels, ConvergenceLayer, Outcome, PeerAddr};
    use tokio::sync::mpsc;

    let dest_eid: bpv7::Eid = dest
        .parse()
        .map_err(|e| anyhow::anyhow!("DEST {dest}: {e}"))?;
    let source: bpv7::Eid = "ipn:1.1".parse().expect("valid EID");
    let window = cli.window.max(1);
    // The bundles, built before the clock starts (creation time now, one sequence each).
    let now_ms = node::daemon::dtn_now();
    let mut bundles = Vec::with_capacity(cli.count as usize);
    for idx in 0..cli.count {
        let b = bpv7::BundleBuilder::new(
            source.clone(),
            dest_eid.clone(),
            bpv7::CreationTimestamp::new(now_ms, idx),
            cli.lifetime * 1000,
        )
        .hop_count(64, 0)
        .payload(make_payload(idx, cli.size))
        .build()
        .context("building a bundle")?;
        bundles.push(Bytes::from(b.encode().context("encoding a bundle")?));
    }

    // The sink: acknowledges every transfer at once (no custody verdict to wait for).
    let (rx_tx, mut rx_rx) = mpsc::channel(4096);
    let (sink_out_tx, _sink_out_rx) = mpsc::channel(16);
    let mut sink_cfg = TcpclConfig::new(dest_eid.node_id().to_string(), Some(sink));
    sink_cfg.max_bundle_len = cli.size + 4096;
    let sink_adapter = TcpclAdapter::start(
        sink_cfg,
        AdapterChannels {
            received: rx_tx,
            outcomes: sink_out_tx,
        },
    )
    .await
    .with_context(|| format!("listening on {sink}"))?;

    // The source: one session to `to`, `window` transfers in flight.
    let (src_rx_tx, _src_rx_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel(window.max(16) * 2);
    let mut src_cfg = TcpclConfig::new("ipn:1.0", None);
    src_cfg.max_unacked = window;
    src_cfg.max_queue = window;
    let source_adapter = TcpclAdapter::start(
        src_cfg,
        AdapterChannels {
            received: src_rx_tx,
            outcomes: out_tx,
        },
    )
    .await
    .context("starting the TCPCL source")?;

    let count = cli.count;
    let size = cli.size;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.timeout);
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut seen = HashSet::with_capacity(count as usize);
        let mut r = RecvResult::default();
        while r.unique < count {
            let got = match tokio::time::timeout_at(deadline, rx_rx.recv()).await {
                Ok(Some(g)) => g,
                Ok(None) | Err(_) => break,
            };
            let idx = bpv7::Bundle::decode(got.bundle)
                .ok()
                .map(|b| b.payload().clone())
                .filter(|p| p.len() == size.max(8))
                .map(|p| u64::from_be_bytes(p[..8].try_into().expect("8 bytes")));
            match idx {
                Some(i) if i < count && seen.insert(i) => r.unique += 1,
                Some(i) if i < count => r.duplicates += 1,
                _ => r.foreign += 1,
            }
            r.last = Some(Instant::now());
        }
        r
    });
    let peer = PeerAddr::Socket(to);
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let mut failed = 0u64;
    let total = bundles.len();
    while next < total || in_flight > 0 {
        while next < total && in_flight < window {
            match source_adapter.send(&peer, next as u64, bundles[next].clone()) {
                Ok(()) => {
                    next += 1;
                    in_flight += 1;
                }
                Err(convergence::SendError::QueueFull) => break,
                Err(e) => bail!("TCPCL send to {to}: {e}"),
            }
        }
        match tokio::time::timeout_at(deadline, out_rx.recv()).await {
            Ok(Some(o)) => {
                in_flight -= 1;
                if let Outcome::Failed(why) = o.outcome {
                    failed += 1;
                    if failed == 1 {
                        eprintln!("bpgen: transfer {} failed: {why:?}", o.id);
                    }
                    // Sent again: the node refused it for now (e.g. a full store).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    source_adapter
                        .send(&peer, o.id, bundles[o.id as usize].clone())
                        .map_err(|e| anyhow::anyhow!("TCPCL send to {to}: {e}"))?;
                    in_flight += 1;
                }
            }
            Ok(None) => bail!("the TCPCL source stopped"),
            Err(_) => bail!("timed out with {in_flight} transfers in flight"),
        }
    }
    let send_time = start.elapsed();
    let r = receiver.await.context("receiver task")?;
    source_adapter.shutdown();
    sink_adapter.shutdown();
    let e2e = r.last.map(|l| l - start).unwrap_or_default();
    let bytes = cli.size as u64;
    let (rbps, rmbs) = rate(r.unique, r.unique * bytes, e2e);
    println!(
        "tcpcl: {} of {count} bundles of {size} B via {to} arrived at {sink} ({} duplicates, {} foreign, {failed} transfers retried) in {:.3} s (window {window}): {rbps:.0} bundles/s, {rmbs:.1} MB/s",
        r.unique,
        r.duplicates,
        r.foreign,
        e2e.as_secs_f64()
    );
    if cli.json {
        println!(
            "{}",
            json!({"mode": "tcpcl", "count": count, "size": size, "window": window,
                   "received": r.unique, "duplicates": r.duplicates, "foreign": r.foreign,
                   "retried": failed, "send_seconds": send_time.as_secs_f64(),
                   "e2e_seconds": e2e.as_secs_f64(), "per_second": rbps, "mb_per_second": rmbs})
        );
    }
    if r.unique < count {
        bail!(
            "only {} of {count} bundles arrived within {} s",
            r.unique,
            cli.timeout
        );
    }
    if r.duplicates > 0 {
        bail!("{} duplicate deliveries", r.duplicates);
    }
    Ok(())
}
