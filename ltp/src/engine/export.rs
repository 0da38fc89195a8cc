//! The block sender's procedures (RFC 5326 §6.2–§6.7 transmission and checkpoints, §6.12–§6.15
//! reports received, retransmission, cancellation from the sender): methods of [`Engine`] on
//! its export sessions.

use super::*;
use crate::sdnv;

/// Most received report serials remembered per export (to ignore retransmitted reports).
const MAX_SEEN_REPORTS: usize = 4096;

impl Engine {
    fn export_for(&self, sid: SessionId) -> Option<u64> {
        (sid.originator == self.local && self.exports.contains_key(&sid.number))
            .then_some(sid.number)
    }

    /// §6.13 (report reception) and §6.12 (every report gets a report-ack).
    pub(super) fn on_report(&mut self, sid: SessionId, r: ReportSegment, now: Instant) {
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
        if ex
            .reports_trusted_from
            .is_some_and(|from| r.report_serial.wrapping_sub(from) >= STALE_REPORT_WINDOW)
        {
            // Numbered before the report that took the claims back (see below), or far beyond
            // it: the receiver's earlier incarnation sent it before its restart, and it came
            // late. Its claims are data the receiver no longer has; its checkpoint's timer
            // runs on, so that the new incarnation answers that checkpoint.
            self.stats.stale_reports_ignored += 1;
            return;
        }
        // §6.13: the report answers a checkpoint: stop that checkpoint's timer.
        if r.checkpoint_serial != 0 {
            if let Some(cp) = ex.checkpoints.remove(&r.checkpoint_serial) {
                if let Some(t) = cp.timer {
                    self.timers.stop(t);
                }
                if let Some(span) = self.spans.get_mut(&peer) {
                    span.sample_round_trip(cp.sent, now);
                }
                ex.cp_resend.retain(|q| q.serial != r.checkpoint_serial);
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
        let mut claimed = IntervalSet::default();
        for c in &r.claims {
            let s = c.offset.min(limit);
            let e = c.offset.saturating_add(c.length).min(limit);
            claimed.insert(s, e, |_, _| {});
        }
        if retracts_claims(&ex.acked, &claimed, lower, upper) {
            // A report lists everything received within its scope, and a live receiver
            // never loses red data it received: leaving out something an earlier report
            // claimed means the receiver lost its state (a restart) and these claims were
            // made by its earlier incarnation. Trusting them would complete the block with
            // data the receiver no longer has; forget them all, and retransmit whatever the
            // new incarnation reports missing.
            tracing::debug!(?sid, "report takes back earlier claims; forgetting them");
            ex.acked = IntervalSet::default();
            ex.reports_trusted_from = Some(r.report_serial);
            self.stats.claims_retracted += 1;
        }
        let acked_before = ex.acked.covered();
        for (s, e) in claimed.iter() {
            ex.acked.insert(s, e, |_, _| {});
        }
        if ex.acked.len() as u64 > ex.red_segments + ex.resent_segments {
            // More disjoint claims than segments sent: no receiver of our segments claims
            // that (see `Export::acked`).
            tracing::debug!(?sid, "report claims more pieces than segments were sent");
            self.cancel_export(number, CancelReason::SystemCancelled, now);
            return;
        }
        let delivered = ex.acked.covered().saturating_sub(acked_before);
        if delivered > 0 {
            // Progress: the retransmission-cycle limit counts cycles in a row that gained
            // nothing (see below).
            ex.cycles = 0;
        }
        if let Some(span) = self.spans.get_mut(&peer) {
            span.loss.sample(delivered, 0);
        }
        self.sync_in_flight(number);
        let Some(ex) = self.exports.get_mut(&number) else {
            return;
        };
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
        let mut gaps = ex.acked.gaps(lower, upper);
        if !ex.retx.is_empty() {
            // Data an earlier report asked for and still queued is not queued twice: that
            // retransmission ends with its own checkpoint, whose report covers this one's
            // scope again. (A receiver repeating its gaps in report after report, each
            // acknowledging an octet more, would otherwise have the block queued once per
            // report.)
            let mut queued = IntervalSet::default();
            for r in &ex.retx {
                queued.insert(r.start, r.end, |_, _| {});
            }
            gaps = gaps
                .into_iter()
                .flat_map(|(s, e)| queued.gaps(s, e))
                .collect();
        }
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
        // RXMTCYCEXC: a session is cancelled after `max_retransmission_cycles` reports in a row
        // asked for retransmissions without acknowledging any new data. Counting every cycle
        // of the session instead would cancel large blocks on a lossy link while they still
        // progress: with discretionary checkpoints each report of a 64 MiB block at 5 % loss
        // starts a cycle, well over a hundred of them.
        ex.cycles += 1;
        let (max_cycles, factor, mss) = self.spans.get(&peer).map_or((u32::MAX, 0, 0), |s| {
            (
                s.cfg.max_retransmission_cycles,
                s.cfg.max_retransmission_factor,
                s.cfg.max_segment_size,
            )
        });
        // The retransmission budget: `factor` times the red part, or `factor` segments.
        let budget = u64::from(factor).saturating_mul(ex.red_len.max(mss as u64));
        let lost = gaps.iter().map(|(s, e)| e - s).sum::<u64>();
        ex.resent_octets += lost;
        if let Some(span) = self.spans.get_mut(&peer) {
            span.loss.sample(0, lost);
        }
        if ex.cycles > max_cycles || (factor > 0 && ex.resent_octets > budget) {
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

    /// Brings the span's count of red octets in flight up to date with export `number` (after
    /// it sent new red data, or a report acknowledged some), and when the count drops below
    /// the span's limit, lets the exports it held back send again.
    pub(super) fn sync_in_flight(&mut self, number: u64) {
        let Some(ex) = self.exports.get_mut(&number) else {
            return;
        };
        let Some(span) = self.spans.get_mut(&ex.peer) else {
            return;
        };
        count_in_flight(span, ex);
        let peer = ex.peer;
        self.release_blocked(peer);
    }

    /// Exports held back by the span's in-flight limit go back to the ready queue once the
    /// span is below it.
    pub(super) fn release_blocked(&mut self, peer: EngineId) {
        let Some(span) = self.spans.get_mut(&peer) else {
            return;
        };
        if span
            .cfg
            .max_bytes_in_flight
            .is_some_and(|max| span.in_flight >= max)
        {
            return;
        }
        for number in std::mem::take(&mut span.blocked) {
            self.mark_ready(number);
        }
    }

    /// Queues export `number` in its span's ready set (in its place by age, see
    /// `Engine::transmit_from`), if it has output and is not queued already.
    pub(super) fn mark_ready(&mut self, number: u64) {
        let Some(ex) = self.exports.get_mut(&number) else {
            return;
        };
        if ex.in_ready || !ex.has_output() {
            return;
        }
        if let Some(span) = self.spans.get_mut(&ex.peer) {
            ex.in_ready = true;
            span.ready.insert((ex.opened, number));
        }
    }

    /// Completion: all red data acknowledged and all green data sent.
    pub(super) fn check_export_complete(&mut self, number: u64, now: Instant) {
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

    pub(super) fn close_export(&mut self, number: u64, now: Instant) {
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
        span.in_flight = span.in_flight.saturating_sub(ex.in_flight);
        span.active_exports = span.active_exports.saturating_sub(1);
        self.release_blocked(ex.peer);
        self.start_queued_exports(ex.peer);
    }

    /// §6.15 (cancel from the block sender): the user or a limit ends the export.
    pub(super) fn cancel_export(&mut self, number: u64, reason: CancelReason, now: Instant) {
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
    pub(super) fn on_cancel_from_receiver(
        &mut self,
        sid: SessionId,
        reason: CancelReason,
        now: Instant,
    ) {
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
    pub(super) fn on_cancel_ack_to_sender(&mut self, sid: SessionId, now: Instant) {
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
    pub(super) fn next_data_segment(
        ex: &mut Export,
        mss: usize,
        every: u32,
        copies: u32,
        stats: &mut EngineStats,
        headers: &mut BytesMut,
    ) -> Option<(Segmented, OnSent)> {
        if !matches!(ex.state, ExportState::Sending) {
            return None;
        }
        let number = ex.id.number;
        // §6.7: checkpoint retransmission, same serial number (and its copies).
        while let Some(Resend { serial, copy }) = ex.cp_resend.pop_front() {
            let Some(cp) = ex.checkpoints.get(&serial) else {
                continue;
            };
            let seg = build_data(
                ex,
                headers,
                cp.kind,
                cp.offset,
                cp.end,
                Some(CheckpointInfo {
                    checkpoint_serial: serial,
                    report_serial: cp.report_serial,
                }),
            );
            if copy {
                stats.checkpoint_copies_sent += 1;
                return Some((seg, OnSent::Nothing));
            }
            stats.checkpoints_retransmitted += 1;
            if cp.ends_transmission() {
                queue_copies(ex, serial, copies);
            }
            return Some((seg, OnSent::Timer(TimerKind::Checkpoint { number, serial })));
        }
        // Plain red segments leave room for checkpoint serials, so that the data of any one of
        // them can go again as a checkpoint in a single segment (§6.13), and are all of one
        // size whatever their session and offset: equal datagrams go out in one UDP GSO
        // message and come back in one GRO buffer, also when several sessions interleave.
        let red_mss = mss.saturating_sub(CHECKPOINT_ROOM);
        // §6.13: gap retransmission; the last segment of a gap may carry the new checkpoint.
        if let Some(&RetxRange {
            start: s,
            end,
            checkpoint_for,
        }) = ex.retx.front()
        {
            let mut e = fit(ex, DataKind::Red, s, end, None, red_mss);
            let mut last = e >= end;
            if let (true, Some(report_serial)) = (last, checkpoint_for) {
                let cp = Some(CheckpointInfo {
                    checkpoint_serial: ex.next_cp_serial,
                    report_serial,
                });
                e = fit(ex, DataKind::RedCheckpointEorp, s, end, cp, mss);
                last = e >= end;
            }
            let cp_for = if last { checkpoint_for } else { None };
            if last {
                ex.retx.pop_front();
            } else if let Some(r) = ex.retx.front_mut() {
                r.start = e;
            }
            stats.data_segments_retransmitted += 1;
            ex.resent_segments += 1;
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
                    new_checkpoint(ex, headers, kind, s, e, report_serial, copies)
                }
                None => (
                    build_data(ex, headers, DataKind::Red, s, e, None),
                    OnSent::Nothing,
                ),
            });
        }
        // First transmission: red part, then green part.
        let len = ex.block.len() as u64;
        if ex.cursor >= len {
            return None;
        }
        let s = ex.cursor;
        ex.sent_any = true;
        if s < ex.red_len {
            let plain = plain_end(ex, s, red_mss);
            ex.red_segments += 1;
            let discretionary = std::mem::take(&mut ex.checkpoint_next)
                || (every > 0 && ex.red_segments.is_multiple_of(u64::from(every)));
            if plain < ex.red_len && !discretionary {
                ex.cursor = plain;
                return Some((
                    build_data(ex, headers, DataKind::Red, s, plain, None),
                    OnSent::Nothing,
                ));
            }
            // A checkpoint: its serial numbers take the room left for them (a segment size
            // too small for that may leave the end of the red part to the next segment).
            let cp = Some(CheckpointInfo {
                checkpoint_serial: ex.next_cp_serial,
                report_serial: 0,
            });
            let e = fit(ex, DataKind::RedCheckpointEorp, s, plain, cp, mss);
            ex.cursor = e;
            let kind = if e < ex.red_len {
                // Discretionary checkpoint every `checkpoint_every` red segments, or one that
                // flow control asked for (`Engine::transmit_from`).
                if !discretionary {
                    return Some((
                        build_data(ex, headers, DataKind::Red, s, e, None),
                        OnSent::Nothing,
                    ));
                }
                DataKind::RedCheckpoint
            } else if e == len {
                // §6.2: the last red segment is the mandatory EORP checkpoint (EOB if no green).
                DataKind::RedCheckpointEorpEob
            } else {
                DataKind::RedCheckpointEorp
            };
            return Some(new_checkpoint(ex, headers, kind, s, e, 0, copies));
        }
        let kind = |e| {
            if e == len {
                DataKind::GreenEob
            } else {
                DataKind::Green
            }
        };
        let e = fit(ex, kind(len), s, len, None, mss);
        ex.cursor = e;
        Some((
            build_data(ex, headers, kind(e), s, e, None),
            OnSent::Nothing,
        ))
    }
}

/// How many reports after the one that took back earlier claims a receiver's new incarnation
/// may send in the session and still be trusted ([`Export`]'s `reports_trusted_from`). A
/// session's first report serial is random (ours within 2^30, ION's within 2^32), so an
/// earlier incarnation's serial falls in this window by chance at most once in a thousand.
const STALE_REPORT_WINDOW: u64 = 1 << 20;

/// Octets a plain red segment leaves unused so that its data could go again in one checkpoint
/// segment: the two serial-number SDNVs of §3.2.1 for serials below 2^35 (5 octets each).
/// Ours start below 2^30 and count up, and ION's report serials are 32-bit. A report serial
/// that takes more (HDTN draws 64-bit ones: an SDNV of up to 10 octets) leaves the end of the
/// gap that carries the new checkpoint to one more, short segment, once per retransmission
/// round, as a segment size too small for the serials does. Room for two 64-bit serials (20
/// octets) cost every first transmission instead: 0.7 % of a 1400-octet segment's data.
const CHECKPOINT_ROOM: usize = 10;

/// The end of the longest data segment of `ex` of `kind` starting at `s` and ending at most at
/// `limit` whose encoding (with checkpoint `cp`) takes at most `mss` octets; at least one octet
/// of data, so that a segment size too small for any still makes progress.
fn fit(
    ex: &Export,
    kind: DataKind,
    s: u64,
    limit: u64,
    cp: Option<CheckpointInfo>,
    mss: usize,
) -> u64 {
    let header = ex.header.overhead(kind, s, 0, cp);
    s + longest_data(header, limit - s, mss)
}

/// [`fit`] for a plain red segment of `ex` at `s` (up to the end of the red part), worked out
/// once per segment size and size of the offset field: a plain segment's header varies only
/// in its offset, so all plain segments whose offsets take as many octets carry as much data,
/// and a shorter remainder fits whole (`longest_data` is `min(avail, longest)`, the property
/// `plain_segment_data_is_the_remainder_or_the_longest` checks).
fn plain_end(ex: &mut Export, s: u64, mss: usize) -> u64 {
    let key = (mss, sdnv::encoded_len(s));
    if ex.plain_fit.0 != key {
        ex.plain_fit = (key, fit(ex, DataKind::Red, s, u64::MAX, None, mss) - s);
    }
    s + ex.plain_fit.1.min(ex.red_len - s)
}

/// The most data octets, at most `avail` and at least one, that a data segment whose header
/// takes `header` octets with a length field of 0 carries within `mss` octets. The length
/// field's own size depends on the length: one try per size of that field, shortest (so most
/// room for data) first.
pub(super) fn longest_data(header: usize, avail: u64, mss: usize) -> u64 {
    let room = (mss as u64).saturating_sub(header as u64 - 1);
    (1..=sdnv::MAX_U64_LEN as u64)
        .map(|field| avail.min(room.saturating_sub(field)))
        .find(|&n| sdnv::encoded_len(n) as u64 <= room - n)
        .unwrap_or(0)
        .max(1)
}

/// A data segment as its encoded header and its data, a slice of the block (not copied).
pub(super) type Segmented = (Bytes, Bytes);

/// Size of each buffer the data segment headers are encoded into, one after the other.
const HEADER_ARENA: usize = 16 * 1024;

/// Encodes the header of a data segment of `ex` covering `[s, e)` into `headers` (a shared
/// arena: no allocation per segment), and slices its data from the block.
fn build_data(
    ex: &Export,
    headers: &mut BytesMut,
    kind: DataKind,
    s: u64,
    e: u64,
    cp: Option<CheckpointInfo>,
) -> Segmented {
    if headers.capacity() - headers.len() < MAX_DATA_HEADER {
        *headers = BytesMut::with_capacity(HEADER_ARENA);
    }
    ex.header.encode(kind, s, e - s, cp, headers);
    (
        headers.split().freeze(),
        ex.block.slice(s as usize..e as usize),
    )
}

/// Whether a report with claims `claimed` over the scope `[lower, upper)` leaves out any part of
/// `acked` (what earlier reports claimed) within that scope.
fn retracts_claims(acked: &IntervalSet, claimed: &IntervalSet, lower: u64, upper: u64) -> bool {
    acked
        .clipped(lower, upper)
        .into_iter()
        .any(|(s, e)| !claimed.covers(s, e))
}

/// Queues `copies` copies of checkpoint `serial`, to leave right behind it, ahead of anything
/// else the export has to send again (`SpanConfig::checkpoint_copies`). Only for a checkpoint
/// that ends a transmission ([`Checkpoint::ends_transmission`]), whose loss would otherwise
/// idle the session for a whole retransmission timer.
fn queue_copies(ex: &mut Export, serial: u64, copies: u32) {
    for _ in 0..copies {
        ex.cp_resend.push_front(Resend { serial, copy: true });
    }
}

/// Registers a new checkpoint (fresh serial) for `[s, e)`, queues `copies` copies of it if it
/// ends a transmission ([`Checkpoint::ends_transmission`]) and encodes it.
fn new_checkpoint(
    ex: &mut Export,
    headers: &mut BytesMut,
    kind: DataKind,
    s: u64,
    e: u64,
    report_serial: u64,
    copies: u32,
) -> (Segmented, OnSent) {
    let serial = ex.next_cp_serial;
    ex.next_cp_serial += 1;
    let checkpoint = Checkpoint {
        offset: s,
        end: e,
        kind,
        report_serial,
        retransmissions: 0,
        timer: None,
        sent: None,
    };
    if checkpoint.ends_transmission() {
        queue_copies(ex, serial, copies);
    }
    ex.checkpoints.insert(serial, checkpoint);
    let cp = CheckpointInfo {
        checkpoint_serial: serial,
        report_serial,
    };
    let seg = build_data(ex, headers, kind, s, e, Some(cp));
    (
        seg,
        OnSent::Timer(TimerKind::Checkpoint {
            number: ex.id.number,
            serial,
        }),
    )
}

/// Brings `span`'s count of red octets in flight up to date with export `ex`'s: red data sent
/// for the first time and not yet acknowledged.
pub(super) fn count_in_flight(span: &mut Span, ex: &mut Export) {
    let now_in_flight = ex.cursor.min(ex.red_len).saturating_sub(ex.acked.covered());
    span.in_flight = (span.in_flight + now_in_flight).saturating_sub(ex.in_flight);
    ex.in_flight = now_in_flight;
}
