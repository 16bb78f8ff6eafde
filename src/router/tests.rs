//! The routing core against simulated peers, with a manual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::codec::{AppId, Avp, CommandCode, CommandFlags, Message, ResultCode, code};
use crate::dict::Dictionary;
use crate::peer::{Application, ConnId, EndToEndIds, LocalIdentity, PeerConfig};

/// How a simulated remote peer treats application requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answer(u32),
    Silent,
}

struct Remote {
    id: LocalIdentity,
    mode: Mode,
    watchdog: bool,
    received: Vec<Message>,
}

struct Sim {
    router: Router,
    now: Instant,
    remotes: Vec<Remote>,
    conn_peer: HashMap<ConnId, usize>,
    next_conn: u64,
    answers: Vec<(RequestToken, Message)>,
    failed: Vec<(RequestToken, ResultCode)>,
    requests: Vec<(PeerId, Message)>,
    closed: Vec<ConnId>,
    /// Messages sent on accepted connections that belong to no simulated remote.
    other: Vec<(ConnId, Message)>,
    /// Connection attempts are held here instead of succeeding at once, while `hold_connects`.
    hold_connects: bool,
    held: Vec<PeerId>,
}

fn local() -> LocalIdentity {
    LocalIdentity::charging_client("as1.example.net", "example.net", 100)
}

fn remote(host: &str) -> Remote {
    let mut id = LocalIdentity::charging_client(host, "ocs.example.net", 7);
    id.applications = vec![Application::Auth(AppId::CREDIT_CONTROL)];
    Remote { id, mode: Mode::Answer(2001), watchdog: true, received: Vec::new() }
}

impl Sim {
    fn new(routes: Vec<Route>, remotes: Vec<Remote>) -> Sim {
        Sim::new_with(routes, remotes, false)
    }

    /// With `hold_connects`, connection attempts wait in `held` until [`Sim::connect_held`].
    fn new_with(routes: Vec<Route>, remotes: Vec<Remote>, hold_connects: bool) -> Sim {
        let peers = remotes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut c = PeerConfig::new(local(), Some(r.id.origin_host.clone()), true);
                c.jitter_seed = i as u64 + 1;
                c
            })
            .collect();
        let router = Router::new(
            RouterConfig::new(local(), routes),
            peers,
            Arc::new(Dictionary::builtin()),
            EndToEndIds::new(5, 0),
        );
        let mut s = Sim {
            router,
            now: Instant::now(),
            remotes,
            conn_peer: HashMap::new(),
            next_conn: 1,
            answers: vec![],
            failed: vec![],
            requests: vec![],
            closed: vec![],
            other: vec![],
            hold_connects,
            held: vec![],
        };
        s.router.start(s.now);
        s.run();
        s
    }

    fn two_ocs() -> Sim {
        Sim::new(
            vec![route("ocs.example.net", 0, 1), route("ocs.example.net", 1, 2)],
            vec![remote("ocs1.ocs.example.net"), remote("ocs2.ocs.example.net")],
        )
    }

    fn frame(m: &Message) -> Bytes {
        m.encode().unwrap()
    }

    /// Carries out outputs until none are left, playing the remotes.
    fn run(&mut self) {
        while let Some(o) = self.router.poll_output() {
            match o {
                RouterOutput::Connect(p) if self.hold_connects => self.held.push(p),
                RouterOutput::Connect(p) => {
                    let c = ConnId(self.next_conn);
                    self.next_conn += 1;
                    self.conn_peer.insert(c, p.0);
                    self.router.handle_connected(self.now, p, c);
                }
                RouterOutput::Send(c, m) => self.remote_receives(c, m),
                RouterOutput::Close(c) => {
                    self.closed.push(c);
                    if self.conn_peer.remove(&c).is_some() {
                        self.router.handle_disconnected(self.now, c);
                    }
                }
                RouterOutput::Answer(t, m) => self.answers.push((t, m)),
                RouterOutput::Failed { token, result_code, .. } => self.failed.push((token, result_code)),
                RouterOutput::Request(p, m) => self.requests.push((p, m)),
                RouterOutput::PeerEvent(..) => {}
            }
        }
    }

    fn remote_receives(&mut self, c: ConnId, m: Message) {
        let Some(&i) = self.conn_peer.get(&c) else {
            self.other.push((c, m));
            return;
        };
        // Everything we send must be valid on the wire.
        let bytes = Sim::frame(&m);
        let back = Message::decode(bytes).unwrap();
        if m.is_request() {
            Dictionary::builtin()
                .validate(&back, &Default::default())
                .unwrap_or_else(|e| panic!("we sent an invalid request: {e}"));
        }
        let r = &mut self.remotes[i];
        r.received.push(m.clone());
        if !m.is_request() {
            return;
        }
        let mut a = Message::answer_to(&m);
        match m.header.code {
            CommandCode::CAPABILITIES_EXCHANGE => {
                a.push(Avp::u32(code::RESULT_CODE, 2001));
                a.avps.extend(r.id.capability_avps());
            }
            CommandCode::DEVICE_WATCHDOG => {
                if !r.watchdog {
                    return;
                }
                a.push(Avp::u32(code::RESULT_CODE, 2001));
                a.avps.extend(r.id.origin_avps());
            }
            _ => match r.mode {
                Mode::Silent => return,
                Mode::Answer(rc) => {
                    if rc / 1000 == 3 {
                        a.header.flags = a.header.flags.with(CommandFlags::ERROR, true);
                    }
                    a.push(Avp::u32(code::RESULT_CODE, rc));
                    a.avps.extend(r.id.origin_avps());
                    if rc == 3006 {
                        a.push(Avp::utf8(code::REDIRECT_HOST, "aaa://ocs2.ocs.example.net:3868"));
                        a.push(Avp::i32(code::REDIRECT_HOST_USAGE, 2));
                        a.push(Avp::u32(code::REDIRECT_MAX_CACHE_TIME, 60));
                    }
                }
            },
        }
        self.router.handle_frame(self.now, c, Sim::frame(&a));
    }

    /// The held connection attempts succeed.
    fn connect_held(&mut self) {
        for p in std::mem::take(&mut self.held) {
            let c = ConnId(self.next_conn);
            self.next_conn += 1;
            self.conn_peer.insert(c, p.0);
            self.router.handle_connected(self.now, p, c);
        }
        self.run();
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.router.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.router.handle_timeout(self.now);
            self.run();
        }
        self.now = end;
    }

    fn ccr(&self, session: &str) -> Message {
        Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
            .with(Avp::utf8(code::SESSION_ID, session))
            .with(Avp::utf8(code::ORIGIN_HOST, "as1.example.net"))
            .with(Avp::utf8(code::ORIGIN_REALM, "example.net"))
            .with(Avp::utf8(code::DESTINATION_REALM, "ocs.example.net"))
            .with(Avp::u32(code::AUTH_APPLICATION_ID, 4))
            .with(Avp::utf8(code::SERVICE_CONTEXT_ID, "32260@3gpp.org"))
            .with(Avp::i32(code::CC_REQUEST_TYPE, 1))
            .with(Avp::u32(code::CC_REQUEST_NUMBER, 0))
    }

    fn send(&mut self, m: Message, token: RequestToken) {
        self.router.send_request(self.now, m, token, None);
        self.run();
    }

    fn conn_of(&self, peer: usize) -> ConnId {
        self.router.peers()[peer].connection().unwrap()
    }

    fn app_requests_received(&self, peer: usize) -> Vec<&Message> {
        self.remotes[peer]
            .received
            .iter()
            .filter(|m| m.header.code == CommandCode::CREDIT_CONTROL && m.is_request())
            .collect()
    }
}

fn route(realm: &str, peer: usize, priority: u32) -> Route {
    Route { realm: realm.into(), application: None, peer: PeerId(peer), priority, weight: 1 }
}

#[test]
fn request_goes_to_the_preferred_peer_and_the_answer_comes_back() {
    let mut s = Sim::two_ocs();
    assert!(s.router.peers().iter().all(|p| p.is_available()));
    s.send(s.ccr("s1"), 1);
    assert_eq!(s.answers.len(), 1);
    assert_eq!(s.answers[0].1.result_code(), Some(ResultCode::SUCCESS));
    assert_eq!(s.app_requests_received(0).len(), 1);
    assert_eq!(s.app_requests_received(1).len(), 0, "priority 2 is the backup");
    assert_eq!(s.router.pending(), 0);
    assert_eq!(s.router.metrics(PeerId(0)).answers_in.get(&2001), Some(&1));
}

#[test]
fn suspect_peer_fails_its_pending_requests_over_with_the_t_flag() {
    let mut s = Sim::two_ocs();
    s.remotes[0].mode = Mode::Silent;
    s.remotes[0].watchdog = false;
    s.send(s.ccr("s1"), 7);
    assert!(s.answers.is_empty());
    let first = s.app_requests_received(0)[0].clone();
    assert!(!first.header.flags.is_retransmit());
    // Tw (30 ± 2 s) idle: DWR; another Tw unanswered: SUSPECT -> failover.
    s.advance(Duration::from_secs(9));
    assert!(s.answers.is_empty() && s.failed.is_empty(), "the answer timeout (10 s) has not passed");
    let mut s = Sim::two_ocs();
    s.router.config.answer_timeout = Duration::from_secs(120);
    s.remotes[0].mode = Mode::Silent;
    s.remotes[0].watchdog = false;
    s.send(s.ccr("s1"), 7);
    s.advance(Duration::from_secs(65));
    assert_eq!(s.answers.len(), 1, "answered by the alternate peer");
    let resent = s.app_requests_received(1)[0].clone();
    assert!(resent.header.flags.is_retransmit(), "T flag on the failed-over request (RFC 6733 §5.5.4)");
    let first = s.app_requests_received(0)[0].clone();
    assert_eq!(resent.header.end_to_end, first.header.end_to_end, "same End-to-End id");
    assert_eq!(resent.session_id(), Some("s1"));
    assert_eq!(s.router.metrics(PeerId(0)).failovers, 1);
    // A late answer from the first peer is dropped: the request is complete.
    let mut late = Message::answer_to(&first);
    late.push(Avp::u32(code::RESULT_CODE, 2001));
    late.avps.extend(s.remotes[0].id.origin_avps());
    let c = s.conn_of(0);
    s.router.handle_frame(s.now, c, Sim::frame(&late));
    s.run();
    assert_eq!(s.answers.len(), 1);
}

#[test]
fn lost_connection_without_alternate_fails_with_3002() {
    let mut s = Sim::new(vec![route("ocs.example.net", 0, 1)], vec![remote("ocs1.ocs.example.net")]);
    s.remotes[0].mode = Mode::Silent;
    s.send(s.ccr("s1"), 3);
    let c = s.conn_of(0);
    s.conn_peer.remove(&c);
    s.router.handle_disconnected(s.now, c);
    s.run();
    assert_eq!(s.failed, vec![(3, ResultCode::UNABLE_TO_DELIVER)]);
    assert_eq!(s.router.pending(), 0);
}

/// A request made while the node's first connection to its peer is still opening waits for it and goes out once
/// the CEA is in; a request that waits past its deadline, or whose peer's first connection attempt fails, gets 3002.
#[test]
fn requests_before_the_first_cea_wait_for_it_within_their_deadline() {
    let one = || Sim::new_with(vec![route("ocs.example.net", 0, 1)], vec![remote("ocs1.ocs.example.net")], true);
    let mut s = one();
    s.send(s.ccr("s1"), 1);
    assert_eq!((s.failed.len(), s.router.pending()), (0, 1), "waiting, not failed");
    s.advance(Duration::from_millis(50));
    s.connect_held();
    assert_eq!(s.app_requests_received(0).len(), 1, "sent once the peer opened");
    assert_eq!(s.answers.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1]);
    assert!(s.failed.is_empty());

    // No CEA before the deadline: 3002 at the deadline, not before.
    let mut s = one();
    s.send(s.ccr("s2"), 2);
    s.advance(s.router.config.answer_timeout - Duration::from_millis(1));
    assert!(s.failed.is_empty());
    s.advance(Duration::from_millis(1));
    assert_eq!(s.failed, [(2, ResultCode::UNABLE_TO_DELIVER)]);
    assert_eq!(s.router.pending(), 0);

    // The first connection attempt fails: nothing is opening any more, so 3002 at once.
    let mut s = one();
    s.send(s.ccr("s3"), 3);
    let p = s.held.pop().unwrap();
    s.router.handle_connect_failed(s.now, p);
    s.run();
    assert_eq!(s.failed, [(3, ResultCode::UNABLE_TO_DELIVER)]);
}

/// Only a first connection is waited for: once the peer has been open, a request while it reconnects fails at once
/// (the session's failure handling, CCFH, decides), as before.
#[test]
fn a_peer_reconnecting_after_it_was_open_is_not_waited_for() {
    let mut s = Sim::new(vec![route("ocs.example.net", 0, 1)], vec![remote("ocs1.ocs.example.net")]);
    s.hold_connects = true;
    let c = s.conn_of(0);
    s.conn_peer.remove(&c);
    s.router.handle_disconnected(s.now, c);
    s.run();
    for _ in 0..600 {
        if !s.held.is_empty() {
            break;
        }
        s.advance(Duration::from_millis(100));
    }
    assert_eq!(s.held.len(), 1, "reconnecting");
    assert_eq!(s.router.peers()[0].state(), PeerState::WaitConnAck);
    s.send(s.ccr("s1"), 1);
    assert_eq!(s.failed, [(1, ResultCode::UNABLE_TO_DELIVER)]);
}

#[test]
fn unknown_realm_is_3003_and_no_available_peer_is_3002() {
    let mut s = Sim::two_ocs();
    let mut m = s.ccr("s1");
    m.avps.retain(|a| !a.is(code::DESTINATION_REALM, 0));
    m.push(Avp::utf8(code::DESTINATION_REALM, "elsewhere.net"));
    s.send(m, 1);
    assert_eq!(s.failed, vec![(1, ResultCode::REALM_NOT_SERVED)]);
    let mut s = Sim::new(vec![route("ocs.example.net", 0, 1)], vec![remote("ocs1.ocs.example.net")]);
    s.router.stop(s.now, crate::peer::DisconnectCause::Rebooting);
    s.run();
    s.send(s.ccr("s2"), 2);
    assert_eq!(s.failed, vec![(2, ResultCode::UNABLE_TO_DELIVER)]);
}

#[test]
fn too_busy_is_retried_on_another_peer_and_redirects_are_followed() {
    let mut s = Sim::two_ocs();
    s.remotes[0].mode = Mode::Answer(3004);
    s.send(s.ccr("s1"), 1);
    assert_eq!(s.answers.len(), 1);
    assert_eq!(s.answers[0].1.result_code(), Some(ResultCode::SUCCESS));
    assert_eq!(s.app_requests_received(1).len(), 1);
    // A redirect agent at peer 0 names ocs2 with ALL_REALM for 60 s: this request and the next go there.
    let mut s = Sim::two_ocs();
    s.remotes[0].mode = Mode::Answer(3006);
    s.send(s.ccr("s1"), 1);
    assert_eq!(s.answers[0].1.result_code(), Some(ResultCode::SUCCESS));
    s.send(s.ccr("s2"), 2);
    assert_eq!(s.app_requests_received(0).len(), 1, "the cached redirect skips the agent");
    assert_eq!(s.app_requests_received(1).len(), 2);
}

#[test]
fn pending_limit_answers_too_busy() {
    let mut s = Sim::two_ocs();
    s.router.config.max_pending = 1;
    s.remotes[0].mode = Mode::Silent;
    s.send(s.ccr("s1"), 1);
    s.send(s.ccr("s2"), 2);
    assert_eq!(s.failed, vec![(2, ResultCode::TOO_BUSY)]);
}

/// A server-side router with one accepted client connection, for incoming-request tests.
fn server() -> (Router, Instant, ConnId) {
    let mut ocs = LocalIdentity::charging_client("ocs1.ocs.example.net", "ocs.example.net", 1);
    ocs.applications = vec![Application::Auth(AppId::CREDIT_CONTROL)];
    let mut cfg = RouterConfig::new(ocs.clone(), vec![]);
    cfg.accept_peers = vec!["*".into()];
    let mut r = Router::new(cfg, vec![], Arc::new(Dictionary::builtin()), EndToEndIds::new(1, 0));
    let now = Instant::now();
    let conn = ConnId(1);
    r.handle_accepted(conn);
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.header.flags = CommandFlags(CommandFlags::REQUEST);
    cer.avps = local().capability_avps();
    r.handle_frame(now, conn, cer.encode().unwrap());
    let out: Vec<_> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(
        out.iter().any(|o| matches!(o, RouterOutput::Send(_, m) if m.result_code() == Some(ResultCode::SUCCESS))),
        "{out:?}"
    );
    (r, now, conn)
}

fn sent_answers(r: &mut Router) -> Vec<Message> {
    std::iter::from_fn(|| r.poll_output())
        .filter_map(|o| if let RouterOutput::Send(_, m) = o { Some(m) } else { None })
        .collect()
}

fn client_ccr(e2e: u32, hbh: u32) -> Message {
    let mut m = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
        .with(Avp::utf8(code::SESSION_ID, "as1;1"))
        .with(Avp::utf8(code::ORIGIN_HOST, "as1.example.net"))
        .with(Avp::utf8(code::ORIGIN_REALM, "example.net"))
        .with(Avp::utf8(code::DESTINATION_REALM, "ocs.example.net"))
        .with(Avp::u32(code::AUTH_APPLICATION_ID, 4))
        .with(Avp::utf8(code::SERVICE_CONTEXT_ID, "32260@3gpp.org"))
        .with(Avp::i32(code::CC_REQUEST_TYPE, 1))
        .with(Avp::u32(code::CC_REQUEST_NUMBER, 0))
        .with(Avp::grouped(
            code::PROXY_INFO,
            &[Avp::utf8(280, "dra.example.net"), Avp::octets(33, Bytes::from_static(b"st"))],
        ));
    m.header.end_to_end = crate::codec::EndToEndId(e2e);
    m.header.hop_by_hop = HopByHopId(hbh);
    m
}

#[test]
fn duplicates_get_the_cached_answer_and_proxy_info_is_echoed() {
    let (mut r, now, conn) = server();
    r.handle_frame(now, conn, client_ccr(77, 1).encode().unwrap());
    let delivered: Vec<_> = std::iter::from_fn(|| r.poll_output()).collect();
    let [RouterOutput::Request(peer, req)] = &delivered[..] else { panic!("{delivered:?}") };
    // The same request again (a retransmission with the T flag) while in progress: dropped.
    let mut again = client_ccr(77, 2);
    again.header.flags = again.header.flags.with(CommandFlags::RETRANSMIT, true);
    r.handle_frame(now, conn, again.encode().unwrap());
    assert!(r.poll_output().is_none());
    let mut answer = Message::answer_to(req);
    answer.push(Avp::u32(code::RESULT_CODE, 2001));
    answer.push(Avp::utf8(code::ORIGIN_HOST, "ocs1.ocs.example.net"));
    answer.push(Avp::utf8(code::ORIGIN_REALM, "ocs.example.net"));
    r.answer_request(now, *peer, answer);
    let sent = sent_answers(&mut r);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].find(code::PROXY_INFO, 0).is_some(), "Proxy-Info echoed (RFC 6733 §6.2)");
    // After the answer: a retransmission gets the same answer on its own Hop-by-Hop id, not a second processing.
    r.handle_frame(now, conn, again.encode().unwrap());
    let sent = sent_answers(&mut r);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.hop_by_hop, HopByHopId(2));
    assert_eq!(sent[0].result_code(), Some(ResultCode::SUCCESS));
}

#[test]
fn protocol_errors_are_answered_with_the_right_result_code() {
    let (mut r, now, conn) = server();
    // Unknown application (Gx was not negotiated with this client): 3007 with the E bit.
    let mut gx = client_ccr(1, 10);
    gx.header.application_id = AppId::GX;
    r.handle_frame(now, conn, gx.encode().unwrap());
    let a = sent_answers(&mut r);
    assert_eq!(a[0].result_code(), Some(ResultCode::APPLICATION_UNSUPPORTED));
    assert!(a[0].header.flags.is_error());
    // Unknown command: 3001.
    let mut unknown = client_ccr(2, 11);
    unknown.header.code = CommandCode(8_388_600);
    r.handle_frame(now, conn, unknown.encode().unwrap());
    assert_eq!(sent_answers(&mut r)[0].result_code(), Some(ResultCode::COMMAND_UNSUPPORTED));
    // Our own identity in Route-Record: 3005.
    let looped = client_ccr(3, 12).with(Avp::utf8(code::ROUTE_RECORD, "ocs1.ocs.example.net"));
    r.handle_frame(now, conn, looped.encode().unwrap());
    assert_eq!(sent_answers(&mut r)[0].result_code(), Some(ResultCode::LOOP_DETECTED));
    // A request for a realm we do not serve and cannot route: 3003.
    let mut other = client_ccr(4, 13);
    other.avps.retain(|a| !a.is(code::DESTINATION_REALM, 0));
    other.push(Avp::utf8(code::DESTINATION_REALM, "nowhere.net"));
    r.handle_frame(now, conn, other.encode().unwrap());
    let a = sent_answers(&mut r);
    assert_eq!(a[0].result_code(), Some(ResultCode::REALM_NOT_SERVED));
    assert_eq!(a[0].header.hop_by_hop, HopByHopId(13));
    // A missing AVP: 5005 with Failed-AVP, no E bit.
    let mut missing = client_ccr(5, 14);
    missing.avps.retain(|a| !a.is(code::CC_REQUEST_NUMBER, 0));
    r.handle_frame(now, conn, missing.encode().unwrap());
    let a = sent_answers(&mut r);
    assert_eq!(a[0].result_code(), Some(ResultCode::MISSING_AVP));
    assert!(!a[0].header.flags.is_error() && a[0].find(code::FAILED_AVP, 0).is_some());
    // An unknown non-M AVP is fine.
    let extra = client_ccr(6, 15).with(Avp::octets(99_999, Bytes::from_static(b"x")).with_mandatory(false));
    r.handle_frame(now, conn, extra.encode().unwrap());
    assert!(matches!(r.poll_output(), Some(RouterOutput::Request(..))));
    // An answer nobody asked for: dropped silently.
    let mut stray = Message::answer_to(&client_ccr(7, 999));
    stray.push(Avp::u32(code::RESULT_CODE, 2001));
    stray.push(Avp::utf8(code::ORIGIN_HOST, "as1.example.net"));
    stray.push(Avp::utf8(code::ORIGIN_REALM, "example.net"));
    r.handle_frame(now, conn, stray.encode().unwrap());
    assert!(r.poll_output().is_none());
    assert_eq!(r.metrics(PeerId(0)).answers_unmatched, 1, "counted for the metrics");
}

#[test]
fn before_cer_anything_else_closes_and_unknown_peers_get_3010() {
    let cfg = RouterConfig::new(LocalIdentity::charging_client("ocs1.ocs.example.net", "ocs.example.net", 1), vec![]);
    let mut r = Router::new(cfg, vec![], Arc::new(Dictionary::builtin()), EndToEndIds::new(1, 0));
    let now = Instant::now();
    r.handle_accepted(ConnId(1));
    r.handle_frame(now, ConnId(1), client_ccr(1, 1).encode().unwrap());
    assert_eq!(r.poll_output(), Some(RouterOutput::Close(ConnId(1))));
    // A CER from an identity we do not know, with no accept_peers pattern: CEA 3010, then close.
    r.handle_accepted(ConnId(2));
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.avps = local().capability_avps();
    r.handle_frame(now, ConnId(2), cer.encode().unwrap());
    let out: Vec<_> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(matches!(&out[0], RouterOutput::Send(ConnId(2), m) if m.result_code() == Some(ResultCode::UNKNOWN_PEER)));
    assert_eq!(out[1], RouterOutput::Close(ConnId(2)));
    // Garbage that is not Diameter: the connection is closed.
    r.handle_accepted(ConnId(3));
    r.handle_frame(now, ConnId(3), Bytes::from_static(&[1, 0, 0, 20, 0x80, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(r.poll_output(), Some(RouterOutput::Close(ConnId(3))));
    assert_eq!(r.connections_refused(), 3, "each counted for the metrics");
}

#[test]
fn requests_for_another_realm_are_relayed_with_route_record() {
    // A relay: clients in example.net, servers in ocs.example.net behind peer 0.
    let mut s = Sim::new(vec![route("ocs.example.net", 0, 1)], vec![remote("ocs1.ocs.example.net")]);
    s.router.config.accept_peers = vec!["*".into()];
    let conn = ConnId(100);
    s.router.handle_accepted(conn);
    let mut client = local();
    client.origin_host = "client.example.net".into();
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.avps = client.capability_avps();
    s.router.handle_frame(s.now, conn, cer.encode().unwrap());
    s.run();
    let mut req = s.ccr("relayed");
    req.avps[1] = Avp::utf8(code::ORIGIN_HOST, "client.example.net");
    req.header.hop_by_hop = HopByHopId(4242);
    req.header.end_to_end = crate::codec::EndToEndId(31);
    s.router.handle_frame(s.now, conn, req.encode().unwrap());
    s.run();
    let fwd = s.app_requests_received(0)[0].clone();
    assert_eq!(fwd.header.end_to_end.0, 31, "End-to-End id kept");
    let rr: Vec<&str> = fwd.find_all(code::ROUTE_RECORD, 0).filter_map(|a| a.as_utf8().ok()).collect();
    assert_eq!(rr, vec!["client.example.net"], "Route-Record names the peer it came from (RFC 6733 §6.1.9)");
    let back = s
        .other
        .iter()
        .find(|(c, m)| *c == conn && m.header.code == CommandCode::CREDIT_CONTROL)
        .expect("answer relayed back");
    assert_eq!(back.1.header.hop_by_hop, HopByHopId(4242), "the original Hop-by-Hop id restored");
    assert_eq!(back.1.result_code(), Some(ResultCode::SUCCESS));
}

#[test]
fn accept_patterns_match_like_acl_wl() {
    assert!(identity_matches("*", "anyone.example.net"));
    assert!(identity_matches("*.clients.example.net", "as1.clients.example.net"));
    assert!(identity_matches("*.clients.example.net", "AS1.Clients.Example.NET"), "identities compare caseless");
    assert!(!identity_matches("*.clients.example.net", "clients.example.net"), "the suffix alone is not under it");
    assert!(!identity_matches("*.clients.example.net", "evilclients.example.net"), "a label boundary is required");
    assert!(identity_matches("ocs1.example.net", "OCS1.example.net"));
    assert!(!identity_matches("ocs1.example.net", "ocs11.example.net"));
}

/// A CER from `host` on a new accepted connection: what the router does, and the Result-Code it answers with.
fn cer_from(r: &mut Router, now: Instant, conn: u64, host: &str) -> (Vec<RouterOutput>, Option<ResultCode>) {
    r.handle_accepted(ConnId(conn));
    let mut id = local();
    id.origin_host = host.into();
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.avps = id.capability_avps();
    r.handle_frame(now, ConnId(conn), cer.encode().unwrap());
    let out: Vec<_> = std::iter::from_fn(|| r.poll_output()).collect();
    let rc = out.iter().find_map(|o| match o {
        RouterOutput::Send(c, m) if *c == ConnId(conn) => m.result_code(),
        _ => None,
    });
    (out, rc)
}

#[test]
fn cer_from_a_pattern_is_accepted_and_others_get_3010() {
    let mut cfg =
        RouterConfig::new(LocalIdentity::charging_client("ocs1.ocs.example.net", "ocs.example.net", 1), vec![]);
    cfg.accept_peers = vec!["*.clients.example.net".into()];
    let mut r = Router::new(cfg, vec![], Arc::new(Dictionary::builtin()), EndToEndIds::new(1, 0));
    let now = Instant::now();
    for (conn, host, accepted) in [(1, "as1.clients.example.net", true), (2, "as1.example.net", false)] {
        let (out, rc) = cer_from(&mut r, now, conn, host);
        let want = if accepted { ResultCode::SUCCESS } else { ResultCode::UNKNOWN_PEER };
        assert_eq!(rc, Some(want), "{host}: {out:?}");
        assert_eq!(out.contains(&RouterOutput::Close(ConnId(conn))), !accepted, "{host}");
    }
    assert_eq!(r.connections_refused(), 1);
    // Remembered accepted identities are bounded: one more new identity is refused, a known one still gets in.
    r.config.max_accepted_peers = 1;
    for (conn, host, accepted) in [(3, "as2.clients.example.net", false), (4, "as1.clients.example.net", true)] {
        let (out, rc) = cer_from(&mut r, now, conn, host);
        assert_eq!(rc == Some(ResultCode::UNKNOWN_PEER), !accepted, "{host}: {out:?}");
    }
}

#[test]
fn a_full_table_of_accepted_peers_gives_a_closed_peer_s_entry_to_a_new_identity() {
    // Clients restarted under new names (containers): the table of accepted identities must not fill up for good.
    let mut ocs = LocalIdentity::charging_client("ocs1.ocs.example.net", "ocs.example.net", 1);
    ocs.applications = vec![Application::Auth(AppId::CREDIT_CONTROL)];
    let mut cfg = RouterConfig::new(ocs, vec![]);
    cfg.accept_peers = vec!["*.clients.example.net".into()];
    cfg.max_accepted_peers = 1;
    let mut r = Router::new(cfg, vec![], Arc::new(Dictionary::builtin()), EndToEndIds::new(1, 0));
    let now = Instant::now();
    assert_eq!(cer_from(&mut r, now, 1, "pod-a.clients.example.net").1, Some(ResultCode::SUCCESS));
    // pod-a has a request in process when it goes.
    r.handle_frame(now, ConnId(1), client_ccr(1, 7).encode().unwrap());
    let out: Vec<_> = std::iter::from_fn(|| r.poll_output()).collect();
    let [RouterOutput::Request(peer, req)] = &out[..] else { panic!("{out:?}") };
    let (peer, req) = (*peer, req.clone());
    // While pod-a is connected, a new identity finds the table full.
    assert_eq!(cer_from(&mut r, now, 2, "pod-b.clients.example.net").1, Some(ResultCode::UNKNOWN_PEER));
    r.handle_disconnected(now, ConnId(1));
    while r.poll_output().is_some() {}
    // Closed and owing nothing now: its entry goes to the next new identity, with counters of its own.
    assert_eq!(cer_from(&mut r, now, 3, "pod-b.clients.example.net").1, Some(ResultCode::SUCCESS));
    assert_eq!(r.peers().len(), 1);
    assert_eq!(r.peers()[peer.0].identity(), Some("pod-b.clients.example.net"));
    assert_eq!(r.metrics(peer).messages_in.values().sum::<u64>(), 1, "pod-b's CER only");
    // The application's late answer to pod-a's request is not sent to pod-b.
    let mut answer = Message::answer_to(&req);
    answer.push(Avp::u32(code::RESULT_CODE, 2001));
    r.answer_request(now, peer, answer);
    assert!(sent_answers(&mut r).is_empty());
    // pod-a back now is a new identity again, and pod-b, connected, holds the only entry.
    assert_eq!(cer_from(&mut r, now, 4, "pod-a.clients.example.net").1, Some(ResultCode::UNKNOWN_PEER));
}

#[test]
fn requests_beyond_max_incoming_get_3004_and_a_retransmission_is_a_fresh_try() {
    let (mut r, now, conn) = server();
    r.config.max_incoming = 2;
    let mut delivered = Vec::new();
    for e2e in 1..=2 {
        r.handle_frame(now, conn, client_ccr(e2e, e2e).encode().unwrap());
        let out: Vec<_> = std::iter::from_fn(|| r.poll_output()).collect();
        let [RouterOutput::Request(peer, req)] = &out[..] else { panic!("{out:?}") };
        delivered.push((*peer, req.clone()));
    }
    assert_eq!(r.in_flight(), 2);
    // The third, while two are in process: 3004 with the E bit, Error-Message, same Hop-by-Hop id.
    r.handle_frame(now, conn, client_ccr(3, 3).encode().unwrap());
    let a = sent_answers(&mut r);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].result_code(), Some(ResultCode::TOO_BUSY));
    assert!(a[0].header.flags.is_error() && a[0].find(code::ERROR_MESSAGE, 0).is_some());
    assert_eq!(a[0].header.hop_by_hop, HopByHopId(3));
    // A retransmission of one in process is still a duplicate (dropped), not refused.
    let mut again = client_ccr(1, 11);
    again.header.flags = again.header.flags.with(CommandFlags::RETRANSMIT, true);
    r.handle_frame(now, conn, again.encode().unwrap());
    assert!(r.poll_output().is_none());
    // Once one is answered, the refused request's retransmission is processed: it was not remembered.
    let (peer, req) = &delivered[0];
    let mut answer = Message::answer_to(req);
    answer.push(Avp::u32(code::RESULT_CODE, 2001));
    answer.push(Avp::utf8(code::ORIGIN_HOST, "ocs1.ocs.example.net"));
    answer.push(Avp::utf8(code::ORIGIN_REALM, "ocs.example.net"));
    r.answer_request(now, *peer, answer);
    assert_eq!(sent_answers(&mut r).len(), 1);
    let mut retry = client_ccr(3, 13);
    retry.header.flags = retry.header.flags.with(CommandFlags::RETRANSMIT, true);
    r.handle_frame(now, conn, retry.encode().unwrap());
    assert!(matches!(r.poll_output(), Some(RouterOutput::Request(..))));
    assert_eq!(r.metrics(*peer).too_busy, 1);
    assert_eq!(r.metrics(*peer).errors_answered, 1);
}
