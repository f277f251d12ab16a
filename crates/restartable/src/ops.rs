//! The op set: per-CPU primitives built on rseq critical sections.
//!
//! Each op runs its pseudo-code as one restartable critical section on the CPU (or concurrency
//! id) given by `index`, and says how it ended with an [`Outcome`]. Nothing here loops: callers
//! retry on [`Outcome::Aborted`] and take the slow path on [`Outcome::Stopped`]
//! ([`retry::run`](crate::retry::run) does both). These ops check the process-wide guard words
//! ([`guard::stop`]); the collections use the same sections with guard words
//! of their own.
//!
//! # Common safety contract
//!
//! Every op is an `unsafe fn` with the same contract:
//!
//! 1. `index` is the value the caller read with [`current_cpu`](crate::current_cpu) (for
//!    [`Cpu`]) or [`current_mm_cid`](crate::current_mm_cid) (for [`MmCid`]) and used to choose the
//!    per-CPU data it passes. The op re-checks it inside the section: if the thread has moved,
//!    the result is [`Outcome::Aborted`] and nothing was stored.
//! 2. Every pointer is non-null, aligned, and valid for the reads and writes the pseudo-code
//!    makes, for the whole call.
//! 3. Every location the op stores to (including the commit) belongs to `index`: other threads
//!    touch it only through ops with the same `index`, through the guard (the slow path), or
//!    with atomic reads. Breaking this loses updates, it does not corrupt memory.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use restartable::ops::{self, Cpu, Outcome};
//!
//! let slots: Vec<AtomicUsize> = (0..restartable::possible_cpus()).map(|_| AtomicUsize::new(0)).collect();
//! loop {
//!     let cpu = restartable::current_cpu();
//!     // SAFETY: `cpu` indexes its own slot, which is only written by ops indexed by `cpu`.
//!     match unsafe { ops::load_add_store::<Cpu>(&slots[cpu], 1, cpu) } {
//!         Outcome::Committed => break,
//!         Outcome::Aborted => continue,                 // preempted or migrated: retry
//!         Outcome::Stopped => { /* take the slow path (rseq unavailable or CPU stopped) */
//!             let _stop = restartable::guard::stop::<Cpu>(cpu).unwrap();
//!             slots[cpu].fetch_add(1, Ordering::SeqCst); break }
//!         Outcome::CompareFailed => unreachable!(),
//!     }
//! }
//! assert_eq!(slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<usize>(), 1);
//! ```

use core::sync::atomic::{AtomicU8, AtomicUsize};

pub use crate::arch::Outcome;
use crate::arch::{self, At, InTable};
pub use crate::cpu::{Cpu, Index, MmCid};
use crate::{guard, thread};

mod sealed {
    pub trait Sealed {}
}

/// The ordering of a commit store: [`Relaxed`] or [`Release`] (everything before the commit,
/// including the op's other stores, is visible to a thread that acquires the committed value).
pub trait Order: sealed::Sealed + 'static {
    /// True for [`Release`].
    const RELEASE: bool;
}
/// A relaxed commit store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relaxed;
/// A release commit store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Release;
impl sealed::Sealed for Relaxed {}
impl sealed::Sealed for Release {}
impl Order for Relaxed {
    const RELEASE: bool = false;
}
impl Order for Release {
    const RELEASE: bool = true;
}

/// Where a raw op on `index` runs: the published area (see [`cpu`](crate::current_cpu)) and the
/// table of process-wide guard words, which the section reads at `index` once it has checked that
/// the thread runs there (`raw!` first turns away an index past
/// [`guard::MAX_CPUS`](crate::guard::MAX_CPUS): no CPU has one).
#[inline(always)]
fn at<I: Index>(index: usize) -> At {
    At { area: thread::offset(I::MODE), index, guard: guard::global_table() }
}

/// The calling thread's index for the next op in mode `I`, as cheaply as it can be read: for
/// [`Cpu`], the area's `cpu_id_start` (always a possible CPU number, also before registration,
/// so it can index a [`possible_cpus`](crate::possible_cpus)-long array unchecked); for
/// [`MmCid`], its `mm_cid` (always below the same bound). It is **not** checked: the op re-checks
/// it inside its section, and ends [`Outcome::Stopped`] when no fast path can run (degraded mode,
/// an unregistered thread). Use [`current_cpu`](crate::current_cpu) for the CPU itself.
///
/// ```
/// use restartable::ops::{self, Cpu};
/// assert!(ops::current_index::<Cpu>() < restartable::possible_cpus());
/// ```
#[inline(always)]
pub fn current_index<I: Index>() -> usize {
    if !crate::arch::HAS_RSEQ {
        return crate::current_cpu() % crate::possible_cpus();
    }
    // SAFETY: `OFFSET` always names a live area of the calling thread.
    unsafe { crate::arch::read_tp_cursor::<I>(thread::offset(I::MODE)) }
}

/// An aborted raw op: `Stopped` when it can never commit here (the process runs no fast path, or
/// the thread's area is not registered even after registering it now), else `Aborted` (retry).
/// (An index past `MAX_CPUS` never gets here: `raw!` turns it away first.)
#[cold]
fn settle<I: Index>() -> Outcome {
    let area = || thread::offset(I::MODE);
    if !thread::area_registered(area()) {
        let _ = thread::ready();
        if !thread::area_registered(area()) {
            return Outcome::Stopped;
        }
    }
    Outcome::Aborted
}

/// Run a raw op's section and settle an abort. In `MmCid` mode an area the kernel does not update
/// may hold any `mm_cid` (the decoy's reads 0), and a section checks only that field, so such an
/// area never gets to run one.
macro_rules! raw {
    ($mode:ty, $index:expr, |$at:ident| $section:expr) => {{
        let $at = at::<$mode>($index);
        if $index >= crate::guard::MAX_CPUS {
            // No CPU has this index. (The section compares its low 32 bits, then reads the guard
            // table at the whole index, so it must not see one this large; nothing to check for an
            // index from `current_index`, which is always below.)
            Outcome::Stopped
        } else if <$mode as Index>::MM_CID && !thread::area_registered($at.area) {
            settle::<$mode>()
        } else {
            match $section {
                Outcome::Aborted => settle::<$mode>(),
                o => o,
            }
        }
    }};
}

/// `if *v != expect { CompareFailed }; *v = new` — a per-CPU compare-and-store (spin locks,
/// CAS-like updates).
///
/// # Safety
/// The [common contract](self#common-safety-contract).
#[inline(always)]
pub unsafe fn load_cbne_store<I: Index>(v: *const AtomicUsize, expect: usize, new: usize, index: usize) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard.
        unsafe { arch::cbne_store::<InTable<I>>(at, (*v).as_ptr(), expect, new) }
    })
}

/// `*v += count` (wrapping) — per-CPU counters. The commit is one memory-destination `add`.
///
/// # Safety
/// The [common contract](self#common-safety-contract).
#[inline(always)]
pub unsafe fn load_add_store<I: Index>(v: *const AtomicUsize, count: usize, index: usize) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard.
        unsafe { arch::add::<InTable<I>>(at, (*v).as_ptr(), count) }
    })
}

/// `r = *v; if r == expectnot { CompareFailed }; *out = r; *v = *(r + off)` — list pop: `v` is
/// the head, `off` the offset of the next pointer in a node, `expectnot` the empty marker.
///
/// # Safety
/// The [common contract](self#common-safety-contract); in addition, whenever `*v != expectnot`,
/// `*v + off` is readable (the node cannot be freed while it is on the list), and `out` is
/// writable (it is written before the commit, also when the section then aborts).
#[inline(always)]
pub unsafe fn load_cbeq_store_add_load_store<I: Index>(
    v: *const AtomicUsize,
    expectnot: usize,
    off: usize,
    out: *mut usize,
    index: usize,
) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard.
        unsafe { arch::cbeq_pop::<InTable<I>>(at, (*v).as_ptr(), expectnot, off, out) }
    })
}

/// `r = *(*p + off); *r += count` — a counter reached through a pointer (for example a per-CPU
/// array that can be swapped with [`OpVec`](crate::opv::OpVec) while readers run).
///
/// # Safety
/// The [common contract](self#common-safety-contract); `*p + off` holds a pointer to an
/// `AtomicUsize` that belongs to `index`.
#[inline(always)]
pub unsafe fn load_add_load_load_add_store<I: Index>(
    p: *const AtomicUsize,
    off: usize,
    count: usize,
    index: usize,
) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard.
        unsafe { arch::add_indirect::<InTable<I>>(at, (*p).as_ptr(), off, count) }
    })
}

/// `if *v != expect || *v2 != expect2 { CompareFailed }; *v = new` — a store checked against
/// two words.
///
/// # Safety
/// The [common contract](self#common-safety-contract).
#[inline(always)]
pub unsafe fn load_cbne_load_cbne_store<I: Index>(
    v: *const AtomicUsize,
    expect: usize,
    v2: *const AtomicUsize,
    expect2: usize,
    new: usize,
    index: usize,
) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard.
        unsafe { arch::cbne_cbne_store::<InTable<I>>(at, (*v).as_ptr(), expect, (*v2).as_ptr(), expect2, new) }
    })
}

/// `if *v != expect { CompareFailed }; *v2 = new2; *v = new` — buffer push: `v2` is the slot,
/// `v` the count; with [`Release`], a reader that acquires `*v` sees `*v2`.
///
/// # Safety
/// The [common contract](self#common-safety-contract).
#[inline(always)]
pub unsafe fn load_cbne_store_store<I: Index, O: Order>(
    v: *const AtomicUsize,
    expect: usize,
    v2: *const AtomicUsize,
    new2: usize,
    new: usize,
    index: usize,
) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard. (On x86_64
        // every store is a release store.)
        unsafe { arch::cbne_store_store::<InTable<I>>(at, (*v).as_ptr(), expect, (*v2).as_ptr(), new2, new) }
    })
}

/// `if *v != expect { CompareFailed }; copy len bytes src -> dst; *v = new` — memcpy buffer
/// push and pop.
///
/// # Safety
/// The [common contract](self#common-safety-contract); `dst` and `src` do not overlap, and `src`
/// is not written concurrently.
#[inline(always)]
pub unsafe fn load_cbne_memcpy_store<I: Index, O: Order>(
    v: *const AtomicUsize,
    expect: usize,
    dst: *const AtomicU8,
    src: *const u8,
    len: usize,
    new: usize,
    index: usize,
) -> Outcome {
    raw!(I, index, |at| {
        // SAFETY: the caller's contract; `at` is this thread's area and `index`'s guard.
        unsafe { arch::cbne_memcpy_store::<InTable<I>>(at, (*v).as_ptr(), expect, (*dst).as_ptr(), src, len, new) }
    })
}

/// Benchmark support: `load_add_store::<Cpu>` **without** the guard check, to measure what the
/// check costs side by side. Not part of the API: an unguarded section cannot be stopped, so
/// the slow path is unsound next to it.
#[doc(hidden)]
pub mod bench_only {
    use super::*;

    /// # Safety
    /// As [`load_add_store`], and nothing may ever use the slow path on `v`'s CPU.
    #[inline(always)]
    pub unsafe fn load_add_store_unguarded(v: *const AtomicUsize, count: usize, index: usize) -> Outcome {
        raw!(Cpu, index, |at| {
            // SAFETY: the caller's contract; `at` is this thread's area.
            unsafe { arch::add_unguarded::<Cpu>(at, (*v).as_ptr(), count) }
        })
    }
}

/// Deliberately broken ops (the `inject` feature), for showing that tests and the stress
/// harness can fail. Never use them for anything else.
#[cfg(feature = "inject")]
#[doc(hidden)]
pub mod sabotage {
    use super::*;

    /// A `load_add_store` that commits inside the section and then adds `count` once more
    /// outside it (a second, unprotected commit).
    ///
    /// # Safety
    /// As [`load_add_store`].
    pub unsafe fn load_add_store_commits_twice(v: *const AtomicUsize, count: usize, index: usize) -> Outcome {
        // SAFETY: the caller's contract, as for the real op.
        let o = unsafe { load_add_store::<Cpu>(v, count, index) };
        if o == Outcome::Committed {
            // SAFETY: `v` is valid (the caller's contract); this racy, non-atomic second add is
            // the bug being demonstrated.
            unsafe {
                let p = (*v).as_ptr();
                p.write_volatile(p.read_volatile().wrapping_add(count));
            }
        }
        o
    }
}
