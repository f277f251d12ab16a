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
pub use stack::Stack;

pub(crate) use crate::percpu::drop_all;
