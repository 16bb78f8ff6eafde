//! The HTTP front's JSON bodies: the first byte picks the route, the rest is the body. Never a panic; AVPs built
//! by name encode and decode to themselves.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

use charging_ra::api::http::{AvpJson, EventBody, OpenBody, TerminateBody, UpdateBody, avps_from_json};
use charging_ra::codec::{AppId, CommandCode, Message};
use charging_ra::dict::Dictionary;

fuzz_target!(|data: &[u8]| {
    static DICT: OnceLock<Dictionary> = OnceLock::new();
    let dict = DICT.get_or_init(Dictionary::builtin);
    let Some((route, body)) = data.split_first() else { return };
    let avps: Option<Vec<AvpJson>> = match route % 4 {
        0 => serde_json::from_slice::<OpenBody>(body).ok().map(|b| b.avps),
        1 => serde_json::from_slice::<UpdateBody>(body).ok().map(|b| b.avps),
        2 => serde_json::from_slice::<TerminateBody>(body).ok().map(|b| b.avps),
        _ => serde_json::from_slice::<EventBody>(body).ok().map(|_| vec![]),
    };
    let Some(avps) = avps else { return };
    if let Ok(built) = avps_from_json(dict, &avps) {
        let mut m = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL);
        m.avps = built;
        if let Ok(bytes) = m.encode() {
            let back = Message::decode(bytes).expect("what we encode decodes");
            assert_eq!(back.avps, m.avps);
        }
    }
});
