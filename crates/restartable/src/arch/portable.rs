//! The portable architecture module: no critical sections. A process built with it decides
//! degraded mode (every operation through atomics or the guard words used as per-CPU locks), so
//! the crate builds and runs correctly wherever Linux runs, and this module is the oracle an
//! architecture module with fast paths is tested against (`--cfg restartable_portable` selects it
//! on x86_64).
//!
//! The section stubs keep the signatures of the real sections (type parameters included), so
//! callers are written once for every module.
#![allow(clippy::extra_unused_type_parameters)]

use core::sync::atomic::{AtomicI32, AtomicU32};

use super::{At, DECOY_LEN, Field, OWN_AREA_LEN, Outcome, ThreadBlock};

/// No critical sections here.
pub(crate) const HAS_RSEQ: bool = false;

/// Never called: without critical sections nothing reads the rseq area.
#[inline(always)]
pub(crate) fn thread_pointer() -> *mut u8 {
    core::ptr::null_mut()
}

/// Never called: without critical sections nothing reads the rseq area.
///
/// # Safety
/// None needed.
#[inline(always)]
pub(crate) unsafe fn read_tp_u32<const FIELD: usize>(_offset: isize) -> u32 {
    u32::MAX
}

/// The word at `p`, with a relaxed atomic load.
///
/// # Safety
/// `p` is valid for reads of an `isize`, and every write to it is atomic.
#[inline(always)]
pub(crate) unsafe fn read_word_mergeable(p: *const isize) -> isize {
    // SAFETY: the caller's contract.
    unsafe { (*p.cast::<core::sync::atomic::AtomicIsize>()).load(core::sync::atomic::Ordering::Relaxed) }
}

/// Never called: without critical sections nothing reads the rseq area.
///
/// # Safety
/// None needed.
#[inline(always)]
pub(crate) unsafe fn read_tp_cursor<F: Field>(_offset: isize) -> usize {
    u32::MAX as usize
}

std::thread_local! {
    static BLOCK: ThreadBlock = const {
        ThreadBlock {
            area: [0; OWN_AREA_LEN],
            decoy: [0; DECOY_LEN],
            state: AtomicU32::new(0),
            errno: AtomicI32::new(0),
            held: AtomicU32::new(0),
            token: AtomicU32::new(0),
            token_generation: AtomicU32::new(0),
            _reserved: [0; 19],
        }
    };
}

/// The calling thread's [`ThreadBlock`] (a plain thread-local here).
#[inline(always)]
pub(crate) fn thread_block() -> *mut ThreadBlock {
    BLOCK.with(|b| (b as *const ThreadBlock).cast_mut())
}

/// No rseq here, so glibc's area is not used either.
pub(crate) fn glibc_rseq() -> Option<(isize, u32)> {
    None
}

/// No CPU-number instruction is used here.
pub(crate) fn has_rdpid() -> bool {
    false
}

/// Never called ([`has_rdpid`] is false).
///
/// # Safety
/// None needed; unreachable.
pub(crate) unsafe fn rdpid() -> usize {
    0
}

macro_rules! no_sections {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        /// No critical sections here: always `Stopped` (take the slow path).
        ///
        /// # Safety
        /// None needed: nothing is accessed.
        #[inline(always)]
        pub(crate) unsafe fn $name<F: Field>(_at: At, $($arg: $ty),*) -> Outcome {
            let _ = ($($arg,)*);
            Outcome::Stopped
        }
    )*};
}

/// No critical sections here: always `Stopped` (take the slow path).
///
/// # Safety
/// None needed: nothing is accessed.
#[inline(always)]
pub(crate) unsafe fn add_strided<F: Field, const VALUE: usize>(
    _at: At,
    _base: *mut u8,
    _offset: usize,
    _count: usize,
) -> Outcome {
    Outcome::Stopped
}

/// No critical sections here: always `Stopped` (take the slow path).
///
/// # Safety
/// None needed: nothing is accessed.
#[inline(always)]
pub(crate) unsafe fn add_strided_unless<F: Field, const VALUE: usize, const MASK: u32>(
    _at: At,
    _base: *mut u8,
    _offset: usize,
    _count: usize,
    _flag: *const AtomicU32,
) -> Outcome {
    Outcome::Stopped
}

no_sections! {
    cbne_store(v: *mut usize, expect: usize, new: usize);
    add(v: *mut usize, count: usize);
    cbeq_pop(v: *mut usize, expectnot: usize, off: usize, out: *mut usize);
    add_indirect(p: *mut usize, off: usize, count: usize);
    cbne_cbne_store(v: *mut usize, expect: usize, v2: *mut usize, expect2: usize, new: usize);
    cbne_store_store(v: *mut usize, expect: usize, v2: *mut usize, new2: usize, new: usize);
    cbne_memcpy_store(v: *mut usize, expect: usize, dst: *mut u8, src: *const u8, len: usize, new: usize);
    add_unguarded(v: *mut usize, count: usize);
    cache_pop(word: *mut usize, out: *mut usize);
    cache_push(word: *mut usize, cap: usize, value: usize);
}

macro_rules! no_item_sections {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        /// No critical sections here: always `Stopped` (take the slow path).
        ///
        /// # Safety
        /// None needed: nothing is accessed.
        #[inline(always)]
        pub(crate) unsafe fn $name<F: Field, T>(_at: At, $($arg: $ty),*) -> Outcome {
            let _ = ($($arg,)*);
            Outcome::Stopped
        }
    )*};
}

/// No critical sections here: always `Stopped` (take the slow path).
///
/// # Safety
/// None needed: nothing is accessed.
#[inline(always)]
pub(crate) unsafe fn ring_push_many<F: Field, T, const FROM_END: bool>(
    _at: At,
    _count: *mut usize,
    _src: *const T,
    _args: *mut [usize; 3],
) -> Outcome {
    Outcome::Stopped
}

no_item_sections! {
    ring_pop_many(count: *mut usize, dst: *mut T, args: *mut [usize; 2]);
    ring_push_item(count: *mut usize, cap: usize, src: *const T);
    ring_pop_item(count: *mut usize, dst: *mut T);
    stack_push(col: *mut usize, src: *const T);
    stack_pop(col: *mut usize, dst: *mut T, free: *mut usize);
    stack_attach(col: *mut usize, chunk: usize);
    stack_trim(col: *mut usize, keep: usize, out: *mut usize);
    stack_push_many(col: *mut usize, src: *const T, args: *mut [usize; 2]);
    stack_pop_many(col: *mut usize, dst: *mut T, args: *mut [usize; 3]);
}
