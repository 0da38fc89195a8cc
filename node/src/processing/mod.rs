//! The bundle processing engine: RFC 9171 §5 as a sans-IO state machine.
//!
//! API CONTRACT (fixed by the lead; the processing helper implements it, the daemon drives it).
//! Bodies are placeholders until the implementation lands.
//!
//! The engine takes inputs (bundles received from neighbours, application sends, registrations,
//! acknowledgements, transfer outcomes, link state, the current DTN time) and produces
//! [`Action`]s (transmit a bundle to a neighbour, deliver one to a registration) and its next
//! deadline. It never reads a clock or a socket; it calls the [`Store`] synchronously and hands
//! back [`Ticket`]s that the daemon awaits before acknowledging anything.

use bytes::Bytes;

use crate::api::{
    AgentError, BundleIdent, Delivery, DtnMillis, NodeStats, RegistrationId, SendAccepted,
    SendRequest,
};
use crate::store::{Store, Ticket};
use convergence::{FailureReason, TransferId};

/// Index of a neighbour in [`EngineConfig::neighbours`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighbourId(pub usize);

/// A neighbour as the engine sees it (the daemon maps it to an adapter and peer address).
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// Name from the configuration (metrics, logs).
    pub name: String,
    /// Its node ID, if known (`ipn:2.0`, `dtn://n2/`); used for routing and the previous-hop
    /// exclusion.
    pub node_id: Option<bpv7::Eid>,
    /// Largest bundle the link carries; larger ones are proactively fragmented (RFC 9171 §5.8)
    /// unless they must not be fragmented.
    pub max_bundle_size: Option<u64>,
    /// Whether a `Transferred` outcome confirms delivery to the neighbour (TCPCL, LTP red), so
    /// custody may be released. For unreliable layers (UDP) the bundle is released on
    /// `Transferred` too, as best effort (documented decision).
    pub reliable: bool,
    /// Most transfers handed to the adapter and not yet reported, per neighbour.
    pub max_in_flight: usize,
    /// Accept a primary block without CRC from this neighbour (dtn7-rs 0.21 sends such bundles;
    /// see INTEROP.md). Default false.
    pub accept_primary_without_crc: bool,
}

/// A static route: destinations matching `pattern` go via `via`.
#[derive(Clone, Debug)]
pub struct StaticRoute {
    /// EID pattern: `*`, `ipn:3.*`, `ipn:3.7`, `dtn://n3/*`, `dtn://n3/app`.
    pub pattern: String,
    /// Next hop.
    pub via: NeighbourId,
}

/// Status report policy (RFC 9171 §5.1, §6.1).
#[derive(Clone, Debug)]
pub struct StatusReportPolicy {
    /// Generate status reports at all.
    pub enabled: bool,
    /// Most status reports generated per second (token bucket); the rest are not generated.
    pub max_per_second: u32,
}

/// Engine configuration.
#[derive(Debug)]
pub struct EngineConfig {
    /// This node's ID (`ipn:1.0` or `dtn://node1/`), also its administrative endpoint.
    pub node_id: bpv7::Eid,
    /// Neighbours, indexed by [`NeighbourId`].
    pub neighbours: Vec<Neighbour>,
    /// Static routes, in order of preference.
    pub routes: Vec<StaticRoute>,
    /// Contact Graph Routing over a contact plan (ipn destinations), tried before static
    /// routes. `None`: static routes only.
    pub router: Option<crate::routing::Router>,
    /// Status report policy.
    pub status_reports: StatusReportPolicy,
    /// Largest bundle accepted from neighbours or applications.
    pub max_bundle_size: u64,
    /// Most bytes held by the fragment reassembler.
    pub max_reassembly_bytes: u64,
    /// Service number (ipn) of the echo service, also `dtn://node/echo`.
    pub echo_service: Option<u64>,
    /// Hop limit put in bundles created here.
    pub default_hop_limit: u64,
    /// Wait before re-routing a bundle whose transfer failed.
    pub retry_delay_ms: u64,
    /// Most unacknowledged deliveries per registration.
    pub delivery_window: usize,
}

/// What the engine asks the daemon to do.
#[derive(Debug)]
pub enum Action {
    /// Hand `bundle` to the neighbour's adapter with transfer id `transfer`; report the outcome
    /// with [`BundleEngine::transfer_outcome`] (also when the adapter refuses it at once).
    Transmit {
        /// The neighbour.
        neighbour: NeighbourId,
        /// Id to echo in the outcome.
        transfer: TransferId,
        /// The encoded bundle (after forwarding updates).
        bundle: Bytes,
        /// Expedited priority: bypass aggregation waits.
        urgent: bool,
    },
    /// Push a delivery to a registration (the daemon forwards it to the client's channel).
    Deliver {
        /// The registration.
        registration: RegistrationId,
        /// The delivery.
        delivery: Delivery,
    },
}

/// The answer to a bundle received from a neighbour.
#[derive(Debug, PartialEq, Eq)]
pub enum Reception {
    /// Accepted into the store; acknowledge the transfer once `ticket` is persisted.
    Accepted(Ticket),
    /// Accepted without storing (e.g. a duplicate, a status report consumed here, a bundle
    /// delivered to a local service at once); acknowledge now.
    Consumed,
    /// Refused: the store is full (TCPCL: XFER_REFUSE "no resources").
    Refused(String),
    /// Discarded as invalid (counted; the transfer itself is still acknowledged).
    Discarded(String),
}

/// The bundle processing engine.
#[derive(Debug)]
pub struct BundleEngine {}

impl BundleEngine {
    /// An engine over `store`, resuming every bundle found in it (restart recovery).
    pub fn new(_config: EngineConfig, _store: Store, _now: DtnMillis) -> Result<Self, AgentError> {
        unimplemented!("processing helper")
    }
    /// RFC 9171 §5.6: a bundle received from a neighbour (`from`: the adapter's neighbour,
    /// if known; `peer_node_id`: the node ID the convergence layer learnt).
    pub fn receive(
        &mut self,
        _from: Option<NeighbourId>,
        _peer_node_id: Option<&str>,
        _bundle: Bytes,
        _now: DtnMillis,
    ) -> Reception {
        unimplemented!("processing helper")
    }
    /// RFC 9171 §5.2: an application sends a bundle. Await the ticket before replying.
    pub fn send(
        &mut self,
        _req: SendRequest,
        _registration: Option<RegistrationId>,
        _now: DtnMillis,
    ) -> Result<(SendAccepted, Ticket), AgentError> {
        unimplemented!("processing helper")
    }
    /// Register an endpoint for `registration`; pending bundles for it are delivered.
    pub fn register(
        &mut self,
        _registration: RegistrationId,
        _endpoint: &str,
        _now: DtnMillis,
    ) -> Result<(), AgentError> {
        unimplemented!("processing helper")
    }
    /// End a registration; its unacknowledged deliveries wait for the endpoint's return.
    pub fn unregister(&mut self, _registration: RegistrationId, _now: DtnMillis) {
        unimplemented!("processing helper")
    }
    /// The application acknowledged a delivery: record the identity as delivered and release
    /// the bundle. Returns the ticket of the delivered-id record.
    pub fn ack_delivery(
        &mut self,
        _registration: RegistrationId,
        _token: u64,
        _now: DtnMillis,
    ) -> Option<Ticket> {
        unimplemented!("processing helper")
    }
    /// The outcome of a `Transmit`.
    pub fn transfer_outcome(
        &mut self,
        _transfer: TransferId,
        _outcome: Result<(), FailureReason>,
        _now: DtnMillis,
    ) {
        unimplemented!("processing helper")
    }
    /// A neighbour's link went up or down (contacts, adapter state).
    pub fn link_state(&mut self, _neighbour: NeighbourId, _up: bool, _now: DtnMillis) {
        unimplemented!("processing helper")
    }
    /// Replace the contact-plan router (plan reload).
    pub fn replace_router(&mut self, _router: Option<crate::routing::Router>, _now: DtnMillis) {
        unimplemented!("processing helper")
    }
    /// Run timers (expiry, retries, status-report tokens) due at `now`.
    pub fn handle_timeout(&mut self, _now: DtnMillis) {
        unimplemented!("processing helper")
    }
    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        unimplemented!("processing helper")
    }
    /// When [`BundleEngine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<DtnMillis> {
        unimplemented!("processing helper")
    }
    /// Metrics of the engine and the store.
    pub fn stats(&self) -> NodeStats {
        unimplemented!("processing helper")
    }
    /// Identity of a stored bundle for logs.
    pub fn describe(&self, _id: &BundleIdent) -> String {
        unimplemented!("processing helper")
    }
}
