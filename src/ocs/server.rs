//! The simulator's runtime: the [`Ocs`] core behind a Diameter node (responder for Ro and Gx), a Tcc sweeper,
//! and the HTTP control API (ledger, RAR/ASR, faults, Prometheus metrics).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;

use super::{FaultRule, Ocs, OcsConfig, Reply};
use crate::codec::{AppId, VendorId, code};
use crate::node::{DiameterNode, NodeConfig, NodeError, NodeHandle};
use crate::peer::{Application, DisconnectCause, LocalIdentity, PeerConfig};
use crate::router::{PeerId, RouterConfig};

/// How to run the simulator.
#[derive(Clone, Debug)]
pub struct OcsServerConfig {
    /// Diameter listening address.
    pub listen: SocketAddr,
    /// Our Origin-Host.
    pub origin_host: String,
    /// Our Origin-Realm.
    pub origin_realm: String,
    /// The HTTP control API's address, if any.
    pub control: Option<SocketAddr>,
    /// Tariff, accounts, faults, Tcc.
    pub ocs: OcsConfig,
    /// Watchdog interval towards clients.
    pub watchdog_interval: Duration,
    /// A mate: a second Diameter identity (listening address, Origin-Host) serving the same sessions and ledger, as
    /// the two servers of a redundant OCS pair do. Clients configure it as their alternate server.
    pub mate: Option<(SocketAddr, String)>,
}

impl OcsServerConfig {
    /// A simulator on `listen` with the default tariff.
    pub fn new(listen: SocketAddr, origin_host: &str, origin_realm: &str) -> OcsServerConfig {
        OcsServerConfig {
            listen,
            origin_host: origin_host.into(),
            origin_realm: origin_realm.into(),
            control: None,
            ocs: OcsConfig::default(),
            watchdog_interval: Duration::from_secs(30),
            mate: None,
        }
    }
}

/// A running simulator.
pub struct OcsServer {
    node: DiameterNode,
    mate: Option<DiameterNode>,
    ocs: Arc<Mutex<Ocs>>,
    control: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// The outcome of a RAR or ASR.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerRequestOutcome {
    /// The answer's Result-Code (or the router's, when there was no answer).
    pub result_code: u32,
    /// The answer's Origin-Host.
    pub answered_by: Option<String>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Clone)]
struct Shared {
    ocs: Arc<Mutex<Ocs>>,
    /// The primary's node, then the mate's.
    nodes: Vec<NodeHandle>,
}

/// The core knows peers by one number: the mate's connections are numbered from here.
const MATE_PEERS: usize = 1 << 24;

impl Shared {
    /// The node a core peer number belongs to, and the peer's number there.
    fn route(&self, peer: PeerId) -> (&NodeHandle, PeerId) {
        match self.nodes.get(1) {
            Some(mate) if peer.0 >= MATE_PEERS => (mate, PeerId(peer.0 - MATE_PEERS)),
            _ => (&self.nodes[0], peer),
        }
    }
}

/// Serves the requests one of the simulator's nodes receives; the mate's peers are numbered from [`MATE_PEERS`].
fn serve(
    s: Shared,
    index: usize,
    mut requests: tokio::sync::mpsc::Receiver<crate::node::IncomingRequest>,
) -> JoinHandle<()> {
    let base = if index == 0 { 0 } else { MATE_PEERS };
    tokio::spawn(async move {
        let node = s.nodes[index].clone();
        while let Some(req) = requests.recv().await {
            let started = Instant::now();
            let reply = {
                let mut ocs = s.ocs.lock().expect("ledger lock");
                let r = ocs.handle_request(started, wall_ms(), PeerId(base + req.peer.0), &req.request);
                ocs.observe_latency(started.elapsed());
                r
            };
            match reply {
                Reply::Answer(a) => req.answer(a),
                Reply::Delay(d, a) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        req.answer(a);
                    });
                }
                Reply::Drop => req.discard(),
                Reply::Close => {
                    node.close_peer(req.peer);
                    req.discard();
                }
                Reply::AnswerThenDpr(a) => {
                    let peer = req.peer;
                    req.answer(a);
                    node.disconnect_peer(peer, DisconnectCause::Rebooting);
                }
            }
        }
    })
}

impl OcsServer {
    /// Starts the Diameter node, the request loop, the Tcc sweeper and the control API.
    pub async fn start(cfg: OcsServerConfig) -> Result<OcsServer, OcsServerError> {
        // The two servers of a pair answer for each other's identity: a client failing over keeps the
        // Destination-Host it had (RFC 6733 §5.5.4 resends the request as it was, with the T flag).
        let pair: Vec<String> =
            std::iter::once(cfg.origin_host.clone()).chain(cfg.mate.as_ref().map(|(_, h)| h.clone())).collect();
        let start = |host: &str, listen: SocketAddr| {
            let mut local = LocalIdentity::charging_client(host, &cfg.origin_realm, 0);
            local.product_name = "charging-ra ocs-sim".into();
            local.applications =
                vec![Application::Auth(AppId::CREDIT_CONTROL), Application::VendorAuth(VendorId::TGPP, AppId::GX)];
            let mut router = RouterConfig::new(local.clone(), vec![]);
            router.accept_peers = vec!["*".into()];
            // The simulator recognizes retransmissions by (Session-Id, CC-Request-Number), as RFC 4006 §7 servers
            // do, and records them in the ledger; the base stack's (Origin-Host, End-to-End) cache would hide them.
            router.duplicate_capacity = 0;
            router.local_aliases = pair.iter().filter(|h| *h != host).cloned().collect();
            let mut template = PeerConfig::new(local, None, false);
            template.watchdog_interval = cfg.watchdog_interval;
            router.accepted_peer = Some(template);
            let mut node_cfg = NodeConfig::new(router, vec![]);
            node_cfg.listen = vec![listen];
            DiameterNode::start(node_cfg)
        };
        let (node, requests) = start(&cfg.origin_host, cfg.listen).await?;
        let mate = match &cfg.mate {
            Some((listen, host)) => Some(start(host, *listen).await?),
            None => None,
        };
        let ocs = Arc::new(Mutex::new(Ocs::new(cfg.ocs.clone(), &cfg.origin_host, &cfg.origin_realm)));
        let nodes = std::iter::once(node.handle()).chain(mate.as_ref().map(|(m, _)| m.handle())).collect();
        let shared = Shared { ocs: ocs.clone(), nodes };
        let mut tasks = vec![serve(shared.clone(), 0, requests)];
        let mate = mate.map(|(m, rx)| {
            tasks.push(serve(shared.clone(), 1, rx));
            m
        });
        if !cfg.ocs.tcc.is_zero() {
            let s = shared.clone();
            let tick = (cfg.ocs.tcc / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
            tasks.push(tokio::spawn(async move {
                let mut t = tokio::time::interval(tick);
                loop {
                    t.tick().await;
                    let closed = s.ocs.lock().expect("ledger lock").expire(Instant::now(), wall_ms());
                    for sid in closed {
                        tracing::info!(session = %sid, "session closed by Tcc");
                    }
                }
            }));
        }
        let mut control = None;
        if let Some(addr) = cfg.control {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| OcsServerError::Control { addr, source })?;
            control = listener.local_addr().ok();
            let app = router_for(shared);
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Ok(OcsServer { node, mate, ocs, control, tasks })
    }

    /// The Diameter listening address.
    pub fn diameter_addr(&self) -> SocketAddr {
        self.node.local_addrs()[0]
    }

    /// The mate's Diameter listening address, when it has one.
    pub fn mate_addr(&self) -> Option<SocketAddr> {
        self.mate.as_ref().map(|m| m.local_addrs()[0])
    }

    /// The control API's address.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// The core, for in-process use and tests.
    pub fn ocs(&self) -> Arc<Mutex<Ocs>> {
        self.ocs.clone()
    }

    /// Sends a RAR (see [`Ocs::rar`]) and records its answer.
    pub async fn rar(&self, req: &RarRequest) -> Result<ServerRequestOutcome, (StatusCode, String)> {
        server_rar(&self.shared(), req).await
    }

    /// Sends an ASR and records its answer.
    pub async fn asr(&self, req: &AsrRequest) -> Result<ServerRequestOutcome, (StatusCode, String)> {
        server_asr(&self.shared(), req).await
    }

    fn shared(&self) -> Shared {
        let nodes = std::iter::once(&self.node).chain(&self.mate).map(DiameterNode::handle).collect();
        Shared { ocs: self.ocs.clone(), nodes }
    }

    /// Stops: DPR to every client, tasks ended. Returns the ledger check.
    pub async fn stop(self) -> super::Check {
        for t in &self.tasks {
            t.abort();
        }
        self.node.stop(DisconnectCause::Rebooting).await;
        if let Some(m) = self.mate {
            m.stop(DisconnectCause::Rebooting).await;
        }
        self.ocs.lock().expect("ledger lock").check()
    }

    /// The whole ledger as JSON (what `GET /v1/ledger` returns).
    pub fn ledger_json(&self) -> serde_json::Value {
        ledger_json(&self.ocs.lock().expect("ledger lock"))
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcsServerError {
    /// The Diameter side.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The control API's address.
    #[error("cannot listen for the control API on {addr}")]
    Control {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn ledger_json(ocs: &Ocs) -> serde_json::Value {
    json!({ "sessions": ocs.ledger().values().collect::<Vec<_>>(), "check": ocs.check() })
}

/// `POST /v1/rar`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RarRequest {
    /// The session.
    pub session_id: String,
    /// Ro: rating groups to re-authorize.
    #[serde(default)]
    pub rating_groups: Vec<u32>,
    /// Gx: rules to install (by name).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Gx: rules to remove.
    #[serde(default)]
    pub remove_rules: Vec<String>,
    /// Gx: event triggers to arm.
    #[serde(default)]
    pub event_triggers: Vec<i32>,
    /// The Origin-Host of the peer connection to send it on (default: where the session's last request came
    /// from).
    #[serde(default)]
    pub via: Option<String>,
}

/// `POST /v1/asr`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsrRequest {
    /// The session.
    pub session_id: String,
    /// As for RAR.
    #[serde(default)]
    pub via: Option<String>,
}

async fn via_peer(s: &Shared, via: &Option<String>, default: PeerId) -> Result<PeerId, (StatusCode, String)> {
    let Some(host) = via else { return Ok(default) };
    for (index, node) in s.nodes.iter().enumerate() {
        let st = node.status().await.ok_or((StatusCode::SERVICE_UNAVAILABLE, "node stopped".to_string()))?;
        let found = st
            .peers
            .iter()
            .position(|p| p.identity.as_deref().is_some_and(|i| i.eq_ignore_ascii_case(host)) && p.available);
        if let Some(p) = found {
            return Ok(PeerId(p + if index == 0 { 0 } else { MATE_PEERS }));
        }
    }
    Err((StatusCode::NOT_FOUND, format!("no open connection to {host}")))
}

async fn send_server_request(
    s: &Shared,
    sid: &str,
    kind: &str,
    built: Result<(crate::codec::Message, PeerId), super::OcsError>,
    via: &Option<String>,
) -> Result<ServerRequestOutcome, (StatusCode, String)> {
    let (msg, peer) = built.map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    let peer = via_peer(s, via, peer).await?;
    let (node, peer) = s.route(peer);
    let outcome = match node.request_via(msg, Some(Duration::from_secs(10)), Some(peer)).await {
        Ok(a) => ServerRequestOutcome {
            result_code: a.result_code().map_or(0, |r| r.0),
            answered_by: a.find(code::ORIGIN_HOST, 0).and_then(|x| x.as_utf8().ok()).map(str::to_string),
        },
        Err(crate::node::RequestError::Failed { result_code, .. }) => {
            ServerRequestOutcome { result_code: result_code.0, answered_by: None }
        }
        Err(e) => return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    s.ocs.lock().expect("ledger lock").record_server_answer(
        wall_ms(),
        sid,
        kind,
        Some(outcome.result_code),
        outcome.answered_by.clone(),
    );
    Ok(outcome)
}

async fn server_rar(s: &Shared, req: &RarRequest) -> Result<ServerRequestOutcome, (StatusCode, String)> {
    let built = s.ocs.lock().expect("ledger lock").rar(
        &req.session_id,
        &req.rating_groups,
        &req.rules,
        &req.remove_rules,
        &req.event_triggers,
    );
    let out = send_server_request(s, &req.session_id, "RAR", built, &req.via).await?;
    if out.result_code == 2001 {
        s.ocs.lock().expect("ledger lock").record_gx_rules(&req.session_id, &req.rules);
    }
    Ok(out)
}

async fn server_asr(s: &Shared, req: &AsrRequest) -> Result<ServerRequestOutcome, (StatusCode, String)> {
    let built = s.ocs.lock().expect("ledger lock").asr(&req.session_id);
    send_server_request(s, &req.session_id, "ASR", built, &req.via).await
}

fn error(code: StatusCode, why: String) -> Response {
    (code, Json(json!({ "error": why }))).into_response()
}

fn router_for(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/v1/ledger",
            get(|State(s): State<Shared>| async move { Json(ledger_json(&s.ocs.lock().expect("ledger lock"))) }),
        )
        .route(
            "/v1/ledger/check",
            get(|State(s): State<Shared>| async move { Json(s.ocs.lock().expect("ledger lock").check()) }),
        )
        .route(
            "/v1/ledger/{id}",
            get(|State(s): State<Shared>, Path(id): Path<String>| async move {
                match s.ocs.lock().expect("ledger lock").ledger().get(&id) {
                    Some(sess) => Json(json!(sess)).into_response(),
                    None => error(StatusCode::NOT_FOUND, format!("no session {id}")),
                }
            }),
        )
        .route(
            "/v1/reset",
            post(|State(s): State<Shared>| async move {
                s.ocs.lock().expect("ledger lock").reset();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/v1/rar",
            post(|State(s): State<Shared>, Json(r): Json<RarRequest>| async move {
                match server_rar(&s, &r).await {
                    Ok(o) => Json(json!(o)).into_response(),
                    Err((c, why)) => error(c, why),
                }
            }),
        )
        .route(
            "/v1/asr",
            post(|State(s): State<Shared>, Json(r): Json<AsrRequest>| async move {
                match server_asr(&s, &r).await {
                    Ok(o) => Json(json!(o)).into_response(),
                    Err((c, why)) => error(c, why),
                }
            }),
        )
        .route(
            "/v1/faults",
            post(|State(s): State<Shared>, Json(f): Json<FaultRule>| async move {
                s.ocs.lock().expect("ledger lock").add_fault(f);
                StatusCode::CREATED
            })
            .delete(|State(s): State<Shared>| async move {
                s.ocs.lock().expect("ledger lock").clear_faults();
                StatusCode::NO_CONTENT
            }),
        )
        .route("/metrics", get(|State(s): State<Shared>| async move { metrics(&s.ocs.lock().expect("ledger lock")) }))
        .with_state(shared)
}

/// Prometheus text exposition of the simulator's counters.
fn metrics(ocs: &Ocs) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# HELP ocs_requests_total Requests answered, by command, request type and Result-Code.\n# TYPE ocs_requests_total counter\n",
    );
    for ((cmd, rtype, rc), n) in &ocs.counters {
        let _ =
            writeln!(out, "ocs_requests_total{{command=\"{cmd}\",request_type=\"{rtype}\",result_code=\"{rc}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP ocs_request_processing_seconds Time from a request's arrival at the simulator to its answer.\n# TYPE ocs_request_processing_seconds histogram"
    );
    let mut cumulative = 0;
    for (le, n) in super::LATENCY_BUCKETS.iter().zip(&ocs.latency) {
        cumulative += n;
        let _ = writeln!(out, "ocs_request_processing_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += ocs.latency[super::LATENCY_BUCKETS.len()];
    let _ = writeln!(out, "ocs_request_processing_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "ocs_request_processing_seconds_sum {}", ocs.latency_sum.as_secs_f64());
    let _ = writeln!(out, "ocs_request_processing_seconds_count {cumulative}");
    let check = ocs.check();
    let _ = writeln!(
        out,
        "# HELP ocs_sessions_open Sessions between CCR-I and CCR-T.\n# TYPE ocs_sessions_open gauge\nocs_sessions_open {}",
        check.sessions.open
    );
    let _ =
        writeln!(out, "# HELP ocs_ledger_anomalies Anomalies recorded, by kind.\n# TYPE ocs_ledger_anomalies gauge");
    for (k, n) in &check.anomalies {
        let _ = writeln!(out, "ocs_ledger_anomalies{{kind=\"{k}\"}} {n}");
    }
    out
}
