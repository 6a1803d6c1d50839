use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::io::BackendChoice;

fn config(backend: BackendChoice, shards: usize) -> EngineConfig {
    EngineConfig { shards, io_backend: backend, ..EngineConfig::default() }
}

/// Both I/O backends: the fallback, and io_uring (required where CI says so).
fn backends() -> [BackendChoice; 2] {
    [BackendChoice::Fallback, crate::io::tests::uring_choice()]
}

fn record<'a>(key: Option<&'a [u8]>, value: &'a [u8], timestamp: i64) -> Record<'a> {
    Record { timestamp, key, value: Some(value), headers: &[] }
}

/// A minimal executor: polls a future on this thread, parking between wake-ups. Enough to show
/// the async API needs no particular runtime.
pub(super) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn topics_are_created_listed_altered_and_deleted_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    engine.create_topic("orders", 3, LogConfig::default()).unwrap();
    let never = LogConfig { durability: Durability::Never, ..LogConfig::default() };
    engine.create_topic("clicks", 1, never.clone()).unwrap();
    assert!(matches!(
        engine.create_topic("orders", 1, LogConfig::default()),
        Err(EngineError::TopicExists(_))
    ));
    assert!(matches!(
        engine.create_topic("bad name", 1, LogConfig::default()),
        Err(EngineError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        engine.create_topic("__mine", 1, LogConfig::default()),
        Err(EngineError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        engine.create_topic("zero", 0, LogConfig::default()),
        Err(EngineError::BadPartitionCount { partitions: 0, .. })
    ));
    let names: Vec<String> = engine.list_topics().iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, vec![OFFSETS_TOPIC, "clicks", "orders"]);
    assert_eq!(engine.topic("orders").unwrap().partitions, 3);
    assert_eq!(engine.topic("clicks").unwrap().config, never);
    engine.alter_topic("orders", never.clone()).unwrap();
    engine.produce("clicks", Target::Partition(0), &[record(None, b"x", 1)]).unwrap();
    engine.shutdown().unwrap();
    assert!(matches!(
        engine.produce("clicks", Target::Any, &[record(None, b"y", 1)]),
        Err(EngineError::ShuttingDown)
    ));
    drop(engine);

    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 3)).unwrap();
    assert_eq!(engine.topic("orders").unwrap().config, never, "altered config persisted");
    assert_eq!(engine.list_offset("clicks", 0, OffsetSpec::Latest).unwrap(), Some(1));
    engine.delete_topic("clicks").unwrap();
    assert!(matches!(engine.topic("clicks"), Err(EngineError::UnknownTopic(_))));
    assert!(matches!(
        engine.fetch("clicks", 0, 0, FetchOptions::default()),
        Err(EngineError::UnknownTopic(_))
    ));
    assert!(!dir.path().join("data/clicks-0").exists());
    assert!(matches!(engine.delete_topic(OFFSETS_TOPIC), Err(EngineError::InvalidTopicName { .. })));
    // Re-creating a deleted topic starts empty.
    engine.create_topic("clicks", 1, LogConfig::default()).unwrap();
    assert_eq!(engine.list_offset("clicks", 0, OffsetSpec::Latest).unwrap(), Some(0));
}

#[test]
fn produce_by_partition_and_by_key_then_fetch_on_both_backends() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
        engine.create_topic("t", 4, LogConfig::default()).unwrap();
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h", Some(b"v"))];
        let ack = engine
            .produce(
                "t",
                Target::Partition(2),
                &[Record { timestamp: 5, key: Some(b"k"), value: Some(b"one"), headers }],
            )
            .unwrap();
        assert_eq!((ack.partition, ack.base_offset, ack.last_offset), (2, 0, 0));
        // By key: exactly the partition Kafka's default partitioner picks.
        for key in [&b"alpha"[..], b"beta", b"gamma", b"1234"] {
            let ack = engine.produce("t", Target::Key(key), &[record(Some(key), b"v", 1)]).unwrap();
            assert_eq!(ack.partition, crate::partitioner::partition_for_key(key, 4), "{backend}");
        }
        assert!(matches!(
            engine.produce("t", Target::Partition(9), &[record(None, b"x", 1)]),
            Err(EngineError::UnknownPartition { partition: 9, .. })
        ));
        let fetched = engine.fetch("t", 2, 0, FetchOptions::default()).unwrap();
        let records = fetched.records(0).unwrap();
        assert_eq!(records[0].value.as_deref(), Some(&b"one"[..]));
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[0].headers, vec![(b"h".to_vec(), Some(b"v".to_vec()))]);
        assert_eq!(records[0].timestamp, 5);
        assert_eq!(fetched.log_start_offset, 0);
        assert!(fetched.high_watermark >= 1);
        engine.shutdown().unwrap();
    }
}

#[test]
fn many_producer_threads_into_many_partitions_keep_per_partition_order() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
        const PARTITIONS: u32 = 6;
        const THREADS: u32 = 6;
        const PER_THREAD: u32 = 300;
        engine.create_topic("t", PARTITIONS, LogConfig::default()).unwrap();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let mut last: HashMap<u32, i64> = HashMap::new();
                    for i in 0..PER_THREAD {
                        let p = (t + i) % PARTITIONS;
                        let value = format!("{t}:{i}");
                        let ack = engine
                            .produce("t", Target::Partition(p), &[record(None, value.as_bytes(), 1)])
                            .unwrap();
                        // A producer's acknowledged offsets rise within each partition.
                        if let Some(prev) = last.insert(p, ack.base_offset) {
                            assert!(ack.base_offset > prev);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut total = 0;
        for p in 0..PARTITIONS {
            let mut offset = 0;
            let mut next_seq: HashMap<u32, u32> = HashMap::new();
            loop {
                let f = engine.fetch("t", p, offset, FetchOptions::default()).unwrap();
                if f.slice.len == 0 {
                    break;
                }
                for r in f.records(offset).unwrap() {
                    assert_eq!(r.offset, offset, "contiguous offsets");
                    let v = String::from_utf8(r.value.unwrap()).unwrap();
                    let (t, i) = v.split_once(':').unwrap();
                    let (t, i): (u32, u32) = (t.parse().unwrap(), i.parse().unwrap());
                    // Each thread's records appear in the order it sent them.
                    let prev = next_seq.insert(t, i);
                    assert!(
                        prev.is_none_or(|prev| prev < i),
                        "{backend}: partition {p}: thread {t} out of order"
                    );
                    offset += 1;
                    total += 1;
                }
            }
        }
        assert_eq!(total, THREADS * PER_THREAD);
        let stats = engine.stats().unwrap();
        assert_eq!(stats.len(), 2);
        // The data partitions are spread over both shards, and both acknowledged produces.
        let owners: std::collections::HashSet<usize> = (0..PARTITIONS).map(|p| shard_of("t", p, 2)).collect();
        assert_eq!(owners.len(), 2);
        assert!(stats.iter().all(|s| s.produced > 0), "{stats:?}");
        let produced: u64 = stats.iter().map(|s| s.produced).sum();
        assert_eq!(produced, u64::from(THREADS * PER_THREAD));
        engine.shutdown().unwrap();
    }
}

#[test]
fn long_poll_is_woken_by_an_append_and_otherwise_waits_out_max_wait() {
    for backend in backends() {
        long_poll_on(backend);
    }
}

fn long_poll_on(backend: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    // Nothing arrives: the fetch returns empty after about max_wait.
    let start = Instant::now();
    let options = FetchOptions { max_wait: Duration::from_millis(200), ..FetchOptions::default() };
    let f = engine.fetch("t", 0, 0, options).unwrap();
    assert_eq!(f.slice.len, 0);
    assert!(start.elapsed() >= Duration::from_millis(190), "{:?}", start.elapsed());
    // A long wait is cut short by the append.
    let waiting = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let options = FetchOptions { max_wait: Duration::from_secs(30), ..FetchOptions::default() };
            let start = Instant::now();
            let f = engine.fetch("t", 0, 0, options).unwrap();
            (start.elapsed(), f.records(0).unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    engine.produce("t", Target::Partition(0), &[record(None, b"wake", 1)]).unwrap();
    let (waited, records) = waiting.join().unwrap();
    assert!(waited < Duration::from_secs(10), "woken by the append, not the deadline: {waited:?}");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"wake"[..]));
    // min_bytes: one small record is not enough for 10 KiB; the deadline answers with what is there.
    let options =
        FetchOptions { min_bytes: 10 << 10, max_wait: Duration::from_millis(150), ..FetchOptions::default() };
    let start = Instant::now();
    let f = engine.fetch("t", 0, 0, options).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(140));
    assert_eq!(f.records(0).unwrap().len(), 1);
    // Fetching below the log start or past the end is a typed error.
    assert!(matches!(
        engine.fetch("t", 0, 5, FetchOptions::default()),
        Err(EngineError::Log(crate::log::LogError::OffsetOutOfRange { .. }))
    ));
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Earliest).unwrap(), Some(0));
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Latest).unwrap(), Some(0));
    for ts in [1000, 2000, 3000] {
        engine.produce("t", Target::Partition(0), &[record(None, b"a", ts), record(None, b"b", ts)]).unwrap();
    }
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Latest).unwrap(), Some(6));
    assert_eq!(
        engine.list_offset_with_timestamp("t", 0, OffsetSpec::Timestamp(1500)).unwrap(),
        Some((2, 2000))
    );
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Timestamp(0)).unwrap(), Some(0));
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Timestamp(3001)).unwrap(), None);
}

#[test]
fn committed_offsets_per_consumer_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("t", 2, LogConfig::default()).unwrap();
        assert_eq!(engine.committed_offset("billing", "t", 0).unwrap(), None);
        engine.commit_offset("billing", "t", 0, 10).unwrap();
        engine.commit_offset("billing", "t", 0, 12).unwrap();
        engine.commit_offset("billing", "t", 1, 3).unwrap();
        engine.commit_offset("audit", "t", 0, 7).unwrap();
        assert_eq!(engine.committed_offset("billing", "t", 0).unwrap(), Some(12));
        assert!(matches!(engine.commit_offset("billing", "nope", 0, 1), Err(EngineError::UnknownTopic(_))));
        // Dropped, not shut down: the drop flushes and joins too.
    }
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 3)).unwrap();
    assert_eq!(engine.committed_offset("billing", "t", 0).unwrap(), Some(12));
    assert_eq!(engine.committed_offset("billing", "t", 1).unwrap(), Some(3));
    assert_eq!(engine.committed_offset("audit", "t", 0).unwrap(), Some(7));
    assert_eq!(engine.committed_offset("audit", "t", 1).unwrap(), None);
}

#[test]
fn async_calls_run_on_any_executor() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let fetch = engine.fetch_async(
        "t",
        0,
        0,
        FetchOptions { max_wait: Duration::from_secs(30), ..FetchOptions::default() },
    );
    let producer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            block_on(engine.produce_async("t", Target::Any, &[record(None, b"async", 1)])).unwrap()
        })
    };
    let fetched = block_on(fetch).unwrap();
    assert_eq!(fetched.records(0).unwrap()[0].value.as_deref(), Some(&b"async"[..]));
    assert_eq!(producer.join().unwrap().base_offset, 0);
}

#[test]
fn dropping_the_engine_without_shutdown_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let never = LogConfig { durability: Durability::Never, ..LogConfig::default() };
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("t", 2, never).unwrap();
        for i in 0..100u32 {
            engine.produce("t", Target::Partition(i % 2), &[record(None, &i.to_be_bytes(), 1)]).unwrap();
        }
        let clone = engine.clone();
        drop(engine);
        // Still usable through the clone; the last drop shuts down.
        clone.produce("t", Target::Partition(0), &[record(None, b"last", 1)]).unwrap();
    }
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    let latest: i64 = (0..2).map(|p| engine.list_offset("t", p, OffsetSpec::Latest).unwrap().unwrap()).sum();
    assert_eq!(latest, 101);
}

#[test]
fn handles_are_send_sync_and_cheap_to_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<Engine>();
    assert_send_sync_clone::<Producer>();
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let fut = engine.fetch_async("t", 0, 0, FetchOptions::default());
    assert_send(&fut);
    assert_eq!(std::mem::size_of::<Engine>(), std::mem::size_of::<usize>(), "a handle is one pointer");
}

fn one(value: &[u8]) -> [Record<'_>; 1] {
    [record(None, value, 1)]
}

#[test]
fn drop_backpressure_fails_fast_and_counts_while_the_consumer_lags() {
    for backend in backends() {
        drop_backpressure_on(backend);
    }
}

fn drop_backpressure_on(backend: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let producer =
        engine.producer("t", Backpressure::Drop { consumer: Arc::from("slow"), max_lag: 10 }).unwrap();
    for i in 0..10u8 {
        producer.send(Target::Partition(0), &one(&[i])).unwrap();
    }
    for _ in 0..3 {
        let err = producer.send(Target::Partition(0), &one(b"x")).unwrap_err();
        assert!(matches!(&err, EngineError::Dropped { consumer } if consumer == "slow"), "{err}");
    }
    assert_eq!(producer.dropped(), 3);
    let shard_drops: u64 = engine.stats().unwrap().iter().map(|s| s.dropped).sum();
    assert_eq!(shard_drops, 3, "counted at the edge");
    // Nothing dropped was written.
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Latest).unwrap(), Some(10));
    // The consumer catches up: room again.
    engine.commit_offset("slow", "t", 0, 6).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ack = loop {
        match producer.send(Target::Partition(0), &one(b"y")) {
            Ok(ack) => break ack,
            Err(EngineError::Dropped { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(ack.base_offset, 10);
}

#[test]
fn block_backpressure_waits_for_the_consumer_and_keeps_order() {
    for backend in backends() {
        block_backpressure_on(backend);
    }
}

fn block_backpressure_on(backend: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let producer =
        engine.producer("t", Backpressure::Block { consumer: Arc::from("slow"), max_lag: 5 }).unwrap();
    for i in 0..5u8 {
        producer.send(Target::Partition(0), &one(&[i])).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let blocked = {
        let producer = producer.clone();
        std::thread::spawn(move || {
            for i in 5..8u8 {
                let ack = producer.send(Target::Partition(0), &one(&[i])).unwrap();
                tx.send(ack.base_offset).unwrap();
            }
        })
    };
    // The producer is parked, not refused, and not spinning.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "must wait for the consumer");
    let parked: u64 = engine.stats().unwrap().iter().map(|s| s.parked).sum();
    assert_eq!(parked, 1);
    // The consumer commits progress: the parked produce goes through, in order.
    engine.commit_offset("slow", "t", 0, 3).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 5);
    engine.commit_offset("slow", "t", 0, 8).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 6);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
    blocked.join().unwrap();
    let values: Vec<u8> = engine
        .fetch("t", 0, 0, FetchOptions::default())
        .unwrap()
        .records(0)
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap()[0])
        .collect();
    assert_eq!(values, (0..8).collect::<Vec<u8>>());
    // Shutdown answers parked producers instead of leaving them hanging. Move the consumer
    // back first, and wait until the data shard has heard of it and parked the next produce.
    engine.commit_offset("slow", "t", 0, 0).unwrap();
    let parked_before: u64 = engine.stats().unwrap().iter().map(|s| s.parked).sum();
    let stuck = {
        let producer = producer.clone();
        std::thread::spawn(move || {
            // Until the position reaches the data shard a produce may still go through; keep
            // sending until one parks (it then waits until the shutdown below).
            loop {
                match producer.send(Target::Partition(0), &one(b"z")) {
                    Ok(_) => continue,
                    other => return other,
                }
            }
        })
    };
    let start = Instant::now();
    while engine.stats().unwrap().iter().map(|s| s.parked).sum::<u64>() == parked_before {
        assert!(start.elapsed() < Duration::from_secs(10), "the produce never parked");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(producer);
    engine.shutdown().unwrap();
    assert!(matches!(stuck.join().unwrap(), Err(EngineError::ShuttingDown)));
}

/// A producer ten times faster than its consumer, under each policy: what was lost, and that
/// memory stays bounded (parked bytes within their limit, the backlog on disk, not in memory).
#[test]
fn a_producer_ten_times_faster_than_its_consumer_keeps_memory_bounded_under_every_policy() {
    let parked_bytes_max = 256 << 10;
    for policy in ["buffer", "block", "drop"] {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            Engine::open(dir.path(), EngineConfig { parked_bytes_max, ..config(BackendChoice::Fallback, 2) })
                .unwrap();
        engine.create_topic("t", 1, LogConfig::default()).unwrap();
        let consumer: Arc<str> = Arc::from("slow");
        let backpressure = match policy {
            "buffer" => Backpressure::Buffer,
            "block" => Backpressure::Block { consumer: Arc::clone(&consumer), max_lag: 200 },
            _ => Backpressure::Drop { consumer: Arc::clone(&consumer), max_lag: 200 },
        };
        const PRODUCED: usize = 2_000;
        let value = vec![7u8; 1000];
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The consumer: 10 records per 10 ms, committing as it goes.
        let consuming = {
            let (engine, done) = (engine.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut offset = 0i64;
                let mut peak_parked = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let options = FetchOptions {
                        max_bytes: 10 * 1100,
                        max_wait: Duration::from_millis(20),
                        ..FetchOptions::default()
                    };
                    let f = engine.fetch("t", 0, offset, options).unwrap();
                    let got = f.records(offset).unwrap().len().min(10);
                    offset += got as i64;
                    std::thread::sleep(Duration::from_millis(10));
                    engine.commit_offset("slow", "t", 0, offset).unwrap();
                    let parked = engine.stats().unwrap().iter().map(|s| s.parked_bytes).sum::<u64>();
                    peak_parked = peak_parked.max(parked);
                }
                (offset, peak_parked)
            })
        };
        // The producer: 10,000 records/s from 4 threads (so that Block has several parked),
        // ten times the consumer's 1,000/s.
        let start = Instant::now();
        let results: Vec<(usize, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let producer = engine.producer("t", backpressure.clone()).unwrap();
                    let value = &value;
                    s.spawn(move || {
                        let (mut ok, mut dropped) = (0, 0);
                        for j in 0..PRODUCED / 4 {
                            let due = start + Duration::from_micros(400) * j as u32;
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            match producer.send(Target::Partition(0), &one(value)) {
                                Ok(_) => ok += 1,
                                Err(EngineError::Dropped { .. }) => dropped += 1,
                                Err(e) => panic!("{policy}: {e}"),
                            }
                        }
                        (ok, dropped)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let elapsed = start.elapsed();
        done.store(true, std::sync::atomic::Ordering::Release);
        let (consumed, peak_parked) = consuming.join().unwrap();
        let ok: usize = results.iter().map(|r| r.0).sum();
        let dropped: usize = results.iter().map(|r| r.1).sum();
        let end = engine.list_offset("t", 0, OffsetSpec::Latest).unwrap().unwrap();
        eprintln!("{policy}: {ok} written, {dropped} dropped, {consumed} consumed in {elapsed:?}, peak parked {peak_parked} B");
        assert_eq!(ok + dropped, PRODUCED, "{policy}: every produce answered");
        assert_eq!(end as usize, ok, "{policy}: exactly the accepted records are in the log");
        // Memory: what the shards held at once. Staged bytes are bounded by the mailbox (1,024
        // requests) plus the four producers' requests in flight; parked bytes by the producers.
        let batch_len = build_batch(&one(&value)).unwrap().len() as u64;
        let staged_peak = engine.stats().unwrap().iter().map(|s| s.staged_bytes_peak).max().unwrap();
        assert!(staged_peak <= (1024 + 4) * batch_len, "{policy}: staged {staged_peak} B");
        assert!(
            peak_parked <= 4 * batch_len,
            "{policy}: at most one parked batch per producer, saw {peak_parked} B"
        );
        match policy {
            // Nothing lost; the backlog lives in the log.
            "buffer" => assert_eq!(dropped, 0),
            // Nothing lost; the producer was held to the consumer's pace.
            "block" => {
                assert_eq!(dropped, 0);
                assert!(consumed >= end - 200 - 4, "{policy}: producer stayed within max_lag (+ in flight)");
            }
            // Losses, counted; the consumer is never more than max_lag behind.
            _ => assert!(dropped > 0, "{policy}: a 10x faster producer must lose records"),
        }
    }
}

#[test]
fn shard_threads_are_pinned_one_per_core() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    let mut seen = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else { continue };
        let Some(id) = name.trim().strip_prefix("spate-shard-") else { continue };
        let id: usize = id.parse().unwrap();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let allowed =
            status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string();
        // The id-th CPU of the process's own affinity mask, never one outside it.
        let cpu = super::lifecycle::shard_cpu(id).unwrap();
        assert_eq!(allowed, cpu.to_string(), "shard {id} pinned to its core");
        seen += 1;
    }
    assert!(seen >= 2, "this engine's two shard threads are among them");
    drop(engine);
}

#[test]
fn partitions_map_to_shards_by_a_stable_hash() {
    // Fixed values (FNV-1a of the topic name, then consecutive shards): computed independently,
    // so a change to the mapping shows here.
    let four: Vec<usize> = (0..6).map(|p| shard_of("orders", p, 4)).collect();
    assert_eq!(four, vec![0, 1, 2, 3, 0, 1]);
    let seven: Vec<usize> = (0..3).map(|p| shard_of("orders", p, 7)).collect();
    assert_eq!(seven, vec![4, 5, 6]);
    assert_eq!(shard_of("anything", 9, 1), 0);
}

#[test]
fn produces_racing_a_shutdown_are_all_answered() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let never = LogConfig { durability: Durability::Never, ..LogConfig::default() };
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
        engine.create_topic("t", 50, never).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let producers: Vec<_> = (0..4u32)
            .map(|t| {
                let (engine, tx) = (engine.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut i = 0u32;
                    while engine.produce("t", Target::Partition((t + i) % 50), &one(b"v")).is_ok() {
                        i += 1;
                    }
                    tx.send(()).unwrap();
                })
            })
            .collect();
        drop(tx);
        std::thread::sleep(Duration::from_millis(50));
        engine.shutdown().unwrap();
        for _ in 0..4 {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("round {round}: a producer never got an answer after shutdown"));
        }
        for p in producers {
            p.join().unwrap();
        }
    }
}

#[test]
fn consumer_positions_are_known_right_after_a_restart() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
            engine.create_topic("t", 1, LogConfig::default()).unwrap();
            for i in 0..10u8 {
                engine.produce("t", Target::Partition(0), &one(&[i])).unwrap();
            }
            engine.commit_offset("c", "t", 0, 10).unwrap();
        }
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        // The consumer is caught up: a Drop producer with max_lag 5 must not drop.
        let producer =
            engine.producer("t", Backpressure::Drop { consumer: Arc::from("c"), max_lag: 5 }).unwrap();
        producer.send(Target::Partition(0), &one(b"x")).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

#[test]
fn the_last_handle_dropped_on_a_shard_thread_does_not_hang() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // A waker that owns the last engine handle: it is dropped when the shard answers the fetch,
    // on the shard's thread.
    struct Owner {
        engine: std::sync::Mutex<Option<Engine>>,
        dropped: Arc<AtomicBool>,
    }
    impl std::task::Wake for Owner {
        fn wake(self: Arc<Self>) {}
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            drop(self.engine.lock().unwrap().take());
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let mut fut = Box::pin(engine.fetch_async(
        "t",
        0,
        0,
        FetchOptions { max_wait: Duration::from_millis(100), ..FetchOptions::default() },
    ));
    let owner =
        Arc::new(Owner { engine: std::sync::Mutex::new(Some(engine)), dropped: Arc::clone(&dropped) });
    let waker = std::task::Waker::from(owner);
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    drop(waker);
    let start = Instant::now();
    while !dropped.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(10), "the shard thread hung dropping the engine");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(fut);
    // The engine stopped in the background and released its directory.
    let start = Instant::now();
    loop {
        match Engine::open(dir.path(), config(BackendChoice::Fallback, 1)) {
            Ok(_) => break,
            Err(EngineError::Locked { .. }) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_second_engine_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    let err = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap_err();
    assert!(matches!(err, EngineError::Locked { .. }), "{err}");
    engine.shutdown().unwrap();
    drop(engine);
    Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
}

#[test]
fn committed_offsets_keep_their_partitions_when_the_configured_count_changes() {
    let dir = tempfile::tempdir().unwrap();
    let consumers: Vec<String> = (0..20).map(|i| format!("consumer-{i}")).collect();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("t", 1, LogConfig::default()).unwrap();
        for (i, c) in consumers.iter().enumerate() {
            engine.commit_offset(c, "t", 0, i as i64).unwrap();
        }
    }
    for offsets_partitions in [5, 16] {
        let engine = Engine::open(
            dir.path(),
            EngineConfig { offsets_partitions, ..config(BackendChoice::Fallback, 3) },
        )
        .unwrap();
        for (i, c) in consumers.iter().enumerate() {
            assert_eq!(engine.committed_offset(c, "t", 0).unwrap(), Some(i as i64), "{c}");
        }
    }
}

#[test]
fn bad_input_gets_typed_errors_not_panics_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let long = "c".repeat(70_000);
    assert!(matches!(engine.commit_offset(&long, "t", 0, 1), Err(EngineError::InvalidConsumerName { .. })));
    assert!(matches!(engine.commit_offset("", "t", 0, 1), Err(EngineError::InvalidConsumerName { .. })));
    assert!(matches!(engine.commit_offset("c", "t", 0, -1), Err(EngineError::NegativeOffset(-1))));
    // A wait beyond any clock is clamped, not an overflow.
    let forever = FetchOptions { max_wait: Duration::MAX, min_bytes: 0, ..FetchOptions::default() };
    assert_eq!(engine.fetch("t", 0, 0, forever).unwrap().slice.len, 0, "min_bytes 0 answers at once");
    assert!(engine.fetch("t", 0, -5, FetchOptions::default()).is_err());
    for bad in [
        Backpressure::Block { consumer: Arc::from("c"), max_lag: 0 },
        Backpressure::Drop { consumer: Arc::from("c"), max_lag: 0 },
    ] {
        assert!(matches!(engine.producer("t", bad), Err(EngineError::BadBackpressure)));
    }
    // Internal topics are the engine's to write and configure.
    assert!(matches!(
        engine.produce(OFFSETS_TOPIC, Target::Partition(0), &one(b"forged")),
        Err(EngineError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        engine.alter_topic(OFFSETS_TOPIC, LogConfig::default()),
        Err(EngineError::InvalidTopicName { .. })
    ));
    assert!(matches!(engine.produce("t", Target::Any, &[]), Err(EngineError::NoRecords)));
    // The longest valid name works end to end.
    let name = "n".repeat(249);
    engine.create_topic(&name, 1, LogConfig::default()).unwrap();
    engine.produce(&name, Target::Partition(0), &one(b"v")).unwrap();
}

/// Waits (on the monotonic clock, at most 30 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `shards` shards on `manual`'s time, checking retention every 20 ms.
fn on_clock(manual: &ManualClock, shards: usize) -> EngineConfig {
    EngineConfig {
        clock: manual.clock(),
        retention_check_interval: Duration::from_millis(20),
        ..config(BackendChoice::Fallback, shards)
    }
}

#[test]
fn offsets_of_quiet_consumers_expire_and_active_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let manual = ManualClock::new(std::time::SystemTime::now());
    let day = Duration::from_secs(86_400);
    {
        let engine = Engine::open(dir.path(), on_clock(&manual, 2)).unwrap();
        assert_eq!(engine.config().offsets_retention, Some(7 * day), "Kafka's default");
        engine.create_topic("t", 2, LogConfig::default()).unwrap();
        engine.commit_offset("quiet", "t", 0, 4).unwrap();
        engine.commit_offset("quiet", "t", 1, 5).unwrap();
        engine.commit_offset("busy", "t", 0, 6).unwrap();
        // "busy" never commits again but stays a live member; "quiet" goes away.
        manual.advance(6 * day);
        engine.consumers_active(&["busy"]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(engine.committed_offset("quiet", "t", 1).unwrap(), Some(5), "not before seven days");
        manual.advance(2 * day);
        eventually("quiet offsets expire", || engine.committed_offset("quiet", "t", 1).unwrap().is_none());
        eventually("on every shard", || engine.committed_offset("quiet", "t", 0).unwrap().is_none());
        assert_eq!(
            engine.committed_offset("busy", "t", 0).unwrap(),
            Some(6),
            "an active consumer keeps its offsets"
        );
        // A commit after expiry starts over.
        engine.commit_offset("quiet", "t", 0, 9).unwrap();
        // Seven days after busy was last reported, its offsets go too.
        manual.advance(5 * day + Duration::from_secs(1));
        eventually("busy offsets expire", || engine.committed_offset("busy", "t", 0).unwrap().is_none());
        assert_eq!(engine.committed_offset("quiet", "t", 0).unwrap(), Some(9), "committed five days ago");
    }
    // Group membership is not kept across a restart: at open every consumer gets a whole
    // retention period again, even one whose last commit is already older than that.
    manual.advance(3 * day);
    {
        let engine = Engine::open(dir.path(), on_clock(&manual, 2)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            engine.committed_offset("quiet", "t", 0).unwrap(),
            Some(9),
            "eight days old, kept after open"
        );
        // Reports for consumers without offsets here are dropped, not kept.
        engine.consumers_active(&["never-committed", ""]).unwrap();
    }
    // The tombstones are durable: nothing comes back at open, even with expiry off.
    let engine = Engine::open(
        dir.path(),
        EngineConfig { offsets_retention: None, clock: manual.clock(), ..config(BackendChoice::Fallback, 2) },
    )
    .unwrap();
    assert_eq!(engine.committed_offset("quiet", "t", 1).unwrap(), None);
    assert_eq!(engine.committed_offset("quiet", "t", 0).unwrap(), Some(9));
    assert_eq!(engine.committed_offset("busy", "t", 0).unwrap(), None);
}

/// Retention by age and roll by age follow the engine's clock: eight days later by a manual
/// clock, the segments a week old are gone.
#[test]
fn retention_by_age_follows_the_engine_clock() {
    let dir = tempfile::tempdir().unwrap();
    let manual = ManualClock::new(std::time::SystemTime::now());
    let engine = Engine::open(dir.path(), on_clock(&manual, 1)).unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let topic = LogConfig { retention_age: Some(week), segment_bytes: 4096, ..LogConfig::default() };
    engine.create_topic("t", 1, topic).unwrap();
    let now_ms = manual.clock().now_ms();
    for i in 0..50 {
        engine.produce("t", Target::Partition(0), &[record(None, &[b'x'; 200], now_ms + i)]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        engine.list_offset("t", 0, OffsetSpec::Earliest).unwrap(),
        Some(0),
        "nothing is a week old yet"
    );
    manual.advance(week + Duration::from_secs(86_400));
    eventually("week-old records deleted", || {
        engine.list_offset("t", 0, OffsetSpec::Earliest).unwrap() == Some(50)
    });
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Latest).unwrap(), Some(50));
    // New records are stamped by the same clock, and accepted at its time.
    let later = manual.clock().now_ms();
    engine.produce("t", Target::Partition(0), &[record(None, b"new", later)]).unwrap();
    assert_eq!(engine.list_offset("t", 0, OffsetSpec::Timestamp(later)).unwrap(), Some(50));
}

#[test]
fn deleting_a_topic_forgets_its_offsets_and_leftovers_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("t", 2, LogConfig::default()).unwrap();
        engine.produce("t", Target::Partition(0), &one(b"old")).unwrap();
        engine.commit_offset("c", "t", 0, 1).unwrap();
        engine.delete_topic("t").unwrap();
        engine.create_topic("t", 2, LogConfig::default()).unwrap();
        assert_eq!(engine.committed_offset("c", "t", 0).unwrap(), None, "forgotten with the topic");
        engine.create_topic("gone", 1, LogConfig::default()).unwrap();
        engine.produce("gone", Target::Partition(0), &one(b"old")).unwrap();
    }
    assert!(Engine::open(dir.path(), config(BackendChoice::Fallback, 2))
        .unwrap()
        .committed_offset("c", "t", 0)
        .unwrap()
        .is_none());
    // A deletion cut short after its description went: the data is still there...
    std::fs::remove_file(dir.path().join("topics/gone.topic")).unwrap();
    assert!(dir.path().join("data/gone-0").exists());
    // ...and the next open removes it, so a new "gone" starts empty.
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    assert!(!dir.path().join("data/gone-0").exists());
    engine.create_topic("gone", 1, LogConfig::default()).unwrap();
    assert_eq!(engine.list_offset("gone", 0, OffsetSpec::Latest).unwrap(), Some(0));
}

fn idempotent_batch(producer_id: i64, epoch: i16, seq: i32, values: &[&[u8]]) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions {
        producer_id,
        producer_epoch: epoch,
        base_sequence: seq,
        ..BatchOptions::default()
    });
    for v in values {
        b.push(&record(None, v, 1));
    }
    b.finish()
}

#[test]
fn idempotent_retries_are_written_once_even_across_a_restart_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends() {
        let topic = format!("idem-{backend:?}").to_lowercase();
        let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
        engine.create_topic(&topic, 1, LogConfig::default()).unwrap();
        let bp = Backpressure::Buffer;
        let first = engine.produce_batch(&topic, 0, idempotent_batch(42, 0, 0, &[b"a", b"b"]), &bp).unwrap();
        let again = engine.produce_batch(&topic, 0, idempotent_batch(42, 0, 0, &[b"a", b"b"]), &bp).unwrap();
        assert_eq!((again.base_offset, again.last_offset), (first.base_offset, first.last_offset));
        let gap = engine.produce_batch(&topic, 0, idempotent_batch(42, 0, 3, &[b"c"]), &bp);
        assert!(matches!(gap, Err(EngineError::OutOfOrderSequence { expected: 2, got: 3, .. })), "{gap:?}");
        let next = engine.produce_batch(&topic, 0, idempotent_batch(42, 0, 2, &[b"c"]), &bp).unwrap();
        assert_eq!(next.base_offset, first.last_offset + 1);
        drop(engine);

        let engine = Engine::open(dir.path(), config(backend, 2)).unwrap();
        let retried = engine.produce_batch(&topic, 0, idempotent_batch(42, 0, 2, &[b"c"]), &bp).unwrap();
        assert_eq!(retried.base_offset, next.base_offset, "the restart remembered the producer");
        let stale = engine.produce_batch(&topic, 0, idempotent_batch(42, -1, 3, &[b"d"]), &bp);
        assert!(stale.is_err());
        let end = engine.list_offset(&topic, 0, OffsetSpec::Latest).unwrap();
        assert_eq!(end, Some(3), "three records, each written once");
        let fetched = engine.fetch(&topic, 0, 0, FetchOptions::default()).unwrap();
        let values: Vec<_> = fetched.records(0).unwrap().into_iter().map(|r| r.value.unwrap()).collect();
        assert_eq!(values, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }
}

#[test]
fn a_long_poll_whose_caller_went_away_gives_up_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        EngineConfig {
            shards: 1,
            fetch_waiters_max: 1,
            io_backend: BackendChoice::Fallback,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    engine.create_topic("t", 1, LogConfig::default()).unwrap();
    let long = FetchOptions { max_bytes: 1 << 20, min_bytes: 1, max_wait: Duration::from_secs(30) };
    // The only place, taken and then abandoned: once right away, and once after the shard
    // has parked it and gone idle (nothing visits an idle partition's waiters until then).
    drop(engine.fetch_async("t", 0, 0, long));
    std::thread::sleep(Duration::from_millis(30));
    let parked = engine.fetch_async("t", 0, 0, long);
    std::thread::sleep(Duration::from_millis(50));
    drop(parked);
    // A later turn of the shard notices. (Requests arriving in one turn share the count made
    // at the end of the turn before, so the turns are kept apart.)
    std::thread::sleep(Duration::from_millis(30));
    engine.list_offset("t", 0, OffsetSpec::Latest).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let started = Instant::now();
    let waiting = std::thread::scope(|s| {
        let waiter = s
            .spawn(|| engine.fetch("t", 0, 0, FetchOptions { max_wait: Duration::from_millis(300), ..long }));
        waiter.join().unwrap().unwrap()
    });
    assert_eq!(waiting.slice.len, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "the second long poll should wait (it has a place), not be answered at once; it took {waited:?}"
    );
}

fn dir_log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn the_offsets_topic_is_compacted_to_the_latest_offset_of_each_key_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        shards: 2,
        offsets_partitions: 1,
        offsets_segment_bytes: 4096,
        compaction: crate::api::CompactionSetup {
            check_interval: Duration::from_millis(20),
            ..Default::default()
        },
        io_backend: BackendChoice::Fallback,
        ..EngineConfig::default()
    };
    let offsets_dir = dir.path().join("data").join(format!("{OFFSETS_TOPIC}-0"));
    {
        let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
        engine.create_topic("t", 2, LogConfig::default()).unwrap();
        engine.create_topic("gone", 1, LogConfig::default()).unwrap();
        engine.commit_offset("g", "gone", 0, 5).unwrap();
        engine.delete_topic("gone").unwrap();
        // Many commits of few keys: the log grows, the live state does not.
        for round in 0..200i64 {
            let waits: Vec<_> = (0..4)
                .map(|i| {
                    engine.commit_offset_async(
                        &format!("group-{}", i % 2),
                        "t",
                        (i / 2) as u32,
                        round * 10 + i,
                        "",
                    )
                })
                .collect();
            for w in waits {
                block_on(w).unwrap();
            }
        }
        // About 64 KiB were written in 4 KiB segments; compaction keeps the latest commit of
        // each key. Commits may outpace the checks; once they stop, the next check compacts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir_log_bytes(&offsets_dir) >= 16 << 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = dir_log_bytes(&offsets_dir);
        assert!(after < 16 << 10, "the offsets log holds {after} bytes");
        assert_eq!(engine.committed_offset("group-0", "t", 0).unwrap(), Some(1990));
        assert_eq!(engine.committed_offset("group-1", "t", 0).unwrap(), Some(1991));
        assert_eq!(engine.committed_offset("group-0", "t", 1).unwrap(), Some(1992));
        assert_eq!(engine.committed_offset("group-1", "t", 1).unwrap(), Some(1993));
        // Commits keep working on the compacted log.
        engine.commit_offset("group-0", "t", 0, 5000).unwrap();
    }
    let engine = Engine::open(dir.path(), cfg).unwrap();
    assert_eq!(engine.committed_offset("group-0", "t", 0).unwrap(), Some(5000));
    assert_eq!(engine.committed_offset("group-1", "t", 1).unwrap(), Some(1993));
    let all = block_on(engine.committed_offsets_async("group-1")).unwrap();
    assert_eq!(all.len(), 2);
    engine.create_topic("gone", 1, LogConfig::default()).unwrap();
    assert_eq!(engine.committed_offset("g", "gone", 0).unwrap(), None, "a deleted topic's offsets stay gone");
}

/// Blocks allocated to every file under `dir` (data and reservations).
fn allocated_under(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { allocated_under(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

#[test]
fn five_hundred_partitions_with_one_record_each_reserve_under_a_gigabyte_and_nothing_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    engine.create_topic("wide", 500, LogConfig::default()).unwrap();
    for p in 0..500 {
        engine.produce("wide", Target::Partition(p), &[record(None, &[7u8; 100], 1)]).unwrap();
    }
    let reserved: u64 = engine.stats().unwrap().iter().map(|s| s.reserved_bytes).sum();
    let on_disk = allocated_under(dir.path());
    eprintln!("500 partitions: {on_disk} bytes allocated, {reserved} reserved");
    assert!(on_disk < 1 << 30, "{on_disk} bytes allocated for 500 records");
    assert!(reserved <= 2 * crate::log::ReservePolicy::default().shard_max_bytes, "{reserved}");
    engine.shutdown().unwrap();
    let after = allocated_under(dir.path());
    // What is left is data, indexes and directories: a few blocks per partition.
    assert!(after < 500 * 64 * 1024, "{after} bytes allocated after shutdown");
}

#[test]
fn an_idle_partition_gives_its_reservation_back() {
    let dir = tempfile::tempdir().unwrap();
    let reserve = crate::log::ReservePolicy { idle: Duration::from_millis(200), ..Default::default() };
    let engine =
        Engine::open(dir.path(), EngineConfig { reserve, ..config(BackendChoice::Fallback, 1) }).unwrap();
    engine.create_topic("idle", 1, LogConfig::default()).unwrap();
    engine.produce("idle", Target::Partition(0), &[record(None, b"v", 1)]).unwrap();
    let held = engine.stats().unwrap()[0].reserved_bytes;
    if held == 0 {
        eprintln!("this file system's free space is below the reservation floor; nothing to check");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().unwrap()[0].reserved_bytes > 0 {
        assert!(Instant::now() < deadline, "the reservation was not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(allocated_under(&dir.path().join("data/idle-0")) < 256 * 1024);
}

#[test]
fn a_topic_rolling_at_every_append_keeps_the_open_files_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), EngineConfig { sealed_files_max: 16, ..config(BackendChoice::Fallback, 1) })
            .unwrap();
    // segment.ms = 1: nearly every append finds its active segment too old and rolls.
    let rolling = LogConfig {
        segment_age: Duration::from_millis(1),
        durability: Durability::Never,
        ..LogConfig::default()
    };
    engine.create_topic("rolling", 1, rolling).unwrap();
    for i in 0..2000u32 {
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let value = i.to_be_bytes();
        engine.produce("rolling", Target::Partition(0), &[record(None, &value, 1)]).unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("data/rolling-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments > 100, "{segments} segments");
    // Read all of it back, segment after segment: each sealed file is opened for the read.
    let mut offset = 0;
    let mut seen = 0;
    while offset < 2000 {
        let fetched = engine.fetch("rolling", 0, offset, FetchOptions::default()).unwrap();
        seen += fetched.records(offset).unwrap().len();
        offset = fetched.next_offset();
    }
    assert_eq!(seen, 2000);
    let stats = &engine.stats().unwrap()[0];
    assert!(stats.sealed_files_open <= 16, "{} sealed files open", stats.sealed_files_open);
    // Descriptors of this process that point into this engine's directory (other tests run
    // in parallel): the active segment and at most sixteen sealed ones, besides the lock and
    // the offsets topic's partitions.
    let ours = open_files_under(dir.path());
    assert!(
        ours <= 1 + 16 + 1 + 8 + 4,
        "{ours} descriptors open under the data directory for {segments} segments"
    );
    engine.shutdown().unwrap();
}

/// Descriptors of this process whose file lies under `dir`.
fn open_files_under(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[test]
fn creating_more_partitions_than_the_limit_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), EngineConfig { partitions_max: 30, ..config(BackendChoice::Fallback, 1) })
            .unwrap();
    // The offsets topic has 8 partitions of the 30.
    engine.create_topic("first", 20, LogConfig::default()).unwrap();
    let refused = engine.create_topic("second", 3, LogConfig::default()).unwrap_err();
    assert!(
        matches!(refused, EngineError::TooManyPartitions { requested: 3, existing: 28, max: 30, .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("partitions_max"), "{refused}");
    engine.create_topic("second", 2, LogConfig::default()).unwrap();
    assert_eq!(engine.partition_count(), 30);
}

#[test]
fn compressed_batches_are_validated_on_produce_and_decoded_on_fetch() {
    use crate::record::compression::compress_batch;
    use crate::record::{BatchBuilder, BatchOptions, Compression};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("zipped", 1, LogConfig::default()).unwrap();
    let mut b = BatchBuilder::new(BatchOptions::default());
    for i in 0..10 {
        b.push(&record(Some(b"k"), format!("value-{i}").as_bytes(), 5));
    }
    let batch = compress_batch(&b.finish(), Compression::Lz4).unwrap();
    let ack = engine.produce_batch("zipped", 0, batch, &Backpressure::Buffer).unwrap();
    assert_eq!((ack.base_offset, ack.last_offset), (0, 9));
    let fetched = engine.fetch("zipped", 0, 3, FetchOptions::default()).unwrap();
    let values: Vec<Vec<u8>> = fetched.records(3).unwrap().into_iter().filter_map(|r| r.value).collect();
    assert_eq!(values, (3..10).map(|i| format!("value-{i}").into_bytes()).collect::<Vec<_>>());
}

#[test]
fn deleting_a_topic_with_many_committed_offsets_forgets_them_all_for_good() {
    let dir = tempfile::tempdir().unwrap();
    // Consumers whose commits all land in one offsets partition (of the default eight).
    const KEYS: usize = 4000;
    let names: Vec<String> = (0..)
        .map(|i: usize| format!("{i:06}{}", "c".repeat(CONSUMER_NAME_BYTES_MAX - 6)))
        .filter(|n| crate::partitioner::partition_for_key(n.as_bytes(), 8) == 0)
        .take(KEYS)
        .collect();
    let consumer = |i: usize| names[i].clone();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("many", 1, LogConfig::default()).unwrap();
        // 4,000 keys of 255-byte consumers: their tombstones need several batches of the
        // offsets topic (one batch would pass its 1 MiB limit).
        let waits: Vec<_> =
            (0..KEYS).map(|i| engine.commit_offset_async(&consumer(i), "many", 0, 7, "")).collect();
        for w in waits {
            block_on(w).unwrap();
        }
        engine.delete_topic("many").unwrap();
        engine.create_topic("many", 1, LogConfig::default()).unwrap();
        for i in 0..KEYS {
            assert_eq!(engine.committed_offset(&consumer(i), "many", 0).unwrap(), None);
        }
    }
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    for i in 0..KEYS {
        assert_eq!(engine.committed_offset(&consumer(i), "many", 0).unwrap(), None, "nothing comes back");
    }
}

#[test]
fn offsets_of_a_topic_whose_deletion_was_cut_short_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("cut", 1, LogConfig::default()).unwrap();
        engine.commit_offset("reader", "cut", 0, 5).unwrap();
    }
    // The deletion removed the description, then the process died before the tombstones.
    std::fs::remove_file(dir.path().join("topics/cut.topic")).unwrap();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("cut", 1, LogConfig::default()).unwrap();
        assert_eq!(
            engine.committed_offset("reader", "cut", 0).unwrap(),
            None,
            "a new topic inherits nothing"
        );
    }
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    assert_eq!(engine.committed_offset("reader", "cut", 0).unwrap(), None);
}

#[test]
fn committed_metadata_is_stored_returned_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
        engine.create_topic("meta", 1, LogConfig::default()).unwrap();
        engine.commit_offset_with_metadata("g", "meta", 0, 9, "checkpoint 9 of the job").unwrap();
        let too_long = "x".repeat(OFFSET_METADATA_MAX_BYTES + 1);
        assert!(matches!(
            engine.commit_offset_with_metadata("g", "meta", 0, 10, &too_long),
            Err(EngineError::OffsetMetadataTooLarge { .. })
        ));
    }
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 2)).unwrap();
    let c = engine.committed_offset_with_metadata("g", "meta", 0).unwrap().unwrap();
    assert_eq!((c.offset, &*c.metadata), (9, "checkpoint 9 of the job"));
    engine.commit_offset("g", "meta", 0, 11).unwrap();
    assert_eq!(&*engine.committed_offset_with_metadata("g", "meta", 0).unwrap().unwrap().metadata, "");
}

#[test]
fn concurrent_produces_share_fdatasyncs_and_keep_each_producers_order() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), config(backend, 1)).unwrap();
        engine.create_topic("shared", 1, LogConfig::default()).unwrap();
        const THREADS: usize = 8;
        const PER_THREAD: usize = 200;
        let before = engine.stats().unwrap()[0].commit_fsyncs;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let mut last = -1;
                    for i in 0..PER_THREAD {
                        let v = format!("{t}:{i}");
                        let ack = engine
                            .produce("shared", Target::Partition(0), &[record(None, v.as_bytes(), 1)])
                            .unwrap();
                        assert!(ack.base_offset > last, "offsets rise per producer");
                        last = ack.base_offset;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let stats = &engine.stats().unwrap()[0];
        let fsyncs = stats.commit_fsyncs - before;
        let appends = (THREADS * PER_THREAD) as u64;
        eprintln!("{backend}: {appends} acknowledged produces shared {fsyncs} fdatasyncs");
        assert!(fsyncs >= 1);
        assert!(fsyncs * 2 <= appends, "group commit must share fsyncs: {fsyncs} for {appends} produces");
        let mut next = [0usize; THREADS];
        let mut offset = 0;
        while offset < appends as i64 {
            let fetched = engine.fetch("shared", 0, offset, FetchOptions::default()).unwrap();
            for r in fetched.records(offset).unwrap() {
                let v = String::from_utf8(r.value.unwrap()).unwrap();
                let (t, i) = v.split_once(':').unwrap();
                let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
                assert_eq!(i, next[t], "producer {t} in order");
                next[t] += 1;
            }
            offset = fetched.next_offset();
        }
        assert_eq!(next, [PER_THREAD; THREADS]);
    }
}

#[test]
fn a_damaged_offsets_partition_does_not_stop_the_engine_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
        engine.create_topic("cut", 1, LogConfig::default()).unwrap();
        engine.commit_offset("reader", "cut", 0, 5).unwrap();
        engine.shutdown().unwrap();
    }
    // The offsets partition holding the commit gets a later segment after a gap (damage), and
    // the topic's description is gone (a deletion cut short): its offsets cannot be tombstoned.
    let mut damaged = 0;
    for e in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let p = e.unwrap().path();
        if !p.file_name().unwrap().to_string_lossy().starts_with(OFFSETS_TOPIC) {
            continue;
        }
        if std::fs::metadata(p.join("00000000000000000000.log")).map_or(0, |m| m.len()) > 0 {
            std::fs::write(p.join("00000000000000000100.log"), b"").unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);
    std::fs::remove_file(dir.path().join("topics/cut.topic")).unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).expect("opens anyway");
    engine.create_topic("cut", 1, LogConfig::default()).unwrap();
    assert_eq!(engine.committed_offset("reader", "cut", 0).unwrap(), None, "the stale offset is not served");
}

/// Every record of a partition from offset 0, read through fetches.
fn all_records(engine: &Engine, topic: &str) -> Vec<FetchedRecord> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = engine.fetch(topic, 0, offset, FetchOptions::default()).unwrap();
        if fetched.slice.len == 0 {
            return out;
        }
        out.extend(fetched.records(offset).unwrap());
        offset = fetched.slice.next_offset;
    }
}

fn compacted_topic() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        cleanup: crate::log::Cleanup { compact: true, delete: false },
        compaction: crate::log::Compaction {
            min_dirty_ratio_ppm: 100_000,
            ..crate::log::Compaction::default()
        },
        ..LogConfig::default()
    }
}

#[test]
fn a_compacted_topic_is_compacted_in_the_background_and_refuses_records_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        compaction: crate::api::CompactionSetup {
            check_interval: Duration::from_millis(20),
            slice_bytes: 4096,
            ..Default::default()
        },
        ..config(BackendChoice::Auto, 1)
    };
    let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
    engine.create_topic("table", 1, compacted_topic()).unwrap();
    for i in 0..400 {
        let key = format!("row-{}", i % 20);
        let value = format!("version-{i}");
        engine
            .produce("table", Target::Partition(0), &[record(Some(key.as_bytes()), value.as_bytes(), 1)])
            .unwrap();
    }
    let keyless = engine.produce("table", Target::Partition(0), &[record(None, b"no key", 1)]);
    assert!(
        matches!(&keyless, Err(EngineError::Log(crate::log::LogError::BatchRejected(why))) if why.contains("no key")),
        "{keyless:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.stats().unwrap().iter().map(|s| s.compactions).sum::<u64>() == 0 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats: Vec<ShardStats> = engine.stats().unwrap();
    assert!(stats[0].compactions >= 1, "a pass ran: {stats:?}");
    assert!(stats[0].compaction_reclaimed_bytes > 0);
    assert!(stats[0].compaction_slices > stats[0].compactions, "passes run in slices");
    let records = all_records(&engine, "table");
    assert!(records.len() < 400, "{} records left", records.len());
    // The latest value of every key is there, and the last records, in the active segment.
    let mut latest: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for r in &records {
        latest.insert(r.key.clone().unwrap(), r.value.clone().unwrap());
    }
    for k in 0..20 {
        let want = format!("version-{}", 380 + k);
        assert_eq!(latest[format!("row-{k}").as_bytes()], want.as_bytes());
    }
    assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
    // A forced pass leaves exactly one record per key, and the log keeps its offsets.
    let outcome = engine.compact("table", 0).unwrap();
    assert!(outcome.records_removed > 0);
    let records = all_records(&engine, "table");
    assert_eq!(records.len(), 20);
    assert_eq!(records.last().unwrap().offset, 399);
    assert!(matches!(engine.compact("nope", 0), Err(EngineError::UnknownTopic(_))));
    engine.create_topic("plain", 1, LogConfig::default()).unwrap();
    assert!(matches!(engine.compact("plain", 0), Err(EngineError::NotCompacted(_))));
    drop(engine);
    let engine = Engine::open(dir.path(), cfg).unwrap();
    assert_eq!(all_records(&engine, "table"), records, "after a restart");
    assert_eq!(
        engine.topic("table").unwrap().config.cleanup,
        crate::log::Cleanup { compact: true, delete: false }
    );
}

#[test]
fn erasing_a_key_removes_every_byte_of_its_values_from_the_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Auto, 1)).unwrap();
    engine.create_topic("people", 1, compacted_topic()).unwrap();
    let secret = |i: usize| format!("alice@example.org/secret-{i:04}");
    for i in 0..200 {
        let (key, value) = if i % 10 == 3 {
            ("alice".to_string(), secret(i))
        } else {
            (format!("p{}", i % 17), format!("v{i}"))
        };
        engine
            .produce("people", Target::Partition(0), &[record(Some(key.as_bytes()), value.as_bytes(), 1)])
            .unwrap();
    }
    let files = || -> Vec<u8> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(dir.path().join("data").join("people-0")).unwrap() {
            all.extend(std::fs::read(e.unwrap().path()).unwrap());
        }
        all
    };
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(contains(&files(), b"alice@example.org"), "the values are on disk before");
    // Erase: a tombstone, then a forced compaction (it rolls the active segment too).
    engine
        .produce(
            "people",
            Target::Partition(0),
            &[Record { timestamp: 1, key: Some(b"alice"), value: None, headers: &[] }],
        )
        .unwrap();
    let started = Instant::now();
    engine.compact("people", 0).unwrap();
    let took = started.elapsed();
    let bytes = files();
    assert!(!contains(&bytes, b"alice@example.org"), "no byte of an erased value is left in any file");
    assert!(!contains(&bytes, b"secret-"));
    let records = all_records(&engine, "people");
    let alice: Vec<_> = records.iter().filter(|r| r.key.as_deref() == Some(&b"alice"[..])).collect();
    assert_eq!(alice.len(), 1, "only the tombstone is left");
    assert_eq!(alice[0].value, None);
    assert_eq!(records.iter().filter(|r| r.key.as_deref() != Some(&b"alice"[..])).count(), 17);
    assert!(took < Duration::from_secs(30), "{took:?}");
}

fn upsert(engine: &Engine, topic: &str, key: &str, value: Option<&str>) {
    let r = Record { timestamp: 1, key: Some(key.as_bytes()), value: value.map(str::as_bytes), headers: &[] };
    engine.produce(topic, Target::Partition(0), &[r]).unwrap();
}

/// The change stream's items as (kind, key, value) text, for comparing.
fn describe(change: &Change) -> (String, String, Option<String>) {
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8(b.clone()).unwrap());
    match change {
        Change::Reset => ("reset".into(), String::new(), None),
        Change::Snapshot(r) => ("snapshot".into(), text(&r.key).unwrap(), text(&r.value)),
        Change::SnapshotEnd { offset } => ("end".into(), offset.to_string(), None),
        Change::Upsert(r) => ("upsert".into(), text(&r.key).unwrap(), text(&r.value)),
        Change::Delete(r) => ("delete".into(), text(&r.key).unwrap(), None),
    }
}

#[test]
fn a_change_stream_yields_a_snapshot_a_marker_then_changes_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(BackendChoice::Auto, 2);
    let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
    engine.create_topic("accounts", 1, compacted_topic()).unwrap();
    for i in 0..30 {
        upsert(&engine, "accounts", &format!("acct-{}", i % 6), Some(&format!("balance-{i}")));
    }
    upsert(&engine, "accounts", "acct-5", None);
    // Part of the log is compacted first: the stream reads across fill batches.
    engine.compact("accounts", 0).unwrap();
    upsert(&engine, "accounts", "acct-0", Some("balance-final"));
    let mut stream = engine.change_stream("accounts", 0, "mirror").unwrap();
    let mut snapshot = Vec::new();
    let end = loop {
        match stream.next(Duration::from_millis(10)).unwrap().expect("the snapshot is there at once") {
            Change::SnapshotEnd { offset } => break offset,
            c => snapshot.push(describe(&c)),
        }
    };
    assert_eq!(end, 32, "the snapshot is as of the high watermark");
    snapshot.sort();
    let expected: Vec<_> = [
        ("acct-0", "balance-final"),
        ("acct-1", "balance-25"),
        ("acct-2", "balance-26"),
        ("acct-3", "balance-27"),
        ("acct-4", "balance-28"),
    ]
    .iter()
    .map(|(k, v)| ("snapshot".to_string(), k.to_string(), Some(v.to_string())))
    .collect();
    assert_eq!(snapshot, expected, "every key's latest value once, deleted keys absent");
    assert!(stream.next(Duration::from_millis(20)).unwrap().is_none(), "nothing new yet");
    upsert(&engine, "accounts", "acct-1", Some("balance-31"));
    upsert(&engine, "accounts", "acct-2", None);
    let got: Vec<_> =
        (0..2).map(|_| describe(&stream.next(Duration::from_secs(5)).unwrap().unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("upsert".to_string(), "acct-1".to_string(), Some("balance-31".to_string())),
            ("delete".to_string(), "acct-2".to_string(), None)
        ]
    );
    stream.commit().unwrap();
    assert_eq!(stream.position(), 34);
    drop(stream);
    drop(engine);
    let engine = Engine::open(dir.path(), cfg).unwrap();
    upsert(&engine, "accounts", "acct-3", Some("after-restart"));
    let mut stream = engine.change_stream("accounts", 0, "mirror").unwrap();
    assert!(stream.is_live(), "a committed stream resumes without a snapshot");
    let next = describe(&stream.next(Duration::from_secs(5)).unwrap().unwrap());
    assert_eq!(next, ("upsert".to_string(), "acct-3".to_string(), Some("after-restart".to_string())));
    // Another consumer name starts with its own snapshot.
    // A write during its snapshot is not in it: it comes after the marker, as a change.
    let mut other = engine.change_stream("accounts", 0, "audit").unwrap();
    assert!(!other.is_live());
    upsert(&engine, "accounts", "acct-4", Some("during-snapshot"));
    let mut items = Vec::new();
    while let Some(c) = other.next(Duration::from_millis(200)).unwrap() {
        items.push(describe(&c));
    }
    let marker = items.iter().position(|i| i.0 == "end").unwrap();
    assert!(items[..marker].contains(&("snapshot".into(), "acct-4".into(), Some("balance-28".into()))));
    assert_eq!(
        items[marker + 1..],
        [("upsert".to_string(), "acct-4".to_string(), Some("during-snapshot".to_string()))]
    );
    engine.create_topic("plain", 1, LogConfig::default()).unwrap();
    assert!(matches!(engine.change_stream("plain", 0, "x"), Err(EngineError::NotCompacted(_))));
}

#[test]
fn an_archiving_topic_keeps_its_records_in_the_archive_and_deleting_it_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        archive_dir: Some(archive.path().to_path_buf()),
        retention_check_interval: Duration::from_millis(20),
        ..config(BackendChoice::Auto, 1)
    };
    let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
    let topic =
        LogConfig { segment_bytes: 1024, retention_bytes: Some(2048), archive: true, ..LogConfig::default() };
    engine.create_topic("history", 1, topic).unwrap();
    for i in 0..300 {
        let v = format!("event-{i:04}");
        engine.produce("history", Target::Partition(0), &[record(None, v.as_bytes(), 1)]).unwrap();
    }
    let archived = archive.path().join("history-0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&archived).map_or(0, |d| d.count()) < 9 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let values = |engine: &Engine| -> Vec<Vec<u8>> {
        all_records(engine, "history").into_iter().map(|r| r.value.unwrap()).collect()
    };
    let expected: Vec<Vec<u8>> = (0..300).map(|i| format!("event-{i:04}").into_bytes()).collect();
    assert_eq!(values(&engine), expected, "every record, the archived ones included");
    assert_eq!(engine.list_offset("history", 0, OffsetSpec::Earliest).unwrap(), Some(0));
    drop(engine);
    let engine = Engine::open(dir.path(), cfg).unwrap();
    assert_eq!(values(&engine), expected, "after a restart");
    engine.delete_topic("history").unwrap();
    assert!(!archived.exists(), "the archive of a deleted topic is deleted");
}

#[test]
fn an_erasure_asked_during_a_background_pass_waits_for_its_own_forced_pass() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        compaction: crate::api::CompactionSetup {
            check_interval: Duration::from_millis(5),
            slice_bytes: 16 << 10,
            ..Default::default()
        },
        ..config(BackendChoice::Fallback, 1)
    };
    let quiet = EngineConfig {
        compaction: crate::api::CompactionSetup {
            check_interval: Duration::from_secs(3600),
            ..cfg.compaction
        },
        ..cfg.clone()
    };
    let engine = Engine::open(dir.path(), quiet).unwrap();
    engine.create_topic("people", 1, LogConfig { segment_bytes: 256 << 10, ..compacted_topic() }).unwrap();
    let filler = "x".repeat(400);
    let keys: Vec<String> = (0..100).map(|k| format!("p{k}")).collect();
    for _ in 0..400 {
        let recs: Vec<Record> =
            keys.iter().map(|k| record(Some(k.as_bytes()), filler.as_bytes(), 1)).collect();
        engine.produce("people", Target::Partition(0), &recs).unwrap();
    }
    drop(engine);
    let engine = Engine::open(dir.path(), cfg).unwrap();
    // A background pass is under way when the erasure is asked for.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = &engine.stats().unwrap()[0];
        if s.compaction_slices > 0 && s.compactions == 0 {
            break;
        }
        assert!(Instant::now() < deadline && s.compactions == 0, "no pass caught running: {s:?}");
    }
    upsert(&engine, "people", "alice", Some("alice@example.org"));
    upsert(&engine, "people", "alice", None);
    engine.compact("people", 0).unwrap();
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir.path().join("data").join("people-0")).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    assert!(
        !all.windows(17).any(|w| w == b"alice@example.org"),
        "compact() returned with the value still on disk"
    );
}

#[test]
fn a_compaction_during_a_change_streams_snapshot_takes_nothing_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("accounts", 1, compacted_topic()).unwrap();
    for i in 0..6 {
        upsert(&engine, "accounts", &format!("acct-{i}"), Some(&format!("v{i}")));
    }
    let mut stream = engine.change_stream("accounts", 0, "mirror").unwrap();
    // Replaced after the snapshot's offset, then compacted before the snapshot is read.
    upsert(&engine, "accounts", "acct-0", Some("newer"));
    engine.compact("accounts", 0).unwrap();
    let mut items = Vec::new();
    while let Some(c) = stream.next(Duration::from_millis(50)).unwrap() {
        items.push(describe(&c));
    }
    assert!(items.contains(&("snapshot".into(), "acct-0".into(), Some("v0".into()))), "{items:?}");
    assert_eq!(
        items.last().unwrap(),
        &("upsert".to_string(), "acct-0".to_string(), Some("newer".to_string()))
    );
}

#[test]
fn a_change_stream_that_fell_below_the_log_start_is_told_to_reset() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    let both =
        LogConfig { cleanup: crate::log::Cleanup { compact: true, delete: true }, ..compacted_topic() };
    engine.create_topic("accounts", 1, both).unwrap();
    upsert(&engine, "accounts", "a", Some("1"));
    let mut stream = engine.change_stream("accounts", 0, "mirror").unwrap();
    while stream.next(Duration::ZERO).unwrap().is_some() {}
    upsert(&engine, "accounts", "b", Some("2"));
    upsert(&engine, "accounts", "c", Some("3"));
    engine.delete_records("accounts", 0, Some(2)).unwrap();
    let mut items = Vec::new();
    while let Some(c) = stream.next(Duration::from_millis(50)).unwrap() {
        items.push(describe(&c));
    }
    assert_eq!(items.first().unwrap().0, "reset", "{items:?}");
    assert!(items.contains(&("snapshot".into(), "c".into(), Some("3".into()))), "{items:?}");
    assert!(!items.iter().any(|i| i.1 == "b"), "b was deleted with its records: {items:?}");
}

#[test]
fn an_archiving_topic_cannot_stop_archiving() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    engine.create_topic("kept", 1, LogConfig { archive: true, ..LogConfig::default() }).unwrap();
    assert!(matches!(engine.alter_topic("kept", LogConfig::default()), Err(EngineError::BadTopicConfig(_))));
}

#[test]
fn topics_have_ids_stable_across_restarts_and_new_for_a_recreated_topic() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Engine::open(dir.path(), config(BackendChoice::Fallback, 1)).unwrap();
    let engine = open();
    engine.create_topic("a", 1, LogConfig::default()).unwrap();
    engine.create_topic("b", 2, LogConfig::default()).unwrap();
    let (a, b) = (engine.topic("a").unwrap().id, engine.topic("b").unwrap().id);
    let offsets = engine.topic(OFFSETS_TOPIC).unwrap().id;
    assert!(!a.is_none() && !b.is_none() && !offsets.is_none());
    assert!(a != b && a != offsets);
    assert_eq!(&*engine.topic_by_id(&a).unwrap().name, "a");
    engine.shutdown().unwrap();
    drop(engine);

    let engine = open();
    assert_eq!(engine.topic("a").unwrap().id, a, "kept across a restart");
    assert_eq!(engine.topic(OFFSETS_TOPIC).unwrap().id, offsets);
    engine.delete_topic("a").unwrap();
    assert!(matches!(engine.topic_by_id(&a), Err(EngineError::UnknownTopicId(_))));
    engine.create_topic("a", 1, LogConfig::default()).unwrap();
    let again = engine.topic("a").unwrap().id;
    assert_ne!(again, a, "a recreated topic gets a new ID");
    assert!(engine.topic_by_id(&a).is_err(), "the old ID names nothing");
    engine.shutdown().unwrap();
    drop(engine);

    // A description written before topics had IDs gets one at the next open, and keeps it.
    let file = dir.path().join("topics").join("b.topic");
    let text = std::fs::read_to_string(&file).unwrap();
    let legacy: String = text.lines().filter(|l| !l.starts_with("id=")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, legacy).unwrap();
    let engine = open();
    let given = engine.topic("b").unwrap().id;
    assert!(!given.is_none() && given != b);
    assert!(std::fs::read_to_string(&file).unwrap().contains(&format!("id={given}")), "stored durably");
    engine.shutdown().unwrap();
    drop(engine);
    assert_eq!(open().topic("b").unwrap().id, given);
}
