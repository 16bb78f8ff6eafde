//! The node runtime: drives the sans-IO [`Router`] (and through it the peer machines) with tokio sockets,
//! timers and the application's requests. One task owns the router; connection tasks and the application talk
//! to it through channels, so every protocol decision stays in the deterministic core.

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use crate::codec::{Message, ResultCode};
use crate::dict::Dictionary;
use crate::peer::{ConnId, DisconnectCause, EndToEndIds, PeerConfig, PeerState, Watchdog};
use crate::router::{PeerEvent, PeerId, PeerMetrics, RequestToken, Router, RouterConfig, RouterOutput};
use crate::transport::tls::TlsConfig;
use crate::transport::{BoxedStream, ConnEvent, ConnIds, Connection, spawn_connection};

/// A peer and how to reach it.
#[derive(Clone, Debug)]
pub struct PeerEndpoint {
    /// The machine's configuration.
    pub config: PeerConfig,
    /// Where to connect; `None` for peers that only connect to us.
    pub address: Option<SocketAddr>,
    /// Connect with TLS (RFC 6733 §2.1: on the peer's TLS port).
    pub tls: bool,
    /// The name its certificate must carry (default: its Diameter identity).
    pub server_name: Option<String>,
}

/// Everything a node needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Routing, identity, limits.
    pub router: RouterConfig,
    /// The peers; their order gives their [`PeerId`], which the routes use.
    pub peers: Vec<PeerEndpoint>,
    /// Plain TCP listening addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS listening addresses.
    pub listen_tls: Vec<SocketAddr>,
    /// Certificates, when TLS is used.
    pub tls: Option<TlsConfig>,
    /// The dictionary messages are validated against.
    pub dictionary: Arc<Dictionary>,
    /// Messages queued per connection before a non-reading peer is cut off.
    pub write_queue: usize,
    /// Requests from peers queued for the application before new ones get 3004 (DIAMETER_TOO_BUSY).
    pub incoming_queue: usize,
    /// How long a TCP (and TLS) connection attempt may take.
    pub connect_timeout: Duration,
}

impl NodeConfig {
    /// A node with these router settings and peers, listening nowhere.
    pub fn new(router: RouterConfig, peers: Vec<PeerEndpoint>) -> NodeConfig {
        NodeConfig {
            router,
            peers,
            listen: Vec::new(),
            listen_tls: Vec::new(),
            tls: None,
            dictionary: Arc::new(Dictionary::builtin()),
            write_queue: 16 * 1024,
            incoming_queue: 64 * 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS is configured wrongly.
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    /// TLS is used without a `[tls]` configuration.
    #[error("a TLS listener or peer is configured but [tls] is missing")]
    TlsMissing,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The router could not deliver it (no route, no peer, timeout), with the Result-Code that says so.
    #[error("request failed ({result_code}): {reason}")]
    Failed {
        /// 3002, 3003, 3004…
        result_code: ResultCode,
        /// Why.
        reason: String,
    },
    /// The node has stopped.
    #[error("the Diameter node has stopped")]
    Stopped,
}

/// A request from a peer for the application. Answer it with [`IncomingRequest::answer`]; dropping it
/// unanswered answers 5012 (DIAMETER_UNABLE_TO_COMPLY).
#[derive(Debug)]
pub struct IncomingRequest {
    /// The peer it came from.
    pub peer: PeerId,
    /// That peer's DiameterIdentity (what a proxy puts in Route-Record, RFC 6733 §6.1.9).
    pub peer_identity: Option<String>,
    /// The request.
    pub request: Message,
    commands: mpsc::UnboundedSender<Command>,
    answered: bool,
}

impl IncomingRequest {
    /// Sends the answer (built with [`Message::answer_to`] on the request).
    pub fn answer(mut self, answer: Message) {
        self.answered = true;
        let _ = self.commands.send(Command::Answer(self.peer, answer));
    }

    /// Drops the request without answering (a simulator losing an answer on purpose).
    pub fn discard(mut self) {
        self.answered = true;
    }
}

/// A cloneable handle on a running node for other tasks: requests, peer commands.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl NodeHandle {
    /// See [`DiameterNode::request_via`].
    pub async fn request_via(
        &self,
        request: Message,
        timeout: Option<Duration>,
        via: Option<PeerId>,
    ) -> Result<Message, RequestError> {
        self.request_full(request, timeout, via, None).await
    }

    /// Sends a request that must not go to the peer named `avoid_host` (a server that did not answer).
    pub async fn request_avoiding(
        &self,
        request: Message,
        timeout: Option<Duration>,
        avoid_host: Option<String>,
    ) -> Result<Message, RequestError> {
        self.request_full(request, timeout, None, avoid_host).await
    }

    async fn request_full(
        &self,
        request: Message,
        timeout: Option<Duration>,
        via: Option<PeerId>,
        avoid: Option<String>,
    ) -> Result<Message, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Request(request, timeout, via, avoid, Reply::Caller(tx)))
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Sends a request without waiting: `then` receives its answer (or why there is none) on the node's task. This
    /// is the engine's path: no task per request. `then` gets [`RequestError::Stopped`] if the node has stopped.
    pub fn request_then(
        &self,
        request: Message,
        timeout: Option<Duration>,
        avoid_host: Option<String>,
        then: AnswerSink,
    ) {
        // A command that cannot be sent is dropped, and its sink is told Stopped as it drops.
        let _ =
            self.commands.send(Command::Request(request, timeout, None, avoid_host, Reply::Sink(SinkOnce(Some(then)))));
    }

    /// See [`DiameterNode::disconnect_peer`].
    pub fn disconnect_peer(&self, peer: PeerId, cause: DisconnectCause) {
        let _ = self.commands.send(Command::DisconnectPeer(peer, cause));
    }

    /// See [`DiameterNode::close_peer`].
    pub fn close_peer(&self, peer: PeerId) {
        let _ = self.commands.send(Command::ClosePeer(peer));
    }

    /// See [`DiameterNode::status`].
    pub async fn status(&self) -> Option<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Status(tx)).ok()?;
        rx.await.ok()
    }
}

impl Drop for IncomingRequest {
    fn drop(&mut self) {
        if !self.answered {
            let mut a = Message::answer_to(&self.request);
            a.push(crate::codec::Avp::u32(crate::codec::code::RESULT_CODE, ResultCode::UNABLE_TO_COMPLY.0));
            let _ = self.commands.send(Command::Answer(self.peer, a));
        }
    }
}

/// A peer as the node sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStatus {
    /// Its identity (configured or learnt).
    pub identity: Option<String>,
    /// RFC 6733 state.
    pub state: PeerState,
    /// RFC 3539 watchdog state.
    pub watchdog: Watchdog,
    /// Whether requests are sent to it.
    pub available: bool,
    /// Requests sent to it and waiting for their answer.
    pub pending: usize,
    /// Its counters.
    pub metrics: PeerMetrics,
}

/// The node as it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    /// Every peer, by [`PeerId`].
    pub peers: Vec<PeerStatus>,
    /// Requests waiting for answers.
    pub pending: usize,
    /// Requests from peers being processed (not answered yet); at `max_incoming` new ones get 3004.
    pub in_flight: usize,
    /// Accepted connections closed before a peer was identified.
    pub connections_refused: u64,
}

#[derive(Debug)]
enum Command {
    Request(Message, Option<Duration>, Option<PeerId>, Option<String>, Reply),
    DisconnectPeer(PeerId, DisconnectCause),
    ClosePeer(PeerId),
    Answer(PeerId, Message),
    Status(oneshot::Sender<NodeStatus>),
    Stop(DisconnectCause, oneshot::Sender<NodeStatus>),
}

/// Where a request's answer goes: a waiting caller, or a callback run on the node's task (no task of its own, so an
/// answer costs one wake-up less).
enum Reply {
    Caller(oneshot::Sender<Result<Message, RequestError>>),
    Sink(SinkOnce),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reply::Caller(_) => "Caller",
            Reply::Sink(_) => "Sink",
        })
    }
}

impl Reply {
    fn send(self, r: Result<Message, RequestError>) {
        match self {
            Reply::Caller(tx) => {
                let _ = tx.send(r);
            }
            Reply::Sink(mut f) => {
                if let Some(f) = f.0.take() {
                    f(r)
                }
            }
        }
    }
}

/// A sink that is told [`RequestError::Stopped`] if it is dropped unanswered (the node stopped or was aborted), as a
/// dropped oneshot tells a waiting caller.
struct SinkOnce(Option<AnswerSink>);

impl Drop for SinkOnce {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(RequestError::Stopped));
        }
    }
}

/// A callback that receives a request's answer, run on the node's task: it must not block (send it on a channel).
pub type AnswerSink = Box<dyn FnOnce(Result<Message, RequestError>) + Send>;

enum Event {
    Conn(ConnEvent),
    Connected(PeerId, ConnId, BoxedStream),
    ConnectFailed(PeerId, String),
    Accepted(ConnId, BoxedStream),
}

/// A running Diameter node.
pub struct DiameterNode {
    commands: mpsc::UnboundedSender<Command>,
    local_addrs: Vec<SocketAddr>,
    local_tls_addrs: Vec<SocketAddr>,
    task: JoinHandle<()>,
    listeners: Vec<tokio::task::AbortHandle>,
}

impl DiameterNode {
    /// Binds the listeners, starts the peers, and returns the node with the stream of requests from peers.
    pub async fn start(mut config: NodeConfig) -> Result<(DiameterNode, mpsc::Receiver<IncomingRequest>), NodeError> {
        // RFC 6733 §8.16: Origin-State-Id must change at every restart. 0 (unset) takes the start time.
        if config.router.local.origin_state_id == 0 {
            config.router.local.origin_state_id =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() as u32);
        }
        let tls_needed = !config.listen_tls.is_empty() || config.peers.iter().any(|p| p.tls);
        let (server_tls, client_tls) = match (&config.tls, tls_needed) {
            (Some(t), _) => (Some(t.server()?), Some(t.client()?)),
            (None, true) => return Err(NodeError::TlsMissing),
            (None, false) => (None, None),
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<ConnEvent>();
        // Connection tasks report on their own channel; forward into the node's.
        let fwd = events_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = conn_rx.recv().await {
                if fwd.send(Event::Conn(e)).is_err() {
                    break;
                }
            }
        });
        let ids = ConnIds::default();
        let limits = config.router.limits;
        let mut local_addrs = Vec::new();
        let mut local_tls_addrs = Vec::new();
        let mut listeners = Vec::new();
        for (addr, tls) in config.listen.iter().map(|a| (a, false)).chain(config.listen_tls.iter().map(|a| (a, true))) {
            let l = TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr: *addr, source })?;
            let bound = l.local_addr().map_err(|source| NodeError::Bind { addr: *addr, source })?;
            if tls {
                local_tls_addrs.push(bound)
            } else {
                local_addrs.push(bound)
            }
            let (events, ids) = (events_tx.clone(), ids.clone());
            let acceptor = if tls { server_tls.clone().map(tokio_rustls::TlsAcceptor::from) } else { None };
            listeners.push(tokio::spawn(async move {
                loop {
                    let Ok((sock, from)) = l.accept().await else { continue };
                    let _ = sock.set_nodelay(true);
                    let conn = ids.next();
                    let (events, acceptor) = (events.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let c = match acceptor {
                            None => Box::new(sock) as BoxedStream,
                            Some(acc) => match acc.accept(sock).await {
                                Ok(s) => Box::new(s),
                                Err(e) => {
                                    tracing::info!(%from, error = %e, "TLS handshake with a connecting peer failed");
                                    return;
                                }
                            },
                        };
                        // The driver starts reading only once the connection is registered: a peer's CER may
                        // already be waiting, and must not overtake the registration.
                        let _ = events.send(Event::Accepted(conn, c));
                    });
                }
            }));
        }
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_queue.max(1));
        let e2e = EndToEndIds::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            std::process::id().wrapping_mul(2_654_435_761),
        );
        let router = Router::new(
            config.router.clone(),
            config.peers.iter().map(|p| p.config.clone()).collect(),
            config.dictionary.clone(),
            e2e,
        );
        let driver = Driver {
            router,
            endpoints: config.peers.clone(),
            conns: FxHashMap::default(),
            tokens: FxHashMap::default(),
            next_token: 1,
            events_tx,
            conn_tx,
            ids,
            incoming: incoming_tx,
            commands: commands.clone(),
            client_tls,
            limits,
            write_queue: config.write_queue,
            connect_timeout: config.connect_timeout,
            stopping: None,
            listeners,
        };
        let listener_handles = driver.listeners.iter().map(JoinHandle::abort_handle).collect();
        let task = tokio::spawn(driver.run(events_rx, cmd_rx));
        Ok((DiameterNode { commands, local_addrs, local_tls_addrs, task, listeners: listener_handles }, incoming_rx))
    }

    /// The bound plain TCP addresses (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The bound TLS addresses.
    pub fn local_tls_addrs(&self) -> &[SocketAddr] {
        &self.local_tls_addrs
    }

    /// Sends a request and waits for its answer. `timeout` overrides the router's answer timeout.
    pub async fn request(&self, request: Message, timeout: Option<Duration>) -> Result<Message, RequestError> {
        self.handle().request_via(request, timeout, None).await
    }

    /// Sends a request preferring the peer `via` (e.g. the connection a session's requests came on).
    pub async fn request_via(
        &self,
        request: Message,
        timeout: Option<Duration>,
        via: Option<PeerId>,
    ) -> Result<Message, RequestError> {
        self.handle().request_via(request, timeout, via).await
    }

    /// Sends DPR to one peer.
    pub fn disconnect_peer(&self, peer: PeerId, cause: DisconnectCause) {
        self.handle().disconnect_peer(peer, cause);
    }

    /// Closes one peer's connection without DPR.
    pub fn close_peer(&self, peer: PeerId) {
        self.handle().close_peer(peer);
    }

    /// A cloneable handle for other tasks.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle { commands: self.commands.clone() }
    }

    /// The peers and counters.
    pub async fn status(&self) -> Option<NodeStatus> {
        self.handle().status().await
    }

    /// Graceful stop: DPR to every open peer, wait for the DPAs (at most 2 s), end. Returns the final status.
    pub async fn stop(self, cause: DisconnectCause) -> Option<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stop(cause, tx)).ok()?;
        let status = rx.await.ok();
        let _ = self.task.await;
        status
    }

    /// Ends at once, as a crash would: listeners close and connections are dropped without DPR.
    pub fn abort(self) {
        for l in &self.listeners {
            l.abort();
        }
        self.task.abort();
    }
}

struct Driver {
    router: Router,
    endpoints: Vec<PeerEndpoint>,
    // Keyed by identifiers this node makes: FxHash.
    conns: FxHashMap<ConnId, Connection>,
    tokens: FxHashMap<RequestToken, Reply>,
    next_token: RequestToken,
    events_tx: mpsc::UnboundedSender<Event>,
    conn_tx: mpsc::UnboundedSender<ConnEvent>,
    ids: ConnIds,
    incoming: mpsc::Sender<IncomingRequest>,
    commands: mpsc::UnboundedSender<Command>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    limits: crate::codec::DecodeLimits,
    write_queue: usize,
    connect_timeout: Duration,
    stopping: Option<(oneshot::Sender<NodeStatus>, TokioInstant)>,
    listeners: Vec<JoinHandle<()>>,
}

fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

impl Driver {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.router.start(now());
        self.drain();
        loop {
            let deadline = self.router.poll_timeout().map(TokioInstant::from_std);
            let stop_deadline = self.stopping.as_ref().map(|(_, t)| *t);
            tokio::select! {
                Some(e) = events.recv() => self.event(e),
                Some(c) = commands.recv() => self.command(c),
                _ = sleep_until(deadline) => self.router.handle_timeout(now()),
                _ = sleep_until(stop_deadline) => break,
            }
            self.drain();
            if self.stopping.is_some() && self.router.peers().iter().all(|p| p.state() == PeerState::Closed) {
                break;
            }
        }
        if let Some((tx, _)) = self.stopping.take() {
            let _ = tx.send(self.status());
        }
        for l in &self.listeners {
            l.abort();
        }
        for (_, c) in self.conns.drain() {
            c.close();
        }
    }

    fn event(&mut self, e: Event) {
        let t = now();
        match e {
            Event::Conn(ConnEvent::Frame(conn, frame)) => self.router.handle_frame(t, conn, frame),
            Event::Conn(ConnEvent::Closed(conn, why)) => {
                if let Some(c) = self.conns.remove(&conn) {
                    tracing::debug!(
                        conn = conn.0,
                        reason = why.as_deref().unwrap_or("closed by peer"),
                        "connection ended"
                    );
                    c.close();
                    self.router.handle_disconnected(t, conn);
                }
            }
            Event::Connected(peer, conn, stream) => {
                let c = spawn_connection(conn, stream, self.conn_tx.clone(), self.limits, self.write_queue);
                self.conns.insert(conn, c);
                self.router.handle_connected(t, peer, conn);
            }
            Event::ConnectFailed(peer, why) => {
                tracing::debug!(peer = peer.0, reason = %why, "connection attempt failed");
                self.router.handle_connect_failed(t, peer);
            }
            Event::Accepted(conn, stream) => {
                let c = spawn_connection(conn, stream, self.conn_tx.clone(), self.limits, self.write_queue);
                self.conns.insert(conn, c);
                self.router.handle_accepted(conn);
            }
        }
    }

    fn command(&mut self, c: Command) {
        let t = now();
        match c {
            Command::Request(msg, timeout, via, avoid, reply) => {
                let token = self.next_token;
                self.next_token += 1;
                self.tokens.insert(token, reply);
                self.router.send_request_full(t, msg, token, timeout, via, avoid.as_deref());
            }
            Command::DisconnectPeer(peer, cause) => self.router.disconnect_peer(t, peer, cause),
            Command::ClosePeer(peer) => self.router.close_peer(t, peer),
            Command::Answer(peer, msg) => self.router.answer_request(t, peer, msg),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Stop(cause, reply) => {
                self.router.stop(t, cause);
                self.stopping = Some((reply, TokioInstant::now() + Duration::from_secs(2)));
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let pending = self.router.pending_by_peer();
        let peers = self
            .router
            .peers()
            .iter()
            .enumerate()
            .map(|(i, p)| PeerStatus {
                identity: p.identity().map(str::to_string),
                state: p.state(),
                watchdog: p.watchdog(),
                available: p.is_available(),
                pending: pending.get(i).copied().unwrap_or(0),
                metrics: self.router.metrics(PeerId(i)).clone(),
            })
            .collect();
        NodeStatus {
            peers,
            pending: self.router.pending(),
            in_flight: self.router.in_flight(),
            connections_refused: self.router.connections_refused(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.router.poll_output() {
            match o {
                RouterOutput::Connect(peer) => self.connect(peer),
                RouterOutput::Send(conn, msg) => self.send(conn, &msg),
                RouterOutput::Close(conn) => {
                    if let Some(c) = self.conns.remove(&conn) {
                        c.close();
                    }
                }
                RouterOutput::Answer(token, msg) => {
                    if let Some(reply) = self.tokens.remove(&token) {
                        reply.send(Ok(msg));
                    }
                }
                RouterOutput::Failed { token, result_code, reason } => {
                    if let Some(reply) = self.tokens.remove(&token) {
                        reply.send(Err(RequestError::Failed { result_code, reason }));
                    }
                }
                RouterOutput::Request(peer, request) => {
                    let peer_identity = self.router.peers().get(peer.0).and_then(|p| p.identity()).map(str::to_string);
                    let req = IncomingRequest {
                        peer,
                        peer_identity,
                        request,
                        commands: self.commands.clone(),
                        answered: false,
                    };
                    if let Err(mpsc::error::TrySendError::Full(mut req) | mpsc::error::TrySendError::Closed(mut req)) =
                        self.incoming.try_send(req)
                    {
                        // The application is behind (or gone): answer 3004 rather than queue without bound.
                        req.answered = true;
                        let mut a = Message::answer_to(&req.request);
                        a.header.flags = a.header.flags.with(crate::codec::CommandFlags::ERROR, true);
                        a.push(crate::codec::Avp::u32(crate::codec::code::RESULT_CODE, ResultCode::TOO_BUSY.0));
                        self.router.answer_request(now(), req.peer, a);
                    }
                }
                RouterOutput::PeerEvent(peer, ev) => match ev {
                    // The router's "peer state" line has said it at info.
                    PeerEvent::Available => tracing::debug!(peer = peer.0, "peer available"),
                    PeerEvent::Unavailable => {
                        tracing::warn!(peer = peer.0, "peer unavailable; pending requests fail over")
                    }
                    PeerEvent::Restarted => tracing::warn!(peer = peer.0, "peer restarted (new Origin-State-Id)"),
                    PeerEvent::State(..) => {}
                },
            }
        }
    }

    fn send(&mut self, conn: ConnId, msg: &Message) {
        let Some(c) = self.conns.get(&conn) else { return };
        let mut buf = BytesMut::with_capacity(msg.encoded_len());
        if msg.encode_into(&mut buf).is_err() {
            tracing::error!(conn = conn.0, "message too long to encode; dropped");
            return;
        }
        match c.writer.try_send(buf.freeze()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The peer does not read: cut it off rather than queue without bound (module docs).
                tracing::warn!(conn = conn.0, queue = self.write_queue, "peer is not reading; connection closed");
                if let Some(c) = self.conns.remove(&conn) {
                    c.close();
                }
                self.router.handle_disconnected(now(), conn);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn connect(&mut self, peer: PeerId) {
        let ep = &self.endpoints[peer.0];
        let Some(addr) = ep.address else {
            let events = self.events_tx.clone();
            let _ = events.send(Event::ConnectFailed(peer, "no address configured".into()));
            return;
        };
        let conn = self.ids.next();
        let tls = if ep.tls { self.client_tls.clone() } else { None };
        let name =
            ep.server_name.clone().or_else(|| ep.config.expected_host.clone()).unwrap_or_else(|| addr.ip().to_string());
        let (events, timeout) = (self.events_tx.clone(), self.connect_timeout);
        tokio::spawn(async move {
            let attempt = async {
                let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let _ = sock.set_nodelay(true);
                match tls {
                    None => Ok::<_, String>(Box::new(sock) as BoxedStream),
                    Some(cfg) => {
                        let server = rustls::pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
                        let s = tokio_rustls::TlsConnector::from(cfg)
                            .connect(server, sock)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(Box::new(s) as BoxedStream)
                    }
                }
            };
            let event = match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(c)) => Event::Connected(peer, conn, c),
                Ok(Err(e)) => Event::ConnectFailed(peer, format!("{addr}: {e}")),
                Err(_) => Event::ConnectFailed(peer, format!("{addr}: timed out")),
            };
            let _ = events.send(event);
        });
    }
}

async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
