//! Against freeDiameter 1.2.1 (Debian `freediameterd`, `freediameter-extensions`), started by each test with
//! its own configuration from tests/freediameter/: CER/CEA, DWR/DWA both ways, DPR/DPA, reconnection after a
//! freeDiameter restart, and freeDiameter as a relay between our client and our server, captured with tshark.
//! Skipped, saying so, where freediameterd is not installed; CI installs it. `cargo test freediameter` selects
//! them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use charging_ra::codec::{ResultCode, code};
use charging_ra::node::{DiameterNode, NodeConfig};
use charging_ra::peer::{DisconnectCause, PeerState};
use charging_ra::wirecheck::Capture;

use crate::stack::{Behaviour, ccr, client_config, open, serve, server_config, wait_for};

const EXT_DIR: &str = "/usr/lib/freeDiameter";

/// A freeDiameterd process, killed when dropped.
struct FreeDiameter {
    child: Option<Child>,
    conf: PathBuf,
    port: u16,
    log: PathBuf,
}

/// A port below the kernel's ephemeral range, which no outgoing connection of the busy test run can take between
/// now and the listener's start (`demo::free_port`).
pub(crate) fn free_port() -> u16 {
    charging_ra::demo::free_port().unwrap()
}

fn available(test: &str) -> bool {
    let ok = crate::have("freeDiameterd") && Path::new(EXT_DIR).join("acl_wl.fdx").exists();
    if !ok {
        crate::skip(
            test,
            "freediameterd / freediameter-extensions not installed (apt-get install freediameterd freediameter-extensions); CI installs them",
        );
    }
    ok
}

impl FreeDiameter {
    /// Writes the configuration (tests/freediameter/peer.conf with its placeholders filled) and starts it.
    fn start(dir: &Path, identity: &str, realm: &str, extra: &str) -> FreeDiameter {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/freediameter");
        let port = free_port();
        if !dir.join("fd-cert.pem").exists() {
            // freeDiameter wants TLS credentials even with TLS off.
            let cert = rcgen::generate_simple_self_signed(vec![identity.to_string()]).unwrap();
            std::fs::write(dir.join("fd-cert.pem"), cert.cert.pem()).unwrap();
            std::fs::write(dir.join("fd-key.pem"), cert.signing_key.serialize_pem()).unwrap();
        }
        for f in ["acl_wl.conf", "rt_default.conf"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let conf = std::fs::read_to_string(src.join("peer.conf"))
            .unwrap()
            .replace("@IDENTITY@", identity)
            .replace("@REALM@", realm)
            .replace("@PORT@", &port.to_string())
            .replace("@DIR@", dir.to_str().unwrap())
            .replace("@EXT@", EXT_DIR)
            .replace("@EXTRA@", &extra.replace("@DIR@", dir.to_str().unwrap()).replace("@EXT@", EXT_DIR));
        let path = dir.join(format!("{identity}.conf"));
        std::fs::write(&path, conf).unwrap();
        let mut fd = FreeDiameter { child: None, conf: path, port, log: dir.join(format!("{identity}.log")) };
        fd.spawn();
        fd
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("freeDiameterd")
            .arg("-c")
            .arg(&self.conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("freeDiameterd starts");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "freeDiameterd did not listen on {}: {}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGTERM, as an operator's restart would (freeDiameter says goodbye with DPR), then wait.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FreeDiameter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client_to_fd(host: &str, fd: &FreeDiameter, tw: Duration) -> NodeConfig {
    let mut c = client_config(host, &[("fd.test.localdomain", fd.addr(), 1)], tw);
    c.peers[0].config.reconnect_initial = Duration::from_millis(300);
    c
}

#[tokio::test]
async fn freediameter_peer_cer_dwr_both_ways_dpr_and_restart() {
    if !available("freediameter_peer_cer_dwr_both_ways_dpr_and_restart") {
        return;
    }
    let dir = crate::wire::tempdir("fd-peer");
    let mut fd = FreeDiameter::start(&dir, "fd.test.localdomain", "test.localdomain", "");
    // Node A is quiet (Tw 30 s): freeDiameter's own watchdog (TwTimer 6 s) fires and sends it DWRs.
    let (a, _) = DiameterNode::start(client_to_fd("as1.test.localdomain", &fd, Duration::from_secs(30))).await.unwrap();
    // Node B is chatty (Tw 1 s): it sends DWRs, freeDiameter answers.
    let (b, _) = DiameterNode::start(client_to_fd("as2.test.localdomain", &fd, Duration::from_secs(1))).await.unwrap();
    let st = wait_for(&a, Duration::from_secs(10), "CER/CEA with freeDiameter", |s| open(s, 0)).await;
    assert_eq!(st.peers[0].identity.as_deref(), Some("fd.test.localdomain"));
    wait_for(&b, Duration::from_secs(10), "B open", |s| open(s, 0)).await;
    let st = wait_for(&b, Duration::from_secs(10), "DWA from freeDiameter", |s| {
        s.peers[0].metrics.messages_in.get("DWA").is_some_and(|&n| n >= 2)
    })
    .await;
    assert!(st.peers[0].available);
    let st = wait_for(&a, Duration::from_secs(15), "DWR from freeDiameter", |s| {
        s.peers[0].metrics.messages_in.contains_key("DWR")
    })
    .await;
    assert!(st.peers[0].metrics.messages_out.contains_key("DWA"), "we answered freeDiameter's DWR: {st:#?}");
    // DPR/DPA: B leaves gracefully.
    let fin = b.stop(DisconnectCause::Rebooting).await.unwrap();
    assert_eq!(fin.peers[0].metrics.messages_out.get("DPR"), Some(&1));
    assert_eq!(fin.peers[0].metrics.messages_in.get("DPA"), Some(&1), "freeDiameter answered our DPR: {fin:#?}");
    // freeDiameter restarts: A sees it go (DPR or connection loss), then reconnects to the new process.
    fd.terminate();
    wait_for(&a, Duration::from_secs(10), "A notices the restart", |s| {
        s.peers[0].state == PeerState::Closed || !open(s, 0)
    })
    .await;
    fd.spawn();
    let st = wait_for(&a, Duration::from_secs(20), "A reconnected", |s| open(s, 0)).await;
    assert!(st.peers[0].metrics.messages_in.get("CEA").is_some_and(|&n| n >= 2), "{st:#?}\n{}", fd.log());
    a.stop(DisconnectCause::Rebooting).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn freediameter_relays_between_our_client_and_our_server() {
    if !available("freediameter_relays_between_our_client_and_our_server") {
        return;
    }
    let capture_needed = crate::have("tshark");
    let dir = crate::wire::tempdir("fd-relay");
    // Our server (the OCS side) first, so that freeDiameter can connect to it.
    let mut scfg = server_config("ocs1.ocs.localdomain");
    let server_port = free_port();
    scfg.listen = vec![SocketAddr::from(([127, 0, 0, 1], server_port))];
    let (server, srx) = DiameterNode::start(scfg).await.unwrap();
    let seen = serve("ocs1.ocs.localdomain", srx, Behaviour::Answer);
    let extra = format!(
        "LoadExtension = \"@EXT@/rt_default.fdx\" : \"@DIR@/rt_default.conf\";\n\
         ConnectPeer = \"ocs1.ocs.localdomain\" {{ ConnectTo = \"127.0.0.1\"; Port = {server_port}; No_TLS; }};"
    );
    let fd = FreeDiameter::start(&dir, "fd.test.localdomain", "test.localdomain", &extra);
    // Capture the run on both test ports: every frame must decode clean in tshark.
    let capture = if capture_needed { capture(&dir, &[fd.port, server_port]) } else { None };
    let (client, _) =
        DiameterNode::start(client_to_fd("as1.test.localdomain", &fd, Duration::from_secs(5))).await.unwrap();
    wait_for(&client, Duration::from_secs(10), "client open with the relay", |s| open(s, 0)).await;
    wait_for(&server, Duration::from_secs(10), "relay connected to the server", |s| {
        s.peers.iter().any(|p| p.available)
    })
    .await;
    for n in 0..5 {
        let a = client.request(ccr("as1.test.localdomain;relay", "as1.test.localdomain", n), None).await;
        let a = a.unwrap_or_else(|e| panic!("request {n} through freeDiameter failed: {e}\n{}", fd.log()));
        assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
        assert_eq!(a.find(code::CC_REQUEST_NUMBER, 0).unwrap().as_u32(), Ok(n));
    }
    let req = seen.lock().unwrap()[0].clone();
    let rr: Vec<&str> = req.find_all(code::ROUTE_RECORD, 0).filter_map(|a| a.as_utf8().ok()).collect();
    assert_eq!(rr, vec!["as1.test.localdomain"], "the relay recorded the route (RFC 6733 §6.1.9)");
    client.stop(DisconnectCause::Rebooting).await;
    server.stop(DisconnectCause::Rebooting).await;
    drop(fd);
    if let Some(c) = capture {
        let v = c.finish().unwrap();
        let (bad, count) = (v.problems, v.diameter_frames);
        assert!(bad.is_empty(), "tshark found problems in the capture:\n{}", bad.join("\n"));
        assert!(count >= 20, "the capture holds the Diameter exchange ({count} frames)");
    } else {
        crate::skip("freediameter relay capture", "tshark not installed; the capture check did not run");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The OCS simulator (with its control API) on a fresh port, and freeDiameter relaying to it by realm
/// (`rt_default`). Returns the simulator, its Diameter port and the relay.
async fn sim_behind_fd(dir: &std::path::Path) -> (charging_ra::ocs::server::OcsServer, u16, FreeDiameter) {
    use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
    let ocs_port = free_port();
    let mut cfg = OcsServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], ocs_port)),
        "ocs1.ocs.localdomain",
        crate::stack::OCS_REALM,
    );
    cfg.control = Some("127.0.0.1:0".parse().unwrap());
    let sim = OcsServer::start(cfg).await.unwrap();
    let extra = format!(
        "LoadExtension = \"@EXT@/rt_default.fdx\" : \"@DIR@/rt_default.conf\";\n\
         ConnectPeer = \"ocs1.ocs.localdomain\" {{ ConnectTo = \"127.0.0.1\"; Port = {ocs_port}; No_TLS; }};"
    );
    let fd = FreeDiameter::start(dir, "fd.test.localdomain", "test.localdomain", &extra);
    (sim, ocs_port, fd)
}

#[tokio::test]
async fn freediameter_relays_ocs_sim_rar_back_to_the_client() {
    use charging_ra::codec::Avp;
    use charging_ra::ocs::server::RarRequest;
    if !available("freediameter_relays_ocs_sim_rar_back_to_the_client") {
        return;
    }
    let dir = crate::wire::tempdir("fd-rar");
    // The simulator behind freeDiameter: the client's CCR reaches it through the relay, and its RAR must go back
    // the same way (the client is not its peer).
    let (sim, _, fd) = sim_behind_fd(&dir).await;
    let (client, mut rx) =
        DiameterNode::start(client_to_fd("as1.test.localdomain", &fd, Duration::from_secs(5))).await.unwrap();
    wait_for(&client, Duration::from_secs(10), "client open with the relay", |s| open(s, 0)).await;
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let mut a = charging_ra::codec::Message::answer_to(&req.request);
            a.push(Avp::u32(code::RESULT_CODE, 2001));
            a.push(Avp::utf8(code::ORIGIN_HOST, "as1.test.localdomain"));
            a.push(Avp::utf8(code::ORIGIN_REALM, crate::stack::CLIENT_REALM));
            req.answer(a);
        }
    });
    let mut ccr = ccr("as1.test.localdomain;rar;1", "as1.test.localdomain", 0);
    ccr.push(Avp::grouped(
        code::MULTIPLE_SERVICES_CREDIT_CONTROL,
        &[Avp::grouped(code::REQUESTED_SERVICE_UNIT, &[]), Avp::u32(code::RATING_GROUP, 10)],
    ));
    let mut answer = None;
    for _ in 0..50 {
        // The relay may need a moment to open its connection to the simulator.
        match client.request(ccr.clone(), Some(Duration::from_secs(2))).await {
            Ok(a) if a.result_code() == Some(ResultCode::SUCCESS) => {
                answer = Some(a);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(answer.is_some(), "CCR-I through freeDiameter to the simulator\n{}", fd.log());
    let out = sim
        .rar(&RarRequest {
            session_id: "as1.test.localdomain;rar;1".into(),
            rating_groups: vec![10],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.result_code, 2001, "{out:?}\n{}", fd.log());
    assert_eq!(out.answered_by.as_deref(), Some("as1.test.localdomain"));
    let st = client.status().await.unwrap();
    assert_eq!(st.peers[0].metrics.messages_in.get("RAR"), Some(&1), "the RAR came through the relay");
    client.stop(DisconnectCause::Rebooting).await;
    assert!(sim.stop().await.clean);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A live tshark capture of the test ports, or a visible skip when tshark is missing.
pub(crate) fn capture(dir: &Path, ports: &[u16]) -> Option<Capture> {
    match Capture::start(dir, ports) {
        Ok(c) => Some(c),
        Err(why) if !charging_ra::wirecheck::available() => {
            crate::skip("tshark capture", &format!("{why}; the capture check does not run"));
            None
        }
        Err(why) => panic!("{why}"),
    }
}

#[tokio::test]
async fn freediameter_relays_the_engine_to_the_ocs_sim() {
    use charging_ra::api::{App, Engine, RatingGroupRequest, Subscriber, UsedUnits};
    use charging_ra::cc::Ccfh;
    use charging_ra::units::Units;
    if !available("freediameter_relays_the_engine_to_the_ocs_sim") {
        return;
    }
    let dir = crate::wire::tempdir("fd-engine");
    let (sim, ocs_port, fd) = sim_behind_fd(&dir).await;
    let capture = capture(&dir, &[fd.port, ocs_port]);
    let cfg = crate::engine::engine_config(
        "as1.test.localdomain",
        &[("fd.test.localdomain", fd.addr(), 1)],
        Duration::from_secs(5),
        Ccfh::Terminate,
    );
    let e = Engine::start(cfg).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !e.node_status().await.is_some_and(|s| open(&s, 0)) {
        assert!(tokio::time::Instant::now() < end, "engine never connected to freeDiameter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscriber = Some(Subscriber { kind: "msisdn".into(), data: "46709".into() });
    let rg = vec![RatingGroupRequest { rating_group: 10, service_id: None, requested: Units::default() }];
    let mut opened = None;
    for _ in 0..50 {
        match e.open_session(App::Ro, subscriber.clone(), None, rg.clone()).await {
            Ok(o) => {
                opened = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let o = opened.unwrap_or_else(|| panic!("CCR-I through freeDiameter failed\n{}", fd.log()));
    let used = vec![UsedUnits {
        rating_group: 10,
        used: Units { time: Some(30), ..Units::default() },
        reporting_reason: None,
    }];
    for _ in 0..3 {
        e.update(&o.session_id, used.clone(), vec![], None).await.unwrap();
    }
    let rar = sim
        .rar(&charging_ra::ocs::server::RarRequest {
            session_id: o.session_id.clone(),
            rating_groups: vec![10],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rar.result_code, 2001);
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.terminate(&o.session_id, used).await.unwrap();
    let g = e
        .open_session(App::Gx, Some(Subscriber { kind: "imsi".into(), data: "240019".into() }), None, vec![])
        .await
        .unwrap();
    e.terminate(&g.session_id, vec![]).await.unwrap();
    e.stop().await;
    let check = sim.stop().await;
    assert!(check.clean, "{check:?}");
    assert_eq!(check.sessions.terminated, 2);
    drop(fd);
    if let Some(c) = capture {
        let v = c.finish().unwrap();
        let (bad, frames) = (v.problems, v.diameter_frames);
        assert!(bad.is_empty(), "tshark found problems in what the engine and the simulator sent:\n{}", bad.join("\n"));
        assert!(frames >= 20, "{frames} Diameter frames captured");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn freediameter_carries_the_engines_retry_to_an_alternate_path_after_tx() {
    use charging_ra::api::{App, Engine, RatingGroupRequest, Subscriber, UsedUnits};
    use charging_ra::cc::{CcState, Ccfh};
    use charging_ra::units::Units;
    if !available("freediameter_carries_the_engines_retry_to_an_alternate_path_after_tx") {
        return;
    }
    // The engine reaches the simulator directly (priority 1) and through freeDiameter (priority 2). The direct
    // path loses the first CCR-U's answer; after Tx the engine resends it with the T flag the other way, and the
    // simulator answers it again from its cache without charging twice (RFC 4006 §5.7, CC-Session-Failover).
    let dir = crate::wire::tempdir("fd-retry");
    let (sim, _, fd) = sim_behind_fd(&dir).await;
    let cfg = crate::engine::engine_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", sim.diameter_addr(), 1), ("fd.test.localdomain", fd.addr(), 2)],
        Duration::from_millis(500),
        Ccfh::Terminate,
    );
    let e = Engine::start(cfg).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !e.node_status().await.is_some_and(|s| open(&s, 0) && open(&s, 1)) {
        assert!(tokio::time::Instant::now() < end, "engine never connected to both paths");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let freeDiameter open its own connection to the simulator.
    let ctl = sim.control_addr().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, _) = crate::ocs::http(
        ctl,
        "POST",
        "/v1/faults",
        Some(r#"{"request_type": "update", "retransmission": false, "times": 1, "action": "drop"}"#),
    )
    .await;
    assert_eq!(st, 201);
    let sid = e
        .open_session(
            App::Ro,
            Some(Subscriber { kind: "msisdn".into(), data: "46708".into() }),
            None,
            vec![RatingGroupRequest { rating_group: 10, service_id: None, requested: Units::default() }],
        )
        .await
        .unwrap()
        .session_id;
    let used = vec![UsedUnits {
        rating_group: 10,
        used: Units { time: Some(40), ..Units::default() },
        reporting_reason: None,
    }];
    let o = e.update(&sid, used, vec![], None).await.unwrap();
    assert!(o.ccfh.is_some(), "Tx expired and CCFH let the service go on: {o:?}");
    // The alternate path's answer brings the session back to Open.
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while e.session(&sid).await.map(|v| v.state) != Some(CcState::Open) {
        assert!(tokio::time::Instant::now() < end, "no answer by the alternate path\n{}", fd.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.terminate(&sid, vec![]).await.unwrap();
    let (_, body) = crate::ocs::http(ctl, "GET", "/v1/ledger/check", None).await;
    let c = crate::ocs::json(&body);
    assert_eq!(c["clean"], true, "{c}");
    assert_eq!(c["duplicates_answered"], 1, "the retransmission was recognized: {c}");
    assert_eq!(c["units"]["debited"]["time"], 40, "charged once: {c}");
    e.stop().await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
