//! Per-CPU guard words and the membarrier rseq fence: how one CPU's fast paths are stopped.
//!
//! Every critical section reads the guard word of the CPU (or mm_cid) it indexes, right after
//! checking that it still runs there; a non-zero word makes it leave with
//! [`Outcome::Stopped`](crate::ops::Outcome::Stopped). The slow path for index `c`
//! (DESIGN.md section 4) is:
//!
//! 1. acquire `guard[c]` (compare-exchange 0 → owner, bounded spinning, then a futex wait);
//! 2. fence: `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, c)` restarts any section running on
//!    `c` that read the guard as zero before step 1 (all CPUs for [`MmCid`](crate::ops::MmCid));
//! 3. operate with plain atomic accesses;
//! 4. release `guard[c]` (store-release 0, wake a waiter).
//!
//! [`stop`] does steps 1-2 and returns a [`CpuStop`] whose drop is step 4. In
//! [degraded mode](crate::Mode) no fast path runs, so step 2 is skipped and the guard is a plain
//! per-CPU lock.

use core::sync::atomic::{AtomicU32, Ordering};
use std::fmt;
use std::io;

use crate::ops::Index;
use crate::{sys, thread};

/// The largest number of CPUs (or concurrency ids) the guard array covers: the kernel's
/// `NR_CPUS` limit on x86_64 (`CONFIG_MAXSMP`). The array lives in `.bss`, so untouched pages
/// cost nothing.
pub const MAX_CPUS: usize = 8192;

/// Set in a guard word when a thread may be sleeping on it.
const WAITERS: u32 = 1 << 31;
/// Compare-exchange attempts before sleeping on the futex.
const SPINS: u32 = 200;

/// One guard word, alone on a 128-byte line (two cache lines: the adjacent-line prefetcher
/// pairs them on x86_64).
#[repr(C, align(128))]
pub(crate) struct Padded(pub(crate) AtomicU32);

pub(crate) static GUARDS: [Padded; MAX_CPUS] = [const { Padded(AtomicU32::new(0)) }; MAX_CPUS];

/// The guard word of `index`, or `None` past [`MAX_CPUS`].
#[inline(always)]
pub(crate) fn word(index: usize) -> Option<&'static AtomicU32> {
    GUARDS.get(index).map(|p| &p.0)
}

/// The guard word of `index`, without a bounds check.
///
/// # Safety
/// `index < MAX_CPUS` (for example: it indexes a [`PerCpu`](crate::PerCpu), whose length is at
/// most [`limit`]).
#[inline(always)]
pub(crate) unsafe fn word_unchecked(index: usize) -> &'static AtomicU32 {
    // SAFETY: the caller's contract.
    unsafe { &GUARDS.get_unchecked(index).0 }
}

/// The number of guard words in use: [`possible_cpus`](crate::possible_cpus), capped at
/// [`MAX_CPUS`]. Valid indices are below it.
pub fn limit() -> usize {
    sys::possible_cpus().min(MAX_CPUS)
}

/// Why a CPU could not be stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum GuardError {
    /// The index is not below [`limit`].
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of valid indices.
        limit: usize,
    },
    /// The membarrier rseq fence failed (the guard was released again).
    Fence(io::Error),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::OutOfRange { index, limit } => {
                write!(f, "CPU index {index} is out of range (this machine has {limit} possible CPUs)")
            }
            GuardError::Fence(e) => write!(f, "membarrier rseq fence failed: {e}"),
        }
    }
}

impl std::error::Error for GuardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuardError::Fence(e) => Some(e),
            GuardError::OutOfRange { .. } => None,
        }
    }
}

/// A stopped CPU (or mm_cid): while this value lives, no critical section indexed by it can
/// commit, and no other slow path can operate on it. Dropping it restarts the CPU.
#[must_use = "dropping a CpuStop restarts the CPU at once"]
#[derive(Debug)]
pub struct CpuStop {
    index: usize,
}

impl CpuStop {
    /// The stopped index.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for CpuStop {
    fn drop(&mut self) {
        release(&GUARDS[self.index].0);
    }
}

/// Stop index `index` of mode `I` (steps 1 and 2 above): wait for its guard, set it, and fence
/// so that every section on it that could still commit has been restarted.
///
/// ```
/// use restartable::ops::Cpu;
/// let stop = restartable::guard::stop::<Cpu>(0).unwrap();
/// // ... operate on CPU 0's data with atomic accesses ...
/// drop(stop); // CPU 0 runs its fast paths again
/// ```
pub fn stop<I: Index>(index: usize) -> Result<CpuStop, GuardError> {
    let limit = limit();
    if index >= limit {
        return Err(GuardError::OutOfRange { index, limit });
    }
    let w = &GUARDS[index].0;
    acquire(w);
    #[cfg(feature = "inject")]
    crate::arch::inject::delay(7);
    if thread::mode().is_fast() {
        let fenced = if I::MM_CID { fence_all() } else { fence(index) };
        if let Err(e) = fenced {
            release(w);
            return Err(GuardError::Fence(e));
        }
    }
    #[cfg(feature = "inject")]
    crate::arch::inject::delay(8);
    Ok(CpuStop { index })
}

/// The rseq fence on one CPU: when it returns, every critical section of this process that was
/// running on `cpu` has been restarted, and its earlier stores are visible.
pub fn fence(cpu: usize) -> io::Result<()> {
    thread::fence_registered()?;
    sys::membarrier_rseq_cpu(cpu)
}

/// The rseq fence on every CPU running a thread of this process.
pub fn fence_all() -> io::Result<()> {
    thread::fence_registered()?;
    sys::membarrier_rseq_all()
}

/// Whether `index`'s guard word is set now (a snapshot, for tests and reports).
pub fn is_stopped(index: usize) -> bool {
    word(index).is_some_and(|w| w.load(Ordering::Relaxed) != 0)
}

fn token() -> u32 {
    std::thread_local! {
        static TOKEN: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    }
    // The thread id, read once per thread (a system call). A thread id is below 2^22
    // (PID_MAX_LIMIT), so it never collides with WAITERS, and never 0.
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set((rustix::thread::gettid().as_raw_nonzero().get() as u32 & !WAITERS).max(1));
        }
        t.get()
    })
}

fn acquire(w: &AtomicU32) {
    let me = token();
    for _ in 0..SPINS {
        if w.load(Ordering::Relaxed) == 0 && w.compare_exchange_weak(0, me, Ordering::SeqCst, Ordering::Relaxed).is_ok()
        {
            return;
        }
        core::hint::spin_loop();
    }
    loop {
        let old = w.fetch_or(WAITERS, Ordering::SeqCst);
        if old == 0 {
            // Ours; keep WAITERS set, since others may sleep behind us.
            w.store(me | WAITERS, Ordering::Relaxed);
            return;
        }
        // EAGAIN (the word changed) and EINTR both just mean: look again.
        let _ = rustix::thread::futex::wait(w, rustix::thread::futex::Flags::PRIVATE, old | WAITERS, None);
    }
}

fn release(w: &AtomicU32) {
    if w.swap(0, Ordering::Release) & WAITERS != 0 {
        let _ = rustix::thread::futex::wake(w, rustix::thread::futex::Flags::PRIVATE, 1);
    }
}
