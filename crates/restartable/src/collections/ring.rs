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

    /// Copy one item from `src` into the current CPU's array; false when it is full (or, for a
    /// thread that may not wait for a guard, unreachable).
    ///
    /// # Safety
    /// `src` is readable for one item, and for [`Items::Words`] holds one aligned `usize`.
    pub(crate) unsafe fn push(&self, src: *const u8) -> bool {
        let size = self.items.size();
        loop {
            let full = core::cell::Cell::new(false);
            let path = retry::drive(
                self,
                |head, at| {
                    let c = head.count.load(Relaxed);
                    if c >= self.capacity {
                        full.set(true);
                        return Outcome::CompareFailed;
                    }
                    let dst = items_of(head).wrapping_add(c * size);
                    // SAFETY: array `at.index` is written only by sections on that index and under
                    // its guard; `dst` has room for one item (c < capacity); the count commits
                    // only if it is still `c`.
                    unsafe {
                        match self.items {
                            Items::Words => arch::cbne_store_store::<I>(
                                at,
                                head.count.as_ptr(),
                                c,
                                dst.cast(),
                                src.cast::<usize>().read(),
                                c + 1,
                            ),
                            Items::Bytes(_) => {
                                arch::cbne_memcpy_store::<I>(at, head.count.as_ptr(), c, dst, src, size, c + 1)
                            }
                        }
                    }
                },
                |slow| match slow {
                    Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                        let c = head.count.load(Relaxed);
                        if c >= self.capacity {
                            return false;
                        }
                        // SAFETY: the guard excludes every other access to this array; the
                        // destination has room for one item; an untyped copy keeps padding opaque.
                        unsafe { core::ptr::copy_nonoverlapping(src, items_of(head).add(c * size), size) };
                        head.count.store(c + 1, Release);
                        true
                    }
                    Slow::Spare(_) => false,
                },
                false,
            );
            return match path {
                Path::Fast(Outcome::Committed) | Path::Slow(true) => true,
                Path::Fast(Outcome::CompareFailed) if !full.get() => continue,
                _ => false,
            };
        }
    }

    /// Move the last item of the current CPU's array to `dst`; false when it is empty (or, for
    /// a thread that may not wait for a guard, unreachable).
    ///
    /// # Safety
    /// `dst` is writable for one item.
    pub(crate) unsafe fn pop(&self, dst: *mut u8) -> bool {
        let size = self.items.size();
        loop {
            let empty = core::cell::Cell::new(false);
            let word = core::cell::Cell::new(0usize);
            let path = retry::drive(
                self,
                |head, at| {
                    let c = head.count.load(Relaxed);
                    if c == 0 {
                        empty.set(true);
                        return Outcome::CompareFailed;
                    }
                    let src = items_of(head).wrapping_add((c - 1) * size);
                    // SAFETY: array `at.index` is written only by sections on that index and under
                    // its guard; `src` is a published item; the count commits only if it is still
                    // `c` (and, for words, the item is still the one read).
                    unsafe {
                        match self.items {
                            Items::Words => {
                                let slot = src.cast::<AtomicUsize>();
                                let item = (*slot).load(Relaxed);
                                word.set(item);
                                arch::cbne_cbne_store::<I>(at, head.count.as_ptr(), c, slot.cast(), item, c - 1)
                            }
                            Items::Bytes(_) => {
                                arch::cbne_memcpy_store::<I>(at, head.count.as_ptr(), c, dst, src, size, c - 1)
                            }
                        }
                    }
                },
                |slow| match slow {
                    Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                        let c = head.count.load(Acquire);
                        if c == 0 {
                            return false;
                        }
                        // SAFETY: the guard excludes every other access to this array; the item
                        // at `c - 1` was published by a push; `dst` has room for it.
                        unsafe { core::ptr::copy_nonoverlapping(items_of(head).add((c - 1) * size), dst, size) };
                        head.count.store(c - 1, Relaxed);
                        true
                    }
                    Slow::Spare(_) => false,
                },
                false,
            );
            return match path {
                Path::Fast(Outcome::Committed) => {
                    if self.items == Items::Words {
                        // SAFETY: the caller's contract (one word).
                        unsafe { dst.cast::<usize>().write_unaligned(word.get()) };
                    }
                    true
                }
                Path::Slow(true) => true,
                Path::Fast(Outcome::CompareFailed) if !empty.get() => continue,
                _ => false,
            };
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
