//! The CPU op vector: a short program of memory operations run on one stopped CPU.
//!
//! This is the user-space form of the kernel's `cpu_opv` proposal (never merged), and the
//! general slow path of the library (DESIGN.md section 4): an [`OpVec`] holds up to
//! [`MAX_OPS`] operations — compare-equal, compare-not-equal, memcpy, add, or, and, xor, left
//! shift, right shift and a full memory barrier — and [`OpVec::run_on`] runs them in order
//! while the CPU is stopped through its [guard word](crate::guard): no rseq critical section
//! indexed by that CPU can commit in between, so the vector is atomic with respect to every
//! fast path on that CPU, and with respect to every other slow path on it.
//!
//! A failed compare ends the vector: it returns [`OpvError::CompareFailed`] with the compare's
//! index, the operations before it have been applied and none after it has run.
//!
//! # Validation
//!
//! [`OpVec::validate`] (which every `run_*` method calls first, before the guard is taken and
//! before any memory is touched) checks, in this order, and reports the first problem:
//!
//! 1. the number of operations: at most [`MAX_OPS`] ([`OpvError::TooManyOps`]);
//! 2. then each operation in order, each with these checks in this order:
//!    1. no address is null ([`OpvError::NullAddress`], even for a zero length);
//!    2. add/or/and/xor/shift sizes are 1, 2, 4 or 8 ([`OpvError::BadSize`]);
//!    3. compare and memcpy lengths are at most [`MAX_LEN`] ([`OpvError::TooLong`]);
//!    4. `address + length` does not overflow, for every operand ([`OpvError::AddressOverflow`]);
//!    5. add/or/and/xor/shift addresses, and compare addresses when the length is 1, 2, 4 or 8,
//!       are naturally aligned ([`OpvError::Misaligned`]);
//!    6. memcpy source and destination do not overlap ([`OpvError::Overlap`]);
//!    7. shift counts are below 8 × size ([`OpvError::ShiftTooLarge`]);
//!    8. the data length so far (compare and memcpy lengths, add/or/and/xor/shift sizes) is at
//!       most [`MAX_TOTAL_LEN`] ([`OpvError::TooLong`], reported at the op that crossed it);
//! 3. then, in [`run_on`](OpVec::run_on) / [`run_on_index`](OpVec::run_on_index), the index is
//!    below [`guard::limit`] ([`OpvError::CpuOutOfRange`]), and the fence succeeds
//!    ([`OpvError::Fence`]).
//!
//! # Execution
//!
//! Every access is an atomic access with [`Relaxed`] ordering ([`AtomicU8`], [`AtomicU16`],
//! [`AtomicU32`], [`AtomicU64`] through `from_ptr`), so no Rust code races with the rseq
//! assembly that writes the same memory: sized compares and arithmetic load and store one
//! naturally aligned integer, bytewise compares and memcpy go byte by byte. Arithmetic is a
//! load followed by a store (not a locked read-modify-write), wrapping, on the low `size`
//! bytes of the value: the CPU is stopped, and by the [safety contract](OpVec::run_on) nothing
//! else writes that memory. `mb` is [`fence`]`(SeqCst)`. Taking the guard is a sequentially
//! consistent read-modify-write and releasing it a release store, so a vector's effects are
//! ordered after everything the previous holder of the guard did, and before everything the
//! next one does.

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::Ordering::{Relaxed, SeqCst};
use core::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
    fence,
};
use std::io;

use crate::cpu::{Cpu, Index};
use crate::guard::{self, GuardError, Stop};

/// The most operations one vector may hold (the kernel proposal's `CPU_OP_VEC_LEN_MAX`).
pub const MAX_OPS: usize = 16;
/// The longest compare or memcpy, in bytes (the kernel proposal's `CPU_OP_DATA_LEN_MAX`).
pub const MAX_LEN: usize = 4096;
/// The most data one vector may touch, summed over its operations:
/// `4096 + 15 × 8 = 4216` bytes (the kernel proposal's `CPU_OP_VEC_DATA_LEN_MAX`).
pub const MAX_TOTAL_LEN: usize = MAX_LEN + (MAX_OPS - 1) * 8;

static RUNS: AtomicU64 = AtomicU64::new(0);

/// How many vectors this process has executed (validated, with the CPU stopped), including
/// those that ended with [`OpvError::CompareFailed`].
pub fn runs() -> u64 {
    RUNS.load(Relaxed)
}

/// Which operand of an operation an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The first address of a compare.
    A,
    /// The second address of a compare.
    B,
    /// The destination of a memcpy.
    Dst,
    /// The source of a memcpy.
    Src,
    /// The target of add, or, and, xor, or a shift.
    Addr,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operand::A => "a",
            Operand::B => "b",
            Operand::Dst => "dst",
            Operand::Src => "src",
            Operand::Addr => "addr",
        })
    }
}

/// Why a vector did not run, or did not run to its end.
///
/// Every variant but [`CompareFailed`](OpvError::CompareFailed) means that nothing was
/// touched. `index` is always the position of the operation concerned (0-based, in the order
/// the operations were added).
#[derive(Debug)]
#[non_exhaustive]
pub enum OpvError {
    /// More than [`MAX_OPS`] operations were added.
    TooManyOps {
        /// How many were added.
        count: usize,
    },
    /// An add/or/and/xor/shift size that is not 1, 2, 4 or 8.
    BadSize {
        /// The operation.
        index: usize,
        /// The size given.
        size: usize,
    },
    /// An address that is not a multiple of the access size.
    Misaligned {
        /// The operation.
        index: usize,
        /// The operand.
        operand: Operand,
        /// The address.
        addr: usize,
        /// The alignment it needs.
        align: usize,
    },
    /// A memcpy whose source and destination ranges overlap.
    Overlap {
        /// The operation.
        index: usize,
        /// The destination address.
        dst: usize,
        /// The source address.
        src: usize,
        /// The length.
        len: usize,
    },
    /// A compare or memcpy longer than [`MAX_LEN`] (`limit` is [`MAX_LEN`], `len` that op's
    /// length), or a vector whose data adds up to more than [`MAX_TOTAL_LEN`] (`limit` is
    /// [`MAX_TOTAL_LEN`], `len` the total up to and including op `index`).
    TooLong {
        /// The operation.
        index: usize,
        /// The offending length.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A null address.
    NullAddress {
        /// The operation.
        index: usize,
        /// The operand.
        operand: Operand,
    },
    /// An address whose range `addr .. addr + len` does not fit in the address space.
    AddressOverflow {
        /// The operation.
        index: usize,
        /// The operand.
        operand: Operand,
        /// The address.
        addr: usize,
        /// The length of the access.
        len: usize,
    },
    /// A shift count not below 8 × size.
    ShiftTooLarge {
        /// The operation.
        index: usize,
        /// The count given.
        count: u32,
        /// The operand size in bytes.
        size: usize,
    },
    /// The CPU (or concurrency id) is not below [`guard::limit`].
    CpuOutOfRange {
        /// The index asked for.
        cpu: usize,
        /// The number of valid indices.
        limit: usize,
    },
    /// The membarrier rseq fence failed, so the CPU could not be stopped; nothing ran.
    Fence(io::Error),
    /// The CPU's guard is held by another operation and the calling thread may not wait for
    /// it, because it holds a guard itself (see [`guard`]); nothing ran.
    Busy {
        /// The index asked for.
        cpu: usize,
    },
    /// A typed copy ([`OpVec::copy_bytes`]) between slices of different lengths.
    LengthMismatch {
        /// The operation.
        index: usize,
        /// The destination's length.
        dst: usize,
        /// The source's length.
        src: usize,
    },
    /// Compare `index` failed: the operations before it were applied, none after it ran.
    CompareFailed {
        /// The failed compare.
        index: usize,
    },
}

impl OpvError {
    /// The operation the error is about, where there is one.
    pub fn index(&self) -> Option<usize> {
        match *self {
            OpvError::BadSize { index, .. }
            | OpvError::Misaligned { index, .. }
            | OpvError::Overlap { index, .. }
            | OpvError::TooLong { index, .. }
            | OpvError::NullAddress { index, .. }
            | OpvError::AddressOverflow { index, .. }
            | OpvError::ShiftTooLarge { index, .. }
            | OpvError::LengthMismatch { index, .. }
            | OpvError::CompareFailed { index } => Some(index),
            OpvError::TooManyOps { .. }
            | OpvError::CpuOutOfRange { .. }
            | OpvError::Fence(_)
            | OpvError::Busy { .. } => None,
        }
    }

    /// True for [`OpvError::CompareFailed`], the one outcome that is not a mistake (the data
    /// changed: read it again and retry).
    pub fn is_compare_failed(&self) -> bool {
        matches!(self, OpvError::CompareFailed { .. })
    }
}

impl fmt::Display for OpvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpvError::TooManyOps { count } => {
                write!(f, "op vector has {count} operations, more than the limit of {MAX_OPS}")
            }
            OpvError::BadSize { index, size } => {
                write!(f, "op {index}: size {size} is not 1, 2, 4 or 8")
            }
            OpvError::Misaligned { index, operand, addr, align } => {
                write!(f, "op {index}: {operand} address {addr:#x} is not {align}-byte aligned")
            }
            OpvError::Overlap { index, dst, src, len } => {
                write!(f, "op {index}: memcpy of {len} bytes from {src:#x} to {dst:#x}: source and destination overlap")
            }
            OpvError::TooLong { index, len, limit } if *limit == MAX_LEN => {
                write!(f, "op {index}: length {len} is over the limit of {limit} bytes")
            }
            OpvError::TooLong { index, len, limit } => {
                write!(f, "op {index}: the vector's data adds up to {len} bytes, over the limit of {limit}")
            }
            OpvError::NullAddress { index, operand } => write!(f, "op {index}: {operand} address is null"),
            OpvError::AddressOverflow { index, operand, addr, len } => {
                write!(f, "op {index}: {operand} range of {len} bytes at {addr:#x} wraps around the address space")
            }
            OpvError::ShiftTooLarge { index, count, size } => write!(
                f,
                "op {index}: shift count {count} is not below {} (the width of a {size}-byte value)",
                size.saturating_mul(8)
            ),
            OpvError::CpuOutOfRange { cpu, limit } => {
                write!(f, "CPU index {cpu} is out of range (this machine has {limit} possible CPUs)")
            }
            OpvError::Fence(e) => write!(f, "membarrier rseq fence failed: {e}"),
            OpvError::Busy { cpu } => write!(
                f,
                "CPU index {cpu} is held by another operation, and this thread may not wait for it because it holds a \
                 guard itself"
            ),
            OpvError::LengthMismatch { index, dst, src } => {
                write!(f, "op {index}: copy of {src} bytes into a {dst}-byte destination")
            }
            OpvError::CompareFailed { index } => write!(f, "op {index}: compare failed"),
        }
    }
}

impl std::error::Error for OpvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpvError::Fence(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GuardError> for OpvError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::OutOfRange { index, limit } => OpvError::CpuOutOfRange { cpu: index, limit },
            GuardError::Fence(e) => OpvError::Fence(e),
            GuardError::Busy { index } => OpvError::Busy { cpu: index },
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// An atomic integer type that the typed builder methods ([`OpVec::add_word`], ...) accept:
/// `AtomicU8` to `AtomicU64`, `AtomicI8` to `AtomicI64`, `AtomicUsize`, `AtomicIsize`.
pub trait Word: sealed::Sealed + Sync {
    /// The plain integer type it holds.
    type Value: Copy;
    /// Its size in bytes.
    const SIZE: usize;
    /// `value` as the operand of an arithmetic op (sign-extended for signed types; only the
    /// low [`SIZE`](Word::SIZE) bytes are used).
    fn to_u64(value: Self::Value) -> u64;
}

macro_rules! word {
    ($($atomic:ty => $value:ty),* $(,)?) => {$(
        impl sealed::Sealed for $atomic {}
        impl Word for $atomic {
            type Value = $value;
            const SIZE: usize = core::mem::size_of::<$value>();
            #[inline]
            fn to_u64(value: $value) -> u64 {
                value as u64
            }
        }
    )*};
}

word! {
    AtomicU8 => u8, AtomicU16 => u16, AtomicU32 => u32, AtomicU64 => u64, AtomicUsize => usize,
    AtomicI8 => i8, AtomicI16 => i16, AtomicI32 => i32, AtomicI64 => i64, AtomicIsize => isize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Or,
    And,
    Xor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Compare {
        a: *const u8,
        b: *const u8,
        len: usize,
        eq: bool,
    },
    Memcpy {
        dst: *mut u8,
        src: *const u8,
        len: usize,
    },
    Arith {
        kind: Arith,
        addr: *mut u8,
        value: u64,
        size: usize,
    },
    Shift {
        left: bool,
        addr: *mut u8,
        count: u32,
        size: usize,
    },
    Mb,
    /// A typed copy between slices of different lengths (always invalid).
    Mismatch {
        dst: usize,
        src: usize,
    },
}

/// A vector of up to [`MAX_OPS`] memory operations, run in order on one stopped CPU.
///
/// Build it with the chaining methods (each returns `&mut Self`): raw-address forms
/// ([`compare_eq`](Self::compare_eq), [`memcpy`](Self::memcpy), [`add`](Self::add), ...) take
/// `*const u8` / `*mut u8` and a size, typed forms ([`compare_eq_word`](Self::compare_eq_word),
/// [`add_word`](Self::add_word), ...) take references to atomics and borrow them for `'a`, the
/// vector's lifetime. Adding never fails: every check happens in
/// [`validate`](Self::validate), which the `run_*` methods call before touching anything.
/// Building allocates nothing.
///
/// ```
/// use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
/// use restartable::opv::{OpVec, OpvError};
///
/// // Per-CPU data of CPU 0: a count and a flags word.
/// let count = AtomicU64::new(10);
/// let flags = AtomicU32::new(0b0001);
///
/// // "If count is still 10, add 5 to it and set flag bit 2", as one step on CPU 0.
/// let seen = 10u64;
/// let mut v = OpVec::new();
/// v.compare_eq_word(&count, &seen).add_word(&count, 5).or_word(&flags, 0b0100);
/// assert_eq!(v.len(), 3);
///
/// // SAFETY: every address in `v` is a live local; while the vector runs, `count` and `flags`
/// // are written only under CPU 0's guard (or by rseq ops indexed by CPU 0).
/// unsafe { v.run_on(0) }.unwrap();
/// assert_eq!(count.load(Ordering::Relaxed), 15);
/// assert_eq!(flags.load(Ordering::Relaxed), 0b0101);
///
/// // Running it again: the compare (op 0) fails, so nothing after it runs.
/// // SAFETY: as above.
/// let err = unsafe { v.run_on(0) }.unwrap_err();
/// assert!(matches!(err, OpvError::CompareFailed { index: 0 }));
/// assert_eq!(count.load(Ordering::Relaxed), 15);
///
/// // The raw-address forms: copy 3 bytes and shift a u16 left by 4.
/// let src = [1u8, 2, 3];
/// let mut dst = [0u8; 3];
/// let mut half = 0x0012u16;
/// let mut v = OpVec::new();
/// v.memcpy(dst.as_mut_ptr(), src.as_ptr(), 3)
///     .lshift((&raw mut half).cast(), 4, 2)
///     .mb();
/// // SAFETY: the buffers are live, aligned locals that no other thread sees.
/// unsafe { v.run_on(0) }.unwrap();
/// assert_eq!((dst, half), ([1, 2, 3], 0x0120));
///
/// // Mistakes are typed errors, found before anything is touched.
/// let mut v = OpVec::new();
/// v.add((&raw mut half).cast(), 1, 3);
/// // SAFETY: the vector is invalid, so it touches nothing.
/// let err = unsafe { v.run_on(0) }.unwrap_err();
/// assert!(matches!(err, OpvError::BadSize { index: 0, size: 3 }));
/// ```
#[derive(Clone, Copy)]
pub struct OpVec<'a> {
    ops: [Op; MAX_OPS],
    /// Operations added, including any past `MAX_OPS` (which are not stored).
    added: usize,
    _borrow: PhantomData<&'a ()>,
}

// SAFETY: an `OpVec` only holds addresses; it reads or writes through them only in the `unsafe`
// `run_*` methods, whose callers promise the addresses are valid and shared only atomically,
// from whichever thread runs them. Moving or sharing the vector itself accesses nothing.
unsafe impl Send for OpVec<'_> {}
// SAFETY: as for `Send`: `&OpVec` gives access to nothing but the addresses' values.
unsafe impl Sync for OpVec<'_> {}

impl Default for OpVec<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for OpVec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("OpVec");
        s.field("ops", &self.stored());
        if self.added > MAX_OPS {
            s.field("added", &self.added);
        }
        s.finish()
    }
}

impl<'a> OpVec<'a> {
    /// An empty vector.
    pub const fn new() -> Self {
        OpVec { ops: [Op::Mb; MAX_OPS], added: 0, _borrow: PhantomData }
    }

    /// How many operations were added (possibly more than [`MAX_OPS`], which
    /// [`validate`](Self::validate) then reports).
    pub fn len(&self) -> usize {
        self.added
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.added == 0
    }

    /// Remove every operation.
    pub fn clear(&mut self) -> &mut Self {
        self.added = 0;
        self
    }

    fn stored(&self) -> &[Op] {
        &self.ops[..self.added.min(MAX_OPS)]
    }

    fn push(&mut self, op: Op) -> &mut Self {
        if let Some(slot) = self.ops.get_mut(self.added) {
            *slot = op;
        }
        self.added = self.added.saturating_add(1);
        self
    }

    // ----- raw-address forms -----

    /// Compare `len` bytes at `a` and `b`; the vector stops with
    /// [`OpvError::CompareFailed`] unless they are equal. Lengths 1, 2, 4 and 8 compare one
    /// naturally aligned integer (both addresses must be aligned to `len`); any other length up
    /// to [`MAX_LEN`] compares byte by byte. Length 0 always compares equal.
    pub fn compare_eq(&mut self, a: *const u8, b: *const u8, len: usize) -> &mut Self {
        self.push(Op::Compare { a, b, len, eq: true })
    }

    /// Like [`compare_eq`](Self::compare_eq), but the vector goes on only if the bytes differ
    /// (length 0 therefore always fails).
    pub fn compare_ne(&mut self, a: *const u8, b: *const u8, len: usize) -> &mut Self {
        self.push(Op::Compare { a, b, len, eq: false })
    }

    /// Copy `len` bytes (at most [`MAX_LEN`]) from `src` to `dst`, byte by byte; the ranges
    /// must not overlap.
    pub fn memcpy(&mut self, dst: *mut u8, src: *const u8, len: usize) -> &mut Self {
        self.push(Op::Memcpy { dst, src, len })
    }

    /// `*addr += value` (wrapping) on a `size`-byte integer (1, 2, 4 or 8, naturally aligned);
    /// only the low `size` bytes of `value` count, so a two's-complement negative value
    /// subtracts.
    pub fn add(&mut self, addr: *mut u8, value: u64, size: usize) -> &mut Self {
        self.push(Op::Arith { kind: Arith::Add, addr, value, size })
    }

    /// `*addr |= value` on a `size`-byte integer (see [`add`](Self::add)).
    pub fn or(&mut self, addr: *mut u8, value: u64, size: usize) -> &mut Self {
        self.push(Op::Arith { kind: Arith::Or, addr, value, size })
    }

    /// `*addr &= value` on a `size`-byte integer (see [`add`](Self::add)).
    pub fn and(&mut self, addr: *mut u8, value: u64, size: usize) -> &mut Self {
        self.push(Op::Arith { kind: Arith::And, addr, value, size })
    }

    /// `*addr ^= value` on a `size`-byte integer (see [`add`](Self::add)).
    pub fn xor(&mut self, addr: *mut u8, value: u64, size: usize) -> &mut Self {
        self.push(Op::Arith { kind: Arith::Xor, addr, value, size })
    }

    /// `*addr <<= count` on a `size`-byte integer (1, 2, 4 or 8, naturally aligned;
    /// `count < 8 * size`).
    pub fn lshift(&mut self, addr: *mut u8, count: u32, size: usize) -> &mut Self {
        self.push(Op::Shift { left: true, addr, count, size })
    }

    /// `*addr >>= count` (logical) on a `size`-byte integer (see [`lshift`](Self::lshift)).
    pub fn rshift(&mut self, addr: *mut u8, count: u32, size: usize) -> &mut Self {
        self.push(Op::Shift { left: false, addr, count, size })
    }

    /// A full memory barrier ([`fence`]`(SeqCst)`) between the operations before and after it.
    pub fn mb(&mut self) -> &mut Self {
        self.push(Op::Mb)
    }

    // ----- typed forms -----

    /// Continue only if `*target == *expect` (one aligned compare of `W::SIZE` bytes).
    ///
    /// `expect` is read when the vector runs, so it can be an ordinary local that holds the
    /// value last seen.
    pub fn compare_eq_word<W: Word>(&mut self, target: &'a W, expect: &'a W::Value) -> &mut Self {
        self.compare_eq(word_ptr(target), (expect as *const W::Value).cast(), W::SIZE)
    }

    /// Continue only if `*target != *expect` (see [`compare_eq_word`](Self::compare_eq_word)).
    pub fn compare_ne_word<W: Word>(&mut self, target: &'a W, expect: &'a W::Value) -> &mut Self {
        self.compare_ne(word_ptr(target), (expect as *const W::Value).cast(), W::SIZE)
    }

    /// `*target += value` (wrapping).
    pub fn add_word<W: Word>(&mut self, target: &'a W, value: W::Value) -> &mut Self {
        self.add(word_ptr(target), W::to_u64(value), W::SIZE)
    }

    /// `*target |= value`.
    pub fn or_word<W: Word>(&mut self, target: &'a W, value: W::Value) -> &mut Self {
        self.or(word_ptr(target), W::to_u64(value), W::SIZE)
    }

    /// `*target &= value`.
    pub fn and_word<W: Word>(&mut self, target: &'a W, value: W::Value) -> &mut Self {
        self.and(word_ptr(target), W::to_u64(value), W::SIZE)
    }

    /// `*target ^= value`.
    pub fn xor_word<W: Word>(&mut self, target: &'a W, value: W::Value) -> &mut Self {
        self.xor(word_ptr(target), W::to_u64(value), W::SIZE)
    }

    /// `*target <<= count` (`count` below the type's width in bits).
    pub fn lshift_word<W: Word>(&mut self, target: &'a W, count: u32) -> &mut Self {
        self.lshift(word_ptr(target), count, W::SIZE)
    }

    /// `*target >>= count`, a logical shift also for signed types (`count` below the type's
    /// width in bits).
    pub fn rshift_word<W: Word>(&mut self, target: &'a W, count: u32) -> &mut Self {
        self.rshift(word_ptr(target), count, W::SIZE)
    }

    /// Copy `src` into `dst` (at most [`MAX_LEN`] bytes), which must have the same length
    /// (otherwise validation fails with [`OpvError::LengthMismatch`]).
    pub fn copy_bytes(&mut self, dst: &'a [AtomicU8], src: &'a [u8]) -> &mut Self {
        if dst.len() == src.len() {
            self.memcpy(dst.as_ptr().cast_mut().cast(), src.as_ptr(), src.len())
        } else {
            self.push(Op::Mismatch { dst: dst.len(), src: src.len() })
        }
    }

    // ----- validation and execution -----

    /// Check the vector (see [the module documentation](self#validation) for the checks and
    /// their order), touching no memory.
    pub fn validate(&self) -> Result<(), OpvError> {
        if self.added > MAX_OPS {
            return Err(OpvError::TooManyOps { count: self.added });
        }
        let mut total = 0usize;
        for (index, op) in self.stored().iter().enumerate() {
            total = total.saturating_add(check(index, op)?);
            if total > MAX_TOTAL_LEN {
                return Err(OpvError::TooLong { index, len: total, limit: MAX_TOTAL_LEN });
            }
        }
        Ok(())
    }

    /// Run the vector on CPU `cpu`: validate it, stop the CPU ([`guard::stop`]), run the
    /// operations in order, restart the CPU. The same as
    /// [`run_on_index::<Cpu>`](Self::run_on_index).
    ///
    /// Blocks while another thread has `cpu` stopped. A thread that holds a guard itself (a
    /// [`Stop`] for `cpu`, or any other) never waits: it gets [`OpvError::Busy`] when the index is
    /// taken (use [`run_stopped`](Self::run_stopped) under a `Stop` you hold).
    ///
    /// # Safety
    ///
    /// For the whole call:
    /// 1. every address is valid for the accesses its operation makes (reads of compare
    ///    operands and memcpy sources; reads and writes of memcpy destinations and of
    ///    add/or/and/xor/shift targets) — validation checks shape, not validity;
    /// 2. memory the vector writes is shared with other threads only through atomic accesses,
    ///    rseq ops indexed by `cpu`, or other vectors (or [`Stop`] holders) on `cpu`; memory
    ///    it reads is written by other threads only in those ways. Otherwise updates can be lost
    ///    (with atomics) or the program has a data race (without).
    pub unsafe fn run_on(&self, cpu: usize) -> Result<(), OpvError> {
        // SAFETY: the caller's contract, which is `run_on_index`'s with `Cpu`.
        unsafe { self.run_on_index::<Cpu>(cpu) }
    }

    /// Run the vector on index `index` of mode `I` ([`Cpu`] or [`MmCid`](crate::ops::MmCid)):
    /// validate it, stop the index ([`guard::stop::<I>`](guard::stop)), run the operations,
    /// restart it. Errors that leave memory untouched: every variant but
    /// [`OpvError::CompareFailed`].
    ///
    /// # Safety
    ///
    /// As for [`run_on`](Self::run_on), with "indexed by `index` in mode `I`" for "on `cpu`".
    pub unsafe fn run_on_index<I: Index>(&self, index: usize) -> Result<(), OpvError> {
        self.validate()?;
        let stop = guard::stop::<I>(index)?;
        // SAFETY: validated just above; the caller's contract covers the addresses; `stop`
        // holds the index's guard until it is dropped at the end of this function.
        let result = unsafe { execute(self.stored()) };
        drop(stop); // the index runs its fast paths again
        result
    }

    /// Run the vector while the caller holds `stop` (for example in the slow-path closure of
    /// [`retry::run`](crate::retry::run)): validate it, then run the operations. The index the
    /// safety contract speaks of is `stop.index()`.
    ///
    /// # Safety
    ///
    /// As for [`run_on`](Self::run_on), for the index `stop` holds.
    pub unsafe fn run_stopped(&self, stop: &Stop<'_>) -> Result<(), OpvError> {
        self.validate()?;
        let _ = stop;
        // SAFETY: validated just above; the caller's contract covers the addresses; `stop` is
        // borrowed for the whole call, so the index stays stopped.
        unsafe { execute(self.stored()) }
    }
}

/// The address of an atomic, as the raw forms take it.
#[inline]
fn word_ptr<W: Word>(w: &W) -> *mut u8 {
    (w as *const W).cast_mut().cast()
}

/// The range check for one operand: non-null, `addr + len` in the address space.
#[inline]
fn range(index: usize, operand: Operand, addr: usize, len: usize) -> Result<(), OpvError> {
    match addr.checked_add(len) {
        Some(_) => Ok(()),
        None => Err(OpvError::AddressOverflow { index, operand, addr, len }),
    }
}

#[inline]
fn aligned(index: usize, operand: Operand, addr: usize, align: usize) -> Result<(), OpvError> {
    if addr.is_multiple_of(align) { Ok(()) } else { Err(OpvError::Misaligned { index, operand, addr, align }) }
}

#[inline]
fn is_word_size(size: usize) -> bool {
    matches!(size, 1 | 2 | 4 | 8)
}

/// Check one operation (in the documented order); returns its data length.
fn check(index: usize, op: &Op) -> Result<usize, OpvError> {
    let null = |operand| Err(OpvError::NullAddress { index, operand });
    match *op {
        Op::Compare { a, b, len, .. } => {
            let (a, b) = (a as usize, b as usize);
            if a == 0 {
                return null(Operand::A);
            }
            if b == 0 {
                return null(Operand::B);
            }
            if len > MAX_LEN {
                return Err(OpvError::TooLong { index, len, limit: MAX_LEN });
            }
            range(index, Operand::A, a, len)?;
            range(index, Operand::B, b, len)?;
            if is_word_size(len) {
                aligned(index, Operand::A, a, len)?;
                aligned(index, Operand::B, b, len)?;
            }
            Ok(len)
        }
        Op::Memcpy { dst, src, len } => {
            let (dst, src) = (dst as usize, src as usize);
            if dst == 0 {
                return null(Operand::Dst);
            }
            if src == 0 {
                return null(Operand::Src);
            }
            if len > MAX_LEN {
                return Err(OpvError::TooLong { index, len, limit: MAX_LEN });
            }
            range(index, Operand::Dst, dst, len)?;
            range(index, Operand::Src, src, len)?;
            // Both ends fit (checked above), so the sums cannot overflow.
            if len > 0 && dst < src + len && src < dst + len {
                return Err(OpvError::Overlap { index, dst, src, len });
            }
            Ok(len)
        }
        Op::Arith { addr, size, .. } => {
            let addr = addr as usize;
            if addr == 0 {
                return null(Operand::Addr);
            }
            if !is_word_size(size) {
                return Err(OpvError::BadSize { index, size });
            }
            range(index, Operand::Addr, addr, size)?;
            aligned(index, Operand::Addr, addr, size)?;
            Ok(size)
        }
        Op::Shift { addr, count, size, .. } => {
            let addr = addr as usize;
            if addr == 0 {
                return null(Operand::Addr);
            }
            if !is_word_size(size) {
                return Err(OpvError::BadSize { index, size });
            }
            range(index, Operand::Addr, addr, size)?;
            aligned(index, Operand::Addr, addr, size)?;
            if u64::from(count) >= 8 * size as u64 {
                return Err(OpvError::ShiftTooLarge { index, count, size });
            }
            Ok(size)
        }
        Op::Mb => Ok(0),
        Op::Mismatch { dst, src } => Err(OpvError::LengthMismatch { index, dst, src }),
    }
}

/// Run validated operations in order.
///
/// # Safety
/// `ops` passed [`OpVec::validate`]; the index they concern is stopped by the caller; the
/// addresses satisfy [`OpVec::run_on`]'s contract.
unsafe fn execute(ops: &[Op]) -> Result<(), OpvError> {
    RUNS.fetch_add(1, Relaxed);
    for (index, op) in ops.iter().enumerate() {
        match *op {
            Op::Compare { a, b, len, eq } => {
                // SAFETY: validated (non-null, in range, aligned for sized compares); readable
                // by the caller's contract.
                let equal = unsafe { compare(a, b, len) };
                if equal != eq {
                    return Err(OpvError::CompareFailed { index });
                }
            }
            Op::Memcpy { dst, src, len } => {
                for i in 0..len {
                    // SAFETY: validated (non-null, `addr + len` fits, no overlap); `src` is
                    // readable and `dst` writable by the caller's contract, and both are only
                    // shared atomically, so byte atomics are the right accesses. `i < len`.
                    unsafe {
                        let byte = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Relaxed);
                        AtomicU8::from_ptr(dst.add(i)).store(byte, Relaxed);
                    }
                }
            }
            Op::Arith { kind, addr, value, size } => {
                // SAFETY: validated (non-null, size 1/2/4/8, aligned to it); readable and
                // writable by the caller's contract.
                unsafe {
                    update(addr, size, |x| match kind {
                        Arith::Add => x.wrapping_add(value),
                        Arith::Or => x | value,
                        Arith::And => x & value,
                        Arith::Xor => x ^ value,
                    })
                }
            }
            Op::Shift { left, addr, count, size } => {
                // SAFETY: validated (non-null, size 1/2/4/8, aligned, count < 8 * size);
                // readable and writable by the caller's contract. The value is zero-extended to
                // u64, so a logical right shift of it is the narrow type's; a left shift's
                // overflowing bits are cut off when the low `size` bytes are stored.
                unsafe { update(addr, size, |x| if left { x.wrapping_shl(count) } else { x.wrapping_shr(count) }) }
            }
            Op::Mb => fence(SeqCst),
            // Rejected by validation; doing nothing is the safe answer.
            Op::Mismatch { .. } => {}
        }
    }
    Ok(())
}

/// Load the `size`-byte integer at `addr` zero-extended, apply `f`, store its low `size` bytes.
///
/// # Safety
/// `size` is 1, 2, 4 or 8; `addr` is non-null, aligned to `size`, valid for reads and writes of
/// `size` bytes, and shared with other threads only atomically.
#[inline]
unsafe fn update(addr: *mut u8, size: usize, f: impl FnOnce(u64) -> u64) {
    // SAFETY (all arms): the function's contract; each `from_ptr` gets a pointer aligned for
    // and valid for its type, used only for the duration of this call.
    unsafe {
        match size {
            1 => {
                let a = AtomicU8::from_ptr(addr);
                a.store(f(u64::from(a.load(Relaxed))) as u8, Relaxed);
            }
            2 => {
                let a = AtomicU16::from_ptr(addr.cast());
                a.store(f(u64::from(a.load(Relaxed))) as u16, Relaxed);
            }
            4 => {
                let a = AtomicU32::from_ptr(addr.cast());
                a.store(f(u64::from(a.load(Relaxed))) as u32, Relaxed);
            }
            8 => {
                let a = AtomicU64::from_ptr(addr.cast());
                a.store(f(a.load(Relaxed)), Relaxed);
            }
            // Unreachable after validation; doing nothing is the safe answer.
            _ => {}
        }
    }
}

/// Whether `len` bytes at `a` and `b` are equal: one integer for lengths 1, 2, 4, 8, bytes
/// otherwise.
///
/// # Safety
/// `a` and `b` are non-null, valid for reads of `len` bytes, aligned to `len` when it is 1, 2,
/// 4 or 8, and written by other threads only atomically.
#[inline]
unsafe fn compare(a: *const u8, b: *const u8, len: usize) -> bool {
    let (a, b) = (a.cast_mut(), b.cast_mut());
    // SAFETY (all arms): the function's contract; `from_ptr` is only used for loads, which Rust
    // permits also on read-only memory for these sizes; `i < len` in the bytewise loop.
    unsafe {
        match len {
            1 => AtomicU8::from_ptr(a).load(Relaxed) == AtomicU8::from_ptr(b).load(Relaxed),
            2 => AtomicU16::from_ptr(a.cast()).load(Relaxed) == AtomicU16::from_ptr(b.cast()).load(Relaxed),
            4 => AtomicU32::from_ptr(a.cast()).load(Relaxed) == AtomicU32::from_ptr(b.cast()).load(Relaxed),
            8 => AtomicU64::from_ptr(a.cast()).load(Relaxed) == AtomicU64::from_ptr(b.cast()).load(Relaxed),
            _ => (0..len)
                .all(|i| AtomicU8::from_ptr(a.add(i)).load(Relaxed) == AtomicU8::from_ptr(b.add(i)).load(Relaxed)),
        }
    }
}
