//! The open files of a shard's segments, and the resources its segments share.
//!
//! Model: an active segment keeps its file open: it takes appends. A sealed segment's file is
//! opened on demand, by the first read that needs it, and stays open until the shard closes it:
//! whenever more than [`SegmentFiles::max`] sealed files of a shard are open, the shard closes
//! the least recently used ones, down to seven eighths of the maximum (see
//! `shard::Shard::close_idle_files`). Recovery leaves every sealed file closed. So a partition
//! costs one descriptor, plus whatever of its history is being read, however many segments it
//! has (a topic with `segment.ms=1` rolls at every append).
//!
//! The counters are atomics so that an engine can sum them across shards; each shard's are
//! only changed by its own thread.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::reserve::{ReserveBudget, ReservePolicy};

/// Open sealed-segment files of one shard, and the clock that orders their use.
#[derive(Debug)]
pub struct SegmentFiles {
    open: AtomicUsize,
    max: usize,
    clock: AtomicU64,
}

impl SegmentFiles {
    pub fn new(max: usize) -> SegmentFiles {
        SegmentFiles { open: AtomicUsize::new(0), max: max.max(1), clock: AtomicU64::new(0) }
    }

    /// Sealed files open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Sealed files the shard keeps open at most (between its turns).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether the shard should close some.
    pub fn over(&self) -> bool {
        self.open() > self.max
    }

    /// A new use: later uses get larger ticks.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a shard's segments share: the disk-space reservation budget and the sealed-file count.
#[derive(Debug)]
pub struct ShardDisk {
    pub reserve: ReserveBudget,
    pub files: SegmentFiles,
    /// Where partitions of archiving topics move old segments (see `log::archive`).
    pub archive_root: Option<std::path::PathBuf>,
}

impl ShardDisk {
    pub fn new(policy: ReservePolicy, sealed_files_max: usize) -> Arc<ShardDisk> {
        ShardDisk::with_archive(policy, sealed_files_max, None)
    }

    /// [`ShardDisk::new`] with an archive directory for archiving topics.
    pub fn with_archive(
        policy: ReservePolicy,
        sealed_files_max: usize,
        archive_root: Option<std::path::PathBuf>,
    ) -> Arc<ShardDisk> {
        Arc::new(ShardDisk {
            reserve: ReserveBudget::new(policy),
            files: SegmentFiles::new(sealed_files_max),
            archive_root,
        })
    }

    /// For a partition opened on its own (tests, tools): default limits of its own.
    pub fn standalone() -> Arc<ShardDisk> {
        ShardDisk::new(ReservePolicy::default(), SEALED_FILES_MAX)
    }
}

/// Default number of sealed-segment files a shard keeps open.
pub const SEALED_FILES_MAX: usize = 1024;
