//! Opening a partition after a clean shutdown or a crash.
//!
//! Rules (argued in `docs/segment-format.md`):
//! 1. Segments are the `<20 digits>.log` files of the directory, ordered by base offset; index
//!    files without a log and leftover temporary files are removed. The output of a compaction
//!    pass is removed if it was not committed (`.cleaned`) and completed if it was (`.swap`:
//!    it replaces the segments whose base offsets it covers; see `log::clean`).
//! 2. A fence left by a failure cuts the log back to the offset it names: segment files that
//!    start after it are removed (they hold nothing a producer was told succeeded), and the
//!    segment holding it becomes the active one and is cut at the fence (a segment that starts
//!    exactly at the fence is emptied, and the sealed one before it stays sealed). An empty
//!    last segment after one whose index files exist but are not whole (their own CRC fails)
//!    is a roll that did not complete (a roll creates the index files, then the next segment,
//!    then seals, and writes the index files only after the log is durable): the empty file is
//!    removed and the one before it is the active segment again. Index files that are whole
//!    mean the seal completed, so anything wrong with that segment is damage (rule 4).
//! 3. A segment other than the last is trusted when both of its index files decode (magic, CRC,
//!    entry order), record exactly its current length, and the batches after the last index
//!    entry end at the next segment's base offset: sealing wrote them only after the log was
//!    durable. Otherwise it is rescanned and its indexes are rewritten.
//! 4. A rescanned sealed segment is salvaged, never cut short: it was durable before its
//!    successor existed, so a failed check there is damage, not a torn write. Bytes after the
//!    batch that reaches the next segment's base offset are not data and are cut off, and the
//!    segment is sealed again. Any other damage is kept as it is on disk, every intact batch
//!    around it is served, the damage is logged with file, position and offsets, and the
//!    partition refuses writes until the damage is accepted (see [`super::damage`]). Nothing
//!    after a damaged segment is touched.
//! 5. The last segment is always rescanned from its start: it is where a crash leaves a torn
//!    tail. Its longest valid prefix is kept and the rest truncated, logging file and position.
//!    Reservations beyond its end left by a crash are given back.
//! 6. What survives is made durable (fdatasync of the active log, fsync of the directory) before
//!    the partition takes appends, so recovered data is never lost by a second crash.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use super::damage::{self, Damage};
use super::{sync_dir, LogConfig, LogError};
use crate::io::Io;
use crate::segment::{self, salvage, scan, ScanOutcome, ScanTarget, Segment, TimeIndex};

/// What recovery rebuilt: the segments, oldest first, and the damage it found in sealed ones.
pub(super) struct Recovered {
    pub segments: VecDeque<Segment>,
    pub damage: Vec<Damage>,
}

pub(super) fn recover(dir: &Path, config: &LogConfig, io: &mut dyn Io) -> Result<Recovered, LogError> {
    let mut bases = list_segments(io, dir)?;
    let fence = damage::read_fence(dir)?;
    let mut dir_changed = false;
    if let Some(fence) = fence {
        dir_changed |= apply_fence(io, dir, &mut bases, fence)?;
    }
    dir_changed |= undo_incomplete_roll(io, dir, &mut bases)?;
    let mut out = Recovered { segments: VecDeque::new(), damage: Vec::new() };
    for (i, &base) in bases.iter().enumerate() {
        let path = segment::log_path(dir, base);
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(|e| LogError::fs(&path, e))?;
        let len = file.metadata().map_err(|e| LogError::fs(&path, e))?.len();
        match bases.get(i + 1).copied() {
            Some(next_base) => {
                if let Some(outcome) = load_indexes(dir, base, len, next_base) {
                    let mut seg = Segment::from_parts(dir, base, file, len, outcome, true);
                    if seg.check_end()? {
                        // Sealed files are opened again by the reads that need them.
                        seg.close_file();
                        out.segments.push_back(seg);
                        continue;
                    }
                    tracing::warn!(file = %path.display(), "index files do not match the end of the log; rescanning");
                } else {
                    tracing::info!(file = %path.display(), "index files missing or stale; rebuilding them from the log");
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| LogError::fs(&path, e))?;
                dir_changed |= recover_sealed(dir, base, next_base, file, len, config, io, &mut out)?;
            }
            None => {
                let target = ScanTarget {
                    file: &file,
                    file_len: len,
                    file_base: base,
                    end_offset: fence,
                    index_interval_bytes: config.index_interval_bytes,
                };
                let outcome = scan(&target, 0, base).map_err(|e| LogError::fs(&path, e))?;
                let valid_len = outcome.valid_end;
                match &outcome.stopped {
                    Some((position, _)) if fence == Some(outcome.next_offset) => tracing::warn!(
                        file = %path.display(),
                        position,
                        dropped_bytes = len - valid_len,
                        fence = outcome.next_offset,
                        "cutting the log back to the fence of a failure: these batches were never acknowledged"
                    ),
                    Some((position, reason)) => tracing::warn!(
                        file = %path.display(),
                        position,
                        dropped_bytes = len - valid_len,
                        "truncating torn or corrupt tail: {reason}"
                    ),
                    None => {}
                }
                let mut seg = Segment::from_parts(dir, base, file, len, outcome.clone(), false);
                // Cutting back to the valid length also gives back blocks a crash left reserved
                // beyond the end of the file.
                seg.truncate(io, valid_len, outcome).map_err(|e| LogError::fs(&path, e))?;
                // The active segment's index files are rewritten when it is sealed.
                dir_changed |= remove_indexes(io, dir, base)?;
                io.submit(&[], &[seg.active_file().as_fd()])
                    .map_err(|e| LogError::Io { dir: dir.to_path_buf(), source: e.into() })?;
                out.segments.push_back(seg);
            }
        }
    }
    // An empty active segment left behind by a roll is fine; no segment at all means a new log.
    if out.segments.back().is_none_or(Segment::is_sealed) {
        let base = out.segments.back().map_or(0, Segment::next_offset);
        let seg =
            Segment::create(io, dir, base).map_err(|e| LogError::fs(segment::log_path(dir, base), e))?;
        out.segments.push_back(seg);
        dir_changed = true;
    }
    if dir_changed {
        sync_dir(io, dir)?;
    }
    if fence.is_some() {
        // The cut is durable (the active log and the directory are synced): the fence has done
        // its work.
        damage::remove_fence(io, dir)?;
    }
    Ok(out)
}

/// Rule 2: removes the segment files that start at or after `fence` and the index files of the
/// one that will hold it, which becomes the last (active) segment. Returns whether the
/// directory changed.
fn apply_fence(io: &mut dyn Io, dir: &Path, bases: &mut Vec<i64>, fence: i64) -> Result<bool, LogError> {
    // A segment starting at the fence holds only what the fence cuts: it stays, to be emptied
    // as the active segment, and the sealed segment before it is not touched.
    let keep = bases.partition_point(|&b| b <= fence).max(1).min(bases.len());
    let mut changed = false;
    for &base in &bases[keep..] {
        let path = segment::log_path(dir, base);
        tracing::warn!(file = %path.display(), fence, "removing a segment written after the partition failed");
        io.remove_file(&path).map_err(|e| LogError::fs(&path, e))?;
        remove_indexes(io, dir, base)?;
        changed = true;
    }
    bases.truncate(keep);
    if let Some(&last) = bases.last() {
        changed |= remove_indexes(io, dir, last)?;
    }
    Ok(changed)
}

/// Rule 2, second part: removes the empty last segment of a roll that did not complete.
fn undo_incomplete_roll(io: &mut dyn Io, dir: &Path, bases: &mut Vec<i64>) -> Result<bool, LogError> {
    let [.., previous, last] = bases[..] else { return Ok(false) };
    let last_path = segment::log_path(dir, last);
    let empty = std::fs::metadata(&last_path).map_err(|e| LogError::fs(&last_path, e))?.len() == 0;
    if !empty {
        return Ok(false);
    }
    let index_files = [segment::index_path(dir, previous), segment::time_index_path(dir, previous)];
    let mut cut_short = false;
    for path in &index_files {
        match std::fs::read(path) {
            Ok(bytes) => cut_short |= segment::index::intact_log_len(&bytes).is_none(),
            // Both are created before the next segment: one missing is not an unfinished roll.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(LogError::fs(path, e)),
        }
    }
    if !cut_short {
        return Ok(false);
    }
    tracing::warn!(
        file = %last_path.display(),
        "removing the empty segment of a roll that did not complete; the one before it is active again"
    );
    io.remove_file(&last_path).map_err(|e| LogError::fs(&last_path, e))?;
    bases.pop();
    remove_indexes(io, dir, previous)?;
    Ok(true)
}

/// Rule 4: salvages a sealed segment whose index files could not be trusted. Returns whether
/// the directory changed.
#[allow(clippy::too_many_arguments)]
fn recover_sealed(
    dir: &Path,
    base: i64,
    next_base: i64,
    file: std::fs::File,
    len: u64,
    config: &LogConfig,
    io: &mut dyn Io,
    out: &mut Recovered,
) -> Result<bool, LogError> {
    let path = segment::log_path(dir, base);
    let target = ScanTarget {
        file: &file,
        file_len: len,
        file_base: base,
        end_offset: Some(next_base),
        index_interval_bytes: config.index_interval_bytes,
    };
    let found = salvage(&target).map_err(|e| LogError::fs(&path, e))?;
    let end = found.next_offset(base);
    if found.damage.is_empty() && end == next_base {
        // Whole: only bytes after its last offset, if any, are cut off; then sealed again.
        let run = found.runs.into_iter().next().unwrap_or_else(|| ScanOutcome::empty(base));
        let valid_len = run.valid_end;
        let mut seg = Segment::from_parts(dir, base, file, len, run.clone(), false);
        if let Some((position, reason)) = &found.trailing {
            tracing::warn!(
                file = %path.display(),
                position,
                dropped_bytes = len - valid_len,
                "removing bytes after the sealed segment's last batch: {reason}"
            );
            seg.truncate(io, valid_len, run).map_err(|e| LogError::fs(&path, e))?;
        }
        let files = seg.create_index_files(io).map_err(|e| super::error::from_seal(dir, e))?;
        seg.seal(io, files).map_err(|e| super::error::from_seal(dir, e))?;
        seg.close_file();
        out.segments.push_back(seg);
        return Ok(false);
    }
    let mut lost: Vec<Damage> = found
        .damage
        .iter()
        .map(|d| Damage {
            file: path.clone(),
            position: d.position,
            len: d.len,
            lost_from: d.expected_offset,
            lost_to: d.resumed_at.unwrap_or(next_base),
            reason: d.reason.clone(),
        })
        .collect();
    if found.damage.last().is_none_or(|d| d.resumed_at.is_some()) && end < next_base {
        // The last intact batch ends the file, but offsets are missing before the next segment.
        lost.push(Damage {
            file: path.clone(),
            position: len,
            len: 0,
            lost_from: end,
            lost_to: next_base,
            reason: format!("the file ends at offset {end}, the next segment starts at {next_base}"),
        });
    }
    for d in &lost {
        tracing::error!(
            file = %d.file.display(),
            position = d.position,
            bytes = d.len,
            lost_from = d.lost_from,
            lost_to = d.lost_to,
            "damaged sealed segment: {}; serving the intact batches around it, refusing writes",
            d.reason
        );
    }
    out.damage.extend(lost);
    let file = Arc::new(file);
    for run in found.runs {
        let end = run.valid_end;
        let mut seg = Segment::from_shared(dir, base, Arc::clone(&file), end, run, true);
        seg.close_file();
        out.segments.push_back(seg);
    }
    // Stale or corrupt index files would be trusted no more than now; without them the next
    // open reports the damage again instead of trusting a partial index.
    remove_indexes(io, dir, base)
}

/// Base offsets of the directory's segments, ascending; removes orphaned index and temp files.
fn list_segments(io: &mut dyn Io, dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut bases = Vec::new();
    let mut others = Vec::new();
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::fs(dir, e))? {
        let entry = entry.map_err(|e| LogError::fs(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_name(name) {
            bases.push(base);
        } else if let Some(base) = super::clean::parse_name(name, "swap") {
            swaps.push(base);
        } else if super::clean::parse_name(name, "cleaned").is_some() {
            tracing::info!(file = %entry.path().display(), "removing the output of a compaction pass that did not complete");
            io.remove_file(&entry.path()).map_err(|e| LogError::fs(entry.path(), e))?;
        } else if name.ends_with(".index") || name.ends_with(".timeindex") || name.ends_with(".tmp") {
            others.push(entry.path());
        }
    }
    bases.sort_unstable();
    swaps.sort_unstable();
    for base in swaps {
        complete_swap(io, dir, base, &mut bases)?;
    }
    for path in others {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let has_log = segment::parse_log_name(&format!("{stem}.log")).is_some_and(|b| bases.contains(&b));
        if !has_log || path.extension().is_some_and(|e| e == "tmp") {
            tracing::info!(file = %path.display(), "removing orphaned file");
            io.remove_file(&path).map_err(|e| LogError::fs(&path, e))?;
        }
    }
    Ok(bases)
}

/// Rule 1, compaction: completes a committed compaction pass. The swap file at `base` is
/// durable and replaces every segment whose base lies in its offsets: those are removed, then it
/// becomes the segment at `base` (its index files are rebuilt like any missing ones).
fn complete_swap(io: &mut dyn Io, dir: &Path, base: i64, bases: &mut Vec<i64>) -> Result<(), LogError> {
    let swap = super::clean::swap_path(dir, base);
    let file = std::fs::File::open(&swap).map_err(|e| LogError::fs(&swap, e))?;
    let len = file.metadata().map_err(|e| LogError::fs(&swap, e))?.len();
    let target = ScanTarget {
        file: &file,
        file_len: len,
        file_base: base,
        end_offset: None,
        index_interval_bytes: 1 << 20,
    };
    let scanned = scan(&target, 0, base).map_err(|e| LogError::fs(&swap, e))?;
    drop(file);
    if let Some((position, reason)) = scanned.stopped {
        // It was durable before it was committed: this is damage, and guessing could lose data.
        return Err(LogError::Corrupt {
            path: swap,
            position,
            reason: format!("committed compaction output: {reason}"),
        });
    }
    let end = scanned.next_offset;
    tracing::warn!(file = %swap.display(), from = base, to = end, "completing a compaction pass that was committed");
    for &old in bases.iter().filter(|&&b| b > base && b < end) {
        let path = segment::log_path(dir, old);
        io.remove_file(&path).map_err(|e| LogError::fs(&path, e))?;
        remove_indexes(io, dir, old)?;
    }
    remove_indexes(io, dir, base)?;
    let log = segment::log_path(dir, base);
    io.rename(&swap, &log).map_err(|e| LogError::fs(&log, e))?;
    bases.retain(|&b| b < base || b >= end);
    bases.push(base);
    bases.sort_unstable();
    sync_dir(io, dir)
}

/// Loads a sealed segment's indexes if they are intact and describe a log of `len` bytes.
pub(super) fn load_indexes(dir: &Path, base: i64, len: u64, next_base: i64) -> Option<ScanOutcome> {
    let index = segment::OffsetIndex::decode(&std::fs::read(segment::index_path(dir, base)).ok()?, len)?;
    let time_index = TimeIndex::decode(&std::fs::read(segment::time_index_path(dir, base)).ok()?, len)?;
    if len == 0 || index.entries().is_empty() || next_base <= base {
        return None;
    }
    let max_timestamp = time_index.last().map_or(i64::MIN, |e| e.timestamp);
    Some(ScanOutcome {
        start: 0,
        base_offset: base,
        valid_end: len,
        next_offset: next_base,
        max_timestamp,
        index,
        time_index,
        bytes_since_index: 0,
        stopped: None,
    })
}

/// Removes a segment's index files; returns whether any existed.
fn remove_indexes(io: &mut dyn Io, dir: &Path, base: i64) -> Result<bool, LogError> {
    let mut removed = false;
    for path in [segment::index_path(dir, base), segment::time_index_path(dir, base)] {
        match io.remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::fs(&path, e)),
        }
    }
    Ok(removed)
}
