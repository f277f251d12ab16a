//! A global allocator built on the library: every allocation and free of this test binary (the
//! test harness's included, from the first one of the process and of every thread) counts itself
//! with a `Counter`, and records whether the allocating thread holds a guard.
//!
//! - The library's rule "nothing allocates, frees, drops a user value or calls user code while a
//!   guard is held" is checked for every operation of every collection, local and remote, under
//!   contention on one CPU (so slow paths run): no allocation and no item drop under a guard.
//! - First use is re-entrant and allocates nothing: the process's very first allocation runs the
//!   library's first use (mode decision, registration) inside the allocator; with our own
//!   registration (`GLIBC_TUNABLES=glibc.pthread.rseq=0`) and in degraded mode too, in children
//!   with a deadline (a recursion or a deadlock fails instead of hanging).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use restartable::ops::Cpu;
use restartable::opv::OpVec;
use restartable::{Buffer, Counter, MemcpyBuffer, SpinLock, Stack};

struct Hook;

static CALLS: OnceLock<Counter> = OnceLock::new();
static UNDER_GUARD: AtomicU64 = AtomicU64::new(0);

fn note() {
    if restartable::guard::held() > 0 {
        UNDER_GUARD.fetch_add(1, SeqCst);
    }
    CALLS.get_or_init(Counter::new).add(1);
}

// SAFETY: every method forwards to `System` with the caller's arguments; `note` only counts.
unsafe impl GlobalAlloc for Hook {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HOOK: Hook = Hook;

/// An item that records being dropped while its thread holds a guard.
struct Watched(#[allow(dead_code)] u64);

static DROPPED_UNDER_GUARD: AtomicU64 = AtomicU64::new(0);

impl Drop for Watched {
    fn drop(&mut self) {
        if restartable::guard::held() > 0 {
            DROPPED_UNDER_GUARD.fetch_add(1, SeqCst);
        }
    }
}

/// Every operation of every collection, on one CPU from a pinned thread and remotely from another
/// one at the same time. Returns after checking conservation.
fn every_operation() {
    let c = Counter::new();
    let s: Stack<Watched> = Stack::new();
    let b: Buffer<Watched> = Buffer::with_capacity(16);
    let m: MemcpyBuffer<[u64; 8]> = MemcpyBuffer::with_capacity(16);
    let l: SpinLock<Vec<Watched>> = SpinLock::new(|_| Vec::new());
    let words: Vec<std::sync::atomic::AtomicU64> =
        (0..restartable::possible_cpus()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
    let done = AtomicBool::new(false);
    let (pushed, drained) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (taken, remote_drained) = (AtomicU64::new(0), AtomicUsize::new(0));
    let adds = AtomicU64::new(0);
    // One CPU this process may run on (CPU 0 may be outside a cpuset's mask).
    let cpu = testkit::affinity::allowed()[0];
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Remote operations on `cpu`, through its guards, all the time.
            while !done.load(Relaxed) {
                taken.fetch_add(c.take_cpu(cpu).unwrap(), Relaxed);
                let n =
                    s.drain_cpu(cpu).unwrap().len() + b.drain_cpu(cpu).unwrap().len() + m.drain_cpu(cpu).unwrap().len();
                drained.fetch_add(n, Relaxed);
                remote_drained.fetch_add(n, Relaxed);
                let _ = s.len_per_cpu();
                l.lock_cpu(cpu).push(Watched(1));
                let stop = restartable::guard::stop::<Cpu>(cpu).unwrap();
                drop(stop);
                let mut v = OpVec::new();
                v.add_word(&words[cpu], 1);
                // SAFETY: `words[cpu]` is only changed by op vectors on `cpu`.
                unsafe { v.run_on(cpu) }.unwrap();
            }
        });
        testkit::affinity::pin(&[cpu]);
        // Two pushes for one pop, so the remote drains find items (and run under the guard).
        let start = std::time::Instant::now();
        let mut i = 0u64;
        while start.elapsed() < Duration::from_millis(400) || remote_drained.load(Relaxed) < 100 {
            i += 1;
            c.add(1);
            adds.fetch_add(1, Relaxed);
            for k in 0..2 {
                s.push(Watched(i));
                pushed.fetch_add(1, Relaxed);
                if b.push(Box::new(Watched(i + k))).is_ok() {
                    pushed.fetch_add(1, Relaxed);
                }
                if m.push([i; 8]).is_ok() {
                    pushed.fetch_add(1, Relaxed);
                }
            }
            let popped =
                usize::from(s.pop().is_some()) + usize::from(b.pop().is_some()) + usize::from(m.pop().is_some());
            drained.fetch_add(popped, Relaxed);
            if i.is_multiple_of(64) {
                l.lock().push(Watched(i));
                std::thread::yield_now();
            }
        }
        done.store(true, Relaxed);
    });
    let left = s.drain_all().len() + b.drain_all().len() + m.drain_all().len();
    assert_eq!(pushed.load(Relaxed), drained.load(Relaxed) + left, "items lost or doubled");
    assert_eq!(taken.load(Relaxed) + c.take(), adds.load(Relaxed), "adds lost or doubled");
    assert!(remote_drained.load(Relaxed) >= 100, "the remote drains must have run under the guard");
    drop(l);
    assert_eq!(UNDER_GUARD.load(SeqCst), 0, "an allocation or free while holding a guard");
    assert_eq!(DROPPED_UNDER_GUARD.load(SeqCst), 0, "a user value dropped while holding a guard");
    assert!(CALLS.get().expect("the allocator ran").sum() > adds.load(Relaxed));
}

#[test]
fn nothing_allocates_or_drops_under_a_guard() {
    every_operation();
}

#[test]
fn first_use_inside_the_allocator_child() {
    if !testkit::is_child() {
        return;
    }
    // By now the allocator (and so the library's first use) has run many times: in the test
    // harness before this test, and in every thread it started.
    every_operation();
    let threads: Vec<_> = (0..32)
        .map(|i| std::thread::spawn(move || (0..100).map(|k| Box::new(i * k)).map(|b| *b).sum::<u64>()))
        .collect();
    let sum: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(sum, (0..32u64).map(|i| i * 4950).sum());
    println!("FIRST-USE-OK {}", restartable::mode());
}

/// The first allocation of the process and of every thread runs the library's first use inside
/// the allocator: with glibc's registration, our own, and in degraded mode (where the mode
/// decision reads the environment): no recursion, no deadlock.
#[test]
fn first_use_inside_the_allocator() {
    for env in [
        &[][..],
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")][..],
        &[("RESTARTABLE_FORCE_DEGRADED", "1")][..],
        &[("RESTARTABLE_FORCE_DEGRADED", "1"), ("GLIBC_TUNABLES", "glibc.pthread.rseq=0")][..],
    ] {
        let out = testkit::run_self_as_child_timeout(
            "first_use_inside_the_allocator_child",
            env,
            &[],
            Duration::from_secs(90),
        );
        assert!(out.status.success(), "{env:?}:\n{}", testkit::describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("FIRST-USE-OK"), "{}", testkit::describe(&out));
    }
}
