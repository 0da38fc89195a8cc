//! The LTP engine (RFC 5326 §6 sender and receiver procedures, §7 timers and link-state cues),
//! sans-IO: datagrams, commands and the current time go in; datagrams, events and the next
//! deadline come out. It never reads a clock or touches a socket.
//!
//! Decisions where RFC 5326 leaves room (CCSDS 734.1-B-1 and the peers in INTEROP.md):
//! - Timers start when their segment is handed out by `poll_transmit` (§6.1), last
//!   OWLT out + OWLT in + margin, and are suspended while the span's link is down (§8).
//! - A retransmitted checkpoint keeps its serial number (§6.7); a gap retransmission (§6.13)
//!   ends with a new checkpoint carrying the report's serial; a retransmitted report is not
//!   acted on twice but is acknowledged every time (§6.12).
//! - Primary reports cover [upper bound of our previous report, checkpoint end) (or from 0
//!   when the checkpoint lies below it); a checkpoint answering one of our reports gets a
//!   report with that report's bounds (§6.8).
//! - Data from an engine without a span is dropped and counted unless
//!   `accept_unknown_peers`: we do not know where to send a cancel, and answering unknown
//!   sources would make us an amplifier. Cancels for unknown sessions are acknowledged without
//!   side effects (HDTN's keep-alive ping).
//! - Limits breached by an import (block size, concurrent imports, reassembly memory,
//!   inactivity) cancel it with `SystemCancelled`; red data beyond the green part or the end of
//!   the red part cancels with `Miscolored`.
//! - A checkpoint answering a report serial the import never sent cancels the import
//!   (`SystemCancelled`): the report came from an earlier incarnation of this engine (a
//!   restart), and the sender still counts its claims for data we no longer hold, so answering
//!   from our fresh state could complete a block that was never delivered. (A restart can still
//!   leave stale claims from reports to *discretionary* checkpoints of a session that goes on
//!   after it; our own senders send only the mandatory checkpoints unless configured.)
//! - An import whose red part was delivered closes quietly when its report retransmissions or
//!   its inactivity time run out (nothing is lost; late checkpoints get a full report from the
//!   closed-session memory).

mod config;
mod intervals;
mod red_part;
mod timer;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use config::{EngineConfig, SpanConfig};

use crate::segment::{
    data_segment_overhead, CancelReason, CheckpointInfo, Claim, DataKind, DataSegment, EngineId,
    ReportSegment, Segment, SegmentBody, SessionId,
};
use intervals::IntervalSet;
use red_part::RedPart;
use timer::{TimerId, TimerKind, Timers};

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
    /// Report segments sent (including retransmissions).
    pub reports_sent: u64,
    /// Report segments retransmitted on timer (§6.8).
    pub reports_retransmitted: u64,
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
    /// Blocks waiting for an export session now.
    pub queued_blocks: u64,
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
    ready: VecDeque<u64>,
    active_exports: usize,
    pending: VecDeque<PendingBlock>,
    imports: usize,
    pace_at: Option<Instant>,
}

impl Span {
    fn new(cfg: SpanConfig) -> Span {
        Span {
            cfg,
            link_up: true,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            active_exports: 0,
            pending: VecDeque::new(),
            imports: 0,
            pace_at: None,
        }
    }
    fn has_output(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }
}

struct Checkpoint {
    offset: u64,
    end: u64,
    kind: DataKind,
    report_serial: u64,
    retransmissions: u32,
    timer: Option<TimerId>,
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
    client_service_id: u64,
    block: Bytes,
    red_len: u64,
    cursor: u64,
    red_segments: u64,
    acked: IntervalSet,
    checkpoints: HashMap<u64, Checkpoint>,
    cp_resend: VecDeque<u64>,
    retx: VecDeque<RetxRange>,
    next_cp_serial: u64,
    seen_reports: HashSet<u64>,
    cycles: u32,
    state: ExportState,
    in_ready: bool,
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
}

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
    /// on acceptance (checkpoint, its end offset), at most [`MAX_HELD_CHECKPOINTS`].
    held: Vec<(CheckpointInfo, u64)>,
    reports: HashMap<u64, PendingReport>,
    sent_bounds: HashMap<u64, (u64, u64)>,
    prev_upper: u64,
    /// Our report serials for this import are `first_report_serial..next_report_serial`.
    first_report_serial: u64,
    next_report_serial: u64,
    state: ImportState,
    inactivity: Option<TimerId>,
}

impl Import {
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

/// Most report serials remembered per import for secondary reports (§6.8).
const MAX_SENT_BOUNDS: usize = 4096;
/// Most received report serials remembered per export (to ignore retransmitted reports).
const MAX_SEEN_REPORTS: usize = 4096;
/// Most checkpoints held per import while its red part awaits the client's acceptance.
const MAX_HELD_CHECKPOINTS: usize = 16;

/// Holds a checkpoint until the red part is accepted: one entry per checkpoint serial (a
/// retransmitted checkpoint keeps its serial, §6.7), the oldest dropped beyond
/// [`MAX_HELD_CHECKPOINTS`] (the sender's retransmission answers for it).
fn hold_checkpoint(held: &mut Vec<(CheckpointInfo, u64)>, cp: CheckpointInfo, end: u64) {
    if held
        .iter()
        .any(|(c, _)| c.checkpoint_serial == cp.checkpoint_serial)
    {
        return;
    }
    if held.len() >= MAX_HELD_CHECKPOINTS {
        held.remove(0);
    }
    held.push((cp, end));
}

/// An LTP engine: all sessions with all peers of one local engine ID.
pub struct Engine {
    local: EngineId,
    cfg: EngineConfig,
    rng: SmallRng,
    spans: BTreeMap<EngineId, Span>,
    rr: EngineId,
    exports: HashMap<u64, Export>,
    imports: HashMap<SessionId, Import>,
    closed: HashMap<(Role, SessionId), Closed>,
    closed_order: VecDeque<(Instant, Role, SessionId)>,
    orphans: VecDeque<(EngineId, Bytes)>,
    timers: Timers,
    events: VecDeque<Event>,
    reassembly: usize,
    stats: EngineStats,
    /// The latest `now` given to any method (for work done where no time is passed in).
    clock: Option<Instant>,
}

fn control_segment(session: SessionId, body: SegmentBody) -> Bytes {
    Segment {
        session,
        header_extensions: Vec::new(),
        trailer_extensions: Vec::new(),
        body,
    }
    .to_bytes()
}

impl Engine {
    /// Creates an engine with our engine ID.
    pub fn new(local_engine_id: EngineId, config: EngineConfig) -> Engine {
        Engine {
            local: local_engine_id,
            rng: SmallRng::seed_from_u64(config.seed),
            cfg: config,
            spans: BTreeMap::new(),
            rr: 0,
            exports: HashMap::new(),
            imports: HashMap::new(),
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            orphans: VecDeque::new(),
            timers: Timers::default(),
            events: VecDeque::new(),
            reassembly: 0,
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
            client_service_id: pb.client_service_id,
            block: pb.block,
            red_len: pb.red_len,
            cursor: 0,
            red_segments: 0,
            acked: IntervalSet::default(),
            checkpoints: HashMap::new(),
            cp_resend: VecDeque::new(),
            retx: VecDeque::new(),
            next_cp_serial,
            seen_reports: HashSet::new(),
            cycles: 0,
            state: ExportState::Sending,
            in_ready: true,
            sent_any: false,
        };
        span.ready.push_back(pb.number);
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
                    let rtt = span.cfg.round_trip_timeout();
                    self.on_sent(peer, kind, now, rtt);
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
        let seg = match Segment::decode_with_limits(&datagram, &self.cfg.decode_limits) {
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

    // ---------------------------------------------------------------- sender (§6.2-§6.7, §6.12-§6.15)

    fn export_for(&self, sid: SessionId) -> Option<u64> {
        (sid.originator == self.local && self.exports.contains_key(&sid.number))
            .then_some(sid.number)
    }

    /// §6.13 (report reception) and §6.12 (every report gets a report-ack).
    fn on_report(&mut self, sid: SessionId, r: ReportSegment, now: Instant) {
        self.stats.reports_received += 1;
        let ack = control_segment(
            sid,
            SegmentBody::ReportAck {
                report_serial: r.report_serial,
            },
        );
        let Some(number) = self.export_for(sid) else {
            // A late report for a closed export is re-acknowledged so the receiver can close.
            if let Some(c) = self.closed.get(&(Role::Export, sid)) {
                let peer = c.peer;
                self.stats.report_acks_sent += 1;
                self.push_control(peer, ack, OnSent::Nothing);
            } else {
                self.stats.segments_dropped += 1;
            }
            return;
        };
        let ex = self.exports.get_mut(&number).expect("export exists");
        let peer = ex.peer;
        self.stats.report_acks_sent += 1;
        self.push_control(peer, ack, OnSent::Nothing);
        let ex = self.exports.get_mut(&number).expect("export exists");
        if !matches!(ex.state, ExportState::Sending) {
            return;
        }
        // §6.13: the report answers a checkpoint: stop that checkpoint's timer.
        if r.checkpoint_serial != 0 {
            if let Some(cp) = ex.checkpoints.remove(&r.checkpoint_serial) {
                if let Some(t) = cp.timer {
                    self.timers.stop(t);
                }
                ex.cp_resend.retain(|&s| s != r.checkpoint_serial);
            }
        }
        if ex.seen_reports.len() >= MAX_SEEN_REPORTS {
            // Bounded memory: forgetting only costs a redundant retransmission.
            ex.seen_reports.clear();
        }
        if !ex.seen_reports.insert(r.report_serial) {
            return; // a retransmitted report: already acted on
        }
        // Claims may come out of order and overlap: the interval set merges them; anything
        // beyond what was sent of the red part is ignored.
        let limit = ex.red_len.min(ex.cursor);
        let upper = r.upper_bound.min(limit);
        let lower = r.lower_bound.min(upper);
        for c in &r.claims {
            let s = c.offset.min(limit);
            let e = c.offset.saturating_add(c.length).min(limit);
            ex.acked.insert(s, e);
        }
        if ex.red_done() {
            // All red data acknowledged: stop every checkpoint and pending retransmission.
            let stale: Vec<TimerId> = ex
                .checkpoints
                .drain()
                .filter_map(|(_, c)| c.timer)
                .collect();
            ex.cp_resend.clear();
            ex.retx.clear();
            for t in stale {
                self.timers.stop(t);
            }
            self.check_export_complete(number, now);
            return;
        }
        let gaps = ex.acked.gaps(lower, upper);
        if gaps.is_empty() {
            if !ex.checkpoints.is_empty()
                || !ex.retx.is_empty()
                || !ex.cp_resend.is_empty()
                || ex.cursor < ex.red_len
            {
                return;
            }
            // Nothing outstanding, yet red data unacknowledged: a report that was split (§6.3)
            // lost its other parts after this one answered the checkpoint (the stall of ION
            // issue #14). Re-send the last red octet as a new checkpoint so the receiver
            // reports the whole red part again.
            ex.retx.push_back(RetxRange {
                start: ex.red_len - 1,
                end: ex.red_len,
                checkpoint_for: Some(0),
            });
        }
        ex.cycles += 1;
        let max_cycles = self
            .spans
            .get(&peer)
            .map_or(u32::MAX, |s| s.cfg.max_retransmission_cycles);
        if ex.cycles > max_cycles {
            self.cancel_export(number, CancelReason::RetransmissionCyclesExceeded, now);
            return;
        }
        // §6.13: retransmit exactly the gaps, the last segment being a checkpoint that carries
        // the report's serial number.
        let n = gaps.len();
        for (i, (s, e)) in gaps.into_iter().enumerate() {
            ex.retx.push_back(RetxRange {
                start: s,
                end: e,
                checkpoint_for: (i + 1 == n).then_some(r.report_serial),
            });
        }
        self.mark_ready(number);
    }

    fn mark_ready(&mut self, number: u64) {
        let Some(ex) = self.exports.get_mut(&number) else {
            return;
        };
        if ex.in_ready || !ex.has_output() {
            return;
        }
        if let Some(span) = self.spans.get_mut(&ex.peer) {
            ex.in_ready = true;
            span.ready.push_back(number);
        }
    }

    /// Completion: all red data acknowledged and all green data sent.
    fn check_export_complete(&mut self, number: u64, now: Instant) {
        let Some(ex) = self.exports.get(&number) else {
            return;
        };
        if matches!(ex.state, ExportState::Sending)
            && ex.cursor == ex.block.len() as u64
            && ex.red_done()
        {
            let id = ex.id;
            self.events
                .push_back(Event::TransmissionCompleted { session: id });
            self.stats.export_sessions_completed += 1;
            self.close_export(number, now);
        }
    }

    fn close_export(&mut self, number: u64, now: Instant) {
        let Some(ex) = self.exports.remove(&number) else {
            return;
        };
        for t in ex.timers() {
            self.timers.stop(t);
        }
        self.remember_closed(Role::Export, ex.id, ex.peer, Outcome::ExportEnded, now);
        let Some(span) = self.spans.get_mut(&ex.peer) else {
            return;
        };
        span.active_exports = span.active_exports.saturating_sub(1);
        self.start_queued_exports(ex.peer);
    }

    /// §6.15 (cancel from the block sender): the user or a limit ends the export.
    fn cancel_export(&mut self, number: u64, reason: CancelReason, now: Instant) {
        let Some(ex) = self.exports.get_mut(&number) else {
            return;
        };
        if !matches!(ex.state, ExportState::Sending) {
            return;
        }
        let (id, peer, sent_any) = (ex.id, ex.peer, ex.sent_any);
        for t in ex.timers() {
            self.timers.stop(t);
        }
        ex.checkpoints.clear();
        ex.cp_resend.clear();
        ex.retx.clear();
        self.events.push_back(Event::ExportCancelled {
            session: id,
            reason,
            by_peer: false,
        });
        self.stats.export_sessions_cancelled += 1;
        if !sent_any {
            self.close_export(number, now);
            return;
        }
        ex.state = ExportState::Cancelling {
            reason,
            retransmissions: 0,
            timer: None,
        };
        let seg = control_segment(id, SegmentBody::CancelFromSender(reason));
        self.push_control(peer, seg, OnSent::Timer(TimerKind::ExportCancel { number }));
    }

    /// §6.16/§6.18: the receiver cancelled; acknowledge, and close (also when the cancels crossed).
    fn on_cancel_from_receiver(&mut self, sid: SessionId, reason: CancelReason, now: Instant) {
        self.stats.cancels_received += 1;
        let ack = control_segment(sid, SegmentBody::CancelAckToReceiver);
        let Some(number) = self.export_for(sid) else {
            // Unknown or closed: acknowledge without side effects if we know where to send it.
            let peer = self.closed.get(&(Role::Export, sid)).map(|c| c.peer);
            if let Some(peer) = peer {
                self.push_control(peer, ack, OnSent::Nothing);
            } else {
                self.stats.segments_dropped += 1;
            }
            return;
        };
        let ex = self.exports.get(&number).expect("export exists");
        let peer = ex.peer;
        if matches!(ex.state, ExportState::Sending) {
            self.events.push_back(Event::ExportCancelled {
                session: sid,
                reason,
                by_peer: true,
            });
            self.stats.export_sessions_cancelled += 1;
        }
        self.push_control(peer, ack, OnSent::Nothing);
        self.close_export(number, now);
    }

    /// §6.19: the cancel we sent is acknowledged.
    fn on_cancel_ack_to_sender(&mut self, sid: SessionId, now: Instant) {
        match self.export_for(sid) {
            Some(number) => {
                let ex = &self.exports[&number];
                if matches!(ex.state, ExportState::Cancelling { .. }) {
                    self.close_export(number, now);
                }
            }
            None => self.stats.segments_dropped += 1,
        }
    }

    /// Builds the next data segment of an export, if any (§6.2-§6.6; §6.13 retransmissions
    /// first). Returns the datagram, the timer to start when it leaves, and whether it is a
    /// retransmission.
    fn next_data_segment(
        ex: &mut Export,
        mss: usize,
        every: u32,
        stats: &mut EngineStats,
    ) -> Option<(Bytes, OnSent)> {
        if !matches!(ex.state, ExportState::Sending) {
            return None;
        }
        let number = ex.id.number;
        // §6.7: checkpoint retransmission, same serial number.
        while let Some(serial) = ex.cp_resend.pop_front() {
            let Some(cp) = ex.checkpoints.get(&serial) else {
                continue;
            };
            let seg = build_data(
                ex,
                cp.kind,
                cp.offset,
                cp.end,
                Some(CheckpointInfo {
                    checkpoint_serial: serial,
                    report_serial: cp.report_serial,
                }),
            );
            stats.checkpoints_retransmitted += 1;
            return Some((seg, OnSent::Timer(TimerKind::Checkpoint { number, serial })));
        }
        let cp_guess = Some(CheckpointInfo {
            checkpoint_serial: ex.next_cp_serial,
            report_serial: u64::from(u32::MAX) << 31,
        });
        // §6.13: gap retransmission.
        if let Some(r) = ex.retx.front_mut() {
            let oh = data_segment_overhead(
                ex.id,
                DataKind::RedCheckpointEorpEob,
                ex.client_service_id,
                r.start,
                r.end - r.start,
                cp_guess,
            );
            let room = (mss.saturating_sub(oh)).max(1) as u64;
            let (s, e) = (r.start, r.end.min(r.start + room));
            r.start = e;
            let last = r.start >= r.end;
            let cp_for = if last { r.checkpoint_for } else { None };
            if last {
                ex.retx.pop_front();
            }
            stats.data_segments_retransmitted += 1;
            return Some(match cp_for {
                Some(report_serial) => {
                    let kind = if e >= ex.red_len {
                        if ex.red_len == ex.block.len() as u64 {
                            DataKind::RedCheckpointEorpEob
                        } else {
                            DataKind::RedCheckpointEorp
                        }
                    } else {
                        DataKind::RedCheckpoint
                    };
                    new_checkpoint(ex, kind, s, e, report_serial)
                }
                None => (build_data(ex, DataKind::Red, s, e, None), OnSent::Nothing),
            });
        }
        // First transmission: red part, then green part.
        let len = ex.block.len() as u64;
        if ex.cursor >= len {
            return None;
        }
        let s = ex.cursor;
        let oh = data_segment_overhead(
            ex.id,
            DataKind::RedCheckpointEorpEob,
            ex.client_service_id,
            s,
            len - s,
            cp_guess,
        );
        let room = (mss.saturating_sub(oh)).max(1) as u64;
        ex.sent_any = true;
        if s < ex.red_len {
            let e = ex.red_len.min(s + room);
            ex.cursor = e;
            ex.red_segments += 1;
            if e == ex.red_len {
                // §6.2: the last red segment is the mandatory EORP checkpoint (EOB if no green).
                let kind = if e == len {
                    DataKind::RedCheckpointEorpEob
                } else {
                    DataKind::RedCheckpointEorp
                };
                return Some(new_checkpoint(ex, kind, s, e, 0));
            }
            if every > 0 && ex.red_segments.is_multiple_of(u64::from(every)) {
                // Discretionary checkpoint every `checkpoint_every` red segments.
                return Some(new_checkpoint(ex, DataKind::RedCheckpoint, s, e, 0));
            }
            return Some((build_data(ex, DataKind::Red, s, e, None), OnSent::Nothing));
        }
        let e = len.min(s + room);
        ex.cursor = e;
        let kind = if e == len {
            DataKind::GreenEob
        } else {
            DataKind::Green
        };
        Some((build_data(ex, kind, s, e, None), OnSent::Nothing))
    }

    // ---------------------------------------------------------------- receiver (§6.8-§6.11, §6.17-§6.21)

    fn on_data(&mut self, sid: SessionId, d: DataSegment, now: Instant) {
        if !self.imports.contains_key(&sid) {
            if let Some(c) = self.closed.get(&(Role::Import, sid)) {
                let (peer, outcome) = (c.peer, c.outcome);
                self.late_data(sid, peer, outcome, &d);
                return;
            }
            if !self.open_import(sid, &d, now) {
                return;
            }
        }
        let end = d.offset.saturating_add(d.data.len() as u64);
        let mss_limit = self.cfg.max_block_size;
        let peer = sid.originator;
        self.touch_import(sid, now);
        let imp = self.imports.get_mut(&sid).expect("import exists");
        if !matches!(imp.state, ImportState::Open) {
            return;
        }
        if end > mss_limit {
            self.cancel_import(sid, CancelReason::SystemCancelled, now);
            return;
        }
        if d.kind.is_red() {
            // §6.21 miscolored: red data at or beyond the green part or the end of red part.
            let miscolored = imp.min_green.is_some_and(|g| end > g)
                || imp.red_end.is_some_and(|r| end > r)
                || (d.kind.is_eorp()
                    && (imp.max_red_end > end || imp.red_end.is_some_and(|r| r != end)));
            if miscolored {
                self.cancel_import(sid, CancelReason::Miscolored, now);
                return;
            }
            imp.max_red_end = imp.max_red_end.max(end);
            if d.kind.is_eorp() {
                imp.red_end = Some(end);
                imp.eorp_is_eob = d.kind.is_eob();
            }
            if !imp.delivered {
                let new = imp.received.insert(d.offset, end);
                let mut added = 0;
                for (a, b) in new {
                    let piece = &d.data[(a - d.offset) as usize..(b - d.offset) as usize];
                    added += imp.red.write(a, piece, imp.red_end);
                }
                self.reassembly += added;
                // §6.20-style limit on what all imports hold (pages actually allocated; at
                // most one page over before the import is cancelled and its pages freed).
                if self.reassembly > self.cfg.max_reassembly_memory {
                    self.cancel_import(sid, CancelReason::SystemCancelled, now);
                    return;
                }
            }
            if let Some(cp) = d.checkpoint {
                let imp = self.imports.get_mut(&sid).expect("import exists");
                if cp.report_serial != 0
                    && !(imp.first_report_serial..imp.next_report_serial)
                        .contains(&cp.report_serial)
                {
                    // The checkpoint answers a report this import never sent: an earlier
                    // incarnation of this engine (before a restart) reported on the session,
                    // and the sender still counts that report's claims, for data we no longer
                    // hold. Reporting from our fresh state could let the sender complete a
                    // block we never delivered; cancel, so that it sends the block again.
                    tracing::debug!(?sid, "checkpoint for a report we never sent; cancelling");
                    self.cancel_import(sid, CancelReason::SystemCancelled, now);
                    return;
                }
                let imp = self.imports.get_mut(&sid).expect("import exists");
                let complete = imp.red_end.is_some_and(|r| imp.received.covers(0, r));
                if complete && !imp.accepted {
                    // Custody handshake: the report that would acknowledge the whole red
                    // part waits until the client has taken it (`accept_block`).
                    hold_checkpoint(&mut imp.held, cp, end);
                } else {
                    self.answer_checkpoint(sid, peer, cp, end);
                }
            }
            self.check_import_delivery(sid, now);
        } else {
            // §6.21 miscolored: green data below the red part.
            if imp.red_end.is_some_and(|r| d.offset < r) || d.offset < imp.max_red_end {
                self.cancel_import(sid, CancelReason::Miscolored, now);
                return;
            }
            imp.min_green = Some(imp.min_green.map_or(d.offset, |g| g.min(d.offset)));
            if d.offset == 0 {
                // A block that starts green has no red part (nothing to confirm).
                imp.red_end = Some(0);
                imp.delivered = true;
                imp.accepted = true;
            }
            let eob = d.kind.is_eob();
            imp.eob_seen |= eob;
            self.stats.green_bytes_delivered += d.data.len() as u64;
            self.events.push_back(Event::GreenSegment {
                session: sid,
                client_service_id: imp.client_service_id,
                offset: d.offset,
                data: d.data,
                end_of_block: eob,
            });
            self.maybe_close_import(sid, now);
        }
    }

    /// Opens an import session for the first segment of a session (§6.20 limits apply).
    fn open_import(&mut self, sid: SessionId, d: &DataSegment, now: Instant) -> bool {
        let peer = sid.originator;
        if !self.spans.contains_key(&peer) {
            if !self.cfg.accept_unknown_peers {
                self.stats.segments_dropped += 1;
                tracing::debug!(peer, "data from an engine with no span dropped");
                return false;
            }
            let cfg = self.cfg.default_span.clone();
            self.spans.insert(peer, Span::new(cfg));
        }
        let span = self.spans.get(&peer).expect("span exists");
        if span.imports >= self.cfg.max_import_sessions_per_peer {
            // Too many concurrent imports: refuse this one with a cancel (re-sent on its
            // checkpoints by the closed-session memory).
            tracing::debug!(peer, "import session limit reached; cancelling new session");
            let reason = CancelReason::SystemCancelled;
            self.remember_closed(
                Role::Import,
                sid,
                peer,
                Outcome::ImportCancelledByUs(reason),
                now,
            );
            self.stats.cancels_sent += 1;
            let seg = control_segment(sid, SegmentBody::CancelFromReceiver(reason));
            self.push_control(peer, seg, OnSent::Nothing);
            return false;
        }
        let next_report_serial = self.initial_serial();
        let span = self.spans.get_mut(&peer).expect("span exists");
        span.imports += 1;
        self.imports.insert(
            sid,
            Import {
                client_service_id: d.client_service_id,
                received: IntervalSet::default(),
                red: RedPart::default(),
                red_end: None,
                eorp_is_eob: false,
                max_red_end: 0,
                min_green: None,
                eob_seen: false,
                delivered: false,
                accepted: !self.cfg.confirm_red_parts,
                held: Vec::new(),
                reports: HashMap::new(),
                sent_bounds: HashMap::new(),
                prev_upper: 0,
                first_report_serial: next_report_serial,
                next_report_serial,
                state: ImportState::Open,
                inactivity: None,
            },
        );
        self.stats.import_sessions_opened += 1;
        true
    }

    /// Restarts the inactivity timer of an import.
    fn touch_import(&mut self, sid: SessionId, now: Instant) {
        let peer = sid.originator;
        let (dur, up) = match self.spans.get(&peer) {
            Some(s) => (s.cfg.inactivity_timeout, s.link_up),
            None => return,
        };
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
        };
        if let Some(t) = imp.inactivity.take() {
            self.timers.stop(t);
        }
        if matches!(imp.state, ImportState::Open) {
            imp.inactivity =
                Some(
                    self.timers
                        .start(peer, TimerKind::Inactivity { session: sid }, now, dur, up),
                );
        }
    }

    /// A segment for an import we already closed: answer so the sender can close too, never
    /// reopen (§6.8 full report for a completed session, re-sent cancel for a cancelled one).
    fn late_data(&mut self, sid: SessionId, peer: EngineId, outcome: Outcome, d: &DataSegment) {
        let Some(cp) = d.checkpoint else {
            self.stats.segments_dropped += 1;
            return;
        };
        match outcome {
            Outcome::ImportDelivered { red_len } => {
                // The whole red part arrived: claim all of it up to the checkpoint's end.
                let upper = d.offset.saturating_add(d.data.len() as u64).min(red_len);
                let claims = if upper > 0 {
                    vec![Claim {
                        offset: 0,
                        length: upper,
                    }]
                } else {
                    Vec::new()
                };
                let serial = self.initial_serial();
                let r = ReportSegment {
                    report_serial: serial,
                    checkpoint_serial: cp.checkpoint_serial,
                    upper_bound: upper,
                    lower_bound: 0,
                    claims,
                };
                self.stats.reports_sent += 1;
                self.push_control(
                    peer,
                    control_segment(sid, SegmentBody::Report(r)),
                    OnSent::Nothing,
                );
            }
            Outcome::ImportCancelledByUs(reason) => {
                self.stats.cancels_sent += 1;
                let seg = control_segment(sid, SegmentBody::CancelFromReceiver(reason));
                self.push_control(peer, seg, OnSent::Nothing);
            }
            Outcome::ImportCancelledByPeer | Outcome::ExportEnded => {
                self.stats.segments_dropped += 1;
            }
        }
    }

    /// §6.8 (and §6.3): answer a checkpoint with report segments whose claims cover exactly
    /// what arrived within the report's scope, split when they exceed `max_claims_per_report`.
    fn answer_checkpoint(
        &mut self,
        sid: SessionId,
        peer: EngineId,
        cp: CheckpointInfo,
        cp_end: u64,
    ) {
        let max_claims = self.cfg.max_claims_per_report.max(1);
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
        };
        let (lower, upper) = match imp.sent_bounds.get(&cp.report_serial) {
            // A checkpoint ending a retransmission: the scope of the report it answers.
            Some(&b) if cp.report_serial != 0 => b,
            _ => {
                let lower = if imp.prev_upper < cp_end {
                    imp.prev_upper
                } else {
                    0
                };
                imp.prev_upper = imp.prev_upper.max(cp_end);
                (lower, cp_end)
            }
        };
        let claims = imp.received.clipped(lower, upper);
        let chunks: Vec<&[(u64, u64)]> = if claims.is_empty() {
            vec![&[][..]]
        } else {
            claims.chunks(max_claims).collect()
        };
        let n = chunks.len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let lo = if i == 0 { lower } else { chunks[i][0].0 };
            let hi = if i + 1 == n {
                upper
            } else {
                chunks[i + 1][0].0
            };
            let serial = imp.next_report_serial;
            imp.next_report_serial += 1;
            let r = ReportSegment {
                report_serial: serial,
                checkpoint_serial: cp.checkpoint_serial,
                upper_bound: hi,
                lower_bound: lo,
                claims: chunks[i]
                    .iter()
                    .map(|&(a, b)| Claim {
                        offset: a,
                        length: b - a,
                    })
                    .collect(),
            };
            if imp.sent_bounds.len() < MAX_SENT_BOUNDS {
                imp.sent_bounds.insert(serial, (lo, hi));
            }
            out.push((serial, control_segment(sid, SegmentBody::Report(r.clone()))));
            imp.reports.insert(
                serial,
                PendingReport {
                    report: r,
                    retransmissions: 0,
                    timer: None,
                },
            );
        }
        for (serial, bytes) in out {
            let kind = TimerKind::Report {
                session: sid,
                serial,
            };
            self.push_control(peer, bytes, OnSent::Timer(kind));
        }
    }

    fn check_import_delivery(&mut self, sid: SessionId, now: Instant) {
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
        };
        let Some(red_end) = imp.red_end else {
            return;
        };
        if imp.delivered || !imp.received.covers(0, red_end) {
            return;
        }
        imp.delivered = true;
        self.reassembly -= imp.red.allocated();
        let red = imp.red.take(red_end);
        self.stats.import_sessions_completed += 1;
        self.stats.red_bytes_delivered += red.len() as u64;
        self.events.push_back(Event::BlockReceived {
            session: sid,
            client_service_id: imp.client_service_id,
            red,
        });
        self.maybe_close_import(sid, now);
    }

    /// An import closes when its red part is delivered, every report is acknowledged, and the
    /// end of the block was seen.
    fn maybe_close_import(&mut self, sid: SessionId, now: Instant) {
        let Some(imp) = self.imports.get(&sid) else {
            return;
        };
        if matches!(imp.state, ImportState::Open)
            && imp.delivered
            && imp.accepted
            && imp.reports.is_empty()
            && (imp.eob_seen || imp.eorp_is_eob)
        {
            let red_len = imp.red_end.unwrap_or(0);
            self.close_import(sid, Outcome::ImportDelivered { red_len }, now);
        }
    }

    fn close_import(&mut self, sid: SessionId, outcome: Outcome, now: Instant) {
        let Some(imp) = self.imports.remove(&sid) else {
            return;
        };
        for t in imp.timers() {
            self.timers.stop(t);
        }
        self.reassembly -= imp.red.allocated();
        if let Some(span) = self.spans.get_mut(&sid.originator) {
            span.imports = span.imports.saturating_sub(1);
        }
        self.remember_closed(Role::Import, sid, sid.originator, outcome, now);
    }

    /// §6.17 (cancel from the block receiver).
    fn cancel_import(&mut self, sid: SessionId, reason: CancelReason, now: Instant) {
        let _ = now;
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
        };
        if !matches!(imp.state, ImportState::Open) {
            return;
        }
        for t in imp.timers() {
            self.timers.stop(t);
        }
        imp.reports.clear();
        imp.inactivity = None;
        self.reassembly -= imp.red.allocated();
        imp.red.clear();
        imp.state = ImportState::Cancelling {
            reason,
            retransmissions: 0,
            timer: None,
        };
        self.events.push_back(Event::ImportCancelled {
            session: sid,
            reason,
            by_peer: false,
        });
        self.stats.import_sessions_cancelled += 1;
        let seg = control_segment(sid, SegmentBody::CancelFromReceiver(reason));
        self.push_control(
            sid.originator,
            seg,
            OnSent::Timer(TimerKind::ImportCancel { session: sid }),
        );
    }

    /// §6.14 (report-ack reception): stop that report's timer.
    fn on_report_ack(&mut self, sid: SessionId, serial: u64, now: Instant) {
        let Some(imp) = self.imports.get_mut(&sid) else {
            self.stats.segments_dropped += 1;
            return;
        };
        if let Some(r) = imp.reports.remove(&serial) {
            if let Some(t) = r.timer {
                self.timers.stop(t);
            }
        }
        self.maybe_close_import(sid, now);
    }

    /// §6.19/§6.18: the sender cancelled (also when it crosses our own cancel); acknowledge.
    /// A cancel for a session we never had (HDTN's keep-alive ping) is acknowledged without
    /// side effects (INTEROP.md).
    fn on_cancel_from_sender(&mut self, sid: SessionId, reason: CancelReason, now: Instant) {
        self.stats.cancels_received += 1;
        let ack = control_segment(sid, SegmentBody::CancelAckToSender);
        self.push_control(sid.originator, ack, OnSent::Nothing);
        let Some(imp) = self.imports.get(&sid) else {
            return;
        };
        if matches!(imp.state, ImportState::Open) {
            self.events.push_back(Event::ImportCancelled {
                session: sid,
                reason,
                by_peer: true,
            });
            self.stats.import_sessions_cancelled += 1;
        }
        self.close_import(sid, Outcome::ImportCancelledByPeer, now);
    }

    /// §6.19: the cancel we sent as receiver is acknowledged.
    fn on_cancel_ack_to_receiver(&mut self, sid: SessionId, now: Instant) {
        let reason = match self.imports.get(&sid).map(|i| &i.state) {
            Some(ImportState::Cancelling { reason, .. }) => *reason,
            _ => {
                self.stats.segments_dropped += 1;
                return;
            }
        };
        self.close_import(sid, Outcome::ImportCancelledByUs(reason), now);
    }

    // ---------------------------------------------------------------- output, timers, link state

    /// Next datagram to send and the engine it is for (None: nothing may be sent now).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(EngineId, Bytes)> {
        self.clock = Some(now);
        if let Some((peer, b)) = self.orphans.pop_front() {
            self.stats.segments_sent += 1;
            self.stats.bytes_sent += b.len() as u64;
            return Some((peer, b));
        }
        // Round robin over the spans that may send now; no allocation per segment.
        for _ in 0..self.spans.len() {
            let peer = self
                .spans
                .range(self.rr..)
                .chain(self.spans.range(..self.rr))
                .find(|(_, s)| s.link_up && s.has_output() && s.pace_at.is_none_or(|t| t <= now))
                .map(|(&k, _)| k)?;
            self.rr = peer.wrapping_add(1);
            if let Some(out) = self.transmit_from(peer, now) {
                let span = self.spans.get_mut(&peer).expect("span exists");
                if let Some(rate) = span.cfg.rate_limit.filter(|&r| r > 0) {
                    let burst = Duration::from_secs_f64(span.cfg.rate_burst as f64 / rate as f64);
                    let floor = now.checked_sub(burst).unwrap_or(now);
                    let start = span.pace_at.map_or(floor, |t| t.max(floor));
                    span.pace_at =
                        Some(start + Duration::from_secs_f64(out.len() as f64 / rate as f64));
                }
                self.stats.segments_sent += 1;
                self.stats.bytes_sent += out.len() as u64;
                return Some((peer, out));
            }
        }
        None
    }

    fn transmit_from(&mut self, peer: EngineId, now: Instant) -> Option<Bytes> {
        let span = self.spans.get_mut(&peer)?;
        let rtt = span.cfg.round_trip_timeout();
        if let Some(o) = span.control.pop_front() {
            if let OnSent::Timer(kind) = o.on_sent {
                self.on_sent(peer, kind, now, rtt);
            }
            return Some(o.bytes);
        }
        let (mss, every) = (span.cfg.max_segment_size, span.cfg.checkpoint_every);
        while let Some(number) = self.spans.get_mut(&peer)?.ready.pop_front() {
            let Some(ex) = self.exports.get_mut(&number) else {
                continue;
            };
            ex.in_ready = false;
            let Some((bytes, on_sent)) = Self::next_data_segment(ex, mss, every, &mut self.stats)
            else {
                continue;
            };
            self.stats.data_segments_sent += 1;
            if let OnSent::Timer(kind) = on_sent {
                self.on_sent(peer, kind, now, rtt);
            }
            self.mark_ready(number);
            self.check_export_complete(number, now);
            return Some(bytes);
        }
        None
    }

    /// Starts the retransmission timer of a segment that just left (§6.1).
    fn on_sent(&mut self, peer: EngineId, kind: TimerKind, now: Instant, rtt: Duration) {
        let up = self.spans.get(&peer).is_none_or(|s| s.link_up);
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
                    r.timer = Some(self.timers.start(peer, kind, now, rtt, up));
                }
            }
            TimerKind::ExportCancel { number } => {
                self.stats.cancels_sent += 1;
                if let Some(ExportState::Cancelling { timer, .. }) =
                    self.exports.get_mut(&number).map(|e| &mut e.state)
                {
                    if let Some(t) = timer.take() {
                        self.timers.stop(t);
                    }
                    *timer = Some(self.timers.start(peer, kind, now, rtt, up));
                }
            }
            TimerKind::ImportCancel { session } => {
                self.stats.cancels_sent += 1;
                if let Some(ImportState::Cancelling { timer, .. }) =
                    self.imports.get_mut(&session).map(|i| &mut i.state)
                {
                    if let Some(t) = timer.take() {
                        self.timers.stop(t);
                    }
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
                // §6.7: retransmit the checkpoint, or cancel once the limit is reached.
                if cp.retransmissions >= cfg.max_checkpoint_retransmissions {
                    self.cancel_export(number, CancelReason::RetransmissionLimitExceeded, now);
                    return;
                }
                cp.retransmissions += 1;
                ex.cp_resend.push_back(serial);
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
                // §6.8: retransmit the report, or give up once the limit is reached.
                if r.retransmissions >= cfg.max_report_retransmissions {
                    if imp.delivered && imp.accepted {
                        // The red part is delivered: nothing is lost by closing quietly; late
                        // checkpoints get a full report from the closed-session memory.
                        imp.reports.remove(&serial);
                        let red_len = imp.red_end.unwrap_or(0);
                        self.close_import(session, Outcome::ImportDelivered { red_len }, now);
                    } else if imp.delivered {
                        // A partial report no longer matters: the red part is complete and
                        // its acceptance will be answered with a full report.
                        imp.reports.remove(&serial);
                    } else {
                        self.cancel_import(session, CancelReason::RetransmissionLimitExceeded, now);
                    }
                    return;
                }
                r.retransmissions += 1;
                self.stats.reports_retransmitted += 1;
                let bytes = control_segment(session, SegmentBody::Report(r.report.clone()));
                self.push_control(peer, bytes, OnSent::Timer(kind));
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
                if imp.delivered && imp.accepted {
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
        if !matches!(imp.state, ImportState::Open) || !imp.delivered || imp.accepted {
            return false;
        }
        imp.accepted = true;
        let held = std::mem::take(&mut imp.held);
        for (cp, end) in held {
            self.answer_checkpoint(session, session.originator, cp, end);
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
        let awaiting = self.imports.get(&session).is_some_and(|imp| {
            matches!(imp.state, ImportState::Open) && imp.delivered && !imp.accepted
        });
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

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.open_export_sessions = self.exports.len() as u64;
        s.open_import_sessions = self.imports.len() as u64;
        s.queued_blocks = self.spans.values().map(|s| s.pending.len() as u64).sum();
        s
    }
}

/// Encodes a data segment of `ex` covering `[s, e)` (a zero-copy slice of the block).
fn build_data(ex: &Export, kind: DataKind, s: u64, e: u64, cp: Option<CheckpointInfo>) -> Bytes {
    Segment {
        session: ex.id,
        header_extensions: Vec::new(),
        trailer_extensions: Vec::new(),
        body: SegmentBody::Data(DataSegment {
            kind,
            client_service_id: ex.client_service_id,
            offset: s,
            data: ex.block.slice(s as usize..e as usize),
            checkpoint: cp,
        }),
    }
    .to_bytes()
}

/// Registers a new checkpoint (fresh serial) for `[s, e)` and encodes it.
fn new_checkpoint(
    ex: &mut Export,
    kind: DataKind,
    s: u64,
    e: u64,
    report_serial: u64,
) -> (Bytes, OnSent) {
    let serial = ex.next_cp_serial;
    ex.next_cp_serial += 1;
    ex.checkpoints.insert(
        serial,
        Checkpoint {
            offset: s,
            end: e,
            kind,
            report_serial,
            retransmissions: 0,
            timer: None,
        },
    );
    let cp = CheckpointInfo {
        checkpoint_serial: serial,
        report_serial,
    };
    let bytes = build_data(ex, kind, s, e, Some(cp));
    (
        bytes,
        OnSent::Timer(TimerKind::Checkpoint {
            number: ex.id.number,
            serial,
        }),
    )
}

#[cfg(test)]
mod tests;
