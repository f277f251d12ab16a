//! The architecture layer: the only code that differs between instruction sets.
//!
//! One file per architecture with a fast path (`x86_64.rs`; `aarch64.rs` is the next one), plus
//! `portable.rs`, which has no critical sections at all: a process built with it runs in
//! degraded mode (correct everywhere Linux runs, only slower). The choice is made here, once:
//! x86_64 gets its module unless the crate is built with `--cfg restartable_portable` (which CI
//! uses to test the portable module on x86_64); every other architecture gets the portable one.
//!
//! Every module provides the same items:
//! - `HAS_RSEQ`: whether it has critical sections;
//! - `thread_pointer()`, `thread_block()`: the thread pointer and this thread's library block in
//!   static TLS (the rseq area we register when glibc did not, and per-thread state);
//! - `read_tp_u32::<FIELD>(offset)`: a `u32` at a thread-pointer-relative offset, read once;
//! - `read_tp_cursor::<F>(offset)`: the hot path's index, read so that the compiler may merge it
//!   with an earlier read (and `read_word_mergeable(p)`, the published area offset, likewise), so
//!   an index read and the section that checks it share one offset load;
//! - `glibc_rseq()`: glibc's `__rseq_offset` / `__rseq_size`, through weak references;
//! - `has_rdpid()`, `rdpid()`: the current CPU from an instruction, where the CPU has one;
//! - the critical sections of the op set, each `unsafe fn op<F: Field>(at: At, ...) -> Outcome`
//!   (DESIGN.md section 3), `F` saying which field of the area holds the index.

use core::sync::atomic::{AtomicI32, AtomicU32};

#[cfg(all(target_arch = "x86_64", not(restartable_portable)))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", not(restartable_portable)))]
pub(crate) use x86_64::*;

#[cfg(any(not(target_arch = "x86_64"), restartable_portable))]
mod portable;
#[cfg(any(not(target_arch = "x86_64"), restartable_portable))]
pub(crate) use portable::*;

/// Which field of the rseq area holds the index a section checks (`cpu_id` or `mm_cid`); the
/// index modes implement it. Public only inside a private module (sealed).
pub trait Field {
    /// The field's offset in the area (the one a section checks).
    const FIELD: usize;
    /// The field the hot path reads the index from before a section (`cpu_id_start` for CPUs:
    /// always a possible CPU number, so it can index memory unchecked; the section then checks
    /// `cpu_id`).
    const CURSOR: usize;
    /// Whether `At::guard` is a table of guard words indexed by `At::index` (the raw ops'
    /// process-wide guards, read with one scaled-index operand) rather than the word itself.
    const TABLE: bool = false;
}

/// Index mode `I` with the guard word read from a table: [`At::guard`] is the table, and the
/// section reads `index`'s word after checking that the thread runs on `index` (so `index` is a
/// real CPU number or mm_cid, below the table's length, whenever the word is read).
pub(crate) struct InTable<I>(core::marker::PhantomData<I>);

impl<I: Field> Field for InTable<I> {
    const FIELD: usize = I::FIELD;
    const CURSOR: usize = I::CURSOR;
    const TABLE: bool = true;
}

/// How an op ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "an op that did not commit must be retried or completed on the slow path"]
#[repr(u8)]
pub enum Outcome {
    /// The commit store happened: the op took effect exactly once.
    Committed = 0,
    /// The op's own comparison failed; nothing was stored (but `out` for
    /// [`load_cbeq_store_add_load_store`](crate::ops::load_cbeq_store_add_load_store) may hold a
    /// value).
    CompareFailed = 1,
    /// The kernel restarted the section (preemption, migration, signal) or the thread no longer
    /// runs on `index`: nothing was committed, retry.
    Aborted = 2,
    /// The guard word of `index` is set (another thread is operating on that CPU through the
    /// slow path), or this thread has no usable rseq area: nothing was stored; take the slow path.
    Stopped = 3,
}

/// Where a critical section runs: the calling thread's rseq area, the index the caller read
/// (CPU number or mm_cid), and the guard word that stops that index for the data concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    /// The calling thread's registered rseq area, as its offset from the thread pointer (the
    /// process-wide offset): sections address it thread-pointer-relative.
    pub area: isize,
    /// The index the caller used to find its data; the section re-checks it (as a 32-bit value:
    /// the field it is compared with has 32 bits, so `index` is always below 2^32, and a guard
    /// table can be addressed with it).
    pub index: usize,
    /// The guard word of `index` for this data (read by the sections; the portable module has
    /// none); for a [`Field`] whose `TABLE` is true, the start of a table of guard words instead,
    /// `index`'s at `guard + index`.
    #[cfg_attr(restartable_portable, allow(dead_code))]
    pub guard: *const AtomicU32,
}

/// The geometry of a `Stack<T>`'s chunks, shared by the sections that move items in and out and
/// by the collection: `BYTES` (a power of two, at least 512, and the chunk's alignment, so that
/// masking a slot's address gives its chunk), a header of three words (`down`, `up`, `depth`),
/// then `ITEMS` slots from `HDR`, `STRIDE` bytes apart (at least 4; zero-sized items get one
/// byte each, so that every slot has its own address), the last at `LAST`.
pub(crate) struct Chunk<T>(core::marker::PhantomData<T>);

impl<T> Chunk<T> {
    pub(crate) const HDR: usize = (3 * core::mem::size_of::<usize>()).next_multiple_of(core::mem::align_of::<T>());
    pub(crate) const STRIDE: usize = if core::mem::size_of::<T>() == 0 { 1 } else { core::mem::size_of::<T>() };
    pub(crate) const BYTES: usize = {
        let least = Self::HDR + 4 * Self::STRIDE;
        let bytes = if least <= 512 { 512 } else { least.next_power_of_two() };
        // Masks and offsets are 32-bit immediates in the sections.
        assert!(bytes <= 1 << 30, "Stack items must be smaller than 256 MiB");
        bytes
    };
    pub(crate) const ITEMS: usize = (Self::BYTES - Self::HDR) / Self::STRIDE;
    pub(crate) const LAST: usize = Self::HDR + (Self::ITEMS - 1) * Self::STRIDE;
    pub(crate) const MASK: usize = Self::BYTES - 1;
}

/// The size of the rseq area inside a [`ThreadBlock`]: room for kernels whose feature size and
/// alignment reach 64 bytes (7.x kernels: 33 and 64). A kernel that wants more gets the original
/// 32-byte registration, which every kernel accepts.
pub(crate) const OWN_AREA_LEN: usize = 64;

/// The size of the decoy area inside a [`ThreadBlock`].
pub(crate) const DECOY_LEN: usize = 32;

/// Per-thread library state, in static TLS (initial-exec model), so it is reachable from any
/// code (signal handlers, a `dlopen`ed library) without `__tls_get_addr` or an allocation.
#[repr(C, align(64))]
pub(crate) struct ThreadBlock {
    /// Our own rseq area (registered only when glibc registers none). `cpu_id` starts at -1.
    pub area: [u8; OWN_AREA_LEN],
    /// An rseq-shaped area that is never registered: `cpu_id_start` 0 and `cpu_id` -1 forever.
    /// The hot path addresses it until the process publishes fast mode (and in degraded mode),
    /// so a critical section always has a valid area to read and write, and always aborts.
    pub decoy: [u8; DECOY_LEN],
    /// Registration state of this thread (`thread::State`).
    pub state: AtomicU32,
    /// The errno that refused our registration, or 0.
    pub errno: AtomicI32,
    /// How many guard words this thread holds now (its own frames and its signal handlers').
    pub held: AtomicU32,
    /// The guard-owner token of this thread, and the fork generation it was computed in.
    pub token: AtomicU32,
    /// See `token`.
    pub token_generation: AtomicU32,
    _reserved: [u32; 19],
}

const _: () = {
    assert!(core::mem::size_of::<ThreadBlock>() == 192);
    assert!(core::mem::offset_of!(ThreadBlock, decoy) == OWN_AREA_LEN);
    assert!(core::mem::offset_of!(ThreadBlock, state) == OWN_AREA_LEN + DECOY_LEN);
};
