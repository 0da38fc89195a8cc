//! Link emulation: delay, jitter, loss (Bernoulli and Gilbert–Elliott bursts), duplication, rate
//! limiting with a bounded queue, and scheduled outages, for the space-link conditions that DTN
//! (RFC 4838 §2) and LTP (RFC 5326 §1) are designed for.
//!
//! - [`LinkEmulator`]: the sans-IO core, one direction of one link, driven by explicit time and
//!   seeded, so a run repeats exactly (see [`emulator`] for the model and the order of effects).
//! - [`LinkProfile`]: its parameters, with a builder and a compact text form
//!   (`"delay=250ms,jitter=10ms,loss=0.02,rate=1000000"`, see [`profile`]).
//! - [`LinkGate`]: a shareable up/down switch a caller flips at contact start and end; a gated
//!   link is down (drops everything, counted as outage drops) while its gate is down.
//! - [`EmulatedUdp`]: a UDP socket whose outgoing datagrams pass through one emulator per
//!   destination (optionally gated) and are sent by a timer task.
//! - [`EmulatedStream`]: an `AsyncRead + AsyncWrite` wrapper that delays and rate-limits a byte
//!   stream in both directions (no loss: it stands for a reliable transport such as TCP).
//! - [`LtpImpairment`]: emulators per destination as an `ltp` driver impairment, so each LTP
//!   span of a node can have its own link (and gate).

pub mod emulator;
pub mod gate;
pub mod ltp_impairment;
pub mod profile;
pub mod stream;
pub mod udp;

pub use emulator::{DropReason, EmulatorStats, LinkEmulator, Verdict};
pub use gate::LinkGate;
pub use ltp_impairment::LtpImpairment;
pub use profile::{
    parse_duration, GilbertElliott, LinkProfile, LinkProfileBuilder, Outage, ProfileError, Schedule,
};
pub use stream::EmulatedStream;
pub use udp::EmulatedUdp;
