//! `charging-ra demo`: with no set-up at all, an OCS simulator pair and three `charging-ra node` processes on
//! loopback sharing a temporary SQLite store; a few hundred Ro and Gx sessions through the nodes' HTTP fronts; one
//! node SIGKILLed; the sessions carried on and ended through the survivors; the OCS ledger checked. The processes
//! are this binary itself.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::http::{call_blocking as http, path_segment};

/// The demo's child processes, for the Ctrl-C handler (recorded as soon as each is spawned).
static PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The demo's processes and files: the processes are stopped when it ends; the directory (configurations, logs,
/// the store) is removed only when the demo succeeded, and otherwise kept for its logs.
struct Cluster {
    dir: PathBuf,
    children: Vec<Child>,
    succeeded: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.succeeded {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("the demo's logs and store are kept in {}", self.dir.display());
        }
    }
}

/// Starts `charging-ra <args>` and reads its `ready k=v …` line.
fn start(cluster: &mut Cluster, args: &[&str], log: &str) -> anyhow::Result<Vec<(String, String)>> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(cluster.dir.join(log))?))
        .spawn()?;
    PIDS.lock().expect("pids").push(child.id());
    let out = child.stdout.take().expect("piped");
    cluster.children.push(child);
    let mut line = String::new();
    let mut reader = BufReader::new(out);
    reader.read_line(&mut line)?;
    // Keep draining standard output, so that the process never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    ready_fields(&line).ok_or_else(|| anyhow::anyhow!("{} did not start (see {log}): {line:?}", args[0]))
}

/// The fields of the `ready k=v …` line that `charging-ra node` and `ocs-sim` print on standard output once they
/// serve (`ready node=n1 diameter=127.0.0.1:3868 http=127.0.0.1:8080 sip=none`); `None` for any other line.
///
/// ```
/// use charging_ra::demo::ready_fields;
/// let f = ready_fields("ready node=n1 http=127.0.0.1:8080\n").unwrap();
/// assert_eq!(f, [("node".to_string(), "n1".to_string()), ("http".into(), "127.0.0.1:8080".into())]);
/// assert!(ready_fields("charging-ra: the store cannot be opened").is_none());
/// ```
pub fn ready_fields(line: &str) -> Option<Vec<(String, String)>> {
    let rest = line.strip_prefix("ready ")?;
    Some(rest.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
}

fn addr(fields: &[(String, String)], key: &str) -> anyhow::Result<SocketAddr> {
    let v = fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_default();
    Ok(v.parse()?)
}

/// A port free now for a process to listen on a moment later, on 127.0.0.1: nodes whose configurations name each
/// other's ports have them chosen before any starts (here and in the conformance suite). A port from the kernel's
/// ephemeral range (port 0) could meanwhile be taken by any outgoing connection on the machine (a demo node once
/// failed to start so, beside a busy test run); one below that range is taken only by a program that asks for it.
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = 20_000..ephemeral_low.max(20_001);
    for _ in 0..200 {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = below.start + (random % u64::from(below.end - below.start)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` different ports from [`free_port`], for processes that each listen on one. Chosen at random from the same
/// range, two calls can give the same port: nodes given the same port, the second one fails to start (seen once in
/// the conformance suite, where every cluster takes three).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    distinct(n, free_port)
}

/// The first `n` different values of `next`, giving up after `n` + 200 tries.
fn distinct(n: usize, mut next: impl FnMut() -> std::io::Result<u16>) -> std::io::Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n + 200 {
        if ports.len() == n {
            break;
        }
        let p = next()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    if ports.len() < n {
        return Err(std::io::Error::other(format!("found {} different free ports of the {n} needed", ports.len())));
    }
    Ok(ports)
}

fn node_config(dir: &Path, id: usize, ports: &[u16], ocs: SocketAddr, mate: SocketAddr, callee: SocketAddr) -> String {
    let mut t = format!(
        "[node]\nid = \"n{id}\"\norigin_host = \"n{id}.demo.localdomain\"\norigin_realm = \"demo.localdomain\"\n\
         diameter_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:0\"\nwatchdog = \"2s\"\n\n\
         [[peers]]\nhost = \"ocs1.ocs.localdomain\"\nrealm = \"ocs.localdomain\"\naddress = \"{ocs}\"\npriority = 1\n\n\
         [[peers]]\nhost = \"ocs2.ocs.localdomain\"\nrealm = \"ocs.localdomain\"\naddress = \"{mate}\"\npriority = 2\n\n",
        ports[id - 1]
    );
    for (i, p) in ports.iter().enumerate() {
        let m = i + 1;
        t += &format!(
            "[[cluster.members]]\nid = \"n{m}\"\norigin_host = \"n{m}.demo.localdomain\"\naddress = \"127.0.0.1:{p}\"\n\n"
        );
    }
    t += "[applications.ro]\ndestination_realm = \"ocs.localdomain\"\n\n[applications.gx]\ndestination_realm = \"ocs.localdomain\"\n\n";
    t += &format!(
        "[replication]\nenabled = true\ncluster = \"demo\"\nlease_period = \"250ms\"\nlease_ttl = \"1s\"\n\n\
         [store]\ntype = \"sqlite\"\npath = \"{}\"\n\n\
         [sip]\nenabled = true\nlisten = \"127.0.0.1:0\"\nnext_hop = \"{callee}\"\nquota = \"30s\"\n",
        dir.join("store.db").display(),
    );
    t
}

/// One phase: `n` calls made by `f`, with a progress line; returns the calls that failed.
fn phase(name: &str, n: usize, mut f: impl FnMut(usize) -> bool) -> usize {
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut failed = 0;
    for i in 0..n {
        if !f(i) {
            failed += 1;
        }
        if tty && (i % 25 == 24 || i + 1 == n) {
            let width = 30 * (i + 1) / n;
            print!("\r  {name:<34} [{}{}] {:>4}/{n}", "#".repeat(width), " ".repeat(30 - width), i + 1);
            let _ = std::io::stdout().flush();
        }
    }
    if !tty {
        print!("  {name:<34} {n:>4} calls");
    }
    println!(
        "  {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if failed > 0 { format!(", {failed} failed") } else { String::new() }
    );
    failed
}

/// Runs the demo; the exit status is non-zero when the ledger is not clean.
pub fn run() -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("charging-ra-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cluster = Cluster { dir: dir.clone(), children: Vec::new(), succeeded: false };
    // The SIP user agents run here; so does the Ctrl-C handler, which stops the children and removes the
    // directory (they would otherwise outlive an interrupted demo started outside a terminal's process group).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let tmp = dir.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            for pid in PIDS.lock().expect("pids").iter() {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
            let _ = std::fs::remove_dir_all(&tmp);
            eprintln!("\ninterrupted: the demo's processes are stopped and {} removed", tmp.display());
            std::process::exit(130);
        }
    });
    println!("charging-ra demo: an OCS pair and three nodes on 127.0.0.1, sharing {}", dir.join("store.db").display());
    // The simulator and its mate: a redundant OCS pair sharing one ledger (the judge).
    let ocs = start(
        &mut cluster,
        &[
            "ocs-sim",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--origin-host",
            "ocs1.ocs.localdomain",
            "--origin-realm",
            "ocs.localdomain",
            "--mate-listen",
            "127.0.0.1:0",
            "--mate-host",
            "ocs2.ocs.localdomain",
        ],
        "ocs.log",
    )?;
    let (ocs_diameter, control, mate) = (addr(&ocs, "diameter")?, addr(&ocs, "control")?, addr(&ocs, "mate")?);
    let ports = free_ports(3)?;
    // The SIP callee (the project's own UAS) and caller live in this process.
    let uas_counters = std::sync::Arc::new(crate::b2bua::ua::UasCounters::default());
    let callee = rt.block_on(async {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let a = s.local_addr()?;
        tokio::spawn(crate::b2bua::ua::run_uas(s, uas_counters.clone()));
        Ok::<_, std::io::Error>(a)
    })?;
    let (mut fronts, mut sip_addrs) = (Vec::new(), Vec::new());
    for id in 1..=3 {
        let cfg = dir.join(format!("n{id}.toml"));
        std::fs::write(&cfg, node_config(&dir, id, &ports, ocs_diameter, mate, callee))?;
        let ready = start(&mut cluster, &["node", "--config", &cfg.display().to_string()], &format!("n{id}.log"))?;
        fronts.push(addr(&ready, "http")?);
        sip_addrs.push(addr(&ready, "sip")?);
    }
    // Ready when every node has its OCS peer and the two other nodes.
    let end = Instant::now() + Duration::from_secs(20);
    for f in &fronts {
        while http(*f, "GET", "/v1/status", None).ok().is_none_or(|(_, s)| s["peers_open"].as_u64() < Some(3)) {
            anyhow::ensure!(Instant::now() < end, "the nodes did not connect (logs in {})", dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "  nodes n1, n2, n3 up: HTTP fronts {}",
        fronts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    );

    let (ro, gx) = (200, 100);
    let mut sessions: Vec<(String, bool)> = Vec::new();
    phase("open Ro and Gx sessions, replicated", ro + gx, |i| {
        let body = if i < ro {
            json!({"app": "ro", "subscriber": {"type": "msisdn", "data": format!("4670{i:07}")},
                "rating_groups": [{"rating_group": 10, "requested": {}}]})
        } else {
            json!({"app": "gx", "subscriber": {"type": "imsi", "data": format!("24001{i:010}")}, "rating_groups": []})
        };
        match http(fronts[i % 3], "POST", "/v1/sessions", Some(&body)) {
            Ok((201, b)) => {
                sessions.push((path_segment(b["session_id"].as_str().unwrap_or_default()), i < ro));
                true
            }
            _ => false,
        }
    });
    let update = |front: SocketAddr, sid: &str, ro: bool, key: &str| {
        let body = if ro {
            json!({"used": [{"rating_group": 10, "used": {"time": 60}}], "idempotency_key": key})
        } else {
            json!({"used": [], "idempotency_key": key, "avps": [{"name": "Event-Trigger", "value": 13}]})
        };
        http(front, "POST", &format!("/v1/sessions/{sid}/updates"), Some(&body)).is_ok_and(|(s, _)| s == 200)
    };
    // Each call lands on any node: the owner serves it, or it is forwarded to the owner.
    phase("update them through any node", sessions.len(), |i| {
        update(fronts[(i + 1) % 3], &sessions[i].0, sessions[i].1, "u1")
    });

    // SIP calls through each node, held across the kill: the re-INVITE and BYE of n1's calls go to n2 (as a load
    // balancer would send them once n1 fails; before that n2 forwards them to n1).
    let calls_per_node = 10;
    let sip_addr = |i: usize| sip_addrs[i];
    let uac = rt.block_on(crate::b2bua::ua::Uac::bind())?;
    let started = Instant::now();
    let calls: Vec<_> = (0..3 * calls_per_node)
        .map(|i| {
            let plan = crate::b2bua::ua::CallPlan {
                uri: format!("sip:user{i}@{callee}"),
                via: sip_addr(i % 3),
                hold: Duration::from_secs(4),
                reinvite: true,
                in_dialog_to: (i % 3 == 0).then(|| sip_addr(1)),
            };
            let uac = uac.clone();
            rt.spawn(async move { uac.call(&plan).await })
        })
        .collect();
    let sip_stat = |f: SocketAddr, k: &str| {
        http(f, "GET", "/v1/sip", None).map(|(_, s)| s["stats"][k].as_u64().unwrap_or(0)).unwrap_or(0)
    };
    while fronts.iter().map(|f| sip_stat(*f, "replicated")).sum::<u64>() < 3 * calls_per_node as u64 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the SIP calls were not answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "  {} SIP calls answered through n1, n2, n3 and replicated (charged: CCR-I each), held 4 s with a re-INVITE",
        3 * calls_per_node
    );

    println!("  kill -9 n1 (it owns a third of the sessions and calls)");
    cluster.children[1].kill()?;
    let killed = Instant::now();
    let _ = cluster.children[1].wait();
    let survivors = [fronts[1], fronts[2]];
    // n1's sessions are those opened through it (every third). Until its lease expires (1 s) the survivors take n1
    // for alive and forward to it, in vain; the first update of one of n1's sessions that succeeds is an adoption.
    let detected = match sessions.first() {
        Some((sid, ro)) => loop {
            if update(survivors[0], sid, *ro, "u2") {
                break killed.elapsed();
            }
            anyhow::ensure!(killed.elapsed() < Duration::from_secs(10), "n1's sessions were never adopted");
            std::thread::sleep(Duration::from_millis(20));
        },
        None => Duration::ZERO,
    };
    println!(
        "  n1's first session adopted by n2 {} ms after the kill (lease TTL 1 s, renewed every 250 ms)",
        detected.as_millis()
    );
    let (mut adoptions, mut others) = (Vec::new(), Vec::new());
    phase("carry on through n2 and n3", sessions.len(), |i| {
        let t = Instant::now();
        let ok = update(survivors[i % 2], &sessions[i].0, sessions[i].1, "u2");
        if i % 3 == 0 { &mut adoptions } else { &mut others }.push(t.elapsed());
        ok
    });
    phase("end them", sessions.len(), |i| {
        let body =
            if sessions[i].1 { json!({"used": [{"rating_group": 10, "used": {"time": 30}}]}) } else { json!({}) };
        http(survivors[i % 2], "DELETE", &format!("/v1/sessions/{}", sessions[i].0), Some(&body))
            .is_ok_and(|(s, _)| s == 200)
    });

    let reports: Vec<_> = calls.into_iter().filter_map(|c| rt.block_on(c).ok()).collect();
    let whole = reports.iter().filter(|r| r.invite == 200 && r.reinvite == Some(200) && r.bye == Some(200)).count();
    println!(
        "  SIP calls: {whole}/{} carried to their BYE (re-INVITE and BYE answered 200); n1's calls adopted by n2: {}; \
         the callee saw {} BYEs",
        reports.len(),
        sip_stat(fronts[1], "adopted"),
        uas_counters.byes.load(std::sync::atomic::Ordering::Relaxed)
    );
    let stat = |f: SocketAddr, k: &str| {
        http(f, "GET", "/v1/status", None).map(|(_, s)| s["replication"][k].as_u64().unwrap_or(0)).unwrap_or(0)
    };
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    println!(
        "  adopted from n1: {} sessions by n2, {} by n3; an update that adopted took p50 {:?} / p99 {:?} (others p50 \
         {:?} / p99 {:?})",
        stat(fronts[1], "adopted"),
        stat(fronts[2], "adopted"),
        pct(&mut adoptions, 0.5),
        pct(&mut adoptions, 0.99),
        pct(&mut others, 0.5),
        pct(&mut others, 0.99)
    );
    // A call's CCR-T follows its BYE's 200: give the last ones a moment.
    let until = Instant::now() + Duration::from_secs(5);
    let check = loop {
        let (_, check) = http(control, "GET", "/v1/ledger/check", None).map_err(anyhow::Error::msg)?;
        if check["sessions"]["open"] == 0 || Instant::now() > until {
            break check;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let clean = check["clean"] == Value::Bool(true);
    println!(
        "  OCS ledger: {} sessions opened, {} terminated, {} retransmissions answered from the cache, anomalies {}",
        check["sessions"]["opened"], check["sessions"]["terminated"], check["duplicates_answered"], check["anomalies"]
    );
    println!("ledger check: {}", if clean { "clean" } else { "NOT CLEAN" });
    cluster.succeeded = clean && whole == reports.len();
    Ok(cluster.succeeded)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_for_several_nodes_are_all_different() {
        let mut given = [5u16, 5, 6, 5, 7, 8].into_iter();
        assert_eq!(super::distinct(3, || Ok(given.next().unwrap())).unwrap(), vec![5, 6, 7]);
        let err = super::distinct(2, || Ok(9)).unwrap_err();
        assert!(err.to_string().contains("found 1 different free ports of the 2 needed"), "{err}");
        let mut ports = super::free_ports(30).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 30);
    }
}
