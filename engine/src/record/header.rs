//! The fixed 61-byte header of a v2 batch, the CRC over it, and the in-place
//! edits a broker makes when it assigns offsets.
//!
//! Layout (big-endian): baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch
//! i32 @12, magic i8 @16, crc u32 @17, attributes i16 @21, lastOffsetDelta i32 @23,
//! baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43, producerEpoch
//! i16 @51, baseSequence i32 @53, recordsCount i32 @57. The CRC-32C covers bytes
//! 21..end, which is why the base offset and leader epoch can be rewritten in place
//! without recomputing it.

use super::attributes::Attributes;
use super::error::RecordError;

/// Size of the fixed batch header; also the size of an empty batch.
pub const BATCH_HEADER_LEN: usize = 61;
/// The only supported magic (message format version).
pub const MAGIC_V2: i8 = 2;
/// Bytes before and including `batchLength`: a batch's total size is
/// `LOG_OVERHEAD + batch_length`.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;

pub(crate) const BASE_OFFSET_AT: usize = 0;
pub(crate) const LENGTH_AT: usize = 8;
pub(crate) const EPOCH_AT: usize = 12;
pub(crate) const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
/// First byte covered by the CRC.
pub(crate) const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

type Raw = [u8; BATCH_HEADER_LEN];

/// Copies `N` bytes at a constant position of a fixed-size header; the positions
/// above are all in bounds, so this cannot fail on input.
#[inline]
fn field<const N: usize>(h: &Raw, at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&h[at..at + N]);
    a
}

/// The decoded fixed header of a v2 batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (absolute offsets are base + delta).
    pub base_offset: i64,
    /// Bytes after this field: the batch takes `12 + batch_length` bytes.
    pub batch_length: i32,
    /// Leader epoch stamped by the broker on append.
    pub partition_leader_epoch: i32,
    /// Format version; always 2 after [`BatchHeader::parse`].
    pub magic: i8,
    /// CRC-32C of bytes 21..end as stored.
    pub crc: u32,
    /// Compression, timestamp type and flags.
    pub attributes: Attributes,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp the record deltas are relative to (the first record's in
    /// batches written by producers; the delete horizon if that flag is set).
    pub base_timestamp: i64,
    /// Largest record timestamp, or the append time for LogAppendTime batches.
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 for none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the first 61 bytes of `buf` (which may be longer; nothing past
    /// byte 61 is read). Validates magic == 2, `batch_length >= 49`,
    /// `last_offset_delta >= 0` and `records_count >= 0`. Does not check the CRC
    /// nor that the rest of the batch is present.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, RecordError> {
        let Some(h) = buf.first_chunk::<BATCH_HEADER_LEN>() else {
            return Err(RecordError::Truncated { needed: BATCH_HEADER_LEN, available: buf.len() });
        };
        // Magic first: the other fields mean something else in older formats.
        let magic = h[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(RecordError::BadMagic(magic));
        }
        let header = BatchHeader {
            base_offset: i64::from_be_bytes(field(h, BASE_OFFSET_AT)),
            batch_length: i32::from_be_bytes(field(h, LENGTH_AT)),
            partition_leader_epoch: i32::from_be_bytes(field(h, EPOCH_AT)),
            magic,
            crc: u32::from_be_bytes(field(h, CRC_AT)),
            attributes: Attributes(i16::from_be_bytes(field(h, ATTRIBUTES_AT))),
            last_offset_delta: i32::from_be_bytes(field(h, LAST_OFFSET_DELTA_AT)),
            base_timestamp: i64::from_be_bytes(field(h, BASE_TIMESTAMP_AT)),
            max_timestamp: i64::from_be_bytes(field(h, MAX_TIMESTAMP_AT)),
            producer_id: i64::from_be_bytes(field(h, PRODUCER_ID_AT)),
            producer_epoch: i16::from_be_bytes(field(h, PRODUCER_EPOCH_AT)),
            base_sequence: i32::from_be_bytes(field(h, BASE_SEQUENCE_AT)),
            records_count: i32::from_be_bytes(field(h, RECORDS_COUNT_AT)),
        };
        if header.batch_length < MIN_BATCH_LENGTH {
            return Err(RecordError::BadLength(header.batch_length));
        }
        if header.last_offset_delta < 0 {
            return Err(RecordError::BadLastOffsetDelta(header.last_offset_delta));
        }
        if header.records_count < 0 {
            return Err(RecordError::BadRecordsCount(header.records_count));
        }
        Ok(header)
    }

    /// Total bytes of the batch: `12 + batch_length`. A negative `batch_length`
    /// (possible only in a hand-built header) counts as 0.
    pub fn total_len(&self) -> usize {
        usize::try_from(self.batch_length).unwrap_or(0).saturating_add(LOG_OVERHEAD)
    }

    /// Offset of the last record, `base_offset + last_offset_delta`, saturating
    /// at `i64::MAX` (such offsets are invalid anyway; this only avoids a panic).
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    /// The 61 header bytes, with `crc` written as stored in `self` (the builder
    /// computes it afterwards over the whole batch).
    pub fn to_bytes(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut h = [0u8; BATCH_HEADER_LEN];
        put(&mut h, BASE_OFFSET_AT, &self.base_offset.to_be_bytes());
        put(&mut h, LENGTH_AT, &self.batch_length.to_be_bytes());
        put(&mut h, EPOCH_AT, &self.partition_leader_epoch.to_be_bytes());
        put(&mut h, MAGIC_AT, &self.magic.to_be_bytes());
        put(&mut h, CRC_AT, &self.crc.to_be_bytes());
        put(&mut h, ATTRIBUTES_AT, &self.attributes.0.to_be_bytes());
        put(&mut h, LAST_OFFSET_DELTA_AT, &self.last_offset_delta.to_be_bytes());
        put(&mut h, BASE_TIMESTAMP_AT, &self.base_timestamp.to_be_bytes());
        put(&mut h, MAX_TIMESTAMP_AT, &self.max_timestamp.to_be_bytes());
        put(&mut h, PRODUCER_ID_AT, &self.producer_id.to_be_bytes());
        put(&mut h, PRODUCER_EPOCH_AT, &self.producer_epoch.to_be_bytes());
        put(&mut h, BASE_SEQUENCE_AT, &self.base_sequence.to_be_bytes());
        put(&mut h, RECORDS_COUNT_AT, &self.records_count.to_be_bytes());
        h
    }
}

#[inline]
fn put(h: &mut Raw, at: usize, bytes: &[u8]) {
    h[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Checks the CRC-32C of the complete batch at the front of `batch`: the batch
/// length is read from bytes 8..12, and only the first `12 + batch_length` bytes
/// are used. Assumes the v2 layout: it does not look at the magic, which
/// [`BatchHeader::parse`] and [`super::Batch::parse`] check.
pub fn verify_crc(batch: &[u8]) -> Result<(), RecordError> {
    let Some(head) = batch.first_chunk::<BATCH_HEADER_LEN>() else {
        return Err(RecordError::Truncated { needed: BATCH_HEADER_LEN, available: batch.len() });
    };
    let batch_length = i32::from_be_bytes(field(head, LENGTH_AT));
    if batch_length < MIN_BATCH_LENGTH {
        return Err(RecordError::BadLength(batch_length));
    }
    let total = LOG_OVERHEAD.saturating_add(usize::try_from(batch_length).unwrap_or(0));
    let Some(bytes) = batch.get(..total) else {
        return Err(RecordError::Truncated { needed: total, available: batch.len() });
    };
    check_crc(bytes, u32::from_be_bytes(field(head, CRC_AT)))
}

/// CRC-32C of a whole batch's covered bytes (21..end). `batch` must hold at
/// least the header; shorter input yields the CRC of nothing.
#[inline]
pub(crate) fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(ATTRIBUTES_AT..).unwrap_or_default())
}

/// Compares `stored` with the CRC of exactly `batch`.
#[inline]
pub(crate) fn check_crc(batch: &[u8], stored: u32) -> Result<(), RecordError> {
    let computed = compute_crc(batch);
    if computed == stored {
        Ok(())
    } else {
        Err(RecordError::CrcMismatch { stored, computed })
    }
}

/// Writes `base_offset` into bytes 0..8 of a batch in place. Those bytes are not
/// covered by the CRC, so a valid batch stays valid.
///
/// # Panics
/// If `batch.len() < BATCH_HEADER_LEN`. Callers pass a batch they already
/// parsed, so a short buffer is a caller bug, not bad input.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    header_mut(batch, "set_base_offset")[BASE_OFFSET_AT..LENGTH_AT]
        .copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch into bytes 12..16 of a batch in place. Not
/// covered by the CRC, so a valid batch stays valid.
///
/// # Panics
/// If `batch.len() < BATCH_HEADER_LEN` (a caller bug, as for [`set_base_offset`]).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    header_mut(batch, "set_partition_leader_epoch")[EPOCH_AT..MAGIC_AT].copy_from_slice(&epoch.to_be_bytes());
}

fn header_mut<'b>(batch: &'b mut [u8], what: &str) -> &'b mut Raw {
    let len = batch.len();
    match batch.first_chunk_mut::<BATCH_HEADER_LEN>() {
        Some(h) => h,
        None => panic!("{what}: buffer of {len} bytes is shorter than a batch header ({BATCH_HEADER_LEN})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BatchHeader {
        BatchHeader {
            base_offset: 0x0102_0304_0506_0708,
            batch_length: MIN_BATCH_LENGTH,
            partition_leader_epoch: 7,
            magic: MAGIC_V2,
            crc: 0,
            attributes: Attributes(0x10),
            last_offset_delta: 0,
            base_timestamp: -1,
            max_timestamp: -1,
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 9,
            records_count: 0,
        }
    }

    fn sealed(h: BatchHeader) -> [u8; BATCH_HEADER_LEN] {
        let mut b = h.to_bytes();
        let crc = compute_crc(&b);
        b[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn to_bytes_parse_round_trip() {
        let h = sample();
        assert_eq!(BatchHeader::parse(&h.to_bytes()), Ok(h));
        assert_eq!(h.total_len(), BATCH_HEADER_LEN);
        assert_eq!(h.last_offset(), h.base_offset);
    }

    #[test]
    fn parse_rejects_bad_fields_with_numbers() {
        let mut b = sample().to_bytes();
        b[MAGIC_AT] = 1;
        assert_eq!(BatchHeader::parse(&b), Err(RecordError::BadMagic(1)));

        let b = BatchHeader { batch_length: 12, ..sample() }.to_bytes();
        let e = BatchHeader::parse(&b).unwrap_err();
        assert_eq!(e, RecordError::BadLength(12));
        assert_eq!(e.to_string(), "batch length 12 below minimum 49");

        let b = BatchHeader { last_offset_delta: -1, ..sample() }.to_bytes();
        assert_eq!(BatchHeader::parse(&b), Err(RecordError::BadLastOffsetDelta(-1)));

        let b = BatchHeader { records_count: -5, ..sample() }.to_bytes();
        assert_eq!(BatchHeader::parse(&b), Err(RecordError::BadRecordsCount(-5)));

        assert_eq!(BatchHeader::parse(&b[..60]), Err(RecordError::Truncated { needed: 61, available: 60 }));
    }

    #[test]
    fn last_offset_saturates() {
        let h = BatchHeader { base_offset: i64::MAX - 1, last_offset_delta: 5, ..sample() };
        assert_eq!(h.last_offset(), i64::MAX);
        let h = BatchHeader { batch_length: -3, ..sample() };
        assert_eq!(h.total_len(), LOG_OVERHEAD);
    }

    #[test]
    fn in_place_edits_keep_crc_valid() {
        let mut b = sealed(sample());
        verify_crc(&b).unwrap();
        set_base_offset(&mut b, -77);
        set_partition_leader_epoch(&mut b, 1234);
        verify_crc(&b).unwrap();
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (-77, 1234));
    }

    #[test]
    fn verify_crc_uses_only_the_batch_prefix() {
        let mut b = sealed(sample()).to_vec();
        b.extend_from_slice(b"trailing garbage");
        verify_crc(&b).unwrap();
        b[ATTRIBUTES_AT] ^= 1;
        assert!(matches!(verify_crc(&b), Err(RecordError::CrcMismatch { .. })));
        assert_eq!(verify_crc(&b[..20]), Err(RecordError::Truncated { needed: 61, available: 20 }));
    }

    #[test]
    #[should_panic(expected = "shorter than a batch header")]
    fn set_base_offset_panics_on_short_buffer() {
        set_base_offset(&mut [0u8; 60], 1);
    }
}
