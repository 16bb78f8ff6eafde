//! The in-process store, for unit tests and the in-process simulator.

use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::{Expect, Store, StoreError, Versioned, Write};

#[derive(Debug)]
struct Record {
    value: Bytes,
    version: u64,
    expires: Option<Instant>,
}

/// Records in a mutex-protected hash map. Time is the process's monotonic clock.
///
/// A write hashes its key once where an ordered map compared it with a dozen others (keys share long prefixes: the
/// cluster, the record kind, the convergence name). A prefix scan, which only lease and timer-hint scans make, walks
/// every record and sorts what it keeps: this store holds one process's records.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<(FxHashMap<String, Record>, u64)>,
    /// Batches still to be applied and then reported failed ([`MemoryStore::lose_acknowledgements`]).
    lost: AtomicUsize,
    /// How long each batch waits before it is applied, in milliseconds ([`MemoryStore::stall_batches`]).
    stall_ms: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// For tests: the next `n` batches are applied, then reported failed (unavailable, retry after 50 ms), as a
    /// write whose acknowledgement was lost would be (a timeout after the write landed). The writer cannot tell
    /// that from a write that did not happen, and its next conditional write meets its own record's new version.
    pub fn lose_acknowledgements(&self, n: usize) {
        self.lost.store(n, Ordering::SeqCst);
    }

    /// For tests: from now on each batch (and so each `put` and `delete`) waits `stall` before it is applied, as a
    /// store that is slow without failing would; `Duration::ZERO` ends it. Reads are not delayed.
    pub fn stall_batches(&self, stall: Duration) {
        self.stall_ms.store(stall.as_millis() as u64, Ordering::SeqCst);
    }
}

fn live(r: &Record, now: Instant) -> bool {
    r.expires.is_none_or(|e| e > now)
}

fn check(found: Option<&Record>, expect: Expect, now: Instant) -> Result<Option<u64>, StoreError> {
    let current = found.filter(|r| live(r, now)).map(|r| r.version);
    match (expect, current) {
        (Expect::Any, c) => Ok(c),
        (Expect::Absent, None) => Ok(None),
        (Expect::Version(v), Some(c)) if v == c => Ok(Some(c)),
        (_, c) => Err(StoreError::Conflict { current: c }),
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let now = Instant::now();
        let guard = self.records.lock().expect("store lock");
        let map = &guard.0;
        Ok(map.get(key).filter(|r| live(r, now)).map(|r| Versioned { value: r.value.clone(), version: r.version }))
    }

    async fn batch(&self, writes: Vec<Write>) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let stall = self.stall_ms.load(Ordering::SeqCst);
        if stall > 0 {
            tokio::time::sleep(Duration::from_millis(stall)).await;
        }
        let now = Instant::now();
        let mut guard = self.records.lock().expect("store lock");
        let (map, seq) = &mut *guard;
        // One lookup per write (an entry), not one for the check and another for the write.
        let results = writes
            .into_iter()
            .map(|w| {
                let expires = w.ttl.map(|t| now + t);
                match (map.entry(w.key), w.value) {
                    (Entry::Occupied(mut e), Some(value)) => {
                        check(Some(e.get()), w.expect, now)?;
                        *seq += 1;
                        *e.get_mut() = Record { value, version: *seq, expires };
                        Ok(*seq)
                    }
                    (Entry::Vacant(e), Some(value)) => {
                        check(None, w.expect, now)?;
                        *seq += 1;
                        e.insert(Record { value, version: *seq, expires });
                        Ok(*seq)
                    }
                    (Entry::Occupied(e), None) => {
                        check(Some(e.get()), w.expect, now)?;
                        e.remove();
                        Ok(0)
                    }
                    (Entry::Vacant(_), None) => check(None, w.expect, now).map(|_| 0),
                }
            })
            .collect();
        if self.lost.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unavailable {
                reason: "the acknowledgement was lost (applied)".into(),
                retry_after: Duration::from_millis(50),
            });
        }
        Ok(results)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let now = Instant::now();
        let guard = self.records.lock().expect("store lock");
        let mut found: Vec<(String, Versioned)> = guard
            .0
            .iter()
            .filter(|(k, r)| k.starts_with(prefix) && live(r, now))
            .map(|(k, r)| (k.clone(), Versioned { value: r.value.clone(), version: r.version }))
            .collect();
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }
}
