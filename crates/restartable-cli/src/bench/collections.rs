//! The collections suite (`bench --collections`): the library's collections against the usual
//! alternatives, each doing one precisely defined operation, the same for every row it is
//! compared with, and checking its own counts at the end.
//!
//! Queue-like rows: one operation is **one push and one pop** on the same structure, by the same
//! thread (push a `u64`, or an item that carries one, then pop whatever the structure gives).
//! - `stack` `Stack<u64>` / `segqueue` `crossbeam_queue::SegQueue<u64>` / `mutex-vec` one shared
//!   `Mutex<Vec<u64>>` (locked once for the push and once for the pop). Unbounded.
//! - `buffer` `Buffer<u64>` (boxed items) / `arrayqueue` `ArrayQueue<Box<u64>>`. Each thread
//!   moves its own box in and out (no allocation per operation on either side); a new box is
//!   made only when a pop found nothing. Bounded: [`CAPACITY`] per CPU for the buffer, the same
//!   total ([`CAPACITY`] x possible CPUs) for the queue.
//! - `memcpy-buffer` `MemcpyBuffer<[u64; 8]>` / `arrayqueue-copy` `ArrayQueue<[u64; 8]>`: the
//!   64-byte item is copied in and out; capacities as above.
//!
//! Batch rows (`*-batch16`): one operation is **one item pushed and popped**, moved
//! [`BATCH_ITEMS`] at a time: a thread pushes a batch of 16 in one call (one critical section)
//! and pops up to 16 in one more, so their ns/op compare directly with the single rows above
//! (issue target: at least 3x fewer ns per item).
//! - `stack-batch16`: `Stack::append` + `Stack::pop_batch_into` (the thread's vectors reused).
//! - `buffer-batch16`: `Buffer::push_batch` + `Buffer::pop_batch` of boxes (the boxes circulate
//!   as in `buffer`).
//! - `memcpy-buffer-batch16`: `MemcpyBuffer::push_batch` + `MemcpyBuffer::pop_batch`.
//!
//! Lock rows: one operation is **lock, add 1 to one `u64` field and 2 to a second, unlock**.
//! - `spinlock`: `SpinLock<T>`, one lock per CPU, chosen by the CPU the thread runs on (rseq).
//! - `parking-lot-mutex` / `std-mutex`: the same shape built from the usual parts: one
//!   cache-padded `parking_lot::Mutex<T>` / `std::sync::Mutex<T>` per possible CPU, indexed by
//!   `sched_getcpu()`.
//! - `parking-lot-mutex-shared` / `std-mutex-shared`: one mutex shared by every thread (what
//!   most programs do).
//!
//! Reference rows (`ref-*`), measured the same way, show what the rows above are made of:
//! `ref-box-alloc` a `Box<u64>` allocated and freed (what a structure with a node per item
//! pays per push, and no row here does: `Stack` keeps items in recycled chunks), `ref-rseq-pair` two raw rseq sections on the current CPU's slot (the floor
//! of a per-CPU push + pop), `ref-cas-pair` two compare-and-swap increments of one shared word
//! (the floor of a shared queue's push + pop). Where a row is behind its target, these say why.
//!
//! The per-CPU structures pick the current CPU's part and so may find another thread's item,
//! or nothing when the thread migrated between its push and its pop; full and empty are
//! answers, counted. Every run checks: push attempts = operations (accepted + full, and "full"
//! only from a bounded structure), pop attempts = operations (an item + empty), items pushed =
//! items popped + items left (drained at the end), the same for the sum of their values, no
//! torn 64-byte item, and for the locks, both fields' totals = what the operations added.

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crossbeam_queue::{ArrayQueue, SegQueue};
use restartable::{Buffer, MemcpyBuffer, SpinLock, Stack};

use super::counters::{RawSlots, raw_add};
use super::report::Sample;
use super::suite::{Implementation, Padded, check, run_threads, spin};

/// Items each CPU's `Buffer` / `MemcpyBuffer` holds; each `ArrayQueue` holds this many per
/// possible CPU (the same total).
pub const CAPACITY: usize = 64;

/// One implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// `restartable::Stack<u64>`: push + pop.
    Stack,
    /// `crossbeam_queue::SegQueue<u64>`: push + pop.
    SegQueue,
    /// One shared `Mutex<Vec<u64>>`: push + pop, one lock each.
    MutexVec,
    /// `restartable::Buffer<u64>` (boxed items): push + pop.
    Buffer,
    /// `crossbeam_queue::ArrayQueue<Box<u64>>`: push + pop.
    ArrayQueue,
    /// `restartable::MemcpyBuffer<[u64; 8]>`: push + pop.
    MemcpyBuffer,
    /// `crossbeam_queue::ArrayQueue<[u64; 8]>`: push + pop.
    ArrayQueueCopy,
    /// `restartable::Stack<u64>`: 16 items pushed in one section, up to 16 popped in one.
    StackBatch,
    /// `restartable::Buffer<u64>`: 16 boxes pushed in one section, up to 16 popped in one.
    BufferBatch,
    /// `restartable::MemcpyBuffer<[u64; 8]>`: 16 items copied in, up to 16 copied out.
    MemcpyBufferBatch,
    /// `restartable::SpinLock<T>`: lock the current CPU's `T`, update it, unlock.
    SpinLock,
    /// One cache-padded `parking_lot::Mutex<T>` per CPU, indexed by `sched_getcpu`.
    ParkingLotMutex,
    /// One cache-padded `std::sync::Mutex<T>` per CPU, indexed by `sched_getcpu`.
    StdMutex,
    /// One `parking_lot::Mutex<T>` shared by every thread.
    ParkingLotMutexShared,
    /// One `std::sync::Mutex<T>` shared by every thread.
    StdMutexShared,
    /// Reference: `Box::new` + drop of a `u64` (what `Stack::push` allocates per item).
    RefBox,
    /// Reference: two raw rseq sections (`ops::load_add_store::<Cpu>`) on the current CPU's
    /// slot: the floor of a per-CPU push + pop.
    RefRseqPair,
    /// Reference: two compare-and-swap increments (`lock cmpxchg`) of one shared word: the floor
    /// of a shared queue's push + pop.
    RefCasPair,
}

impl Impl {
    /// Every implementation, in table order.
    pub const ALL: [Impl; 18] = [
        Impl::Stack,
        Impl::SegQueue,
        Impl::MutexVec,
        Impl::Buffer,
        Impl::ArrayQueue,
        Impl::MemcpyBuffer,
        Impl::ArrayQueueCopy,
        Impl::StackBatch,
        Impl::BufferBatch,
        Impl::MemcpyBufferBatch,
        Impl::SpinLock,
        Impl::ParkingLotMutex,
        Impl::StdMutex,
        Impl::ParkingLotMutexShared,
        Impl::StdMutexShared,
        Impl::RefBox,
        Impl::RefRseqPair,
        Impl::RefCasPair,
    ];
}

impl Implementation for Impl {
    const SUITE: &'static str = "collections";
    const OP: &'static str = "queues and buffers: one push + one pop (batch rows: per item, 16 per section); locks: lock, add to two fields, unlock";

    fn all() -> &'static [Impl] {
        &Impl::ALL
    }

    fn key(self) -> &'static str {
        match self {
            Impl::Stack => "stack",
            Impl::SegQueue => "segqueue",
            Impl::MutexVec => "mutex-vec",
            Impl::Buffer => "buffer",
            Impl::ArrayQueue => "arrayqueue",
            Impl::MemcpyBuffer => "memcpy-buffer",
            Impl::ArrayQueueCopy => "arrayqueue-copy",
            Impl::StackBatch => "stack-batch16",
            Impl::BufferBatch => "buffer-batch16",
            Impl::MemcpyBufferBatch => "memcpy-buffer-batch16",
            Impl::SpinLock => "spinlock",
            Impl::ParkingLotMutex => "parking-lot-mutex",
            Impl::StdMutex => "std-mutex",
            Impl::ParkingLotMutexShared => "parking-lot-mutex-shared",
            Impl::StdMutexShared => "std-mutex-shared",
            Impl::RefBox => "ref-box-alloc",
            Impl::RefRseqPair => "ref-rseq-pair",
            Impl::RefCasPair => "ref-cas-pair",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Impl::Stack => "Stack<u64>",
            Impl::SegQueue => "SegQueue<u64>",
            Impl::MutexVec => "Mutex<Vec<u64>>, shared",
            Impl::Buffer => "Buffer<u64> (boxed)",
            Impl::ArrayQueue => "ArrayQueue<Box<u64>>",
            Impl::MemcpyBuffer => "MemcpyBuffer<[u64; 8]>",
            Impl::ArrayQueueCopy => "ArrayQueue<[u64; 8]>",
            Impl::StackBatch => "Stack<u64>, batches of 16",
            Impl::BufferBatch => "Buffer<u64>, batches of 16",
            Impl::MemcpyBufferBatch => "MemcpyBuffer<[u64; 8]>, batches",
            Impl::SpinLock => "SpinLock<T> (per CPU)",
            Impl::ParkingLotMutex => "parking_lot::Mutex per CPU",
            Impl::StdMutex => "std Mutex per CPU",
            Impl::ParkingLotMutexShared => "parking_lot::Mutex, shared",
            Impl::StdMutexShared => "std Mutex, shared",
            Impl::RefBox => "ref: Box<u64> new + drop",
            Impl::RefRseqPair => "ref: 2 raw rseq sections",
            Impl::RefCasPair => "ref: 2 CAS on a shared word",
        }
    }

    fn measure(self, threads: usize, duration: Duration) -> Result<Sample, String> {
        let per_cpu = CAPACITY;
        let total = CAPACITY * restartable::possible_cpus();
        match self {
            Impl::Stack => push_pop(&Stack::<u64>::new(), threads, duration),
            Impl::SegQueue => push_pop(&SegQueue::<u64>::new(), threads, duration),
            Impl::MutexVec => push_pop(&Mutex::new(Vec::<u64>::with_capacity(1024)), threads, duration),
            Impl::Buffer => push_pop(&Buffer::<u64>::with_capacity(per_cpu), threads, duration),
            Impl::ArrayQueue => push_pop(&ArrayQueue::<Box<u64>>::new(total), threads, duration),
            Impl::MemcpyBuffer => push_pop(&MemcpyBuffer::<Item>::with_capacity(per_cpu), threads, duration),
            Impl::ArrayQueueCopy => push_pop(&ArrayQueue::<Item>::new(total), threads, duration),
            Impl::StackBatch => batches(&Stack::<u64>::new(), threads, duration),
            Impl::BufferBatch => batches(&Buffer::<u64>::with_capacity(per_cpu), threads, duration),
            Impl::MemcpyBufferBatch => batches(&MemcpyBuffer::<Item>::with_capacity(per_cpu), threads, duration),
            Impl::SpinLock => locked(SpinLock::<Pair>::default(), threads, duration),
            Impl::ParkingLotMutex => locked(PerCpuLocks::<parking_lot::Mutex<Pair>>::new(), threads, duration),
            Impl::StdMutex => locked(PerCpuLocks::<Mutex<Pair>>::new(), threads, duration),
            Impl::ParkingLotMutexShared => locked(Padded(parking_lot::Mutex::new(Pair::default())), threads, duration),
            Impl::StdMutexShared => locked(Padded(Mutex::new(Pair::default())), threads, duration),
            Impl::RefBox => box_alloc(threads, duration),
            Impl::RefRseqPair => rseq_pair(threads, duration),
            Impl::RefCasPair => cas_pair(threads, duration),
        }
        .map_err(|e| format!("{}: {e}", self.name()))
    }
}

// ---------------------------------------------------------------------------------------------
// Queue-like structures: one push and one pop per operation.

/// The 64-byte item of the copying rows: one value in every word, so that a torn copy (words
/// of two different items) shows.
type Item = [u64; 8];

/// What one pop found.
enum Popped {
    /// Nothing (the part it looked at was empty).
    Empty,
    /// An item carrying this value.
    Item(u64),
    /// A 64-byte item whose words disagree: a torn copy.
    Torn,
}

fn item_value(item: &Item) -> Popped {
    if item.iter().all(|&w| w == item[0]) { Popped::Item(item[0]) } else { Popped::Torn }
}

/// A structure measured by [`push_pop`].
trait PushPop: Sync {
    /// Whether a push may answer "full".
    const BOUNDED: bool;
    /// Per-thread state (the spare box of the boxed rows).
    type Local: Default;
    /// Push an item carrying `value`; false when the structure was full.
    fn push(&self, local: &mut Self::Local, value: u64) -> bool;
    /// Pop one item.
    fn pop(&self, local: &mut Self::Local) -> Popped;
    /// Remove every item left, once the threads have ended.
    fn drain(&self) -> Vec<Popped>;
}

impl PushPop for Stack<u64> {
    const BOUNDED: bool = false;
    type Local = ();
    #[inline(always)]
    fn push(&self, (): &mut (), value: u64) -> bool {
        Stack::push(self, value);
        true
    }
    #[inline(always)]
    fn pop(&self, (): &mut ()) -> Popped {
        Stack::pop(self).map_or(Popped::Empty, Popped::Item)
    }
    fn drain(&self) -> Vec<Popped> {
        self.drain_all().into_iter().map(Popped::Item).collect()
    }
}

impl PushPop for SegQueue<u64> {
    const BOUNDED: bool = false;
    type Local = ();
    #[inline(always)]
    fn push(&self, (): &mut (), value: u64) -> bool {
        SegQueue::push(self, value);
        true
    }
    #[inline(always)]
    fn pop(&self, (): &mut ()) -> Popped {
        SegQueue::pop(self).map_or(Popped::Empty, Popped::Item)
    }
    fn drain(&self) -> Vec<Popped> {
        std::iter::from_fn(|| SegQueue::pop(self)).map(Popped::Item).collect()
    }
}

impl PushPop for Mutex<Vec<u64>> {
    const BOUNDED: bool = false;
    type Local = ();
    #[inline(always)]
    fn push(&self, (): &mut (), value: u64) -> bool {
        self.lock().unwrap_or_else(PoisonError::into_inner).push(value);
        true
    }
    #[inline(always)]
    fn pop(&self, (): &mut ()) -> Popped {
        self.lock().unwrap_or_else(PoisonError::into_inner).pop().map_or(Popped::Empty, Popped::Item)
    }
    fn drain(&self) -> Vec<Popped> {
        std::mem::take(&mut *self.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .map(Popped::Item)
            .collect()
    }
}

/// Push the spare box (or a new one) carrying `value`; a full structure hands it back.
#[inline(always)]
fn push_box(spare: &mut Option<Box<u64>>, value: u64, push: impl FnOnce(Box<u64>) -> Result<(), Box<u64>>) -> bool {
    let mut item = spare.take().unwrap_or_else(|| Box::new(0));
    *item = value;
    match push(item) {
        Ok(()) => true,
        Err(item) => {
            *spare = Some(item);
            false
        }
    }
}

/// A popped box becomes the spare (dropped if there is one already: after a full push).
#[inline(always)]
fn pop_box(spare: &mut Option<Box<u64>>, item: Option<Box<u64>>) -> Popped {
    match item {
        Some(item) => {
            let v = *item;
            spare.get_or_insert(item);
            Popped::Item(v)
        }
        None => Popped::Empty,
    }
}

impl PushPop for Buffer<u64> {
    const BOUNDED: bool = true;
    type Local = Option<Box<u64>>;
    #[inline(always)]
    fn push(&self, spare: &mut Self::Local, value: u64) -> bool {
        push_box(spare, value, |item| Buffer::push(self, item))
    }
    #[inline(always)]
    fn pop(&self, spare: &mut Self::Local) -> Popped {
        pop_box(spare, Buffer::pop(self))
    }
    fn drain(&self) -> Vec<Popped> {
        self.drain_all().into_iter().map(|b| Popped::Item(*b)).collect()
    }
}

impl PushPop for ArrayQueue<Box<u64>> {
    const BOUNDED: bool = true;
    type Local = Option<Box<u64>>;
    #[inline(always)]
    fn push(&self, spare: &mut Self::Local, value: u64) -> bool {
        push_box(spare, value, |item| ArrayQueue::push(self, item))
    }
    #[inline(always)]
    fn pop(&self, spare: &mut Self::Local) -> Popped {
        pop_box(spare, ArrayQueue::pop(self))
    }
    fn drain(&self) -> Vec<Popped> {
        std::iter::from_fn(|| ArrayQueue::pop(self)).map(|b| Popped::Item(*b)).collect()
    }
}

impl PushPop for MemcpyBuffer<Item> {
    const BOUNDED: bool = true;
    type Local = ();
    #[inline(always)]
    fn push(&self, (): &mut (), value: u64) -> bool {
        MemcpyBuffer::push(self, [value; 8]).is_ok()
    }
    #[inline(always)]
    fn pop(&self, (): &mut ()) -> Popped {
        MemcpyBuffer::pop(self).map_or(Popped::Empty, |item| item_value(&item))
    }
    fn drain(&self) -> Vec<Popped> {
        self.drain_all().iter().map(item_value).collect()
    }
}

impl PushPop for ArrayQueue<Item> {
    const BOUNDED: bool = true;
    type Local = ();
    #[inline(always)]
    fn push(&self, (): &mut (), value: u64) -> bool {
        ArrayQueue::push(self, [value; 8]).is_ok()
    }
    #[inline(always)]
    fn pop(&self, (): &mut ()) -> Popped {
        ArrayQueue::pop(self).map_or(Popped::Empty, |item| item_value(&item))
    }
    fn drain(&self) -> Vec<Popped> {
        std::iter::from_fn(|| ArrayQueue::pop(self)).map(|item| item_value(&item)).collect()
    }
}

/// What the threads of a push-pop run did, all together.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Pushes accepted.
    pushed: u64,
    /// Pushes answered "full".
    full: u64,
    /// Pops that returned an item.
    popped: u64,
    /// Pops answered "empty".
    empty: u64,
    /// Pops (and drained items) that returned a torn item.
    torn: u64,
    /// The wrapping sum of the values pushed.
    pushed_sum: u64,
    /// The wrapping sum of the values popped.
    popped_sum: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.pushed += o.pushed;
        self.full += o.full;
        self.popped += o.popped;
        self.empty += o.empty;
        self.torn += o.torn;
        self.pushed_sum = self.pushed_sum.wrapping_add(o.pushed_sum);
        self.popped_sum = self.popped_sum.wrapping_add(o.popped_sum);
    }
}

/// Each thread, as one operation, pushes an item carrying a value unique to the run (its thread
/// number in the high bits, a count in the low ones) and pops one; then everything left is
/// drained and the counts checked ([`check_items`]).
fn push_pop<Q: PushPop>(q: &Q, threads: usize, duration: Duration) -> Result<Sample, String> {
    let next_thread = AtomicU64::new(0);
    let totals = Mutex::new(Tally::default());
    let s = run_threads(threads, duration, |stop| {
        let mut value = next_thread.fetch_add(1, Relaxed) << 40;
        let mut local = Q::Local::default();
        let mut t = Tally::default();
        let n = spin(stop, || {
            value += 1;
            if q.push(&mut local, black_box(value)) {
                t.pushed += 1;
                t.pushed_sum = t.pushed_sum.wrapping_add(value);
            } else {
                t.full += 1;
            }
            match q.pop(&mut local) {
                Popped::Item(v) => {
                    t.popped += 1;
                    t.popped_sum = t.popped_sum.wrapping_add(black_box(v));
                }
                Popped::Empty => t.empty += 1,
                Popped::Torn => t.torn += 1,
            }
        });
        totals.lock().unwrap_or_else(PoisonError::into_inner).add(&t);
        n
    });
    let t = *totals.lock().unwrap_or_else(PoisonError::into_inner);
    check_items(t, &q.drain(), Q::BOUNDED, s)
}

/// Items per batch in the `*-batch16` rows.
pub const BATCH_ITEMS: usize = 16;

/// A structure measured by [`batches`]: it moves [`BATCH_ITEMS`] items per call.
trait Batched: PushPop {
    /// Per-thread vectors and spare items, reused from batch to batch.
    type Batch: Default;
    /// Push [`BATCH_ITEMS`] items carrying `first, first + 1, ...`; returns how many were
    /// accepted and the wrapping sum of their values.
    fn push_batch(&self, b: &mut Self::Batch, first: u64) -> (u64, u64);
    /// Pop up to [`BATCH_ITEMS`] items, each shown to `found`.
    fn pop_batch(&self, b: &mut Self::Batch, found: impl FnMut(Popped));
}

/// The wrapping sum of `first + i` for `i` in `from..to`.
fn sum_of(first: u64, from: usize, to: usize) -> u64 {
    (from..to).fold(0u64, |a, i| a.wrapping_add(first.wrapping_add(i as u64)))
}

impl Batched for Stack<u64> {
    type Batch = (Vec<u64>, Vec<u64>);
    #[inline(always)]
    fn push_batch(&self, (items, _): &mut Self::Batch, first: u64) -> (u64, u64) {
        items.clear();
        items.extend((0..BATCH_ITEMS as u64).map(|i| first + i));
        self.append(items);
        (BATCH_ITEMS as u64, sum_of(first, 0, BATCH_ITEMS))
    }
    #[inline(always)]
    fn pop_batch(&self, (_, out): &mut Self::Batch, mut found: impl FnMut(Popped)) {
        out.clear();
        self.pop_batch_into(BATCH_ITEMS, out);
        out.iter().for_each(|&v| found(Popped::Item(v)));
    }
}

impl Batched for Buffer<u64> {
    type Batch = (Vec<Box<u64>>, Vec<Box<u64>>);
    #[inline(always)]
    fn push_batch(&self, (spare, _): &mut Self::Batch, first: u64) -> (u64, u64) {
        while spare.len() < BATCH_ITEMS {
            spare.push(Box::new(0));
        }
        for (i, b) in spare.iter_mut().enumerate() {
            **b = first + i as u64;
        }
        // The batch moves from the end of `spare`.
        let moved = Buffer::push_batch(self, spare);
        (moved as u64, sum_of(first, BATCH_ITEMS - moved, BATCH_ITEMS))
    }
    #[inline(always)]
    fn pop_batch(&self, (spare, out): &mut Self::Batch, mut found: impl FnMut(Popped)) {
        Buffer::pop_batch(self, BATCH_ITEMS, out);
        for b in out.drain(..) {
            found(Popped::Item(*b));
            if spare.len() < BATCH_ITEMS {
                spare.push(b);
            }
        }
    }
}

impl Batched for MemcpyBuffer<Item> {
    type Batch = (Vec<Item>, Vec<Item>);
    #[inline(always)]
    fn push_batch(&self, (items, _): &mut Self::Batch, first: u64) -> (u64, u64) {
        items.clear();
        items.extend((0..BATCH_ITEMS as u64).map(|i| [first + i; 8]));
        // The batch copies from the start of `items`.
        let moved = MemcpyBuffer::push_batch(self, items);
        (moved as u64, sum_of(first, 0, moved))
    }
    #[inline(always)]
    fn pop_batch(&self, (_, out): &mut Self::Batch, mut found: impl FnMut(Popped)) {
        out.clear();
        MemcpyBuffer::pop_batch(self, BATCH_ITEMS, out);
        out.iter().for_each(|item| found(item_value(item)));
    }
}

/// As [`push_pop`], an item at a time counted as one operation, but moved [`BATCH_ITEMS`] per
/// call: items not accepted count as "full", items a pop did not find as "empty".
fn batches<Q: Batched>(q: &Q, threads: usize, duration: Duration) -> Result<Sample, String> {
    let next_thread = AtomicU64::new(0);
    let totals = Mutex::new(Tally::default());
    let s = run_threads(threads, duration, |stop| {
        let mut value = next_thread.fetch_add(1, Relaxed) << 40;
        let mut b = Q::Batch::default();
        let mut t = Tally::default();
        let calls = spin(stop, || {
            let (accepted, sum) = q.push_batch(&mut b, black_box(value + 1));
            value += BATCH_ITEMS as u64;
            t.pushed += accepted;
            t.full += BATCH_ITEMS as u64 - accepted;
            t.pushed_sum = t.pushed_sum.wrapping_add(sum);
            let mut seen = 0;
            q.pop_batch(&mut b, |p| {
                seen += 1;
                match p {
                    Popped::Item(v) => {
                        t.popped += 1;
                        t.popped_sum = t.popped_sum.wrapping_add(v);
                    }
                    Popped::Torn => t.torn += 1,
                    Popped::Empty => seen -= 1,
                }
            });
            t.empty += BATCH_ITEMS as u64 - seen;
        });
        totals.lock().unwrap_or_else(PoisonError::into_inner).add(&t);
        calls * BATCH_ITEMS as u64
    });
    let t = *totals.lock().unwrap_or_else(PoisonError::into_inner);
    check_items(t, &q.drain(), Q::BOUNDED, s)
}

/// The checks of a push-pop run: `t` from the threads, `left` drained after them.
fn check_items(mut t: Tally, left: &[Popped], bounded: bool, s: Sample) -> Result<Sample, String> {
    let (mut left_n, mut left_sum) = (0u64, 0u64);
    for p in left {
        match *p {
            Popped::Item(v) => {
                left_n += 1;
                left_sum = left_sum.wrapping_add(v);
            }
            Popped::Torn => t.torn += 1,
            Popped::Empty => {}
        }
    }
    if t.torn != 0 {
        return Err(format!("{} torn items (words of two different items)", t.torn));
    }
    if !bounded && t.full != 0 {
        return Err(format!("an unbounded structure answered \"full\" {} times", t.full));
    }
    check("pushes accepted + pushes answered full", t.pushed + t.full, s)?;
    check("pops that found an item + pops answered empty", t.popped + t.empty, s)?;
    if t.pushed != t.popped + left_n {
        return Err(format!(
            "items lost or doubled: {} pushed, but {} popped + {left_n} left = {}",
            t.pushed,
            t.popped,
            t.popped + left_n
        ));
    }
    if t.pushed_sum != t.popped_sum.wrapping_add(left_sum) {
        return Err(format!(
            "item values changed: the values pushed sum to {:#x}, the values popped and left to {:#x}",
            t.pushed_sum,
            t.popped_sum.wrapping_add(left_sum)
        ));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Locks: lock, update two fields, unlock.

/// The value behind every lock: two fields the critical section updates.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Pair {
    /// +1 per operation.
    count: u64,
    /// +2 per operation.
    other: u64,
}

impl Pair {
    /// The critical section.
    #[inline(always)]
    fn bump(&mut self) {
        self.count += 1;
        self.other += 2;
    }

    fn add(self, o: Pair) -> Pair {
        Pair { count: self.count + o.count, other: self.other + o.other }
    }
}

/// A lock (or a set of locks) measured by [`locked`].
trait Locked: Sync {
    /// Lock, run `f` on the locked value, unlock.
    fn with(&self, f: impl FnOnce(&mut Pair));
    /// The sum of every locked value, once the threads have ended.
    fn total(&mut self) -> Pair;
}

impl Locked for SpinLock<Pair> {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut Pair)) {
        f(&mut self.lock());
    }
    fn total(&mut self) -> Pair {
        self.iter_mut().fold(Pair::default(), |a, p| a.add(*p))
    }
}

/// A mutex of a [`Pair`]: `parking_lot::Mutex` or `std::sync::Mutex`.
trait PairMutex: Sync {
    fn new_pair() -> Self;
    fn with(&self, f: impl FnOnce(&mut Pair));
    fn get(&mut self) -> Pair;
}

impl PairMutex for parking_lot::Mutex<Pair> {
    fn new_pair() -> Self {
        parking_lot::Mutex::new(Pair::default())
    }
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut Pair)) {
        f(&mut self.lock());
    }
    fn get(&mut self) -> Pair {
        *self.get_mut()
    }
}

impl PairMutex for Mutex<Pair> {
    fn new_pair() -> Self {
        Mutex::new(Pair::default())
    }
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut Pair)) {
        f(&mut self.lock().unwrap_or_else(PoisonError::into_inner));
    }
    fn get(&mut self) -> Pair {
        *self.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One shared mutex.
impl<M: PairMutex> Locked for Padded<M> {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut Pair)) {
        self.0.with(f);
    }
    fn total(&mut self) -> Pair {
        self.0.get()
    }
}

/// One cache-padded mutex per possible CPU, the one of the CPU `sched_getcpu()` names locked.
struct PerCpuLocks<M>(Box<[Padded<M>]>);

impl<M: PairMutex> PerCpuLocks<M> {
    fn new() -> Self {
        PerCpuLocks((0..restartable::possible_cpus()).map(|_| Padded(M::new_pair())).collect())
    }
}

impl<M: PairMutex> Locked for PerCpuLocks<M> {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut Pair)) {
        // `sched_getcpu` is below the possible CPUs (0 if the call failed); the fallback to the
        // first lock only spares a panic path.
        let cpu = restartable::sys::sched_getcpu();
        self.0.get(cpu).unwrap_or(&self.0[0]).0.with(f);
    }
    fn total(&mut self) -> Pair {
        self.0.iter_mut().fold(Pair::default(), |a, p| a.add(p.0.get()))
    }
}

/// Each thread, as one operation, locks, [bumps](Pair::bump) and unlocks; then the fields'
/// totals must equal what the operations added.
fn locked<L: Locked>(mut l: L, threads: usize, duration: Duration) -> Result<Sample, String> {
    let s = run_threads(threads, duration, |stop| spin(stop, || l.with(Pair::bump)));
    let total = l.total();
    check("the locked counts' sum", total.count, s)?;
    if total.other != 2 * s.ops {
        return Err(format!(
            "the locked second fields sum to {}, not 2 x {} operations (a torn critical section)",
            total.other, s.ops
        ));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Reference rows: what the rows above are made of, measured the same way, so that the table
// shows why one row is ahead of another (an allocation per item; the cost of one rseq section
// against one uncontended or contended `lock cmpxchg` on this CPU).

/// Allocate a `Box<u64>` carrying a value and free it; the values read back must sum to the
/// values written.
fn box_alloc(threads: usize, duration: Duration) -> Result<Sample, String> {
    let (written, read) = (AtomicU64::new(0), AtomicU64::new(0));
    let s = run_threads(threads, duration, |stop| {
        let (mut w, mut r, mut v) = (0u64, 0u64, 0u64);
        let n = spin(stop, || {
            v += 1;
            w = w.wrapping_add(v);
            let b = black_box(Box::new(v));
            r = r.wrapping_add(*b);
        });
        written.fetch_add(w, Relaxed);
        read.fetch_add(r, Relaxed);
        n
    });
    if written.load(Relaxed) != read.load(Relaxed) {
        return Err("the boxed values read back differ from the values written".into());
    }
    Ok(s)
}

/// Two raw rseq sections (with the guard check and the retry loop) adding 1 to the current
/// CPU's slot; the slots must sum to twice the operations.
fn rseq_pair(threads: usize, duration: Duration) -> Result<Sample, String> {
    let slots = RawSlots::new();
    let s = run_threads(threads, duration, |stop| {
        spin(stop, || {
            raw_add::<true>(&slots);
            raw_add::<true>(&slots);
        })
    });
    if slots.sum() != 2 * s.ops {
        return Err(format!("the slots sum to {}, not 2 x {} operations", slots.sum(), s.ops));
    }
    Ok(s)
}

/// Two compare-and-swap loops each adding 1 to one shared word; it must end at twice the
/// operations.
fn cas_pair(threads: usize, duration: Duration) -> Result<Sample, String> {
    let word = Padded(AtomicU64::new(0));
    let cas_add = || {
        let mut cur = word.0.load(Relaxed);
        while let Err(now) = word.0.compare_exchange_weak(cur, cur + 1, AcqRel, Relaxed) {
            cur = now;
        }
    };
    let s = run_threads(threads, duration, |stop| {
        spin(stop, || {
            cas_add();
            cas_add();
        })
    });
    let total = word.0.load(Relaxed);
    if total != 2 * s.ops {
        return Err(format!("the shared word is {total}, not 2 x {} operations", s.ops));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::suite::BATCH;

    #[test]
    fn every_impl_counts_exactly() {
        for i in Impl::ALL {
            for threads in [1, 3] {
                let s = i.measure(threads, Duration::from_millis(5)).unwrap();
                assert_eq!(s.threads, threads);
                assert!(s.ops >= BATCH * threads as u64, "{i:?}: {s:?}");
                assert!(s.ns_per_op() > 0.0 && s.mops() > 0.0, "{i:?}: {s:?}");
            }
        }
    }

    #[test]
    fn the_required_keys_and_unique_ones() {
        let keys: Vec<_> = Impl::ALL.iter().map(|i| i.key()).collect();
        for k in [
            "stack",
            "segqueue",
            "mutex-vec",
            "buffer",
            "arrayqueue",
            "memcpy-buffer",
            "arrayqueue-copy",
            "spinlock",
            "parking-lot-mutex",
            "std-mutex",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len());
    }

    fn sample(ops: u64) -> Sample {
        Sample { threads: 1, elapsed_ns: 1000, ops }
    }

    #[test]
    fn item_checks_catch_losses_torn_items_and_bad_answers() {
        let ok = Tally { pushed: 3, full: 1, popped: 2, empty: 2, torn: 0, pushed_sum: 6, popped_sum: 1 };
        let left = [Popped::Item(5)];
        assert!(check_items(ok, &left, true, sample(4)).is_ok());
        // "full" from an unbounded structure.
        assert!(check_items(ok, &left, false, sample(4)).unwrap_err().contains("unbounded"));
        // An item lost, or one doubled.
        assert!(check_items(ok, &[], true, sample(4)).unwrap_err().contains("lost or doubled"));
        let e = check_items(ok, &[Popped::Item(5), Popped::Item(0)], true, sample(4)).unwrap_err();
        assert!(e.contains("lost or doubled"), "{e}");
        // A value changed on the way.
        assert!(check_items(ok, &[Popped::Item(4)], true, sample(4)).unwrap_err().contains("values"));
        // A torn item, popped or left.
        assert!(check_items(Tally { torn: 1, ..ok }, &left, true, sample(4)).unwrap_err().contains("torn"));
        assert!(check_items(ok, &[Popped::Torn, Popped::Item(5)], true, sample(4)).unwrap_err().contains("torn"));
        // Attempts that do not add up to the operations.
        assert!(check_items(ok, &left, true, sample(5)).unwrap_err().contains("count mismatch"));
        assert!(matches!(item_value(&[1, 1, 1, 1, 1, 1, 1, 2]), Popped::Torn));
        assert!(matches!(item_value(&[7; 8]), Popped::Item(7)));
    }

    #[test]
    fn lock_checks_catch_a_lost_update() {
        /// A "lock" that loses every other update to its second field.
        struct Lossy(Mutex<(Pair, bool)>);
        impl Locked for Lossy {
            fn with(&self, f: impl FnOnce(&mut Pair)) {
                let mut g = self.0.lock().unwrap();
                let (p, skip) = &mut *g;
                let before = *p;
                f(p);
                if *skip {
                    p.other = before.other;
                }
                *skip = !*skip;
            }
            fn total(&mut self) -> Pair {
                self.0.get_mut().unwrap().0
            }
        }
        let e = locked(Lossy(Mutex::new((Pair::default(), false))), 2, Duration::from_millis(2)).unwrap_err();
        assert!(e.contains("second fields"), "{e}");
    }
}
