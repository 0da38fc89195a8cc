//! The memory-only backend (`Durability::Memory`): the same retention rules as the disk store
//! (RFC 9171 §5 custody storage, §4.2.2 lifetime expiry by an index) with nothing on disk.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use super::{check_quota, BundleKey, MetaRecord, StoreError, Usage};
use crate::api::DtnMillis;

struct Entry {
    bundle: Bytes,
    expiry_ms: DtnMillis,
    meta: Bytes,
}

#[derive(Default)]
struct State {
    bundles: HashMap<BundleKey, Entry>,
    expiry: BTreeSet<(DtnMillis, BundleKey)>,
    delivered: HashMap<BundleKey, DtnMillis>,
    delivered_idx: BTreeSet<(DtnMillis, BundleKey)>,
    bytes: u64,
}

/// In-memory tables behind one lock.
#[derive(Default)]
pub(super) struct MemoryBackend {
    state: Mutex<State>,
}

impl MemoryBackend {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent tables (every update is
        // completed before anything can panic), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(
        &self,
        key: &BundleKey,
        expiry_ms: DtnMillis,
        meta: &[u8],
        bundle: &[u8],
        usage: &Usage,
    ) -> Result<bool, StoreError> {
        let mut st = self.lock();
        if st.bundles.contains_key(key) {
            return Ok(false);
        }
        check_quota(
            st.bundles.len() as u64,
            st.bytes,
            1,
            bundle.len() as u64,
            usage,
        )?;
        st.bytes += bundle.len() as u64;
        st.expiry.insert((expiry_ms, key.clone()));
        st.bundles.insert(
            key.clone(),
            Entry {
                bundle: Bytes::copy_from_slice(bundle),
                expiry_ms,
                meta: Bytes::copy_from_slice(meta),
            },
        );
        Ok(true)
    }

    pub(super) fn update_meta(&self, key: &BundleKey, meta: &[u8]) -> Result<(), StoreError> {
        let mut st = self.lock();
        let e = st.bundles.get_mut(key).ok_or_else(|| not_found(key))?;
        e.meta = Bytes::copy_from_slice(meta);
        Ok(())
    }

    pub(super) fn replace_bundle(
        &self,
        key: &BundleKey,
        bundle: &[u8],
        usage: &Usage,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let old = st
            .bundles
            .get(key)
            .ok_or_else(|| not_found(key))?
            .bundle
            .len() as u64;
        let new = bundle.len() as u64;
        if new > old {
            check_quota(st.bundles.len() as u64, st.bytes, 0, new - old, usage)?;
        }
        st.bytes = st.bytes - old + new;
        if let Some(e) = st.bundles.get_mut(key) {
            e.bundle = Bytes::copy_from_slice(bundle);
        }
        Ok(())
    }

    pub(super) fn remove(&self, key: &BundleKey) -> bool {
        let mut st = self.lock();
        match st.bundles.remove(key) {
            Some(e) => {
                st.bytes -= e.bundle.len() as u64;
                st.expiry.remove(&(e.expiry_ms, key.clone()));
                true
            }
            None => false,
        }
    }

    pub(super) fn get(&self, key: &BundleKey) -> Option<Bytes> {
        self.lock().bundles.get(key).map(|e| e.bundle.clone())
    }

    pub(super) fn get_meta(&self, key: &BundleKey) -> Option<MetaRecord> {
        self.lock().bundles.get(key).map(|e| MetaRecord {
            key: key.clone(),
            expiry_ms: e.expiry_ms,
            size: e.bundle.len() as u64,
            meta: e.meta.clone(),
        })
    }

    pub(super) fn contains(&self, key: &BundleKey) -> bool {
        self.lock().bundles.contains_key(key)
    }

    pub(super) fn expired(&self, now: DtnMillis, limit: usize) -> Vec<BundleKey> {
        self.lock()
            .expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }

    pub(super) fn next_expiry(&self) -> Option<DtnMillis> {
        self.lock().expiry.first().map(|(t, _)| *t)
    }

    pub(super) fn all_meta(&self) -> Vec<MetaRecord> {
        self.lock()
            .bundles
            .iter()
            .map(|(k, e)| MetaRecord {
                key: k.clone(),
                expiry_ms: e.expiry_ms,
                size: e.bundle.len() as u64,
                meta: e.meta.clone(),
            })
            .collect()
    }

    pub(super) fn record_delivered(&self, key: &BundleKey, keep_until: DtnMillis) {
        let mut st = self.lock();
        if let Some(old) = st.delivered.insert(key.clone(), keep_until) {
            st.delivered_idx.remove(&(old, key.clone()));
        }
        st.delivered_idx.insert((keep_until, key.clone()));
    }

    pub(super) fn was_delivered(&self, key: &BundleKey) -> bool {
        self.lock().delivered.contains_key(key)
    }

    pub(super) fn prune_delivered(&self, now: DtnMillis) -> usize {
        let mut st = self.lock();
        let gone: Vec<(DtnMillis, BundleKey)> = st
            .delivered_idx
            .iter()
            .take_while(|(t, _)| *t < now)
            .cloned()
            .collect();
        for e in &gone {
            st.delivered_idx.remove(e);
            st.delivered.remove(&e.1);
        }
        gone.len()
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.bundles.len() as u64, st.bytes)
    }
}

pub(super) fn not_found(key: &BundleKey) -> StoreError {
    StoreError::NotFound(format!("no stored bundle with key {:02x?}", &*key.0))
}
