//! The peer state machine of RFC 6733 §5.6 with the RFC 3539 watchdog, sans-IO.
//!
//! One [`Peer`] per configured (or accepted) peer. The driver tells it what happened on the wire
//! (`handle_*`, with the current time) and carries out what it asks ([`Peer::poll_output`]: connect, send, close,
//! deliver, fail over), and calls [`Peer::handle_timeout`] at [`Peer::poll_timeout`]. It never touches a socket
//! or reads the clock, so every transition is tested with a manual clock.
//!
//! ```text
//! RFC 6733 §5.6                                     RFC 3539 §3.4 (while open)
//! Closed ──Start──► Wait-Conn-Ack ──ack──► Wait-I-CEA ──CEA──► I-Open      OKAY ──Tw, DWA pending──► SUSPECT (failover)
//!   │                    │ R-Conn-CER          │ R-Conn-CER                 SUSPECT ──Tw──► DOWN (close, Tc)
//!   │                    ▼                     ▼                            SUSPECT ──any message──► OKAY (failback)
//!   │          Wait-Conn-Ack/Elect ──ack──► Wait-Returns ──win/lose──►     DOWN ──reconnect, CER/CEA──► REOPEN
//!   └──R-Conn-CER──► R-Open                                               REOPEN ──3 DWA──► OKAY
//! Open ──Stop──► Closing (DPR sent) ──DPA──► Closed;  Open ──DPR──► DPA sent, Closing ──peer closes──► Closed
//! ```
//!
//! Deviation from RFC 3539 §3.4.1, deliberately: in REOPEN a message received from the peer is processed, not
//! thrown away. A Diameter peer considers the connection open once CEA is sent and may send requests at once;
//! discarding them would be worse than the risk REOPEN guards against, which is sending *our* traffic over a link
//! that is not proven yet. Our requests wait for the three DWAs.

mod capabilities;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use capabilities::{Application, LocalIdentity, PeerCapabilities};

use crate::codec::{AppId, Avp, CommandCode, CommandFlags, EndToEndId, HopByHopId, Message, ResultCode, code};

/// A transport connection, numbered by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Disconnect-Cause (RFC 6733 §5.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectCause {
    /// 0: a reboot is imminent; the peer may reconnect.
    Rebooting,
    /// 1: resources are constrained.
    Busy,
    /// 2: no messages are expected for the foreseeable future.
    DoNotWantToTalkToYou,
}

impl DisconnectCause {
    fn value(self) -> i32 {
        match self {
            DisconnectCause::Rebooting => 0,
            DisconnectCause::Busy => 1,
            DisconnectCause::DoNotWantToTalkToYou => 2,
        }
    }

    fn from_value(v: i32) -> DisconnectCause {
        match v {
            1 => DisconnectCause::Busy,
            2 => DisconnectCause::DoNotWantToTalkToYou,
            _ => DisconnectCause::Rebooting,
        }
    }
}

/// End-to-End Identifiers unique per node (RFC 6733 §3): the high 12 bits are the low 12 bits of the start
/// time, the low 20 bits a counter. Shared by every machine of a node.
#[derive(Clone, Debug)]
pub struct EndToEndIds {
    high: u32,
    counter: Arc<AtomicU32>,
}

impl EndToEndIds {
    /// A generator seeded from the node's start time (seconds) and a random start for the counter.
    pub fn new(start_time_secs: u64, random: u32) -> EndToEndIds {
        EndToEndIds { high: ((start_time_secs & 0xfff) as u32) << 20, counter: Arc::new(AtomicU32::new(random)) }
    }

    /// The next identifier: the time-derived high bits, the counter wrapping within the low 20.
    pub fn next(&self) -> EndToEndId {
        EndToEndId(self.high | (self.counter.fetch_add(1, Ordering::Relaxed) & 0x000f_ffff))
    }
}

/// Timers and policy of one peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// What we say about ourselves.
    pub local: LocalIdentity,
    /// The identity we expect the peer to have; `None` accepts the first identity that connects.
    pub expected_host: Option<String>,
    /// Whether we connect to the peer (it has an address) or only accept its connections.
    pub initiate: bool,
    /// Tw, the watchdog interval (RFC 3539 §3.4.1: default 30 s, at least 6 s). Jitter of ±2 s is added.
    pub watchdog_interval: Duration,
    /// Tc, the longest wait between connection attempts (RFC 6733 §2.1: 30 s recommended).
    pub reconnect_max: Duration,
    /// The first wait between connection attempts; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// How long to wait for the connection, CEA, or DPA (the Timeout event of RFC 6733 §5.6).
    pub handshake_timeout: Duration,
    /// Extra wait before reconnecting after a DPR with BUSY.
    pub busy_holdoff: Duration,
    /// After DO_NOT_WANT_TO_TALK_TO_YOU: reconnect after this long, or never (`None`) until started again.
    pub do_not_want_holdoff: Option<Duration>,
    /// Seed of the watchdog jitter (tests set it for determinism; nodes use a random one).
    pub jitter_seed: u64,
}

impl PeerConfig {
    /// Defaults of RFC 6733 and RFC 3539 for a peer we connect to.
    pub fn new(local: LocalIdentity, expected_host: Option<String>, initiate: bool) -> PeerConfig {
        PeerConfig {
            local,
            expected_host,
            initiate,
            watchdog_interval: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(30),
            reconnect_initial: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            busy_holdoff: Duration::from_secs(60),
            do_not_want_holdoff: None,
            jitter_seed: 0x5eed,
        }
    }
}

/// RFC 6733 §5.6 peer states, in the specification's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// No connection.
    Closed,
    /// Connecting as initiator.
    WaitConnAck,
    /// CER sent, waiting for CEA.
    WaitICea,
    /// Connecting as initiator while the peer's CER arrived on another connection.
    WaitConnAckElect,
    /// Both connections exist; the election decides which stays.
    WaitReturns,
    /// Open on the connection the peer made.
    ROpen,
    /// Open on the connection we made.
    IOpen,
    /// DPR sent (waiting for DPA) or DPA sent (waiting for the peer to close).
    Closing,
}

/// The label of each [`PeerState`] in metrics (RFC 6733 §5.6 names, snake case), in declaration order.
pub const STATE_NAMES: &[&str] =
    &["closed", "wait_conn_ack", "wait_i_cea", "wait_conn_ack_elect", "wait_returns", "r_open", "i_open", "closing"];

/// The metrics label of a [`PeerState`] (one of [`STATE_NAMES`]).
pub fn state_name(s: PeerState) -> &'static str {
    STATE_NAMES[s as usize]
}

/// The labels of the RFC 3539 §3.4 watchdog states in metrics.
pub const WATCHDOG_NAMES: &[&str] = &["okay", "suspect", "reopen", "down"];

/// The metrics label of a peer's watchdog: its state while the connection is open, DOWN otherwise (RFC 3539 §3.4).
pub fn watchdog_name(state: PeerState, w: Watchdog) -> &'static str {
    match (state, w) {
        (PeerState::ROpen | PeerState::IOpen, Watchdog::Okay) => "okay",
        (PeerState::ROpen | PeerState::IOpen, Watchdog::Suspect) => "suspect",
        (PeerState::ROpen | PeerState::IOpen, Watchdog::Reopen { .. }) => "reopen",
        _ => "down",
    }
}

/// RFC 3539 §3.4 watchdog states while a connection is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watchdog {
    /// Traffic flows.
    Okay,
    /// Tw passed with a DWR unanswered: pending requests are failed over.
    Suspect,
    /// A connection came back after a failure; `answered` DWAs so far (three needed, RFC 3539 §3.4.1).
    Reopen {
        /// DWAs received in a row; -1 after a missed one.
        answered: i32,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerOutput {
    /// Open a transport connection to the peer and report it with `handle_connected` / `handle_connect_failed`.
    Connect,
    /// Write a message on a connection.
    Send(ConnId, Message),
    /// Close a connection.
    Close(ConnId),
    /// A message for the router: a request from the peer, or an answer to one of ours.
    Deliver(Message),
    /// The peer became available for our requests (open and watchdog OKAY).
    Available,
    /// The peer is no longer available: requests pending on it must fail over to another peer (RFC 3539 §3.4:
    /// on entering SUSPECT or on connection loss).
    Unavailable,
    /// The peer's Origin-State-Id changed: it restarted and lost its sessions (RFC 6733 §8.16).
    Restarted,
    /// The state changed (for logs and metrics).
    StateChanged(PeerState, PeerState),
}

/// Why a request could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer is not open or its watchdog is not OKAY.
    #[error("peer not available")]
    NotAvailable,
}

/// One peer.
#[derive(Debug)]
pub struct Peer {
    config: PeerConfig,
    e2e: EndToEndIds,
    state: PeerState,
    watchdog: Watchdog,
    /// Our connection (I side).
    i_conn: Option<ConnId>,
    /// The peer's connection (R side) and its CER while the election is undecided.
    r_conn: Option<(ConnId, Option<PeerCapabilities>)>,
    /// The peer's CER while the election is undecided (answered when its connection wins).
    pending_cer: Option<Message>,
    /// What the peer said in its CER/CEA.
    caps: Option<PeerCapabilities>,
    common_apps: Vec<AppId>,
    last_origin_state_id: Option<u32>,
    next_hbh: u32,
    dwr_pending: bool,
    /// Watchdog or handshake deadline.
    timer: Option<Instant>,
    /// When to try connecting again.
    reconnect_at: Option<Instant>,
    backoff: Duration,
    /// Whether the last connection failed (then the next one goes through REOPEN).
    failed: bool,
    /// Stopped by us: do not reconnect.
    stopped: bool,
    /// Set by a DPR from the peer: extra wait before reconnecting, or `None` for not at all.
    holdoff: Option<Option<Duration>>,
    available: bool,
    rng: u64,
    out: VecDeque<PeerOutput>,
}

impl Peer {
    /// A peer in Closed.
    pub fn new(config: PeerConfig, e2e: EndToEndIds) -> Peer {
        let rng = config.jitter_seed | 1;
        Peer {
            backoff: config.reconnect_initial,
            next_hbh: (rng as u32).wrapping_mul(2_654_435_761),
            config,
            e2e,
            state: PeerState::Closed,
            watchdog: Watchdog::Okay,
            i_conn: None,
            r_conn: None,
            pending_cer: None,
            holdoff: None,
            caps: None,
            common_apps: Vec::new(),
            last_origin_state_id: None,
            dwr_pending: false,
            timer: None,
            reconnect_at: None,
            failed: false,
            stopped: false,
            available: false,
            rng,
            out: VecDeque::new(),
        }
    }

    /// The RFC 6733 state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The watchdog state (meaningful while open).
    pub fn watchdog(&self) -> Watchdog {
        self.watchdog
    }

    /// Whether our requests may be sent: open, and the watchdog OKAY.
    pub fn is_available(&self) -> bool {
        self.available
    }

    /// What the peer advertised, once CER/CEA completed: kept after the connection closes (the last exchange's),
    /// so `None` means the peer has never been open.
    pub fn capabilities(&self) -> Option<&PeerCapabilities> {
        self.caps.as_ref()
    }

    /// The applications both sides support.
    pub fn common_applications(&self) -> &[AppId] {
        &self.common_apps
    }

    /// The configured identity we expect, or the one learnt.
    pub fn identity(&self) -> Option<&str> {
        self.caps.as_ref().map(|c| c.origin_host.as_str()).or(self.config.expected_host.as_deref())
    }

    /// The connection in use while open.
    pub fn connection(&self) -> Option<ConnId> {
        match self.state {
            PeerState::IOpen => self.i_conn,
            PeerState::ROpen => self.r_conn.as_ref().map(|(c, _)| *c),
            PeerState::Closing => self.i_conn.or(self.r_conn.as_ref().map(|(c, _)| *c)),
            _ => None,
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<PeerOutput> {
        self.out.pop_front()
    }

    /// When [`Peer::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timer, self.reconnect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- events -------------------------------------------------------------------------------------------

    /// Start: connect (initiator peers); responder-only peers wait for R-Conn-CER.
    pub fn start(&mut self, now: Instant) {
        self.stopped = false;
        if self.config.initiate && self.state == PeerState::Closed {
            self.connect(now);
        }
    }

    /// Stop: send DPR with `cause` when open, and do not reconnect (RFC 6733 §5.4).
    pub fn stop(&mut self, now: Instant, cause: DisconnectCause) {
        self.stopped = true;
        self.reconnect_at = None;
        match self.state {
            PeerState::IOpen | PeerState::ROpen => {
                let conn = self.connection().expect("open has a connection");
                let mut dpr = self.request(CommandCode::DISCONNECT_PEER);
                dpr.push(Avp::i32(code::DISCONNECT_CAUSE, cause.value()));
                self.out.push_back(PeerOutput::Send(conn, dpr));
                self.set_unavailable();
                self.timer = Some(now + self.config.handshake_timeout);
                self.set_state(PeerState::Closing);
            }
            PeerState::Closed | PeerState::Closing => {}
            _ => self.cleanup(now, false),
        }
    }

    /// I-Rcv-Conn-Ack: our connection is up; send CER.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        match self.state {
            PeerState::WaitConnAck => {
                self.i_conn = Some(conn);
                self.send_cer(now, conn);
                self.set_state(PeerState::WaitICea);
            }
            PeerState::WaitConnAckElect => {
                self.i_conn = Some(conn);
                self.send_cer(now, conn);
                self.set_state(PeerState::WaitReturns);
                self.elect(now);
            }
            // A connection we no longer want (e.g. after a timeout).
            _ => self.out.push_back(PeerOutput::Close(conn)),
        }
    }

    /// I-Rcv-Conn-Nack: our connection attempt failed.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        match self.state {
            PeerState::WaitConnAck => self.cleanup(now, true),
            PeerState::WaitConnAckElect => {
                // R-Snd-CEA: the peer's connection wins by default.
                self.accept_responder(now);
            }
            _ => {}
        }
    }

    /// R-Conn-CER: the peer connected to us and sent this CER (already validated). Returns `false` when the
    /// connection was rejected (the driver has been told to close it).
    pub fn handle_incoming_cer(&mut self, now: Instant, conn: ConnId, cer: &Message) -> bool {
        let Some(caps) = PeerCapabilities::from_message(cer) else {
            self.out.push_back(PeerOutput::Close(conn));
            return false;
        };
        if let Some(expected) = &self.config.expected_host
            && !expected.eq_ignore_ascii_case(&caps.origin_host)
        {
            self.reject_cer(conn, cer, ResultCode::UNKNOWN_PEER);
            return false;
        }
        if caps.common_applications(&self.config.local).is_empty() {
            // RFC 6733 §5.3: no common application: answer 5010 and close.
            self.reject_cer(conn, cer, ResultCode::NO_COMMON_APPLICATION);
            return false;
        }
        match self.state {
            PeerState::Closed => {
                self.r_conn = Some((conn, Some(caps)));
                self.accept_responder_with(now, cer);
                true
            }
            PeerState::WaitConnAck => {
                self.r_conn = Some((conn, Some(caps)));
                self.pending_cer = Some(cer.clone());
                self.set_state(PeerState::WaitConnAckElect);
                true
            }
            PeerState::WaitICea => {
                self.r_conn = Some((conn, Some(caps)));
                self.pending_cer = Some(cer.clone());
                self.set_state(PeerState::WaitReturns);
                self.elect(now);
                true
            }
            // R-Reject in every other state (RFC 6733 §5.6).
            _ => {
                self.reject_cer(conn, cer, ResultCode::UNABLE_TO_COMPLY);
                false
            }
        }
    }

    /// A message arrived on `conn` (decoded and validated by the driver).
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let from_i = self.i_conn == Some(conn);
        let from_r = self.r_conn.as_ref().is_some_and(|(c, _)| *c == conn);
        if !from_i && !from_r {
            return;
        }
        let cmd = msg.header.code;
        let request = msg.is_request();
        match self.state {
            PeerState::WaitICea | PeerState::WaitReturns if from_i => {
                if cmd == CommandCode::CAPABILITIES_EXCHANGE && !request {
                    self.handle_cea(now, &msg);
                } else {
                    // I-Rcv-Non-CEA: anything before the CEA is an error (RFC 6733 §5.6).
                    self.cleanup(now, true);
                }
            }
            PeerState::IOpen | PeerState::ROpen if self.connection() == Some(conn) => self.handle_open(now, conn, msg),
            PeerState::Closing if self.connection() == Some(conn) => {
                if cmd == CommandCode::DISCONNECT_PEER && !request {
                    // I-Rcv-DPA / R-Rcv-DPA: disconnect.
                    self.out.push_back(PeerOutput::Close(conn));
                    self.after_close(now, false);
                } else if request && cmd == CommandCode::DEVICE_WATCHDOG {
                    self.answer_dwr(conn, &msg);
                } else if !request {
                    // Answers to requests still in flight are delivered while the connection lasts.
                    self.out.push_back(PeerOutput::Deliver(msg));
                }
            }
            _ => {}
        }
    }

    /// Peer-Disc: the transport connection closed.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnId) {
        let is_i = self.i_conn == Some(conn);
        let is_r = self.r_conn.as_ref().is_some_and(|(c, _)| *c == conn);
        if !is_i && !is_r {
            return;
        }
        match self.state {
            PeerState::WaitConnAckElect if is_r => {
                self.r_conn = None;
                self.pending_cer = None;
                self.set_state(PeerState::WaitConnAck);
            }
            PeerState::WaitReturns if is_i => {
                // I-Peer-Disc: the peer's connection is what is left.
                self.i_conn = None;
                self.accept_responder(now);
            }
            PeerState::WaitReturns if is_r => {
                self.r_conn = None;
                self.pending_cer = None;
                self.set_state(PeerState::WaitICea);
            }
            PeerState::IOpen | PeerState::ROpen if self.connection() == Some(conn) => {
                self.after_close(now, true);
            }
            PeerState::Closing => self.after_close(now, false),
            PeerState::WaitICea if is_i => self.cleanup(now, true),
            _ => {
                if is_i {
                    self.i_conn = None;
                }
                if is_r {
                    self.r_conn = None;
                }
            }
        }
    }

    /// Timers: handshake timeouts, the watchdog, reconnection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            if self.state == PeerState::Closed && self.config.initiate && !self.stopped {
                self.connect(now);
            }
        }
        if self.timer.is_none_or(|t| t > now) {
            return;
        }
        self.timer = None;
        match self.state {
            PeerState::IOpen | PeerState::ROpen => self.watchdog_expired(now),
            PeerState::Closing => {
                if let Some(conn) = self.connection() {
                    self.out.push_back(PeerOutput::Close(conn));
                }
                self.after_close(now, false);
            }
            PeerState::Closed => {}
            // Timeout in a handshake state: Error -> Closed.
            _ => self.cleanup(now, true),
        }
    }

    /// Sends a request of ours: assigns the Hop-by-Hop id (and the End-to-End id when zero) and returns it.
    pub fn send_request(&mut self, mut msg: Message) -> Result<HopByHopId, SendError> {
        if !self.available {
            return Err(SendError::NotAvailable);
        }
        let conn = self.connection().ok_or(SendError::NotAvailable)?;
        let hbh = self.next_hop_by_hop();
        msg.header.hop_by_hop = hbh;
        if msg.header.end_to_end.0 == 0 {
            msg.header.end_to_end = self.e2e.next();
        }
        self.out.push_back(PeerOutput::Send(conn, msg));
        Ok(hbh)
    }

    /// Sends an answer to a request this peer sent us (allowed in every open state, watchdog or not).
    pub fn send_answer(&mut self, msg: Message) -> Result<(), SendError> {
        let conn = self.connection().ok_or(SendError::NotAvailable)?;
        self.out.push_back(PeerOutput::Send(conn, msg));
        Ok(())
    }

    // ---- internals ----------------------------------------------------------------------------------------

    fn next_hop_by_hop(&mut self) -> HopByHopId {
        self.next_hbh = self.next_hbh.wrapping_add(1);
        HopByHopId(self.next_hbh)
    }

    fn request(&mut self, code: CommandCode) -> Message {
        let mut m = Message::request(code, AppId::COMMON);
        // CER, DWR and DPR are not proxiable (RFC 6733 §5.3.1, §5.5.1, §5.4.1).
        m.header.flags = CommandFlags(CommandFlags::REQUEST);
        m.header.hop_by_hop = self.next_hop_by_hop();
        m.header.end_to_end = self.e2e.next();
        m.avps.extend(self.config.local.origin_avps());
        m
    }

    fn answer(&self, req: &Message, rc: ResultCode) -> Message {
        let mut a = Message::answer_to(req);
        a.push(Avp::u32(code::RESULT_CODE, rc.0));
        a.avps.extend(self.config.local.origin_avps());
        a
    }

    fn set_state(&mut self, to: PeerState) {
        if self.state != to {
            self.out.push_back(PeerOutput::StateChanged(self.state, to));
            self.state = to;
        }
    }

    fn connect(&mut self, now: Instant) {
        self.out.push_back(PeerOutput::Connect);
        self.timer = Some(now + self.config.handshake_timeout);
        self.set_state(PeerState::WaitConnAck);
    }

    fn send_cer(&mut self, now: Instant, conn: ConnId) {
        let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
        cer.header.flags = CommandFlags(CommandFlags::REQUEST);
        cer.header.hop_by_hop = self.next_hop_by_hop();
        cer.header.end_to_end = self.e2e.next();
        cer.avps = self.config.local.capability_avps();
        self.out.push_back(PeerOutput::Send(conn, cer));
        self.timer = Some(now + self.config.handshake_timeout);
    }

    fn reject_cer(&mut self, conn: ConnId, cer: &Message, rc: ResultCode) {
        let mut cea = Message::answer_to(cer);
        cea.push(Avp::u32(code::RESULT_CODE, rc.0));
        cea.avps.extend(self.config.local.capability_avps());
        self.out.push_back(PeerOutput::Send(conn, cea));
        self.out.push_back(PeerOutput::Close(conn));
    }

    /// Elect (RFC 6733 §5.6.4): the Origin-Hosts are compared as octet strings; when ours is higher we win:
    /// close our connection and answer the peer's CER on its connection (Win-Election -> R-Open). Otherwise the
    /// CEA on our connection decides, and the peer's connection is closed then.
    fn elect(&mut self, now: Instant) {
        let peer_host = self.r_conn.as_ref().and_then(|(_, c)| c.as_ref()).map(|c| c.origin_host.clone());
        let Some(peer_host) = peer_host else { return };
        if self.config.local.origin_host.as_bytes() > peer_host.as_bytes() {
            // Win: I-Disc, R-Snd-CEA -> R-Open.
            if let Some(i) = self.i_conn.take() {
                self.out.push_back(PeerOutput::Close(i));
            }
            self.accept_responder(now);
        }
    }

    fn accept_responder(&mut self, now: Instant) {
        match self.pending_cer.take() {
            Some(cer) => self.accept_responder_with(now, &cer),
            None => self.cleanup(now, true),
        }
    }

    /// R-Accept, Process-CER, R-Snd-CEA -> R-Open.
    fn accept_responder_with(&mut self, now: Instant, cer: &Message) {
        let Some((conn, caps)) = self.r_conn.clone() else {
            return;
        };
        let caps = caps.expect("responder CER recorded");
        let mut cea = Message::answer_to(cer);
        cea.push(Avp::u32(code::RESULT_CODE, ResultCode::SUCCESS.0));
        cea.avps.extend(self.config.local.capability_avps());
        self.out.push_back(PeerOutput::Send(conn, cea));
        self.r_conn = Some((conn, None));
        self.opened(now, caps, PeerState::ROpen);
    }

    fn handle_cea(&mut self, now: Instant, cea: &Message) {
        let rc = cea.result_code();
        let caps = PeerCapabilities::from_message(cea);
        match (rc, caps) {
            (Some(rc), Some(caps)) if rc.is_success() && !caps.common_applications(&self.config.local).is_empty() => {
                if let Some((r, _)) = self.r_conn.take() {
                    // Lost the election: R-Disc.
                    self.pending_cer = None;
                    self.out.push_back(PeerOutput::Close(r));
                }
                self.opened(now, caps, PeerState::IOpen);
            }
            // A refusal (5010, 3010…) or no common application: Error -> Closed.
            _ => self.cleanup(now, true),
        }
    }

    fn opened(&mut self, now: Instant, caps: PeerCapabilities, state: PeerState) {
        self.common_apps = caps.common_applications(&self.config.local);
        if let (Some(old), Some(new)) = (self.last_origin_state_id, caps.origin_state_id)
            && old != new
        {
            self.out.push_back(PeerOutput::Restarted);
        }
        self.last_origin_state_id = caps.origin_state_id.or(self.last_origin_state_id);
        self.caps = Some(caps);
        self.set_state(state);
        self.backoff = self.config.reconnect_initial;
        self.dwr_pending = false;
        if self.failed {
            // RFC 3539 §3.4.1 DOWN -> REOPEN: prove the link with three DWAs before traffic resumes.
            self.watchdog = Watchdog::Reopen { answered: 0 };
            self.send_dwr(now);
        } else {
            self.watchdog = Watchdog::Okay;
            self.set_available();
            self.set_watchdog(now);
        }
    }

    fn handle_open(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let cmd = msg.header.code;
        let request = msg.is_request();
        let is_dwa = cmd == CommandCode::DEVICE_WATCHDOG && !request;
        // RFC 3539 §3.4.1: any message is a sign of life.
        match self.watchdog {
            Watchdog::Okay => {
                if is_dwa {
                    self.dwr_pending = false;
                }
                self.set_watchdog(now);
            }
            Watchdog::Suspect => {
                self.dwr_pending = false;
                self.watchdog = Watchdog::Okay;
                self.set_available();
                self.set_watchdog(now);
            }
            Watchdog::Reopen { answered } => {
                if is_dwa && self.dwr_pending {
                    self.dwr_pending = false;
                    if answered >= 2 {
                        self.watchdog = Watchdog::Okay;
                        self.set_available();
                        self.set_watchdog(now);
                    } else {
                        self.watchdog = Watchdog::Reopen { answered: answered + 1 };
                    }
                }
            }
        }
        match cmd {
            CommandCode::DEVICE_WATCHDOG if request => self.answer_dwr(conn, &msg),
            CommandCode::DEVICE_WATCHDOG => self.check_origin_state(&msg),
            CommandCode::DISCONNECT_PEER if request => {
                // R-Rcv-DPR / I-Rcv-DPR: answer, then wait for the peer to close (RFC 6733 §5.4).
                let cause = msg.find(code::DISCONNECT_CAUSE, 0).and_then(|a| a.as_i32().ok()).unwrap_or(0);
                let dpa = self.answer(&msg, ResultCode::SUCCESS);
                self.out.push_back(PeerOutput::Send(conn, dpa));
                self.set_unavailable();
                self.apply_disconnect_cause(DisconnectCause::from_value(cause));
                self.timer = Some(now + self.config.handshake_timeout);
                self.set_state(PeerState::Closing);
            }
            CommandCode::DISCONNECT_PEER => {}
            CommandCode::CAPABILITIES_EXCHANGE if request => {
                // A CER on an open connection: RFC 6733 §5.6 R-Rcv-CER answers it (as in R-Open).
                let mut cea = Message::answer_to(&msg);
                cea.push(Avp::u32(code::RESULT_CODE, ResultCode::SUCCESS.0));
                cea.avps.extend(self.config.local.capability_avps());
                self.out.push_back(PeerOutput::Send(conn, cea));
            }
            CommandCode::CAPABILITIES_EXCHANGE => {}
            _ => self.out.push_back(PeerOutput::Deliver(msg)),
        }
    }

    fn answer_dwr(&mut self, conn: ConnId, dwr: &Message) {
        self.check_origin_state(dwr);
        let mut dwa = self.answer(dwr, ResultCode::SUCCESS);
        dwa.push(Avp::u32(code::ORIGIN_STATE_ID, self.config.local.origin_state_id));
        self.out.push_back(PeerOutput::Send(conn, dwa));
    }

    fn check_origin_state(&mut self, m: &Message) {
        if let Some(new) = m.find(code::ORIGIN_STATE_ID, 0).and_then(|a| a.as_u32().ok()) {
            if self.last_origin_state_id.is_some_and(|old| old != new) {
                self.out.push_back(PeerOutput::Restarted);
            }
            self.last_origin_state_id = Some(new);
        }
    }

    fn send_dwr(&mut self, now: Instant) {
        if let Some(conn) = self.connection() {
            let mut dwr = self.request(CommandCode::DEVICE_WATCHDOG);
            dwr.push(Avp::u32(code::ORIGIN_STATE_ID, self.config.local.origin_state_id));
            self.out.push_back(PeerOutput::Send(conn, dwr));
            self.dwr_pending = true;
        }
        self.set_watchdog(now);
    }

    /// SetWatchdog(): Tw plus jitter uniformly in ±2 s (RFC 3539 §3.4.1), or ±Tw/4 for the short Tw of tests,
    /// so that the timer never fires before 3/4 of Tw.
    fn set_watchdog(&mut self, now: Instant) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.config.watchdog_interval.as_millis() as i64;
        let spread = (base / 4).min(2000);
        let jitter_ms = (self.rng % (2 * spread as u64 + 1)) as i64 - spread;
        self.timer = Some(now + Duration::from_millis((base + jitter_ms).max(1) as u64));
    }

    fn watchdog_expired(&mut self, now: Instant) {
        match self.watchdog {
            Watchdog::Okay if self.dwr_pending => {
                // RFC 3539: Failover() on entering SUSPECT.
                self.watchdog = Watchdog::Suspect;
                self.set_unavailable();
                self.set_watchdog(now);
            }
            Watchdog::Okay => self.send_dwr(now),
            Watchdog::Suspect => {
                // Second Tw without a sign of life: CloseConnection() -> DOWN.
                if let Some(conn) = self.connection() {
                    self.out.push_back(PeerOutput::Close(conn));
                }
                self.after_close(now, true);
            }
            Watchdog::Reopen { answered } => {
                if !self.dwr_pending {
                    self.send_dwr(now);
                } else if answered < 0 {
                    if let Some(conn) = self.connection() {
                        self.out.push_back(PeerOutput::Close(conn));
                    }
                    self.after_close(now, true);
                } else {
                    self.watchdog = Watchdog::Reopen { answered: -1 };
                    self.set_watchdog(now);
                }
            }
        }
    }

    fn apply_disconnect_cause(&mut self, cause: DisconnectCause) {
        // RFC 6733 §5.4.3: REBOOTING -> reconnect as usual; BUSY -> back off; DO_NOT_WANT_TO_TALK_TO_YOU -> leave
        // the peer alone.
        self.holdoff = Some(match cause {
            DisconnectCause::Rebooting => Some(Duration::ZERO),
            DisconnectCause::Busy => Some(self.config.busy_holdoff),
            DisconnectCause::DoNotWantToTalkToYou => self.config.do_not_want_holdoff,
        });
    }

    fn set_available(&mut self) {
        if !self.available {
            self.available = true;
            self.out.push_back(PeerOutput::Available);
        }
    }

    fn set_unavailable(&mut self) {
        if self.available {
            self.available = false;
            self.out.push_back(PeerOutput::Unavailable);
        }
    }

    /// The open connection is gone (`failure`: not a DPR exchange): go to Closed and schedule the reconnect.
    fn after_close(&mut self, now: Instant, failure: bool) {
        self.i_conn = None;
        self.r_conn = None;
        self.pending_cer = None;
        self.set_unavailable();
        self.failed = failure;
        self.timer = None;
        self.dwr_pending = false;
        self.set_state(PeerState::Closed);
        self.schedule_reconnect(now);
    }

    /// Error / Cleanup in a handshake state: close everything, go to Closed, schedule the reconnect.
    fn cleanup(&mut self, now: Instant, failure: bool) {
        if let Some(i) = self.i_conn.take() {
            self.out.push_back(PeerOutput::Close(i));
        }
        if let Some((r, _)) = self.r_conn.take() {
            self.out.push_back(PeerOutput::Close(r));
        }
        self.after_close(now, failure || self.failed);
    }

    fn schedule_reconnect(&mut self, now: Instant) {
        if !self.config.initiate || self.stopped {
            return;
        }
        // DO_NOT_WANT_TO_TALK_TO_YOU without a configured hold-off: stay closed until started again.
        let Some(holdoff) = self.holdoff.take().unwrap_or(Some(Duration::ZERO)) else {
            return;
        };
        self.reconnect_at = Some(now + self.backoff + holdoff);
        self.backoff = (self.backoff * 2).min(self.config.reconnect_max);
    }
}

#[cfg(test)]
mod tests;
