//! The kernel's rseq ABI for x86_64, as `include/uapi/linux/rseq.h` defines it.
//!
//! Nothing here calls the kernel; the layouts are checked at compile time, field by field. The
//! membarrier(2) commands are rustix's `MembarrierCommand` / `MembarrierQuery`, and system call
//! numbers are the `libc` crate's.

use core::mem::{align_of, offset_of, size_of};

/// `struct rseq`: the per-thread area the kernel updates on every return to user space.
///
/// Only the first 32 bytes (the original ABI size) are described here. Newer kernels add fields
/// after `mm_cid` (`slice_ctrl` at 28 on 7.x); the registered length and alignment come from the
/// auxiliary vector (`AT_RSEQ_FEATURE_SIZE`, `AT_RSEQ_ALIGN`), never from this type's size.
///
/// `cpu_id_start`, `cpu_id`, `node_id` and `mm_cid` belong to the kernel: user space only reads
/// them. `rseq_cs` is the only field user space writes.
#[repr(C, align(32))]
#[derive(Debug, Default)]
pub struct Rseq {
    /// CPU number, always valid once registered (0 before).
    pub cpu_id_start: u32,
    /// CPU number, or [`CPU_ID_UNINITIALIZED`] / [`CPU_ID_REGISTRATION_FAILED`].
    pub cpu_id: u32,
    /// Address of the active [`RseqCs`] descriptor, or 0.
    pub rseq_cs: u64,
    /// Deprecated per-thread flags; always 0.
    pub flags: u32,
    /// NUMA node of `cpu_id` (kernel 6.3+, when the registered length covers it).
    pub node_id: u32,
    /// Memory-map concurrency id (kernel 6.3+, when the registered length covers it).
    pub mm_cid: u32,
    /// Padding up to the original 32-byte size (`slice_ctrl` on 7.x kernels: not ours to touch).
    pub reserved: u32,
}

/// `struct rseq_cs`: the descriptor of one critical section.
#[repr(C, align(32))]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqCs {
    /// Always 0.
    pub version: u32,
    /// Always 0.
    pub flags: u32,
    /// First instruction of the section.
    pub start_ip: u64,
    /// Length of the section: the commit store is its last instruction.
    pub post_commit_offset: u64,
    /// Where the kernel sends a restarted section; preceded by [`RSEQ_SIG`].
    pub abort_ip: u64,
}

const _: () = {
    assert!(size_of::<Rseq>() == 32);
    assert!(align_of::<Rseq>() == 32);
    assert!(offset_of!(Rseq, cpu_id_start) == 0);
    assert!(offset_of!(Rseq, cpu_id) == 4);
    assert!(offset_of!(Rseq, rseq_cs) == 8);
    assert!(offset_of!(Rseq, flags) == 16);
    assert!(offset_of!(Rseq, node_id) == 20);
    assert!(offset_of!(Rseq, mm_cid) == 24);
    assert!(offset_of!(Rseq, reserved) == 28);
    assert!(size_of::<RseqCs>() == 32);
    assert!(align_of::<RseqCs>() == 32);
    assert!(offset_of!(RseqCs, version) == 0);
    assert!(offset_of!(RseqCs, flags) == 4);
    assert!(offset_of!(RseqCs, start_ip) == 8);
    assert!(offset_of!(RseqCs, post_commit_offset) == 16);
    assert!(offset_of!(RseqCs, abort_ip) == 24);
    assert!(OFFSET_CPU_ID == 4 && OFFSET_RSEQ_CS == 8 && OFFSET_NODE_ID == 20);
    assert!(OFFSET_MM_CID == 24);
};

/// Offset of `cpu_id_start`: always a possible CPU number, even before registration (0).
pub const OFFSET_CPU_ID_START: usize = offset_of!(Rseq, cpu_id_start);
/// Offset of `cpu_id` (used by the assembly).
pub const OFFSET_CPU_ID: usize = offset_of!(Rseq, cpu_id);
/// Offset of `rseq_cs` (used by the assembly).
pub const OFFSET_RSEQ_CS: usize = offset_of!(Rseq, rseq_cs);
/// Offset of `node_id`; the kernel fills it only when the registered length exceeds it.
pub const OFFSET_NODE_ID: usize = offset_of!(Rseq, node_id);
/// Offset of `mm_cid`; the kernel fills it only when the registered length exceeds it.
pub const OFFSET_MM_CID: usize = offset_of!(Rseq, mm_cid);

/// The original (and minimum) registration length.
pub const RSEQ_ORIG_SIZE: usize = 32;
/// The signature on x86_64; glibc uses the same value, and all users of one area must agree.
pub const RSEQ_SIG: u32 = 0x5305_3053;
/// `rseq(2)` flag: unregister the area.
pub const RSEQ_FLAG_UNREGISTER: i32 = 1;
/// `cpu_id` before registration.
pub const CPU_ID_UNINITIALIZED: u32 = -1i32 as u32;
/// `cpu_id` after a failed registration (glibc writes it).
pub const CPU_ID_REGISTRATION_FAILED: u32 = -2i32 as u32;

/// `getauxval` key: the rseq feature size the kernel supports.
pub const AT_RSEQ_FEATURE_SIZE: u64 = 27;
/// `getauxval` key: the alignment the kernel wants for the area.
pub const AT_RSEQ_ALIGN: u64 = 28;

/// The largest number of CPUs (and so of concurrency ids) the library supports: the kernel's
/// `NR_CPUS` limit on x86_64 (`CONFIG_MAXSMP`).
pub const MAX_CPUS: usize = 8192;
