//! Appends to one partition of an embedded engine (its shard loop, group commit and recovery:
//! the code users run) with durability `always` from several threads until it is killed.
//!
//! Usage: `spate-crash-writer <dir> <backend> <round> <threads>`. Prints `ready` once the
//! engine is open (recovery done), then one line per acknowledged batch:
//! `ack <base_offset> <round> <thread> <seq> <records>`, flushed before the next append, so every
//! line the parent reads names a batch that was durable when it was printed.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::record::{BatchBuilder, BatchOptions, Record};
use spate::{Backpressure, Engine, EngineConfig, EngineError};
use spate_tests::{crash_batch_records, crash_record_value};

/// The topic the writer appends to (partition 0).
pub const TOPIC: &str = "crash";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 5, "usage: {} <dir> <backend> <round> <threads>", args[0]);
    let dir = std::path::PathBuf::from(&args[1]);
    let backend: BackendChoice = args[2].parse().map_err(anyhow::Error::msg)?;
    let round: u32 = args[3].parse()?;
    let threads: u32 = args[4].parse()?;
    // Small segments so that kills also land in the middle of rolls.
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        batch_bytes_max: 16 * 1024,
        durability: Durability::Always,
        ..LogConfig::default()
    };
    let engine =
        Engine::open(&dir, EngineConfig { shards: 2, io_backend: backend, ..EngineConfig::default() })?;
    match engine.create_topic(TOPIC, 1, config) {
        Ok(()) | Err(EngineError::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(out.lock().expect("stdout lock"), "ready")?;
    out.lock().expect("stdout lock").flush()?;
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let engine = engine.clone();
            let out = Arc::clone(&out);
            std::thread::spawn(move || -> anyhow::Result<()> {
                for seq in 0.. {
                    let n = crash_batch_records(seq);
                    let values: Vec<Vec<u8>> =
                        (0..n).map(|i| crash_record_value(round, thread, seq, i)).collect();
                    let mut b = BatchBuilder::new(BatchOptions::default());
                    for v in &values {
                        b.push(&Record {
                            timestamp: 1_700_000_000_000,
                            key: None,
                            value: Some(v),
                            headers: &[],
                        });
                    }
                    let info = engine.produce_batch(TOPIC, 0, b.finish(), &Backpressure::Buffer)?;
                    let mut out = out.lock().expect("stdout lock");
                    writeln!(out, "ack {} {round} {thread} {seq} {n}", info.base_offset)?;
                    out.flush()?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().expect("writer thread")?;
    }
    Ok(())
}
