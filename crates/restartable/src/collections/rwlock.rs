//! [`RwLock`]: a reader-writer lock for read-mostly data whose readers write no shared cache
//! line: per-CPU reader counts entered and left with one rseq critical section each, and a
//! writer that stops new readers, fences every CPU and waits for the counts to drain (the
//! kernel's percpu-rwsem, in user space).
//!
//! The protocol, its correctness argument, costs and async-signal safety are documented on
//! [`RwLock`].

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, fence};

use crossbeam_utils::{Backoff, CachePadded};
use rustix::thread::futex;

use crate::arch::{self, At, Outcome};
use crate::cpu::{Cpu, Index};
use crate::percpu::{Slot, Slots};
use crate::pool::{self, Block};
use crate::retry::{self, Path, Slow};
use crate::{guard, thread};

/// A writer holds the lock or is acquiring it: readers may not enter.
const WRITER: u32 = 1;
/// The writer may sleep on `drain` until the readers' sum is zero: an unlocking reader wakes it.
const DRAINING: u32 = 2;
/// Readers may sleep on the state word.
const READERS_WAIT: u32 = 4;
/// Writers may sleep on the state word.
const WRITERS_WAIT: u32 = 8;

/// One CPU's reader count, after its guard word.
type Count = Slot<AtomicUsize>;
/// Where a count is, from its guard word.
const VALUE: usize = core::mem::offset_of!(Count, value);
/// The pool object holding the counts (one per index, plus the spare).
const COUNTS: core::alloc::Layout = core::alloc::Layout::new::<Count>();

/// What every lock keeps on its own cache line pair: read by every reader, written by writers.
struct Head {
    /// `WRITER | DRAINING | READERS_WAIT | WRITERS_WAIT`.
    state: AtomicU32,
    /// The draining writer's futex word: bumped by readers that unlock while `DRAINING` is set.
    drain: AtomicU32,
    /// The per-CPU counts (a pool block of `Count`s), null until the first lock.
    counts: AtomicPtr<Count>,
    /// The count of read locks taken while the pool could not give the per-CPU counts.
    shared: AtomicUsize,
}

/// A reader-writer lock whose read lock and unlock are one rseq critical section each on the
/// current CPU's reader count: readers on different CPUs write no common cache line, so reads
/// scale with cores. A writer stops new readers, fences every CPU (membarrier's rseq fence) and
/// waits for the readers to leave; new readers wait while a writer is pending (the protocol and
/// why it excludes are below).
///
/// Readers may sleep, migrate to other CPUs and be interrupted by signals while they hold the
/// lock: the unlock runs on whatever CPU the thread is on by then. The lock is not poisoned by a
/// panic, and `T: ?Sized` works as for `std::sync::RwLock`. [`new`](Self::new) is `const` and
/// allocates nothing: the per-CPU counts (16 bytes per CPU that uses them, in the per-CPU pool)
/// are taken at the first lock.
///
/// ```
/// use restartable::RwLock;
///
/// static CONFIG: RwLock<(u32, u32)> = RwLock::new((1, 2));
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| {
///             for _ in 0..1000 {
///                 let c = CONFIG.read(); // one critical section on this CPU's count
///                 assert_eq!(c.1, 2 * c.0); // writers keep this invariant
///             }
///         });
///     }
///     s.spawn(|| {
///         for _ in 0..10 {
///             let mut c = CONFIG.write(); // stops new readers, waits for the others
///             c.0 += 1;
///             c.1 += 2;
///         }
///     });
/// });
/// assert_eq!(*CONFIG.read(), (11, 22));
/// ```
///
/// Like any reader-writer lock that prefers writers, taking a read lock on a thread that already
/// holds one can deadlock (a writer that arrived in between waits for the first, and the second
/// waits for the writer), and so does `write` on a thread that holds either lock. A read guard
/// that is leaked (`mem::forget`) keeps writers out forever.
///
/// # The protocol
///
/// The lock has one *state word* (a writer bit and waiter bits, read by every reader, written
/// only by writers and sleeping threads) and reader counts: one `usize` per CPU in the strided
/// per-CPU [pool](crate::pool) (allocated at the first lock, so [`RwLock::new`] is `const` and
/// allocates nothing), the pool's spare slot, and one `shared` word in the lock itself (used only
/// if the pool cannot give the per-CPU counts). A count may go negative; only their **sum** means
/// anything: the number of read guards alive, plus transient increments of slow paths that are
/// about to be undone.
///
/// - **Read lock**: one critical section on the current CPU's count
///   (`add_strided_unless`): check the CPU, check the count's per-CPU guard word (`Stopped`:
///   another slow path owns this CPU's count), check the writer bit of the state word
///   (`CompareFailed`: a writer is pending), commit `count += 1` with one memory-destination
///   `add`. If a writer is pending the reader waits for the state word to change (spin, then
///   futex) and tries again: **new readers wait while a writer is pending**, so writers do not
///   starve.
/// - **Read unlock**: one critical section `count -= 1` on whatever CPU the thread is on by then
///   (it checks the count's guard word, never the writer bit), then one load of the state word:
///   if the writer is sleeping until the readers drain, wake it. **An unlock never waits for a
///   writer.**
/// - **Write lock**: set the writer bit (compare-exchange; writers queue on the state word's
///   futex), then the *fence*: membarrier's rseq fence on every CPU, which restarts every read
///   section in flight and orders every thread's earlier memory accesses before the writer's
///   later ones. Then wait until the sum of the counts is zero: spin, then sleep on a futex that
///   unlocking readers bump (the writer sets a `DRAINING` bit with the writer bit, before its one
///   fence, so that every unlock after the fence sees it). **Write unlock**: clear the state word
///   and wake whoever sleeps on it.
/// - **Slow paths** (64 aborts in a row under a debugger or a signal storm, a stopped count, a
///   thread without rseq, a signal handler that interrupted its own thread's slow path) never mix
///   plain section updates with atomic ones on the same word: they either take the count's
///   per-CPU guard (which stops that CPU's sections, with the fence) and then use atomic
///   instructions, or use the spare slot or the `shared` word, which no section ever touches. A
///   slow read lock is `count.fetch_add(1)`, then a `SeqCst` load of the state word, undoing the
///   increment (and waking a draining writer) if the writer bit is set.
/// - **Degraded mode** (no rseq or no membarrier rseq fence: valgrind, seccomp,
///   `GLIBC_TUNABLES=glibc.pthread.rseq=0` on a kernel without rseq, `--cfg restartable_portable`):
///   no section runs anywhere, readers use `fetch_add` / `fetch_sub` on the current CPU's count
///   (no guard, no lock), and the writer's fence is a `SeqCst` fence.
///
/// # Why a reader and a writer never both hold the lock
///
/// *No update of a count is lost*, so the sum is exact: each count word is changed only by
/// critical sections on its own CPU (a single-instruction commit, after a check of the word's
/// guard inside the section), or by atomic read-modify-writes made while the guard is held and
/// every section of that CPU has been fenced, or (spare, `shared`, and every word in degraded
/// mode, where no section runs) by atomic read-modify-writes only.
///
/// *After the writer's fence, no reader can newly hold the lock.* The writer sets the writer bit
/// (`SeqCst`) and then fences. A read lock through a critical section read the bit inside the
/// section before its commit: if the section had not finished at the fence, the fence restarted
/// it (it runs again and sees the bit); if it had, its increment is visible to the writer's loads
/// after the fence. A read lock through a slow path increments with `SeqCst` and then loads the
/// bit with `SeqCst` (Dekker's pattern against the writer's `SeqCst` store and fence): either it
/// sees the bit and undoes its increment on the same word, or its increment comes before the
/// writer's scan in the single total order of `SeqCst` operations. So every reader that holds the
/// lock after the fence has an increment the writer's scan sees.
///
/// *Zero means no reader.* The scan reads the words one by one while unlocks (and transient slow
/// path increments and undos) continue. Count each reader's share of the scanned sum: its
/// increment is visible (above) and its decrement is seen or not, so it adds 1 or 0, and 1 if it
/// still holds at the end of the scan; a transient increment and its undo are on the same word,
/// so the scan sees both, neither, or only the increment: it adds 1 or 0. Every share is at least
/// zero, so a sum of zero means that every reader that held the lock had released it, and the
/// writer proceeds. (The arithmetic wraps at 2^64; the true sum is between 0 and the number of
/// guards alive, so nothing is ambiguous.)
///
/// *Writers exclude each other* with the writer bit: it is set by a compare-exchange only when
/// clear and cleared only by its holder. *Data* is ordered by the same edges: a reader's
/// accesses happen before its unlock's commit (a release store: every x86-64 store is one), which
/// the writer's scan reads before its acquire fence; a writer's accesses happen before its
/// release store of the state word, which a later reader's section reads before its loads of the
/// data (x86-64 keeps loads in order).
///
/// The writer's sleep cannot miss the last unlock: it sets `DRAINING` (with the writer bit),
/// fences, then reads the futex word and scans; an unlocking reader decrements and then loads
/// the state word. Either the decrement was visible to the fence (then to the scan), or it came
/// after the fence on its CPU, and then the reader saw `DRAINING` and bumps the futex word (a
/// locked instruction, after its decrement): if the writer read the word after the bump, its
/// scan sees the decrement; if before, its `futex_wait` returns at once or the reader's wake ends
/// it. (Readers that unlock while a writer spins pay one futex wake each, which is cheaper than
/// the second fence that setting `DRAINING` only before sleeping would need.)
///
/// *Progress*: an unlock completes without waiting for anything but, at worst, a per-CPU guard
/// held for the few instructions of another slow path (a thread that holds a guard itself uses the
/// spare slot instead), and a writer never holds a per-CPU guard. So a writer waits only for
/// readers that are free to leave, and readers wait only for a writer that finishes once they do.
///
/// # Costs
///
/// A read lock and unlock are two critical sections on the current CPU's cache line plus one read
/// of the lock's state word, which every CPU keeps in its cache while no writer comes: no atomic
/// read-modify-write, no shared line written. A write lock costs a membarrier system call (an
/// inter-processor interrupt to every CPU running one of this process's threads: microseconds),
/// and waits for readers: this lock is for data that is read far more often than written.
///
/// # Async-signal safety
///
/// [`try_read`](RwLock::try_read), [`try_write`](RwLock::try_write) and dropping either guard are
/// async-signal-safe: they never wait (a handler that interrupted its own thread's slow path
/// increments the spare slot instead of waiting for the guard its thread holds), allocate nothing
/// once the lock has been used (the first use takes per-CPU memory from the pool, which a nested
/// use answers with the `shared` count instead), and a `try_write` that finds the lock held just
/// says `None`. [`read`](RwLock::read) and [`write`](RwLock::write) are not: like any lock, a
/// handler that waits for a writer while its own thread holds the read lock (or for readers while
/// its thread holds one) waits forever. The test `signal_handler_uses_the_lock_its_thread_is_in`
/// (`tests/rwlock.rs`) calls both `try_` forms from a `SIGALRM` handler every 50 us while its
/// thread locks and unlocks on CPU 0 with every abort sent to the slow path and another thread
/// writes, in fast and degraded mode.
#[repr(C)]
pub struct RwLock<T: ?Sized, I: Index = Cpu> {
    head: CachePadded<Head>,
    _index: PhantomData<I>,
    data: UnsafeCell<T>,
}

// SAFETY: readers share `&T` between threads (`T: Sync`), a writer hands out `&mut T` to one
// thread at a time (`T: Send`). (`Send` is automatic: every field is `Send` when `T` is.)
unsafe impl<T: ?Sized + Send + Sync, I: Index> Sync for RwLock<T, I> {}

/// A read lock: derefs to the data; releases the lock when dropped (on any thread, any CPU).
#[must_use = "the lock is released when the guard is dropped"]
pub struct RwLockReadGuard<'a, T: ?Sized, I: Index = Cpu> {
    lock: &'a RwLock<T, I>,
}

/// The write lock: derefs mutably to the data; releases the lock when dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RwLockWriteGuard<'a, T: ?Sized, I: Index = Cpu> {
    lock: &'a RwLock<T, I>,
}

/// The per-CPU counts of one lock, as the [driver](crate::retry) walks them.
struct Counts<I: Index> {
    first: NonNull<Count>,
    _index: PhantomData<I>,
}

// SAFETY: `first` is index 0's slot of a live pool block of `Count`s (freed only when the lock is
// dropped, which outlives every `Counts`); pool memory starts all zero, a valid `Count` (a free
// guard and a zero count) in every index, the spare's included.
unsafe impl<I: Index> Slots for Counts<I> {
    type Value = AtomicUsize;
    type Index = I;
    #[inline(always)]
    fn first(&self) -> NonNull<Count> {
        self.first
    }
}

/// How one attempt to take a read lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enter {
    /// The read lock is held.
    In,
    /// A writer is pending; nothing was counted.
    Writer,
    /// A writer is pending; a slow path counted and then undid its increment (a draining writer
    /// may need waking).
    Undone,
}

impl<T> RwLock<T, Cpu> {
    /// A lock holding `value`, indexed by CPU. `const`, and allocates nothing: usable in a
    /// `static`. For [`MmCid`](crate::ops::MmCid) indexing use
    /// [`with_index`](Self::with_index).
    pub const fn new(value: T) -> Self {
        Self::with_index(value)
    }
}

impl<T, I: Index> RwLock<T, I> {
    /// A lock holding `value`, indexed as `I` says (`RwLock::<_, MmCid>::with_index(v)`).
    pub const fn with_index(value: T) -> Self {
        RwLock {
            head: CachePadded::new(Head {
                state: AtomicU32::new(0),
                drain: AtomicU32::new(0),
                counts: AtomicPtr::new(core::ptr::null_mut()),
                shared: AtomicUsize::new(0),
            }),
            _index: PhantomData,
            data: UnsafeCell::new(value),
        }
    }

    /// The data, out of the lock.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        this.free_counts();
        // SAFETY: `this` is never used or dropped again: the data is moved out once (the head has
        // nothing else to drop).
        unsafe { core::ptr::read(&this.data) }.into_inner()
    }
}

impl<T: ?Sized, I: Index> RwLock<T, I> {
    /// Lock for reading: one critical section on the current CPU's reader count, which checks
    /// that no writer is pending. Waits (spinning, then sleeping) while a writer holds the lock
    /// or waits for it.
    ///
    /// ```
    /// let lock = restartable::RwLock::new(vec![1, 2, 3]);
    /// let a = lock.read();
    /// let b = lock.read(); // readers share (on another thread this would be the usual case)
    /// assert_eq!(a.len() + b.len(), 6);
    /// ```
    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, T, I> {
        // Inline: only the common case, one section. Everything else (no counts yet, an abort,
        // a stopped count, no rseq, a writer) goes through the driver, out of line.
        if let Some(counts) = self.counts()
            && retry::one_section(&counts, |_, at| self.enter_section(&counts, at)) == Outcome::Committed
        {
            fence(Acquire);
            return RwLockReadGuard { lock: self };
        }
        self.read_slow()
    }

    /// Lock for reading if no writer holds the lock or waits for it; never waits.
    /// Async-signal-safe.
    ///
    /// ```
    /// let lock = restartable::RwLock::new(5);
    /// let w = lock.write();
    /// assert!(lock.try_read().is_none());
    /// drop(w);
    /// assert_eq!(*lock.try_read().unwrap(), 5);
    /// ```
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T, I>> {
        match self.attempt() {
            Enter::In => {
                fence(Acquire);
                Some(RwLockReadGuard { lock: self })
            }
            Enter::Writer => None,
            Enter::Undone => {
                self.wake_drainer_if_needed();
                None
            }
        }
    }

    /// Lock for writing: stop new readers, fence every CPU, wait (spinning, then sleeping) until
    /// the readers have left and no other writer holds the lock.
    ///
    /// # Panics
    /// If the membarrier rseq fence fails after the process chose fast mode (only possible when a
    /// seccomp filter installed later forbids membarrier). The lock is released first.
    pub fn write(&self) -> RwLockWriteGuard<'_, T, I> {
        self.lock_writer();
        if let Err(e) = self.barrier() {
            self.unlock_writer();
            panic!("RwLock::write: {e}");
        }
        self.wait_for_readers();
        fence(Acquire);
        RwLockWriteGuard { lock: self }
    }

    /// Lock for writing if nobody holds the lock (no reader, no writer); never waits.
    /// Async-signal-safe. It still fences every CPU, and fails (after restarting the readers it
    /// stopped) when a reader holds the lock or is taking it at that moment.
    ///
    /// ```
    /// let lock = restartable::RwLock::new(5);
    /// let r = lock.read();
    /// assert!(lock.try_write().is_none());
    /// drop(r);
    /// *lock.try_write().unwrap() += 1;
    /// assert_eq!(lock.into_inner(), 6);
    /// ```
    ///
    /// # Panics
    /// As [`write`](Self::write), if the fence fails.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T, I>> {
        if self.head.state.compare_exchange(0, WRITER, SeqCst, Relaxed).is_err() {
            return None;
        }
        if let Err(e) = self.barrier() {
            self.unlock_writer();
            panic!("RwLock::try_write: {e}");
        }
        if self.readers() != 0 {
            self.unlock_writer();
            return None;
        }
        fence(Acquire);
        Some(RwLockWriteGuard { lock: self })
    }

    /// The data, mutably: no lock needed, `&mut self` excludes everyone.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    // ---- readers ------------------------------------------------------------------------------

    /// The per-CPU counts, if taken.
    #[inline(always)]
    fn counts(&self) -> Option<Counts<I>> {
        NonNull::new(self.head.counts.load(Acquire)).map(|first| Counts { first, _index: PhantomData })
    }

    /// The per-CPU counts, taking them from the pool now if needed; `None` when the pool cannot
    /// give them (exhausted, or this thread is inside the pool already: a signal handler).
    #[cold]
    fn counts_or_init(&self) -> Option<Counts<I>> {
        if let Some(c) = self.counts() {
            return Some(c);
        }
        let mine = Block::new(COUNTS).ok()?.into_raw().cast::<Count>();
        let first = match self.head.counts.compare_exchange(core::ptr::null_mut(), mine.as_ptr(), AcqRel, Acquire) {
            Ok(_) => mine,
            Err(theirs) => {
                // SAFETY: `mine` came from `into_raw` with this layout just above and was never
                // published.
                drop(unsafe { Block::from_raw(mine.cast(), COUNTS) });
                // SAFETY: only non-null pointers are ever stored.
                unsafe { NonNull::new_unchecked(theirs) }
            }
        };
        Some(Counts { first, _index: PhantomData })
    }

    /// The read lock's critical section on `at`'s count: `+1` unless the writer bit is set.
    #[inline(always)]
    fn enter_section(&self, counts: &Counts<I>, at: At) -> Outcome {
        // SAFETY: the count of `at.index` (at `first + index * STRIDE`, `VALUE` bytes after its
        // guard word) is written only by sections on that index, under its guard, or with atomic
        // instructions when no section can run on it; the state word is the lock's own, alive.
        unsafe {
            arch::add_strided_unless::<I, VALUE, WRITER>(
                at,
                counts.first.as_ptr().cast::<u8>(),
                at.index << pool::STRIDE_SHIFT,
                1,
                &self.head.state,
            )
        }
    }

    /// The read unlock's critical section on `at`'s count: `-1`.
    #[inline(always)]
    fn leave_section(counts: &Counts<I>, at: At) -> Outcome {
        // SAFETY: as in `enter_section`.
        unsafe {
            arch::add_strided::<I, VALUE>(
                at,
                counts.first.as_ptr().cast::<u8>(),
                at.index << pool::STRIDE_SHIFT,
                usize::MAX,
            )
        }
    }

    /// One attempt at a read lock on the current CPU's count: one critical section, or an
    /// atomic slow path.
    fn enter(&self, counts: &Counts<I>) -> Enter {
        let path = retry::drive(
            counts,
            |_, at| self.enter_section(counts, at),
            // Every slow form is atomic: on a stopped index, on the spare (which no section
            // touches), or in degraded mode (where no section runs at all).
            |slow| {
                let (Slow::Stopped(count, _) | Slow::Spare(count) | Slow::Degraded(count, _)) = slow;
                self.enter_atomic(count)
            },
            true,
        );
        match path {
            Path::Fast(Outcome::Committed) => Enter::In,
            Path::Fast(_) => Enter::Writer,
            Path::Slow(e) => e,
        }
    }

    /// A slow read lock on `count` (a word no section updates concurrently): count, then look
    /// for a writer (Dekker's pattern against the writer's `SeqCst` store and fence), and undo.
    fn enter_atomic(&self, count: &AtomicUsize) -> Enter {
        count.fetch_add(1, SeqCst);
        if self.head.state.load(SeqCst) & WRITER == 0 {
            return Enter::In;
        }
        count.fetch_sub(1, SeqCst);
        Enter::Undone
    }

    /// In degraded mode: the current CPU's count.
    #[inline(always)]
    fn degraded_count(counts: &Counts<I>) -> &AtomicUsize {
        // SAFETY: `degraded_index` is below the number of indices.
        &unsafe { counts.slot_unchecked(thread::degraded_index()) }.value
    }

    /// One attempt at a read lock from the cold paths: takes the counts first if needed.
    fn attempt(&self) -> Enter {
        match self.counts().or_else(|| self.counts_or_init()) {
            // Degraded mode: no section runs anywhere, so the current CPU's count takes atomic
            // updates without a guard (what the driver would hand over, after a failed section).
            Some(c) if thread::degraded() => self.enter_atomic(Self::degraded_count(&c)),
            Some(c) => self.enter(&c),
            None => self.enter_atomic(&self.head.shared),
        }
    }

    /// The rest of [`read`](Self::read), after a first section that did not commit (or none,
    /// before the counts exist): the driver's attempts, waiting for the writer between them.
    #[cold]
    #[inline(never)]
    fn read_slow(&self) -> RwLockReadGuard<'_, T, I> {
        loop {
            match self.attempt() {
                Enter::In => {
                    fence(Acquire);
                    return RwLockReadGuard { lock: self };
                }
                // A slow path counted and undid: a writer may be sleeping on that count.
                Enter::Undone => self.wake_drainer_if_needed(),
                Enter::Writer => {}
            }
            self.wait_for_writer();
        }
    }

    /// Wait until no writer holds the lock or waits for it: spin, then sleep on the state word.
    #[cold]
    fn wait_for_writer(&self) {
        let s = &self.head.state;
        let backoff = Backoff::new();
        loop {
            let cur = s.load(Relaxed);
            if cur & WRITER == 0 {
                return;
            }
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            if cur & READERS_WAIT == 0 && s.compare_exchange_weak(cur, cur | READERS_WAIT, Relaxed, Relaxed).is_err() {
                continue;
            }
            // EAGAIN (the word changed) and EINTR both mean: look again.
            let _ = futex::wait(s, futex::Flags::PRIVATE, cur | READERS_WAIT, None);
        }
    }

    /// Release a read lock: one critical section `count -= 1` on the current CPU's count (or an
    /// atomic slow path), then wake a draining writer.
    #[inline]
    fn leave(&self) {
        // The data accesses come before the decrement (the section's commit is a release store
        // on x86-64; this orders the compiler).
        fence(Release);
        match self.counts() {
            // Inline: one section; an abort, a stopped count or no rseq go through the driver.
            Some(counts)
                if retry::one_section(&counts, |_, at| Self::leave_section(&counts, at)) == Outcome::Committed => {}
            counts => self.leave_slow(counts),
        }
        self.wake_drainer_if_needed();
    }

    /// The read unlock through the driver (or on the `shared` count, when the read lock was
    /// taken before the per-CPU counts existed and they still do not).
    #[cold]
    #[inline(never)]
    fn leave_slow(&self, counts: Option<Counts<I>>) {
        match counts {
            Some(counts) if thread::degraded() => {
                Self::degraded_count(&counts).fetch_sub(1, SeqCst);
            }
            Some(counts) => {
                let _ = retry::drive(
                    &counts,
                    |_, at| Self::leave_section(&counts, at),
                    |slow| {
                        let (Slow::Stopped(count, _) | Slow::Spare(count) | Slow::Degraded(count, _)) = slow;
                        count.fetch_sub(1, SeqCst);
                    },
                    true,
                );
            }
            None => {
                self.head.shared.fetch_sub(1, SeqCst);
            }
        }
    }

    /// After a decrement: if the writer may be sleeping until the readers drain, wake it. (The
    /// load comes after the decrement; the writer's fence or `SeqCst` orders the other side.)
    #[inline(always)]
    fn wake_drainer_if_needed(&self) {
        if self.head.state.load(SeqCst) & DRAINING != 0 {
            self.wake_drainer();
        }
    }

    #[cold]
    fn wake_drainer(&self) {
        self.head.drain.fetch_add(1, SeqCst);
        let _ = futex::wake(&self.head.drain, futex::Flags::PRIVATE, 1);
    }

    // ---- writers ------------------------------------------------------------------------------

    /// Set the writer bit and `DRAINING`: wait (spin, then sleep) while another writer has it.
    fn lock_writer(&self) {
        let s = &self.head.state;
        let backoff = Backoff::new();
        loop {
            let cur = s.load(Relaxed);
            if cur & WRITER == 0 {
                if s.compare_exchange_weak(cur, cur | WRITER | DRAINING, SeqCst, Relaxed).is_ok() {
                    return;
                }
                continue;
            }
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            if cur & WRITERS_WAIT == 0 && s.compare_exchange_weak(cur, cur | WRITERS_WAIT, Relaxed, Relaxed).is_err() {
                continue;
            }
            let _ = futex::wait(s, futex::Flags::PRIVATE, cur | WRITERS_WAIT, None);
        }
    }

    /// Clear the state word (the writer bit and every waiter bit) and wake every sleeper.
    fn unlock_writer(&self) {
        if self.head.state.swap(0, Release) & (READERS_WAIT | WRITERS_WAIT) != 0 {
            let _ = futex::wake(&self.head.state, futex::Flags::PRIVATE, i32::MAX as u32);
        }
    }

    /// The writer's fence: a `SeqCst` fence, and when fast paths may run, membarrier's rseq fence
    /// on every CPU (restarting every read section in flight and ordering every thread's earlier
    /// accesses before this thread's later ones).
    fn barrier(&self) -> Result<(), guard::GuardError> {
        fence(SeqCst);
        if fast_paths_run() {
            guard::fence_all().map_err(guard::GuardError::Fence)?;
        }
        Ok(())
    }

    /// The readers' sum (wrapping; zero when no reader holds the lock, after the writer's fence).
    fn readers(&self) -> usize {
        let mut sum = self.head.shared.load(SeqCst);
        if let Some(c) = self.counts() {
            sum = sum.wrapping_add(c.spare().value.load(SeqCst));
            for i in 0..thread::limit() {
                // SAFETY: `i` is below the number of indices.
                sum = sum.wrapping_add(unsafe { c.slot_unchecked(i) }.value.load(SeqCst));
            }
        }
        sum
    }

    /// After the fence (with `DRAINING` set before it): wait until the readers' sum is zero.
    /// Spin, then sleep on `drain`, which every unlock after the fence bumps.
    fn wait_for_readers(&self) {
        let backoff = Backoff::new();
        loop {
            // The futex word before the scan: an unlock that bumps it later wakes the sleep.
            let seq = self.head.drain.load(SeqCst);
            if self.readers() == 0 {
                return;
            }
            if backoff.is_completed() {
                // EAGAIN (bumped since) and EINTR both mean: scan again.
                let _ = futex::wait(&self.head.drain, futex::Flags::PRIVATE, seq, None);
            } else {
                backoff.snooze();
            }
        }
    }

    /// Give the per-CPU counts back to the pool (when the lock goes away).
    fn free_counts(&self) {
        if let Some(c) = self.counts() {
            // SAFETY: the block came from `into_raw` with this layout (`counts_or_init`); the lock
            // is going away, so nothing uses it any more.
            drop(unsafe { Block::from_raw(c.first.cast(), COUNTS) });
        }
    }
}

/// Whether critical sections may run in this process (so a writer must fence them).
fn fast_paths_run() -> bool {
    match thread::mode_if_decided() {
        Some(m) => m.is_fast(),
        None => match thread::ready() {
            thread::Ready::Done(m) => m.is_fast(),
            // Inside this thread's own first use (a signal handler): no section can commit
            // anywhere until that use publishes fast mode.
            thread::Ready::Nested => thread::fast_paths_may_run(),
        },
    }
}

impl<T: ?Sized, I: Index> Drop for RwLock<T, I> {
    fn drop(&mut self) {
        self.free_counts();
    }
}

impl<T: Default, I: Index> Default for RwLock<T, I> {
    fn default() -> Self {
        Self::with_index(T::default())
    }
}

impl<T> From<T> for RwLock<T, Cpu> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: ?Sized + fmt::Debug, I: Index> fmt::Debug for RwLock<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Some(g) => d.field("data", &&*g),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.field("index", &I::NAME).finish_non_exhaustive()
    }
}

impl<T: ?Sized, I: Index> Deref for RwLockReadGuard<'_, T, I> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read lock is held: no writer has a `&mut T`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized, I: Index> Drop for RwLockReadGuard<'_, T, I> {
    #[inline]
    fn drop(&mut self) {
        self.lock.leave();
    }
}

impl<T: ?Sized, I: Index> Deref for RwLockWriteGuard<'_, T, I> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write lock is held: no other reference to the data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized, I: Index> DerefMut for RwLockWriteGuard<'_, T, I> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write lock is held: no other reference to the data exists.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized, I: Index> Drop for RwLockWriteGuard<'_, T, I> {
    fn drop(&mut self) {
        self.lock.unlock_writer();
    }
}

impl<T: ?Sized + fmt::Debug, I: Index> fmt::Debug for RwLockReadGuard<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display, I: Index> fmt::Display for RwLockReadGuard<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug, I: Index> fmt::Debug for RwLockWriteGuard<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display, I: Index> fmt::Display for RwLockWriteGuard<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
