//! Durable bundle storage in sled (RFC 9171 §5: the node retains a bundle until it is
//! delivered, forwarded and confirmed, or deleted).
//!
//! API CONTRACT (fixed by the lead; the store helper implements it, the processing engine and
//! the daemon use it). Bodies are placeholders until the implementation lands.
//!
//! - [`Store::open`] opens (or creates) the store; `Durability::Memory` keeps everything in
//!   memory (tests, benchmarks).
//! - Keys are [`BundleKey`]s: the RFC 9171 §5.1 bundle identity (source, creation timestamp,
//!   fragment offset and total ADU length), encoded so that equal identities give equal keys.
//! - Each bundle has its encoded bytes, its expiry time (DTN ms) in an expiry index, and an
//!   opaque metadata blob owned by the processing engine. Metadata lives apart from the bytes
//!   so a restart reads only metadata ([`Store::iter_meta`]).
//! - Writes return a [`Ticket`]; [`Store::persisted`] resolves when the write is on disk per the
//!   durability mode (`Sync`: already; `GroupCommit`: after the next group flush, at most
//!   `max_delay` later; `Memory`: at once). Acknowledgements wait on it.
//! - A quota (bundles and bytes) makes [`Store::insert`] fail with
//!   [`StoreError::QuotaExceeded`] instead of growing without bound.
//! - A delivered-id record ([`Store::record_delivered`], [`Store::was_delivered`]) remembers
//!   identities delivered to applications until a given time, so nothing is delivered twice
//!   after a restart.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::api::DtnMillis;

/// How writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every write is flushed before it returns.
    Sync,
    /// Writes are flushed together at most `max_delay` after they are made (the default).
    GroupCommit {
        /// Longest time a write waits for its flush.
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

/// The RFC 9171 §5.1 identity of a stored bundle, as a byte key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleKey(pub Box<[u8]>);

impl BundleKey {
    /// The key of a bundle identity.
    pub fn from_id(_id: &bpv7::BundleId) -> BundleKey {
        unimplemented!("store helper")
    }
}

/// A write whose durability can be awaited with [`Store::persisted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Result of [`Store::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// The bundle store (cheap to clone; clones share the database).
#[derive(Clone, Debug)]
pub struct Store {}

impl Store {
    /// Open or create the store.
    pub fn open(_config: &StoreConfig) -> Result<Store, StoreError> {
        unimplemented!("store helper")
    }
    /// Store a new bundle (bytes as received or built), unless its key is already present.
    pub fn insert(
        &self,
        _key: &BundleKey,
        _expiry_ms: DtnMillis,
        _meta: &[u8],
        _bundle: &[u8],
    ) -> Result<InsertOutcome, StoreError> {
        unimplemented!("store helper")
    }
    /// Replace a stored bundle's metadata blob.
    pub fn update_meta(&self, _key: &BundleKey, _meta: &[u8]) -> Result<Ticket, StoreError> {
        unimplemented!("store helper")
    }
    /// Replace a stored bundle's bytes (e.g. after proactive fragmentation), keeping its key.
    pub fn replace_bundle(&self, _key: &BundleKey, _bundle: &[u8]) -> Result<Ticket, StoreError> {
        unimplemented!("store helper")
    }
    /// Remove a bundle (bytes, metadata, expiry index entry); `false` if it was not there.
    pub fn remove(&self, _key: &BundleKey) -> Result<bool, StoreError> {
        unimplemented!("store helper")
    }
    /// A stored bundle's bytes.
    pub fn get(&self, _key: &BundleKey) -> Result<Option<Bytes>, StoreError> {
        unimplemented!("store helper")
    }
    /// A stored bundle's metadata.
    pub fn get_meta(&self, _key: &BundleKey) -> Result<Option<MetaRecord>, StoreError> {
        unimplemented!("store helper")
    }
    /// Whether a bundle with this key is stored.
    pub fn contains(&self, _key: &BundleKey) -> Result<bool, StoreError> {
        unimplemented!("store helper")
    }
    /// Keys of up to `limit` bundles whose expiry is at or before `now`, from the expiry index.
    pub fn expired(&self, _now: DtnMillis, _limit: usize) -> Result<Vec<BundleKey>, StoreError> {
        unimplemented!("store helper")
    }
    /// The earliest expiry time in the store.
    pub fn next_expiry(&self) -> Result<Option<DtnMillis>, StoreError> {
        unimplemented!("store helper")
    }
    /// Every stored bundle's metadata (restart recovery), without reading bundle bytes.
    pub fn iter_meta(&self) -> impl Iterator<Item = Result<MetaRecord, StoreError>> + '_ {
        std::iter::empty()
    }
    /// Remember that the bundle `key` was delivered to an application, until `keep_until`.
    pub fn record_delivered(
        &self,
        _key: &BundleKey,
        _keep_until: DtnMillis,
    ) -> Result<Ticket, StoreError> {
        unimplemented!("store helper")
    }
    /// Whether `key` was delivered (and the record has not been pruned).
    pub fn was_delivered(&self, _key: &BundleKey) -> Result<bool, StoreError> {
        unimplemented!("store helper")
    }
    /// Drop delivered-id records kept until before `now`; returns how many.
    pub fn prune_delivered(&self, _now: DtnMillis) -> Result<usize, StoreError> {
        unimplemented!("store helper")
    }
    /// Use against the quota.
    pub fn usage(&self) -> Usage {
        unimplemented!("store helper")
    }
    /// Resolves when the write that returned `ticket` is durable.
    pub fn persisted(
        &self,
        _ticket: Ticket,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        async { unimplemented!("store helper") }
    }
    /// Flush everything now (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        unimplemented!("store helper")
    }
}
