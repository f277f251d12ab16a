//! Where the calling thread runs: CPU number, memory-map concurrency id, NUMA node.

use crate::{abi, sys, thread};

/// The CPU the calling thread runs on (it may move at any moment after this returns).
///
/// Read from the rseq area when the thread has one (a single load), else `sched_getcpu()`.
///
/// ```
/// let cpu = restartable::current_cpu();
/// assert!(cpu < restartable::possible_cpus());
/// ```
#[inline]
pub fn current_cpu() -> usize {
    let area = thread::area();
    if area.is_null() {
        return sys::sched_getcpu();
    }
    // SAFETY: `area` is this thread's live, registered area.
    unsafe { thread::read_u32(area, abi::OFFSET_CPU_ID) as usize }
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
    read_field(abi::OFFSET_MM_CID)
}

/// The NUMA node of the CPU the calling thread runs on, from the rseq area (kernel 6.3+).
/// `None` when the thread has no rseq area or the kernel does not fill `node_id`.
#[inline]
pub fn current_node() -> Option<usize> {
    read_field(abi::OFFSET_NODE_ID)
}

#[inline]
fn read_field(offset: usize) -> Option<usize> {
    let area = thread::area();
    // A thread with an area has read the process facts, so `usable_len_fast` is final.
    if area.is_null() || thread::usable_len_fast() < offset + 4 {
        return None;
    }
    // SAFETY: `area` is this thread's live area, and the kernel keeps `offset + 4` bytes of it.
    Some(unsafe { thread::read_u32(area, offset) } as usize)
}
