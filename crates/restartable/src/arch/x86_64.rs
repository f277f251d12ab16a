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

/// The index field of mode `F` ([`Field::CURSOR`]) of the area at `offset` from the thread
/// pointer, read once.
///
/// # Safety
/// As [`read_tp_u32`], for that field.
#[inline(always)]
pub(crate) unsafe fn read_tp_cursor<F: Field>(offset: isize) -> u32 {
    let v: u32;
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "mov {v:e}, dword ptr fs:[{o} + {f}]",
            o = in(reg) offset,
            f = const F::CURSOR,
            v = out(reg) v,
            options(nostack, readonly, preserves_flags),
        );
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

/// One critical section on `$at` with the index field `$field`. `$check` is the guard check
/// (only the benchmark-only unguarded op replaces it, with a comment naming the operands).
macro_rules! section {
    ($field:expr, $at:expr, [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        section!(@checked $field, $at, ["cmp dword ptr [{guard}], 0", "jne {stopped}"], [$($body),*],
            [guard = in(reg) $at.guard, $($operands)*] [] [])
    };
    (@checked $field:expr, $at:expr, [$($check:expr),*], [$($body:expr),* $(,)?], [$($operands:tt)*]) => {
        section!(@checked $field, $at, [$($check),*], [$($body),*], [guard = in(reg) $at.guard, $($operands)*] [] [])
    };
    // (With `[] []` after the operands: the caller declares every operand its check uses.)
    // `$prologue` runs before the descriptor store (outside the section), with `$more` operands.
    (@checked $field:expr, $at:expr, [$($check:expr),*], [$($body:expr),* $(,)?], [$($operands:tt)*] [$($prologue:expr),* $(,)?] [$($more:tt)*]) => {
        inject_operand!(
            $($prologue,)*
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
            "cmp dword ptr fs:[{area} + {field}], {index:e}",
            "jne {abort}",
            point!(2),
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
            field = const $field,
            rseq_cs = const abi::OFFSET_RSEQ_CS,
            sig = const abi::RSEQ_SIG,
            cs = out(reg) _,
            abort = label { return Outcome::Aborted },
            stopped = label { return Outcome::Stopped },
            $($operands)*
            $($more)*
            options(nostack),
        )
    };
}

// Every section function below has the same contract:
//
// # Safety
// `at.area` is the offset of the calling thread's registered rseq area from its thread pointer,
// and `F::FIELD` the offset of `cpu_id` or `mm_cid` in it; `at.guard` points to the guard word of `at.index` for the data; every other
// pointer is valid for the accesses the pseudo-code makes, and every location the section
// stores to is accessed by others only atomically, or through critical sections on the same
// index, or under that index's guard.

/// `if *v != expect { CompareFailed }; *v = new`
#[inline(always)]
pub(crate) unsafe fn cbne_store<F: Field>(at: At, v: *mut usize, expect: usize, new: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
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
        section!(F::FIELD, at, [
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
        section!(@checked F::FIELD, at, [
            "cmp dword ptr [{base} + {offset}], 0", "jne {stopped}"
        ], [
            point!(4),
            point!(5),
            "add qword ptr [{base} + {offset} + {value}], {count}",
        ], [
            base = in(reg) base, offset = in(reg) offset, value = const VALUE, count = in(reg) count,
        ] [] []);
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
        section!(F::FIELD, at, [
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
        section!(F::FIELD, at, [
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

/// `r = *v; n = 0; while r != 0 && n < max { r = *(r + off); n += 1 }; *out_first = *v;
/// *out_n = n; *v = r` — unlink up to `max` nodes from the front of a list in one section
/// (batch pop). `*out_first` and `*out_n` are written before the commit (also when the section
/// then aborts).
#[inline(always)]
pub(crate) unsafe fn walk_pop<F: Field>(
    at: At,
    v: *mut usize,
    max: usize,
    off: usize,
    out_first: *mut usize,
    out_n: *mut usize,
) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
            "mov {r}, qword ptr [{v}]",
            "mov qword ptr [{out_first}], {r}",
            "xor {n:e}, {n:e}",
            "2:",
            "test {r}, {r}",
            "jz 3f",
            "cmp {n}, {max}",
            "jae 3f",
            point!(4),
            "mov {r}, qword ptr [{r} + {off}]",
            "inc {n}",
            "jmp 2b",
            "3:",
            "mov qword ptr [{out_n}], {n}",
            point!(5),
            "mov qword ptr [{v}], {r}",
        ], [
            v = in(reg) v, max = in(reg) max, off = in(reg) off, out_first = in(reg) out_first,
            out_n = in(reg) out_n, r = out(reg) _, n = out(reg) _,
        ]);
    }
    Outcome::Committed
}

/// `h = *head; *tail_next = h; *head = first` — list push of a private chain (`first` ..
/// the node whose `next` is `tail_next`; one node: `tail_next` is `first`'s own), all inside the
/// section: the chain is private until the commit publishes it, so nothing is compared.
#[inline(always)]
pub(crate) unsafe fn list_push<F: Field>(at: At, head: *mut usize, first: usize, tail_next: *mut usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
            "mov {h}, qword ptr [{head}]",
            point!(4),
            "mov qword ptr [{tail}], {h}",
            point!(5),
            "mov qword ptr [{head}], {first}",
        ], [
            head = in(reg) head, first = in(reg) first, tail = in(reg) tail_next, h = out(reg) _,
        ]);
    }
    Outcome::Committed
}

/// Ring push of one word: `c = *count; if c >= cap { CompareFailed /* full */ }; items[c] =
/// value; *count = c + 1`, the items (words) right after the count.
#[inline(always)]
pub(crate) unsafe fn ring_push_word<F: Field>(at: At, count: *mut usize, cap: usize, value: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
            "mov {c}, qword ptr [{count}]",
            "cmp {c}, {cap}",
            "jae {cmpfail}",
            exit_point!("cmpfail"),
            point!(4),
            "mov qword ptr [{count} + {c} * 8 + 8], {value}",
            "add {c}, 1",
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, cap = in(reg) cap, value = in(reg) value, c = out(reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Ring pop of one word: `c = *count; if c == 0 { CompareFailed /* empty */ }; *out =
/// items[c - 1]; *count = c - 1` (`*out` is written before the commit).
#[inline(always)]
pub(crate) unsafe fn ring_pop_word<F: Field>(at: At, count: *mut usize, out: *mut usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
            "mov {c}, qword ptr [{count}]",
            "test {c}, {c}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "sub {c}, 1",
            "mov {t}, qword ptr [{count} + {c} * 8 + 8]",
            "mov qword ptr [{out}], {t}",
            point!(4),
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, out = in(reg) out, c = out(reg) _, t = out(reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Ring push of one `size`-byte item: `c = *count; if c >= cap { CompareFailed /* full */ };
/// copy size bytes src -> items + c * size; *count = c + 1` (eight bytes at a time, then the tail).
#[inline(always)]
pub(crate) unsafe fn ring_push_bytes<F: Field>(
    at: At,
    count: *mut usize,
    cap: usize,
    src: *const u8,
    size: usize,
) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
            "mov {c}, qword ptr [{count}]",
            "cmp {c}, {cap}",
            "jae {cmpfail}",
            exit_point!("cmpfail"),
            "mov {d}, {c}",
            "imul {d}, {size}",
            "lea {d}, [{count} + {d} + 8]",
            "mov {n}, {size}",
            "2:",
            "cmp {n}, 8",
            "jb 3f",
            "mov {t}, qword ptr [{src}]",
            "mov qword ptr [{d}], {t}",
            "add {src}, 8",
            "add {d}, 8",
            "sub {n}, 8",
            "jmp 2b",
            "3:",
            "test {n}, {n}",
            "jz 4f",
            "mov {t:l}, byte ptr [{src}]",
            "mov byte ptr [{d}], {t:l}",
            "add {src}, 1",
            "add {d}, 1",
            "sub {n}, 1",
            "jmp 3b",
            "4:",
            point!(4),
            "add {c}, 1",
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, cap = in(reg) cap, size = in(reg) size, src = inout(reg) src => _,
            c = out(reg) _, d = out(reg) _, n = out(reg) _, t = out(reg) _,
            cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// Ring pop of one `size`-byte item: `c = *count; if c == 0 { CompareFailed /* empty */ };
/// copy size bytes items + (c - 1) * size -> dst; *count = c - 1` (`dst` is written before the
/// commit).
#[inline(always)]
pub(crate) unsafe fn ring_pop_bytes<F: Field>(at: At, count: *mut usize, dst: *mut u8, size: usize) -> Outcome {
    // SAFETY: the contract above.
    unsafe {
        section!(F::FIELD, at, [
            "mov {c}, qword ptr [{count}]",
            "test {c}, {c}",
            "jz {cmpfail}",
            exit_point!("cmpfail"),
            "sub {c}, 1",
            "mov {s}, {c}",
            "imul {s}, {size}",
            "lea {s}, [{count} + {s} + 8]",
            "mov {n}, {size}",
            "2:",
            "cmp {n}, 8",
            "jb 3f",
            "mov {t}, qword ptr [{s}]",
            "mov qword ptr [{dst}], {t}",
            "add {s}, 8",
            "add {dst}, 8",
            "sub {n}, 8",
            "jmp 2b",
            "3:",
            "test {n}, {n}",
            "jz 4f",
            "mov {t:l}, byte ptr [{s}]",
            "mov byte ptr [{dst}], {t:l}",
            "add {s}, 1",
            "add {dst}, 1",
            "sub {n}, 1",
            "jmp 3b",
            "4:",
            point!(4),
            point!(5),
            "mov qword ptr [{count}], {c}",
        ], [
            count = in(reg) count, size = in(reg) size, dst = inout(reg) dst => _,
            c = out(reg) _, s = out(reg) _, n = out(reg) _, t = out(reg) _,
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
        section!(F::FIELD, at, [
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
        section!(F::FIELD, at, [
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
        section!(F::FIELD, at, [
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
        section!(F::FIELD, at, [
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
        section!(F::FIELD, at, [
            "cmp qword ptr [{v}], {expect}",
            "jne {cmpfail}",
            exit_point!("cmpfail"),
            "cmp {len}, 8",
            "jb 3f",
            "2:",
            "mov {t}, qword ptr [{src}]",
            "mov qword ptr [{dst}], {t}",
            "add {src}, 8",
            "add {dst}, 8",
            "sub {len}, 8",
            "cmp {len}, 8",
            "jae 2b",
            "3:",
            "test {len}, {len}",
            "jz 4f",
            "mov {t:l}, byte ptr [{src}]",
            "mov byte ptr [{dst}], {t:l}",
            "inc {src}",
            "inc {dst}",
            "dec {len}",
            "jmp 3b",
            "4:",
            point!(5),
            "mov qword ptr [{v}], {new}",
        ], [
            v = in(reg) v, expect = in(reg) expect, new = in(reg) new,
            dst = inout(reg) dst => _, src = inout(reg) src => _, len = inout(reg) len => _,
            t = out(reg) _, cmpfail = label { return Outcome::CompareFailed },
        ]);
    }
    Outcome::Committed
}

/// `*v += count` without the guard check: exists only so that benchmarks can measure what the
/// guard check costs, side by side. Never used by the library.
#[inline(always)]
pub(crate) unsafe fn add_unguarded<F: Field>(at: At, v: *mut usize, count: usize) -> Outcome {
    // SAFETY: the contract above (the guard is named, not read).
    unsafe {
        section!(@checked F::FIELD, at, ["# unguarded: {guard} {stopped}"], [
            "add qword ptr [{v}], {count}",
        ], [
            v = in(reg) v, count = in(reg) count,
        ]);
    }
    Outcome::Committed
}
