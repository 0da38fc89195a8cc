//! `ltpperf`: an iperf for LTP (RFC 5326) over UDP, with a raw-UDP reference mode.
//!
//! `ltpperf recv --bind ADDR` receives; `ltpperf send --to ADDR --blocks N --block-size B
//! --segment-size S` sends N blocks through the `ltp` engine and UDP driver (optionally with
//! emulated loss and delay on its own sends) and prints goodput, segments sent and retransmitted,
//! and sessions completed/cancelled. With `--raw` on both sides it blasts plain UDP datagrams of
//! the segment size (same total octets, slices of one block of the block size, as LTP's
//! segments are) so the LTP figure can be compared with the raw path.
//! Raw mode sends and receives through the LTP driver's own socket I/O
//! (`ltp::driver::udp_io`: the same send queue and receive pool, `sendmmsg`/`recvmmsg`, UDP
//! GSO/GRO where the kernel has them, the same socket buffers), so the raw figure is the
//! machine's limit for that datagram size on that path and LTP/raw measures LTP's own cost.
//! `--no-gso`, `--no-gro` and `--no-batch` turn the batching off, on both modes alike.
//! Goodput is in bits per second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use ltp::driver::udp_io::UdpIo;
use ltp::driver::{DriverConfig, DriverStats, IoConfig, LtpDriver, SimpleImpairment};
use ltp::{Engine, EngineConfig, Event, SendError, SpanConfig};
use rand::{RngCore, SeedableRng};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "ltpperf",
    about = "Measure LTP (RFC 5326) goodput over UDP",
    long_about = "Measure LTP (RFC 5326) goodput over UDP, beside a raw UDP reference (--raw on \
both sides) that blasts datagrams of the segment size through the SAME socket I/O path as the \
LTP driver (same send queue, receive pool, sendmmsg/recvmmsg and UDP GSO/GRO where the kernel \
has them, same socket buffers): the raw figure is the machine's limit for that datagram size, \
and LTP/raw is LTP's own cost."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Socket I/O switches, the same for LTP and raw mode.
#[derive(clap::Args, Clone, Copy)]
struct IoFlags {
    /// No UDP GSO (UDP_SEGMENT) on sends.
    #[arg(long)]
    no_gso: bool,
    /// No UDP GRO (UDP_GRO) on receives.
    #[arg(long)]
    no_gro: bool,
    /// One send/receive system call per datagram (no sendmmsg/recvmmsg, no GSO/GRO).
    #[arg(long)]
    no_batch: bool,
    /// Request --socket-buffer beyond net.core.rmem_max/wmem_max (SO_RCVBUFFORCE and
    /// SO_SNDBUFFORCE; needs CAP_NET_ADMIN, else the kernel's cap applies).
    #[arg(long)]
    force_socket_buffer: bool,
    /// Pin the process to this CPU (like iperf3 -A): on a small machine, run the sender and
    /// the receiver on different CPUs, or the scheduler may wake both on one CPU and leave the
    /// other idle (Linux only).
    #[arg(long)]
    cpu: Option<usize>,
    /// LTP mode: the driver busy-polls its socket for this many microseconds after each
    /// datagram it reads or sends before it sleeps (`DriverConfig::busy_poll`; 0: off). Saves
    /// a wake-up per burst on both sides; costs at most that much CPU per burst. A waiting
    /// side's wake-up took about 0.25 ms on this project's VM (a timeline of 1 MiB blocks at
    /// window 1 with 5 % loss: each retransmission round paid two), so the default polls for
    /// longer than a round trip on loopback takes.
    #[arg(long, default_value_t = 1000)]
    busy_poll_us: u64,
}

impl IoFlags {
    /// Pins the process to `--cpu` (before the runtime starts: its thread inherits it).
    fn pin(self) -> Result<()> {
        let Some(cpu) = self.cpu else {
            return Ok(());
        };
        #[cfg(target_os = "linux")]
        {
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!("--cpu {cpu} is beyond the CPU set size");
            }
            // SAFETY: a zeroed cpu_set_t is a valid empty set, CPU_SET writes within it (the
            // index is checked above), and sched_setaffinity reads it for the calling thread.
            let r = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("pinning to CPU {cpu}"));
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        bail!("--cpu is supported on Linux only (CPU {cpu})")
    }

    /// The driver's busy polling (`--busy-poll-us`).
    fn busy_poll(self) -> Duration {
        Duration::from_micros(self.busy_poll_us)
    }

    fn config(self) -> IoConfig {
        IoConfig {
            batch: !self.no_batch,
            gso: !self.no_gso,
            gro: !self.no_gro,
            force_buffers: self.force_socket_buffer,
            ..IoConfig::default()
        }
    }
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
        /// Raw UDP mode (the sender must use --raw too): counts datagrams received through the
        /// driver's socket I/O path.
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
        /// LTP mode: octets of idle reassembly buffers the engine keeps for the next blocks
        /// (`EngineConfig::reassembly_pool`, 16 MiB by default in the engine). A block larger
        /// than the pool is reassembled in fresh memory, page faults and all (64 MiB blocks
        /// arrived at half the rate); the pool only keeps buffers that blocks needed anyway.
        #[arg(long, default_value_t = 256 * 1024 * 1024)]
        reassembly_pool: usize,
        /// Socket buffer size (SO_RCVBUF and SO_SNDBUF) to request, octets (the kernel caps
        /// it at net.core.rmem_max/wmem_max; the JSON says what it granted).
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        socket_buffer: usize,
        #[command(flatten)]
        io: IoFlags,
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
        /// Margin added to the round trip (2 × --delay) for the retransmission timers, ms
        /// (RFC 5326 §6.1: the peer's processing and queueing time). With the engine's
        /// adaptive timers (the default) this is the ceiling: the timers follow the measured
        /// round trip below it, and back off toward it when retransmissions go unanswered.
        #[arg(long, default_value_t = 200)]
        timer_margin: u64,
        /// With adaptive timers, the smallest margin over the measured round trip, µs (the
        /// span's `min_timer_margin`): a lost checkpoint waits at least this long beyond the
        /// round trip; a shorter one also fires on answers merely delayed by scheduling.
        #[arg(long, default_value_t = 250)]
        min_timer_margin_us: u64,
        /// Fixed retransmission timers: every timer lasts 2 × --delay + --timer-margin, as
        /// RFC 5326 §6.1 describes (no round-trip measurement).
        #[arg(long)]
        fixed_timers: bool,
        /// Raw UDP mode (the receiver must use --raw too): blasts datagrams of the segment size
        /// (same total octets), consecutive slices of one block of --block-size octets,
        /// through the driver's socket I/O path (batching, GSO).
        #[arg(long)]
        raw: bool,
        /// Raw mode: send each datagram as a header of this many octets (a buffer of its own)
        /// followed by a slice of the block, both gathered by the kernel, as LTP's data
        /// segments leave (0: each datagram one slice). Shows what that layout costs the
        /// machine apart from LTP's own work: the kernel copies two pieces per datagram, and
        /// in a GSO buffer each slice lands after the headers of the datagrams before it, so
        /// it loses the alignment it had in the block (an LTP sender with --segment-size 1400
        /// sends 1390-octet datagrams with 12-octet headers: compare --segment-size 1390
        /// --raw-header 12).
        #[arg(long, default_value_t = 0)]
        raw_header: usize,
        /// Pace the span at this many Mbit/s (the engine's per-span rate limit; 0: unpaced).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Pacing burst, octets (default: what --rate sends in 2 ms, at least 64 KiB: off
        /// Linux the driver's timers tick in milliseconds, and a smaller burst then caps the
        /// rate at about a burst per millisecond; on Linux they wake it to the microsecond).
        #[arg(long)]
        rate_burst: Option<u64>,
        /// Flow control: at most this many octets of new red data unacknowledged (the span's
        /// `max_bytes_in_flight`, with a discretionary checkpoint per quarter of it unless
        /// --checkpoint-every says otherwise; 0: no limit, only --window). The default, half
        /// of the receiver's default 8 MiB socket buffer, keeps a sender that is faster than
        /// its receiver from overrunning it.
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_in_flight: u64,
        /// A discretionary checkpoint every this many red segments of a session (the span's
        /// `checkpoint_every`; 0: only the checkpoint ending the red part, plus flow control's
        /// own, one per quarter of --max-in-flight).
        #[arg(long, default_value_t = 0)]
        checkpoint_every: u32,
        /// Copies of each checkpoint that ends a transmission (the span's `checkpoint_copies`):
        /// on a lossy link a lost end-of-red-part or retransmission checkpoint otherwise idles
        /// the session for a retransmission timer. Sent only while the receiver's reports
        /// claim at least --checkpoint-copies-min-loss of the data missing. 0: none, as RFC
        /// 5326 describes.
        #[arg(long, default_value_t = 1)]
        checkpoint_copies: u32,
        /// The share of red data (0 to 1) the receiver's reports must claim missing for
        /// checkpoints to be copied (the span's `checkpoint_copies_min_loss`; 0: on any link).
        #[arg(long, default_value_t = 0.01)]
        checkpoint_copies_min_loss: f64,
        /// Print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Seed of the loss emulation and the engine.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        /// Socket buffer size (SO_RCVBUF and SO_SNDBUF) to request, octets (the kernel caps
        /// it at net.core.rmem_max/wmem_max; the JSON says what it granted).
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        socket_buffer: usize,
        #[command(flatten)]
        io: IoFlags,
    },
}

fn main() -> Result<()> {
    // `ltpperf send ... | head -1`: end quietly when the reader of standard output goes away,
    // as Unix tools do (the default action of SIGPIPE), rather than panic in `println!` (Rust's
    // runtime ignores SIGPIPE, so the write fails instead). ltpperf's sockets are UDP, which
    // never raise SIGPIPE.
    #[cfg(unix)]
    // SAFETY: `signal` with `SIG_DFL` only sets the process's disposition of SIGPIPE back to
    // the default; no handler of ours is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
            reassembly_pool,
            socket_buffer,
            io: flags,
        } => {
            flags.pin()?;
            let idle = Duration::from_secs_f64(idle_exit.max(0.01));
            let max = Duration::from_secs_f64(max_time.max(0.01));
            if raw {
                let io = flags.config();
                runtime()?.block_on(recv_raw(bind, json, idle, max, socket_buffer, io))
            } else {
                let engine = Engine::new(
                    engine_id,
                    EngineConfig {
                        accept_unknown_peers: true,
                        reassembly_pool,
                        ..EngineConfig::default()
                    },
                );
                runtime()?.block_on(recv_ltp(
                    bind,
                    engine,
                    json,
                    idle,
                    max,
                    socket_buffer,
                    flags,
                ))
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
            min_timer_margin_us,
            fixed_timers,
            raw,
            raw_header,
            rate,
            rate_burst,
            max_in_flight,
            checkpoint_every,
            checkpoint_copies,
            checkpoint_copies_min_loss,
            json,
            seed,
            timeout,
            socket_buffer,
            io: flags,
        } => {
            flags.pin()?;
            if ![red_fraction, loss, checkpoint_copies_min_loss]
                .iter()
                .all(|f| (0.0..=1.0).contains(f))
            {
                bail!(
                    "--red-fraction, --loss and --checkpoint-copies-min-loss must be within 0..=1"
                );
            }
            if block_size == 0 || blocks == 0 || segment_size == 0 || window == 0 {
                bail!("--blocks, --block-size, --segment-size and --window must be positive");
            }
            if !(rate >= 0.0 && rate.is_finite()) {
                bail!("--rate must be a non-negative number of Mbit/s");
            }
            let io = flags.config();
            if raw {
                runtime()?.block_on(send_raw(RawSend {
                    to,
                    blocks,
                    block_size,
                    segment_size,
                    header: raw_header,
                    json,
                    buffer: socket_buffer,
                    io,
                }))
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
                    min_timer_margin: Duration::from_micros(min_timer_margin_us),
                    adaptive_timers: !fixed_timers,
                    seed,
                    timeout: Duration::from_secs_f64(timeout.max(0.01)),
                    socket_buffer,
                    rate_bytes: (rate * 1e6 / 8.0) as u64,
                    rate_burst: rate_burst
                        .unwrap_or_else(|| ((rate * 1e6 / 8.0 * 0.002) as u64).max(64 * 1024)),
                    max_in_flight: (max_in_flight > 0).then_some(max_in_flight),
                    checkpoint_every,
                    checkpoint_copies,
                    checkpoint_copies_min_loss,
                    io,
                    busy_poll: flags.busy_poll(),
                };
                runtime()?.block_on(send_ltp(p, json))
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread: the driver and the tool's own task take turns on it (and on the CPU given
    // with --cpu), as each end of the benchmark has one CPU to itself.
    tokio::runtime::Builder::new_current_thread()
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
    min_timer_margin: Duration,
    adaptive_timers: bool,
    seed: u64,
    timeout: Duration,
    socket_buffer: usize,
    /// Pacing of the span, octets per second (0: none).
    rate_bytes: u64,
    /// Pacing burst, octets.
    rate_burst: u64,
    /// Flow control limit, octets.
    max_in_flight: Option<u64>,
    /// Discretionary checkpoint spacing, red segments.
    checkpoint_every: u32,
    /// Copies of each checkpoint ending a transmission.
    checkpoint_copies: u32,
    /// Loss above which checkpoints are copied.
    checkpoint_copies_min_loss: f64,
    io: IoConfig,
    /// The driver's busy polling.
    busy_poll: Duration,
}

async fn send_ltp(p: SendParams, json_out: bool) -> Result<()> {
    let span = SpanConfig {
        max_segment_size: p.segment_size,
        max_export_sessions: p.window,
        max_queued_blocks: p.window,
        owlt_outbound: p.delay,
        owlt_inbound: Duration::ZERO,
        timer_margin: p.timer_margin,
        min_timer_margin: p.min_timer_margin,
        adaptive_timers: p.adaptive_timers,
        rate_limit: (p.rate_bytes > 0).then_some(p.rate_bytes),
        rate_burst: p.rate_burst,
        max_bytes_in_flight: p.max_in_flight,
        checkpoint_every: p.checkpoint_every,
        checkpoint_copies: p.checkpoint_copies,
        checkpoint_copies_min_loss: p.checkpoint_copies_min_loss,
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
    cfg.io = p.io;
    cfg.busy_poll = p.busy_poll;
    if p.loss > 0.0 || !p.delay.is_zero() {
        cfg.impairment = Some(Box::new(SimpleImpairment::new(p.loss, p.delay, p.seed)));
    }
    let (handle, mut events) = LtpDriver::spawn(cfg, engine).context("binding UDP socket")?;

    let block = random_block(p.block_size, p.seed);

    let start = Instant::now();
    // One timer for the whole run: a sleep made per event registers with the runtime's timer
    // each time, and wakes the runtime's driver with a system call (one per block).
    let timeout = tokio::time::sleep(p.timeout);
    tokio::pin!(timeout);
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
            _ = &mut timeout => {
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
                "checkpoint_copies_sent": e.checkpoint_copies_sent,
                "bytes_sent": e.bytes_sent,
                "datagrams_sent": st.datagrams_sent,
                "impaired_drops": st.impaired_drops,
                "send_calls": st.send_calls,
                "io": io_json(&st),
                "round_trip_us": st.round_trips.get(&p.peer_engine_id).map(|d| d.as_micros() as u64),
                "loss_estimate": st.losses.get(&p.peer_engine_id),
                "rate_mbps": p.rate_bytes as f64 * 8.0 / 1e6,
                "rate_burst": p.rate_burst,
                "max_in_flight": p.max_in_flight,
                "checkpoint_every": p.checkpoint_every,
                "checkpoint_copies": p.checkpoint_copies,
                "checkpoint_copies_min_loss": p.checkpoint_copies_min_loss,
                "busy_poll_us": p.busy_poll.as_micros() as u64,
                "elapsed_s": elapsed.as_secs_f64(),
                "block_size": p.block_size,
                "red_len": p.red_len,
                "segment_size": p.segment_size,
                "window": p.window,
                "loss": p.loss,
                "timer_margin_ms": p.timer_margin.as_millis() as u64,
                "min_timer_margin_us": p.min_timer_margin.as_micros() as u64,
                "adaptive_timers": p.adaptive_timers,
                "cpu": cpu_json(),
            })
        );
    } else {
        println!(
            "goodput {:.1} Mbit/s, {completed} blocks completed, {cancelled} cancelled in {:.3} s",
            goodput / 1e6,
            elapsed.as_secs_f64()
        );
        println!(
            "segments sent {} ({} octets), data segments retransmitted {}, checkpoints retransmitted {}, \
             checkpoint copies {}",
            e.segments_sent,
            e.bytes_sent,
            e.data_segments_retransmitted,
            e.checkpoints_retransmitted,
            e.checkpoint_copies_sent
        );
        if let Some(rtt) = st.round_trips.get(&p.peer_engine_id) {
            println!(
                "round trip (smoothed, from checkpoint to report) {} µs",
                rtt.as_micros()
            );
        }
        println!("{}", io_line(&st));
        println!("{}", cpu_line());
    }
    if completed + cancelled < p.blocks {
        bail!("timed out: {completed} of {} blocks completed", p.blocks);
    }
    Ok(())
}

async fn recv_ltp(
    bind: SocketAddr,
    engine: Engine,
    json_out: bool,
    idle: Duration,
    max: Duration,
    socket_buffer: usize,
    flags: IoFlags,
) -> Result<()> {
    let mut cfg = DriverConfig::new(bind);
    cfg.learn_peer_addresses = true;
    // The tool drops each block as it takes it: 4 MiB of blocks waiting in the channel is
    // plenty (a larger block still goes alone), and the driver's 64 MiB default let blocks
    // pile up there while the driver kept the thread, up to 30 MB resident for 8 MiB of
    // sessions in flight instead of 21 MB, at the same goodput.
    cfg.event_queue_bytes = 4 << 20;
    cfg.send_buffer = socket_buffer;
    cfg.recv_buffer = socket_buffer;
    cfg.io = flags.config();
    cfg.busy_poll = flags.busy_poll();
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
                "recv_calls": st.recv_calls,
                "io": io_json(&st),
                "elapsed_s": span.as_secs_f64(),
                "cpu": cpu_json(),
            })
        );
    } else {
        println!(
            "{blocks} blocks, {red_bytes} red + {green_bytes} green octets, {cancelled} cancelled, goodput {:.1} Mbit/s",
            goodput / 1e6
        );
        println!("{}", io_line(&st));
        println!("{}", cpu_line());
    }
    Ok(())
}

/// CPU time this process has used so far, user and system, in seconds (`getrusage(2)`,
/// all threads). With `--busy-poll-us 0` on both ends, an end whose CPU time is close to the
/// run's elapsed time is the saturated one; busy polling counts its spinning as CPU time.
/// (0, 0) where there is no `getrusage`.
fn cpu_times() -> (f64, f64) {
    #[cfg(unix)]
    {
        // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_SELF asks for this process's own figures.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return (0.0, 0.0);
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (secs(ru.ru_utime), secs(ru.ru_stime))
    }
    #[cfg(not(unix))]
    (0.0, 0.0)
}

/// [`cpu_times`] as JSON.
fn cpu_json() -> serde_json::Value {
    let (user, system) = cpu_times();
    json!({ "user_s": user, "system_s": system })
}

/// [`cpu_times`] as one line of text.
fn cpu_line() -> String {
    let (user, system) = cpu_times();
    format!("CPU time of this process: user {user:.3} s, system {system:.3} s")
}

/// The socket I/O figures of a driver, as JSON.
fn io_json(st: &DriverStats) -> serde_json::Value {
    json!({
        "batch": st.offload.batch,
        "gso_segments": st.offload.gso_segments,
        "gro": st.offload.gro,
        "socket_buffers_granted": [st.socket_buffers.0, st.socket_buffers.1],
        "datagrams_sent": st.datagrams_sent,
        "send_calls": st.send_calls,
        "send_errors": st.send_errors,
        "datagrams_received": st.datagrams_received,
        "recv_calls": st.recv_calls,
    })
}

/// The socket I/O figures of a driver, as one line of text.
fn io_line(st: &DriverStats) -> String {
    format!(
        "socket I/O: batch {} gso {} gro {}, buffers granted snd {} rcv {}; {} datagrams in {} send calls, {} in {} receive calls",
        st.offload.batch,
        st.offload.gso_segments,
        st.offload.gro,
        st.socket_buffers.0,
        st.socket_buffers.1,
        st.datagrams_sent,
        st.send_calls,
        st.datagrams_received,
        st.recv_calls
    )
}

/// The socket I/O figures of a raw-mode socket, as JSON.
fn raw_io_json(io: &UdpIo) -> serde_json::Value {
    let (o, c, b) = (io.offload(), io.counters(), io.socket_buffers());
    json!({
        "batch": o.batch,
        "gso_segments": o.gso_segments,
        "gro": o.gro,
        "socket_buffers_granted": [b.0, b.1],
        "datagrams_sent": c.datagrams_sent,
        "send_calls": c.send_calls,
        "send_errors": c.send_errors,
        "datagrams_received": c.datagrams_received,
        "recv_calls": c.recv_calls,
    })
}

async fn recv_raw(
    bind: SocketAddr,
    json_out: bool,
    idle: Duration,
    max: Duration,
    buffer: usize,
    io_config: IoConfig,
) -> Result<()> {
    let mut io = UdpIo::bind(bind, buffer, buffer, &io_config).context("binding UDP socket")?;
    if !json_out {
        println!("listening on {}", io.local_addr());
    }
    let start = Instant::now();
    let mut batch = Vec::new();
    let (mut first, mut last) = (None::<Instant>, start);
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    // The idle check's tick (one timer for the run, not one per wake-up).
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = io.readable() => {
                r.context("recv")?;
                // The driver's way: one receive call at a time, up to 1024 datagrams a turn.
                let mut budget = 1024usize;
                while budget > 0 {
                    batch.clear();
                    let t0 = Instant::now();
                    let n = io.try_recv(&mut batch, 1).context("recv")?;
                    if n == 0 {
                        break;
                    }
                    budget = budget.saturating_sub(n);
                    // From the start of the first call that returned data to the end of the
                    // last one.
                    first.get_or_insert(t0);
                    last = Instant::now();
                    datagrams += n as u64;
                    bytes += batch.iter().map(|(d, _)| d.len() as u64).sum::<u64>();
                }
            }
            _ = tick.tick() => {}
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
                    "recv_calls": io.counters().recv_calls, "io": raw_io_json(&io),
                    "elapsed_s": span.as_secs_f64(), "cpu": cpu_json() })
        );
    } else {
        let c = io.counters();
        println!(
            "{datagrams} datagrams, {bytes} octets in {} receive calls, goodput {:.1} Mbit/s",
            c.recv_calls,
            goodput / 1e6
        );
        println!("{}", cpu_line());
    }
    Ok(())
}

/// A block of `len` seeded random octets (what both modes send).
fn random_block(len: usize, seed: u64) -> Bytes {
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    Bytes::from(data)
}

/// What `ltpperf send --raw` sends, and how.
struct RawSend {
    to: SocketAddr,
    blocks: u64,
    block_size: usize,
    segment_size: usize,
    /// `--raw-header`: octets of each datagram sent from a header buffer of their own.
    header: usize,
    json: bool,
    buffer: usize,
    io: IoConfig,
}

async fn send_raw(r: RawSend) -> Result<()> {
    let RawSend {
        to,
        blocks,
        block_size,
        segment_size,
        header,
        json: json_out,
        buffer,
        io: io_config,
    } = r;
    let size = segment_size.min(65_507);
    if header >= size {
        bail!("--raw-header must be shorter than --segment-size");
    }
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut io = UdpIo::bind(bind, buffer, buffer, &io_config).context("binding UDP socket")?;
    let total = blocks * block_size as u64;
    // The datagrams are consecutive slices of one block of the block size, sent over and over,
    // as LTP's segments are slices of its blocks: the kernel reads them from as much memory.
    // (One datagram sent again and again stays in the CPU's first-level cache: from a 64 MiB
    // block, raw UDP measured 15-23 % less than that on this project's VM.)
    let block = random_block(block_size.max(size), 1);
    let head = Bytes::from(vec![0x55u8; header]);
    let start = Instant::now();
    let (mut queued, mut at) = (0u64, 0usize);
    // The driver's way: fill the bounded send queue, send it in batches, wait while the
    // socket buffer is full.
    while queued < total {
        while !io.batch_full() && queued < total {
            if at + size > block.len() {
                at = 0;
            }
            let n = size.min((total - queued) as usize);
            // With --raw-header, the header's octets come from their own buffer and the
            // block's slice is that much shorter (the next one starts where it ends).
            let h = if n > header { header } else { 0 };
            if h > 0 {
                io.push_parts(to, head.slice(..h), block.slice(at..at + n - h));
            } else {
                io.push(to, block.slice(at..at + n));
            }
            (queued, at) = (queued + n as u64, at + n - h);
        }
        if !io.flush() {
            io.writable().await.context("send")?;
        }
    }
    io.flush_all().await.context("send")?;
    let elapsed = start.elapsed();
    let c = io.counters();
    if json_out {
        println!(
            "{}",
            json!({ "mode": "raw", "send_rate_bps": bps(c.bytes_sent, elapsed),
                    "datagrams": c.datagrams_sent, "bytes": c.bytes_sent,
                    "send_calls": c.send_calls, "send_errors": c.send_errors,
                    "raw_header": header,
                    "io": raw_io_json(&io), "elapsed_s": elapsed.as_secs_f64(),
                    "cpu": cpu_json() })
        );
    } else {
        println!(
            "sent {} datagrams, {} octets in {} send calls at {:.1} Mbit/s",
            c.datagrams_sent,
            c.bytes_sent,
            c.send_calls,
            bps(c.bytes_sent, elapsed) / 1e6
        );
        println!("{}", cpu_line());
    }
    Ok(())
}
