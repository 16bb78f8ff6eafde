//! The embedding API: a charging service opens Ro or Gx sessions, reports and requests units, terminates, and
//! receives the network's events, while [`Engine`] drives one [`CcSession`] per session over a
//! [`DiameterNode`]. [`http`] puts the same operations behind an HTTP JSON front.
//!
//! One task owns every session machine; the API and the network talk to it through channels, so the protocol
//! decisions stay in the sans-IO [`crate::cc`] module. Each call returns when the request it caused has been
//! answered (or has failed and CCFH/DDFH decided), with the grants and what the engine decided.

pub mod http;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::cc::{CcConfig, CcEvent, CcOutput, CcSession, CcState, Ccfh, Ddfh, FinalUnit, RequestedAction};
use crate::codec::{AppId, Message, ResultCode, code};
use crate::node::{DiameterNode, IncomingRequest, NodeConfig, NodeError, NodeHandle, RequestError};
use crate::units::Units;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The rating group (`None`: session level).
    pub rating_group: Option<u32>,
    /// Units granted.
    pub granted: Units,
    /// Validity-Time in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity_time: Option<u64>,
    /// Quota thresholds (TS 32.299 Time/Volume/Unit-Quota-Threshold): report when the units left fall to these.
    #[serde(skip_serializing_if = "Units::is_empty")]
    pub threshold: Units,
    /// Final-Unit-Indication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_unit: Option<FinalUnit>,
    /// The rating group's Result-Code.
    pub result_code: u32,
}

/// What one operation came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// Gx: the Charging-Rule-Names installed or removed, and Event-Triggers armed, by this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Event charging: Check-Balance-Result (0 enough credit, 1 no credit) and the cost in hundredths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventResult>,
}

/// Gx policy carried by an answer or RAR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Rules (and rule bases) installed.
    pub rules_installed: Vec<String>,
    /// Rules removed.
    pub rules_removed: Vec<String>,
    /// Event-Trigger values armed.
    pub event_triggers: Vec<i32>,
}

/// The result of an event request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
    /// This node's Origin-Host (the owner, until replication moves sessions).
    pub owner: String,
    /// The next CC-Request-Number.
    pub cc_request_number: u32,
    /// Quotas per rating group.
    pub quotas: Vec<crate::cc::Quota>,
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
    /// The engine has stopped.
    #[error("the charging engine has stopped")]
    Stopped,
}

enum Cmd {
    Open {
        app: App,
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
        reply: oneshot::Sender<Option<SessionView>>,
    },
    Subscribe {
        reply: oneshot::Sender<mpsc::UnboundedReceiver<SessionEvent>>,
    },
}

enum Net {
    Answer(String, Result<Message, RequestError>),
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
}

/// A waiter for the outcome of the request a call caused.
struct Waiter {
    reply: Option<oneshot::Sender<Result<Outcome, ChargingError>>>,
    key: Option<String>,
}

struct Entry {
    cc: CcSession,
    /// The callers waiting, by the tag their request carries in the session machine.
    waiters: HashMap<u64, Waiter>,
    next_tag: u64,
    /// Events collected since the last answer, for the outcome.
    collected: Vec<CcEvent>,
    last_answer: Option<Message>,
    /// Idempotency keys already answered, with their outcome (the last 16).
    done: VecDeque<(String, Outcome)>,
    deadline: Option<Instant>,
}

impl Engine {
    /// Starts the Diameter node and the engine task.
    pub async fn start(config: EngineConfig) -> Result<Engine, NodeError> {
        let origin_host = config.node.router.local.origin_host.clone();
        let origin_realm = config.node.router.local.origin_realm.clone();
        let (node, incoming) = DiameterNode::start(config.node.clone()).await?;
        let handle = node.handle();
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let driver = Driver {
            ro: config.ro,
            gx: config.gx,
            origin_host: origin_host.clone(),
            origin_realm,
            node: handle.clone(),
            sessions: HashMap::new(),
            timers: BTreeSet::new(),
            net_tx,
            subscribers: Vec::new(),
            // RFC 6733 §8.8: <DiameterIdentity>;<high 32 bits>;<low 32 bits>: boot time and a counter, unique
            // across restarts.
            boot,
            counter: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(driver.run(cmd_rx, net_rx, incoming));
        Ok(Engine {
            cmds,
            origin_host,
            dictionary: config.node.dictionary.clone(),
            node: handle,
            owned_node: Arc::new(tokio::sync::Mutex::new(Some(node))),
        })
    }

    /// This node's Origin-Host.
    pub fn origin_host(&self) -> &str {
        &self.origin_host
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
        self.call(|reply| Cmd::Open { app, extra: Vec::new(), subscriber, service_context, rating_groups, reply })
            .await?
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
        self.call(|reply| Cmd::Open { app, extra, subscriber, service_context, rating_groups, reply }).await?
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

    /// A session's state.
    pub async fn session(&self, session_id: &str) -> Option<SessionView> {
        self.call(|reply| Cmd::View { session_id: session_id.into(), reply }).await.ok().flatten()
    }

    /// Every event the network causes from now on (re-auth, abort, policy changes, validity expiry, final units).
    pub async fn events(&self) -> Result<mpsc::UnboundedReceiver<SessionEvent>, ChargingError> {
        self.call(|reply| Cmd::Subscribe { reply }).await
    }

    /// Stops the Diameter node (DPR to every peer).
    pub async fn stop(&self) {
        if let Some(node) = self.owned_node.lock().await.take() {
            node.stop(crate::peer::DisconnectCause::Rebooting).await;
        }
    }
}

impl Entry {
    fn new(cc: CcSession, reply: oneshot::Sender<Result<Outcome, ChargingError>>) -> Entry {
        let mut waiters = HashMap::new();
        waiters.insert(0, Waiter { reply: Some(reply), key: None });
        Entry {
            cc,
            waiters,
            next_tag: 1,
            collected: Vec::new(),
            last_answer: None,
            done: VecDeque::new(),
            deadline: None,
        }
    }

    fn waiter(&mut self, w: Waiter) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.waiters.insert(tag, w);
        tag
    }

    /// A request is settled: the events since the previous one and its answer are its outcome.
    fn settle(&mut self, sid: &str, tag: Option<u64>, dropped: bool) {
        if dropped {
            if let Some(reply) = tag.and_then(|t| self.waiters.remove(&t)).and_then(|w| w.reply) {
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
        let Some(w) = tag.and_then(|t| self.waiters.remove(&t)) else {
            return;
        };
        let outcome = outcome(sid, &self.cc, answer.as_ref(), &events);
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
    ro: AppSettings,
    gx: AppSettings,
    origin_host: String,
    origin_realm: String,
    node: NodeHandle,
    sessions: HashMap<String, Entry>,
    timers: BTreeSet<(Instant, String)>,
    net_tx: mpsc::UnboundedSender<Net>,
    subscribers: Vec<mpsc::UnboundedSender<SessionEvent>>,
    boot: u64,
    counter: Arc<AtomicU64>,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut net: mpsc::UnboundedReceiver<Net>,
        mut incoming: mpsc::Receiver<IncomingRequest>,
    ) {
        loop {
            let next = self.timers.iter().next().map(|(t, _)| *t);
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(n) = net.recv() => self.network(n),
                Some(req) = incoming.recv() => self.server_request(req),
                _ = sleep_until(next) => self.timeouts(),
            }
        }
    }

    fn session_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{};{};{}", self.origin_host, self.boot, n)
    }

    fn cc_config(
        &self,
        app: App,
        subscriber: Option<&Subscriber>,
        service_context: Option<String>,
    ) -> Result<CcConfig, ChargingError> {
        let s = if app == App::Ro { &self.ro } else { &self.gx };
        let subscription = subscriber.map(|s| s.type_value().map(|t| (t, s.data.clone()))).transpose()?;
        Ok(CcConfig {
            application: if app == App::Ro { AppId::CREDIT_CONTROL } else { AppId::GX },
            origin_host: self.origin_host.clone(),
            origin_realm: self.origin_realm.clone(),
            destination_realm: s.destination_realm.clone(),
            destination_host: s.destination_host.clone(),
            service_context_id: service_context.unwrap_or_else(|| s.service_context_id.clone()),
            tx: s.tx,
            ccfh: s.ccfh,
            ddfh: s.ddfh,
            subscription,
        })
    }

    fn command(&mut self, c: Cmd) {
        let now = Instant::now();
        match c {
            Cmd::Open { app, extra, subscriber, service_context, rating_groups, reply } => {
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
                cc.start(now, &rgs, Some(0));
                self.sessions.insert(sid.clone(), Entry::new(cc, reply));
                self.pump(&sid);
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
                self.pump(&session_id);
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
                self.pump(&session_id);
            }
            Cmd::Event { subscriber, service_context, action, requested, service_id, reply } => {
                let cfg = match self.cc_config(App::Ro, subscriber.as_ref(), service_context) {
                    Ok(c) => c,
                    Err(e) => return drop(reply.send(Err(e))),
                };
                let sid = self.session_id();
                let mut cc = CcSession::new(cfg, sid.clone());
                cc.event(now, action, requested, service_id, Some(0));
                self.sessions.insert(sid.clone(), Entry::new(cc, reply));
                self.pump(&sid);
            }
            Cmd::View { session_id, reply } => {
                let v = self.sessions.get(&session_id).map(|e| SessionView {
                    session_id: session_id.clone(),
                    state: e.cc.state(),
                    owner: self.origin_host.clone(),
                    cc_request_number: e.cc.next_request_number(),
                    quotas: e.cc.quotas().to_vec(),
                });
                let _ = reply.send(v);
            }
            Cmd::Subscribe { reply } => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.subscribers.push(tx);
                let _ = reply.send(rx);
            }
        }
    }

    fn network(&mut self, n: Net) {
        let now = Instant::now();
        let Net::Answer(sid, result) = n;
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
        self.pump(&sid);
    }

    /// A RAR or ASR from the server.
    fn server_request(&mut self, req: IncomingRequest) {
        let now = Instant::now();
        let sid = req.request.session_id().unwrap_or_default().to_string();
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
        self.pump(&sid);
    }

    fn timeouts(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, s)| s.clone()).collect();
        for sid in due {
            if let Some(e) = self.sessions.get_mut(&sid) {
                e.cc.handle_timeout(now);
                self.pump(&sid);
            }
        }
    }

    /// Carries out a session's outputs: sends requests, forwards events, re-arms its timer.
    fn pump(&mut self, sid: &str) {
        let Some(e) = self.sessions.get_mut(sid) else { return };
        while let Some(o) = e.cc.poll_output() {
            match o {
                CcOutput::Send(msg) => {
                    let (node, tx, sid2) = (self.node.clone(), self.net_tx.clone(), sid.to_string());
                    // The router waits longer than Tx: a late answer still counts (CCFH CONTINUE waits for it).
                    let timeout = Some(Duration::from_secs(30));
                    tokio::spawn(async move {
                        let r = node.request_via(msg, timeout, None).await;
                        let _ = tx.send(Net::Answer(sid2, r));
                    });
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
                }
                CcOutput::Resend { request, avoid_host } => {
                    let (node, tx, sid2) = (self.node.clone(), self.net_tx.clone(), sid.to_string());
                    tracing::info!(session = %sid, avoid = ?avoid_host, "no answer within Tx: request sent to an alternate server with the T flag");
                    tokio::spawn(async move {
                        let r = node.request_avoiding(request, Some(Duration::from_secs(30)), avoid_host).await;
                        let _ = tx.send(Net::Answer(sid2, r));
                    });
                }
                CcOutput::Done(tag) => e.settle(sid, tag, false),
                CcOutput::Dropped(tag) => e.settle(sid, tag, true),
            }
        }
        let deadline = e.cc.poll_timeout();
        if deadline != e.deadline {
            if let Some(old) = e.deadline.take() {
                self.timers.remove(&(old, sid.to_string()));
            }
            if let Some(t) = deadline {
                self.timers.insert((t, sid.to_string()));
            }
            e.deadline = deadline;
        }
        if e.cc.state() == CcState::Idle && e.waiters.is_empty() && !e.cc.has_stored() {
            if let Some(d) = e.deadline.take() {
                self.timers.remove(&(d, sid.to_string()));
            }
            self.sessions.remove(sid);
        }
    }
}

fn outcome(sid: &str, cc: &CcSession, answer: Option<&Message>, events: &[CcEvent]) -> Outcome {
    let mut granted = Vec::new();
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
