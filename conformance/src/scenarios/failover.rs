//! A node dies (SIGKILL) or stalls (SIGSTOP) holding replicated sessions; another carries them on. The judge is
//! the ledger: no CC-Request-Number repeated without the T flag, none skipped, no usage lost or counted twice.

use std::time::Duration;

use serde_json::json;

use super::cc::{ensure, numbering, requests};
use crate::Ctx;
use crate::harness::{Node, NodeSpec, Ocs, enc};

fn pair(ctx: &Ctx) -> Result<(Ocs, Node, Node), String> {
    let ocs = ctx.ocs("")?;
    let mut spec = NodeSpec::new("n1", &ocs);
    spec.replicate = true;
    let n1 = ctx.node(&spec)?;
    spec.id = "n2".into();
    let n2 = ctx.node(&spec)?;
    Ok((ocs, n1, n2))
}

fn lease_expiry() {
    // NodeSpec's lease lasts 800 ms.
    std::thread::sleep(Duration::from_millis(1100));
}

pub(super) fn next_event_adopts(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, mut n1, n2) = pair(ctx)?;
    let sid = n1.open_ro("46700000301")?;
    n1.update(&sid, 30)?;
    // While n1 lives, n2 points at it.
    let (s, b) = n2.update(&sid, 1)?;
    ensure(s == 421 && b["owner"] == "n1", "421 naming the live owner", &b)?;
    n1.kill();
    lease_expiry();
    let (s, b) = n2.update(&sid, 20)?;
    ensure(s == 200 && b["node"] == "n2.charging.localdomain", "n2 adopts on the next event", &b)?;
    let (s, b) = n2.terminate(&sid, 5)?;
    ensure(s == 200, "n2 ends it", &b)?;
    let seen = requests(&ocs, &sid)?;
    let fresh = numbering(&seen)?;
    ensure(fresh == [0, 1, 2, 3], "numbers in order, none repeated or skipped", &json!(format!("{seen:?}")))?;
    ensure(seen.iter().any(|(t, n, _)| t == "update" && *n == 2), "n2 sent CCR-U 2", &json!(format!("{seen:?}")))?;
    let c = ocs.clean()?;
    ensure(c["units"]["reported_used"]["time"] == 55, "every second reported once", &c)
}

pub(super) fn in_flight_resent_with_t(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, mut n1, n2) = pair(ctx)?;
    let sid = n1.open_ro("46700000302")?;
    // The OCS processes CCR-U 1 but its answer is lost; n1 dies waiting for it.
    ocs.fault(json!({"command": "CCR", "request_type": "update", "request_number": 1, "retransmission": false, "times": 1, "action": "drop"}))?;
    let http = n1.http;
    let path = format!("/v1/sessions/{}/updates", enc(&sid));
    std::thread::spawn(move || {
        let _ = crate::harness::http(
            http,
            "POST",
            &path,
            Some(&json!({"used": [{"rating_group": 10, "used": {"time": 30}}]})),
        );
    });
    std::thread::sleep(Duration::from_millis(300));
    n1.kill();
    lease_expiry();
    let (s, b) = n2.update(&sid, 12)?;
    ensure(s == 200, "n2 adopts and carries on", &b)?;
    n2.terminate(&sid, 0)?;
    let seen = requests(&ocs, &sid)?;
    numbering(&seen)?;
    ensure(
        seen.iter().any(|(t, n, tf)| t == "update" && *n == 1 && *tf),
        "CCR-U 1 resent with the T flag",
        &json!(format!("{seen:?}")),
    )?;
    let c = ocs.clean()?;
    ensure(c["units"]["reported_used"]["time"] == 42, "30 s reported once, then 12", &c)
}

pub(super) fn stale_owner_fenced(ctx: &mut Ctx) -> Result<(), String> {
    let (ocs, n1, n2) = pair(ctx)?;
    let sid = n1.open_ro("46700000303")?;
    n1.signal("STOP")?;
    lease_expiry();
    // n2 adopts on a look at the session; n1 wakes up still holding its copy.
    let (s, b) = n2.session(&sid)?;
    ensure(s == 200 && b["owner"] == "n2.charging.localdomain", "n2 adopted", &b)?;
    n1.signal("CONT")?;
    let (s, b) = n1.update(&sid, 10)?;
    ensure(s == 421, "the stale owner is fenced: it sends nothing", &b)?;
    let (s, b) = n2.update(&sid, 10)?;
    ensure(s == 200, "the adopter charges", &b)?;
    n2.terminate(&sid, 0)?;
    let seen = requests(&ocs, &sid)?;
    let fresh = numbering(&seen)?;
    ensure(fresh == [0, 1, 2], "one CCR-U 1, from the adopter", &json!(format!("{seen:?}")))?;
    ocs.clean().map(drop)
}
