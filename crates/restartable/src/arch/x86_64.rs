//! x86_64: critical sections in Intel syntax, laid out as DESIGN.md section 3 describes, the
//! thread pointer, the static-TLS thread block, glibc's weak symbols and `rdpid`.
//!
//! Each op is one `asm!` block: a descriptor in `__rseq_cs` (also listed in
//! `__rseq_cs_ptr_array`), the `rseq_cs` store, the index check (`cpu_id` or `mm_cid`, chosen by
//! the `F: Field` type parameter), the guard check, the op's body ending in a single commit
//! instruction, and an abort handler in `__rseq_failure` preceded by the signature (encoded as
//! `ud1`). Abort, stop and compare failure leave through `label` operands, and each of those
//! exits is listed in `__rseq_exit_point_array` as a `(start_ip, exit_ip)` pair, so that
//! debuggers and tracers can find our sections (the layout tools expect from the C reference
//! library).
//!
//! The area is addressed `fs:`-relative (its offset from the thread pointer is the process-wide
//! offset), so no instruction computes its address; the commit goes to the caller's data through
//! a plain pointer, never through `fs:` (an `fs:`-relative read-modify-write costs several
//! times more than a plain one on AMD Zen 4).
//!
//! On x86_64 (TSO) a release store is a plain `mov`; the op set's `Release` ordering maps to
//! `stlr` on aarch64. The `asm!` blocks are compiler barriers for memory.

use core::arch::{asm, global_asm};

use super::{At, Field, Outcome, ThreadBlock};
use crate::abi;

/// This architecture has rseq critical sections.
pub(crate) const HAS_RSEQ: bool = true;

/// The name of the thread block's TLS symbol: hidden, and versioned so that two major versions
/// of this crate linked into one program each get their own.
macro_rules! block_symbol {
    () => {
        concat!("restartable_", env!("CARGO_PKG_VERSION_MAJOR"), "_", env!("CARGO_PKG_VERSION_MINOR"), "_thread_block")
    };
}

// The thread block (`ThreadBlock`, 192 bytes, 64-byte aligned) in `.tdata`, accessed with the
// initial-exec TLS model (`@GOTTPOFF`): every thread's copy sits at the same offset from its
// thread pointer, also in a `dlopen`ed library (which then takes static TLS, as the C
// reference library's `__rseq_abi` does). Both areas start with `cpu_id_start` 0 and `cpu_id`
// -1: a section can never commit on an area the kernel does not update.
global_asm!(
    concat!(".pushsection .tdata.", block_symbol!(), ", \"awT\", @progbits"),
    ".balign 64",
    concat!(".globl ", block_symbol!()),
    concat!(".hidden ", block_symbol!()),
    concat!(".type ", block_symbol!(), ", @object"),
    concat!(block_symbol!(), ":"),
    ".long 0, 0xffffffff",
    ".zero 56",
    ".long 0, 0xffffffff",
    ".zero 24",
    ".zero 96",
    concat!(".size ", block_symbol!(), ", 192"),
    ".popsection",
);

/// The thread pointer (`fs:0` holds its own address on x86_64 Linux).
#[inline(always)]
pub(crate) fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux the TCB's first word is its own address (the TLS ABI). `nomem` and
    // `pure` let the compiler hoist the read out of loops: the value is constant for the calling
    // thread, and Rust code never changes threads inside a function activation (async code is
    // split into separate functions at its await points before code generation).
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, nomem, preserves_flags, pure));
    }
    tp
}

/// The `u32` at `offset + FIELD` from the thread pointer, read once (the kernel may change it
/// between two reads).
///
/// # Safety
/// `fs:offset + FIELD .. + 4` is readable memory of the calling thread.
#[inline(always)]
pub(crate) unsafe fn read_tp_u32<const FIELD: usize>(offset: isize) -> u32 {
    let v: u32;
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "mov {v:e}, dword ptr fs:[{o} + {f}]",
            o = in(reg) offset,
            f = const FIELD,
            v = out(reg) v,
            options(nostack, readonly, preserves_flags),
        );
    }
    v
}

/// A word that changes at most a few times in the process's life (the published area offset),
/// read so that the compiler may merge two reads with no store of this thread between them (an
/// `asm` without side effects: a relaxed atomic load is never merged). A stale read is still a
/// value the word held, which every reader must accept anyway.
///
/// # Safety
/// `p` is valid for reads of an `isize`, and every write to it is atomic.
#[inline(always)]
pub(crate) unsafe fn read_word_mergeable(p: *const isize) -> isize {
    let v: isize;
    // SAFETY: the caller's contract; one aligned 8-byte load is atomic on x86_64.
    unsafe {
        asm!(
            "mov {v}, qword ptr [{p}]",
            p = in(reg) p,
            v = out(reg) v,
            options(nostack, readonly, pure, preserves_flags),
        );
    }
    v
}

/// The index field of mode `F` ([`Field::CURSOR`]) of the area at `offset` from the thread
/// pointer, as a read the compiler may merge with an earlier one when no store came
/// between them (and may move out of a loop that stores nothing): for an index read just before
/// the section that re-checks it (a stale one costs a retry), so that the area offset read
/// before it and the one the section uses can be one load.
///
/// # Safety
/// As [`read_tp_u32`], for that field.
#[inline(always)]
pub(crate) unsafe fn read_tp_cursor<F: Field>(offset: isize) -> usize {
    let v: usize;
    // SAFETY: the caller's contract. The value is below `MAX_CPUS` (said to the compiler, which
    // then needs no instruction to widen it, cut it to 32 bits or check it against a table's
    // length): the published area is the decoy (0 in both fields), an area of ours (0 until the
    // kernel writes it) or glibc's, and the kernel keeps `cpu_id_start` a possible CPU number
    // and `mm_cid` below the number of CPUs (uapi `rseq.h`), while fast paths, the only reason
    // an area other than the decoy is published, run only where every possible CPU number is
    // below `MAX_CPUS` (`thread::decide`). Every hot path already indexes per-CPU memory with it.
    unsafe {
        asm!(
            "mov {v:e}, dword ptr fs:[{o} + {f}]",
            o = in(reg) offset,
            f = const F::CURSOR,
            v = out(reg) v,
            options(nostack, readonly, pure, preserves_flags),
        );
        core::hint::assert_unchecked(v < abi::MAX_CPUS);
    }
    v
}

/// The calling thread's [`ThreadBlock`].
#[inline(always)]
pub(crate) fn thread_block() -> *mut ThreadBlock {
    let offset: isize;
    // SAFETY: reads the GOT slot holding the block's offset from the thread pointer (or, in an
    // executable, the linker turns it into an immediate); the value never changes.
    unsafe {
        asm!(
            concat!("mov {}, qword ptr [rip + ", block_symbol!(), "@GOTTPOFF]"),
            out(reg) offset,
            options(nostack, nomem, preserves_flags, pure),
        );
    }
    thread_pointer().wrapping_offset(offset).cast()
}

/// glibc's `(__rseq_offset, __rseq_size)` when glibc registers every thread's area itself
/// (glibc 2.35+, with its registration on), else `None`. Weak references: they resolve to null
/// where no glibc defines them (older glibc, musl), and they work in static binaries, where
/// `dlsym` sees nothing.
pub(crate) fn glibc_rseq() -> Option<(isize, u32)> {
    let (offset, size): (*const isize, *const u32);
    // SAFETY: loads two GOT slots; a weak undefined symbol's slot holds 0.
    unsafe {
        asm!(
            ".weak __rseq_offset",
            ".weak __rseq_size",
            "mov {o}, qword ptr [rip + __rseq_offset@GOTPCREL]",
            "mov {s}, qword ptr [rip + __rseq_size@GOTPCREL]",
            o = out(reg) offset,
            s = out(reg) size,
            options(nostack, nomem, preserves_flags, pure),
        );
    }
    if offset.is_null() || size.is_null() {
        return None;
    }
    // SAFETY: glibc defines `const unsigned int __rseq_size` and `const ptrdiff_t __rseq_offset`,
    // written before any user code runs and never changed afterwards.
    let (offset, size) = unsafe { (offset.read(), size.read()) };
    (size != 0).then_some((offset, size))
}

/// Whether the CPU has `rdpid` (CPUID leaf 7, ECX bit 22).
pub(crate) fn has_rdpid() -> bool {
    // CPUID is available on every x86_64 CPU; leaf 7 only where leaf 0 reports it.
    let max = core::arch::x86_64::__cpuid(0).eax;
    max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 22) != 0
}

/// The current CPU number from `rdpid` (Linux keeps `(node << 12) | cpu` in `TSC_AUX`).
///
/// # Safety
/// [`has_rdpid`] returned true.
#[inline(always)]
pub(crate) unsafe fn rdpid() -> usize {
    let aux: u64;
    // SAFETY: the caller checked that the instruction exists; it has no other effect.
    unsafe { asm!("rdpid {}", out(reg) aux, options(nostack, nomem, preserves_flags)) };
    (aux & 0xfff) as usize
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
        asm!($($rest)* dly = in(reg) crate::inject::LOOPS.as_ptr(),)
    };
}
#[cfg(not(feature = "inject"))]
macro_rules! inject_operand {
    ($($rest:tt)*) => {
        asm!($($rest)*)
    };
}

/// An extra exit of a section (besides abort and stop), listed for tools.
macro_rules! exit_point {
    ($label:literal) => {
        concat!(".pushsection __rseq_exit_point_array, \"awR\"\n.quad 5b, {", $label, "}\n.popsection")
    };
}

/// Copy one `T` from `[$src]` to `[$dst]` (address expressions in the template's syntax), with
/// the operands `chunks` and `rem` (`size_of::<T>() / 16` and `% 16`, as `const`), the scratch
/// `xmm` register `x`, and two scratch general registers whose operand names are `$t` (the tail)
/// and `$n` (the loop count; it may be the same as `$t`): 16-byte moves unrolled up to eight, a loop (label 3)
/// beyond, then the tail in 8-, 4-, 2- and 1-byte moves. The size is a compile-time constant, so
/// no instruction computes it; the 16-byte moves match the ones the compiler uses to read and
/// write the same value on the stack (a narrower store feeding a wider load would stall store
/// forwarding).
macro_rules! copy_item {
    ($src:literal, $dst:literal, $t:literal, $n:literal) => {
        concat!(
            ".if {chunks} <= 8\n",
            ".set .Lrestartable_o, 0\n",
            ".rept {chunks}\n",
            "movups {x}, xmmword ptr [",
            $src,
            " + .Lrestartable_o]\n",
            "movups xmmword ptr [",
            $dst,
            " + .Lrestartable_o], {x}\n",
            ".set .Lrestartable_o, .Lrestartable_o + 16\n",
            ".endr\n",
            ".else\n",
            "mov {",
            $n,
            "}, -{chunks} * 16\n",
            "3:\n",
            "movups {x}, xmmword ptr [",
            $src,
            " + {",
            $n,
            "} + {chunks} * 16]\n",
            "movups xmmword ptr [",
            $dst,
            " + {",
            $n,
            "} + {chunks} * 16], {x}\n",
            "add {",
            $n,
            "}, 16\n",
            "jnz 3b\n",
            ".endif\n",
            ".if {rem} & 8\n",
            "mov {",
            $t,
            "}, qword ptr [",
            $src,
            " + {chunks} * 16]\n",
            "mov qword ptr [",
            $dst,
            " + {chunks} * 16], {",
            $t,
            "}\n",
            ".endif\n",
            ".if {rem} & 4\n",
            "mov {",
            $t,
            ":e}, dword ptr [",
            $src,
            " + {chunks} * 16 + ({rem} & 8)]\n",
            "mov dword ptr [",
            $dst,
            " + {chunks} * 16 + ({rem} & 8)], {",
            $t,
            ":e}\n",
            ".endif\n",
            ".if {rem} & 2\n",
            "movzx {",
            $t,
            ":e}, word ptr [",
            $src,
            " + {chunks} * 16 + ({rem} & 12)]\n",
            "mov word ptr [",
            $dst,
            " + {chunks} * 16 + ({rem} & 12)], {",
            $t,
            ":x}\n",
            ".endif\n",
            ".if {rem} & 1\n",
            "movzx {",
            $t,
            ":e}, byte ptr [",
            $src,
            " + {chunks} * 16 + ({rem} & 14)]\n",
            "mov byte ptr [",
            $dst,
            " + {chunks} * 16 + ({rem} & 14)], {",
            $t,
            ":l}\n",
            ".endif",
        )
    };
}

/// Copy `{len}` bytes (a register, consumed, as are `{src}` and `{dst}`) with the scratch
/// registers `x`, `x1`, `x2`, `x3` (`xmm`s) and `t`: 64 bytes at a time (label 30), then 16
/// (labels 31, 3), then the tail in 8-, 4-, 2- and 1-byte moves (label 4, reused). An op that
/// uses it has no label 3, 4, 30 or 31 of its own (the section uses 5 to 9).
macro_rules! copy_bytes {
    () => {
        concat!(
            "cmp {len}, 64\n",
            "jb 31f\n",
            "30:\n",
            "movups {x}, xmmword ptr [{src}]\n",
            "movups {x1}, xmmword ptr [{src} + 16]\n",
            "movups {x2}, xmmword ptr [{src} + 32]\n",
            "movups {x3}, xmmword ptr [{src} + 48]\n",
            "movups xmmword ptr [{dst}], {x}\n",
            "movups xmmword ptr [{dst} + 16], {x1}\n",
            "movups xmmword ptr [{dst} + 32], {x2}\n",
            "movups xmmword ptr [{dst} + 48], {x3}\n",
            "add {src}, 64\n",
            "add {dst}, 64\n",
            "sub {len}, 64\n",
            "cmp {len}, 64\n",
            "jae 30b\n",
            "31:\n",
            "cmp {len}, 16\n",
            "jb 4f\n",
            "3:\n",
            "movups {x}, xmmword ptr [{src}]\n",
            "movups xmmword ptr [{dst}], {x}\n",
            "add {src}, 16\n",
            "add {dst}, 16\n",
            "sub {len}, 16\n",
            "cmp {len}, 16\n",
            "jae 3b\n",
            "4:\n",
            "test {len}, 8\n",
            "jz 4f\n",
            "mov {t}, qword ptr [{src}]\n",
            "mov qword ptr [{dst}], {t}\n",
            "add {src}, 8\n",
            "add {dst}, 8\n",
            "4:\n",
            "test {len}, 4\n",
            "jz 4f\n",
            "mov {t:e}, dword ptr [{src}]\n",
            "mov dword ptr [{dst}], {t:e}\n",
            "add {src}, 4\n",
            "add {dst}, 4\n",
            "4:\n",
            "test {len}, 2\n",
            "jz 4f\n",
            "mov {t:x}, word ptr [{src}]\n",
            "mov word ptr [{dst}], {t:x}\n",
            "add {src}, 2\n",
            "add {dst}, 2\n",
            "4:\n",
            "test {len}, 1\n",
            "jz 4f\n",
            "mov {t:l}, byte ptr [{src}]\n",
            "mov byte ptr [{dst}], {t:l}\n",
            "4:",
        )
    };
}

/// One critical section on `$at` with the index field `$field`: the index check (`cpu_id` or
/// `mm_cid` against `at.index`), then the guard check (`at.guard`, or the table entry
/// `at.guard[at.index]` where `$field`'s `TABLE` is true: read only once the index is known to be
/// the thread's, so never for a CPU the thread does not run on, and never past the table), then
/// the body. A section that finds its guard word elsewhere gives its own check (`@checked`); the
/// benchmark-only unguarded op has none (`@unguarded`).
macro_rules! section {
    ($field:ty, $at:expr, [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        section!(@checked $field, $at, [
            ".if {table}",
            "cmp dword ptr [{guard} + 4 * {index}], 0",
            ".else",
            "cmp dword ptr [{guard}], 0",
            ".endif",
            "jne {stopped}"
        ], [$($body),*], [guard = in(reg) $at.guard, table = const <$field as Field>::TABLE as u8, $($operands)*])
    };
    (@checked $field:ty, $at:expr, [$($check:expr),*], [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        section!(@core $field, $at, [
            "cmp dword ptr fs:[{area} + {field}], {index:e}",
            "jne {abort}",
            point!(2),
            $($check),*
        ], [$($body),*], [$($operands)*])
    };
    (@unguarded $field:ty, $at:expr, [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        section!(@checked $field, $at, ["# unguarded: {stopped}"], [$($body),*], [$($operands)*])
    };
    // The descriptor, the `rseq_cs` store, `$check` (which leaves for `{abort}` or `{stopped}`),
    // the body, and the abort handler after its signature (in `__rseq_failure`).
    (@core $field:ty, $at:expr, [$($check:expr),*], [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        inject_operand!(
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "7:",
            ".long 0, 0",
            ".quad 5f, (6f - 5f), 8f",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"awR\"",
            ".quad 7b",
            ".popsection",
            "lea {cs}, [rip + 7b]",
            "mov qword ptr fs:[{area} + {rseq_cs}], {cs}",
            "5:",
            point!(1),
            $($check,)*
            point!(3),
            $($body,)*
            "6:",
            ".pushsection __rseq_exit_point_array, \"awR\"",
            ".quad 5b, {abort}",
            ".quad 5b, {stopped}",
            ".popsection",
            ".pushsection __rseq_failure, \"ax\"",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {sig}",
            "8:",
            point!(6),
            "jmp {abort}",
            ".popsection",
            area = in(reg) $at.area,
            index = in(reg) $at.index,
            field = const <$field as Field>::FIELD,
            rseq_cs = const abi::OFFSET_RSEQ_CS,
            sig = const abi::RSEQ_SIG,
            cs = out(reg) _,
            abort = label { return Outcome::Aborted },
            stopped = label { return Outcome::Stopped },
            $($operands)*
            options(nostack),
        )
    };
}

// Every section function below has the same contract:
//
// # Safety
// `at.area` is the offset of the calling thread's registered rseq area from its thread pointer,
// and `F::FIELD` the offset of `cpu_id` or `mm_cid` in it; `at.index` is below `MAX_CPUS`;
// `at.guard` points to the guard word of `at.index` for the data (or, where `F::TABLE`, to a table
// of guard words with at least `MAX_CPUS` entries); every other
// pointer is valid for the accesses the pseudo-code makes, and every location the section
// stores to is accessed by others only atomically, or through critical sections on the same
// index, or under that index's guard.

/// `if *v != expect { CompareFailed }; *v = new`
#[inline(always)]
pub(crate) unsafe fn cbne_store<F: Field>(at: At, v: *mut usize, expect: usize, new: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            exit_point!("cmpfail"),
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, new = in(reg) new,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `*v += count` (one memory-destination `add` commits).
#[inline(always)]
pub(crate) unsafe fn add<F: Field>(at: At, v: *mut usize, count: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            point!(4),
            point!(5),
            "add qword ptr [{v}], {count}",
        ], [
            v = in(reg) v, count = in(reg) count,
        ]);
    }
    Outcome::Committed
}

/// `*(slot + VALUE) += count` on a strided block: the slot is at `base + offset` (`offset` = index x
/// stride), addressed base-plus-index like the C reference addresses its array, so no register
/// holds the slot's address; its guard word comes first and the value `VALUE` bytes after it.
/// `at.guard` is not read.
#[inline(always)]
pub(crate) unsafe fn add_strided<F: Field, const VALUE: usize>(
    at: At,
    base: *mut u8,
    offset: usize,
    count: usize,
) -> Outcome {
    // SAFETY: the contract above, for the slot at `base + offset`.
    unsafe {
        section!(@checked F, at, ["cmp dword ptr [{base} + {offset}], 0", "jne {stopped}"], [
            point!(4),
            point!(5),
            "add qword ptr [{base} + {offset} + {value}], {count}",
        ], [
            base = in(reg) base, offset = in(reg) offset, value = const VALUE, count = in(reg) count,
        ]);
    }
    Outcome::Committed
}

/// [`add_strided`] unless `*flag & MASK != 0` (then `CompareFailed`, nothing stored): the
/// slot's guard word is checked first (`Stopped`), then the flag word, which any thread may
/// change at any time (an `RwLock`'s writer state: a writer sets it, then fences, so a section
/// that read it clear either commits before the fence or is restarted and reads it again).
/// `at.guard` is not read.
#[inline(always)]
pub(crate) unsafe fn add_strided_unless<F: Field, const VALUE: usize, const MASK: u32>(
    at: At,
    base: *mut u8,
    offset: usize,
    count: usize,
    flag: *const core::sync::atomic::AtomicU32,
) -> Outcome {
    // SAFETY: the contract above, for the slot at `base + offset`; `flag` is readable.
    unsafe {
        section!(@checked F, at, ["cmp dword ptr [{base} + {offset}], 0", "jne {stopped}"], [
            "test dword ptr [{flag}], {mask}",
            "jnz {cmpfail}",
            exit_point!("cmpfail"),
            point!(4),
            point!(5),
            "add qword ptr [{base} + {offset} + {value}], {count}",
        ], [
            base = in(reg) base, offset = in(reg) offset, value = const VALUE, count = in(reg) count,
            flag = in(reg) flag, mask = const MASK, cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `r = *v; if r == expectnot { CompareFailed }; *out = r; *v = *(r + off)`
#[inline(always)]
pub(crate) unsafe fn cbeq_pop<F: Field>(
    at: At,
    v: *mut usize,
    expectnot: usize,
    off: usize,
    out: *mut usize,
) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "mov {t}, qword ptr [{v}]",
            "cmp {t}, {expectnot}",
            "je {cmpfail}",
            exit_point!("cmpfail"),
            "mov qword ptr [{out}], {t}",
            point!(4),
            "mov {t}, qword ptr [{t} + {off}]",
            point!(5),
            "mov qword ptr [{v}], {t}",
        ], [
            v = in(reg) v, expectnot = in(reg) expectnot, off = in(reg) off, out = in(reg) out,
            t = out(reg) _, cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `r = *(*p + off); *r += count` (one memory-destination `add` commits).
#[inline(always)]
pub(crate) unsafe fn add_indirect<F: Field>(at: At, p: *mut usize, off: usize, count: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "mov {r}, qword ptr [{p}]",
            "mov {r}, qword ptr [{r} + {off}]",
            point!(4),
            point!(5),
            "add qword ptr [{r}], {count}",
        ], [
            p = in(reg) p, off = in(reg) off, count = in(reg) count, r = out(reg) _,
        ]);
    }
    Outcome::Committed
}

/// Ring push of one `T`: `c = *count; if c >= cap { CompareFailed /* full */ }; items[c] =
/// *src; *count = c + 1`, the items (`T`s) right after the count.
#[inline(always)]
pub(crate) unsafe fn ring_push_item<F: Field, T>(at: At, count: *mut usize, cap: usize, src: *const T) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "mov {c}, qword ptr [{count}]",
            "cmp {c}, {cap}",
            "jae {cmpfail}",
            exit_point!("cmpfail"),
            ".if {size} == 8",
            "lea {d}, [{count} + {c} * 8 + 8]",
            ".else",
            "imul {d}, {c}, {size}",
            "lea {d}, [{count} + {d} + 8]",
            ".endif",
            copy_item!("{src}", "{d}", "t", "t"),
            point!(4),
            "add {c}, 1",
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, cap = in(reg) cap, src = in(reg) src,
            c = out(reg) _, d = out(reg) _, t = out(reg) _,
            size = const core::mem::size_of::<T>(),
            chunks = const core::mem::size_of::<T>() / 16, rem = const core::mem::size_of::<T>() % 16,
            x = out(xmm_reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Ring pop of one `T`: `c = *count; if c == 0 { CompareFailed /* empty */ }; *dst =
/// items[c - 1]; *count = c - 1` (`*dst` is written before the commit).
#[inline(always)]
pub(crate) unsafe fn ring_pop_item<F: Field, T>(at: At, count: *mut usize, dst: *mut T) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "mov {c}, qword ptr [{count}]",
            "test {c}, {c}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "sub {c}, 1",
            ".if {size} == 8",
            "lea {s}, [{count} + {c} * 8 + 8]",
            ".else",
            "imul {s}, {c}, {size}",
            "lea {s}, [{count} + {s} + 8]",
            ".endif",
            copy_item!("{s}", "{dst}", "t", "t"),
            point!(4),
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, dst = in(reg) dst,
            c = out(reg) _, s = out(reg) _, t = out(reg) _,
            size = const core::mem::size_of::<T>(),
            chunks = const core::mem::size_of::<T>() / 16, rem = const core::mem::size_of::<T>() % 16,
            x = out(xmm_reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Ring push of up to `args[1] >= 1` `T`s from `src`, as many as fit below the capacity
/// `args[0]` (`k`; the last `k` when `FROM_END`): `c = *count; if c >= cap { CompareFailed /*
/// full */ }; args[2] = k; copy; *count = c + k`.
#[inline(always)]
pub(crate) unsafe fn ring_push_many<F: Field, T, const FROM_END: bool>(
    at: At,
    count: *mut usize,
    src: *const T,
    args: *mut [usize; 3],
) -> Outcome {
    // SAFETY: the contract above; `args[1] >= 1`.
    unsafe {
        section!(F, at, [
            "mov {c}, qword ptr [{count}]",
            "mov {len}, qword ptr [{args}]",
            "sub {len}, {c}",
            "jbe {cmpfail}",
            exit_point!("cmpfail"),
            "cmp {len}, qword ptr [{args} + 8]",
            "cmova {len}, qword ptr [{args} + 8]",
            "mov qword ptr [{args} + 16], {len}",
            ".if {fe}",
            "mov {t}, qword ptr [{args} + 8]",
            "sub {t}, {len}",
            "imul {t}, {t}, {size}",
            "add {src}, {t}",
            ".endif",
            "imul {dst}, {c}, {size}",
            "lea {dst}, [{count} + {dst} + 8]",
            "add {c}, {len}",
            "imul {len}, {len}, {size}",
            copy_bytes!(),
            point!(4),
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, args = in(reg) args, src = inout(reg) src => _, c = out(reg) _,
            len = out(reg) _, dst = out(reg) _, t = out(reg) _, x = out(xmm_reg) _, x1 = out(xmm_reg) _, x2 = out(xmm_reg) _, x3 = out(xmm_reg) _,
            size = const core::mem::size_of::<T>(), fe = const FROM_END as usize,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Ring pop of up to `args[0] >= 1` `T`s, the last ones, to `dst` in the order they were pushed:
/// `c = *count; if c == 0 { CompareFailed /* empty */ }; k = min(max, c); args[1] = k; copy
/// items[c - k ..c]; *count = c - k`.
#[inline(always)]
pub(crate) unsafe fn ring_pop_many<F: Field, T>(
    at: At,
    count: *mut usize,
    dst: *mut T,
    args: *mut [usize; 2],
) -> Outcome {
    // SAFETY: the contract above; `args[0] >= 1`.
    unsafe {
        section!(F, at, [
            "mov {c}, qword ptr [{count}]",
            "test {c}, {c}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "mov {len}, qword ptr [{args}]",
            "cmp {len}, {c}",
            "cmova {len}, {c}",
            "mov qword ptr [{args} + 8], {len}",
            "sub {c}, {len}",
            "imul {src}, {c}, {size}",
            "lea {src}, [{count} + {src} + 8]",
            "imul {len}, {len}, {size}",
            copy_bytes!(),
            point!(4),
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, args = in(reg) args, dst = inout(reg) dst => _, c = out(reg) _,
            len = out(reg) _, src = out(reg) _, t = out(reg) _, x = out(xmm_reg) _, x1 = out(xmm_reg) _, x2 = out(xmm_reg) _, x3 = out(xmm_reg) _,
            size = const core::mem::size_of::<T>(),
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

// A `Stack`'s column (collections/stack.rs): three words, `top` (the address of the top item's
// slot, 0 when empty), `high` (the highest chunk, 0 when none) and `first` (the lowest chunk,
// meaningful while `high` is not 0). A chunk (`Chunk::<T>::BYTES` bytes, aligned to its size) is
// `down` (0 for the lowest), `up` (meaningful while the chunk is not `high`), `depth` (1 for the
// lowest), then `ITEMS` slots from `HDR`, `STRIDE` bytes apart (the last at `LAST`): masking a
// slot's address gives its chunk. The slots above `top` up to the end of `high` are free. Every
// section below reads what it needs inside the section and commits one word.

/// The first free slot of a `Stack`'s column into `{t}` (scratch `{o}`): the slot above `top`
/// in its chunk, else the first slot of the chunk above (`{cmpfail}` if `top`'s chunk is
/// `high`), else (empty) `first`'s first slot (`{cmpfail}` if there is no chunk). Ends at label
/// 24 (a push loop jumps back there); uses labels 22 and 23.
macro_rules! stack_free_slot {
    () => {
        concat!(
            "mov {t}, qword ptr [{col}]\n",
            "test {t}, {t}\n",
            "jz 22f\n",
            "mov {o}, {t}\n",
            "and {o}, {mask}\n",
            "cmp {o}, {last}\n",
            "je 23f\n",
            "add {t}, {stride}\n",
            "jmp 24f\n",
            "22:\n",
            "cmp qword ptr [{col} + 8], 0\n",
            "je {cmpfail}\n",
            exit_point!("cmpfail"),
            "\n",
            "mov {t}, qword ptr [{col} + 16]\n",
            "add {t}, {hdr}\n",
            "jmp 24f\n",
            "23:\n",
            "sub {t}, {o}\n",
            "cmp {t}, qword ptr [{col} + 8]\n",
            "je {cmpfail}\n",
            "mov {t}, qword ptr [{t} + 8]\n",
            "add {t}, {hdr}\n",
            "24:",
        )
    };
}

/// Stack push: `t = top`; the next slot is `t + STRIDE` inside `t`'s chunk, else the first slot
/// of the chunk above (`CompareFailed` if `t`'s chunk is `high`), else (empty) `first`'s first
/// slot (`CompareFailed` if there is no chunk); `*slot = *src; top = slot`.
#[inline(always)]
pub(crate) unsafe fn stack_push<F: Field, T>(at: At, col: *mut usize, src: *const T) -> Outcome {
    // SAFETY: the contract above, and the column's chunks are readable.
    unsafe {
        section!(F, at, [
            stack_free_slot!(),
            copy_item!("{src}", "{t}", "o", "o"),
            point!(4),
            point!(5),
            "mov qword ptr [{col}], {t}",
        ], [
            col = in(reg) col, src = in(reg) src, t = out(reg) _, o = out(reg) _, x = out(xmm_reg) _,
            mask = const super::Chunk::<T>::MASK, last = const super::Chunk::<T>::LAST,
            hdr = const super::Chunk::<T>::HDR, stride = const super::Chunk::<T>::STRIDE,
            chunks = const core::mem::size_of::<T>() / 16, rem = const core::mem::size_of::<T>() % 16,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Stack pop: `t = top; if t == 0 { CompareFailed /* empty */ }; *dst = *t`; `top` becomes the
/// slot below (`t - STRIDE`, or the last slot of the chunk below, or 0); when `t` was its chunk's
/// first slot, `*free = high.depth - chunk.depth` (the chunks above it, all free) is written too.
/// `*dst` and `*free` are written before the commit.
#[inline(always)]
pub(crate) unsafe fn stack_pop<F: Field, T>(at: At, col: *mut usize, dst: *mut T, free: *mut usize) -> Outcome {
    // SAFETY: the contract above, and the column's chunks are readable.
    unsafe {
        section!(F, at, [
            "mov {t}, qword ptr [{col}]",
            "test {t}, {t}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            copy_item!("{t}", "{dst}", "o", "o"),
            "mov {o}, {t}",
            "and {o}, {mask}",
            "cmp {o}, {hdr}",
            "je 22f",
            "sub {t}, {stride}",
            "jmp 24f",
            "22:",
            "sub {t}, {o}",
            "mov {o}, qword ptr [{col} + 8]",
            "mov {o}, qword ptr [{o} + 16]",
            "sub {o}, qword ptr [{t} + 16]",
            "mov qword ptr [{free}], {o}",
            "mov {t}, qword ptr [{t}]",
            "test {t}, {t}",
            "jz 24f",
            "add {t}, {last}",
            "24:",
            point!(4),
            point!(5),
            "mov qword ptr [{col}], {t}",
        ], [
            col = in(reg) col, dst = in(reg) dst, free = in(reg) free, t = out(reg) _, o = out(reg) _,
            x = out(xmm_reg) _,
            mask = const super::Chunk::<T>::MASK, last = const super::Chunk::<T>::LAST,
            hdr = const super::Chunk::<T>::HDR, stride = const super::Chunk::<T>::STRIDE,
            chunks = const core::mem::size_of::<T>() / 16, rem = const core::mem::size_of::<T>() % 16,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Stack attach of the private chunk `chunk` (its `up` 0): only when the column has no free slot
/// (empty with no chunk, or `top` at the last slot of `high`), else `CompareFailed`;
/// `chunk.down = h; chunk.depth = (h ? h.depth : 0) + 1; (h ? h.up : first) = chunk; high =
/// chunk`. The store to `h.up` (or `first`) before the commit is harmless if the section aborts:
/// that word means nothing while `h` is `high`.
#[inline(always)]
pub(crate) unsafe fn stack_attach<F: Field, T>(at: At, col: *mut usize, chunk: usize) -> Outcome {
    // SAFETY: the contract above; `chunk` is private to the caller until the commit.
    unsafe {
        section!(F, at, [
            "mov {t}, qword ptr [{col}]",
            "mov {h}, qword ptr [{col} + 8]",
            "test {t}, {t}",
            "jz 22f",
            "mov {d}, {t}",
            "and {d}, {mask}",
            "cmp {d}, {last}",
            "jne {cmpfail}",
            exit_point!("cmpfail"),
            "sub {t}, {d}",
            "cmp {t}, {h}",
            "jne {cmpfail}",
            "jmp 23f",
            "22:",
            "test {h}, {h}",
            "jnz {cmpfail}",
            "23:",
            "mov qword ptr [{chunk}], {h}",
            "xor {d:e}, {d:e}",
            "lea {t}, [{col} + 8]",
            "test {h}, {h}",
            "jz 24f",
            "mov {d}, qword ptr [{h} + 16]",
            "mov {t}, {h}",
            "24:",
            "add {d}, 1",
            "mov qword ptr [{chunk} + 16], {d}",
            "mov qword ptr [{t} + 8], {chunk}",
            point!(4),
            point!(5),
            "mov qword ptr [{col} + 8], {chunk}",
        ], [
            col = in(reg) col, chunk = in(reg) chunk, t = out(reg) _, h = out(reg) _, d = out(reg) _,
            mask = const super::Chunk::<T>::MASK, last = const super::Chunk::<T>::LAST,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Stack trim: `h = high; d = top ? chunk(top).depth : 0; if h == 0 || h.depth - d <= keep {
/// CompareFailed }; *out = h; high = h.down` (the highest chunk, free, is detached: the caller
/// owns it after the commit).
#[inline(always)]
pub(crate) unsafe fn stack_trim<F: Field, T>(at: At, col: *mut usize, keep: usize, out: *mut usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "mov {h}, qword ptr [{col} + 8]",
            "test {h}, {h}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "mov {d}, qword ptr [{h} + 16]",
            "mov {t}, qword ptr [{col}]",
            "test {t}, {t}",
            "jz 22f",
            "and {t}, -{bytes}",
            "sub {d}, qword ptr [{t} + 16]",
            "22:",
            "cmp {d}, {keep}",
            "jbe {cmpfail}",
            "mov qword ptr [{out}], {h}",
            "mov {h}, qword ptr [{h}]",
            point!(4),
            point!(5),
            "mov qword ptr [{col} + 8], {h}",
        ], [
            col = in(reg) col, keep = in(reg) keep, out = in(reg) out, t = out(reg) _, h = out(reg) _,
            d = out(reg) _, bytes = const super::Chunk::<T>::BYTES,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Stack push of up to `args[0] >= 1` items from `src` (in order: the last one ends on top), as
/// many as there are free slots: `CompareFailed` if there is none; `args[1]` = how many were not
/// pushed; `top` = the last slot filled.
#[inline(always)]
pub(crate) unsafe fn stack_push_many<F: Field, T>(
    at: At,
    col: *mut usize,
    src: *const T,
    args: *mut [usize; 2],
) -> Outcome {
    // SAFETY: the contract above, as for `stack_push`; `args[0] >= 1`.
    unsafe {
        section!(F, at, [
            "mov {k}, qword ptr [{args}]",
            stack_free_slot!(),
            copy_item!("{s}", "{t}", "o", "o"),
            "add {s}, {size}",
            "sub {k}, 1",
            "jz 4f",
            "mov {o}, {t}",
            "and {o}, {mask}",
            "cmp {o}, {last}",
            "je 2f",
            "add {t}, {stride}",
            "jmp 24b",
            "2:",
            "mov {c}, {t}",
            "sub {c}, {o}",
            "cmp {c}, qword ptr [{col} + 8]",
            "je 4f",
            "mov {t}, qword ptr [{c} + 8]",
            "add {t}, {hdr}",
            "jmp 24b",
            "4:",
            "mov qword ptr [{args} + 8], {k}",
            point!(4),
            point!(5),
            "mov qword ptr [{col}], {t}",
        ], [
            col = in(reg) col, s = inout(reg) src => _, args = in(reg) args, k = out(reg) _,
            t = out(reg) _, o = out(reg) _, c = out(reg) _, x = out(xmm_reg) _,
            mask = const super::Chunk::<T>::MASK, last = const super::Chunk::<T>::LAST,
            hdr = const super::Chunk::<T>::HDR, stride = const super::Chunk::<T>::STRIDE,
            size = const core::mem::size_of::<T>(),
            chunks = const core::mem::size_of::<T>() / 16, rem = const core::mem::size_of::<T>() % 16,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Stack pop of up to `args[0] >= 1` items to `dst`, the top first: `CompareFailed` if empty;
/// `args[1]` = how many were not popped; `args[2]` = `high.depth - depth` of the lowest chunk
/// left behind empty, if any (as in `stack_pop`); `top` = the slot below the last one popped.
#[inline(always)]
pub(crate) unsafe fn stack_pop_many<F: Field, T>(
    at: At,
    col: *mut usize,
    dst: *mut T,
    args: *mut [usize; 3],
) -> Outcome {
    // SAFETY: the contract above, as for `stack_pop`; `args[0] >= 1`.
    unsafe {
        section!(F, at, [
            "mov {k}, qword ptr [{args}]",
            "mov {t}, qword ptr [{col}]",
            "test {t}, {t}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "24:",
            copy_item!("{t}", "{d}", "o", "o"),
            "add {d}, {size}",
            "sub {k}, 1",
            "mov {o}, {t}",
            "and {o}, {mask}",
            "cmp {o}, {hdr}",
            "je 22f",
            "sub {t}, {stride}",
            "test {k}, {k}",
            "jnz 24b",
            "jmp 4f",
            "22:",
            "sub {t}, {o}",
            "mov {o}, qword ptr [{col} + 8]",
            "mov {o}, qword ptr [{o} + 16]",
            "sub {o}, qword ptr [{t} + 16]",
            "mov qword ptr [{args} + 16], {o}",
            "mov {t}, qword ptr [{t}]",
            "test {t}, {t}",
            "jz 4f",
            "add {t}, {last}",
            "test {k}, {k}",
            "jnz 24b",
            "4:",
            "mov qword ptr [{args} + 8], {k}",
            point!(4),
            point!(5),
            "mov qword ptr [{col}], {t}",
        ], [
            col = in(reg) col, d = inout(reg) dst => _, args = in(reg) args, k = out(reg) _,
            t = out(reg) _, o = out(reg) _, x = out(xmm_reg) _,
            mask = const super::Chunk::<T>::MASK, last = const super::Chunk::<T>::LAST,
            hdr = const super::Chunk::<T>::HDR, stride = const super::Chunk::<T>::STRIDE,
            size = const core::mem::size_of::<T>(),
            chunks = const core::mem::size_of::<T>() / 16, rem = const core::mem::size_of::<T>() % 16,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Allocator cache pop (`alloc::PerCpuAlloc`): `w = *word; c = w & 0xffff; if c == 0 {
/// CompareFailed /* empty */ }; *out = items[c - 1]; *word = w - 1 + (1 << 16)`: the items are
/// words right after `word`, whose low 16 bits count them and whose upper 48 bits count the pops
/// (cache hits). The commit is one memory-destination add; `*out` is written before it.
#[inline(always)]
pub(crate) unsafe fn cache_pop<F: Field>(at: At, word: *mut usize, out: *mut usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "movzx {c:e}, word ptr [{word}]",
            "test {c:e}, {c:e}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "mov {t}, qword ptr [{word} + {c} * 8]",
            "mov qword ptr [{out}], {t}",
            point!(4),
            point!(5),
            "add qword ptr [{word}], 0xffff",
        ], [
            word = in(reg) word, out = in(reg) out, c = out(reg) _, t = out(reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Allocator cache push: `c = *word & 0xffff; if c >= cap { CompareFailed /* full */ };
/// items[c] = value; *word += 1` (the layout of [`cache_pop`]; the commit is one add).
#[inline(always)]
pub(crate) unsafe fn cache_push<F: Field>(at: At, word: *mut usize, cap: usize, value: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "movzx {c:e}, word ptr [{word}]",
            "cmp {c}, {cap}",
            "jae {cmpfail}",
            exit_point!("cmpfail"),
            "mov qword ptr [{word} + {c} * 8 + 8], {value}",
            point!(4),
            point!(5),
            "add qword ptr [{word}], 1",
        ], [
            word = in(reg) word, cap = in(reg) cap, value = in(reg) value, c = out(reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `if *v != expect || *v2 != expect2 { CompareFailed }; *v = new`
#[inline(always)]
pub(crate) unsafe fn cbne_cbne_store<F: Field>(
    at: At,
    v: *mut usize,
    expect: usize,
    v2: *mut usize,
    expect2: usize,
    new: usize,
) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            exit_point!("cmpfail"),
            point!(4),
            "cmp qword ptr [{v2}], {expect2}",
            "jne {cmpfail}",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, v2 = in(reg) v2, expect2 = in(reg) expect2,
            new = in(reg) new, cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `if *v != expect { CompareFailed }; *v2 = new2; *v = new` (the last store commits; a release
/// store is the same `mov` on x86_64).
#[inline(always)]
pub(crate) unsafe fn cbne_store_store<F: Field>(
    at: At,
    v: *mut usize,
    expect: usize,
    v2: *mut usize,
    new2: usize,
    new: usize,
) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            exit_point!("cmpfail"),
            point!(4),
            "mov qword ptr [{v2}], {new2}",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, v2 = in(reg) v2, new2 = in(reg) new2,
            new = in(reg) new, cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `if *v != expect { CompareFailed }; copy len bytes src -> dst; *v = new` (eight bytes at a
/// time, then the tail byte by byte; a release store is the same `mov` on x86_64).
#[inline(always)]
pub(crate) unsafe fn cbne_memcpy_store<F: Field>(
    at: At,
    v: *mut usize,
    expect: usize,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    new: usize,
) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F, at, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            exit_point!("cmpfail"),
            copy_bytes!(),
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, new = in(reg) new,
            dst = inout(reg) dst => _, src = inout(reg) src => _, len = inout(reg) len => _,
            t = out(reg) _, x = out(xmm_reg) _, x1 = out(xmm_reg) _, x2 = out(xmm_reg) _, x3 = out(xmm_reg) _, cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `*v += count` without the guard check: exists only so that benchmarks can measure what the
/// guard check costs, side by side. Never used by the library.
#[inline(always)]
pub(crate) unsafe fn add_unguarded<F: Field>(at: At, v: *mut usize, count: usize) -> Outcome {
    // SAFETY: the contract above (no guard word is read).
    unsafe {
        section!(@unguarded F, at, [
            "add qword ptr [{v}], {count}",
        ], [
            v = in(reg) v, count = in(reg) count,
        ]);
    }
    Outcome::Committed
}
