//! A strided per-CPU memory pool: one address range per index (CPU number or mm_cid), every
//! object at the same offset in each index's range.
//!
//! ```text
//!            offset 0      offset o (one object)                       STRIDE
//! index 0    [ .......... [obj, copy 0] ....................... untouched ... ]
//! index 1    [ .......... [obj, copy 1] ....................... untouched ... ]
//! ...
//! spare      [ .......... [obj, spare ] ....................... untouched ... ]
//! ```
//!
//! - Address space, not memory, is reserved for every index up front ([`STRIDE`] bytes each,
//!   `PROT_NONE`); the used prefix of every range is made writable as the pool grows, which
//!   stops nothing and moves nothing.
//! - A page becomes resident only when its index first writes it: one CPU's data for many
//!   objects packs densely in that CPU's own pages, no padding separates CPUs (their data is on
//!   different pages), and the pages of indices that never run a thread are never touched. An
//!   `MmCid` structure of a process with 3 threads touches 3 ranges, whatever the CPU count.
//! - New objects are all-zero in every index and cost nothing until used; a freed object is
//!   zeroed again (only where some index wrote it) and reused.
//! - One more range than there are indices: the *spare* index, which no critical section ever
//!   runs on. Collections use it for operations that may not wait for a guard (see
//!   [`guard`](crate::guard)), and the pool keeps its free lists in the spare copies of freed
//!   objects.
//!
//! What a user gives up against one cache-padded slot per CPU: objects of different structures
//! share cache lines *within* one CPU's range (only that CPU writes them on the fast path, so this
//! is not false sharing between CPUs, but a remote drain of one structure pulls in a line that may
//! also hold a neighbour's data on that CPU), and a structure's copies are a whole range apart, so
//! a thread touching many objects uses more TLB entries than with one compact array.
//!
//! ```
//! use std::alloc::Layout;
//! let block = restartable::pool::Block::new(Layout::new::<u64>()).unwrap();
//! // Every index has its own zeroed copy, STRIDE bytes apart.
//! assert_eq!(block.at(1) as usize - block.at(0) as usize, restartable::pool::STRIDE);
//! // SAFETY: the copy of index 0 is 8 writable, aligned bytes owned by `block`.
//! unsafe { *block.at(0).cast::<u64>() = 7 };
//! ```

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::fmt;

use crate::{arch, thread};

/// log2 of [`STRIDE`].
pub const STRIDE_SHIFT: u32 = 28;
/// Address space per index: 256 MiB, the most per-CPU memory the process's structures can use
/// on each index.
pub const STRIDE: usize = 1 << STRIDE_SHIFT;
/// The largest alignment an object may ask for.
pub const MAX_ALIGN: usize = 4096;
/// The most bytes one object may have (in each index).
pub const MAX_SIZE: usize = STRIDE / 2;

/// Why the pool could not provide an object.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The object is larger than [`MAX_SIZE`] or asks for more than [`MAX_ALIGN`].
    TooLarge {
        /// The size asked for.
        size: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// Every index's range is full ([`STRIDE`] bytes used).
    Exhausted {
        /// The bytes in use per index.
        used: usize,
    },
    /// The kernel refused the reservation or a growth (`mmap` / `mprotect`).
    Os(i32),
    /// Called while this thread is already inside the pool (a signal handler that interrupted
    /// an allocation): the pool may not wait for itself.
    Busy,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::TooLarge { size, align } => write!(
                f,
                "a per-CPU object of {size} bytes aligned to {align} is too large (at most {MAX_SIZE} bytes, alignment \
                 at most {MAX_ALIGN})"
            ),
            PoolError::Exhausted { used } => write!(
                f,
                "the per-CPU pool is full: {used} of {STRIDE} bytes per CPU are in use (per-CPU structures are too large \
                 or too many)"
            ),
            PoolError::Os(errno) => {
                write!(f, "the kernel refused per-CPU memory: {}", std::io::Error::from_raw_os_error(*errno))
            }
            PoolError::Busy => {
                f.write_str("per-CPU memory was requested inside a per-CPU allocation on the same thread")
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// Size classes: 16, 32, then multiples of 64 up to 4096 (64-byte aligned, so an object's first
/// line holds its guard and first fields), then powers of two (page aligned).
const CLASSES: usize = 2 + 64 + (STRIDE_SHIFT as usize - 12);

fn class_of(size: usize, align: usize) -> Result<(usize, usize, usize), PoolError> {
    let eff = size.max(align).max(16);
    if eff > MAX_SIZE || align > MAX_ALIGN {
        return Err(PoolError::TooLarge { size, align });
    }
    Ok(match eff {
        0..=16 => (0, 16, 16),
        17..=32 => (1, 32, 32),
        33..=4096 => {
            let k = eff.div_ceil(64);
            (1 + k, k * 64, 64)
        }
        _ => {
            let p = eff.next_power_of_two();
            (65 + (p.trailing_zeros() as usize - 12), p, 4096)
        }
    })
}

/// How much each growth makes writable (per index).
const GROW: usize = 1 << 20;

struct State {
    /// Start of index 0's range (0 before the reservation).
    base: usize,
    /// Ranges reserved: the indices plus the spare.
    ranges: usize,
    /// Bytes of every range that are writable.
    committed: usize,
    /// Bytes of every range ever handed out (the bump pointer).
    bump: usize,
    /// Per class: offset + 1 of the first free object (its link is in the spare copy), or 0.
    free: [usize; CLASSES],
    /// Bytes of live objects (per index) and their number.
    live_bytes: usize,
    live_objects: usize,
}

struct Pool {
    /// 0 when free, else the holder's thread block address.
    lock: AtomicUsize,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only accessed with `lock` held.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool {
    lock: AtomicUsize::new(0),
    state: UnsafeCell::new(State {
        base: 0,
        ranges: 0,
        committed: 0,
        bump: 0,
        free: [0; CLASSES],
        live_bytes: 0,
        live_objects: 0,
    }),
};

/// The pool, locked for the calling thread (never allocates; never waits for itself).
struct Locked(&'static mut State);

fn lock() -> Result<Locked, PoolError> {
    let me = arch::thread_block() as usize;
    loop {
        match POOL.lock.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
            // SAFETY: the lock is ours until `Locked` is dropped.
            Ok(_) => return Ok(Locked(unsafe { &mut *POOL.state.get() })),
            Err(owner) if owner == me => return Err(PoolError::Busy),
            Err(_) => std::thread::yield_now(),
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        POOL.lock.store(0, Ordering::Release);
    }
}

impl State {
    fn reserve(&mut self) -> Result<(), PoolError> {
        if self.base != 0 {
            return Ok(());
        }
        let ranges = thread::limit() + 1;
        let len = ranges.checked_mul(STRIDE).ok_or(PoolError::Os(libc::ENOMEM))?;
        // SAFETY: an anonymous, inaccessible reservation; no existing mapping is affected.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PoolError::Os(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM)));
        }
        self.base = p as usize;
        self.ranges = ranges;
        Ok(())
    }

    /// Make the first `need` bytes of every range writable.
    fn commit(&mut self, need: usize) -> Result<(), PoolError> {
        if need <= self.committed {
            return Ok(());
        }
        if need > STRIDE {
            return Err(PoolError::Exhausted { used: self.bump });
        }
        let new = need.next_multiple_of(GROW).min(STRIDE);
        for r in 0..self.ranges {
            let start = self.base + r * STRIDE + self.committed;
            // SAFETY: `start .. start + (new - committed)` lies inside our reservation.
            let ok = unsafe {
                libc::mprotect(start as *mut libc::c_void, new - self.committed, libc::PROT_READ | libc::PROT_WRITE)
            };
            if ok != 0 {
                return Err(PoolError::Os(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM)));
            }
        }
        self.committed = new;
        Ok(())
    }

    /// The spare copy's first word at `offset` (the free-list link of a freed object).
    fn link(&self, offset: usize) -> *mut usize {
        (self.base + (self.ranges - 1) * STRIDE + offset) as *mut usize
    }

    fn alloc(&mut self, size: usize, align: usize) -> Result<usize, PoolError> {
        let (class, class_size, class_align) = class_of(size, align)?;
        self.reserve()?;
        let offset = if self.free[class] != 0 {
            let offset = self.free[class] - 1;
            let link = self.link(offset);
            // SAFETY: a freed object's spare copy holds the next free offset + 1; it is
            // writable (committed) and nobody else uses a freed object.
            unsafe {
                self.free[class] = link.read();
                link.write(0);
            }
            offset
        } else {
            let offset = self.bump.next_multiple_of(class_align);
            self.commit(offset + class_size)?;
            self.bump = offset + class_size;
            offset
        };
        self.live_bytes += class_size;
        self.live_objects += 1;
        Ok(offset)
    }

    /// Zero every copy of the object at `offset` where some index wrote it, and put it on its
    /// class's free list.
    ///
    /// # Safety
    /// `offset` came from `alloc(size, align)` and no copy of the object is used any more.
    unsafe fn free(&mut self, offset: usize, size: usize, align: usize) {
        let Ok((class, class_size, _)) = class_of(size, align) else { return };
        for r in 0..self.ranges {
            let start = self.base + r * STRIDE + offset;
            // SAFETY: the object's copy is `class_size` committed bytes that nobody uses.
            unsafe { zero_where_written(start as *mut u8, class_size) };
        }
        let link = self.link(offset);
        // SAFETY: as above; the spare copy is now zero and ours.
        unsafe { link.write(self.free[class]) };
        self.free[class] = offset + 1;
        self.live_bytes -= class_size;
        self.live_objects -= 1;
    }
}

/// Zero `len` bytes at `p`, writing only where they are not zero already (reading an untouched
/// page maps the shared zero page and costs no memory). Whole pages go back to the kernel.
///
/// # Safety
/// `p .. p + len` is committed pool memory nobody else uses.
unsafe fn zero_where_written(p: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let start = p as usize;
    let end = start + len;
    let (inner_start, inner_end) = (start.next_multiple_of(PAGE), end & !(PAGE - 1));
    if inner_end > inner_start {
        // SAFETY: whole pages of our private anonymous mapping: they read as zero afterwards.
        unsafe { libc::madvise(inner_start as *mut libc::c_void, inner_end - inner_start, libc::MADV_DONTNEED) };
        // SAFETY: the caller's contract, for the two partial pages at the edges.
        unsafe {
            zero_words(start, inner_start);
            zero_words(inner_end, end);
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { zero_words(start, end) };
    }
}

/// # Safety
/// As [`zero_where_written`]; `start` and `end` are multiples of 16.
unsafe fn zero_words(start: usize, end: usize) {
    let mut a = start;
    while a < end {
        let w = a as *mut u128;
        // SAFETY: the caller's contract; pool objects are at least 16-byte aligned.
        unsafe {
            if w.read_volatile() != 0 {
                w.write_volatile(0);
            }
        }
        a += 16;
    }
}

/// One object of the pool: a zero-initialised copy of `layout` in every index's range (and the
/// spare's), freed (zeroed where written, and reused) when dropped.
pub struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Block` only owns memory; what lives in it decides its own thread-safety.
unsafe impl Send for Block {}
// SAFETY: as above: `&Block` only hands out addresses.
unsafe impl Sync for Block {}

impl Block {
    /// A new object, all zeros in every index. Touches no index's memory.
    pub fn new(layout: Layout) -> Result<Block, PoolError> {
        let offset = lock()?.0.alloc(layout.size(), layout.align())?;
        let base = base();
        // SAFETY: `base + offset` is inside the reservation, which is never unmapped.
        Ok(Block { ptr: unsafe { NonNull::new_unchecked((base + offset) as *mut u8) }, layout })
    }

    /// The copy of index `index` (`index <= `[`ranges`]`() - 1`; the last range is the spare's).
    #[inline(always)]
    pub fn at(&self, index: usize) -> *mut u8 {
        self.ptr.as_ptr().wrapping_add(index << STRIDE_SHIFT)
    }

    /// The object's layout (in each index).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Hand the object over without freeing it (see [`from_raw`](Self::from_raw)).
    pub(crate) fn into_raw(self) -> NonNull<u8> {
        core::mem::ManuallyDrop::new(self).ptr
    }

    /// Take back an object handed over by [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    /// `ptr` came from `into_raw` of a block with this layout, and is not used elsewhere.
    pub(crate) unsafe fn from_raw(ptr: NonNull<u8>, layout: Layout) -> Block {
        Block { ptr, layout }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let offset = self.ptr.as_ptr() as usize - base();
        // A nested drop (a signal handler freeing inside an allocation) leaks instead of waiting.
        if let Ok(pool) = lock() {
            // SAFETY: the object came from `alloc` with this layout and is dropped once.
            unsafe { pool.0.free(offset, self.layout.size(), self.layout.align()) };
        }
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block").field("at0", &self.ptr).field("layout", &self.layout).finish()
    }
}

/// Start of index 0's range (valid once any block exists).
fn base() -> usize {
    // SAFETY: `base` is written once, under the lock, before any block is handed out; blocks
    // carry a happens-before edge from that write to every reader.
    unsafe { (*POOL.state.get()).base }
}

/// The number of ranges: one per index, plus the spare.
pub fn ranges() -> usize {
    thread::limit() + 1
}

/// What the pool holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Address space reserved (all ranges).
    pub reserved: usize,
    /// Bytes made writable per range.
    pub committed: usize,
    /// Bytes of live objects, per range.
    pub live_bytes: usize,
    /// Live objects.
    pub live_objects: usize,
    /// Memory each range holds (CPU 0, 1, ..., then the spare): pages written, not pages only
    /// read (which map the kernel's shared zero page).
    pub resident: Vec<usize>,
}

/// A snapshot of the pool, with each range's resident memory.
pub fn stats() -> Stats {
    let (base, ranges, committed, live_bytes, live_objects) = match lock() {
        Ok(pool) => (pool.0.base, pool.0.ranges, pool.0.committed, pool.0.live_bytes, pool.0.live_objects),
        Err(_) => return Stats::default(),
    };
    // Read residency after releasing the lock: it allocates.
    let resident = (0..ranges).map(|r| written_bytes(base + r * STRIDE, committed)).collect();
    Stats { reserved: ranges * STRIDE, committed, live_bytes, live_objects, resident }
}

/// Bytes of `start .. start + len` backed by memory of this process's own: pages present and
/// mapped exclusively (a page that was only read maps the shared zero page, which costs
/// nothing), from `/proc/self/pagemap`.
fn written_bytes(start: usize, len: usize) -> usize {
    const PAGE: usize = 4096;
    const PRESENT: u64 = 1 << 63;
    const EXCLUSIVE: u64 = 1 << 56;
    let Ok(file) = std::fs::File::open("/proc/self/pagemap") else { return 0 };
    let mut entries = vec![0u64; len / PAGE];
    // SAFETY: `entries` is plain data; the bytes view covers exactly its memory.
    let bytes = unsafe { core::slice::from_raw_parts_mut(entries.as_mut_ptr().cast::<u8>(), entries.len() * 8) };
    if std::os::unix::fs::FileExt::read_exact_at(&file, bytes, (start / PAGE * 8) as u64).is_err() {
        return 0;
    }
    entries.iter().filter(|&&e| e & PRESENT != 0 && e & EXCLUSIVE != 0).count() * PAGE
}

/// Whether `before_fork` took the lock (and the handlers after fork must release it).
static FORK_TOOK_LOCK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

extern "C" fn before_fork() {
    // Keep the pool consistent across fork: no other thread is inside it while we fork. A
    // fork from a signal handler that interrupted this thread inside the pool leaves it be.
    let me = arch::thread_block() as usize;
    loop {
        match POOL.lock.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return FORK_TOOK_LOCK.store(true, Ordering::Relaxed),
            Err(owner) if owner == me => return FORK_TOOK_LOCK.store(false, Ordering::Relaxed),
            Err(_) => std::thread::yield_now(),
        }
    }
}

extern "C" fn after_fork() {
    if FORK_TOOK_LOCK.swap(false, Ordering::Relaxed) {
        POOL.lock.store(0, Ordering::Release);
    }
}

extern "C" fn on_load() {
    // SAFETY: the handlers only touch the pool's lock.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;
