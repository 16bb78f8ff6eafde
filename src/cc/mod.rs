//! The credit-control client session of RFC 4006 §7 as updated by RFC 8506, sans-IO: one [`CcSession`] per
//! Diameter session, for Ro (application 4) and Gx (16777238).
//!
//! The service drives it ([`CcSession::start`], [`CcSession::update`], [`CcSession::terminate`],
//! [`CcSession::event`]); the network drives it with answers, send failures, RAR and ASR; time drives it through
//! [`CcSession::handle_timeout`]. It asks for requests to be sent and tells the service what it decided through
//! [`CcSession::poll_output`]. It never touches a socket or reads the clock.
//!
//! ```text
//! RFC 4006 §7 client, session based                         event based
//! Idle ──start──► PendingI ──CCA 2001──► Open                Idle ──event──► PendingE ──CCA──► Idle
//!                    │ failure/Tx: CCFH decides                Idle ──stored request──► PendingB ──any──► Idle
//! Open ──quota used / Validity-Time / RAR / report──► PendingU ──CCA 2001──► Open
//! Open ──service ends / FUI TERMINATE / ASR──► PendingT ──CCA or failure──► Idle
//! ```
//!
//! Requests the service makes while one is outstanding are queued and sent in order once the answer is in:
//! never two requests of one session in flight, so CC-Request-Numbers reach the server in order.
//!
//! Driving one session by hand, as the engine does (the clock is whatever `now` the caller passes):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use charging_ra::cc::{CcConfig, CcEvent, CcOutput, CcSession, CcState, Ccfh, Ddfh};
//! use charging_ra::codec::{AppId, Avp, Message, code};
//! use charging_ra::units::Units;
//!
//! let config = CcConfig {
//!     application: AppId::CREDIT_CONTROL,
//!     origin_host: "as1.ims.example.net".into(),
//!     origin_realm: "ims.example.net".into(),
//!     destination_realm: "ocs.example.net".into(),
//!     destination_host: None,
//!     service_context_id: "32260@3gpp.org".into(),
//!     tx: Duration::from_secs(10),
//!     ccfh: Ccfh::Terminate,
//!     ddfh: Ddfh::TerminateOrBuffer,
//!     subscription: Some((0, "46701234567".into())),
//! };
//! let now = Instant::now();
//! let mut s = CcSession::new(config, "as1.ims.example.net;1;1".into());
//! s.start(now, &[(Some(100), Units { time: Some(60), ..Units::default() })], None);
//! let Some(CcOutput::Send(ccr)) = s.poll_output() else { panic!("a CCR-I to send") };
//! assert_eq!(s.state(), CcState::PendingI);
//!
//! // The server grants 60 s on rating group 100.
//! let mut cca = Message::answer_to(&ccr);
//! cca.push(Avp::u32(code::RESULT_CODE, 2001));
//! cca.push(ccr.find(code::CC_REQUEST_TYPE, 0).unwrap().clone());
//! cca.push(ccr.find(code::CC_REQUEST_NUMBER, 0).unwrap().clone());
//! let gsu = Avp::grouped(code::GRANTED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, 60)]);
//! cca.push(Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &[gsu, Avp::u32(code::RATING_GROUP, 100)]));
//! assert!(s.handle_answer(now, &cca));
//! assert_eq!(s.state(), CcState::Open);
//! let granted = std::iter::from_fn(|| s.poll_output()).any(|o| {
//!     matches!(o, CcOutput::Event(CcEvent::Granted { rating_group: Some(100), units, .. }) if units.time == Some(60))
//! });
//! assert!(granted);
//! ```

mod quota;
mod snapshot;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use quota::{FinalUnit, Quota};
pub use snapshot::{CcSnapshot, SNAPSHOT_FORMAT, SnapshotError, SnapshotView};

use crate::codec::{AppId, Avp, CommandCode, CommandFlags, Message, ResultCode, VendorId, code};
use crate::units::Units;

/// Credit-Control-Failure-Handling (RFC 4006 §8.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Ccfh {
    /// 0: end the service when credit control fails (the RFC default).
    Terminate,
    /// 1: let the service go on without credit control.
    Continue,
    /// 2: retry on an alternate server, then end the service.
    RetryAndTerminate,
}

/// Direct-Debiting-Failure-Handling (RFC 4006 §8.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Ddfh {
    /// 0: refuse the service, or store the request and send it later (the RFC default).
    TerminateOrBuffer,
    /// 1: grant the service and keep the request for later.
    Continue,
}

/// Requested-Action of event charging (RFC 4006 §8.41).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestedAction {
    /// 0: debit now.
    DirectDebiting,
    /// 1: give money back.
    RefundAccount,
    /// 2: is there enough credit?
    CheckBalance,
    /// 3: what would it cost?
    PriceEnquiry,
}

impl RequestedAction {
    fn value(self) -> i32 {
        match self {
            RequestedAction::DirectDebiting => 0,
            RequestedAction::RefundAccount => 1,
            RequestedAction::CheckBalance => 2,
            RequestedAction::PriceEnquiry => 3,
        }
    }
}

/// How a session talks to its server.
#[derive(Clone, Debug, PartialEq)]
pub struct CcConfig {
    /// Ro (4) or Gx (16777238).
    pub application: AppId,
    /// Our Origin-Host. The names every session of a node shares are reference-counted (`"x".into()` makes one),
    /// so a session does not carry copies of them.
    pub origin_host: Arc<str>,
    /// Our Origin-Realm.
    pub origin_realm: Arc<str>,
    /// The server's realm.
    pub destination_realm: Arc<str>,
    /// The server's host, once known (the answers' Origin-Host replaces it: RFC 4006 §5.1).
    pub destination_host: Option<String>,
    /// Service-Context-Id (Ro), e.g. `32260@3gpp.org` for IMS.
    pub service_context_id: Arc<str>,
    /// Tx: how long to wait for an answer before CCFH/DDFH decide (RFC 4006 §13: 10 s suggested).
    pub tx: Duration,
    /// CCFH until the server says otherwise.
    pub ccfh: Ccfh,
    /// DDFH until the server says otherwise.
    pub ddfh: Ddfh,
    /// Subscription-Id (type, data): 0 END_USER_E164, 1 IMSI, 2 SIP_URI, 3 NAI, 4 PRIVATE.
    pub subscription: Option<(i32, String)>,
}

/// The session states of RFC 4006 §7, in the specification's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CcState {
    /// No request outstanding, no session.
    Idle,
    /// CCR-I sent.
    PendingI,
    /// Session open.
    Open,
    /// CCR-U sent.
    PendingU,
    /// CCR-T sent.
    PendingT,
    /// CCR-E sent.
    PendingE,
    /// A stored CCR-E being resent.
    PendingB,
}

/// What the service is told.
#[derive(Clone, Debug, PartialEq)]
pub enum CcEvent {
    /// The server granted units for a rating group (or the session level when `rating_group` is `None`).
    Granted {
        /// The rating group.
        rating_group: Option<u32>,
        /// The grant.
        units: Units,
        /// Validity-Time: report and re-authorize within this long.
        validity_time: Option<Duration>,
        /// Time/Volume/Unit-Quota-Threshold (TS 32.299): report (Reporting-Reason THRESHOLD) once the units left
        /// fall to these.
        threshold: Units,
        /// Final units: what to do once they are used.
        final_unit: Option<FinalUnit>,
    },
    /// The server refused a rating group (per-MSCC Result-Code, e.g. 4012 credit limit reached).
    Denied {
        /// The rating group.
        rating_group: Option<u32>,
        /// Why.
        result_code: ResultCode,
    },
    /// Credit control failed but the service may go on (CCFH CONTINUE, DDFH CONTINUE, 4011).
    ContinueWithoutCreditControl {
        /// What failed.
        reason: String,
    },
    /// The service must end (denied, CCFH TERMINATE, final units used, ASR).
    Terminate {
        /// The Result-Code behind it, if any.
        result_code: Option<ResultCode>,
        /// Why.
        reason: String,
    },
    /// The final units of a rating group are used: apply the Final-Unit-Action.
    FinalUnitReached {
        /// The rating group.
        rating_group: Option<u32>,
        /// The action.
        action: FinalUnit,
    },
    /// The server asked for re-authorization (RAR); the CCR-U follows.
    ReAuthRequested,
    /// The server aborted the session (ASR); the CCR-T follows.
    Aborted,
    /// A Validity-Time (or Quota-Holding-Time) expired; the CCR-U re-authorizing the rating group follows.
    ValidityExpired {
        /// The rating group.
        rating_group: Option<u32>,
        /// The Reporting-Reason its report carries (TS 32.299 §7.2.175): 4 VALIDITY_TIME, or 1 QHT when the quota
        /// sat unused for its Quota-Holding-Time.
        reporting_reason: i32,
    },
    /// Gx: rules installed or removed, triggers armed (the answer or RAR carrying them).
    PolicyUpdate(Message),
    /// An event request (CCR-E) was answered (balance check, price enquiry, debit, refund).
    EventAnswered(Message),
    /// An event request could not be completed and was stored to be sent again (DDFH TERMINATE_OR_BUFFER,
    /// REFUND_ACCOUNT).
    EventStored,
    /// The session ended: no more requests will be sent.
    Ended,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum CcOutput {
    /// Send this request; report its answer with [`CcSession::handle_answer`] or its failure with
    /// [`CcSession::handle_send_failure`].
    Send(Message),
    /// Tell the service.
    Event(CcEvent),
    /// The request made with this tag is settled: answered, failed, given up on (Tx with CCFH CONTINUE), or
    /// dropped from the queue because the session ended. The events before it are its outcome.
    Done(Option<u64>),
    /// Send this request again, with the T flag, to another server than `avoid_host` (RFC 4006 §5.7: CCFH
    /// CONTINUE or RETRY_AND_TERMINATE with CC-Session-Failover FAILOVER_SUPPORTED). Its answer or failure is
    /// reported like the original's.
    Resend {
        /// The outstanding request, T flag set, Destination-Host removed.
        request: Message,
        /// The server that did not answer.
        avoid_host: Option<String>,
    },
    /// The request made with this tag will never be sent: the session ended (or was not in a state to take
    /// it) before its turn.
    Dropped(Option<u64>),
}

/// What the service asks while a request is outstanding.
#[derive(Clone, Debug, PartialEq)]
enum Queued {
    Update {
        used: Vec<(Option<u32>, Units)>,
        requested: Vec<Option<u32>>,
        reason: Option<i32>,
        tag: Option<u64>,
        extra: Vec<Avp>,
    },
    Terminate {
        used: Vec<(Option<u32>, Units)>,
        tag: Option<u64>,
        extra: Vec<Avp>,
    },
}

impl Queued {
    fn tag(&self) -> Option<u64> {
        match self {
            Queued::Update { tag, .. } | Queued::Terminate { tag, .. } => *tag,
        }
    }
}

/// One credit-control session.
#[derive(Clone, Debug)]
pub struct CcSession {
    config: CcConfig,
    session_id: String,
    state: CcState,
    /// The next CC-Request-Number to use.
    next_number: u32,
    /// The request outstanding, for correlation and retransmission.
    outstanding: Option<Message>,
    /// The caller's tag of the outstanding request.
    outstanding_tag: Option<u64>,
    tx_deadline: Option<Instant>,
    /// CCFH and DDFH as the server last set them (RFC 4006 §5.7).
    ccfh: Ccfh,
    ddfh: Ddfh,
    /// CC-Session-Failover (RFC 4006 §8.4): whether an alternate server may take over.
    failover_supported: bool,
    /// Tx expired and CCFH let the service go on: an answer may still come.
    granted_without_answer: bool,
    /// The outstanding request was already sent again to an alternate server.
    retried_alternate: bool,
    quotas: Vec<Quota>,
    queue: VecDeque<Queued>,
    /// A CCR-E stored for later (DDFH TERMINATE_OR_BUFFER, REFUND_ACCOUNT), sent with the T flag.
    stored: Option<Message>,
    event_action: Option<RequestedAction>,
    /// The last event request sent (what a failed event answer refers to).
    last_event: Option<Message>,
    /// AVPs the service attached for its next request ([`CcSession::attach`]).
    attached: Vec<Avp>,
    /// The service reports its own usage ([`CcSession::service_reports_usage`]).
    service_reports: bool,
    /// A report the server is owed, left to the service until the deadline.
    owed: Option<(Instant, OwedReport)>,
    out: VecDeque<CcOutput>,
}

/// A request the client owes the server after a RAR, an expired Validity-Time or an ASR, when the service reports
/// its own usage: the service makes it (with what it used) or, at the deadline, the session makes it itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OwedReport {
    /// CCR-U for these rating groups with this Reporting-Reason (RFC 4006 §5.5 re-authorization, §5.1.2
    /// Validity-Time).
    Reauthorize {
        /// The rating groups to report and re-authorize.
        rating_groups: Vec<Option<u32>>,
        /// The Reporting-Reason (TS 32.299 §7.2.175).
        reason: i32,
    },
    /// CCR-T (RFC 4006 §5.6: after an ASR the service ends and the client terminates the session).
    Terminate,
}

impl CcSession {
    /// A session in Idle.
    pub fn new(config: CcConfig, session_id: String) -> CcSession {
        CcSession {
            ccfh: config.ccfh,
            ddfh: config.ddfh,
            config,
            session_id,
            state: CcState::Idle,
            next_number: 0,
            outstanding: None,
            outstanding_tag: None,
            tx_deadline: None,
            failover_supported: false,
            granted_without_answer: false,
            retried_alternate: false,
            quotas: Vec::new(),
            queue: VecDeque::new(),
            stored: None,
            event_action: None,
            last_event: None,
            attached: Vec::new(),
            service_reports: false,
            owed: None,
            out: VecDeque::new(),
        }
    }

    /// The service reports its own usage (a B2BUA timing its call). After a RAR, an expired Validity-Time or an
    /// ASR the session then only tells the service ([`CcEvent::ReAuthRequested`], [`CcEvent::ValidityExpired`],
    /// [`CcEvent::Aborted`]) and leaves the CCR-U or CCR-T to it, so the request carries what was really used. If
    /// the service has not made it within Tx, the session sends it itself with what it knows. Without this (the
    /// default) the session sends it at once, reporting the units the service has reported through
    /// [`CcSession::update`] since.
    pub fn service_reports_usage(&mut self, on: bool) {
        self.service_reports = on;
    }

    /// The report the server is owed and the service has not made yet, with its deadline.
    pub fn owed(&self) -> Option<&(Instant, OwedReport)> {
        self.owed.as_ref()
    }

    /// Leaves a report to the service until Tx from now (or the earlier deadline of one already owed); a pending
    /// termination outranks a re-authorization, and merged re-authorizations keep the first Reporting-Reason.
    fn owe(&mut self, now: Instant, report: OwedReport) {
        let mut deadline = now + self.config.tx;
        let report = match self.owed.take() {
            None => report,
            Some((earlier, owed)) => {
                deadline = deadline.min(earlier);
                match (owed, report) {
                    (OwedReport::Terminate, _) | (_, OwedReport::Terminate) => OwedReport::Terminate,
                    (
                        OwedReport::Reauthorize { rating_groups: mut a, reason },
                        OwedReport::Reauthorize { rating_groups, .. },
                    ) => {
                        for rg in rating_groups {
                            if !a.contains(&rg) {
                                a.push(rg);
                            }
                        }
                        OwedReport::Reauthorize { rating_groups: a, reason }
                    }
                }
            }
        };
        self.owed = Some((deadline, report));
    }

    /// The service did not make the report it was left: the session makes it with the usage it knows.
    fn pay_owed(&mut self, now: Instant) {
        let Some((_, report)) = self.owed.take() else { return };
        tracing::debug!(session = %self.session_id, ?report, "the service made no report within Tx: the session makes it");
        match report {
            OwedReport::Reauthorize { rating_groups, reason } => {
                let used =
                    rating_groups.iter().map(|rg| (*rg, self.quota(*rg).map(|q| q.used).unwrap_or_default())).collect();
                self.update(now, used, rating_groups, Some(reason), None);
            }
            OwedReport::Terminate => {
                let used = self.quotas.iter().map(|q| (q.rating_group, q.used)).collect();
                self.terminate(now, used, None);
            }
        }
    }

    /// The Session-Id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Ro (4) or Gx (16777238).
    pub fn application(&self) -> AppId {
        self.config.application
    }

    /// The state.
    pub fn state(&self) -> CcState {
        self.state
    }

    /// The CC-Request-Number the next request will carry.
    pub fn next_request_number(&self) -> u32 {
        self.next_number
    }

    /// CCFH in force.
    pub fn ccfh(&self) -> Ccfh {
        self.ccfh
    }

    /// The quotas per rating group.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// The request waiting for its answer.
    pub fn outstanding(&self) -> Option<&Message> {
        self.outstanding.as_ref()
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<CcOutput> {
        self.out.pop_front()
    }

    /// Gives back the memory of buffers that are empty (outputs, queued requests): a session that waits for its
    /// service, usually for minutes, then holds none. The driver calls it once the outputs are drained and no
    /// request is outstanding.
    pub fn release_idle_buffers(&mut self) {
        if self.out.is_empty() {
            self.out = VecDeque::new();
        }
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// The earliest timer: Tx, or a quota's Validity-Time or Quota-Holding-Time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.quotas
            .iter()
            .filter_map(Quota::deadline)
            .chain(self.tx_deadline)
            .chain(self.owed.as_ref().map(|(t, _)| *t))
            .min()
    }

    // ---- the service's requests ------------------------------------------------------------------------

    /// Client requests access: CCR-I asking units for these rating groups (`None`: no MSCC, session level).
    /// Adds AVPs to the next request the service makes (start, update, terminate or event): Service-Information
    /// for Ro (TS 32.299), Event-Trigger, Charging-Rule-Report, QoS-Information, Usage-Monitoring-Information or
    /// Supported-Features for Gx (TS 29.212)… They travel with the request even when it is queued.
    pub fn attach(&mut self, avps: Vec<Avp>) {
        self.attached.extend(avps);
    }

    /// Each rating group comes with the units to ask for in its Requested-Service-Unit (empty: whatever the
    /// server grants).
    pub fn start(&mut self, now: Instant, rating_groups: &[(Option<u32>, Units)], tag: Option<u64>) {
        if self.state != CcState::Idle || self.next_number != 0 {
            self.out.push_back(CcOutput::Dropped(tag));
            return;
        }
        let mut avps: Vec<Avp> = rating_groups.iter().map(|(rg, want)| mscc_requesting(*rg, want)).collect();
        avps.append(&mut self.attached);
        self.send(now, 1, avps, CcState::PendingI, tag);
    }

    /// Reports usage and asks for more (a quota used up, a threshold, a rating condition change). Queued while
    /// a request is outstanding.
    pub fn update(
        &mut self,
        now: Instant,
        used: Vec<(Option<u32>, Units)>,
        requested: Vec<Option<u32>>,
        reason: Option<i32>,
        tag: Option<u64>,
    ) {
        if matches!(self.owed, Some((_, OwedReport::Terminate))) {
            // Aborted by the server (ASR): only the CCR-T is left to send. What was attached for this update goes
            // with it.
            self.attached.clear();
            self.out.push_back(CcOutput::Dropped(tag));
            return;
        }
        // An owed re-authorization is settled for the rating groups this update reports or asks for.
        if let Some((_, OwedReport::Reauthorize { rating_groups, .. })) = &mut self.owed {
            rating_groups.retain(|rg| !used.iter().any(|(u, _)| u == rg) && !requested.contains(rg));
            if rating_groups.is_empty() {
                self.owed = None;
            }
        }
        let q = Queued::Update { used, requested, reason, tag, extra: std::mem::take(&mut self.attached) };
        match self.state {
            CcState::Open => self.run(now, q),
            CcState::PendingI | CcState::PendingU => self.queue.push_back(q),
            _ => self.out.push_back(CcOutput::Dropped(tag)),
        }
    }

    /// The service ended: CCR-T with the final usage. Queued while a request is outstanding.
    pub fn terminate(&mut self, now: Instant, used: Vec<(Option<u32>, Units)>, tag: Option<u64>) {
        self.owed = None;
        let q = Queued::Terminate { used, tag, extra: std::mem::take(&mut self.attached) };
        match self.state {
            CcState::Open => self.run(now, q),
            CcState::PendingI | CcState::PendingU => self.queue.push_back(q),
            _ => self.out.push_back(CcOutput::Dropped(tag)),
        }
    }

    /// One-time service (event charging, RFC 4006 §6.3): CCR-E with Requested-Action.
    pub fn event(
        &mut self,
        now: Instant,
        action: RequestedAction,
        requested: Units,
        service_identifier: Option<u32>,
        tag: Option<u64>,
    ) {
        if self.state != CcState::Idle {
            self.out.push_back(CcOutput::Dropped(tag));
            return;
        }
        self.event_action = Some(action);
        let mut m = self.request(4);
        m.push(Avp::i32(code::REQUESTED_ACTION, action.value()));
        if let Some(s) = service_identifier {
            m.push(Avp::u32(code::SERVICE_IDENTIFIER, s));
        }
        m.push(Avp::grouped(code::REQUESTED_SERVICE_UNIT, &requested.to_avps()));
        m.avps.append(&mut self.attached);
        self.last_event = Some(m.clone());
        self.transmit(now, m, CcState::PendingE, tag);
    }

    /// Sends the stored event request, if any (Idle → PendingB).
    pub fn send_stored(&mut self, now: Instant) -> bool {
        if self.state != CcState::Idle {
            return false;
        }
        let Some(m) = self.stored.take() else { return false };
        self.transmit(now, m, CcState::PendingB, None);
        true
    }

    /// The tag of the request in flight (the caller waiting for it), if any.
    pub fn outstanding_tag(&self) -> Option<u64> {
        self.outstanding_tag
    }

    /// Attaches a caller to the request in flight when none waits for it (a request resent after adoption): its
    /// answer settles `tag`. Returns `false` when there is no such request, or it already has a caller.
    pub fn attach_to_outstanding(&mut self, tag: u64) -> bool {
        if self.outstanding.is_none() || self.outstanding_tag.is_some() {
            return false;
        }
        self.outstanding_tag = Some(tag);
        true
    }

    /// Whether an event request is stored for later.
    pub fn has_stored(&self) -> bool {
        self.stored.is_some()
    }

    /// Tx, the answer timer of this session's requests (RFC 4006 §13).
    pub fn tx(&self) -> Duration {
        self.config.tx
    }

    // ---- the network ---------------------------------------------------------------------------------------

    /// An answer to one of our requests. One that does not match the Session-Id and CC-Request-Number of the
    /// outstanding request is stale and dropped (returns `false`).
    pub fn handle_answer(&mut self, now: Instant, answer: &Message) -> bool {
        let Some(req) = &self.outstanding else { return false };
        let number = answer.find(code::CC_REQUEST_NUMBER, 0).and_then(|a| a.as_u32().ok());
        let req_number = req.find(code::CC_REQUEST_NUMBER, 0).and_then(|a| a.as_u32().ok());
        if answer.session_id() != Some(self.session_id.as_str()) || (number.is_some() && number != req_number) {
            tracing::debug!(session = %self.session_id, ?number, ?req_number, "stale or mismatched CCA dropped");
            return false;
        }
        self.outstanding = None;
        self.tx_deadline = None;
        let tag = self.outstanding_tag.take();
        let rc = answer.result_code().unwrap_or(ResultCode::UNABLE_TO_COMPLY);
        self.learn_server_settings(answer);
        match self.state {
            CcState::PendingI | CcState::PendingU => self.session_answer(now, answer, rc),
            CcState::PendingT => {
                self.end(now);
            }
            CcState::PendingE => self.event_answer(answer, rc),
            CcState::PendingB => {
                // Delete the request whatever the answer (RFC 4006 §7, PendingB).
                self.out.push_back(CcOutput::Event(CcEvent::EventAnswered(answer.clone())));
                self.state = CcState::Idle;
            }
            _ => {}
        }
        self.settle(tag);
        true
    }

    /// Reports a settled request, placing its Done before the Send of the next request if one just left.
    fn settle(&mut self, tag: Option<u64>) {
        let at = self.out.iter().position(|o| matches!(o, CcOutput::Send(_))).unwrap_or(self.out.len());
        self.out.insert(at, CcOutput::Done(tag));
    }

    /// The request could not be sent or got a transient error from the network (no route, no peer, 3002,
    /// 3004…): the "failure to send, or temporary error" events of RFC 4006 §7.
    pub fn handle_send_failure(&mut self, now: Instant, reason: &str) {
        if self.outstanding.is_none() {
            return;
        }
        self.tx_deadline = None;
        let tag = self.outstanding_tag.take();
        let session_request = matches!(self.state, CcState::PendingI | CcState::PendingU);
        if session_request && self.ccfh != Ccfh::Terminate && self.resend_to_alternate(now) {
            // The caller keeps waiting: the alternate server's answer is this request's outcome.
            self.outstanding_tag = tag;
            return;
        }
        match self.state {
            CcState::PendingI | CcState::PendingU => {
                self.outstanding = None;
                self.failure_by_ccfh(now, reason.to_string(), None);
            }
            CcState::PendingT => {
                self.outstanding = None;
                self.end(now);
            }
            CcState::PendingE => {
                let req = self.outstanding.take().expect("checked");
                self.event_failure(req, reason.to_string());
            }
            CcState::PendingB => {
                // Keep the request for another try.
                self.stored = self.outstanding.take();
                self.state = CcState::Idle;
            }
            _ => {}
        }
        self.settle(tag);
    }

    /// A Re-Auth-Request (RFC 4006 §5.5): answer it, then a CCR-U reporting the rating groups it names (all
    /// when it names none). Returns the RAA (2001, or 5002 when the session is not open).
    pub fn handle_rar(&mut self, now: Instant, rar: &Message) -> Message {
        let mut raa = Message::answer_to(rar);
        let open = matches!(self.state, CcState::Open | CcState::PendingI | CcState::PendingU);
        let rc = if open { ResultCode::SUCCESS } else { ResultCode::UNKNOWN_SESSION_ID };
        raa.push(Avp::u32(code::RESULT_CODE, rc.0))
            .push(Avp::utf8(code::ORIGIN_HOST, &self.config.origin_host))
            .push(Avp::utf8(code::ORIGIN_REALM, &self.config.origin_realm));
        if !open {
            return raa;
        }
        self.out.push_back(CcOutput::Event(CcEvent::ReAuthRequested));
        if self.config.application == AppId::GX
            && (rar.find(1001, 10415).is_some() || rar.find(1002, 10415).is_some() || rar.find(1006, 10415).is_some())
        {
            // Gx: the RAR carries the policy; no CCR-U is due unless a trigger fires.
            self.out.push_back(CcOutput::Event(CcEvent::PolicyUpdate(rar.clone())));
            return raa;
        }
        let named: Vec<Option<u32>> =
            rar.find_all(code::RATING_GROUP, 0).filter_map(|a| a.as_u32().ok()).map(Some).collect();
        let rgs: Vec<Option<u32>> =
            if named.is_empty() { self.quotas.iter().map(|q| q.rating_group).collect() } else { named };
        // RFC 4006 §5.5: report usage of the rating groups asked for, with Reporting-Reason FORCED_REAUTHORISATION.
        if self.service_reports {
            self.owe(
                now,
                OwedReport::Reauthorize { rating_groups: rgs, reason: REPORTING_REASON_FORCED_REAUTHORISATION },
            );
            return raa;
        }
        let used = rgs.iter().map(|rg| (*rg, self.quota(*rg).map(|q| q.used).unwrap_or_default())).collect();
        self.update(now, used, rgs, Some(REPORTING_REASON_FORCED_REAUTHORISATION), None);
        raa
    }

    /// An Abort-Session-Request (RFC 4006 §5.6 as updated by RFC 8506): answer, stop the service, CCR-T.
    pub fn handle_asr(&mut self, now: Instant, asr: &Message) -> Message {
        let mut asa = Message::answer_to(asr);
        let known = self.state != CcState::Idle;
        let rc = if known { ResultCode::SUCCESS } else { ResultCode::UNKNOWN_SESSION_ID };
        asa.push(Avp::u32(code::RESULT_CODE, rc.0))
            .push(Avp::utf8(code::ORIGIN_HOST, &self.config.origin_host))
            .push(Avp::utf8(code::ORIGIN_REALM, &self.config.origin_realm));
        if known {
            self.out.push_back(CcOutput::Event(CcEvent::Aborted));
            self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                result_code: None,
                reason: "aborted by the server (ASR)".into(),
            }));
            // Updates queued behind the outstanding request go; a termination the service already asked for stays,
            // with the usage it reports.
            let queued = std::mem::take(&mut self.queue);
            let mut terminating = self.state == CcState::PendingT;
            for q in queued {
                if matches!(q, Queued::Terminate { .. }) {
                    terminating = true;
                    self.queue.push_back(q);
                } else {
                    self.out.push_back(CcOutput::Dropped(q.tag()));
                }
            }
            if terminating {
                // The CCR-T is on its way already.
            } else if self.service_reports {
                // The service hangs up and its CCR-T reports what it used; the session sends one itself at Tx.
                self.owe(now, OwedReport::Terminate);
            } else {
                let used: Vec<(Option<u32>, Units)> = self.quotas.iter().map(|q| (q.rating_group, q.used)).collect();
                self.terminate(now, used, None);
            }
        }
        asa
    }

    /// Timers: Tx, Validity-Time, Quota-Holding-Time, a report left to the service.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.tx_deadline.is_some_and(|t| t <= now) {
            self.tx_deadline = None;
            // Whatever CCFH/DDFH decide, the caller has its outcome now; a late answer is still matched.
            let tag = self.outstanding_tag.take();
            self.tx_expired(now);
            self.settle(tag);
        }
        if self.owed.as_ref().is_some_and(|(t, _)| *t <= now) {
            self.pay_owed(now);
        }
        let due: Vec<usize> =
            (0..self.quotas.len()).filter(|&i| self.quotas[i].deadline().is_some_and(|t| t <= now)).collect();
        if due.is_empty() {
            return;
        }
        let mut rgs = Vec::new();
        // TS 32.299 §7.2.175: QHT when the quota sat unused for Quota-Holding-Time, VALIDITY_TIME otherwise.
        let mut reason = REPORTING_REASON_VALIDITY_TIME;
        for i in due {
            let q = &mut self.quotas[i];
            let reporting_reason =
                if q.holding_expired(now) { REPORTING_REASON_QHT } else { REPORTING_REASON_VALIDITY_TIME };
            if reporting_reason == REPORTING_REASON_QHT {
                reason = REPORTING_REASON_QHT;
            }
            q.clear_timers();
            rgs.push(q.rating_group);
            let ev = CcEvent::ValidityExpired { rating_group: q.rating_group, reporting_reason };
            self.out.push_back(CcOutput::Event(ev));
        }
        // RFC 4006 §5.1.2: an expired Validity-Time (or Quota-Holding-Time) re-authorizes the rating group with a
        // report of its usage.
        if self.service_reports {
            return self.owe(now, OwedReport::Reauthorize { rating_groups: rgs, reason });
        }
        let used = rgs.iter().map(|rg| (*rg, self.quota(*rg).map(|q| q.used).unwrap_or_default())).collect();
        self.update(now, used, rgs, Some(reason), None);
    }

    // ---- internals ---------------------------------------------------------------------------------------

    fn quota(&self, rg: Option<u32>) -> Option<&Quota> {
        self.quotas.iter().find(|q| q.rating_group == rg)
    }

    fn request(&mut self, request_type: i32) -> Message {
        let c = &self.config;
        let mut m = Message::request(CommandCode::CREDIT_CONTROL, c.application)
            .with(Avp::utf8(code::SESSION_ID, &self.session_id))
            .with(Avp::utf8(code::ORIGIN_HOST, &c.origin_host))
            .with(Avp::utf8(code::ORIGIN_REALM, &c.origin_realm))
            .with(Avp::utf8(code::DESTINATION_REALM, &c.destination_realm))
            .with(Avp::u32(code::AUTH_APPLICATION_ID, c.application.0));
        if c.application != AppId::GX {
            m.push(Avp::utf8(code::SERVICE_CONTEXT_ID, &c.service_context_id));
        }
        m.push(Avp::i32(code::CC_REQUEST_TYPE, request_type));
        m.push(Avp::u32(code::CC_REQUEST_NUMBER, self.next_number));
        self.next_number += 1;
        if let Some(h) = &c.destination_host {
            m.push(Avp::utf8(code::DESTINATION_HOST, h));
        }
        if let Some((t, data)) = &c.subscription {
            m.push(Avp::grouped(
                code::SUBSCRIPTION_ID,
                &[Avp::i32(code::SUBSCRIPTION_ID_TYPE, *t), Avp::utf8(code::SUBSCRIPTION_ID_DATA, data)],
            ));
        }
        if c.application != AppId::GX && request_type != 4 {
            m.push(Avp::i32(code::MULTIPLE_SERVICES_INDICATOR, 1));
        }
        m
    }

    fn send(&mut self, now: Instant, request_type: i32, msccs: Vec<Avp>, next: CcState, tag: Option<u64>) {
        let mut m = self.request(request_type);
        m.avps.extend(msccs);
        self.transmit(now, m, next, tag);
    }

    fn transmit(&mut self, now: Instant, m: Message, next: CcState, tag: Option<u64>) {
        self.outstanding_tag = tag;
        self.retried_alternate = false;
        self.outstanding = Some(m.clone());
        self.tx_deadline = Some(now + self.config.tx);
        self.granted_without_answer = false;
        self.state = next;
        self.out.push_back(CcOutput::Send(m));
    }

    /// Carries out a queued (or immediate) service request from Open.
    fn run(&mut self, now: Instant, q: Queued) {
        match q {
            Queued::Update { used, requested, reason, tag, extra } => {
                let mut msccs = Vec::new();
                let mut rgs: Vec<Option<u32>> = used.iter().map(|(rg, _)| *rg).collect();
                for rg in &requested {
                    if !rgs.contains(rg) {
                        rgs.push(*rg);
                    }
                }
                for rg in rgs {
                    let u = used.iter().find(|(r, _)| *r == rg).map(|(_, u)| *u);
                    msccs.push(mscc(rg, u, requested.contains(&rg), reason));
                    if let Some(q) = self.quotas.iter_mut().find(|q| q.rating_group == rg) {
                        q.reported(u.unwrap_or_default());
                    }
                }
                msccs.extend(extra);
                self.send(now, 2, msccs, CcState::PendingU, tag);
            }
            Queued::Terminate { used, tag, extra } => {
                let mut avps: Vec<Avp> =
                    used.iter().map(|(rg, u)| mscc(*rg, Some(*u), false, Some(REPORTING_REASON_FINAL))).collect();
                avps.extend(extra);
                for q in &mut self.quotas {
                    q.clear_timers();
                }
                self.send(now, 3, avps, CcState::PendingT, tag);
            }
        }
    }

    /// RFC 4006 §5.7: CCFH, DDFH and CC-Session-Failover from the server replace ours.
    fn learn_server_settings(&mut self, a: &Message) {
        match a.find(code::CREDIT_CONTROL_FAILURE_HANDLING, 0).and_then(|x| x.as_i32().ok()) {
            Some(0) => self.ccfh = Ccfh::Terminate,
            Some(1) => self.ccfh = Ccfh::Continue,
            Some(2) => self.ccfh = Ccfh::RetryAndTerminate,
            _ => {}
        }
        match a.find(code::DIRECT_DEBITING_FAILURE_HANDLING, 0).and_then(|x| x.as_i32().ok()) {
            Some(0) => self.ddfh = Ddfh::TerminateOrBuffer,
            Some(1) => self.ddfh = Ddfh::Continue,
            _ => {}
        }
        if let Some(f) = a.find(code::CC_SESSION_FAILOVER, 0).and_then(|x| x.as_i32().ok()) {
            self.failover_supported = f == 1;
        }
        // RFC 4006 §5.1: later requests go to the host that answered.
        if let Some(h) = a.find(code::ORIGIN_HOST, 0).and_then(|x| x.as_utf8().ok())
            && self.config.destination_host.as_deref() != Some(h)
        {
            self.config.destination_host = Some(h.to_string());
        }
    }

    fn session_answer(&mut self, now: Instant, a: &Message, rc: ResultCode) {
        match rc {
            rc if rc.is_success() => {
                self.apply_grants(now, a);
                if self.config.application == AppId::GX {
                    self.out.push_back(CcOutput::Event(CcEvent::PolicyUpdate(a.clone())));
                }
                self.state = CcState::Open;
                self.granted_without_answer = false;
                self.drain_queue(now);
            }
            ResultCode::CREDIT_CONTROL_NOT_APPLICABLE => {
                // 4011: the service goes on without credit control; the session ends here.
                self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl {
                    reason: "4011 credit control not applicable".into(),
                }));
                self.end(now);
            }
            ResultCode::END_USER_SERVICE_DENIED | ResultCode::USER_UNKNOWN => {
                self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                    result_code: Some(rc),
                    reason: format!("{rc} from the server"),
                }));
                self.end(now);
            }
            // 4012 at command level (RFC 4006 §9.1: the end user's account cannot cover the service) denies the
            // service on a CCA-I or a CCA-U alike, whatever CCFH says: CCFH governs failing to get an answer, not a
            // refusal (with CONTINUE the service would otherwise go on free). A failed CCA-U ends the session at the
            // server too (RFC 4006 §7): no CCR-T follows.
            ResultCode::CREDIT_LIMIT_REACHED => {
                self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                    result_code: Some(rc),
                    reason: "4012 credit limit reached".into(),
                }));
                self.end(now);
            }
            // Transient (4xxx), protocol (3xxx) and permanent (5xxx) failures: CCFH decides (RFC 4006 §7). A
            // permanent failure the server sent is its refusal of the request (5001 with a Failed-AVP, 5031 rating
            // failed): a session it ends reports that Result-Code. Transient and protocol failures are credit
            // control failing, as when no answer comes, and so is an answer without a Result-Code (read as 5012
            // above, which the server did not say).
            rc => {
                let refused = a.result_code().filter(|r| r.is_permanent());
                self.failure_by_ccfh(now, format!("{rc} from the server"), refused)
            }
        }
    }

    fn apply_grants(&mut self, now: Instant, a: &Message) {
        let mut seen = false;
        for m in a.find_all(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0) {
            seen = true;
            let members: Vec<Avp> = m.grouped_iter().filter_map(Result::ok).collect();
            self.apply_mscc(now, &members);
        }
        if !seen && a.find(code::GRANTED_SERVICE_UNIT, 0).is_some() {
            // Single-service session: GSU at command level.
            let members: Vec<Avp> = a
                .avps
                .iter()
                .filter(|x| {
                    [code::GRANTED_SERVICE_UNIT, code::VALIDITY_TIME, code::FINAL_UNIT_INDICATION].contains(&x.code())
                        && x.vendor() == 0
                })
                .cloned()
                .collect();
            self.apply_mscc(now, &members);
        }
    }

    fn apply_mscc(&mut self, now: Instant, members: &[Avp]) {
        let get = |c: u32, v: u32| members.iter().find(|x| x.is(c, v));
        let rg = get(code::RATING_GROUP, 0).and_then(|x| x.as_u32().ok());
        let rc = get(code::RESULT_CODE, 0).and_then(|x| x.as_u32().ok()).map(ResultCode).unwrap_or(ResultCode::SUCCESS);
        if !rc.is_success() {
            self.quotas.retain(|q| q.rating_group != rg);
            self.out.push_back(CcOutput::Event(CcEvent::Denied { rating_group: rg, result_code: rc }));
            return;
        }
        let Some(gsu) = get(code::GRANTED_SERVICE_UNIT, 0) else {
            return;
        };
        let units = Units::from_grouped(gsu);
        let validity =
            get(code::VALIDITY_TIME, 0).and_then(|x| x.as_u32().ok()).map(|s| Duration::from_secs(u64::from(s)));
        let qht = get(871, 10415).and_then(|x| x.as_u32().ok()).map(|s| Duration::from_secs(u64::from(s)));
        let final_unit = get(code::FINAL_UNIT_INDICATION, 0).map(FinalUnit::from_avp);
        let tgpp = |c| get(c, 10415).and_then(|x| x.as_u32().ok()).map(u64::from);
        let threshold = Units { time: tgpp(868), total_octets: tgpp(869), units: tgpp(1226), ..Units::default() };
        let idx = match self.quotas.iter().position(|q| q.rating_group == rg) {
            Some(i) => i,
            None => {
                // Exactly one more: a session holds its quotas for its life, and a Vec's first growth is room for
                // four (over 800 octets unused per session with one rating group).
                self.quotas.reserve_exact(1);
                self.quotas.push(Quota::new(rg));
                self.quotas.len() - 1
            }
        };
        self.quotas[idx].granted(now, units, validity, qht, final_unit.clone());
        self.out.push_back(CcOutput::Event(CcEvent::Granted {
            rating_group: rg,
            units,
            validity_time: validity,
            threshold,
            final_unit,
        }));
    }

    /// The "failure to send, temporary error, failed answer" rows of RFC 4006 §7 for PendingI / PendingU.
    /// `answered` is the Result-Code of a server's refusal: a session that ends on it reports it.
    fn failure_by_ccfh(&mut self, now: Instant, reason: String, answered: Option<ResultCode>) {
        match self.ccfh {
            Ccfh::Continue => {
                self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl { reason }));
                self.end(now);
            }
            Ccfh::Terminate | Ccfh::RetryAndTerminate => {
                self.out.push_back(CcOutput::Event(CcEvent::Terminate { result_code: answered, reason }));
                self.end(now);
            }
        }
    }

    fn tx_expired(&mut self, now: Instant) {
        match self.state {
            CcState::PendingI | CcState::PendingU => match self.ccfh {
                // Tx expired and CCFH TERMINATE: end the service (RFC 4006 §7).
                Ccfh::Terminate => {
                    self.outstanding = None;
                    self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                        result_code: None,
                        reason: "no answer within Tx (CCFH TERMINATE)".into(),
                    }));
                    self.end(now);
                }
                // CONTINUE / RETRY_AND_TERMINATE: grant the service and keep waiting for the answer (the router
                // fails the request over to an alternate server when the peer fails, with the T flag).
                Ccfh::RetryAndTerminate if self.retried_alternate => {
                    // The alternate server did not answer either: failover is not possible, end the service.
                    self.outstanding = None;
                    self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                        result_code: None,
                        reason: "no answer within Tx from the alternate server (CCFH RETRY_AND_TERMINATE)".into(),
                    }));
                    self.end(now);
                }
                Ccfh::Continue | Ccfh::RetryAndTerminate => {
                    self.resend_to_alternate(now);
                    if !self.granted_without_answer {
                        self.granted_without_answer = true;
                        self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl {
                            reason: "no answer within Tx; service granted while waiting".into(),
                        }));
                    }
                }
            },
            CcState::PendingE => {
                let req = self.outstanding.clone().expect("pending");
                match (self.event_action, self.ddfh) {
                    (Some(RequestedAction::DirectDebiting), Ddfh::Continue) => {
                        // Grant the service, keep waiting (PendingE).
                        self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl {
                            reason: "no answer within Tx (DDFH CONTINUE)".into(),
                        }));
                    }
                    (Some(RequestedAction::DirectDebiting), Ddfh::TerminateOrBuffer) => {
                        self.outstanding = None;
                        self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                            result_code: None,
                            reason: "no answer within Tx (DDFH TERMINATE_OR_BUFFER)".into(),
                        }));
                        self.state = CcState::Idle;
                    }
                    (Some(RequestedAction::RefundAccount), _) => {
                        self.outstanding = None;
                        self.store(req);
                        self.state = CcState::Idle;
                    }
                    _ => {
                        self.outstanding = None;
                        self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                            result_code: None,
                            reason: "no answer within Tx".into(),
                        }));
                        self.state = CcState::Idle;
                    }
                }
            }
            CcState::PendingT => {
                self.outstanding = None;
                self.end(now);
            }
            CcState::PendingB => {
                self.stored = self.outstanding.take();
                self.state = CcState::Idle;
            }
            _ => {}
        }
    }

    /// RFC 4006 §5.7: with CC-Session-Failover FAILOVER_SUPPORTED, the outstanding request goes once more, with
    /// the T flag, to an alternate server. Returns whether it did.
    fn resend_to_alternate(&mut self, now: Instant) -> bool {
        if !self.failover_supported || self.retried_alternate {
            return false;
        }
        let Some(mut m) = self.outstanding.clone() else { return false };
        self.retried_alternate = true;
        m.header.flags = CommandFlags(m.header.flags.0 | CommandFlags::RETRANSMIT);
        let avoid_host = m.find(code::DESTINATION_HOST, 0).and_then(|a| a.as_utf8().ok()).map(str::to_string);
        m.avps.retain(|a| !a.is(code::DESTINATION_HOST, 0));
        self.outstanding = Some(m.clone());
        self.tx_deadline = Some(now + self.config.tx);
        self.out.push_back(CcOutput::Resend { request: m, avoid_host });
        true
    }

    fn event_answer(&mut self, a: &Message, rc: ResultCode) {
        self.state = CcState::Idle;
        if rc.is_success() {
            self.out.push_back(CcOutput::Event(CcEvent::EventAnswered(a.clone())));
            return;
        }
        match (rc, self.event_action) {
            (ResultCode::CREDIT_CONTROL_NOT_APPLICABLE, _) => {
                // 4011: grant the service without credit control; nothing to store (RFC 4006 §9.1).
                self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl {
                    reason: "4011 credit control not applicable".into(),
                }));
            }
            (ResultCode::END_USER_SERVICE_DENIED | ResultCode::USER_UNKNOWN | ResultCode::CREDIT_LIMIT_REACHED, _) => {
                self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                    result_code: Some(rc),
                    reason: format!("{rc} from the server"),
                }));
            }
            (rc, Some(RequestedAction::DirectDebiting | RequestedAction::RefundAccount)) if rc.is_transient() => {
                let req = self.last_event.clone().expect("an event request was sent");
                self.event_failure(req, format!("{rc} from the server"));
            }
            (rc, _) => {
                self.out.push_back(CcOutput::Event(CcEvent::Terminate {
                    result_code: Some(rc),
                    reason: format!("{rc} from the server"),
                }));
            }
        }
    }

    /// "Failure to send or temporary error" for an event (RFC 4006 §7, PendingE): DDFH and the action decide.
    fn event_failure(&mut self, req: Message, reason: String) {
        self.state = CcState::Idle;
        match (self.event_action, self.ddfh) {
            (Some(RequestedAction::DirectDebiting), Ddfh::TerminateOrBuffer) => {
                // Grant the service and store the request with the T flag for later (RFC 4006 §6.3.2).
                self.store(req);
                self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl { reason }));
            }
            (Some(RequestedAction::DirectDebiting), Ddfh::Continue) => {
                self.out.push_back(CcOutput::Event(CcEvent::ContinueWithoutCreditControl { reason }));
            }
            (Some(RequestedAction::RefundAccount), _) => self.store(req),
            _ => self.out.push_back(CcOutput::Event(CcEvent::Terminate { result_code: None, reason })),
        }
    }

    fn store(&mut self, mut req: Message) {
        // RFC 4006 §6.3.2: a stored request is resent with the T flag: the server may have seen it.
        req.header.flags = CommandFlags(req.header.flags.0 | CommandFlags::RETRANSMIT);
        self.stored = Some(req);
        self.out.push_back(CcOutput::Event(CcEvent::EventStored));
    }

    fn drain_queue(&mut self, now: Instant) {
        if let Some(q) = self.queue.pop_front() {
            self.run(now, q);
        }
    }

    /// Requests queued behind one that ended the session will never be sent: settle them.
    fn drop_queue(&mut self) {
        for q in std::mem::take(&mut self.queue) {
            self.out.push_back(CcOutput::Dropped(q.tag()));
        }
    }

    fn end(&mut self, _now: Instant) {
        self.state = CcState::Idle;
        self.owed = None;
        self.drop_queue();
        self.outstanding = None;
        self.tx_deadline = None;
        for q in &mut self.quotas {
            q.clear_timers();
        }
        self.out.push_back(CcOutput::Event(CcEvent::Ended));
    }
}

/// Reporting-Reason values (TS 32.299 §7.2.175).
const REPORTING_REASON_FINAL: i32 = 2;
const REPORTING_REASON_VALIDITY_TIME: i32 = 4;
const REPORTING_REASON_QHT: i32 = 1;
const REPORTING_REASON_FORCED_REAUTHORISATION: i32 = 7;

/// An MSCC (or, with `rg` `None`, the parts a single-service request carries).
/// An MSCC asking for these units.
fn mscc_requesting(rg: Option<u32>, want: &Units) -> Avp {
    let mut v = vec![Avp::grouped(code::REQUESTED_SERVICE_UNIT, &want.to_avps())];
    if let Some(rg) = rg {
        v.push(Avp::u32(code::RATING_GROUP, rg));
    }
    Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &v)
}

fn mscc(rg: Option<u32>, used: Option<Units>, request: bool, reason: Option<i32>) -> Avp {
    let mut v = Vec::new();
    if request {
        v.push(Avp::grouped(code::REQUESTED_SERVICE_UNIT, &[]));
    }
    if let Some(u) = used {
        let mut usu = u.to_avps();
        if let Some(r) = reason {
            usu.push(Avp::i32(872, r).with_vendor(VendorId::TGPP));
        }
        v.push(Avp::grouped(code::USED_SERVICE_UNIT, &usu));
    }
    if let Some(rg) = rg {
        v.push(Avp::u32(code::RATING_GROUP, rg));
    }
    Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &v)
}

#[cfg(test)]
mod tests;
