use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::io::fallback::FallbackIo;
use crate::io::fault::{FaultIo, FaultPlan};
use crate::io::Io;
use crate::log::{commit, Cleanup, Compaction, LogConfig, Partition};
use crate::record::{batches, BatchBuilder, BatchHeader, BatchOptions, Compression, Record};

type Row = (i64, Vec<u8>, Option<Vec<u8>>);

/// A slice bounded by bytes only.
fn bytes(n: u64) -> Slice {
    Slice { bytes: n, deadline: std::time::Instant::now() + Duration::from_secs(3600) }
}

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        cleanup: Cleanup { compact: true, delete: false },
        compaction: Compaction { min_dirty_ratio_ppm: 0, ..Compaction::default() },
        ..LogConfig::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One batch of `(key, value)` records (value `None`: a tombstone), compressed with `codec`.
fn keyed_batch(records: &[(&str, Option<&str>)], codec: Compression, opts: BatchOptions) -> Vec<u8> {
    let mut b = BatchBuilder::new(opts);
    for (k, v) in records {
        b.push(&Record {
            timestamp: now_ms(),
            key: Some(k.as_bytes()),
            value: v.map(str::as_bytes),
            headers: &[],
        });
    }
    let plain = b.finish();
    if codec == Compression::None {
        plain
    } else {
        crate::record::compression::compress_batch(&plain, codec).unwrap()
    }
}

fn one(key: &str, value: Option<&str>) -> Vec<u8> {
    keyed_batch(&[(key, value)], Compression::None, BatchOptions::default())
}

/// Every record readable from `from` on: (offset, key, value).
fn rows_from(p: &Partition, from: i64) -> Vec<Row> {
    crate::log::tests::records_from(p, from).into_iter().map(|(o, k, v)| (o, k.unwrap(), v)).collect()
}

/// The header of every batch in the log's segment files (reads pass over empty batches).
fn headers(p: &Partition) -> Vec<BatchHeader> {
    let mut out = Vec::new();
    for seg in p.segments() {
        let bytes = std::fs::read(seg.log_path()).unwrap();
        out.extend(batches(&bytes).map(|b| *b.unwrap().header()));
    }
    out
}

fn rows(p: &Partition) -> Vec<Row> {
    rows_from(p, p.log_start_offset())
}

/// Runs a whole pass in slices of `budget` bytes; returns its outcome and the number of slices.
fn run_pass(
    p: &mut Partition,
    io: &mut dyn Io,
    now: SystemTime,
    forced: bool,
    budget: u64,
) -> Option<(CleanOutcome, usize)> {
    let mut pass = p.start_clean(io, now, forced, 1 << 20).unwrap()?;
    let mut slices = 0;
    loop {
        slices += 1;
        match p.clean_step(&mut pass, io, bytes(budget), &|_, _| false).unwrap() {
            CleanStep::More => {}
            CleanStep::Done(outcome) => return Some((outcome, slices)),
            CleanStep::Abandoned(why) => panic!("abandoned: {why}"),
        }
    }
}

/// What compaction below `end` must leave of `rows`: the latest record of each key among those
/// below `end`, and everything from `end` on.
fn compacted(rows: &[Row], end: i64) -> Vec<Row> {
    let mut latest: HashMap<&[u8], i64> = HashMap::new();
    for (o, k, _) in rows.iter().filter(|r| r.0 < end) {
        latest.insert(k, *o);
    }
    rows.iter().filter(|(o, k, _)| *o >= end || latest[&k[..]] == *o).cloned().collect()
}

/// Appends `n` one-record batches over `keys` keys, committing every ten.
fn fill(p: &mut Partition, io: &mut dyn Io, n: usize, keys: usize, tag: &str) {
    for i in 0..n {
        let key = format!("key-{}", i % keys);
        let value = format!("{tag}-{i}-{}", "x".repeat(i % 7));
        p.append(io, one(&key, Some(&value)), SystemTime::now()).unwrap();
        if i % 10 == 9 {
            commit(io, &mut [&mut *p], Instant::now()).unwrap();
        }
    }
    commit(io, &mut [&mut *p], Instant::now()).unwrap();
}

#[test]
fn compaction_keeps_the_latest_value_of_each_key_and_a_reader_starting_anywhere_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    fill(&mut p, &mut io, 300, 10, "v");
    let before = rows(&p);
    let (size_before, segments_before) = (p.size_bytes(), p.segments().len());
    assert!(segments_before > 10, "{segments_before} segments");
    assert!(p.wants_cleaning(SystemTime::now()));
    let (outcome, slices) = run_pass(&mut p, &mut io, SystemTime::now(), false, 256).unwrap();
    let end = outcome.cleaned_to;
    assert_eq!(end, p.segments().last().unwrap().base_offset(), "everything sealed is compacted");
    assert!(slices > segments_before, "bounded slices: {slices} for {segments_before} segments");

    let after = rows(&p);
    assert_eq!(after, compacted(&before, end));
    assert_eq!(outcome.records_removed as usize, before.len() - after.len());
    assert!(p.size_bytes() < size_before / 3, "{} of {size_before} bytes left", p.size_bytes());
    // Groups are planned by the segments' sizes before the pass (as Kafka's cleaner does), so
    // the segments it shrank are merged by the next pass.
    assert_eq!(p.segments().len(), segments_before);
    // (A forced pass also rolls and compacts the active segment.)
    run_pass(&mut p, &mut io, SystemTime::now(), true, 1 << 20).unwrap();
    assert!(p.segments().len() < segments_before / 3, "{} segments", p.segments().len());
    let after = compacted(&before, p.next_offset());
    assert_eq!(rows(&p), after);
    assert_eq!(after.len(), 10, "one record per key");
    // Fill batches of the earlier pass are merged into new ones, not carried along: at most one
    // before each kept batch and one at each segment's end.
    let fills = headers(&p).iter().filter(|h| h.records_count == 0).count();
    assert!(fills <= after.len() + p.segments().len(), "{fills} fill batches for {} records", after.len());
    assert_eq!(p.log_start_offset(), 0, "compaction never moves the log start");
    // A consumer starting at any offset reads the first surviving record at or after it.
    for from in 0..p.next_offset() {
        let expected: Vec<Row> = after.iter().filter(|r| r.0 >= from).cloned().collect();
        assert_eq!(rows_from(&p, from), expected, "from {from}");
        // And its first fetch starts at a batch with records, never at compaction's filler
        // alone (librdkafka takes a reply without records for a too small buffer).
        if let Some(first) = expected.first() {
            let slice = p.read(from, 1 << 20).unwrap();
            let mut bytes = Vec::new();
            slice.read_into(&mut bytes).unwrap();
            let header = BatchHeader::parse(&bytes).unwrap();
            assert!(header.records_count > 0 && header.last_offset() >= first.0, "from {from}: {header:?}");
        }
    }
    assert!(!p.wants_cleaning(SystemTime::now()), "nothing dirty is left");
    // The compacted log survives a restart, from its index files and without them.
    drop(p);
    let p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    assert_eq!(rows(&p), after);
    assert!(!p.wants_cleaning(SystemTime::now()), "the checkpoint says it is all compacted");
    drop(p);
    // Without the checkpoint the first pass after an open covers everything again.
    let checkpoint = dir.path().join(CHECKPOINT_FILE);
    let saved = std::fs::read(&checkpoint).unwrap();
    std::fs::remove_file(&checkpoint).unwrap();
    let p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    assert!(p.wants_cleaning(SystemTime::now()));
    drop(p);
    std::fs::write(&checkpoint, saved).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index" || e == "timeindex") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    assert!(p.damage().is_empty(), "a rescanned compacted segment is whole: {:?}", p.damage());
    assert_eq!(rows(&p), after);
    // It takes appends, and a second pass compacts what came since.
    let next = p.next_offset();
    fill(&mut p, &mut io, 100, 10, "w");
    let all = rows(&p);
    assert_eq!(all.iter().filter(|r| r.0 >= next).count(), 100);
    let (outcome, _) = run_pass(&mut p, &mut io, SystemTime::now(), false, 1 << 20).unwrap();
    assert_eq!(rows(&p), compacted(&all, outcome.cleaned_to));
}

#[test]
fn a_tombstone_deletes_its_key_and_is_removed_after_the_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let config = LogConfig {
        compaction: Compaction { delete_retention: Duration::from_secs(3600), ..compact_config().compaction },
        ..compact_config()
    };
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    for (k, v) in [("a", Some("a1")), ("b", Some("b1")), ("c", Some("c1")), ("a", Some("a2")), ("b", None)] {
        p.append(&mut io, one(k, v), SystemTime::now()).unwrap();
    }
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    p.roll_now(&mut io).unwrap();
    let now = SystemTime::now();
    run_pass(&mut p, &mut io, now, false, 1 << 20).unwrap();
    let key = |k: &str| k.as_bytes().to_vec();
    let val = |v: &str| Some(v.as_bytes().to_vec());
    assert_eq!(rows(&p), vec![(2, key("c"), val("c1")), (3, key("a"), val("a2")), (4, key("b"), None)]);
    // The tombstone's batch now carries its delete horizon.
    let slice = p.read(4, 1 << 20).unwrap();
    let mut bytes = Vec::new();
    slice.read_into(&mut bytes).unwrap();
    let header = BatchHeader::parse(&bytes).unwrap();
    assert!(header.attributes.has_delete_horizon());
    let horizon = now_ms() + 3_600_000;
    assert!((header.base_timestamp - horizon).abs() < 60_000, "{} vs {horizon}", header.base_timestamp);
    assert!(!p.wants_cleaning(now + Duration::from_secs(3599)));
    // The horizon is remembered across a restart.
    drop(p);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    let later = now + Duration::from_secs(3601);
    assert!(p.wants_cleaning(later), "a passed horizon makes the partition due");
    let (outcome, _) = run_pass(&mut p, &mut io, later, false, 1 << 20).unwrap();
    assert_eq!(outcome.tombstones_removed, 1);
    assert_eq!(rows(&p), vec![(2, key("c"), val("c1")), (3, key("a"), val("a2"))]);
    assert!(!p.wants_cleaning(later));
}

#[test]
fn compressed_batches_are_compacted_record_by_record_and_keep_their_codec() {
    for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let mut io = FallbackIo::new();
        let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
        for round in 0..20 {
            let values: Vec<String> = (0..8).map(|i| format!("r{round}-{i}")).collect();
            let records: Vec<(String, Option<&str>)> =
                (0..8).map(|i| (format!("k{}", (i + round) % 12), Some(values[i].as_str()))).collect();
            let records: Vec<(&str, Option<&str>)> = records.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            p.append(&mut io, keyed_batch(&records, codec, BatchOptions::default()), SystemTime::now())
                .unwrap();
            commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
        }
        p.roll_now(&mut io).unwrap();
        let before = rows(&p);
        let (outcome, _) = run_pass(&mut p, &mut io, SystemTime::now(), false, 512).unwrap();
        assert_eq!(rows(&p), compacted(&before, outcome.cleaned_to), "{codec:?}");
        assert_eq!(rows(&p).len(), 12, "one per key");
        let kept: Vec<BatchHeader> = headers(&p).into_iter().filter(|h| h.records_count > 0).collect();
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|h| h.attributes.compression().unwrap() == codec), "{codec:?}");
    }
}

#[test]
fn an_idempotent_producers_last_batch_survives_emptied_and_others_become_fill() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    let idempotent = |seq: i32| BatchOptions {
        producer_id: 5,
        producer_epoch: 1,
        base_sequence: seq,
        ..BatchOptions::default()
    };
    p.append(
        &mut io,
        keyed_batch(&[("a", Some("1")), ("b", Some("1"))], Compression::None, idempotent(0)),
        SystemTime::now(),
    )
    .unwrap();
    p.append(
        &mut io,
        keyed_batch(&[("a", Some("2")), ("b", Some("2"))], Compression::None, idempotent(2)),
        SystemTime::now(),
    )
    .unwrap();
    p.append(&mut io, one("a", Some("3")), SystemTime::now()).unwrap();
    p.append(&mut io, one("b", Some("3")), SystemTime::now()).unwrap();
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    p.roll_now(&mut io).unwrap();
    let mut pass = p.start_clean(&mut io, SystemTime::now(), false, 1 << 20).unwrap().unwrap();
    let last = |id: i64, base: i64| id == 5 && base == 2;
    while let CleanStep::More = p.clean_step(&mut pass, &mut io, bytes(1 << 20), &last).unwrap() {}
    let headers: Vec<(i64, i64, i64, i32, i32)> = headers(&p)
        .into_iter()
        .map(|h| (h.base_offset, h.last_offset(), h.producer_id, h.base_sequence, h.records_count))
        .collect();
    assert_eq!(
        headers,
        vec![(0, 1, -1, -1, 0), (2, 3, 5, 2, 0), (4, 4, -1, -1, 1), (5, 5, -1, -1, 1)],
        "the first batch became fill, the producer's last one stayed (empty) with its sequence"
    );
}

#[test]
fn records_younger_than_the_minimum_lag_are_not_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let config = LogConfig {
        compaction: Compaction { min_lag: Duration::from_secs(600), ..compact_config().compaction },
        ..compact_config()
    };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    fill(&mut p, &mut io, 100, 5, "v");
    p.roll_now(&mut io).unwrap();
    let before = rows(&p);
    assert!(!p.wants_cleaning(SystemTime::now()), "every record is younger than the lag");
    assert!(run_pass(&mut p, &mut io, SystemTime::now(), false, 1 << 20).is_none());
    let later = SystemTime::now() + Duration::from_secs(601);
    assert!(p.wants_cleaning(later));
    let (outcome, _) = run_pass(&mut p, &mut io, later, false, 1 << 20).unwrap();
    assert_eq!(outcome.cleaned_to, p.next_offset());
    assert_eq!(rows(&p), compacted(&before, p.next_offset()));
}

#[test]
fn a_forced_pass_covers_the_active_segment_and_a_max_lag_makes_a_partition_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        compaction: Compaction {
            min_dirty_ratio_ppm: 1_000_000,
            max_lag: Some(Duration::from_secs(60)),
            ..compact_config().compaction
        },
        ..compact_config()
    };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    fill(&mut p, &mut io, 50, 5, "v");
    assert_eq!(p.segments().len(), 1, "all in the active segment");
    assert!(!p.wants_cleaning(SystemTime::now()));
    assert!(p.wants_cleaning(SystemTime::now() + Duration::from_secs(61)), "max lag passed");
    let before = rows(&p);
    let (outcome, _) = run_pass(&mut p, &mut io, SystemTime::now(), true, 1 << 20).unwrap();
    assert_eq!(outcome.cleaned_to, 50);
    assert_eq!(rows(&p), compacted(&before, 50));
    assert_eq!(rows(&p).len(), 5);
}

/// Builds the log every crash run starts from: sealed segments of keyed records, durable.
fn crash_base(dir: &Path) -> Vec<Row> {
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir, compact_config(), &mut io).unwrap();
    fill(&mut p, &mut io, 120, 7, "v");
    p.roll_now(&mut io).unwrap();
    rows(&p)
}

/// Runs a pass under `plan` until it completes or the injected crash stops it.
fn pass_under(dir: &Path, plan: FaultPlan) -> std::sync::Arc<crate::io::fault::FaultState> {
    let mut io = FaultIo::new(FallbackIo::new(), plan);
    let state = io.state();
    let Ok(mut p) = Partition::open(dir, compact_config(), &mut io) else { return state };
    let Ok(Some(mut pass)) = p.start_clean(&mut io, SystemTime::now(), false, 1 << 20) else { return state };
    while let Ok(CleanStep::More) = p.clean_step(&mut pass, &mut io, bytes(300), &|_, _| false) {}
    state
}

#[test]
fn a_crash_at_any_point_of_a_pass_loses_nothing_and_recovery_finishes_or_discards_it() {
    let base = tempfile::tempdir().unwrap();
    let original = crash_base(base.path());
    let end = *original.iter().map(|(o, ..)| o).max().unwrap() + 1;
    let full = compacted(&original, end);
    let copy = |to: &Path| {
        for entry in std::fs::read_dir(base.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    };
    let counts = {
        let dir = tempfile::tempdir().unwrap();
        copy(dir.path());
        let s = pass_under(dir.path(), FaultPlan::default());
        (s.writes(), s.fsyncs(), s.file_ops())
    };
    assert!(counts.0 > 3 && counts.2 > 5, "the pass writes, syncs and renames: {counts:?}");
    let plans = (1..=counts.0)
        .map(|n| FaultPlan { crash_after_write: Some(n), ..Default::default() })
        .chain((1..=counts.1).map(|n| FaultPlan { crash_after_fsync: Some(n), ..Default::default() }))
        .chain((1..=counts.2).map(|n| FaultPlan { crash_after_file_op: Some(n), ..Default::default() }));
    let mut finished = 0;
    for crash in plans {
        for power_cut in [false, true] {
            let plan = FaultPlan { power_cut, ..crash };
            let dir = tempfile::tempdir().unwrap();
            copy(dir.path());
            pass_under(dir.path(), plan);
            let mut io = FallbackIo::new();
            let mut p = Partition::open(dir.path(), compact_config(), &mut io)
                .unwrap_or_else(|e| panic!("{plan:?}: reopen: {e}"));
            let got = rows(&p);
            // Nothing but original records, every record the full pass keeps, and so the same
            // latest value of every key.
            assert!(got.iter().all(|r| original.contains(r)), "{plan:?}: a record that was never written");
            assert!(full.iter().all(|r| got.contains(r)), "{plan:?}: lost a record compaction keeps");
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{plan:?}: offsets in order");
            if got == full {
                finished += 1;
            }
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
                .collect();
            assert!(leftovers.is_empty(), "{plan:?}: {leftovers:?}");
            p.append(&mut io, one("after", Some("crash")), SystemTime::now()).unwrap();
            p.flush(&mut io).unwrap();
            // A pass after recovery completes the job.
            run_pass(&mut p, &mut io, SystemTime::now(), true, 1 << 20);
            let last = rows(&p);
            assert_eq!(&last[..last.len() - 1], &full[..], "{plan:?}: a later pass compacts fully");
        }
    }
    assert!(finished > 0, "some crashes came after the last commit point");
}

#[test]
fn delete_records_moves_the_log_start_durably_and_deletes_the_segments_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let config = LogConfig { cleanup: Cleanup::default(), ..compact_config() };
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    fill(&mut p, &mut io, 100, 100, "v");
    let segments = p.segments().len();
    let second = p.segments().nth(1).unwrap().base_offset();
    let target = second + 3;
    let out = p.delete_records(&mut io, Some(target)).unwrap();
    assert_eq!((out.log_start_offset, p.log_start_offset()), (target, target));
    assert_eq!(out.segments_deleted, 1, "only the segment wholly below it");
    assert_eq!(p.segments().len(), segments - 1);
    assert!(matches!(p.read(target - 1, 1 << 20), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(rows(&p).first().unwrap().0, target, "reads start at the new log start");
    // Moving it back is nothing; past the high watermark is refused.
    assert_eq!(p.delete_records(&mut io, Some(1)).unwrap().log_start_offset, target);
    assert!(matches!(p.delete_records(&mut io, Some(101)), Err(LogError::OffsetOutOfRange { .. })));
    drop(p);
    let mut p = Partition::open(dir.path(), config.clone(), &mut io).unwrap();
    assert_eq!(p.log_start_offset(), target, "the log start survives a restart");
    // To the end: every sealed segment goes, the log is empty but keeps its offsets.
    let out = p.delete_records(&mut io, None).unwrap();
    assert_eq!(out.log_start_offset, 100);
    assert_eq!(p.segments().len(), 1);
    assert!(rows(&p).is_empty());
    let info = p.append(&mut io, one("k", Some("after")), SystemTime::now()).unwrap();
    assert_eq!(info.base_offset, 100);
}

#[test]
fn a_slice_stops_at_the_first_batch_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    fill(&mut p, &mut io, 40, 10, "t");
    let before = rows(&p);
    let mut pass = p.start_clean(&mut io, SystemTime::now(), true, 1 << 20).unwrap().unwrap();
    let mut slices = 0;
    loop {
        slices += 1;
        let past = Slice { bytes: 1 << 20, deadline: std::time::Instant::now() - Duration::from_millis(1) };
        if let CleanStep::Done(_) = p.clean_step(&mut pass, &mut io, past, &|_, _| false).unwrap() {
            break;
        }
    }
    // One batch per slice: 40 to map, 40 to copy, and a slice per segment end.
    assert!(slices >= 80, "{slices} slices for 40 batches");
    assert_eq!(rows(&p), compacted(&before, 40));
}

#[test]
fn a_segment_removed_while_it_is_mapped_abandons_the_pass_and_no_deleted_key_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let config = LogConfig {
        cleanup: Cleanup { compact: true, delete: true },
        compaction: Compaction { delete_retention: Duration::from_secs(60), ..compact_config().compaction },
        ..compact_config()
    };
    let mut p = Partition::open(dir.path(), config, &mut io).unwrap();
    // Two segments of filler, then K=V, more filler, then K's tombstone.
    fill(&mut p, &mut io, 60, 60, "f");
    p.roll_now(&mut io).unwrap();
    p.append(&mut io, one("K", Some("V")), SystemTime::now()).unwrap();
    fill(&mut p, &mut io, 30, 30, "g");
    p.append(&mut io, one("K", None), SystemTime::now()).unwrap();
    commit(&mut io, &mut [&mut p], Instant::now()).unwrap();
    p.roll_now(&mut io).unwrap();
    let bases: Vec<i64> = p.segments().map(|s| s.base_offset()).collect();
    let now = SystemTime::now();
    let mut pass = p.start_clean(&mut io, now, false, 1 << 20).unwrap().unwrap();
    assert!(matches!(p.clean_step(&mut pass, &mut io, bytes(1), &|_, _| false).unwrap(), CleanStep::More));
    assert_eq!(pass.phase(), "map");
    // DeleteRecords removes the segments being mapped.
    p.delete_records(&mut io, Some(bases[2])).unwrap();
    let step = loop {
        match p.clean_step(&mut pass, &mut io, bytes(1 << 20), &|_, _| false).unwrap() {
            CleanStep::More => {}
            other => break other,
        }
    };
    assert!(matches!(step, CleanStep::Abandoned(_)), "{step:?}");
    // Later passes, past the tombstone's horizon, leave no trace of K.
    run_pass(&mut p, &mut io, now, false, 1 << 20).unwrap();
    run_pass(&mut p, &mut io, now + Duration::from_secs(120), false, 1 << 20).unwrap();
    let k: Vec<Row> = rows(&p).into_iter().filter(|r| r.1 == b"K").collect();
    assert!(k.is_empty(), "K was deleted but reads back as {k:?}");
}

#[test]
fn a_sealed_batch_longer_than_its_segment_fails_the_pass_instead_of_stalling_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    fill(&mut p, &mut io, 100, 10, "v");
    p.roll_now(&mut io).unwrap();
    let victim = p.segments().nth(1).unwrap().log_path();
    drop(p);
    // Bit rot in the length of a sealed segment's first batch (its index files still check).
    let f = std::fs::OpenOptions::new().write(true).open(&victim).unwrap();
    f.write_all_at(&0x0010_0000i32.to_be_bytes(), 8).unwrap();
    drop(f);
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    let mut pass = p.start_clean(&mut io, SystemTime::now(), false, 1 << 20).unwrap().unwrap();
    let outcome =
        (0..10_000).find_map(|_| match p.clean_step(&mut pass, &mut io, bytes(1 << 20), &|_, _| false) {
            Ok(CleanStep::More) => None,
            other => Some(other),
        });
    assert!(matches!(outcome, Some(Err(LogError::Corrupt { .. }))), "{outcome:?}");
    let leftovers = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
        let n = e.as_ref().unwrap().file_name().into_string().unwrap();
        n.ends_with(".cleaned") || n.ends_with(".swap")
    });
    assert_eq!(leftovers.count(), 0, "the failed pass leaves no output behind");
}

#[test]
fn an_archiving_topic_cannot_be_compacted() {
    let config =
        LogConfig { cleanup: Cleanup { compact: true, delete: true }, archive: true, ..LogConfig::default() };
    assert!(config.validate().unwrap_err().contains("remote.storage.enable"));
}

#[test]
fn delete_records_is_refused_on_a_compact_only_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(dir.path(), compact_config(), &mut io).unwrap();
    fill(&mut p, &mut io, 10, 10, "v");
    assert!(matches!(p.delete_records(&mut io, Some(5)), Err(LogError::Policy(_))));
    assert_eq!(p.log_start_offset(), 0);
}
