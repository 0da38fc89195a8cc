//! The engine's work per data segment, sender and receiver apart, for counting instructions
//! under callgrind: a count is the same from run to run whatever else the machine is doing,
//! where timings on a shared VM move by 2x within minutes.
//!
//! Two engines in memory move `N` (default 16) blocks of 1 MiB in 1400-octet segments. The
//! sender's segments are gathered into 64 KiB buffers and handed to the receiver as slices of
//! them, as the UDP driver does with a GRO buffer. `send` and `receive` are the two functions
//! to read off:
//!
//! ```text
//! cargo build --release -p ltp --example segment_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/segment_cost 16
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'segment_cost::(send|receive) '
//! ```
//!
//! and divide by the segments the program prints.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ltp::{Engine, EngineConfig, Event, SpanConfig, Transmit};

/// Octets of one receive buffer (a GRO buffer holds up to 64 KiB).
const GATHER: usize = 64 * 1024;
const SEGMENT: usize = 1400;

fn main() {
    let blocks: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let span = SpanConfig {
        max_segment_size: SEGMENT,
        ..SpanConfig::default()
    };
    let mut a = Engine::new(1, EngineConfig::default());
    let mut b = Engine::new(2, EngineConfig::default());
    a.add_span(2, span.clone());
    b.add_span(1, span);
    let block: Bytes = (0..1 << 20).map(|i| i as u8).collect::<Vec<u8>>().into();
    let mut now = Instant::now();
    let mut segments = 0;
    let mut at = Vec::with_capacity(GATHER / SEGMENT + 1);
    for _ in 0..blocks {
        a.send_block(2, 1, block.clone(), block.len(), now)
            .expect("block accepted");
        let (mut delivered, mut completed) = (false, false);
        for _ in 0..100_000 {
            let mut moved = false;
            loop {
                let mut gathered = BytesMut::with_capacity(GATHER);
                while gathered.len() + SEGMENT <= GATHER {
                    let Some(t) = send(&mut a, now) else {
                        break;
                    };
                    let start = gathered.len();
                    gathered.extend_from_slice(&t.header);
                    gathered.extend_from_slice(&t.payload);
                    at.push(start..gathered.len());
                }
                if at.is_empty() {
                    break;
                }
                let gathered = gathered.freeze();
                for range in at.drain(..) {
                    receive(&mut b, gathered.slice(range), now);
                    segments += 1;
                }
                moved = true;
            }
            while let Some((_, d)) = b.poll_transmit(now) {
                a.handle_datagram(d, now);
                moved = true;
            }
            while let Some(e) = b.poll_event() {
                delivered |= matches!(e, Event::BlockReceived { .. });
            }
            while let Some(e) = a.poll_event() {
                completed |= matches!(e, Event::TransmissionCompleted { .. });
            }
            if delivered && completed {
                break;
            }
            if !moved {
                now += Duration::from_millis(1);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
        }
        assert!(delivered && completed, "block not through");
    }
    println!("{segments} data segments");
}

/// The sender's work for one segment.
#[inline(never)]
fn send(a: &mut Engine, now: Instant) -> Option<Transmit> {
    a.poll_transmit_parts(now)
}

/// The receiver's work for one segment.
#[inline(never)]
fn receive(b: &mut Engine, datagram: Bytes, now: Instant) {
    b.handle_datagram(datagram, now)
}
