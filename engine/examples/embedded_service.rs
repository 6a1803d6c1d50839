//! A small service that embeds Spate: producer threads append keyed orders at a fixed rate, one
//! consumer thread per partition long-polls them, processes them in order and commits its
//! position. Prints throughput and end-to-end latency measured open loop: from the moment each
//! record was *due* to be sent (its slot in the fixed-rate schedule) to the moment its consumer
//! saw it, so a stall delays every record behind it and shows in the tail.
//!
//! Run: `cargo run --release -p spate --example embedded_service -- [seconds] [producers] [records/s]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spate::log::{Durability, LogConfig};
use spate::record::Record;
use spate::{Engine, EngineConfig, FetchOptions, Target};

const PARTITIONS: u32 = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let producers: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let rate: u64 = args.next().map_or(Ok(5_000), |s| s.parse())?;
    let interval_ns = 1_000_000_000 * producers as u64 / rate.max(1);
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), EngineConfig::default())?;
    let config = LogConfig { durability: Durability::Always, ..LogConfig::default() };
    engine.create_topic("orders", PARTITIONS, config)?;
    println!("engine: {} shards, data in {}", engine.shards(), dir.path().display());

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));

    // Consumers: one per partition, in order, committing after each fetch.
    let consumers: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let (engine, stop) = (engine.clone(), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<Histogram<u64>, spate::EngineError> {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let mut offset = engine.committed_offset("billing", "orders", partition)?.unwrap_or(0);
                let options =
                    FetchOptions { max_wait: Duration::from_millis(100), ..FetchOptions::default() };
                while !stop.load(Ordering::Acquire) {
                    let fetched = engine.fetch("orders", partition, offset, options)?;
                    let now_ns = start.elapsed().as_nanos() as u64;
                    for r in fetched.records(offset)? {
                        // The value starts with the send time, in ns since start.
                        let sent_ns = u64::from_be_bytes(
                            r.value.as_deref().unwrap_or(&[0; 8])[..8].try_into().unwrap(),
                        );
                        latency.saturating_record(now_ns.saturating_sub(sent_ns) / 1000);
                        offset = r.offset + 1;
                    }
                    engine.commit_offset("billing", "orders", partition, offset)?;
                }
                Ok(latency)
            })
        })
        .collect();

    // Producers: keyed by customer, so each customer's orders stay in order in one partition.
    let producer_threads: Vec<_> = (0..producers)
        .map(|p| {
            let (engine, stop, produced) = (engine.clone(), Arc::clone(&stop), Arc::clone(&produced));
            std::thread::spawn(move || -> Result<(), spate::EngineError> {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    // Open loop: record n is due at a fixed time, whether or not the previous
                    // produce has returned; a late start is measured, not forgiven.
                    let due_ns = n * interval_ns + p as u64 * interval_ns / producers as u64;
                    let now_ns = start.elapsed().as_nanos() as u64;
                    if due_ns > now_ns {
                        std::thread::sleep(Duration::from_nanos(due_ns - now_ns));
                    }
                    let customer = format!("customer-{}", (n * 7 + p as u64) % 1000);
                    let mut value = due_ns.to_be_bytes().to_vec();
                    value.extend_from_slice(
                        b" order payload of about a hundred bytes .............................",
                    );
                    let record = Record {
                        timestamp: 0,
                        key: Some(customer.as_bytes()),
                        value: Some(&value),
                        headers: &[],
                    };
                    engine.produce("orders", Target::Key(customer.as_bytes()), &[record])?;
                    produced.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok(())
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Release);
    for t in producer_threads {
        t.join().expect("producer thread")?;
    }
    let mut latency = Histogram::<u64>::new(3)?;
    for c in consumers {
        latency.add(c.join().expect("consumer thread")?)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = engine.stats()?;
    engine.shutdown()?;

    let total = produced.load(Ordering::Relaxed);
    let fsyncs: u64 = stats.iter().map(|s| s.commit_fsyncs).sum();
    println!(
        "produced {total} records in {elapsed:.1} s: {:.0} records/s, target {rate}/s (durability always; {fsyncs} fsyncs, consumer commits included)",
        total as f64 / elapsed
    );
    println!(
        "end-to-end latency (µs): p50 {}  p99 {}  p99.9 {}  max {}  ({} records seen by consumers)",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max(),
        latency.len()
    );
    Ok(())
}
