//! The base stack (RFC 6733 capabilities exchange and disconnection, RFC 3539 watchdog) between a node and the
//! simulator, with the fault proxy where the network must misbehave.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use charging_ra::codec::{Avp, CommandCode, Message, code};
use charging_ra::peer::LocalIdentity;

use super::cc::{ensure, setup, setup_behind_proxy};
use crate::Ctx;
use crate::harness::{NodeSpec, OCS_HOST, OCS_MATE_HOST, wait_for};
use crate::proxy::{Action, Rule};

pub(super) fn cer_common_application(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let st = node.status()?;
    let peer = &st["peers"][0];
    ensure(peer["identity"] == OCS_HOST && peer["available"] == true, "CEA 2001: peer open", &st)?;
    let sid = node.open_ro("46700000101")?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn cer_no_common_application(ctx: &mut Ctx) -> Result<(), String> {
    let ocs = ctx.ocs("")?;
    let proxy = ctx.proxy(ocs.diameter)?;
    // The server side answers the CER with 5010 DIAMETER_NO_COMMON_APPLICATION.
    proxy.add(Rule::new(Action::Answer(5010)).requests(257));
    let mut spec = NodeSpec::new("n1", &ocs);
    spec.peers = vec![(OCS_HOST.into(), proxy.addr, 1)];
    spec.wait_open = false;
    let node = ctx.node(&spec)?;
    wait_for("the refused CER", Duration::from_secs(5), || (!proxy.fired.lock().unwrap().is_empty()).then_some(()))?;
    std::thread::sleep(Duration::from_millis(300));
    let st = node.status()?;
    ensure(st["peers_open"] == 0, "no peer open after CEA 5010", &st)?;
    let (s, b) = node.call(
        "POST",
        "/v1/sessions",
        Some(json!({"app": "ro", "subscriber": {"type": "msisdn", "data": "46700000102"}, "rating_groups": [{"rating_group": 10, "requested": {}}]})),
    )?;
    ensure(s >= 400, "no session without a peer", &b)
}

pub(super) fn watchdog_loss_and_reopen(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, proxy, node) = setup_behind_proxy(ctx, "", |s| s.watchdog = Duration::from_secs(1))?;
    // DWAs lost: RFC 3539 §3.4: SUSPECT after Tw without an answer, DOWN after another, the connection closed.
    proxy.add(Rule::new(Action::Drop).answers(280));
    wait_for("the peer to go down", Duration::from_secs(8), || node.status().ok().filter(|s| s["peers_open"] == 0))?;
    proxy.clear();
    // Reconnection, CER/CEA, and REOPEN after three DWAs in a row: then it carries requests again.
    node.wait_open(Duration::from_secs(15))?;
    let sid = node.open_ro("46700000103")?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn dpr_and_reconnect(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    // The server answers the CCR-I, then sends DPR (REBOOTING): DPA, close, reconnect.
    ocs.fault(json!({"command": "CCR", "request_type": "initial", "times": 1, "action": "dpr"}))?;
    let sid = node.open_ro("46700000104")?;
    wait_for("the node to reconnect after DPR", Duration::from_secs(10), || {
        node.status().ok().filter(|s| s["peers"][0]["available"] == true).and_then(|_| {
            // A second session proves the new connection carries requests.
            node.open_ro("46700000105").ok()
        })
    })?;
    let _ = node.terminate(&sid, 0);
    Ok(())
}

pub(super) fn garbage_before_cer(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, node) = setup(ctx, "", |_| {})?;
    let mut s = TcpStream::connect(node.diameter).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    // Version 7, a length the frame does not have: not Diameter (RFC 6733 §3): the node closes the connection.
    s.write_all(&[7, 0, 0, 40, 0x80, 0, 1, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xde, 0xad, 0xbe, 0xef])
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let closed = matches!(s.read(&mut buf), Ok(0) | Err(_)) || matches!(s.read(&mut buf), Ok(0) | Err(_));
    ensure(closed, "the connection closed", &json!(null))?;
    // The node and its sessions are unaffected.
    let sid = node.open_ro("46700000106")?;
    node.terminate(&sid, 0)?;
    ocs.clean().map(drop)
}

pub(super) fn unknown_peer_refused(ctx: &mut Ctx) -> Result<(), String> {
    let (_ocs, node) = setup(ctx, "", |_| {})?;
    let local = LocalIdentity::charging_client("stranger.elsewhere.localdomain", "elsewhere.localdomain", 1);
    let cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, charging_ra::codec::AppId(0))
        .with(Avp::utf8(code::ORIGIN_HOST, &local.origin_host))
        .with(Avp::utf8(code::ORIGIN_REALM, &local.origin_realm))
        .with(Avp::address(
            code::HOST_IP_ADDRESS,
            &charging_ra::codec::value::Address::Ipv4(std::net::Ipv4Addr::LOCALHOST),
        ))
        .with(Avp::u32(code::VENDOR_ID, 0))
        .with(Avp::utf8(code::PRODUCT_NAME, "stranger").with_mandatory(false))
        .with(Avp::u32(code::AUTH_APPLICATION_ID, 4));
    // Base protocol requests carry R only (RFC 6733 §5.3.1: no P bit on a CER).
    let mut cer = cer;
    cer.header.flags = charging_ra::codec::CommandFlags(charging_ra::codec::CommandFlags::REQUEST);
    let bytes = cer.encode().map_err(|e| e.to_string())?;
    let mut s = TcpStream::connect(node.diameter).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(&bytes).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    if n == 0 {
        return Ok(()); // closed without a CEA: allowed (RFC 6733 §5.3 MAY)
    }
    let cea = Message::decode(bytes::Bytes::copy_from_slice(&buf[..n])).map_err(|e| e.to_string())?;
    let rc = cea.result_code().map(|r| r.0);
    ensure(rc == Some(3010), "CEA 3010 DIAMETER_UNKNOWN_PEER", &json!(rc))
}

pub(super) fn watchdog_loss_fails_over_with_t(ctx: &mut Ctx) -> Result<(), String> {
    // The OCS pair: the primary, and its mate sharing the sessions; the primary's answers stop.
    let ocs = ctx.ocs("")?;
    let a = ctx.proxy(ocs.diameter)?;
    let mut spec = NodeSpec::new("n1", &ocs);
    spec.peers = vec![(OCS_HOST.into(), a.addr, 1), (OCS_MATE_HOST.into(), ocs.mate, 2)];
    spec.watchdog = Duration::from_secs(1);
    spec.tx = Duration::from_secs(8);
    let node = ctx.node(&spec)?;
    wait_for("both paths open", Duration::from_secs(4), || node.status().ok().filter(|s| s["peers_open"] == 2))?;
    let sid = node.open_ro("46700000107")?;
    // The OCS gets CCR-U 1 and answers, but on the primary path nothing comes back any more (nor DWAs).
    a.add(Rule::new(Action::Drop).answers(272));
    a.add(Rule::new(Action::Drop).answers(280));
    let (s, b2) = node.update(&sid, 25)?;
    ensure(s == 200 && b2["result_code"] == 2001, "the update is answered over the alternate path", &b2)?;
    let seen = super::cc::requests(&ocs, &sid)?;
    ensure(
        seen.iter().any(|(t, n, tf)| t == "update" && *n == 1 && *tf),
        "CCR-U 1 went again with the T flag (RFC 6733 §5.5.4)",
        &json!(format!("{seen:?}")),
    )?;
    node.terminate(&sid, 0)?;
    let c = ocs.clean()?;
    ensure(
        c["units"]["reported_used"]["time"] == 25 && c["duplicates_answered"].as_u64() >= Some(1),
        "charged once",
        &c,
    )
}

pub(super) fn reset_mid_request(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, proxy, node) = setup_behind_proxy(ctx, "", |s| s.watchdog = Duration::from_secs(1))?;
    let sid = node.open_ro("46700000108")?;
    // The connection is cut as the CCR-U crosses it: the request is lost with it.
    let mut cut = Rule::new(Action::Reset).requests(272);
    cut.request_type = Some(2);
    proxy.add(cut.times(1));
    let (s, b) = node.update(&sid, 4)?;
    // A failure to send with no alternate server: the server's CCFH (RETRY_AND_TERMINATE) ends the service.
    ensure(s == 503, "the service ends", &b)?;
    // The node reconnects, reopens after three DWAs, and carries new sessions.
    node.wait_open(Duration::from_secs(15))?;
    let sid2 = node.open_ro("46700000109")?;
    node.terminate(&sid2, 1)?;
    ocs.clean().map(drop)
}
