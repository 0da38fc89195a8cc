//! The bundle processing engine: RFC 9171 §5 as a sans-IO state machine.
//!
//! API CONTRACT fixed by the lead (signatures); implemented in the submodules: `reception`
//! (§5.6, §5.2 application sends), dispatch and `forwarding` (§5.3, §5.4, §5.4.1, proactive
//! fragmentation §5.8), `delivery` (§5.7, registrations, the echo service, administrative
//! records addressed here), `fragments` (§5.9 reassembly), `status_reports` (§5.1, §6.1),
//! `expiry` (§5.5 lifetime expiry by the store's expiry index, §5.10 deletion, timers,
//! restart recovery), `meta` (the metadata stored with each bundle) and `stats` (metrics).
//!
//! The engine takes inputs (bundles received from neighbours, application sends, registrations,
//! acknowledgements, transfer outcomes, link state, the current DTN time) and produces
//! [`Action`]s (transmit a bundle to a neighbour, deliver one to a registration) and its next
//! deadline. It never reads a clock or a socket; it calls the [`Store`] synchronously and hands
//! back [`Ticket`]s that the daemon awaits before acknowledging anything.
//!
//! ## Decisions
//!
//! - Custody: a bundle is in the store before `receive`/`send` return its ticket; it leaves
//!   when every transfer of it (one, or one per fragment) is reported `Transferred` (also for
//!   unreliable layers such as UDP: best effort, after it is on disk here, see
//!   [`Neighbour::reliable`]), when the application acknowledges its delivery (after the
//!   delivered-id record is written), or when it expires or is deleted.
//! - Acknowledgements wait for the disk: the ticket `receive`/`send` return, and every
//!   "received" status report of a stored bundle, which the engine generates only once the
//!   bundle is durable ([`Action::AwaitDurable`]). Reports of bundles deleted on reception
//!   (nothing stored) go at once.
//! - Memory: per stored bundle the engine keeps its key, destination, size, expiry, receive
//!   time, previous hop, flags, priority and state (about 330 bytes resident with the indexes,
//!   measured by `benches/restart.rs`); bytes are read from the store at transmit or delivery
//!   time, metadata only when a status report needs it.
//! - Neighbours start usable; `link_state` marks them down or up. A failed transfer pauses the
//!   neighbour for `retry_delay_ms` (its queue goes back to routing), so a dead peer costs one
//!   probe per delay, not a retry per bundle.
//! - A bundle whose every route is a link too small for it while it must not be fragmented is
//!   deleted with reason 6 "no known route to destination from here" (§5.4.2); a `TooLarge`
//!   outcome teaches the engine the link's limit (then it fragments, §5.8).
//! - Status reports are bundles created here with a lifetime of one day, rate-limited by a
//!   token bucket (burst of one second's worth); reports beyond it are counted as suppressed.
//! - Creation timestamps: `now` with a per-millisecond sequence; monotonic across clock steps
//!   back and restarts (seeded from the stored bundles created here).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

use crate::api::Priority;
use crate::api::{
    AgentError, BundleIdent, Delivery, DtnMillis, NodeStats, RegistrationId, SendAccepted,
    SendRequest,
};
use crate::store::{BundleKey, Store, Ticket};
pub use contacts::PlannedLink;
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
    /// custody may be released at once. Over an unreliable layer (UDP, LTP green) the bundle
    /// is released on `Transferred` too (best effort: nothing would ever confirm it), but only
    /// once it is on disk here, so that an acknowledgement already given for it upstream
    /// stays true.
    pub reliable: bool,
    /// Most transfers handed to the adapter and not yet reported, per neighbour.
    pub max_in_flight: usize,
    /// Accept a primary block without CRC from this neighbour (dtn7-rs 0.21 sends such bundles;
    /// see INTEROP.md). Default false.
    pub accept_primary_without_crc: bool,
    /// With a contact plan, hand bundles to the adapter no faster than the active contact's
    /// rate (for convergence layers that do not pace themselves: TCPCL, UDP; an LTP span is
    /// paced by the LTP engine at that rate instead).
    pub pace_at_contact_rate: bool,
}

impl Neighbour {
    /// Its `ipn` node number (two- or three-element form), if its node ID is an ipn one: how
    /// CGR next hops and contact plans name it.
    pub fn node_number(&self) -> Option<u64> {
        match self.node_id {
            Some(bpv7::Eid::Ipn { node, .. } | bpv7::Eid::Ipn3 { node, .. }) => Some(node),
            _ => None,
        }
    }
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
    /// A plan-driven link changed (see [`contacts`]): a contact to the neighbour started or
    /// ended, or a plan reload changed whether the plan drives it. The engine has already
    /// updated its own view (queues re-routed on down); the daemon applies it to the
    /// convergence layer (LTP link-state cue and span timing, emulation gate).
    Link {
        /// The neighbour.
        neighbour: NeighbourId,
        /// The plan's view now; `None`: the plan no longer names it (always up again).
        link: Option<PlannedLink>,
    },
    /// Work that waits for a store write: once [`Store::persisted`] of `ticket` resolves, call
    /// [`BundleEngine::durable`] with `token` and whether it succeeded. Used where something
    /// leaving the node says that a bundle is held here: a "received" status report of a
    /// bundle in custody (RFC 9171 §5.6 step 2), and the release of a bundle forwarded over
    /// a layer that confirms nothing (UDP, LTP green), which is first made durable here.
    AwaitDurable {
        /// The write to wait for.
        ticket: Ticket,
        /// What to hand back to [`BundleEngine::durable`].
        token: u64,
    },
}

/// What the engine does once a store write is durable (see [`Action::AwaitDurable`]).
#[derive(Debug)]
enum Deferred {
    /// The "received" status report of a bundle now on disk (`unprocessable`: the report a
    /// block's "report if unprocessable" flag asks for, RFC 9171 §5.6 step 4).
    ReceivedReport {
        /// The bundle's metadata (boxed: most deferred work is a release).
        meta: Box<meta::Meta>,
        /// Reason code "block unsupported" rather than "no information".
        unprocessable: bool,
    },
    /// Release a bundle forwarded over an unreliable layer, now on disk here.
    Release(Id),
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

pub mod contacts;
mod delivery;
mod expiry;
mod forwarding;
mod fragments;
mod meta;
mod reception;
mod stats;
mod status_reports;

use meta::{Kind, Meta};
use status_reports::TokenBucket;

/// Internal handle of a stored bundle (monotonic; its order is arrival order).
type Id = u64;

/// Lifetime of bundles this node generates itself (status reports): one day.
const GENERATED_LIFETIME_MS: u64 = 86_400_000;
/// Most expired bundles removed per `handle_timeout` call (the rest on the next call, which
/// `poll_timeout` makes immediate).
const EXPIRY_BATCH: usize = 1024;
/// Interval of the delivered-id record pruning.
const PRUNE_INTERVAL_MS: u64 = 60_000;
/// How far ahead of the contact rate a paced neighbour may be handed bundles, ms (keeps the
/// adapter busy between wake-ups without exceeding the rate by more than this much data).
pub const PACE_BURST_MS: u64 = 50;
/// Most partial bundles held by the reassembler.
const MAX_PARTIAL_BUNDLES: usize = 4096;

/// Where a stored bundle is in the engine (in memory only; rebuilt from [`Kind`] at restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Being dispatched (transient).
    New,
    /// No route or no link: waits in the store (RFC 9171 §5.4.1 contraindicated).
    Waiting,
    /// In a neighbour's queue.
    Queued(NeighbourId),
    /// Handed to a neighbour's adapter as `pending` transfers (several for fragments).
    InFlight {
        /// The neighbour.
        neighbour: NeighbourId,
        /// Transfers not yet reported.
        pending: u32,
        /// One of them failed.
        failed: bool,
        /// One failed because it was too large.
        too_large: bool,
    },
    /// A transfer failed: re-routed at this time.
    Retry(DtnMillis),
    /// For a local endpoint without a registration (or with a full window).
    LocalPending,
    /// Pushed to a registration, not yet acknowledged.
    Delivering {
        /// The registration.
        registration: RegistrationId,
        /// The delivery token.
        token: u64,
    },
    /// A fragment held for reassembly.
    Fragment,
    /// Forwarded over a layer that confirms nothing: leaves the store once it is on disk
    /// ([`Deferred::Release`]).
    Unconfirmed,
}

/// What the engine keeps in memory per stored bundle (small: the rest is in the metadata
/// blob in the store).
#[derive(Debug)]
struct Entry {
    key: BundleKey,
    destination: bpv7::Eid,
    size: u64,
    expiry: DtnMillis,
    received_ms: DtnMillis,
    previous: Option<NeighbourId>,
    /// Bundle processing control flags (RFC 9171 §4.2.3; all defined bits fit in 32).
    flags: u32,
    priority: Priority,
    kind: Kind,
    state: State,
}

impl Entry {
    fn has_flag(&self, f: bpv7::BundleFlags) -> bool {
        u64::from(self.flags) & f.bits() == f.bits()
    }
}

/// Runtime state of a neighbour.
#[derive(Debug)]
struct NeighbourState {
    cfg: Neighbour,
    /// Link usable (initially true: adapters connect on demand; `link_state` changes it).
    up: bool,
    /// Limit learnt from a `TooLarge` outcome.
    learnt_max: Option<u64>,
    /// Not used until then after a failed transfer.
    paused_until: Option<DtnMillis>,
    /// Contact-rate pacing (see [`contacts`]): bytes/s while a paced contact is active.
    pace_rate: Option<u64>,
    /// When the link will have sent what was handed to it at `pace_rate`.
    pace_free_at: DtnMillis,
    /// The queue waits for pacing until then.
    pace_wake: Option<DtnMillis>,
    /// Queues by priority (index: Bulk, Normal, Expedited), in arrival order.
    queues: [BTreeSet<Id>; 3],
    in_flight: usize,
    bundles_out: u64,
    bytes_out: u64,
    failures: BTreeMap<&'static str, u64>,
}

impl NeighbourState {
    fn max_size(&self) -> Option<u64> {
        match (self.cfg.max_bundle_size.filter(|&m| m > 0), self.learnt_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn usable(&self, now: DtnMillis) -> bool {
        self.up && self.paused_until.is_none_or(|t| t <= now)
    }
    fn queued(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
    }
    /// Whether `transfers` more fit in the window (`max_in_flight`) beside those in flight; a
    /// batch larger than the whole window fits only when nothing is in flight.
    fn fits(&self, transfers: usize) -> bool {
        self.in_flight == 0
            || self.in_flight.saturating_add(transfers) <= self.cfg.max_in_flight.max(1)
    }
}

/// A registration of an application endpoint.
#[derive(Debug)]
struct Registration {
    endpoint: String,
    /// Unacknowledged deliveries: token → bundle.
    outstanding: HashMap<u64, Id>,
}

/// A parsed static route pattern.
#[derive(Debug, Clone)]
enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }
    fn matches(&self, dest: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => dest.starts_with(p.as_str()),
            Pattern::Exact(e) => dest == e,
        }
    }
}

/// Counters of the engine (exported by [`BundleEngine::stats`]).
#[derive(Debug, Default)]
struct Counters {
    received: u64,
    originated: u64,
    forwarded: u64,
    delivered: u64,
    expired: u64,
    duplicate: u64,
    reports_sent: u64,
    reports_suppressed: u64,
    admin_received: u64,
    deleted: BTreeMap<&'static str, u64>,
    discarded: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
}

/// The bundle processing engine.
#[derive(Debug)]
pub struct BundleEngine {
    node_id: bpv7::Eid,
    store: Store,
    neighbours: Vec<NeighbourState>,
    /// Neighbour by its `ipn` node number (CGR next hops).
    by_node_number: HashMap<u64, NeighbourId>,
    routes: Vec<(Pattern, NeighbourId)>,
    router: Option<crate::routing::Router>,
    bookings: HashMap<Id, crate::routing::Booking>,
    policy: StatusReportPolicy,
    bucket: TokenBucket,
    max_bundle_size: u64,
    echo_service: Option<u64>,
    default_hop_limit: u64,
    retry_delay_ms: u64,
    delivery_window: usize,

    next_id: Id,
    entries: HashMap<Id, Entry>,
    by_key: HashMap<BundleKey, Id>,
    waiting: BTreeSet<Id>,
    retries: BTreeSet<(DtnMillis, Id)>,
    transfers: HashMap<TransferId, (Id, NeighbourId, u64)>,
    next_transfer: TransferId,

    registrations: HashMap<RegistrationId, Registration>,
    by_endpoint: HashMap<String, RegistrationId>,
    /// Local bundles not pushed yet, by destination endpoint, in arrival order.
    pending_local: HashMap<String, BTreeSet<Id>>,
    next_token: u64,

    reassembler: bpv7::Reassembler,
    /// Stored fragments addressed here, by the key of the whole bundle.
    fragment_groups: HashMap<BundleKey, Vec<Id>>,
    /// The group of each stored fragment addressed here.
    fragment_group_of: HashMap<Id, BundleKey>,
    /// Groups to reassemble again from the store (after a quota refusal), and when.
    reassembly_retry: BTreeMap<BundleKey, DtnMillis>,

    /// Last creation time used and its sequence number (RFC 9171 §4.2.7).
    last_creation: (DtnMillis, u64),
    next_expiry: Option<DtnMillis>,
    next_contact_change: Option<DtnMillis>,
    /// Plan-driven state of each neighbour (index: [`NeighbourId`]); `None`: not in the plan.
    planned: Vec<Option<PlannedLink>>,
    next_prune: DtnMillis,
    actions: VecDeque<Action>,
    /// Work waiting for store writes, by [`Action::AwaitDurable`] token.
    deferred: HashMap<u64, Deferred>,
    next_deferred: u64,
    counters: Counters,
}

impl BundleEngine {
    /// An engine over `store`, resuming every bundle found in it (restart recovery).
    ///
    /// Reads only the metadata of stored bundles ([`Store::iter_meta`]), except for fragments
    /// addressed to this node, which are read to rebuild the reassembler.
    pub fn new(config: EngineConfig, store: Store, now: DtnMillis) -> Result<Self, AgentError> {
        let mut by_node_number = HashMap::new();
        for (i, n) in config.neighbours.iter().enumerate() {
            if let Some(node) = n.node_number() {
                by_node_number.entry(node).or_insert(NeighbourId(i));
            }
        }
        for r in &config.routes {
            if r.via.0 >= config.neighbours.len() {
                return Err(AgentError::Invalid(format!(
                    "route {} via unknown neighbour {}",
                    r.pattern, r.via.0
                )));
            }
        }
        let neighbour_count = config.neighbours.len();
        let max_reassembly = usize::try_from(config.max_reassembly_bytes).unwrap_or(usize::MAX);
        let mut engine = BundleEngine {
            node_id: config.node_id.node_id(),
            store,
            neighbours: config
                .neighbours
                .into_iter()
                .map(|cfg| NeighbourState {
                    cfg,
                    up: true,
                    learnt_max: None,
                    paused_until: None,
                    pace_rate: None,
                    pace_free_at: 0,
                    pace_wake: None,
                    queues: Default::default(),
                    in_flight: 0,
                    bundles_out: 0,
                    bytes_out: 0,
                    failures: BTreeMap::new(),
                })
                .collect(),
            by_node_number,
            routes: config
                .routes
                .iter()
                .map(|r| (Pattern::parse(&r.pattern), r.via))
                .collect(),
            router: config.router,
            bookings: HashMap::new(),
            bucket: TokenBucket::new(config.status_reports.max_per_second, now),
            policy: config.status_reports,
            max_bundle_size: config.max_bundle_size,
            echo_service: config.echo_service.filter(|&s| s != 0),
            default_hop_limit: config.default_hop_limit,
            retry_delay_ms: config.retry_delay_ms.max(1),
            delivery_window: config.delivery_window.max(1),
            next_id: 0,
            entries: HashMap::new(),
            by_key: HashMap::new(),
            waiting: BTreeSet::new(),
            retries: BTreeSet::new(),
            transfers: HashMap::new(),
            next_transfer: 1,
            registrations: HashMap::new(),
            by_endpoint: HashMap::new(),
            pending_local: HashMap::new(),
            next_token: 1,
            reassembler: bpv7::Reassembler::new(bpv7::ReassemblerConfig {
                max_bytes: max_reassembly,
                max_bundles: MAX_PARTIAL_BUNDLES,
            }),
            fragment_groups: HashMap::new(),
            fragment_group_of: HashMap::new(),
            reassembly_retry: BTreeMap::new(),
            last_creation: (0, 0),
            next_expiry: None,
            next_contact_change: None,
            planned: vec![None; neighbour_count],
            next_prune: now.saturating_add(PRUNE_INTERVAL_MS),
            actions: VecDeque::new(),
            deferred: HashMap::new(),
            next_deferred: 0,
            counters: Counters::default(),
        };
        engine.recover(now)?;
        Ok(engine)
    }

    /// RFC 9171 §5.6: a bundle received from a neighbour (`from`: the adapter's neighbour,
    /// if known; `peer_node_id`: the node ID the convergence layer learnt).
    pub fn receive(
        &mut self,
        from: Option<NeighbourId>,
        peer_node_id: Option<&str>,
        bundle: Bytes,
        now: DtnMillis,
    ) -> Reception {
        self.receive_bundle(from, peer_node_id, bundle, now)
    }

    /// RFC 9171 §5.2: an application sends a bundle. Await the ticket before replying.
    pub fn send(
        &mut self,
        req: SendRequest,
        registration: Option<RegistrationId>,
        now: DtnMillis,
    ) -> Result<(SendAccepted, Ticket), AgentError> {
        self.send_bundle(req, registration, now)
    }

    /// Register an endpoint for `registration`; pending bundles for it are delivered.
    pub fn register(
        &mut self,
        registration: RegistrationId,
        endpoint: &str,
        now: DtnMillis,
    ) -> Result<(), AgentError> {
        self.register_endpoint(registration, endpoint, now)
    }

    /// End a registration; its unacknowledged deliveries wait for the endpoint's return.
    pub fn unregister(&mut self, registration: RegistrationId, now: DtnMillis) {
        self.unregister_endpoint(registration, now)
    }

    /// The application acknowledged a delivery: record the identity as delivered and release
    /// the bundle. Returns the ticket of the delivered-id record (`None`: no such delivery
    /// outstanding), or the store's error, in which case the bundle stays and is delivered
    /// again.
    pub fn ack_delivery(
        &mut self,
        registration: RegistrationId,
        token: u64,
        now: DtnMillis,
    ) -> Result<Option<Ticket>, crate::store::StoreError> {
        self.ack(registration, token, now)
    }

    /// The outcome of a `Transmit`.
    pub fn transfer_outcome(
        &mut self,
        transfer: TransferId,
        outcome: Result<(), FailureReason>,
        now: DtnMillis,
    ) {
        self.outcome(transfer, outcome, now)
    }

    /// A neighbour's link went up or down (contacts, adapter state).
    pub fn link_state(&mut self, neighbour: NeighbourId, up: bool, now: DtnMillis) {
        self.set_link(neighbour, up, now)
    }

    /// Replace the contact-plan router (plan reload); waiting and queued bundles are routed
    /// again.
    pub fn replace_router(&mut self, router: Option<crate::routing::Router>, now: DtnMillis) {
        // Bookings refer to the old plan's contacts: they are dropped with it.
        self.bookings.clear();
        self.router = router;
        self.apply_contacts(now);
        for n in 0..self.neighbours.len() {
            self.requeue_neighbour(NeighbourId(n), now);
        }
        self.reroute_waiting(now);
    }

    /// Run timers (expiry, retries, status-report tokens) due at `now`.
    pub fn handle_timeout(&mut self, now: DtnMillis) {
        self.run_timers(now)
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The write an [`Action::AwaitDurable`] waited for is durable (`ok`), or failed.
    pub fn durable(&mut self, token: u64, ok: bool, now: DtnMillis) {
        match self.deferred.remove(&token) {
            Some(Deferred::ReceivedReport {
                meta,
                unprocessable,
            }) => {
                // A bundle the store failed to keep is not reported as received.
                if ok {
                    self.received_report(&meta, unprocessable, now);
                }
            }
            Some(Deferred::Release(id)) => {
                if self
                    .entries
                    .get(&id)
                    .is_some_and(|e| matches!(e.state, State::Unconfirmed))
                {
                    self.release(id);
                }
            }
            None => tracing::debug!(token, "durable: unknown token"),
        }
    }

    /// Runs `work` once `ticket` is durable (through the daemon: [`Action::AwaitDurable`]).
    fn defer(&mut self, ticket: Ticket, work: Deferred) {
        let token = self.next_deferred;
        self.next_deferred += 1;
        self.deferred.insert(token, work);
        self.actions
            .push_back(Action::AwaitDurable { ticket, token });
    }

    /// When [`BundleEngine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<DtnMillis> {
        [
            self.next_expiry,
            self.retries.first().map(|(t, _)| *t),
            self.next_contact_change,
            self.reassembly_retry.values().min().copied(),
            self.neighbours.iter().filter_map(|n| n.paused_until).min(),
            self.neighbours.iter().filter_map(|n| n.pace_wake).min(),
            Some(self.next_prune),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Metrics of the engine and the store.
    pub fn stats(&self) -> NodeStats {
        self.collect_stats()
    }

    /// Identity of a stored bundle for logs.
    pub fn describe(&self, id: &BundleIdent) -> String {
        let source = match id.source.parse::<bpv7::Eid>() {
            Ok(s) => s,
            Err(_) => return format!("{id} (bad source)"),
        };
        let bid = bpv7::BundleId {
            source,
            timestamp: bpv7::CreationTimestamp::new(id.creation_ms, id.sequence),
            fragment: id.fragment,
        };
        match self
            .by_key
            .get(&BundleKey::from_id(&bid))
            .and_then(|i| self.entries.get(i))
        {
            Some(e) => format!(
                "{id} -> {} ({} bytes, {:?}, {:?}, expires {})",
                e.destination, e.size, e.kind, e.state, e.expiry
            ),
            None => format!("{id} (not stored)"),
        }
    }

    /// The node ID this engine runs as.
    pub fn node_id(&self) -> &bpv7::Eid {
        &self.node_id
    }

    /// Number of bundles held in the engine's index (for tests and memory figures).
    pub fn bundle_count(&self) -> usize {
        self.entries.len()
    }

    // ---------------------------------------------------------------- shared helpers

    /// Whether `eid` is an endpoint of this node (RFC 9171 §5.3: `ipn:N.*` for node N, any
    /// `dtn://node/...` for node name `node`).
    fn is_local(&self, eid: &bpv7::Eid) -> bool {
        !eid.is_null() && eid.node_id() == self.node_id
    }

    /// Whether `eid` is this node's administrative endpoint (its node ID, RFC 9171 §4.2.5.2).
    fn is_admin_endpoint(&self, eid: &bpv7::Eid) -> bool {
        *eid == self.node_id
    }

    /// Whether `eid` is the echo service: `ipn:N.<echo>` or `dtn://node/echo`.
    fn is_echo(&self, eid: &bpv7::Eid) -> bool {
        let Some(svc) = self.echo_service else {
            return false;
        };
        if !self.is_local(eid) {
            return false;
        }
        match eid {
            bpv7::Eid::Ipn { service, .. } | bpv7::Eid::Ipn3 { service, .. } => *service == svc,
            bpv7::Eid::Dtn { demux, .. } => demux == "echo",
            _ => false,
        }
    }

    /// A fresh creation timestamp: `now` with a per-millisecond sequence number; never
    /// repeats, also when the clock steps back (the last time is kept and the sequence grows)
    /// and across restarts (seeded from the stored bundles created here).
    fn next_timestamp(&mut self, now: DtnMillis) -> bpv7::CreationTimestamp {
        let (last, seq) = self.last_creation;
        self.last_creation = if now > last {
            (now, 0)
        } else {
            (last, seq + 1)
        };
        bpv7::CreationTimestamp::new(self.last_creation.0, self.last_creation.1)
    }

    /// Add a stored bundle to the in-memory index.
    fn add_entry(&mut self, key: BundleKey, meta: &Meta, size: u64, expiry: DtnMillis) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        let previous = meta.previous.as_ref().and_then(|p| self.neighbour_of(p));
        if meta.source.node_id() == self.node_id {
            let c = (meta.creation_ms, meta.sequence);
            if c > self.last_creation {
                self.last_creation = c;
            }
        }
        self.by_key.insert(key.clone(), id);
        self.entries.insert(
            id,
            Entry {
                key,
                destination: meta.destination.clone(),
                size,
                expiry,
                received_ms: meta.received_ms,
                previous,
                flags: meta.flags as u32,
                priority: meta.priority,
                kind: meta.kind,
                state: State::New,
            },
        );
        if self.next_expiry.is_none_or(|t| expiry < t) {
            self.next_expiry = Some(expiry);
        }
        id
    }

    /// The neighbour whose node ID is `node` (or whose node ID is `node`'s node).
    fn neighbour_of(&self, node: &bpv7::Eid) -> Option<NeighbourId> {
        if let bpv7::Eid::Ipn { node, .. } = node {
            return self.by_node_number.get(node).copied();
        }
        let n = node.node_id();
        self.neighbours
            .iter()
            .position(|s| s.cfg.node_id.as_ref().map(|e| e.node_id()) == Some(n.clone()))
            .map(NeighbourId)
    }

    /// Take a bundle out of every in-memory structure (not the store).
    fn detach(&mut self, id: Id) -> Option<Entry> {
        self.unlink(id);
        self.forget_fragment(id);
        let e = self.entries.remove(&id)?;
        self.by_key.remove(&e.key);
        if let Some(b) = self.bookings.remove(&id) {
            if let Some(r) = self.router.as_mut() {
                r.release(b);
            }
        }
        Some(e)
    }

    /// Remove `id` from the structure its state puts it in; its state becomes `New`.
    fn unlink(&mut self, id: Id) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let state = std::mem::replace(&mut e.state, State::New);
        let priority = e.priority;
        match state {
            State::Waiting => {
                self.waiting.remove(&id);
            }
            State::Queued(n) => {
                self.neighbours[n.0].queues[prio_index(priority)].remove(&id);
            }
            State::Retry(t) => {
                self.retries.remove(&(t, id));
            }
            State::LocalPending => {
                let ep = e.destination.to_string();
                if let Some(q) = self.pending_local.get_mut(&ep) {
                    q.remove(&id);
                    if q.is_empty() {
                        self.pending_local.remove(&ep);
                    }
                }
            }
            State::Delivering {
                registration,
                token,
            } => {
                if let Some(r) = self.registrations.get_mut(&registration) {
                    r.outstanding.remove(&token);
                }
            }
            State::Fragment => e.state = State::Fragment,
            State::New | State::InFlight { .. } | State::Unconfirmed => {}
        }
    }

    /// Set a bundle's state (the caller has unlinked the old one).
    fn set_state(&mut self, id: Id, state: State) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.state = state;
        }
    }

    /// Remove a bundle from the store and the index (custody released).
    fn release(&mut self, id: Id) -> Option<Entry> {
        let e = self.detach(id)?;
        if let Err(err) = self.store.remove(&e.key) {
            tracing::warn!(%err, "store remove failed");
        }
        Some(e)
    }

    /// RFC 9171 §5.10: delete a stored bundle with `reason`, with a "deleted" status report
    /// if requested.
    fn delete(&mut self, id: Id, reason: bpv7::ReasonCode, now: DtnMillis) {
        let meta = self.meta_if(id, bpv7::BundleFlags::REPORT_DELETION);
        if self.release(id).is_none() {
            return;
        }
        *self
            .counters
            .deleted
            .entry(status_reports::reason_label(reason))
            .or_default() += 1;
        if let Some(m) = meta {
            self.report(&m, status_reports::Report::Deleted, reason, now);
        }
    }

    /// The metadata of a stored bundle if it has `flag` set (a report is requested), without
    /// a store read otherwise.
    fn meta_if(&self, id: Id, flag: bpv7::BundleFlags) -> Option<Meta> {
        if self.entries.get(&id)?.has_flag(flag) {
            self.load_meta(id)
        } else {
            None
        }
    }

    /// The metadata of a stored bundle.
    fn load_meta(&self, id: Id) -> Option<Meta> {
        let e = self.entries.get(&id)?;
        match self.store.get_meta(&e.key) {
            Ok(Some(rec)) => match Meta::decode(&rec.meta) {
                Ok(m) => Some(m),
                Err(err) => {
                    tracing::warn!(%err, "stored metadata does not decode");
                    None
                }
            },
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%err, "store read failed");
                None
            }
        }
    }

    /// A stored bundle's bytes, decoded (validated at reception, so the primary CRC rule is
    /// relaxed: a neighbour may have been allowed to omit it).
    fn load_bundle(&self, id: Id) -> Option<bpv7::ParsedBundle> {
        let e = self.entries.get(&id)?;
        let bytes = match self.store.get(&e.key) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(%err, "store read failed");
                return None;
            }
        };
        match bpv7::ParsedBundle::decode_with(bytes, &stored_decode_options()) {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::warn!(%err, "stored bundle does not decode");
                None
            }
        }
    }
}

/// Decode options for bundles read back from the store (validated once at reception).
fn stored_decode_options() -> bpv7::DecodeOptions {
    bpv7::DecodeOptions {
        require_primary_crc: false,
        require_bundle_age: true,
    }
}

/// Queue index of a priority.
fn prio_index(p: Priority) -> usize {
    match p {
        Priority::Bulk => 0,
        Priority::Normal => 1,
        Priority::Expedited => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, StoreConfig};

    fn engine(node: &str) -> BundleEngine {
        let store = Store::open(&StoreConfig {
            path: std::env::temp_dir().join("unused"),
            durability: Durability::Memory,
            quota_bytes: 1 << 20,
            quota_bundles: 100,
        })
        .unwrap();
        let cfg = EngineConfig {
            node_id: node.parse().unwrap(),
            neighbours: Vec::new(),
            routes: Vec::new(),
            router: None,
            status_reports: StatusReportPolicy {
                enabled: true,
                max_per_second: 10,
            },
            max_bundle_size: 1 << 20,
            max_reassembly_bytes: 1 << 20,
            echo_service: Some(7),
            default_hop_limit: 16,
            retry_delay_ms: 1000,
            delivery_window: 4,
        };
        BundleEngine::new(cfg, store, 1_000).unwrap()
    }

    #[test]
    fn route_patterns() {
        assert!(Pattern::parse("*").matches("dtn://x/y"));
        let p = Pattern::parse("ipn:3.*");
        assert!(p.matches("ipn:3.7") && p.matches("ipn:3.0"));
        assert!(!p.matches("ipn:30.1") && !p.matches("ipn:4.3"));
        let d = Pattern::parse("dtn://n3/*");
        assert!(d.matches("dtn://n3/app") && !d.matches("dtn://n33/app"));
        let e = Pattern::parse("ipn:3.7");
        assert!(e.matches("ipn:3.7") && !e.matches("ipn:3.70"));
    }

    #[test]
    fn local_admin_and_echo_endpoints() {
        let e = engine("ipn:5.0");
        let p = |s: &str| s.parse::<bpv7::Eid>().unwrap();
        assert!(e.is_local(&p("ipn:5.0")) && e.is_local(&p("ipn:5.99")));
        assert!(!e.is_local(&p("ipn:6.1")) && !e.is_local(&p("dtn:none")));
        assert!(e.is_admin_endpoint(&p("ipn:5.0")) && !e.is_admin_endpoint(&p("ipn:5.1")));
        assert!(e.is_echo(&p("ipn:5.7")) && !e.is_echo(&p("ipn:6.7")));
        let d = engine("dtn://node1/");
        assert!(d.is_local(&p("dtn://node1/app/x")) && !d.is_local(&p("dtn://node2/app")));
        assert!(d.is_echo(&p("dtn://node1/echo")) && !d.is_echo(&p("dtn://node1/echo2")));
        assert!(d.is_admin_endpoint(&p("dtn://node1/")));
    }

    #[test]
    fn creation_timestamps_never_repeat() {
        let mut e = engine("ipn:5.0");
        let a = e.next_timestamp(2_000);
        let b = e.next_timestamp(2_000);
        let c = e.next_timestamp(1_500); // clock stepped back
        let d = e.next_timestamp(2_001);
        assert_eq!((a.time.0, a.sequence), (2_000, 0));
        assert_eq!((b.time.0, b.sequence), (2_000, 1));
        assert_eq!((c.time.0, c.sequence), (2_000, 2));
        assert_eq!((d.time.0, d.sequence), (2_001, 0));
    }

    #[test]
    fn registration_rules() {
        let mut e = engine("ipn:5.0");
        assert!(matches!(
            e.register(1, "ipn:6.1", 1_000),
            Err(AgentError::Invalid(_))
        ));
        assert!(matches!(
            e.register(1, "bad eid", 1_000),
            Err(AgentError::Invalid(_))
        ));
        e.register(1, "ipn:5.1", 1_000).unwrap();
        e.register(1, "ipn:5.1", 1_000).unwrap(); // idempotent
        assert!(matches!(
            e.register(2, "ipn:5.1", 1_000),
            Err(AgentError::AlreadyRegistered(_))
        ));
        assert!(matches!(
            e.register(3, "ipn:5.7", 1_000),
            Err(AgentError::AlreadyRegistered(_))
        ));
        e.unregister(1, 1_000);
        e.register(2, "ipn:5.1", 1_000).unwrap();
    }

    #[test]
    fn send_validates_the_request() {
        let mut e = engine("ipn:5.0");
        let req = |dest: &str| SendRequest {
            source: None,
            destination: dest.into(),
            payload: Bytes::from_static(b"x"),
            lifetime_ms: 1000,
            priority: Priority::Normal,
            report_to: None,
            requests: Default::default(),
            no_fragment: false,
        };
        assert!(matches!(
            e.send(req("nope"), None, 2_000),
            Err(AgentError::Invalid(_))
        ));
        assert!(matches!(
            e.send(req("dtn:none"), None, 2_000),
            Err(AgentError::Invalid(_))
        ));
        let mut r = req("ipn:6.1");
        r.source = Some("ipn:9.1".into());
        assert!(matches!(
            e.send(r, None, 2_000),
            Err(AgentError::Invalid(_))
        ));
        let mut r = req("ipn:6.1");
        r.lifetime_ms = 0;
        assert!(matches!(
            e.send(r, None, 2_000),
            Err(AgentError::Invalid(_))
        ));
        let mut r = req("ipn:6.1");
        r.payload = Bytes::from(vec![0u8; (1 << 20) + 1]);
        assert!(matches!(
            e.send(r, None, 2_000),
            Err(AgentError::TooLarge { .. })
        ));
        assert!(matches!(
            e.send(req("ipn:6.1"), Some(77), 2_000),
            Err(AgentError::UnknownRegistration(77))
        ));
        let (acc, _) = e.send(req("ipn:6.1"), None, 2_000).unwrap();
        assert_eq!(acc.id.source, "ipn:5.0");
        assert_eq!(e.bundle_count(), 1);
        assert!(e.describe(&acc.id).contains("ipn:6.1"));
    }
}
