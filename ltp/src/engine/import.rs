//! The block receiver's procedures (RFC 5326 §6.8–§6.11 reception, reports and delivery,
//! §6.17–§6.21 cancellation from the receiver, limits, miscoloring): methods of [`Engine`] on its
//! import sessions.

use super::*;

/// Most report serials remembered per import for secondary reports (§6.8).
const MAX_SENT_BOUNDS: usize = 4096;
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

/// Notes a segment of import `imp` (session `sid`, on `span`): its inactivity timer runs on
/// from the latest one (started here if none runs).
fn touch_import(imp: &mut Import, timers: &mut Timers, span: &Span, sid: SessionId, now: Instant) {
    imp.last_active = now;
    if imp.inactivity.is_none() && matches!(imp.state, ImportState::Open) {
        imp.active_since = now;
        let (dur, up) = (span.cfg.inactivity_timeout, span.link_up);
        imp.inactivity = Some(timers.start(
            sid.originator,
            TimerKind::Inactivity { session: sid },
            now,
            dur,
            up,
        ));
    }
}

impl Engine {
    pub(super) fn on_data(&mut self, sid: SessionId, d: DataSegment, now: Instant) {
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
        let imp = self.imports.get_mut(&sid).expect("import exists");
        if let Some(span) = self.spans.get(&peer) {
            touch_import(imp, &mut self.timers, span, sid, now);
        }
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
            // The red part can be complete only once its end is known (§6.10).
            let red_end_known = imp.red_end.is_some();
            if !imp.delivered {
                // §6.20-style limit on what all imports hold, checked before anything is
                // allocated for the segment: its data, and the interval it may add to the
                // reception record.
                let growth = imp.red.growth(end) + INTERVAL_CHARGE as u64;
                if self.reassembly as u64 + growth > self.cfg.max_reassembly_memory as u64 {
                    self.cancel_import(sid, CancelReason::SystemCancelled, now);
                    return;
                }
                let (red, hint, pool) = (&mut imp.red, self.red_size_hint, &self.buffers);
                let mut grew = 0;
                let intervals = imp.received.len();
                imp.received.insert(d.offset, end, |a, b| {
                    let piece = &d.data[(a - d.offset) as usize..(b - d.offset) as usize];
                    grew += red.write(a, piece, hint, pool);
                });
                // Merging may leave fewer intervals than before.
                let charged = imp.bookkeeping;
                imp.bookkeeping =
                    charged + imp.received.len() * INTERVAL_CHARGE - intervals * INTERVAL_CHARGE;
                self.reassembly = self.reassembly + grew + imp.bookkeeping - charged;
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
                } else if imp.answered.contains(&cp.checkpoint_serial) {
                    self.repeat_reports(sid, peer, cp.checkpoint_serial);
                } else {
                    // The reports it takes stay until acknowledged: within the same limit (at
                    // most one claim per interval received).
                    let claims = imp.received.len();
                    let reports = claims
                        .div_ceil(self.cfg.max_claims_per_report.max(1))
                        .max(1);
                    let charge = PendingReport::charge_of(reports, claims);
                    if self.reassembly + charge > self.cfg.max_reassembly_memory {
                        self.cancel_import(sid, CancelReason::SystemCancelled, now);
                        return;
                    }
                    self.answer_checkpoint(sid, peer, cp, end);
                }
            }
            if red_end_known {
                self.check_import_delivery(sid, d.checkpoint.is_some(), now);
            }
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
            if self.unknown_peers.len() >= self.cfg.max_unknown_peers {
                self.stats.segments_dropped += 1;
                tracing::debug!(peer, "unknown peer limit reached; data dropped");
                return false;
            }
            let cfg = self.cfg.default_span.clone();
            self.spans.insert(peer, Span::new(cfg));
            self.unknown_peers.insert(peer);
        }
        if let Some(served) = &self.cfg.client_services {
            if !served.contains(&d.client_service_id) {
                tracing::debug!(
                    peer,
                    client_service_id = d.client_service_id,
                    "data for a client service we do not serve; cancelling new session"
                );
                self.refuse_import(sid, CancelReason::UnreachableClient, now);
                return false;
            }
        }
        let span = self.spans.get(&peer).expect("span exists");
        if span.imports >= self.cfg.max_import_sessions_per_peer {
            tracing::debug!(peer, "import session limit reached; cancelling new session");
            self.refuse_import(sid, CancelReason::SystemCancelled, now);
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
                report_when_accepted: false,
                reports: Map::default(),
                bookkeeping: 0,
                sent_bounds: Map::default(),
                answered: Set::default(),
                prev_upper: 0,
                first_report_serial: next_report_serial,
                next_report_serial,
                state: ImportState::Open,
                inactivity: None,
                active_since: now,
                last_active: now,
            },
        );
        self.stats.import_sessions_opened += 1;
        true
    }

    /// Refuses a session at its first segment, before any state is kept for it but the
    /// closed-session memory: one cancel now, and again for each of its checkpoints that
    /// arrives later (`late_data`), which also recovers a lost cancel.
    fn refuse_import(&mut self, sid: SessionId, reason: CancelReason, now: Instant) {
        let peer = sid.originator;
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
    /// A retransmitted checkpoint (§6.7: it keeps its serial) that this import has answered
    /// already: the reports that answered it and are not yet acknowledged are sent again, with
    /// their serial numbers; acknowledged ones are not, since the sender has them.
    ///
    /// New reports would carry new serials, and the sender would act on each (§6.13): when
    /// the checkpoint was retransmitted only because our first answer was still on its way
    /// (a timer shorter than the round trip, or a report delayed in a queue), it would
    /// retransmit the same gaps twice. Repeating the original reports is idempotent at the
    /// sender (it acts on a report serial once, §6.13), and loses nothing when the first
    /// answer was really lost.
    fn repeat_reports(&mut self, sid: SessionId, peer: EngineId, checkpoint_serial: u64) {
        let Some(limit) = self
            .spans
            .get(&peer)
            .map(|s| s.cfg.max_report_retransmissions)
        else {
            return;
        };
        let Some(imp) = self.imports.get(&sid) else {
            return;
        };
        let mut again: Vec<u64> = imp
            .reports
            .iter()
            .filter(|(_, r)| {
                r.report.checkpoint_serial == checkpoint_serial && r.retransmissions < limit
            })
            .map(|(&serial, _)| serial)
            .collect();
        again.sort_unstable();
        for serial in again {
            self.retransmit_report(sid, peer, serial);
        }
    }

    /// §6.8: sends a pending report again with its serial number, counted as a retransmission
    /// (its timer restarts when it leaves).
    pub(super) fn retransmit_report(&mut self, sid: SessionId, peer: EngineId, serial: u64) {
        let Some(r) = self
            .imports
            .get_mut(&sid)
            .and_then(|i| i.reports.get_mut(&serial))
        else {
            return;
        };
        r.retransmissions += 1;
        self.stats.reports_retransmitted += 1;
        let bytes = control_segment(sid, SegmentBody::Report(r.report.clone()));
        let kind = TimerKind::Report {
            session: sid,
            serial,
        };
        self.push_control(peer, bytes, OnSent::Timer(kind));
    }

    pub(super) fn answer_checkpoint(
        &mut self,
        sid: SessionId,
        peer: EngineId,
        cp: CheckpointInfo,
        cp_end: u64,
    ) {
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
        };
        if imp.answered.len() >= MAX_SENT_BOUNDS {
            // Bounded memory: forgetting only means a retransmitted checkpoint gets new
            // reports (correct, if redundant).
            imp.answered.clear();
        }
        imp.answered.insert(cp.checkpoint_serial);
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
        self.send_reports(sid, peer, cp.checkpoint_serial, lower, upper);
    }

    /// §6.8 asynchronous reception report (§3.2.2: checkpoint serial number zero): the red
    /// part of import `sid` was completed by a segment that is not a checkpoint (data that
    /// came after the checkpoint covering it, or after the report on that checkpoint), so no
    /// checkpoint is left to answer with the news. Reported at once, over the whole red part,
    /// the sender completes a round trip sooner than after its own retransmission's
    /// checkpoint; without it, two light times sooner on a reordering long-delay link. Like
    /// every report it is retransmitted until acknowledged.
    pub(super) fn report_red_part_complete(&mut self, sid: SessionId, peer: EngineId) {
        let Some(red_end) = self.imports.get(&sid).and_then(|imp| imp.red_end) else {
            return;
        };
        self.stats.asynchronous_reports_sent += 1;
        self.send_reports(sid, peer, 0, 0, red_end);
    }

    /// Sends reports answering checkpoint `checkpoint_serial` (0: asynchronous) over the
    /// scope `lower..upper`: what was received within it, split by the claim limit (§6.3),
    /// each pending (and charged to reassembly memory) until acknowledged.
    fn send_reports(
        &mut self,
        sid: SessionId,
        peer: EngineId,
        checkpoint_serial: u64,
        lower: u64,
        upper: u64,
    ) {
        let max_claims = self.cfg.max_claims_per_report.max(1);
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
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
                checkpoint_serial,
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
            let pending = PendingReport {
                report: r,
                retransmissions: 0,
                timer: None,
                sent: None,
            };
            imp.keep_report(serial, pending, &mut self.reassembly);
        }
        for (serial, bytes) in out {
            let kind = TimerKind::Report {
                session: sid,
                serial,
            };
            self.push_control(peer, bytes, OnSent::Timer(kind));
        }
    }

    /// Delivers the red part of import `sid` once it is complete. `by_checkpoint`: the segment
    /// just received was a checkpoint (its report tells the sender); otherwise, once a
    /// checkpoint has been answered with what was missing, the sender hears of the completion
    /// in an asynchronous report (§3.2.2), unless the span is set not to send them.
    fn check_import_delivery(&mut self, sid: SessionId, by_checkpoint: bool, now: Instant) {
        let Some(imp) = self.imports.get_mut(&sid) else {
            return;
        };
        let Some(red_end) = imp.red_end else {
            return;
        };
        if imp.delivered || !imp.received.covers(0, red_end) {
            return;
        }
        let asynchronous = !by_checkpoint
            && !imp.answered.is_empty()
            && (self.spans.get(&sid.originator)).is_none_or(|s| s.cfg.asynchronous_reports);
        if asynchronous {
            if imp.accepted {
                // Before the delivery below, which could otherwise close the import (no
                // report pending) before the sender hears of it. The report's small charge
                // (one claim) is taken before the red part's memory is released, in this
                // same call: no limit check holds it back.
                self.report_red_part_complete(sid, sid.originator);
            } else {
                // Custody handshake: once the client has taken the red part.
                imp.report_when_accepted = true;
            }
        }
        let imp = self.imports.get_mut(&sid).expect("import exists");
        imp.delivered = true;
        self.reassembly -= imp.red.held();
        let red = imp.red.take(red_end, &self.buffers);
        self.red_size_hint = red.len();
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
    pub(super) fn maybe_close_import(&mut self, sid: SessionId, now: Instant) {
        let Some(imp) = self.imports.get(&sid) else {
            return;
        };
        if matches!(imp.state, ImportState::Open)
            && imp.red_part_taken()
            && imp.reports.is_empty()
            && (imp.eob_seen || imp.eorp_is_eob)
        {
            let red_len = imp.red_end.unwrap_or(0);
            self.close_import(sid, Outcome::ImportDelivered { red_len }, now);
        }
    }

    pub(super) fn close_import(&mut self, sid: SessionId, outcome: Outcome, now: Instant) {
        let Some(mut imp) = self.imports.remove(&sid) else {
            return;
        };
        for t in imp.timers() {
            self.timers.stop(t);
        }
        self.reassembly -= imp.red.held() + imp.bookkeeping;
        imp.red.clear(&self.buffers);
        if let Some(span) = self.spans.get_mut(&sid.originator) {
            span.imports = span.imports.saturating_sub(1);
        }
        self.remember_closed(Role::Import, sid, sid.originator, outcome, now);
    }

    /// §6.17 (cancel from the block receiver).
    pub(super) fn cancel_import(&mut self, sid: SessionId, reason: CancelReason, now: Instant) {
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
        self.reassembly -= imp.red.held() + imp.bookkeeping;
        imp.bookkeeping = 0;
        imp.red.clear(&self.buffers);
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
    pub(super) fn on_report_ack(&mut self, sid: SessionId, serial: u64, now: Instant) {
        let Some(imp) = self.imports.get_mut(&sid) else {
            self.stats.segments_dropped += 1;
            return;
        };
        if let Some(r) = imp.forget_report(serial, &mut self.reassembly) {
            if let Some(t) = r.timer {
                self.timers.stop(t);
            }
            if let Some(span) = self.spans.get_mut(&sid.originator) {
                span.sample_round_trip(r.sent, now);
            }
            if imp.red_end.is_some_and(|end| claims_whole(&r.report, end)) {
                // The sender has acknowledged a report claiming the whole red part: its
                // transmission is complete (§6.13), and our other reports still unacknowledged
                // can tell it nothing more. Typically one that answered a retransmission's
                // checkpoint, which crossed our asynchronous report: a sender that has closed
                // the session may never acknowledge it, and the import would send it until
                // its retransmission limit.
                let rest: Vec<u64> = imp.reports.keys().copied().collect();
                for other in rest {
                    if let Some(t) = imp
                        .forget_report(other, &mut self.reassembly)
                        .and_then(|r| r.timer)
                    {
                        self.timers.stop(t);
                    }
                }
            }
        }
        self.maybe_close_import(sid, now);
    }

    /// §6.19/§6.18: the sender cancelled (also when it crosses our own cancel); acknowledge.
    /// A cancel for a session we never had (HDTN's keep-alive ping) is acknowledged without
    /// side effects (INTEROP.md).
    pub(super) fn on_cancel_from_sender(
        &mut self,
        sid: SessionId,
        reason: CancelReason,
        now: Instant,
    ) {
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
    pub(super) fn on_cancel_ack_to_receiver(&mut self, sid: SessionId, now: Instant) {
        let reason = match self.imports.get(&sid).map(|i| &i.state) {
            Some(ImportState::Cancelling { reason, .. }) => *reason,
            _ => {
                self.stats.segments_dropped += 1;
                return;
            }
        };
        self.close_import(sid, Outcome::ImportCancelledByUs(reason), now);
    }
}

/// The report claims all of `[0, red_end)`: its claims, merged, leave no gap.
fn claims_whole(report: &ReportSegment, red_end: u64) -> bool {
    let mut claimed = IntervalSet::default();
    for c in &report.claims {
        claimed.insert(c.offset, c.offset.saturating_add(c.length), |_, _| {});
    }
    claimed.covers(0, red_end)
}
