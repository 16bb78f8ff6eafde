//! The ledger: what every session asked, was granted, reported and was charged, and the anomalies a correct
//! client never causes. The conformance suite judges by [`Check`].

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::codec::{AppId, Avp, Message, code};
use crate::units::Units;

/// Where a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Between CCR-I and CCR-T.
    Open,
    /// Ended by CCR-T.
    Terminated,
    /// A one-shot event (CCR-E).
    Event,
    /// Closed by the server after Tcc without a request.
    ClosedByTcc,
    /// Requests for a Session-Id that was never opened.
    Unknown,
}

/// One request as received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// `initial`, `update`, `termination`, `event`.
    pub request_type: String,
    /// CC-Request-Number.
    pub number: u32,
    /// Origin-Host.
    pub origin_host: String,
    /// The T flag.
    pub t_flag: bool,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The Result-Code answered, if any.
    pub result_code: Option<u32>,
    /// Answered from the cache (already processed), not charged again.
    pub duplicate: bool,
    /// The usage it reported (Used-Service-Unit, in every Multiple-Services-Credit-Control and at the top level).
    #[serde(skip_serializing_if = "Units::is_empty")]
    pub used: Units,
    /// The Reporting-Reason values it carried (TS 32.299 §7.2.175), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reporting_reasons: Vec<i32>,
    /// Its Service-Context-Id (RFC 4006 §8.42), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_context_id: Option<String>,
}

/// Reporting-Reason (TS 32.299 §7.2.175), 3GPP vendor.
const REPORTING_REASON: u32 = 872;
const TGPP: u32 = 10415;

impl RequestRecord {
    pub(crate) fn of(req: &Message, at_ms: u64, result_code: Option<u32>, duplicate: bool) -> RequestRecord {
        RequestRecord {
            request_type: super::request_type_name(req.find(code::CC_REQUEST_TYPE, 0).and_then(|a| a.as_i32().ok()))
                .into(),
            number: req.find(code::CC_REQUEST_NUMBER, 0).and_then(|a| a.as_u32().ok()).unwrap_or(0),
            origin_host: req.find(code::ORIGIN_HOST, 0).and_then(|a| a.as_utf8().ok()).unwrap_or_default().into(),
            t_flag: req.header.flags.is_retransmit(),
            at_ms,
            result_code,
            duplicate,
            used: Units::default(),
            reporting_reasons: Vec::new(),
            service_context_id: req
                .find(code::SERVICE_CONTEXT_ID, 0)
                .and_then(|a| a.as_utf8().ok())
                .map(str::to_string),
        }
        .with_usage(req)
    }

    fn with_usage(mut self, req: &Message) -> RequestRecord {
        let msccs: Vec<Vec<Avp>> =
            req.find_all(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).filter_map(|m| m.grouped_avps().ok()).collect();
        let top = req.avps.iter().filter(|a| a.is(code::USED_SERVICE_UNIT, 0));
        for usu in top.chain(msccs.iter().flatten().filter(|a| a.is(code::USED_SERVICE_UNIT, 0))) {
            self.used.add(&Units::from_grouped(usu));
            let inner = usu.grouped_avps().unwrap_or_default();
            self.reporting_reasons
                .extend(inner.iter().filter(|a| a.is(REPORTING_REASON, TGPP)).filter_map(|a| a.as_i32().ok()));
        }
        for m in &msccs {
            self.reporting_reasons
                .extend(m.iter().filter(|a| a.is(REPORTING_REASON, TGPP)).filter_map(|a| a.as_i32().ok()));
        }
        self
    }
}

/// Units per rating group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RatingGroupLedger {
    /// Granted over the session.
    pub granted: Units,
    /// Reported as used.
    pub reported_used: Units,
    /// Taken from the balance (reported usage, capped at what the balance held).
    pub debited: Units,
    /// Given back by REFUND_ACCOUNT.
    pub refunded: Units,
    /// The current grant, reserved until reported.
    pub outstanding: Units,
}

/// Something a correct client never causes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// `repeated_number`, `skipped_number`, `usage_reported_twice`, `request_after_termination`, `closed_by_tcc`,
    /// `answer_rejected`, `unknown_session`, `repeated_initial`.
    pub kind: String,
    /// What exactly.
    pub detail: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// A RAR or ASR the simulator sent, and how it was answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerRequestRecord {
    /// `RAR` or `ASR`.
    pub kind: String,
    /// When it was sent.
    pub at_ms: u64,
    /// The answer's Result-Code; none when it was not answered.
    pub result_code: Option<u32>,
    /// The answer's Origin-Host.
    pub answered_by: Option<String>,
}

/// What the PCEF reported on Gx.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GxLedger {
    /// Rules and rule bases installed.
    pub rules_installed: Vec<String>,
    /// Event-Trigger values reported in CCR-U.
    pub event_triggers_reported: Vec<i32>,
    /// Rules reported failed, with their Rule-Failure-Code.
    pub rule_failures: Vec<(String, i32)>,
    /// Usage reported in Usage-Monitoring-Information.
    pub usage_reported: Units,
}

/// Answers kept per session for retransmissions.
const RECENT_ANSWERS: usize = 4;

/// A session's last answers, by CC-Request-Number: the simulator's cache for retransmissions.
#[derive(Clone, Default)]
pub(crate) struct RecentAnswers(VecDeque<(u32, Message)>);

impl RecentAnswers {
    /// Keeps `answer` (RFC 4006 §7: a client has at most a few requests of a session outstanding, so a handful per
    /// session is enough and memory stays bounded per session).
    pub(crate) fn remember(&mut self, number: u32, answer: &Message) {
        if self.0.len() == RECENT_ANSWERS {
            self.0.pop_front();
        }
        self.0.push_back((number, answer.clone()));
    }

    /// The answer given to request `number`, if still kept.
    pub(crate) fn get(&self, number: u32) -> Option<&Message> {
        self.0.iter().rev().find(|(n, _)| *n == number).map(|(_, m)| m)
    }
}

/// The largest chunk of a [`RequestLog`].
const LOG_CHUNK_MAX: usize = 256;

/// A session's requests in arrival order, in chunks that are never moved once allocated: each new chunk as large as
/// the log so far (4 records at least, [`LOG_CHUNK_MAX`] at most). A vector doubled instead, copying the whole list,
/// and the sessions of a load that runs in step all doubled at the same request number: 100 sessions of thousands
/// of requests stalled the simulator for about 50 ms (BENCHMARKS.md, "OCS simulator throughput"). Serialized as a
/// list.
#[derive(Clone, Default)]
pub struct RequestLog {
    chunks: Vec<Vec<RequestRecord>>,
    len: usize,
}

impl RequestLog {
    /// Requests listed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// None listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first request.
    pub fn first(&self) -> Option<&RequestRecord> {
        self.chunks.first().and_then(|c| c.first())
    }

    /// The requests in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &RequestRecord> {
        self.chunks.iter().flatten()
    }

    pub(crate) fn push(&mut self, r: RequestRecord) {
        let full = self.chunks.last().is_none_or(|c| c.len() == c.capacity());
        if full {
            self.chunks.push(Vec::with_capacity(self.len.clamp(4, LOG_CHUNK_MAX)));
        }
        self.chunks.last_mut().expect("a chunk with room").push(r);
        self.len += 1;
    }
}

impl PartialEq for RequestLog {
    fn eq(&self, other: &RequestLog) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for RequestLog {}

impl Serialize for RequestLog {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl std::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One session in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerSession {
    /// Session-Id.
    pub session_id: String,
    /// `ro` or `gx`.
    pub app: String,
    /// Subscription-Id-Data of the first Subscription-Id.
    pub subscriber: Option<String>,
    /// Where it is.
    pub state: SessionState,
    /// Highest CC-Request-Number seen.
    pub last_number: Option<u32>,
    /// Every request, in arrival order (up to the configured maximum).
    pub requests: RequestLog,
    /// Requests beyond the maximum, counted but not listed.
    pub requests_not_listed: u64,
    /// Units per rating group.
    pub rating_groups: BTreeMap<u32, RatingGroupLedger>,
    /// T-flag retransmissions answered from the cache, not charged again.
    pub duplicates_answered: u32,
    /// RAR/ASR sent.
    pub server_requests: Vec<ServerRequestRecord>,
    /// Gx reports.
    pub gx: GxLedger,
    /// What went wrong.
    pub anomalies: Vec<Anomaly>,
    /// What the simulator works with, kept with the session rather than in maps of their own: such a map grew by
    /// one entry per session and stalled the simulator each time it doubled.
    #[serde(skip)]
    pub(crate) work: Working,
}

/// A session's working state, not part of what the ledger records: a ledger session is compared and printed without
/// it.
#[derive(Clone, Default)]
pub(crate) struct Working {
    /// The last answers given, by CC-Request-Number, for retransmissions.
    pub(crate) recent: RecentAnswers,
    /// While the session is open: where its client is and when it was last heard from.
    pub(crate) live: Option<super::SessionRuntime>,
}

impl PartialEq for Working {
    fn eq(&self, _: &Working) -> bool {
        true
    }
}

impl Eq for Working {}

impl std::fmt::Debug for Working {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = if self.live.is_some() { "open" } else { "not open" };
        write!(f, "{} answers kept, {live}", self.recent.0.len())
    }
}

impl LedgerSession {
    pub(crate) fn new(sid: &str, app: AppId, subscriber: Option<String>) -> LedgerSession {
        LedgerSession {
            session_id: sid.into(),
            app: if app == AppId::GX { "gx" } else { "ro" }.into(),
            subscriber,
            state: SessionState::Open,
            last_number: None,
            requests: RequestLog::default(),
            requests_not_listed: 0,
            rating_groups: BTreeMap::new(),
            duplicates_answered: 0,
            server_requests: Vec::new(),
            gx: GxLedger::default(),
            anomalies: Vec::new(),
            work: Working::default(),
        }
    }

    pub(crate) fn record(&mut self, max: usize, r: RequestRecord) {
        if self.requests.len() < max {
            self.requests.push(r);
        } else {
            self.requests_not_listed += 1;
        }
    }

    pub(crate) fn anomaly(&mut self, at_ms: u64, kind: &str, detail: String) {
        self.anomalies.push(Anomaly { kind: kind.into(), detail, at_ms });
    }
}

/// `GET /v1/ledger/check`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Check {
    /// No anomaly anywhere.
    pub clean: bool,
    /// Session counts.
    pub sessions: SessionCounts,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<String, u64>,
    /// Unit totals over every session.
    pub units: UnitTotals,
    /// T-flag retransmissions answered from the cache.
    pub duplicates_answered: u64,
}

/// Session counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounts {
    /// Sessions that sent CCR-I.
    pub opened: u64,
    /// Sessions ended by CCR-T.
    pub terminated: u64,
    /// Sessions still open.
    pub open: u64,
    /// Event (CCR-E) transactions.
    pub events: u64,
    /// Sessions the server closed (Tcc).
    pub closed_by_tcc: u64,
}

/// Unit totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnitTotals {
    /// Granted.
    pub granted: Units,
    /// Reported as used.
    pub reported_used: Units,
    /// Debited from balances.
    pub debited: Units,
}

impl Check {
    pub(crate) fn of<'a>(sessions: impl Iterator<Item = &'a LedgerSession>) -> Check {
        let mut c = Check::default();
        for s in sessions {
            if s.requests.first().is_some_and(|r| r.request_type == "initial") {
                c.sessions.opened += 1;
            }
            match s.state {
                SessionState::Terminated => c.sessions.terminated += 1,
                SessionState::Open => c.sessions.open += 1,
                SessionState::Event => c.sessions.events += 1,
                SessionState::ClosedByTcc => c.sessions.closed_by_tcc += 1,
                SessionState::Unknown => {}
            }
            for a in &s.anomalies {
                *c.anomalies.entry(a.kind.clone()).or_default() += 1;
            }
            for l in s.rating_groups.values() {
                c.units.granted.add(&l.granted);
                c.units.reported_used.add(&l.reported_used);
                c.units.debited.add(&l.debited);
            }
            c.duplicates_answered += u64::from(s.duplicates_answered);
        }
        c.clean = c.anomalies.is_empty();
        c
    }
}

/// Entries per chunk of [`Chunks`].
const CHUNK: usize = 4096;

/// Storage that never moves what it holds: fixed-size chunks, appended to. A vector that doubled copied every entry
/// at once, and with millions of entries stalled the simulator (see `Ocs::accounts`); here an entry's position is
/// its index, for good.
pub(crate) struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Chunks<T> {
        Chunks { chunks: Vec::new(), len: 0 }
    }
}

impl<T> Chunks<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn at(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(crate) fn at_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Adds `x`; returns its position.
    pub(crate) fn push(&mut self, x: T) -> usize {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(x);
        self.len += 1;
        self.len - 1
    }
}

/// Every session the simulator served, by Session-Id. A request finds its session once, by key, and the rest of
/// its handling reaches it by position: a map of sessions by Session-Id, searched again at each step, compared long
/// keys with common prefixes about six times per request. The index is ordered and the sessions are in [`Chunks`],
/// so that nothing is ever moved or rehashed all at once.
#[derive(Default)]
pub struct Ledger {
    index: BTreeMap<String, usize>,
    sessions: Chunks<LedgerSession>,
}

impl Ledger {
    /// The session, if it was ever seen.
    pub fn get(&self, sid: &str) -> Option<&LedgerSession> {
        self.index.get(sid).map(|&i| self.at(i))
    }

    /// Sessions in the ledger.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// No session yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sessions in Session-Id order.
    pub fn values(&self) -> impl Iterator<Item = &LedgerSession> {
        self.index.values().map(|&i| self.at(i))
    }

    /// Where the session is, if it was ever seen.
    pub(crate) fn position(&self, sid: &str) -> Option<usize> {
        self.index.get(sid).copied()
    }

    pub(crate) fn get_mut(&mut self, sid: &str) -> Option<&mut LedgerSession> {
        let i = self.position(sid)?;
        Some(self.at_mut(i))
    }

    pub(crate) fn at(&self, i: usize) -> &LedgerSession {
        self.sessions.at(i)
    }

    pub(crate) fn at_mut(&mut self, i: usize) -> &mut LedgerSession {
        self.sessions.at_mut(i)
    }

    /// Adds a session not in the ledger yet; returns its position.
    pub(crate) fn push(&mut self, s: LedgerSession) -> usize {
        debug_assert!(!self.index.contains_key(&s.session_id), "{} is in the ledger", s.session_id);
        let key = s.session_id.clone();
        let i = self.sessions.push(s);
        self.index.insert(key, i);
        i
    }

    /// The session's position, added by `new` if it is not in the ledger yet.
    pub(crate) fn position_or_push(&mut self, sid: &str, new: impl FnOnce() -> LedgerSession) -> usize {
        match self.position(sid) {
            Some(i) => i,
            None => self.push(new()),
        }
    }
}

impl std::ops::Index<&str> for Ledger {
    type Output = LedgerSession;

    fn index(&self, sid: &str) -> &LedgerSession {
        self.get(sid).unwrap_or_else(|| panic!("no session {sid} in the ledger"))
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.index.keys().zip(self.values())).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_log_never_moves_a_record_and_lists_like_a_vector() {
        let record = |n: u32| RequestRecord {
            request_type: "update".into(),
            number: n,
            origin_host: "as1".into(),
            t_flag: false,
            at_ms: 1,
            result_code: Some(2001),
            duplicate: false,
            used: Units::default(),
            reporting_reasons: Vec::new(),
            service_context_id: None,
        };
        let mut log = RequestLog::default();
        let mut plain = Vec::new();
        log.push(record(0));
        let first: *const RequestRecord = log.first().expect("one");
        plain.push(record(0));
        for n in 1..3000 {
            log.push(record(n));
            plain.push(record(n));
        }
        assert!(std::ptr::eq(first, log.first().expect("still there")), "the first record was moved");
        assert_eq!((log.len(), log.iter().map(|r| r.number).max()), (3000, Some(2999)));
        assert!(log.iter().map(|r| r.number).eq(0..3000));
        assert!(log.chunks.iter().all(|c| c.len() <= LOG_CHUNK_MAX), "{:?}", log.chunks.len());
        assert_eq!(serde_json::to_value(&log).unwrap(), serde_json::to_value(&plain).unwrap());
        // A short log takes a small chunk: a ledger of millions of short sessions stays small.
        let mut short = RequestLog::default();
        short.push(record(0));
        assert_eq!(short.chunks[0].capacity(), 4);
    }

    #[test]
    fn ledger_positions_stay_put_across_chunks_and_values_come_in_session_id_order() {
        let mut l = Ledger::default();
        let n = CHUNK + CHUNK / 2;
        // Pushed in descending Session-Id order, so that arrival order and key order differ.
        let ids: Vec<String> = (0..n).rev().map(|i| format!("s;{i:06}")).collect();
        let positions: Vec<usize> = ids
            .iter()
            .map(|id| l.position_or_push(id, || LedgerSession::new(id, AppId::CREDIT_CONTROL, None)))
            .collect();
        assert_eq!(positions, (0..n).collect::<Vec<_>>());
        assert_eq!((l.len(), l.sessions.chunks.len()), (n, 2));
        // Found again, not pushed twice; reached by key and by position alike.
        assert_eq!(l.position_or_push(&ids[CHUNK + 1], || unreachable!()), CHUNK + 1);
        l.at_mut(CHUNK + 1).last_number = Some(7);
        assert_eq!(l[ids[CHUNK + 1].as_str()].last_number, Some(7));
        assert_eq!(l.get_mut("s;000000").map(|s| s.session_id.clone()), Some("s;000000".into()));
        assert!(l.get("s;none").is_none() && l.position("s;none").is_none());
        let listed: Vec<&str> = l.values().map(|s| s.session_id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
    }
}
