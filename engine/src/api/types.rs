//! The plain types of the embedded API.

use std::sync::Arc;
use std::time::Duration;

use super::EngineError;
use crate::io::{BackendChoice, IoStats};
use crate::log::ReadSlice;
use crate::record::{batches, RecordError};

/// How the engine runs. `Default` gives one pinned shard per core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Shard threads; 0 means one per available core.
    pub shards: usize,
    /// Pin shard `i` to core `i mod cores` with `sched_setaffinity`.
    pub pin_threads: bool,
    pub io_backend: BackendChoice,
    /// Requests each shard's mailbox holds before senders wait.
    pub mailbox_capacity: usize,
    /// How often each shard applies retention.
    pub retention_check_interval: Duration,
    /// Partitions of the internal committed-offsets topic (fixed when the data directory is
    /// created).
    pub offsets_partitions: u32,
    /// Segment size of the offsets topic's partitions (Kafka's `offsets.topic.segment.bytes`):
    /// the topic is compacted, and only sealed segments are, so this bounds what compaction
    /// leaves behind in the active segment.
    pub offsets_segment_bytes: u64,
    /// Bytes of produce requests a shard may hold parked by `Block` backpressure; beyond it,
    /// produces fail with `TooManyBlocked`.
    pub parked_bytes_max: u64,
    /// Long-poll fetches a shard may hold waiting; beyond it, fetches fail with
    /// `TooManyWaiters`.
    pub fetch_waiters_max: usize,
    /// Disk space reserved ahead of appends: steps, cap per shard, free-space floor, idle time.
    pub reserve: crate::log::ReservePolicy,
    /// Files of sealed segments each shard keeps open for reads, at most; older ones are
    /// closed and opened again when read.
    pub sealed_files_max: usize,
    /// Partitions of all topics together (the internal ones included), at most. Creation is
    /// also refused where the open-file limit would not leave a descriptor for each.
    pub partitions_max: u64,
    /// A committed offset expires (with a tombstone) this long after its last commit, unless
    /// its consumer was reported active meanwhile ([`crate::Engine::consumers_active`]; the
    /// Kafka listener reports the members of live groups): Kafka's `offsets.retention.minutes`,
    /// seven days. `None`: never. Checked at each retention check.
    pub offsets_retention: Option<Duration>,
    /// The wall clock (see [`crate::Clock`]): the system's unless a test or simulation
    /// moves time by hand with a [`crate::ManualClock`].
    pub clock: super::Clock,
    /// Segment writes carry `RWF_DONTCACHE` where the kernel (6.14+) and the file system under
    /// the data directory support it (probed at open; elsewhere writes are as usual): appended
    /// pages are written back soon and leave the page cache, so sustained appends neither grow
    /// the cache nor wait on its reclaim. Readers of data already written back read it from
    /// the disk (into the cache, as any read). `false`: appends stay cached.
    pub uncached_writes: bool,
    /// How shard threads and callers waiting for an answer wait: park at once (the default,
    /// an idle engine costs nothing), or spin and yield first ([`IdleStrategy::Backoff`]) for
    /// a service that has cores to spare and wants answers without a thread's wake-up.
    pub idle: IdleStrategy,
    /// Where topics with `archive` (Kafka's `remote.storage.enable`) move segments that
    /// retention would delete, typically another mount (`None`: retention deletes them).
    /// Partitions get `<archive_dir>/<topic>-<partition>/`.
    pub archive_dir: Option<std::path::PathBuf>,
    /// How often each shard checks its compacted partitions, the bytes one slice of a pass
    /// reads, and the memory of a pass's key map (see `log::clean`).
    pub compaction: CompactionSetup,
}

/// How a thread of the engine, or a caller waiting for one of its answers, waits for work.
///
/// `Backoff` spins (checking for work with a pause instruction) for `spin`, then yields the CPU
/// between checks until `spin + yield_for` has passed, then parks as `Park` does: busy periods
/// never pay a wake-up, and an idle engine parks within `spin + yield_for`, costing no CPU. As
/// Aeron's backoff idle strategy. Shard threads that serve network connections always park
/// (their event loop must poll the sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleStrategy {
    #[default]
    Park,
    Backoff {
        spin: Duration,
        yield_for: Duration,
    },
}

impl IdleStrategy {
    /// Spin 20 µs, yield until 200 µs, then park: about a wake-up's cost on a VM spent spinning,
    /// and a bounded tail of yields.
    pub const LOW_LATENCY: IdleStrategy =
        IdleStrategy::Backoff { spin: Duration::from_micros(20), yield_for: Duration::from_micros(180) };

    /// Waits while `ready()` is false, spinning then yielding, for at most this strategy's
    /// window; returns whether it became ready (false: the caller parks). `Park` returns
    /// `ready()` at once.
    pub fn back_off(self, mut ready: impl FnMut() -> bool) -> bool {
        let IdleStrategy::Backoff { spin, yield_for } = self else { return ready() };
        let start = std::time::Instant::now();
        loop {
            if ready() {
                return true;
            }
            let waited = start.elapsed();
            if waited < spin {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
            } else if waited < spin + yield_for {
                std::thread::yield_now();
            } else {
                return false;
            }
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: 0,
            pin_threads: true,
            io_backend: BackendChoice::Auto,
            mailbox_capacity: 1024,
            retention_check_interval: Duration::from_secs(300),
            offsets_partitions: 8,
            offsets_segment_bytes: 16 << 20,
            parked_bytes_max: 64 << 20,
            fetch_waiters_max: 65_536,
            reserve: crate::log::ReservePolicy::default(),
            sealed_files_max: crate::segment::files::SEALED_FILES_MAX,
            partitions_max: 100_000,
            offsets_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            clock: super::Clock::system(),
            uncached_writes: true,
            idle: IdleStrategy::Park,
            compaction: CompactionSetup::default(),
            archive_dir: None,
        }
    }
}

impl EngineConfig {
    /// Fills in defaults that depend on the machine and checks the limits.
    pub(crate) fn resolved(mut self) -> Result<EngineConfig, EngineError> {
        if self.shards == 0 {
            self.shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        if self.shards > 1024 {
            return Err(EngineError::BadEngineConfig {
                field: "shards",
                reason: format!("{} is more than 1024", self.shards),
            });
        }
        self.reserve
            .validate()
            .map_err(|reason| EngineError::BadEngineConfig { field: "reserve", reason })?;
        // The sealed-file caches of all shards take at most a quarter of the open-file limit.
        let limit = crate::fds::limit();
        if limit != u64::MAX {
            let share = (limit / 4 / self.shards as u64).max(16) as usize;
            self.sealed_files_max = self.sealed_files_max.min(share);
        }
        self.sealed_files_max = self.sealed_files_max.max(1);
        for (field, value) in [
            ("mailbox_capacity", self.mailbox_capacity),
            ("offsets_partitions", self.offsets_partitions as usize),
        ] {
            if value == 0 {
                return Err(EngineError::BadEngineConfig { field, reason: "must be positive".into() });
            }
        }
        Ok(self)
    }
}

/// Where a produce goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// This partition.
    Partition(u32),
    /// The partition Kafka's default partitioner picks for this key (murmur2), so records
    /// land where Kafka clients would put them.
    Key(&'a [u8]),
    /// Any partition (round robin per calling thread).
    Any,
}

/// What a producer does when the consumer it watches falls behind: the three answers to a
/// producer that is faster than its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backpressure {
    /// Buffer: accept every record. Memory stays bounded: a shard holds at most its mailbox
    /// (`mailbox_capacity` requests, each at most `batch_bytes_max`) plus one turn's staged
    /// batches, and a full mailbox makes the producer wait for the disk. The backlog lives in
    /// the log on disk, up to retention.
    Buffer,
    /// Block: while `consumer` is `max_lag` or more records behind the end of the partition,
    /// the produce waits (parked in the shard, bounded by `parked_bytes_max`) until the
    /// consumer commits progress.
    Block { consumer: Arc<str>, max_lag: u64 },
    /// Drop: while `consumer` is `max_lag` or more records behind, or the shard's mailbox is
    /// full, the produce fails at once with `Dropped`; drops are counted.
    Drop { consumer: Arc<str>, max_lag: u64 },
}

impl Backpressure {
    /// Checks the policy: a `max_lag` of 0 could never be met.
    pub fn validate(&self) -> Result<(), EngineError> {
        match self {
            Backpressure::Block { max_lag: 0, .. } | Backpressure::Drop { max_lag: 0, .. } => {
                Err(EngineError::BadBackpressure)
            }
            _ => Ok(()),
        }
    }

    /// The consumer a `Block` or `Drop` policy watches.
    pub fn consumer(&self) -> Option<&str> {
        match self {
            Backpressure::Buffer => None,
            Backpressure::Block { consumer, .. } | Backpressure::Drop { consumer, .. } => Some(consumer),
        }
    }
}

/// Offsets assigned to a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    pub partition: u32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// Limits of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// About this many bytes of whole batches (at least one batch).
    pub max_bytes: u64,
    /// Wait until at least this many bytes are available (0: answer at once, as Kafka does)...
    pub min_bytes: u64,
    /// ...but no longer than this.
    pub max_wait: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { max_bytes: 1 << 20, min_bytes: 1, max_wait: Duration::ZERO }
    }
}

/// Which offset `list_offset` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The first offset whose batch holds a timestamp at or after this one (ms).
    Timestamp(i64),
}

/// The answer to a fetch: whole batches in a segment file, read on the caller's thread.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub slice: ReadSlice,
}

/// One record, owned: the convenient form of what a fetch returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Fetched {
    /// The raw batches (RecordBatch v2 bytes).
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.slice.len as usize);
        self.slice.read_into(&mut out)?;
        Ok(out)
    }

    /// The offset to fetch next.
    pub fn next_offset(&self) -> i64 {
        self.slice.next_offset
    }

    /// The records at or after `from` (a fetch starts at the batch holding `from`), compressed
    /// batches included.
    pub fn records(&self, from: i64) -> Result<Vec<FetchedRecord>, EngineError> {
        let bytes = self.bytes().map_err(EngineError::ReadFetched)?;
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        // What the log accepted decompresses within this limit (at the largest batch size).
        let limit = crate::log::validate::decompressed_bytes_max(crate::segment::SEGMENT_BYTES_MAX);
        for batch in batches(&bytes) {
            let batch = batch.map_err(crate::log::LogError::from)?;
            for r in batch.records_in(&mut scratch, limit).map_err(crate::log::LogError::from)? {
                let r = r.map_err(crate::log::LogError::from)?;
                if r.offset < from {
                    continue;
                }
                let headers = r
                    .headers()
                    .map(|h| h.map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))))
                    .collect::<Result<Vec<_>, RecordError>>()
                    .map_err(crate::log::LogError::from)?;
                out.push(FetchedRecord {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        Ok(out)
    }
}

/// Counters of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    pub partitions: usize,
    /// Produce requests acknowledged.
    pub produced: u64,
    /// Produce requests refused by `Drop` backpressure in the shard.
    pub dropped: u64,
    /// Produce requests parked by `Block` backpressure.
    pub parked: u64,
    pub parked_bytes: u64,
    /// Group commits made, and the fsyncs they issued.
    pub commits: u64,
    pub commit_fsyncs: u64,
    pub turns: u64,
    pub sleeps: u64,
    /// The most bytes staged for one group commit so far: the memory `Buffer` costs.
    pub staged_bytes_peak: u64,
    /// Disk space the shard's active segments hold reserved ahead of their appends.
    pub reserved_bytes: u64,
    /// Files of sealed segments the shard holds open (for reads).
    pub sealed_files_open: usize,
    /// Compaction passes completed, the bytes of segments they rewrote, and the bytes that
    /// freed.
    pub compactions: u64,
    pub compacted_bytes: u64,
    pub compaction_reclaimed_bytes: u64,
    /// Slices of compaction run.
    pub compaction_slices: u64,
    /// Latency of the group commits that synced (their writes and fdatasyncs together).
    pub sync_latency: LatencyBuckets,
    pub io: IoStats,
}

/// A fixed-bucket latency histogram, cheap enough to update on every commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyBuckets {
    /// `counts[i]`: observations at most `LatencyBuckets::BOUNDS_US[i]`; the last one counts
    /// the rest.
    pub counts: [u64; LatencyBuckets::BOUNDS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl LatencyBuckets {
    /// Upper bounds, in microseconds: 25 µs to about 3.3 s, doubling.
    pub const BOUNDS_US: [u64; 18] = {
        let mut b = [25; 18];
        let mut i = 1;
        while i < 18 {
            b[i] = b[i - 1] * 2;
            i += 1;
        }
        b
    };

    pub fn observe(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let i = Self::BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(Self::BOUNDS_US.len());
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;

    #[test]
    fn backoff_waits_within_its_window_and_park_does_not_wait() {
        assert!(!IdleStrategy::Park.back_off(|| false));
        assert!(IdleStrategy::Park.back_off(|| true));
        let strategy =
            IdleStrategy::Backoff { spin: Duration::from_micros(200), yield_for: Duration::from_millis(2) };
        // Ready after a few checks: seen while spinning.
        let mut checks = 0;
        assert!(strategy.back_off(|| {
            checks += 1;
            checks == 5
        }));
        // Never ready: gives up once the window has passed, not before and not much after.
        let start = std::time::Instant::now();
        assert!(!strategy.back_off(|| false));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_micros(2200), "{waited:?}");
        assert!(waited < Duration::from_millis(500), "{waited:?}");
    }
}

/// How a shard compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionSetup {
    /// How often partitions are checked for being due (Kafka's `log.cleaner.backoff.ms`).
    pub check_interval: Duration,
    /// Bytes of log one slice reads, about, and the time after which it stops at the next batch.
    pub slice_bytes: u64,
    pub slice_time: Duration,
    /// While requests keep a shard busy, compaction slices take at most this share of its time
    /// (an idle shard runs them back to back).
    pub busy_share_percent: u32,
    /// Bytes the key map of one pass may take (Kafka's `log.cleaner.dedupe.buffer.size`).
    pub map_bytes: usize,
}

impl Default for CompactionSetup {
    fn default() -> Self {
        CompactionSetup {
            check_interval: Duration::from_secs(15),
            slice_bytes: 256 << 10,
            slice_time: Duration::from_millis(1),
            busy_share_percent: 25,
            map_bytes: 64 << 20,
        }
    }
}
