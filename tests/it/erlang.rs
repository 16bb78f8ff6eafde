//! Against Erlang/OTP's `diameter` application (Debian `erlang-base`, `erlang-diameter`, `erlang-dev`), an
//! independent Diameter stack with a strict dictionary-driven decoder, using bench/erlang/ (the credit-control
//! dictionary and the module that serves both ends of bench/references.sh): its client against our OCS simulator;
//! our engine against its server, whose decoder reports any AVP our requests carry outside RFC 4006 and TS 32.299's
//! grammar, and which also sends RAR and ASR; and the base protocol with it (CER/CEA, DWR/DWA, DPR/DPA). Every run
//! is captured with tshark. Skipped, saying so, where Erlang is not installed; CI installs it. `cargo test erlang`
//! selects them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use charging_ra::api::{App, AppSettings, Engine, EngineConfig};
use charging_ra::cc::{CcEvent, CcState, Ccfh};
use charging_ra::codec::AppId;
use charging_ra::node::DiameterNode;
use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
use charging_ra::peer::{Application, DisconnectCause};

use crate::engine::{msisdn, rg, used};
use crate::freediameter::{capture, free_port};
use crate::stack::{OCS_REALM, client_config, open, wait_for};

fn available(test: &str) -> bool {
    let hrl = std::fs::read_dir("/usr/lib/erlang/lib").ok().into_iter().flatten().flatten().any(|d| {
        d.file_name().to_string_lossy().starts_with("diameter-") && d.path().join("include/diameter.hrl").exists()
    });
    let ok = crate::have("erl") && crate::have("erlc") && crate::have("diameterc") && hrl;
    if !ok {
        crate::skip(
            test,
            "Erlang/OTP diameter not installed (apt-get install erlang-base erlang-diameter erlang-dev); CI has it",
        );
    }
    ok
}

/// Compiles bench/erlang/ (the dictionary, then the module) into `dir`.
fn build(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/erlang");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("runs");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new("diameterc").arg("-o").arg(dir).arg(src.join("cc_bench_dict.dia")));
    run(Command::new("erlc").arg("-o").arg(dir).arg(dir.join("cc_bench_dict.erl")).arg(src.join("cc_bench.erl")));
}

/// An Erlang VM running bench/erlang's credit-control server, killed when dropped; what it prints goes to `log`.
struct ErlangOcs {
    child: Child,
    log: PathBuf,
}

impl ErlangOcs {
    /// `mode`: "answer" (CCA only) or "reauth" (also RAR and ASR: bench/erlang/cc_bench.erl).
    fn start(dir: &Path, port: u16, mode: &str) -> ErlangOcs {
        let log = dir.join("erlang-ocs.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("erl")
            .args(["-noshell", "-pa"])
            .arg(dir)
            .args(["-run", "cc_bench", "server", &port.to_string(), mode])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("erl starts");
        let ocs = ErlangOcs { child, log };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return ocs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the Erlang OCS did not listen on {port}: {}", ocs.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 5 s for `line` in what the server printed.
    async fn printed(&self, line: &str) {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.log().lines().any(|l| l == line) {
            assert!(tokio::time::Instant::now() < end, "the Erlang OCS never printed {line:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Our engine, open with the Erlang OCS on `port`.
async fn engine_against(port: u16, ocs: &ErlangOcs) -> Engine {
    let mut node = client_config(
        "as1.test.localdomain",
        &[("ocs.localdomain", ([127, 0, 0, 1], port).into(), 1)],
        Duration::from_secs(6),
    );
    node.router.local.applications = vec![Application::Auth(AppId::CREDIT_CONTROL)];
    let mut ro = AppSettings::new(OCS_REALM);
    ro.ccfh = Ccfh::Terminate;
    let e = Engine::start(EngineConfig::new(node, ro, AppSettings::new(OCS_REALM))).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !e.node_status().await.is_some_and(|s| open(&s, 0)) {
        assert!(tokio::time::Instant::now() < end, "no CER/CEA with Erlang: {}", ocs.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e
}

impl Drop for ErlangOcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test against Erlang's server: its directory, the server on `port` and the capture of that port.
struct Run {
    dir: PathBuf,
    port: u16,
    ocs: ErlangOcs,
    capture: Option<charging_ra::wirecheck::Capture>,
}

impl Run {
    /// `None` (the test skipped, saying so) where Erlang is not installed.
    fn start(test: &str, mode: &str) -> Option<Run> {
        if !available(test) {
            return None;
        }
        let dir = crate::wire::tempdir(test);
        build(&dir);
        let port = free_port();
        let ocs = ErlangOcs::start(&dir, port, mode);
        let capture = capture(&dir, &[port]);
        Some(Run { dir, port, ocs, capture })
    }

    /// The end of the test: Erlang's decoder found nothing wrong in what we sent, and the capture of the exchange
    /// (at least `frames` Diameter messages) decoded clean in tshark.
    fn finish(self, frames: usize) {
        let log = self.ocs.log();
        assert!(!log.contains("decode errors"), "Erlang's decoder objected to our messages:\n{log}");
        drop(self.ocs);
        clean(self.capture, frames);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Erlang's client sends CCR-I then CCR-Us, ten sessions at a time for a second, to the simulator: every answer
/// decodes in Erlang's `diameter` (an answer with an AVP it cannot place would be discarded and the call fail) and
/// is a 2001, and every frame of the run decodes clean in tshark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erlang_diameter_client_is_answered_by_the_ocs_simulator() {
    if !available("the_erlang_diameter_client_is_answered_by_the_ocs_simulator") {
        return;
    }
    let dir = crate::wire::tempdir("erlang-client");
    build(&dir);
    let port = free_port();
    // The identities bench/erlang's client expects of the simulator.
    let cfg = OcsServerConfig::new(SocketAddr::from(([127, 0, 0, 1], port)), "ocs.localdomain", "localdomain");
    let sim = OcsServer::start(cfg).await.unwrap();
    let capture = capture(&dir, &[port]);
    let run_dir = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("erl")
            .args(["-noshell", "-pa"])
            .arg(&run_dir)
            .args(["-run", "cc_bench", "client", &port.to_string(), "10", "1"])
            .output()
            .expect("erl runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(", 0 not 2001\n"), "answers Erlang could not read, or not 2001: {stdout}");
    let answers: u64 = stdout
        .split(", ")
        .find_map(|w| w.strip_suffix(" answers in 1 s").and_then(|n| n.rsplit(' ').next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no count of answers: {stdout}"));
    assert!(answers >= 100, "{stdout}");
    assert!(sim.stop().await.clean);
    clean(capture, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Our engine opens, updates and ends an Ro session against Erlang's server: CER/CEA with a stack that checks
/// the capabilities, and CCRs its strict decoder finds nothing to object to (it prints what it finds; an error
/// would also turn the answer into a 5001 with a Failed-AVP, which the engine reports as the server's refusal).
#[tokio::test]
async fn the_engine_charges_against_an_erlang_diameter_ocs() {
    let Some(run) = Run::start("the_engine_charges_against_an_erlang_diameter_ocs", "answer") else { return };
    let ocs = &run.ocs;
    let e = engine_against(run.port, ocs).await;
    let o = e.open_session(App::Ro, msisdn("46701"), None, vec![rg(10)]).await;
    let o = o.unwrap_or_else(|err| panic!("CCR-I: {err}\n{}", ocs.log()));
    assert_eq!((o.result_code, o.state), (Some(2001), CcState::Open), "{}", ocs.log());
    assert_eq!(o.granted.first().and_then(|g| g.granted.time), Some(60), "the grant Erlang sent: {o:?}");
    for _ in 0..2 {
        let u = e.update(&o.session_id, vec![used(10, 30)], vec![], None).await;
        let u = u.unwrap_or_else(|err| panic!("CCR-U: {err}\n{}", ocs.log()));
        assert_eq!(u.result_code, Some(2001), "{}", ocs.log());
    }
    let t = e.terminate(&o.session_id, vec![used(10, 5)]).await;
    let t = t.unwrap_or_else(|err| panic!("CCR-T: {err}\n{}", ocs.log()));
    assert_eq!((t.result_code, t.state), (Some(2001), CcState::Idle));
    e.stop().await;
    run.finish(10);
}

/// Erlang's server asks for re-authorization after the CCR-I (RAR) and aborts the session after the second CCR-U
/// (ASR): the engine answers both with 2001, sends the CCR-U the RAR asks for (RFC 4006 §5.5) and tells the service,
/// and ends the session with a CCR-T after the ASR (§5.6). A RAR for an unknown session gets 5002.
#[tokio::test]
async fn the_engine_answers_an_erlang_ocs_rar_and_asr() {
    let Some(run) = Run::start("the_engine_answers_an_erlang_ocs_rar_and_asr", "reauth") else { return };
    let ocs = &run.ocs;
    let e = engine_against(run.port, ocs).await;
    let mut events = e.events().await.unwrap();
    let o = e.open_session(App::Ro, msisdn("46702"), None, vec![rg(10)]).await;
    let sid = o.unwrap_or_else(|err| panic!("CCR-I: {err}\n{}", ocs.log())).session_id;
    ocs.printed("RAR answered 2001").await;
    ocs.printed("CCR 2 1").await;
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    assert_eq!((ev.session_id.as_str(), ev.event), (sid.as_str(), CcEvent::ReAuthRequested));
    let u = e.update(&sid, vec![used(10, 30)], vec![], None).await;
    assert_eq!(u.unwrap_or_else(|err| panic!("CCR-U: {err}\n{}", ocs.log())).result_code, Some(2001));
    ocs.printed("ASR answered 2001").await;
    ocs.printed("CCR 3 3").await;
    // A RAR for a session the engine never had: 5002, in an RAA Erlang reads (RFC 6733 §8.3).
    ocs.printed("unknown RAR answered 5002").await;
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while e.session(&sid).await.is_some() {
        assert!(tokio::time::Instant::now() < end, "the session did not end after the ASR:\n{}", ocs.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.stop().await;
    run.finish(14);
}

/// The base protocol with Erlang's stack: CER/CEA, our DWRs answered (Tw 1 s here, below RFC 3539's floor of 6 s
/// to keep the test short), and DPR/DPA when we leave.
#[tokio::test]
async fn erlang_diameter_peer_cer_dwr_and_dpr() {
    let Some(run) = Run::start("erlang_diameter_peer_cer_dwr_and_dpr", "answer") else { return };
    let cfg = client_config(
        "as1.test.localdomain",
        &[("ocs.localdomain", ([127, 0, 0, 1], run.port).into(), 1)],
        Duration::from_secs(1),
    );
    let (node, _) = DiameterNode::start(cfg).await.unwrap();
    let st = wait_for(&node, Duration::from_secs(10), "CER/CEA with Erlang", |s| open(s, 0)).await;
    assert_eq!(st.peers[0].identity.as_deref(), Some("ocs.localdomain"), "{}", run.ocs.log());
    let st = wait_for(&node, Duration::from_secs(10), "DWAs from Erlang", |s| {
        s.peers[0].metrics.messages_in.get("DWA").is_some_and(|&n| n >= 2)
    })
    .await;
    assert!(st.peers[0].available, "{st:#?}");
    let fin = node.stop(DisconnectCause::Rebooting).await.unwrap();
    assert_eq!(fin.peers[0].metrics.messages_out.get("DPR"), Some(&1));
    assert_eq!(fin.peers[0].metrics.messages_in.get("DPA"), Some(&1), "Erlang answered our DPR: {fin:#?}");
    run.finish(6);
}

/// A finished capture: every frame decoded clean in tshark, and at least `frames` Diameter messages.
fn clean(capture: Option<charging_ra::wirecheck::Capture>, frames: usize) {
    if let Some(c) = capture {
        let v = c.finish().unwrap();
        assert!(v.problems.is_empty(), "tshark found problems in the capture:\n{}", v.problems.join("\n"));
        assert!(v.diameter_frames >= frames, "the capture holds the exchange ({} frames)", v.diameter_frames);
    }
}
