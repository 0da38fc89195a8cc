//! Interop on the wire with an independent LTP implementation: licklider 0.1.1 (Rust, its own
//! codec and engine; `licklider-cli` on crates.io, whose UDP service follows ION's
//! `udplso`/`udplsi`: one segment per datagram). Its `licklider send` and `licklider recv`
//! move one file as one block for client service 1 (red, or red and green), and exit once the
//! block is complete.
//!
//! Both ways, on loopback: a clean block, and a block over a lossy link, so that reports with
//! claims, gap retransmissions and their checkpoints cross between the two implementations.
//! When we send over the lossy link we also copy our checkpoints (`checkpoint_copies`), which
//! licklider sees as retransmitted checkpoints. From licklider: a block of red and green
//! parts, and a block through a relay that reorders it so that we send an asynchronous report
//! (RFC 5326 §3.2.2), which licklider acknowledges and completes on.
//!
//! Cancels, each way: we cancel an export midway (USR_CNCLD) and refuse licklider's block for
//! a client service we do not serve (UNREACH), and licklider names the reason as it gives the
//! block up; licklider refuses ours (UNREACH) and our export ends once. Its CLI exits as soon
//! as its session is cancelled, before the cancel-ack its engine queued is sure to leave, so
//! these cases check that our cancel is understood and that our session still closes (at the
//! cancel retransmission limit), not licklider's ack.
//!
//! The binary is found in `LICKLIDER_BIN_DIR` (default `$HOME/.cache/dtn-stack/licklider/bin`,
//! installed by `bash .ci/run`); set `DTN_SKIP_INTEROP=1` to skip when it is not installed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ltp::driver::{DriverConfig, EventReceiver, LtpDriver, LtpHandle, SimpleImpairment};
use ltp::segment::{Segment, SegmentBody};
use ltp::{Engine, EngineConfig, Event, SpanConfig};
use test_support::{PeerProcess, TempDir};

/// Our engine ID (beyond 32 bits: a 5-octet SDNV on the wire), and licklider's (one octet).
const OURS: u64 = (1 << 32) + 5;
const THEIRS: u64 = 2;

/// How long one transfer may take (the lossy ones take a few seconds here).
const WAIT: Duration = Duration::from_secs(60);

/// Starts `licklider` with `args`, its log at info level.
fn licklider(bin: &Path, args: &[&str]) -> PeerProcess {
    PeerProcess::spawn(bin, args, &[("RUST_LOG", "debug")])
}

/// Starts `licklider recv` listening at `listen` for a block from our engine at `ours`, to be
/// written to `out`, and waits until it listens.
fn licklider_recv(bin: &Path, listen: SocketAddr, ours: SocketAddr, out: &Path) -> PeerProcess {
    let (listen, peer_arg, engine) = (
        listen.to_string(),
        format!("{OURS}@{ours}"),
        THEIRS.to_string(),
    );
    let mut peer = licklider(
        bin,
        &[
            "recv",
            "--listen",
            &listen,
            "--engine",
            &engine,
            "--peer",
            &peer_arg,
            "--owlt-ms",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    peer.wait_for_line("listening", WAIT);
    peer
}

/// Starts `licklider send` of `file` (the first `red` octets red) from `listen` to our engine
/// at `ours`, with its own link impairment `impair`, if any.
fn licklider_send(
    bin: &Path,
    file: &Path,
    ours: SocketAddr,
    listen: SocketAddr,
    red: usize,
    impair: Option<&str>,
) -> PeerProcess {
    let (to, listen, engine, red) = (
        format!("{OURS}@{ours}"),
        listen.to_string(),
        THEIRS.to_string(),
        red.to_string(),
    );
    let mut args = vec![
        "send",
        file.to_str().unwrap(),
        "--to",
        &to,
        "--engine",
        &engine,
        "--listen",
        &listen,
        "--owlt-ms",
        "1",
        "--red",
        &red,
    ];
    if let Some(i) = impair {
        args.extend(["--impair", i]);
    }
    licklider(bin, &args)
}

fn block(len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|i| {
            ((i * 7) as u8)
                .wrapping_add((i >> 11) as u8)
                .wrapping_add(salt)
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Our engine's configuration for these tests.
fn our_engine() -> EngineConfig {
    EngineConfig {
        seed: 11,
        ..EngineConfig::default()
    }
}

/// Our span to licklider's engine, with `copies` checkpoint copies.
fn our_span(copies: u32) -> SpanConfig {
    SpanConfig {
        max_segment_size: 1400,
        owlt_outbound: Duration::from_millis(1),
        owlt_inbound: Duration::from_millis(1),
        timer_margin: Duration::from_millis(50),
        max_checkpoint_retransmissions: 50,
        max_report_retransmissions: 50,
        max_cancel_retransmissions: 50,
        checkpoint_copies: copies,
        ..SpanConfig::default()
    }
}

/// Our driver on a loopback port, running an engine configured as `engine` with `span` to
/// licklider's engine at `theirs`, and `loss` on our sends.
fn our_driver(
    theirs: SocketAddr,
    engine: EngineConfig,
    span: SpanConfig,
    loss: f64,
) -> (LtpHandle, EventReceiver) {
    let mut engine = Engine::new(OURS, engine);
    engine.add_span(THEIRS, span);
    let mut cfg = DriverConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.spans = vec![(THEIRS, theirs)];
    if loss > 0.0 {
        cfg.impairment = Some(Box::new(SimpleImpairment::new(loss, Duration::ZERO, 5)));
    }
    LtpDriver::spawn(cfg, engine).expect("our driver starts")
}

/// A UDP relay on loopback between licklider (at `theirs`) and us (at `ours`), bound before
/// either end is told of it: each sees the other at the relay's address (licklider takes
/// datagrams only from the address it was given for its peer). From licklider to us it
/// delivers the first end-of-red-part checkpoint before the data segment sent just before it,
/// so that the red part is completed by a segment that is not a checkpoint, after the
/// checkpoint's report claimed that segment missing (our asynchronous report, RFC 5326
/// §3.2.2); everything else goes through in order (one datagram late until the swap). Runs for
/// at most [`WAIT`].
fn run_reordering_relay(sock: tokio::net::UdpSocket, ours: SocketAddr, theirs: SocketAddr) {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        let mut held: Option<Vec<u8>> = None;
        let mut swapped = false;
        for _ in 0..1_000_000 {
            let idle = tokio::time::sleep(Duration::from_millis(20));
            let got = tokio::select! {
                r = sock.recv_from(&mut buf) => r.ok().map(|(n, from)| (buf[..n].to_vec(), from)),
                () = idle => None,
                () = tokio::time::sleep_until(deadline) => return,
            };
            let Some((d, from)) = got else {
                // Nothing for a while: what is held goes on.
                if let Some(h) = held.take() {
                    let _ = sock.send_to(&h, ours).await;
                }
                continue;
            };
            if from == ours {
                let _ = sock.send_to(&d, theirs).await;
                continue;
            }
            if swapped {
                let _ = sock.send_to(&d, ours).await;
                continue;
            }
            let eorp = Segment::decode(&Bytes::copy_from_slice(&d))
                .is_ok_and(|seg| matches!(&seg.body, SegmentBody::Data(ds) if ds.kind.is_eorp()));
            if eorp && held.is_some() {
                let _ = sock.send_to(&d, ours).await;
                let _ = sock.send_to(&held.take().unwrap(), ours).await;
                swapped = true;
            } else if let Some(h) = held.replace(d) {
                let _ = sock.send_to(&h, ours).await;
            }
        }
    });
}

/// The relay's socket on loopback, with buffers that hold a whole block's burst (the
/// default ones would drop part of it, and the block would need retransmissions).
fn relay_socket() -> tokio::net::UdpSocket {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sock.set_recv_buffer_size(8 << 20).unwrap();
    sock.set_send_buffer_size(8 << 20).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(sock.into()).unwrap()
}

/// How licklider's datagrams reach us.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Direct,
    /// Through [`run_reordering_relay`].
    Reordered,
}

/// licklider sends a block of `len` octets, the first `red` of them red (its own link
/// impairment `impair`, if any), over `route`; our engine must deliver the red part intact and
/// the green part's segments as they came, and licklider must see the transmission complete.
async fn they_send(
    bin: &Path,
    name: &str,
    len: usize,
    red: usize,
    impair: Option<&str>,
    route: Route,
) {
    let dir = TempDir::new(name);
    let data = block(len, 3);
    let file = dir.path().join("block.bin");
    std::fs::write(&file, &data).unwrap();
    let theirs = test_support::free_udp_addr();
    let (ours, mut events, ours_seen_by_them) = match route {
        Route::Direct => {
            let (ours, events) = our_driver(theirs, our_engine(), our_span(0), 0.0);
            let addr = ours.local_addr();
            (ours, events, addr)
        }
        Route::Reordered => {
            let relay = relay_socket();
            let relay_addr = relay.local_addr().unwrap();
            let (ours, events) = our_driver(relay_addr, our_engine(), our_span(0), 0.0);
            run_reordering_relay(relay, ours.local_addr(), theirs);
            (ours, events, relay_addr)
        }
    };
    let mut peer = licklider_send(bin, &file, ours_seen_by_them, theirs, red, impair);
    // The red part in one piece, the green part's segments one by one (§6.10, §6.11).
    let mut green = vec![None::<u8>; len - red];
    let mut end_of_block = false;
    let mut red_part = None;
    tokio::time::timeout(WAIT, async {
        while red_part.is_none() && red > 0 || !end_of_block && red < len {
            match events.recv().await.expect("our driver's events") {
                Event::BlockReceived {
                    red,
                    client_service_id,
                    ..
                } => {
                    assert_eq!(client_service_id, 1, "{name}: client service 1 (bundles)");
                    red_part = Some(red);
                }
                Event::GreenSegment {
                    offset,
                    data: piece,
                    end_of_block: eob,
                    ..
                } => {
                    let at = offset as usize - red;
                    for (i, b) in piece.iter().enumerate() {
                        green[at + i] = Some(*b);
                    }
                    end_of_block |= eob;
                }
                Event::ImportCancelled { reason, .. } => {
                    panic!("{name}: our import was cancelled: {reason:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: no block from licklider within {WAIT:?}"));
    if red > 0 {
        let got = red_part.expect("red part");
        assert_eq!(got.len(), red, "{name}: red part length");
        assert!(
            got == data.slice(..red),
            "{name}: red part differs from the file"
        );
    }
    // Green data is unreliable (§3.1): what arrived is the file's, and so is the end.
    let arrived = green.iter().filter(|b| b.is_some()).count();
    assert!(
        green
            .iter()
            .zip(&data[red..])
            .all(|(got, want)| got.is_none_or(|g| g == *want)),
        "{name}: green data differs from the file"
    );
    if red < len {
        assert!(end_of_block, "{name}: no green end-of-block");
        assert!(arrived > 0, "{name}: no green data");
    }
    // licklider exits 0 once our report acknowledged the whole red part.
    let status = tokio::task::block_in_place(|| peer.wait_exit(WAIT));
    assert!(
        status.success(),
        "{name}: licklider send ended with {status}"
    );
    // licklider acknowledged our reports (the asynchronous one too), and our import closed.
    // Not over its lossy link: it exits when it completes, and a lost report-ack of its
    // then leaves our report unacknowledged.
    let mut stats = ours.stats().await.unwrap().engine;
    for _ in 0..100 {
        if stats.open_import_sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = ours.stats().await.unwrap().engine;
    }
    if impair.is_none() {
        assert_eq!(
            stats.open_import_sessions, 0,
            "{name}: our import is still open (a report unacknowledged)"
        );
    }
    eprintln!(
        "{name}: received {red} red and {arrived} of {} green octets; reports sent {}, \
         retransmitted {}, asynchronous {}",
        len - red,
        stats.reports_sent,
        stats.reports_retransmitted,
        stats.asynchronous_reports_sent
    );
    if route == Route::Reordered {
        assert!(
            stats.asynchronous_reports_sent >= 1,
            "{name}: no asynchronous report"
        );
    }
    ours.shutdown().await;
}

/// Our engine sends a block of `len` octets (with `loss` on our sends and `copies` checkpoint
/// copies); licklider must write it intact, and our export must complete.
async fn we_send(bin: &Path, name: &str, len: usize, loss: f64, copies: u32) {
    let dir = TempDir::new(name);
    let data = block(len, 9);
    let file = dir.path().join("received.bin");
    let theirs = test_support::free_udp_addr();
    let (ours, mut events) = our_driver(theirs, our_engine(), our_span(copies), loss);
    let mut peer =
        tokio::task::block_in_place(|| licklider_recv(bin, theirs, ours.local_addr(), &file));
    let session = ours.send_block(THEIRS, 1, data.clone(), len).await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("our driver's events") {
                Event::TransmissionCompleted { session: s } if s == session => return,
                Event::ExportCancelled { reason, .. } => {
                    panic!("{name}: our export was cancelled: {reason:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: the block did not complete within {WAIT:?}"));
    let status = tokio::task::block_in_place(|| peer.wait_exit(WAIT));
    assert!(
        status.success(),
        "{name}: licklider recv ended with {status}"
    );
    let written = std::fs::read(&file).expect("licklider wrote the block");
    assert_eq!(written.len(), data.len(), "{name}: length written");
    assert!(written == data, "{name}: licklider wrote other octets");
    let stats = ours.stats().await.unwrap().engine;
    eprintln!(
        "{name}: sent {len} octets; data segments retransmitted {}, checkpoints retransmitted \
         {}, checkpoint copies {}",
        stats.data_segments_retransmitted,
        stats.checkpoints_retransmitted,
        stats.checkpoint_copies_sent
    );
    if loss > 0.0 {
        assert!(
            stats.data_segments_retransmitted > 0,
            "{name}: no loss to repair"
        );
    }
    if copies > 0 {
        assert!(
            stats.checkpoint_copies_sent > 0,
            "{name}: no checkpoint copy sent"
        );
    }
    ours.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licklider_sends_and_we_receive() {
    let Some(bin) = test_support::interop_peer(test_support::peers::LICKLIDER) else {
        return;
    };
    let direct = Route::Direct;
    they_send(&bin, "from-licklider-clean", 200_000, 200_000, None, direct).await;
    they_send(
        &bin,
        "from-licklider-red-and-green",
        200_000,
        120_000,
        None,
        direct,
    )
    .await;
    they_send(
        &bin,
        "from-licklider-lossy",
        1 << 20,
        1 << 20,
        Some("loss=0.1,dup=0.05,seed=7"),
        direct,
    )
    .await;
    // The checkpoint overtakes the data before it: we answer it with a report claiming a gap,
    // then report the completed red part asynchronously, which licklider must take (or at
    // least survive) as well as our first report.
    they_send(
        &bin,
        "from-licklider-reordered",
        200_000,
        200_000,
        None,
        Route::Reordered,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_send_and_licklider_receives() {
    let Some(bin) = test_support::interop_peer(test_support::peers::LICKLIDER) else {
        return;
    };
    we_send(&bin, "to-licklider-clean", 200_000, 0.0, 0).await;
    we_send(&bin, "to-licklider-lossy", 1 << 20, 0.1, 1).await;
}

/// Polls our engine's counters every 20 ms, at most `tries` times, until `done` holds; returns
/// the last counters.
async fn stats_until(
    ours: &LtpHandle,
    tries: u32,
    done: impl Fn(&ltp::EngineStats) -> bool,
) -> ltp::EngineStats {
    let mut stats = ours.stats().await.unwrap().engine;
    for _ in 0..tries {
        if done(&stats) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = ours.stats().await.unwrap().engine;
    }
    stats
}

/// Waits at most [`WAIT`] for export `session` to be cancelled, and returns the reason and
/// whether the peer cancelled it; fails if it completes instead.
async fn export_cancelled(
    events: &mut EventReceiver,
    session: ltp::SessionId,
    name: &str,
) -> (ltp::CancelReason, bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("our driver's events") {
                Event::ExportCancelled {
                    session: s,
                    reason,
                    by_peer,
                } if s == session => return (reason, by_peer),
                Event::TransmissionCompleted { session: s } if s == session => {
                    panic!("{name}: the export completed instead of being cancelled")
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: export not cancelled within {WAIT:?}"))
}

/// We cancel our export to licklider's receiver midway (RFC 5326 §6.15, USR_CNCLD): licklider
/// must acknowledge our cancel-from-sender (§6.18), so that our session closes after one
/// cancel segment instead of retransmitting it to the limit.
async fn we_cancel_midway(bin: &Path) {
    let name = "to-licklider-cancelled";
    let dir = TempDir::new(name);
    let file = dir.path().join("received.bin");
    let theirs = test_support::free_udp_addr();
    // Paced at 1 MB/s, the 2 MiB block is still going out when we cancel it. An
    // unacknowledged cancel goes out 6 times in all.
    let span = SpanConfig {
        rate_limit: Some(1_000_000),
        rate_burst: 16 * 1024,
        max_cancel_retransmissions: 5,
        ..our_span(0)
    };
    let (ours, mut events) = our_driver(theirs, our_engine(), span, 0.0);
    let mut peer =
        tokio::task::block_in_place(|| licklider_recv(bin, theirs, ours.local_addr(), &file));
    let len = 2 << 20;
    let session = ours
        .send_block(THEIRS, 1, block(len, 5), len)
        .await
        .unwrap();
    let sent = stats_until(&ours, 250, |s| s.data_segments_sent >= 50).await;
    assert!(sent.data_segments_sent >= 50, "{name}: no data went out");
    ours.cancel(session).await.unwrap();
    let (reason, by_peer) = export_cancelled(&mut events, session, name).await;
    assert_eq!(reason, ltp::CancelReason::UserCancelled, "{name}: reason");
    assert!(!by_peer, "{name}: we cancelled, not licklider");
    // licklider decoded our cancel and its reason, and gave the block up.
    tokio::task::block_in_place(|| peer.wait_for_line("reception cancelled: USR_CNCLD", WAIT));
    let status = tokio::task::block_in_place(|| peer.wait_exit(WAIT));
    assert!(
        !status.success(),
        "{name}: licklider recv ended with {status}"
    );
    assert!(!file.exists(), "{name}: licklider wrote a cancelled block");
    // licklider's engine queues a cancel-ack (§6.17), but its CLI exits on the cancel notice,
    // usually before the ack leaves: our export then closes at its cancel retransmission
    // limit (§6.15), which it must reach rather than stall.
    let stats = stats_until(&ours, 500, |s| s.open_export_sessions == 0).await;
    eprintln!(
        "{name}: data segments sent {}, cancels sent {}",
        stats.data_segments_sent, stats.cancels_sent
    );
    assert_eq!(
        stats.open_export_sessions, 0,
        "{name}: our export is still open"
    );
    assert!(stats.cancels_sent >= 1, "{name}: no cancel sent");
    ours.shutdown().await;
}

/// licklider sends a block for client service 1 to an engine that serves other client
/// services only: we refuse the session at its first segment with a cancel-from-receiver
/// (UNREACH), which licklider must decode and give the block up on.
async fn we_refuse_their_block(bin: &Path) {
    let name = "from-licklider-refused";
    let dir = TempDir::new(name);
    let file = dir.path().join("block.bin");
    std::fs::write(&file, block(200_000, 1)).unwrap();
    let theirs = test_support::free_udp_addr();
    let engine = EngineConfig {
        client_services: Some(vec![2]),
        ..our_engine()
    };
    let (ours, mut events) = our_driver(theirs, engine, our_span(0), 0.0);
    let mut peer = licklider_send(bin, &file, ours.local_addr(), theirs, 200_000, None);
    // licklider decoded our cancel and its reason, and gave the block up.
    tokio::task::block_in_place(|| peer.wait_for_line("transmission cancelled: UNREACH", WAIT));
    let status = tokio::task::block_in_place(|| peer.wait_exit(WAIT));
    assert!(
        !status.success(),
        "{name}: licklider send ended with {status}"
    );
    // The refusal holds no session state (nothing is opened, so no event; a later segment
    // of the session gets the cancel again): nothing was delivered, nothing stays open.
    let stats = ours.stats().await.unwrap().engine;
    eprintln!(
        "{name}: cancels sent {}, segments received {}",
        stats.cancels_sent, stats.segments_received
    );
    assert!(stats.cancels_sent >= 1, "{name}: no cancel sent");
    assert_eq!(
        stats.import_sessions_opened, 0,
        "{name}: an import was opened"
    );
    assert_eq!(stats.reassembly_bytes, 0, "{name}: refused data held");
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, Event::BlockReceived { .. } | Event::GreenSegment { .. }),
            "{name}: refused data delivered: {e:?}"
        );
    }
    ours.shutdown().await;
}

/// We send licklider's receiver a block for client service 2, which it does not serve: it
/// cancels our export with a cancel-from-receiver (UNREACH), which we must decode, report to
/// our client once, and close the export on.
async fn they_refuse_our_block(bin: &Path) {
    let name = "to-licklider-refused";
    let dir = TempDir::new(name);
    let file = dir.path().join("received.bin");
    let theirs = test_support::free_udp_addr();
    let (ours, mut events) = our_driver(theirs, our_engine(), our_span(0), 0.0);
    let peer =
        tokio::task::block_in_place(|| licklider_recv(bin, theirs, ours.local_addr(), &file));
    let len = 100_000;
    let session = ours
        .send_block(THEIRS, 2, block(len, 6), len)
        .await
        .unwrap();
    let (reason, by_peer) = export_cancelled(&mut events, session, name).await;
    assert_eq!(
        reason,
        ltp::CancelReason::UnreachableClient,
        "{name}: reason"
    );
    assert!(by_peer, "{name}: licklider cancelled, not we");
    // licklider answers each data segment of the session with a cancel of its own (it holds
    // no state for a refused session): we close the export once, and acknowledge each.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = ours.stats().await.unwrap().engine;
    eprintln!(
        "{name}: cancels received {}, data segments sent {}",
        stats.cancels_received, stats.data_segments_sent
    );
    assert_eq!(
        stats.open_export_sessions, 0,
        "{name}: our export is still open"
    );
    assert_eq!(
        stats.export_sessions_cancelled, 1,
        "{name}: exports cancelled"
    );
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(
                e,
                Event::ExportCancelled { .. } | Event::TransmissionCompleted { .. }
            ),
            "{name}: the export ended twice: {e:?}"
        );
    }
    drop(peer);
    ours.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_cross_between_us_and_licklider() {
    let Some(bin) = test_support::interop_peer(test_support::peers::LICKLIDER) else {
        return;
    };
    we_cancel_midway(&bin).await;
    we_refuse_their_block(&bin).await;
    they_refuse_our_block(&bin).await;
}
