//! File descriptors: the process's limit, how many are open, and raising the limit.
//!
//! Every partition keeps its active segment open, every connection is a socket, and reads open
//! sealed segments on demand (a bounded number per shard, see `segment::files`). The engine
//! refuses to create partitions, and the Kafka listener refuses connections, while the open
//! descriptors plus [`HEADROOM`] would pass the soft limit: a clear error at the edge instead of
//! `EMFILE` in the middle of a roll.

/// Descriptors kept free for what runs without asking: rolls (three files at a time per
/// shard), index and topic files, recovery, the metrics endpoint.
pub const HEADROOM: u64 = 128;

/// The soft limit on open files (`RLIMIT_NOFILE`); `u64::MAX` if unlimited or unknown.
pub fn limit() -> u64 {
    let (soft, _) = get();
    soft
}

fn get() -> (u64, u64) {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return (u64::MAX, u64::MAX);
    }
    let conv = |v: libc::rlim_t| if v == libc::RLIM_INFINITY { u64::MAX } else { v };
    (conv(rl.rlim_cur), conv(rl.rlim_max))
}

/// Raises the soft limit on open files to the hard limit; returns (before, after).
pub fn raise_limit() -> std::io::Result<(u64, u64)> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = rl.rlim_cur;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the hard
        // limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, rl.rlim_cur))
}

/// Descriptors this process has open now (the entries of `/proc/self/fd`).
pub fn open_count() -> std::io::Result<u64> {
    let mut n: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        entry?;
        n += 1;
    }
    // The directory handle of the listing itself.
    Ok(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = get();
        let (_, after) = raise_limit().unwrap();
        assert_eq!(after, hard);
        assert_eq!(limit(), hard);
        assert!(open_count().unwrap() >= 3, "stdin, stdout and stderr at least");
    }
}
