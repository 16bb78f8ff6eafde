//! The RFC 4006 §7 client table row by row, with a manual clock.

use std::time::{Duration, Instant};

use super::*;
use crate::codec::{AppId, Avp, CommandCode, CommandFlags, Message, ResultCode, code};
use crate::replication::{self, FORMAT, StateEncoding, StateRecord};
use crate::units::Units;

const TX: Duration = Duration::from_secs(10);

fn config(ccfh: Ccfh) -> CcConfig {
    CcConfig {
        application: AppId::CREDIT_CONTROL,
        origin_host: "as1.test.localdomain".into(),
        origin_realm: "test.localdomain".into(),
        destination_realm: "ocs.localdomain".into(),
        destination_host: None,
        service_context_id: "32260@3gpp.org".into(),
        tx: TX,
        ccfh,
        ddfh: Ddfh::TerminateOrBuffer,
        subscription: Some((0, "46701234567".into())),
    }
}

struct H {
    s: CcSession,
    now: Instant,
}

impl H {
    fn new(ccfh: Ccfh) -> H {
        H { s: CcSession::new(config(ccfh), "as1;1".into()), now: Instant::now() }
    }

    fn drain(&mut self) -> (Vec<Message>, Vec<CcEvent>) {
        let (mut sent, mut events) = (Vec::new(), Vec::new());
        while let Some(o) = self.s.poll_output() {
            match o {
                CcOutput::Send(m) => sent.push(m),
                CcOutput::Event(e) => events.push(e),
                CcOutput::Resend { request, .. } => sent.push(request),
                CcOutput::Done(_) | CcOutput::Dropped(_) => {}
            }
        }
        (sent, events)
    }

    fn one_request(&mut self) -> Message {
        let (sent, _) = self.drain();
        assert_eq!(sent.len(), 1, "{sent:?}");
        sent.into_iter().next().unwrap()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
    }

    fn open(&mut self) {
        self.s.start(self.now, &[(Some(10), Units::default())], None);
        let req = self.one_request();
        self.s.handle_answer(self.now, &cca(&req, 2001, &[grant(10, 300, None, None)]));
        self.drain();
        assert_eq!(self.s.state(), CcState::Open);
    }
}

/// A snapshot written into a state record the given way and read back.
fn through_store(snap: &CcSnapshot, encoding: StateEncoding) -> CcSnapshot {
    let record =
        StateRecord { format: FORMAT, written_by_epoch: 3, written_by: "node-a".to_string(), state: snap.clone() };
    let bytes = replication::encode_state(&record, encoding);
    let header = replication::decode_state_header(&bytes).unwrap();
    assert_eq!((header.written_by_epoch, header.written_by.as_str()), (3, "node-a"));
    replication::decode::<StateRecord<CcSnapshot>>(&bytes).unwrap().state
}

/// The write-ahead's in-place serialization of `s` is byte for byte its snapshot's, in both encodings: the two
/// types list the same fields, and a field out of step would shift every later one in a binary record.
fn view_matches_snapshot(s: &CcSession, now: Instant, wall: u64) {
    for encoding in [StateEncoding::Json, StateEncoding::Binary] {
        let owned = StateRecord {
            format: FORMAT,
            written_by_epoch: 2,
            written_by: "n".to_string(),
            state: s.snapshot(now, wall),
        };
        let view =
            StateRecord { format: FORMAT, written_by_epoch: 2, written_by: "n", state: s.snapshot_view(now, wall) };
        let (a, b) = (replication::encode_state(&owned, encoding), replication::encode_state(&view, encoding));
        assert_eq!(a, b, "{encoding:?}");
    }
}

fn number(m: &Message) -> u32 {
    m.find(code::CC_REQUEST_NUMBER, 0).unwrap().as_u32().unwrap()
}

fn rtype(m: &Message) -> i32 {
    m.find(code::CC_REQUEST_TYPE, 0).unwrap().as_i32().unwrap()
}

fn grant(rg: u32, time: u32, validity: Option<u32>, fui: Option<i32>) -> Avp {
    let mut v = vec![
        Avp::grouped(code::GRANTED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, time)]),
        Avp::u32(code::RATING_GROUP, rg),
        Avp::u32(code::RESULT_CODE, 2001),
    ];
    if let Some(vt) = validity {
        v.push(Avp::u32(code::VALIDITY_TIME, vt));
    }
    if let Some(a) = fui {
        v.push(Avp::grouped(code::FINAL_UNIT_INDICATION, &[Avp::i32(code::FINAL_UNIT_ACTION, a)]));
    }
    Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &v)
}

fn cca(req: &Message, rc: u32, extra: &[Avp]) -> Message {
    let mut a = Message::answer_to(req);
    a.push(Avp::u32(code::RESULT_CODE, rc));
    a.push(Avp::utf8(code::ORIGIN_HOST, "ocs1.ocs.localdomain"));
    a.push(Avp::utf8(code::ORIGIN_REALM, "ocs.localdomain"));
    a.push(req.find(code::CC_REQUEST_TYPE, 0).unwrap().clone());
    a.push(req.find(code::CC_REQUEST_NUMBER, 0).unwrap().clone());
    a.avps.extend(extra.iter().cloned());
    a
}

fn terminated(events: &[CcEvent]) -> bool {
    events.iter().any(|e| matches!(e, CcEvent::Terminate { .. }))
}

fn continued(events: &[CcEvent]) -> bool {
    events.iter().any(|e| matches!(e, CcEvent::ContinueWithoutCreditControl { .. }))
}

#[test]
fn full_session_numbers_requests_and_follows_the_server() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    assert_eq!(h.s.state(), CcState::PendingI);
    let i = h.one_request();
    assert_eq!((rtype(&i), number(&i)), (1, 0));
    assert!(i.find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).is_some());
    // The dictionary accepts what we send.
    crate::dict::Dictionary::builtin()
        .validate(&Message::decode(i.encode().unwrap()).unwrap(), &Default::default())
        .unwrap();
    assert!(h.s.handle_answer(
        h.now,
        &cca(&i, 2001, &[grant(10, 300, Some(60), None), Avp::i32(code::CREDIT_CONTROL_FAILURE_HANDLING, 1)])
    ));
    let (_, ev) = h.drain();
    assert!(ev.contains(&CcEvent::Granted {
        rating_group: Some(10),
        units: crate::units::Units { time: Some(300), ..Default::default() },
        validity_time: Some(Duration::from_secs(60)),
        threshold: Units::default(),
        final_unit: None
    }));
    assert_eq!(h.s.state(), CcState::Open);
    assert_eq!(h.s.ccfh(), Ccfh::Continue, "the server's CCFH replaces ours (RFC 4006 §5.7)");
    h.s.update(
        h.now,
        vec![(Some(10), crate::units::Units { time: Some(300), ..Default::default() })],
        vec![Some(10)],
        Some(3),
        None,
    );
    let u = h.one_request();
    assert_eq!((rtype(&u), number(&u)), (2, 1));
    assert_eq!(
        u.find(code::DESTINATION_HOST, 0).unwrap().as_utf8(),
        Ok("ocs1.ocs.localdomain"),
        "later requests go to the host that answered"
    );
    h.s.handle_answer(h.now, &cca(&u, 2001, &[grant(10, 300, None, None)]));
    h.drain();
    h.s.terminate(h.now, vec![(Some(10), crate::units::Units { time: Some(42), ..Default::default() })], None);
    let t = h.one_request();
    assert_eq!((rtype(&t), number(&t)), (3, 2));
    h.s.handle_answer(h.now, &cca(&t, 2001, &[]));
    let (_, ev) = h.drain();
    assert_eq!(h.s.state(), CcState::Idle);
    assert!(ev.contains(&CcEvent::Ended));
}

#[test]
fn tx_expiry_in_pending_i_for_each_ccfh() {
    // TERMINATE: end the service.
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    h.drain();
    h.advance(TX);
    let (_, ev) = h.drain();
    assert!(terminated(&ev) && ev.contains(&CcEvent::Ended));
    assert_eq!(h.s.state(), CcState::Idle);
    // CONTINUE and RETRY_AND_TERMINATE: grant the service, stay in PendingI; a late answer opens the session.
    for ccfh in [Ccfh::Continue, Ccfh::RetryAndTerminate] {
        let mut h = H::new(ccfh);
        h.s.start(h.now, &[(Some(10), Units::default())], None);
        let i = h.one_request();
        h.advance(TX);
        let (_, ev) = h.drain();
        assert!(continued(&ev), "{ccfh:?}");
        assert_eq!(h.s.state(), CcState::PendingI);
        h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 60, None, None)]));
        assert_eq!(h.s.state(), CcState::Open, "{ccfh:?}");
    }
}

#[test]
fn tx_expiry_in_pending_u_and_pending_t() {
    for (ccfh, state) in [
        (Ccfh::Terminate, CcState::Idle),
        (Ccfh::Continue, CcState::PendingU),
        (Ccfh::RetryAndTerminate, CcState::PendingU),
    ] {
        let mut h = H::new(ccfh);
        h.open();
        h.s.update(h.now, vec![(Some(10), Default::default())], vec![Some(10)], None, None);
        h.drain();
        h.advance(TX);
        let (_, ev) = h.drain();
        assert_eq!(h.s.state(), state, "{ccfh:?}");
        assert_eq!(terminated(&ev), ccfh == Ccfh::Terminate);
    }
    let mut h = H::new(Ccfh::Continue);
    h.open();
    h.s.terminate(h.now, vec![], None);
    h.drain();
    h.advance(TX);
    let (_, ev) = h.drain();
    assert_eq!(h.s.state(), CcState::Idle, "PendingT: Tx expiry ends the session");
    assert!(ev.contains(&CcEvent::Ended));
}

#[test]
fn failures_and_failure_codes_follow_the_client_table() {
    // Failure to send in PendingI: CCFH decides.
    for (ccfh, cont) in [(Ccfh::Terminate, false), (Ccfh::Continue, true), (Ccfh::RetryAndTerminate, false)] {
        let mut h = H::new(ccfh);
        h.s.start(h.now, &[(Some(10), Units::default())], None);
        h.drain();
        h.s.handle_send_failure(h.now, "3002 no route");
        let (_, ev) = h.drain();
        assert_eq!((continued(&ev), terminated(&ev)), (cont, !cont), "{ccfh:?}");
        assert_eq!(h.s.state(), CcState::Idle);
        // No answer came: no Result-Code to report.
        assert!(!ev.iter().any(|e| matches!(e, CcEvent::Terminate { result_code: Some(_), .. })), "{ev:?}");
    }
    // Answers: 4010 and 5030 end the service whatever CCFH; 4011 lets it go on; a failed answer follows CCFH;
    // 4012 on CCR-I ends it.
    for (rc, ccfh, expect_continue) in [
        (4010, Ccfh::Continue, false),
        (5030, Ccfh::Continue, false),
        (4011, Ccfh::Terminate, true),
        (5031, Ccfh::Continue, true),
        (5031, Ccfh::Terminate, false),
        (4012, Ccfh::Continue, false),
        (5001, Ccfh::RetryAndTerminate, false),
        (4002, Ccfh::Terminate, false),
        (3004, Ccfh::Terminate, false),
    ] {
        let mut h = H::new(ccfh);
        h.s.start(h.now, &[(Some(10), Units::default())], None);
        let i = h.one_request();
        h.s.handle_answer(h.now, &cca(&i, rc, &[]));
        let (_, ev) = h.drain();
        assert_eq!(continued(&ev), expect_continue, "{rc} {ccfh:?}: {ev:?}");
        assert_eq!(terminated(&ev), !expect_continue, "{rc} {ccfh:?}");
        assert_eq!(h.s.state(), CcState::Idle);
        // A session the answer ends reports the server's Result-Code when the server refused (4010, 4012, any
        // 5xxx); a transient or protocol failure ends it as credit control failing, with none.
        if !expect_continue {
            let reported = ev.iter().find_map(|e| match e {
                CcEvent::Terminate { result_code, .. } => Some(*result_code),
                _ => None,
            });
            let refused = rc == 4010 || rc == 4012 || rc >= 5000;
            assert_eq!(reported, Some(refused.then_some(ResultCode(rc))), "{rc} {ccfh:?}: {ev:?}");
        }
    }
    // An answer without a Result-Code fails like a 5012 under CCFH, but the server did not say 5012: none is
    // reported.
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    let mut a = cca(&i, 2001, &[]);
    a.avps.retain(|x| !x.is(code::RESULT_CODE, 0));
    h.s.handle_answer(h.now, &a);
    let ev = h.drain().1;
    assert!(ev.iter().any(|e| matches!(e, CcEvent::Terminate { result_code: None, .. })), "{ev:?}");
    // A 3GPP server's Experimental-Result reads the same way.
    let mut h = H::new(Ccfh::Continue);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    let mut a = cca(&i, 2001, &[]);
    a.avps.retain(|x| !x.is(code::RESULT_CODE, 0));
    a.push(Avp::grouped(
        code::EXPERIMENTAL_RESULT,
        &[Avp::u32(code::VENDOR_ID, 10415), Avp::u32(code::EXPERIMENTAL_RESULT_CODE, 5030)],
    ));
    h.s.handle_answer(h.now, &a);
    assert!(terminated(&h.drain().1));
}

#[test]
fn requests_made_while_one_is_outstanding_are_queued_in_order() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    // While PendingI: an update and the termination queue up.
    h.s.update(
        h.now,
        vec![(Some(10), crate::units::Units { time: Some(5), ..Default::default() })],
        vec![Some(10)],
        None,
        None,
    );
    h.s.terminate(h.now, vec![(Some(10), crate::units::Units { time: Some(7), ..Default::default() })], None);
    assert!(h.drain().0.is_empty(), "never two requests in flight");
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 60, None, None)]));
    let u = h.one_request();
    assert_eq!((rtype(&u), number(&u)), (2, 1));
    h.s.handle_answer(h.now, &cca(&u, 2001, &[grant(10, 60, None, None)]));
    let t = h.one_request();
    assert_eq!((rtype(&t), number(&t)), (3, 2));
}

#[test]
fn stale_or_mismatched_answers_are_dropped() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    let mut wrong_number = cca(&i, 2001, &[]);
    wrong_number.avps.retain(|a| !a.is(code::CC_REQUEST_NUMBER, 0));
    wrong_number.push(Avp::u32(code::CC_REQUEST_NUMBER, 7));
    assert!(!h.s.handle_answer(h.now, &wrong_number));
    let mut wrong_session = cca(&i, 2001, &[]);
    wrong_session.avps[0] = Avp::utf8(code::SESSION_ID, "other;1");
    assert!(!h.s.handle_answer(h.now, &wrong_session));
    assert_eq!(h.s.state(), CcState::PendingI);
    assert!(h.s.handle_answer(h.now, &cca(&i, 2001, &[])));
}

#[test]
fn rar_in_open_and_in_pending_u_and_idle() {
    let mut h = H::new(Ccfh::Terminate);
    h.open();
    let mut rar = Message::request(CommandCode::RE_AUTH, AppId::CREDIT_CONTROL)
        .with(Avp::utf8(code::SESSION_ID, "as1;1"))
        .with(Avp::u32(code::RATING_GROUP, 10));
    rar.header.flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
    let raa = h.s.handle_rar(h.now, &rar);
    assert_eq!(raa.result_code(), Some(ResultCode::SUCCESS));
    let (sent, ev) = h.drain();
    assert!(ev.contains(&CcEvent::ReAuthRequested));
    assert_eq!(sent.len(), 1);
    let mscc = sent[0].find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).unwrap().grouped_avps().unwrap();
    let usu = mscc.iter().find(|a| a.is(code::USED_SERVICE_UNIT, 0)).unwrap().grouped_avps().unwrap();
    assert_eq!(
        usu.iter().find(|a| a.is(872, 10415)).unwrap().as_i32(),
        Ok(7),
        "Reporting-Reason FORCED_REAUTHORISATION"
    );
    // A RAR while PendingU: RAA at once, the CCR-U it asks for after the outstanding one.
    let raa = h.s.handle_rar(h.now, &rar);
    assert_eq!(raa.result_code(), Some(ResultCode::SUCCESS));
    assert!(h.drain().0.is_empty());
    h.s.handle_answer(h.now, &cca(&sent[0], 2001, &[grant(10, 60, None, None)]));
    assert_eq!(rtype(&h.one_request()), 2);
    // No session: 5002.
    let mut idle = H::new(Ccfh::Terminate);
    assert_eq!(idle.s.handle_rar(idle.now, &rar).result_code(), Some(ResultCode::UNKNOWN_SESSION_ID));
}

#[test]
fn asr_answers_and_terminates_with_the_usage() {
    let mut h = H::new(Ccfh::Terminate);
    h.open();
    let asr =
        Message::request(CommandCode::ABORT_SESSION, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    let asa = h.s.handle_asr(h.now, &asr);
    assert_eq!(asa.result_code(), Some(ResultCode::SUCCESS));
    let (sent, ev) = h.drain();
    assert!(ev.contains(&CcEvent::Aborted) && terminated(&ev));
    assert_eq!(rtype(&sent[0]), 3);
    assert_eq!(h.s.state(), CcState::PendingT);
}

#[test]
fn a_4012_on_a_ccr_u_ends_the_service_even_with_ccfh_continue() {
    let mut h = H::new(Ccfh::Continue);
    h.open();
    h.s.update(h.now, vec![(Some(10), Units { time: Some(300), ..Default::default() })], vec![Some(10)], Some(3), None);
    let u = h.one_request();
    h.s.handle_answer(h.now, &cca(&u, 4012, &[]));
    let (sent, ev) = h.drain();
    assert!(terminated(&ev) && !continued(&ev), "no free service after the credit ran out: {ev:?}");
    assert!(sent.is_empty(), "the server ended the session with its failed CCA-U: no CCR-T");
    assert_eq!(h.s.state(), CcState::Idle);
}

fn reporting_reason_and_used(m: &Message) -> (i32, Option<u64>) {
    let mscc = m.find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).unwrap().grouped_avps().unwrap();
    let usu = mscc.iter().find(|a| a.is(code::USED_SERVICE_UNIT, 0)).unwrap().grouped_avps().unwrap();
    let reason = usu.iter().find(|a| a.is(872, 10415)).and_then(|a| a.as_i32().ok()).unwrap_or(-1);
    let time = usu.iter().find(|a| a.is(code::CC_TIME, 0)).and_then(|a| a.as_u32().ok()).map(u64::from);
    (reason, time)
}

#[test]
fn a_service_that_reports_usage_makes_the_rar_s_ccr_u_or_the_session_does_at_tx() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.service_reports_usage(true);
    h.open();
    let rar = Message::request(CommandCode::RE_AUTH, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    assert_eq!(h.s.handle_rar(h.now, &rar).result_code(), Some(ResultCode::SUCCESS));
    let (sent, ev) = h.drain();
    assert!(sent.is_empty() && ev.contains(&CcEvent::ReAuthRequested), "left to the service: {sent:?}");
    assert!(matches!(h.s.owed(), Some((_, OwedReport::Reauthorize { reason: 7, .. }))));
    // The service reports what it used: its CCR-U settles the RAR.
    h.s.update(h.now, vec![(Some(10), Units { time: Some(12), ..Default::default() })], vec![Some(10)], Some(7), None);
    let u = h.one_request();
    assert_eq!(reporting_reason_and_used(&u), (7, Some(12)));
    assert!(h.s.owed().is_none());
    h.s.handle_answer(h.now, &cca(&u, 2001, &[grant(10, 300, None, None)]));
    h.drain();
    // A service that does not act: at Tx the session sends the CCR-U itself.
    h.s.handle_rar(h.now, &rar);
    h.drain();
    h.advance(TX - Duration::from_millis(1));
    assert!(h.drain().0.is_empty());
    h.advance(Duration::from_millis(1));
    let own = h.one_request();
    assert_eq!(rtype(&own), 2);
    assert_eq!(reporting_reason_and_used(&own).0, 7);
}

#[test]
fn a_service_that_reports_usage_ends_an_aborted_session_with_its_own_ccr_t() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.service_reports_usage(true);
    h.open();
    let asr =
        Message::request(CommandCode::ABORT_SESSION, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    assert_eq!(h.s.handle_asr(h.now, &asr).result_code(), Some(ResultCode::SUCCESS));
    let (sent, ev) = h.drain();
    assert!(sent.is_empty() && ev.contains(&CcEvent::Aborted) && terminated(&ev));
    // No more units after an abort: only the termination is left.
    h.s.update(h.now, vec![], vec![Some(10)], None, Some(5));
    assert!(matches!(h.s.poll_output(), Some(CcOutput::Dropped(Some(5)))));
    // The owed report survives adoption.
    let wall = 1_795_770_000_000;
    view_matches_snapshot(&h.s, h.now, wall);
    let snap: CcSnapshot = serde_json::from_slice(&serde_json::to_vec(&h.s.snapshot(h.now, wall)).unwrap()).unwrap();
    let later = Instant::now() + Duration::from_secs(1000);
    let adopted = CcSession::restore(&snap, "as2.test.localdomain", later, wall + 2_000).unwrap();
    assert_eq!(adopted.owed(), Some(&(later + TX - Duration::from_secs(2), OwedReport::Terminate)));
    h.s.terminate(h.now, vec![(Some(10), Units { time: Some(31), ..Default::default() })], None);
    let t = h.one_request();
    assert_eq!(rtype(&t), 3);
    assert_eq!(reporting_reason_and_used(&t), (2, Some(31)), "FINAL with the service's 31 s");
    assert!(h.s.owed().is_none());
}

#[test]
fn after_an_asr_the_session_sends_its_own_ccr_t_at_tx_if_the_service_does_not() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.service_reports_usage(true);
    h.open();
    let asr =
        Message::request(CommandCode::ABORT_SESSION, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    h.s.handle_asr(h.now, &asr);
    h.drain();
    // A later RAR does not push the deadline back.
    h.advance(TX / 2);
    let rar = Message::request(CommandCode::RE_AUTH, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    h.s.handle_rar(h.now, &rar);
    h.drain();
    h.advance(TX / 2);
    let t = h.one_request();
    assert_eq!(rtype(&t), 3, "the CCR-T at Tx after the ASR");
    assert!(h.s.owed().is_none());
}

#[test]
fn an_asr_keeps_the_ccr_t_the_service_queued() {
    for reports in [true, false] {
        let mut h = H::new(Ccfh::Terminate);
        h.s.service_reports_usage(reports);
        h.open();
        h.s.update(
            h.now,
            vec![(Some(10), Units { time: Some(5), ..Default::default() })],
            vec![Some(10)],
            None,
            Some(1),
        );
        let u = h.one_request();
        // The caller hangs up while the CCR-U is out: the CCR-T with its 7 s waits behind it. Then the ASR.
        h.s.terminate(h.now, vec![(Some(10), Units { time: Some(7), ..Default::default() })], Some(2));
        let asr = Message::request(CommandCode::ABORT_SESSION, AppId::CREDIT_CONTROL)
            .with(Avp::utf8(code::SESSION_ID, "as1;1"));
        h.s.handle_asr(h.now, &asr);
        assert!(h.drain().0.is_empty());
        assert!(h.s.owed().is_none(), "nothing owed: the CCR-T is queued");
        h.s.handle_answer(h.now, &cca(&u, 2001, &[grant(10, 300, None, None)]));
        let t = h.one_request();
        assert_eq!(rtype(&t), 3);
        assert_eq!(reporting_reason_and_used(&t), (2, Some(7)), "the service's usage, reports={reports}");
    }
}

#[test]
fn an_update_settles_only_the_rating_groups_it_covers() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.service_reports_usage(true);
    h.s.start(h.now, &[(Some(10), Units::default()), (Some(20), Units::default())], None);
    let i = h.one_request();
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 300, None, None), grant(20, 300, None, None)]));
    h.drain();
    let rar = Message::request(CommandCode::RE_AUTH, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    h.s.handle_rar(h.now, &rar);
    h.drain();
    h.s.update(h.now, vec![(Some(10), Units { time: Some(3), ..Default::default() })], vec![Some(10)], Some(7), None);
    assert!(
        matches!(h.s.owed(), Some((_, OwedReport::Reauthorize { rating_groups, .. })) if rating_groups == &[Some(20)]),
        "rating group 20 is still owed: {:?}",
        h.s.owed()
    );
    // An update after an ASR is dropped with what was attached to it.
    let asr =
        Message::request(CommandCode::ABORT_SESSION, AppId::CREDIT_CONTROL).with(Avp::utf8(code::SESSION_ID, "as1;1"));
    let u = h.one_request();
    h.s.handle_answer(h.now, &cca(&u, 2001, &[grant(10, 300, None, None)]));
    h.drain();
    h.s.handle_asr(h.now, &asr);
    h.drain();
    h.s.attach(vec![Avp::u32(code::RATING_GROUP, 99)]);
    h.s.update(h.now, vec![], vec![Some(10)], None, None);
    h.s.terminate(h.now, vec![], None);
    let t = h.one_request();
    assert!(t.find(code::RATING_GROUP, 0).is_none(), "the dropped update's AVPs stay out of the CCR-T");
}

#[test]
fn a_snapshot_needs_format_2_only_for_what_format_1_cannot_say() {
    let wall = 1_795_770_000_000;
    let mut h = H::new(Ccfh::Terminate);
    h.open();
    let v = serde_json::to_value(h.s.snapshot(h.now, wall)).unwrap();
    assert_eq!(v["format"], 1, "a release that reads format 1 still adopts it");
    h.s.service_reports_usage(true);
    let v = serde_json::to_value(h.s.snapshot(h.now, wall)).unwrap();
    assert_eq!(v["format"], 2);
}

#[test]
fn a_service_that_reports_usage_makes_the_validity_time_ccr_u() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.service_reports_usage(true);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 300, Some(5), None)]));
    h.drain();
    h.advance(Duration::from_secs(5));
    let (sent, ev) = h.drain();
    let expired = CcEvent::ValidityExpired { rating_group: Some(10), reporting_reason: 4 };
    assert!(sent.is_empty() && ev.contains(&expired), "{ev:?}");
    assert!(matches!(h.s.owed(), Some((_, OwedReport::Reauthorize { reason: 4, .. }))));
    h.advance(TX);
    assert_eq!(reporting_reason_and_used(&h.one_request()).0, 4, "the session's own, at Tx");
}

#[test]
fn quota_holding_time_expiry_reports_with_reason_qht_and_thresholds_reach_the_service() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    let mscc = Avp::grouped(
        code::MULTIPLE_SERVICES_CREDIT_CONTROL,
        &[
            Avp::grouped(code::GRANTED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, 300)]),
            Avp::u32(code::RATING_GROUP, 10),
            Avp::u32(871, 30).with_vendor(crate::codec::VendorId::TGPP),
            Avp::u32(868, 20).with_vendor(crate::codec::VendorId::TGPP),
        ],
    );
    h.s.handle_answer(h.now, &cca(&i, 2001, &[mscc]));
    let (_, ev) = h.drain();
    assert!(ev.iter().any(|e| matches!(e, CcEvent::Granted { threshold, .. } if threshold.time == Some(20))), "{ev:?}");
    h.advance(Duration::from_secs(30));
    let (sent, _) = h.drain();
    let m = sent[0].find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).unwrap().grouped_avps().unwrap();
    let usu = m.iter().find(|a| a.is(code::USED_SERVICE_UNIT, 0)).unwrap().grouped_avps().unwrap();
    assert_eq!(usu.iter().find(|a| a.is(872, 10415)).unwrap().as_i32(), Ok(1), "Reporting-Reason QHT");
}

#[test]
fn validity_time_expiry_reauthorizes_the_rating_group() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 300, Some(60), None)]));
    h.drain();
    assert_eq!(h.s.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    h.advance(Duration::from_secs(59));
    assert!(h.drain().0.is_empty());
    h.advance(Duration::from_secs(1));
    let (sent, ev) = h.drain();
    assert!(ev.contains(&CcEvent::ValidityExpired { rating_group: Some(10), reporting_reason: 4 }));
    assert_eq!(rtype(&sent[0]), 2);
    let mscc = sent[0].find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).unwrap().grouped_avps().unwrap();
    assert!(mscc.iter().any(|a| a.is(code::REQUESTED_SERVICE_UNIT, 0)));
}

#[test]
fn final_units_and_per_rating_group_denial() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default()), (Some(20), Units::default())], None);
    let i = h.one_request();
    let denied = Avp::grouped(
        code::MULTIPLE_SERVICES_CREDIT_CONTROL,
        &[Avp::u32(code::RATING_GROUP, 20), Avp::u32(code::RESULT_CODE, 4012)],
    );
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 30, None, Some(1)), denied]));
    let (_, ev) = h.drain();
    assert!(
        ev.iter().any(|e| matches!(
            e,
            CcEvent::Granted { rating_group: Some(10), final_unit: Some(FinalUnit::Redirect(_)), .. }
        )),
        "{ev:?}"
    );
    assert!(ev.contains(&CcEvent::Denied { rating_group: Some(20), result_code: ResultCode::CREDIT_LIMIT_REACHED }));
    assert_eq!(h.s.quotas().len(), 1);
    assert_eq!(h.s.state(), CcState::Open);
}

#[test]
fn event_charging_with_ddfh() {
    let units = crate::units::Units { units: Some(1), ..Default::default() };
    // Success.
    let mut h = H::new(Ccfh::Terminate);
    h.s.event(h.now, RequestedAction::DirectDebiting, units, Some(2), None);
    assert_eq!(h.s.state(), CcState::PendingE);
    let e = h.one_request();
    assert_eq!((rtype(&e), number(&e)), (4, 0));
    h.s.handle_answer(h.now, &cca(&e, 2001, &[]));
    assert!(matches!(h.drain().1[..], [CcEvent::EventAnswered(_)]));
    assert_eq!(h.s.state(), CcState::Idle);
    // DIRECT_DEBITING failing to send with DDFH TERMINATE_OR_BUFFER: service granted, request stored with T.
    let mut h = H::new(Ccfh::Terminate);
    h.s.event(h.now, RequestedAction::DirectDebiting, units, None, None);
    h.drain();
    h.s.handle_send_failure(h.now, "no peer");
    let (_, ev) = h.drain();
    assert!(ev.contains(&CcEvent::EventStored) && continued(&ev), "{ev:?}");
    assert!(h.s.has_stored());
    view_matches_snapshot(&h.s, h.now, 1_795_770_000_000);
    assert!(h.s.send_stored(h.now));
    assert_eq!(h.s.state(), CcState::PendingB);
    let b = h.one_request();
    assert!(b.header.flags.is_retransmit(), "a stored request goes with the T flag");
    assert_eq!(number(&b), 0, "the same request, the same number");
    h.s.handle_answer(h.now, &cca(&b, 2001, &[]));
    assert_eq!(h.s.state(), CcState::Idle);
    assert!(!h.s.has_stored());
    // DDFH CONTINUE and Tx expiry: the service is granted, the answer still awaited.
    let mut h = H::new(Ccfh::Terminate);
    h.s.event(h.now, RequestedAction::DirectDebiting, units, None, None);
    let e = h.one_request();
    let mut a = cca(&e, 4011, &[]);
    a.push(Avp::i32(code::DIRECT_DEBITING_FAILURE_HANDLING, 1));
    h.s.handle_answer(h.now, &a);
    h.drain();
    h.s.event(h.now, RequestedAction::DirectDebiting, units, None, None);
    h.drain();
    h.advance(TX);
    let (_, ev) = h.drain();
    assert!(continued(&ev), "DDFH CONTINUE from the server applies: {ev:?}");
    assert_eq!(h.s.state(), CcState::PendingE);
    // REFUND_ACCOUNT and Tx expiry: stored for later.
    let mut h = H::new(Ccfh::Terminate);
    h.s.event(h.now, RequestedAction::RefundAccount, units, None, None);
    h.drain();
    h.advance(TX);
    assert!(h.drain().1.contains(&CcEvent::EventStored));
    // CHECK_BALANCE failing: a service error, nothing stored.
    let mut h = H::new(Ccfh::Terminate);
    h.s.event(h.now, RequestedAction::CheckBalance, units, None, None);
    h.drain();
    h.s.handle_send_failure(h.now, "no peer");
    assert!(terminated(&h.drain().1));
    assert!(!h.s.has_stored());
}

#[test]
fn failover_supported_resends_to_an_alternate_server_with_the_t_flag() {
    // The server allows failover and asks RETRY_AND_TERMINATE (RFC 4006 §5.7).
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    h.s.handle_answer(
        h.now,
        &cca(
            &i,
            2001,
            &[
                grant(10, 60, None, None),
                Avp::i32(code::CC_SESSION_FAILOVER, 1),
                Avp::i32(code::CREDIT_CONTROL_FAILURE_HANDLING, 2),
            ],
        ),
    );
    h.drain();
    h.s.update(h.now, vec![(Some(10), Units::default())], vec![Some(10)], None, None);
    let u = h.one_request();
    assert_eq!(u.find(code::DESTINATION_HOST, 0).unwrap().as_utf8(), Ok("ocs1.ocs.localdomain"));
    h.advance(TX);
    let mut resent = None;
    while let Some(o) = h.s.poll_output() {
        if let CcOutput::Resend { request, avoid_host } = o {
            assert_eq!(avoid_host.as_deref(), Some("ocs1.ocs.localdomain"));
            resent = Some(request);
        }
    }
    let r = resent.expect("resent to an alternate server");
    assert!(r.header.flags.is_retransmit());
    assert_eq!(number(&r), number(&u), "the same request, the same number");
    assert!(r.find(code::DESTINATION_HOST, 0).is_none());
    assert_eq!(h.s.state(), CcState::PendingU);
    // The alternate answers: back to Open.
    assert!(h.s.handle_answer(h.now, &cca(&r, 2001, &[grant(10, 60, None, None)])));
    assert_eq!(h.s.state(), CcState::Open);
    // Next time neither answers: after the alternate's Tx, RETRY_AND_TERMINATE ends the service.
    h.s.update(h.now, vec![(Some(10), Units::default())], vec![Some(10)], None, None);
    h.drain();
    h.advance(TX);
    h.drain();
    h.advance(TX);
    let (_, ev) = h.drain();
    assert!(terminated(&ev), "{ev:?}");
    assert_eq!(h.s.state(), CcState::Idle);
    // A send failure also goes to the alternate first.
    let mut h = H::new(Ccfh::Continue);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 60, None, None), Avp::i32(code::CC_SESSION_FAILOVER, 1)]));
    h.drain();
    h.s.update(h.now, vec![(Some(10), Units::default())], vec![Some(10)], None, Some(9));
    h.drain();
    h.s.handle_send_failure(h.now, "3002");
    let mut saw_resend = false;
    while let Some(o) = h.s.poll_output() {
        saw_resend |= matches!(o, CcOutput::Resend { .. });
        assert!(!matches!(o, CcOutput::Done(Some(9))), "the caller waits for the alternate's answer");
    }
    assert!(saw_resend);
}

#[test]
fn a_snapshot_restores_on_another_node_with_timers_and_the_request_in_flight() {
    let mut h = H::new(Ccfh::Terminate);
    h.s.start(h.now, &[(Some(10), Units::default())], None);
    let i = h.one_request();
    h.s.handle_answer(h.now, &cca(&i, 2001, &[grant(10, 300, Some(60), None), Avp::i32(code::CC_SESSION_FAILOVER, 1)]));
    h.drain();
    // A CCR-U is in flight, another service request queued behind it, when the node dies.
    h.s.update(h.now, vec![(Some(10), Units { time: Some(42), ..Default::default() })], vec![Some(10)], None, Some(1));
    let in_flight = h.one_request();
    h.s.terminate(h.now, vec![(Some(10), Units { time: Some(3), ..Default::default() })], Some(2));
    let wall = 1_795_770_000_000;
    let snap = h.s.snapshot(h.now, wall);
    // It travels through the store, in either encoding, and reads back the same.
    for encoding in [StateEncoding::Json, StateEncoding::Binary] {
        assert_eq!(through_store(&snap, encoding), snap, "{encoding:?}");
    }
    let snap = through_store(&snap, StateEncoding::Binary);
    // 20 s later on another node (its own monotonic clock), with its own Origin-Host.
    let later = Instant::now() + Duration::from_secs(1000);
    let mut adopted = CcSession::restore(&snap, "as2.test.localdomain", later, wall + 20_000).unwrap();
    assert_eq!(adopted.state(), CcState::PendingU);
    assert_eq!(adopted.next_request_number(), 2);
    // The Validity-Time deadline was 60 s after the grant: 40 s are left.
    assert_eq!(adopted.quotas()[0].deadline(), Some(later + Duration::from_secs(40)));
    // The request in flight goes again: same number, T flag, the adopter's Origin-Host.
    adopted.resume(later);
    let resent = match adopted.poll_output() {
        Some(CcOutput::Send(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(resent.header.flags.is_retransmit());
    assert_eq!(number(&resent), number(&in_flight));
    assert_eq!(resent.find(code::ORIGIN_HOST, 0).unwrap().as_utf8(), Ok("as2.test.localdomain"));
    // Its answer is matched; the queued termination follows with the next number.
    assert!(adopted.handle_answer(later, &cca(&in_flight, 2001, &[grant(10, 300, None, None)])));
    let mut next = None;
    while let Some(o) = adopted.poll_output() {
        if let CcOutput::Send(m) = o {
            next = Some(m);
        }
    }
    let t = next.expect("the queued CCR-T");
    assert_eq!((rtype(&t), number(&t)), (3, 2));
    // A snapshot from a newer release is refused clearly.
    let mut newer = snap.clone();
    let v = serde_json::to_value(&newer).unwrap();
    let mut v = v;
    v["format"] = serde_json::json!(SNAPSHOT_FORMAT + 1);
    newer = serde_json::from_value(v).unwrap();
    assert_eq!(CcSession::restore(&newer, "x", later, wall).err(), Some(SnapshotError::TooNew(SNAPSHOT_FORMAT + 1)));
}

#[test]
fn a_request_larger_than_the_kept_scratch_buffer_serializes_in_place_too() {
    // The write-ahead encodes the request in flight into a per-thread buffer, let go of after an outsized one.
    let (mut h, wall) = (H::new(Ccfh::Terminate), 1_795_770_000_000);
    h.open();
    for size in [200_000, 10] {
        h.s.attach(vec![Avp::octets(9999, bytes::Bytes::from(vec![7u8; size]))]);
        h.s.update(h.now, vec![(Some(10), Units::default())], vec![Some(10)], None, None);
        let u = h.one_request();
        assert!(u.encoded_len() > size);
        view_matches_snapshot(&h.s, h.now, wall);
        h.s.handle_answer(h.now, &cca(&u, 2001, &[grant(10, 300, None, None)]));
        h.drain();
    }
}

#[test]
fn every_field_of_a_snapshot_reads_back_from_a_binary_record() {
    // A positional format has no field names: a field written conditionally (or a type that leaves empty values
    // out) would shift every later one. Both extremes go through: a session with everything set and a bare one.
    let wall = 1_795_770_000_000;
    let bare = CcSession::new(CcConfig { subscription: None, ..config(Ccfh::Continue) }, "as1;bare".into());
    let mut h = H::new(Ccfh::RetryAndTerminate);
    h.s.service_reports_usage(true);
    h.s.start(h.now, &[(Some(10), Units::default()), (None, Units::default())], None);
    let i = h.one_request();
    let mscc = |rg: u32, validity: Option<u32>, action: i32, extra: Avp| {
        let mut v = vec![
            Avp::grouped(code::GRANTED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, 300)]),
            Avp::u32(code::RATING_GROUP, rg),
            Avp::u32(code::RESULT_CODE, 2001),
            Avp::grouped(code::FINAL_UNIT_INDICATION, &[Avp::i32(code::FINAL_UNIT_ACTION, action), extra]),
        ];
        v.extend(validity.map(|vt| Avp::u32(code::VALIDITY_TIME, vt)));
        Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &v)
    };
    // Final units: redirect (Redirect-Server, its address) and restrict access (Filter-Id).
    let redirect = Avp::grouped(434, &[Avp::i32(433, 2), Avp::utf8(435, "sip:topup@example.net")]);
    let (g1, g2) = (mscc(10, Some(60), 1, redirect), mscc(20, None, 2, Avp::utf8(11, "walled-garden")));
    h.s.handle_answer(h.now, &cca(&i, 2001, &[g1, g2, Avp::i32(code::CC_SESSION_FAILOVER, 1)]));
    h.drain();
    let used = Units { time: Some(42), input_octets: Some(7), money: Some(1), ..Default::default() };
    h.s.update(h.now, vec![(Some(10), used)], vec![Some(10), None], Some(3), Some(1));
    h.drain();
    h.s.attach(vec![Avp::utf8(873, "x")]);
    h.s.update(h.now, vec![(Some(20), used)], vec![Some(20)], Some(4), Some(2));
    h.s.terminate(h.now, vec![(None, Units { units: Some(u64::MAX), ..Default::default() })], Some(3));
    assert!(h.s.quotas().iter().all(|q| q.final_unit.is_some()), "{:?}", h.s.quotas());
    for s in [&bare, &h.s] {
        let snap = s.snapshot(h.now, wall);
        for encoding in [StateEncoding::Json, StateEncoding::Binary] {
            assert_eq!(through_store(&snap, encoding), snap, "{encoding:?}");
        }
        view_matches_snapshot(s, h.now, wall);
    }
    // The binary record is the smaller one: no field names, the request in flight as raw bytes.
    let snap = h.s.snapshot(h.now, wall);
    let record = StateRecord { format: FORMAT, written_by_epoch: 1, written_by: "n".to_string(), state: snap };
    let (json, binary) = (
        replication::encode_state(&record, StateEncoding::Json),
        replication::encode_state(&record, StateEncoding::Binary),
    );
    assert!(binary.len() * 2 < json.len(), "binary {} octets, JSON {}", binary.len(), json.len());
    // A newer layout is refused by name; a cut record is unreadable, not a panic.
    let mut newer = binary.to_vec();
    newer[1] = replication::BINARY_LAYOUT + 1;
    assert_eq!(
        replication::decode::<StateRecord<CcSnapshot>>(&newer).err(),
        Some(replication::RecordError::TooNewLayout { found: replication::BINARY_LAYOUT + 1 })
    );
    assert!(replication::decode_state_header(&newer).is_err());
    // Layout 0 was never written; octets after the record mean it is not what it seems.
    let mut zero = binary.to_vec();
    zero[1] = 0;
    let mut longer = binary.to_vec();
    longer.push(0);
    for bad in [zero, longer] {
        let r = replication::decode::<StateRecord<CcSnapshot>>(&bad);
        assert!(matches!(r, Err(replication::RecordError::Unreadable(_))), "{r:?}");
    }
    for cut in [1, 2, 10, binary.len() / 2, binary.len() - 1] {
        let r = replication::decode::<StateRecord<CcSnapshot>>(&binary[..cut]);
        assert!(matches!(r, Err(replication::RecordError::Unreadable(_))), "cut at {cut}: {r:?}");
    }
}
