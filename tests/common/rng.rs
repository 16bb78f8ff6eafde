//! The mutation loops' random numbers, shared by the fuzz smoke test binaries.

/// xorshift64*: deterministic, so a failure names its iteration and reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `input`: a bit flipped, a byte replaced, one of `tokens` inserted, truncation, a chunk
/// repeated, a byte removed.
#[allow(dead_code)] // not every smoke binary mutates text
pub fn mutate(rng: &mut Rng, input: &[u8], tokens: &[&str]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(b'x');
        }
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                let t = tokens[rng.below(tokens.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            3 => b.truncate(at),
            4 => {
                let len = rng.below(40).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                b.splice(at..at, chunk);
            }
            _ => {
                b.remove(at);
            }
        }
    }
    b
}
