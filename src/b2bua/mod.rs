//! The SIP B2BUA: a charging service on the engine, with its confirmed dialogs replicated on the same store and
//! ownership layer as the Ro sessions.
//!
//! One task owns every call; sockets ([`transport`]), the engine and the store talk to it through a channel, so
//! that no call is ever touched by two tasks. For one call:
//!
//! ```text
//!  caller ──INVITE──▶ leg A ──CCR-I (Ro, 32260@3gpp.org)──▶ OCS
//!                          ◀────────────CCA-I (granted time)──
//!                     leg B ──INVITE──▶ callee
//!  caller ◀──180/200── leg A ◀──180/200── leg B
//!  caller ──ACK──▶ leg A ──ACK──▶ leg B      confirmed: both dialogs + the Ro session written under one
//!                                             convergence name (mode `confirmed-dialog`)
//!  quota runs out ─▶ CCR-U (used, more) ; BYE from either side ─▶ BYE on the other + CCR-T (used seconds)
//! ```
//!
//! A mid-dialog request (To-tag present) for a dialog this node does not hold runs the adoption rule on the leg's
//! protocol record: unknown → 481; owner alive → forwarded statelessly to the owner's SIP address; owner dead →
//! compare-and-set on the convergence record, load both legs, bump each leg's local CSeq by `cseq_gap`, stamp the
//! state with the new epoch (fencing), and carry the call on, charging included (the Ro session under the same
//! convergence name is then this node's too, and the engine loads it at the next CCR).

pub mod transport;
pub mod ua;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::response::IntoResponse;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::api::{App, ChargingError, Engine, Outcome, RatingGroupRequest, SessionOptions, Subscriber, UsedUnits};
use crate::cc::CcEvent;
use crate::ownership::{Ownership, Resolution};
use crate::replication::{self, FORMAT, NodeLease, StateRecord, keys};
use crate::sip::call::{AppData, CallRecord, DialogReplication};
use crate::sip::dialog::{Dialog, strip_tag};
use crate::sip::message::{Message, StartLine, uri_host_port, uri_of, uri_param};
use crate::sip::transaction::{
    ClientKey, Dest, Fired, Incoming, ResponseEvent, ServerKey, Timers, Transactions, Transport,
};
use crate::store::{AnyStore, Expect, Store, StoreError, Write};
use crate::units::Units;
use transport::{Packet, SipTransport};

/// How the B2BUA charges a call (Ro, TS 32.299 IMS charging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargingSettings {
    /// Service-Context-Id.
    pub service_context: String,
    /// The rating group the call's time is charged in.
    pub rating_group: u32,
    /// Seconds asked for in each CCR-I/CCR-U.
    pub quota: Duration,
}

impl Default for ChargingSettings {
    fn default() -> Self {
        ChargingSettings { service_context: "32260@3gpp.org".into(), rating_group: 100, quota: Duration::from_secs(60) }
    }
}

/// The B2BUA's settings (`[sip]` in the config file).
#[derive(Clone, Debug)]
pub struct B2buaConfig {
    /// UDP and TCP listening address.
    pub listen: SocketAddr,
    /// Host (or `host:port`) put in Via and Contact when `listen` is a wildcard address.
    pub advertise: Option<String>,
    /// Where leg B goes (an outbound proxy or the callee); `None`: the Request-URI's host.
    pub next_hop: Option<SocketAddr>,
    /// Transport toward the next hop.
    pub next_hop_transport: Transport,
    /// Which dialogs are replicated.
    pub replication: DialogReplication,
    /// Charging; `None` connects calls without charging them.
    pub charging: Option<ChargingSettings>,
    /// How far each leg's local CSeq jumps when a call is adopted.
    pub cseq_gap: u32,
    /// Expiry of a call's records (refreshed by every write): bounds what a crash with no adopter leaves.
    pub record_ttl: Duration,
    /// T1, T2, T4.
    pub timers: Timers,
}

impl B2buaConfig {
    /// Defaults on `listen`: calls to the Request-URI over UDP, `confirmed-dialog` replication, charged on rating
    /// group 100 in 60 s quotas, CSeq gap 100, records kept 1 day.
    pub fn new(listen: SocketAddr) -> B2buaConfig {
        B2buaConfig {
            listen,
            advertise: None,
            next_hop: None,
            next_hop_transport: Transport::Udp,
            replication: DialogReplication::ConfirmedDialog,
            charging: Some(ChargingSettings::default()),
            cseq_gap: 100,
            record_ttl: Duration::from_secs(24 * 3600),
            timers: Timers::default(),
        }
    }

    /// The `host:port` this node is reached at, put in Via, Contact and the node's lease: `advertise` (with the
    /// bound port when it names no port), or the bound address.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        match &self.advertise {
            Some(a) if a.contains(':') => a.clone(),
            Some(a) => format!("{a}:{}", bound.port()),
            None => bound.to_string(),
        }
    }
}

/// What the B2BUA has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SipStats {
    /// Calls set up since start.
    pub calls: u64,
    /// Calls open now.
    pub active: u64,
    /// Calls answered (confirmed).
    pub answered: u64,
    /// Calls ended by BYE.
    pub ended: u64,
    /// Calls refused (charging) or failed before the answer.
    pub failed: u64,
    /// Calls adopted from a dead node.
    pub adopted: u64,
    /// Mid-dialog requests forwarded to the live owner.
    pub forwarded: u64,
    /// Calls dropped because another node adopted them (fencing).
    pub fenced: u64,
    /// Calls replicated (records written).
    pub replicated: u64,
    /// Store writes made.
    pub store_writes: u64,
    /// Messages that could not be parsed.
    pub malformed: u64,
    /// Non-2xx final responses to an INVITE whose ACK never came (Timer H, RFC 3261 §17.2.1).
    pub unacknowledged_failures: u64,
}

/// A running B2BUA.
#[derive(Clone)]
pub struct B2bua {
    events: mpsc::UnboundedSender<Ev>,
    local: SocketAddr,
}

/// A SIP port (UDP and TCP) bound, its B2BUA not started yet; what arrives meanwhile waits in a queue.
pub struct SipBinding {
    t: SipTransport,
    rx: mpsc::Receiver<Packet>,
}

impl SipBinding {
    /// Binds UDP and TCP on `addr`; port 0 picks a port free for both.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<SipBinding> {
        let (tx, rx) = mpsc::channel(4096);
        Ok(SipBinding { t: SipTransport::bind(addr, tx).await?, rx })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.t.local_addr()
    }
}

impl B2bua {
    /// Binds the SIP port and starts the B2BUA on `engine` (whose ownership layer, when it replicates, the
    /// dialogs share).
    ///
    /// ```no_run
    /// use charging_ra::b2bua::{B2bua, B2buaConfig};
    ///
    /// # async fn run(engine: charging_ra::api::Engine) -> std::io::Result<()> {
    /// let mut config = B2buaConfig::new("192.0.2.1:5060".parse().unwrap());
    /// config.next_hop = Some("192.0.2.20:5060".parse().unwrap()); // leg B goes here
    /// let b2bua = B2bua::start(config, engine).await?;
    /// println!("SIP on {}", b2bua.local_addr());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(config: B2buaConfig, engine: Engine) -> std::io::Result<B2bua> {
        let binding = SipBinding::bind(config.listen).await?;
        Ok(B2bua::start_on(binding, config, engine).await)
    }

    /// Starts the B2BUA on a port bound beforehand. A node binds first when its engine must know the SIP address
    /// (the lease carries it, for other nodes to forward to) and `listen` asks for port 0.
    pub async fn start_on(binding: SipBinding, config: B2buaConfig, engine: Engine) -> B2bua {
        let SipBinding { t, rx: prx } = binding;
        let local = t.local_addr();
        let host = config.advertised(local);
        let (etx, erx) = mpsc::unbounded_channel();
        let own = engine.ownership().cloned();
        if let Ok(mut rx) = engine.events().await {
            let etx = etx.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if etx.send(Ev::Charging(e.session_id, e.event)).is_err() {
                        return;
                    }
                }
            });
        }
        if let (Some(own), true) = (&own, config.replication == DialogReplication::ConfirmedDialog) {
            tokio::spawn(scan_quota_hints(own.clone(), etx.clone(), Duration::from_secs(1)));
        }
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let actor = Actor {
            txs: Transactions::new(config.timers),
            own: if config.replication == DialogReplication::Off { None } else { own },
            cfg: config,
            t,
            engine,
            me: host,
            seed: format!("{:x}", seed & 0xffff_ffff_ffff),
            counter: 0,
            calls: HashMap::new(),
            closing: HashMap::new(),
            deleting: 0,
            next_call: 0,
            legs: HashMap::new(),
            invites: HashMap::new(),
            clients: HashMap::new(),
            by_ro: HashMap::new(),
            ended_ro: HashSet::new(),
            ended_order: VecDeque::new(),
            hangups: HashSet::new(),
            ended_legs: HashMap::new(),
            ended_legs_order: VecDeque::new(),
            adopting: HashMap::new(),
            quota: BTreeMap::new(),
            ev: etx.clone(),
            stats: SipStats::default(),
        };
        tokio::spawn(actor.run(prx, erx));
        B2bua { events: etx, local }
    }

    /// The SIP address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What the B2BUA has done so far.
    pub async fn stats(&self) -> Option<SipStats> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Ev::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// `GET /v1/sip`: the B2BUA's [`SipStats`], to merge into the node's HTTP front.
    pub fn http_routes(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            "/v1/sip",
            axum::routing::get(move || {
                let me = me.clone();
                async move {
                    match me.stats().await {
                        Some(s) => axum::Json(serde_json::json!({ "address": me.local.to_string(), "stats": s }))
                            .into_response(),
                        None => {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "the B2BUA has stopped\n").into_response()
                        }
                    }
                }
            }),
        )
    }

    /// A graceful stop: takes no more messages and fires no more timers, then writes what replication still holds
    /// (a call changed while its previous write was in flight) and returns once those writes are done, or after
    /// [`STOP_DRAIN`] should the store not answer. Give the node's lease up only after this: a survivor then adopts
    /// each call as it last was here.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events.send(Ev::Stop(tx)).is_ok() && tokio::time::timeout(STOP_DRAIN, rx).await.is_err() {
            tracing::warn!(
                "SIP calls' last writes not done after {STOP_DRAIN:?}: survivors adopt what the store holds"
            );
        }
    }
}

enum Ev {
    Charging(String, CcEvent),
    Opened(u64, Result<Outcome, ChargingError>),
    Reauthorized(u64, Result<Outcome, ChargingError>),
    Created(u64, Result<u64, String>),
    Written(u64, Result<u64, StoreError>),
    /// A call's records have been deleted (or their deletion failed).
    Deleted,
    Adopted(String, Adoption),
    /// A dead node's call whose quota runs out: this node was picked to adopt it (leg A's protocol record).
    QuotaDue(String),
    Stats(oneshot::Sender<SipStats>),
    /// A graceful stop: answered when the calls' last writes are done.
    Stop(oneshot::Sender<()>),
}

/// How long a graceful stop waits for the calls' last writes.
const STOP_DRAIN: Duration = Duration::from_secs(10);

enum Adoption {
    Unknown,
    Proxy(Option<SocketAddr>),
    Owned { convergence: String, epoch: u64, record: Box<CallRecord>, version: u64, from: Option<String> },
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Charging,
    Calling,
    Answered,
    Confirmed,
}

/// What a client transaction of a call is for.
#[derive(Clone, Debug)]
enum Purpose {
    Initial,
    /// A request relayed from the other leg: its final response goes back on this server transaction.
    Relay {
        server: ServerKey,
        request: Box<Message>,
        from: Side,
    },
    Bye,
}

struct Call {
    conv: String,
    rec: CallRecord,
    app: AppData,
    phase: Phase,
    /// Leg A's initial INVITE, until its final response.
    a_invite: Option<(ServerKey, Message)>,
    b_invite: Option<ClientKey>,
    cancelled: bool,
    /// Leg B's INVITE is to be cancelled as soon as it has had a provisional response.
    cancel_on_provisional: bool,
    /// Leg A's initial INVITE transaction (its `invites` entry goes with the call).
    invite_key: Option<ServerKey>,
    /// An INVITE this node sent and is waiting on, per side (glare, §14.2).
    client_invite: [Option<ClientKey>; 2],
    /// A re-INVITE received and not yet answered, per side.
    server_invite: [Option<ServerKey>; 2],
    /// The ACK to resend on a retransmitted 2xx from leg B.
    /// The last ACK this node sent on each leg (CSeq number, bytes, where): sent again when that leg's 2xx is
    /// retransmitted (§13.2.2.4).
    acks: [Option<(u32, Bytes, Dest)>; 2],
    /// A 2xx to a re-INVITE relayed to this side: its ACK is relayed to the other.
    awaiting_ack: Option<Side>,
    replicated: Option<Replica>,
    writing: bool,
    dirty: bool,
    quota_at: Option<Instant>,
    reauthorizing: bool,
    /// A re-authorization the server asked for (RAR, Validity-Time) while one was in flight: its Reporting-Reason.
    reauthorize_next: Option<i32>,
    /// Seconds the CCR-U in flight reports: counted as reported, and given back if it is not answered 2001.
    reporting_secs: u64,
}

impl Call {
    fn leg(&self, side: Side) -> &Dialog {
        match side {
            Side::A => &self.rec.a,
            Side::B => &self.rec.b,
        }
    }

    fn leg_mut(&mut self, side: Side) -> &mut Dialog {
        match side {
            Side::A => &mut self.rec.a,
            Side::B => &mut self.rec.b,
        }
    }

    /// The CSeq number of the last INVITE on `side` (its 2xx is ACKed with it).
    fn invite_cseq(&mut self, side: Side) -> &mut u32 {
        match side {
            Side::A => &mut self.rec.a_invite_cseq,
            Side::B => &mut self.rec.b_invite_cseq,
        }
    }

    /// A target refresh (a re-INVITE or UPDATE, or its 2xx) that `side` sent: its remote target moves (§12.2), and
    /// its SDP, if it carries one, is the leg's last.
    fn refreshed(&mut self, side: Side, m: &Message) {
        self.leg_mut(side).refresh_target(m);
        if let Some(body) = sdp(m) {
            match side {
                Side::A => self.app.sdp_a = Some(body),
                Side::B => self.app.sdp_b = Some(body),
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Replica {
    epoch: u64,
    version: Option<u64>,
}

struct Actor {
    cfg: B2buaConfig,
    t: SipTransport,
    txs: Transactions,
    engine: Engine,
    own: Option<Arc<Ownership<AnyStore>>>,
    me: String,
    seed: String,
    counter: u64,
    calls: HashMap<u64, Call>,
    /// Ended calls whose last write is in flight; their records are deleted after it.
    closing: HashMap<u64, Call>,
    /// Ended calls whose records are being deleted.
    deleting: usize,
    next_call: u64,
    legs: HashMap<(String, String), (u64, Side)>,
    invites: HashMap<ServerKey, u64>,
    clients: HashMap<ClientKey, (u64, Purpose)>,
    by_ro: HashMap<String, u64>,
    /// The Ro sessions of the last calls that ended here, so that the engine's late events about them are not
    /// mistaken for another node's call to adopt.
    ended_ro: HashSet<String>,
    ended_order: VecDeque<String>,
    /// Ro sessions whose call is being loaded to be hung up.
    hangups: HashSet<String>,
    /// Legs of calls that ended here in the last 64·T1 (tombstones), oldest first.
    ended_legs: HashMap<(String, String), Instant>,
    ended_legs_order: VecDeque<(Instant, (String, String))>,
    adopting: HashMap<String, Vec<(Message, Dest, ServerKey)>>,
    quota: BTreeMap<(Instant, u64), ()>,
    ev: mpsc::UnboundedSender<Ev>,
    stats: SipStats,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An address from a host and port without a DNS lookup: the one task that runs every call must never block on
/// one. Hosts are IP literals (or `localhost`); a name in a Contact or route is not reachable (the B2BUA sits
/// behind an SBC or load balancer that hands it addresses).
fn addr_of(host: &str, port: u16) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = match host {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

fn resolve(uri: &str, default: Transport) -> Option<Dest> {
    let (host, port) = uri_host_port(uri)?;
    let transport = uri_param(uri, "transport").and_then(Transport::from_name).unwrap_or(default);
    Some(Dest { transport, addr: addr_of(&host, port.unwrap_or(5060))? })
}

/// The top Via as this node records it (§18.2.1, RFC 3581 §4): `received` is the source address, whatever the
/// client wrote; `rport` gets the source port only when the client asked for it.
fn stamp_via(via: &str, src: SocketAddr) -> String {
    let mut parts: Vec<String> = via
        .split(';')
        .filter(|p| {
            let k = p.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            k != "received" && !(k == "rport" && p.contains('='))
        })
        .map(str::to_string)
        .collect();
    let asked_rport = parts.iter().any(|p| p.trim().eq_ignore_ascii_case("rport"));
    parts.retain(|p| !p.trim().eq_ignore_ascii_case("rport"));
    parts.push(format!("received={}", src.ip()));
    if asked_rport {
        parts.push(format!("rport={}", src.port()));
    }
    parts.join(";")
}

/// Headers a B2BUA passes from one leg to the other along with the body: authentication challenges and
/// credentials, extensions (Require, Supported, RSeq/RAck, session timers), Retry-After, Warning, Reason.
const RELAYED_HEADERS: &[&str] = &[
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Authorization",
    "Proxy-Authorization",
    "Require",
    "Supported",
    "Unsupported",
    "Allow",
    "RSeq",
    "RAck",
    "Min-SE",
    "Session-Expires",
    "Retry-After",
    "Warning",
    "Reason",
    "Event",
    "Subscription-State",
    "Accept",
];

/// The body with its Content-Type, and the [`RELAYED_HEADERS`].
fn copy_body(from: &Message, to: &mut Message) {
    to.body = from.body.clone();
    if let Some(ct) = from.header("Content-Type") {
        to.set("Content-Type", ct);
    }
    for name in RELAYED_HEADERS {
        for v in from.headers_named(name) {
            to.push(name, v);
        }
    }
}

fn sdp(m: &Message) -> Option<String> {
    (!m.body.is_empty()).then(|| String::from_utf8_lossy(&m.body).into_owned())
}

/// `<cluster>/sipdeadline/<node>/<convergence>`: when the quota of a call owned by `node` runs out (wall ms), so
/// that a survivor reports it if the node dies (a redundantly armed timer, like the engine's `deadline/` hints).
fn hint_key(cluster: &str, node: &str, conv: &str) -> String {
    format!("{cluster}/sipdeadline/{node}/{conv}")
}

/// The value of a quota hint.
#[derive(Debug, Serialize, serde::Deserialize)]
struct QuotaHint {
    format: u32,
    deadline_ms: u64,
    /// Leg A's protocol record: where adoption starts.
    leg: String,
}

fn contact_for(me: &str, transport: Transport) -> String {
    match transport {
        Transport::Udp => format!("sip:b2bua@{me}"),
        Transport::Tcp => format!("sip:b2bua@{me};transport=tcp"),
    }
}

const FORWARD_BRANCH: &str = "z9hG4bKfwd";

/// Reporting-Reason values (TS 32.299 §7.2.175) of the CCR-Us a call makes.
const REPORTING_REASON_QUOTA_EXHAUSTED: i32 = 3;
const REPORTING_REASON_FORCED_REAUTHORISATION: i32 = 7;

impl Actor {
    async fn run(mut self, mut packets: mpsc::Receiver<Packet>, mut events: mpsc::UnboundedReceiver<Ev>) {
        loop {
            let next = [self.txs.poll_timeout(), self.quota.keys().next().map(|k| k.0)].into_iter().flatten().min();
            let sleep = tokio::time::sleep_until(next.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            ));
            tokio::select! {
                p = packets.recv() => match p {
                    Some(p) => self.on_packet(p),
                    None => return,
                },
                e = events.recv() => match e {
                    Some(Ev::Stop(done)) => return self.drain(events, done).await,
                    None => return,
                    Some(e) => self.on_event(e),
                },
                () = sleep => self.on_timers(),
            }
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}{}{:x}", self.seed, self.counter)
    }

    fn via(&mut self, transport: Transport) -> String {
        let branch = self.fresh("z9hG4bK");
        format!("SIP/2.0/{} {};branch={branch};rport", transport.as_via(), self.me)
    }

    fn contact(&self, transport: Transport) -> String {
        contact_for(&self.me, transport)
    }

    fn send_response(&mut self, key: &ServerKey, response: &Message) {
        if let Some((b, d)) = self.txs.respond(Instant::now(), key, response) {
            self.t.send(b, d);
        }
    }

    fn reply(&mut self, key: &ServerKey, request: &Message, code: u16, reason: &str) {
        let mut r = request.response(code, reason, Some("b2b"));
        r.push("Server", "charging-ra");
        self.send_response(key, &r);
    }

    /// Sends a request of a call on `side`'s dialog through a new client transaction.
    fn send_in_dialog(&mut self, call_id: u64, side: Side, mut m: Message, purpose: Purpose) -> Option<ClientKey> {
        let call = self.calls.get(&call_id)?;
        let d = call.leg(side);
        let dest = match resolve(d.next_hop(), d.transport) {
            Some(d) => d,
            None => {
                tracing::warn!(target_uri = d.next_hop(), "SIP next hop does not resolve");
                return None;
            }
        };
        let via = self.via(dest.transport);
        m.push_front("Via", via);
        if m.method() == "ACK" {
            let b = m.to_bytes();
            self.t.send(b.clone(), dest);
            let n = m.cseq().map_or(0, |c| c.0);
            self.calls.get_mut(&call_id).expect("call").acks[side.index()] = Some((n, b, dest));
            return None;
        }
        let (key, bytes) = self.txs.send(Instant::now(), m, dest);
        self.t.send(bytes, dest);
        self.clients.insert(key.clone(), (call_id, purpose));
        Some(key)
    }

    fn on_packet(&mut self, p: Packet) {
        let m = match Message::parse(&p.data) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(from = %p.src.addr, reason = %e.reason, "malformed SIP message");
                // §21.4.1: answer a request that can be answered with 400 (or 513) and the reason; drop the rest.
                if let Some(partial) = e.partial.filter(|m| m.method() != "ACK") {
                    let mut r = partial.response(e.status, &e.reason, Some("b2b"));
                    r.push("Server", "charging-ra");
                    // To the source address: a message this broken is not trusted to name where answers go.
                    self.t.send(r.to_bytes(), p.src);
                }
                return;
            }
        };
        if m.is_request() {
            self.on_request(m, p.src);
        } else {
            self.on_response(m);
        }
    }

    fn on_request(&mut self, mut m: Message, src: Dest) {
        // Responses go back where the request came from (RFC 3581 rport, §18.2.1 received).
        if let Some(i) = m.headers.iter().position(|h| h.name == "Via") {
            m.headers[i].value = stamp_via(&m.headers[i].value, src.addr);
        }
        let dest = match (src.transport, m.top_via()) {
            (Transport::Udp, Some(via)) => {
                let (host, port) = via.response_target();
                addr_of(&host, port).map_or(src, |addr| Dest { transport: Transport::Udp, addr })
            }
            _ => src,
        };
        let key = match self.txs.on_request(Instant::now(), &m, dest) {
            Incoming::New(k) => k,
            Incoming::Retransmission(Some((b, d))) => return self.t.send(b, d),
            Incoming::Retransmission(None) | Incoming::Absorbed => return,
            Incoming::Ack2xx => return self.on_ack(m),
            Incoming::Stateless => {
                if m.method() != "ACK" {
                    let mut r = m.response(400, "Missing branch parameter", Some("b2b"));
                    r.push("Server", "charging-ra");
                    self.t.send(r.to_bytes(), dest);
                }
                return;
            }
        };
        if m.header("Max-Forwards").and_then(|v| v.trim().parse::<u8>().ok()) == Some(0) {
            return self.reply(&key, &m, 483, "Too Many Hops");
        }
        let method = m.method().to_string();
        if method == "CANCEL" {
            return self.on_cancel(key, m);
        }
        if let Some(tag) = m.to_tag().map(str::to_string) {
            let leg = (m.call_id().to_string(), tag.clone());
            if let Some(&(call, side)) = self.legs.get(&leg) {
                return self.in_dialog(call, side, key, m);
            }
            if self.ended_legs.contains_key(&leg) {
                // The call just ended here (a BYE crossed ours): done, not to be loaded again.
                let (code, reason) =
                    if method == "BYE" { (200, "OK") } else { (481, "Call/Transaction Does Not Exist") };
                return self.reply(&key, &m, code, reason);
            }
            return self.unknown_dialog(key, m, dest, tag);
        }
        match method.as_str() {
            "INVITE" => self.new_call(key, m, dest),
            "OPTIONS" => {
                let mut r = m.response(200, "OK", Some("b2b"));
                r.push("Allow", "INVITE, ACK, CANCEL, BYE, UPDATE, INFO, OPTIONS");
                self.send_response(&key, &r);
            }
            "BYE" | "UPDATE" | "INFO" | "PRACK" => self.reply(&key, &m, 481, "Call/Transaction Does Not Exist"),
            _ => {
                let mut r = m.response(405, "Method Not Allowed", Some("b2b"));
                r.push("Allow", "INVITE, ACK, CANCEL, BYE, UPDATE, INFO, OPTIONS");
                self.send_response(&key, &r);
            }
        }
    }

    fn new_call(&mut self, key: ServerKey, m: Message, src: Dest) {
        self.reply(&key, &m, 100, "Trying");
        self.next_call += 1;
        let id = self.next_call;
        let a_tag = self.fresh("a");
        let a = Dialog::uas(&m, &a_tag, &self.contact(src.transport), src.transport);
        let b_transport = self.cfg.next_hop_transport;
        let b_call_id = format!("{}@charging-ra", uuid::Uuid::now_v7());
        let b_tag = self.fresh("b");
        let b_target = m.uri().to_string();
        let b = Dialog::uac(
            &b_call_id,
            &b_tag,
            &strip_tag(m.header("From").unwrap_or_default()),
            &strip_tag(m.header("To").unwrap_or_default()),
            &b_target,
            Vec::new(),
            &self.contact(b_transport),
            b_transport,
        );
        let a_invite_cseq = m.cseq().map_or(1, |c| c.0);
        let conv = uuid::Uuid::now_v7().to_string();
        self.legs.insert((a.call_id.clone(), a.local_tag.clone()), (id, Side::A));
        self.legs.insert((b.call_id.clone(), b.local_tag.clone()), (id, Side::B));
        self.invites.insert(key.clone(), id);
        let app = AppData { sdp_a: sdp(&m), ..AppData::default() };
        let invite_key = Some(key.clone());
        let call = Call {
            conv: conv.clone(),
            rec: CallRecord { a, b, a_invite_cseq, b_invite_cseq: 0, app: None },
            app,
            phase: Phase::Charging,
            a_invite: Some((key.clone(), m.clone())),
            b_invite: None,
            cancelled: false,
            cancel_on_provisional: false,
            invite_key,
            client_invite: [None, None],
            server_invite: [None, None],
            acks: [None, None],
            awaiting_ack: None,
            replicated: None,
            writing: false,
            dirty: false,
            quota_at: None,
            reauthorizing: false,
            reauthorize_next: None,
            reporting_secs: 0,
        };
        self.calls.insert(id, call);
        self.stats.calls += 1;
        self.stats.active += 1;
        match self.cfg.charging.clone() {
            None => self.call_b(id),
            Some(c) => {
                // IMS online charging (TS 32.299): CCR-I before the call is offered to the callee.
                let who = m.header("P-Asserted-Identity").or_else(|| m.header("From")).map(uri_of).unwrap_or("");
                let subscriber = Some(Subscriber { kind: "sip_uri".into(), data: who.to_string() });
                let rg = vec![RatingGroupRequest {
                    rating_group: c.rating_group,
                    service_id: None,
                    requested: Units { time: Some(c.quota.as_secs()), ..Units::default() },
                }];
                let options = SessionOptions { convergence: Some(conv), replicate: Some(false), reports_usage: true };
                let engine = self.engine.clone();
                let ev = self.ev.clone();
                tokio::spawn(async move {
                    let r = engine
                        .open_session_with(App::Ro, subscriber, Some(c.service_context), rg, Vec::new(), options)
                        .await;
                    let _ = ev.send(Ev::Opened(id, r));
                });
            }
        }
    }

    /// Whether a grant carries a Final-Unit-Indication. A voice call has no top-up server to redirect to and no
    /// filter to restrict, so every Final-Unit-Action ends it when the units are used.
    fn final_units(o: &Outcome) -> bool {
        o.granted.iter().any(|g| g.final_unit.is_some())
    }

    fn granted_secs(o: &Outcome) -> u64 {
        o.granted.iter().filter(|g| g.result_code == 2001 || g.result_code == 0).filter_map(|g| g.granted.time).sum()
    }

    fn on_opened(&mut self, id: u64, r: Result<Outcome, ChargingError>) {
        let Some(call) = self.calls.get_mut(&id) else {
            // The caller went away while the OCS was asked: end the session it opened.
            if let Ok(o) = r {
                let engine = self.engine.clone();
                tokio::spawn(async move { engine.terminate(&o.session_id, Vec::new()).await });
            }
            return;
        };
        match r {
            Ok(o) => {
                let granted = Self::granted_secs(&o);
                self.by_ro.insert(o.session_id.clone(), id);
                call.app.ro_session = Some(o.session_id.clone());
                call.app.granted_secs = granted;
                call.app.unmetered = o.ccfh.is_some() || granted == 0;
                call.app.final_units = Self::final_units(&o);
                if call.cancelled {
                    self.end_call(id, None, "cancelled while charging");
                    return;
                }
                if o.ccfh.is_none() && o.result_code.is_some_and(|c| c != 2001)
                    || (granted == 0 && o.ccfh.is_none() && !o.granted.is_empty())
                {
                    let code = o.result_code.unwrap_or(0);
                    return self.refuse(id, code, "credit control refused the call");
                }
                self.call_b(id);
            }
            Err(ChargingError::Refused { result_code, reason, .. }) => {
                tracing::info!(reason = %reason, "call refused by credit control");
                self.refuse(id, result_code.unwrap_or(0), &reason);
            }
            Err(e @ ChargingError::Overloaded(_)) => {
                // The engine logged the episode once; a flood of INVITEs must not be a flood of lines.
                tracing::debug!(error = %e, "call refused: node at max_sessions");
                self.refuse(id, 0, &e.to_string());
            }
            Err(e) => {
                tracing::warn!(error = %e, "charging failed; call refused");
                self.refuse(id, 0, &e.to_string());
            }
        }
    }

    /// Answers leg A's INVITE with an error for a charging refusal: 402 for no credit (4012), 403 for other
    /// refusals, 503 when credit control could not be reached.
    fn refuse(&mut self, id: u64, result_code: u32, why: &str) {
        let (code, reason) = match result_code {
            4012 => (402, "Payment Required"),
            0 => (503, "Service Unavailable"),
            _ => (403, "Forbidden"),
        };
        tracing::debug!(why, code, "call refused");
        if let Some((key, m)) = self.calls.get_mut(&id).and_then(|c| c.a_invite.take()) {
            self.reply(&key, &m, code, reason);
        }
        self.stats.failed += 1;
        self.end_call(id, Some(0), "refused");
    }

    fn call_b(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some((_, a_inv)) = call.a_invite.clone() else { return };
        call.phase = Phase::Calling;
        let mut inv = call.rec.b.request("INVITE", None);
        call.rec.b_invite_cseq = call.rec.b.local_cseq;
        let mf = a_inv.header("Max-Forwards").and_then(|v| v.trim().parse::<u8>().ok()).unwrap_or(70);
        inv.set("Max-Forwards", mf.saturating_sub(1).to_string());
        copy_body(&a_inv, &mut inv);
        if let Some(pai) = a_inv.header("P-Asserted-Identity") {
            inv.push("P-Asserted-Identity", pai);
        }
        let dest = match self.cfg.next_hop {
            Some(addr) => Some(Dest { transport: self.cfg.next_hop_transport, addr }),
            None => resolve(a_inv.uri(), self.cfg.next_hop_transport),
        };
        let Some(dest) = dest else {
            let (key, m) = self.calls.get_mut(&id).and_then(|c| c.a_invite.take()).expect("pending");
            self.reply(&key, &m, 404, "Not Found");
            self.stats.failed += 1;
            return self.end_call(id, Some(0), "no route");
        };
        let via = self.via(dest.transport);
        inv.push_front("Via", via);
        let (key, bytes) = self.txs.send(Instant::now(), inv, dest);
        self.t.send(bytes, dest);
        self.clients.insert(key.clone(), (id, Purpose::Initial));
        let call = self.calls.get_mut(&id).expect("call");
        call.b_invite = Some(key.clone());
        call.client_invite[Side::B.index()] = Some(key);
    }

    fn on_response(&mut self, mut m: Message) {
        // A response to a request this node forwarded statelessly to a call's owner: pop our Via, pass it on.
        if m.top_via().and_then(|v| v.branch).is_some_and(|b| b.starts_with(FORWARD_BRANCH)) {
            m.pop("Via");
            if let Some(v) = m.top_via() {
                let (host, port) = v.response_target();
                if let Some(addr) = addr_of(&host, port) {
                    let transport = Transport::from_name(&v.transport).unwrap_or(Transport::Udp);
                    self.t.send(m.to_bytes(), Dest { transport, addr });
                }
            }
            return;
        }
        let (ev, send) = self.txs.on_response(Instant::now(), &m);
        if let Some((b, d)) = send {
            self.t.send(b, d);
        }
        match ev {
            ResponseEvent::Deliver(key) => self.deliver(key, m),
            ResponseEvent::Absorbed => {}
            ResponseEvent::Stray => {
                // A retransmitted 2xx to an INVITE: ACK it again (§13.2.2.4).
                if m.method() == "INVITE" && (200..300).contains(&m.code()) {
                    let leg = (m.call_id().to_string(), m.from_tag().unwrap_or("").to_string());
                    let n = m.cseq().map(|c| c.0);
                    if let Some(&(id, side)) = self.legs.get(&leg)
                        && let Some((_, b, d)) = self
                            .calls
                            .get(&id)
                            .and_then(|c| c.acks[side.index()].clone())
                            .filter(|(cseq, _, _)| Some(*cseq) == n)
                    {
                        self.t.send(b, d);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, key: ClientKey, m: Message) {
        let code = m.code();
        let final_ = code >= 200;
        let Some((id, purpose)) = (if final_ { self.clients.remove(&key) } else { self.clients.get(&key).cloned() })
        else {
            return;
        };
        if !self.calls.contains_key(&id) {
            // The call went (fenced) with a request of it relayed: its transaction still gets an answer.
            if let (Purpose::Relay { server, request, .. }, true) = (&purpose, final_) {
                let r = request.response(code, "Call Gone", None);
                self.send_response(server, &r);
            }
            return;
        }
        match purpose {
            Purpose::Initial => self.initial_response(id, key, m),
            Purpose::Relay { server, request, from } => {
                let to = from; // the side the request came from gets the response
                let call = self.calls.get_mut(&id).expect("call");
                let other = to.other();
                if m.method() == "INVITE" && final_ {
                    call.client_invite[other.index()] = None;
                }
                if (200..300).contains(&code) && matches!(m.method(), "INVITE" | "UPDATE") {
                    call.refreshed(other, &m);
                }
                let (tag, transport) = (call.leg(to).local_tag.clone(), call.leg(to).transport);
                let reason = match &m.start {
                    StartLine::Response { reason, .. } => reason.clone(),
                    StartLine::Request { .. } => String::new(),
                };
                let mut r = request.response(code, &reason, Some(&tag));
                copy_body(&m, &mut r);
                if matches!(m.method(), "INVITE" | "UPDATE") && (101..300).contains(&code) {
                    r.push("Contact", format!("<{}>", contact_for(&self.me, transport)));
                }
                if final_ {
                    call.server_invite[to.index()] = call.server_invite[to.index()].take().filter(|k| *k != server);
                    if m.method() == "INVITE" && (200..300).contains(&code) {
                        // The ACK of this 2xx comes from `to` and goes on to the other leg (end to end).
                        call.awaiting_ack = Some(to);
                    } else {
                        self.mark_dirty(id);
                    }
                }
                self.send_response(&server, &r);
            }
            Purpose::Bye => {}
        }
    }

    fn initial_response(&mut self, id: u64, _key: ClientKey, m: Message) {
        let code = m.code();
        let call = self.calls.get_mut(&id).expect("call");
        if code == 100 {
            return;
        }
        call.rec.b.on_response(&m);
        if code < 200 && call.cancel_on_provisional {
            return self.cancel_b(id);
        }
        let Some((akey, ainv)) = call.a_invite.clone() else {
            // Leg A is gone (cancelled): a late 2xx is ACKed and the new dialog ended at once.
            if (200..300).contains(&code) {
                let ack = call.rec.b.request("ACK", Some(call.rec.b_invite_cseq));
                let bye = call.rec.b.request("BYE", None);
                self.send_in_dialog(id, Side::B, ack, Purpose::Bye);
                self.send_in_dialog(id, Side::B, bye, Purpose::Bye);
                self.end_call(id, Some(0), "answered after cancel");
            } else if code >= 200 {
                // The 487 (or any final answer) to the cancelled INVITE: the call is over.
                self.end_call(id, Some(0), "cancelled");
            }
            return;
        };
        let reason = match &m.start {
            StartLine::Response { reason, .. } => reason.clone(),
            StartLine::Request { .. } => String::new(),
        };
        let a_tag = call.rec.a.local_tag.clone();
        let a_transport = call.rec.a.transport;
        let mut r = ainv.response(code, &reason, Some(&a_tag));
        copy_body(&m, &mut r);
        if code < 300 {
            r.push("Contact", format!("<{}>", self.contact(a_transport)));
        }
        if code < 200 {
            self.send_response(&akey, &r);
            return;
        }
        let call = self.calls.get_mut(&id).expect("call");
        call.a_invite = None;
        call.b_invite = None;
        call.client_invite[Side::B.index()] = None;
        self.invites.remove(&akey);
        if (200..300).contains(&code) {
            call.phase = Phase::Answered;
            call.app.answered_at_ms = wall_ms();
            call.app.sdp_b = sdp(&m);
            self.arm_quota(id);
            self.send_response(&akey, &r);
            self.stats.answered += 1;
            return;
        }
        self.send_response(&akey, &r);
        self.stats.failed += 1;
        self.end_call(id, Some(0), "not answered");
    }

    fn arm_quota(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if let Some(at) = call.quota_at.take() {
            self.quota.remove(&(at, id));
        }
        let Some(deadline) = call.app.quota_deadline_ms() else { return };
        let wait = Duration::from_millis(deadline.saturating_sub(wall_ms()));
        let at = Instant::now() + wait;
        call.quota_at = Some(at);
        self.quota.insert((at, id), ());
    }

    /// An ACK for a 2xx: leg A's first ACK confirms the call; a re-INVITE's ACK goes on to the other leg.
    fn on_ack(&mut self, m: Message) {
        let Some(tag) = m.to_tag() else { return };
        let Some(&(id, side)) = self.legs.get(&(m.call_id().to_string(), tag.to_string())) else { return };
        let call = self.calls.get_mut(&id).expect("leg of a call");
        if side == Side::A && call.phase == Phase::Answered {
            call.phase = Phase::Confirmed;
            call.rec.a.confirmed = true;
            let mut ack = call.rec.b.request("ACK", Some(call.rec.b_invite_cseq));
            copy_body(&m, &mut ack);
            self.send_in_dialog(id, Side::B, ack, Purpose::Bye);
            self.start_replicating(id);
            return;
        }
        if call.awaiting_ack == Some(side) {
            call.awaiting_ack = None;
            let other = side.other();
            let n = *call.invite_cseq(other);
            let mut ack = call.leg_mut(other).request("ACK", Some(n));
            copy_body(&m, &mut ack);
            self.send_in_dialog(id, other, ack, Purpose::Bye);
            self.mark_dirty(id);
        }
    }

    fn on_cancel(&mut self, key: ServerKey, m: Message) {
        let inv_key = ServerKey { method: "INVITE".into(), ..key.clone() };
        let Some(&id) = self.invites.get(&inv_key) else {
            return self.reply(&key, &m, 481, "Call/Transaction Does Not Exist");
        };
        self.reply(&key, &m, 200, "OK");
        if !self.terminate_invite(id) {
            return;
        }
        // §9.2: the INVITE was answered 487; leg B's INVITE is cancelled in turn (§9.1).
        self.stats.failed += 1;
        self.cancel_b(id);
    }

    /// Cancels leg B's INVITE (§9.1): at once if it has had a provisional response, else when the first one comes
    /// (a CANCEL must not overtake the INVITE). Its final response (487) then ends the call. A call whose INVITE
    /// has not gone out yet (charging) ends when the CCA-I comes back; one with nothing pending ends now.
    fn cancel_b(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(bkey) = call.b_invite.clone() else {
            if call.phase != Phase::Charging {
                self.end_call(id, Some(0), "cancelled");
            }
            return;
        };
        if !self.txs.client_proceeding(&bkey) {
            call.cancel_on_provisional = true;
            return;
        }
        call.cancel_on_provisional = false;
        if let Some((inv, dest)) = self.txs.client_request(&bkey) {
            let mut c = Message::request("CANCEL", inv.uri());
            for name in ["Via", "From", "To", "Call-ID"] {
                if let Some(v) = inv.header(name) {
                    c.push(name, v);
                }
            }
            c.push("CSeq", format!("{} CANCEL", inv.cseq().map_or(1, |x| x.0)));
            c.push("Max-Forwards", "70");
            for r in inv.headers_named("Route") {
                c.push("Route", r);
            }
            let (k, b) = self.txs.send(Instant::now(), c, dest);
            self.t.send(b, dest);
            self.clients.insert(k, (id, Purpose::Bye));
        }
    }

    fn in_dialog(&mut self, id: u64, side: Side, key: ServerKey, m: Message) {
        let method = m.method().to_string();
        let call = self.calls.get_mut(&id).expect("leg of a call");
        if !call.leg_mut(side).accept_remote_cseq(&m) {
            // §12.2.2: lower CSeq than the last one: out of order.
            return self.reply(&key, &m, 500, "CSeq Out of Order");
        }
        if matches!(call.phase, Phase::Charging | Phase::Calling) {
            // An early dialog (no final response yet): only BYE from the caller makes sense; the rest waits.
            if method == "BYE" && side == Side::A {
                self.reply(&key, &m, 200, "OK");
                return self.on_cancel_like(id);
            }
            return self.reply(&key, &m, 491, "Request Pending");
        }
        match method.as_str() {
            "BYE" => {
                self.reply(&key, &m, 200, "OK");
                let other = side.other();
                let call = self.calls.get_mut(&id).expect("call");
                let bye = call.leg_mut(other).request("BYE", None);
                self.send_in_dialog(id, other, bye, Purpose::Bye);
                self.stats.ended += 1;
                self.end_call(id, None, "BYE");
            }
            _ => {
                if method == "INVITE" {
                    if call.client_invite[side.index()].is_some() {
                        // §14.2 glare: we have our own INVITE pending toward this side.
                        let mut r = m.response(491, "Request Pending", Some("b2b"));
                        r.push("Server", "charging-ra");
                        return self.send_response(&key, &r);
                    }
                    if call.server_invite[side.index()].is_some() {
                        let mut r = m.response(500, "Server Internal Error", Some("b2b"));
                        r.push("Retry-After", "1");
                        return self.send_response(&key, &r);
                    }
                    call.server_invite[side.index()] = Some(key.clone());
                    if let Some((n, _)) = m.cseq() {
                        *call.invite_cseq(side) = n;
                    }
                }
                if matches!(method.as_str(), "INVITE" | "UPDATE") {
                    call.refreshed(side, &m);
                }
                let other = side.other();
                let mut fwd = call.leg_mut(other).request(&method, None);
                if method == "INVITE" {
                    *call.invite_cseq(other) = call.leg(other).local_cseq;
                }
                copy_body(&m, &mut fwd);
                let purpose = Purpose::Relay { server: key.clone(), request: Box::new(m.clone()), from: side };
                match self.send_in_dialog(id, other, fwd, purpose) {
                    Some(ck) if method == "INVITE" => {
                        self.calls.get_mut(&id).expect("call").client_invite[other.index()] = Some(ck);
                        // §17.2.1: the answer comes from the other leg, a round trip or more away; without a
                        // provisional response the sender would retransmit its re-INVITE meanwhile (UDP, Timer A).
                        self.reply(&key, &m, 100, "Trying");
                    }
                    Some(_) => {}
                    None => self.reply(&key, &m, 502, "Bad Gateway"),
                }
            }
        }
    }

    /// The caller gave up (CANCEL, or BYE before the answer): leg A's INVITE, if still pending, is answered 487
    /// (§9.2). `false` when the call is gone.
    fn terminate_invite(&mut self, id: u64) -> bool {
        let Some(call) = self.calls.get_mut(&id) else { return false };
        call.cancelled = true;
        if let Some((akey, ainv)) = call.a_invite.take() {
            self.invites.remove(&akey);
            let tag = call.rec.a.local_tag.clone();
            let r = ainv.response(487, "Request Terminated", Some(&tag));
            self.send_response(&akey, &r);
        }
        true
    }

    fn on_cancel_like(&mut self, id: u64) {
        if self.terminate_invite(id) {
            self.cancel_b(id);
        }
    }

    /// A dead node's call whose quota has run out: adopt it (the quota timer fires at once once it is installed).
    fn quota_due(&mut self, pkey: String) {
        let Some(own) = self.own.clone() else { return };
        if self.adopting.contains_key(&pkey) {
            return;
        }
        self.adopting.insert(pkey.clone(), Vec::new());
        let gap = self.cfg.cseq_gap;
        let ttl = self.cfg.record_ttl;
        let ev = self.ev.clone();
        tokio::spawn(async move {
            let outcome = adopt(&own, &pkey, gap, None, ttl).await;
            let _ = ev.send(Ev::Adopted(pkey, outcome));
        });
    }

    /// A mid-dialog request for a dialog this node does not hold: adopt it, forward it, or 481.
    fn unknown_dialog(&mut self, key: ServerKey, m: Message, dest: Dest, local_tag: String) {
        let Some(own) = self.own.clone() else {
            return self.reply(&key, &m, 481, "Call/Transaction Does Not Exist");
        };
        let remote_tag = m.from_tag().unwrap_or("").to_string();
        let pkey = keys::sip(own.cluster(), m.call_id(), &local_tag, &remote_tag);
        let first = !self.adopting.contains_key(&pkey);
        self.adopting.entry(pkey.clone()).or_default().push((m.clone(), dest, key));
        if !first {
            return;
        }
        let seen = m.cseq().map(|c| (m.call_id().to_string(), local_tag, c.0));
        let gap = self.cfg.cseq_gap;
        let ttl = self.cfg.record_ttl;
        let ev = self.ev.clone();
        tokio::spawn(async move {
            let outcome = adopt(&own, &pkey, gap, seen, ttl).await;
            let _ = ev.send(Ev::Adopted(pkey, outcome));
        });
    }

    fn forward(&mut self, mut m: Message, to: SocketAddr) {
        let branch = m.top_via().and_then(|v| v.branch).unwrap_or_default();
        let mf = m.header("Max-Forwards").and_then(|v| v.trim().parse::<u8>().ok()).unwrap_or(70);
        if mf <= 1 || m.header("X-Charging-Ra-Forwarded").is_some() {
            // Already forwarded once: the owner did not take it either (its lease changed meanwhile).
            if let Some(v) = m.top_via() {
                let mut r = m.response(482, "Loop Detected", Some("b2b"));
                r.push("Server", "charging-ra");
                let (h, p) = v.response_target();
                if let Some(addr) = addr_of(&h, p) {
                    self.t.send(r.to_bytes(), Dest { transport: Transport::Udp, addr });
                }
            }
            return;
        }
        m.set("Max-Forwards", (mf - 1).to_string());
        m.push("X-Charging-Ra-Forwarded", self.me.clone());
        let suffix = branch.trim_start_matches("z9hG4bK");
        m.push_front("Via", format!("SIP/2.0/UDP {};branch={FORWARD_BRANCH}{suffix}", self.me));
        self.stats.forwarded += 1;
        self.t.send(m.to_bytes(), Dest { transport: Transport::Udp, addr: to });
    }

    fn on_adopted(&mut self, pkey: String, outcome: Adoption) {
        let waiting = self.adopting.remove(&pkey).unwrap_or_default();
        match outcome {
            Adoption::Unknown => {
                for (m, _, key) in waiting {
                    if m.method() != "ACK" {
                        self.reply(&key, &m, 481, "Call/Transaction Does Not Exist");
                    }
                }
            }
            Adoption::Failed(why) => {
                tracing::warn!(why = %why, "adoption failed");
                for (m, _, key) in waiting {
                    let mut r = m.response(503, "Service Unavailable", Some("b2b"));
                    r.push("Retry-After", "1");
                    self.send_response(&key, &r);
                }
            }
            Adoption::Proxy(None) => {
                for (m, _, key) in waiting {
                    self.reply(&key, &m, 503, "Owner Unreachable");
                }
            }
            Adoption::Proxy(Some(addr)) => {
                for (m, _, key) in waiting {
                    // The owner answers it: no transaction here, so that retransmissions are forwarded too.
                    self.txs.forget_server(&key);
                    self.forward(m, addr);
                }
            }
            Adoption::Owned { convergence, epoch, record, version, from } => {
                let id = self.install(convergence, epoch, *record, version);
                if let Some(from) = &from {
                    self.stats.adopted += 1;
                    tracing::info!(call = id, from = %from, epoch, "SIP call adopted");
                    self.move_hint(id, from);
                }
                for (m, _, key) in waiting {
                    let Some(tag) = m.to_tag() else { continue };
                    if let Some(&(cid, side)) = self.legs.get(&(m.call_id().to_string(), tag.to_string())) {
                        self.in_dialog(cid, side, key, m);
                    }
                }
            }
        }
    }

    /// After an adoption: the dead owner's quota hint goes, this node's is written with the next state write.
    fn move_hint(&mut self, id: u64, from: &str) {
        let (Some(own), Some(call)) = (self.own.clone(), self.calls.get(&id)) else { return };
        let old = hint_key(own.cluster(), from, &call.conv);
        tokio::spawn(async move {
            let _ = own.store().delete(&old, Expect::Any).await;
        });
        self.mark_dirty(id);
    }

    /// Installs a call loaded from the store.
    fn install(&mut self, conv: String, epoch: u64, rec: CallRecord, version: u64) -> u64 {
        if let Some(&(id, _)) = self.legs.get(&(rec.a.call_id.clone(), rec.a.local_tag.clone())) {
            // Loaded twice (adoptions through both legs at once): keep the newer write.
            if let Some(rep) = self.calls.get_mut(&id).and_then(|c| c.replicated.as_mut())
                && rep.version.is_none_or(|v| v < version)
            {
                rep.version = Some(version);
                rep.epoch = epoch;
            }
            return id;
        }
        self.next_call += 1;
        let id = self.next_call;
        self.legs.insert((rec.a.call_id.clone(), rec.a.local_tag.clone()), (id, Side::A));
        self.legs.insert((rec.b.call_id.clone(), rec.b.local_tag.clone()), (id, Side::B));
        let app = rec.app.clone().unwrap_or_default();
        if let Some(sid) = &app.ro_session {
            self.by_ro.insert(sid.clone(), id);
        }
        self.calls.insert(
            id,
            Call {
                conv,
                rec,
                app,
                phase: Phase::Confirmed,
                a_invite: None,
                b_invite: None,
                cancelled: false,
                cancel_on_provisional: false,
                invite_key: None,
                client_invite: [None, None],
                server_invite: [None, None],
                acks: [None, None],
                awaiting_ack: None,
                replicated: Some(Replica { epoch, version: Some(version) }),
                writing: false,
                dirty: false,
                quota_at: None,
                reauthorizing: false,
                reauthorize_next: None,
                reporting_secs: 0,
            },
        );
        self.stats.active += 1;
        self.arm_quota(id);
        id
    }

    fn record(&self, call: &Call) -> CallRecord {
        let mut rec = call.rec.clone();
        rec.app = match self.cfg.replication {
            DialogReplication::ConfirmedDialog => Some(call.app.clone()),
            _ => None,
        };
        rec
    }

    /// The quota hint of a call, written with its state (only when an adopter could charge it: application data).
    fn hint_write(&self, call: &Call) -> Option<Write> {
        let own = self.own.as_ref()?;
        if self.cfg.replication != DialogReplication::ConfirmedDialog {
            return None;
        }
        let key = hint_key(own.cluster(), &own.me().node, &call.conv);
        let value = call.app.quota_deadline_ms().map(|deadline_ms| {
            let leg = keys::sip(own.cluster(), &call.rec.a.call_id, &call.rec.a.local_tag, &call.rec.a.remote_tag);
            replication::encode(&QuotaHint { format: FORMAT, deadline_ms, leg })
        });
        Some(Write { key, value, expect: Expect::Any, ttl: Some(self.cfg.record_ttl) })
    }

    /// The call is confirmed: write both dialogs (and the Ro session) under its convergence name.
    fn start_replicating(&mut self, id: u64) {
        let Some(own) = self.own.clone() else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.replicated = Some(Replica { epoch: 1, version: None });
        call.writing = true;
        let call = self.calls.get(&id).expect("call");
        let rec = self.record(call);
        let hint = self.hint_write(call);
        let conv = call.conv.clone();
        let ro =
            if self.cfg.replication == DialogReplication::ConfirmedDialog { call.app.ro_session.clone() } else { None };
        let engine = self.engine.clone();
        let ttl = self.cfg.record_ttl;
        let ev = self.ev.clone();
        self.stats.store_writes += 1;
        tokio::spawn(async move {
            let r = create_records(&own, &engine, ro, &conv, rec, hint, ttl).await;
            let _ = ev.send(Ev::Created(id, r));
        });
    }

    fn mark_dirty(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(rep) = call.replicated.clone() else { return };
        if call.writing {
            call.dirty = true;
            return;
        }
        let Some(version) = rep.version else { return };
        let Some(own) = self.own.clone() else { return };
        call.writing = true;
        call.dirty = false;
        let call = self.calls.get(&id).expect("call");
        let rec = self.record(call);
        let hint = self.hint_write(call);
        let key = keys::state(own.cluster(), &call.conv, "sip/call");
        let me = own.me().node.clone();
        let ttl = self.cfg.record_ttl;
        let ev = self.ev.clone();
        self.stats.store_writes += 1;
        tokio::spawn(async move {
            let state = StateRecord { format: FORMAT, written_by_epoch: rep.epoch, written_by: me, state: rec };
            // The state first: the hint goes with it, and is only a hint (its own result does not matter).
            let mut writes = vec![Write {
                key,
                value: Some(replication::encode(&state)),
                expect: Expect::Version(version),
                ttl: Some(ttl),
            }];
            writes.extend(hint);
            let r = match own.store().batch(writes).await {
                Ok(mut results) => results.swap_remove(0),
                Err(e) => Err(e),
            };
            let _ = ev.send(Ev::Written(id, r));
        });
    }

    /// A write of a call that ended meanwhile has finished: now its records can be deleted.
    fn closed(&mut self, id: u64, version: Option<u64>) -> bool {
        let Some(call) = self.closing.get_mut(&id) else { return false };
        if let (Some(rep), Some(v)) = (call.replicated.as_mut(), version) {
            rep.version = Some(v);
        }
        self.delete_records(id);
        self.closing.remove(&id);
        true
    }

    /// A write of the call's state landed at version `v`; changes made meanwhile are written next.
    fn wrote(&mut self, id: u64, v: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if let Some(rep) = call.replicated.as_mut() {
            rep.version = Some(v);
        }
        if call.dirty {
            self.mark_dirty(id);
        }
    }

    fn on_written(&mut self, id: u64, r: Result<u64, StoreError>) {
        if self.closed(id, r.as_ref().ok().copied()) {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.writing = false;
        match r {
            Ok(v) => self.wrote(id, v),
            Err(StoreError::Conflict { .. }) => {
                // Fencing: another node adopted this call; this node must not signal or charge for it any more.
                tracing::warn!(call = id, conv = %call.conv, "SIP call adopted by another node; dropping it here");
                self.stats.fenced += 1;
                self.forget(id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIP call state write failed; retrying with the next change");
                call.dirty = true;
            }
        }
    }

    fn on_created(&mut self, id: u64, r: Result<u64, String>) {
        if self.closed(id, r.as_ref().ok().copied()) {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.writing = false;
        match r {
            Ok(v) => {
                self.stats.replicated += 1;
                self.wrote(id, v);
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIP call could not be replicated; it lives on this node only");
                call.replicated = None;
            }
        }
    }

    /// Ends a call: CCR-T with the used time (or `used` seconds), records deleted, local state dropped.
    fn end_call(&mut self, id: u64, used: Option<u64>, why: &str) {
        let Some(call) = self.calls.get(&id) else { return };
        tracing::debug!(call = id, why, "call ends");
        if let (Some(sid), Some(c)) = (call.app.ro_session.clone(), self.cfg.charging.clone()) {
            let secs = used
                .unwrap_or_else(|| if call.app.answered_at_ms == 0 { 0 } else { call.app.unreported_secs(wall_ms()) });
            let used = vec![UsedUnits {
                rating_group: c.rating_group,
                used: Units { time: Some(secs), ..Units::default() },
                reporting_reason: None,
            }];
            let engine = self.engine.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.terminate(&sid, used).await {
                    tracing::debug!(error = %e, session = %sid, "CCR-T not sent");
                }
            });
        }
        if call.writing {
            // A write is in flight: deleting now could run before it and leave its records behind. The deletion
            // follows it (`on_created` / `on_written`).
            let call = self.calls.remove(&id).expect("call");
            self.unindex(id, &call);
            self.tombstone(id, &call);
            self.closing.insert(id, call);
            return;
        }
        self.delete_records(id);
        if let Some(call) = self.calls.remove(&id) {
            self.unindex(id, &call);
            self.tombstone(id, &call);
        }
    }

    /// What ending a call leaves locally: requests relayed to the other leg and still unanswered are answered 487
    /// (§15.1.2), and both legs are remembered for 64·T1 so that a BYE crossing ours gets 200, not a second life
    /// through the store.
    fn tombstone(&mut self, id: u64, call: &Call) {
        let relays: Vec<ClientKey> = self
            .clients
            .iter()
            .filter(|(_, (cid, p))| *cid == id && matches!(p, Purpose::Relay { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for k in relays {
            if let Some((_, Purpose::Relay { server, request, .. })) = self.clients.remove(&k) {
                self.reply(&server, &request, 487, "Request Terminated");
            }
        }
        let now = Instant::now();
        for d in [&call.rec.a, &call.rec.b] {
            let leg = (d.call_id.clone(), d.local_tag.clone());
            self.ended_legs.insert(leg.clone(), now);
            self.ended_legs_order.push_back((now, leg));
        }
        let horizon = self.cfg.timers.t1 * 64;
        while let Some((at, leg)) = self.ended_legs_order.front().cloned() {
            if now.duration_since(at) < horizon {
                break;
            }
            self.ended_legs_order.pop_front();
            if self.ended_legs.get(&leg) == Some(&at) {
                self.ended_legs.remove(&leg);
            }
        }
    }

    /// Deletes a call's records (it ended).
    fn delete_records(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id).or_else(|| self.closing.get(&id)) else { return };
        if let (Some(own), Some(rep)) = (self.own.clone(), call.replicated.clone()) {
            let cluster = own.cluster().to_string();
            let rec = &call.rec;
            let mut writes = vec![
                Write {
                    key: keys::sip(&cluster, &rec.a.call_id, &rec.a.local_tag, &rec.a.remote_tag),
                    value: None,
                    expect: Expect::Any,
                    ttl: None,
                },
                Write {
                    key: keys::sip(&cluster, &rec.b.call_id, &rec.b.local_tag, &rec.b.remote_tag),
                    value: None,
                    expect: Expect::Any,
                    ttl: None,
                },
            ];
            // The state goes first, alone, conditional on the version this node wrote: if another node has adopted
            // the call meanwhile, it fails and nothing of the adopter's is touched.
            let state = rep.version.map(|v| Write {
                key: keys::state(&cluster, &call.conv, "sip/call"),
                value: None,
                expect: Expect::Version(v),
                ttl: None,
            });
            writes.push(Write {
                key: hint_key(&cluster, &own.me().node, &call.conv),
                value: None,
                expect: Expect::Any,
                ttl: None,
            });
            if call.app.ro_session.is_none() || self.cfg.replication != DialogReplication::ConfirmedDialog {
                // Nobody else holds the convergence record: the engine deletes it with the Ro session otherwise.
                writes.push(Write {
                    key: keys::convergence(&cluster, &call.conv),
                    value: None,
                    expect: Expect::Any,
                    ttl: None,
                });
            }
            // The state goes first and alone, conditional on this node's version, so a node fenced by an adopter
            // deletes nothing; then the rest: two batches.
            self.stats.store_writes += 1 + u64::from(state.is_some());
            self.deleting += 1;
            let ev = self.ev.clone();
            tokio::spawn(async move {
                let delete = async {
                    if let Some(state) = state {
                        match own.store().batch(vec![state]).await.map(|mut r| r.swap_remove(0)) {
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) => {
                                tracing::warn!(
                                    "a SIP call ended here was adopted by another node: its records are kept"
                                );
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "SIP call records not deleted; their TTL will");
                                return;
                            }
                        }
                    }
                    if let Err(e) = own.store().batch(writes).await {
                        tracing::warn!(error = %e, "SIP call records not deleted; their TTL will");
                    }
                };
                delete.await;
                let _ = ev.send(Ev::Deleted);
            });
        }
    }

    /// Drops a call's local state (ended, or fenced).
    fn forget(&mut self, id: u64) {
        let Some(call) = self.calls.remove(&id) else { return };
        self.unindex(id, &call);
    }

    fn unindex(&mut self, id: u64, call: &Call) {
        self.stats.active = self.stats.active.saturating_sub(1);
        self.legs.remove(&(call.rec.a.call_id.clone(), call.rec.a.local_tag.clone()));
        self.legs.remove(&(call.rec.b.call_id.clone(), call.rec.b.local_tag.clone()));
        if let Some(sid) = &call.app.ro_session {
            self.by_ro.remove(sid);
            self.ended_ro.insert(sid.clone());
            self.ended_order.push_back(sid.clone());
            while self.ended_order.len() > 10_000 {
                if let Some(old) = self.ended_order.pop_front() {
                    self.ended_ro.remove(&old);
                }
            }
        }
        if let Some(at) = call.quota_at {
            self.quota.remove(&(at, id));
        }
        if let Some(k) = &call.invite_key {
            self.invites.remove(k);
        }
    }

    /// Ends a call from this side: BYE on both legs (a confirmed call), or an error on a pending INVITE.
    fn hang_up(&mut self, id: u64, why: &str) {
        self.hang_up_reporting(id, why, None);
    }

    /// [`Actor::hang_up`], reporting `used` seconds in the CCR-T (default: the time not yet reported).
    fn hang_up_reporting(&mut self, id: u64, why: &str, used: Option<u64>) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        tracing::info!(call = id, why, "B2BUA ends the call");
        if let Some((key, m)) = call.a_invite.take() {
            call.cancelled = true;
            self.reply(&key, &m, 480, "Temporarily Unavailable");
            return self.cancel_b(id);
        }
        for side in [Side::A, Side::B] {
            let call = self.calls.get_mut(&id).expect("call");
            let d = call.leg_mut(side);
            if d.remote_tag.is_empty() {
                continue;
            }
            let mut bye = d.request("BYE", None);
            bye.push("Reason", format!("SIP;cause=200;text=\"{why}\""));
            self.send_in_dialog(id, side, bye, Purpose::Bye);
        }
        self.end_call(id, used, why);
    }

    fn on_charging(&mut self, sid: String, event: CcEvent) {
        let id = self.by_ro.get(&sid).copied();
        let reauthorize = match &event {
            CcEvent::ReAuthRequested => Some(REPORTING_REASON_FORCED_REAUTHORISATION),
            CcEvent::ValidityExpired { reporting_reason, .. } => Some(*reporting_reason),
            _ => None,
        };
        if let (Some(reason), Some(id)) = (reauthorize, id) {
            return self.reauthorize_now(id, reason);
        }
        let end = match &event {
            CcEvent::Terminate { reason, .. } => Some(reason.clone()),
            CcEvent::Aborted => Some("aborted by the OCS (ASR)".into()),
            // Whatever the Final-Unit-Action: a voice call can neither be redirected to a top-up server nor
            // restricted by filters (see `final_units`).
            CcEvent::FinalUnitReached { .. } => Some("final units used".into()),
            _ => None,
        };
        let Some(why) = end else { return };
        if id.is_none() && self.ended_ro.contains(&sid) {
            // The engine's own account of a call this node just ended (the CCR-T's answer, its final units).
            return;
        }
        match id {
            Some(id) => self.hang_up(id, &why),
            None => {
                // The engine adopted this call's Ro session (an ASR for a dead node's session): load the call
                // too, then hang it up. Once per session, whatever number of events says so.
                let Some(own) = self.own.clone() else { return };
                if !self.hangups.insert(sid.clone()) {
                    return;
                }
                let ev = self.ev.clone();
                let ttl = self.cfg.record_ttl;
                let gap = self.cfg.cseq_gap;
                tokio::spawn(async move {
                    let pkey = keys::diameter(own.cluster(), &sid);
                    let outcome = adopt(&own, &pkey, gap, None, ttl).await;
                    if let Adoption::Owned { convergence, epoch, record, version, from } = outcome {
                        let _ = ev.send(Ev::Adopted(
                            format!("hangup:{sid}\n{why}"),
                            Adoption::Owned { convergence, epoch, record, version, from },
                        ));
                    } else {
                        let _ = ev.send(Ev::Adopted(format!("hangup:{sid}\n{why}"), Adoption::Unknown));
                    }
                });
            }
        }
    }

    fn on_event(&mut self, e: Ev) {
        match e {
            Ev::Charging(sid, ev) => self.on_charging(sid, ev),
            Ev::Opened(id, r) => self.on_opened(id, r),
            Ev::Reauthorized(id, r) => self.on_reauthorized(id, r),
            Ev::Created(id, r) => self.on_created(id, r),
            Ev::Written(id, r) => self.on_written(id, r),
            Ev::Deleted => self.deleting -= 1,
            Ev::Adopted(k, a) => {
                if let Some(rest) = k.strip_prefix("hangup:") {
                    let (sid, why) = rest.split_once('\n').unwrap_or((rest, ""));
                    self.hangups.remove(sid);
                    if let Adoption::Owned { convergence, epoch, record, version, from } = a {
                        let id = self.install(convergence, epoch, *record, version);
                        if let Some(from) = &from {
                            self.move_hint(id, from);
                        }
                        self.stats.adopted += 1;
                        self.hang_up(id, why);
                    }
                } else {
                    self.on_adopted(k, a);
                }
            }
            Ev::QuotaDue(pkey) => self.quota_due(pkey),
            Ev::Stats(tx) => {
                let _ = tx.send(self.stats.clone());
            }
            // The run loop turns a stop into the drain before it gets here.
            Ev::Stop(done) => drop(done.send(())),
        }
    }

    /// The rest of a graceful stop: no message is taken and no timer fires any more (a survivor carries the calls
    /// on from what the store holds), only the writes in flight are seen through. A call changed while its
    /// previous write was in flight is written once that write returns (`wrote`), and one whose last write failed
    /// is written again, so the store ends with every call as it last was here; a write failing now is not retried.
    /// Deletions in flight are waited for too: a survivor must not adopt a call that ended here.
    async fn drain(mut self, mut events: mpsc::UnboundedReceiver<Ev>, done: oneshot::Sender<()>) {
        // A call whose last write failed is tried once more.
        let dirty: Vec<u64> = self.calls.iter().filter(|(_, c)| c.dirty && !c.writing).map(|(id, _)| *id).collect();
        for id in dirty {
            self.mark_dirty(id);
        }
        let mut done = vec![done];
        loop {
            let writing = self.calls.values().filter(|c| c.writing).count() + self.closing.len() + self.deleting;
            if writing == 0 {
                break;
            }
            match events.recv().await {
                Some(e @ (Ev::Written(..) | Ev::Created(..) | Ev::Deleted | Ev::Stats(_))) => self.on_event(e),
                Some(Ev::Stop(also)) => done.push(also),
                // What the engine says about a call now (an answer, a RAR) is left to the survivor that adopts it.
                Some(_) => {}
                None => break,
            }
        }
        tracing::info!(calls = self.calls.len(), "SIP B2BUA stopped; calls left to the cluster");
        for d in done {
            let _ = d.send(());
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        for f in self.txs.handle_timeout(now) {
            match f {
                Fired::Resend(b, d) => self.t.send(b, d),
                Fired::Timeout(key) => {
                    let Some((id, purpose)) = self.clients.remove(&key) else { continue };
                    match purpose {
                        Purpose::Initial => {
                            if let Some((k, m)) = self.calls.get_mut(&id).and_then(|c| c.a_invite.take()) {
                                self.reply(&k, &m, 408, "Request Timeout");
                            }
                            self.stats.failed += 1;
                            self.end_call(id, Some(0), "callee did not answer");
                        }
                        Purpose::Relay { server, request, from } => {
                            if let Some(c) = self.calls.get_mut(&id).filter(|_| request.method() == "INVITE") {
                                c.client_invite[from.other().index()] = None;
                                c.server_invite[from.index()] = None;
                            }
                            self.reply(&server, &request, 408, "Request Timeout");
                        }
                        Purpose::Bye => {}
                    }
                }
                Fired::AckTimeout(key) => {
                    // The call had already failed (a non-2xx went back): nothing of it is left to end. Counted,
                    // since a caller that never ACKs a failure is a caller whose ACKs are being lost.
                    self.stats.unacknowledged_failures += 1;
                    tracing::info!(branch = %key.branch, "no ACK for a non-2xx final response (Timer H)");
                }
                Fired::NoAck { call_id, .. } => {
                    let ids: Vec<u64> = self
                        .legs
                        .iter()
                        .filter(|((c, _), (_, s))| *c == call_id && *s == Side::A)
                        .map(|(_, (id, _))| *id)
                        .collect();
                    for id in ids {
                        let Some(call) = self.calls.get_mut(&id).filter(|c| c.phase == Phase::Answered) else {
                            continue;
                        };
                        // Leg B's 2xx waits for leg A's ACK to be relayed; §13.2.2.4: it is ACKed all the same
                        // before the BYE that ends the call.
                        let cseq = call.rec.b_invite_cseq;
                        let ack = call.rec.b.request("ACK", Some(cseq));
                        self.send_in_dialog(id, Side::B, ack, Purpose::Bye);
                        self.hang_up(id, "no ACK");
                    }
                }
            }
        }
        while let Some(entry) = self.quota.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (_, id) = *entry.key();
            entry.remove();
            self.quota_exhausted(id);
        }
    }

    /// The granted time is used up: report it and ask for more (CCR-U, Reporting-Reason QUOTA_EXHAUSTED).
    fn quota_exhausted(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.quota_at = None;
        if call.app.ro_session.is_none() || self.cfg.charging.is_none() || call.reauthorizing {
            return;
        }
        // The quota is used up: what was granted and not yet reported is what was used (a timer that fires late
        // leaves the rest to the next report).
        let secs = call.app.granted_secs.saturating_sub(call.app.reported_secs);
        if call.app.final_units {
            // RFC 4006 §5.6.2 with TERMINATE: the final units are used; the service ends and the CCR-T reports them.
            return self.hang_up_reporting(id, "final units used", Some(secs));
        }
        self.reauthorize(id, REPORTING_REASON_QUOTA_EXHAUSTED, secs);
    }

    /// The server asked for a re-authorization (RAR: RFC 4006 §5.5) or the grant's Validity-Time ran out (§5.1.2):
    /// report the time used so far and ask for more. The engine leaves this CCR-U to the call
    /// ([`SessionOptions::reports_usage`]), so it carries the call's real duration. One already in flight is
    /// followed by this one when it is answered.
    fn reauthorize_now(&mut self, id: u64, reason: i32) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.reauthorizing {
            call.reauthorize_next = Some(reason);
            return;
        }
        let secs = if call.app.answered_at_ms == 0 { 0 } else { call.app.unreported_secs(wall_ms()) };
        self.reauthorize(id, reason, secs);
    }

    /// CCR-U reporting `secs` with `reason` and asking for another quota.
    fn reauthorize(&mut self, id: u64, reason: i32, secs: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let (Some(sid), Some(c)) = (call.app.ro_session.clone(), self.cfg.charging.clone()) else { return };
        call.reauthorizing = true;
        let used = vec![UsedUnits {
            rating_group: c.rating_group,
            used: Units { time: Some(secs), ..Units::default() },
            reporting_reason: Some(reason),
        }];
        let rg = vec![RatingGroupRequest {
            rating_group: c.rating_group,
            service_id: None,
            requested: Units { time: Some(c.quota.as_secs()), ..Units::default() },
        }];
        // The quota's report is one per grant; the server's asks may repeat within a second.
        let key = match reason {
            REPORTING_REASON_QUOTA_EXHAUSTED => format!("{}:{}", call.conv, call.app.reported_secs + secs),
            _ => format!("{}:{}:{reason}:{}", call.conv, call.app.reported_secs + secs, wall_ms()),
        };
        let engine = self.engine.clone();
        let ev = self.ev.clone();
        call.app.reported_secs += secs;
        call.reporting_secs = secs;
        tokio::spawn(async move {
            let r = engine.update(&sid, used, rg, Some(key)).await;
            let _ = ev.send(Ev::Reauthorized(id, r));
        });
    }

    fn on_reauthorized(&mut self, id: u64, r: Result<Outcome, ChargingError>) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.reauthorizing = false;
        let next = call.reauthorize_next.take();
        let secs = std::mem::take(&mut call.reporting_secs);
        if !matches!(&r, Ok(o) if o.result_code.is_none_or(|c| c == 2001)) {
            // Not reported after all (refused, dropped after an ASR, failed): the CCR-T that ends the call reports
            // these seconds instead.
            call.app.reported_secs = call.app.reported_secs.saturating_sub(secs);
        }
        match r {
            Ok(o) if o.result_code.is_none_or(|c| c == 2001) => {
                let granted = Self::granted_secs(&o);
                if granted == 0 && o.ccfh.is_none() {
                    return self.hang_up(id, "no more credit");
                }
                call.app.granted_secs = call.app.reported_secs + granted;
                call.app.unmetered = o.ccfh.is_some();
                call.app.final_units = Self::final_units(&o);
                self.arm_quota(id);
                self.mark_dirty(id);
                if let Some(reason) = next {
                    self.reauthorize_now(id, reason);
                }
            }
            Ok(_) | Err(ChargingError::Refused { .. }) => self.hang_up(id, "credit control refused more time"),
            Err(ChargingError::Moved { .. }) => {
                // Another node adopted the call's charging: it has the call too.
                self.stats.fenced += 1;
                self.forget(id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "CCR-U failed; the call goes on unmetered");
                call.app.unmetered = true;
            }
        }
    }
}

/// The records of a newly confirmed call: the Ro session's (by the engine, which creates the convergence record),
/// then each leg's protocol record and the call's state, in one batch.
async fn create_records(
    own: &Ownership<AnyStore>,
    engine: &Engine,
    ro: Option<String>,
    conv: &str,
    rec: CallRecord,
    hint: Option<Write>,
    ttl: Duration,
) -> Result<u64, String> {
    let cluster = own.cluster().to_string();
    let pa = keys::sip(&cluster, &rec.a.call_id, &rec.a.local_tag, &rec.a.remote_tag);
    let pb = keys::sip(&cluster, &rec.b.call_id, &rec.b.local_tag, &rec.b.remote_tag);
    let mut writes = Vec::new();
    let [conv_w, proto_a] = own.creation_writes(conv, &pa, Some(ttl));
    let engine_made_conv = match &ro {
        Some(sid) => match engine.start_replicating(sid).await {
            Ok(()) => true,
            Err(e) => return Err(format!("Ro session not replicated: {e}")),
        },
        None => false,
    };
    if !engine_made_conv {
        writes.push(conv_w);
    }
    let proto_b = Write { key: pb, ..proto_a.clone() };
    writes.push(proto_a);
    writes.push(proto_b);
    writes.extend(hint.filter(|h| h.value.is_some()));
    let state = StateRecord { format: FORMAT, written_by_epoch: 1, written_by: own.me().node.clone(), state: rec };
    writes.push(Write {
        key: keys::state(&cluster, conv, "sip/call"),
        value: Some(replication::encode(&state)),
        expect: Expect::Absent,
        ttl: Some(ttl),
    });
    let results = own.store().batch(writes).await.map_err(|e| e.to_string())?;
    let mut last = 0;
    for r in results {
        last = r.map_err(|e| e.to_string())?;
    }
    Ok(last)
}

/// The adoption rule for a call, from one leg's protocol record (or the Ro session's): owned here, owned by a live
/// node (its SIP address), or taken over from a dead one; then the state is loaded, each leg's local CSeq jumps
/// by `gap`, and the state is stamped with the new epoch.
async fn adopt(
    own: &Ownership<AnyStore>,
    pkey: &str,
    gap: u32,
    seen: Option<(String, String, u32)>,
    ttl: Duration,
) -> Adoption {
    let res = match own.resolve(pkey).await {
        Ok(r) => r,
        Err(e) => return Adoption::Failed(e.to_string()),
    };
    let (convergence, epoch, from) = match res {
        Resolution::Unknown => return Adoption::Unknown,
        Resolution::Proxy { owner, .. } => {
            let lease = own.store().get(&keys::node(own.cluster(), &owner)).await.ok().flatten();
            let sip = lease.and_then(|l| replication::decode::<NodeLease>(&l.value).ok()).and_then(|l| l.identity.sip);
            let addr = match sip {
                Some(s) => tokio::net::lookup_host(s).await.ok().and_then(|mut a| a.next()),
                None => None,
            };
            return Adoption::Proxy(addr);
        }
        Resolution::Owned { convergence, epoch, adopted_from, .. } => (convergence, epoch, adopted_from),
    };
    let skey = keys::state(own.cluster(), &convergence, "sip/call");
    for _ in 0..4 {
        let got = match own.store().get(&skey).await {
            Ok(Some(v)) => v,
            Ok(None) => return Adoption::Unknown,
            Err(e) => return Adoption::Failed(e.to_string()),
        };
        let mut state: StateRecord<CallRecord> = match replication::decode(&got.value) {
            Ok(s) => s,
            Err(e) => return Adoption::Failed(e.to_string()),
        };
        if !replication::accept_state(state.written_by_epoch, epoch) {
            return Adoption::Unknown;
        }
        if state.written_by_epoch == epoch && (from.is_none() || state.written_by == own.me().node) {
            // Nothing to take over (ours), or another adoption of this call by this node stamped it already.
            return Adoption::Owned { convergence, epoch, record: Box::new(state.state), version: got.version, from };
        }
        // Taken over (now or by this node's earlier call): requests the dead owner sent after its last write may
        // have used CSeq numbers past the stored ones.
        for d in [&mut state.state.a, &mut state.state.b] {
            let seen_here = seen.as_ref().filter(|(c, t, _)| *c == d.call_id && *t == d.local_tag).map(|(_, _, n)| *n);
            d.adopt(gap, seen_here);
        }
        // The node that wrote it last (the dead owner, even when the engine took the convergence record over
        // first): its quota hint is moved.
        let from = from.clone().or_else(|| Some(state.written_by.clone()).filter(|w| *w != own.me().node));
        state.written_by_epoch = epoch;
        state.written_by = own.me().node.clone();
        match own.store().put(&skey, replication::encode(&state), Expect::Version(got.version), Some(ttl)).await {
            Ok(version) => {
                return Adoption::Owned { convergence, epoch, record: Box::new(state.state), version, from };
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Adoption::Failed(e.to_string()),
        }
    }
    Adoption::Failed("the call's state kept changing during adoption".into())
}

/// Redundantly armed quota timers: every `period`, the quota hints of dead nodes' calls are read; each call goes to
/// one survivor (rendezvous hashing on the convergence name, as the engine does for Ro timers), which adopts it when
/// its quota runs out and reports it (CCR-U). The adoption's compare-and-set makes sure only one node does.
///
/// A node is dead when its lease has run out or is gone (a graceful stop deletes it; the store forgets an expired
/// one after a while), so the nodes to watch are remembered: every node seen in a lease, and every node that had
/// hints when this one started. This node's own hints at start belong to its previous incarnation: they are
/// watched too, until due.
async fn scan_quota_hints(own: Arc<Ownership<AnyStore>>, ev: mpsc::UnboundedSender<Ev>, period: Duration) {
    let cluster = own.cluster().to_string();
    let me = own.me().node.clone();
    let root = format!("{cluster}/sipdeadline/");
    let mut known: HashSet<String> = HashSet::new();
    let mut previous_self: Vec<(String, QuotaHint)> = Vec::new();
    if let Ok(all) = own.store().scan_prefix(&root).await {
        for (key, v) in all {
            let Some(node) = key[root.len()..].split('/').next() else { continue };
            if node == me {
                if let Ok(h) = serde_json::from_slice::<QuotaHint>(&v.value) {
                    previous_self.push((key.clone(), h));
                }
            } else {
                known.insert(node.to_string());
            }
        }
    }
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if ev.is_closed() {
            return;
        }
        let Ok(crate::ownership::Members { live, dead, .. }) = own.members().await else { continue };
        let due = wall_ms() + period.as_millis() as u64;
        known.extend(live.iter().skip(1).cloned());
        known.extend(dead);
        let mut hints: Vec<(String, QuotaHint)> = Vec::new();
        for node in known.iter().filter(|n| !live.contains(n)) {
            let prefix = format!("{root}{node}/");
            let Ok(found) = own.store().scan_prefix(&prefix).await else { continue };
            hints.extend(found.into_iter().filter_map(|(k, v)| Some((k, serde_json::from_slice(&v.value).ok()?))));
        }
        let (now_due, later): (Vec<_>, Vec<_>) = previous_self.drain(..).partition(|(_, h)| h.deadline_ms <= due);
        previous_self = later;
        hints.extend(now_due);
        for (key, h) in hints {
            if h.deadline_ms > due {
                continue;
            }
            let conv = key.rsplit('/').next().unwrap_or_default();
            if replication::timer_owner(conv, &live) != Some(me.as_str()) {
                continue;
            }
            if own.store().get(&keys::convergence(&cluster, conv)).await.is_ok_and(|c| c.is_none()) {
                // The call ended (or its records expired): the hint is stale.
                let _ = own.store().delete(&key, Expect::Any).await;
                continue;
            }
            let _ = ev.send(Ev::QuotaDue(h.leg));
        }
    }
}
