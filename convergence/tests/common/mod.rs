//! Shared setup of the convergence-layer tests: TCPCL, LTP and UDP adapters on loopback with the
//! receiving ends of their channels, bounded waits on those channels, and test bundles.

#![allow(dead_code)] // not every test file uses every helper

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convergence::adapter::{AdapterChannels, OutcomeReport, PeerAddr, Received};
use convergence::ltp_adapter::{LtpAdapter, LtpAdapterConfig, SpanPolicy};
use convergence::tcpcl::{TcpclAdapter, TcpclConfig};
use convergence::udp::UdpAdapter;
use ltp::driver::{DriverConfig, Impairment};
use ltp::{Engine, EngineConfig, EngineId, SpanConfig};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// An adapter under test (`TcpclAdapter`, `LtpAdapter`, `UdpAdapter`) and the receiving ends of
/// its channels.
pub struct Node<A> {
    pub cla: Arc<A>,
    pub received: mpsc::Receiver<Received>,
    pub outcomes: mpsc::Receiver<OutcomeReport>,
    /// Our copy of the adapter's senders, where a test keeps one so that it can drop it and see
    /// the channels close once the adapter's tasks end (`None`: only the adapter holds them).
    pub channels: Option<AdapterChannels>,
}

impl<A> Node<A> {
    /// The next bundle this node received, within `wait`.
    pub async fn next_received(&mut self, wait: Duration) -> Received {
        timeout(wait, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("no bundle received within {wait:?}"))
            .expect("received channel open")
    }

    /// The next outcome reported to this node, within `wait`.
    pub async fn next_outcome(&mut self, wait: Duration) -> OutcomeReport {
        timeout(wait, self.outcomes.recv())
            .await
            .unwrap_or_else(|_| panic!("no outcome within {wait:?}"))
            .expect("outcome channel open")
    }
}

/// Fresh adapter channels with room for `received` bundles and `outcomes` reports: the senders
/// for the adapter, and the receivers.
pub fn channels(
    received: usize,
    outcomes: usize,
) -> (
    AdapterChannels,
    mpsc::Receiver<Received>,
    mpsc::Receiver<OutcomeReport>,
) {
    let (rtx, rrx) = mpsc::channel(received);
    let (otx, orx) = mpsc::channel(outcomes);
    (
        AdapterChannels {
            received: rtx,
            outcomes: otx,
        },
        rrx,
        orx,
    )
}

// ---------------------------------------------------------------------------------------------
// TCPCL
// ---------------------------------------------------------------------------------------------

/// The configuration of a TCPCL node `dtn://{name}/` listening on 127.0.0.1 (an OS-assigned
/// port).
pub fn tcpcl_config(name: &str) -> TcpclConfig {
    TcpclConfig::new(
        format!("dtn://{name}/"),
        Some("127.0.0.1:0".parse().unwrap()),
    )
}

/// Starts a TCPCL adapter with `cfg`, its channels holding 4 received bundles and 64 outcomes.
pub async fn start_tcpcl(cfg: TcpclConfig) -> Node<TcpclAdapter> {
    let (channels, received, outcomes) = channels(4, 64);
    let cla = TcpclAdapter::start(cfg, channels).await.unwrap();
    Node {
        cla,
        received,
        outcomes,
        channels: None,
    }
}

/// Starts the TCPCL node `dtn://{name}/` on loopback ([`tcpcl_config`]) once `f` adjusted its
/// configuration.
pub async fn tcpcl_node(name: &str, f: impl FnOnce(&mut TcpclConfig)) -> Node<TcpclAdapter> {
    let mut cfg = tcpcl_config(name);
    f(&mut cfg);
    start_tcpcl(cfg).await
}

impl Node<TcpclAdapter> {
    /// The address of this node's listener.
    pub fn addr(&self) -> PeerAddr {
        PeerAddr::Socket(self.cla.local_addr().unwrap())
    }
}

/// `len` bytes of a pattern that differs by `seed`.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------------------------------------
// LTP
// ---------------------------------------------------------------------------------------------

/// One span of an LTP test node.
pub struct LtpSpan {
    /// The peer engine.
    pub peer: EngineId,
    /// Where its segments go, if known yet (else see [`Node::learn_span_address`]).
    pub addr: Option<SocketAddr>,
    /// The engine's span configuration.
    pub config: SpanConfig,
    /// The adapter's policy for the span.
    pub policy: SpanPolicy,
}

/// An LTP adapter for engine `local` (its engine seeded with `local`) on 127.0.0.1 (an
/// OS-assigned port) with `spans`, `impairment` on its sent datagrams, and channels of 4096.
pub fn ltp_node(
    local: EngineId,
    spans: Vec<LtpSpan>,
    impairment: Option<impl Impairment + Send + 'static>,
) -> Node<LtpAdapter> {
    let config = EngineConfig {
        seed: local,
        ..EngineConfig::default()
    };
    ltp_node_with(local, config, spans, impairment)
}

/// [`ltp_node`] with the engine built from `config`.
pub fn ltp_node_with(
    local: EngineId,
    config: EngineConfig,
    spans: Vec<LtpSpan>,
    impairment: Option<impl Impairment + Send + 'static>,
) -> Node<LtpAdapter> {
    let mut engine = Engine::new(local, config);
    let mut driver = DriverConfig::new("127.0.0.1:0".parse().unwrap());
    for s in &spans {
        engine.add_span(s.peer, s.config.clone());
        if let Some(addr) = s.addr {
            driver.spans.push((s.peer, addr));
        }
    }
    if let Some(imp) = impairment {
        driver.impairment = Some(Box::new(imp));
    }
    let config = LtpAdapterConfig {
        spans: spans.into_iter().map(|s| s.policy).collect(),
        ..LtpAdapterConfig::default()
    };
    let (channels, received, outcomes) = channels(4096, 4096);
    let cla = LtpAdapter::spawn(engine, driver, config, channels).unwrap();
    Node {
        cla,
        received,
        outcomes,
        channels: None,
    }
}

impl Node<LtpAdapter> {
    /// This node's LTP UDP address.
    pub fn ltp_addr(&self) -> SocketAddr {
        self.cla.ltp().local_addr()
    }

    /// Points this node's span to `peer` at `of`'s LTP address (for a node started before its
    /// peer's address was known).
    pub async fn learn_span_address(&self, peer: EngineId, of: &Node<LtpAdapter>) {
        self.cla
            .ltp()
            .set_span_address(peer, of.ltp_addr())
            .await
            .unwrap();
    }
}

/// A bundle-shaped CBOR item: `[_ bstr(payload)]`.
pub fn fake_bundle(len: usize, tag: u8) -> Bytes {
    let mut v = vec![0x9f, 0x59, (len >> 8) as u8, len as u8];
    v.extend(std::iter::repeat_n(tag, len));
    v.push(0xff);
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------------------
// UDP and test vectors
// ---------------------------------------------------------------------------------------------

impl Node<UdpAdapter> {
    /// The address of this node's socket.
    pub fn addr(&self) -> PeerAddr {
        PeerAddr::Socket(self.cla.local_addr())
    }
}

/// The BPv7 test vector `shared/vectors/bpv7/{name}.hex`.
pub fn vector(name: &str) -> Bytes {
    let path = format!(
        "{}/../../shared/vectors/bpv7/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Bytes::from(hex::decode(text.trim()).unwrap())
}
