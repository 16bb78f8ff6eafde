//! The Diameter routing core, sans-IO: the peers (RFC 6733 §5.6 machines), the realm table (§2.7), requests
//! pending an answer with failover (§5.5.4, RFC 3539), duplicate detection (§6.1.4), relaying (§6.1.9), redirects
//! (§6.13), and the protocol-error answers of §7.
//!
//! The driver feeds it connection events and frames ([`Router::handle_frame`]) and carries out
//! [`RouterOutput`]s; the application submits requests ([`Router::send_request`]), receives answers and the peers'
//! requests as outputs, and answers those ([`Router::answer_request`]). Time comes in as an argument.

mod dup;
mod realm;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

pub use dup::{DuplicateCache, Seen};
pub use realm::{PeerId, RealmTable, Route};

use crate::codec::{
    AppId, Avp, CommandCode, CommandFlags, DecodeError, DecodeLimits, HopByHopId, Message, ResultCode, code,
};
use crate::dict::Dictionary;
use crate::peer::{ConnId, DisconnectCause, EndToEndIds, LocalIdentity, Peer, PeerConfig, PeerOutput, PeerState};

/// The application's handle on one of its requests.
pub type RequestToken = u64;

/// How the router behaves.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Our identity.
    pub local: LocalIdentity,
    /// The realm table.
    pub routes: Vec<Route>,
    /// How long a request waits for its answer before it fails (per request, unless the caller gives one).
    pub answer_timeout: Duration,
    /// How long answered requests are remembered for duplicate detection.
    pub duplicate_window: Duration,
    /// At most this many remembered requests.
    pub duplicate_capacity: usize,
    /// Identities accepted in a CER besides the configured peers, like freeDiameter's acl_wl: `host.realm` exactly,
    /// `*.realm` for any identity ending so, `*` for anyone (case-insensitive). Empty: configured peers only.
    pub accept_peers: Vec<String>,
    /// Template for peers created when an unknown identity is accepted.
    pub accepted_peer: Option<PeerConfig>,
    /// Identities accepted by `accept_peers` are remembered (as peers) at most this many, so that a flood of made-up
    /// Origin-Hosts cannot grow the peer table without bound. Beyond it a new identity takes the entry of a closed
    /// accepted peer; when every one is connected, its CER gets 3010.
    pub max_accepted_peers: usize,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// Requests pending an answer at most; beyond it new requests fail with 3004 (DIAMETER_TOO_BUSY).
    pub max_pending: usize,
    /// Requests from peers handed to the application and not answered yet, at most; beyond it a new request is
    /// answered 3004 (DIAMETER_TOO_BUSY, RFC 6733 §7.1.3: the sender tries another peer) instead of piling up.
    pub max_incoming: usize,
    /// Other DiameterIdentities this node answers for as if they were its own Origin-Host (a server of a redundant
    /// pair accepting requests addressed to its mate). Empty by default.
    pub local_aliases: Vec<String>,
}

impl RouterConfig {
    /// Defaults: 10 s answer timeout, 30 s duplicate window for up to 1M requests, unknown peers refused.
    pub fn new(local: LocalIdentity, routes: Vec<Route>) -> RouterConfig {
        RouterConfig {
            local,
            routes,
            answer_timeout: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(30),
            duplicate_capacity: 1 << 20,
            accept_peers: Vec::new(),
            accepted_peer: None,
            max_accepted_peers: 4096,
            limits: DecodeLimits::default(),
            max_pending: 1 << 20,
            max_incoming: 10_000,
            local_aliases: Vec::new(),
        }
    }
}

/// Whether a CER's Origin-Host matches an `accept_peers` pattern: the identity itself, `*.suffix` (any identity ending
/// with `.suffix`, not `suffix` alone), or `*` (anyone). Case-insensitive, as DiameterIdentities compare.
pub fn identity_matches(pattern: &str, identity: &str) -> bool {
    let (p, id) = (pattern.to_ascii_lowercase(), identity.to_ascii_lowercase());
    match p.strip_prefix('*') {
        Some("") => true,
        Some(suffix) if suffix.starts_with('.') => id.len() > suffix.len() && id.ends_with(suffix),
        _ => p == id,
    }
}

/// What the driver or the application must do.
#[derive(Clone, Debug, PartialEq)]
pub enum RouterOutput {
    /// Connect to this peer's address; report with [`Router::handle_connected`] / [`Router::handle_connect_failed`].
    Connect(PeerId),
    /// Write this message on a connection.
    Send(ConnId, Message),
    /// Close a connection.
    Close(ConnId),
    /// The answer to one of the application's requests.
    Answer(RequestToken, Message),
    /// One of the application's requests failed without an answer (no route, no peer, timeout).
    Failed {
        /// The request.
        token: RequestToken,
        /// The Result-Code that describes it (3002, 3003, 3004…).
        result_code: ResultCode,
        /// Why, for logs.
        reason: String,
    },
    /// A request from a peer for the application; answer it with [`Router::answer_request`].
    Request(PeerId, Message),
    /// A peer became available / unavailable / restarted (lost its state).
    PeerEvent(PeerId, PeerEvent),
}

/// Peer events worth a log line and a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// RFC 6733 state change.
    State(PeerState, PeerState),
    /// Requests may be sent to it.
    Available,
    /// Requests must not be sent to it; its pending requests failed over.
    Unavailable,
    /// Its Origin-State-Id changed.
    Restarted,
}

/// Counters per peer (the metrics endpoint exports them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetrics {
    /// Messages received by short name (`CCR`, `DWA`…).
    pub messages_in: BTreeMap<String, u64>,
    /// Messages sent by short name.
    pub messages_out: BTreeMap<String, u64>,
    /// Answers received by Result-Code.
    pub answers_in: BTreeMap<u32, u64>,
    /// Requests moved off this peer by failover.
    pub failovers: u64,
    /// Protocol errors answered to this peer.
    pub errors_answered: u64,
    /// Of them, requests answered 3004 because `max_incoming` requests were in flight.
    pub too_busy: u64,
    /// Answers matching no pending request (RFC 6733 §6.2: discarded).
    pub answers_unmatched: u64,
}

/// Where a pending request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local(RequestToken),
    /// Relayed from this peer, with its Hop-by-Hop id.
    Relayed(PeerId, HopByHopId),
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    request: Message,
    /// Peers tried, in order; the last is the current one.
    tried: Vec<PeerId>,
    /// Every (peer, hop-by-hop) it was sent as; the first answer on any wins.
    attempts: Vec<(PeerId, HopByHopId)>,
    deadline: Instant,
    /// Hosts a redirect agent named for this request (RFC 6733 §6.13), tried first.
    redirect_to: Vec<String>,
    /// A peer the caller asked for (a server request goes back the way the session came).
    via: Option<PeerId>,
}

/// A request delivered to the application, remembered until it is answered.
#[derive(Debug)]
struct Incoming {
    origin_host: String,
    proxy_info: Vec<Avp>,
}

#[derive(Clone, Debug)]
struct Redirect {
    usage: u32,
    key: String,
    hosts: Vec<String>,
    expires: Instant,
}

/// The routing core.
pub struct Router {
    config: RouterConfig,
    dict: Arc<Dictionary>,
    e2e: EndToEndIds,
    peers: Vec<Peer>,
    metrics: Vec<PeerMetrics>,
    table: RealmTable,
    /// Connections and the peer they belong to; `None` until the CER names it.
    // FxHash for the tables keyed by identifiers this node makes (connections, request ids, the Hop-by-Hop ids of
    // its own requests); SipHash for `incoming`, keyed by what peers send.
    conns: FxHashMap<ConnId, Option<PeerId>>,
    next_key: u64,
    requests: FxHashMap<u64, Pending>,
    by_hop: FxHashMap<(PeerId, HopByHopId), u64>,
    deadlines: BTreeMap<(Instant, u64), ()>,
    /// Requests that found no peer available while a peer that could take them was opening its first connection
    /// (the node has just started): each is sent once such a peer opens, and fails when no such peer is opening any
    /// more or its deadline passes. With whether it is a retransmission.
    waiting: Vec<(Pending, bool)>,
    incoming: HashMap<(PeerId, HopByHopId), Incoming>,
    /// New requests are being refused with 3004 (`max_incoming` reached).
    refusing: bool,
    /// Peers from the configuration; those after them were accepted by `accept_peers`.
    configured_peers: usize,
    /// Accepted connections closed before a peer was identified: not Diameter, not a CER first, an unknown peer.
    connections_refused: u64,
    dup: DuplicateCache,
    redirects: Vec<Redirect>,
    out: VecDeque<RouterOutput>,
}

impl Router {
    /// A router for these peers (their index is their [`PeerId`], as the routes use it).
    pub fn new(config: RouterConfig, peers: Vec<PeerConfig>, dict: Arc<Dictionary>, e2e: EndToEndIds) -> Router {
        let table = RealmTable::new(config.routes.clone());
        let dup = DuplicateCache::new(config.duplicate_window, config.duplicate_capacity);
        // Every peer speaks for this node: one identity, whatever the peer configurations carried.
        let peers: Vec<Peer> = peers
            .into_iter()
            .map(|mut p| {
                p.local = config.local.clone();
                Peer::new(p, e2e.clone())
            })
            .collect();
        Router {
            configured_peers: peers.len(),
            metrics: vec![PeerMetrics::default(); peers.len()],
            peers,
            config,
            dict,
            e2e,
            table,
            conns: FxHashMap::default(),
            next_key: 1,
            requests: FxHashMap::default(),
            by_hop: FxHashMap::default(),
            deadlines: BTreeMap::new(),
            waiting: Vec::new(),
            incoming: HashMap::new(),
            refusing: false,
            connections_refused: 0,
            dup,
            redirects: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// The peer machines.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// A peer's counters.
    pub fn metrics(&self, peer: PeerId) -> &PeerMetrics {
        &self.metrics[peer.0]
    }

    /// Requests waiting for an answer.
    pub fn pending(&self) -> usize {
        self.requests.len() + self.waiting.len()
    }

    /// Requests waiting for an answer, by the peer each was last sent to (index: [`PeerId`]). One pass over the
    /// pending table: for status and metrics, not the hot path.
    pub fn pending_by_peer(&self) -> Vec<usize> {
        let mut counts = vec![0; self.peers.len()];
        for p in self.requests.values() {
            if let Some(n) = p.tried.last().and_then(|peer| counts.get_mut(peer.0)) {
                *n += 1;
            }
        }
        counts
    }

    /// Requests from peers handed to the application and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.incoming.len()
    }

    /// Accepted connections closed before a peer was identified (garbage, a first message other than CER, a CER
    /// from an identity neither configured nor matching `accept_peers`).
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<RouterOutput> {
        self.out.pop_front()
    }

    /// When [`Router::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.iter().filter_map(Peer::poll_timeout).min();
        let requests = self.deadlines.keys().next().map(|(t, _)| *t);
        let waiting = self.waiting.iter().map(|(p, _)| p.deadline).min();
        let requests = match (requests, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (peers, requests) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts every peer (initiators connect).
    pub fn start(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            self.peers[i].start(now);
            self.pump(now, PeerId(i));
        }
    }

    /// Stops every peer with a DPR.
    pub fn stop(&mut self, now: Instant, cause: DisconnectCause) {
        for i in 0..self.peers.len() {
            self.peers[i].stop(now, cause);
            self.pump(now, PeerId(i));
        }
    }

    /// Our connection to `peer` is up.
    pub fn handle_connected(&mut self, now: Instant, peer: PeerId, conn: ConnId) {
        self.conns.insert(conn, Some(peer));
        self.peers[peer.0].handle_connected(now, conn);
        self.pump(now, peer);
    }

    /// Our connection attempt to `peer` failed.
    pub fn handle_connect_failed(&mut self, now: Instant, peer: PeerId) {
        self.peers[peer.0].handle_connect_failed(now);
        self.pump(now, peer);
    }

    /// A peer connected to us; its first message must be a CER.
    pub fn handle_accepted(&mut self, conn: ConnId) {
        self.conns.insert(conn, None);
    }

    /// A connection closed.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnId) {
        if let Some(Some(peer)) = self.conns.remove(&conn) {
            self.peers[peer.0].handle_disconnected(now, conn);
            self.pump(now, peer);
        }
    }

    /// Timers of the peers and of pending requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            if self.peers[i].poll_timeout().is_some_and(|t| t <= now) {
                self.peers[i].handle_timeout(now);
                self.pump(now, PeerId(i));
            }
        }
        while let Some((&(t, key), _)) = self.deadlines.iter().next() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, key));
            if let Some(p) = self.take_pending(key) {
                let why = format!("no answer within {:?}", self.config.answer_timeout);
                self.fail(now, p, ResultCode::UNABLE_TO_DELIVER, why);
            }
        }
        if self.waiting.iter().any(|(p, _)| p.deadline <= now) {
            let (due, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.waiting).into_iter().partition(|(p, _)| p.deadline <= now);
            self.waiting = keep;
            for (p, _) in due {
                self.fail(now, p, ResultCode::UNABLE_TO_DELIVER, "no peer opened in time".into());
            }
        }
    }

    /// One frame from a connection (the transport has checked version and length).
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Bytes) {
        let Some(&assigned) = self.conns.get(&conn) else { return };
        let msg = match Message::decode_with(frame, &self.config.limits) {
            Ok(m) => m,
            Err(e) => return self.reject_frame(now, conn, assigned, e, None),
        };
        let validation = self.dict.validate(&msg, &self.config.limits);
        let Some(peer) = assigned else {
            return self.first_message(now, conn, msg, validation);
        };
        self.count_in(peer, &msg);
        if let Err(e) = validation {
            if msg.is_request() {
                return self.reject_frame(now, conn, assigned, e, Some(&msg));
            }
            // An answer that fails validation is still the answer to our request (RFC 6733 §7.3: errors in
            // answers are not answered); the application reads what it needs.
            tracing::debug!(peer = peer.0, error = %e, "answer does not validate; delivered anyway");
        }
        self.peers[peer.0].handle_message(now, conn, msg);
        self.pump(now, peer);
    }

    /// Submits a request of the application. The End-to-End id is assigned when zero; Hop-by-Hop ids per attempt.
    /// `timeout` overrides the configured answer timeout.
    pub fn send_request(&mut self, now: Instant, request: Message, token: RequestToken, timeout: Option<Duration>) {
        self.send_request_via(now, request, token, timeout, None);
    }

    /// Like [`Router::send_request`], preferring the peer `via` while it is available (an OCS sends RAR/ASR
    /// back over the connection the session's requests came on, directly or through a relay).
    pub fn send_request_via(
        &mut self,
        now: Instant,
        request: Message,
        token: RequestToken,
        timeout: Option<Duration>,
        via: Option<PeerId>,
    ) {
        self.send_request_full(now, request, token, timeout, via, None);
    }

    /// The general form: `via` preferred, the peer named `avoid_host` never used (a server that did not answer,
    /// RFC 4006 §5.7).
    pub fn send_request_full(
        &mut self,
        now: Instant,
        mut request: Message,
        token: RequestToken,
        timeout: Option<Duration>,
        via: Option<PeerId>,
        avoid_host: Option<&str>,
    ) {
        if request.header.end_to_end.0 == 0 {
            request.header.end_to_end = self.e2e.next();
        }
        request.header.flags = CommandFlags(request.header.flags.0 | CommandFlags::REQUEST);
        if self.pending() >= self.config.max_pending {
            self.out.push_back(RouterOutput::Failed {
                token,
                result_code: ResultCode::TOO_BUSY,
                reason: format!("{} requests already pending", self.requests.len()),
            });
            return;
        }
        let deadline = now + timeout.unwrap_or(self.config.answer_timeout);
        let tried = match avoid_host {
            Some(h) => (0..self.peers.len())
                .map(PeerId)
                .filter(|p| self.peers[p.0].identity().is_some_and(|id| id.eq_ignore_ascii_case(h)))
                .collect(),
            None => Vec::new(),
        };
        let pending = Pending {
            origin: Origin::Local(token),
            request,
            tried,
            attempts: Vec::new(),
            deadline,
            redirect_to: Vec::new(),
            via,
        };
        self.dispatch(now, pending, false);
    }

    /// Sends DPR to one peer (RFC 6733 §5.4) without reconnecting to it.
    pub fn disconnect_peer(&mut self, now: Instant, peer: PeerId, cause: DisconnectCause) {
        if let Some(p) = self.peers.get_mut(peer.0) {
            p.stop(now, cause);
            self.pump(now, peer);
        }
    }

    /// Closes a peer's connection at once, without DPR (what a crash or a network failure looks like to it).
    pub fn close_peer(&mut self, now: Instant, peer: PeerId) {
        let Some(conn) = self.peers.get(peer.0).and_then(Peer::connection) else {
            return;
        };
        self.conns.remove(&conn);
        self.out.push_back(RouterOutput::Close(conn));
        self.peers[peer.0].handle_disconnected(now, conn);
        self.pump(now, peer);
    }

    /// Answers a request delivered as [`RouterOutput::Request`]. The answer must carry the request's Hop-by-Hop
    /// and End-to-End ids ([`Message::answer_to`]); Proxy-Info is echoed when the application did not.
    pub fn answer_request(&mut self, now: Instant, peer: PeerId, mut answer: Message) {
        let hbh = answer.header.hop_by_hop;
        let Some(inc) = self.incoming.remove(&(peer, hbh)) else {
            tracing::warn!(peer = peer.0, hop_by_hop = hbh.0, "answer for a request that is not pending; dropped");
            return;
        };
        if !inc.proxy_info.is_empty() && answer.find(code::PROXY_INFO, 0).is_none() {
            answer.avps.extend(inc.proxy_info);
        }
        self.dup.answered(&inc.origin_host, answer.header.end_to_end, &answer);
        if self.peers[peer.0].send_answer(answer).is_err() {
            tracing::debug!(peer = peer.0, "peer gone before its answer could be sent");
        }
        self.pump(now, peer);
    }

    // ---- internals ----------------------------------------------------------------------------------------

    /// Carries out a peer machine's outputs.
    fn pump(&mut self, now: Instant, peer: PeerId) {
        while let Some(o) = self.peers[peer.0].poll_output() {
            match o {
                PeerOutput::Connect => self.out.push_back(RouterOutput::Connect(peer)),
                PeerOutput::Send(conn, m) => {
                    self.count_out(peer, &m);
                    self.conns.insert(conn, Some(peer));
                    self.out.push_back(RouterOutput::Send(conn, m));
                }
                PeerOutput::Close(conn) => {
                    self.conns.remove(&conn);
                    self.out.push_back(RouterOutput::Close(conn));
                }
                PeerOutput::Deliver(m) => self.delivered(now, peer, m),
                PeerOutput::Available => {
                    self.out.push_back(RouterOutput::PeerEvent(peer, PeerEvent::Available));
                    self.retry_waiting(now);
                }
                PeerOutput::Unavailable => {
                    self.out.push_back(RouterOutput::PeerEvent(peer, PeerEvent::Unavailable));
                    self.fail_over(now, peer);
                }
                PeerOutput::Restarted => self.out.push_back(RouterOutput::PeerEvent(peer, PeerEvent::Restarted)),
                PeerOutput::StateChanged(from, to) => {
                    // One line at info per connection opened or lost; the steps in between, and a connection attempt
                    // that failed (retried every reconnect interval while the peer is down), at debug.
                    let identity = self.peers[peer.0].identity().unwrap_or("?");
                    let was_open = matches!(from, PeerState::IOpen | PeerState::ROpen | PeerState::Closing);
                    if matches!(to, PeerState::IOpen | PeerState::ROpen) || (to == PeerState::Closed && was_open) {
                        tracing::info!(peer = peer.0, identity, ?from, ?to, "peer state");
                    } else {
                        tracing::debug!(peer = peer.0, identity, ?from, ?to, "peer state");
                    }
                    self.out.push_back(RouterOutput::PeerEvent(peer, PeerEvent::State(from, to)));
                    if to == PeerState::Closed {
                        // Nothing more will arrive on the old connection: what is still pending there fails over
                        // now or fails.
                        self.connection_lost(now, peer);
                        // A first connection that failed: what waited for it goes elsewhere or fails.
                        self.retry_waiting(now);
                    }
                }
            }
        }
    }

    /// The first message on an accepted connection must be a CER naming a peer we accept.
    fn first_message(&mut self, now: Instant, conn: ConnId, msg: Message, validation: Result<(), DecodeError>) {
        if msg.header.code != CommandCode::CAPABILITIES_EXCHANGE || !msg.is_request() {
            // RFC 6733 §5.6: before CER/CEA completes, any other message closes the connection.
            tracing::info!(conn = conn.0, command = msg.header.code.0, "message before CER; connection closed");
            self.connections_refused += 1;
            self.conns.remove(&conn);
            self.out.push_back(RouterOutput::Close(conn));
            return;
        }
        if let Err(e) = validation {
            return self.reject_frame(now, conn, None, e, Some(&msg));
        }
        let host = msg.find(code::ORIGIN_HOST, 0).and_then(|a| a.as_utf8().ok()).unwrap_or_default().to_string();
        let found = self.peers.iter().position(|p| {
            p.identity().is_some_and(|id| id.eq_ignore_ascii_case(&host))
                || p.capabilities().is_some_and(|c| c.origin_host.eq_ignore_ascii_case(&host))
        });
        let slot = match found {
            Some(i) => Some(PeerId(i)),
            None if self.config.accept_peers.iter().any(|p| identity_matches(p, &host)) => self.accepted_slot(),
            None => None,
        };
        if found.is_none()
            && let Some(PeerId(i)) = slot
        {
            let mut cfg = self
                .config
                .accepted_peer
                .clone()
                .unwrap_or_else(|| PeerConfig::new(self.config.local.clone(), None, false));
            cfg.expected_host = Some(host.clone());
            cfg.initiate = false;
            let peer = Peer::new(cfg, self.e2e.clone());
            if i == self.peers.len() {
                self.peers.push(peer);
                self.metrics.push(PeerMetrics::default());
            } else {
                tracing::info!(
                    peer = i,
                    old = self.peers[i].identity().unwrap_or_default(),
                    new = %host,
                    "accepted peer table full: a closed peer's entry goes to a new identity"
                );
                self.peers[i] = peer;
                self.metrics[i] = PeerMetrics::default();
            }
        }
        let peer = match slot {
            Some(peer) => peer,
            None => {
                // RFC 6733 §5.3: a CER from an unknown peer gets 3010 DIAMETER_UNKNOWN_PEER (and so does one more
                // new identity while `max_accepted_peers` are remembered and none of them is closed).
                tracing::info!(conn = conn.0, origin_host = %host, "CER from an unknown peer refused (3010)");
                self.connections_refused += 1;
                let mut cea = Message::answer_to(&msg);
                cea.header.flags = cea.header.flags.with(CommandFlags::ERROR, true);
                cea.push(Avp::u32(code::RESULT_CODE, ResultCode::UNKNOWN_PEER.0));
                cea.avps.extend(self.config.local.capability_avps());
                self.conns.remove(&conn);
                self.out.push_back(RouterOutput::Send(conn, cea));
                self.out.push_back(RouterOutput::Close(conn));
                return;
            }
        };
        self.conns.insert(conn, Some(peer));
        self.count_in(peer, &msg);
        if !self.peers[peer.0].handle_incoming_cer(now, conn, &msg) {
            self.conns.remove(&conn);
        }
        self.pump(now, peer);
    }

    /// Where a newly accepted identity goes: a new entry while fewer than `max_accepted_peers` are remembered, else
    /// the entry of an accepted peer that is closed, so that a node whose clients come and go under new names
    /// (restarted containers) keeps taking them. A closed peer owes nothing: what was pending on its connection
    /// failed over or failed when it closed (`connection_lost`), and an answer the application gives later to one of
    /// its requests finds nothing to answer and is dropped, not sent to the new identity.
    fn accepted_slot(&self) -> Option<PeerId> {
        if self.peers.len() - self.configured_peers < self.config.max_accepted_peers {
            return Some(PeerId(self.peers.len()));
        }
        (self.configured_peers..self.peers.len()).map(PeerId).find(|p| self.peers[p.0].state() == PeerState::Closed)
    }

    /// Answers a request that failed to decode or validate, or closes the connection when nothing can be
    /// answered.
    fn reject_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: Option<PeerId>,
        e: DecodeError,
        msg: Option<&Message>,
    ) {
        let local = &self.config.local;
        match e.to_answer(msg, &local.origin_host, &local.origin_realm) {
            Some(answer) => {
                tracing::info!(conn = conn.0, error = %e, result_code = e.result_code().0, "protocol error answered");
                if let Some(p) = peer {
                    self.metrics[p.0].errors_answered += 1;
                    self.count_out(p, &answer);
                }
                // (Sent directly: the peer machine may not be open yet, e.g. for a malformed CER.)
                self.out.push_back(RouterOutput::Send(conn, answer));
                if peer.is_none() {
                    self.connections_refused += 1;
                    self.conns.remove(&conn);
                    self.out.push_back(RouterOutput::Close(conn));
                }
            }
            None if e.header.is_some_and(|h| !h.flags.is_request()) => {
                tracing::info!(conn = conn.0, error = %e, "malformed answer dropped");
            }
            None => {
                tracing::info!(conn = conn.0, error = %e, "undecodable frame; connection closed");
                if peer.is_none() {
                    self.connections_refused += 1;
                }
                self.conns.remove(&conn);
                self.out.push_back(RouterOutput::Close(conn));
                if let Some(p) = peer {
                    self.peers[p.0].handle_disconnected(now, conn);
                    self.pump(now, p);
                }
            }
        }
    }

    /// A message the peer machine passes up: a request for us, or an answer to one of our requests.
    fn delivered(&mut self, now: Instant, peer: PeerId, msg: Message) {
        if msg.is_request() {
            self.incoming_request(now, peer, msg);
        } else {
            self.incoming_answer(now, peer, msg);
        }
    }

    fn error_answer(&mut self, peer: PeerId, req: &Message, rc: ResultCode, why: &str) {
        let mut a = Message::answer_to(req);
        a.header.flags = a.header.flags.with(CommandFlags::ERROR, rc.is_protocol_error());
        a.avps.extend(self.config.local.origin_avps());
        a.push(Avp::u32(code::RESULT_CODE, rc.0));
        a.push(Avp::utf8(code::ERROR_MESSAGE, why).with_mandatory(false));
        a.echo_proxy_info(req);
        self.metrics[peer.0].errors_answered += 1;
        let _ = self.peers[peer.0].send_answer(a);
    }

    fn incoming_request(&mut self, now: Instant, peer: PeerId, req: Message) {
        let app = req.header.application_id;
        let local_host = self.config.local.origin_host.clone();
        let local_realm = self.config.local.origin_realm.clone();
        // RFC 6733 §6.1.3: our own identity in Route-Record means a loop.
        if req.find_all(code::ROUTE_RECORD, 0).any(|a| a.as_utf8().is_ok_and(|h| h.eq_ignore_ascii_case(&local_host))) {
            self.error_answer(peer, &req, ResultCode::LOOP_DETECTED, "request loops through this node");
            return self.pump(now, peer);
        }
        if app != AppId::COMMON
            && !self.peers[peer.0].common_applications().iter().any(|a| *a == app || *a == AppId::RELAY)
        {
            self.error_answer(peer, &req, ResultCode::APPLICATION_UNSUPPORTED, "application not supported");
            return self.pump(now, peer);
        }
        let dest_realm = req.find(code::DESTINATION_REALM, 0).and_then(|a| a.as_utf8().ok()).map(str::to_string);
        let dest_host = req.find(code::DESTINATION_HOST, 0).and_then(|a| a.as_utf8().ok()).map(str::to_string);
        let for_us_realm = dest_realm.as_deref().is_none_or(|r| r.eq_ignore_ascii_case(&local_realm));
        let for_us_host = dest_host.as_deref().is_none_or(|h| {
            h.eq_ignore_ascii_case(&local_host) || self.config.local_aliases.iter().any(|a| a.eq_ignore_ascii_case(h))
        });
        if !(for_us_realm && for_us_host) {
            return self.relay(now, peer, req);
        }
        let origin_host = req.find(code::ORIGIN_HOST, 0).and_then(|a| a.as_utf8().ok()).unwrap_or_default().to_string();
        // A retransmission of a request held goes on to the duplicate check; a new one beyond the limit is refused
        // without being recorded, so that its retransmission is a fresh try.
        if self.incoming.len() >= self.config.max_incoming && !self.dup.contains(&origin_host, req.header.end_to_end) {
            self.metrics[peer.0].too_busy += 1;
            // One line when refusing starts, not one per request of a flood; the metric counts them all.
            if !self.refusing {
                self.refusing = true;
                tracing::warn!(
                    peer = peer.0,
                    in_flight = self.incoming.len(),
                    "requests in flight at the limit (max_incoming): new ones answered 3004 until some are answered"
                );
            }
            self.error_answer(peer, &req, ResultCode::TOO_BUSY, "too many requests in flight on this node");
            return self.pump(now, peer);
        }
        match self.dup.check(now, &origin_host, req.header.end_to_end) {
            Seen::New => {}
            Seen::InProgress => {
                tracing::debug!(
                    peer = peer.0,
                    e2e = req.header.end_to_end.0,
                    "duplicate of a request in progress dropped"
                );
                return;
            }
            Seen::Answered(mut answer) => {
                // RFC 6733 §6.1.4: the retransmission gets the same answer, on its own Hop-by-Hop id.
                answer.header.hop_by_hop = req.header.hop_by_hop;
                let _ = self.peers[peer.0].send_answer(answer);
                return self.pump(now, peer);
            }
        }
        self.refusing = false;
        let proxy_info = req.find_all(code::PROXY_INFO, 0).cloned().collect();
        self.incoming.insert((peer, req.header.hop_by_hop), Incoming { origin_host, proxy_info });
        self.out.push_back(RouterOutput::Request(peer, req));
    }

    /// RFC 6733 §6.1.9: forward a request that is not for us, with our Route-Record, keeping its End-to-End id.
    fn relay(&mut self, now: Instant, from: PeerId, mut req: Message) {
        let hbh = req.header.hop_by_hop;
        req.push(Avp::utf8(code::ROUTE_RECORD, self.peers[from.0].identity().unwrap_or_default()));
        let deadline = now + self.config.answer_timeout;
        let pending = Pending {
            origin: Origin::Relayed(from, hbh),
            request: req,
            tried: vec![from],
            attempts: Vec::new(),
            deadline,
            redirect_to: Vec::new(),
            via: None,
        };
        self.dispatch(now, pending, false);
    }

    /// Picks the next hop for a request: a cached redirect, the Destination-Host when it is a peer, else the
    /// realm table.
    fn next_hop(
        &mut self,
        req: &Message,
        tried: &[PeerId],
        redirect_to: &[String],
        now: Instant,
    ) -> Result<PeerId, (ResultCode, String)> {
        let app = req.header.application_id;
        let peers = &self.peers;
        let usable = |p: PeerId| {
            !tried.contains(&p)
                && peers[p.0].is_available()
                && (app == AppId::COMMON
                    || peers[p.0].common_applications().iter().any(|a| *a == app || *a == AppId::RELAY))
        };
        let by_identity = |host: &str| {
            (0..peers.len())
                .map(PeerId)
                .find(|&p| peers[p.0].identity().is_some_and(|id| id.eq_ignore_ascii_case(host)) && usable(p))
        };
        if let Some(p) = redirect_to.iter().find_map(|h| by_identity(h)) {
            return Ok(p);
        }
        self.redirects.retain(|r| r.expires > now);
        for r in &self.redirects {
            if redirect_key(r.usage, req).is_some_and(|k| k == r.key)
                && let Some(p) = r.hosts.iter().find_map(|h| by_identity(h))
            {
                return Ok(p);
            }
        }
        let dest_host = req.find(code::DESTINATION_HOST, 0).and_then(|a| a.as_utf8().ok());
        if let Some(p) = dest_host.and_then(by_identity) {
            return Ok(p);
        }
        let Some(realm) = req.find(code::DESTINATION_REALM, 0).and_then(|a| a.as_utf8().ok()) else {
            return Err((ResultCode::UNABLE_TO_DELIVER, "no Destination-Realm and no usable Destination-Host".into()));
        };
        if let Some(p) = self.table.select(realm, app, usable) {
            return Ok(p);
        }
        if !self.table.knows_realm(realm) && self.table.candidates(realm, app).is_empty() {
            Err((ResultCode::REALM_NOT_SERVED, format!("no route for realm {realm}")))
        } else {
            Err((ResultCode::UNABLE_TO_DELIVER, format!("no available peer for realm {realm}")))
        }
    }

    /// Sends a pending request to its next hop (with the T flag when `retransmit`), or fails it.
    fn dispatch(&mut self, now: Instant, mut p: Pending, retransmit: bool) {
        let hop = match p.via.filter(|v| !p.tried.contains(v) && self.peers.get(v.0).is_some_and(Peer::is_available)) {
            Some(v) => Ok(v),
            None => self.next_hop(&p.request, &p.tried, &p.redirect_to, now),
        };
        let peer = match hop {
            Ok(peer) => peer,
            Err((ResultCode::UNABLE_TO_DELIVER, _)) if self.first_connection_opening(&p.request, &p.tried) => {
                // RFC 6733 does not say what to do here. A request made in the moment between a node's start and its
                // first CEA would otherwise fail at once (3002), and a charging request with it (CCFH): the call
                // refused, or let through uncharged. It waits for that connection instead, within its deadline.
                self.waiting.push((p, retransmit));
                return;
            }
            Err((rc, why)) => return self.fail(now, p, rc, why),
        };
        let mut msg = p.request.clone();
        if retransmit {
            // RFC 6733 §5.5.4: a request resent after a failover carries the T flag.
            msg.header.flags = msg.header.flags.with(CommandFlags::RETRANSMIT, true);
            p.request.header.flags = msg.header.flags;
        }
        match self.peers[peer.0].send_request(msg) {
            Ok(hbh) => {
                let key = self.next_key;
                self.next_key += 1;
                p.tried.push(peer);
                p.attempts.push((peer, hbh));
                // Every attempt maps to the request: after a failover the first answer on any of them wins.
                for a in &p.attempts {
                    self.by_hop.insert(*a, key);
                }
                self.deadlines.insert((p.deadline, key), ());
                self.requests.insert(key, p);
                self.pump(now, peer);
            }
            Err(_) => {
                p.tried.push(peer);
                self.dispatch(now, p, retransmit);
            }
        }
    }

    /// Whether a peer that could take `req` (named by its Destination-Host, or routed to for its realm) and has not
    /// been tried is opening its first connection since the router started.
    fn first_connection_opening(&self, req: &Message, tried: &[PeerId]) -> bool {
        let host = req.find(code::DESTINATION_HOST, 0).and_then(|a| a.as_utf8().ok());
        let routed = req
            .find(code::DESTINATION_REALM, 0)
            .and_then(|a| a.as_utf8().ok())
            .map(|realm| self.table.candidates(realm, req.header.application_id))
            .unwrap_or_default();
        (0..self.peers.len()).map(PeerId).any(|p| {
            let peer = &self.peers[p.0];
            !tried.contains(&p)
                // Capabilities are kept from the first CER/CEA on: none yet, never open.
                && peer.capabilities().is_none()
                && matches!(
                    peer.state(),
                    PeerState::WaitConnAck | PeerState::WaitICea | PeerState::WaitConnAckElect | PeerState::WaitReturns
                )
                && (routed.contains(&p)
                    || host.is_some_and(|h| peer.identity().is_some_and(|id| id.eq_ignore_ascii_case(h))))
        })
    }

    /// Sends what waited for a first connection, now that one opened or failed (or waits again, or fails).
    fn retry_waiting(&mut self, now: Instant) {
        for (p, retransmit) in std::mem::take(&mut self.waiting) {
            self.dispatch(now, p, retransmit);
        }
    }

    fn take_pending(&mut self, key: u64) -> Option<Pending> {
        let p = self.requests.remove(&key)?;
        for a in &p.attempts {
            self.by_hop.remove(a);
        }
        self.deadlines.remove(&(p.deadline, key));
        Some(p)
    }

    fn fail(&mut self, now: Instant, p: Pending, rc: ResultCode, reason: String) {
        match p.origin {
            Origin::Local(token) => self.out.push_back(RouterOutput::Failed { token, result_code: rc, reason }),
            Origin::Relayed(peer, hbh) => {
                let mut req = p.request;
                req.header.hop_by_hop = hbh;
                self.error_answer(peer, &req, rc, &reason);
                self.pump(now, peer);
            }
        }
    }

    fn incoming_answer(&mut self, now: Instant, peer: PeerId, answer: Message) {
        let Some(key) = self.by_hop.get(&(peer, answer.header.hop_by_hop)).copied() else {
            // RFC 6733 §6.2: an answer that matches no pending request is discarded. (A late answer to a request
            // failed over is one, hence debug.)
            self.metrics[peer.0].answers_unmatched += 1;
            tracing::debug!(
                peer = peer.0,
                hop_by_hop = answer.header.hop_by_hop.0,
                "answer with unknown Hop-by-Hop id dropped"
            );
            return;
        };
        let rc = answer.result_code();
        if let Some(rc) = rc {
            *self.metrics[peer.0].answers_in.entry(rc.0).or_default() += 1;
        }
        let Some(mut p) = self.take_pending(key) else { return };
        match rc {
            Some(ResultCode::REDIRECT_INDICATION) => {
                let hosts = self.learn_redirect(now, &p.request, &answer);
                if !hosts.is_empty() {
                    // The redirect target is the next hop; the redirecting agent is not retried.
                    p.redirect_to = hosts;
                    return self.dispatch(now, p, false);
                }
            }
            Some(ResultCode::TOO_BUSY) | Some(ResultCode::UNABLE_TO_DELIVER) => {
                // RFC 6733 §7.1.3: another peer may deliver, unless the request was for this very host.
                let pinned = p
                    .request
                    .find(code::DESTINATION_HOST, 0)
                    .and_then(|a| a.as_utf8().ok())
                    .is_some_and(|h| self.peers[peer.0].identity().is_some_and(|id| id.eq_ignore_ascii_case(h)));
                if !pinned && self.next_hop(&p.request, &p.tried, &[], now).is_ok() {
                    p.attempts.clear();
                    return self.dispatch(now, p, false);
                }
            }
            _ => {}
        }
        match p.origin {
            Origin::Local(token) => self.out.push_back(RouterOutput::Answer(token, answer)),
            Origin::Relayed(from, hbh) => {
                let mut a = answer;
                a.header.hop_by_hop = hbh;
                let _ = self.peers[from.0].send_answer(a);
                self.pump(now, from);
            }
        }
    }

    /// Reads Redirect-Host, Redirect-Host-Usage and Redirect-Max-Cache-Time (RFC 6733 §6.13) into the cache,
    /// and returns the redirect hosts that are our peers (the request goes to the first usable one).
    fn learn_redirect(&mut self, now: Instant, req: &Message, answer: &Message) -> Vec<String> {
        let hosts: Vec<String> =
            answer.find_all(code::REDIRECT_HOST, 0).filter_map(|a| a.as_uri().ok()).map(|u| u.host).collect();
        let usage = answer.find(code::REDIRECT_HOST_USAGE, 0).and_then(|a| a.as_i32().ok()).unwrap_or(0) as u32;
        let ttl = answer.find(code::REDIRECT_MAX_CACHE_TIME, 0).and_then(|a| a.as_u32().ok()).unwrap_or(0);
        if usage != 0
            && ttl > 0
            && let Some(key) = redirect_key(usage, req)
        {
            let expires = now + Duration::from_secs(u64::from(ttl));
            self.redirects.push(Redirect { usage, key, hosts: hosts.clone(), expires });
        }
        hosts
            .into_iter()
            .filter(|h| self.peers.iter().any(|p| p.identity().is_some_and(|id| id.eq_ignore_ascii_case(h))))
            .collect()
    }

    /// RFC 3539 failover: requests pending on `peer` go to an alternate peer with the T flag. The attempt on
    /// `peer` stays mapped, so that if it recovers and answers first, its answer wins (RFC 6733 §5.5.4).
    fn fail_over(&mut self, now: Instant, peer: PeerId) {
        let keys: Vec<u64> = self.by_hop.iter().filter(|((p, _), _)| *p == peer).map(|(_, k)| *k).collect();
        for key in keys {
            let Some(p) = self.requests.get(&key) else { continue };
            if p.tried.last() != Some(&peer) {
                continue; // already moved on
            }
            let (req, tried) = (p.request.clone(), p.tried.clone());
            if self.next_hop(&req, &tried, &[], now).is_err() {
                continue; // keep waiting: the peer may recover, or losing its connection fails the request
            }
            self.metrics[peer.0].failovers += 1;
            let p = self.requests.remove(&key).expect("present");
            self.deadlines.remove(&(p.deadline, key));
            tracing::info!(peer = peer.0, e2e = p.request.header.end_to_end.0, "request failed over with the T flag");
            self.dispatch(now, p, true);
        }
    }

    /// The connection to `peer` is gone: its attempts can get no answer. Requests fail over, or fail with 3002
    /// when no other peer can take them.
    fn connection_lost(&mut self, now: Instant, peer: PeerId) {
        self.fail_over(now, peer);
        let lost: Vec<((PeerId, HopByHopId), u64)> =
            self.by_hop.iter().filter(|((p, _), _)| *p == peer).map(|(a, k)| (*a, *k)).collect();
        for (attempt, key) in lost {
            self.by_hop.remove(&attempt);
            let current = match self.requests.get_mut(&key) {
                Some(p) => {
                    p.attempts.retain(|a| *a != attempt);
                    p.tried.last() == Some(&peer)
                }
                None => false,
            };
            if current && let Some(p) = self.take_pending(key) {
                self.fail(
                    now,
                    p,
                    ResultCode::UNABLE_TO_DELIVER,
                    "connection to the peer lost and no alternate peer".into(),
                );
            }
        }
        self.incoming.retain(|(p, _), _| *p != peer);
    }

    fn count_in(&mut self, peer: PeerId, m: &Message) {
        count_message(&mut self.metrics[peer.0].messages_in, m);
    }

    fn count_out(&mut self, peer: PeerId, m: &Message) {
        count_message(&mut self.metrics[peer.0].messages_out, m);
    }
}

/// The cache key a Redirect-Host-Usage value (RFC 6733 §6.13) selects for a request.
fn redirect_key(usage: u32, req: &Message) -> Option<String> {
    let text = |c| req.find(c, 0).and_then(|a| a.as_utf8().ok()).map(str::to_ascii_lowercase);
    let app = req.header.application_id.0;
    match usage {
        1 => text(code::SESSION_ID).map(|s| format!("session:{s}")),
        2 => text(code::DESTINATION_REALM).map(|r| format!("realm:{r}")),
        3 => text(code::DESTINATION_REALM).map(|r| format!("realm-app:{r}:{app}")),
        4 => Some(format!("app:{app}")),
        5 => text(code::DESTINATION_HOST).map(|h| format!("host:{h}")),
        6 => text(code::USER_NAME).map(|u| format!("user:{u}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

/// Counts a message by its command's short name; a name already counted costs no allocation.
fn count_message(counts: &mut BTreeMap<String, u64>, m: &Message) {
    match m.header.known_short_name() {
        Some(name) => match counts.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                counts.insert(name.to_string(), 1);
            }
        },
        None => *counts.entry(m.header.short_name()).or_default() += 1,
    }
}
