//! decode -> validate -> encode -> decode: never a panic, and what decodes re-encodes to the same message.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use charging_ra::codec::{DecodeLimits, Message};
use charging_ra::dict::Dictionary;

fn dict() -> &'static Dictionary {
    static DICT: OnceLock<Dictionary> = OnceLock::new();
    DICT.get_or_init(Dictionary::builtin)
}

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    match Message::decode_with(Bytes::copy_from_slice(data), &limits) {
        Ok(m) => {
            let checked = dict().validate(&m, &limits);
            let _ = dict().display(&m);
            let again = Message::decode_with(m.encode().expect("a decoded message fits"), &limits).expect("re-encoded message decodes");
            assert_eq!(again, m);
            if let Err(e) = checked {
                let _ = e.to_answer(Some(&m), "fuzz.example.net", "example.net").map(|a| a.encode());
            }
        }
        Err(e) => {
            let _ = e.to_answer(None, "fuzz.example.net", "example.net").map(|a| a.encode());
        }
    }
});
