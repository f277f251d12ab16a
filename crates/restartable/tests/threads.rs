//! Registration under thread churn: 1,000 short threads, each registering (own-area mode) or
//! borrowing (glibc) an area, doing an op and exiting. Own areas are static TLS: each thread
//! registers once, and nothing is left behind (RSS stays flat).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use restartable::Registration;
use restartable::ops::{self, Cpu, Outcome};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

fn rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn check_churn() {
    // One word per CPU: a word is only written by sections indexed by its CPU or under its guard.
    let words: Arc<Vec<AtomicUsize>> =
        Arc::new((0..restartable::possible_cpus()).map(|_| AtomicUsize::new(0)).collect());
    // `JoinHandle::join` (pthread_join) returns only after the thread's TLS destructors ran,
    // unlike `thread::scope`, so the area count below is exact.
    let run = |n: usize| {
        for _ in 0..n / 10 {
            let handles: Vec<_> = (0..10)
                .map(|_| {
                    let words = Arc::clone(&words);
                    std::thread::spawn(move || {
                        loop {
                            let cpu = restartable::current_cpu();
                            // SAFETY: word `cpu` is only written by ops indexed by `cpu` or under its guard.
                            match unsafe { ops::load_add_store::<Cpu>(&words[cpu], 1, cpu) } {
                                Outcome::Committed => break,
                                Outcome::Aborted => continue,
                                _ => {
                                    let _g = restartable::guard::stop::<Cpu>(cpu).unwrap();
                                    words[cpu].store(words[cpu].load(Relaxed) + 1, Relaxed);
                                    break;
                                }
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        }
    };
    run(200); // warm up the allocator and thread stacks
    let before = rss_kib();
    let registered_before = restartable::own_registrations();
    run(1000);
    let after = rss_kib();
    let total: usize = words.iter().map(|w| w.load(Relaxed)).sum();
    assert_eq!(total, 1200, "every thread's op counted exactly once");
    let registered = restartable::own_registrations() - registered_before;
    match restartable::registration() {
        // In the child this test runs alone, so the count is exact. In the parent the other
        // test's harness thread may make its first use of the library (with `PerCpuAlloc` as
        // the global allocator, its first allocation) meanwhile: one registration more at most.
        Registration::Own { .. } if testkit::is_child() => {
            assert_eq!(registered, 1000, "each thread registers its own area once")
        }
        Registration::Own { .. } => {
            assert!((1000..=1001).contains(&registered), "each thread registers its own area once: {registered}")
        }
        _ => assert_eq!(registered, 0, "glibc's areas are borrowed, never registered"),
    }
    eprintln!("RSS {before} KiB -> {after} KiB over 1000 threads");
    assert!(after < before + 2048, "RSS grew by {} KiB over 1000 threads", after - before);
}

#[test]
fn thousand_threads_glibc_or_own() {
    check_churn();
}

/// The same in own-area mode, in a child process where glibc's registration is off.
#[test]
fn thousand_threads_own_area() {
    if std::env::var_os("RESTARTABLE_CHILD").is_some() {
        // (A portable build registers nothing: there the churn and the counts are the test.)
        let own = !cfg!(restartable_portable);
        assert!(!own || matches!(restartable::status().registration, Registration::Own { .. }), "own area expected");
        check_churn();
        // A thread that exits by panicking leaves nothing registered behind: the next threads
        // (which may reuse its stack and static TLS) register afresh and count exactly.
        let registered = restartable::own_registrations();
        let r = std::thread::spawn(move || {
            assert!(!own || matches!(restartable::registration(), Registration::Own { .. }));
            panic!("deliberate panic with a registered area");
        })
        .join();
        assert!(r.is_err());
        let counter = restartable::Counter::new();
        for _ in 0..4 {
            std::thread::scope(|s| {
                s.spawn(|| (0..10_000).for_each(|_| counter.add(1)));
            });
        }
        assert_eq!(counter.sum(), 40_000);
        let expected = if own { registered + 5 } else { registered };
        assert_eq!(restartable::own_registrations(), expected, "one registration per new thread");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["thousand_threads_own_area", "--exact", "--nocapture", "--test-threads=1"])
        .env("RESTARTABLE_CHILD", "1")
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "child ran the test:\n{text}");
}
