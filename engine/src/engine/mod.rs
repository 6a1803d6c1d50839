//! The embedded engine: topics of partitions spread over pinned shard threads.
//!
//! [`Engine`] is a cheap, `Send + Sync` handle. Every call is routed to the shard that owns the
//! partition (a stable hash of topic and partition) through that shard's bounded mailbox, and
//! waits on a one-shot reply: blocking calls wait on the calling thread, `*_async` calls return
//! futures that depend on no particular runtime. The only state shared between threads is the
//! topic table, replaced whole on create and delete and read without locks (`ArcSwap`).
//!
//! ```
//! use spate::log::{Durability, LogConfig};
//! use spate::record::Record;
//! use spate::{Engine, EngineConfig, FetchOptions, Target};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let data = tmp.path();
//! let engine = Engine::open(data, EngineConfig::default())?; // one pinned shard per core
//! engine.create_topic("orders", 4, LogConfig { durability: Durability::Always, ..LogConfig::default() })?;
//! let record = Record { timestamp: 1_700_000_000_000, key: Some(b"customer-7"), value: Some(b"order"), headers: &[] };
//! let ack = engine.produce("orders", Target::Key(b"customer-7"), &[record])?; // returns once fdatasync'ed
//! let options = FetchOptions { max_wait: std::time::Duration::from_secs(1), ..FetchOptions::default() };
//! let fetched = engine.fetch("orders", ack.partition, 0, options)?; // long poll, woken by appends
//! let records = fetched.records(0)?;
//! assert_eq!(records[0].value.as_deref(), Some(&b"order"[..]));
//! engine.commit_offset("billing", "orders", ack.partition, fetched.next_offset())?;
//! assert_eq!(engine.committed_offset("billing", "orders", ack.partition)?, Some(1));
//! engine.shutdown()?;
//! # Ok(())
//! # }
//! ```

mod changes;
mod lifecycle;
pub mod topics;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lifecycle::DirLock;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;

pub use crate::api::{
    shard_of, Backpressure, Clock, EngineConfig, EngineError, FetchOptions, Fetched, FetchedRecord,
    IdleStrategy, LatencyBuckets, ManualClock, OffsetSpec, ProduceAck, ShardStats, Target,
};
pub use changes::{Change, ChangeStream};
pub use lifecycle::IoFactory;
pub use topics::{TopicId, TopicInfo};

use crate::log::{Durability, LogConfig};
use crate::record::{BatchBuilder, BatchOptions, Record};
use crate::shard::mailbox::{MailboxSender, SendError};
use crate::shard::request::{Forget, PartitionId, Reply, Request};

/// Partitions one topic may have: each is a directory, open files and a slot in its shard.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;

/// The internal topic holding consumers' committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Longest consumer name (Kafka group id) of committed offsets: every commit stores it in its
/// key, so a long one would multiply a request's size on disk.
pub const CONSUMER_NAME_BYTES_MAX: usize = 255;

/// Longest metadata string stored with a committed offset (Kafka's
/// `offset.metadata.max.bytes` default).
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;

/// A committed offset and its metadata.
pub use crate::shard::offsets::CommitValue as CommittedOffset;

/// A handle to a running engine; clone it freely.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topics_dir: PathBuf,
    config: EngineConfig,
    shards: Vec<MailboxSender<Request>>,
    topics: ArcSwap<HashMap<Arc<str>, TopicInfo>>,
    /// The names of the topics by ID, rebuilt with `topics`.
    topic_ids: ArcSwap<HashMap<topics::TopicId, Arc<str>>>,
    /// Serialises topic creation and deletion (not on the data path).
    admin: Mutex<()>,
    /// The shard threads until shutdown has joined them; held for the whole shutdown, so a
    /// second caller waits for the first to finish.
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    closed: AtomicBool,
    _lock: DirLock,
}

impl Engine {
    /// Opens the engine stored in `dir` (creating it if empty), recovering every partition.
    pub fn open(dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine, EngineError> {
        Engine::open_inner(dir.as_ref(), config, None)
    }

    /// [`Engine::open`] with each shard's I/O backend made by `io` (called on the shard's
    /// thread with its id): a fault injector for crash tests, say. `config.io_backend` is then
    /// unused.
    pub fn open_with_io(
        dir: impl AsRef<Path>,
        config: EngineConfig,
        io: IoFactory,
    ) -> Result<Engine, EngineError> {
        Engine::open_inner(dir.as_ref(), config, Some(io))
    }

    fn open_inner(dir: &Path, config: EngineConfig, io: Option<IoFactory>) -> Result<Engine, EngineError> {
        let config = config.resolved()?;
        let topics_dir = dir.join("topics");
        let data_dir = dir.join("data");
        for d in [&topics_dir, &data_dir] {
            std::fs::create_dir_all(d).map_err(|e| EngineError::Io { path: d.clone(), source: e })?;
        }
        let lock = DirLock::acquire(dir)?;
        let mut known = topics::load_all(&topics_dir)?;
        if !known.iter().any(|t| &*t.name == OFFSETS_TOPIC) {
            let info = offsets_topic(config.offsets_partitions, config.offsets_segment_bytes)?;
            topics::store(&topics_dir, &info)?;
            known.push(info);
        }
        // Topics described before topics had IDs get theirs now, once and durably.
        for info in known.iter_mut().filter(|t| t.id.is_none()) {
            info.id = new_topic_id()?;
            topics::store(&topics_dir, info)?;
        }
        for info in known.iter_mut().filter(|t| &*t.name == OFFSETS_TOPIC) {
            let wanted = offsets_config(config.offsets_segment_bytes);
            if info.config != wanted {
                info.config = wanted;
                topics::store(&topics_dir, info)?;
            }
        }
        if let Some(stored) = known.iter().find(|t| &*t.name == OFFSETS_TOPIC) {
            if stored.partitions != config.offsets_partitions {
                tracing::warn!(
                    stored = stored.partitions,
                    configured = config.offsets_partitions,
                    "offsets_partitions is fixed when the data directory is created; using the stored value"
                );
            }
        }
        lifecycle::remove_orphans(&data_dir, &known)?;
        let cache = lifecycle::write_cache(&config, &data_dir)?;
        let lifecycle::Shards { senders, threads } = lifecycle::spawn_shards(&config, &data_dir, io, cache)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                topics_dir,
                config,
                shards: senders,
                topics: ArcSwap::from_pointee(HashMap::new()),
                topic_ids: ArcSwap::from_pointee(HashMap::new()),
                admin: Mutex::new(()),
                threads: Mutex::new(Some(threads)),
                closed: AtomicBool::new(false),
                _lock: lock,
            }),
        };
        // Data topics first, the offsets topic last: opening an offsets partition tells the
        // data partitions' shards where their consumers stand, so those must exist by then.
        known.sort_by_key(|t| &*t.name == OFFSETS_TOPIC);
        for info in known {
            engine.open_partitions(&info)?;
            engine.publish(|t| {
                t.insert(Arc::clone(&info.name), info);
            });
        }
        // Two barrier rounds: the first waits until every shard has handed its messages to the
        // others' mailboxes, the second until those have been handled.
        for _ in 0..2 {
            engine.barrier()?;
        }
        // Offsets of topics that no longer exist (a deletion cut short by a crash) go now, before
        // a topic of the same name could be created and inherit them.
        let known: std::collections::HashSet<Arc<str>> = engine.inner.topics.load().keys().cloned().collect();
        let keep = Arc::new(known);
        let waits = (0..engine.inner.shards.len())
            .map(|s| {
                let what = Forget::AllBut(Arc::clone(&keep));
                engine.request_to(s, |reply| Request::Forget { what, reply }, false)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for w in waits {
            // A damaged or failed offsets partition cannot take the tombstones: the stale offsets
            // stay on disk, are dropped from memory, and go at a later open.
            if let Err(e) = wait(w) {
                tracing::warn!(error = %e, "could not write tombstones for the offsets of deleted topics");
            }
        }
        Ok(engine)
    }

    /// Returns once every shard has handled everything sent before, and has delivered what it
    /// had to tell other shards.
    fn barrier(&self) -> Result<(), EngineError> {
        let waits: Vec<_> = (0..self.inner.shards.len())
            .map(|s| self.request_to(s, |reply| Request::Barrier { reply }, false))
            .collect::<Result<_, _>>()?;
        waits.into_iter().try_for_each(wait)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Number of shard threads.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    fn publish(&self, change: impl FnOnce(&mut HashMap<Arc<str>, TopicInfo>)) {
        let mut next = HashMap::clone(&self.inner.topics.load());
        change(&mut next);
        let ids = next.values().map(|t| (t.id, Arc::clone(&t.name))).collect();
        self.inner.topics.store(Arc::new(next));
        self.inner.topic_ids.store(Arc::new(ids));
    }

    fn open_partitions(&self, info: &TopicInfo) -> Result<(), EngineError> {
        let waits: Vec<_> = (0..info.partitions)
            .map(|p| {
                let id = PartitionId { topic: Arc::clone(&info.name), partition: p };
                self.request(&id, |reply| Request::Open {
                    id: id.clone(),
                    config: Box::new(info.config.clone()),
                    reply,
                })
            })
            .collect();
        for w in waits {
            wait(w?)?;
        }
        Ok(())
    }

    /// Creates a topic of `partitions` partitions with `config` (see [`LogConfig`]).
    pub fn create_topic(&self, name: &str, partitions: u32, config: LogConfig) -> Result<(), EngineError> {
        if name.starts_with("__") {
            topics::validate_name(name)?;
            return Err(EngineError::InvalidTopicName {
                name: name.into(),
                reason: "names starting with '__' are internal",
            });
        }
        self.create_any_topic(name, partitions, config)
    }

    /// Creates an internal (`__`) topic for one of the engine's own components (the CDC
    /// connector's positions), unless it exists. Clients can read it but not write or delete it.
    pub(crate) fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        config: LogConfig,
    ) -> Result<(), EngineError> {
        debug_assert!(name.starts_with("__"));
        match self.create_any_topic(name, partitions, config) {
            Err(EngineError::TopicExists(_)) => Ok(()),
            other => other,
        }
    }

    /// [`Engine::produce_async`] into an internal topic, for the component that owns it.
    pub(crate) fn produce_internal_async(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record<'_>],
    ) -> impl Future<Output = Result<ProduceAck, EngineError>> + Send + 'static {
        let rx = self.resolve(topic, Target::Partition(partition)).and_then(|id| {
            let batch = build_batch(records)?;
            self.send_produce(id, batch, &Backpressure::Buffer)
        });
        async move { wait_async(rx?).await }
    }

    fn create_any_topic(&self, name: &str, partitions: u32, config: LogConfig) -> Result<(), EngineError> {
        topics::validate_name(name)?;
        if partitions == 0 || partitions > TOPIC_PARTITIONS_MAX {
            return Err(EngineError::BadPartitionCount { partitions, max: TOPIC_PARTITIONS_MAX });
        }
        config.validate().map_err(EngineError::BadTopicConfig)?;
        let _admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        if self.inner.topics.load().contains_key(name) {
            return Err(EngineError::TopicExists(name.into()));
        }
        self.check_partition_room(partitions)?;
        let info = TopicInfo { name: Arc::from(name), id: new_topic_id()?, partitions, config };
        // Partitions first, the description last: a crash in between leaves data without a
        // topic, which the next open removes; never a topic without its partitions.
        let opened = self.open_partitions(&info).and_then(|()| topics::store(&self.inner.topics_dir, &info));
        if let Err(e) = opened {
            let _ = self.close_partitions(&info);
            return Err(e);
        }
        self.publish(|t| {
            t.insert(Arc::clone(&info.name), info);
        });
        Ok(())
    }

    /// Partitions of every topic, the internal ones included.
    pub fn partition_count(&self) -> u64 {
        self.inner.topics.load().values().map(|t| u64::from(t.partitions)).sum()
    }

    /// Refuses `more` partitions beyond `partitions_max`, or beyond what the open-file limit
    /// leaves: each partition keeps a file open, and each shard may hold `sealed_files_max`
    /// more for reads.
    fn check_partition_room(&self, more: u32) -> Result<(), EngineError> {
        let existing = self.partition_count();
        let requested = u64::from(more);
        let max = self.inner.config.partitions_max;
        if existing + requested > max {
            return Err(EngineError::TooManyPartitions { requested, existing, max, limit: "partitions_max" });
        }
        let limit = crate::fds::limit();
        if limit != u64::MAX {
            let open = crate::fds::open_count()
                .map_err(|e| EngineError::System { what: "counting open descriptors", source: e })?;
            let sealed = (self.inner.config.sealed_files_max * self.inner.shards.len()) as u64;
            let room = limit.saturating_sub(open + sealed + crate::fds::HEADROOM);
            if requested > room {
                return Err(EngineError::TooManyPartitions {
                    requested,
                    existing,
                    max: existing + room,
                    limit: "the open-file limit (RLIMIT_NOFILE)",
                });
            }
        }
        Ok(())
    }

    /// Closes and deletes every partition of `info`, all of them even if some fail; returns the
    /// first error.
    fn close_partitions(&self, info: &TopicInfo) -> Result<(), EngineError> {
        let mut first_error = None;
        for p in 0..info.partitions {
            let id = PartitionId { topic: Arc::clone(&info.name), partition: p };
            let closed = self
                .request(&id, |reply| Request::Close { id: id.clone(), delete: true, reply })
                .and_then(wait);
            if let Err(e) = closed {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes a topic, its data and the offsets consumers committed on it. Calls in flight on
    /// it fail with `UnknownTopic`.
    pub fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        let info = self.topic(name)?;
        if name.starts_with("__") {
            return Err(EngineError::InvalidTopicName { name: name.into(), reason: "internal topic" });
        }
        self.publish(|t| {
            t.remove(name);
        });
        // The description goes first: if the data deletion is interrupted, the next open
        // removes what is left instead of bringing the topic back.
        topics::remove(&self.inner.topics_dir, name)?;
        let closed = self.close_partitions(&info);
        let forgotten = (0..self.inner.shards.len())
            .map(|s| {
                let what = Forget::Topic(Arc::clone(&info.name));
                self.request_to(s, |reply| Request::Forget { what, reply }, false)
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|waits| waits.into_iter().try_for_each(wait));
        closed.and(forgotten)
    }

    /// Changes a topic's configuration (segments, retention, durability); partitions keep theirs.
    pub fn alter_topic(&self, name: &str, config: LogConfig) -> Result<(), EngineError> {
        config.validate().map_err(EngineError::BadTopicConfig)?;
        let _admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        reject_internal(name)?;
        let mut info = self.topic(name)?;
        // As Kafka: an archiving topic cannot stop archiving (its archive would no longer be read).
        if info.config.archive && !config.archive {
            return Err(EngineError::BadTopicConfig(
                "remote.storage.enable cannot be turned off for a topic that archives".into(),
            ));
        }
        info.config = config;
        topics::store(&self.inner.topics_dir, &info)?;
        for p in 0..info.partitions {
            let id = PartitionId { topic: Arc::clone(&info.name), partition: p };
            wait(self.request(&id, |reply| Request::Configure {
                id: id.clone(),
                config: Box::new(info.config.clone()),
                reply,
            })?)?;
        }
        self.publish(|t| {
            t.insert(Arc::clone(&info.name), info);
        });
        Ok(())
    }

    /// The damage recovery found in the sealed segments of a partition: empty for an intact
    /// one. A damaged partition serves its intact records and refuses writes (see
    /// `log::damage` and docs/operations.md).
    pub fn damage(&self, topic: &str, partition: u32) -> Result<crate::log::DamageReport, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        wait(self.request(&id, |reply| Request::Damage { id: id.clone(), reply })?)
    }

    /// Accepts the damage of a partition as lost, durably: it takes writes again, now and after
    /// every restart. Its files are left as they are. Returns the number of damaged ranges
    /// accepted.
    pub fn accept_damage(&self, topic: &str, partition: u32) -> Result<usize, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        wait(self.request(&id, |reply| Request::AcceptDamage { id: id.clone(), reply })?)
    }

    /// Deletes the records of a partition below `offset` (`None`: every record up to the high
    /// watermark), as Kafka's DeleteRecords: the log start moves there durably, segments wholly
    /// below it are deleted, and reads below it are out of range. Returns the new log start.
    pub fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        offset: Option<i64>,
    ) -> Result<i64, EngineError> {
        reject_internal(topic)?;
        let id = self.resolve(topic, Target::Partition(partition))?;
        wait(self.request(&id, |reply| Request::DeleteRecords { id: id.clone(), offset, reply })?)
    }

    /// [`Engine::delete_records`] as a future.
    pub fn delete_records_async(
        &self,
        topic: &str,
        partition: u32,
        offset: Option<i64>,
    ) -> impl Future<Output = Result<i64, EngineError>> + Send + 'static {
        let rx =
            reject_internal(topic).and_then(|()| self.resolve(topic, Target::Partition(partition))).and_then(
                |id| self.request(&id, |reply| Request::DeleteRecords { id: id.clone(), offset, reply }),
            );
        async move { wait_async(rx?).await }
    }

    /// Compacts a partition of a compacted topic now: every record written so far that a later
    /// record of its key replaced is removed from the segment files (the active segment rolls
    /// first), and tombstones past their delete horizon go too. Returns when the pass is done.
    /// This is how a key is erased: write its tombstone, then compact.
    pub fn compact(&self, topic: &str, partition: u32) -> Result<crate::log::CleanOutcome, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        wait(self.request(&id, |reply| Request::Compact { id: id.clone(), reply })?)
    }

    /// Every topic, internal ones included, sorted by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let mut all: Vec<TopicInfo> = self.inner.topics.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The live topic's identity: handles of one topic are `Arc::ptr_eq`, and a topic deleted
    /// and created again under the same name gets a new one (while an old handle is held, its
    /// allocation cannot be reused). `None` if no such topic exists.
    pub fn topic_handle(&self, name: &str) -> Option<Arc<str>> {
        self.inner.topics.load().get(name).map(|t| Arc::clone(&t.name))
    }

    /// The topic whose ID is `id`.
    pub fn topic_by_id(&self, id: &topics::TopicId) -> Result<TopicInfo, EngineError> {
        let name = self.inner.topic_ids.load().get(id).cloned();
        // The two tables are swapped one after the other: a topic deleted and created again in
        // between must not answer for its old ID.
        name.and_then(|n| self.inner.topics.load().get(&n).cloned())
            .filter(|info| info.id == *id)
            .ok_or_else(|| EngineError::UnknownTopicId(id.to_string()))
    }

    pub fn topic(&self, name: &str) -> Result<TopicInfo, EngineError> {
        self.inner.topics.load().get(name).cloned().ok_or_else(|| EngineError::UnknownTopic(name.into()))
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// The partition a target names: explicit, by key (Kafka's murmur2 partitioner), or any.
    fn resolve(&self, topic: &str, target: Target<'_>) -> Result<PartitionId, EngineError> {
        let topics = self.inner.topics.load();
        let info = topics.get(topic).ok_or_else(|| EngineError::UnknownTopic(topic.into()))?;
        let partition = match target {
            Target::Partition(p) if p < info.partitions => p,
            Target::Partition(p) => {
                return Err(EngineError::UnknownPartition { topic: topic.into(), partition: p });
            }
            Target::Key(key) => crate::partitioner::partition_for_key(key, info.partitions),
            Target::Any => next_round_robin() % info.partitions,
        };
        Ok(PartitionId { topic: Arc::clone(&info.name), partition })
    }

    /// Runs a task on shard `shard`'s event loop, on its thread, beside the partitions it owns.
    /// `make` is called there and its future polled between the shard's turns: this is how
    /// network connections live on shards. The task is dropped when the shard stops.
    /// Calls the task makes to the engine must not block (use the `_async` calls: on a shard
    /// thread a request for a full mailbox waits in order on the thread instead of blocking).
    pub fn spawn_on(&self, shard: usize, make: crate::shard::LocalTask) -> Result<(), EngineError> {
        let mailbox = self
            .inner
            .shards
            .get(shard)
            .ok_or_else(|| EngineError::NoSuchShard { shard, shards: self.shards() })?;
        let request = Request::Spawn { task: make };
        if lifecycle::on_shard_thread() {
            return crate::shard::overflow::send(mailbox, request).map_err(|_| EngineError::ShuttingDown);
        }
        match mailbox.send(request) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(EngineError::Busy { shard }),
            Err(SendError::Closed(_)) => Err(EngineError::ShuttingDown),
        }
    }

    /// Sends a request to the shard owning `id`, waiting while its mailbox is full.
    fn request<T>(
        &self,
        id: &PartitionId,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<oneshot::Receiver<Result<T, EngineError>>, EngineError> {
        self.request_to(shard_of(&id.topic, id.partition, self.inner.shards.len()), make, false)
    }

    fn request_to<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Request,
        fail_fast: bool,
    ) -> Result<oneshot::Receiver<Result<T, EngineError>>, EngineError> {
        let (tx, rx) = oneshot::channel();
        let mailbox = &self.inner.shards[shard];
        if lifecycle::on_shard_thread() {
            // A shard thread never waits for a mailbox: the one it waits for may be its own, or
            // one whose shard is waiting for it. What does not fit waits in order on this
            // thread (see `shard::overflow`); a request that must not wait is refused while
            // others wait, or it would overtake them.
            if fail_fast && crate::shard::overflow::has_waiting(mailbox) {
                return Err(EngineError::Busy { shard });
            }
            if !fail_fast {
                return match crate::shard::overflow::send(mailbox, make(tx)) {
                    Ok(()) => Ok(rx),
                    Err(_) => Err(EngineError::ShuttingDown),
                };
            }
        }
        let sent = if fail_fast { mailbox.try_send(make(tx)) } else { mailbox.send(make(tx)) };
        match sent {
            Ok(()) => Ok(rx),
            Err(SendError::Full(_)) => Err(EngineError::Busy { shard }),
            Err(SendError::Closed(_)) => Err(EngineError::ShuttingDown),
        }
    }

    /// Appends `records` as one batch and returns once the topic's durability holds for them.
    pub fn produce(
        &self,
        topic: &str,
        target: Target<'_>,
        records: &[Record<'_>],
    ) -> Result<ProduceAck, EngineError> {
        reject_internal(topic)?;
        let id = self.resolve(topic, target)?;
        self.wait_answer(self.send_produce(id, build_batch(records)?, &Backpressure::Buffer)?)
    }

    /// [`Engine::produce`] as a future. Queuing may wait briefly while the shard's mailbox is
    /// full (that is the engine's backpressure); the wait for durability is asynchronous.
    pub fn produce_async(
        &self,
        topic: &str,
        target: Target<'_>,
        records: &[Record<'_>],
    ) -> impl Future<Output = Result<ProduceAck, EngineError>> + Send + 'static {
        let rx = reject_internal(topic).and_then(|()| self.resolve(topic, target)).and_then(|id| {
            let batch = build_batch(records)?;
            self.send_produce(id, batch, &Backpressure::Buffer)
        });
        async move { wait_async(rx?).await }
    }

    /// Appends a ready RecordBatch v2 (offsets are assigned by the log) to one partition. The
    /// bytes are staged and written as given (a `Vec<u8>` or a `Bytes` slice of a larger
    /// buffer), never copied; the log writes the offsets it assigns in place of the first eight.
    pub fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: impl Into<Bytes>,
        backpressure: &Backpressure,
    ) -> Result<ProduceAck, EngineError> {
        reject_internal(topic)?;
        backpressure.validate()?;
        let id = self.resolve(topic, Target::Partition(partition))?;
        self.wait_answer(self.send_produce(id, batch, backpressure)?)
    }

    /// [`Engine::produce_batch`] as a future: the batch is queued when this is called, so a
    /// producer can keep several batches in flight (as Kafka clients do) and let group commit
    /// cover them with one fsync.
    pub fn produce_batch_async(
        &self,
        topic: &str,
        partition: u32,
        batch: impl Into<Bytes>,
        backpressure: &Backpressure,
    ) -> impl Future<Output = Result<ProduceAck, EngineError>> + Send + 'static {
        let rx = reject_internal(topic)
            .and_then(|()| backpressure.validate())
            .and_then(|()| self.resolve(topic, Target::Partition(partition)))
            .and_then(|id| self.send_produce(id, batch, backpressure));
        async move { wait_async(rx?).await }
    }

    fn send_produce(
        &self,
        id: PartitionId,
        batch: impl Into<Bytes>,
        backpressure: &Backpressure,
    ) -> Result<oneshot::Receiver<Result<ProduceAck, EngineError>>, EngineError> {
        let shard = shard_of(&id.topic, id.partition, self.inner.shards.len());
        // Drop fails fast at the edge too: a full mailbox refuses rather than waits.
        let fail_fast = matches!(backpressure, Backpressure::Drop { .. });
        let consumer = backpressure.consumer().unwrap_or_default().to_string();
        let (batch, backpressure) = (batch.into(), backpressure.clone());
        self.request_to(shard, |reply| Request::Produce { id, batch, backpressure, reply }, fail_fast)
            .map_err(|e| match e {
                EngineError::Busy { .. } if fail_fast => EngineError::Dropped { consumer },
                other => other,
            })
    }

    /// A producer bound to a topic and a backpressure policy.
    pub fn producer(&self, topic: &str, backpressure: Backpressure) -> Result<Producer, EngineError> {
        reject_internal(topic)?;
        backpressure.validate()?;
        self.topic(topic)?;
        Ok(Producer {
            engine: self.clone(),
            topic: topic.to_string(),
            backpressure,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Reads from `offset`: waits up to `options.max_wait` for `options.min_bytes` to arrive
    /// (woken by appends, never by polling), then returns whole batches up to about
    /// `options.max_bytes` (at least one batch).
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        options: FetchOptions,
    ) -> Result<Fetched, EngineError> {
        self.wait_answer(self.send_fetch(topic, partition, offset, options)?)
    }

    pub fn fetch_async(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        options: FetchOptions,
    ) -> impl Future<Output = Result<Fetched, EngineError>> + Send + 'static {
        let rx = self.send_fetch(topic, partition, offset, options);
        async move { wait_async(rx?).await }
    }

    fn send_fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        options: FetchOptions,
    ) -> Result<oneshot::Receiver<Result<Fetched, EngineError>>, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        // A wait longer than a day is as good as a day, and cannot overflow the clock.
        let deadline = Instant::now() + options.max_wait.min(std::time::Duration::from_secs(86_400));
        self.request(&id, |reply| Request::Fetch {
            id: id.clone(),
            offset,
            max_bytes: options.max_bytes,
            min_bytes: options.min_bytes,
            deadline,
            reply,
        })
    }

    /// The earliest offset, the latest (the high watermark), or the first offset whose batch
    /// holds a timestamp at or after the one given (`None` if every record is older).
    pub fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<i64>, EngineError> {
        Ok(self.list_offset_with_timestamp(topic, partition, spec)?.map(|(o, _)| o))
    }

    /// [`Engine::list_offset`] with the timestamp found (-1 for earliest and latest).
    pub fn list_offset_with_timestamp(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<(i64, i64)>, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        wait(self.request(&id, |reply| Request::ListOffset { id: id.clone(), spec, reply })?)
    }

    /// [`Engine::list_offset_with_timestamp`] as a future.
    pub fn list_offset_async(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> impl Future<Output = Result<Option<(i64, i64)>, EngineError>> + Send + 'static {
        let rx = self
            .resolve(topic, Target::Partition(partition))
            .and_then(|id| self.request(&id, |reply| Request::ListOffset { id: id.clone(), spec, reply }));
        async move { wait_async(rx?).await }
    }

    /// The offsets partition holding `consumer`'s commits, from the stored topic (its partition
    /// count is fixed when the data directory is created).
    fn offsets_partition(&self, consumer: &str) -> Result<u32, EngineError> {
        if consumer.is_empty() || consumer.len() > CONSUMER_NAME_BYTES_MAX {
            return Err(EngineError::InvalidConsumerName { len: consumer.len() });
        }
        let partitions = self.topic(OFFSETS_TOPIC)?.partitions;
        Ok(crate::partitioner::partition_for_key(consumer.as_bytes(), partitions))
    }

    /// Durably records that `consumer` has processed `topic`/`partition` up to (not including)
    /// `offset`. Survives restarts; producers with `Block`/`Drop` backpressure watch it.
    pub fn commit_offset(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), EngineError> {
        wait(self.send_commit(consumer, topic, partition, offset, "")?)
    }

    /// [`Engine::commit_offset`] with a metadata string stored beside the offset (Kafka's
    /// OffsetCommit metadata; at most [`OFFSET_METADATA_MAX_BYTES`]).
    pub fn commit_offset_with_metadata(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        metadata: &str,
    ) -> Result<(), EngineError> {
        wait(self.send_commit(consumer, topic, partition, offset, metadata)?)
    }

    pub fn commit_offset_async(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        metadata: &str,
    ) -> impl Future<Output = Result<(), EngineError>> + Send + 'static {
        let rx = self.send_commit(consumer, topic, partition, offset, metadata);
        async move { wait_async(rx?).await }
    }

    fn send_commit(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        metadata: &str,
    ) -> Result<oneshot::Receiver<Result<(), EngineError>>, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        if offset < 0 {
            return Err(EngineError::NegativeOffset(offset));
        }
        if metadata.len() > OFFSET_METADATA_MAX_BYTES {
            return Err(EngineError::OffsetMetadataTooLarge {
                len: metadata.len(),
                max: OFFSET_METADATA_MAX_BYTES,
            });
        }
        let offsets_partition = self.offsets_partition(consumer)?;
        let shard = shard_of(OFFSETS_TOPIC, offsets_partition, self.inner.shards.len());
        let consumer: Arc<str> = Arc::from(consumer);
        let committed_at_ms = self.inner.config.clock.now_ms();
        let value = CommittedOffset { offset, metadata: Arc::from(metadata), committed_at_ms };
        self.request_to(
            shard,
            |reply| Request::Commit { offsets_partition, consumer, id, value, reply },
            false,
        )
    }

    /// The offset `consumer` last committed for `topic`/`partition`, if any.
    pub fn committed_offset(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i64>, EngineError> {
        Ok(wait(self.send_committed(consumer, topic, partition)?)?.map(|c| c.offset))
    }

    /// [`Engine::committed_offset`] with the metadata stored beside it.
    pub fn committed_offset_with_metadata(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<CommittedOffset>, EngineError> {
        wait(self.send_committed(consumer, topic, partition)?)
    }

    pub fn committed_offset_async(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
    ) -> impl Future<Output = Result<Option<CommittedOffset>, EngineError>> + Send + 'static {
        let rx = self.send_committed(consumer, topic, partition);
        async move { wait_async(rx?).await }
    }

    /// Every offset `consumer` committed: (topic, partition, offset), sorted.
    pub fn committed_offsets_async(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<Vec<(Arc<str>, u32, i64)>, EngineError>> + Send + 'static {
        let rx = self.offsets_partition(consumer).and_then(|offsets_partition| {
            let shard = shard_of(OFFSETS_TOPIC, offsets_partition, self.inner.shards.len());
            let consumer: Arc<str> = Arc::from(consumer);
            self.request_to(shard, |reply| Request::CommittedAll { consumer, reply }, false)
        });
        async move { wait_async(rx?).await }
    }

    fn send_committed(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
    ) -> Result<oneshot::Receiver<Result<Option<CommittedOffset>, EngineError>>, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        let offsets_partition = self.offsets_partition(consumer)?;
        let shard = shard_of(OFFSETS_TOPIC, offsets_partition, self.inner.shards.len());
        let consumer: Arc<str> = Arc::from(consumer);
        self.request_to(shard, |reply| Request::Committed { consumer, id, reply }, false)
    }

    /// Reports `consumers` active now, so that their committed offsets do not expire (see
    /// `EngineConfig::offsets_retention`). Each name goes to the shard holding its offsets;
    /// never waits: a shard whose mailbox is full misses this report (the next one counts).
    /// Names that cannot hold offsets are skipped.
    pub fn consumers_active(&self, consumers: &[&str]) -> Result<(), EngineError> {
        let at_ms = self.inner.config.clock.now_ms();
        let mut by_shard: HashMap<usize, Vec<Arc<str>>> = HashMap::new();
        for c in consumers {
            if let Ok(p) = self.offsets_partition(c) {
                let shard = shard_of(OFFSETS_TOPIC, p, self.inner.shards.len());
                by_shard.entry(shard).or_default().push(Arc::from(*c));
            }
        }
        for (shard, names) in by_shard {
            let request = Request::ConsumersActive { consumers: names.into(), at_ms };
            let mailbox = &self.inner.shards[shard];
            let sent = if lifecycle::on_shard_thread() {
                crate::shard::overflow::send(mailbox, request).map_err(|_| SendError::Closed(()))
            } else {
                mailbox.try_send(request).map_err(|e| match e {
                    SendError::Closed(_) => SendError::Closed(()),
                    SendError::Full(_) => SendError::Full(()),
                })
            };
            match sent {
                Err(SendError::Closed(())) => return Err(EngineError::ShuttingDown),
                Err(SendError::Full(())) => {
                    tracing::debug!(shard, "mailbox full: live consumers not reported")
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Counters of every shard.
    pub fn stats(&self) -> Result<Vec<ShardStats>, EngineError> {
        let waits: Vec<_> = (0..self.inner.shards.len())
            .map(|s| self.request_to(s, |reply| Request::Stats { reply }, false))
            .collect::<Result<_, _>>()?;
        waits.into_iter().map(wait).collect()
    }

    /// [`Engine::stats`] as a future (for tasks running on a shard, which must not block).
    pub fn stats_async(&self) -> impl Future<Output = Result<Vec<ShardStats>, EngineError>> + Send + 'static {
        let waits: Result<Vec<_>, _> = (0..self.inner.shards.len())
            .map(|s| self.request_to(s, |reply| Request::Stats { reply }, false))
            .collect();
        async move {
            let mut all = Vec::new();
            for w in waits? {
                all.push(wait_async(w).await?);
            }
            Ok(all)
        }
    }

    /// Flushes every partition, answers everything still waiting, and joins every shard
    /// thread. Other handles then get `ShuttingDown`. Dropping the last handle does the same.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.inner.shutdown()
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), EngineError> {
        // Held for the whole shutdown: a concurrent caller waits here until it is done.
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        match threads.take() {
            Some(handles) => lifecycle::shutdown_shards(&self.shards, handles),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if lifecycle::on_shard_thread() {
            // The last handle went away on a shard thread (a future's waker, say): that shard
            // cannot wait for its own reply, so another thread stops the engine.
            let shards = std::mem::take(&mut self.shards);
            let threads = self.threads.get_mut().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(threads) = threads {
                std::thread::spawn(move || {
                    if let Err(e) = lifecycle::shutdown_shards(&shards, threads) {
                        tracing::error!(error = %e, "shutdown on drop failed");
                    }
                });
            }
            return;
        }
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "shutdown on drop failed");
        }
    }
}

/// Writes and configuration changes are for the engine itself on internal (`__`) topics.
fn reject_internal(topic: &str) -> Result<(), EngineError> {
    if topic.starts_with("__") {
        return Err(EngineError::InvalidTopicName { name: topic.into(), reason: "internal topic" });
    }
    Ok(())
}

/// A producer bound to one topic and one [`Backpressure`] policy.
#[derive(Debug, Clone)]
pub struct Producer {
    engine: Engine,
    topic: String,
    backpressure: Backpressure,
    dropped: Arc<AtomicU64>,
}

impl Producer {
    /// Appends `records` as one batch; under `Drop` a refused batch returns `Dropped` and is
    /// counted, under `Block` this waits until the watched consumer is close enough.
    pub fn send(&self, target: Target<'_>, records: &[Record<'_>]) -> Result<ProduceAck, EngineError> {
        let id = self.engine.resolve(&self.topic, target)?;
        let result = self.engine.send_produce(id, build_batch(records)?, &self.backpressure).and_then(wait);
        if matches!(result, Err(EngineError::Dropped { .. })) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// [`Producer::send`] as a future (queuing may wait briefly while the mailbox is full).
    pub fn send_async(
        &self,
        target: Target<'_>,
        records: &[Record<'_>],
    ) -> impl Future<Output = Result<ProduceAck, EngineError>> + Send + 'static {
        let rx = self
            .engine
            .resolve(&self.topic, target)
            .and_then(|id| self.engine.send_produce(id, build_batch(records)?, &self.backpressure));
        let dropped = Arc::clone(&self.dropped);
        async move {
            let result = match rx {
                Ok(rx) => wait_async(rx).await,
                Err(e) => Err(e),
            };
            if matches!(result, Err(EngineError::Dropped { .. })) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            result
        }
    }

    /// Batches this producer had refused under `Drop`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn backpressure(&self) -> &Backpressure {
        &self.backpressure
    }
}

impl Engine {
    /// Waits for a shard's answer as [`EngineConfig::idle`] says (spinning and yielding a
    /// while before parking, or parking at once).
    fn wait_answer<T>(&self, rx: oneshot::Receiver<Result<T, EngineError>>) -> Result<T, EngineError> {
        let mut early = None;
        self.inner.config.idle.back_off(|| match rx.try_recv() {
            Ok(v) => {
                early = Some(v);
                true
            }
            Err(oneshot::TryRecvError::Empty) => false,
            Err(oneshot::TryRecvError::Disconnected) => true,
        });
        match early {
            Some(v) => v,
            None => wait(rx),
        }
    }
}

fn wait<T>(rx: oneshot::Receiver<Result<T, EngineError>>) -> Result<T, EngineError> {
    rx.recv().unwrap_or(Err(EngineError::ShuttingDown))
}

async fn wait_async<T>(rx: oneshot::Receiver<Result<T, EngineError>>) -> Result<T, EngineError> {
    rx.await.unwrap_or(Err(EngineError::ShuttingDown))
}

fn build_batch(records: &[Record<'_>]) -> Result<Vec<u8>, EngineError> {
    if records.is_empty() {
        return Err(EngineError::NoRecords);
    }
    let mut b = BatchBuilder::new(BatchOptions::default());
    for r in records {
        b.try_push(r).map_err(crate::log::LogError::from)?;
    }
    Ok(b.finish())
}

thread_local! {
    static ROUND_ROBIN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Per-thread round robin for records without a key: no counter shared between threads.
fn next_round_robin() -> u32 {
    ROUND_ROBIN.with(|c| {
        let v = c.get();
        c.set(v.wrapping_add(1));
        v
    })
}

fn new_topic_id() -> Result<topics::TopicId, EngineError> {
    topics::TopicId::random().map_err(|source| EngineError::System { what: "generating a topic ID", source })
}

fn offsets_topic(partitions: u32, segment_bytes: u64) -> Result<TopicInfo, EngineError> {
    Ok(TopicInfo {
        name: Arc::from(OFFSETS_TOPIC),
        id: new_topic_id()?,
        partitions,
        config: offsets_config(segment_bytes),
    })
}

/// The offsets topic's configuration: compacted (only the latest commit of each key is kept),
/// durable at every commit. Applied at every open, whatever an older version stored.
fn offsets_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        retention_age: None,
        durability: Durability::Always,
        cleanup: crate::log::Cleanup { compact: true, delete: false },
        ..LogConfig::default()
    }
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;
