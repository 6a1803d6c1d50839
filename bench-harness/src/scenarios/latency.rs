//! `latency`: open-loop end-to-end latency at fixed rates. A producer sends message `i` at its
//! due time `start + i / rate` without waiting for anything; consumers long-poll each partition
//! and record, for every message, the time from its *due* time to the moment they see it, in
//! HdrHistogram. A stall anywhere (producer, engine or consumer) therefore shows for every
//! message it delays: there is no coordinated omission.
//!
//! The sweep first measures the maximum rate (closed loop, as many single-record produces as the
//! producers can complete), then reports latency at fractions of it (10%, 50%, 80% by default).
//!
//! Every rate also runs through the *floor*: the same schedule, the same producer work (a
//! message value carrying its due time), handed through one bare bounded crossbeam channel per
//! partition to a consumer thread that blocks in `recv`, as the engine's consumers block in a
//! long poll. It is what any cross-thread handoff costs on this machine at that moment. The
//! floor runs just before and just after the engine at each rate (A B A); each engine row
//! carries its ratios to the merged floor at p50, p99 and p99.9, and says when the floor's p99
//! moved by more than 20% between its two runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::record::Record;
use spate::{Engine, FetchOptions, Target};

use crate::report::{LatencyPlot, Outcome, Row};
use crate::workload::{self, Schedule};

#[derive(Debug, Clone)]
pub struct Params {
    pub message_bytes: usize,
    pub partitions: u32,
    pub shards: usize,
    pub durabilities: Vec<Durability>,
    /// Fractions of the measured maximum rate to run at.
    pub fractions: Vec<f64>,
    /// Fixed rates (messages per second) instead of fractions of the maximum.
    pub rates: Vec<f64>,
    pub seconds: f64,
    pub backend: BackendChoice,
    /// Stall one consumer on purpose for `.1` after `.0` (for the coordinated-omission check).
    pub consumer_stall: Option<(Duration, Duration)>,
    /// Stall the producer on purpose for `.1` after `.0` (a sender paused by GC, say).
    pub producer_stall: Option<(Duration, Duration)>,
    /// How the engine idles (`EngineConfig::idle`); the floor's consumer waits the same way.
    pub idle: spate::IdleStrategy,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "message_bytes": self.message_bytes, "partitions": self.partitions, "shards": self.shards,
            "durability": self.durabilities.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "fractions_of_max": self.fractions, "rates": self.rates, "seconds": self.seconds,
            "idle": format!("{:?}", self.idle),
        })
    }
}

/// The closed-loop maximum: single-record produces from 8 threads for `seconds`.
fn max_rate(engine: &Engine, message_bytes: usize, seconds: f64) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (stop, done, engine) = (Arc::clone(&stop), Arc::clone(&done), engine.clone());
                s.spawn(move || -> anyhow::Result<()> {
                    let value = vec![0u8; message_bytes];
                    while !stop.load(Ordering::Relaxed) {
                        let r = Record { timestamp: 0, key: None, value: Some(&value), headers: &[] };
                        engine.produce("lat", Target::Any, &[r])?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// One open-loop run at `rate`; returns the latency histogram and the messages seen.
#[cfg(test)]
pub fn open_loop(engine: &Engine, p: &Params, rate: f64) -> anyhow::Result<(Histogram<u64>, u64)> {
    open_loop_with_acks(engine, p, rate, false).map(|(h, seen, _)| (h, seen))
}

/// [`open_loop`], and with `acks` also the acknowledgement latency of every produce (from its
/// due time to its acknowledgement), collected on a thread of its own that awaits every
/// produce's future as it completes.
fn open_loop_with_acks(
    engine: &Engine,
    p: &Params,
    rate: f64,
    acks: bool,
) -> anyhow::Result<(Histogram<u64>, u64, Option<Histogram<u64>>)> {
    let total = (rate * p.seconds).max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Schedule::new(start, rate);
    // Consumers start at the current end of each partition.
    let mut starts = Vec::new();
    for partition in 0..p.partitions {
        starts.push(engine.list_offset("lat", partition, spate::OffsetSpec::Latest)?.unwrap_or(0));
    }
    let seen = Arc::new(AtomicU64::new(0));
    let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, AckFuture)>();
    let mut ack_histogram = None;
    let histogram = std::thread::scope(|s| -> anyhow::Result<Histogram<u64>> {
        let collector = acks.then(|| s.spawn(move || collect_acks(ack_rx, schedule)));
        let consumers: Vec<_> = (0..p.partitions)
            .map(|partition| {
                let (engine, seen, mut offset) =
                    (engine.clone(), Arc::clone(&seen), starts[partition as usize]);
                let stall = p.consumer_stall.filter(|_| partition == 0);
                s.spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut h = workload::histogram();
                    let options =
                        FetchOptions { max_wait: Duration::from_millis(50), ..FetchOptions::default() };
                    let mut stalled = false;
                    // A message lost on the way must not hang the run: give up 10 s after the
                    // last one was due, and report what never arrived.
                    let give_up = start + Duration::from_secs_f64(p.seconds) + Duration::from_secs(10);
                    while seen.load(Ordering::Acquire) < total && Instant::now() < give_up {
                        if let Some((at, for_)) = stall {
                            if !stalled && start.elapsed() >= at {
                                stalled = true;
                                std::thread::sleep(for_);
                            }
                        }
                        let fetched = engine.fetch("lat", partition, offset, options)?;
                        for r in fetched.records(offset)? {
                            let due = workload::due_ns(r.value.as_deref());
                            h.saturating_record(schedule.latency_us(due).max(1));
                            seen.fetch_add(1, Ordering::AcqRel);
                            offset = r.offset + 1;
                        }
                    }
                    Ok(h)
                })
            })
            .collect();
        // The producer: fire at each due time, never waiting for acknowledgements.
        let value_len = p.message_bytes.max(8);
        let mut producer_stalled = false;
        for i in 0..total {
            if let Some((at, for_)) = p.producer_stall {
                if !producer_stalled && Duration::from_nanos(schedule.due_ns(i)) >= at {
                    producer_stalled = true;
                    std::thread::sleep(for_);
                }
            }
            let due = schedule.wait_for(i);
            let mut value = vec![0u8; value_len];
            value[..8].copy_from_slice(&due.to_be_bytes());
            let r = Record { timestamp: 0, key: None, value: Some(&value), headers: &[] };
            let partition = (i % u64::from(p.partitions)) as u32;
            let ack = engine.produce_async("lat", Target::Partition(partition), &[r]);
            if acks {
                let _ = ack_tx.send((due, Box::pin(async move { ack.await.map(drop) })));
            }
        }
        drop(ack_tx);
        if let Some(c) = collector {
            ack_histogram = Some(c.join().map_err(|_| anyhow::anyhow!("ack collector panicked"))??);
        }
        let mut all = workload::histogram();
        for c in consumers {
            all.add(c.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??)?;
        }
        Ok(all)
    })?;
    Ok((histogram, seen.load(Ordering::Acquire), ack_histogram))
}

type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), spate::EngineError>> + Send>>;

/// Awaits every produce's acknowledgement as it completes (in any order) and records the time
/// from its due time, on a current-thread runtime of its own.
fn collect_acks(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, AckFuture)>,
    schedule: Schedule,
) -> anyhow::Result<Histogram<u64>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let local = tokio::task::LocalSet::new();
    let h = std::rc::Rc::new(std::cell::RefCell::new(workload::histogram()));
    let failed = std::rc::Rc::new(std::cell::Cell::new(None));
    local.block_on(&runtime, async {
        let mut tasks = Vec::new();
        while let Some((due, ack)) = rx.recv().await {
            let (h, failed) = (std::rc::Rc::clone(&h), std::rc::Rc::clone(&failed));
            tasks.push(tokio::task::spawn_local(async move {
                match ack.await {
                    Ok(()) => h.borrow_mut().saturating_record(schedule.latency_us(due).max(1)),
                    Err(e) => failed.set(Some(e.to_string())),
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    if let Some(e) = failed.take() {
        anyhow::bail!("a produce failed: {e}");
    }
    let h = h.borrow().clone();
    Ok(h)
}

/// The raw cost of durability on this directory: `samples` appends of `bytes` bytes to one
/// file, each followed by `fdatasync`, one after the other; their latencies in µs.
fn fdatasync_reference(dir: &std::path::Path, bytes: usize, samples: u64) -> anyhow::Result<Histogram<u64>> {
    use std::io::Write as _;
    let path = dir.join(format!("fdatasync-reference-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let data = vec![7u8; bytes];
    let mut h = workload::histogram();
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all(&data)?;
        file.sync_data()?;
        h.saturating_record((start.elapsed().as_micros() as u64).max(1));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(h)
}

/// Appends measured per `fdatasync` reference run.
const FDATASYNC_SAMPLES: u64 = 1_000;

/// The floor at `rate` for `seconds`: the open-loop schedule through bare bounded channels, one
/// per partition, each to a consumer thread blocking in `recv`.
pub fn channel_floor(p: &Params, rate: f64, seconds: f64) -> anyhow::Result<Histogram<u64>> {
    let total = (rate * seconds).max(1.0) as u64;
    let schedule = Schedule::new(Instant::now() + Duration::from_millis(20), rate);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..p.partitions).map(|_| crossbeam::channel::bounded::<Vec<u8>>(FLOOR_CHANNEL_CAPACITY)).unzip();
    std::thread::scope(|s| -> anyhow::Result<Histogram<u64>> {
        let consumers: Vec<_> = receivers
            .into_iter()
            .map(|rx| {
                let idle = p.idle;
                s.spawn(move || {
                    let mut h = workload::histogram();
                    loop {
                        // The engine's waiting strategy: spin and yield a while, then block.
                        let mut early = None;
                        idle.back_off(|| match rx.try_recv() {
                            Ok(v) => {
                                early = Some(Ok(v));
                                true
                            }
                            Err(crossbeam::channel::TryRecvError::Empty) => false,
                            Err(crossbeam::channel::TryRecvError::Disconnected) => true,
                        });
                        let Ok(value) = early.unwrap_or_else(|| rx.recv()) else { break };
                        h.saturating_record(schedule.latency_us(workload::due_ns(Some(&value))).max(1));
                    }
                    h
                })
            })
            .collect();
        let value_len = p.message_bytes.max(8);
        for i in 0..total {
            let due = schedule.wait_for(i);
            let mut value = vec![0u8; value_len];
            value[..8].copy_from_slice(&due.to_be_bytes());
            // Blocks only if a consumer is FLOOR_CHANNEL_CAPACITY messages behind; the lateness
            // that causes is counted, as for the engine.
            senders[(i % u64::from(p.partitions)) as usize]
                .send(value)
                .map_err(|_| anyhow::anyhow!("floor consumer gone"))?;
        }
        drop(senders);
        let mut all = workload::histogram();
        for c in consumers {
            all.add(c.join().map_err(|_| anyhow::anyhow!("floor consumer panicked"))?)?;
        }
        Ok(all)
    })
}

/// Messages a floor channel holds: far more than a consumer falls behind at any rate measured.
const FLOOR_CHANNEL_CAPACITY: usize = 1 << 16;

/// A floor run lasts at most this long (it runs twice per rate).
const FLOOR_SECONDS_MAX: f64 = 1.0;

/// The floor's two runs around an engine run, and the engine row's ratios to them.
fn with_floor(row: Row, engine: &Histogram<u64>, before: &Histogram<u64>, after: &Histogram<u64>) -> Row {
    let mut floor = before.clone();
    floor.add(after).expect("same bounds");
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q).max(1) as f64;
    let mut row = row
        .extra("floor_p50_us", q(&floor, 0.5))
        .extra("floor_p99_us", q(&floor, 0.99))
        .extra("floor_p999_us", q(&floor, 0.999));
    if !engine.is_empty() {
        row = row
            .extra("p50_ratio_to_floor", q(engine, 0.5) / q(&floor, 0.5))
            .extra("p99_ratio_to_floor", q(engine, 0.99) / q(&floor, 0.99))
            .extra("p999_ratio_to_floor", q(engine, 0.999) / q(&floor, 0.999));
    }
    let moved = crate::report::moved(q(before, 0.99), q(after, 0.99));
    row = row.extra("floor_p99_before_us", q(before, 0.99)).extra("floor_p99_after_us", q(after, 0.99));
    match moved {
        Some(m) => row.extra("floor_moved", m),
        None => row,
    }
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    for &durability in &p.durabilities {
        let (engine, _dir) = workload::engine_with(root, p.shards, p.backend, p.idle)?;
        engine.create_topic("lat", p.partitions, LogConfig { durability, ..LogConfig::default() })?;
        let mut rates: Vec<(String, f64)> = p.rates.iter().map(|&r| (format!("{r:.0}/s"), r)).collect();
        if !p.fractions.is_empty() {
            progress(&format!("latency {durability}: measuring the maximum rate"));
            let max = max_rate(&engine, p.message_bytes, 1.0)?;
            let mut row = Row::named(format!("latency {durability} max (closed loop)"));
            row.msgs_per_s = Some(max);
            out.rows.push(row);
            rates.extend(p.fractions.iter().map(|f| (format!("{:.0}% of max", f * 100.0), max * f)));
        }
        let mut plot = LatencyPlot {
            name: format!("latency-{durability}").replace(':', "-"),
            title: format!("End-to-end latency, durability {durability}, open loop"),
            series: Vec::new(),
        };
        for (label, rate) in rates {
            let floor_secs = p.seconds.min(FLOOR_SECONDS_MAX);
            progress(&format!("latency {durability}: {label}: channel floor ({floor_secs:.1} s)"));
            let before = channel_floor(p, rate, floor_secs)?;
            progress(&format!("latency {durability}: {label} ({rate:.0} msgs/s) for {:.1} s", p.seconds));
            let always = durability == Durability::Always;
            let fsync_before = if always {
                Some(fdatasync_reference(root, p.message_bytes, FDATASYNC_SAMPLES)?)
            } else {
                None
            };
            let (h, seen, acks) = open_loop_with_acks(&engine, p, rate, always)?;
            let fsync_after = if always {
                Some(fdatasync_reference(root, p.message_bytes, FDATASYNC_SAMPLES)?)
            } else {
                None
            };
            progress(&format!("latency {durability}: {label}: channel floor again"));
            let after = channel_floor(p, rate, floor_secs)?;
            let total = (rate * p.seconds).max(1.0) as u64;
            let mut row = Row::named(format!("latency {durability} {label}")).with_latency(&h);
            // What arrived over the run, not the target.
            row.msgs_per_s = Some(seen as f64 / p.seconds);
            row.lost = Some(total - seen);
            let mut row = with_floor(row.extra("target_msgs_per_s", rate), &h, &before, &after);
            let mut fsync_row = None;
            if let (Some(acks), Some(mut fsync), Some(fsync_after)) = (acks, fsync_before, fsync_after) {
                fsync.add(&fsync_after)?;
                let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q).max(1) as f64;
                row = row
                    .extra("ack_p50_us", q(&acks, 0.5))
                    .extra("ack_p99_us", q(&acks, 0.99))
                    .extra("ack_p999_us", q(&acks, 0.999))
                    .extra("fdatasync_p50_us", q(&fsync, 0.5))
                    .extra("fdatasync_p99_us", q(&fsync, 0.99))
                    .extra("ack_p99_ratio_to_fdatasync_p99", q(&acks, 0.99) / q(&fsync, 0.99));
                let mut ack_row = Row::named(format!("  acknowledgements, {label}")).with_latency(&acks);
                ack_row.msgs_per_s = Some(acks.len() as f64 / p.seconds);
                let ack_row =
                    ack_row.extra("ack_p99_ratio_to_fdatasync_p99", q(&acks, 0.99) / q(&fsync, 0.99));
                fsync_row = Some((
                    ack_row,
                    Row::named(format!(
                        "  fdatasync: {} B write + fdatasync, same directory",
                        p.message_bytes
                    ))
                    .with_latency(&fsync)
                    .extra("samples", fsync.len()),
                ));
            }
            out.rows.push(row.extra("messages", seen));
            if let Some((ack_row, fsync_row)) = fsync_row {
                out.rows.push(ack_row);
                out.rows.push(fsync_row);
            }
            let mut floor = before;
            floor.add(&after)?;
            let waits = if p.idle == spate::IdleStrategy::Park { "blocking" } else { "spin, yield, block" };
            let mut floor_row =
                Row::named(format!("  floor: channel, {waits}, {label}")).with_latency(&floor);
            floor_row.msgs_per_s = Some(rate);
            out.rows.push(floor_row.extra("floor_of", format!("latency {durability} {label}")));
            plot.series.push((label.clone(), h));
            plot.series.push((format!("{label}, channel floor"), floor));
        }
        out.plots.push(plot);
        engine.shutdown()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine with one `never` partition named "lat", in a scratch directory. Bind the result
    /// as `(_root, _dir, engine)`: the engine then drops before its directories.
    fn one_partition_engine() -> (tempfile::TempDir, tempfile::TempDir, Engine) {
        let root = tempfile::tempdir().unwrap();
        let (engine, dir) = workload::engine(root.path(), 1, BackendChoice::Fallback).unwrap();
        engine
            .create_topic("lat", 1, LogConfig { durability: Durability::Never, ..LogConfig::default() })
            .unwrap();
        (root, dir, engine)
    }

    /// 1.2 s at one partition with no stall; each test adds its own.
    fn stall_params() -> Params {
        Params {
            message_bytes: 16,
            partitions: 1,
            shards: 1,
            durabilities: vec![],
            fractions: vec![],
            rates: vec![],
            seconds: 1.2,
            backend: BackendChoice::Fallback,
            consumer_stall: None,
            producer_stall: None,
            idle: spate::IdleStrategy::Park,
        }
    }

    /// No coordinated omission: a consumer stalled for 300 ms must show in the tail, and in
    /// every message that was due during the stall, not in one sample.
    #[test]
    fn a_stalled_consumer_shows_in_the_measured_tail() {
        let (_root, _dir, engine) = one_partition_engine();
        let rate = 2_000.0;
        let stall = Duration::from_millis(300);
        let p = Params { consumer_stall: Some((Duration::from_millis(400), stall)), ..stall_params() };
        let (h, seen) = open_loop(&engine, &p, rate).unwrap();
        assert_eq!(seen, 2_400);
        assert!(h.max() >= 250_000, "the stall is in the tail: max {} µs", h.max());
        // Messages due in the first half of the stall waited at least 150 ms: about 300 of them.
        let delayed = h
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= 150_000)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        assert!(delayed >= 200, "every delayed message is counted, not just one: {delayed}");
        // Without the stall the same run has a tail far below it.
        let (calm, _) = open_loop(&engine, &Params { consumer_stall: None, ..p }, rate).unwrap();
        assert!(calm.value_at_quantile(0.99) < 100_000, "p99 {} µs", calm.value_at_quantile(0.99));
    }

    /// The check that separates open-loop measurement from its imitation: when the *producer*
    /// stalls, the messages due during the stall are sent late. Measured from their intended send
    /// time they carry the rest of the stall; measured from the time they were actually sent (as
    /// a closed-loop harness would) they would look fast, and this test would fail.
    #[test]
    fn a_stalled_producer_counts_for_every_message_due_during_the_stall() {
        let (_root, _dir, engine) = one_partition_engine();
        let p = Params {
            producer_stall: Some((Duration::from_millis(400), Duration::from_millis(300))),
            ..stall_params()
        };
        let (h, seen) = open_loop(&engine, &p, 2_000.0).unwrap();
        assert_eq!(seen, 2_400);
        // 600 messages were due during the 300 ms stall; the first half of them waited at least
        // 150 ms before they could even be sent.
        let delayed = h
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= 150_000)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        assert!(delayed >= 250, "messages due during the stall carry it: {delayed} above 150 ms");
        assert!(h.max() >= 250_000, "max {} µs", h.max());
    }

    #[test]
    fn the_floor_hands_every_message_over_and_measures_from_its_due_time() {
        let p = Params { partitions: 2, ..stall_params() };
        let h = channel_floor(&p, 2_000.0, 0.5).unwrap();
        assert_eq!(h.len(), 1_000, "every message due in 0.5 s at 2,000/s arrives once");
        // A handoff on an idle machine takes microseconds, far below a scheduling quantum.
        assert!(h.value_at_quantile(0.5) < 5_000, "p50 {} µs", h.value_at_quantile(0.5));
    }

    #[test]
    fn engine_rows_carry_their_ratios_to_the_floor_and_flag_a_floor_that_moved() {
        let of = |values: &[u64]| {
            let mut h = workload::histogram();
            for &v in values {
                h.record(v).unwrap();
            }
            h
        };
        let engine = of(&[200; 100]);
        let (before, after) = (of(&[100; 100]), of(&[100; 100]));
        let row = with_floor(Row::named("r"), &engine, &before, &after);
        let get = |row: &Row, key: &str| row.extra.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        assert_eq!(get(&row, "p99_ratio_to_floor").and_then(|v| v.as_f64()), Some(2.0));
        assert_eq!(get(&row, "p50_ratio_to_floor").and_then(|v| v.as_f64()), Some(2.0));
        assert_eq!(get(&row, "floor_moved"), None);
        // The floor doubled between its runs: said in the row.
        let row = with_floor(Row::named("r"), &engine, &before, &of(&[200; 100]));
        let moved = get(&row, "floor_moved").and_then(|v| v.as_f64()).unwrap();
        assert!((moved - 1.0).abs() < 0.01, "moved {moved}");
        assert!(crate::report::table(&[row]).contains("floor moved 100%"));
    }

    #[test]
    fn always_rows_carry_their_acknowledgements_beside_the_raw_fdatasync() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            durabilities: vec![Durability::Always],
            rates: vec![500.0],
            seconds: 0.5,
            shards: 1,
            ..stall_params()
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let names: Vec<&str> = out.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let engine = &out.rows[0];
        let get = |r: &Row, k: &str| r.extra.iter().find(|(key, _)| *key == k).and_then(|(_, v)| v.as_f64());
        let (ack, fsync) = (get(engine, "ack_p99_us").unwrap(), get(engine, "fdatasync_p99_us").unwrap());
        assert!(ack >= 1.0 && fsync >= 1.0);
        assert!((get(engine, "ack_p99_ratio_to_fdatasync_p99").unwrap() - ack / fsync).abs() < 1e-9);
        // Every produce was acknowledged, and the reference made all its appends.
        assert_eq!(out.rows[1].msgs_per_s, Some(250.0 / 0.5), "{}", out.rows[1].name);
        let samples = out.rows[2].extra.iter().find(|(k, _)| *k == "samples").unwrap().1.as_u64();
        assert_eq!(samples, Some(2 * FDATASYNC_SAMPLES), "{}", out.rows[2].name);
        assert!(out.rows[3].name.contains("floor"));
    }
}
