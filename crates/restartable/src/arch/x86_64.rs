//! x86_64 critical sections (Intel syntax), laid out as DESIGN.md section 3 describes.
//!
//! Each op is one `asm!` block: a descriptor in `__rseq_cs`, the `rseq_cs` store, the index
//! check (`cpu_id` at +4, or `mm_cid` at +24), the guard check, the op's body ending in a single
//! commit store, and an abort handler in `__rseq_failure` preceded by the signature (encoded as
//! `ud1`). Abort, stop and compare-failure leave through `label` operands.
//!
//! On x86_64 (TSO) a release store is a plain `mov`; the `RELEASE` parameter exists so that the
//! same API maps to `stlr` on aarch64. The `asm!` blocks are compiler barriers for memory.

// The section functions take their operands one by one, exactly as the asm blocks use them.
#![allow(clippy::too_many_arguments)]

use core::sync::atomic::AtomicU32;

use super::Exit;
use crate::abi::Rseq;

/// The thread pointer (`fs:0` holds its own address on x86_64 Linux).
#[inline(always)]
pub(crate) fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux the TCB's first word is its own address (the TLS ABI).
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags, pure));
    }
    tp
}

/// A delay-injection point: in `inject` builds a spin loop whose count is read from
/// `inject::LOOPS[k]` (it reuses the `cs` scratch register, free after the descriptor store);
/// in normal builds nothing at all.
#[cfg(feature = "inject")]
macro_rules! point {
    ($k:literal) => {
        concat!("mov {cs}, qword ptr [{dly} + ", $k, " * 8]\n", "9:\n", "sub {cs}, 1\n", "jnc 9b\n")
    };
}
#[cfg(not(feature = "inject"))]
macro_rules! point {
    ($k:literal) => {
        ""
    };
}

#[cfg(feature = "inject")]
macro_rules! inject_operand {
    ($($rest:tt)*) => {
        core::arch::asm!($($rest)* dly = in(reg) super::inject::LOOPS.as_ptr(),)
    };
}
#[cfg(not(feature = "inject"))]
macro_rules! inject_operand {
    ($($rest:tt)*) => {
        core::arch::asm!($($rest)*)
    };
}

/// One critical section. `$off` is the offset of the index field (4 = cpu_id, 24 = mm_cid).
macro_rules! section {
    (@asm $off:literal, $area:expr, $index:expr, $guard:expr, [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        section!(@asm_checked $off, $area, $index, $guard, ["cmp dword ptr [{guard}], 0", "jne {stopped}"],
            [$($body),*], [$($operands)*])
    };
    // `$check` is the guard check; only the benchmark-only unguarded op replaces it (with a
    // comment naming the operands, which asm! requires to be used).
    (@asm_checked $off:literal, $area:expr, $index:expr, $guard:expr, [$($check:expr),*], [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        inject_operand!(
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "7:",
            ".long 0, 0",
            ".quad 5f, (6f - 5f), 8f",
            ".popsection",
            "lea {cs}, [rip + 7b]",
            "mov qword ptr [{area} + 8], {cs}",
            "5:",
            point!(1),
            concat!("cmp dword ptr [{area} + ", $off, "], {index:e}"),
            "jne {abort}",
            point!(2),
            $($check,)*
            point!(3),
            $($body,)*
            "6:",
            ".pushsection __rseq_failure, \"ax\"",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long 0x53053053",
            "8:",
            point!(6),
            "jmp {abort}",
            ".popsection",
            area = in(reg) $area,
            index = in(reg) $index,
            guard = in(reg) $guard,
            cs = out(reg) _,
            abort = label { return Exit::Aborted },
            stopped = label { return Exit::Stopped },
            $($operands)*
            options(nostack),
        )
    };
    ($mmcid:expr, $area:expr, $index:expr, $guard:expr, $body:tt, $operands:tt) => {
        if $mmcid {
            section!(@asm "24", $area, $index, $guard, $body, $operands)
        } else {
            section!(@asm "4", $area, $index, $guard, $body, $operands)
        }
    };
}

// Every function below has the same contract:
//
// # Safety
// `area` is the calling thread's registered rseq area; `guard` points to the guard word of
// `index`; every other pointer is valid for the accesses the pseudo-code makes, and every
// location the section stores to is only accessed by others atomically (or through critical
// sections on the same CPU).

/// `if *v != expect { CompareFailed }; *v = new`
#[inline(always)]
pub(crate) unsafe fn load_cbne_store(
    mmcid: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    expect: usize,
    new: usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, new = in(reg) new,
            cmpfail = label { return Exit::CompareFailed },
        ]);
    }
    Exit::Committed
}

/// `*v += count`
#[inline(always)]
pub(crate) unsafe fn load_add_store(
    mmcid: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    count: usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "mov {t}, qword ptr [{v}]",
            point!(4),
            "add {t}, {count}",
            point!(5),
            "mov qword ptr [{v}], {t}",
        ], [
            v = in(reg) v, count = in(reg) count, t = out(reg) _,
        ]);
    }
    Exit::Committed
}

/// `r = *v; if r == expectnot { CompareFailed }; *out = r; *v = *(r + off)`
#[inline(always)]
pub(crate) unsafe fn load_cbeq_store_add_load_store(
    mmcid: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    expectnot: usize,
    off: usize,
    out: *mut usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "mov {t}, qword ptr [{v}]",
            "cmp {t}, {expectnot}",
            "je {cmpfail}",
            "mov qword ptr [{out}], {t}",
            point!(4),
            "mov {t}, qword ptr [{t} + {off}]",
            point!(5),
            "mov qword ptr [{v}], {t}",
        ], [
            v = in(reg) v, expectnot = in(reg) expectnot, off = in(reg) off, out = in(reg) out,
            t = out(reg) _, cmpfail = label { return Exit::CompareFailed },
        ]);
    }
    Exit::Committed
}

/// `r = *(*p + off); *r += count`
#[inline(always)]
pub(crate) unsafe fn load_add_load_load_add_store(
    mmcid: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    p: *mut usize,
    off: usize,
    count: usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "mov {r}, qword ptr [{p}]",
            "mov {r}, qword ptr [{r} + {off}]",
            point!(4),
            "mov {t}, qword ptr [{r}]",
            "add {t}, {count}",
            point!(5),
            "mov qword ptr [{r}], {t}",
        ], [
            p = in(reg) p, off = in(reg) off, count = in(reg) count, r = out(reg) _, t = out(reg) _,
        ]);
    }
    Exit::Committed
}

/// `if *v != expect || *v2 != expect2 { CompareFailed }; *v = new`
#[inline(always)]
pub(crate) unsafe fn load_cbne_load_cbne_store(
    mmcid: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    expect: usize,
    v2: *mut usize,
    expect2: usize,
    new: usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            point!(4),
            "cmp qword ptr [{v2}], {expect2}",
            "jne {cmpfail}",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, v2 = in(reg) v2, expect2 = in(reg) expect2,
            new = in(reg) new, cmpfail = label { return Exit::CompareFailed },
        ]);
    }
    Exit::Committed
}

/// `if *v != expect { CompareFailed }; *v2 = new2; *v = new` (the last store commits; with
/// `RELEASE` it is a release store, which on x86_64 is the same `mov`).
#[inline(always)]
pub(crate) unsafe fn load_cbne_store_store(
    mmcid: bool,
    _release: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    expect: usize,
    v2: *mut usize,
    new2: usize,
    new: usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            "mov qword ptr [{v2}], {new2}",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, v2 = in(reg) v2, new2 = in(reg) new2,
            new = in(reg) new, cmpfail = label { return Exit::CompareFailed },
        ]);
    }
    Exit::Committed
}

/// `if *v != expect { CompareFailed }; copy len bytes src -> dst; *v = new`
#[inline(always)]
pub(crate) unsafe fn load_cbne_memcpy_store(
    mmcid: bool,
    _release: bool,
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    expect: usize,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    new: usize,
) -> Exit {
    // SAFETY: the function's contract above.
    unsafe {
        section!(mmcid, area, index, guard, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            "test {len}, {len}",
            "jz 3f",
            "2:",
            "mov {b}, byte ptr [{src}]",
            "mov byte ptr [{dst}], {b}",
            "inc {src}",
            "inc {dst}",
            "dec {len}",
            "jnz 2b",
            "3:",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, new = in(reg) new,
            dst = inout(reg) dst => _, src = inout(reg) src => _, len = inout(reg) len => _,
            b = out(reg_byte) _, cmpfail = label { return Exit::CompareFailed },
        ]);
    }
    Exit::Committed
}

/// `*v += count` without the guard check: exists only so that benchmarks can measure what the
/// guard check costs, side by side. Never used by the library.
#[inline(always)]
pub(crate) unsafe fn load_add_store_unguarded(
    area: *mut Rseq,
    guard: *const AtomicU32,
    index: u32,
    v: *mut usize,
    count: usize,
) -> Exit {
    // SAFETY: the function's contract above (the guard is named, not read).
    unsafe {
        section!(@asm_checked "4", area, index, guard, ["# unguarded: {guard} {stopped}"], [
            "mov {t}, qword ptr [{v}]",
            "add {t}, {count}",
            "mov qword ptr [{v}], {t}",
        ], [
            v = in(reg) v, count = in(reg) count, t = out(reg) _,
        ]);
    }
    Exit::Committed
}
