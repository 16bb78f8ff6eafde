//! The OCS/PCRF simulator: a credit-control server for Ro (application 4, RFC 4006 / TS 32.299) and a policy
//! server for Gx (application 16777238, TS 29.212), with a ledger that judges the clients.
//!
//! [`Ocs`] is the sans-IO core: it answers one request at a time ([`Ocs::handle_request`]), builds RAR/ASR, closes
//! idle sessions (Tcc, RFC 4006 §13) and keeps the ledger. [`server`] runs it behind a [`crate::node::DiameterNode`]
//! with the HTTP control API.

pub mod config;
mod ledger;
pub mod server;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

use crate::codec::{AppId, Avp, CommandCode, CommandFlags, Message, ResultCode, VendorId, code};
use crate::router::PeerId;
use crate::units::{UnitKind, Units};

pub use config::{FaultAction, FaultRule, FinalUnitAction, OcsConfig};
use ledger::Chunks;
pub use ledger::{
    Anomaly, Check, Ledger, LedgerSession, RatingGroupLedger, RequestLog, RequestRecord, ServerRequestRecord,
    SessionState,
};

/// 3GPP AVP codes (vendor 10415) the simulator writes (TS 32.299 §7.2, TS 29.212 §5.3, TS 29.229 §6.3).
mod tgpp {
    pub const TIME_QUOTA_THRESHOLD: u32 = 868;
    pub const VOLUME_QUOTA_THRESHOLD: u32 = 869;
    pub const QUOTA_HOLDING_TIME: u32 = 871;
    pub const CHARGING_RULE_INSTALL: u32 = 1001;
    pub const CHARGING_RULE_REMOVE: u32 = 1002;
    pub const CHARGING_RULE_DEFINITION: u32 = 1003;
    pub const CHARGING_RULE_BASE_NAME: u32 = 1004;
    pub const CHARGING_RULE_NAME: u32 = 1005;
    pub const EVENT_TRIGGER: u32 = 1006;
    pub const PRECEDENCE: u32 = 1010;
    pub const QOS_INFORMATION: u32 = 1016;
    pub const CHARGING_RULE_REPORT: u32 = 1018;
    pub const QOS_CLASS_IDENTIFIER: u32 = 1028;
    pub const RULE_FAILURE_CODE: u32 = 1031;
    pub const ALLOCATION_RETENTION_PRIORITY: u32 = 1034;
    pub const APN_AMBR_DL: u32 = 1040;
    pub const APN_AMBR_UL: u32 = 1041;
    pub const PRIORITY_LEVEL: u32 = 1046;
    pub const DEFAULT_EPS_BEARER_QOS: u32 = 1049;
    pub const FLOW_INFORMATION: u32 = 1058;
    pub const MONITORING_KEY: u32 = 1066;
    pub const USAGE_MONITORING_INFORMATION: u32 = 1067;
    pub const USAGE_MONITORING_LEVEL: u32 = 1068;
    pub const FLOW_DESCRIPTION: u32 = 507;
    pub const SUPPORTED_FEATURES: u32 = 628;
}

/// RFC 4006 AVP codes not in [`code`].
mod cc {
    pub const CC_SESSION_FAILOVER: u32 = 418;
    pub const CHECK_BALANCE_RESULT: u32 = 422;
    pub const COST_INFORMATION: u32 = 423;
    pub const CURRENCY_CODE: u32 = 425;
    pub const UNIT_VALUE: u32 = 445;
    pub const VALUE_DIGITS: u32 = 447;
    pub const EXPONENT: u32 = 429;
    pub const REDIRECT_SERVER: u32 = 434;
    pub const REDIRECT_ADDRESS_TYPE: u32 = 433;
    pub const REDIRECT_SERVER_ADDRESS: u32 = 435;
    pub const FILTER_ID: u32 = 11;
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Send this answer.
    Answer(Message),
    /// Send this answer after a delay.
    Delay(Duration, Message),
    /// Send nothing (the request was processed; its answer is lost, as a network would lose it).
    Drop,
    /// Close the connection the request came on.
    Close,
    /// Send this answer, then DPR to the peer.
    AnswerThenDpr(Message),
}

/// Why a server-initiated request cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OcsError {
    /// No session with this Session-Id.
    #[error("no session {0}")]
    UnknownSession(String),
    /// The session is not open.
    #[error("session {0} is not open")]
    NotOpen(String),
}

#[derive(Clone, Debug, Default)]
struct Account {
    /// `None`: unlimited.
    balance: Units,
    limited: [bool; 6],
    reserved: Units,
}

impl Account {
    fn available(&self, k: UnitKind) -> Option<u64> {
        let i = UnitKind::ALL.iter().position(|x| *x == k).expect("every kind listed");
        self.limited[i].then(|| self.balance.get(k).unwrap_or(0).saturating_sub(self.reserved.get(k).unwrap_or(0)))
    }

    fn change(units: &mut Units, k: UnitKind, delta: i128) {
        let v = i128::from(units.get(k).unwrap_or(0)) + delta;
        units.set(k, Some(v.clamp(0, i128::from(u64::MAX)) as u64));
    }
}

/// Where a session's client can be reached for RAR/ASR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    /// The connection (peer) its last request came through: the client itself or a relay.
    pub peer: PeerId,
    /// The client's Origin-Host.
    pub host: String,
    /// The client's Origin-Realm.
    pub realm: String,
}

/// An open session's working state: where its client is and when it was last heard from.
#[derive(Clone, Debug)]
pub(crate) struct SessionRuntime {
    reach: Reachability,
    last_activity: Instant,
    app: AppId,
    /// Its key in [`Ocs::open`]: a time no later than `last_activity`.
    watched_from: Instant,
}

/// The simulator's core.
pub struct Ocs {
    config: OcsConfig,
    origin_host: String,
    origin_realm: String,
    /// Positions in `balances` by subscriber, found once per request. Ordered, so that it grows a node at a time: a
    /// hash table of one entry per subscriber stalled the simulator for milliseconds each time it doubled
    /// (BENCHMARKS.md, "Paced latency").
    accounts: BTreeMap<String, usize>,
    balances: Chunks<Account>,
    ledger: Ledger,
    /// The open sessions (removed at CCR-T), whose `Working::live` holds their working state: ledger positions,
    /// in the order of a time from which each has been idle at most (its `watched_from`). A request only updates
    /// the session's last activity; Tcc expiry takes the sessions watched for Tcc and requeues those heard from
    /// meanwhile from their last activity, so a tick costs what is due, not a walk of every open session.
    /// Ordered, so that it grows a node at a time however many sessions are open at once.
    open: BTreeSet<(Instant, usize)>,
    faults: Vec<(FaultRule, u32)>,
    /// Requests by (command, request type, Result-Code) for the metrics. The names are borrowed for the known
    /// commands: counting a request allocates nothing.
    pub counters: BTreeMap<(Cow<'static, str>, &'static str, u32), u64>,
    /// Processing-time histogram over [`LATENCY_BUCKETS`] (the last slot counts the rest).
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
    /// Total processing time.
    pub latency_sum: Duration,
}

/// Upper bounds (seconds) of the processing-time histogram.
pub const LATENCY_BUCKETS: [f64; 8] = [0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.1];

fn u32_of(m: &Message, c: u32) -> Option<u32> {
    m.find(c, 0).and_then(|a| a.as_u32().ok())
}

fn text_of(m: &Message, c: u32) -> Option<String> {
    m.find(c, 0).and_then(|a| a.as_utf8().ok()).map(str::to_string)
}

fn request_type_name(t: Option<i32>) -> &'static str {
    match t {
        Some(1) => "initial",
        Some(2) => "update",
        Some(3) => "termination",
        Some(4) => "event",
        _ => "none",
    }
}

fn subscriber_of(m: &Message) -> Option<String> {
    m.find(code::SUBSCRIPTION_ID, 0)?
        .grouped_iter()
        .filter_map(Result::ok)
        .find(|a| a.is(code::SUBSCRIPTION_ID_DATA, 0))
        .and_then(|a| a.as_utf8().ok().map(str::to_string))
}

/// The AVP as a 3GPP one (vendor 10415, V bit).
fn v(avp: Avp) -> Avp {
    avp.with_vendor(VendorId::TGPP)
}

impl Ocs {
    /// A simulator answering as `origin_host` / `origin_realm`.
    pub fn new(config: OcsConfig, origin_host: &str, origin_realm: &str) -> Ocs {
        let faults = config.faults.iter().cloned().map(|f| (f, 0)).collect();
        Ocs {
            config,
            origin_host: origin_host.to_string(),
            origin_realm: origin_realm.to_string(),
            accounts: BTreeMap::new(),
            balances: Chunks::default(),
            ledger: Ledger::default(),
            open: BTreeSet::new(),
            faults,
            counters: BTreeMap::new(),
            latency: [0; LATENCY_BUCKETS.len() + 1],
            latency_sum: Duration::ZERO,
        }
    }

    /// Adds one request's processing time to the histogram.
    pub fn observe_latency(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i] += 1;
        self.latency_sum += d;
    }

    /// Forgets every session, account change and counter (the configured faults come back).
    pub fn reset(&mut self) {
        *self = Ocs::new(self.config.clone(), &self.origin_host.clone(), &self.origin_realm.clone());
    }

    /// Adds a fault rule at runtime (after the configured ones).
    pub fn add_fault(&mut self, rule: FaultRule) {
        self.faults.push((rule, 0));
    }

    /// Removes every fault rule.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The ledger, by Session-Id.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The summary the conformance suite judges by.
    pub fn check(&self) -> Check {
        Check::of(self.ledger.values())
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.ledger.values().filter(|s| s.state == SessionState::Open).count()
    }

    /// The subscriber's account (its position in `balances`), opened with its configured or the default balance
    /// on first use.
    fn account(&mut self, subscriber: &str) -> usize {
        if let Some(&a) = self.accounts.get(subscriber) {
            return a;
        }
        let (default, listed) = (&self.config.ro.default_balance, &self.config.subscribers);
        let balance = listed.iter().find(|s| s.id == subscriber).map_or(*default, |s| s.balance);
        let mut limited = [false; 6];
        for (i, k) in UnitKind::ALL.iter().enumerate() {
            limited[i] = balance.get(*k).is_some();
        }
        let a = self.balances.push(Account { balance, limited, reserved: Units::default() });
        self.accounts.insert(subscriber.to_string(), a);
        a
    }

    fn fault_for(&mut self, req: &Message) -> Option<FaultAction> {
        let subscriber = subscriber_of(req);
        let sid = req.session_id().map(str::to_string);
        let rtype = request_type_name(req.find(code::CC_REQUEST_TYPE, 0).and_then(|a| a.as_i32().ok()));
        let number = u32_of(req, code::CC_REQUEST_NUMBER);
        let short = req.header.short_name();
        for (rule, fired) in &mut self.faults {
            let matches = rule.subscriber.as_ref().is_none_or(|s| subscriber.as_ref() == Some(s))
                && rule.session_id.as_ref().is_none_or(|s| sid.as_ref() == Some(s))
                && rule.command.as_ref().is_none_or(|c| c.eq_ignore_ascii_case(&short))
                && rule.request_type.as_ref().is_none_or(|t| t.eq_ignore_ascii_case(rtype))
                && rule.request_number.is_none_or(|n| number == Some(n))
                && rule.retransmission.is_none_or(|t| t == req.header.flags.is_retransmit())
                && rule.times.is_none_or(|t| *fired < t);
            if matches {
                *fired += 1;
                return Some(rule.action.clone());
            }
        }
        None
    }

    fn base_answer(&self, req: &Message, rc: ResultCode) -> Message {
        let mut a = Message::answer_to(req);
        if rc.is_protocol_error() {
            a.header.flags = a.header.flags.with(CommandFlags::ERROR, true);
        }
        a.push(Avp::u32(code::RESULT_CODE, rc.0))
            .push(Avp::utf8(code::ORIGIN_HOST, &self.origin_host))
            .push(Avp::utf8(code::ORIGIN_REALM, &self.origin_realm));
        if !rc.is_protocol_error() {
            a.push(Avp::u32(code::AUTH_APPLICATION_ID, req.header.application_id.0));
            for c in [code::CC_REQUEST_TYPE, code::CC_REQUEST_NUMBER] {
                if let Some(x) = req.find(c, 0) {
                    a.push(x.clone());
                }
            }
        }
        a
    }

    /// Answers one request that came from `peer`. `wall_ms` is the wall-clock time for the ledger.
    pub fn handle_request(&mut self, now: Instant, wall_ms: u64, peer: PeerId, req: &Message) -> Reply {
        let reply = self.handle_inner(now, wall_ms, peer, req);
        let rc = match &reply {
            Reply::Answer(a) | Reply::Delay(_, a) | Reply::AnswerThenDpr(a) => a.result_code().map_or(0, |r| r.0),
            Reply::Drop | Reply::Close => 0,
        };
        let short = req.header.known_short_name().map_or_else(|| Cow::Owned(req.header.short_name()), Cow::Borrowed);
        let rtype = request_type_name(req.find(code::CC_REQUEST_TYPE, 0).and_then(|a| a.as_i32().ok()));
        *self.counters.entry((short, rtype, rc)).or_default() += 1;
        reply
    }

    fn handle_inner(&mut self, now: Instant, wall_ms: u64, peer: PeerId, req: &Message) -> Reply {
        let fault = self.fault_for(req);
        let answer = match &fault {
            Some(FaultAction::ResultCode(code)) => {
                let a = self.base_answer(req, ResultCode(*code));
                self.record_only(now, wall_ms, peer, req, a.result_code());
                return Reply::Answer(a);
            }
            Some(FaultAction::UnableToDeliver) => {
                let mut a = self.base_answer(req, ResultCode::UNABLE_TO_DELIVER);
                a.push(Avp::utf8(code::ERROR_REPORTING_HOST, &self.origin_host).with_mandatory(false));
                return Reply::Answer(a);
            }
            Some(FaultAction::Close) => return Reply::Close,
            _ => self.process(now, wall_ms, peer, req),
        };
        match fault {
            Some(FaultAction::Delay(delay)) => Reply::Delay(delay, answer),
            Some(FaultAction::Drop) => Reply::Drop,
            Some(FaultAction::Dpr) => Reply::AnswerThenDpr(answer),
            _ => Reply::Answer(answer),
        }
    }

    /// Records a request that a fault answered without processing.
    fn record_only(&mut self, now: Instant, wall_ms: u64, peer: PeerId, req: &Message, rc: Option<ResultCode>) {
        let self_max = self.config.max_requests_per_session;
        let Some(sid) = req.session_id() else {
            return;
        };
        let i = self
            .ledger
            .position_or_push(sid, || LedgerSession::new(sid, req.header.application_id, subscriber_of(req)));
        let s = self.ledger.at_mut(i);
        s.record(self_max, RequestRecord::of(req, wall_ms, rc.map(|r| r.0), false));
        if let Some(rt) = s.work.live.as_mut() {
            rt.last_activity = now;
            rt.reach.peer = peer;
        }
    }

    fn process(&mut self, now: Instant, wall_ms: u64, peer: PeerId, req: &Message) -> Message {
        let self_max = self.config.max_requests_per_session;
        let Some(sid) = req.session_id() else {
            return self.base_answer(req, ResultCode::MISSING_AVP);
        };
        let number = u32_of(req, code::CC_REQUEST_NUMBER).unwrap_or(0);
        let rtype = req.find(code::CC_REQUEST_TYPE, 0).and_then(|a| a.as_i32().ok()).unwrap_or(0);
        let retransmit = req.header.flags.is_retransmit();
        // The one search of the ledger by Session-Id; the rest goes by position.
        let found = self.ledger.position(sid);
        // A request whose answer we already gave: same answer again, nothing charged (RFC 4006 §5.1, §7).
        if let Some(i) = found
            && let Some(prev) = self.ledger.at(i).work.recent.get(number)
        {
            let mut again = prev.clone();
            again.header.hop_by_hop = req.header.hop_by_hop;
            again.header.end_to_end = req.header.end_to_end;
            let s = self.ledger.at_mut(i);
            s.record(self_max, RequestRecord::of(req, wall_ms, again.result_code().map(|r| r.0), true));
            if retransmit {
                s.duplicates_answered += 1;
            } else {
                s.anomaly(wall_ms, "repeated_number", format!("CC-Request-Number {number} again without the T flag"));
                if has_usage(req) {
                    s.anomaly(wall_ms, "usage_reported_twice", format!("usage of request {number} reported again"));
                }
            }
            if let Some(rt) = s.work.live.as_mut() {
                rt.last_activity = now;
                rt.reach.peer = peer;
            }
            return again;
        }
        let origin_host = text_of(req, code::ORIGIN_HOST).unwrap_or_default();
        let origin_realm = text_of(req, code::ORIGIN_REALM).unwrap_or_default();
        let subscriber = subscriber_of(req);
        let app = req.header.application_id;
        // Session bookkeeping and sequencing anomalies.
        let existing = found.map(|i| (i, self.ledger.at(i).state, self.ledger.at(i).last_number));
        let rc_session = match (rtype, existing) {
            (1, None) | (4, None) => None,
            (1, Some((i, _, _))) | (4, Some((i, _, _))) => {
                let s = self.ledger.at_mut(i);
                s.anomaly(wall_ms, "repeated_initial", "a second initial/event request for the session".into());
                None
            }
            (_, None) => {
                let mut s = LedgerSession::new(sid, app, subscriber.clone());
                s.state = SessionState::Unknown;
                s.anomaly(
                    wall_ms,
                    "unknown_session",
                    format!("{} for a session never opened", request_type_name(Some(rtype))),
                );
                s.record(self_max, RequestRecord::of(req, wall_ms, Some(ResultCode::UNKNOWN_SESSION_ID.0), false));
                self.ledger.push(s);
                return self.base_answer(req, ResultCode::UNKNOWN_SESSION_ID);
            }
            (_, Some((i, state, _))) if state != SessionState::Open => {
                let s = self.ledger.at_mut(i);
                s.anomaly(
                    wall_ms,
                    "request_after_termination",
                    format!("request {number} after the session ended ({state:?})"),
                );
                s.record(self_max, RequestRecord::of(req, wall_ms, Some(ResultCode::UNKNOWN_SESSION_ID.0), false));
                return self.base_answer(req, ResultCode::UNKNOWN_SESSION_ID);
            }
            (_, Some((_, _, last))) => last,
        };
        let i = match found {
            Some(i) => i,
            None => self.ledger.push(LedgerSession::new(sid, app, subscriber.clone())),
        };
        let entry = self.ledger.at_mut(i);
        if let Some(last) = rc_session {
            if number <= last {
                entry.anomaly(wall_ms, "repeated_number", format!("CC-Request-Number {number} after {last}"));
            } else if number > last + 1 {
                entry.anomaly(wall_ms, "skipped_number", format!("CC-Request-Number {number} after {last}"));
            }
        } else if number != 0 {
            entry.anomaly(wall_ms, "skipped_number", format!("first request numbered {number}, not 0"));
        }
        entry.last_number = Some(entry.last_number.map_or(number, |l| l.max(number)));
        let watched_from = entry.work.live.as_ref().map(|l| l.watched_from);
        entry.work.live = Some(SessionRuntime {
            reach: Reachability { peer, host: origin_host, realm: origin_realm },
            last_activity: now,
            app,
            watched_from: watched_from.unwrap_or(now),
        });
        if watched_from.is_none() {
            self.open.insert((now, i));
        }
        let answer = if app == AppId::GX { self.gx(req, i, rtype) } else { self.ro(req, i, rtype, subscriber) };
        let rc = answer.result_code().map(|r| r.0);
        let s = self.ledger.at_mut(i);
        s.record(self_max, RequestRecord::of(req, wall_ms, rc, false));
        if rtype == 3 || rtype == 4 {
            s.state = if rtype == 3 { SessionState::Terminated } else { SessionState::Event };
            if let Some(l) = s.work.live.take() {
                self.open.remove(&(l.watched_from, i));
            }
        }
        s.work.recent.remember(number, &answer);
        answer
    }

    fn ro(&mut self, req: &Message, i: usize, rtype: i32, subscriber: Option<String>) -> Message {
        let acct = self.account(subscriber.as_deref().unwrap_or("anonymous"));
        if rtype == 4 {
            return self.ro_event(req, i, acct);
        }
        let mut answer = self.base_answer(req, ResultCode::SUCCESS);
        let msccs: Vec<Avp> = req.find_all(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).cloned().collect();
        let mut all_denied = !msccs.is_empty();
        for mscc in &msccs {
            let members: Vec<Avp> = mscc.grouped_iter().filter_map(Result::ok).collect();
            let find = |c: u32| members.iter().find(|a| a.is(c, 0));
            let rg = find(code::RATING_GROUP).and_then(|a| a.as_u32().ok()).unwrap_or(0);
            let sid_avp = find(code::SERVICE_IDENTIFIER).cloned();
            for usu in members.iter().filter(|a| a.is(code::USED_SERVICE_UNIT, 0)) {
                self.debit(i, acct, rg, &Units::from_grouped(usu));
            }
            self.release(i, acct, rg);
            let rsu = find(code::REQUESTED_SERVICE_UNIT);
            if rtype == 3 || rsu.is_none() {
                all_denied = false;
                continue;
            }
            let (grant_avps, denied) = self.grant(i, acct, rg, rsu);
            all_denied &= denied;
            let mut out = grant_avps;
            out.push(Avp::u32(code::RATING_GROUP, rg));
            if let Some(s) = sid_avp {
                out.push(s);
            }
            answer.push(Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &out));
        }
        if rtype == 3 {
            self.release_all(i, acct);
        }
        if rtype == 1 {
            if let Some(f) = self.config.ro.cc_session_failover {
                answer.push(Avp::i32(cc::CC_SESSION_FAILOVER, f));
            }
            if let Some(h) = self.config.ro.ccfh {
                answer.push(Avp::i32(code::CREDIT_CONTROL_FAILURE_HANDLING, h));
            }
        }
        if rtype == 1 && all_denied {
            // RFC 4006 §9.1: nothing can be granted at all: the session is refused.
            set_result(&mut answer, ResultCode::CREDIT_LIMIT_REACHED);
        }
        answer
    }

    /// Debits reported usage (RFC 4006 §5.1.2: usage is reported in USU and charged once).
    fn debit(&mut self, session: usize, acct: usize, rg: u32, used: &Units) {
        let acct = self.balances.at_mut(acct);
        let mut debited = Units::default();
        for k in used.kinds() {
            let v = used.get(k).unwrap_or(0);
            let i = UnitKind::ALL.iter().position(|x| *x == k).expect("listed");
            let take = if acct.limited[i] { v.min(acct.balance.get(k).unwrap_or(0)) } else { v };
            if acct.limited[i] {
                Account::change(&mut acct.balance, k, -(i128::from(take)));
            }
            debited.set(k, Some(take));
        }
        let l = self.ledger.at_mut(session).rating_groups.entry(rg).or_default();
        l.reported_used.add(used);
        l.debited.add(&debited);
    }

    fn release(&mut self, session: usize, acct: usize, rg: u32) {
        let outstanding =
            self.ledger.at_mut(session).rating_groups.get_mut(&rg).map(|l| std::mem::take(&mut l.outstanding));
        if let Some(o) = outstanding {
            let acct = self.balances.at_mut(acct);
            for k in o.kinds() {
                Account::change(&mut acct.reserved, k, -(i128::from(o.get(k).unwrap_or(0))));
            }
        }
    }

    fn release_all(&mut self, session: usize, acct: usize) {
        let rgs: Vec<u32> = self.ledger.at(session).rating_groups.keys().copied().collect();
        for rg in rgs {
            self.release(session, acct, rg);
        }
    }

    /// Grants per the rating group's tariff: full grant, the last units with Final-Unit-Indication, or 4012.
    fn grant(&mut self, session: usize, acct: usize, rg: u32, rsu: Option<&Avp>) -> (Vec<Avp>, bool) {
        let tariff = self
            .config
            .ro
            .rating_groups
            .iter()
            .find(|t| t.rating_group == rg)
            .cloned()
            .unwrap_or_else(|| self.config.ro.default_rating_group.clone());
        let asked = rsu.map(Units::from_grouped).unwrap_or_default();
        let kinds: Vec<UnitKind> = if asked.is_empty() {
            tariff.grant.kinds().collect()
        } else {
            asked.kinds().filter(|k| tariff.grant.get(*k).is_some()).collect()
        };
        let acct = self.balances.at_mut(acct);
        let mut granted = Units::default();
        let mut final_units = false;
        for k in &kinds {
            let want = tariff.grant.get(*k).unwrap_or(0);
            let give = match acct.available(*k) {
                None => want,
                Some(avail) if avail >= want => want,
                Some(avail) => {
                    final_units = true;
                    avail
                }
            };
            if give > 0 {
                granted.set(*k, Some(give));
                Account::change(&mut acct.reserved, *k, i128::from(give));
            }
        }
        let mut out = Vec::new();
        if granted.is_empty() {
            // RFC 4006 §9.1: DIAMETER_CREDIT_LIMIT_REACHED for this rating group.
            out.push(Avp::u32(code::RESULT_CODE, ResultCode::CREDIT_LIMIT_REACHED.0));
            return (out, true);
        }
        let l = self.ledger.at_mut(session).rating_groups.entry(rg).or_default();
        l.granted.add(&granted);
        l.outstanding = granted;
        out.push(Avp::grouped(code::GRANTED_SERVICE_UNIT, &granted.to_avps()));
        out.push(Avp::u32(code::RESULT_CODE, ResultCode::SUCCESS.0));
        if !tariff.validity_time.is_zero() {
            out.push(Avp::u32(code::VALIDITY_TIME, tariff.validity_time.as_secs() as u32));
        }
        if tariff.time_quota_threshold > 0 {
            out.push(v(Avp::u32(tgpp::TIME_QUOTA_THRESHOLD, tariff.time_quota_threshold)));
        }
        if tariff.volume_quota_threshold > 0 {
            out.push(v(Avp::u32(tgpp::VOLUME_QUOTA_THRESHOLD, tariff.volume_quota_threshold)));
        }
        if !tariff.quota_holding_time.is_zero() {
            out.push(v(Avp::u32(tgpp::QUOTA_HOLDING_TIME, tariff.quota_holding_time.as_secs() as u32)));
        }
        if final_units {
            let mut fui = vec![Avp::i32(
                code::FINAL_UNIT_ACTION,
                match tariff.final_unit_action {
                    FinalUnitAction::Terminate => 0,
                    FinalUnitAction::Redirect => 1,
                    FinalUnitAction::RestrictAccess => 2,
                },
            )];
            match tariff.final_unit_action {
                FinalUnitAction::Redirect => {
                    let kind = if tariff.redirect_address.starts_with("sip:") { 3 } else { 2 };
                    fui.push(Avp::grouped(
                        cc::REDIRECT_SERVER,
                        &[
                            Avp::i32(cc::REDIRECT_ADDRESS_TYPE, kind),
                            Avp::utf8(cc::REDIRECT_SERVER_ADDRESS, &tariff.redirect_address),
                        ],
                    ));
                }
                FinalUnitAction::RestrictAccess => fui.push(Avp::utf8(cc::FILTER_ID, &tariff.restriction_filter)),
                FinalUnitAction::Terminate => {}
            }
            out.push(Avp::grouped(code::FINAL_UNIT_INDICATION, &fui));
        }
        (out, false)
    }

    /// Event charging (RFC 4006 §6.3, Requested-Action §8.41).
    fn ro_event(&mut self, req: &Message, session: usize, account: usize) -> Message {
        let action = req.find(code::REQUESTED_ACTION, 0).and_then(|a| a.as_i32().ok()).unwrap_or(0);
        let rsu = req.find(code::REQUESTED_SERVICE_UNIT, 0).map(Units::from_grouped).unwrap_or_default();
        let asked = if rsu.is_empty() { Units { units: Some(1), ..Units::default() } } else { rsu };
        let price = self.config.ro.event_price;
        let currency = self.config.ro.currency_code;
        let acct = self.balances.at(account);
        let enough = asked.kinds().all(|k| acct.available(k).is_none_or(|a| a >= asked.get(k).unwrap_or(0)));
        let mut answer = self.base_answer(req, ResultCode::SUCCESS);
        let rg = 0;
        match action {
            0 => {
                // DIRECT_DEBITING
                if !enough {
                    set_result(&mut answer, ResultCode::CREDIT_LIMIT_REACHED);
                    return answer;
                }
                self.ledger.at_mut(session).rating_groups.entry(rg).or_default().granted.add(&asked);
                self.debit(session, account, rg, &asked);
                answer.push(Avp::grouped(code::GRANTED_SERVICE_UNIT, &asked.to_avps()));
            }
            1 => {
                // REFUND_ACCOUNT
                let acct = self.balances.at_mut(account);
                for k in asked.kinds() {
                    Account::change(&mut acct.balance, k, i128::from(asked.get(k).unwrap_or(0)));
                }
                let l = self.ledger.at_mut(session).rating_groups.entry(rg).or_default();
                l.refunded.add(&asked);
            }
            2 => {
                // CHECK_BALANCE: ENOUGH_CREDIT (0) / NO_CREDIT (1)
                answer.push(Avp::i32(cc::CHECK_BALANCE_RESULT, if enough { 0 } else { 1 }));
            }
            _ => {
                // PRICE_ENQUIRY: Cost-Information with the price in hundredths.
                let n = asked.get(UnitKind::Units).unwrap_or(1);
                answer.push(Avp::grouped(
                    cc::COST_INFORMATION,
                    &[
                        Avp::grouped(
                            cc::UNIT_VALUE,
                            &[Avp::i64(cc::VALUE_DIGITS, (price * n) as i64), Avp::i32(cc::EXPONENT, -2)],
                        ),
                        Avp::u32(cc::CURRENCY_CODE, currency),
                    ],
                ));
            }
        }
        answer
    }

    fn gx(&mut self, req: &Message, session: usize, rtype: i32) -> Message {
        let g = self.config.gx.clone();
        let mut answer = self.base_answer(req, ResultCode::SUCCESS);
        let s = self.ledger.at_mut(session);
        // What the PCEF reports: event triggers, rule failures, usage.
        for t in req.find_all(tgpp::EVENT_TRIGGER, 10415).filter_map(|a| a.as_i32().ok()) {
            s.gx.event_triggers_reported.push(t);
        }
        for report in req.find_all(tgpp::CHARGING_RULE_REPORT, 10415) {
            let members: Vec<Avp> = report.grouped_iter().filter_map(Result::ok).collect();
            let names: Vec<String> = members
                .iter()
                .filter(|a| a.is(tgpp::CHARGING_RULE_NAME, 10415))
                .map(|a| String::from_utf8_lossy(a.data()).into_owned())
                .collect();
            if let Some(code) =
                members.iter().find(|a| a.is(tgpp::RULE_FAILURE_CODE, 10415)).and_then(|a| a.as_i32().ok())
            {
                for n in names {
                    s.gx.rule_failures.push((n, code));
                }
            }
        }
        for umi in req.find_all(tgpp::USAGE_MONITORING_INFORMATION, 10415) {
            for usu in umi.grouped_iter().filter_map(Result::ok).filter(|a| a.is(code::USED_SERVICE_UNIT, 0)) {
                let u = Units::from_grouped(&usu);
                s.gx.usage_reported.add(&u);
                s.rating_groups.entry(0).or_default().reported_used.add(&u);
            }
        }
        if req.find(tgpp::SUPPORTED_FEATURES, 10415).is_some() {
            answer.push(req.find(tgpp::SUPPORTED_FEATURES, 10415).cloned().expect("present"));
        }
        if rtype == 1 {
            let mut install = Vec::new();
            for r in &g.rules {
                let mut def = vec![v(Avp::octets(tgpp::CHARGING_RULE_NAME, r.name.clone().into_bytes()))];
                for f in &r.flows {
                    def.push(v(Avp::grouped(tgpp::FLOW_INFORMATION, &[v(Avp::utf8(tgpp::FLOW_DESCRIPTION, f))])));
                }
                def.push(v(Avp::grouped(tgpp::QOS_INFORMATION, &[v(Avp::i32(tgpp::QOS_CLASS_IDENTIFIER, r.qci))])));
                def.push(Avp::u32(code::RATING_GROUP, r.rating_group));
                def.push(v(Avp::u32(tgpp::PRECEDENCE, r.precedence)));
                install.push(v(Avp::grouped(tgpp::CHARGING_RULE_DEFINITION, &def)));
                s.gx.rules_installed.push(r.name.clone());
            }
            for n in &g.rule_names {
                install.push(v(Avp::octets(tgpp::CHARGING_RULE_NAME, n.clone().into_bytes())));
                s.gx.rules_installed.push(n.clone());
            }
            for n in &g.rule_base_names {
                install.push(v(Avp::utf8(tgpp::CHARGING_RULE_BASE_NAME, n)));
                s.gx.rules_installed.push(n.clone());
            }
            if !install.is_empty() {
                answer.push(v(Avp::grouped(tgpp::CHARGING_RULE_INSTALL, &install)));
            }
            for t in &g.event_triggers {
                answer.push(v(Avp::i32(tgpp::EVENT_TRIGGER, *t)));
            }
            answer.push(v(Avp::grouped(
                tgpp::QOS_INFORMATION,
                &[v(Avp::u32(tgpp::APN_AMBR_UL, g.apn_ambr_ul)), v(Avp::u32(tgpp::APN_AMBR_DL, g.apn_ambr_dl))],
            )));
            answer.push(
                v(Avp::grouped(
                    tgpp::DEFAULT_EPS_BEARER_QOS,
                    &[
                        v(Avp::i32(tgpp::QOS_CLASS_IDENTIFIER, g.default_qci)),
                        v(Avp::grouped(tgpp::ALLOCATION_RETENTION_PRIORITY, &[v(Avp::u32(tgpp::PRIORITY_LEVEL, 8))]))
                            .with_mandatory(false),
                    ],
                ))
                .with_mandatory(false),
            );
        }
        if rtype != 3 && !g.monitoring_key.is_empty() && g.monitoring_volume > 0 {
            let granted = Units { total_octets: Some(g.monitoring_volume), ..Units::default() };
            s.rating_groups.entry(0).or_default().granted.add(&granted);
            answer.push(
                v(Avp::grouped(
                    tgpp::USAGE_MONITORING_INFORMATION,
                    &[
                        v(Avp::octets(tgpp::MONITORING_KEY, g.monitoring_key.clone().into_bytes()))
                            .with_mandatory(false),
                        Avp::grouped(code::GRANTED_SERVICE_UNIT, &granted.to_avps()),
                        v(Avp::i32(tgpp::USAGE_MONITORING_LEVEL, 0)).with_mandatory(false),
                    ],
                ))
                .with_mandatory(false),
            );
        }
        answer
    }

    /// Closes sessions idle for longer than Tcc (RFC 4006 §13): reservations released, marked in the ledger.
    pub fn expire(&mut self, now: Instant, wall_ms: u64) -> Vec<String> {
        if self.config.tcc.is_zero() {
            return Vec::new();
        }
        let tcc = self.config.tcc;
        let mut closed = Vec::new();
        while let Some(&(from, i)) = self.open.first() {
            if now.saturating_duration_since(from) < tcc {
                break;
            }
            self.open.pop_first();
            let Some(live) = self.ledger.at_mut(i).work.live.as_mut() else { continue };
            if now.saturating_duration_since(live.last_activity) < tcc {
                // Heard from since: watched again from then.
                live.watched_from = live.last_activity;
                self.open.insert((live.last_activity, i));
                continue;
            }
            self.ledger.at_mut(i).work.live = None;
            let subscriber = self.ledger.at(i).subscriber.clone();
            let acct = self.account(subscriber.as_deref().unwrap_or("anonymous"));
            self.release_all(i, acct);
            let s = self.ledger.at_mut(i);
            s.state = SessionState::ClosedByTcc;
            s.anomaly(wall_ms, "closed_by_tcc", format!("no request for {tcc:?}"));
            closed.push(s.session_id.clone());
        }
        closed
    }

    /// Where a session's client is reached, for RAR/ASR.
    pub fn reachability(&self, sid: &str) -> Result<Reachability, OcsError> {
        self.open_session(sid).map(|r| r.reach.clone())
    }

    /// The working state of an open session, by Session-Id.
    fn open_session(&self, sid: &str) -> Result<&SessionRuntime, OcsError> {
        let i = self.ledger.position(sid).ok_or_else(|| OcsError::UnknownSession(sid.into()))?;
        self.live(i).ok_or_else(|| OcsError::NotOpen(sid.into()))
    }

    /// The working state of the session at ledger position `i`, while it is open.
    fn live(&self, i: usize) -> Option<&SessionRuntime> {
        self.ledger.at(i).work.live.as_ref()
    }

    fn server_request(&self, sid: &str, cmd: CommandCode) -> Result<(Message, PeerId), OcsError> {
        let SessionRuntime { reach, app, .. } = self.open_session(sid)?;
        let m = Message::request(cmd, *app)
            .with(Avp::utf8(code::SESSION_ID, sid))
            .with(Avp::utf8(code::ORIGIN_HOST, &self.origin_host))
            .with(Avp::utf8(code::ORIGIN_REALM, &self.origin_realm))
            .with(Avp::utf8(code::DESTINATION_REALM, &reach.realm))
            .with(Avp::utf8(code::DESTINATION_HOST, &reach.host))
            .with(Avp::u32(code::AUTH_APPLICATION_ID, app.0));
        Ok((m, reach.peer))
    }

    /// A Re-Auth-Request (RFC 4006 §5.5, TS 29.212 §4.5) for the session: Ro rating groups to re-authorize, or
    /// Gx rules to install / remove and event triggers to arm.
    pub fn rar(
        &self,
        sid: &str,
        rating_groups: &[u32],
        install: &[String],
        remove: &[String],
        triggers: &[i32],
    ) -> Result<(Message, PeerId), OcsError> {
        let (mut m, peer) = self.server_request(sid, CommandCode::RE_AUTH)?;
        m.push(Avp::i32(code::RE_AUTH_REQUEST_TYPE, 0));
        for rg in rating_groups {
            m.push(Avp::u32(code::RATING_GROUP, *rg));
        }
        if !install.is_empty() {
            let names: Vec<Avp> =
                install.iter().map(|n| v(Avp::octets(tgpp::CHARGING_RULE_NAME, n.clone().into_bytes()))).collect();
            m.push(v(Avp::grouped(tgpp::CHARGING_RULE_INSTALL, &names)));
        }
        if !remove.is_empty() {
            let names: Vec<Avp> =
                remove.iter().map(|n| v(Avp::octets(tgpp::CHARGING_RULE_NAME, n.clone().into_bytes()))).collect();
            m.push(v(Avp::grouped(tgpp::CHARGING_RULE_REMOVE, &names)));
        }
        for t in triggers {
            m.push(v(Avp::i32(tgpp::EVENT_TRIGGER, *t)));
        }
        Ok((m, peer))
    }

    /// An Abort-Session-Request (RFC 6733 §8.5, RFC 4006 §5.6).
    pub fn asr(&self, sid: &str) -> Result<(Message, PeerId), OcsError> {
        self.server_request(sid, CommandCode::ABORT_SESSION)
    }

    /// Records the answer (or failure) of a RAR/ASR we sent.
    pub fn record_server_answer(
        &mut self,
        wall_ms: u64,
        sid: &str,
        kind: &str,
        result_code: Option<u32>,
        answered_by: Option<String>,
    ) {
        if let Some(s) = self.ledger.get_mut(sid) {
            s.server_requests.push(ServerRequestRecord { kind: kind.into(), at_ms: wall_ms, result_code, answered_by });
            if result_code != Some(2001) {
                s.anomaly(wall_ms, "answer_rejected", format!("{kind} answered {result_code:?}"));
            }
        }
    }

    /// Adds the install/remove of a Gx RAR to the ledger once it is answered.
    pub fn record_gx_rules(&mut self, sid: &str, install: &[String]) {
        if let Some(s) = self.ledger.get_mut(sid) {
            s.gx.rules_installed.extend(install.iter().cloned());
        }
    }
}

fn has_usage(m: &Message) -> bool {
    m.find(code::USED_SERVICE_UNIT, 0).is_some()
        || m.find_all(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0)
            .any(|mscc| mscc.grouped_iter().filter_map(Result::ok).any(|a| a.is(code::USED_SERVICE_UNIT, 0)))
}

fn set_result(m: &mut Message, rc: ResultCode) {
    for a in &mut m.avps {
        if a.is(code::RESULT_CODE, 0) {
            *a = Avp::u32(code::RESULT_CODE, rc.0);
        }
    }
}

#[cfg(test)]
mod tests;
