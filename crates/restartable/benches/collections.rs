//! The collections against their usual alternatives, side by side in one run, at 1 thread and at
//! 2 x the online CPUs:
//!
//! - counters: `Counter::add`, the raw `load_add_store::<Cpu>` (retry loop included),
//!   `AtomicU64::fetch_add` on one shared word, and per-CPU atomics indexed by `sched_getcpu`;
//! - stacks (a push + pop pair): `Stack<u64>` (items in recycled per-CPU chunks),
//!   `crossbeam_queue::SegQueue<u64>`, and `Mutex<Vec<u64>>`;
//! - bounded buffers (a push + pop pair of a `Box`): `Buffer<u64>` and
//!   `crossbeam_queue::ArrayQueue<Box<u64>>`;
//! - copied items (a push + pop pair of a 64-byte item): `MemcpyBuffer<[u64; 8]>` and
//!   `crossbeam_queue::ArrayQueue<[u64; 8]>`;
//! - batches (time per item pushed and popped): each collection's single push + pop beside its
//!   batch operations moving 16 items per critical section (`Stack::append` +
//!   `Stack::pop_batch_into`, `Buffer::push_batch` + `pop_batch`, `MemcpyBuffer::push_batch` +
//!   `pop_batch`); the issue's target is at least 3x fewer ns per item in batches of 16;
//! - locks (lock, add to two fields, unlock): `SpinLock<T>` (one per CPU), one cache-padded
//!   `parking_lot::Mutex<T>` / `std::sync::Mutex<T>` per CPU indexed by `sched_getcpu`, and one
//!   shared mutex of each kind.
//!
//! Every case, at every thread count, runs through the same harness ([`parallel`]): `threads`
//! threads start together, each performs `iters` operations, and the slowest thread's time is
//! reported, so a figure is the time per operation *per thread* (as in `restartable bench`).
//!
//! ```text
//! cargo bench -p restartable --bench collections
//! cargo bench -p restartable --bench collections -- --warm-up-time 0.2 --measurement-time 0.5
//! ```

mod common;
use common::parallel;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_queue::{ArrayQueue, SegQueue};
use restartable::ops::{self, Cpu, Outcome};
use restartable::{Buffer, Counter, MemcpyBuffer, SpinLock, Stack};

/// Items each CPU's `Buffer` (and, per thread, the `ArrayQueue`) can hold.
const CAPACITY: usize = 64;

/// A value alone on its cache line pair (128 bytes, as `crossbeam_utils::CachePadded`).
#[repr(align(128))]
struct Padded<T>(T);

/// One benchmark of the group: `body(iters)` on every thread, timed by [`parallel`].
fn case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    body: impl Fn(u64) + Sync,
) {
    g.bench_function(name, |b| b.iter_custom(|iters| parallel(threads, iters, &body)));
}

fn thread_counts() -> [usize; 2] {
    [1, 2 * restartable::sys::online_cpus()]
}

fn label(family: &str, threads: usize) -> String {
    format!("{family}-{threads}-thread{}", if threads == 1 { "" } else { "s" })
}

/// Add 1 to the current CPU's slot with the raw op; `Aborted` retries, `Stopped` (no rseq, or
/// a CPU stopped by someone's slow path: neither happens in this benchmark unless rseq is
/// missing, and then every thread takes this path) falls back to `fetch_add`.
#[inline(always)]
fn raw_add(slots: &[Padded<AtomicUsize>]) {
    loop {
        let cpu = restartable::current_cpu();
        let slot = &slots[cpu % slots.len()].0;
        // SAFETY: slot `cpu` is written only by ops indexed by `cpu` (the modulo changes
        // nothing: every CPU number is below `possible_cpus`), or by the atomic fallback when no
        // section can commit on it.
        match unsafe { ops::load_add_store::<Cpu>(slot, black_box(1), cpu) } {
            Outcome::Committed => return,
            Outcome::Aborted => continue,
            Outcome::Stopped | Outcome::CompareFailed => {
                slot.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

fn counters(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(label("counter", threads));

        // Each case counts the adds it was asked for (criterion's filter may skip any of them).
        let asked: [AtomicU64; 4] = Default::default();
        let counted = |k: usize, iters: u64| asked[k].fetch_add(iters, Relaxed);

        let counter = Counter::new();
        case(&mut g, "Counter::add", threads, |iters| {
            (0..iters).for_each(|_| counter.add(black_box(1)));
            counted(0, iters);
        });

        let slots: Vec<Padded<AtomicUsize>> =
            (0..restartable::possible_cpus()).map(|_| Padded(AtomicUsize::new(0))).collect();
        case(&mut g, "raw load_add_store<Cpu>", threads, |iters| {
            (0..iters).for_each(|_| raw_add(&slots));
            counted(1, iters);
        });

        let shared = AtomicU64::new(0);
        case(&mut g, "shared AtomicU64::fetch_add", threads, |iters| {
            (0..iters).for_each(|_| {
                shared.fetch_add(black_box(1), Relaxed);
            });
            counted(2, iters);
        });

        let percpu: Vec<Padded<AtomicU64>> =
            (0..restartable::possible_cpus()).map(|_| Padded(AtomicU64::new(0))).collect();
        case(&mut g, "per-CPU atomics (sched_getcpu)", threads, |iters| {
            (0..iters).for_each(|_| {
                let cpu = restartable::sys::sched_getcpu();
                percpu[cpu % percpu.len()].0.fetch_add(black_box(1), Relaxed);
            });
            counted(3, iters);
        });
        g.finish();

        // Nothing was lost: every implementation holds exactly the adds its case performed.
        let raw: usize = slots.iter().map(|s| s.0.load(Relaxed)).sum();
        let atomics: u64 = percpu.iter().map(|s| s.0.load(Relaxed)).sum();
        let held = [counter.sum(), raw as u64, shared.load(Relaxed), atomics];
        let asked = asked.map(|a| a.into_inner());
        assert_eq!(held, asked, "adds held vs adds performed: a lost update");
    }
}

fn stacks(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(label("stack-push-pop", threads));

        // `pop` sees only the current CPU's list: after a migration between the two calls it
        // may find nothing (or another thread's item); the stack's `Drop` frees what is left.
        let stack: Stack<u64> = Stack::new();
        case(&mut g, "Stack", threads, |iters| {
            for i in 0..iters {
                stack.push(black_box(i));
                black_box(stack.pop());
            }
        });

        let seg: SegQueue<u64> = SegQueue::new();
        case(&mut g, "crossbeam SegQueue", threads, |iters| {
            for i in 0..iters {
                seg.push(black_box(i));
                black_box(seg.pop());
            }
        });

        let vec: Mutex<Vec<u64>> = Mutex::new(Vec::with_capacity(1024));
        case(&mut g, "Mutex<Vec>", threads, |iters| {
            for i in 0..iters {
                vec.lock().unwrap_or_else(PoisonError::into_inner).push(black_box(i));
                black_box(vec.lock().unwrap_or_else(PoisonError::into_inner).pop());
            }
        });
        g.finish();
    }
}

fn buffers(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(label("buffer-push-pop", threads));

        // Each thread moves one box in and out; a new one is made only when a pop found
        // nothing (a migration between push and pop).
        let buffer: Buffer<u64> = Buffer::with_capacity(CAPACITY);
        case(&mut g, "Buffer", threads, |iters| {
            let mut spare = Some(Box::new(0u64));
            for _ in 0..iters {
                let item = spare.take().unwrap_or_else(|| Box::new(0));
                if let Err(item) = buffer.push(black_box(item)) {
                    spare = Some(item);
                }
                if let Some(item) = buffer.pop() {
                    spare = Some(black_box(item));
                }
            }
        });

        let queue: ArrayQueue<Box<u64>> = ArrayQueue::new(CAPACITY * threads);
        case(&mut g, "crossbeam ArrayQueue", threads, |iters| {
            let mut spare = Some(Box::new(0u64));
            for _ in 0..iters {
                let item = spare.take().unwrap_or_else(|| Box::new(0));
                if let Err(item) = queue.push(black_box(item)) {
                    spare = Some(item);
                }
                if let Some(item) = queue.pop() {
                    spare = Some(black_box(item));
                }
            }
        });
        g.finish();
    }
}

fn copies(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(label("copy-64-bytes-push-pop", threads));

        // A full or empty answer (after a migration between push and pop) is an answer too.
        let buffer: MemcpyBuffer<[u64; 8]> = MemcpyBuffer::with_capacity(CAPACITY);
        case(&mut g, "MemcpyBuffer<[u64; 8]>", threads, |iters| {
            for i in 0..iters {
                let _ = black_box(buffer.push(black_box([i; 8])));
                black_box(buffer.pop());
            }
        });

        let queue: ArrayQueue<[u64; 8]> = ArrayQueue::new(CAPACITY * restartable::possible_cpus());
        case(&mut g, "crossbeam ArrayQueue<[u64; 8]>", threads, |iters| {
            for i in 0..iters {
                let _ = black_box(queue.push(black_box([i; 8])));
                black_box(queue.pop());
            }
        });
        g.finish();
    }
}

/// Items per batch in the `batch-*` group.
const BATCH: usize = 16;

/// Per item: one push + one pop, single or in batches of [`BATCH`] (`iters` counts items).
fn batches(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(label("batch-16-per-item", threads));

        let stack: Stack<u64> = Stack::new();
        case(&mut g, "Stack single", threads, |iters| {
            for i in 0..iters {
                stack.push(black_box(i));
                black_box(stack.pop());
            }
        });
        case(&mut g, "Stack batch", threads, |iters| {
            let mut items: Vec<u64> = Vec::with_capacity(BATCH);
            for i in 0..iters.div_ceil(BATCH as u64) {
                items.clear();
                items.extend((0..BATCH as u64).map(|k| i + k));
                stack.append(black_box(&mut items));
                stack.pop_batch_into(BATCH, &mut items);
                black_box(&items);
            }
        });

        let buffer: Buffer<u64> = Buffer::with_capacity(CAPACITY);
        case(&mut g, "Buffer single", threads, |iters| {
            let mut spare = Some(Box::new(0u64));
            for _ in 0..iters {
                let item = spare.take().unwrap_or_else(|| Box::new(0));
                if let Err(item) = buffer.push(black_box(item)) {
                    spare = Some(item);
                }
                if let Some(item) = buffer.pop() {
                    spare = Some(black_box(item));
                }
            }
        });
        case(&mut g, "Buffer batch", threads, |iters| {
            let mut boxes: Vec<Box<u64>> = (0..BATCH as u64).map(Box::new).collect();
            let mut out: Vec<Box<u64>> = Vec::with_capacity(BATCH);
            for _ in 0..iters.div_ceil(BATCH as u64) {
                buffer.push_batch(black_box(&mut boxes));
                buffer.pop_batch(BATCH, &mut out);
                // Keep BATCH boxes circulating (fewer after a migration: top up).
                boxes.append(&mut out);
                boxes.truncate(BATCH);
                while boxes.len() < BATCH {
                    boxes.push(Box::new(0));
                }
            }
        });

        let copies: MemcpyBuffer<[u64; 8]> = MemcpyBuffer::with_capacity(CAPACITY);
        case(&mut g, "MemcpyBuffer<[u64; 8]> single", threads, |iters| {
            for i in 0..iters {
                let _ = black_box(copies.push(black_box([i; 8])));
                black_box(copies.pop());
            }
        });
        case(&mut g, "MemcpyBuffer<[u64; 8]> batch", threads, |iters| {
            let items: Vec<[u64; 8]> = (0..BATCH as u64).map(|k| [k; 8]).collect();
            let mut out: Vec<[u64; 8]> = Vec::with_capacity(BATCH);
            for _ in 0..iters.div_ceil(BATCH as u64) {
                black_box(copies.push_batch(black_box(&items)));
                out.clear();
                copies.pop_batch(BATCH, &mut out);
                black_box(&out);
            }
        });
        g.finish();
    }
}

/// The value behind every lock; the critical section adds to both fields.
#[derive(Debug, Default)]
struct Pair {
    count: u64,
    other: u64,
}

impl Pair {
    #[inline(always)]
    fn bump(&mut self) {
        self.count += 1;
        self.other += 2;
    }
}

/// One cache-padded lock per possible CPU.
fn per_cpu<M>(new: impl Fn() -> M) -> Vec<Padded<M>> {
    (0..restartable::possible_cpus()).map(|_| Padded(new())).collect()
}

/// The lock of the CPU `sched_getcpu` names.
#[inline(always)]
fn of_this_cpu<M>(locks: &[Padded<M>]) -> &M {
    let cpu = restartable::sys::sched_getcpu();
    &locks.get(cpu).unwrap_or(&locks[0]).0
}

fn locks(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(label("lock-two-fields", threads));

        let spin: SpinLock<Pair> = SpinLock::default();
        case(&mut g, "SpinLock (per CPU)", threads, |iters| (0..iters).for_each(|_| spin.lock().bump()));

        let pl = per_cpu(|| parking_lot::Mutex::new(Pair::default()));
        case(&mut g, "parking_lot::Mutex per CPU (sched_getcpu)", threads, |iters| {
            (0..iters).for_each(|_| of_this_cpu(&pl).lock().bump())
        });

        let std = per_cpu(|| Mutex::new(Pair::default()));
        case(&mut g, "std Mutex per CPU (sched_getcpu)", threads, |iters| {
            (0..iters).for_each(|_| of_this_cpu(&std).lock().unwrap_or_else(PoisonError::into_inner).bump())
        });

        let pl_shared = Padded(parking_lot::Mutex::new(Pair::default()));
        case(&mut g, "parking_lot::Mutex, shared", threads, |iters| (0..iters).for_each(|_| pl_shared.0.lock().bump()));

        let std_shared = Padded(Mutex::new(Pair::default()));
        case(&mut g, "std Mutex, shared", threads, |iters| {
            (0..iters).for_each(|_| std_shared.0.lock().unwrap_or_else(PoisonError::into_inner).bump())
        });
        g.finish();

        // Every critical section that ran, ran whole (a cheap sanity check on the locks; a
        // filter may have skipped them all).
        let mut spin = spin;
        let mut pairs: Vec<(u64, u64)> = spin.iter_mut().map(|p| (p.count, p.other)).collect();
        pairs.extend(pl.iter().map(|m| m.0.lock()).map(|p| (p.count, p.other)));
        pairs
            .extend(std.iter().map(|m| m.0.lock().unwrap_or_else(PoisonError::into_inner)).map(|p| (p.count, p.other)));
        pairs.push((pl_shared.0.lock().count, pl_shared.0.lock().other));
        let shared = std_shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        pairs.push((shared.count, shared.other));
        assert!(pairs.iter().all(|&(count, other)| other == 2 * count), "{pairs:?}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = counters, stacks, buffers, copies, batches, locks
}
criterion_main!(benches);
