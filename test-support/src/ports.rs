//! Loopback ports for tests that must name a server's address before the server binds it (a
//! daemon's configuration, a peer's span, a child process's `--bind`).
//!
//! # Why not bind port 0
//!
//! A port found free by binding port 0 (bind, read the port, drop the socket) comes from Linux's
//! ephemeral range (32768–60999 by default). The kernel picks from that same range the local port
//! of every outgoing connection and of every other `bind(0)`, so any socket a parallel test opens
//! between the release and the server's own bind may take it; the server then fails with
//! `Address already in use`. CI saw this once (`bpgen --tcpcl-sink` in the conformance tests).
//! Below that range only explicit binds compete, and this process hands out each port once.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports handed out: below Linux's default ephemeral range (see the module docs).
pub const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// How many ports of [`TEST_PORTS`] one call tries before it gives up.
const MAX_TRIES: u32 = 1000;

/// The next port of [`TEST_PORTS`] that `bind` accepts. Each port is tried once per process;
/// the first one tried depends on the process id, so that test binaries running in parallel start
/// far apart.
fn next_port(bind: impl Fn(u16) -> bool) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..MAX_TRIES {
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + i as u16;
        if bind(port) {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?} after {MAX_TRIES} tries");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    next_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    next_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// `127.0.0.1:port` for a [`free_tcp_port`].
pub fn free_tcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
}

/// `127.0.0.1:port` for a [`free_udp_port`].
pub fn free_udp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_udp_port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let tcp = free_tcp_port();
            let udp = free_udp_port();
            for port in [tcp, udp] {
                assert!(TEST_PORTS.contains(&port), "{port} outside {TEST_PORTS:?}");
                assert!(seen.insert(port), "port {port} handed out twice");
            }
            TcpListener::bind(("127.0.0.1", tcp)).expect("handed-out TCP port binds");
            UdpSocket::bind(("127.0.0.1", udp)).expect("handed-out UDP port binds");
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        // Hold the next port this process would hand out; the helper must step over it.
        let held = (0..100)
            .find_map(|_| {
                let candidate = free_udp_port() + 1;
                let socket = UdpSocket::bind(("127.0.0.1", candidate)).ok()?;
                Some((candidate, socket))
            })
            .expect("a port to hold within 100 tries");
        let port = free_udp_port();
        assert_ne!(port, held.0);
        UdpSocket::bind(("127.0.0.1", port)).expect("handed-out port binds");
    }
}
