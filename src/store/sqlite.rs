//! The embedded default: one SQLite file shared by every node process on the host. WAL mode so readers do not
//! block the writer, a busy timeout so processes queue for the write lock, compare-and-set inside an IMMEDIATE
//! transaction (the write lock is taken before the read, so the check and the write are one atomic step across
//! processes), expiry in a column that reads filter and [`SqliteStore::sweep`] deletes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Expect, Store, StoreError, Versioned, Write};

/// A store in one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// The file's (device, inode) when opened: SQLite goes on writing to a file deleted, moved or replaced under
    /// it without an error, into a file no other node reads any more. Every operation checks the path still names
    /// this file first.
    file: Option<(u64, u64)>,
    /// Stops the background checkpointer when the last clone goes.
    _checkpointer: Arc<Checkpointer>,
}

/// How often the background checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The WAL size (pages) at which a committing writer checkpoints itself, as SQLite does by default at 1,000 pages:
/// only a fallback here, for when the background checkpointer falls behind.
const WRITER_CHECKPOINT_PAGES: u32 = 16_000;

/// A thread that checkpoints the WAL (PASSIVE: it never blocks writers or readers) every [`CHECKPOINT_EVERY`],
/// on its own connection. By default SQLite has the transaction that grows the WAL past 1,000 pages do it, inside
/// its commit; under a steady write load that is every few dozen group commits, and the commit that draws it waits
/// for the copy (and, with `synchronous = NORMAL`, for its fsyncs). Several processes on one file each run one;
/// when two overlap, one finds the checkpoint busy and waits for the next period.
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    fn start(path: &Path) -> Checkpointer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, path) = (stop.clone(), path.to_path_buf());
        let spawned = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
            let Ok(conn) = Connection::open(&path) else { return };
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(CHECKPOINT_EVERY);
                // Busy (another process checkpointing) or failing: the next period tries again, and the writers'
                // own checkpoint at WRITER_CHECKPOINT_PAGES bounds the WAL meanwhile.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no background checkpointer: writers checkpoint the WAL themselves");
        }
        Checkpointer { stop }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `path` still names the file opened as `file`; otherwise the store is unavailable, with the reason.
fn same_file(path: &Path, file: Option<(u64, u64)>) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let Some(file) = file else { return Ok(()) };
    match std::fs::metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == file => Ok(()),
        Ok(_) => Err(unavailable(
            path,
            "the database file was replaced under this node (another file is at its path now); nothing is written \
             to either until the original is back or the node restarts",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(unavailable(
            path,
            "the database file was deleted or moved under this node; nothing is written until it is back at its path",
        )),
        Err(e) => Err(unavailable(path, e)),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        reason: format!("SQLite store {}: {e}; sessions continue locally, replication paused", path.display()),
        retry_after: Duration::from_millis(200),
    }
}

fn map_err(path: &Path, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase => {
                StoreError::Corrupt(format!("{}: {e}", path.display()))
            }
            _ => unavailable(path, e),
        },
        _ => unavailable(path, e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`. `busy_timeout` is how long a write waits for another
    /// process's write lock before the operation reports the store unavailable.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        let cannot_open = |e: rusqlite::Error| match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly) =>
            {
                let hint = "the file and its directory must exist and be writable: SQLite writes -wal and -shm files \
                            beside it";
                StoreError::Unavailable {
                    reason: format!("SQLite store {}: {e} ({hint})", path.display()),
                    retry_after: Duration::from_secs(1),
                }
            }
            _ => map_err(path, e),
        };
        let conn = Connection::open(path).map_err(cannot_open)?;
        conn.busy_timeout(busy_timeout).map_err(|e| map_err(path, e))?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES).map_err(cannot_open)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS records (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL,
                 version INTEGER NOT NULL,
                 expires_at INTEGER
             );
             CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta (id, seq) VALUES (0, 0);",
        )
        .map_err(cannot_open)?;
        let file = std::fs::metadata(path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        let checkpointer = Arc::new(Checkpointer::start(path));
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            file,
            _checkpointer: checkpointer,
        })
    }

    /// The live records whose keys start with `prefix`, read from the file at `path` on a read-only connection:
    /// no lock taken beyond a reader's, nothing created, no checkpointer (`charging-ra dump-store`, beside running
    /// nodes).
    pub fn read_only_scan(path: &Path, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let c = Connection::open_with_flags(path, flags).map_err(|e| map_err(path, e))?;
        c.busy_timeout(Duration::from_secs(5)).map_err(|e| map_err(path, e))?;
        scan(&c, prefix).map_err(|e| map_err(path, e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes expired records every `interval`, for as long as the runtime runs (reads already ignore them; this
    /// keeps the file from growing with what crashed nodes left).
    pub fn spawn_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval);
            t.tick().await;
            loop {
                t.tick().await;
                match store.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(records = n, "expired records swept"),
                    Err(e) => tracing::warn!(error = %e, "sweeping expired records failed"),
                }
            }
        })
    }

    /// Deletes expired records; returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.blocking(move |c, _| {
            c.execute("DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?1", params![now_ms()])
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Path) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, path, file) = (self.conn.clone(), self.path.clone(), self.file);
        tokio::task::spawn_blocking(move || {
            same_file(&path, file)?;
            let mut c = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c, &path).map_err(|e| map_err(&path, e))
        })
        .await
        .map_err(|e| unavailable(&self.path, e))?
    }
}

/// A transaction begun on a connection: rolled back when it is left without a COMMIT, by an error or a panic, so that
/// nothing of a failed batch applies and the file's write lock, which every node on the host waits for, is not kept.
struct Open<'c>(&'c Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit()
            && let Err(e) = self.0.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "SQLite rollback failed; the next batch tries again");
        }
    }
}

/// The live records whose keys start with `prefix`, in key order: keys between the prefix and the prefix followed
/// by the highest code point.
fn scan(c: &Connection, prefix: &str) -> Result<Vec<(String, Versioned)>, rusqlite::Error> {
    let mut st = c.prepare_cached(
        "SELECT key, value, version FROM records
         WHERE key >= ?1 AND key < ?2 AND (expires_at IS NULL OR expires_at > ?3) ORDER BY key",
    )?;
    let upper = format!("{prefix}\u{10ffff}");
    let rows = st.query_map(params![prefix, upper, now_ms()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Versioned { value: Bytes::from(r.get::<_, Vec<u8>>(1)?), version: r.get::<_, i64>(2)? as u64 },
        ))
    })?;
    rows.collect()
}

impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = key.to_string();
        self.blocking(move |c, _| {
            c.query_row(
                "SELECT value, version FROM records WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                params![key, now_ms()],
                |r| Ok(Versioned { value: Bytes::from(r.get::<_, Vec<u8>>(0)?), version: r.get::<_, i64>(1)? as u64 }),
            )
            .optional()
        })
        .await
    }

    async fn batch(&self, writes: Vec<Write>) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let (conn, path, file) = (self.conn.clone(), self.path.clone(), self.file);
        tokio::task::spawn_blocking(move || -> Result<Vec<Result<u64, StoreError>>, StoreError> {
            same_file(&path, file)?;
            // A batch that panicked has been rolled back (`Open`): the connection is usable.
            let c = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !c.is_autocommit() {
                // A rollback that failed before: end that transaction first, or BEGIN would fail for good.
                c.execute_batch("ROLLBACK").map_err(|e| map_err(&path, e))?;
            }
            // Transaction control and the sequence's statements are cached like the writes': parsing them for
            // every batch cost 3% of a replicating node's CPU.
            c.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])).map_err(|e| map_err(&path, e))?;
            let _open = Open(&c);
            let now = now_ms();
            let written = || -> Result<Vec<Result<u64, StoreError>>, StoreError> {
                let mut out = Vec::with_capacity(writes.len());
                let err = |e| map_err(&path, e);
                // Each write is one statement whose WHERE clause is the compare-and-set: one B-tree descent per
                // record where a read followed by a write took two. The current version is read only when the
                // condition fails, to report it in the conflict.
                let mut read = c
                    .prepare_cached(
                        "SELECT version FROM records WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    )
                    .map_err(err)?;
                let mut upsert = c
                    .prepare_cached(
                        "INSERT INTO records (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version, expires_at = excluded.expires_at",
                    )
                    .map_err(err)?;
                // Absent: a new row, or one whose expiry has passed (an expired record does not exist).
                let mut create = c
                    .prepare_cached(
                        "INSERT INTO records (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version, expires_at = excluded.expires_at
                         WHERE records.expires_at IS NOT NULL AND records.expires_at <= ?5",
                    )
                    .map_err(err)?;
                let mut replace = c
                    .prepare_cached(
                        "UPDATE records SET value = ?2, version = ?3, expires_at = ?4
                         WHERE key = ?1 AND version = ?5 AND (expires_at IS NULL OR expires_at > ?6)",
                    )
                    .map_err(err)?;
                let mut delete = c.prepare_cached("DELETE FROM records WHERE key = ?1").map_err(err)?;
                let mut delete_version = c
                    .prepare_cached(
                        "DELETE FROM records WHERE key = ?1 AND version = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
                    )
                    .map_err(err)?;
                // The store-wide version sequence is read once and written once per transaction: versions are
                // never reused, across keys and across deletions (fencing tokens).
                let mut seq: i64 = c
                    .prepare_cached("SELECT seq FROM meta WHERE id = 0")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(err)?;
                let first = seq;
                for w in writes {
                    let next = seq + 1;
                    let expires = w.ttl.map(|t| now + t.as_millis() as i64);
                    let changed = match (&w.value, w.expect) {
                        (Some(value), Expect::Any) => upsert.execute(params![w.key, &value[..], next, expires]),
                        (Some(value), Expect::Absent) => create.execute(params![w.key, &value[..], next, expires, now]),
                        (Some(value), Expect::Version(v)) => {
                            replace.execute(params![w.key, &value[..], next, expires, v as i64, now])
                        }
                        (None, Expect::Any) => delete.execute(params![w.key]),
                        (None, Expect::Version(v)) => delete_version.execute(params![w.key, v as i64, now]),
                        // Deleting what must not exist: nothing to do unless a live record is there.
                        (None, Expect::Absent) => match read.query_row(params![w.key, now], |r| r.get::<_, i64>(0)) {
                            Ok(v) => {
                                out.push(Err(StoreError::Conflict { current: Some(v as u64) }));
                                continue;
                            }
                            Err(rusqlite::Error::QueryReturnedNoRows) => delete.execute(params![w.key]).map(|_| 1),
                            Err(e) => Err(e),
                        },
                    }
                    .map_err(err)?;
                    if changed == 0 && !matches!(w.expect, Expect::Any) {
                        let current: Option<i64> =
                            read.query_row(params![w.key, now], |r| r.get(0)).optional().map_err(err)?;
                        out.push(Err(StoreError::Conflict { current: current.map(|v| v as u64) }));
                    } else if w.value.is_some() {
                        seq = next;
                        out.push(Ok(seq as u64));
                    } else {
                        out.push(Ok(0));
                    }
                }
                if seq != first {
                    c.prepare_cached("UPDATE meta SET seq = ?1 WHERE id = 0")
                        .and_then(|mut s| s.execute(params![seq]))
                        .map_err(err)?;
                }
                Ok(out)
            };
            written().and_then(|out| {
                c.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).map_err(|e| map_err(&path, e))?;
                Ok(out)
            })
        })
        .await
        .map_err(|e| unavailable(&self.path, e))?
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |c, _| scan(c, &prefix)).await
    }
}
