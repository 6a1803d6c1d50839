//! Arbitrary bytes through every decoding entry point of the record layer:
//! `BatchHeader::parse`, `verify_crc`, `Batch::parse`, `batches()`, and full
//! records/headers iteration. The only oracle is "no panic" plus a few cheap
//! invariants; since random bytes almost never carry a valid CRC, the input is
//! also re-checked with its first batch's CRC fixed, so the record decoder sees
//! the garbage too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate::record::{batches, verify_crc, Batch, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD};

fn walk(batch: &Batch<'_>) {
    let h = batch.header();
    assert_eq!(batch.as_bytes().len(), h.total_len());
    let _ = h.last_offset();
    let mut n = 0usize;
    for r in batch.records() {
        let Ok(r) = r else { break };
        n += 1;
        let mut headers = 0usize;
        for kv in r.headers() {
            assert!(kv.is_ok(), "headers of a yielded record were validated");
            headers += 1;
        }
        assert_eq!(headers, r.headers_count());
    }
    assert!(n <= usize::try_from(h.records_count).unwrap_or(0));
}

fn check(data: &[u8]) {
    let _ = BatchHeader::parse(data);
    let _ = verify_crc(data);
    if let Ok(batch) = Batch::parse(data) {
        walk(&batch);
    }
    let mut it = batches(data);
    let mut end = 0;
    for b in it.by_ref() {
        match b {
            Ok(batch) => {
                end += batch.total_len();
                walk(&batch);
            }
            Err(_) => break,
        }
    }
    assert_eq!(it.position(), end);
    assert!(end <= data.len());
}

/// `data` with the first batch's CRC recomputed, when its length field fits.
fn with_fixed_crc(data: &[u8]) -> Option<Vec<u8>> {
    let len = i32::from_be_bytes(data.get(8..12)?.try_into().ok()?);
    let end = usize::try_from(len).ok()?.checked_add(LOG_OVERHEAD)?;
    if end < BATCH_HEADER_LEN || end > data.len() {
        return None;
    }
    let mut v = data.to_vec();
    let crc = crc32c(&v[21..end]);
    v[17..21].copy_from_slice(&crc.to_be_bytes());
    Some(v)
}

/// Bitwise CRC-32C, so the fuzz crate needs no dependency besides spate.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = with_fixed_crc(data) {
        assert!(verify_crc(&fixed).is_ok());
        check(&fixed);
    }
});
