//! The per-CPU array shared by [`Buffer`](super::Buffer) (boxed items, stored as pointers) and
//! [`MemcpyBuffer`](super::MemcpyBuffer) (`Copy` items, stored inline): per index a count and
//! `capacity` fixed-size items, LIFO, in the strided per-CPU pool.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::arch::{self, Outcome};
use crate::cpu::Index;
use crate::guard::GuardError;
use crate::percpu::{Slot, Slots};
use crate::pool::{Block, PoolError};
use crate::retry::{self, Path, Slow};
use crate::thread;

/// How items are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Items {
    /// Machine words (pointers): a push is a store then the count's commit, a pop a double
    /// compare.
    Words,
    /// `size` bytes each, copied in and out inside the section.
    Bytes(usize),
}

impl Items {
    fn size(self) -> usize {
        match self {
            Items::Words => size_of::<usize>(),
            Items::Bytes(n) => n,
        }
    }
}

/// The head of one index's array; the items follow it.
#[repr(C)]
pub(crate) struct Head {
    count: AtomicUsize,
}

// The items start right after the slot (guard, count): 16 bytes in.
const ITEMS: usize = size_of::<Slot<Head>>();
const _: () = assert!(ITEMS == 16 && core::mem::offset_of!(Slot<Head>, value) + size_of::<Head>() == ITEMS);

/// Per-CPU arrays of `capacity` items.
pub(crate) struct Rings<I: Index> {
    first: NonNull<Slot<Head>>,
    layout: Layout,
    capacity: usize,
    items: Items,
    _index: PhantomData<I>,
}

// SAFETY: `Rings` is plain per-CPU memory accessed through sections, the guard, or atomics; the
// owning collection decides what items mean and bounds its own `Send`/`Sync`.
unsafe impl<I: Index> Send for Rings<I> {}
// SAFETY: as above.
unsafe impl<I: Index> Sync for Rings<I> {}

// SAFETY: a zeroed pool block: every index's slot (the spare's too) is a valid empty array.
unsafe impl<I: Index> Slots for Rings<I> {
    type Value = Head;
    type Index = I;
    #[inline(always)]
    fn first(&self) -> NonNull<Slot<Head>> {
        self.first
    }
}

/// The first item of an array whose head is `head`.
#[inline(always)]
fn items_of(head: &Head) -> *mut u8 {
    (head as *const Head).wrapping_add(1).cast::<u8>().cast_mut()
}

impl<I: Index> Rings<I> {
    /// Empty arrays of `capacity` items (touching no index's memory).
    pub(crate) fn new(capacity: usize, items: Items) -> Result<Self, PoolError> {
        let too_large = PoolError::TooLarge { size: usize::MAX, align: 16 };
        let bytes = capacity.checked_mul(items.size()).and_then(|b| b.checked_add(ITEMS)).ok_or(too_large.clone())?;
        let layout = Layout::from_size_align(bytes, 16).map_err(|_| too_large)?;
        let first = Block::new(layout)?.into_raw().cast();
        Ok(Rings { first, layout, capacity, items, _index: PhantomData })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copy one `T` from `src` into the current CPU's array; false when it is full (or, for a
    /// thread that may not wait for a guard, unreachable). One section: the count is read,
    /// compared with the capacity, the item stored and the count committed.
    ///
    /// # Safety
    /// `src` is readable for one `T`, whose size is the arrays' item size; for [`Items::Words`]
    /// `T` is `usize`.
    #[inline(always)]
    pub(crate) unsafe fn push<T>(&self, src: *const T) -> bool {
        debug_assert_eq!(size_of::<T>(), self.items.size());
        let size = size_of::<T>();
        let path = retry::drive(
            self,
            |head, at| {
                // SAFETY: array `at.index` is written only by sections on that index and under its
                // guard; the section stores the item below the capacity and commits the count
                // only on that index; `src` is the caller's.
                unsafe { arch::ring_push_item::<I, T>(at, head.count.as_ptr(), self.capacity, src) }
            },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    let c = head.count.load(Relaxed);
                    if c >= self.capacity {
                        return false;
                    }
                    // SAFETY: the guard excludes every other access to this array; the
                    // destination has room for one item; an untyped copy keeps padding opaque.
                    unsafe { core::ptr::copy_nonoverlapping(src.cast::<u8>(), items_of(head).add(c * size), size) };
                    head.count.store(c + 1, Release);
                    true
                }
                Slow::Spare(_) => false,
            },
            false,
        );
        // A compare failure is the full array: nothing else is compared.
        matches!(path, Path::Fast(Outcome::Committed) | Path::Slow(true))
    }

    /// Move the last item of the current CPU's array to `dst`; false when it is empty (or, for
    /// a thread that may not wait for a guard, unreachable). One section: the count is read and
    /// tested, the item copied out, the count committed.
    ///
    /// # Safety
    /// `dst` is writable for one `T`, whose size is the arrays' item size; for [`Items::Words`]
    /// `T` is `usize`.
    #[inline(always)]
    pub(crate) unsafe fn pop<T>(&self, dst: *mut T) -> bool {
        debug_assert_eq!(size_of::<T>(), self.items.size());
        let size = size_of::<T>();
        let path = retry::drive(
            self,
            |head, at| {
                // SAFETY: array `at.index` is written only by sections on that index and under its
                // guard; the section copies the published item at `count - 1` to `dst` (the
                // caller's) and commits the count only on that index.
                unsafe { arch::ring_pop_item::<I, T>(at, head.count.as_ptr(), dst) }
            },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    let c = head.count.load(Acquire);
                    if c == 0 {
                        return false;
                    }
                    // SAFETY: the guard excludes every other access to this array; the item
                    // at `c - 1` was published by a push; `dst` has room for it.
                    unsafe {
                        core::ptr::copy_nonoverlapping(items_of(head).add((c - 1) * size), dst.cast::<u8>(), size)
                    };
                    head.count.store(c - 1, Relaxed);
                    true
                }
                Slow::Spare(_) => false,
            },
            false,
        );
        // A compare failure is the empty array.
        matches!(path, Path::Fast(Outcome::Committed) | Path::Slow(true))
    }

    /// Copy up to `n` of the `n` contiguous `T`s at `src` into the current CPU's array in one
    /// section, as many as fit (`k`): the last `k` when `FROM_END`, else the first `k`. Returns
    /// `k` (0 when the array is full, or out of reach of a thread that may not wait).
    ///
    /// # Safety
    /// `src` is readable for `n` `T`s, whose size is the arrays' item size (`usize` for
    /// [`Items::Words`]).
    pub(crate) unsafe fn push_many<T, const FROM_END: bool>(&self, src: *const T, n: usize) -> usize {
        debug_assert_eq!(size_of::<T>(), self.items.size());
        if n == 0 {
            return 0;
        }
        let size = size_of::<T>();
        let first = |k: usize| if FROM_END { n - k } else { 0 };
        let mut args = [self.capacity, n, 0];
        let args_ptr: *mut [usize; 3] = &mut args;
        let path = retry::drive(
            self,
            // SAFETY: array `at.index` is written only by sections on that index and under its
            // guard; the section copies at most the free room's worth of the caller's items and
            // commits the count only on that index; `args` is a live local.
            |head, at| unsafe { arch::ring_push_many::<I, T, FROM_END>(at, head.count.as_ptr(), src, args_ptr) },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    let c = head.count.load(Relaxed);
                    let k = n.min(self.capacity.saturating_sub(c));
                    // SAFETY: the guard excludes every other access to this array; room for `k`
                    // items; the source is the caller's.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            src.add(first(k)).cast::<u8>(),
                            items_of(head).add(c * size),
                            k * size,
                        )
                    };
                    head.count.store(c + k, Release);
                    k
                }
                Slow::Spare(_) => 0,
            },
            false,
        );
        match path {
            // SAFETY: the section wrote `args[2]` before committing.
            Path::Fast(Outcome::Committed) => unsafe { (*args_ptr)[2] },
            Path::Fast(_) => 0, // full
            Path::Slow(k) => k,
        }
    }

    /// Move up to `max` items, the last ones pushed on the current CPU's array (in the order they
    /// were pushed), to `dst` in one section; the number moved.
    ///
    /// # Safety
    /// `dst` is writable for `max` `T`s, whose size is the arrays' item size.
    pub(crate) unsafe fn pop_many<T>(&self, dst: *mut T, max: usize) -> usize {
        debug_assert_eq!(size_of::<T>(), self.items.size());
        if max == 0 {
            return 0;
        }
        let size = size_of::<T>();
        let mut args = [max, 0];
        let args_ptr: *mut [usize; 2] = &mut args;
        let path = retry::drive(
            self,
            // SAFETY: array `at.index` is written only by sections on that index and under its
            // guard; the section copies published items to the caller's `dst` and commits the
            // count only on that index; `args` is a live local.
            |head, at| unsafe { arch::ring_pop_many::<I, T>(at, head.count.as_ptr(), dst, args_ptr) },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    let c = head.count.load(Acquire);
                    let k = max.min(c);
                    // SAFETY: the guard excludes every other access to this array; the last
                    // `k` items are published; `dst` has room for them.
                    unsafe {
                        core::ptr::copy_nonoverlapping(items_of(head).add((c - k) * size), dst.cast::<u8>(), k * size)
                    };
                    head.count.store(c - k, Relaxed);
                    k
                }
                Slow::Spare(_) => 0,
            },
            false,
        );
        match path {
            // SAFETY: the section wrote `args[1]` before committing.
            Path::Fast(Outcome::Committed) => unsafe { (*args_ptr)[1] },
            Path::Fast(_) => 0, // empty
            Path::Slow(k) => k,
        }
    }

    /// Move every item of CPU `cpu`'s array to `dst` (oldest first) through the guard; the
    /// number moved. Nothing is allocated while the guard is held.
    ///
    /// # Safety
    /// `dst` is writable for `capacity` items.
    pub(crate) unsafe fn drain_cpu(&self, cpu: usize, dst: *mut u8) -> Result<usize, GuardError> {
        let slot = self.slot(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: thread::limit() })?;
        if slot.value.count.load(Relaxed) == 0 {
            return Ok(0);
        }
        let _stop = slot.guard.stop::<I>(cpu)?;
        let c = slot.value.count.swap(0, Acquire);
        // SAFETY: the first `c` items are published and now ours; `dst` has room for them.
        unsafe { core::ptr::copy_nonoverlapping(items_of(&slot.value), dst, c * self.items.size()) };
        Ok(c)
    }

    /// The number of items on each CPU (a snapshot).
    pub(crate) fn len_per_cpu(&self) -> Vec<usize> {
        (0..thread::limit()).filter_map(|i| self.slot(i)).map(|s| s.value.count.load(Relaxed)).collect()
    }

    /// Every item of every CPU, for `Drop` (`&mut self`: no other thread can reach any array).
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = *const u8> + '_ {
        let size = self.items.size();
        (0..thread::limit()).flat_map(move |i| {
            // SAFETY: `i` is below the number of indices.
            let head = unsafe { &self.slot_unchecked(i).value };
            let (items, c) = (items_of(head).cast_const(), head.count.swap(0, Relaxed));
            (0..c).map(move |k| items.wrapping_add(k * size))
        })
    }
}

impl<I: Index> Drop for Rings<I> {
    fn drop(&mut self) {
        // SAFETY: the block came from `Block::into_raw` with this layout; it is freed once.
        drop(unsafe { Block::from_raw(self.first.cast(), self.layout) });
    }
}
