use core::fmt;
use core::mem::{MaybeUninit, offset_of};
use core::sync::atomic::{
    AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use super::ring::{Items, Rings};
use crate::arch::{self, Outcome};
use crate::cpu::{Cpu, Index};
use crate::guard::GuardError;
use crate::percpu::{PerCpu, Slots};
use crate::pool::PoolError;
use crate::retry::{self, Path, Slow};

/// A list node: the next node's address (or 0) first, then the value (uninitialised while the
/// node waits in a CPU's cache of free nodes).
#[repr(C)]
struct Node<T> {
    next: AtomicUsize,
    value: MaybeUninit<T>,
}

/// How many free nodes each CPU keeps for reuse, unless [`Stack::with_node_cache`] says otherwise.
pub const DEFAULT_NODE_CACHE: usize = 64;

/// A per-CPU stack (LIFO list) of `T`: `push` and `pop` work on the current CPU's list with one
/// rseq critical section each (no atomic read-modify-write); `drain_cpu` and `drain_all` empty
/// lists from any thread through the guard.
///
/// Nodes are recycled: each CPU keeps up to [`DEFAULT_NODE_CACHE`] free nodes (a bounded per-CPU
/// array of pointers, one more critical section per operation), so in the steady state `push`
/// and `pop` neither allocate nor free. A push takes a cached node (allocating only when the
/// cache is empty), a pop returns its node to the cache (freeing it only when the cache is full),
/// and the drains return the cached nodes of the CPUs they drain to the allocator: the memory
/// held for reuse is bounded by the cache size times the CPU count, and given back on demand.
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
    /// Each CPU's free nodes (their addresses).
    free: Rings<I>,
    _owns: core::marker::PhantomData<Box<Node<T>>>,
}

// SAFETY: the stack owns its items and hands each out to exactly one thread (by value).
unsafe impl<T: Send, I: Index> Send for Stack<T, I> {}
// SAFETY: all shared access goes through rseq sections or the guard; items move between
// threads only by value, so `T: Send` suffices.
unsafe impl<T: Send, I: Index> Sync for Stack<T, I> {}

impl<T, I: Index> Stack<T, I> {
    /// An empty stack (no per-CPU memory is touched until a CPU pushes), recycling up to
    /// [`DEFAULT_NODE_CACHE`] nodes per CPU.
    ///
    /// # Panics
    /// If the per-CPU pool is exhausted.
    pub fn new() -> Self {
        Self::with_node_cache(DEFAULT_NODE_CACHE)
    }

    /// An empty stack that keeps up to `nodes` free nodes per CPU for reuse (0: every push
    /// allocates and every pop frees).
    ///
    /// # Panics
    /// If the per-CPU pool cannot hold the caches ([`try_with_node_cache`](Self::try_with_node_cache)).
    pub fn with_node_cache(nodes: usize) -> Self {
        Self::try_with_node_cache(nodes).unwrap_or_else(|e| panic!("Stack::with_node_cache({nodes}): {e}"))
    }

    /// [`with_node_cache`](Self::with_node_cache), returning the pool's error instead of panicking.
    pub fn try_with_node_cache(nodes: usize) -> Result<Self, PoolError> {
        Ok(Stack {
            heads: PerCpu::try_new_zeroed()?,
            free: Rings::new(nodes, Items::Words)?,
            _owns: core::marker::PhantomData,
        })
    }

    /// A node for `value`: a cached one, else a new one.
    fn node(&self, value: T) -> *mut Node<T> {
        let mut p = 0usize;
        // SAFETY: `p` has room for one word; a cached word is a free node of this stack.
        let node = if unsafe { self.free.pop(&raw mut p) } {
            p as *mut Node<T>
        } else {
            Box::into_raw(Box::new(Node { next: AtomicUsize::new(0), value: MaybeUninit::uninit() }))
        };
        // SAFETY: `node` is a free node, ours alone.
        unsafe { (*node).value.write(value) };
        node
    }

    /// Give back a node whose value has been moved out: to this CPU's cache, or to the allocator
    /// when the cache is full.
    fn recycle(&self, node: *mut Node<T>) {
        let p = node as usize;
        // SAFETY: `p` is one aligned word.
        if !unsafe { self.free.push(&raw const p) } {
            // SAFETY: a node from `Box::into_raw` whose value is gone: free it without dropping.
            drop(unsafe { Box::from_raw(node) });
        }
    }

    /// Push `value` on the current CPU's list.
    pub fn push(&self, value: T) {
        let node = self.node(value);
        // SAFETY: `node` is ours until a commit publishes it.
        let next = unsafe { &(*node).next };
        self.link(node as usize, next);
    }

    /// Publish the private chain that starts at `first` and ends with the node whose `next` is
    /// `tail_next`, on the current CPU's list, in one critical section (which cannot fail a
    /// compare: it reads the head and links the chain to it inside the section).
    #[inline(always)]
    fn link(&self, first: usize, tail_next: &AtomicUsize) {
        retry::drive(
            &self.heads,
            // SAFETY: head `at.index` is written only by sections on that index and under its
            // guard; the chain (and so `tail_next`) is private until the commit publishes it.
            |head, at| unsafe { arch::list_push::<I>(at, head.as_ptr(), first, tail_next.as_ptr()) },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    tail_next.store(head.load(Relaxed), Relaxed);
                    head.store(first, Release);
                }
                // The spare list: only ever pushed to lock-free, and emptied whole.
                Slow::Spare(head) => {
                    let mut h = head.load(Relaxed);
                    loop {
                        tail_next.store(h, Relaxed);
                        match head.compare_exchange_weak(h, first, Release, Relaxed) {
                            Ok(_) => break,
                            Err(now) => h = now,
                        }
                    }
                }
            },
            false,
        );
    }

    /// Pop the most recently pushed item of the current CPU's list, or `None` if that list is
    /// empty (or, in a signal handler that interrupted an operation on this stack, if the list
    /// cannot be reached without waiting).
    pub fn pop(&self) -> Option<T> {
        let mut out = 0usize;
        let out_ptr: *mut usize = &mut out;
        let path = retry::drive(
            &self.heads,
            // SAFETY: nodes on list `at.index` are unlinked only by a committed section on that
            // index or under its guard, neither of which can overlap this section, and freed or
            // reused only after that, so `*(head + offset_of!(next))` is readable; `out` is a
            // live local.
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
        } as *mut Node<T>;
        if node.is_null() {
            return None;
        }
        // SAFETY: `node` was unlinked by this thread alone: its value is ours to move out.
        let value = unsafe { (*node).value.assume_init_read() };
        self.recycle(node);
        Some(value)
    }

    /// Push every item of `items` on the current CPU's list in one critical section (a chain
    /// linked beforehand, spliced onto the list): the last item ends up on top. Nodes come from
    /// the CPU's cache first (one section for all of them).
    pub fn push_batch(&self, items: Vec<T>) {
        let n = items.len();
        if n == 0 {
            return;
        }
        let mut nodes: Vec<*mut Node<T>> = Vec::with_capacity(n);
        // SAFETY: `nodes` has room for `n` words; cached words are free nodes of this stack.
        unsafe {
            let got = self.free.pop_many(nodes.as_mut_ptr().cast(), n);
            nodes.set_len(got);
        }
        nodes.resize_with(n, || {
            Box::into_raw(Box::new(Node { next: AtomicUsize::new(0), value: MaybeUninit::uninit() }))
        });
        // Link them privately: item k's node points to item k - 1's, the first item's node will
        // point to the old head.
        for (k, (node, value)) in nodes.iter().zip(items).enumerate() {
            // SAFETY: every node is a free node, ours alone.
            unsafe {
                (**node).value.write(value);
                (**node).next.store(if k == 0 { 0 } else { nodes[k - 1] as usize }, Relaxed);
            }
        }
        // SAFETY: the chain's last node (`nodes[0]`) is private until the splice.
        let tail_next = unsafe { &(*nodes[0]).next };
        self.link(nodes[n - 1] as usize, tail_next);
    }

    /// Pop up to `max` items, the most recently pushed first, from the current CPU's list in one
    /// critical section; `max = 0` pops nothing. The freed nodes go back to the CPU's cache in one
    /// more section.
    pub fn pop_batch(&self, max: usize) -> Vec<T> {
        if max == 0 {
            return Vec::new();
        }
        let (mut first, mut n) = (0usize, 0usize);
        let (first_ptr, n_ptr): (*mut usize, *mut usize) = (&mut first, &mut n);
        let path = retry::drive(
            &self.heads,
            // SAFETY: as in `pop`: the nodes walked are on list `at.index`, readable until a
            // commit on that index unlinks them; `first` and `n` are live locals.
            |head, at| unsafe {
                arch::walk_pop::<I>(at, head.as_ptr(), max, offset_of!(Node<T>, next), first_ptr, n_ptr)
            },
            |slow| match slow {
                Slow::Stopped(head, _) | Slow::Degraded(head, _) => {
                    let first = head.load(Acquire);
                    let (mut r, mut n) = (first, 0);
                    while r != 0 && n < max {
                        // SAFETY: `r` is a node on this list; the guard excludes every other user.
                        r = unsafe { (*(r as *const Node<T>)).next.load(Relaxed) };
                        n += 1;
                    }
                    head.store(r, Relaxed);
                    (first, n)
                }
                Slow::Spare(_) => (0, 0),
            },
            false,
        );
        let (first, n) = match path {
            // SAFETY: the section wrote both before committing.
            Path::Fast(_) => unsafe { (first_ptr.read(), n_ptr.read()) },
            Path::Slow(r) => r,
        };
        let mut values = Vec::with_capacity(n);
        let mut nodes: Vec<usize> = Vec::with_capacity(n);
        let mut p = first;
        for _ in 0..n {
            let node = p as *mut Node<T>;
            // SAFETY: the `n` nodes from `first` were unlinked by this thread alone.
            unsafe {
                p = (*node).next.load(Relaxed);
                values.push((*node).value.assume_init_read());
            }
            nodes.push(node as usize);
        }
        // SAFETY: `nodes` holds `n` free node addresses; the ones not taken are freed below.
        let cached = unsafe { self.free.push_many(nodes.as_ptr().cast(), n, false) };
        for &node in &nodes[cached..] {
            // SAFETY: a free node (its value moved out) that nobody else can reach.
            drop(unsafe { Box::from_raw(node as *mut Node<T>) });
        }
        values
    }

    /// Remove every item of CPU `cpu`'s list (most recent first), from any thread, and give that
    /// CPU's cached free nodes back to the allocator.
    pub fn drain_cpu(&self, cpu: usize) -> Result<Vec<T>, GuardError> {
        let head = self.heads.slot(cpu).ok_or(GuardError::OutOfRange { index: cpu, limit: self.heads.len() })?;
        self.free_cached(cpu)?;
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

    /// Free the cached nodes of CPU `cpu` (collected under its guard, freed after).
    fn free_cached(&self, cpu: usize) -> Result<(), GuardError> {
        let mut nodes: Vec<*mut Node<T>> = Vec::with_capacity(self.free.capacity());
        // SAFETY: `nodes` has room for the whole cache; the drained words are free nodes.
        unsafe {
            let n = self.free.drain_cpu(cpu, nodes.as_mut_ptr().cast())?;
            nodes.set_len(n);
        }
        for node in nodes {
            // SAFETY: a free node (no value) that nobody else can reach now.
            drop(unsafe { Box::from_raw(node) });
        }
        Ok(())
    }

    /// Remove every item of every CPU's list, from any thread, and give every cached free node
    /// back to the allocator. Called while the thread holds a guard (a signal handler), it leaves
    /// the lists it would have to wait for.
    ///
    /// # Panics
    /// If the membarrier fence fails (only possible if a seccomp filter installed later forbids
    /// membarrier); use [`drain_cpu`](Self::drain_cpu) to handle that.
    pub fn drain_all(&self) -> Vec<T> {
        // The spare list is only pushed to lock-free: taking it whole needs no guard.
        // SAFETY: the detached list is ours alone.
        let mut out: Vec<T> = unsafe { Nodes::<T>::new(self.heads.spare().value.swap(0, Acquire)) }.collect();
        out.extend(super::drain_every("Stack", |cpu| self.drain_cpu(cpu)));
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

    /// How many free nodes each CPU keeps for reuse now (a snapshot).
    pub fn cached_nodes_per_cpu(&self) -> Vec<usize> {
        self.free.len_per_cpu()
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
            // SAFETY: `new`'s contract: every node is ours, holds a value, and came from a `Box`.
            let node = unsafe { Box::from_raw(self.0 as *mut Node<T>) };
            self.0 = node.next.load(Relaxed);
            // SAFETY: a node on a list holds a value; the box is freed without dropping it.
            unsafe { node.value.assume_init_read() }
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
        for cpu in 0..self.heads.len() {
            let _ = self.free_cached(cpu);
        }
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
