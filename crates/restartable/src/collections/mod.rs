//! Safe per-CPU collections: no raw pointers and no `unsafe` in their API.
//!
//! Each uses the [retry driver](crate::retry): rseq fast paths on the current CPU, the guard
//! for everything else, so every call completes under a debugger, under valgrind and without
//! rseq. Remote operations (`take`, `drain_*`, `lock_cpu`) always go through the guard.
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
mod spinlock;
mod stack;

pub use buffer::Buffer;
pub use counter::Counter;
pub use memcpy::{MAX_ITEM, MemcpyBuffer};
pub use spinlock::{SpinLock, SpinLockGuard};
pub use stack::Stack;
