//! Registration: where each thread's rseq area is, and how the process runs its operations.
//!
//! The area is addressed as *thread pointer + one process-wide offset*: glibc's
//! `__rseq_offset` when glibc registers every thread (found through weak references, so static
//! binaries find it too), else the offset of this library's own area in static TLS, which each
//! thread registers on its first operation. Each index mode has one published offset
//! ([`OFFSET`]): the decoy area's (an area no kernel updates, so every section aborts) until the
//! process has decided on fast mode, then the real area's, and the decoy's forever in degraded
//! mode. The hot path reads it with one load (which the compiler may share between an index read
//! and the section that checks it) and needs no per-thread pointer.
//!
//! First use allocates nothing (the mode decision reads the environment with `getenv`, the CPU
//! count into a stack buffer, and the own area is static TLS) and is re-entrant: a signal handler
//! that runs an operation while its thread is deciding gets [`Ready::Nested`] and takes a path
//! that needs no decision; other threads wait for the decision.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicIsize, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::fmt;

use crate::arch::{self, ThreadBlock};
use crate::{abi, sys};

/// The environment variable that forces degraded mode when set to `1`.
pub const FORCE_DEGRADED_ENV: &str = "RESTARTABLE_FORCE_DEGRADED";

/// Per index mode (`Index::MODE`: 0 = CPU, 1 = mm_cid): the offset of the calling thread's rseq
/// area from its thread pointer, the same for every thread. Always an area the thread may read
/// and write: the decoy until fast mode is published (set by [`on_load`] before `main`), then
/// glibc's or ours. Read by the hot path with one load.
pub(crate) static OFFSET: [AtomicIsize; 2] = [AtomicIsize::new(0), AtomicIsize::new(0)];

/// `OFFSET[mode]`, read so that two reads with no store of this thread between them are one
/// load (an index read, then the section that checks it, share it as the C reference shares its
/// `__rseq_offset`). The value changes once, from the decoy to the real area, and a section run on
/// the decoy aborts, so a stale read costs only a retry.
#[inline(always)]
pub(crate) fn offset(mode: usize) -> isize {
    // SAFETY: a live static, written only atomically.
    unsafe { arch::read_word_mergeable(OFFSET[mode].as_ptr()) }
}

/// The decoy area's offset from the thread pointer (the same in every thread: static TLS).
fn decoy_offset() -> isize {
    let block = arch::thread_block();
    // SAFETY: a field of the calling thread's block.
    let decoy = unsafe { (&raw const (*block).decoy) } as isize;
    decoy.wrapping_sub(arch::thread_pointer() as isize)
}

/// Point every index mode at the decoy (until fast mode is published).
fn use_decoy() {
    if OFFSET.iter().all(|o| o.load(Ordering::Relaxed) != 0) {
        return;
    }
    let d = decoy_offset();
    for o in &OFFSET {
        let _ = o.compare_exchange(0, d, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Whether the area at `offset` is registered and updated by the kernel (`cpu_id` is a CPU
/// number, not -1 or -2): the decoy, an unregistered area and one whose registration failed are
/// not.
#[inline]
pub(crate) fn area_registered(offset: isize) -> bool {
    // SAFETY: `OFFSET` values always name a live area of the calling thread.
    (unsafe { arch::read_tp_u32::<{ abi::OFFSET_CPU_ID }>(offset) } as i32) >= 0
}

/// The number of index values: [`sys::possible_cpus`] capped at [`abi::MAX_CPUS`].
#[inline]
pub(crate) fn limit() -> usize {
    sys::possible_cpus().min(abi::MAX_CPUS)
}

// ------------------------------------------------------------------------------------------
// A re-entrancy-aware once cell.

/// A value computed once. A nested call from the thread that is computing it (a signal handler,
/// or a global allocator built on this library) gets `None` instead of deadlocking; other threads
/// wait. Computing it must not panic.
pub(crate) struct Once<T> {
    state: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, by one thread, before `state` becomes DONE (release), and
// only read after `state` is seen DONE (acquire).
unsafe impl<T: Send + Sync> Sync for Once<T> {}

const UNINIT: usize = 0;
const DONE: usize = 1;

/// A word that names the calling thread among the live ones (its thread block's address: even,
/// never 0 or 1).
fn me() -> usize {
    arch::thread_block() as usize
}

impl<T> Once<T> {
    pub(crate) const fn new() -> Self {
        Once { state: AtomicUsize::new(UNINIT), value: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// The value, if computed.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // SAFETY: DONE is stored (release) after the value was written.
        (self.state.load(Ordering::Acquire) == DONE).then(|| unsafe { (*self.value.get()).assume_init_ref() })
    }

    /// The value, computing it now if needed; `None` for a nested call during the computation.
    #[inline]
    pub(crate) fn get_or_init(&self, f: impl FnOnce() -> T) -> Option<&T> {
        match self.get() {
            Some(v) => Some(v),
            None => self.init(f),
        }
    }

    #[cold]
    fn init(&self, f: impl FnOnce() -> T) -> Option<&T> {
        let me = me();
        loop {
            match self.state.compare_exchange(UNINIT, me, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    let v = f();
                    // SAFETY: this thread owns the cell until DONE is published.
                    unsafe { (*self.value.get()).write(v) };
                    self.state.store(DONE, Ordering::Release);
                    return self.get();
                }
                Err(DONE) => return self.get(),
                Err(owner) if owner == me => return None,
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// In a forked child: forget a computation that another thread (absent here) had begun.
    fn forget_abandoned(&self) {
        let s = self.state.load(Ordering::Relaxed);
        if s != UNINIT && s != DONE && s != me() {
            self.state.store(UNINIT, Ordering::Relaxed);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Process facts and the mode.

/// What the process knows about rseq, read once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Process {
    /// `(__rseq_offset, __rseq_size)` when glibc registers threads.
    pub glibc: Option<(isize, u32)>,
    /// `AT_RSEQ_FEATURE_SIZE`.
    pub feature_size: Option<usize>,
    /// `AT_RSEQ_ALIGN`.
    pub align: Option<usize>,
    /// The length we register our own area with.
    pub own_len: u32,
    /// How many bytes of the area the kernel keeps up to date (decides mm_cid and node_id).
    pub usable_len: usize,
    /// The area's offset from the thread pointer.
    pub offset: isize,
    /// Whether the CPU has `rdpid`.
    pub rdpid: bool,
}

static PROCESS: Once<Process> = Once::new();

fn read_process() -> Process {
    let glibc = arch::glibc_rseq();
    let feature_size = sys::rseq_feature_size();
    let align = sys::rseq_align();
    let need = feature_size.unwrap_or(0).max(abi::RSEQ_ORIG_SIZE);
    let own_len = if need <= arch::OWN_AREA_LEN && align.unwrap_or(32) <= 64 { need } else { abi::RSEQ_ORIG_SIZE };
    let kernel = feature_size.unwrap_or(20);
    let usable_len = match glibc {
        Some((_, size)) if size as usize <= abi::RSEQ_ORIG_SIZE => kernel.min(abi::RSEQ_ORIG_SIZE),
        Some((_, size)) => kernel.min(size as usize),
        None => kernel.min(own_len),
    };
    let offset = match glibc {
        Some((offset, _)) => offset,
        None => (arch::thread_block() as isize).wrapping_sub(arch::thread_pointer() as isize),
    };
    Process { glibc, feature_size, align, own_len: own_len as u32, usable_len, offset, rdpid: arch::has_rdpid() }
}

/// The process facts; `None` only for a nested first use (see [`Once`]).
pub(crate) fn process() -> Option<&'static Process> {
    PROCESS.get_or_init(read_process)
}

/// How the process runs its operations, decided once, before the first critical section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// rseq fast paths; the guard plus the membarrier rseq fence for the slow path.
    Fast,
    /// No fast path runs: counters add with atomic instructions, the other operations take the
    /// guard words as per-CPU locks (no fence); `rdpid` or the vDSO picks the CPU. Correct, only
    /// slower.
    Degraded(Degraded),
}

/// Why the process runs in [`Mode::Degraded`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Degraded {
    /// The thread that decided could not use rseq.
    NoRseq(Unavailable),
    /// rseq works, but membarrier's rseq fence (needed to stop a CPU's fast paths) does not.
    NoFence {
        /// The errno of `membarrier(REGISTER_PRIVATE_EXPEDITED_RSEQ)`, if it failed with one.
        errno: Option<i32>,
    },
    /// The environment variable `RESTARTABLE_FORCE_DEGRADED=1` asked for it (tests, stress).
    Forced,
    /// The library was built without critical sections for this architecture (the portable
    /// module).
    Portable,
}

impl Mode {
    /// True for [`Mode::Fast`].
    pub fn is_fast(&self) -> bool {
        matches!(self, Mode::Fast)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Fast => f.write_str("fast (rseq fast paths, guard + membarrier rseq fence slow path)"),
            Mode::Degraded(Degraded::NoRseq(u)) => write!(f, "degraded: rseq unavailable ({u})"),
            Mode::Degraded(Degraded::NoFence { errno }) => write!(
                f,
                "degraded: membarrier rseq fence unavailable ({})",
                errno.map_or("the kernel does not offer PRIVATE_EXPEDITED_RSEQ", sys::errno_name)
            ),
            Mode::Degraded(Degraded::Forced) => write!(f, "degraded: forced by {FORCE_DEGRADED_ENV}=1"),
            Mode::Degraded(Degraded::Portable) => {
                f.write_str("degraded: built without critical sections for this architecture (portable module)")
            }
        }
    }
}

static MODE: Once<Mode> = Once::new();

/// Whether `RESTARTABLE_FORCE_DEGRADED=1` is set (read with `getenv`: no allocation).
fn forced() -> bool {
    // SAFETY: a NUL-terminated name; getenv returns null or a NUL-terminated value.
    let v = unsafe { libc::getenv(c"RESTARTABLE_FORCE_DEGRADED".as_ptr()) };
    // SAFETY: non-null values are NUL-terminated C strings owned by the environment.
    !v.is_null() && unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() == b"1"
}

fn decide(p: &Process) -> Mode {
    if forced() {
        return Mode::Degraded(Degraded::Forced);
    }
    if !arch::HAS_RSEQ {
        return Mode::Degraded(Degraded::Portable);
    }
    if let Err(u) = thread_ready(p) {
        return Mode::Degraded(Degraded::NoRseq(u));
    }
    if let Err(errno) = register_fence() {
        return Mode::Degraded(Degraded::NoFence { errno });
    }
    if sys::possible_cpus() > abi::MAX_CPUS {
        // The kernel could give an index past the per-CPU memory: no fast path.
        return Mode::Degraded(Degraded::NoRseq(Unavailable {
            errno: None,
            reason: "this machine has more possible CPUs than the library supports (8192)",
        }));
    }
    // Said before the offsets are published: an operation interrupting this thread's first use
    // that sees `false` knows no fast path can run anywhere yet.
    PUBLISHING.store(true, Ordering::SeqCst);
    OFFSET[0].store(p.offset, Ordering::Release);
    if p.usable_len >= abi::OFFSET_MM_CID + 4 {
        OFFSET[1].store(p.offset, Ordering::Release);
    }
    Mode::Fast
}

/// Whether the first use is complete: [`Ready::Nested`] for an operation that runs inside the
/// first use on the same thread (a signal handler), which must then complete without waiting for
/// any guard and without a fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The mode is decided (and this thread's registration attempted).
    Done(&'static Mode),
    /// This thread is itself in the middle of the first use.
    Nested,
}

/// Decide the mode if needed and register the calling thread if needed.
#[cold]
pub(crate) fn ready() -> Ready {
    use_decoy();
    let Some(p) = process() else { return Ready::Nested };
    let Some(mode) = MODE.get_or_init(|| {
        let mode = decide(p);
        if !mode.is_fast() {
            DEGRADED_RDPID.store(p.rdpid, Ordering::Relaxed);
            if let Some((offset, _)) = p.glibc {
                DEGRADED_GLIBC_AREA.store(offset, Ordering::Relaxed);
            }
            DEGRADED.store(true, Ordering::Release);
        }
        mode
    }) else {
        return Ready::Nested;
    };
    let _ = thread_ready(p);
    Ready::Done(mode)
}

/// The process's [`Mode`], deciding it on first use: degraded if forced, if the library has no
/// critical sections for this architecture, if the calling thread cannot use rseq, or if
/// membarrier's rseq fence cannot be registered.
///
/// # Panics
/// Only when called from a signal handler that interrupted this very decision on the same
/// thread (the decision cannot be both in progress and finished).
pub fn mode() -> &'static Mode {
    match ready() {
        Ready::Done(m) => m,
        Ready::Nested => panic!("restartable::mode() called while this thread is deciding the mode"),
    }
}

/// The mode if it has been decided, without deciding it.
#[inline]
pub(crate) fn mode_if_decided() -> Option<&'static Mode> {
    MODE.get()
}

/// Set (before the offsets are published) once fast paths may run.
static PUBLISHING: AtomicBool = AtomicBool::new(false);

/// Whether fast paths may run (the decision for fast mode is being, or has been, published).
#[inline]
pub(crate) fn fast_paths_may_run() -> bool {
    PUBLISHING.load(Ordering::SeqCst)
}

/// Set once the process has decided on degraded mode (no fast path will ever run).
static DEGRADED: AtomicBool = AtomicBool::new(false);
/// Set with `DEGRADED` when the CPU has `rdpid` (degraded mode then reads the CPU with it).
static DEGRADED_RDPID: AtomicBool = AtomicBool::new(false);

/// Set with `DEGRADED` when glibc registers every thread's area (degraded mode forced, or no
/// rseq fence): its offset from the thread pointer, so the CPU is one load of the area's
/// `cpu_id`, as glibc's own `sched_getcpu` does. `NO_AREA` otherwise.
static DEGRADED_GLIBC_AREA: AtomicIsize = AtomicIsize::new(NO_AREA);
/// No glibc area for [`degraded_index`].
const NO_AREA: isize = isize::MIN;

/// Whether the process has decided on degraded mode (no fast path will ever run).
#[inline]
pub(crate) fn degraded() -> bool {
    DEGRADED.load(Ordering::Relaxed)
}

/// The current CPU as an index below [`limit`], in degraded mode: the `cpu_id` of glibc's area
/// where glibc registered this thread (one load), else `rdpid` where the CPU has it (one
/// instruction), else [`cpu_now`]. Only a hint for locality: degraded operations are correct
/// on any index.
#[inline(always)]
pub(crate) fn degraded_index() -> usize {
    let area = DEGRADED_GLIBC_AREA.load(Ordering::Relaxed);
    if area != NO_AREA {
        // SAFETY: glibc places every thread's area at this offset from the thread pointer (its
        // `__rseq_offset` contract); `cpu_id` is a `u32` the kernel rewrites on return to this
        // thread, -1 or -2 (out of range below) when this thread is not registered.
        let cpu = unsafe {
            arch::thread_pointer().wrapping_offset(area + abi::OFFSET_CPU_ID as isize).cast::<u32>().read_volatile()
        } as usize;
        if cpu < limit() {
            return cpu;
        }
    }
    degraded_index_without_area()
}

/// [`degraded_index`] when glibc's area gives no CPU.
#[inline(never)]
fn degraded_index_without_area() -> usize {
    if DEGRADED_RDPID.load(Ordering::Relaxed) {
        // SAFETY: only set when the CPU has `rdpid`.
        let (i, n) = (unsafe { arch::rdpid() }, limit());
        if i < n { i } else { i % n }
    } else {
        index_now()
    }
}

static FENCE: AtomicI32 = AtomicI32::new(0);

/// Register for membarrier's rseq fence (once; the kernel accepts repeated registrations).
fn register_fence() -> Result<(), Option<i32>> {
    match FENCE.load(Ordering::Acquire) {
        1 => return Ok(()),
        0 => {}
        e => return Err((e > 1).then_some(e - 1)),
    }
    let r = if sys::has_rseq_fence(sys::membarrier_query()) {
        sys::membarrier_register_rseq().map_err(|e| e.raw_os_error())
    } else {
        // Either the kernel lacks it or the query itself was refused: registering says which.
        Err(sys::membarrier_register_rseq().err().and_then(|e| e.raw_os_error()))
    };
    FENCE.store(
        match r {
            Ok(()) => 1,
            Err(Some(e)) => e + 1,
            Err(None) => -1,
        },
        Ordering::Release,
    );
    r
}

/// Make sure the process is registered for membarrier's rseq fence.
pub(crate) fn fence_registered() -> std::io::Result<()> {
    register_fence().map_err(|e| std::io::Error::from_raw_os_error(e.unwrap_or(libc::ENOSYS)))
}

// ------------------------------------------------------------------------------------------
// Per-thread registration.

/// Thread states kept in [`ThreadBlock::state`].
mod state {
    pub const UNKNOWN: u32 = 0;
    pub const READY: u32 = 1;
    /// Our own registration was refused (errno in the block).
    pub const REFUSED: u32 = 2;
    /// glibc's registration failed for this thread (`cpu_id` is -2).
    pub const GLIBC_FAILED: u32 = 3;
    /// glibc did not register this thread (`cpu_id` is -1).
    pub const GLIBC_NONE: u32 = 4;
    /// The library has no critical sections for this architecture.
    pub const PORTABLE: u32 = 5;
}

fn block() -> &'static ThreadBlock {
    // SAFETY: the calling thread's block lives as long as the thread; the reference is not
    // sent to other threads (every use below is immediate).
    unsafe { &*arch::thread_block() }
}

/// The calling thread's registration, registering our own area now if it was never tried.
fn thread_ready(p: &Process) -> Result<(), Unavailable> {
    let b = block();
    let mut s = b.state.load(Ordering::Relaxed);
    if s == state::UNKNOWN {
        s = register(p, b);
        b.state.store(s, Ordering::Relaxed);
    }
    match s {
        state::READY => Ok(()),
        state::REFUSED => {
            let errno = b.errno.load(Ordering::Relaxed);
            Err(Unavailable { errno: Some(errno), reason: sys::explain_rseq_errno(errno) })
        }
        state::GLIBC_FAILED => {
            Err(Unavailable { errno: None, reason: "glibc's rseq registration failed for this thread (cpu_id is -2)" })
        }
        state::GLIBC_NONE => Err(Unavailable {
            errno: None,
            reason: "glibc did not register rseq for this thread (cpu_id is -1: not a glibc thread?)",
        }),
        _ => Err(Unavailable { errno: None, reason: "no critical sections for this architecture" }),
    }
}

fn register(p: &Process, b: &ThreadBlock) -> u32 {
    if !arch::HAS_RSEQ {
        return state::PORTABLE;
    }
    if let Some((offset, _)) = p.glibc {
        // SAFETY: glibc places every thread's area (registered or not) at this offset from its
        // thread pointer; `cpu_id` is a kernel-written field, read atomically.
        let cpu = unsafe { read_u32(arch::thread_pointer().wrapping_offset(offset), abi::OFFSET_CPU_ID) };
        return match cpu {
            abi::CPU_ID_REGISTRATION_FAILED => state::GLIBC_FAILED,
            abi::CPU_ID_UNINITIALIZED => state::GLIBC_NONE,
            _ => state::READY,
        };
    }
    let area = b.area.as_ptr().cast_mut().cast::<abi::Rseq>();
    // SAFETY: the area is this thread's static TLS (64-byte aligned, `OWN_AREA_LEN` bytes, at
    // least `own_len`), which lives until the thread has exited: the kernel stops writing it
    // then, so it is never unregistered.
    match unsafe { sys::rseq(area, p.own_len, 0, abi::RSEQ_SIG) } {
        Ok(()) => {
            OWN_REGISTRATIONS.fetch_add(1, Ordering::Relaxed);
            state::READY
        }
        // The same area, length and signature are already registered (by this library).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => state::READY,
        Err(e) => {
            b.errno.store(e.raw_os_error().unwrap_or(0), Ordering::Relaxed);
            state::REFUSED
        }
    }
}

static OWN_REGISTRATIONS: AtomicU64 = AtomicU64::new(0);

/// How many threads this library has registered an rseq area for (0 while glibc registers
/// them). Own areas are static TLS: a thread's area lives and dies with the thread, so there is
/// nothing to free and nothing to leak.
pub fn own_registrations() -> u64 {
    OWN_REGISTRATIONS.load(Ordering::Relaxed)
}

/// Whether the calling thread has a registered area the kernel keeps up to date (without
/// registering it).
#[inline]
pub(crate) fn thread_has_area() -> bool {
    block().state.load(Ordering::Relaxed) == state::READY
}

/// Atomically read the `u32` field at `offset` of an area.
///
/// # Safety
/// `area` points to a live rseq area at least `offset + 4` bytes long (or to other readable
/// memory whose value the caller discards).
#[inline(always)]
pub(crate) unsafe fn read_u32(area: *const u8, offset: usize) -> u32 {
    // SAFETY: the kernel writes these fields between our instructions, never concurrently with
    // one of them from another CPU; an atomic load is the right Rust-side access for them.
    unsafe { (*area.add(offset).cast::<AtomicU32>()).load(Ordering::Relaxed) }
}

/// The calling thread's area, when it has one the kernel keeps up to date.
pub(crate) fn thread_area() -> Option<*const u8> {
    let p = PROCESS.get()?;
    (arch::HAS_RSEQ && thread_has_area()).then(|| arch::thread_pointer().wrapping_offset(p.offset).cast_const())
}

/// How many bytes of the area the kernel keeps up to date: decides whether `node_id` and
/// `mm_cid` can be read.
pub(crate) fn usable_len() -> usize {
    process().map_or(0, |p| p.usable_len)
}

/// The CPU the calling thread runs on when no fast path is in use: from its area if it has one
/// (registering it first if that was never tried), else `rdpid`, else `sched_getcpu` (the vDSO).
#[inline]
pub(crate) fn cpu_now() -> usize {
    if let Some(p) = PROCESS.get() {
        let b = block();
        let mut s = b.state.load(Ordering::Relaxed);
        if s == state::UNKNOWN {
            let _ = thread_ready(p);
            s = b.state.load(Ordering::Relaxed);
        }
        if s == state::READY && arch::HAS_RSEQ {
            let area = arch::thread_pointer().wrapping_offset(p.offset);
            // SAFETY: this thread's live, registered area.
            return unsafe { read_u32(area, abi::OFFSET_CPU_ID) } as usize;
        }
        if p.rdpid {
            // SAFETY: the CPU has `rdpid`.
            return unsafe { arch::rdpid() };
        }
    }
    sys::sched_getcpu()
}

/// [`cpu_now`] as an index below [`limit`].
#[inline]
pub(crate) fn index_now() -> usize {
    let (i, n) = (cpu_now(), limit());
    // A CPU number is below the possible count; the remainder only guards against a lying kernel.
    if i < n { i } else { i % n }
}

// ------------------------------------------------------------------------------------------
// Reporting.

/// Who owns the calling thread's rseq area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// glibc (2.35+) registered the area; we found it through `__rseq_offset`/`__rseq_size`.
    Glibc {
        /// `__rseq_offset`: the area's offset from the thread pointer.
        offset: isize,
        /// `__rseq_size` as glibc exports it (20 on glibc 2.35-2.39 even though 32 bytes exist).
        size: u32,
    },
    /// We registered the area ourselves (glibc did not, or is not there).
    Own {
        /// The registered length: max(32, the kernel's feature size).
        len: u32,
        /// The area's alignment.
        align: usize,
    },
    /// No usable rseq area: every operation takes the slow path.
    Unavailable(Unavailable),
}

/// Why rseq is not usable on this thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The errno that refused registration, where one did.
    pub errno: Option<i32>,
    /// A sentence that explains it.
    pub reason: &'static str,
}

impl Unavailable {
    /// The errno's symbolic name (`"ENOSYS"`, ...), or `None`.
    pub fn errno_name(&self) -> Option<&'static str> {
        self.errno.map(sys::errno_name)
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}: {}", sys::errno_name(e), self.reason),
            None => f.write_str(self.reason),
        }
    }
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registration::Glibc { offset, size } => {
                write!(f, "glibc (__rseq_offset {offset}, __rseq_size {size})")
            }
            Registration::Own { len, align } => write!(f, "own (length {len}, alignment {align})"),
            Registration::Unavailable(u) => write!(f, "unavailable ({u})"),
        }
    }
}

/// How the calling thread's rseq area is provided (registering it now if it was not yet).
pub fn registration() -> Registration {
    let Some(p) = process() else {
        return Registration::Unavailable(Unavailable { errno: None, reason: "the first use is in progress" });
    };
    match (thread_ready(p), p.glibc) {
        (Ok(()), Some((offset, size))) => Registration::Glibc { offset, size },
        (Ok(()), None) => Registration::Own { len: p.own_len, align: arch::OWN_AREA_LEN },
        (Err(u), _) => Registration::Unavailable(u),
    }
}

// ------------------------------------------------------------------------------------------
// Fork, and the library's lifetime in a process.

static GENERATION: AtomicU32 = AtomicU32::new(0);

/// The fork generation: how many `fork`s separate this process from the first one that loaded
/// the library (guard owners from an older generation no longer exist).
#[inline]
pub(crate) fn generation() -> u32 {
    GENERATION.load(Ordering::Relaxed)
}

/// `pthread_atfork` child handler: only the forking thread exists in the child.
extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    PROCESS.forget_abandoned();
    MODE.forget_abandoned();
    // The child is a new process for membarrier: register it again if fences are in use.
    if FENCE.load(Ordering::Relaxed) == 1 {
        FENCE.store(0, Ordering::Relaxed);
        let _ = register_fence();
    }
}

/// Run when the library is loaded (an ELF constructor: before `main`, or inside `dlopen`), with a
/// priority that puts it before every constructor of normal priority in the same object, so that
/// the hot path's offset names the decoy before any code could use it.
extern "C" fn on_load() {
    use_decoy();
    // SAFETY: registers a handler that only touches this library's statics; null handlers are
    // allowed.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    pin_library();
}

#[used]
#[unsafe(link_section = ".init_array.00101")]
static ON_LOAD: extern "C" fn() = on_load;

/// Keep the object that contains this library mapped for the life of the process, so that
/// `dlclose` never unmaps critical-section descriptors that a thread's `rseq_cs` may still
/// point at (the kernel would then read an unmapped address and kill the process). In an
/// executable this is a no-op.
fn pin_library() {
    // SAFETY: `Dl_info` is plain data; dladdr fills it for an address inside a loaded object.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: `on_load` is a function of this object; dladdr only reads loader state.
    if unsafe { libc::dladdr(on_load as *const libc::c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return;
    }
    // SAFETY: NOLOAD never loads anything: it returns the already loaded object (taking a
    // reference that is never dropped) and marks it NODELETE, or null.
    unsafe { libc::dlopen(info.dli_fname, libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE) };
}
