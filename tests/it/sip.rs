//! The SIP B2BUA in process, with the project's own user agents and the OCS simulator: a charged call, a refused
//! one, bad input, and a call carried on by a second node after the first one vanished (its runtime torn down as a
//! SIGKILL would). The conformance suite repeats these with sipp and real node processes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use charging_ra::api::{Engine, EngineConfig, ReplicationConfig};
use charging_ra::b2bua::ua::{CallPlan, Uac, UasCounters, run_uas};
use charging_ra::b2bua::{B2bua, B2buaConfig, SipBinding};
use charging_ra::cc::Ccfh;
use charging_ra::ocs::OcsConfig;
use charging_ra::ocs::config::SubscriberConfig;
use charging_ra::ocs::server::OcsServer;
use charging_ra::sip::DialogReplication;
use charging_ra::store::{AnyStore, Store};
use charging_ra::units::Units;
use tokio::net::UdpSocket;

use crate::engine::{engine_config, sim};

async fn uas() -> (SocketAddr, Arc<UasCounters>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let counters = Arc::new(UasCounters::default());
    tokio::spawn(run_uas(s, counters.clone()));
    (addr, counters)
}

fn node_config(sim: &OcsServer, name: &str, store: Option<&AnyStore>, sip: SocketAddr) -> EngineConfig {
    node_config_at(sim.diameter_addr(), name, store, sip)
}

fn node_config_at(ocs: SocketAddr, name: &str, store: Option<&AnyStore>, sip: SocketAddr) -> EngineConfig {
    let host = format!("{name}.test.localdomain");
    let mut cfg = engine_config(&host, &[("ocs1.ocs.localdomain", ocs, 1)], Duration::from_secs(2), Ccfh::Terminate);
    if let Some(store) = store {
        let mut r = ReplicationConfig::new(store.clone(), "sipc", name, &format!("aaa://{host}:3868"));
        (r.lease_period, r.lease_ttl) = (Duration::from_millis(100), Duration::from_millis(400));
        r.write_delay = Duration::from_millis(20);
        r.sip = Some(sip.to_string());
        cfg.replication = Some(r);
    }
    cfg
}

fn plan(
    callee: SocketAddr,
    via: SocketAddr,
    hold: Duration,
    reinvite: bool,
    in_dialog_to: Option<SocketAddr>,
) -> CallPlan {
    CallPlan { uri: format!("sip:bob@{callee}"), via, hold, reinvite, in_dialog_to }
}

fn b2bua_config(listen: SocketAddr, callee: SocketAddr) -> B2buaConfig {
    let mut c = B2buaConfig::new(listen);
    c.next_hop = Some(callee);
    c
}

async fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

async fn connected(e: &Engine) {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while !e.node_status().await.is_some_and(|s| crate::stack::open(&s, 0)) {
        assert!(tokio::time::Instant::now() < end, "engine never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The B2BUA answers a BYE before the one it sends on the other leg arrives: wait for it.
async fn byes(counters: &UasCounters, n: u64) {
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while counters.byes.load(Ordering::Relaxed) < n {
        assert!(tokio::time::Instant::now() < end, "the callee never got its BYE");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counters.byes.load(Ordering::Relaxed), n);
}

fn ro_sessions(sim: &OcsServer) -> Vec<serde_json::Value> {
    sim.ledger_json()["sessions"].as_array().cloned().unwrap_or_default()
}

fn types(s: &serde_json::Value) -> Vec<String> {
    s["requests"].as_array().unwrap().iter().map(|r| r["request_type"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_call_is_charged_from_invite_to_bye() {
    let sim = sim(OcsConfig::default()).await;
    let engine = Engine::start(node_config(&sim, "b1", None, free_port().await)).await.unwrap();
    connected(&engine).await;
    let (callee, counters) = uas().await;
    let b2bua = B2bua::start(b2bua_config("127.0.0.1:0".parse().unwrap(), callee), engine.clone()).await.unwrap();
    let uac = Uac::bind().await.unwrap();
    let plan = plan(callee, b2bua.local_addr(), Duration::from_millis(1500), true, None);
    let report = uac.call(&plan).await;
    assert_eq!((report.invite, report.reinvite, report.bye), (200, Some(200), Some(200)));
    assert_eq!(counters.answered.load(Ordering::Relaxed), 1);
    assert_eq!(counters.refreshed.load(Ordering::Relaxed), 1, "the re-INVITE went through to the callee");
    byes(&counters, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sessions = ro_sessions(&sim);
    assert_eq!(sessions.len(), 1);
    assert_eq!(types(&sessions[0]), ["initial", "termination"]);
    let used = sessions[0]["rating_groups"]["100"]["reported_used"]["time"].as_u64().unwrap();
    assert!((1..=3).contains(&used), "a 1.5 s call reports 2 s (a started second counts): {used}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true);
    let stats = b2bua.stats().await.unwrap();
    assert_eq!((stats.calls, stats.answered, stats.ended, stats.active), (1, 1, 1, 0));
}

#[tokio::test]
async fn a_caller_without_credit_gets_402_and_the_callee_is_never_called() {
    let mut ocs = OcsConfig::default();
    let uac = Uac::bind().await.unwrap();
    let caller = format!("sip:caller@{}", uac.local_addr());
    ocs.subscribers.push(SubscriberConfig { id: caller, balance: Units { time: Some(0), ..Units::default() } });
    let sim = sim(ocs).await;
    let engine = Engine::start(node_config(&sim, "b2", None, free_port().await)).await.unwrap();
    connected(&engine).await;
    let (callee, counters) = uas().await;
    let b2bua = B2bua::start(b2bua_config("127.0.0.1:0".parse().unwrap(), callee), engine).await.unwrap();
    let plan = plan(callee, b2bua.local_addr(), Duration::from_millis(100), false, None);
    let report = uac.call(&plan).await;
    assert_eq!(report.invite, 402, "RFC 4006 4012 CREDIT_LIMIT_REACHED → 402 Payment Required");
    assert_eq!(counters.answered.load(Ordering::Relaxed), 0);
}

async fn exchange(sock: &UdpSocket, to: SocketAddr, text: &str) -> Option<String> {
    sock.send_to(text.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn bad_sip_gets_400_with_a_reason_and_an_unknown_dialog_481() {
    let sim = sim(OcsConfig::default()).await;
    let engine = Engine::start(node_config(&sim, "b3", None, free_port().await)).await.unwrap();
    let b2bua = B2bua::start(b2bua_config("127.0.0.1:0".parse().unwrap(), free_port().await), engine).await.unwrap();
    let to = b2bua.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let head = |cseq: &str, extra: &str| {
        format!(
            "Via: SIP/2.0/UDP {me};branch=z9hG4bK{}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>{extra}\r\n\
             Call-ID: bad-{}\r\nCSeq: {cseq}\r\nMax-Forwards: 70\r\n",
            rand_suffix(),
            rand_suffix()
        )
    };
    let r =
        exchange(&sock, to, &format!("BYE sip:b@y SIP/2.0\r\n{}Content-Length: 0\r\n\r\n", head("1 BYE", ";tag=nope")))
            .await
            .unwrap();
    assert!(r.starts_with("SIP/2.0 481 "), "{r}");
    let r = exchange(
        &sock,
        to,
        &format!("INVITE sip:b@y SIP/2.0\r\n{}Content-Length: 99\r\n\r\nv=0", head("1 INVITE", "")),
    )
    .await
    .unwrap();
    assert!(r.starts_with("SIP/2.0 400 Content-Length 99"), "{r}");
    let r = exchange(&sock, to, &format!("INVITE sip:b@y SIP/2.0\r\n{}\r\n", head("1 BYE", ""))).await.unwrap();
    assert!(r.starts_with("SIP/2.0 400 CSeq method BYE does not match INVITE"), "{r}");
    let no_call_id: String =
        head("1 INVITE", "").lines().filter(|l| !l.starts_with("Call-ID")).map(|l| format!("{l}\r\n")).collect();
    // A response copies Call-ID (§8.2.6.2): without one nothing valid can be answered, so it is dropped.
    let r = exchange(&sock, to, &format!("INVITE sip:b@y SIP/2.0\r\n{no_call_id}\r\n")).await;
    assert_eq!(r, None, "no Call-ID: dropped");
    let r = exchange(&sock, to, &format!("INVITE  SIP/2.0\r\n{}\r\n", head("1 INVITE", ""))).await.unwrap();
    assert!(r.starts_with("SIP/2.0 400 Malformed Request-Line"), "{r}");
    assert_eq!(exchange(&sock, to, "\u{1}\u{2} garbage").await, None, "nothing to answer: dropped");
    let r = exchange(&sock, to, &format!("OPTIONS sip:b@y SIP/2.0\r\n{}\r\n", head("1 OPTIONS", ""))).await.unwrap();
    assert!(r.starts_with("SIP/2.0 200 "), "still alive after the bad input: {r}");
}

/// Receives SIP messages on `sock` until one matches, within `within`.
async fn recv_until(
    sock: &UdpSocket,
    within: Duration,
    what: &str,
    pred: impl Fn(&charging_ra::sip::message::Message) -> bool,
) -> (charging_ra::sip::message::Message, SocketAddr) {
    let end = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Ok((n, from))) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
            panic!("no {what} within {within:?}");
        };
        let m = charging_ra::sip::message::Message::parse(&buf[..n]).unwrap();
        if pred(&m) {
            return (m, from);
        }
    }
}

/// One node whose B2BUA runs with T1 = 10 ms (so 64·T1 = 640 ms), connected to its OCS, and a raw callee and
/// caller: the simulator (kept alive), the B2BUA, the callee, the caller.
async fn quick_timers(name: &str) -> (OcsServer, B2bua, UdpSocket, UdpSocket) {
    let sim = sim(OcsConfig::default()).await;
    let engine = Engine::start(node_config(&sim, name, None, free_port().await)).await.unwrap();
    // Connected first, as the other call tests are: these tests are about the SIP timers, not the start.
    connected(&engine).await;
    let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = b2bua_config("127.0.0.1:0".parse().unwrap(), callee.local_addr().unwrap());
    cfg.timers.t1 = Duration::from_millis(10);
    let b2bua = B2bua::start(cfg, engine).await.unwrap();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (sim, b2bua, callee, caller)
}

#[tokio::test]
async fn a_caller_that_never_acks_gets_a_bye_and_leg_b_is_acked_before_its_bye() {
    // 64·T1 = 640 ms: the 2xx is resent until then and the call given up (§13.3.1.4).
    let (_sim, b2bua, callee, caller) = quick_timers("k1").await;
    let me = caller.local_addr().unwrap();
    caller.send_to(raw_invite(me).as_bytes(), b2bua.local_addr()).await.unwrap();
    let (leg_b, from) =
        recv_until(&callee, Duration::from_secs(3), "INVITE on leg B", |m| m.method() == "INVITE").await;
    let mut ok = leg_b.response(200, "OK", Some("b1"));
    ok.push("Contact", format!("<sip:bob@{}>", callee.local_addr().unwrap()));
    callee.send_to(&ok.to_bytes(), from).await.unwrap();
    recv_until(&caller, Duration::from_secs(3), "200 to the caller", |m| m.code() == 200).await;
    // The caller never ACKs.
    let (ack, _) = recv_until(&callee, Duration::from_secs(5), "ACK on leg B", |m| m.method() != "INVITE").await;
    assert_eq!(ack.method(), "ACK", "leg B's 2xx is ACKed first");
    assert_eq!(ack.header("CSeq"), leg_b.header("CSeq").map(|c| c.replace("INVITE", "ACK")).as_deref());
    let (bye, from) = recv_until(&callee, Duration::from_secs(3), "BYE on leg B", |m| m.method() == "BYE").await;
    callee.send_to(&bye.response(200, "OK", None).to_bytes(), from).await.unwrap();
    let (bye, from) = recv_until(&caller, Duration::from_secs(3), "BYE to the caller", |m| m.method() == "BYE").await;
    caller.send_to(&bye.response(200, "OK", None).to_bytes(), from).await.unwrap();
}

/// A caller that never ACKs the failure relayed to it: the B2BUA resends it (Timer G) and, at Timer H (64·T1), is
/// told the transaction failed and counts it (RFC 3261 §17.2.1). An ACKed failure is not counted.
#[tokio::test]
async fn a_failure_never_acked_is_counted_at_timer_h() {
    let (_sim, b2bua, callee, caller) = quick_timers("h1").await;
    let me = caller.local_addr().unwrap();
    for ack in [true, false] {
        caller.send_to(raw_invite(me).as_bytes(), b2bua.local_addr()).await.unwrap();
        let (leg_b, from) =
            recv_until(&callee, Duration::from_secs(3), "INVITE on leg B", |m| m.method() == "INVITE").await;
        callee.send_to(&leg_b.response(486, "Busy Here", Some("b1")).to_bytes(), from).await.unwrap();
        let (busy, _) = recv_until(&caller, Duration::from_secs(3), "the 486", |m| m.code() == 486).await;
        if ack {
            let mut a = busy.clone();
            a.start =
                charging_ra::sip::message::StartLine::Request { method: "ACK".into(), uri: "sip:bob@127.0.0.1".into() };
            a.set("CSeq", "1 ACK");
            a.set("Content-Length", "0");
            caller.send_to(&a.to_bytes(), b2bua.local_addr()).await.unwrap();
        } else {
            // Timer G: the 486 again, before Timer H gives up.
            recv_until(&caller, Duration::from_secs(1), "the 486 again", |m| m.code() == 486).await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        let failures = b2bua.stats().await.unwrap().unacknowledged_failures;
        assert_eq!(failures, u64::from(!ack), "ACKed: {ack}");
    }
}

/// One node with a B2BUA, a raw caller and a raw callee, for tests that play a call message by message.
struct StepCall {
    sim: OcsServer,
    b2bua: B2bua,
    node: SocketAddr,
    caller: UdpSocket,
    callee: UdpSocket,
    call_id: String,
}

impl StepCall {
    async fn start(name: &str, store: &AnyStore) -> StepCall {
        let sim = sim(OcsConfig::default()).await;
        let binding = SipBinding::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let engine = Engine::start(node_config(&sim, name, Some(store), binding.local_addr())).await.unwrap();
        connected(&engine).await;
        let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let any = "127.0.0.1:0".parse().unwrap();
        let b2bua = B2bua::start_on(binding, b2bua_config(any, callee.local_addr().unwrap()), engine).await;
        let node = b2bua.local_addr();
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let call_id = format!("{name}-{}", rand_suffix());
        StepCall { sim, b2bua, node, caller, callee, call_id }
    }

    /// A request from the caller (tag a1) to the node.
    async fn send(&self, method: &str, cseq: u32, uri: &str, to: &str) {
        let me = self.caller.local_addr().unwrap();
        let id = &self.call_id;
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}{cseq}{method}\r\n\
             From: <sip:a@x>;tag=a1\r\nTo: {to}\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:a@{me}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        self.caller.send_to(text.as_bytes(), self.node).await.unwrap();
    }

    /// The callee's response to a request on leg B (tag b1, with its Contact).
    async fn answer(&self, m: &charging_ra::sip::message::Message, code: u16, reason: &str, to: SocketAddr) {
        let mut r = m.response(code, reason, Some("b1"));
        r.push("Contact", format!("<sip:bob@{}>", self.callee.local_addr().unwrap()));
        self.callee.send_to(&r.to_bytes(), to).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_step_by_step_trying_early_dialog_update_and_the_ims_service_context() {
    let store = AnyStore::memory();
    let call = StepCall::start("s1", &store).await;
    let (caller, callee) = (&call.caller, &call.callee);
    call.send("INVITE", 1, "sip:bob@127.0.0.1", "<sip:bob@y>").await;
    // §17.2.1: the B2BUA answers 100 Trying before anything else (leg B needs the CCA-I first).
    let (first, _) = recv_until(caller, Duration::from_secs(2), "a response", |m| !m.is_request()).await;
    assert_eq!(first.code(), 100, "100 Trying first");
    let (leg_b, from) = recv_until(callee, Duration::from_secs(3), "INVITE on leg B", |m| m.method() == "INVITE").await;
    call.answer(&leg_b, 180, "Ringing", from).await;
    recv_until(caller, Duration::from_secs(2), "180 relayed", |m| m.code() == 180).await;
    // An early dialog is not replicated: it has nothing an adopter could carry on (no ACKed 2xx, and the caller
    // would retransmit its INVITE to the same node).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.scan_prefix("sipc/proto/sip/").await.unwrap().is_empty(), "early dialog written");
    let (target, to) = confirm(&call, &leg_b, from).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while store.scan_prefix("sipc/proto/sip/").await.unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < end, "the confirmed call's two legs were never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // UPDATE (RFC 3311) is relayed leg to leg like a re-INVITE.
    call.send("UPDATE", 2, &target, &to).await;
    let (update, from) = recv_until(callee, Duration::from_secs(2), "UPDATE on leg B", |m| m.is_request()).await;
    assert_eq!(update.method(), "UPDATE");
    call.answer(&update, 200, "OK", from).await;
    let (r, _) = recv_until(caller, Duration::from_secs(2), "the UPDATE's 200", |m| !m.is_request()).await;
    assert_eq!((r.code(), r.header("CSeq")), (200, Some("2 UPDATE")));
    call.send("BYE", 3, &target, &to).await;
    let (bye, from) = recv_until(callee, Duration::from_secs(2), "BYE on leg B", |m| m.is_request()).await;
    assert_eq!(bye.method(), "BYE");
    callee.send_to(&bye.response(200, "OK", None).to_bytes(), from).await.unwrap();
    recv_until(caller, Duration::from_secs(2), "the BYE's 200", |m| m.code() == 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = &ro_sessions(&call.sim)[0];
    assert_eq!(types(s), ["initial", "termination"]);
    assert_eq!(s["requests"][0]["service_context_id"], "32260@3gpp.org", "IMS charging (TS 32.260)");
    assert!(store.scan_prefix("sipc/proto/sip/").await.unwrap().is_empty(), "records deleted at the end");
}

/// A re-INVITE is relayed to the other leg and answered 100 Trying at once (§17.2.1), before the other leg has
/// answered; its 200 and the ACK for it are relayed as the first INVITE's were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_reinvite_is_answered_100_trying_at_once_then_relayed_to_the_end() {
    let store = AnyStore::memory();
    let call = StepCall::start("ri1", &store).await;
    let (caller, callee) = (&call.caller, &call.callee);
    call.send("INVITE", 1, "sip:bob@127.0.0.1", "<sip:bob@y>").await;
    let (leg_b, from) = recv_until(callee, Duration::from_secs(3), "INVITE on leg B", |m| m.method() == "INVITE").await;
    let (target, to) = confirm(&call, &leg_b, from).await;
    call.send("INVITE", 2, &target, &to).await;
    let (reinvite, from) = recv_until(callee, Duration::from_secs(2), "re-INVITE on leg B", |m| m.is_request()).await;
    assert_eq!(reinvite.method(), "INVITE");
    // The callee has not answered yet: the caller already has its 100.
    let (trying, _) = recv_until(caller, Duration::from_secs(2), "a response", |m| !m.is_request()).await;
    assert_eq!((trying.code(), trying.header("CSeq")), (100, Some("2 INVITE")));
    call.answer(&reinvite, 200, "OK", from).await;
    let (ok, _) = recv_until(caller, Duration::from_secs(2), "the re-INVITE's 200", |m| !m.is_request()).await;
    assert_eq!((ok.code(), ok.header("CSeq")), (200, Some("2 INVITE")));
    call.send("ACK", 2, &target, &to).await;
    let (ack, _) = recv_until(callee, Duration::from_secs(2), "the re-INVITE's ACK", |m| m.is_request()).await;
    assert_eq!(ack.method(), "ACK");
    assert_eq!(ack.header("CSeq"), reinvite.header("CSeq").map(|c| c.replace("INVITE", "ACK")).as_deref());
    call.send("BYE", 3, &target, &to).await;
    let (bye, from) = recv_until(callee, Duration::from_secs(2), "BYE on leg B", |m| m.is_request()).await;
    assert_eq!(bye.method(), "BYE");
    callee.send_to(&bye.response(200, "OK", None).to_bytes(), from).await.unwrap();
    recv_until(caller, Duration::from_secs(2), "the BYE's 200", |m| m.code() == 200).await;
}

/// The callee answers leg B's INVITE with 200, the caller ACKs the relayed 200, leg B gets its ACK: the call is
/// confirmed. Leg A's remote target and To header, for the caller's in-dialog requests.
async fn confirm(call: &StepCall, leg_b: &charging_ra::sip::message::Message, from: SocketAddr) -> (String, String) {
    call.answer(leg_b, 200, "OK", from).await;
    let (ok, _) = recv_until(&call.caller, Duration::from_secs(2), "200 relayed", |m| m.code() == 200).await;
    let to = ok.header("To").unwrap().to_string();
    let target = ok.header("Contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    call.send("ACK", 1, &target, &to).await;
    recv_until(&call.callee, Duration::from_secs(2), "ACK on leg B", |m| m.method() == "ACK").await;
    (target, to)
}

/// A graceful stop writes the change a call made while its previous write was in flight, and returns only then:
/// the node's lease is given up after it, and a survivor adopts the call as it last was. The store's write lock is
/// held by another connection meanwhile, so the first write cannot finish early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_a_calls_last_change_before_returning() {
    let dir = crate::wire::tempdir("sip-stop");
    let path = dir.join("store.db");
    let _ = std::fs::remove_file(&path);
    let store = AnyStore::Sqlite(charging_ra::store::SqliteStore::open(&path, Duration::from_secs(10)).unwrap());
    let call = StepCall::start("g1", &store).await;
    call.send("INVITE", 1, "sip:bob@127.0.0.1", "<sip:bob@y>").await;
    let (leg_b, from) =
        recv_until(&call.callee, Duration::from_secs(3), "INVITE on leg B", |m| m.method() == "INVITE").await;
    let (target, to) = confirm(&call, &leg_b, from).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while store.scan_prefix("sipc/state/").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < end, "the confirmed call was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Two UPDATEs: the first one's write waits for the lock, the second changes the call meanwhile.
    for cseq in [2, 3] {
        call.send("UPDATE", cseq, &target, &to).await;
        let (update, from) =
            recv_until(&call.callee, Duration::from_secs(2), "UPDATE on leg B", |m| m.method() == "UPDATE").await;
        call.answer(&update, 200, "OK", from).await;
        recv_until(&call.caller, Duration::from_secs(2), "the UPDATE's 200", |m| m.code() == 200).await;
    }
    let stopping = tokio::spawn({
        let b2bua = call.b2bua.clone();
        async move { b2bua.stop().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "the stop waits for the call's writes");
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("the stop returns once written").unwrap();

    let states = store.scan_prefix("sipc/state/").await.unwrap();
    let state = states.iter().find(|(k, _)| k.ends_with("/sip/call")).expect("the call's state");
    let rec = charging_ra::api::record_json(&state.1.value).unwrap();
    assert_eq!(rec["state"]["a"]["remote_cseq"], 3, "the last UPDATE is in the store: {rec}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_rar_while_the_callee_rings_reports_nothing_and_starts_no_quota_timer() {
    let mut ocs = OcsConfig::default();
    ocs.ro.rating_groups.push(rating_group(30));
    let sim = sim(ocs).await;
    let engine = Engine::start(node_config(&sim, "rr1", None, free_port().await)).await.unwrap();
    connected(&engine).await;
    let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b2bua =
        B2bua::start(b2bua_config("127.0.0.1:0".parse().unwrap(), callee.local_addr().unwrap()), engine).await.unwrap();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    caller.send_to(raw_invite(me).as_bytes(), b2bua.local_addr()).await.unwrap();
    let (leg_b, from) =
        recv_until(&callee, Duration::from_secs(3), "INVITE on leg B", |m| m.method() == "INVITE").await;
    let ringing = leg_b.response(180, "Ringing", Some("b1"));
    callee.send_to(&ringing.to_bytes(), from).await.unwrap();
    let sid = first_session(&sim).await;
    let body = serde_json::json!({ "session_id": sid }).to_string();
    let (status, _) = crate::ocs::http(sim.control_addr().unwrap(), "POST", "/v1/rar", Some(&body)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = &ro_sessions(&sim)[0];
    let updates: Vec<&serde_json::Value> =
        s["requests"].as_array().unwrap().iter().filter(|r| r["request_type"] == "update").collect();
    assert_eq!(updates.len(), 1, "one CCR-U for the RAR, no quota loop while ringing: {s}");
    assert_eq!(updates[0]["used"]["time"], 0, "nothing used before the answer");
    assert_eq!(updates[0]["reporting_reasons"][0], 7);
}

/// An initial INVITE from a caller at `me`, with a fresh Call-ID and branch.
fn raw_invite(me: SocketAddr) -> String {
    let n = rand_suffix();
    format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKin{n}\r\nFrom: <sip:a@x>;tag=a1\r\n\
         To: <sip:bob@y>\r\nCall-ID: raw-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{me}>\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1000
}

/// A node (engine and B2BUA) on its own runtime, to vanish like a killed process.
struct Crashable {
    rt: Option<tokio::runtime::Runtime>,
    b2bua: B2bua,
}

/// A call set up through n1 (on a runtime of its own), n1 torn down, the re-INVITE and BYE sent to n2.
async fn failover_call(mode: DialogReplication) -> (OcsServer, AnyStore, charging_ra::b2bua::SipStats) {
    let (sim, store, n2, _) = two_node_call(mode, true).await;
    (sim, store, n2)
}

/// A call set up through n1 whose in-dialog requests (a re-INVITE, the BYE) go to n2; n1 is killed once the call is
/// replicated when `kill`. The simulator, the store and both nodes' statistics (n1's only when it lives).
async fn two_node_call(
    mode: DialogReplication,
    kill: bool,
) -> (OcsServer, AnyStore, charging_ra::b2bua::SipStats, Option<charging_ra::b2bua::SipStats>) {
    let sim = sim(OcsConfig::default()).await;
    let store = AnyStore::memory();
    let (callee, counters) = uas().await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg1 = store.clone();
    let sim_addr = sim.diameter_addr();
    let mut n1 = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let b2bua = rt.block_on(async {
            // Bound first: the lease carries the SIP address.
            let binding = SipBinding::bind(any).await.unwrap();
            let e = Engine::start(node_config_at(sim_addr, "n1", Some(&cfg1), binding.local_addr())).await.unwrap();
            connected(&e).await;
            B2bua::start_on(binding, with_mode(b2bua_config(any, callee), mode), e).await
        });
        Crashable { rt: Some(rt), b2bua }
    })
    .join()
    .unwrap();
    let binding = SipBinding::bind(any).await.unwrap();
    let n2_sip = binding.local_addr();
    let e2 = Engine::start(node_config(&sim, "n2", Some(&store), n2_sip)).await.unwrap();
    connected(&e2).await;
    let n2 = B2bua::start_on(binding, with_mode(b2bua_config(any, callee), mode), e2).await;
    let uac = Uac::bind().await.unwrap();
    let plan = plan(callee, n1.b2bua.local_addr(), Duration::from_secs(3), true, Some(n2_sip));
    let call = tokio::spawn(async move { uac.call(&plan).await });
    // Answered, ACKed and replicated, then the node vanishes.
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.scan_prefix("sipc/proto/sip/").await.unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < end, "the call's legs were never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if kill {
        n1.rt.take().unwrap().shutdown_background();
    }
    let report = call.await.unwrap();
    assert_eq!(report, charging_ra::b2bua::ua::CallReport { invite: 200, reinvite: Some(200), bye: Some(200) });
    assert_eq!(counters.refreshed.load(Ordering::Relaxed), 1, "the re-INVITE reached the callee through n2");
    byes(&counters, 1).await;
    assert_eq!(counters.out_of_order.load(Ordering::Relaxed), 0, "leg B's CSeq never went back");
    if kill {
        // The adopter bumped leg B's local CSeq by the gap (100): its re-INVITE and BYE are numbered above any
        // request the dead node may have sent unrecorded.
        assert!(counters.highest_cseq.load(Ordering::Relaxed) > 100, "{counters:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n1_stats = match n1.rt.take() {
        Some(rt) => {
            let stats = n1.b2bua.stats().await;
            rt.shutdown_background();
            stats
        }
        None => None,
    };
    (sim, store, n2.stats().await.unwrap(), n1_stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_dialog_request_at_another_node_goes_to_the_live_owner() {
    let (sim, store, n2, n1) = two_node_call(DialogReplication::ConfirmedDialog, false).await;
    let n1 = n1.unwrap();
    assert_eq!((n2.adopted, n2.forwarded), (0, 2), "n2 forwarded the re-INVITE and the BYE to n1: {n2:?}");
    assert_eq!((n1.answered, n1.ended, n1.adopted), (1, 1, 0), "n1 carried its call to the end: {n1:?}");
    let sessions = ro_sessions(&sim);
    assert_eq!(types(&sessions[0]), ["initial", "termination"]);
    let t = &sessions[0]["requests"][1];
    assert!(t["origin_host"].as_str().unwrap().starts_with("n1."), "CCR-T from the owner: {t}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true, "{}", sim.ledger_json()["check"]);
    assert!(store.scan_prefix("sipc/proto/sip/").await.unwrap().is_empty(), "records left");
}

fn with_mode(mut c: B2buaConfig, mode: DialogReplication) -> B2buaConfig {
    c.replication = mode;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_its_node_and_is_charged_once() {
    let (sim, store, stats) = failover_call(DialogReplication::ConfirmedDialog).await;
    assert_eq!(stats.adopted, 1, "{stats:?}");
    let sessions = ro_sessions(&sim);
    assert_eq!(sessions.len(), 1);
    assert_eq!(types(&sessions[0]), ["initial", "termination"]);
    let t = &sessions[0]["requests"][1];
    assert!(t["origin_host"].as_str().unwrap().starts_with("n2."), "CCR-T from the adopter: {t}");
    let used = sessions[0]["rating_groups"]["100"]["reported_used"]["time"].as_u64().unwrap();
    assert!((3..=5).contains(&used), "the whole call is charged, once: {used}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true, "{}", sim.ledger_json()["check"]);
    for kind in ["proto/sip", "state", "conv", "proto/diameter", "sipdeadline"] {
        assert!(store.scan_prefix(&format!("sipc/{kind}/")).await.unwrap().is_empty(), "{kind} records left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_application_data_the_signalling_survives_but_not_the_charging() {
    let (sim, store, stats) = failover_call(DialogReplication::ConfirmedDialogNoApplicationData).await;
    assert_eq!(stats.adopted, 1, "the dialogs were adopted: {stats:?}");
    let sessions = ro_sessions(&sim);
    assert_eq!(types(&sessions[0]), ["initial"], "the adopter does not know the Ro session: no CCR-T");
    let state = store.scan_prefix("sipc/state/").await.unwrap();
    assert!(state.iter().all(|(k, _)| !k.ends_with("/sip/call")), "the call's records are deleted at its end");
}

/// A node (engine + B2BUA toward a fresh UAS) on an OCS configured with `ocs`; the UAC and the callee's counters.
async fn charged_setup(ocs: OcsConfig, name: &str) -> (OcsServer, B2bua, Uac, SocketAddr, Arc<UasCounters>) {
    let sim = sim(ocs).await;
    let engine = Engine::start(node_config(&sim, name, None, free_port().await)).await.unwrap();
    connected(&engine).await;
    let (callee, counters) = uas().await;
    let b2bua = B2bua::start(b2bua_config("127.0.0.1:0".parse().unwrap(), callee), engine).await.unwrap();
    (sim, b2bua, Uac::bind().await.unwrap(), callee, counters)
}

fn rating_group(grant_secs: u64) -> charging_ra::ocs::config::RatingGroupConfig {
    charging_ra::ocs::config::RatingGroupConfig {
        rating_group: 100,
        grant: Units { time: Some(grant_secs), ..Units::default() },
        ..Default::default()
    }
}

#[tokio::test]
async fn the_granted_time_used_up_asks_for_more_with_ccr_u() {
    let mut ocs = OcsConfig::default();
    ocs.ro.rating_groups.push(rating_group(1));
    let (sim, b2bua, uac, callee, _) = charged_setup(ocs, "q1").await;
    let plan = plan(callee, b2bua.local_addr(), Duration::from_millis(2600), false, None);
    let report = uac.call(&plan).await;
    assert_eq!((report.invite, report.bye), (200, Some(200)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = &ro_sessions(&sim)[0];
    let t = types(s);
    assert_eq!(t.first().map(String::as_str), Some("initial"));
    assert_eq!(t.last().map(String::as_str), Some("termination"));
    assert!(t.iter().filter(|x| *x == "update").count() >= 2, "a CCR-U every granted second: {t:?}");
    let used = s["rating_groups"]["100"]["reported_used"]["time"].as_u64().unwrap();
    assert!((3..=4).contains(&used), "2.6 s reported over the CCR-Us and the CCR-T, once: {used}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true);
}

#[tokio::test]
async fn final_units_end_the_call_on_both_legs() {
    let mut ocs = OcsConfig::default();
    let uac = Uac::bind().await.unwrap();
    let caller = format!("sip:caller@{}", uac.local_addr());
    ocs.subscribers.push(SubscriberConfig { id: caller, balance: Units { time: Some(2), ..Units::default() } });
    let (sim, b2bua, _, callee, counters) = charged_setup(ocs, "f1").await;
    let plan = plan(callee, b2bua.local_addr(), Duration::from_secs(10), false, None);
    let started = std::time::Instant::now();
    let report = uac.call(&plan).await;
    assert_eq!((report.invite, report.bye), (200, Some(0)), "the B2BUA hung up on the caller");
    assert!(started.elapsed() < Duration::from_secs(4), "after the 2 s of final units: {:?}", started.elapsed());
    byes(&counters, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = &ro_sessions(&sim)[0];
    assert_eq!(types(s), ["initial", "termination"], "no CCR-U asking for more after the final units");
    assert_eq!(s["rating_groups"]["100"]["reported_used"]["time"].as_u64(), Some(2));
    assert_eq!(sim.ledger_json()["check"]["clean"], true);
}

#[tokio::test]
async fn a_4012_on_a_mid_call_ccr_u_ends_the_call_on_both_legs() {
    use charging_ra::ocs::config::{FaultAction, FaultRule};
    let mut ocs = OcsConfig::default();
    ocs.ro.rating_groups.push(rating_group(1));
    // The credit runs out at the first re-authorization.
    ocs.faults.push(FaultRule {
        command: Some("CCR".into()),
        request_type: Some("update".into()),
        ..FaultRule::always(FaultAction::ResultCode(4012))
    });
    let (sim, b2bua, uac, callee, counters) = charged_setup(ocs, "c1").await;
    let plan = plan(callee, b2bua.local_addr(), Duration::from_secs(10), false, None);
    let started = std::time::Instant::now();
    let report = uac.call(&plan).await;
    assert_eq!((report.invite, report.bye), (200, Some(0)), "the B2BUA hung up on the caller");
    assert!(started.elapsed() < Duration::from_secs(4), "at the first CCR-U: {:?}", started.elapsed());
    byes(&counters, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = &ro_sessions(&sim)[0];
    // RFC 4006 §7: a failed CCA-U ends the session at both ends; no CCR-T follows.
    assert_eq!(types(s), ["initial", "update"]);
    assert_eq!(s["requests"][1]["result_code"], 4012);
}

#[tokio::test]
async fn an_asr_hangs_up_both_legs() {
    let (sim, b2bua, uac, callee, counters) = charged_setup(OcsConfig::default(), "a1").await;
    let plan = plan(callee, b2bua.local_addr(), Duration::from_secs(10), false, None);
    let call = tokio::spawn(async move { uac.call(&plan).await });
    let sid = first_session(&sim).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = serde_json::json!({ "session_id": sid }).to_string();
    let (status, _) = crate::ocs::http(sim.control_addr().unwrap(), "POST", "/v1/asr", Some(&body)).await;
    assert_eq!(status, 200);
    let report = tokio::time::timeout(Duration::from_secs(5), call).await.expect("the call ended").unwrap();
    assert_eq!(report.bye, Some(0), "the caller got a BYE");
    byes(&counters, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = &ro_sessions(&sim)[0];
    assert_eq!(types(s).last().map(String::as_str), Some("termination"), "CCR-T after the ASA");
    let ccr_t = s["requests"].as_array().unwrap().last().unwrap();
    let used = ccr_t["used"]["time"].as_u64();
    assert!(matches!(used, Some(1..=2)), "the CCR-T reports the half second the call lasted: {ccr_t}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true);
}

/// The first Ro session's id, once the simulator has it.
async fn first_session(sim: &charging_ra::ocs::server::OcsServer) -> String {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = ro_sessions(sim).first() {
            return s["session_id"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < end, "no Ro session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The CCR-Us of a session that carried `reason`, as (used seconds, reasons).
fn updates_with_reason(s: &serde_json::Value, reason: i64) -> Vec<serde_json::Value> {
    s["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["request_type"] == "update")
        .filter(|r| r["reporting_reasons"].as_array().is_some_and(|a| a.iter().any(|x| x.as_i64() == Some(reason))))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_rar_is_answered_by_a_ccr_u_reporting_the_time_used() {
    let mut ocs = OcsConfig::default();
    ocs.ro.rating_groups.push(rating_group(30));
    let (sim, b2bua, uac, callee, _) = charged_setup(ocs, "r1").await;
    let plan = plan(callee, b2bua.local_addr(), Duration::from_millis(3000), false, None);
    let call = tokio::spawn(async move { uac.call(&plan).await });
    let sid = first_session(&sim).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = serde_json::json!({ "session_id": sid }).to_string();
    let (status, _) = crate::ocs::http(sim.control_addr().unwrap(), "POST", "/v1/rar", Some(&body)).await;
    assert_eq!(status, 200);
    let report = call.await.unwrap();
    assert_eq!((report.invite, report.bye), (200, Some(200)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = &ro_sessions(&sim)[0];
    // RFC 4006 §5.5: RAA, then CCR-U with Reporting-Reason FORCED_REAUTHORISATION (7) and the usage so far.
    let forced = updates_with_reason(s, 7);
    assert_eq!(forced.len(), 1, "one CCR-U for the RAR: {s}");
    assert!(matches!(forced[0]["used"]["time"].as_u64(), Some(1..=2)), "the 1.5 s used by then: {}", forced[0]);
    let used = s["rating_groups"]["100"]["reported_used"]["time"].as_u64().unwrap();
    assert!((3..=4).contains(&used), "3 s reported over the CCR-U and the CCR-T, once: {used}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true);
}

#[tokio::test]
async fn an_expired_validity_time_reauthorizes_with_the_time_used() {
    let mut ocs = OcsConfig::default();
    let mut rg = rating_group(30);
    rg.validity_time = Duration::from_secs(1);
    ocs.ro.rating_groups.push(rg);
    let (sim, b2bua, uac, callee, _) = charged_setup(ocs, "v1").await;
    let plan = plan(callee, b2bua.local_addr(), Duration::from_millis(2500), false, None);
    let report = uac.call(&plan).await;
    assert_eq!((report.invite, report.bye), (200, Some(200)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = &ro_sessions(&sim)[0];
    // RFC 4006 §5.1.2: Validity-Time over, CCR-U with Reporting-Reason VALIDITY_TIME (4) and the usage.
    let expired = updates_with_reason(s, 4);
    assert!(!expired.is_empty(), "a CCR-U when the 1 s Validity-Time ran out: {s}");
    assert!(expired.iter().all(|u| u["used"]["time"].as_u64().is_some_and(|t| t >= 1)), "{expired:?}");
    let used = s["rating_groups"]["100"]["reported_used"]["time"].as_u64().unwrap();
    assert!((3..=4).contains(&used), "2.5 s reported over the CCR-Us and the CCR-T, once: {used}");
    assert_eq!(sim.ledger_json()["check"]["clean"], true);
}

#[tokio::test]
async fn a_caller_over_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sim, b2bua, _, _, counters) = charged_setup(OcsConfig::default(), "t1").await;
    let node = b2bua.local_addr();
    let mut tcp = tokio::net::TcpStream::connect(node).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let msg = |method: &str, cseq: u32, to_tag: &str, branch: &str| {
        format!(
            "{method} sip:bob@{node};transport=tcp SIP/2.0\r\nv: SIP/2.0/TCP {me};branch=z9hG4bK{branch}\r\n\
             f: <sip:caller@{me}>;tag=tc\r\nt: <sip:bob@{node}>{to_tag}\r\ni: tcp-call-1\r\nCSeq: {cseq} {method}\r\n\
             m: <sip:caller@{me};transport=tcp>\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n"
        )
    };
    let mut buf = Vec::new();
    let mut read_until = async |tcp: &mut tokio::net::TcpStream, code: &str| -> String {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: ").and_then(|v| v.trim().parse().ok()))
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    buf.drain(..i + 4 + len);
                    if text.starts_with(code) {
                        return text;
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tcp.write_all(msg("INVITE", 1, "", "t1").as_bytes()).await.unwrap();
    let ok = read_until(&mut tcp, "SIP/2.0 200").await;
    let tag =
        ok.lines().find_map(|l| l.strip_prefix("To: ")).and_then(|v| v.split(";tag=").nth(1)).unwrap().to_string();
    let to_tag = format!(";tag={tag}");
    tcp.write_all(msg("ACK", 1, &to_tag, "t2").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(msg("BYE", 2, &to_tag, "t3").as_bytes()).await.unwrap();
    read_until(&mut tcp, "SIP/2.0 200").await;
    byes(&counters, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(types(&ro_sessions(&sim)[0]), ["initial", "termination"]);
    // A stream whose framing is lost (no Content-Length) is closed, and the node goes on.
    let mut bad = tokio::net::TcpStream::connect(node).await.unwrap();
    bad.write_all(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKz\r\n\r\n").await.unwrap();
    let mut one = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), bad.read(&mut one)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert_eq!(b2bua.stats().await.unwrap().ended, 1);
}

/// A raw UDP endpoint for exact sequences.
struct Raw(UdpSocket);

impl Raw {
    async fn bind() -> Raw {
        Raw(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
    async fn send(&self, to: SocketAddr, text: &str) {
        self.0.send_to(text.replace('\n', "\r\n").as_bytes(), to).await.unwrap();
    }
    async fn recv(&self) -> charging_ra::sip::Message {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(3), self.0.recv_from(&mut buf)).await.unwrap().unwrap();
            let m = charging_ra::sip::Message::parse(&buf[..n]).unwrap();
            if m.code() != 100 {
                return m;
            }
        }
    }
    async fn reply(&self, req: &charging_ra::sip::Message, code: u16) {
        let r = req.response(code, "X", Some("callee"));
        let (h, p) = req.top_via().unwrap().response_target();
        self.0.send_to(&r.to_bytes(), format!("{h}:{p}")).await.unwrap();
    }
}

#[tokio::test]
async fn a_cancel_before_the_answer_cancels_leg_b_and_ends_the_charging() {
    let sim = sim(OcsConfig::default()).await;
    let engine = Engine::start(node_config(&sim, "c1", None, free_port().await)).await.unwrap();
    connected(&engine).await;
    let callee = Raw::bind().await;
    let b2bua = B2bua::start(b2bua_config("127.0.0.1:0".parse().unwrap(), callee.addr()), engine).await.unwrap();
    let node = b2bua.local_addr();
    let caller = Raw::bind().await;
    let a = caller.addr();
    let head = |method: &str| {
        format!(
            "{method} sip:bob@{node} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKcancel1\nFrom: <sip:a@{a}>;tag=ca\n\
             To: <sip:bob@{node}>\nCall-ID: cancel-1\nCSeq: 1 {method}\nContact: <sip:a@{a}>\nMax-Forwards: 70\n\
             Content-Length: 0\n\n"
        )
    };
    caller.send(node, &head("INVITE")).await;
    let inv = callee.recv().await;
    assert_eq!(inv.method(), "INVITE");
    callee.reply(&inv, 180).await;
    assert_eq!(caller.recv().await.code(), 180);
    caller.send(node, &head("CANCEL")).await;
    let mut got = [caller.recv().await, caller.recv().await];
    got.sort_by_key(|m| m.code());
    assert_eq!((got[0].code(), got[0].method()), (200, "CANCEL"), "§9.2: the CANCEL is answered");
    assert_eq!((got[1].code(), got[1].method()), (487, "INVITE"), "§9.2: and the INVITE 487");
    let cancel = callee.recv().await;
    assert_eq!(cancel.method(), "CANCEL", "§9.1: leg B's INVITE is cancelled");
    assert_eq!(cancel.top_via().unwrap().branch, inv.top_via().unwrap().branch, "same branch as the INVITE");
    callee.reply(&cancel, 200).await;
    callee.reply(&inv, 487).await;
    let ack = callee.recv().await;
    assert_eq!(ack.method(), "ACK", "the 487 is ACKed by leg B's transaction");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = &ro_sessions(&sim)[0];
    assert_eq!(types(s), ["initial", "termination"]);
    assert_eq!(s["rating_groups"]["100"]["reported_used"]["time"].as_u64(), Some(0), "nothing used");
    let st = b2bua.stats().await.unwrap();
    assert_eq!(st.active, 0, "{st:?}");
}

#[tokio::test]
async fn metrics_expose_peers_sessions_and_calls() {
    let (sim, b2bua, uac, callee, _) = charged_setup(OcsConfig::default(), "m1").await;
    let engine = {
        // The node's front: a replicating engine's routes with the B2BUA's.
        let store = AnyStore::memory();
        let e = Engine::start(node_config(&sim, "m2", Some(&store), free_port().await)).await.unwrap();
        connected(&e).await;
        e
    };
    let rg = charging_ra::api::RatingGroupRequest { rating_group: 100, service_id: None, requested: Units::default() };
    engine.open_session(charging_ra::api::App::Ro, None, None, vec![rg]).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (front, _task) = charging_ra::api::http::serve_with(engine, listener, Some(b2bua.clone())).unwrap();
    let call = tokio::spawn({
        let plan = plan(callee, b2bua.local_addr(), Duration::from_millis(800), false, None);
        async move { uac.call(&plan).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, text) = crate::ocs::http(front, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() && name.starts_with("charging_ra_"), "exposition format: {line}");
    }
    assert!(text.contains("charging_ra_peer_up{peer=\"ocs1.ocs.localdomain\"} 1"), "{text}");
    let peer_state = "charging_ra_diameter_peer_state{peer=\"ocs1.ocs.localdomain\",state=";
    assert!(text.contains(&format!("{peer_state}\"i_open\"}} 1")), "{text}");
    assert!(text.contains(&format!("{peer_state}\"closed\"}} 0")), "a series per state: {text}");
    assert!(
        text.contains("charging_ra_diameter_peer_watchdog{peer=\"ocs1.ocs.localdomain\",state=\"okay\"} 1"),
        "{text}"
    );
    assert!(text.contains("charging_ra_diameter_peer_pending_requests{peer=\"ocs1.ocs.localdomain\"} "), "{text}");
    assert!(text.contains("charging_ra_diameter_requests_proxied_total 0"), "{text}");
    assert!(text.contains("charging_ra_http_calls_forwarded_total 0"), "{text}");
    assert!(text.contains("charging_ra_sip_calls_active 1"), "{text}");
    assert!(text.contains("# TYPE charging_ra_diameter_messages_total counter"), "{text}");
    // The admission and bad-input counters (docs/hardening.md), zero on a quiet node.
    for line in [
        "charging_ra_diameter_too_busy_answered_total{peer=\"ocs1.ocs.localdomain\"} 0",
        "charging_ra_diameter_answers_unmatched_total{peer=\"ocs1.ocs.localdomain\"} 0",
        "charging_ra_diameter_incoming_in_flight 0",
        "charging_ra_diameter_connections_refused_total 0",
        "charging_ra_sessions_refused_total 0",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(text.contains("charging_ra_sessions{app=\"ro\",state=\"Open\"} 1"), "{text}");
    assert!(text.contains("charging_ra_replication_sessions 1"), "{text}");
    assert!(text.contains("charging_ra_store_batch_seconds_count "), "{text}");
    assert!(!text.contains("charging_ra_store_batch_seconds_count 0\n"), "group commits timed: {text}");
    assert_eq!(call.await.unwrap().bye, Some(200));
    let (_, text) = crate::ocs::http(front, "GET", "/metrics", None).await;
    assert!(text.contains("charging_ra_sip_calls_ended_total 1"), "{text}");
}
