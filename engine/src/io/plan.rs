//! The order of a submission, shared by every backend: which operations, in which chains.
//!
//! A submission becomes, for each file to sync, one *chain*: all writes to that file in request
//! order, then its `fdatasync`. Writes to files that are not synced stand alone. A chain runs in
//! order — io_uring links its entries, the fallback runs them one after the other — so a file's
//! fsync never starts before its writes have completed, which is what durability under `always`
//! rests on. Chains are independent and may run in parallel.
//!
//! Every write is cut into pieces at file offsets that are multiples of [`WRITE_PIECE_BYTES`]
//! (and at [`IOV_MAX`] slices), each one operation (see the constant for why the size is
//! capped). Under [`WriteCache::Drop`] a write is also cut before its partial last page, and
//! every piece that ends on a page boundary is written with `RWF_DONTCACHE`; only the partial
//! last page is written cached, so that the next append into that page finds it in memory
//! instead of reading it back from disk.
//!
//! [`Plan::complete`] turns the results of running a plan (some operations may not have run at
//! all) into the submission's result, doing synchronously whatever is missing: an operation
//! that did not run, the rest of a short write, and what a short write cancelled in its chain.

use std::collections::HashMap;
use std::io::IoSlice;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{fdatasync, pwritev_all, IoError, IoOp, Write, WriteCache, IOV_MAX, WRITE_PIECE_BYTES};

/// Page size assumed for `RWF_DONTCACHE` pieces (a larger page only makes fewer pieces end
/// on a page boundary; nothing depends on it for correctness).
const PAGE_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// The plan's slices `slices`, written back to back at `offset` (`len` bytes) with the
    /// `RWF_*` flags `flags`.
    Write {
        slices: Range<usize>,
        offset: u64,
        len: usize,
        flags: libc::c_int,
    },
    Fsync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub fd: i32,
    pub kind: OpKind,
}

/// Operations in chain order; `chains` partitions `ops` into consecutive ranges. `slices` are
/// the writes' buffers cut at piece boundaries, in operation order.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    pub ops: Vec<Op>,
    pub chains: Vec<Range<usize>>,
    pub slices: Vec<IoSlice<'a>>,
    cache: WriteCache,
}

impl<'a> Plan<'a> {
    pub fn build(writes: &[Write<'a>], syncs: &[BorrowedFd<'_>], cache: WriteCache) -> Plan<'a> {
        let mut plan = Plan { cache, ..Plan::default() };
        let mut by_fd: HashMap<i32, Vec<usize>> = HashMap::new();
        for (wi, w) in writes.iter().enumerate() {
            if !w.is_empty() {
                by_fd.entry(w.fd.as_raw_fd()).or_default().push(wi);
            }
        }
        for fd in syncs.iter().map(|f| f.as_raw_fd()) {
            let start = plan.ops.len();
            for wi in by_fd.remove(&fd).unwrap_or_default() {
                plan.push_write(&writes[wi]);
            }
            plan.ops.push(Op { fd, kind: OpKind::Fsync });
            plan.chains.push(start..plan.ops.len());
        }
        let mut unsynced: Vec<usize> = by_fd.into_values().flatten().collect();
        unsynced.sort_unstable();
        for wi in unsynced {
            let start = plan.ops.len();
            plan.push_write(&writes[wi]);
            plan.chains.extend((start..plan.ops.len()).map(|i| i..i + 1));
        }
        plan
    }

    fn push_write(&mut self, w: &Write<'a>) {
        let fd = w.fd.as_raw_fd();
        let mut offset = w.offset;
        let (mut start, mut len) = (self.slices.len(), 0usize);
        let tail = self.tail_cut(w.offset, w.offset + w.len() as u64);
        // Bytes to the next cut: the next multiple of the piece size in the file, or the cut
        // before the write's partial last page.
        let room = |at: u64| {
            let piece = WRITE_PIECE_BYTES - (at % WRITE_PIECE_BYTES as u64) as usize;
            match tail {
                Some(cut) if cut > at => piece.min((cut - at) as usize),
                _ => piece,
            }
        };
        for b in w.bufs {
            let mut rest: &'a [u8] = b;
            while !rest.is_empty() {
                let take = rest.len().min(room(offset) - len);
                let (now, later) = rest.split_at(take);
                self.slices.push(IoSlice::new(now));
                len += take;
                rest = later;
                if len == room(offset) || self.slices.len() - start == IOV_MAX {
                    self.push_piece(fd, start..self.slices.len(), offset, len);
                    offset += len as u64;
                    (start, len) = (self.slices.len(), 0);
                }
            }
        }
        if len > 0 {
            self.push_piece(fd, start..self.slices.len(), offset, len);
        }
    }

    /// Under [`WriteCache::Drop`], where a write from `start` to `end` is cut so that only its
    /// partial last page is written cached: at the last page boundary before `end`, if the piece
    /// ending there holds at least one whole page (a smaller one only completes a page that is
    /// cached already, and is not worth a system call of its own). Without this cut a write
    /// that stays within one piece would be cached whole, and every fresh page it fills would
    /// pay what fresh memory costs (see docs/ARCHITECTURE.md, "Uncached appends").
    fn tail_cut(&self, start: u64, end: u64) -> Option<u64> {
        if self.cache != WriteCache::Drop || end % PAGE_BYTES == 0 {
            return None;
        }
        let cut = end - end % PAGE_BYTES;
        let piece_start = start.max(cut - cut % WRITE_PIECE_BYTES as u64);
        (cut % WRITE_PIECE_BYTES as u64 != 0 && cut >= piece_start + PAGE_BYTES).then_some(cut)
    }

    fn push_piece(&mut self, fd: i32, slices: Range<usize>, offset: u64, len: usize) {
        let ends_on_page = (offset + len as u64) % PAGE_BYTES == 0;
        let flags = if ends_on_page { self.cache.rw_flags() } else { 0 };
        self.ops.push(Op { fd, kind: OpKind::Write { slices, offset, len, flags } });
    }

    /// Finishes a run of this plan. `results[i]` is the kernel's result for operation `i`
    /// (bytes written, 0 for an fsync, or `-errno`), or `None` if it did not run. Runs what is
    /// missing synchronously and returns the first real error.
    pub fn complete(&self, results: &[Option<i32>]) -> Result<(), IoError> {
        debug_assert_eq!(results.len(), self.ops.len());
        for chain in &self.chains {
            // After a short write the kernel cancels the rest of the chain; those run here.
            let mut broken = false;
            for i in chain.clone() {
                let op = &self.ops[i];
                // SAFETY: `op.fd` was taken from a `BorrowedFd` that the caller of `Io::submit`
                // holds for the whole call, and `complete` runs within that call.
                let fd = unsafe { BorrowedFd::borrow_raw(op.fd) };
                let res = results[i];
                let rerun = res.is_none() || (broken && res == Some(-libc::ECANCELED));
                match (&op.kind, res) {
                    (OpKind::Write { slices, offset, flags, .. }, _) if rerun => {
                        pwritev_all(fd, *offset, &self.slices[slices.clone()], *flags)?;
                    }
                    (OpKind::Fsync, _) if rerun => fdatasync(fd)?,
                    (OpKind::Write { .. }, Some(r)) if r < 0 => {
                        return Err(IoError::new(IoOp::Write, op.fd, std::io::Error::from_raw_os_error(-r)));
                    }
                    (OpKind::Fsync, Some(r)) if r < 0 => {
                        return Err(IoError::new(IoOp::Fsync, op.fd, std::io::Error::from_raw_os_error(-r)));
                    }
                    (OpKind::Write { slices, offset, len, flags }, Some(r)) if (r as usize) < *len => {
                        let rest = remainder(&self.slices[slices.clone()], r as usize);
                        pwritev_all(fd, offset + r as u64, &rest, *flags)?;
                        broken = true;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The slices left after skipping the first `n` bytes.
fn remainder<'a>(bufs: &'a [IoSlice<'a>], mut n: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    for b in bufs {
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;

    use super::*;

    fn scratch(dir: &tempfile::TempDir, name: &str) -> File {
        File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    #[test]
    fn each_synced_file_is_one_chain_with_its_writes_before_its_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (scratch(&dir, "a"), scratch(&dir, "b"), scratch(&dir, "c"));
        let one = [IoSlice::new(b"x")];
        let many: Vec<IoSlice<'_>> = (0..IOV_MAX + 3).map(|_| IoSlice::new(b"yy")).collect();
        let writes = [
            Write { fd: a.as_fd(), offset: 0, bufs: &one },
            Write { fd: b.as_fd(), offset: 0, bufs: &many },
            Write { fd: a.as_fd(), offset: 1, bufs: &one },
            Write { fd: c.as_fd(), offset: 0, bufs: &one },
        ];
        let plan = Plan::build(&writes, &[b.as_fd(), a.as_fd()], WriteCache::Keep);
        let (fa, fb, fc) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
        let w = |fd, slices: Range<usize>, offset, len| Op {
            fd,
            kind: OpKind::Write { slices, offset, len, flags: 0 },
        };
        let sync = |fd| Op { fd, kind: OpKind::Fsync };
        let m = IOV_MAX;
        assert_eq!(
            plan.ops,
            vec![
                // b: split at IOV_MAX slices, offsets continue, then its fsync.
                w(fb, 0..m, 0, 2 * m),
                w(fb, m..m + 3, 2 * m as u64, 6),
                sync(fb),
                // a: both writes in request order, then its fsync.
                w(fa, m + 3..m + 4, 0, 1),
                w(fa, m + 4..m + 5, 1, 1),
                sync(fa),
                // c is not synced: alone.
                w(fc, m + 5..m + 6, 0, 1),
            ]
        );
        assert_eq!(plan.chains, vec![0..3, 3..6, 6..7]);
    }

    #[test]
    fn writes_are_cut_at_piece_boundaries_of_the_file_and_only_whole_pages_go_uncached() {
        let dir = tempfile::tempdir().unwrap();
        let f = scratch(&dir, "f");
        // Slices that straddle piece boundaries: 0.75, 1.5 and 0.5 pieces (2.75 pieces in all),
        // written at offset 100, so the first piece ends at the first boundary in the file.
        let p = WRITE_PIECE_BYTES;
        let data: Vec<Vec<u8>> = [p * 3 / 4, p * 3 / 2, p / 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 7 + j % 251) as u8).collect())
            .collect();
        let slices: Vec<IoSlice<'_>> = data.iter().map(|d| IoSlice::new(d)).collect();
        let writes = [Write { fd: f.as_fd(), offset: 100, bufs: &slices }];
        for cache in [WriteCache::Keep, WriteCache::Drop] {
            let plan = Plan::build(&writes, &[f.as_fd()], cache);
            let pieces: Vec<(u64, usize, bool)> = plan
                .ops
                .iter()
                .filter_map(|op| match &op.kind {
                    OpKind::Write { slices, offset, len, flags } => {
                        let sum: usize = plan.slices[slices.clone()].iter().map(|s| s.len()).sum();
                        assert_eq!(sum, *len);
                        Some((*offset, *len, *flags & super::super::RWF_DONTCACHE != 0))
                    }
                    OpKind::Fsync => None,
                })
                .collect();
            let total = p * 11 / 4;
            let drop = cache == WriteCache::Drop;
            let mut expected = vec![(100, p - 100, drop), (p as u64, p, drop)];
            if drop {
                // Cut before the partial last page: only those 100 bytes are written cached.
                expected.extend([(2 * p as u64, total - 2 * p, true), (total as u64, 100, false)]);
            } else {
                expected.push((2 * p as u64, total + 100 - 2 * p, false));
            }
            assert_eq!(pieces, expected, "{cache:?}");
            assert_eq!(plan.chains, vec![0..expected.len() + 1]);
            // Run synchronously, the pieces put every byte where the unsplit write would have.
            std::fs::write(dir.path().join("f"), b"").unwrap();
            plan.complete(&vec![None; plan.ops.len()]).unwrap();
            let written = std::fs::read(dir.path().join("f")).unwrap();
            assert_eq!(&written[100..], data.concat().as_slice());
        }
    }

    /// (offset, length, uncached) of each write operation of `plan`.
    fn pieces(plan: &Plan<'_>) -> Vec<(u64, usize, bool)> {
        plan.ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::Write { offset, len, flags, .. } => {
                    Some((*offset, *len, *flags & super::super::RWF_DONTCACHE != 0))
                }
                OpKind::Fsync => None,
            })
            .collect()
    }

    #[test]
    fn a_write_within_one_piece_is_cached_only_in_its_partial_last_page() {
        let dir = tempfile::tempdir().unwrap();
        let f = scratch(&dir, "f");
        let data = vec![7u8; 20_000];
        let bufs = [IoSlice::new(&data[..8]), IoSlice::new(&data[8..])];
        let at = |offset| [Write { fd: f.as_fd(), offset, bufs: &bufs }];
        // From 5,000 to 25,000: whole pages up to 24,576 go uncached, the last 424 bytes cached.
        let plan = Plan::build(&at(5_000), &[], WriteCache::Drop);
        assert_eq!(pieces(&plan), vec![(5_000, 19_576, true), (24_576, 424, false)]);
        // Ending on a page boundary: one uncached piece.
        let plan = Plan::build(&at(4_576), &[], WriteCache::Drop);
        assert_eq!(pieces(&plan), vec![(4_576, 20_000, true)]);
        // Cached mode, or a write that only completes the page it starts in: one cached piece.
        let plan = Plan::build(&at(5_000), &[], WriteCache::Keep);
        assert_eq!(pieces(&plan), vec![(5_000, 20_000, false)]);
        let small = [IoSlice::new(&data[..200])];
        let plan =
            Plan::build(&[Write { fd: f.as_fd(), offset: 4_000, bufs: &small }], &[], WriteCache::Drop);
        assert_eq!(pieces(&plan), vec![(4_000, 200, false)]);
        // The cut splits a slice; run, the pieces put every byte where the whole write would.
        let plan = Plan::build(&at(4_088), &[], WriteCache::Drop);
        assert_eq!(pieces(&plan), vec![(4_088, 16_392, true), (20_480, 3_608, false)]);
        plan.complete(&vec![None; plan.ops.len()]).unwrap();
        assert_eq!(&std::fs::read(dir.path().join("f")).unwrap()[4_088..], &data[..]);
    }

    #[test]
    fn a_short_write_is_completed_with_what_it_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let f = scratch(&dir, "f");
        let parts = [IoSlice::new(b"hello "), IoSlice::new(b"world")];
        let tail = [IoSlice::new(b"!")];
        let writes = [
            Write { fd: f.as_fd(), offset: 0, bufs: &parts },
            Write { fd: f.as_fd(), offset: 11, bufs: &tail },
        ];
        let plan = Plan::build(&writes, &[f.as_fd()], WriteCache::Keep);
        assert_eq!(plan.ops.len(), 3);
        // The kernel wrote 4 bytes of the first write and cancelled the rest of the chain.
        std::fs::write(dir.path().join("f"), b"hell").unwrap();
        plan.complete(&[Some(4), Some(-libc::ECANCELED), Some(-libc::ECANCELED)]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello world!");
    }

    #[test]
    fn errors_are_reported_and_unexplained_cancellations_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = scratch(&dir, "f");
        let data = [IoSlice::new(b"abc")];
        let writes = [Write { fd: f.as_fd(), offset: 0, bufs: &data }];
        let plan = Plan::build(&writes, &[f.as_fd()], WriteCache::Keep);
        let err = plan.complete(&[Some(-libc::ENOSPC), Some(-libc::ECANCELED)]).unwrap_err();
        assert_eq!((err.op, err.raw_os_error()), (IoOp::Write, Some(libc::ENOSPC)));
        let err = plan.complete(&[Some(3), Some(-libc::EIO)]).unwrap_err();
        assert_eq!((err.op, err.raw_os_error()), (IoOp::Fsync, Some(libc::EIO)));
        // A cancellation without a short write before it is not ours to paper over.
        let err = plan.complete(&[Some(3), Some(-libc::ECANCELED)]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
    }

    #[test]
    fn operations_that_did_not_run_run_synchronously_in_chain_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = scratch(&dir, "f");
        let data = [IoSlice::new(b"abc")];
        let writes = [Write { fd: f.as_fd(), offset: 5, bufs: &data }];
        let plan = Plan::build(&writes, &[f.as_fd()], WriteCache::Keep);
        plan.complete(&[None, None]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"\0\0\0\0\0abc");
    }
}
