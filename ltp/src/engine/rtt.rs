//! Adaptive retransmission timers: a round-trip estimate per span, learned from the segments
//! that answer ours (a report answering a checkpoint, a report-ack answering a report).
//!
//! RFC 5326 §6.1 sizes a retransmission timer as the two one-way light times plus "processing
//! and queueing" margins, which it leaves to the operator. A margin that is safe on a long link
//! is ruinous on a short one: on loopback a lost checkpoint then idles a session for the whole
//! margin (20 ms where a round trip takes 0.1 ms). With `SpanConfig::adaptive_timers` the engine
//! measures what the margin actually is:
//!
//! - **The estimate** is RFC 6298's (TCP's): a smoothed round-trip time `srtt` and its mean
//!   deviation `rttvar`, with gains 1/8 and 1/4; the timeout is `srtt + max(4·rttvar,
//!   min_timer_margin)` (the margin plays the part of RFC 6298's clock granularity G, or RFC
//!   9002's kGranularity: a variation estimated at zero still leaves that much room).
//! - **One sample per round trip.** The gains assume about one sample per round trip, as TCP
//!   timing one segment at a time takes. A window of blocks sends many checkpoints in one
//!   burst, and their reports come back in one burst, with nearly the same round trip: each
//!   would take a quarter off `rttvar`, a few dozen take it to nothing, and when a queue then
//!   builds up the next burst's answers come late and all their timers fire (on loopback, with
//!   a checkpoint every 16 segments, 40 % of the checkpoints were retransmitted at 0 % loss).
//!   A segment sent before the last sample was taken is not sampled.
//! - **Bounds.** The timeout never exceeds the configured one (OWLT out + OWLT in +
//!   `timer_margin`, the RFC's interval), and never falls below OWLT out + OWLT in +
//!   `min_timer_margin`. Until the first sample the configured timeout is used.
//! - **Karn's rule.** Only segments sent once are sampled: the answer to a retransmitted
//!   checkpoint or report cannot tell which transmission it answers.
//! - **Link cues.** A segment whose round trip spans a link-state change (§8: timers suspended)
//!   is not sampled; its round trip includes the outage.
//! - **Back-off.** Each retransmission of the same segment doubles its timeout, up to the
//!   configured one, so a timeout that was too tight costs a few duplicate segments and not a
//!   retransmission storm.

use std::time::{Duration, Instant};

/// RFC 6298 round-trip estimator.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RttEstimator {
    /// Smoothed round-trip time; `None` until the first sample.
    srtt: Option<Duration>,
    /// Round-trip time variation.
    rttvar: Duration,
    /// When the last sample was taken.
    last_sample: Option<Instant>,
}

impl RttEstimator {
    /// The round trip of a segment sent at `sent` and answered at `now`: a sample, unless the
    /// segment left before the last sample was taken (one sample per round trip).
    pub(crate) fn sample(&mut self, sent: Instant, now: Instant) {
        if self.last_sample.is_some_and(|t| sent < t) {
            return;
        }
        self.last_sample = Some(now);
        self.add(now.saturating_duration_since(sent));
    }

    /// Takes one round-trip sample (RFC 6298 §2.2 and §2.3).
    fn add(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let dev = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + dev) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed round-trip time, once there is a sample.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The timeout for a segment sent for the `(retransmissions + 1)`-th time: `srtt +
    /// max(4·rttvar, margin)`, doubled per retransmission, within `[floor, ceiling]`;
    /// `ceiling` until there is a sample.
    pub(crate) fn timeout(
        &self,
        retransmissions: u32,
        margin: Duration,
        floor: Duration,
        ceiling: Duration,
    ) -> Duration {
        let Some(srtt) = self.srtt else {
            return ceiling;
        };
        let base = (srtt + (self.rttvar * 4).max(margin)).max(floor);
        base.checked_mul(1u32 << retransmissions.min(16))
            .unwrap_or(ceiling)
            .min(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_sample_means_the_configured_timeout() {
        let e = RttEstimator::default();
        assert_eq!(e.timeout(0, Duration::ZERO, MS, 200 * MS), 200 * MS);
        assert_eq!(e.srtt(), None);
    }

    #[test]
    fn first_sample_gives_three_round_trips_then_converges() {
        let mut e = RttEstimator::default();
        e.add(2 * MS);
        // srtt 2 ms, rttvar 1 ms: 2 + 4 = 6 ms.
        assert_eq!(
            e.timeout(0, Duration::ZERO, Duration::ZERO, 200 * MS),
            6 * MS
        );
        for _ in 0..64 {
            e.add(2 * MS);
        }
        // rttvar decays toward zero: the timeout approaches srtt, held up by the floor.
        assert!(e.timeout(0, Duration::ZERO, Duration::ZERO, 200 * MS) < 3 * MS);
        assert_eq!(e.timeout(0, Duration::ZERO, 4 * MS, 200 * MS), 4 * MS);
    }

    #[test]
    fn variation_widens_the_timeout() {
        let mut e = RttEstimator::default();
        for i in 0..32 {
            e.add(if i % 2 == 0 { MS } else { 9 * MS });
        }
        let t = e.timeout(0, Duration::ZERO, Duration::ZERO, 200 * MS);
        assert!(t > 9 * MS, "{t:?}");
    }

    #[test]
    fn retransmissions_back_off_up_to_the_ceiling() {
        let mut e = RttEstimator::default();
        e.add(2 * MS); // 6 ms
        assert_eq!(e.timeout(1, Duration::ZERO, MS, 200 * MS), 12 * MS);
        assert_eq!(e.timeout(3, Duration::ZERO, MS, 200 * MS), 48 * MS);
        assert_eq!(e.timeout(6, Duration::ZERO, MS, 200 * MS), 200 * MS);
        assert_eq!(e.timeout(40, Duration::ZERO, MS, 200 * MS), 200 * MS);
    }

    #[test]
    fn bounds_hold_when_the_floor_exceeds_the_estimate_or_the_ceiling() {
        let mut e = RttEstimator::default();
        e.add(Duration::from_micros(10));
        assert_eq!(e.timeout(0, Duration::ZERO, 5 * MS, 200 * MS), 5 * MS);
        // A ceiling below the floor (a misconfiguration) wins: never longer than configured.
        assert_eq!(e.timeout(0, Duration::ZERO, 5 * MS, 3 * MS), 3 * MS);
    }

    #[test]
    fn the_margin_stays_on_top_of_a_variation_gone_to_zero() {
        let mut e = RttEstimator::default();
        for _ in 0..64 {
            e.add(2 * MS);
        }
        // rttvar ≈ 0: srtt + the margin, not srtt alone.
        let t = e.timeout(0, MS / 4, Duration::ZERO, 200 * MS);
        assert!(t >= 2 * MS + MS / 4 && t < 2 * MS + MS / 2, "{t:?}");
    }

    #[test]
    fn one_sample_per_round_trip() {
        let t0 = Instant::now();
        let mut e = RttEstimator::default();
        // A burst sent at t0 and answered at t0 + 2 ms: the first answer is the sample.
        e.sample(t0, t0 + 2 * MS);
        for _ in 0..32 {
            e.sample(t0, t0 + 2 * MS);
        }
        // rttvar is still the first sample's 1 ms (32 more would have shrunk it to nothing).
        assert_eq!(
            e.timeout(0, Duration::ZERO, Duration::ZERO, 200 * MS),
            6 * MS
        );
        // A segment sent after that sample was taken is the next round trip's sample.
        e.sample(t0 + 2 * MS, t0 + 6 * MS);
        assert_eq!(e.srtt(), Some((2 * MS * 7 + 4 * MS) / 8));
    }
}
