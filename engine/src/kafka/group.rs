//! The group coordinator shared by every connection: the `group` state machine on a thread of
//! its own. Connections send it closures and await their results, so a shard thread never
//! waits for a lock nor does work sized by what clients sent (member lists, protocols,
//! assignments); the same thread runs the groups' timers and reports live groups to the engine.

use std::time::{Duration, Instant};

use super::config::ServerConfig;
use crate::group::{Groups, Timeouts};
use crate::Engine;

/// How often sessions and rebalance deadlines are checked.
pub const TICK: Duration = Duration::from_millis(50);
/// How often the groups with members are reported active to the engine (their committed
/// offsets do not expire; see `EngineConfig::offsets_retention`), at most; a quarter of the
/// retention where that is shorter.
pub const ACTIVE_REPORT: Duration = Duration::from_secs(10);
/// However short the retention, reports are at least this far apart.
pub const ACTIVE_REPORT_MIN: Duration = Duration::from_millis(100);

/// Work for the coordinator thread.
type Job = Box<dyn FnOnce(&mut Groups) + Send>;

/// The handle connections hold. The thread ends when the last handle goes.
#[derive(Debug)]
pub struct Coordinator {
    // Unbounded: each connection has at most `in_flight_per_connection` requests waiting, so
    // the queue holds at most that many jobs per connection.
    jobs: crossbeam::channel::Sender<Job>,
}

impl Coordinator {
    /// Starts the coordinator thread over `engine`.
    pub fn start(
        config: &ServerConfig,
        engine: Engine,
    ) -> std::io::Result<(Coordinator, std::thread::JoinHandle<()>)> {
        let mut groups = Groups::new(Timeouts {
            session_min: config.group_session_timeout_min,
            session_max: config.group_session_timeout_max,
            initial_rebalance_delay: config.group_initial_rebalance_delay,
        });
        groups.consumer.timeouts = crate::group::consumer::ConsumerTimeouts {
            session: config.group_consumer_session_timeout,
            heartbeat_interval: config.group_consumer_heartbeat_interval,
        };
        let (tx, rx) = crossbeam::channel::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name("spate-groups".into())
            .spawn(move || run(groups, &rx, &engine))?;
        Ok((Coordinator { jobs: tx }, thread))
    }

    /// Runs `f` on the coordinator's groups and returns its result; `None` once the coordinator
    /// has stopped.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Groups) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |groups| {
            let _ = tx.send(f(groups));
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }

    /// Queues `f` without waiting for it (tests hold the coordinator busy with it).
    #[cfg(test)]
    pub fn post(&self, f: impl FnOnce(&mut Groups) + Send + 'static) {
        let _ = self.jobs.send(Box::new(f));
    }
}

/// The coordinator thread: jobs as they come, timers every `TICK`, live groups reported to
/// `engine`; until every handle is gone.
fn run(mut groups: Groups, jobs: &crossbeam::channel::Receiver<Job>, engine: &Engine) {
    let report_every = engine
        .config()
        .offsets_retention
        .map_or(ACTIVE_REPORT, |r| ACTIVE_REPORT.min(r / 4).max(ACTIVE_REPORT_MIN));
    let mut next_tick = Instant::now() + TICK;
    let mut next_report = Instant::now();
    loop {
        match jobs.recv_deadline(next_tick.min(next_report)) {
            Ok(job) => {
                // Everything queued runs before the timers: a heartbeat that waited behind
                // other work still counts before sessions are checked.
                for job in std::iter::once(job).chain(jobs.try_iter()) {
                    guarded("a group request", || job(&mut groups));
                }
            }
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if now >= next_tick {
            guarded("the group timers", || {
                groups.tick(now);
            });
            next_tick = now + TICK;
        }
        if now >= next_report {
            next_report = now + report_every;
            let live = groups.with_members();
            let ids: Vec<&str> = live.iter().map(String::as_str).collect();
            if !ids.is_empty() && engine.consumers_active(&ids).is_err() {
                tracing::debug!("engine shutting down; live groups not reported");
            }
        }
    }
}

/// Runs `f`; a panic (a bug) is logged and the coordinator goes on: the request it served gets
/// COORDINATOR_NOT_AVAILABLE (its reply is dropped), every other group keeps working.
fn guarded(what: &str, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%message, "group coordinator: {what} panicked");
    }
}
