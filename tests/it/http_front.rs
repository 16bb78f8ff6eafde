//! The HTTP JSON front of the engine, against the simulator.

use std::net::SocketAddr;
use std::time::Duration;

use charging_ra::api::Engine;
use charging_ra::api::http::serve;
use charging_ra::cc::Ccfh;
use charging_ra::ocs::OcsConfig;
use charging_ra::ocs::server::OcsServer;

use crate::engine::{engine_config, sim};
use crate::ocs::{http, http_with_headers, json};
use crate::stack::open;

/// An engine on the simulator, configured by `f`, once its peer is open.
async fn connected_engine(sim: &OcsServer, f: impl FnOnce(&mut charging_ra::api::EngineConfig)) -> Engine {
    let mut cfg = engine_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1)],
        Duration::from_secs(5),
        Ccfh::Terminate,
    );
    f(&mut cfg);
    let e = Engine::start(cfg).await.unwrap();
    while !e.node_status().await.is_some_and(|s| open(&s, 0)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e
}

/// The simulator, an engine connected to it, and the HTTP front on that engine (its address).
async fn front() -> (OcsServer, Engine, SocketAddr) {
    let sim = sim(OcsConfig::default()).await;
    let e = connected_engine(&sim, |cfg| {
        // Ro replicates only when asked (`replicate` in the body, or POST …/replicate).
        let store = charging_ra::store::AnyStore::memory();
        cfg.replication =
            Some(charging_ra::api::ReplicationConfig::new(store, "c1", "n1", "aaa://as1.test.localdomain:3868"));
        cfg.ro.replicate_by_default = false;
    })
    .await;
    // The server task ends with the test's runtime.
    let (addr, _task) = serve(e.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, e, addr)
}

#[tokio::test]
async fn http_front_runs_a_session_and_explains_errors() {
    let (sim, e, addr) = front().await;
    assert_eq!(http(addr, "GET", "/healthz", None).await.0, 200);
    let (st, body) = http(
        addr,
        "POST",
        "/v1/sessions",
        Some(
            r#"{"app": "ro", "subscriber": {"type": "msisdn", "data": "46701"}, "service_context": "32251@3gpp.org",
                 "rating_groups": [{"rating_group": 10, "requested": {"total_octets": 1000000}}]}"#,
        ),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let o = json(&body);
    assert_eq!(o["result_code"], 2001);
    assert_eq!(o["node"], "as1.test.localdomain");
    assert_eq!(o["granted"][0]["rating_group"], 10);
    assert_eq!(o["granted"][0]["granted"]["total_octets"], 10_000_000);
    assert_eq!(o["convergence"].as_str().unwrap().len(), 36, "a UUID");
    let sid = o["session_id"].as_str().unwrap().to_string();
    let path = format!("/v1/sessions/{}", sid.replace(';', "%3B"));
    let (st, body) = http(
        addr,
        "POST",
        &format!("{path}/updates"),
        Some(r#"{"used": [{"rating_group": 10, "used": {"total_octets": 400}}], "idempotency_key": "u1"}"#),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = http(addr, "GET", &path, None).await;
    assert_eq!(st, 200);
    let v = json(&body);
    assert_eq!((v["state"].as_str(), v["cc_request_number"].as_u64()), (Some("Open"), Some(2)));
    assert_eq!(http(addr, "POST", &format!("{path}/replicate"), None).await.0, 204);
    // Under the convergence name the session was given when it was opened.
    assert_eq!(e.session(&sid).await.unwrap().convergence.as_deref(), o["convergence"].as_str());
    let (st, body) = http(addr, "POST", "/v1/sessions/nope/replicate", None).await;
    assert_eq!(st, 404, "{body}");
    let (st, body) =
        http(addr, "DELETE", &path, Some(r#"{"used": [{"rating_group": 10, "used": {"total_octets": 100}}]}"#)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["state"], "Idle");
    // Event charging.
    let (st, body) = http(addr, "POST", "/v1/events", Some(r#"{"subscriber": {"type": "msisdn", "data": "46701"}, "requested_action": "price_enquiry", "requested": {"units": 3}}"#)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["event"]["cost"], 30);
    // Errors: 404 unknown session, 400 bad JSON / unknown field / no rating group, 404 unknown route, 405 wrong
    // method, 413 too big: each with a reason in JSON.
    let (st, body) = http(addr, "GET", "/v1/sessions/nope", None).await;
    assert_eq!(st, 404);
    assert!(json(&body)["error"].as_str().unwrap().contains("nope"));
    assert_eq!(http(addr, "POST", "/v1/sessions", Some("{not json")).await.0, 400);
    let (st, body) = http(
        addr,
        "POST",
        "/v1/sessions",
        Some(r#"{"app": "ro", "rating_groups": [{"rating_group": 1}], "colour": "red"}"#),
    )
    .await;
    assert_eq!(st, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("colour"), "{body}");
    assert_eq!(http(addr, "POST", "/v1/sessions", Some(r#"{"app": "ro"}"#)).await.0, 400);
    assert_eq!(http(addr, "GET", "/v2/whatever", None).await.0, 404);
    let (st, body) = http(addr, "PUT", "/v1/sessions", Some("{}")).await;
    assert_eq!(st, 405, "wrong method");
    assert!(json(&body)["error"].as_str().unwrap().contains("PUT is not allowed on /v1/sessions"), "{body}");
    let big = format!(r#"{{"app": "ro", "service_context": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(http(addr, "POST", "/v1/sessions", Some(&big)).await.0, 413);
    let c = json(&http(sim.control_addr().unwrap(), "GET", "/v1/ledger/check", None).await.1);
    assert_eq!(c["clean"], true, "{c}");
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn http_front_carries_gx_reports_and_ro_service_information_by_avp_name() {
    let (sim, e, addr) = front().await;
    // Gx: Supported-Features and QoS at CCR-I; an Event-Trigger and a rule failure reported in CCR-U.
    let (st, body) = http(addr, "POST", "/v1/sessions", Some(r#"{"app": "gx", "subscriber": {"type": "imsi", "data": "240011"},
        "avps": [{"name": "Supported-Features", "value": [{"name": "Vendor-Id", "value": 10415}, {"name": "Feature-List-ID", "value": 1}, {"name": "Feature-List", "value": 3}]},
                 {"name": "IP-CAN-Type", "value": "3GPP-EPS"}, {"name": "RAT-Type", "value": "EUTRAN"}]}"#)).await;
    assert_eq!(st, 201, "{body}");
    let o = json(&body);
    assert!(o["rules"].as_array().unwrap().iter().any(|r| r == "video-zero-rated"), "{o}");
    let sid = o["session_id"].as_str().unwrap().to_string();
    let path = format!("/v1/sessions/{}", sid.replace(';', "%3B"));
    let (st, body) = http(addr, "POST", &format!("{path}/updates"), Some(r#"{"avps": [{"name": "Event-Trigger", "value": "RAT_CHANGE"},
        {"name": "Charging-Rule-Report", "value": [{"name": "Charging-Rule-Name", "value": "video-zero-rated"}, {"name": "PCC-Rule-Status", "value": "INACTIVE"}, {"name": "Rule-Failure-Code", "value": "RESOURCE_ALLOCATION_FAILURE"}]}]}"#)).await;
    assert_eq!(st, 200, "{body}");
    let (_, ledger) =
        http(sim.control_addr().unwrap(), "GET", &format!("/v1/ledger/{}", sid.replace(';', "%3B")), None).await;
    let l = json(&ledger);
    assert_eq!(l["gx"]["event_triggers_reported"], serde_json::json!([2]), "{l}");
    assert_eq!(l["gx"]["rule_failures"][0][0], "video-zero-rated");
    assert_eq!(http(addr, "DELETE", &path, None).await.0, 200);
    // Ro: IMS Service-Information in the CCR-I, validated by the simulator's dictionary.
    let (st, body) = http(addr, "POST", "/v1/sessions", Some(r#"{"app": "ro", "subscriber": {"type": "sip_uri", "data": "sip:alice@ims.example.net"},
        "rating_groups": [{"rating_group": 100}],
        "avps": [{"name": "Service-Information", "value": [{"name": "IMS-Information", "value": [
            {"name": "Event-Type", "value": [{"name": "SIP-Method", "value": "INVITE"}]},
            {"name": "Role-Of-Node", "value": "ORIGINATING_ROLE"}, {"name": "Node-Functionality", "value": "AS"},
            {"name": "Calling-Party-Address", "value": "sip:alice@ims.example.net"}, {"name": "Called-Party-Address", "value": "tel:+46700000000"}]}]}]}"#)).await;
    assert_eq!(st, 201, "{body}");
    let sid = json(&body)["session_id"].as_str().unwrap().replace(';', "%3B");
    assert_eq!(http(addr, "DELETE", &format!("/v1/sessions/{sid}"), None).await.0, 200);
    // An AVP the dictionary does not know, or a value of the wrong kind: 400 naming it.
    let (st, body) =
        http(addr, "POST", "/v1/sessions", Some(r#"{"app": "gx", "avps": [{"name": "Flux-Capacitor", "value": 1}]}"#))
            .await;
    assert_eq!(st, 400);
    assert!(body.contains("Flux-Capacitor"), "{body}");
    let (st, body) = http(
        addr,
        "POST",
        "/v1/sessions",
        Some(r#"{"app": "gx", "avps": [{"name": "Event-Trigger", "value": "NO_SUCH_TRIGGER"}]}"#),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    let c = json(&http(sim.control_addr().unwrap(), "GET", "/v1/ledger/check", None).await.1);
    assert_eq!(c["clean"], true, "{c}");
    e.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn http_front_with_a_token_and_max_sessions_refuses_clearly() {
    let sim = sim(OcsConfig::default()).await;
    let e = connected_engine(&sim, |cfg| cfg.max_sessions = 2).await;
    let token = "s3cret-token-0123456789";
    let app = charging_ra::api::http::with_bearer_token(charging_ra::api::http::router(e.clone()), Some(token.into()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, _task) = charging_ra::api::http::serve_router(app, listener).unwrap();
    let open_body = r#"{"app": "ro", "subscriber": {"type": "msisdn", "data": "46701"}, "rating_groups": [{"rating_group": 10, "requested": {}}]}"#;
    let auth = format!("Authorization: Bearer {token}\r\n");

    // Health needs no token; everything else does, and says so.
    assert_eq!(http_with_headers(addr, "GET", "/healthz", "", "").await.0, 200);
    let (st, head, body) = http_with_headers(addr, "POST", "/v1/sessions", open_body, "").await;
    assert_eq!(st, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(json(&body)["error"].as_str().unwrap().contains("http_token"), "{body}");
    let (st, _, body) =
        http_with_headers(addr, "GET", "/metrics", "", "Authorization: Bearer wrong-token-000000000\r\n").await;
    assert_eq!((st, json(&body)["error"].as_str().unwrap()), (401, "wrong bearer token"));

    // With it: two sessions, then 503 with the reason, counted; one ended, room again.
    let mut sids = Vec::new();
    for _ in 0..2 {
        let (st, _, body) = http_with_headers(addr, "POST", "/v1/sessions", open_body, &auth).await;
        assert_eq!(st, 201, "{body}");
        sids.push(json(&body)["session_id"].as_str().unwrap().to_string());
    }
    let (st, _, body) = http_with_headers(addr, "POST", "/v1/sessions", open_body, &auth).await;
    assert_eq!(st, 503, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("maximum of 2 sessions"), "{body}");
    let (st, _, metrics) = http_with_headers(addr, "GET", "/metrics", "", &auth).await;
    assert_eq!(st, 200);
    assert!(metrics.contains("charging_ra_sessions_refused_total 1"), "{metrics}");
    let path = format!("/v1/sessions/{}", charging_ra::api::http::path_segment(&sids[0]));
    assert_eq!(http_with_headers(addr, "DELETE", &path, "", &auth).await.0, 200);
    assert_eq!(http_with_headers(addr, "POST", "/v1/sessions", open_body, &auth).await.0, 201);
    // The Rust API says the same.
    let rg = charging_ra::api::RatingGroupRequest {
        rating_group: 10,
        service_id: None,
        requested: charging_ra::units::Units::default(),
    };
    let err = e.open_session(charging_ra::api::App::Ro, None, None, vec![rg]).await.unwrap_err();
    assert!(matches!(err, charging_ra::api::ChargingError::Overloaded(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_drives_a_cluster_through_its_fronts_and_moves_on_from_a_dead_node() {
    use charging_ra::load::{LoadConfig, Target};
    let sim = sim(OcsConfig::default()).await;
    let store = charging_ra::store::AnyStore::memory();
    let mut nodes = Vec::new();
    // A front that is not there: the sessions it would get go to the next node.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut fronts = vec![dead];
    for i in 1..=2 {
        let (e, addr) = clustered_front(&sim, &store, i).await;
        fronts.push(addr);
        nodes.push(e);
    }
    let cfg = LoadConfig {
        target: Target::Fronts { nodes: fronts, token: None },
        concurrency: 6,
        ..LoadConfig::embedded(sim.diameter_addr(), 60, 2)
    };
    let report = charging_ra::load::run(cfg).await.unwrap();
    let summary = report.summary();
    assert_eq!(report.sessions, 60, "{summary}");
    assert_eq!(report.results.get(&2001), Some(&240), "{summary}");
    assert!(report.http_errors.is_empty(), "{summary}");
    // The records both nodes wrote, read from their /v1/status before and after.
    let (writes, _) = report.store.expect("the nodes' replication counters");
    assert!(writes >= 60 * 11, "{summary}");
    for e in &nodes {
        let s = e.replication_stats().await.unwrap();
        assert!(s.writes > 0 && s.writes < writes, "each node carried a share: {s:?}");
    }
    let c = crate::engine::check(&sim).await;
    assert_eq!(c["clean"], true, "{c}");
    assert_eq!(c["sessions"]["terminated"], 60);
    for e in nodes {
        e.stop().await;
    }
    sim.stop().await;
}

/// Node `i` of cluster c1 on `store`, connected to the simulator, and its HTTP front (served until the test's
/// runtime ends).
async fn clustered_front(sim: &OcsServer, store: &charging_ra::store::AnyStore, i: usize) -> (Engine, SocketAddr) {
    let host = format!("as{i}.test.localdomain");
    let mut cfg = engine_config(
        &host,
        &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1)],
        Duration::from_secs(5),
        Ccfh::Terminate,
    );
    let (id, uri) = (format!("n{i}"), format!("aaa://{host}:3868"));
    cfg.replication = Some(charging_ra::api::ReplicationConfig::new(store.clone(), "c1", &id, &uri));
    let e = Engine::start(cfg).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while !e.node_status().await.is_some_and(|s| open(&s, 0)) {
        assert!(tokio::time::Instant::now() < end, "{host} never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (addr, _task) = serve(e.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (e, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_fronts_does_not_retry_a_refusal() {
    use charging_ra::load::{LoadConfig, Target};
    use charging_ra::ocs::config::{FaultAction, FaultRule};
    // The OCS refuses every update with 4012: an answer, which the load counts and does not try again (a retry
    // is for a node that died, answered 502 or 503, or did not answer at all).
    let ocs = OcsConfig {
        faults: vec![FaultRule {
            command: Some("CCR".into()),
            request_type: Some("update".into()),
            ..FaultRule::always(FaultAction::ResultCode(4012))
        }],
        ..OcsConfig::default()
    };
    let sim = sim(ocs).await;
    let store = charging_ra::store::AnyStore::memory();
    let (e, front) = clustered_front(&sim, &store, 1).await;
    let cfg = LoadConfig {
        target: Target::Fronts { nodes: vec![front], token: None },
        concurrency: 5,
        ..LoadConfig::embedded(sim.diameter_addr(), 10, 2)
    };
    let report = charging_ra::load::run(cfg).await.unwrap();
    let summary = report.summary();
    assert_eq!(report.results.get(&2001), Some(&10), "{summary}");
    assert_eq!(report.results.get(&4012), Some(&10), "one refused update per session, then it ends: {summary}");
    assert!(report.elapsed < Duration::from_secs(2), "refusals were retried: {summary}");
    e.stop().await;
    sim.stop().await;
}
