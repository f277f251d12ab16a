//! Safe per-CPU collections: no raw pointers and no `unsafe` in their API.
//!
//! Each goes through the [driver](crate::retry): rseq fast paths on the current CPU, its own
//! guard words for everything else, so every call completes under a debugger, under valgrind
//! and without rseq. Remote operations (`take`, `drain_*`, `lock_cpu`) always go through the
//! guard. Their memory is in the strided per-CPU [pool](crate::pool).
//!
//! Every type is `Send` and `Sync` exactly when its items may move between threads:
//!
//! ```compile_fail
//! fn sync<T: Sync>() {}
//! sync::<restartable::Stack<std::rc::Rc<u8>>>(); // an Rc must not change threads
//! ```
//!
//! ```compile_fail
//! fn send<T: Send>() {}
//! send::<restartable::SpinLock<std::rc::Rc<u8>>>();
//! ```
//!
//! ```compile_fail
//! fn sync<T: Sync>() {}
//! sync::<restartable::Buffer<std::rc::Rc<u8>>>();
//! ```

mod buffer;
mod counter;
mod memcpy;
mod ring;
mod spinlock;
mod stack;

pub use buffer::Buffer;
pub use counter::Counter;
pub use memcpy::{MAX_ITEM, MemcpyBuffer};
pub use spinlock::{SpinLock, SpinLockGuard};
pub use stack::{DEFAULT_CHUNK_CACHE, Stack};

pub(crate) use crate::percpu::drop_all;

use crate::guard::GuardError;

/// Drain every CPU with `drain_cpu` into one `Vec`. A CPU the calling thread could only wait for
/// (it holds a guard: a signal handler) is left as it is.
///
/// # Panics
/// If the membarrier fence fails (only possible if a seccomp filter installed later forbids
/// membarrier): `what` names the collection in the message.
pub(crate) fn drain_every<T>(what: &str, drain_cpu: impl Fn(usize) -> Result<Vec<T>, GuardError>) -> Vec<T> {
    let mut out = Vec::new();
    for cpu in 0..crate::guard::limit() {
        match drain_cpu(cpu) {
            Ok(items) if out.is_empty() => out = items,
            Ok(items) => out.extend(items),
            Err(GuardError::Busy { .. }) => {}
            Err(e) => panic!("{what}::drain_all: {e}"),
        }
    }
    out
}
