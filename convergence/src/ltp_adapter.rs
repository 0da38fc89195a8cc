//! LTP convergence-layer adapter: bundles over the `ltp` engine (RFC 5326), following the
//! bundle protocol's use of LTP as in RFC 9171 §7 and ION's ltpcla.
//!
//! - **Aggregation** (as ION does): bundles for one span are concatenated into one LTP block
//!   until the block reaches the span's `aggregation_size` or its oldest bundle has waited
//!   `aggregation_time`; then the block is sent in one session. A bundle that would take the
//!   block past the size limit closes the current block first; a bundle at or above the limit is
//!   sent in a block of its own. Urgent bundles ([`LtpAdapter::send_urgent`]) close the block at
//!   once, without waiting.
//! - **Red by default** (reliable: RFC 5326 §6 retransmission until the report covers the whole
//!   block); a span may be configured green (`SpanPolicy::green`), sent without
//!   acknowledgement, like UDP.
//! - **Outcomes**: each bundle's outcome follows its block's session: `Transferred` when the
//!   engine reports transmission completed (for red: every byte acknowledged by the receiver,
//!   RFC 5326 §6.12), `Failed(Cancelled)` when the session is cancelled (§6.19–6.20),
//!   `Failed(Refused|Unreachable|TooLarge)` when the engine refuses the block, and
//!   `Failed(Shutdown)` for everything pending at shutdown.
//! - **Span cancel** ([`LtpAdapter::cancel_span`], e.g. when a contact ends with transfers
//!   still open): the bundles aggregating for the span and every export session to its engine
//!   (open or queued, RFC 5326 §4.2 cancellation request, USR_CNCLD) are failed with
//!   `Failed(Cancelled)` at once; sessions that ended before the cancel reached the engine keep
//!   the outcome they ended with. The span stays usable: later bundles start new sessions.
//! - **Span settings** change at run time through the driver handle
//!   ([`LtpAdapter::ltp`], [`LtpHandle::configure_span`]).
//! - **Reception**: a received block (the red part, or a green block once all its segments have
//!   arrived contiguously) is split into bundles, each a self-delimiting CBOR item (a bundle is
//!   an indefinite-length array ending with the break byte 0xff, RFC 9171 §4.1), found by a
//!   bounded CBOR skipper ([`split_bundles`]). A block that does not split cleanly delivers the
//!   bundles before the bad item and counts the rest as bad input.
//! - **Custody** (when the engine is built with `EngineConfig::confirm_red_parts`): each
//!   bundle of a received red part reaches the node with a [`CustodyAck`]; the LTP report that
//!   acknowledges the whole red part is held until every bundle of the block is answered.
//!   Accepted (stored), or refused as not acceptable (retrying would not help; the node
//!   discarded it): the block is acknowledged (`Engine::accept_block`). Refused for lack of
//!   resources or a failed write: the import is cancelled with USR_CNCLD
//!   (`Engine::refuse_block`, RFC 5326 §6.17), so the sender keeps the block and its node
//!   routes the bundles again. Without that engine setting (or for green data) bundles arrive
//!   with no custody handle and LTP acknowledges the red part as soon as it is complete.
//! - The received-bundle channel back-pressures the adapter task, which stops draining the LTP
//!   driver's events, which stops the driver reading its socket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ltp::driver::{DriverConfig, DriverError, EventReceiver, LtpDriver, LtpHandle};
use ltp::{Engine, EngineId, Event, SessionId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::adapter::{
    AdapterChannels, ConvergenceLayer, CounterSnapshot, Counters, CustodyAck, CustodyWait,
    FailureReason, Outcome, OutcomeReport, PeerAddr, Received, Refusal, SendError, TransferId,
    Verdict,
};

/// The adapter's name, used in [`Received::cla`].
pub const NAME: &str = "ltp";
/// LTP client service ID of the bundle protocol (IANA "LTP Client Service Identifiers": 1).
pub const BUNDLE_PROTOCOL_CLIENT_SERVICE: u64 = 1;
/// Deepest CBOR nesting the splitter follows before rejecting the block.
pub const MAX_CBOR_DEPTH: usize = 64;

/// Per-span sending policy.
#[derive(Clone, Debug)]
pub struct SpanPolicy {
    /// The peer engine.
    pub engine: EngineId,
    /// Send blocks green (unacknowledged) instead of red.
    pub green: bool,
    /// Close a block once it holds this many bytes.
    pub aggregation_size: usize,
    /// Close a block once its oldest bundle has waited this long.
    pub aggregation_time: Duration,
}

impl SpanPolicy {
    /// Red, 64 KiB or 100 ms aggregation (ION-like defaults), for `engine`.
    pub fn new(engine: EngineId) -> Self {
        SpanPolicy {
            engine,
            green: false,
            aggregation_size: 64 * 1024,
            aggregation_time: Duration::from_millis(100),
        }
    }
}

/// Adapter settings (the engine and driver are configured by the caller).
#[derive(Clone, Debug)]
pub struct LtpAdapterConfig {
    /// Spans bundles may be sent on.
    pub spans: Vec<SpanPolicy>,
    /// LTP client service ID used for bundles.
    pub client_service_id: u64,
    /// Bundles that may wait in the adapter's input queue.
    pub send_queue: usize,
    /// Largest bundle accepted by `send`.
    pub max_bundle_size: usize,
    /// Most incomplete green blocks kept for reassembly (oldest evicted beyond).
    pub max_green_blocks: usize,
    /// Most bytes held in incomplete green blocks (a block that would exceed it is discarded).
    pub max_green_bytes: usize,
}

impl Default for LtpAdapterConfig {
    fn default() -> Self {
        LtpAdapterConfig {
            spans: Vec::new(),
            client_service_id: BUNDLE_PROTOCOL_CLIENT_SERVICE,
            send_queue: 4096,
            max_bundle_size: 16 * 1024 * 1024,
            max_green_blocks: 64,
            max_green_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Job {
    engine: EngineId,
    id: TransferId,
    bundle: Bytes,
    urgent: bool,
}

/// What the adapter task is asked to do, in the order asked.
enum Msg {
    Send(Job),
    CancelSpan {
        engine: EngineId,
        reply: oneshot::Sender<SpanCancelled>,
    },
}

/// What [`LtpAdapter::cancel_span`] cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanCancelled {
    /// LTP export sessions cancelled in the engine (open or queued).
    pub sessions: usize,
    /// Bundles reported `Failed(Cancelled)`: carried by those sessions or still aggregating.
    pub bundles: usize,
}

/// The LTP convergence-layer adapter (see the module docs).
pub struct LtpAdapter {
    spans: Vec<EngineId>,
    max_bundle_size: usize,
    queue: Mutex<Option<mpsc::Sender<Msg>>>,
    counters: Arc<Counters>,
    handle: LtpHandle,
}

impl std::fmt::Debug for LtpAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtpAdapter")
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl LtpAdapter {
    /// Start the LTP driver for `engine` (whose spans must be configured) with `driver`
    /// (span addresses, socket, impairment), and the adapter task.
    pub fn spawn(
        engine: Engine,
        driver: DriverConfig,
        config: LtpAdapterConfig,
        channels: AdapterChannels,
    ) -> io::Result<Arc<LtpAdapter>> {
        if config.send_queue == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send_queue must be positive",
            ));
        }
        let custody = engine.confirms_red_parts();
        let (handle, events) = LtpDriver::spawn(driver, engine)?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(config.send_queue);
        let spans = config.spans.iter().map(|s| s.engine).collect();
        let max_bundle_size = config.max_bundle_size;
        let task = Task {
            policies: config.spans.iter().map(|s| (s.engine, s.clone())).collect(),
            config,
            handle: handle.clone(),
            channels,
            counters: counters.clone(),
            open: HashMap::new(),
            sessions: HashMap::new(),
            green: HashMap::new(),
            green_order: VecDeque::new(),
            green_bytes: 0,
            custody,
        };
        tokio::spawn(task.run(rx, events));
        Ok(Arc::new(LtpAdapter {
            spans,
            max_bundle_size,
            queue: Mutex::new(Some(tx)),
            counters,
            handle,
        }))
    }

    /// The LTP driver's handle (stats, link cues, span addresses, span settings with
    /// [`LtpHandle::configure_span`]).
    pub fn ltp(&self) -> &LtpHandle {
        &self.handle
    }

    /// Cancels everything in progress to the span's peer `engine` (e.g. its contact ended):
    /// bundles still aggregating for the span, and every LTP export session to `engine`, open
    /// or queued (RFC 5326 §4.2 cancellation request, §6.15 cancel from the block sender,
    /// USR_CNCLD). Every bundle they carry gets one `Failed(Cancelled)` outcome, reported
    /// before this returns (so the outcomes channel must be drained meanwhile). A session that
    /// ended before the cancel reached the engine keeps the outcome it ended with.
    ///
    /// Ordered with `send` (one queue): bundles accepted before the call are cancelled, bundles
    /// accepted after it returns start new sessions on the span as usual. Link state and span
    /// settings are left alone (see [`LtpHandle::set_link`], [`LtpHandle::configure_span`]).
    /// Errors: `UnknownPeer` if `engine` is not a span of this adapter, `Shutdown` after
    /// shutdown.
    pub async fn cancel_span(&self, engine: EngineId) -> Result<SpanCancelled, SendError> {
        if !self.spans.contains(&engine) {
            return Err(SendError::UnknownPeer(PeerAddr::LtpEngine(engine)));
        }
        let tx = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SendError::Shutdown)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Msg::CancelSpan { engine, reply })
            .await
            .map_err(|_| SendError::Shutdown)?;
        drop(tx);
        rx.await.map_err(|_| SendError::Shutdown)
    }

    /// Like [`ConvergenceLayer::send`], but the bundle's block is sent at once, without
    /// waiting for more bundles to aggregate.
    pub fn send_urgent(
        &self,
        peer: &PeerAddr,
        id: TransferId,
        bundle: Bytes,
    ) -> Result<(), SendError> {
        self.enqueue(peer, id, bundle, true)
    }

    fn enqueue(
        &self,
        peer: &PeerAddr,
        id: TransferId,
        bundle: Bytes,
        urgent: bool,
    ) -> Result<(), SendError> {
        let engine = match peer {
            PeerAddr::LtpEngine(e) if self.spans.contains(e) => *e,
            other => return Err(SendError::UnknownPeer(other.clone())),
        };
        if bundle.len() > self.max_bundle_size {
            return Err(SendError::TooLarge {
                size: bundle.len(),
                limit: self.max_bundle_size,
            });
        }
        let guard = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref().ok_or(SendError::Shutdown)?;
        tx.try_send(Msg::Send(Job {
            engine,
            id,
            bundle,
            urgent,
        }))
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SendError::Shutdown,
        })
    }
}

impl ConvergenceLayer for LtpAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send(&self, peer: &PeerAddr, id: TransferId, bundle: Bytes) -> Result<(), SendError> {
        self.enqueue(peer, id, bundle, false)
    }

    fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    fn shutdown(&self) {
        // Closing the queue ends the task, which fails everything pending with `Shutdown`
        // and stops the driver.
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for LtpAdapter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A block being aggregated for one span.
struct OpenBlock {
    bundles: Vec<(TransferId, usize)>,
    data: BytesMut,
    deadline: Instant,
}

/// A green block being reassembled from its segments.
struct GreenBlock {
    from: EngineId,
    parts: BTreeMap<u64, Bytes>,
    bytes: usize,
    end: Option<u64>,
}

struct Task {
    config: LtpAdapterConfig,
    policies: HashMap<EngineId, SpanPolicy>,
    handle: LtpHandle,
    channels: AdapterChannels,
    counters: Arc<Counters>,
    open: HashMap<EngineId, OpenBlock>,
    sessions: HashMap<SessionId, (EngineId, Vec<(TransferId, usize)>)>,
    green: HashMap<SessionId, GreenBlock>,
    green_order: VecDeque<SessionId>,
    green_bytes: usize,
    /// The engine holds red parts until they are accepted (see the module docs).
    custody: bool,
}

impl Task {
    async fn run(mut self, mut jobs: mpsc::Receiver<Msg>, mut events: EventReceiver) {
        let mut events_open = true;
        loop {
            let next = self.open.values().map(|b| b.deadline).min();
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(Msg::Send(job)) => self.on_job(job).await,
                    Some(Msg::CancelSpan { engine, reply }) => {
                        let done = self.cancel_span(engine).await;
                        let _ = reply.send(done);
                    }
                    None => break,
                },
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => {
                        tracing::warn!("LTP driver stopped");
                        events_open = false;
                    }
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    let due: Vec<EngineId> = self
                        .open
                        .iter()
                        .filter(|(_, b)| b.deadline <= now)
                        .map(|(e, _)| *e)
                        .collect();
                    for engine in due {
                        self.flush(engine).await;
                    }
                }
            }
        }
        // Shutdown: fail everything still pending.
        let open: Vec<_> = self.open.drain().collect();
        for (engine, block) in open {
            self.report_all(engine, &block.bundles, FailureReason::Shutdown)
                .await;
        }
        let sessions: Vec<_> = self.sessions.drain().collect();
        for (_, (engine, bundles)) in sessions {
            self.report_all(engine, &bundles, FailureReason::Shutdown)
                .await;
        }
        self.handle.shutdown().await;
    }

    async fn on_job(&mut self, job: Job) {
        let Some(policy) = self.policies.get(&job.engine).cloned() else {
            // `send` checks the span; unreachable in practice, but report rather than lose.
            self.report(
                job.engine,
                job.id,
                0,
                Outcome::Failed(FailureReason::Unreachable("no such span".into())),
            )
            .await;
            return;
        };
        let len = job.bundle.len();
        let would_overflow = self
            .open
            .get(&job.engine)
            .is_some_and(|b| !b.data.is_empty() && b.data.len() + len > policy.aggregation_size);
        if would_overflow {
            self.flush(job.engine).await;
        }
        let block = self.open.entry(job.engine).or_insert_with(|| OpenBlock {
            bundles: Vec::new(),
            data: BytesMut::new(),
            deadline: Instant::now() + policy.aggregation_time,
        });
        block.data.extend_from_slice(&job.bundle);
        block.bundles.push((job.id, len));
        if job.urgent || block.data.len() >= policy.aggregation_size {
            self.flush(job.engine).await;
        }
    }

    /// Fail the bundles aggregating for `engine` and cancel its export sessions, failing the
    /// bundles of every session the engine cancelled (see [`LtpAdapter::cancel_span`]).
    async fn cancel_span(&mut self, engine: EngineId) -> SpanCancelled {
        let reason = FailureReason::Cancelled(format!(
            "LTP span to engine {engine} cancelled by the user (USR_CNCLD)"
        ));
        let mut done = SpanCancelled::default();
        if let Some(block) = self.open.remove(&engine) {
            done.bundles += block.bundles.len();
            self.report_all(engine, &block.bundles, reason.clone())
                .await;
        }
        // If the driver stopped, nothing is cancelled here: the task's shutdown fails the rest.
        let sessions = self.handle.cancel_exports(engine).await.unwrap_or_default();
        for session in sessions {
            // The engine's ExportCancelled events that follow find nothing left to report.
            if let Some((e, bundles)) = self.sessions.remove(&session) {
                done.sessions += 1;
                done.bundles += bundles.len();
                self.report_all(e, &bundles, reason.clone()).await;
            }
        }
        tracing::debug!(
            engine,
            sessions = done.sessions,
            bundles = done.bundles,
            "LTP span cancelled"
        );
        done
    }

    /// Send the open block for `engine` in one LTP session.
    async fn flush(&mut self, engine: EngineId) {
        let Some(block) = self.open.remove(&engine) else {
            return;
        };
        let green = self.policies.get(&engine).is_some_and(|p| p.green);
        let data = block.data.freeze();
        let red_len = if green { 0 } else { data.len() };
        let size = data.len();
        match self
            .handle
            .send_block(engine, self.config.client_service_id, data, red_len)
            .await
        {
            Ok(session) => {
                tracing::trace!(
                    ?session,
                    engine,
                    bundles = block.bundles.len(),
                    size,
                    "LTP block sent"
                );
                self.sessions.insert(session, (engine, block.bundles));
            }
            Err(e) => {
                tracing::debug!(engine, error = %e, "LTP block refused");
                let reason = match e {
                    DriverError::Closed => FailureReason::Shutdown,
                    DriverError::Send(ltp::SendError::UnknownSpan(_)) => {
                        FailureReason::Unreachable(e.to_string())
                    }
                    DriverError::Send(ltp::SendError::BlockTooLarge { max, .. }) => {
                        FailureReason::TooLarge {
                            size,
                            limit: usize::try_from(max).unwrap_or(usize::MAX),
                        }
                    }
                    DriverError::Send(other) => FailureReason::Refused(other.to_string()),
                };
                self.report_all(engine, &block.bundles, reason).await;
            }
        }
    }

    async fn report(&self, engine: EngineId, id: TransferId, len: usize, outcome: Outcome) {
        match &outcome {
            Outcome::Transferred => self.counters.record_out(len),
            Outcome::Failed(r) => self.counters.record_failure(r.kind()),
        }
        let report = OutcomeReport {
            id,
            peer: PeerAddr::LtpEngine(engine),
            outcome,
        };
        if self.channels.outcomes.send(report).await.is_err() {
            tracing::debug!("outcome channel closed");
        }
    }

    async fn report_all(
        &self,
        engine: EngineId,
        bundles: &[(TransferId, usize)],
        reason: FailureReason,
    ) {
        for (id, len) in bundles {
            self.report(engine, *id, *len, Outcome::Failed(reason.clone()))
                .await;
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::TransmissionCompleted { session } => {
                if let Some((engine, bundles)) = self.sessions.remove(&session) {
                    for (id, len) in bundles {
                        self.report(engine, id, len, Outcome::Transferred).await;
                    }
                }
            }
            Event::ExportCancelled {
                session,
                reason,
                by_peer,
            } => {
                if let Some((engine, bundles)) = self.sessions.remove(&session) {
                    let who = if by_peer { "receiver" } else { "sender" };
                    let r = FailureReason::Cancelled(format!(
                        "LTP session cancelled by {who}: {reason:?}"
                    ));
                    self.report_all(engine, &bundles, r).await;
                }
            }
            Event::BlockReceived {
                session,
                client_service_id,
                red,
            } => {
                if client_service_id == self.config.client_service_id {
                    self.deliver_red(session, red).await;
                } else {
                    tracing::debug!(
                        client_service_id,
                        "LTP block for another client service ignored"
                    );
                    if self.custody {
                        // Nobody here can take it: do not leave the sender waiting.
                        let _ = self
                            .handle
                            .refuse_block(session, ltp::CancelReason::UnreachableClient)
                            .await;
                    }
                }
            }
            Event::GreenSegment {
                session,
                client_service_id,
                offset,
                data,
                end_of_block,
            } => {
                if client_service_id == self.config.client_service_id {
                    self.on_green(session, offset, data, end_of_block).await;
                }
            }
            Event::ImportCancelled { session, .. } => {
                if let Some(g) = self.green.remove(&session) {
                    self.green_bytes -= g.bytes;
                    self.green_order.retain(|s| *s != session);
                }
            }
        }
    }

    async fn on_green(&mut self, session: SessionId, offset: u64, data: Bytes, eob: bool) {
        if !self.green.contains_key(&session) {
            if self.green.len() >= self.config.max_green_blocks {
                if let Some(old) = self.green_order.pop_front() {
                    if let Some(g) = self.green.remove(&old) {
                        self.green_bytes -= g.bytes;
                        self.counters.record_bad_input();
                    }
                }
            }
            self.green.insert(
                session,
                GreenBlock {
                    from: session.originator,
                    parts: BTreeMap::new(),
                    bytes: 0,
                    end: None,
                },
            );
            self.green_order.push_back(session);
        }
        if self.green_bytes + data.len() > self.config.max_green_bytes {
            if let Some(g) = self.green.remove(&session) {
                self.green_bytes -= g.bytes;
                self.green_order.retain(|s| *s != session);
            }
            self.counters.record_bad_input();
            return;
        }
        let Some(g) = self.green.get_mut(&session) else {
            return;
        };
        let len = data.len();
        if eob {
            g.end = Some(offset + len as u64);
        }
        if g.parts.insert(offset, data).is_none() {
            g.bytes += len;
            self.green_bytes += len;
        }
        // Complete when the parts tile [0, end) exactly.
        let Some(end) = g.end else { return };
        let mut pos = 0u64;
        for (off, part) in &g.parts {
            if *off != pos {
                return;
            }
            pos += part.len() as u64;
        }
        if pos != end {
            return;
        }
        let Some(g) = self.green.remove(&session) else {
            return;
        };
        self.green_bytes -= g.bytes;
        self.green_order.retain(|s| *s != session);
        let mut block = BytesMut::with_capacity(g.bytes);
        for part in g.parts.values() {
            block.extend_from_slice(part);
        }
        // Green data is never acknowledged: no custody handle.
        self.deliver_block(g.from, block.freeze(), None).await;
    }

    /// A received red part: its bundles go to the node, and with custody the LTP report that
    /// acknowledges the block waits for the node's verdicts on all of them.
    async fn deliver_red(&self, session: SessionId, red: Bytes) {
        if !self.custody {
            self.deliver_block(session.originator, red, None).await;
            return;
        }
        let mut waits = Vec::new();
        self.deliver_block(session.originator, red, Some(&mut waits))
            .await;
        let handle = self.handle.clone();
        // Bounded: each wait resolves when the node answers or drops the bundle's handle.
        tokio::spawn(async move {
            match block_verdict(waits).await {
                None => {
                    let _ = handle.accept_block(session).await;
                }
                Some(refusal) => {
                    tracing::debug!(?session, ?refusal, "LTP block refused by the node");
                    let _ = handle
                        .refuse_block(session, ltp::CancelReason::UserCancelled)
                        .await;
                }
            }
        });
    }

    /// Split `block` into bundles and hand them to the node; with `custody`, each bundle gets a
    /// [`CustodyAck`] whose wait is pushed there.
    async fn deliver_block(
        &self,
        from: EngineId,
        block: Bytes,
        mut custody: Option<&mut Vec<CustodyWait>>,
    ) {
        let (bundles, error) = split_bundles(&block);
        if let Some(e) = error {
            // The bundles before the bad item are delivered; the rest cannot be, however
            // often it is retransmitted, so it does not hold back the block's acknowledgement.
            tracing::debug!(from, error = %e, "LTP block does not split into bundles");
            self.counters.record_bad_input();
        }
        for bundle in bundles {
            self.counters.record_in(bundle.len());
            let ack = custody.as_mut().map(|waits| {
                let (ack, wait) = CustodyAck::new();
                waits.push(wait);
                ack
            });
            let r = Received {
                cla: NAME,
                from: PeerAddr::LtpEngine(from),
                peer_node_id: None,
                bundle,
                custody: ack,
            };
            if self.channels.received.send(r).await.is_err() {
                // The node is gone: the unsent bundles' handles are dropped with `r`, which
                // refuses the block (Retransmit) if custody is on.
                tracing::debug!("received channel closed");
                return;
            }
        }
    }
}

/// The node's verdict on a whole block: `None` if it may be acknowledged (every bundle stored,
/// consumed, or refused as not acceptable, which retransmission would not change), else the
/// first refusal that asks the sender to keep the block.
async fn block_verdict(waits: Vec<CustodyWait>) -> Option<Refusal> {
    let mut refusal = None;
    for wait in waits {
        match wait.await {
            Verdict::Accept | Verdict::Refuse(Refusal::NotAcceptable) => {}
            Verdict::Refuse(r) => {
                refusal.get_or_insert(r);
            }
        }
    }
    refusal
}

/// Why a block did not split cleanly into bundles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// An item does not start with 0x9f (indefinite-length array), RFC 9171 §4.1.
    #[error("item at offset {0} is not an indefinite-length array")]
    NotABundle(usize),
    /// The CBOR is truncated or malformed.
    #[error("malformed or truncated CBOR at offset {0}")]
    Malformed(usize),
    /// Nesting deeper than [`MAX_CBOR_DEPTH`].
    #[error("CBOR nesting deeper than {MAX_CBOR_DEPTH} at offset {0}")]
    TooDeep(usize),
}

/// Split an LTP block into the bundles it carries: each a CBOR indefinite-length array
/// (RFC 9171 §4.1), returned as zero-copy slices. Returns the bundles before the first bad
/// item, and the error if there was one.
pub fn split_bundles(block: &Bytes) -> (Vec<Bytes>, Option<SplitError>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < block.len() {
        if block[pos] != 0x9f {
            return (out, Some(SplitError::NotABundle(pos)));
        }
        match skip_item(block, pos, 0) {
            Ok(end) => {
                out.push(block.slice(pos..end));
                pos = end;
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Read a CBOR head at `pos`: (major type, argument or None for indefinite, next position).
fn read_head(b: &[u8], pos: usize) -> Result<(u8, Option<u64>, usize), SplitError> {
    let first = *b.get(pos).ok_or(SplitError::Malformed(pos))?;
    let major = first >> 5;
    let info = first & 0x1f;
    let (arg, next) = match info {
        0..=23 => (Some(info as u64), pos + 1),
        24..=27 => {
            let n = 1usize << (info - 24);
            let bytes = b
                .get(pos + 1..pos + 1 + n)
                .ok_or(SplitError::Malformed(pos))?;
            let v = bytes.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64);
            (Some(v), pos + 1 + n)
        }
        31 if matches!(major, 2..=5 | 7) => (None, pos + 1),
        _ => return Err(SplitError::Malformed(pos)),
    };
    Ok((major, arg, next))
}

/// Skip one CBOR data item starting at `pos`; returns the position after it. Every length is
/// checked against the input before use, and nesting is bounded by [`MAX_CBOR_DEPTH`].
fn skip_item(b: &[u8], pos: usize, depth: usize) -> Result<usize, SplitError> {
    if depth > MAX_CBOR_DEPTH {
        return Err(SplitError::TooDeep(pos));
    }
    let (major, arg, mut p) = read_head(b, pos)?;
    let remaining = (b.len() - p.min(b.len())) as u64;
    match (major, arg) {
        (0 | 1, Some(_)) => Ok(p),
        (2 | 3, Some(n)) => {
            if n > remaining {
                return Err(SplitError::Malformed(pos));
            }
            Ok(p + n as usize)
        }
        (2 | 3, None) => loop {
            // Indefinite string: definite chunks of the same major type, then a break.
            if *b.get(p).ok_or(SplitError::Malformed(p))? == 0xff {
                return Ok(p + 1);
            }
            let (m, n, q) = read_head(b, p)?;
            let n = n.ok_or(SplitError::Malformed(p))?;
            if m != major || n > (b.len() - q) as u64 {
                return Err(SplitError::Malformed(p));
            }
            p = q + n as usize;
        },
        (4 | 5, Some(n)) => {
            let items = if major == 5 { n.saturating_mul(2) } else { n };
            // Every item takes at least one byte: bound the count before looping.
            if items > remaining {
                return Err(SplitError::Malformed(pos));
            }
            for _ in 0..items {
                p = skip_item(b, p, depth + 1)?;
            }
            Ok(p)
        }
        (4 | 5, None) => {
            let mut count = 0u64;
            loop {
                if *b.get(p).ok_or(SplitError::Malformed(p))? == 0xff {
                    if major == 5 && count % 2 == 1 {
                        return Err(SplitError::Malformed(p));
                    }
                    return Ok(p + 1);
                }
                p = skip_item(b, p, depth + 1)?;
                count += 1;
            }
        }
        (6, Some(_)) => skip_item(b, p, depth + 1),
        (7, Some(_)) => Ok(p),
        _ => Err(SplitError::Malformed(pos)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vector(name: &str) -> Bytes {
        let path = format!(
            "{}/../../shared/vectors/bpv7/{name}.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        Bytes::from(hex::decode(text.trim()).unwrap())
    }

    #[test]
    fn splits_concatenated_real_bundles() {
        let a = vector("ipn_simple_bp7");
        let b = vector("all_ext_blocks_bp7");
        let c = vector("dtn_eids_bp7");
        let mut block = BytesMut::new();
        for x in [&a, &b, &c, &a] {
            block.extend_from_slice(x);
        }
        let (bundles, err) = split_bundles(&block.freeze());
        assert_eq!(err, None);
        assert_eq!(bundles, vec![a.clone(), b, c, a]);
    }

    #[test]
    fn bad_items_stop_the_split() {
        let a = vector("ipn_simple_bp7");
        let mut block = BytesMut::from(&a[..]);
        block.extend_from_slice(&[0x82, 0x01, 0x02]);
        let (bundles, err) = split_bundles(&block.freeze());
        assert_eq!(bundles, vec![a.clone()]);
        assert_eq!(err, Some(SplitError::NotABundle(a.len())));
        // Truncated bundle.
        let (bundles, err) = split_bundles(&a.slice(..a.len() - 1));
        assert!(bundles.is_empty());
        assert!(matches!(err, Some(SplitError::Malformed(_))));
        // Huge claimed lengths are rejected without allocation.
        let (_, err) = split_bundles(&Bytes::from_static(&[
            0x9f, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]));
        assert!(matches!(err, Some(SplitError::Malformed(_))));
        let (_, err) = split_bundles(&Bytes::from_static(&[
            0x9f, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]));
        assert!(matches!(err, Some(SplitError::Malformed(_))));
        // Deep nesting is bounded.
        let mut deep = vec![0x9f];
        deep.extend(std::iter::repeat_n(0x81, 1000));
        let (_, err) = split_bundles(&Bytes::from(deep));
        assert!(matches!(err, Some(SplitError::TooDeep(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn split_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut v = vec![0x9f];
            v.extend(data);
            let block = Bytes::from(v);
            let (bundles, _) = split_bundles(&block);
            let total: usize = bundles.iter().map(Bytes::len).sum();
            prop_assert!(total <= block.len());
        }

        #[test]
        fn split_recovers_concatenation(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..10)) {
            // Bundle-shaped items: [_ bstr(payload), uint, [1, 2]] with a break.
            let mut items = Vec::new();
            for p in &payloads {
                let mut v = vec![0x9f];
                if p.len() < 24 { v.push(0x40 | p.len() as u8) } else { v.extend([0x59, (p.len() >> 8) as u8, p.len() as u8]) }
                v.extend(p);
                v.extend([0x18, 0x2a, 0x82, 0x01, 0x02, 0xff]);
                items.push(Bytes::from(v));
            }
            let block: Vec<u8> = items.iter().flat_map(|b| b.iter().copied()).collect();
            let (bundles, err) = split_bundles(&Bytes::from(block));
            prop_assert_eq!(err, None);
            prop_assert_eq!(bundles, items);
        }
    }
}
