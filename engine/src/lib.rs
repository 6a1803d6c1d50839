//! Spate: a single-node stream engine.
//!
//! Layers, bottom up: [`record`] (RecordBatch v2 bytes, pure), [`io`] (the only code that talks to
//! io_uring), [`segment`] (one log file and its indexes), [`log`] (a partition: segments, group
//! commit, recovery, retention).

pub mod alloc;
mod api;
pub mod cdc;
mod engine;
pub mod fds;
pub mod group;
pub mod io;
pub mod kafka;
pub mod log;
pub mod partitioner;
pub mod record;
pub mod segment;
mod shard;

pub use engine::{
    shard_of, topics, Backpressure, Change, ChangeStream, Clock, CommittedOffset, Engine, EngineConfig,
    EngineError, FetchOptions, Fetched, FetchedRecord, IdleStrategy, IoFactory, LatencyBuckets, ManualClock,
    OffsetSpec, ProduceAck, Producer, ShardStats, Target, TopicId, TopicInfo, CONSUMER_NAME_BYTES_MAX,
    OFFSETS_TOPIC, OFFSET_METADATA_MAX_BYTES, TOPIC_PARTITIONS_MAX,
};
pub use shard::mailbox;
