//! The error type of the embedded API.

use std::path::PathBuf;

use crate::log::LogError;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No topic has this ID (its text form); the topic may have been deleted, or deleted and
    /// created again under a new ID.
    #[error("no topic has ID {0}")]
    UnknownTopicId(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    /// An `EngineConfig` field is out of its range.
    #[error("engine configuration: {field} {reason}")]
    BadEngineConfig { field: &'static str, reason: String },
    /// A topic's `LogConfig` breaks a limit of the format.
    #[error("topic configuration: {0}")]
    BadTopicConfig(String),
    /// A topic of this many partitions cannot exist.
    #[error("{partitions} partitions: a topic has 1 to {max}")]
    BadPartitionCount { partitions: u32, max: u32 },
    /// A topic's description file on disk does not decode.
    #[error("{}: {reason}", path.display())]
    BadTopicFile { path: PathBuf, reason: String },
    /// `Block` or `Drop` backpressure with a `max_lag` of 0, which could never be met.
    #[error("backpressure max_lag must be at least 1")]
    BadBackpressure,
    /// No shard has this number.
    #[error("no shard {shard} (the engine has {shards})")]
    NoSuchShard { shard: usize, shards: usize },
    /// Committed offsets are positions in a log: never negative.
    #[error("committed offset {0} is negative")]
    NegativeOffset(i64),
    /// A produce of no records.
    #[error("a produce needs at least one record")]
    NoRecords,
    /// A lookup by a timestamp that means nothing (below -2, Kafka's "earliest").
    #[error("timestamp {0} is not supported")]
    BadTimestamp(i64),
    /// A system resource the engine needs could not be had (an eventfd, a thread, the count
    /// of open descriptors).
    #[error("{what}: {source}")]
    System {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading the bytes of a fetched slice failed.
    #[error("reading fetched records: {0}")]
    ReadFetched(#[source] std::io::Error),
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
    /// Compaction was asked of a topic whose `cleanup.policy` does not compact.
    #[error("topic {0:?} is not compacted (cleanup.policy has no compact)")]
    NotCompacted(String),
    /// A compaction pass asked for did not complete.
    #[error("compaction did not complete: {0}")]
    Compaction(String),
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
