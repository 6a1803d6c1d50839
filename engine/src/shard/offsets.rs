//! Committed offsets: what a consumer (a Kafka group, or an embedded consumer) has processed,
//! kept in the internal compacted topic `__consumer_offsets`.
//!
//! The home of the concept in the shard layer: the record format (key: consumer, topic,
//! partition; value: offset and metadata), appending a commit and answering it once durable,
//! tombstones for a deleted topic's offsets (in batches within the partition's limit, answered
//! once durable), and replay at open; the topic is compacted like any compacted topic
//! (`log::clean`: the latest record of each key survives, tombstones go after their horizon). The shard owning an offsets
//! partition keeps the latest value of each of its keys in memory (`Shard::committed`) and
//! tells the data partitions' shards where their consumers stand; the engine's calls
//! (`commit_offset`, `committed_offset`, ...) are the API.

use std::collections::HashMap;
use std::sync::Arc;

use super::request::{answer, Forget, PartitionId, Reply};
use super::slot::{PendingAck, Slot};
use crate::api::EngineError;
use crate::io::Io;
use crate::log::LogError;
use crate::record::{batches, BatchBuilder, BatchOptions, Record};

/// (consumer, topic, partition): the key of a committed offset.
pub(crate) type OffsetKey = (Arc<str>, Arc<str>, u32);

/// A committed offset and the metadata string its consumer stored with it (Kafka's
/// OffsetCommit metadata, at most `OFFSET_METADATA_MAX_BYTES`, checked by the engine).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitValue {
    pub offset: i64,
    pub metadata: Arc<str>,
    /// When it was committed (ms since the epoch; the record's timestamp): committed offsets
    /// of consumers gone quiet expire `offsets_retention` after it.
    pub committed_at_ms: i64,
}

impl CommitValue {
    /// Record value: the offset as a big-endian i64, then the metadata's UTF-8 bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.metadata.len());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(self.metadata.as_bytes());
        out
    }

    /// The inverse of `encode` for a record stamped `timestamp`; values of 8 bytes (written
    /// before metadata was kept) have none.
    fn decode(bytes: &[u8], timestamp: i64) -> Option<CommitValue> {
        let (offset, metadata) = bytes.split_first_chunk::<8>()?;
        let metadata = std::str::from_utf8(metadata).ok()?;
        Some(CommitValue {
            offset: i64::from_be_bytes(*offset),
            metadata: Arc::from(metadata),
            committed_at_ms: timestamp,
        })
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

/// What a shard knows of a consumer holding committed offsets there.
#[derive(Debug)]
pub(crate) struct ConsumerEntry {
    /// Its keys in `Shard::committed`; the entry goes with the last.
    keys: usize,
    /// When last reported active (ms since the epoch; `i64::MIN`: never).
    active_at: i64,
}

impl super::Shard {
    /// Keeps `value` as `key`'s latest (durable) commit, held by `offsets_partition`;
    /// `active_at` marks its consumer active then (at open).
    pub(super) fn remember(
        &mut self,
        key: OffsetKey,
        value: CommitValue,
        offsets_partition: u32,
        active_at: Option<i64>,
    ) {
        let consumer = Arc::clone(&key.0);
        if self.committed.insert(key, (value, offsets_partition)).is_none() {
            let e = self.consumers.entry(consumer).or_insert(ConsumerEntry { keys: 0, active_at: i64::MIN });
            e.keys += 1;
            if let Some(at) = active_at {
                e.active_at = e.active_at.max(at);
            }
        }
    }

    /// Forgets `key` (its tombstone is staged).
    fn unremember(&mut self, key: &OffsetKey) {
        if self.committed.remove(key).is_some() {
            if let Some(e) = self.consumers.get_mut(&key.0) {
                e.keys -= 1;
                if e.keys == 0 {
                    self.consumers.remove(&key.0);
                }
            }
        }
    }

    /// Marks consumers active at `at_ms` (their offsets do not expire meanwhile). Only
    /// consumers with offsets here are kept track of: the map is as small as `committed`.
    pub(super) fn consumers_active(&mut self, consumers: &[Arc<str>], at_ms: i64) {
        for c in consumers {
            if let Some(e) = self.consumers.get_mut(c) {
                e.active_at = e.active_at.max(at_ms);
            }
        }
    }

    /// Drops (with tombstones) the committed offsets last committed more than `retention` ago
    /// by consumers not active since: Kafka's `offsets.retention.minutes` for empty groups.
    pub(super) fn expire_offsets(&mut self, retention: std::time::Duration, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let expired: std::collections::HashSet<OffsetKey> = self
            .committed
            .iter()
            .filter(|(key, (value, _))| {
                value.committed_at_ms < cutoff
                    && self.consumers.get(&key.0).is_none_or(|e| e.active_at < cutoff)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        tracing::info!(shard = self.setup.id, keys = expired.len(), "committed offsets expired");
        // Nobody waits for the answer: a failure is logged by the partition that failed.
        let (reply, _) = oneshot::channel();
        self.forget(&Forget::Keys(Arc::new(expired)), reply);
    }

    /// Drops (with tombstones) the committed offsets `what` names that this shard holds;
    /// answers `reply` once every tombstone is durable. A key leaves memory only once its
    /// tombstone is staged: a failure leaves it (and the error says so).
    pub(super) fn forget(&mut self, what: &Forget, reply: Reply<()>) {
        let mut by_partition: HashMap<u32, Vec<OffsetKey>> = HashMap::new();
        for (key, &(_, offsets_partition)) in &self.committed {
            if what.covers(key) {
                by_partition.entry(offsets_partition).or_default().push(key.clone());
            }
        }
        let waiter = Countdown::new(by_partition.len(), reply);
        let io = &mut *self.io;
        let mut gone = Vec::new();
        for (partition, keys) in by_partition {
            let Some(slot) = self.slots.get_mut(&self.setup.offsets_topic, partition) else {
                waiter.fail(EngineError::UnknownPartition {
                    topic: self.setup.offsets_topic.to_string(),
                    partition,
                });
                continue;
            };
            match slot.append_tombstones(io, &keys, &waiter) {
                Ok(()) => gone.extend(keys),
                Err(e) => {
                    // Offsets of topics that no longer exist are never served, tombstone or not.
                    if matches!(what, Forget::AllBut(_)) {
                        gone.extend(keys);
                    }
                    waiter.fail(e)
                }
            }
        }
        for key in &gone {
            self.unremember(key);
        }
    }

    pub(super) fn commit_offset(
        &mut self,
        offsets_partition: u32,
        consumer: Arc<str>,
        id: PartitionId,
        value: CommitValue,
        reply: Reply<()>,
    ) {
        let offsets_id =
            PartitionId { topic: Arc::clone(&self.setup.offsets_topic), partition: offsets_partition };
        let io = &mut *self.io;
        match self.slots.get_mut(&offsets_id.topic, offsets_partition) {
            Some(slot) => slot.append_commit(io, (consumer, id.topic, id.partition), value, reply),
            None => answer(
                reply,
                Err(EngineError::UnknownPartition {
                    topic: offsets_id.topic.to_string(),
                    partition: offsets_partition,
                }),
            ),
        }
    }
}

impl Slot {
    /// Appends a committed offset to this offsets-topic partition.
    pub fn append_commit(&mut self, io: &mut dyn Io, key: OffsetKey, value: CommitValue, reply: Reply<()>) {
        let encoded = encode_offset_key(&key);
        let bytes = value.encode();
        let mut b = BatchBuilder::new(BatchOptions::default());
        let timestamp = value.committed_at_ms;
        b.push(&Record { timestamp, key: Some(&encoded), value: Some(&bytes), headers: &[] });
        match self.log.append(io, b.finish(), self.clock.now()) {
            Ok(info) => {
                self.acks.push_back(PendingAck::Commit { key, value, last_offset: info.last_offset, reply })
            }
            Err(e) => answer(reply, Err(e.into())),
        }
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
            last_offset = Some(self.log.append(io, batch, self.clock.now())?.last_offset);
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
        let now_ms = self.clock.now_ms();
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
                // A snapshot keeps each commit's own time (tombstones are stamped now).
                let timestamp = entries[at].1.as_ref().map_or(now_ms, |v| v.committed_at_ms);
                b.push(&Record {
                    timestamp,
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
                    match (decoded, record.value.map(|v| CommitValue::decode(v, record.timestamp))) {
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

    #[test]
    fn commit_values_round_trip_and_old_eight_byte_values_have_no_metadata() {
        let v = CommitValue { offset: 42, metadata: Arc::from("consumer state"), committed_at_ms: 5 };
        assert_eq!(CommitValue::decode(&v.encode(), 5), Some(v));
        assert_eq!(
            CommitValue::decode(&7i64.to_be_bytes(), 9),
            Some(CommitValue { offset: 7, metadata: Arc::from(""), committed_at_ms: 9 })
        );
        assert_eq!(CommitValue::decode(&[1, 2, 3], 0), None);
        assert_eq!(CommitValue::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0xff], 0), None, "metadata is UTF-8");
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
