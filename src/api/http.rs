//! The HTTP JSON front: the embedding API for services not written in Rust, and for test drivers.
//! `{id}` is the Session-Id, percent-encoded. Units are `{"time", "total_octets", "input_octets",
//! "output_octets", "units"}` (any subset). Errors are `{"error", "result_code"?, "ccfh"?}` with a 4xx/5xx status.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{App, ChargingError, Engine, Outcome, RatingGroupRequest, SessionOptions, Subscriber, UsedUnits};
use crate::cc::RequestedAction;
use crate::units::Units;

/// An AVP by dictionary name: `{"name": "Event-Trigger", "value": 2}`; a Grouped AVP's value is a list of such
/// objects; strings fill UTF8String, OctetString, identities, URIs, filter rules and Enumerated names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvpJson {
    /// The dictionary name.
    pub name: String,
    /// The value.
    pub value: Value,
}

/// Builds AVPs from their JSON form with the engine's dictionary.
pub fn avps_from_json(dict: &crate::dict::Dictionary, list: &[AvpJson]) -> Result<Vec<crate::codec::Avp>, String> {
    use crate::dict::AvpValue;
    list.iter()
        .map(|a| {
            let v = match &a.value {
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => AvpValue::Int(i128::from(i)),
                    (_, Some(u), _) => AvpValue::Int(i128::from(u)),
                    (_, _, Some(f)) => AvpValue::F64(f),
                    _ => return Err(format!("AVP {}: bad number", a.name)),
                },
                Value::String(s) => AvpValue::Str(s),
                Value::Array(items) => {
                    let members: Vec<AvpJson> = items
                        .iter()
                        .map(|i| serde_json::from_value(i.clone()).map_err(|e| format!("AVP {}: member {e}", a.name)))
                        .collect::<Result<_, _>>()?;
                    AvpValue::Grouped(avps_from_json(dict, &members)?)
                }
                other => {
                    return Err(format!("AVP {}: a value must be a number, a string or a list, not {other}", a.name));
                }
            };
            dict.avp(&a.name, v).map_err(|e| e.to_string())
        })
        .collect()
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBody {
    /// Extra AVPs for the request (Service-Information, Event-Trigger, QoS-Information…).
    #[serde(default)]
    pub avps: Vec<AvpJson>,
    /// `ro` or `gx`.
    pub app: App,
    /// The subscriber.
    pub subscriber: Option<Subscriber>,
    /// Service-Context-Id (Ro), e.g. `32251@3gpp.org`.
    #[serde(default)]
    pub service_context: Option<String>,
    /// Rating groups and the units asked for each.
    #[serde(default)]
    pub rating_groups: Vec<RatingGroupRequest>,
    /// The convergence name to file the session under (a new one when absent).
    #[serde(default)]
    pub convergence: Option<String>,
    /// Replicate from the start (the application's default when absent).
    #[serde(default)]
    pub replicate: Option<bool>,
    /// The service reports its own usage after a RAR, an expired Validity-Time or an ASR (see
    /// [`SessionOptions::reports_usage`]); false when absent.
    #[serde(default)]
    pub reports_usage: bool,
}

/// `POST /v1/sessions/{id}/updates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Extra AVPs for the request (Service-Information, Event-Trigger, QoS-Information…).
    #[serde(default)]
    pub avps: Vec<AvpJson>,
    /// Usage per rating group.
    #[serde(default)]
    pub used: Vec<UsedUnits>,
    /// Rating groups to ask units for (those reported when absent).
    #[serde(default)]
    pub requested: Vec<RatingGroupRequest>,
    /// A retry with the same key gets the first outcome and charges nothing more.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `DELETE /v1/sessions/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateBody {
    /// Extra AVPs for the request (Service-Information, Event-Trigger, QoS-Information…).
    #[serde(default)]
    pub avps: Vec<AvpJson>,
    /// Final usage.
    #[serde(default)]
    pub used: Vec<UsedUnits>,
}

/// `POST /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The subscriber.
    pub subscriber: Option<Subscriber>,
    /// Service-Context-Id.
    #[serde(default)]
    pub service_context: Option<String>,
    /// `direct_debiting`, `refund_account`, `check_balance`, `price_enquiry`.
    pub requested_action: RequestedAction,
    /// Units.
    #[serde(default)]
    pub requested: Units,
    /// Service-Identifier.
    #[serde(default)]
    pub service_id: Option<u32>,
}

fn error(status: StatusCode, why: String, result_code: Option<u32>, ccfh: Option<String>) -> Response {
    let mut body = json!({ "error": why });
    if let Some(rc) = result_code {
        body["result_code"] = json!(rc);
    }
    if let Some(c) = ccfh {
        body["ccfh"] = json!(c);
    }
    (status, Json(body)).into_response()
}

fn charging_error(e: ChargingError) -> Response {
    match e {
        ChargingError::UnknownSession(_) => error(StatusCode::NOT_FOUND, e.to_string(), None, None),
        ChargingError::WrongState { .. } => error(StatusCode::CONFLICT, e.to_string(), None, None),
        ChargingError::Invalid(_) => error(StatusCode::BAD_REQUEST, e.to_string(), None, None),
        ChargingError::Refused { result_code, reason, outcome } => {
            let ccfh = outcome
                .as_ref()
                .as_ref()
                .and_then(|o| o.ccfh.clone())
                .or_else(|| Some(format!("service ended: {reason}")));
            let status = if result_code.is_some() { StatusCode::FORBIDDEN } else { StatusCode::SERVICE_UNAVAILABLE };
            error(status, reason, result_code, ccfh)
        }
        ChargingError::Stopped | ChargingError::StoreUnavailable(_) | ChargingError::Overloaded(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None, None)
        }
        // 421: this node is not the one to ask; `owner` and `owner_uri` say which is, when known.
        ChargingError::Moved { ref owner, ref uri, ref http, .. } => {
            let body = json!({ "error": e.to_string(), "owner": owner, "owner_uri": uri, "owner_http": http });
            (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
        }
    }
}

fn bad_json(r: JsonRejection) -> Response {
    // Too large stays 413; everything else about the body is the caller's JSON: 400.
    let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { r.status() } else { StatusCode::BAD_REQUEST };
    error(status, format!("bad JSON body: {}", r.body_text()), None, None)
}

fn outcome_json(o: &Outcome, node: &str) -> Value {
    let mut v = json!({
        "session_id": o.session_id,
        "node": node,
        "result_code": o.result_code,
        "state": o.state,
        "granted": o.granted,
    });
    if let Some(c) = &o.convergence {
        v["convergence"] = json!(c);
    }
    if let Some(c) = &o.ccfh {
        v["ccfh"] = json!(c);
    }
    if let Some(p) = &o.policy {
        v["rules"] = json!(p.rules_installed);
        v["rules_removed"] = json!(p.rules_removed);
        v["event_triggers"] = json!(p.event_triggers);
    }
    if let Some(e) = &o.event {
        v["event"] = json!(e);
    }
    v
}

/// A Session-Id as a path segment (`{id}` in the routes): RFC 3986 unreserved characters stay, every other octet is
/// percent-encoded (Session-Ids carry `;`, and may carry `/`).
pub fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A blocking HTTP/1.1 exchange with a front (or the simulator's control API), one request per connection: the
/// status and the body as JSON (`Value::Null` when empty or not JSON). For scripts, the demo and test drivers.
pub fn call_blocking(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, raw) = exchange_blocking(addr, method, path, body.as_bytes(), &[])?;
    // The fronts answer with Content-Length; a chunked body (none is sent) would not parse and read as Null.
    Ok((status, serde_json::from_slice(raw.trim_ascii()).unwrap_or(Value::Null)))
}

/// One HTTP/1.1 request on its own connection (`Connection: close`): the status and the raw body.
fn exchange_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), String> {
    use std::io::{Read, Write};
    let err = |e: std::io::Error| format!("{method} {path}: {e}");
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).map_err(err)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).ok();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).map_err(err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(err)?;
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{method} {path}: no HTTP answer"))?;
    let status = std::str::from_utf8(&raw[..split])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// The routes, for embedding in a larger axum application.
pub fn router(engine: Engine) -> axum::Router {
    router_with(engine, None)
}

/// [`router`] with a B2BUA: its `/v1/sip` and its counters in `/metrics`.
pub fn router_with(engine: Engine, sip: Option<crate::b2bua::B2bua>) -> axum::Router {
    let more = sip.as_ref().map(|s| s.http_routes()).unwrap_or_default();
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move |State(e): State<Engine>| {
                let sip = sip.clone();
                async move {
                    let text = super::metrics::render(&e, sip.as_ref()).await;
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                }
            }),
        )
        .route(
            "/v1/status",
            get(|State(e): State<Engine>| async move {
                let status = e.node_status().await;
                let peers: Vec<Value> = status
                    .iter()
                    .flat_map(|s| &s.peers)
                    .map(|p| {
                        json!({
                            "identity": p.identity,
                            "state": format!("{:?}", p.state),
                            "watchdog": format!("{:?}", p.watchdog),
                            "available": p.available,
                            "pending": p.pending,
                        })
                    })
                    .collect();
                let open = status.iter().flat_map(|s| &s.peers).filter(|p| p.available).count();
                Json(json!({
                    "origin_host": e.origin_host(),
                    "peers_open": open,
                    "peers": peers,
                    "pending": status.map(|s| s.pending),
                    "requests_proxied": e.requests_proxied(),
                    "calls_forwarded": e.calls_forwarded(),
                    "replication": e.replication_stats().await,
                }))
            }),
        )
        .route(
            "/v1/sessions",
            post(|State(e): State<Engine>, body: Result<Json<OpenBody>, JsonRejection>| async move {
                let Json(b) = match body {
                    Ok(b) => b,
                    Err(r) => return bad_json(r),
                };
                if b.app == App::Ro && b.rating_groups.is_empty() {
                    return error(StatusCode::BAD_REQUEST, "a Ro session needs at least one rating group".into(), None, None);
                }
                let extra = match avps_from_json(e.dictionary(), &b.avps) {
                    Ok(a) => a,
                    Err(why) => return error(StatusCode::BAD_REQUEST, why, None, None),
                };
                let options = SessionOptions { convergence: b.convergence, replicate: b.replicate, reports_usage: b.reports_usage };
                match e.open_session_with(b.app, b.subscriber, b.service_context, b.rating_groups, extra, options).await {
                    Ok(o) => (StatusCode::CREATED, Json(outcome_json(&o, e.origin_host()))).into_response(),
                    Err(err) => charging_error(err),
                }
            }),
        )
        .route(
            "/v1/sessions/{id}",
            get(|State(e): State<Engine>, Path(id): Path<String>| async move {
                match e.view(&id).await {
                    Ok(v) => Json(json!(v)).into_response(),
                    Err(err) => charging_error(err),
                }
            })
            .delete(|State(e): State<Engine>, Path(id): Path<String>, body: axum::body::Bytes| async move {
                // The body is optional: no final usage to report is a valid CCR-T.
                let b: TerminateBody = if body.iter().all(u8::is_ascii_whitespace) {
                    TerminateBody::default()
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(b) => b,
                        Err(err) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {err}"), None, None),
                    }
                };
                let extra = match avps_from_json(e.dictionary(), &b.avps) {
                    Ok(a) => a,
                    Err(why) => return error(StatusCode::BAD_REQUEST, why, None, None),
                };
                match e.terminate_with_avps(&id, b.used, extra).await {
                    Ok(o) => Json(outcome_json(&o, e.origin_host())).into_response(),
                    Err(err) => charging_error(err),
                }
            }),
        )
        .route(
            "/v1/sessions/{id}/updates",
            post(|State(e): State<Engine>, Path(id): Path<String>, body: Result<Json<UpdateBody>, JsonRejection>| async move {
                let Json(b) = match body {
                    Ok(b) => b,
                    Err(r) => return bad_json(r),
                };
                let extra = match avps_from_json(e.dictionary(), &b.avps) {
                    Ok(a) => a,
                    Err(why) => return error(StatusCode::BAD_REQUEST, why, None, None),
                };
                match e.update_with_avps(&id, b.used, b.requested, b.idempotency_key, extra).await {
                    Ok(o) => Json(outcome_json(&o, e.origin_host())).into_response(),
                    Err(err) => charging_error(err),
                }
            }),
        )
        .route(
            "/v1/sessions/{id}/replicate",
            post(|State(e): State<Engine>, Path(id): Path<String>| async move {
                match e.start_replicating(&id).await {
                    Ok(()) => StatusCode::NO_CONTENT.into_response(),
                    Err(err) => charging_error(err),
                }
            }),
        )
        .route(
            "/v1/events",
            post(|State(e): State<Engine>, body: Result<Json<EventBody>, JsonRejection>| async move {
                let Json(b) = match body {
                    Ok(b) => b,
                    Err(r) => return bad_json(r),
                };
                match e.event(b.subscriber, b.service_context, b.requested_action, b.requested, b.service_id).await {
                    Ok(o) => Json(outcome_json(&o, e.origin_host())).into_response(),
                    Err(err) => charging_error(err),
                }
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; see docs/embedding.md".into(), None, None) })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            let why = format!("{method} is not allowed on {}; see docs/embedding.md", uri.path());
            error(StatusCode::METHOD_NOT_ALLOWED, why, None, None)
        })
        .layer(axum::middleware::from_fn_with_state(engine.clone(), forward_to_owner))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(engine)
        .merge(more)
}

/// Marks a request one node forwarded to another, so it is never forwarded twice.
const FORWARDED: &str = "x-charging-ra-forwarded";

/// A call for a session another live node owns (the engine says 421 with the owner's HTTP front) is forwarded to
/// that node once, and its answer returned as is: the service may call any node of the cluster.
async fn forward_to_owner(
    State(engine): State<Engine>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let forwarded = req.headers().contains_key(FORWARDED);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    // The cluster's fronts share one token: the one this call was let in with goes along.
    let auth = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body above 64 KiB".into(), None, None);
    };
    let resp = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body.clone()))).await;
    if forwarded || resp.status() != StatusCode::MISDIRECTED_REQUEST {
        return resp;
    }
    let (rparts, rbody) = resp.into_parts();
    let rbytes = axum::body::to_bytes(rbody, 1 << 20).await.unwrap_or_default();
    let owner =
        serde_json::from_slice::<Value>(&rbytes).ok().and_then(|v| v["owner_http"].as_str().map(str::to_string));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if owner.is_some() {
        engine.note_forwarded();
    }
    match owner {
        Some(owner) => match forward(owner.clone(), method.to_string(), path.to_string(), body, auth).await {
            Ok((status, answer)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                (status, [(axum::http::header::CONTENT_TYPE, "application/json")], answer).into_response()
            }
            Err(e) => {
                let why = format!("the session's owner {owner} did not answer: {e}");
                error(StatusCode::BAD_GATEWAY, why, None, None)
            }
        },
        None => Response::from_parts(rparts, axum::body::Body::from(rbytes)),
    }
}

/// One exchange with another node's front (`http://host:port`), on the blocking pool.
async fn forward(
    base: String,
    method: String,
    path: String,
    body: axum::body::Bytes,
    authorization: Option<String>,
) -> Result<(u16, Vec<u8>), String> {
    let addr: SocketAddr = base
        .strip_prefix("http://")
        .unwrap_or(&base)
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("owner front {base}: {e}"))?;
    tokio::task::spawn_blocking(move || {
        let mut headers = vec![(FORWARDED, "1")];
        if let Some(a) = &authorization {
            headers.push(("Authorization", a));
        }
        exchange_blocking(addr, &method, &path, &body, &headers)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Requires `Authorization: Bearer <token>` on every route but `/healthz` (which says only "ok", for load
/// balancers); a call without it, or with another token, gets 401 with a reason. `None` leaves the routes open.
pub fn with_bearer_token(app: axum::Router, token: Option<String>) -> axum::Router {
    let Some(token) = token else { return app };
    let token: Arc<[u8]> = Arc::from(token.into_bytes());
    app.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let token = token.clone();
        async move {
            let given = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let why = match given {
                _ if req.uri().path() == "/healthz" => return next.run(req).await,
                Some(t) if same_secret(t.as_bytes(), &token) => return next.run(req).await,
                Some(_) => "wrong bearer token",
                None => "this front requires Authorization: Bearer <token> ([node] http_token)",
            };
            let mut r = error(StatusCode::UNAUTHORIZED, why.into(), None, None);
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"charging-ra\""),
            );
            r
        }
    }))
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves a router (from [`router_with`], [`with_bearer_token`]…) on a bound listener until the task is dropped.
pub fn serve_router(
    app: axum::Router,
    listener: tokio::net::TcpListener,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((bound, task))
}

/// Serves the front on `addr` until the task is dropped; returns the bound address.
pub async fn serve(engine: Engine, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(engine, listener)
}

/// Serves the front on a listener already bound (a node binds first, so that its lease can carry the address).
pub fn serve_on(
    engine: Engine,
    listener: tokio::net::TcpListener,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(engine, listener, None)
}

/// Like [`serve_on`], with the node's B2BUA ([`router_with`]).
pub fn serve_with(
    engine: Engine,
    listener: tokio::net::TcpListener,
    sip: Option<crate::b2bua::B2bua>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_router(router_with(engine, sip), listener)
}
