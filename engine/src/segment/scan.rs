//! Validating scan of a segment file: the heart of recovery.
//!
//! Reads the log from the start, batch by batch, and accepts a batch only if its header parses,
//! it lies wholly inside the file, its CRC-32C matches, and its base offset is exactly the next
//! expected offset. The first batch that fails any check ends the valid prefix: everything from
//! its position on is a torn or corrupt tail. The scan rebuilds both indexes as it goes, with the
//! same spacing rule as live appends, so a rebuilt index equals the one appends would have made.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::record::{verify_crc, BatchHeader, BATCH_HEADER_LEN};

/// Bytes read per `pread` while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// What a scan established about a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Length of the valid prefix.
    pub valid_len: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_index: u64,
    /// Why the scan stopped before the end of the file, if it did: (position, reason).
    pub stopped: Option<(u64, String)>,
}

impl ScanOutcome {
    pub fn empty(base_offset: i64) -> ScanOutcome {
        ScanOutcome {
            valid_len: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
            stopped: None,
        }
    }

    fn accept(&mut self, base_offset: i64, header: &BatchHeader, index_interval_bytes: u64) {
        let relative = (header.base_offset - base_offset) as u32;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.index.entries().is_empty() || self.bytes_since_index >= index_interval_bytes {
            self.index.push(OffsetEntry { relative_offset: relative, position: self.valid_len as u32 });
            self.time_index.push(TimeEntry { timestamp: self.max_timestamp, relative_offset: relative });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_len() as u64;
        self.valid_len += header.total_len() as u64;
        self.next_offset = header.last_offset() + 1;
    }
}

/// Scans `file` (of `file_len` bytes) holding the segment that starts at `base_offset`.
/// `Err` only for a failing read; corruption is reported in [`ScanOutcome::stopped`].
pub fn scan(
    file: &File,
    base_offset: i64,
    file_len: u64,
    index_interval_bytes: u64,
) -> std::io::Result<ScanOutcome> {
    let mut out = ScanOutcome::empty(base_offset);
    let mut chunk: Vec<u8> = Vec::new();
    let mut chunk_start = 0u64;
    let mut big: Vec<u8> = Vec::new();
    loop {
        let position = out.valid_len;
        if position == file_len {
            return Ok(out);
        }
        if position + BATCH_HEADER_LEN as u64 > file_len {
            out.stopped =
                Some((position, format!("{} trailing bytes, less than a batch header", file_len - position)));
            return Ok(out);
        }
        // Keep a window of the file in memory; refill when the next header is not inside it.
        let in_chunk = |start: u64, len: usize| {
            position >= start && position + BATCH_HEADER_LEN as u64 <= start + len as u64
        };
        if !in_chunk(chunk_start, chunk.len()) {
            let want = SCAN_CHUNK_BYTES.min((file_len - position) as usize);
            chunk.resize(want, 0);
            file.read_exact_at(&mut chunk, position)?;
            chunk_start = position;
        }
        let at = (position - chunk_start) as usize;
        let header = match BatchHeader::parse(&chunk[at..]) {
            Ok(h) => h,
            Err(e) => {
                out.stopped = Some((position, format!("bad batch header: {e}")));
                return Ok(out);
            }
        };
        let total = header.total_len() as u64;
        if position + total > file_len {
            out.stopped = Some((
                position,
                format!("batch of {total} bytes runs past the end of the file ({file_len})"),
            ));
            return Ok(out);
        }
        // The format's own limits: positions and relative offsets are stored as u32 and kept
        // below 2^31, so a batch breaking them cannot belong to this segment.
        let relative_end = header.last_offset().saturating_sub(base_offset);
        if position + total > super::SEGMENT_BYTES_MAX || relative_end > i64::from(i32::MAX) {
            out.stopped = Some((
                position,
                format!(
                    "batch exceeds the segment limits (ends at byte {}, relative offset {relative_end})",
                    position + total
                ),
            ));
            return Ok(out);
        }
        if header.base_offset != out.next_offset {
            out.stopped = Some((
                position,
                format!("batch base offset {} where {} was expected", header.base_offset, out.next_offset),
            ));
            return Ok(out);
        }
        let bytes: &[u8] = if at + total as usize <= chunk.len() {
            &chunk[at..at + total as usize]
        } else {
            big.resize(total as usize, 0);
            file.read_exact_at(&mut big, position)?;
            &big
        };
        if let Err(e) = verify_crc(bytes) {
            out.stopped = Some((position, format!("{e}")));
            return Ok(out);
        }
        out.accept(base_offset, &header, index_interval_bytes);
    }
}
