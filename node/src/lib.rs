//! The DTN node library: bundle processing, storage, routing and the agent protocol.

pub mod agent;
pub mod api;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod links;
pub mod metrics;
pub mod plan_source;
pub mod processing;
pub mod routing;
pub mod store;
