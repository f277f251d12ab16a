use core::fmt;
use core::mem::{MaybeUninit, size_of};

use super::ring::{Items, Rings};
use crate::cpu::{Cpu, Index};
use crate::guard::GuardError;
use crate::pool::PoolError;

/// The largest item a [`MemcpyBuffer`] holds: the op vector's memcpy limit (the kernel
/// `cpu_opv` proposal's), so that every push and pop has a slow path of the same size.
pub const MAX_ITEM: usize = crate::opv::MAX_LEN;

/// A fixed-capacity per-CPU buffer of `Copy` items stored inline: `push` copies the item into
/// the current CPU's array and commits the new count in one section
/// (`load_cbne_memcpy_store`); `pop` copies the last item out the same way. No allocation per
/// item; items are only ever handled as bytes (raw pointers), so zero-sized types work too.
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
    rings: Rings<I>,
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

    /// A buffer holding up to `per_cpu` items of `T` on each CPU (no per-CPU memory is touched
    /// until a CPU pushes).
    ///
    /// # Panics
    /// If the per-CPU pool cannot hold `per_cpu` items per CPU
    /// ([`try_with_capacity`](Self::try_with_capacity) returns the error).
    pub fn with_capacity(per_cpu: usize) -> Self {
        Self::try_with_capacity(per_cpu).unwrap_or_else(|e| panic!("MemcpyBuffer::with_capacity({per_cpu}): {e}"))
    }

    /// [`with_capacity`](Self::with_capacity), returning the pool's error instead of panicking.
    pub fn try_with_capacity(per_cpu: usize) -> Result<Self, PoolError> {
        let () = Self::SIZE_OK;
        Ok(MemcpyBuffer {
            rings: Rings::new(per_cpu, Items::Bytes(size_of::<T>()))?,
            _items: core::marker::PhantomData,
        })
    }

    /// The capacity of each CPU's buffer.
    pub fn capacity(&self) -> usize {
        self.rings.capacity()
    }

    /// Copy `item` into the current CPU's buffer, or give it back if that buffer is full (or,
    /// in a signal handler that interrupted an operation on this buffer, out of reach).
    /// Async-signal-safe.
    pub fn push(&self, item: T) -> Result<(), T> {
        // SAFETY: `item` is a readable `T`.
        if unsafe { self.rings.push(&raw const item) } { Ok(()) } else { Err(item) }
    }

    /// Copy the first items of `items` into the current CPU's buffer, as many as fit, in one
    /// critical section; returns how many were copied (`items[..n]`). A batch larger than the
    /// free room copies what fits; an empty slice copies nothing. Async-signal-safe.
    ///
    /// ```
    /// let b: restartable::MemcpyBuffer<[u64; 2]> = restartable::MemcpyBuffer::with_capacity(4);
    /// let n = b.push_batch(&[[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);
    /// assert!(n <= 4);
    /// let mut out = Vec::new();
    /// b.pop_batch(8, &mut out);
    /// assert_eq!(out.len() + b.drain_all().len(), n);
    /// ```
    pub fn push_batch(&self, items: &[T]) -> usize {
        // SAFETY: `items` is readable for its length; items are copied as bytes.
        unsafe { self.rings.push_many::<T, false>(items.as_ptr(), items.len()) }
    }

    /// Copy out and remove up to `max` items, the last ones pushed on the current CPU's buffer
    /// (in the order they were pushed), to the end of `out` in one critical section; returns how
    /// many moved. `max = 0` moves nothing. `out` grows before the section, never inside it.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<T>) -> usize {
        let max = max.min(self.capacity());
        out.reserve(max);
        // SAFETY: `out` has room for `max` more items; the moved bytes are whole pushed `T`s.
        unsafe {
            let len = out.len();
            let moved = self.rings.pop_many(out.as_mut_ptr().add(len), max);
            out.set_len(len + moved);
            moved
        }
    }

    /// Copy out and remove the last item of the current CPU's buffer, or `None` if it is empty.
    /// Async-signal-safe.
    pub fn pop(&self) -> Option<T> {
        let mut out = MaybeUninit::<T>::uninit();
        // SAFETY: `out` has room for one `T`; a successful pop copied a whole pushed `T` into it.
        unsafe { self.rings.pop(out.as_mut_ptr()).then(|| out.assume_init()) }
    }

    /// Copy out and remove every item of CPU `cpu`'s buffer, from any thread.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<T>, GuardError> {
        // Allocated before the guard is taken: nothing allocates under it.
        let mut out: Vec<T> = Vec::with_capacity(self.capacity());
        // SAFETY: `out` has room for `capacity` items; the drained bytes are whole pushed `T`s.
        unsafe {
            let n = self.rings.drain_cpu(cpu, out.as_mut_ptr().cast())?;
            out.set_len(n);
        }
        Ok(out)
    }

    /// Copy out and remove every item of every CPU's buffer. Called while the thread holds a
    /// guard (a signal handler), it leaves the buffers it would have to wait for.
    ///
    /// # Panics
    /// If the membarrier fence fails (see [`Stack::drain_all`](crate::Stack::drain_all)).
    pub fn drain_all(&self) -> Vec<T> {
        super::drain_every("MemcpyBuffer", |cpu| self.drain_cpu(cpu))
    }

    /// The number of items on each CPU (a snapshot).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        self.rings.len_per_cpu()
    }
}

impl<T: Copy, I: Index> fmt::Debug for MemcpyBuffer<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcpyBuffer")
            .field("index", &I::NAME)
            .field("item_size", &size_of::<T>())
            .field("capacity", &self.capacity())
            .field("len_per_cpu", &self.len_per_cpu())
            .finish()
    }
}
