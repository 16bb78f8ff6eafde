//! Wire truth: Wireshark's dissector (tshark) must decode every sample with no malformed frame and no expert
//! warning, other than "Unknown AVP" for an AVP its dictionary lacks (the 5001 sample carries one on purpose).

use std::fmt::Write as _;
use std::process::Command;

use charging_ra::dict::Dictionary;
use charging_ra::samples;

/// Writes messages as a text2pcap hex dump, one packet each, and returns tshark's decode of the capture.
pub fn tshark_check(label: &str, messages: &[bytes::Bytes]) -> Option<(String, String)> {
    if !(crate::have("tshark") && crate::have("text2pcap")) {
        crate::skip(label, "tshark/text2pcap not installed (apt-get install tshark); CI installs them");
        return None;
    }
    let dir = tempdir(label);
    let mut dump = String::new();
    for m in messages {
        for (i, chunk) in m.chunks(16).enumerate() {
            let _ = write!(dump, "{:06x}", i * 16);
            for b in chunk {
                let _ = write!(dump, " {b:02x}");
            }
            dump.push('\n');
        }
    }
    let hex = dir.join("msgs.hex");
    let pcap = dir.join("msgs.pcap");
    std::fs::write(&hex, dump).unwrap();
    let st = Command::new("text2pcap").args(["-q", "-T", "3868,3868"]).arg(&hex).arg(&pcap).status().unwrap();
    assert!(st.success(), "text2pcap failed");
    let run = |args: &[&str]| {
        let out = Command::new("tshark").arg("-r").arg(&pcap).args(args).output().unwrap();
        assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expert = run(&["-q", "-z", "expert"]);
    let fields = run(&[
        "-T",
        "fields",
        "-e",
        "diameter.cmd.code",
        "-e",
        "diameter.flags",
        "-e",
        "diameter.endtoendid",
        "-e",
        "_ws.malformed",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    Some((expert, fields))
}

/// A fresh directory under the target dir for one test's files.
pub fn tempdir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("charging-ra-{}-{}", label.replace(' ', "_"), std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub use charging_ra::wirecheck::unexpected_expert_lines;

#[test]
fn tshark_decodes_every_sample_clean() {
    let dict = Dictionary::builtin();
    let all = samples::all(&dict);
    let bytes: Vec<_> = all.iter().map(|(_, m)| m.encode().unwrap()).collect();
    let Some((expert, fields)) = tshark_check("tshark_samples", &bytes) else {
        return;
    };
    let bad = unexpected_expert_lines(&expert);
    assert!(bad.is_empty(), "tshark expert findings:\n{}\n(full: {expert})", bad.join("\n"));
    // Every frame was dissected as Diameter with our header values, none malformed.
    let rows: Vec<&str> = fields.lines().collect();
    assert_eq!(rows.len(), all.len(), "{fields}");
    for ((name, m), row) in all.iter().zip(rows) {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols[0], m.header.code.0.to_string(), "{name}: {row}");
        assert_eq!(
            u8::from_str_radix(cols[1].trim_start_matches("0x"), 16).unwrap(),
            m.header.flags.0,
            "{name}: {row}"
        );
        assert_eq!(
            u32::from_str_radix(cols[2].trim_start_matches("0x"), 16).unwrap(),
            m.header.end_to_end.0,
            "{name}: {row}"
        );
        assert!(cols.get(3).is_none_or(|c| c.is_empty()), "{name}: malformed: {row}");
    }
}

#[test]
fn tshark_check_catches_a_malformed_frame() {
    // The check above must be able to fail: a frame whose AVP overruns the message is flagged.
    let dict = Dictionary::builtin();
    let mut bytes = samples::all(&dict).remove(2).1.encode().unwrap().to_vec();
    bytes[27] = 0xff; // Origin-Host's length field, low octet
    let Some((expert, _)) = tshark_check("tshark_malformed", &[bytes.into()]) else {
        return;
    };
    assert!(!unexpected_expert_lines(&expert).is_empty(), "{expert}");
}
