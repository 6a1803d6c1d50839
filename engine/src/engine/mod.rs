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

mod error;
pub mod topics;
mod types;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;

pub use error::EngineError;
pub use topics::TopicInfo;
pub use types::{
    Backpressure, EngineConfig, FetchOptions, Fetched, OffsetSpec, ProduceAck, ShardStats, Target,
};

use crate::log::{Durability, LogConfig};
use crate::record::{BatchBuilder, BatchOptions, Record};
use crate::shard::mailbox::{mailbox, MailboxSender, SendError};
use crate::shard::request::{PartitionId, Reply, Request};
use crate::shard::{Shard, ShardSetup};

/// The internal topic holding consumers' committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

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
    /// Serialises topic creation and deletion (not on the data path).
    admin: Mutex<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Engine {
    /// Opens the engine stored in `dir` (creating it if empty), recovering every partition.
    pub fn open(dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine, EngineError> {
        let dir = dir.as_ref();
        let config = config.resolved()?;
        let topics_dir = dir.join("topics");
        let data_dir = dir.join("data");
        for d in [&topics_dir, &data_dir] {
            std::fs::create_dir_all(d).map_err(|e| EngineError::Io { path: d.clone(), source: e })?;
        }
        let mut known = topics::load_all(&topics_dir)?;
        if !known.iter().any(|t| &*t.name == OFFSETS_TOPIC) {
            let info = offsets_topic(config.offsets_partitions);
            topics::store(&topics_dir, &info)?;
            known.push(info);
        }
        let mut senders = Vec::with_capacity(config.shards);
        let mut receivers = Vec::with_capacity(config.shards);
        for _ in 0..config.shards {
            let (tx, rx) = mailbox(config.mailbox_capacity)
                .map_err(|e| EngineError::Io { path: PathBuf::from("eventfd"), source: e })?;
            senders.push(tx);
            receivers.push(rx);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = Vec::with_capacity(config.shards);
        let (ready_tx, ready_rx) = crossbeam::channel::bounded(config.shards);
        for (id, rx) in receivers.into_iter().enumerate() {
            let setup = ShardSetup {
                id,
                data_dir: data_dir.clone(),
                rx,
                peers: senders.clone(),
                retention_check_interval: config.retention_check_interval,
                offsets_topic: Arc::from(OFFSETS_TOPIC),
                parked_bytes_max: config.parked_bytes_max,
            };
            let (pin, backend, ready) = (config.pin_threads, config.io_backend, ready_tx.clone());
            let spawned = std::thread::Builder::new().name(format!("spate-shard-{id}")).spawn(move || {
                if pin {
                    pin_to_core(id % cores);
                }
                // The ring is created on the thread that uses it: one ring per shard.
                match crate::io::open(backend) {
                    Ok(io) => {
                        let _ = ready.send(Ok(()));
                        Shard::new(setup, io).run();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
            let handle =
                spawned.map_err(|e| EngineError::Io { path: PathBuf::from("spawn shard"), source: e })?;
            threads.push(handle);
        }
        drop(ready_tx);
        let mut startup_error = None;
        for _ in 0..config.shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    startup_error = Some(EngineError::Log(crate::log::LogError::Io {
                        dir: dir.to_path_buf(),
                        source: Arc::new(e),
                    }))
                }
                Err(_) => startup_error = Some(EngineError::ShuttingDown),
            }
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                topics_dir,
                config,
                shards: senders,
                topics: ArcSwap::from_pointee(HashMap::new()),
                admin: Mutex::new(()),
                threads: Mutex::new(threads),
                closed: AtomicBool::new(false),
            }),
        };
        if let Some(e) = startup_error {
            return Err(e);
        }
        // The offsets topic first: its shards tell the others where consumers stand.
        known.sort_by_key(|t| &*t.name != OFFSETS_TOPIC);
        for info in known {
            engine.open_partitions(&info)?;
            engine.publish(|t| {
                t.insert(Arc::clone(&info.name), info);
            });
        }
        Ok(engine)
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
        self.inner.topics.store(Arc::new(next));
    }

    fn open_partitions(&self, info: &TopicInfo) -> Result<(), EngineError> {
        let waits: Vec<_> = (0..info.partitions)
            .map(|p| {
                let id = PartitionId { topic: Arc::clone(&info.name), partition: p };
                self.request(&id, |reply| Request::Open {
                    id: id.clone(),
                    config: info.config.clone(),
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
        topics::validate_name(name)?;
        if name.starts_with("__") {
            return Err(EngineError::InvalidTopicName {
                name: name.into(),
                reason: "names starting with '__' are internal",
            });
        }
        if partitions == 0 {
            return Err(EngineError::InvalidConfig("a topic needs at least one partition".into()));
        }
        config.validate().map_err(EngineError::InvalidConfig)?;
        let _admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        if self.inner.topics.load().contains_key(name) {
            return Err(EngineError::TopicExists(name.into()));
        }
        let info = TopicInfo { name: Arc::from(name), partitions, config };
        topics::store(&self.inner.topics_dir, &info)?;
        self.open_partitions(&info)?;
        self.publish(|t| {
            t.insert(Arc::clone(&info.name), info);
        });
        Ok(())
    }

    /// Deletes a topic and its data. Calls in flight on it fail with `UnknownTopic`.
    pub fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        let info = self.topic(name)?;
        if &*info.name == OFFSETS_TOPIC {
            return Err(EngineError::InvalidTopicName { name: name.into(), reason: "internal topic" });
        }
        self.publish(|t| {
            t.remove(name);
        });
        topics::remove(&self.inner.topics_dir, name)?;
        for p in 0..info.partitions {
            let id = PartitionId { topic: Arc::clone(&info.name), partition: p };
            wait(self.request(&id, |reply| Request::Close { id: id.clone(), delete: true, reply })?)?;
        }
        Ok(())
    }

    /// Changes a topic's configuration (segments, retention, durability); partitions keep theirs.
    pub fn alter_topic(&self, name: &str, config: LogConfig) -> Result<(), EngineError> {
        config.validate().map_err(EngineError::InvalidConfig)?;
        let _admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        let mut info = self.topic(name)?;
        info.config = config;
        topics::store(&self.inner.topics_dir, &info)?;
        for p in 0..info.partitions {
            let id = PartitionId { topic: Arc::clone(&info.name), partition: p };
            wait(self.request(&id, |reply| Request::Configure {
                id: id.clone(),
                config: info.config.clone(),
                reply,
            })?)?;
        }
        self.publish(|t| {
            t.insert(Arc::clone(&info.name), info);
        });
        Ok(())
    }

    /// Every topic, internal ones included, sorted by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let mut all: Vec<TopicInfo> = self.inner.topics.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
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
        let id = self.resolve(topic, target)?;
        wait(self.send_produce(id, build_batch(records)?, &Backpressure::Buffer)?)
    }

    /// [`Engine::produce`] as a future. Queuing may wait briefly while the shard's mailbox is
    /// full (that is the engine's backpressure); the wait for durability is asynchronous.
    pub fn produce_async(
        &self,
        topic: &str,
        target: Target<'_>,
        records: &[Record<'_>],
    ) -> impl Future<Output = Result<ProduceAck, EngineError>> + Send + 'static {
        let rx = self.resolve(topic, target).and_then(|id| {
            let batch = build_batch(records)?;
            self.send_produce(id, batch, &Backpressure::Buffer)
        });
        async move { wait_async(rx?).await }
    }

    /// Appends a ready RecordBatch v2 (offsets are assigned by the log) to one partition.
    pub fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Vec<u8>,
        backpressure: &Backpressure,
    ) -> Result<ProduceAck, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        wait(self.send_produce(id, batch, backpressure)?)
    }

    fn send_produce(
        &self,
        id: PartitionId,
        batch: Vec<u8>,
        backpressure: &Backpressure,
    ) -> Result<oneshot::Receiver<Result<ProduceAck, EngineError>>, EngineError> {
        let shard = shard_of(&id.topic, id.partition, self.inner.shards.len());
        // Drop fails fast at the edge too: a full mailbox refuses rather than waits.
        let fail_fast = matches!(backpressure, Backpressure::Drop { .. });
        let consumer = backpressure.consumer().unwrap_or_default().to_string();
        let backpressure = backpressure.clone();
        self.request_to(shard, |reply| Request::Produce { id, batch, backpressure, reply }, fail_fast)
            .map_err(|e| match e {
                EngineError::Busy { .. } if fail_fast => EngineError::Dropped { consumer },
                other => other,
            })
    }

    /// A producer bound to a topic and a backpressure policy.
    pub fn producer(&self, topic: &str, backpressure: Backpressure) -> Result<Producer, EngineError> {
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
        wait(self.send_fetch(topic, partition, offset, options)?)
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
        let deadline = Instant::now() + options.max_wait;
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

    fn offsets_partition(&self, consumer: &str) -> u32 {
        crate::partitioner::partition_for_key(consumer.as_bytes(), self.inner.config.offsets_partitions)
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
        let id = self.resolve(topic, Target::Partition(partition))?;
        let offsets_partition = self.offsets_partition(consumer);
        let shard = shard_of(OFFSETS_TOPIC, offsets_partition, self.inner.shards.len());
        let consumer: Arc<str> = Arc::from(consumer);
        wait(self.request_to(
            shard,
            |reply| Request::Commit { offsets_partition, consumer, id, offset, reply },
            false,
        )?)
    }

    /// The offset `consumer` last committed for `topic`/`partition`, if any.
    pub fn committed_offset(
        &self,
        consumer: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i64>, EngineError> {
        let id = self.resolve(topic, Target::Partition(partition))?;
        let offsets_partition = self.offsets_partition(consumer);
        let shard = shard_of(OFFSETS_TOPIC, offsets_partition, self.inner.shards.len());
        let consumer: Arc<str> = Arc::from(consumer);
        wait(self.request_to(shard, |reply| Request::Committed { consumer, id, reply }, false)?)
    }

    /// Counters of every shard.
    pub fn stats(&self) -> Result<Vec<ShardStats>, EngineError> {
        let waits: Vec<_> = (0..self.inner.shards.len())
            .map(|s| self.request_to(s, |reply| Request::Stats { reply }, false))
            .collect::<Result<_, _>>()?;
        waits.into_iter().map(wait).collect()
    }

    /// Flushes every partition, answers everything still waiting, and joins every shard
    /// thread. Other handles then get `ShuttingDown`. Dropping the last handle does the same.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.inner.shutdown()
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), EngineError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut waits = Vec::new();
        for shard in &self.shards {
            let (tx, rx) = oneshot::channel();
            if shard.send(Request::Shutdown { reply: tx }).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            // A shard that stopped already has nothing to say.
            let _ = w.recv();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "shutdown on drop failed");
        }
    }
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

    /// Batches this producer had refused under `Drop`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn backpressure(&self) -> &Backpressure {
        &self.backpressure
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
        return Err(EngineError::InvalidConfig("produce needs at least one record".into()));
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

fn offsets_topic(partitions: u32) -> TopicInfo {
    TopicInfo {
        name: Arc::from(OFFSETS_TOPIC),
        partitions,
        config: LogConfig {
            segment_bytes: 64 << 20,
            retention_age: None,
            durability: Durability::Always,
            ..LogConfig::default()
        },
    }
}

/// Pins the calling thread to one core; a failure (a restricted cpuset) is logged, not fatal.
fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity reads it for the calling thread (pid 0).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(core, error = %std::io::Error::last_os_error(), "could not pin shard thread");
    }
}

#[cfg(test)]
mod tests;
