//! Bundle forwarding (RFC 9171 §5.4): route selection, per-neighbour queues, transmission
//! with the forwarding updates of §4.4 (previous node, bundle age, hop count), proactive
//! fragmentation (§5.8), transfer outcomes, and contraindication (§5.4.1: no route or no link
//! → the bundle waits in the store until one appears or it expires).
//!
//! Route selection, first eligible candidate wins:
//! 1. Contact Graph Routing (if a router is configured; `ipn` destinations), with the contact
//!    volume booked for the bundle (released if the transfer fails); when the best route's
//!    first contact has not started yet, the bundle waits for it (routed again at the start);
//! 2. a neighbour whose node ID is the destination's node (direct delivery, an implicit most
//!    specific route);
//! 3. the static routes in configuration order.
//!
//! The neighbour the bundle came from is never chosen unless it is the destination node. A
//! candidate is eligible when its link is up, it is not paused after a failed transfer (a
//! failure pauses the neighbour for `retry_delay_ms`: its queue goes back to routing and
//! waiting bundles are routed again when the pause ends), and it can carry the bundle: a bundle larger
//! than the link's maximum bundle size is fragmented (§5.8) unless it must not be; such a
//! bundle cannot use that link. When no candidate is eligible the bundle waits, except when
//! the only obstacle is size: then no route from here can carry it and it is deleted with
//! reason code 6 "no known route to destination from here" (§5.4.2 forwarding failed).

use bpv7::{BundleFlags, ReasonCode};

use super::meta::Kind;
use super::reception::supported_block;
use super::status_reports::Report;
use super::{prio_index, Action, BundleEngine, Id, NeighbourId, State, PACE_BURST_MS};
use crate::api::{DtnMillis, Priority};
use convergence::{FailureReason, TransferId};

/// Most bytes forwarding adds to a stored bundle (a previous node block and wider hop count
/// and bundle age values), for the size check of unfragmentable bundles.
const FORWARD_GROWTH: u64 = 64;

/// Why a neighbour cannot take a bundle now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ineligible {
    Down,
    TooLarge,
}

/// Outcome of route selection.
enum Decision {
    Queue(NeighbourId, Option<crate::routing::Booking>),
    Wait,
    Unroutable,
}

impl BundleEngine {
    fn eligible(
        &self,
        n: NeighbourId,
        size: u64,
        must_not_fragment: bool,
        now: DtnMillis,
    ) -> Result<(), Ineligible> {
        let s = &self.neighbours[n.0];
        if !s.usable(now) {
            return Err(Ineligible::Down);
        }
        // The stored size plus what forwarding adds (previous node block, wider counters).
        if must_not_fragment && s.max_size().is_some_and(|m| size + FORWARD_GROWTH > m) {
            return Err(Ineligible::TooLarge);
        }
        Ok(())
    }

    /// Whether `n` may take a bundle that came from `prev` to `dest_node` (previous-hop
    /// exclusion, unless the previous hop is the destination).
    fn allowed(&self, n: NeighbourId, prev: Option<NeighbourId>, dest_node: &bpv7::Eid) -> bool {
        Some(n) != prev
            || self.neighbours[n.0]
                .cfg
                .node_id
                .as_ref()
                .map(|e| e.node_id())
                .as_ref()
                == Some(dest_node)
    }

    fn decide(&mut self, id: Id, now: DtnMillis) -> Decision {
        let Some(e) = self.entries.get(&id) else {
            return Decision::Wait;
        };
        let dest = e.destination.clone();
        let dest_node = dest.node_id();
        let (size, expiry, prev) = (e.size, e.expiry, e.previous);
        let must_not_fragment = e.has_flag(BundleFlags::MUST_NOT_FRAGMENT);
        let mut too_large = false;
        // 1. CGR.
        if let bpv7::Eid::Ipn { node, .. } = &dest {
            let exclude: Vec<u64> = prev
                .and_then(|p| match self.neighbours[p.0].cfg.node_id {
                    Some(bpv7::Eid::Ipn { node, .. }) => Some(node),
                    _ => None,
                })
                .into_iter()
                .collect();
            let route = self
                .router
                .as_mut()
                .and_then(|r| r.route(*node, size, expiry, now, &exclude));
            if let Some(route) = route {
                // The best route starts with a contact that has not begun: wait for it (the
                // contact's start is a timer: waiting bundles are routed again then).
                if route.first_contact.is_some_and(|k| k.start > now) {
                    return Decision::Wait;
                }
                if let Some(&n) = self.by_node_number.get(&route.next_hop) {
                    match self.eligible(n, size, must_not_fragment, now) {
                        Ok(()) => {
                            if let Some(r) = self.router.as_mut() {
                                match r.book(&route, size) {
                                    Ok(b) => return Decision::Queue(n, Some(b)),
                                    Err(err) => tracing::debug!(%err, "cgr booking refused"),
                                }
                            }
                        }
                        Err(Ineligible::TooLarge) => too_large = true,
                        Err(Ineligible::Down) => {}
                    }
                }
            }
        }
        // 2. Direct neighbour, 3. static routes in order.
        let direct = self.neighbour_of(&dest_node);
        let mut candidates: Vec<NeighbourId> = direct.into_iter().collect();
        if !self.routes.is_empty() {
            let dest_s = dest.to_string();
            candidates.extend(
                self.routes
                    .iter()
                    .filter(|(p, _)| p.matches(&dest_s))
                    .map(|(_, v)| *v),
            );
        }
        for n in candidates {
            if !self.allowed(n, prev, &dest_node) {
                continue;
            }
            match self.eligible(n, size, must_not_fragment, now) {
                Ok(()) => return Decision::Queue(n, None),
                Err(Ineligible::TooLarge) => too_large = true,
                Err(Ineligible::Down) => {}
            }
        }
        // Only links too small for an unfragmentable bundle, none down: nowhere to go.
        if too_large && self.neighbours.iter().all(|n| n.usable(now)) {
            Decision::Unroutable
        } else {
            Decision::Wait
        }
    }

    /// Route a stored bundle (its current state is unlinked first).
    pub(super) fn route(&mut self, id: Id, now: DtnMillis) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        if e.kind != Kind::Forward {
            return;
        }
        let priority = e.priority;
        // Unlink from wherever it is.
        self.unlink(id);
        match self.decide(id, now) {
            Decision::Queue(n, booking) => {
                if let Some(b) = booking {
                    if let Some(old) = self.bookings.insert(id, b) {
                        if let Some(r) = self.router.as_mut() {
                            r.release(old);
                        }
                    }
                }
                let p = prio_index(priority);
                self.neighbours[n.0].queues[p].insert(id);
                self.set_state(id, State::Queued(n));
                self.pump(n, now);
            }
            Decision::Wait => {
                self.waiting.insert(id);
                self.set_state(id, State::Waiting);
            }
            Decision::Unroutable => {
                tracing::debug!(bundle = id, "no link can carry this unfragmentable bundle");
                self.delete(id, ReasonCode::NoKnownRoute, now);
            }
        }
    }

    /// Route every waiting bundle again (a link came up, the plan changed).
    pub(super) fn reroute_waiting(&mut self, now: DtnMillis) {
        let ids: Vec<Id> = self.waiting.iter().copied().collect();
        for id in ids {
            self.route(id, now);
        }
    }

    /// Take every bundle queued for `n` back to routing.
    pub(super) fn requeue_neighbour(&mut self, n: NeighbourId, now: DtnMillis) {
        let ids: Vec<Id> = self.neighbours[n.0]
            .queues
            .iter_mut()
            .flat_map(std::mem::take)
            .collect();
        for id in ids {
            self.set_state(id, State::New);
            if let Some(b) = self.bookings.remove(&id) {
                if let Some(r) = self.router.as_mut() {
                    r.release(b);
                }
            }
            self.route(id, now);
        }
    }

    /// Neighbours whose failure pause ended at `now`: route the waiting bundles again.
    pub(super) fn end_pauses(&mut self, now: DtnMillis) {
        let mut any = false;
        for s in &mut self.neighbours {
            if s.paused_until.is_some_and(|t| t <= now) {
                s.paused_until = None;
                any = true;
            }
        }
        if any {
            self.reroute_waiting(now);
        }
    }

    /// A link went up (route waiting bundles) or down (its queue goes back to routing;
    /// transfers in flight are reported by the adapter).
    pub(super) fn set_link(&mut self, n: NeighbourId, up: bool, now: DtnMillis) {
        let Some(s) = self.neighbours.get_mut(n.0) else {
            return;
        };
        if s.up == up {
            if up {
                self.pump(n, now);
            }
            return;
        }
        s.up = up;
        if up {
            s.paused_until = None;
        }
        tracing::debug!(neighbour = %s.cfg.name, up, "link state");
        if up {
            self.reroute_waiting(now);
            self.pump(n, now);
        } else {
            self.requeue_neighbour(n, now);
        }
    }

    /// Hand queued bundles to the neighbour, expedited first, up to `max_in_flight` transfers
    /// (each fragment of a proactively fragmented bundle is one), and no faster than its
    /// contact's rate if it is paced (see `contacts`).
    pub(super) fn pump(&mut self, n: NeighbourId, now: DtnMillis) {
        loop {
            let s = &mut self.neighbours[n.0];
            if !s.usable(now) || !s.fits(1) {
                return;
            }
            if s.pace_rate.is_some() && s.pace_free_at > now.saturating_add(PACE_BURST_MS) {
                s.pace_wake = Some(s.pace_free_at - PACE_BURST_MS);
                return;
            }
            let Some(id) = s.queues.iter_mut().rev().find_map(|q| q.pop_first()) else {
                return;
            };
            let pace = s.pace_rate.map(|rate| {
                let size = self.entries.get(&id).map_or(0, |e| e.size);
                size.saturating_mul(1000).div_ceil(rate.max(1))
            });
            if !self.transmit(id, n, now) {
                // Its fragments do not fit in the window: it waits for outcomes, first in line.
                return;
            }
            if let Some(ms) = pace {
                let s = &mut self.neighbours[n.0];
                s.pace_free_at = s.pace_free_at.max(now).saturating_add(ms);
            }
        }
    }

    /// Paced neighbours whose wait ended at `now` take their next bundles.
    pub(super) fn end_pacing_waits(&mut self, now: DtnMillis) {
        for i in 0..self.neighbours.len() {
            if self.neighbours[i].pace_wake.is_some_and(|t| t <= now) {
                self.neighbours[i].pace_wake = None;
                self.pump(NeighbourId(i), now);
            }
        }
    }

    /// RFC 9171 §5.4 step 4: read the bundle from the store, apply the forwarding updates,
    /// fragment it if the link requires (§5.8), and emit the transfers. Fragments count
    /// against `max_in_flight` one each: when they do not fit beside the transfers in flight,
    /// the bundle goes back to the head of its queue and `false` is returned (the window is
    /// full). A bundle with more fragments than the whole window goes alone, when nothing
    /// else is in flight.
    fn transmit(&mut self, id: Id, n: NeighbourId, now: DtnMillis) -> bool {
        let Some(e) = self.entries.get(&id) else {
            return true;
        };
        let (received_ms, priority) = (e.received_ms, e.priority);
        // A lower bound of its fragment count: no fragmentation work while it cannot fit.
        let s = &self.neighbours[n.0];
        let least = match s.max_size() {
            Some(m) if e.size > m => {
                usize::try_from(e.size.div_ceil(m.max(1))).unwrap_or(usize::MAX)
            }
            _ => 1,
        };
        if !s.fits(least) {
            self.neighbours[n.0].queues[prio_index(priority)].insert(id);
            return false;
        }
        self.set_state(id, State::New);
        let Some(parsed) = self.load_bundle(id) else {
            // Gone or corrupt: nothing to send.
            self.delete(id, ReasonCode::BlockUnintelligible, now);
            return true;
        };
        let blocks = parsed.bundle.unprocessable_blocks(supported_block);
        let params = bpv7::ForwardParams {
            previous_node: Some(self.node_id.clone()),
            dwell_ms: now.saturating_sub(received_ms),
            insert_hop_limit: None,
            new_block_crc: bpv7::CrcType::None,
            remove_blocks: blocks.discard_blocks,
        };
        let out = match parsed.forward(&params) {
            Ok(c) => c.concat(),
            Err(bpv7::Error::HopLimitExceeded) => {
                self.delete(id, ReasonCode::HopLimitExceeded, now);
                return true;
            }
            Err(err) => {
                tracing::warn!(%err, "bundle cannot be forwarded");
                self.delete(id, ReasonCode::BlockUnintelligible, now);
                return true;
            }
        };
        let mut pieces = vec![out];
        if let Some(max) = self.neighbours[n.0].max_size() {
            if pieces[0].len() as u64 > max {
                match fragment_bytes(&pieces[0], max) {
                    Ok(f) => pieces = f,
                    Err(bpv7::Error::MustNotFragment) => {
                        // Grew past the link's limit in forwarding: try again later (routing
                        // now would choose the same link).
                        let t = now.saturating_add(self.retry_delay_ms);
                        self.retries.insert((t, id));
                        self.set_state(id, State::Retry(t));
                        return true;
                    }
                    Err(err) => {
                        tracing::debug!(%err, max, "bundle cannot be fragmented for this link");
                        self.delete(id, ReasonCode::NoKnownRoute, now);
                        return true;
                    }
                }
            }
        }
        let s = &self.neighbours[n.0];
        if !s.fits(pieces.len()) {
            self.neighbours[n.0].queues[prio_index(priority)].insert(id);
            self.set_state(id, State::Queued(n));
            return false;
        }
        let urgent = priority == Priority::Expedited;
        let count = pieces.len() as u32;
        for bundle in pieces {
            let transfer: TransferId = self.next_transfer;
            self.next_transfer += 1;
            self.transfers
                .insert(transfer, (id, n, bundle.len() as u64));
            self.neighbours[n.0].in_flight += 1;
            self.actions.push_back(Action::Transmit {
                neighbour: n,
                transfer,
                bundle,
                urgent,
            });
        }
        self.set_state(
            id,
            State::InFlight {
                neighbour: n,
                pending: count,
                failed: false,
                too_large: false,
            },
        );
        true
    }

    /// The adapter's outcome of one transfer.
    pub(super) fn outcome(
        &mut self,
        transfer: TransferId,
        outcome: Result<(), FailureReason>,
        now: DtnMillis,
    ) {
        let Some((id, n, len)) = self.transfers.remove(&transfer) else {
            tracing::debug!(transfer, "outcome for an unknown transfer");
            return;
        };
        let s = &mut self.neighbours[n.0];
        s.in_flight = s.in_flight.saturating_sub(1);
        let was_usable = s.usable(now);
        let mut failed_now = false;
        let mut too_large_now = false;
        match &outcome {
            Ok(()) => {
                s.bundles_out += 1;
                s.bytes_out += len;
            }
            Err(r) => {
                *s.failures.entry(r.kind()).or_default() += 1;
                failed_now = true;
                if let FailureReason::TooLarge { limit, .. } = r {
                    // Learn the link's limit: the bundle is fragmented for it next time.
                    let limit = *limit as u64;
                    s.learnt_max = Some(s.learnt_max.map_or(limit, |m| m.min(limit)));
                    too_large_now = true;
                }
                if !too_large_now {
                    // Pause the neighbour for the retry delay: one failure costs one probe
                    // per delay, not a retry of every queued bundle.
                    s.paused_until = Some(now.saturating_add(self.retry_delay_ms));
                }
                tracing::debug!(neighbour = %s.cfg.name, reason = ?r, "transfer failed");
            }
        }
        if was_usable && !self.neighbours[n.0].usable(now) {
            // Its queue goes back to routing (other routes, or waiting for the pause to end).
            self.requeue_neighbour(n, now);
        }
        if let Some(e) = self.entries.get_mut(&id) {
            if let State::InFlight {
                neighbour,
                pending,
                failed,
                too_large,
            } = e.state
            {
                let pending = pending.saturating_sub(1);
                let failed = failed || failed_now;
                let too_large = too_large || too_large_now;
                if pending > 0 {
                    e.state = State::InFlight {
                        neighbour,
                        pending,
                        failed,
                        too_large,
                    };
                } else if !failed {
                    self.forwarded(id, neighbour, now);
                } else {
                    e.state = State::New;
                    if let Some(b) = self.bookings.remove(&id) {
                        if let Some(r) = self.router.as_mut() {
                            r.release(b);
                        }
                    }
                    // Routed again: with the learnt size limit after TooLarge, or, after
                    // another failure, around the neighbour paused below (another route, or
                    // waiting until the pause ends).
                    self.route(id, now);
                }
            }
        }
        self.pump(n, now);
    }

    /// §5.4 step 5: every transfer confirmed: "forwarded" report, custody released. A bundle
    /// sent over a layer that confirms nothing (UDP, LTP green) is made durable here first and
    /// released once it is: a bundle in transit may be acknowledged upstream when it left the
    /// store before it was written (`Store::insert_held`), which is right only when the next
    /// hop confirmed it.
    fn forwarded(&mut self, id: Id, via: NeighbourId, now: DtnMillis) {
        let meta = self.meta_if(id, BundleFlags::REPORT_FORWARDING);
        // The booked volume is consumed: forget the booking without releasing it.
        self.bookings.remove(&id);
        if self.neighbours[via.0].cfg.reliable {
            self.release(id);
        } else {
            self.release_when_durable(id);
        }
        self.counters.forwarded += 1;
        if let Some(m) = meta {
            self.report(&m, Report::Forwarded, ReasonCode::NoInformation, now);
        }
    }
}

impl BundleEngine {
    /// Releases `id` once the store has it on disk ([`super::Deferred::Release`]); at once
    /// where the store has nothing to write (memory, sync) or cannot write.
    fn release_when_durable(&mut self, id: Id) {
        let Some(key) = self.entries.get(&id).map(|e| e.key.clone()) else {
            return;
        };
        match self.store.persist(&key) {
            Ok(ticket) if ticket != crate::store::Ticket::NONE => {
                self.set_state(id, State::Unconfirmed);
                self.defer(ticket, super::Deferred::Release(id));
            }
            Ok(_) => {
                self.release(id);
            }
            Err(err) => {
                tracing::warn!(%err, "store could not persist a bundle before its release");
                self.release(id);
            }
        }
    }
}

/// §5.8: split an encoded bundle into encoded fragments of at most `max` bytes.
fn fragment_bytes(bytes: &bytes::Bytes, max: u64) -> Result<Vec<bytes::Bytes>, bpv7::Error> {
    let opts = super::stored_decode_options();
    let bundle = bpv7::Bundle::decode_with(bytes.clone(), &opts)?;
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    bpv7::fragment(&bundle, max)?
        .iter()
        .map(|f| {
            f.encode_with(&bpv7::DecodeOptions::rfc9173_examples())
                .map(bytes::Bytes::from)
        })
        .collect()
}
