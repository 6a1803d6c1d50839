use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::io::fallback::FallbackIo;
use crate::io::fault::{FaultIo, FaultPlan, TornWrite};
use crate::io::Io;
use crate::record::{batches, BatchBuilder, BatchOptions, Compression, Record, RecordError};

/// A batch of `n` records whose values are `"{tag}-{i}"`, all stamped `timestamp`.
fn batch(tag: &str, n: usize, timestamp: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    let values: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    for v in &values {
        b.push(&Record { timestamp, key: Some(tag.as_bytes()), value: Some(v.as_bytes()), headers: &[] });
    }
    b.finish()
}

/// A record read back: (offset, key, value).
pub(super) type ReadRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record readable from `from` on, in order, through the partition's reads (compressed
/// batches decoded); each read must make progress.
pub(super) fn records_from(p: &Partition, from: i64) -> Vec<ReadRecord> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let slice = p.read(offset, 1 << 20).unwrap();
        if slice.len == 0 {
            return out;
        }
        let mut bytes = Vec::new();
        slice.read_into(&mut bytes).unwrap();
        for b in batches(&bytes) {
            let b = b.unwrap();
            let mut buf = Vec::new();
            for r in b.records_in(&mut buf, 1 << 24).unwrap() {
                let r = r.unwrap();
                if r.offset >= from {
                    out.push((r.offset, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec)));
                }
            }
        }
        assert!(slice.next_offset > offset, "reads make progress");
        offset = slice.next_offset;
    }
}

/// Every (offset, value) readable from the partition, in order.
fn read_all(p: &Partition) -> Vec<(i64, Vec<u8>)> {
    records_from(p, p.log_start_offset()).into_iter().map(|(o, _, v)| (o, v.unwrap())).collect()
}

/// Runs `f` with the log output of this thread captured; returns its result and everything
/// logged. One global subscriber serves every test thread: thread-local subscribers would race
/// with tracing's per-callsite interest cache when tests run in parallel.
fn with_captured_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    thread_local! {
        static CAPTURE: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
    }
    struct ThreadWriter;
    impl std::io::Write for ThreadWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some(buf) = c.borrow_mut().as_mut() {
                    buf.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(|| ThreadWriter).finish();
        // Another test binary's subscriber may already be installed; then nothing is captured
        // and the assertions on log lines say so.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = f();
    let bytes = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (out, String::from_utf8(bytes).unwrap())
}

fn small_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        batch_bytes_max: 2048,
        durability,
        ..LogConfig::default()
    }
}

fn backends() -> Vec<Box<dyn Io>> {
    crate::io::tests::backends()
}

#[test]
fn append_commit_read_round_trip_on_both_backends() {
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partition::open(dir.path(), LogConfig::default(), &mut *io).unwrap();
        let now = SystemTime::now();
        let a = p.append(&mut *io, batch("a", 3, 10), now).unwrap();
        let b = p.append(&mut *io, batch("b", 2, 11), now).unwrap();
        assert_eq!((a.base_offset, a.last_offset, b.base_offset, b.last_offset), (0, 2, 3, 4));
        // Staged is not visible, and not acknowledged.
        assert_eq!(p.high_watermark(), 0);
        assert_eq!(read_all(&p), vec![]);
        let out = commit(&mut *io, &mut [&mut p], Instant::now()).unwrap();
        assert_eq!(out, CommitOutcome { written: 1, synced: 1 });
        assert_eq!(p.high_watermark(), 5);
        let values: Vec<_> =
            read_all(&p).into_iter().map(|(o, v)| (o, String::from_utf8(v).unwrap())).collect();
        assert_eq!(
            values,
            vec![
                (0, "a-0".into()),
                (1, "a-1".into()),
                (2, "a-2".into()),
                (3, "b-0".into()),
                (4, "b-1".into())
            ]
        );
        // A read in the middle of a batch starts at that batch.
        let mid = p.read(4, 1).unwrap();
        assert_eq!((mid.first_offset, mid.next_offset), (3, 5));
        // Reading at the end is empty; past it, out of range.
        assert_eq!(p.read(5, 100).unwrap().len, 0);
        assert!(matches!(p.read(6, 100), Err(LogError::OffsetOutOfRange { requested: 6, start: 0, end: 5 })));
        drop(p);
        let p = Partition::open(dir.path(), LogConfig::default(), &mut *io).unwrap();
        assert_eq!(p.next_offset(), 5);
        assert_eq!(read_all(&p).len(), 5, "{}", io.backend());
    }
}

#[test]
fn batches_are_staged_from_the_callers_buffer_and_written_with_the_assigned_offsets() {
    // As a Kafka frame carries them: batches inside a larger buffer, each with the client's
    // base offset 0.
    let (a, b) = (batch("a", 3, 1), batch("b", 2, 1));
    let mut frame = b"request header".to_vec();
    let at_a = frame.len();
    frame.extend_from_slice(&a);
    let at_b = frame.len();
    frame.extend_from_slice(&b);
    frame.extend_from_slice(b"trailing fields");
    let frame = bytes::Bytes::from(frame);
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partition::open(dir.path(), LogConfig::default(), &mut *io).unwrap();
        let now = SystemTime::now();
        p.append(&mut *io, frame.slice(at_a..at_b), now).unwrap();
        p.append(&mut *io, frame.slice(at_b..at_b + b.len()), now).unwrap();
        // Staged without a copy: the bodies the write will take are the frame's own bytes,
        // behind base offsets the log owns.
        let slices = p.active().staged_slices();
        assert_eq!(slices.len(), 4);
        assert_eq!(slices[1].as_ptr(), frame[at_a + 8..].as_ptr());
        assert_eq!(slices[3].as_ptr(), frame[at_b + 8..].as_ptr());
        assert_eq!(&slices[2][..], &3i64.to_be_bytes());
        drop(slices);
        commit(&mut *io, &mut [&mut p], Instant::now()).unwrap();
        // The caller's bytes are untouched; the file has the assigned offsets and valid CRCs.
        assert_eq!(&frame[at_b..at_b + 8], &0i64.to_be_bytes());
        let offsets: Vec<i64> = read_all(&p).into_iter().map(|(o, _)| o).collect();
        assert_eq!(offsets, vec![0, 1, 2, 3, 4], "{}", io.backend());
        drop(p);
        let p = Partition::open(dir.path(), LogConfig::default(), &mut *io).unwrap();
        assert_eq!(p.next_offset(), 5, "{}", io.backend());
    }
}

#[test]
fn rejects_bad_batches_with_typed_errors() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), small_config(Durability::Always), &mut io).unwrap();
    let now = SystemTime::now();
    let mut corrupt = batch("x", 2, 1);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(p.append(&mut io, corrupt, now), Err(LogError::InvalidBatch(_))));
    let mut long = batch("x", 1, 1);
    long.push(0);
    assert!(matches!(p.append(&mut io, long, now), Err(LogError::BatchRejected(_))));
    assert!(matches!(p.append(&mut io, vec![1, 2, 3], now), Err(LogError::InvalidBatch(_))));
    let big = batch(&"y".repeat(3000), 1, 1);
    assert!(matches!(p.append(&mut io, big, now), Err(LogError::BatchTooLarge { .. })));
    assert_eq!(p.next_offset(), 0, "nothing was assigned offsets");
}

#[test]
fn rolls_by_size_and_age_and_reopens_from_index_files() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Never);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    let t0 = SystemTime::now();
    for i in 0..150 {
        p.append(&mut io, batch(&format!("k{i}"), 4, 1000 + i), t0).unwrap();
        commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    }
    let segs = p.segments().len();
    assert!(segs >= 4, "150 batches of ~125 B in 4 KiB segments roll several times, got {segs}");
    assert!(p.segments().all(|s| s.len() <= 4096));
    for s in p.segments().take(segs - 1) {
        assert!(s.is_sealed());
        assert!(crate::segment::index_path(dir.path(), s.base_offset()).exists());
    }
    // Roll by age: the active segment is older than segment_age at the next append.
    let aged = LogConfig { segment_age: Duration::from_secs(60), ..config.clone() };
    p.set_config(aged).unwrap();
    p.append(&mut io, batch("late", 1, 5000), t0 + Duration::from_secs(3600)).unwrap();
    assert_eq!(p.segments().len(), segs + 1);
    p.flush(&mut io).unwrap();
    let before = read_all(&p);
    assert_eq!(before.len(), 601);
    let indexes: Vec<_> = p.segments().map(|s| (s.offset_index().clone(), s.time_index().clone())).collect();
    drop(p);
    let p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!(read_all(&p), before);
    let reopened: Vec<_> = p.segments().map(|s| (s.offset_index().clone(), s.time_index().clone())).collect();
    // Sealed segments' indexes come back from their files unchanged.
    assert_eq!(reopened[..segs], indexes[..segs]);
    // Every offset is found by the index + scan lookup.
    for (offset, value) in &before {
        let slice = p.read(*offset, 1).unwrap();
        let mut bytes = Vec::new();
        slice.read_into(&mut bytes).unwrap();
        let b = crate::record::Batch::parse(&bytes).unwrap();
        let r = b.records().map(|r| r.unwrap()).find(|r| r.offset == *offset).unwrap();
        assert_eq!(r.value.unwrap(), &value[..]);
    }
}

#[test]
fn lookup_by_timestamp() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), small_config(Durability::Always), &mut io).unwrap();
    let now = SystemTime::now();
    // Timestamps 100, 110, ..., with one out-of-order batch (105 after 130).
    let stamps = [100, 110, 120, 130, 105, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 240];
    let mut offsets = Vec::new();
    for (i, ts) in stamps.iter().enumerate() {
        for _ in 0..3 {
            offsets.push((p.append(&mut io, batch(&format!("t{i}"), 2, *ts), now).unwrap().base_offset, *ts));
        }
    }
    p.flush(&mut io).unwrap();
    assert!(p.segments().len() > 1);
    let expect = |target: i64| offsets.iter().find(|(_, ts)| *ts >= target).map(|(o, ts)| (*o, *ts));
    for target in [0, 100, 101, 105, 106, 130, 131, 175, 240] {
        assert_eq!(p.offset_for_timestamp(target).unwrap(), expect(target), "target {target}");
    }
    assert_eq!(p.offset_for_timestamp(241).unwrap(), None);
}

#[test]
fn retention_by_size_and_age_advances_the_log_start() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Never);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    let now_ms = 1_700_000_000_000i64;
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms as u64);
    // Old records first (two hours old), then fresh ones.
    for i in 0..80 {
        let ts = if i < 40 { now_ms - 7_200_000 } else { now_ms };
        p.append(&mut io, batch(&format!("r{i}"), 4, ts), now).unwrap();
    }
    p.flush(&mut io).unwrap();
    let total = p.size_bytes();
    let segs = p.segments().len();
    // Age: one hour. Only segments holding nothing newer than an hour go.
    p.set_config(LogConfig { retention_age: Some(Duration::from_secs(3600)), ..config.clone() }).unwrap();
    let out = p.enforce_retention(&mut io, now).unwrap();
    assert!(out.segments_deleted >= 1);
    assert_eq!(p.log_start_offset(), out.log_start_offset);
    let start = p.log_start_offset();
    assert!(start > 0 && start <= 160, "old records are offsets 0..160, start {start}");
    assert!(matches!(p.read(0, 100), Err(LogError::OffsetOutOfRange { requested: 0, .. })));
    assert!(matches!(p.read(start - 1, 100), Err(LogError::OffsetOutOfRange { .. })));
    assert!(p.read(start, 100).unwrap().len > 0);
    assert!(!crate::segment::log_path(dir.path(), 0).exists());
    // Size: a segment goes while the rest still holds the limit; the active one stays.
    let limit = p.segments().last().unwrap().len();
    p.set_config(LogConfig { retention_bytes: Some(limit), retention_age: None, ..config.clone() }).unwrap();
    let out = p.enforce_retention(&mut io, now).unwrap();
    assert!(out.segments_deleted >= 1);
    assert_eq!(p.segments().len(), 1, "only the active segment is left");
    assert_eq!(p.size_bytes(), limit);
    assert!(p.size_bytes() < total && segs >= 3);
    // Survives reopen.
    let start = p.log_start_offset();
    drop(p);
    let p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!(p.log_start_offset(), start);
    assert_eq!(p.next_offset(), 320);
}

#[test]
fn group_commit_writes_many_partitions_with_one_submission() {
    for mut io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts: Vec<Partition> = (0..4)
            .map(|i| {
                Partition::open(&dir.path().join(format!("p{i}")), LogConfig::default(), &mut *io).unwrap()
            })
            .collect();
        let base = io.stats();
        for round in 0..3 {
            for (i, p) in parts.iter_mut().enumerate() {
                for j in 0..5 {
                    p.append(&mut *io, batch(&format!("{round}-{i}-{j}"), 2, 1), SystemTime::now()).unwrap();
                }
            }
            let mut refs: Vec<&mut Partition> = parts.iter_mut().collect();
            commit(&mut *io, &mut refs, Instant::now()).unwrap();
        }
        let s = io.stats();
        // 60 appends: 3 submissions, 12 writes, 12 fsyncs.
        assert_eq!(s.submits - base.submits, 3);
        assert_eq!(s.writes - base.writes, 12);
        assert_eq!(s.fsyncs - base.fsyncs, 12);
        assert!(parts.iter().all(|p| p.high_watermark() == 30));
    }
}

#[test]
fn interval_and_never_acknowledge_on_write_and_sync_on_schedule() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config =
        LogConfig { durability: Durability::Interval(Duration::from_millis(50)), ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    let t = Instant::now();
    p.append(&mut io, batch("i", 1, 1), SystemTime::now()).unwrap();
    // First commit right after open: the interval has not elapsed since open.
    let first = commit(&mut io, &mut [&mut p], t).unwrap();
    assert_eq!(first, CommitOutcome { written: 1, synced: 0 });
    assert_eq!((p.high_watermark(), p.durable_end()), (1, 0));
    let deadline = p.sync_deadline().unwrap();
    let later = commit(&mut io, &mut [&mut p], deadline).unwrap();
    assert_eq!(later, CommitOutcome { written: 0, synced: 1 });
    assert_eq!(p.durable_end(), 1);
    assert_eq!(p.sync_deadline(), None);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { durability: Durability::Never, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    p.append(&mut io, batch("n", 1, 1), SystemTime::now()).unwrap();
    let out = commit(&mut io, &mut [&mut p], Instant::now() + Duration::from_secs(3600)).unwrap();
    assert_eq!(out, CommitOutcome { written: 1, synced: 0 });
    assert_eq!(p.high_watermark(), 1);
}

#[test]
fn an_fsync_error_fails_the_partition_until_reopened() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan { fail_fsync: Some((1, errno)), ..Default::default() };
        let mut io = FaultIo::new(FallbackIo::new(), plan);
        let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
        p.append(&mut io, batch("a", 1, 1), SystemTime::now()).unwrap();
        let err = commit(&mut io, &mut [&mut p], Instant::now()).unwrap_err();
        assert!(matches!(&err, LogError::Io { source, .. } if source.raw_os_error() == Some(errno)), "{err}");
        assert_eq!(p.high_watermark(), 0, "nothing acknowledged");
        let again = p.append(&mut io, batch("b", 1, 1), SystemTime::now()).unwrap_err();
        assert!(matches!(again, LogError::Failed { .. }), "{again}");
        assert!(again.to_string().contains("refuses writes"));
        assert!(p.flush(&mut io).is_err());
        drop(p);
        let mut io = FallbackIo::new();
        let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
        p.append(&mut io, batch("c", 1, 1), SystemTime::now()).unwrap();
        commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
        assert!(p.high_watermark() >= 1);
    }
}

#[test]
fn a_failed_interval_partition_has_no_sync_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan { fail_fsync: Some((1, libc::EIO)), ..Default::default() };
    let mut io = FaultIo::new(FallbackIo::new(), plan);
    let hour = Duration::from_secs(3600);
    let config = LogConfig { durability: Durability::Interval(hour), ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    p.append(&mut io, batch("a", 1, 1), SystemTime::now()).unwrap();
    let start = Instant::now();
    commit(&mut io, &mut [&mut p], start).unwrap();
    assert!(p.sync_deadline().is_some(), "written, not yet synced: a sync is due");
    // The interval's sync fails: the partition fails and nothing is due any more, however
    // much unsynced data it holds.
    assert!(commit(&mut io, &mut [&mut p], start + 2 * hour).is_err());
    assert!(p.failure().is_some());
    assert!(p.durable_end() < p.next_offset());
    assert_eq!(p.sync_deadline(), None);
}

#[test]
fn a_failed_partition_writes_syncs_and_publishes_nothing_and_its_failed_batches_never_appear() {
    for durability in [Durability::Always, Durability::Never] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes: 1024, ..small_config(durability) };
        let mut io = FallbackIo::new();
        let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
        p.append(&mut io, batch("ok", 2, 1), SystemTime::now()).unwrap();
        p.flush(&mut io).unwrap();
        drop(p);
        // How many fsyncs an open makes, so that the first one after it can fail.
        let fsyncs_at_open = {
            let mut io = FaultIo::new(FallbackIo::new(), FaultPlan::default());
            let state = io.state();
            drop(Partition::open(dir.path(), config.clone(), &mut io).unwrap());
            state.fsyncs()
        };
        // The flush's fsync fails: the batch was written, and its producer is told it failed.
        let plan = FaultPlan { fail_fsync: Some((fsyncs_at_open + 1, libc::EIO)), ..Default::default() };
        let mut io = FaultIo::new(FallbackIo::new(), plan);
        let state = io.state();
        let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
        let failed = p.append(&mut io, batch("failed", 3, 1), SystemTime::now()).unwrap();
        let out = p.flush(&mut io);
        assert!(out.is_err(), "{durability}: {out:?}");
        let hw = p.high_watermark();
        assert!(hw <= failed.base_offset, "{durability}: nothing of the failed batch is visible");
        assert_eq!(read_all(&p).len(), 2);
        // From now on nothing touches the disk for this partition.
        let ops = |s: &crate::io::fault::FaultState| (s.writes(), s.fsyncs(), s.creates(), s.file_ops());
        let before = ops(&state);
        // Late enough that retention would roll the active segment and delete old ones.
        let later = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
        assert!(p.append(&mut io, batch("more", 1, 1), later).is_err());
        assert!(p.roll_now(&mut io).is_err());
        p.enforce_retention(&mut io, later).unwrap();
        assert!(p.flush(&mut io).is_err());
        assert!(commit(&mut io, &mut [&mut p], Instant::now()).is_err());
        assert!(p.delete_segments_before(&mut io, i64::MAX).is_err());
        assert_eq!(ops(&state), before, "{durability}: no write, fsync or file-system call");
        assert_eq!(p.high_watermark(), hw);
        drop(p);
        // After a restart the failed batch is gone too, though its bytes reached the file.
        let mut io = FallbackIo::new();
        let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
        let values: Vec<Vec<u8>> = read_all(&p).into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, vec![b"ok-0".to_vec(), b"ok-1".to_vec()], "{durability}");
        assert_eq!(p.append(&mut io, batch("after", 1, 1), SystemTime::now()).unwrap().base_offset, 2);
    }
}

#[test]
fn running_out_of_descriptors_at_a_roll_refuses_the_append_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
    // Learn how many files a clean run has created once its first roll is done.
    let creates_before_roll = {
        let scratch = tempfile::tempdir().unwrap();
        let mut io = FaultIo::new(FallbackIo::new(), FaultPlan::default());
        let state = io.state();
        let mut p = Partition::open(scratch.path(), config.clone(), &mut io).unwrap();
        while p.segments().len() == 1 {
            p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
        }
        state.creates()
    };
    // The roll made the last three: two index files, then the next segment.
    let roll_creates = creates_before_roll - 2..=creates_before_roll;
    for failing in roll_creates {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan { fail_create: Some((failing, libc::EMFILE)), ..Default::default() };
        let mut io = FaultIo::new(FallbackIo::new(), plan);
        let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
        let mut acked = 0;
        let refused = loop {
            match p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()) {
                Ok(_) => {
                    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
                    acked += 1;
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, LogError::NoDescriptors { .. }), "create {failing}: {refused}");
        assert!(p.failure().is_none(), "the partition is not failed");
        assert_eq!(p.segments().len(), 1, "nothing of the roll remains");
        // Descriptors are back: the same append goes through, with the next offset.
        let info = p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
        assert_eq!(info.base_offset, acked);
        commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
        assert_eq!(p.segments().len(), 2);
        drop(p);
        let p = Partition::open(dir.path(), config.clone(), &mut FallbackIo::new()).unwrap();
        assert_eq!(read_all(&p).len() as i64, acked + 1);
    }
    drop(dir);
}

#[test]
fn recovery_undoes_a_roll_that_created_the_next_segment_but_did_not_seal() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Always);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for i in 0..5 {
        p.append(&mut io, batch(&format!("r{i}"), 1, i), SystemTime::now()).unwrap();
    }
    p.flush(&mut io).unwrap();
    drop(p);
    // What a crash leaves between creating the files of a roll and sealing: empty index files
    // for the active segment, and an empty next segment at an offset past its durable end.
    std::fs::write(crate::segment::index_path(dir.path(), 0), b"").unwrap();
    std::fs::write(crate::segment::time_index_path(dir.path(), 0), b"").unwrap();
    std::fs::write(crate::segment::log_path(dir.path(), 7), b"").unwrap();
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert!(p.damage().is_empty(), "{:?}", p.damage());
    assert_eq!(read_all(&p).len(), 5);
    assert!(!crate::segment::log_path(dir.path(), 7).exists());
    assert_eq!(p.append(&mut io, batch("next", 1, 1), SystemTime::now()).unwrap().base_offset, 5);
}

/// Five one-record batches in a sealed segment, then an empty active segment (a completed roll).
fn sealed_then_empty(dir: &std::path::Path, config: &LogConfig) -> (std::path::PathBuf, Vec<u8>) {
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir, config.clone(), &mut io).unwrap();
    for i in 0..5 {
        p.append(&mut io, batch(&format!("r{i}"), 1, i), SystemTime::now()).unwrap();
    }
    p.flush(&mut io).unwrap();
    p.roll_now(&mut io).unwrap();
    drop(p);
    let log = crate::segment::log_path(dir, 0);
    let bytes = std::fs::read(&log).unwrap();
    (log, bytes)
}

#[test]
fn damage_before_an_empty_active_segment_is_damage_not_an_unfinished_roll() {
    let config = small_config(Durability::Always);
    // The last batch's magic destroyed: the segment's index files are whole, so its seal
    // completed, and the segment is salvaged (reported), not cut as a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let (log, mut bytes) = sealed_then_empty(dir.path(), &config);
    let n = bytes.len();
    bytes[n - n / 5 + 16] = 9;
    std::fs::write(&log, &bytes).unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().len() as usize, n, "the sealed segment was not cut");
    assert_eq!(p.damage().len(), 1, "{:?}", p.damage());
    assert!(matches!(p.append(&mut io, batch("x", 1, 1), SystemTime::now()), Err(LogError::Damaged { .. })));
    // Ten bytes cut off the sealed log: acknowledged offset 4 is lost, never handed out again.
    let dir = tempfile::tempdir().unwrap();
    let (log, bytes) = sealed_then_empty(dir.path(), &config);
    std::fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!((p.damage().len(), p.next_offset()), (1, 5), "{:?}", p.damage());
    assert!(matches!(p.append(&mut io, batch("x", 1, 1), SystemTime::now()), Err(LogError::Damaged { .. })));
}

#[test]
fn a_fence_at_a_segment_boundary_leaves_the_sealed_segment_alone() {
    let config = small_config(Durability::Always);
    let dir = tempfile::tempdir().unwrap();
    let (log, mut bytes) = sealed_then_empty(dir.path(), &config);
    // Latent rot inside a record of batch 1 (no header check sees it), and a failure in the
    // first commit after the roll, which leaves a fence at the new segment's base.
    let n = bytes.len();
    bytes[n / 5 + 70] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let mut io = FallbackIo::new();
    crate::log::damage::write_fence(&mut io, dir.path(), 5).unwrap();
    let p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().len() as usize, n, "the sealed segment is untouched");
    assert_eq!((p.log_start_offset(), p.next_offset()), (0, 5), "nothing cut, no offset reused");
}

#[test]
fn batches_a_completed_roll_published_are_acknowledged_even_if_a_later_write_fails() {
    // A is staged, B's append rolls (sealing and publishing A), then B's write fails: A was
    // made durable and visible by the roll, so it must be kept (the fence is past it), and its
    // producer must hear that it succeeded; B is refused.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 1024, ..small_config(Durability::Always) };
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    let len = value_batch(200, 1, 1).len() as u64;
    while p.active().len() + 2 * len <= 1024 {
        p.append(&mut io, value_batch(200, 1, 1), SystemTime::now()).unwrap();
        commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    }
    drop(p);
    let writes_before_commit = {
        let calib = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), calib.path().join(e.file_name())).unwrap();
        }
        let mut io = FaultIo::new(FallbackIo::new(), FaultPlan::default());
        let state = io.state();
        let mut p = Partition::open(calib.path(), config.clone(), &mut io).unwrap();
        p.append(&mut io, value_batch(200, 1, 1), SystemTime::now()).unwrap();
        p.append(&mut io, value_batch(200, 1, 1), SystemTime::now()).unwrap();
        state.writes()
    };
    let plan = FaultPlan { fail_write: Some((writes_before_commit + 1, libc::EIO)), ..Default::default() };
    let mut io = FaultIo::new(FallbackIo::new(), plan);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    let a = p.append(&mut io, value_batch(200, 1, 1), SystemTime::now()).unwrap();
    let b = p.append(&mut io, value_batch(200, 1, 1), SystemTime::now()).unwrap();
    assert_eq!(p.segments().len(), 2, "B's append rolled");
    assert!(commit(&mut io, &mut [&mut p], Instant::now()).is_err());
    assert!(p.high_watermark() > a.last_offset, "the roll published A");
    assert!(p.high_watermark() <= b.base_offset, "B is not visible");
    drop(p);
    let p = Partition::open(dir.path(), config, &mut FallbackIo::new()).unwrap();
    let offsets: Vec<i64> = read_all(&p).into_iter().map(|(o, _)| o).collect();
    assert!(offsets.contains(&a.base_offset), "A is kept: {offsets:?}");
    assert!(!offsets.contains(&b.base_offset), "B is not: {offsets:?}");
}

#[test]
fn recovery_cuts_the_log_back_to_a_fence_across_segments() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Always);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for i in 0..120 {
        p.append(&mut io, batch(&format!("f{i}"), 1, i), SystemTime::now()).unwrap();
    }
    p.flush(&mut io).unwrap();
    let bases: Vec<i64> = p.segments().map(|s| s.base_offset()).collect();
    drop(p);
    assert!(bases.len() >= 3, "{bases:?}");
    // A failure left a fence inside the second segment: everything from it on was refused.
    let fence = bases[1] + 2;
    crate::log::damage::write_fence(&mut io, dir.path(), fence).unwrap();
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!(p.next_offset(), fence);
    assert_eq!(read_all(&p).len() as i64, fence);
    assert_eq!(p.segments().len(), 2, "later segments removed, the fenced one active again");
    assert!(!dir.path().join(crate::log::damage::FENCE_FILE).exists());
    assert_eq!(p.append(&mut io, batch("new", 1, 1), SystemTime::now()).unwrap().base_offset, fence);
}

#[test]
fn recovery_truncates_a_torn_or_corrupt_tail() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
    let mut ends = Vec::new();
    for i in 0..10 {
        p.append(&mut io, batch(&format!("b{i}"), 3, i), SystemTime::now()).unwrap();
        p.flush(&mut io).unwrap();
        ends.push(p.segments().last().unwrap().len());
    }
    drop(p);
    let log = crate::segment::log_path(dir.path(), 0);
    let good = std::fs::read(&log).unwrap();
    // A torn append: half of an 11th batch.
    let extra = batch("torn", 3, 99);
    let mut torn = good.clone();
    torn.extend_from_slice(&extra[..extra.len() / 2]);
    std::fs::write(&log, &torn).unwrap();
    let (p, logged) = with_captured_logs(|| Partition::open(dir.path(), LogConfig::default(), &mut io));
    let p = p.unwrap();
    assert_eq!(p.next_offset(), 30);
    // One warning that names the file and the byte position where the valid prefix ends.
    let warning = logged.lines().find(|l| l.contains("truncating torn or corrupt tail")).expect(&logged);
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&log.display().to_string()), "{warning}");
    assert!(warning.contains(&format!("position={}", good.len())), "{warning}");
    assert_eq!(std::fs::read(&log).unwrap(), good);
    drop(p);
    // A flipped byte inside batch 7: batches 7.. are dropped.
    let mut bad = good.clone();
    bad[ends[6] as usize + 70] ^= 0x10;
    std::fs::write(&log, &bad).unwrap();
    let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
    assert_eq!(p.next_offset(), 21);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), ends[6]);
    // And the log takes appends again at the right offset.
    let info = p.append(&mut io, batch("after", 1, 1), SystemTime::now()).unwrap();
    assert_eq!(info.base_offset, 21);
}

#[test]
fn recovery_rebuilds_missing_or_corrupt_indexes() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Never);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for i in 0..120 {
        p.append(&mut io, batch(&format!("x{i}"), 3, i), SystemTime::now()).unwrap();
    }
    p.flush(&mut io).unwrap();
    let expect = read_all(&p);
    let indexes: Vec<_> = p.segments().map(|s| (s.offset_index().clone(), s.time_index().clone())).collect();
    let bases: Vec<i64> = p.segments().map(|s| s.base_offset()).collect();
    drop(p);
    assert!(bases.len() >= 3);
    std::fs::remove_file(crate::segment::index_path(dir.path(), bases[0])).unwrap();
    let ti = crate::segment::time_index_path(dir.path(), bases[1]);
    let mut bytes = std::fs::read(&ti).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&ti, bytes).unwrap();
    std::fs::write(dir.path().join("00000000000000099999.index"), b"orphan").unwrap();
    let p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!(read_all(&p), expect);
    let rebuilt: Vec<_> = p.segments().map(|s| (s.offset_index().clone(), s.time_index().clone())).collect();
    assert_eq!(rebuilt[..bases.len() - 1], indexes[..bases.len() - 1]);
    assert!(crate::segment::index_path(dir.path(), bases[0]).exists(), "rewritten");
    assert!(!dir.path().join("00000000000000099999.index").exists(), "orphan removed");
}

/// What a crash test expects after reopening: a prefix of what was appended, holding at least
/// the first `must_keep` records.
fn check_prefix(
    dir: &std::path::Path,
    config: &LogConfig,
    appended: &[Vec<u8>],
    must_keep: usize,
    what: &str,
) {
    let mut io = FallbackIo::new();
    let mut p =
        Partition::open(dir, config.clone(), &mut io).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    let all = read_all(&p);
    let got: Vec<&Vec<u8>> = all.iter().map(|(_, v)| v).collect();
    assert!(got.len() <= appended.len(), "{what}: more records than appended");
    assert!(got.iter().zip(appended).all(|(g, a)| *g == a), "{what}: not a prefix");
    let offsets: Vec<i64> = all.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..got.len() as i64).collect::<Vec<_>>(), "{what}: offsets");
    assert!(got.len() >= must_keep, "{what}: lost records it had to keep: {} < {must_keep}", got.len());
    // The recovered log takes appends.
    let info = p.append(&mut io, batch("post", 1, 1), SystemTime::now()).unwrap();
    assert_eq!(info.base_offset, got.len() as i64, "{what}");
    p.flush(&mut io).unwrap();
}

/// What a run under injected faults did before its crash or error.
struct CrashRun {
    /// Every value appended, in order.
    appended: Vec<Vec<u8>>,
    /// Records acknowledged (below the high watermark) while nothing had been dropped yet.
    acked: usize,
    /// Records covered by a completed fsync while nothing had been dropped yet.
    durable: usize,
}

/// Appends one-record batches, three per commit, under `plan` until the crash or an error.
fn run_until_crash(
    dir: &std::path::Path,
    config: &LogConfig,
    plan: FaultPlan,
    rounds: usize,
    inner: Box<dyn Io>,
) -> CrashRun {
    let mut io = FaultIo::new(inner, plan);
    let state = io.state();
    let mut run = CrashRun { appended: Vec::new(), acked: 0, durable: 0 };
    let Ok(mut p) = Partition::open(dir, config.clone(), &mut io) else {
        return run;
    };
    for i in 0..rounds {
        for j in 0..3 {
            let value = format!("v{i}-{j}");
            if p.append(&mut io, batch_of(&value), SystemTime::now()).is_err() {
                return run;
            }
            run.appended.push(value.into_bytes());
        }
        if commit(&mut io, &mut [&mut p], Instant::now()).is_err() {
            return run;
        }
        if state.dropped() == 0 {
            run.acked = p.high_watermark() as usize;
            run.durable = p.durable_end() as usize;
        }
    }
    run
}

fn batch_of(value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    b.push(&Record { timestamp: 7, key: None, value: Some(value.as_bytes()), headers: &[] });
    b.finish()
}

fn crash_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 128,
        batch_bytes_max: 1024,
        durability,
        ..LogConfig::default()
    }
}

/// Counts the (writes, fsyncs) of a full fault-free run of `run_until_crash`.
fn ops_of_a_full_run(config: &LogConfig, rounds: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FaultIo::new(FallbackIo::new(), FaultPlan::default());
    let state = io.state();
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for i in 0..rounds {
        for j in 0..3 {
            p.append(&mut io, batch_of(&format!("v{i}-{j}")), SystemTime::now()).unwrap();
        }
        commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    }
    (state.writes(), state.fsyncs())
}

#[test]
fn a_crash_after_any_write_or_fsync_leaves_a_prefix_with_every_acknowledged_record() {
    let config = crash_config(Durability::Always);
    let (total_writes, total_fsyncs) = ops_of_a_full_run(&config, 40);
    assert!(total_fsyncs > 40, "one per commit plus rolls: {total_fsyncs}");
    let crash_points = (1..=total_fsyncs)
        .map(|n| FaultPlan { crash_after_fsync: Some(n), ..Default::default() })
        .chain((1..=total_writes).map(|n| FaultPlan { crash_after_write: Some(n), ..Default::default() }));
    // A process crash (page cache kept) and a power cut (unsynced writes lost), on each backend.
    for crash in crash_points {
        for power_cut in [false, true] {
            for inner in backends() {
                let backend = inner.backend();
                let dir = tempfile::tempdir().unwrap();
                let plan = FaultPlan { power_cut, ..crash };
                let run = run_until_crash(dir.path(), &config, plan, 40, inner);
                let what = format!("{backend}, {plan:?}");
                assert_eq!(run.acked, run.durable, "{what}: under always, acknowledged means durable");
                check_prefix(dir.path(), &config, &run.appended, run.acked, &what);
            }
        }
    }
}

#[test]
fn torn_writes_and_write_errors_never_lose_acknowledged_records() {
    let config = crash_config(Durability::Always);
    for write in 1..=30u64 {
        for keep_bytes in [0, 1, 30, 61, 100] {
            let dir = tempfile::tempdir().unwrap();
            let plan = FaultPlan { torn_write: Some(TornWrite { write, keep_bytes }), ..Default::default() };
            let run = run_until_crash(dir.path(), &config, plan, 15, Box::new(FallbackIo::new()));
            let what = format!("torn write {write} keeping {keep_bytes}");
            check_prefix(dir.path(), &config, &run.appended, run.acked, &what);
        }
        for errno in [libc::EIO, libc::ENOSPC] {
            for plan in [
                FaultPlan { fail_write: Some((write, errno)), ..Default::default() },
                FaultPlan { fail_fsync: Some((write, errno)), ..Default::default() },
            ] {
                let dir = tempfile::tempdir().unwrap();
                let run = run_until_crash(dir.path(), &config, plan, 15, Box::new(FallbackIo::new()));
                check_prefix(dir.path(), &config, &run.appended, run.acked, &format!("{plan:?}"));
            }
        }
    }
}

#[test]
fn interval_and_never_keep_a_prefix_with_every_synced_record_after_a_power_cut() {
    for durability in [Durability::Never, Durability::Interval(Duration::from_millis(1))] {
        let config = crash_config(durability);
        let (total_writes, total_fsyncs) = ops_of_a_full_run(&config, 30);
        let crash_points =
            (1..=total_fsyncs).map(|n| FaultPlan { crash_after_fsync: Some(n), ..Default::default() }).chain(
                (1..=total_writes).map(|n| FaultPlan { crash_after_write: Some(n), ..Default::default() }),
            );
        for crash in crash_points {
            for power_cut in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let plan = FaultPlan { power_cut, ..crash };
                let run = run_until_crash(dir.path(), &config, plan, 30, Box::new(FallbackIo::new()));
                let what = format!("{durability}, {plan:?}");
                // Acknowledged is not durable here; only what an fsync covered must survive.
                check_prefix(dir.path(), &config, &run.appended, run.durable, &what);
            }
        }
    }
}

/// Checked-in partitions written by this version of the format. They must keep opening with
/// the same content: a change that breaks them breaks every existing data directory.
/// Regenerate (only for a deliberate format change) with
/// `cargo test -p spate fixture_write -- --ignored`.
mod fixtures {
    use super::*;

    const FIXTURE_CONFIG: fn() -> LogConfig = || LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        batch_bytes_max: 1024,
        durability: Durability::Always,
        ..LogConfig::default()
    };

    fn fixture_dir(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn fixture_value(i: usize) -> String {
        format!("fixture-record-{i:04}")
    }

    /// Copies a fixture to a scratch directory, since opening may repair it.
    fn scratch_copy(name: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
        tmp
    }

    #[test]
    #[ignore = "regenerates the checked-in fixtures"]
    fn fixture_write() {
        let good = fixture_dir("partition-v1");
        let _ = std::fs::remove_dir_all(&good);
        let mut io = FallbackIo::new();
        let mut p = Partition::open(&good, FIXTURE_CONFIG(), &mut io).unwrap();
        for i in 0..60 {
            let mut b = BatchBuilder::new(BatchOptions::default());
            let v = fixture_value(i);
            b.push(&Record {
                timestamp: 1_700_000_000_000 + i as i64 * 1000,
                key: Some(b"k"),
                value: Some(v.as_bytes()),
                headers: &[],
            });
            p.append(&mut io, b.finish(), SystemTime::UNIX_EPOCH).unwrap();
        }
        p.flush(&mut io).unwrap();
        drop(p);
        // The damaged copy: a torn last batch, and a corrupt time index in the first segment.
        let torn = fixture_dir("partition-v1-torn");
        let _ = std::fs::remove_dir_all(&torn);
        std::fs::create_dir_all(&torn).unwrap();
        for entry in std::fs::read_dir(&good).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), torn.join(entry.file_name())).unwrap();
        }
        let mut logs: Vec<_> = std::fs::read_dir(&torn)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        let active = logs.last().unwrap();
        let bytes = std::fs::read(active).unwrap();
        std::fs::write(active, &bytes[..bytes.len() - 10]).unwrap();
        let ti = logs[0].with_extension("timeindex");
        let mut t = std::fs::read(&ti).unwrap();
        t[30] ^= 0xff;
        std::fs::write(&ti, t).unwrap();
    }

    /// A copy of the good fixture, under a new name, for a damaged variant.
    fn damaged_copy(name: &str) -> std::path::PathBuf {
        let dir = fixture_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(fixture_dir("partition-v1")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        dir
    }

    /// Every sealed segment of the fixture holds 11 batches of 88 bytes, one record each.
    const BATCH_BYTES: usize = 88;

    /// The damaged variants of `partition-v1`, one per kind of damage to a sealed segment.
    /// Regenerate (after `fixture_write`) with
    /// `cargo test -p spate damaged_fixtures_write -- --ignored`.
    #[test]
    #[ignore = "regenerates the checked-in fixtures"]
    fn damaged_fixtures_write() {
        // 100 pseudo-random bytes appended to the first sealed segment.
        let dir = damaged_copy("partition-v1-garbage");
        let log = crate::segment::log_path(&dir, 0);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend((0..100u32).map(|i| (i.wrapping_mul(73).wrapping_add(41) % 251) as u8));
        std::fs::write(&log, bytes).unwrap();
        // A flipped bit inside the record of offset 15 (the fifth batch of segment 11), in a
        // segment whose index files are gone, so recovery scans it.
        let dir = damaged_copy("partition-v1-flipped");
        let log = crate::segment::log_path(&dir, 11);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[4 * BATCH_BYTES + 70] ^= 0x08;
        std::fs::write(&log, bytes).unwrap();
        std::fs::remove_file(crate::segment::index_path(&dir, 11)).unwrap();
        std::fs::remove_file(crate::segment::time_index_path(&dir, 11)).unwrap();
        // Segment 22 cut in the middle of its seventh batch: offsets 28..33 are gone.
        let dir = damaged_copy("partition-v1-truncated");
        let log = crate::segment::log_path(&dir, 22);
        let bytes = std::fs::read(&log).unwrap();
        std::fs::write(&log, &bytes[..6 * BATCH_BYTES + 20]).unwrap();
        // Index files: segment 0's offset index missing, segment 33's corrupt.
        let dir = damaged_copy("partition-v1-indexes");
        std::fs::remove_file(crate::segment::index_path(&dir, 0)).unwrap();
        let index = crate::segment::index_path(&dir, 33);
        let mut bytes = std::fs::read(&index).unwrap();
        bytes[30] ^= 0x01;
        std::fs::write(&index, bytes).unwrap();
    }

    fn values(range: std::ops::Range<usize>) -> Vec<(i64, Vec<u8>)> {
        range.map(|i| (i as i64, fixture_value(i).into_bytes())).collect()
    }

    #[test]
    fn garbage_after_a_sealed_segment_is_cut_and_nothing_else_changes() {
        let tmp = scratch_copy("partition-v1-garbage");
        let mut io = FallbackIo::new();
        let (p, logged) = with_captured_logs(|| Partition::open(tmp.path(), FIXTURE_CONFIG(), &mut io));
        let mut p = p.unwrap();
        assert_eq!(read_all(&p), values(0..60), "every record survives");
        assert!(p.damage().is_empty(), "{:?}", p.damage());
        assert!(logged.contains("removing bytes after the sealed segment's last batch"), "{logged}");
        // The segment is resealed exactly as it was written: log and index files.
        for name in
            ["00000000000000000000.log", "00000000000000000000.index", "00000000000000000000.timeindex"]
        {
            let original = std::fs::read(fixture_dir("partition-v1").join(name)).unwrap();
            assert_eq!(std::fs::read(tmp.path().join(name)).unwrap(), original, "{name}");
        }
        assert_eq!(p.append(&mut io, batch("new", 1, 1), SystemTime::now()).unwrap().base_offset, 60);
    }

    #[test]
    fn a_flipped_bit_in_a_sealed_segment_costs_only_its_batch() {
        let tmp = scratch_copy("partition-v1-flipped");
        let original = std::fs::read(tmp.path().join("00000000000000000011.log")).unwrap();
        let mut io = FallbackIo::new();
        let (p, logged) = with_captured_logs(|| Partition::open(tmp.path(), FIXTURE_CONFIG(), &mut io));
        let mut p = p.unwrap();
        let mut expect = values(0..60);
        expect.remove(15);
        assert_eq!(read_all(&p), expect, "everything but offset 15 is served");
        let d = p.damage().to_vec();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].lost_from, d[0].lost_to, d[0].position), (15, 16, 4 * BATCH_BYTES as u64));
        let line = logged.lines().find(|l| l.contains("damaged sealed segment")).expect(&logged);
        assert!(line.contains("00000000000000000011.log") && line.contains("lost_from=15"), "{line}");
        // Reading at the lost offset starts at the next intact batch.
        let at = p.read(15, 1).unwrap();
        assert_eq!(at.first_offset, 16);
        let refused = p.append(&mut io, batch("new", 1, 1), SystemTime::now()).unwrap_err();
        assert!(matches!(refused, LogError::Damaged { .. }), "{refused}");
        drop(p);
        assert_eq!(
            std::fs::read(tmp.path().join("00000000000000000011.log")).unwrap(),
            original,
            "untouched"
        );
    }

    #[test]
    fn a_truncated_sealed_segment_loses_its_tail_and_keeps_every_later_segment() {
        let tmp = scratch_copy("partition-v1-truncated");
        let mut io = FallbackIo::new();
        let mut p = Partition::open(tmp.path(), FIXTURE_CONFIG(), &mut io).unwrap();
        let mut expect = values(0..28);
        expect.extend(values(33..60));
        assert_eq!(read_all(&p), expect);
        let d = p.damage().to_vec();
        assert_eq!((d.len(), d[0].lost_from, d[0].lost_to), (1, 28, 33), "{d:?}");
        assert!(matches!(
            p.append(&mut io, batch("x", 1, 1), SystemTime::now()),
            Err(LogError::Damaged { .. })
        ));
        for base in [33, 44, 55] {
            assert!(crate::segment::log_path(tmp.path(), base).exists());
        }
        // Lookups by time skip the gap too.
        assert_eq!(p.offset_for_timestamp(1_700_000_028_000).unwrap(), Some((33, 1_700_000_033_000)));
    }

    #[test]
    fn missing_or_corrupt_index_files_are_rebuilt_without_loss() {
        let tmp = scratch_copy("partition-v1-indexes");
        let mut io = FallbackIo::new();
        let mut p = Partition::open(tmp.path(), FIXTURE_CONFIG(), &mut io).unwrap();
        assert_eq!(read_all(&p), values(0..60));
        assert!(p.damage().is_empty());
        for name in ["00000000000000000000.index", "00000000000000000033.index"] {
            let original = std::fs::read(fixture_dir("partition-v1").join(name)).unwrap();
            assert_eq!(std::fs::read(tmp.path().join(name)).unwrap(), original, "{name} rebuilt");
        }
        assert_eq!(p.append(&mut io, batch("new", 1, 1), SystemTime::now()).unwrap().base_offset, 60);
    }

    #[test]
    fn fixture_opens_with_the_same_content() {
        let tmp = scratch_copy("partition-v1");
        let mut io = FallbackIo::new();
        let p = Partition::open(tmp.path(), FIXTURE_CONFIG(), &mut io).unwrap();
        assert!(p.segments().len() >= 3, "the fixture spans sealed segments and an active one");
        let all = read_all(&p);
        let expect: Vec<(i64, Vec<u8>)> =
            (0..60).map(|i| (i as i64, fixture_value(i).into_bytes())).collect();
        assert_eq!(all, expect);
        assert_eq!(p.offset_for_timestamp(1_700_000_030_500).unwrap(), Some((31, 1_700_000_031_000)));
        // Sealed segments were trusted: their index files are untouched.
        for s in p.segments().take(p.segments().len() - 1) {
            let name = crate::segment::index_path(tmp.path(), s.base_offset());
            let original = fixture_dir("partition-v1").join(name.file_name().unwrap());
            assert_eq!(std::fs::read(&name).unwrap(), std::fs::read(original).unwrap());
        }
    }

    #[test]
    fn damaged_fixture_recovers_to_the_valid_prefix() {
        let tmp = scratch_copy("partition-v1-torn");
        let mut io = FallbackIo::new();
        let mut p = Partition::open(tmp.path(), FIXTURE_CONFIG(), &mut io).unwrap();
        let all = read_all(&p);
        let expect: Vec<(i64, Vec<u8>)> =
            (0..59).map(|i| (i as i64, fixture_value(i).into_bytes())).collect();
        assert_eq!(all, expect, "the torn last record is dropped, nothing else");
        // The corrupt time index was rebuilt: lookups by time still work in the first segment.
        assert_eq!(p.offset_for_timestamp(1_700_000_000_500).unwrap(), Some((1, 1_700_000_001_000)));
        let info = p.append(&mut io, batch("new", 1, 1), SystemTime::now()).unwrap();
        assert_eq!(info.base_offset, 59);
    }
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 1024, batch_bytes_max: 8192, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    p.append(&mut io, batch("small", 1, 1), SystemTime::now()).unwrap();
    let big = batch(&"b".repeat(3000), 1, 2);
    let info = p.append(&mut io, big, SystemTime::now()).unwrap();
    p.append(&mut io, batch("after", 1, 3), SystemTime::now()).unwrap();
    p.flush(&mut io).unwrap();
    let segs: Vec<(i64, u64)> = p.segments().map(|s| (s.base_offset(), s.len())).collect();
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert_eq!(segs[1].0, info.base_offset);
    assert!(segs[1].1 > 3000);
    drop(p);
    let p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!(read_all(&p).len(), 3);
}

fn value_batch(value_len: usize, records: usize, timestamp: i64) -> Vec<u8> {
    let v = vec![b'x'; value_len];
    let mut b = BatchBuilder::new(BatchOptions::default());
    for _ in 0..records {
        b.push(&Record { timestamp, key: None, value: Some(&v), headers: &[] });
    }
    b.finish()
}

#[test]
fn a_failed_roll_fails_the_partition_and_the_commit_so_nothing_waits_forever() {
    // The roll's seal fsync fails (the first fsync of this fresh log).
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan { fail_fsync: Some((1, libc::EIO)), ..Default::default() };
    let mut io = FaultIo::new(FallbackIo::new(), plan);
    let config = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    let mut staged = Vec::new();
    let err = loop {
        match p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()) {
            Ok(info) => staged.push(info),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(!staged.is_empty());
    let out = commit(&mut io, &mut [&mut p], Instant::now());
    assert!(matches!(out, Err(LogError::Failed { .. })), "{out:?}");
    assert_eq!(p.high_watermark(), 0, "nothing acknowledged");
}

#[test]
fn a_roll_that_cannot_create_the_next_segment_fails_the_partition() {
    let config = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
    // Learn where the first roll happens, on a scratch log.
    let mut io = FallbackIo::new();
    let scratch = tempfile::tempdir().unwrap();
    let mut s = Partition::open(scratch.path(), config.clone(), &mut io).unwrap();
    while s.segments().len() == 1 {
        s.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
    }
    let next_base = s.segments().last().unwrap().base_offset();
    // Occupy that file name so the roll cannot create it.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    std::fs::write(crate::segment::log_path(dir.path(), next_base), b"").unwrap();
    for _ in 0..3 {
        p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
    }
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    assert_eq!(p.high_watermark(), 3);
    let err = loop {
        if let Err(e) = p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()) {
            break e;
        }
    };
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(err.to_string().contains("file-system call"), "{err}");
    // The seal made the later batches durable, but their producers hear of the failure, so
    // they are never visible: not now, and not after a restart.
    assert_eq!(p.high_watermark(), 3);
    assert_eq!(read_all(&p).len(), 3);
    assert!(dir.path().join(crate::log::damage::FENCE_FILE).exists());
    let tiny = p.append(&mut io, value_batch(1, 1, 1), SystemTime::now());
    assert!(matches!(tiny, Err(LogError::Failed { .. })), "{tiny:?}");
    drop(p);
    std::fs::remove_file(crate::segment::log_path(dir.path(), next_base)).unwrap();
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert_eq!((p.next_offset(), read_all(&p).len()), (3, 3), "cut back to the fence");
    assert!(!dir.path().join(crate::log::damage::FENCE_FILE).exists(), "the fence did its work");
    assert_eq!(p.append(&mut io, value_batch(1, 1, 1), SystemTime::now()).unwrap().base_offset, 3);
}

#[test]
fn a_failed_retention_delete_keeps_the_log_start_consistent() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 1024, durability: Durability::Never, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for _ in 0..40 {
        p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
    }
    p.flush(&mut io).unwrap();
    let bases: Vec<i64> = p.segments().map(|s| s.base_offset()).collect();
    // The second segment's index cannot be removed: a directory stands in its place.
    let idx = crate::segment::index_path(dir.path(), bases[1]);
    std::fs::remove_file(&idx).unwrap();
    std::fs::create_dir(&idx).unwrap();
    p.set_config(LogConfig { retention_bytes: Some(1), ..config }).unwrap();
    assert!(p.enforce_retention(&mut io, SystemTime::now()).is_err());
    assert_eq!(p.log_start_offset(), bases[1], "the first segment went, the second stayed");
    assert_eq!(p.segments().next().unwrap().base_offset(), bases[1]);
    assert!(matches!(p.read(0, 1), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(p.read(bases[1], 1).unwrap().first_offset, bases[1]);
}

#[test]
fn retention_age_too_long_for_milliseconds_means_forever() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    let config = LogConfig {
        segment_bytes: 1024,
        durability: Durability::Never,
        retention_age: Some(Duration::MAX),
        ..LogConfig::default()
    };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    for _ in 0..40 {
        p.append(&mut io, value_batch(100, 1, now_ms), now).unwrap();
    }
    p.flush(&mut io).unwrap();
    assert_eq!(p.enforce_retention(&mut io, now).unwrap().segments_deleted, 0);
}

#[test]
fn an_idle_active_segment_rolls_and_expires_by_age() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_age: Duration::from_secs(3600),
        retention_age: Some(Duration::from_secs(7200)),
        ..LogConfig::default()
    };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    let t0 = SystemTime::now();
    let t0_ms = t0.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    p.append(&mut io, value_batch(10, 3, t0_ms), t0).unwrap();
    p.flush(&mut io).unwrap();
    // Three hours later, with no appends in between: the active segment rolls, then expires.
    let later = t0 + Duration::from_secs(3 * 3600);
    let out = p.enforce_retention(&mut io, later).unwrap();
    assert_eq!(out.segments_deleted, 1);
    assert_eq!(p.log_start_offset(), 3);
    assert_eq!(p.next_offset(), 3);
    assert!(matches!(p.read(0, 1), Err(LogError::OffsetOutOfRange { .. })));
}

#[test]
fn the_high_watermark_never_moves_back_when_durability_changes() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let never = LogConfig { durability: Durability::Never, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), never.clone(), &mut io).unwrap();
    p.append(&mut io, value_batch(10, 5, 1), SystemTime::now()).unwrap();
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    assert_eq!((p.high_watermark(), p.durable_end()), (5, 0));
    p.set_config(LogConfig { durability: Durability::Always, ..never }).unwrap();
    assert_eq!(p.high_watermark(), 5);
    assert_eq!(p.read(0, 1 << 20).unwrap().next_offset, 5, "what readers saw stays readable");
    p.append(&mut io, value_batch(10, 2, 1), SystemTime::now()).unwrap();
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    assert_eq!((p.high_watermark(), p.durable_end()), (7, 7));
}

/// Rewrites the CRC of a batch after editing it, as a client computing its CRC over garbage would.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn append_rejects_undecodable_records_even_with_a_valid_crc() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
    // Record length varint -2.
    let mut bad_length = value_batch(10, 2, 1);
    bad_length[61] = 0x03;
    fix_crc(&mut bad_length);
    let err = p.append(&mut io, bad_length, SystemTime::now()).unwrap_err();
    assert!(matches!(err, LogError::InvalidBatch(_)), "{err}");
    // Offset deltas 0, 0 instead of 0, 1 (the second record's delta byte follows its length,
    // attributes and timestamp delta).
    let mut dup_delta = value_batch(10, 2, 1);
    let first_len = (dup_delta[61] >> 1) as usize + 1;
    let second = 61 + first_len;
    assert_eq!(dup_delta[second + 3], 2, "zigzag 1");
    dup_delta[second + 3] = 0;
    fix_crc(&mut dup_delta);
    let err = p.append(&mut io, dup_delta, SystemTime::now()).unwrap_err();
    assert!(matches!(&err, LogError::BatchRejected(m) if m.contains("offset delta")), "{err}");
    assert_eq!(p.next_offset(), 0);
    // A batch that claims zstd but holds no zstd frame is refused.
    let mut fake = value_batch(10, 1, 1);
    fake[22] |= 4; // zstd
    fix_crc(&mut fake);
    let err = p.append(&mut io, fake, SystemTime::now()).unwrap_err();
    assert!(matches!(err, LogError::InvalidBatch(RecordError::Decompression { .. })), "{err}");
    assert_eq!(p.next_offset(), 0);
}

#[test]
fn compressed_batches_are_decompressed_and_checked_like_any_other() {
    use crate::record::compression::compress_batch;
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
    for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let good = compress_batch(&value_batch(50, 20, 1), codec).unwrap();
        let at = p.next_offset();
        assert_eq!(
            p.append(&mut io, good, SystemTime::now()).unwrap(),
            AppendInfo { base_offset: at, last_offset: at + 19 }
        );
        // Offset deltas 0, 0 inside the compressed block: the same refusal as uncompressed.
        let mut dup = value_batch(10, 2, 1);
        let first_len = (dup[61] >> 1) as usize + 1;
        dup[61 + first_len + 3] = 0;
        fix_crc(&mut dup);
        let err = p.append(&mut io, compress_batch(&dup, codec).unwrap(), SystemTime::now()).unwrap_err();
        assert!(matches!(&err, LogError::BatchRejected(m) if m.contains("offset delta")), "{codec:?}: {err}");
        // A header that promises more records than the block holds.
        let mut short = compress_batch(&value_batch(10, 3, 1), codec).unwrap();
        short[57..61].copy_from_slice(&4i32.to_be_bytes());
        short[23..27].copy_from_slice(&3i32.to_be_bytes());
        fix_crc(&mut short);
        let err = p.append(&mut io, short, SystemTime::now()).unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(RecordError::RecordCountMismatch { .. })),
            "{codec:?}: {err}"
        );
        // A bomb: 72 MiB of zeros in a few kilobytes. (Snappy expands at most about 21 times,
        // so a batch of at most 1 MiB cannot pass the 64 MiB limit.)
        if codec == Compression::Snappy {
            continue;
        }
        let mut b = BatchBuilder::new(BatchOptions::default());
        let zeros = vec![0u8; 8 << 20];
        for _ in 0..9 {
            b.push(&Record { timestamp: 1, key: None, value: Some(&zeros), headers: &[] });
        }
        let bomb = compress_batch(&b.finish(), codec).unwrap();
        assert!(bomb.len() < 1 << 20, "{codec:?}: {}", bomb.len());
        let err = p.append(&mut io, bomb, SystemTime::now()).unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(RecordError::DecompressedTooLarge { .. })),
            "{codec:?}: {err}"
        );
    }
    p.flush(&mut io).unwrap();
    assert_eq!(p.next_offset(), 80, "only the four good batches were stored");
}

#[test]
fn retention_by_age_goes_by_last_append_for_records_without_timestamps_or_from_the_future() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Timestamps from a year ahead are only accepted with the future bound lifted.
    let lax = LogConfig { timestamp_after_max: None, ..small_config(Durability::Never) };
    let write = |dir: &std::path::Path, io: &mut FallbackIo| {
        let mut p = Partition::open(dir, lax.clone(), io).unwrap();
        for i in 0..150 {
            let ts = if i < 75 { -1 } else { now_ms + 365 * 24 * 3600 * 1000 };
            p.append(io, batch(&format!("t{i}"), 4, ts), now).unwrap();
        }
        p.flush(io).unwrap();
        p
    };
    let mut p = write(dir.path(), &mut io);
    let sealed: Vec<std::path::PathBuf> =
        p.segments().take(p.segments().len() - 1).map(|s| s.log_path()).collect();
    assert!(sealed.len() >= 3);
    // Written just now: a day of retention keeps all of it, timestamps or not.
    let day =
        LogConfig { retention_age: Some(Duration::from_secs(24 * 3600)), ..small_config(Durability::Never) };
    p.set_config(day.clone()).unwrap();
    assert_eq!(p.enforce_retention(&mut io, now).unwrap().segments_deleted, 0, "-1 is not 'infinitely old'");
    // Three days later by the engine's clock: everything sealed expires, the future-stamped
    // segments too (they count at most an hour past their last append).
    let later = now + Duration::from_secs(3 * 24 * 3600);
    let out = p.enforce_retention(&mut io, later).unwrap();
    assert_eq!(out.segments_deleted, sealed.len());
    // The bound itself: a record stamped a day ahead is refused at append.
    let err = p.append(&mut io, batch("late", 1, now_ms + 24 * 3600 * 1000), now).unwrap_err();
    assert!(matches!(err, LogError::InvalidTimestamp { .. }), "{err}");
    drop(p);

    // After a restart the last append is the file's modification time: files last written
    // three days ago expire at once.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), &mut io);
    let sealed: Vec<std::path::PathBuf> =
        p.segments().take(p.segments().len() - 1).map(|s| s.log_path()).collect();
    drop(p);
    let old = now - Duration::from_secs(3 * 24 * 3600);
    for path in &sealed {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
    }
    let mut p = Partition::open(dir.path(), day, &mut io).unwrap();
    assert_eq!(p.enforce_retention(&mut io, now).unwrap().segments_deleted, sealed.len());
}

#[test]
fn lookup_by_timestamp_finds_the_record_inside_a_batch_compressed_or_not() {
    use crate::record::compression::compress_batch;
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
    let stamped = |stamps: &[i64]| {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for &ts in stamps {
            b.push(&Record { timestamp: ts, key: None, value: Some(b"v"), headers: &[] });
        }
        b.finish()
    };
    p.append(&mut io, stamped(&[100, 200, 300]), SystemTime::now()).unwrap();
    p.append(
        &mut io,
        compress_batch(&stamped(&[400, 350, 500]), Compression::Gzip).unwrap(),
        SystemTime::now(),
    )
    .unwrap();
    p.flush(&mut io).unwrap();
    for (target, expect) in [
        (50, Some((0, 100))),
        (150, Some((1, 200))),
        (300, Some((2, 300))),
        (301, Some((3, 400))),
        (360, Some((3, 400))),
        (450, Some((5, 500))),
        (501, None),
    ] {
        assert_eq!(p.offset_for_timestamp(target).unwrap(), expect, "target {target}");
    }
}

#[test]
fn timestamps_must_be_valid_and_agree_with_the_header() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
    // A header max timestamp far in the future, records from 1970: it would pin retention.
    let mut lying = value_batch(10, 2, 5);
    lying[35..43].copy_from_slice(&i64::MAX.to_be_bytes());
    fix_crc(&mut lying);
    let err = p.append(&mut io, lying, SystemTime::now()).unwrap_err();
    assert!(matches!(err, LogError::InvalidTimestamp { timestamp: i64::MAX, .. }), "{err}");
    let negative = value_batch(10, 1, -5);
    let err = p.append(&mut io, negative, SystemTime::now()).unwrap_err();
    assert!(matches!(err, LogError::InvalidTimestamp { timestamp: -5, .. }), "{err}");
    // -1 means "no timestamp" and is fine.
    p.append(&mut io, value_batch(10, 1, -1), SystemTime::now()).unwrap();
}

#[test]
fn recovery_rescans_a_sealed_segment_whose_index_does_not_reach_the_next_segment() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 1024, durability: Durability::Never, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for _ in 0..30 {
        p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
    }
    p.flush(&mut io).unwrap();
    let bases: Vec<i64> = p.segments().map(|s| s.base_offset()).collect();
    let before: Vec<i64> = read_all(&p).into_iter().map(|(o, _)| o).collect();
    drop(p);
    assert!(bases.len() >= 3);
    // Rename the second segment's files so that a gap of offsets opens before it.
    let gap = bases[1] + 5;
    for (from, to) in [
        (crate::segment::log_path(dir.path(), bases[1]), crate::segment::log_path(dir.path(), gap)),
        (crate::segment::index_path(dir.path(), bases[1]), crate::segment::index_path(dir.path(), gap)),
        (
            crate::segment::time_index_path(dir.path(), bases[1]),
            crate::segment::time_index_path(dir.path(), gap),
        ),
    ] {
        std::fs::rename(from, to).unwrap();
    }
    let (p, logged) = with_captured_logs(|| Partition::open(dir.path(), config.clone(), &mut io));
    let mut p = p.unwrap();
    // The first segment no longer reaches the next base: the offsets in between are reported
    // lost, and everything after the gap is still served. Nothing is deleted.
    let first = &p.damage()[0];
    assert_eq!((first.lost_from, first.lost_to), (bases[1], gap), "{:?}", p.damage());
    assert!(logged.contains("damaged sealed segment"), "{logged}");
    assert!(crate::segment::log_path(dir.path(), gap).exists());
    let offsets: Vec<i64> = read_all(&p).into_iter().map(|(o, _)| o).collect();
    let expect: Vec<i64> = before.iter().copied().filter(|&o| o < bases[1] || o > gap).collect();
    assert_eq!(offsets, expect);
    let refused = p.append(&mut io, value_batch(1, 1, 1), SystemTime::now()).unwrap_err();
    assert!(matches!(refused, LogError::Damaged { .. }), "{refused}");
    assert!(refused.to_string().contains("refuses writes"), "{refused}");
    // The operator accepts the loss: writes resume, and stay allowed after a restart.
    let end = p.next_offset();
    p.accept_damage(&mut io).unwrap();
    assert_eq!(p.append(&mut io, value_batch(1, 1, 1), SystemTime::now()).unwrap().base_offset, end);
    p.flush(&mut io).unwrap();
    drop(p);
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    assert!(!p.damage().is_empty());
    assert_eq!(p.append(&mut io, value_batch(1, 1, 1), SystemTime::now()).unwrap().base_offset, end + 1);
}

#[test]
fn recovery_does_not_panic_on_batches_beyond_the_segment_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, mut base) = (Vec::new(), 0i64);
    for _ in 0..4 {
        let mut b = value_batch(10, 1, 1);
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        fix_crc(&mut b);
        base += i64::from(i32::MAX);
        file.extend_from_slice(&b);
    }
    std::fs::write(crate::segment::log_path(dir.path(), 0), &file).unwrap();
    let mut io = FallbackIo::new();
    let config = LogConfig { index_interval_bytes: 1, ..LogConfig::default() };
    let p = Partition::open(dir.path(), config, &mut io).unwrap();
    // The first batch ends at relative offset 2^31 - 2 and stays; the second would pass 2^31.
    assert_eq!(p.next_offset(), i64::from(i32::MAX));
}

#[test]
fn reads_of_every_offset_and_size_match_a_model() {
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 300,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    // Model: (base offset, last offset, byte length) of every batch, in order.
    let mut model: Vec<(i64, i64, u64)> = Vec::new();
    for i in 0..120usize {
        let b = value_batch(10 + (i * 37) % 400, 1 + i % 4, 1);
        let len = b.len() as u64;
        let info = p.append(&mut io, b, SystemTime::now()).unwrap();
        model.push((info.base_offset, info.last_offset, len));
    }
    p.flush(&mut io).unwrap();
    let segment_of =
        |offset: i64| p.segments().filter(|s| s.base_offset() <= offset).last().unwrap().base_offset();
    for offset in 0..=model.last().unwrap().1 {
        for max_bytes in [0, 1, 100, 500, 1000, 3000, 10_000] {
            let slice = p.read(offset, max_bytes).unwrap();
            let first = model.iter().position(|b| b.1 >= offset).unwrap();
            // Expected: the containing batch, then following batches of the same segment while
            // the total stays within max_bytes.
            let seg = segment_of(model[first].0);
            let mut len = model[first].2;
            let mut last = first;
            while last + 1 < model.len()
                && segment_of(model[last + 1].0) == seg
                && len + model[last + 1].2 <= max_bytes
            {
                last += 1;
                len += model[last].2;
            }
            assert_eq!(
                (slice.first_offset, slice.len, slice.next_offset),
                (model[first].0, len, model[last].1 + 1),
                "offset {offset}, max_bytes {max_bytes}"
            );
        }
    }
}

/// Blocks allocated to a file (data and reservation).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn reservation_steps_grow_with_the_write_rate_and_are_given_back_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let policy = ReservePolicy {
        free_floor_bytes: Some(0),
        idle: Duration::from_secs(10),
        ..ReservePolicy::default()
    };
    let disk = ShardDisk::new(policy, 16);
    let budget = &disk.reserve;
    let mut io = FallbackIo::new();
    let config = LogConfig { segment_bytes: 1 << 30, batch_bytes_max: 1 << 20, ..LogConfig::default() };
    let mut fast =
        Partition::open_with(&dir.path().join("fast"), config.clone(), &mut io, Arc::clone(&disk)).unwrap();
    let mut slow =
        Partition::open_with(&dir.path().join("slow"), config, &mut io, Arc::clone(&disk)).unwrap();
    let t0 = Instant::now();
    // The slow partition writes 10 KB a second, the fast one 4 MiB every 10 ms (400 MiB/s).
    let mut steps_fast = Vec::new();
    for i in 0..40u32 {
        let now = t0 + Duration::from_millis(10) * i;
        for _ in 0..4 {
            fast.append(&mut io, value_batch(1_000_000, 1, 1), SystemTime::now()).unwrap();
        }
        commit(&mut io, &mut [&mut fast], now).unwrap();
        steps_fast.push(fast.reserved_ahead());
    }
    for i in 0..40u32 {
        slow.append(&mut io, value_batch(10_000, 1, 1), SystemTime::now()).unwrap();
        commit(&mut io, &mut [&mut slow], t0 + Duration::from_secs(1) * i).unwrap();
        assert!(slow.reserved_ahead() <= 1 << 20, "a slow partition keeps the smallest step");
    }
    let fast_file = crate::segment::log_path(&dir.path().join("fast"), 0);
    if allocated(&fast_file) <= fast.size_bytes() {
        eprintln!("this file system did not reserve; nothing more to check");
        return;
    }
    assert!(
        steps_fast.iter().any(|&r| r > 16 << 20),
        "a fast partition reserves bigger steps: {steps_fast:?}"
    );
    assert!(steps_fast.iter().all(|&r| r <= (64 << 20) + (4 << 20)), "{steps_fast:?}");
    assert_eq!(
        budget.reserved_bytes(),
        fast.reserved_ahead() + slow.reserved_ahead(),
        "the budget counts both"
    );
    // Idle for longer than the policy's idle time: the reservation goes back.
    let later = t0 + Duration::from_secs(60);
    assert!(fast.release_reservation(&mut io, later, false));
    assert_eq!(fast.reserved_ahead(), 0);
    assert!(allocated(&fast_file) <= fast.size_bytes() + (1 << 20), "{} allocated", allocated(&fast_file));
    drop(slow);
    assert_eq!(budget.reserved_bytes(), 0, "a dropped segment returns what it held");
}

#[test]
fn reservations_stop_at_the_shard_cap() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        ReservePolicy { shard_max_bytes: 5 << 20, free_floor_bytes: Some(0), ..ReservePolicy::default() };
    let disk = ShardDisk::new(policy, 16);
    let budget = &disk.reserve;
    let mut io = FallbackIo::new();
    let mut parts: Vec<Partition> = (0..20)
        .map(|i| {
            Partition::open_with(
                &dir.path().join(format!("p{i}")),
                LogConfig::default(),
                &mut io,
                Arc::clone(&disk),
            )
            .unwrap()
        })
        .collect();
    for p in &mut parts {
        p.append(&mut io, value_batch(100, 1, 1), SystemTime::now()).unwrap();
    }
    let mut refs: Vec<&mut Partition> = parts.iter_mut().collect();
    commit(&mut io, &mut refs, Instant::now()).unwrap();
    let reserved: u64 = parts.iter().map(Partition::reserved_ahead).sum();
    assert_eq!(reserved, budget.reserved_bytes());
    assert!(reserved <= 5 << 20, "{reserved}");
    let holding = parts.iter().filter(|p| p.reserved_ahead() > 0).count();
    assert!(holding <= 5, "{holding} partitions hold a reservation under a 5 MiB cap");
}

#[test]
fn space_is_reserved_ahead_of_appends_and_given_back_at_seal() {
    use std::os::unix::fs::MetadataExt;
    let mut io = FallbackIo::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 8 << 20, batch_bytes_max: 1 << 20, ..LogConfig::default() };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    p.append(&mut io, value_batch(1000, 10, 1), SystemTime::now()).unwrap();
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    let first = crate::segment::log_path(dir.path(), 0);
    let meta = std::fs::metadata(&first).unwrap();
    let allocated = meta.blocks() * 512;
    assert!(meta.len() < 20_000, "the file's size is what was written, not the reservation");
    if allocated < 1 << 20 {
        eprintln!("this file system did not reserve ({allocated} bytes allocated); nothing more to check");
        return;
    }
    // Fill the segment so that it rolls: the sealed one gives its spare reservation back.
    while p.segments().len() == 1 {
        p.append(&mut io, value_batch(100_000, 5, 1), SystemTime::now()).unwrap();
        commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    }
    let meta = std::fs::metadata(&first).unwrap();
    assert!(
        meta.blocks() * 512 <= meta.len() + 4096,
        "{} bytes allocated for {}",
        meta.blocks() * 512,
        meta.len()
    );
    // And the data is intact.
    p.flush(&mut io).unwrap();
    assert!(read_all(&p).len() > 10);
}

#[test]
fn a_commit_of_more_batches_than_iov_max_slices_reads_back_whole() {
    for cache in [crate::io::WriteCache::Keep, crate::io::WriteCache::Drop] {
        let mut io = FallbackIo::with_cache(cache);
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
        for round in 0..3 {
            for i in 0..1500 {
                p.append(&mut io, batch(&format!("{round}-{i}"), 1, 1), SystemTime::now()).unwrap();
            }
            commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
        }
        let all = read_all(&p);
        assert_eq!(all.len(), 4500, "{cache:?}");
        drop(p);
        let p = Partition::open(dir.path(), LogConfig::default(), &mut io).unwrap();
        assert_eq!(read_all(&p).len(), 4500, "{cache:?}");
    }
}
