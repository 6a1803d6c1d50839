use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::io::fallback::FallbackIo;
use crate::io::fault::{FaultIo, FaultPlan};
use crate::log::{commit, LogConfig, Partition, ShardDisk};
use crate::record::{BatchBuilder, BatchOptions, Record};
use crate::segment::reserve::ReservePolicy;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_bytes: Some(2048),
        archive: true,
        ..LogConfig::default()
    }
}

fn disk(archive: &Path) -> Arc<ShardDisk> {
    ShardDisk::with_archive(ReservePolicy::default(), 64, Some(archive.to_path_buf()))
}

fn one(value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    b.push(&Record { timestamp: 1, key: None, value: Some(value.as_bytes()), headers: &[] });
    b.finish()
}

/// Every (offset, value) from the log start on.
fn values(p: &Partition) -> Vec<(i64, String)> {
    crate::log::tests::records_from(p, p.log_start_offset())
        .into_iter()
        .map(|(o, _, v)| (o, String::from_utf8(v.unwrap()).unwrap()))
        .collect()
}

fn fill(p: &mut Partition, io: &mut dyn Io, n: usize) {
    for i in 0..n {
        p.append(io, one(&format!("value-{i:04}")), SystemTime::now()).unwrap();
        if i % 5 == 4 {
            commit(io, &mut [&mut *p], Instant::now()).unwrap();
        }
    }
    commit(io, &mut [&mut *p], Instant::now()).unwrap();
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn retention_moves_old_segments_to_the_archive_and_reads_come_back_from_it() {
    let data = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let dir = data.path().join("t-0");
    let mut io = FallbackIo::new();
    let mut p = Partition::open_with(&dir, config(), &mut io, disk(archive.path())).unwrap();
    fill(&mut p, &mut io, 200);
    let all = values(&p);
    assert_eq!(all.len(), 200);
    let out = p.enforce_retention(&mut io, SystemTime::now()).unwrap();
    assert!(out.segments_deleted > 3, "{out:?}");
    assert_eq!(p.log_start_offset(), 0, "archived offsets stay in the log");
    assert!(p.size_bytes() <= 2048 + 1024, "local bytes within retention: {}", p.size_bytes());
    let archived = files(&archive.path().join("t-0"));
    assert!(archived.iter().filter(|n| n.ends_with(".log")).count() >= out.segments_deleted, "{archived:?}");
    assert!(!files(&dir).contains(&"00000000000000000000.log".to_string()), "moved, not copied");
    assert_eq!(values(&p), all, "every record, from the archive and then from local segments");
    for from in [0, 7, 50, 120] {
        let slice = p.read(from, 1 << 20).unwrap();
        assert!(slice.first_offset <= from && slice.next_offset > from, "from {from}");
    }
    assert_eq!(
        p.offset_for_timestamp(0).unwrap().map(|(o, _)| o),
        Some(0),
        "lookups by time reach the archive"
    );
    // A restart finds the archive.
    drop(p);
    let mut p = Partition::open_with(&dir, config(), &mut io, disk(archive.path())).unwrap();
    assert_eq!(values(&p), all);
    // The archive's own retention deletes from it, and the log start follows.
    let bounded = LogConfig { archive_retention_bytes: Some(2048), ..config() };
    p.set_config(bounded).unwrap();
    let out = p.enforce_retention(&mut io, SystemTime::now()).unwrap();
    assert!(out.archived_deleted > 0, "{out:?}");
    assert!(p.log_start_offset() > 0);
    let left = values(&p);
    assert_eq!(left[..], all[all.len() - left.len()..], "the newest records are kept");
    assert!(p.archived_bytes() <= 2048);
    // DeleteRecords reaches into the archive.
    let target = p.log_start_offset() + 3;
    p.delete_records(&mut io, Some(target)).unwrap();
    assert_eq!(values(&p).first().unwrap().0, target);
}

#[test]
fn without_an_archive_directory_retention_deletes() {
    let data = tempfile::tempdir().unwrap();
    let mut io = FallbackIo::new();
    let mut p = Partition::open(&data.path().join("t-0"), config(), &mut io).unwrap();
    fill(&mut p, &mut io, 200);
    p.enforce_retention(&mut io, SystemTime::now()).unwrap();
    assert!(p.log_start_offset() > 0);
    assert_eq!(p.archived_segments().len(), 0);
}

/// Writes the log every crash run starts from; returns its records.
fn base(dir: &Path, archive: &Path) -> Vec<(i64, String)> {
    let mut io = FallbackIo::new();
    let mut p = Partition::open_with(dir, config(), &mut io, disk(archive)).unwrap();
    fill(&mut p, &mut io, 120);
    p.flush(&mut io).unwrap();
    values(&p)
}

fn archive_under(dir: &Path, archive: &Path, plan: FaultPlan) -> Arc<crate::io::fault::FaultState> {
    let mut io = FaultIo::new(FallbackIo::new(), plan);
    let state = io.state();
    if let Ok(mut p) = Partition::open_with(dir, config(), &mut io, disk(archive)) {
        let _ = p.enforce_retention(&mut io, SystemTime::now());
    }
    state
}

#[test]
fn a_crash_at_any_point_of_archiving_loses_and_duplicates_nothing() {
    let template = tempfile::tempdir().unwrap();
    let (tdata, tarchive) = (template.path().join("data/t-0"), template.path().join("archive"));
    let original = base(&tdata, &tarchive);
    let copy = |to: &Path| {
        for (from, sub) in [(&tdata, "data/t-0")] {
            std::fs::create_dir_all(to.join(sub)).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
            }
        }
    };
    let counts = {
        let run = tempfile::tempdir().unwrap();
        copy(run.path());
        let s =
            archive_under(&run.path().join("data/t-0"), &run.path().join("archive"), FaultPlan::default());
        (s.writes(), s.fsyncs(), s.file_ops())
    };
    assert!(counts.0 > 5 && counts.2 > 5, "archiving writes, syncs and renames: {counts:?}");
    let plans = (1..=counts.0)
        .map(|n| FaultPlan { crash_after_write: Some(n), ..Default::default() })
        .chain((1..=counts.1).map(|n| FaultPlan { crash_after_fsync: Some(n), ..Default::default() }))
        .chain((1..=counts.2).map(|n| FaultPlan { crash_after_file_op: Some(n), ..Default::default() }));
    for crash in plans {
        for power_cut in [false, true] {
            let plan = FaultPlan { power_cut, ..crash };
            let run = tempfile::tempdir().unwrap();
            copy(run.path());
            let (dir, archive) = (run.path().join("data/t-0"), run.path().join("archive"));
            archive_under(&dir, &archive, plan);
            let mut io = FallbackIo::new();
            let mut p = Partition::open_with(&dir, config(), &mut io, disk(&archive))
                .unwrap_or_else(|e| panic!("{plan:?}: reopen: {e}"));
            assert_eq!(values(&p), original, "{plan:?}: every record once, in order");
            let leftovers: Vec<_> =
                files(&archive.join("t-0")).into_iter().filter(|n| n.ends_with(".tmp")).collect();
            assert!(leftovers.is_empty(), "{plan:?}: {leftovers:?}");
            // Archiving completes on the next pass.
            p.enforce_retention(&mut io, SystemTime::now()).unwrap();
            assert_eq!(values(&p), original, "{plan:?}: after archiving again");
            assert!(p.archived_segments().len() > 0);
        }
    }
}

#[test]
fn archived_segments_whose_index_files_are_missing_or_stale_are_rescanned() {
    let data = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let dir = data.path().join("t-0");
    let mut io = FallbackIo::new();
    let mut p = Partition::open_with(&dir, config(), &mut io, disk(archive.path())).unwrap();
    fill(&mut p, &mut io, 100);
    p.enforce_retention(&mut io, SystemTime::now()).unwrap();
    let all = values(&p);
    drop(p);
    // The first archived segment loses its index files; the second gets the third's, which
    // decode but describe another file: both must be rescanned, not trusted.
    let adir = archive.path().join("t-0");
    let logs: Vec<String> = files(&adir).into_iter().filter(|n| n.ends_with(".log")).collect();
    assert!(logs.len() >= 3, "{logs:?}");
    let stem = |n: &str| n.trim_end_matches(".log").to_string();
    for ext in ["index", "timeindex"] {
        std::fs::remove_file(adir.join(format!("{}.{ext}", stem(&logs[0])))).unwrap();
        std::fs::copy(
            adir.join(format!("{}.{ext}", stem(&logs[2]))),
            adir.join(format!("{}.{ext}", stem(&logs[1]))),
        )
        .unwrap();
    }
    let p = Partition::open_with(&dir, config(), &mut io, disk(archive.path())).unwrap();
    assert_eq!(values(&p), all);
    for from in 0..all.len() as i64 {
        let slice = p.read(from, 1 << 20).unwrap();
        assert!(slice.first_offset <= from && slice.next_offset > from, "from {from}");
    }
    let _ = Duration::ZERO;
}
