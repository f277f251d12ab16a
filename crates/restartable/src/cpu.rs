//! Where the calling thread runs (CPU number, memory-map concurrency id, NUMA node), and how
//! per-CPU data is indexed ([`Index`]: [`Cpu`] or [`MmCid`]).
//!
//! There is one way to read the index: the cursor, one load of the process's config word and
//! one load of the area (thread pointer + offset), then a compare against the number of indices.
//! The compare fails (and the caller takes its cold path) before the process has decided on fast
//! mode, in degraded mode, and on a thread whose area the kernel does not update.

use core::sync::atomic::Ordering::Relaxed;

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
}
impl arch::Field for MmCid {
    const FIELD: usize = abi::OFFSET_MM_CID;
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

/// The calling thread's area and current index in mode `I`, when a fast path may run now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    /// The calling thread's rseq area, as its offset from the thread pointer.
    pub area: isize,
    /// The index read from it (below the number of indices).
    pub index: usize,
}

/// Read the cursor: `None` before the fast mode is published, in degraded mode, on a thread
/// without a usable area, or (in theory) for an index past the number of indices.
#[inline(always)]
pub(crate) fn cursor<I: Index>() -> Option<Cursor> {
    if !arch::HAS_RSEQ {
        return None;
    }
    let cfg = thread::CFG[I::MODE].load(Relaxed);
    let area = (cfg as i64 >> 32) as isize;
    // SAFETY: once the config is published, `area` is the offset of the calling thread's area
    // (glibc's, or our static-TLS one, registered or still reading -1). Before that the offset is
    // 0: the thread control block, whose first 32 bytes are always readable; the value is then
    // compared against 0 indices and discarded.
    let index = unsafe { arch::read_tp_u32(area + I::FIELD as isize) };
    if I::MM_CID {
        // `mm_cid` alone does not say whether the kernel updates this area (an unregistered
        // area, or one whose registration failed, may hold any stale value there); `cpu_id` does:
        // it reads -1 or -2 until the kernel writes it.
        // SAFETY: as above.
        let cpu = unsafe { arch::read_tp_u32(area + abi::OFFSET_CPU_ID as isize) };
        if cpu >= cfg as u32 {
            return None;
        }
    }
    (index < cfg as u32).then_some(Cursor { area, index: index as usize })
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
    match cursor::<Cpu>() {
        Some(c) => c.index,
        None => current_cpu_cold(),
    }
}

#[cold]
fn current_cpu_cold() -> usize {
    let _ = thread::ready();
    match cursor::<Cpu>() {
        Some(c) => c.index,
        None => thread::cpu_now(),
    }
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
    match cursor::<MmCid>() {
        Some(c) => Some(c.index),
        None => area_field(abi::OFFSET_MM_CID),
    }
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
