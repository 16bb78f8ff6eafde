//! The soak: three nodes of one cluster under steady load through their HTTP fronts, one of them SIGKILLed at
//! random again and again and restarted; the ledger must stay clean. `cargo run -p conformance -- soak --kills 100`;
//! the `failover-soak` scenario runs a short one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Ctx;
use crate::harness::{enc, http};

/// What a soak saw.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// Nodes killed (and restarted).
    pub kills: u32,
    /// Sessions the load opened, and ended.
    pub opened: u64,
    /// Sessions the load ended.
    pub terminated: u64,
    /// Calls that failed on every node tried (the load goes on with the next session).
    pub failed_calls: u64,
    /// Latency of the calls, p50 / p99 / max.
    pub latency: [Duration; 3],
    /// The OCS ledger check at the end.
    pub ledger: Value,
}

impl SoakReport {
    /// One line.
    pub fn summary(&self) -> String {
        format!(
            "{} kills; {} sessions opened, {} ended; {} calls failed on every node; call latency p50 {:?}, p99 {:?}, max {:?}; ledger anomalies {}",
            self.kills,
            self.opened,
            self.terminated,
            self.failed_calls,
            self.latency[0],
            self.latency[1],
            self.latency[2],
            self.ledger["anomalies"]
        )
    }
}

/// A small deterministic random sequence (xorshift), seeded by the clock: the soak needs no cryptography.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// One call, tried on each node in turn from `first` until one answers (a dead node refuses the connection; the
/// others forward to the owner or adopt). `None` when none answered.
fn call(
    fronts: &RwLock<Vec<SocketAddr>>,
    first: usize,
    method: &str,
    path: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    for attempt in 0..12 {
        let addrs = fronts.read().expect("fronts").clone();
        let addr = addrs[(first + attempt) % addrs.len()];
        match http(addr, method, path, Some(body)) {
            Ok((s, b)) if s < 500 || attempt == 11 => return Some((s, b)),
            // 5xx (the node is stopping, or lost its peer) or no connection: the next node, a little later.
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    None
}

/// Runs the soak: `kills` random SIGKILLs of one of three nodes, one every `every`, under load from `workers`
/// sessions at a time (CCR-I, three CCR-U with idempotency keys, CCR-T).
pub fn run(ctx: &mut Ctx, kills: u32, every: Duration, workers: usize) -> Result<SoakReport, String> {
    let ocs = ctx.ocs("")?;
    let specs = ctx.cluster_specs(3, &ocs)?;
    let mut nodes = specs.iter().map(|s| ctx.node(s)).collect::<Result<Vec<_>, _>>()?;
    let fronts = Arc::new(RwLock::new(nodes.iter().map(|n| n.http).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let (opened, terminated, failed) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    let load: Vec<_> = (0..workers)
        .map(|w| {
            let (fronts, stop, opened, terminated, failed, latencies) =
                (fronts.clone(), stop.clone(), opened.clone(), terminated.clone(), failed.clone(), latencies.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed.wrapping_add(w as u64 * 0x9e37_79b9) | 1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let timed = |method: &str, path: &str, body: &Value, first: usize| {
                        let t = Instant::now();
                        let r = call(&fronts, first, method, path, body);
                        latencies.lock().expect("latencies").push(t.elapsed());
                        r
                    };
                    let open = json!({"app": "ro", "subscriber": {"type": "msisdn", "data": format!("467{w:02}{n:06}")},
                        "rating_groups": [{"rating_group": 10, "requested": {}}]});
                    let Some((201, b)) = timed("POST", "/v1/sessions", &open, rng.next(3)) else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    let sid = enc(b["session_id"].as_str().unwrap_or_default());
                    let mut alive = true;
                    for k in 0..3 {
                        let body = json!({"used": [{"rating_group": 10, "used": {"time": 10}}], "idempotency_key": format!("u{k}")});
                        match timed("POST", &format!("/v1/sessions/{sid}/updates"), &body, rng.next(3)) {
                            Some((200, _)) => {}
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                alive = false;
                                break;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if alive {
                        let body = json!({"used": [{"rating_group": 10, "used": {"time": 5}}]});
                        match timed("DELETE", &format!("/v1/sessions/{sid}"), &body, rng.next(3)) {
                            Some((200, _)) => {
                                terminated.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut rng = Rng(seed);
    let mut done = 0;
    let result = (|| {
        for _ in 0..kills {
            std::thread::sleep(every);
            let victim = rng.next(nodes.len());
            nodes[victim].kill();
            std::thread::sleep(Duration::from_millis(300));
            nodes[victim] = ctx.node(&specs[victim])?;
            fronts.write().expect("fronts")[victim] = nodes[victim].http;
            done += 1;
        }
        Ok::<(), String>(())
    })();
    std::thread::sleep(every);
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.join();
    }
    result?;
    let mut lat = std::mem::take(&mut *latencies.lock().expect("latencies"));
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Ok(SoakReport {
        kills: done,
        opened: opened.load(Ordering::Relaxed),
        terminated: terminated.load(Ordering::Relaxed),
        failed_calls: failed.load(Ordering::Relaxed),
        latency: [pct(0.5), pct(0.99), lat.last().copied().unwrap_or_default()],
        ledger: ocs.check()?,
    })
}
