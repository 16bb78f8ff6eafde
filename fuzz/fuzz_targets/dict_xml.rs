//! Dictionary XML (`[dictionaries] files`): loading never panics, an error says why, and a dictionary that loads
//! judges every sample message without a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

use charging_ra::codec::Message;
use charging_ra::dict::Dictionary;

fn base() -> &'static (Dictionary, Vec<(&'static str, Message)>) {
    static BASE: OnceLock<(Dictionary, Vec<(&'static str, Message)>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let d = Dictionary::builtin();
        let samples = charging_ra::samples::all(&d);
        (d, samples)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (dict, samples) = base();
    let mut dict = dict.clone();
    match dict.load_xml("fuzz.xml", text) {
        Ok(()) => {
            for (_, m) in samples {
                let _ = dict.validate(m, &Default::default());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
