//! What scenarios run against: the OCS simulator (the judge, through its ledger), charging nodes driven through
//! their HTTP fronts, and a Diameter-aware fault proxy between them. Each exists in two forms behind one handle:
//! real processes (`exec`, what counts) and the library on a runtime of this process (`inproc`, for debugging).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use charging_ra::store::AnyStore;

use super::{StoreKind, Subject};

/// A blocking HTTP/1.1 exchange with a front or the simulator's control API.
pub use charging_ra::api::http::call_blocking as http;

/// Percent-encodes a Session-Id for a path.
pub use charging_ra::api::http::path_segment as enc;

/// Polls `f` every 50 ms until it returns `Some`, or fails after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the `ready k=v …` line a `charging-ra` process prints once it serves.
fn ready_line(child: &mut Child, what: &str) -> Result<Vec<(String, String)>, String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining, so the process never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| format!("{what} printed no ready line"))?;
    charging_ra::demo::ready_fields(&line).ok_or_else(|| format!("{what} did not start: {line:?}"))
}

fn field(fields: &[(String, String)], key: &str) -> Result<SocketAddr, String> {
    let v = fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.split(',').next().unwrap_or_default());
    v.and_then(|v| v.parse().ok()).ok_or_else(|| format!("no {key} address in the ready line"))
}

enum Running {
    Process(Child),
    InProc(Option<tokio::runtime::Runtime>),
}

impl Running {
    fn kill(&mut self) {
        match self {
            Running::Process(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Running::InProc(rt) => {
                if let Some(rt) = rt.take() {
                    rt.shutdown_background();
                }
            }
        }
    }
}

/// The OCS/PCRF simulator.
pub struct Ocs {
    /// Its Diameter address.
    pub diameter: SocketAddr,
    /// Its control API.
    pub control: SocketAddr,
    /// Its mate ([`OCS_MATE_HOST`]): the second server of the pair, same sessions, same ledger.
    pub mate: SocketAddr,
    run: Running,
}

/// The simulator's Origin-Host and realm in every scenario.
pub const OCS_HOST: &str = "ocs1.ocs.localdomain";
/// The mate's Origin-Host.
pub const OCS_MATE_HOST: &str = "ocs2.ocs.localdomain";
/// The realm requests are routed by.
pub const OCS_REALM: &str = "ocs.localdomain";

/// Where a process runs: its address, and the network namespace it is started in (`ip netns exec`), if any.
#[derive(Clone, Debug)]
pub struct Place {
    /// The address it listens on.
    pub ip: std::net::IpAddr,
    /// The network namespace, made by the scenario.
    pub netns: Option<String>,
}

impl Place {
    /// Loopback of the test's own namespace.
    pub fn loopback() -> Place {
        Place { ip: std::net::Ipv4Addr::LOCALHOST.into(), netns: None }
    }

    /// A command for `program`, inside the namespace when there is one (`ip netns exec` execs it: same pid).
    fn command(&self, program: &std::path::Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

impl Ocs {
    /// Starts a simulator with this configuration (TOML, docs/ocs-sim.md).
    pub fn start(subject: Subject, binary: &std::path::Path, dir: &std::path::Path, toml: &str) -> Result<Ocs, String> {
        Ocs::start_at(subject, binary, dir, toml, &Place::loopback())
    }

    /// [`Ocs::start`] at a place (real processes only).
    pub fn start_at(
        subject: Subject,
        binary: &std::path::Path,
        dir: &std::path::Path,
        toml: &str,
        place: &Place,
    ) -> Result<Ocs, String> {
        match subject {
            Subject::Exec => {
                let cfg = dir.join("ocs.toml");
                std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
                let any = format!("{}:0", place.ip);
                let mut child = place
                    .command(binary)
                    .args(["ocs-sim", "--listen", &any, "--control", &any])
                    .args(["--mate-listen", &any, "--mate-host", OCS_MATE_HOST])
                    .args(["--origin-host", OCS_HOST, "--origin-realm", OCS_REALM, "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::from(std::fs::File::create(dir.join("ocs.log")).map_err(|e| e.to_string())?))
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", binary.display()))?;
                let f = ready_line(&mut child, "ocs-sim")?;
                Ok(Ocs {
                    diameter: field(&f, "diameter")?,
                    control: field(&f, "control")?,
                    mate: field(&f, "mate")?,
                    run: Running::Process(child),
                })
            }
            Subject::Inproc => {
                use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
                let ocs = toml::from_str(toml).map_err(|e| e.to_string())?;
                let rt = runtime()?;
                let server = rt.block_on(async {
                    let mut cfg = OcsServerConfig::new("127.0.0.1:0".parse().unwrap(), OCS_HOST, OCS_REALM);
                    cfg.control = Some("127.0.0.1:0".parse().unwrap());
                    cfg.mate = Some(("127.0.0.1:0".parse().unwrap(), OCS_MATE_HOST.into()));
                    cfg.ocs = ocs;
                    OcsServer::start(cfg).await.map_err(|e| e.to_string())
                })?;
                let (diameter, control) = (server.diameter_addr(), server.control_addr().expect("control on"));
                let mate = server.mate_addr().expect("mate on");
                // The server lives as long as its runtime.
                std::mem::forget(server);
                Ok(Ocs { diameter, control, mate, run: Running::InProc(Some(rt)) })
            }
        }
    }

    /// `GET /v1/ledger/check`.
    pub fn check(&self) -> Result<Value, String> {
        Ok(http(self.control, "GET", "/v1/ledger/check", None)?.1)
    }

    /// Fails unless the ledger is clean; returns the check.
    pub fn clean(&self) -> Result<Value, String> {
        let c = self.check()?;
        if c["clean"] != true {
            return Err(format!("the OCS ledger is not clean: {c}"));
        }
        Ok(c)
    }

    /// Every session the OCS has seen (`GET /v1/ledger`).
    pub fn sessions(&self) -> Result<Vec<Value>, String> {
        let (_, b) = http(self.control, "GET", "/v1/ledger", None)?;
        Ok(b["sessions"].as_array().cloned().unwrap_or_default())
    }

    /// One session as the OCS saw it.
    pub fn ledger(&self, sid: &str) -> Result<Value, String> {
        Ok(http(self.control, "GET", &format!("/v1/ledger/{}", enc(sid)), None)?.1)
    }

    /// Adds a fault rule (`{"command": "CCR", "request_type": "update", "action": "drop", …}`).
    pub fn fault(&self, rule: Value) -> Result<(), String> {
        match http(self.control, "POST", "/v1/faults", Some(&rule))? {
            (s, _) if s < 300 => Ok(()),
            (s, b) => Err(format!("fault rule refused: {s} {b}")),
        }
    }

    /// Sends a RAR (`{"session_id", "rating_groups"?, "rules"?, …}`); returns the status and the RAA as JSON.
    pub fn rar(&self, body: Value) -> Result<(u16, Value), String> {
        http(self.control, "POST", "/v1/rar", Some(&body))
    }

    /// Sends an ASR for a session.
    pub fn asr(&self, sid: &str) -> Result<(u16, Value), String> {
        http(self.control, "POST", "/v1/asr", Some(&json!({ "session_id": sid })))
    }
}

impl Drop for Ocs {
    fn drop(&mut self) {
        self.run.kill();
    }
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node id (also the first label of its Origin-Host).
    pub id: String,
    /// The servers it connects to: (Origin-Host, address, priority).
    pub peers: Vec<(String, SocketAddr, u32)>,
    /// Tx.
    pub tx: Duration,
    /// CCFH until the server says otherwise.
    pub ccfh: &'static str,
    /// DDFH until the server says otherwise.
    pub ddfh: &'static str,
    /// Tw.
    pub watchdog: Duration,
    /// Replicate sessions (to the run's store).
    pub replicate: bool,
    /// Lease period and TTL.
    pub lease: (Duration, Duration),
    /// Record TTL.
    pub record_ttl: Duration,
    /// SQLite busy timeout.
    pub busy_timeout: Duration,
    /// Wait for a peer to open before [`Node::start`] returns.
    pub wait_open: bool,
    /// Its Diameter port (0: any), fixed when other nodes connect to it.
    pub diameter_port: u16,
    /// Every member of its cluster: (node id, Diameter address); empty for a lone node.
    pub cluster: Vec<(String, SocketAddr)>,
    /// Where it runs.
    pub place: Place,
    /// Run the SIP B2BUA (on a port of its choosing, read from the ready line), sending leg B to this address.
    pub sip: Option<SocketAddr>,
}

impl NodeSpec {
    /// A node connected to one simulator, Tx 2 s, CCFH TERMINATE, no replication.
    pub fn new(id: &str, ocs: &Ocs) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            peers: vec![(OCS_HOST.into(), ocs.diameter, 1)],
            tx: Duration::from_secs(2),
            ccfh: "TERMINATE",
            ddfh: "TERMINATE_OR_BUFFER",
            watchdog: Duration::from_secs(6),
            replicate: false,
            lease: (Duration::from_millis(200), Duration::from_millis(800)),
            record_ttl: Duration::from_secs(3600),
            busy_timeout: Duration::from_millis(200),
            wait_open: true,
            diameter_port: 0,
            cluster: Vec::new(),
            sip: None,
            place: Place::loopback(),
        }
    }

    /// The node's Origin-Host.
    pub fn origin_host(&self) -> String {
        format!("{}.charging.localdomain", self.id)
    }

    fn toml(&self, store: &std::path::Path) -> String {
        let mut t = format!(
            "[node]\nid = \"{id}\"\norigin_host = \"{host}\"\norigin_realm = \"charging.localdomain\"\n\
             diameter_listen = \"{ip}:{port}\"\nhttp_listen = \"{ip}:0\"\nwatchdog = \"{tw}ms\"\n\n",
            ip = self.place.ip,
            id = self.id,
            host = self.origin_host(),
            port = self.diameter_port,
            tw = self.watchdog.as_millis()
        );
        for (id, addr) in &self.cluster {
            t += &format!(
                "[[cluster.members]]\nid = \"{id}\"\norigin_host = \"{id}.charging.localdomain\"\naddress = \"{addr}\"\n\n"
            );
        }
        for (host, addr, prio) in &self.peers {
            t += &format!(
                "[[peers]]\nhost = \"{host}\"\nrealm = \"{OCS_REALM}\"\naddress = \"{addr}\"\npriority = {prio}\n\n"
            );
        }
        for app in ["ro", "gx"] {
            t += &format!(
                "[applications.{app}]\ndestination_realm = \"{OCS_REALM}\"\ntx = \"{}ms\"\nccfh = \"{}\"\nddfh = \"{}\"\n\n",
                self.tx.as_millis(),
                self.ccfh,
                self.ddfh
            );
        }
        t += &format!(
            "[replication]\nenabled = {}\ncluster = \"conformance\"\nwrite_delay = \"20ms\"\nlease_period = \"{}ms\"\n\
             lease_ttl = \"{}ms\"\nrecord_ttl = \"{}ms\"\n\n[store]\ntype = \"sqlite\"\npath = \"{}\"\nbusy_timeout = \"{}ms\"\n\
             sweep_interval = \"1s\"\n",
            self.replicate,
            self.lease.0.as_millis(),
            self.lease.1.as_millis(),
            self.record_ttl.as_millis(),
            store.display(),
            self.busy_timeout.as_millis()
        );
        if let Some(next_hop) = self.sip {
            t += &format!(
                "\n[sip]\nenabled = true\nlisten = \"{}:0\"\nnext_hop = \"{next_hop}\"\nquota = \"30s\"\n",
                self.place.ip
            );
        }
        t
    }
}

/// A charging node, driven through its HTTP front.
pub struct Node {
    /// The HTTP front.
    pub http: SocketAddr,
    /// Its Diameter listening address.
    pub diameter: SocketAddr,
    /// Its SIP address, when it runs the B2BUA.
    pub sip: Option<SocketAddr>,
    /// Its process id (exec).
    pub pid: Option<u32>,
    run: Running,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())
}

impl Node {
    /// Starts a node; it is ready (its peer open) when this returns.
    pub fn start(ctx: &super::Ctx, spec: &NodeSpec) -> Result<Node, String> {
        let store_path = ctx.dir.join("store.db");
        let toml = spec.toml(&store_path);
        let node = match ctx.config.subject {
            Subject::Exec => {
                let cfg = ctx.dir.join(format!("{}.toml", spec.id));
                std::fs::write(&cfg, &toml).map_err(|e| e.to_string())?;
                let log = std::fs::File::create(ctx.dir.join(format!("{}.log", spec.id))).map_err(|e| e.to_string())?;
                let mut child = spec
                    .place
                    .command(&ctx.config.binary)
                    .args(["node", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", std::env::var("CONFORMANCE_NODE_LOG").unwrap_or_else(|_| "info".into()))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::from(log))
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", ctx.config.binary.display()))?;
                let pid = child.id();
                let f = ready_line(&mut child, &format!("node {}", spec.id))?;
                Node {
                    http: field(&f, "http")?,
                    diameter: field(&f, "diameter")?,
                    sip: field(&f, "sip").ok(),
                    pid: Some(pid),
                    run: Running::Process(child),
                }
            }
            Subject::Inproc => {
                let path = ctx.dir.join(format!("{}.toml", spec.id));
                let config = charging_ra::config::Config::parse(&toml, &path).map_err(|e| e.to_string())?;
                let store = ctx.store()?;
                let rt = runtime()?;
                let (http, diameter, sip) = rt.block_on(async {
                    let mut ec = config.engine_config(Arc::new(charging_ra::dict::Dictionary::builtin()));
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
                    let binding = match spec.sip {
                        Some(_) => Some(
                            charging_ra::b2bua::SipBinding::bind(config.sip.listen).await.map_err(|e| e.to_string())?,
                        ),
                        None => None,
                    };
                    if spec.replicate {
                        let uri = format!("aaa://{}:{}", spec.origin_host(), spec.diameter_port);
                        config.replication.apply(&mut ec, store, &spec.id, &uri);
                        if let Some(r) = ec.replication.as_mut() {
                            r.http = listener.local_addr().ok().map(|a| format!("http://{a}"));
                            r.sip = binding.as_ref().map(|b| b.local_addr().to_string());
                        }
                    }
                    let engine = charging_ra::api::Engine::start(ec).await.map_err(|e| e.to_string())?;
                    let sip = match binding {
                        Some(b) => {
                            let c = config.sip.b2bua_config(spec.replicate);
                            Some(charging_ra::b2bua::B2bua::start_on(b, c, engine.clone()).await)
                        }
                        None => None,
                    };
                    let sip_addr = sip.as_ref().map(|s| s.local_addr());
                    let (http, task) =
                        charging_ra::api::http::serve_with(engine.clone(), listener, sip).map_err(|e| e.to_string())?;
                    std::mem::forget(task);
                    let d = engine.diameter_addrs().await.first().copied().ok_or("no Diameter address")?;
                    Ok::<_, String>((http, d, sip_addr))
                })?;
                Node { http, diameter, sip, pid: None, run: Running::InProc(Some(rt)) }
            }
        };
        // Ready: the front answers and a peer is open (a session can be opened).
        if spec.wait_open {
            node.wait_open(Duration::from_secs(15))?;
        }
        Ok(node)
    }

    /// Waits until a peer is open.
    pub fn wait_open(&self, within: Duration) -> Result<(), String> {
        wait_for("the node's peer to open", within, || {
            http(self.http, "GET", "/v1/status", None)
                .ok()
                .filter(|(s, b)| *s == 200 && b["peers_open"].as_u64() > Some(0))
        })
        .map(drop)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value, String> {
        Ok(self.call("GET", "/v1/status", None)?.1)
    }

    /// An HTTP request to the front.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        http(self.http, method, path, body.as_ref())
    }

    /// Opens a Ro session for `msisdn` with rating group 10; returns the Session-Id (fails unless 201).
    pub fn open_ro(&self, msisdn: &str) -> Result<String, String> {
        let (s, b) = self.call(
            "POST",
            "/v1/sessions",
            Some(json!({"app": "ro", "subscriber": {"type": "msisdn", "data": msisdn}, "rating_groups": [{"rating_group": 10, "requested": {}}]})),
        )?;
        if s != 201 {
            return Err(format!("open: {s} {b}"));
        }
        Ok(b["session_id"].as_str().unwrap_or_default().to_string())
    }

    /// Reports `secs` of use on rating group 10 and asks for more.
    pub fn update(&self, sid: &str, secs: u64) -> Result<(u16, Value), String> {
        self.call(
            "POST",
            &format!("/v1/sessions/{}/updates", enc(sid)),
            Some(json!({"used": [{"rating_group": 10, "used": {"time": secs}}]})),
        )
    }

    /// Ends a session reporting `secs` on rating group 10.
    pub fn terminate(&self, sid: &str, secs: u64) -> Result<(u16, Value), String> {
        self.call(
            "DELETE",
            &format!("/v1/sessions/{}", enc(sid)),
            Some(json!({"used": [{"rating_group": 10, "used": {"time": secs}}]})),
        )
    }

    /// The session as the node holds it.
    pub fn session(&self, sid: &str) -> Result<(u16, Value), String> {
        self.call("GET", &format!("/v1/sessions/{}", enc(sid)), None)
    }

    /// The node vanishes as a SIGKILLed process does (inproc: its runtime is torn down).
    pub fn kill(&mut self) {
        self.run.kill();
    }

    /// Stops the process (exec: SIGSTOP) or resumes it (SIGCONT); `Err` for inproc, which cannot pause.
    pub fn signal(&self, sig: &str) -> Result<(), String> {
        let pid = self.pid.ok_or("skipped: pausing a node needs real processes (--subject exec)")?;
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
        if ok { Ok(()) } else { Err(format!("kill -{sig} {pid} failed")) }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
        self.run.kill();
    }
}

impl super::Ctx<'_> {
    /// The run's store, for inproc nodes (exec nodes open the SQLite file themselves).
    pub fn store(&self) -> Result<AnyStore, String> {
        let mut s = self.store.lock().expect("store lock");
        if let Some(s) = &*s {
            return Ok(s.clone());
        }
        let store = match self.config.store {
            StoreKind::Memory => AnyStore::memory(),
            _ => AnyStore::Sqlite(
                charging_ra::store::SqliteStore::open(&self.dir.join("store.db"), Duration::from_millis(200))
                    .map_err(|e| e.to_string())?,
            ),
        };
        *s = Some(store.clone());
        Ok(store)
    }

    /// Starts the simulator.
    pub fn ocs(&self, toml: &str) -> Result<Ocs, String> {
        Ocs::start(self.config.subject, &self.config.binary, &self.dir, toml)
    }

    /// Starts a node.
    pub fn node(&self, spec: &NodeSpec) -> Result<Node, String> {
        Node::start(self, spec)
    }

    /// The specs of an `n`-node cluster on one simulator, replicating to the run's store: nodes `n1`…, each with a
    /// fixed Diameter port and the others as cluster members.
    pub fn cluster_specs(&self, n: usize, ocs: &Ocs) -> Result<Vec<NodeSpec>, String> {
        let ports = charging_ra::demo::free_ports(n).map_err(|e| e.to_string())?;
        let members: Vec<(String, SocketAddr)> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("n{}", i + 1), SocketAddr::from(([127, 0, 0, 1], *p))))
            .collect();
        Ok(members
            .iter()
            .map(|(id, addr)| {
                let mut spec = NodeSpec::new(id, ocs);
                spec.replicate = true;
                spec.diameter_port = addr.port();
                spec.cluster = members.clone();
                // Links between nodes come up (and, after a loss, reopen) within a few seconds.
                spec.watchdog = Duration::from_secs(1);
                spec
            })
            .collect())
    }

    /// The SQLite store file the nodes share.
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("store.db")
    }
}

/// Keeps the scenario's store handle (inproc).
pub type StoreSlot = Mutex<Option<AnyStore>>;
