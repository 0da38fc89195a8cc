//! [`LtpImpairment`]: the link emulator as an `ltp` driver impairment, so the LTP spans of one
//! engine can each be run over their own emulated link (burst loss, rate limit, outages, a
//! contact gate, ...), not just the driver's simple loss and delay.
//!
//! One engine sends to all its peers through one driver, so the impairment is per link: a set
//! of (destination UDP address → [`LinkEmulator`]), chosen by the [`Destination`] the driver
//! passes with each datagram. Datagrams to a destination without a link pass unchanged and
//! undelayed, unless the impairment was made for the single-profile case
//! ([`LtpImpairment::new`]), whose emulator stands for every destination without a link of its
//! own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use ltp::driver::Destination;

use super::emulator::{EmulatorStats, LinkEmulator};
use super::gate::LinkGate;
use super::profile::LinkProfile;

#[derive(Debug, Default)]
struct Links {
    by_addr: HashMap<SocketAddr, LinkEmulator>,
    /// The single-profile case: applies to destinations without a link of their own.
    every: Option<LinkEmulator>,
}

/// Per-link [`LinkEmulator`]s plugged into [`ltp::driver::Impairment`].
///
/// Every delivery time is fixed when a datagram is submitted, so each `on_send` returns the
/// copies of that datagram (none if dropped, two if duplicated) with their delivery times; the
/// driver then holds them (bounded by its `max_delayed`), and the emulators' own in-flight
/// limits do not apply.
///
/// Cloning gives another handle to the same links: keep one to add links and read counters
/// while the driver owns the other (the links sit behind a mutex taken once per datagram).
/// Gates are flipped through the [`LinkGate`]s themselves.
#[derive(Clone, Debug, Default)]
pub struct LtpImpairment {
    links: Arc<Mutex<Links>>,
}

impl LtpImpairment {
    /// An impairment with no links: every datagram passes unchanged until links are added
    /// with [`add_link`](Self::add_link).
    pub fn empty() -> Self {
        LtpImpairment::default()
    }

    /// The single-profile case: `profile`, seeded with `seed`, schedule offsets from `start`,
    /// applied to every destination that has no link of its own, by one emulator (one
    /// transmitter, one loss sequence) shared by all of them.
    pub fn new(profile: LinkProfile, seed: u64, start: Instant) -> Self {
        let imp = LtpImpairment::empty();
        imp.lock().every = Some(LinkEmulator::new(profile, seed, start));
        imp
    }

    /// Emulates the link to `dest` with `profile`, seeded with `seed`, schedule offsets from
    /// `start`, and, with a `gate`, down whenever the gate is down (see [`LinkGate`]). Replaces
    /// any previous link to `dest` (its counters start again from zero). Takes effect from the
    /// next datagram, also when added through a clone while the driver owns another.
    pub fn add_link(
        &mut self,
        dest: SocketAddr,
        profile: LinkProfile,
        seed: u64,
        start: Instant,
        gate: Option<LinkGate>,
    ) {
        let mut emu = LinkEmulator::new(profile, seed, start);
        emu.set_gate(gate);
        self.lock().by_addr.insert(dest, emu);
    }

    /// Destinations that have a link of their own, sorted.
    pub fn links(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.lock().by_addr.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Counters of the link to `dest`, if it has one of its own.
    pub fn link_stats(&self, dest: &SocketAddr) -> Option<EmulatorStats> {
        self.lock().by_addr.get(dest).map(LinkEmulator::stats)
    }

    /// Counters summed over every link (and the single-profile emulator, if any).
    pub fn stats(&self) -> EmulatorStats {
        let links = self.lock();
        let mut total = EmulatorStats::default();
        for emu in links.by_addr.values().chain(links.every.as_ref()) {
            total += emu.stats();
        }
        total
    }

    fn lock(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ltp::driver::Impairment for LtpImpairment {
    fn on_send(
        &mut self,
        now: Instant,
        dest: Destination,
        datagram: Bytes,
    ) -> Vec<(Instant, Bytes)> {
        let mut guard = self.lock();
        let links = &mut *guard;
        let Some(emu) = links.by_addr.get_mut(&dest.addr).or(links.every.as_mut()) else {
            return vec![(now, datagram)];
        };
        emu.submit(now, datagram);
        let mut out = Vec::with_capacity(2);
        // Bounded: only this datagram's copies are held (at most two).
        while let Some(at) = emu.poll_timeout() {
            match emu.poll_deliver_timed(at) {
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

    fn to(engine: u64, port: u16) -> Destination {
        Destination {
            engine,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn applies_profile() {
        let t0 = Instant::now();
        let d = to(2, 1113);
        let p: LinkProfile = "delay=10ms".parse().unwrap();
        let mut imp = LtpImpairment::new(p, 1, t0);
        let out = imp.on_send(t0, d, Bytes::from_static(b"x"));
        assert_eq!(
            out,
            vec![(t0 + Duration::from_millis(10), Bytes::from_static(b"x"))]
        );

        let mut lossy = LtpImpairment::new("loss=1".parse().unwrap(), 1, t0);
        assert!(lossy.on_send(t0, d, Bytes::from_static(b"x")).is_empty());
        assert_eq!(lossy.stats().dropped_loss, 1);

        let mut dup = LtpImpairment::new("duplicate=1".parse().unwrap(), 1, t0);
        assert_eq!(dup.on_send(t0, d, Bytes::from_static(b"x")).len(), 2);

        // Rate limit: back-to-back datagrams are spaced by their serialisation time.
        let mut rate = LtpImpairment::new("rate=1000".parse().unwrap(), 1, t0);
        let a = rate.on_send(t0, d, Bytes::from(vec![0u8; 100]));
        let b = rate.on_send(t0, d, Bytes::from(vec![0u8; 100]));
        assert_eq!(a[0].0, t0 + Duration::from_millis(100));
        assert_eq!(b[0].0, t0 + Duration::from_millis(200));
    }

    #[test]
    fn links_are_per_destination_and_independent() {
        let t0 = Instant::now();
        let (near, far, other) = (to(2, 1001), to(3, 1002), to(4, 1003));
        let mut handle = LtpImpairment::empty();
        // Without links everything passes unchanged and undelayed.
        let mut imp = handle.clone();
        let x = Bytes::from_static(b"x");
        assert_eq!(imp.on_send(t0, near, x.clone()), vec![(t0, x.clone())]);
        handle.add_link(near.addr, "delay=10ms".parse().unwrap(), 1, t0, None);
        handle.add_link(far.addr, "delay=2s,rate=1000".parse().unwrap(), 2, t0, None);
        assert_eq!(handle.links(), vec![near.addr, far.addr]);
        let d100 = Bytes::from(vec![0u8; 100]);
        for i in 0..3u32 {
            // The far link's transmitter is busy 100 ms per datagram; the near one is not
            // held up by it.
            let f = imp.on_send(t0, far, d100.clone());
            assert_eq!(f[0].0, t0 + Duration::from_millis(2100 + 100 * i as u64));
            let n = imp.on_send(t0, near, d100.clone());
            assert_eq!(n[0].0, t0 + Duration::from_millis(10));
        }
        // Another destination still passes untouched.
        assert_eq!(imp.on_send(t0, other, x.clone()), vec![(t0, x.clone())]);
        let (n, f) = (
            handle.link_stats(&near.addr).unwrap(),
            handle.link_stats(&far.addr).unwrap(),
        );
        assert_eq!((n.submitted, f.submitted), (3, 3));
        assert_eq!(handle.link_stats(&other.addr), None);
        assert_eq!(handle.stats().submitted, 6);
        // Replacing a link restarts its counters.
        handle.add_link(near.addr, LinkProfile::default(), 1, t0, None);
        assert_eq!(handle.link_stats(&near.addr).unwrap().submitted, 0);
        assert_eq!(imp.on_send(t0, near, x.clone()), vec![(t0, x)]);
    }

    #[test]
    fn gate_down_drops_and_counts_then_up_passes() {
        let t0 = Instant::now();
        let (gated, open) = (to(2, 2001), to(3, 2002));
        let gate = LinkGate::new(false);
        let mut handle = LtpImpairment::empty();
        handle.add_link(
            gated.addr,
            "delay=1s".parse().unwrap(),
            1,
            t0,
            Some(gate.clone()),
        );
        handle.add_link(open.addr, "delay=1s".parse().unwrap(), 2, t0, None);
        let mut imp = handle.clone();
        let x = Bytes::from_static(b"x");
        for _ in 0..10 {
            assert!(imp.on_send(t0, gated, x.clone()).is_empty());
            assert_eq!(imp.on_send(t0, open, x.clone()).len(), 1);
        }
        let s = handle.link_stats(&gated.addr).unwrap();
        assert_eq!((s.submitted, s.dropped_down, s.delivered), (10, 10, 0));
        assert_eq!(handle.link_stats(&open.addr).unwrap().dropped_down, 0);
        gate.set(true);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            imp.on_send(t1, gated, x.clone()),
            vec![(t1 + Duration::from_secs(1), x.clone())]
        );
        gate.set(false);
        assert!(imp.on_send(t1, gated, x).is_empty());
        assert_eq!(handle.link_stats(&gated.addr).unwrap().dropped_down, 11);
    }
}
