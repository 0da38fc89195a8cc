//! A tokio UDP driver for the sans-IO [`Engine`] (RFC 5326 §4 "underlying communication
//! service": LTP over UDP, one segment per datagram, IANA port 1113).
//!
//! One driver task owns one engine and one UDP socket (made with `socket2`, large send and
//! receive buffers) and serves several spans. Per the interoperability notes (ION sends from
//! ephemeral ports and expects reports at its configured address): every datagram for a span is
//! sent to the address configured for the span's engine ID, and segments are accepted from ANY
//! source address and port — the engine identifies the peer by the engine ID in the segment,
//! never by the source address.
//!
//! The loop: datagrams are read in batches ([`udp_io`]: `recvmmsg` and UDP GRO on Linux) and
//! go to [`Engine::handle_datagram`]; [`Engine::poll_transmit`] is drained into a bounded send
//! queue that is sent in batches (`sendmmsg` and UDP GSO on Linux; a full socket buffer suspends
//! sending until the socket is writable, not the task); events go to a bounded channel (when it
//! is full the driver stops reading the socket until the user catches up: back-pressure, LTP
//! recovers what the kernel drops); [`Engine::poll_timeout`] arms a timer that wakes the task to
//! the microsecond (`deadline.rs`: a timerfd on Linux, since tokio's sleeps tick in
//! milliseconds); commands arrive from [`LtpHandle`] over a bounded channel. An optional
//! [`Impairment`] (loss, delay) sits between the engine and the send queue, for tests, `ltpperf`
//! and emulated links: it decides per datagram, before batching, and sees each datagram's
//! [`Destination`] (peer engine and UDP address), so it can treat the links to different peers
//! differently.
//!
//! Spans can be changed while the driver runs: [`LtpHandle::configure_span`] reconfigures a span
//! in place ([`Engine::add_span`]), [`LtpHandle::set_span_address`] moves it to another address,
//! and [`LtpHandle::cancel_exports`] cancels every export session to a peer (RFC 5326 §4.2).

mod deadline;
mod impairment;
pub mod udp_io;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, warn};

use crate::engine::{Engine, EngineStats, Event, SendError, SpanConfig, Transmit};
use crate::segment::{CancelReason, EngineId, SessionId};
use deadline::DeadlineTimer;
use impairment::Delayed;
pub use impairment::{Destination, Impairment, SimpleImpairment};
use udp_io::UdpIo;
pub use udp_io::{IoConfig, Offload};

/// Datagrams taken from the engine per loop turn before the driver looks at the socket and
/// commands again.
const TX_BATCH: usize = 2048;
/// Datagrams read per loop turn once the socket is readable (one GRO buffer may add up to 64).
const RX_BATCH: usize = 1024;

/// Red octets delivered in a receive turn that end it (see [`Task::receive`]): the size from
/// which the engine reassembles red parts in pooled buffers (`red_part.rs`), the ones worth
/// handing back before the next block needs one. Smaller blocks, delivered a few per batch,
/// would only pay a yield each (4 KiB blocks at window 32 measured 6 % slower).
const YIELD_AFTER_RED_OCTETS: u64 = 64 * 1024;

/// What a handled datagram's slot in a receive batch holds until the batch is drained.
const NO_DATAGRAM: (Bytes, SocketAddr) = (
    Bytes::new(),
    SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
);

/// Driver settings.
pub struct DriverConfig {
    /// Local UDP address to bind (port 0: OS-assigned).
    pub bind: SocketAddr,
    /// Peer engine ID ↔ the UDP address its segments are sent to.
    pub spans: Vec<(EngineId, SocketAddr)>,
    /// SO_SNDBUF to request, in octets (the kernel may cap it).
    pub send_buffer: usize,
    /// SO_RCVBUF to request, in octets (the kernel may cap it).
    pub recv_buffer: usize,
    /// Optional emulated loss/delay on sent datagrams (per destination if the impairment
    /// distinguishes them).
    pub impairment: Option<Box<dyn Impairment + Send>>,
    /// Capacity of the event channel to the user, in events.
    pub event_queue: usize,
    /// Capacity of the event channel in octets of block data (red parts and green segments):
    /// events wait in the engine, and the socket is not read, while the user has this much
    /// unreceived (a single larger event still goes when the channel is empty).
    pub event_queue_bytes: usize,
    /// Capacity of the command channel from handles.
    pub command_queue: usize,
    /// Most datagrams held back by the impairment's delay; more are dropped and counted.
    pub max_delayed: usize,
    /// Learn the UDP address of a peer engine with no configured address from the source of
    /// the first segment whose session originator is that engine (for a receiver that does not
    /// know its senders in advance, e.g. `ltpperf recv`). Configured addresses are never
    /// replaced, and segments are still attributed by engine ID, not by address.
    pub learn_peer_addresses: bool,
    /// Most learned peer addresses kept (further unknown engines are not learned).
    pub max_learned_peers: usize,
    /// Socket I/O: send queue and receive pool bounds, batching, GSO/GRO.
    pub io: IoConfig,
    /// Busy polling (off when zero, the default): after the driver read or sent datagrams, it
    /// keeps trying the socket for this long, yielding to other tasks between tries, before it
    /// sleeps until the socket is readable. A receiver in the middle of a block then takes the
    /// next datagrams without being woken for them, and a sender waiting for a report takes it
    /// without a wake-up: on a fast link the wake-ups of both ends otherwise cost more CPU than
    /// the engine. At most this much CPU is spent per burst of traffic; nothing when idle.
    pub busy_poll: Duration,
}

impl DriverConfig {
    /// Defaults: 8 MiB socket buffers, no spans, no impairment, queues of 1024 (and events of
    /// at most 64 MiB of block data), batched I/O
    /// with GSO/GRO where the kernel has them ([`IoConfig::default`]).
    pub fn new(bind: SocketAddr) -> DriverConfig {
        DriverConfig {
            bind,
            spans: Vec::new(),
            send_buffer: 8 * 1024 * 1024,
            recv_buffer: 8 * 1024 * 1024,
            impairment: None,
            event_queue: 1024,
            event_queue_bytes: 64 * 1024 * 1024,
            command_queue: 1024,
            max_delayed: 1 << 20,
            learn_peer_addresses: false,
            max_learned_peers: 1024,
            io: IoConfig::default(),
            busy_poll: Duration::ZERO,
        }
    }
}

/// Driver-level counters plus the engine's.
#[derive(Clone, Debug, Default)]
pub struct DriverStats {
    /// The engine's counters.
    pub engine: EngineStats,
    /// Datagrams handed to the socket.
    pub datagrams_sent: u64,
    /// Octets handed to the socket.
    pub bytes_sent: u64,
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// Octets read from the socket.
    pub bytes_received: u64,
    /// Socket send errors (datagram lost).
    pub send_errors: u64,
    /// Datagrams for an engine ID with no configured address (dropped).
    pub no_route: u64,
    /// Datagrams dropped by the impairment (or its delay queue limit).
    pub impaired_drops: u64,
    /// Effective socket buffer sizes (send, receive), as the kernel granted them.
    pub socket_buffers: (usize, usize),
    /// Send system calls that sent something (one may carry many datagrams).
    pub send_calls: u64,
    /// Receive system calls that returned something.
    pub recv_calls: u64,
    /// Batching and offloads in use on the socket.
    pub offload: Offload,
    /// The smoothed round-trip time measured to each peer engine with an address
    /// ([`Engine::round_trip_estimate`]), for those with a sample: what the adaptive
    /// retransmission timers start from (`SpanConfig::adaptive_timers`).
    pub round_trips: BTreeMap<EngineId, Duration>,
    /// The share of red data each peer engine's reports claimed missing of late
    /// ([`Engine::loss_estimate`]), for those that reported: what turns checkpoint copies on.
    pub losses: BTreeMap<EngineId, f64>,
}

/// Errors of [`LtpHandle`] calls.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The engine refused the block.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The driver task has stopped.
    #[error("LTP driver stopped")]
    Closed,
}

enum Command {
    SendBlock {
        dest: EngineId,
        client_service_id: u64,
        block: Bytes,
        red_len: usize,
        reply: oneshot::Sender<Result<SessionId, SendError>>,
    },
    SetLink {
        peer: EngineId,
        up: bool,
    },
    SetSpanAddress {
        peer: EngineId,
        addr: SocketAddr,
    },
    ConfigureSpan {
        peer: EngineId,
        config: Box<SpanConfig>,
    },
    Cancel(SessionId),
    AcceptBlock(SessionId),
    RefuseBlock(SessionId, CancelReason),
    CancelExports {
        peer: EngineId,
        reply: oneshot::Sender<Vec<SessionId>>,
    },
    Stats(oneshot::Sender<DriverStats>),
    Shutdown,
}

/// Handle to a running driver (cheap to clone).
#[derive(Clone)]
pub struct LtpHandle {
    tx: mpsc::Sender<Command>,
    local_addr: SocketAddr,
}

impl LtpHandle {
    /// Starts sending a block to `dest`; the first `red_len` octets are red.
    pub async fn send_block(
        &self,
        dest: EngineId,
        client_service_id: u64,
        block: Bytes,
        red_len: usize,
    ) -> Result<SessionId, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::SendBlock {
            dest,
            client_service_id,
            block,
            red_len,
            reply,
        })
        .await?;
        self.reply(rx).await?.map_err(DriverError::from)
    }

    /// Link-state cue for the span to `peer` (RFC 5326 §6.1, §8).
    pub async fn set_link(&self, peer: EngineId, up: bool) -> Result<(), DriverError> {
        self.command(Command::SetLink { peer, up }).await
    }

    /// Sets (or changes) the UDP address that segments for `peer` are sent to.
    pub async fn set_span_address(
        &self,
        peer: EngineId,
        addr: SocketAddr,
    ) -> Result<(), DriverError> {
        self.command(Command::SetSpanAddress { peer, addr }).await
    }

    /// Configures the span to `peer`, or reconfigures it in place while its sessions go on
    /// ([`Engine::add_span`]): new light times and margin apply to timers started from now on,
    /// a new rate limit to pacing at once. The span's UDP address is set separately
    /// ([`set_span_address`](Self::set_span_address)).
    pub async fn configure_span(
        &self,
        peer: EngineId,
        config: SpanConfig,
    ) -> Result<(), DriverError> {
        self.command(Command::ConfigureSpan {
            peer,
            config: Box::new(config),
        })
        .await
    }

    /// Cancels a session at the user's request (RFC 5326 §6.19, USR_CNCLD).
    pub async fn cancel(&self, session: SessionId) -> Result<(), DriverError> {
        self.command(Command::Cancel(session)).await
    }

    /// Custody handshake ([`EngineConfig::confirm_red_parts`](crate::EngineConfig)): the
    /// client has taken the red part of import `session`; the sender is told now
    /// ([`Engine::accept_block`]). Too late (the session was cancelled meanwhile) is not an
    /// error: the engine ignores it, and the session's own event says how it ended.
    pub async fn accept_block(&self, session: SessionId) -> Result<(), DriverError> {
        self.command(Command::AcceptBlock(session)).await
    }

    /// Custody handshake: the client could not take the red part of import `session`; the
    /// import is cancelled with `reason` ([`Engine::refuse_block`]).
    pub async fn refuse_block(
        &self,
        session: SessionId,
        reason: CancelReason,
    ) -> Result<(), DriverError> {
        self.command(Command::RefuseBlock(session, reason)).await
    }

    /// Cancels every export session to `peer`, queued or open, at the user's request
    /// ([`Engine::cancel_exports`]: RFC 5326 §4.2 and §6.15, USR_CNCLD). Returns the sessions
    /// cancelled; each also gets an [`Event::ExportCancelled`]. Sessions that ended before the
    /// command reached the engine are not in the list (their own event says how they ended).
    pub async fn cancel_exports(&self, peer: EngineId) -> Result<Vec<SessionId>, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::CancelExports { peer, reply }).await?;
        self.reply(rx).await
    }

    /// Driver and engine counters.
    pub async fn stats(&self) -> Result<DriverStats, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Stats(tx)).await?;
        self.reply(rx).await
    }

    /// The bound local UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the driver task and waits until it has stopped (idempotent; any number of
    /// handles may call it at once).
    pub async fn shutdown(&self) {
        // Sent or not (the task may be gone already), the wait is for the task's end, not
        // for an answer to this command: see `reply`.
        let _ = self.tx.send(Command::Shutdown).await;
        self.stopped().await;
    }

    /// Completes once the driver task has ended (shut down, or its last handle dropped):
    /// the task's end drops the command queue's receiver.
    pub async fn stopped(&self) {
        self.tx.closed().await;
    }

    async fn command(&self, c: Command) -> Result<(), DriverError> {
        self.tx.send(c).await.map_err(|_| DriverError::Closed)
    }

    /// The driver's answer to a command just sent, or `Closed` once the task has ended without
    /// one. The task's end is watched, not only the reply's sender: a command that entered the
    /// queue just as the task stopped (tokio's bounded channel takes a message whose send
    /// began before the receiver closed, after that receiver has drained the queue) is never
    /// dropped while any handle lives, so its reply would be waited for forever. Two callers
    /// stopping one driver at once (dtnd's node and its LTP adapter) hung that way.
    async fn reply<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, DriverError> {
        tokio::select! {
            biased;
            r = rx => r.map_err(|_| DriverError::Closed),
            () = self.stopped() => Err(DriverError::Closed),
        }
    }
}

/// Octets of block data in events sent to the user and not yet received (shared by the
/// driver task and the [`EventReceiver`]).
#[derive(Debug, Default)]
struct QueuedBytes {
    bytes: AtomicUsize,
    /// Wakes the driver when the user receives an event.
    received: Notify,
}

/// Octets of block data an event carries (what the event channel's byte bound counts).
fn event_bytes(e: &Event) -> usize {
    match e {
        Event::BlockReceived { red, .. } => red.len(),
        Event::GreenSegment { data, .. } => data.len(),
        _ => 0,
    }
}

/// The driver's events, for the user: bounded in count ([`DriverConfig::event_queue`]) and in
/// octets of block data ([`DriverConfig::event_queue_bytes`]); while either is reached the
/// driver holds events back and stops reading its socket (LTP recovers what the kernel drops).
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::Receiver<Event>,
    queued: Arc<QueuedBytes>,
}

impl EventReceiver {
    /// The next event; None once the driver has stopped and every event was received.
    pub async fn recv(&mut self) -> Option<Event> {
        let e = self.rx.recv().await?;
        self.received(&e);
        Some(e)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        let e = self.rx.try_recv()?;
        self.received(&e);
        Ok(e)
    }

    /// Events waiting in the channel (received from the engine, not yet taken by the user).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is waiting in the channel.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn received(&self, e: &Event) {
        let n = event_bytes(e);
        if n > 0 {
            self.queued.bytes.fetch_sub(n, Ordering::AcqRel);
            self.queued.received.notify_one();
        }
    }
}

/// The driver: spawns the task that runs an engine on a UDP socket.
pub struct LtpDriver;

impl LtpDriver {
    /// Binds the socket and spawns the driver task on the current tokio runtime.
    pub fn spawn(config: DriverConfig, engine: Engine) -> io::Result<(LtpHandle, EventReceiver)> {
        let io = UdpIo::bind(
            config.bind,
            config.send_buffer,
            config.recv_buffer,
            &config.io,
        )?;
        let local_addr = io.local_addr();
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue.max(1));
        let (event_tx, event_rx) = mpsc::channel(config.event_queue.max(1));
        let queued = Arc::new(QueuedBytes::default());
        let task = Task {
            engine,
            io,
            spans: config.spans.into_iter().collect(),
            impairment: config.impairment,
            impaired: Vec::new(),
            delayed: BinaryHeap::new(),
            delayed_seq: 0,
            max_delayed: config.max_delayed,
            stats: DriverStats::default(),
            event_tx,
            queued: queued.clone(),
            max_event_bytes: config.event_queue_bytes,
            pending_event: None,
            delivered: false,
            rx_out: Vec::new(),
            learn: config.learn_peer_addresses,
            learned: 0,
            max_learned: config.max_learned_peers,
            busy_poll: config.busy_poll,
            poll_until: None,
        };
        tokio::spawn(task.run(cmd_rx));
        Ok((
            LtpHandle {
                tx: cmd_tx,
                local_addr,
            },
            EventReceiver {
                rx: event_rx,
                queued,
            },
        ))
    }
}

/// What the send path needs after a loop turn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tx {
    /// Nothing to send until something happens.
    Idle,
    /// The socket buffer is full: wait until the socket is writable.
    Blocked,
    /// The turn's budget is spent and the engine may have more: come back after a yield.
    More,
}

struct Task {
    engine: Engine,
    io: UdpIo,
    /// Peer engine → UDP address, looked up for every segment sent (a seeded fast hash).
    spans: crate::engine::Map<EngineId, SocketAddr>,
    impairment: Option<Box<dyn Impairment + Send>>,
    /// The impairment's answer for one segment, emptied and reused for the next.
    impaired: Vec<(Instant, Bytes, Bytes)>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    max_delayed: usize,
    stats: DriverStats,
    event_tx: mpsc::Sender<Event>,
    /// Block data in events the user has not received yet, and its bound.
    queued: Arc<QueuedBytes>,
    max_event_bytes: usize,
    /// An event held back because the channel is full (in events or in octets).
    pending_event: Option<Event>,
    /// A large red part went to the user during a receive turn: the turn ended there, and the task
    /// yields before it reads again (see [`Task::receive`]).
    delivered: bool,
    /// Datagrams of one receive batch (reused).
    rx_out: Vec<(Bytes, SocketAddr)>,
    learn: bool,
    learned: usize,
    max_learned: usize,
    busy_poll: Duration,
    /// Busy polling goes on until then (see [`DriverConfig::busy_poll`]).
    poll_until: Option<Instant>,
}

impl Task {
    async fn run(mut self, mut cmd_rx: mpsc::Receiver<Command>) {
        let mut timer = DeadlineTimer::new();
        loop {
            // Timers first: a socket that stays readable must not starve them.
            let now = Instant::now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.fire_timers();
            }
            if self.pending_event.is_none() && !self.rx_out.is_empty() {
                // What a turn that delivered a red part left unhandled.
                self.receive();
            }
            let tx = self.transmit();
            self.forward_events();
            if std::mem::take(&mut self.delivered) {
                // The client takes the red part now, before the rest of the batch is handled.
                tokio::task::yield_now().await;
                continue;
            }
            timer.set(self.next_deadline());
            let reading = self.pending_event.is_none();
            let polling = reading && tx != Tx::More && self.poll_until.is_some_and(|t| t > now);
            let byte_room = self.pending_event.as_ref().is_none_or(|e| self.room_for(e));
            // Clones, so that the permit and the wait borrow these locals rather than `self`.
            let event_tx = self.event_tx.clone();
            let queued = self.queued.clone();
            tokio::select! {
                biased;
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(c) => self.command(c),
                },
                permit = event_tx.reserve(), if !reading && byte_room => match permit {
                    Ok(p) => {
                        if let Some(e) = self.pending_event.take() {
                            self.queued.bytes.fetch_add(event_bytes(&e), Ordering::AcqRel);
                            p.send(e);
                        }
                    }
                    Err(_) => {
                        // The user dropped the receiver: events are discarded from now on.
                        self.pending_event = None;
                    }
                },
                _ = queued.received.notified(), if !reading && !byte_room => {},
                r = self.io.readable(), if reading => match r {
                    Ok(()) => self.receive(),
                    Err(e) => debug!(error = %e, "UDP receive error"),
                },
                r = self.io.writable(), if tx == Tx::Blocked => {
                    if let Err(e) = r {
                        debug!(error = %e, "UDP socket not writable");
                    }
                },
                _ = timer.expired() => self.fire_timers(),
                _ = tokio::task::yield_now(), if tx == Tx::More => {},
                _ = tokio::task::yield_now(), if polling => self.receive(),
            }
        }
        // What is queued goes if the socket takes it now; the rest is dropped with the task.
        self.io.flush();
        debug!("LTP driver stopped");
        // Returning drops `cmd_rx`: every `LtpHandle::stopped` completes.
    }

    /// Runs the engine's due timers, after taking in what has already arrived (one bounded
    /// read, unless events wait for the user): an answer that came in while the driver was
    /// busy sending (a turn sends up to [`TX_BATCH`] segments) is handled before the timer
    /// it answers, not after it. Timers fired first made the sender retransmit checkpoints
    /// whose reports sat unread in its socket: 1 MiB blocks at window 2 and 5 % loss
    /// retransmitted about 210 checkpoints per 256 blocks where about 40 were lost.
    fn fire_timers(&mut self) {
        if self.pending_event.is_none() {
            self.receive();
        }
        self.engine.handle_timeout(Instant::now());
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::SendBlock {
                dest,
                client_service_id,
                block,
                red_len,
                reply,
            } => {
                let r = self
                    .engine
                    .send_block(dest, client_service_id, block, red_len, now);
                let _ = reply.send(r);
            }
            Command::SetLink { peer, up } => self.engine.set_link(peer, up, now),
            Command::SetSpanAddress { peer, addr } => {
                self.spans.insert(peer, addr);
            }
            Command::ConfigureSpan { peer, config } => self.engine.add_span(peer, *config),
            Command::Cancel(s) => self.engine.cancel(s, now),
            Command::AcceptBlock(s) => {
                self.engine.accept_block(s, now);
            }
            Command::RefuseBlock(s, reason) => {
                self.engine.refuse_block(s, reason, now);
            }
            Command::CancelExports { peer, reply } => {
                let _ = reply.send(self.engine.cancel_exports(peer, now));
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown => unreachable!("handled by the loop"),
        }
    }

    fn stats(&self) -> DriverStats {
        let io = self.io.counters();
        DriverStats {
            engine: self.engine.stats(),
            datagrams_sent: io.datagrams_sent,
            bytes_sent: io.bytes_sent,
            datagrams_received: io.datagrams_received,
            bytes_received: io.bytes_received,
            send_errors: io.send_errors,
            socket_buffers: self.io.socket_buffers(),
            send_calls: io.send_calls,
            recv_calls: io.recv_calls,
            offload: self.io.offload(),
            round_trips: (self.spans.keys())
                .filter_map(|&peer| Some((peer, self.engine.round_trip_estimate(peer)?)))
                .collect(),
            losses: (self.spans.keys())
                .filter_map(|&peer| Some((peer, self.engine.loss_estimate(peer)?)))
                .collect(),
            ..self.stats.clone()
        }
    }

    /// Reads datagrams from the socket and hands them to the engine, one receive call (at most
    /// `recv_slots` buffers) at a time so that what is held between the socket and the engine
    /// stays within the pool's size and in cache, until the socket is empty or the turn's
    /// budget is spent.
    ///
    /// A datagram that completes a red part of [`YIELD_AFTER_RED_OCTETS`] or more (or the
    /// last of several smaller ones of one receive call that add up to it) ends the turn: the
    /// datagrams after it in its batch stay in `rx_out` for the next turn, and the task yields
    /// first (see [`Task::run`]), so that the client takes the block before more data is
    /// handled. A client that drops a delivered block at once thereby returns its reassembly
    /// buffer before the next block's data, right behind it in a window of sessions, needs one:
    /// that block reuses the buffer instead of faulting in a fresh one (64 MiB blocks of
    /// 60000-octet segments at window 8 held two buffers, and lost a tenth of their goodput to
    /// the second one's page faults).
    fn receive(&mut self) {
        if self.delivered {
            return; // the client's turn comes first
        }
        let mut batch = std::mem::take(&mut self.rx_out);
        let mut budget = RX_BATCH;
        loop {
            if batch.is_empty() {
                if budget == 0 {
                    break;
                }
                match self.io.try_recv(&mut batch, 1) {
                    Ok(0) => break,
                    Ok(n) => budget = budget.saturating_sub(n),
                    Err(e) => {
                        debug!(error = %e, "UDP receive error");
                        break;
                    }
                }
            }
            let now = Instant::now();
            self.keep_polling(now);
            let delivered_before = self.engine.red_bytes_delivered();
            let mut handled = 0;
            while handled < batch.len() {
                let (datagram, from) = std::mem::replace(&mut batch[handled], NO_DATAGRAM);
                handled += 1;
                if self.learn {
                    self.learn_address(&datagram, from);
                }
                self.engine.handle_datagram(datagram, now);
                if self.engine.red_bytes_delivered() - delivered_before >= YIELD_AFTER_RED_OCTETS {
                    self.delivered = true;
                    break;
                }
            }
            batch.drain(..handled);
            if self.delivered {
                break;
            }
        }
        self.rx_out = batch;
    }

    /// Traffic at `now`: busy polling goes on for [`DriverConfig::busy_poll`] from now.
    fn keep_polling(&mut self, now: Instant) {
        if !self.busy_poll.is_zero() {
            self.poll_until = Some(now + self.busy_poll);
        }
    }

    /// Records `from` as the address of the segment's session originator if none is known.
    fn learn_address(&mut self, datagram: &[u8], from: SocketAddr) {
        // Only the header is read (RFC 5326 §3.1: control byte, then the originator SDNV); the
        // engine decodes and validates the whole segment.
        let Some(rest) = datagram.get(1..) else {
            return;
        };
        let Ok((originator, _)) = crate::sdnv::decode_u64(rest) else {
            return;
        };
        if self.learned < self.max_learned && !self.spans.contains_key(&originator) {
            debug!(originator, %from, "learned peer address");
            self.spans.insert(originator, from);
            self.learned += 1;
        }
    }

    /// Moves the engine's output (through the impairment) into the send queue while it has
    /// room, and sends the queue, for at most one turn's budget.
    ///
    /// Each batch is stamped with the time it is made: what the engine records of a segment
    /// as it takes it (a checkpoint's send time, hence its timer and the round trip sampled
    /// from its answer, and pacing) must be when it left. One stamp for the whole turn
    /// (up to [`TX_BATCH`] segments, a 1 MiB block at 1400 octets) made checkpoints look
    /// sent when their block started: round-trip samples on loopback came out near 0.9 ms
    /// where the answers took 0.08 ms, and a lost checkpoint waited about 1 ms for its timer.
    fn transmit(&mut self) -> Tx {
        let mut now = Instant::now();
        self.release_delayed(now);
        let mut budget = TX_BATCH;
        loop {
            let mut engine_idle = false;
            while !self.io.batch_full() && budget > 0 {
                let Some(segment) = self.engine.poll_transmit_parts(now) else {
                    engine_idle = true;
                    break;
                };
                budget -= 1;
                self.enqueue(now, segment);
            }
            if budget < TX_BATCH {
                self.keep_polling(now);
            }
            if !self.io.flush() {
                return Tx::Blocked;
            }
            if engine_idle {
                return Tx::Idle;
            }
            if budget == 0 {
                return Tx::More;
            }
            now = Instant::now();
        }
    }

    /// Queues one segment of the engine for its span's address, after the impairment. A data
    /// segment's header and data are queued as they are (gathered by the socket); an
    /// impairment may drop, duplicate or hold the pair (`Impairment::on_send_parts`).
    fn enqueue(&mut self, now: Instant, segment: Transmit) {
        let peer = segment.peer;
        let Some(addr) = self.route(peer) else {
            return;
        };
        let Some(imp) = self.impairment.as_mut() else {
            self.io.push_parts(addr, segment.header, segment.payload);
            return;
        };
        let dest = Destination { engine: peer, addr };
        let mut out = std::mem::take(&mut self.impaired);
        imp.on_send_parts(now, dest, segment.header, segment.payload, &mut out);
        if out.is_empty() {
            self.stats.impaired_drops += 1;
        }
        for (at, header, payload) in out.drain(..) {
            if at <= now {
                self.io.push_parts(addr, header, payload);
            } else if self.delayed.len() >= self.max_delayed {
                self.stats.impaired_drops += 1;
            } else {
                self.delayed_seq += 1;
                self.delayed.push(Reverse(Delayed {
                    at,
                    seq: self.delayed_seq,
                    addr,
                    header,
                    payload,
                }));
            }
        }
        self.impaired = out;
    }

    /// Queues the delayed datagrams that are due (bounded by `max_delayed`).
    fn release_delayed(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|d| d.0.at <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.io.push_parts(d.addr, d.header, d.payload);
            }
        }
    }

    /// The address of `peer`'s span; counts (and logs once) a datagram with no route.
    fn route(&mut self, peer: EngineId) -> Option<SocketAddr> {
        let addr = self.spans.get(&peer).copied();
        if addr.is_none() {
            self.stats.no_route += 1;
            if self.stats.no_route == 1 {
                warn!(
                    peer,
                    "no UDP address configured for engine; datagram dropped"
                );
            }
        }
        addr
    }

    fn forward_events(&mut self) {
        if self.pending_event.is_some() {
            return;
        }
        while let Some(e) = self.engine.poll_event() {
            if !self.room_for(&e) {
                self.pending_event = Some(e);
                return;
            }
            // Counted before it is sent: the user may receive it (and uncount it) at once.
            let n = event_bytes(&e);
            self.queued.bytes.fetch_add(n, Ordering::AcqRel);
            match self.event_tx.try_send(e) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(e)) => {
                    self.queued.bytes.fetch_sub(n, Ordering::AcqRel);
                    self.pending_event = Some(e);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.queued.bytes.fetch_sub(n, Ordering::AcqRel);
                }
            }
        }
    }

    /// Whether event `e` may go to the user now as far as the byte bound goes: it carries no
    /// block data, or the channel holds none, or it fits under the bound (or nobody listens).
    fn room_for(&self, e: &Event) -> bool {
        let n = event_bytes(e);
        let queued = self.queued.bytes.load(Ordering::Acquire);
        n == 0
            || queued == 0
            || queued.saturating_add(n) <= self.max_event_bytes
            || self.event_tx.is_closed()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let d = self.delayed.peek().map(|d| d.0.at);
        match (self.engine.poll_timeout(), d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command left in the queue when the task ends (neither answered nor dropped, as when
    /// its send races the task's last drain of the queue) does not leave its caller waiting;
    /// nor does a shutdown.
    #[tokio::test]
    async fn requests_the_stopped_task_never_answers_end() {
        let (tx, mut rx) = mpsc::channel(4);
        let h = LtpHandle {
            tx,
            local_addr: "127.0.0.1:1113".parse().unwrap(),
        };
        let (h1, h2) = (h.clone(), h.clone());
        let stats = tokio::spawn(async move { h1.stats().await.map(|_| ()) });
        let cancel = tokio::spawn(async move { h2.cancel_exports(7).await.map(|_| ()) });
        for _ in 0..1000 {
            if rx.len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(rx.len(), 2, "the commands were not queued");
        // The task stops without taking them: the queue still holds their reply senders.
        rx.close();
        let limit = Duration::from_secs(10);
        for r in [stats, cancel] {
            let r = tokio::time::timeout(limit, r)
                .await
                .expect("a request still waits");
            assert!(matches!(r.unwrap(), Err(DriverError::Closed)));
        }
        tokio::time::timeout(limit, h.shutdown())
            .await
            .expect("shutdown still waits");
        drop(rx);
    }
}
