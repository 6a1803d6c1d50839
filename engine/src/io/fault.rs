//! A fault-injecting [`Io`] for recovery tests: crash after the n-th fsync, torn writes, EIO, ENOSPC.
//!
//! It wraps a real backend writing real files, and decides per operation what reaches them:
//! - **crash after the n-th fsync**: from the moment the n-th fsync completed, nothing reaches
//!   the disk any more: every later write, fsync and file-system operation (create, truncate,
//!   reserve, rename, remove, directory sync) fails with a "simulated crash" error and changes
//!   nothing, so whatever the program does afterwards, the files stay as the crash left them.
//!   By default the files keep everything written before the crash (a process crash: the page
//!   cache survives). With `power_cut`, the crash also throws away every write not yet covered
//!   by an fsync of its file, by truncating each such file back to its length at its last fsync
//!   (a power cut: the page cache is lost). Reopening the directory afterwards is the restart.
//! - **crash after the n-th write**: the same, with the crash right after a write completes.
//! - **torn write**: the n-th write reaches the file only in part, then the machine "crashes" as
//!   above.
//! - **errors**: the n-th write, fsync or file creation fails with a chosen errno (EIO,
//!   ENOSPC, EMFILE, ...).
//!
//! Operations are counted one by one, writes per request and fsyncs per file, in the order a
//! backend would issue them (a submission's writes, then its fsyncs).

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Backend, Io, IoError, IoOp, IoStats, Write};

/// A torn write: the `write`-th write (1-based) keeps only its first `keep_bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornWrite {
    pub write: u64,
    pub keep_bytes: usize,
}

/// What to inject. Counts are 1-based; `None` injects nothing of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Drop every write and fsync after the n-th fsync has completed.
    pub crash_after_fsync: Option<u64>,
    /// Drop every write and fsync after the n-th write has completed.
    pub crash_after_write: Option<u64>,
    /// At the crash, also lose every write that no fsync of its file covered.
    pub power_cut: bool,
    pub torn_write: Option<TornWrite>,
    /// The n-th write fails with this errno, writing nothing.
    pub fail_write: Option<(u64, i32)>,
    /// The n-th fsync fails with this errno.
    pub fail_fsync: Option<(u64, i32)>,
    /// The n-th file creation fails with this errno.
    pub fail_create: Option<(u64, i32)>,
    /// Drop everything after the n-th other change to the file system (a truncation,
    /// reservation, removal, rename or directory sync) has completed.
    pub crash_after_file_op: Option<u64>,
}

/// Shared view of what the injector did, readable while the [`FaultIo`] is owned by a log.
#[derive(Debug, Default)]
pub struct FaultState {
    writes: AtomicU64,
    fsyncs: AtomicU64,
    creates: AtomicU64,
    /// File-system operations other than creation (truncate, reserve, rename, remove, sync a
    /// directory), performed or attempted.
    file_ops: AtomicU64,
    /// Per file (device and inode), for `power_cut`: its length at its last fsync and a
    /// descriptor of its own, present while it has writes that no fsync covered yet. Shared by
    /// every injector of one state, so that a crash in one shard cuts the power for all.
    unsynced: std::sync::Mutex<HashMap<(u64, u64), FileMark>>,
    /// Held by every operation from its crash check to its end, and by the crash itself: with
    /// several shards, an operation happens wholly before the crash or not at all (an fsync
    /// cannot "succeed" after another shard's power cut).
    gate: std::sync::Mutex<()>,
    crashed: AtomicBool,
    dropped: AtomicU64,
}

impl FaultState {
    fn unsynced(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), FileMark>> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes seen (performed, torn, failed or dropped).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Fsyncs seen (performed, failed or dropped).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::SeqCst)
    }

    /// True once the simulated crash has happened: from then on nothing reaches the files.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Files created (or attempted).
    pub fn creates(&self) -> u64 {
        self.creates.load(Ordering::SeqCst)
    }

    /// File-system operations other than creation, performed or attempted.
    pub fn file_ops(&self) -> u64 {
        self.file_ops.load(Ordering::SeqCst)
    }

    /// Operations refused since the crash.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Files a power cut would take back now (changed since their last fsync, still named).
    pub fn unsynced_files(&self) -> usize {
        self.unsynced().len()
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FaultIo<I: Io> {
    inner: I,
    plan: FaultPlan,
    state: Arc<FaultState>,
    stats: IoStats,
}

/// A file with unsynced writes: how long it was when last synced, and a duplicate of the
/// descriptor it was written through. The power cut truncates through that duplicate, so it
/// reaches exactly the file that was written, even after the program closed (and removed) it:
/// a descriptor number, or a device and inode number, can be handed to another file meanwhile
/// (in a test process, another test's file), which a power cut must never touch. Holding the
/// duplicate also keeps the inode number from being reused while the mark lives.
#[derive(Debug)]
struct FileMark {
    file: OwnedFd,
    synced_len: u64,
}

fn identity(fd: BorrowedFd<'_>) -> Option<(u64, u64, u64)> {
    // SAFETY: `libc::stat` is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid descriptor borrowed for this call; `st` is ours to write.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    (rc == 0).then_some((st.st_dev, st.st_ino, st.st_size as u64))
}

impl<I: Io> FaultIo<I> {
    pub fn new(inner: I, plan: FaultPlan) -> Self {
        FaultIo::with_state(inner, plan, Arc::new(FaultState::default()))
    }

    /// An injector sharing its counts, its crash and its power cut with every other one made
    /// with `state` (one per shard of an engine: the n-th operation is counted over all).
    pub fn with_state(inner: I, plan: FaultPlan, state: Arc<FaultState>) -> Self {
        FaultIo { inner, plan, state, stats: IoStats::default() }
    }

    pub fn state(&self) -> Arc<FaultState> {
        Arc::clone(&self.state)
    }

    fn write_one(&mut self, w: &Write<'_>) -> Result<(), IoError> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = self.state.writes.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash().map_err(|e| IoError::new(IoOp::Write, w.fd.as_raw_fd(), e))?;
        if let Some((at, errno)) = self.plan.fail_write {
            if at == n {
                return Err(IoError::new(
                    IoOp::Write,
                    w.fd.as_raw_fd(),
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
        }
        if let Some(torn) = self.plan.torn_write {
            if torn.write == n {
                let mut left = torn.keep_bytes.min(w.len());
                let mut kept: Vec<IoSlice<'_>> = Vec::new();
                for b in w.bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(b.len());
                    kept.push(IoSlice::new(&b[..take]));
                    left -= take;
                }
                let part = Write { fd: w.fd, offset: w.offset, bufs: &kept };
                self.inner.submit(std::slice::from_ref(&part), &[])?;
                self.state.crashed.store(true, Ordering::SeqCst);
                return Ok(());
            }
        }
        if self.plan.power_cut {
            self.mark_unsynced(w.fd).map_err(|e| IoError::new(IoOp::Write, w.fd.as_raw_fd(), e))?;
        }
        self.inner.submit(std::slice::from_ref(w), &[])?;
        self.stats.writes += 1;
        self.stats.write_bytes += w.len() as u64;
        if self.plan.crash_after_write == Some(n) {
            self.crash();
        }
        Ok(())
    }

    fn fsync_one(&mut self, fd: BorrowedFd<'_>) -> Result<(), IoError> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = self.state.fsyncs.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash().map_err(|e| IoError::new(IoOp::Fsync, fd.as_raw_fd(), e))?;
        if let Some((at, errno)) = self.plan.fail_fsync {
            if at == n {
                return Err(IoError::new(
                    IoOp::Fsync,
                    fd.as_raw_fd(),
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
        }
        self.inner.submit(&[], &[fd])?;
        self.stats.fsyncs += 1;
        if let Some((dev, ino, _)) = identity(fd) {
            self.state.unsynced().remove(&(dev, ino));
        }
        if self.plan.crash_after_fsync == Some(n) {
            self.crash();
        }
        Ok(())
    }

    /// After the crash nothing reaches the disk: every operation fails and is counted.
    fn refuse_after_crash(&self) -> std::io::Result<()> {
        if self.state.crashed() {
            self.state.dropped.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other("simulated crash: nothing reaches the disk any more"));
        }
        Ok(())
    }

    fn after_file_op(&mut self, n: u64) {
        if self.plan.crash_after_file_op == Some(n) {
            self.crash();
        }
    }

    fn crash(&mut self) {
        self.state.crashed.store(true, Ordering::SeqCst);
        if self.plan.power_cut {
            self.lose_unsynced_writes();
        }
    }

    /// Remembers, before its first unsynced change, how long the file behind `fd` was. Fails
    /// when no descriptor is left to keep one of the file (the change is then not made).
    fn mark_unsynced(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let Some((dev, ino, len)) = identity(fd) else { return Ok(()) };
        if let std::collections::hash_map::Entry::Vacant(slot) = self.state.unsynced().entry((dev, ino)) {
            slot.insert(FileMark { file: fd.try_clone_to_owned()?, synced_len: len });
        }
        Ok(())
    }

    /// Forgets the marks of files that no longer have a name (removed since): a power cut has
    /// nothing to take back from them, and their descriptors would keep their space taken.
    fn forget_removed(&self) {
        self.state.unsynced().retain(|_, mark| {
            // SAFETY: `libc::stat` is plain old data, for which all-zero bytes are valid.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `mark.file` is a descriptor this injector owns; `st` is ours to write.
            let rc = unsafe { libc::fstat(mark.file.as_raw_fd(), &mut st) };
            rc != 0 || st.st_nlink > 0
        });
    }

    /// The power cut: every file with unsynced writes goes back to its length at its last
    /// fsync, whether or not the program still has it open (the page cache is lost either way).
    fn lose_unsynced_writes(&mut self) {
        let marks: Vec<FileMark> = self.state.unsynced().drain().map(|(_, m)| m).collect();
        for mark in marks {
            // SAFETY: `mark.file` is a descriptor this injector owns, of the file written.
            let rc = unsafe { libc::ftruncate(mark.file.as_raw_fd(), mark.synced_len as libc::off_t) };
            assert_eq!(rc, 0, "power cut: ftruncate failed: {}", std::io::Error::last_os_error());
        }
    }
}

impl<I: Io> Io for FaultIo<I> {
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError> {
        self.stats.submits += 1;
        for w in writes {
            self.write_one(w)?;
        }
        for fd in syncs {
            self.fsync_one(*fd)?;
        }
        Ok(())
    }

    /// Counts only what reached the files.
    fn stats(&self) -> IoStats {
        self.stats
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn create_file(&mut self, path: &Path, replace: bool) -> std::io::Result<File> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = self.state.creates.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        if let Some((at, errno)) = self.plan.fail_create {
            if at == n {
                return Err(std::io::Error::from_raw_os_error(errno));
            }
        }
        self.inner.create_file(path, replace)
    }

    fn set_len(&mut self, file: &File, len: u64) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = state.file_ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        if self.plan.power_cut {
            // A file cut back (or extended) with unsynced writes pending keeps its mark: the
            // power cut still takes it back to its length at the last fsync. A file whose length
            // does not change (a reservation given back after a sync) needs no mark.
            let fd = file.as_fd();
            if identity(fd).is_some_and(|(_, _, size)| size != len) {
                self.mark_unsynced(fd)?;
            }
        }
        self.inner.set_len(file, len)?;
        self.after_file_op(n);
        Ok(())
    }

    fn reserve(&mut self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = state.file_ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        self.inner.reserve(file, offset, len)?;
        self.after_file_op(n);
        Ok(())
    }

    fn remove_file(&mut self, path: &Path) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = state.file_ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        self.inner.remove_file(path)?;
        self.forget_removed();
        self.after_file_op(n);
        Ok(())
    }

    fn remove_dir_all(&mut self, path: &Path) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = state.file_ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        self.inner.remove_dir_all(path)?;
        self.forget_removed();
        self.after_file_op(n);
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = state.file_ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        self.inner.rename(from, to)?;
        self.after_file_op(n);
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let _gate = state.gate();
        let n = state.file_ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.refuse_after_crash()?;
        self.inner.sync_dir(dir)?;
        self.after_file_op(n);
        Ok(())
    }
}
