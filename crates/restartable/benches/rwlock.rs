//! Read-mostly locks side by side in one run: `restartable::RwLock<T>`, `std::sync::RwLock<T>`,
//! `parking_lot::RwLock<T>`, `crossbeam_utils::sync::ShardedLock<T>` and an
//! `arc_swap::ArcSwap<T>` load, at 1 thread and at 2x and 4x the online CPUs, with 0%, 0.1% and
//! 1% writes; then one uncontended write lock + unlock of each.
//!
//! One operation is a read lock, a look at two fields and the unlock, except every 1000th /
//! 100th operation of a thread in the `0.1%` / `1%` groups, which write-locks and updates both
//! fields (`ArcSwap`: an `rcu` storing a new `Arc`). Every read checks that the fields agree
//! (`b == 2a`, which writers keep). As in `benches/collections.rs`, `threads` threads start
//! together, each performs `iters` operations, and the slowest thread's time is reported: a
//! figure is the time per operation *per thread*.
//!
//! ```text
//! cargo bench -p restartable --bench rwlock
//! cargo bench -p restartable --bench rwlock -- --warm-up-time 0.2 --measurement-time 0.5 read-0
//! ```
//!
//! `restartable bench --rwlock` measures the same rows, interleaved in rounds, with exact
//! checks and the write latency's median and p99.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Barrier, PoisonError, RwLock as StdRwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_utils::sync::ShardedLock;
use restartable::RwLock;

/// Writers keep `b == 2 * a`.
#[derive(Debug, Default, Clone, Copy)]
struct Pair {
    a: u64,
    b: u64,
}

impl Pair {
    #[inline(always)]
    fn bump(&mut self) {
        self.a += 1;
        self.b += 2;
    }
    #[inline(always)]
    fn check(&self) {
        assert_eq!(black_box(self.b), 2 * black_box(self.a), "a reader saw a half-written pair");
    }
}

/// A lock (or an RCU pointer) of a [`Pair`].
trait ReadMostly: Sync {
    fn read_check(&self);
    fn write(&self);
}

impl ReadMostly for RwLock<Pair> {
    #[inline(always)]
    fn read_check(&self) {
        self.read().check();
    }
    #[inline(always)]
    fn write(&self) {
        RwLock::write(self).bump();
    }
}

impl ReadMostly for StdRwLock<Pair> {
    #[inline(always)]
    fn read_check(&self) {
        self.read().unwrap_or_else(PoisonError::into_inner).check();
    }
    #[inline(always)]
    fn write(&self) {
        StdRwLock::write(self).unwrap_or_else(PoisonError::into_inner).bump();
    }
}

impl ReadMostly for parking_lot::RwLock<Pair> {
    #[inline(always)]
    fn read_check(&self) {
        self.read().check();
    }
    #[inline(always)]
    fn write(&self) {
        parking_lot::RwLock::write(self).bump();
    }
}

impl ReadMostly for ShardedLock<Pair> {
    #[inline(always)]
    fn read_check(&self) {
        self.read().unwrap_or_else(PoisonError::into_inner).check();
    }
    #[inline(always)]
    fn write(&self) {
        ShardedLock::write(self).unwrap_or_else(PoisonError::into_inner).bump();
    }
}

impl ReadMostly for ArcSwap<Pair> {
    #[inline(always)]
    fn read_check(&self) {
        self.load().check();
    }
    #[inline(always)]
    fn write(&self) {
        self.rcu(|p| {
            let mut n = **p;
            n.bump();
            n
        });
    }
}

/// `threads` threads start together and each runs `iters` operations of `lock` (a write every
/// `every`-th, staggered between threads); the slowest thread's time.
fn parallel(threads: usize, iters: u64, lock: &impl ReadMostly, every: Option<u64>) -> Duration {
    let start = Barrier::new(threads);
    let next = AtomicU64::new(0);
    let every = every.unwrap_or(u64::MAX);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    // A countdown (a division per operation would cost as much as a read).
                    let me = next.fetch_add(1, Relaxed);
                    let mut left = every - (me * (every / threads as u64)) % every;
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        left -= 1;
                        if left == 0 {
                            left = every;
                            lock.write();
                        } else {
                            lock.read_check();
                        }
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a benchmark thread panicked")).max().unwrap_or_default()
    })
}

fn case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    lock: &impl ReadMostly,
    every: Option<u64>,
) {
    g.bench_function(name, |b| b.iter_custom(|iters| parallel(threads, iters, lock, every)));
}

fn reads(c: &mut Criterion) {
    let cpus = restartable::sys::online_cpus();
    for (mix, every) in [("0", None), ("0.1", Some(1000)), ("1", Some(100))] {
        for threads in [1, 2 * cpus, 4 * cpus] {
            let mut g = c
                .benchmark_group(format!("read-{mix}%-writes-{threads}-thread{}", if threads == 1 { "" } else { "s" }));
            case(&mut g, "restartable RwLock", threads, &RwLock::new(Pair::default()), every);
            case(&mut g, "std RwLock", threads, &StdRwLock::new(Pair::default()), every);
            case(&mut g, "parking_lot RwLock", threads, &parking_lot::RwLock::new(Pair::default()), every);
            case(&mut g, "crossbeam ShardedLock", threads, &ShardedLock::new(Pair::default()), every);
            case(&mut g, "ArcSwap load", threads, &ArcSwap::from_pointee(Pair::default()), every);
            g.finish();
        }
    }
}

/// One uncontended write lock + unlock (criterion's mean and spread; `restartable bench
/// --rwlock` reports the median and p99 of single calls).
fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("write-uncontended");
    fn one(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, lock: impl ReadMostly) {
        lock.write();
        g.bench_function(name, |b| b.iter(|| lock.write()));
        lock.read_check();
    }
    one(&mut g, "restartable RwLock", RwLock::new(Pair::default()));
    one(&mut g, "std RwLock", StdRwLock::new(Pair::default()));
    one(&mut g, "parking_lot RwLock", parking_lot::RwLock::new(Pair::default()));
    one(&mut g, "crossbeam ShardedLock", ShardedLock::new(Pair::default()));
    one(&mut g, "ArcSwap rcu", ArcSwap::from_pointee(Pair::default()));
    g.finish();
}

criterion_group!(benches, reads, writes);
criterion_main!(benches);
