//! SIP transactions (RFC 3261 §17), sans-IO: the four state machines with their timers, and the UAS core's 2xx
//! retransmission (§13.3.1.4), keyed as §17.1.3 / §17.2.3 say. Time comes in as `now`; what to send comes out as
//! bytes and a destination. Over TCP nothing is retransmitted and the absorbing states last no time (Timers D, I,
//! J, K are zero on a reliable transport).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::message::Message;

/// The transport of a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Unreliable: the transaction layer retransmits.
    Udp,
    /// Reliable stream.
    Tcp,
}

impl Transport {
    /// `UDP` / `TCP` as in a Via.
    pub fn as_via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// From a Via's transport or a `transport=` URI parameter.
    pub fn from_name(name: &str) -> Option<Transport> {
        match name.to_ascii_uppercase().as_str() {
            "UDP" => Some(Transport::Udp),
            "TCP" => Some(Transport::Tcp),
            _ => None,
        }
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    /// The transport.
    pub transport: Transport,
    /// The address.
    pub addr: SocketAddr,
}

/// T1, T2, T4 (§17.1.1.1, table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

/// A server transaction's key (§17.2.3): branch, sent-by, and the method (ACK matches its INVITE).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    /// Top Via branch.
    pub branch: String,
    /// Top Via sent-by.
    pub sent_by: String,
    /// INVITE for INVITE and ACK; the method otherwise.
    pub method: String,
}

impl ServerKey {
    /// The key of a request, `None` without an RFC 3261 branch (the magic cookie `z9hG4bK`).
    pub fn of(m: &Message) -> Option<ServerKey> {
        let via = m.top_via()?;
        let branch = via.branch.filter(|b| b.starts_with("z9hG4bK"))?;
        let method = match m.method() {
            "ACK" => "INVITE".to_string(),
            other => other.to_string(),
        };
        Some(ServerKey { branch, sent_by: format!("{}:{}", via.host, via.port.unwrap_or(5060)), method })
    }
}

/// A client transaction's key (§17.1.3): the branch this node generated and the method.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The branch.
    pub branch: String,
    /// The method (CSeq method of the response).
    pub method: String,
}

impl ClientKey {
    /// The key a response matches.
    pub fn of(m: &Message) -> Option<ClientKey> {
        Some(ClientKey { branch: m.top_via()?.branch?, method: m.method().to_string() })
    }
}

/// What an incoming request is to the transaction layer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A new transaction: the TU handles it and answers with [`Transactions::respond`].
    New(ServerKey),
    /// A retransmission: send this again (the last response), or nothing if none was sent yet.
    Retransmission(Option<(Bytes, Dest)>),
    /// The ACK of a non-2xx final response: absorbed (§17.2.1).
    Absorbed,
    /// An ACK for a 2xx (its own transaction, §17.1.1.3): for the TU; it stopped the 2xx retransmissions.
    Ack2xx,
    /// A request without an RFC 3261 branch: handled statelessly by the TU.
    Stateless,
}

/// What an incoming response is to the transaction layer.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    /// For the TU, from this client transaction.
    Deliver(ClientKey),
    /// A retransmission the transaction absorbed (it re-sent the ACK of a non-2xx).
    Absorbed,
    /// No transaction: a retransmitted 2xx of an INVITE whose transaction ended (the TU ACKs it again, §13.2.2.4),
    /// or a stray.
    Stray,
}

/// Work a timer produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    /// Send these bytes again.
    Resend(Bytes, Dest),
    /// A client transaction timed out (Timer B / F): the TU acts as on a 408 (§8.1.3.1).
    Timeout(ClientKey),
    /// Timer H: the ACK for an INVITE's non-2xx final response never came, and the server transaction failed
    /// (§17.2.1: the transaction layer MUST tell the TU).
    AckTimeout(ServerKey),
    /// A 2xx to an INVITE was never ACKed (§13.3.1.4): the TU ends the dialog with BYE.
    NoAck {
        /// Call-ID of the dialog.
        call_id: String,
        /// CSeq number of the INVITE.
        cseq: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SState {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    /// RFC 6026 §7.1: after a 2xx to an INVITE, retransmissions of the INVITE are absorbed for 64·T1 (Timer L)
    /// instead of being taken for a new request.
    Accepted,
}

struct ServerTx {
    state: SState,
    last: Option<Bytes>,
    dest: Dest,
    interval: Duration,
    give_up: Option<Instant>,
    generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CState {
    Calling,
    Proceeding,
    Completed,
}

struct ClientTx {
    state: CState,
    request: Message,
    bytes: Bytes,
    dest: Dest,
    interval: Duration,
    ack: Option<Bytes>,
    generation: u64,
}

struct Retransmit2xx {
    bytes: Bytes,
    dest: Dest,
    interval: Duration,
    give_up: Instant,
    generation: u64,
}

#[derive(Clone, Debug)]
enum TimerRef {
    Server(ServerKey, u64),
    /// Retransmission (A / E).
    ClientRetransmit(ClientKey, u64),
    /// Timeout (B / F) or end of the absorbing state (D / K).
    ClientEnd(ClientKey, u64),
    Ok2xx(String, u32, u64),
}

/// Every transaction of one node.
pub struct Transactions {
    timers: Timers,
    server: HashMap<ServerKey, ServerTx>,
    client: HashMap<ClientKey, ClientTx>,
    ok2xx: HashMap<(String, u32), Retransmit2xx>,
    wheel: BTreeMap<(Instant, u64), TimerRef>,
    seq: u64,
}

impl Transactions {
    /// An empty layer with these timer values.
    pub fn new(timers: Timers) -> Transactions {
        Transactions {
            timers,
            server: HashMap::new(),
            client: HashMap::new(),
            ok2xx: HashMap::new(),
            wheel: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Transactions alive (server, client, 2xx retransmissions).
    pub fn len(&self) -> (usize, usize, usize) {
        (self.server.len(), self.client.len(), self.ok2xx.len())
    }

    fn arm(&mut self, at: Instant, r: TimerRef) {
        self.seq += 1;
        self.wheel.insert((at, self.seq), r);
    }

    fn next_generation(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// An incoming request from `src`.
    pub fn on_request(&mut self, now: Instant, m: &Message, src: Dest) -> Incoming {
        let Some(key) = ServerKey::of(m) else { return Incoming::Stateless };
        let is_ack = m.method() == "ACK";
        if let Some(tx) = self.server.get_mut(&key) {
            if is_ack {
                if tx.state == SState::Completed {
                    // §17.2.1: ACK of a non-2xx moves to Confirmed; Timer I absorbs further ACKs.
                    tx.state = SState::Confirmed;
                    let generation = tx.generation + 1;
                    tx.generation = generation;
                    let wait = if src.transport == Transport::Udp { self.timers.t4 } else { Duration::ZERO };
                    self.arm(now + wait, TimerRef::Server(key, generation));
                    return Incoming::Absorbed;
                }
                if tx.state == SState::Confirmed {
                    return Incoming::Absorbed;
                }
            } else if tx.state == SState::Accepted {
                // The TU retransmits the 2xx until the ACK: nothing more to send (RFC 6026 §8.7).
                return Incoming::Retransmission(None);
            } else {
                return Incoming::Retransmission(tx.last.clone().map(|b| (b, tx.dest)));
            }
        }
        if is_ack {
            if let Some((n, _)) = m.cseq() {
                let id = (m.call_id().to_string(), n);
                self.ok2xx.remove(&id);
            }
            return Incoming::Ack2xx;
        }
        let generation = self.next_generation();
        let state = if key.method == "INVITE" { SState::Proceeding } else { SState::Trying };
        self.server.insert(
            key.clone(),
            ServerTx { state, last: None, dest: src, interval: self.timers.t1, give_up: None, generation },
        );
        Incoming::New(key)
    }

    /// The TU answers a server transaction; returns where to send the bytes. A 2xx to an INVITE ends the
    /// transaction and is retransmitted until ACKed (§13.3.1.4, §17.2.1); other finals enter Completed.
    pub fn respond(&mut self, now: Instant, key: &ServerKey, response: &Message) -> Option<(Bytes, Dest)> {
        let bytes = response.to_bytes();
        let code = response.code();
        let tx = self.server.get_mut(key)?;
        let dest = tx.dest;
        let unreliable = dest.transport == Transport::Udp;
        tx.last = Some(bytes.clone());
        if code < 200 {
            if tx.state == SState::Trying {
                tx.state = SState::Proceeding;
            }
            return Some((bytes, dest));
        }
        if key.method == "INVITE" {
            if (200..300).contains(&code) {
                tx.state = SState::Accepted;
                tx.generation += 1;
                let generation = tx.generation;
                self.arm(now + self.timers.t1 * 64, TimerRef::Server(key.clone(), generation));
                let Some((cseq, _)) = response.cseq() else { return Some((bytes, dest)) };
                let id = (response.call_id().to_string(), cseq);
                let generation = self.next_generation();
                let give_up = now + self.timers.t1 * 64;
                let interval = self.timers.t1;
                self.ok2xx
                    .insert(id.clone(), Retransmit2xx { bytes: bytes.clone(), dest, interval, give_up, generation });
                // Over TCP the 2xx is not retransmitted, but the wait for the ACK still ends the dialog.
                let first = if unreliable { now + interval } else { give_up };
                self.arm(first, TimerRef::Ok2xx(id.0, id.1, generation));
                return Some((bytes, dest));
            }
            tx.state = SState::Completed;
            tx.generation += 1;
            let generation = tx.generation;
            // Timer G (retransmit, UDP only) and Timer H (give up waiting for the ACK) share one chain: each
            // firing resends and re-arms until 64*T1 has passed.
            let give_up = now + self.timers.t1 * 64;
            tx.give_up = unreliable.then_some(give_up);
            tx.interval = self.timers.t1;
            let first = if unreliable { now + self.timers.t1 } else { give_up };
            self.arm(first, TimerRef::Server(key.clone(), generation));
            return Some((bytes, dest));
        }
        tx.state = SState::Completed;
        tx.generation += 1;
        let generation = tx.generation;
        // Timer J: absorb request retransmissions for 64*T1 over UDP, none over TCP.
        let wait = if unreliable { self.timers.t1 * 64 } else { Duration::ZERO };
        self.arm(now + wait, TimerRef::Server(key.clone(), generation));
        Some((bytes, dest))
    }

    /// Starts a client transaction for `request` (which carries this node's Via with a fresh branch); returns its
    /// key and the bytes to send now.
    pub fn send(&mut self, now: Instant, request: Message, dest: Dest) -> (ClientKey, Bytes) {
        let bytes = request.to_bytes();
        let key = ClientKey {
            branch: request.top_via().and_then(|v| v.branch).unwrap_or_default(),
            method: request.method().to_string(),
        };
        let generation = self.next_generation();
        let t1 = self.timers.t1;
        if dest.transport == Transport::Udp {
            self.arm(now + t1, TimerRef::ClientRetransmit(key.clone(), generation));
        }
        self.arm(now + t1 * 64, TimerRef::ClientEnd(key.clone(), generation));
        self.client.insert(
            key.clone(),
            ClientTx {
                state: CState::Calling,
                request,
                bytes: bytes.clone(),
                dest,
                interval: t1,
                ack: None,
                generation,
            },
        );
        (key, bytes)
    }

    /// An incoming response.
    pub fn on_response(&mut self, now: Instant, m: &Message) -> (ResponseEvent, Option<(Bytes, Dest)>) {
        let Some(key) = ClientKey::of(m) else { return (ResponseEvent::Stray, None) };
        let Some(tx) = self.client.get_mut(&key) else { return (ResponseEvent::Stray, None) };
        let code = m.code();
        match tx.state {
            CState::Completed => return (ResponseEvent::Absorbed, tx.ack.clone().map(|a| (a, tx.dest))),
            _ if code < 200 => {
                if key.method == "INVITE" && tx.state == CState::Proceeding {
                    // Every provisional response restarts the wait for the final one (like Timer C, §16.6).
                    tx.generation += 1;
                    let generation = tx.generation;
                    self.arm(now + Duration::from_secs(180), TimerRef::ClientEnd(key.clone(), generation));
                    return (ResponseEvent::Deliver(key), None);
                }
                if tx.state == CState::Calling {
                    tx.state = CState::Proceeding;
                    if key.method == "INVITE" {
                        // Timer A and Timer B stop on a provisional response (§17.1.1.2); Timer E goes on at T2
                        // for a non-INVITE (§17.1.2.2). A callee may ring for minutes: the wait ends after
                        // 3 minutes, like a proxy's Timer C (§16.6), so a lost final response cannot leak the call.
                        tx.generation += 1;
                        let generation = tx.generation;
                        self.arm(now + Duration::from_secs(180), TimerRef::ClientEnd(key.clone(), generation));
                    } else {
                        tx.interval = self.timers.t2;
                    }
                }
                return (ResponseEvent::Deliver(key), None);
            }
            _ => {}
        }
        let unreliable = tx.dest.transport == Transport::Udp;
        if key.method == "INVITE" && (200..300).contains(&code) {
            // §17.1.1.2: a 2xx ends the client INVITE transaction; the TU ACKs it.
            self.client.remove(&key);
            return (ResponseEvent::Deliver(key), None);
        }
        tx.state = CState::Completed;
        tx.generation += 1;
        let generation = tx.generation;
        let mut send = None;
        let wait = if key.method == "INVITE" {
            // §17.1.1.3: the transaction ACKs a non-2xx itself; Timer D (32 s over UDP) absorbs retransmissions.
            let ack = ack_for_non_2xx(&tx.request, m).to_bytes();
            tx.ack = Some(ack.clone());
            send = Some((ack, tx.dest));
            if unreliable { Duration::from_secs(32).max(self.timers.t1 * 64) } else { Duration::ZERO }
        } else if unreliable {
            self.timers.t4 // Timer K
        } else {
            Duration::ZERO
        };
        self.arm(now + wait, TimerRef::ClientEnd(key.clone(), generation));
        (ResponseEvent::Deliver(key), send)
    }

    /// The original request of a live client transaction (to build a CANCEL, §9.1).
    pub fn client_request(&self, key: &ClientKey) -> Option<(&Message, Dest)> {
        self.client.get(key).map(|t| (&t.request, t.dest))
    }

    /// Whether a client transaction has had a provisional response (a CANCEL may be sent, §9.1).
    pub fn client_proceeding(&self, key: &ClientKey) -> bool {
        self.client.get(key).is_some_and(|t| t.state == CState::Proceeding)
    }

    /// Drops a server transaction without answering it: the request was forwarded statelessly, and its
    /// retransmissions must be forwarded again rather than absorbed.
    pub fn forget_server(&mut self, key: &ServerKey) {
        self.server.remove(key);
    }

    /// When [`Transactions::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.keys().next().map(|(at, _)| *at)
    }

    /// Runs every timer due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Fired> {
        let mut out = Vec::new();
        while let Some(entry) = self.wheel.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let r = entry.remove();
            match r {
                TimerRef::Server(key, generation) => {
                    let Some(tx) = self.server.get_mut(&key) else { continue };
                    if tx.generation != generation {
                        continue;
                    }
                    if key.method == "INVITE" && tx.state == SState::Completed {
                        // Timer G resends the final response (UDP), doubling up to T2, until Timer H (64*T1)
                        // gives up waiting for the ACK (§17.2.1).
                        if let Some(h) = tx.give_up.filter(|h| now < *h) {
                            if let Some(b) = tx.last.clone() {
                                out.push(Fired::Resend(b, tx.dest));
                            }
                            tx.interval = (tx.interval * 2).min(self.timers.t2);
                            let next = (now + tx.interval).min(h);
                            self.arm(next, TimerRef::Server(key, generation));
                            continue;
                        }
                        self.server.remove(&key);
                        out.push(Fired::AckTimeout(key));
                        continue;
                    }
                    self.server.remove(&key);
                }
                TimerRef::ClientRetransmit(key, generation) => {
                    let Some(tx) = self.client.get_mut(&key) else { continue };
                    // A provisional response to an INVITE and any final response move the generation on.
                    if tx.generation != generation || tx.state == CState::Completed {
                        continue;
                    }
                    out.push(Fired::Resend(tx.bytes.clone(), tx.dest));
                    // Timer A doubles without bound; Timer E doubles up to T2 (§17.1.1.2, §17.1.2.2).
                    tx.interval =
                        if key.method == "INVITE" { tx.interval * 2 } else { (tx.interval * 2).min(self.timers.t2) };
                    let next = now + tx.interval;
                    self.arm(next, TimerRef::ClientRetransmit(key, generation));
                }
                TimerRef::ClientEnd(key, generation) => {
                    let Some(tx) = self.client.get(&key) else { continue };
                    if tx.generation != generation {
                        continue;
                    }
                    let timed_out = tx.state != CState::Completed;
                    self.client.remove(&key);
                    if timed_out {
                        out.push(Fired::Timeout(key));
                    }
                }
                TimerRef::Ok2xx(call_id, cseq, generation) => {
                    let id = (call_id, cseq);
                    let Some(r) = self.ok2xx.get_mut(&id) else { continue };
                    if r.generation != generation {
                        continue;
                    }
                    if now >= r.give_up {
                        self.ok2xx.remove(&id);
                        out.push(Fired::NoAck { call_id: id.0, cseq: id.1 });
                        continue;
                    }
                    out.push(Fired::Resend(r.bytes.clone(), r.dest));
                    r.interval = (r.interval * 2).min(self.timers.t2);
                    let next = (now + r.interval).min(r.give_up);
                    self.arm(next, TimerRef::Ok2xx(id.0, id.1, generation));
                }
            }
        }
        out
    }
}

/// The ACK of a non-2xx final response (§17.1.1.3): Request-URI, top Via, From, Call-ID, Route of the INVITE, To of
/// the response, CSeq number of the INVITE with method ACK.
fn ack_for_non_2xx(invite: &Message, response: &Message) -> Message {
    let mut ack = Message::request("ACK", invite.uri());
    if let Some(v) = invite.header("Via") {
        ack.push("Via", v);
    }
    for name in ["From", "Call-ID"] {
        if let Some(v) = invite.header(name) {
            ack.push(name, v);
        }
    }
    if let Some(v) = response.header("To") {
        ack.push("To", v);
    }
    let n = invite.cseq().map_or(1, |c| c.0);
    ack.push("CSeq", format!("{n} ACK"));
    for r in invite.headers_named("Route") {
        ack.push("Route", r);
    }
    ack.push("Max-Forwards", "70");
    ack
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions").field("server", &self.server.len()).field("client", &self.client.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::StartLine;

    fn udp() -> Dest {
        Dest { transport: Transport::Udp, addr: "127.0.0.1:5070".parse().unwrap() }
    }

    fn tcp() -> Dest {
        Dest { transport: Transport::Tcp, addr: "127.0.0.1:5070".parse().unwrap() }
    }

    fn bye(branch: &str) -> Message {
        let text = format!(
            "BYE sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n\r\n"
        );
        Message::parse(text.as_bytes()).unwrap()
    }

    /// Runs every timer to the end: (ms after `t0` of each resend, the ms of the timeout if one fired: a client's
    /// Timer B or F, a server's Timer H).
    fn run_out(t: &mut Transactions, t0: Instant) -> (Vec<u128>, Option<u128>) {
        let (mut resends, mut timeout) = (Vec::new(), None);
        while let Some(at) = t.poll_timeout() {
            for f in t.handle_timeout(at) {
                match f {
                    Fired::Resend(..) => resends.push((at - t0).as_millis()),
                    Fired::Timeout(_) | Fired::AckTimeout(_) => timeout = Some((at - t0).as_millis()),
                    other => panic!("{other:?}"),
                }
            }
        }
        (resends, timeout)
    }

    #[test]
    fn client_non_invite_retransmits_with_timer_e_capped_at_t2_and_times_out_with_timer_f() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        t.send(t0, bye("z9hG4bKe1"), udp());
        let (resends, timeout) = run_out(&mut t, t0);
        // §17.1.2.2: Timer E starts at T1 and doubles up to T2 (4 s); Timer F fires at 64·T1.
        assert_eq!(resends[..5], [500, 1500, 3500, 7500, 11500]);
        assert!(resends.windows(2).skip(3).all(|w| w[1] - w[0] == 4000), "{resends:?}");
        assert_eq!(timeout, Some(32_000));
        assert_eq!(t.len(), (0, 0, 0));
        // A provisional response sets the interval to T2 at once (Proceeding).
        let mut t = Transactions::new(Timers::default());
        let req = bye("z9hG4bKe2");
        t.send(t0, req.clone(), udp());
        t.on_response(t0, &req.response(100, "Trying", None));
        let (resends, timeout) = run_out(&mut t, t0);
        assert_eq!(resends[0], 500, "the resend armed before the 100 still runs");
        assert!(resends.windows(2).all(|w| w[1] - w[0] == 4000), "then every T2: {resends:?}");
        assert_eq!(timeout, Some(32_000));
    }

    #[test]
    fn client_non_invite_absorbs_the_final_response_for_timer_k_over_udp_only() {
        for (dest, k) in [(udp(), Duration::from_secs(5)), (tcp(), Duration::ZERO)] {
            let mut t = Transactions::new(Timers::default());
            let t0 = Instant::now();
            let req = bye("z9hG4bKk1");
            let (key, _) = t.send(t0, req.clone(), dest);
            let ok = req.response(200, "OK", Some("2"));
            assert_eq!(t.on_response(t0, &ok).0, ResponseEvent::Deliver(key));
            assert_eq!(t.on_response(t0, &ok).0, ResponseEvent::Absorbed, "a retransmitted 200 is absorbed");
            t.handle_timeout(t0 + k);
            assert_eq!(t.len(), (0, 0, 0), "Timer K ({k:?}) ended it");
            assert_eq!(t.on_response(t0 + k, &ok).0, ResponseEvent::Stray);
        }
    }

    #[test]
    fn client_invite_absorbs_non_2xx_retransmissions_for_timer_d_over_udp_only() {
        for (dest, d) in [(udp(), Duration::from_secs(32)), (tcp(), Duration::ZERO)] {
            let mut t = Transactions::new(Timers::default());
            let t0 = Instant::now();
            let inv = invite("z9hG4bKd1");
            t.send(t0, inv.clone(), dest);
            let busy = inv.response(486, "Busy Here", Some("x"));
            assert!(t.on_response(t0, &busy).1.is_some(), "ACKed");
            if d > Duration::ZERO {
                t.handle_timeout(t0 + d - Duration::from_millis(1));
                let (ev, ack) = t.on_response(t0 + d - Duration::from_millis(1), &busy);
                assert_eq!(ev, ResponseEvent::Absorbed);
                assert!(ack.is_some(), "a retransmitted 486 is ACKed again");
            }
            t.handle_timeout(t0 + d);
            assert_eq!(t.len(), (0, 0, 0), "Timer D ({d:?}) ended it");
        }
    }

    #[test]
    fn server_invite_resends_its_final_response_with_timer_g_until_timer_h() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bKh1");
        let Incoming::New(key) = t.on_request(t0, &inv, udp()) else { panic!() };
        t.respond(t0, &key, &inv.response(486, "Busy Here", Some("t")));
        let (resends, timeout) = run_out(&mut t, t0);
        // §17.2.1: Timer G from T1 doubling to T2; Timer H (64·T1) ends the wait for the ACK.
        assert_eq!(resends[..4], [500, 1500, 3500, 7500]);
        assert!(resends.windows(2).skip(3).all(|w| w[1] - w[0] == 4000), "{resends:?}");
        assert!(*resends.last().unwrap() < 32_000);
        assert_eq!(timeout, Some(32_000), "Timer H (64·T1) told the TU the transaction failed");
        assert_eq!(t.len(), (0, 0, 0), "Timer H ended it");
        // Over TCP nothing is resent.
        let mut t = Transactions::new(Timers::default());
        let Incoming::New(key) = t.on_request(t0, &inv, tcp()) else { panic!() };
        t.respond(t0, &key, &inv.response(486, "Busy Here", Some("t")));
        assert_eq!(run_out(&mut t, t0).0, Vec::<u128>::new());
    }

    #[test]
    fn server_non_invite_answers_retransmissions_for_timer_j_over_udp_only() {
        for (dest, j) in [(udp(), Duration::from_secs(32)), (tcp(), Duration::ZERO)] {
            let mut t = Transactions::new(Timers::default());
            let t0 = Instant::now();
            let req = bye("z9hG4bKj1");
            let Incoming::New(key) = t.on_request(t0, &req, dest) else { panic!() };
            t.respond(t0, &key, &req.response(200, "OK", None));
            if j > Duration::ZERO {
                let again = t.on_request(t0 + j - Duration::from_millis(1), &req, dest);
                assert!(matches!(again, Incoming::Retransmission(Some(_))), "the 200 again: {again:?}");
            }
            t.handle_timeout(t0 + j);
            assert_eq!(t.len(), (0, 0, 0), "Timer J ({j:?}) ended it");
            assert!(matches!(t.on_request(t0 + j, &req, dest), Incoming::New(_)), "then it is new");
        }
    }

    fn invite(branch: &str) -> Message {
        let text = format!(
            "INVITE sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\r\n"
        );
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn client_invite_retransmits_with_timer_a_and_times_out_with_timer_b() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let (key, _) = t.send(t0, invite("z9hG4bK1"), udp());
        let mut resends = Vec::new();
        let mut timeout = None;
        let mut now = t0;
        while let Some(at) = t.poll_timeout() {
            now = at;
            for f in t.handle_timeout(now) {
                match f {
                    Fired::Resend(..) => resends.push(now - t0),
                    Fired::Timeout(k) => timeout = Some((k, now - t0)),
                    other => panic!("{other:?}"),
                }
            }
        }
        let ms: Vec<u128> = resends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![500, 1500, 3500, 7500, 15500, 31500], "Timer A doubles from T1");
        assert_eq!(timeout, Some((key, Duration::from_secs(32))), "Timer B = 64*T1");
        let _ = now;
    }

    #[test]
    fn server_absorbs_retransmissions_and_acks_non_2xx() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bK2");
        let Incoming::New(key) = t.on_request(t0, &inv, udp()) else { panic!() };
        assert_eq!(t.on_request(t0, &inv, udp()), Incoming::Retransmission(None));
        let trying = inv.response(100, "Trying", None);
        t.respond(t0, &key, &trying);
        assert!(matches!(t.on_request(t0, &inv, udp()), Incoming::Retransmission(Some(_))));
        let busy = inv.response(486, "Busy Here", Some("t"));
        t.respond(t0, &key, &busy);
        let fired = t.handle_timeout(t0 + Duration::from_millis(500));
        assert!(matches!(fired.as_slice(), [Fired::Resend(..)]), "Timer G resends the 486");
        let mut ack = inv.clone();
        ack.start = StartLine::Request { method: "ACK".into(), uri: inv.uri().into() };
        ack.set("CSeq", "1 ACK");
        assert_eq!(t.on_request(t0, &ack, udp()), Incoming::Absorbed);
        assert!(t.handle_timeout(t0 + Duration::from_secs(1)).is_empty(), "Confirmed: no more 486");
        assert_eq!(t.handle_timeout(t0 + Duration::from_secs(40)), [], "ACKed: no failure for the TU at Timer H");
        assert_eq!(t.len(), (0, 0, 0), "Timer I ended it");
    }

    #[test]
    fn ok_to_invite_is_retransmitted_until_acked() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bK3");
        let Incoming::New(key) = t.on_request(t0, &inv, udp()) else { panic!() };
        t.respond(t0, &key, &inv.response(200, "OK", Some("t")));
        assert_eq!(t.handle_timeout(t0 + Duration::from_millis(500)).len(), 1);
        let mut ack = inv.clone();
        ack.start = StartLine::Request { method: "ACK".into(), uri: inv.uri().into() };
        ack.set("CSeq", "1 ACK");
        ack.set("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack");
        assert_eq!(t.on_request(t0, &ack, udp()), Incoming::Ack2xx);
        assert!(t.handle_timeout(t0 + Duration::from_secs(40)).is_empty());
    }

    #[test]
    fn an_invite_retransmitted_after_the_2xx_is_absorbed() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bK6");
        let Incoming::New(key) = t.on_request(t0, &inv, udp()) else { panic!() };
        t.respond(t0, &key, &inv.response(200, "OK", Some("t")));
        assert_eq!(t.on_request(t0 + Duration::from_secs(1), &inv, udp()), Incoming::Retransmission(None));
        t.handle_timeout(t0 + Duration::from_secs(33));
        assert_eq!(t.server.len(), 0, "Timer L ended the Accepted state");
    }

    #[test]
    fn unacked_ok_ends_with_no_ack() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bK4");
        let Incoming::New(key) = t.on_request(t0, &inv, udp()) else { panic!() };
        t.respond(t0, &key, &inv.response(200, "OK", Some("t")));
        let mut fired = Vec::new();
        while let Some(at) = t.poll_timeout() {
            fired.extend(t.handle_timeout(at));
        }
        assert!(matches!(fired.last(), Some(Fired::NoAck { cseq: 1, .. })), "{fired:?}");
    }

    #[test]
    fn client_non_2xx_final_is_acked_by_the_transaction() {
        let mut t = Transactions::new(Timers::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bK5");
        let (key, _) = t.send(t0, inv.clone(), udp());
        let resp = inv.response(486, "Busy Here", Some("x"));
        let (ev, ack) = t.on_response(t0, &resp);
        assert_eq!(ev, ResponseEvent::Deliver(key));
        let ack = Message::parse(&ack.unwrap().0).unwrap();
        assert_eq!((ack.method(), ack.to_tag()), ("ACK", Some("x")));
        assert_eq!(t.on_response(t0, &resp).0, ResponseEvent::Absorbed);
    }
}
