//! [`LtpImpairment`]: the link emulator as an `ltp` driver impairment, so an LTP span can be
//! run over the full emulated link (burst loss, rate limit, outages, ...), not just the driver's
//! simple loss and delay.

use std::time::Instant;

use bytes::Bytes;

use super::emulator::LinkEmulator;
use super::profile::LinkProfile;

/// A [`LinkEmulator`] plugged into [`ltp::driver::Impairment`].
///
/// Every delivery time is fixed when a datagram is submitted, so each `on_send` returns the
/// copies of that datagram (none if dropped, two if duplicated) with their delivery times; the
/// driver then holds them (bounded by its `max_delayed`), and the emulator's own in-flight
/// limit does not apply.
#[derive(Debug)]
pub struct LtpImpairment {
    emu: LinkEmulator,
}

impl LtpImpairment {
    /// An impairment applying `profile`, seeded with `seed`, schedule offsets from `start`.
    pub fn new(profile: LinkProfile, seed: u64, start: Instant) -> Self {
        LtpImpairment {
            emu: LinkEmulator::new(profile, seed, start),
        }
    }

    /// The emulator's counters.
    pub fn stats(&self) -> super::EmulatorStats {
        self.emu.stats()
    }
}

impl ltp::driver::Impairment for LtpImpairment {
    fn on_send(&mut self, now: Instant, datagram: Bytes) -> Vec<(Instant, Bytes)> {
        self.emu.submit(now, datagram);
        let mut out = Vec::with_capacity(2);
        // Bounded: only this datagram's copies are held (at most two).
        while let Some(at) = self.emu.poll_timeout() {
            match self.emu.poll_deliver_timed(at) {
                Some(d) => out.push(d),
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltp::driver::Impairment;
    use std::time::Duration;

    #[test]
    fn applies_profile() {
        let t0 = Instant::now();
        let p: LinkProfile = "delay=10ms".parse().unwrap();
        let mut imp = LtpImpairment::new(p, 1, t0);
        let out = imp.on_send(t0, Bytes::from_static(b"x"));
        assert_eq!(
            out,
            vec![(t0 + Duration::from_millis(10), Bytes::from_static(b"x"))]
        );

        let mut lossy = LtpImpairment::new("loss=1".parse().unwrap(), 1, t0);
        assert!(lossy.on_send(t0, Bytes::from_static(b"x")).is_empty());
        assert_eq!(lossy.stats().dropped_loss, 1);

        let mut dup = LtpImpairment::new("duplicate=1".parse().unwrap(), 1, t0);
        assert_eq!(dup.on_send(t0, Bytes::from_static(b"x")).len(), 2);

        // Rate limit: back-to-back datagrams are spaced by their serialisation time.
        let mut rate = LtpImpairment::new("rate=1000".parse().unwrap(), 1, t0);
        let a = rate.on_send(t0, Bytes::from(vec![0u8; 100]));
        let b = rate.on_send(t0, Bytes::from(vec![0u8; 100]));
        assert_eq!(a[0].0, t0 + Duration::from_millis(100));
        assert_eq!(b[0].0, t0 + Duration::from_millis(200));
    }
}
