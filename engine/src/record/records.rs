//! Lazy, borrowing iteration over the records of an uncompressed batch.
//!
//! Record layout: length varint, attributes i8, timestampDelta varlong,
//! offsetDelta varint, key (varint length, -1 = null), value (same), headers
//! count varint, then per header a key (varint length >= 0) and a nullable value.
//!
//! Guarantees: each record is validated completely (headers included) before it
//! is yielded, its fields must fill its length prefix exactly, the batch must
//! hold exactly `recordsCount` records and nothing after them. The first error
//! is yielded once and ends the iteration. Nothing is allocated.
//!
//! Offsets are `base_offset + offsetDelta`, saturating (matching
//! [`super::BatchHeader::last_offset`]); offset deltas are not checked for order,
//! as compacted batches legitimately have gaps. Timestamps are
//! `base_timestamp + timestampDelta` wrapping, as Kafka's Java arithmetic does,
//! except in LogAppendTime batches where, as in Kafka, every record's timestamp
//! is the batch's `max_timestamp`.

use std::iter::FusedIterator;

use super::attributes::{Compression, TimestampType};
use super::error::RecordError;
use super::header::BatchHeader;
use super::reader::Reader;

/// One decoded record, borrowing key, value and headers from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Absolute offset.
    pub offset: i64,
    /// Offset relative to the batch's base offset, as stored.
    pub offset_delta: i32,
    /// Absolute timestamp (the batch's `max_timestamp` for LogAppendTime).
    pub timestamp: i64,
    /// Timestamp relative to the batch's base timestamp, as stored.
    pub timestamp_delta: i64,
    /// Record attributes (unused by Kafka so far; kept as stored).
    pub attributes: i8,
    /// Key, `None` if null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` if null.
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    headers_count: u32,
}

impl<'a> RecordView<'a> {
    /// The record's headers in order: `(key, value)`, value `None` if null.
    /// Header keys are UTF-8 strings in Kafka; they are returned as bytes.
    /// For views yielded by [`RecordIter`] the headers were already validated,
    /// so this never yields an error; the `Result` keeps it total anyway.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { rd: Reader::new(self.headers), remaining: self.headers_count }
    }

    /// The headers as stored (count excluded): for re-encoding a record without decoding them.
    pub fn raw_headers(&self) -> &'a [u8] {
        self.headers
    }

    /// Number of headers.
    pub fn headers_count(&self) -> usize {
        self.headers_count as usize
    }
}

/// Reads one header from `rd`.
#[inline]
fn read_header<'a>(rd: &mut Reader<'a>) -> Result<(&'a [u8], Option<&'a [u8]>), RecordError> {
    let key = rd.sized_bytes("header key length")?;
    let value = rd.nullable_bytes("header value length")?;
    Ok((key, value))
}

/// Iterator over a record's headers; see [`RecordView::headers`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rd: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], Option<&'a [u8]>), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match read_header(&mut self.rd) {
            Ok(h) => {
                self.remaining -= 1;
                Some(Ok(h))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

impl FusedIterator for HeaderIter<'_> {}

/// Iterator over the records of a batch; see [`super::Batch::records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rd: Reader<'a>,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    declared: i32,
    found: i32,
    /// An error found before the first record (e.g. compression), yielded first.
    pending: Option<RecordError>,
    done: bool,
}

impl<'a> RecordIter<'a> {
    /// `records` is the batch body after the 61-byte header.
    pub(crate) fn new(header: &BatchHeader, records: &'a [u8]) -> Self {
        let pending = match header.attributes.compression() {
            Ok(Compression::None) => None,
            Ok(c) => Some(RecordError::Compressed(c)),
            Err(e) => Some(e),
        };
        let log_append_time = match header.attributes.timestamp_type() {
            TimestampType::LogAppendTime => Some(header.max_timestamp),
            TimestampType::CreateTime => None,
        };
        RecordIter {
            rd: Reader::new(records),
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            log_append_time,
            declared: header.records_count,
            found: 0,
            pending,
            done: false,
        }
    }

    /// `records` is the decompressed records block of a compressed batch.
    pub(crate) fn plain(header: &BatchHeader, records: &'a [u8]) -> Self {
        let mut iter = RecordIter::new(header, records);
        iter.pending = None;
        iter
    }

    fn decode_one(&mut self) -> Result<RecordView<'a>, RecordError> {
        let len = self.rd.count("record length")?;
        let mut rd = Reader::new(self.rd.bytes(len)?);
        let attributes = rd.i8()?;
        let timestamp_delta = rd.varlong()?;
        let offset_delta = rd.varint()?;
        let key = rd.nullable_bytes("key length")?;
        let value = rd.nullable_bytes("value length")?;
        let count = rd.count("header count")?;
        let headers_start = rd.rest();
        // Every header takes at least 2 bytes or fails, so this loop is bounded by
        // the record length, not by the (untrusted) count.
        for _ in 0..count {
            read_header(&mut rd)?;
        }
        if !rd.is_empty() {
            return Err(RecordError::RecordSizeMismatch { declared: len, consumed: len - rd.remaining() });
        }
        // A count that walked the loop above without error is at most len / 2.
        let headers_count =
            u32::try_from(count).map_err(|_| RecordError::TooLarge { field: "header count", len: count })?;
        Ok(RecordView {
            offset: self.base_offset.saturating_add(i64::from(offset_delta)),
            offset_delta,
            timestamp: self.log_append_time.unwrap_or(self.base_timestamp.wrapping_add(timestamp_delta)),
            timestamp_delta,
            attributes,
            key,
            value,
            headers: headers_start,
            headers_count,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.found >= self.declared {
            self.done = true;
            if self.rd.is_empty() {
                return None;
            }
            return Some(Err(RecordError::TrailingBytes {
                declared: self.declared,
                trailing: self.rd.remaining(),
            }));
        }
        if self.rd.is_empty() {
            self.done = true;
            return Some(Err(RecordError::RecordCountMismatch {
                declared: self.declared,
                found: self.found,
            }));
        }
        match self.decode_one() {
            Ok(r) => {
                self.found += 1;
                Some(Ok(r))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // Up to the remaining records plus one trailing error.
        let left = usize::try_from(self.declared.saturating_sub(self.found)).unwrap_or(0);
        (0, Some(left.saturating_add(1)))
    }
}

impl FusedIterator for RecordIter<'_> {}
