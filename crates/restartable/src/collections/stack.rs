use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit, size_of};
use core::ptr;
use core::sync::atomic::{
    AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use bytemuck::Zeroable;

use crate::arch::{self, Chunk, Outcome};
use crate::cpu::{Cpu, Index};
use crate::guard::GuardError;
use crate::percpu::{PerCpu, Slots};
use crate::pool::PoolError;
use crate::retry::{self, Path, Slow};

/// How many free chunks each CPU keeps for reuse, unless [`Stack::with_chunk_cache`] says
/// otherwise.
pub const DEFAULT_CHUNK_CACHE: usize = 4;

/// A chunk's header; its slots follow (see [`Chunk`]). The words are written by critical sections
/// on the column's index and under its guard (atomics on the Rust side), the slots by those same
/// sections (as bytes) and, privately, by the thread that owns a detached chunk.
#[repr(C)]
struct Header {
    /// The chunk below (0 for the lowest).
    down: AtomicUsize,
    /// The chunk above; meaningful only while this chunk is not the column's `high`.
    up: AtomicUsize,
    /// 1 for the lowest chunk, one more for each chunk above.
    depth: AtomicUsize,
}

/// The chunks of a `Stack<T>`: allocation, and the arithmetic of slot addresses.
struct Chunks<T>(PhantomData<T>);

impl<T> Chunks<T> {
    const LAYOUT: Layout = match Layout::from_size_align(Chunk::<T>::BYTES, Chunk::<T>::BYTES) {
        Ok(layout) => layout,
        Err(_) => panic!("chunk layout"),
    };

    /// A new private chunk (header zero), not in any column. An allocation failure goes to
    /// [`std::alloc::handle_alloc_error`], as for `Vec`.
    fn alloc() -> usize {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(Self::LAYOUT) };
        if p.is_null() {
            std::alloc::handle_alloc_error(Self::LAYOUT);
        }
        // SAFETY: `p` is a fresh allocation of at least a header, aligned for it.
        unsafe {
            p.cast::<Header>().write(Header {
                down: AtomicUsize::new(0),
                up: AtomicUsize::new(0),
                depth: AtomicUsize::new(0),
            })
        };
        p as usize
    }

    /// Free a chunk without dropping anything in it.
    ///
    /// # Safety
    /// `chunk` came from [`Chunks::alloc`] and is reachable by no one else.
    unsafe fn free(chunk: usize) {
        // SAFETY: the caller's contract.
        unsafe { std::alloc::dealloc(chunk as *mut u8, Self::LAYOUT) };
    }

    /// The header of a live chunk.
    ///
    /// # Safety
    /// `chunk` is a live chunk.
    unsafe fn header<'a>(chunk: usize) -> &'a Header {
        // SAFETY: the caller's contract.
        unsafe { &*(chunk as *const Header) }
    }

    /// The chunk of a slot address.
    fn of(slot: usize) -> usize {
        slot & !Chunk::<T>::MASK
    }

    /// The position of a slot in its chunk (0 for the first).
    fn position(slot: usize) -> usize {
        ((slot & Chunk::<T>::MASK) - Chunk::<T>::HDR) / Chunk::<T>::STRIDE
    }

    /// The depth of `chunk` (0 for none).
    ///
    /// # Safety
    /// `chunk` is 0 or a live chunk.
    unsafe fn depth(chunk: usize) -> usize {
        // SAFETY: the caller's contract.
        if chunk == 0 { 0 } else { unsafe { Self::header(chunk) }.depth.load(Relaxed) }
    }

    /// The number of items in a column whose top slot is `top` (0: empty).
    ///
    /// # Safety
    /// `top` is 0 or a slot of a live chunk.
    unsafe fn items(top: usize) -> usize {
        if top == 0 {
            return 0;
        }
        // SAFETY: the caller's contract.
        let below = unsafe { Self::depth(Self::of(top)) } - 1;
        below * Chunk::<T>::ITEMS + Self::position(top) + 1
    }
}

/// One index's column of chunks: `top` (the address of the top item's slot, 0 when empty),
/// `high` (the highest chunk, 0 when there is none) and `first` (the lowest chunk, meaningful
/// while `high` is not 0). The slots above `top` to the end of `high` are free. The spare index's
/// `top` heads a plain list (through `down`) of one-item chunks pushed by threads that could not
/// wait for a guard.
#[repr(C)]
struct Column {
    top: AtomicUsize,
    high: AtomicUsize,
    first: AtomicUsize,
}

// SAFETY: three atomics; all zero is the empty column.
unsafe impl Zeroable for Column {}

impl Column {
    /// The slot after `top`, or `None` when the column has no free slot.
    ///
    /// # Safety
    /// The caller holds the column's guard; `top` is this column's `top`.
    unsafe fn next_slot<T>(&self, top: usize) -> Option<usize> {
        let high = self.high.load(Relaxed);
        if top == 0 {
            return (high != 0).then(|| self.first.load(Relaxed) + Chunk::<T>::HDR);
        }
        if top & Chunk::<T>::MASK != Chunk::<T>::LAST {
            return Some(top + Chunk::<T>::STRIDE);
        }
        let chunk = Chunks::<T>::of(top);
        // SAFETY: the caller's contract: `chunk` is live, and not `high`, so its `up` is.
        (chunk != high).then(|| unsafe { Chunks::<T>::header(chunk) }.up.load(Relaxed) + Chunk::<T>::HDR)
    }

    /// The slot before `top` (0 when `top` is the lowest), and whether `top` was its chunk's
    /// first slot (the chunk is then free).
    ///
    /// # Safety
    /// The caller holds the column's guard; `top` is a slot of a live chunk of this column.
    unsafe fn prev_slot<T>(top: usize) -> (usize, bool) {
        if top & Chunk::<T>::MASK != Chunk::<T>::HDR {
            return (top - Chunk::<T>::STRIDE, false);
        }
        // SAFETY: the caller's contract.
        let down = unsafe { Chunks::<T>::header(Chunks::<T>::of(top)) }.down.load(Relaxed);
        (if down == 0 { 0 } else { down + Chunk::<T>::LAST }, true)
    }

    /// Attach the private `chunk` above `high`.
    ///
    /// # Safety
    /// The caller holds the column's guard; `chunk` is private, from [`Chunks::alloc`].
    unsafe fn attach<T>(&self, chunk: usize) {
        let h = self.high.load(Relaxed);
        // SAFETY: the caller's contract: `chunk` is ours, `h` is 0 or a live chunk of this column.
        unsafe {
            let header = Chunks::<T>::header(chunk);
            header.down.store(h, Relaxed);
            header.depth.store(Chunks::<T>::depth(h) + 1, Relaxed);
            let up = if h == 0 { &self.first } else { &Chunks::<T>::header(h).up };
            up.store(chunk, Relaxed);
        }
        self.high.store(chunk, Release);
    }

    /// Whether the column has no free slot (an attach is needed before a push).
    ///
    /// # Safety
    /// The caller holds the column's guard.
    unsafe fn full<T>(&self) -> bool {
        // SAFETY: the caller's contract.
        unsafe { self.next_slot::<T>(self.top.load(Relaxed)) }.is_none()
    }

    /// The number of free chunks above the one holding `top`.
    ///
    /// # Safety
    /// The caller holds the column's guard.
    unsafe fn free_chunks<T>(&self) -> usize {
        let top = self.top.load(Relaxed);
        let top_chunk = if top == 0 { 0 } else { Chunks::<T>::of(top) };
        // SAFETY: the caller's contract: `high` and the top's chunk are 0 or live.
        unsafe { Chunks::<T>::depth(self.high.load(Relaxed)) - Chunks::<T>::depth(top_chunk) }
    }
}

/// A per-CPU stack (LIFO) of `T`: `push` and `pop` work on the current CPU's stack with one rseq
/// critical section each (no atomic read-modify-write, and no allocation in the steady state);
/// `drain_cpu` and `drain_all` empty stacks from any thread through the guard.
///
/// Each CPU's stack is a **column of chunks**: a chunk is an array of slots (at least 512 bytes,
/// [`ITEMS_PER_CHUNK`](Self::ITEMS_PER_CHUNK) items) with links to the chunks below and above, and
/// the column has a `top`, the address of the top item's slot. A push copies the value into the
/// slot after `top` and moves `top` there; a pop copies the value out and moves `top` back; each
/// is one critical section whose single commit is the store to `top`, and moving within a chunk
/// needs no pointer to be followed (a batch moves many items as one copy loop). A push that finds
/// the column full allocates a chunk and attaches it (one more section, once per
/// `ITEMS_PER_CHUNK` pushes). Emptied chunks stay in the column for reuse, up to
/// [`DEFAULT_CHUNK_CACHE`] (or the [`with_chunk_cache`](Self::with_chunk_cache) number) per CPU:
/// beyond that, a pop gives the highest ones back to the allocator, down to half the cache; the
/// drains free every chunk of the CPUs they drain.
///
/// `pop` only looks at the current CPU's stack: an item pushed on another CPU is not seen until
/// the thread runs there, or a drain collects it (this is what per-CPU caches want).
///
/// ```
/// use restartable::Stack;
///
/// let free: Stack<u32> = Stack::new();
/// free.push(1);
/// free.push(2);
/// let mut all = free.drain_all();
/// all.sort();
/// assert_eq!(all, [1, 2]);
/// assert_eq!(free.pop(), None);
/// ```
pub struct Stack<T, I: Index = Cpu> {
    columns: PerCpu<Column, I>,
    /// Free chunks a CPU keeps before a pop trims them.
    keep: usize,
    _owns: PhantomData<T>,
}

// SAFETY: the stack owns its items and hands each out to exactly one thread (by value).
unsafe impl<T: Send, I: Index> Send for Stack<T, I> {}
// SAFETY: all shared access goes through rseq sections or the guard; items move between
// threads only by value, so `T: Send` suffices.
unsafe impl<T: Send, I: Index> Sync for Stack<T, I> {}

/// What a slow-path push did.
enum Pushed {
    /// The value is in the column.
    Done,
    /// The value is in the column (or the spare list), and the chunk the caller offered is not
    /// the caller's any more.
    DoneWithOffered,
    /// The column has no free slot and no chunk was offered: allocate one (not under the guard).
    NeedChunk,
}

impl<T, I: Index> Stack<T, I> {
    /// How many items one chunk holds (at least 4; a chunk is at least 512 bytes).
    pub const ITEMS_PER_CHUNK: usize = Chunk::<T>::ITEMS;

    /// An empty stack (no per-CPU memory is touched until a CPU pushes), keeping up to
    /// [`DEFAULT_CHUNK_CACHE`] free chunks per CPU.
    ///
    /// # Panics
    /// If the per-CPU pool is exhausted.
    pub fn new() -> Self {
        Self::with_chunk_cache(DEFAULT_CHUNK_CACHE)
    }

    /// An empty stack that keeps up to `chunks` free chunks per CPU for reuse (0: a pop that
    /// empties a chunk gives it back to the allocator at once).
    ///
    /// # Panics
    /// If the per-CPU pool is exhausted ([`try_with_chunk_cache`](Self::try_with_chunk_cache)).
    pub fn with_chunk_cache(chunks: usize) -> Self {
        Self::try_with_chunk_cache(chunks).unwrap_or_else(|e| panic!("Stack::with_chunk_cache({chunks}): {e}"))
    }

    /// [`with_chunk_cache`](Self::with_chunk_cache), returning the pool's error instead of
    /// panicking.
    pub fn try_with_chunk_cache(chunks: usize) -> Result<Self, PoolError> {
        Ok(Stack { columns: PerCpu::try_new_zeroed()?, keep: chunks, _owns: PhantomData })
    }

    /// Push `value` on the current CPU's stack.
    #[inline]
    pub fn push(&self, value: T) {
        let value = ManuallyDrop::new(value);
        let src: *const T = &*value;
        // The common case inline: one section into a free slot.
        // SAFETY: as in `push_raw`.
        let first =
            retry::one_section(&self.columns, |col, at| unsafe { arch::stack_push::<I, T>(at, col.top.as_ptr(), src) });
        if first != Outcome::Committed {
            // SAFETY: `value` is a live `T` that nobody drops; the push moves its bytes.
            unsafe { self.push_raw(src) };
        }
    }

    /// Push the `T` at `src` (moved: the caller must not drop it afterwards).
    ///
    /// # Safety
    /// `src` is a readable `T` that the caller gives up.
    #[cold]
    #[inline(never)]
    unsafe fn push_raw(&self, src: *const T) {
        let mut offered = 0usize;
        loop {
            // (The inline attempt failed: in degraded mode go straight to the lock.)
            let path = retry::drive_again(
                &self.columns,
                // SAFETY: column `at.index` is changed only by sections on that index and under
                // its guard, and its chunks are freed only after one of those detaches them;
                // `src` is the caller's.
                |col, at| unsafe { arch::stack_push::<I, T>(at, col.top.as_ptr(), src) },
                |slow| match slow {
                    // SAFETY: the guard is held (degraded: the guard is the lock); `src` and
                    // `offered` are as `slow_push` requires.
                    Slow::Stopped(col, _) | Slow::Degraded(col, _) => unsafe { slow_push::<T>(col, src, offered) },
                    Slow::Spare(spare) => {
                        if offered == 0 {
                            return Pushed::NeedChunk;
                        }
                        // SAFETY: `offered` is a private chunk: its first slot holds the value;
                        // the spare list is only ever pushed to lock-free and taken whole.
                        unsafe {
                            ptr::copy_nonoverlapping(src, (offered + Chunk::<T>::HDR) as *mut T, 1);
                            push_spare::<T>(spare, offered);
                        }
                        Pushed::DoneWithOffered
                    }
                },
                false,
            );
            match path {
                Path::Fast(Outcome::Committed) | Path::Slow(Pushed::Done) => break,
                Path::Slow(Pushed::DoneWithOffered) => {
                    offered = 0;
                    break;
                }
                // No free slot: attach a chunk (allocated here, outside every section and guard).
                Path::Fast(_) | Path::Slow(Pushed::NeedChunk) => {
                    if offered == 0 {
                        offered = Chunks::<T>::alloc();
                    }
                    if self.attach(offered) {
                        offered = 0;
                    }
                }
            }
        }
        if offered != 0 {
            // A free slot appeared while this chunk was being attached.
            // SAFETY: still private, empty.
            unsafe { Chunks::<T>::free(offered) };
        }
    }

    /// Attach the private `chunk` above the current CPU's highest chunk if that CPU's column has
    /// no free slot; true if it did (the chunk is the column's now).
    fn attach(&self, chunk: usize) -> bool {
        let path = retry::drive(
            &self.columns,
            // SAFETY: column `at.index` is changed only by sections on that index and under its
            // guard; `chunk` is private until the commit.
            |col, at| unsafe { arch::stack_attach::<I, T>(at, col.top.as_ptr(), chunk) },
            |slow| match slow {
                Slow::Stopped(col, _) | Slow::Degraded(col, _) => {
                    // SAFETY: the guard excludes every other access to the column; `chunk` is
                    // private.
                    unsafe {
                        if !col.full::<T>() {
                            return false;
                        }
                        col.attach::<T>(chunk);
                    }
                    true
                }
                // A thread that may not wait pushes into the spare list instead.
                Slow::Spare(_) => false,
            },
            false,
        );
        matches!(path, Path::Fast(Outcome::Committed) | Path::Slow(true))
    }

    /// Pop the most recently pushed item of the current CPU's stack, or `None` if that stack is
    /// empty (or, in a signal handler that interrupted an operation on this stack, if it cannot
    /// be reached without waiting).
    #[inline]
    pub fn pop(&self) -> Option<T> {
        let mut out = MaybeUninit::<T>::uninit();
        let mut free = usize::MAX;
        let (out_ptr, free_ptr): (*mut T, *mut usize) = (out.as_mut_ptr(), &mut free);
        let path = retry::drive(
            &self.columns,
            // SAFETY: column `at.index` is changed only by sections on that index and under its
            // guard, and its chunks are freed only after one of those detaches them; `out` and
            // `free` are live locals.
            |col, at| unsafe { arch::stack_pop::<I, T>(at, col.top.as_ptr(), out_ptr, free_ptr) },
            |slow| match slow {
                // SAFETY: the guard excludes every other access to the column; `out` has room.
                Slow::Stopped(col, _) | Slow::Degraded(col, _) => unsafe { slow_pop::<T>(col, out_ptr, 1) },
                Slow::Spare(_) => None,
            },
            false,
        );
        let free = match path {
            // SAFETY: the section wrote `free` (if it emptied a chunk) before committing.
            Path::Fast(Outcome::Committed) => unsafe { free_ptr.read() },
            Path::Slow(Some((_, free))) => free,
            Path::Fast(_) | Path::Slow(None) => return None,
        };
        self.trim_after_pop(free);
        // SAFETY: the commit (or the guarded copy) moved a live value into `out`.
        Some(unsafe { out.assume_init() })
    }

    /// Give chunks back when a pop emptied one and left more than `keep` free (down to half of
    /// `keep`). `free_above` is the number of free chunks above the one the pop emptied (`MAX`:
    /// none emptied).
    #[inline(always)]
    fn trim_after_pop(&self, free_above: usize) {
        if free_above != usize::MAX && free_above + 1 > self.keep {
            self.trim(self.keep / 2);
        }
    }

    #[cold]
    #[inline(never)]
    fn trim(&self, keep: usize) {
        loop {
            let mut chunk = 0usize;
            let chunk_ptr: *mut usize = &mut chunk;
            let path = retry::drive(
                &self.columns,
                // SAFETY: column `at.index` is changed only by sections on that index and under
                // its guard; `chunk` is a live local.
                |col, at| unsafe { arch::stack_trim::<I, T>(at, col.top.as_ptr(), keep, chunk_ptr) },
                |slow| match slow {
                    Slow::Stopped(col, _) | Slow::Degraded(col, _) => {
                        // SAFETY: the guard excludes every other access to the column.
                        if unsafe { col.free_chunks::<T>() } <= keep {
                            return 0;
                        }
                        let h = col.high.load(Relaxed);
                        // SAFETY: `h` is a live chunk, detached by the store.
                        col.high.store(unsafe { Chunks::<T>::header(h) }.down.load(Relaxed), Relaxed);
                        h
                    }
                    Slow::Spare(_) => 0,
                },
                false,
            );
            let chunk = match path {
                // SAFETY: the section wrote `chunk` before committing.
                Path::Fast(Outcome::Committed) => unsafe { chunk_ptr.read() },
                Path::Slow(h) => h,
                Path::Fast(_) => 0,
            };
            if chunk == 0 {
                return;
            }
            // SAFETY: detached by the commit above: a free chunk only this thread can reach.
            unsafe { Chunks::<T>::free(chunk) };
        }
    }

    /// Push every item of `items` on the current CPU's stack, the last one on top: one critical
    /// section when the CPU's column has room for them all (the steady state); otherwise the
    /// missing chunks are allocated and attached, and the rest follows in further sections.
    /// ([`append`](Self::append) does the same from a `Vec` it leaves empty, for reuse.)
    pub fn push_batch(&self, items: Vec<T>) {
        let mut items = items;
        self.append(&mut items);
    }

    /// Move every item of `items` onto the current CPU's stack, the last one on top, leaving
    /// `items` empty with its capacity (as [`Vec::append`] does): [`push_batch`](Self::push_batch)
    /// without giving up the `Vec`.
    ///
    /// ```
    /// let s: restartable::Stack<u32> = restartable::Stack::new();
    /// let mut batch = vec![1, 2, 3];
    /// s.append(&mut batch);
    /// assert!(batch.is_empty());
    /// let n = s.pop_batch_into(8, &mut batch); // the same CPU unless the thread migrated
    /// assert_eq!(n + s.drain_all().len(), 3);
    /// ```
    pub fn append(&self, items: &mut Vec<T>) {
        let n = items.len();
        let src = items.as_ptr();
        // From here on the items belong to the stack (or to this loop): the `Vec` forgets them.
        // SAFETY: the items stay where they are until each is moved by a push below.
        unsafe { items.set_len(0) };
        let mut done = 0;
        while done < n {
            let mut args = [n - done, 0];
            let args_ptr: *mut [usize; 2] = &mut args;
            let rest = src.wrapping_add(done);
            let path = retry::drive(
                &self.columns,
                // SAFETY: as in `push`; `rest` holds `n - done >= 1` items; `args` is a live local.
                |col, at| unsafe { arch::stack_push_many::<I, T>(at, col.top.as_ptr(), rest, args_ptr) },
                |slow| match slow {
                    // SAFETY: the guard excludes every other access to the column; `rest` holds
                    // `n - done` items.
                    Slow::Stopped(col, _) | Slow::Degraded(col, _) => {
                        Some(unsafe { slow_push_many::<T>(col, rest, n - done) })
                    }
                    Slow::Spare(_) => None,
                },
                false,
            );
            match path {
                // SAFETY: the section wrote `args[1]` (the items left) before committing.
                Path::Fast(Outcome::Committed) => done = n - unsafe { args_ptr.read()[1] },
                Path::Slow(Some(k)) if k > 0 => done += k,
                Path::Slow(None) => {
                    // A thread that may not wait: one at a time, through the spare list.
                    for k in done..n {
                        // SAFETY: item `k` is live and given up here.
                        unsafe { self.push_raw(src.add(k)) };
                    }
                    done = n;
                }
                // No free slot: attach a chunk, then go on.
                Path::Fast(_) | Path::Slow(_) => {
                    let chunk = Chunks::<T>::alloc();
                    if !self.attach(chunk) {
                        // SAFETY: not attached: still private, empty.
                        unsafe { Chunks::<T>::free(chunk) };
                    }
                }
            }
        }
    }

    /// Pop up to `max` items, the most recently pushed first, from the current CPU's stack;
    /// `max = 0` pops nothing. Up to 256 items move in one critical section (the `Vec` grows
    /// between sections, never inside one).
    pub fn pop_batch(&self, max: usize) -> Vec<T> {
        let mut out = Vec::new();
        self.pop_batch_into(max, &mut out);
        out
    }

    /// [`pop_batch`](Self::pop_batch) onto the end of `out` (reusing its capacity); returns how
    /// many items moved.
    pub fn pop_batch_into(&self, max: usize, out: &mut Vec<T>) -> usize {
        const SECTION: usize = 256;
        let start = out.len();
        while out.len() - start < max {
            let want = (max - (out.len() - start)).min(SECTION);
            out.reserve(want);
            let dst = out.as_mut_ptr().wrapping_add(out.len());
            let mut args = [want, 0, usize::MAX];
            let args_ptr: *mut [usize; 3] = &mut args;
            let path = retry::drive(
                &self.columns,
                // SAFETY: as in `pop`; `dst` has room for `want >= 1` items; `args` is a live local.
                |col, at| unsafe { arch::stack_pop_many::<I, T>(at, col.top.as_ptr(), dst, args_ptr) },
                |slow| match slow {
                    // SAFETY: the guard excludes every other access to the column; `dst` has room.
                    Slow::Stopped(col, _) | Slow::Degraded(col, _) => unsafe { slow_pop::<T>(col, dst, want) },
                    Slow::Spare(_) => None,
                },
                false,
            );
            let (k, free) = match path {
                Path::Fast(Outcome::Committed) => {
                    // SAFETY: the section wrote `args` before committing.
                    let args = unsafe { args_ptr.read() };
                    (want - args[1], args[2])
                }
                Path::Slow(Some(r)) => r,
                Path::Fast(_) | Path::Slow(None) => break,
            };
            // SAFETY: `k` values were moved into the reserved room.
            unsafe { out.set_len(out.len() + k) };
            self.trim_after_pop(free);
            if k < want {
                break;
            }
        }
        out.len() - start
    }

    /// Remove every item of CPU `cpu`'s stack (most recent first), from any thread, and give all
    /// of that CPU's chunks back to the allocator.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<T>, GuardError> {
        let slot = self.columns.slot(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.columns.len() })?;
        let col = &slot.value;
        if col.high.load(Relaxed) == 0 {
            return Ok(Vec::new());
        }
        let (top, high) = {
            let _stop = slot.guard.stop::<I>(cpu)?;
            (col.top.swap(0, Acquire), col.high.swap(0, Acquire))
        };
        // SAFETY: the whole column was detached under the guard; no one else can reach it.
        Ok(unsafe { Detached::<T>::column(top, high) }.collect())
    }

    /// Remove every item of every CPU's stack, from any thread, and give every chunk back to the
    /// allocator. Called while the thread holds a guard (a signal handler), it leaves the stacks
    /// it would have to wait for.
    ///
    /// # Panics
    /// If the membarrier fence fails (only possible if a seccomp filter installed later forbids
    /// membarrier); use [`drain_cpu`](Self::drain_cpu) to handle that.
    pub fn drain_all(&self) -> Vec<T> {
        // The spare list is only pushed to lock-free: taking it whole needs no guard.
        // SAFETY: the detached list is ours alone.
        let mut out: Vec<T> = unsafe { Detached::<T>::list(self.columns.spare().value.top.swap(0, Acquire)) }.collect();
        out.extend(super::drain_every("Stack", |cpu| self.drain_cpu(cpu)));
        out
    }

    /// The number of items on each CPU's stack (a snapshot under each guard; a stack this thread
    /// could only wait for counts as 0).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        // SAFETY: `top` is 0 or a slot of a live chunk (the guard is held).
        self.per_cpu(|col| unsafe { Chunks::<T>::items(col.top.load(Relaxed)) })
    }

    /// How many free chunks above the top one each CPU keeps for reuse now (a snapshot under
    /// each guard).
    pub fn cached_chunks_per_cpu(&self) -> Vec<usize> {
        // SAFETY: the guard is held.
        self.per_cpu(|col| unsafe { col.free_chunks::<T>() })
    }

    fn per_cpu(&self, f: impl Fn(&Column) -> usize) -> Vec<usize> {
        (0..self.columns.len())
            .map(|cpu| {
                let Some(slot) = self.columns.slot(cpu) else { return 0 };
                if slot.value.high.load(Relaxed) == 0 {
                    return 0;
                }
                let Ok(_stop) = slot.guard.stop::<I>(cpu) else { return 0 };
                f(&slot.value)
            })
            .collect()
    }
}

/// A guarded push: the value at `src` into the slot after `top`, attaching `offered` (if not 0)
/// when the column is full.
///
/// # Safety
/// The caller holds `col`'s guard; `src` is a readable `T`, given up unless this returns
/// `NeedChunk`; `offered` is 0 or a private chunk from [`Chunks::alloc`].
unsafe fn slow_push<T>(col: &Column, src: *const T, offered: usize) -> Pushed {
    let mut result = Pushed::Done;
    // SAFETY: the caller's contract.
    unsafe {
        if col.full::<T>() {
            if offered == 0 {
                return Pushed::NeedChunk;
            }
            col.attach::<T>(offered);
            result = Pushed::DoneWithOffered;
        }
        let slot = col.next_slot::<T>(col.top.load(Relaxed)).expect("a free slot");
        ptr::copy_nonoverlapping(src, slot as *mut T, 1);
        col.top.store(slot, Release);
    }
    result
}

/// A guarded push of up to `n` values from `src` into the free slots; how many moved.
///
/// # Safety
/// The caller holds `col`'s guard; `src` is readable for `n` `T`s, the moved ones given up.
unsafe fn slow_push_many<T>(col: &Column, src: *const T, n: usize) -> usize {
    let mut top = col.top.load(Relaxed);
    let mut k = 0;
    while k < n {
        // SAFETY: the caller's contract.
        let Some(slot) = (unsafe { col.next_slot::<T>(top) }) else { break };
        // SAFETY: `slot` is free; item `k` is the caller's.
        unsafe { ptr::copy_nonoverlapping(src.add(k), slot as *mut T, 1) };
        top = slot;
        k += 1;
    }
    col.top.store(top, Release);
    k
}

/// A guarded pop of up to `max` values into `dst`, the top first: `(moved, free chunks above the
/// lowest chunk emptied, or MAX if none)`, or `None` if the column is empty.
///
/// # Safety
/// The caller holds `col`'s guard; `dst` is writable for `max >= 1` `T`s.
unsafe fn slow_pop<T>(col: &Column, dst: *mut T, max: usize) -> Option<(usize, usize)> {
    let mut top = col.top.load(Acquire);
    if top == 0 {
        return None;
    }
    let (mut k, mut free) = (0, usize::MAX);
    while top != 0 && k < max {
        // SAFETY: the caller's contract; `top` is a live slot holding a value.
        unsafe {
            ptr::copy_nonoverlapping(top as *const T, dst.add(k), 1);
            let (prev, emptied) = Column::prev_slot::<T>(top);
            if emptied {
                let chunk = Chunks::<T>::of(top);
                free = Chunks::<T>::depth(col.high.load(Relaxed)) - Chunks::<T>::depth(chunk);
            }
            top = prev;
        }
        k += 1;
    }
    col.top.store(top, Relaxed);
    Some((k, free))
}

/// Push the private `chunk` (its first slot holding a value) on the spare list.
///
/// # Safety
/// `chunk` is private; the spare's `top` is only ever pushed to this way and taken whole.
unsafe fn push_spare<T>(spare: &Column, chunk: usize) {
    // SAFETY: `chunk` is private until the exchange publishes it.
    let header = unsafe { Chunks::<T>::header(chunk) };
    let mut h = spare.top.load(Relaxed);
    loop {
        header.down.store(h, Relaxed);
        match spare.top.compare_exchange_weak(h, chunk, Release, Relaxed) {
            Ok(_) => return,
            Err(now) => h = now,
        }
    }
}

/// The values of a detached column (or of the spare list), the top first, freeing each chunk
/// once it is passed (also when dropped half-way).
struct Detached<T> {
    /// The chunk being read (0: done).
    chunk: usize,
    /// The next slot to read in it (0: none left in this chunk).
    slot: usize,
    /// Whether this is the spare list (one item per chunk).
    list: bool,
    _owns: PhantomData<T>,
}

impl<T> Detached<T> {
    /// # Safety
    /// `high` is 0 or the highest chunk of a column no other thread can reach, and `top` is 0 or
    /// a slot in it: the slots up to `top` hold values.
    unsafe fn column(top: usize, high: usize) -> Self {
        // The chunks above the top one hold nothing: free them now.
        let mut chunk = high;
        let top_chunk = if top == 0 { 0 } else { Chunks::<T>::of(top) };
        while chunk != top_chunk {
            // SAFETY: the caller's contract: every chunk is ours; these hold no value.
            unsafe {
                let down = Chunks::<T>::header(chunk).down.load(Relaxed);
                Chunks::<T>::free(chunk);
                chunk = down;
            }
        }
        Detached { chunk: top_chunk, slot: top, list: false, _owns: PhantomData }
    }

    /// # Safety
    /// `first` is 0 or the first chunk of a list (through `down`) of chunks whose first slot
    /// holds a value, that no other thread can reach.
    unsafe fn list(first: usize) -> Self {
        Detached {
            chunk: first,
            slot: if first == 0 { 0 } else { first + Chunk::<T>::HDR },
            list: true,
            _owns: PhantomData,
        }
    }
}

impl<T> Iterator for Detached<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.chunk == 0 {
            return None;
        }
        // SAFETY: the constructors' contracts: `slot` holds a value, moved out here; a chunk is
        // freed once its last value is out.
        unsafe {
            let value = (self.slot as *const T).read();
            let first_slot = self.list || self.slot & Chunk::<T>::MASK == Chunk::<T>::HDR;
            if first_slot {
                let down = Chunks::<T>::header(self.chunk).down.load(Relaxed);
                Chunks::<T>::free(self.chunk);
                self.chunk = down;
                self.slot = match (down, self.list) {
                    (0, _) => 0,
                    (d, true) => d + Chunk::<T>::HDR,
                    (d, false) => d + Chunk::<T>::LAST,
                };
            } else {
                self.slot -= Chunk::<T>::STRIDE;
            }
            Some(value)
        }
    }
}

impl<T> Drop for Detached<T> {
    fn drop(&mut self) {
        super::drop_all(self.by_ref());
    }
}

impl<T, I: Index> Drop for Stack<T, I> {
    fn drop(&mut self) {
        let spare = self.columns.spare().value.top.swap(0, Relaxed);
        let columns: Vec<(usize, usize)> = self
            .columns
            .iter_mut()
            .map(|(_, c)| (core::mem::take(c.top.get_mut()), core::mem::take(c.high.get_mut())))
            .collect();
        // SAFETY: `&mut self`: no other thread can reach any column. Every value is dropped and
        // every chunk freed even if one value's `Drop` panics.
        super::drop_all(
            columns
                .into_iter()
                .map(|(top, high)| unsafe { Detached::<T>::column(top, high) })
                .chain([unsafe { Detached::<T>::list(spare) }])
                .flatten(),
        );
    }
}

impl<T, I: Index> Default for Stack<T, I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, I: Index> fmt::Debug for Stack<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonempty = self.columns.iter().filter(|(_, c)| c.top.load(Relaxed) != 0).count();
        f.debug_struct("Stack")
            .field("index", &I::NAME)
            .field("nonempty_cpus", &nonempty)
            .field("items_per_chunk", &Self::ITEMS_PER_CHUNK)
            .field("chunk_cache", &self.keep)
            .finish_non_exhaustive()
    }
}

const _: () = assert!(size_of::<Column>() == 3 * size_of::<usize>() && size_of::<Header>() == Chunk::<u8>::HDR);
