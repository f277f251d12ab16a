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
//! Most users want the [`collections`]: [`Counter`], [`SpinLock`], [`Stack`], [`Buffer`] and
//! [`MemcpyBuffer`], all safe. Below them, lowest first:
//!
//! - [`abi`]: the kernel's `struct rseq` / `struct rseq_cs` and constants;
//! - [`sys`]: rseq(2), membarrier(2), the auxiliary vector, CPU counts;
//! - registration: each thread's rseq area is glibc's, our own, or none ([`registration`],
//!   [`status`]); the process [`Mode`] is fast or degraded, decided once ([`mode`]);
//! - [`current_cpu`], [`current_mm_cid`], [`current_node`];
//! - [`ops`]: the op set, one `asm!` critical section each (in the private `arch` module);
//! - [`guard`]: per-CPU guard words and the membarrier rseq fence: how a CPU is stopped;
//! - [`opv`]: [`OpVec`](opv::OpVec), the user-space CPU op vector run on a stopped CPU;
//! - [`retry`]: the driver that runs an op's fast path and falls back to its slow path;
//! - [`PerCpu`]: one cache-padded slot per possible CPU.
//!
//! With the `inject` feature, delay loops are compiled into every critical section at numbered
//! points (the `inject` module), for tests and `restartable stress`; normal builds have none.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
mod arch;
pub mod collections;
mod cpu;
pub mod guard;
pub mod ops;
pub mod opv;
mod percpu;
pub mod retry;
mod status;
pub mod sys;
mod thread;

#[cfg(feature = "inject")]
pub use arch::inject;
pub use collections::{Buffer, Counter, MemcpyBuffer, SpinLock, SpinLockGuard, Stack};
pub use cpu::{current_cpu, current_mm_cid, current_node};
pub use percpu::PerCpu;
pub use status::{Status, status};
pub use sys::possible_cpus;
pub use thread::{Degraded, Mode, Registration, Unavailable, live_own_areas, mode, registration};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
