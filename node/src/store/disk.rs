//! The sled backend: custody storage that survives a crash (RFC 9171 §5: a bundle is retained
//! until delivered, forwarded or deleted; §4.2.2 lifetime expiry through a time-ordered index;
//! the §5.1 bundle identity as key, also for the delivered-id record).
//!
//! Layout: one sled tree, `store`, split into key spaces by a one-byte prefix, so that every
//! change touching several of them is ONE atomic `apply_batch` (sled batches are atomic within
//! a tree, also across a crash; a multi-tree transaction would cost more per write):
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `B` | bundle key | bundle bytes |
//! | `M` | bundle key | meta record (expiry, size, metadata blob; see `record`) |
//! | `E` | expiry_ms (BE) ‖ bundle key | empty: the expiry index |
//! | `D` | bundle key | keep_until (BE): the delivered-id record |
//! | `d` | keep_until (BE) ‖ bundle key | empty: prune index of the delivered-id record |
//!
//! Sorted keys keep each key space contiguous on disk: a restart reads only the `M` pages,
//! never bundle bytes. Usage counters are rebuilt from `M` at open (exact by construction).
//! All writers hold one lock for the read-check-write of an insert and the usage counters.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sled::Batch;

use super::memory::not_found;
use super::record::{
    decode_meta, decode_u64, encode_meta, meta_expiry_size, split_time_key, time_key,
};
use super::{check_quota, BundleKey, MetaRecord, StoreError, Usage};
use crate::api::DtnMillis;

const P_BUNDLE: u8 = b'B';
const P_META: u8 = b'M';
const P_EXPIRY: u8 = b'E';
const P_DELIVERED: u8 = b'D';
const P_DELIVERED_IDX: u8 = b'd';
/// Delivered records pruned per batch.
const PRUNE_CHUNK: usize = 1024;

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

fn pk(prefix: u8, key: &BundleKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + key.0.len());
    v.push(prefix);
    v.extend_from_slice(&key.0);
    v
}

#[derive(Default)]
struct Counters {
    bundles: u64,
    bytes: u64,
}

/// The sled database and the writers' lock.
pub(super) struct DiskBackend {
    db: sled::Db,
    tree: sled::Tree,
    writer: Mutex<Counters>,
}

impl DiskBackend {
    /// Open (or create) the database at `path` and rebuild the usage counters.
    pub(super) fn open(path: &Path) -> Result<DiskBackend, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // Flushing is ours: per write (`Sync`) or by the group-commit thread.
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Db(format!("opening {}: {e}", path.display())))?;
        let tree = db.open_tree("store").map_err(db_err)?;
        let mut c = Counters::default();
        let mut corrupt = 0u64;
        for r in tree.scan_prefix([P_META]) {
            let (k, v) = r.map_err(db_err)?;
            let key = BundleKey(k[1..].into());
            c.bundles += 1;
            match meta_expiry_size(&key, &v) {
                Ok((_, size)) => c.bytes += size,
                Err(_) => {
                    // Count the bytes actually held so `remove` keeps the counters exact.
                    corrupt += 1;
                    if let Some(b) = tree.get(pk(P_BUNDLE, &key)).map_err(db_err)? {
                        c.bytes += b.len() as u64;
                    }
                }
            }
        }
        if corrupt > 0 {
            tracing::warn!(
                corrupt,
                "store: corrupt meta records (iter_meta reports them)"
            );
        }
        tracing::debug!(bundles = c.bundles, bytes = c.bytes, path = %path.display(), "store opened");
        Ok(DiskBackend {
            db,
            tree,
            writer: Mutex::new(c),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Size and expiry of a stored bundle; a corrupt meta record falls back to the bytes'
    /// length (expiry unknown: `None`).
    fn size_of(&self, key: &BundleKey) -> Result<Option<(Option<DtnMillis>, u64)>, StoreError> {
        let Some(m) = self.tree.get(pk(P_META, key)).map_err(db_err)? else {
            return Ok(None);
        };
        match meta_expiry_size(key, &m) {
            Ok((e, s)) => Ok(Some((Some(e), s))),
            Err(_) => {
                let len = self
                    .tree
                    .get(pk(P_BUNDLE, key))
                    .map_err(db_err)?
                    .map_or(0, |b| b.len() as u64);
                Ok(Some((None, len)))
            }
        }
    }

    pub(super) fn insert(
        &self,
        key: &BundleKey,
        expiry_ms: DtnMillis,
        meta: &[u8],
        bundle: &[u8],
        usage: &Usage,
    ) -> Result<bool, StoreError> {
        let meta_v = encode_meta(expiry_ms, bundle.len() as u64, meta)?;
        let mut c = self.lock();
        let mk = pk(P_META, key);
        if self.tree.contains_key(&mk).map_err(db_err)? {
            return Ok(false);
        }
        check_quota(c.bundles, c.bytes, 1, bundle.len() as u64, usage)?;
        let mut b = Batch::default();
        b.insert(pk(P_BUNDLE, key), bundle);
        b.insert(mk, meta_v);
        b.insert(time_key(&[P_EXPIRY], expiry_ms, &key.0), &[]);
        self.tree.apply_batch(b).map_err(db_err)?;
        c.bundles += 1;
        c.bytes += bundle.len() as u64;
        Ok(true)
    }

    pub(super) fn update_meta(&self, key: &BundleKey, meta: &[u8]) -> Result<(), StoreError> {
        let _c = self.lock();
        let mk = pk(P_META, key);
        let old = self
            .tree
            .get(&mk)
            .map_err(db_err)?
            .ok_or_else(|| not_found(key))?;
        let (expiry, size) = meta_expiry_size(key, &old)?;
        self.tree
            .insert(mk, encode_meta(expiry, size, meta)?)
            .map_err(db_err)?;
        Ok(())
    }

    pub(super) fn replace_bundle(
        &self,
        key: &BundleKey,
        bundle: &[u8],
        usage: &Usage,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let mk = pk(P_META, key);
        let old = self
            .tree
            .get(&mk)
            .map_err(db_err)?
            .ok_or_else(|| not_found(key))?;
        let rec = decode_meta(key, &old)?;
        let new = bundle.len() as u64;
        if new > rec.size {
            check_quota(c.bundles, c.bytes, 0, new - rec.size, usage)?;
        }
        let mut b = Batch::default();
        b.insert(pk(P_BUNDLE, key), bundle);
        b.insert(mk, encode_meta(rec.expiry_ms, new, &rec.meta)?);
        self.tree.apply_batch(b).map_err(db_err)?;
        c.bytes = c.bytes - rec.size + new;
        Ok(())
    }

    pub(super) fn remove(&self, key: &BundleKey) -> Result<bool, StoreError> {
        let mut c = self.lock();
        let Some((expiry, size)) = self.size_of(key)? else {
            return Ok(false);
        };
        let mut b = Batch::default();
        b.remove(pk(P_BUNDLE, key));
        b.remove(pk(P_META, key));
        if let Some(e) = expiry {
            b.remove(time_key(&[P_EXPIRY], e, &key.0));
        }
        self.tree.apply_batch(b).map_err(db_err)?;
        c.bundles = c.bundles.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub(size);
        Ok(true)
    }

    pub(super) fn get(&self, key: &BundleKey) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .tree
            .get(pk(P_BUNDLE, key))
            .map_err(db_err)?
            .map(Bytes::from_owner))
    }

    pub(super) fn get_meta(&self, key: &BundleKey) -> Result<Option<MetaRecord>, StoreError> {
        match self.tree.get(pk(P_META, key)).map_err(db_err)? {
            Some(v) => decode_meta(key, &v).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn contains(&self, key: &BundleKey) -> Result<bool, StoreError> {
        self.tree.contains_key(pk(P_META, key)).map_err(db_err)
    }

    /// RFC 9171 §4.2.2: bundles whose lifetime has passed, by a range scan of the index.
    pub(super) fn expired(
        &self,
        now: DtnMillis,
        limit: usize,
    ) -> Result<Vec<BundleKey>, StoreError> {
        let start = vec![P_EXPIRY];
        let range = match now.checked_add(1) {
            Some(end) => self.tree.range(start..time_key(&[P_EXPIRY], end, &[])),
            None => self.tree.range(start..vec![P_EXPIRY + 1]),
        };
        let mut out = Vec::new();
        for r in range.take(limit) {
            let (k, _) = r.map_err(db_err)?;
            out.push(split_time_key(&k[1..])?.1);
        }
        Ok(out)
    }

    pub(super) fn next_expiry(&self) -> Result<Option<DtnMillis>, StoreError> {
        match self.tree.scan_prefix([P_EXPIRY]).next() {
            Some(r) => {
                let (k, _) = r.map_err(db_err)?;
                Ok(Some(split_time_key(&k[1..])?.0))
            }
            None => Ok(None),
        }
    }

    pub(super) fn iter_meta(&self) -> impl Iterator<Item = Result<MetaRecord, StoreError>> + '_ {
        self.tree.scan_prefix([P_META]).map(|r| {
            let (k, v) = r.map_err(db_err)?;
            decode_meta(&BundleKey(k[1..].into()), &v)
        })
    }

    pub(super) fn record_delivered(
        &self,
        key: &BundleKey,
        keep_until: DtnMillis,
    ) -> Result<(), StoreError> {
        let _c = self.lock();
        let dk = pk(P_DELIVERED, key);
        let mut b = Batch::default();
        if let Some(old) = self.tree.get(&dk).map_err(db_err)? {
            if let Ok(old) = decode_u64("delivered record", &old) {
                b.remove(time_key(&[P_DELIVERED_IDX], old, &key.0));
            }
        }
        b.insert(dk, &keep_until.to_be_bytes());
        b.insert(time_key(&[P_DELIVERED_IDX], keep_until, &key.0), &[]);
        self.tree.apply_batch(b).map_err(db_err)
    }

    pub(super) fn was_delivered(&self, key: &BundleKey) -> Result<bool, StoreError> {
        self.tree.contains_key(pk(P_DELIVERED, key)).map_err(db_err)
    }

    pub(super) fn prune_delivered(&self, now: DtnMillis) -> Result<usize, StoreError> {
        let _c = self.lock();
        let end = time_key(&[P_DELIVERED_IDX], now, &[]);
        let mut total = 0;
        loop {
            let mut b = Batch::default();
            let mut n = 0;
            for r in self
                .tree
                .range(vec![P_DELIVERED_IDX]..end.clone())
                .take(PRUNE_CHUNK)
            {
                let (k, _) = r.map_err(db_err)?;
                let (_, key) = split_time_key(&k[1..])?;
                b.remove(k);
                b.remove(pk(P_DELIVERED, &key));
                n += 1;
            }
            if n == 0 {
                return Ok(total);
            }
            self.tree.apply_batch(b).map_err(db_err)?;
            total += n;
            if n < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        let c = self.lock();
        (c.bundles, c.bytes)
    }

    /// Flush everything written so far to disk (fsync).
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(db_err)
    }

    /// The database handle (for the group-commit thread).
    pub(super) fn db(&self) -> sled::Db {
        self.db.clone()
    }
}
