//! The crash model through the whole engine: every shard on a fault-injecting backend that
//! shares one crash, a workload of idempotent produces to several partitions, offset commits
//! and offsets compaction, a crash after every write and after every fsync (as a process crash
//! and as a power cut), then a restart on a plain backend that must hold every acknowledged
//! record once, in order, and every acknowledged commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::io::fallback::FallbackIo;
use crate::io::fault::{FaultIo, FaultPlan, FaultState};
use crate::io::{BackendChoice, Io};
use crate::record::{BatchBuilder, BatchOptions, Record};

const PARTITIONS: u32 = 3;
const ROUNDS: i64 = 10;

fn config() -> EngineConfig {
    EngineConfig {
        shards: 2,
        pin_threads: false,
        io_backend: BackendChoice::Fallback,
        offsets_partitions: 2,
        // The offsets topic rolls every 512 bytes, and compaction looks at it every turn.
        offsets_segment_bytes: 1024,
        compaction: crate::api::CompactionSetup {
            check_interval: Duration::ZERO,
            slice_bytes: 512,
            ..Default::default()
        },
        retention_check_interval: Duration::from_millis(1),
        // A clock that stands still at the records' time: every run sees the same ages,
        // whatever the date.
        clock: crate::api::ManualClock::new(
            std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ROUNDS as u64),
        )
        .clock(),
        ..EngineConfig::default()
    }
}

fn topic_config() -> LogConfig {
    // Small segments: the workload rolls several times.
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

fn value(partition: u32, round: i64) -> Vec<u8> {
    format!("p{partition}-r{round}-{}", "v".repeat(40)).into_bytes()
}

/// What a run was told: the values acknowledged per partition, and the last commit
/// acknowledged (and the last issued) per (consumer, partition).
#[derive(Debug, Default)]
struct Acked {
    produced: HashMap<u32, Vec<Vec<u8>>>,
    committed: HashMap<(String, u32), i64>,
    issued: HashMap<(String, u32), i64>,
}

/// Runs the workload on `dir` (topic already created) with every shard on a `FaultIo` of
/// `plan`, sharing `state`; returns what was acknowledged.
fn run(dir: &std::path::Path, plan: FaultPlan, state: Arc<FaultState>) -> Acked {
    let factory: IoFactory = Arc::new(move |_shard| {
        let io: Box<dyn Io> = Box::new(FaultIo::with_state(FallbackIo::new(), plan, Arc::clone(&state)));
        Ok(io)
    });
    let mut acked = Acked::default();
    let Ok(engine) = Engine::open_with_io(dir, config(), factory) else { return acked };
    for round in 0..ROUNDS {
        let mut produces = Vec::new();
        let mut commits = Vec::new();
        for p in 0..PARTITIONS {
            let mut b = BatchBuilder::new(BatchOptions {
                producer_id: 100 + i64::from(p),
                producer_epoch: 0,
                base_sequence: round as i32,
                ..BatchOptions::default()
            });
            let v = value(p, round);
            b.push(&Record {
                timestamp: 1_700_000_000_000 + round,
                key: None,
                value: Some(&v),
                headers: &[],
            });
            produces.push((p, v, engine.produce_batch_async("crash", p, b.finish(), &Backpressure::Buffer)));
            let consumer = format!("group-{}", round % 2);
            acked.issued.insert((consumer.clone(), p), round);
            commits.push((
                consumer.clone(),
                p,
                round,
                engine.commit_offset_async(&consumer, "crash", p, round, "m"),
            ));
        }
        for (p, v, f) in produces {
            if super::tests::block_on(f).is_ok() {
                acked.produced.entry(p).or_default().push(v);
            }
        }
        for (consumer, p, offset, f) in commits {
            if super::tests::block_on(f).is_ok() {
                acked.committed.insert((consumer, p), offset);
            }
        }
    }
    let _ = engine.shutdown();
    acked
}

/// Reopens `dir` on a plain backend and checks it against what was acknowledged.
fn check(dir: &std::path::Path, acked: &Acked, what: &str) {
    let engine = Engine::open(dir, config()).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    for p in 0..PARTITIONS {
        let mut values = Vec::new();
        let mut offset = 0;
        loop {
            let fetched = engine.fetch("crash", p, offset, FetchOptions::default()).unwrap();
            let records = fetched.records(offset).unwrap();
            if records.is_empty() {
                break;
            }
            values.extend(records.into_iter().filter_map(|r| r.value));
            offset = fetched.next_offset();
        }
        // Exactly a prefix of the rounds, each once: nothing duplicated, nothing out of order.
        let expect: Vec<Vec<u8>> = (0..values.len() as i64).map(|r| value(p, r)).collect();
        assert_eq!(values, expect, "{what}: partition {p} is not a prefix of the rounds");
        let acked_here = acked.produced.get(&p).map_or(0, Vec::len);
        assert!(
            values.len() >= acked_here,
            "{what}: partition {p} lost acknowledged records: {} < {acked_here}",
            values.len()
        );
    }
    for ((consumer, p), &offset) in &acked.committed {
        let got = engine.committed_offset(consumer, "crash", *p).unwrap();
        let issued = acked.issued[&(consumer.clone(), *p)];
        assert!(
            got.is_some_and(|g| g >= offset && g <= issued),
            "{what}: {consumer}/{p} committed {got:?}, acknowledged {offset}, issued up to {issued}"
        );
    }
    // The recovered engine takes writes, and its idempotent producers continue their sequence.
    for p in 0..PARTITIONS {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.push(&Record { timestamp: 1_700_000_000_000, key: None, value: Some(b"after"), headers: &[] });
        engine
            .produce_batch("crash", p, b.finish(), &Backpressure::Buffer)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    engine.shutdown().unwrap();
}

/// A fresh data directory holding the (empty) topic.
fn prepared() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    engine.create_topic("crash", PARTITIONS, topic_config()).unwrap();
    engine.shutdown().unwrap();
    dir
}

#[test]
fn a_crash_after_any_write_or_fsync_of_the_engine_keeps_every_acknowledgement() {
    // A clean run: how many writes and fsyncs the workload makes (it varies a little with how
    // the shards' turns fall, which only moves the crash points).
    let dir = prepared();
    let state = Arc::new(FaultState::default());
    let acked = run(dir.path(), FaultPlan::default(), Arc::clone(&state));
    assert_eq!(
        acked.produced.values().map(Vec::len).sum::<usize>(),
        (ROUNDS * i64::from(PARTITIONS)) as usize
    );
    check(dir.path(), &acked, "clean run");
    // The offsets topic was compacted: its segments hold the empty batches compaction leaves
    // for the commits it removed.
    let compacted = (0..2).any(|p| {
        std::fs::read_dir(dir.path().join(format!("data/{OFFSETS_TOPIC}-{p}"))).unwrap().any(|e| {
            let path = e.unwrap().path();
            path.extension().is_some_and(|x| x == "log")
                && crate::record::batches(&std::fs::read(&path).unwrap())
                    .any(|b| b.is_ok_and(|b| b.header().records_count == 0))
        })
    });
    assert!(compacted, "the workload compacts the offsets topic");
    let (writes, fsyncs) = (state.writes(), state.fsyncs());
    assert!(writes > 40 && fsyncs > 20, "{writes} writes, {fsyncs} fsyncs");
    let mut points = Vec::new();
    for n in 1..=writes {
        points.push(FaultPlan { crash_after_write: Some(n), ..FaultPlan::default() });
    }
    for n in 1..=fsyncs {
        points.push(FaultPlan { crash_after_fsync: Some(n), ..FaultPlan::default() });
    }
    let mut crashed = 0;
    for point in points {
        for power_cut in [false, true] {
            let plan = FaultPlan { power_cut, ..point };
            let dir = prepared();
            let state = Arc::new(FaultState::default());
            let acked = run(dir.path(), plan, Arc::clone(&state));
            crashed += usize::from(state.crashed());
            check(dir.path(), &acked, &format!("{plan:?}"));
        }
    }
    assert!(crashed > 0, "the sweep crashed nothing");
}
