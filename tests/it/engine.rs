//! The credit-control engine end to end: the embedding API over the real base stack against the OCS simulator.

use std::net::SocketAddr;
use std::time::Duration;

use charging_ra::api::{
    App, AppSettings, ChargingError, Engine, EngineConfig, RatingGroupRequest, Subscriber, UsedUnits,
};
use charging_ra::cc::{CcEvent, CcState, Ccfh, FinalUnit, RequestedAction};
use charging_ra::codec::{AppId, VendorId};
use charging_ra::node::NodeConfig;
use charging_ra::ocs::OcsConfig;
use charging_ra::ocs::config::{RatingGroupConfig, SubscriberConfig};
use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
use charging_ra::peer::Application;
use charging_ra::units::Units;

use crate::ocs::{http, json};
use crate::stack::{OCS_REALM, client_config, open};

pub async fn sim(ocs: OcsConfig) -> OcsServer {
    let mut cfg = OcsServerConfig::new("127.0.0.1:0".parse().unwrap(), "ocs1.ocs.localdomain", OCS_REALM);
    cfg.control = Some("127.0.0.1:0".parse().unwrap());
    cfg.ocs = ocs;
    OcsServer::start(cfg).await.unwrap()
}

pub fn engine_config(host: &str, peers: &[(&str, SocketAddr, u32)], tx: Duration, ccfh: Ccfh) -> EngineConfig {
    let mut node: NodeConfig = client_config(host, peers, Duration::from_secs(1));
    node.router.local.applications =
        vec![Application::Auth(AppId::CREDIT_CONTROL), Application::VendorAuth(VendorId::TGPP, AppId::GX)];
    let mut ro = AppSettings::new(OCS_REALM);
    ro.tx = tx;
    ro.ccfh = ccfh;
    let mut gx = AppSettings::new(OCS_REALM);
    gx.tx = tx;
    EngineConfig::new(node, ro, gx)
}

async fn engine_for(sim: &OcsServer, tx: Duration, ccfh: Ccfh) -> Engine {
    let e = Engine::start(engine_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1)],
        tx,
        ccfh,
    ))
    .await
    .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while !e.node_status().await.is_some_and(|s| open(&s, 0)) {
        assert!(tokio::time::Instant::now() < end, "engine never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e
}

pub fn msisdn(n: &str) -> Option<Subscriber> {
    Some(Subscriber { kind: "msisdn".into(), data: n.into() })
}

pub fn rg(n: u32) -> RatingGroupRequest {
    RatingGroupRequest { rating_group: n, service_id: None, requested: Units::default() }
}

pub fn used(n: u32, secs: u64) -> UsedUnits {
    UsedUnits { rating_group: n, used: Units { time: Some(secs), ..Units::default() }, reporting_reason: Some(3) }
}

pub async fn check(sim: &OcsServer) -> serde_json::Value {
    let (_, body) = http(sim.control_addr().unwrap(), "GET", "/v1/ledger/check", None).await;
    json(&body)
}

/// A session opened the moment the engine has started, before its first CER/CEA: the CCR-I waits for the
/// connection and is answered, rather than failing with 3002 (and CCFH) for want of an open peer.
#[tokio::test]
async fn a_session_opened_before_the_first_cea_is_answered_once_the_peer_opens() {
    let sim = sim(OcsConfig::default()).await;
    let cfg = engine_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1)],
        Duration::from_secs(5),
        Ccfh::Terminate,
    );
    let e = Engine::start(cfg).await.unwrap();
    let o = e.open_session(App::Ro, msisdn("46700"), None, vec![rg(10)]).await.unwrap();
    assert_eq!((o.result_code, o.state), (Some(2001), CcState::Open));
    e.terminate(&o.session_id, vec![used(10, 1)]).await.unwrap();
    assert_eq!(check(&sim).await["clean"], true);
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn engine_runs_ro_and_gx_sessions_against_the_simulator() {
    let sim = sim(OcsConfig::default()).await;
    let e = engine_for(&sim, Duration::from_secs(5), Ccfh::Terminate).await;
    let o = e.open_session(App::Ro, msisdn("46701"), None, vec![rg(10), rg(20)]).await.unwrap();
    assert_eq!(o.result_code, Some(2001));
    assert_eq!(o.state, CcState::Open);
    assert_eq!(o.granted.len(), 2);
    assert!(o.session_id.starts_with("as1.test.localdomain;"), "RFC 6733 §8.8 Session-Id: {}", o.session_id);
    let sid = o.session_id.clone();
    for _ in 0..3 {
        let o = e.update(&sid, vec![used(10, 100), used(20, 50)], vec![], None).await.unwrap();
        assert_eq!(o.result_code, Some(2001));
    }
    // Money is reported as CC-Money (Unit-Value 1.50, Exponent -2).
    let money =
        UsedUnits { rating_group: 20, used: Units { money: Some(150), ..Units::default() }, reporting_reason: None };
    e.update(&sid, vec![money], vec![], None).await.unwrap();
    let view = e.session(&sid).await.unwrap();
    assert_eq!((view.cc_request_number, view.owner.as_str()), (5, "as1.test.localdomain"));
    let o = e.terminate(&sid, vec![used(10, 20)]).await.unwrap();
    assert_eq!(o.state, CcState::Idle);
    assert!(e.session(&sid).await.is_none(), "ended sessions are forgotten");
    // Gx: the policy comes back with the answer.
    let g = e
        .open_session(App::Gx, Some(Subscriber { kind: "imsi".into(), data: "240011".into() }), None, vec![])
        .await
        .unwrap();
    let policy = g.policy.clone().expect("Gx CCA-I carries policy");
    assert!(policy.rules_installed.contains(&"video-zero-rated".to_string()), "{policy:?}");
    assert!(!policy.event_triggers.is_empty());
    e.terminate(&g.session_id, vec![]).await.unwrap();
    let c = check(&sim).await;
    assert_eq!(c["clean"], true, "{c}");
    assert_eq!(c["sessions"]["terminated"], 2);
    assert_eq!(c["units"]["reported_used"]["time"], 470);
    assert_eq!(c["units"]["reported_used"]["money"], 150);
    // Bad input is refused clearly.
    assert!(matches!(e.update("nope", vec![], vec![], None).await, Err(ChargingError::UnknownSession(_))));
    let bad =
        e.open_session(App::Ro, Some(Subscriber { kind: "fax".into(), data: "1".into() }), None, vec![rg(1)]).await;
    assert!(matches!(bad, Err(ChargingError::Invalid(_))), "{bad:?}");
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn engine_answers_rar_with_a_ccr_u_and_asr_with_a_ccr_t() {
    let sim = sim(OcsConfig::default()).await;
    let e = engine_for(&sim, Duration::from_secs(5), Ccfh::Terminate).await;
    let mut events = e.events().await.unwrap();
    let sid = e.open_session(App::Ro, msisdn("46702"), None, vec![rg(10)]).await.unwrap().session_id;
    let ctl = sim.control_addr().unwrap();
    let (_, body) =
        http(ctl, "POST", "/v1/rar", Some(&format!(r#"{{"session_id": "{sid}", "rating_groups": [10]}}"#))).await;
    assert_eq!(json(&body)["result_code"], 2001, "{body}");
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    assert_eq!((ev.session_id.as_str(), ev.event), (sid.as_str(), CcEvent::ReAuthRequested));
    // The CCR-U the RAR asked for reaches the simulator.
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, body) = http(ctl, "GET", &format!("/v1/ledger/{}", sid.replace(';', "%3B")), None).await;
        if json(&body)["requests"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "no CCR-U after the RAR: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = http(ctl, "POST", "/v1/asr", Some(&format!(r#"{{"session_id": "{sid}"}}"#))).await;
    assert_eq!(json(&body)["result_code"], 2001);
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while e.session(&sid).await.is_some() {
        assert!(tokio::time::Instant::now() < end, "the session did not end after ASR");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = check(&sim).await;
    assert_eq!(c["clean"], true, "{c}");
    assert_eq!(c["sessions"]["terminated"], 1);
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn engine_applies_ccfh_when_the_ocs_does_not_answer() {
    // The simulator sends no CCFH, so the client's own applies.
    let mut ocs = OcsConfig::default();
    ocs.ro.ccfh = None;
    let sim = sim(ocs).await;
    let ctl = sim.control_addr().unwrap();
    // Every CCR-U numbered 1 is lost.
    let (st, _) =
        http(ctl, "POST", "/v1/faults", Some(r#"{"request_number": 1, "request_type": "update", "action": "drop"}"#))
            .await;
    assert_eq!(st, 201);
    let tx = Duration::from_millis(400);
    // CCFH CONTINUE: the call returns when Tx expires, the service goes on.
    let e = engine_for(&sim, tx, Ccfh::Continue).await;
    let sid = e.open_session(App::Ro, msisdn("46703"), None, vec![rg(10)]).await.unwrap().session_id;
    let o = e.update(&sid, vec![used(10, 10)], vec![], None).await.unwrap();
    assert!(o.ccfh.is_some(), "{o:?}");
    e.stop().await;
    // CCFH TERMINATE: the call fails and the session ends.
    let e = engine_for(&sim, tx, Ccfh::Terminate).await;
    let sid = e.open_session(App::Ro, msisdn("46704"), None, vec![rg(10)]).await.unwrap().session_id;
    let r = e.update(&sid, vec![used(10, 10)], vec![], None).await;
    assert!(matches!(r, Err(ChargingError::Refused { .. })), "{r:?}");
    assert!(e.session(&sid).await.is_none());
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn engine_reports_final_units_and_credit_limit() {
    let mut ocs = OcsConfig::default();
    ocs.subscribers
        .push(SubscriberConfig { id: "46705".into(), balance: Units { time: Some(90), ..Units::default() } });
    ocs.ro.rating_groups.push(RatingGroupConfig {
        rating_group: 10,
        grant: Units { time: Some(60), ..Units::default() },
        ..RatingGroupConfig::default()
    });
    let sim = sim(ocs).await;
    let e = engine_for(&sim, Duration::from_secs(5), Ccfh::Terminate).await;
    let o = e.open_session(App::Ro, msisdn("46705"), None, vec![rg(10)]).await.unwrap();
    assert_eq!(o.granted[0].granted.time, Some(60));
    let o = e.update(&o.session_id, vec![used(10, 60)], vec![], None).await.unwrap();
    assert_eq!(o.granted[0].granted.time, Some(30));
    assert_eq!(o.granted[0].final_unit, Some(FinalUnit::Terminate));
    let o = e.update(&o.session_id, vec![used(10, 30)], vec![], None).await.unwrap();
    assert_eq!(o.granted[0].result_code, 4012, "{o:?}");
    e.terminate(&o.session_id, vec![]).await.unwrap();
    assert_eq!(check(&sim).await["clean"], true);
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn engine_event_charging_and_idempotent_updates() {
    let sim = sim(OcsConfig::default()).await;
    let e = engine_for(&sim, Duration::from_secs(5), Ccfh::Terminate).await;
    let o = e
        .event(
            msisdn("46706"),
            Some("32274@3gpp.org".into()),
            RequestedAction::DirectDebiting,
            Units { units: Some(1), ..Units::default() },
            Some(2),
        )
        .await
        .unwrap();
    assert_eq!(o.result_code, Some(2001));
    assert_eq!(o.event.as_ref().and_then(|v| v.granted).and_then(|g| g.units), Some(1));
    let o = e
        .event(msisdn("46706"), None, RequestedAction::CheckBalance, Units { units: Some(1), ..Units::default() }, None)
        .await
        .unwrap();
    assert_eq!(o.event.unwrap().check_balance_result, Some(0));
    // The same idempotency key twice: one CCR-U, the same outcome.
    let sid = e.open_session(App::Ro, msisdn("46707"), None, vec![rg(10)]).await.unwrap().session_id;
    let a = e.update(&sid, vec![used(10, 7)], vec![], Some("k-1".into())).await.unwrap();
    let b = e.update(&sid, vec![used(10, 7)], vec![], Some("k-1".into())).await.unwrap();
    assert_eq!(a, b);
    let (_, body) =
        http(sim.control_addr().unwrap(), "GET", &format!("/v1/ledger/{}", sid.replace(';', "%3B")), None).await;
    assert_eq!(json(&body)["requests"].as_array().unwrap().len(), 2, "CCR-I and one CCR-U: {body}");
    e.terminate(&sid, vec![]).await.unwrap();
    let c = check(&sim).await;
    assert_eq!(c["clean"], true, "{c}");
    assert_eq!(c["units"]["reported_used"]["time"], 7);
    e.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_refuses_to_measure_an_ocs_that_never_opens() {
    // A listener that takes the connection and never answers the CER (as a wrong port or a stuck server does): the
    // run refuses, with the address, instead of measuring instant failures.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    use charging_ra::load::LoadConfig;
    let cfg = LoadConfig { open_timeout: Duration::from_millis(400), ..LoadConfig::embedded(addr, 10, 1) };
    let started = std::time::Instant::now();
    match charging_ra::load::run(cfg).await {
        Err(e @ charging_ra::load::LoadError::PeerNotOpen(a, _)) => {
            assert_eq!(a, addr);
            assert!(e.to_string().contains(&addr.to_string()), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(r) => panic!("measured {} transactions against a server that never opened", r.transactions),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_driver_runs_sessions_and_prints_throughput_last() {
    use charging_ra::load::{LoadConfig, Target};
    let sim = sim(OcsConfig::default()).await;
    // Without replication, then with every session replicated to a memory store: the same sessions, the same
    // clean ledger, and the store writes counted.
    for (round, replication) in [None, Some(charging_ra::store::AnyStore::memory())].into_iter().enumerate() {
        let replicated = replication.is_some();
        let cfg = charging_ra::load::LoadConfig {
            target: Target::Embedded {
                ocs: sim.diameter_addr(),
                realm: OCS_REALM.into(),
                replication: replication.clone(),
                state_encoding: Default::default(),
                batches_in_flight: 1,
            },
            concurrency: 20,
            ..LoadConfig::embedded(sim.diameter_addr(), 300, 2)
        };
        let report = charging_ra::load::run(cfg).await.unwrap();
        assert_eq!(report.sessions, 300);
        assert_eq!(report.transactions, 1200);
        assert_eq!(report.results.get(&2001), Some(&1200));
        let summary = report.summary();
        assert!(summary.trim_end().lines().last().unwrap().starts_with("throughput: "), "{summary}");
        let c = check(&sim).await;
        assert_eq!(c["clean"], true, "{c}");
        assert_eq!(c["sessions"]["terminated"], 300 * (round as u64 + 1));
        if let Some(store) = replication {
            // Per session: the 3 records at creation with the CCR-I's write-ahead, one write ahead of each later
            // CCR (the write-behind of the answers is coalesced into them), 3 deletions at the end, and the timer
            // hint for survivors written once and deleted once: each CCR moves the session's deadline later, and
            // an earlier hint is not rewritten (11; it was 14 when every move rewrote it, 15 without coalescing).
            // An answer is written behind on its own when the next CCR comes more than write_delay (100 ms) after
            // it, which happens when the machine stalls under the rest of the suite: up to one more per session.
            let (writes, batches) = report.store.unwrap();
            assert!((300 * 11..=300 * 13).contains(&writes), "{summary}");
            assert!(batches < writes, "group commit: {summary}");
            assert!(summary.contains("per session"), "{summary}");
            use charging_ra::store::Store;
            assert!(store.scan_prefix("load/").await.unwrap().iter().all(|(k, _)| k.starts_with("load/node/")));
        }
        assert_eq!(report.store.is_some(), replicated);
    }
    // Paced: 300 transactions at 1,000/s take at least 0.3 s, whatever the concurrency could do. The latency log
    // has one line per transaction, in the order they were due: the k-th due k ms after the start.
    let log = std::env::temp_dir().join(format!("charging-ra-latency-{}.log", std::process::id()));
    let cfg = LoadConfig {
        target: Target::Embedded {
            ocs: sim.diameter_addr(),
            realm: OCS_REALM.into(),
            replication: None,
            state_encoding: Default::default(),
            batches_in_flight: 1,
        },
        concurrency: 20,
        rate: Some(1000.0),
        latency_log: Some(log.clone()),
        ..LoadConfig::embedded(sim.diameter_addr(), 100, 1)
    };
    let report = charging_ra::load::run(cfg).await.unwrap();
    assert_eq!(report.transactions, 300);
    assert!(report.elapsed >= Duration::from_millis(298), "{:?}", report.elapsed);
    assert!(report.throughput() <= 1010.0, "{}", report.summary());
    let lines: Vec<(u64, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap())
        .collect();
    std::fs::remove_file(&log).unwrap();
    assert_eq!(lines.len(), 300);
    for (k, (due, _)) in lines.iter().enumerate() {
        assert!(due.abs_diff(k as u64 * 1000) <= 1, "transaction {k} due at {due} us");
    }
    assert_eq!(lines.iter().map(|l| l.1).max(), Some(report.latency_us[3]));
    // A log that cannot be written, and a rate that is not one, are refused before the run: nothing reaches the
    // simulator.
    let opened = check(&sim).await["sessions"]["opened"].clone();
    let cfg = LoadConfig {
        latency_log: Some(std::env::temp_dir().join("no-such-dir-charging-ra").join("x.log")),
        ..LoadConfig::embedded(sim.diameter_addr(), 1, 0)
    };
    assert!(matches!(charging_ra::load::run(cfg).await, Err(charging_ra::load::LoadError::LatencyLog(..))));
    for rate in [0.0, 1e-30, -1.0, f64::NAN, f64::INFINITY, 1e9] {
        let cfg = LoadConfig { rate: Some(rate), ..LoadConfig::embedded(sim.diameter_addr(), 1, 0) };
        assert!(matches!(charging_ra::load::run(cfg).await, Err(charging_ra::load::LoadError::Rate(_))), "{rate}");
    }
    assert_eq!(check(&sim).await["sessions"]["opened"], opened);
    sim.stop().await;
}
