//! The I/O layer: the only code in Spate that talks to io_uring.
//!
//! Model: a shard owns one [`Io`] and hands it, once per turn of its loop, every write that is
//! pending on every file it owns plus the files that must be made durable. [`Io::submit`] performs
//! the writes, then an `fdatasync` of each listed file *after* all of that file's writes, and
//! returns when everything has completed. That one call is the group commit: however many
//! appends were staged, each file is synced once.
//!
//! Implementations:
//! - [`uring::UringIo`]: one io_uring ring; per file a linked chain `writev -> ... -> fdatasync`,
//!   chains of different files run in parallel, one `io_uring_enter` for the whole group.
//! - [`fallback::FallbackIo`]: `pwritev` + `fdatasync`, for machines where io_uring is blocked.
//! - [`fault::FaultIo`]: wraps another implementation and injects crashes (writes dropped after
//!   the n-th fsync, torn writes) and errors (EIO, ENOSPC), for recovery tests.
//!
//! Guarantee: when `submit` returns `Ok`, every write has been fully written (short writes are
//! completed, never reported as success) and every listed file has been `fdatasync`ed after its
//! writes. When it returns `Err`, nothing can be assumed about any write of that call; callers
//! treat the error as fatal for the files involved (see `log::Partition`).
//!
//! Every other change the storage layers make to the disk also goes through the [`Io`] they
//! were given: creating, truncating, reserving, renaming and removing files, and syncing
//! directories ([`Io::create_file`] and the methods after it). Both real backends do these with
//! plain system calls (they are rare and off the append path); the fault injector can then
//! stop *everything* at a simulated crash, not just writes and fsyncs. Reads stay outside: they
//! change nothing.

pub mod fallback;
pub mod fault;
mod plan;
pub mod uring;

use std::fmt;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::str::FromStr;

/// Linux's limit on iovecs per `writev`; longer writes are split by the backends.
pub const IOV_MAX: usize = 1024;

/// The most bytes one write system call (or io_uring write) carries; longer writes are cut.
///
/// Measured (docs/ARCHITECTURE.md, "Write pieces"): on Linux 6.18 with ext4 in a VM, one 8 MiB
/// `pwritev` into the page cache took 4 to 8 times the CPU of the same bytes as 1 MiB writes
/// (time in `copy_folio_from_iter_atomic`): a write that covers an aligned 2 MiB range is given
/// 2 MiB folios, whose fresh memory the host backs page by page. Pieces of 1 MiB cost one more
/// system call or SQE per MiB and keep the copy at memory speed.
pub const WRITE_PIECE_BYTES: usize = 1 << 20;

/// Writes of at most this many bytes are written with `pwritev2` on the submitting thread
/// even by the io_uring backend. ext4 cannot issue a buffered write without blocking, so the
/// ring hands every write to an io-wq worker: for a small append that is two context switches
/// (shard to worker and back) for a copy of a few microseconds. Measured on the latency
/// scenario at 20,000 messages/s of 100 B: 1.3 io-wq switches per message before.
pub const INLINE_WRITE_BYTES: usize = 64 << 10;

/// `RWF_DONTCACHE` (Linux 6.14+, `include/uapi/linux/fs.h`): a buffered write whose pages
/// leave the page cache once they are written back.
pub const RWF_DONTCACHE: libc::c_int = 0x0000_0080;

/// How a backend's writes treat the page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteCache {
    /// Written pages stay cached until the kernel reclaims them.
    #[default]
    Keep,
    /// Writes carry [`RWF_DONTCACHE`], all but each write's partial last page: their pages are
    /// written back soon and then dropped, so large appends do not grow the page cache. A page
    /// begun by a cached write stays cached when a later write completes it: each append leaves
    /// at most its last page cached (see docs/ARCHITECTURE.md, "Uncached appends").
    /// Only where [`uncached_writes_supported`] said yes.
    Drop,
}

impl WriteCache {
    /// The `RWF_*` flags of every write.
    pub(crate) fn rw_flags(self) -> libc::c_int {
        match self {
            WriteCache::Keep => 0,
            WriteCache::Drop => RWF_DONTCACHE,
        }
    }
}

/// Whether the kernel and the file system under `dir` accept `RWF_DONTCACHE` writes: one byte
/// written to a scratch file there (removed again). Kernels before 6.14 and file systems
/// without support answer `EOPNOTSUPP` (or `EINVAL`): no.
pub fn uncached_writes_supported(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join(format!(".spate-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    let byte = [0u8; 1];
    let iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
    // SAFETY: one iovec over a live local buffer; the descriptor is open.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, 0, RWF_DONTCACHE) };
    let err = std::io::Error::last_os_error();
    drop(file);
    std::fs::remove_file(&path)?;
    match n {
        1 => Ok(true),
        _ if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => Ok(false),
        _ => Err(err),
    }
}

/// One positional write of a list of buffers, written back to back starting at `offset`.
#[derive(Debug)]
pub struct Write<'a> {
    pub fd: BorrowedFd<'a>,
    pub offset: u64,
    pub bufs: &'a [IoSlice<'a>],
}

impl Write<'_> {
    /// Total bytes this write covers.
    pub fn len(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.iter().all(|b| b.is_empty())
    }
}

/// Counters kept by every backend; the group-commit tests compare `fsyncs` with appends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Calls to [`Io::submit`].
    pub submits: u64,
    /// Write requests completed (a request split into several syscalls counts once).
    pub writes: u64,
    pub write_bytes: u64,
    /// `fdatasync` calls completed.
    pub fsyncs: u64,
    /// Operations that went through an io_uring ring (0 for the fallback).
    pub ring_ops: u64,
}

impl IoStats {
    /// Counts one completed submission of `writes` and `syncs` fsyncs.
    pub(crate) fn count(&mut self, writes: &[Write<'_>], syncs: usize) {
        self.writes += writes.len() as u64;
        self.write_bytes += writes.iter().map(|w| w.len() as u64).sum::<u64>();
        self.fsyncs += syncs as u64;
    }
}

/// Which operation of a submission failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Write,
    Fsync,
    Setup,
    /// Creating, truncating or removing a file, or syncing a directory.
    FileSystem,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Write => "write",
            IoOp::Fsync => "fdatasync",
            IoOp::Setup => "io_uring setup",
            IoOp::FileSystem => "file-system call",
        })
    }
}

/// An I/O failure, naming the operation and file descriptor; the OS error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub struct IoError {
    pub op: IoOp,
    pub fd: i32,
    #[source]
    pub source: std::io::Error,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fd < 0 {
            write!(f, "{} failed: {}", self.op, self.source)
        } else {
            write!(f, "{} on fd {} failed: {}", self.op, self.fd, self.source)
        }
    }
}

impl IoError {
    pub fn new(op: IoOp, fd: i32, source: std::io::Error) -> Self {
        IoError { op, fd, source }
    }

    /// A failed file-system call on `path`, kept with the path for the log line.
    pub fn file_system(path: &std::path::Path, source: std::io::Error) -> Self {
        let source = std::io::Error::new(source.kind(), format!("{}: {source}", path.display()));
        IoError { op: IoOp::FileSystem, fd: -1, source }
    }

    /// The errno, when the failure came from the kernel.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// The I/O interface every shard uses; see the module documentation for the contract.
pub trait Io: Send + fmt::Debug {
    /// Writes every request, then `fdatasync`s each of `syncs` after all writes to it.
    /// A file may appear in `syncs` without writes (to cover earlier unsynced writes).
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError>;

    /// Counters since creation.
    fn stats(&self) -> IoStats;

    /// The backend's name, for logs and metrics.
    fn backend(&self) -> Backend;

    /// Creates `path` open for reading and writing: a new file (failing if it exists), or with
    /// `replace`, emptied if it exists. The caller makes the directory entry durable.
    fn create_file(&mut self, path: &Path, replace: bool) -> std::io::Result<File> {
        fs_ops::create_file(path, replace)
    }

    /// Sets a file's length (cuts a torn tail, gives back reserved blocks past the end).
    fn set_len(&mut self, file: &File, len: u64) -> std::io::Result<()> {
        file.set_len(len)
    }

    /// Reserves `len` bytes of disk blocks from `offset` without changing the file's length
    /// (`fallocate` with `FALLOC_FL_KEEP_SIZE`).
    fn reserve(&mut self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        fs_ops::reserve(file, offset, len)
    }

    fn remove_file(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    /// Makes a directory's entries (created, renamed or removed files) durable.
    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}

/// The plain system calls behind the file-system methods of [`Io`].
pub(crate) mod fs_ops {
    use super::*;

    pub fn create_file(path: &Path, replace: bool) -> std::io::Result<File> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true);
        if replace {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        options.open(path)
    }

    pub fn reserve(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(start), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate on a descriptor the caller keeps open for this call; KEEP_SIZE
        // changes no byte of the file and not its length.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, start, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl<T: Io + ?Sized> Io for Box<T> {
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError> {
        (**self).submit(writes, syncs)
    }
    fn stats(&self) -> IoStats {
        (**self).stats()
    }
    fn backend(&self) -> Backend {
        (**self).backend()
    }
    fn create_file(&mut self, path: &Path, replace: bool) -> std::io::Result<File> {
        (**self).create_file(path, replace)
    }
    fn set_len(&mut self, file: &File, len: u64) -> std::io::Result<()> {
        (**self).set_len(file, len)
    }
    fn reserve(&mut self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        (**self).reserve(file, offset, len)
    }
    fn remove_file(&mut self, path: &Path) -> std::io::Result<()> {
        (**self).remove_file(path)
    }
    fn remove_dir_all(&mut self, path: &Path) -> std::io::Result<()> {
        (**self).remove_dir_all(path)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        (**self).rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        (**self).sync_dir(dir)
    }
}

/// A concrete backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Fallback,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "uring",
            Backend::Fallback => "fallback",
        })
    }
}

/// The start-up choice: `auto` tries io_uring and falls back with one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Uring,
    Fallback,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" => Ok(BackendChoice::Uring),
            "fallback" => Ok(BackendChoice::Fallback),
            other => Err(format!("unknown I/O backend {other:?}: expected auto, uring or fallback")),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Uring => "uring",
            BackendChoice::Fallback => "fallback",
        })
    }
}

/// Creates the backend for the calling thread (each shard thread calls this once: one ring per
/// shard). `Uring` fails if io_uring cannot be used; `Auto` then falls back, logging why once.
pub fn open(choice: BackendChoice) -> Result<Box<dyn Io>, IoError> {
    open_with(choice, WriteCache::Keep)
}

/// [`open`], with writes that treat the page cache as `cache` says.
pub fn open_with(choice: BackendChoice, cache: WriteCache) -> Result<Box<dyn Io>, IoError> {
    match choice {
        BackendChoice::Fallback => Ok(Box::new(fallback::FallbackIo::with_cache(cache))),
        BackendChoice::Uring => Ok(Box::new(uring::UringIo::with_cache(cache)?)),
        BackendChoice::Auto => match uring::UringIo::with_cache(cache) {
            Ok(io) => Ok(Box::new(io)),
            Err(err) if uring::is_unavailable(&err) => {
                tracing::warn!(
                    "io_uring unavailable ({}); using the fallback backend (pwritev + fdatasync)",
                    err.source
                );
                Ok(Box::new(fallback::FallbackIo::with_cache(cache)))
            }
            Err(err) => Err(err),
        },
    }
}

/// Resolves `Auto` to the backend this machine supports, without keeping a ring.
pub fn probe(choice: BackendChoice) -> Result<Backend, IoError> {
    Ok(open(choice)?.backend())
}

/// Writes `bufs` at `offset` with `pwritev2` and `flags` (`RWF_*`), completing short writes and
/// retrying `EINTR`. Shared by the fallback backend and by the io_uring backend's short-write
/// completion.
pub(crate) fn pwritev_all(
    fd: BorrowedFd<'_>,
    mut offset: u64,
    bufs: &[IoSlice<'_>],
    flags: libc::c_int,
) -> Result<(), IoError> {
    let raw = fd.as_raw_fd();
    // Owned cursor over the slices: (index of first unfinished slice, bytes done within it).
    let mut first = 0usize;
    let mut skip = 0usize;
    while first < bufs.len() {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity((bufs.len() - first).min(IOV_MAX));
        let mut room = WRITE_PIECE_BYTES;
        for (i, b) in bufs[first..].iter().take(IOV_MAX).enumerate() {
            let s: &[u8] = if i == 0 { &b[skip..] } else { b };
            let s = &s[..s.len().min(room)];
            iov.push(libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() });
            room -= s.len();
            if room == 0 {
                break;
            }
        }
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Err(IoError::new(IoOp::Write, raw, std::io::Error::from_raw_os_error(libc::EFBIG)));
        };
        // SAFETY: every iovec points into a slice borrowed for the duration of this call, with its
        // true length; `raw` is a valid open descriptor borrowed through `fd`.
        let n = unsafe { libc::pwritev2(raw, iov.as_ptr(), iov.len() as libc::c_int, off, flags) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(IoError::new(IoOp::Write, raw, err));
        }
        let mut n = n as usize;
        if n == 0 && iov.iter().any(|v| v.iov_len > 0) {
            return Err(IoError::new(IoOp::Write, raw, std::io::Error::from(std::io::ErrorKind::WriteZero)));
        }
        offset += n as u64;
        // Advance the cursor by n bytes.
        while first < bufs.len() {
            let left = bufs[first].len() - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                break;
            }
        }
    }
    Ok(())
}

/// `fdatasync`, retrying `EINTR`. Never retried after another error: after a failed fsync the
/// kernel may have dropped the dirty pages, so a retry that succeeds would lie (see
/// docs/segment-format.md, "Assumptions about the media").
pub(crate) fn fdatasync(fd: BorrowedFd<'_>) -> Result<(), IoError> {
    let raw = fd.as_raw_fd();
    loop {
        // SAFETY: `raw` is a valid open descriptor borrowed through `fd`.
        let rc = unsafe { libc::fdatasync(raw) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(IoError::new(IoOp::Fsync, raw, err));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
