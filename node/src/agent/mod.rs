//! The agent protocol: how applications register endpoints, send bundles and receive them
//! through their node (RFC 9171 §5.2 bundle transmission requested by an application agent,
//! §5.7 local bundle delivery, §4.2.3 status-report requests).
//!
//! - [`proto`]: the wire format, length-prefixed CBOR frames (specified in
//!   `docs/agent-protocol.md`).
//! - [`server`]: the node side, on a loopback TCP port or a Unix socket; it turns frames into
//!   [`crate::api::AgentCommand`]s for the node core and pushes deliveries to clients.
//! - [`client`]: an async client, used by `bpsend`, `bprecv`, `bpstats`, `bping` and tests.
//! - [`cli`]: helpers shared by the command-line tools (durations, the `--node` default).
//! - [`testing`]: an in-process stand-in for the node core, to test clients without a daemon.

pub mod cli;
pub mod client;
pub mod proto;
pub mod server;
pub mod testing;
