//! The `count-allocations` feature: this binary's global allocator counts every allocation and
//! free with a `restartable::Counter` (so the library's first use, its registration and every
//! thread's first allocation run inside the allocator), and records those made while the calling
//! thread holds one of the library's guards. The library's rule is that none is ever made: each
//! stress test checks it (a broken invariant otherwise), which is how `--matrix quick` runs the
//! whole matrix on an allocator built on the library.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use restartable::Counter;

/// The counting allocator (over the system allocator).
pub struct Counting;

static CALLS: OnceLock<Counter> = OnceLock::new();
static UNDER_GUARD: AtomicU64 = AtomicU64::new(0);

fn note() {
    if restartable::guard::held() > 0 {
        UNDER_GUARD.fetch_add(1, SeqCst);
    }
    CALLS.get_or_init(Counter::new).add(1);
}

// SAFETY: every method forwards to `System` with the caller's arguments; `note` only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and frees made while holding a guard, so far.
pub fn under_guard() -> u64 {
    UNDER_GUARD.load(SeqCst)
}

/// Allocations and frees counted so far.
pub fn calls() -> u64 {
    CALLS.get().map_or(0, Counter::sum)
}
