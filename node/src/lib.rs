//! The DTN node library: bundle processing, storage, routing and the agent protocol.

pub mod routing;
