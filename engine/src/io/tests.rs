use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsFd;

use super::fault::{FaultIo, FaultPlan, TornWrite};
use super::*;

/// The backends this machine can run; io_uring is skipped (with a note) where the kernel refuses.
pub(crate) fn backends() -> Vec<Box<dyn Io>> {
    let mut out: Vec<Box<dyn Io>> = vec![Box::new(fallback::FallbackIo::new())];
    match uring::UringIo::new() {
        Ok(io) => out.push(Box::new(io)),
        Err(e) if std::env::var_os("SPATE_REQUIRE_URING").is_some() => {
            panic!("SPATE_REQUIRE_URING is set but io_uring is unavailable: {e}")
        }
        Err(e) => eprintln!("io_uring backend skipped: {e}"),
    }
    out
}

/// Both backends with writes that treat the page cache as `cache` says (io_uring where the
/// kernel allows it, as for [`backends`]).
pub(crate) fn backends_with(cache: WriteCache) -> Vec<Box<dyn Io>> {
    let mut out: Vec<Box<dyn Io>> = vec![Box::new(fallback::FallbackIo::with_cache(cache))];
    if let Ok(io) = uring::UringIo::with_cache(cache) {
        out.push(Box::new(io));
    }
    out
}

/// Pages of `file` resident in the page cache, by `mincore` over a mapping of it.
fn resident_pages(file: &File, len: usize) -> usize {
    use std::os::fd::AsRawFd;
    let page = 4096;
    let pages = len.div_ceil(page);
    // SAFETY: a private read-only mapping of an open file, unmapped below; `vec` has one byte per
    // page of it, as mincore requires.
    unsafe {
        let map =
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED);
        let mut vec = vec![0u8; pages];
        assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
        libc::munmap(map, len);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

/// `Uring` where CI requires io_uring, else `Auto` (which may fall back).
pub(crate) fn uring_choice() -> BackendChoice {
    if std::env::var_os("SPATE_REQUIRE_URING").is_some() {
        BackendChoice::Uring
    } else {
        BackendChoice::Auto
    }
}

fn file(dir: &tempfile::TempDir, name: &str) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(dir.path().join(name))
        .unwrap()
}

#[test]
fn writes_and_syncs_many_files_in_one_submission() {
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a");
        let b = file(&dir, "b");
        let c = file(&dir, "c");
        // More slices than IOV_MAX forces chunking; slices of varied length check ordering.
        let pieces: Vec<Vec<u8>> = (0..IOV_MAX * 2 + 7).map(|i| vec![(i % 251) as u8; 1 + i % 13]).collect();
        let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let expect_a: Vec<u8> = pieces.concat();
        let b1 = b"hello ".to_vec();
        let b2 = b"world".to_vec();
        let b1s = [IoSlice::new(&b1)];
        let b2s = [IoSlice::new(&b2)];
        let c1 = vec![7u8; 100_000];
        let c1s = [IoSlice::new(&c1)];
        let writes = [
            Write { fd: a.as_fd(), offset: 0, bufs: &slices },
            Write { fd: b.as_fd(), offset: 0, bufs: &b1s },
            Write { fd: b.as_fd(), offset: 6, bufs: &b2s },
            Write { fd: c.as_fd(), offset: 4096, bufs: &c1s },
        ];
        io.submit(&writes, &[a.as_fd(), b.as_fd()]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), expect_a, "{}", io.backend());
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"hello world");
        let got_c = std::fs::read(dir.path().join("c")).unwrap();
        assert_eq!(got_c.len(), 4096 + 100_000);
        assert!(got_c[..4096].iter().all(|&x| x == 0) && got_c[4096..].iter().all(|&x| x == 7));
        let s = io.stats();
        assert_eq!((s.submits, s.writes, s.fsyncs), (1, 4, 2), "{}", io.backend());
        assert_eq!(s.write_bytes, (expect_a.len() + 11 + 100_000) as u64);
    }
}

#[test]
fn sync_without_writes_and_empty_submission() {
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a");
        io.submit(&[], &[a.as_fd()]).unwrap();
        io.submit(&[], &[]).unwrap();
        assert_eq!(io.stats().fsyncs, 1);
    }
}

#[test]
fn fsync_of_a_bad_descriptor_is_a_typed_error() {
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let ro = File::open(&path).unwrap();
        let data = [IoSlice::new(b"abc")];
        let err = io.submit(&[Write { fd: ro.as_fd(), offset: 0, bufs: &data }], &[ro.as_fd()]).unwrap_err();
        assert_eq!(err.op, IoOp::Write, "{}: {err}", io.backend());
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}

#[test]
fn backend_choice_parses_and_auto_resolves() {
    assert_eq!("auto".parse::<BackendChoice>().unwrap(), BackendChoice::Auto);
    assert_eq!("uring".parse::<BackendChoice>().unwrap(), BackendChoice::Uring);
    assert_eq!("fallback".parse::<BackendChoice>().unwrap(), BackendChoice::Fallback);
    let err = "epoll".parse::<BackendChoice>().unwrap_err();
    assert!(err.contains("auto, uring or fallback"), "{err}");
    assert_eq!(probe(BackendChoice::Fallback).unwrap(), Backend::Fallback);
    let auto = probe(BackendChoice::Auto).unwrap();
    match uring::UringIo::new() {
        Ok(_) => assert_eq!(auto, Backend::Uring),
        Err(_) => assert_eq!(auto, Backend::Fallback),
    }
}

#[test]
fn unavailable_errors_are_recognised() {
    for errno in [libc::EPERM, libc::ENOSYS] {
        let e = IoError::new(IoOp::Setup, -1, std::io::Error::from_raw_os_error(errno));
        assert!(uring::is_unavailable(&e));
    }
    let missing = IoError::new(IoOp::Setup, -1, std::io::Error::new(std::io::ErrorKind::Unsupported, "x"));
    assert!(uring::is_unavailable(&missing));
    let eio = IoError::new(IoOp::Fsync, 3, std::io::Error::from_raw_os_error(libc::EIO));
    assert!(!uring::is_unavailable(&eio));
}

#[test]
fn fault_io_drops_everything_after_the_nth_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let a = file(&dir, "a");
    let mut io = FaultIo::new(
        fallback::FallbackIo::new(),
        FaultPlan { crash_after_fsync: Some(2), ..Default::default() },
    );
    let state = io.state();
    for (i, chunk) in [b"aa", b"bb", b"cc"].iter().enumerate() {
        let bufs = [IoSlice::new(*chunk)];
        let done = io.submit(&[Write { fd: a.as_fd(), offset: 2 * i as u64, bufs: &bufs }], &[a.as_fd()]);
        assert_eq!(done.is_ok(), i < 2, "the third submission comes after the crash");
    }
    assert!(state.crashed());
    assert_eq!(state.dropped(), 1, "the third write is refused (and the submission ends there)");
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"aabb");
    assert_eq!(io.stats().fsyncs, 2);
    // Nothing else reaches the disk either: no file created, truncated, renamed or removed.
    let path = dir.path().join("new");
    assert!(io.create_file(&path, false).is_err());
    assert!(!path.exists());
    assert!(io.set_len(&a, 0).is_err());
    assert!(io.rename(&dir.path().join("a"), &path).is_err());
    assert!(io.remove_file(&dir.path().join("a")).is_err());
    assert!(io.sync_dir(dir.path()).is_err());
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"aabb");
    assert_eq!(state.dropped(), 6);
}

#[test]
fn fault_io_fails_the_nth_file_creation() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan { fail_create: Some((2, libc::EMFILE)), ..Default::default() };
    let mut io = FaultIo::new(fallback::FallbackIo::new(), plan);
    io.create_file(&dir.path().join("one"), false).unwrap();
    let err = io.create_file(&dir.path().join("two"), false).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
    assert!(!dir.path().join("two").exists());
    io.create_file(&dir.path().join("two"), false).unwrap();
    assert_eq!(io.state().creates(), 3);
}

#[test]
fn fault_io_tears_a_write_and_fails_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let a = file(&dir, "a");
    let torn = TornWrite { write: 2, keep_bytes: 3 };
    let mut io =
        FaultIo::new(fallback::FallbackIo::new(), FaultPlan { torn_write: Some(torn), ..Default::default() });
    let one = [IoSlice::new(b"0123")];
    let two = [IoSlice::new(b"45"), IoSlice::new(b"6789")];
    io.submit(&[Write { fd: a.as_fd(), offset: 0, bufs: &one }], &[]).unwrap();
    // The torn write "succeeds", and the machine is gone before the fsync.
    let err = io.submit(&[Write { fd: a.as_fd(), offset: 4, bufs: &two }], &[a.as_fd()]).unwrap_err();
    assert_eq!(err.op, IoOp::Fsync);
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"0123456");
    assert!(io.state().crashed());

    for (plan, op, errno) in [
        (FaultPlan { fail_write: Some((1, libc::ENOSPC)), ..Default::default() }, IoOp::Write, libc::ENOSPC),
        (FaultPlan { fail_fsync: Some((1, libc::EIO)), ..Default::default() }, IoOp::Fsync, libc::EIO),
    ] {
        let b = file(&dir, "b");
        let mut io = FaultIo::new(fallback::FallbackIo::new(), plan);
        let err = io.submit(&[Write { fd: b.as_fd(), offset: 0, bufs: &one }], &[b.as_fd()]).unwrap_err();
        assert_eq!((err.op, err.raw_os_error()), (op, Some(errno)));
    }
}

#[test]
fn a_chain_longer_than_the_ring_runs_synchronously_and_completely() {
    // One write of more than RING_ENTRIES * IOV_MAX slices: its chain cannot fit in one round.
    let count = (uring::RING_ENTRIES as usize + 1) * IOV_MAX + 5;
    let bytes: Vec<u8> = (0..count).map(|i| (i % 251) as u8).collect();
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir, "big");
        let slices: Vec<IoSlice<'_>> = bytes.chunks(1).map(IoSlice::new).collect();
        io.submit(&[Write { fd: f.as_fd(), offset: 0, bufs: &slices }], &[f.as_fd()]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("big")).unwrap(), bytes, "{}", io.backend());
        assert_eq!(io.stats().fsyncs, 1);
    }
}

#[test]
fn writes_larger_than_a_piece_land_whole_through_every_backend() {
    // One slice of 2.5 pieces and a small one after it, at an odd offset: both backends cut
    // them into pieces (and `pwritev_all` caps each call), and every byte lands in place.
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..WRITE_PIECE_BYTES * 5 / 2).map(|i| (i % 253) as u8).collect();
    let mut all = backends();
    all.extend(backends_with(WriteCache::Drop));
    for (n, mut io) in all.into_iter().enumerate() {
        let f = file(&dir, &format!("f{n}"));
        let bufs = [IoSlice::new(&big), IoSlice::new(b"tail")];
        io.submit(&[Write { fd: f.as_fd(), offset: 3, bufs: &bufs }], &[f.as_fd()]).unwrap();
        let got = std::fs::read(dir.path().join(format!("f{n}"))).unwrap();
        assert_eq!(got.len(), 3 + big.len() + 4, "{:?}", io.backend());
        assert!(got[3..3 + big.len()] == big[..] && &got[3 + big.len()..] == b"tail", "{:?}", io.backend());
    }
    let f = file(&dir, "direct");
    pwritev_all(f.as_fd(), 0, &[IoSlice::new(&big)], 0).unwrap();
    assert!(std::fs::read(dir.path().join("direct")).unwrap() == big);
}

/// A scratch directory whose file system takes `RWF_DONTCACHE` writes; `None` (with a note)
/// where it does not, and the test is skipped.
fn uncached_dir() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    if uncached_writes_supported(dir.path()).unwrap() {
        return Some(dir);
    }
    eprintln!("RWF_DONTCACHE unsupported here: skipped");
    None
}

#[test]
fn uncached_writes_leave_the_page_cache_once_synced_and_cached_ones_stay() {
    let Some(dir) = uncached_dir() else { return };
    let data: Vec<u8> = (0..8 * WRITE_PIECE_BYTES).map(|i| (i % 241) as u8).collect();
    let pages = data.len() / 4096;
    for (cache, mut io) in backends_with(WriteCache::Drop)
        .into_iter()
        .map(|io| (WriteCache::Drop, io))
        .chain(backends_with(WriteCache::Keep).into_iter().map(|io| (WriteCache::Keep, io)))
    {
        let name = format!("{:?}-{cache:?}", io.backend());
        let f = file(&dir, &name);
        let bufs = [IoSlice::new(&data)];
        io.submit(&[Write { fd: f.as_fd(), offset: 0, bufs: &bufs }], &[f.as_fd()]).unwrap();
        let resident = resident_pages(&f, data.len());
        match cache {
            // Written back by the fsync, then dropped: at most a few pages linger.
            WriteCache::Drop => assert!(resident * 10 < pages, "{name}: {resident} of {pages} pages cached"),
            WriteCache::Keep => {
                assert!(resident * 10 > pages * 9, "{name}: {resident} of {pages} pages cached")
            }
        }
        assert!(std::fs::read(dir.path().join(&name)).unwrap() == data, "{name}");
    }
}

#[test]
fn small_writes_and_lone_chains_skip_the_ring_and_parallel_chains_use_it() {
    let Ok(mut io) = uring::UringIo::new() else {
        eprintln!("io_uring unavailable: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (f, g) = (file(&dir, "f"), file(&dir, "g"));
    let small = vec![1u8; 100];
    io.submit(&[Write { fd: f.as_fd(), offset: 0, bufs: &[IoSlice::new(&small)] }], &[]).unwrap();
    assert_eq!(io.stats().ring_ops, 0, "a 100-byte write is written inline");
    let large = vec![2u8; 2 * INLINE_WRITE_BYTES];
    io.submit(&[Write { fd: f.as_fd(), offset: 100, bufs: &[IoSlice::new(&large)] }], &[f.as_fd()]).unwrap();
    assert_eq!(io.stats().ring_ops, 0, "one file's write and fsync, one chain, run inline");
    // Two files to sync: two chains, side by side in the ring.
    let end = 100 + large.len() as u64;
    io.submit(
        &[
            Write { fd: f.as_fd(), offset: end, bufs: &[IoSlice::new(&large)] },
            Write { fd: g.as_fd(), offset: 0, bufs: &[IoSlice::new(&large)] },
        ],
        &[f.as_fd(), g.as_fd()],
    )
    .unwrap();
    assert_eq!(io.stats().ring_ops, 4, "two chains of a cached write and an fsync each");
    let got = std::fs::read(dir.path().join("f")).unwrap();
    assert_eq!(got.len(), 100 + 2 * large.len());
    assert!(got[..100].iter().all(|&b| b == 1) && got[100..].iter().all(|&b| b == 2));
    assert_eq!(std::fs::read(dir.path().join("g")).unwrap(), large);
}

/// Descriptor number and inode of an open file.
fn fd_and_inode(f: &File) -> (i32, u64) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    (f.as_raw_fd(), f.metadata().unwrap().ino())
}

#[test]
fn a_power_cut_cuts_back_the_files_it_wrote_and_never_another_one() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan { crash_after_write: Some(4), power_cut: true, ..Default::default() };
    let mut io = FaultIo::new(fallback::FallbackIo::new(), plan);
    let write = |io: &mut FaultIo<fallback::FallbackIo>, f: &File, offset: u64, bytes: &[u8]| {
        let bufs = [IoSlice::new(bytes)];
        io.submit(&[Write { fd: f.as_fd(), offset, bufs: &bufs }], &[])
    };
    // `gone` takes an unsynced write, then is closed and removed. A file created after it
    // usually gets its descriptor number and, on ext4 or xfs (not on tmpfs or btrfs), its inode
    // number back; the power cut must not touch that file, which it never wrote. (With the
    // injector holding a descriptor of `gone`, its inode number cannot come back.)
    let gone = file(&dir, "gone");
    let was = fd_and_inode(&gone);
    write(&mut io, &gone, 0, b"gg").unwrap();
    drop(gone);
    std::fs::remove_file(dir.path().join("gone")).unwrap();
    let mut other = None;
    for i in 0..64 {
        let f = file(&dir, &format!("other{i}"));
        std::fs::write(dir.path().join(format!("other{i}")), b"untouched").unwrap();
        let same = fd_and_inode(&f) == was;
        other = Some((i, f));
        if same {
            break;
        }
    }
    let (i, other) = other.unwrap();
    // `kept` is synced at 2 bytes, then takes 2 unsynced ones and is closed before the crash:
    // the power cut still loses them (the page cache does not care that a descriptor closed).
    let kept = file(&dir, "kept");
    let bufs = [IoSlice::new(b"kk")];
    io.submit(&[Write { fd: kept.as_fd(), offset: 0, bufs: &bufs }], &[kept.as_fd()]).unwrap();
    write(&mut io, &kept, 2, b"KK").unwrap();
    drop(kept);
    let last = file(&dir, "last");
    write(&mut io, &last, 0, b"ll").unwrap();
    assert!(io.state().crashed(), "the fourth write is the crash");
    assert_eq!(std::fs::read(dir.path().join("kept")).unwrap(), b"kk", "back to its last fsync");
    assert_eq!(std::fs::read(dir.path().join("last")).unwrap(), b"", "never synced");
    assert_eq!(std::fs::read(dir.path().join(format!("other{i}"))).unwrap(), b"untouched");
    drop(other);
}

#[test]
fn appends_that_end_inside_a_page_leave_only_their_last_page_cached() {
    let Some(dir) = uncached_dir() else { return };
    // Appends of 100,000 bytes, each synced, as group commits of a few batches write them:
    // almost none ends on a page boundary or crosses a piece boundary of the file.
    let chunk: Vec<u8> = (0..100_000).map(|i| (i % 239) as u8).collect();
    const APPENDS: usize = 80;
    for mut io in backends_with(WriteCache::Drop) {
        let name = format!("{:?}", io.backend());
        let f = file(&dir, &name);
        for i in 0..APPENDS {
            let bufs = [IoSlice::new(&chunk[..8]), IoSlice::new(&chunk[8..])];
            let offset = (i * chunk.len()) as u64;
            io.submit(&[Write { fd: f.as_fd(), offset, bufs: &bufs }], &[f.as_fd()]).unwrap();
        }
        let len = APPENDS * chunk.len();
        let (resident, pages) = (resident_pages(&f, len), len.div_ceil(4096));
        // What stays is each append's partial last page, written cached: the next append's
        // uncached write completes that page but does not drop a page it found cached.
        assert!(resident <= APPENDS, "{name}: {resident} of {pages} pages still cached");
        assert!(std::fs::read(dir.path().join(&name)).unwrap() == chunk.repeat(APPENDS), "{name}");
    }
}

#[test]
fn a_power_cut_keeps_marks_only_for_named_files_changed_since_their_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan { power_cut: true, ..Default::default() };
    let mut io = FaultIo::new(fallback::FallbackIo::new(), plan);
    let state = io.state();
    let (a, b) = (file(&dir, "a"), file(&dir, "b"));
    let bufs = [IoSlice::new(b"data")];
    for f in [&a, &b] {
        io.submit(&[Write { fd: f.as_fd(), offset: 0, bufs: &bufs }], &[]).unwrap();
    }
    assert_eq!(state.unsynced_files(), 2);
    io.submit(&[], &[a.as_fd()]).unwrap();
    assert_eq!(state.unsynced_files(), 1, "the fsync of a covers its write");
    io.remove_file(&dir.path().join("b")).unwrap();
    assert_eq!(state.unsynced_files(), 0, "b is gone: nothing to take back, no descriptor kept");
    io.set_len(&a, 4).unwrap();
    assert_eq!(state.unsynced_files(), 0, "a length that does not change is no change");
    io.set_len(&a, 2).unwrap();
    assert_eq!(state.unsynced_files(), 1);
}
