//! The load driver behind `charging-ra load`: runs sessions (CCR-I, K CCR-U, CCR-T) through the embedded engine
//! against any OCS or PCRF, and reports latency, results and throughput. One transaction is one CCR/CCA pair.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{
    App, AppSettings, ChargingError, Engine, EngineConfig, Outcome, RatingGroupRequest, Subscriber, UsedUnits,
};
use crate::codec::{AppId, VendorId};
use crate::node::{NodeConfig, PeerEndpoint};
use crate::peer::{Application, LocalIdentity, PeerConfig};
use crate::router::{PeerId, Route, RouterConfig};
use crate::units::Units;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The OCS or PCRF.
    pub ocs: SocketAddr,
    /// Its realm (Destination-Realm).
    pub realm: String,
    /// Sessions in all.
    pub sessions: u64,
    /// Sessions at once.
    pub concurrency: usize,
    /// CCR-U per session.
    pub updates: u32,
    /// How long each session stays open before its CCR-T.
    pub hold: Duration,
    /// Stop after this long (open sessions are terminated).
    pub duration: Option<Duration>,
    /// Ro or Gx.
    pub app: App,
    /// Replicate every session to this store (write-ahead of each CCR, write-behind of the rest).
    pub replication: Option<crate::store::AnyStore>,
    /// Start transactions at this many per second (open loop, for latency at a given load); `None`: as fast as
    /// the concurrency allows. A transaction that comes due while its worker is still busy counts its latency from
    /// when it was due, so a run that falls behind its rate shows it.
    pub rate: Option<f64>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Sessions completed.
    pub sessions: u64,
    /// CCR/CCA pairs.
    pub transactions: u64,
    /// Answers by Result-Code; 0 counts requests that got no answer.
    pub results: BTreeMap<u32, u64>,
    /// Latency percentiles (p50, p90, p99, max) in microseconds.
    pub latency_us: [u64; 4],
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Replication: records written and group commits made, when on.
    pub store: Option<(u64, u64)>,
}

impl LoadReport {
    /// Transactions per second.
    pub fn throughput(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary; the last line is `throughput: N tx/s`.
    pub fn summary(&self) -> String {
        let results: Vec<String> = self.results.iter().map(|(rc, n)| format!("{rc}: {n}")).collect();
        let [p50, p90, p99, max] = self.latency_us;
        let store = match self.store {
            Some((writes, batches)) => format!(
                "store: {writes} records written in {batches} group commits, {:.2} per session, {:.2} per transaction\n",
                writes as f64 / self.sessions.max(1) as f64,
                writes as f64 / self.transactions.max(1) as f64
            ),
            None => String::new(),
        };
        format!(
            "sessions: {}\ntransactions: {} in {:.2} s\nresults: {}\nlatency: p50 {p50} us, p90 {p90} us, p99 {p99} us, max {max} us\n{store}throughput: {:.0} tx/s\n",
            self.sessions,
            self.transactions,
            self.elapsed.as_secs_f64(),
            if results.is_empty() { "none".into() } else { results.join(", ") },
            self.throughput()
        )
    }
}

/// The engine configuration for a load run: one peer, every realm routed to it.
pub fn engine_config(cfg: &LoadConfig) -> EngineConfig {
    let mut local = LocalIdentity::charging_client("load.localdomain", "localdomain", 0);
    local.applications =
        vec![Application::Auth(AppId::CREDIT_CONTROL), Application::VendorAuth(VendorId::TGPP, AppId::GX)];
    let routes = vec![Route { realm: "*".into(), application: None, peer: PeerId(0), priority: 1, weight: 1 }];
    let mut router = RouterConfig::new(local.clone(), routes);
    router.answer_timeout = Duration::from_secs(30);
    let mut peer = PeerConfig::new(local, None, true);
    peer.reconnect_initial = Duration::from_millis(200);
    let node = NodeConfig::new(
        router,
        vec![PeerEndpoint { config: peer, address: Some(cfg.ocs), tls: false, server_name: None }],
    );
    let replication = cfg
        .replication
        .clone()
        .map(|store| crate::api::ReplicationConfig::new(store, "load", "load", "aaa://load.localdomain:3868"));
    let mut engine = EngineConfig::new(node, AppSettings::new(&cfg.realm), AppSettings::new(&cfg.realm));
    engine.replication = replication;
    engine
}

fn result_of(r: &Result<crate::api::Outcome, ChargingError>) -> u32 {
    match r {
        Ok(o) => o.result_code.unwrap_or(0),
        Err(ChargingError::Refused { result_code, .. }) => result_code.unwrap_or(0),
        Err(_) => 0,
    }
}

/// Runs the load and returns what it measured.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, crate::node::NodeError> {
    let engine = Engine::start(engine_config(&cfg)).await?;
    let ready = Instant::now() + Duration::from_secs(10);
    while !engine.node_status().await.is_some_and(|s| s.peers.first().is_some_and(|p| p.available)) {
        if Instant::now() > ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let tickets = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Mutex::new((Vec::<u32>::with_capacity(1 << 16), BTreeMap::<u32, u64>::new())));
    let progress = std::io::stderr().is_terminal();
    let mut workers = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (engine, next, done, shared, cfg, tickets) =
            (engine.clone(), next.clone(), done.clone(), shared.clone(), cfg.clone(), tickets.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut results: BTreeMap<u32, u64> = BTreeMap::new();
            let timed =
                |lat: &mut Vec<u32>, t: Instant| lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            // When the next transaction is due: now, or its slot in the run's schedule at `rate`.
            let due = || {
                let tickets = tickets.clone();
                async move {
                    let Some(rate) = cfg.rate else { return Instant::now() };
                    let k = tickets.fetch_add(1, Ordering::Relaxed);
                    let at = started + Duration::from_secs_f64(k as f64 / rate);
                    if at <= Instant::now() {
                        // Already due: the run is behind its schedule, and the wait since counts.
                        return at;
                    }
                    // Early: sleep (tokio's timer wakes up to a millisecond late, which is not the engine's).
                    tokio::time::sleep_until(at.into()).await;
                    Instant::now()
                }
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= cfg.sessions || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let subscriber = Some(Subscriber { kind: "msisdn".into(), data: format!("4670{n:07}") });
                let rgs = if cfg.app == App::Ro {
                    vec![RatingGroupRequest { rating_group: 10, service_id: None, requested: Units::default() }]
                } else {
                    vec![]
                };
                let t = due().await;
                let r = engine.open_session(cfg.app, subscriber, None, rgs).await;
                timed(&mut lat, t);
                *results.entry(result_of(&r)).or_default() += 1;
                // Only the Session-Id is kept: the rest of the outcome would count as the node's memory per session.
                let Ok(Outcome { session_id: sid, .. }) = r else { continue };
                let used = |secs| {
                    if cfg.app == App::Ro {
                        vec![UsedUnits {
                            rating_group: 10,
                            used: Units { time: Some(secs), ..Units::default() },
                            reporting_reason: None,
                        }]
                    } else {
                        vec![]
                    }
                };
                let mut alive = true;
                for _ in 0..cfg.updates {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let t = due().await;
                    let r = engine.update(&sid, used(1), vec![], None).await;
                    timed(&mut lat, t);
                    *results.entry(result_of(&r)).or_default() += 1;
                    if r.is_err() {
                        alive = false;
                        break;
                    }
                }
                if !cfg.hold.is_zero() {
                    tokio::time::sleep(cfg.hold).await;
                }
                if alive && engine.session(&sid).await.is_some() {
                    let t = due().await;
                    let r = engine.terminate(&sid, used(1)).await;
                    timed(&mut lat, t);
                    *results.entry(result_of(&r)).or_default() += 1;
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress && d % 1000 == 0 {
                    let _ = write!(std::io::stderr(), "\rsessions done: {d}");
                }
            }
            let mut s = shared.lock().expect("load stats");
            s.0.extend(lat);
            for (k, v) in results {
                *s.1.entry(k).or_default() += v;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    if progress {
        let _ = writeln!(std::io::stderr());
    }
    let store = engine.replication_stats().await.map(|s| (s.writes, s.batches));
    engine.stop().await;
    let (mut lat, results) = std::mem::take(&mut *shared.lock().expect("load stats"));
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0) as u64
    };
    Ok(LoadReport {
        sessions: done.load(Ordering::Relaxed),
        transactions: lat.len() as u64,
        results,
        latency_us: [pct(0.5), pct(0.9), pct(0.99), lat.last().copied().unwrap_or(0) as u64],
        elapsed,
        store,
    })
}
