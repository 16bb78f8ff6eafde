//! The replication store: versioned records with compare-and-set and TTL, behind one contract that every backend
//! meets (`tests/it/store_contract.rs`): [`MemoryStore`] for tests, [`SqliteStore`] as the embedded default (one
//! file shared by every node process on a host), and `ScyllaStore` (cargo feature `scylla`) for a cluster of hosts:
//! lightweight transactions in ScyllaDB, schema in `schema/scylla.cql`, design in `docs/stores.md`.
//!
//! A record is a key, an opaque value, a version (incremented by every write: the CAS token) and an optional
//! expiry. Writes state what they expect to find ([`Expect`]): that is how ownership is taken by a race that exactly
//! one node wins, and how a stale owner is fenced off.

mod memory;
#[cfg(feature = "scylla")]
mod scylla;
mod scylla_config;
mod sqlite;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

#[cfg(feature = "scylla")]
pub use self::scylla::ScyllaStore;
pub use memory::MemoryStore;
pub use scylla_config::{ScyllaConfig, ScyllaConsistency, ScyllaSerialConsistency};
pub use sqlite::SqliteStore;

/// A record as read: its value and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The version: higher after every write of the key, never reused (the compare-and-set and fencing token).
    /// How it grows is the backend's: a counter (SQLite, memory), the writer's clock in µs (ScyllaDB).
    pub version: u64,
}

/// What a write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Anything (an unconditional write).
    Any,
    /// No record (creation; `IF NOT EXISTS`).
    Absent,
    /// The record at exactly this version (compare-and-set).
    Version(u64),
}

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The expectation did not hold; `current` is the version found (`None`: no record).
    #[error("conflict: expected record not found (current version {current:?})")]
    Conflict {
        /// What is there now.
        current: Option<u64>,
    },
    /// The store cannot be reached or written now; try again after `retry_after`.
    #[error("store unavailable: {reason}; retry in {retry_after:?}")]
    Unavailable {
        /// Why.
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// A record cannot be read back.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// The backend cannot do what was asked (e.g. a ScyllaDB prefix scan that does not name its scope).
    #[error("not supported by this store: {0}")]
    Unsupported(String),
}

/// One write of a group commit ([`Store::batch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The new value; `None` deletes.
    pub value: Option<Bytes>,
    /// What this write expects (each write of a batch is conditional on its own).
    pub expect: Expect,
    /// Expiry of the new value.
    pub ttl: Option<Duration>,
}

/// The contract every backend meets.
pub trait Store: Send + Sync + 'static {
    /// Reads a record; expired records read as absent.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// Writes a record if `expect` holds; returns the new version. `ttl` sets (or clears) its expiry.
    /// A one-write [`Store::batch`], so every backend has one write path; a backend may override it.
    fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let w = Write { key: key.to_string(), value: Some(value), expect, ttl };
        async move { self.batch(vec![w]).await?.pop().expect("one result per write") }
    }

    /// Deletes a record if `expect` holds (deleting an absent record with `Expect::Any` succeeds).
    /// A one-write [`Store::batch`], like [`Store::put`].
    fn delete(&self, key: &str, expect: Expect) -> impl Future<Output = Result<(), StoreError>> + Send {
        let w = Write { key: key.to_string(), value: None, expect, ttl: None };
        async move { self.batch(vec![w]).await?.pop().expect("one result per write").map(drop) }
    }

    /// Group commit: applies many writes in one atomic step of the backend (one SQLite transaction; on ScyllaDB
    /// concurrent conditional writes, not one step), each conditional on its own expectation. Returns each write's
    /// outcome (the new version, or 0 for a deletion); a write whose expectation fails fails alone. The whole call
    /// fails only when the store does.
    fn batch(
        &self,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<Vec<Result<u64, StoreError>>, StoreError>> + Send;

    /// Every live record whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &str) -> impl Future<Output = Result<Vec<(String, Versioned)>, StoreError>> + Send;
}

/// A store chosen at run time (`[store] type` in the config): the engine and the ownership layer hold one of these,
/// so a node's code is the same whatever the backend.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// In-process.
    Memory(std::sync::Arc<MemoryStore>),
    /// One SQLite file.
    Sqlite(SqliteStore),
    /// A ScyllaDB cluster.
    #[cfg(feature = "scylla")]
    Scylla(ScyllaStore),
}

impl AnyStore {
    /// A fresh in-process store.
    pub fn memory() -> AnyStore {
        AnyStore::Memory(std::sync::Arc::new(MemoryStore::new()))
    }

    /// What backs it, for logs and metrics.
    pub fn describe(&self) -> String {
        match self {
            AnyStore::Memory(_) => "memory".into(),
            AnyStore::Sqlite(s) => format!("sqlite {}", s.path().display()),
            #[cfg(feature = "scylla")]
            AnyStore::Scylla(_) => "scylla".into(),
        }
    }

    /// Opens the store a configuration names (`[store]`); a relative SQLite path is relative to `base`. A SQLite
    /// store gets a task that deletes expired records every `sweep_interval`.
    pub async fn open(config: &crate::config::StoreSection, base: &std::path::Path) -> Result<AnyStore, StoreError> {
        use crate::config::StoreType;
        match config.kind {
            StoreType::Memory => Ok(AnyStore::memory()),
            StoreType::Sqlite => {
                let store = SqliteStore::open(&base.join(&config.path), config.busy_timeout)?;
                store.spawn_sweeper(config.sweep_interval);
                Ok(AnyStore::Sqlite(store))
            }
            #[cfg(feature = "scylla")]
            StoreType::Scylla => Ok(AnyStore::Scylla(ScyllaStore::connect(&config.scylla).await?)),
            #[cfg(not(feature = "scylla"))]
            StoreType::Scylla => Err(StoreError::Unsupported(
                "[store] type = \"scylla\" needs a build with the cargo feature `scylla` (on by default)".into(),
            )),
        }
    }
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.get(key).await,
            AnyStore::Sqlite(s) => s.get(key).await,
            #[cfg(feature = "scylla")]
            AnyStore::Scylla(s) => s.get(key).await,
        }
    }

    async fn batch(&self, writes: Vec<Write>) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.batch(writes).await,
            AnyStore::Sqlite(s) => s.batch(writes).await,
            #[cfg(feature = "scylla")]
            AnyStore::Scylla(s) => s.batch(writes).await,
        }
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.scan_prefix(prefix).await,
            AnyStore::Sqlite(s) => s.scan_prefix(prefix).await,
            #[cfg(feature = "scylla")]
            AnyStore::Scylla(s) => s.scan_prefix(prefix).await,
        }
    }
}
