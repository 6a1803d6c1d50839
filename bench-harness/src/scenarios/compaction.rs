//! `compaction`: what log compaction costs and what it gives back.
//!
//! Throughput: a compacted topic is filled with `total_bytes` of keyed records (`keys` keys,
//! each rewritten many times) and compacted by a forced pass; the row is the pass's rate in
//! bytes of log compacted per second, against the same-run reference of the least a pass must
//! do: read those bytes and write what survives to a new file, then `fdatasync` it. Fresh logs,
//! the reference between them (R E R E … R); the median run is reported with the spread. The
//! space reclaimed is in the row.
//!
//! Interference: on a one-shard engine, an open-loop producer sends one record at a time to a
//! plain topic at `rate` records per second while a background writer updates a keyed topic on
//! the same shard at `table_bytes_per_s`; with that topic's `cleanup.policy` at `delete`
//! (compaction off) and at `compact` with a dirty ratio of 0.05 and checks every 100 ms, so that
//! the shard's own compaction runs all the time, alternating (A B A B). The rows are the
//! producer's latency from intended send time, and the ratio of the p99 with compaction to the
//! p99 without.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Cleanup, Compaction, Durability, LogConfig};
use spate::record::{BatchBuilder, BatchOptions, Record};
use spate::{Engine, EngineConfig, Target};

use crate::report::{Alternation, Outcome, Row};
use crate::workload;

#[derive(Debug, Clone)]
pub struct Params {
    pub total_bytes: u64,
    pub value_bytes: usize,
    pub keys: u64,
    /// Fresh logs compacted (each between two reference runs).
    pub rounds: usize,
    /// Records per second of the latency producer, and seconds per measured window.
    pub rate: f64,
    pub seconds: f64,
    /// Bytes per second the background writer sends to the compacted topic.
    pub table_bytes_per_s: f64,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "total_bytes": self.total_bytes, "value_bytes": self.value_bytes, "keys": self.keys,
            "rounds": self.rounds, "rate": self.rate, "seconds": self.seconds,
            "table_bytes_per_s": self.table_bytes_per_s,
        })
    }
}

const TABLE: &str = "table";
const HOT: &str = "hot";
const BATCH: usize = 64;

fn table_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 20,
        durability: Durability::Never,
        cleanup: Cleanup { compact: true, delete: false },
        // Passes are forced by the scenario, never started by the dirty ratio.
        compaction: Compaction { min_dirty_ratio_ppm: 1_000_000, ..Compaction::default() },
        ..LogConfig::default()
    }
}

/// A one-shard engine checking for compaction every `check`.
fn engine(
    root: &std::path::Path,
    backend: BackendChoice,
    check: Duration,
) -> anyhow::Result<(Engine, tempfile::TempDir)> {
    let dir = tempfile::tempdir_in(root)?;
    let mut config = EngineConfig { shards: 1, io_backend: backend, ..EngineConfig::default() };
    config.compaction.check_interval = check;
    Ok((Engine::open(dir.path(), config)?, dir))
}

/// The keyed topic of the interference windows: compacted all the time, or not at all. Its
/// segments roll about four times a window, so that passes have sealed segments to work on.
fn window_config(p: &Params, compact: bool) -> LogConfig {
    let mut c = table_config();
    c.segment_bytes = ((p.table_bytes_per_s * p.seconds / 4.0) as u64).clamp(64 << 10, 8 << 20);
    c.cleanup = Cleanup { compact, delete: !compact };
    c.compaction.min_dirty_ratio_ppm = 50_000;
    c
}

/// A batch of `BATCH` updates to keys drawn from `keys`, starting at update number `n`.
fn updates(n: u64, keys: u64, value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for i in 0..BATCH as u64 {
        // A multiplicative step spreads consecutive updates over the key space.
        let key = format!("key-{:08}", ((n + i).wrapping_mul(2_654_435_761)) % keys);
        b.push(&Record { timestamp: 1, key: Some(key.as_bytes()), value: Some(value), headers: &[] });
    }
    b.finish()
}

/// Fills the compacted topic with `bytes` of updates.
fn fill(engine: &Engine, bytes: u64, keys: u64, value: &[u8]) -> anyhow::Result<u64> {
    let mut written = 0;
    let mut n = 0u64;
    let mut pending = std::collections::VecDeque::new();
    while written < bytes {
        let batch = updates(n, keys, value);
        written += batch.len() as u64;
        n += BATCH as u64;
        pending.push_back(engine.produce_batch_async(TABLE, 0, batch, &spate::Backpressure::Buffer));
        if pending.len() >= 16 {
            workload::block_on(pending.pop_front().expect("not empty"))?;
        }
    }
    for p in pending {
        workload::block_on(p)?;
    }
    Ok(written)
}

/// The least a pass over `before` bytes leaving `after` must do: read every segment file of
/// the partition, write `after` bytes to a new file, and sync it. Bytes of log per second.
fn reference(partition_dir: &std::path::Path, before: u64, after: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    let mut files: Vec<_> = std::fs::read_dir(partition_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for path in files {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        let mut at = 0;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            file.read_exact_at(&mut buf[..n], at)?;
            at += n as u64;
        }
        read += len;
    }
    let out_path = partition_dir.with_extension("reference");
    let out = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&out_path)?;
    let mut at = 0;
    while at < after {
        let n = buf.len().min((after - at) as usize);
        out.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    out.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(out);
    std::fs::remove_file(&out_path)?;
    anyhow::ensure!(read >= after, "read {read} bytes, less than the {after} a pass keeps");
    Ok(before as f64 / secs)
}

/// One throughput run: a fresh log filled and compacted. (rate, bytes before, bytes after,
/// records removed, directory of the partition to read for the reference).
fn pass_run(
    root: &std::path::Path,
    p: &Params,
    value: &[u8],
) -> anyhow::Result<(f64, u64, u64, u64, tempfile::TempDir)> {
    let (engine, dir) = engine(root, p.backend, Duration::from_secs(3600))?;
    engine.create_topic(TABLE, 1, table_config())?;
    fill(&engine, p.total_bytes, p.keys, value)?;
    let start = Instant::now();
    let outcome = engine.compact(TABLE, 0)?;
    let secs = start.elapsed().as_secs_f64();
    engine.shutdown()?;
    Ok((
        outcome.bytes_before as f64 / secs,
        outcome.bytes_before,
        outcome.bytes_after,
        outcome.records_removed,
        dir,
    ))
}

/// The open-loop producer's latencies (µs) over one window, with the background writer running
/// and the keyed topic compacted by the shard or not. Returns the histogram and the passes made.
fn window(engine: &Engine, p: &Params, value: &[u8], compact: bool) -> anyhow::Result<(workload::Hist, u64)> {
    engine.alter_topic(TABLE, window_config(p, compact))?;
    let passes = || -> anyhow::Result<u64> { Ok(engine.stats()?.iter().map(|s| s.compactions).sum()) };
    let passes_before = passes()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> anyhow::Result<(workload::Hist, u64)> {
        let writer = s.spawn(|| -> anyhow::Result<()> {
            let batch_bytes = updates(0, p.keys, value).len() as f64;
            let schedule = workload::Schedule::new(Instant::now(), p.table_bytes_per_s / batch_bytes);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                schedule.wait_for(n);
                engine.produce_batch(
                    TABLE,
                    0,
                    updates(n * BATCH as u64, p.keys, value),
                    &spate::Backpressure::Buffer,
                )?;
                n += 1;
            }
            Ok(())
        });
        let mut h = workload::histogram();
        let schedule = workload::Schedule::new(Instant::now(), p.rate);
        let total = (p.rate * p.seconds) as u64;
        let small = [1u8; 100];
        for i in 0..total {
            let due = schedule.wait_for(i);
            let r = Record { timestamp: 1, key: None, value: Some(&small), headers: &[] };
            engine.produce(HOT, Target::Partition(0), &[r])?;
            h.saturating_record(schedule.latency_us(due).max(1));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok((h, passes()? - passes_before))
    })
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let value = vec![b'v'; p.value_bytes];
    let mut out = Outcome::default();
    progress("compaction: fill and compact fresh logs, alternating with the read-and-write reference");
    let (_, before, after, _, dir) = pass_run(root, p, &value)?;
    let partition = |d: &tempfile::TempDir| d.path().join("data").join(format!("{TABLE}-0"));
    let mut alt =
        Alternation { references: vec![reference(&partition(&dir), before, after)?], runs: Vec::new() };
    drop(dir);
    let mut last = (0, 0, 0);
    for _ in 0..p.rounds.max(1) {
        let (rate, before, after, removed, dir) = pass_run(root, p, &value)?;
        alt.runs.push(rate);
        alt.references.push(reference(&partition(&dir), before, after)?);
        last = (before, after, removed);
    }
    let (before, after, removed) = last;
    let row = Row::named(format!("compaction {}B values, {} keys", p.value_bytes, p.keys));
    out.rows.push(
        alt.fill(row, removed, before)
            .extra("bytes_before", before)
            .extra("bytes_after", after)
            .extra("reclaimed_bytes", before.saturating_sub(after))
            .extra("reclaimed_share", 1.0 - after as f64 / before.max(1) as f64),
    );

    progress("compaction: produce latency with and without compaction running (one shard)");
    let (engine, _dir) = engine(root, p.backend, Duration::from_millis(100))?;
    engine.create_topic(TABLE, 1, window_config(p, false))?;
    engine.create_topic(HOT, 1, LogConfig { durability: Durability::Never, ..LogConfig::default() })?;
    fill(&engine, p.total_bytes / 4, p.keys, &value)?;
    let (mut without, mut with) = (workload::histogram(), workload::histogram());
    let mut passes = 0;
    for _ in 0..2 {
        without.add(window(&engine, p, &value, false)?.0)?;
        let (h, n) = window(&engine, p, &value, true)?;
        with.add(h)?;
        passes += n;
    }
    engine.shutdown()?;
    let p99 = |h: &workload::Hist| h.value_at_quantile(0.99).max(1) as f64;
    let ratio = p99(&with) / p99(&without);
    out.rows.push(
        Row::named("compaction off: produce latency")
            .with_latency(&without)
            .extra("rate", p.rate)
            .extra("samples", without.len()),
    );
    out.rows.push(
        Row::named("compaction running: produce latency")
            .with_latency(&with)
            .extra("rate", p.rate)
            .extra("samples", with.len())
            .extra("passes", passes)
            .extra("p99_ratio_to_compaction_off", ratio),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_fresh_logs_against_the_reference_and_measures_latency_both_ways() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            total_bytes: 4 << 20,
            value_bytes: 256,
            keys: 500,
            rounds: 2,
            rate: 500.0,
            seconds: 0.3,
            table_bytes_per_s: 1_000_000.0,
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        assert_eq!(out.rows.len(), 3);
        let get = |r: &Row, k: &str| r.extra.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).unwrap();
        let pass = &out.rows[0];
        assert!(pass.ratio_to_reference.unwrap() > 0.0 && pass.bytes_per_s.unwrap() > 0.0);
        let (before, after) =
            (get(pass, "bytes_before").as_u64().unwrap(), get(pass, "bytes_after").as_u64().unwrap());
        assert!(
            before >= 4 << 20 && after < before / 10,
            "500 live keys of 4 MiB written: {after} of {before}"
        );
        assert_eq!(get(pass, "rounds").as_u64(), Some(2));
        for r in &out.rows[1..] {
            assert_eq!(get(r, "samples").as_u64(), Some(2 * 150), "{}", r.name);
            assert!(r.p99_us.unwrap() >= r.p50_us.unwrap());
        }
        assert!(get(&out.rows[2], "passes").as_u64().unwrap() > 0, "passes ran during the windows");
        assert!(get(&out.rows[2], "p99_ratio_to_compaction_off").as_f64().unwrap() > 0.0);
    }
}
