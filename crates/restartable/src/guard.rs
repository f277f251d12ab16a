//! Guard words and the membarrier rseq fence: how an index's fast paths are stopped.
//!
//! Every critical section reads a guard word of the index (CPU or mm_cid) it runs on, right
//! after checking that it still runs there; a non-zero word makes it leave with
//! [`Outcome::Stopped`](crate::ops::Outcome::Stopped). Guard words live with the data they
//! protect: each per-CPU structure has one per index, in the same cache line as that index's
//! data, so stopping one structure's CPU leaves every other structure on that CPU running. One
//! process-wide array ([`stop`], [`limit`]) serves the raw op set ([`ops`](crate::ops)) and
//! [`OpVec`](crate::opv::OpVec).
//!
//! The slow path for index `c` (DESIGN.md section 4):
//!
//! 1. acquire the guard word (compare-exchange 0 → owner, bounded spinning, then a futex wait);
//! 2. fence: `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, c)` restarts any section running on
//!    `c` that read the guard as zero before step 1 (all CPUs for [`MmCid`](crate::ops::MmCid));
//! 3. operate with atomic accesses;
//! 4. release the word (store-release 0, wake a waiter).
//!
//! In [degraded mode](crate::Mode) no fast path runs, so step 2 is skipped and the guard is a
//! plain per-CPU lock.
//!
//! # The rules that keep the slow path safe
//!
//! - **Nothing allocates, frees, drops a user value or calls user code while a guard is held.**
//!   Drains collect under the guard into memory that exists before it is taken, and free or
//!   return items after releasing it. So a global allocator, a `Drop` or a signal handler that
//!   uses this library never runs inside one of its guards.
//! - **A thread never waits for a guard while it holds one.** A thread that holds a guard (its
//!   own slow path, interrupted by a signal handler, or user code holding a [`Stop`]) only ever
//!   *tries* guards: a collection's operation then completes on the structure's spare index
//!   (a slot no fast path uses, updated lock-free), or gives its "nothing now" answer (`pop`
//!   finds nothing, `push` to a bounded buffer reports it full), and a remote operation skips
//!   (or reports [`GuardError::Busy`] for) the indices it could only wait for. Nested operations
//!   therefore never deadlock, on their own thread or in a cycle with other threads'.
//! - **First use is re-entrant and allocates nothing**: an operation that interrupts its own
//!   thread's first use takes the same no-wait path (it may still take a free guard: no other
//!   thread holds one before the decision, and it fences once fast paths may run).
//! - **`fork` leaves no guard held by a thread that does not exist**: a guard word names its
//!   owner and the fork generation it was taken in; in a child, a word taken in an older
//!   generation is free (every slow path leaves its data consistent at every instruction: it
//!   prepares in unpublished memory and commits with one store). A `pthread_atfork` handler
//!   advances the generation and registers the child for the membarrier fence again. (A child
//!   made by a raw `clone`/`fork` system call, which skips the handlers, must `exec` or exit.)
//!
//! # Async-signal safety
//!
//! An operation is async-signal-safe here when a signal handler may call it while its thread is
//! anywhere, including inside the same operation on the same structure (and on the same CPU,
//! holding that CPU's guard on its slow path): it never waits for a guard its thread holds, takes
//! no lock a handler could wait for, and neither allocates nor frees. Each "yes" is proved by a
//! test that calls it from a `SIGALRM` handler every 50 µs while its thread runs the same
//! operations on CPU 0 and another thread keeps stopping CPU 0 (`tests/robust.rs`), in fast and
//! degraded mode, and by `restartable stress --signal-ops`.
//!
//! | operation | async-signal-safe | why not / test |
//! |---|---|---|
//! | `Counter::add`, `sum`, `take`, `try_take`, `take_cpu` | yes | `signal_handler_uses_the_counter_its_thread_is_in` |
//! | `Buffer::push`, `pop` | yes (the `Box` is yours: make and free it outside the handler) | `signal_handler_uses_the_buffer_its_thread_is_in` |
//! | `MemcpyBuffer::push`, `pop` | yes | `signal_handler_uses_the_memcpy_buffer_its_thread_is_in` |
//! | `ops::*`, `retry::run` (with async-signal-safe closures), `guard::stop`, `OpVec::run_on`, `run_stopped`, `current_cpu`, `current_mm_cid`, `current_node` | yes | `signal_handler_uses_raw_ops_and_stops` |
//! | `Stack::push`, `pop` | no | they allocate and free a node |
//! | `drain_cpu`, `drain_all`, `len_per_cpu`, `Counter::per_cpu` | no | they allocate the returned `Vec` |
//! | `SpinLock::lock`, `lock_cpu` | no | a lock: a handler may wait for the lock its own thread holds |
//! | creating or dropping any structure, `PerCpu::new` | no | the pool's lock; frees |
//!
//! Called from a handler that interrupted an operation on the same structure, a "yes" operation
//! may answer "nothing now" where it would otherwise wait: `pop` finds nothing, a bounded
//! `push` reports the buffer full, `take` leaves the counts it could not reach for later, and
//! `stop`, `run_on` and `take_cpu` report [`GuardError::Busy`]. A counter's `add` always counts
//! (on the structure's spare index when its CPU is out of reach).

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, Ordering};
use std::fmt;
use std::io;

pub use crate::abi::MAX_CPUS;
use crate::cpu::Index;
use crate::{arch, sys, thread};

/// Set in a guard word when a thread may be sleeping on it.
const WAITERS: u32 = 1 << 31;
/// Bits of a token that hold the owner's thread id (PID_MAX_LIMIT is 2^22).
const TID_BITS: u32 = 22;
/// The fork-generation bits of a token (above the thread id, below WAITERS).
const GENERATION_MASK: u32 = 0x1ff;
/// Compare-exchange attempts before sleeping on the futex.
const SPINS: u32 = 200;

/// One guard word: 0 when free, else the owner's token (thread id and fork generation), with
/// [`WAITERS`] when someone may sleep on it.
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct Guard(AtomicU32);

impl Guard {
    pub(crate) const fn new() -> Self {
        Guard(AtomicU32::new(0))
    }

    /// The word the critical sections read.
    #[inline(always)]
    pub(crate) fn word(&self) -> *const AtomicU32 {
        &self.0
    }

    /// Whether the word is set now (a snapshot).
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// Stop index `index` (in mode `I`) for the data this guard protects: acquire the word and
    /// fence (steps 1 and 2 above).
    pub(crate) fn stop<I: Index>(&self, index: usize) -> Result<Stop<'_>, GuardError> {
        let (fast, nested) = match thread::ready() {
            thread::Ready::Done(mode) => (mode.is_fast(), false),
            // Inside this thread's own first use (a signal handler interrupted it): it may not
            // wait for anything, and fences only if fast paths may already run (the decision
            // for fast mode is being published; its fence registration came first).
            thread::Ready::Nested => (thread::fast_paths_may_run(), true),
        };
        acquire(&self.0, index, nested)?;
        let stop = Stop { guard: &self.0, index, _not_send: PhantomData };
        #[cfg(feature = "inject")]
        crate::inject::delay(7);
        if fast {
            let fenced = if I::MM_CID { fence_all() } else { fence(index) };
            fenced.map_err(GuardError::Fence)?; // dropping `stop` releases the word
        }
        #[cfg(feature = "inject")]
        crate::inject::delay(8);
        Ok(stop)
    }

    /// The guard as a per-CPU lock in degraded mode, the common case only and inline: this
    /// thread holds no guard and has its owner token for this fork generation, and the word is
    /// free. `None` otherwise (nothing changed): take the long way ([`stop`](Self::stop)).
    #[inline(always)]
    pub(crate) fn lock_degraded(&self, index: usize) -> Option<Stop<'_>> {
        debug_assert!(thread::degraded());
        let b = block();
        let me = b.token.load(Ordering::Relaxed);
        if me == 0 || b.token_generation.load(Ordering::Relaxed) != thread::generation() {
            return None;
        }
        // Counted before the word is taken, as in `acquire` (a signal handler that runs in
        // between sees a held guard and does not wait).
        if held_add(&b.held, 1) != 0 {
            held_add(&b.held, u32::MAX);
            return None;
        }
        if self.0.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_err() {
            held_add(&b.held, u32::MAX);
            return None;
        }
        #[cfg(feature = "inject")]
        crate::inject::delay(7);
        #[cfg(feature = "inject")]
        crate::inject::delay(8);
        Some(Stop { guard: &self.0, index, _not_send: PhantomData })
    }
}

/// The process-wide guard words of the raw op set, one per possible index, packed: sections only
/// read them, and a stop (rare) costs each CPU sharing its line one miss. 32 KiB in `.bss`, so
/// untouched pages cost nothing.
static GUARDS: [Guard; MAX_CPUS] = [const { Guard::new() }; MAX_CPUS];

/// The process-wide guard of `index`, or `None` past [`MAX_CPUS`].
#[inline(always)]
pub(crate) fn global(index: usize) -> Option<&'static Guard> {
    GUARDS.get(index)
}

/// The table of process-wide guard words, as the raw ops' sections read it (`index`'s word at
/// `table + index`, read only after the section has checked that the thread runs on `index`: the
/// kernel gives no index past [`MAX_CPUS`] in a process that runs fast paths, since it refuses
/// them on a machine with more possible CPUs).
#[inline(always)]
pub(crate) fn global_table() -> *const AtomicU32 {
    // `Guard` is a transparent `AtomicU32`.
    GUARDS.as_ptr().cast::<AtomicU32>()
}

/// The number of indices: [`possible_cpus`](crate::possible_cpus), capped at [`MAX_CPUS`].
/// Valid indices are below it.
pub fn limit() -> usize {
    thread::limit()
}

/// Why an index could not be stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum GuardError {
    /// The index is not below [`limit`].
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of valid indices.
        limit: usize,
    },
    /// The membarrier rseq fence failed (the guard was released again).
    Fence(io::Error),
    /// The guard is held by another operation, and this thread may not wait for it: it holds a
    /// guard itself (a signal handler or hook interrupted one of its operations, or it holds a
    /// [`Stop`]).
    Busy {
        /// The index asked for.
        index: usize,
    },
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::OutOfRange { index, limit } => {
                write!(f, "CPU index {index} is out of range (this machine has {limit} possible CPUs)")
            }
            GuardError::Fence(e) => write!(f, "membarrier rseq fence failed: {e}"),
            GuardError::Busy { index } => write!(
                f,
                "CPU index {index} is held by another operation, and this thread may not wait for it because it \
                 holds a guard itself (a signal handler or hook interrupted one of its operations)"
            ),
        }
    }
}

impl std::error::Error for GuardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuardError::Fence(e) => Some(e),
            _ => None,
        }
    }
}

/// A stopped index: while this value lives, no critical section on that index can commit to
/// the data its guard protects, and no other slow path can operate on it. Dropping it restarts
/// the index. It stays on the thread that took it (the thread's held-guard count is per thread).
#[must_use = "dropping a Stop restarts the index at once"]
pub struct Stop<'a> {
    guard: &'a AtomicU32,
    index: usize,
    _not_send: PhantomData<*const ()>,
}

/// A stopped index of the process-wide guard array ([`stop`]).
pub type CpuStop = Stop<'static>;

impl Stop<'_> {
    /// The stopped index.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Debug for Stop<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stop").field("index", &self.index).finish()
    }
}

impl Drop for Stop<'_> {
    #[inline]
    fn drop(&mut self) {
        release(self.guard);
    }
}

/// Stop index `index` of mode `I` in the process-wide guard array (steps 1 and 2 above): wait
/// for its guard, set it, and fence so that every section on it that could still commit has
/// been restarted.
///
/// ```
/// use restartable::ops::Cpu;
/// let stop = restartable::guard::stop::<Cpu>(0).unwrap();
/// // ... operate on CPU 0's data with atomic accesses ...
/// drop(stop); // CPU 0 runs its fast paths again
/// ```
pub fn stop<I: Index>(index: usize) -> Result<CpuStop, GuardError> {
    let limit = limit();
    match global(index) {
        Some(g) if index < limit => g.stop::<I>(index),
        _ => Err(GuardError::OutOfRange { index, limit }),
    }
}

/// The rseq fence on one CPU: when it returns, every critical section of this process that was
/// running on `cpu` has been restarted, and its earlier stores are visible.
pub fn fence(cpu: usize) -> io::Result<()> {
    thread::fence_registered()?;
    sys::membarrier_rseq_cpu(cpu)
}

/// The rseq fence on every CPU running a thread of this process.
pub fn fence_all() -> io::Result<()> {
    thread::fence_registered()?;
    sys::membarrier_rseq_all()
}

/// Whether `index`'s process-wide guard word is set now (a snapshot, for tests and reports).
pub fn is_stopped(index: usize) -> bool {
    global(index).is_some_and(Guard::is_set)
}

/// How many guard words the calling thread holds now.
pub fn held() -> u32 {
    block().held.load(Ordering::Relaxed)
}

fn block() -> &'static arch::ThreadBlock {
    // SAFETY: the calling thread's block lives as long as the thread; the reference is used at
    // once and never leaves it.
    unsafe { &*arch::thread_block() }
}

/// The calling thread's owner token: its thread id and the fork generation, never 0.
fn token() -> u32 {
    let b = block();
    let generation = thread::generation();
    let t = b.token.load(Ordering::Relaxed);
    if t != 0 && b.token_generation.load(Ordering::Relaxed) == generation {
        return t;
    }
    // A thread id is below 2^22 (PID_MAX_LIMIT) and never 0.
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32 & ((1 << TID_BITS) - 1);
    let t = ((generation & GENERATION_MASK) << TID_BITS) | tid.max(1);
    b.token.store(t, Ordering::Relaxed);
    b.token_generation.store(generation, Ordering::Relaxed);
    t
}

/// The calling thread's owner token ([`token`]), for other locks of the library that name
/// their owner the way guard words do (the allocator's depot).
pub(crate) fn owner_token() -> u32 {
    token()
}

/// Whether a lock word holding an owner token (with or without the waiters bit) was taken in an
/// older fork generation ([`stale`]).
pub(crate) fn stale_owner(word: u32) -> bool {
    stale(word)
}

/// Whether a set word was taken in an older fork generation: its owner does not exist here.
fn stale(word: u32) -> bool {
    let owner = word & !WAITERS;
    owner != 0 && (owner >> TID_BITS) & GENERATION_MASK != thread::generation() & GENERATION_MASK
}

/// Take `w` for the calling thread. A thread that holds a guard already (or that is `nested`
/// inside its own first use) only tries.
///
/// The thread's held count goes up *before* the first attempt and back down only on failure, and
/// [`release`] clears the word before counting down: a signal handler that interrupts its thread
/// anywhere in between sees a guard held (and never waits for one).
fn acquire(w: &AtomicU32, index: usize, nested: bool) -> Result<(), GuardError> {
    let me = token();
    let b = block();
    // Counted whether or not this is a nested call: `release` (and `fail`) always take it back.
    let was = held_add(&b.held, 1);
    let nested = nested || was > 0;
    let fail = |e| {
        held_add(&b.held, u32::MAX);
        Err(e)
    };
    let take = |cur: u32, new: u32| w.compare_exchange(cur, new, Ordering::SeqCst, Ordering::Relaxed).is_ok();
    for _ in 0..SPINS {
        let cur = w.load(Ordering::Relaxed);
        if (cur == 0 && take(0, me)) || (stale(cur) && take(cur, me | (cur & WAITERS))) {
            return Ok(());
        }
        if nested || cur & !WAITERS == me {
            // Never wait while holding a guard, and never for one's own.
            return fail(GuardError::Busy { index });
        }
        core::hint::spin_loop();
    }
    loop {
        let old = w.fetch_or(WAITERS, Ordering::SeqCst);
        if old == 0 || (stale(old) && take(old | WAITERS, me | WAITERS)) {
            // Ours; keep WAITERS set, since others may sleep behind us.
            w.store(me | WAITERS, Ordering::Relaxed);
            return Ok(());
        }
        // EAGAIN (the word changed) and EINTR both just mean: look again.
        let _ = rustix::thread::futex::wait(w, rustix::thread::futex::Flags::PRIVATE, old | WAITERS, None);
    }
}

#[inline]
fn release(w: &AtomicU32) {
    if w.swap(0, Ordering::Release) & WAITERS != 0 {
        wake_one(w);
    }
    held_add(&block().held, u32::MAX);
}

#[cold]
fn wake_one(w: &AtomicU32) {
    let _ = rustix::thread::futex::wake(w, rustix::thread::futex::Flags::PRIVATE, 1);
}

/// Add `n` (wrapping) to this thread's held-guard count; returns the old count. Only this
/// thread and its signal handlers touch the count, and a handler always leaves it as it found
/// it, so a plain load and store (no locked instruction) cannot lose an update: a handler that
/// runs between them restores the value the load saw. The compiler fences keep the count's
/// change on this side of the guard word's acquire and release, which a handler may observe.
#[inline(always)]
fn held_add(held: &AtomicU32, n: u32) -> u32 {
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    let old = held.load(Ordering::Relaxed);
    held.store(old.wrapping_add(n), Ordering::Relaxed);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    old
}
