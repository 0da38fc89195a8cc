//! Tokio driver for TCPCLv4 sessions (RFC 9174 §3 connection handling, §4.1 active and passive
//! roles, §6.1 session termination) and [`TcpclAdapter`], the `ConvergenceLayer` for TCPCL.
//!
//! One task per TCP connection runs a [`Session`]: it reads into a bounded buffer, writes through a
//! separate writer task (so a peer that is itself blocked writing can never deadlock us), runs the
//! session's timers, and stops reading while a received bundle waits for room in the node's
//! `received` channel (back-pressure). The final XFER_ACK of a transfer is released only after the
//! node's channel has accepted the bundle, and, with [`TcpclConfig::custody_acks`], only after the
//! node has answered the bundle's [`CustodyAck`] (the bundle is in its store): `Accept` sends the
//! final XFER_ACK, `Refuse` sends XFER_REFUSE instead (RFC 9174 §5.2.4; see
//! [`Session::refuse_received`] for why a refusal after the last segment is allowed). While
//! verdicts are pending the session keeps running (keepalives, outgoing transfers); it reads
//! further input only while fewer than [`TcpclConfig::max_pending_custody`] verdicts are pending.
//!
//! Outgoing bundles are queued per peer address (bounded by [`TcpclConfig::max_queue`]); a peer
//! task connects on demand (active role), reconnects with exponential backoff, and keeps the
//! session open while it is alive. Sessions accepted by the listener (passive role) receive
//! bundles; bundles for a neighbour are always sent on the session we open to its listen address.
//!
//! Link emulation ([`TcpclConfig::emulation`]): a session we open to an address listed there runs
//! over an [`EmulatedStream`] wrapping the TCP socket, which applies the profile's delay and rate to
//! the byte stream in both directions (so a transfer's XFER_ACK comes back through the delay too).
//! TCPCL runs over TCP, so loss, jitter, duplication and outages of the profile do not apply at
//! this layer (they are ignored, with a warning at start). Passive sessions are never emulated:
//! the peer connects from an ephemeral source port, so its address cannot name the link; emulate
//! a link on the node that opens the session (each direction of a TCPCL link is the session its
//! sender opens). The session runner is generic over the stream's read and write halves: plain
//! sessions keep `TcpStream::into_split` (no lock), emulated ones use `tokio::io::split`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use super::message::RefuseReason;
use super::message::SessTermReason;
use super::session::{CloseReason, Event, Role, Session, SessionConfig, TransferFailure};
use crate::adapter::{
    AdapterChannels, ConvergenceLayer, CounterSnapshot, Counters, CustodyAck, CustodyWait,
    FailureReason, Outcome, OutcomeReport, PeerAddr, Received, Refusal, SendError, TransferId,
    Verdict,
};
use crate::emulation::{EmulatedStream, LinkProfile};

/// Name of this convergence layer in [`Received::cla`].
pub const CLA_NAME: &str = "tcpcl";

/// Configuration of a [`TcpclAdapter`].
#[derive(Debug, Clone)]
pub struct TcpclConfig {
    /// Our node ID, sent in SESS_INIT (a URI such as `ipn:1.0` or `dtn://node1/`).
    pub node_id: String,
    /// Address to listen on for passive sessions (`None`: no listener).
    pub listen: Option<SocketAddr>,
    /// Keepalive interval we propose (whole seconds, at most 65535 s; zero disables).
    pub keepalive: Duration,
    /// Our segment MRU: largest segment data accepted from a peer.
    pub segment_mru: u64,
    /// Our transfer MRU: largest bundle accepted from a peer (larger ones are refused).
    pub transfer_mru: u64,
    /// Most bundles waiting per peer before `send` returns `QueueFull`.
    pub max_queue: usize,
    /// Most peers with a send queue at once (further peers get `QueueFull`).
    pub max_peers: usize,
    /// Most concurrent passive sessions; further connections are closed at once.
    pub max_passive_sessions: usize,
    /// Largest bundle `send` accepts.
    pub max_bundle_len: usize,
    /// Fail bundles larger than the peer's advertised transfer MRU instead of attempting them.
    pub enforce_peer_transfer_mru: bool,
    /// Time allowed for one TCP connect.
    pub connect_timeout: Duration,
    /// Connection attempts before queued bundles fail as unreachable.
    pub connect_attempts: u32,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Time allowed for the contact header and SESS_INIT exchange.
    pub setup_timeout: Duration,
    /// Time allowed after SESS_TERM before the connection is closed.
    pub term_timeout: Duration,
    /// Outgoing transfers in flight (sent, not fully acknowledged) per session.
    pub max_unacked: usize,
    /// Attach a [`CustodyAck`] to every received bundle and hold its final XFER_ACK until the
    /// node answers (a dropped handle refuses with "Retransmit"). Off: the final ack goes out
    /// as soon as the `received` channel took the bundle.
    pub custody_acks: bool,
    /// Most received bundles per session waiting for the node's verdict before the session
    /// stops reading (with `custody_acks`).
    pub max_pending_custody: usize,
    /// Link emulation of sessions this node opens to these peer addresses: delay and rate apply
    /// to the byte stream both ways (RFC 9174 runs over TCP: no loss/outage at this layer).
    ///
    /// Matched exactly against the address a bundle is sent to (IP and port; the first entry
    /// for an address wins). Sessions the peer opens to our listener (passive role) are not
    /// emulated: the peer's source port is ephemeral, so its address cannot select a profile.
    /// The profile's `queue_limit_bytes` bounds the bytes held per direction (so throughput is
    /// at most `queue_limit_bytes / delay`, like a TCP window); its loss, jitter, duplication
    /// and outage schedule are ignored (a warning is logged at start). Session setup takes about
    /// four one-way delays and termination two: keep `setup_timeout` above 4 × delay and
    /// `term_timeout` above 2 × delay.
    pub emulation: Vec<(SocketAddr, LinkProfile)>,
}

impl TcpclConfig {
    /// Defaults for `node_id`, listening on `listen`.
    pub fn new(node_id: impl Into<String>, listen: Option<SocketAddr>) -> TcpclConfig {
        TcpclConfig {
            node_id: node_id.into(),
            listen,
            keepalive: Duration::from_secs(30),
            segment_mru: 1 << 20,
            transfer_mru: 64 << 20,
            max_queue: 256,
            max_peers: 1024,
            max_passive_sessions: 256,
            max_bundle_len: 64 << 20,
            enforce_peer_transfer_mru: true,
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(10),
            term_timeout: Duration::from_secs(5),
            max_unacked: 64,
            custody_acks: false,
            max_pending_custody: 64,
            emulation: Vec::new(),
        }
    }

    /// The link emulation profile for sessions we open to `peer`, if any.
    fn emulation_for(&self, peer: SocketAddr) -> Option<&LinkProfile> {
        self.emulation
            .iter()
            .find(|(a, _)| *a == peer)
            .map(|(_, p)| p)
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            node_id: self.node_id.clone(),
            keepalive: u16::try_from(self.keepalive.as_secs()).unwrap_or(u16::MAX),
            segment_mru: self.segment_mru,
            transfer_mru: self.transfer_mru,
            max_extensions_len: 64 * 1024,
            setup_timeout: self.setup_timeout,
            term_timeout: self.term_timeout,
            max_unacked: self.max_unacked.max(1),
            max_queued: self.max_unacked.max(1),
            enforce_peer_transfer_mru: self.enforce_peer_transfer_mru,
        }
    }
}

struct Job {
    id: TransferId,
    bundle: Bytes,
    retries: u32,
}

struct Shared {
    config: TcpclConfig,
    channels: AdapterChannels,
    counters: Counters,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn is_shutdown(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn report(&self, id: TransferId, peer: SocketAddr, outcome: Outcome) {
        match &outcome {
            Outcome::Transferred => {}
            Outcome::Failed(r) => self.counters.record_failure(r.kind()),
        }
        let report = OutcomeReport {
            id,
            peer: PeerAddr::Socket(peer),
            outcome,
        };
        if self.channels.outcomes.send(report).await.is_err() {
            debug!("outcome channel closed");
        }
    }
}

/// The TCPCLv4 convergence-layer adapter.
pub struct TcpclAdapter {
    shared: Arc<Shared>,
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<Job>>>,
    local_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
}

impl TcpclAdapter {
    /// Starts the adapter on the current tokio runtime: binds the listener if configured.
    pub async fn start(
        config: TcpclConfig,
        channels: AdapterChannels,
    ) -> io::Result<Arc<TcpclAdapter>> {
        let (shutdown_tx, shutdown) = watch::channel(false);
        for (peer, p) in &config.emulation {
            if !p.is_stream_only() {
                warn!(%peer, profile = %p,
                    "TCPCL link emulation applies only delay, rate and queue; \
                     loss, jitter, duplication and outages are ignored");
            }
        }
        let listener = match config.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let local_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let shared = Arc::new(Shared {
            config,
            channels,
            counters: Counters::default(),
            shutdown,
        });
        if let Some(listener) = listener {
            let shared = shared.clone();
            tokio::spawn(
                accept_loop(listener, shared)
                    .instrument(tracing::info_span!("tcpcl_listener", addr = ?local_addr)),
            );
        }
        Ok(Arc::new(TcpclAdapter {
            shared,
            peers: Mutex::new(HashMap::new()),
            local_addr,
            shutdown_tx,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// The address the listener is bound to, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl ConvergenceLayer for TcpclAdapter {
    fn name(&self) -> &'static str {
        CLA_NAME
    }

    fn send(&self, peer: &PeerAddr, id: TransferId, bundle: Bytes) -> Result<(), SendError> {
        let PeerAddr::Socket(addr) = peer else {
            return Err(SendError::UnknownPeer(peer.clone()));
        };
        if self.shared.is_shutdown() {
            return Err(SendError::Shutdown);
        }
        if bundle.len() > self.shared.config.max_bundle_len {
            return Err(SendError::TooLarge {
                size: bundle.len(),
                limit: self.shared.config.max_bundle_len,
            });
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|_, tx| !tx.is_closed());
        let tx = match peers.get(addr) {
            Some(tx) => tx.clone(),
            None => {
                if peers.len() >= self.shared.config.max_peers {
                    return Err(SendError::QueueFull);
                }
                let (tx, rx) = mpsc::channel(self.shared.config.max_queue.max(1));
                let shared = self.shared.clone();
                let addr = *addr;
                self.runtime.spawn(
                    peer_task(addr, rx, shared)
                        .instrument(tracing::info_span!("tcpcl_peer", peer = %addr)),
                );
                peers.insert(addr, tx.clone());
                tx
            }
        };
        let job = Job {
            id,
            bundle,
            retries: 0,
        };
        tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SendError::Shutdown,
        })
    }

    fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }
}

impl Drop for TcpclAdapter {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(shared.config.max_passive_sessions));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("accept failed: {e}");
                // Back off a little on errors such as EMFILE instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "passive session limit reached; closing connection");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                let left = run_session(rd, wr, Role::Passive, peer, &shared, None).await;
                debug_assert!(left.is_empty());
            }
            .instrument(tracing::info_span!("tcpcl_session", %peer, role = "passive")),
        );
    }
}

/// Sends queued bundles to one peer: connects on demand with exponential backoff, runs the
/// session, and retries bundles that had not started when a session ended.
async fn peer_task(addr: SocketAddr, mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut pending: VecDeque<Job> = VecDeque::new();
    let cfg = &shared.config;
    'outer: loop {
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => break 'outer,
                job = rx.recv() => match job {
                    Some(j) => pending.push_back(j),
                    None => break 'outer,
                },
            }
        }
        let mut delay = cfg.backoff_initial;
        let mut stream = None;
        for attempt in 0..cfg.connect_attempts.max(1) {
            if attempt > 0 {
                tokio::select! {
                    _ = shutdown.wait_for(|v| *v) => break 'outer,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(cfg.backoff_max);
            }
            match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => debug!(attempt, "connect failed: {e}"),
                Err(_) => debug!(attempt, "connect timed out"),
            }
        }
        let Some(stream) = stream else {
            warn!("peer unreachable after {} attempts", cfg.connect_attempts);
            while let Some(j) = pending.pop_front() {
                let outcome = Outcome::Failed(FailureReason::Unreachable(format!(
                    "TCPCL connect to {addr} failed"
                )));
                shared.report(j.id, addr, outcome).await;
            }
            while let Ok(j) = rx.try_recv() {
                let outcome = Outcome::Failed(FailureReason::Unreachable(format!(
                    "TCPCL connect to {addr} failed"
                )));
                shared.report(j.id, addr, outcome).await;
            }
            continue;
        };
        // On the real socket, also when the session runs over an emulated stream.
        let _ = stream.set_nodelay(true);
        let outgoing = Some((&mut rx, &mut pending));
        let left = match cfg.emulation_for(addr) {
            None => {
                let (rd, wr) = stream.into_split();
                run_session(rd, wr, Role::Active, addr, &shared, outgoing)
                    .instrument(tracing::info_span!("tcpcl_session", peer = %addr, role = "active"))
                    .await
            }
            Some(profile) => {
                let (mut rd, wr) = tokio::io::split(EmulatedStream::new(stream, profile));
                let left = run_session(&mut rd, wr, Role::Active, addr, &shared, outgoing)
                    .instrument(tracing::info_span!("tcpcl_session", peer = %addr,
                        role = "active", emulated = %profile))
                    .await;
                // Dropping the stream would stop its pump and discard the bytes it still holds
                // back (such as our reply to the peer's SESS_TERM): let them through first.
                let limit = cfg.term_timeout + 2 * profile.delay;
                tokio::spawn(linger(rd, limit).in_current_span());
                left
            }
        };
        for mut j in left {
            j.retries += 1;
            if j.retries > cfg.connect_attempts {
                let outcome = Outcome::Failed(FailureReason::Cancelled(
                    "TCPCL sessions kept ending".into(),
                ));
                shared.report(j.id, addr, outcome).await;
            } else {
                pending.push_back(j);
            }
        }
        if !pending.is_empty() && !shared.is_shutdown() {
            // Do not hammer a peer whose sessions keep ending.
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => break 'outer,
                _ = tokio::time::sleep(cfg.backoff_initial) => {}
            }
        }
    }
    rx.close();
    while let Some(j) = pending.pop_front().or_else(|| rx.try_recv().ok()) {
        shared
            .report(j.id, addr, Outcome::Failed(FailureReason::Shutdown))
            .await;
    }
}

/// Keeps an emulated stream (whose write half is shut down) alive until the peer closes its side
/// or `limit` passes, discarding what arrives, so that bytes still delayed by the emulation are
/// delivered before the stream is dropped.
async fn linger<R: AsyncRead + Unpin>(mut rd: R, limit: Duration) {
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        // Bounded by `limit`; each read either makes progress or ends the loop.
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(limit, drain).await.is_err() {
        debug!("emulated stream still open after {limit:?}; dropping it");
    }
}

/// Writes chunks in order through a buffered writer, flushing whenever the queue runs dry.
async fn writer_task<W: AsyncWrite + Unpin>(
    wr: W,
    mut chunks: mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(b) = chunks.recv().await {
        w.write_all(&b).await?;
        if chunks.is_empty() {
            w.flush().await?;
        }
    }
    w.flush().await?;
    w.shutdown().await
}

/// Runs one session to its end over the read and write halves of a stream: those of
/// `TcpStream::into_split` for plain TCP, of `tokio::io::split` for any other stream (such as an
/// [`EmulatedStream`]). `peer` is the address of the other end. The write half moves to a writer
/// task and is shut down at the end. Returns the bundles that never started (to retry
/// elsewhere).
async fn run_session<R, W>(
    mut rd: R,
    wr: W,
    role: Role,
    peer: SocketAddr,
    shared: &Shared,
    mut outgoing: Option<(&mut mpsc::Receiver<Job>, &mut VecDeque<Job>)>,
) -> Vec<Job>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let cfg = &shared.config;
    let mut session = Session::new(role, cfg.session_config(), Instant::now());
    let (wtx, wrx) = mpsc::channel::<Bytes>(32);
    let writer = tokio::spawn(writer_task(wr, wrx));
    let mut shutdown = shared.shutdown.clone();
    let mut shutting_down = false;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    // Most bytes held by the session's parse buffer: one whole message at our limits.
    let max_buffered = usize::try_from(session.max_message_len()).unwrap_or(usize::MAX);
    let mut deliveries: VecDeque<(u64, Received)> = VecDeque::new();
    // Bundles handed to the node whose verdict decides their final XFER_ACK, oldest first.
    let mut verdicts: VecDeque<(u64, CustodyWait)> = VecDeque::new();
    let max_pending = cfg.max_pending_custody.max(1);
    let mut in_flight: HashMap<u64, Job> = HashMap::new();
    let mut next_handle: u64 = 0;
    let mut left: Vec<Job> = Vec::new();
    let mut peer_node_id: Option<String> = None;
    let mut logged_bad_input = false;
    let mut writer_failed = false;
    // One timer for the session's deadlines, reset only when the deadline changes (a new
    // timer per loop turn cost a timer-wheel insertion and removal per message).
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;

    loop {
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::Established(p) => {
                    info!(peer_node = %p.node_id, keepalive = p.keepalive,
                        segment_mru = p.segment_mru, transfer_mru = p.transfer_mru,
                        "session established");
                    peer_node_id = Some(p.node_id);
                }
                Event::Received {
                    transfer_id,
                    bundle,
                } => {
                    let received = Received {
                        cla: CLA_NAME,
                        from: PeerAddr::Socket(peer),
                        peer_node_id: peer_node_id.clone(),
                        bundle,
                        custody: None,
                    };
                    deliveries.push_back((transfer_id, received));
                }
                Event::Transferred { handle } => {
                    if let Some(j) = in_flight.remove(&handle) {
                        shared.counters.record_out(j.bundle.len());
                        shared.report(j.id, peer, Outcome::Transferred).await;
                    }
                }
                Event::TransferFailed { handle, reason } => {
                    let Some(j) = in_flight.remove(&handle) else {
                        continue;
                    };
                    let failure = match reason {
                        TransferFailure::NotStarted if !shared.is_shutdown() => {
                            left.push(j);
                            continue;
                        }
                        _ if shared.is_shutdown() => FailureReason::Shutdown,
                        TransferFailure::NotStarted | TransferFailure::SessionEnded => {
                            FailureReason::Cancelled("TCPCL session ended".into())
                        }
                        TransferFailure::Refused(r) => {
                            FailureReason::Refused(format!("XFER_REFUSE {r:?}"))
                        }
                        TransferFailure::TooLarge { size, limit } => FailureReason::TooLarge {
                            size: usize::try_from(size).unwrap_or(usize::MAX),
                            limit: usize::try_from(limit).unwrap_or(usize::MAX),
                        },
                    };
                    shared.report(j.id, peer, Outcome::Failed(failure)).await;
                }
                Event::BadInput(detail) => {
                    shared.counters.record_bad_input();
                    if logged_bad_input {
                        debug!(%peer, "bad input: {detail}");
                    } else {
                        warn!(%peer, "bad input: {detail}");
                        logged_bad_input = true;
                    }
                }
                Event::Closed(reason) => match reason {
                    CloseReason::Terminated(_) => info!(?reason, "session closed"),
                    _ => debug!(?reason, "session closed"),
                },
            }
        }
        if session.is_closed() && !session.has_transmit() {
            break;
        }
        if writer_failed {
            // Nothing more can be written: leave even if the session still holds bytes to
            // send (looping on `has_transmit` here would spin without ever awaiting).
            if session.is_closed() {
                break;
            }
            session.connection_lost();
            continue;
        }
        // Hand bundles queued before this session to it first.
        if let Some((_, pending)) = outgoing.as_mut() {
            while session.can_send() {
                let Some(j) = pending.pop_front() else { break };
                let h = next_handle;
                next_handle += 1;
                if session.send_bundle(h, j.bundle.clone()).is_ok() {
                    in_flight.insert(h, j);
                } else {
                    pending.push_front(j);
                    break;
                }
            }
        }
        let can_read = deliveries.is_empty()
            && verdicts.len() < max_pending
            && !session.is_closed()
            && session.buffered_input() <= max_buffered;
        let can_deliver = !deliveries.is_empty() && verdicts.len() < max_pending;
        let can_take = !shutting_down
            && session.can_send()
            && outgoing.as_ref().is_some_and(|(_, p)| p.is_empty());
        let deadline = session.poll_timeout();
        if deadline != armed {
            if let Some(d) = deadline {
                timer.as_mut().reset(d.into());
            }
            armed = deadline;
        }
        let has_tx = session.has_transmit();
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v), if !shutting_down => {
                shutting_down = true;
                session.terminate(SessTermReason::Unknown, Instant::now());
            }
            permit = wtx.reserve(), if has_tx => match permit {
                Ok(permit) => {
                    let now = Instant::now();
                    if let Some(b) = session.poll_transmit(now) {
                        permit.send(b);
                    }
                    // Whatever else is ready, while the writer has room (one loop turn for
                    // many messages).
                    while session.has_transmit() {
                        let Ok(permit) = wtx.try_reserve() else { break };
                        let Some(b) = session.poll_transmit(now) else { break };
                        permit.send(b);
                    }
                }
                Err(_) => writer_failed = true,
            },
            permit = shared.channels.received.reserve(), if can_deliver => match permit {
                Ok(mut permit) => {
                    // Then as many more as the node's channel takes at once.
                    loop {
                        let Some((transfer_id, mut r)) = deliveries.pop_front() else { break };
                        shared.counters.record_in(r.bundle.len());
                        if cfg.custody_acks {
                            let (ack, wait) = CustodyAck::new();
                            r.custody = Some(ack);
                            permit.send(r);
                            verdicts.push_back((transfer_id, wait));
                        } else {
                            permit.send(r);
                            // The node has the bundle: only now does the final XFER_ACK go out.
                            session.accept_received(transfer_id);
                        }
                        if deliveries.is_empty() || verdicts.len() >= max_pending {
                            break;
                        }
                        match shared.channels.received.try_reserve() {
                            Ok(p) => permit = p,
                            Err(_) => break,
                        }
                    }
                }
                Err(_) => {
                    deliveries.clear();
                    session.terminate(SessTermReason::Unknown, Instant::now());
                }
            },
            verdict = async { match verdicts.front_mut() { Some((_, w)) => w.await, None => std::future::pending().await } }, if !verdicts.is_empty() => {
                if let Some((transfer_id, _)) = verdicts.pop_front() {
                    answer_received(&mut session, transfer_id, verdict);
                }
                // The verdicts that followed it and are in already (in order: acknowledgements
                // go out in transfer order).
                while let Some((_, w)) = verdicts.front_mut() {
                    let Some(verdict) = ready_now(w) else { break };
                    if let Some((transfer_id, _)) = verdicts.pop_front() {
                        answer_received(&mut session, transfer_id, verdict);
                    }
                }
            }
            r = rd.read_buf(&mut rbuf), if can_read => match r {
                Ok(0) | Err(_) => session.connection_lost(),
                Ok(_) => session.handle_input_buf(&mut rbuf, Instant::now()),
            },
            job = async { match outgoing.as_mut() { Some((rx, _)) => rx.recv().await, None => None } }, if can_take => {
                match job {
                    Some(mut j) => loop {
                        let h = next_handle;
                        next_handle += 1;
                        match session.send_bundle(h, j.bundle.clone()) {
                            Ok(()) => { in_flight.insert(h, j); }
                            Err(_) => left.push(j),
                        }
                        // Then the jobs already queued, while the session takes them.
                        if !session.can_send() {
                            break;
                        }
                        match outgoing.as_mut().map(|(rx, _)| rx.try_recv()) {
                            Some(Ok(next)) => j = next,
                            _ => break,
                        }
                    },
                    None => outgoing = None,
                }
            }
            () = &mut timer, if deadline.is_some() => {
                armed = None;
                session.handle_timeout(Instant::now());
            }
            res = wait_writer_dead(&wtx), if !writer_failed => {
                let () = res;
                writer_failed = true;
            }
        }
    }
    drop(wtx);
    match tokio::time::timeout(cfg.term_timeout, writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => debug!("write failed: {e}"),
        _ => debug!("writer did not finish"),
    }
    // Anything the session never reported (it reports every handle on close) is retried.
    left.extend(in_flight.into_values());
    left
}

/// RFC 9174 §5.2.4 reason for a node's refusal.
fn refuse_reason(r: Refusal) -> RefuseReason {
    match r {
        Refusal::NoResources => RefuseReason::NoResources,
        Refusal::NotAcceptable => RefuseReason::NotAcceptable,
        Refusal::Retransmit => RefuseReason::Retransmit,
    }
}

async fn wait_writer_dead(wtx: &mpsc::Sender<Bytes>) {
    wtx.closed().await
}

/// The final XFER_ACK, or XFER_REFUSE, for a received transfer the node gave `verdict` on.
fn answer_received(session: &mut Session, transfer_id: u64, verdict: Verdict) {
    match verdict {
        // The bundle is in the node's store: the final XFER_ACK goes out now.
        Verdict::Accept => session.accept_received(transfer_id),
        Verdict::Refuse(why) => {
            let reason = refuse_reason(why);
            debug!(transfer_id, ?reason, "node refused a received bundle");
            session.refuse_received(transfer_id, reason);
        }
    }
}

/// `wait`'s verdict if it is in already (polled once, without registering for a wake-up: the
/// session loop awaits the front verdict properly when this returns `None`).
fn ready_now(wait: &mut CustodyWait) -> Option<Verdict> {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(wait).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
