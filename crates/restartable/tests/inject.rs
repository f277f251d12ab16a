//! Aborts are real and handled: with a spin loop compiled into the critical section (feature
//! `inject`, point 5: just before the commit), a signal storm aimed at the working thread makes
//! the kernel restart its sections. We count the `Aborted` outcomes (> 0) and check that the
//! counter equals the number of `Committed` outcomes exactly: nothing lost, nothing doubled.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use restartable::ops::{self, Cpu, Index, MmCid, Outcome};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

extern "C" fn on_signal(_: libc::c_int) {}

fn install_handler() {
    // SAFETY: a zeroed sigaction with a valid handler and SA_RESTART is a valid argument.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

fn storm<I: Index>() {
    if !restartable::mode().is_fast() {
        eprintln!("degraded mode: no sections run ({})", restartable::mode());
        return;
    }
    install_handler();
    restartable::inject::set(5, 20_000);
    let slots: Vec<AtomicUsize> = (0..restartable::possible_cpus()).map(|_| AtomicUsize::new(0)).collect();
    let done = AtomicBool::new(false);
    let worker_id = AtomicUsize::new(0);
    let (committed, aborted) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            worker_id.store(unsafe { libc::pthread_self() } as usize, Relaxed);
            let (mut committed, mut aborted) = (0usize, 0usize);
            let start = Instant::now();
            while committed < 2_000 || (aborted == 0 && start.elapsed() < Duration::from_secs(20)) {
                let Some(i) = I::current() else { break };
                // SAFETY: slot `i` is only written by ops indexed by `i` (this thread only).
                match unsafe { ops::load_add_store::<I>(&slots[i], 1, i) } {
                    Outcome::Committed => committed += 1,
                    Outcome::Aborted => aborted += 1,
                    o => panic!("unexpected {o:?}"),
                }
            }
            done.store(true, Relaxed);
            (committed, aborted)
        });
        s.spawn(|| {
            while worker_id.load(Relaxed) == 0 {
                std::thread::yield_now();
            }
            let pt = worker_id.load(Relaxed) as libc::pthread_t;
            while !done.load(Relaxed) {
                // SAFETY: `pt` names the worker thread, which is alive until `done` is set.
                unsafe { libc::pthread_kill(pt, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        worker.join().unwrap()
    });
    restartable::inject::clear();
    let total: usize = slots.iter().map(|s| s.load(Relaxed)).sum();
    eprintln!("{}: committed {committed}, aborted {aborted}, counter {total}", I::NAME);
    assert!(aborted > 0, "the signal storm never aborted a section");
    assert_eq!(total, committed, "an aborted section stored, or a committed one was lost");
}

#[test]
fn signals_abort_sections_without_losing_updates() {
    storm::<Cpu>();
    storm::<MmCid>();
}

/// The check above can fail: the same invariant applied to a deliberately broken op (one that
/// commits a second time outside its section) sees the doubled updates.
#[test]
fn the_invariant_catches_an_op_that_commits_twice() {
    if !restartable::mode().is_fast() {
        return;
    }
    let slots: Vec<AtomicUsize> = (0..restartable::possible_cpus()).map(|_| AtomicUsize::new(0)).collect();
    let mut committed = 0;
    while committed < 1000 {
        let i = restartable::current_cpu();
        // SAFETY: slot `i` is only written by this thread.
        if unsafe { restartable::ops::sabotage::load_add_store_commits_twice(&slots[i], 1, i) } == Outcome::Committed {
            committed += 1;
        }
    }
    let total: usize = slots.iter().map(|s| s.load(Relaxed)).sum();
    assert_ne!(total, committed, "the broken op must be caught");
    assert_eq!(total, 2 * committed);
}
