//! Durable bundle storage in sled (RFC 9171 §5: the node retains a bundle until it is
//! delivered, forwarded and confirmed, or deleted).
//!
//! API CONTRACT (fixed by the lead; the store helper implements it, the processing engine and
//! the daemon use it). Implementation: `disk` (sled), `memory`, `commit` (tickets and group
//! commit), `key` (the §5.1 identity encoding), `record` (on-disk layouts).
//!
//! - [`Store::open`] opens (or creates) the store; `Durability::Memory` keeps everything in
//!   memory (tests, benchmarks).
//! - Keys are [`BundleKey`]s: the RFC 9171 §5.1 bundle identity (source, creation timestamp,
//!   fragment offset and total ADU length), encoded so that equal identities give equal keys.
//! - Each bundle has its encoded bytes, its expiry time (DTN ms) in an expiry index, and an
//!   opaque metadata blob owned by the processing engine. Metadata lives apart from the bytes
//!   so a restart reads only metadata ([`Store::iter_meta`]).
//! - Writes return a [`Ticket`]; [`Store::persisted`] resolves when the write is on disk per the
//!   durability mode (`Sync`: already; `GroupCommit`: after the next group flush, which starts
//!   at once when the flusher is idle; `Memory`: at once). Acknowledgements wait on it.
//! - [`Store::insert_held`] stores a bundle in transit: with group commit its write is held
//!   back for up to `max_delay`, and its ticket resolves when the bundle is on disk or has left
//!   the store (forwarded and confirmed, delivered, deleted) before then; see `commit`.
//! - [`Store::on_persisted`] runs a callback when a ticket is durable (no future, no task:
//!   the daemon acknowledges custody this way, one callback per bundle).
//! - A quota (bundles and bytes) makes [`Store::insert`] fail with
//!   [`StoreError::QuotaExceeded`] instead of growing without bound.
//! - A delivered-id record ([`Store::record_delivered`], [`Store::was_delivered`]) remembers
//!   identities delivered to applications until a given time, so nothing is delivered twice
//!   after a restart.
//!
//! Crash consistency: every operation's changes (bytes, meta, expiry entry; or a delivered
//! record and its prune-index entry) are one atomic sled batch, so `kill -9` never leaves a
//! bundle without its meta or index entry (`node/tests/store_crash.rs`). A flush is sled's
//! flush followed by `fdatasync` of its data file. In `GroupCommit` mode writes are buffered
//! in memory and applied as one batch per flush (see `disk`); a bundle removed within the
//! commit window it was inserted in is never written.

mod commit;
mod disk;
mod key;
mod memory;
mod record;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::api::DtnMillis;
use commit::{Flusher, GroupCommit, HoldCell, Tickets};
use disk::{DiskBackend, Holds, Removal};
use memory::MemoryBackend;

pub use key::MAX_KEY_LEN;

/// How writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every write is flushed before it returns.
    Sync,
    /// Writes are flushed together (the default): a flush starts as soon as the last one
    /// ended, and takes every write made meanwhile.
    GroupCommit {
        /// Longest time a held insert ([`Store::insert_held`]) stays out of the flushes.
        max_delay: Duration,
    },
    /// Nothing touches the disk (tests, benchmarks).
    Memory,
}

/// Store configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory of the sled database (ignored for `Memory`).
    pub path: PathBuf,
    /// Durability mode.
    pub durability: Durability,
    /// Most bytes of bundles held (bundle bytes; metadata not counted).
    pub quota_bytes: u64,
    /// Most bundles held.
    pub quota_bundles: u64,
}

/// The RFC 9171 §5.1 identity of a stored bundle, as a byte key (encoding in `key.rs`;
/// [`BundleKey::from_id`], [`BundleKey::to_id`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleKey(pub Box<[u8]>);

/// A write whose durability can be awaited with [`Store::persisted`].
#[derive(Clone, Debug)]
pub struct Ticket(TicketInner);

#[derive(Clone, Debug)]
enum TicketInner {
    /// A write's sequence number: durable once a flush covered it.
    Seq(u64),
    /// A held insert: durable once flushed, or needing no flush once it left the store.
    Held(Arc<HoldCell>),
    /// Two tickets (see [`Ticket::and`]).
    Both(Box<(Ticket, Ticket)>),
}

impl Ticket {
    /// The ticket of no write (durable at once).
    pub const NONE: Ticket = Ticket(TicketInner::Seq(0));

    fn seq(n: u64) -> Ticket {
        Ticket(TicketInner::Seq(n))
    }

    /// A ticket that is durable when both are.
    pub fn and(self, other: Ticket) -> Ticket {
        match (self.0, other.0) {
            (TicketInner::Seq(a), TicketInner::Seq(b)) => Ticket::seq(a.max(b)),
            (TicketInner::Seq(0), b) => Ticket(b),
            (a, TicketInner::Seq(0)) => Ticket(a),
            (a, b) => Ticket(TicketInner::Both(Box::new((Ticket(a), Ticket(b))))),
        }
    }

    /// Whether it is the ticket of a held insert ([`Store::insert_held`]).
    pub fn is_held(&self) -> bool {
        matches!(self.0, TicketInner::Held(_))
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Ticket) -> bool {
        match (&self.0, &other.0) {
            (TicketInner::Seq(a), TicketInner::Seq(b)) => a == b,
            (TicketInner::Held(a), TicketInner::Held(b)) => Arc::ptr_eq(a, b),
            (TicketInner::Both(a), TicketInner::Both(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Ticket {}

/// Largest bundle [`Store::insert_held`] holds back (larger ones are written at once: the
/// buffer's byte bound is meant for many small bundles in transit).
pub const MAX_HELD_BUNDLE: usize = 256 * 1024;

/// Result of [`Store::insert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored; await the ticket before acknowledging.
    Stored(Ticket),
    /// A bundle with this key is already stored (nothing written).
    Duplicate,
}

/// A stored bundle's metadata (without its bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRecord {
    /// Its key.
    pub key: BundleKey,
    /// When it expires (DTN ms).
    pub expiry_ms: DtnMillis,
    /// Encoded size of the bundle in bytes.
    pub size: u64,
    /// The processing engine's metadata blob.
    pub meta: Bytes,
}

/// Current use of the store against its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bundles held.
    pub bundles: u64,
    /// Bytes of bundles held.
    pub bytes: u64,
    /// Bundle quota.
    pub quota_bundles: u64,
    /// Byte quota.
    pub quota_bytes: u64,
}

/// What the store wrote to disk (metrics; zero for `Memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Syncs to disk (sled flush and `fdatasync`).
    pub syncs: u64,
    /// Entries (puts and deletes; a bundle is three, see `disk`) applied to sled.
    pub entries_written: u64,
    /// Held inserts that left the store before a flush took them (never written).
    pub held_released: u64,
    /// Held inserts written by a flush (their hold ended first).
    pub held_flushed: u64,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storing this bundle would exceed the quota.
    #[error("store quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(String),
    /// A stored record does not decode (corruption).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// `update_meta` / `replace_bundle` of a key that is not stored.
    #[error("not found: {0}")]
    NotFound(String),
}

/// Refuse a write that would take the store over its quota (DESIGN "bounded resources": the
/// store refuses instead of growing; the caller turns this into back-pressure).
fn check_quota(
    bundles: u64,
    bytes: u64,
    add_bundles: u64,
    add_bytes: u64,
    quota: &Usage,
) -> Result<(), StoreError> {
    if bundles.saturating_add(add_bundles) > quota.quota_bundles {
        return Err(StoreError::QuotaExceeded(format!(
            "bundle count full: {bundles} of {} bundles held",
            quota.quota_bundles
        )));
    }
    if bytes.saturating_add(add_bytes) > quota.quota_bytes {
        return Err(StoreError::QuotaExceeded(format!(
            "byte quota full: {bytes} bytes held + {add_bytes} new > limit {} bytes",
            quota.quota_bytes
        )));
    }
    Ok(())
}

enum Backend {
    Memory(MemoryBackend),
    Disk(Arc<DiskBackend>),
}

struct Inner {
    /// Stopped (with a final flush) before the backend closes.
    group: Option<GroupCommit>,
    /// How long a held insert stays out of the flushes (group commit's `max_delay`).
    hold: Duration,
    backend: Backend,
    tickets: Arc<Tickets>,
    durability: Durability,
    quota: Usage,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stop the flusher (it flushes a last time), then flush whatever else is pending.
        drop(self.group.take());
        if let Backend::Disk(d) = &self.backend {
            let tickets = &self.tickets;
            match d.flush(|fresh| tickets.seq_for_flush(fresh), Holds::All) {
                Ok(s) => tickets.flushed(s, Ok(())),
                Err(e) => tracing::error!(error = %e, "store: flush at close failed"),
            }
        }
    }
}

/// The bundle store (cheap to clone; clones share the database).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durability", &self.inner.durability)
            .field("usage", &self.usage())
            .finish()
    }
}

/// The group-commit thread's view of the sled backend.
struct DiskFlusher {
    disk: Arc<DiskBackend>,
    tickets: Arc<Tickets>,
}

impl Flusher for DiskFlusher {
    fn flush(&self, now: Option<Instant>) -> Result<u64, StoreError> {
        let holds = now.map_or(Holds::All, Holds::Due);
        self.disk
            .flush(|fresh| self.tickets.seq_for_flush(fresh), holds)
    }

    fn next_hold(&self) -> Option<Instant> {
        self.disk.next_hold()
    }
}

impl Store {
    /// Open or create the store.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let tickets = Arc::new(Tickets::new());
        let quota = Usage {
            quota_bundles: config.quota_bundles,
            quota_bytes: config.quota_bytes,
            ..Usage::default()
        };
        let (backend, group) = match config.durability {
            Durability::Memory => (Backend::Memory(MemoryBackend::default()), None),
            Durability::Sync => (
                Backend::Disk(Arc::new(DiskBackend::open(&config.path, false)?)),
                None,
            ),
            Durability::GroupCommit { .. } => {
                let d = Arc::new(DiskBackend::open(&config.path, true)?);
                let flusher = DiskFlusher {
                    disk: d.clone(),
                    tickets: tickets.clone(),
                };
                let max_delay = match config.durability {
                    Durability::GroupCommit { max_delay } => max_delay,
                    _ => Duration::ZERO,
                };
                let g = GroupCommit::start(max_delay, tickets.clone(), flusher)?;
                (Backend::Disk(d), Some(g))
            }
        };
        let hold = match config.durability {
            Durability::GroupCommit { max_delay } => max_delay,
            _ => Duration::ZERO,
        };
        Ok(Store {
            inner: Arc::new(Inner {
                group,
                hold,
                backend,
                tickets,
                durability: config.durability,
                quota,
            }),
        })
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Take a ticket for an applied write and start making it durable (`lazy`: with group
    /// commit, within `max_delay`; see `commit`).
    fn wrote_as(&self, lazy: bool) -> Result<Ticket, StoreError> {
        let t = self.inner.tickets.wrote(lazy);
        match (&self.inner.backend, &self.inner.group) {
            (Backend::Disk(d), None) => {
                d.flush(|_| 0, Holds::All)?;
            }
            (_, Some(g)) if lazy => g.notify_by(Instant::now() + self.inner.hold),
            (_, Some(g)) => g.notify(),
            (Backend::Memory(_), None) => {}
        }
        Ok(t)
    }

    /// [`Self::wrote_as`] for a write that an acknowledgement waits for.
    fn wrote(&self) -> Result<Ticket, StoreError> {
        self.wrote_as(false)
    }

    /// Store a new bundle (bytes as received or built), unless its key is already present.
    pub fn insert(
        &self,
        key: &BundleKey,
        expiry_ms: DtnMillis,
        meta: &[u8],
        bundle: &[u8],
    ) -> Result<InsertOutcome, StoreError> {
        let q = &self.inner.quota;
        let stored = match &self.inner.backend {
            Backend::Memory(m) => m.insert(key, expiry_ms, meta, bundle, q)?,
            Backend::Disk(d) => d.insert(key, expiry_ms, meta, bundle, q)?,
        };
        if stored {
            Ok(InsertOutcome::Stored(self.wrote()?))
        } else {
            Ok(InsertOutcome::Duplicate)
        }
    }

    /// Store a bundle in transit like [`Store::insert`], holding its write back: with group
    /// commit (and a bundle of at most [`MAX_HELD_BUNDLE`] bytes) it stays out of the flushes
    /// for up to `max_delay`, and its ticket resolves when it is on disk, or at once when it
    /// leaves the store ([`Store::remove`]) before it was flushed: then nothing of it is ever
    /// written. Reads see it like any stored bundle. The buffer keeps `bundle` itself, not a
    /// copy (zero copy, DESIGN principle 3). Other durability modes: [`Store::insert`].
    pub fn insert_held(
        &self,
        key: &BundleKey,
        expiry_ms: DtnMillis,
        meta: &[u8],
        bundle: &Bytes,
    ) -> Result<InsertOutcome, StoreError> {
        match (&self.inner.backend, &self.inner.group) {
            (Backend::Disk(d), Some(g)) if bundle.len() <= MAX_HELD_BUNDLE => {
                let until = Instant::now() + self.inner.hold;
                let q = &self.inner.quota;
                match d.insert_held(key, expiry_ms, meta, bundle, q, until)? {
                    Some(cell) => {
                        g.notify_by(until);
                        Ok(InsertOutcome::Stored(Ticket(TicketInner::Held(cell))))
                    }
                    None => Ok(InsertOutcome::Duplicate),
                }
            }
            _ => self.insert(key, expiry_ms, meta, bundle),
        }
    }

    /// Make a stored bundle durable before it leaves the store unconfirmed (forwarded over a
    /// convergence layer that confirms nothing, such as UDP): a held insert's hold ends at
    /// once, and the returned ticket resolves when everything written so far, this bundle
    /// included, is on disk. Removing the bundle after that ticket resolved is a plain removal,
    /// so the acknowledgement its own ticket stands for (upstream custody, DESIGN principle 4)
    /// still means "on disk here"; removing it before would settle that ticket with the bundle
    /// durable nowhere.
    pub fn persist(&self, key: &BundleKey) -> Result<Ticket, StoreError> {
        match (&self.inner.backend, &self.inner.group) {
            (Backend::Disk(d), Some(_)) => {
                d.persist(key)?;
                self.wrote()
            }
            // `Sync`: every write was on disk before it returned; `Memory`: nothing ever is.
            _ => Ok(Ticket::NONE),
        }
    }

    /// Replace a stored bundle's metadata blob ([`StoreError::NotFound`] if not stored).
    pub fn update_meta(&self, key: &BundleKey, meta: &[u8]) -> Result<Ticket, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => m.update_meta(key, meta)?,
            Backend::Disk(d) => d.update_meta(key, meta)?,
        }
        self.wrote()
    }

    /// Replace a stored bundle's bytes (e.g. after proactive fragmentation), keeping its key;
    /// growth is checked against the byte quota ([`StoreError::NotFound`] if not stored).
    pub fn replace_bundle(&self, key: &BundleKey, bundle: &[u8]) -> Result<Ticket, StoreError> {
        let q = &self.inner.quota;
        match &self.inner.backend {
            Backend::Memory(m) => m.replace_bundle(key, bundle, q)?,
            Backend::Disk(d) => d.replace_bundle(key, bundle, q)?,
        }
        self.wrote()
    }

    /// Remove a bundle (bytes, metadata, expiry index entry); `false` if it was not there.
    /// Durable like any write (`Sync`: before it returns; `GroupCommit`: a lazy write, with the
    /// next flush and within `max_delay`); a held insert not flushed yet is dropped from the
    /// buffer (nothing to write) and its ticket resolves.
    pub fn remove(&self, key: &BundleKey) -> Result<bool, StoreError> {
        let removal = match &self.inner.backend {
            Backend::Memory(m) => match m.remove(key) {
                true => Removal::Written,
                false => Removal::Absent,
            },
            Backend::Disk(d) => d.remove(key)?,
        };
        if removal == Removal::Written {
            self.wrote_as(true)?;
        }
        Ok(removal != Removal::Absent)
    }

    /// A stored bundle's bytes.
    pub fn get(&self, key: &BundleKey) -> Result<Option<Bytes>, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Disk(d) => d.get(key),
        }
    }

    /// A stored bundle's metadata.
    pub fn get_meta(&self, key: &BundleKey) -> Result<Option<MetaRecord>, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.get_meta(key)),
            Backend::Disk(d) => d.get_meta(key),
        }
    }

    /// Whether a bundle with this key is stored.
    pub fn contains(&self, key: &BundleKey) -> Result<bool, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.contains(key)),
            Backend::Disk(d) => d.contains(key),
        }
    }

    /// Keys of up to `limit` bundles whose expiry is at or before `now`, from the expiry index
    /// (RFC 9171 §4.2.2 lifetime; a range scan, never a scan of all bundles).
    pub fn expired(&self, now: DtnMillis, limit: usize) -> Result<Vec<BundleKey>, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.expired(now, limit)),
            Backend::Disk(d) => d.expired(now, limit),
        }
    }

    /// The earliest expiry time in the store.
    pub fn next_expiry(&self) -> Result<Option<DtnMillis>, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.next_expiry()),
            Backend::Disk(d) => d.next_expiry(),
        }
    }

    /// Every stored bundle's metadata (restart recovery), without reading bundle bytes. A
    /// record that does not decode is an `Err(Corrupt)` item; iteration continues after it.
    pub fn iter_meta(&self) -> impl Iterator<Item = Result<MetaRecord, StoreError>> + '_ {
        let it: Box<dyn Iterator<Item = Result<MetaRecord, StoreError>> + '_> =
            match &self.inner.backend {
                Backend::Memory(m) => Box::new(m.all_meta().into_iter().map(Ok)),
                Backend::Disk(d) => Box::new(d.iter_meta()),
            };
        it
    }

    /// Remember that the bundle `key` was delivered to an application, until `keep_until`
    /// (RFC 9171 §5.1 identity; a later record for the same key replaces the earlier one).
    /// A lazy write with group commit (durable within `max_delay` unless its ticket is
    /// awaited).
    pub fn record_delivered(
        &self,
        key: &BundleKey,
        keep_until: DtnMillis,
    ) -> Result<Ticket, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => m.record_delivered(key, keep_until),
            Backend::Disk(d) => d.record_delivered(key, keep_until)?,
        }
        self.wrote_as(true)
    }

    /// Whether `key` was delivered (and the record has not been pruned).
    pub fn was_delivered(&self, key: &BundleKey) -> Result<bool, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.was_delivered(key)),
            Backend::Disk(d) => d.was_delivered(key),
        }
    }

    /// Drop delivered-id records kept until before `now`; returns how many.
    pub fn prune_delivered(&self, now: DtnMillis) -> Result<usize, StoreError> {
        let n = match &self.inner.backend {
            Backend::Memory(m) => m.prune_delivered(now),
            Backend::Disk(d) => d.prune_delivered(now)?,
        };
        if n > 0 {
            self.wrote_as(true)?;
        }
        Ok(n)
    }

    /// What the store wrote to disk so far.
    pub fn counters(&self) -> StoreCounters {
        match &self.inner.backend {
            Backend::Memory(_) => StoreCounters::default(),
            Backend::Disk(d) => d.counters(),
        }
    }

    /// Use against the quota.
    pub fn usage(&self) -> Usage {
        let (bundles, bytes) = match &self.inner.backend {
            Backend::Memory(m) => m.counts(),
            Backend::Disk(d) => d.counts(),
        };
        Usage {
            bundles,
            bytes,
            ..self.inner.quota
        }
    }

    /// Resolves when the write that returned `ticket` is durable (at once for `Memory` and
    /// `Sync`; after the next group flush for `GroupCommit`; a held insert also when it left
    /// the store unflushed). Needs no store clone alive.
    pub fn persisted(
        &self,
        ticket: Ticket,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        if let Some(g) = &self.inner.group {
            if self.inner.tickets.make_urgent(ticket.max_seq()) {
                g.notify();
            }
        }
        self.inner.tickets.wait(ticket, self.inner.group.is_some())
    }

    /// Runs `done` when the write that returned `ticket` is durable, like [`Store::persisted`]
    /// but without a future: at once if it is, else from the thread that settles it (the
    /// group-commit thread after its flush, or the caller of [`Store::remove`] that releases a
    /// held insert). `done` must be quick and must not call into the store. Dropped without
    /// being run only if the store closes before the write is flushed.
    pub fn on_persisted(
        &self,
        ticket: Ticket,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        if let Some(g) = &self.inner.group {
            if self.inner.tickets.make_urgent(ticket.max_seq()) {
                g.notify();
            }
        }
        let mut leaves = Vec::with_capacity(1);
        ticket.leaves(&mut leaves);
        self.inner
            .tickets
            .when_all(leaves, self.inner.group.is_some(), Box::new(done));
    }

    /// Tests: the group-commit thread stops flushing on its own (writes and holds stay in the
    /// buffer until [`Store::flush`]).
    #[cfg(test)]
    fn pause_group_commit(&self) {
        if let Some(g) = &self.inner.group {
            g.pause();
        }
    }

    /// Flush everything now, held inserts included (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Backend::Disk(d) = &self.inner.backend {
            let tickets = &self.inner.tickets;
            match d.flush(|fresh| tickets.seq_for_flush(fresh), Holds::All) {
                Ok(seq) => tickets.flushed(seq, Ok(())),
                Err(e) => {
                    tickets.flushed(0, Err(StoreError::Db(e.to_string())));
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bpv7::{BundleId, CreationTimestamp, Eid};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "dtn-store-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn key(n: u64) -> BundleKey {
        BundleKey::from_id(&BundleId {
            source: Eid::Ipn {
                node: 7,
                service: 1,
            },
            timestamp: CreationTimestamp::new(1000, n),
            fragment: None,
        })
    }

    fn config(dir: &TempDir, durability: Durability) -> StoreConfig {
        StoreConfig {
            path: dir.0.clone(),
            durability,
            quota_bytes: 10_000,
            quota_bundles: 10,
        }
    }

    const GROUP: Durability = Durability::GroupCommit {
        max_delay: Duration::from_millis(2),
    };

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), f).await })
            .expect("persisted within 10 s")
    }

    /// Await a ticket; with `BUFFERED` nothing flushes on its own, so flush first.
    fn wait_persisted(s: &Store, t: Ticket) {
        if s.durability() == BUFFERED {
            s.flush().unwrap();
        }
        block_on(s.persisted(t)).unwrap();
    }

    fn exercise(s: &Store) {
        let k1 = key(1);
        let t = match s.insert(&k1, 500, b"meta1", b"bundle-one").unwrap() {
            InsertOutcome::Stored(t) => t,
            InsertOutcome::Duplicate => panic!("fresh key reported duplicate"),
        };
        wait_persisted(s, t);
        assert_eq!(
            s.insert(&k1, 500, b"x", b"y").unwrap(),
            InsertOutcome::Duplicate
        );
        assert!(s.contains(&k1).unwrap());
        assert_eq!(s.get(&k1).unwrap().unwrap(), &b"bundle-one"[..]);
        let m = s.get_meta(&k1).unwrap().unwrap();
        assert_eq!((m.expiry_ms, m.size, &m.meta[..]), (500, 10, &b"meta1"[..]));
        s.insert(&key(2), 100, b"m2", b"22").unwrap();
        s.insert(&key(3), 900, b"m3", b"333").unwrap();
        assert_eq!(s.next_expiry().unwrap(), Some(100));
        assert_eq!(s.expired(99, 10).unwrap(), vec![]);
        assert_eq!(s.expired(500, 10).unwrap(), vec![key(2), key(1)]);
        assert_eq!(s.expired(u64::MAX, 1).unwrap(), vec![key(2)]);
        assert_eq!(s.expired(u64::MAX, 10).unwrap().len(), 3);
        let u = s.usage();
        assert_eq!((u.bundles, u.bytes, u.quota_bundles), (3, 15, 10));

        let t = s.update_meta(&k1, b"meta1-b").unwrap();
        wait_persisted(s, t);
        assert_eq!(&s.get_meta(&k1).unwrap().unwrap().meta[..], b"meta1-b");
        assert!(matches!(
            s.update_meta(&key(99), b"x"),
            Err(StoreError::NotFound(_))
        ));
        s.replace_bundle(&k1, b"frag").unwrap();
        assert_eq!(s.get(&k1).unwrap().unwrap(), &b"frag"[..]);
        let m = s.get_meta(&k1).unwrap().unwrap();
        assert_eq!(
            (m.expiry_ms, m.size, &m.meta[..]),
            (500, 4, &b"meta1-b"[..])
        );
        assert_eq!(s.usage().bytes, 9);

        let mut all: Vec<MetaRecord> = s.iter_meta().map(|r| r.unwrap()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(all.len(), 3);

        assert!(s.remove(&key(2)).unwrap());
        assert!(!s.remove(&key(2)).unwrap());
        assert_eq!(s.get(&key(2)).unwrap(), None);
        assert_eq!(s.next_expiry().unwrap(), Some(500));
        assert_eq!(s.usage().bundles, 2);
        assert_eq!(s.usage().bytes, 7);

        // Delivered-id record.
        assert!(!s.was_delivered(&key(5)).unwrap());
        s.record_delivered(&key(5), 1000).unwrap();
        s.record_delivered(&key(6), 2000).unwrap();
        s.record_delivered(&key(5), 3000).unwrap(); // extended
        assert!(s.was_delivered(&key(5)).unwrap());
        assert_eq!(s.prune_delivered(2000).unwrap(), 0);
        assert_eq!(s.prune_delivered(2001).unwrap(), 1);
        assert!(!s.was_delivered(&key(6)).unwrap());
        assert!(s.was_delivered(&key(5)).unwrap());
        assert_eq!(s.prune_delivered(u64::MAX).unwrap(), 1);
        assert!(!s.was_delivered(&key(5)).unwrap());
        s.flush().unwrap();
    }

    #[test]
    fn memory_store_works() {
        let d = TempDir::new("mem");
        exercise(&Store::open(&config(&d, Durability::Memory)).unwrap());
        assert!(!d.0.exists(), "memory store touched the disk");
    }

    #[test]
    fn sync_store_works_and_reopens() {
        let d = TempDir::new("sync");
        {
            let s = Store::open(&config(&d, Durability::Sync)).unwrap();
            exercise(&s);
        }
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        let u = s.usage();
        assert_eq!((u.bundles, u.bytes), (2, 7));
        assert_eq!(s.get(&key(1)).unwrap().unwrap(), &b"frag"[..]);
        assert_eq!(s.expired(u64::MAX, 10).unwrap(), vec![key(1), key(3)]);
    }

    #[test]
    fn a_store_held_open_is_refused_with_a_clear_error() {
        let d = TempDir::new("held");
        let _held = Store::open(&config(&d, Durability::Sync)).unwrap();
        let err = Store::open(&config(&d, Durability::Sync)).unwrap_err();
        assert!(
            err.to_string().contains("another dtnd"),
            "unclear error: {err}"
        );
    }

    #[test]
    fn group_store_works_and_reopens() {
        let d = TempDir::new("group");
        {
            let s = Store::open(&config(&d, GROUP)).unwrap();
            let clone = s.clone();
            exercise(&clone);
            drop(clone);
            s.record_delivered(&key(8), 77).unwrap();
        }
        let s = Store::open(&config(&d, GROUP)).unwrap();
        assert_eq!(s.usage().bundles, 2);
        assert!(s.was_delivered(&key(8)).unwrap());
    }

    /// A group-commit store whose flusher is paused: everything stays in the write-back
    /// buffer until `flush` (held inserts for an hour).
    const BUFFERED: Durability = Durability::GroupCommit {
        max_delay: Duration::from_secs(3600),
    };

    pub(crate) fn buffered(config: &StoreConfig) -> Store {
        let s = Store::open(config).unwrap();
        s.pause_group_commit();
        s
    }

    fn disk(s: &Store) -> &DiskBackend {
        match &s.inner.backend {
            Backend::Disk(d) => d,
            Backend::Memory(_) => panic!("not a disk store"),
        }
    }

    #[test]
    fn buffered_store_works_and_reopens() {
        let d = TempDir::new("buffered");
        {
            let s = buffered(&config(&d, BUFFERED));
            exercise(&s); // ends with flush()
            assert_eq!(disk(&s).pending_ops(), 0);
            s.insert(&key(100), 5, b"", b"first").unwrap();
            let t = match s.insert(&key(101), 5, b"", b"second").unwrap() {
                InsertOutcome::Stored(t) => t,
                InsertOutcome::Duplicate => panic!(),
            };
            assert!(disk(&s).pending_ops() > 0);
            let wait = s.persisted(t);
            drop(s); // the last clone: the final flush makes the ticket durable
            block_on(wait).unwrap();
        }
        let s = buffered(&config(&d, BUFFERED));
        assert_eq!((s.usage().bundles, s.usage().bytes), (4, 18));
        assert_eq!(s.get(&key(1)).unwrap().unwrap(), &b"frag"[..]);
        assert_eq!(
            s.expired(u64::MAX, 10).unwrap(),
            vec![key(100), key(101), key(1), key(3)]
        );
    }

    #[test]
    fn a_full_buffer_is_applied_by_the_writer() {
        let d = TempDir::new("bounded");
        let mut backend = DiskBackend::open(&d.0, true).unwrap();
        backend.set_max_pending(30, 1000);
        let quota = Usage {
            quota_bundles: 1000,
            quota_bytes: 1 << 20,
            ..Usage::default()
        };
        for i in 0..100 {
            backend.insert(&key(i), i, b"m", &[1; 20], &quota).unwrap();
            assert!(backend.pending_ops() <= 30, "buffer over its bound");
        }
        // Applied by the writers themselves: no flush was called.
        assert!(backend.sled_len() >= 3 * 90, "{}", backend.sled_len());
        // Bytes bound: 10 bundles of 200 B exceed 1000 B.
        for i in 100..110 {
            backend.insert(&key(i), i, b"", &[2; 200], &quota).unwrap();
            assert!(backend.pending_ops() <= 3 * 5, "byte bound not applied");
        }
        assert_eq!(backend.counts(), (110, 100 * 20 + 10 * 200));
    }

    #[test]
    fn insert_then_remove_in_one_window_never_reaches_sled() {
        let d = TempDir::new("cancel");
        let s = buffered(&config(&d, BUFFERED));
        s.insert(&key(0), 1, b"", b"x").unwrap();
        s.flush().unwrap();
        let base = disk(&s).sled_len();
        for i in 1..100 {
            s.insert(&key(i), i, b"m", b"bundle").unwrap();
            s.update_meta(&key(i), b"m2").unwrap();
            assert!(s.remove(&key(i)).unwrap());
        }
        assert_eq!(
            disk(&s).pending_ops(),
            0,
            "cancelled writes left in the buffer"
        );
        s.flush().unwrap();
        assert_eq!(disk(&s).sled_len(), base);
        assert_eq!(s.usage().bundles, 1);
    }

    #[test]
    fn buffer_overlays_sled_in_reads_and_scans() {
        let d = TempDir::new("overlay");
        let s = buffered(&config(&d, BUFFERED));
        for i in 0..6 {
            s.insert(&key(i), 10 * i, b"old", b"on-disk").unwrap();
        }
        s.record_delivered(&key(50), 10).unwrap();
        s.flush().unwrap();
        // Buffered changes over what is in sled.
        assert!(s.remove(&key(0)).unwrap());
        assert!(s.remove(&key(3)).unwrap());
        s.update_meta(&key(1), b"new").unwrap();
        s.replace_bundle(&key(2), b"buffered").unwrap();
        s.insert(&key(3), 25, b"again", b"re-inserted").unwrap();
        s.insert(&key(9), 1, b"", b"early").unwrap();
        s.record_delivered(&key(51), 5).unwrap();
        assert!(disk(&s).pending_ops() > 0);

        assert!(!s.contains(&key(0)).unwrap());
        assert_eq!(s.get(&key(0)).unwrap(), None);
        assert_eq!(&s.get_meta(&key(1)).unwrap().unwrap().meta[..], b"new");
        assert_eq!(s.get(&key(2)).unwrap().unwrap(), &b"buffered"[..]);
        assert_eq!(s.get(&key(3)).unwrap().unwrap(), &b"re-inserted"[..]);
        assert_eq!(s.next_expiry().unwrap(), Some(1));
        assert_eq!(
            s.expired(30, 10).unwrap(),
            vec![key(9), key(1), key(2), key(3)]
        );
        let mut metas: Vec<_> = s.iter_meta().map(|r| r.unwrap().key).collect();
        metas.sort();
        let mut want = vec![key(1), key(2), key(3), key(4), key(5), key(9)];
        want.sort();
        assert_eq!(metas, want);
        assert!(s.was_delivered(&key(50)).unwrap() && s.was_delivered(&key(51)).unwrap());
        assert_eq!(s.prune_delivered(11).unwrap(), 2);
        assert!(!s.was_delivered(&key(50)).unwrap());
        let u = s.usage();
        assert_eq!((u.bundles, u.bytes), (6, 7 * 3 + 8 + 11 + 5));
        // The same after the buffer is applied.
        s.flush().unwrap();
        assert_eq!(disk(&s).pending_ops(), 0);
        assert_eq!(
            s.expired(30, 10).unwrap(),
            vec![key(9), key(1), key(2), key(3)]
        );
        assert_eq!(s.iter_meta().count(), 6);
        assert!(!s.was_delivered(&key(51)).unwrap());
    }

    fn stored(o: InsertOutcome) -> Ticket {
        match o {
            InsertOutcome::Stored(t) => t,
            InsertOutcome::Duplicate => panic!("fresh key reported duplicate"),
        }
    }

    /// Whether `fut` is still pending after a short poll.
    fn pending_after(fut: impl std::future::Future<Output = Result<(), StoreError>>) -> bool {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(Duration::from_millis(50), fut).await })
            .is_err()
    }

    #[test]
    fn group_commit_flushes_at_once_when_idle() {
        // Classic group commit: max_delay bounds held inserts only; a plain write is flushed
        // as soon as the flusher is idle, even with a window of an hour.
        let d = TempDir::new("idle");
        let s = Store::open(&config(&d, BUFFERED)).unwrap();
        let t = stored(s.insert(&key(1), 1, b"", b"x").unwrap());
        block_on(s.persisted(t)).unwrap();
        assert_eq!(disk(&s).pending_ops(), 0);
        assert!(s.counters().syncs >= 1);
    }

    #[test]
    fn lazy_writes_wait_for_max_delay_unless_awaited() {
        let d = TempDir::new("lazy");
        let s = Store::open(&config(
            &d,
            Durability::GroupCommit {
                max_delay: Duration::from_millis(300),
            },
        ))
        .unwrap();
        let t = stored(s.insert(&key(1), 1, b"", b"x").unwrap());
        block_on(s.persisted(t)).unwrap();
        let syncs = s.counters().syncs;
        // A removal starts no flush of its own...
        let started = std::time::Instant::now();
        assert!(s.remove(&key(1)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            disk(&s).pending_ops() > 0,
            "a lazy write was flushed at once"
        );
        // ...but is flushed within max_delay.
        while disk(&s).pending_ops() > 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "never flushed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(s.counters().syncs, syncs + 1);
        // Awaiting a lazy write's ticket makes it urgent.
        let t = s.record_delivered(&key(2), 10).unwrap();
        let started = std::time::Instant::now();
        block_on(s.persisted(t)).unwrap();
        assert!(started.elapsed() < Duration::from_millis(250));
        assert!(s.was_delivered(&key(2)).unwrap());
    }

    #[test]
    fn a_held_insert_removed_before_its_flush_is_never_written() {
        let d = TempDir::new("held-release");
        let s = Store::open(&config(&d, BUFFERED)).unwrap();
        let base = disk(&s).sled_len();
        let t = stored(
            s.insert_held(&key(1), 9, b"m", &Bytes::from_static(b"in transit"))
                .unwrap(),
        );
        assert!(t.is_held());
        // Held: readable like any stored bundle, not flushed, not durable.
        assert_eq!(s.get(&key(1)).unwrap().unwrap(), &b"in transit"[..]);
        assert_eq!(s.expired(9, 10).unwrap(), vec![key(1)]);
        assert_eq!(s.usage().bundles, 1);
        let wait = s.persisted(t.clone());
        assert!(
            pending_after(s.persisted(t)),
            "a held insert resolved early"
        );
        // A plain write meanwhile is flushed without the held one.
        let t2 = stored(s.insert(&key(2), 9, b"", b"plain").unwrap());
        block_on(s.persisted(t2)).unwrap();
        assert_eq!(disk(&s).sled_len(), base + 3);
        // Forwarded and confirmed: removed before the hold ended.
        assert!(s.remove(&key(1)).unwrap());
        block_on(wait).unwrap();
        assert_eq!(disk(&s).pending_ops(), 0);
        s.flush().unwrap();
        assert_eq!(
            disk(&s).sled_len(),
            base + 3,
            "the held bundle reached sled"
        );
        let c = s.counters();
        assert_eq!((c.held_released, c.held_flushed), (1, 0));
        assert_eq!(s.usage().bundles, 1);
        drop(s);
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert!(!s.contains(&key(1)).unwrap() && s.contains(&key(2)).unwrap());
    }

    #[test]
    fn a_held_insert_persisted_before_its_removal_is_written() {
        // Forwarded over a layer that confirms nothing: the bundle must be on disk here before
        // the acknowledgement its ticket stands for leaves, and removing it afterwards must
        // not take that back.
        let d = TempDir::new("held-persist");
        let s = Store::open(&config(&d, BUFFERED)).unwrap();
        let base = disk(&s).sled_len();
        let held = stored(
            s.insert_held(&key(1), 9, b"m", &Bytes::from_static(b"over udp"))
                .unwrap(),
        );
        let started = std::time::Instant::now();
        let t = s.persist(&key(1)).unwrap();
        block_on(s.persisted(t)).unwrap();
        // Well before the 300 ms hold would have ended on its own.
        assert!(started.elapsed() < Duration::from_millis(250));
        assert!(
            !pending_after(s.persisted(held.clone())),
            "the held ticket is not settled by the flush that wrote the bundle"
        );
        assert_eq!(s.counters().held_flushed, 1);
        // Killed now, the bundle is on disk: its three entries are in sled.
        assert_eq!(disk(&s).sled_len(), base + 3);
        assert!(s.remove(&key(1)).unwrap());
        s.flush().unwrap();
        drop(s);
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert!(!s.contains(&key(1)).unwrap());
        // Memory and Sync stores have nothing to do.
        let m = Store::open(&config(&d, Durability::Memory)).unwrap();
        assert_eq!(m.persist(&key(1)).unwrap(), Ticket::NONE);
        assert_eq!(s.persist(&key(1)).unwrap(), Ticket::NONE);
    }

    #[test]
    fn a_held_insert_is_flushed_when_its_hold_ends() {
        let d = TempDir::new("held-flush");
        let short = Durability::GroupCommit {
            max_delay: Duration::from_millis(30),
        };
        {
            let s = Store::open(&config(&d, short)).unwrap();
            let t = stored(
                s.insert_held(&key(1), 9, b"m", &Bytes::from_static(b"stays"))
                    .unwrap(),
            );
            let started = std::time::Instant::now();
            block_on(s.persisted(t)).unwrap();
            assert!(started.elapsed() >= Duration::from_millis(25));
            assert_eq!(s.counters().held_flushed, 1);
            assert_eq!(disk(&s).pending_ops(), 0);
            // Removing it now is an ordinary write.
            let before = disk(&s).sled_len();
            assert!(s.remove(&key(1)).unwrap());
            s.flush().unwrap();
            assert_eq!(disk(&s).sled_len(), before - 3);
            let t = stored(
                s.insert_held(&key(2), 9, b"m", &Bytes::from_static(b"kept"))
                    .unwrap(),
            );
            block_on(s.persisted(t)).unwrap();
            // Killed now, `key(2)` must be on disk: only the Db is dropped below, and the
            // ticket resolved before.
        }
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert_eq!(s.get(&key(2)).unwrap().unwrap(), &b"kept"[..]);
        assert!(!s.contains(&key(1)).unwrap());
    }

    #[test]
    fn flush_and_close_take_held_inserts() {
        let d = TempDir::new("held-close");
        {
            let s = buffered(&config(&d, BUFFERED));
            let t = stored(
                s.insert_held(&key(1), 9, b"m", &Bytes::from_static(b"one"))
                    .unwrap(),
            );
            s.flush().unwrap();
            block_on(s.persisted(t)).unwrap();
            let t = stored(
                s.insert_held(&key(2), 9, b"m", &Bytes::from_static(b"two"))
                    .unwrap(),
            );
            let wait = s.persisted(t);
            drop(s); // the final flush takes every hold
            block_on(wait).unwrap();
        }
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert_eq!(s.usage().bundles, 2);
    }

    #[test]
    fn another_write_to_a_held_bundle_ends_its_hold() {
        let d = TempDir::new("held-update");
        let s = Store::open(&config(&d, BUFFERED)).unwrap();
        let held = stored(
            s.insert_held(&key(1), 9, b"m", &Bytes::from_static(b"bytes"))
                .unwrap(),
        );
        let t = s.update_meta(&key(1), b"m2").unwrap();
        // The update is durable only with the insert it changes.
        block_on(s.persisted(t)).unwrap();
        block_on(s.persisted(held)).unwrap();
        assert_eq!(disk(&s).pending_ops(), 0);
        assert_eq!(s.counters().held_flushed, 1);
        drop(s);
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert_eq!(&s.get_meta(&key(1)).unwrap().unwrap().meta[..], b"m2");
    }

    #[test]
    fn held_inserts_fall_back_to_plain_ones() {
        // Memory and Sync stores, and bundles over the size bound, are written at once.
        let d = TempDir::new("held-fallback");
        for dur in [Durability::Memory, Durability::Sync] {
            let s = Store::open(&config(&d, dur)).unwrap();
            let t = stored(
                s.insert_held(&key(1), 9, b"", &Bytes::from_static(b"x"))
                    .unwrap(),
            );
            assert!(!t.is_held());
            assert_eq!(
                s.insert_held(&key(1), 9, b"", &Bytes::from_static(b"x"))
                    .unwrap(),
                InsertOutcome::Duplicate
            );
            drop(s);
            let _ = std::fs::remove_dir_all(&d.0);
        }
        let mut cfg = config(&d, BUFFERED);
        cfg.quota_bytes = 1 << 30;
        let s = buffered(&cfg);
        let big = vec![0u8; MAX_HELD_BUNDLE + 1];
        assert!(!stored(s.insert_held(&key(2), 9, b"", &Bytes::from(big)).unwrap()).is_held());
    }

    #[test]
    fn combined_tickets_wait_for_both() {
        let d = TempDir::new("and");
        let s = Store::open(&config(&d, BUFFERED)).unwrap();
        let held = stored(
            s.insert_held(&key(1), 9, b"", &Bytes::from_static(b"x"))
                .unwrap(),
        );
        let plain = stored(s.insert(&key(2), 9, b"", b"y").unwrap());
        let both = plain.clone().and(held);
        assert!(pending_after(s.persisted(both.clone())));
        block_on(s.persisted(plain.clone())).unwrap();
        assert!(s.remove(&key(1)).unwrap());
        block_on(s.persisted(both)).unwrap();
        assert_eq!(Ticket::NONE.and(plain.clone()), plain);
    }

    /// What a [`callback`] reports.
    type Reports = std::sync::mpsc::Receiver<Result<(), String>>;

    /// A callback for [`Store::on_persisted`] and the channel it reports on.
    fn callback() -> (
        impl FnOnce(Result<(), StoreError>) + Send + 'static,
        Reports,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            move |r: Result<(), StoreError>| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            },
            rx,
        )
    }

    #[test]
    fn on_persisted_runs_when_the_write_is_durable() {
        let d = TempDir::new("on-persisted");
        let s = Store::open(&config(&d, BUFFERED)).unwrap();
        let wait = Duration::from_secs(10);
        // A held insert released by its removal: run by `remove` itself, nothing written.
        let base = disk(&s).sled_len();
        let held = stored(
            s.insert_held(&key(1), 9, b"", &Bytes::from_static(b"x"))
                .unwrap(),
        );
        let (cb, rx) = callback();
        s.on_persisted(held, cb);
        assert!(rx.try_recv().is_err(), "ran before the hold ended");
        assert!(s.remove(&key(1)).unwrap());
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        // A plain insert: run by the group-commit thread after its flush.
        let plain = stored(s.insert(&key(2), 9, b"", b"y").unwrap());
        let (cb, rx) = callback();
        s.on_persisted(plain.clone(), cb);
        assert_eq!(rx.recv_timeout(wait).unwrap(), Ok(()));
        assert_eq!(disk(&s).sled_len(), base + 3);
        // Already durable: at once.
        let (cb, rx) = callback();
        s.on_persisted(plain, cb);
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        // A held insert that another write ends the hold of: run after the flush that takes
        // it; and one taken by an explicit flush.
        let held = stored(
            s.insert_held(&key(3), 9, b"", &Bytes::from_static(b"z"))
                .unwrap(),
        );
        let (cb, rx) = callback();
        s.on_persisted(held, cb);
        let t = s.update_meta(&key(3), b"m").unwrap();
        let (cb2, rx2) = callback();
        s.on_persisted(t, cb2);
        assert_eq!(rx.recv_timeout(wait).unwrap(), Ok(()));
        assert_eq!(rx2.recv_timeout(wait).unwrap(), Ok(()));
        assert_eq!(disk(&s).sled_len(), base + 6);
        let held = stored(
            s.insert_held(&key(4), 9, b"", &Bytes::from_static(b"w"))
                .unwrap(),
        );
        let (cb, rx) = callback();
        s.on_persisted(held.clone().and(Ticket::NONE), cb);
        s.flush().unwrap();
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        assert_eq!(s.counters().held_flushed, 2);
        drop(s);
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert_eq!(s.usage().bundles, 3);
        assert_eq!(&s.get_meta(&key(3)).unwrap().unwrap().meta[..], b"m");
    }

    #[test]
    fn persisted_outlives_the_store() {
        let d = TempDir::new("outlive");
        let s = Store::open(&config(&d, GROUP)).unwrap();
        let InsertOutcome::Stored(t) = s.insert(&key(1), 1, b"", b"x").unwrap() else {
            panic!("duplicate")
        };
        let fut = s.persisted(t);
        drop(s); // final flush publishes the ticket
        block_on(fut).unwrap();
    }

    #[test]
    fn group_commit_resolves_many_waiters_on_a_runtime() {
        let d = TempDir::new("waiters");
        let s = Store::open(&config(&d, GROUP)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..10u64 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let InsertOutcome::Stored(t) = s.insert(&key(i), 1, b"", b"x").unwrap() else {
                        panic!("duplicate")
                    };
                    tokio::time::timeout(Duration::from_secs(10), s.persisted(t))
                        .await
                        .expect("persisted within 10 s")
                        .unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }

    #[test]
    fn quota_refuses_with_a_clear_message() {
        let d = TempDir::new("quota");
        for dur in [Durability::Memory, Durability::Sync] {
            let s = Store::open(&config(&d, dur)).unwrap();
            for i in 0..10 {
                s.insert(&key(i), 1, b"", b"x").unwrap();
            }
            let e = s.insert(&key(10), 1, b"", b"x").unwrap_err();
            assert!(matches!(e, StoreError::QuotaExceeded(_)));
            assert!(e.to_string().contains("10 of 10 bundles"), "{e}");
            s.remove(&key(0)).unwrap();
            let e = s.insert(&key(11), 1, b"", &[0u8; 9_992]).unwrap_err();
            assert!(
                e.to_string()
                    .contains("byte quota full: 9 bytes held + 9992 new > limit 10000"),
                "{e}"
            );
            s.insert(&key(11), 1, b"", &[0u8; 9_991]).unwrap();
            assert!(matches!(
                s.replace_bundle(&key(11), &[0u8; 9_992]),
                Err(StoreError::QuotaExceeded(_))
            ));
            assert_eq!(s.usage().bytes, 10_000);
            drop(s);
            let _ = std::fs::remove_dir_all(&d.0);
        }
    }

    #[test]
    fn corrupt_meta_is_an_error_not_a_panic() {
        let d = TempDir::new("corrupt");
        {
            let s = Store::open(&config(&d, Durability::Sync)).unwrap();
            s.insert(&key(1), 1, b"meta", b"abc").unwrap();
            s.insert(&key(2), 2, b"meta", b"defg").unwrap();
        }
        {
            let db = disk::open_sled(&d.0).unwrap(); // waits for the lock, as Store::open does
            let t = db.open_tree("store").unwrap();
            let mut k = vec![b'M'];
            k.extend_from_slice(&key(1).0);
            let mut v = t.get(&k).unwrap().unwrap().to_vec();
            v.pop(); // meta length no longer matches
            t.insert(k, v).unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(&config(&d, Durability::Sync)).unwrap();
        assert_eq!((s.usage().bundles, s.usage().bytes), (2, 7));
        assert!(matches!(s.get_meta(&key(1)), Err(StoreError::Corrupt(_))));
        let items: Vec<_> = s.iter_meta().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items.iter().filter(|r| r.is_err()).count(), 1);
        // The corrupt bundle can still be removed, and the counters stay exact.
        assert!(s.remove(&key(1)).unwrap());
        assert_eq!((s.usage().bundles, s.usage().bytes), (1, 4));
    }
}

/// Model check: the buffered sled store behaves like the memory store for any sequence of
/// operations (held inserts included), also after reopening.
#[cfg(test)]
mod model {
    use super::tests::{key, TempDir};
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64, u8, usize),
        InsertHeld(u64, u64, u8, usize),
        Remove(u64),
        UpdateMeta(u64, u8),
        Replace(u64, usize),
        Delivered(u64, u64),
        Prune(u64),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..8, 0u64..6, any::<u8>(), 0usize..6).prop_map(|(k, e, m, s)| Op::Insert(k, e, m, s)),
            2 => (0u64..8, 0u64..6, any::<u8>(), 0usize..6).prop_map(|(k, e, m, s)| Op::InsertHeld(k, e, m, s)),
            3 => (0u64..8).prop_map(Op::Remove),
            1 => (0u64..8, any::<u8>()).prop_map(|(k, m)| Op::UpdateMeta(k, m)),
            1 => (0u64..8, 0usize..8).prop_map(|(k, s)| Op::Replace(k, s)),
            1 => (0u64..8, 0u64..6).prop_map(|(k, t)| Op::Delivered(k, t)),
            1 => (0u64..7).prop_map(Op::Prune),
            1 => Just(Op::Flush),
        ]
    }

    /// The observable outcome of an operation.
    fn apply(s: &Store, op: &Op) -> String {
        let r = match op {
            Op::Insert(k, e, m, n) => s
                .insert(&key(*k), *e, &[*m], &vec![*m; *n])
                .map(|o| matches!(o, InsertOutcome::Stored(_)).to_string()),
            Op::InsertHeld(k, e, m, n) => s
                .insert_held(&key(*k), *e, &[*m], &Bytes::from(vec![*m; *n]))
                .map(|o| matches!(o, InsertOutcome::Stored(_)).to_string()),
            Op::Remove(k) => s.remove(&key(*k)).map(|b| b.to_string()),
            Op::UpdateMeta(k, m) => s.update_meta(&key(*k), &[*m, 1]).map(|_| String::new()),
            Op::Replace(k, n) => s
                .replace_bundle(&key(*k), &vec![7; *n])
                .map(|_| String::new()),
            Op::Delivered(k, t) => s.record_delivered(&key(*k), *t).map(|_| String::new()),
            Op::Prune(t) => s.prune_delivered(*t).map(|n| n.to_string()),
            Op::Flush => s.flush().map(|_| String::new()),
        };
        match r {
            Ok(v) => v,
            Err(StoreError::QuotaExceeded(_)) => "quota".into(),
            Err(StoreError::NotFound(_)) => "not found".into(),
            Err(e) => panic!("{op:?}: {e}"),
        }
    }

    /// Everything observable about a store.
    fn state(s: &Store) -> String {
        let mut metas: Vec<MetaRecord> = s.iter_meta().map(|r| r.unwrap()).collect();
        metas.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out = format!("{:?} {:?} ", metas, s.usage());
        for k in 0..8 {
            out += &format!(
                "{:?} {} {:?} ",
                s.get(&key(k)).unwrap(),
                s.was_delivered(&key(k)).unwrap(),
                s.contains(&key(k)).unwrap()
            );
        }
        let exp = s.expired(3, usize::MAX).unwrap();
        out + &format!("{:?} {:?}", exp, s.next_expiry().unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn buffered_disk_store_matches_memory(ops in proptest::collection::vec(op(), 1..60)) {
            let d = TempDir::new("model");
            let cfg = |durability| StoreConfig {
                path: d.0.clone(),
                durability,
                quota_bytes: 24,
                quota_bundles: 6,
            };
            let mem = Store::open(&cfg(Durability::Memory)).unwrap();
            let disk = super::tests::buffered(&cfg(Durability::GroupCommit {
                max_delay: Duration::from_secs(3600),
            }));
            for op in &ops {
                prop_assert_eq!(apply(&mem, op), apply(&disk, op), "{:?}", op);
                prop_assert_eq!(state(&mem), state(&disk), "after {:?}", op);
            }
            drop(disk);
            let reopened = Store::open(&cfg(Durability::Sync)).unwrap();
            prop_assert_eq!(state(&mem), state(&reopened), "after reopen");
        }
    }
}
