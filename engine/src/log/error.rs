//! The error type of the log layer.

use std::path::PathBuf;
use std::sync::Arc;

use crate::io::IoError;
use crate::record::RecordError;
use crate::segment::{ReadError, SealError};

/// Why a partition operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The I/O layer failed; the partition is now [`LogError::Failed`] for writes.
    #[error("I/O error in partition {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: Arc<IoError>,
    },
    /// A file-system call (open, read, truncate, delete, list) failed.
    #[error("{}: {source}", path.display())]
    Fs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write or fsync failed earlier: the partition refuses writes until it is reopened, which
    /// runs recovery. Carrying on could acknowledge data the kernel already dropped.
    #[error("partition {} refuses writes after an earlier I/O error: {cause}", dir.display())]
    Failed {
        dir: PathBuf,
        #[source]
        cause: Arc<IoError>,
    },
    /// Recovery found damage in a sealed segment: the partition serves what is intact and
    /// refuses writes until the damage is accepted (`spate repair`, docs/operations.md).
    #[error(
        "partition {} is damaged ({} damaged range(s), first: {}); it serves what is intact and refuses writes until the damage is accepted",
        dir.display(),
        damage.len(),
        damage.first().map_or(String::new(), ToString::to_string)
    )]
    Damaged { dir: PathBuf, damage: Arc<[super::Damage]> },
    /// The process (or the system) is out of file descriptors: the append that needed a new
    /// file is refused and may be retried; the partition is unharmed.
    #[error("out of file descriptors creating {}: {source}", path.display())]
    NoDescriptors {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The batch offered for append is not a valid RecordBatch v2.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] RecordError),
    /// The batch offered for append breaks a rule of the log (empty, inconsistent counts).
    #[error("batch rejected: {0}")]
    BatchRejected(String),
    /// A record timestamp breaks the rules of create-time timestamps.
    #[error("invalid timestamp {timestamp}: {reason}")]
    InvalidTimestamp { timestamp: i64, reason: &'static str },
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: u64, max: u64 },
    /// The offset is below the log start (retention removed it) or above the end.
    #[error("offset {requested} out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange { requested: i64, start: i64, end: i64 },
    /// A sealed segment read back does not hold what its index says.
    #[error("{} is corrupt at byte {position}: {reason}", path.display())]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The topic's policy does not allow this (DeleteRecords on a topic that does not delete).
    #[error("not allowed by the topic's policy: {0}")]
    Policy(String),
}

impl LogError {
    pub(crate) fn fs(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::Fs { path: path.into(), source }
    }
}

impl From<ReadError> for LogError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Fs { path, source } => LogError::Fs { path, source },
            ReadError::Corrupt { path, position, reason } => LogError::Corrupt { path, position, reason },
        }
    }
}

pub(crate) fn from_seal(dir: &std::path::Path, e: SealError) -> LogError {
    match e {
        SealError::Io(source) => LogError::Io { dir: dir.to_path_buf(), source: Arc::new(source) },
        SealError::Fs { path, source } => LogError::Fs { path, source },
    }
}
