//! # restartable
//!
//! Per-CPU data for Linux user space without atomics, built on the kernel's restartable
//! sequences (rseq), with a user-space CPU op vector as the slow path and membarrier's rseq
//! fence, so that every operation always makes progress. See `DESIGN.md` for the architecture.
//!
//! Layers, lowest first: [`abi`] (kernel structures), [`sys`] (system calls), registration
//! ([`status`]), the current CPU ([`current_cpu`]), the critical sections (private `arch`) and
//! the op set ([`ops`]).

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
