//! One thread, side by side in one run: the rseq `load_add_store` (CPU lookup, guard check and
//! retry loop included), the same without the guard check (what the check costs), a plain thread-local increment (the floor), and `lock xadd`
//! (`AtomicUsize::fetch_add`) on one shared word.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use restartable::ops::{self, Cpu, MmCid, Outcome};

#[repr(align(128))]
struct Slot(AtomicUsize);

thread_local! {
    static LOCAL: Cell<usize> = const { Cell::new(0) };
}

fn counters(c: &mut Criterion) {
    let slots: Vec<Slot> = (0..restartable::possible_cpus()).map(|_| Slot(AtomicUsize::new(0))).collect();
    let shared = AtomicUsize::new(0);
    let mut g = c.benchmark_group("add-1-thread");
    g.bench_function("rseq load_add_store<Cpu>", |b| {
        b.iter(|| {
            loop {
                let cpu = restartable::current_cpu();
                // SAFETY: slot `cpu` is only written by ops indexed by `cpu`.
                match unsafe { ops::load_add_store::<Cpu>(&slots[cpu].0, black_box(1), cpu) } {
                    Outcome::Committed => break,
                    Outcome::Aborted => continue,
                    _ => {
                        slots[cpu].0.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        })
    });
    g.bench_function("rseq load_add_store<Cpu> without guard check", |b| {
        b.iter(|| {
            loop {
                let cpu = restartable::current_cpu();
                // SAFETY: slot `cpu` is only written by ops indexed by `cpu`; nothing in this
                // benchmark takes the slow path on these slots.
                match unsafe { ops::bench_only::load_add_store_unguarded(&slots[cpu].0, black_box(1), cpu) } {
                    Outcome::Committed => break,
                    Outcome::Aborted => continue,
                    _ => {
                        slots[cpu].0.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        })
    });
    if restartable::current_mm_cid().is_some() {
        g.bench_function("rseq load_add_store<MmCid>", |b| {
            b.iter(|| {
                loop {
                    let cid = restartable::current_mm_cid().unwrap_or(0);
                    // SAFETY: slot `cid` is only written by ops indexed by `cid`.
                    match unsafe { ops::load_add_store::<MmCid>(&slots[cid].0, black_box(1), cid) } {
                        Outcome::Committed => break,
                        Outcome::Aborted => continue,
                        _ => {
                            slots[cid].0.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        });
    }
    let counter = restartable::Counter::new();
    g.bench_function("Counter::add", |b| b.iter(|| counter.add(black_box(1))));
    g.bench_function("thread-local increment (floor)", |b| {
        b.iter(|| LOCAL.with(|l| l.set(l.get().wrapping_add(black_box(1)))))
    });
    g.bench_function("AtomicUsize::fetch_add (lock xadd)", |b| {
        b.iter(|| shared.fetch_add(black_box(1), Ordering::Relaxed))
    });
    g.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);
