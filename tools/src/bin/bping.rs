//! `bping`: measure round trips to another node's echo service (ipn:N.7, or dtn://node/echo)
//! from an ephemeral endpoint of the local node, like ping(8). Each echo request is a bundle
//! (RFC 9171 §5.2) whose payload is `bping`, a 4-byte session id, a 4-byte sequence number and
//! padding to `--size`; the echo service returns the payload to the source.
//!
//! Exit status: 0 at least one reply, 1 none or an error, 2 usage.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use node::agent::cli::{default_node, parse_duration};
use node::agent::client::{AgentClient, ClientError};
use node::api::{AgentError, Priority, SendRequest, StatusRequests};
use rand::Rng;

/// Send echo requests to a node's echo service and report round-trip times.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Agent address: HOST:PORT, or a Unix socket path containing '/' (default DTN_NODE or 127.0.0.1:4550).
    #[arg(long)]
    node: Option<String>,
    /// Stop after this many requests (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Time between requests.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Payload size in bytes (at least 12).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long to wait for replies after the last request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    wait: Duration,
    /// Lifetime of each echo request bundle.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    lifetime: Duration,
    /// The echo service number of ipn nodes.
    #[arg(long, default_value_t = 7)]
    echo_service: u64,
    /// The destination node's EID (ipn:N.x or dtn://node/...).
    dest: String,
}

const MAGIC: &[u8; 5] = b"bping";
const HEADER: usize = MAGIC.len() + 8;

/// The echo endpoint of the node named by `eid`.
fn echo_eid(eid: &str, service: u64) -> Result<String> {
    if let Some(rest) = eid.strip_prefix("ipn:") {
        let node = rest.split('.').next().unwrap_or("");
        if node.is_empty() || !node.chars().all(|c| c.is_ascii_digit()) {
            bail!("cannot read the node number of {eid:?}");
        }
        Ok(format!("ipn:{node}.{service}"))
    } else if let Some(rest) = eid.strip_prefix("dtn://") {
        let node = rest.split('/').next().unwrap_or("");
        if node.is_empty() {
            bail!("cannot read the node name of {eid:?}");
        }
        Ok(format!("dtn://{node}/echo"))
    } else {
        bail!("{eid:?} is not an ipn: or dtn:// EID")
    }
}

/// An ephemeral endpoint of the local node.
fn ephemeral(local: &str, rng: &mut impl Rng) -> Result<String> {
    let n: u32 = rng.gen_range(1000..65000);
    if let Some(rest) = local.strip_prefix("ipn:") {
        let node = rest.split('.').next().unwrap_or("");
        Ok(format!("ipn:{node}.{n}"))
    } else if let Some(rest) = local.strip_prefix("dtn://") {
        let node = rest.split('/').next().unwrap_or("");
        Ok(format!("dtn://{node}/bping-{n}"))
    } else {
        bail!("cannot make an endpoint for node {local:?}")
    }
}

struct Stats {
    sent: u64,
    rtts: Vec<f64>,
}

impl Stats {
    fn summary(&self, dest: &str, elapsed: Duration) -> String {
        let recv = self.rtts.len() as u64;
        let loss = if self.sent == 0 {
            0.0
        } else {
            100.0 * (self.sent.saturating_sub(recv)) as f64 / self.sent as f64
        };
        let mut s = format!(
            "--- {dest} bping statistics ---\n{} sent, {recv} received, {loss:.0}% loss, time {}ms\n",
            self.sent,
            elapsed.as_millis()
        );
        if recv > 0 {
            let min = self.rtts.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = self.rtts.iter().cloned().fold(0.0, f64::max);
            let avg = self.rtts.iter().sum::<f64>() / recv as f64;
            let var = self.rtts.iter().map(|r| (r - avg).powi(2)).sum::<f64>() / recv as f64;
            s += &format!(
                "rtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{:.3} ms\n",
                var.sqrt()
            );
        }
        s
    }
}

async fn run(cli: Cli) -> Result<bool> {
    if cli.size < HEADER {
        bail!("--size must be at least {HEADER}");
    }
    let dest = echo_eid(&cli.dest, cli.echo_service)?;
    let addr = cli.node.unwrap_or_else(default_node);
    let mut client = AgentClient::connect(&addr).await?;
    let info = client.info().await?;
    let mut rng = rand::thread_rng();
    let mut reg = None;
    let mut me = String::new();
    for _ in 0..20 {
        me = ephemeral(&info.node_id, &mut rng)?;
        match client.register(&me).await {
            Ok(r) => {
                reg = Some(r);
                break;
            }
            Err(ClientError::Refused(AgentError::AlreadyRegistered(_))) => continue,
            Err(e) => return Err(e).context("cannot register an endpoint"),
        }
    }
    let Some(reg) = reg else {
        bail!("no free ephemeral endpoint after 20 tries");
    };
    let session: u32 = rng.gen();
    println!("BPING {dest} from {me}: {} bytes", cli.size);
    let start = Instant::now();
    let mut stats = Stats {
        sent: 0,
        rtts: Vec::new(),
    };
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut next_send = tokio::time::Instant::now();
    let mut last_deadline: Option<tokio::time::Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let all_sent = cli.count.is_some_and(|c| stats.sent >= c);
        if all_sent {
            if pending.is_empty() {
                break;
            }
            let dl = *last_deadline.get_or_insert(tokio::time::Instant::now() + cli.wait);
            if tokio::time::Instant::now() >= dl {
                break;
            }
        }
        let wake = if all_sent {
            last_deadline.unwrap_or(next_send)
        } else {
            next_send
        };
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep_until(wake) => {
                if !all_sent {
                    let seq = stats.sent as u32 + 1;
                    let mut p = Vec::with_capacity(cli.size);
                    p.extend_from_slice(MAGIC);
                    p.extend_from_slice(&session.to_be_bytes());
                    p.extend_from_slice(&seq.to_be_bytes());
                    p.resize(cli.size, 0);
                    pending.insert(seq, Instant::now());
                    client.send(SendRequest {
                        source: Some(me.clone()),
                        destination: dest.clone(),
                        payload: Bytes::from(p),
                        lifetime_ms: cli.lifetime.as_millis() as u64,
                        priority: Priority::Expedited,
                        report_to: None,
                        requests: StatusRequests::default(),
                        no_fragment: false,
                    }).await?;
                    stats.sent += 1;
                    next_send += cli.interval;
                }
            }
            push = client.next_push() => {
                let (r, d) = push?;
                client.ack(r, d.token).await?;
                let p = &d.payload;
                if p.len() < HEADER || &p[..MAGIC.len()] != MAGIC
                    || p[5..9] != session.to_be_bytes() {
                    continue;
                }
                let seq = u32::from_be_bytes([p[9], p[10], p[11], p[12]]);
                if let Some(t) = pending.remove(&seq) {
                    let rtt = t.elapsed().as_secs_f64() * 1000.0;
                    stats.rtts.push(rtt);
                    println!("{} bytes from {}: seq={seq} time={rtt:.3} ms", p.len(), d.id.source);
                }
            }
        }
    }
    let _ = client.unregister(reg).await;
    print!("{}", stats.summary(&dest, start.elapsed()));
    Ok(!stats.rtts.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bping: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bping: {e:#}");
            ExitCode::FAILURE
        }
    }
}
