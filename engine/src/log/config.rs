//! Per-topic configuration of a partition log, with Kafka-like defaults.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::segment::SEGMENT_BYTES_MAX;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledged only after the `fdatasync` that covers it (group commit shares it).
    #[default]
    Always,
    /// Acknowledged once written; an `fdatasync` runs at most this often while data is unsynced.
    Interval(Duration),
    /// Acknowledged once written; synced only when a segment is sealed. A crash may lose the tail.
    Never,
}

impl FromStr for Durability {
    type Err = String;

    /// `always`, `never`, or `interval:<ms>` (milliseconds, at least 1).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(|| {
                    format!("unknown durability {s:?}: expected always, never or interval:<ms>")
                })?;
                match ms.parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(Durability::Interval(Duration::from_millis(ms))),
                    _ => Err(format!(
                        "bad durability interval {ms:?}: expected a whole number of milliseconds >= 1"
                    )),
                }
            }
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Never => f.write_str("never"),
            Durability::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// What a topic does with old records (Kafka's `cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleanup {
    /// Delete whole old segments by size and age (retention).
    pub delete: bool,
    /// Keep only the latest record of each key (log compaction).
    pub compact: bool,
}

impl Default for Cleanup {
    fn default() -> Self {
        Cleanup { delete: true, compact: false }
    }
}

impl FromStr for Cleanup {
    type Err = String;

    /// `delete`, `compact`, or both separated by a comma, in either order.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = Cleanup { delete: false, compact: false };
        for part in s.split(',').map(str::trim) {
            match part {
                "delete" => c.delete = true,
                "compact" => c.compact = true,
                other => {
                    return Err(format!(
                        "cleanup.policy {other:?}: expected delete, compact or compact,delete"
                    ))
                }
            }
        }
        Ok(c)
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.compact, self.delete) {
            (true, true) => f.write_str("compact,delete"),
            (true, false) => f.write_str("compact"),
            // A policy with neither parses nowhere; it shows as the default.
            (false, _) => f.write_str("delete"),
        }
    }
}

/// When and how log compaction runs (Kafka's names and defaults; see `log::clean`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// How long a tombstone stays readable after the pass that first kept it
    /// (`delete.retention.ms`, one day).
    pub delete_retention: Duration,
    /// Records younger than this are never compacted (`min.compaction.lag.ms`, 0).
    pub min_lag: Duration,
    /// A record is compacted at the latest this long after it was written, whatever the dirty
    /// ratio (`max.compaction.lag.ms`; `None`: no bound, Kafka's default).
    pub max_lag: Option<Duration>,
    /// Compact once dirty bytes (written since the last pass) are at least this share of the
    /// compactable log, in millionths (`min.cleanable.dirty.ratio`, 0.5).
    pub min_dirty_ratio_ppm: u32,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            delete_retention: Duration::from_secs(24 * 3600),
            min_lag: Duration::ZERO,
            max_lag: None,
            min_dirty_ratio_ppm: 500_000,
        }
    }
}

/// Configuration of every partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before the active one would exceed this size.
    pub segment_bytes: u64,
    /// Roll a non-empty segment once it is this old.
    pub segment_age: Duration,
    /// Delete the oldest sealed segments while the log is larger than this (`None`: no limit).
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this (`None`: keep forever).
    pub retention_age: Option<Duration>,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Largest batch accepted.
    pub batch_bytes_max: u64,
    pub durability: Durability,
    /// Create-time timestamps may be at most this far ahead of the wall clock (`None`: any);
    /// Kafka's `message.timestamp.after.max.ms`, whose default since Kafka 4.0 is an hour. A
    /// timestamp far in the future would hold retention by age forever.
    pub timestamp_after_max: Option<Duration>,
    /// ... and at most this far behind it (`None`: any; `message.timestamp.before.max.ms`).
    pub timestamp_before_max: Option<Duration>,
    /// Retention, compaction or both.
    pub cleanup: Cleanup,
    pub compaction: Compaction,
    /// Retention moves old segments to the engine's archive directory instead of deleting them
    /// (Kafka's `remote.storage.enable`; see `log::archive`). Without an archive directory
    /// retention deletes as usual.
    pub archive: bool,
    /// The archive's own retention by size and by age (`None`: forever).
    pub archive_retention_bytes: Option<u64>,
    pub archive_retention_age: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_age: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: 4096,
            batch_bytes_max: 1 << 20,
            durability: Durability::Always,
            timestamp_after_max: Some(Duration::from_secs(3600)),
            timestamp_before_max: None,
            cleanup: Cleanup::default(),
            compaction: Compaction::default(),
            archive: false,
            archive_retention_bytes: None,
            archive_retention_age: None,
        }
    }
}

impl LogConfig {
    /// Checks the limits that the on-disk format imposes.
    pub fn validate(&self) -> Result<(), String> {
        if !(1024..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!("segment_bytes {} outside 1024..={SEGMENT_BYTES_MAX}", self.segment_bytes));
        }
        // A batch larger than `segment_bytes` gets a segment of its own, so the two limits are
        // independent (as in Kafka); only the format's own limits apply.
        if !(61..=SEGMENT_BYTES_MAX).contains(&self.batch_bytes_max) {
            return Err(format!("batch_bytes_max {} outside 61..={SEGMENT_BYTES_MAX}", self.batch_bytes_max));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be at least 1".into());
        }
        if self.segment_age.is_zero() {
            return Err("segment_age must be positive".into());
        }
        if !(self.cleanup.delete || self.cleanup.compact) {
            return Err("cleanup policy must delete, compact or both".into());
        }
        // As Kafka: an archive keeps what compaction would have removed (a value its tombstone
        // deleted would come back from it), and an erasure could not reach it.
        if self.archive && self.cleanup.compact {
            return Err("remote.storage.enable (the archive) is not supported for compacted topics".into());
        }
        if self.compaction.min_dirty_ratio_ppm > 1_000_000 {
            return Err("the minimum cleanable dirty ratio must lie in 0..=1".into());
        }
        if self.compaction.max_lag.is_some_and(|max| max < self.compaction.min_lag) {
            return Err("max compaction lag below min compaction lag".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_prints() {
        for s in ["always", "never", "interval:5", "interval:1000"] {
            assert_eq!(s.parse::<Durability>().unwrap().to_string(), s);
        }
        assert_eq!(
            "interval:250".parse::<Durability>().unwrap(),
            Durability::Interval(Duration::from_millis(250))
        );
        for bad in ["", "sometimes", "interval:", "interval:0", "interval:-3", "interval:x"] {
            assert!(bad.parse::<Durability>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_limits() {
        assert!(LogConfig::default().validate().is_ok());
        let too_big = LogConfig { segment_bytes: 1 << 32, ..LogConfig::default() };
        assert!(too_big.validate().unwrap_err().contains("segment_bytes"));
        let batch = LogConfig { batch_bytes_max: 1 << 31, ..LogConfig::default() };
        assert!(batch.validate().unwrap_err().contains("batch_bytes_max"));
        let small = LogConfig { segment_bytes: 4096, batch_bytes_max: 8192, ..LogConfig::default() };
        assert!(small.validate().is_ok(), "a large batch gets a segment of its own");
    }
}
