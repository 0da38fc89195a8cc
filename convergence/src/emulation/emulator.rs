//! The sans-IO link emulator: one direction of one link, driven by explicit time.
//!
//! Per datagram, at `submit(now, ..)`, in this order:
//!
//! 1. **In-flight limit**: if the emulator already holds `in_flight_limit` datagrams, drop
//!    ([`DropReason::InFlightLimit`]).
//! 2. **Rate limit and queue**: with a rate, the datagram waits for the transmitter, which is
//!    busy until the previous datagram is serialised (`len / rate` seconds each). If the bytes
//!    still waiting plus this datagram exceed `queue_limit_bytes`, it is tail-dropped
//!    ([`DropReason::QueueFull`]). Serialisation starts at `max(now, busy_until)`.
//! 3. **Schedule and gate**: if the link is down when serialisation starts, by the profile's
//!    schedule or because its [`LinkGate`] is down (the gate is read at submission: it has no
//!    future), drop ([`DropReason::LinkDown`]); it does not occupy the transmitter. A datagram
//!    already propagating when the link goes down is still delivered: an outage stops
//!    transmission, not signals already on their way (light-time propagation).
//! 4. **Loss** after serialisation (the datagram used the transmitter, then got lost on the
//!    channel): Bernoulli `loss` ([`DropReason::Loss`]), then the Gilbert–Elliott chain
//!    ([`DropReason::BurstLoss`]), whose state advances once per datagram that reaches step 4.
//! 5. **Propagation**: delivery at `serialised + delay + U(-jitter, +jitter)` (floored at
//!    `serialised`). Without `reorder`, a datagram is never delivered before the one submitted
//!    before it (its time is raised to the previous delivery time if needed).
//! 6. **Duplication**: with probability `duplicate`, a second copy with its own jitter sample.
//!
//! All randomness comes from one `SmallRng` seeded at construction, so a run repeats exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::gate::LinkGate;
use super::profile::LinkProfile;

/// What `submit` did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The datagram will be delivered (by `poll_deliver`).
    Queued,
    /// The datagram will not be delivered.
    Dropped(DropReason),
}

/// Why the emulator dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Bernoulli random loss.
    Loss,
    /// Gilbert–Elliott burst loss.
    BurstLoss,
    /// The transmit queue was full (tail drop).
    QueueFull,
    /// The link was down when the datagram would have been transmitted (schedule or gate).
    LinkDown,
    /// The emulator already held its limit of datagrams.
    InFlightLimit,
}

/// Counters of one emulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    /// Datagrams submitted.
    pub submitted: u64,
    /// Bytes submitted.
    pub submitted_bytes: u64,
    /// Datagrams delivered (duplicates included).
    pub delivered: u64,
    /// Bytes delivered (duplicates included).
    pub delivered_bytes: u64,
    /// Dropped by Bernoulli loss.
    pub dropped_loss: u64,
    /// Dropped by Gilbert–Elliott loss.
    pub dropped_burst: u64,
    /// Tail-dropped at the queue limit.
    pub dropped_queue: u64,
    /// Dropped because the link was down (scheduled outage or gate down).
    pub dropped_down: u64,
    /// Dropped at the in-flight limit.
    pub dropped_in_flight: u64,
    /// Extra copies created by duplication.
    pub duplicated: u64,
}

impl std::ops::AddAssign for EmulatorStats {
    /// Adds another emulator's counters (totals over several links).
    fn add_assign(&mut self, o: EmulatorStats) {
        self.submitted += o.submitted;
        self.submitted_bytes += o.submitted_bytes;
        self.delivered += o.delivered;
        self.delivered_bytes += o.delivered_bytes;
        self.dropped_loss += o.dropped_loss;
        self.dropped_burst += o.dropped_burst;
        self.dropped_queue += o.dropped_queue;
        self.dropped_down += o.dropped_down;
        self.dropped_in_flight += o.dropped_in_flight;
        self.duplicated += o.duplicated;
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: Instant,
    seq: u64,
    // Not part of the ordering in practice: (at, seq) is unique.
    data: Bytes,
}

/// One direction of an emulated link (see the module docs for the model).
#[derive(Debug)]
pub struct LinkEmulator {
    profile: LinkProfile,
    start: Instant,
    gate: Option<LinkGate>,
    rng: SmallRng,
    /// When the transmitter finishes the last accepted datagram.
    busy_until: Instant,
    /// Latest delivery time handed out (for no-reorder).
    last_delivery: Instant,
    ge_bad: bool,
    seq: u64,
    pending: BinaryHeap<Reverse<Pending>>,
    stats: EmulatorStats,
}

impl LinkEmulator {
    /// An emulator for `profile`, seeded with `seed`, whose schedule offsets count from `start`.
    pub fn new(profile: LinkProfile, seed: u64, start: Instant) -> Self {
        LinkEmulator {
            profile,
            start,
            gate: None,
            rng: SmallRng::seed_from_u64(seed),
            busy_until: start,
            last_delivery: start,
            ge_bad: false,
            seq: 0,
            pending: BinaryHeap::new(),
            stats: EmulatorStats::default(),
        }
    }

    /// The profile this emulator applies.
    pub fn profile(&self) -> &LinkProfile {
        &self.profile
    }

    /// Gates the link with `gate` (replacing any previous gate; `None` removes it): while the
    /// gate is down, every datagram submitted is dropped as [`DropReason::LinkDown`].
    pub fn set_gate(&mut self, gate: Option<LinkGate>) {
        self.gate = gate;
    }

    /// The link's gate, if it has one.
    pub fn gate(&self) -> Option<&LinkGate> {
        self.gate.as_ref()
    }

    /// Whether the link is up at `now` according to the schedule, and its gate is up now.
    pub fn is_up(&self, now: Instant) -> bool {
        if self.gate.as_ref().is_some_and(|g| !g.is_up()) {
            return false;
        }
        match &self.profile.schedule {
            None => true,
            Some(s) => s.is_up(now.saturating_duration_since(self.start)),
        }
    }

    fn serialisation_time(&self, len: usize) -> Duration {
        match self.profile.rate_bytes_per_sec {
            None => Duration::ZERO,
            Some(rate) => {
                let nanos = (len as u128 * 1_000_000_000).div_ceil(rate.max(1) as u128);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
        }
    }

    /// Bytes waiting for (or in) serialisation at `now`.
    pub fn backlog_bytes(&self, now: Instant) -> u64 {
        match self.profile.rate_bytes_per_sec {
            None => 0,
            Some(rate) => {
                let remaining = self.busy_until.saturating_duration_since(now).as_nanos();
                u64::try_from(remaining * rate as u128 / 1_000_000_000).unwrap_or(u64::MAX)
            }
        }
    }

    fn drop_with(&mut self, reason: DropReason) -> Verdict {
        let s = &mut self.stats;
        match reason {
            DropReason::Loss => s.dropped_loss += 1,
            DropReason::BurstLoss => s.dropped_burst += 1,
            DropReason::QueueFull => s.dropped_queue += 1,
            DropReason::LinkDown => s.dropped_down += 1,
            DropReason::InFlightLimit => s.dropped_in_flight += 1,
        }
        Verdict::Dropped(reason)
    }

    fn delivery_time(&mut self, sent: Instant) -> Instant {
        let p = &self.profile;
        let mut at = sent + p.delay;
        if !p.jitter.is_zero() {
            let j = p.jitter.as_nanos().min(u64::MAX as u128) as u64;
            let offset = self.rng.gen_range(0..=2 * (j as u128)) as i128 - j as i128;
            if offset >= 0 {
                at += Duration::from_nanos(offset as u64);
            } else {
                let back = Duration::from_nanos((-offset) as u64);
                at = at.checked_sub(back).unwrap_or(sent).max(sent);
            }
        }
        if !self.profile.reorder && at < self.last_delivery {
            at = self.last_delivery;
        }
        self.last_delivery = self.last_delivery.max(at);
        at
    }

    fn push(&mut self, at: Instant, data: Bytes) {
        self.seq += 1;
        self.pending.push(Reverse(Pending {
            at,
            seq: self.seq,
            data,
        }));
    }

    /// Offer a datagram to the link at `now`.
    pub fn submit(&mut self, now: Instant, datagram: Bytes) -> Verdict {
        self.stats.submitted += 1;
        self.stats.submitted_bytes += datagram.len() as u64;
        if self.pending.len() >= self.profile.in_flight_limit {
            return self.drop_with(DropReason::InFlightLimit);
        }
        let tx_start = now.max(self.busy_until);
        if self.profile.rate_bytes_per_sec.is_some() {
            let backlog = self.backlog_bytes(now);
            if backlog.saturating_add(datagram.len() as u64) > self.profile.queue_limit_bytes as u64
            {
                return self.drop_with(DropReason::QueueFull);
            }
        }
        if !self.is_up(tx_start) {
            return self.drop_with(DropReason::LinkDown);
        }
        let sent = tx_start + self.serialisation_time(datagram.len());
        self.busy_until = sent;
        if self.profile.loss > 0.0 && self.rng.gen::<f64>() < self.profile.loss {
            return self.drop_with(DropReason::Loss);
        }
        if let Some(ge) = self.profile.gilbert_elliott {
            let loss_p = if self.ge_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            let lost = loss_p > 0.0 && self.rng.gen::<f64>() < loss_p;
            let flip = if self.ge_bad { ge.r } else { ge.p };
            if flip > 0.0 && self.rng.gen::<f64>() < flip {
                self.ge_bad = !self.ge_bad;
            }
            if lost {
                return self.drop_with(DropReason::BurstLoss);
            }
        }
        let at = self.delivery_time(sent);
        let dup = self.profile.duplicate > 0.0 && self.rng.gen::<f64>() < self.profile.duplicate;
        if dup {
            let at2 = self.delivery_time(sent);
            self.push(at, datagram.clone());
            self.push(at2, datagram);
            self.stats.duplicated += 1;
        } else {
            self.push(at, datagram);
        }
        Verdict::Queued
    }

    /// The next datagram due at or before `now`, in delivery order.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Bytes> {
        if self.pending.peek()?.0.at > now {
            return None;
        }
        let Reverse(p) = self.pending.pop()?;
        self.stats.delivered += 1;
        self.stats.delivered_bytes += p.data.len() as u64;
        Some(p.data)
    }

    /// Like [`poll_deliver`](Self::poll_deliver), also returning the scheduled delivery time.
    pub fn poll_deliver_timed(&mut self, now: Instant) -> Option<(Instant, Bytes)> {
        let at = self.pending.peek()?.0.at;
        self.poll_deliver(now).map(|d| (at, d))
    }

    /// When the next datagram is due, if any is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.peek().map(|p| p.0.at)
    }

    /// Datagrams held (waiting for serialisation or propagating).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> EmulatorStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulation::profile::{Outage, Schedule};

    #[test]
    fn perfect_link_delivers_immediately_in_order() {
        let t0 = Instant::now();
        let mut e = LinkEmulator::new(LinkProfile::default(), 1, t0);
        for i in 0..10u8 {
            assert_eq!(e.submit(t0, Bytes::from(vec![i])), Verdict::Queued);
        }
        for i in 0..10u8 {
            assert_eq!(e.poll_deliver(t0).unwrap()[0], i);
        }
        assert!(e.poll_deliver(t0).is_none());
        assert!(e.poll_timeout().is_none());
    }

    #[test]
    fn delay_holds_until_due() {
        let t0 = Instant::now();
        let p = LinkProfile::builder()
            .delay(Duration::from_millis(100))
            .build()
            .unwrap();
        let mut e = LinkEmulator::new(p, 1, t0);
        e.submit(t0, Bytes::from_static(b"x"));
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        assert!(e.poll_deliver(t0 + Duration::from_millis(99)).is_none());
        assert!(e.poll_deliver(t0 + Duration::from_millis(100)).is_some());
    }

    #[test]
    fn queue_limit_tail_drops() {
        let t0 = Instant::now();
        let p = LinkProfile::builder()
            .rate(1000)
            .queue_limit(2500)
            .build()
            .unwrap();
        let mut e = LinkEmulator::new(p, 1, t0);
        let d = Bytes::from(vec![0u8; 1000]);
        assert_eq!(e.submit(t0, d.clone()), Verdict::Queued);
        assert_eq!(e.submit(t0, d.clone()), Verdict::Queued);
        assert_eq!(
            e.submit(t0, d.clone()),
            Verdict::Dropped(DropReason::QueueFull)
        );
        // One second later one datagram has been serialised: room again.
        assert_eq!(e.submit(t0 + Duration::from_secs(1), d), Verdict::Queued);
        assert_eq!(e.stats().dropped_queue, 1);
    }

    #[test]
    fn in_flight_limit_drops() {
        let t0 = Instant::now();
        let p = LinkProfile::builder()
            .delay(Duration::from_secs(1))
            .in_flight_limit(3)
            .build()
            .unwrap();
        let mut e = LinkEmulator::new(p, 1, t0);
        for _ in 0..3 {
            assert_eq!(e.submit(t0, Bytes::new()), Verdict::Queued);
        }
        assert_eq!(
            e.submit(t0, Bytes::new()),
            Verdict::Dropped(DropReason::InFlightLimit)
        );
    }

    #[test]
    fn gate_down_drops_everything_as_an_outage() {
        let t0 = Instant::now();
        let p = LinkProfile::builder()
            .delay(Duration::from_secs(1))
            .build()
            .unwrap();
        let mut e = LinkEmulator::new(p, 1, t0);
        let gate = LinkGate::new(true);
        e.set_gate(Some(gate.clone()));
        assert_eq!(e.submit(t0, Bytes::from_static(b"a")), Verdict::Queued);
        gate.set(false);
        assert!(!e.is_up(t0));
        for _ in 0..5 {
            assert_eq!(
                e.submit(t0, Bytes::from_static(b"x")),
                Verdict::Dropped(DropReason::LinkDown)
            );
        }
        gate.set(true);
        assert_eq!(e.submit(t0, Bytes::from_static(b"b")), Verdict::Queued);
        // The datagram propagating while the gate was down still arrives.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(e.poll_deliver(t1).as_deref(), Some(&b"a"[..]));
        assert_eq!(e.poll_deliver(t1).as_deref(), Some(&b"b"[..]));
        assert_eq!(e.poll_deliver(t1), None);
        let s = e.stats();
        assert_eq!((s.submitted, s.dropped_down, s.delivered), (7, 5, 2));
        e.set_gate(None);
        gate.set(false);
        assert_eq!(e.submit(t1, Bytes::new()), Verdict::Queued, "gate removed");
    }

    #[test]
    fn in_flight_survives_outage() {
        let t0 = Instant::now();
        let p = LinkProfile::builder()
            .delay(Duration::from_secs(5))
            .schedule(Schedule {
                outages: vec![Outage {
                    start: Duration::from_secs(1),
                    end: Duration::from_secs(2),
                }],
                period: None,
            })
            .build()
            .unwrap();
        let mut e = LinkEmulator::new(p, 1, t0);
        assert_eq!(e.submit(t0, Bytes::from_static(b"a")), Verdict::Queued);
        assert_eq!(
            e.submit(t0 + Duration::from_millis(1500), Bytes::from_static(b"b")),
            Verdict::Dropped(DropReason::LinkDown)
        );
        assert_eq!(
            e.poll_deliver(t0 + Duration::from_secs(5)).as_deref(),
            Some(&b"a"[..])
        );
        assert!(e.poll_deliver(t0 + Duration::from_secs(100)).is_none());
    }
}
