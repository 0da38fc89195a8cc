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
//!
//! **Write-back buffer (group commit).** In `GroupCommit` mode writes go to an in-memory
//! overlay (`mem`) that the commit thread applies to sled as ONE batch per flush, then fsyncs.
//! A bundle inserted and removed within one commit window (a relay forwarding at once) never
//! touches sled. Reads look at `mem`, then the batch being applied, then sled. The overlay is
//! bounded ([`MAX_PENDING_OPS`], [`MAX_PENDING_BYTES`]); a writer that finds it full applies it
//! itself (back-pressure). In `Sync` mode writes go straight to sled.
//!
//! **Held inserts.** A held insert (see `commit`) is kept apart from the buffer, as one entry
//! of a hash map by bundle key (its bytes, encoded meta record, expiry and [`HoldCell`]), in a
//! queue ordered by the end of its hold: inserting and removing a bundle in transit costs one
//! map entry, not three buffered sled entries. Reads and scans see it like a buffered write. A
//! flush takes the held inserts whose hold has ended (or all of them when asked to: shutdown,
//! [`super::Store::flush`]) into its batch as the three entries, and covers their cells with
//! its sequence number; removing the bundle before that drops the entry and releases the
//! cell. A writer relieving a full buffer never takes held inserts (it publishes no sequence
//! number to cover them with); they leave by their hold's end, which bounds them to
//! `max_delay` of arrivals. Any other write to a held bundle ends its hold at once: its
//! entries move into the buffer, and the next flush covers its cell.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use sled::Batch;

use super::commit::HoldCell;
use super::memory::not_found;
use super::record::{
    decode_meta, decode_u64, encode_meta, meta_expiry_size, split_time_key, time_key,
};
use super::{check_quota, BundleKey, MetaRecord, StoreCounters, StoreError, Usage};
use crate::api::DtnMillis;

const P_BUNDLE: u8 = b'B';
const P_META: u8 = b'M';
const P_EXPIRY: u8 = b'E';
const P_DELIVERED: u8 = b'D';
const P_DELIVERED_IDX: u8 = b'd';
/// Delivered records pruned per batch.
const PRUNE_CHUNK: usize = 1024;
/// Most buffered operations before a writer applies the buffer itself.
pub const MAX_PENDING_OPS: usize = 256 * 1024;
/// Most buffered value bytes before a writer applies the buffer itself.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// How long [`open_sled`] waits for the database's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Open sled at `path`, waiting up to [`LOCK_WAIT`] for its file lock.
///
/// sled releases the lock on its data file only when the last of its background I/O tasks
/// lets go of the file, which can be a moment after the `Db` itself is dropped; a store
/// closed and reopened at once (a daemon restarted by its supervisor, a test) would otherwise
/// fail. A lock still held after the wait means another process has the store open, and the
/// error says so.
pub(super) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        // Flushing is ours: per write (`Sync`) or by the group-commit thread.
        .flush_every_ms(None);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) if is_lock_error(&e) => {
                return Err(StoreError::Db(format!(
                    "opening {}: {e} (is another dtnd using this store?)",
                    path.display()
                )))
            }
            Err(e) => return Err(StoreError::Db(format!("opening {}: {e}", path.display()))),
        }
    }
}

/// sled reports a held file lock only in its message (an `Io` error of kind `Other`).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

fn pk(prefix: u8, key: &BundleKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + key.0.len());
    v.push(prefix);
    v.extend_from_slice(&key.0);
    v
}

/// A buffered write.
#[derive(Clone, Debug)]
struct Pending {
    /// `Some` = put, `None` = delete.
    value: Option<Bytes>,
    /// The key is absent below this layer: deleting it drops the entry.
    fresh: bool,
}

/// A held insert, kept out of the buffer until its hold ends (see the module docs).
struct HeldBundle {
    bundle: Bytes,
    /// The encoded meta record (the `M` value).
    meta: Bytes,
    expiry_ms: DtnMillis,
    cell: Arc<HoldCell>,
}

impl HeldBundle {
    /// Its three sled entries (bytes, meta record, expiry index entry) for bundle key `key`.
    fn entries(&self, key: &[u8]) -> [(Vec<u8>, Bytes); 3] {
        let mut b = Vec::with_capacity(1 + key.len());
        b.push(P_BUNDLE);
        b.extend_from_slice(key);
        let mut m = b.clone();
        m[0] = P_META;
        [
            (b, self.bundle.clone()),
            (m, self.meta.clone()),
            (time_key(&[P_EXPIRY], self.expiry_ms, key), Bytes::new()),
        ]
    }
}

/// Which held entries a batch takes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Holds {
    /// None (a writer relieving a full buffer).
    Skip,
    /// Those whose hold has ended by then.
    Due(Instant),
    /// All of them (shutdown, an explicit flush).
    All,
}

impl Holds {
    fn takes(self, cell: &HoldCell) -> bool {
        match self {
            Holds::Skip => false,
            Holds::Due(now) => cell.until().is_none_or(|u| u <= now),
            Holds::All => true,
        }
    }
}

/// What [`DiskBackend::remove`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Removal {
    /// The key was not stored.
    Absent,
    /// Removed: a write to make durable.
    Written,
    /// A held insert dropped from the buffer before it was flushed: nothing to write.
    Cancelled,
}

type Overlay = BTreeMap<Vec<u8>, Pending>;

#[derive(Default)]
struct State {
    bundles: u64,
    bytes: u64,
    /// Buffered writes (GroupCommit only).
    mem: Overlay,
    mem_bytes: usize,
    /// The batch being applied to sled (still visible to reads until applied).
    applying: Arc<Overlay>,
    /// A batch failed to apply: the overlay is no longer trustworthy; writes are refused.
    broken: bool,
    /// Held inserts by bundle key (above `mem`: a key held is not buffered).
    held: HashMap<Box<[u8]>, HeldBundle>,
    /// Held inserts in the order their holds end, with their keys (the front may have been
    /// settled, or moved into `mem`, since).
    holds: VecDeque<(Arc<HoldCell>, Box<[u8]>)>,
    /// Cells of held inserts moved into `mem` by another write: the next flush covers them.
    uncovered: Vec<Arc<HoldCell>>,
}

impl State {
    /// The buffered state of `k`: `Some(Some(v))` put, `Some(None)` deleted, `None` not
    /// buffered (look in sled).
    fn overlay_get(&self, k: &[u8]) -> Option<Option<Bytes>> {
        if let (Some(&p @ (P_BUNDLE | P_META)), false) = (k.first(), self.held.is_empty()) {
            if let Some(h) = self.held.get(&k[1..]) {
                return Some(Some(if p == P_BUNDLE {
                    h.bundle.clone()
                } else {
                    h.meta.clone()
                }));
            }
        }
        self.mem
            .get(k)
            .or_else(|| self.applying.get(k))
            .map(|p| p.value.clone())
    }
}

/// One write operation's changes, applied atomically.
#[derive(Default)]
struct Changes(Vec<(Vec<u8>, Option<Bytes>, bool)>);

impl Changes {
    fn put(&mut self, k: Vec<u8>, v: impl Into<Bytes>, fresh: bool) {
        self.0.push((k, Some(v.into()), fresh));
    }
    fn del(&mut self, k: Vec<u8>) {
        self.0.push((k, None, false));
    }
}

/// The sled database, the write-back buffer and the writers' lock.
pub(super) struct DiskBackend {
    db: sled::Db,
    tree: sled::Tree,
    buffered: bool,
    state: Mutex<State>,
    /// Serializes batch application (commit thread, `flush`, writers under back-pressure).
    apply: Mutex<()>,
    /// sled's data file, for a real `fdatasync` after sled's flush (see [`DiskBackend::flush`]).
    data_file: Option<std::fs::File>,
    /// Buffer bounds ([`MAX_PENDING_OPS`], [`MAX_PENDING_BYTES`]; lowered in tests).
    max_pending: (usize, usize),
    /// A batch was applied to sled since the last sync began (else a flush has nothing to
    /// sync).
    dirty: AtomicBool,
    /// Serializes syncs: a flush that finds nothing dirty has waited for the sync that took it.
    sync: Mutex<()>,
    /// Syncs (sled flush + fdatasync) done.
    syncs: AtomicU64,
    /// Entries (puts and deletes) applied to sled.
    entries_written: AtomicU64,
    /// Held inserts removed before they were flushed.
    held_released: AtomicU64,
    /// Held inserts taken into a flush.
    held_flushed: AtomicU64,
}

impl DiskBackend {
    /// Open (or create) the database at `path` and rebuild the usage counters; `buffered`
    /// selects the write-back buffer (group commit).
    pub(super) fn open(path: &Path, buffered: bool) -> Result<DiskBackend, StoreError> {
        let db = open_sled(path)?;
        let tree = db.open_tree("store").map_err(db_err)?;
        let mut st = State::default();
        let mut corrupt = 0u64;
        for r in tree.scan_prefix([P_META]) {
            let (k, v) = r.map_err(db_err)?;
            let key = BundleKey(k[1..].into());
            st.bundles += 1;
            match meta_expiry_size(&key, &v) {
                Ok((_, size)) => st.bytes += size,
                Err(_) => {
                    // Count the bytes actually held so `remove` keeps the counters exact.
                    corrupt += 1;
                    if let Some(b) = tree.get(pk(P_BUNDLE, &key)).map_err(db_err)? {
                        st.bytes += b.len() as u64;
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
        tracing::debug!(bundles = st.bundles, bytes = st.bytes, path = %path.display(), "store opened");
        let data_file = match std::fs::File::open(path.join("db")) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "store: sled data file not found; flushes rely on sled's sync_file_range only");
                None
            }
        };
        Ok(DiskBackend {
            db,
            tree,
            buffered,
            state: Mutex::new(st),
            apply: Mutex::new(()),
            data_file,
            max_pending: (MAX_PENDING_OPS, MAX_PENDING_BYTES),
            dirty: AtomicBool::new(false),
            sync: Mutex::new(()),
            syncs: AtomicU64::new(0),
            entries_written: AtomicU64::new(0),
            held_released: AtomicU64::new(0),
            held_flushed: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value of `k` (buffer, then sled), with the state lock held.
    fn lookup(&self, st: &State, k: &[u8]) -> Result<Option<Bytes>, StoreError> {
        match st.overlay_get(k) {
            Some(v) => Ok(v),
            None => Ok(self.tree.get(k).map_err(db_err)?.map(Bytes::from_owner)),
        }
    }

    /// The current value of `k` for a reader (the lock is not held while sled is read: a
    /// key not in the buffer at that moment has its newest state in sled).
    fn read(&self, k: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(v) = self.lock().overlay_get(k) {
            return Ok(v);
        }
        Ok(self.tree.get(k).map_err(db_err)?.map(Bytes::from_owner))
    }

    /// Apply one operation's changes atomically: into the buffer, or as one sled batch.
    /// Returns whether the buffer is over its bounds (the caller then applies it).
    fn commit(&self, st: &mut State, ch: Changes) -> Result<bool, StoreError> {
        if st.broken {
            return Err(StoreError::Db(
                "an earlier write to disk failed; the store refuses writes".into(),
            ));
        }
        if !self.buffered {
            let mut b = Batch::default();
            let n = ch.0.len() as u64;
            for (k, v, _) in ch.0 {
                match v {
                    Some(v) => b.insert(k, v.as_ref()),
                    None => b.remove(k),
                }
            }
            self.tree.apply_batch(b).map_err(db_err)?;
            self.dirty.store(true, Ordering::SeqCst);
            self.entries_written.fetch_add(n, Ordering::Relaxed);
            return Ok(false);
        }
        for (k, value, fresh) in ch.0 {
            let size = value.as_ref().map_or(0, |v| v.len()) + k.len();
            match st.mem.get_mut(&k) {
                Some(p) if value.is_none() && p.fresh => {
                    // Created in this window and deleted again: nothing reaches sled.
                    let old = p.value.as_ref().map_or(0, |v| v.len()) + k.len();
                    st.mem_bytes = st.mem_bytes.saturating_sub(old);
                    st.mem.remove(&k);
                }
                Some(p) => {
                    let old = p.value.as_ref().map_or(0, |v| v.len());
                    p.value = value;
                    st.mem_bytes = st.mem_bytes.saturating_sub(old) + size - k.len();
                }
                None => {
                    st.mem_bytes += size;
                    st.mem.insert(k, Pending { value, fresh });
                }
            }
        }
        Ok(st.mem.len() > self.max_pending.0 || st.mem_bytes > self.max_pending.1)
    }

    /// Apply the write-back buffer to sled as one atomic batch, with the held entries that
    /// `holds` takes (their cells are covered with the returned value). `seq` is called with
    /// the state lock held at the moment the buffer is taken; its value is returned. Its
    /// argument says whether held entries were taken: then it must return a sequence number
    /// not published yet (a held insert has no ticket of its own, and an old number may
    /// already be durable while this batch is not).
    pub(super) fn apply_pending(
        &self,
        seq: impl FnOnce(bool) -> u64,
        holds: Holds,
    ) -> Result<u64, StoreError> {
        let _a = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let (batch, s) = {
            let mut st = self.lock();
            if st.broken {
                return Err(StoreError::Db("an earlier write to disk failed".into()));
            }
            st.mem_bytes = 0;
            let mut take = std::mem::take(&mut st.mem);
            let mut cells = Vec::new();
            if !matches!(holds, Holds::Skip) {
                cells = std::mem::take(&mut st.uncovered);
                while let Some((cell, _)) = st.holds.front() {
                    if cell.is_held() && !holds.takes(cell) {
                        break;
                    }
                    let Some((cell, key)) = st.holds.pop_front() else {
                        break;
                    };
                    if !cell.is_held() {
                        continue;
                    }
                    match st.held.remove(&key) {
                        Some(h) if Arc::ptr_eq(&h.cell, &cell) => {
                            for (k, v) in h.entries(&key) {
                                // Deletions buffered before the insert are overwritten.
                                take.insert(
                                    k,
                                    Pending {
                                        value: Some(v),
                                        fresh: false,
                                    },
                                );
                            }
                            cells.push(cell);
                        }
                        // Moved into the buffer by another write: in `uncovered`.
                        Some(other) => {
                            st.held.insert(key, other);
                        }
                        None => {}
                    }
                }
            }
            let s = seq(!cells.is_empty());
            let mut covered = 0;
            for h in cells {
                if h.is_held() {
                    covered += 1;
                }
                h.cover(s);
            }
            self.held_flushed.fetch_add(covered, Ordering::Relaxed);
            if take.is_empty() {
                return Ok(s);
            }
            st.applying = Arc::new(take);
            (st.applying.clone(), s)
        };
        let mut b = Batch::default();
        for (k, p) in batch.iter() {
            match &p.value {
                Some(v) => b.insert(k.as_slice(), v.as_ref()),
                None => b.remove(k.as_slice()),
            }
        }
        match self.tree.apply_batch(b) {
            Ok(()) => {
                self.dirty.store(true, Ordering::SeqCst);
                self.entries_written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.lock().applying = Arc::new(Overlay::new());
                Ok(s)
            }
            Err(e) => {
                // The batch stays visible to reads; nothing more is accepted.
                self.lock().broken = true;
                Err(db_err(e))
            }
        }
    }

    /// After a write: apply the buffer if it is over its bounds.
    fn relieve(&self, over: bool) -> Result<(), StoreError> {
        if over {
            tracing::debug!("store: write-back buffer full, applying it inline");
            self.apply_pending(|_| 0, Holds::Skip)?;
        }
        Ok(())
    }

    /// Size and expiry of a stored bundle; a corrupt meta record falls back to the bytes'
    /// length (expiry unknown: `None`).
    fn size_of(
        &self,
        st: &State,
        key: &BundleKey,
    ) -> Result<Option<(Option<DtnMillis>, u64)>, StoreError> {
        let Some(m) = self.lookup(st, &pk(P_META, key))? else {
            return Ok(None);
        };
        match meta_expiry_size(key, &m) {
            Ok((e, s)) => Ok(Some((Some(e), s))),
            Err(_) => {
                let len = self
                    .lookup(st, &pk(P_BUNDLE, key))?
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
        let bundle = Bytes::copy_from_slice(bundle);
        self.insert_new(key, expiry_ms, meta, bundle, usage, None)
    }

    /// [`Self::insert`] as a held insert whose hold ends at `until` (buffered mode only); its
    /// cell, or `None` if the key is already stored.
    pub(super) fn insert_held(
        &self,
        key: &BundleKey,
        expiry_ms: DtnMillis,
        meta: &[u8],
        bundle: &Bytes,
        usage: &Usage,
        until: Instant,
    ) -> Result<Option<Arc<HoldCell>>, StoreError> {
        debug_assert!(self.buffered, "held inserts need the write-back buffer");
        let cell = HoldCell::new(until);
        let stored = self.insert_new(key, expiry_ms, meta, bundle.clone(), usage, Some(&cell))?;
        Ok(stored.then_some(cell))
    }

    /// Stores a bundle under `key` unless it is already stored (false); `hold`: as a held
    /// insert with this cell.
    fn insert_new(
        &self,
        key: &BundleKey,
        expiry_ms: DtnMillis,
        meta: &[u8],
        bundle: Bytes,
        usage: &Usage,
        hold: Option<&Arc<HoldCell>>,
    ) -> Result<bool, StoreError> {
        let size = bundle.len() as u64;
        let meta_v = encode_meta(expiry_ms, size, meta)?;
        let mk = pk(P_META, key);
        let over = {
            let mut st = self.lock();
            if self.lookup(&st, &mk)?.is_some() {
                return Ok(false);
            }
            check_quota(st.bundles, st.bytes, 1, size, usage)?;
            let over = match hold {
                Some(cell) => {
                    if st.broken {
                        return Err(StoreError::Db(
                            "an earlier write to disk failed; the store refuses writes".into(),
                        ));
                    }
                    st.holds.push_back((cell.clone(), key.0.clone()));
                    let h = HeldBundle {
                        bundle,
                        meta: meta_v.into(),
                        expiry_ms,
                        cell: cell.clone(),
                    };
                    st.held.insert(key.0.clone(), h);
                    false
                }
                None => {
                    // The meta record is absent, so (batches being atomic) are the bytes and
                    // the index entry: all three are fresh.
                    let mut ch = Changes::default();
                    ch.put(pk(P_BUNDLE, key), bundle, true);
                    ch.put(mk, meta_v, true);
                    ch.put(time_key(&[P_EXPIRY], expiry_ms, &key.0), Bytes::new(), true);
                    self.commit(&mut st, ch)?
                }
            };
            st.bundles += 1;
            st.bytes += size;
            over
        };
        self.relieve(over)?;
        Ok(true)
    }

    /// When the earliest hold still in the buffer ends.
    pub(super) fn next_hold(&self) -> Option<Instant> {
        let mut st = self.lock();
        while let Some((h, _)) = st.holds.front() {
            match h.until() {
                Some(t) => return Some(t),
                None => {
                    st.holds.pop_front();
                }
            }
        }
        None
    }

    /// Another write to `key` ends its hold, if it is held: its entries move into the buffer
    /// (the next flush takes them and covers its cell). Returns whether the buffer is over
    /// its bounds.
    fn unhold(&self, st: &mut State, key: &BundleKey) -> Result<bool, StoreError> {
        let Some(h) = st.held.remove(&key.0) else {
            return Ok(false);
        };
        let mut ch = Changes::default();
        for (k, v) in h.entries(&key.0) {
            ch.put(k, v, true);
        }
        st.uncovered.push(h.cell);
        self.commit(st, ch)
    }

    /// Ends the hold of `key` if it is held: its entries go to the next flush, which covers
    /// its cell (see [`super::Store::persist`]).
    pub(super) fn persist(&self, key: &BundleKey) -> Result<(), StoreError> {
        let over = {
            let mut st = self.lock();
            self.unhold(&mut st, key)?
        };
        self.relieve(over)
    }

    pub(super) fn update_meta(&self, key: &BundleKey, meta: &[u8]) -> Result<(), StoreError> {
        let over = {
            let mut st = self.lock();
            let over = self.unhold(&mut st, key)?;
            let mk = pk(P_META, key);
            let old = self.lookup(&st, &mk)?.ok_or_else(|| not_found(key))?;
            let (expiry, size) = meta_expiry_size(key, &old)?;
            let mut ch = Changes::default();
            ch.put(mk, encode_meta(expiry, size, meta)?, false);
            self.commit(&mut st, ch)? || over
        };
        self.relieve(over)
    }

    pub(super) fn replace_bundle(
        &self,
        key: &BundleKey,
        bundle: &[u8],
        usage: &Usage,
    ) -> Result<(), StoreError> {
        let over = {
            let mut st = self.lock();
            let unheld = self.unhold(&mut st, key)?;
            let mk = pk(P_META, key);
            let old = self.lookup(&st, &mk)?.ok_or_else(|| not_found(key))?;
            let rec = decode_meta(key, &old)?;
            let new = bundle.len() as u64;
            if new > rec.size {
                check_quota(st.bundles, st.bytes, 0, new - rec.size, usage)?;
            }
            let mut ch = Changes::default();
            ch.put(pk(P_BUNDLE, key), Bytes::copy_from_slice(bundle), false);
            ch.put(mk, encode_meta(rec.expiry_ms, new, &rec.meta)?, false);
            let over = self.commit(&mut st, ch)?;
            st.bytes = st.bytes - rec.size + new;
            over || unheld
        };
        self.relieve(over)
    }

    pub(super) fn remove(&self, key: &BundleKey) -> Result<Removal, StoreError> {
        let over = {
            let mut st = self.lock();
            if let Some(h) = st.held.remove(&key.0) {
                // Never written: nothing to delete. Settled outside the lock (the cell may
                // run a callback).
                st.bundles = st.bundles.saturating_sub(1);
                st.bytes = st.bytes.saturating_sub(h.bundle.len() as u64);
                drop(st);
                h.cell.release();
                self.held_released.fetch_add(1, Ordering::Relaxed);
                return Ok(Removal::Cancelled);
            }
            let Some((expiry, size)) = self.size_of(&st, key)? else {
                return Ok(Removal::Absent);
            };
            let mut ch = Changes::default();
            ch.del(pk(P_BUNDLE, key));
            ch.del(pk(P_META, key));
            if let Some(e) = expiry {
                ch.del(time_key(&[P_EXPIRY], e, &key.0));
            }
            let over = self.commit(&mut st, ch)?;
            st.bundles = st.bundles.saturating_sub(1);
            st.bytes = st.bytes.saturating_sub(size);
            over
        };
        self.relieve(over)?;
        Ok(Removal::Written)
    }

    pub(super) fn get(&self, key: &BundleKey) -> Result<Option<Bytes>, StoreError> {
        self.read(&pk(P_BUNDLE, key))
    }

    pub(super) fn get_meta(&self, key: &BundleKey) -> Result<Option<MetaRecord>, StoreError> {
        match self.read(&pk(P_META, key))? {
            Some(v) => decode_meta(key, &v).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn contains(&self, key: &BundleKey) -> Result<bool, StoreError> {
        Ok(self.read(&pk(P_META, key))?.is_some())
    }

    /// Entries with keys in `[lo, hi)`: sled merged with the write-back buffer.
    fn range(&self, lo: Vec<u8>, hi: Vec<u8>) -> MergeIter {
        let over: BTreeMap<Vec<u8>, Option<Bytes>> = {
            let st = self.lock();
            let bounds = (Bound::Included(lo.clone()), Bound::Excluded(hi.clone()));
            let mut o: BTreeMap<Vec<u8>, Option<Bytes>> = st
                .applying
                .range::<Vec<u8>, _>(bounds.clone())
                .map(|(k, p)| (k.clone(), p.value.clone()))
                .collect();
            o.extend(
                st.mem
                    .range::<Vec<u8>, _>(bounds)
                    .map(|(k, p)| (k.clone(), p.value.clone())),
            );
            for (key, h) in &st.held {
                for (k, v) in h.entries(key) {
                    if lo <= k && k < hi {
                        o.insert(k, Some(v));
                    }
                }
            }
            o
        };
        MergeIter {
            sled: self.tree.range(lo..hi).peekable(),
            over: over.into_iter().peekable(),
        }
    }

    /// RFC 9171 §4.2.2: bundles whose lifetime has passed, by a range scan of the index.
    pub(super) fn expired(
        &self,
        now: DtnMillis,
        limit: usize,
    ) -> Result<Vec<BundleKey>, StoreError> {
        let hi = match now.checked_add(1) {
            Some(end) => time_key(&[P_EXPIRY], end, &[]),
            None => vec![P_EXPIRY + 1],
        };
        let mut out = Vec::new();
        for r in self.range(vec![P_EXPIRY], hi).take(limit) {
            let (k, _) = r?;
            out.push(split_time_key(&k[1..])?.1);
        }
        Ok(out)
    }

    pub(super) fn next_expiry(&self) -> Result<Option<DtnMillis>, StoreError> {
        match self.range(vec![P_EXPIRY], vec![P_EXPIRY + 1]).next() {
            Some(r) => {
                let (k, _) = r?;
                Ok(Some(split_time_key(&k[1..])?.0))
            }
            None => Ok(None),
        }
    }

    pub(super) fn iter_meta(&self) -> impl Iterator<Item = Result<MetaRecord, StoreError>> + '_ {
        self.range(vec![P_META], vec![P_META + 1]).map(|r| {
            let (k, v) = r?;
            decode_meta(&BundleKey(k[1..].into()), &v)
        })
    }

    pub(super) fn record_delivered(
        &self,
        key: &BundleKey,
        keep_until: DtnMillis,
    ) -> Result<(), StoreError> {
        let over = {
            let mut st = self.lock();
            let dk = pk(P_DELIVERED, key);
            let mut ch = Changes::default();
            if let Some(old) = self.lookup(&st, &dk)? {
                if let Ok(old) = decode_u64("delivered record", &old) {
                    ch.del(time_key(&[P_DELIVERED_IDX], old, &key.0));
                }
            }
            ch.put(dk, keep_until.to_be_bytes().to_vec(), false);
            ch.put(
                time_key(&[P_DELIVERED_IDX], keep_until, &key.0),
                Bytes::new(),
                false,
            );
            self.commit(&mut st, ch)?
        };
        self.relieve(over)
    }

    pub(super) fn was_delivered(&self, key: &BundleKey) -> Result<bool, StoreError> {
        Ok(self.read(&pk(P_DELIVERED, key))?.is_some())
    }

    pub(super) fn prune_delivered(&self, now: DtnMillis) -> Result<usize, StoreError> {
        let hi = time_key(&[P_DELIVERED_IDX], now, &[]);
        let mut total = 0;
        loop {
            let mut ch = Changes::default();
            let mut n = 0;
            for r in self
                .range(vec![P_DELIVERED_IDX], hi.clone())
                .take(PRUNE_CHUNK)
            {
                let (k, _) = r?;
                let (_, key) = split_time_key(&k[1..])?;
                ch.del(k);
                ch.del(pk(P_DELIVERED, &key));
                n += 1;
            }
            if n == 0 {
                return Ok(total);
            }
            let over = {
                let mut st = self.lock();
                self.commit(&mut st, ch)?
            };
            self.relieve(over)?;
            total += n;
            if n < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Lower the buffer bounds (tests).
    #[cfg(test)]
    pub(super) fn set_max_pending(&mut self, ops: usize, bytes: usize) {
        self.max_pending = (ops, bytes);
    }

    /// Buffered operations (tests).
    #[cfg(test)]
    pub(super) fn pending_ops(&self) -> usize {
        let st = self.lock();
        st.mem.len() + 3 * st.held.len()
    }

    /// Entries in sled itself, bypassing the buffer (tests).
    #[cfg(test)]
    pub(super) fn sled_len(&self) -> usize {
        self.tree.len()
    }

    /// Write counters (metrics).
    pub(super) fn counters(&self) -> StoreCounters {
        StoreCounters {
            syncs: self.syncs.load(Ordering::Relaxed),
            entries_written: self.entries_written.load(Ordering::Relaxed),
            held_released: self.held_released.load(Ordering::Relaxed),
            held_flushed: self.held_flushed.load(Ordering::Relaxed),
        }
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.bundles, st.bytes)
    }

    /// Make everything written so far durable: apply the buffer, then sled's flush, then
    /// `fdatasync` of sled's data file: sled 0.34 ends its flush with `sync_file_range`, which
    /// neither flushes the device's write cache nor the file size, so alone it survives a
    /// process crash but not a power loss. `seq` is read when the buffer is taken; returns it.
    /// Held entries are taken as `holds` says. Nothing is synced when no batch was applied
    /// since the last flush began.
    pub(super) fn flush(
        &self,
        seq: impl FnOnce(bool) -> u64,
        holds: Holds,
    ) -> Result<u64, StoreError> {
        let s = self.apply_pending(seq, holds)?;
        let _sync = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if self.dirty.swap(false, Ordering::SeqCst) {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.db.flush().map_err(db_err)?;
            if let Some(f) = &self.data_file {
                f.sync_data()
                    .map_err(|e| StoreError::Db(format!("fdatasync: {e}")))?;
            }
        }
        Ok(s)
    }
}

/// Sled entries merged with a snapshot of the buffer (the buffer wins on equal keys;
/// buffered deletions hide sled entries).
struct MergeIter {
    sled: std::iter::Peekable<sled::Iter>,
    over: std::iter::Peekable<std::collections::btree_map::IntoIter<Vec<u8>, Option<Bytes>>>,
}

impl Iterator for MergeIter {
    type Item = Result<(Vec<u8>, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let sled_key = match self.sled.peek() {
                Some(Ok((k, _))) => Some(k.as_ref()),
                Some(Err(_)) => {
                    let e = self.sled.next()?.err()?;
                    return Some(Err(db_err(e)));
                }
                None => None,
            };
            let over_key = self.over.peek().map(|(k, _)| k.as_slice());
            let take_over = match (sled_key, over_key) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(o)) => {
                    if s == o {
                        // Shadowed by the buffer.
                        self.sled.next();
                        true
                    } else {
                        o < s
                    }
                }
            };
            if take_over {
                let (k, v) = self.over.next()?;
                match v {
                    Some(v) => return Some(Ok((k, v))),
                    None => continue,
                }
            }
            let (k, v) = self.sled.next()?.ok()?;
            return Some(Ok((k.to_vec(), Bytes::from_owner(v))));
        }
    }
}
