//! The load driver behind `charging-ra load`: runs sessions (CCR-I, K CCR-U, CCR-T) through the embedded engine
//! against any OCS or PCRF, and reports latency, results and throughput. One transaction is one CCR/CCA pair.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::api::{
    App, AppSettings, ChargingError, Engine, EngineConfig, Outcome, RatingGroupRequest, Subscriber, UsedUnits,
};
use crate::codec::{AppId, VendorId};
use crate::node::{NodeConfig, PeerEndpoint};
use crate::peer::{Application, LocalIdentity, PeerConfig};
use crate::router::{PeerId, Route, RouterConfig};
use crate::units::Units;

/// Where a run's sessions go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Through an engine embedded in the load process, straight to the OCS or PCRF.
    Embedded {
        /// The OCS or PCRF.
        ocs: SocketAddr,
        /// Its realm (Destination-Realm).
        realm: String,
        /// Replicate every session to this store (write-ahead of each CCR, write-behind of the rest).
        replication: Option<crate::store::AnyStore>,
        /// How the session state records are written.
        state_encoding: crate::replication::StateEncoding,
        /// Group commits in flight at once (`[replication] batches_in_flight`).
        batches_in_flight: usize,
    },
    /// Through the HTTP fronts of running nodes (`charging-ra node`), which talk to their own peers and replicate
    /// as configured. Session `n` opens on node `n mod N` and its later calls go to the same node; when a node
    /// cannot be reached, the call and the session's later calls go to the next one (its updates carry
    /// idempotency keys, so a retried update charges once). Keep-alive connections, one per worker and node.
    Fronts {
        /// The nodes' HTTP fronts.
        nodes: Vec<SocketAddr>,
        /// The bearer token the fronts require (`[node] http_token`), if any.
        token: Option<String>,
    },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where the sessions go.
    pub target: Target,
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
    /// Start transactions at this many per second (open loop, for latency at a given load); `None`: as fast as
    /// the concurrency allows. A transaction that comes due while its worker is still busy counts its latency from
    /// when it was due, so a run that falls behind its rate shows it.
    pub rate: Option<f64>,
    /// How long an embedded run waits for the OCS or PCRF to open (CER/CEA) before it refuses to measure.
    pub open_timeout: Duration,
    /// Write every transaction's latency here, one line each in the order they were due: when it was due
    /// (microseconds from the run's start) and its latency (microseconds). A stall shows as a run of lines.
    pub latency_log: Option<std::path::PathBuf>,
}

impl LoadConfig {
    /// A run of `sessions` sessions of `updates` CCR-U each, 100 at a time, against the OCS at `ocs` (realm
    /// `localdomain`, Ro, no replication, no hold, unpaced).
    pub fn embedded(ocs: SocketAddr, sessions: u64, updates: u32) -> LoadConfig {
        LoadConfig {
            target: Target::Embedded {
                ocs,
                realm: "localdomain".into(),
                replication: None,
                state_encoding: Default::default(),
                batches_in_flight: 1,
            },
            sessions,
            concurrency: 100,
            updates,
            hold: Duration::ZERO,
            duration: None,
            app: App::Ro,
            rate: None,
            open_timeout: Duration::from_secs(10),
            latency_log: None,
        }
    }
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
    /// Replication: records written and group commits made, when on (through fronts: the nodes' sums).
    pub store: Option<(u64, u64)>,
    /// Replication, embedded: the mean time of a group commit, from its hand-off to the store to its answer.
    pub commit_mean: Option<Duration>,
    /// CPU time the load process used during the run (its engine included; Linux only), `None` through fronts:
    /// what a transaction costs, which a busy or shared machine changes much less than it changes throughput.
    pub cpu: Option<Duration>,
    /// Through fronts: calls answered with an HTTP error that carried no Result-Code, by status (404 for a
    /// session the cluster lost, 502, 503…). They also count under Result-Code 0.
    pub http_errors: BTreeMap<u16, u64>,
    /// Transactions that got no Result-Code, by why (the engine's error, or no node answering); they also count
    /// under Result-Code 0.
    pub failures: BTreeMap<String, u64>,
    /// The latency log could not be written after the run (it was created before it): why. The rest of the
    /// report stands.
    pub latency_log_error: Option<String>,
}

impl LoadReport {
    /// Transactions per second.
    pub fn throughput(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary; the last line is `throughput: N tx/s`.
    pub fn summary(&self) -> String {
        let [p50, p90, p99, max] = self.latency_us;
        let store = match self.store {
            Some((writes, batches)) => format!(
                "store: {writes} records written in {batches} group commits, {:.2} per session, {:.2} per transaction{}\n",
                writes as f64 / self.sessions.max(1) as f64,
                writes as f64 / self.transactions.max(1) as f64,
                self.commit_mean.map(|d| format!(", {} us per group commit", d.as_micros())).unwrap_or_default()
            ),
            None => String::new(),
        };
        // `label: k: n, k: n` on a line of its own, or nothing when there is nothing to count.
        let line = |label: &str, counts: String| {
            if counts.is_empty() { String::new() } else { format!("{label}: {counts}\n") }
        };
        let http = line("http errors", counts(&self.http_errors));
        let failures = line("without a Result-Code", counts(&self.failures));
        let log =
            self.latency_log_error.as_ref().map(|e| format!("latency log not written: {e}\n")).unwrap_or_default();
        let cpu = match self.cpu {
            Some(cpu) => format!(
                "cpu: {:.2} s, {:.1} us per transaction\n",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / self.transactions.max(1) as f64
            ),
            None => String::new(),
        };
        format!(
            "sessions: {}\ntransactions: {} in {:.2} s\nresults: {}\n{failures}{http}{log}{cpu}latency: p50 {p50} us, p90 {p90} us, p99 {p99} us, max {max} us\n{store}throughput: {:.0} tx/s\n",
            self.sessions,
            self.transactions,
            self.elapsed.as_secs_f64(),
            if self.results.is_empty() { "none".into() } else { counts(&self.results) },
            self.throughput()
        )
    }
}

/// `k: n, k: n` in the map's order.
fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    map.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
}

/// The engine configuration for a load run: one peer, every realm routed to it.
pub fn engine_config(
    ocs: SocketAddr,
    realm: &str,
    replication: Option<crate::store::AnyStore>,
    state_encoding: crate::replication::StateEncoding,
    batches_in_flight: usize,
) -> EngineConfig {
    let mut local = LocalIdentity::charging_client("load.localdomain", "localdomain", 0);
    local.applications =
        vec![Application::Auth(AppId::CREDIT_CONTROL), Application::VendorAuth(VendorId::TGPP, AppId::GX)];
    let routes = vec![Route { realm: "*".into(), application: None, peer: PeerId(0), priority: 1, weight: 1 }];
    let mut router = RouterConfig::new(local.clone(), routes);
    router.answer_timeout = Duration::from_secs(30);
    let mut peer = PeerConfig::new(local, None, true);
    peer.reconnect_initial = Duration::from_millis(200);
    let node =
        NodeConfig::new(router, vec![PeerEndpoint { config: peer, address: Some(ocs), tls: false, server_name: None }]);
    let replication = replication.map(|store| {
        let mut r = crate::api::ReplicationConfig::new(store, "load", "load", "aaa://load.localdomain:3868");
        (r.state_encoding, r.batches_in_flight) = (state_encoding, batches_in_flight);
        r
    });
    let mut engine = EngineConfig::new(node, AppSettings::new(realm), AppSettings::new(realm));
    engine.replication = replication;
    engine
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The embedded engine could not start.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// The OCS or PCRF did not complete CER/CEA in time: every transaction would fail, and measure nothing.
    #[error("the OCS/PCRF at {0} did not open a connection within {1:?} (CER/CEA); is it running there?")]
    PeerNotOpen(SocketAddr, Duration),
    /// The latency log could not be created.
    #[error("latency log {0}: {1}")]
    LatencyLog(std::path::PathBuf, std::io::Error),
    /// A rate that is not a number of transactions per second from [`MIN_RATE`] to [`MAX_RATE`].
    #[error("rate {0}: give transactions per second, from 0.001 to 10,000,000")]
    Rate(f64),
}

/// The lowest `--rate`, one transaction in about 17 minutes; it bounds the pacer's arithmetic (a due time of
/// `k / rate` seconds must stay a `Duration`).
pub const MIN_RATE: f64 = 0.001;

/// The highest `--rate`, far above what one machine runs; it bounds the pacer's arithmetic.
pub const MAX_RATE: f64 = 10_000_000.0;

/// Runs the load and returns what it measured.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, LoadError> {
    if let Some(r) = cfg.rate
        && !(MIN_RATE..=MAX_RATE).contains(&r)
    {
        return Err(LoadError::Rate(r));
    }
    // Created (emptied) first, so that a path that cannot be written is refused before the run, not after it.
    let log_file = match &cfg.latency_log {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| LoadError::LatencyLog(p.clone(), e))?),
        None => None,
    };
    let engine = match &cfg.target {
        Target::Embedded { ocs, realm, replication, state_encoding, batches_in_flight } => {
            let config = engine_config(*ocs, realm, replication.clone(), *state_encoding, *batches_in_flight);
            let engine = Engine::start(config).await?;
            let ready = Instant::now() + cfg.open_timeout;
            while !engine.node_status().await.is_some_and(|s| s.peers.first().is_some_and(|p| p.available)) {
                if Instant::now() > ready {
                    engine.stop().await;
                    return Err(LoadError::PeerNotOpen(*ocs, cfg.open_timeout));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(engine)
        }
        Target::Fronts { .. } => None,
    };
    let fronts_before = fronts_store(&cfg.target).await;
    let cpu_before = engine.as_ref().and_then(|_| process_cpu());
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let tickets = Arc::new(AtomicU64::new(0));
    let pacer = cfg.rate.map(|rate| Pacer::start(started, rate));
    let shared = Arc::new(Mutex::new(Tally::default()));
    let progress = std::io::stderr().is_terminal();
    let mut workers = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let mut client = match (&engine, &cfg.target) {
            (Some(e), _) => Client::Engine(e.clone()),
            (None, Target::Fronts { nodes, token }) => Client::Fronts(Fronts::new(nodes, token.as_deref())),
            (None, Target::Embedded { .. }) => unreachable!("an embedded run has its engine"),
        };
        let (next, done, shared, cfg, tickets) =
            (next.clone(), done.clone(), shared.clone(), cfg.clone(), tickets.clone());
        let pacer = pacer.as_ref().map(|p| p.permits.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::for_sessions_of(cfg.updates, cfg.latency_log.as_ref().map(|_| started));
            // When the next transaction is due: now, or its slot in the run's schedule at `rate`, once the pacer
            // has released it. `None`: the pacer has gone (a panic, or the run dropped), and the worker stops.
            let due = || {
                let (tickets, pacer) = (tickets.clone(), pacer.clone());
                async move {
                    let (Some(rate), Some(pacer)) = (cfg.rate, pacer) else { return Some(Instant::now()) };
                    pacer.acquire().await.ok()?.forget();
                    // Released in order, so the k-th ticket taken is due no later than the k-th release.
                    let k = tickets.fetch_add(1, Ordering::Relaxed);
                    Some(started + Duration::from_secs_f64(k as f64 / rate))
                }
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= cfg.sessions || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let Some(t) = due().await else { break };
                let (step, sid) = client.open(n, cfg.app).await;
                tally.add(t, step);
                // Only the Session-Id is kept: the rest of the outcome would count as the node's memory per session.
                let Some(sid) = sid else { continue };
                let mut alive = true;
                for k in 0..cfg.updates {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let Some(t) = due().await else {
                        alive = false;
                        break;
                    };
                    let step = client.update(&sid, n, k, cfg.app).await;
                    let ok = step.ok;
                    tally.add(t, step);
                    if !ok {
                        alive = false;
                        break;
                    }
                }
                if !cfg.hold.is_zero() {
                    tokio::time::sleep(cfg.hold).await;
                }
                if alive
                    && client.still_open(&sid).await
                    && let Some(t) = due().await
                {
                    let step = client.terminate(&sid, n, cfg.app).await;
                    tally.add(t, step);
                }
                client.finish(n);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress && d % 1000 == 0 {
                    let _ = write!(std::io::stderr(), "\rsessions done: {d}");
                }
            }
            shared.lock().expect("load stats").merge(tally);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    drop(pacer);
    let cpu = cpu_before.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a));
    if progress {
        let _ = writeln!(std::io::stderr());
    }
    let stats = match &engine {
        // The last sessions' deletions are written after the answers that ended them: counted once written.
        Some(e) => {
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let s = e.replication_stats().await;
                let settled = s.as_ref().is_none_or(|s| s.backlog == 0 && s.batches_done == s.batches);
                if settled || Instant::now() > until {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        None => None,
    };
    let commit_mean = stats.as_ref().map(|s| Duration::from_micros(s.batch_time_us / s.batches_done.max(1)));
    let store = match &stats {
        Some(s) => Some((s.writes, s.batches)),
        None => store_delta(&fronts_before, &fronts_store(&cfg.target).await),
    };
    if let Some(e) = engine {
        e.stop().await;
    }
    let Tally { mut lat, results, http_errors, failures, mut log, .. } =
        std::mem::take(&mut *shared.lock().expect("load stats"));
    let mut latency_log_error = None;
    if let Some(file) = log_file {
        log.sort_unstable();
        let mut out = std::io::BufWriter::new(file);
        let written =
            log.iter().try_for_each(|(due, latency)| writeln!(out, "{due} {latency}")).and_then(|()| out.flush());
        latency_log_error = written.err().map(|e| e.to_string());
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0) as u64
    };
    Ok(LoadReport {
        sessions: done.load(Ordering::Relaxed),
        transactions: lat.len() as u64,
        results: results.into_iter().collect(),
        latency_us: [pct(0.5), pct(0.9), pct(0.99), lat.last().copied().unwrap_or(0) as u64],
        elapsed,
        store,
        commit_mean,
        cpu,
        http_errors: http_errors.into_iter().collect(),
        failures: failures.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        latency_log_error,
    })
}

/// Releases a paced run's transactions as they come due, from a thread of its own. It sleeps until the next one
/// is due, but at least [`PACER_MIN_SLEEP`]: below about 7,000 per second it wakes once per transaction, above it
/// releases the few that came due meanwhile. A transaction's latency counts from when it was due, so the pacer's own
/// lateness counts too: up to the minimum sleep, the kernel's timer slack (about 50 µs) and any wait for a CPU.
/// Sleeping on tokio's timer instead, which fires once a millisecond, a millisecond's transactions would all start
/// together (58 at 58,000/s), and the last of each bunch would queue behind the rest: a burst that traffic from
/// many independent sessions does not have (BENCHMARKS.md, "Paced latency").
struct Pacer {
    /// One permit per transaction due; closed when the pacer's thread ends, however it ends.
    permits: Arc<tokio::sync::Semaphore>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The pacer's shortest sleep: what bounds its wake-ups (and their cost to the load process) at high rates.
const PACER_MIN_SLEEP: Duration = Duration::from_micros(100);

impl Pacer {
    fn start(started: Instant, rate: f64) -> Pacer {
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (permits.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("load-pacer".into())
            .spawn(move || {
                // Dropped however the thread ends (stopped, or a panic): waiting workers get an error, not a hang.
                struct CloseOnExit(Arc<tokio::sync::Semaphore>);
                impl Drop for CloseOnExit {
                    fn drop(&mut self) {
                        self.0.close();
                    }
                }
                let permits = CloseOnExit(p);
                let mut released = 0u64;
                while !s.load(Ordering::Relaxed) {
                    // Transactions 0..due are due: the k-th at `started + k / rate`.
                    let due = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
                    if due > released {
                        permits.0.add_permits((due - released) as usize);
                        released = due;
                    }
                    let next = started + Duration::from_secs_f64(released as f64 / rate);
                    // Parked rather than asleep, so that a stop wakes it at once however slow the rate.
                    std::thread::park_timeout(next.saturating_duration_since(Instant::now()).max(PACER_MIN_SLEEP));
                }
            })
            .expect("spawning the load's pacer thread");
        Pacer { permits, stop, thread: Some(thread) }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The CPU time this process has used (user and system, all threads), from `/proc/self/stat`, in the kernel's
/// clock ticks of 10 ms; `None` where there is no such file. (The store bench uses it too.)
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces), from the third: utime and stime are the 14th
    // and 15th (proc(5)).
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// What one worker measured. Its room is made when the worker starts, so that a memory measurement made while
/// sessions are open (bench/memory.sh) does not count the load's own bookkeeping as the engine's.
#[derive(Default)]
struct Tally {
    lat: Vec<u32>,
    /// With a latency log: the run's start, and per transaction when it was due since then and its latency (µs).
    log_from: Option<Instant>,
    log: Vec<(u64, u32)>,
    results: Vec<(u32, u64)>,
    http_errors: Vec<(u16, u64)>,
    failures: Vec<(&'static str, u64)>,
}

impl Tally {
    /// Room for one session's transactions and two Result-Codes; `log_from`: keep a latency log, from then.
    fn for_sessions_of(updates: u32, log_from: Option<Instant>) -> Tally {
        Tally {
            lat: Vec::with_capacity(updates as usize + 2),
            log_from,
            log: Vec::new(),
            results: Vec::with_capacity(2),
            http_errors: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// One transaction, due at `t`, ended now.
    fn add(&mut self, t: Instant, step: Step) {
        let latency = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        self.lat.push(latency);
        if let Some(from) = self.log_from {
            self.log.push((t.saturating_duration_since(from).as_micros() as u64, latency));
        }
        count(&mut self.results, step.result_code, 1);
        if let Some(status) = step.http_error {
            count(&mut self.http_errors, status, 1);
        }
        if let Some(why) = step.failure {
            count(&mut self.failures, why, 1);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.lat.extend(other.lat);
        self.log.extend(other.log);
        for (k, v) in other.results {
            count(&mut self.results, k, v);
        }
        for (k, v) in other.http_errors {
            count(&mut self.http_errors, k, v);
        }
        for (k, v) in other.failures {
            count(&mut self.failures, k, v);
        }
    }
}

/// Adds `n` to `key`'s count in a short list.
fn count<K: PartialEq>(counts: &mut Vec<(K, u64)>, key: K, n: u64) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, c)) => *c += n,
        None => counts.push((key, n)),
    }
}

/// One transaction's result: its Result-Code (0: none), whether the session goes on, and the HTTP status of a
/// front's error answer without a Result-Code.
struct Step {
    result_code: u32,
    ok: bool,
    http_error: Option<u16>,
    /// Embedded: what the engine said when it gave no Result-Code.
    failure: Option<&'static str>,
}

impl Step {
    fn of(r: &Result<Outcome, ChargingError>) -> Step {
        let result_code = match r {
            Ok(o) => o.result_code.unwrap_or(0),
            Err(ChargingError::Refused { result_code, .. }) => result_code.unwrap_or(0),
            Err(_) => 0,
        };
        let failure = match r {
            Ok(_) | Err(ChargingError::Refused { result_code: Some(_), .. }) => None,
            Err(ChargingError::Refused { .. }) => Some("refused without an answer"),
            Err(ChargingError::UnknownSession(_)) => Some("unknown session"),
            Err(ChargingError::WrongState { .. }) => Some("wrong state"),
            Err(ChargingError::Invalid(_)) => Some("invalid"),
            Err(ChargingError::Moved { .. }) => Some("owned by another node"),
            Err(ChargingError::Overloaded(_)) => Some("overloaded"),
            Err(ChargingError::StoreUnavailable(_)) => Some("store unavailable"),
            Err(ChargingError::Stopped) => Some("engine stopped"),
        };
        Step { result_code, ok: r.is_ok(), http_error: None, failure }
    }
}

fn rating_groups(app: App) -> Vec<RatingGroupRequest> {
    match app {
        App::Ro => vec![RatingGroupRequest { rating_group: 10, service_id: None, requested: Units::default() }],
        App::Gx => vec![],
    }
}

/// One second used in rating group 10 (Ro); nothing for Gx.
fn used(app: App) -> Vec<UsedUnits> {
    match app {
        App::Ro => vec![UsedUnits {
            rating_group: 10,
            used: Units { time: Some(1), ..Units::default() },
            reporting_reason: None,
        }],
        App::Gx => vec![],
    }
}

fn subscriber(n: u64) -> Subscriber {
    Subscriber { kind: "msisdn".into(), data: format!("4670{n:07}") }
}

/// How a worker makes its calls.
enum Client {
    Engine(Engine),
    Fronts(Fronts),
}

impl Client {
    async fn open(&mut self, n: u64, app: App) -> (Step, Option<String>) {
        match self {
            Client::Engine(e) => {
                let r = e.open_session(app, Some(subscriber(n)), None, rating_groups(app)).await;
                let step = Step::of(&r);
                (step, r.ok().map(|o| o.session_id))
            }
            Client::Fronts(f) => {
                let body =
                    serde_json::json!({ "app": app, "subscriber": subscriber(n), "rating_groups": rating_groups(app) });
                // Nothing is retried on another node once sent: that could open the session twice.
                let (step, answer) = f.call(n, "POST", "/v1/sessions", &body, false).await;
                let sid = answer.and_then(|a| a["session_id"].as_str().map(str::to_string));
                (Step { ok: sid.is_some(), ..step }, sid)
            }
        }
    }

    async fn update(&mut self, sid: &str, n: u64, k: u32, app: App) -> Step {
        match self {
            Client::Engine(e) => Step::of(&e.update(sid, used(app), vec![], None).await),
            Client::Fronts(f) => {
                let body = serde_json::json!({ "used": used(app), "idempotency_key": format!("load-{n}-{k}") });
                let path = format!("/v1/sessions/{}/updates", crate::api::http::path_segment(sid));
                f.call(n, "POST", &path, &body, true).await.0
            }
        }
    }

    /// Whether the session is still open here (the server may have ended it during the hold). A front is not
    /// asked: its DELETE says so.
    async fn still_open(&self, sid: &str) -> bool {
        match self {
            Client::Engine(e) => e.session(sid).await.is_some(),
            Client::Fronts(_) => true,
        }
    }

    /// Session `n` is over.
    fn finish(&mut self, n: u64) {
        if let Client::Fronts(f) = self {
            f.moved.remove(&n);
        }
    }

    async fn terminate(&mut self, sid: &str, n: u64, app: App) -> Step {
        match self {
            Client::Engine(e) => Step::of(&e.terminate(sid, used(app)).await),
            Client::Fronts(f) => {
                let body = serde_json::json!({ "used": used(app) });
                let path = format!("/v1/sessions/{}", crate::api::http::path_segment(sid));
                f.call(n, "DELETE", &path, &body, true).await.0
            }
        }
    }
}

/// A worker's keep-alive connections to the nodes' HTTP fronts, and which node each of its sessions moved to.
struct Fronts {
    nodes: Arc<[SocketAddr]>,
    conns: Vec<Option<HttpConn>>,
    authorization: Option<String>,
    /// Sessions whose node could not be reached: the node they moved to (by session number).
    moved: std::collections::HashMap<u64, usize>,
}

impl Fronts {
    fn new(nodes: &[SocketAddr], token: Option<&str>) -> Fronts {
        Fronts {
            nodes: nodes.into(),
            conns: nodes.iter().map(|_| None).collect(),
            authorization: token.map(|t| format!("Bearer {t}")),
            moved: Default::default(),
        }
    }

    /// One call for session `n`, on its node. When the node cannot be reached (no connection), or, with `retry`,
    /// when the exchange failed before any answer, the call goes to the next node, and the session's later calls
    /// with it. With `retry` (calls with an idempotency key, and terminations), a call that no node could take, or
    /// that a node answered 502 (the session's owner does not answer: it has died and its lease has not run out
    /// yet) or 503, is made again every 100 ms for up to [`RETRY_FOR`], as a service riding out a node's death
    /// would. The answer's body comes back when the status is 2xx.
    async fn call(
        &mut self,
        n: u64,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        retry: bool,
    ) -> (Step, Option<serde_json::Value>) {
        let body = body.to_string();
        let give_up = Instant::now() + RETRY_FOR;
        loop {
            let (step, answer) = self.call_once(n, method, path, &body, retry).await;
            // A refusal with a Result-Code (4012…) is an answer, not something to try again.
            let again = answer.is_none() && (step.failure.is_some() || matches!(step.http_error, Some(502 | 503)));
            if !retry || !again || Instant::now() >= give_up {
                return (step, answer);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One try of [`Fronts::call`] over the nodes, from the session's own.
    async fn call_once(
        &mut self,
        n: u64,
        method: &str,
        path: &str,
        body: &str,
        retry: bool,
    ) -> (Step, Option<serde_json::Value>) {
        let count = self.nodes.len();
        let home = self.moved.get(&n).copied().unwrap_or((n % count as u64) as usize);
        for i in 0..count {
            let at = (home + i) % count;
            let (status, answer) = match self.exchange(at, method, path, body).await {
                Ok(a) => a,
                Err(Failure::Unreachable) => continue,
                Err(Failure::Lost) if retry => continue,
                Err(Failure::Lost) => break,
            };
            if at != home {
                self.moved.insert(n, at);
            }
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            let result_code = answer["result_code"].as_u64().unwrap_or(0) as u32;
            let ok = (200..300).contains(&status);
            let http_error = (!ok && result_code == 0).then_some(status);
            let step = Step { result_code, ok, http_error, failure: None };
            return (step, ok.then_some(answer));
        }
        (Step { result_code: 0, ok: false, http_error: None, failure: Some("no node answered") }, None)
    }

    /// One request and its answer on node `at`'s connection, made or remade as needed: a kept-alive connection the
    /// node has closed is remade once.
    async fn exchange(&mut self, at: usize, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>), Failure> {
        let addr = self.nodes[at];
        // Whether the request went out on a connection that then failed: if so, it may have been served.
        let mut sent = false;
        for fresh in [false, true] {
            if fresh || self.conns[at].is_none() {
                let stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    _ if sent => return Err(Failure::Lost),
                    _ => return Err(Failure::Unreachable),
                };
                let _ = stream.set_nodelay(true);
                self.conns[at] = Some(HttpConn { io: BufReader::new(stream) });
            }
            let conn = self.conns[at].as_mut().expect("connected");
            match conn.exchange(addr, method, path, body, self.authorization.as_deref()).await {
                Ok((status, answer, close)) => {
                    if close {
                        // The node closes it after this answer: the next call makes a new one.
                        self.conns[at] = None;
                    }
                    return Ok((status, answer));
                }
                Err(answered_nothing) => {
                    self.conns[at] = None;
                    sent = true;
                    if !answered_nothing || fresh {
                        return Err(Failure::Lost);
                    }
                }
            }
        }
        Err(Failure::Lost)
    }
}

/// How long a call that no node can take now is tried again: longer than a lease (2 s by default), so that a dead
/// node's sessions are adopted by a survivor within it.
const RETRY_FOR: Duration = Duration::from_secs(5);

/// Why an exchange with a front failed.
enum Failure {
    /// No connection could be made: nothing was sent.
    Unreachable,
    /// The connection failed during the exchange: the request may have been served.
    Lost,
}

/// A keep-alive HTTP/1.1 connection to a front.
struct HttpConn {
    io: BufReader<TcpStream>,
}

impl HttpConn {
    /// One request and its answer (status, body, and whether the node closes the connection after it). The error
    /// says whether nothing at all came back (the node closed the connection while it was idle: the request may be
    /// sent again on a new one).
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Result<(u16, Vec<u8>, bool), bool> {
        let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n",
            body.len()
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        let answer = async {
            self.io.get_mut().write_all(&out).await.map_err(|_| true)?;
            let mut line = String::new();
            if self.io.read_line(&mut line).await.map_err(|_| true)? == 0 {
                return Err(true);
            }
            let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(false)?;
            let (mut length, mut close) = (0usize, false);
            loop {
                line.clear();
                if self.io.read_line(&mut line).await.map_err(|_| false)? == 0 {
                    return Err(false);
                }
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    let value = value.trim();
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.parse().map_err(|_| false)?;
                    } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                        close = true;
                    }
                }
            }
            let mut body = vec![0; length];
            self.io.read_exact(&mut body).await.map_err(|_| false)?;
            Ok((status, body, close))
        };
        match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(r) => r,
            Err(_) => Err(false),
        }
    }
}

/// Each node's replication counters (records written, group commits), read from its `/v1/status`; `None` for a
/// node that does not answer or does not replicate.
async fn fronts_store(target: &Target) -> Vec<Option<(u64, u64)>> {
    let Target::Fronts { nodes, token } = target else { return Vec::new() };
    let mut f = Fronts::new(nodes, token.as_deref());
    let mut all = Vec::new();
    for i in 0..nodes.len() {
        let read = f.exchange(i, "GET", "/v1/status", "").await.ok().and_then(|(status, body)| {
            let v: serde_json::Value = serde_json::from_slice(&body).ok().filter(|_| status == 200)?;
            Some((v["replication"]["writes"].as_u64()?, v["replication"]["batches"].as_u64()?))
        });
        all.push(read);
    }
    all
}

/// What the nodes wrote between two readings: the sum over the nodes read both times (a node restarted meanwhile
/// counts from zero); `None` when no node was.
fn store_delta(before: &[Option<(u64, u64)>], after: &[Option<(u64, u64)>]) -> Option<(u64, u64)> {
    let both: Vec<_> = before.iter().zip(after).filter_map(|(a, b)| a.zip(*b)).collect();
    (!both.is_empty()).then(|| {
        both.iter().fold((0, 0), |(w, c), ((w0, c0), (w1, c1))| {
            let since = |v0: u64, v1: u64| if v1 >= v0 { v1 - v0 } else { v1 };
            (w + since(*w0, *w1), c + since(*c0, *c1))
        })
    })
}
