//! Runs `ltpperf recv` and `ltpperf send` on loopback (LTP mode, then raw UDP mode) with small
//! transfers and checks the JSON summaries.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ltpperf");

/// Kills the child if the test fails half-way.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn last_json(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn run(raw: bool, extra: &[&str]) -> (Value, Value) {
    // Below the ephemeral range, so that no connection takes it before the receiver binds
    // it (see `test_support::free_udp_port`).
    let port = test_support::free_udp_port();
    let addr = format!("127.0.0.1:{port}");
    let mut recv_args = vec!["recv", "--bind", &addr, "--json", "--idle-exit", "1"];
    if raw {
        recv_args.push("--raw");
    }
    let mut recv = Guard(
        Command::new(BIN)
            .args(&recv_args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Give the receiver a moment to bind: wait until the port is taken (bounded).
    let t0 = Instant::now();
    while std::net::UdpSocket::bind(&addr).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "receiver did not bind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut send_args = vec![
        "send",
        "--to",
        &addr,
        "--blocks",
        "4",
        "--block-size",
        "200000",
        "--segment-size",
        "1400",
        "--json",
        "--timeout",
        "30",
    ];
    if raw {
        send_args.push("--raw");
    }
    send_args.extend_from_slice(extra);
    let send = Command::new(BIN).args(&send_args).output().unwrap();
    assert!(send.status.success(), "sender failed: {send:?}");
    let s = last_json(&send.stdout);
    // The receiver exits by itself after the idle time (bounded wait).
    let t0 = Instant::now();
    loop {
        if recv.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "receiver did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    for line in BufReader::new(recv.0.stdout.take().unwrap()).lines() {
        out.extend_from_slice(line.unwrap().as_bytes());
        out.push(b'\n');
    }
    (s, last_json(&out))
}

#[test]
fn ltp_mode_transfers_and_reports_json() {
    let (s, r) = run(
        false,
        &["--red-fraction", "0.75", "--loss", "0.02", "--window", "4"],
    );
    assert_eq!(s["blocks_completed"], 4, "{s}");
    assert_eq!(s["blocks_cancelled"], 0, "{s}");
    assert!(s["goodput_bps"].as_f64().unwrap() > 0.0);
    assert!(s["segments_sent"].as_u64().unwrap() >= 4 * 200_000 / 1400);
    assert!(s["segments_retransmitted"].as_u64().is_some());
    // Every block's checkpoints were answered: the round trip was sampled.
    assert!(s["round_trip_us"].as_u64().is_some(), "{s}");
    assert!(s["elapsed_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["blocks_received"], 4, "{r}");
    assert_eq!(r["red_bytes"], 4 * 150_000, "{r}");
    // Each end says how much CPU it used (on Unix: a process that moved 800 000 octets
    // through its engine used some).
    for side in [&s, &r] {
        let (user, system) = (&side["cpu"]["user_s"], &side["cpu"]["system_s"]);
        assert!(
            user.as_f64().is_some() && system.as_f64().is_some(),
            "{side}"
        );
        if cfg!(unix) {
            assert!(
                user.as_f64().unwrap() + system.as_f64().unwrap() > 0.0,
                "{side}"
            );
        }
    }
}

#[test]
fn raw_mode_reports_json() {
    let (s, r) = run(true, &[]);
    assert_eq!(s["bytes"], 800_000, "{s}");
    assert!(r["datagrams"].as_u64().unwrap() > 0, "{r}");
    assert!(r["goodput_bps"].as_f64().is_some(), "{r}");
    assert!(s["cpu"]["user_s"].as_f64().is_some(), "{s}");
    assert!(r["cpu"]["system_s"].as_f64().is_some(), "{r}");
}

#[test]
fn raw_mode_uses_the_driver_socket_path() {
    let (s, r) = run(true, &[]);
    // Both sides report the I/O path they used: the driver's (batched on Linux).
    assert_eq!(s["io"]["batch"], cfg!(target_os = "linux"), "{s}");
    assert_eq!(r["io"]["batch"], cfg!(target_os = "linux"), "{r}");
    let (datagrams, calls) = (
        s["datagrams"].as_u64().unwrap(),
        s["send_calls"].as_u64().unwrap(),
    );
    assert_eq!(datagrams, 800_000u64.div_ceil(1400), "{s}");
    if cfg!(target_os = "linux") {
        assert!(calls < datagrams, "sendmmsg batches: {s}");
    }
    // --raw-header: the same datagrams, each sent as a header buffer and a block slice.
    let (s, r) = run(true, &["--raw-header", "20"]);
    assert_eq!(s["raw_header"], 20, "{s}");
    assert_eq!(s["bytes"], 800_000, "{s}");
    assert_eq!(s["datagrams"], datagrams, "{s}");
    assert_eq!(r["datagrams"], datagrams, "{r}");
    // --no-batch: one system call per datagram.
    let (s, _) = run(true, &["--no-batch"]);
    assert_eq!(s["io"]["batch"], false, "{s}");
    assert_eq!(s["send_calls"], s["datagrams"], "{s}");
}

#[test]
fn ltp_mode_paces_with_rate() {
    // 800 000 octets at 40 Mbit/s (5 MB/s) take at least ~0.15 s (less the 64 KiB burst).
    let (s, r) = run(false, &["--rate", "40", "--window", "4"]);
    assert_eq!(s["blocks_completed"], 4, "{s}");
    assert_eq!(s["rate_mbps"], 40.0, "{s}");
    assert!(s["elapsed_s"].as_f64().unwrap() >= 0.12, "{s}");
    assert_eq!(r["blocks_received"], 4, "{r}");
}

#[test]
fn ltp_mode_copies_checkpoints_when_asked() {
    // With copies on any link, each end-of-red-part checkpoint goes twice (unless the report
    // answering it came before the copy left: the engine's scripted tests pin that down).
    let (s, r) = run(
        false,
        &[
            "--checkpoint-copies",
            "1",
            "--checkpoint-copies-min-loss",
            "0",
            "--loss",
            "0.05",
        ],
    );
    assert_eq!(s["blocks_completed"], 4, "{s}");
    assert_eq!(s["checkpoint_copies"], 1, "{s}");
    assert!(s["checkpoint_copies_sent"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(r["blocks_received"], 4, "{r}");
    // By default copies go only once the receiver's reports show loss: none on a clean link.
    let (s, _) = run(false, &[]);
    assert_eq!(s["checkpoint_copies_sent"], 0, "{s}");
}

#[test]
fn ltp_mode_flow_control_and_pinning() {
    // The default flow control (4 MiB in flight) and one without it; the sender pinned to a
    // CPU on Linux (--cpu). Both report what they ran with.
    let pin: &[&str] = if cfg!(target_os = "linux") {
        &["--cpu", "0"]
    } else {
        &[]
    };
    let (s, r) = run(false, pin);
    assert_eq!(s["blocks_completed"], 4, "{s}");
    assert_eq!(s["max_in_flight"], 4 * 1024 * 1024, "{s}");
    assert_eq!(s["busy_poll_us"], 1000, "{s}");
    assert_eq!(r["blocks_received"], 4, "{r}");
    let (s, _) = run(false, &["--max-in-flight", "0", "--busy-poll-us", "0"]);
    assert_eq!(s["blocks_completed"], 4, "{s}");
    assert!(s["max_in_flight"].is_null(), "{s}");
    assert_eq!(s["busy_poll_us"], 0, "{s}");
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_ltpperf_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // `ltpperf send ... | head -1`: here the reader is gone before the summary is printed.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let to = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_ltpperf"))
        .args(["send", "--to", &to, "--raw", "--blocks", "1"])
        .args(["--block-size", "1400", "--segment-size", "1400"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("ltpperf runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

#[test]
fn a_raw_header_as_long_as_the_datagram_is_refused() {
    let out = Command::new(BIN)
        .args(["send", "--to", "127.0.0.1:9", "--raw", "--blocks", "1"])
        .args(["--block-size", "1400", "--segment-size", "1400"])
        .args(["--raw-header", "1400"])
        .output()
        .expect("ltpperf runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--raw-header"), "{stderr}");
}
