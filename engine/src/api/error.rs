//! The error type of the embedded API.

use std::path::PathBuf;

use crate::log::LogError;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// `Drop` backpressure: the watched consumer is too far behind, so the records were refused.
    #[error("dropped: consumer {consumer:?} is too far behind")]
    Dropped { consumer: String },
    /// `Block` backpressure: too many produce requests are already parked on this shard.
    #[error("too many blocked produce requests (more than {parked_bytes_max} bytes parked)")]
    TooManyBlocked { parked_bytes_max: u64 },
    /// The shard's mailbox is full and the caller asked not to wait.
    #[error("shard {shard} is busy: its mailbox is full")]
    Busy { shard: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// Another engine has the data directory open.
    #[error("{} is in use by another engine", dir.display())]
    Locked { dir: PathBuf },
    #[error("invalid consumer name: {len} bytes (1 to 255 allowed)")]
    InvalidConsumerName { len: usize },
    /// Creating the partitions would pass a limit: `partitions_max`, or what the open-file limit
    /// leaves (every partition keeps a file open).
    #[error("cannot add {requested} partitions to {existing}: at most {max} fit under {limit}")]
    TooManyPartitions { requested: u64, existing: u64, max: u64, limit: &'static str },
    /// A request names more partitions than one request may (see
    /// `kafka::REQUEST_PARTITIONS_MAX`).
    #[error("a request may name {max} partitions, this one names {partitions}")]
    TooManyPartitionsInRequest { partitions: usize, max: usize },
    /// A committed offset's metadata is longer than the limit.
    #[error("offset metadata of {len} bytes is longer than {max}")]
    OffsetMetadataTooLarge { len: usize, max: usize },
    /// The shard already holds `fetch_waiters_max` long-poll fetches.
    #[error("too many waiting fetches on shard {shard}")]
    TooManyWaiters { shard: usize },
    /// An idempotent producer's batch does not continue its sequence (and is not a retry).
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },
    /// An idempotent producer wrote with an epoch older than one already seen.
    #[error("producer {producer_id}: epoch {got} is older than {current}")]
    InvalidProducerEpoch { producer_id: i64, current: i16, got: i16 },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
