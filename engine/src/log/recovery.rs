//! Opening a partition after a clean shutdown or a crash.
//!
//! Rules (argued in `docs/segment-format.md`):
//! 1. Segments are the `<20 digits>.log` files of the directory, ordered by base offset; index
//!    files without a log and leftover temporary files are removed.
//! 2. A segment other than the last is trusted when both of its index files decode (magic, CRC,
//!    entry order) and record exactly its current length: sealing wrote them only after the log
//!    was durable. Otherwise it is rescanned and its indexes are rewritten.
//! 3. The last segment is always rescanned from its start: it is where a crash leaves a torn tail.
//! 4. A scan keeps the longest valid prefix (header parses, CRC matches, offsets contiguous) and
//!    truncates the rest, logging the file and byte position. If that cuts a segment short, every
//!    later segment is deleted too, so the log stays one contiguous prefix of what was written.
//! 5. What survives is made durable (fdatasync of the active log, fsync of the directory) before
//!    the partition takes appends, so recovered data is never lost by a second crash.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::Path;

use super::{sync_dir, LogConfig, LogError};
use crate::io::Io;
use crate::segment::{self, scan, ScanOutcome, Segment, TimeIndex};

pub(super) fn recover(
    dir: &Path,
    config: &LogConfig,
    io: &mut dyn Io,
) -> Result<VecDeque<Segment>, LogError> {
    let bases = list_segments(dir)?;
    let mut segments: VecDeque<Segment> = VecDeque::new();
    let mut dir_changed = false;
    let mut cut_short = false;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment::log_path(dir, base);
        if cut_short {
            tracing::warn!(file = %path.display(), "deleting segment after a truncated one");
            std::fs::remove_file(&path).map_err(|e| LogError::fs(&path, e))?;
            remove_indexes(dir, base)?;
            dir_changed = true;
            continue;
        }
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(|e| LogError::fs(&path, e))?;
        let len = file.metadata().map_err(|e| LogError::fs(&path, e))?.len();
        let expected_base = segments.back().map(Segment::next_offset);
        if expected_base.is_some_and(|next| next != base) {
            tracing::warn!(
                file = %path.display(),
                expected = expected_base,
                "segment does not continue the previous one; deleting it and every later segment"
            );
            std::fs::remove_file(&path).map_err(|e| LogError::fs(&path, e))?;
            remove_indexes(dir, base)?;
            cut_short = true;
            dir_changed = true;
            continue;
        }
        let next_base = bases.get(i + 1).copied();
        let file = match next_base.and_then(|nb| load_indexes(dir, base, len, nb)) {
            Some(outcome) => {
                let seg = Segment::from_parts(dir, base, file, len, outcome, true);
                if seg.check_end()? {
                    segments.push_back(seg);
                    continue;
                }
                tracing::warn!(file = %path.display(), "index files do not match the end of the log; rescanning");
                drop(seg);
                OpenOptions::new().read(true).write(true).open(&path).map_err(|e| LogError::fs(&path, e))?
            }
            None => {
                if next_base.is_some() {
                    tracing::info!(file = %path.display(), "index files missing or stale; rebuilding them from the log");
                }
                file
            }
        };
        let outcome =
            scan(&file, base, len, config.index_interval_bytes).map_err(|e| LogError::fs(&path, e))?;
        let valid_len = outcome.valid_len;
        if let Some((position, reason)) = &outcome.stopped {
            tracing::warn!(
                file = %path.display(),
                position,
                dropped_bytes = len - valid_len,
                "truncating torn or corrupt tail: {reason}"
            );
        }
        let truncated = outcome.stopped.is_some();
        // A segment that does not run up to the next one's base offset ends the log: whatever
        // follows it cannot be part of a contiguous prefix.
        let continues = !truncated && next_base.is_some_and(|nb| outcome.next_offset == nb);
        let mut seg = Segment::from_parts(dir, base, file, len, outcome.clone(), false);
        if truncated {
            seg.truncate(valid_len, outcome).map_err(|e| LogError::fs(&path, e))?;
        }
        if continues {
            seg.seal(io).map_err(|e| super::error::from_seal(dir, e))?;
        } else {
            // The active segment's index files are rewritten when it is sealed.
            dir_changed |= remove_indexes(dir, base)?;
            io.submit(&[], &[seg.file().as_fd()])
                .map_err(|e| LogError::Io { dir: dir.to_path_buf(), source: e.into() })?;
            cut_short = next_base.is_some();
        }
        segments.push_back(seg);
    }
    // An empty active segment left behind by a roll is fine; no segment at all means a new log.
    if segments.is_empty() {
        let base = 0;
        let seg = Segment::create(dir, base).map_err(|e| LogError::fs(segment::log_path(dir, base), e))?;
        segments.push_back(seg);
        dir_changed = true;
    }
    if dir_changed {
        sync_dir(dir)?;
    }
    Ok(segments)
}

/// Base offsets of the directory's segments, ascending; removes orphaned index and temp files.
fn list_segments(dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut bases = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::fs(dir, e))? {
        let entry = entry.map_err(|e| LogError::fs(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_name(name) {
            bases.push(base);
        } else if name.ends_with(".index") || name.ends_with(".timeindex") || name.ends_with(".tmp") {
            others.push(entry.path());
        }
    }
    bases.sort_unstable();
    for path in others {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let has_log = segment::parse_log_name(&format!("{stem}.log")).is_some_and(|b| bases.contains(&b));
        if !has_log || path.extension().is_some_and(|e| e == "tmp") {
            tracing::info!(file = %path.display(), "removing orphaned file");
            std::fs::remove_file(&path).map_err(|e| LogError::fs(&path, e))?;
        }
    }
    Ok(bases)
}

/// Loads a sealed segment's indexes if they are intact and describe a log of `len` bytes.
fn load_indexes(dir: &Path, base: i64, len: u64, next_base: i64) -> Option<ScanOutcome> {
    let index = segment::OffsetIndex::decode(&std::fs::read(segment::index_path(dir, base)).ok()?, len)?;
    let time_index = TimeIndex::decode(&std::fs::read(segment::time_index_path(dir, base)).ok()?, len)?;
    if len == 0 || index.entries().is_empty() || next_base <= base {
        return None;
    }
    let max_timestamp = time_index.last().map_or(i64::MIN, |e| e.timestamp);
    Some(ScanOutcome {
        valid_len: len,
        next_offset: next_base,
        max_timestamp,
        index,
        time_index,
        bytes_since_index: 0,
        stopped: None,
    })
}

/// Removes a segment's index files; returns whether any existed.
fn remove_indexes(dir: &Path, base: i64) -> Result<bool, LogError> {
    let mut removed = false;
    for path in [segment::index_path(dir, base), segment::time_index_path(dir, base)] {
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::fs(&path, e)),
        }
    }
    Ok(removed)
}
