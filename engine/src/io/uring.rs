//! The io_uring backend: one ring, linked `writev -> fdatasync` chains, one enter per group.
//!
//! Each [`Io::submit`] becomes, per file that must be synced, a chain of linked SQEs
//! `writev(chunk 1) -> writev(chunk 2) -> ... -> fdatasync`; writes to files that need no sync go
//! unlinked. Chains of different files run in parallel inside the kernel; the submitting thread
//! makes one `io_uring_enter` per round and waits for every completion of that round.
//!
//! A short write breaks a link chain: the kernel cancels the rest with `-ECANCELED`. That case is
//! completed here with plain `pwritev`/`fdatasync` so that callers never see a short write.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::{fdatasync, pwritev_all, Backend, Io, IoError, IoOp, IoStats, Write, IOV_MAX};

/// Submission queue entries per ring. A round holds whole chains up to this many SQEs.
const RING_ENTRIES: u32 = 256;

#[derive(Debug)]
enum OpKind {
    /// Chunk of request `write` (at most IOV_MAX slices), covering `slices` of its bufs.
    Write {
        write: usize,
        slices: std::ops::Range<usize>,
        offset: u64,
        len: usize,
    },
    Fsync,
}

#[derive(Debug)]
struct Op {
    fd: i32,
    kind: OpKind,
}

/// One ring, owned by one shard thread.
pub struct UringIo {
    ring: IoUring,
    stats: IoStats,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
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
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| IoError::new(IoOp::Setup, -1, e))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| IoError::new(IoOp::Setup, ring.as_raw_fd(), e))?;
        for (code, name) in [
            (opcode::Writev::CODE, "writev"),
            (opcode::Fsync::CODE, "fsync"),
        ] {
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
        Ok(UringIo {
            ring,
            stats: IoStats::default(),
        })
    }

    /// Runs `ops[range]`, a sequence of whole chains, as one round; fills `results`.
    fn run_round(
        &mut self,
        ops: &[Op],
        chains: &[std::ops::Range<usize>],
        iovecs: &[libc::iovec],
        iov_base: &[usize],
        results: &mut [i32],
    ) -> Result<(), IoError> {
        let mut pushed = 0usize;
        for chain in chains {
            for i in chain.clone() {
                let op = &ops[i];
                let mut entry = match &op.kind {
                    OpKind::Write {
                        write,
                        slices,
                        offset,
                        ..
                    } => {
                        let start = iov_base[*write] + slices.start;
                        opcode::Writev::new(
                            types::Fd(op.fd),
                            iovecs[start..].as_ptr(),
                            slices.len() as u32,
                        )
                        .offset(*offset)
                        .build()
                    }
                    OpKind::Fsync => opcode::Fsync::new(types::Fd(op.fd))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                };
                entry = entry.user_data(i as u64);
                if i + 1 < chain.end {
                    entry = entry.flags(squeue::Flags::IO_LINK);
                }
                // SAFETY: the iovecs and the buffers they point to are borrowed by `submit` and
                // outlive this round, which waits below for every completion it pushed; the file
                // descriptors are borrowed for the same span.
                unsafe { self.ring.submission().push(&entry) }.map_err(|_| {
                    IoError::new(
                        IoOp::Setup,
                        -1,
                        std::io::Error::other("io_uring submission queue full"),
                    )
                })?;
                pushed += 1;
            }
        }
        // Wait for every completion of the round before returning: the kernel holds pointers into
        // the caller's buffers until then. `io_uring_enter` errors other than EINTR (EBUSY,
        // EBADR) arrive before the SQEs are consumed, so nothing is left in flight on that path.
        let mut done = 0usize;
        while done < pushed {
            match self.ring.submit_and_wait(pushed - done) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(IoError::new(IoOp::Setup, self.ring.as_raw_fd(), e)),
            }
            for cqe in self.ring.completion() {
                results[cqe.user_data() as usize] = cqe.result();
                done += 1;
            }
        }
        Ok(())
    }
}

/// Skips the first `n` bytes of `bufs[slices]`, returning the remaining slices.
fn remainder<'a>(
    bufs: &'a [IoSlice<'a>],
    slices: std::ops::Range<usize>,
    mut n: usize,
) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    for b in &bufs[slices] {
        let s: &'a [u8] = b;
        if n >= s.len() {
            n -= s.len();
        } else {
            out.push(IoSlice::new(&s[n..]));
            n = 0;
        }
    }
    out
}

impl Io for UringIo {
    fn submit(&mut self, writes: &[Write<'_>], syncs: &[BorrowedFd<'_>]) -> Result<(), IoError> {
        self.stats.submits += 1;
        // Flatten all buffers into one iovec array that lives until every round has completed.
        let mut iovecs: Vec<libc::iovec> = Vec::new();
        let mut iov_base = Vec::with_capacity(writes.len());
        for w in writes {
            iov_base.push(iovecs.len());
            iovecs.extend(w.bufs.iter().map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            }));
        }
        // Build chains: for each synced file its writes then the fsync; unsynced writes alone.
        let mut ops: Vec<Op> = Vec::new();
        let mut chains: Vec<std::ops::Range<usize>> = Vec::new();
        let push_chunks = |ops: &mut Vec<Op>, wi: usize, w: &Write<'_>| {
            let mut offset = w.offset;
            let mut start = 0;
            while start < w.bufs.len() {
                let end = (start + IOV_MAX).min(w.bufs.len());
                let len: usize = w.bufs[start..end].iter().map(|b| b.len()).sum();
                ops.push(Op {
                    fd: w.fd.as_raw_fd(),
                    kind: OpKind::Write {
                        write: wi,
                        slices: start..end,
                        offset,
                        len,
                    },
                });
                offset += len as u64;
                start = end;
            }
        };
        // Writes grouped by file, in request order, so each synced file gets one chain.
        let mut by_fd: HashMap<i32, Vec<usize>> = HashMap::new();
        for (wi, w) in writes.iter().enumerate() {
            if !w.is_empty() {
                by_fd.entry(w.fd.as_raw_fd()).or_default().push(wi);
            }
        }
        for fd in syncs.iter().map(|f| f.as_raw_fd()) {
            let start = ops.len();
            for wi in by_fd.remove(&fd).unwrap_or_default() {
                push_chunks(&mut ops, wi, &writes[wi]);
            }
            ops.push(Op {
                fd,
                kind: OpKind::Fsync,
            });
            chains.push(start..ops.len());
        }
        // Files that are not synced: each write chunk stands alone.
        let mut unsynced: Vec<usize> = by_fd.into_values().flatten().collect();
        unsynced.sort_unstable();
        for wi in unsynced {
            let start = ops.len();
            push_chunks(&mut ops, wi, &writes[wi]);
            chains.extend((start..ops.len()).map(|i| i..i + 1));
        }

        // Rounds of whole chains; a chain longer than the ring is run synchronously instead.
        let mut results = vec![0i32; ops.len()];
        let mut round: Vec<std::ops::Range<usize>> = Vec::new();
        let mut round_len = 0usize;
        let mut oversized: Vec<std::ops::Range<usize>> = Vec::new();
        for chain in &chains {
            if chain.len() > RING_ENTRIES as usize {
                oversized.push(chain.clone());
                continue;
            }
            if round_len + chain.len() > RING_ENTRIES as usize {
                self.run_round(&ops, &round, &iovecs, &iov_base, &mut results)?;
                round.clear();
                round_len = 0;
            }
            round_len += chain.len();
            round.push(chain.clone());
        }
        if !round.is_empty() {
            self.run_round(&ops, &round, &iovecs, &iov_base, &mut results)?;
        }

        // Check results chain by chain, completing short writes and what they cancelled.
        for chain in &chains {
            let run_sync = oversized.contains(chain);
            let mut broken = false;
            for i in chain.clone() {
                let op = &ops[i];
                // SAFETY: `op.fd` was taken from a `BorrowedFd` the caller holds across this call.
                let fd = unsafe { BorrowedFd::borrow_raw(op.fd) };
                let res = results[i];
                match &op.kind {
                    OpKind::Write {
                        write,
                        slices,
                        offset,
                        len,
                    } => {
                        let bufs = writes[*write].bufs;
                        if run_sync || (broken && res == -libc::ECANCELED) {
                            pwritev_all(fd, *offset, &bufs[slices.clone()])?;
                        } else if res < 0 {
                            return Err(IoError::new(
                                IoOp::Write,
                                op.fd,
                                std::io::Error::from_raw_os_error(-res),
                            ));
                        } else if (res as usize) < *len {
                            let rest = remainder(bufs, slices.clone(), res as usize);
                            pwritev_all(fd, offset + res as u64, &rest)?;
                            broken = true;
                        }
                    }
                    OpKind::Fsync => {
                        if run_sync || (broken && res == -libc::ECANCELED) {
                            fdatasync(fd)?;
                        } else if res < 0 {
                            return Err(IoError::new(
                                IoOp::Fsync,
                                op.fd,
                                std::io::Error::from_raw_os_error(-res),
                            ));
                        }
                    }
                }
            }
        }
        self.stats.writes += writes.len() as u64;
        self.stats.write_bytes += writes.iter().map(|w| w.len() as u64).sum::<u64>();
        self.stats.fsyncs += syncs.len() as u64;
        Ok(())
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn backend(&self) -> Backend {
        Backend::Uring
    }
}
