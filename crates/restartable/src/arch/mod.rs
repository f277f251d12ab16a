//! Architecture-specific code: the critical sections of the op set and the thread pointer.
//!
//! Everything the rest of the crate needs from an architecture goes through this module; adding
//! aarch64 means adding `aarch64.rs` with the same functions.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("restartable supports x86_64 only for now (aarch64 is planned)");

/// How a critical section ended. `ops::Outcome` mirrors it one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    Committed = 0,
    CompareFailed = 1,
    Aborted = 2,
    Stopped = 3,
}

/// Delay injection (the `inject` feature): spin-loop counts for the numbered points compiled
/// into every critical section. Absent from normal builds.
#[cfg(feature = "inject")]
pub mod inject {
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

    /// A deliberately broken `load_add_store` for showing that tests and the stress harness
    /// can fail: it commits inside the section and then adds `count` once more outside it (a
    /// second, unprotected commit). Never use it for anything else.
    ///
    /// # Safety
    /// As [`ops::load_add_store`](crate::ops::load_add_store).
    #[doc(hidden)]
    pub unsafe fn broken_load_add_store_commits_twice(
        v: *const core::sync::atomic::AtomicUsize,
        count: usize,
        index: usize,
    ) -> crate::ops::Outcome {
        // SAFETY: the caller's contract, as for the real op.
        let o = unsafe { crate::ops::load_add_store::<crate::ops::Cpu>(v, count, index) };
        if o == crate::ops::Outcome::Committed {
            // SAFETY: `v` is valid (the caller's contract); this racy, non-atomic second add is
            // the bug being demonstrated.
            unsafe {
                let p = (*v).as_ptr();
                p.write_volatile(p.read_volatile().wrapping_add(count));
            }
        }
        o
    }

    /// Set the spin count of point `k` (1..=8; others are ignored) for every thread.
    pub fn set(k: usize, loops: u64) {
        if let Some(l) = LOOPS.get(k) {
            l.store(loops, Ordering::Relaxed);
        }
    }

    /// Reset every point to 0.
    pub fn clear() {
        for l in &LOOPS {
            l.store(0, Ordering::Relaxed);
        }
    }
}
