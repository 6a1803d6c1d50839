//! Group commit: one I/O submission for the staged appends of many partitions.
//!
//! A shard calls [`commit`] once per turn of its loop with every partition that has staged
//! batches or unsynced data. All staged bytes become writes of one [`Io::submit`]; each partition
//! whose durability mode asks for it (always: anything unsynced; interval: unsynced and the
//! interval elapsed) adds one `fdatasync`. However many appends were staged, a partition costs one
//! write and at most one fsync per commit, which is what makes `always` affordable.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use super::{LogError, Partition};
use crate::io::{Io, Write};

/// What one commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Partitions whose staged batches were written.
    pub written: usize,
    /// Partitions that were fdatasynced.
    pub synced: usize,
}

/// Writes every staged batch of `partitions` and syncs those whose durability asks for it, in one
/// submission. On an I/O error every partition of the submission is failed: the error does not say
/// which file lost data, and guessing could acknowledge a lost write.
///
/// Returns `Err` if the submission failed or if any partition given is failed (failed partitions
/// are skipped). Healthy partitions advance either way: after the call, each partition's
/// [`Partition::high_watermark`] and [`Partition::failure`] tell what to acknowledge.
pub fn commit(
    io: &mut dyn Io,
    partitions: &mut [&mut Partition],
    now: Instant,
) -> Result<CommitOutcome, LogError> {
    commit_with(io, partitions, now, false)
}

pub(super) fn commit_with(
    io: &mut dyn Io,
    partitions: &mut [&mut Partition],
    now: Instant,
    force_sync: bool,
) -> Result<CommitOutcome, LogError> {
    let mut outcome = CommitOutcome::default();
    // Blocks for what is about to be written are reserved first (cheap: once per step).
    for p in partitions.iter_mut() {
        if p.failed.is_none() && p.has_staged() {
            p.reserve_ahead(io, now);
        }
    }
    let mut sync_flags = Vec::with_capacity(partitions.len());
    let result = {
        let mut slice_sets = Vec::with_capacity(partitions.len());
        for p in partitions.iter() {
            let syncs = p.failed.is_none() && (force_sync || p.wants_sync(now));
            sync_flags.push(syncs);
            slice_sets.push(if p.failed.is_none() { p.active().staged_slices() } else { Vec::new() });
        }
        let mut writes = Vec::new();
        let mut syncs = Vec::new();
        for ((p, slices), &sync) in partitions.iter().zip(&slice_sets).zip(&sync_flags) {
            let active = p.active();
            if !slices.is_empty() {
                writes.push(Write {
                    fd: active.active_file().as_fd(),
                    offset: active.written_len(),
                    bufs: slices,
                });
            }
            if sync {
                syncs.push(active.active_file().as_fd());
            }
        }
        outcome.written = writes.len();
        outcome.synced = syncs.len();
        if writes.is_empty() && syncs.is_empty() {
            Ok(())
        } else {
            io.submit(&writes, &syncs)
        }
    };
    match result {
        Ok(()) => {
            for (p, &synced) in partitions.iter_mut().zip(&sync_flags) {
                if p.failed.is_some() {
                    continue;
                }
                let active = p.active_mut();
                active.mark_written();
                let end = active.next_offset();
                p.written_end = end;
                if synced {
                    p.active_mut().mark_synced();
                    p.durable_end = end;
                    p.last_sync = now;
                }
                p.advance_high_watermark();
            }
            // A partition that failed earlier (in this commit's appends, say, when a roll
            // failed) took no part; its staged batches will never be acknowledged.
            match partitions.iter().find(|p| p.failed.is_some()) {
                Some(p) => Err(p.check_writable().expect_err("failed partition")),
                None => Ok(outcome),
            }
        }
        Err(e) => {
            let cause = Arc::new(e);
            let mut first = None;
            for p in partitions.iter_mut() {
                let err = p.fail(io, Arc::clone(&cause));
                first.get_or_insert(err);
            }
            Err(first.expect("a submission was made, so there is a partition"))
        }
    }
}
