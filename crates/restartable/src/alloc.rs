//! [`PerCpuAlloc<A>`]: per-CPU caches of small objects in front of any [`GlobalAlloc`].
//!
//! ```
//! use std::alloc::{GlobalAlloc, Layout, System};
//! use restartable::alloc::PerCpuAlloc;
//!
//! // The program's allocator (any binary: add these two lines):
//! #[global_allocator]
//! static GLOBAL: PerCpuAlloc = PerCpuAlloc::new(System);
//!
//! fn main() {
//!     let v: Vec<u64> = (0..100).collect(); // served by the current CPU's cache
//!     assert_eq!(v.iter().sum::<u64>(), 4950);
//!     drop(v); // back into the cache of the CPU that frees it
//!
//!     // An instance can also be used directly.
//!     static A: PerCpuAlloc = PerCpuAlloc::new(System);
//!     let layout = Layout::new::<[u64; 4]>();
//!     // SAFETY: a non-zero-size layout; the block is freed once, with the same layout.
//!     unsafe {
//!         let p = A.alloc(layout);
//!         assert!(!p.is_null() && p as usize % layout.align() == 0);
//!         A.dealloc(p, layout);
//!     }
//!     let s = A.stats();
//!     assert!(s.cached_bytes() >= 32); // the block waits in a per-CPU cache (or the depot)
//!     A.trim(); // every CPU's cache and the depot go back to `System`
//!     assert_eq!(A.stats().cached_bytes(), 0);
//! }
//! ```
//!
//! # Design
//!
//! - **Size classes.** Requests of at most [`MAX_SMALL`] (1 KiB) bytes aligned to at most
//!   [`MAX_SMALL_ALIGN`] (16) are rounded up to one of [`CLASSES`] (20 classes: steps of 16 up to
//!   128, then four classes per doubling, so a block wastes at most 25% and usually under 12%).
//!   Everything else goes straight to the inner allocator with the caller's layout. `dealloc`
//!   and `realloc` get the layout back, so the class (or the inner path) is computed again from
//!   it: no header, no lookup. Every small block, whichever path made it, is an inner allocation
//!   of its class's layout (size of the class, alignment [`CLASS_ALIGN`]: the largest power of
//!   two dividing the size, 16 to 64, so that a block of a multiple of 64 bytes covers whole
//!   cache lines and shares none with another block), so any path may free any block.
//!   The classes stop at 1 KiB: above it a per-CPU cache bounded in bytes would hold too few
//!   blocks per class to save much, Rust's growth pattern makes such requests rarer, and a
//!   program writes a block of that size (hundreds of nanoseconds) anyway, so the allocator's
//!   share of the cost is small; glibc's own per-thread cache stops at the same size.
//! - **Per-CPU caches.** One block of the strided per-CPU [pool](crate::pool) holds, for each
//!   CPU, one guard word and one LIFO array per class: a word whose low 16 bits count the cached
//!   blocks and whose upper 48 bits count the pops (hits), then the pointers. An allocation is
//!   one critical section (load, test, copy the top pointer out, commit with one add); a free
//!   is one (store the pointer, commit with one add). The capacity of class `k` is
//!   [`CAPACITY`]`[k]` blocks (64 KiB worth, between 16 and 1024 blocks): at most
//!   [`CPU_CACHE_BYTES`] (1.15 MiB) per CPU, resident only on CPUs that allocate, and only as
//!   far as they fill it. The bound is that large so that the bursts of threads sharing a CPU
//!   fit: a consumer that frees a few hundred blocks, then a producer that allocates as many.
//!   With 16 KiB per class (256 blocks of 64 bytes), two producer/consumer pairs per CPU over
//!   channels of 256 sent 43% of their boxes through the depot, and ran at four fifths of the
//!   speed they run at now, which sends none.
//! - **Depot.** A miss moves a batch ([`BATCH`]`[k]` blocks, 4 KiB worth, 4 to 32) from the
//!   shared depot into the CPU's cache in one section (`cbne_memcpy_store`), or, when the depot is
//!   empty, gets the batch from the inner allocator; a free that finds its cache full moves a
//!   batch out in one section and hands it to the depot. The depot keeps, per class, magazines
//!   of one batch each on two lock-free stacks (full, empty): a flush fills an empty magazine
//!   and publishes it with one compare-exchange, a refill takes the last published one (the
//!   blocks touched most recently) with one, whatever the batch size, and no thread ever waits
//!   for another there (a thread preempted in the middle of a transfer stops nobody; a signal
//!   handler nested in one uses the depot too). It holds at most [`DEPOT_CLASS_BYTES`] (4 MiB)
//!   worth per class and [`DEPOT_BYTES`] (32 MiB) for all classes together; a flush that finds
//!   no empty magazine or no budget left gives its blocks back to the inner allocator. The
//!   bounds are large on purpose: a block handed back to an inner allocator such as glibc's,
//!   freed on another thread and in another order than it was allocated, is seldom returned to
//!   the system (glibc gives back only the top of a heap), while one kept here is used again; on
//!   the benchmark of 256 threads each freeing 4 MiB, a 256 KiB bound per class left two to
//!   three times the resident memory of this one. [`trim`](PerCpuAlloc::trim) empties it.
//! - **Trimming.** [`trim_cpu`](PerCpuAlloc::trim_cpu) stops one CPU's cache through its guard
//!   (the fence restarts any section in flight there), empties as many classes as fit a buffer
//!   of [`MAX_CAPACITY`] pointers on the stack (so a few stops at most), and returns their blocks
//!   to the inner allocator after releasing the guard, then stops it again for the rest;
//!   correct while that CPU allocates. [`trim`](PerCpuAlloc::trim) does it for every CPU and
//!   empties the depot.
//!
//! # Every context
//!
//! - **First use.** The caches are made on the first call (a pool block and one anonymous
//!   mapping for the depot: neither allocates through the global allocator), by whichever
//!   thread gets there first; threads arriving meanwhile, and a call nested inside it (a signal
//!   handler), are served by the inner allocator directly. The library's own first use (mode
//!   decision, registration) allocates nothing, so the very first allocation of the process and
//!   of every thread can run it inside the allocator; a nested first use takes the slow path.
//! - **Nesting.** A call made while the thread holds a guard (a [`Stop`](crate::guard::Stop) of
//!   its own, or a signal handler that interrupted a slow path) never waits for one: the cache
//!   answers "unreachable" and the depot or the inner allocator serves it. The depot takes no
//!   lock, so a call nested anywhere in it (a signal handler) uses it as any other call does. A
//!   call nested inside a batch refill from the inner allocator uses the inner allocator (an inner
//!   allocator that calls back into this one would otherwise start a refill of its own, and so
//!   on without end). The allocator is still only as async-signal-safe as its inner allocator
//!   (glibc's `malloc` is not).
//! - **Threads.** Nothing is per thread: a thread that exits leaves its freed blocks in the
//!   caches of the CPUs it ran on, where the next thread on that CPU uses them.
//! - **`fork`.** Caches are per CPU and sections are atomic; a guard held by a thread that does
//!   not exist in the child is free there (it names its owner's fork generation), every update
//!   it protects is committed by its last store, and every depot operation commits with one
//!   compare-exchange, so the child finds consistent caches and depot (a batch that the absent
//!   thread was moving is leaked in the child, never handed out twice).
//! - **Modes.** In degraded mode (no rseq, valgrind, `RESTARTABLE_FORCE_DEGRADED=1`) the guard is
//!   a per-CPU lock and every operation takes it: correct, slower.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::alloc::System;

use crossbeam_utils::CachePadded;

use crate::arch::{self, Outcome};
use crate::cpu::Cpu;
use crate::guard::{self, GuardError};
use crate::percpu::{Slot, Slots};
use crate::pool::Block;
use crate::retry::{self, Path, Slow};
use crate::thread;

mod depot;
use depot::Depot;

/// The largest request served from the per-CPU caches.
pub const MAX_SMALL: usize = 1024;
/// The largest alignment served from the per-CPU caches (glibc's `malloc` alignment).
pub const MAX_SMALL_ALIGN: usize = 16;
/// The number of size classes.
pub const NUM_CLASSES: usize = 20;
/// The size classes, in bytes.
pub const CLASSES: [usize; NUM_CLASSES] =
    [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024];

/// Bytes of each class a CPU's cache may hold (before the clamp to 16..=[`MAX_CAPACITY`] blocks).
const CLASS_CACHE_BYTES: usize = 64 << 10;
/// The most blocks of one class a CPU's cache holds.
pub const MAX_CAPACITY: usize = 1024;
/// Bytes of each class one batch moves (before the clamp to 4..=32 blocks).
const BATCH_BYTES: usize = 4 << 10;
/// The most blocks of one class the depot keeps, in bytes.
pub const DEPOT_CLASS_BYTES: usize = 4 << 20;
/// The largest batch.
const MAX_BATCH: usize = 32;

const fn clamp(v: usize, lo: usize, hi: usize) -> usize {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// Blocks of each class one CPU's cache holds at most.
pub const CAPACITY: [usize; NUM_CLASSES] = {
    let mut c = [0; NUM_CLASSES];
    let mut k = 0;
    while k < NUM_CLASSES {
        c[k] = clamp(CLASS_CACHE_BYTES / CLASSES[k], 16, MAX_CAPACITY);
        k += 1;
    }
    c
};

/// Blocks of each class moved by one refill or flush.
pub const BATCH: [usize; NUM_CLASSES] = {
    let mut c = [0; NUM_CLASSES];
    let mut k = 0;
    while k < NUM_CLASSES {
        c[k] = clamp(BATCH_BYTES / CLASSES[k], 4, MAX_BATCH);
        k += 1;
    }
    c
};

/// The most bytes one CPU's cache holds.
pub const CPU_CACHE_BYTES: usize = {
    let (mut sum, mut k) = (0, 0);
    while k < NUM_CLASSES {
        sum += CAPACITY[k] * CLASSES[k];
        k += 1;
    }
    sum
};

/// The most bytes the depot holds, all classes together.
pub const DEPOT_BYTES: usize = 32 << 20;

/// Per class: the word offset of its array (count word, then the pointers) from the CPU's head.
const RING: [usize; NUM_CLASSES] = {
    let mut off = [0; NUM_CLASSES];
    let (mut at, mut k) = (HEAD_WORDS, 0);
    while k < NUM_CLASSES {
        off[k] = at;
        at += 1 + CAPACITY[k];
        k += 1;
    }
    off
};

/// The class of every size rounded up to 16, indexed by `(size + 15) / 16`.
const CLASS_OF: [u8; MAX_SMALL / 16 + 1] = {
    let mut t = [0u8; MAX_SMALL / 16 + 1];
    let (mut i, mut k) = (0, 0);
    while i <= MAX_SMALL / 16 {
        while CLASSES[k] < i * 16 {
            k += 1;
        }
        t[i] = k as u8;
        i += 1;
    }
    t
};

const _: () = {
    assert!(CLASSES[NUM_CLASSES - 1] == MAX_SMALL);
    assert!(CAPACITY[0] <= MAX_CAPACITY && MAX_CAPACITY < 1 << 16);
    let mut k = 0;
    while k < NUM_CLASSES {
        assert!(CLASSES[k].is_multiple_of(MAX_SMALL_ALIGN) && BATCH[k] <= CAPACITY[k] && BATCH[k] <= MAX_BATCH);
        k += 1;
    }
};

/// The class serving `layout`, or `None` for the inner allocator.
#[inline(always)]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() <= MAX_SMALL && layout.align() <= MAX_SMALL_ALIGN {
        Some(CLASS_OF[(layout.size() + 15) >> 4] as usize)
    } else {
        None
    }
}

/// The alignment of class `k`'s blocks: the largest power of two that divides the size, from
/// 16 up to a cache line (64). A block of a multiple of 64 bytes then covers whole lines and
/// shares none with a neighbour (a 64-byte box at glibc's 16-byte alignment spans two lines and
/// shares each with another block: a producer writing one box and a consumer on another CPU
/// reading the next fight over the line).
pub const CLASS_ALIGN: [usize; NUM_CLASSES] = {
    let mut a = [0; NUM_CLASSES];
    let mut k = 0;
    while k < NUM_CLASSES {
        let low = CLASSES[k] & CLASSES[k].wrapping_neg();
        a[k] = clamp(low, MAX_SMALL_ALIGN, 64);
        k += 1;
    }
    a
};

/// The inner allocator's layout of every block of class `k`.
#[inline(always)]
fn class_layout(k: usize) -> Layout {
    // SAFETY: a class size is a non-zero multiple of 16 far below isize::MAX, and its
    // alignment a power of two.
    unsafe { Layout::from_size_align_unchecked(CLASSES[k], CLASS_ALIGN[k]) }
}

std::thread_local! {
    /// Set while this thread fills a batch from the inner allocator (`PerCpuAlloc::alloc_slow`).
    /// A `const` cell without `Drop`: no allocation and no destructor registration, so it is
    /// usable from the first allocation of a thread to its last.
    static REFILLING: Cell<bool> = const { Cell::new(false) };
}

/// The low bits of a class's count word: the cached blocks.
const COUNT: usize = 0xffff;
/// One pop in the upper bits of a count word.
const HIT: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// The per-CPU caches.

/// The head of one CPU's caches: counters written on slow paths, then (at word [`RING`]`[k]`)
/// each class's count word and pointers. 56 bytes, so that after the 8-byte guard the first
/// class starts on the slot's second cache line.
#[repr(C)]
struct Head {
    misses: AtomicU64,
    refills: AtomicU64,
    flushes: AtomicU64,
    _reserved: [AtomicU64; 4],
}

const HEAD_WORDS: usize = size_of::<Head>() / 8;
const _: () = assert!(size_of::<Slot<Head>>() == 64 && core::mem::offset_of!(Slot<Head>, value) == 8);

/// The pool block's layout: every CPU's slot (guard, head, rings).
fn caches_layout() -> Layout {
    let words = RING[NUM_CLASSES - 1] + 1 + CAPACITY[NUM_CLASSES - 1];
    // SAFETY: a small non-zero size, a power-of-two alignment.
    unsafe { Layout::from_size_align_unchecked(8 + words * 8, 64) }
}

/// The caches as the driver walks them.
#[derive(Clone, Copy)]
struct Caches {
    first: NonNull<Slot<Head>>,
}

// SAFETY: `first` is index 0's slot of a live pool block of `caches_layout()`, zeroed when made:
// every index's slot (the spare's included) is a free guard, zero counters and empty rings,
// and the block is never freed while a `Caches` exists (only `PerCpuAlloc::drop` frees it).
unsafe impl Slots for Caches {
    type Value = Head;
    type Index = Cpu;
    #[inline(always)]
    fn first(&self) -> NonNull<Slot<Head>> {
        self.first
    }
}

/// Class `k`'s count word in the head `h`.
#[inline(always)]
fn ring(h: &Head, k: usize) -> *mut usize {
    (h as *const Head).cast::<usize>().cast_mut().wrapping_add(RING[k])
}

/// Class `k`'s count word, for atomic access.
///
/// # Safety
/// `h` is a head of a live caches block.
#[inline(always)]
unsafe fn word(h: &Head, k: usize) -> &AtomicUsize {
    // SAFETY: the word is inside the slot (the caller's contract), aligned.
    unsafe { &*ring(h, k).cast::<AtomicUsize>() }
}

/// Class `k`'s pointer `i`.
///
/// # Safety
/// As [`word`], and `i < CAPACITY[k]`.
#[inline(always)]
unsafe fn item(h: &Head, k: usize, i: usize) -> &AtomicUsize {
    // SAFETY: the caller's contract: inside the class's array.
    unsafe { &*ring(h, k).add(1 + i).cast::<AtomicUsize>() }
}

impl Caches {
    /// Pop a block of class `k` from the current CPU's cache: its address, or 0 when the cache is
    /// empty (or out of reach of a thread that may not wait for a guard). Inline: one section;
    /// an abort, a stop or a thread without an area goes to the driver, out of line.
    #[inline(always)]
    fn pop(self, k: usize) -> usize {
        let mut out = 0usize;
        // SAFETY: as in `pop_driven`.
        match retry::one_section(&self, |h, at| unsafe { arch::cache_pop::<Cpu>(at, ring(h, k), &mut out) }) {
            Outcome::Committed => out,
            Outcome::CompareFailed => 0,
            Outcome::Aborted | Outcome::Stopped => self.pop_driven(k),
        }
    }

    /// [`pop`](Self::pop) through the driver (retries, the slow path).
    #[cold]
    #[inline(never)]
    fn pop_driven(self, k: usize) -> usize {
        let mut out = 0usize;
        // (The inline attempt failed: in degraded mode go straight to the lock.)
        let path = retry::drive_again(
            &self,
            // SAFETY: class `k`'s array of index `at.index` is written only by sections on that
            // index and under its guard; the section copies its top pointer to `out` (ours) and
            // commits the count only on that index.
            |h, at| unsafe { arch::cache_pop::<Cpu>(at, ring(h, k), &mut out) },
            |slow| match slow {
                // SAFETY: the guard excludes every other access to this array.
                Slow::Stopped(h, _) | Slow::Degraded(h, _) => unsafe {
                    let w = word(h, k).load(Ordering::Acquire);
                    let c = w & COUNT;
                    if c == 0 {
                        return 0;
                    }
                    let p = item(h, k, c - 1).load(Ordering::Relaxed);
                    word(h, k).store(w - 1 + HIT, Ordering::Relaxed);
                    p
                },
                Slow::Spare(_) => 0,
            },
            false,
        );
        match path {
            Path::Fast(Outcome::Committed) => out,
            Path::Fast(_) => 0,
            Path::Slow(p) => p,
        }
    }

    /// Push `p` (class `k`) on the current CPU's cache; false when it is full (or out of reach).
    /// Inline: one section, as [`pop`](Self::pop).
    #[inline(always)]
    fn push(self, k: usize, p: usize) -> bool {
        // SAFETY: as in `push_driven`.
        match retry::one_section(&self, |h, at| unsafe { arch::cache_push::<Cpu>(at, ring(h, k), CAPACITY[k], p) }) {
            Outcome::Committed => true,
            Outcome::CompareFailed => false,
            Outcome::Aborted | Outcome::Stopped => self.push_driven(k, p),
        }
    }

    /// [`push`](Self::push) through the driver (retries, the slow path).
    #[cold]
    #[inline(never)]
    fn push_driven(self, k: usize, p: usize) -> bool {
        // (The inline attempt failed: in degraded mode go straight to the lock.)
        let path = retry::drive_again(
            &self,
            // SAFETY: as in `pop`; the section stores below the capacity and commits the count
            // only on that index.
            |h, at| unsafe { arch::cache_push::<Cpu>(at, ring(h, k), CAPACITY[k], p) },
            |slow| match slow {
                // SAFETY: the guard excludes every other access to this array.
                Slow::Stopped(h, _) | Slow::Degraded(h, _) => unsafe {
                    let w = word(h, k).load(Ordering::Relaxed);
                    let c = w & COUNT;
                    if c >= CAPACITY[k] {
                        return false;
                    }
                    item(h, k, c).store(p, Ordering::Relaxed);
                    word(h, k).store(w + 1, Ordering::Release);
                    true
                },
                Slow::Spare(_) => false,
            },
            false,
        );
        matches!(path, Path::Fast(Outcome::Committed) | Path::Slow(true))
    }

    /// Copy as many of `src` (class `k`) as fit into the current CPU's cache in one section,
    /// the first ones; how many.
    fn push_many(self, k: usize, src: &[usize]) -> usize {
        loop {
            let moved = Cell::new(0usize);
            let path = retry::drive(
                &self,
                |h, at| {
                    // SAFETY: a word of this slot, read atomically.
                    let w = unsafe { word(h, k) }.load(Ordering::Relaxed);
                    let c = w & COUNT;
                    let m = src.len().min(CAPACITY[k].saturating_sub(c));
                    moved.set(m);
                    if m == 0 {
                        return Outcome::CompareFailed;
                    }
                    let to = ring(h, k).wrapping_add(1 + c).cast::<u8>();
                    // SAFETY: the array of index `at.index` is written only by sections on that
                    // index and under its guard; `to` has room for `m` pointers (c + m <=
                    // capacity); the count commits only if the word is still `w`.
                    unsafe { arch::cbne_memcpy_store::<Cpu>(at, ring(h, k), w, to, src.as_ptr().cast(), m * 8, w + m) }
                },
                |slow| match slow {
                    // SAFETY: the guard excludes every other access to this array.
                    Slow::Stopped(h, _) | Slow::Degraded(h, _) => unsafe {
                        let w = word(h, k).load(Ordering::Relaxed);
                        let c = w & COUNT;
                        let m = src.len().min(CAPACITY[k].saturating_sub(c));
                        for (i, &p) in src[..m].iter().enumerate() {
                            item(h, k, c + i).store(p, Ordering::Relaxed);
                        }
                        word(h, k).store(w + m, Ordering::Release);
                        m
                    },
                    Slow::Spare(_) => 0,
                },
                false,
            );
            return match path {
                Path::Fast(Outcome::Committed) => moved.get(),
                Path::Fast(_) if moved.get() != 0 => continue, // the word moved: look again
                Path::Fast(_) => 0,
                Path::Slow(m) => m,
            };
        }
    }

    /// Move up to `dst.len()` blocks of class `k` (the last pushed) from the current CPU's cache
    /// to `dst` in one section; how many.
    fn pop_many(self, k: usize, dst: &mut [usize]) -> usize {
        let out = dst.as_mut_ptr();
        let max = dst.len();
        loop {
            let moved = Cell::new(0usize);
            let path = retry::drive(
                &self,
                |h, at| {
                    // SAFETY: a word of this slot, read atomically.
                    let w = unsafe { word(h, k) }.load(Ordering::Relaxed);
                    let c = w & COUNT;
                    let m = max.min(c);
                    moved.set(m);
                    if m == 0 {
                        return Outcome::CompareFailed;
                    }
                    let from = ring(h, k).wrapping_add(1 + c - m).cast::<u8>();
                    // SAFETY: as in `push_many`; `from` holds `m` published pointers, `out` has
                    // room for `max >= m`.
                    unsafe { arch::cbne_memcpy_store::<Cpu>(at, ring(h, k), w, out.cast(), from, m * 8, w - m) }
                },
                |slow| match slow {
                    // SAFETY: the guard excludes every other access to this array.
                    Slow::Stopped(h, _) | Slow::Degraded(h, _) => unsafe {
                        let w = word(h, k).load(Ordering::Acquire);
                        let c = w & COUNT;
                        let m = max.min(c);
                        for i in 0..m {
                            out.add(i).write(item(h, k, c - m + i).load(Ordering::Relaxed));
                        }
                        word(h, k).store(w - m, Ordering::Relaxed);
                        m
                    },
                    Slow::Spare(_) => 0,
                },
                false,
            );
            return match path {
                Path::Fast(Outcome::Committed) => moved.get(),
                Path::Fast(_) if moved.get() != 0 => continue,
                Path::Fast(_) => 0,
                Path::Slow(m) => m,
            };
        }
    }

    /// Count one event in a counter of the calling thread's CPU (it may move at once: counters
    /// say roughly where, exactly how many).
    fn count(self, counter: impl FnOnce(&Head) -> &AtomicU64) {
        let i = crate::current_cpu().min(thread::limit() - 1);
        // SAFETY: `i` is below the number of indices.
        counter(unsafe { &self.slot_unchecked(i).value }).fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The allocator.

/// Per-CPU caches of small blocks in front of the allocator `A` (see the [module](self) docs).
///
/// Use it as the program's allocator, or call it directly; [`stats`](Self::stats) reports
/// what each CPU's cache holds and did, [`trim`](Self::trim) and [`trim_cpu`](Self::trim_cpu)
/// give cached memory back to `A`.
pub struct PerCpuAlloc<A: GlobalAlloc = System> {
    /// Index 0's slot of the caches block, or null before the first use.
    caches: AtomicPtr<Slot<Head>>,
    /// `UNINIT`, `READY`, `FAILED`, or `OWNER | token` of the thread making the caches.
    state: AtomicU32,
    depot: Depot,
    /// Small blocks the inner allocator made and took back (each block counted once).
    from_inner: CachePadded<AtomicU64>,
    to_inner: CachePadded<AtomicU64>,
    /// Small requests served by the inner allocator directly (no cache and no depot in reach).
    direct: CachePadded<AtomicU64>,
    inner: A,
}

const UNINIT: u32 = 0;
const READY: u32 = 1;
const FAILED: u32 = 2;
const OWNER: u32 = 1 << 31;

impl<A: GlobalAlloc> PerCpuAlloc<A> {
    /// Caches in front of `inner`. Nothing is reserved until the first allocation.
    pub const fn new(inner: A) -> Self {
        PerCpuAlloc {
            caches: AtomicPtr::new(ptr::null_mut()),
            state: AtomicU32::new(UNINIT),
            depot: Depot::new(),
            from_inner: CachePadded::new(AtomicU64::new(0)),
            to_inner: CachePadded::new(AtomicU64::new(0)),
            direct: CachePadded::new(AtomicU64::new(0)),
            inner,
        }
    }

    /// The inner allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The caches, once made.
    #[inline(always)]
    fn caches(&self) -> Option<Caches> {
        NonNull::new(self.caches.load(Ordering::Acquire)).map(|first| Caches { first })
    }

    /// The caches, making them if no thread has yet; `None` while another thread makes them, in
    /// a call nested inside their making, or if they could not be made.
    #[cold]
    #[inline(never)]
    fn caches_or_init(&self) -> Option<Caches> {
        if let Some(c) = self.caches() {
            return Some(c);
        }
        let me = guard::owner_token();
        let s = self.state.load(Ordering::Acquire);
        let ours = match s {
            UNINIT => self.state.compare_exchange(UNINIT, OWNER | me, Ordering::Acquire, Ordering::Relaxed).is_ok(),
            READY => return self.caches(),
            FAILED => return None,
            // Made by a thread that does not exist in this (forked) child: start again.
            _ if guard::stale_owner(s & !OWNER) => {
                self.state.compare_exchange(s, OWNER | me, Ordering::Acquire, Ordering::Relaxed).is_ok()
            }
            // Another thread is making them (or this one, and this call is nested): the inner
            // allocator serves this call rather than waiting.
            _ => false,
        };
        if !ours {
            return None;
        }
        match self.make() {
            Ok(()) => {
                self.state.store(READY, Ordering::Release);
                self.caches()
            }
            // A signal handler that interrupted the pool on this thread: try again later.
            Err(Some(crate::pool::PoolError::Busy)) => {
                self.state.store(UNINIT, Ordering::Release);
                None
            }
            Err(_) => {
                self.state.store(FAILED, Ordering::Release);
                None
            }
        }
    }

    /// Make the depot's mapping and the caches block (neither allocates through the global
    /// allocator).
    fn make(&self) -> Result<(), Option<crate::pool::PoolError>> {
        if !self.depot.map() {
            return Err(None);
        }
        let block = match Block::new(caches_layout()) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: the mapping made above, unused (the caches are not published).
                unsafe { self.depot.unmap() };
                return Err(Some(e));
            }
        };
        self.caches.store(block.into_raw().as_ptr().cast(), Ordering::Release);
        Ok(())
    }

    /// Move one batch of class `k` from the depot to `dst` (at least [`BATCH`]`[k]` long); how
    /// many (0 when the depot has none of the class).
    #[inline]
    fn depot_pop(&self, k: usize, dst: &mut [usize]) -> usize {
        self.depot.pop(k, dst)
    }

    /// Give blocks of class `k` to the depot, and what it has no room for to the inner allocator.
    fn give_back(&self, k: usize, blocks: &[usize]) {
        let m = self.depot.push(k, blocks);
        self.free_to_inner(k, &blocks[m..]);
    }

    fn free_to_inner(&self, k: usize, blocks: &[usize]) {
        if blocks.is_empty() {
            return;
        }
        for &p in blocks {
            // SAFETY: every small block is an inner allocation of its class's layout, and each
            // is freed once (it left every cache and the depot).
            unsafe { self.inner.dealloc(p as *mut u8, class_layout(k)) };
        }
        self.to_inner.fetch_add(blocks.len() as u64, Ordering::Relaxed);
    }

    /// A small allocation the current CPU's cache could not serve.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, k: usize) -> *mut u8 {
        // (Caches made just now are empty: no second look.)
        let Some(c) = self.caches().or_else(|| self.caches_or_init()) else { return self.alloc_direct(k) };
        c.count(|h| &h.misses);
        let mut buf = [0usize; MAX_BATCH];
        let batch = &mut buf[..BATCH[k]];
        let mut n = self.depot_pop(k, batch);
        if n == 0 {
            // An inner allocator that calls back into this one (directly or through the global
            // allocator) would find this cache empty again and start a batch of its own, and so
            // on without end: a call nested inside a batch takes one block directly.
            if REFILLING.get() {
                return self.alloc_direct(k);
            }
            REFILLING.set(true);
            while n < batch.len() {
                // SAFETY: a class layout (non-zero size).
                let p = unsafe { self.inner.alloc(class_layout(k)) };
                if p.is_null() {
                    break;
                }
                batch[n] = p as usize;
                n += 1;
            }
            REFILLING.set(false);
            self.from_inner.fetch_add(n as u64, Ordering::Relaxed);
            if n == 0 {
                return ptr::null_mut();
            }
        }
        // One block for the caller, the rest into the cache in one section.
        n -= 1;
        let p = batch[n];
        if n > 0 {
            let pushed = c.push_many(k, &batch[..n]);
            if pushed > 0 {
                c.count(|h| &h.refills);
            }
            self.give_back(k, &batch[pushed..n]);
        }
        p as *mut u8
    }

    /// Class `k` from the inner allocator directly (no cache in reach).
    fn alloc_direct(&self, k: usize) -> *mut u8 {
        self.direct.fetch_add(1, Ordering::Relaxed);
        // SAFETY: a class layout (non-zero size).
        let p = unsafe { self.inner.alloc(class_layout(k)) };
        if !p.is_null() {
            self.from_inner.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// A small free the current CPU's cache had no room for.
    #[cold]
    #[inline(never)]
    fn dealloc_slow(&self, k: usize, p: usize) {
        let Some(c) = self.caches_or_init() else {
            self.direct.fetch_add(1, Ordering::Relaxed);
            return self.free_to_inner(k, &[p]);
        };
        // Move a batch out in one section, keep `p` (the hottest block) in the cache.
        let mut buf = [0usize; MAX_BATCH + 1];
        let n = c.pop_many(k, &mut buf[..BATCH[k]]);
        if n > 0 {
            c.count(|h| &h.flushes);
        }
        let n = if n > 0 && c.push(k, p) {
            n
        } else {
            buf[n] = p;
            n + 1
        };
        self.give_back(k, &buf[..n]);
    }

    /// Give every block cached on CPU `cpu` back to the inner allocator, through that CPU's
    /// guard (a remote operation: correct while that CPU allocates and frees). Returns the bytes
    /// given back.
    ///
    /// # Errors
    /// [`GuardError::OutOfRange`] past the CPUs; [`GuardError::Busy`] when called while this
    /// thread holds a guard and that CPU's is taken; [`GuardError::Fence`] if the fence fails.
    /// (When a CPU caches more than one stop takes, an error at a later stop leaves the classes
    /// already emptied given back.)
    pub fn trim_cpu(&self, cpu: usize) -> Result<usize, GuardError> {
        let limit = thread::limit();
        let out_of_range = GuardError::OutOfRange { index: cpu, limit };
        let Some(c) = self.caches() else { return if cpu < limit { Ok(0) } else { Err(out_of_range) } };
        let slot = c.slot(cpu).ok_or(out_of_range)?;
        let h = &slot.value;
        // SAFETY: the slot's words (of a live block).
        let empty_from =
            |first: usize| (first..NUM_CLASSES).all(|k| unsafe { word(h, k) }.load(Ordering::Relaxed) & COUNT == 0);
        // Collected under the guard into memory that exists before it is taken: as many whole
        // classes as fit (one always does: no class holds more than `MAX_CAPACITY`), freed after
        // the guard is released; then the next classes, under the guard again.
        let mut buf = [0usize; MAX_CAPACITY];
        let (mut next, mut bytes) = (0, 0);
        while next < NUM_CLASSES && !empty_from(next) {
            let first = next;
            let mut lens = [0usize; NUM_CLASSES];
            {
                let _stop = slot.guard.stop::<Cpu>(cpu)?;
                let mut at = 0;
                while next < NUM_CLASSES {
                    // SAFETY: the guard excludes every other access to this CPU's arrays; the
                    // first `n` pointers of class `next` are published.
                    unsafe {
                        let w = word(h, next).load(Ordering::Acquire);
                        // (Never above the capacity: every push checks it. The bound also makes
                        // sure that the first class of a stop always fits.)
                        let n = (w & COUNT).min(CAPACITY[next]);
                        if at + n > buf.len() {
                            break;
                        }
                        for (i, slot) in buf[at..at + n].iter_mut().enumerate() {
                            *slot = item(h, next, i).load(Ordering::Relaxed);
                        }
                        word(h, next).store(w & !COUNT, Ordering::Relaxed);
                        lens[next] = n;
                        at += n;
                    }
                    next += 1;
                }
            }
            let mut at = 0;
            for (k, &n) in lens.iter().enumerate().skip(first) {
                self.free_to_inner(k, &buf[at..at + n]);
                at += n;
                bytes += n * CLASSES[k];
            }
        }
        Ok(bytes)
    }

    /// Give every cached block back to the inner allocator: each CPU's cache (through its
    /// guard, see [`trim_cpu`](Self::trim_cpu); a CPU this thread could only wait for while it
    /// holds a guard is left as it is) and the depot. Returns the bytes given back.
    pub fn trim(&self) -> usize {
        let mut bytes: usize = (0..thread::limit()).map(|cpu| self.trim_cpu(cpu).unwrap_or(0)).sum();
        if self.caches().is_none() {
            return bytes;
        }
        for (k, size) in CLASSES.iter().enumerate() {
            let mut buf = [0usize; 256];
            loop {
                let n = self.depot_pop(k, &mut buf);
                if n == 0 {
                    break;
                }
                self.free_to_inner(k, &buf[..n]);
                bytes += n * size;
            }
        }
        bytes
    }

    /// A snapshot of every CPU's cache and of the depot.
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            cpus: Vec::new(),
            depot_bytes: 0,
            from_inner: self.from_inner.load(Ordering::Relaxed),
            to_inner: self.to_inner.load(Ordering::Relaxed),
            direct: self.direct.load(Ordering::Relaxed),
        };
        let Some(c) = self.caches() else { return s };
        s.depot_bytes = (0..NUM_CLASSES).map(|k| self.depot.len(k) * CLASSES[k]).sum();
        let limit = thread::limit();
        s.cpus.reserve(limit);
        for cpu in 0..limit {
            // SAFETY: `cpu` is below the number of indices.
            let h = unsafe { &c.slot_unchecked(cpu).value };
            let (mut cached_bytes, mut hits) = (0, 0);
            for (k, size) in CLASSES.iter().enumerate() {
                // SAFETY: a word of a live slot, read atomically.
                let w = unsafe { word(h, k) }.load(Ordering::Relaxed);
                cached_bytes += (w & COUNT) * size;
                hits += (w >> 16) as u64;
            }
            s.cpus.push(CpuStats {
                cpu,
                cached_bytes,
                hits,
                misses: h.misses.load(Ordering::Relaxed),
                refills: h.refills.load(Ordering::Relaxed),
                flushes: h.flushes.load(Ordering::Relaxed),
            });
        }
        s
    }
}

// SAFETY: every block handed out is valid for its layout: small ones are inner allocations of
// their class's layout (size >= the request, alignment >= 16 >= the request's), handed to one owner
// at a time (a pointer leaves a cache in exactly one committed section, the depot with exactly
// one magazine pop), large ones the inner allocator's own for the caller's layout. `dealloc` and
// `realloc` recompute the path from the same layout, so every block goes back where it came
// from. Nothing panics.
unsafe impl<A: GlobalAlloc> GlobalAlloc for PerCpuAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(k) => {
                if let Some(c) = self.caches() {
                    let p = c.pop(k);
                    if p != 0 {
                        return p as *mut u8;
                    }
                }
                self.alloc_slow(k)
            }
            // SAFETY: the caller's contract, forwarded.
            None => unsafe { self.inner.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(k) => {
                if let Some(c) = self.caches()
                    && c.push(k, ptr as usize)
                {
                    return;
                }
                self.dealloc_slow(k, ptr as usize)
            }
            // SAFETY: the caller's contract: `ptr` came from `inner.alloc(layout)` (or realloc).
            None => unsafe { self.inner.dealloc(ptr, layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(_) => {
                // SAFETY: the caller's contract.
                let p = unsafe { self.alloc(layout) };
                if !p.is_null() {
                    // SAFETY: `p` is valid for `layout.size()` bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            // SAFETY: the caller's contract, forwarded.
            None => unsafe { self.inner.alloc_zeroed(layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises that `new_size`, rounded up to the alignment, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: the caller's contract: `ptr` is the inner allocator's, for `layout`.
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            // The block's class holds the new size too.
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                // SAFETY: a non-zero size (the caller's contract).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and distinct; `ptr` is
                    // freed once, with its layout.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

impl<A: GlobalAlloc> Drop for PerCpuAlloc<A> {
    fn drop(&mut self) {
        let Some(c) = self.caches() else { return };
        // `&mut self`: no other thread can reach the caches or the depot.
        for cpu in 0..thread::limit() {
            // SAFETY: `cpu` is below the number of indices.
            let h = unsafe { &c.slot_unchecked(cpu).value };
            for k in 0..NUM_CLASSES {
                // SAFETY: this slot's words and pointers; each pointer is freed once.
                unsafe {
                    let n = word(h, k).load(Ordering::Relaxed) & COUNT;
                    for i in 0..n {
                        let p = item(h, k, i).load(Ordering::Relaxed);
                        self.inner.dealloc(p as *mut u8, class_layout(k));
                    }
                }
            }
        }
        let mut buf = [0usize; MAX_BATCH];
        for k in 0..NUM_CLASSES {
            loop {
                let n = self.depot_pop(k, &mut buf);
                if n == 0 {
                    break;
                }
                for &p in &buf[..n] {
                    // SAFETY: the depot's blocks, each freed once (it left the depot).
                    unsafe { self.inner.dealloc(p as *mut u8, class_layout(k)) };
                }
            }
        }
        // SAFETY: the block came from `Block::into_raw` with this layout; neither it nor the
        // depot is used again (`&mut self`).
        unsafe {
            drop(Block::from_raw(c.first.cast(), caches_layout()));
            self.depot.unmap();
        }
    }
}

impl<A: GlobalAlloc> fmt::Debug for PerCpuAlloc<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state.load(Ordering::Relaxed) {
            UNINIT => "unused",
            READY => "ready",
            FAILED => "failed (inner allocator only)",
            _ => "initialising",
        };
        f.debug_struct("PerCpuAlloc")
            .field("state", &state)
            .field("from_inner", &self.from_inner.load(Ordering::Relaxed))
            .field("to_inner", &self.to_inner.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What [`PerCpuAlloc::stats`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per possible CPU (empty before the first allocation).
    pub cpus: Vec<CpuStats>,
    /// Bytes of blocks in the depot.
    pub depot_bytes: usize,
    /// Small blocks the inner allocator made for the caches (and for direct requests).
    pub from_inner: u64,
    /// Small blocks given back to the inner allocator.
    pub to_inner: u64,
    /// Small requests (allocations and frees) served by the inner allocator directly, because no
    /// cache was in reach: during the caches' first making, or made by an inner allocator that
    /// calls back into this one while it fills a batch.
    pub direct: u64,
}

impl Stats {
    /// Bytes held by every CPU's cache and the depot.
    pub fn cached_bytes(&self) -> usize {
        self.cpus.iter().map(|c| c.cached_bytes).sum::<usize>() + self.depot_bytes
    }

    /// Hits of every CPU.
    pub fn hits(&self) -> u64 {
        self.cpus.iter().map(|c| c.hits).sum()
    }

    /// Misses of every CPU.
    pub fn misses(&self) -> u64 {
        self.cpus.iter().map(|c| c.misses).sum()
    }
}

/// One CPU's cache in [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStats {
    /// The CPU.
    pub cpu: usize,
    /// Bytes of blocks cached now.
    pub cached_bytes: usize,
    /// Allocations served by this cache (exact: counted by the commit itself).
    pub hits: u64,
    /// Allocations that found this cache empty (counted where the thread ran then).
    pub misses: u64,
    /// Batches moved into this cache from the depot or the inner allocator.
    pub refills: u64,
    /// Batches moved out of this cache to the depot because a free found it full.
    pub flushes: u64,
}
