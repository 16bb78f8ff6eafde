//! The SIP B2BUA: calls from sipp (a real UAC and UAS, Debian `sip-tester`) through nodes, charged on Ro; a node
//! SIGKILLed mid-call and the call carried on by another; glare, unknown dialogs and CSeq order with a raw socket.
//! The judge is the OCS ledger (one Ro session per call, I then T, the whole duration once) and the store (every
//! record of an ended call deleted).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use charging_ra::sip::message::Message;
use charging_ra::store::Store;

use super::cc::ensure;
use crate::harness::{Node, NodeSpec, Ocs, wait_for};
use crate::{Ctx, SKIPPED};

fn scenario_file(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "sipp", name].iter().collect();
    p.display().to_string()
}

fn require_sipp() -> Result<(), String> {
    match Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{SKIPPED}sipp (Debian package sip-tester) is not installed")),
    }
}

fn free_port() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

/// A sipp process, killed when dropped; its logs and traces land in the scenario's directory.
struct Sipp {
    child: Child,
    name: String,
}

impl Sipp {
    fn start(ctx: &Ctx, name: &str, scenario: &str, port: u16, args: &[String]) -> Result<Sipp, String> {
        let out = std::fs::File::create(ctx.dir.join(format!("sipp-{name}.out"))).map_err(|e| e.to_string())?;
        let child = Command::new("sipp")
            .current_dir(&ctx.dir)
            .args(["-sf", &scenario_file(scenario), "-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-nostdin", "-trace_err", "-trace_screen", "-buff_size", "4194304"])
            .args(args)
            .stdout(Stdio::from(out.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(out))
            .spawn()
            .map_err(|e| format!("starting sipp: {e}"))?;
        Ok(Sipp { child, name: name.into() })
    }

    /// Waits for sipp to exit; its status (0: every call succeeded).
    fn wait(&mut self, within: Duration) -> Result<i32, String> {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(s.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                return Err(format!("sipp {} did not finish within {within:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests as (CC-Request-Type, first label of the Origin-Host).
type Requests = Vec<(String, String)>;

/// The only Ro session the OCS saw (one call), with its requests and the seconds used.
fn the_call(ocs: &Ocs) -> Result<(Requests, u64, Value), String> {
    let sessions = ocs.sessions()?;
    ensure(sessions.len() == 1, "one Ro session for the call", &json!(sessions))?;
    let s = sessions[0].clone();
    let reqs = s["requests"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let host = r["origin_host"].as_str().unwrap_or_default();
                    (
                        r["request_type"].as_str().unwrap_or_default().to_string(),
                        host.split('.').next().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let used = s["rating_groups"]["100"]["reported_used"]["time"].as_u64().unwrap_or(0);
    Ok((reqs, used, s))
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Every record of ended calls is gone (leases aside).
fn records_deleted(ctx: &Ctx) -> Result<(), String> {
    let store = ctx.store()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    wait_for("the call's records to be deleted", Duration::from_secs(5), || {
        let left: Vec<String> = rt
            .block_on(store.scan_prefix("conformance/"))
            .ok()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with("conformance/node/") && !k.starts_with("conformance/deadline/"))
            .collect();
        left.is_empty().then_some(())
    })
}

/// Waits until both legs of a call are in the store (the call was answered, ACKed and replicated).
fn replicated(ctx: &Ctx) -> Result<(), String> {
    let store = ctx.store()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    wait_for("both legs of the call in the store", Duration::from_secs(10), || {
        let n = rt.block_on(store.scan_prefix("conformance/proto/sip/")).ok()?.len();
        (n >= 2).then_some(())
    })
}

/// A node with the B2BUA, sending leg B to `callee`.
fn sip_node(ctx: &Ctx, ocs: &Ocs, callee: u16) -> Result<Node, String> {
    let mut spec = NodeSpec::new("n1", ocs);
    spec.replicate = true;
    spec.sip = Some(SocketAddr::from(([127, 0, 0, 1], callee)));
    ctx.node(&spec)
}

/// Two cluster nodes with the B2BUA, leg B to `callee`.
fn sip_pair(ctx: &Ctx, ocs: &Ocs, callee: u16) -> Result<(Node, Node), String> {
    let mut specs = ctx.cluster_specs(2, ocs)?;
    for s in &mut specs {
        s.sip = Some(SocketAddr::from(([127, 0, 0, 1], callee)));
    }
    Ok((ctx.node(&specs[0])?, ctx.node(&specs[1])?))
}

/// The B2BUA's counters (`GET /v1/sip`).
fn sip_stats(n: &Node) -> Result<Value, String> {
    let (s, b) = n.call("GET", "/v1/sip", None)?;
    if s != 200 {
        return Err(format!("GET /v1/sip: {s} {b}"));
    }
    Ok(b["stats"].clone())
}

fn sip_addr(n: &Node) -> Result<SocketAddr, String> {
    n.sip.ok_or_else(|| "the node runs no B2BUA".to_string())
}

pub(super) fn call_charged(ctx: &mut Ctx) -> Result<(), String> {
    require_sipp()?;
    let ocs = ctx.ocs("")?;
    let callee = free_port()?;
    let node = sip_node(ctx, &ocs, callee)?;
    let mut uas = Sipp::start(ctx, "uas", "uas.xml", callee, &["-m".into(), "1".into()])?;
    let target = sip_addr(&node)?.to_string();
    let args: Vec<String> = ["-s", "bob", &target, "-m", "1", "-d", "700"].iter().map(|s| s.to_string()).collect();
    let mut uac = Sipp::start(ctx, "uac", "uac.xml", free_port()?, &args)?;
    ensure(uac.wait(Duration::from_secs(30))? == 0, "the caller's INVITE, re-INVITE and BYE succeed", &json!(null))?;
    ensure(uas.wait(Duration::from_secs(10))? == 0, "the callee saw the whole call", &json!(null))?;
    let (reqs, used, s) = the_call(&ocs)?;
    ensure(reqs == pairs(&[("initial", "n1"), ("termination", "n1")]), "CCR-I at the INVITE, CCR-T at the BYE", &s)?;
    // Answered, held 0.7 s, re-INVITE, held 0.7 s, BYE: 2 s (a started second counts).
    ensure((2..=3).contains(&used), "the call's duration reported in the CCR-T", &s)?;
    ocs.clean()?;
    records_deleted(ctx)
}

pub(super) fn failover_reinvite_and_bye(ctx: &mut Ctx) -> Result<(), String> {
    require_sipp()?;
    let ocs = ctx.ocs("")?;
    let callee = free_port()?;
    let (mut n1, n2) = sip_pair(ctx, &ocs, callee)?;
    let mut uas = Sipp::start(ctx, "uas", "uas.xml", callee, &["-m".into(), "1".into()])?;
    let (via, fo) = (sip_addr(&n1)?.to_string(), sip_addr(&n2)?.port().to_string());
    let args: Vec<String> = ["-s", "bob", &via, "-m", "1", "-d", "2500", "-key", "failover_port", &fo]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut uac = Sipp::start(ctx, "uac", "uac-failover.xml", free_port()?, &args)?;
    replicated(ctx)?;
    let killed = Instant::now();
    n1.kill();
    ensure(uac.wait(Duration::from_secs(40))? == 0, "re-INVITE and BYE sent to n2 succeed", &json!(null))?;
    ensure(uas.wait(Duration::from_secs(10))? == 0, "the callee got the re-INVITE and BYE from n2", &json!(null))?;
    ctx.measure(format!(
        "call ended through n2 {:.1} s after the SIGKILL (hold 2.5 s, lease 0.8 s)",
        killed.elapsed().as_secs_f64()
    ));
    let (reqs, used, s) = the_call(&ocs)?;
    ensure(reqs == pairs(&[("initial", "n1"), ("termination", "n2")]), "CCR-I from n1, CCR-T from the adopter", &s)?;
    ensure((5..=8).contains(&used), "the whole call charged once, by n2", &s)?;
    let st = sip_stats(&n2)?;
    ensure(st["adopted"] == 1 && st["ended"] == 1, "n2 adopted the call and ended it", &st)?;
    ocs.clean()?;
    records_deleted(ctx)
}

pub(super) fn failover_callee_bye(ctx: &mut Ctx) -> Result<(), String> {
    require_sipp()?;
    let ocs = ctx.ocs("")?;
    let callee = free_port()?;
    let (mut n1, n2) = sip_pair(ctx, &ocs, callee)?;
    let fo = sip_addr(&n2)?.port().to_string();
    let args: Vec<String> =
        ["-m", "1", "-d", "2500", "-key", "failover_host", "127.0.0.1", "-key", "failover_port", &fo]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut uas = Sipp::start(ctx, "uas", "uas-bye.xml", callee, &args)?;
    let via = sip_addr(&n1)?.to_string();
    let args: Vec<String> = ["-s", "bob", &via, "-m", "1"].iter().map(|s| s.to_string()).collect();
    let mut uac = Sipp::start(ctx, "uac", "uac-wait-bye.xml", free_port()?, &args)?;
    replicated(ctx)?;
    n1.kill();
    ensure(uas.wait(Duration::from_secs(40))? == 0, "the callee's BYE to n2 is answered 200", &json!(null))?;
    ensure(uac.wait(Duration::from_secs(10))? == 0, "the caller got the BYE, from n2", &json!(null))?;
    let (reqs, used, s) = the_call(&ocs)?;
    ensure(reqs == pairs(&[("initial", "n1"), ("termination", "n2")]), "CCR-T from the adopter", &s)?;
    ensure((2..=5).contains(&used), "the call's duration charged once", &s)?;
    let st = sip_stats(&n2)?;
    ensure(st["adopted"] == 1 && st["ended"] == 1, "n2 adopted the call (from leg B) and ended it", &st)?;
    ocs.clean()?;
    records_deleted(ctx)
}

/// A raw SIP endpoint for exact sequences.
struct Raw {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Raw {
    fn bind() -> Result<Raw, String> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        Ok(Raw { sock, addr })
    }

    fn send(&self, to: SocketAddr, text: &str) -> Result<(), String> {
        self.sock.send_to(text.replace('\n', "\r\n").as_bytes(), to).map(drop).map_err(|e| e.to_string())
    }

    /// The next message that is not a 100 Trying.
    fn recv(&self, what: &str) -> Result<Message, String> {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, _) = self.sock.recv_from(&mut buf).map_err(|e| format!("waiting for {what}: {e}"))?;
            let m = Message::parse(&buf[..n]).map_err(|e| format!("{what}: unparsable: {e}"))?;
            if m.code() != 100 {
                return Ok(m);
            }
        }
    }

    fn respond(&self, req: &Message, code: u16, tag: &str, sdp: bool) -> Result<(), String> {
        let mut r = req.response(code, "Whatever", Some(tag));
        if code < 300 && req.method() == "INVITE" {
            r.push("Contact", format!("<sip:raw@{}>", self.addr));
        }
        if sdp {
            r.body = bytes::Bytes::from_static(b"v=0\r\n");
            r.push("Content-Type", "application/sdp");
        }
        let to = req.top_via().map(|v| v.response_target()).ok_or("no Via")?;
        self.sock.send_to(&r.to_bytes(), format!("{}:{}", to.0, to.1)).map(drop).map_err(|e| e.to_string())
    }
}

fn status(m: &Message) -> Value {
    json!(format!("{} {} {}", m.code(), m.method(), String::from_utf8_lossy(&m.to_bytes())))
}

/// A call between two raw endpoints through `node`; returns the caller's dialog facts (call-id, from tag, to tag,
/// node contact) and the INVITE leg B got.
fn raw_call(caller: &Raw, callee: &Raw, node: SocketAddr) -> Result<(String, String, Message), String> {
    let call_id = format!("glare-{}", std::process::id());
    caller.send(
        node,
        &format!(
            "INVITE sip:bob@{node} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKg1\nFrom: <sip:a@{a}>;tag=ta\n\
             To: <sip:bob@{node}>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContact: <sip:a@{a}>\nMax-Forwards: 70\n\
             Content-Type: application/sdp\nContent-Length: 5\n\nv=0\r\n",
            a = caller.addr
        ),
    )?;
    let inv = callee.recv("the INVITE on leg B")?;
    callee.respond(&inv, 200, "tb", true)?;
    let ok = caller.recv("the 200 on leg A")?;
    ensure(ok.code() == 200, "the call is answered", &status(&ok))?;
    let a_tag = ok.to_tag().unwrap_or_default().to_string();
    caller.send(
        node,
        &format!(
            "ACK sip:b2bua@{node} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKg2\nFrom: <sip:a@{a}>;tag=ta\n\
             To: <sip:bob@{node}>;tag={a_tag}\nCall-ID: {call_id}\nCSeq: 1 ACK\nMax-Forwards: 70\nContent-Length: 0\n\n",
            a = caller.addr
        ),
    )?;
    let ack = callee.recv("the ACK on leg B")?;
    ensure(ack.method() == "ACK", "leg B is ACKed", &status(&ack))?;
    Ok((call_id, a_tag, inv))
}

fn in_dialog(
    caller: &Raw,
    node: SocketAddr,
    call_id: &str,
    a_tag: &str,
    method: &str,
    cseq: u32,
    branch: &str,
) -> Result<(), String> {
    caller.send(
        node,
        &format!(
            "{method} sip:b2bua@{node} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{branch}\nFrom: <sip:a@{a}>;tag=ta\n\
             To: <sip:bob@{node}>;tag={a_tag}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\nContact: <sip:a@{a}>\n\
             Max-Forwards: 70\nContent-Length: 0\n\n",
            a = caller.addr
        ),
    )
}

pub(super) fn reinvite_glare(ctx: &mut Ctx) -> Result<(), String> {
    let ocs = ctx.ocs("")?;
    let callee = Raw::bind()?;
    let node = sip_node(ctx, &ocs, callee.addr.port())?;
    let caller = Raw::bind()?;
    let n = sip_addr(&node)?;
    let (call_id, a_tag, inv) = raw_call(&caller, &callee, n)?;
    // Both sides re-INVITE at once (RFC 3261 §14.2).
    in_dialog(&caller, n, &call_id, &a_tag, "INVITE", 2, "g3")?;
    let fwd = callee.recv("the caller's re-INVITE on leg B")?;
    ensure(fwd.method() == "INVITE" && fwd.to_tag() == Some("tb"), "re-INVITE relayed on leg B", &status(&fwd))?;
    let b_call = inv.call_id().to_string();
    let b_tag = inv.from_tag().unwrap_or_default().to_string();
    callee.send(
        n,
        &format!(
            "INVITE sip:b2bua@{n} SIP/2.0\nVia: SIP/2.0/UDP {b};branch=z9hG4bKg4\nFrom: <sip:bob@{b}>;tag=tb\n\
             To: <sip:a@x>;tag={b_tag}\nCall-ID: {b_call}\nCSeq: 1 INVITE\nContact: <sip:raw@{b}>\nMax-Forwards: 70\n\
             Content-Length: 0\n\n",
            b = callee.addr
        ),
    )?;
    let r = callee.recv("the answer to the callee's re-INVITE")?;
    ensure(r.code() == 491, "491 Request Pending to the callee: the B2BUA's own re-INVITE is pending", &status(&r))?;
    callee.respond(&fwd, 491, "tb", false)?;
    let ack = callee.recv("the ACK of the 491 on leg B")?;
    ensure(ack.method() == "ACK", "the 491 is ACKed by the transaction (§17.1.1.3)", &status(&ack))?;
    let r = caller.recv("the answer to the caller's re-INVITE")?;
    ensure(r.code() == 491, "the callee's 491 relayed to the caller", &status(&r))?;
    // §12.2.2: a CSeq lower than the last one is out of order.
    in_dialog(&caller, n, &call_id, &a_tag, "INFO", 1, "g5")?;
    let r = caller.recv("the answer to an INFO with an old CSeq")?;
    ensure(r.code() == 500, "500 for a CSeq going backwards", &status(&r))?;
    in_dialog(&caller, n, &call_id, &a_tag, "BYE", 3, "g6")?;
    let r = caller.recv("the answer to the BYE")?;
    ensure(r.code() == 200, "BYE answered", &status(&r))?;
    let bye = callee.recv("the BYE on leg B")?;
    ensure(bye.method() == "BYE", "BYE relayed on leg B", &status(&bye))?;
    ocs.clean()?;
    records_deleted(ctx)
}

pub(super) fn unknown_dialog_481(ctx: &mut Ctx) -> Result<(), String> {
    let ocs = ctx.ocs("")?;
    let node = sip_node(ctx, &ocs, free_port()?)?;
    let n = sip_addr(&node)?;
    let caller = Raw::bind()?;
    in_dialog(&caller, n, "no-such-call", "no-such-tag", "BYE", 7, "u1")?;
    let r = caller.recv("the answer to a BYE for an unknown dialog")?;
    ensure(r.code() == 481, "481 Call/Transaction Does Not Exist", &status(&r))?;
    caller.send(n, "INVITE sip:x SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKu2\nCSeq: 1 INVITE\n\n")?;
    in_dialog(&caller, n, "no-such-call", "no-such-tag", "BYE", 8, "u3")?;
    let r = caller.recv("the answer after a malformed request")?;
    ensure(r.code() == 481, "the node is alive after a request it cannot answer", &status(&r))
}

pub(super) fn load(ctx: &mut Ctx) -> Result<(), String> {
    require_sipp()?;
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let calls = env("CONFORMANCE_SIP_LOAD_CALLS", 500);
    let rate = env("CONFORMANCE_SIP_LOAD_RATE", 500);
    let hold_ms: u64 = 1000;
    let ocs = ctx.ocs("max_requests_per_session = 4\n")?;
    let callee = free_port()?;
    let node = sip_node(ctx, &ocs, callee)?;
    let _uas = Sipp::start(ctx, "uas", "uas.xml", callee, &[])?;
    // The same load, sipp to sipp with nothing between them, first: the reference in the same run.
    let direct = format!("127.0.0.1:{callee}");
    let reference = run_load(ctx, "uac-direct", &direct, calls, rate, hold_ms)?;
    let through = run_load(ctx, "uac", &sip_addr(&node)?.to_string(), calls, rate, hold_ms)?;
    ctx.measure(format!(
        "{calls} calls offered at {rate}/s (INVITE/ACK/1 s hold/BYE): through the node, charged and replicated, \
         {through:.0} calls/s; sipp to sipp directly {reference:.0} calls/s"
    ));
    // The CCR-Ts follow the BYEs' 200s.
    let _ = wait_for("every call's CCR-T", Duration::from_secs(10), || {
        ocs.check().ok().filter(|c| c["sessions"]["terminated"] == calls)
    });
    let c = ocs.clean()?;
    ensure(c["sessions"]["terminated"] == calls, "every call's Ro session ended", &c)?;
    let st = sip_stats(&node)?;
    ensure(st["replicated"] == calls, "every call replicated once confirmed", &st)?;
    ctx.measure(format!("{} store batches for {calls} calls (create and delete)", st["store_writes"]));
    ensure(st["ended"] == calls && st["active"] == 0, "every call ended, none left open", &st)
}

/// One sipp load run toward `target`; the call rate it achieved (calls over the run's time less one hold).
fn run_load(ctx: &Ctx, name: &str, target: &str, calls: u64, rate: u64, hold_ms: u64) -> Result<f64, String> {
    let (m, r, d) = (calls.to_string(), rate.to_string(), hold_ms.to_string());
    // Every call is held, so that it is confirmed and replicated before its BYE, as a real call is.
    let args: Vec<String> =
        ["-s", "bob", target, "-m", &m, "-r", &r, "-l", "8000", "-d", &d].iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    let mut uac = Sipp::start(ctx, name, "uac-load.xml", free_port()?, &args)?;
    let code = uac.wait(Duration::from_secs(300))?;
    let secs = started.elapsed().as_secs_f64() - hold_ms as f64 / 1000.0;
    ensure(code == 0, &format!("every call of the {name} load run succeeded"), &json!(code))?;
    Ok(calls as f64 / secs)
}

pub(super) fn asr_after_failover(ctx: &mut Ctx) -> Result<(), String> {
    let ocs = ctx.ocs("")?;
    let callee = Raw::bind()?;
    let (mut n1, n2) = sip_pair(ctx, &ocs, callee.addr.port())?;
    let caller = Raw::bind()?;
    let (_, _, _) = raw_call(&caller, &callee, sip_addr(&n1)?)?;
    replicated(ctx)?;
    n1.kill();
    // NodeSpec's lease lasts 800 ms.
    std::thread::sleep(Duration::from_millis(1100));
    let sid = ocs.sessions()?.first().and_then(|s| s["session_id"].as_str().map(str::to_string)).ok_or("no session")?;
    // The OCS aborts the session over its connection to n2 (Destination-Host still n1): n2 adopts the Ro session,
    // answers the ASR, and the call goes with it.
    let (s, b) = crate::harness::http(
        ocs.control,
        "POST",
        "/v1/asr",
        Some(&json!({"session_id": sid, "via": "n2.charging.localdomain"})),
    )?;
    ensure(s == 200, "ASA", &b)?;
    for (side, raw) in [("caller", &caller), ("callee", &callee)] {
        let bye = raw.recv(&format!("the BYE to the {side}"))?;
        ensure(bye.method() == "BYE", &format!("BYE to the {side}"), &status(&bye))?;
        raw.respond(&bye, 200, "x", false)?;
    }
    let _ =
        wait_for("the CCR-T", Duration::from_secs(5), || ocs.check().ok().filter(|c| c["sessions"]["terminated"] == 1));
    let (reqs, _, s) = the_call(&ocs)?;
    ensure(reqs.last() == Some(&("termination".into(), "n2".into())), "CCR-T from the adopter", &s)?;
    // The adopter's B2BUA ends the call and its CCR-T carries the call's time (over a second by the ASR).
    let used = s["requests"].as_array().and_then(|r| r.last()).and_then(|r| r["used"]["time"].as_u64());
    ensure(used.is_some_and(|t| t >= 1), "the CCR-T reports the time the call lasted", &s)?;
    let st = sip_stats(&n2)?;
    ensure(st["adopted"] == 1, "n2 adopted the call with its Ro session", &st)?;
    ocs.clean()?;
    records_deleted(ctx)
}

pub(super) fn quota_on_a_survivor(ctx: &mut Ctx) -> Result<(), String> {
    // Two seconds granted at a time; nobody sends anything in the call after its node dies.
    let ocs = ctx.ocs("[[ro.rating_groups]]\nrating_group = 100\ngrant = { time = 2 }\n")?;
    let callee = Raw::bind()?;
    let (mut n1, n2) = sip_pair(ctx, &ocs, callee.addr.port())?;
    let caller = Raw::bind()?;
    let (call_id, a_tag, _) = raw_call(&caller, &callee, sip_addr(&n1)?)?;
    let answered = Instant::now();
    replicated(ctx)?;
    n1.kill();
    let sid = ocs.sessions()?.first().and_then(|s| s["session_id"].as_str().map(str::to_string)).ok_or("no session")?;
    // The quota runs out 2 s after the answer; the lease (800 ms) has gone by then: a survivor reports it.
    let updated = wait_for("a CCR-U from n2 with no SIP event", Duration::from_secs(8), || {
        let l = ocs.ledger(&sid).ok()?;
        let reqs = l["requests"].as_array()?.clone();
        reqs.iter()
            .any(|r| r["request_type"] == "update" && r["origin_host"].as_str().is_some_and(|h| h.starts_with("n2.")))
            .then_some(())
    });
    ensure(updated.is_ok(), "the dead node's quota timer fired on the survivor", &ocs.ledger(&sid)?)?;
    ctx.measure(format!("first CCR-U from n2 {:.1} s after the answer (quota 2 s)", answered.elapsed().as_secs_f64()));
    let n = sip_addr(&n2)?;
    in_dialog(&caller, n, &call_id, &a_tag, "BYE", 2, "q9")?;
    let r = caller.recv("the answer to the BYE")?;
    ensure(r.code() == 200, "BYE through n2", &status(&r))?;
    let bye = callee.recv("the BYE on leg B")?;
    callee.respond(&bye, 200, "x", false)?;
    let _ =
        wait_for("the CCR-T", Duration::from_secs(5), || ocs.check().ok().filter(|c| c["sessions"]["terminated"] == 1));
    let (reqs, used, s) = the_call(&ocs)?;
    ensure(reqs.last() == Some(&("termination".into(), "n2".into())), "CCR-T from n2", &s)?;
    let secs = answered.elapsed().as_secs();
    ensure(used >= secs && used <= secs + 2, "the whole call reported once", &s)?;
    ocs.clean()?;
    records_deleted(ctx)
}
