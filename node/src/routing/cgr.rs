//! Contact Graph Routing (CCSDS SABR 734.3-B-1 §3.2, ION's `cgr.c` behaviour): earliest-arrival
//! routes found by Dijkstra's algorithm over the contact graph (contacts are the vertices), alternate
//! routes by Yen's k shortest loopless paths, volume booking, and static routes as a fallback.
//!
//! **Arrival.** A bundle of `size` bytes that is at node `n` at time `t` and takes contact `c`
//! (`n` → `m`) starts transmission at `max(t, c.start + backlog)`, where the backlog is the time
//! `c` needs to send the bytes already booked on it (SABR §3.2.6.8's queue consideration, applied
//! to every contact: booked bytes go first). It needs `ceil(size / rate)` to transmit, must finish
//! before `c.end` (SABR §3.2.6.9.c), and reaches `m` one-way light time later (the OWLT of the range
//! for `n`→`m` at the transmission start; a contact without a range has OWLT 0 unless
//! [`RouterConfig::require_range`] is set, in which case it is unusable, as in ION). A route is
//! usable only if it arrives no later than the bundle's expiry (SABR §3.2.6.9.a) and every contact's
//! residual volume (rate × duration − booked bytes) holds the bundle (§3.2.6.9.d).
//!
//! **Choice.** Routes are ordered by arrival time, then fewer hops, then the later end of the
//! first contact (SABR §3.2.8.1.4). The previous hop of a bundle (given in `exclude`) is never the
//! next hop unless it is the destination (ION's anti-loop rule, SABR §3.2.8.1.3). Routes never
//! visit a node twice.
//!
//! **Cache policy.** For each (destination, excluded hops) the router keeps the `k` candidate
//! routes (contact sequences) of its last computation and the bundle size it was made for. A
//! query for a bundle at least that big first re-evaluates the cached
//! candidates for the bundle at hand (its size, expiry, now and the current bookings) and takes
//! the best one still feasible; when none is, it computes afresh (Dijkstra + Yen) and replaces the
//! entry. Replacing the plan and releasing a booking (which may make a better route feasible
//! again) clear the whole cache; bookings only shrink volumes, so they invalidate cached routes by
//! making them infeasible at re-evaluation. The cache holds at most
//! [`RouterConfig::cache_capacity`] entries and is cleared when full. Because time passes and
//! bookings delay contacts, a cached answer can be a little later than a fresh computation
//! would find; [`Router::route_uncached`] always computes afresh.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use thiserror::Error;
use tracing::{debug, trace};

use super::contact_plan::{Contact, ContactKey, ContactPlan, DtnMillis};
use super::static_routes::StaticRoutes;

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Number of routes computed into the cache per destination (Yen's k); at least 1. With 1
    /// (the default) a cold query is one Dijkstra search; since the search is volume-aware, a
    /// full or excluded best route is replaced by recomputing, which finds the best alternate.
    /// Larger values precompute Yen alternates (about k × route length searches per cold query).
    pub k: usize,
    /// Maximum number of cached (destination, excluded hops) entries.
    pub cache_capacity: usize,
    /// A contact without a range covering its transmission time is unusable (ION) instead of
    /// having an OWLT of 0.
    pub require_range: bool,
    /// Fallback routes used when CGR finds none.
    pub static_routes: StaticRoutes,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            k: 1,
            cache_capacity: 1024,
            require_range: false,
            static_routes: StaticRoutes::default(),
        }
    }
}

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// Contact Graph Routing over the contact plan.
    Cgr,
    /// The static route table (no contacts, no arrival estimate).
    Static,
}

/// A route for one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The neighbour to hand the bundle to.
    pub next_hop: u64,
    /// The contacts of the route in order (empty for a static route).
    pub contacts: Vec<ContactKey>,
    /// The first contact (the one to the next hop); `None` for a static route.
    pub first_contact: Option<ContactKey>,
    /// Estimated arrival at the destination, DTN ms; `None` for a static route.
    pub arrival: Option<DtnMillis>,
    /// Number of hops (contacts) of the route; 0 for a static route.
    pub hops: usize,
    /// How the route was found.
    pub source: RouteSource,
}

/// A reservation of volume on the contacts of a route; give it back with [`Router::release`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a booking not released keeps its volume reserved"]
pub struct Booking {
    contacts: Vec<ContactKey>,
    bytes: u64,
}

impl Booking {
    /// The booked contacts.
    pub fn contacts(&self) -> &[ContactKey] {
        &self.contacts
    }

    /// The booked size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A booking was refused; nothing was booked.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BookError {
    /// A contact of the route is not in the current plan (the plan was replaced).
    #[error("contact {0} is not in the current contact plan")]
    UnknownContact(ContactKey),
    /// A contact has not enough residual volume.
    #[error("contact {contact} has {residual} bytes of residual volume, {requested} requested")]
    InsufficientVolume {
        /// The full contact.
        contact: ContactKey,
        /// Its residual volume in bytes.
        residual: u64,
        /// The requested size.
        requested: u64,
    },
}

/// Ordering key of a (partial) route: arrival, hops, later first-contact end (SABR §3.2.8.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    arrival: DtnMillis,
    hops: u32,
    first_end: Reverse<DtnMillis>,
}

impl Key {
    fn dominates(&self, other: &Key) -> bool {
        self.arrival <= other.arrival
            && self.hops <= other.hops
            && self.first_end <= other.first_end
    }
}

const NONE: u32 = u32::MAX;

/// The contact plan indexed for searching.
#[derive(Debug, Clone, Default)]
struct Graph {
    contacts: Vec<Contact>,
    /// Per contact: the OWLT segments `(start, end, owlt_ms)` overlapping it.
    owlt: Vec<Vec<(DtnMillis, DtnMillis, u64)>>,
    volume: Vec<u64>,
    by_key: HashMap<ContactKey, u32>,
    /// Outgoing contacts per node number.
    out: HashMap<u64, Vec<u32>>,
}

impl Graph {
    fn build(plan: &ContactPlan) -> Graph {
        let contacts: Vec<Contact> = plan.contacts().cloned().collect();
        let mut g = Graph {
            owlt: Vec::with_capacity(contacts.len()),
            volume: contacts.iter().map(Contact::volume).collect(),
            by_key: HashMap::with_capacity(contacts.len()),
            out: HashMap::new(),
            contacts: Vec::new(),
        };
        for (i, c) in contacts.iter().enumerate() {
            let i = i as u32;
            g.by_key.insert(c.key(), i);
            g.out.entry(c.from).or_default().push(i);
            // Split the contact's interval at range boundaries and record the OWLT of each piece.
            let mut segs = Vec::new();
            let mut t = c.start;
            while t < c.end {
                let owlt = plan.owlt(c.from, c.to, t);
                let next = plan
                    .owlt_change_after(c.from, c.to, t)
                    .unwrap_or(u64::MAX)
                    .min(c.end);
                if let Some(o) = owlt {
                    segs.push((t, next, o));
                }
                if next <= t {
                    break;
                }
                t = next;
            }
            g.owlt.push(segs);
        }
        g.contacts = contacts;
        g
    }
}

/// Per-query parameters.
struct Query<'a> {
    dest: u64,
    size: u64,
    expiry: DtnMillis,
    exclude: &'a [u64],
}

#[derive(Clone, Copy)]
struct Label {
    key: Key,
    pred: u32,
    visited: bool,
}

/// Route cache key: destination and sorted excluded hops.
type CacheKey = (u64, Vec<u64>);

/// The contact graph router of one node.
#[derive(Debug)]
pub struct Router {
    local: u64,
    plan: ContactPlan,
    graph: Graph,
    booked: Vec<u64>,
    config: RouterConfig,
    /// (destination, sorted excluded hops) → (bundle size computed for, candidate paths).
    cache: HashMap<CacheKey, (u64, Vec<Vec<u32>>)>,
    /// Times at which a contact of the local node starts or ends, sorted.
    local_events: Vec<DtnMillis>,
}

impl Router {
    /// A router for node `local` over `plan`, with default settings.
    pub fn new(local: u64, plan: ContactPlan) -> Self {
        Self::with_config(local, plan, RouterConfig::default())
    }

    /// A router for node `local` over `plan` with the given settings.
    pub fn with_config(local: u64, plan: ContactPlan, config: RouterConfig) -> Self {
        let mut r = Router {
            local,
            plan: ContactPlan::new(),
            graph: Graph::default(),
            booked: Vec::new(),
            config,
            cache: HashMap::new(),
            local_events: Vec::new(),
        };
        r.replace_plan(plan);
        r
    }

    /// The local node number.
    pub fn local(&self) -> u64 {
        self.local
    }

    /// The current contact plan.
    pub fn plan(&self) -> &ContactPlan {
        &self.plan
    }

    /// The static route table (fallback when CGR finds no route).
    pub fn static_routes_mut(&mut self) -> &mut StaticRoutes {
        &mut self.config.static_routes
    }

    /// Swaps in a new plan (parse it fully first: this cannot fail). Bytes booked on contacts that
    /// are in both plans (same sender, receiver and start) stay booked, capped at the new volume;
    /// the route cache is cleared.
    pub fn replace_plan(&mut self, plan: ContactPlan) {
        let graph = Graph::build(&plan);
        let mut booked = vec![0; graph.contacts.len()];
        for (i, c) in self.graph.contacts.iter().enumerate() {
            if self.booked[i] > 0 {
                if let Some(&j) = graph.by_key.get(&c.key()) {
                    booked[j as usize] = self.booked[i].min(graph.volume[j as usize]);
                }
            }
        }
        let mut events: Vec<DtnMillis> = graph
            .contacts
            .iter()
            .filter(|c| c.from == self.local || c.to == self.local)
            .flat_map(|c| [c.start, c.end])
            .collect();
        events.sort_unstable();
        events.dedup();
        debug!(
            local = self.local,
            contacts = graph.contacts.len(),
            "contact plan replaced"
        );
        self.local_events = events;
        self.graph = graph;
        self.booked = booked;
        self.plan = plan;
        self.cache.clear();
    }

    /// Contacts in which the local node sends or receives that are active at `now`.
    pub fn contacts_at(&self, now: DtnMillis) -> Vec<&Contact> {
        self.graph
            .contacts
            .iter()
            .filter(|c| (c.from == self.local || c.to == self.local) && c.is_active(now))
            .collect()
    }

    /// The first time after `now` at which a contact of the local node starts or ends.
    pub fn next_contact_change(&self, now: DtnMillis) -> Option<DtnMillis> {
        let i = self.local_events.partition_point(|&t| t <= now);
        self.local_events.get(i).copied()
    }

    /// One-way light time from `a` to `b` at `t`, ms (from the plan's ranges).
    pub fn owlt(&self, a: u64, b: u64, t: DtnMillis) -> Option<u64> {
        self.plan.owlt(a, b, t)
    }

    /// Transmission rate from `a` to `b` at `t`, bytes/s (from the active contact).
    pub fn rate(&self, a: u64, b: u64, t: DtnMillis) -> Option<u64> {
        self.plan.rate(a, b, t)
    }

    /// Residual volume of a contact in bytes (volume minus bookings).
    pub fn residual_volume(&self, key: &ContactKey) -> Option<u64> {
        let i = *self.graph.by_key.get(key)? as usize;
        Some(self.graph.volume[i] - self.booked[i])
    }

    fn owlt_at(&self, c: usize, t: DtnMillis) -> Option<u64> {
        match self.graph.owlt[c].iter().find(|s| s.0 <= t && t < s.1) {
            Some(s) => Some(s.2),
            None if self.config.require_range => None,
            None => Some(0),
        }
    }

    /// Arrival at the receiver of contact `c` for a bundle of `size` bytes at its sender at `t`,
    /// or `None` if the contact cannot carry it (SABR §3.2.6.9).
    fn hop(&self, c: usize, t: DtnMillis, size: u64) -> Option<DtnMillis> {
        let k = &self.graph.contacts[c];
        if k.rate == 0 || t >= k.end {
            return None;
        }
        // SABR §3.2.6.9.d: the residual volume must hold the bundle.
        let booked = self.booked[c];
        if self.graph.volume[c] - booked < size {
            return None;
        }
        let ms = |bytes: u64| -> u64 {
            let v = (u128::from(bytes) * 1000).div_ceil(u128::from(k.rate));
            u64::try_from(v).unwrap_or(u64::MAX)
        };
        // SABR §3.2.6.8: bytes already booked are sent first.
        let tx_start = t.max(k.start.saturating_add(ms(booked)));
        let tx_end = tx_start.saturating_add(ms(size));
        // SABR §3.2.6.9.c: transmission must complete before the contact ends.
        if tx_end > k.end {
            return None;
        }
        Some(tx_end.saturating_add(self.owlt_at(c, tx_start)?))
    }

    /// Evaluates a whole path from the local node at `now`: its key, or `None` if infeasible.
    fn evaluate(&self, path: &[u32], now: DtnMillis, q: &Query) -> Option<Key> {
        let first = *path.first()? as usize;
        let next_hop = self.graph.contacts[first].to;
        if next_hop != q.dest && q.exclude.contains(&next_hop) {
            return None;
        }
        if self.graph.contacts[*path.last()? as usize].to != q.dest {
            return None;
        }
        let mut t = now;
        for &c in path {
            t = self.hop(c as usize, t, q.size)?;
        }
        // SABR §3.2.6.9.a: no arrival after the bundle's expiry.
        (t <= q.expiry).then_some(Key {
            arrival: t,
            hops: path.len() as u32,
            first_end: Reverse(self.graph.contacts[first].end),
        })
    }

    /// Dijkstra over contacts from `src` at `t0` (after `prefix` contacts, the first of which has
    /// end `prefix_first_end`), avoiding `banned_contacts` and `banned_nodes`. Returns the
    /// contacts from `src` to the destination.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        src: u64,
        t0: DtnMillis,
        prefix_hops: u32,
        prefix_first_end: Option<DtnMillis>,
        q: &Query,
        banned_contacts: &HashSet<u32>,
        banned_nodes: &HashSet<u64>,
    ) -> Option<Vec<u32>> {
        let n = self.graph.contacts.len();
        let mut labels: HashMap<u32, Label> = HashMap::new();
        let mut heap: BinaryHeap<Reverse<(Key, u32)>> = BinaryHeap::new();
        let mut expanded: HashMap<u64, Vec<Key>> = HashMap::new();
        let relax = |from_node: u64,
                     t: DtnMillis,
                     hops: u32,
                     first_end: Option<DtnMillis>,
                     pred: u32,
                     labels: &mut HashMap<u32, Label>,
                     heap: &mut BinaryHeap<Reverse<(Key, u32)>>| {
            let Some(out) = self.graph.out.get(&from_node) else {
                return;
            };
            for &c in out {
                let k = &self.graph.contacts[c as usize];
                if k.end <= t
                    || k.to == src
                    || k.to == self.local
                    || banned_nodes.contains(&k.to)
                    || banned_contacts.contains(&c)
                {
                    continue;
                }
                // SABR §3.2.8.1.3: never hand the bundle back to where it came from, unless
                // that node is its destination.
                if first_end.is_none() && k.to != q.dest && q.exclude.contains(&k.to) {
                    continue;
                }
                let Some(arrival) = self.hop(c as usize, t, q.size) else {
                    continue;
                };
                if arrival > q.expiry {
                    continue;
                }
                let key = Key {
                    arrival,
                    hops: hops + 1,
                    first_end: Reverse(first_end.unwrap_or(k.end)),
                };
                let better = match labels.get(&c) {
                    Some(l) => !l.visited && key < l.key,
                    None => true,
                };
                if better {
                    labels.insert(
                        c,
                        Label {
                            key,
                            pred,
                            visited: false,
                        },
                    );
                    heap.push(Reverse((key, c)));
                }
            }
        };
        relax(
            src,
            t0,
            prefix_hops,
            prefix_first_end,
            NONE,
            &mut labels,
            &mut heap,
        );
        let mut pops = 0usize;
        while let Some(Reverse((key, c))) = heap.pop() {
            pops += 1;
            debug_assert!(pops <= n * n + 1);
            let label = labels.get_mut(&c).expect("pushed contacts have labels");
            if label.visited || label.key != key {
                continue;
            }
            label.visited = true;
            let to = self.graph.contacts[c as usize].to;
            if to == q.dest {
                let mut path = vec![c];
                let mut p = labels[&c].pred;
                while p != NONE {
                    path.push(p);
                    p = labels[&p].pred;
                }
                path.reverse();
                trace!(pops, "cgr search done");
                return Some(path);
            }
            // Expand each node only with labels not dominated by an earlier expansion: a
            // dominated label cannot lead to a better route (and never loops back).
            let done = expanded.entry(to).or_default();
            if done.iter().any(|d| d.dominates(&key)) {
                continue;
            }
            done.push(key);
            relax(
                to,
                key.arrival,
                key.hops,
                Some(key.first_end.0),
                c,
                &mut labels,
                &mut heap,
            );
        }
        None
    }

    /// Up to `k` loopless routes by Yen's algorithm, best first, as contact index paths.
    fn k_paths(&self, now: DtnMillis, q: &Query, k: usize) -> Vec<Vec<u32>> {
        let none_c = HashSet::new();
        let none_n = HashSet::new();
        let Some(best) = self.search(self.local, now, 0, None, q, &none_c, &none_n) else {
            return Vec::new();
        };
        let mut found: Vec<Vec<u32>> = vec![best];
        let mut candidates: Vec<(Key, Vec<u32>)> = Vec::new();
        while found.len() < k {
            let prev = found.last().expect("at least one path").clone();
            for i in 0..prev.len() {
                let root = &prev[..i];
                // Time and node at the spur point.
                let mut t = now;
                let mut spur = self.local;
                let mut banned_nodes = HashSet::from([self.local]);
                let mut ok = true;
                for &c in root {
                    match self.hop(c as usize, t, q.size) {
                        Some(a) => t = a,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                    spur = self.graph.contacts[c as usize].to;
                    banned_nodes.insert(spur);
                }
                if !ok {
                    break;
                }
                banned_nodes.remove(&spur);
                let banned_contacts: HashSet<u32> = found
                    .iter()
                    .filter(|p| p.len() > i && &p[..i] == root)
                    .map(|p| p[i])
                    .collect();
                let first_end = root.first().map(|&c| self.graph.contacts[c as usize].end);
                if let Some(tail) = self.search(
                    spur,
                    t,
                    i as u32,
                    first_end,
                    q,
                    &banned_contacts,
                    &banned_nodes,
                ) {
                    let mut path = root.to_vec();
                    path.extend(tail);
                    if let Some(key) = self.evaluate(&path, now, q) {
                        if !found.contains(&path) && !candidates.iter().any(|(_, p)| *p == path) {
                            candidates.push((key, path));
                        }
                    }
                }
            }
            let Some(best_i) = (0..candidates.len()).min_by(|&a, &b| {
                candidates[a]
                    .0
                    .cmp(&candidates[b].0)
                    .then_with(|| candidates[a].1.cmp(&candidates[b].1))
            }) else {
                break;
            };
            found.push(candidates.swap_remove(best_i).1);
        }
        found
    }

    fn to_route(&self, path: &[u32], key: Key) -> Route {
        let contacts: Vec<ContactKey> = path
            .iter()
            .map(|&c| self.graph.contacts[c as usize].key())
            .collect();
        Route {
            next_hop: contacts[0].to,
            first_contact: Some(contacts[0]),
            contacts,
            arrival: Some(key.arrival),
            hops: path.len(),
            source: RouteSource::Cgr,
        }
    }

    fn static_route(&self, dest: u64, exclude: &[u64]) -> Option<Route> {
        let next_hop = self.config.static_routes.lookup(dest, exclude)?;
        debug!(dest, next_hop, "no CGR route; using static route");
        Some(Route {
            next_hop,
            contacts: Vec::new(),
            first_contact: None,
            arrival: None,
            hops: 0,
            source: RouteSource::Static,
        })
    }

    /// The best route to `dest` for a bundle of `size` bytes that expires at `expiry` (DTN ms),
    /// at time `now`, never via the nodes in `exclude` as next hop (unless one is `dest`): CGR
    /// first (using the cache, see the module documentation), then the static routes. `None` for
    /// the local node itself or when nothing is known.
    pub fn route(
        &mut self,
        dest: u64,
        size: u64,
        expiry: DtnMillis,
        now: DtnMillis,
        exclude: &[u64],
    ) -> Option<Route> {
        if dest == self.local {
            return None;
        }
        let q = Query {
            dest,
            size,
            expiry,
            exclude,
        };
        let mut ex = exclude.to_vec();
        ex.sort_unstable();
        ex.dedup();
        let cache_key = (dest, ex);
        // Routes computed for a bigger bundle may miss contacts a smaller one fits: only reuse
        // an entry for bundles at least as big as the one it was computed for.
        if let Some((_, paths)) = self.cache.get(&cache_key).filter(|(s, _)| *s <= size) {
            let best = paths
                .iter()
                .filter_map(|p| self.evaluate(p, now, &q).map(|k| (k, p)))
                .min_by(|a, b| a.0.cmp(&b.0));
            if let Some((key, path)) = best {
                trace!(dest, "cgr cache hit");
                return Some(self.to_route(path, key));
            }
        }
        let paths = self.k_paths(now, &q, self.config.k.max(1));
        let best = paths
            .first()
            .and_then(|p| self.evaluate(p, now, &q).map(|k| self.to_route(p, k)));
        if self.cache.len() >= self.config.cache_capacity {
            debug!(
                entries = self.cache.len(),
                "cgr route cache full; clearing it"
            );
            self.cache.clear();
        }
        if self.config.cache_capacity > 0 {
            self.cache.insert(cache_key, (size, paths));
        }
        best.or_else(|| self.static_route(dest, exclude))
    }

    /// Like [`Router::route`] but always computes afresh, without reading or writing the cache.
    pub fn route_uncached(
        &self,
        dest: u64,
        size: u64,
        expiry: DtnMillis,
        now: DtnMillis,
        exclude: &[u64],
    ) -> Option<Route> {
        if dest == self.local {
            return None;
        }
        let q = Query {
            dest,
            size,
            expiry,
            exclude,
        };
        let (none_c, none_n) = (HashSet::new(), HashSet::new());
        self.search(self.local, now, 0, None, &q, &none_c, &none_n)
            .and_then(|p| self.evaluate(&p, now, &q).map(|k| self.to_route(&p, k)))
            .or_else(|| self.static_route(dest, exclude))
    }

    /// Up to `k` CGR routes to `dest` (Yen's loopless k shortest paths), best first.
    pub fn routes(
        &self,
        dest: u64,
        size: u64,
        expiry: DtnMillis,
        now: DtnMillis,
        exclude: &[u64],
        k: usize,
    ) -> Vec<Route> {
        if dest == self.local || k == 0 {
            return Vec::new();
        }
        let q = Query {
            dest,
            size,
            expiry,
            exclude,
        };
        let mut routes: Vec<(Key, Route)> = self
            .k_paths(now, &q, k)
            .iter()
            .filter_map(|p| {
                self.evaluate(p, now, &q)
                    .map(|key| (key, self.to_route(p, key)))
            })
            .collect();
        routes.sort_by_key(|a| a.0);
        routes.into_iter().map(|(_, r)| r).collect()
    }

    /// Reserves `bytes` on every contact of `route` (SABR §3.2.9); refused, booking nothing, if a
    /// contact is unknown or its residual volume is too small. A static route books nothing.
    pub fn book(&mut self, route: &Route, bytes: u64) -> Result<Booking, BookError> {
        let mut idx = Vec::with_capacity(route.contacts.len());
        for key in &route.contacts {
            let i = *self
                .graph
                .by_key
                .get(key)
                .ok_or(BookError::UnknownContact(*key))? as usize;
            let residual = self.graph.volume[i] - self.booked[i];
            if residual < bytes {
                return Err(BookError::InsufficientVolume {
                    contact: *key,
                    residual,
                    requested: bytes,
                });
            }
            idx.push(i);
        }
        // A route never holds a contact twice (loopless), so checking each once suffices.
        for &i in &idx {
            self.booked[i] += bytes;
        }
        Ok(Booking {
            contacts: route.contacts.clone(),
            bytes,
        })
    }

    /// Gives the volume of a booking back (the bundle was not sent). Contacts no longer in the
    /// plan are skipped. Clears the route cache, since a better route may be feasible again.
    pub fn release(&mut self, booking: Booking) {
        for key in &booking.contacts {
            match self.graph.by_key.get(key) {
                Some(&i) => {
                    let b = &mut self.booked[i as usize];
                    *b = b.saturating_sub(booking.bytes);
                }
                None => {
                    debug!(contact = %key, "released booking on a contact no longer in the plan")
                }
            }
        }
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::contact_plan::{PlanOptions, Range};
    use crate::routing::static_routes::NodePattern;

    const S: u64 = 1000; // one second in ms
    const NEVER: DtnMillis = u64::MAX;

    fn c(from: u64, to: u64, start_s: u64, end_s: u64, rate: u64) -> Contact {
        Contact {
            from,
            to,
            start: start_s * S,
            end: end_s * S,
            rate,
            confidence: 1.0,
        }
    }

    fn r(from: u64, to: u64, start_s: u64, end_s: u64, owlt_s: u64) -> Range {
        Range {
            from,
            to,
            start: start_s * S,
            end: end_s * S,
            owlt: owlt_s * S,
        }
    }

    fn plan(contacts: &[Contact], ranges: &[Range]) -> ContactPlan {
        let mut p = ContactPlan::new();
        for x in contacts {
            p.add_contact(x.clone()).unwrap();
        }
        for x in ranges {
            p.add_range(*x).unwrap();
        }
        p
    }

    fn next_hops(route: &Route) -> Vec<u64> {
        route.contacts.iter().map(|k| k.to).collect()
    }

    #[test]
    fn linear_chain() {
        let p = plan(
            &[c(1, 2, 0, 100, 1000), c(2, 3, 50, 150, 1000)],
            &[r(1, 2, 0, 1000, 1), r(2, 3, 0, 1000, 1)],
        );
        let mut rt = Router::new(1, p);
        let route = rt.route(3, 1000, NEVER, 0, &[]).unwrap();
        // 1->2: tx 0..1 s, +1 s OWLT = 2 s; 2->3 waits for its start at 50 s, tx 1 s, OWLT 1 s.
        assert_eq!(route.arrival, Some(52 * S));
        assert_eq!(route.next_hop, 2);
        assert_eq!(route.hops, 2);
        assert_eq!(next_hops(&route), vec![2, 3]);
        assert_eq!(route.first_contact, Some(c(1, 2, 0, 100, 1000).key()));
        assert_eq!(route.source, RouteSource::Cgr);
        assert_eq!(rt.route(1, 10, NEVER, 0, &[]), None, "no route to self");
        assert_eq!(rt.route(9, 10, NEVER, 0, &[]), None, "unknown node");
        // Starting later: from 60 s the 2->3 contact is already open.
        assert_eq!(
            rt.route_uncached(3, 1000, NEVER, 60 * S, &[])
                .unwrap()
                .arrival,
            Some(64 * S)
        );
    }

    #[test]
    fn diamond_prefers_slower_but_earlier_path() {
        let p = plan(
            &[
                c(1, 2, 0, 100, 1000),
                c(2, 4, 200, 300, 1000),
                c(1, 3, 0, 100, 100),
                c(3, 4, 10, 100, 100),
            ],
            &[],
        );
        let mut rt = Router::new(1, p);
        let route = rt.route(4, 1000, NEVER, 0, &[]).unwrap();
        assert_eq!(next_hops(&route), vec![3, 4]);
        assert_eq!(route.arrival, Some(20 * S));
        // The second route of Yen's list is the fast one.
        let all = rt.routes(4, 1000, NEVER, 0, &[], 5);
        assert_eq!(all.len(), 2);
        assert_eq!(next_hops(&all[1]), vec![2, 4]);
        assert_eq!(all[1].arrival, Some(201 * S));
        // If the bundle must arrive by 200 s, only the 3-path qualifies; by 19 s, none.
        assert!(rt.route_uncached(4, 1000, 19 * S, 0, &[]).is_none());
    }

    #[test]
    fn contact_too_short_for_the_bundle() {
        let p = plan(&[c(1, 2, 0, 1, 100)], &[]);
        let rt = Router::new(1, p.clone());
        // 1000 bytes at 100 B/s need 10 s; the contact lasts 1 s.
        assert!(rt.route_uncached(2, 1000, NEVER, 0, &[]).is_none());
        assert!(rt.route_uncached(2, 100, NEVER, 0, &[]).is_some());
        // Started half way through, only 50 bytes still fit.
        assert!(rt.route_uncached(2, 60, NEVER, 500, &[]).is_none());
        assert!(rt.route_uncached(2, 50, NEVER, 500, &[]).is_some());
        let mut p2 = p;
        p2.add_contact(c(1, 2, 10, 100, 100)).unwrap();
        let rt = Router::new(1, p2);
        assert_eq!(
            rt.route_uncached(2, 1000, NEVER, 0, &[]).unwrap().arrival,
            Some(20 * S)
        );
    }

    #[test]
    fn owlt_effects_and_reverse_ranges() {
        let p = plan(
            &[
                c(1, 2, 0, 100, 1000),
                c(2, 3, 0, 100, 1000),
                c(1, 4, 0, 100, 1000),
                c(4, 3, 0, 100, 1000),
            ],
            // 2<->1 given only in the reverse direction; it applies to 1->2 as well.
            &[
                r(2, 1, 0, 100, 10),
                r(2, 3, 0, 100, 10),
                r(1, 4, 0, 100, 1),
                r(4, 3, 0, 100, 2),
            ],
        );
        let rt = Router::new(1, p);
        let route = rt.route_uncached(3, 1000, NEVER, 0, &[]).unwrap();
        assert_eq!(next_hops(&route), vec![4, 3]);
        // 1 s tx + 1 s OWLT, then 1 s tx + 2 s OWLT.
        assert_eq!(route.arrival, Some(5 * S));
        assert_eq!(rt.owlt(1, 2, 0), Some(10 * S));
        assert_eq!(rt.owlt(4, 1, 0), Some(S));
        assert_eq!(rt.rate(1, 4, 5 * S), Some(1000));
        assert_eq!(rt.rate(1, 4, 100 * S), None);
    }

    #[test]
    fn require_range_makes_rangeless_contacts_unusable() {
        let p = plan(
            &[
                c(1, 2, 0, 100, 1000),
                c(1, 3, 0, 100, 10),
                c(3, 2, 0, 100, 10),
            ],
            &[r(1, 3, 0, 100, 0), r(3, 2, 0, 100, 0)],
        );
        let cfg = RouterConfig {
            require_range: true,
            ..RouterConfig::default()
        };
        let rt = Router::with_config(1, p.clone(), cfg);
        assert_eq!(
            next_hops(&rt.route_uncached(2, 10, NEVER, 0, &[]).unwrap()),
            vec![3, 2]
        );
        let rt = Router::new(1, p);
        assert_eq!(
            next_hops(&rt.route_uncached(2, 10, NEVER, 0, &[]).unwrap()),
            vec![2]
        );
    }

    #[test]
    fn expiry_cut_off() {
        let p = plan(
            &[c(1, 2, 0, 100, 1000), c(2, 3, 50, 150, 1000)],
            &[r(1, 2, 0, 1000, 1), r(2, 3, 0, 1000, 1)],
        );
        let mut rt = Router::new(1, p);
        assert!(rt.route(3, 1000, 52 * S, 0, &[]).is_some());
        assert!(rt.route(3, 1000, 52 * S - 1, 0, &[]).is_none());
        assert!(rt.route_uncached(3, 1000, 52 * S - 1, 0, &[]).is_none());
    }

    #[test]
    fn previous_hop_is_excluded_unless_destination() {
        let p = plan(
            &[
                c(1, 2, 0, 100, 1000),
                c(2, 4, 0, 100, 1000),
                c(1, 3, 0, 100, 100),
                c(3, 4, 0, 100, 100),
                c(1, 5, 0, 100, 1000),
            ],
            &[],
        );
        let mut rt = Router::new(1, p);
        assert_eq!(rt.route(4, 1000, NEVER, 0, &[]).unwrap().next_hop, 2);
        assert_eq!(rt.route(4, 1000, NEVER, 0, &[2]).unwrap().next_hop, 3);
        assert!(rt.route(4, 1000, NEVER, 0, &[2, 3]).is_none());
        // The destination itself may be the previous hop.
        assert_eq!(rt.route(5, 1000, NEVER, 0, &[5]).unwrap().next_hop, 5);
    }

    #[test]
    fn volume_exhaustion_alternate_route_and_release() {
        let p = plan(
            &[
                c(1, 2, 0, 10, 100), // volume 1000
                c(2, 3, 0, 100, 1000),
                c(1, 4, 0, 100, 10),
                c(4, 3, 0, 200, 10),
            ],
            &[],
        );
        let mut rt = Router::new(1, p);
        let k12 = c(1, 2, 0, 10, 100).key();
        let route = rt.route(3, 600, NEVER, 0, &[]).unwrap();
        assert_eq!(route.next_hop, 2);
        let booking = rt.book(&route, 600).unwrap();
        assert_eq!(booking.bytes(), 600);
        assert_eq!(rt.residual_volume(&k12), Some(400));
        // The 1->2 contact cannot take another 600 bytes: the alternate route is used.
        let alt = rt.route(3, 600, NEVER, 0, &[]).unwrap();
        assert_eq!(next_hops(&alt), vec![4, 3]);
        // A second bundle of 400 bytes still fits, queued behind the first 600 (6 s backlog).
        let small = rt.route(3, 400, NEVER, 0, &[]).unwrap();
        assert_eq!(small.next_hop, 2);
        assert_eq!(small.arrival, Some(10 * S + 400));
        // Booking beyond the volume is refused and books nothing.
        assert_eq!(
            rt.book(&route, 600),
            Err(BookError::InsufficientVolume {
                contact: k12,
                residual: 400,
                requested: 600
            })
        );
        assert_eq!(rt.residual_volume(&k12), Some(400));
        rt.release(booking);
        assert_eq!(rt.residual_volume(&k12), Some(1000));
        assert_eq!(rt.route(3, 600, NEVER, 0, &[]).unwrap().next_hop, 2);
    }

    #[test]
    fn tie_breaks_fewer_hops_then_later_first_contact_end() {
        // Same arrival (11 s) directly and through 2: the direct route has fewer hops.
        let p = plan(
            &[
                c(1, 3, 10, 100, 100),
                c(1, 2, 0, 100, 100),
                c(2, 3, 10, 100, 100),
            ],
            &[],
        );
        let rt = Router::new(1, p);
        let route = rt.route_uncached(3, 100, NEVER, 0, &[]).unwrap();
        assert_eq!((route.hops, route.arrival), (1, Some(11 * S)));
        // Same arrival and hops through 2 and 3: the first contact ending later (1->3) wins.
        let p = plan(
            &[
                c(1, 2, 0, 50, 100),
                c(2, 4, 10, 100, 100),
                c(1, 3, 0, 80, 100),
                c(3, 4, 10, 100, 100),
            ],
            &[],
        );
        let rt = Router::new(1, p);
        let route = rt.route_uncached(4, 100, NEVER, 0, &[]).unwrap();
        assert_eq!(next_hops(&route), vec![3, 4]);
        assert_eq!(route.arrival, Some(11 * S));
    }

    #[test]
    fn static_fallback() {
        let p = plan(&[c(1, 2, 0, 10, 100)], &[]);
        let mut rt = Router::new(1, p);
        rt.static_routes_mut().add(NodePattern::Any, 7).unwrap();
        let route = rt.route(99, 10, NEVER, 0, &[]).unwrap();
        assert_eq!(route.source, RouteSource::Static);
        assert_eq!((route.next_hop, route.hops, route.arrival), (7, 0, None));
        let b = rt.book(&route, 10).unwrap();
        assert!(b.contacts().is_empty());
        rt.release(b);
        assert!(rt.route(99, 10, NEVER, 0, &[7]).is_none());
        // CGR wins when it has a route.
        assert_eq!(
            rt.route(2, 10, NEVER, 0, &[]).unwrap().source,
            RouteSource::Cgr
        );
    }

    #[test]
    fn cache_is_consistent_and_invalidated_by_plan_changes() {
        let p = plan(&[c(1, 2, 0, 100, 100), c(2, 3, 50, 100, 100)], &[]);
        let mut rt = Router::new(1, p.clone());
        let cold = rt.route(3, 100, NEVER, 0, &[]).unwrap();
        let warm = rt.route(3, 100, NEVER, 0, &[]).unwrap();
        assert_eq!(cold, warm);
        assert_eq!(rt.route_uncached(3, 100, NEVER, 0, &[]).unwrap(), warm);
        // A new direct contact in a replaced plan is used at once.
        let mut p2 = p;
        p2.add_contact(c(1, 3, 0, 100, 100)).unwrap();
        rt.replace_plan(p2);
        assert_eq!(rt.route(3, 100, NEVER, 0, &[]).unwrap().hops, 1);
        // A cached route whose contact has ended is not returned.
        assert!(rt.route(3, 100, NEVER, 100 * S, &[]).is_none());
    }

    #[test]
    fn replace_plan_keeps_bookings_of_unchanged_contacts() {
        let p = plan(&[c(1, 2, 0, 10, 100), c(1, 3, 0, 10, 100)], &[]);
        let mut rt = Router::new(1, p);
        let r2 = rt.route(2, 300, NEVER, 0, &[]).unwrap();
        let b = rt.book(&r2, 300).unwrap();
        // The new plan keeps 1->2 and shortens nothing; 1->3 is dropped.
        let p2 = plan(&[c(1, 2, 0, 10, 100), c(1, 4, 0, 10, 100)], &[]);
        rt.replace_plan(p2);
        assert_eq!(rt.residual_volume(&c(1, 2, 0, 10, 100).key()), Some(700));
        rt.release(b);
        assert_eq!(rt.residual_volume(&c(1, 2, 0, 10, 100).key()), Some(1000));
        // A route from the old plan over a removed contact cannot be booked.
        let p3 = plan(&[c(1, 4, 0, 10, 100)], &[]);
        rt.replace_plan(p3);
        assert_eq!(
            rt.book(&r2, 1),
            Err(BookError::UnknownContact(c(1, 2, 0, 10, 100).key()))
        );
    }

    #[test]
    fn failed_reload_changes_nothing() {
        let o = PlanOptions::new(0);
        let p = ContactPlan::parse_ion("a contact +0 +100 1 2 100\n", "a.rc", &o).unwrap();
        let mut rt = Router::new(1, p);
        match ContactPlan::parse_ion("a contact +0 +100 1 3 100\na contact oops\n", "b.rc", &o) {
            Ok(p) => rt.replace_plan(p),
            Err(e) => assert!(e.to_string().starts_with("b.rc:2: ")),
        }
        assert!(rt.route(2, 10, NEVER, 0, &[]).is_some());
        assert!(rt.route(3, 10, NEVER, 0, &[]).is_none());
    }

    #[test]
    fn link_schedule() {
        let p = plan(
            &[c(1, 2, 10, 20, 1), c(3, 1, 15, 30, 1), c(2, 3, 0, 5, 1)],
            &[],
        );
        let rt = Router::new(1, p);
        assert!(rt.contacts_at(0).is_empty());
        assert_eq!(rt.next_contact_change(0), Some(10 * S));
        assert_eq!(rt.next_contact_change(10 * S), Some(15 * S));
        let active: Vec<_> = rt
            .contacts_at(16 * S)
            .iter()
            .map(|c| (c.from, c.to))
            .collect();
        assert_eq!(active, vec![(1, 2), (3, 1)]);
        assert_eq!(rt.next_contact_change(20 * S), Some(30 * S));
        assert_eq!(rt.next_contact_change(30 * S), None);
    }
}
