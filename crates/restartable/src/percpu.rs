//! Per-CPU memory: one cache-padded slot per possible CPU (or per mm_cid).

use core::fmt;
use core::marker::PhantomData;

use crossbeam_utils::CachePadded;

use crate::guard;
use crate::ops::{Cpu, Index};

/// One `T` per possible CPU (or per memory-map concurrency id with [`MmCid`](crate::ops::MmCid)),
/// each alone on its own cache line(s): 128 bytes on x86_64, as crossbeam's [`CachePadded`]
/// explains (the adjacent-line prefetcher pulls lines in pairs).
///
/// `PerCpu` only lays the memory out; the collections decide how slots are accessed (rseq ops
/// for the owner CPU, the guard for everyone else).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use restartable::PerCpu;
///
/// let p: PerCpu<AtomicU64> = PerCpu::new(|cpu| AtomicU64::new(cpu as u64));
/// assert_eq!(p.len(), restartable::possible_cpus());
/// assert_eq!(p.get(0).unwrap().load(Ordering::Relaxed), 0);
/// assert!(p.get(p.len()).is_none());
/// ```
pub struct PerCpu<T, I: Index = Cpu> {
    slots: Box<[CachePadded<T>]>,
    _index: PhantomData<I>,
}

impl<T, I: Index> PerCpu<T, I> {
    /// One slot per possible index, each made by `init(index)`.
    pub fn new(mut init: impl FnMut(usize) -> T) -> Self {
        PerCpu { slots: (0..guard::limit()).map(|i| CachePadded::new(init(i))).collect(), _index: PhantomData }
    }

    /// The slot of `index`, or `None` past [`len`](Self::len).
    #[inline]
    pub fn get(&self, index: usize) -> Option<&T> {
        self.slots.get(index).map(|s| &**s)
    }

    /// The number of slots: [`possible_cpus`](crate::possible_cpus) (capped at
    /// [`guard::MAX_CPUS`]). Every index the kernel gives is below it.
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a machine has at least one CPU.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slots with their indices.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, &T)> + '_ {
        self.slots.iter().map(|s| &**s).enumerate()
    }

    /// The slots, mutably (no other thread can hold a reference).
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (usize, &mut T)> + '_ {
        self.slots.iter_mut().map(|s| &mut **s).enumerate()
    }
}

impl<T: Default, I: Index> Default for PerCpu<T, I> {
    fn default() -> Self {
        Self::new(|_| T::default())
    }
}

impl<T: fmt::Debug, I: Index> fmt::Debug for PerCpu<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}
