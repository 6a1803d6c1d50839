//! Where captured changes go: the table topics (with each record's position, so a restart
//! writes nothing twice) and the connector's resume state in the internal topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::source::CdcError;
use super::CdcStats;
use crate::log::{Cleanup, Durability, LogConfig};
use crate::record::Record;
use crate::{Engine, FetchOptions, FetchedRecord, OffsetSpec, Target};

/// The internal compacted topic holding each connector's resume state, keyed by slot name.
pub const STATE_TOPIC: &str = "__spate_cdc";

/// The header on every record a connector writes: its [`Position`] as `<epoch>:<lsn>:<seq>`.
pub const POSITION_HEADER: &str = "spate.cdc.position";

/// Appends in one batch stay below this (the default `batch_bytes_max` is 1 MiB).
const BATCH_BYTES: usize = 512 << 10;

/// Where a record comes from in PostgreSQL's history: the snapshot generation (`epoch`, one
/// more for every new snapshot, so a snapshot of a restored database whose LSNs are lower still
/// sorts after what an earlier one wrote), its transaction's commit LSN (the snapshot's
/// consistent point for snapshot rows) and its sequence number within it. Records of one
/// partition are written in increasing position; only the tombstones of one TRUNCATE share one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u64,
    pub lsn: u64,
    pub seq: u64,
}

impl Position {
    /// The header's text: `<epoch>:<lsn>:<seq>` in decimal.
    pub fn encode(self) -> String {
        format!("{}:{}:{}", self.epoch, self.lsn, self.seq)
    }

    pub fn decode(b: &[u8]) -> Option<Position> {
        let mut parts = std::str::from_utf8(b).ok()?.split(':');
        let mut next = || parts.next()?.parse().ok();
        let p = Position { epoch: next()?, lsn: next()?, seq: next()? };
        parts.next().is_none().then_some(p)
    }

    /// The position header of a fetched record, if it has one.
    pub fn of(record: &FetchedRecord) -> Option<Position> {
        record
            .headers
            .iter()
            .find(|(k, _)| k == POSITION_HEADER.as_bytes())
            .and_then(|(_, v)| v.as_deref())
            .and_then(Position::decode)
    }
}

/// A connector's resume state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Everything up to here is written: transactions committing below it are skipped.
    pub lsn: u64,
    /// The initial snapshot finished (without it the next start takes a new one).
    pub snapshot_done: bool,
    pub publication: String,
    /// The snapshot generation of the positions written (see [`Position`]).
    #[serde(default)]
    pub epoch: u64,
}

/// The largest batch of the topics the connector creates: a row of up to about this size can
/// be captured (Kafka's `max.message.bytes`).
pub const TOPIC_BATCH_BYTES_MAX: u64 = 16 << 20;

/// The topic config of table and state topics: compacted, synced before acknowledging, any
/// timestamp.
pub fn compacted() -> LogConfig {
    LogConfig {
        cleanup: Cleanup { compact: true, delete: false },
        retention_age: None,
        retention_bytes: None,
        durability: Durability::Always,
        batch_bytes_max: TOPIC_BATCH_BYTES_MAX,
        timestamp_after_max: None,
        timestamp_before_max: None,
        ..LogConfig::default()
    }
}

pub async fn load_state(engine: &Engine, slot: &str) -> Result<Option<State>, CdcError> {
    engine.ensure_internal_topic(STATE_TOPIC, 1, compacted())?;
    let mut latest = None;
    read_all(engine, STATE_TOPIC, 0, |r| {
        if r.key.as_deref() == Some(slot.as_bytes()) {
            latest = r.value;
        }
    })
    .await?;
    latest
        .map(|v| {
            serde_json::from_slice(&v).map_err(|e| CdcError::State(format!("{STATE_TOPIC} for {slot}: {e}")))
        })
        .transpose()
}

pub async fn store_state(engine: &Engine, slot: &str, state: &State) -> Result<(), CdcError> {
    let value = serde_json::to_vec(state).expect("state serialises");
    let record =
        Record { timestamp: now_ms(), key: Some(slot.as_bytes()), value: Some(&value), headers: &[] };
    engine.produce_internal_async(STATE_TOPIC, 0, &[record]).await?;
    Ok(())
}

/// Calls `f` with every record of a partition, from its log start to its high watermark.
async fn read_all(
    engine: &Engine,
    topic: &str,
    partition: u32,
    mut f: impl FnMut(FetchedRecord),
) -> Result<(), CdcError> {
    let end = engine.list_offset_async(topic, partition, OffsetSpec::Latest).await?.map_or(0, |(o, _)| o);
    let mut at =
        engine.list_offset_async(topic, partition, OffsetSpec::Earliest).await?.map_or(0, |(o, _)| o);
    while at < end {
        let options = FetchOptions { max_bytes: 4 << 20, min_bytes: 0, max_wait: Duration::ZERO };
        let fetched = engine.fetch_async(topic, partition, at, options).await?;
        let records = fetched.records(at)?;
        let next = fetched.next_offset().max(records.last().map_or(at, |r| r.offset + 1));
        for r in records {
            f(r);
        }
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(())
}

/// A record header: name and value.
type Header<'a> = (&'a [u8], Option<&'a [u8]>);

struct Pending {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    position: Position,
    /// A TRUNCATE's tombstone: written again unless the partition holds a record past it
    /// (they share one position, and a replay tombstones the keys still live then).
    repeatable: bool,
}

/// Bytes a record adds to a batch beyond its key and value, at most (header, position).
const RECORD_OVERHEAD: usize = 96;

/// Buffers records per partition and appends them in batches, skipping what a partition
/// already holds (its last record's position, read once per session).
pub struct Sink {
    engine: Engine,
    partitions: u32,
    flush_bytes: usize,
    stats: Arc<CdcStats>,
    /// Partition counts and batch limits of the topics in use (created if missing).
    topics: HashMap<String, (u32, usize)>,
    pending: BTreeMap<(Arc<str>, u32), Vec<Pending>>,
    pending_bytes: usize,
    tails: HashMap<(String, u32), Position>,
    /// Appends made and not yet acknowledged, oldest first (a partition's appends are queued to
    /// its shard in order, so they land in order).
    in_flight: std::collections::VecDeque<(Ack, u64)>,
}

type Ack = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::ProduceAck, crate::EngineError>> + Send>,
>;

/// Appends waiting for their acknowledgement before more are made: reading from PostgreSQL goes
/// on while about this many appends are synced.
const IN_FLIGHT_MAX: usize = 32;

impl Sink {
    pub fn new(engine: Engine, partitions: u32, flush_bytes: usize, stats: Arc<CdcStats>) -> Sink {
        Sink {
            engine,
            partitions,
            flush_bytes,
            stats,
            topics: HashMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            tails: HashMap::new(),
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// Creates `topic` (compacted, `partitions` partitions) unless it exists; refuses an
    /// existing topic that is not compacted or not synced before acknowledging.
    pub fn ensure_topic(&mut self, topic: &str) -> Result<(), CdcError> {
        if self.topics.contains_key(topic) {
            return Ok(());
        }
        match self.engine.create_topic(topic, self.partitions, compacted()) {
            Ok(()) | Err(crate::EngineError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let info = self.engine.topic(topic)?;
        if !info.config.cleanup.compact || info.config.durability != Durability::Always {
            return Err(CdcError::Refused(format!(
                "topic {topic} exists with cleanup.policy {} and durability {:?}: the connector needs a compacted \
                 topic synced before acknowledging (cleanup.policy=compact, spate.durability=always); alter or \
                 delete it",
                if info.config.cleanup.compact { "compact" } else { "delete" },
                info.config.durability
            )));
        }
        let batch_max = info.config.batch_bytes_max as usize;
        self.topics.insert(topic.to_string(), (info.partitions, batch_max));
        Ok(())
    }

    /// Queues one record (`value: None` is a tombstone); appends what is queued once it passes
    /// `flush_bytes`. A record larger than the topic's batch limit is refused before anything
    /// after it could be appended (a partition's appends must not skip one).
    pub async fn push(
        &mut self,
        topic: &Arc<str>,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        position: Position,
        repeatable: bool,
    ) -> Result<(), CdcError> {
        let (partitions, batch_max) = *self.topics.get(&**topic).expect("ensure_topic before push");
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD;
        if size + 61 > batch_max {
            return Err(CdcError::Refused(format!(
                "a change of {size} bytes for topic {topic} is larger than its batch limit of {batch_max} bytes \
                 (max.message.bytes); raise it to capture this row"
            )));
        }
        let partition = crate::partitioner::partition_for_key(&key, partitions);
        self.pending_bytes += size;
        self.pending.entry((Arc::clone(topic), partition)).or_default().push(Pending {
            key,
            value,
            timestamp: now_ms(),
            position,
            repeatable,
        });
        if self.pending_bytes >= self.flush_bytes {
            self.append().await?;
        }
        Ok(())
    }

    /// Appends everything queued and waits until all of it is durable.
    pub async fn flush(&mut self) -> Result<(), CdcError> {
        self.append().await?;
        self.settle(0).await
    }

    /// Waits for acknowledgements until at most `keep` appends are in flight.
    async fn settle(&mut self, keep: usize) -> Result<(), CdcError> {
        while self.in_flight.len() > keep {
            let (ack, records) = self.in_flight.pop_front().expect("not empty");
            match ack.await {
                Ok(_) => CdcStats::add(&self.stats.records, records),
                Err(e) => {
                    // What was written is found again by the next session's tails.
                    self.tails.clear();
                    self.drain().await;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Waits for every append in flight, whatever its outcome: a session ends only once its
    /// appends have landed or failed, so the next one reads tails that stay put.
    pub async fn drain(&mut self) {
        while let Some((ack, _)) = self.in_flight.pop_front() {
            let _ = ack.await;
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Makes the appends of everything queued, without waiting for more than
    /// [`IN_FLIGHT_MAX`] of them to be acknowledged.
    async fn append(&mut self) -> Result<(), CdcError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut acks: Vec<(Ack, u64)> = Vec::new();
        for ((topic, partition), records) in pending {
            let tail = self.tail(&topic, partition).await?;
            let batch_max = self.topics.get(&*topic).map_or(BATCH_BYTES, |t| t.1 / 2).min(BATCH_BYTES);
            let fresh: Vec<&Pending> = records
                .iter()
                .filter(|r| r.position > tail || (r.repeatable && r.position == tail))
                .collect();
            let skipped = records.len() - fresh.len();
            if skipped > 0 {
                CdcStats::add(&self.stats.duplicates_skipped, skipped as u64);
            }
            let Some(last) = fresh.last() else { continue };
            let last = last.position;
            let positions: Vec<String> = fresh.iter().map(|r| r.position.encode()).collect();
            let headers: Vec<[Header<'_>; 1]> =
                positions.iter().map(|p| [(POSITION_HEADER.as_bytes(), Some(p.as_bytes()))]).collect();
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            for (r, h) in fresh.iter().zip(&headers) {
                let size = r.key.len() + r.value.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD;
                if !batch.is_empty() && batch_bytes + size > batch_max {
                    let n = batch.len() as u64;
                    let ack = self.engine.produce_async(&topic, Target::Partition(partition), &batch);
                    acks.push((Box::pin(ack), n));
                    batch.clear();
                    batch_bytes = 0;
                }
                batch.push(Record {
                    timestamp: r.timestamp,
                    key: Some(&r.key),
                    value: r.value.as_deref(),
                    headers: &h[..],
                });
                batch_bytes += size;
            }
            let n = batch.len() as u64;
            acks.push((Box::pin(self.engine.produce_async(&topic, Target::Partition(partition), &batch)), n));
            self.tails.insert((topic.to_string(), partition), last);
        }
        self.in_flight.extend(acks);
        self.settle(IN_FLIGHT_MAX).await
    }

    /// The position of the partition's last record (the default when it has none).
    pub async fn tail(&mut self, topic: &str, partition: u32) -> Result<Position, CdcError> {
        if let Some(p) = self.tails.get(&(topic.to_string(), partition)) {
            return Ok(*p);
        }
        let engine = &self.engine;
        let end = engine.list_offset_async(topic, partition, OffsetSpec::Latest).await?.map_or(0, |(o, _)| o);
        let start =
            engine.list_offset_async(topic, partition, OffsetSpec::Earliest).await?.map_or(0, |(o, _)| o);
        let mut tail = Position::default();
        if end > start {
            let options = FetchOptions { max_bytes: 1 << 20, min_bytes: 0, max_wait: Duration::ZERO };
            let fetched = engine.fetch_async(topic, partition, end - 1, options).await?;
            if let Some(p) = fetched.records(end - 1)?.last().and_then(Position::of) {
                tail = p;
            }
        }
        self.tails.insert((topic.to_string(), partition), tail);
        Ok(tail)
    }

    /// Keys whose latest record in `topic` is not a tombstone (what a compacted read of the
    /// topic holds), after appending everything queued.
    pub async fn live_keys(&mut self, topic: &str) -> Result<Vec<Vec<u8>>, CdcError> {
        self.flush().await?;
        let (partitions, _) = *self.topics.get(topic).expect("ensure_topic before live_keys");
        let mut live = Vec::new();
        for p in 0..partitions {
            let mut keys: HashSet<Vec<u8>> = HashSet::new();
            read_all(&self.engine, topic, p, |r| {
                if let Some(k) = r.key {
                    if r.value.is_some() {
                        keys.insert(k);
                    } else {
                        keys.remove(&k);
                    }
                }
            })
            .await?;
            live.extend(keys);
        }
        live.sort();
        Ok(live)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_lsn_then_sequence_and_round_trip() {
        let a = Position { epoch: 1, lsn: 0x0100_0000_0000, seq: 7 };
        let b = Position { epoch: 1, lsn: 0x0100_0000_0000, seq: 8 };
        let c = Position { epoch: 1, lsn: 0x0100_0000_0001, seq: 0 };
        let restored = Position { epoch: 2, lsn: 5, seq: 0 };
        assert!(a < b && b < c && c < restored && Position::default() < a);
        assert_eq!(Position::decode(c.encode().as_bytes()), Some(c));
        assert_eq!(c.encode(), "1:1099511627777:0");
        assert_eq!(Position::decode(b"1:12"), None);
        assert_eq!(Position::decode(b"1:2:3:4"), None);
        assert_eq!(Position::decode(b"x:1:2"), None);
    }
}
