//! Capture files: never a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frames) = charging_ra::pcap::diameter_frames(data) {
        for f in frames {
            assert!(f.bytes.len() >= 20);
        }
    }
});
