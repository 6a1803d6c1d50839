//! Black-box tests for Spate: real processes, real files, real signals.
//!
//! This library holds what the test binaries and the tests that drive them share.

/// The deterministic content of record `index` of batch `seq` appended by `thread` in `round`:
/// a readable prefix naming it, then 40..552 pseudo-random bytes derived from those numbers, so a
/// checker can tell byte for byte whether what came back is what was written.
pub fn crash_record_value(round: u32, thread: u32, seq: u64, index: u32) -> Vec<u8> {
    let mut out = format!("{round}/{thread}/{seq}/{index}/").into_bytes();
    let mut x = (u64::from(round) << 48)
        ^ (u64::from(thread) << 40)
        ^ (seq << 8)
        ^ u64::from(index)
        ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*: cheap and fully determined by the seed.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let len = 40 + (next() % 512) as usize;
    out.extend((0..len).map(|_| (next() >> 56) as u8));
    out
}

/// Records per batch for batch `seq`: 1 to 3, so batches of several records are covered.
pub fn crash_batch_records(seq: u64) -> u32 {
    1 + (seq % 3) as u32
}
