//! Per-thread rseq registration: glibc's area, our own, or none (with the reason).
//!
//! Registration is lazy: the first operation of a thread looks the area up (glibc) or registers
//! one (own), and caches a pointer to it in a constant-initialised thread-local, so the fast
//! path costs one `fs`-relative load. Failures are remembered per thread and never retried in a
//! loop; callers then see [`Outcome::Stopped`](crate::ops::Outcome::Stopped) and take the slow
//! path.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Own areas registered and not yet unregistered and freed (a leak detector for tests).
static LIVE_OWN_AREAS: AtomicUsize = AtomicUsize::new(0);

/// How many areas this library registered itself and has not yet unregistered and freed:
/// one per live thread in own-area mode, 0 with glibc's areas. A thread that exits brings it
/// back down; if it does not, areas leak.
pub fn live_own_areas() -> usize {
    LIVE_OWN_AREAS.load(Ordering::Relaxed)
}

use crate::{abi, arch, sys};

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
    fn from_errno(errno: i32) -> Self {
        Unavailable { errno: Some(errno), reason: sys::explain_rseq_errno(errno) }
    }

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

/// What the process knows about rseq, computed once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Process {
    /// `(__rseq_offset, __rseq_size)` when glibc registers threads.
    pub glibc: Option<(isize, u32)>,
    /// `AT_RSEQ_FEATURE_SIZE`.
    pub feature_size: Option<usize>,
    /// `AT_RSEQ_ALIGN`.
    pub align: Option<usize>,
}

pub(crate) fn process() -> &'static Process {
    static P: OnceLock<Process> = OnceLock::new();
    P.get_or_init(|| {
        let p = Process { glibc: glibc_rseq(), feature_size: sys::rseq_feature_size(), align: sys::rseq_align() };
        USABLE_LEN.store(compute_usable_len(&p), Ordering::Relaxed);
        p
    })
}

fn glibc_rseq() -> Option<(isize, u32)> {
    let size = sys::dlsym(c"__rseq_size")?;
    let offset = sys::dlsym(c"__rseq_offset")?;
    // SAFETY: glibc defines `const unsigned int __rseq_size` and `const ptrdiff_t __rseq_offset`;
    // both are written before main and never change afterwards.
    let (size, offset) = unsafe { (*(size as *const u32), *(offset as *const isize)) };
    (size != 0).then_some((offset, size))
}

/// Per-thread state beyond the area pointer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    Ready,
    Unavailable(Option<i32>, &'static str),
    Exited,
}

thread_local! {
    /// The calling thread's usable area, or null. Constant-initialised and without `Drop`, so a
    /// read is a single thread-pointer-relative load.
    static AREA: Cell<*mut abi::Rseq> = const { Cell::new(ptr::null_mut()) };
    /// The registered area (set even in degraded mode, where `AREA` stays null).
    static REGISTERED: Cell<*mut abi::Rseq> = const { Cell::new(ptr::null_mut()) };
    static STATE: Cell<State> = const { Cell::new(State::Unknown) };
    /// Our own registration, unregistered and freed when the thread exits.
    static OWN: RefCell<Option<OwnArea>> = const { RefCell::new(None) };
}

struct OwnArea {
    ptr: *mut abi::Rseq,
    layout: Layout,
    len: u32,
}

impl Drop for OwnArea {
    fn drop(&mut self) {
        AREA.with(|a| a.set(ptr::null_mut()));
        REGISTERED.with(|a| a.set(ptr::null_mut()));
        STATE.with(|s| s.set(State::Exited));
        // SAFETY: `ptr`/`len` are what this thread registered, with the same signature.
        let unregistered = unsafe { sys::rseq(self.ptr, self.len, abi::RSEQ_FLAG_UNREGISTER, abi::RSEQ_SIG) };
        if unregistered.is_ok() {
            // SAFETY: allocated with this layout in `register_own`; the kernel no longer
            // writes to it after a successful unregistration.
            unsafe { std::alloc::dealloc(self.ptr.cast(), self.layout) };
            LIVE_OWN_AREAS.fetch_sub(1, Ordering::Relaxed);
        }
        // If unregistration failed the kernel may still write to the area: leak it.
    }
}

/// The calling thread's rseq area, or null when it has none (never registered successfully,
/// refused, or the thread is exiting).
#[inline(always)]
pub(crate) fn area() -> *mut abi::Rseq {
    let p = AREA.with(Cell::get);
    if !p.is_null() { p } else { area_slow() }
}

#[cold]
#[inline(never)]
fn area_slow() -> *mut abi::Rseq {
    if thread_state() != State::Ready || !mode().is_fast() {
        // No area, or degraded: the area stays registered (and reported), but no section runs.
        return ptr::null_mut();
    }
    let p = REGISTERED.with(Cell::get);
    AREA.with(|a| a.set(p));
    p
}

/// The calling thread's registration state, registering now if it was never tried.
fn thread_state() -> State {
    if STATE.with(Cell::get) == State::Unknown {
        let state = init_thread();
        STATE.with(|s| s.set(state));
    }
    STATE.with(Cell::get)
}

/// How the process runs its operations, decided once, before the first critical section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// rseq fast paths; the guard plus the membarrier rseq fence for the slow path.
    Fast,
    /// Every operation goes through the guard words, used as per-CPU locks (no fence);
    /// `sched_getcpu` picks the CPU. Correct, only slower.
    Degraded(Degraded),
}

/// Why the process runs in [`Mode::Degraded`].
#[derive(Debug, Clone, PartialEq, Eq)]
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
            Mode::Degraded(Degraded::Forced) => f.write_str("degraded: forced by RESTARTABLE_FORCE_DEGRADED"),
        }
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// The process's [`Mode`], deciding it on first use: degraded if forced, if the calling
/// thread cannot use rseq, or if membarrier's rseq fence cannot be registered.
pub fn mode() -> &'static Mode {
    MODE.get_or_init(|| {
        if std::env::var_os("RESTARTABLE_FORCE_DEGRADED").is_some_and(|v| v == "1") {
            return Mode::Degraded(Degraded::Forced);
        }
        if let State::Unavailable(errno, reason) = thread_state() {
            return Mode::Degraded(Degraded::NoRseq(Unavailable { errno, reason }));
        }
        match register_fence() {
            Ok(()) => Mode::Fast,
            Err(errno) => Mode::Degraded(Degraded::NoFence { errno }),
        }
    })
}

fn register_fence() -> Result<(), Option<i32>> {
    static FENCE: OnceLock<Result<(), Option<i32>>> = OnceLock::new();
    *FENCE.get_or_init(|| {
        if sys::membarrier_query() & abi::membarrier::CMD_PRIVATE_EXPEDITED_RSEQ == 0 {
            // Either the kernel lacks it or the query itself was refused: registering says which.
            return Err(sys::membarrier_register_rseq().err().and_then(|e| e.raw_os_error()));
        }
        sys::membarrier_register_rseq().map_err(|e| e.raw_os_error())
    })
}

/// Make sure the process is registered for membarrier's rseq fence (once, thread-safely).
pub(crate) fn fence_registered() -> std::io::Result<()> {
    register_fence().map_err(|e| std::io::Error::from_raw_os_error(e.unwrap_or(libc::ENOSYS)))
}

fn init_thread() -> State {
    let p = process();
    if let Some((offset, _)) = p.glibc {
        let area = arch::thread_pointer().wrapping_offset(offset).cast::<abi::Rseq>();
        // SAFETY: glibc places a registered (or registration-failed) area at this offset from
        // every thread's thread pointer; we only read its `cpu_id` atomically.
        let cpu = unsafe { read_u32(area, abi::OFFSET_CPU_ID) };
        return match cpu {
            abi::CPU_ID_REGISTRATION_FAILED => {
                State::Unavailable(None, "glibc's rseq registration failed for this thread (cpu_id is -2)")
            }
            abi::CPU_ID_UNINITIALIZED => State::Unavailable(
                None,
                "glibc did not register rseq for this thread (cpu_id is -1: not a glibc thread?)",
            ),
            _ => {
                REGISTERED.with(|a| a.set(area));
                State::Ready
            }
        };
    }
    register_own()
}

fn own_len(p: &Process) -> u32 {
    p.feature_size.unwrap_or(0).max(abi::RSEQ_ORIG_SIZE) as u32
}

fn own_shape() -> (u32, usize) {
    let p = process();
    let len = own_len(p);
    let align = p.align.unwrap_or(0).max(32).next_power_of_two();
    (len, align)
}

fn register_own() -> State {
    let (len, align) = own_shape();
    // Make sure the destructor slot exists before registering, so a registration can always be
    // undone at thread exit. During TLS teardown this fails and we stay unregistered.
    if OWN.try_with(|_| ()).is_err() {
        return State::Unavailable(None, "the thread is exiting");
    }
    let Ok(layout) = Layout::from_size_align((len as usize).next_multiple_of(align), align) else {
        return State::Unavailable(Some(libc::EINVAL), "the kernel's rseq alignment is invalid");
    };
    // SAFETY: the layout has a non-zero size (at least 32).
    let mem = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<abi::Rseq>();
    if mem.is_null() {
        return State::Unavailable(Some(libc::ENOMEM), "out of memory for the rseq area");
    }
    // SAFETY: `mem` is zeroed, `len` bytes long, aligned as the kernel asked; it stays allocated
    // until `OwnArea::drop` unregisters it.
    match unsafe { sys::rseq(mem, len, 0, abi::RSEQ_SIG) } {
        Ok(()) => {
            LIVE_OWN_AREAS.fetch_add(1, Ordering::Relaxed);
            OWN.with(|o| *o.borrow_mut() = Some(OwnArea { ptr: mem, layout, len }));
            REGISTERED.with(|a| a.set(mem));
            State::Ready
        }
        Err(e) => {
            // SAFETY: allocated just above with this layout and never registered.
            unsafe { std::alloc::dealloc(mem.cast(), layout) };
            let u = Unavailable::from_errno(e.raw_os_error().unwrap_or(0));
            State::Unavailable(u.errno, u.reason)
        }
    }
}

/// Atomically read the `u32` field at `offset` of an area.
///
/// # Safety
/// `area` must point to a live rseq area at least `offset + 4` bytes long.
#[inline(always)]
pub(crate) unsafe fn read_u32(area: *const abi::Rseq, offset: usize) -> u32 {
    // SAFETY: the kernel writes these fields between our instructions, never concurrently with
    // one of them from another CPU; an atomic load is the right Rust-side access for them.
    unsafe { (*area.cast::<u8>().add(offset).cast::<AtomicU32>()).load(Ordering::Relaxed) }
}

/// How many bytes of the area the kernel keeps up to date: decides whether `node_id` and
/// `mm_cid` can be read.
pub(crate) fn usable_len() -> usize {
    let _ = process();
    USABLE_LEN.load(Ordering::Relaxed)
}

/// [`usable_len`] without making sure the process facts were read: exact for any thread that
/// has an rseq area (it read them before getting one).
#[inline(always)]
pub(crate) fn usable_len_fast() -> usize {
    USABLE_LEN.load(Ordering::Relaxed)
}

/// [`usable_len`], computed once when the process facts are read (before any thread gets an
/// area, so a thread that has an area always sees the final value).
static USABLE_LEN: AtomicUsize = AtomicUsize::new(0);

fn compute_usable_len(p: &Process) -> usize {
    let kernel = p.feature_size.unwrap_or(20);
    match p.glibc {
        Some((_, size)) if size as usize <= abi::RSEQ_ORIG_SIZE => kernel.min(abi::RSEQ_ORIG_SIZE),
        Some((_, size)) => kernel.min(size as usize),
        None => kernel.min(own_len(p) as usize),
    }
}

/// How the calling thread's rseq area is provided (registering it now if it was not yet).
pub fn registration() -> Registration {
    let _ = thread_state();
    let p = process();
    match STATE.with(Cell::get) {
        State::Ready => match p.glibc {
            Some((offset, size)) => Registration::Glibc { offset, size },
            None => {
                let (len, align) = own_shape();
                Registration::Own { len, align }
            }
        },
        State::Unavailable(errno, reason) => Registration::Unavailable(Unavailable { errno, reason }),
        State::Exited => Registration::Unavailable(Unavailable { errno: None, reason: "the thread is exiting" }),
        State::Unknown => {
            Registration::Unavailable(Unavailable { errno: None, reason: "registration has not been attempted" })
        }
    }
}
