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

    /// Number of injection points.
    pub const POINTS: usize = 8;

    /// Spin counts per point, read by the assembly (index = point number).
    pub(crate) static LOOPS: [AtomicU64; POINTS] = [const { AtomicU64::new(0) }; POINTS];

    /// Where each point sits.
    pub const DESCRIPTIONS: [&str; POINTS] = [
        "0: unused",
        "1: after publishing the descriptor, before the CPU check",
        "2: after the CPU check, before the guard check",
        "3: after the guard check, before the first load",
        "4: between the op's loads (or compare and stores)",
        "5: just before the commit store",
        "6: in the abort handler",
        "7: unused",
    ];

    /// Set the spin count of point `k` (1..=6; others are ignored) for every thread.
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
