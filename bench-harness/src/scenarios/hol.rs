//! `hol`: head-of-line blocking. A stream in which a fraction of messages is slow to process
//! (by default 1% taking 10 ms, the rest 20 µs) is consumed by W workers in two ways:
//!
//! 1. **log, partition-exclusive**: messages are keyed into W partitions of a topic; each worker
//!    owns one partition and processes it in order (a Kafka consumer group). A slow message holds
//!    up everything behind it in its partition, and nothing else.
//! 2. **bounded-queue baseline**: one bounded crossbeam channel, W workers each take the next
//!    message (the JMS/AMQP style): no order, but no message waits behind a slow one.
//!
//! Both run the same open-loop schedule at an offered rate below saturation (the throughput
//! reported is what was completed, which then equals the offered rate); latency runs from each
//! message's due time to the end of its processing, so p99 includes a slow message's own
//! processing in both modes, and p90/p95 show the waits behind slow messages. Ordering violations are counted globally (a message finishing after one
//! with a higher sequence number) and per key. Share-group and key-ordered rows can be added as
//! further modes without changing this shape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::record::Record;
use spate::{FetchOptions, Target};

use crate::report::{LatencyPlot, Outcome, Row};
use crate::workload::{self, Schedule};

#[derive(Debug, Clone)]
pub struct Params {
    pub messages: u64,
    pub rate: f64,
    pub workers: u32,
    pub keys: u32,
    pub slow_fraction: f64,
    pub slow: Duration,
    pub fast: Duration,
    pub queue_capacity: usize,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "messages": self.messages, "rate": self.rate, "workers": self.workers, "keys": self.keys,
            "slow_fraction": self.slow_fraction, "slow_us": self.slow.as_micros() as u64,
            "fast_us": self.fast.as_micros() as u64, "queue_capacity": self.queue_capacity,
        })
    }
}

/// A message of the stream: which one, its key, when it was due, whether it is slow.
#[derive(Debug, Clone, Copy)]
struct Msg {
    seq: u64,
    key: u32,
    due_ns: u64,
    slow: bool,
}

impl Msg {
    fn new(seq: u64, p: &Params, due_ns: u64) -> Msg {
        // Deterministic choice of slow messages and keys, the same for both modes.
        let h = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
        let slow = (h % 1_000_000) as f64 / 1_000_000.0 < p.slow_fraction;
        Msg { seq, key: (h >> 32) as u32 % p.keys.max(1), due_ns, slow }
    }

    fn encode(&self) -> [u8; 21] {
        let mut b = [0u8; 21];
        b[..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.key.to_be_bytes());
        b[12..20].copy_from_slice(&self.due_ns.to_be_bytes());
        b[20] = u8::from(self.slow);
        b
    }

    fn decode(b: &[u8]) -> Option<Msg> {
        Some(Msg {
            seq: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            key: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
            due_ns: u64::from_be_bytes(b.get(12..20)?.try_into().ok()?),
            slow: *b.get(20)? == 1,
        })
    }
}

/// What the workers observed, shared by them (results only, not on the measured path).
struct Observed {
    latency: Histogram<u64>,
    completions: Vec<(u64, u32)>,
}

fn process(msg: &Msg, p: &Params, schedule: &Schedule, observed: &Mutex<Observed>, done: &AtomicU64) {
    workload::work_for(if msg.slow { p.slow } else { p.fast });
    let latency = schedule.latency_us(msg.due_ns).max(1);
    let mut o = observed.lock().expect("observer lock");
    o.latency.saturating_record(latency);
    o.completions.push((msg.seq, msg.key));
    done.fetch_add(1, Ordering::AcqRel);
}

/// Completions whose sequence number is below one already completed: globally and per key.
fn violations(completions: &[(u64, u32)]) -> (u64, u64) {
    let (mut global, mut per_key) = (0, 0);
    let mut max_seen = None;
    let mut max_per_key: HashMap<u32, u64> = HashMap::new();
    for &(seq, key) in completions {
        if max_seen.is_some_and(|m| seq < m) {
            global += 1;
        }
        max_seen = Some(max_seen.map_or(seq, |m: u64| m.max(seq)));
        let k = max_per_key.entry(key).or_insert(seq);
        if seq < *k {
            per_key += 1;
        }
        *k = (*k).max(seq);
    }
    (global, per_key)
}

/// One way of consuming the stream: what the workers observed, and the elapsed seconds.
type ModeRun<'a> = &'a dyn Fn() -> anyhow::Result<(Observed, f64)>;

fn run_log(root: &std::path::Path, p: &Params) -> anyhow::Result<(Observed, f64)> {
    let (engine, _dir) = workload::engine(root, 2, p.backend)?;
    engine.create_topic(
        "hol",
        p.workers,
        LogConfig { durability: Durability::Never, ..LogConfig::default() },
    )?;
    let observed = Mutex::new(Observed { latency: workload::histogram(), completions: Vec::new() });
    let done = AtomicU64::new(0);
    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Schedule::new(start, p.rate);
    std::thread::scope(|s| -> anyhow::Result<()> {
        for partition in 0..p.workers {
            let (engine, observed, done) = (engine.clone(), &observed, &done);
            s.spawn(move || -> anyhow::Result<()> {
                let mut offset = 0;
                let options = FetchOptions { max_wait: Duration::from_millis(20), ..FetchOptions::default() };
                while done.load(Ordering::Acquire) < p.messages {
                    let fetched = engine.fetch("hol", partition, offset, options)?;
                    for r in fetched.records(offset)? {
                        if let Some(msg) = r.value.as_deref().and_then(Msg::decode) {
                            process(&msg, p, &schedule, observed, done);
                        }
                        offset = r.offset + 1;
                    }
                }
                Ok(())
            });
        }
        for i in 0..p.messages {
            let due = schedule.wait_for(i);
            let msg = Msg::new(i, p, due);
            let key = msg.key.to_be_bytes();
            let value = msg.encode();
            let r = Record { timestamp: 0, key: Some(&key), value: Some(&value), headers: &[] };
            // Keyed, so each key's messages share a partition: the log keeps per-key order.
            let partition = spate::partitioner::partition_for_key(&key, p.workers);
            drop(engine.produce_async("hol", Target::Partition(partition), &[r]));
        }
        Ok(())
    })?;
    let secs = schedule.start.elapsed().as_secs_f64();
    engine.shutdown()?;
    Ok((observed.into_inner().expect("observer lock"), secs))
}

fn run_queue(p: &Params) -> anyhow::Result<(Observed, f64)> {
    let (tx, rx) = crossbeam::channel::bounded::<Msg>(p.queue_capacity);
    let observed = Mutex::new(Observed { latency: workload::histogram(), completions: Vec::new() });
    let done = AtomicU64::new(0);
    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Schedule::new(start, p.rate);
    std::thread::scope(|s| {
        for _ in 0..p.workers {
            let (rx, observed, done) = (rx.clone(), &observed, &done);
            s.spawn(move || {
                for msg in rx.iter() {
                    process(&msg, p, &schedule, observed, done);
                }
            });
        }
        for i in 0..p.messages {
            let due = schedule.wait_for(i);
            // A full queue blocks the producer; the wait counts in the latency from `due`.
            if tx.send(Msg::new(i, p, due)).is_err() {
                break;
            }
        }
        drop(tx);
    });
    let secs = schedule.start.elapsed().as_secs_f64();
    Ok((observed.into_inner().expect("observer lock"), secs))
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let mut plot = LatencyPlot {
        name: "hol".into(),
        title: format!(
            "Head-of-line blocking: {:.1}% of messages take {} ms, {} workers",
            p.slow_fraction * 100.0,
            p.slow.as_millis(),
            p.workers
        ),
        series: Vec::new(),
    };
    let modes: [(&str, ModeRun<'_>); 2] =
        [("log, partition-exclusive", &|| run_log(root, p)), ("bounded queue, W workers", &|| run_queue(p))];
    for (label, mode) in modes {
        progress(&format!("hol: {label}, {} messages at {:.0}/s", p.messages, p.rate));
        let (observed, secs) = mode()?;
        let (global, per_key) = violations(&observed.completions);
        let mut row = Row::named(format!("hol {label}")).with_latency(&observed.latency);
        row.msgs_per_s = Some(observed.completions.len() as f64 / secs);
        row.order_violations = Some(global);
        row.lost = Some(p.messages - observed.completions.len() as u64);
        // p90 and p95 show the head-of-line waits that p99 (a slow message's own 10 ms) hides.
        let (p90, p95) = (observed.latency.value_at_quantile(0.90), observed.latency.value_at_quantile(0.95));
        out.rows
            .push(row.extra("order_violations_per_key", per_key).extra("p90_us", p90).extra("p95_us", p95));
        plot.series.push((label.to_string(), observed.latency));
    }
    out.plots.push(plot);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_count_global_and_per_key_inversions() {
        assert_eq!(violations(&[(0, 0), (1, 1), (2, 0)]), (0, 0));
        // 2 finishes before 1 (different keys): one global violation, none per key.
        assert_eq!(violations(&[(0, 0), (2, 1), (1, 0)]), (1, 0));
        // Same key out of order: both.
        assert_eq!(violations(&[(0, 0), (2, 0), (1, 0)]), (1, 1));
    }

    #[test]
    fn the_log_keeps_key_order_and_the_queue_does_not() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            messages: 600,
            rate: 3_000.0,
            workers: 3,
            keys: 20,
            slow_fraction: 0.02,
            slow: Duration::from_millis(5),
            fast: Duration::from_micros(20),
            queue_capacity: 64,
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let (log, queue) = (&out.rows[0], &out.rows[1]);
        assert_eq!((log.lost, queue.lost), (Some(0), Some(0)));
        let per_key = |r: &Row| {
            r.extra.iter().find(|(k, _)| *k == "order_violations_per_key").unwrap().1.as_u64().unwrap()
        };
        assert_eq!(per_key(log), 0, "the log keeps per-key order");
        assert!(queue.order_violations.unwrap() > 0, "the queue reorders around slow messages");
        assert_eq!(out.plots[0].series.len(), 2);
    }
}
