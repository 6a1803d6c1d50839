//! Retention: deleting whole sealed segments by total size and by age.
//!
//! The active segment is never deleted (it rolls by `segment_age`, after which it can expire).
//! Deleting the oldest segment advances the log start offset to the next segment's base; reads
//! below it get [`LogError::OffsetOutOfRange`], the consumer's cue to apply its reset policy.

use std::time::SystemTime;

use super::{sync_dir, LogError, Partition};

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}

impl Partition {
    /// Deletes the oldest sealed segments that retention by size or age no longer keeps.
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<RetentionOutcome, LogError> {
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut outcome = RetentionOutcome {
            log_start_offset: self.log_start_offset,
            ..Default::default()
        };
        let mut total = self.size_bytes();
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            debug_assert!(oldest.is_sealed());
            let too_big = self
                .config
                .retention_bytes
                .is_some_and(|max| total - oldest.len() >= max);
            let too_old = self.config.retention_age.is_some_and(|age| {
                oldest.max_timestamp() < now_ms.saturating_sub(age.as_millis() as i64)
            });
            if !(too_big || too_old) {
                break;
            }
            let seg = self.segments.pop_front().expect("checked len > 1");
            let (len, path) = (seg.len(), seg.log_path());
            total -= len;
            seg.delete().map_err(|e| LogError::fs(&path, e))?;
            tracing::info!(file = %path.display(), too_big, too_old, "retention deleted segment");
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += len;
        }
        if outcome.segments_deleted > 0 {
            sync_dir(&self.dir)?;
            self.log_start_offset = self.segments[0].base_offset();
            outcome.log_start_offset = self.log_start_offset;
        }
        Ok(outcome)
    }
}
