//! Two UDP drivers on 127.0.0.1 transfer blocks through the real engine: mixed red/green
//! blocks, and red blocks through a 5 % loss impairment (RFC 5326 §6 retransmission); one
//! driver with two peers gives its impairment each datagram's destination, and reconfigures and
//! cancels a span at run time; a peer that sends from an ephemeral port (as ION does) is
//! answered at its configured address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ltp::driver::{
    Destination, DriverConfig, EventReceiver, Impairment, LtpDriver, LtpHandle, SimpleImpairment,
};
use ltp::segment::{CheckpointInfo, Claim, DataKind, DataSegment, Segment, SegmentBody, SessionId};
use ltp::{CancelReason, Engine, EngineConfig, Event, SpanConfig};

const A: u64 = 10;
const B: u64 = 20;

fn span() -> SpanConfig {
    SpanConfig {
        max_segment_size: 1400,
        max_export_sessions: 8,
        timer_margin: Duration::from_millis(50),
        max_checkpoint_retransmissions: 50,
        max_report_retransmissions: 50,
        ..SpanConfig::default()
    }
}

fn engine(local: u64, peer: u64, seed: u64) -> Engine {
    let mut e = Engine::new(
        local,
        EngineConfig {
            seed,
            ..EngineConfig::default()
        },
    );
    e.add_span(peer, span());
    e
}

fn block(len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect::<Vec<u8>>()
        .into()
}

async fn pair(loss: f64) -> ((LtpHandle, EventReceiver), (LtpHandle, EventReceiver)) {
    pair_polling(loss, Duration::ZERO).await
}

/// Two drivers on loopback, both busy-polling for `busy_poll` ([`DriverConfig::busy_poll`]).
async fn pair_polling(
    loss: f64,
    busy_poll: Duration,
) -> ((LtpHandle, EventReceiver), (LtpHandle, EventReceiver)) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // B first so A can be told its address; B learns A's address afterwards.
    let mut cb = DriverConfig::new(any);
    cb.busy_poll = busy_poll;
    let b = LtpDriver::spawn(cb, engine(B, A, 2)).unwrap();
    let mut ca = DriverConfig::new(any);
    ca.busy_poll = busy_poll;
    ca.spans = vec![(B, b.0.local_addr())];
    if loss > 0.0 {
        ca.impairment = Some(Box::new(SimpleImpairment::new(loss, Duration::ZERO, 7)));
    }
    let a = LtpDriver::spawn(ca, engine(A, B, 1)).unwrap();
    b.0.set_span_address(A, a.0.local_addr()).await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_red_green_blocks_arrive() {
    let ((ha, mut ea), (hb, mut eb)) = pair(0.0).await;
    let blocks = [
        (block(1 << 20, 1), 1 << 20), // all red, 1 MiB
        (block(1 << 20, 2), 600_000), // mixed
        (block(200_000, 3), 0),       // all green
        (block(1000, 4), 1000),
    ];
    let mut sessions = Vec::new();
    for (b, red) in &blocks {
        sessions.push(ha.send_block(B, 1, b.clone(), *red).await.unwrap());
    }
    let mut red_received = Vec::new();
    let mut green_octets = 0u64;
    let mut green_eob = 0;
    let mut completed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let expected_red = blocks.iter().filter(|(_, r)| *r > 0).count();
    let expected_green: u64 = blocks.iter().map(|(b, r)| (b.len() - r) as u64).sum();
    while red_received.len() < expected_red
        || completed < blocks.len()
        || green_eob < blocks.iter().filter(|(b, r)| *r < b.len()).count()
    {
        tokio::select! {
            e = eb.recv() => match e.expect("events") {
                Event::BlockReceived { session, red, client_service_id } => {
                    assert_eq!(client_service_id, 1);
                    red_received.push((session, red));
                }
                Event::GreenSegment { data, end_of_block, .. } => {
                    green_octets += data.len() as u64;
                    if end_of_block { green_eob += 1; }
                }
                other => panic!("receiver: unexpected {other:?}"),
            },
            e = ea.recv() => match e.expect("events") {
                Event::TransmissionCompleted { session } => {
                    assert!(sessions.contains(&session));
                    completed += 1;
                }
                other => panic!("sender: unexpected {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!(
                "timeout: red {} completed {} green {} eob {}",
                red_received.len(), completed, green_octets, green_eob),
        }
    }
    // Green data over loopback without loss should all arrive.
    assert_eq!(green_octets, expected_green);
    for (session, red) in red_received {
        let i = sessions.iter().position(|s| *s == session).unwrap();
        let (b, r) = &blocks[i];
        assert_eq!(red, b.slice(..*r));
    }
    let sa = ha.stats().await.unwrap();
    assert!(sa.datagrams_sent > 1500, "{sa:?}");
    assert_eq!(sa.no_route, 0);
    ha.shutdown().await;
    hb.shutdown().await;
    assert!(matches!(
        ha.send_block(B, 1, block(10, 0), 10).await,
        Err(ltp::driver::DriverError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_blocks_survive_5_percent_loss() {
    red_blocks_survive_loss(pair(0.05).await).await;
}

/// Busy polling yields between its tries: both drivers, and the test itself, share one
/// thread here, and a driver that kept the thread while polling would starve the other.
#[tokio::test(flavor = "current_thread")]
async fn busy_polling_drivers_share_one_thread() {
    red_blocks_survive_loss(pair_polling(0.05, Duration::from_millis(5)).await).await;
}

async fn red_blocks_survive_loss(
    ((ha, mut ea), (hb, mut eb)): ((LtpHandle, EventReceiver), (LtpHandle, EventReceiver)),
) {
    let n = 8;
    let mut sent = Vec::new();
    for i in 0..n {
        let b = block(256 * 1024, i as u8);
        let s = ha.send_block(B, 1, b.clone(), b.len()).await.unwrap();
        sent.push((s, b));
    }
    let mut got = 0;
    let mut completed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got < n || completed < n {
        tokio::select! {
            e = eb.recv() => if let Event::BlockReceived { session, red, .. } = e.expect("events") {
                let (_, b) = sent.iter().find(|(s, _)| *s == session).expect("known session");
                assert_eq!(&red, b);
                got += 1;
            } else { panic!("receiver: unexpected event") },
            e = ea.recv() => match e.expect("events") {
                Event::TransmissionCompleted { .. } => completed += 1,
                other => panic!("sender: unexpected {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!("timeout: {got} received, {completed} completed"),
        }
    }
    let sa = ha.stats().await.unwrap();
    assert!(sa.engine.data_segments_retransmitted > 0, "{sa:?}");
    ha.shutdown().await;
    hb.shutdown().await;
}

/// Records every destination it sees; drops everything sent to `blocked`.
struct Recorder {
    seen: Arc<Mutex<Vec<Destination>>>,
    blocked: u64,
}

impl Impairment for Recorder {
    fn on_send(&mut self, now: Instant, dest: Destination, d: Bytes) -> Vec<(Instant, Bytes)> {
        self.seen.lock().unwrap().push(dest);
        if dest.engine == self.blocked {
            Vec::new()
        } else {
            vec![(now, d)]
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impairment_sees_destinations_and_spans_change_at_run_time() {
    const C: u64 = 30;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (hb, mut eb) = LtpDriver::spawn(DriverConfig::new(any), engine(B, A, 2)).unwrap();
    let (hc, _ec) = LtpDriver::spawn(DriverConfig::new(any), engine(C, A, 3)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut ca = DriverConfig::new(any);
    ca.spans = vec![(B, hb.local_addr()), (C, hc.local_addr())];
    ca.impairment = Some(Box::new(Recorder {
        seen: seen.clone(),
        blocked: C,
    }));
    let mut a = engine(A, B, 1);
    a.add_span(C, span());
    let (ha, mut ea) = LtpDriver::spawn(ca, a).unwrap();
    hb.set_span_address(A, ha.local_addr()).await.unwrap();
    hc.set_span_address(A, ha.local_addr()).await.unwrap();

    // Span C starts with a long round trip, so its blocked checkpoint is not retransmitted
    // during the test; the change applies to timers started afterwards.
    let slow = SpanConfig {
        owlt_outbound: Duration::from_secs(30),
        owlt_inbound: Duration::from_secs(30),
        ..span()
    };
    ha.configure_span(C, slow).await.unwrap();
    let to_b = ha.send_block(B, 1, block(5000, 1), 5000).await.unwrap();
    let to_c = ha.send_block(C, 1, block(5000, 2), 5000).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    let mut cancelled = false;
    while events.len() < 2 {
        tokio::select! {
            e = eb.recv() => match e.expect("events") {
                Event::BlockReceived { session, .. } => assert_eq!(session, to_b),
                other => panic!("receiver: unexpected {other:?}"),
            },
            e = ea.recv() => events.push(e.expect("events")),
            _ = tokio::time::sleep_until(deadline) => panic!("timeout: {events:?}"),
        }
        // The block to C cannot complete: once B's has, cancel every export to C.
        if events.len() == 1 && !cancelled {
            assert_eq!(events[0], Event::TransmissionCompleted { session: to_b });
            assert_eq!(ha.cancel_exports(C).await.unwrap(), vec![to_c]);
            assert!(ha.cancel_exports(C).await.unwrap().is_empty());
            cancelled = true;
        }
    }
    assert_eq!(
        events[1],
        Event::ExportCancelled {
            session: to_c,
            reason: CancelReason::UserCancelled,
            by_peer: false
        }
    );
    let seen = seen.lock().unwrap().clone();
    for (engine, addr) in [(B, hb.local_addr()), (C, hc.local_addr())] {
        assert!(
            seen.contains(&Destination { engine, addr }),
            "{engine} not seen: {seen:?}"
        );
    }
    assert!(seen
        .iter()
        .all(|d| (d.engine == B && d.addr == hb.local_addr())
            || (d.engine == C && d.addr == hc.local_addr())));
    let stats = ha.stats().await.unwrap();
    assert!(stats.impaired_drops > 0, "{stats:?}");
    for h in [ha, hb, hc] {
        h.shutdown().await;
    }
}

/// Records the time stamp the driver gives each segment it sends, and lets all of them through.
struct Stamps(Arc<Mutex<Vec<Instant>>>);

impl Impairment for Stamps {
    fn on_send(&mut self, now: Instant, _: Destination, d: Bytes) -> Vec<(Instant, Bytes)> {
        self.0.lock().unwrap().push(now);
        vec![(now, d)]
    }

    fn on_send_parts(
        &mut self,
        now: Instant,
        _: Destination,
        header: Bytes,
        payload: Bytes,
        out: &mut Vec<(Instant, Bytes, Bytes)>,
    ) {
        self.0.lock().unwrap().push(now);
        out.push((now, header, payload));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_send_batch_is_stamped_with_its_own_time() {
    // The engine records a checkpoint's send time from the time the driver gives it with the
    // segment (for the checkpoint's timer and the round trip sampled from its answer), so
    // that time must be taken for each batch the socket takes (64 KiB: 48 segments here),
    // not once per turn of the driver's loop (up to 2048 segments: a 4 MiB block
    // in two turns, its last checkpoint stamped as if sent when the block started).
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (hb, mut eb) = LtpDriver::spawn(DriverConfig::new(any), engine(B, A, 2)).unwrap();
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let mut ca = DriverConfig::new(any);
    ca.spans = vec![(B, hb.local_addr())];
    ca.impairment = Some(Box::new(Stamps(stamps.clone())));
    // A batch ends with the datagram that takes it to `flush_bytes`, and all of this block's
    // but its last carry more than 1000 octets.
    let per_batch = ca.io.flush_bytes / 1000;
    let (ha, mut ea) = LtpDriver::spawn(ca, engine(A, B, 1)).unwrap();
    hb.set_span_address(A, ha.local_addr()).await.unwrap();

    let len = 4 << 20;
    let sent = ha.send_block(B, 1, block(len, 3), len).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut delivered, mut completed) = (false, false);
    while !(delivered && completed) {
        tokio::select! {
            e = eb.recv() => match e.expect("events") {
                Event::BlockReceived { session, red, .. } => {
                    assert_eq!((session, red.len()), (sent, len));
                    delivered = true;
                }
                other => panic!("receiver: unexpected {other:?}"),
            },
            e = ea.recv() => {
                assert_eq!(e.expect("events"), Event::TransmissionCompleted { session: sent });
                completed = true;
            }
            _ = tokio::time::sleep_until(deadline) => panic!("timeout"),
        }
    }
    let stamps = stamps.lock().unwrap().clone();
    assert!(stamps.len() >= len / 1400, "{} segments", stamps.len());
    let longest = stamps
        .chunk_by(|a, b| a == b)
        .map(|run| run.len())
        .max()
        .unwrap_or(0);
    assert!(
        longest <= per_batch,
        "{longest} segments carried one time stamp; one send batch holds {per_batch}"
    );
    // The answer to the block's checkpoint was a round-trip sample.
    let stats = ha.stats().await.unwrap();
    assert!(stats.round_trips.contains_key(&B), "{stats:?}");
    for h in [ha, hb] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_queue_is_bounded_in_octets_of_block_data() {
    // The receiving user takes its time: with room for 100 000 octets of block data, one
    // 64 KiB red part at a time waits in the channel; the rest wait in the engine (and the
    // sender's reports), and every block still arrives intact once the user reads.
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cb = DriverConfig::new(any);
    cb.event_queue_bytes = 100_000;
    let (hb, mut eb) = LtpDriver::spawn(cb, engine(B, A, 2)).unwrap();
    let mut ca = DriverConfig::new(any);
    ca.spans = vec![(B, hb.local_addr())];
    let (ha, mut ea) = LtpDriver::spawn(ca, engine(A, B, 1)).unwrap();
    hb.set_span_address(A, ha.local_addr()).await.unwrap();
    let blocks: Vec<Bytes> = (0..6).map(|i| block(64 * 1024, i)).collect();
    for b in &blocks {
        ha.send_block(B, 1, b.clone(), b.len()).await.unwrap();
    }
    // Counted before the user takes anything: once it takes an event, the driver may at once
    // put the next one in (that is the point), so a second `try_recv` would race with it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while eb.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Time for more events to arrive if the bound did not hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(eb.len(), 1, "only one 64 KiB red part fits in the channel");
    let mut got = Vec::new();
    match eb.try_recv() {
        Ok(Event::BlockReceived { red, .. }) => got.push(red),
        other => panic!("expected one red part, got {other:?}"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < blocks.len() {
        tokio::select! {
            e = eb.recv() => if let Some(Event::BlockReceived { red, .. }) = e { got.push(red) },
            _ = ea.recv() => {},
            _ = tokio::time::sleep_until(deadline) => panic!("{} of {} blocks", got.len(), blocks.len()),
        }
    }
    got.sort();
    let mut want = blocks.clone();
    want.sort();
    assert!(got == want, "red parts differ");
    ha.shutdown().await;
    hb.shutdown().await;
}

/// Receives one LTP segment on `socket` within five seconds.
async fn segment_at(socket: &tokio::net::UdpSocket) -> Segment {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a segment within 5 s")
        .unwrap();
    Segment::decode(&Bytes::copy_from_slice(&buf[..n])).expect("a valid segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_from_an_ephemeral_port_is_answered_at_its_configured_address() {
    // INTEROP.md: ION sends every segment from an ephemeral UDP port and expects our segments
    // at its configured address (its "seat"); HDTN pings with a cancel for a session it never
    // opened. The peer here is two plain UDP sockets: the seat, which only receives, and an
    // ephemeral one, which only sends. Our driver must take the peer's block from the
    // ephemeral port and answer at the seat, by the engine ID in the segments.
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let seat = tokio::net::UdpSocket::bind(any).await.unwrap();
    let ephemeral = tokio::net::UdpSocket::bind(any).await.unwrap();
    let mut config = DriverConfig::new(any);
    config.spans = vec![(A, seat.local_addr().unwrap())];
    let (hb, mut eb) = LtpDriver::spawn(config, engine(B, A, 2)).unwrap();
    let to_b = hb.local_addr();

    let session = SessionId {
        originator: A,
        number: 0x8765_4321,
    };
    let data = block(2000, 9);
    let plain = Segment::new(
        session,
        SegmentBody::Data(DataSegment {
            kind: DataKind::Red,
            client_service_id: 1,
            offset: 0,
            data: data.slice(..1000),
            checkpoint: None,
        }),
    )
    .to_bytes();
    let checkpoint = Segment::new(
        session,
        SegmentBody::Data(DataSegment {
            kind: DataKind::RedCheckpointEorpEob,
            client_service_id: 1,
            offset: 1000,
            data: data.slice(1000..),
            checkpoint: Some(CheckpointInfo {
                checkpoint_serial: 0x1234_5678,
                report_serial: 0,
            }),
        }),
    )
    .to_bytes();
    ephemeral.send_to(&plain, to_b).await.unwrap();
    ephemeral.send_to(&checkpoint, to_b).await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(5), eb.recv())
        .await
        .expect("delivery within 5 s")
        .expect("events");
    assert!(
        matches!(&delivered, Event::BlockReceived { session: s, red, client_service_id: 1 }
            if *s == session && *red == data),
        "{delivered:?}"
    );
    // The report answering the checkpoint comes to the seat, claiming the whole red part.
    let report = segment_at(&seat).await;
    assert_eq!(report.session, session);
    let SegmentBody::Report(r) = report.body else {
        panic!("expected a report, got {report:?}");
    };
    assert_eq!(r.checkpoint_serial, 0x1234_5678);
    assert_eq!(
        r.claims,
        vec![Claim {
            offset: 0,
            length: 2000
        }]
    );
    ephemeral
        .send_to(
            &Segment::new(
                session,
                SegmentBody::ReportAck {
                    report_serial: r.report_serial,
                },
            )
            .to_bytes(),
            to_b,
        )
        .await
        .unwrap();

    // HDTN's keep-alive: a cancel from the sender of a session never opened, answered with
    // its ack (at the seat), and nothing else.
    let ping = SessionId {
        originator: A,
        number: (1 << 62) - 1,
    };
    ephemeral
        .send_to(
            &Segment::new(
                ping,
                SegmentBody::CancelFromSender(CancelReason::UserCancelled),
            )
            .to_bytes(),
            to_b,
        )
        .await
        .unwrap();
    let ack = segment_at(&seat).await;
    assert_eq!(ack.session, ping);
    assert_eq!(ack.body, SegmentBody::CancelAckToSender);

    // Nothing was ever sent to the ephemeral port, and the import closed on the report-ack
    // (a bounded wait: the driver answers within microseconds on loopback).
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), ephemeral.recv_from(&mut buf))
            .await
            .is_err(),
        "a segment went to the ephemeral port"
    );
    let stats = hb.stats().await.unwrap();
    assert_eq!(stats.engine.open_import_sessions, 0, "{stats:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), eb.recv())
            .await
            .is_err(),
        "the ping had a side effect"
    );
    hb.shutdown().await;
}

/// Requests and shutdowns racing with the driver's stop all end: a command whose reply never
/// comes, because the task stopped while the command was on its way, must not leave its
/// caller waiting (dtnd's node and its LTP adapter both stop the driver, concurrently; one
/// such stop once waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_a_shutdown_all_end() {
    for round in 0..1000u64 {
        let (h, _events) = LtpDriver::spawn(
            DriverConfig::new("127.0.0.1:0".parse().unwrap()),
            engine(A, B, round),
        )
        .unwrap();
        let mut callers = Vec::new();
        for k in 0..16 {
            let h = h.clone();
            callers.push(tokio::spawn(async move {
                if k % 2 == 0 {
                    h.shutdown().await;
                } else {
                    let _ = h.stats().await;
                }
            }));
        }
        for c in callers {
            tokio::time::timeout(Duration::from_secs(10), c)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a caller still waits"))
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_that_drops_each_block_at_once_lends_its_buffer_to_the_next() {
    // In a window of sessions the next block's segments come right behind the last one's
    // end-of-red-part checkpoint, often in the same receive batch. The driver ends its turn at
    // the delivery and lets the client run first: a client that drops the block at once has
    // returned its reassembly buffer by the time the next block's first segment is handled,
    // and that block reuses the buffer (already faulted in) instead of taking fresh memory.
    // One thread, and the test sends from a blocking socket without yielding, so both blocks'
    // segments are in the driver's socket before it reads any of them.
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sock = std::net::UdpSocket::bind(any).unwrap();
    let mut config = DriverConfig::new(any);
    config.spans = vec![(A, sock.local_addr().unwrap())];
    let (hb, mut eb) = LtpDriver::spawn(config, engine(B, A, 2)).unwrap();
    let to_b = hb.local_addr();
    // Where each delivered red part lies, and its length; the client drops it at once.
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = eb.recv().await {
            if let Event::BlockReceived { red, .. } = e {
                let _ = tx.send((red.as_ptr() as usize, red.len()));
            }
        }
    });
    // Three 80 KiB blocks (reassembled in pooled buffers), segmented by an engine of our own.
    let now = Instant::now();
    let mut a = engine(A, B, 1);
    let len = 80 * 1024;
    let sessions: Vec<SessionId> = (0..3)
        .map(|i| a.send_block(B, 1, block(len, i), len, now).unwrap())
        .collect();
    let mut of_block: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
    while let Some((_, datagram)) = a.poll_transmit(now) {
        let session = Segment::decode(&datagram).unwrap().session;
        let i = sessions.iter().position(|s| *s == session).unwrap();
        of_block[i].push(datagram);
    }
    // The first block but its last segment; then, back to back, that segment and the next
    // block; then the same again for the third.
    let (last, first) = of_block[0].split_last().unwrap();
    for d in first {
        sock.send_to(d, to_b).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut burst = vec![last.clone()];
    burst.extend(of_block[1].iter().cloned());
    for d in &burst {
        sock.send_to(d, to_b).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for d in &of_block[2] {
        sock.send_to(d, to_b).unwrap();
    }
    let mut parts = Vec::new();
    for _ in 0..3 {
        let part = tokio::time::timeout(Duration::from_secs(5), delivered.recv())
            .await
            .expect("a block within 5 s")
            .expect("the client task runs");
        parts.push(part);
    }
    assert!(parts.iter().all(|&(_, l)| l == len), "{parts:?}");
    assert_eq!(
        parts[1].0, parts[0].0,
        "the second block reused the first's buffer"
    );
    assert_eq!(parts[2].0, parts[0].0, "the third block reused it again");
    hb.shutdown().await;
}
