//! `produce`: producers append batches of fixed-size messages to one embedded partition through
//! its group-commit writer, once per durability mode; each row is compared with the `pwrite`
//! reference of the same byte count measured in the same run.

use std::time::{Duration, Instant};

use spate::io::BackendChoice;
use spate::log::{Appender, Durability, LogConfig};
use spate::record::{BatchBuilder, BatchOptions, Record};

use crate::reference::pwrite_reference;
use crate::report::Row;

#[derive(Debug, Clone)]
pub struct ProduceParams {
    pub message_bytes: usize,
    pub batch_messages: usize,
    pub total_bytes: u64,
    pub producers: usize,
    pub durabilities: Vec<Durability>,
    pub backend: BackendChoice,
}

/// Runs every durability mode, each followed by its reference, in a fresh directory under `root`.
pub fn run(root: &std::path::Path, p: &ProduceParams, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let batch = build_batch(p.message_bytes, p.batch_messages);
    let batches_total = (p.total_bytes / batch.len() as u64).max(1);
    let bytes_total = batches_total * batch.len() as u64;
    let messages_total = batches_total * p.batch_messages as u64;
    for &durability in &p.durabilities {
        progress(&format!("produce durability={durability}"));
        let dir = tempfile::tempdir_in(root)?;
        let config =
            LogConfig { durability, retention_age: None, batch_bytes_max: 8 << 20, ..LogConfig::default() };
        let (appender, thread) = Appender::spawn(dir.path(), config, p.backend)?;
        let per_producer = batches_total / p.producers as u64;
        let start = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..p.producers)
                .map(|i| {
                    let appender = appender.clone();
                    let batch = batch.clone();
                    let n = per_producer + u64::from((i as u64) < batches_total % p.producers as u64);
                    s.spawn(move || -> anyhow::Result<()> {
                        for _ in 0..n {
                            appender.append(batch.clone())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
            }
            Ok(())
        })?;
        let fsyncs = appender.stats().fsyncs.load(std::sync::atomic::Ordering::Relaxed);
        drop(appender);
        // Shutdown flushes and syncs what is left: the covering sync the reference also pays.
        thread.join()?;
        let elapsed = start.elapsed();
        drop(dir);
        progress(&format!("reference pwrite for durability={durability}"));
        let reference = pwrite_reference(root, bytes_total, batch.len())?;
        rows.push(row(
            format!("produce {durability}"),
            messages_total,
            bytes_total,
            elapsed,
            reference,
            fsyncs,
        ));
    }
    Ok(rows)
}

fn row(name: String, messages: u64, bytes: u64, elapsed: Duration, reference: Duration, fsyncs: u64) -> Row {
    let secs = elapsed.as_secs_f64();
    let reference_bytes_per_s = bytes as f64 / reference.as_secs_f64();
    let bytes_per_s = bytes as f64 / secs;
    Row {
        name,
        msgs_per_s: Some(messages as f64 / secs),
        bytes_per_s: Some(bytes_per_s),
        reference_bytes_per_s: Some(reference_bytes_per_s),
        ratio_to_reference: Some(bytes_per_s / reference_bytes_per_s),
        fsyncs: Some(fsyncs),
    }
}

/// One batch of `count` messages of `bytes` bytes each (the value; no key).
fn build_batch(bytes: usize, count: usize) -> Vec<u8> {
    let value: Vec<u8> = (0..bytes).map(|i| (i % 253) as u8).collect();
    let mut b = BatchBuilder::new(BatchOptions::default());
    for _ in 0..count {
        b.push(&Record { timestamp: 1_700_000_000_000, key: None, value: Some(&value), headers: &[] });
    }
    b.finish()
}
