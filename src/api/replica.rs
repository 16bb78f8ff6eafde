//! Session replication inside the engine (ARCHITECTURE "Ownership and replication"): which sessions are written to
//! the store, when, and what a node does with a session it holds no state for.
//!
//! Local memory is the master. A replicated session is written
//!
//! - **ahead** of every CCR it sends (write-ahead): the snapshot holding the request, its CC-Request-Number and the
//!   usage it reports is committed before the request is handed to the router. Many sessions' snapshots go in one
//!   [`Store::batch`] (group commit): while one batch is being written, the next one fills.
//! - **behind** every other change (write-behind): an answer, a RAR, a queued service request mark the session
//!   dirty, and it is written `write_delay` later unless a write-ahead has carried the change first. What an
//!   adopter can miss is therefore only what happened in the last `write_delay` without a CCR leaving: see
//!   docs/replication.md for the list.
//!
//! Every state write is conditional on the version this node last wrote. An adopter stamps the state with its new
//! epoch as the first thing it does, so a stale owner's next write fails: it drops its copy and sends nothing
//! (fencing).
//!
//! While the store is unreachable, sessions keep working locally: requests leave without their write-ahead, the
//! sessions stay dirty (a bounded backlog: beyond `backlog_limit` no new session starts replicating), and
//! everything dirty is written when the store answers again. A store that has not answered a group commit within
//! `write_ahead_wait` counts as unreachable until it does: the requests that batch holds are sent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{ChargingError, Outcome};
use crate::cc::{CcSession, CcSnapshot};
use crate::codec::Message;
use crate::ownership::{Ownership, OwnershipError, Resolution};
use crate::replication::{
    self, ConvergenceRecord, FORMAT, NodeIdentity, ProtocolRecord, StateEncoding, StateRecord, keys,
};
use crate::store::{AnyStore, Expect, Store, StoreError, Write};

/// How an engine replicates (`[replication]` and `[store]` in the config).
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// The store, shared by every node of the cluster.
    pub store: AnyStore,
    /// The cluster id: every key is namespaced by it.
    pub cluster: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// This node's internal Diameter URI, where other nodes proxy to it.
    pub diameter_uri: String,
    /// This node's HTTP front, if any.
    pub http: Option<String>,
    /// This node's SIP address (`host:port`), when it runs the B2BUA.
    pub sip: Option<String>,
    /// How long a write-behind change may wait to be coalesced with later ones.
    pub write_delay: Duration,
    /// How long a request waits for its write-ahead. A group commit still unanswered then sends the requests it
    /// holds, and the store counts as down until it answers: a store that stalls without failing slows charging by
    /// this much at most, instead of holding requests until their Tx runs out.
    pub write_ahead_wait: Duration,
    /// How often the node renews its lease.
    pub lease_period: Duration,
    /// How long a lease lasts: a node is dead this long after its last renewal.
    pub lease_ttl: Duration,
    /// Expiry of a session's records, refreshed while it lives: bounds what a crash can leave behind.
    pub record_ttl: Duration,
    /// Most sessions waiting to be written while the store is unreachable.
    pub backlog_limit: usize,
    /// How session state records are written.
    pub state_encoding: StateEncoding,
    /// Group commits in flight at once (0 counts as 1). With more than one, the next batch is built and queued while
    /// one is written; the store still writes them in order. One is the default: on the memory store and SQLite
    /// two gave more, smaller commits and no more throughput (BENCHMARKS.md, "seventh measurement").
    pub batches_in_flight: usize,
}

/// The most group commits a configuration may put in flight (`[replication] batches_in_flight`,
/// `load --batches-in-flight`).
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;

impl ReplicationConfig {
    /// The defaults for node `node_id` on `store`: write_delay 100 ms, write_ahead_wait 1 s, lease 500 ms / 2 s,
    /// records 7 days, backlog 100,000 sessions, one batch in flight.
    pub fn new(store: AnyStore, cluster: &str, node_id: &str, diameter_uri: &str) -> ReplicationConfig {
        ReplicationConfig {
            store,
            cluster: cluster.into(),
            node_id: node_id.into(),
            diameter_uri: diameter_uri.into(),
            http: None,
            sip: None,
            write_delay: Duration::from_millis(100),
            write_ahead_wait: Duration::from_secs(1),
            lease_period: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(2),
            record_ttl: Duration::from_secs(7 * 24 * 3600),
            backlog_limit: 100_000,
            state_encoding: StateEncoding::default(),
            batches_in_flight: 1,
        }
    }
}

/// What replication has done on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplicationStats {
    /// Sessions held here that are replicated.
    pub replicated: u64,
    /// Sessions waiting to be written.
    pub backlog: u64,
    /// Whether the store is unreachable now.
    pub store_down: bool,
    /// Group commits made.
    pub batches: u64,
    /// Records written (and deleted) in them.
    pub writes: u64,
    /// Batches the store failed.
    pub store_errors: u64,
    /// Batches still unanswered after `write_ahead_wait`: the requests they held were sent without waiting.
    pub slow_batches: u64,
    /// Sessions dropped because another node had adopted them (a refused conditional write).
    pub fenced: u64,
    /// Sessions adopted from a dead node.
    pub adopted: u64,
    /// Sessions loaded from the store (adoptions included).
    pub loaded: u64,
    /// Sessions that could not start replicating (backlog full, or their convergence name taken).
    pub refused: u64,
    /// Group commits that came back (written or failed).
    pub batches_done: u64,
    /// Their total time, from handing the batch to the store to its answer, in microseconds.
    pub batch_time_us: u64,
    /// The longest of them, in microseconds.
    pub batch_time_max_us: u64,
}

/// A request that waits for its write-ahead.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A first transmission.
    Send(Message),
    /// A retransmission to an alternate server (RFC 4006 §5.7).
    Resend { request: Message, avoid_host: Option<String> },
}

/// A replicated session's place in the store.
#[derive(Debug)]
pub(super) struct Replica {
    pub convergence: String,
    /// The service chose the convergence name (it may exist already): its record is created before the others.
    pub chosen: bool,
    pub epoch: u64,
    /// The versions of its three records as this node last wrote (or read) them; `None`: not written yet, or not
    /// known. Every write and deletion is conditional on them; a record of unknown version is never deleted.
    pub conv_version: Option<u64>,
    pub proto_version: Option<u64>,
    pub state_version: Option<u64>,
    /// A write of it is in the batch being written.
    pub in_flight: bool,
    /// A write of it failed without telling whether it was applied: the next conflict is checked by reading the
    /// records back before the session is thought adopted elsewhere.
    pub uncertain: bool,
    /// When the records' TTLs were last refreshed.
    pub refreshed: Instant,
    /// The write-behind scheduled, if any: its key in [`Repl::flushes`].
    pub flush_at: Option<(Instant, u64)>,
    /// Requests waiting for their write-ahead (not yet in a batch).
    pub held: Vec<Outgoing>,
    /// Callers of `start_replicating` waiting for the first write.
    pub waiters: Vec<oneshot::Sender<Result<(), ChargingError>>>,
    /// The timer deadline (wall ms) last written as this node's hint for survivors.
    pub hint_ms: Option<u64>,
    /// A hint of the previous owner's to delete (after adoption).
    pub stale_hint: Option<String>,
}

impl Replica {
    pub fn new(convergence: String, chosen: bool) -> Replica {
        Replica {
            convergence,
            chosen,
            epoch: 1,
            conv_version: None,
            proto_version: None,
            state_version: None,
            in_flight: false,
            uncertain: false,
            refreshed: Instant::now(),
            flush_at: None,
            held: Vec::new(),
            waiters: Vec::new(),
            hint_ms: None,
            stale_hint: None,
        }
    }

    /// All three records are in the store.
    pub fn created(&self) -> bool {
        self.conv_version.is_some() && self.proto_version.is_some() && self.state_version.is_some()
    }

    /// Takes what a write of `rec` returned.
    pub fn learn(&mut self, rec: Rec, version: u64) {
        match rec {
            Rec::Conv => self.conv_version = Some(version),
            Rec::Proto => self.proto_version = Some(version),
            Rec::State => self.state_version = Some(version),
        }
    }
}

/// Which of a session's records a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rec {
    Conv,
    Proto,
    State,
}

/// What is written of a live session: its machine, its recent idempotency keys with their outcomes, and the key
/// of the call whose request is in flight.
pub(super) type Live<'a> = (&'a CcSession, &'a VecDeque<(String, Outcome)>, Option<&'a str>);

/// The records a part of a batch writes, in the order of its writes: at most a session's three, kept inline (a part
/// is built for every write-ahead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Recs {
    len: u8,
    recs: [Rec; 3],
}

impl Recs {
    pub fn new() -> Recs {
        Recs { len: 0, recs: [Rec::Conv; 3] }
    }

    pub fn push(&mut self, rec: Rec) {
        self.recs[usize::from(self.len)] = rec;
        self.len += 1;
    }
}

impl std::ops::Deref for Recs {
    type Target = [Rec];
    fn deref(&self) -> &[Rec] {
        &self.recs[..usize::from(self.len)]
    }
}

/// What a part of a batch does for one session.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PartKind {
    /// Creation and updates: the records not yet written (each only if absent), the state (conditional on its
    /// version), and the TTL refresh of the others when due.
    Write,
    /// Every record of an ended session whose version is known.
    Delete,
}

/// One session's writes in a batch, and what waits for them.
#[derive(Debug)]
pub(super) struct Part {
    pub sid: String,
    pub kind: PartKind,
    /// Index of its first write in the batch.
    pub first: usize,
    /// Which record each of its writes is for.
    pub records: Recs,
    pub sends: Vec<Outgoing>,
    pub waiters: Vec<oneshot::Sender<Result<(), ChargingError>>>,
    /// A deletion's session (it has ended: nothing else holds its place in the store).
    pub ended: Option<Replica>,
}

/// What the records of a session hold now, read back after an uncertain write ran into a conflict.
#[derive(Debug)]
pub(super) struct Resync {
    /// Each record's version, when it exists and was written by this node at the session's epoch.
    pub ours: Vec<(Rec, Option<u64>)>,
    /// A record is held by someone else (another owner, another session's convergence name).
    pub foreign: bool,
}

/// What the state record of a credit-control session holds: the session machine's snapshot and the idempotency
/// keys the service used recently, with their outcomes (a retried call reaching the adopter gets the first
/// answer instead of a second CCR).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SessionState {
    pub cc: CcSnapshot,
    /// [`Outcome`] leaves empty fields out of its JSON (the HTTP front's), so a binary record holds it as JSON.
    #[serde(default, with = "replication::json_in_binary")]
    pub done: Vec<(String, Outcome)>,
    /// The idempotency key of the call whose request is in flight: the same call retried on the adopter waits for
    /// that request's (resent) answer instead of reporting its usage a second time.
    #[serde(default)]
    pub in_flight_key: Option<String>,
}

/// What [`SessionState`] holds, serialized where it is (the same bytes: a test holds the two to that). Every
/// write-ahead encodes one.
#[derive(Serialize)]
#[serde(rename = "SessionState")]
pub(super) struct SessionStateView<'a> {
    cc: crate::cc::SnapshotView<'a>,
    #[serde(serialize_with = "done_json")]
    done: &'a VecDeque<(String, Outcome)>,
    in_flight_key: Option<&'a str>,
}

/// [`replication::json_in_binary`] for the idempotency keys, without building JSON when there are none: most
/// sessions' write-aheads, which would otherwise allocate for the two bytes of `[]`.
fn done_json<S: serde::Serializer>(done: &&VecDeque<(String, Outcome)>, s: S) -> Result<S::Ok, S::Error> {
    if done.is_empty() && !s.is_human_readable() {
        return s.serialize_bytes(b"[]");
    }
    replication::json_in_binary::serialize(done, s)
}

/// Any record of the store as JSON, whichever way it was written: a binary credit-control state record is decoded
/// to the JSON it would have been (`charging-ra dump-store`, tests), and refused when its layout or format is newer
/// than this release's; a JSON record is returned as it is, whatever its format.
pub fn record_json(bytes: &[u8]) -> Result<serde_json::Value, replication::RecordError> {
    if bytes.first() == Some(&replication::BINARY_MARKER) {
        let r: StateRecord<SessionState> = replication::decode(bytes)?;
        return serde_json::to_value(&r).map_err(|e| replication::RecordError::Unreadable(e.to_string()));
    }
    serde_json::from_slice(bytes).map_err(|e| replication::RecordError::Unreadable(e.to_string()))
}

/// A session as loaded from the store by [`load`].
#[derive(Debug)]
pub(super) struct Loaded {
    pub state: SessionState,
    pub convergence: String,
    pub epoch: u64,
    pub state_version: u64,
    pub conv_version: u64,
    pub proto_version: u64,
    pub adopted_from: Option<String>,
    /// The node that wrote the state last.
    pub written_by: String,
}

/// Why a session could not be loaded.
#[derive(Debug)]
pub(super) enum LoadError {
    /// No such replicated session.
    Unknown,
    /// A live node owns it.
    Elsewhere { owner: String, uri: String, http: Option<String> },
    /// A newer epoch wrote its state: another node adopted it meanwhile.
    Fenced,
    /// The store failed, or a record is unreadable.
    Store(String),
}

impl From<OwnershipError> for LoadError {
    fn from(e: OwnershipError) -> Self {
        LoadError::Store(e.to_string())
    }
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        LoadError::Store(e.to_string())
    }
}

/// What a scan of timer hints found.
#[derive(Debug)]
pub(super) struct HintScan {
    /// The sessions whose timers this node arms, with their deadlines (wall ms).
    pub mine: Vec<(String, u64)>,
    /// The nodes to watch from now on ([`Repl::watched`]).
    pub watched: HashSet<String>,
    /// [`Repl::hints_scanned`] and [`Repl::hints_live`] from now on.
    pub scanned: HashSet<String>,
    pub live: Vec<String>,
    /// The newest binary state layout every live node reads.
    pub state_layout: u8,
}

/// Every this many scans of timer hints, every gone node's hints are read again.
pub(super) const FULL_HINT_SCAN_EVERY: u64 = 20;

/// The replication side of the engine's driver.
pub(super) struct Repl {
    pub cfg: ReplicationConfig,
    pub own: Arc<Ownership<AnyStore>>,
    /// Sessions whose write-ahead is waiting for the next batch.
    pub urgent: HashSet<String>,
    /// Dead nodes' timers this node arms (redundantly armed timers): when each fires, the session is adopted.
    pub foreign: BTreeSet<(Instant, String)>,
    /// Sessions with a foreign timer armed or firing.
    pub armed: HashSet<String>,
    /// A scan of dead nodes' timer hints is running.
    pub scanning: bool,
    /// Scans done (the first also takes this node's previous incarnation's hints).
    pub scans: u64,
    /// The other nodes whose timer hints are read whenever they are not alive: every node seen alive (a graceful
    /// stop deletes the lease, and the store forgets an expired one after a while, so a lease cannot be counted
    /// on to say a node is dead), and every node that had hints when this one started. A node that is not alive
    /// and has no hints left is forgotten until it is seen again.
    pub watched: HashSet<String>,
    /// The nodes gone whose hints have been read since the live nodes were last `hints_live`: a node that is gone
    /// writes no new hints, so its hints are read again only when the live nodes change (the rendezvous choice
    /// moves), when it comes back and goes again, or every [`FULL_HINT_SCAN_EVERY`] scans (a timer armed here
    /// whose adoption failed is armed again then).
    pub hints_scanned: HashSet<String>,
    /// The live nodes (sorted) when `hints_scanned` was filled.
    pub hints_live: Vec<String>,
    /// The newest binary state layout every live node read at the last scan of the leases; `None` before the
    /// first. State is written in binary only when the configuration asks for it and every live node reads it: a
    /// node of a release before binary records adopts a session only from JSON.
    pub peers_layout: Option<u8>,
    /// This node's convergence record at epoch 1, encoded once: every session created here writes it.
    pub first_conv: bytes::Bytes,
    /// Write-behind schedule: due time and a sequence number (unique, so a key is cancelled by comparing two integers
    /// and no Session-Id is copied to find it) to the session.
    pub flushes: BTreeMap<(Instant, u64), String>,
    /// The sequence number of the last write-behind scheduled.
    pub flush_seq: u64,
    /// Ended sessions whose records are to be deleted.
    pub ending: HashMap<String, Replica>,
    /// Ended sessions whose deletion is being written: a late command for them is answered as unknown, not
    /// loaded back from what is still there.
    pub deleting: HashSet<String>,
    /// Batches started.
    pub started: u64,
    /// Batches completed, in the order they started (a flush waits for the ones due when it was asked).
    pub completed: u64,
    /// The store's answer to the batch started last, once queued for the driver: the next batch calls the store
    /// after it, so batches are written and their results delivered in the order they started.
    pub chain: Option<oneshot::Receiver<()>>,
    /// Sessions being read back after an uncertain write ([`Resync`]).
    pub resyncing: usize,
    /// Sessions due while a batch holding their previous write is in flight: a session is in one batch at a time
    /// (its next write is conditional on the version that one returns), so they wait for it.
    pub blocked: HashSet<String>,
    /// The store failed; no batch before this.
    pub down_until: Option<Instant>,
    pub stats: ReplicationStats,
}

/// The wall clock in milliseconds since the Unix epoch.
pub(super) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether the timer hint written for survivors (`written`, wall ms) must be written again now that the session's
/// earliest deadline is `deadline` (`None`: no timer).
///
/// A hint only tells a survivor when to load a dead owner's session: loading adopts it and re-arms its timers from
/// their deadlines in the state. A hint earlier than the deadline is therefore harmless (the session is adopted a
/// little early and its timer fires on time), and only a hint later than the deadline, or one already past (which
/// would have a survivor adopt the session as soon as the owner dies), is rewritten. A session's deadline moves later
/// with each request (its Tx) and each grant (Validity-Time): an earlier hint that is still ahead stays, which saves
/// a record per CCR.
pub(super) fn hint_stale(written: Option<u64>, deadline: Option<u64>, wall: u64) -> bool {
    match (written, deadline) {
        (None, None) => false,
        (None, Some(_)) => true,
        (Some(w), d) => w <= wall || d.is_some_and(|d| d < w),
    }
}

impl Repl {
    pub fn new(mut cfg: ReplicationConfig, incarnation: u64) -> Repl {
        // Zero in flight would never write: the configuration file refuses it, the Rust API gets one.
        cfg.batches_in_flight = cfg.batches_in_flight.max(1);
        let me = NodeIdentity {
            node: cfg.node_id.clone(),
            incarnation,
            diameter_uri: cfg.diameter_uri.clone(),
            http: cfg.http.clone(),
            sip: cfg.sip.clone(),
            state_layout: replication::BINARY_LAYOUT,
        };
        let own = Arc::new(
            Ownership::new(Arc::new(cfg.store.clone()), &cfg.cluster, me, cfg.lease_ttl)
                .with_record_ttl(cfg.record_ttl),
        );
        let mut repl = Repl {
            first_conv: bytes::Bytes::new(),
            cfg,
            own,
            urgent: HashSet::default(),
            foreign: BTreeSet::new(),
            armed: HashSet::default(),
            scanning: false,
            scans: 0,
            watched: HashSet::default(),
            hints_scanned: HashSet::default(),
            hints_live: Vec::new(),
            peers_layout: None,
            flushes: BTreeMap::new(),
            flush_seq: 0,
            ending: HashMap::default(),
            deleting: HashSet::default(),
            started: 0,
            completed: 0,
            chain: None,
            resyncing: 0,
            blocked: HashSet::default(),
            down_until: None,
            stats: ReplicationStats::default(),
        };
        repl.first_conv = replication::encode(&repl.convergence_record(1));
        repl
    }

    /// Batches being written (results are delivered in the order batches start): at most
    /// [`ReplicationConfig::batches_in_flight`].
    pub fn writing(&self) -> usize {
        (self.started - self.completed) as usize
    }

    /// Whether a session has ended and its records are being deleted.
    pub fn ended(&self, sid: &str) -> bool {
        self.ending.contains_key(sid) || self.deleting.contains(sid)
    }

    /// Whether the store is known to be failing now.
    pub fn down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|t| t > now)
    }

    /// Sessions waiting to be written.
    pub fn backlog(&self) -> usize {
        self.urgent.len() + self.flushes.len() + self.ending.len() + self.blocked.len()
    }

    /// A session's write came back (or its read-back did): if it became due meanwhile, it goes in the next batch.
    pub fn unblock(&mut self, sid: &str, r: &mut Replica) {
        if self.blocked.remove(sid) {
            self.write_now(sid, r);
        }
    }

    /// The earliest moment the driver must wake for replication.
    pub fn next_wake(&self) -> Option<Instant> {
        let foreign = self.foreign.first().map(|(t, _)| *t);
        let writes = self.next_write();
        match (foreign, writes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_write(&self) -> Option<Instant> {
        if self.writing() >= self.cfg.batches_in_flight {
            return None;
        }
        let flush = self.flushes.first_key_value().map(|((t, _), _)| *t);
        match self.down_until {
            Some(d) if !self.urgent.is_empty() || !self.ending.is_empty() => Some(d),
            Some(d) => flush.map(|f| f.max(d)),
            None => flush,
        }
    }

    /// Marks a session for a write-ahead in the next batch. The write-behind it replaces, if any (the usual case:
    /// an answer's, then the session's next request), gives up its copy of the Session-Id for it.
    pub fn write_now(&mut self, sid: &str, r: &mut Replica) {
        let behind = r.flush_at.take().and_then(|k| self.flushes.remove(&k));
        self.urgent.insert(behind.unwrap_or_else(|| sid.to_string()));
    }

    /// Marks a session for a write-behind `write_delay` from now (unless one is already due).
    pub fn write_later(&mut self, sid: &str, r: &mut Replica, now: Instant) {
        if r.flush_at.is_some() || self.urgent.contains(sid) {
            return;
        }
        self.flush_seq += 1;
        let k = (now + self.cfg.write_delay, self.flush_seq);
        r.flush_at = Some(k);
        self.flushes.insert(k, sid.to_string());
    }

    /// Forgets a session's pending writes (it ended or was fenced).
    pub fn forget(&mut self, sid: &str, r: &mut Replica) {
        if let Some(k) = r.flush_at.take() {
            self.flushes.remove(&k);
        }
        self.urgent.remove(sid);
        self.blocked.remove(sid);
    }

    /// The sessions due now: every urgent one and the write-behinds whose time has come.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due: Vec<String> = self.urgent.drain().collect();
        while let Some(e) = self.flushes.first_entry() {
            if e.key().0 > now {
                break;
            }
            due.push(e.remove());
        }
        due
    }

    fn convergence_record(&self, epoch: u64) -> ConvergenceRecord {
        let me = self.own.me();
        ConvergenceRecord {
            format: FORMAT,
            owner: me.node.clone(),
            incarnation: me.incarnation,
            owner_uri: me.diameter_uri.clone(),
            epoch,
        }
    }

    /// The writes of one session's part of a batch, appended to `out`, and the record each is for; `session` (its
    /// machine and idempotency keys) is `None` for a deletion. Returns no write of the state when the
    /// service-chosen convergence name must be claimed first.
    pub fn writes(
        &self,
        sid: &str,
        r: &Replica,
        session: Option<Live<'_>>,
        (now, wall): (Instant, u64),
        out: &mut Vec<Write>,
    ) -> (PartKind, Recs) {
        let cluster = &self.cfg.cluster;
        let ttl = Some(self.cfg.record_ttl);
        let key = |rec| match rec {
            Rec::Conv => keys::convergence(cluster, &r.convergence),
            Rec::Proto => keys::diameter(cluster, sid),
            Rec::State => keys::diameter_state(cluster, &r.convergence, sid),
        };
        let version = |rec| match rec {
            Rec::Conv => r.conv_version,
            Rec::Proto => r.proto_version,
            Rec::State => r.state_version,
        };
        let Some((cc, done, in_flight_key)) = session else {
            // Only records whose version is known, each conditional on it: never another session's or another
            // owner's.
            let mut recs = Recs::new();
            for x in [Rec::State, Rec::Proto, Rec::Conv] {
                if version(x).is_some() {
                    recs.push(x);
                }
            }
            out.extend(recs.iter().map(|&x| Write {
                key: key(x),
                value: None,
                expect: Expect::Version(version(x).expect("known")),
                ttl: None,
            }));
            return (PartKind::Delete, recs);
        };
        let expect = |rec| version(rec).map_or(Expect::Absent, Expect::Version);
        let refresh = r.created() && now.duration_since(r.refreshed) >= self.cfg.record_ttl / 4;
        let mut recs = Recs::new();
        // The convergence and protocol records: created once; their expiry refreshed at a quarter of it,
        // conditional on the versions this node wrote (a stale owner must not renew an adopter's records).
        if r.conv_version.is_none() || refresh {
            recs.push(Rec::Conv);
            let conv = match r.epoch {
                1 => self.first_conv.clone(),
                epoch => replication::encode(&self.convergence_record(epoch)),
            };
            out.push(Write { key: key(Rec::Conv), value: Some(conv), expect: expect(Rec::Conv), ttl });
            if r.chosen && r.conv_version.is_none() {
                // A name the service chose may be taken: claim it alone first, so that nothing of this session
                // points at somebody else's convergence record.
                return (PartKind::Write, recs);
            }
        }
        if r.proto_version.is_none() || refresh {
            recs.push(Rec::Proto);
            let proto = ProtocolRecord {
                format: FORMAT,
                associated: r.convergence.clone(),
                owner_uri: self.cfg.diameter_uri.clone(),
            };
            let proto = replication::encode(&proto);
            out.push(Write { key: key(Rec::Proto), value: Some(proto), expect: expect(Rec::Proto), ttl });
        }
        let state = StateRecord {
            format: FORMAT,
            written_by_epoch: r.epoch,
            written_by: self.cfg.node_id.as_str(),
            state: SessionStateView { cc: cc.snapshot_view(now, wall), done, in_flight_key },
        };
        recs.push(Rec::State);
        out.push(Write {
            key: key(Rec::State),
            value: Some(replication::encode_state(&state, self.state_encoding())),
            expect: expect(Rec::State),
            ttl,
        });
        (PartKind::Write, recs)
    }

    /// How state is written now: binary when configured and every live node reads it ([`Repl::peers_layout`]).
    pub fn state_encoding(&self) -> StateEncoding {
        match (self.cfg.state_encoding, self.peers_layout) {
            (StateEncoding::Binary, Some(l)) if l >= replication::BINARY_LAYOUT => StateEncoding::Binary,
            _ => StateEncoding::Json,
        }
    }

    /// The write of this node's timer hint for a session: its earliest deadline, or its removal.
    pub fn hint_write(&self, sid: &str, deadline_ms: Option<u64>) -> Write {
        Write {
            key: keys::deadline(&self.cfg.cluster, &self.cfg.node_id, sid),
            value: deadline_ms.map(|ms| bytes::Bytes::from(ms.to_string())),
            expect: Expect::Any,
            ttl: deadline_ms.map(|_| self.cfg.record_ttl),
        }
    }

    /// Scans the timer hints of the nodes that are not alive (dead by their lease, or watched and gone: see
    /// [`Repl::watched`]) and, on the first scan, of this node's previous incarnation. Returns those this node must
    /// arm (the sessions whose rendezvous choice among the live nodes is this node) and the nodes to watch next.
    pub fn scan_hints(&self) -> impl std::future::Future<Output = Result<HintScan, StoreError>> + use<> {
        let (store, cluster, me, first) =
            (self.cfg.store.clone(), self.cfg.cluster.clone(), self.cfg.node_id.clone(), self.scans == 0);
        let (own, mut watched) = (self.own.clone(), self.watched.clone());
        let full = self.scans.is_multiple_of(FULL_HINT_SCAN_EVERY);
        let (mut scanned, scanned_live) = (self.hints_scanned.clone(), self.hints_live.clone());
        async move {
            let crate::ownership::Members { live, dead, state_layout } = own.members().await?;
            let mut sorted_live = live.clone();
            sorted_live.sort();
            if full || sorted_live != scanned_live {
                scanned.clear();
            }
            let root = format!("{cluster}/deadline/");
            if first {
                // The nodes that had hints before this one started: some may have no lease left to say so.
                for (key, _) in store.scan_prefix(&root).await? {
                    if let Some(node) = key[root.len()..].split('/').next() {
                        watched.insert(node.to_string());
                    }
                }
            }
            watched.extend(dead);
            watched.remove(&me);
            let gone: Vec<String> = watched.iter().filter(|n| !live.contains(n)).cloned().collect();
            // A node seen alive since it was scanned is read again when it next goes.
            scanned.retain(|n| gone.contains(n));
            let mut scan: Vec<String> = gone.into_iter().filter(|n| !scanned.contains(n)).collect();
            if first {
                scan.push(me.clone());
            }
            let mut mine = Vec::new();
            for node in scan {
                let prefix = format!("{root}{node}/");
                let found = store.scan_prefix(&prefix).await?;
                if found.is_empty() {
                    watched.remove(&node);
                } else if node != me {
                    scanned.insert(node.clone());
                }
                for (key, v) in found {
                    let sid = &key[prefix.len()..];
                    let Some(ms) = std::str::from_utf8(&v.value).ok().and_then(|t| t.parse().ok()) else { continue };
                    // This node's previous incarnation's sessions are nobody else's to look after: it is alive.
                    if node == me || replication::timer_owner(sid, &live) == Some(me.as_str()) {
                        mine.push((sid.to_string(), ms));
                    }
                }
            }
            watched.extend(live.into_iter().filter(|n| *n != me));
            Ok(HintScan { mine, watched, scanned, live: sorted_live, state_layout })
        }
    }

    /// Reads a session's records back after an uncertain write met a conflict: which are this node's own (written
    /// at the session's epoch) and at what version.
    pub fn resync(
        &self,
        sid: &str,
        r: &Replica,
    ) -> impl std::future::Future<Output = Result<Resync, StoreError>> + use<> {
        let (store, cluster, me) = (self.cfg.store.clone(), self.cfg.cluster.clone(), self.own.me().clone());
        let (convergence, epoch, sid) = (r.convergence.clone(), r.epoch, sid.to_string());
        async move {
            let mut ours = Vec::new();
            let mut foreign = false;
            if let Some(v) = store.get(&keys::convergence(&cluster, &convergence)).await? {
                let c: ConvergenceRecord =
                    replication::decode(&v.value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let mine = c.owner == me.node && c.incarnation == me.incarnation && c.epoch == epoch;
                foreign |= !mine;
                ours.push((Rec::Conv, mine.then_some(v.version)));
            }
            if let Some(v) = store.get(&keys::diameter(&cluster, &sid)).await? {
                let p: ProtocolRecord =
                    replication::decode(&v.value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let mine = p.associated == convergence;
                foreign |= !mine;
                ours.push((Rec::Proto, mine.then_some(v.version)));
            }
            if let Some(v) = store.get(&keys::diameter_state(&cluster, &convergence, &sid)).await? {
                let s = replication::decode_state_header(&v.value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let mine = s.written_by == me.node && s.written_by_epoch == epoch;
                foreign |= !mine;
                ours.push((Rec::State, mine.then_some(v.version)));
            }
            Ok(Resync { ours, foreign })
        }
    }
}

/// Read-through and adoption: the adoption rule for `sid` (via [`Ownership::resolve`]), then the state. An adopter
/// stamps the state with its epoch before using it, so that the previous owner's next write is refused.
pub(super) async fn load(
    own: Arc<Ownership<AnyStore>>,
    sid: String,
    record_ttl: Duration,
    encoding: StateEncoding,
) -> Result<Loaded, LoadError> {
    let cluster = own.cluster().to_string();
    let (convergence, epoch, conv_version, proto_version, adopted_from) =
        match own.resolve(&keys::diameter(&cluster, &sid)).await? {
            Resolution::Unknown => return Err(LoadError::Unknown),
            Resolution::Proxy { owner, uri, http } => return Err(LoadError::Elsewhere { owner, uri, http }),
            Resolution::Owned { convergence, epoch, version, protocol_version, adopted_from } => {
                (convergence, epoch, version, protocol_version, adopted_from)
            }
        };
    let skey = keys::diameter_state(&cluster, &convergence, &sid);
    for _ in 0..4 {
        let Some(v) = own.store().get(&skey).await? else { return Err(LoadError::Unknown) };
        let mut rec: StateRecord<SessionState> =
            replication::decode(&v.value).map_err(|e| LoadError::Store(format!("{skey}: {e}")))?;
        if !replication::accept_state(rec.written_by_epoch, epoch) {
            return Err(LoadError::Fenced);
        }
        let written_by = rec.written_by.clone();
        if rec.written_by_epoch == epoch && rec.written_by == own.me().node {
            let state = rec.state;
            return Ok(Loaded {
                state,
                convergence,
                epoch,
                state_version: v.version,
                conv_version,
                proto_version,
                adopted_from,
                written_by,
            });
        }
        rec.written_by_epoch = epoch;
        rec.written_by = own.me().node.clone();
        let stamped = replication::encode_state(&rec, encoding);
        match own.store().put(&skey, stamped, Expect::Version(v.version), Some(record_ttl)).await {
            Ok(state_version) => {
                let state = rec.state;
                return Ok(Loaded {
                    state,
                    convergence,
                    epoch,
                    state_version,
                    conv_version,
                    proto_version,
                    adopted_from,
                    written_by,
                });
            }
            // The previous owner wrote in between (its write-ahead landed first): read again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(LoadError::Store("the session's state kept changing during adoption".into()))
}

#[cfg(test)]
mod tests {
    use super::{SessionState, SessionStateView, hint_stale};
    use crate::api::{EventResult, Grant, Outcome, Policy};
    use crate::cc::{CcConfig, CcSession, CcState, FinalUnit};
    use crate::replication::{self, FORMAT, StateEncoding, StateRecord};
    use std::collections::VecDeque;

    #[test]
    fn idempotency_outcomes_read_back_from_either_encoding() {
        // Outcome leaves empty fields out of its JSON; inside a binary record it travels as JSON, so both the
        // sparse and the full shapes must come back whole.
        let cfg = CcConfig {
            application: crate::codec::AppId::CREDIT_CONTROL,
            origin_host: "as1.example.net".into(),
            origin_realm: "example.net".into(),
            destination_realm: "ocs.example.net".into(),
            destination_host: None,
            service_context_id: "32260@3gpp.org".into(),
            tx: std::time::Duration::from_secs(10),
            ccfh: crate::cc::Ccfh::Terminate,
            ddfh: crate::cc::Ddfh::TerminateOrBuffer,
            subscription: None,
        };
        let (now, wall) = (std::time::Instant::now(), 1_795_770_000_000);
        let session = CcSession::new(cfg, "as1;7".into());
        let cc = session.snapshot(now, wall);
        let sparse = Outcome {
            session_id: "as1;7".into(),
            result_code: None,
            granted: vec![],
            ccfh: None,
            state: CcState::PendingU,
            convergence: None,
            policy: None,
            event: None,
        };
        let full = Outcome {
            result_code: Some(2001),
            granted: vec![Grant {
                rating_group: Some(10),
                granted: crate::units::Units { time: Some(300), ..Default::default() },
                validity_time: Some(60),
                threshold: crate::units::Units { time: Some(30), ..Default::default() },
                final_unit: Some(FinalUnit::RestrictAccess(vec!["walled-garden".into()])),
                result_code: 2001,
            }],
            ccfh: Some("CCFH CONTINUE after Tx".into()),
            state: CcState::Open,
            convergence: Some("call-7".into()),
            policy: Some(Policy {
                rules_installed: vec!["r1".into()],
                rules_removed: vec![],
                event_triggers: vec![13],
            }),
            event: Some(EventResult { check_balance_result: Some(0), cost: Some(-5), granted: None }),
            ..sparse.clone()
        };
        // With idempotency keys, and without (most sessions: the view skips building the JSON of none).
        for done in [VecDeque::from([("k1".to_string(), sparse), ("k2".to_string(), full)]), VecDeque::new()] {
            let state =
                SessionState { cc: cc.clone(), done: done.iter().cloned().collect(), in_flight_key: Some("k3".into()) };
            let record = StateRecord { format: FORMAT, written_by_epoch: 2, written_by: "node-b".to_string(), state };
            // What a write-ahead encodes: the same, serialized in place.
            let view =
                SessionStateView { cc: session.snapshot_view(now, wall), done: &done, in_flight_key: Some("k3") };
            let view = StateRecord { format: FORMAT, written_by_epoch: 2, written_by: "node-b", state: view };
            let want = serde_json::to_value(&record).unwrap();
            for encoding in [StateEncoding::Json, StateEncoding::Binary] {
                let bytes = replication::encode_state(&record, encoding);
                assert_eq!(replication::encode_state(&view, encoding), bytes, "{encoding:?}, {} keys", done.len());
                let back: StateRecord<SessionState> = replication::decode(&bytes).unwrap();
                assert_eq!(serde_json::to_value(&back).unwrap(), want, "{encoding:?}, {} keys", done.len());
            }
        }
    }

    #[test]
    fn a_hint_is_rewritten_only_when_late_or_past() {
        let now = 1_000_000;
        // First deadline: written.
        assert!(hint_stale(None, Some(now + 5_000), now));
        assert!(!hint_stale(None, None, now));
        // The deadline moves later (the next request's Tx, a new Validity-Time): the earlier hint stays.
        assert!(!hint_stale(Some(now + 5_000), Some(now + 60_000), now));
        assert!(!hint_stale(Some(now + 5_000), None, now));
        // Earlier than the hint: a survivor would fire late, so it is rewritten.
        assert!(hint_stale(Some(now + 5_000), Some(now + 1_000), now));
        // A hint already past would have survivors adopt at once: rewritten (or removed) with the next state.
        assert!(hint_stale(Some(now), Some(now + 60_000), now));
        assert!(hint_stale(Some(now - 1), None, now));
    }
}
