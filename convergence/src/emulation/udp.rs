//! [`EmulatedUdp`]: a tokio UDP socket whose outgoing datagrams pass through a [`LinkEmulator`]
//! per destination and are sent by a timer task when due.
//!
//! Emulation applies on the sending side only (one direction of each link); emulate both
//! directions by giving both ends a profile. A destination may also have a [`LinkGate`]: while
//! it is down, datagrams to that destination are dropped as in an outage; a destination with a
//! gate but no profile gets a perfect link (no delay, no loss) that only the gate closes.
//! Destinations with neither are sent directly.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::emulator::{EmulatorStats, LinkEmulator, Verdict};
use super::gate::LinkGate;
use super::profile::LinkProfile;

#[derive(Debug, Default)]
struct State {
    links: HashMap<SocketAddr, LinkEmulator>,
    send_errors: u64,
}

/// A UDP socket with per-destination link emulation on its outgoing datagrams.
#[derive(Debug)]
pub struct EmulatedUdp {
    socket: Arc<UdpSocket>,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    seed: u64,
    task: JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmulatedUdp {
    /// Wrap `socket`; emulators are seeded from `seed` and the destination address. Must be
    /// called within a tokio runtime (it spawns the delivery task).
    pub fn new(socket: Arc<UdpSocket>, seed: u64) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(deliver_task(
            socket.clone(),
            Arc::downgrade(&state),
            wake.clone(),
        ));
        EmulatedUdp {
            socket,
            state,
            wake,
            seed,
            task,
        }
    }

    /// The wrapped socket (for receiving, and `local_addr`).
    pub fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// Emulate the link to `dest` with `profile` from now on (replaces any previous emulator,
    /// dropping datagrams it still held, but keeping its gate).
    pub fn set_profile(&self, dest: SocketAddr, profile: LinkProfile) {
        let seed = self.seed ^ hash_addr(&dest);
        let mut emu = LinkEmulator::new(profile, seed, Instant::now());
        let mut st = lock(&self.state);
        emu.set_gate(st.links.get(&dest).and_then(|e| e.gate().cloned()));
        st.links.insert(dest, emu);
    }

    /// Gate the link to `dest` with `gate` from now on (replacing any previous gate): while it
    /// is down, every datagram to `dest` is dropped ([`DropReason::LinkDown`]). A destination
    /// without a profile gets a perfect emulated link that only the gate closes.
    ///
    /// [`DropReason::LinkDown`]: super::DropReason::LinkDown
    pub fn set_gate(&self, dest: SocketAddr, gate: LinkGate) {
        let seed = self.seed ^ hash_addr(&dest);
        lock(&self.state)
            .links
            .entry(dest)
            .or_insert_with(|| LinkEmulator::new(LinkProfile::default(), seed, Instant::now()))
            .set_gate(Some(gate));
    }

    /// Whether datagrams to `dest` are emulated (by a profile or a gate).
    pub fn is_emulated(&self, dest: &SocketAddr) -> bool {
        lock(&self.state).links.contains_key(dest)
    }

    /// Send `datagram` to `dest`: through its emulator if it has one (returning the emulator's
    /// verdict; the socket send happens later), else directly on the socket.
    pub async fn send_to(&self, datagram: Bytes, dest: SocketAddr) -> io::Result<Verdict> {
        let verdict = {
            let mut st = lock(&self.state);
            st.links
                .get_mut(&dest)
                .map(|emu| emu.submit(Instant::now(), datagram.clone()))
        };
        match verdict {
            Some(v) => {
                self.wake.notify_one();
                Ok(v)
            }
            None => {
                self.socket.send_to(&datagram, dest).await?;
                Ok(Verdict::Queued)
            }
        }
    }

    /// Counters of the emulator for `dest`, if it has one.
    pub fn stats(&self, dest: &SocketAddr) -> Option<EmulatorStats> {
        lock(&self.state).links.get(dest).map(LinkEmulator::stats)
    }

    /// Socket errors met while sending emulated datagrams (each such datagram is lost).
    pub fn send_errors(&self) -> u64 {
        lock(&self.state).send_errors
    }
}

impl Drop for EmulatedUdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hash_addr(a: &SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() uses fixed keys, so this is stable within a build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    h.finish()
}

/// Bound on datagrams sent per wake-up before the state lock is taken again.
const BATCH: usize = 256;

async fn deliver_task(
    socket: Arc<UdpSocket>,
    state: std::sync::Weak<Mutex<State>>,
    wake: Arc<Notify>,
) {
    let mut due: Vec<(SocketAddr, Bytes)> = Vec::with_capacity(BATCH);
    loop {
        let Some(st) = state.upgrade() else { return };
        let next = {
            let mut g = lock(&st);
            let now = Instant::now();
            'outer: for (addr, emu) in g.links.iter_mut() {
                while due.len() < BATCH {
                    match emu.poll_deliver(now) {
                        Some(d) => due.push((*addr, d)),
                        None => continue 'outer,
                    }
                }
                break;
            }
            g.links
                .values()
                .filter_map(LinkEmulator::poll_timeout)
                .min()
        };
        let more = due.len() >= BATCH;
        let mut errors = 0;
        for (addr, d) in due.drain(..) {
            if let Err(e) = socket.send_to(&d, addr).await {
                tracing::debug!(%addr, error = %e, "emulated UDP send failed");
                errors += 1;
            }
        }
        if errors > 0 {
            lock(&st).send_errors += errors;
        }
        drop(st);
        if more {
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulation::DropReason;
    use std::time::Duration;

    async fn socket() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    async fn recv(s: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), s.recv_from(&mut buf))
            .await
            .expect("datagram within the timeout")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn gates_and_profiles_are_per_destination() {
        let emu = EmulatedUdp::new(socket().await, 5);
        let (gated, delayed, direct) = (socket().await, socket().await, socket().await);
        let (g, d, x) = (
            gated.local_addr().unwrap(),
            delayed.local_addr().unwrap(),
            direct.local_addr().unwrap(),
        );
        // A gate alone (no profile), and a profile alone.
        let gate = LinkGate::new(false);
        emu.set_gate(g, gate.clone());
        emu.set_profile(d, "delay=50ms".parse().unwrap());
        assert!(emu.is_emulated(&g) && emu.is_emulated(&d) && !emu.is_emulated(&x));
        for _ in 0..5 {
            let v = emu.send_to(Bytes::from_static(b"g"), g).await.unwrap();
            assert_eq!(v, Verdict::Dropped(DropReason::LinkDown));
        }
        let t0 = Instant::now();
        assert_eq!(
            emu.send_to(Bytes::from_static(b"d"), d).await.unwrap(),
            Verdict::Queued
        );
        emu.send_to(Bytes::from_static(b"x"), x).await.unwrap();
        assert_eq!(recv(&direct).await, b"x");
        assert_eq!(recv(&delayed).await, b"d");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let s = emu.stats(&g).unwrap();
        assert_eq!((s.submitted, s.dropped_down, s.delivered), (5, 5, 0));
        assert_eq!(emu.stats(&d).unwrap().dropped_down, 0);
        // Gate up: passes; a new profile keeps the gate.
        gate.set(true);
        assert_eq!(
            emu.send_to(Bytes::from_static(b"up"), g).await.unwrap(),
            Verdict::Queued
        );
        assert_eq!(recv(&gated).await, b"up");
        emu.set_profile(g, "delay=1ms".parse().unwrap());
        gate.set(false);
        assert_eq!(
            emu.send_to(Bytes::from_static(b"g"), g).await.unwrap(),
            Verdict::Dropped(DropReason::LinkDown)
        );
        // Gating a link that has a profile keeps the profile.
        let gate_d = LinkGate::new(true);
        emu.set_gate(d, gate_d.clone());
        let t1 = Instant::now();
        emu.send_to(Bytes::from_static(b"d2"), d).await.unwrap();
        assert_eq!(recv(&delayed).await, b"d2");
        assert!(t1.elapsed() >= Duration::from_millis(50));
        gate_d.set(false);
        assert_eq!(
            emu.send_to(Bytes::from_static(b"d3"), d).await.unwrap(),
            Verdict::Dropped(DropReason::LinkDown)
        );
    }
}
