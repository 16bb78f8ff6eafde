//! Cross-check against an independent implementation, the `diameter` crate (diameter-rs), as a dev-dependency
//! only and only on well-formed, dictionary-known messages: it decodes our bytes with our XML dictionaries and
//! its re-encoding must equal ours byte for byte.

use std::io::Cursor;
use std::sync::Arc;

use charging_ra::dict::{BUILTIN_FILES, Dictionary};
use charging_ra::samples;

#[test]
fn diameter_crate_reencodes_our_samples_identically() {
    // Its Application-Id enum lacks NASREQ (1), whose few AVPs base.xml carries: file them under 0 for it. It
    // has no IPFilterRule/QoSFilterRule type: both are OctetString on the wire (RFC 6733 §4.3.1).
    let texts: Vec<String> = BUILTIN_FILES
        .iter()
        .map(|(_, text)| {
            text.replace(r#"application id="1""#, r#"application id="0""#)
                .replace(r#"type="IPFilterRule""#, r#"type="OctetString""#)
                .replace(r#"type="QoSFilterRule""#, r#"type="OctetString""#)
        })
        .collect();
    let xmls: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Loading our files into its dictionary also shows they are in the format it reads.
    let theirs = Arc::new(diameter::dictionary::Dictionary::new(&xmls));
    let dict = Dictionary::builtin();
    let mut compared = 0;
    for (name, msg) in samples::all(&dict) {
        // Its Application-Id and Command-Code enums know only some values; the 5001 sample carries an unknown AVP
        // on purpose, which it rejects.
        if name.starts_with("error") {
            continue;
        }
        let ours = msg.encode().unwrap();
        let decoded = match diameter::DiameterMessage::decode_from(&mut Cursor::new(&ours[..]), Arc::clone(&theirs)) {
            Ok(m) => m,
            Err(e) => panic!("{name}: diameter crate could not decode our bytes: {e:?}"),
        };
        let mut reencoded = Vec::new();
        decoded.encode_to(&mut reencoded).unwrap();
        assert_eq!(hex::encode(&reencoded), hex::encode(&ours), "{name}");
        compared += 1;
    }
    assert!(compared >= 20, "{compared}");
}
