//! Engine and span configuration (RFC 5326 §6 timers and limits, §7 "management" parameters;
//! CCSDS 734.1-B-1 where it narrows them: session numbers, serial-number ranges).

use std::time::Duration;

use crate::segment::DecodeLimits;

/// Engine-wide settings (limits shared by all spans, randomness, closed-session memory).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Seed of the engine's RNG (session numbers, initial serial numbers); same seed, same run.
    pub seed: u64,
    /// Our session numbers are drawn at random in `1..2^session_number_bits` (1..=64; default 32,
    /// as CCSDS 734.1 and ION expect).
    pub session_number_bits: u32,
    /// Largest block (red + green) we send or accept, in octets; beyond it an import is cancelled.
    pub max_block_size: u64,
    /// Largest number of concurrent import sessions per peer; new ones are cancelled.
    pub max_import_sessions_per_peer: usize,
    /// Total octets held for reassembly across all import sessions: red data (from the start
    /// of each block to the furthest octet received) and its bookkeeping (each interval of a
    /// reception record, each report not yet acknowledged), so that neither fragments nor a
    /// flood of checkpoints can hold more memory than this. A breach cancels the import that
    /// would cross it (`SystemCancelled`). `EngineStats::reassembly_bytes` shows the level.
    pub max_reassembly_memory: usize,
    /// Octets of idle reassembly buffers kept for the next red parts (a delivered red part's
    /// buffer comes back when the client drops it; see `red_part.rs`). Bounded as well by
    /// `max_reassembly_memory`.
    pub reassembly_pool: usize,
    /// Largest number of reception claims in one report segment we send (§6.3: more claims are
    /// split over several reports); reports we receive are bounded by `decode_limits.max_claims`.
    pub max_claims_per_report: usize,
    /// How many recently closed sessions are remembered (to answer late segments).
    pub closed_session_capacity: usize,
    /// How long a closed session is remembered.
    pub closed_session_linger: Duration,
    /// Accept import sessions from engines that are not configured as spans (using
    /// `default_span`). Off by default: such data segments are dropped and counted.
    pub accept_unknown_peers: bool,
    /// Most spans made for unknown peers (`accept_unknown_peers`): data from further unknown
    /// engines is dropped and counted, as with `accept_unknown_peers` off, so that a sender
    /// cycling through engine IDs cannot grow the engine without bound. A span configured
    /// with [`add_span`](crate::Engine::add_span) does not count. (The driver keeps as many
    /// learned addresses, `DriverConfig::max_learned_peers`.)
    pub max_unknown_peers: usize,
    /// Span settings used for unknown peers when `accept_unknown_peers` is set.
    pub default_span: SpanConfig,
    /// Limits applied when decoding received segments.
    pub decode_limits: DecodeLimits,
    /// Largest number of control segments (reports, acks, cancels) queued per span; the oldest
    /// is dropped beyond it (all of them are recovered by retransmission timers).
    pub max_control_queue: usize,
    /// Custody handshake for red parts: the report that acknowledges the last of a red part
    /// is held until the client calls [`Engine::accept_block`](crate::Engine::accept_block)
    /// (or [`refuse_block`](crate::Engine::refuse_block), which cancels the import), so a
    /// sender never discards a block the receiving client has not safely taken (DESIGN:
    /// "nothing acknowledged is lost"). Off by default: the red part is acknowledged as soon
    /// as it is complete (RFC 5326 §6.8). An import whose client never answers is cancelled
    /// after the span's inactivity timeout.
    pub confirm_red_parts: bool,
    /// The client services this engine serves (RFC 5326 §3.2.1: the client service ID names
    /// the block's recipient; §3.2.4 cancel reason UNREACH). `Some(ids)`: a session whose
    /// first data segment names any other client service is cancelled at once with
    /// [`CancelReason::UnreachableClient`](crate::CancelReason::UnreachableClient), before
    /// any of its data is held, as ION does; its later segments are answered from the
    /// closed-session memory. `None` (the default): every client service is accepted and the
    /// client decides (for example by [`refuse_block`](crate::Engine::refuse_block)).
    pub client_services: Option<Vec<u64>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            seed: 0,
            session_number_bits: 32,
            max_block_size: 256 * 1024 * 1024,
            max_import_sessions_per_peer: 1024,
            max_reassembly_memory: 1024 * 1024 * 1024,
            reassembly_pool: 16 * 1024 * 1024,
            max_claims_per_report: 256,
            closed_session_capacity: 4096,
            closed_session_linger: Duration::from_secs(600),
            accept_unknown_peers: false,
            max_unknown_peers: 1024,
            default_span: SpanConfig::default(),
            decode_limits: DecodeLimits::default(),
            max_control_queue: 4096,
            confirm_red_parts: false,
            client_services: None,
        }
    }
}

/// Settings of one span (the link to one peer engine).
#[derive(Clone, Debug)]
pub struct SpanConfig {
    /// Largest datagram (encoded segment) we send to this peer, in octets.
    pub max_segment_size: usize,
    /// Export sessions open in parallel to this peer (the window).
    pub max_export_sessions: usize,
    /// Blocks waiting for a free export session; `SendError::QueueFull` beyond it.
    pub max_queued_blocks: usize,
    /// A discretionary checkpoint every this many red data segments (0: only the EORP one).
    pub checkpoint_every: u32,
    /// Copies of each checkpoint that ends a transmission (the end-of-red-part checkpoint,
    /// the last segment of a retransmission, a checkpoint retransmitted after its timer), sent
    /// right behind it. On a lossy link the loss of such a checkpoint idles the session for a
    /// whole retransmission timer (a round trip and a margin); a copy makes that loss as
    /// unlikely as losing both. A copy that arrives after the original makes the receiver send
    /// its report again (§6.8, as for a retransmitted checkpoint; the sender acts on a report
    /// once), so each costs a data segment, a report segment and a report-ack, and the second
    /// report guards against the loss of the first in turn. (Not answering copies, tried: in
    /// the simulation at 10 % loss over a 1 s light time, blocks then took 4.31 s on average
    /// instead of 4.15 s.)
    ///
    /// By default 1, but only while the span is lossy (`checkpoint_copies_min_loss`): on a
    /// clean link each checkpoint goes once, as RFC 5326 describes, and a block of one segment
    /// is not sent twice. 0: never.
    pub checkpoint_copies: u32,
    /// Checkpoints are copied only while the share of red data the peer's reports claim
    /// missing is at least this (0 to 1; `loss.rs` measures it, with recent reports weighing
    /// the most). By default 0.01: at 1 % of data lost, checkpoints are lost as often, and
    /// each such loss idles a session for a retransmission timer. 0: copy on any link.
    pub checkpoint_copies_min_loss: f64,
    /// Retransmissions of one checkpoint before the export is cancelled (§6.7, RLEXC).
    pub max_checkpoint_retransmissions: u32,
    /// Retransmissions of one report segment before the import gives up (§6.8).
    pub max_report_retransmissions: u32,
    /// Retransmissions of a cancel segment before the session is closed anyway (§6.15/§6.17).
    pub max_cancel_retransmissions: u32,
    /// Reports in a row answered with retransmissions while acknowledging no new data, before
    /// the export is cancelled (RXMTCYCEXC). A report that acknowledges new data starts the
    /// count again, so a block that progresses is never cancelled for its size.
    pub max_retransmission_cycles: u32,
    /// Most red data an export may retransmit, as a multiple of its red part (with room for
    /// at least this many segments, for small blocks); beyond it the export is cancelled
    /// (RXMTCYCEXC). The cycle limit above stops reports that gain nothing; this one stops a
    /// receiver that acknowledges a little more in each report and asks for the rest again
    /// (each round would cost a block, n rounds n blocks). 16 by default: a link that loses
    /// half of what is sent needs about 1. 0: no limit.
    pub max_retransmission_factor: u32,
    /// As the receiver on this span: when a red part is completed by a segment that is not a
    /// checkpoint (reordering, a retransmission overtaking its checkpoint), report it at once
    /// in an asynchronous report (RFC 5326 §3.2.2, checkpoint serial number 0) instead of
    /// waiting for the sender's next checkpoint. On by default; off for a peer that does not
    /// take asynchronous reports (its retransmission's checkpoint then gets the answer).
    pub asynchronous_reports: bool,
    /// One-way light time from us to the peer.
    pub owlt_outbound: Duration,
    /// One-way light time from the peer to us.
    pub owlt_inbound: Duration,
    /// Processing and queueing margin added to every round-trip timer (§6.1: both engines'
    /// processing time, plus queueing at the peer).
    pub timer_margin: Duration,
    /// Adaptive retransmission timers (see `engine/rtt.rs`): learn the round trip from the
    /// peer's answers (RFC 6298 estimate, Karn's rule) and time out at `srtt + 4·rttvar`,
    /// never longer than [`Self::round_trip_timeout`] and never shorter than
    /// [`Self::min_round_trip_timeout`], doubling per retransmission of the same segment.
    /// Off: every timer lasts [`Self::round_trip_timeout`] (the fixed interval of §6.1).
    pub adaptive_timers: bool,
    /// With `adaptive_timers`, the smallest margin added to the light times (a floor that
    /// keeps scheduling jitter from causing spurious retransmissions). 250 µs by default: the
    /// UDP driver's timers wake it to the microsecond (`driver/deadline.rs`), and a loopback or
    /// LAN round trip under load measures 0.1-0.5 ms; on loopback with 5 % loss, a floor of 1 ms
    /// cost 10-13 % of the goodput of window 1 (each lost checkpoint waits for it), and 250 µs
    /// retransmitted no more checkpoints needlessly at 0 % loss.
    pub min_timer_margin: Duration,
    /// An import session that hears nothing from the peer for this long (link-up time only) is
    /// cancelled, or closed quietly if its red part was already delivered.
    pub inactivity_timeout: Duration,
    /// Pacing: at most this many octets per second to this peer (None: unlimited).
    pub rate_limit: Option<u64>,
    /// Pacing burst allowance, in octets (how far sending may run ahead of the rate).
    pub rate_burst: u64,
    /// Flow control: at most this many octets of red data sent for the first time and not yet
    /// acknowledged by a report, over all export sessions to this peer (None: no limit, only
    /// the session window). New red data waits while the limit is reached; retransmissions,
    /// checkpoints and green data do not. A session whose data in flight has no checkpoint
    /// outstanding sends one more segment, as a discretionary checkpoint (the peer reports
    /// only on checkpoints), so the limit may be passed by a segment, plus one per session.
    /// Unless `checkpoint_every` is set, the span also makes a new red segment a discretionary
    /// checkpoint whenever a quarter of the limit went out unchecked (any session's), so that
    /// reports keep sliding the window instead of the span stopping at the limit to wait a
    /// round trip. A receiver that drains its socket more slowly than
    /// we fill it (a small receive buffer, a fast link) then loses nothing to overrun; set it
    /// to about half the peer's socket receive buffer, and no lower than the bandwidth-delay
    /// product of the span, or the link idles.
    pub max_bytes_in_flight: Option<u64>,
}

impl Default for SpanConfig {
    fn default() -> Self {
        SpanConfig {
            max_segment_size: 1400,
            max_export_sessions: 64,
            max_queued_blocks: 1024,
            checkpoint_every: 0,
            checkpoint_copies: 1,
            checkpoint_copies_min_loss: 0.01,
            max_checkpoint_retransmissions: 10,
            max_report_retransmissions: 10,
            max_cancel_retransmissions: 10,
            max_retransmission_cycles: 100,
            max_retransmission_factor: 16,
            asynchronous_reports: true,
            owlt_outbound: Duration::from_millis(1),
            owlt_inbound: Duration::from_millis(1),
            timer_margin: Duration::from_millis(200),
            adaptive_timers: true,
            min_timer_margin: Duration::from_micros(250),
            inactivity_timeout: Duration::from_secs(60),
            rate_limit: None,
            rate_burst: 64 * 1024,
            max_bytes_in_flight: None,
        }
    }
}

impl SpanConfig {
    /// Round-trip timer interval (§6.1): OWLT out + OWLT in + margin.
    pub fn round_trip_timeout(&self) -> Duration {
        self.owlt_outbound + self.owlt_inbound + self.timer_margin
    }

    /// The shortest round-trip timer with `adaptive_timers`: OWLT out + OWLT in +
    /// `min_timer_margin`.
    pub fn min_round_trip_timeout(&self) -> Duration {
        self.owlt_outbound + self.owlt_inbound + self.min_timer_margin
    }
}
