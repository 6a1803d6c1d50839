//! A shard: one pinned thread that owns a set of partitions, their I/O ring and their waiters.
//!
//! Model: everything a shard owns is touched by its thread only. Other threads reach it through
//! its [`mailbox`]. Each turn of the loop drains every pending request, stages the appends, makes
//! one group commit over every partition that needs one, answers what the commit made visible,
//! wakes the long-poll fetches whose data arrived, and sleeps on the mailbox's eventfd until the
//! next request or timer (fetch deadlines, `interval` syncs, retention).
//!
//! Guarantees: a produce is answered only once its partition's durability holds for it (or with
//! an error); a fetch is answered as soon as `min_bytes` are visible or at its deadline; no
//! request waits for a timer it does not need, and no loop polls while idle.

mod cleaner;
pub use cleaner::CompactionSetup;
pub mod mailbox;
pub(crate) mod offsets;
pub(crate) mod overflow;
mod producers;
pub(crate) mod request;
pub use request::LocalTask;
pub(crate) mod slot;
mod slots;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbox::{MailboxReceiver, MailboxSender, SendError};
use request::{answer, PartitionId, Request};
use slot::Slot;

use crate::api::{shard_of, EngineError, OffsetSpec, ProduceAck, ShardStats};
use crate::io::Io;
use crate::log::{commit, Partition, ShardDisk};

/// Requests handled per turn at most, so acknowledgements are not delayed behind a flood.
const REQUESTS_PER_TURN: usize = 4096;

/// Everything a shard needs from the engine to start.
pub(crate) struct ShardSetup {
    pub id: usize,
    pub data_dir: PathBuf,
    pub rx: MailboxReceiver<Request>,
    /// Every shard's mailbox, this one's included, indexed by shard id.
    pub peers: Vec<MailboxSender<Request>>,
    pub retention_check_interval: Duration,
    pub offsets_topic: Arc<str>,
    /// Upper bound on the bytes of produce requests parked by `Block` backpressure.
    pub parked_bytes_max: u64,
    /// Upper bound on long-poll fetches waiting in this shard.
    pub waiters_max: usize,
    pub reserve: crate::log::ReservePolicy,
    /// Committed offsets of inactive consumers expire this long after their last commit.
    pub offsets_retention: Option<Duration>,
    /// The wall clock.
    pub clock: crate::api::Clock,
    /// Sealed-segment files this shard keeps open at most (see `segment::files`).
    pub sealed_files_max: usize,
    /// How the loop waits for work when a turn found none.
    pub idle: crate::api::IdleStrategy,
    /// How compacted topics are compacted.
    pub compaction: CompactionSetup,
    /// Where archiving topics move old segments.
    pub archive_dir: Option<PathBuf>,
}

pub(crate) struct Shard {
    setup: ShardSetup,
    io: Box<dyn Io>,
    slots: slots::Slots,
    /// Committed offsets of the offsets-topic partitions this shard owns:
    /// (consumer, topic, partition) → offset.
    /// (offset, the offsets partition holding it) per key.
    committed: HashMap<offsets::OffsetKey, (offsets::CommitValue, u32)>,
    /// Every consumer with a key in `committed`: how many, and when it was last reported
    /// active (a member of a live group; its offsets do not expire meanwhile).
    consumers: HashMap<Arc<str>, offsets::ConsumerEntry>,
    /// Consumer positions to tell other shards, merged per (shard, partition, consumer) so the
    /// outbox stays as small as the set of positions, however often consumers commit.
    outbox: HashMap<(usize, PartitionId, Arc<str>), i64>,
    /// Barrier requests waiting for the outbox to empty.
    barriers: Vec<request::Reply<()>>,
    /// Long-poll fetches waiting (those whose callers went away count until their deadline).
    waiting_fetches: usize,
    /// The earliest long-poll deadline of each slot with waiters (`Slot::deadline_queued`),
    /// earliest first: the slot is marked busy when it passes (a slot with waiters is not busy
    /// otherwise; data arriving marks it).
    fetch_deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, PartitionId)>>,
    next_retention: Instant,
    /// What the shard's segments share (reservation budget, open sealed files), and when idle
    /// reservations are next given back.
    disk: Arc<ShardDisk>,
    next_reserve_check: Instant,
    parked_bytes: u64,
    stats: ShardStats,
    stopping: Option<request::Reply<()>>,
    /// Whether tasks were spawned on this shard's event loop: then the loop yields to them
    /// between busy turns.
    has_tasks: bool,
    /// Whether requests of this thread's tasks wait for full mailboxes (see `overflow`).
    overflow_waiting: bool,
    /// Compaction: the pass in progress, the partitions due, the next check, and whether the
    /// shard owns a compacted partition (only then does the check wake it).
    cleaner: cleaner::Cleaner,
    next_compaction_check: Instant,
    owns_compacted: bool,
    /// Group commits made by the last compaction check: an idle shard's next check waits for a
    /// write, unless a partition can become due by time alone.
    commits_at_check: u64,
    compaction_timer: bool,
}

/// The mailbox's eventfd, borrowed for polling (the mailbox owns and closes it).
struct WakeFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl Shard {
    pub fn new(setup: ShardSetup, io: Box<dyn Io>) -> Shard {
        let next_retention = Instant::now() + setup.retention_check_interval;
        let stats = ShardStats { shard: setup.id, ..ShardStats::default() };
        let disk = ShardDisk::with_archive(setup.reserve, setup.sealed_files_max, setup.archive_dir.clone());
        let next_reserve_check = Instant::now() + setup.reserve.idle / 2;
        Shard {
            disk,
            next_reserve_check,
            setup,
            io,
            slots: slots::Slots::default(),
            committed: HashMap::new(),
            consumers: HashMap::new(),
            outbox: HashMap::new(),
            barriers: Vec::new(),
            waiting_fetches: 0,
            fetch_deadlines: std::collections::BinaryHeap::new(),
            next_retention,
            parked_bytes: 0,
            stats,
            stopping: None,
            has_tasks: false,
            overflow_waiting: false,
            cleaner: cleaner::Cleaner::default(),
            next_compaction_check: Instant::now(),
            owns_compacted: false,
            commits_at_check: u64::MAX,
            compaction_timer: false,
        }
    }

    /// Runs until a `Shutdown` request (which the engine sends when its last handle is dropped),
    /// then flushes. The loop is the main task of a single-threaded tokio runtime, so that tasks
    /// spawned on the shard (network connections) share its thread; the runtime only polls
    /// sockets and timers, all storage I/O stays on the shard's own ring.
    pub fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(shard = self.setup.id, error = %e, "cannot start the shard's event loop");
                self.setup.rx.close();
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, self.turns());
        // Dropping the set drops the tasks spawned on this shard (their sockets close).
        drop(local);
    }

    async fn turns(mut self) {
        overflow::init(self.setup.peers[self.setup.id].clone());
        let fd = WakeFd(self.setup.rx.wake_fd());
        // SAFETY: the eventfd belongs to the mailbox, which `self` owns for the whole life of
        // the registration (dropped at the end of this function), so it stays open and the same.
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        let wake = match registered {
            Ok(fd) => fd,
            Err(e) => {
                let e = e.into_parts().1;
                tracing::error!(shard = self.setup.id, error = %e, "cannot poll the shard's mailbox");
                self.setup.rx.close();
                return;
            }
        };
        loop {
            let now = Instant::now();
            let mut handled = 0;
            while handled < REQUESTS_PER_TURN {
                let Some(request) = self.setup.rx.try_recv() else { break };
                self.handle(request, now);
                // Reads open sealed files; many can be handled in one turn.
                if self.disk.files.over() {
                    self.close_idle_files();
                }
                handled += 1;
            }
            let committed = self.commit(now);
            let answered_at = Instant::now();
            while let Some(std::cmp::Reverse((deadline, _))) = self.fetch_deadlines.peek() {
                if *deadline > answered_at {
                    break;
                }
                let std::cmp::Reverse((deadline, id)) = self.fetch_deadlines.pop().expect("peeked");
                if let Some(slot) = self.slots.get_mut(&id.topic, id.partition) {
                    if slot.deadline_queued == Some(deadline) {
                        slot.deadline_queued = None;
                    }
                }
                self.slots.mark(&id.topic, id.partition);
            }
            self.answer_waiters(answered_at);
            if now >= self.next_retention {
                self.enforce_retention();
                self.next_retention = now + self.setup.retention_check_interval;
            }
            if now >= self.next_compaction_check {
                self.owns_compacted = self.slots.iter().any(|(_, s)| s.log.config().cleanup.compact);
                self.compaction_timer = self.slots.iter().any(|(_, s)| s.log.cleaning_has_deadline());
                if self.owns_compacted {
                    self.queue_compactions();
                }
                self.commits_at_check = self.stats.commits;
                self.next_compaction_check = now + self.setup.compaction.check_interval;
            }
            let compacting = self.compaction_pending();
            if compacting && self.compaction_may_run(handled == 0 && !committed, Instant::now()) {
                self.compaction_slice();
            }
            if self.disk.files.over() {
                self.close_idle_files();
            }
            if now >= self.next_reserve_check {
                self.release_idle_reservations(now);
                self.next_reserve_check = now + self.setup.reserve.idle / 2;
            }
            self.flush_outbox();
            self.overflow_waiting = overflow::flush();
            if self.outbox.is_empty() {
                for reply in self.barriers.drain(..) {
                    answer(reply, Ok(()));
                }
            }
            self.stats.turns += 1;
            if let Some(reply) = self.stopping.take() {
                overflow::clear();
                let flushed = self.close_all();
                // Anything still queued, or sent from now on, is answered "shutting down".
                self.setup.rx.close();
                answer(reply, flushed);
                return;
            }
            self.slots.keep_busy(Slot::has_work);
            if handled == 0 && !committed && !compacting {
                self.sleep(&wake).await;
            } else if self.has_tasks {
                // Let the connections on this shard run between turns.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Sleeps until a message arrives (the eventfd turns readable) or the next timer is due,
    /// while the shard's other tasks run.
    async fn sleep(&mut self, wake: &tokio::io::unix::AsyncFd<WakeFd>) {
        // Spin and yield first where configured: a request arriving meanwhile costs nobody a
        // wake-up (senders only signal a shard that announced its sleep). Not with tasks on
        // this loop: they need the event loop to poll their sockets.
        if !self.has_tasks {
            let deadline = self.next_deadline();
            let rx = &self.setup.rx;
            if self.setup.idle.back_off(|| !rx.is_empty() || deadline.is_some_and(|d| Instant::now() >= d)) {
                return;
            }
        }
        if !self.setup.rx.prepare_sleep() {
            return;
        }
        self.stats.sleeps += 1;
        let timeout = self.next_deadline().map(|d| {
            // Round up to a whole millisecond, as the timer does, so a deadline 0.3 ms away
            // does not turn into a busy loop.
            let left = d.saturating_duration_since(Instant::now());
            Duration::from_micros(left.as_micros().div_ceil(1000) as u64 * 1000)
        });
        let readable = async {
            if let Ok(mut guard) = wake.readable().await {
                guard.clear_ready();
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, readable).await;
            }
            None => readable.await,
        }
        self.setup.rx.woken();
    }

    fn slot(&mut self, id: &PartitionId) -> Result<&mut Slot, EngineError> {
        self.slots.get_mut(&id.topic, id.partition).ok_or_else(|| unknown_partition(id))
    }

    fn partition_dir(&self, id: &PartitionId) -> PathBuf {
        self.setup.data_dir.join(format!("{}-{}", id.topic, id.partition))
    }

    fn handle(&mut self, request: Request, now: Instant) {
        // What the request names needs this turn (see `slots`); requests that can make work
        // for partitions they do not name mark them all.
        match &request {
            Request::Open { id, .. }
            | Request::Configure { id, .. }
            | Request::Produce { id, .. }
            | Request::Fetch { id, .. }
            | Request::Progress { id, .. }
            | Request::AcceptDamage { id, .. }
            | Request::Compact { id, .. }
            | Request::DeleteRecords { id, .. } => self.slots.mark(&id.topic, id.partition),
            Request::Commit { offsets_partition, .. } => {
                self.slots.mark(&self.setup.offsets_topic, *offsets_partition)
            }
            Request::Close { .. } | Request::Forget { .. } | Request::Shutdown { .. } => {
                self.slots.mark_all()
            }
            _ => {}
        }
        match request {
            Request::Open { id, config, reply } => {
                let result = self.open(id, *config);
                answer(reply, result);
            }
            Request::Close { id, delete, reply } => {
                let result = self.close(&id, delete);
                answer(reply, result);
            }
            Request::Configure { id, config, reply } => {
                self.owns_compacted |= config.cleanup.compact;
                let result =
                    self.slot(&id).and_then(|s| s.log.set_config(*config).map_err(EngineError::from));
                answer(reply, result);
            }
            Request::Produce { id, batch, backpressure, reply } => {
                self.produce(id, batch, backpressure, reply)
            }
            Request::Fetch { id, offset, max_bytes, min_bytes, deadline, reply } => {
                // A full waiting room refuses long polls, not fetches that can be answered now:
                // with no room the deadline is now.
                if self.waiting_fetches >= self.setup.waiters_max {
                    // Long polls whose callers went away still count until visited: drop them
                    // before refusing (one pass over the partitions, only at the limit).
                    self.drop_closed_waiters();
                }
                let room = self.waiting_fetches < self.setup.waiters_max;
                let heap = &mut self.fetch_deadlines;
                match self.slots.get_mut(&id.topic, id.partition) {
                    Some(slot) => {
                        let deadline = if room { deadline } else { now };
                        if slot.fetch(offset, max_bytes, min_bytes, deadline, now, reply) {
                            self.waiting_fetches += 1;
                            queue_deadline(heap, &id, slot);
                        }
                    }
                    None => answer(reply, Err(unknown_partition(&id))),
                }
            }
            Request::ListOffset { id, spec, reply } => {
                let result = self.slot(&id).and_then(|s| list_offset(&s.log, spec));
                answer(reply, result);
            }
            Request::Commit { offsets_partition, consumer, id, value, reply } => {
                self.commit_offset(offsets_partition, consumer, id, value, reply)
            }
            Request::Committed { consumer, id, reply } => {
                let value = self.committed.get(&(consumer, id.topic, id.partition)).map(|(v, _)| v.clone());
                answer(reply, Ok(value));
            }
            Request::CommittedAll { consumer, reply } => {
                let mut all: Vec<(Arc<str>, u32, i64)> = self
                    .committed
                    .iter()
                    .filter(|((c, _, _), _)| *c == consumer)
                    .map(|((_, topic, partition), (value, _))| (Arc::clone(topic), *partition, value.offset))
                    .collect();
                all.sort();
                answer(reply, Ok(all));
            }
            Request::Progress { id, consumer, offset } => {
                let io = &mut *self.io;
                if let Some(slot) = self.slots.get_mut(&id.topic, id.partition) {
                    slot.consumers.insert(consumer, offset);
                    self.parked_bytes -= slot.release_parked(io);
                }
            }
            Request::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.partitions = self.slots.len();
                stats.io = self.io.stats();
                stats.parked_bytes = self.parked_bytes;
                stats.reserved_bytes = self.disk.reserve.reserved_bytes();
                stats.sealed_files_open = self.disk.files.open();
                answer(reply, Ok(stats));
            }
            Request::Barrier { reply } => self.barriers.push(reply),
            Request::Forget { what, reply } => self.forget(&what, reply),
            Request::Damage { id, reply } => {
                let result = self.slot(&id).map(|s| s.log.damage_report());
                answer(reply, result);
            }
            Request::DeleteRecords { id, offset, reply } => {
                let io = &mut *self.io;
                let result = match self.slots.get_mut(&id.topic, id.partition) {
                    Some(slot) => slot
                        .log
                        .delete_records(io, offset)
                        .map(|o| o.log_start_offset)
                        .map_err(EngineError::from),
                    None => Err(unknown_partition(&id)),
                };
                answer(reply, result);
            }
            Request::Compact { id, reply } => match self.slot(&id) {
                Ok(slot) if slot.log.config().cleanup.compact => self.force_compaction(id, reply),
                Ok(_) => answer(reply, Err(EngineError::NotCompacted(id.topic.to_string()))),
                Err(e) => answer(reply, Err(e)),
            },
            Request::AcceptDamage { id, reply } => {
                let io = &mut *self.io;
                let result = match self.slots.get_mut(&id.topic, id.partition) {
                    Some(slot) => {
                        let ranges = slot.log.damage().len();
                        slot.log.accept_damage(io).map(|()| ranges).map_err(EngineError::from)
                    }
                    None => Err(unknown_partition(&id)),
                };
                answer(reply, result);
            }
            Request::ConsumersActive { consumers, at_ms } => self.consumers_active(&consumers, at_ms),
            Request::Shutdown { reply } => self.stopping = Some(reply),
            Request::Spawn { task } => {
                self.has_tasks = true;
                tokio::task::spawn_local(task());
            }
        }
    }

    fn open(&mut self, id: PartitionId, config: crate::log::LogConfig) -> Result<(), EngineError> {
        if self.slot(&id).is_ok() {
            return Ok(());
        }
        let dir = self.partition_dir(&id);
        let log = Partition::open_with(&dir, config, &mut *self.io, Arc::clone(&self.disk))?;
        let slot = Slot::new(log, self.setup.clock.clone())?;
        if id.topic == self.setup.offsets_topic {
            // Rebuild the committed offsets this partition holds, and tell the data partitions'
            // shards where their consumers stand.
            // Group membership does not survive a restart: every consumer counts as active
            // at open, so a live group has a whole retention period to rejoin.
            let now_ms = self.setup.clock.now_ms();
            for (key, value) in slot.replay_offsets()? {
                let (consumer, topic, partition) = key.clone();
                let target = PartitionId { topic, partition };
                let shard = shard_of(&target.topic, target.partition, self.setup.peers.len());
                self.outbox.insert((shard, target, consumer), value.offset);
                self.remember(key, value, id.partition, Some(now_ms));
            }
        }
        self.owns_compacted |= slot.log.config().cleanup.compact;
        self.slots.insert(id, slot);
        Ok(())
    }

    fn close(&mut self, id: &PartitionId, delete: bool) -> Result<(), EngineError> {
        self.abandon_compaction(id);
        let Some(mut slot) = self.slots.remove(&id.topic, id.partition) else { return Ok(()) };
        self.waiting_fetches = self.waiting_fetches.saturating_sub(slot.waiter_count());
        self.parked_bytes -= slot.fail_everything(|| EngineError::UnknownTopic(id.topic.to_string()));
        if delete {
            let archive = slot.log.archive_dir();
            drop(slot);
            let dir = self.partition_dir(id);
            self.io.remove_dir_all(&dir).map_err(|e| EngineError::Io { path: dir, source: e })?;
            // A deleted topic's archived segments go with it.
            if let Some(archive) = archive.filter(|a| a.exists()) {
                self.io.remove_dir_all(&archive).map_err(|e| EngineError::Io { path: archive, source: e })?;
            }
        } else {
            slot.log.flush(&mut *self.io)?;
            slot.log.release_reservation(&mut *self.io, Instant::now(), true);
        }
        Ok(())
    }

    /// Closes the least recently used sealed-segment files, down to seven eighths of the
    /// shard's maximum (reads open them again). Costs one pass over the open files; it runs
    /// only when the maximum is passed, and then frees an eighth of it.
    fn close_idle_files(&mut self) {
        let target = self.disk.files.max() - self.disk.files.max() / 8;
        let mut ticks = Vec::with_capacity(self.disk.files.open());
        for (_, slot) in self.slots.iter() {
            slot.log.open_file_ticks(&mut ticks);
        }
        if ticks.len() <= target {
            return;
        }
        let excess = ticks.len() - target;
        let (_, &mut threshold, _) = ticks.select_nth_unstable(excess - 1);
        let mut closed = 0;
        for (_, slot) in self.slots.iter_mut() {
            closed += slot.log.close_files_used_by(threshold);
        }
        tracing::debug!(
            shard = self.setup.id,
            closed,
            open = self.disk.files.open(),
            "closed idle segment files"
        );
    }

    /// Gives back the reservations of active segments that took no write for a while.
    fn release_idle_reservations(&mut self, now: Instant) {
        if self.disk.reserve.reserved_bytes() == 0 {
            return;
        }
        for (_, slot) in self.slots.iter_mut() {
            if slot.log.failure().is_none() {
                slot.log.release_reservation(&mut *self.io, now, false);
            }
        }
    }

    fn produce(
        &mut self,
        id: PartitionId,
        batch: bytes::Bytes,
        backpressure: crate::api::Backpressure,
        reply: request::Reply<ProduceAck>,
    ) {
        let parked_max = self.setup.parked_bytes_max;
        let parked_now = self.parked_bytes;
        let io = &mut *self.io;
        let slot = match self.slots.get_mut(&id.topic, id.partition) {
            Some(s) => s,
            None => return answer(reply, Err(unknown_partition(&id))),
        };
        match slot.admit(&backpressure) {
            slot::Admission::Append => slot.append(io, id.partition, batch, reply),
            slot::Admission::Drop => {
                self.stats.dropped += 1;
                answer(
                    reply,
                    Err(EngineError::Dropped { consumer: backpressure.consumer().unwrap_or("").into() }),
                );
            }
            slot::Admission::Park if parked_now + batch.len() as u64 > parked_max => {
                answer(reply, Err(EngineError::TooManyBlocked { parked_bytes_max: parked_max }));
            }
            slot::Admission::Park => {
                self.parked_bytes += batch.len() as u64;
                self.stats.parked += 1;
                slot.park(id.partition, batch, backpressure, reply);
            }
        }
    }

    /// One group commit over every partition with staged or unsynced data; then answers what it
    /// made visible. Returns whether there was anything to commit.
    fn commit(&mut self, now: Instant) -> bool {
        let mut parts: Vec<&mut Partition> = self
            .slots
            .busy_mut()
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.needs_commit(now))
            .map(|s| &mut s.log)
            .collect();
        let committed = !parts.is_empty();
        let staged: u64 = parts.iter().map(|p| p.staged_bytes()).sum();
        self.stats.staged_bytes_peak = self.stats.staged_bytes_peak.max(staged);
        if committed {
            let before = self.io.stats().fsyncs;
            let started = Instant::now();
            // Errors fail the partitions involved; each slot below answers from its own state.
            let _ = commit(&mut *self.io, &mut parts, now);
            let fsyncs = self.io.stats().fsyncs - before;
            if fsyncs > 0 {
                self.stats.sync_latency.observe(started.elapsed());
            }
            self.stats.commits += 1;
            self.stats.commit_fsyncs += fsyncs;
        } else {
            drop(parts);
        }
        // Settle even without a commit: an append may have failed its partition (a roll that
        // hit a full disk), and what waited on it must hear so now.
        for ((consumer, topic, partition), value, offsets_partition) in self.settle_acks() {
            // A commit became durable: remember it and tell the data partition's shard.
            let target = PartitionId { topic: Arc::clone(&topic), partition };
            let shard = shard_of(&topic, partition, self.setup.peers.len());
            self.outbox.insert((shard, target, Arc::clone(&consumer)), value.offset);
            self.remember((consumer, topic, partition), value, offsets_partition, None);
        }
        committed
    }

    /// Answers every acknowledgement the high watermarks now cover; returns the offset commits
    /// that became durable.
    /// Answers every acknowledgement the high watermarks now cover; returns the offset commits
    /// that became durable, with the offsets partition holding each.
    fn settle_acks(&mut self) -> Vec<(offsets::OffsetKey, offsets::CommitValue, u32)> {
        let mut durable = Vec::new();
        let mut commits = Vec::new();
        let mut dropped = 0;
        for (id, slot) in self.slots.busy_mut() {
            let partition = id.partition;
            // A failed partition's settle answers its long polls too.
            let before = slot.waiter_count();
            self.stats.produced += slot.settle(&mut commits);
            dropped += before - slot.waiter_count();
            self.parked_bytes -= slot.take_released_bytes();
            durable.extend(commits.drain(..).map(|(key, offset)| (key, offset, partition)));
        }
        self.waiting_fetches = self.waiting_fetches.saturating_sub(dropped);
        durable
    }

    /// Answers the long polls of the busy slots that have their data or passed their deadline.
    fn answer_waiters(&mut self, now: Instant) {
        let mut answered = 0;
        let heap = &mut self.fetch_deadlines;
        for (id, slot) in self.slots.busy_mut() {
            let before = slot.waiter_count();
            slot.answer_waiters(now);
            answered += before - slot.waiter_count();
            // The ones left need their deadline in the heap.
            queue_deadline(heap, id, slot);
        }
        self.waiting_fetches = self.waiting_fetches.saturating_sub(answered);
    }

    /// Drops every long poll whose caller went away, and counts the rest again.
    fn drop_closed_waiters(&mut self) {
        let mut waiting = 0;
        for (_, slot) in self.slots.iter_mut() {
            slot.drop_closed_waiters();
            waiting += slot.waiter_count();
        }
        self.waiting_fetches = waiting;
    }

    fn enforce_retention(&mut self) {
        let now = self.setup.clock.now();
        if let Some(retention) = self.setup.offsets_retention {
            self.expire_offsets(retention, self.setup.clock.now_ms());
        }
        // Expiry appends to offsets partitions no request named.
        self.slots.mark_all();
        for (_, slot) in self.slots.iter_mut() {
            slot.expire_producers(now);
            // Compact-only topics (the offsets topic among them) delete nothing here; their
            // active segments still roll by age, so that compaction reaches them.
            let kept = slot.log.enforce_retention(&mut *self.io, now).map(drop);
            if let Err(e) = kept {
                tracing::error!(dir = %slot.log.dir().display(), error = %e, "retention failed");
            }
        }
    }

    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        for ((shard, id, consumer), offset) in std::mem::take(&mut self.outbox) {
            match self.setup.peers[shard].try_send(Request::Progress { id, consumer, offset }) {
                Ok(()) | Err(SendError::Closed(_)) => {}
                Err(SendError::Full(Request::Progress { id, consumer, offset })) => {
                    // Retried next turn; a newer position for the same key replaces it.
                    self.outbox.entry((shard, id, consumer)).or_insert(offset);
                }
                Err(SendError::Full(_)) => unreachable!("only Progress goes through the outbox"),
            }
        }
    }

    /// The earliest timer: a fetch deadline, an `interval` sync, retention, or a retry of the
    /// outbox (only while another shard's mailbox is full).
    fn next_deadline(&self) -> Option<Instant> {
        let mut next = Some(self.next_retention);
        if self.disk.reserve.reserved_bytes() > 0 {
            // Only while something is reserved: an idle engine holding nothing never wakes.
            next = Some(self.next_retention.min(self.next_reserve_check));
        }
        let mut earliest = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        earliest(self.fetch_deadlines.peek().map(|std::cmp::Reverse((d, _))| *d));
        // Only while there can be something new to compact: an idle engine does not wake.
        if self.owns_compacted && (self.compaction_timer || self.stats.commits != self.commits_at_check) {
            earliest(Some(self.next_compaction_check));
        }
        for slot in self.slots.busy() {
            earliest(slot.next_deadline());
        }
        if !self.outbox.is_empty() || self.overflow_waiting {
            earliest(Some(Instant::now() + Duration::from_millis(1)));
        }
        next
    }

    /// Flushes every partition and answers everything still waiting.
    /// Returns the first flush error: data acknowledged under `interval` or `never` may then
    /// not be durable, and the caller of `shutdown` must hear of it.
    fn close_all(&mut self) -> Result<(), EngineError> {
        if let Some((id, _, _)) = &self.cleaner.running {
            let id = id.clone();
            self.abandon_compaction(&id);
        }
        let io = &mut *self.io;
        let mut first_error = None;
        for (_, slot) in self.slots.iter_mut() {
            if let Err(e) = slot.log.flush(io) {
                tracing::error!(dir = %slot.log.dir().display(), error = %e, "flush at shutdown failed");
                first_error.get_or_insert(EngineError::from(e));
            } else {
                // A stopped engine holds no disk space it has not written.
                slot.log.release_reservation(io, Instant::now(), true);
            }
        }
        let mut durable = Vec::new();
        for (_, slot) in self.slots.iter_mut() {
            slot.settle(&mut durable);
            slot.fail_everything(|| EngineError::ShuttingDown);
        }
        self.flush_outbox();
        first_error.map_or(Ok(()), Err)
    }
}

fn unknown_partition(id: &PartitionId) -> EngineError {
    EngineError::UnknownPartition { topic: id.topic.to_string(), partition: id.partition }
}

/// Puts `slot`'s earliest long-poll deadline in the heap unless an entry as early is there: one
/// live entry per slot, so the heap stays as small as the set of partitions with waiters (an
/// entry made stale by an earlier one marks its slot once, harmlessly).
fn queue_deadline(
    heap: &mut std::collections::BinaryHeap<std::cmp::Reverse<(Instant, PartitionId)>>,
    id: &PartitionId,
    slot: &mut Slot,
) {
    if let Some(d) = slot.next_waiter_deadline() {
        if slot.deadline_queued.is_none_or(|q| d < q) {
            heap.push(std::cmp::Reverse((d, id.clone())));
            slot.deadline_queued = Some(d);
        }
    }
}

/// The offset a `ListOffsets` asks for, with its timestamp where there is one.
fn list_offset(log: &Partition, spec: OffsetSpec) -> Result<Option<(i64, i64)>, EngineError> {
    Ok(match spec {
        OffsetSpec::Earliest => Some((log.log_start_offset(), -1)),
        OffsetSpec::Latest => Some((log.high_watermark(), -1)),
        OffsetSpec::Timestamp(ts) => log.offset_for_timestamp(ts)?,
    })
}
