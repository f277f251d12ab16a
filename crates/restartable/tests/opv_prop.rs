//! Property test of the CPU op vector against a sequential reference.
//!
//! Random vectors of 0..=20 operations of every kind — sizes including invalid ones, offsets
//! into a 256-byte arena (misaligned and overlapping ones included), lengths past the limits in
//! a separate big arena, and the occasional null or wrapping address — are checked by a
//! reference validator written here from the documented rules (not from the code), and
//! executed by a reference interpreter over a copy of the memory. Then the vector runs for real
//! on the current CPU:
//!
//! * invalid: the same error variant, with the same fields, and memory byte-for-byte unchanged;
//! * valid: the same result (`Ok` or `CompareFailed` at the same index) and memory equal to the
//!   reference's, byte for byte.
//!
//! Both arenas sit between canary regions that no operation targets, and the whole region is
//! compared, so a stray write anywhere near an arena is caught.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use restartable::guard;
use restartable::opv::{MAX_LEN, MAX_OPS, MAX_TOTAL_LEN, OpVec, Operand, OpvError};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

/// Bytes of canary on each side of an arena.
const CANARY: usize = 64;
const SMALL: usize = 256;
const BIG: usize = 10 * 1024;

// ----- memory -----

/// A canary-arena-canary region, read and written only through raw pointers.
struct Region {
    ptr: *mut u8,
    layout: Layout,
}

impl Region {
    fn new(arena: usize) -> Self {
        let layout = Layout::from_size_align(CANARY + arena + CANARY, 4096).unwrap();
        // SAFETY: the size is non-zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Region { ptr, layout }
    }

    /// The address of arena offset `off` (the arena starts after the leading canary).
    fn addr(&self, off: usize) -> usize {
        self.ptr as usize + CANARY + off
    }

    fn load(&self, bytes: &[u8]) {
        assert_eq!(bytes.len(), self.layout.size());
        // SAFETY: the region is `bytes.len()` bytes; nothing runs concurrently (proptest cases
        // run one at a time on this thread).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr, bytes.len()) };
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.layout.size()];
        // SAFETY: as in `load`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, v.as_mut_ptr(), v.len()) };
        v
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

// ----- generated operations -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arena {
    Small,
    Big,
}

/// Where an operand points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Arena offset (always in bounds for the access).
    At(Arena, usize),
    Null,
    /// `usize::MAX - back`: wraps around for any access longer than `back` bytes.
    Wrap(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Or,
    And,
    Xor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GOp {
    Compare { eq: bool, a: Loc, b: Loc, len: usize },
    Memcpy { dst: Loc, src: Loc, len: usize },
    Arith { kind: Kind, addr: Loc, value: u64, size: usize },
    Shift { left: bool, addr: Loc, count: u32, size: usize },
    Mb,
}

/// The raw random choices for one operation; [`build`] turns them into a [`GOp`].
#[derive(Debug, Clone)]
struct RawOp {
    kind: u8,
    len_sel: u16,
    size_sel: u8,
    off_a: u16,
    off_b: u16,
    special_a: u8,
    special_b: u8,
    value: u64,
    count_sel: u8,
    count: u8,
    misalign: u8,
    big: u8,
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    (
        (0u8..10, any::<u16>(), any::<u8>(), any::<u16>(), any::<u16>(), any::<u8>()),
        (any::<u8>(), any::<u64>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
    )
        .prop_map(
            |(
                (kind, len_sel, size_sel, off_a, off_b, special_a),
                (special_b, value, count_sel, count, misalign, big),
            )| {
                RawOp {
                    kind,
                    len_sel,
                    size_sel,
                    off_a,
                    off_b,
                    special_a,
                    special_b,
                    value,
                    count_sel,
                    count,
                    misalign,
                    big,
                }
            },
        )
}

/// Replace a location by null (about 1 in 85) or a wrapping address (about 1 in 85).
fn special(loc: Loc, sel: u8, len: usize) -> Loc {
    match sel {
        0..=2 => Loc::Null,
        3..=5 => Loc::Wrap(usize::from(sel) % len.max(1)),
        _ => loc,
    }
}

/// Round `off` down to a multiple of `align` unless told to misalign (about 1 in 16).
fn place(off: usize, align: usize, misalign: u8) -> usize {
    if misalign < 16 || !matches!(align, 1 | 2 | 4 | 8) { off } else { off - off % align }
}

fn build(r: &RawOp) -> GOp {
    const LENS: [usize; 24] = [0, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 3, 5, 6, 7, 12, 16, 24, 31, 64, 100, 127];
    const SIZES: [usize; 4] = [1, 2, 4, 8];
    const BAD_SIZES: [usize; 6] = [0, 3, 5, 6, 16, 4096];
    match r.kind {
        0..=2 => {
            // Compare (eq, ne) or memcpy.
            let (arena, space, len) = if r.big < 24 {
                // 3900..4350: both sides of MAX_LEN, in the big arena.
                (Arena::Big, BIG, 3900 + usize::from(r.len_sel) % 451)
            } else {
                (Arena::Small, SMALL, LENS[usize::from(r.len_sel) % LENS.len()])
            };
            let fit = space - len + 1;
            let mut a = usize::from(r.off_a) % fit;
            let mut b = usize::from(r.off_b) % fit;
            if r.kind == 2 && r.misalign >= 80 && len <= space / 2 {
                // Mostly non-overlapping copies: dst in the lower half, src in the upper one.
                let half = space / 2 - len + 1;
                a %= half;
                b = space / 2 + b % half;
            }
            a = place(a, len, r.misalign);
            b = place(b, len, r.misalign.rotate_left(3));
            let (a, b) = (special(Loc::At(arena, a), r.special_a, len), special(Loc::At(arena, b), r.special_b, len));
            if r.kind == 2 { GOp::Memcpy { dst: a, src: b, len } } else { GOp::Compare { eq: r.kind == 0, a, b, len } }
        }
        3..=8 => {
            // About 1 in 20 sizes is invalid.
            let size = if r.size_sel < 12 {
                BAD_SIZES[usize::from(r.size_sel) % BAD_SIZES.len()]
            } else {
                SIZES[usize::from(r.size_sel) % SIZES.len()]
            };
            // Room for an 8-byte access wherever the offset lands (invalid sizes touch nothing).
            let off = place(usize::from(r.off_a) % (SMALL - 8 + 1), size, r.misalign);
            let addr = special(Loc::At(Arena::Small, off), r.special_a, size);
            match r.kind {
                3..=6 => {
                    let kind = [Kind::Add, Kind::Or, Kind::And, Kind::Xor][usize::from(r.kind - 3)];
                    GOp::Arith { kind, addr, value: r.value, size }
                }
                _ => {
                    let width = 8 * size as u32;
                    let count = if r.count_sel < 240 && width > 0 {
                        u32::from(r.count) % width
                    } else {
                        u32::from(r.count) % 80
                    };
                    GOp::Shift { left: r.kind == 7, addr, count, size }
                }
            }
        }
        _ => GOp::Mb,
    }
}

// ----- the reference -----

/// An error as the reference predicts it (comparable, unlike `OpvError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    TooManyOps(usize),
    BadSize(usize, usize),
    Misaligned(usize, Operand, usize, usize),
    Overlap(usize, usize, usize, usize),
    TooLong(usize, usize, usize),
    Null(usize, Operand),
    Overflow(usize, Operand, usize, usize),
    ShiftTooLarge(usize, u32, usize),
    CompareFailed(usize),
}

fn summarize(e: &OpvError) -> Result<Expect, String> {
    Ok(match *e {
        OpvError::TooManyOps { count } => Expect::TooManyOps(count),
        OpvError::BadSize { index, size } => Expect::BadSize(index, size),
        OpvError::Misaligned { index, operand, addr, align } => Expect::Misaligned(index, operand, addr, align),
        OpvError::Overlap { index, dst, src, len } => Expect::Overlap(index, dst, src, len),
        OpvError::TooLong { index, len, limit } => Expect::TooLong(index, len, limit),
        OpvError::NullAddress { index, operand } => Expect::Null(index, operand),
        OpvError::AddressOverflow { index, operand, addr, len } => Expect::Overflow(index, operand, addr, len),
        OpvError::ShiftTooLarge { index, count, size } => Expect::ShiftTooLarge(index, count, size),
        OpvError::CompareFailed { index } => Expect::CompareFailed(index),
        ref other => return Err(format!("unexpected error {other:?}")),
    })
}

/// The memory under test: both regions, and where their arenas are.
struct Mem {
    small: Region,
    big: Region,
}

impl Mem {
    fn addr(&self, loc: Loc) -> usize {
        match loc {
            Loc::At(Arena::Small, off) => self.small.addr(off),
            Loc::At(Arena::Big, off) => self.big.addr(off),
            Loc::Null => 0,
            Loc::Wrap(back) => usize::MAX - back,
        }
    }
}

/// Validate as the module documentation says: op count; then per op null, size, length,
/// wrap-around, alignment, overlap, shift count, running total.
fn reference_validate(ops: &[GOp], mem: &Mem) -> Result<(), Expect> {
    if ops.len() > MAX_OPS {
        return Err(Expect::TooManyOps(ops.len()));
    }
    let sized = |n: usize| [1, 2, 4, 8].contains(&n);
    let mut total = 0usize;
    for (i, op) in ops.iter().enumerate() {
        // (operand, address) pairs, the access length, whether it is sized.
        let (operands, len, data): (Vec<(Operand, usize)>, usize, usize) = match *op {
            GOp::Compare { a, b, len, .. } => (vec![(Operand::A, mem.addr(a)), (Operand::B, mem.addr(b))], len, len),
            GOp::Memcpy { dst, src, len } => {
                (vec![(Operand::Dst, mem.addr(dst)), (Operand::Src, mem.addr(src))], len, len)
            }
            GOp::Arith { addr, size, .. } | GOp::Shift { addr, size, .. } => {
                (vec![(Operand::Addr, mem.addr(addr))], size, size)
            }
            GOp::Mb => (vec![], 0, 0),
        };
        for &(operand, addr) in &operands {
            if addr == 0 {
                return Err(Expect::Null(i, operand));
            }
        }
        let arithmetic = matches!(op, GOp::Arith { .. } | GOp::Shift { .. });
        if arithmetic && !sized(len) {
            return Err(Expect::BadSize(i, len));
        }
        if !arithmetic && len > MAX_LEN {
            return Err(Expect::TooLong(i, len, MAX_LEN));
        }
        for &(operand, addr) in &operands {
            if addr as u128 + len as u128 > usize::MAX as u128 {
                return Err(Expect::Overflow(i, operand, addr, len));
            }
        }
        if (arithmetic || matches!(op, GOp::Compare { .. })) && sized(len) {
            for &(operand, addr) in &operands {
                if addr % len != 0 {
                    return Err(Expect::Misaligned(i, operand, addr, len));
                }
            }
        }
        if let GOp::Memcpy { .. } = op {
            let (d, s) = (operands[0].1, operands[1].1);
            let disjoint = d + len <= s || s + len <= d;
            if len > 0 && !disjoint {
                return Err(Expect::Overlap(i, d, s, len));
            }
        }
        if let GOp::Shift { count, size, .. } = *op
            && count as usize >= 8 * size
        {
            return Err(Expect::ShiftTooLarge(i, count, size));
        }
        total += data;
        if total > MAX_TOTAL_LEN {
            return Err(Expect::TooLong(i, total, MAX_TOTAL_LEN));
        }
    }
    Ok(())
}

/// Run a valid vector sequentially over copies of the regions.
fn reference_run(ops: &[GOp], small: &mut [u8], big: &mut [u8]) -> Result<(), Expect> {
    fn range(loc: Loc, len: usize) -> (Arena, std::ops::Range<usize>) {
        match loc {
            Loc::At(arena, off) => (arena, CANARY + off..CANARY + off + len),
            // Only zero-length accesses of valid vectors can name these; they touch nothing.
            Loc::Null | Loc::Wrap(_) => (Arena::Small, 0..0),
        }
    }
    let read = |loc: Loc, len: usize, small: &[u8], big: &[u8]| -> Vec<u8> {
        let (arena, r) = range(loc, len);
        match arena {
            Arena::Small => small[r].to_vec(),
            Arena::Big => big[r].to_vec(),
        }
    };
    let write = |loc: Loc, bytes: &[u8], small: &mut [u8], big: &mut [u8]| {
        let (arena, r) = range(loc, bytes.len());
        match arena {
            Arena::Small => small[r].copy_from_slice(bytes),
            Arena::Big => big[r].copy_from_slice(bytes),
        }
    };
    for (i, op) in ops.iter().enumerate() {
        match *op {
            GOp::Compare { eq, a, b, len } => {
                if (read(a, len, small, big) == read(b, len, small, big)) != eq {
                    return Err(Expect::CompareFailed(i));
                }
            }
            GOp::Memcpy { dst, src, len } => {
                let bytes = read(src, len, small, big);
                write(dst, &bytes, small, big);
            }
            GOp::Arith { addr, size, .. } | GOp::Shift { addr, size, .. } => {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(&read(addr, size, small, big));
                let old = u64::from_le_bytes(b);
                let new = match *op {
                    GOp::Arith { kind: Kind::Add, value, .. } => old.wrapping_add(value),
                    GOp::Arith { kind: Kind::Or, value, .. } => old | value,
                    GOp::Arith { kind: Kind::And, value, .. } => old & value,
                    GOp::Arith { kind: Kind::Xor, value, .. } => old ^ value,
                    GOp::Shift { left: true, count, .. } => old << count,
                    // `old` has only `size` bytes set, so this is the narrow logical shift.
                    GOp::Shift { left: false, count, .. } => old >> count,
                    _ => unreachable!(),
                };
                write(addr, &new.to_le_bytes()[..size], small, big);
            }
            GOp::Mb => {}
        }
    }
    Ok(())
}

// ----- the property -----

/// What a case ended as, for the coverage check: `"Ok"` or the error variant's name.
type Seen = &'static str;

fn name(e: &Expect) -> &'static str {
    match e {
        Expect::TooManyOps(..) => "TooManyOps",
        Expect::BadSize(..) => "BadSize",
        Expect::Misaligned(..) => "Misaligned",
        Expect::Overlap(..) => "Overlap",
        Expect::TooLong(..) => "TooLong",
        Expect::Null(..) => "NullAddress",
        Expect::Overflow(..) => "AddressOverflow",
        Expect::ShiftTooLarge(..) => "ShiftTooLarge",
        Expect::CompareFailed(..) => "CompareFailed",
    }
}

/// Fill a region: the canaries with a fixed pattern, the arena with period-`period` copies of
/// `seed` (so compares at matching offsets can succeed), or noise for period 0.
fn fill(len: usize, period: usize, seed: &[u8; 16], noise: u64) -> Vec<u8> {
    let mut x = noise | 1;
    (0..CANARY + len + CANARY)
        .map(|i| {
            if i < CANARY || i >= CANARY + len {
                0xa5 ^ (i as u8)
            } else if period == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 3) as u8 * 0x55
            } else {
                seed[(i - CANARY) % period]
            }
        })
        .collect()
}

fn check(raw: &[RawOp], period: usize, seed: &[u8; 16], noise: u64, mem: &Mem) -> Result<Seen, TestCaseError> {
    let ops: Vec<GOp> = raw.iter().map(build).collect();
    mem.small.load(&fill(SMALL, period, seed, noise));
    mem.big.load(&fill(BIG, period, seed, noise.rotate_left(17)));
    let (small0, big0) = (mem.small.snapshot(), mem.big.snapshot());

    let mut v = OpVec::new();
    for op in &ops {
        let p = |loc: Loc| mem.addr(loc) as *mut u8;
        match *op {
            GOp::Compare { eq: true, a, b, len } => v.compare_eq(p(a), p(b), len),
            GOp::Compare { eq: false, a, b, len } => v.compare_ne(p(a), p(b), len),
            GOp::Memcpy { dst, src, len } => v.memcpy(p(dst), p(src), len),
            GOp::Arith { kind: Kind::Add, addr, value, size } => v.add(p(addr), value, size),
            GOp::Arith { kind: Kind::Or, addr, value, size } => v.or(p(addr), value, size),
            GOp::Arith { kind: Kind::And, addr, value, size } => v.and(p(addr), value, size),
            GOp::Arith { kind: Kind::Xor, addr, value, size } => v.xor(p(addr), value, size),
            GOp::Shift { left: true, addr, count, size } => v.lshift(p(addr), count, size),
            GOp::Shift { left: false, addr, count, size } => v.rshift(p(addr), count, size),
            GOp::Mb => v.mb(),
        };
    }
    prop_assert_eq!(v.len(), ops.len());

    let predicted = reference_validate(&ops, mem);
    let validated = v.validate().map_err(|e| summarize(&e));
    prop_assert_eq!(validated, predicted.map_err(Ok), "validate disagrees for {:?}", ops);

    let cpu = restartable::current_cpu() % guard::limit();
    // SAFETY: every address of a vector the reference accepts lies in one of `mem`'s arenas
    // (in bounds by construction), which only this thread touches; an invalid vector (null or
    // wrapping addresses) touches nothing.
    let got = unsafe { v.run_on(cpu) };
    let got = got.map_err(|e| summarize(&e).unwrap_or_else(|s| panic!("{s}")));

    let (want_small, want_big, want) = match predicted {
        Err(e) => (small0, big0, Err(e)),
        Ok(()) => {
            let (mut s, mut b) = (small0, big0);
            let r = reference_run(&ops, &mut s, &mut b);
            (s, b, r)
        }
    };
    prop_assert_eq!(got, want, "result for {:?}", ops);
    prop_assert!(mem.small.snapshot() == want_small, "small arena differs for {:?}", ops);
    prop_assert!(mem.big.snapshot() == want_big, "big arena differs for {:?}", ops);
    Ok(match want {
        Ok(()) => "Ok",
        Err(e) => name(&e),
    })
}

fn case() -> impl Strategy<Value = (Vec<RawOp>, usize, [u8; 16], u64)> {
    (
        prop::collection::vec(raw_op(), 0..=20),
        prop::sample::select(vec![0usize, 1, 2, 4, 8, 16, 3]),
        any::<[u8; 16]>(),
        any::<u64>(),
    )
}

fn mem() -> Mem {
    Mem { small: Region::new(SMALL), big: Region::new(BIG) }
}

proptest! {
    // The default case count (256, or PROPTEST_CASES); no regression files for a test binary.
    #![proptest_config(Config { failure_persistence: None, ..Config::default() })]

    /// Random vectors (a fresh random seed each run).
    #[test]
    fn random_vectors_match_the_reference((raw, period, seed, noise) in case()) {
        thread_local! { static MEM: Mem = mem(); }
        MEM.with(|m| check(&raw, period, &seed, noise, m))?;
    }
}

/// The same property from a fixed seed, with a check that the generator reaches every outcome:
/// valid vectors, a failed compare, and each validation error.
#[test]
fn generator_reaches_every_outcome() {
    let m = mem();
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<Seen, u64>::new());
    let ran = AtomicU64::new(0);
    let mut runner = TestRunner::new_with_rng(
        Config { cases: 512, failure_persistence: None, ..Config::default() },
        proptest::test_runner::TestRng::deterministic_rng(Config::default().rng_algorithm),
    );
    runner
        .run(&case(), |(raw, period, seed, noise)| {
            let s = check(&raw, period, &seed, noise, &m)?;
            *seen.lock().unwrap().entry(s).or_default() += 1;
            ran.fetch_add(1, Relaxed);
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    let count = |e: Expect| seen.get(name(&e)).copied().unwrap_or(0);
    let report = format!("{} cases: {seen:?}", ran.load(Relaxed));
    println!("{report}");
    assert!(seen.get("Ok").copied().unwrap_or(0) >= 50, "too few valid vectors: {report}");
    for e in [
        Expect::TooManyOps(0),
        Expect::BadSize(0, 0),
        Expect::Misaligned(0, Operand::A, 0, 0),
        Expect::Overlap(0, 0, 0, 0),
        Expect::TooLong(0, 0, 0),
        Expect::Null(0, Operand::A),
        Expect::Overflow(0, Operand::A, 0, 0),
        Expect::ShiftTooLarge(0, 0, 0),
        Expect::CompareFailed(0),
    ] {
        assert!(count(e) > 0, "never reached {e:?}: {report}");
    }
}
