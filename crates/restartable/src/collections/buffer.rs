use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::guard::{self, GuardError};
use crate::ops::{self, Cpu, Index, Outcome, Release};
use crate::percpu::PerCpu;
use crate::retry::{self, Path};

struct Ring {
    count: AtomicUsize,
    items: Box<[AtomicUsize]>,
}

/// A fixed-capacity per-CPU buffer of boxed items (a LIFO array per CPU): `push` stores the
/// pointer and then commits the new count (store-store, release commit); `pop` takes the last
/// item with a double-checked store. Full and empty are answers, not errors.
///
/// ```
/// use restartable::Buffer;
///
/// let b: Buffer<String> = Buffer::with_capacity(2);
/// b.push(Box::new("a".to_string())).unwrap(); // the first push always fits
/// let items: Vec<String> = b.drain_all().into_iter().map(|s| *s).collect();
/// assert_eq!(items, ["a"]);
/// assert!(b.pop().is_none());
///
/// // A full CPU buffer gives the item back.
/// let none: Buffer<u8> = Buffer::with_capacity(0);
/// assert_eq!(none.push(Box::new(7)), Err(Box::new(7)));
/// ```
pub struct Buffer<T, I: Index = Cpu> {
    rings: PerCpu<Ring, I>,
    capacity: usize,
    _owns: core::marker::PhantomData<Box<T>>,
}

// SAFETY: the buffer owns its items and hands each out to exactly one thread.
unsafe impl<T: Send, I: Index> Send for Buffer<T, I> {}
// SAFETY: shared access goes through rseq sections or the guard; items move by value.
unsafe impl<T: Send, I: Index> Sync for Buffer<T, I> {}

impl<T, I: Index> Buffer<T, I> {
    /// A buffer holding up to `per_cpu` items on each CPU.
    pub fn with_capacity(per_cpu: usize) -> Self {
        Buffer {
            rings: PerCpu::new(|_| Ring {
                count: AtomicUsize::new(0),
                items: (0..per_cpu).map(|_| AtomicUsize::new(0)).collect(),
            }),
            capacity: per_cpu,
            _owns: core::marker::PhantomData,
        }
    }

    /// The capacity of each CPU's buffer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Push `item` on the current CPU's buffer, or give it back if that buffer is full.
    pub fn push(&self, item: Box<T>) -> Result<(), Box<T>> {
        let ptr = Box::into_raw(item) as usize;
        loop {
            let full = core::cell::Cell::new(false);
            let path = retry::run::<I, bool>(
                |i| {
                    let Some(r) = self.rings.get(i) else { return Outcome::Stopped };
                    let c = r.count.load(Relaxed);
                    let Some(slot) = r.items.get(c) else {
                        full.set(true);
                        return Outcome::CompareFailed;
                    };
                    // SAFETY: ring `i` is written only by sections indexed by `i` and under
                    // guard `i`; the count commit publishes the slot only if it is still `c`.
                    unsafe { ops::load_cbne_store_store::<I, Release>(&r.count, c, slot, ptr, c + 1, i) }
                },
                |stop| {
                    let r = self.rings.get(stop.index()).expect("stop index is in range");
                    let c = r.count.load(Relaxed);
                    let Some(slot) = r.items.get(c) else { return false };
                    slot.store(ptr, Relaxed);
                    r.count.store(c + 1, Relaxed);
                    true
                },
            );
            return match path {
                Path::Fast(Outcome::Committed) | Path::Slow(true) => Ok(()),
                Path::Fast(Outcome::CompareFailed) if !full.get() => continue,
                // SAFETY: the item was not published; it is still ours.
                _ => Err(unsafe { Box::from_raw(ptr as *mut T) }),
            };
        }
    }

    /// Pop the last item pushed on the current CPU's buffer, or `None` if it is empty.
    pub fn pop(&self) -> Option<Box<T>> {
        loop {
            let seen = core::cell::Cell::new(0usize);
            let empty = core::cell::Cell::new(false);
            let path = retry::run::<I, usize>(
                |i| {
                    let Some(r) = self.rings.get(i) else { return Outcome::Stopped };
                    let c = r.count.load(Relaxed);
                    if c == 0 {
                        empty.set(true);
                        return Outcome::CompareFailed;
                    }
                    let slot = &r.items[c - 1];
                    let item = slot.load(Relaxed);
                    seen.set(item);
                    // SAFETY: ring `i` is written only by sections indexed by `i` and under
                    // guard `i`; the commit happens only if count and slot still hold what we read.
                    unsafe { ops::load_cbne_load_cbne_store::<I>(&r.count, c, slot, item, c - 1, i) }
                },
                |stop| {
                    let r = self.rings.get(stop.index()).expect("stop index is in range");
                    let c = r.count.load(Relaxed);
                    if c == 0 {
                        return 0;
                    }
                    r.count.store(c - 1, Relaxed);
                    r.items[c - 1].load(Relaxed)
                },
            );
            let item = match path {
                Path::Fast(Outcome::Committed) => seen.get(),
                Path::Fast(Outcome::CompareFailed) if !empty.get() => continue,
                Path::Slow(p) => p,
                _ => 0,
            };
            // SAFETY: the item was unpublished by this thread alone; it came from `push`.
            return (item != 0).then(|| unsafe { Box::from_raw(item as *mut T) });
        }
    }

    /// Remove every item of CPU `cpu`'s buffer, from any thread.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<Box<T>>, GuardError> {
        let r = self.rings.get(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.rings.len() })?;
        if r.count.load(Relaxed) == 0 {
            return Ok(Vec::new());
        }
        let _stop = guard::stop::<I>(cpu)?;
        let c = r.count.swap(0, Relaxed);
        // SAFETY: the first `c` slots hold published items, now unpublished under the guard.
        Ok(r.items[..c].iter().map(|s| unsafe { Box::from_raw(s.load(Relaxed) as *mut T) }).collect())
    }

    /// Remove every item of every CPU's buffer.
    ///
    /// # Panics
    /// If the membarrier fence fails (see [`Stack::drain_all`](crate::Stack::drain_all)).
    pub fn drain_all(&self) -> Vec<Box<T>> {
        (0..self.rings.len())
            .flat_map(|cpu| self.drain_cpu(cpu).unwrap_or_else(|e| panic!("Buffer::drain_all: {e}")))
            .collect()
    }

    /// The number of items on each CPU (a snapshot).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        self.rings.iter().map(|(_, r)| r.count.load(Relaxed)).collect()
    }

    /// Whether every CPU's buffer is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(|(_, r)| r.count.load(Relaxed) == 0)
    }
}

impl<T, I: Index> Drop for Buffer<T, I> {
    fn drop(&mut self) {
        for (_, r) in self.rings.iter_mut() {
            let c = *r.count.get_mut();
            for s in &mut r.items[..c] {
                // SAFETY: `&mut self`; the first `c` slots hold items from `push`.
                drop(unsafe { Box::from_raw(*s.get_mut() as *mut T) });
            }
        }
    }
}

impl<T, I: Index> fmt::Debug for Buffer<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("index", &I::NAME)
            .field("capacity", &self.capacity)
            .field("len_per_cpu", &self.len_per_cpu())
            .finish()
    }
}
