//! The io_uring backend: one ring, linked `writev -> fdatasync` chains, one enter per round.
//!
//! Each [`Io::submit`] follows its [`Plan`]: per file that must be synced, a chain of linked SQEs
//! `writev(chunk 1) -> writev(chunk 2) -> ... -> fdatasync`; writes to files that need no sync go
//! unlinked. Chains of different files run in parallel inside the kernel; the submitting thread
//! makes one `io_uring_enter` per round (at most [`RING_ENTRIES`] SQEs of whole chains) and waits
//! for every completion of that round. A chain longer than the ring runs synchronously.
//! Pieces to be written uncached (`RWF_DONTCACHE`) and small writes are written with `pwritev2`
//! before the round (through the ring the first stayed cached, the second cost an io-wq round
//! trip each); the rest of their chain follows in the ring. When at most one chain is left, it
//! runs synchronously too: the ring's gain is chains side by side, and for one chain it only
//! adds the io-wq hop (buffered ext4 writes and fsyncs always run in io-wq workers).
//!
//! Memory safety rests on one rule: once an SQE is pushed, this code does not return until its
//! CQE has been reaped, because the kernel holds pointers into the caller's buffers and the
//! iovec array. If the ring becomes unusable with operations in flight, the process aborts:
//! returning would hand freed memory to the kernel.

use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::plan::{OpKind, Plan};
use super::{Backend, Io, IoError, IoOp, IoStats, Write, WriteCache};

/// Submission queue entries per ring. A round holds whole chains up to this many SQEs.
pub const RING_ENTRIES: u32 = 256;

/// One ring, owned by one shard thread.
pub struct UringIo {
    ring: IoUring,
    stats: IoStats,
    /// Tags every SQE of a submission, so a CQE that is not ours can never be mistaken for one.
    generation: u32,
    cache: WriteCache,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo").field("stats", &self.stats).finish_non_exhaustive()
    }
}

/// Whether a setup error means "io_uring cannot be used here" (as opposed to a real failure).
pub fn is_unavailable(err: &IoError) -> bool {
    err.op == IoOp::Setup
        && (matches!(
            err.raw_os_error(),
            Some(libc::EPERM | libc::ENOSYS | libc::EACCES | libc::ENOMEM | libc::EINVAL)
        ) || err.source.kind() == std::io::ErrorKind::Unsupported)
}

impl UringIo {
    /// Creates a ring and checks that the kernel supports every opcode this backend uses.
    pub fn new() -> Result<Self, IoError> {
        Self::with_cache(WriteCache::Keep)
    }

    /// [`UringIo::new`], with writes that treat the page cache as `cache` says.
    pub fn with_cache(cache: WriteCache) -> Result<Self, IoError> {
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| IoError::new(IoOp::Setup, -1, e))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| IoError::new(IoOp::Setup, ring.as_raw_fd(), e))?;
        for (code, name) in [(opcode::Writev::CODE, "writev"), (opcode::Fsync::CODE, "fsync")] {
            if !probe.is_supported(code) {
                return Err(IoError::new(
                    IoOp::Setup,
                    ring.as_raw_fd(),
                    std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        format!("io_uring lacks the {name} opcode"),
                    ),
                ));
            }
        }
        Ok(UringIo { ring, stats: IoStats::default(), generation: 0, cache })
    }

    /// Runs the chains `round` of `plan` and records each operation's result.
    fn run_round(
        &mut self,
        plan: &Plan<'_>,
        round: &[std::ops::Range<usize>],
        iovecs: &[libc::iovec],
        results: &mut [Option<i32>],
    ) {
        // Rounds are sized to the ring and every round is drained before the next, so the queue
        // is empty here and every push below fits.
        assert!(self.ring.submission().is_empty(), "io_uring submission queue not drained");
        let mut pushed = 0usize;
        for chain in round {
            for i in chain.clone() {
                if results[i].is_some() {
                    // Done before the round (uncached writes); only what follows is linked.
                    continue;
                }
                let op = &plan.ops[i];
                let entry = match &op.kind {
                    OpKind::Write { slices, offset, .. } => opcode::Writev::new(
                        types::Fd(op.fd),
                        iovecs[slices.start..].as_ptr(),
                        slices.len() as u32,
                    )
                    .offset(*offset)
                    .build(),
                    OpKind::Fsync => {
                        opcode::Fsync::new(types::Fd(op.fd)).flags(types::FsyncFlags::DATASYNC).build()
                    }
                };
                let mut entry = entry.user_data((u64::from(self.generation) << 32) | i as u64);
                if i + 1 < chain.end {
                    entry = entry.flags(squeue::Flags::IO_LINK);
                }
                // SAFETY: the iovecs, the buffers they point to and the file descriptors are
                // borrowed by `submit` for longer than this round, and this function does not
                // return before every pushed entry has completed (or the process aborts).
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    // Unreachable by the sizing above; entries already pushed are not yet
                    // submitted, and the ring cannot forget them, so stopping here is the only
                    // safe move.
                    abort_ring("submission queue full despite sizing");
                }
                pushed += 1;
            }
        }
        let mut done = 0usize;
        while done < pushed {
            match self.ring.submit_and_wait(pushed - done) {
                Ok(_) => {}
                // Interrupted, or the kernel is short of resources or has a full completion
                // queue: reap what is there and wait again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => abort_ring(&format!("io_uring_enter failed with operations in flight: {e}")),
            }
            for cqe in self.ring.completion() {
                let data = cqe.user_data();
                let index = (data & u64::from(u32::MAX)) as usize;
                if data >> 32 != u64::from(self.generation) || index >= results.len() {
                    tracing::error!(user_data = data, "ignoring an io_uring completion that is not ours");
                    continue;
                }
                results[index] = Some(cqe.result());
                done += 1;
                self.stats.ring_ops += 1;
            }
        }
    }
}

/// The ring can no longer be trusted with memory it points into: stop the process.
fn abort_ring(why: &str) -> ! {
    tracing::error!("{why}; aborting to keep the kernel from writing freed memory");
    eprintln!("spate: fatal: {why}");
    std::process::abort()
}

impl Io for UringIo {
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError> {
        self.stats.submits += 1;
        self.generation = self.generation.wrapping_add(1);
        let plan = Plan::build(writes, syncs, self.cache);
        // Every piece as one iovec array that lives until every round has completed.
        let iovecs: Vec<libc::iovec> = plan
            .slices
            .iter()
            .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
            .collect();
        let mut results: Vec<Option<i32>> = vec![None; plan.ops.len()];
        // Uncached pieces and small writes (`INLINE_WRITE_BYTES`) are written here, before the
        // round, and only the rest goes to the ring: on Linux 6.18 an io_uring write with RWF_DONTCACHE (run by an io-wq worker,
        // since ext4 buffered writes cannot be issued without blocking) kept its pages cached,
        // while pwritev2 dropped them (docs/ARCHITECTURE.md, "Uncached appends"). A file's fsync
        // still follows all its writes: these complete before the ring is entered.
        for (i, op) in plan.ops.iter().enumerate() {
            if let OpKind::Write { slices, offset, len, flags } = &op.kind {
                // Small writes too: through the ring they would cost an io-wq round trip.
                if *flags & super::RWF_DONTCACHE != 0 || *len <= super::INLINE_WRITE_BYTES {
                    // SAFETY: `op.fd` comes from a `BorrowedFd` the caller holds for this call.
                    let fd = unsafe { BorrowedFd::borrow_raw(op.fd) };
                    super::pwritev_all(fd, *offset, &plan.slices[slices.clone()], *flags)?;
                    results[i] = Some(*len as i32);
                }
            }
        }
        // The ring's gain is running chains side by side; one chain left (one file to sync,
        // or one write) would only wait the same for an io-wq round trip, so `complete` runs
        // it here.
        let left = plan.chains.iter().filter(|c| results[(*c).clone()].iter().any(Option::is_none)).count();
        let chains: &[std::ops::Range<usize>] = if left > 1 { &plan.chains } else { &[] };
        let mut round: Vec<std::ops::Range<usize>> = Vec::new();
        let mut round_len = 0usize;
        for chain in chains {
            if chain.len() > RING_ENTRIES as usize {
                // Left as `None`: `complete` runs it synchronously, in order.
                continue;
            }
            if round_len + chain.len() > RING_ENTRIES as usize {
                self.run_round(&plan, &round, &iovecs, &mut results);
                round.clear();
                round_len = 0;
            }
            round_len += chain.len();
            round.push(chain.clone());
        }
        if !round.is_empty() {
            self.run_round(&plan, &round, &iovecs, &mut results);
        }
        plan.complete(&results)?;
        self.stats.count(writes, syncs.len());
        Ok(())
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn backend(&self) -> Backend {
        Backend::Uring
    }
}
