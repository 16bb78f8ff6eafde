//! The base stack on real loopback sockets: two of our nodes, failover between servers, TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use charging_ra::codec::{AppId, Avp, CommandCode, Message, ResultCode, code};
use charging_ra::node::{DiameterNode, IncomingRequest, NodeConfig, NodeStatus, PeerEndpoint};
use charging_ra::peer::{Application, DisconnectCause, LocalIdentity, PeerConfig, PeerState};
use charging_ra::router::{PeerId, Route, RouterConfig};
use tokio::sync::mpsc;

pub const CLIENT_REALM: &str = "test.localdomain";
pub const OCS_REALM: &str = "ocs.localdomain";

pub fn identity(host: &str, realm: &str, apps: &[Application]) -> LocalIdentity {
    let mut id = LocalIdentity::charging_client(host, realm, 1_795_763_400);
    id.applications = apps.to_vec();
    id
}

/// A server node listening on an ephemeral loopback port, accepting any peer.
pub fn server_config(host: &str) -> NodeConfig {
    let mut rc = RouterConfig::new(identity(host, OCS_REALM, &[Application::Auth(AppId::CREDIT_CONTROL)]), vec![]);
    rc.accept_peers = vec!["*".into()];
    let mut tmpl = PeerConfig::new(rc.local.clone(), None, false);
    tmpl.watchdog_interval = Duration::from_secs(1);
    rc.accepted_peer = Some(tmpl);
    let mut c = NodeConfig::new(rc, vec![]);
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c
}

/// A client node with these servers (host, address, priority) for the OCS realm.
pub fn client_config(host: &str, servers: &[(&str, SocketAddr, u32)], tw: Duration) -> NodeConfig {
    let local = identity(host, CLIENT_REALM, &[Application::Auth(AppId::CREDIT_CONTROL)]);
    let routes = servers
        .iter()
        .enumerate()
        .map(|(i, (_, _, prio))| Route {
            realm: OCS_REALM.into(),
            application: None,
            peer: PeerId(i),
            priority: *prio,
            weight: 1,
        })
        .collect();
    let peers = servers
        .iter()
        .map(|(h, addr, _)| {
            let mut pc = PeerConfig::new(local.clone(), Some(h.to_string()), true);
            pc.watchdog_interval = tw;
            pc.reconnect_initial = Duration::from_millis(200);
            pc.reconnect_max = Duration::from_secs(1);
            PeerEndpoint { config: pc, address: Some(*addr), tls: false, server_name: None }
        })
        .collect();
    NodeConfig::new(RouterConfig::new(local, routes), peers)
}

pub fn ccr(session: &str, origin_host: &str, number: u32) -> Message {
    Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
        .with(Avp::utf8(code::SESSION_ID, session))
        .with(Avp::utf8(code::ORIGIN_HOST, origin_host))
        .with(Avp::utf8(code::ORIGIN_REALM, CLIENT_REALM))
        .with(Avp::utf8(code::DESTINATION_REALM, OCS_REALM))
        .with(Avp::u32(code::AUTH_APPLICATION_ID, 4))
        .with(Avp::utf8(code::SERVICE_CONTEXT_ID, "32260@3gpp.org"))
        .with(Avp::i32(code::CC_REQUEST_TYPE, if number == 0 { 1 } else { 2 }))
        .with(Avp::u32(code::CC_REQUEST_NUMBER, number))
}

/// How a test server treats CCRs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Answer,
    Hold,
}

/// Answers (or holds) every request and records what it saw.
pub fn serve(
    host: &'static str,
    mut rx: mpsc::Receiver<IncomingRequest>,
    behaviour: Behaviour,
) -> Arc<Mutex<Vec<Message>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(req) = rx.recv().await {
            record.lock().unwrap().push(req.request.clone());
            if behaviour == Behaviour::Hold {
                held.push(req);
                continue;
            }
            let mut a = Message::answer_to(&req.request);
            a.push(Avp::u32(code::RESULT_CODE, 2001));
            a.push(Avp::utf8(code::ORIGIN_HOST, host));
            a.push(Avp::utf8(code::ORIGIN_REALM, OCS_REALM));
            a.push(Avp::u32(code::AUTH_APPLICATION_ID, 4));
            for c in [code::CC_REQUEST_TYPE, code::CC_REQUEST_NUMBER] {
                if let Some(x) = req.request.find(c, 0) {
                    a.push(x.clone());
                }
            }
            req.answer(a);
        }
    });
    seen
}

/// Polls the node's status until `cond` holds, or panics after `limit`.
pub async fn wait_for(
    node: &DiameterNode,
    limit: Duration,
    what: &str,
    cond: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let st = node.status().await.expect("node running");
        if cond(&st) {
            return st;
        }
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}: {st:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn open(st: &NodeStatus, peer: usize) -> bool {
    st.peers.get(peer).is_some_and(|p| p.available)
}

#[tokio::test]
async fn two_nodes_exchange_requests_watchdogs_and_dpr() {
    let (server, srx) = DiameterNode::start(server_config("ocs1.ocs.localdomain")).await.unwrap();
    let seen = serve("ocs1.ocs.localdomain", srx, Behaviour::Answer);
    let addr = server.local_addrs()[0];
    let (client, _crx) = DiameterNode::start(client_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", addr, 1)],
        Duration::from_millis(400),
    ))
    .await
    .unwrap();
    wait_for(&client, Duration::from_secs(5), "CER/CEA", |s| open(s, 0)).await;
    for n in 0..20 {
        let a = client.request(ccr("as1;1", "as1.test.localdomain", n), None).await.unwrap();
        assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
        assert_eq!(a.find(code::CC_REQUEST_NUMBER, 0).unwrap().as_u32(), Ok(n));
    }
    assert_eq!(seen.lock().unwrap().len(), 20);
    // Idle: the client (Tw 0.4 s) sends DWRs, which the server answers; they also keep the server's own
    // watchdog (Tw 1 s) from firing, since any traffic counts as liveness (RFC 3539 §3.4).
    let st = wait_for(&client, Duration::from_secs(5), "DWA from the server", |s| {
        s.peers[0].metrics.messages_in.get("DWA").is_some_and(|&n| n >= 3)
    })
    .await;
    assert!(st.peers[0].available);
    let sst = server.status().await.unwrap();
    assert!(!sst.peers[0].metrics.messages_out.contains_key("DWR"), "{sst:#?}");
    // DPR/DPA: the client leaves; the server sees the peer closed, not failed.
    client.stop(DisconnectCause::Rebooting).await;
    let st = wait_for(&server, Duration::from_secs(5), "peer closed after DPR", |s| {
        s.peers.first().is_some_and(|p| p.state == PeerState::Closed)
    })
    .await;
    assert_eq!(st.peers[0].metrics.messages_in.get("DPR"), Some(&1));
    assert_eq!(st.peers[0].metrics.messages_out.get("DPA"), Some(&1));
    server.stop(DisconnectCause::Rebooting).await;
}

#[tokio::test]
async fn client_reconnects_after_the_server_restarts_and_reopens_after_three_dwa() {
    let (server, srx) = DiameterNode::start(server_config("ocs1.ocs.localdomain")).await.unwrap();
    serve("ocs1.ocs.localdomain", srx, Behaviour::Answer);
    let addr = server.local_addrs()[0];
    let (client, _crx) = DiameterNode::start(client_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", addr, 1)],
        Duration::from_millis(300),
    ))
    .await
    .unwrap();
    wait_for(&client, Duration::from_secs(5), "open", |s| open(s, 0)).await;
    // A crash (no DPR): the client sees the connection drop.
    server.abort();
    wait_for(&client, Duration::from_secs(5), "closed", |s| !open(s, 0)).await;
    let r = client.request(ccr("as1;2", "as1.test.localdomain", 0), Some(Duration::from_millis(500))).await;
    assert!(
        matches!(r, Err(charging_ra::node::RequestError::Failed { result_code: ResultCode::UNABLE_TO_DELIVER, .. })),
        "{r:?}"
    );
    // A new server on the same port: reconnect (Tc backoff), CER/CEA, REOPEN, three DWAs, then traffic.
    let mut cfg = server_config("ocs1.ocs.localdomain");
    cfg.listen = vec![addr];
    let (server2, srx2) = DiameterNode::start(cfg).await.unwrap();
    serve("ocs1.ocs.localdomain", srx2, Behaviour::Answer);
    let st = wait_for(&client, Duration::from_secs(10), "reopened", |s| open(s, 0)).await;
    assert!(st.peers[0].metrics.messages_in.get("DWA").is_some_and(|&n| n >= 3), "REOPEN needs 3 DWA: {st:#?}");
    let a = client.request(ccr("as1;3", "as1.test.localdomain", 0), None).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));
    client.stop(DisconnectCause::Rebooting).await;
    server2.stop(DisconnectCause::Rebooting).await;
}

#[tokio::test]
async fn pending_requests_fail_over_to_the_alternate_server_with_the_t_flag() {
    let (s1, rx1) = DiameterNode::start(server_config("ocs1.ocs.localdomain")).await.unwrap();
    let held = serve("ocs1.ocs.localdomain", rx1, Behaviour::Hold);
    let (s2, rx2) = DiameterNode::start(server_config("ocs2.ocs.localdomain")).await.unwrap();
    let seen2 = serve("ocs2.ocs.localdomain", rx2, Behaviour::Answer);
    let cfg = client_config(
        "as1.test.localdomain",
        &[("ocs1.ocs.localdomain", s1.local_addrs()[0], 1), ("ocs2.ocs.localdomain", s2.local_addrs()[0], 2)],
        Duration::from_secs(5),
    );
    let (client, _crx) = DiameterNode::start(cfg).await.unwrap();
    wait_for(&client, Duration::from_secs(5), "both open", |s| open(s, 0) && open(s, 1)).await;
    let client = Arc::new(client);
    let c = client.clone();
    let pending =
        tokio::spawn(
            async move { c.request(ccr("as1;9", "as1.test.localdomain", 4), Some(Duration::from_secs(10))).await },
        );
    // The primary has the request and will never answer; then it crashes.
    while held.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s1.abort();
    let answer = pending.await.unwrap().unwrap();
    assert_eq!(answer.result_code(), Some(ResultCode::SUCCESS));
    let first = held.lock().unwrap()[0].clone();
    let resent = seen2.lock().unwrap()[0].clone();
    assert!(!first.header.flags.is_retransmit());
    assert!(resent.header.flags.is_retransmit(), "T flag on the failed-over request");
    assert_eq!(resent.header.end_to_end, first.header.end_to_end);
    let st = client.status().await.unwrap();
    assert_eq!(st.peers[0].metrics.failovers, 1);
    s2.stop(DisconnectCause::Rebooting).await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_cut_off_not_buffered_without_bound() {
    use tokio::io::AsyncWriteExt;
    // A raw client: sends CER and a flood of CCRs and never reads. The server owes it ~7 MB of answers; with a
    // write queue of 64 messages it must close the connection instead of buffering them.
    let (server, srx) = {
        let mut cfg = server_config("ocs1.ocs.localdomain");
        cfg.write_queue = 64;
        DiameterNode::start(cfg).await.unwrap()
    };
    serve("ocs1.ocs.localdomain", srx, Behaviour::Answer);
    let mut sock = tokio::net::TcpStream::connect(server.local_addrs()[0]).await.unwrap();
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.avps =
        identity("slow.test.localdomain", CLIENT_REALM, &[Application::Auth(AppId::CREDIT_CONTROL)]).capability_avps();
    sock.write_all(&cer.encode().unwrap()).await.unwrap();
    // 50,000 CCRs (~10 MB of answers owed) and no reads: the server must drop us, not buffer it all.
    let mut batch = Vec::new();
    for n in 0..50_000u32 {
        let mut m = ccr("slow;1", "slow.test.localdomain", n);
        m.header.end_to_end = charging_ra::codec::EndToEndId(n + 1);
        m.header.hop_by_hop = charging_ra::codec::HopByHopId(n + 1);
        batch.extend_from_slice(&m.encode().unwrap());
    }
    let write = tokio::time::timeout(Duration::from_secs(20), sock.write_all(&batch)).await;
    // Either the write finished and the server then closed, or the server closed while we wrote.
    let _ = write;
    let st = wait_for(&server, Duration::from_secs(20), "slow peer closed", |s| {
        s.peers.first().is_some_and(|p| p.state == PeerState::Closed)
    })
    .await;
    let answered = st.peers[0].metrics.messages_out.get("CCA").copied().unwrap_or(0);
    assert!(answered < 50_000, "cut off before all answers were queued: {answered}");
    server.stop(DisconnectCause::Rebooting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cer_written_at_once_after_connecting_is_always_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Regression: a CER read before the accepted connection was registered used to be dropped, leaving the
    // peer waiting for a CEA forever.
    let (server, srx) = DiameterNode::start(server_config("ocs1.ocs.localdomain")).await.unwrap();
    serve("ocs1.ocs.localdomain", srx, Behaviour::Answer);
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.avps =
        identity("fast.test.localdomain", CLIENT_REALM, &[Application::Auth(AppId::CREDIT_CONTROL)]).capability_avps();
    let cer = cer.encode().unwrap();
    for i in 0..300 {
        let mut sock = tokio::net::TcpStream::connect(server.local_addrs()[0]).await.unwrap();
        sock.write_all(&cer).await.unwrap();
        let mut head = [0u8; 20];
        tokio::time::timeout(Duration::from_secs(2), sock.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("no CEA on connection {i}"))
            .unwrap();
        assert_eq!(u32::from_be_bytes([0, head[5], head[6], head[7]]), 257);
    }
    server.stop(DisconnectCause::Rebooting).await;
}
