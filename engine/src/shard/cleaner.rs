//! The shard's compaction: which partitions are due, and one bounded slice of a pass per turn.
//!
//! Every `check_interval` the shard asks each partition of a compacted topic whether it is due
//! (`Partition::wants_cleaning`) and queues those that are; a queue entry is visited once per
//! check however often it is due. One pass runs at a time per shard, and each turn of the loop
//! runs one slice of it (about `slice_bytes` read, stopping after `slice_time`) after the turn's
//! group commit and answers, so appends and fetches wait behind at most one slice; while
//! requests keep coming, slices take at most `busy_share_percent` of the shard's time, and idle
//! turns run them back to back (see `docs/compaction.md`).

use std::collections::VecDeque;
use std::time::Instant;

use super::request::PartitionId;
use super::request::{answer, Reply};
use super::Shard;
pub use crate::api::CompactionSetup;
use crate::api::EngineError;
use crate::log::{CleanOutcome, CleanPass, CleanStep};

/// The pass in progress and the partitions waiting for one.
#[derive(Debug, Default)]
pub(super) struct Cleaner {
    /// The pass in progress, and whether it is forced (only a forced pass answers the callers
    /// of `Engine::compact`: a pass that was merely due may not reach the active segment).
    pub running: Option<(PartitionId, CleanPass, bool)>,
    /// Partitions due, and whether the pass is forced.
    pub queue: VecDeque<(PartitionId, bool)>,
    /// Callers waiting for a forced pass over a partition, and whether they wait for the one
    /// after the pass running now (they asked while it ran: it may have rolled before their
    /// tombstone).
    pub waiters: Vec<(PartitionId, Reply<CleanOutcome>, bool)>,
    /// A turn that handled requests runs a slice only from this time on (see
    /// `CompactionSetup::busy_share_percent`).
    pub next_busy_slice: Option<Instant>,
}

impl Shard {
    /// Queues the partitions of compacted topics that are due.
    pub(super) fn queue_compactions(&mut self) {
        let now = self.setup.clock.now();
        for (id, slot) in self.slots.iter() {
            let queued = self.cleaner.queue.iter().any(|(q, _)| q == id)
                || self.cleaner.running.as_ref().is_some_and(|(r, _, _)| r == id);
            if !queued && slot.log.wants_cleaning(now) {
                self.cleaner.queue.push_back((id.clone(), false));
            }
        }
    }

    /// Whether compaction has work for the next turn.
    pub(super) fn compaction_pending(&self) -> bool {
        self.cleaner.running.is_some() || !self.cleaner.queue.is_empty()
    }

    /// Whether this turn may run a slice: always when it handled nothing, else once the
    /// previous slice's share of the shard's time has passed.
    pub(super) fn compaction_may_run(&self, idle_turn: bool, now: Instant) -> bool {
        idle_turn || self.cleaner.next_busy_slice.is_none_or(|t| now >= t)
    }

    /// Runs one slice of the pass in progress, starting the next queued one if none is.
    pub(super) fn compaction_slice(&mut self) {
        if self.cleaner.running.is_none() {
            let Some((id, forced)) = self.cleaner.queue.pop_front() else { return };
            let Some(slot) = self.slots.get_mut(&id.topic, id.partition) else {
                return self.answer_forced(forced, &id, Err("the partition is gone".into()));
            };
            let now = self.setup.clock.now();
            match slot.log.start_clean(&mut *self.io, now, forced, self.setup.compaction.map_bytes) {
                Ok(Some(pass)) => self.cleaner.running = Some((id, pass, forced)),
                Ok(None) => return self.answer_forced(forced, &id, Ok(CleanOutcome::default())),
                Err(e) => {
                    tracing::warn!(dir = %slot.log.dir().display(), error = %e, "compaction did not start");
                    return self.answer_forced(forced, &id, Err(e.to_string()));
                }
            }
        }
        let Some((id, mut pass, forced)) = self.cleaner.running.take() else { return };
        let Some(slot) = self.slots.get_mut(&id.topic, id.partition) else { return };
        let setup = self.setup.compaction;
        let slice_started = Instant::now();
        let budget =
            crate::log::Slice { bytes: setup.slice_bytes, deadline: slice_started + setup.slice_time };
        let result = slot.clean_step(&mut pass, &mut *self.io, budget);
        // While requests flow, compaction takes at most its share of the shard's time.
        let took = slice_started.elapsed();
        let share = f64::from(setup.busy_share_percent.clamp(1, 100)) / 100.0;
        self.cleaner.next_busy_slice = Some(Instant::now() + took.mul_f64((1.0 - share) / share));
        match result {
            Ok(CleanStep::More) => self.cleaner.running = Some((id, pass, forced)),
            Ok(CleanStep::Done(outcome)) => {
                self.stats.compactions += 1;
                self.stats.compacted_bytes += outcome.bytes_before;
                self.stats.compaction_reclaimed_bytes +=
                    outcome.bytes_before.saturating_sub(outcome.bytes_after);
                self.answer_forced(forced, &id, Ok(outcome));
            }
            Ok(CleanStep::Abandoned(why)) => {
                tracing::warn!(dir = %slot.log.dir().display(), "compaction pass abandoned: {why}");
                self.answer_forced(forced, &id, Err(why));
            }
            Err(e) => {
                tracing::error!(dir = %slot.log.dir().display(), error = %e, "compaction failed");
                // A failure after the commit point failed the partition: its waiters learn it.
                self.slots.mark(&id.topic, id.partition);
                // The forced pass still queued (if this one was not it) will meet the same.
                self.answer_forced(forced, &id, Err(e.to_string()));
            }
        }
        self.stats.compaction_slices += 1;
    }

    /// Answers the callers of `Engine::compact` for `id` if the pass that ended was forced.
    fn answer_forced(&mut self, forced: bool, id: &PartitionId, result: Result<CleanOutcome, String>) {
        if forced {
            self.answer_compaction(id, result);
        }
    }

    /// Answers the callers waiting for a pass over `id`.
    fn answer_compaction(&mut self, id: &PartitionId, result: Result<CleanOutcome, String>) {
        let (mine, mut others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.cleaner.waiters).into_iter().partition(|(w, _, next)| w == id && !next);
        for (w, _, next) in &mut others {
            if w == id {
                *next = false;
            }
        }
        self.cleaner.waiters = others;
        for (_, reply, _) in mine {
            answer(reply, result.clone().map_err(EngineError::Compaction));
        }
    }

    /// Gives up the pass over `id` (the partition is closing), removing its uncommitted output.
    pub(super) fn abandon_compaction(&mut self, id: &PartitionId) {
        self.cleaner.queue.retain(|(q, _)| q != id);
        if self.cleaner.running.as_ref().is_some_and(|(r, _, _)| r == id) {
            let (_, mut pass, _) = self.cleaner.running.take().expect("checked");
            if let Some(slot) = self.slots.get_mut(&id.topic, id.partition) {
                slot.log.abandon_clean(&mut pass, &mut *self.io);
            }
        }
        self.answer_compaction(id, Err("the partition closed before its compaction finished".into()));
    }

    /// Queues a forced pass over `id` (an erasure), ahead of the ones that are merely due, and
    /// answers `reply` when it is done.
    pub(super) fn force_compaction(&mut self, id: PartitionId, reply: Reply<CleanOutcome>) {
        let forced_running = self.cleaner.running.as_ref().is_some_and(|(r, _, forced)| *r == id && *forced);
        self.cleaner.queue.retain(|(q, _)| *q != id);
        self.cleaner.queue.push_front((id.clone(), true));
        self.cleaner.waiters.push((id, reply, forced_running));
    }
}
