//! Issue 5, crash: the relay B of a line A–B–C (TCPCL, and LTP) is SIGKILLed at random (seeded,
//! printed) moments during a transfer of mixed-size bundles, at least ten times, and restarted
//! with the same configuration and store. Every bundle still arrives at C's application exactly
//! once: B acknowledged nothing it had not stored (custody, DESIGN.md principle 4: over TCPCL
//! the final XFER_ACK, over LTP the report that completes the red part, wait for the store),
//! and a bundle that B forwards again after a restart is recognised by its RFC 9171 §5.1
//! identity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conformance::*;

#[test]
fn relay_killed_ten_times_every_bundle_arrives_exactly_once() {
    relay_killed_ten_times(LineCl::Tcpcl, "relay_crash");
}

#[test]
fn ltp_relay_killed_ten_times_every_bundle_arrives_exactly_once() {
    relay_killed_ten_times(LineCl::Ltp, "relay_crash_ltp");
}

fn relay_killed_ten_times(cl: LineCl, test: &str) {
    const N: usize = 1000;
    const KILLS: usize = 10;
    let dir = TempDir::new(test);
    let [a, mut b, c] = start_line(dir.path(), cl, "group");
    let seed = seed(test);
    let mut rng = SplitMix(seed);
    let sizes = mixed_sizes(&mut rng, N, 3);
    let recv = bprecv_json(&c.agent(), "ipn:3.5", N, Duration::from_secs(300));
    let sent = AtomicUsize::new(0);
    let started = Instant::now();
    let a_agent = a.agent();
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            bpsend_all(
                &a_agent,
                "ipn:3.5",
                &sizes,
                4,
                Duration::from_secs(240),
                Some(&sent),
            )
        });
        for k in 0..KILLS {
            // A random moment: 100–500 ms after the previous restart (the transfer of 1,000
            // bundles spans the kills; the progress printed shows it).
            let up = Duration::from_millis(rng.range(100, 500));
            std::thread::sleep(up);
            let delivered = c.metrics().sum("dtn_bundles_delivered_total");
            b.kill();
            eprintln!(
                "{test}: kill {} of B after {up:?} up; {} sent by A, {delivered} delivered at C, \
                 t={:?}",
                k + 1,
                sent.load(Ordering::Relaxed),
                started.elapsed()
            );
            let down = Duration::from_millis(rng.range(0, 300));
            std::thread::sleep(down);
            b.restart();
        }
        let retries = sender.join().expect("sender thread");
        eprintln!(
            "{test}: all sent after {:?} ({retries} retries)",
            started.elapsed()
        );
    });
    assert!(b.starts() as usize > KILLS);
    let out = recv.wait(Duration::from_secs(320));
    let received = parse_bprecv_json(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{test}: {} received after {:?}",
        received.len(),
        started.elapsed()
    );
    if let Err(e) = check_exactly_once(&received, &sizes) {
        panic!(
            "{test} (seed {seed}): {e}\nbprecv: {:?} {}\n--- b ---\n{}\n--- c ---\n{}",
            out.status,
            out.stderr,
            b.log_tail(),
            c.log_tail()
        );
    }
    assert!(out.success(), "bprecv failed: {}", out.stderr);
    assert_nothing_more(&c.agent(), "ipn:3.5", Duration::from_secs(3));
}

#[test]
fn delivering_node_killed_right_after_the_acks_delivers_nothing_again() {
    // Issue 5: "delivers nothing twice to an application" holds for the node that delivers,
    // too. bprecv exits once every ack it sent was answered, and the node answers an ack once
    // the delivered-id record is on disk; a SIGKILL the moment bprecv has exited must
    // therefore bring no bundle back after the restart. (Before acks were answered that way,
    // the records and removals were lazy group-commit writes, up to 5 ms behind the answer.)
    const N: usize = 100;
    const ROUNDS: usize = 3;
    let dir = TempDir::new("delivering_node_crash");
    let mut c = Dtnd::start("c", dir.path(), NodeConfig::new("ipn:3.0", dir.path()));
    let sizes = vec![200; N];
    for round in 0..ROUNDS {
        let recv = bprecv_json(&c.agent(), "ipn:3.5", N, Duration::from_secs(60));
        bpsend_all(
            &c.agent(),
            "ipn:3.5",
            &sizes,
            4,
            Duration::from_secs(60),
            None,
        );
        let out = recv.wait(Duration::from_secs(90));
        let received = parse_bprecv_json(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = check_exactly_once(&received, &sizes) {
            panic!("round {round}: {e}\n{}", c.log_tail());
        }
        assert!(out.success(), "bprecv failed: {}", out.stderr);
        c.kill();
        c.restart();
        assert_nothing_more(&c.agent(), "ipn:3.5", Duration::from_secs(2));
    }
}
