//! A segment: one `<base_offset>.log` file of back-to-back RecordBatch v2 bytes, with its sparse
//! offset index (`.index`) and time index (`.timeindex`).
//!
//! Model: batches are appended at the end only. New batches are first *staged* in memory, then
//! handed to the [`Io`] as one write; `written_len` is what has completed. A segment is *active*
//! while it takes appends and *sealed* once the log rolls past it: sealing makes its log durable
//! and writes both indexes, so on the next open a sealed segment is trusted when its indexes
//! match its length, and rescanned otherwise (see [`scan`]).
//!
//! Guarantees: batches in a segment have contiguous, increasing offsets starting at
//! `base_offset`; every position in the offset index is the start of a batch; positions and
//! relative offsets fit in `u32` (segments are limited to 2 GiB and 2^31 offsets).

pub mod files;
pub mod index;
mod read;
pub mod reserve;
mod scan;

use std::cell::{Cell, OnceCell};
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes};

pub use index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
pub use read::HeaderCursor;
pub use scan::{salvage, scan, DamagedRange, Salvage, ScanOutcome, ScanTarget};

use crate::io::{Io, IoError, Write};
use crate::record::BatchHeader;
pub use files::ShardDisk;

/// Largest segment: positions are stored as `u32`, and Kafka clients treat sizes as `i32`.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// File name of a segment's log: the base offset, zero-padded to 20 digits so names sort.
pub fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

pub fn index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

pub fn time_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

/// Parses `<20 digits>.log` into a base offset.
pub fn parse_log_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where a batch lies in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPosition {
    pub position: u64,
    pub header: BatchHeader,
}

#[derive(Debug)]
pub struct Segment {
    /// Offset of the first batch (the file's base offset, except for the part of a damaged
    /// segment that follows a damaged range).
    base_offset: i64,
    /// The base offset in the file's name.
    file_base: i64,
    /// File position of the first batch: 0, except for the part of a damaged segment that
    /// follows a damaged range. Several such parts share one file.
    start: u64,
    dir: PathBuf,
    /// Always open for the active segment; opened on demand for a sealed one (see [`files`]).
    file: OnceCell<Arc<File>>,
    /// When the file was last used, on the shard's clock (for closing the least recently used).
    last_used: Cell<u64>,
    /// File position up to which writes have completed (the file's length for a whole segment).
    written_len: u64,
    /// Bytes covered by a completed fdatasync.
    durable_len: u64,
    /// Bytes below the partition's high watermark: what readers may see.
    visible_len: u64,
    /// Batches accepted but not yet handed to the I/O layer: each one's base offset as the log
    /// assigned it, and the rest of the batch as it arrived (bytes 8.. of the caller's batch,
    /// shared with the request that carried it, never copied).
    staged: Vec<([u8; 8], Bytes)>,
    staged_len: u64,
    /// One past the last offset in the segment, staged batches included.
    next_offset: i64,
    max_timestamp: i64,
    index: OffsetIndex,
    time_index: TimeIndex,
    /// Log bytes appended since the last index entry.
    bytes_since_index: u64,
    /// When the segment was created (or, after a restart, last modified): drives roll by age.
    created: SystemTime,
    /// When a batch was last appended, by the engine's clock (after a restart: the file's
    /// modification time): what retention by age falls back on.
    modified: SystemTime,
    sealed: bool,
    /// End of the blocks reserved with `fallocate` (beyond the file's size).
    reserved_to: u64,
    /// The file system refused a reservation: it is not asked again for this segment.
    reserve_refused: bool,
    /// What the shard's segments share: the reservation budget (this segment holds `claimed`
    /// of it, reserved and not yet written) and the count of open sealed files. Both are
    /// returned when the segment is dropped.
    disk: Option<Arc<ShardDisk>>,
    claimed: u64,
    /// When the last step was reserved, and the segment's end then: the write rate since.
    reserve_mark: Option<(Instant, u64)>,
    /// The last commit that wrote to this segment (for giving an idle reservation back).
    last_write: Option<Instant>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(disk) = &self.disk {
            disk.reserve.adjust(-(self.claimed as i64));
            if self.sealed && self.file.get().is_some() {
                disk.files.closed();
            }
        }
    }
}

impl Segment {
    /// Creates an empty active segment. The caller makes the directory entry durable.
    pub fn create(io: &mut dyn Io, dir: &Path, base_offset: i64) -> std::io::Result<Segment> {
        let file = io.create_file(&log_path(dir, base_offset), false)?;
        Ok(Segment::from_parts(dir, base_offset, file, 0, ScanOutcome::empty(base_offset), false))
    }

    /// Builds a segment from a file and what a scan (or its index files) established about it:
    /// the run of batches from `outcome.start` to `written_len`.
    pub fn from_parts(
        dir: &Path,
        file_base: i64,
        file: File,
        written_len: u64,
        outcome: ScanOutcome,
        sealed: bool,
    ) -> Segment {
        Segment::from_shared(dir, file_base, Arc::new(file), written_len, outcome, sealed)
    }

    /// [`Segment::from_parts`] for a file that several parts of a damaged segment share.
    pub fn from_shared(
        dir: &Path,
        file_base: i64,
        file: Arc<File>,
        written_len: u64,
        outcome: ScanOutcome,
        sealed: bool,
    ) -> Segment {
        debug_assert!(outcome.start <= written_len);
        let created = file.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
        Segment {
            base_offset: outcome.base_offset,
            file_base,
            start: outcome.start,
            dir: dir.to_path_buf(),
            file: OnceCell::from(file),
            last_used: Cell::new(0),
            written_len,
            durable_len: written_len,
            visible_len: written_len,
            staged: Vec::new(),
            staged_len: 0,
            next_offset: outcome.next_offset,
            max_timestamp: outcome.max_timestamp,
            index: outcome.index,
            time_index: outcome.time_index,
            bytes_since_index: outcome.bytes_since_index,
            created,
            modified: created,
            sealed,
            reserved_to: written_len,
            reserve_refused: false,
            disk: None,
            claimed: 0,
            reserve_mark: None,
            last_write: None,
        }
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The base offset in the file's name.
    pub fn file_base(&self) -> i64 {
        self.file_base
    }

    /// File position of the first batch.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Bytes in the segment, staged batches included.
    pub fn len(&self) -> u64 {
        self.end() - self.start
    }

    /// File position after the last batch, staged batches included.
    fn end(&self) -> u64 {
        self.written_len + self.staged_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// File position up to which writes have completed.
    pub fn written_len(&self) -> u64 {
        self.written_len
    }

    pub fn durable_len(&self) -> u64 {
        self.durable_len
    }

    pub fn visible_len(&self) -> u64 {
        self.visible_len
    }

    /// Raises the visible length (never lowers it: the high watermark only moves forward).
    pub fn mark_visible(&mut self, len: u64) {
        debug_assert!(len <= self.written_len);
        self.visible_len = self.visible_len.max(len);
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    pub fn created(&self) -> SystemTime {
        self.created
    }

    pub fn modified(&self) -> SystemTime {
        self.modified
    }

    /// Records an append at `now` (the engine's clock).
    pub fn touch(&mut self, now: SystemTime) {
        self.modified = now;
    }

    /// A segment the running engine created: its age counts from `now` (the engine's clock),
    /// not from the file's timestamps.
    pub fn set_created(&mut self, now: SystemTime) {
        self.created = now;
        self.modified = now;
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// The segment's file, opened if it was closed. A failure to open (out of descriptors, a
    /// file removed underneath) is an error of this read only.
    pub fn file(&self) -> Result<&Arc<File>, ReadError> {
        if self.file.get().is_none() {
            let path = self.log_path();
            let file = File::open(&path).map_err(|source| ReadError::Fs { path, source })?;
            if self.file.set(Arc::new(file)).is_ok() && self.sealed {
                if let Some(disk) = &self.disk {
                    disk.files.opened();
                }
            }
        }
        if let Some(disk) = &self.disk {
            self.last_used.set(disk.files.tick());
        }
        Ok(self.file.get().expect("opened above"))
    }

    /// The file of the active segment, which is always open.
    pub fn active_file(&self) -> &Arc<File> {
        self.file.get().expect("an active segment keeps its file open")
    }

    /// Joins the shard's shared resources (reservation budget, open-file count).
    pub fn attach(&mut self, disk: &Arc<ShardDisk>) {
        if self.sealed && self.file.get().is_some() {
            disk.files.opened();
        }
        self.disk = Some(Arc::clone(disk));
    }

    /// Closes a sealed segment's file (the next read opens it again); returns whether it was
    /// open.
    pub fn close_file(&mut self) -> bool {
        if !self.sealed || self.file.take().is_none() {
            return false;
        }
        if let Some(disk) = &self.disk {
            disk.files.closed();
        }
        true
    }

    /// When a sealed segment's open file was last used; `None` if closed or active.
    pub fn file_last_used(&self) -> Option<u64> {
        (self.sealed && self.file.get().is_some()).then(|| self.last_used.get())
    }

    pub fn log_path(&self) -> PathBuf {
        log_path(&self.dir, self.file_base)
    }

    pub fn offset_index(&self) -> &OffsetIndex {
        &self.index
    }

    pub fn time_index(&self) -> &TimeIndex {
        &self.time_index
    }

    /// Whether a batch of `batch_len` bytes and `offset_count` offsets still fits.
    pub fn has_room(&self, batch_len: u64, offset_count: i64, segment_bytes: u64) -> bool {
        let bytes_ok = self.len() + batch_len <= segment_bytes.min(SEGMENT_BYTES_MAX);
        let offsets_ok = self.next_offset - self.base_offset + offset_count <= i64::from(i32::MAX);
        bytes_ok && offsets_ok
    }

    /// Stages a checked batch at `header.base_offset`, which must be `self.next_offset()`;
    /// indexes it. The batch's own first eight bytes (the base offset the client sent) are
    /// not written: the assigned one is written in their place.
    pub fn stage(&mut self, mut batch: Bytes, header: &BatchHeader, index_interval_bytes: u64) {
        debug_assert!(!self.sealed);
        debug_assert_eq!(header.base_offset, self.next_offset);
        debug_assert_eq!(self.start, 0, "only whole segments take appends");
        let position = self.end();
        let relative = (header.base_offset - self.base_offset) as u32;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        // The first batch is always indexed, then one entry per `index_interval_bytes` of log.
        if self.index.entries().is_empty() || self.bytes_since_index >= index_interval_bytes {
            self.index.push(OffsetEntry { relative_offset: relative, position: position as u32 });
            self.time_index.push(TimeEntry { timestamp: self.max_timestamp, relative_offset: relative });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += batch.len() as u64;
        self.next_offset = header.last_offset() + 1;
        self.staged_len += batch.len() as u64;
        batch.advance(std::mem::size_of::<i64>());
        self.staged.push((header.base_offset.to_be_bytes(), batch));
    }

    /// The staged batches as slices for one write at [`Segment::written_len`]; empty if none.
    pub fn staged_slices(&self) -> Vec<IoSlice<'_>> {
        self.staged.iter().flat_map(|(base, rest)| [IoSlice::new(base), IoSlice::new(rest)]).collect()
    }

    /// Records that the pending write completed.
    pub fn mark_written(&mut self) {
        self.written_len += self.staged_len;
        self.staged_len = 0;
        self.staged.clear();
        self.settle_claim();
    }

    /// Brings the budget in line with what this segment holds reserved and unwritten.
    fn settle_claim(&mut self) {
        let Some(disk) = &self.disk else { return };
        let held = self.reserved_to.saturating_sub(self.written_len);
        if held != self.claimed {
            disk.reserve.adjust(held as i64 - self.claimed as i64);
            self.claimed = held;
        }
    }

    /// Records that an fdatasync covering every written byte completed.
    pub fn mark_synced(&mut self) {
        self.durable_len = self.written_len;
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.active_file().as_fd()
    }

    /// Reserves disk blocks ahead of the appends (`fallocate` with `KEEP_SIZE`, which leaves the
    /// file's size, and so recovery, unchanged), a step at a time, up to `segment_bytes`, as far
    /// as `budget` allows (see [`reserve`] for the step and the bounds). Called by each
    /// commit that writes to the segment, at `now`. A file system that refuses (no `fallocate`,
    /// or full) is not asked again for this segment.
    pub fn reserve_ahead(
        &mut self,
        io: &mut dyn Io,
        disk: &Arc<ShardDisk>,
        segment_bytes: u64,
        now: Instant,
    ) {
        self.last_write = Some(now);
        let end = self.end();
        if self.reserve_refused || end <= self.reserved_to {
            return;
        }
        let budget = &disk.reserve;
        let policy = budget.policy();
        let step = match self.reserve_mark {
            None => policy.step_min_bytes,
            Some((at, end_then)) => policy.step(end - end_then, now.saturating_duration_since(at)),
        };
        let from = self.reserved_to.max(self.written_len);
        let target = (end + step).min(segment_bytes.max(end));
        if target <= from {
            return;
        }
        let granted = budget.grant(&self.dir, target - from, now);
        if granted == 0 {
            return;
        }
        if self.disk.is_none() {
            self.disk = Some(Arc::clone(disk));
        }
        match io.reserve(self.active_file(), from, granted) {
            Ok(()) => {
                self.reserved_to = from + granted;
                self.reserve_mark = Some((now, end));
            }
            Err(e) => {
                tracing::debug!(file = %self.log_path().display(), error = %e, "no space reservation");
                // What was reserved before stays counted, and goes back as usual.
                self.reserve_refused = true;
            }
        }
        self.settle_claim();
    }

    /// Gives the reservation back if the segment took no write for `idle`; returns whether it
    /// held one.
    pub fn release_if_idle(&mut self, io: &mut dyn Io, idle: std::time::Duration, now: Instant) -> bool {
        let idle_since = self.last_write.is_some_and(|t| now.saturating_duration_since(t) >= idle);
        if self.claimed > 0 && idle_since {
            self.release_reservation(io);
            return true;
        }
        false
    }

    /// Bytes this segment holds reserved and not yet written.
    pub fn reserved_ahead(&self) -> u64 {
        self.claimed
    }

    /// Gives back the blocks reserved beyond the end of the log (at seal: a sealed segment keeps
    /// only what it holds). Truncating to the current size frees blocks past the end; punching a
    /// hole would not, as file systems ignore holes beyond the end of a file.
    pub fn release_reservation(&mut self, io: &mut dyn Io) {
        if self.reserved_to > self.written_len {
            if let Err(e) = io.set_len(self.active_file(), self.written_len) {
                tracing::debug!(file = %self.log_path().display(), error = %e, "reservation not released");
            }
        }
        self.reserved_to = self.written_len;
        self.reserve_mark = None;
        self.settle_claim();
    }

    /// Creates (or empties) the two index files a seal writes. Done before anything
    /// irreversible, so that a shortage of descriptors refuses a roll instead of leaving it
    /// half done.
    pub fn create_index_files(&self, io: &mut dyn Io) -> Result<IndexFiles, SealError> {
        debug_assert_eq!(self.start, 0, "only whole segments are sealed");
        let mut open =
            |p: PathBuf| io.create_file(&p, true).map_err(|source| SealError::Fs { path: p, source });
        let index = open(index_path(&self.dir, self.file_base))?;
        let time = open(time_index_path(&self.dir, self.file_base))?;
        Ok(IndexFiles { index, time })
    }

    /// Seals the segment: writes its staged batches, makes the log durable, writes both indexes
    /// into `files` and makes them durable. After this the segment takes no appends.
    pub fn seal(&mut self, io: &mut dyn Io, files: IndexFiles) -> Result<(), SealError> {
        self.seal_with(io, files, true)
    }

    /// Seals a segment whose log is already durable and has nothing staged (a compaction
    /// output, synced before it was committed), without an fsync: its index files are written
    /// but not synced, which is safe because recovery trusts index files only when they decode
    /// and match the log, and rebuilds them otherwise.
    pub fn seal_durable(&mut self, io: &mut dyn Io, files: IndexFiles) -> Result<(), SealError> {
        debug_assert!(self.staged.is_empty());
        self.seal_with(io, files, false)
    }

    fn seal_with(&mut self, io: &mut dyn Io, files: IndexFiles, sync: bool) -> Result<(), SealError> {
        let slices = self.staged_slices();
        let file = self.active_file();
        let pending = Write { fd: file.as_fd(), offset: self.written_len, bufs: &slices };
        let writes = if slices.is_empty() { &[][..] } else { std::slice::from_ref(&pending) };
        let fd = file.as_fd();
        io.submit(writes, if sync { std::slice::from_ref(&fd) } else { &[] }).map_err(SealError::Io)?;
        self.mark_written();
        self.mark_synced();
        // Still invisible: the partition publishes a sealed segment's last batches only once
        // the whole roll has succeeded.
        self.release_reservation(io);
        // The last entry of the time index must carry the segment's largest timestamp: retention
        // by age and lookups by time read it without scanning.
        if let Some(last) = self.last_batch_relative_offset() {
            self.time_index.push(TimeEntry { timestamp: self.max_timestamp, relative_offset: last });
        }
        let index_bytes = self.index.encode(self.written_len);
        let time_bytes = self.time_index.encode(self.written_len);
        let IndexFiles { index, time } = files;
        let (a, b) = ([IoSlice::new(&index_bytes)], [IoSlice::new(&time_bytes)]);
        let writes = [
            Write { fd: index.as_fd(), offset: 0, bufs: &a },
            Write { fd: time.as_fd(), offset: 0, bufs: &b },
        ];
        let syncs = [index.as_fd(), time.as_fd()];
        io.submit(&writes, if sync { &syncs[..] } else { &[] }).map_err(SealError::Io)?;
        self.sealed = true;
        if let Some(disk) = &self.disk {
            // Its file is open, and from now on counted with the sealed ones.
            disk.files.opened();
        }
        Ok(())
    }

    /// Relative offset of the last batch's base offset, from the scan position of the index.
    fn last_batch_relative_offset(&self) -> Option<u32> {
        if self.next_offset == self.base_offset {
            return None;
        }
        let last = self.index.entries().last()?;
        let mut pos = u64::from(last.position);
        let mut rel = last.relative_offset;
        while let Ok(Some(h)) = self.read_header(pos, u64::MAX) {
            rel = (h.base_offset - self.base_offset) as u32;
            pos += h.total_len() as u64;
        }
        Some(rel)
    }

    /// Cuts the segment back to `len` bytes (recovery of a torn tail); the caller syncs.
    pub fn truncate(&mut self, io: &mut dyn Io, len: u64, outcome: ScanOutcome) -> std::io::Result<()> {
        debug_assert!(self.staged.is_empty());
        io.set_len(self.active_file(), len)?;
        self.written_len = len;
        self.durable_len = len;
        self.visible_len = len;
        self.reserved_to = len;
        self.settle_claim();
        self.next_offset = outcome.next_offset;
        self.max_timestamp = outcome.max_timestamp;
        self.index = outcome.index;
        self.time_index = outcome.time_index;
        self.bytes_since_index = outcome.bytes_since_index;
        Ok(())
    }

    /// Drops what the partition never made visible (staged batches, and written bytes beyond
    /// the visible length) from memory and from the file: after a failure, nothing of it may
    /// ever be read. The offsets stay assigned, since the partition takes no more appends.
    pub fn cut_unacknowledged(&mut self, io: &mut dyn Io) -> std::io::Result<()> {
        self.staged.clear();
        self.staged_len = 0;
        if self.written_len > self.visible_len {
            io.set_len(self.active_file(), self.visible_len)?;
            self.written_len = self.visible_len;
            self.durable_len = self.durable_len.min(self.visible_len);
            self.reserved_to = self.written_len;
            self.settle_claim();
        }
        Ok(())
    }

    /// Removes the segment's files: indexes first, the log last, so that a failure part-way
    /// leaves at worst a log without indexes, which recovery rebuilds.
    pub fn delete_files(&self, io: &mut dyn Io) -> std::io::Result<()> {
        for p in [index_path(&self.dir, self.file_base), time_index_path(&self.dir, self.file_base)] {
            match io.remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        io.remove_file(&log_path(&self.dir, self.file_base))
    }
}

/// The index files of a segment about to be sealed, open for writing.
#[derive(Debug)]
pub struct IndexFiles {
    index: File,
    time: File,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Io(IoError),
    #[error("{}: {source}", path.display())]
    Fs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {}: {source}", path.display())]
    Fs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt at byte {position}: {reason}", path.display())]
    Corrupt { path: PathBuf, position: u64, reason: String },
}
