//! A counting allocator for the tests that measure what an idle connection
//! holds: live heap bytes, as the allocator was asked for them. A test
//! binary installs it with
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;`
//! and reads [`live`] before and after.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Live heap bytes in this process since it started, when [`Counting`] is
/// its global allocator (0 otherwise).
pub fn live() -> isize {
    LIVE.load(Relaxed)
}

/// The system allocator, counting what it hands out and takes back.
pub struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; the
// counter only adds what it was given and subtracts what it took back.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
