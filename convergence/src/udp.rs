//! UDP convergence-layer adapter: one bundle per datagram (as in ION's udpcl and the "UDP"
//! convergence layer of dtn7-rs), implementing RFC 9171 §7's send and deliver services.
//!
//! - **Unreliable.** [`Outcome::Transferred`] is reported as soon as the datagram has been
//!   handed to the socket (or to the link emulator standing in for the network); it says
//!   nothing about arrival. The node must treat UDP as unreliable: never release custody or
//!   delete a stored bundle on this outcome alone. `Failed(Unreachable)` is reported on a socket
//!   error.
//! - **Size limit** on both sides: `send` refuses a bundle larger than `max_bundle_size` with
//!   [`SendError::TooLarge`] before anything is sent; on receive the buffer is one byte larger
//!   than the limit, so an oversized (possibly truncated) datagram is detected, counted as bad
//!   input and dropped.
//! - **Plausibility check** (minimal; the node validates bundles): a datagram is accepted only
//!   if it is not empty and its first byte is `0x9f`, the CBOR indefinite-length array head
//!   that every RFC 9171 §4.1 bundle starts with. Anything else is counted as bad input.
//! - **Back-pressure.** The receive task reserves a slot on the `received` channel before reading
//!   the socket, so the socket is not read while the node is not consuming (the kernel buffer
//!   then fills and drops, as UDP does).
//! - **Bounded send queue** of `send_queue` bundles; beyond it `send` returns
//!   [`SendError::QueueFull`].
//! - **Emulation.** Per-peer [`LinkProfile`]s route outgoing datagrams through an
//!   [`EmulatedUdp`]; per-peer [`LinkGate`]s (in the config, or [`UdpAdapter::set_gate`] at
//!   run time) make a peer's link down while the gate is down (contacts: every datagram sent
//!   outside a contact is dropped, still reported `Transferred`, as UDP cannot tell).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};

use crate::adapter::{
    AdapterChannels, ConvergenceLayer, CounterSnapshot, Counters, FailureReason, Outcome,
    OutcomeReport, PeerAddr, Received, SendError, TransferId,
};
use crate::emulation::{EmulatedUdp, LinkGate, LinkProfile};

/// The adapter's name, used in [`Received::cla`].
pub const NAME: &str = "udp";
/// Largest UDP payload over IPv4 (65535 − 20 IP − 8 UDP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// First byte of every bundle: CBOR indefinite-length array (RFC 9171 §4.1).
pub const BUNDLE_FIRST_BYTE: u8 = 0x9f;

/// Consecutive receive errors tolerated before the receive task backs off.
const RECV_ERRORS_BEFORE_BACKOFF: u32 = 16;
/// Pause after each receive error beyond [`RECV_ERRORS_BEFORE_BACKOFF`].
const RECV_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

/// Configuration of a [`UdpAdapter`].
#[derive(Clone, Debug)]
pub struct UdpConfig {
    /// Local address to bind (`127.0.0.1:0` for an OS-assigned port).
    pub bind: SocketAddr,
    /// Largest bundle sent or accepted, in bytes (at most [`MAX_UDP_PAYLOAD`]).
    pub max_bundle_size: usize,
    /// Bundles that may wait in the send queue.
    pub send_queue: usize,
    /// Link emulation per peer address (outgoing direction).
    pub emulation: Vec<(SocketAddr, LinkProfile)>,
    /// Link gates per peer address (outgoing direction): the link to that peer is down while
    /// its gate is down, with or without a profile in `emulation`.
    pub gates: Vec<(SocketAddr, LinkGate)>,
    /// Seed of the link emulators.
    pub emulation_seed: u64,
    /// Socket send and receive buffer size to request, if any.
    pub socket_buffer: Option<usize>,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_bundle_size: MAX_UDP_PAYLOAD,
            send_queue: 1024,
            emulation: Vec::new(),
            gates: Vec::new(),
            emulation_seed: 0,
            socket_buffer: Some(4 * 1024 * 1024),
        }
    }
}

struct Job {
    peer: SocketAddr,
    id: TransferId,
    bundle: Bytes,
}

/// The UDP convergence-layer adapter (see the module docs).
pub struct UdpAdapter {
    local: SocketAddr,
    max_bundle_size: usize,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    counters: Arc<Counters>,
    emulated: Arc<EmulatedUdp>,
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for UdpAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpAdapter")
            .field("local", &self.local)
            .field("max_bundle_size", &self.max_bundle_size)
            .finish_non_exhaustive()
    }
}

fn make_socket(config: &UdpConfig) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(config.bind),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Some(size) = config.socket_buffer {
        // Best effort: the kernel may cap the size (net.core.rmem_max).
        if let Err(e) = socket.set_recv_buffer_size(size) {
            tracing::debug!(error = %e, "could not set UDP receive buffer size");
        }
        if let Err(e) = socket.set_send_buffer_size(size) {
            tracing::debug!(error = %e, "could not set UDP send buffer size");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&config.bind.into())?;
    UdpSocket::from_std(socket.into())
}

impl UdpAdapter {
    /// Bind the socket and start the send and receive tasks (within a tokio runtime).
    pub async fn bind(config: UdpConfig, channels: AdapterChannels) -> io::Result<Arc<UdpAdapter>> {
        if config.max_bundle_size == 0 || config.max_bundle_size > MAX_UDP_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "max_bundle_size must be within 1..={MAX_UDP_PAYLOAD}, got {}",
                    config.max_bundle_size
                ),
            ));
        }
        if config.send_queue == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send_queue must be positive",
            ));
        }
        for (peer, profile) in &config.emulation {
            profile.validate().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("peer {peer}: {e}"))
            })?;
        }
        let socket = Arc::new(make_socket(&config)?);
        let local = socket.local_addr()?;
        let emulated = Arc::new(EmulatedUdp::new(socket.clone(), config.emulation_seed));
        for (peer, profile) in &config.emulation {
            emulated.set_profile(*peer, profile.clone());
        }
        for (peer, gate) in &config.gates {
            emulated.set_gate(*peer, gate.clone());
        }
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(config.send_queue);
        tokio::spawn(send_task(
            rx,
            emulated.clone(),
            channels.outcomes.clone(),
            counters.clone(),
            stopped.clone(),
        ));
        tokio::spawn(recv_task(
            socket,
            config.max_bundle_size,
            channels.received,
            counters.clone(),
            stop.clone(),
            stopped.clone(),
        ));
        tracing::info!(%local, "UDP convergence layer bound");
        Ok(Arc::new(UdpAdapter {
            local,
            max_bundle_size: config.max_bundle_size,
            queue: Mutex::new(Some(tx)),
            counters,
            emulated,
            stop,
            stopped,
        }))
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The link emulator's counters for `peer`, if its link is emulated.
    pub fn emulation_stats(&self, peer: &SocketAddr) -> Option<crate::emulation::EmulatorStats> {
        self.emulated.stats(peer)
    }

    /// Gate the link to `peer` with `gate` from now on (see [`UdpConfig::gates`]).
    pub fn set_gate(&self, peer: SocketAddr, gate: LinkGate) {
        self.emulated.set_gate(peer, gate);
    }
}

impl ConvergenceLayer for UdpAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send(&self, peer: &PeerAddr, id: TransferId, bundle: Bytes) -> Result<(), SendError> {
        let PeerAddr::Socket(addr) = peer else {
            return Err(SendError::UnknownPeer(peer.clone()));
        };
        if bundle.len() > self.max_bundle_size {
            return Err(SendError::TooLarge {
                size: bundle.len(),
                limit: self.max_bundle_size,
            });
        }
        let guard = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(SendError::Shutdown);
        };
        tx.try_send(Job {
            peer: *addr,
            id,
            bundle,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SendError::Shutdown,
        })
    }

    fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    fn shutdown(&self) {
        // Dropping the sender lets the send task drain the queue, reporting `Shutdown` for
        // every bundle still in it; the receive task stops at once.
        self.stopped.store(true, Ordering::SeqCst);
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.stop.notify_one();
    }
}

impl Drop for UdpAdapter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn send_task(
    mut rx: mpsc::Receiver<Job>,
    emulated: Arc<EmulatedUdp>,
    outcomes: mpsc::Sender<OutcomeReport>,
    counters: Arc<Counters>,
    stopped: Arc<AtomicBool>,
) {
    while let Some(job) = rx.recv().await {
        let outcome = if stopped.load(Ordering::SeqCst) {
            Outcome::Failed(FailureReason::Shutdown)
        } else {
            match emulated.send_to(job.bundle.clone(), job.peer).await {
                Ok(_verdict) => Outcome::Transferred,
                Err(e) => {
                    tracing::debug!(peer = %job.peer, error = %e, "UDP send failed");
                    Outcome::Failed(FailureReason::Unreachable(e.to_string()))
                }
            }
        };
        match &outcome {
            Outcome::Transferred => counters.record_out(job.bundle.len()),
            Outcome::Failed(r) => counters.record_failure(r.kind()),
        }
        let report = OutcomeReport {
            id: job.id,
            peer: PeerAddr::Socket(job.peer),
            outcome,
        };
        if outcomes.send(report).await.is_err() {
            tracing::debug!("outcome channel closed; UDP send task continues draining");
        }
    }
}

async fn recv_task(
    socket: Arc<UdpSocket>,
    max: usize,
    received: mpsc::Sender<Received>,
    counters: Arc<Counters>,
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
) {
    // One byte more than the limit, to detect oversized datagrams (truncated by recv).
    let mut buf = vec![0u8; max + 1];
    let mut consecutive_errors = 0u32;
    loop {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        // Back-pressure: hold a slot in the node's channel before reading the socket.
        let permit = tokio::select! {
            p = received.reserve() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.notified() => return,
        };
        loop {
            let (n, from) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => {
                        consecutive_errors = 0;
                        x
                    }
                    Err(e) => {
                        // E.g. ICMP port unreachable reported on Linux for an earlier send:
                        // transient. A persistent error must not spin: back off.
                        tracing::debug!(error = %e, "UDP receive error");
                        consecutive_errors = consecutive_errors.saturating_add(1);
                        if consecutive_errors > RECV_ERRORS_BEFORE_BACKOFF {
                            tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                        }
                        continue;
                    }
                },
                _ = stop.notified() => return,
            };
            if n > max {
                tracing::debug!(%from, limit = max, "dropping oversized UDP datagram");
                counters.record_bad_input();
                continue;
            }
            if n == 0 || buf[0] != BUNDLE_FIRST_BYTE {
                tracing::debug!(%from, len = n, "dropping UDP datagram that is not a bundle");
                counters.record_bad_input();
                continue;
            }
            counters.record_in(n);
            // One copy to an exactly-sized buffer, so a small bundle does not pin `max` bytes.
            permit.send(Received {
                cla: NAME,
                from: PeerAddr::Socket(from),
                peer_node_id: None,
                bundle: Bytes::copy_from_slice(&buf[..n]),
                // UDP has no acknowledgement to withhold.
                custody: None,
            });
            break;
        }
    }
}
