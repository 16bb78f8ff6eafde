//! Credit control (RFC 4006 §7 client state machine, TS 32.299 Ro, TS 29.212 Gx) over the wire, judged by the
//! simulator's ledger.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Ctx;
use crate::harness::{Node, NodeSpec, Ocs, enc, wait_for};

/// The simulator with `ocs_toml`, and one node set up by `tune`.
pub(super) fn setup(ctx: &Ctx, ocs_toml: &str, tune: impl FnOnce(&mut NodeSpec)) -> Result<(Ocs, Node), String> {
    let ocs = ctx.ocs(ocs_toml)?;
    let mut spec = NodeSpec::new("n1", &ocs);
    tune(&mut spec);
    let node = ctx.node(&spec)?;
    Ok((ocs, node))
}

/// Like [`setup`], with the fault proxy between the node and the simulator.
pub(super) fn setup_behind_proxy(
    ctx: &Ctx,
    ocs_toml: &str,
    tune: impl FnOnce(&mut NodeSpec),
) -> Result<(Ocs, crate::proxy::Proxy, Node), String> {
    let ocs = ctx.ocs(ocs_toml)?;
    let proxy = ctx.proxy(ocs.diameter)?;
    let mut spec = NodeSpec::new("n1", &ocs);
    spec.peers = vec![(crate::harness::OCS_HOST.into(), proxy.addr, 1)];
    tune(&mut spec);
    let node = ctx.node(&spec)?;
    Ok((ocs, proxy, node))
}

/// Fails unless `cond`, with the message and the value shown.
pub(super) fn ensure(cond: bool, what: &str, v: &Value) -> Result<(), String> {
    if cond { Ok(()) } else { Err(format!("{what}: {v}")) }
}

/// The requests the OCS received for a session: (type, number, T flag, Origin-Host).
pub(super) fn received(ocs: &Ocs, sid: &str) -> Result<Vec<(String, u64, bool, String)>, String> {
    let l = ocs.ledger(sid)?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok(l["requests"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let number = r["number"].as_u64().unwrap_or(u64::MAX);
                    (text(&r["request_type"]), number, r["t_flag"].as_bool().unwrap_or(false), text(&r["origin_host"]))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The requests the OCS received for a session: (type, number, T flag).
pub(super) fn requests(ocs: &Ocs, sid: &str) -> Result<Vec<(String, u64, bool)>, String> {
    Ok(received(ocs, sid)?.into_iter().map(|(t, n, tf, _)| (t, n, tf)).collect())
}

/// RFC 4006 §5.1 as the OCS saw it: without the T flag the numbers run 0, 1, 2… with none repeated or skipped; a
/// T-flagged request repeats a number already sent. Returns the numbers sent without the T flag.
pub(super) fn numbering(seen: &[(String, u64, bool)]) -> Result<Vec<u64>, String> {
    let mut fresh = Vec::new();
    for (t, n, retransmitted) in seen {
        if *retransmitted {
            if !fresh.contains(n) {
                return Err(format!("{t} {n} with the T flag was never sent before: {seen:?}"));
            }
        } else if *n != fresh.len() as u64 {
            return Err(format!("{t} {n} without the T flag after {fresh:?}: {seen:?}"));
        } else {
            fresh.push(*n);
        }
    }
    Ok(fresh)
}

fn drop_rule(request_type: &str, number: Option<u32>) -> Value {
    json!({"command": "CCR", "request_type": request_type, "request_number": number, "retransmission": false, "times": 1, "action": "drop"})
}

pub(super) fn ro_session(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let sid = node.open_ro("46700000001")?;
    let (s, b) = node.update(&sid, 30)?;
    ensure(s == 200 && b["state"] == "Open", "update", &b)?;
    let (s, b) = node.terminate(&sid, 10)?;
    ensure(s == 200 && b["state"] == "Idle", "terminate", &b)?;
    let seen = requests(&ocs, &sid)?;
    numbering(&seen)?;
    let want = [("initial", 0), ("update", 1), ("termination", 2)];
    let got: Vec<(&str, u64)> = seen.iter().map(|(t, n, _)| (t.as_str(), *n)).collect();
    if got != want {
        return Err(format!("requests seen by the OCS: {got:?}"));
    }
    let c = ocs.clean()?;
    ensure(c["units"]["reported_used"]["time"] == 40, "usage reported once", &c)
}

pub(super) fn gx_session(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let (s, b) = node.call(
        "POST",
        "/v1/sessions",
        Some(json!({"app": "gx", "subscriber": {"type": "imsi", "data": "240010000000001"}, "rating_groups": []})),
    )?;
    ensure(s == 201 && b["rules"].as_array().is_some_and(|r| !r.is_empty()), "Gx CCA-I installs rules", &b)?;
    let sid = b["session_id"].as_str().unwrap_or_default().to_string();
    let (s, b) = node.call(
        "POST",
        &format!("/v1/sessions/{}/updates", enc(&sid)),
        Some(json!({"used": [], "avps": [{"name": "Event-Trigger", "value": 13}]})),
    )?;
    ensure(s == 200, "Gx CCR-U with an Event-Trigger", &b)?;
    let (s, b) = node.call("DELETE", &format!("/v1/sessions/{}", enc(&sid)), None)?;
    ensure(s == 200, "Gx CCR-T", &b)?;
    let l = ocs.ledger(&sid)?;
    ensure(
        l["gx"]["event_triggers_reported"].as_array().is_some_and(|t| t.contains(&json!(13))),
        "trigger reported",
        &l,
    )?;
    ocs.clean().map(drop)
}

pub(super) fn event_direct_debit(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let (s, b) = node.call(
        "POST",
        "/v1/events",
        Some(json!({"subscriber": {"type": "msisdn", "data": "46700000002"}, "service_context": "32274@3gpp.org", "requested_action": "direct_debiting", "requested": {"units": 1}})),
    )?;
    ensure(s == 200 && b["result_code"] == 2001, "CCR-E DIRECT_DEBITING", &b)?;
    let c = ocs.clean()?;
    ensure(c["sessions"]["events"] == 1, "one event in the ledger", &c)
}

pub(super) fn event_price_enquiry(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "[ro]\nevent_price = 7\n", |_| {})?;
    let (s, b) = node.call(
        "POST",
        "/v1/events",
        Some(json!({"subscriber": {"type": "msisdn", "data": "46700000003"}, "requested_action": "price_enquiry", "requested": {"units": 3}})),
    )?;
    ensure(s == 200 && b["event"]["cost"] == 21, "PRICE_ENQUIRY: 3 units at 7 cost 21", &b)?;
    ocs.clean().map(drop)
}

/// Tx expires in PendingI: CCFH decides.
fn pending_i(ctx: &mut Ctx, ccfh: &'static str) -> Result<(Ocs, Node, Value, u16), String> {
    let (ocs, node) = setup(ctx, "", |s| {
        s.tx = Duration::from_millis(800);
        s.ccfh = ccfh;
    })?;
    ocs.fault(drop_rule("initial", None))?;
    let (s, b) = node.call(
        "POST",
        "/v1/sessions",
        Some(json!({"app": "ro", "subscriber": {"type": "msisdn", "data": "46700000004"}, "rating_groups": [{"rating_group": 10, "requested": {}}]})),
    )?;
    Ok((ocs, node, b, s))
}

pub(super) fn tx_pending_i_terminate(ctx: &mut Ctx) -> Result<(), String> {
    let (_ocs, _node, b, s) = pending_i(ctx, "TERMINATE")?;
    ensure(s == 503 && b["ccfh"].is_string(), "CCFH TERMINATE ends the service", &b)
}

pub(super) fn tx_pending_i_continue(ctx: &mut Ctx) -> Result<(), String> {
    let (_ocs, _node, b, s) = pending_i(ctx, "CONTINUE")?;
    ensure(s == 201 && b["ccfh"].is_string(), "CCFH CONTINUE lets the service go on, saying why", &b)
}

/// Tx expires in PendingU with the server's CCFH (`ccfh` in the simulator's answers).
fn pending_u(ctx: &mut Ctx, server_ccfh: i32) -> Result<(Ocs, Node, String, u16, Value), String> {
    let (ocs, node) = setup(ctx, &format!("[ro]\nccfh = {server_ccfh}\n"), |s| s.tx = Duration::from_millis(800))?;
    let sid = node.open_ro("46700000005")?;
    ocs.fault(drop_rule("update", Some(1)))?;
    let (s, b) = node.update(&sid, 20)?;
    Ok((ocs, node, sid, s, b))
}

pub(super) fn tx_pending_u_terminate(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node, sid, s, b) = pending_u(ctx, 0)?;
    ensure(s == 503, "CCFH TERMINATE from the server ends the service", &b)?;
    // The session is over on the client; whatever it sent, the OCS saw each number once.
    wait_for("the session to end", Duration::from_secs(5), || node.session(&sid).ok().filter(|(s, _)| *s == 404))?;
    ocs.clean().map(drop)
}

pub(super) fn tx_pending_u_continue(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node, sid, s, b) = pending_u(ctx, 1)?;
    ensure(s == 200 && b["ccfh"].is_string(), "CCFH CONTINUE from the server: the service goes on", &b)?;
    // No alternate server to send to: the service goes on without credit control and the session ends on the
    // client (RFC 4006 §7, PendingU, failure to send with CCFH CONTINUE -> Idle).
    wait_for("credit control to end", Duration::from_secs(5), || node.session(&sid).ok().filter(|(s, _)| *s == 404))?;
    ocs.clean().map(drop)
}

pub(super) fn tx_pending_u_retry_and_terminate(ctx: &mut Ctx) -> Result<(), String> {
    // RFC 4006 §7: Tx expiry in PendingU with RETRY_AND_TERMINATE grants the service while the request is retried;
    // with no alternate server the retry fails and the service ends.
    let (ocs, node, sid, s, b) = pending_u(ctx, 2)?;
    ensure(s == 200 && b["state"] == "PendingU" && b["ccfh"].is_string(), "service granted while retrying", &b)?;
    wait_for("the service to end", Duration::from_secs(5), || node.session(&sid).ok().filter(|(s, _)| *s == 404))?;
    ocs.clean().map(drop)
}

pub(super) fn tx_pending_t(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |s| s.tx = Duration::from_millis(800))?;
    let sid = node.open_ro("46700000006")?;
    ocs.fault(drop_rule("termination", None))?;
    let (s, b) = node.terminate(&sid, 5)?;
    // RFC 4006 §7: in PendingT a Tx expiry ends the session whatever CCFH says.
    ensure(s == 200 || s == 503, "CCR-T without answer still ends", &b)?;
    let (s, _) = node.session(&sid)?;
    ensure(s == 404, "the session is gone", &json!(s))?;
    ocs.clean().map(drop)
}

pub(super) fn rar_open(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let sid = node.open_ro("46700000007")?;
    let (s, b) = ocs.rar(json!({"session_id": sid, "rating_groups": [10]}))?;
    ensure(s == 200 && b["result_code"] == 2001, "RAA 2001", &b)?;
    // RFC 4006 §5.5: the RAA is followed by a CCR-U reporting the rating group.
    wait_for("the CCR-U after the RAR", Duration::from_secs(5), || {
        requests(&ocs, &sid).ok().filter(|r| r.iter().any(|(t, n, _)| t == "update" && *n == 1))
    })?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn rar_pending_u(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |s| s.tx = Duration::from_secs(5))?;
    let sid = node.open_ro("46700000008")?;
    ocs.fault(json!({"command": "CCR", "request_type": "update", "request_number": 1, "times": 1, "action": {"delay": "1500ms"}}))?;
    let http = node.http;
    let sid2 = sid.clone();
    let pending = std::thread::spawn(move || {
        crate::harness::http(
            http,
            "POST",
            &format!("/v1/sessions/{}/updates", enc(&sid2)),
            Some(&json!({"used": [{"rating_group": 10, "used": {"time": 3}}]})),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let (s, b) = ocs.rar(json!({"session_id": sid, "rating_groups": [10]}))?;
    ensure(s == 200 && b["result_code"] == 2001, "RAR in PendingU answered 2001", &b)?;
    let (s, b) = pending.join().map_err(|_| "update thread panicked")??;
    ensure(s == 200, "the delayed update", &b)?;
    // The re-authorization follows the outstanding request: CCR-U 2.
    wait_for("CCR-U 2 after the RAR", Duration::from_secs(5), || {
        requests(&ocs, &sid).ok().filter(|r| r.iter().any(|(t, n, _)| t == "update" && *n == 2))
    })?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn asr_open(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let sid = node.open_ro("46700000009")?;
    let (s, b) = ocs.asr(&sid)?;
    ensure(s == 200 && b["result_code"] == 2001, "ASA 2001", &b)?;
    // RFC 4006 §5.6: the client ends the session with a CCR-T.
    wait_for("the CCR-T after the ASR", Duration::from_secs(5), || {
        requests(&ocs, &sid).ok().filter(|r| r.iter().any(|(t, _, _)| t == "termination"))
    })?;
    wait_for("the session to end", Duration::from_secs(5), || node.session(&sid).ok().filter(|(s, _)| *s == 404))?;
    ocs.clean().map(drop)
}

fn final_units(ctx: &mut Ctx, action: &str) -> Result<(Ocs, Node, String, Value), String> {
    let toml = format!(
        "[[subscribers]]\nid = \"46700000010\"\nbalance = {{ time = 60 }}\n\n[ro.default_rating_group]\ngrant = {{ time = 300 }}\nfinal_unit_action = \"{action}\"\n"
    );
    let (ocs, node) = setup(ctx, &toml, |_| {})?;
    let (s, b) = node.call(
        "POST",
        "/v1/sessions",
        Some(json!({"app": "ro", "subscriber": {"type": "msisdn", "data": "46700000010"}, "rating_groups": [{"rating_group": 10, "requested": {}}]})),
    )?;
    ensure(s == 201, "open", &b)?;
    let sid = b["session_id"].as_str().unwrap_or_default().to_string();
    Ok((ocs, node, sid, b))
}

pub(super) fn fui_terminate(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node, sid, b) = final_units(ctx, "TERMINATE")?;
    let g = &b["granted"][0];
    ensure(g["granted"]["time"] == 60 && g["final_unit"] == "Terminate", "the last 60 s, FUI TERMINATE", &b)?;
    // Using them up: the OCS has nothing more (4012 on the rating group, or on the request).
    let (s, b) = node.update(&sid, 60)?;
    let denied =
        b["granted"].as_array().is_some_and(|g| g.iter().any(|x| x["result_code"] == 4012)) || b["result_code"] == 4012;
    ensure(denied || s == 403, "4012 once the final units are used", &b)?;
    let _ = node.terminate(&sid, 0);
    ocs.clean().map(drop)
}

pub(super) fn fui_redirect(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node, sid, b) = final_units(ctx, "REDIRECT")?;
    let fu = &b["granted"][0]["final_unit"];
    ensure(fu["Redirect"].as_str().is_some_and(|a| a.contains("topup")), "FUI REDIRECT with the top-up address", &b)?;
    node.terminate(&sid, 60)?;
    ocs.clean().map(drop)
}

pub(super) fn validity_time(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "[ro.default_rating_group]\nvalidity_time = \"1s\"\n", |_| {})?;
    let sid = node.open_ro("46700000011")?;
    // RFC 4006 §5.1.2: when Validity-Time expires the client asks again (Reporting-Reason VALIDITY_TIME), on its own.
    wait_for("the CCR-U the Validity-Time asks for", Duration::from_secs(5), || {
        requests(&ocs, &sid).ok().filter(|r| r.iter().any(|(t, _, _)| t == "update"))
    })?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn idempotent_update(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let sid = node.open_ro("46700000012")?;
    let body = json!({"used": [{"rating_group": 10, "used": {"time": 15}}], "idempotency_key": "minute-1"});
    let path = format!("/v1/sessions/{}/updates", enc(&sid));
    let (_, first) = node.call("POST", &path, Some(body.clone()))?;
    let (_, again) = node.call("POST", &path, Some(body))?;
    ensure(first == again, "the same outcome for the same key", &json!([first, again]))?;
    let updates = requests(&ocs, &sid)?.into_iter().filter(|(t, _, _)| t == "update").count();
    ensure(updates == 1, "one CCR-U for a repeated key", &json!(updates))?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn unknown_session(ctx: &mut Ctx) -> Result<(), String> {
    let (_ocs, node) = setup(ctx, "", |_| {})?;
    let (s, b) = node.update("nobody;1;2", 1)?;
    ensure(s == 404, "an update for an unknown session is 404", &b)
}

pub(super) fn gx_rar_rules(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let (s, b) = node.call(
        "POST",
        "/v1/sessions",
        Some(json!({"app": "gx", "subscriber": {"type": "imsi", "data": "240010000000002"}, "rating_groups": []})),
    )?;
    ensure(s == 201, "Gx open", &b)?;
    let sid = b["session_id"].as_str().unwrap_or_default().to_string();
    let (s, b) =
        ocs.rar(json!({"session_id": sid, "rules": ["video-zero-rated"], "remove_rules": ["default-internet"]}))?;
    ensure(s == 200 && b["result_code"] == 2001, "Gx RAR installing and removing rules: RAA 2001", &b)?;
    node.call("DELETE", &format!("/v1/sessions/{}", enc(&sid)), None)?;
    ocs.clean().map(drop)
}

pub(super) fn ddfh_buffer(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |s| {
        s.tx = Duration::from_millis(800);
        // After the reconnection the peer carries requests again once three DWAs came back (RFC 3539 REOPEN).
        s.watchdog = Duration::from_secs(1);
    })?;
    // The connection drops under the event request: a failure to send, a temporary error.
    ocs.fault(
        json!({"command": "CCR", "request_type": "event", "retransmission": false, "times": 1, "action": "close"}),
    )?;
    let (s, b) = node.call(
        "POST",
        "/v1/events",
        Some(json!({"subscriber": {"type": "msisdn", "data": "46700000013"}, "requested_action": "direct_debiting", "requested": {"units": 1}})),
    )?;
    // RFC 4006 §7 (event table) and §8.15: DDFH TERMINATE_OR_BUFFER, DIRECT_DEBITING, temporary error: the service
    // is granted and the request stored with the T flag.
    ensure(s == 200 && b["ccfh"].is_string(), "service granted, request buffered", &b)?;
    let sid = b["session_id"].as_str().unwrap_or_default().to_string();
    // Once the peer is back, the stored request goes with the T flag and is debited once.
    wait_for("the stored request to be resent with T and answered", Duration::from_secs(15), || {
        requests(&ocs, &sid).ok().filter(|r| r.iter().any(|(t, n, tf)| t == "event" && *n == 0 && *tf))
    })?;
    let c = ocs.clean()?;
    ensure(c["sessions"]["events"] == 1, "one event debited", &c)
}

pub(super) fn tx_pending_i_retry_and_terminate(ctx: &mut Ctx) -> Result<(), String> {
    // RFC 4006 §7, PendingI: Tx expired with RETRY_AND_TERMINATE grants the service and keeps waiting (no
    // CC-Session-Failover has been received yet, so there is no alternate to retry on); the session ends only if
    // the request finally fails.
    let (ocs, node, b, s) = pending_i(ctx, "RETRY_AND_TERMINATE")?;
    ensure(s == 201 && b["state"] == "PendingI" && b["ccfh"].is_string(), "granted while waiting", &b)?;
    let sid = b["session_id"].as_str().unwrap_or_default().to_string();
    let (s, v) = node.session(&sid)?;
    ensure(s == 200 && v["state"] == "PendingI", "still waiting for the answer", &v)?;
    ocs.clean().map(drop)
}

pub(super) fn late_answer_after_tx(ctx: &mut Ctx) -> Result<(), String> {
    // The server says CONTINUE and offers no failover: at Tx the service goes on in PendingU, and the late answer
    // still counts when it comes (RFC 4006 §7: PendingU, Tx expired, CCFH CONTINUE -> grant, stay PendingU).
    let (ocs, proxy, node) =
        setup_behind_proxy(ctx, "[ro]\nccfh = 1\ncc_session_failover = 0\n", |s| s.tx = Duration::from_millis(800))?;
    let sid = node.open_ro("46700000014")?;
    let mut late = crate::proxy::Rule::new(crate::proxy::Action::Delay(Duration::from_millis(1800))).answers(272);
    late.request_type = Some(2);
    proxy.add(late.times(1));
    let (s, b) = node.update(&sid, 9)?;
    ensure(s == 200 && b["ccfh"].is_string() && b["state"] == "PendingU", "granted while waiting", &b)?;
    wait_for("the late answer to reopen the session", Duration::from_secs(5), || {
        node.session(&sid).ok().filter(|(_, v)| v["state"] == "Open")
    })?;
    let (s, b) = node.terminate(&sid, 1)?;
    ensure(s == 200, "terminate", &b)?;
    ocs.clean().map(drop)
}
