//! A deterministic in-memory network of bundle engines for the processing scenarios: Transmit
//! actions are shuttled into the peer engine's `receive` (or failed when the link is cut), on
//! a virtual clock. Every loop is bounded.
#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use node::api::{Delivery, DtnMillis, Priority, SendRequest, StatusRequests};
use node::processing::{
    Action, BundleEngine, EngineConfig, Neighbour, NeighbourId, PlannedLink, Reception,
    StaticRoute, StatusReportPolicy,
};
use node::store::{Durability, Store, StoreConfig};

/// A virtual time well after the DTN epoch (2025-ish).
pub const T0: DtnMillis = 800_000_000_000;

/// A memory store with the given quota.
pub fn memory_store(quota_bundles: u64, quota_bytes: u64) -> Store {
    Store::open(&StoreConfig {
        path: std::env::temp_dir().join("unused-memory-store"),
        durability: Durability::Memory,
        quota_bytes,
        quota_bundles,
    })
    .expect("memory store")
}

/// An engine configuration for node `n` with neighbours `(name, node number)`.
pub fn config(n: u64, neighbours: &[(&str, u64)]) -> EngineConfig {
    EngineConfig {
        node_id: format!("ipn:{n}.0").parse().unwrap(),
        neighbours: neighbours
            .iter()
            .map(|(name, node)| Neighbour {
                name: name.to_string(),
                node_id: Some(format!("ipn:{node}.0").parse().unwrap()),
                max_bundle_size: None,
                reliable: true,
                max_in_flight: 8,
                accept_primary_without_crc: false,
                pace_at_contact_rate: false,
            })
            .collect(),
        routes: Vec::new(),
        router: None,
        status_reports: StatusReportPolicy {
            enabled: true,
            max_per_second: 100,
        },
        max_bundle_size: 64 << 20,
        max_reassembly_bytes: 64 << 20,
        echo_service: Some(7),
        default_hop_limit: 32,
        retry_delay_ms: 1000,
        delivery_window: 16,
    }
}

/// A static route.
pub fn route(pattern: &str, via: usize) -> StaticRoute {
    StaticRoute {
        pattern: pattern.to_string(),
        via: NeighbourId(via),
    }
}

/// A send request with defaults.
pub fn request(dest: &str, payload: &[u8]) -> SendRequest {
    SendRequest {
        source: None,
        destination: dest.to_string(),
        payload: Bytes::copy_from_slice(payload),
        lifetime_ms: 3_600_000,
        priority: Priority::Normal,
        report_to: None,
        requests: StatusRequests::default(),
        no_fragment: false,
    }
}

/// What happened to a transmitted bundle.
#[derive(Debug, Clone)]
pub struct Sent {
    pub from: usize,
    pub to: usize,
    pub bytes: Bytes,
    pub reception: Option<String>,
}

/// Engines connected by links.
pub struct Net {
    pub engines: Vec<BundleEngine>,
    pub stores: Vec<Store>,
    pub now: DtnMillis,
    /// (engine, its neighbour id) → (peer engine, the peer's neighbour id for us).
    pub links: HashMap<(usize, usize), (usize, usize)>,
    /// Links that fail transfers (engine, neighbour).
    pub cut: HashMap<(usize, usize), bool>,
    /// Deliveries pushed to registrations: (engine, registration, delivery).
    pub deliveries: Vec<(usize, u64, Delivery)>,
    /// Every transfer made.
    pub sent: Vec<Sent>,
    /// Outcomes withheld (transfer ids per engine) when `hold` is set.
    pub hold: bool,
    pub held: Vec<(usize, u64)>,
    /// Plan-driven link changes: (engine, neighbour, state, time).
    pub link_changes: Vec<(usize, usize, Option<PlannedLink>, DtnMillis)>,
}

impl Net {
    /// A network of the given engine configurations (and stores).
    pub fn new(parts: Vec<(EngineConfig, Store)>) -> Net {
        let mut engines = Vec::new();
        let mut stores = Vec::new();
        for (c, s) in parts {
            engines.push(BundleEngine::new(c, s.clone(), T0).expect("engine"));
            stores.push(s);
        }
        Net {
            engines,
            stores,
            now: T0,
            links: HashMap::new(),
            cut: HashMap::new(),
            deliveries: Vec::new(),
            sent: Vec::new(),
            hold: false,
            held: Vec::new(),
            link_changes: Vec::new(),
        }
    }

    /// Connect engine `a`'s neighbour `na` with engine `b`'s neighbour `nb` (both ways).
    pub fn link(&mut self, a: usize, na: usize, b: usize, nb: usize) {
        self.links.insert((a, na), (b, nb));
        self.links.insert((b, nb), (a, na));
    }

    /// Shuttle actions until quiet (bounded).
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for i in 0..self.engines.len() {
                while let Some(a) = self.engines[i].poll_action() {
                    progress = true;
                    self.handle(i, a);
                }
            }
            if !progress {
                return;
            }
        }
        panic!("network did not settle");
    }

    fn handle(&mut self, i: usize, a: Action) {
        match a {
            Action::Transmit {
                neighbour,
                transfer,
                bundle,
                ..
            } => {
                if self.hold {
                    self.held.push((i, transfer));
                    self.sent.push(Sent {
                        from: i,
                        to: usize::MAX,
                        bytes: bundle,
                        reception: None,
                    });
                    return;
                }
                let cut = self.cut.get(&(i, neighbour.0)).copied().unwrap_or(false);
                match self.links.get(&(i, neighbour.0)).copied() {
                    Some((peer, their_nb)) if !cut => {
                        let r = self.engines[peer].receive(
                            Some(NeighbourId(their_nb)),
                            None,
                            bundle.clone(),
                            self.now,
                        );
                        let (ok, text) = match &r {
                            Reception::Refused(s) => (false, format!("refused: {s}")),
                            other => (true, format!("{other:?}")),
                        };
                        self.sent.push(Sent {
                            from: i,
                            to: peer,
                            bytes: bundle,
                            reception: Some(text),
                        });
                        let outcome = if ok {
                            Ok(())
                        } else {
                            Err(convergence::FailureReason::Refused("no resources".into()))
                        };
                        self.engines[i].transfer_outcome(transfer, outcome, self.now);
                    }
                    _ => {
                        self.sent.push(Sent {
                            from: i,
                            to: usize::MAX,
                            bytes: bundle,
                            reception: None,
                        });
                        self.engines[i].transfer_outcome(
                            transfer,
                            Err(convergence::FailureReason::Unreachable("cut".into())),
                            self.now,
                        );
                    }
                }
            }
            Action::Deliver {
                registration,
                delivery,
            } => self.deliveries.push((i, registration, delivery)),
            Action::Link { neighbour, link } => {
                self.link_changes.push((i, neighbour.0, link, self.now));
            }
            Action::AwaitDurable { ticket, token } => {
                let ok = block_on(self.stores[i].persisted(ticket)).is_ok();
                self.engines[i].durable(token, ok, self.now);
            }
        }
    }

    /// Advance the virtual clock to `t`, running every engine's timers as they fall due.
    pub fn advance_to(&mut self, t: DtnMillis) {
        for _ in 0..100_000 {
            self.run();
            let next = self
                .engines
                .iter()
                .filter_map(|e| e.poll_timeout())
                .min()
                .filter(|&d| d <= t);
            match next {
                Some(d) => {
                    self.now = self.now.max(d);
                    for e in &mut self.engines {
                        if e.poll_timeout().is_some_and(|x| x <= self.now) {
                            e.handle_timeout(self.now);
                        }
                    }
                }
                None => {
                    self.now = t;
                    self.run();
                    return;
                }
            }
        }
        panic!("timers did not settle");
    }

    /// Deliveries to engine `i`.
    pub fn delivered_to(&self, i: usize) -> Vec<&Delivery> {
        self.deliveries
            .iter()
            .filter(|(e, _, _)| *e == i)
            .map(|(_, _, d)| d)
            .collect()
    }

    /// Acknowledge every delivery made so far.
    pub fn ack_all(&mut self) {
        let ds: Vec<(usize, u64, u64)> = self
            .deliveries
            .iter()
            .map(|(e, r, d)| (*e, *r, d.token))
            .collect();
        for (e, r, t) in ds {
            self.engines[e].ack_delivery(r, t, self.now).expect("ack");
        }
        self.run();
    }

    /// A metric's total on engine `i` (0 if absent).
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        self.engines[i].stats().total(name).unwrap_or(0.0)
    }

    /// A labelled metric's value on engine `i`.
    pub fn metric_with(&self, i: usize, name: &str, label: (&str, &str)) -> f64 {
        self.engines[i]
            .stats()
            .metrics
            .iter()
            .filter(|m| {
                m.name == name && m.labels.iter().any(|(k, v)| k == label.0 && v == label.1)
            })
            .map(|m| m.value)
            .sum()
    }
}

/// Runs a future to completion on a small runtime of its own (store tickets).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(f)
}
