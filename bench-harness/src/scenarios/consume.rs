//! `consume`: catch-up read of a pre-filled log by embedded consumers (one per partition,
//! fetching whole batches and reading their bytes with `pread` on the consumer's thread),
//! compared with reading the same segment files with plain `pread`, one thread per partition, in
//! the same run. Both read from the page cache (the log was just written, and every file is read
//! once before either is measured): this measures the engine's read path, not the disk. The
//! engine's reads alternate with the reference's (R E R E … R); the row is the run with the
//! median ratio, with the spread of all of them.
//! The network variant (zero-copy over loopback) comes with the Kafka server.

use std::time::Instant;

use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::{Backpressure, FetchOptions};

use crate::reference::read_reference;
use crate::report::{Alternation, Outcome, Row};
use crate::workload;

#[derive(Debug, Clone)]
pub struct Params {
    pub total_bytes: u64,
    pub message_bytes: usize,
    pub batch_messages: usize,
    pub partitions: u32,
    pub fetch_bytes: u64,
    /// Engine runs, each between two reference runs.
    pub rounds: usize,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "total_bytes": self.total_bytes, "message_bytes": self.message_bytes,
            "batch_messages": self.batch_messages, "partitions": self.partitions, "fetch_bytes": self.fetch_bytes,
            "rounds": self.rounds,
        })
    }
}

/// The `.log` files of each partition of the "bench" topic, in order: one group per partition.
fn segment_files(
    engine_dir: &std::path::Path,
    partitions: u32,
) -> anyhow::Result<Vec<Vec<std::path::PathBuf>>> {
    let mut groups = Vec::new();
    for partition in 0..partitions {
        let mut files = Vec::new();
        for e in std::fs::read_dir(engine_dir.join("data").join(format!("bench-{partition}")))? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "log") {
                files.push(path);
            }
        }
        files.sort();
        groups.push(files);
    }
    Ok(groups)
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let (engine, dir) = workload::engine(root, 2, p.backend)?;
    engine.create_topic(
        "bench",
        p.partitions,
        LogConfig { durability: Durability::Never, ..LogConfig::default() },
    )?;
    let batch = workload::batch(p.message_bytes, p.batch_messages);
    let batches = (p.total_bytes / batch.len() as u64).max(u64::from(p.partitions));
    progress(&format!("consume: filling {} MiB", (batches * batch.len() as u64) >> 20));
    for i in 0..batches {
        engine.produce_batch(
            "bench",
            (i % u64::from(p.partitions)) as u32,
            batch.clone(),
            &Backpressure::Buffer,
        )?;
    }
    // Both readers find the same page-cache state: every file is read once before either is
    // measured, and each engine run lies between two reference runs.
    let groups = segment_files(dir.path(), p.partitions)?;
    progress("consume: warming the page cache with one read of every file");
    read_reference(&groups, p.fetch_bytes as usize)?;
    let rounds = p.rounds.max(1);
    let mut alt = Alternation::default();
    let mut per_run = None;
    for round in 0..rounds {
        progress(&format!("consume: reference read ({} of {})", round + 1, rounds + 1));
        alt.references.push(read_reference(&groups, p.fetch_bytes as usize)?);
        progress(&format!("consume: catch-up read, embedded ({} of {rounds})", round + 1));
        let start = Instant::now();
        let counts = read_all(&engine, p)?;
        alt.runs.push(counts.0 as f64 / start.elapsed().as_secs_f64());
        anyhow::ensure!(per_run.is_none_or(|c| c == counts), "rounds read different amounts: {counts:?}");
        per_run = Some(counts);
    }
    progress(&format!("consume: reference read ({} of {})", rounds + 1, rounds + 1));
    alt.references.push(read_reference(&groups, p.fetch_bytes as usize)?);
    engine.shutdown()?;
    let (bytes, messages) = per_run.unwrap_or_default();
    let row = alt.fill(Row::named("consume embedded catch-up"), messages, bytes);
    Ok(Outcome { rows: vec![row], plots: Vec::new() })
}

/// One catch-up read of every partition from offset 0 to its end, a consumer thread per
/// partition; returns the bytes and the messages read.
fn read_all(engine: &spate::Engine, p: &Params) -> anyhow::Result<(u64, u64)> {
    std::thread::scope(|s| -> anyhow::Result<(u64, u64)> {
        let handles: Vec<_> = (0..p.partitions)
            .map(|partition| {
                let engine = engine.clone();
                s.spawn(move || -> anyhow::Result<(u64, u64)> {
                    let end = engine.list_offset("bench", partition, spate::OffsetSpec::Latest)?.unwrap_or(0);
                    let options = FetchOptions { max_bytes: p.fetch_bytes, ..FetchOptions::default() };
                    let (mut offset, mut bytes) = (0i64, 0u64);
                    // One buffer, grown when a fetch needs more and never cleared.
                    let mut buf = vec![0u8; p.fetch_bytes as usize];
                    while offset < end {
                        let fetched = engine.fetch("bench", partition, offset, options)?;
                        if buf.len() < fetched.slice.len as usize {
                            buf.resize(fetched.slice.len as usize, 0);
                        }
                        bytes += fetched.slice.read_to(&mut buf)?.len() as u64;
                        offset = fetched.next_offset();
                    }
                    Ok((bytes, end as u64))
                })
            })
            .collect();
        let mut total = (0, 0);
        for h in handles {
            let (b, m) = h.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
            total = (total.0 + b, total.1 + m);
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_everything_back_with_a_reference_ratio() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            total_bytes: 4 << 20,
            message_bytes: 1024,
            batch_messages: 16,
            partitions: 2,
            fetch_bytes: 1 << 20,
            rounds: 2,
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let r = &out.rows[0];
        let batch_len = workload::batch(1024, 16).len() as u64;
        let expect_bytes = (4u64 << 20) / batch_len * batch_len;
        assert!(r.bytes_per_s.unwrap() > 0.0);
        assert!(r.ratio_to_reference.unwrap() > 0.0);
        let runs =
            r.extra.iter().find(|(k, _)| *k == "runs_bytes_per_s").unwrap().1.as_array().unwrap().len();
        let refs = r
            .extra
            .iter()
            .find(|(k, _)| *k == "reference_runs_bytes_per_s")
            .unwrap()
            .1
            .as_array()
            .unwrap()
            .len();
        assert_eq!((runs, refs), (2, 3), "R E R E R");
        // msgs counted are offsets read: every message of every batch.
        let msgs = r.msgs_per_s.unwrap() * (expect_bytes as f64 / r.bytes_per_s.unwrap());
        assert!((msgs - (expect_bytes / batch_len * 16) as f64).abs() < 1.0, "{msgs}");
    }
}
