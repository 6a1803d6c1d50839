//! Rewriting a stored batch with fewer records: what log compaction writes.
//!
//! Kafka's rules for a filtered batch (`MemoryRecords.filterTo`), kept here: the batch keeps its
//! base offset, its last offset delta (so its producer's last sequence, `base_sequence +
//! last_offset_delta`, is unchanged), its producer id, epoch and base sequence, its leader epoch,
//! its codec and its timestamp type; each kept record keeps its offset delta, so offsets inside
//! the batch have gaps where records were removed. A batch may keep no record at all (an empty
//! batch: the header alone), which is how an idempotent producer's last batch survives
//! compaction. With a delete horizon (KIP-534) the base timestamp holds the horizon, bit 6 of the
//! attributes says so, and record timestamp deltas are taken from it.
//!
//! [`fill_batch`] is the empty batch that stands for a run of removed batches, so that the
//! batches of a compacted segment still tile its offsets (the recovery scan relies on that).

use std::ops::Range;

use super::attributes::{Compression, TimestampType};
use super::builder::put_nullable;
use super::error::RecordError;
use super::header::{
    compute_crc, BatchHeader, ATTRIBUTES_AT, BATCH_HEADER_LEN, CRC_AT, LOG_OVERHEAD, MAGIC_V2,
};
use super::records::RecordView;
use super::varint::{put_varint, put_varlong, varint_len, varlong_len};

/// Appends to `out` the batch of `header` holding only `records` (records of that batch, in
/// order), compressed with the batch's own codec; `delete_horizon`, if given, is stored as the
/// batch's base timestamp with the delete-horizon flag. Returns where the batch lies in `out`.
pub fn rewrite_batch(
    header: &BatchHeader,
    records: &[RecordView<'_>],
    delete_horizon: Option<i64>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<Range<usize>, RecordError> {
    let codec = header.attributes.compression()?;
    let log_append = header.attributes.timestamp_type() == TimestampType::LogAppendTime;
    let horizon = delete_horizon.or(header.attributes.has_delete_horizon().then_some(header.base_timestamp));
    let base_timestamp = horizon.unwrap_or(header.base_timestamp);
    scratch.clear();
    let mut max_timestamp = i64::MIN;
    for r in records {
        // LogAppendTime records all carry the batch's time; their stored deltas mean nothing.
        let delta = if log_append { r.timestamp_delta } else { r.timestamp.wrapping_sub(base_timestamp) };
        max_timestamp = max_timestamp.max(r.timestamp);
        encode_record(scratch, r, delta)?;
    }
    // An empty batch has no time (Kafka's NO_TIMESTAMP): lookups by time pass over it.
    let (base_timestamp, max_timestamp) = match (records.is_empty(), log_append) {
        (true, _) => (horizon.unwrap_or(-1), -1),
        (false, true) => (base_timestamp, header.max_timestamp),
        (false, false) => (base_timestamp, max_timestamp),
    };
    let start = out.len();
    out.resize(start + BATCH_HEADER_LEN, 0);
    // An empty batch is its header alone, uncompressed, as Kafka writes it.
    let codec = if records.is_empty() { Compression::None } else { codec };
    match codec {
        Compression::None => out.extend_from_slice(scratch),
        codec => out.extend_from_slice(&super::compression::compress(codec, scratch)),
    }
    let count = i32::try_from(records.len())
        .map_err(|_| RecordError::TooLarge { field: "records count", len: records.len() })?;
    let length = i32::try_from(out.len() - start - LOG_OVERHEAD)
        .map_err(|_| RecordError::TooLarge { field: "batch length", len: out.len() - start })?;
    let rewritten = BatchHeader {
        batch_length: length,
        magic: MAGIC_V2,
        crc: 0,
        attributes: header.attributes.with_delete_horizon(horizon.is_some()).with_compression(codec),
        base_timestamp,
        max_timestamp,
        records_count: count,
        ..*header
    };
    seal(&mut out[start..], &rewritten);
    Ok(start..out.len())
}

/// Appends an empty batch covering offsets `base_offset..=last_offset` (no producer, no records):
/// it stands for batches compaction removed.
pub fn fill_batch(base_offset: i64, last_offset: i64, out: &mut Vec<u8>) -> Range<usize> {
    let delta = last_offset.saturating_sub(base_offset).clamp(0, i64::from(i32::MAX)) as i32;
    let header = BatchHeader {
        base_offset,
        batch_length: (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32,
        partition_leader_epoch: -1,
        magic: MAGIC_V2,
        crc: 0,
        attributes: super::Attributes::default(),
        last_offset_delta: delta,
        base_timestamp: -1,
        max_timestamp: -1,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: 0,
    };
    let start = out.len();
    out.resize(start + BATCH_HEADER_LEN, 0);
    seal(&mut out[start..], &header);
    start..out.len()
}

/// Writes `header` over the first bytes of `batch` and fills in its CRC.
fn seal(batch: &mut [u8], header: &BatchHeader) {
    batch[..BATCH_HEADER_LEN].copy_from_slice(&header.to_bytes());
    let crc = compute_crc(batch);
    batch[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
}

fn nullable_len(b: Option<&[u8]>) -> usize {
    b.map_or(varint_len(-1), |b| varint_len(b.len() as i32) + b.len())
}

/// Encodes one record as stored, with `timestamp_delta`; key, value and headers are copied as
/// they were (they were validated when the batch was decoded).
fn encode_record(out: &mut Vec<u8>, r: &RecordView<'_>, timestamp_delta: i64) -> Result<(), RecordError> {
    let headers = r.raw_headers();
    let count = r.headers_count() as i32;
    let body = 1
        + varlong_len(timestamp_delta)
        + varint_len(r.offset_delta)
        + nullable_len(r.key)
        + nullable_len(r.value)
        + varint_len(count)
        + headers.len();
    let body =
        i32::try_from(body).map_err(|_| RecordError::TooLarge { field: "record length", len: body })?;
    put_varint(out, body);
    out.push(r.attributes as u8);
    put_varlong(out, timestamp_delta);
    put_varint(out, r.offset_delta);
    put_nullable(out, r.key);
    put_nullable(out, r.value);
    put_varint(out, count);
    out.extend_from_slice(headers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Batch, BatchBuilder, BatchOptions, Record};

    fn batch(codec: Compression, log_append: bool) -> Vec<u8> {
        let mut attributes = super::super::Attributes::default();
        if log_append {
            attributes = attributes.with_timestamp_type(TimestampType::LogAppendTime);
        }
        let mut b = BatchBuilder::new(BatchOptions {
            base_offset: 100,
            producer_id: 7,
            producer_epoch: 2,
            base_sequence: 40,
            partition_leader_epoch: 3,
            attributes,
        });
        for i in 0..5u8 {
            let value = [i; 3];
            let headers = [(&b"h"[..], Some(&[i][..]))];
            b.push(&Record {
                timestamp: 1_000 + i64::from(i) * 10,
                key: Some(&[b'k', i]),
                value: (i != 3).then_some(&value[..]),
                headers: &headers,
            });
        }
        let plain = b.finish();
        if codec == Compression::None {
            plain
        } else {
            super::super::compression::compress_batch(&plain, codec).unwrap()
        }
    }

    /// (offset, timestamp, key, value, header count) of a record.
    type Row = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>, usize);

    fn records_of(bytes: &[u8]) -> (BatchHeader, Vec<Row>) {
        let batch = Batch::parse(bytes).unwrap();
        let mut buf = Vec::new();
        let records = batch
            .records_in(&mut buf, 1 << 20)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (
                    r.offset,
                    r.timestamp,
                    r.key.map(<[u8]>::to_vec),
                    r.value.map(<[u8]>::to_vec),
                    r.headers_count(),
                )
            })
            .collect();
        (*batch.header(), records)
    }

    #[test]
    fn a_rewritten_batch_keeps_offsets_producer_and_codec_and_only_the_chosen_records() {
        for codec in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let original = batch(codec, false);
            let (header, all) = records_of(&original);
            let parsed = Batch::parse(&original).unwrap();
            let mut buf = Vec::new();
            let views: Vec<_> = parsed.records_in(&mut buf, 1 << 20).unwrap().map(Result::unwrap).collect();
            let kept: Vec<_> = views.iter().copied().filter(|r| r.offset % 2 == 1).collect();
            let (mut scratch, mut out) = (Vec::new(), vec![9u8; 3]);
            let at = rewrite_batch(&header, &kept, None, &mut scratch, &mut out).unwrap();
            assert_eq!(&out[..3], &[9, 9, 9], "appends after what is there");
            let (h, records) = records_of(&out[at]);
            assert_eq!(h.base_offset, 100);
            assert_eq!(h.last_offset(), 104, "the last offset stays although its record is gone");
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (7, 2, 40));
            assert_eq!(h.partition_leader_epoch, 3);
            assert_eq!(h.attributes.compression().unwrap(), codec);
            assert_eq!(h.records_count, 2);
            assert_eq!(h.max_timestamp, 1_030, "the largest kept timestamp");
            let expected: Vec<_> = all.iter().filter(|r| r.0 % 2 == 1).cloned().collect();
            assert_eq!(records, expected, "{codec:?}");
        }
    }

    #[test]
    fn a_delete_horizon_becomes_the_base_timestamp_and_record_times_survive_it() {
        let original = batch(Compression::Lz4, false);
        let (header, all) = records_of(&original);
        let parsed = Batch::parse(&original).unwrap();
        let mut buf = Vec::new();
        let views: Vec<_> = parsed.records_in(&mut buf, 1 << 20).unwrap().map(Result::unwrap).collect();
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let at = rewrite_batch(&header, &views, Some(86_400_000), &mut scratch, &mut out).unwrap();
        let (h, records) = records_of(&out[at.clone()]);
        assert!(h.attributes.has_delete_horizon());
        assert_eq!(h.base_timestamp, 86_400_000);
        assert_eq!(records, all, "timestamps are the records' own");
        // Rewriting again keeps the horizon already set.
        let parsed = Batch::parse(&out[at]).unwrap();
        let mut buf2 = Vec::new();
        let views: Vec<_> = parsed.records_in(&mut buf2, 1 << 20).unwrap().map(Result::unwrap).collect();
        let mut again = Vec::new();
        let at = rewrite_batch(parsed.header(), &views[..1], None, &mut scratch, &mut again).unwrap();
        let (h, records) = records_of(&again[at]);
        assert_eq!((h.base_timestamp, h.attributes.has_delete_horizon()), (86_400_000, true));
        assert_eq!(records, all[..1]);
    }

    #[test]
    fn an_empty_rewrite_keeps_offsets_and_producer_and_no_time() {
        let original = batch(Compression::None, true);
        let (header, _) = records_of(&original);
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let at = rewrite_batch(&header, &[], None, &mut scratch, &mut out).unwrap();
        let (h, records) = records_of(&out[at]);
        assert!(records.is_empty());
        assert_eq!((h.records_count, h.last_offset(), h.max_timestamp), (0, 104, -1));
        assert_eq!((h.producer_id, h.base_sequence), (7, 40), "the producer's state survives");
        assert_eq!(h.total_len(), BATCH_HEADER_LEN, "an empty uncompressed batch is its header");
    }

    #[test]
    fn a_fill_batch_covers_its_offsets_with_no_records() {
        let mut out = Vec::new();
        let at = fill_batch(10, 19, &mut out);
        let (h, records) = records_of(&out[at]);
        assert!(records.is_empty());
        assert_eq!((h.base_offset, h.last_offset(), h.producer_id, h.records_count), (10, 19, -1, 0));
    }
}
