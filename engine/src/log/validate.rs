//! What the log accepts: Kafka's `LogValidator` rules for a RecordBatch v2 a producer sent.
//!
//! Every batch is checked completely before it is given offsets, compressed ones included:
//! 1. its size is at most `batch_bytes_max`, its length field matches the bytes, its header
//!    parses (magic 2) and its CRC-32C matches;
//! 2. `recordsCount` is at least 1 and equals `lastOffsetDelta + 1`;
//! 3. its records (decompressed first, within [`decompressed_bytes_max`]) all decode, fill the
//!    batch exactly, number exactly `recordsCount`, and have offset deltas 0, 1, 2, ...;
//! 4. with create-time timestamps, no record timestamp is negative (except -1, "none"), none
//!    is further ahead of (or behind) the wall clock than `timestamp_after_max`
//!    (`timestamp_before_max`), and the header's `maxTimestamp` is the largest record
//!    timestamp: retention and lookups by time trust it.
//!
//! 5. in a compacted topic, every record has a key (Kafka: "Compacted topic cannot accept
//!    message without key").
//!
//! A batch failing any rule is refused whole, with a typed error that names the numbers. (A
//! Kafka produce carries exactly one batch per partition, so this makes each partition's part
//! of a produce all-or-nothing; the listener refuses more, as Kafka does.)

use std::cell::RefCell;

use super::{LogConfig, LogError};
use crate::record::{verify_crc, Batch, BatchHeader, TimestampType};

/// The largest decompressed records block accepted for a partition whose batches may be
/// `batch_bytes_max` bytes: sixteen times that, at least 64 MiB, at most 1 GiB.
pub fn decompressed_bytes_max(batch_bytes_max: u64) -> usize {
    batch_bytes_max.saturating_mul(16).clamp(64 << 20, 1 << 30) as usize
}

thread_local! {
    /// The decompression buffer of this thread (a shard), reused between batches.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Checks `batch` against every rule above at wall-clock time `now_ms`; returns its header.
pub(crate) fn check(config: &LogConfig, batch: &[u8], now_ms: i64) -> Result<BatchHeader, LogError> {
    let size = batch.len() as u64;
    if size > config.batch_bytes_max {
        return Err(LogError::BatchTooLarge { size, max: config.batch_bytes_max });
    }
    let header = BatchHeader::parse(batch)?;
    if header.total_len() != batch.len() {
        return Err(LogError::BatchRejected(format!(
            "batch length field says {} bytes but {} were given",
            header.total_len(),
            batch.len()
        )));
    }
    verify_crc(batch)?;
    if header.records_count < 1 || i64::from(header.last_offset_delta) + 1 != i64::from(header.records_count)
    {
        return Err(LogError::BatchRejected(format!(
            "records count {} does not match last offset delta {}",
            header.records_count, header.last_offset_delta
        )));
    }
    let limit = decompressed_bytes_max(config.batch_bytes_max);
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let bounds = TimestampBounds {
            latest: config.timestamp_after_max.map(|d| now_ms.saturating_add(millis(d))),
            earliest: config.timestamp_before_max.map(|d| now_ms.saturating_sub(millis(d))),
        };
        let checked = check_records(batch, &header, &mut buf, limit, bounds, config.cleanup.compact);
        // A large block once must not pin its memory for the life of the shard.
        if buf.capacity() > 8 << 20 {
            *buf = Vec::new();
        }
        checked
    })?;
    Ok(header)
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The create-time timestamps allowed now.
#[derive(Debug, Clone, Copy)]
struct TimestampBounds {
    latest: Option<i64>,
    earliest: Option<i64>,
}

fn check_records(
    batch: &[u8],
    header: &BatchHeader,
    buf: &mut Vec<u8>,
    limit: usize,
    bounds: TimestampBounds,
    keys_required: bool,
) -> Result<(), LogError> {
    // Topics keep producers' timestamps (Kafka's CreateTime): a batch claiming log-append time
    // would let its header's max timestamp go unchecked.
    if header.attributes.timestamp_type() != TimestampType::CreateTime {
        return Err(LogError::InvalidTimestamp {
            timestamp: header.max_timestamp,
            reason: "the batch claims log-append time; topics here keep create-time timestamps",
        });
    }
    let mut max_timestamp = i64::MIN;
    for (i, record) in Batch::parse(batch)?.records_in(buf, limit)?.enumerate() {
        let record = record?;
        if i64::from(record.offset_delta) != i as i64 {
            return Err(LogError::BatchRejected(format!(
                "record {i} has offset delta {}; deltas must run 0, 1, 2, ...",
                record.offset_delta
            )));
        }
        if keys_required && record.key.is_none() {
            return Err(LogError::BatchRejected(format!(
                "record {i} has no key; a compacted topic keeps records by key"
            )));
        }
        if record.timestamp < -1 {
            return Err(LogError::InvalidTimestamp {
                timestamp: record.timestamp,
                reason: "a record timestamp is negative",
            });
        }
        if record.timestamp != -1 {
            if bounds.latest.is_some_and(|latest| record.timestamp > latest) {
                return Err(LogError::InvalidTimestamp {
                    timestamp: record.timestamp,
                    reason: "further ahead of the clock than message.timestamp.after.max.ms",
                });
            }
            if bounds.earliest.is_some_and(|earliest| record.timestamp < earliest) {
                return Err(LogError::InvalidTimestamp {
                    timestamp: record.timestamp,
                    reason: "further behind the clock than message.timestamp.before.max.ms",
                });
            }
        }
        max_timestamp = max_timestamp.max(record.timestamp);
    }
    if max_timestamp != header.max_timestamp {
        return Err(LogError::InvalidTimestamp {
            timestamp: header.max_timestamp,
            reason: "the batch's max timestamp is not the largest record timestamp",
        });
    }
    Ok(())
}
