//! The wire, judged by an independent decoder: tshark dissects everything a node and the simulator exchanged.

use serde_json::json;

use super::cc::ensure;
use crate::{Ctx, SKIPPED};

pub(super) fn session_traffic_decodes_clean(ctx: &mut Ctx) -> Result<(), String> {
    if !charging_ra::wirecheck::available() {
        return Err(format!("{SKIPPED}tshark is not installed"));
    }
    let ocs = ctx.ocs("")?;
    let capture = charging_ra::wirecheck::Capture::start(&ctx.dir, &[ocs.diameter.port()])?;
    let (ocs, node) = {
        let mut spec = crate::harness::NodeSpec::new("n1", &ocs);
        spec.watchdog = std::time::Duration::from_secs(1);
        (ocs, ctx.node(&spec)?)
    };
    // CER/CEA, DWR/DWA, a Ro session with a RAR, a Gx session, an event.
    let sid = node.open_ro("46700000401")?;
    ocs.rar(json!({"session_id": sid, "rating_groups": [10]}))?;
    node.update(&sid, 10)?;
    node.terminate(&sid, 5)?;
    let (s, b) = node.call(
        "POST",
        "/v1/sessions",
        Some(json!({"app": "gx", "subscriber": {"type": "imsi", "data": "240010000000401"}, "rating_groups": []})),
    )?;
    ensure(s == 201, "Gx open", &b)?;
    let gx = b["session_id"].as_str().unwrap_or_default().to_string();
    node.call("DELETE", &format!("/v1/sessions/{}", crate::harness::enc(&gx)), None)?;
    node.call(
        "POST",
        "/v1/events",
        Some(json!({"subscriber": {"type": "msisdn", "data": "46700000401"}, "requested_action": "price_enquiry", "requested": {"units": 1}})),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let v = capture.finish()?;
    ensure(v.problems.is_empty(), "tshark finds nothing wrong", &json!(v.problems))?;
    ensure(v.diameter_frames >= 16, "the exchange was captured", &json!(v.diameter_frames))?;
    ocs.clean().map(drop)
}
