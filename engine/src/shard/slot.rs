//! One partition inside a shard, with everything waiting on it: produce acknowledgements until
//! durability holds, long-poll fetches until data arrives, produces parked by `Block`
//! backpressure until the watched consumer catches up, and consumers' committed positions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::offsets::{CommitValue, Countdown, OffsetKey};
use super::producers::{Check, Producers};
use super::request::{answer, Reply};
use crate::api::{Backpressure, EngineError, Fetched, ProduceAck};
use crate::io::Io;
use crate::log::{AppendInfo, LogError, Partition};
use crate::record::BatchHeader;

pub(super) enum PendingAck {
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

struct Waiter {
    offset: i64,
    max_bytes: u64,
    min_bytes: u64,
    deadline: Instant,
    reply: Reply<Fetched>,
}

struct Parked {
    partition: u32,
    batch: Bytes,
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
    pub(super) acks: VecDeque<PendingAck>,
    waiters: Vec<Waiter>,
    /// The deadline the shard's deadline heap holds for this slot's waiters (an entry that
    /// will mark the slot busy), if any.
    pub(super) deadline_queued: Option<Instant>,
    parked: VecDeque<Parked>,
    /// Committed positions of consumers, as reported by the offsets shard.
    pub consumers: HashMap<Arc<str>, i64>,
    /// Parked bytes answered by `settle` since the shard last asked (for its accounting).
    released_bytes: u64,
    /// Idempotent producers' recent batches.
    producers: Producers,
    /// The wall clock appends are stamped with.
    pub(super) clock: crate::api::Clock,
}

impl Slot {
    /// Runs one slice of a compaction pass over this slot's log (see `log::clean`); an
    /// idempotent producer's last batch is kept.
    pub fn clean_step(
        &mut self,
        pass: &mut crate::log::CleanPass,
        io: &mut dyn crate::io::Io,
        budget: crate::log::Slice,
    ) -> Result<crate::log::CleanStep, crate::log::LogError> {
        let producers = &self.producers;
        self.log.clean_step(pass, io, budget, &|id, base| producers.is_last_batch(id, base))
    }

    /// A slot for `log`, with its idempotent producers rebuilt from its recent segments.
    pub fn new(log: Partition, clock: crate::api::Clock) -> Result<Slot, EngineError> {
        let producers = Producers::rebuild(&log, clock.now())?;
        Ok(Slot {
            log,
            acks: VecDeque::new(),
            waiters: Vec::new(),
            deadline_queued: None,
            parked: VecDeque::new(),
            consumers: HashMap::new(),
            released_bytes: 0,
            producers,
            clock,
        })
    }

    /// Whether the shard's next turn has anything to do here: staged or unsynced data,
    /// acknowledgements waiting, parked produces or their released bytes, or long polls on a
    /// failed partition (to be told). Long polls alone do not count: data arriving marks the
    /// slot, and so does a deadline passing (the shard keeps those in a heap).
    pub fn has_work(&self) -> bool {
        self.log.has_staged()
            || self.log.sync_deadline().is_some()
            || !self.acks.is_empty()
            || !self.parked.is_empty()
            || self.released_bytes > 0
            || (self.log.failure().is_some() && !self.waiters.is_empty())
    }

    /// The earliest deadline of the long polls waiting here.
    pub fn next_waiter_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    /// Drops the long polls whose callers stopped waiting; returns how many.
    pub fn drop_closed_waiters(&mut self) -> usize {
        let before = self.waiters.len();
        self.waiters.retain(|w| !w.reply.is_closed());
        before - self.waiters.len()
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

    pub fn append(&mut self, io: &mut dyn Io, partition: u32, batch: Bytes, reply: Reply<ProduceAck>) {
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
        let now = self.clock.now();
        match self.log.append(io, batch, now) {
            Ok(info) => {
                if let Some(h) = &header {
                    self.producers.record(h, info, now);
                }
                self.acks.push_back(PendingAck::Produce { partition, info, reply })
            }
            Err(e) => answer(reply, Err(e.into())),
        }
    }

    pub fn park(
        &mut self,
        partition: u32,
        batch: Bytes,
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
        let waiters = self.next_waiter_deadline();
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

    /// Forgets idempotent producers silent for a day.
    pub fn expire_producers(&mut self, now: SystemTime) {
        self.producers.expire(now);
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
}
