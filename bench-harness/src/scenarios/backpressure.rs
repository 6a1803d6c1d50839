//! `backpressure`: a producer faster than its consumer (by default ten times), under each
//! policy of the seed's three answers: `drop` (refuse, counted), `buffer` (the log absorbs the
//! backlog) and `block` (the producer waits for the consumer). Reports what was lost, how memory
//! grew (process RSS, bytes staged and parked in the shards) and how latency behaved (from each
//! message's due time to its consumption). Each policy runs for a fixed time; what a blocked
//! producer could not send in it is reported as `deferred`. Messages still waiting at the end
//! (unconsumed or deferred) enter the latency histogram with the time they had waited by then, a
//! lower bound, so that the tail is not cut off at the end of the window. The producer calls the
//! blocking `send` at each due time: under `block` it falls behind its schedule, and that lag is
//! part of the latency, as it is for a real producer that blocks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::record::Record;
use spate::{Backpressure, EngineError, FetchOptions, Target};

use crate::report::{rss_bytes, LatencyPlot, Outcome, Row};
use crate::workload::{self, Schedule};

#[derive(Debug, Clone)]
pub struct Params {
    pub seconds: f64,
    pub consumer_rate: f64,
    pub factor: f64,
    pub message_bytes: usize,
    pub max_lag: u64,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "seconds": self.seconds, "consumer_rate": self.consumer_rate, "producer_rate": self.consumer_rate * self.factor,
            "message_bytes": self.message_bytes, "max_lag": self.max_lag,
        })
    }
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let mut plot = LatencyPlot {
        name: "backpressure".into(),
        title: format!("Producer {:.0}x faster than its consumer: latency from intended send time", p.factor),
        series: Vec::new(),
    };
    for policy in ["drop", "buffer", "block"] {
        progress(&format!(
            "backpressure {policy}: {:.0}/s into a {:.0}/s consumer for {:.1} s",
            p.consumer_rate * p.factor,
            p.consumer_rate,
            p.seconds
        ));
        let (engine, _dir) = workload::engine(root, 2, p.backend)?;
        engine.create_topic("bp", 1, LogConfig { durability: Durability::Never, ..LogConfig::default() })?;
        let consumer: Arc<str> = Arc::from("slow");
        let backpressure = match policy {
            "drop" => Backpressure::Drop { consumer: Arc::clone(&consumer), max_lag: p.max_lag },
            "block" => Backpressure::Block { consumer: Arc::clone(&consumer), max_lag: p.max_lag },
            _ => Backpressure::Buffer,
        };
        let producer = engine.producer("bp", backpressure)?;
        let rss_before = rss_bytes();
        let start = Instant::now() + Duration::from_millis(20);
        let schedule = Schedule::new(start, p.consumer_rate * p.factor);
        let total = (p.consumer_rate * p.factor * p.seconds) as u64;
        let stop = AtomicBool::new(false);
        let consumed = AtomicU64::new(0);
        let peaks = Mutex::new((0u64, 0u64, 0u64)); // rss, staged, parked
        let mut deferred = 0u64;
        let (accepted, lost, e2e, produce_latency) = std::thread::scope(|s| -> anyhow::Result<_> {
            let consumer = s.spawn(|| -> anyhow::Result<hdrhistogram::Histogram<u64>> {
                let mut h = workload::histogram();
                let mut offset = 0i64;
                let per_batch = 10u64;
                let options = FetchOptions {
                    max_bytes: 64 << 10,
                    max_wait: Duration::from_millis(20),
                    ..FetchOptions::default()
                };
                while !stop.load(Ordering::Acquire) {
                    let fetched = engine.fetch("bp", 0, offset, options)?;
                    for r in fetched.records(offset)?.into_iter().take(per_batch as usize) {
                        let due = workload::due_ns(r.value.as_deref());
                        h.saturating_record(schedule.latency_us(due).max(1));
                        offset = r.offset + 1;
                        consumed.fetch_add(1, Ordering::Relaxed);
                    }
                    // The consumer's pace: `per_batch` messages per `per_batch / rate` seconds.
                    std::thread::sleep(Duration::from_secs_f64(per_batch as f64 / p.consumer_rate));
                    engine.commit_offset("slow", "bp", 0, offset)?;
                }
                Ok(h)
            });
            let sampler = s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    let stats = engine.stats().unwrap_or_default();
                    let staged = stats.iter().map(|x| x.staged_bytes_peak).max().unwrap_or(0);
                    let parked = stats.iter().map(|x| x.parked_bytes).sum::<u64>();
                    let mut pk = peaks.lock().expect("peaks");
                    *pk = (pk.0.max(rss_bytes()), pk.1.max(staged), pk.2.max(parked));
                    drop(pk);
                    std::thread::sleep(Duration::from_millis(25));
                }
            });
            let mut produce_latency = workload::histogram();
            // Due times of accepted messages, in offset order, to account at the end for those
            // the consumer never reached.
            let mut accepted_due: Vec<u64> = Vec::with_capacity(total as usize);
            let (mut accepted, mut lost) = (0u64, 0u64);
            let mut value = vec![0u8; p.message_bytes.max(8)];
            let window = Duration::from_secs_f64(p.seconds);
            let mut sent = 0u64;
            for i in 0..total {
                // The run lasts `seconds`: what a blocked producer could not send by then is
                // reported as deferred, not waited for.
                if start.elapsed() >= window {
                    break;
                }
                sent += 1;
                let due = schedule.wait_for(i);
                value[..8].copy_from_slice(&due.to_be_bytes());
                let r = Record { timestamp: 0, key: None, value: Some(&value), headers: &[] };
                match producer.send(Target::Partition(0), &[r]) {
                    Ok(_) => {
                        accepted += 1;
                        accepted_due.push(due);
                    }
                    Err(EngineError::Dropped { .. }) => lost += 1,
                    Err(e) => return Err(e.into()),
                }
                produce_latency.saturating_record(schedule.latency_us(due).max(1));
            }
            stop.store(true, Ordering::Release);
            deferred = total - sent;
            let mut e2e = consumer.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
            // Messages still waiting when the run ends have waited at least until now: accepted
            // but unconsumed ones, and those a blocked producer never got to send. They enter
            // the histogram with that lower bound, so the tail is not cut off at the window.
            let now_us = schedule.start.elapsed().as_micros() as u64;
            let consumed_n = consumed.load(Ordering::Relaxed) as usize;
            for &due in accepted_due.iter().skip(consumed_n) {
                e2e.saturating_record(now_us.saturating_sub(due / 1000).max(1));
            }
            for i in sent..total {
                e2e.saturating_record(now_us.saturating_sub(schedule.due_ns(i) / 1000).max(1));
            }
            sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
            Ok((accepted, lost, e2e, produce_latency))
        })?;
        let secs = start.elapsed().as_secs_f64();
        let (rss_peak, staged_peak, parked_peak) = *peaks.lock().expect("peaks");
        let backlog = accepted.saturating_sub(consumed.load(Ordering::Relaxed));
        let mut row = Row::named(format!("backpressure {policy}")).with_latency(&e2e);
        row.msgs_per_s = Some(accepted as f64 / secs);
        row.lost = Some(lost);
        out.rows.push(
            row.extra("accepted", accepted)
                .extra("deferred", deferred)
                .extra("consumed", consumed.load(Ordering::Relaxed))
                .extra("backlog_records", backlog)
                .extra("rss_growth_bytes", rss_peak.saturating_sub(rss_before))
                .extra("staged_peak_bytes", staged_peak)
                .extra("parked_peak_bytes", parked_peak)
                .extra("produce_p99_us", produce_latency.value_at_quantile(0.99))
                .extra("produce_max_us", produce_latency.max()),
        );
        plot.series.push((policy.to_string(), e2e));
        engine.shutdown()?;
    }
    out.plots.push(plot);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_reports_loss_memory_and_latency() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            seconds: 0.6,
            consumer_rate: 500.0,
            factor: 10.0,
            message_bytes: 100,
            max_lag: 100,
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let row = |name: &str| out.rows.iter().find(|r| r.name == format!("backpressure {name}")).unwrap();
        let extra = |r: &Row, k: &str| r.extra.iter().find(|(key, _)| *key == k).unwrap().1.as_u64().unwrap();
        assert!(row("drop").lost.unwrap() > 0, "a 10x producer loses records under drop");
        assert_eq!(row("buffer").lost, Some(0));
        assert_eq!(row("block").lost, Some(0));
        assert!(
            extra(row("buffer"), "backlog_records") > extra(row("block"), "backlog_records"),
            "buffer keeps a backlog, block does not"
        );
        for r in &out.rows {
            assert!(r.max_us.is_some(), "{}: latency measured", r.name);
        }
    }
}
