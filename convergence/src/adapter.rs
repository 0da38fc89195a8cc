//! The convergence-layer adapter interface (RFC 9171 §7: the bundle protocol agent's use of
//! convergence-layer services).
//!
//! RFC 9171 §7.1 lists the services a convergence layer adapter (CLA) offers the bundle protocol
//! agent: sending a bundle to the nodes reachable via the adapter, and delivering bundles
//! received from them. This module defines that boundary once for every adapter (TCPCLv4, UDP,
//! LTP): the node hands a bundle to [`ConvergenceLayer::send`] with a [`TransferId`] and later
//! receives exactly one [`OutcomeReport`] for it; received bundles arrive as [`Received`] on a
//! bounded channel (back-pressure: an adapter stops reading from the network while it is full).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Identifier the node gives each bundle it hands to an adapter; echoed in the outcome.
pub type TransferId = u64;

/// How to reach a neighbour on one convergence layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// An IP socket address (TCPCL, UDP).
    Socket(std::net::SocketAddr),
    /// An LTP engine number (RFC 5326 §3: engine ID).
    LtpEngine(u64),
}

/// The one outcome reported for every bundle handed to an adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The adapter handed the bundle over (what that guarantees depends on the adapter).
    Transferred,
    /// The bundle was not transferred.
    Failed(FailureReason),
}

/// Why a transfer failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The peer could not be reached (connect failure, socket error, ...).
    Unreachable(String),
    /// The peer refused the transfer.
    Refused(String),
    /// The transfer was cancelled (by either side).
    Cancelled(String),
    /// The bundle exceeds a size limit.
    TooLarge {
        /// Size of the bundle in bytes.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The transfer did not complete in time.
    Timeout,
    /// The adapter shut down before the transfer completed.
    Shutdown,
}

impl FailureReason {
    /// A short stable name for counters and logs (e.g. `"unreachable"`).
    pub fn kind(&self) -> &'static str {
        match self {
            FailureReason::Unreachable(_) => "unreachable",
            FailureReason::Refused(_) => "refused",
            FailureReason::Cancelled(_) => "cancelled",
            FailureReason::TooLarge { .. } => "too_large",
            FailureReason::Timeout => "timeout",
            FailureReason::Shutdown => "shutdown",
        }
    }
}

/// The outcome of one transfer, reported on [`AdapterChannels::outcomes`].
#[derive(Clone, Debug)]
pub struct OutcomeReport {
    /// The id the node gave the bundle in [`ConvergenceLayer::send`].
    pub id: TransferId,
    /// The peer the bundle was sent to.
    pub peer: PeerAddr,
    /// What happened.
    pub outcome: Outcome,
}

/// A bundle received from a neighbour (bytes exactly as received; the node decodes it).
#[derive(Clone, Debug)]
pub struct Received {
    /// Name of the adapter that received it (e.g. `"udp"`, `"tcpcl"`).
    pub cla: &'static str,
    /// The neighbour it came from.
    pub from: PeerAddr,
    /// The neighbour's node ID if the convergence layer learnt it (TCPCL SESS_INIT).
    pub peer_node_id: Option<String>,
    /// The encoded bundle.
    pub bundle: bytes::Bytes,
    /// Where the node answers whether it took custody of the bundle, when the convergence
    /// layer can still acknowledge or refuse the transfer (TCPCL: the final XFER_ACK waits for
    /// it; LTP with `confirm_red_parts`: the report completing the red part waits for every
    /// bundle of the block). `None` for layers that acknowledged already or never do (UDP;
    /// green LTP data; LTP without the handshake).
    pub custody: Option<CustodyAck>,
}

/// Why the node refuses a received bundle (mapped to RFC 9174 §5.2.4 XFER_REFUSE reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node's resources (store quota) are exhausted: "No Resources".
    NoResources,
    /// The bundle is not acceptable and must not be retried as is: "Not Acceptable".
    NotAcceptable,
    /// The node failed to keep the bundle (storage error, shutdown): "Retransmit".
    Retransmit,
}

/// The node's answer about a received bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The bundle is safely stored (or consumed): acknowledge the transfer.
    Accept,
    /// Refuse the transfer.
    Refuse(Refusal),
}

/// The node's handle for answering a [`Received`] bundle's custody question. The first answer
/// counts; dropping every clone without answering means [`Refusal::Retransmit`].
#[derive(Clone)]
pub struct CustodyAck {
    tx: std::sync::Arc<Mutex<Option<tokio::sync::oneshot::Sender<Verdict>>>>,
}

impl std::fmt::Debug for CustodyAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustodyAck").finish_non_exhaustive()
    }
}

/// The adapter's side of a [`CustodyAck`]: resolves to the node's verdict.
#[derive(Debug)]
pub struct CustodyWait {
    rx: tokio::sync::oneshot::Receiver<Verdict>,
}

impl CustodyAck {
    /// A new acknowledgement handle and the future the adapter awaits.
    pub fn new() -> (CustodyAck, CustodyWait) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            CustodyAck {
                tx: std::sync::Arc::new(Mutex::new(Some(tx))),
            },
            CustodyWait { rx },
        )
    }

    /// Answer with `verdict` (ignored if an answer was already given or nobody waits).
    pub fn answer(&self, verdict: Verdict) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(verdict);
        }
    }

    /// The bundle is in the store: acknowledge the transfer.
    pub fn accept(&self) {
        self.answer(Verdict::Accept);
    }

    /// Refuse the transfer for `reason`.
    pub fn refuse(&self, reason: Refusal) {
        self.answer(Verdict::Refuse(reason));
    }
}

impl CustodyWait {
    /// The verdict; [`Refusal::Retransmit`] if the node dropped the handle without answering.
    pub async fn verdict(self) -> Verdict {
        self.rx
            .await
            .unwrap_or(Verdict::Refuse(Refusal::Retransmit))
    }
}

impl std::future::Future for CustodyWait {
    type Output = Verdict;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Verdict> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Verdict::Refuse(Refusal::Retransmit)))
    }
}

/// Channels through which an adapter reports to the node. `received` is bounded: an adapter
/// awaits capacity (back-pressure) before accepting more from the network.
#[derive(Clone)]
pub struct AdapterChannels {
    /// Bundles received from neighbours.
    pub received: tokio::sync::mpsc::Sender<Received>,
    /// One report per bundle accepted by `send`.
    pub outcomes: tokio::sync::mpsc::Sender<OutcomeReport>,
}

/// Why [`ConvergenceLayer::send`] refused a bundle (no outcome is reported for it then).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The adapter's send queue is full.
    #[error("queue full")]
    QueueFull,
    /// The adapter does not know how to reach this peer.
    #[error("unknown peer {0:?}")]
    UnknownPeer(PeerAddr),
    /// The bundle exceeds the adapter's size limit.
    #[error("bundle of {size} bytes exceeds limit {limit}")]
    TooLarge {
        /// Size of the bundle in bytes.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The adapter has shut down.
    #[error("adapter shut down")]
    Shutdown,
}

/// Snapshot of an adapter's counters.
#[derive(Clone, Debug, Default)]
pub struct CounterSnapshot {
    /// Bundles received and passed to the node.
    pub bundles_in: u64,
    /// Bundles transferred.
    pub bundles_out: u64,
    /// Bytes of bundles received.
    pub bytes_in: u64,
    /// Bytes of bundles transferred.
    pub bytes_out: u64,
    /// Failed transfers by reason kind.
    pub failures: BTreeMap<String, u64>,
    /// Input discarded as malformed or oversized.
    pub bad_input: u64,
}

/// Atomic counters an adapter updates (cheap, shared with its tasks via Arc).
#[derive(Default, Debug)]
pub struct Counters {
    bundles_in: AtomicU64,
    bundles_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    bad_input: AtomicU64,
}

impl Counters {
    /// A consistent-enough copy of all counters (each read atomically).
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            bundles_in: self.bundles_in.load(Ordering::Relaxed),
            bundles_out: self.bundles_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            failures: self
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            bad_input: self.bad_input.load(Ordering::Relaxed),
        }
    }

    /// Count one bundle of `bytes` bytes received.
    pub fn record_in(&self, bytes: usize) {
        self.bundles_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count one bundle of `bytes` bytes transferred.
    pub fn record_out(&self, bytes: usize) {
        self.bundles_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count one failed transfer under `reason` (e.g. [`FailureReason::kind`]).
    pub fn record_failure(&self, reason: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(reason.to_owned()).or_insert(0) += 1;
    }

    /// Count one piece of discarded input.
    pub fn record_bad_input(&self) {
        self.bad_input.fetch_add(1, Ordering::Relaxed);
    }
}

/// A convergence-layer adapter. Every bundle accepted by `send` yields exactly one
/// `OutcomeReport` on the outcomes channel.
pub trait ConvergenceLayer: Send + Sync {
    /// Short name of the adapter (`"udp"`, `"tcpcl"`, `"ltp"`), also used in [`Received::cla`].
    fn name(&self) -> &'static str;
    /// Queue `bundle` for transfer to `peer`. `Ok` means exactly one outcome will be reported
    /// for `id`; `Err` means none will.
    fn send(&self, peer: &PeerAddr, id: TransferId, bundle: bytes::Bytes) -> Result<(), SendError>;
    /// Snapshot of the adapter's counters.
    fn counters(&self) -> CounterSnapshot;
    /// Stop the adapter: pending transfers end with [`FailureReason::Shutdown`].
    fn shutdown(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate() {
        let c = Counters::default();
        c.record_in(10);
        c.record_in(5);
        c.record_out(7);
        c.record_failure("timeout");
        c.record_failure("timeout");
        c.record_failure("refused");
        c.record_bad_input();
        let s = c.snapshot();
        assert_eq!((s.bundles_in, s.bytes_in), (2, 15));
        assert_eq!((s.bundles_out, s.bytes_out), (1, 7));
        assert_eq!(s.failures.get("timeout"), Some(&2));
        assert_eq!(s.failures.get("refused"), Some(&1));
        assert_eq!(s.bad_input, 1);
    }

    #[tokio::test]
    async fn custody_ack_first_answer_counts_and_drop_means_retransmit() {
        let (ack, wait) = CustodyAck::new();
        let clone = ack.clone();
        clone.refuse(Refusal::NoResources);
        ack.accept();
        assert_eq!(wait.await, Verdict::Refuse(Refusal::NoResources));

        let (ack, wait) = CustodyAck::new();
        ack.accept();
        assert_eq!(wait.verdict().await, Verdict::Accept);

        let (ack, wait) = CustodyAck::new();
        let clone = ack.clone();
        drop(ack);
        drop(clone);
        assert_eq!(wait.await, Verdict::Refuse(Refusal::Retransmit));
    }

    #[test]
    fn failure_kinds_distinct() {
        let kinds = [
            FailureReason::Unreachable(String::new()).kind(),
            FailureReason::Refused(String::new()).kind(),
            FailureReason::Cancelled(String::new()).kind(),
            FailureReason::TooLarge { size: 1, limit: 0 }.kind(),
            FailureReason::Timeout.kind(),
            FailureReason::Shutdown.kind(),
        ];
        let set: std::collections::BTreeSet<_> = kinds.iter().collect();
        assert_eq!(set.len(), kinds.len());
    }
}
