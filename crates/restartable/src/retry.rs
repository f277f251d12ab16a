//! The retry driver: the fast path while it can, the slow path when it must.
//!
//! [`run`] calls a fast-path closure (one critical section) with the current index and retries
//! it on [`Outcome::Aborted`]. After [`max_aborts`] consecutive aborts (a debugger
//! single-stepping, a signal storm), or at once on [`Outcome::Stopped`] (the CPU is stopped by
//! someone else, the thread has no rseq area, or the process is in degraded mode), it runs the
//! slow-path closure instead, with the current index stopped through the guard
//! ([`guard::stop`]). Every operation therefore completes, in every environment.
//!
//! # Debuggers
//!
//! Single-stepping (`stepi`) through a critical section stops the thread at every instruction,
//! so the kernel restarts the section at every step: the fast path can never commit, and after
//! [`max_aborts`] attempts the operation completes through the slow path (the test
//! `gdb_single_stepping_completes_through_the_slow_path` shows both). With gdb's *displaced
//! stepping* on, the stepped instruction runs out of line, the kernel sees an instruction
//! pointer outside the section and clears `rseq_cs`, so that one step is not protected: inside
//! a debugging session a preemption at that exact step could lose an update. Turn displaced
//! stepping off (`set displaced-stepping off`) when stepping through critical sections.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use restartable::ops::{self, Cpu};
//! use restartable::retry::{self, Path};
//!
//! let slots: Vec<AtomicUsize> = (0..restartable::possible_cpus()).map(|_| AtomicUsize::new(0)).collect();
//! let path = retry::run::<Cpu, _>(
//!     // SAFETY: slot `i` is only written by ops indexed by `i` or under i's guard.
//!     |i| unsafe { ops::load_add_store::<Cpu>(&slots[i], 5, i) },
//!     |stop| { slots[stop.index()].fetch_add(5, Ordering::Relaxed); },
//! );
//! assert!(matches!(path, Path::Fast(_) | Path::Slow(())));
//! assert_eq!(slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<usize>(), 5);
//! ```

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::abi::{self, Rseq};
use crate::guard::{self, CpuStop, GuardError};
use crate::ops::{Index, Outcome};
use crate::thread;

/// The default number of consecutive aborts before the slow path.
pub const DEFAULT_MAX_ABORTS: u32 = 64;

static MAX_ABORTS: AtomicU32 = AtomicU32::new(DEFAULT_MAX_ABORTS);
static SLOW_PATH_USES: AtomicU64 = AtomicU64::new(0);
static ABORTS: AtomicU64 = AtomicU64::new(0);

/// The number of consecutive aborts after which [`run`] takes the slow path.
pub fn max_aborts() -> u32 {
    MAX_ABORTS.load(Relaxed)
}

/// Set the abort limit for the whole process (at least 1; `u32::MAX` effectively disables the
/// fallback, which only a test demonstrating why it exists should do).
pub fn set_max_aborts(n: u32) {
    MAX_ABORTS.store(n.max(1), Relaxed);
}

/// How many operations this process completed through the slow path.
pub fn slow_path_uses() -> u64 {
    SLOW_PATH_USES.load(Relaxed)
}

/// How many critical sections of [`run`] the kernel aborted in this process.
pub fn aborts() -> u64 {
    ABORTS.load(Relaxed)
}

/// Which path completed an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path<T> {
    /// The fast path ended with this outcome ([`Outcome::Committed`] or
    /// [`Outcome::CompareFailed`]).
    Fast(Outcome),
    /// The slow path ran and returned this.
    Slow(T),
}

/// Run an operation: `fast(index)` until it commits or its compare fails, else `slow(&stop)`
/// with the current index stopped.
///
/// `fast` must be one critical section on `index` (an op from [`ops`](crate::ops)), and `slow`
/// the same operation done with atomic accesses on `stop.index()`'s data (for example an
/// [`OpVec`](crate::opv::OpVec) run with `run_stopped`). `stop.index()` is always below
/// [`guard::limit`]; it is the thread's current index when that is in range.
///
/// If the membarrier fence fails after the process chose fast mode (possible only if a seccomp
/// filter installed later forbids it), the slow path cannot be entered safely: the driver then
/// yields and goes back to the fast path, which completes unless it is aborted forever.
#[inline]
pub fn run<I: Index, T>(mut fast: impl FnMut(usize) -> Outcome, slow: impl FnOnce(&CpuStop) -> T) -> Path<T> {
    run_in::<I, T>(|_, index| fast(index), slow)
}

/// The calling thread's area and current index in mode `I`, or `None` (no usable area, or no
/// mm_cid from this kernel): one thread-local load and one load of the area.
#[inline(always)]
fn cursor<I: Index>() -> Option<(*mut Rseq, usize)> {
    let area = thread::area();
    if area.is_null() || (I::MM_CID && thread::usable_len_fast() < abi::OFFSET_MM_CID + 4) {
        return None;
    }
    let offset = if I::MM_CID { abi::OFFSET_MM_CID } else { abi::OFFSET_CPU_ID };
    // SAFETY: `area` is this thread's live area and the kernel keeps the field up to date.
    Some((area, unsafe { thread::read_u32(area, offset) } as usize))
}

/// [`run`] whose fast path also receives the calling thread's rseq area, so that it need not
/// look it up again (the collections' hot path).
#[inline(always)]
pub(crate) fn run_in<I: Index, T>(
    mut fast: impl FnMut(*mut Rseq, usize) -> Outcome,
    slow: impl FnOnce(&CpuStop) -> T,
) -> Path<T> {
    let mut slow = Some(slow);
    loop {
        let mut aborts = 0u32;
        while let Some((area, index)) = cursor::<I>() {
            match fast(area, index) {
                o @ (Outcome::Committed | Outcome::CompareFailed) => return Path::Fast(o),
                Outcome::Stopped => break,
                Outcome::Aborted => {
                    // Counted as they happen (aborts are rare), so a stuck thread can be observed.
                    ABORTS.fetch_add(1, Relaxed);
                    aborts += 1;
                    if aborts >= max_aborts() {
                        break;
                    }
                }
            }
        }
        match stop_current::<I>() {
            Ok(stop) => {
                // `slow` is taken at most once: this arm returns.
                let r = (slow.take().expect("slow path runs once"))(&stop);
                drop(stop);
                SLOW_PATH_USES.fetch_add(1, Relaxed);
                return Path::Slow(r);
            }
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// Stop the calling thread's current index (in range), for a slow path.
#[cold]
#[inline(never)]
fn stop_current<I: Index>() -> Result<CpuStop, GuardError> {
    // In degraded mode (or without mm_cid) `sched_getcpu` picks the index: any index is correct
    // once its guard is held, a nearby one is just faster.
    let index = I::current().unwrap_or_else(crate::current_cpu) % guard::limit();
    guard::stop::<I>(index)
}
