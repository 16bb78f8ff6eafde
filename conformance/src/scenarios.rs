//! The scenarios, by area. Each names the rule it checks.

use std::process::Command;

use bytes::Bytes;

use charging_ra::codec::{Avp, DecodeLimits, Message, VendorId, code};
use charging_ra::dict::Dictionary;
use charging_ra::samples;

use super::{Ctx, Scenario, Subject};

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
