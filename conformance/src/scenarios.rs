//! The scenarios, by area. Each names the rule it checks.

use std::process::Command;

use bytes::Bytes;

use charging_ra::codec::{Avp, DecodeLimits, Message, VendorId, code};
use charging_ra::dict::Dictionary;
use charging_ra::samples;

use super::{Ctx, Scenario, Subject};

mod cc;
mod failover;
mod partition;
mod peer;
mod sip;
mod store;
mod wire;

const fn scenario(name: &'static str, spec: &'static str, run: fn(&mut Ctx) -> Result<(), String>) -> Scenario {
    Scenario { name, spec, known_failing: None, run }
}

pub(crate) fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "codec-golden-decode",
            spec: "RFC 6733 §3, §4: every golden sample decodes and validates",
            known_failing: None,
            run: golden_decode,
        },
        Scenario {
            name: "codec-invalid-avp-length",
            spec: "RFC 6733 §7.1.5: AVP length below its header -> 5014 with Failed-AVP",
            known_failing: None,
            run: invalid_avp_length,
        },
        Scenario {
            name: "codec-unsupported-mbit-avp",
            spec: "RFC 6733 §4.1, §7.1.5: unknown AVP with the M bit -> 5001 naming it",
            known_failing: None,
            run: unsupported_avp,
        },
        Scenario {
            name: "codec-missing-avp",
            spec: "RFC 4006 §3.1 CCR grammar: no CC-Request-Number -> 5005",
            known_failing: None,
            run: missing_avp,
        },
        // Peers: RFC 6733 §5 and RFC 3539.
        scenario(
            "peer-cer-common-application",
            "RFC 6733 §5.3: CER/CEA with a common application opens the peer",
            peer::cer_common_application,
        ),
        scenario(
            "peer-cer-no-common-application",
            "RFC 6733 §5.3: CEA 5010 (no common application): the peer stays closed, no session",
            peer::cer_no_common_application,
        ),
        scenario(
            "peer-watchdog-loss-and-reopen",
            "RFC 3539 §3.4: DWAs lost -> SUSPECT -> DOWN; reconnect, REOPEN after 3 DWAs",
            peer::watchdog_loss_and_reopen,
        ),
        scenario(
            "peer-watchdog-loss-fails-over-with-t",
            "RFC 3539 §3.4, RFC 6733 §5.5.4: primary silent -> SUSPECT, pending CCR-U to the alternate with the T flag, charged once",
            peer::watchdog_loss_fails_over_with_t,
        ),
        scenario(
            "peer-dpr-and-reconnect",
            "RFC 6733 §5.4: DPR (REBOOTING) from the server -> DPA, close, reconnect",
            peer::dpr_and_reconnect,
        ),
        scenario(
            "peer-reset-mid-request",
            "RFC 6733 §5.5.4: connection reset under a CCR-U, no alternate: CCFH ends it; reconnect, new sessions",
            peer::reset_mid_request,
        ),
        scenario(
            "peer-garbage-before-cer",
            "RFC 6733 §3, §5.3: bytes that are not Diameter on a new connection: closed, node unaffected",
            peer::garbage_before_cer,
        ),
        scenario(
            "peer-unknown-peer-refused",
            "RFC 6733 §5.3: CER from an unconfigured host: CEA 3010 or close",
            peer::unknown_peer_refused,
        ),
        // Credit control: RFC 4006 §7 client table, TS 32.299, TS 29.212.
        scenario(
            "cc-ro-session",
            "RFC 4006 §7: Idle -> PendingI -> Open -> PendingU -> Open -> PendingT -> Idle, numbers 0, 1, 2",
            cc::ro_session,
        ),
        scenario(
            "cc-gx-session",
            "TS 29.212 §4.5.1: Gx CCR-I installs rules, CCR-U reports an Event-Trigger, CCR-T",
            cc::gx_session,
        ),
        scenario("cc-event-direct-debiting", "RFC 4006 §6.3: CCR-E DIRECT_DEBITING", cc::event_direct_debit),
        scenario(
            "cc-event-price-enquiry",
            "RFC 4006 §6.4: CCR-E PRICE_ENQUIRY returns Cost-Information",
            cc::event_price_enquiry,
        ),
        scenario(
            "cc-tx-pending-i-ccfh-terminate",
            "RFC 4006 §7: PendingI + Tx expiry, CCFH TERMINATE: the service ends",
            cc::tx_pending_i_terminate,
        ),
        scenario(
            "cc-tx-pending-i-ccfh-continue",
            "RFC 4006 §7: PendingI + Tx expiry, CCFH CONTINUE: the service goes on",
            cc::tx_pending_i_continue,
        ),
        scenario(
            "cc-tx-pending-i-retry-and-terminate",
            "RFC 4006 §7: PendingI + Tx expiry, CCFH RETRY_AND_TERMINATE: granted while still waiting",
            cc::tx_pending_i_retry_and_terminate,
        ),
        scenario(
            "cc-tx-pending-u-ccfh-terminate",
            "RFC 4006 §7: PendingU + Tx expiry, server CCFH TERMINATE",
            cc::tx_pending_u_terminate,
        ),
        scenario(
            "cc-tx-pending-u-ccfh-continue",
            "RFC 4006 §7: PendingU + Tx expiry, server CCFH CONTINUE",
            cc::tx_pending_u_continue,
        ),
        scenario(
            "cc-tx-pending-u-retry-and-terminate",
            "RFC 4006 §7: PendingU + Tx expiry, RETRY_AND_TERMINATE, no alternate",
            cc::tx_pending_u_retry_and_terminate,
        ),
        scenario(
            "cc-late-answer-after-tx",
            "RFC 4006 §7: PendingU + Tx expiry, CCFH CONTINUE, no failover: granted, then the late CCA reopens",
            cc::late_answer_after_tx,
        ),
        scenario("cc-tx-pending-t", "RFC 4006 §7: PendingT + Tx expiry: the session ends", cc::tx_pending_t),
        scenario("cc-rar-open", "RFC 4006 §5.5: RAR in Open -> RAA 2001, then CCR-U", cc::rar_open),
        scenario(
            "cc-rar-pending-u",
            "RFC 4006 §7: RAR in PendingU -> RAA 2001, the CCR-U follows the outstanding one",
            cc::rar_pending_u,
        ),
        scenario("cc-asr-open", "RFC 4006 §5.6: ASR -> ASA 2001, then CCR-T", cc::asr_open),
        scenario("cc-fui-terminate", "RFC 4006 §5.6.1: last units with FUI TERMINATE, then 4012", cc::fui_terminate),
        scenario(
            "cc-fui-redirect",
            "RFC 4006 §5.6.2: last units with FUI REDIRECT and the top-up address",
            cc::fui_redirect,
        ),
        scenario(
            "cc-validity-time",
            "RFC 4006 §5.1.2: Validity-Time expiry -> CCR-U on the client's own",
            cc::validity_time,
        ),
        scenario(
            "cc-ddfh-buffer",
            "RFC 4006 §6.3.2: DIRECT_DEBITING unanswered, DDFH TERMINATE_OR_BUFFER: granted, stored, resent with T",
            cc::ddfh_buffer,
        ),
        scenario(
            "cc-idempotent-update",
            "A repeated idempotency key returns the first outcome, one CCR-U",
            cc::idempotent_update,
        ),
        scenario("cc-unknown-session", "An update for a session nobody has: 404", cc::unknown_session),
        scenario(
            "cc-gx-rar-rules",
            "TS 29.212 §4.5.2: RAR installing and removing rules -> RAA 2001",
            cc::gx_rar_rules,
        ),
        // The wire.
        scenario(
            "wire-session-traffic-decodes-clean",
            "RFC 6733 §3, §4: CER, DWR, Ro with RAR, Gx, an event: every frame dissects clean in tshark",
            wire::session_traffic_decodes_clean,
        ),
        // Store.
        scenario(
            "store-killed-node-records-expire",
            "A SIGKILLed node's session records expire by their TTL",
            store::killed_node_records_expire,
        ),
        scenario(
            "store-sqlite-locked-then-catches-up",
            "SQLite locked by another process: charging goes on, the backlog drains",
            store::sqlite_locked_then_catches_up,
        ),
        scenario(
            "store-sqlite-file-moved-then-catches-up",
            "SQLite file moved away under a running node: detected and logged, charging goes on, the backlog drains once it is back",
            store::sqlite_file_moved_then_catches_up,
        ),
        // Partitions.
        scenario(
            "partition-node-cut-from-ocs",
            "Network namespaces: a node cut from the OCS (silent drops): CCFH for its request, the watchdog takes the peer down, other nodes unaffected; healed, it reopens and charges",
            partition::node_cut_from_ocs,
        ),
        scenario(
            "partition-nodes-cut-from-each-other",
            "Network namespaces: two nodes cut from each other: no adoption of a live owner's session, 502 where it cannot be forwarded, charged once through the owner",
            partition::nodes_cut_from_each_other,
        ),
        // Failover.
        scenario(
            "failover-next-event-adopts",
            "SIGKILLed owner: the next request adopts on a survivor; numbers in order",
            failover::next_event_adopts,
        ),
        scenario(
            "failover-in-flight-resent-with-t",
            "RFC 4006 §5.1: the request in flight at the crash is resent with the T flag",
            failover::in_flight_resent_with_t,
        ),
        scenario(
            "failover-rar-proxied-to-live-owner",
            "RFC 6733 §6.1.9: a RAR reaching a non-owner is proxied to the owner (Route-Record), RAA and CCR-U from it",
            failover::rar_proxied_to_live_owner,
        ),
        scenario(
            "failover-rar-for-unreplicated-session-proxied",
            "RFC 6733 §6.1.9: a RAR for a session that is not replicated, landing on another node, goes to its Destination-Host",
            failover::rar_for_unreplicated_session_proxied,
        ),
        scenario(
            "failover-rar-after-owner-death-adopted",
            "A RAR for a dead node's session adopts it on the node it reaches: RAA and CCR-U from the adopter",
            failover::rar_after_owner_death_adopted,
        ),
        scenario(
            "failover-asr-after-failover",
            "RFC 4006 §5.6 after adoption: RAR and ASR through a third node reach the adopter; ASA, then its CCR-T",
            failover::asr_after_failover,
        ),
        scenario(
            "failover-restarted-node-does-not-take-back",
            "A restarted node (new incarnation) owns nothing: calls reaching it are forwarded to the adopter",
            failover::restarted_node_does_not_take_back,
        ),
        scenario(
            "failover-survivors-race",
            "Two survivors get the dead owner's session at once: one CAS wins, the other forwards, numbers in order",
            failover::survivors_race,
        ),
        scenario(
            "failover-validity-time-on-a-survivor",
            "RFC 4006 §5.1.2 across a crash: a dead node's Validity-Time fires once, on one survivor, which sends the CCR-U",
            failover::validity_time_fires_on_a_survivor,
        ),
        scenario(
            "failover-adoption-latency",
            "100 sessions of a SIGKILLed node adopted one by one on their next update: every one answered, latency measured",
            failover::adoption_latency,
        ),
        scenario(
            "failover-soak",
            "Six random SIGKILLs of one of three nodes under load through the HTTP fronts, each restarted: ledger clean",
            failover::soak,
        ),
        // SIP B2BUA.
        scenario(
            "sip-call-charged",
            "RFC 3261 B2BUA, TS 32.299 IMS: sipp UAC → node → sipp UAS with a re-INVITE; CCR-I at INVITE, CCR-T at BYE with the duration",
            sip::call_charged,
        ),
        scenario(
            "sip-failover-reinvite-and-bye",
            "SIGKILLed node mid-call: the re-INVITE and BYE reach another node, which adopts the call and its Ro session",
            sip::failover_reinvite_and_bye,
        ),
        scenario(
            "sip-failover-callee-bye",
            "SIGKILLed node mid-call: the callee's BYE (Request-URI naming the dead node) is taken by another node; CCR-T from it",
            sip::failover_callee_bye,
        ),
        scenario(
            "sip-asr-after-failover",
            "RFC 4006 §5.5 ASR for a SIGKILLed node's call, sent through another node: it adopts the Ro session and the call, BYE on both legs",
            sip::asr_after_failover,
        ),
        scenario(
            "sip-quota-on-a-survivor",
            "Redundantly armed timer: a SIGKILLed node's call whose granted time runs out is adopted by one survivor, which sends the CCR-U",
            sip::quota_on_a_survivor,
        ),
        scenario(
            "sip-reinvite-glare",
            "RFC 3261 §14.2 glare: re-INVITEs from both sides get 491; §12.2.2 CSeq going backwards gets 500",
            sip::reinvite_glare,
        ),
        scenario(
            "sip-unknown-dialog-481",
            "RFC 3261 §12.2.2: a mid-dialog request for a dialog no node has gets 481; a malformed one does not stop the node",
            sip::unknown_dialog_481,
        ),
        scenario(
            "sip-load",
            "Calls per second through one node, charged and replicated (sipp -r); every call succeeds, every Ro session ends",
            sip::load,
        ),
        scenario(
            "failover-stale-owner-fenced",
            "SIGSTOPped owner adopted meanwhile: on SIGCONT it is fenced, sends nothing",
            failover::stale_owner_fenced,
        ),
    ]
}

/// What decoding a message said: whether it was valid, the Result-Code otherwise, and the printed text.
struct Decoded {
    valid: bool,
    result_code: Option<u32>,
    text: String,
}

/// Decodes hex with the subject: `charging-ra decode` for exec, the library for inproc.
fn decode(ctx: &Ctx, bytes: &[u8]) -> Result<Decoded, String> {
    match ctx.config.subject {
        Subject::Exec => {
            let out = Command::new(&ctx.config.binary)
                .arg("decode")
                .arg(hex::encode(bytes))
                .output()
                .map_err(|e| format!("running {}: {e}", ctx.config.binary.display()))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let result_code =
                text.lines().find_map(|l| l.strip_prefix("Result-Code: ")).and_then(|v| v.trim().parse().ok());
            match out.status.code() {
                Some(0) => Ok(Decoded { valid: true, result_code, text }),
                Some(1) => Ok(Decoded { valid: false, result_code, text }),
                other => Err(format!("decode exited with {other:?}: {}", String::from_utf8_lossy(&out.stderr))),
            }
        }
        Subject::Inproc => {
            let dict = Dictionary::builtin();
            let limits = DecodeLimits::default();
            let result = Message::decode_with(Bytes::copy_from_slice(bytes), &limits)
                .and_then(|m| dict.validate(&m, &limits).map(|()| m));
            Ok(match result {
                Ok(m) => Decoded { valid: true, result_code: None, text: dict.display(&m) },
                Err(e) => Decoded { valid: false, result_code: Some(e.result_code().0), text: e.to_string() },
            })
        }
    }
}

fn golden_decode(ctx: &mut Ctx) -> Result<(), String> {
    let dict = Dictionary::builtin();
    for (name, msg) in samples::all(&dict) {
        let bytes = msg.encode().map_err(|e| e.to_string())?;
        let d = decode(ctx, &bytes)?;
        if !d.valid {
            return Err(format!("{name}: not valid: {}", d.text));
        }
        let cmd = dict.command(msg.header.application_id, msg.header.code).map(|c| c.name.clone()).unwrap_or_default();
        if !d.text.contains(&cmd) {
            return Err(format!("{name}: output does not name the command {cmd}"));
        }
    }
    Ok(())
}

fn expect_code(ctx: &Ctx, bytes: &[u8], want: u32, failed_avp: Option<&str>) -> Result<(), String> {
    let d = decode(ctx, bytes)?;
    if d.valid || d.result_code != Some(want) {
        return Err(format!("expected Result-Code {want}, got {:?}: {}", d.result_code, d.text));
    }
    if let (Subject::Exec, Some(f)) = (ctx.config.subject, failed_avp)
        && !d.text.contains(f)
    {
        return Err(format!("expected Failed-AVP {f}: {}", d.text));
    }
    Ok(())
}

fn invalid_avp_length(ctx: &mut Ctx) -> Result<(), String> {
    let dict = Dictionary::builtin();
    let mut bytes = samples::all(&dict)[2].1.encode().map_err(|e| e.to_string())?.to_vec();
    bytes[27] = 7; // first AVP's length field (low octet): below the 8-octet header
    expect_code(ctx, &bytes, 5014, Some("Failed-AVP: Avp { code: 264"))
}

fn unsupported_avp(ctx: &mut Ctx) -> Result<(), String> {
    let dict = Dictionary::builtin();
    let mut m = samples::ro_ccr_update(&dict);
    m.push(Avp::octets(424_242, Bytes::from_static(b"x")).with_vendor(VendorId(4242)));
    expect_code(ctx, &m.encode().map_err(|e| e.to_string())?, 5001, Some("code: 424242"))
}

fn missing_avp(ctx: &mut Ctx) -> Result<(), String> {
    let dict = Dictionary::builtin();
    let mut m = samples::ro_ccr_update(&dict);
    m.avps.retain(|a| !a.is(code::CC_REQUEST_NUMBER, 0));
    expect_code(ctx, &m.encode().map_err(|e| e.to_string())?, 5005, Some("code: 415"))
}
