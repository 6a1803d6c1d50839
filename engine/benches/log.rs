//! Micro-benchmarks of the storage path: sparse index lookups, staging appends, and the append
//! path through commit on each durability mode.

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spate::io::fallback::FallbackIo;
use spate::io::BackendChoice;
use spate::log::{commit, Durability, LogConfig, Partition};
use spate::record::{BatchBuilder, BatchOptions, Record};
use spate::segment::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};

fn batch(messages: usize, message_bytes: usize) -> Vec<u8> {
    let value = vec![7u8; message_bytes];
    let mut b = BatchBuilder::new(BatchOptions::default());
    for _ in 0..messages {
        b.push(&Record { timestamp: 1_700_000_000_000, key: None, value: Some(&value), headers: &[] });
    }
    b.finish()
}

fn index_lookup(c: &mut Criterion) {
    // A full 1 GiB segment at the default 4 KiB interval: 262,144 entries.
    let mut offsets = OffsetIndex::default();
    let mut times = TimeIndex::default();
    for i in 0..262_144u32 {
        offsets.push(OffsetEntry { relative_offset: i * 4, position: i * 4096 });
        times.push(TimeEntry { timestamp: 1_000 + i64::from(i), relative_offset: i * 4 });
    }
    let mut g = c.benchmark_group("index");
    let mut probe = 0u32;
    g.bench_function("offset_floor_262k_entries", |b| {
        b.iter(|| {
            probe = probe.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            black_box(offsets.floor(probe % (262_144 * 4)))
        })
    });
    g.bench_function("time_floor_262k_entries", |b| {
        b.iter(|| {
            probe = probe.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            black_box(times.floor_below(1_000 + i64::from(probe % 262_144)))
        })
    });
    g.finish();
}

fn append_path(c: &mut Criterion) {
    let root = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("append");
    // 64 × 1 KiB per batch: stage + one commit per batch.
    let b = batch(64, 1024);
    g.throughput(Throughput::Bytes(b.len() as u64));
    for backend in [BackendChoice::Uring, BackendChoice::Fallback] {
        for durability in [Durability::Never, Durability::Always] {
            let Ok(mut io) = spate::io::open(backend) else {
                continue;
            };
            let dir = root.path().join(format!("{backend}-{durability}"));
            let config = LogConfig { durability, retention_age: None, ..LogConfig::default() };
            let mut p = Partition::open(&dir, config, &mut *io).expect("open");
            g.bench_function(format!("commit_64x1KiB_{durability}_{backend}"), |bench| {
                bench.iter_batched(
                    || b.clone(),
                    |batch| {
                        p.append(&mut *io, batch, SystemTime::now()).expect("append");
                        commit(&mut *io, &mut [&mut p], Instant::now()).expect("commit")
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    // Staging alone (validation, CRC check, offset assignment, indexing), without I/O.
    let mut io = FallbackIo::new();
    let config = LogConfig { segment_bytes: 1 << 30, retention_age: None, ..LogConfig::default() };
    let mut p = Partition::open(&root.path().join("stage"), config, &mut io).expect("open");
    let small = batch(100, 100);
    g.throughput(Throughput::Elements(100));
    // Only the staging is timed; the commit that empties the stage runs outside the clock.
    g.bench_function("stage_100x100B", |bench| {
        bench.iter_custom(|iters| {
            let batches: Vec<Vec<u8>> = (0..iters.min(10_000)).map(|_| small.clone()).collect();
            let mut elapsed = std::time::Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let round: Vec<Vec<u8>> = batches.iter().take((iters - done) as usize).cloned().collect();
                let n = round.len() as u64;
                let start = Instant::now();
                for batch in round {
                    black_box(p.append(&mut io, batch, SystemTime::now()).expect("append"));
                }
                elapsed += start.elapsed();
                commit(&mut io, &mut [&mut p], Instant::now()).expect("commit");
                done += n;
            }
            elapsed
        })
    });
    g.finish();
}

fn read_path(c: &mut Criterion) {
    // A 64 MiB log of 200-byte batches; each fetch asks for 1 MiB from a random offset.
    let root = tempfile::tempdir().expect("tempdir");
    let mut io = FallbackIo::new();
    let config = LogConfig { durability: Durability::Never, retention_age: None, ..LogConfig::default() };
    let mut p = Partition::open(root.path(), config, &mut io).expect("open");
    let small = batch(1, 140);
    let batches = (64 << 20) / small.len();
    for _ in 0..batches {
        p.append(&mut io, small.clone(), SystemTime::now()).expect("append");
    }
    commit(&mut io, &mut [&mut p], Instant::now()).expect("commit");
    let end = p.high_watermark();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut probe = 1u64;
    g.bench_function("locate_1MiB_of_200B_batches", |b| {
        b.iter(|| {
            probe = probe.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let offset = (probe >> 33) as i64 % end;
            black_box(p.read(offset, 1 << 20).expect("read"))
        })
    });
    g.finish();
}

criterion_group!(benches, index_lookup, append_path, read_path);
criterion_main!(benches);
