//! The group coordinator shared by every connection: the `group` state machine behind a mutex
//! (group calls are control traffic, never on the produce or fetch path), and its timer.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::config::ServerConfig;
use crate::group::{Groups, Timeouts};

/// How often sessions and rebalance deadlines are checked.
pub const TICK: Duration = Duration::from_millis(50);

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

    /// Runs the groups' timers until `stop` turns true.
    pub async fn run_timer(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            self.lock().tick(Instant::now());
        }
    }
}
