//! Statistical fidelity of the link emulator, on virtual time (no wall clock).
//!
//! Each test drives a `LinkEmulator` with explicit `Instant`s (a base instant plus offsets),
//! over enough datagrams that the stated tolerances are several standard deviations wide, and
//! with fixed seeds, so the tests are deterministic.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use convergence::emulation::{
    DropReason, GilbertElliott, LinkEmulator, LinkProfile, Outage, Schedule, Verdict,
};

/// One delivered datagram: its sequence number, when it was submitted, when it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery {
    seq: u64,
    submitted: Duration,
    delivered: Duration,
}

/// What a run produced.
struct Run {
    verdicts: Vec<Verdict>,
    deliveries: Vec<Delivery>,
    emu: LinkEmulator,
}

fn datagram(seq: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size.max(8)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

fn seq_of(d: &Bytes) -> u64 {
    u64::from_be_bytes(d[..8].try_into().unwrap())
}

/// Submit `n` datagrams of `size` bytes, one every `interval` of virtual time, delivering
/// everything due before each submission, then drain the rest.
fn run(profile: LinkProfile, seed: u64, n: u64, interval: Duration, size: usize) -> Run {
    let t0 = Instant::now();
    let mut emu = LinkEmulator::new(profile, seed, t0);
    let mut verdicts = Vec::with_capacity(n as usize);
    let mut submitted = Vec::with_capacity(n as usize);
    let mut deliveries = Vec::new();
    let drain =
        |emu: &mut LinkEmulator, now: Instant, out: &mut Vec<Delivery>, sub: &[Duration]| {
            while let Some((at, d)) = emu.poll_deliver_timed(now) {
                let seq = seq_of(&d);
                out.push(Delivery {
                    seq,
                    submitted: sub[seq as usize],
                    delivered: at - t0,
                });
            }
        };
    for i in 0..n {
        let now = t0 + interval * (i as u32);
        drain(&mut emu, now, &mut deliveries, &submitted);
        submitted.push(now - t0);
        verdicts.push(emu.submit(now, datagram(i, size)));
    }
    // Drain: step to each deadline; bounded by the number of datagrams held.
    let mut guard = 0;
    while let Some(at) = emu.poll_timeout() {
        drain(&mut emu, at, &mut deliveries, &submitted);
        guard += 1;
        assert!(guard <= 4 * n, "drain did not terminate");
    }
    Run {
        verdicts,
        deliveries,
        emu,
    }
}

fn count(verdicts: &[Verdict], reason: DropReason) -> usize {
    verdicts
        .iter()
        .filter(|v| **v == Verdict::Dropped(reason))
        .count()
}

#[test]
fn bernoulli_loss_rate_within_half_a_point() {
    for (loss, seed) in [(0.01, 1), (0.1, 2), (0.3, 3)] {
        let p = LinkProfile::builder().loss(loss).build().unwrap();
        let n = 100_000;
        let r = run(p, seed, n, Duration::from_micros(100), 64);
        let lost = count(&r.verdicts, DropReason::Loss);
        let measured = lost as f64 / n as f64;
        assert!(
            (measured - loss).abs() < 0.005,
            "configured {loss}, measured {measured}"
        );
        assert_eq!(r.deliveries.len() as u64, n - lost as u64);
        assert_eq!(r.emu.stats().dropped_loss, lost as u64);
    }
}

/// Lengths of runs of consecutive losses in submission order.
fn loss_bursts(verdicts: &[Verdict]) -> Vec<usize> {
    let mut bursts = Vec::new();
    let mut cur = 0;
    for v in verdicts {
        if matches!(v, Verdict::Dropped(_)) {
            cur += 1;
        } else if cur > 0 {
            bursts.push(cur);
            cur = 0;
        }
    }
    if cur > 0 {
        bursts.push(cur);
    }
    bursts
}

#[test]
fn gilbert_elliott_mean_loss_and_burst_length() {
    // Classic Gilbert: no loss in Good, all lost in Bad; bursts are Bad sojourns, mean 1/r.
    let ge = GilbertElliott {
        p: 0.01,
        r: 0.2,
        loss_good: 0.0,
        loss_bad: 1.0,
    };
    let n = 500_000;
    let p = LinkProfile::builder().gilbert_elliott(ge).build().unwrap();
    let r = run(p, 7, n, Duration::from_micros(10), 16);
    let lost = count(&r.verdicts, DropReason::BurstLoss);
    let measured = lost as f64 / n as f64;
    let expected = ge.mean_loss(); // 0.01 / 0.21 = 0.0476
    assert!(
        (measured - expected).abs() < 0.005,
        "mean loss: analytic {expected}, measured {measured}"
    );
    let bursts = loss_bursts(&r.verdicts);
    let mean_burst = bursts.iter().sum::<usize>() as f64 / bursts.len() as f64;
    let expected_burst = 1.0 / ge.r;
    assert!(
        (mean_burst - expected_burst).abs() / expected_burst < 0.05,
        "mean burst: analytic {expected_burst}, measured {mean_burst} over {} bursts",
        bursts.len()
    );

    // General Gilbert–Elliott: losses in both states.
    let ge = GilbertElliott {
        p: 0.05,
        r: 0.25,
        loss_good: 0.01,
        loss_bad: 0.6,
    };
    let p = LinkProfile::builder().gilbert_elliott(ge).build().unwrap();
    let r = run(p, 8, n, Duration::from_micros(10), 16);
    let measured = count(&r.verdicts, DropReason::BurstLoss) as f64 / n as f64;
    let expected = ge.mean_loss(); // (5/6)·0.01 + (1/6)·0.6 = 0.1083
    assert!(
        (measured - expected).abs() < 0.005,
        "mean loss: analytic {expected}, measured {measured}"
    );
}

#[test]
fn bernoulli_losses_are_not_bursty() {
    // Sanity check of the burst measure itself: independent loss at 5% gives mean burst
    // 1/(1-0.05) ≈ 1.05, far from the Gilbert case above.
    let p = LinkProfile::builder().loss(0.05).build().unwrap();
    let r = run(p, 9, 100_000, Duration::from_micros(10), 16);
    let bursts = loss_bursts(&r.verdicts);
    let mean = bursts.iter().sum::<usize>() as f64 / bursts.len() as f64;
    assert!((mean - 1.0 / 0.95).abs() < 0.02, "mean burst {mean}");
}

#[test]
fn delay_and_jitter_statistics() {
    let delay = Duration::from_millis(100);
    let jitter = Duration::from_millis(20);
    let p = LinkProfile::builder()
        .delay(delay)
        .jitter(jitter)
        .reorder(true)
        .build()
        .unwrap();
    let n = 100_000;
    let r = run(p, 11, n, Duration::from_micros(100), 64);
    assert_eq!(r.deliveries.len() as u64, n);
    let delays: Vec<f64> = r
        .deliveries
        .iter()
        .map(|d| (d.delivered - d.submitted).as_secs_f64())
        .collect();
    let mean = delays.iter().sum::<f64>() / delays.len() as f64;
    let min = delays.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = delays.iter().cloned().fold(0.0, f64::max);
    // Uniform on [80 ms, 120 ms]: mean 100 ms (σ of the mean ≈ 0.04 ms).
    assert!((mean - 0.100).abs() < 0.0005, "mean {mean}");
    assert!((0.080..0.0802).contains(&min), "min {min}");
    assert!(max <= 0.120, "max {max}");
    assert!(max > 0.1198, "max {max}");
    // With reordering allowed and jitter far above the spacing, reordering does happen.
    assert!(r.deliveries.windows(2).any(|w| w[1].seq < w[0].seq));

    // Fixed delay without jitter is exact.
    let p = LinkProfile::builder().delay(delay).build().unwrap();
    let r = run(p, 12, 1000, Duration::from_millis(1), 64);
    assert!(r
        .deliveries
        .iter()
        .all(|d| d.delivered - d.submitted == delay));
}

#[test]
fn no_reordering_without_reorder() {
    let p = LinkProfile::builder()
        .delay(Duration::from_millis(100))
        .jitter(Duration::from_millis(50))
        .duplicate(0.05)
        .reorder(false)
        .build()
        .unwrap();
    let n = 100_000;
    let r = run(p, 13, n, Duration::from_micros(100), 64);
    assert!(r.deliveries.len() as u64 > n);
    for w in r.deliveries.windows(2) {
        assert!(w[1].seq >= w[0].seq, "{:?} overtook {:?}", w[1], w[0]);
        assert!(w[1].delivered >= w[0].delivered);
    }
    // Delays stay within delay ± jitter even when held back for ordering.
    for d in &r.deliveries {
        let delay = d.delivered - d.submitted;
        assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(150));
    }
}

#[test]
fn duplication_rate() {
    let dup = 0.05;
    let p = LinkProfile::builder().duplicate(dup).build().unwrap();
    let n = 100_000;
    let r = run(p, 17, n, Duration::from_micros(100), 64);
    let extra = r.deliveries.len() as u64 - n;
    let measured = extra as f64 / n as f64;
    assert!((measured - dup).abs() < 0.005, "measured {measured}");
    assert_eq!(r.emu.stats().duplicated, extra);
    let unique: HashSet<u64> = r.deliveries.iter().map(|d| d.seq).collect();
    assert_eq!(unique.len() as u64, n);
}

#[test]
fn rate_limiter_output_rate_within_two_percent() {
    let rate = 1_000_000u64;
    let size = 1000usize;
    let p = LinkProfile::builder()
        .rate(rate)
        .queue_limit(50_000)
        .build()
        .unwrap();
    // Offer 2 MB/s (a 1000-byte datagram every 0.5 ms) for 20 s of virtual time.
    let n = 40_000;
    let r = run(p, 19, n, Duration::from_micros(500), size);
    let first = r.deliveries.first().unwrap().delivered;
    let last = r.deliveries.last().unwrap().delivered;
    // Bytes delivered after the first one, over the time they took.
    let bytes = (r.deliveries.len() - 1) as f64 * size as f64;
    let measured = bytes / (last - first).as_secs_f64();
    assert!(
        (measured - rate as f64).abs() / (rate as f64) < 0.02,
        "measured {measured} B/s"
    );
    // About half the offered load is tail-dropped, and the queue never held more than its limit
    // (50 datagrams waiting ⇒ at most 50 ms of queueing delay, plus one serialisation).
    let dropped = count(&r.verdicts, DropReason::QueueFull);
    assert!(dropped > 15_000 && dropped < 25_000, "dropped {dropped}");
    assert_eq!(r.emu.stats().dropped_queue, dropped as u64);
    for d in &r.deliveries {
        assert!(
            d.delivered - d.submitted <= Duration::from_millis(51),
            "{d:?}"
        );
    }
    // Below the rate nothing is dropped and each datagram takes exactly its serialisation time.
    let p = LinkProfile::builder().rate(rate).build().unwrap();
    let r = run(p, 20, 10_000, Duration::from_millis(2), size);
    assert_eq!(r.deliveries.len(), 10_000);
    assert!(r
        .deliveries
        .iter()
        .all(|d| d.delivered - d.submitted == Duration::from_millis(1)));
}

#[test]
fn schedule_nothing_submitted_while_down_is_delivered() {
    let schedule = Schedule {
        outages: vec![
            Outage {
                start: Duration::from_secs(1),
                end: Duration::from_secs(2),
            },
            Outage {
                start: Duration::from_secs(3),
                end: Duration::from_millis(3500),
            },
        ],
        period: Some(Duration::from_secs(5)),
    };
    let p = LinkProfile::builder()
        .delay(Duration::from_millis(500))
        .schedule(schedule.clone())
        .build()
        .unwrap();
    let n = 20_000; // 20 s at 1 ms spacing
    let r = run(p, 23, n, Duration::from_millis(1), 64);
    for d in &r.deliveries {
        assert!(schedule.is_up(d.submitted), "{d:?} submitted while down");
    }
    // Down 1.5 s of every 5 s: 30% of the datagrams are dropped, exactly.
    assert_eq!(count(&r.verdicts, DropReason::LinkDown), 6000);
    assert_eq!(r.deliveries.len(), 14_000);
    // Datagrams in flight when the link went down are still delivered during the outage.
    assert!(r.deliveries.iter().any(|d| {
        d.delivered > Duration::from_secs(1) && d.delivered < Duration::from_millis(1500)
    }));
}

#[test]
fn same_seed_same_output_different_seed_different_output() {
    let p: LinkProfile =
        "delay=50ms,jitter=20ms,reorder=true,loss=0.05,ge=0.01/0.3,dup=0.02,rate=1M,queue=20k"
            .parse()
            .unwrap();
    let a = run(p.clone(), 42, 20_000, Duration::from_micros(700), 500);
    let b = run(p.clone(), 42, 20_000, Duration::from_micros(700), 500);
    let c = run(p, 43, 20_000, Duration::from_micros(700), 500);
    assert_eq!(a.verdicts, b.verdicts);
    assert_eq!(a.deliveries, b.deliveries);
    assert_eq!(a.emu.stats(), b.emu.stats());
    assert_ne!(a.deliveries, c.deliveries);
}
