//! The strided per-CPU pool's memory promises, measured from the kernel's own accounting
//! (`/proc/self/statm` for the process, `/proc/self/pagemap` through `pool::stats` for each
//! index's range):
//!
//! - a million `Counter::new()` cost at most 40 bytes of resident memory each (the handles
//!   included), before and after every counter is used from one CPU;
//! - with every add done on one CPU, no other CPU's range gains a page;
//! - an `MmCid` structure touches only the ranges of the concurrency ids its threads ran with;
//! - freed objects are reused (the pool does not grow when objects come and go).
//!
//! Each measurement runs in a child process (this test binary again), alone, so that no other
//! test's memory is counted; every figure is printed for the log.

use std::time::{Duration, Instant};

use restartable::ops::MmCid;
use restartable::{Counter, PerCpu, pool};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

/// What a range may gain from outside the structures a test measures: with `PerCpuAlloc` as the
/// global allocator its per-CPU caches live in the pool too, and the harness's other threads
/// allocate on whatever CPU they run on (a few pages; 10,000 counters are 160 KiB).
const ALLOCATOR_SLACK: usize = if cfg!(feature = "global-percpu-alloc") { 64 << 10 } else { 0 };

const DEADLINE: Duration = Duration::from_secs(120);
const MODES: [&[(&str, &str)]; 3] =
    [&[], &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[("RESTARTABLE_FORCE_DEGRADED", "1")]];

/// Run child test `name` in every mode; each must pass before the deadline.
fn in_children(name: &str) {
    for env in MODES {
        let out = testkit::run_self_as_child_timeout(name, env, &[], DEADLINE);
        let text = testkit::describe(&out);
        assert!(out.status.success(), "{name} {env:?}:\n{text}");
        eprintln!("{name} {env:?}:\n{text}");
    }
}

/// The process's resident memory in bytes (`/proc/self/statm`, field 2, in pages).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|f| f.parse().ok()).expect("statm field 2");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn a_million_counters_in_40_bytes_each() {
    in_children("child_million_counters");
}

#[test]
fn child_million_counters() {
    if !testkit::is_child() {
        return;
    }
    const N: usize = 1_000_000;
    const LIMIT: usize = 40;
    // One CPU the thread may run on (CPU 0 may be outside a cpuset's mask).
    let cpu = testkit::affinity::pin_to_one();
    // Warm up: the first counter maps the pool and registers this thread.
    Counter::new().add(1);
    let ranges_before = pool::stats().resident;

    let before = resident();
    let started = Instant::now();
    let counters: Vec<Counter> = (0..N).map(|_| Counter::new()).collect();
    let created = started.elapsed();
    let after_new = resident();
    let per_new = after_new.saturating_sub(before) / N;
    println!(
        "created {N} counters in {created:.2?} ({:.1} ns each): {per_new} bytes resident each",
        created.as_nanos() as f64 / N as f64
    );
    assert!(per_new <= LIMIT, "{per_new} bytes per new counter (limit {LIMIT})");

    // Every counter used, all from `cpu`.
    for (k, c) in counters.iter().enumerate() {
        c.add(k as u64 + 1);
    }
    let after_use = resident();
    let per_used = after_use.saturating_sub(before) / N;
    println!("after one add each from CPU {cpu}: {per_used} bytes resident each");
    assert!(per_used <= LIMIT, "{per_used} bytes per used counter (limit {LIMIT})");
    // No lost update.
    for (k, c) in counters.iter().enumerate() {
        assert_eq!(c.sum(), k as u64 + 1);
    }

    // The other CPUs' ranges (and the spare) gained nothing; `cpu`'s gained the counters.
    let ranges_after = pool::stats().resident;
    println!("resident per range before: {ranges_before:?}, after: {ranges_after:?}");
    assert_eq!(ranges_before.len(), ranges_after.len());
    // (Degraded mode too: its atomics index by `sched_getcpu`, which says `cpu` here.) With
    // `PerCpuAlloc` as the global allocator, its own per-CPU caches also live in the pool and
    // another thread of this process (the test harness) may allocate on another CPU: a few
    // pages, nothing per counter (a million counters would be megabytes).
    let slack = ALLOCATOR_SLACK;
    assert!(ranges_after[cpu] >= ranges_before[cpu] + N * 8, "CPU {cpu}'s range holds the values");
    for r in (0..ranges_after.len()).filter(|&r| r != cpu) {
        assert!(ranges_after[r] <= ranges_before[r] + slack, "range {r} was touched: {ranges_after:?}");
    }
    // Reading every counter (sum reads all CPUs' copies) maps the zero page only.
    let sums: u64 = counters.iter().map(Counter::sum).sum();
    assert_eq!(sums, (N as u64) * (N as u64 + 1) / 2);
    let ranges_read = pool::stats().resident;
    for r in (0..ranges_after.len()).filter(|&r| r != cpu) {
        assert!(ranges_read[r] <= ranges_after[r] + slack, "reading range {r} made it resident: {ranges_read:?}");
    }
}

#[test]
fn mm_cid_touches_only_the_ids_that_ran() {
    in_children("child_mm_cid_ranges");
}

#[test]
fn child_mm_cid_ranges() {
    if !testkit::is_child() {
        return;
    }
    const N: usize = 10_000;
    if !restartable::mode().is_fast() {
        // Degraded mode has no mm_cid from the kernel: every structure indexes by CPU there.
        println!("skipped: {}", restartable::mode());
        return;
    }
    // The ids an add ran with, read before and after each one: a thread may change its id
    // between operations (migration, another thread taking its CPU's cached id), and every id
    // it held must be allowed to grow its range, but no other.
    fn add_all(counters: &[Counter<MmCid>], seen: &mut std::collections::BTreeSet<usize>) {
        for c in counters {
            seen.extend(restartable::current_mm_cid());
            c.add(1);
            seen.extend(restartable::current_mm_cid());
        }
    }
    let grown = |before: &[usize], after: &[usize]| -> std::collections::BTreeSet<usize> {
        (0..after.len()).filter(|&r| after[r] > before[r] + ALLOCATOR_SLACK).collect()
    };
    // Pinned for the one-thread part, so that its id normally stays the same throughout.
    let mask = testkit::affinity::allowed();
    testkit::affinity::pin_to_one();
    // Warm up: the first structure maps the pool.
    drop(Counter::<MmCid>::default());
    let before = pool::stats().resident;
    let counters: Vec<Counter<MmCid>> = (0..N).map(|_| Counter::<MmCid>::default()).collect();
    // One thread: only the ranges of the ids it ran with are written.
    let mut seen = std::collections::BTreeSet::new();
    add_all(&counters, &mut seen);
    let after = pool::stats().resident;
    println!("one thread (mm_cid {seen:?}): before {before:?}, after {after:?}");
    let one = grown(&before, &after);
    assert!(one.is_subset(&seen), "one thread with ids {seen:?} grew ranges {one:?}");
    assert_eq!(counters.iter().map(Counter::sum).sum::<u64>(), N as u64);

    // Three threads at once, free to move: only the ids they ran with, each below the
    // process's thread count (the harness's main thread, this one, three workers) and below
    // the CPU count, which is what bounds `mm_cid`.
    testkit::affinity::pin(&mask);
    let fresh: Vec<Counter<MmCid>> = (0..N).map(|_| Counter::<MmCid>::default()).collect();
    let before = pool::stats().resident;
    let barrier = std::sync::Barrier::new(3);
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut mine = std::collections::BTreeSet::new();
                barrier.wait();
                add_all(&fresh, &mut mine);
                barrier.wait();
                seen.lock().unwrap().extend(mine);
            });
        }
    });
    let seen = seen.into_inner().unwrap();
    let after = pool::stats().resident;
    let three = grown(&before, &after);
    println!("three threads (mm_cid {seen:?}): before {before:?}, after {after:?}");
    assert!(three.is_subset(&seen), "three threads with ids {seen:?} grew ranges {three:?}");
    let bound = 5.min(restartable::possible_cpus());
    assert!(seen.iter().all(|&id| id < bound), "ids {seen:?}, bound {bound}");
    assert_eq!(fresh.iter().map(Counter::sum).sum::<u64>(), 3 * N as u64);
}

#[test]
fn freed_objects_are_reused() {
    in_children("child_reuse");
}

#[test]
fn child_reuse() {
    if !testkit::is_child() {
        return;
    }
    // Warm up, then churn: a structure freed and made again reuses its place.
    drop(PerCpu::<[u64; 4]>::new_zeroed());
    let committed = pool::stats().committed;
    for round in 0..1000u64 {
        let p: PerCpu<[u64; 4]> = PerCpu::new(|i| [round, i as u64, 0, 0]);
        for (i, v) in p.iter() {
            assert_eq!(*v, [round, i as u64, 0, 0]);
        }
        let z = Counter::new();
        assert_eq!(z.sum(), 0, "a reused object is zero again");
        z.add(round + 1);
    }
    let stats = pool::stats();
    assert_eq!(stats.committed, committed, "churn grew the pool: {stats:?}");
}
