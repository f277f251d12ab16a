//! The counters suite, the bench's default: `restartable::Counter` against the raw rseq op,
//! atomics, thread-locals and a mutex, each counting with `threads` threads and checking its
//! own total; and, while threads add to a `Counter`, the latency of remote `take()` and
//! `take_cpu(c)` calls.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use restartable::Counter;
use restartable::ops::{self, Cpu, Outcome};

use super::report::{Latency, Library, RemoteTake, Sample, Table};
use super::rounds::Schedule;
use super::suite::{Implementation, Padded, check, run_threads, spin};

/// Measure the counters as `schedule` says, then the remote take latency at its largest thread
/// count.
pub fn table(schedule: &Schedule) -> Result<Table, String> {
    let mut table = schedule.run::<Impl>()?;
    if let Some(&threads) = schedule.threads.iter().max() {
        table.remote_take = Some(measure_remote_take(threads, schedule.duration)?);
        table.library = Library::now();
    }
    Ok(table)
}

/// One implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Impl {
    /// `restartable::Counter::add` (rseq fast path, guard slow path).
    Counter,
    /// The raw `ops::load_add_store::<Cpu>` on per-CPU cache-padded slots, with its retry loop,
    /// in the C reference library's loop shape: the index from `cpu_id_start`
    /// (`ops::current_index`), the slot array indexed without a bounds check.
    RawRseq,
    /// The same loop and section without the guard check
    /// (`ops::bench_only::load_add_store_unguarded`): the row above minus this one is what the
    /// guard word costs.
    RawRseqUnguarded,
    /// A plain increment of a `Cell<u64>` in a `thread_local!` (the floor).
    Floor,
    /// `AtomicU64::fetch_add` on one shared word (`lock xadd`).
    SharedAtomic,
    /// Per-CPU cache-padded `AtomicU64`s indexed by `sched_getcpu`, `fetch_add`.
    PercpuAtomic,
    /// A `thread_local!` `AtomicU64` (relaxed load + store), each thread's value summed after join.
    ThreadLocal,
    /// `Mutex<u64>`.
    Mutex,
    /// `Counter::add` in a child process forced into degraded mode.
    CounterDegraded,
}

impl Impl {
    /// Every implementation, in table order.
    pub const ALL: [Impl; 9] = [
        Impl::Counter,
        Impl::RawRseq,
        Impl::RawRseqUnguarded,
        Impl::Floor,
        Impl::SharedAtomic,
        Impl::PercpuAtomic,
        Impl::ThreadLocal,
        Impl::Mutex,
        Impl::CounterDegraded,
    ];
}

impl Implementation for Impl {
    const SUITE: &'static str = "counters";
    const OP: &'static str = "add 1 to the row's counter";

    fn all() -> &'static [Impl] {
        &Impl::ALL
    }

    /// The stable key used in JSON and by `--internal-only`.
    fn key(self) -> &'static str {
        match self {
            Impl::Counter => "counter",
            Impl::RawRseq => "raw-rseq",
            Impl::RawRseqUnguarded => "raw-rseq-unguarded",
            Impl::Floor => "floor",
            Impl::SharedAtomic => "shared-atomic",
            Impl::PercpuAtomic => "percpu-atomic",
            Impl::ThreadLocal => "thread-local",
            Impl::Mutex => "mutex",
            Impl::CounterDegraded => "counter-degraded",
        }
    }

    /// The row label.
    fn name(self) -> &'static str {
        match self {
            Impl::Counter => "Counter::add",
            Impl::RawRseq => "raw load_add_store<Cpu>",
            Impl::RawRseqUnguarded => "same section without guard check",
            Impl::Floor => "thread-local Cell (floor)",
            Impl::SharedAtomic => "shared AtomicU64::fetch_add",
            Impl::PercpuAtomic => "per-CPU atomics (sched_getcpu)",
            Impl::ThreadLocal => "thread_local! counter, summed",
            Impl::Mutex => "Mutex<u64>",
            Impl::CounterDegraded => "Counter::add (degraded mode)",
        }
    }

    /// True when this implementation is measured in a child process.
    fn in_degraded_child(self) -> bool {
        self == Impl::CounterDegraded
    }

    /// Measure in this process. For [`Impl::CounterDegraded`] the process must be in degraded
    /// mode (the child that `restartable bench` starts with `RESTARTABLE_FORCE_DEGRADED=1`).
    fn measure(self, threads: usize, duration: Duration) -> Result<Sample, String> {
        match self {
            Impl::Counter => counter(threads, duration),
            Impl::CounterDegraded => {
                let mode = restartable::mode();
                if mode.is_fast() {
                    return Err(format!(
                        "{} must run in degraded mode (RESTARTABLE_FORCE_DEGRADED=1), but this process is in mode: {mode}",
                        self.key()
                    ));
                }
                counter(threads, duration)
            }
            Impl::RawRseq => raw_rseq::<true>(threads, duration),
            Impl::RawRseqUnguarded => raw_rseq::<false>(threads, duration),
            Impl::Floor => floor(threads, duration),
            Impl::SharedAtomic => shared_atomic(threads, duration),
            Impl::PercpuAtomic => percpu_atomic(threads, duration),
            Impl::ThreadLocal => thread_local_counter(threads, duration),
            Impl::Mutex => mutex(threads, duration),
        }
        .map_err(|e| format!("{}: {e}", self.name()))
    }
}

fn counter(threads: usize, duration: Duration) -> Result<Sample, String> {
    let c = Counter::new();
    let s = run_threads(threads, duration, |stop| spin(stop, || c.add(black_box(1))));
    check("Counter::sum()", c.sum(), s)
}

/// One cache-padded slot per possible CPU: exactly [`restartable::possible_cpus`] of them, so
/// that any value of `ops::current_index::<Cpu>()` indexes it without a bounds check.
pub struct RawSlots(Box<[Padded<AtomicUsize>]>);

impl RawSlots {
    pub fn new() -> RawSlots {
        RawSlots((0..restartable::possible_cpus()).map(|_| Padded(AtomicUsize::new(0))).collect())
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Relaxed) as u64).sum()
    }
}

/// Add 1 to the current CPU's slot with the raw op, in the C reference library's loop shape:
/// the index read from the area's `cpu_id_start`, the slot found without a bounds check, the
/// section (which re-checks the CPU), retry on `Aborted`. `GUARDED` picks the op with the guard
/// check (`load_add_store::<Cpu>`) or the same section without it. On `Stopped` (no rseq in this
/// thread or process, or a CPU stopped by a slow path) it falls back to `fetch_add`, which is
/// correct here because nothing in this benchmark stops a CPU while it runs.
#[inline(always)]
pub fn raw_add<const GUARDED: bool>(slots: &RawSlots) {
    loop {
        let cpu = ops::current_index::<Cpu>();
        debug_assert!(cpu < slots.0.len());
        // SAFETY: `current_index::<Cpu>()` is always below `possible_cpus()` (its documented
        // bound, also before registration and in degraded mode), and `RawSlots` has exactly
        // `possible_cpus()` slots.
        let slot = &unsafe { slots.0.get_unchecked(cpu) }.0;
        let outcome = if GUARDED {
            // SAFETY: slot `cpu` is written only by ops indexed by `cpu` (or by the atomic
            // fallback, which runs only when no section can commit on it), and lives for the
            // call.
            unsafe { ops::load_add_store::<Cpu>(slot, black_box(1), cpu) }
        } else {
            // SAFETY: as above; and nothing ever takes the slow path (a guard stop) on these
            // slots, which is what the unguarded section requires.
            unsafe { ops::bench_only::load_add_store_unguarded(slot, black_box(1), cpu) }
        };
        match outcome {
            Outcome::Committed => return,
            Outcome::Aborted => continue,
            Outcome::Stopped | Outcome::CompareFailed => {
                slot.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

fn raw_rseq<const GUARDED: bool>(threads: usize, duration: Duration) -> Result<Sample, String> {
    let slots = RawSlots::new();
    let s = run_threads(threads, duration, |stop| spin(stop, || raw_add::<GUARDED>(&slots)));
    check("the sum of the per-CPU slots", slots.sum(), s)
}

thread_local! {
    static FLOOR: Cell<u64> = const { Cell::new(0) };
    static LOCAL: AtomicU64 = const { AtomicU64::new(0) };
}

fn floor(threads: usize, duration: Duration) -> Result<Sample, String> {
    let total = AtomicU64::new(0);
    let s = run_threads(threads, duration, |stop| {
        FLOOR.with(|c| c.set(0));
        // `black_box(c)` makes the compiler load and store the cell on every operation, as a
        // real counter in memory would, instead of counting in a register.
        let n = spin(stop, || {
            FLOOR.with(|c| {
                let c = black_box(c);
                c.set(c.get().wrapping_add(1));
            })
        });
        total.fetch_add(FLOOR.with(Cell::get), Relaxed);
        n
    });
    check("the sum of the thread-local cells", total.load(Relaxed), s)
}

fn shared_atomic(threads: usize, duration: Duration) -> Result<Sample, String> {
    let word = AtomicU64::new(0);
    let s = run_threads(threads, duration, |stop| {
        spin(stop, || {
            word.fetch_add(black_box(1), Relaxed);
        })
    });
    check("the shared AtomicU64", word.load(Relaxed), s)
}

fn percpu_atomic(threads: usize, duration: Duration) -> Result<Sample, String> {
    let slots: Vec<Padded<AtomicU64>> = (0..restartable::possible_cpus()).map(|_| Padded(AtomicU64::new(0))).collect();
    let s = run_threads(threads, duration, |stop| {
        spin(stop, || {
            let cpu = restartable::sys::sched_getcpu();
            slots[cpu % slots.len()].0.fetch_add(black_box(1), Relaxed);
        })
    });
    let sum = slots.iter().map(|p| p.0.load(Relaxed)).sum();
    check("the sum of the per-CPU atomics", sum, s)
}

fn thread_local_counter(threads: usize, duration: Duration) -> Result<Sample, String> {
    let total = AtomicU64::new(0);
    let s = run_threads(threads, duration, |stop| {
        LOCAL.with(|c| c.store(0, Relaxed));
        // Only the owner writes its counter: a relaxed load and store (no `lock` prefix), and
        // another thread could read it at any time.
        let n = spin(stop, || {
            LOCAL.with(|c| c.store(c.load(Relaxed).wrapping_add(black_box(1)), Relaxed));
        });
        total.fetch_add(LOCAL.with(|c| c.load(Relaxed)), Relaxed);
        n
    });
    check("the sum of the thread-local counters", total.load(Relaxed), s)
}

fn mutex(threads: usize, duration: Duration) -> Result<Sample, String> {
    let m = Mutex::new(0u64);
    let s = run_threads(threads, duration, |stop| {
        spin(stop, || {
            *m.lock().unwrap_or_else(PoisonError::into_inner) += black_box(1);
        })
    });
    let v = *m.lock().unwrap_or_else(PoisonError::into_inner);
    check("the Mutex<u64>", v, s)
}

/// The taker's pause after each `take()` or `take_cpu(c)`.
pub const TAKE_PAUSE: Duration = Duration::from_micros(50);

/// Remote `take()` and `take_cpu(c)` calls timed while adders ran: (nanoseconds, value taken).
pub struct Takes {
    /// The adders' run.
    pub adders: Sample,
    /// One entry per `take()` call.
    pub take: Vec<(u64, u64)>,
    /// One entry per `take_cpu(c)` call (c rotating over every index).
    pub take_cpu: Vec<(u64, u64)>,
}

/// While `threads` threads add 1 to a `Counter`, another thread alternates `take()` and
/// `take_cpu(c)`, pausing [`TAKE_PAUSE`] after each call, and times each call, until the first
/// adder stops. Checks that every add was
/// taken exactly once.
pub fn remote_take(threads: usize, duration: Duration) -> Result<Takes, String> {
    let c = Counter::new();
    let limit = restartable::guard::limit();
    let (started, finished) = (AtomicBool::new(false), AtomicBool::new(false));
    let (adders, taker) = std::thread::scope(|s| {
        let taker = s.spawn(|| -> Result<_, String> {
            // Time only while the adders run. (Parked, not yielding: under EEVDF every
            // `sched_yield` pushes the thread's deadline back, and a thread that yielded
            // thousands of times can then starve behind busy adders for the whole run.)
            while !started.load(Relaxed) {
                std::thread::park();
            }
            let (mut take, mut take_cpu) = (Vec::new(), Vec::new());
            let mut cpu = 0;
            // At least one call of each, so there is always a latency to report. The pause
            // after each call lets the adders fill the slots again, as for a periodic
            // collector: in a tight loop most calls would find every slot empty (the call
            // right after a take() always would) and skip the guard. The pause spins: a
            // sleeping taker would wait a whole time slice to run again behind busy adders,
            // and time only a few calls.
            loop {
                let t = Instant::now();
                let v = c.try_take().map_err(|e| format!("Counter::take: {e}"))?;
                take.push((elapsed_ns(t), v));
                pause(TAKE_PAUSE);
                let t = Instant::now();
                let v = c.take_cpu(cpu).map_err(|e| format!("Counter::take_cpu({cpu}): {e}"))?;
                take_cpu.push((elapsed_ns(t), v));
                cpu = (cpu + 1) % limit;
                if finished.load(Relaxed) {
                    return Ok((take, take_cpu));
                }
                pause(TAKE_PAUSE);
            }
        });
        let wake = taker.thread().clone();
        let adders = run_threads(threads, duration, |stop| {
            if !started.swap(true, Relaxed) {
                wake.unpark();
            }
            let n = spin(stop, || c.add(black_box(1)));
            finished.store(true, Relaxed);
            n
        });
        // Wakes the taker if no adder ever did (impossible: every adder runs one batch).
        started.store(true, Relaxed);
        finished.store(true, Relaxed);
        taker.thread().unpark();
        (adders, taker.join())
    });
    let (take, take_cpu) = taker.map_err(|_| "the take() thread panicked".to_string())??;
    let rest = c.try_take().map_err(|e| format!("Counter::take: {e}"))?;
    let taken = take.iter().chain(&take_cpu).fold(rest, |acc, &(_, v)| acc.wrapping_add(v));
    check("the total of every take()", taken, adders).map_err(|e| format!("remote take: {e}"))?;
    Ok(Takes { adders, take, take_cpu })
}

/// [`remote_take`], summed up for the report.
fn measure_remote_take(threads: usize, duration: Duration) -> Result<RemoteTake, String> {
    let r = remote_take(threads, duration)?;
    Ok(RemoteTake {
        threads,
        adds: r.adders.ops,
        pause: TAKE_PAUSE,
        take: Latency::of(&r.take),
        take_cpu: Latency::of(&r.take_cpu),
    })
}

/// Busy-wait for `d`.
fn pause(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn elapsed_ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::suite::BATCH;

    #[test]
    fn every_in_process_impl_counts_exactly() {
        for i in Impl::ALL.into_iter().filter(|i| !i.in_degraded_child()) {
            for threads in [1, 3] {
                let s = i.measure(threads, Duration::from_millis(5)).unwrap();
                assert_eq!(s.threads, threads);
                assert!(s.ops >= BATCH * threads as u64, "{i:?}: {s:?}");
                assert!(s.ns_per_op() > 0.0 && s.mops() > 0.0, "{i:?}: {s:?}");
            }
        }
    }

    #[test]
    fn degraded_impl_refuses_fast_mode() {
        if restartable::mode().is_fast() {
            let e = Impl::CounterDegraded.measure(1, Duration::from_millis(1)).unwrap_err();
            assert!(e.contains("degraded"), "{e}");
        }
    }

    #[test]
    fn remote_take_conserves() {
        let r = remote_take(2, Duration::from_millis(20)).unwrap();
        assert!(!r.take.is_empty() && r.take.len() == r.take_cpu.len());
    }

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = Impl::ALL.iter().map(|i| i.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), Impl::ALL.len());
    }
}
