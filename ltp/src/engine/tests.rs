//! Scripted unit tests of the RFC 5326 §6 procedures: segments are fed in by hand and the
//! engine's answers decoded and checked.

use super::*;
use crate::sdnv;

const A: EngineId = 1;
const B: EngineId = 2;

fn t0() -> Instant {
    Instant::now()
}

fn span() -> SpanConfig {
    SpanConfig {
        max_segment_size: 256,
        owlt_outbound: Duration::from_millis(100),
        owlt_inbound: Duration::from_millis(100),
        timer_margin: Duration::from_millis(50),
        max_checkpoint_retransmissions: 3,
        // The scripted procedures below assume the fixed interval of §6.1; adaptive timers
        // have their own tests.
        adaptive_timers: false,
        // And each checkpoint sent once, as RFC 5326 describes; copies have their own tests.
        checkpoint_copies: 0,
        ..SpanConfig::default()
    }
}

fn engine(id: EngineId, peer: EngineId) -> Engine {
    let mut e = Engine::new(
        id,
        EngineConfig {
            seed: id,
            ..EngineConfig::default()
        },
    );
    e.add_span(peer, span());
    e
}

/// Engine B with `config` and a span to A.
fn b_with(config: EngineConfig) -> Engine {
    let mut b = Engine::new(B, config);
    b.add_span(A, span());
    b
}

fn drain(e: &mut Engine, now: Instant) -> Vec<Segment> {
    let mut v = Vec::new();
    while let Some((_, b)) = e.poll_transmit(now) {
        v.push(Segment::decode(&b).expect("engine output decodes"));
    }
    v
}

fn drain_raw(e: &mut Engine, now: Instant) -> Vec<Bytes> {
    let mut v = Vec::new();
    while let Some((_, b)) = e.poll_transmit(now) {
        v.push(b);
    }
    v
}

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn data(s: &Segment) -> &DataSegment {
    match &s.body {
        SegmentBody::Data(d) => d,
        other => panic!("expected data, got {other:?}"),
    }
}

fn block(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>())
}

fn report(sid: SessionId, serial: u64, cp: u64, lo: u64, hi: u64, claims: &[(u64, u64)]) -> Bytes {
    control_segment(
        sid,
        SegmentBody::Report(ReportSegment {
            report_serial: serial,
            checkpoint_serial: cp,
            upper_bound: hi,
            lower_bound: lo,
            claims: claims
                .iter()
                .map(|&(offset, length)| Claim { offset, length })
                .collect(),
        }),
    )
}

#[test]
fn sender_splits_into_sized_segments_with_checkpoints() {
    let now = t0();
    let mut a = engine(A, B);
    let mut sp = span();
    sp.checkpoint_every = 3;
    a.add_span(B, sp);
    let blk = block(4000);
    a.send_block(B, 7, blk.clone(), 3000, now).unwrap();
    let raw = drain_raw(&mut a, now);
    assert!(
        raw.iter().all(|b| b.len() <= 256),
        "a datagram exceeds the segment size"
    );
    let segs: Vec<Segment> = raw.iter().map(|b| Segment::decode(b).unwrap()).collect();
    let kinds: Vec<DataKind> = segs.iter().map(|s| data(s).kind).collect();
    let reds = kinds.iter().filter(|k| k.is_red()).count();
    let eorp = kinds
        .iter()
        .position(|k| *k == DataKind::RedCheckpointEorp)
        .unwrap();
    assert_eq!(eorp + 1, reds, "EORP is the last red segment");
    assert_eq!(*kinds.last().unwrap(), DataKind::GreenEob);
    for (i, k) in kinds.iter().enumerate().take(reds - 1) {
        let expect = if (i + 1) % 3 == 0 {
            DataKind::RedCheckpoint
        } else {
            DataKind::Red
        };
        assert_eq!(*k, expect, "segment {i}");
    }
    // Contiguous, complete, and the data is the block's.
    let mut off = 0;
    for s in &segs {
        let d = data(s);
        assert_eq!(d.offset, off);
        assert_eq!(d.data, blk.slice(off as usize..off as usize + d.data.len()));
        assert_eq!(d.client_service_id, 7);
        off += d.data.len() as u64;
    }
    assert_eq!(off, 4000);
}

/// Export of a 4000-octet red block from `a` (3 retransmission cycles allowed), answered by
/// reports that claim `[0, claimed[i])` each in turn; returns the events of `a`.
fn cycles_with_claims(claimed: &[u64]) -> Vec<Event> {
    let now = t0();
    let mut a = engine(A, B);
    let mut sp = span();
    sp.max_retransmission_cycles = 3;
    a.add_span(B, sp);
    let sid = a.send_block(B, 1, block(4000), 4000, now).unwrap();
    let mut cp = data(drain(&mut a, now).last().unwrap()).checkpoint.unwrap();
    for (i, &upto) in claimed.iter().enumerate() {
        let serial = 100 + i as u64;
        a.handle_datagram(
            report(sid, serial, cp.checkpoint_serial, 0, 4000, &[(0, upto)]),
            now,
        );
        let Some(last) = drain(&mut a, now)
            .into_iter()
            .rev()
            .find(|s| matches!(&s.body, SegmentBody::Data(d) if d.checkpoint.is_some()))
        else {
            break;
        };
        cp = data(&last).checkpoint.unwrap();
        assert_eq!(cp.report_serial, serial);
    }
    events(&mut a)
}

#[test]
fn retransmission_cycles_count_only_cycles_without_progress() {
    // Six cycles, each acknowledging more: more than the limit of 3, but the block progresses,
    // so the session goes on (a full report then completes it).
    let ev = cycles_with_claims(&[500, 1000, 1500, 2000, 2500, 3000, 4000]);
    assert!(
        matches!(ev[..], [Event::TransmissionCompleted { .. }]),
        "{ev:?}"
    );
    // Progress, then four reports in a row that gain nothing: cancelled (RXMTCYCEXC) at the
    // fourth.
    let ev = cycles_with_claims(&[1000, 2000, 2000, 2000, 2000, 2000]);
    assert!(
        matches!(
            ev[..],
            [Event::ExportCancelled {
                reason: CancelReason::RetransmissionCyclesExceeded,
                by_peer: false,
                ..
            }]
        ),
        "{ev:?}"
    );
}

#[test]
fn green_only_block_completes_when_sent() {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(600), 0, now).unwrap();
    let segs = drain(&mut a, now);
    assert!(segs.iter().all(|s| !data(s).kind.is_red()));
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
    assert_eq!(a.open_sessions(), 0);
    assert_eq!(a.session_timers(), 0);
}

#[test]
fn report_with_out_of_order_overlapping_claims_retransmits_exactly_the_gaps() {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(4000), 4000, now).unwrap();
    let segs = drain(&mut a, now);
    let cp = data(segs.last().unwrap()).checkpoint.unwrap();
    // Claims out of order and overlapping: [2000,2500), [0,1000), [500,1500).
    let r = report(
        sid,
        77,
        cp.checkpoint_serial,
        0,
        4000,
        &[(2000, 500), (0, 1000), (500, 1000)],
    );
    a.handle_datagram(r, now);
    let out = drain(&mut a, now);
    assert_eq!(out[0].body, SegmentBody::ReportAck { report_serial: 77 });
    let mut covered = Vec::new();
    for s in &out[1..] {
        let d = data(s);
        covered.push((d.offset, d.offset + d.data.len() as u64));
    }
    let merged = {
        let mut set = IntervalSet::default();
        for &(s, e) in &covered {
            set.insert(s, e, |_, _| {});
        }
        set.clipped(0, 4000)
    };
    assert_eq!(merged, vec![(1500, 2000), (2500, 4000)]);
    let last = data(out.last().unwrap());
    assert_eq!(last.kind, DataKind::RedCheckpointEorpEob);
    assert_eq!(last.checkpoint.unwrap().report_serial, 77);
    // Only the last retransmitted segment is a checkpoint.
    assert!(out[1..out.len() - 1]
        .iter()
        .all(|s| !data(s).kind.is_checkpoint()));
    // The same report again: acknowledged again, no second retransmission (§6.12).
    a.handle_datagram(
        report(sid, 77, cp.checkpoint_serial, 0, 4000, &[(0, 1500)]),
        now,
    );
    let again = drain(&mut a, now);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, SegmentBody::ReportAck { report_serial: 77 });
    // A full report completes the session.
    let last_cp = last.checkpoint.unwrap().checkpoint_serial;
    a.handle_datagram(report(sid, 78, last_cp, 0, 4000, &[(0, 4000)]), now);
    assert_eq!(
        drain(&mut a, now)[0].body,
        SegmentBody::ReportAck { report_serial: 78 }
    );
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
    assert_eq!(a.session_timers(), 0);
}

#[test]
fn a_report_claiming_more_pieces_than_segments_were_sent_cancels_the_export() {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(4000), 4000, now).unwrap();
    let segs = drain(&mut a, now);
    let cp = data(segs.last().unwrap()).checkpoint.unwrap();
    // As many disjoint claims as segments were sent: what a receiver that lost every
    // other one reports. The gaps are retransmitted.
    let every_other: Vec<(u64, u64)> = segs
        .iter()
        .step_by(2)
        .map(|s| (data(s).offset, data(s).data.len() as u64))
        .collect();
    a.handle_datagram(
        report(sid, 5, cp.checkpoint_serial, 0, 4000, &every_other),
        now,
    );
    assert!(drain(&mut a, now).len() > 1, "gaps retransmitted");
    assert!(events(&mut a).is_empty());
    // One octet in two claimed: far more pieces than the segments sent. No receiver of our
    // segments reports that; the export is cancelled rather than hold an interval per claim.
    let octets: Vec<(u64, u64)> = (0..200).map(|i| (2 * i, 1)).collect();
    a.handle_datagram(report(sid, 6, cp.checkpoint_serial, 0, 4000, &octets), now);
    let out = drain(&mut a, now);
    assert_eq!(out[0].body, SegmentBody::ReportAck { report_serial: 6 });
    assert_eq!(
        out[1].body,
        SegmentBody::CancelFromSender(CancelReason::SystemCancelled)
    );
    assert_eq!(
        events(&mut a),
        vec![Event::ExportCancelled {
            session: sid,
            reason: CancelReason::SystemCancelled,
            by_peer: false
        }]
    );
}

/// Retransmits the data of the block's second segment, which a report with serial
/// `report_serial` claims missing, and returns what goes out after the report-ack.
fn resend_second_segment(report_serial: u64) -> (Vec<Bytes>, (u64, u64)) {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(4000), 4000, now).unwrap();
    let segs = drain(&mut a, now);
    let cp = data(segs.last().unwrap()).checkpoint.unwrap();
    let d = data(&segs[1]);
    let gap = (d.offset, d.offset + d.data.len() as u64);
    let claims = [(0, gap.0), (gap.1, 4000 - gap.1)];
    a.handle_datagram(
        report(sid, report_serial, cp.checkpoint_serial, 0, 4000, &claims),
        now,
    );
    let out = drain_raw(&mut a, now);
    (out[1..].to_vec(), gap)
}

#[test]
fn a_plain_segment_goes_again_as_one_checkpoint_or_two_segments_for_long_serials() {
    // Plain red segments leave room for two serials of up to 5 octets: with a report serial
    // of 32 bits (ION's), the data of any one of them goes again in one checkpoint.
    let (out, gap) = resend_second_segment(u64::from(u32::MAX));
    assert_eq!(out.len(), 1);
    assert!(out[0].len() <= 256, "{} octets", out[0].len());
    let seg = Segment::decode(&out[0]).unwrap();
    let d = data(&seg);
    assert_eq!((d.offset, d.offset + d.data.len() as u64), gap);
    assert_eq!(d.checkpoint.unwrap().report_serial, u64::from(u32::MAX));
    // A 64-bit report serial (HDTN's) takes 10 octets: the gap goes in two segments, the
    // checkpoint last, each within the segment size, together exactly the gap.
    let (out, gap) = resend_second_segment(u64::MAX);
    assert_eq!(out.len(), 2);
    let segs: Vec<Segment> = out
        .iter()
        .map(|b| {
            assert!(b.len() <= 256, "{} octets", b.len());
            Segment::decode(b).unwrap()
        })
        .collect();
    let (first, last) = (data(&segs[0]), data(&segs[1]));
    assert_eq!(first.kind, DataKind::Red);
    assert!(last.kind.is_checkpoint());
    assert_eq!(last.checkpoint.unwrap().report_serial, u64::MAX);
    assert_eq!(first.offset, gap.0);
    assert_eq!(first.offset + first.data.len() as u64, last.offset);
    assert_eq!(last.offset + last.data.len() as u64, gap.1);
}

#[test]
fn checkpoint_retransmission_limit_cancels_the_export() {
    let mut now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(1000), 1000, now).unwrap();
    let first = drain(&mut a, now);
    let cp = data(first.last().unwrap()).checkpoint.unwrap();
    let mut resent = 0;
    for _ in 0..30 {
        now = a.poll_timeout().expect("a checkpoint timer runs");
        a.handle_timeout(now);
        for s in drain(&mut a, now) {
            match s.body {
                SegmentBody::Data(d) => {
                    assert_eq!(d.checkpoint.unwrap(), cp, "same checkpoint serial");
                    resent += 1;
                }
                SegmentBody::CancelFromSender(r) => {
                    assert_eq!(r, CancelReason::RetransmissionLimitExceeded)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if a.open_sessions() == 0 {
            break;
        }
    }
    assert_eq!(resent, 3);
    let ev = events(&mut a);
    assert_eq!(
        ev,
        vec![Event::ExportCancelled {
            session: sid,
            reason: CancelReason::RetransmissionLimitExceeded,
            by_peer: false
        }]
    );
    assert_eq!(
        a.open_sessions(),
        0,
        "the cancel is given up on after its own limit"
    );
    assert_eq!(a.session_timers(), 0);
}

/// Feeds every segment of a block from a sender into a receiver, in a chosen order.
fn segments_of(n: usize, red: usize) -> (Engine, SessionId, Vec<Bytes>) {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 9, block(n), red, now).unwrap();
    let raw = drain_raw(&mut a, now);
    (a, sid, raw)
}

#[test]
fn checkpoint_before_the_data_it_covers() {
    let now = t0();
    let (mut a, sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    let (last, rest) = raw.split_last().unwrap();
    b.handle_datagram(last.clone(), now);
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1);
    let SegmentBody::Report(r) = &out[0].body else {
        panic!("expected report")
    };
    assert_eq!((r.lower_bound, r.upper_bound), (0, 1000));
    let last_off = data(&Segment::decode(last).unwrap()).offset;
    assert_eq!(
        r.claims,
        vec![Claim {
            offset: last_off,
            length: 1000 - last_off
        }]
    );
    assert!(events(&mut b).is_empty());
    for s in rest.iter().rev() {
        b.handle_datagram(s.clone(), now);
        b.handle_datagram(s.clone(), now); // duplicates
    }
    let ev = events(&mut b);
    assert_eq!(ev.len(), 1);
    match &ev[0] {
        Event::BlockReceived {
            session,
            red,
            client_service_id,
        } => {
            assert_eq!(*session, sid);
            assert_eq!(*client_service_id, 9);
            assert_eq!(*red, block(1000));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The red part was completed by segments that are not checkpoints: no checkpoint is left
    // to answer, so the receiver reports asynchronously (checkpoint serial 0, §3.2.2), once,
    // over the whole red part.
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1, "{out:?}");
    let SegmentBody::Report(done) = &out[0].body else {
        panic!("expected the asynchronous report, got {:?}", out[0])
    };
    assert_eq!(done.checkpoint_serial, 0);
    assert_ne!(done.report_serial, r.report_serial);
    assert_eq!((done.lower_bound, done.upper_bound), (0, 1000));
    assert_eq!(
        done.claims,
        vec![Claim {
            offset: 0,
            length: 1000
        }]
    );
    assert_eq!(b.stats().asynchronous_reports_sent, 1);
    // The sender: the first report asks for the rest again; the asynchronous one, arriving
    // before that retransmission left, completes the block instead.
    a.handle_datagram(control_segment(sid, SegmentBody::Report(r.clone())), now);
    a.handle_datagram(control_segment(sid, SegmentBody::Report(done.clone())), now);
    assert!(events(&mut a)
        .iter()
        .any(|e| matches!(e, Event::TransmissionCompleted { session } if *session == sid)));
    let acks = drain_raw(&mut a, now);
    for s in &acks {
        let seg = Segment::decode(s).unwrap();
        assert!(
            matches!(seg.body, SegmentBody::ReportAck { .. }),
            "the sender sent {seg:?} after its block was acknowledged"
        );
    }
    assert_eq!(acks.len(), 2);
    // Both reports acknowledged: the receiver closes the session.
    for s in acks {
        b.handle_datagram(s, now);
    }
    assert_eq!(b.open_sessions(), 0);
    assert_eq!(b.session_timers(), 0);
    assert_eq!(a.open_sessions(), 0);
}

/// A red part completed in order by its checkpoint is answered by that checkpoint's report
/// alone: no asynchronous report.
#[test]
fn no_asynchronous_report_when_a_checkpoint_completes_the_red_part() {
    let now = t0();
    let (_a, _sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1);
    let SegmentBody::Report(r) = &out[0].body else {
        panic!("expected report")
    };
    assert_ne!(r.checkpoint_serial, 0);
    assert_eq!(b.stats().asynchronous_reports_sent, 0);
}

/// Feeds `b` a block's last segment (its checkpoint) first, then the rest, which completes
/// the red part with segments that are not checkpoints; checks the checkpoint's report and
/// the delivery.
fn checkpoint_then_the_data_before_it(b: &mut Engine, raw: &[Bytes], now: Instant) {
    let (last, rest) = raw.split_last().unwrap();
    b.handle_datagram(last.clone(), now);
    assert_eq!(drain(b, now).len(), 1, "the checkpoint's report");
    for s in rest {
        b.handle_datagram(s.clone(), now);
    }
    assert!(events(b)
        .iter()
        .any(|e| matches!(e, Event::BlockReceived { .. })));
}

/// A span set not to send asynchronous reports leaves the news to the sender's next
/// checkpoint.
#[test]
fn asynchronous_reports_can_be_switched_off_per_span() {
    let now = t0();
    let (_a, _sid, raw) = segments_of(1000, 1000);
    let mut b = Engine::new(B, EngineConfig::default());
    b.add_span(
        A,
        SpanConfig {
            asynchronous_reports: false,
            ..span()
        },
    );
    checkpoint_then_the_data_before_it(&mut b, &raw, now);
    assert!(drain(&mut b, now).is_empty());
    assert_eq!(b.stats().asynchronous_reports_sent, 0);
}

/// With the custody handshake, the asynchronous report (like every report acknowledging
/// the whole red part) waits until the client has taken the block.
#[test]
fn the_asynchronous_report_waits_for_the_client_to_take_the_block() {
    let now = t0();
    let (_a, sid, raw) = segments_of(1000, 1000);
    let mut b = b_with(EngineConfig {
        seed: B,
        confirm_red_parts: true,
        ..EngineConfig::default()
    });
    checkpoint_then_the_data_before_it(&mut b, &raw, now);
    assert!(
        drain(&mut b, now).is_empty(),
        "reported before the client took it"
    );
    assert!(b.accept_block(sid, now));
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0].body, SegmentBody::Report(r) if r.checkpoint_serial == 0
        && r.claims == vec![Claim { offset: 0, length: 1000 }])
    );
}

#[test]
fn report_split_across_several_segments() {
    let now = t0();
    let (_a, sid, raw) = segments_of(3000, 3000);
    let mut b = b_with(EngineConfig {
        max_claims_per_report: 2,
        ..EngineConfig::default()
    });
    // Every other segment, then the EORP checkpoint: many separate claims.
    let n = raw.len();
    for (i, s) in raw.iter().enumerate() {
        if i % 2 == 0 || i == n - 1 {
            b.handle_datagram(s.clone(), now);
        }
    }
    let reports: Vec<ReportSegment> = drain(&mut b, now)
        .into_iter()
        .map(|s| match s.body {
            SegmentBody::Report(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(reports.len() >= 3, "{} reports", reports.len());
    assert_eq!(reports[0].lower_bound, 0);
    assert_eq!(reports.last().unwrap().upper_bound, 3000);
    for w in reports.windows(2) {
        assert_eq!(w[0].upper_bound, w[1].lower_bound, "scopes are contiguous");
        assert_ne!(w[0].report_serial, w[1].report_serial);
    }
    let total: usize = reports.iter().map(|r| r.claims.len()).sum();
    assert!(reports.iter().all(|r| r.claims.len() <= 2));
    // Even-numbered segments are separate claims (the EORP one merges with its neighbour).
    assert_eq!(total, n.div_ceil(2));
    let _ = sid;
}

#[test]
fn segments_for_a_closed_session_do_not_reopen_it() {
    let now = t0();
    let (mut a, sid, raw) = segments_of(800, 800);
    let mut b = engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    let rep = drain_raw(&mut b, now);
    a.handle_datagram(rep[0].clone(), now);
    let ra = drain_raw(&mut a, now);
    b.handle_datagram(ra[0].clone(), now);
    assert_eq!(b.open_sessions(), 0);
    assert_eq!(a.open_sessions(), 0);
    events(&mut b);
    // A late data segment: dropped. A late checkpoint: a full report again.
    b.handle_datagram(raw[0].clone(), now);
    assert!(drain(&mut b, now).is_empty());
    b.handle_datagram(raw.last().unwrap().clone(), now);
    let out = drain(&mut b, now);
    let SegmentBody::Report(r) = &out[0].body else {
        panic!("expected report")
    };
    assert_eq!(
        r.claims,
        vec![Claim {
            offset: 0,
            length: 800
        }]
    );
    assert_eq!(b.open_sessions(), 0);
    assert!(events(&mut b).is_empty(), "no second delivery");
    // The late report is re-acknowledged by the closed sender.
    a.handle_datagram(out[0].to_bytes(), now);
    let out = drain(&mut a, now);
    assert_eq!(
        out[0].body,
        SegmentBody::ReportAck {
            report_serial: r.report_serial
        }
    );
    assert_eq!(a.open_sessions(), 0);
    let _ = sid;
}

#[test]
fn cancel_crossing_cancel() {
    let now = t0();
    let (mut a, sid, raw) = segments_of(2000, 2000);
    let mut b = engine(B, A);
    b.handle_datagram(raw[0].clone(), now);
    a.cancel(sid, now);
    b.cancel(sid, now);
    let from_a = drain_raw(&mut a, now);
    let from_b = drain_raw(&mut b, now);
    assert_eq!(
        Segment::decode(&from_a[0]).unwrap().body,
        SegmentBody::CancelFromSender(CancelReason::UserCancelled)
    );
    assert_eq!(
        Segment::decode(&from_b[0]).unwrap().body,
        SegmentBody::CancelFromReceiver(CancelReason::UserCancelled)
    );
    a.handle_datagram(from_b[0].clone(), now);
    b.handle_datagram(from_a[0].clone(), now);
    // Each acknowledges the other's cancel and closes.
    assert_eq!(drain(&mut a, now)[0].body, SegmentBody::CancelAckToReceiver);
    assert_eq!(drain(&mut b, now)[0].body, SegmentBody::CancelAckToSender);
    assert_eq!(a.open_sessions() + b.open_sessions(), 0);
    assert_eq!(a.session_timers() + b.session_timers(), 0);
    assert_eq!(events(&mut a).len(), 1);
    assert_eq!(events(&mut b).len(), 1);
}

#[test]
fn hdtn_ping_is_answered_without_side_effects() {
    let now = t0();
    let mut b = engine(B, A);
    let sid = SessionId {
        originator: A,
        number: (1 << 62) - 1,
    };
    b.handle_datagram(
        control_segment(
            sid,
            SegmentBody::CancelFromSender(CancelReason::UserCancelled),
        ),
        now,
    );
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].session, sid);
    assert_eq!(out[0].body, SegmentBody::CancelAckToSender);
    assert!(events(&mut b).is_empty());
    assert_eq!(b.open_sessions(), 0);
    assert_eq!(b.session_timers(), 0);
}

#[test]
fn link_down_queues_segments_and_suspends_timers() {
    let now = t0();
    let mut a = engine(A, B);
    a.send_block(B, 1, block(500), 500, now).unwrap();
    a.set_link(B, false, now);
    assert!(a.poll_transmit(now).is_none());
    a.set_link(B, true, now);
    let segs = drain(&mut a, now);
    assert!(!segs.is_empty());
    let deadline = a.poll_timeout().unwrap();
    assert_eq!(deadline, now + span().round_trip_timeout());
    // Down for an hour after 100 ms: the remaining 150 ms are kept, not burned or restarted.
    let down = now + Duration::from_millis(100);
    a.set_link(B, false, down);
    assert_eq!(a.poll_timeout(), None);
    let up = down + Duration::from_secs(3600);
    a.set_link(B, true, up);
    assert_eq!(a.poll_timeout(), Some(up + Duration::from_millis(150)));
}

#[test]
fn pacing_spaces_segments_by_the_rate() {
    let now = t0();
    let mut a = engine(A, B);
    let mut sp = span();
    sp.rate_limit = Some(10_000);
    sp.rate_burst = 0;
    a.add_span(B, sp);
    a.send_block(B, 1, block(2000), 0, now).unwrap();
    let (_, first) = a.poll_transmit(now).unwrap();
    assert!(a.poll_transmit(now).is_none());
    let next = a.poll_timeout().unwrap();
    let expect = Duration::from_secs_f64(first.len() as f64 / 10_000.0);
    assert!(next.duration_since(now).abs_diff(expect) < Duration::from_micros(10));
    assert!(a.poll_transmit(next).is_some());
}

#[test]
fn export_window_and_queue_limits() {
    let now = t0();
    let mut a = engine(A, B);
    let mut sp = span();
    sp.max_export_sessions = 1;
    sp.max_queued_blocks = 1;
    a.add_span(B, sp);
    a.send_block(B, 1, block(10), 10, now).unwrap();
    a.send_block(B, 1, block(10), 10, now).unwrap();
    assert_eq!(
        a.send_block(B, 1, block(10), 10, now),
        Err(SendError::QueueFull)
    );
    assert_eq!(a.stats().queued_blocks, 1);
    assert_eq!(
        a.send_block(9, 1, block(10), 10, now),
        Err(SendError::UnknownSpan(9))
    );
    assert_eq!(
        a.send_block(B, 1, Bytes::new(), 0, now),
        Err(SendError::EmptyBlock)
    );
}

#[test]
fn import_limits_cancel_with_a_reason() {
    let now = t0();
    let mut b = b_with(EngineConfig {
        max_import_sessions_per_peer: 1,
        max_block_size: 1000,
        ..EngineConfig::default()
    });
    let (_a1, _s1, raw1) = segments_of(500, 500);
    let mut a2 = Engine::new(
        A,
        EngineConfig {
            seed: 99,
            ..EngineConfig::default()
        },
    );
    a2.add_span(B, span());
    let s2 = a2.send_block(B, 1, block(500), 500, now).unwrap();
    let raw2 = drain_raw(&mut a2, now);
    b.handle_datagram(raw1[0].clone(), now);
    b.handle_datagram(raw2[0].clone(), now);
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].session, s2);
    assert_eq!(
        out[0].body,
        SegmentBody::CancelFromReceiver(CancelReason::SystemCancelled)
    );
    // A data segment beyond the maximum block size cancels that import.
    let big = red_octet(
        SessionId {
            originator: A,
            number: 4242,
        },
        2000,
        None,
    );
    let mut c = b_with(EngineConfig {
        max_block_size: 1000,
        ..EngineConfig::default()
    });
    c.handle_datagram(big, now);
    assert_eq!(
        drain(&mut c, now)[0].body,
        SegmentBody::CancelFromReceiver(CancelReason::SystemCancelled)
    );
}

#[test]
fn a_block_for_a_client_service_we_do_not_serve_is_cancelled_at_its_first_segment() {
    let now = t0();
    let serving = |services: Vec<u64>| {
        b_with(EngineConfig {
            client_services: Some(services),
            ..EngineConfig::default()
        })
    };
    // segments_of sends to client service 9: a receiver serving only 1 refuses the session
    // at its first segment, with UNREACH, and holds none of its data.
    let (mut a, sid, raw) = segments_of(1000, 1000);
    assert!(raw.len() > 2, "the block spans several segments");
    let mut b = serving(vec![1]);
    b.handle_datagram(raw[0].clone(), now);
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].session, sid);
    assert_eq!(
        out[0].body,
        SegmentBody::CancelFromReceiver(CancelReason::UnreachableClient)
    );
    assert_eq!(b.stats().import_sessions_opened, 0);
    assert_eq!(b.reassembly, 0);
    // Its other segments reopen nothing: plain ones are dropped, the checkpoint gets the
    // cancel again (the first one may have been lost).
    for r in &raw[1..] {
        b.handle_datagram(r.clone(), now);
    }
    let out = drain(&mut b, now);
    assert_eq!(out.len(), 1, "one answer, to the checkpoint: {out:?}");
    assert_eq!(
        out[0].body,
        SegmentBody::CancelFromReceiver(CancelReason::UnreachableClient)
    );
    assert!(events(&mut b).is_empty(), "nothing delivered");
    assert_eq!(b.stats().import_sessions_opened, 0);
    // The sender learns why, acknowledges, and ends the session.
    a.handle_datagram(out[0].to_bytes(), now);
    let acks = drain(&mut a, now);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].body, SegmentBody::CancelAckToReceiver);
    assert!(events(&mut a).iter().any(|e| matches!(
        e,
        Event::ExportCancelled {
            session,
            reason: CancelReason::UnreachableClient,
            by_peer: true,
        } if *session == sid
    )));
    // A green block for it is refused as well; one for a service we serve is delivered.
    let (_a, _sid, green) = segments_of(300, 0);
    let mut b = serving(vec![1]);
    b.handle_datagram(green[0].clone(), now);
    assert_eq!(
        drain(&mut b, now)[0].body,
        SegmentBody::CancelFromReceiver(CancelReason::UnreachableClient)
    );
    assert!(events(&mut b).is_empty());
    let mut b = serving(vec![1, 9]);
    for r in &raw {
        b.handle_datagram(r.clone(), now);
    }
    assert!(events(&mut b).iter().any(|e| matches!(
        e,
        Event::BlockReceived {
            client_service_id: 9,
            ..
        }
    )));
}

#[test]
fn unknown_peer_data_is_dropped_by_default() {
    let now = t0();
    let (_a, _sid, raw) = segments_of(300, 300);
    let mut b = Engine::new(B, EngineConfig::default());
    b.handle_datagram(raw[0].clone(), now);
    assert!(b.poll_transmit(now).is_none());
    assert_eq!(b.stats().segments_dropped, 1);
    let mut c = Engine::new(
        B,
        EngineConfig {
            accept_unknown_peers: true,
            ..EngineConfig::default()
        },
    );
    for s in &raw {
        c.handle_datagram(s.clone(), now);
    }
    assert!(matches!(events(&mut c)[0], Event::BlockReceived { .. }));
}

#[test]
fn spans_made_for_unknown_peers_are_bounded() {
    let now = t0();
    let from = |id: EngineId| {
        let mut a = engine(id, B);
        a.send_block(B, 1, block(300), 300, now).unwrap();
        drain_raw(&mut a, now)
    };
    let mut b = Engine::new(
        B,
        EngineConfig {
            accept_unknown_peers: true,
            max_unknown_peers: 2,
            ..EngineConfig::default()
        },
    );
    let delivered = |b: &mut Engine, raw: &[Bytes]| {
        for r in raw {
            b.handle_datagram(r.clone(), now);
        }
        events(b)
            .iter()
            .any(|e| matches!(e, Event::BlockReceived { .. }))
    };
    assert!(delivered(&mut b, &from(10)));
    assert!(delivered(&mut b, &from(11)));
    // A third unknown engine finds no room: its data is dropped and counted, unanswered.
    let third = from(12);
    drain(&mut b, now);
    let dropped = b.stats().segments_dropped;
    assert!(!delivered(&mut b, &third));
    assert_eq!(b.stats().segments_dropped, dropped + third.len() as u64);
    assert!(drain(&mut b, now).is_empty());
    // Configuring one of the learned peers as a span frees its place.
    b.add_span(10, span());
    assert!(delivered(&mut b, &third));
}

#[test]
fn miscolored_green_below_red_cancels() {
    let now = t0();
    let (_a, sid, raw) = segments_of(1000, 600);
    let mut b = engine(B, A);
    b.handle_datagram(raw[1].clone(), now); // red data, then green below it
    let green = raw
        .iter()
        .map(|r| Segment::decode(r).unwrap())
        .find(|s| !data(s).kind.is_red())
        .unwrap();
    let mut bad = green.clone();
    if let SegmentBody::Data(d) = &mut bad.body {
        d.offset = 10;
    }
    b.handle_datagram(bad.to_bytes(), now);
    assert_eq!(
        events(&mut b),
        vec![Event::ImportCancelled {
            session: sid,
            reason: CancelReason::Miscolored,
            by_peer: false
        }]
    );
}

#[test]
fn large_block_end_to_end() {
    // 64 MiB with 1400-octet segments, no loss: O(log n) per segment (copied into one buffer).
    let now = t0();
    let size = 64 << 20;
    let mut a = Engine::new(A, EngineConfig::default());
    let mut b = Engine::new(B, EngineConfig::default());
    let sp = SpanConfig {
        max_segment_size: 1400,
        ..span()
    };
    a.add_span(B, sp.clone());
    b.add_span(A, sp);
    let blk = Bytes::from(vec![0xa5u8; size]);
    let started = std::time::Instant::now();
    let sid = a.send_block(B, 1, blk.clone(), size, now).unwrap();
    let mut n = 0;
    while let Some((_, d)) = a.poll_transmit(now) {
        b.handle_datagram(d, now);
        n += 1;
    }
    assert!(n > 48_000);
    for d in drain_raw(&mut b, now) {
        a.handle_datagram(d, now);
    }
    for d in drain_raw(&mut a, now) {
        b.handle_datagram(d, now);
    }
    match events(&mut b).pop() {
        Some(Event::BlockReceived { red, .. }) => assert!(red == blk),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
    assert_eq!(a.open_sessions() + b.open_sessions(), 0);
    let elapsed = started.elapsed();
    // Machine reference in the same run: one 64 MiB copy.
    let copy_started = std::time::Instant::now();
    let copy = blk.to_vec();
    let copy_elapsed = copy_started.elapsed();
    assert_eq!(copy.len(), size);
    eprintln!("64 MiB block, {n} segments, end to end in {elapsed:?} (one 64 MiB memcpy: {copy_elapsed:?})");
}

#[test]
fn reports_are_retransmitted_until_acknowledged() {
    let mut now = t0();
    let (_a, sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    // Lose the first segment: the report has a gap, so the block is not delivered yet.
    for s in &raw[1..] {
        b.handle_datagram(s.clone(), now);
    }
    let first = drain(&mut b, now);
    let SegmentBody::Report(r) = &first[0].body else {
        panic!("expected report")
    };
    let sent_at = now;
    now = b.poll_timeout().unwrap();
    assert_eq!(now, sent_at + span().round_trip_timeout());
    b.handle_timeout(now);
    let again = drain(&mut b, now);
    assert_eq!(
        again[0].body, first[0].body,
        "same report, same serial (§6.8)"
    );
    assert_eq!(b.stats().reports_retransmitted, 1);
    b.handle_datagram(
        control_segment(
            sid,
            SegmentBody::ReportAck {
                report_serial: r.report_serial,
            },
        ),
        now,
    );
    // Acknowledged: only the inactivity timer is left.
    assert_eq!(b.session_timers(), 1);
    // The retransmission limit without an ack cancels an undelivered import (RLEXC).
    let (_a2, sid2, raw2) = segments_of(600, 600);
    let mut c = engine(B, A);
    for s in &raw2[1..] {
        c.handle_datagram(s.clone(), now);
    }
    let mut sent = 0;
    let mut ev = Vec::new();
    for _ in 0..40 {
        for s in drain(&mut c, now) {
            if matches!(s.body, SegmentBody::Report(_)) {
                sent += 1;
            }
        }
        ev = events(&mut c);
        if !ev.is_empty() {
            break;
        }
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    assert_eq!(
        ev,
        vec![Event::ImportCancelled {
            session: sid2,
            reason: CancelReason::RetransmissionLimitExceeded,
            by_peer: false
        }]
    );
    assert_eq!(sent, 1 + span().max_report_retransmissions as usize);
}

#[test]
fn inactive_import_is_cancelled_and_freed() {
    let now = t0();
    let (_a, sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    b.handle_datagram(raw[0].clone(), now);
    assert!(drain(&mut b, now).is_empty());
    let t = inactivity_cancels(&mut b, sid, now);
    let out = drain(&mut b, t);
    assert_eq!(
        out[0].body,
        SegmentBody::CancelFromReceiver(CancelReason::SystemCancelled)
    );
    b.handle_datagram(control_segment(sid, SegmentBody::CancelAckToReceiver), t);
    assert_eq!(b.open_sessions(), 0);
    assert_eq!(b.session_timers(), 0);
    assert_eq!(b.reassembly, 0);
}

/// One red octet of session `sid` at `offset`, a checkpoint with `serial` if given.
fn red_octet(sid: SessionId, offset: u64, checkpoint: Option<u64>) -> Bytes {
    control_segment(
        sid,
        SegmentBody::Data(DataSegment {
            kind: if checkpoint.is_some() {
                DataKind::RedCheckpoint
            } else {
                DataKind::Red
            },
            client_service_id: 1,
            offset,
            data: Bytes::from_static(b"x"),
            checkpoint: checkpoint.map(|checkpoint_serial| CheckpointInfo {
                checkpoint_serial,
                report_serial: 0,
            }),
        }),
    )
}

/// A receiver of engine A's sessions with 10 000 octets of reassembly memory.
fn receiver_with_little_memory() -> Engine {
    b_with(EngineConfig {
        max_reassembly_memory: 10_000,
        ..EngineConfig::default()
    })
}

/// Feeds `datagrams` of import `sid` to `b` until it cancels the import for lack of memory;
/// returns how many it took, once it has checked that all the memory came back.
fn datagrams_until_out_of_memory(
    b: &mut Engine,
    sid: SessionId,
    datagrams: impl IntoIterator<Item = Bytes>,
    now: Instant,
) -> usize {
    let mut sent = 0;
    for d in datagrams {
        b.handle_datagram(d, now);
        sent += 1;
        let cancelled = events(b).contains(&Event::ImportCancelled {
            session: sid,
            reason: CancelReason::SystemCancelled,
            by_peer: false,
        });
        if cancelled {
            assert_eq!(
                b.stats().reassembly_bytes,
                0,
                "all of it released on cancel"
            );
            return sent;
        }
    }
    panic!("not cancelled after {sent} datagrams");
}

#[test]
fn gaps_in_the_reception_record_count_against_reassembly_memory() {
    let now = t0();
    let sid = SessionId {
        originator: A,
        number: 77,
    };
    let mut b = receiver_with_little_memory();
    // One octet every other octet: each leaves a gap, so each is an interval of its own. The
    // data alone (up to the furthest octet) would reach the limit only at the 5000th.
    let fragments = (0..5000u64).map(|i| red_octet(sid, 2 * i, None));
    let sent = datagrams_until_out_of_memory(&mut b, sid, fragments, now);
    assert!(sent < 400, "cancelled only after {sent} fragments");
}

#[test]
fn unacknowledged_reports_count_against_reassembly_memory() {
    let now = t0();
    let sid = SessionId {
        originator: A,
        number: 78,
    };
    let mut b = receiver_with_little_memory();
    // An acknowledged report is released at once.
    b.handle_datagram(red_octet(sid, 0, Some(1)), now);
    let held = b.stats().reassembly_bytes;
    let out = drain(&mut b, now);
    let SegmentBody::Report(r) = &out[0].body else {
        panic!("expected a report, got {out:?}")
    };
    let ack = SegmentBody::ReportAck {
        report_serial: r.report_serial,
    };
    b.handle_datagram(control_segment(sid, ack), now);
    assert!(b.stats().reassembly_bytes < held);
    // Checkpoint after checkpoint, each with a new serial and its report never acknowledged,
    // on one octet of data: the reports held are what reaches the limit.
    let checkpoints = (2..10_000u64).map(|serial| red_octet(sid, 0, Some(serial)));
    let sent = datagrams_until_out_of_memory(&mut b, sid, checkpoints, now);
    assert!(sent < 200, "cancelled only after {sent} checkpoints");
}

#[test]
fn reassembly_memory_limit_cancels_the_import() {
    let now = t0();
    let (_a, sid, raw) = segments_of(3000, 3000);
    let mut b = b_with(EngineConfig {
        max_reassembly_memory: 1000,
        ..EngineConfig::default()
    });
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    assert_eq!(
        events(&mut b),
        vec![Event::ImportCancelled {
            session: sid,
            reason: CancelReason::SystemCancelled,
            by_peer: false
        }]
    );
    assert_eq!(b.reassembly, 0, "memory released on cancel");
}

/// A sender with a discretionary checkpoint every 2 segments, and the segments of the 2000-octet
/// red block it sent at `now`.
fn discretionary_sender(now: Instant) -> (Engine, SessionId, Vec<Bytes>) {
    let mut a = engine(A, B);
    let mut sp = span();
    sp.checkpoint_every = 2;
    a.add_span(B, sp);
    let sid = a.send_block(B, 1, block(2000), 2000, now).unwrap();
    let raw = drain_raw(&mut a, now);
    (a, sid, raw)
}

#[test]
fn discretionary_checkpoint_reports_scope_and_serials() {
    let now = t0();
    let (mut a, sid, raw) = discretionary_sender(now);
    let mut b = engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    let reports: Vec<ReportSegment> = drain(&mut b, now)
        .into_iter()
        .map(|s| match s.body {
            SegmentBody::Report(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(reports.len() >= 2);
    // Primary reports tile the block: each starts where the previous one ended (§6.8).
    assert_eq!(reports[0].lower_bound, 0);
    for w in reports.windows(2) {
        assert_eq!(w[0].upper_bound, w[1].lower_bound);
        assert_eq!(w[1].report_serial, w[0].report_serial + 1);
    }
    assert_eq!(reports.last().unwrap().upper_bound, 2000);
    for r in &reports {
        a.handle_datagram(control_segment(sid, SegmentBody::Report(r.clone())), now);
    }
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
    assert_eq!(a.stats().data_segments_retransmitted, 0);
}

#[test]
fn control_queue_overflow_does_not_stall_a_session() {
    let mut now = t0();
    let mut b = b_with(EngineConfig {
        max_control_queue: 1,
        ..EngineConfig::default()
    });
    let (_a1, s1, raw1) = segments_of(500, 500);
    let mut a2 = Engine::new(
        A,
        EngineConfig {
            seed: 5,
            ..EngineConfig::default()
        },
    );
    a2.add_span(B, span());
    let s2 = a2.send_block(B, 1, block(500), 500, now).unwrap();
    let raw2 = drain_raw(&mut a2, now);
    b.handle_datagram(raw1[0].clone(), now);
    b.handle_datagram(raw2[0].clone(), now);
    assert_eq!(b.open_sessions(), 2, "{}", b.describe_sessions());
    b.set_link(A, false, now);
    b.cancel(s1, now);
    b.cancel(s2, now); // overflows the queue: the first cancel is dropped
    assert_eq!(b.stats().segments_dropped, 1);
    b.set_link(A, true, now);
    let mut cancels = HashMap::new();
    for _ in 0..100 {
        for s in drain(&mut b, now) {
            *cancels.entry(s.session).or_insert(0) += 1;
        }
        match b.poll_timeout() {
            Some(t) if b.session_timers() > 0 => {
                now = t;
                b.handle_timeout(now);
            }
            _ => break,
        }
    }
    // The dropped cancel's timer ran as if it had been sent and lost: the session ended
    // (retransmitted or given up on at its limit) instead of waiting forever.
    assert!(cancels.get(&s2).copied().unwrap_or(0) >= 1);
    assert_eq!(b.open_sessions(), 0);
    assert_eq!(b.session_timers(), 0);
}

#[test]
fn reconfigured_span_applies_to_new_timers_only() {
    let now = t0();
    let mut a = engine(A, B);
    a.send_block(B, 1, block(500), 500, now).unwrap();
    assert!(!drain(&mut a, now).is_empty());
    let first = now + span().round_trip_timeout();
    assert_eq!(a.poll_timeout(), Some(first));
    // Longer light times: the checkpoint timer already running keeps its deadline...
    let mut far = span();
    far.owlt_outbound = Duration::from_secs(1);
    far.owlt_inbound = Duration::from_secs(2);
    a.add_span(B, far.clone());
    assert_eq!(a.poll_timeout(), Some(first));
    // ...and the retransmitted checkpoint's timer uses the new ones.
    a.handle_timeout(first);
    let resent = drain(&mut a, first);
    assert_eq!(resent.len(), 1);
    assert!(data(&resent[0]).checkpoint.is_some());
    assert_eq!(a.poll_timeout(), Some(first + far.round_trip_timeout()));
    assert_eq!(a.open_sessions(), 1, "the session survived the change");
}

#[test]
fn reconfigured_rate_applies_to_pacing_at_once() {
    let now = t0();
    let mut a = engine(A, B);
    let paced = |rate| SpanConfig {
        rate_limit: rate,
        rate_burst: 0,
        ..span()
    };
    a.add_span(B, paced(Some(10_000)));
    a.send_block(B, 1, block(2000), 0, now).unwrap();
    let (_, seg) = a.poll_transmit(now).unwrap();
    let len = seg.len() as f64;
    assert!(a.poll_transmit(now).is_none());
    let owed = |rate: f64| Duration::from_secs_f64(len / rate);
    let close = |t: Option<Instant>, want: Instant| {
        t.unwrap().max(want) - t.unwrap().min(want) < Duration::from_micros(10)
    };
    assert!(close(a.poll_timeout(), now + owed(10_000.0)));
    // Ten times slower: the time owed for the segment already sent grows tenfold.
    a.add_span(B, paced(Some(1_000)));
    assert!(close(a.poll_timeout(), now + owed(1_000.0)));
    // A hundred times faster: due almost at once.
    a.add_span(B, paced(Some(100_000)));
    assert!(close(a.poll_timeout(), now + owed(100_000.0)));
    // No rate: pacing is lifted at once, the rest of the block goes now.
    a.add_span(B, paced(None));
    let rest = drain(&mut a, now);
    assert!(rest.len() >= 7, "{} segments", rest.len());
    assert_eq!(data(rest.last().unwrap()).kind, DataKind::GreenEob);
    assert_eq!(a.spans[&B].pace_at, None, "no pacing deadline left");
    // A rate again: pacing starts afresh from the next segment.
    a.add_span(B, paced(Some(10_000)));
    a.send_block(B, 1, block(2000), 0, now).unwrap();
    assert!(a.poll_transmit(now).is_some());
    assert!(a.poll_transmit(now).is_none());
    assert!(a.poll_timeout().is_some_and(|t| t > now));
}

#[test]
fn wider_export_window_starts_queued_blocks() {
    let now = t0();
    let mut a = engine(A, B);
    let window = |n| SpanConfig {
        max_export_sessions: n,
        ..span()
    };
    a.add_span(B, window(1));
    for _ in 0..3 {
        a.send_block(B, 1, block(100), 100, now).unwrap();
    }
    assert_eq!(
        (a.stats().open_export_sessions, a.stats().queued_blocks),
        (1, 2)
    );
    a.add_span(B, window(2));
    assert_eq!(
        (a.stats().open_export_sessions, a.stats().queued_blocks),
        (2, 1)
    );
    a.add_span(B, window(8));
    assert_eq!(
        (a.stats().open_export_sessions, a.stats().queued_blocks),
        (3, 0)
    );
    // Narrower again: open sessions go on, nothing new starts until they fit.
    a.add_span(B, window(1));
    a.send_block(B, 1, block(100), 100, now).unwrap();
    assert_eq!(
        (a.stats().open_export_sessions, a.stats().queued_blocks),
        (3, 1)
    );
}

#[test]
fn cancel_exports_cancels_one_peers_queued_and_open_sessions() {
    const C: EngineId = 3;
    let now = t0();
    let mut a = engine(A, B);
    a.add_span(
        B,
        SpanConfig {
            max_export_sessions: 1,
            ..span()
        },
    );
    a.add_span(C, span());
    assert!(a.export_sessions(9).is_empty(), "no span, no sessions");
    let open = a.send_block(B, 1, block(600), 600, now).unwrap();
    let queued1 = a.send_block(B, 1, block(600), 600, now).unwrap();
    let queued2 = a.send_block(B, 1, block(600), 600, now).unwrap();
    let other = a.send_block(C, 1, block(600), 600, now).unwrap();
    // The open session to B sends its data; so does the one to C.
    let mut sent = Vec::new();
    while let Some(x) = a.poll_transmit(now) {
        sent.push(x);
    }
    assert!(sent.iter().any(|(p, _)| *p == B) && sent.iter().any(|(p, _)| *p == C));
    assert_eq!(a.export_sessions(B), vec![queued1, queued2, open]);
    assert_eq!(a.export_sessions(C), vec![other]);

    assert_eq!(a.cancel_exports(B, now), vec![queued1, queued2, open]);
    let cancelled = |session| Event::ExportCancelled {
        session,
        reason: CancelReason::UserCancelled,
        by_peer: false,
    };
    assert_eq!(
        events(&mut a),
        vec![cancelled(queued1), cancelled(queued2), cancelled(open)]
    );
    assert!(a.export_sessions(B).is_empty());
    assert_eq!(a.export_sessions(C), vec![other]);
    assert_eq!(a.stats().queued_blocks, 0);
    // Only the session that had sent data sends a cancel (§6.15); queued blocks never started.
    let mut out = Vec::new();
    while let Some((peer, b)) = a.poll_transmit(now) {
        out.push((peer, Segment::decode(&b).unwrap()));
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, B);
    assert_eq!(out[0].1.session, open);
    assert_eq!(
        out[0].1.body,
        SegmentBody::CancelFromSender(CancelReason::UserCancelled)
    );
    // Nothing more to cancel; the peer's acknowledgment closes the session.
    assert!(a.cancel_exports(B, now).is_empty());
    a.handle_datagram(control_segment(open, SegmentBody::CancelAckToSender), now);
    assert_eq!(a.open_sessions(), 1, "only the session to C is left");
    assert!(events(&mut a).is_empty(), "no second notice");
    // The span still works for new blocks.
    let again = a.send_block(B, 1, block(600), 600, now).unwrap();
    assert_eq!(a.export_sessions(B), vec![again]);
}

/// Receiver `b` has just cancelled import `sid` for `reason`: its event says so, and its cancel
/// segment makes sender `a` report the export cancelled by the peer.
fn receiver_cancel_reaches_sender(
    b: &mut Engine,
    a: &mut Engine,
    sid: SessionId,
    reason: CancelReason,
    now: Instant,
) {
    assert_eq!(
        events(b),
        vec![Event::ImportCancelled {
            session: sid,
            reason,
            by_peer: false
        }]
    );
    for d in drain_raw(b, now) {
        a.handle_datagram(d, now);
    }
    assert_eq!(
        events(a),
        vec![Event::ExportCancelled {
            session: sid,
            reason,
            by_peer: true
        }]
    );
}

/// The only timer of `b` is import `sid`'s inactivity timer, started at `now`: it fires and
/// cancels the import (SYS_CNCLD). Returns when it fired.
fn inactivity_cancels(b: &mut Engine, sid: SessionId, now: Instant) -> Instant {
    let t = b.poll_timeout().unwrap();
    assert_eq!(t, now + span().inactivity_timeout);
    b.handle_timeout(t);
    assert_eq!(
        events(b),
        vec![Event::ImportCancelled {
            session: sid,
            reason: CancelReason::SystemCancelled,
            by_peer: false
        }]
    );
    t
}

fn confirming_engine(id: EngineId, peer: EngineId) -> Engine {
    let mut e = Engine::new(
        id,
        EngineConfig {
            seed: id,
            confirm_red_parts: true,
            ..EngineConfig::default()
        },
    );
    e.add_span(peer, span());
    e
}

fn drain_both(e: &mut Engine, now: Instant) -> (Vec<Bytes>, Vec<Segment>) {
    let raw = drain_raw(e, now);
    let segs = raw.iter().map(|b| Segment::decode(b).unwrap()).collect();
    (raw, segs)
}

fn reports(segs: &[Segment]) -> Vec<&ReportSegment> {
    segs.iter()
        .filter_map(|s| match &s.body {
            SegmentBody::Report(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn confirmed_red_part_is_reported_only_after_acceptance() {
    let mut now = t0();
    let (mut a, sid, raw) = segments_of(1000, 1000);
    let mut b = confirming_engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    // Delivered to the client at once, but the sender hears nothing yet.
    let ev = events(&mut b);
    assert!(matches!(&ev[..], [Event::BlockReceived { session, .. }] if *session == sid));
    assert!(
        drain(&mut b, now).is_empty(),
        "report sent before acceptance"
    );
    // The sender's checkpoint timer fires and it retransmits the checkpoint: still held.
    now = a.poll_timeout().unwrap();
    a.handle_timeout(now);
    let cp_again = drain_raw(&mut a, now);
    assert_eq!(cp_again.len(), 1);
    b.handle_datagram(cp_again[0].clone(), now);
    assert!(
        drain(&mut b, now).is_empty(),
        "report sent before acceptance"
    );
    assert!(!b.refuse_block(
        SessionId {
            originator: A,
            number: 99
        },
        CancelReason::UserCancelled,
        now
    ));
    // Accepted: one full report for the held checkpoint (one serial, held once).
    assert!(b.accept_block(sid, now));
    assert!(!b.accept_block(sid, now), "accepted twice");
    let (raw_out, out) = drain_both(&mut b, now);
    let rs = reports(&out);
    assert_eq!(rs.len(), 1);
    assert_eq!(
        rs[0].claims,
        vec![Claim {
            offset: 0,
            length: 1000
        }]
    );
    for d in raw_out {
        a.handle_datagram(d, now);
    }
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
    for d in drain_raw(&mut a, now) {
        b.handle_datagram(d, now);
    }
    assert_eq!(a.open_sessions() + b.open_sessions(), 0);
    assert_eq!(b.session_timers(), 0);
}

#[test]
fn partial_reports_go_out_while_the_red_part_is_incomplete() {
    let now = t0();
    let (mut a, sid, raw) = segments_of(1000, 1000);
    let mut b = confirming_engine(B, A);
    // Lose the first segment: the EORP checkpoint is answered at once, with the gap.
    for s in &raw[1..] {
        b.handle_datagram(s.clone(), now);
    }
    let (raw_out, out) = drain_both(&mut b, now);
    let rs = reports(&out);
    assert_eq!(rs.len(), 1);
    assert_ne!(rs[0].claims[0].offset, 0, "the gap at 0 is not claimed");
    for d in raw_out {
        a.handle_datagram(d, now);
    }
    // The retransmission (ending with a checkpoint) completes the red part: held.
    for d in drain_raw(&mut a, now) {
        b.handle_datagram(d, now);
    }
    assert!(matches!(&events(&mut b)[..], [Event::BlockReceived { .. }]));
    let (_, out) = drain_both(&mut b, now);
    assert!(reports(&out).is_empty(), "full report before acceptance");
    assert!(b.accept_block(sid, now));
    let (raw_out, out) = drain_both(&mut b, now);
    let rs = reports(&out);
    assert_eq!(rs.len(), 1);
    for d in raw_out {
        a.handle_datagram(d, now);
    }
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
}

#[test]
fn refused_red_part_cancels_the_session_on_both_sides() {
    let now = t0();
    let (mut a, sid, raw) = segments_of(1000, 1000);
    let mut b = confirming_engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    assert!(matches!(&events(&mut b)[..], [Event::BlockReceived { .. }]));
    assert!(b.refuse_block(sid, CancelReason::UserCancelled, now));
    assert!(!b.accept_block(sid, now), "accepted after refusal");
    receiver_cancel_reaches_sender(&mut b, &mut a, sid, CancelReason::UserCancelled, now);
    for d in drain_raw(&mut a, now) {
        b.handle_datagram(d, now);
    }
    assert_eq!(a.open_sessions() + b.open_sessions(), 0);
    assert_eq!(a.session_timers() + b.session_timers(), 0);
}

#[test]
fn unanswered_red_part_is_cancelled_after_inactivity() {
    let now = t0();
    let (_a, sid, raw) = segments_of(1000, 1000);
    let mut b = confirming_engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    assert!(matches!(&events(&mut b)[..], [Event::BlockReceived { .. }]));
    let t = inactivity_cancels(&mut b, sid, now);
    assert!(!b.accept_block(sid, t));
}

#[test]
fn a_restarted_receiver_cancels_rather_than_let_stale_claims_complete_the_session() {
    // B answers the first transmission with a partial report, then restarts (all import state
    // lost) before the gap's retransmission arrives. The sender still counts the claims of the
    // first report; if the new B answered the retransmission's checkpoint with its own (tiny)
    // scope, the sender would complete a block that the new B never delivered.
    let now = t0();
    let (mut a, sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    for s in &raw[1..] {
        b.handle_datagram(s.clone(), now);
    }
    for d in drain_raw(&mut b, now) {
        a.handle_datagram(d, now);
    }
    let retransmission = drain_raw(&mut a, now);
    assert!(!retransmission.is_empty());
    // Restarted: no memory of the session, a new seed (new report serials).
    let mut b2 = b_with(EngineConfig {
        seed: 777,
        ..EngineConfig::default()
    });
    for d in retransmission {
        b2.handle_datagram(d, now);
    }
    receiver_cancel_reaches_sender(&mut b2, &mut a, sid, CancelReason::SystemCancelled, now);
}

/// A span with adaptive timers: 10 ms each way, a configured margin of 500 ms (the ceiling
/// 520 ms), a floor of 21 ms.
fn adaptive_span() -> SpanConfig {
    SpanConfig {
        max_segment_size: 256,
        owlt_outbound: Duration::from_millis(10),
        owlt_inbound: Duration::from_millis(10),
        timer_margin: Duration::from_millis(500),
        adaptive_timers: true,
        min_timer_margin: Duration::from_millis(1),
        max_checkpoint_retransmissions: 10,
        ..SpanConfig::default()
    }
}

fn adaptive_pair() -> (Engine, Engine) {
    let (mut a, mut b) = (engine(A, B), engine(B, A));
    a.add_span(B, adaptive_span());
    b.add_span(A, adaptive_span());
    (a, b)
}

/// Sends one 500-octet red block from `a` at `at` and completes it over a 10 ms channel with
/// no loss; returns when the report-ack reached `b`.
fn exchange_once(a: &mut Engine, b: &mut Engine, at: Instant) -> Instant {
    let ms = Duration::from_millis;
    a.send_block(B, 1, block(500), 500, at).unwrap();
    for d in drain_raw(a, at) {
        b.handle_datagram(d, at + ms(10));
    }
    for r in drain_raw(b, at + ms(10)) {
        a.handle_datagram(r, at + ms(20));
    }
    for ra in drain_raw(a, at + ms(20)) {
        b.handle_datagram(ra, at + ms(30));
    }
    at + ms(30)
}

#[test]
fn adaptive_timer_learns_the_round_trip_and_backs_off() {
    let ms = Duration::from_millis;
    let (mut a, mut b) = adaptive_pair();
    let t0 = t0();
    assert_eq!(a.round_trip_estimate(B), None);
    let t1 = exchange_once(&mut a, &mut b, t0);
    // Checkpoint at t0, its report at t0 + 20 ms; report at t0 + 10 ms, its ack at + 30 ms.
    assert_eq!(a.round_trip_estimate(B), Some(ms(20)));
    assert_eq!(b.round_trip_estimate(A), Some(ms(20)));
    assert_eq!(a.open_sessions() + b.open_sessions(), 0);

    // The next checkpoint times out after srtt + 4·rttvar = 20 + 4·10 = 60 ms, not 520 ms.
    a.send_block(B, 1, block(500), 500, t1).unwrap();
    assert!(!drain(&mut a, t1).is_empty());
    let mut fired = t1;
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let at = a.poll_timeout().expect("the checkpoint timer runs");
        gaps.push(at - fired);
        a.handle_timeout(at);
        let resent = drain(&mut a, at);
        assert_eq!(resent.len(), 1, "the checkpoint alone is retransmitted");
        assert!(data(&resent[0]).checkpoint.is_some());
        fired = at;
    }
    // Each retransmission doubles the timeout, up to the configured 520 ms.
    assert_eq!(gaps, [ms(60), ms(120), ms(240), ms(480), ms(520), ms(520)]);
}

#[test]
fn a_timer_set_on_a_smaller_estimate_waits_out_the_larger_one() {
    let ms = Duration::from_millis;
    let (mut a, mut b) = adaptive_pair();
    let t1 = exchange_once(&mut a, &mut b, t0());
    // srtt 20 ms, rttvar 10 ms: a checkpoint sent now times out after 60 ms.
    a.send_block(B, 1, block(500), 500, t1).unwrap();
    let lost = drain_raw(&mut a, t1);
    assert!(!lost.is_empty());
    assert_eq!(a.poll_timeout(), Some(t1 + ms(60)));
    // A second block's round trip takes 50 ms (a queue built up): srtt (7·20 + 50)/8 =
    // 23.75 ms, rttvar (3·10 + 30)/4 = 15 ms, a timeout of 83.75 ms.
    a.send_block(B, 1, block(500), 500, t1).unwrap();
    for d in drain_raw(&mut a, t1) {
        b.handle_datagram(d, t1 + ms(25));
    }
    for r in drain_raw(&mut b, t1 + ms(25)) {
        a.handle_datagram(r, t1 + ms(50));
    }
    drain_raw(&mut a, t1 + ms(50)); // the report-ack
    let longer = Duration::from_micros(83_750);
    // At 60 ms the first checkpoint's answer could still come by today's estimate: its timer
    // runs on to 83.75 ms instead of the checkpoint going again.
    assert_eq!(a.poll_timeout(), Some(t1 + ms(60)));
    a.handle_timeout(t1 + ms(60));
    assert!(drain(&mut a, t1 + ms(60)).is_empty(), "retransmitted early");
    assert_eq!(a.poll_timeout(), Some(t1 + longer));
    a.handle_timeout(t1 + longer);
    let resent = drain(&mut a, t1 + longer);
    assert_eq!(resent.len(), 1, "the checkpoint alone is retransmitted");
    assert!(data(&resent[0]).checkpoint.is_some());
    // Its retransmission backs off from the estimate: 2 × 83.75 ms.
    assert_eq!(a.poll_timeout(), Some(t1 + longer + longer * 2));
}

#[test]
fn adaptive_timer_samples_neither_retransmissions_nor_round_trips_across_a_link_change() {
    let ms = Duration::from_millis;
    let (mut a, mut b) = adaptive_pair();
    let t0 = t0();
    // Lost checkpoint: without a sample the configured 520 ms apply.
    a.send_block(B, 1, block(500), 500, t0).unwrap();
    let first = drain_raw(&mut a, t0);
    assert_eq!(a.poll_timeout(), Some(t0 + ms(520)));
    let t1 = t0 + ms(520);
    a.handle_timeout(t1);
    let again = drain_raw(&mut a, t1);
    assert_eq!(again.len(), 1);
    // The data before the checkpoint and the retransmitted checkpoint arrive; the report
    // answers a checkpoint sent twice, so it cannot be timed (Karn's rule).
    for d in &first[..first.len() - 1] {
        b.handle_datagram(d.clone(), t1 + ms(10));
    }
    b.handle_datagram(again[0].clone(), t1 + ms(10));
    for r in drain_raw(&mut b, t1 + ms(10)) {
        a.handle_datagram(r, t1 + ms(20));
    }
    assert_eq!(a.open_sessions(), 0, "the block completed");
    assert_eq!(a.round_trip_estimate(B), None);

    // A round trip that spans a link-state change includes the outage: not sampled either.
    let t2 = t1 + ms(100);
    a.send_block(B, 1, block(500), 500, t2).unwrap();
    let segs = drain_raw(&mut a, t2);
    a.set_link(B, false, t2 + ms(1));
    a.set_link(B, true, t2 + ms(5_000));
    for d in segs {
        b.handle_datagram(d, t2 + ms(5_010));
    }
    for r in drain_raw(&mut b, t2 + ms(5_010)) {
        a.handle_datagram(r, t2 + ms(5_020));
    }
    assert_eq!(a.open_sessions(), 0, "the block completed");
    assert_eq!(a.round_trip_estimate(B), None);

    // A clean round trip is sampled.
    exchange_once(&mut a, &mut b, t2 + ms(6_000));
    assert_eq!(a.round_trip_estimate(B), Some(ms(20)));
}

#[test]
fn fixed_timers_ignore_the_estimate() {
    let ms = Duration::from_millis;
    let (mut a, mut b) = adaptive_pair();
    let fixed = SpanConfig {
        adaptive_timers: false,
        ..adaptive_span()
    };
    a.add_span(B, fixed);
    let t1 = exchange_once(&mut a, &mut b, t0());
    assert_eq!(a.round_trip_estimate(B), Some(ms(20)), "still measured");
    a.send_block(B, 1, block(500), 500, t1).unwrap();
    drain(&mut a, t1);
    assert_eq!(a.poll_timeout(), Some(t1 + ms(520)));
}

#[test]
fn retransmitted_checkpoint_gets_the_same_reports_not_new_ones() {
    let now = t0();
    let (mut a, mut b) = (engine(A, B), engine(B, A));
    let sid = a.send_block(B, 1, block(2000), 2000, now).unwrap();
    let segs = drain_raw(&mut a, now);
    // The second segment is lost: the checkpoint is answered with a report claiming a gap.
    for (i, d) in segs.iter().enumerate() {
        if i != 1 {
            b.handle_datagram(d.clone(), now);
        }
    }
    let first_segs = drain(&mut b, now);
    let first = reports(&first_segs);
    assert_eq!(first.len(), 1);
    let serial = first[0].report_serial;
    // The checkpoint comes again (its timer fired before the report arrived): the same
    // report, same serial, goes out again, so the sender acts on it once.
    let cp = segs.last().unwrap().clone();
    b.handle_datagram(cp.clone(), now);
    let again = drain(&mut b, now);
    let again = reports(&again);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0], first[0]);
    // The sender acts on the report once: one retransmission of the gap, not two.
    a.handle_datagram(report_bytes(sid, first[0]), now);
    a.handle_datagram(report_bytes(sid, again[0]), now);
    let out = drain(&mut a, now);
    let retransmitted = out
        .iter()
        .filter(|s| matches!(s.body, SegmentBody::Data(_)))
        .count();
    assert_eq!(retransmitted, 1, "{out:?}");
    // Once the report is acknowledged, a late copy of the checkpoint needs no answer.
    for s in &out {
        if matches!(s.body, SegmentBody::ReportAck { .. }) {
            b.handle_datagram(s.to_bytes(), now);
        }
    }
    b.handle_datagram(cp, now);
    assert!(reports(&drain(&mut b, now)).is_empty());
    assert_eq!(b.stats().reports_sent, 2, "{:?}", b.stats());
    assert!(first.iter().all(|r| r.report_serial == serial));
}

fn report_bytes(sid: SessionId, r: &ReportSegment) -> Bytes {
    control_segment(sid, SegmentBody::Report(r.clone()))
}

/// A sends a 2000-octet block with discretionary checkpoints, of which B gets the first half
/// of the segments (its reports wait in its output). Returns A, the session, all of A's
/// segments, where their second half starts, and B.
fn first_half_to_b(now: Instant) -> (Engine, SessionId, Vec<Bytes>, usize, Engine) {
    let (a, sid, raw) = discretionary_sender(now);
    let half = raw.len() / 2;
    let mut b = engine(B, A);
    for s in &raw[..half] {
        b.handle_datagram(s.clone(), now);
    }
    (a, sid, raw, half, b)
}

/// B after a restart: all its import state lost (a fresh engine, with a seed of its own).
fn restarted_b() -> Engine {
    b_with(EngineConfig {
        seed: 777,
        ..EngineConfig::default()
    })
}

/// Hands `to_b` to B, then moves segments both ways until A completes the export `sid`;
/// whenever neither has anything to send, the clock moves on a second (timers retransmit).
/// Returns the red parts B delivered and whether A completed (within 20 exchanges).
fn exchange(
    a: &mut Engine,
    b: &mut Engine,
    mut to_b: Vec<Bytes>,
    sid: SessionId,
    mut now: Instant,
) -> (Vec<Bytes>, bool) {
    let mut delivered = Vec::new();
    for _round in 0..20 {
        for s in to_b.drain(..) {
            b.handle_datagram(s, now);
        }
        for s in drain_raw(b, now) {
            a.handle_datagram(s, now);
        }
        to_b = drain_raw(a, now);
        delivered.extend(events(b).into_iter().filter_map(|e| match e {
            Event::BlockReceived { red, .. } => Some(red),
            _ => None,
        }));
        if events(a).contains(&Event::TransmissionCompleted { session: sid }) {
            return (delivered, true);
        }
        if to_b.is_empty() {
            now += Duration::from_secs(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
            to_b = drain_raw(a, now);
        }
    }
    (delivered, false)
}

/// [`exchange`], and the export completes with the new B delivering the 2000-octet block once.
fn completes_with_the_block_delivered_once(
    a: &mut Engine,
    b2: &mut Engine,
    to_b2: Vec<Bytes>,
    sid: SessionId,
    now: Instant,
) {
    let (delivered, completed) = exchange(a, b2, to_b2, sid, now);
    assert!(completed, "the export never completed");
    assert!(
        delivered == vec![block(2000)],
        "the new B must deliver the whole block once; it delivered {} blocks",
        delivered.len()
    );
}

#[test]
fn a_restarted_receiver_takes_back_claims_of_discretionary_checkpoints() {
    // B answers the discretionary checkpoints of the first half of a block, then restarts
    // (all import state lost) while the rest of the block is on its way. The new B answers
    // the end-of-red-part checkpoint from its own state: a report over [0, 2000) that leaves
    // out the first half. Combined with the old claims, the sender would complete a block
    // the new B never had; instead it forgets the old claims and retransmits the first half.
    let now = t0();
    let (mut a, sid, raw, half, mut b) = first_half_to_b(now);
    let old_reports = drain_raw(&mut b, now);
    assert!(
        !old_reports.is_empty(),
        "B answered discretionary checkpoints"
    );
    for r in old_reports {
        a.handle_datagram(r, now);
    }
    drain(&mut a, now); // report-acks to the old B, lost with it
    let mut b2 = restarted_b();
    completes_with_the_block_delivered_once(&mut a, &mut b2, raw[half..].to_vec(), sid, now);
    assert_eq!(a.stats().claims_retracted, 1);
}

#[test]
fn a_report_of_the_earlier_incarnation_that_comes_late_is_not_trusted() {
    // As above, and after the new B's first report made A forget the old claims, a report
    // the old B sent before its restart arrives late (reordered across it): a full report of
    // the first half, as the old B would send for a retransmitted checkpoint. The new B has
    // none of that half (A's retransmission of it is lost). With the new B's claims, the old
    // ones would acknowledge the whole block at once: A would complete a block the new B
    // never gets. The late report's serial is the old B's (numbered on from its other
    // reports), not the new B's: it is acknowledged and otherwise ignored.
    let now = t0();
    let (mut a, sid, raw, half, mut b) = first_half_to_b(now);
    let old_reports: Vec<ReportSegment> =
        reports(&drain(&mut b, now)).into_iter().cloned().collect();
    let last = old_reports
        .last()
        .expect("B answered discretionary checkpoints");
    let late = ReportSegment {
        report_serial: last.report_serial + 1,
        checkpoint_serial: 0,
        lower_bound: 0,
        upper_bound: last.upper_bound,
        claims: vec![Claim {
            offset: 0,
            length: last.upper_bound,
        }],
    };
    for r in &old_reports {
        a.handle_datagram(report_bytes(sid, r), now);
    }
    drain(&mut a, now); // report-acks to the old B, lost with it
    let mut b2 = restarted_b();
    for s in &raw[half..] {
        b2.handle_datagram(s.clone(), now);
    }
    for s in drain_raw(&mut b2, now) {
        a.handle_datagram(s, now);
    }
    assert_eq!(a.stats().claims_retracted, 1);
    drain(&mut a, now); // the retransmission of the first half: lost
    a.handle_datagram(report_bytes(sid, &late), now);
    assert_eq!(a.stats().stale_reports_ignored, 1);
    assert!(
        !events(&mut a).contains(&Event::TransmissionCompleted { session: sid }),
        "completed on the old incarnation's claims"
    );
    // From here on nothing is lost: A's checkpoint timer brings the first half again.
    let to_b2 = drain_raw(&mut a, now);
    completes_with_the_block_delivered_once(&mut a, &mut b2, to_b2, sid, now);
}

/// The old B with the custody handshake on (as in dtnd) after the whole of A's block with
/// discretionary checkpoints: its client has the red part but has not taken it. Returns A, the
/// session, the reports the old B sent, and the old B.
fn whole_block_to_confirming_b(now: Instant) -> (Engine, SessionId, Vec<Bytes>, Engine) {
    let (a, sid, raw) = discretionary_sender(now);
    let mut b = confirming_engine(B, A);
    for s in &raw {
        b.handle_datagram(s.clone(), now);
    }
    let ev = events(&mut b);
    assert!(matches!(&ev[..], [Event::BlockReceived { session, .. }] if *session == sid));
    let old_reports = drain_raw(&mut b, now);
    (a, sid, old_reports, b)
}

#[test]
fn late_reports_of_the_earlier_incarnation_before_any_of_the_new_one_cannot_complete_the_block() {
    // The old B has the whole block, has answered the discretionary checkpoints, and holds
    // the report over the last part until its client takes the red part. It restarts before
    // that, with its reports still in transit; they reach A before anything of the new B, so
    // nothing shows A the restart and it trusts them. They leave out the last part, so A
    // cannot complete on them: its checkpoint timer brings the end of the block to the new
    // B, whose report takes the old claims back, and A sends the rest again.
    let now = t0();
    let (mut a, sid, old_reports, _old_b) = whole_block_to_confirming_b(now);
    assert!(
        !old_reports.is_empty(),
        "B answered discretionary checkpoints"
    );
    for r in old_reports {
        a.handle_datagram(r, now);
    }
    assert!(
        !events(&mut a).contains(&Event::TransmissionCompleted { session: sid }),
        "completed before the receiver's client took the red part"
    );
    let to_b2 = drain_raw(&mut a, now); // report-acks for the old B
    let mut b2 = restarted_b();
    completes_with_the_block_delivered_once(&mut a, &mut b2, to_b2, sid, now);
    assert_eq!(a.stats().claims_retracted, 1);
}

#[test]
fn a_late_full_report_of_the_earlier_incarnation_comes_only_after_its_client_took_the_block() {
    // As above, but the old B's client takes the red part before the restart: the held report
    // goes out, and reaches A (late) before anything of the new B. A completes on it, which is
    // right: the block was delivered once, by the old B, and its client has it (in dtnd,
    // stored durably before `accept_block`). The new B hears of the session only if A
    // retransmits, which it does not.
    let now = t0();
    let (mut a, sid, mut old_reports, mut old_b) = whole_block_to_confirming_b(now);
    assert!(old_b.accept_block(sid, now));
    old_reports.extend(drain_raw(&mut old_b, now));
    for r in old_reports {
        a.handle_datagram(r, now);
    }
    assert!(events(&mut a).contains(&Event::TransmissionCompleted { session: sid }));
    let mut b2 = restarted_b();
    for s in drain_raw(&mut a, now) {
        b2.handle_datagram(s, now);
    }
    assert!(
        events(&mut b2).is_empty(),
        "the new B got the block a second time"
    );
}

#[test]
fn inactivity_counts_from_the_latest_segment_and_pauses_while_the_link_is_down() {
    // Segments that keep coming keep the import alive (the timer runs on from the latest one,
    // without a timer operation per segment); the time the link is down does not count.
    let now = t0();
    let dur = span().inactivity_timeout;
    let (_a, sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    b.handle_datagram(raw[1].clone(), now);
    let later = now + dur * 3 / 5;
    b.handle_datagram(raw[2].clone(), later);
    // The timer started with the first segment fires, finds the later one and runs on.
    assert_eq!(b.poll_timeout(), Some(now + dur));
    b.handle_timeout(now + dur);
    assert!(events(&mut b).is_empty(), "still active");
    assert_eq!(b.open_sessions(), 1);
    assert_eq!(b.poll_timeout(), Some(later + dur));
    // A link outage of 10 s in between suspends it.
    let down = now + dur + Duration::from_millis(10);
    b.set_link(A, false, down);
    b.set_link(A, true, down + Duration::from_secs(10));
    let at = later + dur + Duration::from_secs(10);
    assert_eq!(b.poll_timeout(), Some(at));
    b.handle_timeout(at);
    assert_eq!(
        events(&mut b),
        vec![Event::ImportCancelled {
            session: sid,
            reason: CancelReason::SystemCancelled,
            by_peer: false
        }]
    );
}

/// An engine `A` sending `n` red blocks of `len` octets to `B` at window `n`, with the span's
/// flow-control limit `max_in_flight`; with the sessions' IDs, in the order the blocks went.
fn sending_red_blocks(
    n: usize,
    len: usize,
    max_in_flight: Option<u64>,
    now: Instant,
) -> (Engine, Vec<SessionId>) {
    let mut sp = span();
    sp.max_export_sessions = n;
    sp.max_bytes_in_flight = max_in_flight;
    let mut a = engine(A, B);
    a.add_span(B, sp);
    let sids = (0..n)
        .map(|_| a.send_block(B, 1, block(len), len, now).unwrap())
        .collect();
    (a, sids)
}

#[test]
fn flow_control_checkpoints_once_per_quarter_of_its_limit_across_sessions() {
    // Two 150 000-octet blocks at window 2, 200 000 octets in flight at most and no spacing of
    // the span's own: a checkpoint goes out whenever 50 000 new red octets went out unchecked,
    // whichever session sent them, so the receiver reports (and the window slides) long before
    // the limit is reached, not only once a session ends its red part.
    let now = t0();
    let (mut a, _) = sending_red_blocks(2, 150_000, Some(200_000), now);
    let (mut unchecked, mut checkpoints, mut red) = (0u64, 0, 0u64);
    let mut sessions = HashSet::new();
    for seg in drain(&mut a, now) {
        let SegmentBody::Data(d) = seg.body else {
            continue;
        };
        sessions.insert(seg.session);
        red += d.data.len() as u64;
        unchecked += d.data.len() as u64;
        // The quarter, the segment that reached it, and the checkpoint that follows.
        assert!(
            unchecked < 50_000 + 2 * 256,
            "{unchecked} octets up to a checkpoint"
        );
        if d.checkpoint.is_some() {
            checkpoints += 1;
            unchecked = 0;
        }
    }
    assert_eq!(sessions.len(), 2, "both sessions sent before the limit");
    assert!(
        (200_000..200_000 + 3 * 256).contains(&red),
        "{red} red octets in flight"
    );
    // One per quarter before the limit stops new data.
    assert!(
        checkpoints >= 3,
        "{checkpoints} checkpoints for {red} octets"
    );
}

#[test]
fn oldest_export_with_something_to_send_goes_first() {
    // Three 100 000-octet blocks at window 3: each session sends its whole red part before
    // the next one starts (not segment by segment in rotation), in the order of the blocks.
    let now = t0();
    let (mut a, sids) = sending_red_blocks(3, 100_000, None, now);
    // The first block and part of the second.
    let first: Vec<Segment> = std::iter::from_fn(|| a.poll_transmit(now))
        .take(500)
        .map(|(_, b)| Segment::decode(&b).unwrap())
        .collect();
    let order: Vec<SessionId> = first.iter().map(|s| s.session).collect();
    let boundary = order.iter().position(|s| *s != sids[0]).unwrap();
    assert!(order[boundary..].iter().all(|s| *s == sids[1]), "{order:?}");
    let cp = data(&first[boundary - 1]).checkpoint.unwrap();
    assert_eq!(
        data(&first[boundary - 1]).kind,
        DataKind::RedCheckpointEorpEob
    );
    // The first session's report claims a gap: its retransmission goes out before the
    // second session's remaining new data, and the third session waits for both.
    a.handle_datagram(
        report(
            sids[0],
            5,
            cp.checkpoint_serial,
            0,
            100_000,
            &[(0, 50_000), (52_000, 48_000)],
        ),
        now,
    );
    let rest = drain(&mut a, now);
    assert_eq!(rest[0].body, SegmentBody::ReportAck { report_serial: 5 });
    let retx_end = rest[1..].iter().position(|s| s.session != sids[0]).unwrap() + 1;
    let retx: Vec<(u64, usize)> = rest[1..retx_end]
        .iter()
        .map(|s| (data(s).offset, data(s).data.len()))
        .collect();
    assert_eq!(retx.first().unwrap().0, 50_000);
    assert_eq!(retx.iter().map(|r| r.1).sum::<usize>(), 2_000);
    let sessions: Vec<SessionId> = rest[retx_end..].iter().map(|s| s.session).collect();
    let third = sessions.iter().position(|s| *s == sids[2]).unwrap();
    assert!(sessions[..third].iter().all(|s| *s == sids[1]));
    assert!(sessions[third..].iter().all(|s| *s == sids[2]));
}

#[test]
fn flow_control_holds_new_red_data_until_reports_acknowledge_it() {
    // Two 4000-octet blocks, window 2, at most 1000 octets in flight: each round sends about
    // that much (one segment more per export, as a checkpoint, when its data in flight has
    // none), and
    // every round's report lets the next one go; both blocks arrive intact.
    let now = t0();
    let mut sp = span();
    sp.max_export_sessions = 2;
    sp.max_bytes_in_flight = Some(1000);
    let mut a = engine(A, B);
    a.add_span(B, sp.clone());
    let mut b = engine(B, A);
    b.add_span(A, sp);
    let blocks = [block(4000), Bytes::from(vec![7u8; 4000])];
    for blk in &blocks {
        a.send_block(B, 1, blk.clone(), blk.len(), now).unwrap();
    }
    let mut delivered = Vec::new();
    let mut rounds = 0;
    while delivered.len() < 2 && rounds < 50 {
        rounds += 1;
        let sent = drain(&mut a, now);
        let red: u64 = sent
            .iter()
            .filter_map(|s| match &s.body {
                SegmentBody::Data(d) if d.kind.is_red() => Some(d.data.len() as u64),
                _ => None,
            })
            .sum();
        // The limit, the segment that crossed it, and for each export the segment that
        // carried its checkpoint.
        assert!(
            red <= 1000 + 3 * 256,
            "round {rounds}: {red} red octets in flight"
        );
        for s in sent {
            b.handle_datagram(s.to_bytes(), now);
        }
        for d in drain_raw(&mut b, now) {
            a.handle_datagram(d, now);
        }
        for e in events(&mut b) {
            if let Event::BlockReceived { red, .. } = e {
                delivered.push(red);
            }
        }
    }
    assert!(rounds >= 5, "the limit held data back ({rounds} rounds)");
    delivered.sort();
    let mut expected = blocks.to_vec();
    expected.sort();
    assert_eq!(delivered, expected);
    let completed = events(&mut a)
        .into_iter()
        .filter(|e| matches!(e, Event::TransmissionCompleted { .. }))
        .count();
    assert_eq!(completed, 2);
    assert_eq!(a.open_sessions(), 0);
}

#[test]
fn plain_red_segments_are_all_one_size_across_sessions_and_offsets() {
    // Equal datagrams batch (UDP GSO/GRO): the header's size varies with the session number
    // and the offset, the data fills the rest. Checkpoints and the green part fit in the
    // segment size too.
    let now = t0();
    let mut sp = span();
    sp.max_segment_size = 1400;
    sp.max_export_sessions = 3;
    let mut a = engine(A, B);
    a.add_span(B, sp);
    for red in [300_000, 300_000, 200_000] {
        a.send_block(B, 1, block(300_000), red, now).unwrap();
    }
    let mut plain = std::collections::BTreeSet::new();
    let mut n = 0;
    while let Some((_, d)) = a.poll_transmit(now) {
        assert!(d.len() <= 1400, "{} octets", d.len());
        let seg = Segment::decode(&d).unwrap();
        if let SegmentBody::Data(ds) = &seg.body {
            let full = !(ds.offset + ds.data.len() as u64).is_multiple_of(300_000);
            if ds.kind == DataKind::Red && full {
                plain.insert(d.len());
            }
        }
        n += 1;
    }
    assert!(n > 600);
    assert_eq!(plain.len(), 1, "plain red segment sizes {plain:?}");
    assert!(*plain.first().unwrap() >= 1400 - 10);
}

proptest::proptest! {
    #[test]
    fn data_segments_fill_the_segment_size_exactly(
        header in 3usize..80,
        avail in 1u64..100_000,
        mss in 0usize..70_000,
    ) {
        // The longest data that fits, by brute force from the top: the header's length field
        // grows with the data (SDNV).
        let fits = |n: u64| (header - 1 + sdnv::encoded_len(n)) as u64 + n <= mss as u64;
        let best = (1..=avail.min(mss as u64)).rev().find(|&n| fits(n)).unwrap_or(1);
        proptest::prop_assert_eq!(export::longest_data(header, avail, mss), best);
    }

    #[test]
    fn plain_segment_data_is_the_remainder_or_the_longest(
        header in 3usize..80,
        avail in 1u64..100_000,
        mss in 0usize..70_000,
    ) {
        // What `plain_end` relies on to remember one length per offset size: the data of a
        // segment limited to `avail` octets is the unlimited longest, or `avail` if that is
        // less.
        let longest = export::longest_data(header, u64::MAX, mss);
        proptest::prop_assert_eq!(
            export::longest_data(header, avail, mss),
            longest.min(avail)
        );
    }
}

/// What a hostile or broken sender may send an import: anything that decodes.
#[derive(Clone, Debug)]
enum FromSender {
    Data {
        session: u64,
        red: bool,
        offset: u64,
        len: usize,
        /// Checkpoint serial, report serial, and whether it ends the red part.
        checkpoint: Option<(u64, u64, bool)>,
    },
    ReportAck {
        session: u64,
        serial: u64,
    },
    Cancel {
        session: u64,
    },
    /// Time passes (ms), and due timers fire.
    Wait(u64),
}

fn from_sender() -> impl proptest::strategy::Strategy<Value = FromSender> {
    use proptest::prelude::*;
    let session = 1u64..5;
    prop_oneof![
        6 => (
            session.clone(),
            any::<bool>(),
            0u64..60_000,
            1usize..3000,
            proptest::option::of((1u64..40, 0u64..4, any::<bool>())),
        )
            .prop_map(|(session, red, offset, len, checkpoint)| FromSender::Data {
                session,
                red,
                offset,
                len,
                checkpoint,
            }),
        1 => (session.clone(), any::<u64>())
            .prop_map(|(session, serial)| FromSender::ReportAck { session, serial }),
        1 => session.prop_map(|session| FromSender::Cancel { session }),
        1 => (0u64..20_000).prop_map(FromSender::Wait),
    ]
}

impl FromSender {
    fn datagram(&self) -> Option<Bytes> {
        let sid = |number| SessionId {
            originator: A,
            number,
        };
        Some(match *self {
            FromSender::Data {
                session,
                red,
                offset,
                len,
                checkpoint,
            } => {
                let kind = match (red, checkpoint) {
                    (false, _) => DataKind::Green,
                    (true, None) => DataKind::Red,
                    (true, Some((_, _, false))) => DataKind::RedCheckpoint,
                    (true, Some((_, _, true))) => DataKind::RedCheckpointEorp,
                };
                let checkpoint =
                    checkpoint
                        .filter(|_| red)
                        .map(|(checkpoint_serial, report_serial, _)| CheckpointInfo {
                            checkpoint_serial,
                            report_serial,
                        });
                control_segment(
                    sid(session),
                    SegmentBody::Data(DataSegment {
                        kind,
                        client_service_id: 1,
                        offset,
                        data: Bytes::from(vec![7u8; len]),
                        checkpoint,
                    }),
                )
            }
            FromSender::ReportAck { session, serial } => control_segment(
                sid(session),
                SegmentBody::ReportAck {
                    report_serial: serial,
                },
            ),
            FromSender::Cancel { session } => control_segment(
                sid(session),
                SegmentBody::CancelFromSender(CancelReason::UserCancelled),
            ),
            FromSender::Wait(_) => return None,
        })
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Whatever a sender sends, an import never holds more than the reassembly limit (data
    /// and bookkeeping), and once every import has ended (timers run out) nothing is left
    /// charged and no timer runs.
    #[test]
    fn imports_stay_within_reassembly_memory_whatever_the_sender_sends(
        ops in proptest::collection::vec(from_sender(), 1..300),
    ) {
        const LIMIT: usize = 20_000;
        let mut b = b_with(EngineConfig {
            max_reassembly_memory: LIMIT,
            max_block_size: 100_000,
            max_import_sessions_per_peer: 3,
            ..EngineConfig::default()
        });
        let mut now = t0();
        for op in &ops {
            match op.datagram() {
                Some(d) => b.handle_datagram(d, now),
                None => {
                    if let FromSender::Wait(ms) = op {
                        now += Duration::from_millis(*ms);
                    }
                    b.handle_timeout(now);
                }
            }
            drain_raw(&mut b, now);
            events(&mut b);
            let held = b.stats().reassembly_bytes;
            proptest::prop_assert!(held <= LIMIT as u64, "{held} octets held");
        }
        // Nobody answers from now on: inactivity, report and cancel timers end every import.
        for _ in 0..10_000 {
            let Some(t) = b.poll_timeout() else { break };
            now = now.max(t);
            b.handle_timeout(now);
            drain_raw(&mut b, now);
            events(&mut b);
        }
        proptest::prop_assert_eq!(b.open_sessions(), 0);
        proptest::prop_assert_eq!(b.session_timers(), 0);
        proptest::prop_assert_eq!(b.stats().reassembly_bytes, 0);
    }
}

/// What a hostile or broken receiver may send an export.
#[derive(Clone, Debug)]
enum FromReceiver {
    Report {
        serial: u64,
        checkpoint: u64,
        lower: u64,
        upper: u64,
        claims: Vec<(u64, u64)>,
    },
    /// A report on the whole block claiming its first `upto` octets: the rest missing.
    Prefix {
        serial: u64,
        upto: u64,
    },
    Cancel,
    /// Time passes (ms), and due timers fire.
    Wait(u64),
}

fn from_receiver() -> impl proptest::strategy::Strategy<Value = FromReceiver> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (
            1u64..100_000,
            0u64..4,
            0u64..6000,
            0u64..6000,
            proptest::collection::vec((0u64..6000, 0u64..1000), 0..8),
        )
            .prop_map(|(serial, checkpoint, lower, upper, claims)| FromReceiver::Report {
                serial,
                checkpoint,
                lower: lower.min(upper),
                upper: lower.max(upper),
                claims,
            }),
        8 => (1u64..100_000, 0u64..5000)
            .prop_map(|(serial, upto)| FromReceiver::Prefix { serial, upto }),
        1 => Just(FromReceiver::Cancel),
        2 => (0u64..3000).prop_map(FromReceiver::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Whatever a receiver reports, however many reports come before the sender's turn to
    /// send, what it queues stays within about the block (gaps already queued are not queued
    /// again), and once nobody answers any more every export ends and no timer runs.
    #[test]
    fn exports_end_whatever_the_receiver_reports(
        ops in proptest::collection::vec(from_receiver(), 1..200),
    ) {
        const BLOCK: usize = 5000;
        let mut a = engine(A, B);
        let sid = a.send_block(B, 1, block(BLOCK), BLOCK, t0()).unwrap();
        let mut now = t0();
        let first = drain_raw(&mut a, now).len();
        for op in &ops {
            let datagram = match op {
                FromReceiver::Report {
                    serial,
                    checkpoint,
                    lower,
                    upper,
                    claims,
                } => Some(report(sid, *serial, *checkpoint, *lower, *upper, claims)),
                FromReceiver::Prefix { serial, upto } => Some(report(
                    sid,
                    *serial,
                    0,
                    0,
                    BLOCK as u64,
                    &[(0, *upto)],
                )),
                FromReceiver::Cancel => Some(control_segment(
                    sid,
                    SegmentBody::CancelFromReceiver(CancelReason::UserCancelled),
                )),
                FromReceiver::Wait(ms) => {
                    now += Duration::from_millis(*ms);
                    a.handle_timeout(now);
                    None
                }
            };
            if let Some(d) = datagram {
                a.handle_datagram(d, now);
            } else {
                // Each report's ack, a block's worth of data, and checkpoints re-sent.
                let out = drain(&mut a, now)
                    .iter()
                    .filter(|s| matches!(s.body, SegmentBody::Data(_)))
                    .count();
                proptest::prop_assert!(out <= 2 * first + 10, "{out} data segments queued");
            }
            events(&mut a);
        }
        for _ in 0..10_000 {
            let Some(t) = a.poll_timeout() else { break };
            now = now.max(t);
            a.handle_timeout(now);
            drain_raw(&mut a, now);
            events(&mut a);
        }
        proptest::prop_assert_eq!(a.open_sessions(), 0);
        proptest::prop_assert_eq!(a.session_timers(), 0);
    }
}

#[test]
fn a_receiver_that_asks_for_the_block_again_and_again_exhausts_the_retransmission_budget() {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(5000), 5000, now).unwrap();
    let mut sent_octets = 0u64;
    let mut count = |segs: Vec<Segment>| {
        for s in segs {
            if let SegmentBody::Data(d) = &s.body {
                sent_octets += d.data.len() as u64;
            }
        }
    };
    count(drain(&mut a, now));
    // Each report acknowledges one octet more (so the cycle limit never trips) and asks for
    // the rest again once the last retransmission has left.
    let mut reports = 0;
    for k in 1..1000u64 {
        a.handle_datagram(report(sid, k, 0, 0, 5000, &[(0, k)]), now);
        count(drain(&mut a, now));
        reports += 1;
        if let Some(e) = events(&mut a).first() {
            assert_eq!(
                *e,
                Event::ExportCancelled {
                    session: sid,
                    reason: CancelReason::RetransmissionCyclesExceeded,
                    by_peer: false,
                }
            );
            break;
        }
    }
    assert_eq!(
        a.stats().export_sessions_cancelled,
        1,
        "cancelled after {reports} reports"
    );
    // Cancelled once 16 times the red part went again (the default factor), not 999.
    assert!(reports <= 17, "{reports} reports");
    assert!(sent_octets <= 17 * 5000, "{sent_octets} octets sent");
}

#[test]
fn gaps_already_queued_for_retransmission_are_not_queued_again() {
    let now = t0();
    let mut a = engine(A, B);
    let sid = a.send_block(B, 1, block(5000), 5000, now).unwrap();
    let first = drain_raw(&mut a, now).len();
    // Report after report before any retransmission leaves, each claiming one octet more
    // and the rest missing: the rest is queued once.
    for k in 1..200u64 {
        a.handle_datagram(report(sid, 1000 + k, 0, 0, 5000, &[(0, k)]), now);
    }
    let out: Vec<Segment> = drain(&mut a, now);
    let acks = out
        .iter()
        .filter(|s| matches!(s.body, SegmentBody::ReportAck { .. }))
        .count();
    assert_eq!(acks, 199, "every report acknowledged");
    let mut resent = IntervalSet::default();
    let mut octets = 0;
    for s in &out {
        if let SegmentBody::Data(d) = &s.body {
            octets += d.data.len() as u64;
            resent.insert(d.offset, d.offset + d.data.len() as u64, |_, _| {});
        }
    }
    assert_eq!(resent.clipped(0, 5000), vec![(1, 5000)]);
    assert_eq!(octets, 4999, "each missing octet sent once");
    assert!(out.len() - acks <= first);
}

/// Engine A with `checkpoint_copies = 1` on any link (and `checkpoint_every`) on its span to B.
fn copying_sender(every: u32) -> Engine {
    let mut a = engine(A, B);
    a.add_span(
        B,
        SpanConfig {
            checkpoint_copies: 1,
            checkpoint_copies_min_loss: 0.0,
            checkpoint_every: every,
            ..span()
        },
    );
    a
}

/// The checkpoint serial of each checkpoint among `segs`, in order (copies included).
fn checkpoint_serials(segs: &[Segment]) -> Vec<u64> {
    segs.iter()
        .filter_map(|s| match &s.body {
            SegmentBody::Data(d) => d.checkpoint.map(|c| c.checkpoint_serial),
            _ => None,
        })
        .collect()
}

#[test]
fn checkpoint_copies_follow_each_checkpoint_that_ends_a_transmission() {
    let mut now = t0();
    let mut a = copying_sender(3);
    let sid = a.send_block(B, 1, block(4000), 4000, now).unwrap();
    let first = drain(&mut a, now);
    // Discretionary checkpoints go once; the end-of-red-part one twice, back to back, with
    // the same serial, data and flags.
    let serials = checkpoint_serials(&first);
    let eorp = *serials.last().unwrap();
    assert_eq!(serials.iter().filter(|&&s| s == eorp).count(), 2);
    let mut distinct = serials.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), serials.len() - 1, "only the EORP is copied");
    let n = first.len();
    assert_eq!(
        first[n - 1],
        first[n - 2],
        "the copy is the checkpoint itself"
    );
    assert_eq!(data(&first[n - 1]).kind, DataKind::RedCheckpointEorpEob);
    assert_eq!(a.stats().checkpoint_copies_sent, 1);
    assert_eq!(a.stats().checkpoints_retransmitted, 0);

    // A report with a gap: the retransmission's checkpoint goes twice as well.
    a.handle_datagram(
        report(sid, 77, eorp, 0, 4000, &[(0, 1000), (1500, 2500)]),
        now,
    );
    let retx = drain(&mut a, now);
    assert_eq!(retx[0].body, SegmentBody::ReportAck { report_serial: 77 });
    let cps = checkpoint_serials(&retx);
    assert_eq!(cps.len(), 2, "{retx:?}");
    assert_eq!(cps[0], cps[1]);
    assert_eq!(retx[retx.len() - 1], retx[retx.len() - 2]);
    assert_eq!(a.stats().checkpoint_copies_sent, 2);

    // The timers (a copy starts none of its own): every unanswered checkpoint goes again, and
    // the retransmission's checkpoint with a copy; the discretionary ones without.
    now = a.poll_timeout().expect("checkpoint timers");
    a.handle_timeout(now);
    let again = checkpoint_serials(&drain(&mut a, now));
    let discretionary = distinct.len() - 1;
    assert_eq!(again.len(), discretionary + 2, "{again:?}");
    assert_eq!(again.iter().filter(|&&s| s == cps[0]).count(), 2);
    assert_eq!(
        a.stats().checkpoints_retransmitted,
        discretionary as u64 + 1
    );
    assert_eq!(a.stats().checkpoint_copies_sent, 3);

    // The report answering it completes the session; nothing is left to send or time.
    a.handle_datagram(report(sid, 78, cps[0], 0, 4000, &[(0, 4000)]), now);
    let last = drain(&mut a, now);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].body, SegmentBody::ReportAck { report_serial: 78 });
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
    assert_eq!(a.session_timers(), 0);
}

#[test]
fn a_report_before_the_copy_leaves_cancels_the_copy() {
    let now = t0();
    let mut a = copying_sender(0);
    let sid = a.send_block(B, 1, block(1000), 1000, now).unwrap();
    // Send up to and including the end-of-red-part checkpoint, not its copy.
    let mut serial = None;
    while serial.is_none() {
        let (_, b) = a.poll_transmit(now).expect("the block's segments");
        serial = data(&Segment::decode(&b).unwrap())
            .checkpoint
            .map(|c| c.checkpoint_serial);
    }
    a.handle_datagram(report(sid, 5, serial.unwrap(), 0, 1000, &[(0, 1000)]), now);
    let rest = drain(&mut a, now);
    assert!(checkpoint_serials(&rest).is_empty(), "{rest:?}");
    assert_eq!(a.stats().checkpoint_copies_sent, 0);
    assert_eq!(
        events(&mut a),
        vec![Event::TransmissionCompleted { session: sid }]
    );
}

#[test]
fn a_copy_is_answered_with_the_same_report_and_acted_on_once() {
    let now = t0();
    let mut a = copying_sender(0);
    let mut b = engine(B, A);
    let sid = a.send_block(B, 1, block(2000), 2000, now).unwrap();
    let raw = drain_raw(&mut a, now);
    // Lose the first segment; the checkpoint and its copy both arrive.
    for s in &raw[1..] {
        b.handle_datagram(s.clone(), now);
    }
    let reports = drain_raw(&mut b, now);
    assert_eq!(
        reports.len(),
        2,
        "the copy is answered like a retransmission"
    );
    assert_eq!(reports[0], reports[1], "with the same report (§6.8)");
    // The sender acknowledges both, and retransmits the gap once (§6.13).
    for r in &reports {
        a.handle_datagram(r.clone(), now);
    }
    let out = drain_raw(&mut a, now);
    let decoded: Vec<Segment> = out.iter().map(|b| Segment::decode(b).unwrap()).collect();
    let acks = decoded
        .iter()
        .filter(|s| matches!(s.body, SegmentBody::ReportAck { .. }))
        .count();
    assert_eq!(acks, 2);
    let first_len = data(&Segment::decode(&raw[0]).unwrap()).data.len();
    let offsets: Vec<(u64, usize)> = decoded
        .iter()
        .filter_map(|s| match &s.body {
            SegmentBody::Data(d) => Some((d.offset, d.data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        offsets,
        vec![(0, first_len), (0, first_len)],
        "the gap (as the retransmission's checkpoint) and its copy"
    );
    // B takes the block once.
    for s in out {
        b.handle_datagram(s, now);
    }
    let delivered = events(&mut b)
        .into_iter()
        .filter(|e| matches!(e, Event::BlockReceived { session, .. } if *session == sid))
        .count();
    assert_eq!(delivered, 1);
}

#[test]
fn once_a_report_claiming_everything_is_acknowledged_other_reports_are_dropped() {
    let now = t0();
    let (mut a, sid, raw) = segments_of(1000, 1000);
    let mut b = engine(B, A);
    let ack = |serial| {
        control_segment(
            sid,
            SegmentBody::ReportAck {
                report_serial: serial,
            },
        )
    };
    // The checkpoint overtakes the data before it: a report with a gap, then, once that data
    // arrives, an asynchronous report claiming the whole red part.
    let (last, rest) = raw.split_last().unwrap();
    b.handle_datagram(last.clone(), now);
    let with_gap = reports(&drain(&mut b, now))[0].clone();
    for s in rest {
        b.handle_datagram(s.clone(), now);
    }
    let asynchronous = reports(&drain(&mut b, now))[0].clone();
    assert_eq!(asynchronous.checkpoint_serial, 0);
    // The sender answers the first report with a retransmission, whose checkpoint crosses
    // the asynchronous report; B answers that checkpoint with a third report.
    a.handle_datagram(report_bytes(sid, &with_gap), now);
    for s in drain_raw(&mut a, now) {
        b.handle_datagram(s, now);
    }
    assert_eq!(
        reports(&drain(&mut b, now)).len(),
        1,
        "the checkpoint is answered"
    );
    // The sender acknowledges the first report and the asynchronous one, on which it
    // completed, and then closed the session: the third report is never acknowledged.
    b.handle_datagram(ack(with_gap.report_serial), now);
    assert_eq!(
        b.open_sessions(),
        1,
        "the asynchronous report is not acknowledged yet"
    );
    b.handle_datagram(ack(asynchronous.report_serial), now);
    // The import closes at once, instead of sending the third report until its limit.
    assert_eq!(b.open_sessions(), 0, "{}", b.describe_sessions());
    assert_eq!(b.session_timers(), 0);
    assert_eq!(b.stats().reports_retransmitted, 0);
}

#[test]
fn by_default_checkpoints_are_copied_only_once_reports_show_loss() {
    // The default: one copy while the span's reports claim at least 1 % of the data missing
    // (`loss.rs`), none before.
    let mut now = t0();
    let mut a = engine(A, B);
    a.add_span(
        B,
        SpanConfig {
            checkpoint_copies: SpanConfig::default().checkpoint_copies,
            checkpoint_copies_min_loss: SpanConfig::default().checkpoint_copies_min_loss,
            ..span()
        },
    );
    let mut b = engine(B, A);
    // Sends a 4000-octet block, of which B gets all segments but those in `lose`, then runs
    // the exchange to its end; returns the checkpoint serials A sent, copies included.
    let transfer = |a: &mut Engine, b: &mut Engine, lose: &[usize], now: &mut Instant| {
        a.send_block(B, 1, block(4000), 4000, *now).unwrap();
        let mut to_b: Vec<Bytes> = (drain_raw(a, *now).into_iter().enumerate())
            .filter(|(i, _)| !lose.contains(i))
            .map(|(_, d)| d)
            .collect();
        let mut serials = Vec::new();
        for _ in 0..10 {
            serials.extend(checkpoint_serials(
                &to_b
                    .iter()
                    .map(|d| Segment::decode(d).unwrap())
                    .collect::<Vec<_>>(),
            ));
            for d in to_b.drain(..) {
                b.handle_datagram(d, *now);
            }
            *now += Duration::from_millis(100);
            for r in drain_raw(b, *now) {
                a.handle_datagram(r, *now);
            }
            *now += Duration::from_millis(100);
            to_b = drain_raw(a, *now);
        }
        serials
    };
    assert_eq!(a.loss_estimate(B), None, "no report yet");
    // A clean block: its end-of-red-part checkpoint goes once.
    let serials = transfer(&mut a, &mut b, &[], &mut now);
    assert_eq!(serials.len(), 1, "{serials:?}");
    assert_eq!(a.stats().checkpoint_copies_sent, 0);
    assert_eq!(a.loss_estimate(B), Some(0.0));
    // Two segments of the next lost: the report says so, and the retransmission's checkpoint
    // goes twice.
    let serials = transfer(&mut a, &mut b, &[3, 9], &mut now);
    assert_eq!(a.stats().checkpoint_copies_sent, 1, "{serials:?}");
    assert_eq!(
        serials.len(),
        3,
        "EORP, then the retransmission's and its copy: {serials:?}"
    );
    assert_eq!(serials[1], serials[2]);
    // Two segments, about 500 octets, of the 8000 reported on so far: about 6 %.
    let loss = a.loss_estimate(B).unwrap();
    assert!((0.04..0.08).contains(&loss), "{loss}");
    // The span is lossy by its reports now: the next block's EORP checkpoint is copied too.
    let serials = transfer(&mut a, &mut b, &[], &mut now);
    assert_eq!(serials.len(), 2, "{serials:?}");
    assert_eq!(serials[0], serials[1]);
    assert_eq!(a.stats().export_sessions_completed, 3);
    assert_eq!(b.stats().import_sessions_completed, 3);
}
