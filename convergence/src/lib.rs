//! Convergence-layer adapters for the bundle protocol agent (RFC 9171 §7), and link emulation.
//!
//! A node moves bundles to and from neighbours only through the [`adapter::ConvergenceLayer`]
//! trait. Using an adapter:
//!
//! 1. Create bounded channels and bundle their senders into [`adapter::AdapterChannels`]: the
//!    node keeps the receivers. `received` carries [`adapter::Received`] bundles (the node
//!    decodes and validates them); `outcomes` carries one [`adapter::OutcomeReport`] per bundle
//!    accepted by `send`.
//! 2. Start the adapter (e.g. [`udp::UdpAdapter::bind`] or the TCPCL driver in [`tcpcl`]); it
//!    runs its own tokio tasks.
//! 3. Hand bundles to [`adapter::ConvergenceLayer::send`] with a node-chosen
//!    [`adapter::TransferId`]. `Err` means the bundle was not accepted (no outcome follows);
//!    `Ok` means exactly one outcome will follow. The meaning of
//!    [`adapter::Outcome::Transferred`] depends on the adapter: TCPCL reports it when the peer
//!    acknowledged the whole transfer, UDP as soon as the datagram was handed to the socket (UDP
//!    is unreliable, so the node must not release custody on it), LTP when the red part was
//!    acknowledged.
//! 4. Keep draining both channels: an adapter stops reading from the network while `received`
//!    is full (back-pressure) and blocks reporting while `outcomes` is full.
//! 5. Call [`adapter::ConvergenceLayer::shutdown`] to stop; pending transfers then report
//!    [`adapter::FailureReason::Shutdown`].
//!
//! [`ltp_adapter::LtpAdapter`] carries bundles over LTP (RFC 5326), aggregating them into blocks.
//!
//! [`emulation`] provides a deterministic sans-IO link emulator (delay, jitter, loss, burst loss,
//! duplication, rate limit, outages) and tokio wrappers applying it to datagram sockets and
//! byte streams, for tests and for the node's emulated links.

pub mod adapter;
pub mod emulation;
pub mod ltp_adapter;
pub mod tcpcl;
pub mod udp;

pub use adapter::{
    AdapterChannels, ConvergenceLayer, CounterSnapshot, Counters, FailureReason, Outcome,
    OutcomeReport, PeerAddr, Received, SendError, TransferId,
};
