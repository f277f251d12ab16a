use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::cpu::{Cpu, Index};
use crate::guard::GuardError;
use crate::percpu::{PerCpu, Slot, Slots};
use crate::{arch, pool};

/// Where a slot's value is, from its guard word.
const VALUE: usize = core::mem::offset_of!(Slot<AtomicUsize>, value);
use crate::retry::{self, Slow};
use crate::thread;

/// A per-CPU counter: `add` is one critical section whose commit is a memory-destination `add`
/// on the current CPU's slot (no `lock` prefix), `sum` reads every slot, and `take` sums and
/// resets every slot through the guard without losing a concurrent `add`.
///
/// A new counter costs no memory until a CPU first adds to it: its slots live in the strided
/// per-CPU [pool](crate::pool), 16 bytes per CPU that uses it.
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
    ///
    /// # Panics
    /// If the per-CPU pool is exhausted ([`try_new`](Self::try_new) returns the error).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<I: Index> Counter<I> {
    /// A counter at zero, or the per-CPU pool's error.
    pub fn try_new() -> Result<Self, crate::pool::PoolError> {
        Ok(Counter { slots: PerCpu::try_new_zeroed()? })
    }

    /// Add `n` (wrapping at 2^64) on the current CPU. Async-signal-safe.
    #[inline]
    pub fn add(&self, n: u64) {
        let n = n as usize;
        let base = self.slots.first().as_ptr().cast::<u8>();
        let _ = retry::drive(
            &self.slots,
            // SAFETY: the slot of `at.index` (at `base + index * STRIDE`) is written only by
            // sections on that index, under its guard, or with atomic instructions when no
            // section can run on it; its value is `VALUE` bytes after its guard word.
            move |_, at| unsafe { arch::add_strided::<I, VALUE>(at, base, at.index << pool::STRIDE_SHIFT, n) },
            move |slow| {
                // Every slow form is an atomic add: on a stopped index, on the spare (which no
                // section touches), or in degraded mode (where no section runs at all).
                let (Slow::Stopped(slot, _) | Slow::Spare(slot) | Slow::Degraded(slot, _)) = slow;
                slot.fetch_add(n, Relaxed);
            },
            true,
        );
    }

    /// The total now. Concurrent adds may or may not be included; none is ever counted twice.
    pub fn sum(&self) -> u64 {
        let spare = self.slots.spare().value.load(Relaxed);
        self.slots.iter().fold(spare, |acc, (_, s)| acc.wrapping_add(s.load(Relaxed))) as u64
    }

    /// Sum every slot and reset it to zero, one CPU at a time through the guard: each add lands
    /// either in the returned total or in the counter afterwards, never both, never neither.
    ///
    /// Called while the thread holds a guard (from a signal handler that interrupted one of its
    /// operations), it takes what it can without waiting: slots it would have to wait for keep
    /// their counts for a later `take`.
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
        // The spare is only ever changed by atomic adds: it needs no guard.
        let mut total = self.slots.spare().value.swap(0, Relaxed);
        for i in 0..self.slots.len() {
            match self.take_index(i) {
                Ok(v) => total = total.wrapping_add(v),
                Err(GuardError::Busy { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total as u64)
    }

    /// Sum and reset one CPU's slot (a remote operation through the guard).
    pub fn take_cpu(&self, index: usize) -> Result<u64, GuardError> {
        self.take_index(index).map(|v| v as u64)
    }

    fn take_index(&self, index: usize) -> Result<usize, GuardError> {
        let s = self.slots.slot(index).ok_or(GuardError::OutOfRange { index, limit: self.slots.len() })?;
        if s.value.load(Relaxed) == 0 {
            // Nothing to take: a concurrent add that lands now is simply left for later.
            return Ok(0);
        }
        if thread::mode_if_decided().is_some_and(|m| !m.is_fast()) {
            // No section runs in degraded mode, and every other access is atomic.
            return Ok(s.value.swap(0, Relaxed));
        }
        let _stop = s.guard.stop::<I>(index)?;
        Ok(s.value.swap(0, Relaxed))
    }

    /// The per-CPU values (a snapshot). Adds made by operations that could not wait for a guard
    /// (in a signal handler that interrupted one) are in [`sum`](Self::sum) but on no CPU.
    pub fn per_cpu(&self) -> Vec<u64> {
        self.slots.iter().map(|(_, s)| s.load(Relaxed) as u64).collect()
    }
}

impl<I: Index> Default for Counter<I> {
    fn default() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("Counter::new: {e}"))
    }
}

impl<I: Index> fmt::Debug for Counter<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter").field("index", &I::NAME).field("sum", &self.sum()).finish()
    }
}
