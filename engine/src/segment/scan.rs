//! Validating scans of a segment file: the heart of recovery.
//!
//! [`scan`] reads a run of batches from a position, batch by batch, and accepts a batch only if
//! its header parses, it lies wholly inside the file, its CRC-32C matches, its base offset is
//! exactly the next expected offset, and (for a segment that has a successor) it ends before the
//! successor's base offset. The first batch that fails any check ends the run. The scan rebuilds
//! both indexes as it goes, with the same spacing rule as live appends, so a rebuilt index equals
//! the one appends would have made.
//!
//! [`salvage`] is for sealed segments, where a failed check is damage rather than a torn tail:
//! it keeps scanning past each damaged range, resuming at the next intact batch, so that damage
//! costs only the damaged batches. It never changes the file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::record::{verify_crc, BatchHeader, BATCH_HEADER_LEN};

/// Bytes read per `pread` while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// Byte position of the magic in a batch header (for the resynchronising search).
const MAGIC_AT: usize = 16;

/// What a scan established about one run of contiguous batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// File position of the run's first batch (0 for a scan of a whole segment).
    pub start: u64,
    /// Offset of the run's first batch (the expected offset if the run is empty). Index
    /// entries are relative to it.
    pub base_offset: i64,
    /// File position just past the run's last batch.
    pub valid_end: u64,
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
        ScanOutcome::empty_at(0, base_offset)
    }

    fn empty_at(start: u64, base_offset: i64) -> ScanOutcome {
        ScanOutcome {
            start,
            base_offset,
            valid_end: start,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
            stopped: None,
        }
    }

    /// Whether the run holds no batch.
    pub fn is_empty(&self) -> bool {
        self.valid_end == self.start
    }

    /// Takes the next batch of the run (at `valid_end`) into the indexes.
    pub fn accept(&mut self, header: &BatchHeader, index_interval_bytes: u64) {
        let relative = (header.base_offset - self.base_offset) as u32;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.index.entries().is_empty() || self.bytes_since_index >= index_interval_bytes {
            self.index.push(OffsetEntry { relative_offset: relative, position: self.valid_end as u32 });
            self.time_index.push(TimeEntry { timestamp: self.max_timestamp, relative_offset: relative });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_len() as u64;
        self.valid_end += header.total_len() as u64;
        self.next_offset = header.last_offset() + 1;
    }
}

/// Where a scan runs: the file, its length, the segment it holds and the offset it must stop
/// before.
#[derive(Debug, Clone, Copy)]
pub struct ScanTarget<'a> {
    pub file: &'a File,
    pub file_len: u64,
    /// The segment's base offset (the number in its file name): relative offsets in the file
    /// must stay below 2^31 from it.
    pub file_base: i64,
    /// The next segment's base offset, if there is a next segment: no batch may reach it.
    pub end_offset: Option<i64>,
    pub index_interval_bytes: u64,
}

/// Scans the run of batches starting at byte `start`, whose first batch must have base offset
/// `expected`. `Err` only for a failing read; corruption is reported in
/// [`ScanOutcome::stopped`].
pub fn scan(target: &ScanTarget<'_>, start: u64, expected: i64) -> std::io::Result<ScanOutcome> {
    let ScanTarget { file, file_len, file_base, end_offset, index_interval_bytes } = *target;
    let mut out = ScanOutcome::empty_at(start, expected);
    let mut window = Window::default();
    let mut big: Vec<u8> = Vec::new();
    loop {
        let position = out.valid_end;
        if position == file_len {
            return Ok(out);
        }
        if position + BATCH_HEADER_LEN as u64 > file_len {
            out.stopped =
                Some((position, format!("{} trailing bytes, less than a batch header", file_len - position)));
            return Ok(out);
        }
        let chunk = window.at(file, position, BATCH_HEADER_LEN, file_len)?;
        let header = match BatchHeader::parse(chunk) {
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
        let relative_end = header.last_offset().saturating_sub(file_base);
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
        if let Some(end) = end_offset.filter(|&end| header.last_offset() >= end) {
            out.stopped = Some((
                position,
                format!(
                    "batch of offsets {}..={} reaches offset {end}, where the next segment starts",
                    header.base_offset,
                    header.last_offset()
                ),
            ));
            return Ok(out);
        }
        let bytes = window.batch(file, position, total as usize, file_len, &mut big)?;
        if let Err(e) = verify_crc(bytes) {
            out.stopped = Some((position, format!("{e}")));
            return Ok(out);
        }
        out.accept(&header, index_interval_bytes);
    }
}

/// A byte range of a sealed segment that holds no intact batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    pub position: u64,
    pub len: u64,
    /// The offset the first batch at `position` should have had.
    pub expected_offset: i64,
    /// Offset of the first intact batch after the range, if one was found in this file.
    pub resumed_at: Option<i64>,
    pub reason: String,
}

/// What a salvage scan of a sealed segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// Runs of intact, contiguous batches, in file order; the first starts at position 0 when
    /// the file starts intact. Never empty runs.
    pub runs: Vec<ScanOutcome>,
    /// Damaged ranges between (or after) the runs.
    pub damage: Vec<DamagedRange>,
    /// Bytes after the batch that reached the next segment's base offset: (position, reason).
    /// Not data: the segment's offsets are complete without them.
    pub trailing: Option<(u64, String)>,
}

impl Salvage {
    /// Offset after the last intact batch (the segment's base if none).
    pub fn next_offset(&self, file_base: i64) -> i64 {
        self.runs.last().map_or(file_base, |r| r.next_offset)
    }
}

/// Scans a sealed segment, resuming after each damaged range at the next intact batch whose
/// offsets continue upwards (below `end_offset`). A damaged batch whose header is intact is
/// skipped by its length when an intact batch follows it; otherwise the following bytes are
/// searched for the next position holding a whole batch with a valid header and CRC.
pub fn salvage(target: &ScanTarget<'_>) -> std::io::Result<Salvage> {
    let mut out = Salvage { runs: Vec::new(), damage: Vec::new(), trailing: None };
    let (mut position, mut expected) = (0u64, target.file_base);
    loop {
        let run = scan(target, position, expected)?;
        let stopped = run.stopped.clone();
        let (run_end, run_next) = (run.valid_end, run.next_offset);
        if !run.is_empty() {
            out.runs.push(run);
        }
        let Some((at, reason)) = stopped else { return Ok(out) };
        if target.end_offset == Some(run_next) {
            out.trailing = Some((at, reason));
            return Ok(out);
        }
        debug_assert_eq!(at, run_end);
        match find_next_batch(target, at, run_next)? {
            Some((resume, header)) => {
                out.damage.push(DamagedRange {
                    position: at,
                    len: resume - at,
                    expected_offset: run_next,
                    resumed_at: Some(header.base_offset),
                    reason,
                });
                position = resume;
                expected = header.base_offset;
            }
            None => {
                out.damage.push(DamagedRange {
                    position: at,
                    len: target.file_len - at,
                    expected_offset: run_next,
                    resumed_at: None,
                    reason,
                });
                return Ok(out);
            }
        }
    }
}

/// The first position after `from` where a whole, intact batch starts whose base offset is
/// above `after` (and that ends below the target's end offset). Tries the position the header
/// at `from` points to first, then every position.
fn find_next_batch(
    target: &ScanTarget<'_>,
    from: u64,
    after: i64,
) -> std::io::Result<Option<(u64, BatchHeader)>> {
    let mut window = Window::default();
    let mut big = Vec::new();
    let mut candidate = |at: u64| intact_batch_at(target, at, after, &mut window, &mut big);
    // A damaged batch whose header still parses: the next batch is where its length says.
    let mut header_window = Window::default();
    if from + BATCH_HEADER_LEN as u64 <= target.file_len {
        let raw = header_window.at(target.file, from, BATCH_HEADER_LEN, target.file_len)?;
        if let Ok(h) = BatchHeader::parse(raw) {
            let next = from + h.total_len() as u64;
            if let Some(found) = candidate(next)? {
                return Ok(Some((next, found)));
            }
        }
    }
    let mut at = from + 1;
    while at + BATCH_HEADER_LEN as u64 <= target.file_len {
        // Cheap filter first: the magic byte of a v2 batch.
        let magic = header_window.at(target.file, at + MAGIC_AT as u64, 1, target.file_len)?[0];
        if magic == 2 {
            if let Some(found) = candidate(at)? {
                return Ok(Some((at, found)));
            }
        }
        at += 1;
    }
    Ok(None)
}

/// The header of the batch at `at` if a whole, intact batch starts there whose offsets lie
/// above `after` and within the segment's limits.
fn intact_batch_at(
    target: &ScanTarget<'_>,
    at: u64,
    after: i64,
    window: &mut Window,
    big: &mut Vec<u8>,
) -> std::io::Result<Option<BatchHeader>> {
    if at + BATCH_HEADER_LEN as u64 > target.file_len {
        return Ok(None);
    }
    let Ok(h) = BatchHeader::parse(window.at(target.file, at, BATCH_HEADER_LEN, target.file_len)?) else {
        return Ok(None);
    };
    let total = h.total_len() as u64;
    let fits = at + total <= target.file_len
        && h.base_offset > after
        && h.last_offset() >= h.base_offset
        && h.last_offset().saturating_sub(target.file_base) <= i64::from(i32::MAX)
        && target.end_offset.is_none_or(|end| h.last_offset() < end);
    if !fits {
        return Ok(None);
    }
    let bytes = window.batch(target.file, at, total as usize, target.file_len, big)?;
    Ok(verify_crc(bytes).is_ok().then_some(h))
}

/// A window of the file kept in memory, refilled when a read falls outside it.
#[derive(Debug, Default)]
struct Window {
    buf: Vec<u8>,
    start: u64,
}

impl Window {
    /// `len` bytes at `position` (which must lie inside the file).
    fn at(&mut self, file: &File, position: u64, len: usize, file_len: u64) -> std::io::Result<&[u8]> {
        let inside = position >= self.start && position + len as u64 <= self.start + self.buf.len() as u64;
        if !inside {
            let want = SCAN_CHUNK_BYTES.max(len).min((file_len - position) as usize);
            self.buf.resize(want, 0);
            file.read_exact_at(&mut self.buf, position)?;
            self.start = position;
        }
        let at = (position - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }

    /// The whole batch of `total` bytes at `position`: from the window if it holds it, else read
    /// into `big`.
    fn batch<'a>(
        &'a mut self,
        file: &File,
        position: u64,
        total: usize,
        file_len: u64,
        big: &'a mut Vec<u8>,
    ) -> std::io::Result<&'a [u8]> {
        if total <= SCAN_CHUNK_BYTES {
            return self.at(file, position, total, file_len);
        }
        big.resize(total, 0);
        file.read_exact_at(big, position)?;
        Ok(big)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BatchBuilder, BatchOptions, Record};

    /// A file of `n` one-record batches with offsets from `base`; returns the file and each
    /// batch's start position.
    fn file_of(base: i64, n: usize) -> (tempfile::NamedTempFile, Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..n {
            let mut b = BatchBuilder::new(BatchOptions::default());
            let v = format!("value-{i:03}-{}", "x".repeat(i % 7));
            b.push(&Record { timestamp: i as i64, key: None, value: Some(v.as_bytes()), headers: &[] });
            let mut batch = b.finish();
            crate::record::set_base_offset(&mut batch, base + i as i64);
            starts.push(bytes.len() as u64);
            bytes.extend_from_slice(&batch);
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &bytes).unwrap();
        (f, bytes, starts)
    }

    fn target<'a>(file: &'a File, len: u64, base: i64, end: Option<i64>) -> ScanTarget<'a> {
        ScanTarget { file, file_len: len, file_base: base, end_offset: end, index_interval_bytes: 64 }
    }

    fn salvage_bytes(bytes: &[u8], base: i64, end: Option<i64>) -> Salvage {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let file = File::open(f.path()).unwrap();
        salvage(&target(&file, bytes.len() as u64, base, end)).unwrap()
    }

    fn offsets(s: &Salvage) -> Vec<(i64, i64)> {
        s.runs.iter().map(|r| (r.base_offset, r.next_offset)).collect()
    }

    #[test]
    fn a_clean_sealed_segment_is_one_run() {
        let (f, bytes, _) = file_of(100, 20);
        let file = File::open(f.path()).unwrap();
        let s = salvage(&target(&file, bytes.len() as u64, 100, Some(120))).unwrap();
        assert_eq!(offsets(&s), vec![(100, 120)]);
        assert!(s.damage.is_empty() && s.trailing.is_none());
        assert_eq!(s.runs[0].valid_end, bytes.len() as u64);
    }

    #[test]
    fn garbage_after_the_last_offset_is_trailing_not_damage() {
        let (_, mut bytes, _) = file_of(0, 10);
        let len = bytes.len() as u64;
        bytes.extend((0..100u32).map(|i| (i * 37 + 11) as u8));
        let s = salvage_bytes(&bytes, 0, Some(10));
        assert_eq!(offsets(&s), vec![(0, 10)]);
        assert!(s.damage.is_empty());
        assert_eq!(s.trailing.as_ref().map(|t| t.0), Some(len));
    }

    #[test]
    fn a_flipped_byte_costs_only_its_batch() {
        let (_, mut bytes, starts) = file_of(0, 10);
        bytes[starts[4] as usize + 70] ^= 0x40;
        let s = salvage_bytes(&bytes, 0, Some(10));
        assert_eq!(offsets(&s), vec![(0, 4), (5, 10)]);
        assert_eq!(s.damage.len(), 1);
        let d = &s.damage[0];
        assert_eq!(
            (d.position, d.len, d.expected_offset, d.resumed_at),
            (starts[4], starts[5] - starts[4], 4, Some(5))
        );
        assert!(d.reason.contains("CRC"), "{}", d.reason);
        // The second run's index starts at its own first batch.
        assert_eq!(s.runs[1].start, starts[5]);
        assert_eq!(s.runs[1].index.entries()[0].position as u64, starts[5]);
    }

    #[test]
    fn a_damaged_header_is_skipped_by_searching_for_the_next_batch() {
        let (_, mut bytes, starts) = file_of(0, 10);
        // The length field of batch 3 is destroyed: its end is unknown.
        bytes[starts[3] as usize + 8..starts[3] as usize + 12].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        let s = salvage_bytes(&bytes, 0, Some(10));
        assert_eq!(offsets(&s), vec![(0, 3), (4, 10)]);
        assert_eq!(s.damage[0].position, starts[3]);
        assert_eq!(s.damage[0].len, starts[4] - starts[3]);
    }

    #[test]
    fn a_truncated_sealed_segment_ends_in_damage_without_a_resume_point() {
        let (_, bytes, starts) = file_of(0, 10);
        let cut = &bytes[..starts[7] as usize + 20];
        let s = salvage_bytes(cut, 0, Some(10));
        assert_eq!(offsets(&s), vec![(0, 7)]);
        assert_eq!(s.damage.len(), 1);
        assert_eq!((s.damage[0].position, s.damage[0].resumed_at), (starts[7], None));
        assert_eq!(s.next_offset(0), 7);
    }

    #[test]
    fn zeroed_pages_in_the_middle_cost_the_batches_they_touch() {
        let (_, mut bytes, starts) = file_of(0, 40);
        let (from, to) = (starts[10] as usize + 5, starts[20] as usize + 30);
        bytes[from..to].fill(0);
        let s = salvage_bytes(&bytes, 0, Some(40));
        assert_eq!(offsets(&s), vec![(0, 10), (21, 40)]);
    }

    #[test]
    fn resumed_batches_must_move_offsets_forward() {
        // Batch 5 is replaced by a valid copy of batch 2: a resume there would go backwards.
        let (_, bytes, starts) = file_of(0, 8);
        let mut spliced = bytes[..starts[5] as usize].to_vec();
        spliced.extend_from_slice(&bytes[starts[2] as usize..starts[3] as usize]);
        spliced.extend_from_slice(&bytes[starts[6] as usize..]);
        let s = salvage_bytes(&spliced, 0, Some(8));
        assert_eq!(offsets(&s), vec![(0, 5), (6, 8)]);
    }
}
