//! Framing: a validated [`Batch`] view and [`batches`], which walks the batches
//! at the front of a buffer such as a segment read.
//!
//! A `Batch` is only ever built from bytes whose header is valid, whose whole
//! length is present and whose CRC-32C matches. `batches` distinguishes an
//! incomplete tail (a read that cut a batch, or a segment still being written:
//! iteration just ends) from corruption (a header that cannot be the start of a
//! batch, or a CRC mismatch: one `Err`, then the end). `BatchIter::position`
//! tells how many bytes of whole valid batches came before, which is where a
//! recovering log would truncate.

use std::iter::FusedIterator;

use super::error::RecordError;
use super::header::{
    check_crc, BatchHeader, BATCH_HEADER_LEN, LENGTH_AT, LOG_OVERHEAD, MAGIC_AT, MAGIC_V2, MIN_BATCH_LENGTH,
};
use super::records::RecordIter;

/// A borrowed, validated view of one complete batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Parses the batch at the front of `buf`: header, presence of all
    /// `total_len` bytes, CRC. Bytes after the batch are ignored; the batch's size
    /// is `as_bytes().len()` (or `header().total_len()`).
    pub fn parse(buf: &'a [u8]) -> Result<Batch<'a>, RecordError> {
        let header = BatchHeader::parse(buf)?;
        let total = header.total_len();
        let Some(bytes) = buf.get(..total) else {
            return Err(RecordError::Truncated { needed: total, available: buf.len() });
        };
        check_crc(bytes, header.crc)?;
        Ok(Batch { header, bytes })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch, header included, exactly as stored.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Size of the batch in bytes.
    pub fn total_len(&self) -> usize {
        self.bytes.len()
    }

    /// Iterates the records. Yields a typed error (once, then ends) for a
    /// compressed or unknown codec, a malformed record, a record count that does
    /// not match `records_count`, or bytes left after the last record.
    pub fn records(&self) -> RecordIter<'a> {
        // `bytes` holds at least the header: `parse` checked total_len >= 61.
        let body = self.bytes.get(BATCH_HEADER_LEN..).unwrap_or_default();
        RecordIter::new(&self.header, body)
    }

    /// Iterates the records of a batch, compressed or not: a compressed block is decompressed
    /// into `buf` first (at most `max_len` bytes), and the records borrow from it.
    pub fn records_in<'b>(&self, buf: &'b mut Vec<u8>, max_len: usize) -> Result<RecordIter<'b>, RecordError>
    where
        'a: 'b,
    {
        let body = self.bytes.get(BATCH_HEADER_LEN..).unwrap_or_default();
        match self.header.attributes.compression()? {
            super::Compression::None => Ok(RecordIter::new(&self.header, body)),
            codec => {
                super::compression::decompress(codec, body, max_len, buf)?;
                Ok(RecordIter::plain(&self.header, buf))
            }
        }
    }
}

/// Iterates the complete, CRC-valid batches at the front of `buf`.
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter { buf, pos: 0, done: false }
}

/// Iterator returned by [`batches`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> BatchIter<'a> {
    /// Bytes taken by the batches yielded so far: the start of the next batch,
    /// of the incomplete tail, or of the corrupt batch that ended iteration.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes from [`position`](Self::position) on.
    pub fn remainder(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// The next batch, `Ok(None)` at an incomplete tail.
    fn frame(rest: &'a [u8]) -> Result<Option<Batch<'a>>, RecordError> {
        // Like Kafka's FileLogInputStream: the length and magic decide between an
        // incomplete batch and garbage before the whole batch needs to be present.
        let Some(head) = rest.first_chunk::<{ MAGIC_AT + 1 }>() else {
            return Ok(None);
        };
        let magic = head[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(RecordError::BadMagic(magic));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[LENGTH_AT..LENGTH_AT + 4]);
        let batch_length = i32::from_be_bytes(len);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(RecordError::BadLength(batch_length));
        }
        let total = usize::try_from(batch_length).unwrap_or(0).saturating_add(LOG_OVERHEAD);
        if rest.len() < total {
            return Ok(None);
        }
        Batch::parse(rest).map(Some)
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<Batch<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match Self::frame(self.remainder()) {
            Ok(Some(batch)) => {
                self.pos += batch.total_len();
                Some(Ok(batch))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for BatchIter<'_> {}
