//! The group coordinator shared by every connection: the `group` state machine behind a mutex
//! (group calls are control traffic, never on the produce or fetch path), and its timer.

use std::sync::{Mutex, MutexGuard};
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

#[derive(Debug)]
pub struct Coordinator {
    groups: Mutex<Groups>,
}

impl Coordinator {
    pub fn new(config: &ServerConfig) -> Coordinator {
        Coordinator {
            groups: Mutex::new(Groups::new(Timeouts {
                session_min: config.group_session_timeout_min,
                session_max: config.group_session_timeout_max,
                initial_rebalance_delay: config.group_initial_rebalance_delay,
            })),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the groups' timers until `stop` turns true, and reports the groups with members
    /// active to `engine` (see `ACTIVE_REPORT`).
    pub async fn run_timer(&self, engine: &Engine, mut stop: tokio::sync::watch::Receiver<bool>) {
        let report_every =
            engine.config().offsets_retention.map_or(ACTIVE_REPORT, |r| ACTIVE_REPORT.min(r / 4));
        let mut reported: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = Instant::now();
            self.lock().tick(now);
            if reported.is_none_or(|at| now.duration_since(at) >= report_every) {
                reported = Some(now);
                let live = self.lock().with_members();
                let ids: Vec<&str> = live.iter().map(String::as_str).collect();
                if !ids.is_empty() && engine.consumers_active(&ids).is_err() {
                    return; // shutting down
                }
            }
        }
    }
}
