//! `cargo run -p conformance -- [--list] [--filter GLOB] [--store sqlite|memory|scylla] [--subject exec|inproc]
//! [--report FILE.json]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use conformance::{Config, StoreKind, Subject};

#[derive(Parser)]
#[command(about = "charging-ra conformance suite")]
struct Args {
    /// `soak`: kill nodes at random under load instead of running the scenarios.
    command: Option<String>,
    /// Soak: how many SIGKILLs.
    #[arg(long, default_value_t = 100)]
    kills: u32,
    /// Soak: one kill every this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1500ms")]
    every: std::time::Duration,
    /// Soak: sessions running at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// List the scenarios and what each checks, then exit.
    #[arg(long)]
    list: bool,
    /// Run only scenarios whose names match this glob (`*`, `?`).
    #[arg(long)]
    filter: Option<String>,
    /// The store the nodes share.
    #[arg(long, value_enum, default_value = "sqlite")]
    store: StoreArg,
    /// Real processes (exec, the default) or the library in this process (inproc, for debugging).
    #[arg(long, value_enum, default_value = "exec")]
    subject: SubjectArg,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The charging-ra binary (default: the one built next to this runner, built first if missing).
    #[arg(long, env = "CHARGING_RA_BIN")]
    binary: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreArg {
    Sqlite,
    Memory,
    Scylla,
}

#[derive(Clone, Copy, ValueEnum)]
enum SubjectArg {
    Exec,
    Inproc,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.list {
        let all = conformance::registry();
        let width = all.iter().map(|s| s.name.len()).max().unwrap_or(8);
        for s in all {
            let gap = s.known_failing.map(|g| format!(" [known gap: {g}]")).unwrap_or_default();
            println!("{:<width$}  {}{gap}", s.name, s.spec);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let subject = match args.subject {
        SubjectArg::Exec => Subject::Exec,
        SubjectArg::Inproc => Subject::Inproc,
    };
    let store = match args.store {
        StoreArg::Sqlite => StoreKind::Sqlite,
        StoreArg::Memory => StoreKind::Memory,
        StoreArg::Scylla => StoreKind::Scylla,
    };
    if store == StoreKind::Memory && subject == Subject::Exec {
        bail!("--store memory works only with --subject inproc: separate processes cannot share memory");
    }
    if store == StoreKind::Scylla && std::env::var_os("SCYLLA_URI").is_none() {
        bail!("--store scylla needs SCYLLA_URI (e.g. 127.0.0.1:9042)");
    }
    let binary = match (subject, args.binary) {
        (_, Some(b)) => b,
        (Subject::Inproc, None) => PathBuf::new(),
        (Subject::Exec, None) => find_or_build_binary()?,
    };
    let config = Config { subject, store, binary };
    match args.command.as_deref() {
        None => {}
        Some("soak") => {
            let r = conformance::run_soak(&config, args.kills, args.every, args.workers).map_err(anyhow::Error::msg)?;
            println!("soak: {}", r.summary());
            let clean = r.ledger["clean"] == true;
            println!("soak: ledger {}", if clean { "clean" } else { "NOT clean" });
            return Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Some(other) => bail!("unknown command {other:?}: the only one is `soak`"),
    }
    let (reports, totals) = conformance::run(&config, args.filter.as_deref(), &mut std::io::stdout());
    if let Some(path) = args.report {
        let json = serde_json::json!({ "subject": config.subject, "store": config.store, "totals": totals, "scenarios": reports });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", totals.line());
    Ok(if totals.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The charging-ra binary built next to this runner; when it is missing, build it with the same profile.
fn find_or_build_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if let Some(bin) = conformance::sibling_binary(&exe) {
        return Ok(bin);
    }
    let release = exe.parent().is_some_and(|d| d.ends_with("release"));
    eprintln!("conformance: building charging-ra{}", if release { " (release)" } else { "" });
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", "charging-ra", "--bin", "charging-ra"]);
    if release {
        cmd.arg("--release");
    }
    if !cmd.status().context("running cargo build")?.success() {
        bail!("cargo build of charging-ra failed");
    }
    conformance::sibling_binary(&exe).context("charging-ra was built but is not next to the runner")
}
