//! `dtnd demo`: a built-in Mars-relay scenario, no files needed.
//!
//! Three nodes run in this process, each a full [`Node`] with its own store, engine and LTP
//! engine on a loopback UDP socket: a ground station (`ipn:1`), an orbiting relay (`ipn:2`) and
//! a surface node (`ipn:3`). One contact plan, shared through an absolute `@` reference line,
//! says the relay sees the ground only from +0 s to +10 s and from +22 s to +32 s, and the
//! surface only from +6 s to +18 s and from +28 s to +46 s, with one-way light times of 1 s
//! (ground–relay) and 2 s (relay–surface). Every link is emulated: its light time as delay, a
//! few percent random loss, and down outside its contacts. The nodes derive their LTP timers
//! from the plan's light times and their pacing from the contact rates, and route by Contact
//! Graph Routing.
//!
//! An application on the ground sends a bundle every 200 ms for 26 s to an application on the
//! surface; bundles sent while no route is open wait in the stores. The demo prints, every two
//! seconds, what was sent and delivered, the bundles waiting in each node, which links are up
//! and LTP retransmissions, and at the end the delivery count, end-to-end latency (median,
//! p99), retransmissions and the most bundles that waited for contacts.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::api::{AgentCommand, Delivery, NodeStats, Priority, SendRequest, StatusRequests};
use crate::config::{
    Config, ContactEndPolicy, ContactPlanSection, Link, LtpLink, LtpSection, LtpTuning,
    NeighbourConfig, PlanSource,
};
use crate::daemon::{dtn_now, Node};
use crate::routing::contact_plan::format_utc_time;

/// Demo settings (`dtnd demo --help`).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Random loss on every link, 0..1.
    pub loss: f64,
    /// Interval between two bundles sent by the ground application.
    pub send_interval: Duration,
    /// For how long the ground application sends (seconds after the first contact).
    pub send_for: Duration,
    /// Payload size of each bundle, bytes (at least 16).
    pub payload: usize,
    /// Stop waiting for deliveries this long after the start of the plan.
    pub deadline: Duration,
    /// Print progress every this often.
    pub progress_every: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            loss: 0.03,
            send_interval: Duration::from_millis(200),
            send_for: Duration::from_secs(26),
            payload: 1500,
            deadline: Duration::from_secs(55),
            progress_every: Duration::from_secs(2),
        }
    }
}

/// What the demo measured.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Bundles sent by the ground application.
    pub sent: usize,
    /// Distinct bundles delivered to the surface application.
    pub delivered: usize,
    /// Deliveries of a bundle already delivered (must be 0).
    pub duplicates: usize,
    /// End-to-end latencies of the delivered bundles, ms, sorted.
    pub latencies_ms: Vec<u64>,
    /// LTP retransmissions (data segments resent) over all nodes.
    pub retransmissions: u64,
    /// Most bundles waiting for a contact in all nodes at one progress sample.
    pub max_waiting: u64,
    /// Wall-clock time from the start of the plan to the end.
    pub elapsed: Duration,
}

impl DemoReport {
    /// The `p`-quantile (0..=1) of the latencies, ms.
    pub fn latency_quantile(&self, p: f64) -> Option<u64> {
        let n = self.latencies_ms.len();
        if n == 0 {
            return None;
        }
        let i = ((n as f64 - 1.0) * p).round() as usize;
        self.latencies_ms.get(i.min(n - 1)).copied()
    }
}

/// Node numbers, names and LTP engine ids of the three demo nodes.
const NODES: [(u64, &str); 3] = [(1, "ground"), (2, "relay"), (3, "surface")];
/// Contact rate on every link, bytes/s.
const RATE: u64 = 125_000;
/// Service number of the receiving application on the surface.
const SERVICE: u64 = 1;

/// The demo's contact plan: both directions of each link, times relative to `reference`.
pub fn demo_plan(reference: u64) -> String {
    let mut plan = format!(
        "# dtnd demo: ground ipn:1, relay ipn:2, surface ipn:3\n@ {}\n",
        format_utc_time(reference)
    );
    let windows = [(1, 2, [(0, 10), (22, 32)]), (2, 3, [(6, 18), (28, 46)])];
    for (a, b, spans) in windows {
        for (s, e) in spans {
            plan += &format!("a contact +{s} +{e} {a} {b} {RATE}\n");
            plan += &format!("a contact +{s} +{e} {b} {a} {RATE}\n");
        }
    }
    plan += "a range +0 +3600 1 2 1\n";
    plan += "a range +0 +3600 2 3 2\n";
    plan
}

/// One-way light time of the link between demo nodes `a` and `b`, seconds.
fn owlt(a: u64, b: u64) -> u64 {
    if a.min(b) == 1 {
        1
    } else {
        2
    }
}

fn free_udp_port() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a loopback UDP socket")?;
    Ok(s.local_addr()?)
}

fn node_config(
    index: usize,
    ltp_addrs: &[SocketAddr; 3],
    plan: &str,
    loss: f64,
) -> anyhow::Result<Config> {
    let (node, _) = NODES[index];
    let mut c = Config::for_test(&format!("ipn:{node}.0"));
    c.agent.tcp = None;
    c.metrics = None;
    c.tcpcl_listen = None;
    c.status_reports.enabled = false;
    c.ltp = Some(LtpSection::new(node, ltp_addrs[index]));
    for (j, &(peer, name)) in NODES.iter().enumerate() {
        if node.abs_diff(peer) != 1 {
            continue;
        }
        let delay = owlt(node, peer);
        let emulation = format!("delay={delay}s,loss={}%", loss * 100.0)
            .parse()
            .map_err(|e| anyhow::anyhow!("demo emulation profile: {e}"))?;
        c.neighbours.push(NeighbourConfig {
            name: name.to_string(),
            node: format!("ipn:{peer}.0"),
            link: Link::Ltp(LtpLink {
                engine: peer,
                addr: ltp_addrs[j],
                owlt: None,
                rate: None,
                green: false,
                segment_size: 1400,
                window: 16,
                aggregation_size: 16 * 1024,
                aggregation_time: Duration::from_millis(20),
                max_bytes_in_flight: None,
                tuning: LtpTuning::default(),
            }),
            max_bundle_size: 0,
            accept_primary_without_crc: false,
            emulation: Some(emulation),
        });
    }
    c.contact_plan = Some(ContactPlanSection {
        source: PlanSource::Inline(plan.to_string()),
        reload_check: None,
        on_contact_end: ContactEndPolicy::Suspend,
        alternate_routes: 1,
        hdtn_unix_time: false,
    });
    Ok(c)
}

async fn stats(node: &Node) -> NodeStats {
    node.handle()
        .request(|reply| AgentCommand::Stats { reply })
        .await
        .unwrap_or_default()
}

/// Whether neighbour `name` of a node is up, from its stats.
fn link_up(s: &NodeStats, name: &str) -> bool {
    s.metrics.iter().any(|m| {
        m.name == "dtn_neighbour_up"
            && m.value > 0.0
            && m.labels.iter().any(|(k, v)| k == "neighbour" && v == name)
    })
}

/// Runs the demo, printing progress and the summary to `out`.
pub async fn run(opts: &DemoOptions, out: &mut (dyn Write + Send)) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(opts.payload >= 16, "payload must be at least 16 bytes");
    anyhow::ensure!((0.0..1.0).contains(&opts.loss), "loss must be in 0..1");
    // The plan starts at the next whole second plus a margin for starting the nodes.
    let reference = (dtn_now() / 1000 + 2) * 1000;
    let plan = demo_plan(reference);
    let ltp_addrs = [free_udp_port()?, free_udp_port()?, free_udp_port()?];
    let mut nodes = Vec::new();
    for (i, (_, name)) in NODES.iter().enumerate() {
        let config = node_config(i, &ltp_addrs, &plan, opts.loss)?;
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting the {name} node"))?;
        nodes.push(node);
    }
    writeln!(
        out,
        "dtnd demo: ground ipn:1 -- relay ipn:2 -- surface ipn:3 over LTP on loopback UDP\n\
         contacts ground<->relay +0..+10 s, +22..+32 s (light time 1 s); \
         relay<->surface +6..+18 s, +28..+46 s (light time 2 s); {:.0}% loss on every link\n\
         the ground sends a {} B bundle every {} ms for {} s to ipn:3.{SERVICE}\n",
        opts.loss * 100.0,
        opts.payload,
        opts.send_interval.as_millis(),
        opts.send_for.as_secs(),
    )?;

    // The surface application.
    let (deliveries_tx, mut deliveries) = mpsc::channel::<Delivery>(256);
    let surface = nodes[2].handle();
    let registration = surface
        .request(|reply| AgentCommand::Register {
            endpoint: format!("ipn:3.{SERVICE}"),
            deliveries: deliveries_tx,
            reply,
        })
        .await??;

    let start_wall = Instant::now() + Duration::from_millis(reference.saturating_sub(dtn_now()));
    tokio::time::sleep_until(start_wall.into()).await;
    let ground = nodes[0].handle();
    let mut report = DemoReport::default();
    let mut seen = BTreeSet::new();
    let mut next_send = Instant::now();
    let mut next_progress = Instant::now() + opts.progress_every;
    let send_until = start_wall + opts.send_for;
    let deadline = start_wall + opts.deadline;
    let total = (opts.send_for.as_millis() / opts.send_interval.as_millis().max(1)) as usize;
    loop {
        let now = Instant::now();
        if now >= deadline || (now >= send_until && report.delivered >= report.sent) {
            break;
        }
        if now >= next_send && now < send_until && report.sent < total {
            let mut payload = vec![0u8; opts.payload];
            payload[..8].copy_from_slice(&dtn_now().to_be_bytes());
            payload[8..16].copy_from_slice(&(report.sent as u64).to_be_bytes());
            let request = SendRequest {
                source: Some("ipn:1.1".into()),
                destination: format!("ipn:3.{SERVICE}"),
                payload: Bytes::from(payload),
                lifetime_ms: 3_600_000,
                priority: Priority::Normal,
                report_to: None,
                requests: StatusRequests::default(),
                no_fragment: false,
            };
            ground
                .request(|reply| AgentCommand::Send { request, reply })
                .await?
                .context("the ground node refused a send")?;
            report.sent += 1;
            next_send += opts.send_interval;
        }
        if now >= next_progress {
            next_progress += opts.progress_every;
            let s = [
                stats(&nodes[0]).await,
                stats(&nodes[1]).await,
                stats(&nodes[2]).await,
            ];
            let waiting: Vec<u64> = s
                .iter()
                .map(|s| s.total("dtn_bundles_waiting").unwrap_or(0.0) as u64)
                .collect();
            let queued: u64 = s
                .iter()
                .map(|s| s.total("dtn_neighbour_queued").unwrap_or(0.0) as u64)
                .sum();
            report.max_waiting = report.max_waiting.max(waiting.iter().sum::<u64>() + queued);
            let retx: f64 = s
                .iter()
                .filter_map(|s| s.total("dtn_ltp_retransmissions_total"))
                .sum();
            let updown = |up: bool| if up { "up" } else { "down" };
            writeln!(
                out,
                "+{:>2} s  sent {:>3}  delivered {:>3}  waiting ground {:>3} relay {:>3}  \
                 links ground-relay {:<4} relay-surface {:<4}  LTP retransmissions {}",
                now.saturating_duration_since(start_wall).as_secs(),
                report.sent,
                report.delivered,
                waiting[0],
                waiting[1],
                updown(link_up(&s[0], "relay")),
                updown(link_up(&s[1], "surface")),
                retx as u64,
            )?;
        }
        let wake = [next_send, next_progress, deadline]
            .into_iter()
            .filter(|t| *t > now)
            .min()
            .unwrap_or(now + Duration::from_millis(10));
        tokio::select! {
            d = deliveries.recv() => {
                let Some(d) = d else { anyhow::bail!("the surface node stopped delivering") };
                let at = dtn_now();
                let sent_at = u64::from_be_bytes(d.payload[..8].try_into()?);
                let seq = u64::from_be_bytes(d.payload[8..16].try_into()?);
                if seen.insert(seq) {
                    report.delivered += 1;
                    report.latencies_ms.push(at.saturating_sub(sent_at));
                } else {
                    report.duplicates += 1;
                }
                let token = d.token;
                // Not awaited: the answer only says the delivered-id record is on disk.
                let (reply, _answer) = tokio::sync::oneshot::channel();
                surface
                    .command(AgentCommand::Ack { registration, token, reply })
                    .await?;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    report.elapsed = start_wall.elapsed();
    report.latencies_ms.sort_unstable();
    for n in &nodes {
        report.retransmissions += stats(n)
            .await
            .total("dtn_ltp_retransmissions_total")
            .unwrap_or(0.0) as u64;
    }
    for n in nodes {
        n.shutdown().await?;
    }
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0));
    writeln!(
        out,
        "\ndelivered {}/{} bundles ({} duplicates) in {:.1} s\n\
         end-to-end latency: median {}, p99 {}, max {}\n\
         LTP retransmissions: {}\n\
         most bundles waiting for contacts at once: {}",
        report.delivered,
        report.sent,
        report.duplicates,
        report.elapsed.as_secs_f64(),
        ms(report.latency_quantile(0.5)),
        ms(report.latency_quantile(0.99)),
        ms(report.latencies_ms.last().copied()),
        report.retransmissions,
        report.max_waiting,
    )?;
    Ok(report)
}
