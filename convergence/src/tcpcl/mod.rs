//! TCP Convergence Layer version 4 (RFC 9174): the wire codec ([`message`]), the sans-IO session
//! state machine ([`session`]) and the tokio driver implementing
//! [`crate::adapter::ConvergenceLayer`] ([`driver`]).
//!
//! TLS (RFC 9174 §4.4) is not offered yet: sessions are plaintext whatever the peer's CAN_TLS flag.

pub mod driver;
pub mod message;
pub mod session;

pub use driver::{TcpclAdapter, TcpclConfig};
