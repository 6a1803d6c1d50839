//! Record layer throughput: encoding batches, parsing + CRC-checking + iterating
//! them, and raw CRC-32C. Sizes follow typical produce requests: many small
//! records, or a few 1 KiB ones.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spate::record::{Batch, BatchBuilder, BatchOptions, Record};

/// (name, records, value bytes per record)
const SHAPES: [(&str, usize, usize); 2] = [("100x100B", 100, 100), ("16x1KiB", 16, 1024)];

fn values(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| (0..size).map(|j| (i * 31 + j) as u8).collect()).collect()
}

fn encode(builder: &mut BatchBuilder, keys: &[Vec<u8>], vals: &[Vec<u8>], out: &mut Vec<u8>) {
    for (i, (k, v)) in keys.iter().zip(vals).enumerate() {
        builder.push(&Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(k),
            value: Some(v),
            headers: &[],
        });
    }
    builder.finish_into(out);
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_encode");
    for (name, count, size) in SHAPES {
        let keys = values(count, 8);
        let vals = values(count, size);
        let mut builder = BatchBuilder::new(BatchOptions::default());
        let mut out = Vec::new();
        encode(&mut builder, &keys, &vals, &mut out);
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encode(&mut builder, &keys, &vals, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_parse_verify_iterate");
    for (name, count, size) in SHAPES {
        let keys = values(count, 8);
        let vals = values(count, size);
        let mut out = Vec::new();
        encode(&mut BatchBuilder::new(BatchOptions::default()), &keys, &vals, &mut out);
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let batch = Batch::parse(black_box(&out)).unwrap();
                let mut total = 0usize;
                for r in batch.records() {
                    let r = r.unwrap();
                    total += r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
                }
                black_box(total)
            })
        });
    }
    g.finish();
}

fn bench_crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    let data: Vec<u8> = (0..64 * 1024).map(|i| i as u8).collect();
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("64KiB", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode, bench_crc);
criterion_main!(benches);
