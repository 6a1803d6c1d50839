//! One partition inside a shard, with everything waiting on it: produce acknowledgements until
//! durability holds, long-poll fetches until data arrives, produces parked by `Block`
//! backpressure until the watched consumer catches up, and consumers' committed positions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::producers::{Check, Producers};
use super::request::{answer, Reply};
use crate::api::{Backpressure, EngineError, Fetched, ProduceAck};
use crate::io::Io;
use crate::log::{AppendInfo, LogError, Partition};
use crate::record::{batches, BatchBuilder, BatchHeader, BatchOptions, Record};

/// (consumer, topic, partition): the key of a committed offset.
pub(crate) type OffsetKey = (Arc<str>, Arc<str>, u32);

/// A committed offset and the metadata string its consumer stored with it (Kafka's
/// OffsetCommit metadata, at most `OFFSET_METADATA_MAX_BYTES`, checked by the engine).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitValue {
    pub offset: i64,
    pub metadata: Arc<str>,
}

impl CommitValue {
    /// Record value: the offset as a big-endian i64, then the metadata's UTF-8 bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.metadata.len());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(self.metadata.as_bytes());
        out
    }

    /// The inverse of `encode`; values of 8 bytes (written before metadata was kept) have none.
    fn decode(bytes: &[u8]) -> Option<CommitValue> {
        let (offset, metadata) = bytes.split_first_chunk::<8>()?;
        let metadata = std::str::from_utf8(metadata).ok()?;
        Some(CommitValue { offset: i64::from_be_bytes(*offset), metadata: Arc::from(metadata) })
    }
}

enum PendingAck {
    Produce {
        partition: u32,
        info: AppendInfo,
        reply: Reply<ProduceAck>,
    },
    Commit {
        key: OffsetKey,
        value: CommitValue,
        last_offset: i64,
        reply: Reply<()>,
    },
    /// Tombstones of forgotten offsets, up to `last_offset`.
    Forget {
        last_offset: i64,
        waiter: Countdown,
    },
}

impl PendingAck {
    fn last_offset(&self) -> i64 {
        match self {
            PendingAck::Produce { info, .. } => info.last_offset,
            PendingAck::Commit { last_offset, .. } | PendingAck::Forget { last_offset, .. } => *last_offset,
        }
    }
}

/// One reply that waits for several offsets partitions (each counts down once), or fails with
/// the first error.
#[derive(Debug, Clone)]
pub(crate) struct Countdown(Arc<CountdownInner>);

#[derive(Debug)]
struct CountdownInner {
    remaining: std::sync::atomic::AtomicUsize,
    reply: std::sync::Mutex<Option<Reply<()>>>,
}

impl Countdown {
    /// Waits for `parts` parts; with none, answers at once.
    pub fn new(parts: usize, reply: Reply<()>) -> Countdown {
        let countdown = Countdown(Arc::new(CountdownInner {
            remaining: std::sync::atomic::AtomicUsize::new(parts),
            reply: std::sync::Mutex::new(Some(reply)),
        }));
        if parts == 0 {
            countdown.finish(Ok(()));
        }
        countdown
    }

    fn finish(&self, result: Result<(), EngineError>) {
        let reply = self.0.reply.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(reply) = reply {
            answer(reply, result);
        }
    }

    /// One part is done.
    pub fn done(&self) {
        if self.0.remaining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            self.finish(Ok(()));
        }
    }

    pub fn fail(&self, e: EngineError) {
        self.finish(Err(e));
    }
}

struct Waiter {
    offset: i64,
    max_bytes: u64,
    min_bytes: u64,
    deadline: Instant,
    reply: Reply<Fetched>,
}

struct Parked {
    partition: u32,
    batch: Vec<u8>,
    backpressure: Backpressure,
    reply: Reply<ProduceAck>,
}

/// What backpressure decides for a produce.
pub(crate) enum Admission {
    Append,
    Park,
    Drop,
}

pub(crate) struct Slot {
    pub log: Partition,
    acks: VecDeque<PendingAck>,
    waiters: Vec<Waiter>,
    parked: VecDeque<Parked>,
    /// Committed positions of consumers, as reported by the offsets shard.
    pub consumers: HashMap<Arc<str>, i64>,
    /// Parked bytes answered by `settle` since the shard last asked (for its accounting).
    released_bytes: u64,
    /// Idempotent producers' recent batches.
    producers: Producers,
    /// Bytes of the last snapshot written by offsets compaction (0: none yet).
    snapshot_bytes: u64,
}

impl Slot {
    /// A slot for `log`, with its idempotent producers rebuilt from its recent segments.
    pub fn new(log: Partition) -> Result<Slot, EngineError> {
        let producers = Producers::rebuild(&log, SystemTime::now())?;
        Ok(Slot {
            log,
            acks: VecDeque::new(),
            waiters: Vec::new(),
            parked: VecDeque::new(),
            consumers: HashMap::new(),
            released_bytes: 0,
            producers,
            snapshot_bytes: 0,
        })
    }

    /// Whether the next group commit must include this partition.
    pub fn needs_commit(&self, now: Instant) -> bool {
        self.log.failure().is_none()
            && (self.log.has_staged() || self.log.sync_deadline().is_some_and(|d| d <= now))
    }

    /// How far `consumer` is behind the end of the log (staged batches included); a consumer
    /// that never committed stands at the log start.
    fn lag(&self, consumer: &str) -> u64 {
        let position = self.consumers.get(consumer).copied().unwrap_or(self.log.log_start_offset());
        u64::try_from(self.log.next_offset() - position.max(self.log.log_start_offset())).unwrap_or(0)
    }

    pub fn admit(&self, backpressure: &Backpressure) -> Admission {
        if self.log.failure().is_some() {
            // Straight to the append, which reports the failure.
            return Admission::Append;
        }
        match backpressure {
            Backpressure::Buffer => Admission::Append,
            // Parked produces keep their order: nothing overtakes them.
            Backpressure::Block { .. } if !self.parked.is_empty() => Admission::Park,
            Backpressure::Block { consumer, max_lag } if self.lag(consumer) >= *max_lag => Admission::Park,
            Backpressure::Drop { consumer, max_lag } if self.lag(consumer) >= *max_lag => Admission::Drop,
            _ => Admission::Append,
        }
    }

    pub fn append(&mut self, io: &mut dyn Io, partition: u32, batch: Vec<u8>, reply: Reply<ProduceAck>) {
        // A header that does not parse is reported by the log's own checks below.
        let header = BatchHeader::parse(&batch).ok();
        if let Some(h) = &header {
            match self.producers.check(h) {
                Check::Append => {}
                // Answered with the first write's offsets once those are durable (the queue
                // is in offset order, and these are behind everything queued).
                Check::Duplicate(info) => {
                    return self.acks.push_back(PendingAck::Produce { partition, info, reply })
                }
                Check::Refuse(e) => return answer(reply, Err(e)),
            }
        }
        match self.log.append(io, batch, SystemTime::now()) {
            Ok(info) => {
                if let Some(h) = &header {
                    self.producers.record(h, info, SystemTime::now());
                }
                self.acks.push_back(PendingAck::Produce { partition, info, reply })
            }
            Err(e) => answer(reply, Err(e.into())),
        }
    }

    pub fn park(
        &mut self,
        partition: u32,
        batch: Vec<u8>,
        backpressure: Backpressure,
        reply: Reply<ProduceAck>,
    ) {
        self.parked.push_back(Parked { partition, batch, backpressure, reply });
    }

    /// Appends parked produces whose consumer has caught up; returns the bytes released.
    pub fn release_parked(&mut self, io: &mut dyn Io) -> u64 {
        let mut released = 0;
        while let Some(front) = self.parked.front() {
            let Backpressure::Block { consumer, max_lag } = &front.backpressure else { unreachable!() };
            if self.lag(consumer) >= *max_lag {
                break;
            }
            let p = self.parked.pop_front().expect("front exists");
            released += p.batch.len() as u64;
            self.append(io, p.partition, p.batch, p.reply);
        }
        released
    }

    /// Appends a committed offset to this offsets-topic partition.
    pub fn append_commit(&mut self, io: &mut dyn Io, key: OffsetKey, value: CommitValue, reply: Reply<()>) {
        let encoded = encode_offset_key(&key);
        let bytes = value.encode();
        let mut b = BatchBuilder::new(BatchOptions::default());
        let now_ms =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        b.push(&Record { timestamp: now_ms, key: Some(&encoded), value: Some(&bytes), headers: &[] });
        match self.log.append(io, b.finish(), SystemTime::now()) {
            Ok(info) => {
                self.acks.push_back(PendingAck::Commit { key, value, last_offset: info.last_offset, reply })
            }
            Err(e) => answer(reply, Err(e.into())),
        }
    }

    /// Answers the acknowledgements the high watermark now covers (all of them with an error if
    /// the partition failed). Offset commits that became durable are added to `durable_commits`.
    /// Returns the number of produces acknowledged.
    pub fn settle(&mut self, durable_commits: &mut Vec<(OffsetKey, CommitValue)>) -> u64 {
        let mut produced = 0;
        // What the high watermark covers is acknowledged first, even when the partition has
        // just failed: a roll may have made it durable and visible before a later write failed,
        // and the fence keeps exactly that much.
        let hw = self.log.high_watermark();
        while self.acks.front().is_some_and(|a| a.last_offset() < hw) {
            match self.acks.pop_front().expect("front exists") {
                PendingAck::Produce { partition, info, reply } => {
                    produced += 1;
                    let ack = ProduceAck {
                        partition,
                        base_offset: info.base_offset,
                        last_offset: info.last_offset,
                    };
                    answer(reply, Ok(ack));
                }
                PendingAck::Commit { key, value, reply, .. } => {
                    durable_commits.push((key, value));
                    answer(reply, Ok(()));
                }
                PendingAck::Forget { waiter, .. } => waiter.done(),
            }
        }
        if let Some(cause) = self.log.failure() {
            // A failed partition will never acknowledge anything more: everything still waiting
            // on it, acknowledgements, long polls and parked produces, hears so now.
            let dir = self.log.dir().to_path_buf();
            let cause = Arc::clone(cause);
            let err = || EngineError::Log(LogError::Failed { dir: dir.clone(), cause: Arc::clone(&cause) });
            self.released_bytes += self.fail_everything(err);
        }
        produced
    }

    fn read(&self, offset: i64, max_bytes: u64) -> Result<Fetched, EngineError> {
        let slice = self.log.read(offset, max_bytes)?;
        Ok(Fetched {
            high_watermark: self.log.high_watermark(),
            log_start_offset: self.log.log_start_offset(),
            slice,
        })
    }

    /// Answers a fetch now if `min_bytes` are there (or its deadline passed); otherwise keeps it
    /// waiting and returns true.
    pub fn fetch(
        &mut self,
        offset: i64,
        max_bytes: u64,
        min_bytes: u64,
        deadline: Instant,
        now: Instant,
        reply: Reply<Fetched>,
    ) -> bool {
        match self.read(offset, max_bytes) {
            Ok(f) if f.slice.len >= min_bytes || deadline <= now => answer(reply, Ok(f)),
            Ok(_) => {
                self.waiters.push(Waiter { offset, max_bytes, min_bytes, deadline, reply });
                return true;
            }
            Err(e) => answer(reply, Err(e)),
        }
        false
    }

    /// Answers the waiting fetches whose data arrived or whose deadline passed.
    pub fn answer_waiters(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let hw = self.log.high_watermark();
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            if w.reply.is_closed() {
                // Its caller stopped waiting (a fetch that got its data from another
                // partition, a closed connection): it no longer holds a place.
                continue;
            }
            if w.deadline > now && hw <= w.offset {
                self.waiters.push(w);
                continue;
            }
            match self.read(w.offset, w.max_bytes) {
                Ok(f) if f.slice.len >= w.min_bytes || w.deadline <= now => answer(w.reply, Ok(f)),
                Ok(_) => self.waiters.push(w),
                Err(e) => answer(w.reply, Err(e)),
            }
        }
    }

    /// The earliest time this slot needs the shard awake: a fetch deadline or an interval sync.
    pub fn next_deadline(&self) -> Option<Instant> {
        let waiters = self.waiters.iter().map(|w| w.deadline).min();
        match (waiters, self.log.sync_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Parked bytes released by `settle` since the last call.
    pub fn take_released_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.released_bytes)
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// Appends tombstones for `keys` to this offsets partition, in batches within its batch
    /// limit, so that replay forgets them too; `waiter` counts down once they are durable.
    pub fn append_tombstones(
        &mut self,
        io: &mut dyn Io,
        keys: &[OffsetKey],
        waiter: &Countdown,
    ) -> Result<(), EngineError> {
        let entries: Vec<(OffsetKey, Option<CommitValue>)> = keys.iter().map(|k| (k.clone(), None)).collect();
        let mut last_offset = None;
        for batch in self.offset_batches(&entries) {
            last_offset = Some(self.log.append(io, batch, SystemTime::now())?.last_offset);
        }
        match last_offset {
            Some(last_offset) => {
                self.acks.push_back(PendingAck::Forget { last_offset, waiter: waiter.clone() })
            }
            None => waiter.done(),
        }
        Ok(())
    }

    /// Offset records (a value, or a tombstone for `None`) in batches of at most half the
    /// partition's batch limit (a single record longer than that goes alone).
    fn offset_batches(&self, entries: &[(OffsetKey, Option<CommitValue>)]) -> Vec<Vec<u8>> {
        let now_ms =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let batch_bytes = (self.log.config().batch_bytes_max / 2).max(1) as usize;
        let mut out = Vec::new();
        let mut at = 0;
        while at < entries.len() {
            let mut b = BatchBuilder::new(BatchOptions::default());
            let mut bytes = 0;
            while at < entries.len() {
                let (key, value) = &entries[at];
                let k = encode_offset_key(key);
                let value = value.as_ref().map(CommitValue::encode);
                let len = k.len() + value.as_ref().map_or(0, Vec::len) + 32;
                if bytes > 0 && bytes + len > batch_bytes {
                    break;
                }
                bytes += len;
                b.push(&Record {
                    timestamp: now_ms,
                    key: Some(&k),
                    value: value.as_ref().map(|v| &v[..]),
                    headers: &[],
                });
                at += 1;
            }
            out.push(b.finish());
        }
        out
    }

    /// Forgets idempotent producers silent for a day.
    pub fn expire_producers(&mut self, now: SystemTime) {
        self.producers.expire(now);
    }

    /// Compacts this offsets-topic partition if it has grown to `min_bytes` and to twice its
    /// last snapshot: seals the log, writes the latest offset of every live key as a snapshot
    /// at the end, makes it durable, then deletes every segment before it. Returns whether it
    /// compacted.
    ///
    /// Crash safety: the old segments go only after the snapshot is durable, and replaying old
    /// segments then the snapshot gives the same state as the snapshot alone; a torn snapshot
    /// is cut off by recovery, leaving the old segments.
    pub fn compact_offsets(&mut self, io: &mut dyn Io, min_bytes: u64) -> Result<bool, EngineError> {
        let size = self.log.size_bytes();
        if size < min_bytes || size < 2 * self.snapshot_bytes {
            return Ok(false);
        }
        self.log.roll_now(io)?;
        let start = self.log.next_offset();
        // The log itself is the truth: it holds durable commits and the ones just sealed
        // whose acknowledgements are still queued.
        let mut live = self.replay_offsets()?;
        live.sort();
        let entries: Vec<(OffsetKey, Option<CommitValue>)> =
            live.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        let mut written = 0;
        for batch in self.offset_batches(&entries) {
            written += batch.len() as u64;
            self.log.append(io, batch, SystemTime::now())?;
        }
        self.log.flush(io)?;
        let deleted = self.log.delete_segments_before(io, start)?;
        self.snapshot_bytes = written;
        tracing::info!(
            dir = %self.log.dir().display(),
            keys = live.len(),
            bytes_before = size,
            bytes_after = self.log.size_bytes(),
            segments_deleted = deleted.segments_deleted,
            "compacted committed offsets"
        );
        Ok(true)
    }

    /// Answers everything waiting with `err()`; returns the parked bytes released.
    pub fn fail_everything(&mut self, err: impl Fn() -> EngineError) -> u64 {
        for ack in self.acks.drain(..) {
            match ack {
                PendingAck::Produce { reply, .. } => answer(reply, Err(err())),
                PendingAck::Commit { reply, .. } => answer(reply, Err(err())),
                PendingAck::Forget { waiter, .. } => waiter.fail(err()),
            }
        }
        for w in self.waiters.drain(..) {
            answer(w.reply, Err(err()));
        }
        let mut released = 0;
        for p in self.parked.drain(..) {
            released += p.batch.len() as u64;
            answer(p.reply, Err(err()));
        }
        released
    }

    /// Reads this offsets-topic partition from start to end: the latest offset per key.
    pub fn replay_offsets(&self) -> Result<Vec<(OffsetKey, CommitValue)>, EngineError> {
        let mut latest: HashMap<OffsetKey, CommitValue> = HashMap::new();
        let mut offset = self.log.log_start_offset();
        let mut bytes = Vec::new();
        loop {
            let slice = self.log.read(offset, 1 << 20)?;
            if slice.len == 0 {
                break;
            }
            bytes.clear();
            slice
                .read_into(&mut bytes)
                .map_err(|e| EngineError::Io { path: self.log.dir().to_path_buf(), source: e })?;
            for batch in batches(&bytes) {
                let batch = batch.map_err(LogError::from)?;
                for record in batch.records() {
                    let record = record.map_err(LogError::from)?;
                    let decoded = record.key.and_then(decode_offset_key);
                    match (decoded, record.value.map(CommitValue::decode)) {
                        (Some(key), Some(Some(v))) => {
                            latest.insert(key, v);
                        }
                        (Some(key), None) => {
                            latest.remove(&key);
                        }
                        (None, _) | (_, Some(None)) => {
                            tracing::warn!(offset = record.offset, "skipping a malformed offset record")
                        }
                    }
                }
            }
            offset = slice.next_offset;
        }
        Ok(latest.into_iter().collect())
    }
}

/// Offset-record key: consumer and topic, each as a u16 length and UTF-8 bytes, then the
/// partition as a big-endian u32.
pub(crate) fn encode_offset_key((consumer, topic, partition): &OffsetKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + consumer.len() + topic.len());
    for s in [consumer, topic] {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

fn decode_offset_key(mut bytes: &[u8]) -> Option<OffsetKey> {
    let mut take_str = || -> Option<Arc<str>> {
        let len = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
        bytes = &bytes[2 + len..];
        Some(Arc::from(s))
    };
    let consumer = take_str()?;
    let topic = take_str()?;
    let partition = u32::from_be_bytes(bytes.try_into().ok()?);
    Some((consumer, topic, partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 live keys of 30 KiB make a 1.2 MB snapshot: more than one batch may hold.
    #[test]
    fn offsets_compaction_writes_a_snapshot_larger_than_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut io = crate::io::open(crate::io::BackendChoice::Fallback).unwrap();
        let log = Partition::open(dir.path(), crate::log::LogConfig::default(), &mut *io).unwrap();
        let mut slot = Slot::new(log).unwrap();
        let key = |i: usize| -> OffsetKey {
            (Arc::from(format!("{i:02}{}", "g".repeat(30 << 10))), Arc::from("t"), 0)
        };
        for round in 0..2 {
            for i in 0..40 {
                let (tx, _rx) = oneshot::channel();
                let value = CommitValue {
                    offset: (round * 100 + i) as i64,
                    metadata: Arc::from(format!("m{round}-{i}")),
                };
                slot.append_commit(&mut *io, key(i), value, tx);
            }
            slot.log.flush(&mut *io).unwrap();
        }
        let before = slot.log.size_bytes();
        assert!(slot.compact_offsets(&mut *io, 16 << 10).unwrap());
        assert!(slot.log.size_bytes() < before * 3 / 4, "{} of {before} bytes left", slot.log.size_bytes());
        assert_eq!(slot.log.segments().len(), 1, "everything before the snapshot is gone");
        let mut live = slot.replay_offsets().unwrap();
        live.sort();
        let expect =
            |i: usize| CommitValue { offset: (100 + i) as i64, metadata: Arc::from(format!("m1-{i}")) };
        assert_eq!(
            live,
            (0..40).map(|i| (key(i), expect(i))).collect::<Vec<_>>(),
            "offsets and metadata kept"
        );
        assert!(!slot.compact_offsets(&mut *io, 16 << 10).unwrap(), "not again until it doubles");
    }

    #[test]
    fn commit_values_round_trip_and_old_eight_byte_values_have_no_metadata() {
        let v = CommitValue { offset: 42, metadata: Arc::from("consumer state") };
        assert_eq!(CommitValue::decode(&v.encode()), Some(v));
        assert_eq!(
            CommitValue::decode(&7i64.to_be_bytes()),
            Some(CommitValue { offset: 7, metadata: Arc::from("") })
        );
        assert_eq!(CommitValue::decode(&[1, 2, 3]), None);
        assert_eq!(CommitValue::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0xff]), None, "metadata is UTF-8");
    }

    #[test]
    fn offset_keys_round_trip_and_reject_garbage() {
        let key: OffsetKey = (Arc::from("billing"), Arc::from("orders"), 7);
        assert_eq!(decode_offset_key(&encode_offset_key(&key)), Some(key));
        assert_eq!(decode_offset_key(b""), None);
        assert_eq!(decode_offset_key(&[0, 9, b'a']), None);
        let mut long = encode_offset_key(&(Arc::from("c"), Arc::from("t"), 1));
        long.push(0);
        assert_eq!(decode_offset_key(&long), None);
    }
}
