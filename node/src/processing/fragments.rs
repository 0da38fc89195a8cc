//! Fragments addressed to this node (RFC 9171 §5.9 reassembly, §5.7 step 1): each fragment
//! is stored on arrival (custody) and given to the [`bpv7::Reassembler`] (bounded by
//! `max_reassembly_bytes`; a fragment beyond the bound is refused, so the sender keeps it and
//! retries later). When every byte of the ADU is present, the whole bundle is stored and
//! dispatched for local delivery, then the fragments are removed. If the whole bundle cannot
//! be stored (quota), the fragments stay and reassembly is retried from the store later. At
//! restart the reassembler is rebuilt from the stored fragments.

use bytes::Bytes;

use super::meta::Kind;
use super::reception::{expiry_of, meta_of, AcceptError, Accepted};
use super::{BundleEngine, Id, State};
use crate::api::{DtnMillis, Priority};
use crate::store::{BundleKey, Ticket};

impl BundleEngine {
    /// A fragment for this node was stored as `id`: feed the reassembler. Returns the ticket
    /// of the reassembled bundle when this fragment completed it.
    pub(super) fn fragment_arrived(
        &mut self,
        id: Id,
        bundle: &bpv7::Bundle,
        now: DtnMillis,
    ) -> Result<Option<Ticket>, AcceptError> {
        let group = BundleKey::from_id(&bundle.id().whole());
        match self.attach_fragment(id, group.clone(), bundle) {
            Ok(None) => Ok(None),
            Ok(Some(whole)) => Ok(self.complete_reassembly(group, whole, now)),
            Err(bpv7::Error::ReassemblyLimit(s)) => {
                self.release(id);
                Err(AcceptError::Reassembly(s.to_string()))
            }
            Err(err) => {
                self.release(id);
                Err(AcceptError::BadFragment(err.to_string()))
            }
        }
    }

    /// Record `id` as a member of `group` and insert it into the reassembler.
    fn attach_fragment(
        &mut self,
        id: Id,
        group: BundleKey,
        bundle: &bpv7::Bundle,
    ) -> Result<Option<bpv7::Bundle>, bpv7::Error> {
        self.fragment_groups
            .entry(group.clone())
            .or_default()
            .push(id);
        self.fragment_group_of.insert(id, group);
        self.set_state(id, State::Fragment);
        self.reassembler.insert(bundle.clone())
    }

    /// Store and dispatch the reassembled bundle, then remove its fragments.
    fn complete_reassembly(
        &mut self,
        group: BundleKey,
        whole: bpv7::Bundle,
        now: DtnMillis,
    ) -> Option<Ticket> {
        let members = self
            .fragment_groups
            .get(&group)
            .cloned()
            .unwrap_or_default();
        if self.store.was_delivered(&group).unwrap_or(false) || self.by_key.contains_key(&group) {
            for id in members {
                self.release(id);
            }
            return None;
        }
        let raw = match whole.encode_with(&bpv7::DecodeOptions::rfc9173_examples()) {
            Ok(v) => Bytes::from(v),
            Err(err) => {
                tracing::warn!(%err, "reassembled bundle does not encode; fragments dropped");
                for id in members {
                    self.delete(id, bpv7::ReasonCode::BlockUnintelligible, now);
                }
                return None;
            }
        };
        let received = members
            .iter()
            .filter_map(|i| self.entries.get(i).map(|e| e.received_ms))
            .min()
            .unwrap_or(now);
        let previous = None;
        let mut meta = meta_of(&whole, Kind::Local, Priority::Normal, now, previous);
        meta.received_ms = received;
        let expiry = expiry_of(&whole, now);
        match self.accept(&whole, &raw, meta, expiry, false, now) {
            Ok(Accepted::Stored(t)) => {
                for id in members {
                    self.release(id);
                }
                Some(t)
            }
            Ok(Accepted::Consumed(t)) => {
                for id in members {
                    self.release(id);
                }
                t
            }
            Ok(Accepted::Duplicate) => {
                for id in members {
                    self.release(id);
                }
                None
            }
            Err(err) => {
                tracing::warn!(%err, "reassembled bundle not stored; retrying later");
                self.reassembly_retry
                    .insert(group, now.saturating_add(self.retry_delay_ms));
                None
            }
        }
    }

    /// Rebuild a group's partial bundle from the stored fragments (restart, retry).
    pub(super) fn reassemble_from_store(&mut self, group: BundleKey, now: DtnMillis) {
        let members = self.fragment_groups.remove(&group).unwrap_or_default();
        let mut evicted = false;
        for &id in &members {
            self.fragment_group_of.remove(&id);
        }
        for id in members {
            let Some(parsed) = self.load_bundle(id) else {
                self.release(id);
                continue;
            };
            if !evicted {
                self.reassembler.evict(&parsed.bundle.id());
                evicted = true;
            }
            match self.attach_fragment(id, group.clone(), &parsed.bundle) {
                Ok(None) => {}
                Ok(Some(whole)) => {
                    self.complete_reassembly(group.clone(), whole, now);
                }
                Err(err) => {
                    tracing::debug!(%err, "stored fragment not reassembled");
                }
            }
        }
    }

    /// Forget `id`'s group membership (it left the store).
    pub(super) fn forget_fragment(&mut self, id: Id) {
        if let Some(g) = self.fragment_group_of.remove(&id) {
            if let Some(v) = self.fragment_groups.get_mut(&g) {
                v.retain(|&x| x != id);
                if v.is_empty() {
                    self.fragment_groups.remove(&g);
                }
            }
        }
    }
}
