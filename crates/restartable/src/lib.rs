//! # restartable
//!
//! Per-CPU data for Linux user space without atomic read-modify-write instructions, built on
//! the kernel's restartable sequences (rseq), with a user-space CPU op vector as the slow path and
//! membarrier's rseq fence, so that every operation always makes progress: under a debugger,
//! under valgrind, without rseq at all.
//!
//! ```
//! use restartable::Counter;
//!
//! let requests = Counter::new();
//! requests.add(1); // one rseq critical section on the current CPU's slot
//! assert_eq!(requests.sum(), 1);
//! ```
//!
//! Most users want the [`collections`]: [`Counter`], [`SpinLock`], [`Stack`], [`Buffer`],
//! [`MemcpyBuffer`] and [`RwLock`], all safe. Below them, lowest first (each layer uses only those above it in
//! this list):
//!
//! - [`abi`]: the kernel's `struct rseq` / `struct rseq_cs` and constants;
//! - [`sys`]: rseq(2), membarrier(2), the auxiliary vector, CPU counts;
//! - `arch` (private): the only architecture-specific code: critical sections, the thread
//!   pointer, static TLS; one module per architecture and a portable one without fast paths;
//! - registration: each thread's rseq area is glibc's, our own, or none ([`registration`],
//!   [`status`]); the process [`Mode`] is fast or degraded, decided once ([`mode`]);
//! - [`current_cpu`], [`current_mm_cid`], [`current_node`] and the index modes
//!   ([`Cpu`](ops::Cpu), [`MmCid`](ops::MmCid));
//! - [`guard`]: guard words and the membarrier rseq fence: how an index is stopped, and the rules
//!   that keep the slow path safe (signal handlers, allocators, fork);
//! - [`ops`]: the op set, one `asm!` critical section each, on the process-wide guards;
//! - [`opv`]: [`OpVec`](opv::OpVec), the user-space CPU op vector run on a stopped CPU;
//! - [`pool`] and [`PerCpu`]: the strided per-CPU memory pool and one `T` per CPU in it;
//! - [`retry`]: the driver that runs an op's fast path and falls back to its slow path, for
//!   raw ops and for every collection.
//!
//! On top of the collections, [`alloc::PerCpuAlloc`] puts per-CPU caches of small blocks in
//! front of any global allocator (tcmalloc's design, on rseq and the guard).
//!
//! # Kinds of binaries
//!
//! Dynamic and static executables and `cdylib`s all run fast paths. glibc's rseq area is found
//! through weak references to `__rseq_offset` / `__rseq_size` (resolved at link time in a static
//! binary, where `dlsym` sees nothing); without glibc's registration each thread registers the
//! library's own area, in static TLS. A library built on this crate and loaded with `dlopen` is
//! never unmapped: an ELF constructor pins the object that contains it
//! (`dlopen(self, RTLD_NOLOAD | RTLD_NODELETE)`), because a thread's `rseq_cs` keeps naming the
//! last descriptor it used until the kernel clears it lazily, reading the descriptor first, and a
//! descriptor unmapped by `dlclose` would make the kernel kill the process with `SIGSEGV`.
//! Clearing every thread's `rseq_cs` at unload instead would mean writing other threads' areas
//! while they may be inside a section; pinning cannot miss a thread. (`crates/ffi-demo` in the
//! repository proves it from a C host.)
//!
//! With the `inject` feature, delay loops are compiled into every critical section at numbered
//! points (the `inject` module), for tests and `restartable stress`; normal builds have none.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
pub mod alloc;
mod arch;
pub mod collections;
mod cpu;
pub mod guard;
#[cfg(feature = "inject")]
pub mod inject;
pub mod ops;
pub mod opv;
mod percpu;
pub mod pool;
pub mod retry;
mod status;
pub mod sys;
mod thread;

// With `--features global-percpu-alloc` the unit tests' global allocator is `PerCpuAlloc`.
#[cfg(all(test, feature = "global-percpu-alloc"))]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: alloc::PerCpuAlloc = alloc::PerCpuAlloc::new(std::alloc::System);

pub use collections::{
    Buffer, Counter, MemcpyBuffer, RwLock, RwLockReadGuard, RwLockWriteGuard, SpinLock, SpinLockGuard, Stack,
};
pub use cpu::{current_cpu, current_mm_cid, current_node};
pub use percpu::PerCpu;
pub use status::{Status, status};
pub use sys::possible_cpus;
pub use thread::{
    Degraded, FORCE_DEGRADED_ENV, Mode, Registration, Unavailable, mode, own_registrations, registration,
};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
