//! The LTP engine (RFC 5326 §6 sender and receiver procedures, §7 timers and link-state cues),
//! sans-IO: datagrams, commands and the current time go in; datagrams, events and the next
//! deadline come out. It never reads a clock or touches a socket.

mod config;

use std::time::Instant;

use bytes::Bytes;

pub use config::{EngineConfig, SpanConfig};

use crate::segment::{CancelReason, EngineId, SessionId};

/// What the engine reports to its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The red part of an imported block is complete (delivered exactly once).
    BlockReceived {
        /// Import session.
        session: SessionId,
        /// Client service the block is for.
        client_service_id: u64,
        /// The whole red part.
        red: Bytes,
    },
    /// A green data segment arrived (§6.? green data is delivered as it arrives).
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

/// An LTP engine: all sessions with all peers of one local engine ID.
pub struct Engine {
    _local: EngineId,
}

impl Engine {
    /// Creates an engine with our engine ID.
    pub fn new(local_engine_id: EngineId, config: EngineConfig) -> Engine {
        let _ = config;
        todo!("{local_engine_id}")
    }
    /// Configures (or reconfigures) the span to `peer`.
    pub fn add_span(&mut self, peer: EngineId, span: SpanConfig) {
        let _ = (peer, span);
        todo!()
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
        let _ = (dest, client_service_id, block, red_len, now);
        todo!()
    }
    /// Processes one received datagram (one segment).
    pub fn handle_datagram(&mut self, datagram: Bytes, now: Instant) {
        let _ = (datagram, now);
        todo!()
    }
    /// Next datagram to send and the engine it is for (None: nothing may be sent now).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(EngineId, Bytes)> {
        let _ = now;
        todo!()
    }
    /// Next event for the user.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }
    /// When `handle_timeout` (or `poll_transmit`, when paced) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }
    /// Link-state cue (§6.1, §8): suspends (down) or resumes (up) the timers of the span.
    pub fn set_link(&mut self, peer: EngineId, up: bool, now: Instant) {
        let _ = (peer, up, now);
        todo!()
    }
    /// Cancels a session at the user's request (§6.? USR_CNCLD).
    pub fn cancel(&mut self, session: SessionId, now: Instant) {
        let _ = (session, now);
        todo!()
    }
    /// Counters.
    pub fn stats(&self) -> EngineStats {
        todo!()
    }
}
