//! The fallback backend: plain `pwritev` + `fdatasync`, one syscall at a time.
//!
//! Used where io_uring is blocked (Docker's default seccomp profile, `kernel.io_uring_disabled`,
//! gVisor). Same contract as every [`Io`], and the same [`Plan`]: each chain runs in order (a
//! file's writes, then its fsync), so group commit holds; only the parallelism across files is
//! lost.

use std::os::fd::BorrowedFd;

use super::plan::Plan;
use super::{Backend, Io, IoError, IoStats, Write, WriteCache};

#[derive(Debug, Default)]
pub struct FallbackIo {
    stats: IoStats,
    cache: WriteCache,
}

impl FallbackIo {
    pub fn new() -> Self {
        FallbackIo::default()
    }

    /// Writes that treat the page cache as `cache` says.
    pub fn with_cache(cache: WriteCache) -> Self {
        FallbackIo { cache, ..FallbackIo::default() }
    }
}

impl Io for FallbackIo {
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError> {
        self.stats.submits += 1;
        let plan = Plan::build(writes, syncs, self.cache);
        // Nothing ran asynchronously: `complete` runs every operation, chain by chain.
        plan.complete(&vec![None; plan.ops.len()])?;
        self.stats.count(writes, syncs.len());
        Ok(())
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn backend(&self) -> Backend {
        Backend::Fallback
    }
}
