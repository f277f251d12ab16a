//! Delay injection (the `inject` feature): spin loops compiled into every critical section at
//! numbered points, and two more in the slow path, so that tests and `restartable stress` can
//! widen every race window. Normal builds contain none of this.
//!
//! ```
//! restartable::inject::set(5, 10_000); // spin 10,000 times just before every commit
//! restartable::inject::clear();
//! ```

use core::sync::atomic::{AtomicU64, Ordering};

/// Number of injection point slots (point 0 is unused; points are 1..=8).
pub const POINTS: usize = 9;

/// Spin counts per point, read by the assembly (index = point number).
pub(crate) static LOOPS: [AtomicU64; POINTS] = [const { AtomicU64::new(0) }; POINTS];

/// Where each point sits.
pub const DESCRIPTIONS: [&str; POINTS] = [
    "0: unused (no delay)",
    "1: after publishing the descriptor, before the CPU check",
    "2: after the CPU check, before the guard check",
    "3: after the guard check, before the first load",
    "4: between the op's loads (or compare and stores)",
    "5: just before the commit store",
    "6: in the abort handler",
    "7: slow path: after the guard is acquired, before the fence",
    "8: slow path: while the CPU is stopped, before the operation",
];

/// Spin for point `k`'s count (the Rust-side points 7 and 8).
#[inline]
pub(crate) fn delay(k: usize) {
    let n = LOOPS[k].load(Ordering::Relaxed);
    for _ in 0..n {
        core::hint::spin_loop();
    }
}

/// Set the spin count of point `k` (1..=8; others are ignored) for every thread.
pub fn set(k: usize, loops: u64) {
    if let Some(l) = LOOPS.get(k).filter(|_| k > 0) {
        l.store(loops, Ordering::Relaxed);
    }
}

/// Reset every point to 0.
pub fn clear() {
    for l in &LOOPS {
        l.store(0, Ordering::Relaxed);
    }
}
