//! A partition: an ordered run of segments, the unit of order, offsets and durability.
//!
//! Model: one owner (a shard thread) appends and reads; nothing here is shared or locked.
//! An append validates a client's RecordBatch, assigns it the next offsets by rewriting its base
//! offset in place (outside the CRC, as Kafka does) and *stages* it. [`commit`] then hands the
//! staged bytes of many partitions to the I/O layer in one submission, with one `fdatasync` per
//! partition that needs one: that is group commit. Offsets become visible to readers, and may be
//! acknowledged, only once the partition's durability mode holds for them (the high watermark).
//!
//! Invariants:
//! - offsets increase from `log_start_offset` to `next_offset`; segments tile them, except
//!   where recovery found damage in a sealed segment (see [`damage`]): the intact parts around
//!   it are separate segments with a gap of lost offsets between them, and the partition
//!   refuses writes until the damage is accepted;
//! - every segment but the last is sealed: durable, with index files on disk (damaged ones
//!   excepted, which are rescanned at every open);
//! - `log_start_offset <= high_watermark <= written_end <= next_offset`, and the high watermark
//!   never moves backwards (not even when the durability mode changes);
//! - after any I/O error the partition is failed: it takes no writes, syncs nothing and
//!   publishes nothing until reopened, and its fence makes the reopened log end at the high
//!   watermark it had, so no batch whose producer was told it failed becomes visible.

mod archive;
mod clean;
mod commit;
pub mod config;
pub mod damage;
mod error;
mod recovery;
mod retention;
pub mod validate;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

pub use crate::segment::files::ShardDisk;
pub use crate::segment::reserve::{ReserveBudget, ReservePolicy};
pub use clean::{CleanOutcome, CleanPass, CleanStep, Slice};
pub use commit::{commit, CommitOutcome};
pub use config::{Cleanup, Compaction, Durability, LogConfig};
pub use damage::{Damage, DamageReport};
pub use error::LogError;
pub use retention::RetentionOutcome;

use crate::io::{Io, IoError};
use crate::record::BatchHeader;
use crate::segment::{IndexFiles, SealError, Segment};

/// Offsets assigned to one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
}

/// A contiguous run of whole batches in one segment file, ready to read or to send with
/// `sendfile`. Empty (`len == 0`) when the requested offset is the end of the log.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
    /// Base offset of the first batch (at or below the requested offset).
    pub first_offset: i64,
    /// Offset after the last batch in the slice: where the next read continues.
    pub next_offset: i64,
}

impl ReadSlice {
    /// Reads the slice's bytes into the front of `buf`, which must hold at least `len` bytes;
    /// returns the filled part. Lets a reader reuse one buffer without clearing it.
    pub fn read_to<'b>(&self, buf: &'b mut [u8]) -> std::io::Result<&'b [u8]> {
        let len = self.len as usize;
        let available = buf.len();
        let dst = buf.get_mut(..len).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("buffer of {available} bytes for a {len}-byte slice"),
            )
        })?;
        self.file.read_exact_at(dst, self.position)?;
        Ok(dst)
    }

    /// Copies the slice's bytes into `out` (for embedded readers; the network path uses sendfile).
    pub fn read_into(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        out.resize(start + self.len as usize, 0);
        self.file.read_exact_at(&mut out[start..], self.position)
    }
}

#[derive(Debug)]
pub struct Partition {
    dir: PathBuf,
    config: LogConfig,
    /// Oldest first; the last one is active.
    segments: VecDeque<Segment>,
    log_start_offset: i64,
    /// One past the last offset whose write completed.
    written_end: i64,
    /// One past the last offset covered by a completed fdatasync.
    durable_end: i64,
    /// One past the last offset readers may see and producers may be told about.
    high_watermark: i64,
    last_sync: Instant,
    /// The latest wall-clock time the engine gave this partition (an append, a retention
    /// check): a segment rolled now is created at it.
    now_hint: SystemTime,
    failed: Option<Arc<IoError>>,
    /// Damage recovery found in sealed segments.
    damage: Arc<[Damage]>,
    /// Whether an operator accepted all of `damage` (then the partition takes writes).
    damage_accepted: bool,
    /// What the shard's segments share: the reservation budget and the open sealed files.
    disk: Arc<ShardDisk>,
    /// Compaction: everything below this offset was compacted (kept across restarts in the
    /// `cleaner-checkpoint` file; the log start when there is none).
    cleaned_to: i64,
    /// Compaction: the earliest delete horizon of a tombstone the last pass kept.
    next_horizon_ms: Option<i64>,
    /// Segments moved to the archive, oldest first; all before `segments` (see [`archive`]).
    archived: VecDeque<Segment>,
}

impl Partition {
    /// Opens (or creates) the partition stored in `dir`, running recovery: see [`recovery`].
    pub fn open(dir: &Path, config: LogConfig, io: &mut dyn Io) -> Result<Partition, LogError> {
        Partition::open_with(dir, config, io, ShardDisk::standalone())
    }

    /// [`Partition::open`] for a partition whose space reservations and open files count
    /// against its shard's `disk`.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        io: &mut dyn Io,
        disk: Arc<ShardDisk>,
    ) -> Result<Partition, LogError> {
        config.validate().map_err(LogError::Config)?;
        std::fs::create_dir_all(dir).map_err(|e| LogError::fs(dir, e))?;
        let recovery::Recovered { mut segments, damage } = recovery::recover(dir, &config, io)?;
        for seg in &mut segments {
            seg.attach(&disk);
        }
        let end = segments.back().map_or(0, Segment::next_offset);
        let local_first = segments.front().map_or(0, Segment::base_offset);
        let archived = match disk.archive_root.as_ref().filter(|_| config.archive) {
            Some(root) => {
                let archive = root.join(dir.file_name().unwrap_or_default());
                let mut archived = archive::load(io, &archive, local_first, config.index_interval_bytes)?;
                for seg in &mut archived {
                    seg.attach(&disk);
                }
                archived
            }
            None => VecDeque::new(),
        };
        // A log start moved by DeleteRecords (never beyond what survived recovery).
        let first = archived.front().map_or(local_first, Segment::base_offset);
        let log_start_offset = retention::read_log_start(dir)?.map_or(first, |s| s.clamp(first, end));
        let damage_accepted = damage::all_accepted(dir, &damage)?;
        if !damage.is_empty() {
            if damage_accepted {
                tracing::warn!(dir = %dir.display(), ranges = damage.len(), "partition has accepted damage; taking writes");
            } else {
                tracing::error!(
                    dir = %dir.display(),
                    ranges = damage.len(),
                    "partition is damaged: serving what is intact, refusing writes until the damage is accepted"
                );
            }
        }
        assert!(segments
            .iter()
            .zip(segments.iter().skip(1))
            .all(|(a, b)| a.next_offset() <= b.base_offset()));
        let partition = Partition {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            written_end: end,
            durable_end: end,
            high_watermark: end,
            last_sync: Instant::now(),
            now_hint: SystemTime::now(),
            failed: None,
            damage: damage.into(),
            damage_accepted,
            disk,
            // Where compaction got before the restart, within what is there now.
            cleaned_to: clean::read_checkpoint(dir)
                .map_or(log_start_offset, |(c, _)| c.clamp(log_start_offset, end)),
            next_horizon_ms: clean::read_checkpoint(dir).and_then(|(_, h)| h),
            archived,
        };
        assert!(partition.watermarks_ordered(), "after recovery: {}", partition.watermarks());
        Ok(partition)
    }

    /// Reserves disk space ahead of the staged appends, within the shard's budget (see
    /// `segment::reserve`); called by each commit that writes to this partition.
    fn reserve_ahead(&mut self, io: &mut dyn Io, now: Instant) {
        let segment_bytes = self.config.segment_bytes;
        let disk = &self.disk;
        let active = self.segments.back_mut().expect("a partition always has an active segment");
        active.reserve_ahead(io, disk, segment_bytes, now);
    }

    /// Gives back the disk space the active segment reserved and has not written, if it took no
    /// write for the budget's idle time (or at once with `force`). Returns whether it held any.
    pub fn release_reservation(&mut self, io: &mut dyn Io, now: Instant, force: bool) -> bool {
        let idle = if force { std::time::Duration::ZERO } else { self.disk.reserve.policy().idle };
        let active = self.active_mut();
        if force && active.reserved_ahead() > 0 {
            active.release_reservation(io);
            return true;
        }
        active.release_if_idle(io, idle, now)
    }

    /// Adds the use ticks of the sealed-segment files this partition holds open to `out` (for
    /// the shard's choice of which to close; the last segment is never closed).
    pub fn open_file_ticks(&self, out: &mut Vec<u64>) {
        let last = self.segments.len() - 1;
        out.extend(
            self.archived.iter().chain(self.segments.iter().take(last)).filter_map(Segment::file_last_used),
        );
    }

    /// Closes the open sealed-segment files last used at or before `tick`; returns how many.
    pub fn close_files_used_by(&mut self, tick: u64) -> usize {
        let last = self.segments.len() - 1;
        let mut closed = 0;
        for seg in self.archived.iter_mut().chain(self.segments.iter_mut().take(last)) {
            if seg.file_last_used().is_some_and(|t| t <= tick) && seg.close_file() {
                closed += 1;
            }
        }
        closed
    }

    /// Bytes the active segment holds reserved ahead of its appends.
    pub fn reserved_ahead(&self) -> u64 {
        self.active().reserved_ahead()
    }

    /// Damage recovery found in sealed segments (empty for an intact partition).
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// The damage and whether it was accepted.
    pub fn damage_report(&self) -> DamageReport {
        DamageReport { ranges: self.damage.to_vec(), accepted: self.damage_accepted }
    }

    /// Accepts the damage recovery found as lost, durably (see [`damage`]): the partition takes
    /// writes again, here and after every later open, while its files stay as they are.
    pub fn accept_damage(&mut self, io: &mut dyn Io) -> Result<(), LogError> {
        damage::accept(io, &self.dir, &self.damage)?;
        self.damage_accepted = true;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration (retention, roll, durability); takes effect from the next call.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), LogError> {
        config.validate().map_err(LogError::Config)?;
        self.config = config;
        Ok(())
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next appended record gets.
    pub fn next_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// One past the last offset readers may see and producers may be told about: durable under
    /// `always`, written under `interval` and `never`.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// Moves the high watermark up to what the durability mode allows: the durable end under
    /// `always`, the written end otherwise. Never moves it down.
    fn advance_high_watermark(&mut self) {
        let (end, len) = match self.config.durability {
            Durability::Always => (self.durable_end, self.active().durable_len()),
            _ => (self.written_end, self.active().written_len()),
        };
        if end > self.high_watermark {
            self.high_watermark = end;
            self.active_mut().mark_visible(len);
        }
        debug_assert!(self.watermarks_ordered(), "{}", self.watermarks());
    }

    /// `log_start <= high_watermark <= written_end <= next_offset`, and `durable_end <=
    /// written_end`: the ordering every change of these offsets keeps.
    fn watermarks_ordered(&self) -> bool {
        self.log_start_offset <= self.high_watermark
            && self.high_watermark <= self.written_end
            && self.durable_end <= self.written_end
            && self.written_end <= self.next_offset()
    }

    fn watermarks(&self) -> String {
        format!(
            "{}: log start {}, high watermark {}, durable end {}, written end {}, next offset {}",
            self.dir.display(),
            self.log_start_offset,
            self.high_watermark,
            self.durable_end,
            self.written_end,
            self.next_offset()
        )
    }

    /// Bytes staged that no commit has written yet.
    pub fn staged_bytes(&self) -> u64 {
        self.active().len() - self.active().written_len()
    }

    /// Whether batches are staged that no commit has written yet.
    pub fn has_staged(&self) -> bool {
        self.active().len() > self.active().written_len()
    }

    /// One past the last offset covered by an fdatasync.
    pub fn durable_end(&self) -> i64 {
        self.durable_end
    }

    pub fn segments(&self) -> impl ExactSizeIterator<Item = &Segment> {
        self.segments.iter()
    }

    /// Bytes on disk and staged, over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// The error that failed this partition, if one did.
    pub fn failure(&self) -> Option<&Arc<IoError>> {
        self.failed.as_ref()
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("a partition always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.back_mut().expect("a partition always has an active segment")
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if let Some(cause) = &self.failed {
            return Err(LogError::Failed { dir: self.dir.clone(), cause: Arc::clone(cause) });
        }
        if !self.damage.is_empty() && !self.damage_accepted {
            return Err(LogError::Damaged { dir: self.dir.clone(), damage: Arc::clone(&self.damage) });
        }
        Ok(())
    }

    /// Marks the partition failed after an I/O error and returns the error to report.
    ///
    /// Everything staged or written beyond the high watermark belongs to producers that are now
    /// told it failed. It is cut from the active segment's file at once, and the fence records
    /// the high watermark so that the next recovery cuts it even if the cut does not reach the
    /// disk. Both are best effort on a device that just failed; neither is an fsync of the
    /// failed file.
    fn fail(&mut self, io: &mut dyn Io, cause: Arc<IoError>) -> LogError {
        tracing::error!(dir = %self.dir.display(), error = %cause, "partition failed; refusing further writes");
        if self.failed.is_none() {
            if let Err(e) = damage::write_fence(io, &self.dir, self.high_watermark) {
                tracing::error!(dir = %self.dir.display(), error = %e, "could not write the failure fence");
            }
            let active = self.active_mut();
            if let Err(e) = active.cut_unacknowledged(io) {
                tracing::error!(file = %active.log_path().display(), error = %e, "could not cut unacknowledged bytes");
            }
        }
        self.failed = Some(Arc::clone(&cause));
        LogError::Io { dir: self.dir.clone(), source: cause }
    }

    /// Validates `batch`, assigns its offsets and stages it. Nothing is written until [`commit`];
    /// the offsets may be acknowledged once `high_watermark() > last_offset`.
    /// `io` is used only when the batch makes the active segment roll.
    pub fn append(
        &mut self,
        io: &mut dyn Io,
        batch: impl Into<Bytes>,
        now: SystemTime,
    ) -> Result<AppendInfo, LogError> {
        let batch = batch.into();
        self.check_writable()?;
        self.now_hint = now;
        let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let header = validate::check(&self.config, &batch, now_ms)?;
        self.roll_for(io, batch.len() as u64, i64::from(header.records_count), now)?;
        let info = self.stage(batch, header);
        self.active_mut().touch(now);
        Ok(info)
    }

    /// Rolls first if `bytes` more (of `offsets` offsets) do not fit the active segment, or it
    /// is too old.
    fn roll_for(
        &mut self,
        io: &mut dyn Io,
        bytes: u64,
        offsets: i64,
        now: SystemTime,
    ) -> Result<(), LogError> {
        let active = self.active();
        let aged = now.duration_since(active.created()).is_ok_and(|age| age >= self.config.segment_age);
        if !active.is_empty() && (aged || !active.has_room(bytes, offsets, self.config.segment_bytes)) {
            self.roll(io)?;
        }
        Ok(())
    }

    /// Gives a checked batch the next offsets and stages it.
    fn stage(&mut self, batch: Bytes, header: BatchHeader) -> AppendInfo {
        let base_offset = self.next_offset();
        let header = BatchHeader { base_offset, ..header };
        let interval = self.config.index_interval_bytes;
        self.active_mut().stage(batch, &header, interval);
        AppendInfo { base_offset, last_offset: header.last_offset() }
    }

    /// Seals the active segment and starts a new one at the next offset.
    ///
    /// The files a roll needs are created first, the active segment's index files and then the
    /// next segment's log: running out of descriptors (`EMFILE`, `ENFILE`) there refuses the
    /// append that wanted the roll with [`LogError::NoDescriptors`], a retriable error, and
    /// leaves the partition as it was. Any other failure fails the partition: a half-done roll
    /// must not take appends. (A crash between creating the next file and completing the seal
    /// leaves an empty last segment after one whose index files do not decode, which recovery
    /// recognises, rule 2 of [`recovery`].)
    fn roll(&mut self, io: &mut dyn Io) -> Result<(), LogError> {
        let end = self.active().next_offset();
        let path = crate::segment::log_path(&self.dir, end);
        let files = match self.active().create_index_files(io) {
            Ok(files) => files,
            Err(SealError::Fs { path, source }) if out_of_descriptors(&source) => {
                return Err(LogError::NoDescriptors { path, source });
            }
            Err(SealError::Fs { path, source }) => {
                return Err(self.fail(io, Arc::new(IoError::file_system(&path, source))))
            }
            Err(SealError::Io(e)) => return Err(self.fail(io, Arc::new(e))),
        };
        let next = match Segment::create(io, &self.dir, end).map(|mut s| {
            s.set_created(self.now_hint);
            s
        }) {
            Ok(next) => next,
            Err(source) if out_of_descriptors(&source) => {
                // Nothing was written: the active segment stays active, without index files.
                drop(files);
                let base = self.active().file_base();
                for p in [
                    crate::segment::index_path(&self.dir, base),
                    crate::segment::time_index_path(&self.dir, base),
                ] {
                    let _ = io.remove_file(&p);
                }
                return Err(LogError::NoDescriptors { path, source });
            }
            Err(e) => return Err(self.fail(io, Arc::new(IoError::file_system(&path, e)))),
        };
        match self.try_roll(io, files, next) {
            Ok(()) => Ok(()),
            Err(cause) => Err(self.fail(io, Arc::new(cause))),
        }
    }

    fn try_roll(&mut self, io: &mut dyn Io, files: IndexFiles, mut next: Segment) -> Result<(), IoError> {
        match self.active_mut().seal(io, files) {
            Ok(()) => {}
            Err(SealError::Io(e)) => return Err(e),
            Err(SealError::Fs { path, source }) => return Err(IoError::file_system(&path, source)),
        }
        let end = next.base_offset();
        io.sync_dir(&self.dir).map_err(|e| IoError::file_system(&self.dir, e))?;
        next.attach(&self.disk);
        let segment = next;
        tracing::debug!(dir = %self.dir.display(), base_offset = end, "rolled to a new segment");
        // Only a complete roll publishes what the seal made durable: after a failure part-way
        // the producers of those batches hear that they failed, so readers must never see them.
        self.written_end = end;
        self.durable_end = end;
        self.advance_high_watermark();
        self.segments.push_back(segment);
        Ok(())
    }

    /// Whether the next commit should fdatasync this partition.
    fn wants_sync(&self, now: Instant) -> bool {
        let unsynced = self.durable_end < self.next_offset();
        match self.config.durability {
            Durability::Always => unsynced,
            Durability::Interval(every) => unsynced && now.duration_since(self.last_sync) >= every,
            Durability::Never => false,
        }
    }

    /// When an `interval` partition with unsynced data next wants an fdatasync.
    /// `None` once the partition failed: it syncs nothing more (and a deadline that stayed in
    /// the past would wake its shard every millisecond).
    pub fn sync_deadline(&self) -> Option<Instant> {
        if self.failed.is_some() {
            return None;
        }
        match self.config.durability {
            Durability::Interval(every) if self.durable_end < self.next_offset() => {
                Some(self.last_sync + every)
            }
            _ => None,
        }
    }

    /// Reads whole batches from the one containing `offset`, up to about `max_bytes` (at least one
    /// batch, however large, so a reader always makes progress), within the high watermark.
    pub fn read(&self, offset: i64, max_bytes: u64) -> Result<ReadSlice, LogError> {
        let end = self.high_watermark();
        if offset < self.log_start_offset || offset > end {
            return Err(LogError::OffsetOutOfRange { requested: offset, start: self.log_start_offset, end });
        }
        if offset < self.segments[0].base_offset() {
            if let Some(slice) = archive::read(&self.archived, offset, max_bytes)? {
                return Ok(slice);
            }
        }
        // An offset in a gap (lost to damage) is served from the next batch after it.
        let i = self.segments.partition_point(|s| s.base_offset() <= offset).saturating_sub(1);
        let last = self.segments.len() - 1;
        // Batches without records (what compaction leaves for removed batches) are passed over
        // to the first batch with records, even in a later segment: a reply of empty batches
        // alone reads to some clients (librdkafka) as a batch too large for their buffer. Only
        // if nothing with records follows are they served, so that the reader moves past them.
        let mut empty_only = None;
        for (j, seg) in self.segments.iter().enumerate().skip(i) {
            let limit = seg.visible_len();
            let Some(found) = seg.find_offset(offset, limit)? else {
                continue;
            };
            // The offset at the segment's visible end: its own end for all but the last
            // segment, the high watermark for the last one (which a failed roll may have
            // sealed without publishing all of it).
            let limit_offset = if j < last { seg.next_offset() } else { self.high_watermark };
            let slice = |first: &crate::segment::BatchPosition| -> Result<ReadSlice, LogError> {
                let (len, next_offset) = seg.extent(first, max_bytes, limit, limit_offset)?;
                Ok(ReadSlice {
                    file: Arc::clone(seg.file()?),
                    position: first.position,
                    len,
                    first_offset: first.header.base_offset,
                    next_offset,
                })
            };
            match seg.first_with_records(found, limit)? {
                Some(first) => return slice(&first),
                None if empty_only.is_none() => empty_only = Some(slice(&found)?),
                None => {}
            }
        }
        if let Some(slice) = empty_only {
            return Ok(slice);
        }
        Ok(ReadSlice {
            file: Arc::clone(self.active().active_file()),
            position: 0,
            len: 0,
            first_offset: end,
            next_offset: end,
        })
    }

    /// The first record (in offset order) whose timestamp is >= `timestamp`: its offset and
    /// timestamp, as Kafka's ListOffsets answers; `None` if every record is older. The sparse
    /// time index finds the batch; the batch (decompressed if need be) gives the record.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        for seg in self.archived.iter().chain(&self.segments) {
            if seg.max_timestamp() < timestamp {
                continue;
            }
            let Some(at) = seg.find_timestamp(timestamp, seg.visible_len())? else { continue };
            let mut bytes = vec![0u8; at.header.total_len()];
            let path = seg.log_path();
            seg.file()?.read_exact_at(&mut bytes, at.position).map_err(|e| LogError::fs(&path, e))?;
            let batch = crate::record::Batch::parse(&bytes)?;
            let mut scratch = Vec::new();
            let limit = validate::decompressed_bytes_max(crate::segment::SEGMENT_BYTES_MAX);
            for record in batch.records_in(&mut scratch, limit)? {
                let record = record?;
                if record.timestamp >= timestamp {
                    return Ok(Some((record.offset.max(self.log_start_offset), record.timestamp)));
                }
            }
            // The header promised a timestamp that no record holds (not accepted on append).
            return Err(LogError::Corrupt {
                path,
                position: at.position,
                reason: format!(
                    "max timestamp {} but no record reaches {timestamp}",
                    at.header.max_timestamp
                ),
            });
        }
        Ok(None)
    }

    /// Writes what is staged and makes everything durable (used on clean shutdown).
    pub fn flush(&mut self, io: &mut dyn Io) -> Result<(), LogError> {
        // A damaged partition took no writes, so it has nothing to flush; a failed one must not
        // sync again.
        if let Some(cause) = &self.failed {
            return Err(LogError::Failed { dir: self.dir.clone(), cause: Arc::clone(cause) });
        }
        let mut me = [&mut *self];
        commit::commit_with(io, &mut me, Instant::now(), true).map(|_| ())
    }
}

/// Whether a failed open or create ran out of file descriptors (process or system wide):
/// a shortage that passes, not a fault of the partition.
pub(crate) fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Makes a directory's entries (created or removed files) durable.
pub(crate) fn sync_dir(io: &mut dyn Io, dir: &Path) -> Result<(), LogError> {
    io.sync_dir(dir).map_err(|e| LogError::fs(dir, e))
}

#[cfg(test)]
mod tests;
