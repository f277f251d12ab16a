use core::cell::UnsafeCell;
use core::fmt;
use core::mem::MaybeUninit;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

use bytemuck::Zeroable;
use crossbeam_utils::Backoff;

use crate::arch::{self, Outcome};
use crate::cpu::{Cpu, Index};
use crate::guard::{self, GuardError};
use crate::percpu::{PerCpu, Slots};
use crate::retry::{self, Path, Slow};

struct Lock<T> {
    locked: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: all-zero is an unlocked word and an uninitialised value (which `SpinLock::new`
// initialises for every index below `len`; the spare's is never read).
unsafe impl<T> Zeroable for Lock<T> {}

/// One spin lock and one `T` per CPU. [`lock`](Self::lock) takes the current CPU's lock with
/// a per-CPU compare-and-store (`load_cbne_store`, no `lock` prefix) and returns a guard that
/// derefs to that CPU's `T`; [`lock_cpu`](Self::lock_cpu) takes any CPU's lock (through the
/// guard word). The holder may migrate: it is a real lock, the CPU only picks which one.
///
/// Like every lock it is not async-signal-safe: a signal handler that locks what its own thread
/// holds waits forever.
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
    slots: PerCpu<Lock<T>, I>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so sharing the structure only
// requires that `T` can move between threads.
unsafe impl<T: Send, I: Index> Sync for SpinLock<T, I> {}
// SAFETY: owning the structure owns every `T`.
unsafe impl<T: Send, I: Index> Send for SpinLock<T, I> {}

/// The current or a chosen CPU's locked `T`; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct SpinLockGuard<'a, T, I: Index = Cpu> {
    slot: &'a Lock<T>,
    cpu: usize,
    _index: core::marker::PhantomData<I>,
}

impl<T, I: Index> SpinLock<T, I> {
    /// A lock and a value per CPU, made by `init(cpu)`.
    ///
    /// # Panics
    /// If the per-CPU pool is exhausted.
    pub fn new(mut init: impl FnMut(usize) -> T) -> Self {
        let slots: PerCpu<Lock<T>, I> = PerCpu::new_zeroed();
        for (i, s) in slots.iter() {
            // SAFETY: nobody else can see the structure yet; every index below `len` is written
            // exactly once (and dropped by `SpinLock::drop`).
            unsafe { (*s.value.get()).write(init(i)) };
        }
        SpinLock { slots }
    }

    /// The number of per-CPU locks.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Lock the current CPU's `T`, spinning (then yielding) while another thread holds it.
    pub fn lock(&self) -> SpinLockGuard<'_, T, I> {
        let backoff = Backoff::new();
        loop {
            let got = core::cell::Cell::new(0);
            let path = retry::drive(
                &self.slots,
                |s, at| {
                    got.set(at.index);
                    // SAFETY: lock word `at.index` is set only by sections on that index or under
                    // its guard; the holder clears it with a release store.
                    unsafe { arch::cbne_store::<I>(at, s.locked.as_ptr(), 0, 1) }
                },
                |slow| match slow {
                    Slow::Stopped(s, i) => {
                        got.set(i);
                        // No section and no other slow path runs on this index: test-and-set.
                        s.locked.load(Ordering::Relaxed) == 0 && {
                            s.locked.store(1, Ordering::Relaxed);
                            true
                        }
                    }
                    // No section runs anywhere, and every other way to the word is a
                    // compare-exchange: one is the whole lock, as in any spin lock.
                    Slow::Degraded(s, i) => {
                        got.set(i);
                        s.locked.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
                    }
                    // This thread may not wait for a guard: try the indices below instead.
                    Slow::Spare(_) => false,
                },
                true,
            );
            if matches!(path, Path::Fast(Outcome::Committed) | Path::Slow(true)) {
                // The commit was a plain store: order the critical section after it.
                core::sync::atomic::fence(Ordering::Acquire);
                return self.guard(got.get());
            }
            if guard::held() > 0 {
                for cpu in 0..self.len() {
                    if let Ok(Some(g)) = self.try_lock_index(cpu) {
                        return g;
                    }
                }
            }
            backoff.snooze();
        }
    }

    /// Lock CPU `cpu`'s `T` from any thread.
    ///
    /// # Panics
    /// When `cpu >= len()`, if the fence fails, or when called while this thread holds a guard
    /// (it may not wait); [`try_lock_cpu`](Self::try_lock_cpu) returns those as errors.
    pub fn lock_cpu(&self, cpu: usize) -> SpinLockGuard<'_, T, I> {
        self.try_lock_cpu(cpu).unwrap_or_else(|e| panic!("SpinLock::lock_cpu: {e}"))
    }

    /// [`lock_cpu`](Self::lock_cpu) returning errors instead of panicking.
    pub fn try_lock_cpu(&self, cpu: usize) -> Result<SpinLockGuard<'_, T, I>, GuardError> {
        let backoff = Backoff::new();
        loop {
            if let Some(g) = self.try_lock_index(cpu)? {
                return Ok(g);
            }
            backoff.snooze();
        }
    }

    /// One attempt at CPU `cpu`'s lock through its guard: `None` when another thread holds it.
    fn try_lock_index(&self, cpu: usize) -> Result<Option<SpinLockGuard<'_, T, I>>, GuardError> {
        let slot = self.slots.slot(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.len() })?;
        if slot.value.locked.load(Ordering::Relaxed) != 0 {
            return Ok(None);
        }
        let stop = slot.guard.stop::<I>(cpu)?;
        // Sections of `cpu` are stopped and other slow paths excluded: test-and-set.
        let won = slot.value.locked.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok();
        drop(stop);
        Ok(won.then(|| self.guard(cpu)))
    }

    fn guard(&self, cpu: usize) -> SpinLockGuard<'_, T, I> {
        // SAFETY: `cpu` came from a cursor or a stopped index: below `len`.
        SpinLockGuard { slot: &unsafe { self.slots.slot_unchecked(cpu) }.value, cpu, _index: core::marker::PhantomData }
    }

    /// Every CPU's `T`, mutably (no lock needed: `&mut self` excludes everyone).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        // SAFETY: every index below `len` was initialised by `new`.
        self.slots.iter_mut().map(|(_, s)| unsafe { s.value.get_mut().assume_init_mut() })
    }
}

impl<T, I: Index> Drop for SpinLock<T, I> {
    fn drop(&mut self) {
        // SAFETY: every value was initialised by `new` and is dropped once here (all of them, even
        // if one's `Drop` panics).
        crate::percpu::drop_all(self.iter_mut().map(|v| unsafe { crate::percpu::InPlace::new(v) }));
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
        // SAFETY: the lock is held, so no other reference to the (initialised) value exists.
        unsafe { (*self.slot.value.get()).assume_init_ref() }
    }
}

impl<T, I: Index> DerefMut for SpinLockGuard<'_, T, I> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so no other reference to the (initialised) value exists.
        unsafe { (*self.slot.value.get()).assume_init_mut() }
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
