//! Per-CPU guard words: the switch that stops one CPU's fast paths.
//!
//! Every critical section reads the guard word of the CPU (or mm_cid) it indexes, right after
//! checking that it still runs there; a non-zero word makes it leave with `Stopped`.

use core::sync::atomic::AtomicU32;

/// The largest number of CPUs (or concurrency ids) the guard array covers: the kernel's
/// `NR_CPUS` limit on x86_64 (`CONFIG_MAXSMP`). The array lives in `.bss`, so untouched pages
/// cost nothing.
pub const MAX_CPUS: usize = 8192;

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
