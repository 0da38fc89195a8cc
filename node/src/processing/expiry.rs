//! Timers and restart: lifetime expiry by the store's expiry index (RFC 9171 §5.5: a bundle
//! whose age reaches its lifetime is deleted with reason code 1 "lifetime expired", §5.10),
//! retries of failed transfers, contact-plan changes, the delivered-id record pruning, and
//! restart recovery (every stored bundle resumes from its metadata alone).

use bpv7::ReasonCode;

use super::meta::{Kind, Meta};
use super::{BundleEngine, State, EXPIRY_BATCH, PRUNE_INTERVAL_MS};
use crate::api::{AgentError, DtnMillis};
use crate::store::BundleKey;

impl BundleEngine {
    /// Run everything due at `now`.
    pub(super) fn run_timers(&mut self, now: DtnMillis) {
        self.expire(now);
        // Retries of failed transfers.
        while let Some(&(t, id)) = self.retries.first() {
            if t > now {
                break;
            }
            self.retries.remove(&(t, id));
            self.set_state(id, State::New);
            self.route(id, now);
        }
        self.end_pauses(now);
        self.end_pacing_waits(now);
        // A contact started or ended: route the waiting bundles again.
        if self.next_contact_change.is_some_and(|t| t <= now) {
            self.apply_contacts(now);
            self.reroute_waiting(now);
        }
        let due: Vec<BundleKey> = self
            .reassembly_retry
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for g in due {
            self.reassembly_retry.remove(&g);
            self.reassemble_from_store(g, now);
        }
        if now >= self.next_prune {
            self.next_prune = now.saturating_add(PRUNE_INTERVAL_MS);
            match self.store.prune_delivered(now) {
                Ok(n) if n > 0 => tracing::debug!(n, "delivered-id records pruned"),
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "delivered-id pruning failed"),
            }
        }
    }

    /// §5.5: delete up to [`EXPIRY_BATCH`] expired bundles, found by the expiry index.
    fn expire(&mut self, now: DtnMillis) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let keys = match self.store.expired(now, EXPIRY_BATCH) {
            Ok(k) => k,
            Err(err) => {
                tracing::warn!(%err, "expiry index read failed");
                self.next_expiry = Some(now.saturating_add(self.retry_delay_ms));
                return;
            }
        };
        let full = keys.len() >= EXPIRY_BATCH;
        for key in keys {
            match self.by_key.get(&key).copied() {
                Some(id) => {
                    if self
                        .entries
                        .get(&id)
                        .is_some_and(|e| e.kind == Kind::Fragment)
                    {
                        if let Some(m) = self.load_meta(id) {
                            self.reassembler.evict(&m.bundle_id());
                        }
                    }
                    self.counters.expired += 1;
                    self.delete(id, ReasonCode::LifetimeExpired, now);
                }
                None => {
                    // Stored but unknown to the index (e.g. metadata that did not decode).
                    let _ = self.store.remove(&key);
                    self.counters.expired += 1;
                }
            }
        }
        // Deliveries that expired freed window space.
        let regs: Vec<_> = self.registrations.keys().copied().collect();
        for r in regs {
            self.pump_registration(r, now);
        }
        self.next_expiry = if full {
            Some(now)
        } else {
            match self.store.next_expiry() {
                Ok(t) => t,
                Err(err) => {
                    tracing::warn!(%err, "expiry index read failed");
                    Some(now.saturating_add(self.retry_delay_ms))
                }
            }
        };
    }

    /// Restart recovery: rebuild the index from the stored metadata and resume every bundle.
    pub(super) fn recover(&mut self, now: DtnMillis) -> Result<(), AgentError> {
        let mut forward = Vec::new();
        let mut local = Vec::new();
        let mut groups = Vec::new();
        let mut bad = 0usize;
        let store = self.store.clone();
        for rec in store.iter_meta() {
            let rec = rec.map_err(|e| AgentError::Storage(e.to_string()))?;
            let meta = match Meta::decode(&rec.meta) {
                Ok(m) => m,
                Err(err) => {
                    // Left in the store; the expiry index removes it in time.
                    bad += 1;
                    tracing::warn!(%err, "stored bundle with undecodable metadata skipped");
                    continue;
                }
            };
            let kind = meta.kind;
            // Acknowledged by the application but not yet removed when the node stopped:
            // the delivered-id record wins (exactly once).
            if kind == Kind::Local && self.store.was_delivered(&rec.key).unwrap_or(false) {
                if let Err(err) = self.store.remove(&rec.key) {
                    tracing::warn!(%err, "store remove failed");
                }
                continue;
            }
            let id = self.add_entry(rec.key.clone(), &meta, rec.size, rec.expiry_ms);
            match kind {
                Kind::Forward => forward.push(id),
                Kind::Local => local.push(id),
                Kind::Fragment => {
                    let g = BundleKey::from_id(&meta.bundle_id().whole());
                    self.fragment_groups.entry(g.clone()).or_default().push(id);
                    self.fragment_group_of.insert(id, g.clone());
                    self.set_state(id, State::Fragment);
                    groups.push(g);
                }
            }
        }
        if let Err(err) = self.store.prune_delivered(now) {
            tracing::warn!(%err, "delivered-id pruning failed");
        }
        self.next_expiry = self
            .store
            .next_expiry()
            .map_err(|e| AgentError::Storage(e.to_string()))?;
        self.apply_contacts(now);
        tracing::info!(
            bundles = self.entries.len(),
            forward = forward.len(),
            local = local.len(),
            fragments = self.fragment_group_of.len(),
            skipped = bad,
            "store recovered"
        );
        for id in local {
            self.enqueue_local(id, now);
        }
        groups.sort();
        groups.dedup();
        for g in groups {
            self.reassemble_from_store(g, now);
        }
        for id in forward {
            self.route(id, now);
        }
        Ok(())
    }
}
