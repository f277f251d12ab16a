//! The CPU op vector: every op kind and size, every error (and that an error touches nothing),
//! a failed compare ending the vector, every CPU, `MmCid` indexing, `run_stopped`, a failed
//! fence (under seccomp, in a child), and a remote drain racing the rseq fast path.
//!
//! `degraded_mode_too` re-runs the functional checks and the drain in a child process with
//! `RESTARTABLE_FORCE_DEGRADED=1` (the mode is decided once per process).

use std::alloc::Layout;
use std::sync::atomic::{
    AtomicBool, AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32, AtomicU64,
    AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{Arc, Barrier};

use restartable::guard::{self, GuardError};
use restartable::ops::{self, Cpu, MmCid, Outcome};
use restartable::opv::{self, MAX_LEN, MAX_OPS, MAX_TOTAL_LEN, OpVec, Operand, OpvError};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

/// Set (with `RESTARTABLE_FORCE_DEGRADED=1`) in the child that runs the checks degraded.
const DEGRADED_CHILD: &str = "OPV_TEST_DEGRADED_CHILD";
/// Set in the child that denies membarrier after the mode is decided.
const FENCE_CHILD: &str = "OPV_TEST_FENCE_CHILD";

/// One value alone on a 128-byte line (two cache lines: the adjacent-line prefetcher pairs them).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

// ----- a raw arena: every access through raw pointers, so vectors can point anywhere in it -----

/// `len` bytes, 4096-byte aligned, read and written only through raw pointers (never through
/// references that a vector's accesses could invalidate).
struct Arena {
    ptr: *mut u8,
    layout: Layout,
}

impl Arena {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: `len` is non-zero in every use.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Arena { ptr, layout }
    }

    /// A deterministic non-trivial filling (the canary pattern).
    fn patterned(len: usize, seed: u8) -> Self {
        let a = Arena::new(len);
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect();
        a.write(0, &bytes);
        a
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn at(&self, off: usize) -> *mut u8 {
        assert!(off <= self.len());
        self.ptr.wrapping_add(off)
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        // SAFETY: the arena is `len` bytes; no vector runs concurrently with this read (each
        // test owns its arena and runs its vectors synchronously).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, v.as_mut_ptr(), self.len()) };
        v
    }

    fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len());
        // SAFETY: in bounds (checked); not accessed concurrently.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
    }

    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        self.snapshot()[off..off + len].to_vec()
    }

    fn write_int(&self, off: usize, value: u64, size: usize) {
        self.write(off, &value.to_le_bytes()[..size]);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn mask(size: usize) -> u64 {
    if size == 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 }
}

/// Run on the calling thread's CPU (the usual slow-path case).
fn run(v: &OpVec<'_>) -> Result<(), OpvError> {
    let cpu = restartable::current_cpu() % guard::limit();
    // SAFETY: every test's addresses point into its own live arena or locals, which no other
    // thread touches.
    unsafe { v.run_on(cpu) }
}

// ----- every op kind and size -----

#[derive(Clone, Copy, Debug)]
enum Kind {
    Add,
    Or,
    And,
    Xor,
    Shl,
    Shr,
}

const KINDS: [Kind; 6] = [Kind::Add, Kind::Or, Kind::And, Kind::Xor, Kind::Shl, Kind::Shr];

fn expected(kind: Kind, old: u64, operand: u64, size: usize) -> u64 {
    let m = mask(size);
    let (old, operand) = (old & m, operand & m);
    let r = match kind {
        Kind::Add => old.wrapping_add(operand),
        Kind::Or => old | operand,
        Kind::And => old & operand,
        Kind::Xor => old ^ operand,
        Kind::Shl => old << operand,
        Kind::Shr => old >> operand,
    };
    r & m
}

fn push(v: &mut OpVec<'_>, kind: Kind, addr: *mut u8, operand: u64, size: usize) {
    match kind {
        Kind::Add => v.add(addr, operand, size),
        Kind::Or => v.or(addr, operand, size),
        Kind::And => v.and(addr, operand, size),
        Kind::Xor => v.xor(addr, operand, size),
        Kind::Shl => v.lshift(addr, operand as u32, size),
        Kind::Shr => v.rshift(addr, operand as u32, size),
    };
}

fn check_arithmetic() {
    let arena = Arena::patterned(256, 7);
    let olds = [0u64, 1, 0x7f, 0x80, 0xff, 0x1234_5678_9abc_def0, u64::MAX, 0x8000_0000_0000_0001];
    for size in [1usize, 2, 4, 8] {
        for kind in KINDS {
            let operands: Vec<u64> = match kind {
                Kind::Shl | Kind::Shr => vec![0, 1, 3, 8 * size as u64 - 1],
                _ => vec![0, 1, 0x5a5a_5a5a_5a5a_5a5a, u64::MAX, u64::MAX - 1, 0xff00],
            };
            for &old in &olds {
                for &operand in &operands {
                    // An aligned slot in the middle, so both neighbours are checked unchanged.
                    let off = 64;
                    arena.write_int(off, old, size);
                    let mut want = arena.snapshot();
                    let exp = expected(kind, old, operand, size);
                    want[off..off + size].copy_from_slice(&exp.to_le_bytes()[..size]);
                    let mut v = OpVec::new();
                    push(&mut v, kind, arena.at(off), operand, size);
                    run(&v).unwrap_or_else(|e| panic!("{kind:?} size {size}: {e}"));
                    assert_eq!(arena.snapshot(), want, "{kind:?} size {size} old {old:#x} operand {operand:#x}");
                }
            }
        }
    }
}

#[test]
fn arithmetic_every_kind_and_size() {
    check_arithmetic();
}

fn check_compares() {
    let arena = Arena::patterned(3 * 4096, 3);
    let marker = AtomicU64::new(0);
    // [compare, add marker]: the marker says whether the vector went past the compare.
    let passes = |a: usize, b: usize, len: usize, eq: bool| -> bool {
        let before = marker.load(Relaxed);
        let mut v = OpVec::new();
        if eq {
            v.compare_eq(arena.at(a), arena.at(b), len);
        } else {
            v.compare_ne(arena.at(a), arena.at(b), len);
        }
        v.add_word(&marker, 1);
        let r = run(&v);
        let after = marker.load(Relaxed);
        match r {
            Ok(()) => {
                assert_eq!(after, before + 1);
                true
            }
            Err(OpvError::CompareFailed { index: 0 }) => {
                assert_eq!(after, before, "ops after a failed compare ran");
                false
            }
            Err(e) => panic!("compare {a} {b} {len}: {e}"),
        }
    };
    for len in [1usize, 2, 4, 8, 0, 3, 5, 16, 17, 1000, 4096] {
        // Aligned for the sized lengths; the two ranges do not overlap.
        let (a, b) = (0usize, 4096 + 8);
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        arena.write(a, &bytes);
        arena.write(b, &bytes);
        assert!(passes(a, b, len, true), "equal, len {len}");
        assert!(!passes(a, b, len, false), "equal (ne), len {len}");
        assert!(passes(a, a, len, true), "same address, len {len}");
        if len == 0 {
            continue;
        }
        // Differ in the first, the last, and a middle byte.
        for at in [0, len - 1, len / 2] {
            let mut other = bytes.clone();
            other[at] ^= 0x10;
            arena.write(b, &other);
            assert!(!passes(a, b, len, true), "differ at {at}, len {len}");
            assert!(passes(a, b, len, false), "differ at {at} (ne), len {len}");
        }
    }
    // Bytewise compares at odd addresses.
    arena.write(1, b"hello, world");
    arena.write(8193, b"hello, world");
    assert!(passes(1, 8193, 12, true));
    assert!(passes(1, 8193, 3, true));
    arena.write(8193 + 11, b"D");
    assert!(!passes(1, 8193, 12, true));
}

#[test]
fn compare_eq_and_ne_every_length() {
    check_compares();
}

fn check_memcpy() {
    for len in [0usize, 1, 2, 7, 8, 9, 63, 64, 65, 4095, 4096] {
        for (dst, src) in [(0usize, 4096 + 64), (4096 + 64 + 3, 5)] {
            let arena = Arena::patterned(3 * 4096, len as u8);
            let mut want = arena.snapshot();
            want.copy_within(src..src + len, dst);
            let mut v = OpVec::new();
            v.memcpy(arena.at(dst), arena.at(src), len);
            run(&v).unwrap_or_else(|e| panic!("memcpy {len}: {e}"));
            assert_eq!(arena.snapshot(), want, "memcpy len {len} {dst} <- {src}");
        }
    }
    // Adjacent ranges do not overlap.
    let arena = Arena::patterned(64, 9);
    let mut want = arena.snapshot();
    want.copy_within(8..16, 0);
    let mut v = OpVec::new();
    v.memcpy(arena.at(0), arena.at(8), 8);
    run(&v).unwrap();
    assert_eq!(arena.snapshot(), want);
}

#[test]
fn memcpy_every_length() {
    check_memcpy();
}

fn check_mb_and_sequences() {
    let a = AtomicU64::new(1);
    let mut v = OpVec::new();
    v.mb();
    run(&v).unwrap();
    // Ops apply in order: ((1 + 2) << 3) ^ 5, with barriers in between.
    v.clear().add_word(&a, 2).mb().lshift_word(&a, 3).mb().xor_word(&a, 5);
    assert_eq!(v.len(), 5);
    run(&v).unwrap();
    assert_eq!(a.load(Relaxed), ((1 + 2) << 3) ^ 5);
    // The empty vector runs too.
    run(&OpVec::new()).unwrap();
    // Exactly MAX_OPS ops and exactly MAX_TOTAL_LEN bytes: accepted.
    let arena = Arena::patterned(2 * 4096 + 256, 1);
    let mut v = OpVec::new();
    v.memcpy(arena.at(0), arena.at(4096), MAX_LEN);
    for i in 0..MAX_OPS - 1 {
        v.add(arena.at(8192 + 8 * i), 1, 8);
    }
    assert_eq!(v.len(), MAX_OPS);
    let mut want = arena.snapshot();
    want.copy_within(4096..8192, 0);
    for i in 0..MAX_OPS - 1 {
        let off = 8192 + 8 * i;
        let old = u64::from_le_bytes(want[off..off + 8].try_into().unwrap());
        want[off..off + 8].copy_from_slice(&old.wrapping_add(1).to_le_bytes());
    }
    v.validate().unwrap();
    run(&v).unwrap();
    assert_eq!(arena.snapshot(), want);
}

#[test]
fn mb_sequences_and_limits_exactly() {
    check_mb_and_sequences();
}

fn check_typed() {
    let (u8_, u16_, u32_, u64_, usize_) =
        (AtomicU8::new(250), AtomicU16::new(1), AtomicU32::new(7), AtomicU64::new(0), AtomicUsize::new(10));
    let (i8_, i16_, i32_, i64_, isize_) =
        (AtomicI8::new(-1), AtomicI16::new(-4), AtomicI32::new(5), AtomicI64::new(-8), AtomicIsize::new(3));
    let mut v = OpVec::new();
    v.add_word(&u8_, 10) // wraps to 4
        .or_word(&u16_, 0x8000)
        .and_word(&u32_, 6)
        .xor_word(&u64_, u64::MAX)
        .add_word(&usize_, usize::MAX) // -1
        .add_word(&i8_, -2)
        .rshift_word(&i16_, 1) // logical: 0xfffc >> 1
        .lshift_word(&i32_, 2)
        .add_word(&i64_, -1)
        .add_word(&isize_, -5);
    run(&v).unwrap();
    assert_eq!(u8_.load(Relaxed), 4);
    assert_eq!(u16_.load(Relaxed), 0x8001);
    assert_eq!(u32_.load(Relaxed), 6);
    assert_eq!(u64_.load(Relaxed), u64::MAX);
    assert_eq!(usize_.load(Relaxed), 9);
    assert_eq!(i8_.load(Relaxed), -3);
    assert_eq!(i16_.load(Relaxed), 0x7ffe);
    assert_eq!(i32_.load(Relaxed), 20);
    assert_eq!(i64_.load(Relaxed), -9);
    assert_eq!(isize_.load(Relaxed), -2);

    // Typed compares against plain values.
    let seen = 9usize;
    let other = 8usize;
    let mut v = OpVec::new();
    v.compare_eq_word(&usize_, &seen).compare_ne_word(&usize_, &other).add_word(&usize_, 1);
    run(&v).unwrap();
    assert_eq!(usize_.load(Relaxed), 10);
    assert!(matches!(run(&v), Err(OpvError::CompareFailed { index: 0 })));
    let now = usize_.load(Relaxed);
    let mut v = OpVec::new();
    v.compare_ne_word(&usize_, &now).add_word(&usize_, 1);
    assert!(matches!(run(&v), Err(OpvError::CompareFailed { index: 0 })));
    assert_eq!(usize_.load(Relaxed), 10);

    // Typed copies.
    let dst: Vec<AtomicU8> = (0..5).map(|_| AtomicU8::new(0)).collect();
    let src = [1u8, 2, 3, 4, 5];
    let mut v = OpVec::new();
    v.copy_bytes(&dst, &src);
    run(&v).unwrap();
    assert_eq!(dst.iter().map(|b| b.load(Relaxed)).collect::<Vec<_>>(), src);
    let mut v = OpVec::new();
    v.add_word(&u8_, 1).copy_bytes(&dst[..4], &src);
    assert!(matches!(run(&v), Err(OpvError::LengthMismatch { index: 1, dst: 4, src: 5 })));
    assert_eq!(u8_.load(Relaxed), 4, "an invalid vector touched memory");
}

#[test]
fn typed_forms() {
    check_typed();
}

// ----- errors: each variant, and nothing touched -----

/// Run `v`, expect an error `check` accepts, and check that `arena` did not change and the
/// CPU was restarted.
fn expect_error(arena: &Arena, v: &OpVec<'_>, what: &str, check: impl Fn(&OpvError) -> bool) {
    let before = arena.snapshot();
    let runs = opv::runs();
    let err = run(v).expect_err(what);
    assert!(check(&err), "{what}: unexpected error {err:?}");
    assert!(!err.to_string().is_empty());
    assert_eq!(arena.snapshot(), before, "{what}: the arena changed");
    // Counted runs never go down (other tests run vectors concurrently, so no exact count).
    assert!(opv::runs() >= runs);
    // `validate` agrees, except for the errors only running can find.
    match err {
        OpvError::CompareFailed { .. } | OpvError::CpuOutOfRange { .. } | OpvError::Fence(_) => {}
        _ => assert!(v.validate().is_err(), "{what}: validate accepted it"),
    }
}

fn check_errors() {
    let arena = Arena::patterned(3 * 4096, 0x42);
    let base = arena.at(0) as usize;
    let at = |off: usize| arena.at(off);
    // Every vector starts with a valid op that would change the arena, so "nothing touched"
    // means validation came first.
    let fresh = || {
        let mut v = OpVec::new();
        v.add(at(0), 1, 8);
        v
    };

    // TooManyOps
    let mut v = fresh();
    for i in 1..=MAX_OPS {
        v.add(at(8 * i), 1, 8);
    }
    expect_error(&arena, &v, "17 ops", |e| matches!(e, OpvError::TooManyOps { count: 17 }));
    for _ in 0..100 {
        v.mb();
    }
    expect_error(&arena, &v, "117 ops", |e| matches!(e, OpvError::TooManyOps { count: 117 }));

    // BadSize
    for size in [0usize, 3, 5, 6, 7, 9, 16, usize::MAX] {
        let mut v = fresh();
        v.add(at(64), 1, size);
        expect_error(&arena, &v, "add size", |e| matches!(e, OpvError::BadSize { index: 1, size: s } if *s == size));
        let mut v = fresh();
        v.mb().rshift(at(64), 1, size);
        expect_error(&arena, &v, "shift size", |e| matches!(e, OpvError::BadSize { index: 2, size: s } if *s == size));
    }

    // Misaligned
    for size in [2usize, 4, 8] {
        for off in 1..size {
            let mut v = fresh();
            v.xor(at(64 + off), 1, size);
            expect_error(&arena, &v, "xor misaligned", |e| {
                matches!(e, OpvError::Misaligned { index: 1, operand: Operand::Addr, addr, align }
                    if *addr == base + 64 + off && *align == size)
            });
            let mut v = fresh();
            v.lshift(at(64 + off), 1, size);
            expect_error(&arena, &v, "shift misaligned", |e| matches!(e, OpvError::Misaligned { index: 1, .. }));
            let mut v = fresh();
            v.compare_eq(at(64 + off), at(128), size);
            expect_error(
                &arena,
                &v,
                "compare a misaligned",
                |e| matches!(e, OpvError::Misaligned { index: 1, operand: Operand::A, align, .. } if *align == size),
            );
            let mut v = fresh();
            v.compare_ne(at(64), at(128 + off), size);
            expect_error(
                &arena,
                &v,
                "compare b misaligned",
                |e| matches!(e, OpvError::Misaligned { index: 1, operand: Operand::B, addr, .. } if *addr == base + 128 + off),
            );
        }
    }

    // Overlap
    for (dst, src, len) in [(0usize, 4usize, 8usize), (8, 0, 9), (100, 100, 1), (0, 4095, 4096), (4095, 0, 4096)] {
        let mut v = fresh();
        v.memcpy(at(dst), at(src), len);
        expect_error(&arena, &v, "overlap", |e| {
            matches!(e, OpvError::Overlap { index: 1, dst: d, src: s, len: l }
                if *d == base + dst && *s == base + src && *l == len)
        });
    }

    // TooLong: one op, then the total.
    for len in [MAX_LEN + 1, 1 << 20, usize::MAX] {
        let mut v = fresh();
        v.memcpy(at(0), at(4096), len);
        expect_error(
            &arena,
            &v,
            "memcpy too long",
            |e| matches!(e, OpvError::TooLong { index: 1, len: l, limit: MAX_LEN } if *l == len),
        );
        let mut v = fresh();
        v.compare_eq(at(0), at(4096), len);
        expect_error(&arena, &v, "compare too long", |e| {
            matches!(e, OpvError::TooLong { index: 1, limit: MAX_LEN, .. })
        });
    }
    let mut v = fresh(); // 8 bytes
    v.memcpy(at(8), at(4096 + 8), MAX_LEN); // 4104
    v.compare_eq(at(16), at(8192), 112); // 4216: exactly the limit
    v.validate().unwrap();
    v.add(at(8192 + 256), 1, 1); // 4217
    expect_error(
        &arena,
        &v,
        "total too long",
        |e| matches!(e, OpvError::TooLong { index: 3, len, limit } if *len == MAX_TOTAL_LEN + 1 && *limit == MAX_TOTAL_LEN),
    );

    // NullAddress, for every operand, even with nothing to access.
    let null = std::ptr::null_mut::<u8>();
    for len in [0usize, 1, 8, 100] {
        let cases: [(OpVec<'_>, Operand); 5] = [
            (*fresh().compare_eq(null, at(0), len), Operand::A),
            (*fresh().compare_ne(at(0), null, len), Operand::B),
            (*fresh().memcpy(null, at(0), len), Operand::Dst),
            (*fresh().memcpy(at(256), null, len), Operand::Src),
            (*fresh().and(null, 0, 8), Operand::Addr),
        ];
        for (v, operand) in cases {
            expect_error(
                &arena,
                &v,
                "null",
                |e| matches!(e, OpvError::NullAddress { index: 1, operand: o } if *o == operand),
            );
        }
    }
    let mut v = fresh();
    v.lshift(null, 100, 3); // null is reported first
    expect_error(&arena, &v, "null shift", |e| matches!(e, OpvError::NullAddress { index: 1, operand: Operand::Addr }));

    // AddressOverflow: ranges that wrap around the address space (never touched).
    let top = |back: usize| (usize::MAX - back) as *mut u8;
    let mut v = fresh();
    v.compare_eq(top(2), at(0), 4);
    expect_error(
        &arena,
        &v,
        "wrap a",
        |e| matches!(e, OpvError::AddressOverflow { index: 1, operand: Operand::A, addr, len: 4 } if *addr == usize::MAX - 2),
    );
    let mut v = fresh();
    v.compare_eq(at(0), top(0), 1);
    expect_error(&arena, &v, "wrap b", |e| {
        matches!(e, OpvError::AddressOverflow { index: 1, operand: Operand::B, .. })
    });
    let mut v = fresh();
    v.memcpy(top(4000), at(0), 4096);
    expect_error(&arena, &v, "wrap dst", |e| {
        matches!(e, OpvError::AddressOverflow { index: 1, operand: Operand::Dst, .. })
    });
    let mut v = fresh();
    v.memcpy(at(0), top(0), 1);
    expect_error(&arena, &v, "wrap src", |e| {
        matches!(e, OpvError::AddressOverflow { index: 1, operand: Operand::Src, .. })
    });
    let mut v = fresh();
    v.add(top(3), 1, 4); // aligned to 4, but addr + 4 wraps
    expect_error(&arena, &v, "wrap addr", |e| {
        matches!(e, OpvError::AddressOverflow { index: 1, operand: Operand::Addr, len: 4, .. })
    });
    let mut v = fresh();
    v.rshift(top(7), 1, 8);
    expect_error(&arena, &v, "wrap shift", |e| matches!(e, OpvError::AddressOverflow { index: 1, .. }));

    // ShiftTooLarge
    for size in [1usize, 2, 4, 8] {
        for count in [8 * size as u32, 8 * size as u32 + 1, 1000, u32::MAX] {
            let mut v = fresh();
            v.lshift(at(64), count, size);
            expect_error(
                &arena,
                &v,
                "shift count",
                |e| matches!(e, OpvError::ShiftTooLarge { index: 1, count: c, size: s } if *c == count && *s == size),
            );
        }
    }

    // CpuOutOfRange: the vector is valid, the index is not.
    let limit = guard::limit();
    let v = fresh();
    for cpu in [limit, limit + 1, guard::MAX_CPUS, usize::MAX] {
        let before = arena.snapshot();
        // SAFETY: the vector points into `arena`, which only this thread touches.
        let err = unsafe { v.run_on(cpu) }.unwrap_err();
        assert!(matches!(err, OpvError::CpuOutOfRange { cpu: c, limit: l } if c == cpu && l == limit), "{err:?}");
        // SAFETY: as above.
        let err = unsafe { v.run_on_index::<MmCid>(cpu) }.unwrap_err();
        assert!(matches!(err, OpvError::CpuOutOfRange { .. }), "{err:?}");
        assert_eq!(arena.snapshot(), before);
    }

    // CompareFailed: ops before it applied, none after it.
    let arena2 = Arena::patterned(256, 5);
    let mut v = OpVec::new();
    v.add(arena2.at(0), 1, 8)
        .compare_eq(arena2.at(8), arena2.at(16), 8) // equal: goes on
        .or(arena2.at(24), 0xff, 1)
        .compare_eq(arena2.at(32), arena2.at(40), 8) // differs (the pattern)
        .add(arena2.at(48), 1, 8)
        .memcpy(arena2.at(128), arena2.at(64), 64);
    arena2.write(16, &arena2.read(8, 8));
    assert_ne!(arena2.read(32, 8), arena2.read(40, 8));
    let mut want = arena2.snapshot();
    let old = u64::from_le_bytes(want[0..8].try_into().unwrap());
    want[0..8].copy_from_slice(&old.wrapping_add(1).to_le_bytes());
    want[24] |= 0xff;
    let err = run(&v).unwrap_err();
    assert!(matches!(err, OpvError::CompareFailed { index: 3 }), "{err:?}");
    assert!(err.is_compare_failed());
    assert_eq!(err.index(), Some(3));
    assert_eq!(arena2.snapshot(), want, "ops before the failed compare applied, none after");
}

#[test]
fn every_error_variant_touches_nothing() {
    check_errors();
}

#[test]
fn error_reports() {
    let e = OpvError::from(GuardError::OutOfRange { index: 9, limit: 2 });
    assert!(matches!(e, OpvError::CpuOutOfRange { cpu: 9, limit: 2 }));
    assert!(e.to_string().contains('9'), "{e}");
    let e = OpvError::from(GuardError::Fence(std::io::Error::from_raw_os_error(libc::EPERM)));
    assert!(matches!(&e, OpvError::Fence(io) if io.raw_os_error() == Some(libc::EPERM)));
    assert!(std::error::Error::source(&e).is_some());
    assert!(e.to_string().contains("fence"), "{e}");
    let e = OpvError::Misaligned { index: 2, operand: Operand::B, addr: 0x1001, align: 4 };
    assert_eq!(e.to_string(), "op 2: b address 0x1001 is not 4-byte aligned");
    assert_eq!(e.index(), Some(2));
    assert!(std::error::Error::source(&e).is_none());
    assert_eq!(OpvError::TooManyOps { count: 17 }.index(), None);
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(OpvError::CompareFailed { index: 0 });
    assert_eq!(boxed.to_string(), "op 0: compare failed");
    // `OpVec` can be sent to and shared with other threads.
    fn send_sync<T: Send + Sync>() {}
    send_sync::<OpVec<'static>>();
    send_sync::<OpvError>();
    assert!(format!("{:?}", OpVec::new()).contains("OpVec"));
}

// ----- CPUs, index modes, run_stopped -----

fn check_every_cpu() {
    let limit = guard::limit();
    assert_eq!(limit, restartable::possible_cpus().min(guard::MAX_CPUS));
    let slots: Vec<Padded<AtomicU64>> = (0..limit).map(|_| Padded(AtomicU64::new(0))).collect();
    for (cpu, slot) in slots.iter().enumerate() {
        let mut v = OpVec::new();
        v.add_word(&**slot, cpu as u64 + 1);
        // SAFETY: `slots` is local to this thread.
        unsafe { v.run_on(cpu) }.unwrap_or_else(|e| panic!("cpu {cpu}: {e}"));
        // SAFETY: as above.
        unsafe { v.run_on_index::<Cpu>(cpu) }.unwrap();
    }
    for (cpu, slot) in slots.iter().enumerate() {
        assert_eq!(slot.load(Relaxed), 2 * (cpu as u64 + 1));
    }
    // MmCid indexing: index 0 always exists.
    let a = AtomicU32::new(1);
    let mut v = OpVec::new();
    v.lshift_word(&a, 4);
    // SAFETY: `a` is local to this thread.
    unsafe { v.run_on_index::<MmCid>(0) }.unwrap();
    assert_eq!(a.load(Relaxed), 16);
    if let Some(cid) = restartable::current_mm_cid() {
        // SAFETY: as above.
        unsafe { v.run_on_index::<MmCid>(cid) }.unwrap();
        assert_eq!(a.load(Relaxed), 256);
    }
}

#[test]
fn run_on_every_cpu_and_mm_cid() {
    check_every_cpu();
}

fn check_run_stopped() {
    let a = AtomicU64::new(5);
    let seen = 5u64;
    let cpu = restartable::current_cpu() % guard::limit();
    let runs = opv::runs();
    let stop = guard::stop::<Cpu>(cpu).unwrap();
    assert!(guard::is_stopped(cpu));
    let mut v = OpVec::new();
    v.compare_eq_word(&a, &seen).add_word(&a, 10);
    // SAFETY: `a` and `seen` are locals of this thread.
    unsafe { v.run_stopped(&stop) }.unwrap();
    assert_eq!(a.load(Relaxed), 15);
    // SAFETY: as above.
    let err = unsafe { v.run_stopped(&stop) }.unwrap_err();
    assert!(matches!(err, OpvError::CompareFailed { index: 0 }));
    // An invalid vector under a stop: an error, and the stop is still held.
    let mut bad = OpVec::new();
    bad.add_word(&a, 1).add((&raw const a).cast_mut().cast::<u8>().wrapping_add(1), 1, 8);
    // SAFETY: invalid, so nothing is touched.
    let err = unsafe { bad.run_stopped(&stop) }.unwrap_err();
    assert!(matches!(err, OpvError::Misaligned { index: 1, .. }), "{err:?}");
    assert_eq!(a.load(Relaxed), 15);
    assert!(guard::is_stopped(cpu));
    drop(stop);
    // Both executed vectors were counted (the invalid one was not).
    assert!(opv::runs() >= runs + 2);
}

#[test]
fn run_stopped_under_a_held_stop() {
    check_run_stopped();
}

// ----- remote drain racing the fast path -----

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Take CPU `c`'s count with one vector: `[compare_eq(slot, v), memcpy(copy <- slot), add(slot, -v)]`.
/// Returns the amount taken, and how many compares failed on the way.
fn drain_one(slots: &[Padded<AtomicUsize>], c: usize) -> (usize, u64) {
    let slot: &AtomicUsize = &slots[c];
    let mut failed = 0;
    loop {
        let v = slot.load(Relaxed);
        if v == 0 {
            return (0, failed);
        }
        let copy = AtomicUsize::new(0);
        let mut ov = OpVec::new();
        ov.compare_eq_word(slot, &v)
            .memcpy(copy.as_ptr().cast(), slot.as_ptr().cast(), size_of::<usize>())
            .add_word(slot, v.wrapping_neg());
        // SAFETY: slot `c` is written only by ops indexed by `c` and under `c`'s guard; `v` and
        // `copy` are locals.
        match unsafe { ov.run_on(c) } {
            Ok(()) => {
                assert_eq!(copy.load(Relaxed), v, "memcpy under the stop saw another value");
                return (v, failed);
            }
            Err(OpvError::CompareFailed { index: 0 }) => failed += 1,
            Err(e) => panic!("drain of cpu {c}: {e}"),
        }
    }
}

fn drain(reps: usize) {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = 6 * online;
    let n = restartable::possible_cpus();
    let slots: Arc<Vec<Padded<AtomicUsize>>> = Arc::new((0..n).map(|_| Padded(AtomicUsize::new(0))).collect());
    let done = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicU64::new(0));
    // Successful drains so far: workers wait at half-time for the first, so that the drain
    // really races the fast path (the adds alone take only milliseconds).
    let drains = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 1));

    let drainer = {
        let (slots, done, drains, start) = (slots.clone(), done.clone(), drains.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let (mut drained, mut failed) = (0usize, 0u64);
            while !done.load(SeqCst) {
                let c = (xorshift(&mut seed) % n as u64) as usize;
                let (d, f) = drain_one(&slots, c);
                drained += d;
                failed += f;
                if d > 0 {
                    drains.fetch_add(1, SeqCst);
                }
            }
            (drained, failed)
        })
    };

    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (slots, slow, drains) = (slots.clone(), slow.clone(), drains.clone());
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for rep in 0..reps {
                    if rep == reps / 2 {
                        while drains.load(SeqCst) == 0 {
                            std::thread::yield_now();
                        }
                    }
                    if rep % 32 == 0 {
                        // Let the drainer (and the other workers) in on 2 cores.
                        std::thread::yield_now();
                    }
                    loop {
                        let cpu = restartable::current_cpu();
                        let slot: &AtomicUsize = &slots[cpu];
                        // SAFETY: `slot` belongs to `cpu`, the CPU just read; it is written only
                        // by ops indexed by `cpu` and under `cpu`'s guard.
                        match unsafe { ops::load_add_store::<Cpu>(slot, 1, cpu) } {
                            Outcome::Committed => break,
                            Outcome::Aborted => continue,
                            Outcome::Stopped => {
                                let mut v = OpVec::new();
                                v.add_word(slot, 1);
                                // SAFETY: as above, and the vector runs under `cpu`'s guard.
                                unsafe { v.run_on(cpu) }.unwrap_or_else(|e| panic!("slow add: {e}"));
                                slow.fetch_add(1, Relaxed);
                                break;
                            }
                            Outcome::CompareFailed => unreachable!("load_add_store has no compare"),
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    done.store(true, SeqCst);
    let (drained, failed) = drainer.join().expect("drainer");
    let drains = drains.load(SeqCst);
    let left: usize = slots.iter().map(|s| s.load(Relaxed)).sum();
    println!(
        "drain: {threads} threads x {reps}: drained {drained} in {drains} vectors ({failed} compares \
         failed), {left} left in slots, {} slow-path adds",
        slow.load(Relaxed)
    );
    assert_eq!(drained + left, threads * reps, "updates lost or doubled");
    assert!(drains > 0 && drained > 0, "the drain never ran concurrently");
}

#[test]
fn remote_drain_races_the_fast_path() {
    drain(20_000);
}

// ----- a failed fence (seccomp after the mode is decided) -----

fn deny_membarrier_on_this_thread() {
    let filter = testkit::build_filter(&[(testkit::SYS_MEMBARRIER, libc::EPERM)]).unwrap();
    let prog = libc::sock_fprog { len: filter.len() as libc::c_ushort, filter: filter.as_ptr().cast_mut() };
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, 0);
    // SAFETY: `prog` points to `filter`, a valid BPF program alive for the call (the kernel
    // copies it).
    let r = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, &prog as *const libc::sock_fprog)
    };
    assert_eq!(r, 0, "installing the seccomp filter: {}", std::io::Error::last_os_error());
}

#[test]
fn fence_failure_child() {
    if std::env::var_os(FENCE_CHILD).is_none() {
        return;
    }
    if !restartable::mode().is_fast() {
        println!("OPV-FENCE-SKIPPED: {}", restartable::mode());
        return;
    }
    deny_membarrier_on_this_thread();
    let arena = Arena::patterned(64, 11);
    let mut v = OpVec::new();
    v.add(arena.at(0), 1, 8).memcpy(arena.at(16), arena.at(32), 16);
    let before = arena.snapshot();
    // SAFETY: the vector points into `arena`, which only this thread touches.
    let err = unsafe { v.run_on(0) }.unwrap_err();
    assert!(matches!(&err, OpvError::Fence(e) if e.raw_os_error() == Some(libc::EPERM)), "{err:?}");
    // SAFETY: as above.
    let err = unsafe { v.run_on_index::<MmCid>(0) }.unwrap_err();
    assert!(matches!(&err, OpvError::Fence(e) if e.raw_os_error() == Some(libc::EPERM)), "{err:?}");
    assert_eq!(arena.snapshot(), before, "a vector ran without its fence");
    assert!(!guard::is_stopped(0), "the guard stayed set after a failed fence");
    println!("OPV-FENCE-CHECKED");
}

#[test]
fn fence_failure_is_an_error_and_touches_nothing() {
    let out = testkit::run_self_as_child("fence_failure_child", &[(FENCE_CHILD, "1")], &[]);
    let text = testkit::describe(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if restartable::mode().is_fast() {
        assert!(stdout.contains("OPV-FENCE-CHECKED"), "{text}");
    } else {
        assert!(stdout.contains("OPV-FENCE-CHECKED") || stdout.contains("OPV-FENCE-SKIPPED"), "{text}");
    }
}

// ----- degraded mode -----

#[test]
fn degraded_child() {
    if std::env::var_os(DEGRADED_CHILD).is_none() {
        return;
    }
    assert!(
        matches!(restartable::mode(), restartable::Mode::Degraded(restartable::Degraded::Forced)),
        "{}",
        restartable::mode()
    );
    check_arithmetic();
    check_compares();
    check_memcpy();
    check_mb_and_sequences();
    check_typed();
    check_errors();
    check_every_cpu();
    check_run_stopped();
    drain(5_000);
    println!("OPV-DEGRADED-CHECKED");
}

#[test]
fn degraded_mode_too() {
    let out = testkit::run_self_as_child(
        "degraded_child",
        &[(DEGRADED_CHILD, "1"), ("RESTARTABLE_FORCE_DEGRADED", "1")],
        &[],
    );
    let text = testkit::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OPV-DEGRADED-CHECKED"), "{text}");
}
