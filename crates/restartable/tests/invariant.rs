//! No lost or doubled update: 6 x cores threads each add 1 to their current CPU's (or mm_cid's)
//! slot 100,000 times with `load_add_store`, retrying on Aborted; on Stopped (degraded mode, or
//! a guard held elsewhere) they add through the guard. The total must be exact.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use restartable::guard;
use restartable::ops::{self, Cpu, Index, MmCid, Outcome};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

#[repr(align(128))]
struct Slot(AtomicUsize);

const REPS: usize = 100_000;

fn run<I: Index>() -> (usize, u64) {
    let threads = 6 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let slots: Vec<Slot> = (0..restartable::possible_cpus()).map(|_| Slot(AtomicUsize::new(0))).collect();
    let aborts = AtomicU64::new(0);
    let slow = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..REPS {
                    loop {
                        let i = I::current().unwrap_or_else(restartable::current_cpu);
                        // SAFETY: slot `i` is only written by ops indexed by `i` or under i's guard.
                        match unsafe { ops::load_add_store::<I>(&slots[i].0, 1, i) } {
                            Outcome::Committed => break,
                            Outcome::Aborted => {
                                aborts.fetch_add(1, Relaxed);
                            }
                            Outcome::Stopped => {
                                let _stop = guard::stop::<I>(i).expect("stop");
                                // A plain load + store (not an RMW): only exclusion makes it exact.
                                slots[i].0.store(slots[i].0.load(Relaxed) + 1, Relaxed);
                                slow.fetch_add(1, Relaxed);
                                break;
                            }
                            Outcome::CompareFailed => unreachable!(),
                        }
                    }
                }
            });
        }
    });
    let total: usize = slots.iter().map(|s| s.0.load(Relaxed)).sum();
    assert_eq!(total, threads * REPS, "lost or doubled updates");
    eprintln!(
        "{}: {threads} threads x {REPS}: exact; {} aborts, {} slow",
        I::NAME,
        aborts.load(Relaxed),
        slow.load(Relaxed)
    );
    (total, aborts.load(Relaxed))
}

#[test]
fn cpu_counters_are_exact() {
    run::<Cpu>();
}

#[test]
fn mm_cid_counters_are_exact() {
    if restartable::current_mm_cid().is_none() {
        eprintln!("mm_cid unavailable here: {}", restartable::mode());
    }
    run::<MmCid>();
}
