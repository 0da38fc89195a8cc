//! Local bundle delivery (RFC 9171 §5.7): registrations of application endpoints, deliveries
//! pushed up to a window of unacknowledged ones per registration, acknowledgement (the
//! delivered-id record is written, then custody released, then the "delivered" report), the
//! echo service, and administrative records addressed to this node (§6.1).
//!
//! A bundle for a local endpoint without a registration stays in the store until a
//! registration for that endpoint appears or the bundle expires (§5.7: delivery deferred,
//! "delivery pending" retention). Deliveries not acknowledged when a registration ends go
//! back to the pending set for the endpoint's next registration (at-least-once; the
//! delivered-id record makes it exactly-once across restarts and retransmissions).

use bpv7::{BundleFlags, ReasonCode};

use super::status_reports::Report;
use super::{Action, BundleEngine, Id, Registration, State};
use crate::api::{AgentError, BundleIdent, Delivery, DtnMillis, Priority, RegistrationId};
use crate::store::{StoreError, Ticket};

impl BundleEngine {
    /// Register `endpoint` (an endpoint of this node) for `registration`.
    pub(super) fn register_endpoint(
        &mut self,
        registration: RegistrationId,
        endpoint: &str,
        now: DtnMillis,
    ) -> Result<(), AgentError> {
        let eid: bpv7::Eid = endpoint
            .parse()
            .map_err(|e| AgentError::Invalid(format!("endpoint: {e}")))?;
        if !self.is_local(&eid) {
            return Err(AgentError::Invalid(format!(
                "{eid} is not an endpoint of node {}",
                self.node_id
            )));
        }
        if self.is_echo(&eid) {
            return Err(AgentError::AlreadyRegistered(eid.to_string()));
        }
        let ep = eid.to_string();
        match self.by_endpoint.get(&ep) {
            Some(&r) if r == registration => return Ok(()),
            Some(_) => return Err(AgentError::AlreadyRegistered(ep)),
            None => {}
        }
        if let Some(old) = self.registrations.get(&registration) {
            return Err(AgentError::Invalid(format!(
                "registration {registration} already holds {}",
                old.endpoint
            )));
        }
        self.by_endpoint.insert(ep.clone(), registration);
        self.registrations.insert(
            registration,
            Registration {
                endpoint: ep,
                outstanding: Default::default(),
            },
        );
        self.pump_registration(registration, now);
        Ok(())
    }

    /// End a registration; its unacknowledged deliveries become pending again.
    pub(super) fn unregister_endpoint(&mut self, registration: RegistrationId, now: DtnMillis) {
        let Some(reg) = self.registrations.remove(&registration) else {
            return;
        };
        self.by_endpoint.remove(&reg.endpoint);
        for (_, id) in reg.outstanding {
            if let Some(e) = self.entries.get_mut(&id) {
                e.state = State::New;
            }
            self.enqueue_local(id, now);
        }
    }

    /// Put a stored local bundle in its endpoint's pending set and deliver if possible.
    pub(super) fn enqueue_local(&mut self, id: Id, now: DtnMillis) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.state = State::LocalPending;
        let ep = e.destination.to_string();
        self.pending_local.entry(ep.clone()).or_default().insert(id);
        if let Some(&r) = self.by_endpoint.get(&ep) {
            self.pump_registration(r, now);
        }
    }

    /// Push pending bundles to `registration` up to the delivery window.
    pub(super) fn pump_registration(&mut self, registration: RegistrationId, now: DtnMillis) {
        loop {
            let Some(reg) = self.registrations.get(&registration) else {
                return;
            };
            if reg.outstanding.len() >= self.delivery_window {
                return;
            }
            let ep = reg.endpoint.clone();
            let Some(q) = self.pending_local.get_mut(&ep) else {
                return;
            };
            let Some(id) = q.pop_first() else {
                self.pending_local.remove(&ep);
                return;
            };
            if q.is_empty() {
                self.pending_local.remove(&ep);
            }
            if let Some(e) = self.entries.get_mut(&id) {
                e.state = State::New;
            }
            self.deliver(id, registration, now);
        }
    }

    fn deliver(&mut self, id: Id, registration: RegistrationId, now: DtnMillis) {
        let Some(parsed) = self.load_bundle(id) else {
            self.delete(id, ReasonCode::BlockUnintelligible, now);
            return;
        };
        let b = &parsed.bundle;
        let token = self.next_token;
        self.next_token += 1;
        let delivery = Delivery {
            token,
            id: BundleIdent::from(&b.id()),
            destination: b.primary.destination.to_string(),
            report_to: b.primary.report_to.to_string(),
            lifetime_ms: b.primary.lifetime_ms,
            payload: b.payload().clone(),
        };
        if let Some(reg) = self.registrations.get_mut(&registration) {
            reg.outstanding.insert(token, id);
        }
        self.set_state(
            id,
            State::Delivering {
                registration,
                token,
            },
        );
        self.actions.push_back(Action::Deliver {
            registration,
            delivery,
        });
    }

    /// The application kept delivery `token`: delivered-id record, release, report.
    pub(super) fn ack(
        &mut self,
        registration: RegistrationId,
        token: u64,
        now: DtnMillis,
    ) -> Result<Option<Ticket>, StoreError> {
        let Some(&id) = self
            .registrations
            .get(&registration)
            .and_then(|r| r.outstanding.get(&token))
        else {
            return Ok(None);
        };
        let meta = self.meta_if(id, BundleFlags::REPORT_DELIVERY);
        let Some(e) = self.entries.get(&id) else {
            return Ok(None);
        };
        let ticket = match self.store.record_delivered(&e.key, e.expiry) {
            Ok(t) => t,
            Err(err) => {
                // Without the record a restart could deliver it again: keep the bundle (it is
                // delivered again on the next registration) rather than release it, and say so.
                tracing::warn!(%err, "delivered-id record failed");
                return Err(err);
            }
        };
        self.release(id);
        self.counters.delivered += 1;
        if let Some(m) = meta {
            self.report(&m, Report::Delivered, ReasonCode::NoInformation, now);
        }
        self.pump_registration(registration, now);
        Ok(Some(ticket))
    }

    /// The echo service: answer with the same payload to the source, from the echo endpoint.
    /// Returns the ticket of the stored reply, if one was made.
    pub(super) fn echo(&mut self, request: &bpv7::Bundle, now: DtnMillis) -> Option<Ticket> {
        let p = &request.primary;
        if p.source.is_null() || request.is_admin_record() {
            return None;
        }
        self.counters.delivered += 1;
        let ts = self.next_timestamp(now);
        let mut flags = BundleFlags::empty();
        flags.set(
            BundleFlags::MUST_NOT_FRAGMENT,
            p.flags.contains(BundleFlags::MUST_NOT_FRAGMENT),
        );
        let reply = bpv7::BundleBuilder::new(
            p.destination.clone(),
            p.source.clone(),
            ts,
            p.lifetime_ms.max(1),
        )
        .flags(flags)
        .hop_count(self.default_hop_limit, 0)
        .payload(request.payload().clone())
        .build();
        match reply {
            Ok(b) => match self.originate(b, Priority::Normal, false, now) {
                Ok((_, t)) => t,
                Err(err) => {
                    tracing::debug!(%err, "echo reply not stored");
                    None
                }
            },
            Err(err) => {
                tracing::debug!(%err, "echo reply not built");
                None
            }
        }
    }

    /// An administrative record for this node's administrative endpoint with no registration:
    /// consumed and counted (RFC 9171 §6.1).
    pub(super) fn admin_record_received(&mut self, bundle: &bpv7::Bundle) {
        self.counters.admin_received += 1;
        match bundle.admin_record() {
            Ok(bpv7::AdminRecord::StatusReport(sr)) => tracing::debug!(
                subject = %sr.subject(),
                reason = sr.reason.code(),
                received = sr.received.asserted,
                forwarded = sr.forwarded.asserted,
                delivered = sr.delivered.asserted,
                deleted = sr.deleted.asserted,
                "status report received"
            ),
            Ok(other) => tracing::debug!(record = ?other, "administrative record received"),
            Err(err) => tracing::debug!(%err, "undecodable administrative record"),
        }
    }
}
