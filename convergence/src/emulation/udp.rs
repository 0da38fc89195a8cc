//! [`EmulatedUdp`]: a tokio UDP socket whose outgoing datagrams pass through a [`LinkEmulator`]
//! per destination and are sent by a timer task when due.
//!
//! Emulation applies on the sending side only (one direction of each link); emulate both
//! directions by giving both ends a profile. Destinations without a profile are sent directly.

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
    /// dropping datagrams it still held).
    pub fn set_profile(&self, dest: SocketAddr, profile: LinkProfile) {
        let seed = self.seed ^ hash_addr(&dest);
        let emu = LinkEmulator::new(profile, seed, Instant::now());
        lock(&self.state).links.insert(dest, emu);
    }

    /// Whether datagrams to `dest` are emulated.
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
