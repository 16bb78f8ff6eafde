//! CI's fuzz smoke: a plain-Rust mutation loop over real messages (cargo-fuzz needs nightly; see fuzz/). Every
//! mutated frame must decode or fail cleanly, never panic; what decodes must validate, display and re-encode to
//! the same message; and the memory a decode and validation take must stay proportional to the input.
//!
//! Its own test binary: the counting allocator below sees every thread of the binary, so nothing else may run
//! beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;

use charging_ra::codec::{DecodeLimits, Message};
use charging_ra::dict::Dictionary;
use charging_ra::samples;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// The library forbids unsafe code; this test binary needs it only because implementing GlobalAlloc is unsafe by
// definition. It forwards to System unchanged and counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

const INTERESTING: &[u32] = &[0, 1, 7, 8, 11, 12, 0x7f, 0x80, 0xff, 0xffff, 0x00ff_ffff, 0x8000_0000, 0xffff_ffff];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(1);
        }
        let at = rng.below(b.len());
        match rng.below(8) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())].to_be_bytes();
                let end = (at + 4).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
            3 => b.truncate(at),
            4 => {
                let len = rng.below(64).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                b.splice(at..at, chunk);
            }
            5 => b.insert(at, rng.next() as u8),
            // AVP length fields sit at offsets 20 + 4 + 8k in simple messages: hit them often.
            6 => {
                let off = (20 + 5 + 8 * rng.below(b.len() / 8 + 1)).min(b.len().saturating_sub(3));
                if off + 3 <= b.len() {
                    b[off..off + 3].copy_from_slice(&(rng.next() as u32).to_be_bytes()[1..]);
                }
            }
            _ => {
                b.remove(at);
            }
        }
    }
    // Half the time, make the header length agree with the frame so that the AVP paths are reached.
    if rng.below(2) == 0 && b.len() >= 4 {
        let len = b.len() as u32;
        b[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
    }
    b
}

#[test]
fn mutated_messages_never_panic_and_stay_bounded() {
    let iterations: usize = std::env::var("FUZZ_SMOKE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let dict = Dictionary::builtin();
    let seeds: Vec<Vec<u8>> = samples::all(&dict).iter().map(|(_, m)| m.encode().unwrap().to_vec()).collect();
    let limits = DecodeLimits::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut decoded, mut valid, mut worst_ratio) = (0usize, 0usize, 0f64);
    for i in 0..iterations {
        let seed = &seeds[rng.below(seeds.len())];
        let input = Bytes::from(mutate(&mut rng, seed));
        let before = CURRENT.load(Relaxed);
        PEAK.store(before, Relaxed);
        let result = Message::decode_with(input.clone(), &limits).map(|m| {
            let v = dict.validate(&m, &limits);
            (m, v)
        });
        let used = PEAK.load(Relaxed) - before;
        // Allocation proportional to the input: the top-level AVP list and one occurrence counter per grammar
        // level, never a length field's worth.
        let bound = 64 * input.len() + 16 * 1024;
        assert!(used <= bound, "iteration {i}: {used} bytes allocated for a {}-octet input", input.len());
        worst_ratio = worst_ratio.max(used as f64 / (input.len().max(1)) as f64);
        match result {
            Ok((m, v)) => {
                decoded += 1;
                valid += usize::from(v.is_ok());
                let text = dict.display(&m);
                assert!(!text.is_empty());
                let again = Message::decode_with(m.encode().unwrap(), &limits)
                    .unwrap_or_else(|e| panic!("iteration {i}: re-encoded message fails: {e}"));
                assert_eq!(again, m, "iteration {i}");
                if let Err(e) = v {
                    let _ = e.to_answer(Some(&m), "h.example.net", "example.net").map(|a| a.encode().unwrap());
                }
            }
            Err(e) => {
                let _ = e.result_code();
                let _ = e.to_answer(None, "h.example.net", "example.net").map(|a| a.encode().unwrap());
            }
        }
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "fuzz smoke: {iterations} mutated frames, {decoded} decoded, {valid} valid, worst allocation {worst_ratio:.1} bytes per input octet"
    );
    // The loop is only meaningful if mutations reach both sides.
    assert!(decoded > iterations / 20 && decoded < iterations, "decoded {decoded} of {iterations}");
}
