use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{
    AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::arch::{self, Outcome};
use crate::cpu::{Cpu, Index};
use crate::guard::GuardError;
use crate::percpu::{PerCpu, Slots};
use crate::retry::{self, Path, Slow};

#[repr(C)]
struct Node<T> {
    /// The next node's address, or 0.
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
    /// An empty stack (no per-CPU memory is touched until a CPU pushes).
    ///
    /// # Panics
    /// If the per-CPU pool is exhausted.
    pub fn new() -> Self {
        Stack { heads: PerCpu::new_zeroed(), _owns: core::marker::PhantomData }
    }

    /// Push `value` on the current CPU's list. Async-signal-safe when `T`'s allocation is (the
    /// node is allocated before the critical section).
    pub fn push(&self, value: T) {
        let node = Box::into_raw(Box::new(Node { next: AtomicUsize::new(0), value }));
        // SAFETY: `node` is ours until a commit publishes it.
        let next = unsafe { &(*node).next };
        loop {
            let path = retry::drive(
                &self.heads,
                |head, at| {
                    let h = head.load(Relaxed);
                    next.store(h, Relaxed);
                    // SAFETY: head `at.index` is written only by sections on that index and under
                    // its guard; the commit publishes `node` only if the head is still `h`.
                    unsafe { arch::cbne_store::<I>(at, head.as_ptr(), h, node as usize) }
                },
                |slow| match slow {
                    Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                        next.store(head.load(Relaxed), Relaxed);
                        head.store(node as usize, Release);
                    }
                    // The spare list: only ever pushed to lock-free, and emptied whole.
                    Slow::Spare(head) => {
                        let mut h = head.load(Relaxed);
                        loop {
                            next.store(h, Relaxed);
                            match head.compare_exchange_weak(h, node as usize, Release, Relaxed) {
                                Ok(_) => break,
                                Err(now) => h = now,
                            }
                        }
                    }
                },
                false,
            );
            match path {
                Path::Fast(Outcome::CompareFailed) => continue, // the head moved: try again
                _ => return,
            }
        }
    }

    /// Pop the most recently pushed item of the current CPU's list, or `None` if that list is
    /// empty (or, in a signal handler that interrupted an operation on this stack, if the list
    /// cannot be reached without waiting).
    pub fn pop(&self) -> Option<T> {
        let mut out = 0usize;
        let out_ptr: *mut usize = &mut out;
        let path = retry::drive(
            &self.heads,
            // SAFETY: nodes on list `at.index` are freed only after being unlinked by a committed
            // section on that index or under its guard, neither of which can overlap this
            // section, so `*(head + offset_of!(next))` is readable; `out` is a live local.
            |head, at| unsafe { arch::cbeq_pop::<I>(at, head.as_ptr(), 0, offset_of!(Node<T>, next), out_ptr) },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    let h = head.load(Acquire);
                    if h != 0 {
                        // SAFETY: `h` is a node on this list; the guard excludes every other user.
                        head.store(unsafe { (*(h as *const Node<T>)).next.load(Relaxed) }, Relaxed);
                    }
                    h
                }
                Slow::Spare(_) => 0,
            },
            false,
        );
        let node = match path {
            // SAFETY: the section wrote `out` before committing.
            Path::Fast(Outcome::Committed) => unsafe { out_ptr.read() },
            Path::Slow(h) => h,
            Path::Fast(_) => 0,
        };
        // SAFETY: `node` was unlinked by this thread alone, so it is ours to free.
        (node != 0).then(|| unsafe { Box::from_raw(node as *mut Node<T>) }.value)
    }

    /// Remove every item of CPU `cpu`'s list (most recent first), from any thread.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<T>, GuardError> {
        let head = self.heads.slot(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.heads.len() })?;
        if head.value.load(Relaxed) == 0 {
            return Ok(Vec::new());
        }
        let first = {
            let _stop = head.guard.stop::<I>(cpu)?;
            head.value.swap(0, Acquire)
        };
        // SAFETY: the whole list was unlinked under the guard; no one else can reach it.
        Ok(unsafe { Nodes::<T>::new(first) }.collect())
    }

    /// Remove every item of every CPU's list, from any thread. Called while the thread holds a
    /// guard (a signal handler), it leaves the lists it would have to wait for.
    ///
    /// # Panics
    /// If the membarrier fence fails (only possible if a seccomp filter installed later forbids
    /// membarrier); use [`drain_cpu`](Self::drain_cpu) to handle that.
    pub fn drain_all(&self) -> Vec<T> {
        // The spare list is only pushed to lock-free: taking it whole needs no guard.
        // SAFETY: the detached list is ours alone.
        let mut out: Vec<T> = unsafe { Nodes::<T>::new(self.heads.spare().value.swap(0, Acquire)) }.collect();
        for cpu in 0..self.heads.len() {
            match self.drain_cpu(cpu) {
                Ok(items) => out.extend(items),
                Err(GuardError::Busy { .. }) => {}
                Err(e) => panic!("Stack::drain_all: {e}"),
            }
        }
        out
    }

    /// The number of items on each CPU's list (a snapshot walk under each guard; a list this
    /// thread could only wait for counts as 0).
    pub fn len_per_cpu(&self) -> Vec<usize> {
        (0..self.heads.len())
            .map(|cpu| {
                let Some(head) = self.heads.slot(cpu) else { return 0 };
                let Ok(_stop) = head.guard.stop::<I>(cpu) else { return 0 };
                let mut n = 0;
                let mut p = head.value.load(Acquire);
                while p != 0 {
                    n += 1;
                    // SAFETY: the list cannot change while its guard is held; nodes are only read.
                    p = unsafe { (*(p as *const Node<T>)).next.load(Relaxed) };
                }
                n
            })
            .collect()
    }
}

/// The values of a detached list, freeing each node as it goes (also when dropped half-way).
struct Nodes<T>(usize, core::marker::PhantomData<Box<Node<T>>>);

impl<T> Nodes<T> {
    /// # Safety
    /// `first` is 0 or the first node of a list no other thread can reach.
    unsafe fn new(first: usize) -> Self {
        Nodes(first, core::marker::PhantomData)
    }
}

impl<T> Iterator for Nodes<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        (self.0 != 0).then(|| {
            // SAFETY: `new`'s contract: every node is ours, allocated by `push`.
            let node = unsafe { Box::from_raw(self.0 as *mut Node<T>) };
            self.0 = node.next.load(Relaxed);
            node.value
        })
    }
}

impl<T> Drop for Nodes<T> {
    fn drop(&mut self) {
        super::drop_all(self.by_ref());
    }
}

impl<T, I: Index> Drop for Stack<T, I> {
    fn drop(&mut self) {
        let spare = self.heads.spare().value.swap(0, Relaxed);
        let heads: Vec<usize> = self.heads.iter_mut().map(|(_, h)| core::mem::take(h.get_mut())).collect();
        // SAFETY: `&mut self`: no other thread can reach any list. Every value is dropped even
        // if one's `Drop` panics.
        super::drop_all(heads.into_iter().chain([spare]).flat_map(|h| unsafe { Nodes::<T>::new(h) }));
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
