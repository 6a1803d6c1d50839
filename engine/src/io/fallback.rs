//! The fallback backend: plain `pwritev` + `fdatasync`, one syscall at a time.
//!
//! Used where io_uring is blocked (Docker's default seccomp profile, `kernel.io_uring_disabled`,
//! gVisor). Same contract as every [`Io`]: all writes complete fully, then each listed file is
//! synced once. Group commit still holds, since a shard hands over all pending writes at once;
//! only the parallelism across files is lost.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{fdatasync, pwritev_all, Backend, Io, IoError, IoStats, Write};

#[derive(Debug, Default)]
pub struct FallbackIo {
    stats: IoStats,
}

impl FallbackIo {
    pub fn new() -> Self {
        FallbackIo::default()
    }
}

impl Io for FallbackIo {
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError> {
        self.stats.submits += 1;
        for w in writes {
            pwritev_all(w.fd, w.offset, w.bufs)?;
            self.stats.writes += 1;
            self.stats.write_bytes += w.len() as u64;
        }
        for fd in syncs {
            debug_assert!(fd.as_raw_fd() >= 0);
            fdatasync(*fd)?;
            self.stats.fsyncs += 1;
        }
        Ok(())
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn backend(&self) -> Backend {
        Backend::Fallback
    }
}
