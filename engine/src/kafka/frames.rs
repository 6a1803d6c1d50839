//! Buffers for large request frames, reused instead of allocated per request.
//!
//! A produce frame's memory lives until the shards have written its batches, so with many
//! requests in flight the allocator hands every frame fresh memory and takes it back after:
//! the pages are faulted in and zeroed again each time (and on a VM that reports free memory
//! to its host, each costs several µs more). This pool keeps the buffers of frames of at least
//! [`POOLED_FRAME_BYTES_MIN`] once they are dropped, up to [`POOL_BYTES_MAX`] in all, and gives
//! them to the next frames of a similar size. Smaller frames use the allocator as before.
//!
//! A frame can also carry what must live exactly as long as its memory: a produce frame
//! carries its room in the request budget, given back when the shards have written (and
//! dropped) the last of its batches, whether or not anyone still waits for the answer.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Frames smaller than this are allocated as usual.
pub const POOLED_FRAME_BYTES_MIN: usize = 64 << 10;

/// Capacity the pool keeps at most, over all its idle buffers.
pub const POOL_BYTES_MAX: usize = 64 << 20;

/// The capacity a pooled frame of `size` bytes gets: `size` rounded up to a quarter of the
/// power of two below it, so frames of similar sizes share buffers and the request budget,
/// which counts frame sizes, undercounts pooled memory by a quarter at most.
fn class_of(size: usize) -> usize {
    let step = (1usize << size.ilog2()) / 4;
    size.div_ceil(step) * step
}

#[derive(Debug, Default)]
pub struct FramePool {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Idle buffers by capacity (always a `class_of`).
    buffers: std::collections::HashMap<usize, Vec<Vec<u8>>>,
    bytes: usize,
}

impl FramePool {
    /// An empty buffer with room for `size` bytes: a pooled one if one fits.
    pub fn take(&self, size: usize) -> Vec<u8> {
        if size < POOLED_FRAME_BYTES_MIN {
            return Vec::with_capacity(size);
        }
        let class = class_of(size);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match idle.buffers.get_mut(&class).and_then(Vec::pop) {
            Some(buffer) => {
                idle.bytes -= buffer.capacity();
                buffer
            }
            None => Vec::with_capacity(class),
        }
    }

    /// `buffer`'s bytes as `Bytes` that give the buffer back to `pool` (if it is large enough
    /// to be pooled) and drop `hold` when the last slice of them is dropped.
    pub fn freeze<H: Send + 'static>(pool: &Arc<FramePool>, buffer: Vec<u8>, hold: Option<H>) -> Bytes {
        let pool = (buffer.capacity() >= POOLED_FRAME_BYTES_MIN).then(|| Arc::clone(pool));
        if pool.is_none() && hold.is_none() {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Frame { buffer, pool, _hold: hold })
    }

    fn put(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if class_of(capacity) != capacity {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.bytes + capacity <= POOL_BYTES_MAX {
            buffer.clear();
            idle.bytes += capacity;
            idle.buffers.entry(capacity).or_default().push(buffer);
        }
    }

    /// Capacity of the idle buffers.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// A frame's buffer, back to its pool when dropped, and what lives as long as it.
struct Frame<H> {
    buffer: Vec<u8>,
    pool: Option<Arc<FramePool>>,
    _hold: Option<H>,
}

impl<H> AsRef<[u8]> for Frame<H> {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl<H> Drop for Frame<H> {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.put(std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_frames_reuse_their_buffers_once_every_slice_is_gone() {
        let pool = Arc::new(FramePool::default());
        let mut first = pool.take(1 << 20);
        first.extend_from_slice(&vec![1u8; 1 << 20]);
        let at = first.as_ptr();
        let frame = FramePool::freeze(&pool, first, None::<()>);
        let slice = frame.slice(100..200);
        drop(frame);
        // A slice still holds the frame: nothing is back yet.
        assert_eq!(pool.idle_bytes(), 0);
        let other = pool.take(1 << 20);
        assert!(other.as_ptr() != at);
        drop(other);
        drop(slice);
        assert_eq!(pool.idle_bytes(), 1 << 20);
        // A frame of a similar size gets the same memory; a smaller one does not.
        let small = pool.take(800 << 10);
        assert!(small.as_ptr() != at);
        let again = pool.take((1 << 20) - 10);
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty() && again.capacity() >= (1 << 20) - 10);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn size_classes_waste_a_quarter_at_most() {
        for size in (POOLED_FRAME_BYTES_MIN..8 << 20).step_by(4093) {
            let class = class_of(size);
            assert!(class >= size && class - size <= size / 4, "{size} -> {class}");
            assert_eq!(class_of(class), class, "{size} -> {class}");
        }
    }

    #[test]
    fn what_a_frame_holds_lives_until_its_last_slice_is_dropped() {
        let pool = Arc::new(FramePool::default());
        for size in [1000, 1 << 20] {
            let held = Arc::new(());
            let mut buffer = pool.take(size);
            buffer.resize(size, 7);
            let frame = FramePool::freeze(&pool, buffer, Some(Arc::clone(&held)));
            let batch = frame.slice(10..20);
            drop(frame);
            assert_eq!(Arc::strong_count(&held), 2, "a slice still holds the frame of {size} bytes");
            drop(batch);
            assert_eq!(Arc::strong_count(&held), 1, "released with the last slice of {size} bytes");
        }
    }

    #[test]
    fn small_frames_are_not_pooled_and_the_pool_is_bounded() {
        let pool = Arc::new(FramePool::default());
        drop(FramePool::freeze(&pool, pool.take(1000), None::<()>));
        assert_eq!(pool.idle_bytes(), 0);
        let frames: Vec<Bytes> = (0..(POOL_BYTES_MAX >> 20) + 5)
            .map(|_| FramePool::freeze(&pool, pool.take(1 << 20), None::<()>))
            .collect();
        drop(frames);
        assert!(pool.idle_bytes() <= POOL_BYTES_MAX);
        assert!(pool.idle_bytes() >= POOL_BYTES_MAX - (1 << 20));
    }
}
