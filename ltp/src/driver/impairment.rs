//! Emulated channel impairment between the driver's engine and its socket (loss, delay,
//! duplication), decided per datagram before the datagram is queued for sending, so that batched
//! sending (`udp_io`) changes nothing about which datagrams are lost or delayed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::Transmit;
use crate::segment::EngineId;

/// Where a sent datagram goes: the peer engine and the UDP address of its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The peer engine the segment is for.
    pub engine: EngineId,
    /// The UDP address the datagram is sent to (configured or learned for `engine`).
    pub addr: SocketAddr,
}

/// Emulated channel impairment applied to every datagram the driver sends.
///
/// The driver resolves the peer's address first (a datagram for a peer with no address is
/// counted as `no_route` and never reaches the impairment), then calls `on_send` once per
/// datagram, in transmission order. The datagrams returned are sent to `dest.addr` at their
/// instants (at once if not in the future), even if the span's address changes meanwhile.
pub trait Impairment {
    /// Returns the datagrams to actually send to `dest` and when (empty: dropped).
    fn on_send(
        &mut self,
        now: Instant,
        dest: Destination,
        datagram: Bytes,
    ) -> Vec<(Instant, Bytes)>;

    /// The same decision for a datagram made of `header` then `payload`, which the driver
    /// sends without joining them (a data segment's header and the slice of the block it
    /// carries): pushes onto `out` (which the driver empties and reuses) the pairs to send
    /// and when; none pushed: dropped. The default joins the two (a copy of the segment) and
    /// asks [`on_send`](Self::on_send). An impairment that never looks into a datagram's
    /// octets overrides it to spare that copy and the vector `on_send` returns, as
    /// [`SimpleImpairment`] does: emulated loss then costs the sender what real loss would,
    /// not a copy and an allocation per segment.
    fn on_send_parts(
        &mut self,
        now: Instant,
        dest: Destination,
        header: Bytes,
        payload: Bytes,
        out: &mut Vec<(Instant, Bytes, Bytes)>,
    ) {
        let datagram = Transmit {
            peer: dest.engine,
            header,
            payload,
        }
        .into_datagram();
        out.extend(
            self.on_send(now, dest, datagram)
                .into_iter()
                .map(|(at, d)| (at, d, Bytes::new())),
        );
    }
}

/// Seeded random loss with a fixed one-way delay, the same for every destination.
#[derive(Debug)]
pub struct SimpleImpairment {
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Delay added to every datagram that is not dropped.
    pub delay: Duration,
    rng: SmallRng,
}

impl SimpleImpairment {
    /// Loss probability `loss`, constant `delay`, RNG seeded with `seed` (same seed, same drops).
    pub fn new(loss: f64, delay: Duration, seed: u64) -> SimpleImpairment {
        SimpleImpairment {
            loss: loss.clamp(0.0, 1.0),
            delay,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Whether the next datagram is lost.
    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen_bool(self.loss)
    }
}

impl Impairment for SimpleImpairment {
    fn on_send(
        &mut self,
        now: Instant,
        _dest: Destination,
        datagram: Bytes,
    ) -> Vec<(Instant, Bytes)> {
        if self.lost() {
            Vec::new()
        } else {
            vec![(now + self.delay, datagram)]
        }
    }

    fn on_send_parts(
        &mut self,
        now: Instant,
        _dest: Destination,
        header: Bytes,
        payload: Bytes,
        out: &mut Vec<(Instant, Bytes, Bytes)>,
    ) {
        if !self.lost() {
            out.push((now + self.delay, header, payload));
        }
    }
}

/// A datagram held back by the impairment until `at`, for the address it was impaired for:
/// `header` then `payload` (empty for a datagram in one buffer).
pub(super) struct Delayed {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) addr: SocketAddr,
    pub(super) header: Bytes,
    pub(super) payload: Bytes,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(engine: EngineId, port: u16) -> Destination {
        Destination {
            engine,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn simple_impairment_is_seeded_and_drops_about_the_loss_rate() {
        let now = Instant::now();
        let run = |seed| {
            let mut imp = SimpleImpairment::new(0.05, Duration::from_millis(10), seed);
            (0..10_000u64)
                .map(|i| imp.on_send(now, dest(i % 3, 1113), Bytes::from_static(b"x")))
                .collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3), "same seed, same drops");
        let dropped = a.iter().filter(|v| v.is_empty()).count();
        assert!((350..650).contains(&dropped), "{dropped} of 10000 dropped");
        assert!(a
            .iter()
            .flatten()
            .all(|(at, _)| *at == now + Duration::from_millis(10)));
        // The gathered form makes the same decisions, and hands the parts back as they are.
        let mut imp = SimpleImpairment::new(0.05, Duration::from_millis(10), 3);
        let (head, body) = (Bytes::from_static(b"head"), Bytes::from(vec![7u8; 100]));
        let mut parts = Vec::new();
        for (i, joined) in a.iter().enumerate() {
            parts.clear();
            let d = dest(i as u64 % 3, 1113);
            imp.on_send_parts(now, d, head.clone(), body.clone(), &mut parts);
            assert_eq!(parts.len(), joined.len());
            for (at, h, p) in parts.drain(..) {
                assert_eq!(at, now + Duration::from_millis(10));
                assert_eq!((h.as_ptr(), p.as_ptr()), (head.as_ptr(), body.as_ptr()));
            }
        }
        let mut none = SimpleImpairment::new(0.0, Duration::ZERO, 1);
        assert_eq!(
            none.on_send(now, dest(7, 4556), Bytes::from_static(b"y"))
                .len(),
            1
        );
    }
}
