//! Starting and stopping an engine: the directory lock, leftovers of interrupted deletions,
//! shard threads pinned to the CPUs the process may use, and shutdown.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{EngineConfig, EngineError, TopicInfo, OFFSETS_TOPIC};
use crate::shard::mailbox::{mailbox, MailboxSender};
use crate::shard::request::Request;
use crate::shard::{Shard, ShardSetup};

thread_local! {
    /// Set on shard threads: an engine dropped there must not wait for its own shard.
    static ON_SHARD_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(super) fn on_shard_thread() -> bool {
    ON_SHARD_THREAD.with(std::cell::Cell::get)
}

/// An exclusive `flock` on `<dir>/.lock`, held for the engine's life: two engines writing the
/// same segments would corrupt them.
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, EngineError> {
        let path = dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| EngineError::Io { path: path.clone(), source: e })?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as the file stays open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(EngineError::Locked { dir: dir.to_path_buf() });
            }
            return Err(EngineError::Io { path, source: err });
        }
        Ok(DirLock { _file: file })
    }
}

/// Removes partition directories that belong to no topic: what a deletion interrupted by a crash
/// (or a creation that never stored its description) left behind.
pub(super) fn remove_orphans(data_dir: &Path, topics: &[TopicInfo]) -> Result<(), EngineError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    for entry in std::fs::read_dir(data_dir).map_err(io_err(data_dir))? {
        let path = entry.map_err(io_err(data_dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let owned = name.rsplit_once('-').is_some_and(|(topic, partition)| {
            partition
                .parse::<u32>()
                .is_ok_and(|p| topics.iter().any(|t| &*t.name == topic && p < t.partitions))
        });
        if !owned {
            tracing::warn!(dir = %path.display(), "removing partition data that belongs to no topic");
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// The CPUs this process may run on (its affinity mask), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        set
    };
    // SAFETY: CPU_ISSET reads inside the set for indexes below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Pins the calling thread to `cpu`; a failure is logged, not fatal.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity reads it for the calling thread (pid 0).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin shard thread");
    }
}

/// The CPU shard `id` is pinned to: the `id`-th CPU the process may use, wrapping around.
#[cfg(test)]
pub(super) fn shard_cpu(id: usize) -> Option<usize> {
    let cpus = allowed_cpus();
    (!cpus.is_empty()).then(|| cpus[id % cpus.len()])
}

/// Running shards: their mailboxes, indexed by shard id, and their threads.
pub(super) struct Shards {
    pub senders: Vec<MailboxSender<Request>>,
    pub threads: Vec<JoinHandle<()>>,
}

/// Makes the I/O backend of a shard, on that shard's thread (one ring per shard).
pub type IoFactory = Arc<dyn Fn(usize) -> Result<Box<dyn crate::io::Io>, crate::io::IoError> + Send + Sync>;

/// How the shards' writes treat the page cache: uncached where configured and supported.
pub(super) fn write_cache(
    config: &EngineConfig,
    data_dir: &Path,
) -> Result<crate::io::WriteCache, EngineError> {
    if !config.uncached_writes {
        return Ok(crate::io::WriteCache::Keep);
    }
    match crate::io::uncached_writes_supported(data_dir) {
        Ok(true) => Ok(crate::io::WriteCache::Drop),
        Ok(false) => {
            tracing::info!(
                dir = %data_dir.display(),
                "RWF_DONTCACHE is not supported here (Linux 6.14+ and file system support needed); appends stay in the page cache"
            );
            Ok(crate::io::WriteCache::Keep)
        }
        Err(e) => Err(EngineError::Io { path: data_dir.to_path_buf(), source: e }),
    }
}

/// Spawns the shard threads and waits until each has its I/O ring.
pub(super) fn spawn_shards(
    config: &EngineConfig,
    data_dir: &Path,
    io: Option<IoFactory>,
    cache: crate::io::WriteCache,
) -> Result<Shards, EngineError> {
    let mut senders = Vec::with_capacity(config.shards);
    let mut receivers = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let (tx, rx) = mailbox(config.mailbox_capacity)
            .map_err(|e| EngineError::System { what: "creating a shard's eventfd", source: e })?;
        senders.push(tx);
        receivers.push(rx);
    }
    let cpus = allowed_cpus();
    let mut threads = Vec::with_capacity(config.shards);
    let (ready_tx, ready_rx) = crossbeam::channel::bounded(config.shards);
    for (id, rx) in receivers.into_iter().enumerate() {
        let setup = ShardSetup {
            id,
            data_dir: data_dir.to_path_buf(),
            rx,
            peers: senders.clone(),
            retention_check_interval: config.retention_check_interval,
            offsets_topic: Arc::from(OFFSETS_TOPIC),
            parked_bytes_max: config.parked_bytes_max,
            waiters_max: config.fetch_waiters_max,
            reserve: config.reserve,
            sealed_files_max: config.sealed_files_max,
            offsets_retention: config.offsets_retention,
            clock: config.clock.clone(),
            idle: config.idle,
            compaction: config.compaction,
            archive_dir: config.archive_dir.clone(),
        };
        let cpu = (config.pin_threads && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let (backend, ready, factory) = (config.io_backend, ready_tx.clone(), io.clone());
        let spawned = std::thread::Builder::new().name(format!("spate-shard-{id}")).spawn(move || {
            ON_SHARD_THREAD.with(|f| f.set(true));
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            // The ring is created on the thread that uses it: one ring per shard.
            let io = match &factory {
                Some(make) => make(id),
                None => crate::io::open_with(backend, cache),
            };
            match io {
                Ok(io) => {
                    let _ = ready.send(Ok(()));
                    Shard::new(setup, io).run();
                }
                Err(e) => {
                    setup.rx.close();
                    let _ = ready.send(Err(e));
                }
            }
        });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                let _ = shutdown_shards(&senders, threads);
                return Err(EngineError::System { what: "starting a shard thread", source: e });
            }
        }
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(EngineError::Log(crate::log::LogError::Io {
                    dir: data_dir.to_path_buf(),
                    source: Arc::new(e),
                }));
            }
            Err(_) => {
                failure.get_or_insert(EngineError::ShuttingDown);
            }
        }
    }
    if let Some(e) = failure {
        let _ = shutdown_shards(&senders, threads);
        return Err(e);
    }
    Ok(Shards { senders, threads })
}

/// Asks every shard to flush and stop, waits for their answers and joins their threads.
/// Returns the first flush error.
pub(super) fn shutdown_shards(
    shards: &[MailboxSender<Request>],
    threads: Vec<JoinHandle<()>>,
) -> Result<(), EngineError> {
    let mut waits = Vec::new();
    for shard in shards {
        let (tx, rx) = oneshot::channel();
        if shard.send(Request::Shutdown { reply: tx }).is_ok() {
            waits.push(rx);
        }
    }
    let mut first_error = None;
    for w in waits {
        // A shard that stopped already has nothing more to say.
        if let Ok(Err(e)) = w.recv() {
            first_error.get_or_insert(e);
        }
    }
    for t in threads {
        if t.join().is_err() {
            tracing::error!("a shard thread panicked");
        }
    }
    first_error.map_or(Ok(()), Err)
}
