//! The allocator the `spate` binary installs: the system allocator, except that allocations of
//! [`RESERVE_BYTES_MIN`] or more are anonymous mappings made with `MAP_NORESERVE`.
//!
//! Why: the Kafka request decoders (the `kafka-protocol` crate) reserve a vector's capacity from
//! the element count written in the frame before they read any element. A 20-byte frame can
//! claim 2^31 elements, and the system allocator refuses the resulting tens of gigabytes, which
//! aborts the process (an allocation failure is not a panic that can be caught). A
//! `MAP_NORESERVE` mapping only reserves address space: the decoder then fails on the first
//! missing element, the mapping is unmapped, and no memory was ever touched. Real allocations
//! this large are rare in Spate and behave as usual (pages are allocated when written).
//!
//! A program embedding the Kafka listener should install it too:
//! `#[global_allocator] static ALLOC: spate::alloc::ReservingAlloc = spate::alloc::ReservingAlloc;`

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size up are mappings that reserve address space only.
pub const RESERVE_BYTES_MIN: usize = 1 << 30;

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReservingAlloc;

const PAGE: usize = 4096;

fn reserved(layout: Layout) -> bool {
    layout.size() >= RESERVE_BYTES_MIN && layout.align() <= PAGE
}

// SAFETY: every method forwards to `System` except for large layouts, which are served by
// mmap (page-aligned, zeroed, at least `size` bytes) and released by munmap of the same size;
// `reserved` depends only on the layout, so dealloc and realloc recognise what alloc made.
unsafe impl GlobalAlloc for ReservingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if reserved(layout) {
            return map(layout.size());
        }
        // SAFETY: the caller upholds `alloc`'s contract, which is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if reserved(layout) {
            // Fresh anonymous mappings are zeroed.
            return map(layout.size());
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if reserved(layout) {
            // SAFETY: `ptr` came from `map(layout.size())` (same layout, see above).
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !reserved(layout) && !reserved(new_layout) {
            // SAFETY: both sides are System's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if reserved(layout) && reserved(new_layout) {
            // Move the mapping rather than copy its pages (which would touch them all).
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `map`.
            let p = unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
            return if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() };
        }
        // SAFETY: the new block is valid for `new_layout`; the copy covers the smaller size of
        // two live, distinct blocks; the old one is freed with its own layout.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservations_succeed_without_memory_and_small_ones_are_the_systems() {
        let a = ReservingAlloc;
        // 64 GiB: more than this machine has; only address space is taken.
        let big = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: the layout is non-zero; the block is written within bounds and freed with
        // the layout it was made with.
        unsafe {
            let p = a.alloc(big);
            assert!(!p.is_null());
            *p = 7;
            *p.add((64 << 30) - 1) = 9;
            assert_eq!(*p, 7);
            let grown = a.realloc(p, big, (64 << 30) + 4096);
            assert_eq!(*grown, 7);
            a.dealloc(grown, Layout::from_size_align((64 << 30) + 4096, 8).unwrap());
            let small = Layout::from_size_align(100, 8).unwrap();
            let q = a.alloc(small);
            *q = 1;
            let q = a.realloc(q, small, RESERVE_BYTES_MIN);
            assert_eq!(*q, 1, "contents survive crossing into a reservation");
            let q = a.realloc(q, Layout::from_size_align(RESERVE_BYTES_MIN, 8).unwrap(), 10);
            assert_eq!(*q, 1, "and back");
            a.dealloc(q, Layout::from_size_align(10, 8).unwrap());
        }
    }
}
