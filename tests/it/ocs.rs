//! The OCS/PCRF simulator through the real base stack: our client node talks Diameter to it, the test drives
//! and reads its HTTP control API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use charging_ra::codec::{AppId, Avp, Message, ResultCode, VendorId, code};
use charging_ra::node::{DiameterNode, IncomingRequest, RequestError};
use charging_ra::ocs::OcsConfig;
use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
use charging_ra::peer::{Application, DisconnectCause};

use crate::stack::{client_config, open, wait_for};

/// A minimal HTTP/1.1 client: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = http_with_headers(addr, method, path, body.unwrap_or(""), "").await;
    (status, body)
}

/// One exchange with extra request header lines (each ending in CRLF): the status, the head (lowercased) and the
/// body.
pub async fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
    (status, head.to_ascii_lowercase(), body.to_string())
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub struct Rig {
    pub sim: OcsServer,
    pub client: DiameterNode,
    pub control: SocketAddr,
    /// Every message the client received from the simulator (answers and server requests).
    pub received: Arc<Mutex<Vec<Message>>>,
}

pub const HOST: &str = "as1.test.localdomain";

/// The simulator and one client node connected to it; the client answers RAR/ASR with `raa_code`.
pub async fn rig(ocs: OcsConfig, raa_code: u32) -> Rig {
    let mut cfg = OcsServerConfig::new("127.0.0.1:0".parse().unwrap(), "ocs1.ocs.localdomain", "ocs.localdomain");
    cfg.control = Some("127.0.0.1:0".parse().unwrap());
    cfg.ocs = ocs;
    let sim = OcsServer::start(cfg).await.unwrap();
    // Tw 1 s: after a connection loss REOPEN needs three DWAs, which should not take long in a test.
    let mut ccfg = client_config(HOST, &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1)], Duration::from_secs(1));
    ccfg.router.local.applications =
        vec![Application::Auth(AppId::CREDIT_CONTROL), Application::VendorAuth(VendorId::TGPP, AppId::GX)];
    let (client, rx) = DiameterNode::start(ccfg).await.unwrap();
    wait_for(&client, Duration::from_secs(5), "client open with the simulator", |s| open(s, 0)).await;
    let received = Arc::new(Mutex::new(Vec::new()));
    answer_server_requests(rx, raa_code, received.clone());
    let control = sim.control_addr().unwrap();
    Rig { sim, client, control, received }
}

fn answer_server_requests(mut rx: mpsc::Receiver<IncomingRequest>, rc: u32, received: Arc<Mutex<Vec<Message>>>) {
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            received.lock().unwrap().push(req.request.clone());
            let mut a = Message::answer_to(&req.request);
            a.push(Avp::u32(code::RESULT_CODE, rc));
            a.push(Avp::utf8(code::ORIGIN_HOST, HOST));
            a.push(Avp::utf8(code::ORIGIN_REALM, crate::stack::CLIENT_REALM));
            req.answer(a);
        }
    });
}

pub fn ccr(sid: &str, rtype: i32, number: u32, app: AppId, mscc: Option<(u32, Option<u32>, bool)>) -> Message {
    let mut m = crate::stack::ccr(sid, HOST, number);
    m.header.application_id = app;
    m.avps.retain(|a| !a.is(code::CC_REQUEST_TYPE, 0) && !a.is(code::AUTH_APPLICATION_ID, 0));
    m.push(Avp::u32(code::AUTH_APPLICATION_ID, app.0));
    m.push(Avp::i32(code::CC_REQUEST_TYPE, rtype));
    m.push(Avp::grouped(
        code::SUBSCRIPTION_ID,
        &[Avp::i32(code::SUBSCRIPTION_ID_TYPE, 0), Avp::utf8(code::SUBSCRIPTION_ID_DATA, "46701234567")],
    ));
    if let Some((rg, used, request)) = mscc {
        let mut v = Vec::new();
        if request {
            v.push(Avp::grouped(code::REQUESTED_SERVICE_UNIT, &[]));
        }
        if let Some(t) = used {
            v.push(Avp::grouped(code::USED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, t)]));
        }
        v.push(Avp::u32(code::RATING_GROUP, rg));
        m.push(Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &v));
    }
    m
}

impl Rig {
    pub async fn send(&self, m: Message) -> Result<Message, RequestError> {
        let r = self.client.request(m, Some(Duration::from_secs(3))).await;
        if let Ok(a) = &r {
            self.received.lock().unwrap().push(a.clone());
        }
        r
    }

    pub async fn check(&self) -> serde_json::Value {
        let (st, body) = http(self.control, "GET", "/v1/ledger/check", None).await;
        assert_eq!(st, 200, "{body}");
        json(&body)
    }

    pub async fn stop(self) {
        self.client.stop(DisconnectCause::Rebooting).await;
        self.sim.stop().await;
    }
}

#[tokio::test]
async fn ocs_sim_serves_full_ro_and_gx_sessions() {
    let r = rig(OcsConfig::default(), 2001).await;
    let (s, b) = http(r.control, "GET", "/healthz", None).await;
    assert_eq!((s, b.trim()), (200, "ok"));
    let a = r.send(ccr("as1;ro;1", 1, 0, AppId::CREDIT_CONTROL, Some((10, None, true)))).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    assert!(a.find(code::MULTIPLE_SERVICES_CREDIT_CONTROL, 0).is_some());
    for n in 1..=3 {
        let a = r.send(ccr("as1;ro;1", 2, n, AppId::CREDIT_CONTROL, Some((10, Some(60), true)))).await.unwrap();
        assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    }
    r.send(ccr("as1;ro;1", 3, 4, AppId::CREDIT_CONTROL, Some((10, Some(30), false)))).await.unwrap();
    let a = r.send(ccr("as1;gx;1", 1, 0, AppId::GX, None)).await.unwrap();
    assert!(a.find(1001, 10415).is_some(), "Gx CCA-I installs rules");
    r.send(ccr("as1;gx;1", 3, 1, AppId::GX, None)).await.unwrap();
    let c = r.check().await;
    assert_eq!(c["clean"], true, "{c}");
    assert_eq!(c["sessions"]["opened"], 2);
    assert_eq!(c["sessions"]["terminated"], 2);
    assert_eq!(c["units"]["reported_used"]["time"], 210);
    let (st, body) = http(r.control, "GET", "/v1/ledger/as1%3Bro%3B1", None).await;
    assert_eq!(st, 200, "{body}");
    let s = json(&body);
    assert_eq!(s["requests"].as_array().unwrap().len(), 5);
    assert_eq!(s["requests"][4]["origin_host"], HOST);
    assert_eq!(http(r.control, "GET", "/v1/ledger/nope", None).await.0, 404);
    let (_, metrics) = http(r.control, "GET", "/metrics", None).await;
    assert!(
        metrics.contains(r#"ocs_requests_total{command="CCR",request_type="update",result_code="2001"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains("ocs_request_processing_seconds_count 7"), "{metrics}");
    // Everything the simulator sent decodes clean in tshark.
    let sent: Vec<bytes::Bytes> = r.received.lock().unwrap().iter().map(|m| m.encode().unwrap()).collect();
    if let Some((expert, _)) = crate::wire::tshark_check("ocs_answers", &sent) {
        let bad = crate::wire::unexpected_expert_lines(&expert);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
    assert_eq!(http(r.control, "POST", "/v1/reset", None).await.0, 204);
    assert_eq!(r.check().await["sessions"]["opened"], 0);
    r.stop().await;
}

#[tokio::test]
async fn ocs_sim_rar_and_asr_round_trips() {
    let r = rig(OcsConfig::default(), 2001).await;
    r.send(ccr("as1;rar;1", 1, 0, AppId::CREDIT_CONTROL, Some((10, None, true)))).await.unwrap();
    let (st, body) =
        http(r.control, "POST", "/v1/rar", Some(r#"{"session_id": "as1;rar;1", "rating_groups": [10]}"#)).await;
    assert_eq!(st, 200, "{body}");
    let o = json(&body);
    assert_eq!((o["result_code"].as_u64(), o["answered_by"].as_str()), (Some(2001), Some(HOST)));
    let rar =
        r.received.lock().unwrap().iter().find(|m| m.header.code.0 == 258).cloned().expect("the client got the RAR");
    assert_eq!(rar.find(code::DESTINATION_HOST, 0).unwrap().as_utf8(), Ok(HOST));
    let (st, body) =
        http(r.control, "POST", "/v1/asr", Some(r#"{"session_id": "as1;rar;1", "via": "as1.test.localdomain"}"#)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["result_code"], 2001);
    let (_, body) = http(r.control, "GET", "/v1/ledger/as1%3Brar%3B1", None).await;
    let s = json(&body);
    assert_eq!(s["server_requests"].as_array().unwrap().len(), 2);
    assert_eq!(r.check().await["clean"], true);
    // Errors say why: unknown session, unknown via host, malformed body.
    assert_eq!(http(r.control, "POST", "/v1/rar", Some(r#"{"session_id": "nope"}"#)).await.0, 404);
    assert_eq!(
        http(r.control, "POST", "/v1/asr", Some(r#"{"session_id": "as1;rar;1", "via": "nobody"}"#)).await.0,
        404
    );
    assert!(http(r.control, "POST", "/v1/rar", Some("{not json")).await.0 >= 400);
    r.stop().await;
}

#[tokio::test]
async fn ocs_sim_rar_rejected_by_the_client_is_an_anomaly() {
    let r = rig(OcsConfig::default(), 5002).await;
    r.send(ccr("as1;rej;1", 1, 0, AppId::CREDIT_CONTROL, Some((10, None, true)))).await.unwrap();
    let (_, body) = http(r.control, "POST", "/v1/rar", Some(r#"{"session_id": "as1;rej;1"}"#)).await;
    assert_eq!(json(&body)["result_code"], 5002);
    let c = r.check().await;
    assert_eq!(c["anomalies"]["answer_rejected"], 1, "{c}");
    r.stop().await;
}

async fn add_fault(r: &Rig, rule: &str) {
    let (st, body) = http(r.control, "POST", "/v1/faults", Some(rule)).await;
    assert_eq!(st, 201, "{body}");
}

#[tokio::test]
async fn ocs_sim_fault_rules() {
    let r = rig(OcsConfig::default(), 2001).await;
    let sid = "as1;fault;1";
    r.send(ccr(sid, 1, 0, AppId::CREDIT_CONTROL, Some((10, None, true)))).await.unwrap();
    // Result-Code.
    add_fault(&r, r#"{"session_id": "as1;fault;1", "request_number": 1, "action": {"result_code": 5031}}"#).await;
    let a = r.send(ccr(sid, 2, 1, AppId::CREDIT_CONTROL, Some((10, Some(10), true)))).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::RATING_FAILED));
    // Delay.
    add_fault(&r, r#"{"request_number": 2, "action": {"delay": "400ms"}}"#).await;
    let t = Instant::now();
    r.send(ccr(sid, 2, 2, AppId::CREDIT_CONTROL, Some((10, Some(10), true)))).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400));
    // Drop: no answer within the client's timeout.
    add_fault(&r, r#"{"request_number": 3, "action": "drop", "times": 1}"#).await;
    let lost = r.client.request(ccr(sid, 2, 3, AppId::CREDIT_CONTROL, None), Some(Duration::from_millis(500))).await;
    assert!(matches!(lost, Err(RequestError::Failed { .. })), "{lost:?}");
    // DIAMETER_UNABLE_TO_DELIVER.
    add_fault(&r, r#"{"request_number": 4, "action": "unable_to_deliver"}"#).await;
    let a = r.send(ccr(sid, 2, 4, AppId::CREDIT_CONTROL, None)).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::UNABLE_TO_DELIVER));
    // Close the connection: the request fails, the client reconnects.
    add_fault(&r, r#"{"request_number": 5, "action": "close", "times": 1}"#).await;
    let closed = r.client.request(ccr(sid, 2, 5, AppId::CREDIT_CONTROL, None), Some(Duration::from_secs(2))).await;
    assert!(
        matches!(closed, Err(RequestError::Failed { result_code: ResultCode::UNABLE_TO_DELIVER, .. })),
        "{closed:?}"
    );
    wait_for(&r.client, Duration::from_secs(10), "reconnected after the close", |s| open(s, 0)).await;
    // DPR after the answer.
    add_fault(&r, r#"{"request_number": 6, "action": "dpr", "times": 1}"#).await;
    let a = r.send(ccr(sid, 2, 6, AppId::CREDIT_CONTROL, None)).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    let st = wait_for(&r.client, Duration::from_secs(10), "DPR received", |s| {
        s.peers[0].metrics.messages_in.contains_key("DPR")
    })
    .await;
    assert_eq!(st.peers[0].metrics.messages_out.get("DPA"), Some(&1));
    assert_eq!(http(r.control, "DELETE", "/v1/faults", None).await.0, 204);
    r.stop().await;
}

#[tokio::test]
async fn ocs_sim_ledger_catches_a_misbehaving_client() {
    let r = rig(OcsConfig::default(), 2001).await;
    let sid = "as1;bad;1";
    r.send(ccr(sid, 1, 0, AppId::CREDIT_CONTROL, Some((10, None, true)))).await.unwrap();
    r.send(ccr(sid, 2, 1, AppId::CREDIT_CONTROL, Some((10, Some(5), true)))).await.unwrap();
    // Repeat number 1 without the T flag, reporting usage again.
    r.send(ccr(sid, 2, 1, AppId::CREDIT_CONTROL, Some((10, Some(5), true)))).await.unwrap();
    // Skip number 2.
    r.send(ccr(sid, 2, 3, AppId::CREDIT_CONTROL, Some((10, Some(5), true)))).await.unwrap();
    r.send(ccr(sid, 3, 4, AppId::CREDIT_CONTROL, None)).await.unwrap();
    // Report after terminate.
    let a = r.send(ccr(sid, 2, 5, AppId::CREDIT_CONTROL, Some((10, Some(5), false)))).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::UNKNOWN_SESSION_ID));
    let c = r.check().await;
    assert_eq!(c["clean"], false);
    for kind in ["repeated_number", "usage_reported_twice", "skipped_number", "request_after_termination"] {
        assert_eq!(c["anomalies"][kind], 1, "{kind}: {c}");
    }
    assert_eq!(c["units"]["debited"]["time"], 10, "usage reported twice is charged once: {c}");
    r.stop().await;
}

#[tokio::test]
async fn ocs_sim_closes_idle_sessions_after_tcc() {
    let cfg = OcsConfig { tcc: Duration::from_millis(300), ..OcsConfig::default() };
    let r = rig(cfg, 2001).await;
    r.send(ccr("as1;tcc;1", 1, 0, AppId::CREDIT_CONTROL, Some((10, None, true)))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = r.check().await;
    assert_eq!(c["sessions"]["closed_by_tcc"], 1, "{c}");
    let a = r.send(ccr("as1;tcc;1", 2, 1, AppId::CREDIT_CONTROL, None)).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::UNKNOWN_SESSION_ID));
    r.stop().await;
}
