//! CI's fuzz smoke for the SIP parser and the capture reader (the cargo-fuzz targets `sip_parse` and `pcap` run
//! longer by hand, see fuzz/README.md): mutated messages must parse or fail with a reason, never panic, and what
//! parses must survive a round trip.

use charging_ra::sip::dialog::Dialog;
use charging_ra::sip::message::Message;
use charging_ra::sip::transaction::Transport;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

const TOKENS: &[&str] = &[
    "\r\n",
    ",",
    ";",
    ":",
    "<",
    ">",
    "\"",
    " ",
    "\t",
    "\r\n ",
    "Content-Length: 99999999999999999999",
    "l: 0",
    "=",
    "\\",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    rng::mutate(rng, input, TOKENS)
}

#[test]
fn mutated_sip_never_panics_and_round_trips() {
    let iterations: usize = std::env::var("FUZZ_SMOKE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut rng = Rng(0x5eed_0000_0000_0001);
    let (mut parsed, mut answerable) = (0usize, 0usize);
    for i in 0..iterations {
        let seeds = charging_ra::samples::sip();
        let seed = seeds[rng.below(seeds.len())].1.as_bytes();
        let input = mutate(&mut rng, seed);
        let _ = Message::frame_len(&input);
        match Message::parse(&input) {
            Ok(m) => {
                parsed += 1;
                let again = Message::parse(&m.to_bytes()).unwrap_or_else(|e| panic!("iteration {i}: re-parse: {e}"));
                assert_eq!(again, m, "iteration {i}");
                if m.is_request() {
                    let mut d = Dialog::uas(&m, "t", "sip:n@127.0.0.1", Transport::Udp);
                    let _ = d.accept_remote_cseq(&m);
                    let _ = d.request("BYE", None).to_bytes();
                }
            }
            Err(e) => {
                assert!(!e.reason.is_empty(), "iteration {i}: an error says why");
                if let Some(p) = e.partial {
                    answerable += 1;
                    let _ = p.response(e.status, &e.reason, Some("t")).to_bytes();
                }
            }
        }
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "sip fuzz smoke: {iterations} mutated messages, {parsed} parsed, {answerable} rejected with a 400/513 answer"
    );
    assert!(parsed > iterations / 20 && parsed < iterations, "parsed {parsed} of {iterations}");
}

#[test]
fn mutated_captures_never_panic() {
    // A classic pcap with one Ethernet/IPv4/TCP packet carrying a Diameter CER, then mutated.
    let dict = charging_ra::dict::Dictionary::builtin();
    let cer = charging_ra::samples::all(&dict)[0].1.encode().unwrap();
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0]);
    let mut pkt = vec![0u8; 12];
    pkt.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    pkt.extend_from_slice(&((40 + cer.len()) as u16).to_be_bytes());
    pkt.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x9c, 0x40, 0x0f, 0x1c, 0, 0, 0, 1]);
    pkt.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    pkt.extend_from_slice(&cer);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
    f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
    f.extend_from_slice(&pkt);
    assert_eq!(charging_ra::pcap::diameter_frames(&f).unwrap().len(), 1, "the seed decodes");
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let m = mutate(&mut rng, &f);
        let _ = charging_ra::pcap::diameter_frames(&m);
    }
}
