//! `scale`: what idle partitions and parked long polls cost the partitions that are busy.
//!
//! For each count of idle partitions (10, then 10,000 by default) an engine gets a topic of
//! that many partitions that nobody writes, and one "hot" partition. Measured on the hot one:
//! - the produce round trip: one record, `never`, from the call to its acknowledgement, one
//!   after the other;
//! - the long-poll wake-up: a consumer waits in a long poll, a record is produced, and the time
//!   from the produce call to the consumer holding the record is recorded, one at a time.
//!
//! Both are measured again with a long poll parked on every idle partition. Rows carry their
//! ratios to the same measurement with the fewest idle partitions (the target: within 2×), and
//! the process's memory growth per idle partition.

use std::time::{Duration, Instant};

use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::record::Record;
use spate::{Engine, FetchOptions, Target};

use crate::report::{rss_bytes, Outcome, Row};
use crate::workload;

#[derive(Debug, Clone)]
pub struct Params {
    /// Counts of idle partitions, the first the baseline.
    pub idle: Vec<u32>,
    /// Round trips and wake-ups measured per configuration.
    pub samples: u64,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "idle_partitions": self.idle, "samples": self.samples })
    }
}

const HOT: &str = "hot";
const IDLE: &str = "idle";

/// Produce round trips on the hot partition, in µs.
fn round_trips(engine: &Engine, samples: u64) -> anyhow::Result<Histogram> {
    let mut h = workload::histogram();
    let value = [7u8; 100];
    for _ in 0..samples {
        let r = Record { timestamp: 0, key: None, value: Some(&value), headers: &[] };
        let start = Instant::now();
        engine.produce(HOT, Target::Partition(0), &[r])?;
        h.saturating_record((start.elapsed().as_micros() as u64).max(1));
    }
    Ok(h)
}

/// Produce-to-consumer times through a long poll on the hot partition, in µs, one record at
/// a time.
fn wake_ups(engine: &Engine, samples: u64) -> anyhow::Result<Histogram> {
    let base = Instant::now();
    let mut offset = engine.list_offset(HOT, 0, spate::OffsetSpec::Latest)?.unwrap_or(0);
    let (seen_tx, seen_rx) = crossbeam::channel::bounded::<u64>(1);
    std::thread::scope(|s| -> anyhow::Result<Histogram> {
        let consumer = s.spawn(move || -> anyhow::Result<()> {
            let options = FetchOptions { max_wait: Duration::from_secs(5), ..FetchOptions::default() };
            let mut left = samples;
            while left > 0 {
                let fetched = engine.fetch(HOT, 0, offset, options)?;
                for r in fetched.records(offset)? {
                    let sent = workload::due_ns(r.value.as_deref());
                    let now = base.elapsed().as_nanos() as u64;
                    offset = r.offset + 1;
                    left -= 1;
                    if seen_tx.send(now.saturating_sub(sent)).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        let mut h = workload::histogram();
        for _ in 0..samples {
            // Let the consumer park in its long poll before the record is sent.
            std::thread::sleep(Duration::from_micros(200));
            let sent = base.elapsed().as_nanos() as u64;
            let value = sent.to_be_bytes();
            let r = Record { timestamp: 0, key: None, value: Some(&value), headers: &[] };
            drop(engine.produce_async(HOT, Target::Partition(0), &[r]));
            let ns = seen_rx.recv_timeout(Duration::from_secs(10))?;
            h.saturating_record((ns / 1000).max(1));
        }
        consumer.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
        Ok(h)
    })
}

fn row(name: String, h: &Histogram, base: Option<&Histogram>) -> Row {
    let mut row = Row::named(name).with_latency(h).extra("samples", h.len());
    if let Some(b) = base {
        let q = |h: &Histogram, q: f64| h.value_at_quantile(q).max(1) as f64;
        row = row
            .extra("p50_ratio_to_fewest", q(h, 0.5) / q(b, 0.5))
            .extra("p99_ratio_to_fewest", q(h, 0.99) / q(b, 0.99));
    }
    row
}

/// Rounds of measurement per configuration, alternating between the engines (A B A B); each
/// row merges its rounds.
const ROUNDS: usize = 2;

type Histogram = hdrhistogram::Histogram<u64>;

/// Measures every engine `ROUNDS` times in turn and returns, per engine, its merged round trips
/// and wake-ups.
fn alternate(engines: &[Engine], samples: u64) -> anyhow::Result<Vec<(Histogram, Histogram)>> {
    let mut merged: Vec<(Histogram, Histogram)> =
        engines.iter().map(|_| (workload::histogram(), workload::histogram())).collect();
    for _ in 0..ROUNDS {
        for (engine, (trips, wakes)) in engines.iter().zip(&mut merged) {
            trips.add(round_trips(engine, samples)?)?;
            wakes.add(wake_ups(engine, samples)?)?;
        }
    }
    Ok(merged)
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    // Every partition holds a file open.
    if let Err(e) = spate::fds::raise_limit() {
        progress(&format!("scale: cannot raise the open-file limit: {e}"));
    }
    let mut engines = Vec::new();
    let mut setup = Vec::new();
    for &idle in &p.idle {
        let (engine, dir) = workload::engine(root, 0, p.backend)?;
        let config = LogConfig { durability: Durability::Never, ..LogConfig::default() };
        engine.create_topic(HOT, 1, config.clone())?;
        let rss_before = rss_bytes();
        progress(&format!("scale: creating {idle} idle partitions"));
        let created = Instant::now();
        engine.create_topic(IDLE, idle, config)?;
        let created_secs = created.elapsed().as_secs_f64();
        let per_partition = rss_bytes().saturating_sub(rss_before) as f64 / f64::from(idle);
        engines.push(engine);
        setup.push((dir, per_partition, created_secs));
    }
    let mut out = Outcome::default();
    // One unrecorded pass over every engine first: the first measurement after a quiet spell
    // pays for waking the machine up, whichever engine it is.
    alternate(&engines, p.samples.min(200))?;
    progress("scale: round trips and wake-ups, alternating between the engines");
    let quiet = alternate(&engines, p.samples)?;
    progress("scale: the same with a long poll parked on every idle partition");
    let options = FetchOptions { max_wait: Duration::from_secs(600), ..FetchOptions::default() };
    let parked: Vec<Vec<_>> = engines
        .iter()
        .zip(&p.idle)
        .map(|(engine, &idle)| (0..idle).map(|i| engine.fetch_async(IDLE, i, 0, options)).collect())
        .collect();
    let polled = alternate(&engines, p.samples)?;
    drop(parked);
    let (base_trips, base_wakes) = quiet[0].clone();
    for (i, &idle) in p.idle.iter().enumerate() {
        let (_, per_partition, created_secs) = &setup[i];
        let (trips, wakes) = &quiet[i];
        out.rows.push(
            row(format!("scale {idle} idle: produce round trip"), trips, Some(&base_trips))
                .extra("memory_bytes_per_partition", per_partition.round())
                .extra("create_seconds", *created_secs),
        );
        out.rows.push(row(format!("scale {idle} idle: long-poll wake-up"), wakes, Some(&base_wakes)));
        let (trips, wakes) = &polled[i];
        out.rows.push(row(
            format!("scale {idle} idle + {idle} long polls: produce round trip"),
            trips,
            Some(&base_trips),
        ));
        out.rows.push(row(
            format!("scale {idle} idle + {idle} long polls: long-poll wake-up"),
            wakes,
            Some(&base_wakes),
        ));
    }
    for engine in engines {
        engine.shutdown()?;
    }
    drop(setup);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_configuration_against_the_fewest() {
        let root = tempfile::tempdir().unwrap();
        let p = Params { idle: vec![2, 50], samples: 50, backend: BackendChoice::Fallback };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        assert_eq!(out.rows.len(), 8, "four rows per count of idle partitions");
        for r in &out.rows {
            let samples = r.extra.iter().find(|(k, _)| *k == "samples").unwrap().1.as_u64().unwrap();
            assert_eq!(samples, 50 * ROUNDS as u64, "{}", r.name);
            assert!(r.p99_us.unwrap() >= r.p50_us.unwrap(), "{}", r.name);
            assert!(r.extra.iter().any(|(k, _)| *k == "p99_ratio_to_fewest"), "{}", r.name);
        }
    }
}
