//! Command line: `charging-ra demo | decode | node | check-config | ocs-sim | load`. Errors are reported here, at the binary's edge, with anyhow.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};

use charging_ra::codec::{DecodeLimits, Message};
use charging_ra::config::Config;
use charging_ra::dict::Dictionary;

#[derive(Parser)]
#[command(name = "charging-ra", version, about = "Diameter Ro/Gx credit-control client with session replication")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// With no set-up: an OCS simulator pair and three nodes on loopback sharing a temporary SQLite store, a few
    /// hundred Ro and Gx sessions and a few SIP calls (the project's own user agents), one node killed with
    /// SIGKILL, the sessions and calls carried on and ended through the survivors, and the OCS ledger checked (the
    /// exit status says whether it is clean).
    Demo,
    /// Decode one Diameter message given as hex (spaces, colons and newlines ignored), or read from a file of
    /// raw bytes, and print it with dictionary names; bad bytes get the Result-Code a peer would answer.
    Decode {
        /// The message as hex; `-` reads hex from standard input.
        hex: Option<String>,
        /// Read raw message bytes from this file instead.
        #[arg(long, conflicts_with = "hex")]
        file: Option<std::path::PathBuf>,
        /// Read a capture (pcap or pcapng, e.g. from tshark or tcpdump) and print every Diameter message carried
        /// over TCP in it.
        #[arg(long, conflicts_with_all = ["hex", "file"])]
        pcap: Option<std::path::PathBuf>,
        /// Additional dictionary XML files.
        #[arg(long = "dictionary")]
        dictionaries: Vec<std::path::PathBuf>,
        /// A configuration file whose [codec] limits and [dictionaries] apply.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Decode, validate and print every built-in sample message instead.
        #[arg(long, conflicts_with_all = ["hex", "file", "pcap"])]
        samples: bool,
    },
    /// Run credit-control sessions (CCR-I, K CCR-U, CCR-T) through the embedded engine against an OCS or PCRF;
    /// the last line printed is `throughput: N tx/s`.
    Load(LoadArgs),
    /// Run a charging node: the credit-control engine with its HTTP front, connected to the configured OCS/PCRF
    /// peers, replicating sessions to the configured store. Prints `ready node=… diameter=… http=…` on standard
    /// output once serving; SIGTERM or Ctrl-C stops it gracefully (pending writes flushed, lease given up).
    Node {
        /// The configuration file (config.example.toml documents every key).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Print the records of a SQLite store whose keys start with a prefix, one JSON object per line: `key`,
    /// `version` and `record` (binary state records decoded). Opens the file read-only: safe beside running nodes.
    DumpStore {
        /// The SQLite file (`[store] path`).
        file: std::path::PathBuf,
        /// Only keys starting with this (e.g. `default/state/`); all by default.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Check a configuration file (syntax, unknown keys, ranges, dictionaries) and print the effective
    /// configuration: every default filled in and the CHARGING_RA_* environment overrides applied.
    CheckConfig {
        /// The configuration file.
        file: std::path::PathBuf,
    },
    /// Run the OCS (Ro) and PCRF (Gx) simulator with its ledger and HTTP control API.
    OcsSim {
        /// Diameter listening address.
        #[arg(long, default_value = "127.0.0.1:3868")]
        listen: std::net::SocketAddr,
        /// Our Origin-Host.
        #[arg(long, default_value = "ocs.localdomain")]
        origin_host: String,
        /// Our Origin-Realm.
        #[arg(long, default_value = "localdomain")]
        origin_realm: String,
        /// HTTP control API address (ledger, RAR/ASR, faults, metrics).
        #[arg(long)]
        control: Option<std::net::SocketAddr>,
        /// Also listen here as a mate: a second server identity (--mate-host) serving the same sessions and ledger,
        /// as the two servers of a redundant OCS pair do; clients configure it as their alternate.
        #[arg(long, requires = "mate_host")]
        mate_listen: Option<std::net::SocketAddr>,
        /// The mate's Origin-Host.
        #[arg(long, requires = "mate_listen")]
        mate_host: Option<String>,
        /// Tariff, accounts, Gx policy, faults and Tcc (TOML; see docs/ocs-sim.md).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Write the ledger as JSON to this file on exit.
        #[arg(long)]
        ledger_out: Option<std::path::PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo(),
        Command::Decode { samples: true, .. } => decode_samples(),
        Command::Decode { pcap: Some(pcap), dictionaries, config, .. } => {
            decode_pcap(&pcap, &dictionaries, config.as_deref())
        }
        Command::Decode { hex, file, dictionaries, config, .. } => decode(hex, file, &dictionaries, config.as_deref()),
        Command::Load(args) => load(args),
        Command::CheckConfig { file } => check_config(&file),
        Command::DumpStore { file, prefix } => dump_store(&file, &prefix),
        Command::Node { config, log_json } => node(&config, log_json),
        Command::OcsSim {
            listen,
            origin_host,
            origin_realm,
            control,
            mate_listen,
            mate_host,
            config,
            ledger_out,
            log_json,
        } => {
            init_logging(log_json);
            let mate = mate_listen.zip(mate_host);
            ocs_sim(listen, origin_host, origin_realm, control, mate, config, ledger_out)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("charging-ra: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr: human-readable by default, JSON lines with `--log-json`; `RUST_LOG` filters (default info).
fn init_logging(json: bool) {
    init_logging_with(json, "info");
}

/// Like [`init_logging`], with the filter used when `RUST_LOG` is not set.
fn init_logging_with(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Worker threads are named after the node (see `node`): every line says which node wrote it, which matters
    // once the logs of a cluster are collected in one place.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_thread_names(true);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn ocs_sim(
    listen: std::net::SocketAddr,
    origin_host: String,
    origin_realm: String,
    control: Option<std::net::SocketAddr>,
    mate: Option<(std::net::SocketAddr, String)>,
    config: Option<std::path::PathBuf>,
    ledger_out: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    use charging_ra::ocs::OcsConfig;
    use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
    let ocs = match &config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<OcsConfig>(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => OcsConfig::default(),
    };
    crate::keep_freed_memory();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut cfg = OcsServerConfig::new(listen, &origin_host, &origin_realm);
        cfg.control = control;
        cfg.mate = mate;
        cfg.ocs = ocs;
        let server = OcsServer::start(cfg).await?;
        tracing::info!(diameter = %server.diameter_addr(), control = ?server.control_addr(), "ocs-sim running as {origin_host}");
        // For whoever started this process (scripts, the conformance runner): where it listens, once it does.
        let control = server.control_addr().map_or("none".to_string(), |a| a.to_string());
        let mate = server.mate_addr().map(|a| format!(" mate={a}")).unwrap_or_default();
        println!("ready diameter={} control={control}{mate}", server.diameter_addr());
        shutdown_signal().await;
        let ledger = server.ledger_json();
        let check = server.stop().await;
        if let Some(path) = ledger_out {
            std::fs::write(&path, serde_json::to_string_pretty(&ledger)?).with_context(|| format!("writing {}", path.display()))?;
        }
        tracing::info!(clean = check.clean, opened = check.sessions.opened, "ocs-sim stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(path)?;
    config.apply_env(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let dictionary = config.dictionary(dir)?;
    print!("{}", toml::to_string_pretty(&config).context("printing the configuration")?);
    // TOML has no null: an option left unset is absent above. Name them, so the output is the whole picture.
    let mut unset = Vec::new();
    unset_paths(&serde_json::to_value(&config).context("printing the configuration")?, String::new(), &mut unset);
    if !unset.is_empty() {
        println!("\n# Not set (no default; config.example.toml says what each does): {}", unset.join(", "));
    }
    eprintln!(
        "{}: valid ({} peers, replication {}, SIP {}, dictionary of {} AVPs)",
        path.display(),
        config.peers.len(),
        if config.replication.enabled { "on" } else { "off" },
        if config.sip.enabled { "on" } else { "off" },
        dictionary.avps().len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The dotted paths of the null values in `v` (options left unset), tables' and arrays' included.
fn unset_paths(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Null => out.push(at),
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                unset_paths(v, path, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                unset_paths(v, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn node(path: &Path, log_json: bool) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(path)?;
    config.apply_env(path)?;
    init_logging_with(log_json || config.log.format == charging_ra::config::LogFormat::Json, &config.log.level);
    let dir = path.parent().unwrap_or(Path::new("."));
    let dictionary = std::sync::Arc::new(config.dictionary(dir)?);
    let id = config.node.id.clone();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.node.worker_threads {
        rt.worker_threads(n);
    }
    let rt = rt.thread_name(id.clone()).enable_all().build()?;
    // The node's own future runs on a thread named after the node too, not on `main`: every log line, the start
    // and stop lines included, names the node that wrote it.
    let (path, dir) = (path.to_path_buf(), dir.to_path_buf());
    let run = move || rt.block_on(node_main(config, dictionary, path, dir));
    std::thread::Builder::new()
        .name(id)
        .spawn(run)
        .context("starting the node's thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the node's thread panicked"))?
}

async fn node_main(
    config: Config,
    dictionary: std::sync::Arc<charging_ra::dict::Dictionary>,
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
) -> anyhow::Result<ExitCode> {
    use charging_ra::store::AnyStore;
    {
        let mut engine_config = config.engine_config(dictionary);
        // The HTTP front is bound first: the lease carries its address, where other nodes forward calls.
        let listener = match config.node.http_listen {
            Some(addr) => {
                Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("HTTP front on {addr}"))?)
            }
            None => None,
        };
        let http_bound = listener.as_ref().and_then(|l| l.local_addr().ok());
        if http_bound.is_some_and(|a| !a.ip().is_loopback()) && config.node.http_token.is_none() {
            tracing::warn!(
                "the HTTP front listens beyond loopback without [node] http_token: anyone who reaches it can open and end sessions"
            );
        }
        // SIP too, for the same reason (the lease carries it; `listen` may ask for port 0).
        let sip_binding = match config.sip.enabled {
            true => Some(
                charging_ra::b2bua::SipBinding::bind(config.sip.listen)
                    .await
                    .with_context(|| format!("SIP on {}", config.sip.listen))?,
            ),
            false => None,
        };
        let sip_bound = sip_binding.as_ref().map(|b| b.local_addr());
        if config.replication.enabled {
            let store = AnyStore::open(&config.store, &dir).await.with_context(|| {
                format!(
                    "opening the [store] of {} (a node does not start without its store; one lost while running \
                         only pauses replication)",
                    path.display()
                )
            })?;
            let uri = match config.node.diameter_listen {
                Some(a) => format!("aaa://{}:{}", config.node.origin_host, a.port()),
                None => format!("aaa://{}", config.node.origin_host),
            };
            config.replication.apply(&mut engine_config, store, &config.node.id, &uri);
            if let Some(r) = engine_config.replication.as_mut() {
                r.http = http_bound.map(|a| format!("http://{a}"));
                r.sip = sip_bound.map(|a| config.sip.b2bua_config(false).advertised(a));
            }
        }
        let engine = charging_ra::api::Engine::start(engine_config).await?;
        let sip = match sip_binding {
            Some(binding) => {
                let replicate = config.replication.enabled && config.replication.replicate_by_default.sip;
                let b2bua_config = config.sip.b2bua_config(replicate);
                Some(charging_ra::b2bua::B2bua::start_on(binding, b2bua_config, engine.clone()).await)
            }
            None => None,
        };
        let http = match listener {
            Some(l) => {
                use charging_ra::api::http::{router_with, serve_router, with_bearer_token};
                let app = with_bearer_token(router_with(engine.clone(), sip.clone()), config.node.http_token.clone());
                Some(serve_router(app, l)?)
            }
            None => None,
        };
        let diameter: Vec<String> = engine.diameter_addrs().await.iter().map(|a| a.to_string()).collect();
        let http_addr = http.as_ref().map_or("none".to_string(), |(a, _)| a.to_string());
        tracing::info!(node = %config.node.id, origin_host = %config.node.origin_host, http = %http_addr, diameter = ?diameter, "node running");
        let sip_addr = sip.as_ref().map_or("none".to_string(), |s| s.local_addr().to_string());
        println!("ready node={} diameter={} http={http_addr} sip={sip_addr}", config.node.id, diameter.join(","));
        shutdown_signal().await;
        tracing::info!("stopping: writing what replication holds, giving the lease up, DPR to peers");
        if let Some(s) = &sip {
            s.stop().await;
        }
        engine.stop().await;
        Ok(ExitCode::SUCCESS)
    }
}

/// `load`'s arguments.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["ocs", "nodes"])))]
struct LoadArgs {
    /// The OCS / PCRF address: sessions run through an engine embedded in the load process.
    #[arg(long)]
    ocs: Option<std::net::SocketAddr>,
    /// Instead of --ocs: drive running nodes through their HTTP fronts (comma-separated `http://host:port` or
    /// `host:port`); each session stays on one node, and moves to the next when its node cannot be reached.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// The bearer token of the nodes' fronts (`[node] http_token`); default: $CHARGING_RA_HTTP_TOKEN.
    #[arg(long, requires = "nodes")]
    token: Option<String>,
    /// Its realm (Destination-Realm).
    #[arg(long, default_value = "localdomain")]
    realm: String,
    /// Sessions in all.
    #[arg(long, default_value_t = 1000)]
    sessions: u64,
    /// Sessions at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// CCR-U per session.
    #[arg(long, default_value_t = 1)]
    updates: u32,
    /// How long each session stays open before its CCR-T (e.g. 2s); RAR/ASR are answered meanwhile.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    hold: std::time::Duration,
    /// Stop after this long, terminating open sessions.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// ro or gx.
    #[arg(long, default_value = "ro")]
    app: String,
    /// Replicate every session: off, memory, or sqlite (a fresh database file in the temporary directory).
    #[arg(long, default_value = "off")]
    replication: String,
    /// How replicated session state is written: binary or json (`[replication] state_encoding`).
    #[arg(long, default_value = "binary")]
    state_encoding: String,
    /// Group commits in flight at once, 1 to 8 (`[replication] batches_in_flight`).
    #[arg(long, default_value_t = 1)]
    batches_in_flight: usize,
    /// Start transactions at this rate per second (open loop; latency counts from when each was due), for
    /// latency at a given load; without it, as fast as the concurrency allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Write each transaction's latency to this file, one line each in the order they were due: when it was due
    /// (microseconds from the start) and its latency (microseconds). Stalls show as runs of long latencies.
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,
    /// Worker threads of the load's runtime (the engine runs in it too); default: one per CPU. On a small
    /// machine shared with the simulator, 1 avoids the tasks' wake-ups crossing threads (BENCHMARKS.md); with
    /// --rate, the pacer's releases still come from a thread of its own.
    #[arg(long)]
    threads: Option<usize>,
}

fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let LoadArgs {
        ocs,
        nodes,
        token,
        realm,
        sessions,
        concurrency,
        updates,
        hold,
        duration,
        app,
        replication,
        state_encoding,
        batches_in_flight,
        rate,
        latency_log,
        threads,
    } = args;
    if !(1..=charging_ra::api::MAX_BATCHES_IN_FLIGHT).contains(&batches_in_flight) {
        bail!("--batches-in-flight must be from 1 to 8");
    }
    use charging_ra::api::App;
    use charging_ra::store::{AnyStore, SqliteStore};
    let app = match app.as_str() {
        "ro" => App::Ro,
        "gx" => App::Gx,
        other => bail!("--app {other:?}: use ro or gx"),
    };
    let state_encoding = match state_encoding.as_str() {
        "binary" => charging_ra::replication::StateEncoding::Binary,
        "json" => charging_ra::replication::StateEncoding::Json,
        other => bail!("--state-encoding {other:?}: use binary or json"),
    };
    let mut db = None;
    let replication = match replication.as_str() {
        "off" => None,
        "memory" => Some(AnyStore::memory()),
        "sqlite" => {
            let path = std::env::temp_dir().join(format!("charging-ra-load-{}.db", std::process::id()));
            let store = SqliteStore::open(&path, std::time::Duration::from_secs(5))?;
            db = Some(path);
            Some(AnyStore::Sqlite(store))
        }
        other => bail!("--replication {other:?}: use off, memory or sqlite"),
    };
    let target = match ocs {
        Some(ocs) => charging_ra::load::Target::Embedded { ocs, realm, replication, state_encoding, batches_in_flight },
        None => {
            anyhow::ensure!(
                replication.is_none(),
                "--replication is for the embedded engine (--ocs); nodes replicate as their configuration says"
            );
            let nodes = nodes
                .iter()
                .map(|n| {
                    use std::net::ToSocketAddrs;
                    let a = n.strip_prefix("http://").unwrap_or(n).trim_end_matches('/');
                    let why = |e: &dyn std::fmt::Display| {
                        anyhow::anyhow!("--nodes {n:?}: {e} (give host:port or http://host:port)")
                    };
                    a.to_socket_addrs().map_err(|e| why(&e))?.next().ok_or_else(|| why(&"no address"))
                })
                .collect::<anyhow::Result<Vec<std::net::SocketAddr>>>()?;
            let token = token.or_else(|| std::env::var("CHARGING_RA_HTTP_TOKEN").ok());
            charging_ra::load::Target::Fronts { nodes, token }
        }
    };
    use charging_ra::load::LoadConfig;
    let open_timeout = std::time::Duration::from_secs(10);
    let cfg =
        LoadConfig { target, sessions, concurrency, updates, hold, duration, app, rate, open_timeout, latency_log };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build()?;
    let report = rt.block_on(charging_ra::load::run(cfg));
    if let Some(path) = db {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    print!("{}", report?.summary());
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn load_dictionary(config: &Config, config_dir: &Path, files: &[std::path::PathBuf]) -> anyhow::Result<Dictionary> {
    let texts =
        config.dictionaries.files.iter().map(|f| config_dir.join(f)).chain(files.iter().cloned()).collect::<Vec<_>>();
    let texts = texts
        .iter()
        .map(|f| {
            Ok((
                f.display().to_string(),
                std::fs::read_to_string(f).with_context(|| format!("reading dictionary {}", f.display()))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    Ok(Dictionary::with_files(&refs)?)
}

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits ({})", digits.len());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .with_context(|| format!("invalid hex {:?} at offset {i}", &digits[i..i + 2]))
        })
        .collect()
}

/// The dictionary and limits `decode` uses: the shipped dictionaries, a config file's [dictionaries] and [codec],
/// and `--dictionary` files.
fn decoder(
    dictionaries: &[std::path::PathBuf],
    config_path: Option<&Path>,
) -> anyhow::Result<(Dictionary, DecodeLimits)> {
    let config = match config_path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let dir = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
    let dict = load_dictionary(&config, dir, dictionaries)?;
    Ok((dict, config.codec.limits()))
}

fn decode(
    hex: Option<String>,
    file: Option<std::path::PathBuf>,
    dictionaries: &[std::path::PathBuf],
    config_path: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let (dict, limits) = decoder(dictionaries, config_path)?;
    let bytes = match (hex, file) {
        (_, Some(path)) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        (Some(h), None) if h == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            parse_hex(&s)?
        }
        (Some(h), None) => parse_hex(&h)?,
        (None, None) => {
            bail!("give the message as hex, '-' for hex on standard input, or --file PATH")
        }
    };
    Ok(print_message(&dict, &limits, Bytes::from(bytes)))
}

fn decode_pcap(
    path: &Path,
    dictionaries: &[std::path::PathBuf],
    config_path: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let (dict, limits) = decoder(dictionaries, config_path)?;
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let frames = charging_ra::pcap::diameter_frames(&file).with_context(|| path.display().to_string())?;
    let mut bad = 0;
    for f in &frames {
        println!("== packet {}: {} -> {} ({} octets)", f.packet, f.src, f.dst, f.bytes.len());
        if print_message(&dict, &limits, f.bytes.clone()) != ExitCode::SUCCESS {
            bad += 1;
        }
        println!();
    }
    println!("{} Diameter messages, {bad} not valid", frames.len());
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints a decoded message, or the error and the answer a peer would get. Returns failure for bad bytes.
fn print_message(dict: &Dictionary, limits: &DecodeLimits, bytes: Bytes) -> ExitCode {
    let msg = match Message::decode_with(bytes, limits) {
        Ok(m) => m,
        Err(e) => {
            println!("error: {e}");
            println!("Result-Code: {}", e.result_code());
            if let Some(avp) = e.failed_avp() {
                println!("Failed-AVP: {avp:?}");
            }
            return ExitCode::FAILURE;
        }
    };
    print!("{}", dict.display(&msg));
    match dict.validate(&msg, limits) {
        Ok(()) => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("invalid: {e}");
            println!("Result-Code: {}", e.result_code());
            if let Some(avp) = e.failed_avp() {
                println!("Failed-AVP: {avp:?}");
            }
            ExitCode::FAILURE
        }
    }
}

fn decode_samples() -> anyhow::Result<ExitCode> {
    let dict = Dictionary::builtin();
    let mut failed = 0;
    for (name, msg) in charging_ra::samples::all(&dict) {
        let bytes = msg.encode()?;
        println!("== {name} ({} octets)", bytes.len());
        if print_message(&dict, &DecodeLimits::default(), bytes) != ExitCode::SUCCESS {
            failed += 1;
        }
        println!();
    }
    if failed > 0 {
        bail!("{failed} sample(s) did not validate");
    }
    Ok(ExitCode::SUCCESS)
}

fn demo() -> anyhow::Result<ExitCode> {
    Ok(if charging_ra::demo::run()? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn dump_store(file: &std::path::Path, prefix: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    anyhow::ensure!(file.exists(), "{}: no such file", file.display());
    let records = charging_ra::store::SqliteStore::read_only_scan(file, prefix)?;
    let mut out = std::io::stdout().lock();
    let mut unreadable = 0;
    for (key, v) in records {
        let record = charging_ra::api::record_json(&v.value).unwrap_or_else(|e| {
            unreadable += 1;
            serde_json::json!({ "unreadable": e.to_string() })
        });
        writeln!(out, "{}", serde_json::json!({ "key": key, "version": v.version, "record": record }))?;
    }
    Ok(if unreadable == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
