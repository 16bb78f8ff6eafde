//! The embedding API: a charging service opens Ro or Gx sessions, reports and requests units, terminates, and
//! receives the network's events, while [`Engine`] drives one [`CcSession`] per session over a
//! [`DiameterNode`]. [`http`] puts the same operations behind an HTTP JSON front.
//!
//! One task owns every session machine; the API and the network talk to it through channels, so the protocol
//! decisions stay in the sans-IO [`crate::cc`] module. Each call returns when the request it caused has been
//! answered (or has failed and CCFH/DDFH decided), with the grants and what the engine decided.

pub mod http;
pub mod metrics;
mod replica;

pub use replica::{MAX_BATCHES_IN_FLIGHT, ReplicationConfig, ReplicationStats, record_json};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::cc::{CcConfig, CcEvent, CcOutput, CcSession, CcState, Ccfh, Ddfh, FinalUnit, RequestedAction};
use crate::codec::{AppId, Message, ResultCode, code};
use crate::node::{DiameterNode, IncomingRequest, NodeConfig, NodeError, NodeHandle, RequestError};
use crate::ownership::Ownership;
use crate::store::{AnyStore, Store, StoreError};
use crate::units::Units;
use replica::{Outgoing, Repl, Replica};

/// How long a group commit may take before it counts as failed (the store hangs).
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long before its lease's expiry a node stops sending requests whose write-ahead the store has not confirmed:
/// a quarter of the lease, for the request to reach the server and for the nodes' clocks to differ.
fn lease_margin(lease_ttl: Duration) -> u64 {
    (lease_ttl / 4).as_millis() as u64
}

/// Defaults of one application (Ro or Gx).
#[derive(Clone, Debug, PartialEq)]
pub struct AppSettings {
    /// The server's realm.
    pub destination_realm: String,
    /// The server's host, if requests must go to one.
    pub destination_host: Option<String>,
    /// Service-Context-Id for Ro (32260@3gpp.org IMS, 32251@3gpp.org PS, 32274@3gpp.org SMS…).
    pub service_context_id: String,
    /// Tx (RFC 4006 §13).
    pub tx: Duration,
    /// CCFH until the server says otherwise.
    pub ccfh: Ccfh,
    /// DDFH until the server says otherwise.
    pub ddfh: Ddfh,
    /// Whether a session is replicated from its creation (when the engine replicates at all); `false` leaves it to
    /// [`Engine::start_replicating`], typically once the call is answered.
    pub replicate_by_default: bool,
}

impl AppSettings {
    /// RFC 4006 defaults: Tx 10 s, CCFH TERMINATE, DDFH TERMINATE_OR_BUFFER.
    pub fn new(destination_realm: &str) -> AppSettings {
        AppSettings {
            destination_realm: destination_realm.into(),
            destination_host: None,
            service_context_id: "32260@3gpp.org".into(),
            tx: Duration::from_secs(10),
            ccfh: Ccfh::Terminate,
            ddfh: Ddfh::TerminateOrBuffer,
            replicate_by_default: true,
        }
    }
}

/// Everything an engine needs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The Diameter node (identity, peers, routes).
    pub node: NodeConfig,
    /// Ro defaults.
    pub ro: AppSettings,
    /// Gx defaults.
    pub gx: AppSettings,
    /// Session replication through a shared store; `None` keeps every session in this process only.
    pub replication: Option<ReplicationConfig>,
    /// Sessions this node holds at most; beyond it new ones are refused with [`ChargingError::Overloaded`] rather
    /// than the node growing until it dies. Sessions adopted from a failed node are taken whatever the count:
    /// refusing them would lose calls that exist.
    pub max_sessions: usize,
}

impl EngineConfig {
    /// An engine on `node` with these application defaults, no replication, at most 1,000,000 sessions.
    pub fn new(node: NodeConfig, ro: AppSettings, gx: AppSettings) -> EngineConfig {
        EngineConfig { node, ro, gx, replication: None, max_sessions: 1_000_000 }
    }
}

/// Per-session choices at [`Engine::open_session_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// The convergence name the session's records hang from (a UUIDv7 is made when `None`).
    pub convergence: Option<String>,
    /// Replicate from creation; `None` follows the application's `replicate_by_default`.
    pub replicate: Option<bool>,
    /// The service reports its own usage: after a RAR, an expired Validity-Time or an ASR the engine sends the
    /// service the event ([`CcEvent::ReAuthRequested`], [`CcEvent::ValidityExpired`], [`CcEvent::Aborted`]) and
    /// waits up to Tx for its [`Engine::update`] or [`Engine::terminate`], which carries the used units, before
    /// sending the CCR-U or CCR-T itself. Off: the engine sends it at once (reporting no usage the service has not
    /// reported).
    pub reports_usage: bool,
}

/// Which application a session uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// Ro: online charging (application 4).
    Ro,
    /// Gx: policy (application 16777238).
    Gx,
}

/// The subscriber (Subscription-Id, RFC 4006 §8.46).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// `msisdn` (END_USER_E164), `imsi`, `sip_uri`, `nai`, `private`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Subscription-Id-Data.
    pub data: String,
}

impl Subscriber {
    fn type_value(&self) -> Result<i32, ChargingError> {
        Ok(match self.kind.as_str() {
            "msisdn" | "e164" | "end_user_e164" => 0,
            "imsi" | "end_user_imsi" => 1,
            "sip_uri" | "end_user_sip_uri" => 2,
            "nai" | "end_user_nai" => 3,
            "private" | "end_user_private" => 4,
            other => {
                return Err(ChargingError::Invalid(format!(
                    "subscriber type {other:?}: use msisdn, imsi, sip_uri, nai or private"
                )));
            }
        })
    }
}

/// Units asked for one rating group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatingGroupRequest {
    /// The rating group.
    pub rating_group: u32,
    /// Service-Identifier.
    #[serde(default)]
    pub service_id: Option<u32>,
    /// Units requested (empty: whatever the server grants).
    #[serde(default)]
    pub requested: Units,
}

/// Units used in one rating group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedUnits {
    /// The rating group.
    pub rating_group: u32,
    /// Units used since the last report.
    pub used: Units,
    /// Reporting-Reason (TS 32.299 §7.2.175), e.g. 3 QUOTA_EXHAUSTED.
    #[serde(default)]
    pub reporting_reason: Option<i32>,
}

/// A grant for one rating group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The rating group (`None`: session level).
    pub rating_group: Option<u32>,
    /// Units granted.
    pub granted: Units,
    /// Validity-Time in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity_time: Option<u64>,
    /// Quota thresholds (TS 32.299 Time/Volume/Unit-Quota-Threshold): report when the units left fall to these.
    #[serde(default, skip_serializing_if = "Units::is_empty")]
    pub threshold: Units,
    /// Final-Unit-Indication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_unit: Option<FinalUnit>,
    /// The rating group's Result-Code.
    pub result_code: u32,
}

/// What one operation came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The Session-Id.
    pub session_id: String,
    /// The answer's Result-Code (or Experimental-Result-Code); none when no answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_code: Option<u32>,
    /// Grants and denials per rating group.
    pub granted: Vec<Grant>,
    /// When credit control failed and CCFH/DDFH let the service go on: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ccfh: Option<String>,
    /// The session's state after the operation.
    pub state: CcState,
    /// The session's convergence name (the one given at creation, or the one the engine made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<String>,
    /// Gx: the Charging-Rule-Names installed or removed, and Event-Triggers armed, by this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Event charging: Check-Balance-Result (0 enough credit, 1 no credit) and the cost in hundredths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventResult>,
}

/// Gx policy carried by an answer or RAR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Rules (and rule bases) installed.
    pub rules_installed: Vec<String>,
    /// Rules removed.
    pub rules_removed: Vec<String>,
    /// Event-Trigger values armed.
    pub event_triggers: Vec<i32>,
}

/// The result of an event request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResult {
    /// Check-Balance-Result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_balance_result: Option<i32>,
    /// Value-Digits of Cost-Information (with its Exponent applied to hundredths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<i64>,
    /// Units granted (direct debiting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted: Option<Units>,
}

/// What the network told a session (the stream of [`Engine::events`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionEvent {
    /// The session.
    pub session_id: String,
    /// What happened.
    pub event: CcEvent,
}

/// A session as the engine holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionView {
    /// Session-Id.
    pub session_id: String,
    /// RFC 4006 state.
    pub state: CcState,
    /// This node's Origin-Host (the session is mastered here).
    pub owner: String,
    /// The convergence name, when the session is replicated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence: Option<String>,
    /// The next CC-Request-Number.
    pub cc_request_number: u32,
    /// Quotas per rating group.
    pub quotas: Vec<crate::cc::Quota>,
}

/// Sessions held by a node in one application and state ([`Engine::session_counts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionCount {
    /// `ro` or `gx`.
    pub app: &'static str,
    /// The RFC 4006 state (`Open`, `PendingU`…).
    pub state: String,
    /// How many.
    pub sessions: u64,
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[non_exhaustive]
pub enum ChargingError {
    /// No such session on this node.
    #[error("unknown session {0}")]
    UnknownSession(String),
    /// The request makes no sense in the session's state.
    #[error("session {session_id} is {state:?}: {what}")]
    WrongState {
        /// The session.
        session_id: String,
        /// Its state.
        state: CcState,
        /// What was asked.
        what: String,
    },
    /// The server refused, or credit control failed and the service must end.
    #[error("{reason}")]
    Refused {
        /// The Result-Code, when there was one.
        result_code: Option<u32>,
        /// Why.
        reason: String,
        /// The outcome (grants, state) as far as there is one.
        outcome: Box<Option<Outcome>>,
    },
    /// Bad input from the caller.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Another node owns the session now (it is alive, or it adopted the session from this node).
    #[error("session {session_id} is owned by {}", owner.as_deref().unwrap_or("another node"))]
    Moved {
        /// The session.
        session_id: String,
        /// The owner's node id, when known.
        owner: Option<String>,
        /// Its internal URI, when known.
        uri: Option<String>,
        /// Its HTTP front, when known: where the HTTP front forwards the call.
        http: Option<String>,
    },
    /// The node is at a configured limit (`max_sessions`): try later or another node.
    #[error("node overloaded: {0}")]
    Overloaded(String),
    /// The store could not be read to find a session this node does not hold.
    #[error("replication store unavailable: {0}")]
    StoreUnavailable(String),
    /// The engine has stopped.
    #[error("the charging engine has stopped")]
    Stopped,
}

enum Cmd {
    Open {
        app: App,
        options: SessionOptions,
        extra: Vec<crate::codec::Avp>,
        subscriber: Option<Subscriber>,
        service_context: Option<String>,
        rating_groups: Vec<RatingGroupRequest>,
        reply: oneshot::Sender<Result<Outcome, ChargingError>>,
    },
    Update {
        session_id: String,
        extra: Vec<crate::codec::Avp>,
        used: Vec<UsedUnits>,
        requested: Vec<RatingGroupRequest>,
        key: Option<String>,
        reply: oneshot::Sender<Result<Outcome, ChargingError>>,
    },
    Terminate {
        session_id: String,
        extra: Vec<crate::codec::Avp>,
        used: Vec<UsedUnits>,
        reply: oneshot::Sender<Result<Outcome, ChargingError>>,
    },
    Event {
        subscriber: Option<Subscriber>,
        service_context: Option<String>,
        action: RequestedAction,
        requested: Units,
        service_id: Option<u32>,
        reply: oneshot::Sender<Result<Outcome, ChargingError>>,
    },
    View {
        session_id: String,
        reply: oneshot::Sender<Result<SessionView, ChargingError>>,
    },
    Subscribe {
        reply: oneshot::Sender<mpsc::UnboundedReceiver<SessionEvent>>,
    },
    Counts {
        reply: oneshot::Sender<Vec<SessionCount>>,
    },
    Replicate {
        session_id: String,
        reply: oneshot::Sender<Result<(), ChargingError>>,
    },
    Stats {
        reply: oneshot::Sender<Option<ReplicationStats>>,
    },
    /// Write every dirty session now; answer when the store has them (or cannot take them).
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// Stop driving sessions (a graceful stop, after the flush): no timer fires, nothing more is written, every
    /// later call is answered `Stopped`. The sessions are left in the store as they are, for survivors to adopt.
    Halt {
        reply: oneshot::Sender<()>,
    },
}

impl Cmd {
    /// The session a command is about, when it names one.
    fn session_id(&self) -> Option<&str> {
        match self {
            Cmd::Update { session_id, .. }
            | Cmd::Terminate { session_id, .. }
            | Cmd::View { session_id, .. }
            | Cmd::Replicate { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    /// Answers a command for a session this node cannot serve.
    fn refuse(self, err: ChargingError) {
        match self {
            Cmd::Update { reply, .. } | Cmd::Terminate { reply, .. } => drop(reply.send(Err(err))),
            Cmd::Replicate { reply, .. } => drop(reply.send(Err(err))),
            Cmd::View { reply, .. } => drop(reply.send(Err(err))),
            _ => {}
        }
    }
}

enum Net {
    Answer(String, Result<Message, RequestError>),
    /// A batch of replication writes finished.
    Written(Vec<replica::Part>, Result<Vec<Result<u64, StoreError>>, StoreError>, Duration),
    /// A batch still unanswered after `write_ahead_wait`: the requests it held, per session, to be sent now, and
    /// until when (wall ms, less a margin) this node's lease is known to run.
    StoreSlow(Vec<(String, Vec<Outgoing>)>, u64),
    /// A session this node did not hold was looked up in the store.
    Loaded(String, Box<Result<replica::Loaded, replica::LoadError>>),
    /// A session's records were read back after an uncertain write.
    Resynced(String, Result<replica::Resync, StoreError>),
    /// Dead nodes' timers this node is to arm: (Session-Id, deadline in wall ms).
    Foreign(Result<replica::HintScan, StoreError>),
}

/// Work for a session being loaded from the store, done once it is here.
enum Deferred {
    Cmd(Cmd),
    Request(IncomingRequest),
    /// A dead node's timer for the session fired here: loading it (adopting it) re-arms its timers from their
    /// absolute deadlines, and the expired one fires at once.
    Timer,
}

/// A running charging engine.
#[derive(Clone)]
pub struct Engine {
    cmds: mpsc::UnboundedSender<Cmd>,
    origin_host: String,
    dictionary: Arc<crate::dict::Dictionary>,
    node: NodeHandle,
    /// The node, taken by [`Engine::stop`].
    owned_node: Arc<tokio::sync::Mutex<Option<DiameterNode>>>,
    /// The lease heartbeat and the ownership API, when replicating.
    lease: Option<Lease>,
    /// Counters for metrics, shared with the engine's task and the HTTP front.
    counters: Arc<Counters>,
}

/// Names many sessions share (Origin-Host, realms, Service-Context-Ids): one allocation each, shared by reference
/// count. At most 256 are kept; a name beyond them is allocated per session.
#[derive(Default)]
struct Names(rustc_hash::FxHashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        if self.0.len() < 256 {
            self.0.insert(n.clone());
        }
        n
    }
}

/// Node-wide counters kept outside the engine's task, so the metrics read them without a round trip.
#[derive(Debug, Default)]
struct Counters {
    /// New sessions refused at `max_sessions`.
    refused: AtomicU64,
    /// Requests from the server (RAR, ASR) for a session a live node owns, proxied to it.
    proxied: AtomicU64,
    /// HTTP calls for a session a live node owns, forwarded to its front.
    forwarded: AtomicU64,
}

/// The ownership API and the heartbeat task renewing this node's lease.
type Lease = (Arc<Ownership<AnyStore>>, Arc<tokio::task::JoinHandle<()>>);

/// A waiter for the outcome of the request a call caused.
struct Waiter {
    reply: Option<oneshot::Sender<Result<Outcome, ChargingError>>>,
    key: Option<String>,
}

struct Entry {
    cc: CcSession,
    /// The callers waiting, by the tag their request carries in the session machine.
    /// A small vector, not a map: one waiter at a time is the rule, and an empty one holds no memory.
    waiters: Vec<(u64, Waiter)>,
    next_tag: u64,
    /// Events collected since the last answer, for the outcome.
    collected: Vec<CcEvent>,
    last_answer: Option<Message>,
    /// Idempotency keys already answered, with their outcome (the last 16).
    done: VecDeque<(String, Outcome)>,
    deadline: Option<Instant>,
    /// Its place in the store, when replicated.
    replica: Option<replica::Replica>,
    /// The convergence name (chosen by the service at creation, or made by the engine), for when replication
    /// starts.
    convergence: Option<String>,
    /// Whether the service chose it (it may exist already).
    chosen: bool,
    /// After adoption: the idempotency key of the call whose request was in flight and has been resent.
    resumed_key: Option<String>,
}

impl Engine {
    /// Starts the Diameter node and the engine task.
    ///
    /// A charging service opens a Ro session, reports usage and ends it:
    ///
    /// ```no_run
    /// use charging_ra::api::{App, Engine, RatingGroupRequest, Subscriber, UsedUnits};
    /// use charging_ra::config::Config;
    /// use charging_ra::units::Units;
    ///
    /// # async fn service() -> anyhow::Result<()> {
    /// let config: Config = toml::from_str(
    ///     r#"
    ///     [node]
    ///     id = "as1"
    ///     origin_host = "as1.example.net"
    ///     origin_realm = "example.net"
    ///     [[peers]]
    ///     host = "ocs1.example.net"
    ///     realm = "ocs.example.net"
    ///     address = "192.0.2.10:3868"
    ///     [applications.ro]
    ///     destination_realm = "ocs.example.net"
    ///     "#,
    /// )?;
    /// let dictionary = std::sync::Arc::new(charging_ra::dict::Dictionary::builtin());
    /// let engine = Engine::start(config.engine_config(dictionary)).await?;
    /// let subscriber = Subscriber { kind: "msisdn".into(), data: "46700000001".into() };
    /// let time = |s| Units { time: Some(s), ..Units::default() };
    /// let rg = RatingGroupRequest { rating_group: 100, service_id: None, requested: time(60) };
    /// let opened = engine.open_session(App::Ro, Some(subscriber), None, vec![rg]).await?;
    /// let used = UsedUnits { rating_group: 100, used: time(42), reporting_reason: None };
    /// engine.terminate(&opened.session_id, vec![used]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(config: EngineConfig) -> Result<Engine, NodeError> {
        let origin_host = config.node.router.local.origin_host.clone();
        let origin_realm = config.node.router.local.origin_realm.clone();
        let (node, incoming) = DiameterNode::start(config.node.clone()).await?;
        let handle = node.handle();
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let boot = since_epoch.as_secs();
        // The incarnation changes at every start (microseconds of the start time): a restarted node does not own
        // its previous self's sessions.
        let repl = config.replication.map(|r| Repl::new(r, since_epoch.as_micros() as u64));
        let lease = match &repl {
            Some(r) => {
                let own = r.own.clone();
                if let Err(e) = own.renew_lease().await {
                    tracing::warn!(error = %e, store = %r.cfg.store.describe(), "first lease renewal failed; retrying every period");
                }
                let heartbeat = own.spawn_heartbeat(r.cfg.lease_period);
                tracing::info!(node = %r.cfg.node_id, store = %r.cfg.store.describe(), cluster = %r.cfg.cluster, "replication on");
                Some((own, Arc::new(heartbeat)))
            }
            None => None,
        };
        let counters = Arc::new(Counters::default());
        let driver = Driver {
            repl,
            loading: HashMap::new(),
            flushing: Vec::new(),
            ro: config.ro,
            gx: config.gx,
            origin_host: origin_host.clone(),
            origin_realm,
            node: handle.clone(),
            sessions: FxHashMap::default(),
            names: Names::default(),
            // Seeded from the operating system once: the 62 random bits of one UUIDv7.
            convergence_names: crate::replication::NameGenerator::new(uuid::Uuid::now_v7().as_u128() as u64),
            timers: BTreeSet::new(),
            net_tx,
            subscribers: Vec::new(),
            // RFC 6733 §8.8: <DiameterIdentity>;<high 32 bits>;<low 32 bits>[;<optional value>]: boot time, a
            // counter, and the start's sub-second microseconds, so that two starts within one second (a crash
            // and a quick restart, two engines of one process) do not repeat each other's Session-Ids.
            boot: (boot, since_epoch.subsec_micros()),
            counter: Arc::new(AtomicU64::new(0)),
            max_sessions: config.max_sessions,
            counters: counters.clone(),
            refusing: false,
            halted: false,
        };
        tokio::spawn(driver.run(cmd_rx, net_rx, incoming));
        Ok(Engine {
            cmds,
            origin_host,
            dictionary: config.node.dictionary.clone(),
            node: handle,
            owned_node: Arc::new(tokio::sync::Mutex::new(Some(node))),
            lease,
            counters,
        })
    }

    /// This node's Origin-Host.
    pub fn origin_host(&self) -> &str {
        &self.origin_host
    }

    /// The Diameter node's listening addresses (empty once stopped).
    pub async fn diameter_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.owned_node.lock().await.as_ref().map(|n| n.local_addrs().to_vec()).unwrap_or_default()
    }

    /// The Diameter node's status (peers, counters).
    pub async fn node_status(&self) -> Option<crate::node::NodeStatus> {
        self.node.status().await
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, ChargingError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(make(tx)).map_err(|_| ChargingError::Stopped)?;
        rx.await.map_err(|_| ChargingError::Stopped)
    }

    /// Opens a session (CCR-I) and returns the grants.
    pub async fn open_session(
        &self,
        app: App,
        subscriber: Option<Subscriber>,
        service_context: Option<String>,
        rating_groups: Vec<RatingGroupRequest>,
    ) -> Result<Outcome, ChargingError> {
        self.open_session_with(app, subscriber, service_context, rating_groups, Vec::new(), SessionOptions::default())
            .await
    }

    /// Reports usage and asks for more (CCR-U). A repeated `idempotency_key` returns the first outcome without
    /// sending anything.
    pub async fn update(
        &self,
        session_id: &str,
        used: Vec<UsedUnits>,
        requested: Vec<RatingGroupRequest>,
        idempotency_key: Option<String>,
    ) -> Result<Outcome, ChargingError> {
        self.call(|reply| Cmd::Update {
            session_id: session_id.into(),
            extra: Vec::new(),
            used,
            requested,
            key: idempotency_key,
            reply,
        })
        .await?
    }

    /// Ends a session (CCR-T) with its final usage.
    pub async fn terminate(&self, session_id: &str, used: Vec<UsedUnits>) -> Result<Outcome, ChargingError> {
        self.call(|reply| Cmd::Terminate { session_id: session_id.into(), extra: Vec::new(), used, reply }).await?
    }

    /// Like [`Engine::open_session`], with AVPs added to the CCR-I: Service-Information with IMS- or
    /// PS-Information (Ro, TS 32.299); QoS-Information, Supported-Features, Bearer-Identifier… (Gx, TS 29.212).
    pub async fn open_session_with_avps(
        &self,
        app: App,
        subscriber: Option<Subscriber>,
        service_context: Option<String>,
        rating_groups: Vec<RatingGroupRequest>,
        extra: Vec<crate::codec::Avp>,
    ) -> Result<Outcome, ChargingError> {
        self.open_session_with(app, subscriber, service_context, rating_groups, extra, SessionOptions::default()).await
    }

    /// Like [`Engine::open_session_with_avps`], with the session's convergence name and whether it replicates
    /// from creation.
    pub async fn open_session_with(
        &self,
        app: App,
        subscriber: Option<Subscriber>,
        service_context: Option<String>,
        rating_groups: Vec<RatingGroupRequest>,
        extra: Vec<crate::codec::Avp>,
        options: SessionOptions,
    ) -> Result<Outcome, ChargingError> {
        self.call(|reply| Cmd::Open { app, options, extra, subscriber, service_context, rating_groups, reply }).await?
    }

    /// Starts replicating a session (when its application does not replicate by default): returns once its
    /// records are in the store. Does nothing for a session already replicated. Fails when the engine has no
    /// store, or the store is unreachable (the session is then written when it returns).
    pub async fn start_replicating(&self, session_id: &str) -> Result<(), ChargingError> {
        self.call(|reply| Cmd::Replicate { session_id: session_id.into(), reply }).await?
    }

    /// What replication has done on this node; `None` when the engine does not replicate.
    pub async fn replication_stats(&self) -> Option<ReplicationStats> {
        self.call(|reply| Cmd::Stats { reply }).await.ok().flatten()
    }

    /// New sessions refused because the node held `max_sessions` (for metrics).
    pub fn sessions_refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Requests from the server (RAR, ASR) proxied to the live node that owns their session (for metrics).
    pub fn requests_proxied(&self) -> u64 {
        self.counters.proxied.load(Ordering::Relaxed)
    }

    /// HTTP calls forwarded to the live node that owns their session (for metrics).
    pub fn calls_forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }

    /// Counts an HTTP call forwarded to the session's owner.
    pub(crate) fn note_forwarded(&self) {
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// How many sessions this node holds, by application and state (for metrics).
    pub async fn session_counts(&self) -> Vec<SessionCount> {
        self.call(|reply| Cmd::Counts { reply }).await.unwrap_or_default()
    }

    /// This node's ownership API (leases, records, adoption), when the engine replicates.
    pub fn ownership(&self) -> Option<&Arc<Ownership<AnyStore>>> {
        self.lease.as_ref().map(|(o, _)| o)
    }

    /// Like [`Engine::update`], with AVPs added to the CCR-U: on Gx the Event-Trigger that fired,
    /// Charging-Rule-Report with Rule-Failure-Code, Usage-Monitoring-Information with the usage; on Ro a changed
    /// Service-Information.
    pub async fn update_with_avps(
        &self,
        session_id: &str,
        used: Vec<UsedUnits>,
        requested: Vec<RatingGroupRequest>,
        idempotency_key: Option<String>,
        extra: Vec<crate::codec::Avp>,
    ) -> Result<Outcome, ChargingError> {
        self.call(|reply| Cmd::Update {
            session_id: session_id.into(),
            extra,
            used,
            requested,
            key: idempotency_key,
            reply,
        })
        .await?
    }

    /// Like [`Engine::terminate`], with AVPs added to the CCR-T.
    pub async fn terminate_with_avps(
        &self,
        session_id: &str,
        used: Vec<UsedUnits>,
        extra: Vec<crate::codec::Avp>,
    ) -> Result<Outcome, ChargingError> {
        self.call(|reply| Cmd::Terminate { session_id: session_id.into(), extra, used, reply }).await?
    }

    /// The dictionary this engine's node validates with (to build AVPs by name).
    pub fn dictionary(&self) -> &Arc<crate::dict::Dictionary> {
        &self.dictionary
    }

    /// Event charging (CCR-E).
    pub async fn event(
        &self,
        subscriber: Option<Subscriber>,
        service_context: Option<String>,
        action: RequestedAction,
        requested: Units,
        service_id: Option<u32>,
    ) -> Result<Outcome, ChargingError> {
        self.call(|reply| Cmd::Event { subscriber, service_context, action, requested, service_id, reply }).await?
    }

    /// A session's state (`None` when no node has it, or another node does: see [`Engine::view`]).
    pub async fn session(&self, session_id: &str) -> Option<SessionView> {
        self.view(session_id).await.ok()
    }

    /// A session's state, or why this node cannot show it: unknown, or owned by another live node (`Moved`, with
    /// where to ask).
    pub async fn view(&self, session_id: &str) -> Result<SessionView, ChargingError> {
        self.call(|reply| Cmd::View { session_id: session_id.into(), reply }).await?
    }

    /// Every event the network causes from now on (re-auth, abort, policy changes, validity expiry, final units).
    pub async fn events(&self) -> Result<mpsc::UnboundedReceiver<SessionEvent>, ChargingError> {
        self.call(|reply| Cmd::Subscribe { reply }).await
    }

    /// Stops the Diameter node (DPR to every peer).
    pub async fn stop(&self) {
        if let Some(node) = self.owned_node.lock().await.take() {
            // What write-behind still holds goes to the store first, so that whoever adopts these sessions sees
            // them as they are now (a graceful stop loses nothing; a crash loses at most `write_delay`).
            let _ = self.call(|reply| Cmd::Flush { reply }).await;
            // Then nothing more happens to the sessions here: with the lease given up, a survivor may adopt any of
            // them at once, and a timer firing here (a CCR-U that cannot leave, CCFH ending the session and
            // deleting its records) would undo the adoption. Nor do the failures of the requests DPR leaves
            // unanswered reach them.
            let _ = self.call(|reply| Cmd::Halt { reply }).await;
            node.stop(crate::peer::DisconnectCause::Rebooting).await;
            // Give the lease up: survivors adopt this node's sessions on their next event instead of waiting
            // for the lease to run out.
            if let Some((own, heartbeat)) = &self.lease {
                heartbeat.abort();
                if let Err(e) = own.release_lease().await {
                    tracing::warn!(error = %e, "could not release the lease; survivors wait for it to expire");
                }
            }
        }
    }
}

impl Entry {
    fn new(cc: CcSession, reply: Option<oneshot::Sender<Result<Outcome, ChargingError>>>) -> Entry {
        let waiters = reply.map(|reply| vec![(0, Waiter { reply: Some(reply), key: None })]).unwrap_or_default();
        Entry {
            cc,
            waiters,
            next_tag: 1,
            collected: Vec::new(),
            last_answer: None,
            done: VecDeque::new(),
            deadline: None,
            replica: None,
            convergence: None,
            chosen: false,
            resumed_key: None,
        }
    }

    /// Fails every caller waiting on this session.
    fn fail_all(&mut self, err: &ChargingError) {
        for (_, w) in self.waiters.drain(..) {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(err.clone()));
            }
        }
        if let Some(r) = &mut self.replica {
            for w in r.waiters.drain(..) {
                let _ = w.send(Err(err.clone()));
            }
        }
    }

    /// The waiter of this tag, removed; the vector's memory goes with the last one.
    fn take_waiter(&mut self, tag: u64) -> Option<Waiter> {
        let i = self.waiters.iter().position(|(t, _)| *t == tag)?;
        let (_, w) = self.waiters.swap_remove(i);
        if self.waiters.is_empty() {
            self.waiters = Vec::new();
        }
        Some(w)
    }

    fn waiter(&mut self, w: Waiter) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.waiters.push((tag, w));
        tag
    }

    /// A request is settled: the events since the previous one and its answer are its outcome.
    fn settle(&mut self, sid: &str, tag: Option<u64>, dropped: bool) {
        if dropped {
            if let Some(reply) = tag.and_then(|t| self.take_waiter(t)).and_then(|w| w.reply) {
                let state = self.cc.state();
                let _ = reply.send(Err(ChargingError::WrongState {
                    session_id: sid.into(),
                    state,
                    what: "the session ended before this request could be sent".into(),
                }));
            }
            return;
        }
        let events = std::mem::take(&mut self.collected);
        let answer = self.last_answer.take();
        let Some(w) = tag.and_then(|t| self.take_waiter(t)) else {
            // After adoption the first request to settle is the one the previous owner had sent: its caller's
            // idempotency key gets its outcome, so that call retried here is answered without a second report.
            if let (None, Some(k)) = (tag, self.resumed_key.take()) {
                let mut o = outcome(sid, &self.cc, answer.as_ref(), &events);
                o.convergence = self.convergence.clone();
                if self.done.len() == 16 {
                    self.done.pop_front();
                }
                self.done.push_back((k, o));
            }
            return;
        };
        let mut outcome = outcome(sid, &self.cc, answer.as_ref(), &events);
        outcome.convergence = self.convergence.clone();
        let refused = events.iter().find_map(|ev| match ev {
            CcEvent::Terminate { result_code, reason } => Some((result_code.map(|r| r.0), reason.clone())),
            _ => None,
        });
        if let (Some(k), None) = (&w.key, &refused) {
            if self.done.len() == 16 {
                self.done.pop_front();
            }
            self.done.push_back((k.clone(), outcome.clone()));
        }
        if let Some(reply) = w.reply {
            let r = match refused {
                Some((result_code, reason)) => {
                    Err(ChargingError::Refused { result_code, reason, outcome: Box::new(Some(outcome)) })
                }
                None => Ok(outcome),
            };
            let _ = reply.send(r);
        }
    }
}

struct Driver {
    /// Replication, when configured.
    repl: Option<Repl>,
    /// Names the sessions' configurations share.
    names: Names,
    /// Sessions being looked up in the store, with the work waiting for them.
    loading: HashMap<String, Vec<Deferred>>,
    /// Callers of a flush, with the number of completed batches that answers them.
    flushing: Vec<(u64, oneshot::Sender<()>)>,
    ro: AppSettings,
    gx: AppSettings,
    origin_host: String,
    origin_realm: String,
    node: NodeHandle,
    /// Boxed: the table then holds a pointer per session, not a whole entry (with the table's spare room, that
    /// was over 800 octets per session).
    /// FxHash: the keys are Session-Ids this cluster made (a peer's RAR only looks one up), so a peer cannot fill
    /// the table with colliding keys; SipHash cost 2% of the engine's time here.
    sessions: FxHashMap<String, Box<Entry>>,
    /// Convergence names for sessions whose service chose none.
    convergence_names: crate::replication::NameGenerator,
    timers: BTreeSet<(Instant, String)>,
    net_tx: mpsc::UnboundedSender<Net>,
    subscribers: Vec<mpsc::UnboundedSender<SessionEvent>>,
    /// Start time: seconds (the Session-Id's high part) and sub-second microseconds (its optional part).
    boot: (u64, u32),
    counter: Arc<AtomicU64>,
    max_sessions: usize,
    counters: Arc<Counters>,
    /// Refusing new sessions at `max_sessions` (logged once per episode).
    refusing: bool,
    /// Halted by a graceful stop: the run loop ends.
    halted: bool,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut net: mpsc::UnboundedReceiver<Net>,
        mut incoming: mpsc::Receiver<IncomingRequest>,
    ) {
        // Survivors look for dead nodes' timers every lease period (redundantly armed timers).
        let period = self.repl.as_ref().map_or(Duration::from_secs(3600), |r| r.cfg.lease_period);
        let mut scan = tokio::time::interval(period);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.timers.iter().next().map(|(t, _)| *t);
            let next = match self.repl.as_ref().and_then(Repl::next_wake) {
                Some(r) => Some(next.map_or(r, |t| t.min(r))),
                None => next,
            };
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(n) = net.recv() => self.network(n),
                Some(req) = incoming.recv() => self.server_request(req),
                _ = sleep_until(next) => self.timeouts(),
                _ = scan.tick(), if self.repl.is_some() => self.scan_hints(),
            }
            if self.halted {
                // The sessions, their timers and the callers waiting on them go with the driver: callers get
                // `Stopped`, and the store keeps each session as the flush wrote it.
                tracing::info!(sessions = self.sessions.len(), "engine halted; sessions left to the cluster");
                break;
            }
            self.write_batch();
            if !self.flushing.is_empty() {
                let (done, down, quiet) = match &self.repl {
                    Some(r) => (
                        // A session read back after an uncertain write is written after it: not done before.
                        if r.resyncing == 0 { r.completed } else { 0 },
                        r.down(Instant::now()),
                        r.writing() == 0 && r.resyncing == 0 && r.urgent.is_empty() && r.blocked.is_empty(),
                    ),
                    None => (u64::MAX, true, true),
                };
                for (target, f) in std::mem::take(&mut self.flushing) {
                    if done >= target || down || quiet {
                        let _ = f.send(());
                    } else {
                        self.flushing.push((target, f));
                    }
                }
            }
        }
    }

    /// The refusal of a new session when `max_sessions` are held: one warning when refusing starts, a count always.
    fn at_limit(&mut self) -> Option<ChargingError> {
        if self.sessions.len() < self.max_sessions {
            if self.refusing {
                self.refusing = false;
                tracing::info!(sessions = self.sessions.len(), "below max_sessions again: new sessions accepted");
            }
            return None;
        }
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if !self.refusing {
            self.refusing = true;
            tracing::warn!(max_sessions = self.max_sessions, "max_sessions held: new sessions refused until some end");
        }
        Some(ChargingError::Overloaded(format!("this node holds its maximum of {} sessions", self.max_sessions)))
    }

    fn session_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{};{};{};{:x}", self.origin_host, self.boot.0, n, self.boot.1)
    }

    fn cc_config(
        &mut self,
        app: App,
        subscriber: Option<&Subscriber>,
        service_context: Option<String>,
    ) -> Result<CcConfig, ChargingError> {
        let s = if app == App::Ro { &self.ro } else { &self.gx };
        let subscription = subscriber.map(|s| s.type_value().map(|t| (t, s.data.clone()))).transpose()?;
        let names = &mut self.names;
        Ok(CcConfig {
            application: if app == App::Ro { AppId::CREDIT_CONTROL } else { AppId::GX },
            origin_host: names.get(&self.origin_host),
            origin_realm: names.get(&self.origin_realm),
            destination_realm: names.get(&s.destination_realm),
            destination_host: s.destination_host.clone(),
            service_context_id: names.get(service_context.as_deref().unwrap_or(&s.service_context_id)),
            tx: s.tx,
            ccfh: s.ccfh,
            ddfh: s.ddfh,
            subscription,
        })
    }

    fn command(&mut self, c: Cmd) {
        let now = Instant::now();
        // Read-through: a command for a session this node does not hold loads it from the store (adopting it
        // from a dead owner) and runs once it is here.
        if let Some(sid) = c.session_id()
            && !self.sessions.contains_key(sid)
            && let Some(repl) = &self.repl
        {
            let sid = sid.to_string();
            if repl.ended(&sid) {
                // It ended here; what the store still has of it is being deleted.
                return c.refuse(ChargingError::UnknownSession(sid));
            }
            return self.load(sid, Deferred::Cmd(c));
        }
        match c {
            Cmd::Open { app, options, extra, subscriber, service_context, rating_groups, reply } => {
                if let Some(e) = self.at_limit() {
                    return drop(reply.send(Err(e)));
                }
                let cfg = match self.cc_config(app, subscriber.as_ref(), service_context) {
                    Ok(c) => c,
                    Err(e) => return drop(reply.send(Err(e))),
                };
                let sid = self.session_id();
                let mut cc = CcSession::new(cfg, sid.clone());
                let rgs: Vec<(Option<u32>, Units)> = if app == App::Gx {
                    vec![]
                } else {
                    rating_groups.iter().map(|r| (Some(r.rating_group), r.requested)).collect()
                };
                cc.attach(extra);
                cc.service_reports_usage(options.reports_usage);
                cc.start(now, &rgs, Some(0));
                let mut entry = Entry::new(cc, Some(reply));
                entry.chosen = options.convergence.is_some();
                entry.convergence =
                    Some(options.convergence.unwrap_or_else(|| self.convergence_names.next_name(replica::wall_ms())));
                let settings = if app == App::Ro { &self.ro } else { &self.gx };
                if let Some(repl) = &mut self.repl
                    && options.replicate.unwrap_or(settings.replicate_by_default)
                {
                    if repl.down(now) && repl.backlog() >= repl.cfg.backlog_limit {
                        repl.stats.refused += 1;
                        tracing::warn!(session = %sid, backlog = repl.backlog(), "store unreachable and replication backlog full: session not replicated");
                    } else {
                        let convergence = entry.convergence.clone().unwrap_or_default();
                        entry.replica = Some(Replica::new(convergence, entry.chosen));
                    }
                }
                self.sessions.insert(sid.clone(), Box::new(entry));
                self.pump(&sid, now);
            }
            Cmd::Update { session_id, extra, used, requested, key, reply } => {
                let Some(e) = self.sessions.get_mut(&session_id) else {
                    return drop(reply.send(Err(ChargingError::UnknownSession(session_id))));
                };
                if let Some(k) = &key
                    && let Some((_, o)) = e.done.iter().find(|(d, _)| d == k)
                {
                    return drop(reply.send(Ok(o.clone())));
                }
                // The call whose request the previous owner had sent, retried here: it waits for that request,
                // resent with the T flag, instead of reporting its usage again.
                if key.is_some() && key == e.resumed_key && e.cc.outstanding_tag().is_none() {
                    let tag = e.waiter(Waiter { reply: Some(reply), key });
                    if e.cc.attach_to_outstanding(tag) {
                        e.resumed_key = None;
                        return;
                    }
                    let w = e.take_waiter(tag).expect("just added");
                    if let Some(r) = w.reply {
                        let _ = r.send(Err(ChargingError::Invalid("the retried call raced its own request".into())));
                    }
                    return;
                }
                if !matches!(e.cc.state(), CcState::Open | CcState::PendingI | CcState::PendingU) {
                    let state = e.cc.state();
                    return drop(reply.send(Err(ChargingError::WrongState {
                        session_id,
                        state,
                        what: "update".into(),
                    })));
                }
                let reason = used.iter().find_map(|u| u.reporting_reason);
                let used_v = used.iter().map(|u| (Some(u.rating_group), u.used)).collect();
                let mut req: Vec<Option<u32>> = requested.iter().map(|r| Some(r.rating_group)).collect();
                if req.is_empty() {
                    req = used.iter().map(|u| Some(u.rating_group)).collect();
                }
                let tag = e.waiter(Waiter { reply: Some(reply), key });
                e.cc.attach(extra);
                e.cc.update(now, used_v, req, reason, Some(tag));
                self.pump(&session_id, now);
            }
            Cmd::Terminate { session_id, extra, used, reply } => {
                let Some(e) = self.sessions.get_mut(&session_id) else {
                    return drop(reply.send(Err(ChargingError::UnknownSession(session_id))));
                };
                if !matches!(e.cc.state(), CcState::Open | CcState::PendingI | CcState::PendingU) {
                    let state = e.cc.state();
                    return drop(reply.send(Err(ChargingError::WrongState {
                        session_id,
                        state,
                        what: "terminate".into(),
                    })));
                }
                let tag = e.waiter(Waiter { reply: Some(reply), key: None });
                e.cc.attach(extra);
                e.cc.terminate(now, used.iter().map(|u| (Some(u.rating_group), u.used)).collect(), Some(tag));
                self.pump(&session_id, now);
            }
            Cmd::Event { subscriber, service_context, action, requested, service_id, reply } => {
                if let Some(e) = self.at_limit() {
                    return drop(reply.send(Err(e)));
                }
                let cfg = match self.cc_config(App::Ro, subscriber.as_ref(), service_context) {
                    Ok(c) => c,
                    Err(e) => return drop(reply.send(Err(e))),
                };
                let sid = self.session_id();
                let mut cc = CcSession::new(cfg, sid.clone());
                cc.event(now, action, requested, service_id, Some(0));
                self.sessions.insert(sid.clone(), Box::new(Entry::new(cc, Some(reply))));
                self.pump(&sid, now);
            }
            Cmd::View { session_id, reply } => {
                let v = self.sessions.get(&session_id).map(|e| SessionView {
                    session_id: session_id.clone(),
                    state: e.cc.state(),
                    owner: self.origin_host.clone(),
                    convergence: e.replica.as_ref().map(|r| r.convergence.clone()),
                    cc_request_number: e.cc.next_request_number(),
                    quotas: e.cc.quotas().to_vec(),
                });
                let _ = reply.send(v.ok_or(ChargingError::UnknownSession(session_id)));
            }
            Cmd::Counts { reply } => {
                let mut by: std::collections::BTreeMap<(&'static str, String), u64> = Default::default();
                for e in self.sessions.values() {
                    let app = if e.cc.application() == AppId::GX { "gx" } else { "ro" };
                    *by.entry((app, format!("{:?}", e.cc.state()))).or_default() += 1;
                }
                let counts = by.into_iter().map(|((app, state), sessions)| SessionCount { app, state, sessions });
                let _ = reply.send(counts.collect());
            }
            Cmd::Subscribe { reply } => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.subscribers.push(tx);
                let _ = reply.send(rx);
            }
            Cmd::Replicate { session_id, reply } => {
                let Some(repl) = &mut self.repl else {
                    return drop(
                        reply.send(Err(ChargingError::Invalid(
                            "this engine has no replication store configured".into(),
                        ))),
                    );
                };
                let Some(e) = self.sessions.get_mut(&session_id) else {
                    return drop(reply.send(Err(ChargingError::UnknownSession(session_id))));
                };
                if e.replica.as_ref().is_some_and(Replica::created) {
                    return drop(reply.send(Ok(())));
                }
                if e.replica.is_none() && repl.down(now) && repl.backlog() >= repl.cfg.backlog_limit {
                    repl.stats.refused += 1;
                    return drop(reply.send(Err(ChargingError::StoreUnavailable(
                        "store unreachable and replication backlog full".into(),
                    ))));
                }
                let (convergence, chosen) = (&e.convergence, e.chosen);
                let r = e.replica.get_or_insert_with(|| {
                    let name = || self.convergence_names.next_name(replica::wall_ms());
                    Replica::new(convergence.clone().unwrap_or_else(name), chosen)
                });
                r.waiters.push(reply);
                repl.write_now(&session_id, r);
            }
            Cmd::Halt { reply } => {
                self.halted = true;
                let _ = reply.send(());
            }
            Cmd::Flush { reply } => match &mut self.repl {
                Some(repl) if !repl.down(now) => {
                    for sid in std::mem::take(&mut repl.flushes).into_values() {
                        if let Some(r) = self.sessions.get_mut(&sid).and_then(|e| e.replica.as_mut()) {
                            r.flush_at = None;
                        }
                        repl.urgent.insert(sid);
                    }
                    // Answered once the batch that takes them has completed: not when the node is idle, which under
                    // load it never is. That is the next batch to start, or, for a session whose previous write is in
                    // flight, the first to start after that write completes: at most `batches_in_flight` from now,
                    // batches completing in order.
                    let target = repl.started + repl.cfg.batches_in_flight as u64;
                    self.flushing.push((target, reply));
                }
                _ => drop(reply.send(())),
            },
            Cmd::Stats { reply } => {
                let stats = self.repl.as_ref().map(|r| {
                    let mut s = r.stats.clone();
                    s.replicated = self.sessions.values().filter(|e| e.replica.is_some()).count() as u64;
                    s.backlog = r.backlog() as u64;
                    s.store_down = r.down(now);
                    s
                });
                let _ = reply.send(stats);
            }
        }
    }

    fn network(&mut self, n: Net) {
        let now = Instant::now();
        let (sid, result) = match n {
            Net::Answer(sid, result) => (sid, result),
            Net::Written(parts, result, took) => return self.written(parts, result, took),
            Net::StoreSlow(held, safe_until) => return self.store_slow(held, safe_until),
            Net::Loaded(sid, result) => return self.loaded(sid, *result),
            Net::Resynced(sid, result) => return self.resynced(sid, result),
            Net::Foreign(result) => return self.foreign(result),
        };
        let Some(e) = self.sessions.get_mut(&sid) else { return };
        match result {
            Ok(answer) => {
                e.last_answer = Some(answer.clone());
                if !e.cc.handle_answer(now, &answer) {
                    e.last_answer = None;
                }
            }
            Err(err) => {
                e.last_answer = None;
                e.cc.handle_send_failure(now, &err.to_string());
            }
        }
        self.pump(&sid, now);
    }

    /// A RAR or ASR from the server.
    fn server_request(&mut self, req: IncomingRequest) {
        let now = Instant::now();
        let sid = req.request.session_id().unwrap_or_default().to_string();
        // What happens to a session off the CCR/CCA path (a server's request, adoption, a timer) is logged inside a
        // `session` span, so every line of it names the session. The hot path has no span: it logs nothing at info.
        let _span = tracing::info_span!("session", id = %sid).entered();
        if !self.sessions.contains_key(&sid)
            && !sid.is_empty()
            && let Some(repl) = &self.repl
            && !repl.ended(&sid)
        {
            return self.load(sid, Deferred::Request(req));
        }
        let Some(e) = self.sessions.get_mut(&sid) else {
            // RFC 6733 §8.3 / §8.5: 5002 for a session we do not know.
            let mut a = Message::answer_to(&req.request);
            a.push(crate::codec::Avp::u32(code::RESULT_CODE, ResultCode::UNKNOWN_SESSION_ID.0))
                .push(crate::codec::Avp::utf8(code::ORIGIN_HOST, &self.origin_host))
                .push(crate::codec::Avp::utf8(code::ORIGIN_REALM, &self.origin_realm));
            req.answer(a);
            return;
        };
        let answer = match req.request.header.code {
            crate::codec::CommandCode::RE_AUTH => e.cc.handle_rar(now, &req.request),
            crate::codec::CommandCode::ABORT_SESSION => e.cc.handle_asr(now, &req.request),
            _ => {
                let mut a = Message::answer_to(&req.request);
                a.push(crate::codec::Avp::u32(code::RESULT_CODE, ResultCode::COMMAND_UNSUPPORTED.0));
                a
            }
        };
        req.answer(answer);
        self.pump(&sid, now);
    }

    fn timeouts(&mut self) {
        let now = Instant::now();
        let mut fired = Vec::new();
        if let Some(repl) = &mut self.repl {
            while repl.foreign.first().is_some_and(|(t, _)| *t <= now) {
                fired.push(repl.foreign.pop_first().expect("first exists").1);
            }
        }
        for sid in fired {
            if self.sessions.contains_key(&sid) {
                // Held here already: its own timer fires.
                if let Some(r) = &mut self.repl {
                    r.armed.remove(&sid);
                }
                continue;
            }
            let _span = tracing::info_span!("session", id = %sid).entered();
            tracing::info!("a dead node's timer fired here: adopting the session");
            self.load(sid, Deferred::Timer);
        }
        let due: Vec<String> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, s)| s.clone()).collect();
        for sid in due {
            if let Some(e) = self.sessions.get_mut(&sid) {
                if e.cc.state() == CcState::Idle && e.cc.has_stored() && e.cc.poll_timeout().is_none() {
                    // RFC 4006 §6.3.2: the stored event request goes again (with the T flag) every Tx until a
                    // server answers it.
                    e.cc.send_stored(now);
                } else {
                    e.cc.handle_timeout(now);
                }
                self.pump(&sid, now);
            }
        }
    }

    /// Hands a request to the router; its answer comes back as [`Net::Answer`].
    fn transmit(&self, sid: &str, o: Outgoing) {
        let (tx, sid) = (self.net_tx.clone(), sid.to_string());
        // The router waits longer than Tx: a late answer still counts (CCFH CONTINUE waits for it).
        let timeout = Some(Duration::from_secs(30));
        let (msg, avoid_host) = match o {
            Outgoing::Send(msg) => (msg, None),
            Outgoing::Resend { request, avoid_host } => (request, avoid_host),
        };
        self.node.request_then(
            msg,
            timeout,
            avoid_host,
            Box::new(move |r| {
                let _ = tx.send(Net::Answer(sid, r));
            }),
        );
    }

    /// Carries out a session's outputs: sends requests (a replicated session's after their write-ahead), forwards
    /// events, re-arms its timer, schedules its write-behind, and forgets it once it has ended. `now` is the moment the
    /// event being handled was read at, the one its session machine was given.
    fn pump(&mut self, sid: &str, now: Instant) {
        let Some(e) = self.sessions.get_mut(sid) else { return };
        let mut send_now = Vec::new();
        while let Some(o) = e.cc.poll_output() {
            let out = match o {
                CcOutput::Send(msg) => Outgoing::Send(msg),
                CcOutput::Resend { request, avoid_host } => {
                    tracing::info!(session = %sid, avoid = ?avoid_host, "no answer within Tx: request sent to an alternate server with the T flag");
                    Outgoing::Resend { request, avoid_host }
                }
                CcOutput::Event(ev) => {
                    let notify = matches!(
                        ev,
                        CcEvent::ReAuthRequested
                            | CcEvent::Aborted
                            | CcEvent::ValidityExpired { .. }
                            | CcEvent::FinalUnitReached { .. }
                            | CcEvent::PolicyUpdate(_)
                            | CcEvent::Terminate { .. }
                    );
                    if notify {
                        let se = SessionEvent { session_id: sid.to_string(), event: ev.clone() };
                        self.subscribers.retain(|s| s.send(se.clone()).is_ok());
                    }
                    e.collected.push(ev);
                    continue;
                }
                CcOutput::Done(tag) => {
                    e.settle(sid, tag, false);
                    continue;
                }
                CcOutput::Dropped(tag) => {
                    e.settle(sid, tag, true);
                    continue;
                }
            };
            // Write-ahead: what the OCS is about to see is in the store before it is sent. While the store is
            // unreachable the request goes at once and the session stays dirty (module replica).
            match (&mut e.replica, &mut self.repl) {
                (Some(r), Some(repl)) if !repl.down(now) => {
                    r.held.push(out);
                    repl.write_now(sid, r);
                }
                _ => send_now.push(out),
            }
        }
        let mut deadline = e.cc.poll_timeout();
        if deadline.is_none() && e.cc.state() == CcState::Idle && e.cc.has_stored() {
            // A stored event request: retried every Tx (see `timeouts`).
            deadline = Some(e.deadline.filter(|d| *d > now).unwrap_or(now + e.cc.tx()));
        }
        if deadline != e.deadline {
            if let Some(old) = e.deadline.take() {
                self.timers.remove(&(old, sid.to_string()));
            }
            if let Some(t) = deadline {
                self.timers.insert((t, sid.to_string()));
            }
            e.deadline = deadline;
        }
        if e.cc.outstanding().is_none() {
            e.cc.release_idle_buffers();
        }
        let ended = e.cc.state() == CcState::Idle && e.waiters.is_empty() && !e.cc.has_stored();
        if let (Some(r), Some(repl)) = (&mut e.replica, &mut self.repl) {
            if ended && r.held.is_empty() {
                repl.forget(sid, r);
            } else {
                repl.write_later(sid, r, now);
            }
        }
        for o in send_now {
            self.transmit(sid, o);
        }
        let Some(e) = self.sessions.get_mut(sid) else { return };
        if ended && e.replica.as_ref().is_none_or(|r| r.held.is_empty()) {
            if let Some(d) = e.deadline.take() {
                self.timers.remove(&(d, sid.to_string()));
            }
            let mut e = self.sessions.remove(sid).expect("present");
            // On session end its records go (RFC 4006 §8: the session is over); TTLs bound what a crash leaves.
            // Callers of start_replicating still waiting learn that the session is gone.
            e.fail_all(&ChargingError::UnknownSession(sid.to_string()));
            if let (Some(r), Some(repl)) = (e.replica, &mut self.repl)
                && (r.in_flight || r.conv_version.is_some() || r.proto_version.is_some() || r.state_version.is_some())
            {
                repl.ending.insert(sid.to_string(), r);
            }
        }
    }

    /// Starts loading a session this node does not hold (or queues the work behind a load already running).
    fn load(&mut self, sid: String, work: Deferred) {
        let Some(repl) = &self.repl else { return };
        if let Some(waiting) = self.loading.get_mut(&sid) {
            return waiting.push(work);
        }
        self.loading.insert(sid.clone(), vec![work]);
        let (own, ttl, encoding, tx) =
            (repl.own.clone(), repl.cfg.record_ttl, repl.state_encoding(), self.net_tx.clone());
        tokio::spawn(async move {
            let r = replica::load(own, sid.clone(), ttl, encoding).await;
            let _ = tx.send(Net::Loaded(sid, Box::new(r)));
        });
    }

    /// A session came back from the store (or did not): master it here and run the work that waited for it.
    fn loaded(&mut self, sid: String, result: Result<replica::Loaded, replica::LoadError>) {
        let now = Instant::now();
        let convergence = result.as_ref().map(|l| l.convergence.as_str()).unwrap_or_default();
        let _span = tracing::info_span!("session", id = %sid, convergence).entered();
        let work = self.loading.remove(&sid).unwrap_or_default();
        let Some(repl) = &mut self.repl else { return };
        repl.armed.remove(&sid);
        let refusal = match result {
            Ok(l) => match CcSession::restore(&l.state.cc, &self.origin_host, now, replica::wall_ms()) {
                Ok(mut cc) => {
                    repl.stats.loaded += 1;
                    if let Some(from) = &l.adopted_from {
                        repl.stats.adopted += 1;
                        tracing::info!(from = %from, epoch = l.epoch, state = ?cc.state(),
                            in_flight = cc.outstanding().is_some(), "session adopted");
                    } else {
                        tracing::debug!(session = %sid, written_by = %l.written_by, "session loaded from the store");
                    }
                    // A request in flight when the owner died goes again, with the T flag and the same number.
                    cc.resume(now);
                    let mut entry = Entry::new(cc, None);
                    entry.done = l.state.done.into();
                    entry.resumed_key = l.state.in_flight_key;
                    let mut r = Replica::new(l.convergence, false);
                    r.epoch = l.epoch;
                    r.state_version = Some(l.state_version);
                    r.conv_version = Some(l.conv_version);
                    r.proto_version = Some(l.proto_version);
                    // The previous owner's timer hint goes; this node writes its own with the next state.
                    // A restarted node adopting its previous incarnation's session has the same key: nothing to delete.
                    r.stale_hint = l
                        .adopted_from
                        .as_ref()
                        .filter(|old| **old != repl.cfg.node_id)
                        .map(|old| crate::replication::keys::deadline(&repl.cfg.cluster, old, &sid));
                    entry.convergence = Some(r.convergence.clone());
                    entry.replica = Some(r);
                    self.sessions.insert(sid.clone(), Box::new(entry));
                    self.pump(&sid, now);
                    for w in work {
                        match w {
                            Deferred::Cmd(c) => self.command(c),
                            Deferred::Request(req) => self.server_request(req),
                            Deferred::Timer => {}
                        }
                    }
                    return;
                }
                Err(e) => Err(format!("session {sid} cannot be restored: {e}")),
            },
            Err(replica::LoadError::Unknown) => Ok(None),
            Err(replica::LoadError::Elsewhere { owner, uri, http }) => Ok(Some((Some(owner), Some(uri), http))),
            Err(replica::LoadError::Fenced) => Ok(Some((None, None, None))),
            Err(replica::LoadError::Store(why)) => Err(why),
        };
        for w in work {
            match (w, &refusal) {
                (Deferred::Cmd(c), Ok(None)) => {
                    let sid = c.session_id().unwrap_or_default().to_string();
                    c.refuse(ChargingError::UnknownSession(sid));
                }
                (Deferred::Cmd(c), Ok(Some((owner, uri, http)))) => c.refuse(ChargingError::Moved {
                    session_id: sid.clone(),
                    owner: owner.clone(),
                    uri: uri.clone(),
                    http: http.clone(),
                }),
                (Deferred::Cmd(c), Err(why)) => c.refuse(ChargingError::StoreUnavailable(why.clone())),
                // Another node holds it (or nobody does): the timer is not ours to fire.
                (Deferred::Timer, _) => {}
                (Deferred::Request(req), Ok(Some((_, Some(uri), _)))) => self.proxy(req, uri),
                // Not in the store (not replicated), but addressed to another member of the cluster, which may hold
                // it: proxied there by its Destination-Host (a loop comes back as 3005, an unknown session as 5002).
                (Deferred::Request(req), Ok(None))
                    if req
                        .request
                        .find(code::DESTINATION_HOST, 0)
                        .and_then(|a| a.as_utf8().ok())
                        .is_some_and(|h| !h.eq_ignore_ascii_case(&self.origin_host)) =>
                {
                    let host = req.request.find(code::DESTINATION_HOST, 0).and_then(|a| a.as_utf8().ok());
                    let uri = format!("aaa://{}", host.unwrap_or_default());
                    self.proxy(req, &uri)
                }
                (Deferred::Request(req), r) => {
                    // RFC 6733 §7.1: 5002 for a session nobody has; 3002 when its owner is not known; 3004 when
                    // the store cannot tell.
                    let (rc, why) = match r {
                        Ok(None) => (ResultCode::UNKNOWN_SESSION_ID, None),
                        Ok(Some(_)) => (ResultCode::UNABLE_TO_DELIVER, Some("session owned by another node".into())),
                        Err(why) => (ResultCode::TOO_BUSY, Some(why.clone())),
                    };
                    let answer = self.error_answer(&req.request, rc, why.as_deref());
                    req.answer(answer);
                }
            }
        }
    }

    /// An answer to a server's request that this node cannot serve.
    fn error_answer(&self, request: &Message, rc: ResultCode, why: Option<&str>) -> Message {
        error_answer(request, rc, why, &self.origin_host, &self.origin_realm)
    }

    /// A RAR or ASR for a session a live node owns: proxied to that node over Diameter (RFC 6733 §6.1.9 and
    /// §2.8.2: Route-Record added, End-to-End Identifier and Proxy-Info kept), its answer returned on the original
    /// hop-by-hop id. A request whose Route-Record already names this node has looped: 3005.
    fn proxy(&self, req: IncomingRequest, owner_uri: &str) {
        let looped = req
            .request
            .find_all(code::ROUTE_RECORD, 0)
            .any(|a| a.as_utf8().is_ok_and(|h| h.eq_ignore_ascii_case(&self.origin_host)));
        let owner = uri_host(owner_uri);
        if looped || owner.eq_ignore_ascii_case(&self.origin_host) {
            let answer = self.error_answer(&req.request, ResultCode::LOOP_DETECTED, Some("proxy loop between nodes"));
            return req.answer(answer);
        }
        self.counters.proxied.fetch_add(1, Ordering::Relaxed);
        let mut m = req.request.clone();
        let origin = m.find(code::ORIGIN_HOST, 0).and_then(|a| a.as_utf8().ok()).map(str::to_string);
        let from = req.peer_identity.clone().or(origin).unwrap_or_default();
        m.avps.retain(|a| !a.is(code::DESTINATION_HOST, 0));
        m.push(crate::codec::Avp::utf8(code::DESTINATION_HOST, owner));
        m.push(crate::codec::Avp::utf8(code::ROUTE_RECORD, &from));
        m.header.hop_by_hop = crate::codec::HopByHopId(0);
        let (original, node) = (req.request.header, self.node.clone());
        let (host, realm, owner) = (self.origin_host.clone(), self.origin_realm.clone(), owner.to_string());
        tracing::debug!(session = ?req.request.session_id(), to = %owner, "request proxied to the session's owner");
        tokio::spawn(async move {
            let answer = match node.request_via(m, Some(Duration::from_secs(10)), None).await {
                Ok(mut a) => {
                    a.header.hop_by_hop = original.hop_by_hop;
                    a.header.end_to_end = original.end_to_end;
                    a
                }
                Err(e) => error_answer(
                    &req.request,
                    ResultCode::UNABLE_TO_DELIVER,
                    Some(&format!("proxying to the session's owner {owner}: {e}")),
                    &host,
                    &realm,
                ),
            };
            req.answer(answer);
        });
    }

    /// Builds and starts the next group commit, unless one is being written or the store is failing.
    fn write_batch(&mut self) {
        let Some(repl) = &mut self.repl else { return };
        // Called after every event the driver handles: nothing to do is told without reading the clock.
        if repl.writing() >= repl.cfg.batches_in_flight
            || (repl.urgent.is_empty() && repl.flushes.is_empty() && repl.ending.is_empty())
        {
            return;
        }
        let now = Instant::now();
        if repl.down(now) {
            return;
        }
        let due = repl.take_due(now);
        if due.is_empty() && repl.ending.is_empty() {
            return;
        }
        // One reading of the wall clock for the whole batch: snapshots' deadlines and the timer hints.
        let wall = replica::wall_ms();
        let mut writes = Vec::new();
        let mut parts = Vec::new();
        for sid in due {
            let Some(e) = self.sessions.get_mut(&sid) else { continue };
            let Some(r) = &mut e.replica else { continue };
            r.flush_at = None;
            if r.in_flight {
                repl.blocked.insert(sid);
                continue;
            }
            let in_flight_key =
                e.cc.outstanding_tag()
                    .and_then(|t| e.waiters.iter().find(|(k, _)| *k == t).map(|(_, w)| w))
                    .and_then(|w| w.key.as_deref())
                    .or(e.resumed_key.as_deref());
            let first = writes.len();
            let (kind, records) = repl.writes(&sid, r, Some((&e.cc, &e.done, in_flight_key)), (now, wall), &mut writes);
            r.in_flight = true;
            let carries_state = records.contains(&replica::Rec::State);
            // The session's earliest deadline as a hint for survivors, written with the state that holds it.
            // Advisory writes follow the part's own: its results are read by position, these are not read.
            let hint = e.cc.poll_timeout().map(|t| wall + t.saturating_duration_since(now).as_millis() as u64);
            if carries_state && replica::hint_stale(r.hint_ms, hint, wall) {
                writes.push(repl.hint_write(&sid, hint));
                r.hint_ms = hint;
            }
            if let Some(key) = r.stale_hint.take() {
                writes.push(crate::store::Write { key, value: None, expect: crate::store::Expect::Any, ttl: None });
            }
            let part = replica::Part {
                sid,
                kind,
                first,
                records,
                // Requests wait for the write that holds them: not for a claim of the convergence name alone.
                sends: if carries_state { std::mem::take(&mut r.held) } else { Vec::new() },
                waiters: if carries_state { std::mem::take(&mut r.waiters) } else { Vec::new() },
                ended: None,
            };
            parts.push(part);
        }
        // A session's deletion waits for its write in flight: it is conditional on the versions that write returns.
        let ending: Vec<_> = repl.ending.extract_if(|_, r| !r.in_flight).collect();
        for (sid, r) in ending {
            let first = writes.len();
            let (kind, records) = repl.writes(&sid, &r, None, (now, wall), &mut writes);
            if records.is_empty() {
                continue;
            }
            repl.deleting.insert(sid.clone());
            writes.extend(r.hint_ms.map(|_| repl.hint_write(&sid, None)));
            parts.push(replica::Part { sid, kind, first, records, sends: vec![], waiters: vec![], ended: Some(r) });
        }
        if writes.is_empty() {
            return;
        }
        repl.started += 1;
        repl.stats.batches += 1;
        repl.stats.writes += writes.len() as u64;
        let (store, tx, wait) = (repl.cfg.store.clone(), self.net_tx.clone(), repl.cfg.write_ahead_wait);
        let (own, margin) = (repl.own.clone(), lease_margin(repl.cfg.lease_ttl));
        let (after, (stored, next_stores)) = (repl.chain.take(), oneshot::channel());
        repl.chain = Some(next_stores);
        tokio::spawn(async move {
            // The store writes the batches in the order they started: a name one batch deletes (a convergence name
            // the service chose, a timer hint) may be created again by the next. This batch was built and handed
            // over meanwhile, so only the store's work is in series.
            if let Some(after) = after {
                let _ = after.await;
            }
            let started = Instant::now();
            // A store that hangs or a backend that panics must not hold every replicated session's requests
            // for good: both count as the store failing.
            let batch = tokio::time::timeout(BATCH_TIMEOUT, tokio::spawn(async move { store.batch(writes).await }));
            tokio::pin!(batch);
            let answer = tokio::select! {
                answer = &mut batch => answer,
                () = tokio::time::sleep(wait) => {
                    // The store stalls. While this node's lease is known to run, no other node can have adopted
                    // these sessions: what this batch holds goes now, as while the store fails (module replica).
                    // Past that, the requests wait for the batch, so that a node cut off from the store cannot
                    // charge beside an adopter.
                    let safe_until = own.lease_held_until_ms().saturating_sub(margin);
                    if safe_until > replica::wall_ms() {
                        let held: Vec<_> = parts
                            .iter_mut()
                            .filter(|p| !p.sends.is_empty())
                            .map(|p| (p.sid.clone(), std::mem::take(&mut p.sends)))
                            .collect();
                        let _ = tx.send(Net::StoreSlow(held, safe_until));
                    }
                    batch.await
                }
            };
            let r = match answer {
                Ok(Ok(r)) => r,
                Ok(Err(panic)) => Err(StoreError::Unavailable {
                    reason: format!("the store failed: {panic}"),
                    retry_after: Duration::from_secs(1),
                }),
                Err(_) => Err(StoreError::Unavailable {
                    reason: format!("the store did not answer within {BATCH_TIMEOUT:?}"),
                    retry_after: Duration::from_secs(1),
                }),
            };
            // The result is queued for the driver before the next batch may call the store, so results also reach
            // it in the order batches started (a flush counts completed batches).
            let _ = tx.send(Net::Written(parts, r, started.elapsed()));
            let _ = stored.send(());
        });
    }

    /// A group commit is still unanswered after `write_ahead_wait`, and this node's lease is known to run until
    /// `safe_until_ms`: the requests the batch holds go now, and the store counts as down until it answers
    /// (`written` ends that) or that time comes, so that requests made meanwhile go at once too and their sessions
    /// stay dirty. As with a failing store, a node that dies before the batch lands can leave an adopter a snapshot
    /// older than what the OCS has seen; charging does not wait on a stalled store.
    fn store_slow(&mut self, held: Vec<(String, Vec<Outgoing>)>, safe_until_ms: u64) {
        let Some(repl) = &mut self.repl else { return };
        let now = Instant::now();
        repl.stats.slow_batches += 1;
        // Down no longer than the lease is known to run (see `write_batch`).
        let safe = Duration::from_millis(safe_until_ms.saturating_sub(replica::wall_ms()));
        if repl.down_until.replace(now + safe.min(BATCH_TIMEOUT)).is_none_or(|t| t <= now) {
            tracing::warn!(
                wait = ?repl.cfg.write_ahead_wait,
                requests = held.iter().map(|(_, s)| s.len()).sum::<usize>(),
                backlog = repl.backlog(),
                "replication store slow: requests sent without waiting for their write-ahead; writes queue until it answers"
            );
        }
        self.release(held);
    }

    /// A group commit finished: release the requests it carried, learn the new versions, drop fenced sessions.
    fn written(
        &mut self,
        parts: Vec<replica::Part>,
        result: Result<Vec<Result<u64, StoreError>>, StoreError>,
        took: Duration,
    ) {
        let Some(repl) = &mut self.repl else { return };
        let now = Instant::now();
        repl.completed += 1;
        let us = took.as_micros() as u64;
        repl.stats.batches_done += 1;
        repl.stats.batch_time_us += us;
        repl.stats.batch_time_max_us = repl.stats.batch_time_max_us.max(us);
        let mut release = Vec::new();
        let results = match result {
            Ok(r) => {
                if repl.down_until.take().is_some() {
                    tracing::info!(backlog = repl.backlog(), "replication store reachable again; backlog draining");
                }
                r
            }
            Err(err) => {
                repl.stats.store_errors += 1;
                for p in parts {
                    let failed = vec![Err(err.clone()); p.records.len()];
                    self.part_written(p, &failed, now, &mut release);
                }
                return self.release(release);
            }
        };
        for p in parts {
            match results.get(p.first..p.first + p.records.len()) {
                Some(res) => self.part_written(p, res, now, &mut release),
                None => {
                    let lost = StoreError::Unavailable {
                        reason: "the store returned fewer results than writes".into(),
                        retry_after: Duration::from_secs(1),
                    };
                    let lost = vec![Err(lost); p.records.len()];
                    self.part_written(p, &lost, now, &mut release);
                }
            }
        }
        self.release(release);
    }

    /// One session's part of a batch came back.
    fn part_written(
        &mut self,
        mut p: replica::Part,
        res: &[Result<u64, StoreError>],
        now: Instant,
        release: &mut Vec<(String, Vec<Outgoing>)>,
    ) {
        let Some(repl) = &mut self.repl else { return };
        let failed = res.iter().find_map(|r| r.as_ref().err().filter(|e| !is_conflict(e)).cloned());
        let conflict = res.iter().any(|r| r.as_ref().is_err_and(is_conflict));
        if p.kind == replica::PartKind::Delete {
            repl.deleting.remove(&p.sid);
            if let (Some(err), Some(mut r)) = (failed, p.ended.take()) {
                // Write again what failed; what succeeded is gone.
                for (rec, out) in p.records.iter().zip(res) {
                    if out.is_ok() {
                        match rec {
                            replica::Rec::Conv => r.conv_version = None,
                            replica::Rec::Proto => r.proto_version = None,
                            replica::Rec::State => r.state_version = None,
                        }
                    }
                }
                self.store_failed(&err);
                if let Some(repl) = &mut self.repl {
                    repl.ending.insert(p.sid, r);
                }
            }
            return;
        }
        // Whatever happened to the others, the versions of the writes that succeeded are known now.
        let known = |r: &mut Replica| {
            r.in_flight = false;
            for (rec, out) in p.records.iter().zip(res) {
                if let Ok(v) = out {
                    r.learn(*rec, *v);
                }
            }
            if p.records.contains(&replica::Rec::Conv) && res.iter().all(Result::is_ok) {
                r.refreshed = now;
            }
        };
        let Some(e) = self.sessions.get_mut(&p.sid) else {
            // The session ended while it was being written: its deletion uses the versions just learnt.
            if let Some(r) = repl.ending.get_mut(&p.sid) {
                known(r);
            }
            return;
        };
        let Some(r) = &mut e.replica else { return };
        known(r);
        repl.unblock(&p.sid, r);
        if let Some(err) = failed {
            // The store failed some of it, perhaps after applying it: sessions go on locally, the session is
            // written again later, and a conflict then is checked before it is taken for fencing.
            r.uncertain = true;
            r.hint_ms = None;
            let why = ChargingError::StoreUnavailable(format!("{err}; the session is written when the store returns"));
            for w in p.waiters.drain(..) {
                let _ = w.send(Err(why.clone()));
            }
            repl.write_now(&p.sid, r);
            release.push((p.sid, p.sends));
            self.store_failed(&err);
            return;
        }
        if !conflict {
            r.uncertain = false;
            if r.created() {
                for w in p.waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
            } else {
                // Only the convergence name was claimed: the rest goes in the next batch.
                repl.write_now(&p.sid, r);
            }
            release.push((p.sid, p.sends));
            return;
        }
        // A conflict. Requests wait until it is understood.
        r.held.splice(0..0, p.sends.drain(..));
        r.waiters.append(&mut p.waiters);
        if r.uncertain {
            // Perhaps our own earlier write, applied although the store reported a failure: read back.
            let (tx, sid) = (self.net_tx.clone(), p.sid.clone());
            let check = repl.resync(&sid, r);
            r.in_flight = true;
            repl.resyncing += 1;
            tokio::spawn(async move {
                let out = check.await;
                let _ = tx.send(Net::Resynced(sid, out));
            });
            return;
        }
        let creating = !r.created() && r.state_version.is_none();
        self.conflicted(&p.sid, creating);
    }

    /// A conflict that is not ours: a session being created gives its replication up (its convergence name or
    /// Session-Id is taken); a replicated one has been adopted elsewhere and is dropped (fencing).
    fn conflicted(&mut self, sid: &str, creating: bool) {
        let Some(repl) = &mut self.repl else { return };
        let Some(e) = self.sessions.get_mut(sid) else { return };
        let Some(r) = &mut e.replica else { return };
        if creating {
            repl.stats.refused += 1;
            tracing::warn!(session = %sid, convergence = %r.convergence, "convergence name or session already in the store: session not replicated");
            let mut gone = e.replica.take().expect("replica present");
            repl.forget(sid, &mut gone);
            let why = ChargingError::Invalid("the session's convergence name is already in use".into());
            for w in gone.waiters.drain(..) {
                let _ = w.send(Err(why.clone()));
            }
            // Its requests go: the session carries on, unreplicated. What it did write is removed (only records
            // whose version it knows: never the other session's).
            let sends = vec![(sid.to_string(), std::mem::take(&mut gone.held))];
            if gone.conv_version.is_some() || gone.proto_version.is_some() || gone.state_version.is_some() {
                repl.ending.insert(sid.to_string(), gone);
            }
            return self.release(sends);
        }
        repl.stats.fenced += 1;
        tracing::warn!(session = %sid, convergence = %r.convergence, epoch = r.epoch, "state write refused: another node has adopted this session; local copy dropped");
        let mut e = self.sessions.remove(sid).expect("present");
        if let Some(d) = e.deadline.take() {
            self.timers.remove(&(d, sid.to_string()));
        }
        if let Some(r) = &mut e.replica {
            repl.forget(sid, r);
        }
        // Its held requests are dropped with it: the adopter answers for the session now. The callers waiting
        // learn who that is (so the HTTP front can forward their call, which reached the OCS from nowhere).
        let callers: Vec<oneshot::Sender<Result<Outcome, ChargingError>>> =
            e.waiters.drain(..).filter_map(|(_, w)| w.reply).collect();
        let moved = ChargingError::Moved { session_id: sid.to_string(), owner: None, uri: None, http: None };
        e.fail_all(&moved);
        if callers.is_empty() {
            return;
        }
        let (own, key) = (repl.own.clone(), crate::replication::keys::diameter(&repl.cfg.cluster, sid));
        tokio::spawn(async move {
            let moved = match own.resolve(&key).await {
                Ok(crate::ownership::Resolution::Proxy { owner, uri, http }) => match moved {
                    ChargingError::Moved { session_id, .. } => {
                        ChargingError::Moved { session_id, owner: Some(owner), uri: Some(uri), http }
                    }
                    other => other,
                },
                _ => moved,
            };
            for c in callers {
                let _ = c.send(Err(moved.clone()));
            }
        });
    }

    /// The records read back after an uncertain write met a conflict.
    fn resynced(&mut self, sid: String, out: Result<replica::Resync, StoreError>) {
        let Some(repl) = &mut self.repl else { return };
        repl.resyncing -= 1;
        // The session goes in a batch to come: a flush waiting must wait for that one too.
        let target = repl.started + repl.cfg.batches_in_flight as u64;
        for (t, _) in &mut self.flushing {
            *t = (*t).max(target);
        }
        let Some(r) = self.sessions.get_mut(&sid).and_then(|e| e.replica.as_mut()) else {
            // The session ended meanwhile: its deletion, which waited for this, goes ahead with the versions that
            // are ours (a record held by another owner is left to it).
            if let Some(r) = repl.ending.get_mut(&sid) {
                r.in_flight = false;
                for (rec, v) in out.iter().filter(|found| !found.foreign).flat_map(|found| &found.ours) {
                    if let Some(v) = v {
                        r.learn(*rec, *v);
                    }
                }
            }
            return;
        };
        r.in_flight = false;
        repl.unblock(&sid, r);
        match out {
            Err(err) => {
                repl.write_now(&sid, r);
                self.store_failed(&err);
            }
            Ok(found) if !found.foreign => {
                // Every record there is ours: take their versions and write again.
                for (rec, v) in found.ours {
                    if let Some(v) = v {
                        r.learn(rec, v);
                    }
                }
                r.uncertain = false;
                repl.write_now(&sid, r);
            }
            Ok(_) => {
                let creating = !r.created() && r.state_version.is_none();
                r.uncertain = false;
                self.conflicted(&sid, creating);
            }
        }
    }

    /// The store failed: no batch until its retry hint has passed.
    fn store_failed(&mut self, err: &StoreError) {
        let now = Instant::now();
        let Some(repl) = &mut self.repl else { return };
        let retry = match err {
            StoreError::Unavailable { retry_after, .. } => *retry_after,
            _ => Duration::from_millis(500),
        };
        if repl.down_until.replace(now + retry).is_none_or(|t| t <= now) {
            tracing::warn!(error = %err, backlog = repl.backlog(), "replication store failing: sessions continue locally, writes queue until it returns");
        }
    }

    /// Starts a scan of dead nodes' timer hints, unless one is running.
    fn scan_hints(&mut self) {
        let Some(repl) = &mut self.repl else { return };
        if repl.scanning {
            return;
        }
        repl.scanning = true;
        let (scan, tx) = (repl.scan_hints(), self.net_tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Net::Foreign(scan.await));
        });
    }

    /// Arms the dead nodes' timers this node was chosen for.
    fn foreign(&mut self, found: Result<replica::HintScan, StoreError>) {
        let now = Instant::now();
        let Some(repl) = &mut self.repl else { return };
        repl.scanning = false;
        let found = match found {
            Ok(f) => f,
            // The first scan (which also reads this node's previous incarnation's hints) is made again.
            Err(e) => return tracing::debug!(error = %e, "scanning dead nodes' timers failed; next period"),
        };
        repl.scans += 1;
        (repl.watched, repl.hints_scanned, repl.hints_live) = (found.watched, found.scanned, found.live);
        let was = repl.peers_layout.map(|_| repl.state_encoding());
        repl.peers_layout = Some(found.state_layout);
        let encoding = repl.state_encoding();
        if encoding != repl.cfg.state_encoding && was != Some(encoding) {
            tracing::info!(
                "a live node reads only JSON state records (a release before binary records): writing JSON until it \
                 has gone"
            );
        } else if encoding == repl.cfg.state_encoding && was.is_some_and(|w| w != encoding) {
            tracing::info!("every live node reads binary state records again: writing binary");
        }
        let found = found.mine;
        let wall = replica::wall_ms();
        for (sid, ms) in found {
            if self.sessions.contains_key(&sid) || self.loading.contains_key(&sid) || !repl.armed.insert(sid.clone()) {
                continue;
            }
            let at = now + Duration::from_millis(ms.saturating_sub(wall));
            tracing::debug!(session = %sid, in_ms = ms.saturating_sub(wall), "armed a dead node's timer");
            repl.foreign.insert((at, sid));
        }
    }

    fn release(&self, sends: Vec<(String, Vec<Outgoing>)>) {
        for (sid, out) in sends {
            for o in out {
                self.transmit(&sid, o);
            }
        }
    }
}

/// An error answer from this node (RFC 6733 §7.2): E bit for 3xxx, Error-Message, Proxy-Info echoed.
fn error_answer(request: &Message, rc: ResultCode, why: Option<&str>, host: &str, realm: &str) -> Message {
    let mut a = Message::answer_to(request);
    a.header.flags = a.header.flags.with(crate::codec::CommandFlags::ERROR, rc.is_protocol_error());
    a.push(crate::codec::Avp::utf8(code::ORIGIN_HOST, host))
        .push(crate::codec::Avp::utf8(code::ORIGIN_REALM, realm))
        .push(crate::codec::Avp::u32(code::RESULT_CODE, rc.0));
    if let Some(why) = why {
        a.push(crate::codec::Avp::utf8(code::ERROR_MESSAGE, why).with_mandatory(false));
    }
    a.echo_proxy_info(request);
    a
}

/// The DiameterIdentity of an `aaa://host:port;…` URI (RFC 6733 §4.3.1).
fn uri_host(uri: &str) -> &str {
    let rest = uri.strip_prefix("aaas://").or_else(|| uri.strip_prefix("aaa://")).unwrap_or(uri);
    rest.split([':', ';', '/']).next().unwrap_or(rest)
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. })
}

fn outcome(sid: &str, cc: &CcSession, answer: Option<&Message>, events: &[CcEvent]) -> Outcome {
    let grants = events.iter().filter(|e| matches!(e, CcEvent::Granted { .. } | CcEvent::Denied { .. })).count();
    let mut granted = Vec::with_capacity(grants);
    let mut ccfh = None;
    let mut policy = None;
    for ev in events {
        match ev {
            CcEvent::Granted { rating_group, units, validity_time, threshold, final_unit } => granted.push(Grant {
                rating_group: *rating_group,
                granted: *units,
                validity_time: validity_time.map(|v| v.as_secs()),
                threshold: *threshold,
                final_unit: final_unit.clone(),
                result_code: 2001,
            }),
            CcEvent::Denied { rating_group, result_code } => granted.push(Grant {
                rating_group: *rating_group,
                granted: Units::default(),
                validity_time: None,
                threshold: Units::default(),
                final_unit: None,
                result_code: result_code.0,
            }),
            CcEvent::ContinueWithoutCreditControl { reason } => ccfh = Some(reason.clone()),
            CcEvent::PolicyUpdate(m) => policy = Some(policy_of(m)),
            _ => {}
        }
    }
    let event = answer.filter(|a| a.find(code::CC_REQUEST_TYPE, 0).and_then(|x| x.as_i32().ok()) == Some(4)).map(|a| {
        EventResult {
            check_balance_result: a.find(422, 0).and_then(|x| x.as_i32().ok()),
            cost: a.find(423, 0).and_then(|c| {
                c.grouped_iter()
                    .filter_map(Result::ok)
                    .find(|x| x.is(445, 0))
                    .and_then(|uv| uv.grouped_iter().filter_map(Result::ok).find(|x| x.is(447, 0)))
                    .and_then(|v| v.as_i64().ok())
            }),
            granted: a.find(code::GRANTED_SERVICE_UNIT, 0).map(Units::from_grouped),
        }
    });
    Outcome {
        session_id: sid.to_string(),
        result_code: answer.and_then(Message::result_code).map(|r| r.0),
        granted,
        ccfh,
        state: cc.state(),
        convergence: None,
        policy,
        event,
    }
}

/// Reads Charging-Rule-Install/Remove names and Event-Triggers (TS 29.212) from an answer or RAR.
pub fn policy_of(m: &Message) -> Policy {
    let names = |code: u32| -> Vec<String> {
        m.find_all(code, 10415)
            .flat_map(|g| g.grouped_iter().filter_map(Result::ok).collect::<Vec<_>>())
            .flat_map(|x| {
                if x.is(1003, 10415) {
                    x.grouped_iter()
                        .filter_map(Result::ok)
                        .filter(|y| y.is(1005, 10415))
                        .map(|y| String::from_utf8_lossy(y.data()).into_owned())
                        .collect::<Vec<_>>()
                } else if x.is(1005, 10415) || x.is(1004, 10415) {
                    vec![String::from_utf8_lossy(x.data()).into_owned()]
                } else {
                    vec![]
                }
            })
            .collect()
    };
    Policy {
        rules_installed: names(1001),
        rules_removed: names(1002),
        event_triggers: m.find_all(1006, 10415).filter_map(|a| a.as_i32().ok()).collect(),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
