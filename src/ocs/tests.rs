//! The simulator's core: tariff, balance, FUI, duplicates, anomalies, events, Gx, faults, Tcc, RAR/ASR.

use std::time::{Duration, Instant};

use super::config::{RatingGroupConfig, SubscriberConfig};
use super::*;
use crate::codec::{AppId, Avp, CommandCode, CommandFlags, Message, ResultCode, code};
use crate::units::Units;

const P: PeerId = PeerId(3);

fn ccr(sid: &str, rtype: i32, number: u32, subscriber: &str, mscc: &[Avp]) -> Message {
    let mut m = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
        .with(Avp::utf8(code::SESSION_ID, sid))
        .with(Avp::utf8(code::ORIGIN_HOST, "as1.test.localdomain"))
        .with(Avp::utf8(code::ORIGIN_REALM, "test.localdomain"))
        .with(Avp::utf8(code::DESTINATION_REALM, "localdomain"))
        .with(Avp::u32(code::AUTH_APPLICATION_ID, 4))
        .with(Avp::utf8(code::SERVICE_CONTEXT_ID, "32260@3gpp.org"))
        .with(Avp::i32(code::CC_REQUEST_TYPE, rtype))
        .with(Avp::u32(code::CC_REQUEST_NUMBER, number))
        .with(Avp::grouped(
            code::SUBSCRIPTION_ID,
            &[Avp::i32(code::SUBSCRIPTION_ID_TYPE, 0), Avp::utf8(code::SUBSCRIPTION_ID_DATA, subscriber)],
        ));
    m.avps.extend(mscc.iter().cloned());
    m.header.end_to_end = crate::codec::EndToEndId(number + 1);
    m
}

fn mscc(rg: u32, used_time: Option<u32>, request: bool) -> Avp {
    let mut v = Vec::new();
    if request {
        v.push(Avp::grouped(code::REQUESTED_SERVICE_UNIT, &[]));
    }
    if let Some(t) = used_time {
        v.push(Avp::grouped(code::USED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, t)]));
    }
    v.push(Avp::u32(code::RATING_GROUP, rg));
    Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &v)
}

fn answer(r: Reply) -> Message {
    match r {
        Reply::Answer(a) => a,
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The MSCC of rating group `rg` in an answer: (Result-Code, granted time, FUI action).
fn grant_of(a: &Message, rg: u32) -> (Option<u32>, Option<u64>, Option<i32>) {
    for m in a.find_all(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0) {
        let members: Vec<Avp> = m.grouped_avps().unwrap();
        if members.iter().any(|x| x.is(code::RATING_GROUP, 0) && x.as_u32() == Ok(rg)) {
            let rc = members.iter().find(|x| x.is(code::RESULT_CODE, 0)).and_then(|x| x.as_u32().ok());
            let gsu = members.iter().find(|x| x.is(code::GRANTED_SERVICE_UNIT, 0)).map(Units::from_grouped);
            let fui = members.iter().find(|x| x.is(code::FINAL_UNIT_INDICATION, 0)).and_then(|f| {
                f.grouped_avps()
                    .unwrap()
                    .iter()
                    .find(|x| x.is(code::FINAL_UNIT_ACTION, 0))
                    .and_then(|x| x.as_i32().ok())
            });
            return (rc, gsu.and_then(|g| g.time), fui);
        }
    }
    panic!("no MSCC for rating group {rg}: {a:?}");
}

fn ocs_with(balance_time: u64) -> Ocs {
    let mut cfg = OcsConfig::default();
    cfg.subscribers
        .push(SubscriberConfig { id: "46701".into(), balance: Units { time: Some(balance_time), ..Units::default() } });
    cfg.ro.rating_groups.push(RatingGroupConfig {
        rating_group: 10,
        grant: Units { time: Some(300), ..Units::default() },
        validity_time: Duration::from_secs(600),
        quota_holding_time: Duration::from_secs(60),
        time_quota_threshold: 30,
        ..RatingGroupConfig::default()
    });
    Ocs::new(cfg, "ocs.localdomain", "localdomain")
}

#[test]
fn ro_session_grants_debits_and_leaves_a_clean_ledger() {
    let mut o = ocs_with(10_000);
    let t = Instant::now();
    let a = answer(o.handle_request(t, 1, P, &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    assert_eq!(grant_of(&a, 10), (Some(2001), Some(300), None));
    let m = a.find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).unwrap().grouped_avps().unwrap();
    assert!(m.iter().any(|x| x.is(code::VALIDITY_TIME, 0) && x.as_u32() == Ok(600)));
    assert!(m.iter().any(|x| x.is(871, 10415)), "Quota-Holding-Time");
    assert!(m.iter().any(|x| x.is(868, 10415)), "Time-Quota-Threshold");
    let a = answer(o.handle_request(t, 2, P, &ccr("s1", 2, 1, "46701", &[mscc(10, Some(250), true)])));
    assert_eq!(grant_of(&a, 10).1, Some(300));
    let a = answer(o.handle_request(t, 3, P, &ccr("s1", 3, 2, "46701", &[mscc(10, Some(120), false)])));
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    let s = &o.ledger()["s1"];
    assert_eq!(s.state, SessionState::Terminated);
    assert_eq!(s.requests.iter().map(|r| r.number).collect::<Vec<_>>(), vec![0, 1, 2]);
    let rg = &s.rating_groups[&10];
    assert_eq!((rg.granted.time, rg.reported_used.time, rg.debited.time), (Some(600), Some(370), Some(370)));
    let c = o.check();
    assert!(c.clean, "{c:?}");
    assert_eq!((c.sessions.opened, c.sessions.terminated, c.sessions.open), (1, 1, 0));
}

#[test]
fn the_last_units_come_with_fui_then_4012() {
    let mut o = ocs_with(400);
    let t = Instant::now();
    let a = answer(o.handle_request(t, 1, P, &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    assert_eq!(grant_of(&a, 10), (Some(2001), Some(300), None));
    // 300 used: 100 left, less than a grant: the final units, with Final-Unit-Indication TERMINATE.
    let a = answer(o.handle_request(t, 2, P, &ccr("s1", 2, 1, "46701", &[mscc(10, Some(300), true)])));
    assert_eq!(grant_of(&a, 10), (Some(2001), Some(100), Some(0)));
    // Used up: 4012 for the rating group.
    let a = answer(o.handle_request(t, 3, P, &ccr("s1", 2, 2, "46701", &[mscc(10, Some(100), true)])));
    assert_eq!(grant_of(&a, 10), (Some(4012), None, None));
    // A new session of the same subscriber cannot even start: session-level 4012.
    let a = answer(o.handle_request(t, 4, P, &ccr("s2", 1, 0, "46701", &[mscc(10, None, true)])));
    assert_eq!(a.result_code(), Some(ResultCode::CREDIT_LIMIT_REACHED));
}

#[test]
fn t_flag_retransmission_is_answered_again_and_not_charged_twice() {
    let mut o = ocs_with(10_000);
    let t = Instant::now();
    answer(o.handle_request(t, 1, P, &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    let u = ccr("s1", 2, 1, "46701", &[mscc(10, Some(200), true)]);
    let first = answer(o.handle_request(t, 2, P, &u));
    let mut again = u.clone();
    again.header.flags = CommandFlags(again.header.flags.0 | CommandFlags::RETRANSMIT);
    again.header.hop_by_hop = crate::codec::HopByHopId(99);
    let second = answer(o.handle_request(t, 3, PeerId(4), &again));
    assert_eq!(second.header.hop_by_hop.0, 99);
    assert_eq!(second.avps, first.avps, "the same answer");
    let s = &o.ledger()["s1"];
    assert_eq!(s.duplicates_answered, 1);
    assert_eq!(s.rating_groups[&10].debited.time, Some(200), "charged once");
    assert!(o.check().clean);
    // The same number again without the T flag: answered, not charged, and an anomaly.
    answer(o.handle_request(t, 4, P, &u));
    let c = o.check();
    assert_eq!(c.anomalies.get("repeated_number"), Some(&1));
    assert_eq!(c.anomalies.get("usage_reported_twice"), Some(&1));
    assert_eq!(o.ledger()["s1"].rating_groups[&10].debited.time, Some(200));
    // The answers are kept past the session's end: a CCR-T whose answer was lost is answered again, the same.
    let term = ccr("s1", 3, 2, "46701", &[mscc(10, Some(100), false)]);
    let first = answer(o.handle_request(t, 5, P, &term));
    let mut again = term.clone();
    again.header.flags = CommandFlags(again.header.flags.0 | CommandFlags::RETRANSMIT);
    assert_eq!(answer(o.handle_request(t, 6, P, &again)).avps, first.avps);
    let s = &o.ledger()["s1"];
    assert_eq!((s.state, s.duplicates_answered), (SessionState::Terminated, 2));
    assert_eq!(s.rating_groups[&10].debited.time, Some(300), "the CCR-T's usage charged once");
    // They are the simulator's, not the ledger's: its JSON does not carry them.
    assert!(!serde_json::to_string(s).unwrap().contains("recent"));
}

#[test]
fn sequencing_anomalies_are_recorded() {
    let mut o = ocs_with(10_000);
    let t = Instant::now();
    answer(o.handle_request(t, 1, P, &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    answer(o.handle_request(t, 2, P, &ccr("s1", 2, 2, "46701", &[mscc(10, Some(10), true)])));
    answer(o.handle_request(t, 3, P, &ccr("s1", 3, 3, "46701", &[])));
    let late = answer(o.handle_request(t, 4, P, &ccr("s1", 2, 4, "46701", &[mscc(10, Some(10), false)])));
    assert_eq!(late.result_code(), Some(ResultCode::UNKNOWN_SESSION_ID));
    let unknown = answer(o.handle_request(t, 5, P, &ccr("never", 2, 1, "46701", &[])));
    assert_eq!(unknown.result_code(), Some(ResultCode::UNKNOWN_SESSION_ID));
    let c = o.check();
    assert!(!c.clean);
    assert_eq!(c.anomalies.get("skipped_number"), Some(&1));
    assert_eq!(c.anomalies.get("request_after_termination"), Some(&1));
    assert_eq!(c.anomalies.get("unknown_session"), Some(&1));
}

#[test]
fn event_charging_actions() {
    let mut cfg = OcsConfig::default();
    cfg.subscribers
        .push(SubscriberConfig { id: "46702".into(), balance: Units { units: Some(3), ..Units::default() } });
    let mut o = Ocs::new(cfg, "ocs.localdomain", "localdomain");
    let t = Instant::now();
    let event = |sid: &str, action: i32, n: u64| {
        ccr(sid, 4, 0, "46702", &[])
            .with(Avp::i32(code::REQUESTED_ACTION, action))
            .with(Avp::grouped(code::REQUESTED_SERVICE_UNIT, &[Avp::u64(code::CC_SERVICE_SPECIFIC_UNITS, n)]))
    };
    let a = answer(o.handle_request(t, 1, P, &event("e1", 0, 2)));
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    let a = answer(o.handle_request(t, 1, P, &event("e2", 0, 2)));
    assert_eq!(a.result_code(), Some(ResultCode::CREDIT_LIMIT_REACHED), "1 unit left");
    let a = answer(o.handle_request(t, 1, P, &event("e3", 2, 2)));
    assert_eq!(a.find(422, 0).unwrap().as_i32(), Ok(1), "CHECK_BALANCE: NO_CREDIT");
    answer(o.handle_request(t, 1, P, &event("e4", 1, 5)));
    let a = answer(o.handle_request(t, 1, P, &event("e5", 2, 2)));
    assert_eq!(a.find(422, 0).unwrap().as_i32(), Ok(0), "refund made it ENOUGH_CREDIT");
    let a = answer(o.handle_request(t, 1, P, &event("e6", 3, 4)));
    assert!(a.find(423, 0).is_some(), "PRICE_ENQUIRY: Cost-Information");
    assert_eq!(o.check().sessions.events, 6);
}

#[test]
fn gx_installs_policy_and_records_reports() {
    let mut o = Ocs::new(OcsConfig::default(), "pcrf.localdomain", "localdomain");
    let t = Instant::now();
    let mut i = ccr("g1", 1, 0, "240011", &[]);
    i.header.application_id = AppId::GX;
    let a = answer(o.handle_request(t, 1, P, &i));
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    assert!(a.find(1001, 10415).is_some(), "Charging-Rule-Install");
    assert!(a.find_all(1006, 10415).count() >= 1, "Event-Trigger");
    assert!(a.find(1067, 10415).is_some(), "Usage-Monitoring-Information");
    let mut u = ccr("g1", 2, 1, "240011", &[]);
    u.header.application_id = AppId::GX;
    u.push(Avp::i32(1006, 2).with_vendor(crate::codec::VendorId::TGPP));
    u.push(
        Avp::grouped(
            1018,
            &[
                Avp::octets(1005, b"video-zero-rated".to_vec()).with_vendor(crate::codec::VendorId::TGPP),
                Avp::i32(1031, 10).with_vendor(crate::codec::VendorId::TGPP),
            ],
        )
        .with_vendor(crate::codec::VendorId::TGPP),
    );
    answer(o.handle_request(t, 2, P, &u));
    let s = &o.ledger()["g1"];
    assert_eq!(s.app, "gx");
    assert_eq!(s.gx.event_triggers_reported, vec![2]);
    assert_eq!(s.gx.rule_failures, vec![("video-zero-rated".to_string(), 10)]);
    assert!(s.gx.rules_installed.contains(&"video-zero-rated".to_string()));
}

#[test]
fn faults_match_by_rule_and_fire_as_often_as_told() {
    let mut o = ocs_with(10_000);
    let t = Instant::now();
    let rule = |action: FaultAction, number: Option<u32>, times: Option<u32>| FaultRule {
        subscriber: Some("46701".into()),
        session_id: None,
        command: Some("CCR".into()),
        request_type: None,
        request_number: number,
        retransmission: None,
        times,
        action,
    };
    o.add_fault(rule(FaultAction::ResultCode(5031), Some(0), Some(1)));
    let a = answer(o.handle_request(t, 1, P, &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    assert_eq!(a.result_code(), Some(ResultCode::RATING_FAILED));
    // Fired once: the next CCR-I goes through.
    let a = answer(o.handle_request(t, 1, P, &ccr("s2", 1, 0, "46701", &[mscc(10, None, true)])));
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    o.clear_faults();
    o.add_fault(rule(FaultAction::Drop, Some(1), Some(1)));
    let u = ccr("s2", 2, 1, "46701", &[mscc(10, Some(100), true)]);
    assert_eq!(o.handle_request(t, 2, P, &u), Reply::Drop);
    // The client's retransmission with T gets the answer that was lost, and usage is charged once.
    let mut again = u.clone();
    again.header.flags = CommandFlags(again.header.flags.0 | CommandFlags::RETRANSMIT);
    assert_eq!(answer(o.handle_request(t, 3, P, &again)).result_code(), Some(ResultCode::SUCCESS));
    assert_eq!(o.ledger()["s2"].rating_groups[&10].debited.time, Some(100));
    assert!(o.check().clean);
    o.add_fault(rule(FaultAction::Delay(Duration::from_millis(300)), Some(2), None));
    assert!(
        matches!(o.handle_request(t, 4, P, &ccr("s2", 2, 2, "46701", &[])), Reply::Delay(d, _) if d == Duration::from_millis(300))
    );
    o.add_fault(rule(FaultAction::Close, Some(3), None));
    assert_eq!(o.handle_request(t, 5, P, &ccr("s2", 2, 3, "46701", &[])), Reply::Close);
    o.add_fault(rule(FaultAction::UnableToDeliver, Some(4), None));
    let a = answer(o.handle_request(t, 6, P, &ccr("s2", 2, 4, "46701", &[])));
    assert_eq!(a.result_code(), Some(ResultCode::UNABLE_TO_DELIVER));
    assert!(a.header.flags.is_error());
    o.add_fault(rule(FaultAction::Dpr, Some(5), None));
    assert!(matches!(o.handle_request(t, 7, P, &ccr("s2", 2, 5, "46701", &[])), Reply::AnswerThenDpr(_)));
}

#[test]
fn tcc_closes_idle_sessions_and_releases_their_reservation() {
    let cfg = OcsConfig { tcc: Duration::from_secs(60), ..Default::default() };
    let mut o = Ocs::new(cfg, "ocs.localdomain", "localdomain");
    let t = Instant::now();
    answer(o.handle_request(t, 1, P, &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    answer(o.handle_request(t, 1, P, &ccr("s2", 1, 0, "46701", &[mscc(10, None, true)])));
    answer(o.handle_request(t + Duration::from_secs(50), 2, P, &ccr("s2", 2, 1, "46701", &[mscc(10, Some(1), true)])));
    assert!(o.expire(t + Duration::from_secs(59), 3).is_empty());
    assert_eq!(o.expire(t + Duration::from_secs(60), 4), vec!["s1".to_string()]);
    assert_eq!(o.ledger()["s1"].state, SessionState::ClosedByTcc);
    assert_eq!(o.check().anomalies.get("closed_by_tcc"), Some(&1));
    assert_eq!(o.ledger()["s1"].rating_groups[&10].outstanding, Units::default());
    // A closed session is no longer reachable for RAR/ASR, and is closed once.
    assert_eq!(o.asr("s1"), Err(OcsError::NotOpen("s1".into())));
    assert!(o.asr("s2").is_ok());
    assert_eq!(o.expire(t + Duration::from_secs(111), 5), vec!["s2".to_string()]);
    assert_eq!(o.check().anomalies.get("closed_by_tcc"), Some(&2));
}

#[test]
fn tcc_watches_a_busy_session_from_its_last_request_and_forgets_a_terminated_one() {
    let cfg = OcsConfig { tcc: Duration::from_secs(60), ..Default::default() };
    let mut o = Ocs::new(cfg, "ocs.localdomain", "localdomain");
    let t = Instant::now();
    let s = |secs| t + Duration::from_secs(secs);
    answer(o.handle_request(t, 1, P, &ccr("busy", 1, 0, "46701", &[mscc(10, None, true)])));
    answer(o.handle_request(t, 1, P, &ccr("ended", 1, 0, "46701", &[mscc(10, None, true)])));
    answer(o.handle_request(s(10), 2, P, &ccr("ended", 3, 1, "46701", &[mscc(10, Some(1), false)])));
    assert_eq!(o.open.len(), 1, "the terminated session is still watched");
    // A request every 40 s: each expiry pass finds it heard from within Tcc and watches it from its last request.
    for (k, at) in [40, 80, 120, 160].into_iter().enumerate() {
        answer(o.handle_request(s(at), 3, P, &ccr("busy", 2, k as u32 + 1, "46701", &[mscc(10, Some(1), true)])));
        assert!(o.expire(s(at + 30), 4).is_empty(), "expired at {}", at + 30);
    }
    assert!(o.expire(s(219), 5).is_empty());
    assert_eq!(o.expire(s(220), 6), vec!["busy".to_string()]);
    assert!(o.open.is_empty());
    // The session that ended was never closed by Tcc, and nothing is left to watch.
    assert_eq!(o.ledger()["ended"].state, SessionState::Terminated);
    assert!(o.expire(s(10_000), 7).is_empty());
    assert_eq!(o.check().anomalies.get("closed_by_tcc"), Some(&1));
}

#[test]
fn rar_and_asr_go_to_the_last_origin_host_through_its_connection() {
    let mut o = ocs_with(10_000);
    let t = Instant::now();
    answer(o.handle_request(t, 1, PeerId(7), &ccr("s1", 1, 0, "46701", &[mscc(10, None, true)])));
    let (rar, via) = o.rar("s1", &[10], &[], &[], &[]).unwrap();
    assert_eq!(via, PeerId(7));
    assert_eq!(rar.header.code, CommandCode::RE_AUTH);
    assert_eq!(rar.find(code::DESTINATION_HOST, 0).unwrap().as_utf8(), Ok("as1.test.localdomain"));
    assert_eq!(rar.find(code::RATING_GROUP, 0).unwrap().as_u32(), Ok(10));
    let dict = crate::dict::Dictionary::builtin();
    let back = Message::decode(rar.encode().unwrap()).unwrap();
    dict.validate(&back, &Default::default()).unwrap();
    let (asr, _) = o.asr("s1").unwrap();
    dict.validate(&Message::decode(asr.encode().unwrap()).unwrap(), &Default::default()).unwrap();
    assert_eq!(o.rar("nope", &[], &[], &[], &[]), Err(OcsError::UnknownSession("nope".into())));
    answer(o.handle_request(t, 2, P, &ccr("s1", 3, 1, "46701", &[])));
    assert_eq!(o.asr("s1"), Err(OcsError::NotOpen("s1".into())));
    o.record_server_answer(5, "s1", "RAR", Some(5002), Some("as1".into()));
    assert_eq!(o.check().anomalies.get("answer_rejected"), Some(&1));
}
