//! `PerCpu<T>`: one `T` per possible CPU (or mm_cid), in the strided [pool](crate::pool).

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use bytemuck::Zeroable;

use crate::cpu::{Cpu, Index};
use crate::guard::Guard;
use crate::pool::{self, Block, PoolError};
use crate::thread;

/// One index's copy: the guard word that stops this index for this structure, then the value,
/// so that a critical section's guard check and its data share a cache line.
#[repr(C)]
pub(crate) struct Slot<T> {
    pub(crate) guard: Guard,
    pub(crate) value: T,
}

/// One `T` per possible CPU (or per memory-map concurrency id with [`MmCid`](crate::ops::MmCid)),
/// each in its index's range of the strided per-CPU [pool](crate::pool): the copies of one
/// `PerCpu` are [`pool::STRIDE`] bytes apart, and one CPU's copies of many structures pack
/// densely in that CPU's own pages. Memory becomes resident only where an index writes;
/// [`new_zeroed`](Self::new_zeroed) touches no index's memory at all.
///
/// `PerCpu` only lays the memory out (each copy also carries the guard word that stops that
/// index for this structure); the collections decide how copies are accessed (rseq ops for the
/// owner CPU, the guard for everyone else).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use restartable::PerCpu;
///
/// let p: PerCpu<AtomicU64> = PerCpu::new(|cpu| AtomicU64::new(cpu as u64));
/// assert_eq!(p.len(), restartable::possible_cpus());
/// assert_eq!(p.get(0).unwrap().load(Ordering::Relaxed), 0);
/// assert!(p.get(p.len()).is_none());
///
/// // All-zero copies that cost nothing until an index writes its own.
/// let z: PerCpu<AtomicU64> = PerCpu::new_zeroed();
/// assert!(z.iter().all(|(_, v)| v.load(Ordering::Relaxed) == 0));
/// ```
pub struct PerCpu<T, I: Index = Cpu> {
    /// Index 0's slot; index `i`'s is `i` strides further. The last range is the spare's.
    ptr: NonNull<Slot<T>>,
    _owns: PhantomData<(T, I)>,
}

// SAFETY: a `PerCpu` owns its `T`s (moving it moves them: `T: Send`).
unsafe impl<T: Send, I: Index> Send for PerCpu<T, I> {}
// SAFETY: `&PerCpu` hands out `&T` to any thread (`T: Sync`).
unsafe impl<T: Sync, I: Index> Sync for PerCpu<T, I> {}

impl<T, I: Index> PerCpu<T, I> {
    /// One copy per possible index, each made by `init(index)` (this writes every index's copy).
    ///
    /// # Panics
    /// If the pool cannot provide the memory ([`try_new`](Self::try_new) returns the error).
    pub fn new(init: impl FnMut(usize) -> T) -> Self {
        Self::try_new(init).unwrap_or_else(|e| panic!("PerCpu::new: {e}"))
    }

    /// [`new`](Self::new), returning the pool's error instead of panicking.
    pub fn try_new(mut init: impl FnMut(usize) -> T) -> Result<Self, PoolError> {
        let block = Block::new(Layout::new::<Slot<T>>())?;
        // Drops the copies made so far if `init` panics.
        struct Partial<'a, T>(&'a Block, usize, PhantomData<T>);
        impl<T> Drop for Partial<'_, T> {
            fn drop(&mut self) {
                for i in 0..self.1 {
                    // SAFETY: copies `0..self.1` were written below.
                    unsafe { core::ptr::drop_in_place(self.0.at(i).cast::<Slot<T>>()) };
                }
            }
        }
        let mut partial = Partial::<T>(&block, 0, PhantomData);
        for i in 0..thread::limit() {
            // SAFETY: index `i`'s copy is writable, aligned for `Slot<T>` and not yet used.
            unsafe { block.at(i).cast::<Slot<T>>().write(Slot { guard: Guard::new(), value: init(i) }) };
            partial.1 = i + 1;
        }
        core::mem::forget(partial);
        // SAFETY: `into_raw` never returns null.
        Ok(PerCpu { ptr: block.into_raw().cast(), _owns: PhantomData })
    }

    /// The number of copies: [`possible_cpus`](crate::possible_cpus) (capped at
    /// [`guard::MAX_CPUS`](crate::guard::MAX_CPUS)). Every index the kernel gives is below it.
    #[inline]
    pub fn len(&self) -> usize {
        thread::limit()
    }

    /// Always false: a machine has at least one CPU.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The copy of `index`, or `None` past [`len`](Self::len).
    #[inline]
    pub fn get(&self, index: usize) -> Option<&T> {
        // SAFETY: `index < len`.
        (index < self.len()).then(|| unsafe { &self.at_unchecked(index).value })
    }

    /// The copies with their indices.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, &T)> + '_ {
        // SAFETY: every `i < len`.
        (0..self.len()).map(|i| (i, unsafe { &self.at_unchecked(i).value }))
    }

    /// The copies, mutably (no other thread can hold a reference).
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (usize, &mut T)> + '_ {
        let ptr = self.ptr;
        // SAFETY: every `i < len` is a distinct copy, and `&mut self` excludes other references.
        (0..self.len()).map(move |i| (i, unsafe { &mut (*Self::slot_ptr(ptr, i).cast_mut()).value }))
    }

    #[inline(always)]
    fn slot_ptr(ptr: NonNull<Slot<T>>, index: usize) -> *const Slot<T> {
        slot_at(ptr, index)
    }

    /// The slot of `index`, guard included.
    ///
    /// # Safety
    /// `index < len()`.
    #[inline(always)]
    unsafe fn at_unchecked(&self, index: usize) -> &Slot<T> {
        // SAFETY: the caller's contract: a live, initialised copy of this block.
        unsafe { &*slot_at(self.ptr, index) }
    }
}

/// Index `index`'s slot of a strided block whose index-0 slot is `first`.
#[inline(always)]
fn slot_at<V>(first: NonNull<Slot<V>>, index: usize) -> *const Slot<V> {
    first.as_ptr().wrapping_byte_add(index << pool::STRIDE_SHIFT)
}

/// Per-index storage the [driver](crate::retry) walks: index `i`'s slot is `i` strides after
/// index 0's, and index `len()` is the spare.
///
/// # Safety
/// `first()` is index 0's slot of a live pool block whose slots `0..=limit()` are all valid
/// `Slot<Value>`s (the spare's is all zero) for as long as `self` lives.
pub(crate) unsafe trait Slots {
    /// What each slot holds after its guard.
    type Value;
    /// How the slots are indexed.
    type Index: Index;

    /// Index 0's slot.
    fn first(&self) -> NonNull<Slot<Self::Value>>;

    /// The slot of `index`.
    ///
    /// # Safety
    /// `index <= limit()` (the number of indices; `limit()` itself is the spare).
    #[inline(always)]
    unsafe fn slot_unchecked(&self, index: usize) -> &Slot<Self::Value> {
        // SAFETY: the trait's contract and the caller's.
        unsafe { &*slot_at(self.first(), index) }
    }

    /// The slot of `index`, or `None` past the indices.
    #[inline]
    fn slot(&self, index: usize) -> Option<&Slot<Self::Value>> {
        // SAFETY: `index < limit`.
        (index < thread::limit()).then(|| unsafe { self.slot_unchecked(index) })
    }

    /// The spare index's slot: no critical section ever uses it (see [`pool`]).
    #[inline]
    fn spare(&self) -> &Slot<Self::Value> {
        // SAFETY: `limit()` is the spare, valid by the trait's contract.
        unsafe { self.slot_unchecked(thread::limit()) }
    }
}

// SAFETY: zero-constructed or not, every copy below `len` is initialised; a `T: Zeroable`
// structure's spare copy is valid all-zero (`new` leaves the spare's copy zero too).
unsafe impl<T: Zeroable, I: Index> Slots for PerCpu<T, I> {
    type Value = T;
    type Index = I;
    #[inline(always)]
    fn first(&self) -> NonNull<Slot<T>> {
        self.ptr
    }
}

impl<T: Zeroable, I: Index> PerCpu<T, I> {
    /// All-zero copies (valid for `T`), touching no index's memory: a page of a CPU's range
    /// becomes resident only when that CPU first writes to it.
    ///
    /// # Panics
    /// If the pool cannot provide the memory ([`try_new_zeroed`](Self::try_new_zeroed)).
    pub fn new_zeroed() -> Self {
        Self::try_new_zeroed().unwrap_or_else(|e| panic!("PerCpu::new_zeroed: {e}"))
    }

    /// [`new_zeroed`](Self::new_zeroed), returning the pool's error instead of panicking.
    pub fn try_new_zeroed() -> Result<Self, PoolError> {
        let block = Block::new(Layout::new::<Slot<T>>())?;
        // Pool memory is zero in every index, which is a valid `Slot<T>` (a free guard and a
        // zero `T`), the spare's copy included.
        Ok(PerCpu { ptr: block.into_raw().cast(), _owns: PhantomData })
    }
}

impl<T, I: Index> Drop for PerCpu<T, I> {
    fn drop(&mut self) {
        // SAFETY: the block came from `Block::into_raw` with this layout; it is freed once, after
        // the values (also when one of their `Drop`s panics).
        let _block = unsafe { Block::from_raw(self.ptr.cast(), Layout::new::<Slot<T>>()) };
        if core::mem::needs_drop::<T>() {
            // SAFETY: every copy below `len` is initialised and dropped once. (The spare is the
            // owning collection's to empty.)
            drop_all(self.iter_mut().map(|(_, v)| unsafe { InPlace::new(v) }));
        }
    }
}

/// A value dropped where it lies when this is dropped.
pub(crate) struct InPlace<'a, T>(&'a mut T);

impl<'a, T> InPlace<'a, T> {
    /// # Safety
    /// The value is initialised, and is not used (nor dropped) again after this is dropped.
    #[allow(clippy::new_ret_no_self)]
    pub(crate) unsafe fn new(v: &'a mut T) -> Self {
        InPlace(v)
    }
}

impl<T> Drop for InPlace<'_, T> {
    fn drop(&mut self) {
        // SAFETY: `new`'s contract.
        unsafe { core::ptr::drop_in_place(self.0) };
    }
}

/// Drop every item, like a `Vec` does: an item whose `Drop` panics does not stop the others from
/// being dropped; the first panic resumes afterwards.
pub(crate) fn drop_all<T>(items: impl Iterator<Item = T>) {
    struct Rest<I: Iterator>(I);
    impl<I: Iterator> Drop for Rest<I> {
        fn drop(&mut self) {
            // Runs on the normal path (nothing left) and while unwinding from a panicking drop
            // (the rest; a second panic aborts, as it does for a `Vec`).
            self.0.by_ref().for_each(drop);
        }
    }
    let mut rest = Rest(items);
    for item in rest.0.by_ref() {
        drop(item);
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
