//! What travels through a shard's mailbox, and what comes back.

use std::sync::Arc;
use std::time::Instant;

use super::offsets::{CommitValue, OffsetKey};
use crate::api::{Backpressure, EngineError, Fetched, OffsetSpec, ProduceAck, ShardStats};
use crate::log::{DamageReport, LogConfig};

/// A reply slot: a one-shot channel that a blocking caller waits on or an async caller awaits.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Sends a reply; a caller that stopped waiting is not an error of the shard.
pub(crate) fn answer<T>(reply: Reply<T>, value: Result<T, EngineError>) {
    let _ = reply.send(value);
}

/// A partition of a topic, as the shards name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PartitionId {
    pub topic: Arc<str>,
    pub partition: u32,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Request::Open { .. } => "Open",
            Request::Close { .. } => "Close",
            Request::Configure { .. } => "Configure",
            Request::Produce { .. } => "Produce",
            Request::Fetch { .. } => "Fetch",
            Request::ListOffset { .. } => "ListOffset",
            Request::Commit { .. } => "Commit",
            Request::Committed { .. } => "Committed",
            Request::CommittedAll { .. } => "CommittedAll",
            Request::Progress { .. } => "Progress",
            Request::Stats { .. } => "Stats",
            Request::Barrier { .. } => "Barrier",
            Request::Forget { .. } => "Forget",
            Request::ConsumersActive { .. } => "ConsumersActive",
            Request::Damage { .. } => "Damage",
            Request::AcceptDamage { .. } => "AcceptDamage",
            Request::Compact { .. } => "Compact",
            Request::DeleteRecords { .. } => "DeleteRecords",
            Request::Shutdown { .. } => "Shutdown",
            Request::Spawn { .. } => "Spawn",
        };
        f.write_str(name)
    }
}

pub(crate) enum Request {
    /// Open (creating if needed) a partition this shard owns.
    Open {
        id: PartitionId,
        config: Box<LogConfig>,
        reply: Reply<()>,
    },
    /// Close a partition, deleting its files if `delete`.
    Close {
        id: PartitionId,
        delete: bool,
        reply: Reply<()>,
    },
    /// Change a partition's configuration.
    Configure {
        id: PartitionId,
        config: Box<LogConfig>,
        reply: Reply<()>,
    },
    Produce {
        id: PartitionId,
        batch: bytes::Bytes,
        backpressure: Backpressure,
        reply: Reply<ProduceAck>,
    },
    Fetch {
        id: PartitionId,
        offset: i64,
        max_bytes: u64,
        min_bytes: u64,
        deadline: Instant,
        reply: Reply<Fetched>,
    },
    ListOffset {
        id: PartitionId,
        spec: OffsetSpec,
        reply: Reply<Option<(i64, i64)>>,
    },
    /// Store a consumer's committed offset; sent to the shard owning the offsets partition.
    Commit {
        offsets_partition: u32,
        consumer: Arc<str>,
        id: PartitionId,
        value: CommitValue,
        reply: Reply<()>,
    },
    Committed {
        consumer: Arc<str>,
        id: PartitionId,
        reply: Reply<Option<CommitValue>>,
    },
    /// Every committed offset of one consumer: (topic, partition, offset).
    CommittedAll {
        consumer: Arc<str>,
        reply: Reply<Vec<(Arc<str>, u32, i64)>>,
    },
    /// A consumer's committed position moved: sent to the shard owning the data partition, for
    /// producers that wait on that consumer's lag.
    Progress {
        id: PartitionId,
        consumer: Arc<str>,
        offset: i64,
    },
    Stats {
        reply: Reply<ShardStats>,
    },
    /// Answered once everything before it was handled and the shard's outbox is empty.
    Barrier {
        reply: Reply<()>,
    },
    /// Drop committed offsets (with tombstones): those of a deleted topic, or at open those of
    /// every topic that no longer exists. Answered once the tombstones are durable.
    Forget {
        what: Forget,
        reply: Reply<()>,
    },
    /// The damage recovery found in a partition's sealed segments.
    Damage {
        id: PartitionId,
        reply: Reply<DamageReport>,
    },
    /// Accept a partition's damage as lost, so that it takes writes again; answers the number
    /// of damaged ranges accepted.
    AcceptDamage {
        id: PartitionId,
        reply: Reply<usize>,
    },
    /// Moves the log start to `offset` (`None`: the high watermark) and deletes the segments
    /// below it; answers the new log start.
    DeleteRecords {
        id: PartitionId,
        offset: Option<i64>,
        reply: Reply<i64>,
    },
    /// Compacts the partition now, the active segment included, whatever its dirty ratio
    /// (an erasure); answered when the pass is complete.
    Compact {
        id: PartitionId,
        reply: Reply<crate::log::CleanOutcome>,
    },
    /// These consumers are active (members of a live group, say) at `at_ms`: their committed
    /// offsets do not expire while they are.
    ConsumersActive {
        consumers: Arc<[Arc<str>]>,
        at_ms: i64,
    },
    /// Flush everything and stop.
    Shutdown {
        reply: Reply<()>,
    },
    /// Run a task on the shard's event loop, beside its partitions (network connections).
    Spawn {
        task: LocalTask,
    },
}

/// Which committed offsets a [`Request::Forget`] drops.
#[derive(Debug, Clone)]
pub(crate) enum Forget {
    /// Those of this (deleted) topic.
    Topic(Arc<str>),
    /// Those of every topic not in this set (what a deletion cut short by a crash left).
    AllBut(Arc<std::collections::HashSet<Arc<str>>>),
    /// These keys (expired ones).
    Keys(Arc<std::collections::HashSet<OffsetKey>>),
}

impl Forget {
    pub fn covers(&self, key: &OffsetKey) -> bool {
        match self {
            Forget::Topic(t) => **t == *key.1,
            Forget::AllBut(keep) => !keep.contains(&key.1),
            Forget::Keys(keys) => keys.contains(key),
        }
    }
}

/// A task for a shard's event loop: made on the shard's thread, so the future need not be `Send`.
pub type LocalTask =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static>;
