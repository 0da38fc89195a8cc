//! Bundle reception (RFC 9171 §5.6), bundle transmission by applications (§5.2), and the
//! common path that takes a new bundle into custody and dispatches it (§5.3).
//!
//! Reception order: size limit, decoding and validation of every block (CRCs, §4 rules;
//! an invalid bundle is discarded and counted, §5.6 step 3), duplicate check (the identity is
//! stored or was delivered), lifetime (§5.5: expired on arrival → deleted, reason 1), hop limit
//! (§4.4.3: exceeded → deleted, reason 9), unprocessable blocks (§5.6 step 4, §4.2.4: delete
//! the bundle with reason 11, or drop the block when forwarding, and report if the block asks),
//! then storage (custody) and the "received" report (§5.6 step 2, issued once the bundle is
//! stored so a report never claims a bundle the node could lose), then dispatch (§5.3). A
//! bundle deleted during reception (expired, hop limit, unprocessable block) was received all
//! the same: its "received" report, if requested and allowed, goes out first, then the
//! "deleted" one (§5.6 step 2 before §5.10). One "received" report per reception: when a
//! block's "report if unprocessable" flag asked for one (§5.6 step 4, reason 11), that one
//! stands for both.
//!
//! Bundles received from neighbours and sent by applications are stored with
//! [`Store::insert_held`](crate::store::Store::insert_held) when they are to be forwarded or
//! delivered here: a bundle in transit that leaves again within the group-commit delay (next
//! hop confirmed, application acknowledged) is never written to disk, and its acknowledgement
//! waits for that instead of a flush. Everything else (fragments, status reports, echo
//! replies) is stored with a plain insert.

use bytes::Bytes;

use bpv7::{BlockType, BundleFlags, ReasonCode};

use super::meta::{Kind, Meta};
use super::status_reports::Report;
use super::{BundleEngine, NeighbourId, Reception};
use crate::api::{AgentError, DtnMillis, Priority, RegistrationId, SendAccepted, SendRequest};
use crate::store::{BundleKey, InsertOutcome, StoreError, Ticket};

/// Block types this node processes (RFC 9171 §4.4 extension blocks and the payload). BPSec
/// blocks (RFC 9172) are kept and forwarded unchanged: this node neither verifies nor adds
/// them, and treating them as unprocessable would delete protected bundles in transit.
pub(super) fn supported_block(t: BlockType) -> bool {
    !matches!(t, BlockType::Unknown(_))
}

/// Result of taking a bundle into custody.
#[derive(Debug)]
pub(super) enum Accepted {
    /// Stored as `id`; acknowledge once `ticket` is durable.
    Stored(Ticket),
    /// Handled without storing it (echo request, administrative record consumed here), with
    /// the ticket of any bundle it produced.
    Consumed(Option<Ticket>),
    /// Already stored or already delivered.
    Duplicate,
}

/// Why a bundle was not taken into custody.
#[derive(Debug, thiserror::Error)]
pub(super) enum AcceptError {
    /// The store quota is reached (back-pressure).
    #[error("{0}")]
    Full(String),
    /// The store failed.
    #[error("storage error: {0}")]
    Store(String),
    /// The fragment reassembler is at its memory bound.
    #[error("reassembly limit: {0}")]
    Reassembly(String),
    /// The fragment contradicts fragments already received.
    #[error("inconsistent fragment: {0}")]
    BadFragment(String),
}

impl From<StoreError> for AcceptError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QuotaExceeded(s) => AcceptError::Full(s),
            other => AcceptError::Store(other.to_string()),
        }
    }
}

impl BundleEngine {
    /// RFC 9171 §5.6 (see the module docs).
    pub(super) fn receive_bundle(
        &mut self,
        from: Option<NeighbourId>,
        peer_node_id: Option<&str>,
        raw: Bytes,
        now: DtnMillis,
    ) -> Reception {
        // The adapter's neighbour, else the one whose node ID the convergence layer learnt.
        let from = from.filter(|n| n.0 < self.neighbours.len()).or_else(|| {
            peer_node_id
                .and_then(|s| s.parse::<bpv7::Eid>().ok())
                .and_then(|e| self.neighbour_of(&e))
        });
        if raw.len() as u64 > self.max_bundle_size {
            self.count_discard("too_large");
            return Reception::Discarded(format!(
                "bundle of {} bytes exceeds the limit of {}",
                raw.len(),
                self.max_bundle_size
            ));
        }
        // dtn7-rs 0.21 sends primary blocks without CRC (INTEROP.md): allowed per neighbour.
        let opts = bpv7::DecodeOptions {
            require_primary_crc: !from
                .is_some_and(|n| self.neighbours[n.0].cfg.accept_primary_without_crc),
            require_bundle_age: true,
        };
        // §5.6 step 3: a bundle with a bad CRC or a malformed block is discarded.
        let parsed = match bpv7::ParsedBundle::decode_with(raw, &opts) {
            Ok(p) => p,
            Err(err) => {
                self.count_discard("invalid");
                tracing::debug!(%err, neighbour = ?from, "discarding invalid bundle");
                return Reception::Discarded(err.to_string());
            }
        };
        let bundle = &parsed.bundle;
        let id = bundle.id();
        let key = BundleKey::from_id(&id);
        if self.is_duplicate(&key, bundle) {
            self.counters.duplicate += 1;
            tracing::trace!(bundle = %id, "duplicate bundle");
            return Reception::Consumed;
        }
        self.counters.received += 1;
        let previous = bundle
            .previous_node()
            .or_else(|| peer_node_id.and_then(|s| s.parse::<bpv7::Eid>().ok()))
            .or_else(|| from.and_then(|n| self.neighbours[n.0].cfg.node_id.clone()));
        let meta = meta_of(bundle, Kind::Forward, Priority::Normal, now, previous);
        // §5.5: expired on arrival.
        if bundle.is_expired(Some(bpv7::DtnTime(now)), 0) {
            self.counters.expired += 1;
            self.report(&meta, Report::Received, ReasonCode::NoInformation, now);
            self.delete_unstored(&meta, ReasonCode::LifetimeExpired, now);
            return Reception::Consumed;
        }
        // §4.4.3: hop limit exceeded.
        if bundle.hop_limit_exceeded() {
            self.report(&meta, Report::Received, ReasonCode::NoInformation, now);
            self.delete_unstored(&meta, ReasonCode::HopLimitExceeded, now);
            return Reception::Consumed;
        }
        // §5.6 step 4 / §4.2.4: blocks this node cannot process.
        let blocks = bundle.unprocessable_blocks(supported_block);
        if let Some(reason) = blocks.delete_bundle {
            self.received_report(&meta, blocks.report, now);
            self.delete_unstored(&meta, reason, now);
            return Reception::Consumed;
        }
        let expiry = expiry_of(bundle, now);
        match self.accept(bundle, parsed.raw(), meta.clone(), expiry, true, now) {
            Ok(Accepted::Stored(ticket)) => {
                // §5.6 step 2, once in custody: the report says the node holds the bundle,
                // so it leaves once the bundle is on disk, like the transfer's own
                // acknowledgement.
                self.received_report_when_durable(meta, blocks.report, &ticket);
                Reception::Accepted(ticket)
            }
            Ok(Accepted::Consumed(t)) => match t {
                Some(t) => {
                    self.received_report_when_durable(meta, blocks.report, &t);
                    Reception::Accepted(t)
                }
                None => {
                    self.received_report(&meta, blocks.report, now);
                    Reception::Consumed
                }
            },
            Ok(Accepted::Duplicate) => {
                self.counters.received -= 1;
                self.counters.duplicate += 1;
                Reception::Consumed
            }
            Err(AcceptError::BadFragment(s)) => {
                self.count_discard("inconsistent_fragment");
                Reception::Discarded(s)
            }
            Err(e) => {
                self.counters.received -= 1;
                let label = match e {
                    AcceptError::Full(_) => "store_full",
                    AcceptError::Reassembly(_) => "reassembly_limit",
                    _ => "store_error",
                };
                *self.counters.refused.entry(label).or_default() += 1;
                Reception::Refused(e.to_string())
            }
        }
    }

    /// Whether this bundle is already held or was delivered (for a fragment addressed here,
    /// also its whole bundle). Delivered-id records exist only for bundles addressed here
    /// (deliveries and echo requests): a bundle in transit needs no store read.
    fn is_duplicate(&self, key: &BundleKey, bundle: &bpv7::Bundle) -> bool {
        if self.by_key.contains_key(key) {
            return true;
        }
        let local = self.is_local(&bundle.primary.destination);
        if local && self.store.was_delivered(key).unwrap_or(false) {
            return true;
        }
        if bundle.primary.fragment.is_some() && local {
            let whole = BundleKey::from_id(&bundle.id().whole());
            return self.by_key.contains_key(&whole)
                || self.store.was_delivered(&whole).unwrap_or(false);
        }
        false
    }

    fn count_discard(&mut self, reason: &'static str) {
        *self.counters.discarded.entry(reason).or_default() += 1;
    }

    /// §5.10 for a bundle that was never stored: count, and report if requested.
    pub(super) fn delete_unstored(&mut self, meta: &Meta, reason: ReasonCode, now: DtnMillis) {
        *self
            .counters
            .deleted
            .entry(super::status_reports::reason_label(reason))
            .or_default() += 1;
        tracing::debug!(bundle = %meta.bundle_id(), reason = reason.code(), "bundle deleted");
        self.report(meta, Report::Deleted, reason, now);
    }

    /// Take a valid bundle into custody and dispatch it (RFC 9171 §5.3): local delivery
    /// (registration, echo service, administrative records, fragments to reassemble) or
    /// forwarding. `hold`: a bundle to forward or deliver is stored as a held insert (see the
    /// module docs).
    pub(super) fn accept(
        &mut self,
        bundle: &bpv7::Bundle,
        raw: &Bytes,
        mut meta: Meta,
        expiry: DtnMillis,
        hold: bool,
        now: DtnMillis,
    ) -> Result<Accepted, AcceptError> {
        let dest = &bundle.primary.destination;
        let key = BundleKey::from_id(&bundle.id());
        meta.kind = if !self.is_local(dest) {
            Kind::Forward
        } else if bundle.primary.fragment.is_some() {
            Kind::Fragment
        } else if self.is_echo(dest) {
            let t = self.echo(bundle, now);
            // Remember the request so a retransmitted copy is not answered twice.
            let rec = self.store.record_delivered(&key, expiry).ok();
            let both = match (t, rec) {
                (Some(a), Some(b)) => Some(a.and(b)),
                (a, b) => a.or(b),
            };
            return Ok(Accepted::Consumed(both));
        } else if bundle.is_admin_record()
            && self.is_admin_endpoint(dest)
            && !self.by_endpoint.contains_key(&dest.to_string())
        {
            self.admin_record_received(bundle);
            return Ok(Accepted::Consumed(None));
        } else {
            if bundle.is_admin_record() {
                self.counters.admin_received += 1;
            }
            Kind::Local
        };
        let inserted = if hold && meta.kind != Kind::Fragment {
            self.store.insert_held(&key, expiry, &meta.encode(), raw)?
        } else {
            self.store.insert(&key, expiry, &meta.encode(), raw)?
        };
        let ticket = match inserted {
            InsertOutcome::Stored(t) => t,
            InsertOutcome::Duplicate => return Ok(Accepted::Duplicate),
        };
        let id = self.add_entry(key, &meta, raw.len() as u64, expiry);
        match meta.kind {
            Kind::Forward => self.route(id, now),
            Kind::Local => self.enqueue_local(id, now),
            Kind::Fragment => {
                let t = self.fragment_arrived(id, bundle, now)?;
                return Ok(Accepted::Stored(match t {
                    Some(t) => ticket.and(t),
                    None => ticket,
                }));
            }
        }
        Ok(Accepted::Stored(ticket))
    }

    /// Store and dispatch a bundle created by this node (application send, status report,
    /// echo reply); `hold` as in [`Self::accept`].
    pub(super) fn originate(
        &mut self,
        bundle: bpv7::Bundle,
        priority: Priority,
        hold: bool,
        now: DtnMillis,
    ) -> Result<(bpv7::BundleId, Option<Ticket>), AcceptError> {
        let raw = Bytes::from(
            bundle
                .encode_with(&bpv7::DecodeOptions::rfc9173_examples())
                .map_err(|e| AcceptError::Store(e.to_string()))?,
        );
        let meta = meta_of(&bundle, Kind::Forward, priority, now, None);
        let expiry = expiry_of(&bundle, now);
        self.counters.originated += 1;
        let id = bundle.id();
        match self.accept(&bundle, &raw, meta, expiry, hold, now)? {
            Accepted::Stored(t) => Ok((id, Some(t))),
            Accepted::Consumed(t) => Ok((id, t)),
            Accepted::Duplicate => Err(AcceptError::Store("duplicate creation timestamp".into())),
        }
    }

    /// RFC 9171 §5.2: build the application's bundle and take it into custody.
    pub(super) fn send_bundle(
        &mut self,
        req: SendRequest,
        registration: Option<RegistrationId>,
        now: DtnMillis,
    ) -> Result<(SendAccepted, Ticket), AgentError> {
        let bad = |what: &str, e: bpv7::Error| AgentError::Invalid(format!("{what}: {e}"));
        let destination: bpv7::Eid = req.destination.parse().map_err(|e| bad("destination", e))?;
        if destination.is_null() {
            return Err(AgentError::Invalid("destination dtn:none".into()));
        }
        let source: bpv7::Eid = match (&req.source, registration) {
            (Some(s), _) => s.parse().map_err(|e| bad("source", e))?,
            (None, Some(r)) => match self.registrations.get(&r) {
                Some(reg) => reg.endpoint.parse().map_err(|e| bad("source", e))?,
                None => return Err(AgentError::UnknownRegistration(r)),
            },
            (None, None) => self.node_id.clone(),
        };
        if !source.is_null() && !self.is_local(&source) {
            return Err(AgentError::Invalid(format!(
                "source {source} is not an endpoint of node {}",
                self.node_id
            )));
        }
        let report_to = match &req.report_to {
            Some(s) => s.parse().map_err(|e| bad("report-to", e))?,
            None => source.clone(),
        };
        if req.lifetime_ms == 0 {
            return Err(AgentError::Invalid("lifetime must be positive".into()));
        }
        let size = req.payload.len() as u64;
        if size > self.max_bundle_size {
            return Err(AgentError::TooLarge {
                size,
                limit: self.max_bundle_size,
            });
        }
        let mut flags = BundleFlags::empty();
        flags.set(BundleFlags::REPORT_RECEPTION, req.requests.received);
        flags.set(BundleFlags::REPORT_FORWARDING, req.requests.forwarded);
        flags.set(BundleFlags::REPORT_DELIVERY, req.requests.delivered);
        flags.set(BundleFlags::REPORT_DELETION, req.requests.deleted);
        // §4.2.3: an anonymous bundle (source dtn:none) must not be fragmented and requests no
        // reports.
        if req.no_fragment || source.is_null() {
            flags |= BundleFlags::MUST_NOT_FRAGMENT;
        }
        if source.is_null() {
            flags = BundleFlags(flags.0 & !BundleFlags::ALL_REPORTS.0);
        }
        let ts = self.next_timestamp(now);
        let mut b = bpv7::BundleBuilder::new(source, destination, ts, req.lifetime_ms)
            .report_to(report_to)
            .flags(flags)
            .hop_count(self.default_hop_limit, 0);
        if ts.time.0 == 0 {
            // §4.4.2: no clock → the bundle age block is mandatory.
            b = b.bundle_age(0);
        }
        let bundle = b
            .payload(req.payload)
            .build()
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        let (id, ticket) =
            self.originate(bundle, req.priority, true, now)
                .map_err(|e| match e {
                    AcceptError::Full(s) => AgentError::StoreFull(s),
                    other => AgentError::Storage(other.to_string()),
                })?;
        let ident = crate::api::BundleIdent::from(&id);
        // A bundle consumed at once without any write (an anonymous echo request to this
        // node) has nothing to wait for: ticket 0 precedes every write.
        let ticket = ticket.unwrap_or(Ticket::NONE);
        Ok((SendAccepted { id: ident }, ticket))
    }
}

/// The metadata of a bundle about to be stored.
pub(super) fn meta_of(
    bundle: &bpv7::Bundle,
    kind: Kind,
    priority: Priority,
    now: DtnMillis,
    previous: Option<bpv7::Eid>,
) -> Meta {
    let p = &bundle.primary;
    Meta {
        kind,
        priority,
        flags: p.flags.bits(),
        received_ms: now,
        lifetime_ms: p.lifetime_ms,
        creation_ms: p.creation.time.0,
        sequence: p.creation.sequence,
        fragment: bundle.id().fragment,
        destination: p.destination.clone(),
        source: p.source.clone(),
        report_to: p.report_to.clone(),
        previous,
    }
}

/// When a bundle expires (RFC 9171 §4.3.1, §5.5): `now` plus the lifetime left at `now`.
pub(super) fn expiry_of(bundle: &bpv7::Bundle, now: DtnMillis) -> DtnMillis {
    let age = bundle.age_ms(Some(bpv7::DtnTime(now)), 0).unwrap_or(0);
    now.saturating_add(bundle.primary.lifetime_ms.saturating_sub(age))
}
