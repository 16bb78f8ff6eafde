//! The clustered backend: records in one ScyllaDB table (reference schema: `schema/scylla.cql`), every write a
//! lightweight transaction (Paxos, serial consistency `LOCAL_SERIAL` by default) so that compare-and-set holds across
//! every node of every host. Does network I/O through the `scylla` driver; built with the `scylla` cargo feature.
//!
//! # Data model
//!
//! ```text
//! records   PRIMARY KEY ((scope text, bucket int), key text)   value blob, version bigint, expires_at bigint
//!
//! scope  = the key up to its first '/'     c1/conv/x -> c1    own/a -> own    k -> k (no '/': the whole key)
//! bucket = FNV-1a 64 of the whole key mod 256
//! ```
//!
//! A key's partition follows from the key alone, so a read or a write touches one partition. The records of a
//! cluster (keys are `<cluster>/<kind>/…`) are spread over 256 partitions, never one: Paxos serializes conditional
//! writes per partition, so the bucket count is both the number of independent compare-and-set lanes per cluster and
//! the divisor of a partition's size. Scans pay for it with one query per bucket, which suits what they are used
//! for (listing node leases, sessions by prefix: rare). The scope rule, the hash and the bucket count are the stored
//! format: changing any of them orphans every record.
//!
//! The rule a scan prefix must satisfy follows: it contains a '/' (`c1/node/`, `own/`), so that it names its scope in
//! full and every key it matches lives in one of that scope's 256 partitions. A prefix without one would need a full
//! table scan, and [`ScyllaStore::scan_prefix`](Store::scan_prefix) refuses it with `StoreError::Unsupported` instead.
//!
//! # Versions (fencing tokens)
//!
//! A write sets `version = max(previous + 1, now)`, `now` being the writer's wall clock in microseconds since the
//! Unix epoch (a first write: `now`). While a record exists its versions strictly increase whatever the clocks say,
//! because every write is conditional on the version it replaces. After a delete the previous version is gone, and
//! the re-created record starts from its creator's clock: it is above every earlier version of the key as long as no
//! writer's clock ran ahead of the creator's by more than the time between the delete and the re-creation. That is
//! the clock assumption (NTP-synchronized nodes; a skew of milliseconds against deletes and re-creations seconds
//! apart); even when it fails, an old token is accepted again only if it equals the new version to the microsecond.
//!
//! # Expiry
//!
//! A record with a TTL carries `expires_at` (ms since the Unix epoch, writer's clock; `i64::MAX` for none) and reads
//! filter on it, so sub-second TTLs hold. The row also gets a CQL `USING TTL` of the TTL rounded up to whole seconds
//! plus one second of clock margin, after which ScyllaDB removes it: until then an expired row is still there, and
//! a write expecting [`Expect::Absent`] replaces it conditionally on its exact version instead of
//! `INSERT … IF NOT EXISTS`.
//!
//! # Writes
//!
//! Prepared once at [`ScyllaStore::connect`] ("replace what was seen" = `UPDATE … IF version = ? AND expires_at = ?`
//! with the values a previous statement found):
//!
//! ```text
//! put,    Expect::Absent      INSERT … IF NOT EXISTS; found an expired row: replace what was seen
//! put,    Expect::Version(v)  UPDATE … IF version = v AND expires_at > now
//! put,    Expect::Any         read; INSERT … IF NOT EXISTS or replace what was seen, until one applies (8 tries)
//! delete, Expect::Version(v)  DELETE … IF version = v AND expires_at > now
//! delete, Expect::Any         DELETE … IF EXISTS
//! delete, Expect::Absent      read; a live record conflicts, an expired one is deleted IF it is still what was seen
//! ```
//!
//! A row can outlive its columns (`INSERT` without TTL, then an `UPDATE` with one: the row marker stays after the
//! columns expire). Such a row reads as absent, and is replaced with `IF version = null AND expires_at = null`, which
//! holds in a lightweight-transaction condition (there null equals null) for that row and for no row at all.
//!
//! A conditional statement answers with its `[applied]` flag and the row it found, which gives
//! [`StoreError::Conflict`] its `current` version. A conditional write that times out may still apply: it reports
//! [`StoreError::Unavailable`] saying the outcome is unknown, and the caller re-reads.
//!
//! [`Store::batch`] is **not one atomic step** here: a lightweight-transaction batch cannot span partitions, so the
//! writes of a batch run as concurrent individual conditional statements, each succeeding or failing on its own.
//!
//! Keyspaces with tablets do not run lightweight transactions (ScyllaDB 6.x and 2025.x): the keyspace is created with
//! `tablets = {'enabled': false}`.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::PagingState;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use super::{Expect, ScyllaConfig, ScyllaConsistency, ScyllaSerialConsistency, Store, StoreError, Versioned, Write};

/// Partitions per scope (part of the stored format, see the module doc).
const BUCKETS: i32 = 256;
/// Buckets scanned at once by [`ScyllaStore::scan_prefix`].
const SCAN_CONCURRENCY: usize = 32;
/// Writes of one batch in flight at once.
const BATCH_CONCURRENCY: usize = 64;
/// Conditional attempts of an [`Expect::Any`] or [`Expect::Absent`] write before it reports contention.
const MAX_ATTEMPTS: usize = 8;
/// `expires_at` of a record without TTL.
const NEVER: i64 = i64::MAX;
/// The longest CQL TTL ScyllaDB accepts (20 years).
const MAX_CQL_TTL_SECS: u64 = 630_720_000;
/// Added to the CQL TTL so that a writer whose clock is behind ScyllaDB's does not see its record vanish before
/// `expires_at`.
const TTL_MARGIN_SECS: u64 = 1;

impl From<ScyllaConsistency> for Consistency {
    fn from(c: ScyllaConsistency) -> Consistency {
        match c {
            ScyllaConsistency::One => Consistency::One,
            ScyllaConsistency::LocalOne => Consistency::LocalOne,
            ScyllaConsistency::Quorum => Consistency::Quorum,
            ScyllaConsistency::LocalQuorum => Consistency::LocalQuorum,
            ScyllaConsistency::EachQuorum => Consistency::EachQuorum,
            ScyllaConsistency::All => Consistency::All,
        }
    }
}

impl From<ScyllaSerialConsistency> for SerialConsistency {
    fn from(c: ScyllaSerialConsistency) -> SerialConsistency {
        match c {
            ScyllaSerialConsistency::LocalSerial => SerialConsistency::LocalSerial,
            ScyllaSerialConsistency::Serial => SerialConsistency::Serial,
        }
    }
}

/// A store in a ScyllaDB cluster. Cheap to clone: clones share one driver session.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    st: Statements,
    /// `host:port,…` for messages.
    nodes: String,
    keyspace: String,
}

struct Statements {
    get: PreparedStatement,
    scan: PreparedStatement,
    insert: PreparedStatement,
    update_if_version: PreparedStatement,
    update_if_same: PreparedStatement,
    delete_if_version: PreparedStatement,
    delete_if_same: PreparedStatement,
    delete_if_exists: PreparedStatement,
}

impl fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaStore").field("nodes", &self.inner.nodes).field("keyspace", &self.inner.keyspace).finish()
    }
}

/// The partition of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Partition<'k> {
    scope: &'k str,
    bucket: i32,
}

impl<'k> Partition<'k> {
    fn of(key: &'k str) -> Partition<'k> {
        Partition { scope: scope(key), bucket: bucket(key) }
    }
}

/// Everything before the first '/', or the whole key.
fn scope(key: &str) -> &str {
    key.split_once('/').map_or(key, |(s, _)| s)
}

fn bucket(key: &str) -> i32 {
    (fnv1a64(key.as_bytes()) % BUCKETS as u64) as i32
}

/// FNV-1a, 64 bits: stable across platforms and releases, unlike `std`'s hasher.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The least string above every string that starts with `prefix` (`own/` -> `own0`), in UTF-8 byte order, which is
/// code point order and the order of a CQL `text` clustering column. `None` when every character is U+10FFFF.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = if c == '\u{D7FF}' { Some('\u{E000}') } else { char::from_u32(u32::from(c) + 1) };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The version a write sets over a record at `previous` (see the module doc).
fn next_version(previous: Option<i64>, now_us: i64) -> i64 {
    previous.map_or(now_us, |p| now_us.max(p.saturating_add(1)))
}

/// `(CQL TTL in seconds, 0 for none; expires_at)`.
fn expiry(ttl: Option<Duration>, now_ms: i64) -> (i32, i64) {
    match ttl {
        None => (0, NEVER),
        Some(t) => {
            let secs = t.as_secs().saturating_add(u64::from(t.subsec_nanos() > 0) + TTL_MARGIN_SECS);
            let ms = i64::try_from(t.as_millis()).unwrap_or(i64::MAX);
            (secs.min(MAX_CQL_TTL_SECS) as i32, now_ms.saturating_add(ms))
        }
    }
}

/// What a statement found in the row (both `None`: no row, or a row whose columns all expired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    version: Option<i64>,
    expires_at: Option<i64>,
}

impl Found {
    /// Refuses a negative version: no write sets one.
    fn checked(version: Option<i64>, expires_at: Option<i64>) -> Result<Found, StoreError> {
        match version {
            Some(v) if v < 0 => Err(corrupt(format!("negative version {v}"))),
            _ => Ok(Found { version, expires_at }),
        }
    }

    /// The version of the live record, if any.
    fn live(self, now_ms: i64) -> Option<u64> {
        match (self.version, self.expires_at) {
            (Some(v), Some(e)) if e > now_ms => Some(v as u64),
            _ => None,
        }
    }
}

/// A conditional statement's answer.
struct Outcome {
    applied: bool,
    found: Found,
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("ScyllaDB store: {what}"))
}

fn version_of(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative version {v}")))
}

/// A column of an LWT answer, found by name (ScyllaDB returns the old row's columns; which ones depends on the
/// condition, so names, not positions).
fn bigint_column(
    rows: &scylla::response::query_result::QueryRowsResult,
    row: &Row,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    let Some((i, _)) = rows.column_specs().get_by_name(name) else { return Ok(None) };
    match row.columns.get(i) {
        None | Some(None) => Ok(None),
        Some(Some(CqlValue::BigInt(v))) => Ok(Some(*v)),
        Some(Some(other)) => Err(corrupt(format!("column {name} holds {other:?}, expected bigint"))),
    }
}

fn outcome(res: QueryResult) -> Result<Outcome, StoreError> {
    let rows = res.into_rows_result().map_err(|e| corrupt(format!("conditional write answered without rows: {e}")))?;
    let row: Row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| corrupt(format!("conditional write answer: {e}")))?
        .ok_or_else(|| corrupt("conditional write answered with no row"))?;
    let Some((i, _)) = rows.column_specs().get_by_name("[applied]") else {
        return Err(corrupt("conditional write answered without [applied]"));
    };
    let applied = match row.columns.get(i) {
        Some(Some(CqlValue::Boolean(b))) => *b,
        other => return Err(corrupt(format!("[applied] is {other:?}"))),
    };
    let found = Found::checked(bigint_column(&rows, &row, "version")?, bigint_column(&rows, &row, "expires_at")?)?;
    Ok(Outcome { applied, found })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `CREATE TABLE` of `schema/scylla.cql`, in keyspace `ks` (quoted).
fn table_ddl(ks: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {ks}.records (
    scope text,
    bucket int,
    key text,
    value blob,
    version bigint,
    expires_at bigint,
    PRIMARY KEY ((scope, bucket), key)
) WITH CLUSTERING ORDER BY (key ASC)"
    )
}

fn keyspace_ddl(ks: &str, rf: u8, tablets_clause: bool) -> String {
    let tablets = if tablets_clause { " AND tablets = {'enabled': false}" } else { "" };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', \
         'replication_factor': {rf}}}{tablets}"
    )
}

impl ScyllaStore {
    /// Connects to the cluster, creates the schema if `config.create_schema` says so, and prepares every statement.
    /// A cluster that cannot be reached reports [`StoreError::Unavailable`] naming the contact points.
    pub async fn connect(config: &ScyllaConfig) -> Result<ScyllaStore, StoreError> {
        let nodes = config.nodes.join(",");
        let ks = quote_ident(&config.keyspace);
        let unavailable = |what: &str, e: &dyn fmt::Display| StoreError::Unavailable {
            reason: format!("ScyllaDB store at {nodes} (keyspace {}): {what}: {e}", config.keyspace),
            retry_after: Duration::from_secs(1),
        };
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency.into())
            .serial_consistency(Some(config.serial_consistency.into()))
            .request_timeout(Some(config.request_timeout))
            .build();
        let builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        let session = match tokio::time::timeout(config.connect_timeout * 2, builder.build()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unavailable("unreachable", &e)),
            Err(_) => {
                return Err(unavailable("unreachable", &format!("no answer within {:?}", config.connect_timeout * 2)));
            }
        };
        if config.create_schema {
            // Servers that predate tablets (or Cassandra) reject the option: create the keyspace without it.
            if let Err(e) = session.query_unpaged(keyspace_ddl(&ks, config.replication_factor, true), ()).await {
                if !matches!(
                    &e,
                    ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                        DbError::SyntaxError | DbError::ConfigError | DbError::Invalid,
                        _
                    ))
                ) {
                    return Err(unavailable("creating the keyspace", &e));
                }
                session
                    .query_unpaged(keyspace_ddl(&ks, config.replication_factor, false), ())
                    .await
                    .map_err(|e| unavailable("creating the keyspace", &e))?;
            }
            session.query_unpaged(table_ddl(&ks), ()).await.map_err(|e| unavailable("creating the table", &e))?;
        }
        let t = format!("{ks}.records");
        let cols = "scope = ? AND bucket = ? AND key = ?";
        let set = "SET value = ?, version = ?, expires_at = ?";
        let prepare = |cql: String, idempotent: bool| {
            let session = &session;
            let unavailable = &unavailable;
            async move {
                let mut p = session.prepare(cql).await.map_err(|e| unavailable("preparing statements", &e))?;
                p.set_is_idempotent(idempotent);
                Ok::<_, StoreError>(p)
            }
        };
        let st = Statements {
            get: prepare(format!("SELECT value, version, expires_at FROM {t} WHERE {cols}"), true).await?,
            scan: prepare(
                format!(
                    "SELECT key, value, version, expires_at FROM {t} \
                     WHERE scope = ? AND bucket = ? AND key >= ? AND key < ?"
                ),
                true,
            )
            .await?,
            insert: prepare(
                format!(
                    "INSERT INTO {t} (scope, bucket, key, value, version, expires_at) VALUES (?, ?, ?, ?, ?, ?) \
                     IF NOT EXISTS USING TTL ?"
                ),
                false,
            )
            .await?,
            update_if_version: prepare(
                format!("UPDATE {t} USING TTL ? {set} WHERE {cols} IF version = ? AND expires_at > ?"),
                false,
            )
            .await?,
            update_if_same: prepare(
                format!("UPDATE {t} USING TTL ? {set} WHERE {cols} IF version = ? AND expires_at = ?"),
                false,
            )
            .await?,
            delete_if_version: prepare(
                format!("DELETE FROM {t} WHERE {cols} IF version = ? AND expires_at > ?"),
                false,
            )
            .await?,
            delete_if_same: prepare(format!("DELETE FROM {t} WHERE {cols} IF version = ? AND expires_at = ?"), false)
                .await?,
            delete_if_exists: prepare(format!("DELETE FROM {t} WHERE {cols} IF EXISTS"), false).await?,
        };
        Ok(ScyllaStore { inner: Arc::new(Inner { session, st, nodes, keyspace: config.keyspace.clone() }) })
    }

    /// The keyspace.
    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    /// `conditional`: the statement was a conditional write, which may still apply after a timeout.
    fn unavailable(&self, what: &str, e: &ExecutionError, conditional: bool) -> StoreError {
        use RequestAttemptError::{BrokenConnectionError, DbError as Db};
        let timed_out = matches!(
            e,
            ExecutionError::RequestTimeout(_)
                | ExecutionError::LastAttemptError(Db(DbError::WriteTimeout { .. }, _) | BrokenConnectionError(_))
        );
        let overloaded = matches!(
            e,
            ExecutionError::LastAttemptError(Db(DbError::Overloaded | DbError::RateLimitReached { .. }, _))
        );
        let outcome = if conditional && timed_out { ", outcome unknown (re-read before retrying)" } else { "" };
        StoreError::Unavailable {
            reason: format!(
                "ScyllaDB store at {} (keyspace {}): {what}{outcome}: {e}; sessions continue locally, \
                 replication paused",
                self.inner.nodes, self.inner.keyspace
            ),
            retry_after: if overloaded { Duration::from_secs(1) } else { Duration::from_millis(200) },
        }
    }

    async fn execute(&self, st: &PreparedStatement, values: impl SerializeRow) -> Result<QueryResult, StoreError> {
        self.inner.session.execute_unpaged(st, values).await.map_err(|e| self.unavailable("read", &e, false))
    }

    async fn conditional(&self, st: &PreparedStatement, values: impl SerializeRow) -> Result<Outcome, StoreError> {
        let res = self.inner.session.execute_unpaged(st, values).await;
        outcome(res.map_err(|e| self.unavailable("conditional write", &e, true))?)
    }

    /// The row as stored, expired or not (`None`: no row; `None` columns: a row whose columns expired).
    async fn raw(&self, key: &str) -> Result<Option<(Option<Bytes>, Found)>, StoreError> {
        let p = Partition::of(key);
        let res = self.execute(&self.inner.st.get, (p.scope, p.bucket, key)).await?;
        let rows = res.into_rows_result().map_err(|e| corrupt(format!("read of {key:?}: {e}")))?;
        let row = rows
            .maybe_first_row::<(Option<Bytes>, Option<i64>, Option<i64>)>()
            .map_err(|e| corrupt(format!("record {key:?}: {e}")))?;
        row.map(|(value, version, expires_at)| Ok((value, Found::checked(version, expires_at)?))).transpose()
    }

    async fn write(&self, w: Write) -> Result<u64, StoreError> {
        let st = &self.inner.st;
        let p = Partition::of(&w.key);
        let key = w.key.as_str();
        // A version above i64::MAX was never written: -1 matches nothing.
        let expected = |v: u64| i64::try_from(v).unwrap_or(-1);
        match (w.value, w.expect) {
            (Some(value), Expect::Version(v)) => {
                let now = now_ms();
                let (ttl, expires_at) = expiry(w.ttl, now);
                let new = next_version(Some(expected(v)), now_us());
                let o = self
                    .conditional(
                        &st.update_if_version,
                        (ttl, value, new, expires_at, p.scope, p.bucket, key, expected(v), now),
                    )
                    .await?;
                if o.applied { version_of(new) } else { Err(StoreError::Conflict { current: o.found.live(now) }) }
            }
            (None, Expect::Version(v)) => {
                let now = now_ms();
                let o = self.conditional(&st.delete_if_version, (p.scope, p.bucket, key, expected(v), now)).await?;
                if o.applied { Ok(0) } else { Err(StoreError::Conflict { current: o.found.live(now) }) }
            }
            (None, Expect::Any) => {
                self.conditional(&st.delete_if_exists, (p.scope, p.bucket, key)).await?;
                Ok(0)
            }
            (None, Expect::Absent) => {
                let mut seen = self.raw(key).await?.map(|(_, found)| found);
                for _ in 0..MAX_ATTEMPTS {
                    let now = now_ms();
                    let Some(f) = seen else { return Ok(0) };
                    if let Some(current) = f.live(now) {
                        return Err(StoreError::Conflict { current: Some(current) });
                    }
                    // An expired row: remove it unless it changed meanwhile.
                    let o =
                        self.conditional(&st.delete_if_same, (p.scope, p.bucket, key, f.version, f.expires_at)).await?;
                    if o.applied {
                        return Ok(0);
                    }
                    seen = Some(o.found).filter(|f| f.version.is_some() || f.expires_at.is_some());
                }
                Err(self.contended(key))
            }
            (Some(value), expect @ (Expect::Absent | Expect::Any)) => {
                // `None`: believed absent, try INSERT IF NOT EXISTS; `Some`: replace exactly the row seen.
                let mut seen = match expect {
                    Expect::Any => self.raw(key).await?.map(|(_, found)| found),
                    _ => None,
                };
                for _ in 0..MAX_ATTEMPTS {
                    let now = now_ms();
                    let (ttl, expires_at) = expiry(w.ttl, now);
                    let new = next_version(seen.and_then(|f| f.version), now_us());
                    let o = match seen {
                        None => {
                            self.conditional(&st.insert, (p.scope, p.bucket, key, value.clone(), new, expires_at, ttl))
                                .await?
                        }
                        Some(f) => {
                            self.conditional(
                                &st.update_if_same,
                                (ttl, value.clone(), new, expires_at, p.scope, p.bucket, key, f.version, f.expires_at),
                            )
                            .await?
                        }
                    };
                    if o.applied {
                        return version_of(new);
                    }
                    if let (Expect::Absent, Some(current)) = (expect, o.found.live(now)) {
                        return Err(StoreError::Conflict { current: Some(current) });
                    }
                    // What is there now (all null: a row whose columns expired, or none; `IF version = null AND
                    // expires_at = null` holds for both).
                    seen = Some(o.found);
                }
                Err(self.contended(key))
            }
        }
    }

    fn contended(&self, key: &str) -> StoreError {
        StoreError::Unavailable {
            reason: format!(
                "ScyllaDB store at {} (keyspace {}): {key:?} changed under {MAX_ATTEMPTS} conditional writes in a row \
                 (contended); sessions continue locally, replication paused",
                self.inner.nodes, self.inner.keyspace
            ),
            retry_after: Duration::from_millis(50),
        }
    }

    async fn scan_bucket(
        &self,
        scope: &str,
        bucket: i32,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (res, next) = self
                .inner
                .session
                .execute_single_page(&self.inner.st.scan, (scope, bucket, from, to), paging)
                .await
                .map_err(|e| self.unavailable("scan", &e, false))?;
            let rows = res.into_rows_result().map_err(|e| corrupt(format!("scan of {from:?}: {e}")))?;
            for row in rows
                .rows::<(String, Option<Bytes>, Option<i64>, Option<i64>)>()
                .map_err(|e| corrupt(format!("scan of {from:?}: {e}")))?
            {
                let (key, value, version, expires_at) = row.map_err(|e| corrupt(format!("scan of {from:?}: {e}")))?;
                if let (Some(value), Some(version)) = (value, Found::checked(version, expires_at)?.live(now)) {
                    out.push((key, Versioned { value, version }));
                }
            }
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Break(()) => return Ok(out),
                std::ops::ControlFlow::Continue(p) => paging = p,
            }
        }
    }
}

impl Store for ScyllaStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let now = now_ms();
        Ok(match self.raw(key).await? {
            Some((Some(value), found)) => found.live(now).map(|version| Versioned { value, version }),
            _ => None,
        })
    }

    /// Runs the writes concurrently, each its own conditional statement (see the module doc: not one atomic step);
    /// a batch that names a key twice runs in order, one write after the other, as SQLite would apply it. A write
    /// that fails for the store's sake reports [`StoreError::Unavailable`] in its slot; the whole call fails only
    /// when every write did.
    async fn batch(&self, writes: Vec<Write>) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let distinct = writes.iter().map(|w| w.key.as_str()).collect::<HashSet<_>>().len() == writes.len();
        let concurrency = if distinct { BATCH_CONCURRENCY } else { 1 };
        let out: Vec<Result<u64, StoreError>> =
            stream::iter(writes).map(|w| self.write(w)).buffered(concurrency).collect().await;
        if let Some(Err(first @ StoreError::Unavailable { .. })) = out.first()
            && out.iter().all(|r| matches!(r, Err(StoreError::Unavailable { .. })))
        {
            return Err(first.clone());
        }
        Ok(out)
    }

    /// Every live record whose key starts with `prefix`, in key order: one clustering-range query
    /// (`key >= prefix AND key < successor`) per bucket of the prefix's scope, merged.
    ///
    /// A `prefix` without '/' is refused ([`StoreError::Unsupported`]): the prefix must name a scope in full (the part of a key before its first '/',
    /// `own/`, `c1/node/`), which is what makes the scan a bounded number of partition reads instead of a table scan.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let Some((scope, _)) = prefix.split_once('/') else {
            return Err(StoreError::Unsupported(format!(
                "ScyllaDB prefix scan {prefix:?}: a prefix must contain '/' to name its scope (src/store/scylla.rs)"
            )));
        };
        let to = successor(prefix).expect("a prefix containing '/' has a successor");
        let now = now_ms();
        let parts: Vec<Vec<(String, Versioned)>> = stream::iter(0..BUCKETS)
            .map(|b| self.scan_bucket(scope, b, prefix, &to, now))
            .buffer_unordered(SCAN_CONCURRENCY)
            .try_collect()
            .await?;
        let mut all: Vec<(String, Versioned)> = parts.into_iter().flatten().collect();
        // Each bucket's rows arrive sorted: the stable sort merges the runs.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // Test vectors of the FNV reference implementation: the hash is part of the stored format.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(bucket("foobar"), 0xe8);
    }

    #[test]
    fn scope_is_the_first_segment() {
        assert_eq!(Partition::of("c1/conv/abc").scope, "c1");
        assert_eq!(Partition::of("c1/proto/diameter/as1;1;2").scope, "c1");
        assert_eq!(Partition::of("own/a").scope, "own");
        assert_eq!(Partition::of("k").scope, "k");
        assert!((0..BUCKETS).contains(&Partition::of("c1/conv/abc").bucket));
        // The sessions of one cluster do not share one partition.
        let buckets: std::collections::HashSet<i32> = (0..1000).map(|i| bucket(&format!("c1/conv/{i}"))).collect();
        assert!(buckets.len() > BUCKETS as usize * 9 / 10, "{}", buckets.len());
    }

    #[test]
    fn successor_bounds_exactly_the_keys_with_the_prefix() {
        assert_eq!(successor("own/").as_deref(), Some("own0"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(successor("\u{10FFFF}"), None);
        let to = successor("own/").unwrap();
        for k in ["own/", "own/a", "own/\u{10FFFF}x"] {
            assert!(k >= "own/" && k < to.as_str(), "{k}");
        }
        for k in ["own", "own0", "owo", "other/c"] {
            assert!(!(k >= "own/" && k < to.as_str()), "{k}");
        }
    }

    #[test]
    fn versions_increase_over_the_previous_and_follow_the_clock() {
        assert_eq!(next_version(None, 1_000), 1_000);
        assert_eq!(next_version(Some(5), 1_000), 1_000);
        // A previous writer's clock ran ahead: still above it.
        assert_eq!(next_version(Some(2_000), 1_000), 2_001);
        assert_eq!(next_version(Some(i64::MAX), 1_000), i64::MAX);
    }

    #[test]
    fn sub_second_ttls_round_up_with_margin_and_expire_to_the_millisecond() {
        assert_eq!(expiry(None, 10), (0, NEVER));
        assert_eq!(expiry(Some(Duration::from_millis(300)), 10_000), (2, 10_300));
        assert_eq!(expiry(Some(Duration::from_secs(30)), 0), (31, 30_000));
        assert_eq!(expiry(Some(Duration::from_secs(u64::MAX)), 0).0, MAX_CQL_TTL_SECS as i32);
        assert_eq!(Found { version: Some(7), expires_at: Some(100) }.live(99), Some(7));
        assert_eq!(Found { version: Some(7), expires_at: Some(100) }.live(100), None);
        assert_eq!(Found { version: None, expires_at: None }.live(0), None);
    }

    #[test]
    fn config_reads_from_toml_and_names_an_unknown_key() {
        let c: ScyllaConfig = toml::from_str(
            r#"
            nodes = ["10.0.0.5:9042", "10.0.0.6:9042"]
            keyspace = "cra"
            consistency = "QUORUM"
            serial_consistency = "SERIAL"
            request_timeout = "900ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.nodes, ["10.0.0.5:9042", "10.0.0.6:9042"]);
        assert_eq!((c.consistency, c.serial_consistency), (ScyllaConsistency::Quorum, ScyllaSerialConsistency::Serial));
        assert_eq!(c.request_timeout, Duration::from_millis(900));
        assert_eq!((c.connect_timeout, c.create_schema), (ScyllaConfig::default().connect_timeout, false));
        let defaults: ScyllaConfig = toml::from_str("").unwrap();
        assert_eq!(defaults.consistency, ScyllaConsistency::LocalQuorum);
        assert_eq!(defaults.serial_consistency, ScyllaSerialConsistency::LocalSerial);
        let err = toml::from_str::<ScyllaConfig>("keyspaces = \"x\"").unwrap_err().to_string();
        assert!(err.contains("keyspaces"), "{err}");
    }

    #[test]
    fn the_shipped_schema_is_the_one_connect_creates() {
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let file: String = include_str!("../../schema/scylla.cql")
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let file = squash(&file);
        assert!(file.contains(&squash(&table_ddl("charging_ra"))), "{file}");
        assert!(file.contains(&squash(&keyspace_ddl("charging_ra", 3, true))), "{file}");
    }
}
