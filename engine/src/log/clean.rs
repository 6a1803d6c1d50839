//! Log compaction: keeping only the latest record of each key in a topic with
//! `cleanup.policy=compact`.
//!
//! Model (Kafka's log cleaner, on the shard thread that owns the partition, in bounded slices):
//! a pass covers the sealed segments below the *cleanable end* (the active segment's base, or
//! the first segment with a record younger than `min.compaction.lag.ms`). It first *maps* the
//! dirty part (the segments written since the last pass) to the latest offset of every key
//! (keys are hashed to 128 bits), then *copies* every segment below the end, in groups of
//! consecutive segments that fit one segment, into a new file that keeps, of each batch, only
//! the records that are still the latest of their key. Each [`Partition::clean_step`] reads at
//! most about `budget` bytes, so appends and fetches of the shard wait for at most one slice.
//!
//! What survives (Kafka's rules): a record whose key has no later record; a tombstone (null
//! value) until its delete horizon, which the first pass that keeps it sets to now plus
//! `delete.retention.ms` (KIP-534: stored in the batch); control batches; and the last batch of
//! each idempotent producer, empty if need be, so that its sequence survives a restart.
//! Records without a key cannot be compacted and are removed, as Kafka's cleaner does. Offsets
//! never change: a kept batch keeps its base offset and last offset delta, and the offsets of
//! removed batches are covered by empty fill batches, so the batches of a compacted segment
//! still tile its offsets and recovery checks them exactly as it checks any other segment.
//!
//! Crash safety: a group's output is written to `<base>.cleaned` and made durable; renaming it
//! to `<base>.swap` (then syncing the directory) is the commit point. After it the old
//! segments of the group are removed and the swap file is renamed to `<base>.log`. Recovery
//! deletes a `.cleaned` file (the old segments are intact) and completes a `.swap`: it removes
//! the segments the swap file covers and renames it (see `recovery`). An I/O error before the
//! commit point abandons the pass and leaves the log as it was; after it, it fails the
//! partition like any failed write, and the next open completes the swap.

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use twox_hash::XxHash3_128;

use super::{LogError, Partition};
use crate::io::{Io, IoError, Write};
use crate::record::{fill_batch, rewrite_batch, Batch, BatchHeader, RecordView, BATCH_HEADER_LEN};
use crate::segment::{self, ScanOutcome, Segment};

/// The key map: a key's 128-bit hash to its latest offset. The hash is already uniform, so
/// the table uses its bits as they are instead of hashing it again.
type KeyMap = HashMap<u128, i64, std::hash::BuildHasherDefault<KeyHasher>>;

/// A hasher for keys that are already hashes: folds a `u128` to 64 bits.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed here; anything else still gets a deterministic value.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// Bytes an entry of the key map costs (hash, offset and the table's own overhead).
pub const MAP_ENTRY_BYTES: usize = 40;

/// File name of a group's output while it is written.
pub fn cleaned_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.cleaned"))
}

/// File name of a group's output once it is committed.
pub fn swap_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.swap"))
}

/// Parses `<20 digits>.<ext>` into a base offset.
pub(super) fn parse_name(name: &str, ext: &str) -> Option<i64> {
    let digits = name.strip_suffix(ext)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a finished pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanOutcome {
    /// Bytes of log read (map and copy).
    pub bytes_read: u64,
    /// Bytes of the segments rewritten, before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    /// Keys in the map of the dirty part.
    pub keys: usize,
    /// Everything below this offset is now compacted.
    pub cleaned_to: i64,
}

/// How much one slice of a pass may do: read about `bytes` of log, and stop at the first batch
/// boundary after `deadline` (one batch at least).
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    pub bytes: u64,
    pub deadline: Instant,
}

/// The result of one slice of a pass.
#[derive(Debug)]
pub enum CleanStep {
    /// More slices to go.
    More,
    /// The pass is complete.
    Done(CleanOutcome),
    /// The pass was given up (the log changed under it, or writing its output failed before
    /// the commit point); the log is as it was.
    Abandoned(String),
}

/// A compaction pass in progress over one partition; see the module documentation.
#[derive(Debug)]
pub struct CleanPass {
    /// The pass covers the segments below this offset (a segment base).
    end: i64,
    seed: u64,
    map: KeyMap,
    entries_max: usize,
    now_ms: i64,
    delete_horizon_ms: i64,
    phase: Phase,
    /// The earliest delete horizon of a tombstone the pass kept.
    min_horizon: Option<i64>,
    outcome: CleanOutcome,
    buf: ReadBuf,
    scratch: Vec<u8>,
    /// The records block of a batch being rewritten.
    encode: Vec<u8>,
    out: Vec<u8>,
}

#[derive(Debug)]
enum Phase {
    /// Mapping the segment named by its file base, from a file position.
    Map {
        base: i64,
        position: u64,
    },
    Copy(Box<Copy>),
}

/// Consecutive segments rewritten into one.
#[derive(Debug, Clone)]
struct Group {
    /// File bases of the segments, in order, with each one's length when planned.
    segments: Vec<(i64, u64)>,
    /// The offset the group starts at (its first segment's base).
    base: i64,
    /// The offset after the group (the next segment's base).
    end: i64,
}

#[derive(Debug)]
struct Copy {
    groups: Vec<Group>,
    group: usize,
    /// Segment of the group and file position being copied.
    segment: usize,
    position: u64,
    output: Option<Output>,
    /// The current group's output is complete and durable: the next slice swaps it in.
    complete: bool,
}

#[derive(Debug)]
struct Output {
    file: File,
    path: PathBuf,
    /// Bytes written to the file so far.
    written: u64,
    /// The offset the next output batch must start at (fill batches cover the rest).
    expected: i64,
    /// The indexes of what was written, built as it is written (no scan at the swap).
    index: ScanOutcome,
}

impl Partition {
    /// Whether this partition should be compacted now: its topic compacts, it is healthy, and
    /// below its cleanable end the dirty share of bytes reaches `min.cleanable.dirty.ratio`, or
    /// a dirty record is older than `max.compaction.lag.ms`, or a kept tombstone's delete
    /// horizon has passed.
    pub fn wants_cleaning(&self, now: SystemTime) -> bool {
        if !self.config.cleanup.compact || self.check_writable().is_err() || !self.damage.is_empty() {
            return false;
        }
        let now_ms = millis(now);
        let c = &self.config.compaction;
        let active = self.active();
        // The active segment rolls for max lag (see `start_clean`): count it as due.
        if let Some(max) = c.max_lag {
            let oldest = first_timestamp(active);
            if !active.is_empty() && oldest.is_some_and(|t| t <= now_ms.saturating_sub(ms(max))) {
                return true;
            }
        }
        let end = self.cleanable_end(now_ms);
        let (mut clean, mut dirty) = (0u64, 0u64);
        let mut due = false;
        for seg in self.segments.iter().filter(|s| s.is_sealed() && s.base_offset() < end) {
            if seg.base_offset() >= self.cleaned_to {
                dirty += seg.len();
                if let Some(max) = c.max_lag {
                    due |= first_timestamp(seg).is_some_and(|t| t <= now_ms.saturating_sub(ms(max)));
                }
            } else {
                clean += seg.len();
            }
        }
        if self.next_horizon_ms.is_some_and(|h| h <= now_ms) && clean + dirty > 0 {
            return true;
        }
        if dirty == 0 {
            return false;
        }
        let ratio_ok =
            (dirty as u128) * 1_000_000 >= u128::from(c.min_dirty_ratio_ppm) * u128::from(clean + dirty);
        due || ratio_ok
    }

    /// Whether time alone (no new writes) can make this partition due: a kept tombstone's
    /// horizon, or a maximum compaction lag.
    pub fn cleaning_has_deadline(&self) -> bool {
        self.config.cleanup.compact
            && (self.next_horizon_ms.is_some() || self.config.compaction.max_lag.is_some())
    }

    /// The first offset a pass must not touch: the active segment's base, or the base of the
    /// first sealed segment holding a record younger than `min.compaction.lag.ms`.
    fn cleanable_end(&self, now_ms: i64) -> i64 {
        let lag = ms(self.config.compaction.min_lag);
        let mut end = self.active().base_offset();
        if lag > 0 {
            if let Some(young) =
                self.segments.iter().find(|s| s.is_sealed() && s.max_timestamp() > now_ms.saturating_sub(lag))
            {
                end = end.min(young.base_offset());
            }
        }
        end
    }

    /// Starts a compaction pass, or `None` if there is nothing to compact. `forced` (an erasure)
    /// rolls the active segment and ignores `min.compaction.lag.ms`, so that every record
    /// written so far is covered. The key map holds at most `map_bytes` (at least the keys of
    /// one segment).
    pub fn start_clean(
        &mut self,
        io: &mut dyn Io,
        now: SystemTime,
        forced: bool,
        map_bytes: usize,
    ) -> Result<Option<CleanPass>, LogError> {
        if !self.config.cleanup.compact {
            return Ok(None);
        }
        // A damaged partition is never compacted (its segments do not tile their offsets): an
        // erasure asked of it must hear so.
        if !self.damage.is_empty() {
            if forced {
                return Err(LogError::Damaged { dir: self.dir.clone(), damage: Arc::clone(&self.damage) });
            }
            return Ok(None);
        }
        self.check_writable()?;
        let now_ms = millis(now);
        let active = self.active();
        let max_lag_due =
            self.config.compaction.max_lag.is_some_and(|max| {
                first_timestamp(active).is_some_and(|t| t <= now_ms.saturating_sub(ms(max)))
            });
        if forced || max_lag_due {
            self.roll_now(io)?;
        }
        let end = if forced { self.active().base_offset() } else { self.cleanable_end(now_ms) };
        let Some(first) = self.segments.iter().find(|s| s.is_sealed() && s.base_offset() < end) else {
            return Ok(None);
        };
        let dirty_from =
            if forced { self.log_start_offset } else { self.cleaned_to.max(first.base_offset()) };
        // The first dirty segment: mapping starts at its file's start.
        let Some(start) =
            self.segments.iter().find(|s| s.next_offset() > dirty_from && s.base_offset() < end)
        else {
            // Nothing dirty, but a tombstone horizon passed: copy without new keys.
            return Ok(Some(self.new_pass(end, now_ms, map_bytes, Phase::Map { base: end, position: 0 })));
        };
        let phase = Phase::Map { base: start.file_base(), position: 0 };
        Ok(Some(self.new_pass(end, now_ms, map_bytes, phase)))
    }

    fn new_pass(&self, end: i64, now_ms: i64, map_bytes: usize, phase: Phase) -> CleanPass {
        let seed =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        CleanPass {
            end,
            seed,
            map: KeyMap::default(),
            entries_max: (map_bytes / MAP_ENTRY_BYTES).max(1),
            now_ms,
            delete_horizon_ms: now_ms.saturating_add(ms(self.config.compaction.delete_retention)),
            phase,
            min_horizon: None,
            outcome: CleanOutcome::default(),
            buf: ReadBuf::default(),
            scratch: Vec::new(),
            encode: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Runs one slice of `pass` (see [`Slice`]). `keep_producer(id, base)` says
    /// whether the batch at `base` is the last one idempotent producer `id` wrote here (it is
    /// then kept, empty if need be).
    pub fn clean_step(
        &mut self,
        pass: &mut CleanPass,
        io: &mut dyn Io,
        budget: Slice,
        keep_producer: &dyn Fn(i64, i64) -> bool,
    ) -> Result<CleanStep, LogError> {
        if let Err(e) = self.check_writable() {
            self.abandon_clean(pass, io);
            return Err(e);
        }
        match pass.phase {
            Phase::Map { base, position } => self.map_step(pass, base, position, budget),
            Phase::Copy(_) => self.copy_step(pass, io, budget, keep_producer),
        }
    }

    /// Removes what a pass wrote and has not committed.
    pub fn abandon_clean(&self, pass: &mut CleanPass, io: &mut dyn Io) {
        if let Phase::Copy(copy) = &mut pass.phase {
            if let Some(out) = copy.output.take() {
                drop(out.file);
                if let Err(e) = io.remove_file(&out.path) {
                    tracing::warn!(file = %out.path.display(), error = %e, "could not remove an abandoned compaction output");
                }
            }
        }
    }

    fn map_step(
        &mut self,
        pass: &mut CleanPass,
        base: i64,
        position: u64,
        budget: Slice,
    ) -> Result<CleanStep, LogError> {
        let Some(i) = self.segments.iter().position(|s| s.file_base() == base && s.base_offset() < pass.end)
        else {
            // Mapped up to the end (or the pass had nothing dirty to map)...
            if base == pass.end {
                return self.plan_copy(pass);
            }
            // ...or the segment being mapped is gone (retention, DeleteRecords): a map missing
            // the later dirty segments would keep values their tombstones deleted.
            return Ok(CleanStep::Abandoned("the log changed under the pass".into()));
        };
        let seg = &self.segments[i];
        let len = seg.written_len();
        let (data, fresh) = pass.buf.view(seg, position, budget.bytes)?;
        pass.outcome.bytes_read += fresh;
        let mut at = 0;
        while let Some(batch) = next_batch_until(data, &mut at, seg, position, budget.deadline)? {
            if batch.header().attributes.is_control() {
                continue;
            }
            let limit = super::validate::decompressed_bytes_max(segment::SEGMENT_BYTES_MAX);
            for record in batch.records_in(&mut pass.scratch, limit)? {
                let record = record?;
                if let Some(key) = record.key {
                    pass.map.insert(XxHash3_128::oneshot_with_seed(pass.seed, key), record.offset);
                }
            }
        }
        if at == 0 && position < len {
            return Err(stuck(seg, position));
        }
        let position = position + at as u64;
        let next = self.segments.get(i + 1).filter(|s| s.base_offset() < pass.end).map(|s| s.file_base());
        pass.phase = match next {
            _ if position < len => Phase::Map { base, position },
            // A full map stops the pass at this segment's end; the rest waits for the next one.
            Some(_) if pass.map.len() >= pass.entries_max => {
                pass.end = self.segments[i + 1].base_offset();
                Phase::Map { base: pass.end, position: 0 }
            }
            Some(next) => Phase::Map { base: next, position: 0 },
            None => Phase::Map { base: pass.end, position: 0 },
        };
        Ok(CleanStep::More)
    }

    /// Groups the segments below the pass's end: consecutive ones whose bytes fit one segment
    /// and whose offsets fit one segment's relative offsets.
    fn plan_copy(&mut self, pass: &mut CleanPass) -> Result<CleanStep, LogError> {
        let limit = self.config.segment_bytes.min(segment::SEGMENT_BYTES_MAX);
        let mut groups: Vec<Group> = Vec::new();
        let mut sealed = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            if !seg.is_sealed() || seg.base_offset() >= pass.end {
                continue;
            }
            sealed += 1;
            let next_base = self.segments.get(i + 1).map_or(pass.end, Segment::base_offset);
            let fits = groups.last().is_some_and(|g| {
                let bytes: u64 = g.segments.iter().map(|&(_, l)| l).sum();
                bytes + seg.len() <= limit && next_base - g.base <= i64::from(i32::MAX)
            });
            match groups.last_mut() {
                Some(g) if fits => {
                    g.segments.push((seg.file_base(), seg.len()));
                    g.end = next_base;
                }
                _ => groups.push(Group {
                    segments: vec![(seg.file_base(), seg.len())],
                    base: seg.base_offset(),
                    end: next_base,
                }),
            }
        }
        if groups.is_empty() {
            return Ok(CleanStep::Abandoned("no sealed segment left to compact".into()));
        }
        pass.outcome.keys = pass.map.len();
        pass.outcome.segments_before = sealed;
        pass.phase = Phase::Copy(Box::new(Copy {
            groups,
            group: 0,
            segment: 0,
            position: 0,
            output: None,
            complete: false,
        }));
        Ok(CleanStep::More)
    }

    fn copy_step(
        &mut self,
        pass: &mut CleanPass,
        io: &mut dyn Io,
        budget: Slice,
        keep_producer: &dyn Fn(i64, i64) -> bool,
    ) -> Result<CleanStep, LogError> {
        let Phase::Copy(copy) = &pass.phase else { unreachable!("copy_step runs in the copy phase") };
        let group = copy.groups[copy.group].clone();
        // The group's segments must be the ones planned (retention or a roll may have moved).
        let Some(first) = self.group_start(&group) else {
            self.abandon_clean(pass, io);
            return Ok(CleanStep::Abandoned("the log changed under the pass".into()));
        };
        // A group's output complete and durable is swapped in by the next slice: each of the
        // two takes its own syncs.
        if copy.complete {
            return self.finish_group(pass, io, &group, first);
        }
        let copied = match self.copy_slice(pass, io, budget, keep_producer, &group, first) {
            Ok(copied) => copied,
            Err(e) => {
                // A read failed or a sealed batch does not check: nothing was committed, and the
                // output (old copies of values, erased ones among them) must not stay behind.
                self.abandon_clean(pass, io);
                return Err(e);
            }
        };
        match copied {
            Ok(false) => Ok(CleanStep::More),
            Ok(true) => {
                let Phase::Copy(copy) = &mut pass.phase else { unreachable!("still copying") };
                copy.complete = true;
                Ok(CleanStep::More)
            }
            Err(why) => {
                self.abandon_clean(pass, io);
                Ok(CleanStep::Abandoned(why))
            }
        }
    }

    /// Copies one slice of the current group into its output; `Ok(true)` once the group's
    /// output is complete and durable, `Err` (inner) if writing the output failed.
    fn copy_slice(
        &mut self,
        pass: &mut CleanPass,
        io: &mut dyn Io,
        budget: Slice,
        keep_producer: &dyn Fn(i64, i64) -> bool,
        group: &Group,
        first: usize,
    ) -> Result<Result<bool, String>, LogError> {
        let CleanPass {
            phase,
            map,
            seed,
            now_ms,
            delete_horizon_ms,
            min_horizon,
            outcome,
            buf,
            scratch,
            encode,
            out,
            ..
        } = pass;
        let Phase::Copy(copy) = phase else { unreachable!("copy_slice runs in the copy phase") };
        if copy.output.is_none() {
            let base = self.segments[first].base_offset();
            let path = cleaned_path(&self.dir, base);
            match io.create_file(&path, true) {
                Ok(file) => {
                    let index = ScanOutcome::empty(base);
                    copy.output = Some(Output { file, path, written: 0, expected: base, index })
                }
                Err(e) => return Ok(Err(format!("creating {}: {e}", path.display()))),
            }
        }
        let output = copy.output.as_mut().expect("created above");
        let seg = &self.segments[first + copy.segment];
        debug_assert_eq!(seg.file_base(), group.segments[copy.segment].0);
        let position = copy.position;
        let (data, fresh) = buf.view(seg, position, budget.bytes)?;
        outcome.bytes_read += fresh;
        out.clear();
        let view = MapView { map, seed: *seed, now_ms: *now_ms };
        let mut at = 0;
        let index_interval = self.config.index_interval_bytes;
        let mut indexed = 0;
        while let Some(batch) = next_batch_until(data, &mut at, seg, position, budget.deadline)? {
            let header = *batch.header();
            let control = header.attributes.is_control();
            let filtered = filter(&batch, &view, scratch, outcome)?;
            let tombstone = filtered.tombstone;
            let new_horizon =
                (tombstone && !header.attributes.has_delete_horizon()).then_some(*delete_horizon_ms);
            if tombstone {
                let h = new_horizon.unwrap_or(header.base_timestamp);
                *min_horizon = Some(min_horizon.map_or(h, |m| m.min(h)));
            }
            let kept = filtered.kept();
            // (A batch with no records, a fill or an emptied one, counts as emptied: runs of them
            // are covered by one fill again.)
            let whole = control || (kept > 0 && kept == filtered.records.len());
            // An emptied batch goes, unless it is an idempotent producer's last (kept empty).
            if !whole
                && kept == 0
                && !(header.producer_id >= 0 && keep_producer(header.producer_id, header.base_offset))
            {
                continue;
            }
            if header.base_offset > output.expected {
                fill_batch(output.expected, header.base_offset - 1, out);
            }
            if whole && new_horizon.is_none() {
                // Kept whole: copied as it is.
                out.extend_from_slice(batch.as_bytes());
            } else {
                let records: Vec<RecordView<'_>> = filtered
                    .records
                    .iter()
                    .zip(&filtered.keep)
                    .filter(|(_, &k)| k)
                    .map(|(r, _)| *r)
                    .collect();
                rewrite_batch(&header, &records, new_horizon, encode, out)?;
            }
            output.expected = header.last_offset() + 1;
            index_batches(out, &mut indexed, &mut output.index, index_interval)?;
        }
        if at == 0 && position < seg.written_len() {
            return Err(stuck(seg, position));
        }
        copy.position = position + at as u64;
        let segment_done = copy.position >= seg.written_len();
        let group_done = segment_done && copy.segment + 1 == group.segments.len();
        if group_done && output.expected < group.end {
            fill_batch(output.expected, group.end - 1, out);
            output.expected = group.end;
            index_batches(out, &mut indexed, &mut output.index, index_interval)?;
        }
        // Write what this slice produced; the last slice of a group also syncs the file.
        let slices = [IoSlice::new(out)];
        let writes = [Write { fd: output.file.as_fd(), offset: output.written, bufs: &slices }];
        let writes = if out.is_empty() { &[][..] } else { &writes[..] };
        let fd = output.file.as_fd();
        let syncs = if group_done { std::slice::from_ref(&fd) } else { &[][..] };
        if !writes.is_empty() || !syncs.is_empty() {
            if let Err(e) = io.submit(writes, syncs) {
                return Ok(Err(format!("writing {}: {e}", output.path.display())));
            }
        }
        output.written += out.len() as u64;
        if segment_done {
            copy.segment += 1;
            copy.position = 0;
        }
        Ok(Ok(group_done))
    }

    /// Swaps a complete group in; finishes the pass after its last group.
    fn finish_group(
        &mut self,
        pass: &mut CleanPass,
        io: &mut dyn Io,
        group: &Group,
        first: usize,
    ) -> Result<CleanStep, LogError> {
        let Phase::Copy(copy) = &mut pass.phase else { unreachable!("finish_group runs in the copy phase") };
        let output = copy.output.take().expect("a complete group has its output");
        copy.complete = false;
        copy.group += 1;
        copy.segment = 0;
        copy.position = 0;
        let last_group = copy.group == copy.groups.len();
        if let Some(why) = self.swap_in(io, group, first, output, &mut pass.outcome)? {
            return Ok(CleanStep::Abandoned(why));
        }
        if !last_group {
            return Ok(CleanStep::More);
        }
        self.cleaned_to = self.cleaned_to.max(pass.end);
        self.next_horizon_ms = pass.min_horizon;
        write_checkpoint(io, &self.dir, self.cleaned_to, self.next_horizon_ms);
        pass.outcome.cleaned_to = pass.end;
        pass.outcome.segments_after = self.segments.iter().filter(|s| s.base_offset() < pass.end).count();
        tracing::info!(
            dir = %self.dir.display(),
            keys = pass.outcome.keys,
            bytes_before = pass.outcome.bytes_before,
            bytes_after = pass.outcome.bytes_after,
            records_removed = pass.outcome.records_removed,
            tombstones_removed = pass.outcome.tombstones_removed,
            segments_before = pass.outcome.segments_before,
            segments_after = pass.outcome.segments_after,
            cleaned_to = pass.end,
            "compacted"
        );
        Ok(CleanStep::Done(pass.outcome))
    }

    /// Index of the group's first segment, if the group's segments are still there as planned.
    fn group_start(&self, group: &Group) -> Option<usize> {
        let first = self.segments.iter().position(|s| s.file_base() == group.segments[0].0)?;
        let same = group.segments.iter().enumerate().all(|(k, &(base, len))| {
            self.segments
                .get(first + k)
                .is_some_and(|s| s.file_base() == base && s.len() == len && s.is_sealed())
        });
        let next = self.segments.get(first + group.segments.len()).map(Segment::base_offset);
        (same && next == Some(group.end)).then_some(first)
    }

    /// Commits a group's durable output and puts it in place of the group's segments.
    fn swap_in(
        &mut self,
        io: &mut dyn Io,
        group: &Group,
        first: usize,
        output: Output,
        outcome: &mut CleanOutcome,
    ) -> Result<Option<String>, LogError> {
        let base = self.segments[first].base_offset();
        let swap = swap_path(&self.dir, base);
        let Output { file, path, index, .. } = output;
        drop(file);
        // The commit point: a durable `.swap` file is completed by recovery if this stops. A
        // rename that fails changed nothing; a directory sync that fails leaves the swap's fate
        // to recovery, so the partition fails.
        if let Err(e) = io.rename(&path, &swap) {
            let _ = io.remove_file(&path);
            return Ok(Some(format!("committing {}: {e}", swap.display())));
        }
        if let Err(e) = io.sync_dir(&self.dir) {
            return Err(self.fail(io, Arc::new(IoError::file_system(&swap, e))));
        }
        match self.finish_swap(io, group, first, &swap, index) {
            Ok(seg) => {
                let before: u64 = group.segments.iter().map(|&(_, l)| l).sum();
                outcome.bytes_before += before;
                outcome.bytes_after += seg.len();
                for _ in 0..group.segments.len() {
                    self.segments.remove(first);
                }
                self.segments.insert(first, seg);
                Ok(None)
            }
            Err(e) => Err(self.fail(io, Arc::new(e))),
        }
    }

    fn finish_swap(
        &mut self,
        io: &mut dyn Io,
        group: &Group,
        first: usize,
        swap: &Path,
        index: ScanOutcome,
    ) -> Result<Segment, IoError> {
        let fs = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| IoError::file_system(&path, e)
        };
        let base = self.segments[first].base_offset();
        // Later segments of the group go first: while the group's first log still exists, a
        // crash leaves it and the swap file, which recovery resolves.
        for k in (0..group.segments.len()).rev() {
            let seg = &self.segments[first + k];
            if k == 0 {
                for p in [segment::index_path(&self.dir, base), segment::time_index_path(&self.dir, base)] {
                    match io.remove_file(&p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fs(&p)(e)),
                        _ => {}
                    }
                }
            } else {
                seg.delete_files(io).map_err(fs(&seg.log_path()))?;
            }
        }
        let log = segment::log_path(&self.dir, base);
        io.rename(swap, &log).map_err(fs(&log))?;
        let mut seg = open_sealed(io, &self.dir, base, group.end, index)?;
        // Recovery completes a `.swap` from any prefix of these removals and the rename, but a
        // file system may persist them out of order (an old segment left beside the new one
        // would cut it short): they are made durable before the group counts as swapped.
        io.sync_dir(&self.dir).map_err(fs(&self.dir))?;
        seg.attach(&self.disk);
        Ok(seg)
    }
}

/// The file that remembers, across restarts, how far compaction got and the earliest delete
/// horizon it left (Kafka's cleaner checkpoint): without it the first pass after an open covers
/// the whole log again.
pub const CHECKPOINT_FILE: &str = "cleaner-checkpoint";

/// Writes the checkpoint without syncing it: losing it costs only a pass, and a torn one reads
/// as absent.
fn write_checkpoint(io: &mut dyn Io, dir: &Path, cleaned_to: i64, horizon: Option<i64>) {
    let text = format!(
        "# How far compaction got; a lost file only means one more pass.\ncleaned_to={cleaned_to}\nnext_horizon_ms={}\n",
        horizon.map_or("none".to_string(), |h| h.to_string())
    );
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let written = io.create_file(&tmp, true).and_then(|f| {
        let bufs = [IoSlice::new(text.as_bytes())];
        io.submit(&[Write { fd: f.as_fd(), offset: 0, bufs: &bufs }], &[]).map_err(std::io::Error::other)?;
        io.rename(&tmp, &dir.join(CHECKPOINT_FILE))
    });
    if let Err(e) = written {
        tracing::warn!(dir = %dir.display(), error = %e, "could not write the compaction checkpoint");
    }
}

/// The checkpoint of `dir`, if one was written whole: (cleaned to, next delete horizon).
pub(super) fn read_checkpoint(dir: &Path) -> Option<(i64, Option<i64>)> {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT_FILE)).ok()?;
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let cleaned_to = field("cleaned_to=")?.parse().ok()?;
    let horizon = match field("next_horizon_ms=")? {
        "none" => None,
        h => Some(h.parse().ok()?),
    };
    Some((cleaned_to, horizon))
}

/// Opens a committed compaction output as a sealed segment ending at `end`, with the indexes
/// built while it was written (`outcome`), and writes its index files durably.
fn open_sealed(
    io: &mut dyn Io,
    dir: &Path,
    base: i64,
    end: i64,
    outcome: ScanOutcome,
) -> Result<Segment, IoError> {
    let path = segment::log_path(dir, base);
    let fs = |e: std::io::Error| IoError::file_system(&path, e);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(fs)?;
    let len = file.metadata().map_err(fs)?.len();
    if outcome.valid_end != len || outcome.next_offset != end {
        let why = format!(
            "{len} bytes to offset {end} on disk, {} bytes to offset {} written",
            outcome.valid_end, outcome.next_offset
        );
        return Err(fs(std::io::Error::other(format!("compacted segment does not check: {why}"))));
    }
    let mut seg = Segment::from_parts(dir, base, file, len, outcome, false);
    let files = seg.create_index_files(io).map_err(seal_error)?;
    seg.seal_durable(io, files).map_err(seal_error)?;
    seg.mark_visible(len);
    seg.close_file();
    Ok(seg)
}

fn seal_error(e: crate::segment::SealError) -> IoError {
    match e {
        crate::segment::SealError::Io(e) => e,
        crate::segment::SealError::Fs { path, source } => IoError::file_system(&path, source),
    }
}

/// What a pass keeps of a batch: its records (decoded once) with whether each stays, and
/// whether a kept one is a tombstone.
struct Filtered<'r> {
    records: Vec<RecordView<'r>>,
    keep: Vec<bool>,
    tombstone: bool,
}

impl Filtered<'_> {
    fn kept(&self) -> usize {
        self.keep.iter().filter(|&&k| k).count()
    }
}

/// The key map as the copy phase reads it.
struct MapView<'a> {
    map: &'a KeyMap,
    seed: u64,
    now_ms: i64,
}

impl CleanPass {
    /// The offset below which this pass compacts.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// What the pass is doing: `"map"` or `"copy"` (for logs).
    pub fn phase(&self) -> &'static str {
        match self.phase {
            Phase::Map { .. } => "map",
            Phase::Copy(_) => "copy",
        }
    }
}

/// Decides which records of `batch` survive (decoding them into `scratch`); counts what is
/// removed. Control batches are kept whole.
fn filter<'r>(
    batch: &Batch<'r>,
    map: &MapView<'_>,
    scratch: &'r mut Vec<u8>,
    outcome: &mut CleanOutcome,
) -> Result<Filtered<'r>, LogError> {
    let header = batch.header();
    if header.attributes.is_control() {
        return Ok(Filtered { records: Vec::new(), keep: Vec::new(), tombstone: false });
    }
    let horizon_passed = header.attributes.has_delete_horizon() && header.base_timestamp <= map.now_ms;
    let limit = super::validate::decompressed_bytes_max(segment::SEGMENT_BYTES_MAX);
    let records = batch.records_in(scratch, limit)?.collect::<Result<Vec<_>, _>>()?;
    let mut keep = Vec::with_capacity(records.len());
    let mut tombstone = false;
    for record in &records {
        let stays = match record.key {
            None => false,
            Some(key) => {
                let latest = map.map.get(&XxHash3_128::oneshot_with_seed(map.seed, key));
                let current = latest.is_none_or(|&l| l <= record.offset);
                let dead = record.value.is_none() && horizon_passed;
                if current && dead {
                    outcome.tombstones_removed += 1;
                }
                tombstone |= current && !dead && record.value.is_none();
                current && !dead
            }
        };
        if !stays {
            outcome.records_removed += 1;
        }
        keep.push(stays);
    }
    Ok(Filtered { records, keep, tombstone })
}

/// The bytes a pass read last, kept across slices: a slice that stopped at its deadline leaves
/// the rest for the next one, which must not read it again.
#[derive(Debug, Default)]
struct ReadBuf {
    bytes: Vec<u8>,
    /// The segment file (its base) and the position the bytes were read from.
    file_base: i64,
    start: u64,
}

impl ReadBuf {
    /// Whole batches of `seg` from `position` on: what is held, if it holds the batch there
    /// whole, else about `budget` bytes read afresh. Returns them and the bytes read now.
    fn view(&mut self, seg: &Segment, position: u64, budget: u64) -> Result<(&[u8], u64), LogError> {
        let held = seg.file_base() == self.file_base
            && position >= self.start
            && position < self.start + self.bytes.len() as u64;
        if held {
            let rest = &self.bytes[(position - self.start) as usize..];
            if BatchHeader::parse(rest).is_ok_and(|h| h.total_len() <= rest.len()) {
                return Ok((&self.bytes[(position - self.start) as usize..], 0));
            }
        }
        let read = read_batches(seg, position, budget, &mut self.bytes)?;
        self.file_base = seg.file_base();
        self.start = position;
        Ok((&self.bytes[..read], read as u64))
    }
}

/// Reads whole batches of `seg` from `position` into `buf`: about `budget` bytes, at least one
/// whole batch, never past the written end. Returns the bytes read.
fn read_batches(seg: &Segment, position: u64, budget: u64, buf: &mut Vec<u8>) -> Result<usize, LogError> {
    let end = seg.written_len();
    if position >= end {
        buf.clear();
        return Ok(0);
    }
    let path = seg.log_path();
    let file = seg.file()?;
    let mut want = budget.clamp(16 << 10, 64 << 20).min(end - position);
    let mut header = [0u8; BATCH_HEADER_LEN];
    if end - position >= BATCH_HEADER_LEN as u64 {
        file.read_exact_at(&mut header, position).map_err(|e| LogError::fs(&path, e))?;
        if let Ok(h) = BatchHeader::parse(&header) {
            want = want.max(h.total_len() as u64).min(end - position);
        }
    }
    buf.resize(want as usize, 0);
    file.read_exact_at(buf, position).map_err(|e| LogError::fs(&path, e))?;
    Ok(buf.len())
}

/// [`next_batch`], but `None` once `deadline` has passed and a batch was taken (`*at > 0`).
fn next_batch_until<'b>(
    buf: &'b [u8],
    at: &mut usize,
    seg: &Segment,
    base_position: u64,
    deadline: Instant,
) -> Result<Option<Batch<'b>>, LogError> {
    if *at > 0 && Instant::now() >= deadline {
        return Ok(None);
    }
    next_batch(buf, at, seg, base_position)
}

/// Takes the batches of `out` from `*from` on into `index` (they follow what it holds).
fn index_batches(
    out: &[u8],
    from: &mut usize,
    index: &mut ScanOutcome,
    interval: u64,
) -> Result<(), LogError> {
    while *from < out.len() {
        let header = BatchHeader::parse(&out[*from..])?;
        index.accept(&header, interval);
        *from += header.total_len();
    }
    Ok(())
}

/// The next whole batch of `buf` at `*at` (advanced past it); `None` at an incomplete tail.
/// A batch that does not check is corruption of a sealed segment.
fn next_batch<'b>(
    buf: &'b [u8],
    at: &mut usize,
    seg: &Segment,
    base_position: u64,
) -> Result<Option<Batch<'b>>, LogError> {
    let rest = &buf[*at..];
    if rest.len() < BATCH_HEADER_LEN {
        return Ok(None);
    }
    let header = BatchHeader::parse(rest).map_err(|e| corrupt(seg, base_position + *at as u64, e))?;
    if rest.len() < header.total_len() {
        return Ok(None);
    }
    let batch = Batch::parse(rest).map_err(|e| corrupt(seg, base_position + *at as u64, e))?;
    *at += batch.total_len();
    Ok(Some(batch))
}

/// A batch that does not fit what is left of its sealed segment (its length field is damaged):
/// the pass cannot go on past it.
fn stuck(seg: &Segment, position: u64) -> LogError {
    LogError::Corrupt {
        path: seg.log_path(),
        position,
        reason: "a batch runs past the end of its sealed segment".into(),
    }
}

fn corrupt(seg: &Segment, position: u64, e: crate::record::RecordError) -> LogError {
    LogError::Corrupt { path: seg.log_path(), position, reason: e.to_string() }
}

/// The timestamp of a segment's first batch (its first time index entry), if it has records.
fn first_timestamp(seg: &Segment) -> Option<i64> {
    seg.time_index().entries().first().map(|e| e.timestamp).filter(|&t| t >= 0)
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[path = "clean_tests.rs"]
mod tests;
