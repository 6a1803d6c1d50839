//! Shared pieces of the scenarios: batches of fixed-size messages, an engine in a scratch
//! directory, an open-loop schedule, and a latency histogram.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spate::io::BackendChoice;
use spate::record::{BatchBuilder, BatchOptions, Record};
use spate::{Engine, EngineConfig};

/// One batch of `count` messages of `bytes` bytes each (values only, no key).
pub fn batch(bytes: usize, count: usize) -> Vec<u8> {
    let value: Vec<u8> = (0..bytes).map(|i| (i % 253) as u8).collect();
    let mut b = BatchBuilder::new(BatchOptions::default());
    for _ in 0..count {
        b.push(&Record { timestamp: 1_700_000_000_000, key: None, value: Some(&value), headers: &[] });
    }
    b.finish()
}

/// One batch of `count` records, each with `value` (no key, timestamp 0).
pub fn batch_of(value: &[u8], count: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for _ in 0..count {
        b.push(&Record { timestamp: 0, key: None, value: Some(value), headers: &[] });
    }
    b.finish()
}

/// Flushes every dirty page of the machine and lets writeback settle, so that one measurement
/// does not pay for the dirty pages of the one before it.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(200));
}

/// Whether engines the harness opens use uncached writes (`--uncached-writes`); set once by
/// `main` before any scenario runs.
pub static UNCACHED_WRITES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// An engine in a fresh directory under `root`, with `shards` shards.
pub fn engine(
    root: &Path,
    shards: usize,
    backend: BackendChoice,
) -> anyhow::Result<(Engine, tempfile::TempDir)> {
    engine_with(root, shards, backend, spate::IdleStrategy::Park)
}

/// [`engine`], idling as `idle` says.
pub fn engine_with(
    root: &Path,
    shards: usize,
    backend: BackendChoice,
    idle: spate::IdleStrategy,
) -> anyhow::Result<(Engine, tempfile::TempDir)> {
    let dir = tempfile::tempdir_in(root)?;
    let uncached_writes = UNCACHED_WRITES.load(std::sync::atomic::Ordering::Relaxed);
    let engine = Engine::open(
        dir.path(),
        EngineConfig { shards, io_backend: backend, uncached_writes, idle, ..EngineConfig::default() },
    )?;
    Ok((engine, dir))
}

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
/// Latencies in microseconds.
pub type Hist = Histogram<u64>;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// An open-loop schedule: message `i` is due at `start + offset + i * interval`, whether or not
/// anything before it has finished. Latency is measured from that due time, so a stall that
/// delays sending is counted for every message it delays (no coordinated omission).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub interval: Duration,
    pub offset: Duration,
}

impl Schedule {
    pub fn new(start: Instant, per_second: f64) -> Schedule {
        Schedule {
            start,
            interval: Duration::from_secs_f64(1.0 / per_second.max(1e-9)),
            offset: Duration::ZERO,
        }
    }

    /// The due time of message `i`, in nanoseconds since `start`.
    pub fn due_ns(&self, i: u64) -> u64 {
        (self.offset + self.interval.mul_f64(i as f64)).as_nanos() as u64
    }

    /// Waits until message `i` is due and returns its due time in nanoseconds since `start`.
    ///
    /// It never spins: on a 2-core machine a spinning load generator takes a core from the
    /// shards it measures and shows up as their latency. It sleeps while the wait is long and
    /// yields the CPU for the last stretch; lateness this causes is counted, since latency runs
    /// from the due time.
    pub fn wait_for(&self, i: u64) -> u64 {
        let due = self.due_ns(i);
        loop {
            let now = self.start.elapsed().as_nanos() as u64;
            if now >= due {
                return due;
            }
            let left = due - now;
            if left > 100_000 {
                std::thread::sleep(Duration::from_nanos(left - 60_000));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Microseconds from message due at `due_ns` until now.
    pub fn latency_us(&self, due_ns: u64) -> u64 {
        (self.start.elapsed().as_nanos() as u64).saturating_sub(due_ns) / 1000
    }
}

/// The due time (ns since the schedule's start) a message carries in its first 8 bytes.
pub fn due_ns(value: Option<&[u8]>) -> u64 {
    value.and_then(|v| v.get(..8)).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// Busy-waits for `d`: simulated processing that occupies its thread like real work would.
pub fn work_for(d: Duration) {
    if d >= Duration::from_millis(2) {
        std::thread::sleep(d);
        return;
    }
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Runs a future to completion on this thread, parking between wake-ups: the harness needs no
/// async runtime, and neither does the engine.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
