//! The physical reference: the same bytes written (and read) with plain system calls on the
//! same directory in the same run, so that every throughput figure carries a ratio to what this
//! disk and kernel give right now.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

/// Bytes per second of the references for one byte count.
#[derive(Debug, Clone, Copy)]
pub struct WriteReference {
    /// `pwrite` through the page cache in chunks of `chunk_bytes`, then one `fdatasync`.
    pub pwrite_bytes_per_s: f64,
    /// `O_DIRECT` writes of 1 MiB aligned blocks, then one `fdatasync`; `None` where the file
    /// system refuses `O_DIRECT` (tmpfs, some overlays).
    pub direct_bytes_per_s: Option<f64>,
}

/// Measures both write references for `total_bytes`, in `dir`.
pub fn write_reference(dir: &Path, total_bytes: u64, chunk_bytes: usize) -> anyhow::Result<WriteReference> {
    let pwrite = pwrite(dir, total_bytes, chunk_bytes)?;
    let direct = direct_write(dir, total_bytes).ok();
    Ok(WriteReference { pwrite_bytes_per_s: pwrite, direct_bytes_per_s: direct })
}

fn pwrite(dir: &Path, total_bytes: u64, chunk_bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("reference-pwrite.dat");
    let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let chunk: Vec<u8> = (0..chunk_bytes.max(1)).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut offset = 0u64;
    while offset < total_bytes {
        let n = chunk.len().min((total_bytes - offset) as usize);
        file.write_all_at(&chunk[..n], offset)?;
        offset += n as u64;
    }
    file.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(total_bytes as f64 / secs)
}

/// A 4 KiB-aligned buffer, as O_DIRECT requires.
struct Aligned {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, len, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed) bytes owned by this value.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn direct_write(dir: &Path, total_bytes: u64) -> anyhow::Result<f64> {
    const BLOCK: usize = 1 << 20;
    let path = dir.join("reference-direct.dat");
    let opened =
        OpenOptions::new().create(true).truncate(true).write(true).custom_flags(libc::O_DIRECT).open(&path);
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    let buf = Aligned::new(BLOCK);
    let blocks = total_bytes.div_ceil(BLOCK as u64);
    let start = Instant::now();
    let result = (|| -> std::io::Result<()> {
        for b in 0..blocks {
            file.write_all_at(buf.as_slice(), b * BLOCK as u64)?;
        }
        file.sync_data()
    })();
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    result?;
    Ok((blocks * BLOCK as u64) as f64 / secs)
}

/// Reads every file of every group with `pread` into a buffer of `chunk_bytes`, one thread
/// per group (the same parallelism as the readers it is compared with); returns bytes per
/// second. The catch-up read reference.
pub fn read_reference(groups: &[Vec<std::path::PathBuf>], chunk_bytes: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let total = std::thread::scope(|s| -> anyhow::Result<u64> {
        let handles: Vec<_> = groups
            .iter()
            .map(|files| {
                s.spawn(move || -> std::io::Result<u64> {
                    let mut buf = vec![0u8; chunk_bytes.max(4096)];
                    let mut total = 0u64;
                    for path in files {
                        let file = std::fs::File::open(path)?;
                        let mut offset = 0u64;
                        loop {
                            let n = file.read_at(&mut buf, offset)?;
                            if n == 0 {
                                break;
                            }
                            offset += n as u64;
                            total += n as u64;
                        }
                    }
                    Ok(total)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok(total)
    })?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_measure_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = write_reference(dir.path(), 4 << 20, 64 << 10).unwrap();
        assert!(r.pwrite_bytes_per_s > 0.0);
        if let Some(d) = r.direct_bytes_per_s {
            assert!(d > 0.0);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "reference files removed");
        let f = dir.path().join("x");
        std::fs::write(&f, vec![1u8; 100_000]).unwrap();
        assert!(read_reference(&[vec![f]], 4096).unwrap() > 0.0);
    }
}
