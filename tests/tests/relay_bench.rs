//! Relay throughput: bundles/s through one relay node for 1 KiB bundles, durable (sled, group
//! commit) and memory-only, with the machine's reference figures measured in the same run.
//!
//! Run the measurement (ignored by default; release profile):
//!
//! ```text
//! cargo test -p conformance --release --test relay_bench -- --ignored --nocapture
//! # knobs: DTN_BENCH_RELAY_COUNT (default 100000), DTN_BENCH_RELAY_WINDOW (default 256) for the
//! # relay alone; DTN_BENCH_COUNT (default 20000), DTN_BENCH_WINDOW (default 128) for the line
//! ```
//!
//! Two setups, both over TCPCLv4 on loopback, 1,024-byte payloads, default `dtnd` configuration
//! (group commit `5ms`, `max_in_flight` 256):
//!
//! - **Relay alone** (the issue-5 figure): one `dtnd` B between `bpgen --tcpcl-to B
//!   --tcpcl-sink C`, a TCPCL source (as `ipn:1.0`, W transfers in flight, bundles built before
//!   the clock starts) and a TCPCL sink (as `ipn:3.0`, acknowledging each transfer at once).
//!   B receives, stores, routes, forwards and releases each bundle, and acknowledges it to the
//!   source only once it is durable or the sink confirmed it (custody). The figure is N divided
//!   by the time from the first send to the last arrival at the sink; B's CPU time is printed
//!   beside it. The generator's own ceiling (source straight to sink) is measured first.
//! - **Line through agents**: three `dtnd` A–B–C; `bpgen` sends through A's agent with W sends
//!   in flight and counts (and acknowledges) deliveries at C's agent. This figure covers A's
//!   agent ingest and store, B, and C's store and delivery, all on the same cores.
//!
//! The machine reference from the same run is raw TCP on loopback with 1 KiB writes
//! (`bpgen --tcp-reference`). The aim set by issue 5 is ≥ 50,000 bundles/s durable through a
//! relay.
//!
//! Measured 2026-12-01, release profile, a VM with 2 cores shared with other engineers'
//! builds and tests (figures vary by ±20 % from run to run); two runs at c0da49e:
//!
//! | path                                              | run 1 bundles/s | run 2 bundles/s |
//! |---------------------------------------------------|-----------------|-----------------|
//! | raw TCP loopback, 1 KiB writes                    | 616,891         | 655,466         |
//! | bpgen TCPCL source → sink, no relay               | 237,172         | 221,604         |
//! | relay alone, group commit (durable)               | 66,565          | 78,947          |
//! | relay alone, memory only                          | 63,926          | 66,880          |
//! | line: one hop A→B, group commit                   | 6,159           | 6,854           |
//! | line: relay A→B→C, group commit (durable)         | 4,516           | 5,803           |
//! | line: relay A→B→C, memory only                    | 9,485           | 14,741          |
//!
//! B's CPU per relayed bundle, durable: 13 µs (run 1) and 11 µs (run 2); memory only: 14 µs
//! and 12 µs. In both runs over 99.6 % of the bundles B relayed were never written (held
//! inserts released once the sink confirmed them; see `node::store`); the rest stayed in B
//! longer than the 5 ms hold and were written and removed again. Durable and memory-only are
//! now within the run-to-run spread of each other: the relay's cost is the bundle processing
//! and the TCPCL sessions, not the store.
//!
//! Before this (0d60854, same setup and machine, two runs): relay alone durable 42,064 and
//! 33,581 bundles/s (B: 26 and 33 µs CPU per bundle; 4–12 % of the bundles written), memory
//! only 48,419 and 43,244; raw TCP 391,678 and 300,142; generator ceiling 187,798 and
//! 208,941. What changed: held inserts are one hash-map entry outside the write-back buffer
//! (they were three buffered sled entries in a B-tree, scanned at every flush); custody
//! acknowledgements run as callbacks from the store (`Store::on_persisted`) instead of one
//! spawned task per bundle; the TCPCL session loop handles a batch per turn and keeps one
//! timer. Earlier still (76d79b5, before held inserts): relay alone, group commit,
//! 10,367 to 12,053 bundles/s (B: 99 to 116 µs CPU per bundle), memory only 34,360 to 38,400.
//!
//! What bounds the figures here: the relay alone is CPU-bound (B, bpgen's source and sink
//! and the kernel's loopback share 2 cores, with other work on the machine). A profile of B
//! at c0da49e (`perf record -e cpu-clock --call-graph dwarf`, durable, 100,000 bundles):
//! 55 % of its CPU in the core task (reception and validation 9 %, routing and the
//! forwarding rewrite 18 %, of which re-reading the bundle from the store 4 % and the
//! rewrite and copy into one buffer 6 %; held insert 7 %; transfer outcomes and release 8 %),
//! 34 % in the TCPCL session tasks and their socket calls, 6 % in the runtime's idle
//! polling, 4 % in the group-commit thread and sled. The line through agents runs three
//! daemons and bpgen on the same 2 cores; with 128 sends in flight a bundle needs longer than
//! the 5 ms hold to cross the line and come back acknowledged, so every node writes it: it
//! measures the machine and the agent path more than the relay.

use std::time::Duration;

use conformance::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `bpgen` and returns its JSON summary (last stdout line).
fn bpgen(args: &[&str], timeout: Duration) -> serde_json::Value {
    let out = Tool::spawn("bpgen", args, None).wait(timeout);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.success(),
        "bpgen {args:?} failed: {:?}\n{text}\n{}",
        out.status,
        out.stderr
    );
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bpgen summary {last:?}: {e}"))
}

/// Runs bpgen between `endpoints` (its source and receiver options) with `count` bundles of
/// 1 KiB to `dest`, `window` in flight; checks that every bundle arrived once and returns the
/// summary.
fn bpgen_load(endpoints: &[&str], count: u64, window: u64, dest: &str) -> serde_json::Value {
    let (count_s, window_s) = (count.to_string(), window.to_string());
    let mut args = endpoints.to_vec();
    args.extend([
        "--count",
        &count_s,
        "--size",
        "1024",
        "--window",
        &window_s,
        "--timeout",
        "600",
        "--json",
        dest,
    ]);
    let v = bpgen(&args, Duration::from_secs(700));
    assert_eq!(v["received"].as_u64(), Some(count), "{v}");
    assert_eq!(v["duplicates"].as_u64(), Some(0), "{v}");
    v
}

fn through_line(durability: &str, count: u64, window: u64, dest: &str, hops: usize) -> f64 {
    let dir = TempDir::new(&format!("bench-{durability}"));
    let nodes = start_line(dir.path(), LineCl::Tcpcl, durability);
    let receiver = if hops == 2 { &nodes[2] } else { &nodes[1] };
    let (a, r) = (nodes[0].agent(), receiver.agent());
    let v = bpgen_load(&["--node", &a, "--recv-node", &r], count, window, dest);
    v["per_second"].as_f64().expect("per_second")
}

/// bpgen's TCPCL source sends `count` bundles to `to` with `window` transfers in flight; its
/// sink listens on `sink` as `ipn:3.0`.
fn bpgen_tcpcl(to: &str, sink: u16, count: u64, window: u64) -> serde_json::Value {
    let sink = format!("127.0.0.1:{sink}");
    bpgen_load(
        &["--tcpcl-to", to, "--tcpcl-sink", &sink],
        count,
        window,
        "ipn:3.5",
    )
}

/// The relay alone: one `dtnd` B between bpgen's TCPCL source (as `ipn:1.0`) and bpgen's TCPCL
/// sink (as `ipn:3.0`, acknowledging at once). Returns bundles/s and B's CPU seconds.
fn relay_only(durability: &str, count: u64, window: u64) -> (f64, f64, String) {
    let dir = TempDir::new(&format!("relay-only-{durability}"));
    let sink = free_tcp_port();
    let mut c = NodeConfig::new("ipn:2.0", dir.path());
    c.durability = durability.to_string();
    c.neighbours = vec![Neighbour {
        name: "c".into(),
        node: "ipn:3.0".into(),
        link: Link::Tcpcl(sink),
        accept_primary_without_crc: false,
    }];
    c.routes = vec![("ipn:3.*".into(), "c".into())];
    let b = Dtnd::start("b", dir.path(), c);
    let cpu0 = cpu_seconds(b.pid());
    let v = bpgen_tcpcl(&b.tcpcl().to_string(), sink, count, window);
    let cpu = cpu_seconds(b.pid()) - cpu0;
    let m = b.metrics();
    let store = format!(
        "held released {}, held flushed {}, entries written {}, syncs {}",
        m.sum_where("dtn_store_held_total", "outcome", "released"),
        m.sum_where("dtn_store_held_total", "outcome", "flushed"),
        m.sum("dtn_store_entries_written_total"),
        m.sum("dtn_store_syncs_total"),
    );
    (v["per_second"].as_f64().expect("per_second"), cpu, store)
}

/// User + system CPU seconds of a process (Linux `/proc/PID/stat`; 0 elsewhere).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

#[test]
fn bpgen_through_relay_smoke() {
    // A small run that checks the generator and the relay path work (not a measurement).
    let r = through_line("memory", 300, 16, "ipn:3.5", 2);
    assert!(r > 0.0);
}

#[test]
fn bpgen_tcpcl_through_relay_smoke() {
    // The relay-only setup works (not a measurement).
    let (r, _, _) = relay_only("group", 300, 16);
    assert!(r > 0.0);
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture (see the module doc)"]
fn relay_throughput_1kib() {
    let count = env_or("DTN_BENCH_COUNT", 20_000);
    let window = env_or("DTN_BENCH_WINDOW", 128);
    let relay_count = env_or("DTN_BENCH_RELAY_COUNT", 100_000);
    let relay_window = env_or("DTN_BENCH_RELAY_WINDOW", 256);
    let tcp = bpgen(
        &[
            "--tcp-reference",
            "--count",
            &(count * 10).to_string(),
            "--size",
            "1024",
            "--json",
        ],
        Duration::from_secs(120),
    );
    let tcp_rate = tcp["per_second"].as_f64().unwrap_or(0.0);
    let sink = free_tcp_port();
    let generator = bpgen_tcpcl(
        &format!("127.0.0.1:{sink}"),
        sink,
        relay_count,
        relay_window,
    )["per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let (relay_durable, cpu_durable, store) = relay_only("group", relay_count, relay_window);
    let (relay_memory, cpu_memory, _) = relay_only("memory", relay_count, relay_window);
    let direct = through_line("group", count, window, "ipn:2.5", 1);
    let durable = through_line("group", count, window, "ipn:3.5", 2);
    let memory = through_line("memory", count, window, "ipn:3.5", 2);
    let mb = |r: f64| r * 1024.0 / 1e6;
    let per_cpu = |cpu: f64| relay_count as f64 / cpu.max(1e-9);
    eprintln!("relay_bench: 1 KiB bundles");
    eprintln!(
        "  raw TCP loopback, 1 KiB writes:            {tcp_rate:>10.0} writes/s  {:>8.1} MB/s",
        mb(tcp_rate)
    );
    eprintln!("  relay alone ({relay_count} bundles, window {relay_window}):");
    eprintln!(
        "    bpgen TCPCL source -> sink (no relay):   {generator:>10.0} bundles/s {:>8.1} MB/s",
        mb(generator)
    );
    eprintln!(
        "    source -> B -> sink, group commit:       {relay_durable:>10.0} bundles/s {:>8.1} MB/s  (B: {cpu_durable:.2} s CPU, {:.0} bundles per CPU-second)",
        mb(relay_durable),
        per_cpu(cpu_durable)
    );
    eprintln!("      B's store: {store}");
    eprintln!(
        "    source -> B -> sink, memory only:        {relay_memory:>10.0} bundles/s {:>8.1} MB/s  (B: {cpu_memory:.2} s CPU, {:.0} bundles per CPU-second)",
        mb(relay_memory),
        per_cpu(cpu_memory)
    );
    eprintln!("  line of three dtnd through agents ({count} bundles, bpgen window {window}):");
    eprintln!(
        "    one hop A->B, group commit (no relay):   {direct:>10.0} bundles/s {:>8.1} MB/s",
        mb(direct)
    );
    eprintln!(
        "    relay A->B->C, group commit (durable):   {durable:>10.0} bundles/s {:>8.1} MB/s",
        mb(durable)
    );
    eprintln!(
        "    relay A->B->C, memory only:              {memory:>10.0} bundles/s {:>8.1} MB/s",
        mb(memory)
    );
    if relay_durable < 50_000.0 {
        eprintln!("  relay alone below the issue-5 aim of 50,000 bundles/s durable");
    }
}
