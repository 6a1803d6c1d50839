//! Idempotent producers of one partition: the last batches each producer id wrote, so that a
//! retried batch is acknowledged with its first offsets instead of written twice, and a batch
//! that skips sequence numbers is refused.
//!
//! Kafka's rules: a producer's batches carry consecutive sequence numbers per partition
//! (wrapping after `i32::MAX`), under an epoch that only grows. A batch equal to one of the last
//! [`RECENT_BATCHES`] is a duplicate; a batch that continues the sequence is appended; anything
//! else is out of order. A higher epoch restarts the sequence at 0. A producer this partition
//! knows nothing of (new, or expired) is accepted at any sequence, as Kafka does since KIP-360.
//! The state is rebuilt at open from the batch headers of the segment files written to in the
//! last [`EXPIRATION`] (Kafka's `producer.id.expiration.ms` default), so deduplication survives
//! restarts, and producers silent for that long are forgotten at runtime too.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::api::EngineError;
use crate::log::{AppendInfo, Partition};
use crate::record::BatchHeader;
use crate::segment::HeaderCursor;

/// Batches per producer remembered for deduplication (Kafka's in-flight limit for idempotence).
pub const RECENT_BATCHES: usize = 5;
/// Producers not heard of for this long are forgotten when a partition opens.
pub const EXPIRATION: Duration = Duration::from_secs(24 * 3600);
/// Producer ids one partition remembers at most: past it, the one silent longest is forgotten
/// (it is then treated as new, KIP-360), so a client minting producer ids cannot grow this.
pub const PRODUCERS_MAX: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    first_seq: i32,
    last_seq: i32,
    info: AppendInfo,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Written>,
    last_write: SystemTime,
}

/// What to do with a batch.
#[derive(Debug)]
pub enum Check {
    /// Not idempotent, or the next in its producer's sequence.
    Append,
    /// Already written: acknowledge with these offsets.
    Duplicate(AppendInfo),
    Refuse(EngineError),
}

#[derive(Debug, Default)]
pub struct Producers {
    by_id: HashMap<i64, Producer>,
}

fn last_seq(header: &BatchHeader) -> i32 {
    // Kafka's `base_sequence + last_offset_delta`: the same as the record count for a batch as a
    // producer writes it, and still right for a batch compaction emptied. Sequences wrap to 0
    // after i32::MAX.
    ((i64::from(header.base_sequence) + i64::from(header.last_offset_delta)) % (i64::from(i32::MAX) + 1))
        as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl Producers {
    pub fn check(&self, h: &BatchHeader) -> Check {
        if h.producer_id < 0 {
            return Check::Append;
        }
        let refuse = |e| Check::Refuse(e);
        if h.base_sequence < 0 || h.producer_epoch < 0 {
            return refuse(EngineError::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected: 0,
                got: h.base_sequence,
            });
        }
        let Some(p) = self.by_id.get(&h.producer_id) else {
            // New here, or forgotten after a day of silence: accepted at any sequence (KIP-360).
            return Check::Append;
        };
        if h.producer_epoch < p.epoch {
            return refuse(EngineError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                current: p.epoch,
                got: h.producer_epoch,
            });
        }
        if h.producer_epoch > p.epoch {
            return if h.base_sequence == 0 {
                Check::Append
            } else {
                refuse(EngineError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected: 0,
                    got: h.base_sequence,
                })
            };
        }
        let last = last_seq(h);
        if let Some(w) = p.recent.iter().find(|w| w.first_seq == h.base_sequence && w.last_seq == last) {
            return Check::Duplicate(w.info);
        }
        let expected = p.recent.back().map_or(0, |w| next_seq(w.last_seq));
        if h.base_sequence == expected {
            Check::Append
        } else {
            refuse(EngineError::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected,
                got: h.base_sequence,
            })
        }
    }

    /// Records a batch that was appended at `info` (written at `now`).
    pub fn record(&mut self, h: &BatchHeader, info: AppendInfo, now: SystemTime) {
        if h.producer_id < 0 {
            return;
        }
        if !self.by_id.contains_key(&h.producer_id) && self.by_id.len() >= PRODUCERS_MAX {
            // A scan, but only when a new producer arrives at a full table.
            if let Some(oldest) = self.by_id.iter().min_by_key(|(_, p)| p.last_write).map(|(&id, _)| id) {
                self.by_id.remove(&oldest);
            }
        }
        let p = self.by_id.entry(h.producer_id).or_insert_with(|| Producer {
            epoch: h.producer_epoch,
            recent: VecDeque::new(),
            last_write: now,
        });
        p.last_write = p.last_write.max(now);
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.recent.clear();
        }
        if p.recent.len() == RECENT_BATCHES {
            p.recent.pop_front();
        }
        p.recent.push_back(Written { first_seq: h.base_sequence, last_seq: last_seq(h), info });
    }

    /// Whether the batch at `base_offset` is the last one producer `id` wrote (compaction keeps
    /// it, so that the producer's sequence survives a restart).
    pub fn is_last_batch(&self, id: i64, base_offset: i64) -> bool {
        self.by_id.get(&id).and_then(|p| p.recent.back()).is_some_and(|w| w.info.base_offset == base_offset)
    }

    /// Forgets producers that wrote nothing for [`EXPIRATION`].
    pub fn expire(&mut self, now: SystemTime) {
        self.by_id.retain(|_, p| now.duration_since(p.last_write).map_or(true, |idle| idle < EXPIRATION));
    }

    /// The producers of `log`'s segments written within [`EXPIRATION`] of `now`.
    pub fn rebuild(log: &Partition, now: SystemTime) -> Result<Producers, EngineError> {
        let mut producers = Producers::default();
        let horizon = now.checked_sub(EXPIRATION).unwrap_or(SystemTime::UNIX_EPOCH);
        for segment in log.segments() {
            // The file's last write, not the records' timestamps: clients set those.
            let written = segment.created();
            if written < horizon {
                continue;
            }
            let mut cursor = HeaderCursor::new(segment, segment.written_len());
            let mut position = segment.start();
            while let Some(h) = cursor.header_at(position).map_err(crate::log::LogError::from)? {
                let info = AppendInfo { base_offset: h.base_offset, last_offset: h.last_offset() };
                producers.record(&h, info, written);
                position += h.total_len() as u64;
            }
        }
        Ok(producers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BatchBuilder, BatchOptions, Record};

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            ..BatchOptions::default()
        });
        for _ in 0..records {
            b.push(&Record { timestamp: 0, key: None, value: Some(b"v"), headers: &[] });
        }
        BatchHeader::parse(&b.finish()).unwrap()
    }

    fn at(base: i64, last: i64) -> AppendInfo {
        AppendInfo { base_offset: base, last_offset: last }
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_producer_silent_longest() {
        let mut p = Producers::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for id in 0..PRODUCERS_MAX as i64 + 10 {
            p.record(&header(id, 0, 0, 1), at(id, id), t0 + Duration::from_secs(id as u64));
        }
        assert_eq!(p.by_id.len(), PRODUCERS_MAX);
        assert!(!p.by_id.contains_key(&0) && !p.by_id.contains_key(&9), "the oldest went");
        assert!(matches!(p.check(&header(PRODUCERS_MAX as i64 + 9, 0, 0, 1)), Check::Duplicate(_)));
        // A forgotten producer is new again: any sequence is accepted (KIP-360).
        assert!(matches!(p.check(&header(3, 0, 17, 1)), Check::Append));
    }

    #[test]
    fn retries_are_duplicates_gaps_are_refused_and_epochs_fence() {
        let mut p = Producers::default();
        let first = header(7, 0, 0, 3);
        assert!(matches!(p.check(&first), Check::Append));
        p.record(&first, at(10, 12), SystemTime::now());
        assert!(
            matches!(p.check(&first), Check::Duplicate(i) if i == at(10, 12)),
            "a retry gets the first offsets"
        );
        let gap = header(7, 0, 4, 1);
        assert!(matches!(
            p.check(&gap),
            Check::Refuse(EngineError::OutOfOrderSequence { expected: 3, got: 4, .. })
        ));
        let next = header(7, 0, 3, 2);
        assert!(matches!(p.check(&next), Check::Append));
        p.record(&next, at(13, 14), SystemTime::now());
        assert!(
            matches!(p.check(&first), Check::Duplicate(i) if i == at(10, 12)),
            "still among the last five"
        );
        let old_epoch = header(7, -1, 5, 1);
        assert!(matches!(p.check(&old_epoch), Check::Refuse(EngineError::OutOfOrderSequence { .. })));
        let bumped = header(7, 1, 0, 1);
        assert!(matches!(p.check(&bumped), Check::Append));
        p.record(&bumped, at(15, 15), SystemTime::now());
        assert!(matches!(
            p.check(&next),
            Check::Refuse(EngineError::InvalidProducerEpoch { current: 1, got: 0, .. })
        ));
        assert!(
            matches!(p.check(&header(8, 0, 1, 1)), Check::Append),
            "a producer this partition does not know is accepted at any sequence (KIP-360)"
        );
        assert!(matches!(p.check(&header(-1, -1, -1, 1)), Check::Append), "plain producers are not tracked");
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut p = Producers::default();
        let mut seq = i32::MAX - 2;
        // Seed the producer as if it had reached the top of the sequence space.
        p.by_id.insert(1, Producer { epoch: 0, recent: VecDeque::new(), last_write: SystemTime::now() });
        p.by_id.get_mut(&1).unwrap().recent.push_back(Written {
            first_seq: 0,
            last_seq: seq - 1,
            info: at(0, 0),
        });
        let mut headers = Vec::new();
        for i in 0..6 {
            let h = header(1, 0, seq, 1);
            assert!(matches!(p.check(&h), Check::Append), "batch {i} at {seq}");
            p.record(&h, at(i + 1, i + 1), SystemTime::now());
            headers.push(h);
            seq = next_seq(seq);
        }
        assert_eq!(seq, 3, "wrapped past i32::MAX to 0");
        assert!(matches!(p.check(&headers[0]), Check::Refuse(_)), "the sixth batch back is forgotten");
        assert!(matches!(p.check(&headers[1]), Check::Duplicate(i) if i == at(2, 2)));
    }

    #[test]
    fn producers_silent_for_a_day_are_forgotten() {
        let mut p = Producers::default();
        let day_ago = SystemTime::now() - EXPIRATION - Duration::from_secs(1);
        p.record(&header(1, 0, 0, 1), at(0, 0), day_ago);
        p.record(&header(2, 0, 0, 1), at(1, 1), SystemTime::now());
        p.expire(SystemTime::now());
        assert!(!p.by_id.contains_key(&1));
        assert!(p.by_id.contains_key(&2));
        let resumed = header(1, 0, 17, 1);
        assert!(matches!(p.check(&resumed), Check::Append), "a forgotten producer resumes where it is");
        p.record(&resumed, at(2, 2), SystemTime::now());
        assert!(matches!(
            p.check(&header(1, 0, 19, 1)),
            Check::Refuse(EngineError::OutOfOrderSequence { expected: 18, .. })
        ));
    }
}
