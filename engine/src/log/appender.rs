//! A partition behind its own writer thread: many threads append, one thread commits.
//!
//! This is group commit in its smallest complete form. Callers send batches through a bounded
//! queue and block until their durability holds. The writer takes the first request, then drains
//! everything else already queued, stages it all, and makes one [`commit`]: one write and, under
//! `always`, one `fdatasync` for the whole group. While that fsync runs, new requests queue up
//! and form the next group, so the fsync rate stays bounded by the device and not by the number
//! of producers. The thread-per-core engine runs the same loop per shard over many partitions.
//!
//! ```
//! use spate::io::BackendChoice;
//! use spate::log::{Appender, Durability, LogConfig};
//! use spate::record::{BatchBuilder, BatchOptions, Record};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().join("orders-0");
//! let config = LogConfig { durability: Durability::Always, ..LogConfig::default() };
//! let (log, writer) = Appender::spawn(&dir, config, BackendChoice::Auto)?;
//! let mut batch = BatchBuilder::new(BatchOptions::default());
//! batch.push(&Record { timestamp: 1_700_000_000_000, key: Some(b"k"), value: Some(b"v"), headers: &[] });
//! let offsets = log.append(batch.finish())?; // returns once the batch is fdatasync'ed
//! assert_eq!((offsets.base_offset, offsets.last_offset), (0, 0));
//! drop(log);
//! writer.join()?; // flushes and stops the writer thread
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};

use super::{commit, AppendInfo, LogConfig, LogError, Partition};
use crate::io::{self, BackendChoice};

/// Requests queued ahead of the writer; a full queue blocks producers (backpressure).
const QUEUE_DEPTH: usize = 4096;

enum Request {
    Append(Vec<u8>, Sender<Result<AppendInfo, LogError>>),
}

/// Counters published by the writer thread.
#[derive(Debug, Default)]
pub struct AppenderStats {
    pub appends: AtomicU64,
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
}

/// Cheap-to-clone handle to a partition owned by a writer thread.
#[derive(Debug, Clone)]
pub struct Appender {
    tx: Sender<Request>,
    stats: Arc<AppenderStats>,
    dir: PathBuf,
}

/// Joins the writer thread; dropping it detaches the thread, which exits once every handle is gone.
#[derive(Debug)]
pub struct AppenderThread {
    join: JoinHandle<Result<(), LogError>>,
}

impl AppenderThread {
    /// Waits for the writer to flush and exit; call after dropping every [`Appender`].
    pub fn join(self) -> Result<(), LogError> {
        self.join.join().unwrap_or_else(|_| Err(LogError::BatchRejected("the writer thread panicked".into())))
    }
}

impl Appender {
    /// Opens the partition in `dir` (running recovery) on a new writer thread.
    pub fn spawn(
        dir: &Path,
        config: LogConfig,
        backend: BackendChoice,
    ) -> Result<(Appender, AppenderThread), LogError> {
        let (tx, rx) = channel::bounded(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = channel::bounded(1);
        let stats = Arc::new(AppenderStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread_dir = dir.to_path_buf();
        let join = std::thread::Builder::new()
            .name("spate-appender".into())
            .spawn(move || {
                // The ring is created on the thread that uses it: one ring per writer thread.
                let mut io = match io::open(backend) {
                    Ok(io) => io,
                    Err(e) => {
                        let err = LogError::Io { dir: thread_dir.clone(), source: Arc::new(e) };
                        let _ = ready_tx.send(Err(err));
                        return Ok(());
                    }
                };
                let partition = match Partition::open(&thread_dir, config, &mut *io) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(partition, &mut *io, rx, &thread_stats)
            })
            .map_err(|e| LogError::fs(dir, e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((Appender { tx, stats, dir: dir.to_path_buf() }, AppenderThread { join })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LogError::BatchRejected("the writer thread exited during open".into())),
        }
    }

    /// Appends one batch and waits until the partition's durability holds for it.
    pub fn append(&self, batch: Vec<u8>) -> Result<AppendInfo, LogError> {
        let (reply_tx, reply_rx) = channel::bounded(1);
        let gone = || LogError::BatchRejected(format!("the writer of {} has stopped", self.dir.display()));
        self.tx.send(Request::Append(batch, reply_tx)).map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }

    pub fn stats(&self) -> &AppenderStats {
        &self.stats
    }
}

/// The writer loop: one group per turn. Exits, flushing, when every handle has been dropped.
fn run(
    mut p: Partition,
    io: &mut dyn io::Io,
    rx: Receiver<Request>,
    stats: &AppenderStats,
) -> Result<(), LogError> {
    let mut waiting: Vec<(AppendInfo, Sender<Result<AppendInfo, LogError>>)> = Vec::new();
    loop {
        let first = match p.sync_deadline() {
            Some(deadline) => match rx.recv_deadline(deadline) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            },
        };
        let fsyncs_before = io.stats().fsyncs;
        for request in first.into_iter().chain(rx.try_iter().take(QUEUE_DEPTH)) {
            match request {
                Request::Append(batch, reply) => match p.append(io, batch, SystemTime::now()) {
                    Ok(info) => waiting.push((info, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
            }
        }
        let result = commit(io, &mut [&mut p], Instant::now());
        stats.commits.fetch_add(1, Ordering::Relaxed);
        // Seals during appends and the commit's own sync both count.
        stats.fsyncs.fetch_add(io.stats().fsyncs - fsyncs_before, Ordering::Relaxed);
        let hw = p.high_watermark();
        let mut still_waiting = Vec::new();
        for (info, reply) in waiting.drain(..) {
            let outcome = match p.failure() {
                // Failed (by this commit or by a roll during the appends): the batch will never
                // be acknowledged, whatever the commit returned.
                Some(cause) => Err(LogError::Failed { dir: p.dir().to_path_buf(), cause: Arc::clone(cause) }),
                // Under `interval` and `never` the write alone acknowledges; under `always` the
                // commit synced everything staged. Either way the high watermark covers it.
                None if info.last_offset < hw => Ok(info),
                None => {
                    debug_assert!(result.is_ok());
                    still_waiting.push((info, reply));
                    continue;
                }
            };
            stats.appends.fetch_add(1, Ordering::Relaxed);
            // A producer that gave up waiting is not an error of the log.
            let _ = reply.send(outcome);
        }
        waiting = still_waiting;
    }
    p.flush(io)
}
