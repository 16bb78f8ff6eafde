//! The HTTP JSON front of the engine, against the simulator.

use std::time::Duration;

use charging_ra::api::Engine;
use charging_ra::api::http::serve;
use charging_ra::cc::Ccfh;
use charging_ra::ocs::OcsConfig;

use crate::engine::{engine_config, sim};
use crate::ocs::{http, json};
use crate::stack::open;

#[tokio::test]
async fn http_front_runs_a_session_and_explains_errors() {
    let sim = sim(OcsConfig::default()).await;
    let e = Engine::start(engine_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1)],
        Duration::from_secs(5),
        Ccfh::Terminate,
    ))
    .await
    .unwrap();
    while !e.node_status().await.is_some_and(|s| open(&s, 0)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (addr, _task) = serve(e.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
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
    let (st, body) =
        http(addr, "DELETE", &path, Some(r#"{"used": [{"rating_group": 10, "used": {"total_octets": 100}}]}"#)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["state"], "Idle");
    // Event charging.
    let (st, body) = http(addr, "POST", "/v1/events", Some(r#"{"subscriber": {"type": "msisdn", "data": "46701"}, "requested_action": "price_enquiry", "requested": {"units": 3}}"#)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["event"]["cost"], 30);
    // Errors: 404 unknown session, 400 bad JSON / unknown field / no rating group, 404 unknown route, 413 too big.
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
    let big = format!(r#"{{"app": "ro", "service_context": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(http(addr, "POST", "/v1/sessions", Some(&big)).await.0, 413);
    let c = json(&http(sim.control_addr().unwrap(), "GET", "/v1/ledger/check", None).await.1);
    assert_eq!(c["clean"], true, "{c}");
    e.stop().await;
    sim.stop().await;
}
