//! Encoding: [`BatchBuilder`] turns [`Record`]s into one uncompressed v2 batch.
//!
//! Records are encoded as they are pushed, into a buffer that starts with room
//! for the 61-byte header; finishing fills in the header and the CRC-32C. Offset
//! deltas are the push index, timestamp deltas are relative to the first record's
//! timestamp (as Kafka's Java producer does), wrapping, so any i64 timestamps
//! round-trip. The builder keeps its buffer across [`BatchBuilder::finish_into`]
//! calls, so a long-lived builder does not allocate in steady state.
//!
//! Compression bits in [`BatchOptions::attributes`] are cleared: the records
//! written here are never compressed, and a batch claiming otherwise would be
//! unreadable.

use std::ops::Range;

use super::attributes::{Attributes, Compression};
use super::error::RecordError;
use super::header::{
    compute_crc, BatchHeader, ATTRIBUTES_AT, BATCH_HEADER_LEN, CRC_AT, LOG_OVERHEAD, MAGIC_V2,
};
use super::varint::{put_varint, put_varlong, varint_len, varlong_len};

/// A record to encode. Headers are `(key, value)` pairs; Kafka requires header
/// keys to be UTF-8, which this layer does not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record<'a> {
    /// Absolute timestamp (milliseconds since the epoch, by Kafka convention).
    pub timestamp: i64,
    /// Key, `None` for null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for null (a tombstone in compacted topics).
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Batch-level fields for [`BatchBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Offset of the first record; the log usually rewrites it on append.
    pub base_offset: i64,
    /// Idempotent producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 for none.
    pub base_sequence: i32,
    /// Leader epoch, -1 for none (what producers send).
    pub partition_leader_epoch: i32,
    /// Timestamp type and flags; the compression bits are ignored.
    pub attributes: Attributes,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            base_offset: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            partition_leader_epoch: -1,
            attributes: Attributes::default(),
        }
    }
}

/// Builds one uncompressed batch at a time; reusable.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    opts: BatchOptions,
    /// Header placeholder followed by the encoded records.
    buf: Vec<u8>,
    count: i32,
    first_timestamp: i64,
    max_timestamp: i64,
}

/// Largest value of the format's i32 length fields.
const LIMIT: usize = i32::MAX as usize;

fn check_len(field: &'static str, len: usize) -> Result<usize, RecordError> {
    if len > LIMIT {
        Err(RecordError::TooLarge { field, len })
    } else {
        Ok(len)
    }
}

/// Encoded size of a nullable length-prefixed field.
fn nullable_len(field: &'static str, b: Option<&[u8]>) -> Result<usize, RecordError> {
    match b {
        None => Ok(varint_len(-1)),
        Some(b) => {
            let n = check_len(field, b.len())?;
            Ok(varint_len(n as i32) + n)
        }
    }
}

/// Appends a nullable length-prefixed field (the record format's key, value, header value).
pub(super) fn put_nullable(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        // Lengths were checked against i32::MAX before anything was written.
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new(opts: BatchOptions) -> Self {
        Self::with_capacity(opts, 0)
    }

    /// An empty builder whose buffer holds `bytes` of records before growing.
    pub fn with_capacity(opts: BatchOptions, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER_LEN.saturating_add(bytes));
        buf.resize(BATCH_HEADER_LEN, 0);
        BatchBuilder { opts, buf, count: 0, first_timestamp: -1, max_timestamp: -1 }
    }

    /// The options the next batch will carry.
    pub fn options(&self) -> &BatchOptions {
        &self.opts
    }

    /// Drops pushed records and sets new options, keeping the buffer's capacity.
    pub fn reset(&mut self, opts: BatchOptions) {
        self.opts = opts;
        self.clear();
    }

    fn clear(&mut self) {
        self.buf.truncate(BATCH_HEADER_LEN);
        self.count = 0;
        self.first_timestamp = -1;
        self.max_timestamp = -1;
    }

    /// Appends a record.
    ///
    /// # Panics
    /// If [`try_push`](Self::try_push) fails: a key, value, header or the whole
    /// batch over 2 GiB, or more than `i32::MAX` records. These are caller bugs
    /// (no Kafka batch can be that large), not conditions of untrusted input.
    pub fn push(&mut self, record: &Record<'_>) {
        if let Err(e) = self.try_push(record) {
            panic!("BatchBuilder::push: {e}");
        }
    }

    /// Appends a record, or fails without changing the builder if it does not fit
    /// the format's i32 sizes and counts.
    pub fn try_push(&mut self, record: &Record<'_>) -> Result<(), RecordError> {
        let offset_delta = self.count;
        if offset_delta == i32::MAX {
            return Err(RecordError::TooLarge { field: "records count", len: LIMIT + 1 });
        }
        let timestamp_delta =
            if self.count == 0 { 0 } else { record.timestamp.wrapping_sub(self.first_timestamp) };
        let header_count = check_len("header count", record.headers.len())?;
        let mut body = 1usize // attributes
            + varlong_len(timestamp_delta)
            + varint_len(offset_delta)
            + varint_len(header_count as i32);
        body = body.saturating_add(nullable_len("key length", record.key)?);
        body = body.saturating_add(nullable_len("value length", record.value)?);
        for &(k, v) in record.headers {
            let k = check_len("header key length", k.len())?;
            body = body
                .saturating_add(varint_len(k as i32) + k)
                .saturating_add(nullable_len("header value length", v)?);
        }
        let body = check_len("record length", body)?;
        let record_len = varint_len(body as i32) + body;
        check_len("batch length", (self.buf.len() - LOG_OVERHEAD).saturating_add(record_len))?;

        let start = self.buf.len();
        self.buf.reserve(record_len);
        put_varint(&mut self.buf, body as i32);
        self.buf.push(0); // record attributes: unused in v2
        put_varlong(&mut self.buf, timestamp_delta);
        put_varint(&mut self.buf, offset_delta);
        put_nullable(&mut self.buf, record.key);
        put_nullable(&mut self.buf, record.value);
        put_varint(&mut self.buf, header_count as i32);
        for &(k, v) in record.headers {
            put_varint(&mut self.buf, k.len() as i32);
            self.buf.extend_from_slice(k);
            put_nullable(&mut self.buf, v);
        }
        debug_assert_eq!(self.buf.len() - start, record_len);

        if self.count == 0 {
            self.first_timestamp = record.timestamp;
            self.max_timestamp = record.timestamp;
        } else {
            self.max_timestamp = self.max_timestamp.max(record.timestamp);
        }
        self.count += 1;
        Ok(())
    }

    /// Records pushed since the last finish.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was pushed since the last finish.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the finished batch will take.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Fills in the header and CRC at the front of `buf`.
    fn seal(&mut self) {
        let empty = self.count == 0;
        let header = BatchHeader {
            base_offset: self.opts.base_offset,
            // try_push keeps buf.len() - 12 <= i32::MAX.
            batch_length: i32::try_from(self.buf.len() - LOG_OVERHEAD).unwrap_or(i32::MAX),
            partition_leader_epoch: self.opts.partition_leader_epoch,
            magic: MAGIC_V2,
            crc: 0,
            attributes: self.opts.attributes.with_compression(Compression::None),
            last_offset_delta: if empty { 0 } else { self.count - 1 },
            // Kafka's NO_TIMESTAMP for a batch without records.
            base_timestamp: if empty { -1 } else { self.first_timestamp },
            max_timestamp: if empty { -1 } else { self.max_timestamp },
            producer_id: self.opts.producer_id,
            producer_epoch: self.opts.producer_epoch,
            base_sequence: self.opts.base_sequence,
            records_count: self.count,
        };
        self.buf[..BATCH_HEADER_LEN].copy_from_slice(&header.to_bytes());
        let crc = compute_crc(&self.buf);
        self.buf[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
    }

    /// Appends the complete batch to `out` and returns where it lies in `out`;
    /// the builder is then empty again (same options, same capacity). With no
    /// records pushed this writes a valid empty batch (records count 0, last
    /// offset delta 0, timestamps -1); not writing one is the caller's choice.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) -> Range<usize> {
        self.seal();
        let start = out.len();
        out.extend_from_slice(&self.buf);
        self.clear();
        start..out.len()
    }

    /// The complete batch of the records pushed so far, in the builder's own buffer (no copy,
    /// no allocation): for a long-lived builder whose batch is written out before the next.
    /// Pushing more extends this batch; [`reset`](Self::reset) starts a new one.
    pub fn finish_in_place(&mut self) -> &[u8] {
        self.seal();
        &self.buf
    }

    /// The complete batch, reusing the builder's buffer (no copy).
    pub fn finish(mut self) -> Vec<u8> {
        self.seal();
        self.buf
    }
}
