//! Reading a segment: batch headers through a buffered cursor, lookups by offset and by
//! timestamp, and the extent of a fetch.
//!
//! Lookups start from the sparse indexes, so they read at most about one index interval of
//! headers, and the cursor reads those in chunks rather than one `pread` per header.

use std::os::unix::fs::FileExt;

use super::{BatchPosition, ReadError, Segment};
use crate::record::{BatchHeader, BATCH_HEADER_LEN};

/// Bytes read per refill of a [`HeaderCursor`]: several index intervals of small batches.
const CURSOR_CHUNK_BYTES: usize = 16 * 1024;

/// Reads batch headers of one segment below a byte limit, a chunk at a time.
#[derive(Debug)]
pub struct HeaderCursor<'a> {
    segment: &'a Segment,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> HeaderCursor<'a> {
    /// A cursor over the batches that lie wholly below `limit` (capped at the written length).
    pub fn new(segment: &'a Segment, limit: u64) -> Self {
        HeaderCursor { segment, limit: limit.min(segment.written_len()), buf: Vec::new(), buf_start: 0 }
    }

    /// The header of the batch at `position`, or `None` if no whole batch starts there below the
    /// limit. A header that does not parse is corruption in a written segment.
    pub fn header_at(&mut self, position: u64) -> Result<Option<BatchHeader>, ReadError> {
        let header_end = position + BATCH_HEADER_LEN as u64;
        if header_end > self.limit {
            return Ok(None);
        }
        let cached = position >= self.buf_start && header_end <= self.buf_start + self.buf.len() as u64;
        if !cached {
            let len = CURSOR_CHUNK_BYTES.min((self.limit - position) as usize);
            self.buf.resize(len, 0);
            self.segment
                .file()?
                .read_exact_at(&mut self.buf, position)
                .map_err(|source| ReadError::Fs { path: self.segment.log_path(), source })?;
            self.buf_start = position;
        }
        let at = (position - self.buf_start) as usize;
        let header = BatchHeader::parse(&self.buf[at..]).map_err(|e| ReadError::Corrupt {
            path: self.segment.log_path(),
            position,
            reason: e.to_string(),
        })?;
        if position + header.total_len() as u64 > self.limit {
            return Ok(None);
        }
        Ok(Some(header))
    }
}

impl Segment {
    /// Reads the header of the batch at `position` if the whole batch lies below `limit`.
    pub fn read_header(&self, position: u64, limit: u64) -> Result<Option<BatchHeader>, ReadError> {
        HeaderCursor::new(self, limit).header_at(position)
    }

    /// The batch containing `offset` (or the first one after it) below `limit` bytes.
    pub fn find_offset(&self, offset: i64, limit: u64) -> Result<Option<BatchPosition>, ReadError> {
        let rel = u32::try_from(offset.saturating_sub(self.base_offset()).max(0)).unwrap_or(u32::MAX);
        let start = self.offset_index().floor(rel).map_or(self.start(), |e| u64::from(e.position));
        let mut cursor = HeaderCursor::new(self, limit);
        let mut position = start;
        while let Some(header) = cursor.header_at(position)? {
            if header.last_offset() >= offset {
                return Ok(Some(BatchPosition { position, header }));
            }
            position += header.total_len() as u64;
        }
        Ok(None)
    }

    /// The first batch below `limit` holding a timestamp >= `timestamp`.
    pub fn find_timestamp(&self, timestamp: i64, limit: u64) -> Result<Option<BatchPosition>, ReadError> {
        if self.max_timestamp() < timestamp {
            return Ok(None);
        }
        let start = self
            .time_index()
            .floor_below(timestamp)
            .map_or(self.base_offset(), |e| self.base_offset() + i64::from(e.relative_offset));
        let Some(first) = self.find_offset(start, limit)? else { return Ok(None) };
        let mut cursor = HeaderCursor::new(self, limit);
        let mut at = first;
        loop {
            if at.header.max_timestamp >= timestamp {
                return Ok(Some(at));
            }
            let next = at.position + at.header.total_len() as u64;
            match cursor.header_at(next)? {
                Some(header) => at = BatchPosition { position: next, header },
                None => return Ok(None),
            }
        }
    }

    /// The first batch with records at or after `from` (below `limit` bytes), if any.
    pub fn first_with_records(
        &self,
        from: BatchPosition,
        limit: u64,
    ) -> Result<Option<BatchPosition>, ReadError> {
        let mut at = from;
        let mut cursor = None;
        while at.header.records_count == 0 {
            let next = at.position + at.header.total_len() as u64;
            let cursor = cursor.get_or_insert_with(|| HeaderCursor::new(self, limit));
            match cursor.header_at(next)? {
                Some(header) => at = BatchPosition { position: next, header },
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Whether the batches from the last offset index entry run contiguously to exactly the end
    /// of the written bytes and end at `next_offset()`: the check that lets recovery trust a
    /// sealed segment's index files without scanning the whole log.
    pub fn check_end(&self) -> Result<bool, ReadError> {
        let Some(last) = self.offset_index().entries().last().copied() else {
            return Ok(self.written_len() == 0);
        };
        let mut cursor = HeaderCursor::new(self, self.written_len());
        let mut position = u64::from(last.position);
        let mut expected = self.base_offset() + i64::from(last.relative_offset);
        while position < self.written_len() {
            match cursor.header_at(position) {
                Ok(Some(h)) if h.base_offset == expected => {
                    position += h.total_len() as u64;
                    expected = h.last_offset() + 1;
                }
                Ok(_) | Err(ReadError::Corrupt { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(position == self.written_len() && expected == self.next_offset())
    }

    /// How far a fetch starting at batch `first` extends: whole batches up to `max_bytes` in
    /// total (at least `first` itself), below `limit` bytes, where `limit_offset` is the offset
    /// at `limit`. Returns (length in bytes, offset after the last batch).
    ///
    /// The offset index gives the last batch boundary within reach, so only the headers of about
    /// one index interval are read, whatever the size of the fetch.
    pub fn extent(
        &self,
        first: &BatchPosition,
        max_bytes: u64,
        limit: u64,
        limit_offset: i64,
    ) -> Result<(u64, i64), ReadError> {
        let first_end = first.position + first.header.total_len() as u64;
        let target = first.position.saturating_add(max_bytes.max(first.header.total_len() as u64));
        if target >= limit {
            // Everything visible fits; `limit` is a batch boundary.
            return Ok((limit - first.position, limit_offset));
        }
        let (mut position, mut next_offset) = (first_end, first.header.last_offset() + 1);
        if let Some(e) = self.offset_index().floor_position(target as u32) {
            if u64::from(e.position) > first_end {
                position = u64::from(e.position);
                next_offset = self.base_offset() + i64::from(e.relative_offset);
            }
        }
        let mut cursor = HeaderCursor::new(self, limit);
        while let Some(h) = cursor.header_at(position)? {
            if position + h.total_len() as u64 > target {
                break;
            }
            position += h.total_len() as u64;
            next_offset = h.last_offset() + 1;
        }
        Ok((position - first.position, next_offset))
    }
}
