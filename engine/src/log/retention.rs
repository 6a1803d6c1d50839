//! Retention: deleting whole sealed segments by total size and by age, and moving the log start
//! on request (Kafka's DeleteRecords).
//!
//! A log start moved into a segment is kept in the partition's `log-start` file (written
//! atomically and durably before the move takes effect), so it survives restarts; the segments
//! wholly below it are deleted, the records before it in its own segment stay on disk until that
//! segment goes (as in Kafka), and nothing below it is readable.
//!
//! The active segment is never deleted; a retention pass first rolls an active segment older
//! than `segment_age`, so that an idle partition's data can expire too.
//! Deleting the oldest segment advances the log start offset to the next segment's base; reads
//! below it get [`LogError::OffsetOutOfRange`], the consumer's cue to apply its reset policy.

use std::time::SystemTime;

use super::{sync_dir, LogError, Partition};
use crate::io::Io;

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
    /// Archived segments deleted by the archive's retention.
    pub archived_deleted: usize,
}

impl Partition {
    /// Deletes the oldest sealed segments that retention by size or age no longer keeps.
    pub fn enforce_retention(
        &mut self,
        io: &mut dyn Io,
        now: SystemTime,
    ) -> Result<RetentionOutcome, LogError> {
        self.now_hint = now;
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        // Durations too long for i64 milliseconds mean "forever", never a negative age.
        let oldest_kept_ms = self
            .config
            .retention_age
            .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let mut outcome = RetentionOutcome { log_start_offset: self.log_start_offset, ..Default::default() };
        // A failed partition changes nothing until it is reopened: its state on disk is what
        // recovery will work from.
        if self.failed.is_some() {
            return Ok(outcome);
        }
        // An idle active segment past its age rolls, so that age retention can reach it (a
        // damaged partition takes no writes, so it does not roll; its sealed segments still
        // expire).
        let active = &self.segments[self.segments.len() - 1];
        let aged = now.duration_since(active.created()).is_ok_and(|age| age >= self.config.segment_age);
        if aged && !active.is_empty() && self.check_writable().is_ok() {
            self.roll(io)?;
        }
        // A damaged partition's segments may share a file; they are not archived (retention
        // keeps them where they are until the damage is resolved).
        let archive = self.archive_dir();
        if archive.is_some() && !self.damage.is_empty() {
            return self.finish_deletions(io, outcome);
        }
        let mut total = self.size_bytes();
        // A compact-only topic keeps every key's latest record however old (its active segment
        // still rolls by age above, so that compaction reaches it).
        while self.config.cleanup.delete && self.segments.len() > 1 {
            let oldest = &self.segments[0];
            debug_assert!(oldest.is_sealed());
            let too_big = self.config.retention_bytes.is_some_and(|max| total - oldest.len() >= max);
            let too_old = oldest_kept_ms.is_some_and(|kept| self.retention_time_ms(oldest) < kept);
            if !(too_big || too_old) {
                break;
            }
            let (len, path) = match &archive {
                Some(archive) => self.archive_oldest_segment(io, archive)?,
                None => self.delete_oldest_segment(io)?,
            };
            total -= len;
            match archive {
                Some(_) => {
                    tracing::info!(file = %path.display(), too_big, too_old, "retention archived segment")
                }
                None => tracing::info!(file = %path.display(), too_big, too_old, "retention deleted segment"),
            }
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += len;
        }
        if archive.is_some() {
            outcome.archived_deleted = self.enforce_archive_retention(io, now_ms)?;
        }
        self.finish_deletions(io, outcome)
    }

    /// Deletes the oldest archived segments beyond the archive's own retention; returns how many.
    fn enforce_archive_retention(&mut self, io: &mut dyn Io, now_ms: i64) -> Result<usize, LogError> {
        let oldest_kept_ms = self
            .config
            .archive_retention_age
            .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let mut total = self.archived_bytes();
        let mut deleted = 0;
        while let Some(oldest) = self.archived.front() {
            let too_big = self.config.archive_retention_bytes.is_some_and(|max| total > max);
            let too_old = oldest_kept_ms.is_some_and(|kept| self.retention_time_ms(oldest) < kept);
            if !(too_big || too_old) {
                break;
            }
            let path = oldest.log_path();
            total -= self.delete_oldest_archived(io)?;
            deleted += 1;
            tracing::info!(file = %path.display(), too_big, too_old, "archive retention deleted segment");
        }
        if deleted > 0 {
            if let Some(archive) = self.archive_dir() {
                sync_dir(io, &archive)?;
            }
        }
        Ok(deleted)
    }

    /// The time retention by age goes by for a sealed segment: its largest record timestamp;
    /// its last append when its records carry none (-1); and never more than
    /// `timestamp_after_max` past that last append, so that records stamped in the far future
    /// (written before that limit was checked) cannot hold a segment forever. The last append
    /// is by the engine's clock (after a restart, the file's modification time): a file's
    /// timestamps are the system's, and would disagree with a manual clock.
    fn retention_time_ms(&self, seg: &crate::segment::Segment) -> i64 {
        let modified_ms = seg
            .modified()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let stamped = if seg.max_timestamp() < 0 { modified_ms } else { seg.max_timestamp() };
        match self.config.timestamp_after_max {
            Some(ahead) => {
                stamped.min(modified_ms.saturating_add(i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX)))
            }
            None => stamped,
        }
    }

    /// Seals the active segment (writing and syncing what is staged) and starts a new one, so
    /// that everything before [`Partition::next_offset`] lies in sealed segments.
    pub fn roll_now(&mut self, io: &mut dyn Io) -> Result<(), LogError> {
        self.check_writable()?;
        if !self.active().is_empty() {
            self.roll(io)?;
        }
        Ok(())
    }

    /// Moves the log start to `offset` (at most the high watermark; `None`: the high
    /// watermark), durably, and deletes the segments wholly below it (never the active one).
    /// Offsets below it are out of range from now on. Returns the new log start.
    pub fn delete_records(
        &mut self,
        io: &mut dyn Io,
        offset: Option<i64>,
    ) -> Result<RetentionOutcome, LogError> {
        self.check_writable()?;
        if !self.config.cleanup.delete {
            return Err(LogError::Policy(format!(
                "{}: records of a topic whose cleanup.policy is compact cannot be deleted",
                self.dir.display()
            )));
        }
        let end = self.high_watermark;
        let offset = offset.unwrap_or(end);
        if offset < 0 || offset > end {
            return Err(LogError::OffsetOutOfRange { requested: offset, start: self.log_start_offset, end });
        }
        if offset > self.log_start_offset {
            let text = format!("# The log start offset (DeleteRecords); offsets below it are gone.\nlog_start_offset={offset}\n");
            super::damage::replace_file(io, &self.dir, LOG_START_FILE, text.as_bytes())?;
            self.log_start_offset = offset;
            tracing::info!(dir = %self.dir.display(), log_start_offset = offset, "records deleted up to the log start");
        }
        self.delete_segments_before(io, offset)
    }

    /// Deletes the sealed segments that lie wholly below `offset` (never the active one) and
    /// advances the log start to the first segment left, if that is beyond it.
    pub fn delete_segments_before(
        &mut self,
        io: &mut dyn Io,
        offset: i64,
    ) -> Result<RetentionOutcome, LogError> {
        self.check_writable()?;
        let mut outcome = RetentionOutcome { log_start_offset: self.log_start_offset, ..Default::default() };
        while self.archived.front().is_some_and(|s| s.next_offset() <= offset) {
            outcome.bytes_deleted += self.delete_oldest_archived(io)?;
            outcome.archived_deleted += 1;
        }
        if outcome.archived_deleted > 0 {
            if let Some(archive) = self.archive_dir() {
                sync_dir(io, &archive)?;
            }
        }
        while self.archived.is_empty() && self.segments.len() > 1 && self.segments[0].next_offset() <= offset
        {
            let (len, _) = self.delete_oldest_segment(io)?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += len;
        }
        self.finish_deletions(io, outcome)
    }

    /// Makes the deletions of a pass durable (the directory's entries) and reports them.
    fn finish_deletions(
        &self,
        io: &mut dyn Io,
        mut outcome: RetentionOutcome,
    ) -> Result<RetentionOutcome, LogError> {
        outcome.log_start_offset = self.log_start_offset;
        if outcome.segments_deleted > 0 {
            sync_dir(io, &self.dir)?;
        }
        Ok(outcome)
    }

    /// Deletes the oldest (sealed) segment and moves the log start to the next one; returns its
    /// length and path. The files go first: if that fails, the segment stays in the log,
    /// readable, and the log start offset still matches the first segment.
    fn delete_oldest_segment(&mut self, io: &mut dyn Io) -> Result<(u64, std::path::PathBuf), LogError> {
        debug_assert!(self.segments.len() > 1 && self.segments[0].is_sealed());
        let oldest = &self.segments[0];
        let (len, path) = (oldest.len(), oldest.log_path());
        // Parts of a damaged segment share its file: it goes with the last of them.
        if self.segments[1].file_base() != oldest.file_base() {
            oldest.delete_files(io).map_err(|e| LogError::fs(&path, e))?;
        }
        self.segments.pop_front();
        // A log start moved into this segment by DeleteRecords stays where it is.
        self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset());
        assert!(self.watermarks_ordered(), "after deleting a segment: {}", self.watermarks());
        Ok((len, path))
    }
}

/// The file holding a log start offset that lies inside a segment.
pub const LOG_START_FILE: &str = "log-start";

/// The log start offset stored by DeleteRecords, if any.
pub(super) fn read_log_start(dir: &std::path::Path) -> Result<Option<i64>, LogError> {
    let path = dir.join(LOG_START_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::fs(&path, e)),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("log_start_offset="))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            LogError::fs(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "log-start file without log_start_offset=<offset>",
                ),
            )
        })
}
