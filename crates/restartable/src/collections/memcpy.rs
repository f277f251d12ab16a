use core::fmt;
use core::mem::{MaybeUninit, size_of};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::guard::{self, GuardError};
use crate::ops::{self, Cpu, Index, Outcome, Release};
use crate::percpu::PerCpu;
use crate::retry::{self, Path};

/// The largest item a [`MemcpyBuffer`] holds: the op vector's memcpy limit (the kernel
/// `cpu_opv` proposal's), so that every push and pop has a slow path.
pub const MAX_ITEM: usize = crate::opv::MAX_LEN;

struct Ring {
    count: AtomicUsize,
    bytes: Box<[AtomicU8]>,
}

/// A fixed-capacity per-CPU buffer of `Copy` items stored inline: `push` copies the item into
/// the current CPU's array and commits the new count in one section
/// (`load_cbne_memcpy_store`); `pop` copies the last item out the same way. No allocation per
/// item.
///
/// `T` must fit the op vector's copy limit ([`MAX_ITEM`] = 4096 bytes); a larger `T`
/// is a compile-time error:
///
/// ```compile_fail
/// let b: restartable::MemcpyBuffer<[u8; 5000]> = restartable::MemcpyBuffer::with_capacity(1);
/// ```
///
/// ```
/// use restartable::MemcpyBuffer;
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// struct Event { id: u64, value: f64 }
///
/// let b: MemcpyBuffer<Event> = MemcpyBuffer::with_capacity(16);
/// b.push(Event { id: 1, value: 0.5 }).unwrap();
/// assert_eq!(b.drain_all(), [Event { id: 1, value: 0.5 }]);
/// assert_eq!(b.pop(), None);
/// ```
pub struct MemcpyBuffer<T: Copy, I: Index = Cpu> {
    rings: PerCpu<Ring, I>,
    capacity: usize,
    _items: core::marker::PhantomData<T>,
}

// SAFETY: items are plain copies (`T: Copy + Send`); shared access goes through rseq sections
// or the guard.
unsafe impl<T: Copy + Send, I: Index> Send for MemcpyBuffer<T, I> {}
// SAFETY: as above; items are only ever copied out by value.
unsafe impl<T: Copy + Send, I: Index> Sync for MemcpyBuffer<T, I> {}

impl<T: Copy, I: Index> MemcpyBuffer<T, I> {
    const SIZE_OK: () = assert!(
        size_of::<T>() <= MAX_ITEM,
        "MemcpyBuffer<T>: T is larger than the op vector's copy limit (4096 bytes)"
    );

    /// A buffer holding up to `per_cpu` items of `T` on each CPU.
    ///
    /// # Panics
    /// If `per_cpu * size_of::<T>()` overflows `usize`.
    pub fn with_capacity(per_cpu: usize) -> Self {
        let () = Self::SIZE_OK;
        let bytes = per_cpu.checked_mul(size_of::<T>()).expect("MemcpyBuffer capacity overflows");
        MemcpyBuffer {
            rings: PerCpu::new(|_| Ring {
                count: AtomicUsize::new(0),
                bytes: (0..bytes).map(|_| AtomicU8::new(0)).collect(),
            }),
            capacity: per_cpu,
            _items: core::marker::PhantomData,
        }
    }

    /// The capacity of each CPU's buffer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copy `item` into the current CPU's buffer, or give it back if that buffer is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        let sz = size_of::<T>();
        let src = (&raw const item).cast::<u8>();
        loop {
            let full = core::cell::Cell::new(false);
            let path = retry::run::<I, bool>(
                |i| {
                    let Some(r) = self.rings.get(i) else { return Outcome::Stopped };
                    let c = r.count.load(Relaxed);
                    if c >= self.capacity {
                        full.set(true);
                        return Outcome::CompareFailed;
                    }
                    let dst = r.bytes[c * sz..].as_ptr();
                    // SAFETY: ring `i` is written only by sections indexed by `i` and under
                    // guard `i`; `dst` has room for `sz` bytes (c < capacity); `src` is a local.
                    unsafe { ops::load_cbne_memcpy_store::<I, Release>(&r.count, c, dst, src, sz, c + 1, i) }
                },
                |stop| {
                    let r = self.rings.get(stop.index()).expect("stop index is in range");
                    let c = r.count.load(Relaxed);
                    if c >= self.capacity {
                        return false;
                    }
                    // SAFETY: the guard excludes every other access to this ring's bytes; the
                    // destination has room for `sz` bytes; an untyped copy keeps padding opaque.
                    unsafe { core::ptr::copy_nonoverlapping(src, r.bytes[c * sz..].as_ptr() as *mut u8, sz) };
                    r.count.store(c + 1, Relaxed);
                    true
                },
            );
            return match path {
                Path::Fast(Outcome::Committed) | Path::Slow(true) => Ok(()),
                Path::Fast(Outcome::CompareFailed) if !full.get() => continue,
                _ => Err(item),
            };
        }
    }

    /// Copy out and remove the last item of the current CPU's buffer, or `None` if it is empty.
    pub fn pop(&self) -> Option<T> {
        let sz = size_of::<T>();
        let mut out = MaybeUninit::<T>::uninit();
        let dst = out.as_mut_ptr().cast::<AtomicU8>();
        loop {
            let empty = core::cell::Cell::new(false);
            let path = retry::run::<I, bool>(
                |i| {
                    let Some(r) = self.rings.get(i) else { return Outcome::Stopped };
                    let c = r.count.load(Relaxed);
                    if c == 0 {
                        empty.set(true);
                        return Outcome::CompareFailed;
                    }
                    let src = r.bytes[(c - 1) * sz..].as_ptr().cast::<u8>();
                    // SAFETY: ring `i` is written only by sections indexed by `i` and under
                    // guard `i`; the copy reads a published item and writes our local `out`.
                    unsafe { ops::load_cbne_memcpy_store::<I, Release>(&r.count, c, dst, src, sz, c - 1, i) }
                },
                |stop| {
                    let r = self.rings.get(stop.index()).expect("stop index is in range");
                    let c = r.count.load(Relaxed);
                    if c == 0 {
                        return false;
                    }
                    // SAFETY: the guard excludes every other access to this ring; the item at
                    // `c - 1` was published by a push; `out` is a local of `sz` bytes.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            r.bytes[(c - 1) * sz..].as_ptr() as *const u8,
                            dst.cast::<u8>(),
                            sz,
                        )
                    };
                    r.count.store(c - 1, Relaxed);
                    true
                },
            );
            return match path {
                // SAFETY: a committed section (or the slow path) copied a whole pushed `T`.
                Path::Fast(Outcome::Committed) | Path::Slow(true) => Some(unsafe { out.assume_init() }),
                Path::Fast(Outcome::CompareFailed) if !empty.get() => continue,
                _ => None,
            };
        }
    }

    /// Copy out and remove every item of CPU `cpu`'s buffer, from any thread.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<T>, GuardError> {
        let r = self.rings.get(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.rings.len() })?;
        if r.count.load(Relaxed) == 0 {
            return Ok(Vec::new());
        }
        let _stop = guard::stop::<I>(cpu)?;
        let c = r.count.swap(0, Relaxed);
        let sz = size_of::<T>();
        Ok((0..c)
            .map(|k| {
                // SAFETY: slot `k < c` holds a pushed `T`; the guard excludes every writer. An
                // unaligned read because the byte array has no alignment for `T`.
                unsafe { (r.bytes[k * sz..].as_ptr() as *const T).read_unaligned() }
            })
            .collect())
    }

    /// Copy out and remove every item of every CPU's buffer.
    ///
    /// # Panics
    /// If the membarrier fence fails (see [`Stack::drain_all`](crate::Stack::drain_all)).
    pub fn drain_all(&self) -> Vec<T> {
        (0..self.rings.len())
            .flat_map(|cpu| self.drain_cpu(cpu).unwrap_or_else(|e| panic!("MemcpyBuffer::drain_all: {e}")))
            .collect()
    }

    /// The number of items on each CPU (a snapshot).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        self.rings.iter().map(|(_, r)| r.count.load(Relaxed)).collect()
    }
}

impl<T: Copy, I: Index> fmt::Debug for MemcpyBuffer<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcpyBuffer")
            .field("index", &I::NAME)
            .field("item_size", &size_of::<T>())
            .field("capacity", &self.capacity)
            .field("len_per_cpu", &self.len_per_cpu())
            .finish()
    }
}
