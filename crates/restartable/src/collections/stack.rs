use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::guard::{self, GuardError};
use crate::ops::{self, Cpu, Index, Outcome};
use crate::percpu::PerCpu;
use crate::retry::{self, Path};

#[repr(C)]
struct Node<T> {
    /// The next node's address, or 0. At offset 0 (`load_cbeq_store_add_load_store` reads it).
    next: AtomicUsize,
    value: T,
}

/// A per-CPU stack (LIFO list) of `T`: `push` and `pop` work on the current CPU's list with one
/// rseq critical section each (no atomic read-modify-write); `drain_cpu` and `drain_all` empty
/// lists from any thread through the guard.
///
/// `pop` only looks at the current CPU's list: an item pushed on another CPU is not seen until
/// the thread runs there, or a drain collects it (this is what per-CPU caches want).
///
/// ```
/// use restartable::Stack;
///
/// let free: Stack<u32> = Stack::new();
/// free.push(1);
/// free.push(2);
/// let mut all = free.drain_all();
/// all.sort();
/// assert_eq!(all, [1, 2]);
/// assert_eq!(free.pop(), None);
/// ```
pub struct Stack<T, I: Index = Cpu> {
    heads: PerCpu<AtomicUsize, I>,
    _owns: core::marker::PhantomData<Box<Node<T>>>,
}

// SAFETY: the stack owns its items and hands each out to exactly one thread (by value).
unsafe impl<T: Send, I: Index> Send for Stack<T, I> {}
// SAFETY: all shared access goes through rseq sections or the guard; items move between
// threads only by value, so `T: Send` suffices.
unsafe impl<T: Send, I: Index> Sync for Stack<T, I> {}

impl<T, I: Index> Stack<T, I> {
    /// An empty stack.
    pub fn new() -> Self {
        Stack { heads: PerCpu::new(|_| AtomicUsize::new(0)), _owns: core::marker::PhantomData }
    }

    /// Push `value` on the current CPU's list.
    pub fn push(&self, value: T) {
        let node = Box::into_raw(Box::new(Node { next: AtomicUsize::new(0), value }));
        // SAFETY: `node` is ours until the commit publishes it.
        let next = unsafe { &(*node).next };
        loop {
            let path = retry::run::<I, ()>(
                |i| match self.heads.get(i) {
                    Some(head) => {
                        let h = head.load(Relaxed);
                        next.store(h, Relaxed);
                        // SAFETY: head `i` is written only by sections indexed by `i` and under
                        // guard `i`; the commit publishes `node` only if the head is still `h`.
                        unsafe { ops::load_cbne_store::<I>(head, h, node as usize, i) }
                    }
                    None => Outcome::Stopped,
                },
                |stop| {
                    let head = self.heads.get(stop.index()).expect("stop index is in range");
                    next.store(head.load(Relaxed), Relaxed);
                    head.store(node as usize, Relaxed);
                },
            );
            match path {
                Path::Fast(Outcome::CompareFailed) => continue, // the head moved: try again
                _ => return,
            }
        }
    }

    /// Pop the most recently pushed item of the current CPU's list, or `None` if that list is
    /// empty.
    pub fn pop(&self) -> Option<T> {
        let mut out = 0usize;
        let out_ptr: *mut usize = &mut out;
        let path = retry::run::<I, usize>(
            |i| match self.heads.get(i) {
                // SAFETY: nodes on list `i` are freed only after being unlinked by a committed
                // section on `i` or under guard `i`, neither of which can overlap this section,
                // so `*(head + offset_of!(next))` is readable; `out` is a live local.
                Some(head) => unsafe {
                    ops::load_cbeq_store_add_load_store::<I>(head, 0, offset_of!(Node<T>, next), out_ptr, i)
                },
                None => Outcome::Stopped,
            },
            |stop| {
                let head = self.heads.get(stop.index()).expect("stop index is in range");
                let h = head.load(Relaxed);
                if h != 0 {
                    // SAFETY: `h` is a node on this list; the guard excludes every other user.
                    head.store(unsafe { (*(h as *const Node<T>)).next.load(Relaxed) }, Relaxed);
                }
                h
            },
        );
        let node = match path {
            // SAFETY: the section wrote `out` before committing.
            Path::Fast(Outcome::Committed) => unsafe { out_ptr.read() },
            Path::Slow(h) => h,
            _ => 0,
        };
        // SAFETY: `node` was unlinked by this thread alone, so it is ours to free.
        (node != 0).then(|| unsafe { Box::from_raw(node as *mut Node<T>) }.value)
    }

    /// Remove every item of CPU `cpu`'s list (most recent first), from any thread.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<T>, GuardError> {
        let head = self.heads.get(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.heads.len() })?;
        let mut out = Vec::new();
        if head.load(Relaxed) == 0 {
            return Ok(out);
        }
        let first = {
            let _stop = guard::stop::<I>(cpu)?;
            head.swap(0, Relaxed)
        };
        // SAFETY: the whole list was unlinked under the guard; no one else can reach it.
        unsafe { collect(first, &mut out) };
        Ok(out)
    }

    /// Remove every item of every CPU's list, from any thread.
    ///
    /// # Panics
    /// If the membarrier fence fails (only possible if a seccomp filter installed later forbids
    /// membarrier); use [`drain_cpu`](Self::drain_cpu) to handle that.
    pub fn drain_all(&self) -> Vec<T> {
        let mut out = Vec::new();
        for cpu in 0..self.heads.len() {
            out.extend(self.drain_cpu(cpu).unwrap_or_else(|e| panic!("Stack::drain_all: {e}")));
        }
        out
    }

    /// The number of items on each CPU's list (a snapshot walk under each guard).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        (0..self.heads.len())
            .map(|cpu| {
                let Ok(_stop) = guard::stop::<I>(cpu) else { return 0 };
                let mut n = 0;
                let mut p = self.heads.get(cpu).map_or(0, |h| h.load(Relaxed));
                while p != 0 {
                    n += 1;
                    // SAFETY: the list cannot change while its guard is held.
                    p = unsafe { (*(p as *const Node<T>)).next.load(Relaxed) };
                }
                n
            })
            .collect()
    }
}

/// Free a detached list into `out`.
///
/// # Safety
/// `p` is 0 or the first node of a list no other thread can reach.
unsafe fn collect<T>(mut p: usize, out: &mut Vec<T>) {
    while p != 0 {
        // SAFETY: the caller's contract: every node is ours, allocated by `push`.
        let node = unsafe { Box::from_raw(p as *mut Node<T>) };
        p = node.next.load(Relaxed);
        out.push(node.value);
    }
}

impl<T, I: Index> Drop for Stack<T, I> {
    fn drop(&mut self) {
        for (_, head) in self.heads.iter_mut() {
            let first = core::mem::take(head.get_mut());
            let mut sink = Vec::new();
            // SAFETY: `&mut self`: no other thread can reach any list.
            unsafe { collect::<T>(first, &mut sink) };
        }
    }
}

impl<T, I: Index> Default for Stack<T, I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, I: Index> fmt::Debug for Stack<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonempty = self.heads.iter().filter(|(_, h)| h.load(Relaxed) != 0).count();
        f.debug_struct("Stack").field("index", &I::NAME).field("nonempty_cpus", &nonempty).finish_non_exhaustive()
    }
}
