use core::cell::UnsafeCell;
use core::fmt;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::guard::{self, GuardError};
use crate::ops::{self, Cpu, Index, Outcome};
use crate::percpu::PerCpu;
use crate::retry::{self, Path};

struct Slot<T> {
    locked: AtomicUsize,
    value: UnsafeCell<T>,
}

/// One spin lock and one `T` per CPU. [`lock`](Self::lock) takes the current CPU's lock with
/// a per-CPU compare-and-store (`load_cbne_store`, no `lock` prefix) and returns a guard that
/// derefs to that CPU's `T`; [`lock_cpu`](Self::lock_cpu) takes any CPU's lock (through the
/// guard word). The holder may migrate: it is a real lock, the CPU only picks which one.
///
/// ```
/// use restartable::SpinLock;
///
/// let lists: SpinLock<Vec<u32>> = SpinLock::new(|_| Vec::new());
/// {
///     let mut mine = lists.lock();
///     mine.push(7);
///     println!("pushed on CPU {}", mine.cpu());
/// }
/// let total: usize = (0..lists.len()).map(|c| lists.lock_cpu(c).len()).sum();
/// assert_eq!(total, 1);
/// ```
pub struct SpinLock<T, I: Index = Cpu> {
    slots: PerCpu<Slot<T>, I>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so sharing the structure only
// requires that `T` can move between threads.
unsafe impl<T: Send, I: Index> Sync for SpinLock<T, I> {}
// SAFETY: owning the structure owns every `T`.
unsafe impl<T: Send, I: Index> Send for SpinLock<T, I> {}

/// The current or a chosen CPU's locked `T`; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct SpinLockGuard<'a, T, I: Index = Cpu> {
    slot: &'a Slot<T>,
    cpu: usize,
    _index: core::marker::PhantomData<I>,
}

impl<T, I: Index> SpinLock<T, I> {
    /// A lock and a value per CPU, made by `init(cpu)`.
    pub fn new(mut init: impl FnMut(usize) -> T) -> Self {
        SpinLock { slots: PerCpu::new(|i| Slot { locked: AtomicUsize::new(0), value: UnsafeCell::new(init(i)) }) }
    }

    /// The number of per-CPU locks.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Lock the current CPU's `T`, spinning (then yielding) while another thread holds it.
    pub fn lock(&self) -> SpinLockGuard<'_, T, I> {
        let mut spins = 0u32;
        loop {
            let got = core::cell::Cell::new(usize::MAX);
            let path = retry::run::<I, bool>(
                |i| match self.slots.get(i) {
                    Some(s) => {
                        got.set(i);
                        // SAFETY: lock word `i` is set only by sections indexed by `i` or under
                        // guard `i`; the holder clears it with a release store.
                        unsafe { ops::load_cbne_store::<I>(&s.locked, 0, 1, i) }
                    }
                    None => Outcome::Stopped,
                },
                |stop| {
                    got.set(stop.index());
                    self.slots.get(got.get()).is_some_and(|s| {
                        s.locked.load(Ordering::Relaxed) == 0 && {
                            s.locked.store(1, Ordering::Relaxed);
                            true
                        }
                    })
                },
            );
            if matches!(path, Path::Fast(Outcome::Committed) | Path::Slow(true)) {
                // The commit was a plain store: order the critical section after it.
                core::sync::atomic::fence(Ordering::Acquire);
                return self.guard(got.get());
            }
            backoff(&mut spins);
        }
    }

    /// Lock CPU `cpu`'s `T` from any thread.
    ///
    /// # Panics
    /// When `cpu >= len()`, or if the fence fails; [`try_lock_cpu`](Self::try_lock_cpu) returns
    /// those as errors.
    pub fn lock_cpu(&self, cpu: usize) -> SpinLockGuard<'_, T, I> {
        self.try_lock_cpu(cpu).unwrap_or_else(|e| panic!("SpinLock::lock_cpu: {e}"))
    }

    /// [`lock_cpu`](Self::lock_cpu) returning errors instead of panicking.
    pub fn try_lock_cpu(&self, cpu: usize) -> Result<SpinLockGuard<'_, T, I>, GuardError> {
        let slot = self.slots.get(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.len() })?;
        let mut spins = 0u32;
        loop {
            if slot.locked.load(Ordering::Relaxed) == 0 {
                let stop = guard::stop::<I>(cpu)?;
                // Sections of `cpu` are stopped and other slow paths excluded: test-and-set.
                let won = slot.locked.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok();
                drop(stop);
                if won {
                    return Ok(self.guard(cpu));
                }
            }
            backoff(&mut spins);
        }
    }

    fn guard(&self, cpu: usize) -> SpinLockGuard<'_, T, I> {
        SpinLockGuard {
            slot: self.slots.get(cpu).expect("locked index is in range"),
            cpu,
            _index: core::marker::PhantomData,
        }
    }

    /// Every CPU's `T`, mutably (no lock needed: `&mut self` excludes everyone).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.slots.iter_mut().map(|(_, s)| s.value.get_mut())
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        core::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl<T, I: Index> SpinLockGuard<'_, T, I> {
    /// The CPU whose lock this is (not necessarily the CPU the holder runs on now).
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<T, I: Index> Deref for SpinLockGuard<'_, T, I> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held, so no other reference to the value exists.
        unsafe { &*self.slot.value.get() }
    }
}

impl<T, I: Index> DerefMut for SpinLockGuard<'_, T, I> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so no other reference to the value exists.
        unsafe { &mut *self.slot.value.get() }
    }
}

impl<T, I: Index> Drop for SpinLockGuard<'_, T, I> {
    fn drop(&mut self) {
        self.slot.locked.store(0, Ordering::Release);
    }
}

impl<T: fmt::Debug, I: Index> fmt::Debug for SpinLockGuard<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLockGuard").field("cpu", &self.cpu).field("value", &**self).finish()
    }
}

impl<T, I: Index> fmt::Debug for SpinLock<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.slots.iter().filter(|(_, s)| s.locked.load(Ordering::Relaxed) != 0).count();
        f.debug_struct("SpinLock").field("cpus", &self.len()).field("held", &held).finish_non_exhaustive()
    }
}

impl<T: Default, I: Index> Default for SpinLock<T, I> {
    fn default() -> Self {
        Self::new(|_| T::default())
    }
}
