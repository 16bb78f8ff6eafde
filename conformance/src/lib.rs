//! The charging-ra conformance suite: a registry of scenarios, each checking one rule of a specification against
//! a subject (real `charging-ra` processes, or the library in-process for debugging), and a runner that prints
//! a table and, as its last line, `conformance: N passed, N failed, N skipped`.
//!
//! A scenario marked known-failing (with its reason) that fails counts as skipped and is listed as such; one that
//! unexpectedly passes counts as failed, so the list of gaps stays honest.

#![forbid(unsafe_code)]

pub mod harness;
pub mod proxy;
mod scenarios;
pub mod soak;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the scenarios run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// Real `charging-ra` processes (the one that counts).
    Exec,
    /// The library in this process (for debugging a scenario).
    Inproc,
}

/// The store the nodes share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One SQLite file shared by the node processes (default).
    Sqlite,
    /// In-process memory (only with the inproc subject).
    Memory,
    /// ScyllaDB at `SCYLLA_URI`.
    Scylla,
}

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The subject.
    pub subject: Subject,
    /// The store.
    pub store: StoreKind,
    /// The `charging-ra` binary for the exec subject.
    pub binary: PathBuf,
}

/// What a scenario can use: the run's configuration, a fresh directory (configs, logs, the SQLite store the
/// nodes share), and a runtime for in-process pieces (the fault proxy, inproc subjects).
pub struct Ctx<'a> {
    /// The run's configuration.
    pub config: &'a Config,
    /// This scenario's directory; kept when the scenario fails, for its logs.
    pub dir: PathBuf,
    /// The runtime the proxies run on.
    pub rt: tokio::runtime::Runtime,
    store: harness::StoreSlot,
    measured: Vec<String>,
}

impl Ctx<'_> {
    /// Records a measurement, printed under the scenario's row and kept in the report.
    pub fn measure(&mut self, what: String) {
        self.measured.push(what);
    }

    /// A fault proxy in front of `upstream`.
    pub fn proxy(&self, upstream: std::net::SocketAddr) -> Result<proxy::Proxy, String> {
        proxy::Proxy::start(&self.rt, upstream)
    }
}

/// A scenario that cannot run in this setting returns `Err` starting with this: it counts as skipped.
pub const SKIPPED: &str = "skipped: ";

/// One scenario.
pub struct Scenario {
    /// `area-what`, e.g. `codec-golden-decode`.
    pub name: &'static str,
    /// The specification rule or sequence it checks.
    pub spec: &'static str,
    /// When set, the scenario is a known gap: failing counts as skipped, passing as failed.
    pub known_failing: Option<&'static str>,
    /// The check.
    pub run: fn(&mut Ctx) -> Result<(), String>,
}

/// Every scenario, in the order they run.
pub fn registry() -> Vec<Scenario> {
    scenarios::all()
}

/// The outcome of one scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed, with why.
    Failed(String),
    /// Not run or a known gap, with why.
    Skipped(String),
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub name: &'static str,
    /// What it checks.
    pub spec: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
    /// How long it took.
    pub millis: u128,
    /// What it measured, if anything (e.g. adoption latency).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub measured: Vec<String>,
}

/// Totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Passed.
    pub passed: usize,
    /// Failed (including known-failing scenarios that passed).
    pub failed: usize,
    /// Skipped (including known-failing scenarios that failed).
    pub skipped: usize,
}

impl Totals {
    /// The summary line, always the last line of the output.
    pub fn line(&self) -> String {
        format!("conformance: {} passed, {} failed, {} skipped", self.passed, self.failed, self.skipped)
    }
}

/// Runs a soak (see [`soak`]) outside the registry: `kills` SIGKILLs, one every `every`, under `workers` sessions
/// at a time. Its directory is kept when the ledger is not clean.
pub fn run_soak(config: &Config, kills: u32, every: Duration, workers: usize) -> Result<soak::SoakReport, String> {
    let dir = std::env::temp_dir().join(format!("charging-ra-conformance-{}-soak", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut ctx = Ctx { config, dir: dir.clone(), rt, store: Default::default(), measured: Vec::new() };
    let r = soak::run(&mut ctx, kills, every, workers);
    if r.as_ref().is_ok_and(|r| r.ledger["clean"] == true) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

/// Matches a glob with `*` and `?` against a name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some(b'?'), Some(_)) => rec(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
}

/// Runs the scenarios whose names match `filter` (a glob; all when `None`), printing one table row each as it
/// finishes, and returns the reports and totals.
pub fn run(config: &Config, filter: Option<&str>, out: &mut dyn std::io::Write) -> (Vec<Report>, Totals) {
    let scenarios: Vec<Scenario> =
        registry().into_iter().filter(|s| filter.is_none_or(|f| glob_match(f, s.name))).collect();
    let width = scenarios.iter().map(|s| s.name.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:<width$}  {:<7}  {:>8}  spec", "scenario", "result", "time");
    let mut reports = Vec::new();
    let mut totals = Totals::default();
    for s in scenarios {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!("charging-ra-conformance-{}-{}", std::process::id(), s.name));
        let _ = std::fs::remove_dir_all(&dir);
        let ctx = std::fs::create_dir_all(&dir).map_err(|e| e.to_string()).and_then(|()| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Ctx { config, dir: dir.clone(), rt, store: Default::default(), measured: Vec::new() })
        });
        let mut measured = Vec::new();
        let result = ctx.and_then(|mut ctx| {
            let r = (s.run)(&mut ctx);
            ctx.rt.shutdown_background();
            measured = ctx.measured;
            r
        });
        let elapsed = started.elapsed();
        // A failed scenario's directory (configurations, node and simulator logs, the store) is kept for a look;
        // CONFORMANCE_KEEP keeps every one.
        if result.is_ok() && std::env::var_os("CONFORMANCE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let outcome = match (result, s.known_failing) {
            (Err(e), _) if e.starts_with(SKIPPED) => Outcome::Skipped(e[SKIPPED.len()..].to_string()),
            (Ok(()), None) => Outcome::Passed,
            (Err(e), None) => Outcome::Failed(e),
            (Err(e), Some(gap)) => Outcome::Skipped(format!("known gap: {gap} ({e})")),
            (Ok(()), Some(gap)) => Outcome::Failed(format!("marked known-failing ({gap}) but passed: remove the mark")),
        };
        match &outcome {
            Outcome::Passed => totals.passed += 1,
            Outcome::Failed(_) => totals.failed += 1,
            Outcome::Skipped(_) => totals.skipped += 1,
        }
        let (word, detail) = match &outcome {
            Outcome::Passed => ("passed", String::new()),
            Outcome::Failed(e) => ("FAILED", format!("\n{:width$}  -> {e} (logs in {})", "", dir.display())),
            Outcome::Skipped(e) => ("skipped", format!("\n{:width$}  -> {e}", "")),
        };
        let _ = writeln!(out, "{:<width$}  {word:<7}  {:>8}  {}{detail}", s.name, fmt_duration(elapsed), s.spec);
        for m in &measured {
            let _ = writeln!(out, "{:width$}  measured: {m}", "");
        }
        reports.push(Report { name: s.name, spec: s.spec, outcome, millis: elapsed.as_millis(), measured });
    }
    (reports, totals)
}

fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

/// The `charging-ra` binary next to this executable (cargo puts every binary of a workspace in one directory;
/// test executables live one level down, in `deps/`).
pub fn sibling_binary(exe: &Path) -> Option<PathBuf> {
    let name = format!("charging-ra{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors().skip(1).take(2).map(|dir| dir.join(&name)).find(|p| p.is_file())
}
