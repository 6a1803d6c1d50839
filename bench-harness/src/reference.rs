//! The physical reference: the same bytes written with plain `pwrite` into the same directory,
//! in the same run, so that every throughput figure carries a ratio to what the disk gives.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `total_bytes` in `chunk_bytes` pieces with `pwrite`, then one `fdatasync`; returns
/// the elapsed time. The engine's runs also end with one covering sync, so both sides pay it.
pub fn pwrite_reference(dir: &Path, total_bytes: u64, chunk_bytes: usize) -> anyhow::Result<Duration> {
    let path = dir.join("reference.dat");
    let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let chunk: Vec<u8> = (0..chunk_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut offset = 0u64;
    while offset < total_bytes {
        let n = chunk.len().min((total_bytes - offset) as usize);
        file.write_all_at(&chunk[..n], offset)?;
        offset += n as u64;
    }
    file.sync_data()?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(elapsed)
}
