//! The strided per-CPU pool against the padded layout it replaced (one 128-byte slot per
//! possible CPU, as `crossbeam_utils::CachePadded`), side by side in one run:
//!
//! - creation: `Counter::new()` (a pool object: nothing written) against a boxed slice of padded
//!   `AtomicU64`s (every slot written), and a drop of each;
//! - access: one add to the current CPU's copy, at 1 thread and at 2 x the online CPUs:
//!   `Counter::add` (pool slot, guard in the slot's line) against the same raw rseq op on the
//!   padded slice;
//! - memory: printed before the timings, from `/proc/self/statm`, for 100,000 objects of each
//!   kind, new and after one add each (memory is not a time, so criterion does not report it).
//!
//! ```text
//! cargo bench -p restartable --bench pool
//! ```

mod common;
use common::parallel;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use restartable::Counter;
use restartable::ops::{self, Cpu, Outcome};

/// A value alone on its cache line pair (128 bytes, as `crossbeam_utils::CachePadded`).
#[repr(align(128))]
struct Padded<T>(T);

/// The padded layout: one slot per possible CPU.
fn padded() -> Box<[Padded<AtomicUsize>]> {
    (0..restartable::possible_cpus()).map(|_| Padded(AtomicUsize::new(0))).collect()
}

/// Add 1 to the current CPU's padded slot with the raw op (retry on abort; a stopped CPU or no
/// rseq falls back to an atomic add, which never happens here unless rseq is missing).
#[inline(always)]
fn padded_add(slots: &[Padded<AtomicUsize>]) {
    loop {
        let cpu = ops::current_index::<Cpu>();
        let slot = &slots[cpu].0;
        // SAFETY: `slot` is CPU `cpu`'s; it is only written by sections on `cpu` or atomically.
        match unsafe { ops::load_add_store::<Cpu>(slot, 1, cpu) } {
            Outcome::Committed => return,
            Outcome::Aborted => continue,
            _ => {
                slot.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

/// The process's resident memory in bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|f| f.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn memory() {
    const N: usize = 100_000;
    let before = resident();
    let counters: Vec<Counter> = (0..N).map(|_| Counter::new()).collect();
    let new = resident().saturating_sub(before) / N;
    counters.iter().for_each(|c| c.add(1));
    let used = resident().saturating_sub(before) / N;
    drop(counters);
    let before = resident();
    let slices: Vec<Box<[Padded<AtomicUsize>]>> = (0..N).map(|_| padded()).collect();
    let padded_new = resident().saturating_sub(before) / N;
    slices.iter().for_each(|s| padded_add(s));
    let padded_used = resident().saturating_sub(before) / N;
    drop(slices);
    eprintln!(
        "memory per object ({N} objects, {} possible CPUs): pool Counter {new} B new, {used} B after one add each; \
         padded slots {padded_new} B new, {padded_used} B after one add each",
        restartable::possible_cpus()
    );
}

fn creation(c: &mut Criterion) {
    memory();
    let mut g = c.benchmark_group("create-and-drop");
    g.bench_function("Counter::new (pool)", |b| {
        b.iter_batched(|| (), |()| black_box(Counter::new()), BatchSize::SmallInput)
    });
    g.bench_function("padded slots (Box<[CachePadded<AtomicUsize>]>)", |b| {
        b.iter_batched(|| (), |()| black_box(padded()), BatchSize::SmallInput)
    });
    g.finish();
}

fn access(c: &mut Criterion) {
    for threads in [1, 2 * restartable::sys::online_cpus()] {
        let mut g = c.benchmark_group(format!("add-{threads}-threads"));
        let counter = Counter::new();
        let asked = AtomicU64::new(0);
        g.bench_function("Counter::add (pool slot)", |b| {
            b.iter_custom(|iters| {
                asked.fetch_add(iters * threads as u64, Relaxed);
                parallel(threads, iters, &|n| (0..n).for_each(|_| counter.add(black_box(1))))
            })
        });
        let slots = padded();
        let asked_padded = AtomicU64::new(0);
        g.bench_function("raw add on padded slots", |b| {
            b.iter_custom(|iters| {
                asked_padded.fetch_add(iters * threads as u64, Relaxed);
                parallel(threads, iters, &|n| (0..n).for_each(|_| padded_add(&slots)))
            })
        });
        g.finish();
        // Nothing lost on either side.
        assert_eq!(counter.sum(), asked.load(Relaxed));
        assert_eq!(slots.iter().map(|s| s.0.load(Relaxed) as u64).sum::<u64>(), asked_padded.load(Relaxed));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = creation, access
}
criterion_main!(benches);
