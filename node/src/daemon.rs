//! The node daemon: wires the store, the RFC 9171 §5 bundle engine, the convergence-layer
//! adapters (RFC 9174 TCPCLv4, UDP, RFC 5326 LTP), the agent servers and the metrics server.
//!
//! [`Node::start`] opens the store, builds the [`BundleEngine`], starts the adapters and
//! servers, and spawns ONE core task that owns the engine. The core task `select!`s over agent
//! commands, bundles received by the adapters, transfer outcomes, the engine's next deadline
//! and shutdown; after every input it drains the engine's actions (transmit to an adapter,
//! deliver to a registration). Nothing is global: several nodes run in one process.
//!
//! Custody (RFC 9171 §5 "retention"; DESIGN.md principle 4): a bundle accepted from an
//! application is acknowledged (the agent's reply), and a bundle received over TCPCL or LTP is
//! acknowledged (the final XFER_ACK; the LTP report that completes the red part, held by the
//! engine's `confirm_red_parts` handshake), through [`convergence::adapter::CustodyAck`], only
//! after its write is durable: [`Store::on_persisted`] runs the acknowledgement from the
//! thread that settles the write (the group-commit thread after its flush; the core itself
//! when a held insert leaves the store), with no task or future per bundle and no wait in the
//! core loop. A bundle in transit is stored as a held insert
//! ([`Store::insert_held`](crate::store::Store::insert_held)): its wait also ends when it left
//! the store before it was written, i.e. once the next hop confirmed it (or the application
//! acknowledged it); the core handles transfer outcomes before new input, so that such
//! confirmations are not queued behind new bundles. A refusal by the engine (store quota)
//! becomes XFER_REFUSE "No Resources" (over LTP: a cancel of the block), a bundle the engine
//! discards as invalid (RFC 9171 §5.6) XFER_REFUSE "Not Acceptable". UDP has no
//! acknowledgement at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use convergence::adapter::{CustodyAck, Refusal};
use convergence::emulation::{LinkGate, LtpImpairment};
use convergence::ltp_adapter::{
    LtpAdapter, LtpAdapterConfig, SpanPolicy, BUNDLE_PROTOCOL_CLIENT_SERVICE,
};
use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
use convergence::udp::{UdpAdapter, UdpConfig};
use convergence::{
    AdapterChannels, ConvergenceLayer, CounterSnapshot, FailureReason, Outcome, OutcomeReport,
    PeerAddr, Received, SendError,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::api::{
    AgentCommand, AgentError, Delivery, DtnMillis, Metric, MetricKind, NodeHandle, NodeInfo,
    NodeStats, RegistrationId,
};
use crate::config::{Config, ContactEndPolicy, ContactPlanSection, DurabilityMode, Link};
use crate::links::{LinkStates, LinkTarget, LtpSpanControl};
use crate::plan_source::PlanRead;
use crate::processing::{
    Action, BundleEngine, EngineConfig, Neighbour, NeighbourId, Reception, StaticRoute,
    StatusReportPolicy,
};
use crate::store::{Durability, Store, StoreConfig};

use crate::agent::server as agent_server;

/// Milliseconds between the Unix epoch and the DTN epoch 2000-01-01T00:00:00Z (RFC 9171 §4.2.6).
pub const DTN_EPOCH_UNIX_MS: u64 = 946_684_800_000;
/// Capacity of the agent command channel.
pub const COMMAND_QUEUE: usize = 1024;
/// Capacity of the channel of bundles received by the adapters (back-pressure beyond).
pub const RECEIVED_QUEUE: usize = 1024;
/// Capacity of the channel of transfer outcomes.
pub const OUTCOME_QUEUE: usize = 4096;
/// Transfers in flight per TCPCL session, and received bundles awaiting their custody verdict.
pub const TCPCL_WINDOW: usize = 1024;
/// Largest agent frame beyond the bundle size limit (headers of a send request).
pub const AGENT_FRAME_OVERHEAD: usize = 64 * 1024;

/// The current DTN time: milliseconds since 2000-01-01T00:00:00Z (RFC 9171 §4.2.6), from the
/// system clock (0 before the DTN epoch).
pub fn dtn_now() -> DtnMillis {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    unix.saturating_sub(DTN_EPOCH_UNIX_MS)
}

/// The addresses a running node actually bound (the `dtnd ready` line's JSON object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Addresses {
    /// The node ID.
    pub node_id: String,
    /// Agent protocol TCP listener.
    pub agent: Option<SocketAddr>,
    /// Agent protocol Unix socket.
    pub unix: Option<PathBuf>,
    /// Metrics HTTP listener.
    pub metrics: Option<SocketAddr>,
    /// TCPCL listener.
    pub tcpcl: Option<SocketAddr>,
    /// UDP convergence layer socket.
    pub udp: Option<SocketAddr>,
    /// LTP engine socket.
    pub ltp: Option<SocketAddr>,
}

impl Addresses {
    /// The JSON object of the ready line (`{"node_id":...,"agent":"127.0.0.1:4550",...}`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// How the core reaches one neighbour.
#[derive(Clone, Debug)]
enum Target {
    Tcpcl(SocketAddr),
    Udp(SocketAddr),
    Ltp(u64),
}

/// The running adapters.
#[derive(Clone, Default)]
struct Adapters {
    tcpcl: Option<Arc<TcpclAdapter>>,
    udp: Option<Arc<UdpAdapter>>,
    ltp: Option<Arc<LtpAdapter>>,
    /// Gates of emulated links driven by the contact plan, by neighbour name.
    gates: HashMap<String, LinkGate>,
}

impl Adapters {
    /// A new gate (up) for neighbour `name`'s emulated link, kept for the link control.
    fn new_gate(&mut self, name: &str) -> LinkGate {
        let g = LinkGate::new(true);
        self.gates.insert(name.to_string(), g.clone());
        g
    }

    fn shutdown(&self) {
        if let Some(a) = &self.tcpcl {
            a.shutdown();
        }
        if let Some(a) = &self.udp {
            a.shutdown();
        }
        if let Some(a) = &self.ltp {
            a.shutdown();
        }
    }

    fn counters(&self) -> Vec<(&'static str, CounterSnapshot)> {
        let mut v = Vec::new();
        if let Some(a) = &self.tcpcl {
            v.push((a.name(), a.counters()));
        }
        if let Some(a) = &self.udp {
            v.push((a.name(), a.counters()));
        }
        if let Some(a) = &self.ltp {
            v.push((a.name(), a.counters()));
        }
        v
    }
}

/// Requests to the core that do not come from applications.
enum Control {
    /// Read the contact plan again and replace the router (SIGHUP, file change); the reply
    /// is the number of contacts, or why the plan was refused (the old one stays).
    ReloadPlan(tokio::sync::oneshot::Sender<Result<usize, String>>),
}

/// The running contact plan: where it comes from and what was last read.
struct PlanState {
    section: ContactPlanSection,
    /// Relative plan times count from here (the node's start).
    reference: DtnMillis,
    /// This node's ipn node number.
    local: u64,
    /// The file's modification time and length when it was last read.
    modified: Option<crate::plan_source::FileStamp>,
    /// Contacts in the running plan.
    contacts: usize,
    /// Reloads that replaced the plan.
    reloads: u64,
    /// Reloads refused (bad plan; the old one stayed).
    reloads_failed: u64,
}

/// A running node (see the module docs).
pub struct Node {
    addresses: Addresses,
    handle: NodeHandle,
    control: mpsc::Sender<Control>,
    shutdown_tx: watch::Sender<bool>,
    core: Option<JoinHandle<()>>,
    servers: Vec<JoinHandle<()>>,
    adapters: Adapters,
    store: Store,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

fn store_config(config: &Config) -> StoreConfig {
    StoreConfig {
        path: config.store.path.clone(),
        durability: match config.store.durability {
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Group => Durability::GroupCommit {
                max_delay: config.store.group_commit,
            },
            DurabilityMode::Memory => Durability::Memory,
        },
        quota_bytes: config.store.quota_bytes,
        quota_bundles: config.store.quota_bundles,
    }
}

fn send_failure(e: SendError) -> FailureReason {
    match e {
        SendError::QueueFull => FailureReason::Refused("adapter queue full".into()),
        SendError::UnknownPeer(p) => FailureReason::Unreachable(format!("unknown peer {p:?}")),
        SendError::TooLarge { size, limit } => FailureReason::TooLarge { size, limit },
        SendError::Shutdown => FailureReason::Shutdown,
    }
}

impl Node {
    /// Starts a node: store, engine, adapters, agent and metrics servers, core task. Every
    /// listener is bound when this returns (see [`Node::addresses`]).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        let node_eid: bpv7::Eid = config
            .node_id
            .parse()
            .map_err(|e| anyhow::anyhow!("node_id {:?}: {e}", config.node_id))?;
        let store_cfg = store_config(&config);
        let store = tokio::task::spawn_blocking(move || Store::open(&store_cfg))
            .await
            .context("store open task")?
            .with_context(|| format!("opening the store at {}", config.store.path.display()))?;

        let (received_tx, received_rx) = mpsc::channel(RECEIVED_QUEUE);
        let (outcomes_tx, outcomes_rx) = mpsc::channel(OUTCOME_QUEUE);
        let channels = AdapterChannels {
            received: received_tx,
            outcomes: outcomes_tx,
        };
        let max_bundle = usize::try_from(config.limits.max_bundle_size).unwrap_or(usize::MAX);
        let mut adapters = Adapters::default();
        let started = Self::start_adapters(&config, &channels, max_bundle, &mut adapters).await;
        drop(channels);
        if let Err(e) = started {
            adapters.shutdown();
            if let Some(l) = &adapters.ltp {
                l.ltp().shutdown().await;
            }
            return Err(e);
        }

        // Neighbours as the engine sees them, and how the core reaches them.
        let mut neighbours = Vec::new();
        let mut targets = Vec::new();
        for n in &config.neighbours {
            let node_id: bpv7::Eid = n
                .node
                .parse()
                .map_err(|e| anyhow::anyhow!("neighbour {} node {:?}: {e}", n.name, n.node))?;
            let (target, reliable) = match &n.link {
                Link::Tcpcl(a) => (Target::Tcpcl(*a), true),
                Link::Udp(a) => (Target::Udp(*a), false),
                Link::Ltp(l) => (Target::Ltp(l.engine), !l.green),
            };
            let link_max = match &n.link {
                Link::Udp(_) => Some(convergence::udp::MAX_UDP_PAYLOAD as u64),
                _ => None,
            };
            let configured = (n.max_bundle_size > 0).then_some(n.max_bundle_size);
            let max_bundle_size = match (configured, link_max) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            neighbours.push(Neighbour {
                name: n.name.clone(),
                node_id: Some(node_id.node_id()),
                max_bundle_size,
                reliable,
                max_in_flight: config.limits.max_in_flight,
                accept_primary_without_crc: n.accept_primary_without_crc,
                // LTP spans are paced by the LTP engine at the contact's rate (see `links`).
                pace_at_contact_rate: !matches!(n.link, Link::Ltp(_)),
            });
            targets.push(target);
        }
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                let via = config.neighbours.iter().position(|n| n.name == r.via)?;
                Some(StaticRoute {
                    pattern: r.dest.clone(),
                    via: NeighbourId(via),
                })
            })
            .collect();
        let started_at = dtn_now();
        let mut plan_state = None;
        let mut router = None;
        if let Some(section) = &config.contact_plan {
            let local = match node_eid {
                bpv7::Eid::Ipn { node, .. } | bpv7::Eid::Ipn3 { node, .. } => node,
                _ => {
                    adapters.shutdown();
                    anyhow::bail!("a contact plan needs an ipn node_id");
                }
            };
            let s = section.clone();
            let read = tokio::task::spawn_blocking(move || {
                crate::plan_source::read_settled(&s, started_at)
            })
            .await
            .context("contact plan read task")?;
            let (plan, stamp) = match read {
                Some(PlanRead { plan: Ok(p), stamp }) => (p, stamp),
                Some(PlanRead { plan: Err(e), .. }) => {
                    adapters.shutdown();
                    anyhow::bail!("contact plan: {e}");
                }
                None => {
                    adapters.shutdown();
                    anyhow::bail!("contact plan: the file kept changing while it was read");
                }
            };
            let contacts = plan.contact_count();
            info!(contacts, "contact plan loaded");
            router = Some(crate::plan_source::router(section, local, plan));
            plan_state = Some(PlanState {
                section: section.clone(),
                reference: started_at,
                local,
                modified: stamp,
                contacts,
                reloads: 0,
                reloads_failed: 0,
            });
        }
        let engine_config = EngineConfig {
            node_id: node_eid.clone(),
            neighbours,
            routes,
            router,
            status_reports: StatusReportPolicy {
                enabled: config.status_reports.enabled,
                max_per_second: config.status_reports.max_per_second,
            },
            max_bundle_size: config.limits.max_bundle_size,
            max_reassembly_bytes: config.limits.max_reassembly_bytes,
            echo_service: config.echo_service,
            default_hop_limit: config.limits.hop_limit,
            retry_delay_ms: u64::try_from(config.limits.retry_delay.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            delivery_window: config.limits.delivery_window,
        };
        let engine_store = store.clone();
        let engine = tokio::task::spawn_blocking(move || {
            BundleEngine::new(engine_config, engine_store, dtn_now())
        })
        .await
        .context("engine start task")?;
        let engine = match engine {
            Ok(e) => e,
            Err(e) => {
                adapters.shutdown();
                return Err(anyhow::anyhow!("starting the bundle engine: {e}"));
            }
        };

        // Listeners of the agent and metrics servers.
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (control_tx, control_rx) = mpsc::channel(16);
        let handle = NodeHandle::new(cmd_tx);
        let mut servers = Vec::new();
        let agent_cfg = || agent_server::AgentServerConfig {
            max_frame: max_bundle.saturating_add(AGENT_FRAME_OVERHEAD),
            delivery_buffer: config.limits.delivery_window.max(1),
            ..Default::default()
        };
        let bound = async {
            let mut agent = None;
            if let Some(addr) = config.agent.tcp {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the agent TCP listener {addr}"))?;
                agent = Some(l.local_addr()?);
                servers.push(tokio::spawn(agent_server::serve_tcp(
                    l,
                    handle.clone(),
                    agent_cfg(),
                    shutdown_rx.clone(),
                )));
            }
            if let Some(path) = &config.agent.unix {
                // A socket file left by a previous run that is not answering is replaced.
                if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                let l = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding the agent Unix socket {}", path.display()))?;
                servers.push(tokio::spawn(agent_server::serve_unix(
                    l,
                    handle.clone(),
                    agent_cfg(),
                    shutdown_rx.clone(),
                )));
            }
            let mut metrics = None;
            if let Some(addr) = config.metrics {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener {addr}"))?;
                metrics = Some(l.local_addr()?);
                servers.push(tokio::spawn(crate::metrics::serve(
                    l,
                    handle.clone(),
                    shutdown_rx.clone(),
                )));
            }
            anyhow::Ok((agent, metrics))
        }
        .await;
        let (agent, metrics) = match bound {
            Ok(b) => b,
            Err(e) => {
                let _ = shutdown_tx.send(true);
                adapters.shutdown();
                if let Some(l) = &adapters.ltp {
                    l.ltp().shutdown().await;
                }
                return Err(e);
            }
        };

        let addresses = Addresses {
            node_id: config.node_id.clone(),
            agent,
            unix: config.agent.unix.clone(),
            metrics,
            tcpcl: adapters.tcpcl.as_ref().and_then(|a| a.local_addr()),
            udp: adapters.udp.as_ref().map(|a| a.local_addr()),
            ltp: adapters.ltp.as_ref().map(|a| a.ltp().local_addr()),
        };

        let mut by_addr = HashMap::new();
        let mut by_node = Vec::new();
        for (i, (n, t)) in config.neighbours.iter().zip(&targets).enumerate() {
            let key = match t {
                Target::Tcpcl(a) => (convergence::tcpcl::driver::CLA_NAME, PeerAddr::Socket(*a)),
                Target::Udp(a) => (convergence::udp::NAME, PeerAddr::Socket(*a)),
                Target::Ltp(e) => (convergence::ltp_adapter::NAME, PeerAddr::LtpEngine(*e)),
            };
            by_addr.insert(key, NeighbourId(i));
            if let Ok(eid) = n.node.parse::<bpv7::Eid>() {
                by_node.push((eid.node_id(), NeighbourId(i)));
            }
        }
        // Contact-driven link control (see `links`).
        let link_targets = config
            .neighbours
            .iter()
            .map(|n| LinkTarget {
                name: n.name.clone(),
                ltp: match &n.link {
                    Link::Ltp(l) => Some(LtpSpanControl::for_link(l)),
                    _ => None,
                },
                gate: adapters.gates.get(&n.name).cloned(),
            })
            .collect();
        let (links_tx, links_rx) = watch::channel(vec![None; config.neighbours.len()]);
        let policy = config
            .contact_plan
            .as_ref()
            .map_or(ContactEndPolicy::Suspend, |p| p.on_contact_end);
        let link_task = crate::links::spawn(link_targets, adapters.ltp.clone(), policy, links_rx);
        servers.push(link_task);
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        let core = Core {
            durable: durable_tx,
            links: links_tx,
            plan: plan_state,
            engine,
            store: store.clone(),
            targets,
            adapters: adapters.clone(),
            by_addr,
            by_node,
            registrations: HashMap::new(),
            next_registration: 1,
            info: NodeInfo {
                node_id: config.node_id.clone(),
                version: format!("dtnd {}", env!("CARGO_PKG_VERSION")),
                neighbours: config.neighbours.iter().map(|n| n.name.clone()).collect(),
                registrations: Vec::new(),
            },
        };
        let core = tokio::spawn(core.run(
            cmd_rx,
            control_rx,
            received_rx,
            outcomes_rx,
            durable_rx,
            shutdown_rx,
        ));
        info!(node_id = %config.node_id, addresses = %addresses.to_json(), "node started");
        Ok(Node {
            addresses,
            handle,
            control: control_tx,
            shutdown_tx,
            core: Some(core),
            servers,
            adapters,
            store,
        })
    }

    async fn start_adapters(
        config: &Config,
        channels: &AdapterChannels,
        max_bundle: usize,
        adapters: &mut Adapters,
    ) -> anyhow::Result<()> {
        let has = |f: fn(&Link) -> bool| config.neighbours.iter().any(|n| f(&n.link));
        // With a contact plan, emulated links are down outside their contacts (gates).
        let planned = config.contact_plan.is_some();
        if config.tcpcl_listen.is_some() || has(|l| matches!(l, Link::Tcpcl(_))) {
            let mut t = TcpclConfig::new(config.node_id.clone(), config.tcpcl_listen);
            t.transfer_mru = config.limits.max_bundle_size;
            t.max_bundle_len = max_bundle;
            t.max_queue = t.max_queue.max(config.limits.max_in_flight);
            t.custody_acks = true;
            for n in &config.neighbours {
                if let (Link::Tcpcl(a), Some(p)) = (&n.link, &n.emulation) {
                    t.emulation.push((*a, p.clone()));
                }
            }
            // Custody acks wait for the store's group commit: keep enough transfers in flight
            // per session (both directions) to fill a commit interval.
            t.max_pending_custody = TCPCL_WINDOW;
            t.max_unacked = TCPCL_WINDOW;
            let a = TcpclAdapter::start(t, channels.clone())
                .await
                .with_context(|| format!("starting TCPCL (listen {:?})", config.tcpcl_listen))?;
            adapters.tcpcl = Some(a);
        }
        if let Some(bind) = config.udp_listen {
            let mut u = UdpConfig {
                bind,
                ..UdpConfig::default()
            };
            u.send_queue = u.send_queue.max(config.limits.max_in_flight);
            for n in &config.neighbours {
                if let (Link::Udp(a), Some(p)) = (&n.link, &n.emulation) {
                    u.emulation.push((*a, p.clone()));
                    if planned {
                        u.gates.push((*a, adapters.new_gate(&n.name)));
                    }
                }
            }
            let a = UdpAdapter::bind(u, channels.clone())
                .await
                .with_context(|| format!("binding UDP {bind}"))?;
            adapters.udp = Some(a);
        }
        if let Some(ltp) = &config.ltp {
            let mut ecfg = ltp::EngineConfig {
                max_block_size: (config.limits.max_bundle_size.max(1 << 20)).saturating_mul(2),
                // Custody over LTP: the red part is acknowledged only once every bundle of the
                // block is in the store (the adapter answers the engine when the node has).
                confirm_red_parts: true,
                // Bundles travel as client service 1 (RFC 9171 over LTP, what ION and HDTN
                // use): a session for any other is refused at its first segment (UNREACH).
                client_services: Some(vec![BUNDLE_PROTOCOL_CLIENT_SERVICE]),
                max_reassembly_memory: ltp.max_reassembly_memory,
                max_import_sessions_per_peer: ltp.max_import_sessions,
                accept_unknown_peers: ltp.accept_unknown_peers,
                max_unknown_peers: ltp.max_unknown_peers,
                ..Default::default()
            };
            ecfg.seed = ltp.engine_id ^ dtn_now();
            let mut engine = ltp::Engine::new(ltp.engine_id, ecfg);
            let mut driver = ltp::driver::DriverConfig::new(ltp.listen);
            // An unknown engine is answered where its segments come from.
            driver.learn_peer_addresses = ltp.accept_unknown_peers;
            driver.max_learned_peers = ltp.max_unknown_peers;
            let mut policies = Vec::new();
            let mut impairment = LtpImpairment::empty();
            for n in &config.neighbours {
                let Link::Ltp(l) = &n.link else { continue };
                // Until the plan says otherwise: the configuration's settings alone.
                engine.add_span(l.engine, LtpSpanControl::for_link(l).span_for(None));
                driver.spans.push((l.engine, l.addr));
                if let Some(p) = &n.emulation {
                    let gate = planned.then(|| adapters.new_gate(&n.name));
                    impairment.add_link(
                        l.addr,
                        p.clone(),
                        l.engine ^ ltp.engine_id.rotate_left(32),
                        std::time::Instant::now(),
                        gate,
                    );
                }
                policies.push(SpanPolicy {
                    engine: l.engine,
                    green: l.green,
                    aggregation_size: l.aggregation_size,
                    aggregation_time: l.aggregation_time,
                });
            }
            if !impairment.links().is_empty() {
                driver.impairment = Some(Box::new(impairment));
            }
            let acfg = LtpAdapterConfig {
                spans: policies,
                max_bundle_size: max_bundle,
                ..Default::default()
            };
            let a =
                LtpAdapter::spawn(engine, driver, acfg, channels.clone()).with_context(|| {
                    format!("starting LTP engine {} on {}", ltp.engine_id, ltp.listen)
                })?;
            adapters.ltp = Some(a);
        }
        Ok(())
    }

    /// The addresses the node bound.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// Reads the contact plan again and routes by it from now on (what SIGHUP does). Returns
    /// the number of contacts, or why the plan was refused, in which case the running plan is
    /// unchanged.
    pub async fn reload_plan(&self) -> Result<usize, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::ReloadPlan(tx))
            .await
            .map_err(|_| "the node is stopping".to_string())?;
        // Or the core's end, as in `NodeHandle::reply`.
        crate::api::answer_or_closed(rx, &self.control)
            .await
            .ok_or_else(|| "the node is stopping".to_string())?
    }

    /// A handle for agent commands (what the agent servers use).
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops accepting, stops the adapters and the core, and flushes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop().await
    }

    /// Each stage is timed ([`stop_stage`]): one that runs long is named in a warning, so
    /// that a shutdown that hangs says where.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let _ = self.shutdown_tx.send(true);
        self.adapters.shutdown();
        if let Some(core) = self.core.take() {
            if let Err(e) = stop_stage("core task", core).await {
                warn!("core task ended abnormally: {e}");
            }
        }
        let servers = std::mem::take(&mut self.servers);
        stop_stage("agent and metrics servers", async move {
            for s in servers {
                match tokio::time::timeout(Duration::from_secs(5), s).await {
                    Ok(_) => {}
                    Err(_) => debug!("a server did not stop in time"),
                }
            }
        })
        .await;
        if let Some(l) = &self.adapters.ltp {
            stop_stage("LTP driver", l.ltp().shutdown()).await;
        }
        if let Some(path) = &self.addresses.unix {
            let _ = std::fs::remove_file(path);
        }
        let store = self.store.clone();
        stop_stage(
            "store flush",
            tokio::task::spawn_blocking(move || store.flush()),
        )
        .await
        .context("store flush task")?
        .context("flushing the store")?;
        info!(node_id = %self.addresses.node_id, "node stopped");
        Ok(())
    }
}

/// A stage of [`Node::stop`] taking longer than this is named in a warning (it goes on
/// waiting: what it waits for, the store's flush above all, must not be cut short).
const SLOW_STOP_STAGE: Duration = Duration::from_secs(5);

/// Runs one stage of [`Node::stop`], with a warning naming it if it takes longer than
/// [`SLOW_STOP_STAGE`] and a debug line with its duration.
async fn stop_stage<F: std::future::Future>(stage: &str, f: F) -> F::Output {
    let started = std::time::Instant::now();
    let mut f = std::pin::pin!(f);
    let out = match tokio::time::timeout(SLOW_STOP_STAGE, f.as_mut()).await {
        Ok(out) => out,
        Err(_) => {
            warn!("stopping: the {stage} has not stopped after {SLOW_STOP_STAGE:?}; waiting on");
            f.await
        }
    };
    debug!(elapsed = ?started.elapsed(), "stopping: {stage} done");
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        // A node dropped without `shutdown` still stops its tasks (the store is flushed by
        // its own group commit).
        let _ = self.shutdown_tx.send(true);
        self.adapters.shutdown();
    }
}

/// The core task: owns the engine (see the module docs).
struct Core {
    /// Where store callbacks hand back the tokens of [`Action::AwaitDurable`] (unbounded:
    /// one token per deferred piece of work, each owned by a stored bundle).
    durable: mpsc::UnboundedSender<(u64, bool)>,
    /// Plan-driven link states, published to the link control task.
    links: watch::Sender<LinkStates>,
    /// The contact plan, if configured (for reloads).
    plan: Option<PlanState>,
    engine: BundleEngine,
    store: Store,
    targets: Vec<Target>,
    adapters: Adapters,
    by_addr: HashMap<(&'static str, PeerAddr), NeighbourId>,
    by_node: Vec<(bpv7::Eid, NeighbourId)>,
    registrations: HashMap<RegistrationId, (String, mpsc::Sender<Delivery>)>,
    next_registration: RegistrationId,
    info: NodeInfo,
}

/// Most inputs of one kind handled before the core drains the engine's actions again.
const BATCH: usize = 64;

impl Core {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<AgentCommand>,
        mut control: mpsc::Receiver<Control>,
        mut received: mpsc::Receiver<Received>,
        mut outcomes: mpsc::Receiver<OutcomeReport>,
        mut durable: mpsc::UnboundedReceiver<(u64, bool)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let check_every = self
            .plan
            .as_ref()
            .and_then(|p| p.section.reload_check)
            .unwrap_or(Duration::from_secs(3600));
        let mut plan_check = tokio::time::interval(check_every);
        plan_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        plan_check.reset();
        loop {
            let mut reload = None;
            let mut check_file = false;
            // Completions first: an outcome releases custody (and, for a bundle in transit,
            // acknowledges it upstream), so a loaded node finishes what it has before it takes
            // in more. Bounded by the transfers in flight.
            while let Ok(o) = outcomes.try_recv() {
                self.outcome(o);
            }
            while let Ok((token, ok)) = durable.try_recv() {
                self.engine.durable(token, ok, dtn_now());
            }
            self.drain_actions();
            let deadline = self.engine.poll_timeout().map(|t| {
                let now = dtn_now();
                tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now))
            });
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => break,
                Some(o) = outcomes.recv() => {
                    self.outcome(o);
                    for _ in 1..BATCH {
                        let Ok(o) = outcomes.try_recv() else { break };
                        self.outcome(o);
                    }
                }
                Some((token, ok)) = durable.recv() => {
                    self.engine.durable(token, ok, dtn_now());
                }
                Some(cmd) = commands.recv() => {
                    self.command(cmd);
                    for _ in 1..BATCH {
                        let Ok(c) = commands.try_recv() else { break };
                        self.command(c);
                    }
                }
                Some(r) = received.recv() => {
                    self.received(r);
                    for _ in 1..BATCH {
                        let Ok(r) = received.try_recv() else { break };
                        self.received(r);
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.engine.handle_timeout(dtn_now());
                }
                Some(c) = control.recv() => reload = Some(c),
                _ = plan_check.tick(), if self.plan.as_ref().is_some_and(|p| p.section.reload_check.is_some()) => {
                    check_file = true;
                }
            }
            // Awaited outside `select!` (its output holds a non-`Send` borrow of `shutdown`).
            if let Some(Control::ReloadPlan(reply)) = reload {
                let r = self.reload_plan().await;
                let _ = reply.send(r);
            }
            if check_file {
                self.check_plan_file().await;
            }
        }
        // Answer what is still queued so that no client waits forever.
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            refuse_command(cmd);
        }
        self.registrations.clear();
        debug!("core task stopped");
    }

    /// Reads the plan again; on success the engine routes by it (bookings of the old plan are
    /// dropped, waiting and queued bundles are routed again), on failure nothing changes. A
    /// file that keeps changing while it is read (written in place) is not applied: the next
    /// check reads it again.
    async fn reload_plan(&mut self) -> Result<usize, String> {
        let Some(p) = &mut self.plan else {
            return Err("no [contact_plan] is configured".into());
        };
        let section = p.section.clone();
        let reference = p.reference;
        let read = tokio::task::spawn_blocking(move || {
            crate::plan_source::read_settled(&section, reference)
        })
        .await
        .map_err(|e| format!("contact plan read task: {e}"))?;
        let Some(PlanRead { plan, stamp }) = read else {
            debug!("contact plan file kept changing while read: read again at the next check");
            return Err("the plan file changed while it was read; try again".into());
        };
        match plan {
            Ok(plan) => {
                p.modified = stamp;
                let n = plan.contact_count();
                p.contacts = n;
                p.reloads += 1;
                let router = crate::plan_source::router(&p.section, p.local, plan);
                self.engine.replace_router(Some(router), dtn_now());
                info!(contacts = n, "contact plan reloaded");
                Ok(n)
            }
            Err(e) => {
                p.modified = stamp;
                p.reloads_failed += 1;
                warn!("contact plan reload refused, the running plan stays: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Reloads the plan if its file's modification time or length changed.
    async fn check_plan_file(&mut self) {
        let Some(p) = &self.plan else { return };
        let now = crate::plan_source::modified(&p.section);
        if now.is_some() && now != p.modified {
            let _ = self.reload_plan().await;
        }
    }

    fn neighbour_of(&self, r: &Received) -> Option<NeighbourId> {
        if let Some(n) = self.by_addr.get(&(r.cla, r.from.clone())) {
            return Some(*n);
        }
        let peer: bpv7::Eid = r.peer_node_id.as_deref()?.parse().ok()?;
        let peer = peer.node_id();
        self.by_node
            .iter()
            .find(|(eid, _)| *eid == peer)
            .map(|(_, n)| *n)
    }

    fn received(&mut self, r: Received) {
        let from = self.neighbour_of(&r);
        let Received {
            peer_node_id,
            bundle,
            custody,
            from: addr,
            cla,
        } = r;
        let reception = self
            .engine
            .receive(from, peer_node_id.as_deref(), bundle, dtn_now());
        match reception {
            Reception::Accepted(ticket) => {
                if let Some(ack) = custody {
                    self.store.on_persisted(ticket, move |r| match r {
                        Ok(()) => ack.accept(),
                        Err(e) => {
                            warn!("store did not persist a received bundle: {e}");
                            ack.refuse(Refusal::Retransmit);
                        }
                    });
                }
            }
            Reception::Consumed => answer(custody, None),
            Reception::Discarded(why) => {
                // RFC 9174 §5.2.4 "Not Acceptable": the sender must not retry it as is.
                debug!(%cla, from = ?addr, "discarded a received bundle: {why}");
                answer(custody, Some(Refusal::NotAcceptable));
            }
            Reception::Refused(why) => {
                debug!(%cla, from = ?addr, "refused a received bundle: {why}");
                answer(custody, Some(Refusal::NoResources));
            }
        }
    }

    fn outcome(&mut self, o: OutcomeReport) {
        let result = match o.outcome {
            Outcome::Transferred => Ok(()),
            Outcome::Failed(r) => Err(r),
        };
        self.engine.transfer_outcome(o.id, result, dtn_now());
    }

    fn command(&mut self, cmd: AgentCommand) {
        let now = dtn_now();
        match cmd {
            AgentCommand::Register {
                endpoint,
                deliveries,
                reply,
            } => {
                let id = self.next_registration;
                self.next_registration += 1;
                // The sender must be known before the engine queues pending deliveries.
                self.registrations
                    .insert(id, (endpoint.clone(), deliveries));
                match self.engine.register(id, &endpoint, now) {
                    Ok(()) => {
                        let _ = reply.send(Ok(id));
                    }
                    Err(e) => {
                        self.registrations.remove(&id);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            AgentCommand::Unregister {
                registration,
                reply,
            } => {
                if self.registrations.remove(&registration).is_some() {
                    self.engine.unregister(registration, now);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(AgentError::UnknownRegistration(registration)));
                }
            }
            AgentCommand::Send { request, reply } => match self.engine.send(request, None, now) {
                Ok((accepted, ticket)) => {
                    self.store.on_persisted(ticket, move |r| {
                        let r = r
                            .map(|()| accepted)
                            .map_err(|e| AgentError::Storage(e.to_string()));
                        let _ = reply.send(r);
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            AgentCommand::Ack {
                registration,
                token,
                reply,
            } => match self.engine.ack_delivery(registration, token, now) {
                // Answered once the delivered-id record is on disk: an application that got
                // the answer is never handed the bundle again, even after a crash.
                Ok(Some(ticket)) => self.store.on_persisted(ticket, move |r| {
                    let _ = reply.send(r.map_err(|e| AgentError::Storage(e.to_string())));
                }),
                Ok(None) => {
                    let _ = reply.send(Ok(()));
                }
                // The bundle stays and is delivered again: not an answer the application may
                // take as final.
                Err(e) => {
                    let _ = reply.send(Err(AgentError::Storage(e.to_string())));
                }
            },
            AgentCommand::Info { reply } => {
                let mut info = self.info.clone();
                let mut regs: Vec<String> = self
                    .registrations
                    .values()
                    .map(|(e, _)| e.clone())
                    .collect();
                regs.sort();
                info.registrations = regs;
                let _ = reply.send(info);
            }
            AgentCommand::Stats { reply } => {
                let mut stats = self.engine.stats();
                adapter_metrics(&self.adapters.counters(), &mut stats);
                if let Some(p) = &self.plan {
                    plan_metrics(p, &mut stats);
                }
                match self.adapters.ltp.as_ref().map(|l| l.ltp().clone()) {
                    Some(ltp) => {
                        // The LTP driver answers asynchronously: finish in a small task.
                        tokio::spawn(async move {
                            if let Ok(s) = ltp.stats().await {
                                ltp_metrics(&s, &mut stats);
                            }
                            let _ = reply.send(stats);
                        });
                    }
                    None => {
                        let _ = reply.send(stats);
                    }
                }
            }
        }
    }

    fn drain_actions(&mut self) {
        // Bounded: each action is either handed off or turned into an outcome the engine
        // handles by scheduling a retry later, never by a new immediate transmit loop.
        let mut budget = 100_000usize;
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Transmit {
                    neighbour,
                    transfer,
                    bundle,
                    urgent,
                } => {
                    if let Err(e) = self.transmit(neighbour, transfer, bundle, urgent) {
                        debug!(?neighbour, transfer, "adapter refused a bundle: {e}");
                        self.engine
                            .transfer_outcome(transfer, Err(send_failure(e)), dtn_now());
                    }
                }
                Action::Deliver {
                    registration,
                    delivery,
                } => match self.registrations.get(&registration) {
                    Some((endpoint, tx)) => {
                        if let Err(e) = tx.try_send(delivery) {
                            // The bundle stays in the store unacknowledged; it is pushed again
                            // when the endpoint registers anew.
                            warn!(%endpoint, registration, "delivery channel unavailable: {e}");
                        }
                    }
                    None => debug!(registration, "delivery for a registration that is gone"),
                },
                Action::Link { neighbour, link } => {
                    self.links.send_modify(|states| {
                        if let Some(s) = states.get_mut(neighbour.0) {
                            *s = link;
                        }
                    });
                }
                Action::AwaitDurable { ticket, token } => {
                    let tx = self.durable.clone();
                    self.store.on_persisted(ticket, move |r| {
                        if let Err(e) = &r {
                            warn!("store did not persist a bundle: {e}");
                        }
                        let _ = tx.send((token, r.is_ok()));
                    });
                }
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
    }

    fn transmit(
        &self,
        neighbour: NeighbourId,
        transfer: u64,
        bundle: Bytes,
        urgent: bool,
    ) -> Result<(), SendError> {
        let Some(target) = self.targets.get(neighbour.0) else {
            return Err(SendError::UnknownPeer(PeerAddr::LtpEngine(0)));
        };
        match target {
            Target::Tcpcl(a) => match &self.adapters.tcpcl {
                Some(t) => t.send(&PeerAddr::Socket(*a), transfer, bundle),
                None => Err(SendError::Shutdown),
            },
            Target::Udp(a) => match &self.adapters.udp {
                Some(u) => u.send(&PeerAddr::Socket(*a), transfer, bundle),
                None => Err(SendError::Shutdown),
            },
            Target::Ltp(e) => match &self.adapters.ltp {
                Some(l) if urgent => l.send_urgent(&PeerAddr::LtpEngine(*e), transfer, bundle),
                Some(l) => l.send(&PeerAddr::LtpEngine(*e), transfer, bundle),
                None => Err(SendError::Shutdown),
            },
        }
    }
}

fn answer(custody: Option<CustodyAck>, refusal: Option<Refusal>) {
    if let Some(ack) = custody {
        match refusal {
            None => ack.accept(),
            Some(r) => ack.refuse(r),
        }
    }
}

fn refuse_command(cmd: AgentCommand) {
    match cmd {
        AgentCommand::Register { reply, .. } => {
            let _ = reply.send(Err(AgentError::ShuttingDown));
        }
        AgentCommand::Unregister { reply, .. } => {
            let _ = reply.send(Err(AgentError::ShuttingDown));
        }
        AgentCommand::Send { reply, .. } => {
            let _ = reply.send(Err(AgentError::ShuttingDown));
        }
        AgentCommand::Ack { .. } | AgentCommand::Info { .. } | AgentCommand::Stats { .. } => {}
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Adds one metric with a count or a gauge in whole units.
fn push(
    stats: &mut NodeStats,
    name: &str,
    help: &str,
    kind: MetricKind,
    labels: &[(&str, &str)],
    value: u64,
) {
    stats
        .metrics
        .push(Metric::new(name, help, kind, labels, value as f64));
}

/// Adds the contact plan's gauges and reload counters (`dtn_contact_plan_*`).
fn plan_metrics(p: &PlanState, stats: &mut NodeStats) {
    push(
        stats,
        "dtn_contact_plan_contacts",
        "Contacts in the running contact plan.",
        MetricKind::Gauge,
        &[],
        p.contacts as u64,
    );
    for (result, n) in [("ok", p.reloads), ("refused", p.reloads_failed)] {
        push(
            stats,
            "dtn_contact_plan_reloads_total",
            "Contact plan reloads (refused: a bad plan, the running one stayed).",
            MetricKind::Counter,
            &[("result", result)],
            n,
        );
    }
}

/// Adds the convergence-layer adapters' counters (`dtn_cla_*{cla}`).
fn adapter_metrics(adapters: &[(&'static str, CounterSnapshot)], stats: &mut NodeStats) {
    use MetricKind::Counter;
    for (cla, c) in adapters {
        let l = [("cla", *cla)];
        push(
            stats,
            "dtn_cla_bundles_received_total",
            "Bundles received by a convergence layer.",
            Counter,
            &l,
            c.bundles_in,
        );
        push(
            stats,
            "dtn_cla_bundles_sent_total",
            "Bundles transferred by a convergence layer.",
            Counter,
            &l,
            c.bundles_out,
        );
        push(
            stats,
            "dtn_cla_bytes_received_total",
            "Bundle bytes received by a convergence layer.",
            Counter,
            &l,
            c.bytes_in,
        );
        push(
            stats,
            "dtn_cla_bytes_sent_total",
            "Bundle bytes transferred by a convergence layer.",
            Counter,
            &l,
            c.bytes_out,
        );
        push(
            stats,
            "dtn_cla_bad_input_total",
            "Malformed or oversized input discarded by a convergence layer.",
            Counter,
            &l,
            c.bad_input,
        );
        for (reason, n) in &c.failures {
            push(
                stats,
                "dtn_cla_failures_total",
                "Failed transfers by convergence layer and reason.",
                Counter,
                &[("cla", cla), ("reason", reason)],
                *n,
            );
        }
    }
}

/// Adds the LTP engine's metrics (`dtn_ltp_*`).
fn ltp_metrics(s: &ltp::driver::DriverStats, stats: &mut NodeStats) {
    use MetricKind::{Counter, Gauge};
    let e = &s.engine;
    let open_export = e
        .export_sessions_opened
        .saturating_sub(e.export_sessions_completed + e.export_sessions_cancelled);
    let open_import = e
        .import_sessions_opened
        .saturating_sub(e.import_sessions_completed + e.import_sessions_cancelled);
    push(
        stats,
        "dtn_ltp_sessions_open",
        "LTP sessions open.",
        Gauge,
        &[("direction", "export")],
        open_export,
    );
    push(
        stats,
        "dtn_ltp_sessions_open",
        "LTP sessions open.",
        Gauge,
        &[("direction", "import")],
        open_import,
    );
    push(
        stats,
        "dtn_ltp_retransmissions_total",
        "LTP retransmissions by kind.",
        Counter,
        &[("kind", "data")],
        e.data_segments_retransmitted,
    );
    push(
        stats,
        "dtn_ltp_retransmissions_total",
        "LTP retransmissions by kind.",
        Counter,
        &[("kind", "checkpoint")],
        e.checkpoints_retransmitted,
    );
    push(
        stats,
        "dtn_ltp_retransmissions_total",
        "LTP retransmissions by kind.",
        Counter,
        &[("kind", "report")],
        e.reports_retransmitted,
    );
    push(
        stats,
        "dtn_ltp_checkpoint_copies_total",
        "LTP checkpoints sent again right behind themselves (a neighbour's checkpoint_copies).",
        Counter,
        &[],
        e.checkpoint_copies_sent,
    );
    push(
        stats,
        "dtn_ltp_asynchronous_reports_total",
        "LTP asynchronous reception reports sent (RFC 5326 section 3.2.2).",
        Counter,
        &[],
        e.asynchronous_reports_sent,
    );
    push(
        stats,
        "dtn_ltp_sessions_cancelled_total",
        "LTP sessions cancelled.",
        Counter,
        &[("direction", "export")],
        e.export_sessions_cancelled,
    );
    push(
        stats,
        "dtn_ltp_sessions_cancelled_total",
        "LTP sessions cancelled.",
        Counter,
        &[("direction", "import")],
        e.import_sessions_cancelled,
    );
    push(
        stats,
        "dtn_ltp_segments_sent_total",
        "LTP segments sent.",
        Counter,
        &[],
        e.segments_sent,
    );
    push(
        stats,
        "dtn_ltp_segments_received_total",
        "LTP segments received.",
        Counter,
        &[],
        e.segments_received,
    );
    push(
        stats,
        "dtn_ltp_segments_malformed_total",
        "LTP datagrams that failed to decode.",
        Counter,
        &[],
        e.segments_malformed,
    );
    push(
        stats,
        "dtn_ltp_segments_dropped_total",
        "LTP segments dropped: from engines without a span, for closed or unknown sessions, \
         or beyond a limit.",
        Counter,
        &[],
        e.segments_dropped,
    );
    push(
        stats,
        "dtn_ltp_reassembly_bytes",
        "Octets LTP holds for blocks being received (data and bookkeeping), within the \
         engine's reassembly limit.",
        Gauge,
        &[],
        e.reassembly_bytes,
    );
    for (engine, rtt) in &s.round_trips {
        push(
            stats,
            "dtn_ltp_round_trip_microseconds",
            "Smoothed LTP round trip (checkpoint to report) to a peer engine.",
            Gauge,
            &[("engine", &engine.to_string())],
            rtt.as_micros() as u64,
        );
    }
    for (engine, loss) in &s.losses {
        stats.metrics.push(Metric::new(
            "dtn_ltp_loss_ratio",
            "Share of red data a peer engine's LTP reports claimed missing of late (checkpoint \
             copies go while it is at least the neighbour's checkpoint_copies_min_loss).",
            Gauge,
            &[("engine", &engine.to_string())],
            *loss,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtn_time_is_after_2020() {
        // 2020-01-01 is 631,152,000 s after the DTN epoch.
        assert!(dtn_now() > 631_152_000_000);
    }

    #[test]
    fn ready_json_shape() {
        let a = Addresses {
            node_id: "ipn:1.0".into(),
            agent: Some("127.0.0.1:4550".parse().unwrap()),
            unix: None,
            metrics: Some("127.0.0.1:9550".parse().unwrap()),
            tcpcl: Some("127.0.0.1:4556".parse().unwrap()),
            udp: None,
            ltp: None,
        };
        assert_eq!(
            a.to_json(),
            r#"{"node_id":"ipn:1.0","agent":"127.0.0.1:4550","unix":null,"metrics":"127.0.0.1:9550","tcpcl":"127.0.0.1:4556","udp":null,"ltp":null}"#
        );
    }

    #[test]
    fn adapter_counters_become_labelled_metrics() {
        let mut c = CounterSnapshot {
            bundles_in: 3,
            ..Default::default()
        };
        c.failures.insert("timeout".into(), 2);
        let mut s = NodeStats::default();
        adapter_metrics(&[("tcpcl", c)], &mut s);
        assert_eq!(s.total("dtn_cla_bundles_received_total"), Some(3.0));
        assert_eq!(s.total("dtn_cla_failures_total"), Some(2.0));
        let f = s
            .metrics
            .iter()
            .find(|m| m.name == "dtn_cla_failures_total")
            .unwrap();
        assert!(f.labels.contains(&("reason".into(), "timeout".into())));
    }
}
