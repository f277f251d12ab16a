//! The slow path's costs, as latency distributions (median and p99, microseconds): the rseq
//! fence alone (this CPU, another CPU, all CPUs), and `OpVec::run_on` of a small vector (a
//! compare and an add) on this CPU and on another one — while another thread keeps running
//! fast paths on every CPU, as a remote drain would meet them.
//!
//! The measuring thread is pinned to CPU 0 and a thread adding to a `Counter` to the last CPU,
//! so "another CPU" always runs one of our threads (the fence must interrupt it), as a remote
//! drain of a busy CPU would find it.
//!
//! A plain harness (not criterion): the quantity of interest is the tail, reported directly.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use restartable::opv::OpVec;
use restartable::{Counter, guard};

const SAMPLES: usize = 20_000;

fn stats(name: &str, mut f: impl FnMut()) {
    for _ in 0..1_000 {
        f(); // warm up
    }
    let mut ns: Vec<u64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!("{name:<44} median {:>7.2} us   p99 {:>7.2} us   max {:>8.1} us", q(0.5), q(0.99), q(1.0));
}

/// Pin the calling thread to `cpu` (best effort: a benchmark, not a test).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we don't need.
    println!("{}", restartable::status().mode);
    let cpus = restartable::possible_cpus();
    let slots: Vec<AtomicUsize> = (0..cpus).map(|_| AtomicUsize::new(0)).collect();
    let expect = AtomicU64::new(0);
    let counter = Counter::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Background fast paths, so fences and stops meet live critical sections.
        s.spawn(|| {
            pin(cpus - 1);
            while !done.load(Relaxed) {
                for _ in 0..1000 {
                    counter.add(1);
                }
            }
        });
        pin(0);
        let here = || restartable::current_cpu();
        let other = || cpus - 1;
        stats("fence: this CPU", || guard::fence(here()).unwrap());
        stats("fence: another CPU", || guard::fence(other()).unwrap());
        stats("fence: all CPUs", || guard::fence_all().unwrap());
        stats("stop + restart (guard + fence): another CPU", || {
            drop(guard::stop::<restartable::ops::Cpu>(other()).unwrap())
        });
        let run = |cpu: usize| {
            let slot = &slots[cpu];
            let mut v = OpVec::new();
            let e = 0u64;
            v.compare_eq_word(&expect, &e).add_word(slot, 1);
            // SAFETY: the slots and `expect` are live and only touched by vectors.
            unsafe { v.run_on(black_box(cpu)) }.unwrap();
        };
        stats("OpVec::run_on (compare + add): this CPU", || run(here()));
        stats("OpVec::run_on (compare + add): another CPU", || run(other()));
        done.store(true, Relaxed);
    });
    let total: usize = slots.iter().map(|s| s.load(Relaxed)).sum();
    assert_eq!(total, 2 * (SAMPLES + 1_000), "every vector ran exactly once");
}
