//! Where the calling thread runs (CPU number, memory-map concurrency id, NUMA node), and how
//! per-CPU data is indexed ([`Index`]: [`Cpu`] or [`MmCid`]).
//!
//! There is one way to read the index: the cursor, one load of the process's config word and
//! one load of the area (thread pointer + offset), then a compare against the number of indices.
//! The compare fails (and the caller takes its cold path) before the process has decided on fast
//! mode, in degraded mode, and on a thread whose area the kernel does not update.

use crate::{abi, arch, thread};

mod sealed {
    pub trait Sealed {}
}

/// How per-CPU data is indexed: by CPU number ([`Cpu`]) or by memory-map concurrency id
/// ([`MmCid`]). A compile-time choice.
pub trait Index: sealed::Sealed + arch::Field + Send + Sync + 'static {
    /// True for [`MmCid`].
    const MM_CID: bool;
    /// A name for reports (`"cpu"` / `"mm_cid"`).
    const NAME: &'static str;
    /// The index mode's slot in the process config.
    #[doc(hidden)]
    const MODE: usize;

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

impl arch::Field for Cpu {
    const FIELD: usize = abi::OFFSET_CPU_ID;
    const CURSOR: usize = abi::OFFSET_CPU_ID_START;
}
impl arch::Field for MmCid {
    const FIELD: usize = abi::OFFSET_MM_CID;
    const CURSOR: usize = abi::OFFSET_MM_CID;
}

impl Index for Cpu {
    const MM_CID: bool = false;
    const NAME: &'static str = "cpu";
    const MODE: usize = 0;
    #[inline]
    fn current() -> Option<usize> {
        Some(current_cpu())
    }
}

impl Index for MmCid {
    const MM_CID: bool = true;
    const NAME: &'static str = "mm_cid";
    const MODE: usize = 1;
    #[inline]
    fn current() -> Option<usize> {
        current_mm_cid()
    }
}

/// The calling thread's area and current index in mode `I`, for one critical section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    /// The calling thread's rseq area (or the decoy), as its offset from the thread pointer.
    pub area: isize,
    /// The index read from it: always below [`thread::limit`] (see [`cursor`]).
    pub index: usize,
}

/// Read the cursor: the published area offset and the index in it. No check is needed for the
/// hot path: the index is always a valid one (below [`thread::limit`], the number of per-CPU
/// ranges), because the kernel keeps `cpu_id_start` and `mm_cid` below its `nr_cpu_ids`, which is
/// the number of possible CPUs, and they read 0 in an area it does not update; whether the thread
/// really runs there is the critical section's `cpu_id` compare. `None` only in `MmCid` mode on a
/// thread whose area the kernel does not update (an `mm_cid` there may be stale).
#[inline(always)]
pub(crate) fn cursor<I: Index>() -> Option<Cursor> {
    if !arch::HAS_RSEQ {
        return None;
    }
    let area = thread::offset(I::MODE);
    // SAFETY: `OFFSET` always names a live area of the calling thread (the decoy, glibc's or ours).
    // (A read the compiler may merge with an earlier one: a cursor is read just before the
    // section that checks it, so a merged read is at worst a retry.)
    let index = unsafe { arch::read_tp_cursor::<I>(area) };
    if I::MM_CID && !thread::area_registered(area) {
        return None;
    }
    Some(Cursor { area, index })
}

/// The CPU the calling thread runs on (it may move at any moment after this returns).
///
/// Read from the rseq area when the thread has one (a single load), else with `rdpid` where the
/// CPU has it, else `sched_getcpu()`.
///
/// ```
/// let cpu = restartable::current_cpu();
/// assert!(cpu < restartable::possible_cpus());
/// ```
#[inline]
pub fn current_cpu() -> usize {
    match registered_cpu() {
        Some(cpu) => cpu,
        None => current_cpu_cold(),
    }
}

/// `cpu_id` of the published area, when the kernel updates it.
#[inline(always)]
fn registered_cpu() -> Option<usize> {
    if !arch::HAS_RSEQ {
        return None;
    }
    let area = thread::offset(0);
    // SAFETY: `OFFSET` always names a live area of the calling thread.
    let cpu = unsafe { arch::read_tp_u32::<{ abi::OFFSET_CPU_ID }>(area) };
    ((cpu as i32) >= 0).then_some(cpu as usize)
}

#[cold]
fn current_cpu_cold() -> usize {
    let _ = thread::ready();
    registered_cpu().unwrap_or_else(thread::cpu_now)
}

/// The calling thread's memory-map concurrency id: a small number, below both the thread count
/// and the CPU count, unique among the threads of the process running at this instant (kernel
/// 6.3+). `None` when the thread has no rseq area or the kernel does not fill `mm_cid`.
///
/// ```
/// if let Some(cid) = restartable::current_mm_cid() {
///     assert!(cid < restartable::possible_cpus());
/// }
/// ```
#[inline]
pub fn current_mm_cid() -> Option<usize> {
    if arch::HAS_RSEQ {
        // The published area is the decoy (cpu_id -1, so it is not registered) until mm_cid
        // indexing is in use: a registered area here is a real one.
        let area = thread::offset(MmCid::MODE);
        if thread::area_registered(area) {
            // SAFETY: `OFFSET` always names a live area of the calling thread. (A read of its
            // own, never merged with another: a caller may wait for the value to change.)
            return Some(unsafe { arch::read_tp_u32::<{ abi::OFFSET_MM_CID }>(area) } as usize);
        }
    }
    area_field(abi::OFFSET_MM_CID)
}

/// The NUMA node of the CPU the calling thread runs on, from the rseq area (kernel 6.3+).
/// `None` when the thread has no rseq area or the kernel does not fill `node_id`.
#[inline]
pub fn current_node() -> Option<usize> {
    area_field(abi::OFFSET_NODE_ID)
}

/// A field of the calling thread's area, registering it first if needed.
#[cold]
fn area_field(offset: usize) -> Option<usize> {
    let _ = thread::ready();
    if thread::usable_len() < offset + 4 {
        return None;
    }
    let area = thread::thread_area()?;
    // SAFETY: `area` is this thread's live area, and the kernel keeps `offset + 4` bytes of it.
    Some(unsafe { thread::read_u32(area, offset) } as usize)
}
