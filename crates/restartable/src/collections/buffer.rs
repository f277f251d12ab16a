use core::fmt;

use super::ring::{Items, Rings};
use crate::cpu::{Cpu, Index};
use crate::guard::GuardError;
use crate::pool::PoolError;

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
    rings: Rings<I>,
    _owns: core::marker::PhantomData<Box<T>>,
}

// SAFETY: the buffer owns its items and hands each out to exactly one thread.
unsafe impl<T: Send, I: Index> Send for Buffer<T, I> {}
// SAFETY: shared access goes through rseq sections or the guard; items move by value.
unsafe impl<T: Send, I: Index> Sync for Buffer<T, I> {}

impl<T, I: Index> Buffer<T, I> {
    /// A buffer holding up to `per_cpu` items on each CPU (no per-CPU memory is touched until a
    /// CPU pushes).
    ///
    /// # Panics
    /// If the per-CPU pool cannot hold `per_cpu` pointers per CPU
    /// ([`try_with_capacity`](Self::try_with_capacity) returns the error).
    pub fn with_capacity(per_cpu: usize) -> Self {
        Self::try_with_capacity(per_cpu).unwrap_or_else(|e| panic!("Buffer::with_capacity({per_cpu}): {e}"))
    }

    /// [`with_capacity`](Self::with_capacity), returning the pool's error instead of panicking.
    pub fn try_with_capacity(per_cpu: usize) -> Result<Self, PoolError> {
        Ok(Buffer { rings: Rings::new(per_cpu, Items::Words)?, _owns: core::marker::PhantomData })
    }

    /// The capacity of each CPU's buffer.
    pub fn capacity(&self) -> usize {
        self.rings.capacity()
    }

    /// Push `item` on the current CPU's buffer, or give it back if that buffer is full (or, in
    /// a signal handler that interrupted an operation on this buffer, out of reach).
    pub fn push(&self, item: Box<T>) -> Result<(), Box<T>> {
        let ptr = Box::into_raw(item);
        // SAFETY: `ptr` is one aligned word.
        if unsafe { self.rings.push((&raw const ptr).cast::<usize>()) } {
            Ok(())
        } else {
            // SAFETY: the item was not published; it is still ours.
            Err(unsafe { Box::from_raw(ptr) })
        }
    }

    /// Move items from the end of `items` onto the current CPU's buffer, as many as fit, in one
    /// critical section; returns how many moved (they are gone from `items`; the rest stay). A
    /// batch larger than the free room moves what fits; an empty `items` moves nothing.
    ///
    /// ```
    /// let b: restartable::Buffer<u32> = restartable::Buffer::with_capacity(8);
    /// let mut items: Vec<Box<u32>> = (0..20).map(Box::new).collect();
    /// let moved = b.push_batch(&mut items);
    /// assert!(moved <= 8 && items.len() == 20 - moved);
    /// let mut out = Vec::new();
    /// b.pop_batch(16, &mut out); // from the current CPU: all of them if the thread stayed put
    /// assert_eq!(out.len() + b.drain_all().len(), moved);
    /// ```
    pub fn push_batch(&self, items: &mut Vec<Box<T>>) -> usize {
        let n = items.len();
        // SAFETY: `items` holds `n` boxes, each one aligned pointer; the moved ones (the last
        // `moved`) now belong to the buffer, so the `Vec` forgets them.
        unsafe {
            let moved = self.rings.push_many::<usize, true>(items.as_ptr().cast(), n);
            items.set_len(n - moved);
            moved
        }
    }

    /// Move up to `max` items, the last ones pushed on the current CPU's buffer (in the order
    /// they were pushed), to the end of `out` in one critical section; returns how many moved.
    /// `max = 0` moves nothing. `out` grows before the section, never inside it.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<Box<T>>) -> usize {
        let max = max.min(self.capacity());
        out.reserve(max);
        // SAFETY: `out` has room for `max` more pointers (a `Box<T>` is one non-null pointer);
        // the moved ones are published pointers from `push`, now `out`'s.
        unsafe {
            let len = out.len();
            let moved = self.rings.pop_many::<usize>(out.as_mut_ptr().add(len).cast(), max);
            out.set_len(len + moved);
            moved
        }
    }

    /// Pop the last item pushed on the current CPU's buffer, or `None` if it is empty.
    pub fn pop(&self) -> Option<Box<T>> {
        let mut ptr: *mut T = core::ptr::null_mut();
        // SAFETY: `ptr` has room for one word; a popped word is a pointer from `push`, now ours.
        unsafe { self.rings.pop((&raw mut ptr).cast::<usize>()).then(|| Box::from_raw(ptr)) }
    }

    /// Remove every item of CPU `cpu`'s buffer, from any thread.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<Box<T>>, GuardError> {
        // Allocated before the guard is taken: nothing allocates under it.
        let mut out: Vec<Box<T>> = Vec::with_capacity(self.capacity());
        // SAFETY: `out` has room for `capacity` pointers, and a `Box<T>` is one (non-null)
        // pointer; the drained items are published pointers from `push`, now ours.
        unsafe {
            let n = self.rings.drain_cpu(cpu, out.as_mut_ptr().cast())?;
            out.set_len(n);
        }
        Ok(out)
    }

    /// Remove every item of every CPU's buffer. Called while the thread holds a guard (a signal
    /// handler), it leaves the buffers it would have to wait for.
    ///
    /// # Panics
    /// If the membarrier fence fails (see [`Stack::drain_all`](crate::Stack::drain_all)).
    pub fn drain_all(&self) -> Vec<Box<T>> {
        super::drain_every("Buffer", |cpu| self.drain_cpu(cpu))
    }

    /// The number of items on each CPU (a snapshot).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        self.rings.len_per_cpu()
    }

    /// Whether every CPU's buffer is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len_per_cpu().iter().all(|&n| n == 0)
    }
}

impl<T, I: Index> Drop for Buffer<T, I> {
    fn drop(&mut self) {
        // SAFETY: every stored word is a pointer from `push`, owned by the buffer; each is
        // dropped once, all of them even if one's `Drop` panics.
        super::drop_all(self.rings.take_all().map(|p| unsafe { Box::from_raw(p.cast::<*mut T>().read()) }));
    }
}

impl<T, I: Index> fmt::Debug for Buffer<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("index", &I::NAME)
            .field("capacity", &self.capacity())
            .field("len_per_cpu", &self.len_per_cpu())
            .finish()
    }
}
