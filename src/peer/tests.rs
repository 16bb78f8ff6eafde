//! Deterministic tests of the peer machine with a manual clock: every transition the issue names.

use std::time::{Duration, Instant};

use super::*;
use crate::codec::{AppId, Avp, CommandCode, Message, ResultCode, code};

const TW: Duration = Duration::from_secs(30);

struct H {
    peer: Peer,
    now: Instant,
    remote: LocalIdentity,
}

impl H {
    fn new(local_host: &str, remote_host: &str) -> H {
        let local = LocalIdentity::charging_client(local_host, "example.net", 100);
        let mut remote = LocalIdentity::charging_client(remote_host, "example.net", 7);
        remote.product_name = "ocs".into();
        let config = PeerConfig::new(local, Some(remote_host.to_string()), true);
        H { peer: Peer::new(config, EndToEndIds::new(1, 0)), now: Instant::now(), remote }
    }

    fn drain(&mut self) -> Vec<PeerOutput> {
        std::iter::from_fn(|| self.peer.poll_output()).filter(|o| !matches!(o, PeerOutput::StateChanged(..))).collect()
    }

    /// Moves the clock forward, firing every timer on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.peer.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.peer.handle_timeout(self.now);
        }
        self.now = end;
    }

    fn cea(&self, cer: &Message, rc: ResultCode) -> Message {
        let mut a = Message::answer_to(cer);
        a.push(Avp::u32(code::RESULT_CODE, rc.0));
        a.avps.extend(self.remote.capability_avps());
        a
    }

    fn cer(&self) -> Message {
        let mut m = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
        m.avps = self.remote.capability_avps();
        m
    }

    fn dwa(&self, dwr: &Message, osi: u32) -> Message {
        let mut a = Message::answer_to(dwr);
        a.push(Avp::u32(code::RESULT_CODE, 2001));
        a.avps.extend(self.remote.origin_avps());
        a.push(Avp::u32(code::ORIGIN_STATE_ID, osi));
        a
    }

    /// Start, connect on `conn`, answer the CER: I-Open.
    fn open(&mut self, conn: ConnId) {
        self.peer.start(self.now);
        assert_eq!(self.drain(), vec![PeerOutput::Connect]);
        self.peer.handle_connected(self.now, conn);
        let cer = sent(&self.drain(), CommandCode::CAPABILITIES_EXCHANGE);
        let cea = self.cea(&cer, ResultCode::SUCCESS);
        self.peer.handle_message(self.now, conn, cea);
        assert_eq!(self.peer.state(), PeerState::IOpen);
    }
}

/// The one message of this command among the outputs.
fn sent(out: &[PeerOutput], cmd: CommandCode) -> Message {
    let found: Vec<&Message> = out
        .iter()
        .filter_map(|o| match o {
            PeerOutput::Send(_, m) if m.header.code == cmd => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "expected one {cmd:?} in {out:?}");
    found[0].clone()
}

fn closes(out: &[PeerOutput]) -> Vec<ConnId> {
    out.iter().filter_map(|o| if let PeerOutput::Close(c) = o { Some(*c) } else { None }).collect()
}

#[test]
fn initiator_opens_after_cea_and_becomes_available() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.peer.start(h.now);
    assert_eq!(h.drain(), vec![PeerOutput::Connect]);
    assert_eq!(h.peer.state(), PeerState::WaitConnAck);
    h.peer.handle_connected(h.now, ConnId(1));
    let out = h.drain();
    let cer = sent(&out, CommandCode::CAPABILITIES_EXCHANGE);
    assert!(cer.is_request() && !cer.header.flags.is_proxiable(), "CER is not proxiable (RFC 6733 §5.3.1)");
    assert_eq!(cer.find(code::ORIGIN_STATE_ID, 0).unwrap().as_u32(), Ok(100));
    assert_eq!(h.peer.state(), PeerState::WaitICea);
    let cea = h.cea(&cer, ResultCode::SUCCESS);
    h.peer.handle_message(h.now, ConnId(1), cea);
    assert_eq!(h.drain(), vec![PeerOutput::Available]);
    assert_eq!(h.peer.state(), PeerState::IOpen);
    assert_eq!(h.peer.common_applications(), &[AppId::CREDIT_CONTROL, AppId::GX]);
    assert_eq!(h.peer.connection(), Some(ConnId(1)));
}

#[test]
fn lost_cea_times_out_and_reconnects_with_backoff() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.peer.start(h.now);
    h.peer.handle_connected(h.now, ConnId(1));
    h.drain();
    h.advance(Duration::from_secs(10));
    assert_eq!(h.peer.state(), PeerState::Closed);
    assert_eq!(closes(&h.drain()), vec![ConnId(1)]);
    // First retry after the initial backoff (1 s), the next after 2 s.
    h.advance(Duration::from_millis(999));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.drain(), vec![PeerOutput::Connect]);
    h.peer.handle_connect_failed(h.now);
    assert_eq!(h.peer.state(), PeerState::Closed);
    h.advance(Duration::from_millis(1999));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.drain(), vec![PeerOutput::Connect]);
}

#[test]
fn cea_refusal_or_no_common_application_closes() {
    for rc in [ResultCode::NO_COMMON_APPLICATION, ResultCode::UNKNOWN_PEER] {
        let mut h = H::new("as1.example.net", "ocs.example.net");
        h.peer.start(h.now);
        h.peer.handle_connected(h.now, ConnId(1));
        let cer = sent(&h.drain(), CommandCode::CAPABILITIES_EXCHANGE);
        h.peer.handle_message(h.now, ConnId(1), h.cea(&cer, rc));
        assert_eq!(h.peer.state(), PeerState::Closed);
        assert_eq!(closes(&h.drain()), vec![ConnId(1)]);
    }
    // Success, but the peer supports none of our applications.
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.remote.applications = vec![Application::Auth(AppId(16_777_236))];
    h.peer.start(h.now);
    h.peer.handle_connected(h.now, ConnId(1));
    let cer = sent(&h.drain(), CommandCode::CAPABILITIES_EXCHANGE);
    h.peer.handle_message(h.now, ConnId(1), h.cea(&cer, ResultCode::SUCCESS));
    assert_eq!(h.peer.state(), PeerState::Closed);
}

#[test]
fn anything_but_cea_before_cea_closes_the_connection() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.peer.start(h.now);
    h.peer.handle_connected(h.now, ConnId(1));
    h.drain();
    let mut dwr = Message::request(CommandCode::DEVICE_WATCHDOG, AppId::COMMON);
    dwr.avps.extend(h.remote.origin_avps());
    h.peer.handle_message(h.now, ConnId(1), dwr);
    assert_eq!(h.peer.state(), PeerState::Closed);
    assert_eq!(closes(&h.drain()), vec![ConnId(1)]);
}

#[test]
fn election_won_keeps_the_peers_connection() {
    // "z…" > "a…": we win (RFC 6733 §5.6.4).
    let mut h = H::new("z.example.net", "a.example.net");
    h.peer.start(h.now);
    h.peer.handle_connected(h.now, ConnId(1));
    h.drain();
    let cer = h.cer();
    assert!(h.peer.handle_incoming_cer(h.now, ConnId(2), &cer));
    let out = h.drain();
    assert_eq!(closes(&out), vec![ConnId(1)], "I-Disc");
    let cea = sent(&out, CommandCode::CAPABILITIES_EXCHANGE);
    assert_eq!(cea.result_code(), Some(ResultCode::SUCCESS));
    assert_eq!(h.peer.state(), PeerState::ROpen);
    assert_eq!(h.peer.connection(), Some(ConnId(2)));
}

#[test]
fn election_lost_waits_for_our_cea() {
    let mut h = H::new("a.example.net", "z.example.net");
    h.peer.start(h.now);
    h.peer.handle_connected(h.now, ConnId(1));
    let our_cer = sent(&h.drain(), CommandCode::CAPABILITIES_EXCHANGE);
    let cer = h.cer();
    assert!(h.peer.handle_incoming_cer(h.now, ConnId(2), &cer));
    assert_eq!(h.peer.state(), PeerState::WaitReturns);
    assert!(h.drain().is_empty(), "nothing sent on the losing side yet");
    h.peer.handle_message(h.now, ConnId(1), h.cea(&our_cer, ResultCode::SUCCESS));
    let out = h.drain();
    assert_eq!(closes(&out), vec![ConnId(2)], "R-Disc");
    assert_eq!(h.peer.state(), PeerState::IOpen);
    assert_eq!(h.peer.connection(), Some(ConnId(1)));
}

#[test]
fn election_while_connecting_falls_back_to_the_peers_connection() {
    let mut h = H::new("a.example.net", "z.example.net");
    h.peer.start(h.now);
    h.drain();
    let cer = h.cer();
    assert!(h.peer.handle_incoming_cer(h.now, ConnId(2), &cer));
    assert_eq!(h.peer.state(), PeerState::WaitConnAckElect);
    h.peer.handle_connect_failed(h.now);
    let out = h.drain();
    assert_eq!(sent(&out, CommandCode::CAPABILITIES_EXCHANGE).result_code(), Some(ResultCode::SUCCESS));
    assert_eq!(h.peer.state(), PeerState::ROpen);
}

#[test]
fn responder_accepts_cer_and_rejects_unknown_or_useless_peers() {
    let local = LocalIdentity::charging_client("ocs.example.net", "example.net", 1);
    let mut config = PeerConfig::new(local, Some("as1.example.net".into()), false);
    config.jitter_seed = 3;
    let mut peer = Peer::new(config, EndToEndIds::new(1, 0));
    let now = Instant::now();
    let client = LocalIdentity::charging_client("as1.example.net", "example.net", 5);
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.avps = client.capability_avps();
    // A different identity: 3010 DIAMETER_UNKNOWN_PEER and close.
    let mut other = cer.clone();
    other.avps[0] = Avp::utf8(code::ORIGIN_HOST, "intruder.example.net");
    assert!(!peer.handle_incoming_cer(now, ConnId(9), &other));
    let out: Vec<_> = std::iter::from_fn(|| peer.poll_output()).collect();
    assert_eq!(sent(&out, CommandCode::CAPABILITIES_EXCHANGE).result_code(), Some(ResultCode::UNKNOWN_PEER));
    assert_eq!(closes(&out), vec![ConnId(9)]);
    // No common application: 5010.
    let mut useless = cer.clone();
    useless.avps.retain(|a| !a.is(code::AUTH_APPLICATION_ID, 0) && !a.is(code::VENDOR_SPECIFIC_APPLICATION_ID, 0));
    useless.push(Avp::u32(code::AUTH_APPLICATION_ID, 16_777_236));
    assert!(!peer.handle_incoming_cer(now, ConnId(8), &useless));
    let out: Vec<_> = std::iter::from_fn(|| peer.poll_output()).collect();
    assert_eq!(sent(&out, CommandCode::CAPABILITIES_EXCHANGE).result_code(), Some(ResultCode::NO_COMMON_APPLICATION));
    assert_eq!(peer.state(), PeerState::Closed);
    // The right one opens; a second connection while open is rejected (R-Reject).
    assert!(peer.handle_incoming_cer(now, ConnId(1), &cer));
    assert_eq!(peer.state(), PeerState::ROpen);
    assert!(!peer.handle_incoming_cer(now, ConnId(2), &cer));
    let out: Vec<_> = std::iter::from_fn(|| peer.poll_output()).collect();
    assert!(closes(&out).contains(&ConnId(2)));
    assert_eq!(peer.connection(), Some(ConnId(1)));
}

#[test]
fn watchdog_suspect_fails_over_then_down_then_reopen_needs_three_dwa() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.open(ConnId(1));
    assert_eq!(h.drain(), vec![PeerOutput::Available]);
    // Idle for Tw (±2 s): a DWR goes out.
    h.advance(TW + Duration::from_secs(2));
    let dwr = sent(&h.drain(), CommandCode::DEVICE_WATCHDOG);
    assert!(h.peer.is_available());
    // No DWA for another Tw: SUSPECT, and pending requests must fail over now (RFC 3539).
    h.advance(TW + Duration::from_secs(2));
    assert_eq!(h.peer.watchdog(), Watchdog::Suspect);
    assert_eq!(h.drain(), vec![PeerOutput::Unavailable]);
    assert_eq!(
        h.peer.send_request(Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)),
        Err(SendError::NotAvailable)
    );
    // A second Tw: DOWN, the connection is closed.
    let suspect_at = h.now;
    while h.peer.state() != PeerState::Closed {
        h.advance(Duration::from_millis(100));
    }
    assert!(h.now - suspect_at >= TW - Duration::from_secs(2) && h.now - suspect_at <= TW + Duration::from_secs(2));
    assert_eq!(closes(&h.drain()), vec![ConnId(1)]);
    let _ = dwr;
    // Reconnect (Tc backoff 1 s), CER/CEA: REOPEN, not yet available; a DWR is sent at once.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.drain(), vec![PeerOutput::Connect]);
    h.peer.handle_connected(h.now, ConnId(2));
    let cer = sent(&h.drain(), CommandCode::CAPABILITIES_EXCHANGE);
    h.peer.handle_message(h.now, ConnId(2), h.cea(&cer, ResultCode::SUCCESS));
    assert_eq!(h.peer.watchdog(), Watchdog::Reopen { answered: 0 });
    assert!(!h.peer.is_available());
    for n in 1..=3 {
        let dwr = sent(&h.drain(), CommandCode::DEVICE_WATCHDOG);
        h.peer.handle_message(h.now, ConnId(2), h.dwa(&dwr, 7));
        if n < 3 {
            assert!(!h.peer.is_available(), "after {n} DWA");
            h.advance(TW + Duration::from_secs(2));
        }
    }
    assert_eq!(h.peer.watchdog(), Watchdog::Okay);
    assert_eq!(h.drain(), vec![PeerOutput::Available]);
}

#[test]
fn suspect_recovers_on_any_message() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.open(ConnId(1));
    h.drain();
    h.advance(TW + Duration::from_secs(2));
    let dwr = sent(&h.drain(), CommandCode::DEVICE_WATCHDOG);
    h.advance(TW + Duration::from_secs(2));
    assert_eq!(h.peer.watchdog(), Watchdog::Suspect);
    h.drain();
    // A late DWA (or any message): failback.
    h.peer.handle_message(h.now, ConnId(1), h.dwa(&dwr, 7));
    assert_eq!(h.peer.watchdog(), Watchdog::Okay);
    assert_eq!(h.drain(), vec![PeerOutput::Available]);
}

#[test]
fn traffic_counts_as_liveness() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.open(ConnId(1));
    h.drain();
    // Every 20 s the peer sends a request: no DWR is ever needed.
    for _ in 0..10 {
        h.advance(Duration::from_secs(20));
        let mut rar = Message::request(CommandCode::RE_AUTH, AppId::CREDIT_CONTROL);
        rar.avps.extend(h.remote.origin_avps());
        h.peer.handle_message(h.now, ConnId(1), rar.clone());
        assert_eq!(h.drain(), vec![PeerOutput::Deliver(rar)]);
    }
}

#[test]
fn dwr_is_answered_and_a_new_origin_state_id_reports_a_restart() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.open(ConnId(1));
    h.drain();
    let mut dwr = Message::request(CommandCode::DEVICE_WATCHDOG, AppId::COMMON);
    dwr.avps.extend(h.remote.origin_avps());
    dwr.push(Avp::u32(code::ORIGIN_STATE_ID, 8));
    h.peer.handle_message(h.now, ConnId(1), dwr);
    let out = h.drain();
    let dwa = sent(&out, CommandCode::DEVICE_WATCHDOG);
    assert_eq!(dwa.result_code(), Some(ResultCode::SUCCESS));
    assert!(out.contains(&PeerOutput::Restarted), "7 -> 8: {out:?}");
}

#[test]
fn stop_sends_dpr_and_closes_on_dpa_without_reconnecting() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    h.open(ConnId(1));
    h.drain();
    h.peer.stop(h.now, DisconnectCause::Rebooting);
    let out = h.drain();
    let dpr = sent(&out, CommandCode::DISCONNECT_PEER);
    assert_eq!(dpr.find(code::DISCONNECT_CAUSE, 0).unwrap().as_i32(), Ok(0));
    assert!(out.contains(&PeerOutput::Unavailable));
    assert_eq!(h.peer.state(), PeerState::Closing);
    let mut dpa = Message::answer_to(&dpr);
    dpa.push(Avp::u32(code::RESULT_CODE, 2001));
    dpa.avps.extend(h.remote.origin_avps());
    h.peer.handle_message(h.now, ConnId(1), dpa);
    assert_eq!(closes(&h.drain()), vec![ConnId(1)]);
    assert_eq!(h.peer.state(), PeerState::Closed);
    h.advance(Duration::from_secs(600));
    assert!(h.drain().is_empty(), "a stopped peer is not reconnected");
}

#[test]
fn peer_dpr_is_answered_and_its_cause_decides_the_reconnect() {
    for (cause, expect_reconnect_after) in [(0, Some(1)), (1, Some(61)), (2, None)] {
        let mut h = H::new("as1.example.net", "ocs.example.net");
        h.open(ConnId(1));
        h.drain();
        let mut dpr = Message::request(CommandCode::DISCONNECT_PEER, AppId::COMMON);
        dpr.avps.extend(h.remote.origin_avps());
        dpr.push(Avp::i32(code::DISCONNECT_CAUSE, cause));
        h.peer.handle_message(h.now, ConnId(1), dpr);
        let out = h.drain();
        assert_eq!(sent(&out, CommandCode::DISCONNECT_PEER).result_code(), Some(ResultCode::SUCCESS));
        assert_eq!(h.peer.state(), PeerState::Closing, "DPA sent, waiting for the peer to close (RFC 6733 §5.6)");
        h.peer.handle_disconnected(h.now, ConnId(1));
        assert_eq!(h.peer.state(), PeerState::Closed);
        h.drain();
        match expect_reconnect_after {
            Some(secs) => {
                h.advance(Duration::from_secs(secs) - Duration::from_millis(1));
                assert!(h.drain().is_empty(), "cause {cause}: too early");
                h.advance(Duration::from_millis(1));
                assert_eq!(h.drain(), vec![PeerOutput::Connect], "cause {cause}");
            }
            None => {
                h.advance(Duration::from_secs(3600));
                assert!(h.drain().is_empty(), "DO_NOT_WANT_TO_TALK_TO_YOU: no reconnect");
            }
        }
    }
}

#[test]
fn requests_get_fresh_hop_by_hop_ids_and_answers_are_delivered() {
    let mut h = H::new("as1.example.net", "ocs.example.net");
    assert_eq!(
        h.peer.send_request(Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)),
        Err(SendError::NotAvailable)
    );
    h.open(ConnId(1));
    h.drain();
    let a = h.peer.send_request(Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)).unwrap();
    let b = h.peer.send_request(Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)).unwrap();
    assert_ne!(a, b);
    let out = h.drain();
    let sent_ids: Vec<(HopByHopId, EndToEndId)> = out
        .iter()
        .filter_map(|o| {
            if let PeerOutput::Send(_, m) = o { Some((m.header.hop_by_hop, m.header.end_to_end)) } else { None }
        })
        .collect();
    assert_eq!(sent_ids.len(), 2);
    assert_eq!((sent_ids[0].0, sent_ids[1].0), (a, b));
    assert_ne!(sent_ids[0].1, sent_ids[1].1, "End-to-End ids are unique");
    let mut answer = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL);
    answer.header = answer.header.answer();
    answer.header.hop_by_hop = a;
    h.peer.handle_message(h.now, ConnId(1), answer.clone());
    assert_eq!(h.drain(), vec![PeerOutput::Deliver(answer)]);
}

#[test]
fn end_to_end_ids_carry_the_start_time_in_the_high_bits() {
    let ids = EndToEndIds::new(0xabc_1234, 0x000f_fffe);
    let a = ids.next();
    let b = ids.next();
    let c = ids.next();
    assert_eq!(a.0 >> 20, 0x234);
    assert_eq!((a.0 & 0xfffff, b.0 & 0xfffff, c.0 & 0xfffff), (0xffffe, 0xfffff, 0));
    assert_eq!(c.0 >> 20, 0x234, "the counter wraps inside its 20 bits");
}

#[test]
fn metrics_name_every_state() {
    assert_eq!(state_name(PeerState::Closed), "closed");
    assert_eq!(state_name(PeerState::WaitReturns), "wait_returns");
    assert_eq!(state_name(PeerState::ROpen), "r_open");
    assert_eq!(state_name(PeerState::Closing), "closing");
    assert_eq!(STATE_NAMES.len(), PeerState::Closing as usize + 1);
    assert_eq!(watchdog_name(PeerState::IOpen, Watchdog::Suspect), "suspect");
    assert_eq!(watchdog_name(PeerState::Closed, Watchdog::Okay), "down", "a closed peer's watchdog is DOWN");
    assert!(WATCHDOG_NAMES.contains(&watchdog_name(PeerState::ROpen, Watchdog::Reopen { answered: 1 })));
}
