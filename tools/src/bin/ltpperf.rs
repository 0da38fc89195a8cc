//! `ltpperf`: an iperf for LTP (RFC 5326) over UDP, with a raw-UDP reference mode.
//!
//! `ltpperf recv --bind ADDR` receives; `ltpperf send --to ADDR --blocks N --block-size B
//! --segment-size S` sends N blocks through the `ltp` engine and UDP driver (optionally with
//! emulated loss and delay on its own sends) and prints goodput, segments sent and retransmitted,
//! and sessions completed/cancelled. With `--raw` on both sides it blasts plain UDP datagrams of
//! the segment size (same total octets) so the LTP figure can be compared with the raw path.
//! Goodput is in bits per second.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use ltp::driver::{DriverConfig, LtpDriver, SimpleImpairment};
use ltp::{Engine, EngineConfig, Event, SendError, SpanConfig};
use rand::{RngCore, SeedableRng};
use serde_json::json;

#[derive(Parser)]
#[command(name = "ltpperf", about = "Measure LTP (RFC 5326) goodput over UDP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Receive blocks (or raw datagrams) and report goodput.
    Recv {
        /// Local UDP address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// Our LTP engine ID.
        #[arg(long, default_value_t = 2)]
        engine_id: u64,
        /// Raw UDP mode (the sender must use --raw too).
        #[arg(long)]
        raw: bool,
        /// Print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Exit after this many seconds without traffic, once something was received.
        #[arg(long, default_value_t = 3.0)]
        idle_exit: f64,
        /// Exit after this many seconds in any case.
        #[arg(long, default_value_t = 600.0)]
        max_time: f64,
        /// Socket buffer size (SO_RCVBUF and SO_SNDBUF), octets.
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        socket_buffer: usize,
    },
    /// Send blocks (or raw datagrams) and report goodput.
    Send {
        /// Receiver's UDP address.
        #[arg(long)]
        to: SocketAddr,
        /// Our LTP engine ID.
        #[arg(long, default_value_t = 1)]
        engine_id: u64,
        /// The receiver's LTP engine ID.
        #[arg(long, default_value_t = 2)]
        peer_engine_id: u64,
        /// Number of blocks.
        #[arg(long)]
        blocks: u64,
        /// Block size, octets.
        #[arg(long)]
        block_size: usize,
        /// Fraction of each block sent red (reliable); the rest is green.
        #[arg(long, default_value_t = 1.0)]
        red_fraction: f64,
        /// Largest segment (UDP payload), octets.
        #[arg(long)]
        segment_size: usize,
        /// Export sessions in parallel.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Emulated loss probability on our sends (0..1).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Emulated one-way delay on our sends, ms.
        #[arg(long, default_value_t = 0)]
        delay: u64,
        /// Margin added to the round trip (2 × --delay) for the checkpoint retransmission
        /// timer, ms (RFC 5326 §6.1: the peer's processing and queueing time). The default
        /// suits loopback and LANs; long-haul and space links need the engine default (200) or
        /// more.
        #[arg(long, default_value_t = 20)]
        timer_margin: u64,
        /// Raw UDP mode (the receiver must use --raw too).
        #[arg(long)]
        raw: bool,
        /// Print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Seed of the loss emulation and the engine.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        /// Socket buffer size (SO_RCVBUF and SO_SNDBUF), octets.
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        socket_buffer: usize,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Recv {
            bind,
            engine_id,
            raw,
            json,
            idle_exit,
            max_time,
            socket_buffer,
        } => {
            let idle = Duration::from_secs_f64(idle_exit.max(0.01));
            let max = Duration::from_secs_f64(max_time.max(0.01));
            if raw {
                recv_raw(bind, json, idle, max, socket_buffer)
            } else {
                runtime()?.block_on(recv_ltp(bind, engine_id, json, idle, max, socket_buffer))
            }
        }
        Cmd::Send {
            to,
            engine_id,
            peer_engine_id,
            blocks,
            block_size,
            red_fraction,
            segment_size,
            window,
            loss,
            delay,
            timer_margin,
            raw,
            json,
            seed,
            timeout,
            socket_buffer,
        } => {
            if !(0.0..=1.0).contains(&red_fraction) || !(0.0..=1.0).contains(&loss) {
                bail!("--red-fraction and --loss must be within 0..=1");
            }
            if block_size == 0 || blocks == 0 || segment_size == 0 || window == 0 {
                bail!("--blocks, --block-size, --segment-size and --window must be positive");
            }
            if raw {
                send_raw(to, blocks, block_size, segment_size, json, socket_buffer)
            } else {
                let p = SendParams {
                    to,
                    engine_id,
                    peer_engine_id,
                    blocks,
                    block_size,
                    red_len: (block_size as f64 * red_fraction).round() as usize,
                    segment_size,
                    window,
                    loss,
                    delay: Duration::from_millis(delay),
                    timer_margin: Duration::from_millis(timer_margin),
                    seed,
                    timeout: Duration::from_secs_f64(timeout.max(0.01)),
                    socket_buffer,
                };
                runtime()?.block_on(send_ltp(p, json))
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn bps(bytes: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        bytes as f64 * 8.0 / elapsed.as_secs_f64()
    }
}

struct SendParams {
    to: SocketAddr,
    engine_id: u64,
    peer_engine_id: u64,
    blocks: u64,
    block_size: usize,
    red_len: usize,
    segment_size: usize,
    window: usize,
    loss: f64,
    delay: Duration,
    timer_margin: Duration,
    seed: u64,
    timeout: Duration,
    socket_buffer: usize,
}

async fn send_ltp(p: SendParams, json_out: bool) -> Result<()> {
    let span = SpanConfig {
        max_segment_size: p.segment_size,
        max_export_sessions: p.window,
        max_queued_blocks: p.window,
        owlt_outbound: p.delay,
        owlt_inbound: Duration::ZERO,
        timer_margin: p.timer_margin,
        ..SpanConfig::default()
    };
    let mut engine = Engine::new(
        p.engine_id,
        EngineConfig {
            seed: p.seed,
            max_block_size: (p.block_size as u64).max(EngineConfig::default().max_block_size),
            ..EngineConfig::default()
        },
    );
    engine.add_span(p.peer_engine_id, span);
    let bind: SocketAddr = if p.to.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut cfg = DriverConfig::new(bind);
    cfg.spans = vec![(p.peer_engine_id, p.to)];
    cfg.send_buffer = p.socket_buffer;
    cfg.recv_buffer = p.socket_buffer;
    if p.loss > 0.0 || !p.delay.is_zero() {
        cfg.impairment = Some(Box::new(SimpleImpairment::new(p.loss, p.delay, p.seed)));
    }
    let (handle, mut events) = LtpDriver::spawn(cfg, engine).context("binding UDP socket")?;

    let mut data = vec![0u8; p.block_size];
    rand::rngs::SmallRng::seed_from_u64(p.seed).fill_bytes(&mut data);
    let block = Bytes::from(data);

    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + p.timeout;
    let (mut submitted, mut completed, mut cancelled) = (0u64, 0u64, 0u64);
    let mut completed_bytes = 0u64;
    while completed + cancelled < p.blocks {
        // Keep the engine's window and queue full.
        while submitted < p.blocks {
            match handle
                .send_block(p.peer_engine_id, 1, block.clone(), p.red_len)
                .await
            {
                Ok(_) => submitted += 1,
                Err(ltp::driver::DriverError::Send(SendError::QueueFull)) => break,
                Err(e) => return Err(e).context("send_block"),
            }
        }
        let ev = tokio::select! {
            ev = events.recv() => ev.context("driver stopped")?,
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("timeout after {:?}", p.timeout);
                break;
            }
        };
        match ev {
            Event::TransmissionCompleted { .. } => {
                completed += 1;
                completed_bytes += p.block_size as u64;
            }
            Event::ExportCancelled { reason, .. } => {
                cancelled += 1;
                eprintln!("session cancelled: {reason:?}");
            }
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    let st = handle.stats().await.context("stats")?;
    handle.shutdown().await;
    let goodput = bps(completed_bytes, elapsed);
    let e = &st.engine;
    if json_out {
        println!(
            "{}",
            json!({
                "mode": "ltp",
                "goodput_bps": goodput,
                "blocks_completed": completed,
                "blocks_cancelled": cancelled,
                "bytes_completed": completed_bytes,
                "segments_sent": e.segments_sent,
                "segments_retransmitted": e.data_segments_retransmitted,
                "checkpoints_retransmitted": e.checkpoints_retransmitted,
                "bytes_sent": e.bytes_sent,
                "datagrams_sent": st.datagrams_sent,
                "impaired_drops": st.impaired_drops,
                "elapsed_s": elapsed.as_secs_f64(),
                "block_size": p.block_size,
                "red_len": p.red_len,
                "segment_size": p.segment_size,
                "window": p.window,
                "loss": p.loss,
                "timer_margin_ms": p.timer_margin.as_millis() as u64,
            })
        );
    } else {
        println!(
            "goodput {:.1} Mbit/s, {completed} blocks completed, {cancelled} cancelled in {:.3} s",
            goodput / 1e6,
            elapsed.as_secs_f64()
        );
        println!(
            "segments sent {} ({} octets), data segments retransmitted {}, checkpoints retransmitted {}",
            e.segments_sent, e.bytes_sent, e.data_segments_retransmitted, e.checkpoints_retransmitted
        );
    }
    if completed + cancelled < p.blocks {
        bail!("timed out: {completed} of {} blocks completed", p.blocks);
    }
    Ok(())
}

async fn recv_ltp(
    bind: SocketAddr,
    engine_id: u64,
    json_out: bool,
    idle: Duration,
    max: Duration,
    socket_buffer: usize,
) -> Result<()> {
    let engine = Engine::new(
        engine_id,
        EngineConfig {
            accept_unknown_peers: true,
            ..EngineConfig::default()
        },
    );
    let mut cfg = DriverConfig::new(bind);
    cfg.learn_peer_addresses = true;
    cfg.send_buffer = socket_buffer;
    cfg.recv_buffer = socket_buffer;
    let (handle, mut events) = LtpDriver::spawn(cfg, engine).context("binding UDP socket")?;
    if !json_out {
        println!("listening on {}", handle.local_addr());
    }
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut last_seen_datagrams = 0u64;
    let (mut blocks, mut red_bytes, mut green_bytes, mut cancelled) = (0u64, 0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ev = events.recv() => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                match ev.context("driver stopped")? {
                    Event::BlockReceived { red, .. } => {
                        blocks += 1;
                        red_bytes += red.len() as u64;
                    }
                    Event::GreenSegment { data, .. } => green_bytes += data.len() as u64,
                    Event::ImportCancelled { reason, .. } => {
                        cancelled += 1;
                        tracing::info!(?reason, "import cancelled");
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let st = handle.stats().await.context("stats")?;
                let now = Instant::now();
                if st.datagrams_received != last_seen_datagrams {
                    last_seen_datagrams = st.datagrams_received;
                    first.get_or_insert(now);
                    last = now;
                }
                if (first.is_some() && now.duration_since(last) >= idle)
                    || now.duration_since(start) >= max
                {
                    break;
                }
            }
        }
    }
    let st = handle.stats().await.context("stats")?;
    handle.shutdown().await;
    let span = first.map(|f| last.duration_since(f)).unwrap_or_default();
    let goodput = bps(red_bytes + green_bytes, span);
    if json_out {
        println!(
            "{}",
            json!({
                "mode": "ltp",
                "goodput_bps": goodput,
                "blocks_received": blocks,
                "red_bytes": red_bytes,
                "green_bytes": green_bytes,
                "imports_cancelled": cancelled,
                "datagrams": st.datagrams_received,
                "segments_received": st.engine.segments_received,
                "elapsed_s": span.as_secs_f64(),
            })
        );
    } else {
        println!(
            "{blocks} blocks, {red_bytes} red + {green_bytes} green octets, {cancelled} cancelled, goodput {:.1} Mbit/s",
            goodput / 1e6
        );
    }
    Ok(())
}

fn raw_socket(bind: SocketAddr, buffer: usize) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&bind.into())?;
    Ok(s.into())
}

fn recv_raw(
    bind: SocketAddr,
    json_out: bool,
    idle: Duration,
    max: Duration,
    buffer: usize,
) -> Result<()> {
    let sock = raw_socket(bind, buffer).context("binding UDP socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    if !json_out {
        println!("listening on {}", sock.local_addr()?);
    }
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let (mut first, mut last) = (None::<Instant>, start);
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                datagrams += 1;
                bytes += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("recv"),
        }
        let now = Instant::now();
        if (first.is_some() && now.duration_since(last) >= idle) || now.duration_since(start) >= max
        {
            break;
        }
    }
    let span = first.map(|f| last.duration_since(f)).unwrap_or_default();
    let goodput = bps(bytes, span);
    if json_out {
        println!(
            "{}",
            json!({ "mode": "raw", "goodput_bps": goodput, "datagrams": datagrams, "bytes": bytes,
                    "elapsed_s": span.as_secs_f64() })
        );
    } else {
        println!(
            "{datagrams} datagrams, {bytes} octets, goodput {:.1} Mbit/s",
            goodput / 1e6
        );
    }
    Ok(())
}

fn send_raw(
    to: SocketAddr,
    blocks: u64,
    block_size: usize,
    segment_size: usize,
    json_out: bool,
    buffer: usize,
) -> Result<()> {
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = raw_socket(bind, buffer).context("binding UDP socket")?;
    let total = blocks * block_size as u64;
    let payload = vec![0xa5u8; segment_size.min(65_507)];
    let start = Instant::now();
    let (mut sent, mut datagrams) = (0u64, 0u64);
    while sent < total {
        let n = payload.len().min((total - sent) as usize);
        match sock.send_to(&payload[..n], to) {
            Ok(k) => {
                sent += k as u64;
                datagrams += 1;
            }
            // ENOBUFS or a transient error: try again.
            Err(_) => std::thread::yield_now(),
        }
    }
    let elapsed = start.elapsed();
    if json_out {
        println!(
            "{}",
            json!({ "mode": "raw", "send_rate_bps": bps(sent, elapsed), "datagrams": datagrams,
                    "bytes": sent, "elapsed_s": elapsed.as_secs_f64() })
        );
    } else {
        println!(
            "sent {datagrams} datagrams, {sent} octets at {:.1} Mbit/s",
            bps(sent, elapsed) / 1e6
        );
    }
    Ok(())
}
