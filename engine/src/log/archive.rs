//! Archive instead of delete: the seed's "delete old segments or move them to archive storage".
//!
//! Model: when the engine has an archive directory (`EngineConfig::archive_dir`, typically
//! another mount) and a topic sets `remote.storage.enable=true`, retention by size and age moves
//! the oldest sealed segments there instead of deleting them: `<archive>/<topic>-<partition>/`
//! gets each segment's log and index files. Archived segments stay part of the log: the log start
//! offset is the first archived one's, and reads below the first local segment are served from
//! the archive, by `sendfile` like any other. `spate.archive.retention.ms` and
//! `spate.archive.retention.bytes` bound the archive itself (forever by default).
//!
//! Crash safety: a segment is copied to `<base>.<ext>.tmp` in the archive through the partition's
//! `Io`, synced, renamed, and the archive directory synced before the local copy is deleted. At
//! open, `.tmp` files in the archive are removed, and an archived segment that is also local (a
//! crash between the archive's rename and the local deletion) is removed from the archive: the
//! local copy is the one recovery checked. Archived files are never written again; an archived
//! segment whose index files do not check is rescanned and served up to its last intact batch.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{sync_dir, LogError, Partition};
use crate::io::{Io, Write};
use crate::segment::{self, ScanTarget, Segment};

/// Bytes copied per write when archiving.
const COPY_CHUNK: usize = 1 << 20;

impl Partition {
    /// Where this partition's archived segments live, when its topic archives and the engine has
    /// an archive.
    pub fn archive_dir(&self) -> Option<PathBuf> {
        let root = self.disk.archive_root.as_ref()?;
        (self.config.archive).then(|| root.join(self.dir.file_name().unwrap_or_default()))
    }

    /// The archived segments, oldest first.
    pub fn archived_segments(&self) -> impl ExactSizeIterator<Item = &Segment> {
        self.archived.iter()
    }

    /// Moves the oldest local (sealed) segment to the archive: copies its files, makes them
    /// durable there, then deletes it here. Returns its length and its path in the archive.
    pub(super) fn archive_oldest_segment(
        &mut self,
        io: &mut dyn Io,
        archive: &Path,
    ) -> Result<(u64, PathBuf), LogError> {
        debug_assert!(self.segments.len() > 1 && self.segments[0].is_sealed());
        if !archive.exists() {
            std::fs::create_dir_all(archive).map_err(|e| LogError::fs(archive, e))?;
            // The new directory's entry must be durable too, before anything depends on it.
            if let Some(parent) = archive.parent() {
                sync_dir(io, parent)?;
            }
        }
        let oldest = &self.segments[0];
        let base = oldest.file_base();
        let sources = [
            segment::log_path(&self.dir, base),
            segment::index_path(&self.dir, base),
            segment::time_index_path(&self.dir, base),
        ];
        for source in &sources {
            let name = source.file_name().unwrap_or_default();
            copy_durably(io, source, &archive.join(name))?;
        }
        sync_dir(io, archive)?;
        let len = oldest.len();
        let mut seg =
            open_archived(archive, base, self.segments[1].base_offset(), self.config.index_interval_bytes)?;
        seg.attach(&self.disk);
        // Now the local copy goes (as retention deletes a segment), leaving the log start where
        // it is: the archive holds the offsets.
        oldest.delete_files(io).map_err(|e| LogError::fs(&sources[0], e))?;
        self.segments.pop_front();
        self.archived.push_back(seg);
        Ok((len, segment::log_path(archive, base)))
    }

    /// Deletes the oldest archived segment; returns its length.
    pub(super) fn delete_oldest_archived(&mut self, io: &mut dyn Io) -> Result<u64, LogError> {
        let oldest = self.archived.pop_front().expect("an archived segment to delete");
        let path = oldest.log_path();
        oldest.delete_files(io).map_err(|e| LogError::fs(&path, e))?;
        self.log_start_offset = self.first_offset();
        Ok(oldest.len())
    }

    /// Bytes in the archive.
    pub fn archived_bytes(&self) -> u64 {
        self.archived.iter().map(Segment::len).sum()
    }

    /// The base offset of the oldest segment, archived or local.
    pub(super) fn first_offset(&self) -> i64 {
        let first = self.archived.front().unwrap_or(&self.segments[0]).base_offset();
        self.log_start_offset.max(first)
    }
}

/// Copies `from` to `to` through `io` (a `.tmp` file, synced, then renamed).
fn copy_durably(io: &mut dyn Io, from: &Path, to: &Path) -> Result<(), LogError> {
    let source = match std::fs::File::open(from) {
        Ok(f) => f,
        // A sealed segment's index files may be missing (rebuilt at the next open); the archive
        // then rebuilds its own.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && from.extension().is_some_and(|x| x != "log") =>
        {
            return Ok(())
        }
        Err(e) => return Err(LogError::fs(from, e)),
    };
    let len = source.metadata().map_err(|e| LogError::fs(from, e))?.len();
    let tmp = PathBuf::from(format!("{}.tmp", to.display()));
    let out = io.create_file(&tmp, true).map_err(|e| LogError::fs(&tmp, e))?;
    let mut buf = vec![0u8; COPY_CHUNK.min(len as usize).max(1)];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        source.read_exact_at(&mut buf[..n], at).map_err(|e| LogError::fs(from, e))?;
        let bufs = [IoSlice::new(&buf[..n])];
        let last = at + n as u64 == len;
        let fd = out.as_fd();
        io.submit(
            &[Write { fd, offset: at, bufs: &bufs }],
            if last { std::slice::from_ref(&fd) } else { &[] },
        )
        .map_err(|e| LogError::Io { dir: tmp.clone(), source: std::sync::Arc::new(e) })?;
        at += n as u64;
    }
    if len == 0 {
        io.submit(&[], &[out.as_fd()])
            .map_err(|e| LogError::Io { dir: tmp.clone(), source: std::sync::Arc::new(e) })?;
    }
    io.rename(&tmp, to).map_err(|e| LogError::fs(to, e))
}

/// Opens an archived segment that ends at `next_base`: from its index files when they check,
/// else by a scan (its intact prefix).
fn open_archived(
    archive: &Path,
    base: i64,
    next_base: i64,
    index_interval_bytes: u64,
) -> Result<Segment, LogError> {
    let path = segment::log_path(archive, base);
    let file = std::fs::File::open(&path).map_err(|e| LogError::fs(&path, e))?;
    let len = file.metadata().map_err(|e| LogError::fs(&path, e))?.len();
    let outcome = match super::recovery::load_indexes(archive, base, len, next_base) {
        Some(outcome) => outcome,
        None => {
            let target = ScanTarget {
                file: &file,
                file_len: len,
                file_base: base,
                end_offset: Some(next_base),
                index_interval_bytes,
            };
            let outcome = segment::scan(&target, 0, base).map_err(|e| LogError::fs(&path, e))?;
            if let Some((position, reason)) = &outcome.stopped {
                tracing::error!(file = %path.display(), position, "archived segment is damaged; serving its intact prefix: {reason}");
            }
            outcome
        }
    };
    let valid = outcome.valid_end;
    let mut seg = Segment::from_parts(archive, base, file, valid, outcome, true);
    seg.close_file();
    Ok(seg)
}

/// The archived segments of a partition whose first local segment starts at `local_base`,
/// oldest first; removes leftovers of an archiving that did not complete.
pub(super) fn load(
    io: &mut dyn Io,
    archive: &Path,
    local_base: i64,
    index_interval_bytes: u64,
) -> Result<VecDeque<Segment>, LogError> {
    let mut bases = Vec::new();
    let entries = match std::fs::read_dir(archive) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
        Err(e) => return Err(LogError::fs(archive, e)),
    };
    let mut changed = false;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::fs(archive, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            io.remove_file(&entry.path()).map_err(|e| LogError::fs(entry.path(), e))?;
            changed = true;
        } else if let Some(base) = segment::parse_log_name(name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let mut out = VecDeque::new();
    for (i, &base) in bases.iter().enumerate() {
        if base >= local_base {
            // Archived, but the local copy was not deleted yet: the local one stays.
            for p in [
                segment::log_path(archive, base),
                segment::index_path(archive, base),
                segment::time_index_path(archive, base),
            ] {
                match io.remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(LogError::fs(&p, e)),
                    _ => {}
                }
            }
            changed = true;
            continue;
        }
        let next = bases.get(i + 1).copied().filter(|&b| b < local_base).unwrap_or(local_base);
        out.push_back(open_archived(archive, base, next, index_interval_bytes)?);
    }
    if changed {
        sync_dir(io, archive)?;
    }
    Ok(out)
}

/// Reads from the archived segments, as `Partition::read` does from the local ones: whole
/// batches from the one holding `offset` (the first with records), about `max_bytes`. `None` if
/// no archived segment holds it or anything after it.
pub(super) fn read(
    archived: &VecDeque<Segment>,
    offset: i64,
    max_bytes: u64,
) -> Result<Option<super::ReadSlice>, LogError> {
    let i = archived.partition_point(|s| s.base_offset() <= offset).saturating_sub(1);
    for seg in archived.iter().skip(i) {
        let limit = seg.visible_len();
        let Some(found) = seg.find_offset(offset, limit)? else { continue };
        let Some(first) = seg.first_with_records(found, limit)? else { continue };
        let (len, next_offset) = seg.extent(&first, max_bytes, limit, seg.next_offset())?;
        return Ok(Some(super::ReadSlice {
            file: std::sync::Arc::clone(seg.file()?),
            position: first.position,
            len,
            first_offset: first.header.base_offset,
            next_offset,
        }));
    }
    Ok(None)
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
