//! What a bench suite is, and the tools its implementations are built with.
//!
//! A suite is an enum of implementations of one operation that implements [`Implementation`];
//! `rounds` measures every one of them at every thread count, interleaved, into the report
//! model, and the text, JSON and SVG outputs show any suite the same way. An implementation
//! runs its operation on `threads` threads started together ([`run_threads`], [`spin`]) for
//! about `duration`, and checks that its own final count equals the operations the threads
//! performed ([`check`]), so a lost update is an error, not a fast number.
//!
//! The suites: `counters` (the default) and `collections` (`--collections`). Adding one
//! (allocators, an RwLock suite): a module with its enum and this trait's implementation, and a
//! flag in `Args` that makes `bench::run` measure it with `Schedule::run::<ThatEnum>()`.
//! (An implementation that must run degraded is measured in a child through
//! `--internal-only KEY`, which parses the counters' keys today: give it the new suite's too.)

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::report::Sample;

/// Operations a thread runs between two looks at the stop flag.
pub const BATCH: u64 = 256;

/// One implementation of a suite: a row of the table.
pub trait Implementation: Copy + std::fmt::Debug + 'static {
    /// The suite's name (the JSON `suite`): `counters`, `collections`.
    const SUITE: &'static str;

    /// What one operation is, the same for every implementation of the suite (the text
    /// header's `op:` line and the JSON `op`).
    const OP: &'static str;

    /// Every implementation of the suite, in table order.
    fn all() -> &'static [Self];

    /// The stable key: the JSON `key`, and the value of `--internal-only`.
    fn key(self) -> &'static str;

    /// The row label.
    fn name(self) -> &'static str;

    /// True when it must be measured in a child process with degraded mode forced (the mode
    /// is decided once per process).
    fn in_degraded_child(self) -> bool {
        false
    }

    /// Measure it in this process: `threads` threads for about `duration`, the count checked.
    fn measure(self, threads: usize, duration: Duration) -> Result<Sample, String>;
}

/// Run `body` on `threads` threads started together; stop them after `duration`. `body` gets
/// the stop flag and returns how many operations it performed. Returns the wall time from the
/// start to the last thread's end, and the total operations.
pub fn run_threads(threads: usize, duration: Duration, body: impl Fn(&AtomicBool) -> u64 + Sync) -> Sample {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    body(&stop)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Relaxed);
        // A panicking body would be a bug in this module; count its thread as zero operations
        // and let the count check report the difference.
        let ops = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        Sample { threads, elapsed_ns: u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX), ops }
    })
}

/// Run `op` in batches until `stop` is set; at least one batch, so every thread counts.
#[inline(always)]
pub fn spin(stop: &AtomicBool, mut op: impl FnMut()) -> u64 {
    let mut n = 0;
    loop {
        for _ in 0..BATCH {
            op();
        }
        n += BATCH;
        if stop.load(Relaxed) {
            return n;
        }
    }
}

/// The count check every implementation ends with.
pub fn check(what: &str, counted: u64, sample: Sample) -> Result<Sample, String> {
    if counted == sample.ops {
        Ok(sample)
    } else {
        Err(format!(
            "count mismatch: {what} is {counted} but the threads performed {} operations (lost or extra updates)",
            sample.ops
        ))
    }
}

/// A value alone on its cache line pair (128 bytes, as `crossbeam_utils::CachePadded` on x86_64).
#[repr(align(128))]
pub struct Padded<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_update_is_an_error() {
        let s = Sample { threads: 1, elapsed_ns: 10, ops: 5 };
        assert_eq!(check("x", 5, s), Ok(s));
        let e = check("the shared word", 4, s).unwrap_err();
        assert!(
            e.contains("count mismatch") && e.contains("the shared word is 4") && e.contains("5 operations"),
            "{e}"
        );
    }

    #[test]
    fn every_thread_runs_at_least_one_batch() {
        let s = run_threads(3, Duration::from_millis(1), |stop| spin(stop, || {}));
        assert_eq!(s.threads, 3);
        assert!(s.ops >= 3 * BATCH && s.elapsed_ns > 0, "{s:?}");
    }
}
