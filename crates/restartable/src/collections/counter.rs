use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::guard::{self, GuardError};
use crate::ops::{self, Cpu, Index};
use crate::opv::OpVec;
use crate::percpu::PerCpu;
use crate::retry;

/// A per-CPU counter: `add` is a plain load, add and store on the current CPU's slot (no
/// `lock` prefix), `sum` reads every slot, and `take` sums and resets every slot through the
/// guard without losing a concurrent `add`.
///
/// ```
/// use restartable::Counter;
///
/// let hits = Counter::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| for _ in 0..1000 { hits.add(1) });
///     }
/// });
/// assert_eq!(hits.sum(), 4000);
/// assert_eq!(hits.take(), 4000);
/// assert_eq!(hits.sum(), 0);
/// ```
pub struct Counter<I: Index = Cpu> {
    slots: PerCpu<AtomicUsize, I>,
}

impl Counter<Cpu> {
    /// A counter at zero, indexed by CPU. For [`MmCid`](crate::ops::MmCid) indexing use
    /// `Counter::<MmCid>::default()`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<I: Index> Counter<I> {
    /// Add `n` (wrapping at 2^64) on the current CPU.
    #[inline]
    pub fn add(&self, n: u64) {
        let n = n as usize;
        let _ = retry::run_in::<I, ()>(
            |area, i| match self.slots.get(i) {
                // SAFETY: slot `i` is written only by sections indexed by `i` and under guard
                // `i`; `i < slots.len() <= MAX_CPUS`, so its guard word exists; `area` is ours.
                Some(slot) => unsafe { ops::load_add_store_in::<I>(area, guard::word_unchecked(i), slot, n, i) },
                None => ops::Outcome::Stopped,
            },
            |stop| {
                // The slow path is the same add as a CPU op vector, run while the index is stopped.
                let slot = self.slots.get(stop.index()).expect("stop index is in range");
                let mut v = OpVec::new();
                v.add_word(slot, n);
                // SAFETY: the slot is written only by sections indexed by its index and under its
                // guard, which `stop` holds. A one-op add on an aligned word always validates.
                let r = unsafe { v.run_stopped(stop) };
                debug_assert!(r.is_ok(), "{r:?}");
            },
        );
    }

    /// The total of every slot now. Concurrent adds may or may not be included; none is ever
    /// counted twice.
    pub fn sum(&self) -> u64 {
        self.slots.iter().fold(0usize, |acc, (_, s)| acc.wrapping_add(s.load(Relaxed))) as u64
    }

    /// Sum every slot and reset it to zero, one CPU at a time through the guard: each add lands
    /// either in the returned total or in the counter afterwards, never both, never neither.
    ///
    /// # Panics
    /// If the membarrier fence fails after the process chose fast mode (only possible when a
    /// seccomp filter installed later forbids membarrier); see [`try_take`](Self::try_take).
    pub fn take(&self) -> u64 {
        self.try_take().unwrap_or_else(|e| panic!("Counter::take: {e}"))
    }

    /// [`take`](Self::take), reporting a fence failure instead of panicking. Slots already
    /// taken when the error happens stay taken and are included in nothing: the error carries
    /// no total, so prefer `take` unless you handle this case.
    pub fn try_take(&self) -> Result<u64, GuardError> {
        let mut total = 0usize;
        for (i, slot) in self.slots.iter() {
            total = total.wrapping_add(self.take_index(i, slot)?);
        }
        Ok(total as u64)
    }

    /// Sum and reset one CPU's slot (a remote operation through the guard).
    pub fn take_cpu(&self, index: usize) -> Result<u64, GuardError> {
        let slot = self.slots.get(index).ok_or(GuardError::OutOfRange { index, limit: self.slots.len() })?;
        self.take_index(index, slot).map(|v| v as u64)
    }

    fn take_index(&self, index: usize, slot: &AtomicUsize) -> Result<usize, GuardError> {
        if slot.load(Relaxed) == 0 {
            // Nothing to take: a concurrent add that lands now is simply left for later.
            return Ok(0);
        }
        let _stop = guard::stop::<I>(index)?;
        Ok(slot.swap(0, Relaxed))
    }

    /// The per-CPU values (a snapshot).
    pub fn per_cpu(&self) -> Vec<u64> {
        self.slots.iter().map(|(_, s)| s.load(Relaxed) as u64).collect()
    }
}

impl<I: Index> Default for Counter<I> {
    fn default() -> Self {
        Counter { slots: PerCpu::new(|_| AtomicUsize::new(0)) }
    }
}

impl<I: Index> fmt::Debug for Counter<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter").field("index", &I::NAME).field("sum", &self.sum()).finish()
    }
}
