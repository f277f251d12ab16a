//! The op set: per-CPU primitives built on rseq critical sections.
//!
//! Each op runs its pseudo-code as one restartable critical section on the CPU (or concurrency
//! id) given by `index`, and says how it ended with an [`Outcome`]. Nothing here loops: callers
//! retry on [`Outcome::Aborted`] and take the slow path on [`Outcome::Stopped`].
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
//!             slots[cpu].fetch_add(1, Ordering::SeqCst); break }
//!         Outcome::CompareFailed => unreachable!(),
//!     }
//! }
//! assert_eq!(slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<usize>(), 1);
//! ```

use core::sync::atomic::{AtomicU8, AtomicUsize};

use crate::arch::{self, Exit};
use crate::{guard, thread};

/// How an op ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "an op that did not commit must be retried or completed on the slow path"]
#[repr(u8)]
pub enum Outcome {
    /// The commit store happened: the op took effect exactly once.
    Committed = 0,
    /// The op's own comparison failed; nothing was stored (but `out` for
    /// [`load_cbeq_store_add_load_store`] may hold a value).
    CompareFailed = 1,
    /// The kernel restarted the section (preemption, migration, signal) or the thread no longer
    /// runs on `index`: nothing was committed, retry.
    Aborted = 2,
    /// The guard word of `index` is set (another thread is operating on that CPU through the
    /// slow path), or this thread has no usable rseq area: nothing was stored; take the slow path.
    Stopped = 3,
}

impl From<Exit> for Outcome {
    #[inline(always)]
    fn from(e: Exit) -> Self {
        match e {
            Exit::Committed => Outcome::Committed,
            Exit::CompareFailed => Outcome::CompareFailed,
            Exit::Aborted => Outcome::Aborted,
            Exit::Stopped => Outcome::Stopped,
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How per-CPU data is indexed: by CPU number ([`Cpu`]) or by memory-map concurrency id
/// ([`MmCid`]). A compile-time choice.
pub trait Index: sealed::Sealed + Send + Sync + 'static {
    /// True for [`MmCid`].
    const MM_CID: bool;
    /// A name for reports (`"cpu"` / `"mm_cid"`).
    const NAME: &'static str;
    /// The calling thread's current index, or `None` when this mode is unavailable.
    fn current() -> Option<usize>;
}

/// Index by CPU number (`rseq.cpu_id`): always available, one slot per possible CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cpu;
/// Index by memory-map concurrency id (`rseq.mm_cid`, kernel 6.3+): ids are dense and few when
/// a process has fewer threads than CPUs, which keeps per-CPU memory compact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MmCid;

impl sealed::Sealed for Cpu {}
impl sealed::Sealed for MmCid {}

impl Index for Cpu {
    const MM_CID: bool = false;
    const NAME: &'static str = "cpu";
    #[inline]
    fn current() -> Option<usize> {
        Some(crate::current_cpu())
    }
}

impl Index for MmCid {
    const MM_CID: bool = true;
    const NAME: &'static str = "mm_cid";
    #[inline]
    fn current() -> Option<usize> {
        crate::current_mm_cid()
    }
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

/// The rseq area and guard word for a section on `index`, or `None` (→ `Stopped`).
#[inline(always)]
fn enter(index: usize) -> Option<(*mut crate::abi::Rseq, *const core::sync::atomic::AtomicU32, u32)> {
    let area = thread::area();
    if area.is_null() {
        return None;
    }
    let g = guard::word(index)?;
    Some((area, g, index as u32))
}

macro_rules! enter_or_stop {
    ($index:expr) => {
        match enter($index) {
            Some(t) => t,
            None => return Outcome::Stopped,
        }
    };
}

/// `if *v != expect { CompareFailed }; *v = new` — a per-CPU compare-and-store (spin locks,
/// CAS-like updates).
///
/// # Safety
/// The [common contract](self#common-safety-contract).
#[inline(always)]
pub unsafe fn load_cbne_store<I: Index>(v: *const AtomicUsize, expect: usize, new: usize, index: usize) -> Outcome {
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe { arch::load_cbne_store(I::MM_CID, area, g, i, (*v).as_ptr(), expect, new) }.into()
}

/// `*v += count` (wrapping) — per-CPU counters.
///
/// # Safety
/// The [common contract](self#common-safety-contract).
#[inline(always)]
pub unsafe fn load_add_store<I: Index>(v: *const AtomicUsize, count: usize, index: usize) -> Outcome {
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe { arch::load_add_store(I::MM_CID, area, g, i, (*v).as_ptr(), count) }.into()
}

/// [`load_add_store`] with the area and guard word already looked up (by
/// [`retry::run_in`](crate::retry) and the collection): the collections' hot path.
///
/// # Safety
/// The [common contract](self#common-safety-contract); `area` is the calling thread's usable
/// area and `guard` is `index`'s guard word.
#[inline(always)]
pub(crate) unsafe fn load_add_store_in<I: Index>(
    area: *mut crate::abi::Rseq,
    guard: &core::sync::atomic::AtomicU32,
    v: &AtomicUsize,
    count: usize,
    index: usize,
) -> Outcome {
    // SAFETY: the caller's contract.
    unsafe { arch::load_add_store(I::MM_CID, area, guard, index as u32, v.as_ptr(), count) }.into()
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
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe { arch::load_cbeq_store_add_load_store(I::MM_CID, area, g, i, (*v).as_ptr(), expectnot, off, out) }.into()
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
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe { arch::load_add_load_load_add_store(I::MM_CID, area, g, i, (*p).as_ptr(), off, count) }.into()
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
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe {
        arch::load_cbne_load_cbne_store(I::MM_CID, area, g, i, (*v).as_ptr(), expect, (*v2).as_ptr(), expect2, new)
    }
    .into()
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
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe {
        arch::load_cbne_store_store(I::MM_CID, O::RELEASE, area, g, i, (*v).as_ptr(), expect, (*v2).as_ptr(), new2, new)
    }
    .into()
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
    let (area, g, i) = enter_or_stop!(index);
    // SAFETY: the caller's contract; `area` and `g` come from `enter`.
    unsafe {
        arch::load_cbne_memcpy_store(
            I::MM_CID,
            O::RELEASE,
            area,
            g,
            i,
            (*v).as_ptr(),
            expect,
            (*dst).as_ptr(),
            src,
            len,
            new,
        )
    }
    .into()
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
        let (area, g, i) = enter_or_stop!(index);
        // SAFETY: the caller's contract; `area` and `g` come from `enter`.
        unsafe { arch::load_add_store_unguarded(area, g, i, (*v).as_ptr(), count) }.into()
    }
}
