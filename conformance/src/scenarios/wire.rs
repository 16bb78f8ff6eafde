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
    let pcap = capture.path().to_path_buf();
    let v = capture.finish()?;
    ensure(v.problems.is_empty(), "tshark finds nothing wrong", &json!(v.problems))?;
    ensure(v.diameter_frames >= 16, "the exchange was captured", &json!(v.diameter_frames))?;
    // Our own capture reader (`decode --pcap`) finds the messages tshark found, and every one validates.
    let ours = match ctx.config.subject {
        crate::Subject::Exec => {
            let out = std::process::Command::new(&ctx.config.binary)
                .args(["decode", "--pcap"])
                .arg(&pcap)
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let last = text.lines().last().unwrap_or_default().to_string();
            ensure(
                out.status.success() && last.ends_with(" 0 not valid"),
                "decode --pcap: every message valid",
                &json!(last),
            )?;
            last.split_whitespace().next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)
        }
        crate::Subject::Inproc => {
            let file = std::fs::read(&pcap).map_err(|e| e.to_string())?;
            charging_ra::pcap::diameter_frames(&file).map_err(|e| e.to_string())?.len()
        }
    };
    // tshark counts frames (one TCP segment may carry two messages), we count messages.
    ensure(ours >= v.diameter_frames, "decode --pcap finds what tshark finds", &json!([ours, v.diameter_frames]))?;
    ocs.clean().map(drop)
}
