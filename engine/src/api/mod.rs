//! The types the embedded API and the shards share: what a request carries and answers, its
//! errors, the engine's configuration, and which shard owns a partition.
//!
//! They live below both `engine` (the handle callers hold) and `shard` (the loop that does the
//! work), so that neither imports the other's types; `engine` re-exports them.

mod clock;
mod error;
mod types;

pub use clock::{Clock, ManualClock};
pub use error::EngineError;
pub use types::{
    Backpressure, CompactionSetup, EngineConfig, FetchOptions, Fetched, FetchedRecord, IdleStrategy,
    LatencyBuckets, OffsetSpec, ProduceAck, ShardStats, Target,
};

/// The shard that owns `partition` of `topic`: consecutive partitions of a topic go to
/// consecutive shards, starting from a stable hash of the topic name (FNV-1a).
pub fn shard_of(topic: &str, partition: u32, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h % shards as u64 + u64::from(partition)) % shards as u64) as usize
}
