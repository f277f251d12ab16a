//! The driver: the fast path while it can, the slow path when it must.
//!
//! [`run`] calls a fast-path closure (one critical section) with the current index and retries
//! it on [`Outcome::Aborted`]. After [`max_aborts`] consecutive aborts (a debugger
//! single-stepping, a signal storm), or at once on [`Outcome::Stopped`] (the index is stopped by
//! someone else, the thread has no rseq area, or the process is in degraded mode), it runs the
//! slow-path closure instead, with the current index stopped through the guard
//! ([`guard::stop`]). Every operation therefore completes, in every environment. The collections
//! use the same driver, with their own guard words and their spare index (see
//! [`guard`](crate::guard#the-rules-that-keep-the-slow-path-safe)).
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

use crossbeam_utils::CachePadded;

use crate::arch::{self, At, Outcome};
use crate::cpu::{self, Index};
use crate::guard::{self, CpuStop, GuardError};
use crate::percpu::Slots;
use crate::thread;

/// The default number of consecutive aborts before the slow path.
pub const DEFAULT_MAX_ABORTS: u32 = 64;

static MAX_ABORTS: AtomicU32 = AtomicU32::new(DEFAULT_MAX_ABORTS);
static ABORTS: AtomicU64 = AtomicU64::new(0);
/// Operations completed off the fast path, striped by thread so that degraded mode (where every
/// operation counts here) does not share one cache line between CPUs.
static SLOW_PATH_USES: [CachePadded<AtomicU64>; 16] = [const { CachePadded::new(AtomicU64::new(0)) }; 16];

/// The number of consecutive aborts after which [`run`] takes the slow path.
pub fn max_aborts() -> u32 {
    MAX_ABORTS.load(Relaxed)
}

/// Set the abort limit for the whole process (at least 1; `u32::MAX` effectively disables the
/// fallback, which only a test demonstrating why it exists should do).
pub fn set_max_aborts(n: u32) {
    MAX_ABORTS.store(n.max(1), Relaxed);
}

/// How many operations this process completed off the fast path: under a guard or on a spare
/// index. (In degraded mode the collections' operations are not counted here: a counter's add
/// is one atomic instruction, and any other operation takes its CPU's guard word as a lock
/// directly, as cheaply as a mutex; every operation of that mode is off the fast path, as
/// [`mode`](crate::mode) says. The raw ops' driver, [`run`], counts in every mode.)
pub fn slow_path_uses() -> u64 {
    SLOW_PATH_USES.iter().map(|c| c.load(Relaxed)).sum()
}

/// How many critical sections of the driver the kernel aborted in this process.
pub fn aborts() -> u64 {
    ABORTS.load(Relaxed)
}

fn count_slow_path() {
    SLOW_PATH_USES[(arch::thread_block() as usize >> 7) % SLOW_PATH_USES.len()].fetch_add(1, Relaxed);
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

/// What the cold path decided.
enum Choice {
    /// The thread just got a usable area: try the fast path again.
    Retry,
    /// Stop this index through its guard.
    Stop(usize),
    /// No fast path runs in this process: this index, without a guard, for an operation that
    /// is all atomic.
    Degraded(usize),
    /// This thread may not wait for any guard (it holds one, or it is inside its own first use).
    NoWait(usize),
}

/// One attempt of the fast path: `Ok` when it committed or its compare failed, else `Err` with
/// the cursor's area when it aborted (`None` when it was stopped or could not run).
#[inline(always)]
fn fast_once<I: Index>(fast: &mut impl FnMut(cpu::Cursor) -> Outcome) -> Result<Outcome, Option<isize>> {
    let Some(c) = cpu::cursor::<I>() else { return Err(None) };
    match fast(c) {
        o @ (Outcome::Committed | Outcome::CompareFailed) => Ok(o),
        Outcome::Stopped => Err(None),
        Outcome::Aborted => Err(Some(c.area)),
    }
}

/// The fast path after a first attempt that did not finish: retried after each abort, up to
/// [`max_aborts`] in a row. `Err` with the number of aborts when the slow path must run.
fn fast_retries<I: Index>(first: Option<isize>, mut fast: impl FnMut(cpu::Cursor) -> Outcome) -> Result<Outcome, u32> {
    let Some(area) = first else { return Err(0) };
    let Some(mut aborts) = aborted(area, 0) else { return Err(0) };
    loop {
        match fast_once::<I>(&mut fast) {
            Ok(o) => return Ok(o),
            Err(None) => return Err(aborts),
            Err(Some(area)) => match aborted(area, aborts) {
                Some(n) => aborts = n,
                None => return Err(aborts),
            },
        }
    }
}

/// After an abort: the new count of aborts in a row, or `None` to stop retrying the fast path:
/// at once when the area is not one the kernel updates (the decoy before fast mode or in degraded
/// mode, an unregistered thread: that abort was no preemption), else after [`max_aborts`].
#[cold]
fn aborted(area: isize, aborts: u32) -> Option<u32> {
    if !thread::area_registered(area) {
        return None;
    }
    // Counted as they happen (aborts are rare), so a stuck thread can be observed.
    ABORTS.fetch_add(1, Relaxed);
    let n = aborts + 1;
    (n < max_aborts()).then_some(n)
}

/// The index a slow path works on: the thread's current one, in range.
fn current_index<I: Index>() -> usize {
    match I::current() {
        Some(i) if i < thread::limit() => i,
        _ => thread::index_now(),
    }
}

#[cold]
#[inline(never)]
fn choose<I: Index>(aborts: u32, retried: bool, lockfree_degraded: bool) -> Choice {
    let mode = match thread::ready() {
        thread::Ready::Done(mode) => mode,
        thread::Ready::Nested => return Choice::NoWait(current_index::<I>()),
    };
    if guard::held() > 0 {
        return Choice::NoWait(current_index::<I>());
    }
    if mode.is_fast() && !retried && aborts == 0 && cpu::cursor::<I>().is_some_and(|c| thread::area_registered(c.area))
    {
        return Choice::Retry;
    }
    let index = if mode.is_fast() { current_index::<I>() } else { thread::degraded_index() };
    if !mode.is_fast() && lockfree_degraded { Choice::Degraded(index) } else { Choice::Stop(index) }
}

/// Run an operation: `fast(index)` until it commits or its compare fails, else `slow(&stop)`
/// with the current index stopped (in the process-wide guard array).
///
/// `fast` must be one critical section on `index` (an op from [`ops`](crate::ops)), and `slow`
/// the same operation done with atomic accesses on `stop.index()`'s data (for example an
/// [`OpVec`](crate::opv::OpVec) run with `run_stopped`). `stop.index()` is always below
/// [`guard::limit`]; it is the thread's current index when that is in range.
///
/// If the membarrier fence fails after the process chose fast mode (possible only if a seccomp
/// filter installed later forbids it), the slow path cannot be entered safely: the driver then
/// yields and goes back to the fast path, which completes unless it is aborted forever. A call
/// made while the thread holds a guard (from a signal handler that interrupted a slow path, or
/// while holding a [`guard::Stop`]) never waits for a guard: it tries every index in turn.
#[inline]
pub fn run<I: Index, T>(mut fast: impl FnMut(usize) -> Outcome, slow: impl FnOnce(&CpuStop) -> T) -> Path<T> {
    let Some(c) = cpu::cursor::<I>() else { return run_cold::<I, T>(fast, slow, None) };
    match fast(c.index) {
        o @ (Outcome::Committed | Outcome::CompareFailed) => Path::Fast(o),
        Outcome::Stopped => run_cold::<I, T>(fast, slow, None),
        Outcome::Aborted => run_cold::<I, T>(fast, slow, Some(c.area)),
    }
}

#[cold]
#[inline(never)]
fn run_cold<I: Index, T>(
    mut fast: impl FnMut(usize) -> Outcome,
    slow: impl FnOnce(&CpuStop) -> T,
    first: Option<isize>,
) -> Path<T> {
    if thread::degraded() {
        // The process-wide guard as a per-CPU lock, taken directly (as `drive_aborted` does).
        let i = thread::degraded_index();
        if let Some(g) = guard::global(i)
            && let Some(stop) = g.lock_degraded(i)
        {
            let r = slow(&stop);
            drop(stop);
            count_slow_path();
            return Path::Slow(r);
        }
    }
    let mut aborts = match fast_retries::<I>(first, |c| fast(c.index)) {
        Ok(o) => return Path::Fast(o),
        Err(n) => n,
    };
    let mut retried = false;
    loop {
        let (first, tries) = match choose::<I>(aborts, retried, false) {
            Choice::Retry => {
                retried = true;
                match attempt::<I>(&mut |c: cpu::Cursor| fast(c.index)) {
                    Ok(o) => return Path::Fast(o),
                    Err(n) => aborts = n,
                }
                continue;
            }
            Choice::Stop(i) | Choice::Degraded(i) => (i, 1),
            Choice::NoWait(i) => (i, thread::limit()),
        };
        // A thread that holds a guard tries every index; one that may wait waits for its own.
        let tries = match guard::held() {
            0 => tries,
            _ => thread::limit(),
        };
        for k in 0..tries {
            match guard::stop::<I>((first + k) % thread::limit()) {
                Ok(stop) => {
                    let r = slow(&stop);
                    drop(stop);
                    count_slow_path();
                    return Path::Slow(r);
                }
                // (Busy only for a thread that may not wait: try the next index.)
                Err(GuardError::Busy { .. }) => continue,
                Err(_) => break,
            }
        }
        std::thread::yield_now();
        match attempt::<I>(&mut |c: cpu::Cursor| fast(c.index)) {
            Ok(o) => return Path::Fast(o),
            Err(n) => aborts = n,
        }
    }
}

/// The whole fast path (first attempt and retries), from the cold path.
fn attempt<I: Index>(fast: &mut impl FnMut(cpu::Cursor) -> Outcome) -> Result<Outcome, u32> {
    match fast_once::<I>(fast) {
        Ok(o) => Ok(o),
        Err(first) => fast_retries::<I>(first, fast),
    }
}

/// How a collection's slow path reaches its data.
pub(crate) enum Slow<'a, T> {
    /// The index's guard is held: its fast paths are stopped and no other slow path runs on it.
    Stopped(&'a T, usize),
    /// This thread may not wait for a guard: the structure's spare slot, which no fast path
    /// ever touches. Update it lock-free, or give the operation's "nothing now" answer.
    Spare(&'a T),
    /// No fast path runs in this process: this index's slot, without a guard (for operations
    /// whose every access is an atomic instruction).
    Degraded(&'a T, usize),
}

/// The collections' driver: hands `fast` the current index's value and the section's [`At`]
/// (one cursor read, no bounds check), and `slow` the data as [`Slow`] says. With
/// `lockfree_degraded`, degraded mode passes [`Slow::Degraded`] instead of taking the guard.
///
#[inline(always)]
pub(crate) fn drive<S: Slots, R>(
    pc: &S,
    mut fast: impl FnMut(&S::Value, At) -> Outcome,
    slow: impl FnOnce(Slow<'_, S::Value>) -> R,
    lockfree_degraded: bool,
) -> Path<R> {
    let Some(c) = cpu::cursor::<S::Index>() else {
        // An `MmCid` area the kernel does not update (degraded mode's decoy among them): as
        // after an abort, so that degraded mode takes its lane.
        return drive_aborted(pc, fast, slow, lockfree_degraded, thread::offset(<S::Index as Index>::MODE));
    };
    match fast_on(pc, &mut fast, c) {
        o @ (Outcome::Committed | Outcome::CompareFailed) => Path::Fast(o),
        Outcome::Stopped => drive_cold(pc, fast, slow, lockfree_degraded, None),
        Outcome::Aborted => drive_aborted(pc, fast, slow, lockfree_degraded, c.area),
    }
}

/// [`drive`] for an out-of-line part whose inline attempt has just failed: in degraded mode (where
/// that attempt could never commit) it goes straight to the degraded lane instead of running the
/// section again.
#[inline(always)]
pub(crate) fn drive_again<S: Slots, R>(
    pc: &S,
    fast: impl FnMut(&S::Value, At) -> Outcome,
    slow: impl FnOnce(Slow<'_, S::Value>) -> R,
    lockfree_degraded: bool,
) -> Path<R> {
    if thread::degraded() {
        return drive_aborted(pc, fast, slow, lockfree_degraded, thread::offset(<S::Index as Index>::MODE));
    }
    drive(pc, fast, slow, lockfree_degraded)
}

/// One fast attempt and nothing else (`Stopped` when the thread has no usable area yet): for an
/// operation whose inline part is only its common case, falling back to [`drive`] out of line.
#[inline(always)]
pub(crate) fn one_section<S: Slots>(pc: &S, mut fast: impl FnMut(&S::Value, At) -> Outcome) -> Outcome {
    match cpu::cursor::<S::Index>() {
        Some(c) => fast_on(pc, &mut fast, c),
        None => Outcome::Stopped,
    }
}

/// After the first attempt aborted. In degraded mode (the published area is then the decoy,
/// which is why it aborted) an all-atomic operation goes straight to its slot (the CPU from
/// glibc's area or `rdpid`, one atomic instruction, nothing else), and any other takes its
/// slot's guard as a per-CPU lock at once.
#[cold]
#[inline(never)]
fn drive_aborted<S: Slots, R>(
    pc: &S,
    fast: impl FnMut(&S::Value, At) -> Outcome,
    slow: impl FnOnce(Slow<'_, S::Value>) -> R,
    lockfree_degraded: bool,
    area: isize,
) -> Path<R> {
    if thread::degraded() {
        let i = thread::degraded_index();
        // SAFETY: `i` is below the number of indices.
        let s = unsafe { pc.slot_unchecked(i) };
        if lockfree_degraded {
            return Path::Slow(slow(Slow::Degraded(&s.value, i)));
        }
        // The guard as a per-CPU lock, taken directly: the mode is decided (no lookup), nothing
        // to fence, and (like a mutex) nothing counted. A thread that holds a guard, or finds
        // this one busy, goes the long way (which never waits for a guard it may not wait for).
        if let Some(stop) = s.guard.lock_degraded(i) {
            let r = slow(Slow::Stopped(&s.value, i));
            drop(stop);
            return Path::Slow(r);
        }
    }
    drive_cold(pc, fast, slow, lockfree_degraded, Some(area))
}

/// One critical section of `fast` on the cursor's index of `pc`.
#[inline(always)]
fn fast_on<S: Slots>(pc: &S, fast: &mut impl FnMut(&S::Value, At) -> Outcome, c: cpu::Cursor) -> Outcome {
    // SAFETY: the cursor's index is below the number of indices.
    let s = unsafe { pc.slot_unchecked(c.index) };
    fast(&s.value, At { area: c.area, index: c.index, guard: s.guard.word() })
}

#[cold]
#[inline(never)]
fn drive_cold<S: Slots, R>(
    pc: &S,
    mut fast: impl FnMut(&S::Value, At) -> Outcome,
    slow: impl FnOnce(Slow<'_, S::Value>) -> R,
    lockfree_degraded: bool,
    first: Option<isize>,
) -> Path<R> {
    let mut aborts = match fast_retries::<S::Index>(first, |c| fast_on(pc, &mut fast, c)) {
        Ok(o) => return Path::Fast(o),
        Err(n) => n,
    };
    let mut retried = false;
    let r = loop {
        match choose::<S::Index>(aborts, retried, lockfree_degraded) {
            Choice::Retry => retried = true,
            Choice::NoWait(_) => break slow(Slow::Spare(&pc.spare().value)),
            // SAFETY (both arms): `choose` gives indices below the number of indices.
            Choice::Degraded(i) => break slow(Slow::Degraded(unsafe { &pc.slot_unchecked(i).value }, i)),
            Choice::Stop(i) => {
                let s = unsafe { pc.slot_unchecked(i) };
                match s.guard.stop::<S::Index>(i) {
                    Ok(stop) => {
                        let r = slow(Slow::Stopped(&s.value, i));
                        drop(stop);
                        break r;
                    }
                    Err(GuardError::Busy { .. }) => break slow(Slow::Spare(&pc.spare().value)),
                    // The fence failed (a seccomp filter installed later?): the fast path is the
                    // only safe way forward.
                    Err(_) => std::thread::yield_now(),
                }
            }
        }
        match attempt::<S::Index>(&mut |c| fast_on(pc, &mut fast, c)) {
            Ok(o) => return Path::Fast(o),
            Err(n) => aborts = n,
        }
    };
    count_slow_path();
    Path::Slow(r)
}
