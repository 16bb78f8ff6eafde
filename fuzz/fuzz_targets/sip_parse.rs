//! SIP parsing: never a panic; what parses re-encodes to a message that parses to the same thing; stream framing
//! and the dialog model accept whatever the parser accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

use charging_ra::sip::dialog::Dialog;
use charging_ra::sip::message::Message;
use charging_ra::sip::transaction::Transport;

fuzz_target!(|data: &[u8]| {
    let _ = Message::frame_len(data);
    if let Ok(m) = Message::parse(data) {
        let again = Message::parse(&m.to_bytes()).expect("a parsed message re-parses");
        assert_eq!(again, m);
        let _ = (m.cseq(), m.from_tag(), m.to_tag(), m.top_via().map(|v| v.response_target()));
        if m.is_request() {
            let mut d = Dialog::uas(&m, "t", "sip:n@127.0.0.1", Transport::Udp);
            let _ = d.accept_remote_cseq(&m);
            let _ = d.request("BYE", None).to_bytes();
            let _ = m.response(500, "x", Some("t")).to_bytes();
        }
    }
});
