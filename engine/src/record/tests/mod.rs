//! Tests of the record layer as a whole: hand-checked bytes, differential tests
//! against the `kafka-protocol` crate, malformed input, and property tests.
//! Unit tests of single pieces (varints, header, attributes) sit beside them.

mod builder;
mod decode;
mod kafka_compat;
mod props;

use super::*;

/// A record that owns its bytes, for generated test data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owned {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Encodes `recs` as one batch with `opts`.
pub(super) fn build(opts: BatchOptions, recs: &[Owned]) -> Vec<u8> {
    let mut b = BatchBuilder::new(opts);
    for r in recs {
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            r.headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
        b.push(&Record {
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &headers,
        });
    }
    b.finish()
}

/// Decodes every record of a valid batch into owned form, with offsets.
pub(super) fn decode_all(batch: &Batch<'_>) -> Result<Vec<(i64, Owned)>, RecordError> {
    let mut out = Vec::new();
    for r in batch.records() {
        let r = r?;
        let headers = r
            .headers()
            .map(|h| h.map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))))
            .collect::<Result<Vec<_>, _>>()?;
        assert_eq!(headers.len(), r.headers_count());
        out.push((
            r.offset,
            Owned {
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers,
            },
        ));
    }
    Ok(out)
}

/// Rewrites batch length and CRC after a test edited a batch's bytes, so that
/// the edit reaches record decoding instead of stopping at the CRC check.
pub(super) fn reseal(b: &mut [u8]) {
    let len = i32::try_from(b.len() - LOG_OVERHEAD).unwrap();
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Drives every decoding entry point over `buf` to the end; used to check that
/// none of them panics. Returns how many records decoded, to keep the work
/// observable.
pub(super) fn exercise(buf: &[u8]) -> usize {
    let mut n = 0;
    let _ = BatchHeader::parse(buf).map(|h| (h.total_len(), h.last_offset()));
    let _ = verify_crc(buf);
    if let Ok(batch) = Batch::parse(buf) {
        n += exercise_records(&batch);
    }
    let mut it = batches(buf);
    for batch in it.by_ref().flatten() {
        n += exercise_records(&batch);
    }
    assert!(it.position() <= buf.len());
    n
}

fn exercise_records(batch: &Batch<'_>) -> usize {
    let mut n = 0;
    for r in batch.records().flatten() {
        n += 1;
        for h in r.headers().flatten() {
            n += h.0.len() + h.1.map_or(0, <[u8]>::len);
        }
    }
    n
}
