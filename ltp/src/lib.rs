//! Licklider Transmission Protocol (RFC 5326): segment codec, sans-IO engine, UDP driver.

pub mod driver;
pub mod engine;
pub mod sdnv;
pub mod segment;

pub use engine::{Engine, EngineConfig, EngineStats, Event, SendError, SpanConfig, Transmit};
pub use segment::{CancelReason, EngineId, Segment, SessionId};
