//! Change streams: a compacted topic read as a table and then as its changes.
//!
//! A [`ChangeStream`] over one partition of a compacted topic yields first a consistent
//! snapshot, every key's latest value as of offset N (the partition's high watermark when the
//! stream opened; keys whose latest record is a tombstone are absent), then the marker
//! [`Change::SnapshotEnd`] carrying N, then every record appended from N on, in offset order,
//! as upserts and deletes. [`ChangeStream::commit`] stores the position under the stream's
//! consumer name (a committed offset, like any consumer's); a stream opened again under that
//! name resumes after the last committed change, without a snapshot.
//!
//! The snapshot reads the partition once up to N and holds every key's latest record in memory
//! until it is yielded (the table's size): a second read could miss a record that compaction
//! removed meanwhile because a record at or after N replaced it.
//!
//! A resumed stream sees every change after its position as long as it resumes within the
//! topic's `delete.retention.ms`: compaction may remove a tombstone older than that, and with it
//! the delete. A position below the log start (DeleteRecords, retention of `compact,delete`)
//! starts over with [`Change::Reset`] (forget the table) and a new snapshot. Over the Kafka protocol the same stream is a consumer reading
//! the topic from offset 0 (see docs/compaction.md).

use std::collections::HashMap;
use std::time::Duration;

use super::{Engine, EngineError, FetchOptions, FetchedRecord};

/// Metadata stored with a committed change-stream position.
const LIVE: &str = "spate.change-stream";

/// One item of a change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The table must be forgotten: a new snapshot follows (the stream's position fell below
    /// the partition's log start, so changes were lost).
    Reset,
    /// A key's latest record as of the snapshot's offset.
    Snapshot(FetchedRecord),
    /// The snapshot is complete: it holds every record below this offset that is still its
    /// key's latest. Changes follow from this offset.
    SnapshotEnd { offset: i64 },
    /// A record written after the snapshot (or after the resumed position): a new value.
    Upsert(FetchedRecord),
    /// A tombstone written after the snapshot: the key is gone.
    Delete(FetchedRecord),
}

#[derive(Debug)]
enum Phase {
    /// Yielding the snapshot (queued whole in `pending`).
    Snapshot,
    Live,
}

/// A change stream over one partition; see the module documentation.
#[derive(Debug)]
pub struct ChangeStream {
    engine: Engine,
    topic: String,
    partition: u32,
    consumer: String,
    phase: Phase,
    /// The offset the next live read starts at.
    position: i64,
    pending: std::collections::VecDeque<Change>,
}

impl Engine {
    /// Opens a change stream over `partition` of the compacted `topic` for `consumer`: resumes
    /// after the position `consumer` committed, or starts with a snapshot.
    pub fn change_stream(
        &self,
        topic: &str,
        partition: u32,
        consumer: &str,
    ) -> Result<ChangeStream, EngineError> {
        let info = self.topic(topic)?;
        if !info.config.cleanup.compact {
            return Err(EngineError::NotCompacted(topic.to_string()));
        }
        if partition >= info.partitions {
            return Err(EngineError::UnknownPartition { topic: topic.to_string(), partition });
        }
        let start = self.fetch(topic, partition, 0, FetchOptions::default()).map(|f| f.log_start_offset);
        let start = match start {
            Ok(s) => s,
            Err(EngineError::Log(crate::log::LogError::OffsetOutOfRange { start, .. })) => start,
            Err(e) => return Err(e),
        };
        let committed = self.committed_offset_with_metadata(consumer, topic, partition)?;
        let mut stream = ChangeStream {
            engine: self.clone(),
            topic: topic.to_string(),
            partition,
            consumer: consumer.to_string(),
            phase: Phase::Live,
            position: 0,
            pending: Default::default(),
        };
        match committed {
            Some(c) if &*c.metadata == LIVE && c.offset >= start => stream.position = c.offset,
            _ => stream.begin_snapshot(start, false)?,
        }
        Ok(stream)
    }
}

impl ChangeStream {
    /// The offset after the last change yielded (where a committed stream resumes).
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether the snapshot is done (changes are live).
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live)
    }

    /// Durably stores the position (only once live: an interrupted snapshot starts over).
    pub fn commit(&self) -> Result<(), EngineError> {
        if !self.is_live() {
            return Ok(());
        }
        self.engine.commit_offset_with_metadata(
            &self.consumer,
            &self.topic,
            self.partition,
            self.position,
            LIVE,
        )
    }

    /// The next change, waiting up to `timeout` for one to be written; `None` if none came.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Change>, EngineError> {
        if let Some(c) = self.pending.pop_front() {
            if let (Change::SnapshotEnd { offset }, Phase::Snapshot) = (&c, &self.phase) {
                self.position = *offset;
                self.phase = Phase::Live;
            }
            return Ok(Some(c));
        }
        let options = FetchOptions { max_wait: timeout, ..FetchOptions::default() };
        let fetched = match self.engine.fetch(&self.topic, self.partition, self.position, options) {
            Ok(f) => f,
            // Deleted below us (DeleteRecords, retention): the table is read again.
            Err(EngineError::Log(crate::log::LogError::OffsetOutOfRange { start, .. }))
                if start > self.position =>
            {
                self.begin_snapshot(start, true)?;
                return self.next(timeout);
            }
            Err(e) => return Err(e),
        };
        if fetched.slice.len == 0 {
            return Ok(None);
        }
        for r in fetched.records(self.position)? {
            self.pending.push_back(if r.value.is_some() { Change::Upsert(r) } else { Change::Delete(r) });
        }
        self.position = fetched.slice.next_offset.max(self.position);
        Ok(self.pending.pop_front())
    }

    /// Reads every key's latest record below the high watermark and queues them (after a
    /// [`Change::Reset`] if `reset`), then the marker.
    fn begin_snapshot(&mut self, start: i64, reset: bool) -> Result<(), EngineError> {
        let end =
            self.engine.fetch(&self.topic, self.partition, start, FetchOptions::default())?.high_watermark;
        let mut latest: HashMap<Vec<u8>, FetchedRecord> = HashMap::new();
        let mut at = start;
        while at < end {
            let fetched = self.engine.fetch(&self.topic, self.partition, at, FetchOptions::default())?;
            if fetched.slice.len == 0 {
                break;
            }
            for r in fetched.records(at)? {
                if r.offset >= end {
                    break;
                }
                if let Some(k) = r.key.clone() {
                    latest.insert(k, r);
                }
            }
            at = fetched.slice.next_offset;
        }
        let mut records: Vec<FetchedRecord> = latest.into_values().filter(|r| r.value.is_some()).collect();
        records.sort_by_key(|r| r.offset);
        self.pending.clear();
        if reset {
            self.pending.push_back(Change::Reset);
        }
        self.pending.extend(records.into_iter().map(Change::Snapshot));
        self.pending.push_back(Change::SnapshotEnd { offset: end });
        self.phase = Phase::Snapshot;
        Ok(())
    }
}
