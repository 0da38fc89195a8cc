//! The LTP engine (RFC 5326 §6 sender and receiver procedures, §7 timers and link-state cues),
//! sans-IO: datagrams, commands and the current time go in; datagrams, events and the next
//! deadline come out. It never reads a clock or touches a socket.
//!
//! Decisions where RFC 5326 leaves room (CCSDS 734.1-B-1 and the peers in INTEROP.md):
//! - Timers start when their segment is handed out by `poll_transmit` (§6.1), last
//!   OWLT out + OWLT in + margin, and are suspended while the span's link is down (§8). With
//!   `SpanConfig::adaptive_timers` (the default) the margin is learned from measured round
//!   trips, within the configured one (`rtt.rs`).
//! - A retransmitted checkpoint keeps its serial number (§6.7); a gap retransmission (§6.13)
//!   ends with a new checkpoint carrying the report's serial; a retransmitted report is not
//!   acted on twice but is acknowledged every time (§6.12).
//! - Primary reports cover [upper bound of our previous report, checkpoint end) (or from 0
//!   when the checkpoint lies below it); a checkpoint answering one of our reports gets a
//!   report with that report's bounds (§6.8).
//! - A red part completed by a segment that is not a checkpoint (data overtaken by its
//!   checkpoint, or by the report on it) is reported at once in an asynchronous report over
//!   the whole red part (§3.2.2, checkpoint serial 0), as HDTN does, so that the sender
//!   completes without waiting for its retransmission's checkpoint to be answered
//!   (`SpanConfig::asynchronous_reports`; with `confirm_red_parts`, once the client took it).
//!   The sender acts on an asynchronous report like on any other, minus the checkpoint timer.
//! - Data from an engine without a span is dropped and counted unless
//!   `accept_unknown_peers` (and then beyond `max_unknown_peers` such engines): we do not
//!   know where to send a cancel, and answering unknown sources would make us an amplifier.
//!   Cancels for unknown sessions are acknowledged without side effects (HDTN's keep-alive
//!   ping).
//! - Limits breached by an import (block size, concurrent imports, reassembly memory,
//!   inactivity) cancel it with `SystemCancelled`; red data beyond the green part or the end of
//!   the red part cancels with `Miscolored`.
//! - An export is cancelled with `RetransmissionCyclesExceeded` after
//!   `max_retransmission_cycles` reports in a row that acknowledge nothing new, or once it has
//!   queued `max_retransmission_factor` times its red part for retransmission (a receiver
//!   acknowledging an octet more per report and asking for the rest again); with
//!   `SystemCancelled` when reports claim more disjoint pieces than segments were sent. Gaps
//!   already queued for retransmission are not queued again for a later report.
//! - With `EngineConfig::client_services` set, a session whose first data segment names
//!   another client service is cancelled at once with `UnreachableClient`, as ION does, and
//!   none of its data is held (`dtnd` serves client service 1, bundles); unset, every client
//!   service reaches the client, which may refuse the block.
//! - A receiver that restarts mid-session must not let the sender complete a block from
//!   claims its earlier incarnation made. Two rules close that:
//!   - a checkpoint answering a report serial the import never sent cancels the import
//!     (`SystemCancelled`): the sender still counts that report's claims, for data we no
//!     longer hold (receiver side, `import.rs`);
//!   - a report whose scope leaves out data an earlier report claimed takes those claims
//!     back: received data is never lost by a live receiver, so the sender forgets every
//!     claim of the export and retransmits what the new reports show missing (sender side,
//!     `export.rs`; counted in `EngineStats::claims_retracted`). A report of the earlier
//!     incarnation that comes after that, reordered across the restart, is told apart by
//!     its serial number (a receiver numbers a session's reports upward from its first)
//!     and ignored (`EngineStats::stale_reports_ignored`). One that comes before any of
//!     the new incarnation is trusted, and is harmless: a live receiver claims only data
//!     it holds, so a report that completes the block comes from an incarnation that had
//!     the whole red part and delivered it (and, with `confirm_red_parts`, whose client
//!     took it); shorter ones are taken back by the new incarnation's first report, or
//!     it cancels the import when a checkpoint answers one of them.
//! - An import whose red part was delivered closes quietly when its report retransmissions or
//!   its inactivity time run out (nothing is lost; late checkpoints get a full report from the
//!   closed-session memory).

mod config;
mod export;
mod import;
mod intervals;
mod loss;
mod red_part;
mod rtt;
mod timer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use config::{EngineConfig, SpanConfig};

use crate::segment::{
    data_segment_overhead, CancelReason, CheckpointInfo, Claim, DataHeaderPrefix, DataKind,
    DataSegment, EngineId, ReportSegment, Segment, SegmentBody, SessionId, MAX_DATA_HEADER,
};
use intervals::IntervalSet;
use loss::LossEstimate;
use red_part::{BufferPool, RedPart};
use rtt::RttEstimator;
use timer::{TimerId, TimerKind, Timers};

/// The engine's hash maps. Their keys are session numbers and serial numbers, many of them
/// chosen by peers, so the hasher is seeded at random (foldhash: a fast keyed hash; std's
/// SipHash took about a seventh of the engine's time per segment).
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// See [`Map`].
pub(crate) type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// What the engine reports to its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The red part of an imported block is complete (delivered exactly once). With
    /// [`EngineConfig::confirm_red_parts`] the client must answer with
    /// [`Engine::accept_block`] or [`Engine::refuse_block`]: until then the sender is not told
    /// that the whole red part arrived.
    BlockReceived {
        /// Import session.
        session: SessionId,
        /// Client service the block is for.
        client_service_id: u64,
        /// The whole red part.
        red: Bytes,
    },
    /// A green data segment arrived (RFC 5326 §6: green-part arrival is signified at once).
    GreenSegment {
        /// Import session.
        session: SessionId,
        /// Client service the block is for.
        client_service_id: u64,
        /// Offset of the data within the block.
        offset: u64,
        /// The data.
        data: Bytes,
        /// True if this segment ends the block.
        end_of_block: bool,
    },
    /// An export is done: all red data acknowledged and all green data sent.
    TransmissionCompleted {
        /// Export session.
        session: SessionId,
    },
    /// An export session was cancelled.
    ExportCancelled {
        /// Export session.
        session: SessionId,
        /// Reason code.
        reason: CancelReason,
        /// True if the receiver cancelled it.
        by_peer: bool,
    },
    /// An import session was cancelled.
    ImportCancelled {
        /// Import session.
        session: SessionId,
        /// Reason code.
        reason: CancelReason,
        /// True if the sender cancelled it.
        by_peer: bool,
    },
}

/// One segment to send, as one datagram: `header`, then `payload`.
///
/// A data segment comes out as its encoded header and its data, a slice of the block: the
/// block's octets are not copied on their way to the socket, which gathers the two parts (see
/// the driver). Every other segment is all header, with an empty payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The engine the segment is for.
    pub peer: EngineId,
    /// The segment up to its client data (the whole segment if it carries none).
    pub header: Bytes,
    /// The client data of a data segment (empty otherwise).
    pub payload: Bytes,
}

impl Transmit {
    /// Octets of the datagram.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }

    /// True for an empty datagram (never produced by the engine).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The datagram in one buffer (copies a data segment's header and data together).
    pub fn into_datagram(self) -> Bytes {
        if self.payload.is_empty() {
            return self.header;
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.put_slice(&self.header);
        out.put_slice(&self.payload);
        out.freeze()
    }
}

/// Why `send_block` refused a block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No span is configured for the destination engine.
    #[error("no span configured for engine {0}")]
    UnknownSpan(EngineId),
    /// The block is larger than `EngineConfig::max_block_size`.
    #[error("block of {size} octets exceeds the limit {max}")]
    BlockTooLarge {
        /// Block size.
        size: u64,
        /// Configured limit.
        max: u64,
    },
    /// The block is empty.
    #[error("empty block")]
    EmptyBlock,
    /// `red_len` is larger than the block.
    #[error("red length {red_len} exceeds the block length {block_len}")]
    RedLengthTooLarge {
        /// Requested red length.
        red_len: usize,
        /// Block length.
        block_len: usize,
    },
    /// The span's segment size is too small to carry any data.
    #[error("maximum segment size {0} too small for a data segment")]
    SegmentSizeTooSmall(usize),
    /// The span's export window and queue are full.
    #[error("export queue full")]
    QueueFull,
}

/// Engine counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Segments handed out by `poll_transmit`.
    pub segments_sent: u64,
    /// Octets handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Datagrams given to `handle_datagram`.
    pub segments_received: u64,
    /// Octets given to `handle_datagram`.
    pub bytes_received: u64,
    /// Datagrams that failed to decode.
    pub segments_malformed: u64,
    /// Segments dropped (unknown peer or session, out of bounds, limits).
    pub segments_dropped: u64,
    /// Data segments sent (first transmissions and retransmissions).
    pub data_segments_sent: u64,
    /// Data segments retransmitted (§6.13 gap retransmission).
    pub data_segments_retransmitted: u64,
    /// Checkpoints retransmitted on timer (§6.7).
    pub checkpoints_retransmitted: u64,
    /// Copies of checkpoints sent right behind them (`SpanConfig::checkpoint_copies`).
    pub checkpoint_copies_sent: u64,
    /// Report segments sent (including retransmissions).
    pub reports_sent: u64,
    /// Report segments retransmitted on timer (§6.8).
    pub reports_retransmitted: u64,
    /// Asynchronous reports sent (checkpoint serial 0, §3.2.2): a red part completed by a
    /// segment that is not a checkpoint.
    pub asynchronous_reports_sent: u64,
    /// Report segments received.
    pub reports_received: u64,
    /// Report-acknowledgment segments sent.
    pub report_acks_sent: u64,
    /// Cancel segments sent (including retransmissions).
    pub cancels_sent: u64,
    /// Cancel segments received.
    pub cancels_received: u64,
    /// Export sessions opened.
    pub export_sessions_opened: u64,
    /// Export sessions completed.
    pub export_sessions_completed: u64,
    /// Export sessions cancelled (either side).
    pub export_sessions_cancelled: u64,
    /// Import sessions opened.
    pub import_sessions_opened: u64,
    /// Import sessions whose red part was delivered.
    pub import_sessions_completed: u64,
    /// Import sessions cancelled (either side).
    pub import_sessions_cancelled: u64,
    /// Red octets delivered.
    pub red_bytes_delivered: u64,
    /// Green octets delivered.
    pub green_bytes_delivered: u64,
    /// Export sessions open now.
    pub open_export_sessions: u64,
    /// Import sessions open now.
    pub open_import_sessions: u64,
    /// Octets held for import sessions, within `EngineConfig::max_reassembly_memory`: red
    /// data being reassembled and the bookkeeping that goes with it (reception intervals,
    /// unacknowledged reports). Zero once no import is open.
    pub reassembly_bytes: u64,
    /// Blocks waiting for an export session now.
    pub queued_blocks: u64,
    /// Reports that took back claims of earlier reports: the receiver lost its session state
    /// (a restart), and the export forgot every claim it had (see `export.rs`).
    pub claims_retracted: u64,
    /// Reports of a receiver's earlier incarnation that came after one of the new
    /// incarnation took the claims back: acknowledged, and otherwise ignored.
    pub stale_reports_ignored: u64,
}

/// What to do when a queued control segment is actually transmitted.
#[derive(Clone, Copy, Debug)]
enum OnSent {
    Nothing,
    /// §6.1: a retransmission timer starts when its segment leaves.
    Timer(TimerKind),
}

#[derive(Debug)]
struct Outgoing {
    bytes: Bytes,
    on_sent: OnSent,
}

struct PendingBlock {
    number: u64,
    client_service_id: u64,
    block: Bytes,
    red_len: u64,
}

struct Span {
    cfg: SpanConfig,
    link_up: bool,
    control: VecDeque<Outgoing>,
    /// Exports with segments to send, as `(Export::opened, number)`: the oldest sends first
    /// (see `transmit_from`).
    ready: BTreeSet<(u64, u64)>,
    /// Exports opened on this span so far (the next one's `Export::opened`).
    opened: u64,
    active_exports: usize,
    pending: VecDeque<PendingBlock>,
    imports: usize,
    pace_at: Option<Instant>,
    /// Round trips measured on this span (used with `SpanConfig::adaptive_timers`).
    rtt: RttEstimator,
    /// How much of the red data sent on this span its reports claim missing (`loss.rs`).
    loss: LossEstimate,
    /// Counts link-state changes: a round trip that spans one is not sampled.
    link_epoch: u64,
    /// Red octets sent for the first time and not yet acknowledged, over the span's exports
    /// (the sum of their `Export::in_flight`; `SpanConfig::max_bytes_in_flight`).
    in_flight: u64,
    /// Exports with new red data to send, waiting for `in_flight` to drop below the limit.
    blocked: VecDeque<u64>,
    /// New red octets sent since the span's last checkpoint (flow control's own spacing of
    /// discretionary checkpoints, see `transmit_from`).
    unchecked: u64,
}

impl Span {
    fn new(cfg: SpanConfig) -> Span {
        Span {
            cfg,
            link_up: true,
            control: VecDeque::new(),
            ready: BTreeSet::new(),
            opened: 0,
            active_exports: 0,
            pending: VecDeque::new(),
            imports: 0,
            pace_at: None,
            rtt: RttEstimator::default(),
            loss: LossEstimate::default(),
            link_epoch: 0,
            in_flight: 0,
            blocked: VecDeque::new(),
            unchecked: 0,
        }
    }
    fn has_output(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Copies of a checkpoint that ends a transmission, as things are now: the configured
    /// number while the span is lossy enough (`SpanConfig::checkpoint_copies_min_loss`), else
    /// none.
    fn checkpoint_copies(&self) -> u32 {
        if self.loss.rate() >= self.cfg.checkpoint_copies_min_loss {
            self.cfg.checkpoint_copies
        } else {
            0
        }
    }

    /// §6.1 retransmission timer for a segment sent for the `(retransmissions + 1)`-th time:
    /// the configured round trip, or with adaptive timers the measured one (`rtt.rs`).
    fn timeout(&self, retransmissions: u32) -> Duration {
        let ceiling = self.cfg.round_trip_timeout();
        if !self.cfg.adaptive_timers {
            return ceiling;
        }
        self.rtt.timeout(
            retransmissions,
            self.cfg.min_timer_margin,
            self.cfg.min_round_trip_timeout(),
            ceiling,
        )
    }

    /// With adaptive timers, how much longer an answer to a segment last sent at `sent` (for
    /// the `(retransmissions + 1)`-th time) may take by the estimate as it is at `now`, if any:
    /// its timer was set from the estimate when it left, and the estimate may have grown since.
    /// That is what a queue building up does: a window of blocks sent at once into the peer's
    /// socket buffer took loopback round trips from 0.1 to 5 ms within the first blocks, and
    /// checkpoints sent early in that rise timed out with their answers on the way. A timer
    /// that expires with time left is started again for that time instead of retransmitting
    /// (as TCP restarts its retransmission timer from the current estimate), never beyond the
    /// configured timeout.
    fn time_left(
        &self,
        sent: Option<SentAt>,
        retransmissions: u32,
        now: Instant,
    ) -> Option<Duration> {
        if !self.cfg.adaptive_timers {
            return None;
        }
        let deadline = sent?.at + self.timeout(retransmissions);
        deadline
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }

    /// Paces the span (`SpanConfig::rate_limit`): a datagram of `len` octets sent at `now`
    /// keeps the next one back until the rate allows it, with up to `rate_burst` octets of
    /// credit for time the span left unused.
    #[inline]
    fn pace(&mut self, len: usize, now: Instant) {
        if let Some(rate) = self.cfg.rate_limit.filter(|&r| r > 0) {
            let burst = Duration::from_secs_f64(self.cfg.rate_burst as f64 / rate as f64);
            let floor = now.checked_sub(burst).unwrap_or(now);
            let start = self.pace_at.map_or(floor, |t| t.max(floor));
            self.pace_at = Some(start + Duration::from_secs_f64(len as f64 / rate as f64));
        }
    }

    /// A transmission at `now` of a segment sent `retransmissions` times before.
    fn sent_now(&self, retransmissions: u32, now: Instant) -> SentAt {
        SentAt {
            at: now,
            link_epoch: self.link_epoch,
            first: retransmissions == 0,
        }
    }

    /// The answer to a segment last sent at `sent` arrived at `now`: one round-trip sample,
    /// unless that was not its first transmission (Karn's rule) or a link-state change
    /// happened in between.
    fn sample_round_trip(&mut self, sent: Option<SentAt>, now: Instant) {
        if let Some(s) = sent.filter(|s| s.first && s.link_epoch == self.link_epoch) {
            self.rtt.sample(s.at, now);
        }
    }
}

/// When a segment that waits for an answer last left (see `rtt.rs` and [`Span::time_left`]).
#[derive(Clone, Copy, Debug)]
struct SentAt {
    at: Instant,
    link_epoch: u64,
    /// It was the segment's first transmission: the answer is a round-trip sample.
    first: bool,
}

struct Checkpoint {
    offset: u64,
    end: u64,
    kind: DataKind,
    report_serial: u64,
    retransmissions: u32,
    timer: Option<TimerId>,
    /// When the last transmission left.
    sent: Option<SentAt>,
}

/// A checkpoint queued to go again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resend {
    serial: u64,
    /// A copy sent right behind the checkpoint (`SpanConfig::checkpoint_copies`), not a
    /// retransmission: its timer is the original's.
    copy: bool,
}

impl Checkpoint {
    /// It ends what its export had to send when it left: the end of the red part, or the end
    /// of a retransmission (not a discretionary checkpoint, whose loss the next checkpoint's
    /// report makes good). Such checkpoints get copies (`SpanConfig::checkpoint_copies`).
    fn ends_transmission(&self) -> bool {
        self.kind != DataKind::RedCheckpoint || self.report_serial != 0
    }
}

struct RetxRange {
    start: u64,
    end: u64,
    /// `Some(report serial)`: the last segment of this range is the checkpoint ending the
    /// retransmission (§6.13).
    checkpoint_for: Option<u64>,
}

enum ExportState {
    Sending,
    Cancelling {
        reason: CancelReason,
        retransmissions: u32,
        timer: Option<TimerId>,
    },
}

struct Export {
    id: SessionId,
    peer: EngineId,
    block: Bytes,
    red_len: u64,
    cursor: u64,
    /// Red data segments sent for the first time.
    red_segments: u64,
    /// Red data segments retransmitted (§6.13).
    resent_segments: u64,
    /// Red octets queued for retransmission so far (`SpanConfig::max_retransmission_factor`).
    resent_octets: u64,
    /// Red data the receiver's reports claim. An honest receiver's claims leave at most as
    /// many disjoint intervals as red segments were sent: more cancels the export
    /// (`SystemCancelled`), so a receiver claiming one octet in two cannot make us hold many
    /// times the block in intervals.
    acked: IntervalSet,
    checkpoints: Map<u64, Checkpoint>,
    /// Checkpoints to send again: copies first (`SpanConfig::checkpoint_copies`, queued at
    /// the front to leave right behind their checkpoint), then retransmissions (§6.7) in the
    /// order their timers fired.
    cp_resend: VecDeque<Resend>,
    retx: VecDeque<RetxRange>,
    next_cp_serial: u64,
    seen_reports: Set<u64>,
    /// Set when a report took back earlier claims (the receiver restarted): the serial of
    /// that report, from which the new incarnation numbers its reports upward. A report
    /// numbered outside `[serial, serial + 2^20)` is the earlier incarnation's, come late.
    reports_trusted_from: Option<u64>,
    /// Retransmission cycles in a row without new data acknowledged (RXMTCYCEXC).
    cycles: u32,
    state: ExportState,
    /// Its place among its span's exports, in the order they were opened.
    opened: u64,
    /// The header octets all its data segments share, encoded once.
    header: DataHeaderPrefix,
    /// The data a plain red segment carries, and the segment size and offset-field size it
    /// was worked out for: `((mss, offset SDNV octets), data octets)` (`export::plain_end`).
    plain_fit: ((usize, usize), u64),
    in_ready: bool,
    /// What this export counts in its span's `in_flight` (see `Engine::sync_in_flight`).
    in_flight: u64,
    /// Send the next new red segment as a discretionary checkpoint (flow control).
    checkpoint_next: bool,
    sent_any: bool,
}

impl Export {
    fn has_output(&self) -> bool {
        matches!(self.state, ExportState::Sending)
            && (!self.cp_resend.is_empty()
                || !self.retx.is_empty()
                || self.cursor < self.block.len() as u64)
    }
    fn red_done(&self) -> bool {
        self.acked.covers(0, self.red_len)
    }
    fn timers(&self) -> Vec<TimerId> {
        let mut v: Vec<TimerId> = self.checkpoints.values().filter_map(|c| c.timer).collect();
        if let ExportState::Cancelling { timer: Some(t), .. } = self.state {
            v.push(t);
        }
        v
    }
}

struct PendingReport {
    report: ReportSegment,
    retransmissions: u32,
    timer: Option<TimerId>,
    /// When the last transmission left.
    sent: Option<SentAt>,
}

impl PendingReport {
    /// What `reports` unacknowledged reports with `claims` claims in all are charged against
    /// `EngineConfig::max_reassembly_memory` while the import keeps them: their entries and
    /// their claims.
    fn charge_of(reports: usize, claims: usize) -> usize {
        reports * std::mem::size_of::<(u64, PendingReport)>()
            + claims * std::mem::size_of::<Claim>()
    }

    /// What this report is charged (see [`PendingReport::charge_of`]).
    fn charge(&self) -> usize {
        PendingReport::charge_of(1, self.report.claims.len())
    }
}

/// What one interval of an import's reception record is charged against
/// `EngineConfig::max_reassembly_memory`: about what a `BTreeMap<u64, u64>` entry takes.
const INTERVAL_CHARGE: usize = 32;

enum ImportState {
    Open,
    Cancelling {
        reason: CancelReason,
        retransmissions: u32,
        timer: Option<TimerId>,
    },
}

struct Import {
    client_service_id: u64,
    received: IntervalSet,
    /// The red data received so far (copied out of the datagrams).
    red: RedPart,
    red_end: Option<u64>,
    eorp_is_eob: bool,
    max_red_end: u64,
    min_green: Option<u64>,
    eob_seen: bool,
    delivered: bool,
    /// The client took the red part ([`Engine::accept_block`]); always true unless
    /// [`EngineConfig::confirm_red_parts`].
    accepted: bool,
    /// Checkpoints that arrived once the red part was complete but not yet accepted: answered
    /// on acceptance (checkpoint, its end offset), a bounded few (see `import.rs`).
    held: Vec<(CheckpointInfo, u64)>,
    /// The red part was completed by a segment that is not a checkpoint before the client
    /// took it: the asynchronous report goes on acceptance (see `import.rs`).
    report_when_accepted: bool,
    reports: Map<u64, PendingReport>,
    /// Octets of bookkeeping charged to `Engine::reassembly` with the red data: the intervals
    /// of `received` and the unacknowledged `reports`. A peer that sends one-octet segments
    /// with gaps between them, or checkpoint after checkpoint without acknowledging our
    /// reports, would otherwise hold many times the memory its data takes.
    bookkeeping: usize,
    sent_bounds: Map<u64, (u64, u64)>,
    /// Checkpoint serials already answered with reports (at most `MAX_SENT_BOUNDS`; a
    /// retransmitted checkpoint gets those reports again, not new ones: see `import.rs`).
    answered: Set<u64>,
    prev_upper: u64,
    /// Our report serials for this import are `first_report_serial..next_report_serial`.
    first_report_serial: u64,
    next_report_serial: u64,
    state: ImportState,
    /// The inactivity timer: it runs from `active_since`; segments arriving meanwhile only
    /// move `last_active`, and when it fires it is started again for the time between the two
    /// (no timer operations per segment).
    inactivity: Option<TimerId>,
    active_since: Instant,
    last_active: Instant,
}

impl Import {
    /// The client has the red part and took it: closing the import loses nothing.
    fn red_part_taken(&self) -> bool {
        self.delivered && self.accepted
    }

    /// The red part was delivered and the custody handshake waits for the client's answer.
    fn awaits_acceptance(&self) -> bool {
        matches!(self.state, ImportState::Open) && self.delivered && !self.accepted
    }

    /// Keeps report `serial` until it is acknowledged, charging it to the import's
    /// bookkeeping and to `reassembly` (the engine's total).
    fn keep_report(&mut self, serial: u64, report: PendingReport, reassembly: &mut usize) {
        self.bookkeeping += report.charge();
        *reassembly += report.charge();
        self.reports.insert(serial, report);
    }

    /// Forgets report `serial` (acknowledged, or no longer needed), releasing its charge.
    fn forget_report(&mut self, serial: u64, reassembly: &mut usize) -> Option<PendingReport> {
        let report = self.reports.remove(&serial)?;
        self.bookkeeping -= report.charge();
        *reassembly -= report.charge();
        Some(report)
    }

    fn timers(&self) -> Vec<TimerId> {
        let mut v: Vec<TimerId> = self.reports.values().filter_map(|r| r.timer).collect();
        if let ImportState::Cancelling { timer: Some(t), .. } = self.state {
            v.push(t);
        }
        v.extend(self.inactivity);
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Export,
    Import,
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    ExportEnded,
    ImportDelivered { red_len: u64 },
    ImportCancelledByUs(CancelReason),
    ImportCancelledByPeer,
}

struct Closed {
    peer: EngineId,
    outcome: Outcome,
}

/// An LTP engine: all sessions with all peers of one local engine ID.
pub struct Engine {
    local: EngineId,
    cfg: EngineConfig,
    rng: SmallRng,
    spans: BTreeMap<EngineId, Span>,
    /// Peers whose span was made for them by `accept_unknown_peers` (at most
    /// `EngineConfig::max_unknown_peers`); `add_span` takes a peer out.
    unknown_peers: Set<EngineId>,
    rr: EngineId,
    exports: Map<u64, Export>,
    imports: Map<SessionId, Import>,
    closed: Map<(Role, SessionId), Closed>,
    closed_order: VecDeque<(Instant, Role, SessionId)>,
    orphans: VecDeque<(EngineId, Bytes)>,
    timers: Timers,
    events: VecDeque<Event>,
    /// Octets held for imports, bounded by `EngineConfig::max_reassembly_memory`: their red
    /// data (from each block's start to the furthest octet received) and their bookkeeping
    /// (`Import::bookkeeping`).
    reassembly: usize,
    /// Reassembly buffers kept for reuse (`red_part.rs`).
    buffers: BufferPool,
    /// Size of the red part delivered last: what a new import's buffer is sized for.
    red_size_hint: usize,
    /// Where data segment headers are encoded (`export.rs`).
    headers: BytesMut,
    stats: EngineStats,
    /// The latest `now` given to any method (for work done where no time is passed in).
    clock: Option<Instant>,
}

fn control_segment(session: SessionId, body: SegmentBody) -> Bytes {
    Segment::new(session, body).to_bytes()
}

impl Engine {
    /// Creates an engine with our engine ID.
    pub fn new(local_engine_id: EngineId, config: EngineConfig) -> Engine {
        let pool = config.reassembly_pool.min(config.max_reassembly_memory);
        Engine {
            local: local_engine_id,
            rng: SmallRng::seed_from_u64(config.seed),
            cfg: config,
            spans: BTreeMap::new(),
            unknown_peers: Set::default(),
            rr: 0,
            exports: Map::default(),
            imports: Map::default(),
            closed: Map::default(),
            closed_order: VecDeque::new(),
            orphans: VecDeque::new(),
            timers: Timers::default(),
            events: VecDeque::new(),
            reassembly: 0,
            buffers: BufferPool::new(pool),
            red_size_hint: 0,
            headers: BytesMut::new(),
            stats: EngineStats::default(),
            clock: None,
        }
    }

    /// Our engine ID.
    pub fn local_engine_id(&self) -> EngineId {
        self.local
    }

    /// Whether completed red parts wait for [`Engine::accept_block`] before they are
    /// acknowledged ([`EngineConfig::confirm_red_parts`]).
    pub fn confirms_red_parts(&self) -> bool {
        self.cfg.confirm_red_parts
    }

    /// Configures (or reconfigures) the span to `peer`.
    ///
    /// Reconfiguring keeps the span's sessions, queues and link state; the new settings apply
    /// from now on:
    /// - timers started afterwards (when their segment leaves, §6.1) use the new light times
    ///   and margin; running timers keep their deadlines;
    /// - segments built afterwards use the new segment size and checkpoint spacing;
    /// - pacing follows the new rate at once: the time still owed for octets already sent is
    ///   re-costed at the new rate, and removing the rate lifts pacing immediately;
    /// - a wider export window starts queued blocks at once; a narrower one lets open sessions
    ///   finish and starts no new ones until they fit.
    pub fn add_span(&mut self, peer: EngineId, span: SpanConfig) {
        self.unknown_peers.remove(&peer);
        let Some(s) = self.spans.get_mut(&peer) else {
            self.spans.insert(peer, Span::new(span));
            return;
        };
        let old_rate = s.cfg.rate_limit.filter(|&r| r > 0);
        let new_rate = span.rate_limit.filter(|&r| r > 0);
        s.cfg = span;
        if old_rate != new_rate {
            s.pace_at = match (old_rate, new_rate, s.pace_at, self.clock) {
                (Some(old), Some(new), Some(at), Some(now)) if at > now => {
                    let owed = at.duration_since(now).as_secs_f64() * old as f64 / new as f64;
                    Duration::try_from_secs_f64(owed)
                        .ok()
                        .and_then(|d| now.checked_add(d))
                        .or(Some(at))
                }
                (_, Some(_), at, _) => at,
                (_, None, _, _) => None,
            };
        }
        self.start_queued_exports(peer);
        self.release_blocked(peer); // the in-flight limit may have been raised or removed
    }

    /// Starts blocks queued for `peer` while its export window has room (after a session
    /// ended, or the window was widened).
    fn start_queued_exports(&mut self, peer: EngineId) {
        loop {
            let Some(s) = self.spans.get_mut(&peer) else {
                return;
            };
            if s.active_exports >= s.cfg.max_export_sessions {
                return;
            }
            let Some(pb) = s.pending.pop_front() else {
                return;
            };
            self.start_export(peer, pb);
        }
    }

    /// Open sessions (export, including queued blocks, and import).
    pub fn open_sessions(&self) -> usize {
        self.exports.len()
            + self.imports.len()
            + self.spans.values().map(|s| s.pending.len()).sum::<usize>()
    }

    /// Export sessions to `peer` that have not ended: blocks queued for a free session first
    /// (in queue order), then open sessions still sending (by session number). Sessions being
    /// cancelled are left out: their cancellation was already notified to the user.
    /// Empty if `peer` has no span.
    pub fn export_sessions(&self, peer: EngineId) -> Vec<SessionId> {
        let Some(span) = self.spans.get(&peer) else {
            return Vec::new();
        };
        let id = |number| SessionId {
            originator: self.local,
            number,
        };
        let mut open: Vec<u64> = self
            .exports
            .values()
            .filter(|ex| ex.peer == peer && matches!(ex.state, ExportState::Sending))
            .map(|ex| ex.id.number)
            .collect();
        open.sort_unstable();
        span.pending
            .iter()
            .map(|p| p.number)
            .chain(open)
            .map(id)
            .collect()
    }

    /// Cancels every export session to `peer` at the user's request (RFC 5326 §4.2 and §6.15,
    /// reason USR_CNCLD), e.g. when its contact ends: queued blocks are dropped before any
    /// is started, open sessions send a cancel segment (queued while the link is down).
    /// Each cancelled session gets one [`Event::ExportCancelled`]. Import sessions from `peer`
    /// are not touched. Returns the sessions cancelled, as listed by
    /// [`export_sessions`](Self::export_sessions).
    pub fn cancel_exports(&mut self, peer: EngineId, now: Instant) -> Vec<SessionId> {
        self.clock = Some(now);
        let sessions = self.export_sessions(peer);
        for &s in &sessions {
            self.cancel(s, now);
        }
        sessions
    }

    /// Session timers (running or suspended); zero when no session waits on anything.
    pub fn session_timers(&self) -> usize {
        self.timers.len()
    }

    /// The smoothed round-trip time measured to `peer` (see `SpanConfig::adaptive_timers`),
    /// once one of its answers was sampled; measured whether or not adaptive timers are on.
    pub fn round_trip_estimate(&self, peer: EngineId) -> Option<Duration> {
        self.spans.get(&peer).and_then(|s| s.rtt.srtt())
    }

    /// The share of red data that `peer`'s reports claimed missing of late (`loss.rs`), once a
    /// report came: what turns checkpoint copies on (`SpanConfig::checkpoint_copies_min_loss`).
    pub fn loss_estimate(&self, peer: EngineId) -> Option<f64> {
        let span = self.spans.get(&peer)?;
        span.loss.sampled().then(|| span.loss.rate())
    }

    /// Starts sending a block whose first `red_len` octets are red (reliable), the rest green.
    pub fn send_block(
        &mut self,
        dest: EngineId,
        client_service_id: u64,
        block: Bytes,
        red_len: usize,
        now: Instant,
    ) -> Result<SessionId, SendError> {
        self.clock = Some(now);
        let span = self.spans.get(&dest).ok_or(SendError::UnknownSpan(dest))?;
        if block.is_empty() {
            return Err(SendError::EmptyBlock);
        }
        if block.len() as u64 > self.cfg.max_block_size {
            return Err(SendError::BlockTooLarge {
                size: block.len() as u64,
                max: self.cfg.max_block_size,
            });
        }
        if red_len > block.len() {
            return Err(SendError::RedLengthTooLarge {
                red_len,
                block_len: block.len(),
            });
        }
        let worst = data_segment_overhead(
            SessionId {
                originator: self.local,
                number: u64::MAX,
            },
            DataKind::RedCheckpointEorpEob,
            client_service_id,
            u64::MAX,
            u64::MAX,
            Some(CheckpointInfo {
                checkpoint_serial: u64::MAX,
                report_serial: u64::MAX,
            }),
        );
        if span.cfg.max_segment_size <= worst {
            return Err(SendError::SegmentSizeTooSmall(span.cfg.max_segment_size));
        }
        let full = span.active_exports >= span.cfg.max_export_sessions;
        if full && span.pending.len() >= span.cfg.max_queued_blocks {
            return Err(SendError::QueueFull);
        }
        let number = self.new_session_number();
        let id = SessionId {
            originator: self.local,
            number,
        };
        let pb = PendingBlock {
            number,
            client_service_id,
            block,
            red_len: red_len as u64,
        };
        let span = self.spans.get_mut(&dest).expect("span checked above");
        if full {
            span.pending.push_back(pb);
        } else {
            self.start_export(dest, pb);
        }
        Ok(id)
    }

    /// CCSDS 734.1: session numbers random within `session_number_bits`, never one in use.
    fn new_session_number(&mut self) -> u64 {
        let bits = self.cfg.session_number_bits.clamp(2, 64);
        let max = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        loop {
            let n = self.rng.gen_range(1..=max);
            let id = SessionId {
                originator: self.local,
                number: n,
            };
            let pending = self
                .spans
                .values()
                .any(|s| s.pending.iter().any(|p| p.number == n));
            if !self.exports.contains_key(&n)
                && !self.closed.contains_key(&(Role::Export, id))
                && !pending
            {
                return n;
            }
        }
    }

    /// Random initial serial number in a range that cannot overflow (CCSDS 734.1 §3.?).
    fn initial_serial(&mut self) -> u64 {
        self.rng.gen_range(1..=(1u64 << 30))
    }

    fn start_export(&mut self, dest: EngineId, pb: PendingBlock) {
        let next_cp_serial = self.initial_serial();
        let span = self.spans.get_mut(&dest).expect("span exists");
        span.active_exports += 1;
        let ex = Export {
            id: SessionId {
                originator: self.local,
                number: pb.number,
            },
            peer: dest,
            block: pb.block,
            red_len: pb.red_len,
            cursor: 0,
            red_segments: 0,
            resent_segments: 0,
            resent_octets: 0,
            acked: IntervalSet::default(),
            checkpoints: Map::default(),
            cp_resend: VecDeque::new(),
            retx: VecDeque::new(),
            next_cp_serial,
            seen_reports: Set::default(),
            reports_trusted_from: None,
            cycles: 0,
            state: ExportState::Sending,
            opened: span.opened,
            header: DataHeaderPrefix::new(
                SessionId {
                    originator: self.local,
                    number: pb.number,
                },
                pb.client_service_id,
            ),
            plain_fit: ((0, 0), 0),
            in_ready: true,
            in_flight: 0,
            checkpoint_next: false,
            sent_any: false,
        };
        span.ready.insert((span.opened, pb.number));
        span.opened += 1;
        self.exports.insert(pb.number, ex);
        self.stats.export_sessions_opened += 1;
    }

    fn push_control(&mut self, peer: EngineId, bytes: Bytes, on_sent: OnSent) {
        let max = self.cfg.max_control_queue.max(1);
        match self.spans.get_mut(&peer) {
            Some(span) => {
                let mut dropped = None;
                if span.control.len() >= max {
                    dropped = span.control.pop_front();
                    self.stats.segments_dropped += 1;
                }
                span.control.push_back(Outgoing { bytes, on_sent });
                // A dropped segment counts as sent and lost: its retransmission timer still
                // starts, so the session it belongs to cannot stall.
                if let (
                    Some(Outgoing {
                        on_sent: OnSent::Timer(kind),
                        ..
                    }),
                    Some(now),
                ) = (dropped, self.clock)
                {
                    self.on_sent(peer, kind, now);
                }
            }
            None => {
                if self.orphans.len() >= max {
                    self.orphans.pop_front();
                    self.stats.segments_dropped += 1;
                }
                self.orphans.push_back((peer, bytes));
            }
        }
    }

    fn remember_closed(
        &mut self,
        role: Role,
        id: SessionId,
        peer: EngineId,
        outcome: Outcome,
        now: Instant,
    ) {
        if self.cfg.closed_session_capacity == 0 {
            return;
        }
        while self.closed.len() >= self.cfg.closed_session_capacity {
            match self.closed_order.pop_front() {
                Some((_, r, s)) => {
                    self.closed.remove(&(r, s));
                }
                None => break,
            }
        }
        if self
            .closed
            .insert((role, id), Closed { peer, outcome })
            .is_none()
        {
            self.closed_order
                .push_back((now + self.cfg.closed_session_linger, role, id));
        }
    }

    /// Processes one received datagram (one segment).
    pub fn handle_datagram(&mut self, datagram: Bytes, now: Instant) {
        self.clock = Some(now);
        self.stats.segments_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let seg = match Segment::decode_owned(datagram, &self.cfg.decode_limits) {
            Ok(s) => s,
            Err(e) => {
                self.stats.segments_malformed += 1;
                tracing::debug!(error = %e, "malformed LTP segment dropped");
                return;
            }
        };
        let sid = seg.session;
        match seg.body {
            SegmentBody::Data(d) => self.on_data(sid, d, now),
            SegmentBody::Report(r) => self.on_report(sid, r, now),
            SegmentBody::ReportAck { report_serial } => self.on_report_ack(sid, report_serial, now),
            SegmentBody::CancelFromSender(reason) => self.on_cancel_from_sender(sid, reason, now),
            SegmentBody::CancelAckToSender => self.on_cancel_ack_to_sender(sid, now),
            SegmentBody::CancelFromReceiver(reason) => {
                self.on_cancel_from_receiver(sid, reason, now)
            }
            SegmentBody::CancelAckToReceiver => self.on_cancel_ack_to_receiver(sid, now),
        }
    }

    // ---------------------------------------------------------------- output, timers, link state

    /// Next datagram to send and the engine it is for (None: nothing may be sent now), in one
    /// buffer: [`Engine::poll_transmit_parts`] with the parts joined.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(EngineId, Bytes)> {
        self.poll_transmit_parts(now)
            .map(|t| (t.peer, t.into_datagram()))
    }

    /// Next segment to send (None: nothing may be sent now), as a header and the block data it
    /// carries, for a sender that gathers the two into one datagram without copying the data.
    pub fn poll_transmit_parts(&mut self, now: Instant) -> Option<Transmit> {
        self.clock = Some(now);
        if let Some((peer, b)) = self.orphans.pop_front() {
            self.stats.segments_sent += 1;
            self.stats.bytes_sent += b.len() as u64;
            return Some(Transmit {
                peer,
                header: b,
                payload: Bytes::new(),
            });
        }
        // Round robin over the spans that may send now; no allocation per segment (and with
        // one span, no search).
        let may_send = |s: &Span| s.link_up && s.has_output() && s.pace_at.is_none_or(|t| t <= now);
        for _ in 0..self.spans.len() {
            let peer = if self.spans.len() == 1 {
                self.spans.first_key_value().filter(|(_, s)| may_send(s))
            } else {
                (self.spans.range(self.rr..))
                    .chain(self.spans.range(..self.rr))
                    .find(|(_, s)| may_send(s))
            }
            .map(|(&k, _)| k)?;
            self.rr = peer.wrapping_add(1);
            if let Some((header, payload)) = self.transmit_from(peer, now) {
                let out = Transmit {
                    peer,
                    header,
                    payload,
                };
                self.stats.segments_sent += 1;
                self.stats.bytes_sent += out.len() as u64;
                return Some(out);
            }
        }
        None
    }

    fn transmit_from(&mut self, peer: EngineId, now: Instant) -> Option<export::Segmented> {
        let span = self.spans.get_mut(&peer)?;
        if let Some(o) = span.control.pop_front() {
            span.pace(o.bytes.len(), now);
            if let OnSent::Timer(kind) = o.on_sent {
                self.on_sent(peer, kind, now);
            }
            return Some((o.bytes, Bytes::new()));
        }
        let (mss, every, copies) = (
            span.cfg.max_segment_size,
            span.cfg.checkpoint_every,
            span.checkpoint_copies(),
        );
        // Flow control slides only as reports come, and the peer reports only on checkpoints:
        // with no spacing of its own, the span checkpoints once per quarter of its limit of new
        // data, whichever export sends it.
        let spacing = match (every, span.cfg.max_bytes_in_flight) {
            (0, Some(max)) => Some((max / 4).max(1)),
            _ => None,
        };
        // The oldest export with something to send goes first, and keeps the link for as long
        // as it has: blocks complete in the order they were sent, the receiver fills one
        // reassembly buffer after another in order (not the window's buffers all at once,
        // which also holds them all in memory), and a newer export gets the link while older
        // ones wait for reports, which is what the window of sessions is for.
        // (It stays in the ready set while it sends, rather than leave and come back per
        // segment.)
        // One look-up of the span for the segment (the exports, counters and header arena are
        // other fields of the engine, borrowed beside it).
        let exports = &mut self.exports;
        while let Some(&(opened, number)) = span.ready.first() {
            let leave = |span: &mut Span, ex: Option<&mut Export>| {
                span.ready.remove(&(opened, number));
                if let Some(ex) = ex {
                    ex.in_ready = false;
                }
            };
            let Some(ex) = exports.get_mut(&number) else {
                leave(span, None);
                continue;
            };
            if ex.cp_resend.is_empty()
                && ex.retx.is_empty()
                && ex.cursor < ex.red_len
                && matches!(ex.state, ExportState::Sending)
                && span
                    .cfg
                    .max_bytes_in_flight
                    .is_some_and(|max| span.in_flight >= max)
            {
                if ex.in_flight > 0 && ex.checkpoints.is_empty() {
                    // Flow control waits for reports, and the peer reports only on a
                    // checkpoint: this export's next segment is one (discretionary), so that
                    // its data in flight gets acknowledged.
                    ex.checkpoint_next = true;
                } else {
                    // Flow control: new red data waits for reports to acknowledge some.
                    if !span.blocked.contains(&number) {
                        span.blocked.push_back(number);
                    }
                    leave(span, Some(ex));
                    continue;
                }
            }
            if spacing.is_some_and(|sp| span.unchecked >= sp) {
                ex.checkpoint_next = true;
            }
            let red_before = ex.cursor.min(ex.red_len);
            let Some((segment, on_sent)) =
                Self::next_data_segment(ex, mss, every, copies, &mut self.stats, &mut self.headers)
            else {
                leave(span, Some(ex));
                continue;
            };
            if !ex.has_output() {
                leave(span, Some(ex));
            }
            span.pace(segment.0.len() + segment.1.len(), now);
            let new_red = ex.cursor.min(ex.red_len) - red_before;
            if new_red > 0 {
                // A checkpoint ends the octets sent unchecked.
                let checked = matches!(on_sent, OnSent::Timer(TimerKind::Checkpoint { .. }));
                span.unchecked = if checked { 0 } else { span.unchecked + new_red };
                // New red data only adds to what is in flight: nothing held back by the
                // limit can be let go (see `sync_in_flight`).
                export::count_in_flight(span, ex);
            }
            // Only the segment that ends the block can complete the export (with its red
            // part already acknowledged, or none).
            let ended = ex.cursor == ex.block.len() as u64;
            self.stats.data_segments_sent += 1;
            if let OnSent::Timer(kind) = on_sent {
                self.on_sent(peer, kind, now);
            }
            if ended {
                self.check_export_complete(number, now);
            }
            return Some(segment);
        }
        None
    }

    /// Starts the retransmission timer of a segment that just left (§6.1), and notes its send
    /// time for a round-trip sample.
    fn on_sent(&mut self, peer: EngineId, kind: TimerKind, now: Instant) {
        let Some(span) = self.spans.get(&peer) else {
            return;
        };
        let up = span.link_up;
        match kind {
            TimerKind::Checkpoint { number, serial } => {
                if let Some(cp) = self
                    .exports
                    .get_mut(&number)
                    .and_then(|e| e.checkpoints.get_mut(&serial))
                {
                    if let Some(t) = cp.timer.take() {
                        self.timers.stop(t);
                    }
                    let rtt = span.timeout(cp.retransmissions);
                    cp.sent = Some(span.sent_now(cp.retransmissions, now));
                    cp.timer = Some(self.timers.start(peer, kind, now, rtt, up));
                }
            }
            TimerKind::Report { session, serial } => {
                self.stats.reports_sent += 1;
                if let Some(r) = self
                    .imports
                    .get_mut(&session)
                    .and_then(|i| i.reports.get_mut(&serial))
                {
                    if let Some(t) = r.timer.take() {
                        self.timers.stop(t);
                    }
                    let rtt = span.timeout(r.retransmissions);
                    r.sent = Some(span.sent_now(r.retransmissions, now));
                    r.timer = Some(self.timers.start(peer, kind, now, rtt, up));
                }
            }
            TimerKind::ExportCancel { number } => {
                self.stats.cancels_sent += 1;
                if let Some(ExportState::Cancelling {
                    timer,
                    retransmissions,
                    ..
                }) = self.exports.get_mut(&number).map(|e| &mut e.state)
                {
                    if let Some(t) = timer.take() {
                        self.timers.stop(t);
                    }
                    let rtt = span.timeout(*retransmissions);
                    *timer = Some(self.timers.start(peer, kind, now, rtt, up));
                }
            }
            TimerKind::ImportCancel { session } => {
                self.stats.cancels_sent += 1;
                if let Some(ImportState::Cancelling {
                    timer,
                    retransmissions,
                    ..
                }) = self.imports.get_mut(&session).map(|i| &mut i.state)
                {
                    if let Some(t) = timer.take() {
                        self.timers.stop(t);
                    }
                    let rtt = span.timeout(*retransmissions);
                    *timer = Some(self.timers.start(peer, kind, now, rtt, up));
                }
            }
            TimerKind::Inactivity { .. } => {}
        }
    }

    /// Next event for the user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` (or `poll_transmit`, when paced) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.timers.next_deadline();
        let mut consider = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(&(at, _, _)) = self.closed_order.front() {
            consider(at);
        }
        for s in self.spans.values() {
            if s.link_up && s.has_output() {
                if let Some(p) = s.pace_at {
                    consider(p);
                }
            }
        }
        t
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = Some(now);
        while let Some(&(at, role, sid)) = self.closed_order.front() {
            if at > now {
                break;
            }
            self.closed_order.pop_front();
            self.closed.remove(&(role, sid));
        }
        let mut budget = 1_000_000usize;
        while let Some((peer, kind)) = self.timers.pop_expired(now) {
            self.fire(peer, kind, now);
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
    }

    fn fire(&mut self, peer: EngineId, kind: TimerKind, now: Instant) {
        let Some(cfg) = self.spans.get(&peer).map(|s| s.cfg.clone()) else {
            return;
        };
        match kind {
            TimerKind::Checkpoint { number, serial } => {
                let Some(ex) = self.exports.get_mut(&number) else {
                    return;
                };
                let Some(cp) = ex.checkpoints.get_mut(&serial) else {
                    return;
                };
                cp.timer = None;
                let span = self.spans.get(&peer).expect("span exists");
                if let Some(left) = span.time_left(cp.sent, cp.retransmissions, now) {
                    cp.timer = Some(self.timers.start(peer, kind, now, left, span.link_up));
                    return;
                }
                // §6.7: retransmit the checkpoint, or cancel once the limit is reached.
                if cp.retransmissions >= cfg.max_checkpoint_retransmissions {
                    self.cancel_export(number, CancelReason::RetransmissionLimitExceeded, now);
                    return;
                }
                cp.retransmissions += 1;
                ex.cp_resend.push_back(Resend {
                    serial,
                    copy: false,
                });
                self.mark_ready(number);
            }
            TimerKind::Report { session, serial } => {
                let Some(imp) = self.imports.get_mut(&session) else {
                    return;
                };
                let Some(r) = imp.reports.get_mut(&serial) else {
                    return;
                };
                r.timer = None;
                let span = self.spans.get(&peer).expect("span exists");
                if let Some(left) = span.time_left(r.sent, r.retransmissions, now) {
                    r.timer = Some(self.timers.start(peer, kind, now, left, span.link_up));
                    return;
                }
                // §6.8: retransmit the report, or give up once the limit is reached.
                if r.retransmissions >= cfg.max_report_retransmissions {
                    if imp.red_part_taken() {
                        // The red part is delivered: nothing is lost by closing quietly; late
                        // checkpoints get a full report from the closed-session memory.
                        imp.reports.remove(&serial);
                        let red_len = imp.red_end.unwrap_or(0);
                        self.close_import(session, Outcome::ImportDelivered { red_len }, now);
                    } else if imp.delivered {
                        // A partial report no longer matters: the red part is complete and
                        // its acceptance will be answered with a full report.
                        imp.forget_report(serial, &mut self.reassembly);
                    } else {
                        self.cancel_import(session, CancelReason::RetransmissionLimitExceeded, now);
                    }
                    return;
                }
                self.retransmit_report(session, peer, serial);
            }
            TimerKind::ExportCancel { number } => {
                let Some(ex) = self.exports.get_mut(&number) else {
                    return;
                };
                let id = ex.id;
                if let ExportState::Cancelling {
                    reason,
                    retransmissions,
                    timer,
                } = &mut ex.state
                {
                    *timer = None;
                    if *retransmissions >= cfg.max_cancel_retransmissions {
                        self.close_export(number, now);
                        return;
                    }
                    *retransmissions += 1;
                    let seg = control_segment(id, SegmentBody::CancelFromSender(*reason));
                    self.push_control(peer, seg, OnSent::Timer(kind));
                }
            }
            TimerKind::ImportCancel { session } => {
                let Some(imp) = self.imports.get_mut(&session) else {
                    return;
                };
                if let ImportState::Cancelling {
                    reason,
                    retransmissions,
                    timer,
                } = &mut imp.state
                {
                    *timer = None;
                    let reason = *reason;
                    if *retransmissions >= cfg.max_cancel_retransmissions {
                        self.close_import(session, Outcome::ImportCancelledByUs(reason), now);
                        return;
                    }
                    *retransmissions += 1;
                    let seg = control_segment(session, SegmentBody::CancelFromReceiver(reason));
                    self.push_control(peer, seg, OnSent::Timer(kind));
                }
            }
            TimerKind::Inactivity { session } => {
                let Some(imp) = self.imports.get_mut(&session) else {
                    return;
                };
                imp.inactivity = None;
                let quiet_for = imp.last_active.saturating_duration_since(imp.active_since);
                if matches!(imp.state, ImportState::Open) && !quiet_for.is_zero() {
                    // Segments arrived since the timer started: it runs on for that long.
                    imp.active_since = imp.last_active;
                    let up = self.spans.get(&peer).is_some_and(|s| s.link_up);
                    imp.inactivity = Some(self.timers.start(peer, kind, now, quiet_for, up));
                    return;
                }
                if imp.red_part_taken() {
                    let red_len = imp.red_end.unwrap_or(0);
                    self.close_import(session, Outcome::ImportDelivered { red_len }, now);
                } else {
                    self.cancel_import(session, CancelReason::SystemCancelled, now);
                }
            }
        }
    }

    /// Link-state cue (§6.1, §8): suspends (down) or resumes (up) the timers of the span; no
    /// segment is transmitted to the peer while its link is down (they queue).
    pub fn set_link(&mut self, peer: EngineId, up: bool, now: Instant) {
        self.clock = Some(now);
        let Some(span) = self.spans.get_mut(&peer) else {
            return;
        };
        if span.link_up == up {
            return;
        }
        span.link_up = up;
        span.link_epoch += 1;
        if up {
            self.timers.resume_peer(peer, now);
        } else {
            self.timers.suspend_peer(peer, now);
        }
    }

    /// Cancels a session at the user's request (§6.15/§6.17, USR_CNCLD).
    pub fn cancel(&mut self, session: SessionId, now: Instant) {
        self.clock = Some(now);
        if session.originator == self.local {
            if self.exports.contains_key(&session.number) {
                self.cancel_export(session.number, CancelReason::UserCancelled, now);
                return;
            }
            for span in self.spans.values_mut() {
                if let Some(pos) = span.pending.iter().position(|p| p.number == session.number) {
                    span.pending.remove(pos);
                    self.events.push_back(Event::ExportCancelled {
                        session,
                        reason: CancelReason::UserCancelled,
                        by_peer: false,
                    });
                    self.stats.export_sessions_cancelled += 1;
                    return;
                }
            }
        }
        if self.imports.contains_key(&session) {
            self.cancel_import(session, CancelReason::UserCancelled, now);
        }
    }

    /// Custody handshake ([`EngineConfig::confirm_red_parts`]): the client has taken the red
    /// part of import `session` (delivered in [`Event::BlockReceived`]), e.g. stored it on
    /// disk. The checkpoints held since the red part completed are answered now, with reports
    /// that claim all of it, so the sender learns of the reception only once the block is
    /// safe. Returns false (and does nothing) if the session is not an open import awaiting
    /// acceptance (cancelled meanwhile, already accepted, unknown).
    pub fn accept_block(&mut self, session: SessionId, now: Instant) -> bool {
        self.clock = Some(now);
        let Some(imp) = self.imports.get_mut(&session) else {
            return false;
        };
        if !imp.awaits_acceptance() {
            return false;
        }
        imp.accepted = true;
        let held = std::mem::take(&mut imp.held);
        let report = std::mem::take(&mut imp.report_when_accepted);
        for (cp, end) in held {
            self.answer_checkpoint(session, session.originator, cp, end);
        }
        if report {
            self.report_red_part_complete(session, session.originator);
        }
        self.maybe_close_import(session, now);
        true
    }

    /// Custody handshake: the client could not take the red part of import `session` (its
    /// store is full, a write failed): the import is cancelled with `reason` (§6.17; the
    /// sender keeps the block and reports the cancel to its own client, who may send it again
    /// later). Returns false if the session is not an open import awaiting acceptance.
    pub fn refuse_block(&mut self, session: SessionId, reason: CancelReason, now: Instant) -> bool {
        self.clock = Some(now);
        let awaiting = self
            .imports
            .get(&session)
            .is_some_and(Import::awaits_acceptance);
        if awaiting {
            self.cancel_import(session, reason, now);
        }
        awaiting
    }

    /// A one-line summary of every open session, for diagnostics.
    pub fn describe_sessions(&self) -> String {
        let mut out = String::new();
        for ex in self.exports.values() {
            out += &format!(
                "export {:?}: red {} len {} cursor {} acked {:?} cps {:?} retx {} resend {:?} cycles {} ready {}; ",
                ex.id,
                ex.red_len,
                ex.block.len(),
                ex.cursor,
                ex.acked.clipped(0, u64::MAX),
                ex.checkpoints.keys().collect::<Vec<_>>(),
                ex.retx.len(),
                ex.cp_resend,
                ex.cycles,
                ex.in_ready,
            );
        }
        for (id, imp) in &self.imports {
            out += &format!(
                "import {:?}: red_end {:?} received {:?} delivered {} reports {:?} eob {}; ",
                id,
                imp.red_end,
                imp.received.clipped(0, u64::MAX),
                imp.delivered,
                imp.reports.keys().collect::<Vec<_>>(),
                imp.eob_seen,
            );
        }
        out
    }

    /// Red octets delivered so far (`EngineStats::red_bytes_delivered`, without building the
    /// whole [`EngineStats`]).
    pub fn red_bytes_delivered(&self) -> u64 {
        self.stats.red_bytes_delivered
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.open_export_sessions = self.exports.len() as u64;
        s.open_import_sessions = self.imports.len() as u64;
        s.reassembly_bytes = self.reassembly as u64;
        s.queued_blocks = self.spans.values().map(|s| s.pending.len() as u64).sum();
        s
    }
}

#[cfg(test)]
mod tests;
