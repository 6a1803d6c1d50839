//! `produce`: N producer threads append batches of B messages of S bytes to P partitions of an
//! embedded engine, once per durability mode; each row is compared with the `pwrite` reference of
//! the same byte count (and with O_DIRECT where the file system allows it), measured in the same
//! directory right before and right after the engine, the stronger of the two counting. Every
//! measurement starts after `sync` has flushed the machine's dirty pages.

use std::time::Instant;

use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::Backpressure;

use crate::reference::write_reference;
use crate::report::{Outcome, Row};
use crate::workload;

#[derive(Debug, Clone)]
pub struct Params {
    pub message_bytes: usize,
    pub batch_messages: usize,
    pub total_bytes: u64,
    pub producers: usize,
    pub partitions: u32,
    pub shards: usize,
    pub durabilities: Vec<Durability>,
    pub backend: BackendChoice,
    /// Batches each producer keeps in flight (like a Kafka client's in-flight requests).
    pub in_flight: usize,
    /// Measurements per durability mode; the row reports the median and the spread.
    pub repeats: usize,
    /// Prefix of the row names.
    pub label: String,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "message_bytes": self.message_bytes, "batch_messages": self.batch_messages,
            "total_bytes": self.total_bytes, "producers": self.producers, "partitions": self.partitions,
            "shards": self.shards, "in_flight": self.in_flight, "repeats": self.repeats,
            "durability": self.durabilities.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        })
    }
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let batch = workload::batch(p.message_bytes, p.batch_messages);
    let batches_total = (p.total_bytes / batch.len() as u64).max(p.producers as u64);
    let bytes_total = batches_total * batch.len() as u64;
    let messages_total = batches_total * p.batch_messages as u64;
    let mut out = Outcome::default();
    for &durability in &p.durabilities {
        // Several measurements, each engine run between two reference runs; the row is the
        // one with the median ratio, and the spread of all of them goes with it.
        let mut runs = Vec::with_capacity(p.repeats.max(1));
        for r in 0..p.repeats.max(1) {
            progress(&format!(
                "{} durability={durability}: measurement {} of {}",
                p.label,
                r + 1,
                p.repeats.max(1)
            ));
            runs.push(measure_once(root, p, durability, &batch, batches_total, bytes_total, progress)?);
        }
        let ratio = |m: &Measurement| bytes_total as f64 / m.secs / m.reference.pwrite_bytes_per_s;
        runs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let (low, high) = (ratio(&runs[0]), ratio(&runs[runs.len() - 1]));
        let m = &runs[runs.len() / 2];
        let mut row = Row::named(format!("{} {durability}", p.label))
            .with_throughput(messages_total, bytes_total, m.secs, Some(m.reference.pwrite_bytes_per_s))
            .extra("fsyncs", m.fsyncs)
            .extra("messages", messages_total)
            .extra("repeats", runs.len())
            .extra("ratio_min", low)
            .extra("ratio_max", high);
        if let Some(direct) = m.reference.direct_bytes_per_s {
            row = row
                .extra("direct_reference_bytes_per_s", direct)
                .extra("ratio_to_direct", bytes_total as f64 / m.secs / direct);
        }
        // A reference that moved more than 20% between its runs around any measurement.
        if let Some(moved) = runs.iter().filter_map(|m| m.moved).reduce(f64::max) {
            row = row.extra("reference_moved", moved);
        }
        out.rows.push(row);
    }
    Ok(out)
}

/// One measurement: the reference before, the engine, the reference after.
struct Measurement {
    secs: f64,
    fsyncs: u64,
    reference: crate::reference::WriteReference,
    /// How far the reference moved between its runs before and after, when more than 20%
    /// (`pwrite` or `O_DIRECT`, the larger).
    moved: Option<f64>,
}

fn measure_once(
    root: &std::path::Path,
    p: &Params,
    durability: Durability,
    batch: &[u8],
    batches_total: u64,
    bytes_total: u64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Measurement> {
    // One buffer for every produce: the engine stages a batch as a shared slice and writes the
    // offsets it assigns from a head of its own, as the reference writes one buffer again.
    let batch = bytes::Bytes::copy_from_slice(batch);
    // The reference runs before and after the engine, each measurement after the machine's
    // dirty pages are flushed; the stronger of the two is the one compared against.
    progress(&format!("{} reference writes of {} MiB (before)", p.label, bytes_total >> 20));
    workload::settle();
    let before = write_reference(root, bytes_total, batch.len())?;
    progress(&format!("{} durability={durability}: {} MiB", p.label, bytes_total >> 20));
    workload::settle();
    let (engine, dir) = workload::engine(root, p.shards, p.backend)?;
    let config =
        LogConfig { durability, retention_age: None, batch_bytes_max: 8 << 20, ..LogConfig::default() };
    engine.create_topic("bench", p.partitions, config)?;
    let per_producer = batches_total / p.producers as u64;
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..p.producers)
            .map(|i| {
                let (engine, batch) = (engine.clone(), &batch);
                let n = per_producer + u64::from((i as u64) < batches_total % p.producers as u64);
                s.spawn(move || -> anyhow::Result<()> {
                    // Up to `in_flight` batches queued before waiting for the oldest ack.
                    let mut in_flight = std::collections::VecDeque::with_capacity(p.in_flight);
                    for j in 0..n {
                        let partition =
                            ((i as u64 + j * p.producers as u64) % u64::from(p.partitions)) as u32;
                        if in_flight.len() >= p.in_flight.max(1) {
                            workload::block_on(in_flight.pop_front().expect("non-empty"))?;
                        }
                        let fut = engine.produce_batch_async(
                            "bench",
                            partition,
                            batch.clone(),
                            &Backpressure::Buffer,
                        );
                        in_flight.push_back(Box::pin(fut));
                    }
                    for fut in in_flight {
                        workload::block_on(fut)?;
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
    let stats = engine.stats()?;
    // Shutdown writes and syncs what is left: the covering sync the reference also pays.
    engine.shutdown()?;
    let secs = start.elapsed().as_secs_f64();
    drop(engine);
    drop(dir);
    progress(&format!("{} reference writes of {} MiB (after)", p.label, bytes_total >> 20));
    workload::settle();
    let after = write_reference(root, bytes_total, batch.len())?;
    let reference = crate::reference::WriteReference {
        pwrite_bytes_per_s: before.pwrite_bytes_per_s.max(after.pwrite_bytes_per_s),
        direct_bytes_per_s: match (before.direct_bytes_per_s, after.direct_bytes_per_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    };
    let fsyncs: u64 = stats.iter().map(|s| s.commit_fsyncs).sum();
    let moved_direct = match (before.direct_bytes_per_s, after.direct_bytes_per_s) {
        (Some(a), Some(b)) => crate::report::moved(a, b),
        _ => None,
    };
    let moved = [crate::report::moved(before.pwrite_bytes_per_s, after.pwrite_bytes_per_s), moved_direct]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    Ok(Measurement { secs, fsyncs, reference, moved })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_reference_ratios() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            message_bytes: 1024,
            batch_messages: 16,
            total_bytes: 4 << 20,
            producers: 2,
            partitions: 2,
            shards: 2,
            durabilities: vec![Durability::Never, Durability::Always],
            backend: BackendChoice::Fallback,
            in_flight: 4,
            repeats: 1,
            label: "produce 1KiB".into(),
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        assert_eq!(out.rows.len(), 2);
        for r in &out.rows {
            let ratio = r.ratio_to_reference.unwrap();
            assert!(ratio.is_finite() && ratio > 0.0, "{r:?}");
            assert!(r.msgs_per_s.unwrap() > 0.0);
        }
        assert_eq!(out.rows[0].name, "produce 1KiB never");
        let fsyncs = |r: &Row| r.extra.iter().find(|(k, _)| *k == "fsyncs").unwrap().1.as_u64().unwrap();
        assert_eq!(fsyncs(&out.rows[0]), 0, "never syncs only at shutdown, outside the commits");
        assert!(fsyncs(&out.rows[1]) >= 1);
    }
}
