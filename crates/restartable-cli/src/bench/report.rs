//! The report model: what a bench run measured, independent of how it is shown.
//!
//! A [`Table`] is a suite of named implementations ([`Row`]s, each with a stable `key` and a
//! label) measured at thread counts ([`Cell`]s, each with every round's [`Sample`] and the
//! median one), plus where it ran ([`Machine`]), how ([`Table::duration`], [`Table::rounds`]),
//! the library's own counters, and, for suites that measure it, the latency of remote takes
//! ([`RemoteTake`]). Any suite fills it the same way (see `rounds`), and the output formats
//! (`text`, `json`, `svg`) read only this.

use std::time::Duration;

/// One timed run: `threads` threads performed `ops` operations in `elapsed_ns`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Threads that ran the operation.
    pub threads: usize,
    /// Wall time from the common start to the last thread's end.
    pub elapsed_ns: u64,
    /// Operations performed, all threads together.
    pub ops: u64,
}

impl Sample {
    /// Nanoseconds per operation, per thread: `elapsed_ns * threads / ops`.
    pub fn ns_per_op(&self) -> f64 {
        self.elapsed_ns as f64 * self.threads as f64 / self.ops.max(1) as f64
    }

    /// Millions of operations per second, all threads together.
    pub fn mops(&self) -> f64 {
        self.ops as f64 * 1e3 / self.elapsed_ns.max(1) as f64
    }
}

/// The machine the bench ran on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// The CPUs this process may run on ([`crate::cpus::cores`]).
    pub cores: usize,
    /// Possible CPUs (per-CPU slots).
    pub possible_cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// The process's mode (the library's sentence).
    pub mode: String,
    /// True in fast mode.
    pub fast: bool,
}

impl Machine {
    /// This machine, and this process's mode.
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        let mode = restartable::mode();
        Machine {
            cpu_model,
            cores: crate::cpus::cores(),
            possible_cpus: restartable::possible_cpus(),
            kernel: restartable::sys::kernel_release(),
            mode: mode.to_string(),
            fast: mode.is_fast(),
        }
    }
}

/// One implementation at one thread count: every round and the median one.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Threads.
    pub threads: usize,
    /// The round with the median ns/op (the lower median for an even count).
    pub median: Sample,
    /// Every round, in the order they ran.
    pub rounds: Vec<Sample>,
}

impl Cell {
    /// The cell of `rounds` (at least one) at `threads`.
    pub fn new(threads: usize, rounds: Vec<Sample>) -> Cell {
        let mut sorted = rounds.clone();
        sorted.sort_by(|a, b| a.ns_per_op().total_cmp(&b.ns_per_op()));
        Cell { threads, median: sorted[(sorted.len() - 1) / 2], rounds }
    }
}

/// One implementation's row.
#[derive(Debug, Clone)]
pub struct Row {
    /// The stable key (JSON `key`).
    pub key: &'static str,
    /// The label.
    pub name: &'static str,
    /// One cell per thread count, in the order asked.
    pub cells: Vec<Cell>,
}

/// Median and p99 (nearest rank) of latencies in nanoseconds, in microseconds; zeros if empty.
fn percentiles(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    let n = ns.len().max(1);
    let at = |rank: usize| ns.get(rank.min(n - 1)).copied().unwrap_or(0) as f64 / 1e3;
    (at((n - 1) / 2), at((n * 99).div_ceil(100) - 1))
}

/// Latency of remote take calls, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Calls timed.
    pub samples: usize,
    /// Median of every call.
    pub median_us: f64,
    /// 99th percentile of every call.
    pub p99_us: f64,
    /// Calls that found something to take (the others saw only zero slots and skipped the
    /// guard and the fence: with more threads than free CPUs, the adders are often not running
    /// while the taker is).
    pub found: usize,
    /// Median of the calls that found something (0 if none did).
    pub found_median_us: f64,
    /// 99th percentile of the calls that found something (0 if none did).
    pub found_p99_us: f64,
}

impl Latency {
    /// From (nanoseconds, value taken) per call.
    pub fn of(calls: &[(u64, u64)]) -> Latency {
        let (median_us, p99_us) = percentiles(calls.iter().map(|&(ns, _)| ns).collect());
        let found: Vec<u64> = calls.iter().filter(|&&(_, v)| v != 0).map(|&(ns, _)| ns).collect();
        let n_found = found.len();
        let (found_median_us, found_p99_us) = percentiles(found);
        Latency { samples: calls.len(), median_us, p99_us, found: n_found, found_median_us, found_p99_us }
    }
}

/// Remote `take()` / `take_cpu(c)` latency while `threads` threads add.
#[derive(Debug, Clone)]
pub struct RemoteTake {
    /// Adding threads.
    pub threads: usize,
    /// Adds performed meanwhile (all taken exactly once: checked).
    pub adds: u64,
    /// The taker's pause after each call.
    pub pause: Duration,
    /// `take()`.
    pub take: Latency,
    /// `take_cpu(c)`, c rotating over every CPU.
    pub take_cpu: Latency,
}

/// The library's process-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Library {
    /// `retry::aborts()`: critical sections restarted by the kernel.
    pub aborts: u64,
    /// `retry::slow_path_uses()`.
    pub slow_path_uses: u64,
}

impl Library {
    /// The counters now.
    pub fn now() -> Library {
        Library { aborts: restartable::retry::aborts(), slow_path_uses: restartable::retry::slow_path_uses() }
    }
}

/// A finished bench run.
#[derive(Debug, Clone)]
pub struct Table {
    /// The suite ([`Implementation::SUITE`](super::suite::Implementation::SUITE)).
    pub suite: &'static str,
    /// What one operation is ([`Implementation::OP`](super::suite::Implementation::OP)).
    pub op: &'static str,
    /// Where it ran.
    pub machine: Machine,
    /// Thread counts (columns).
    pub threads: Vec<usize>,
    /// Time per measurement.
    pub duration: Duration,
    /// Measurements per cell.
    pub rounds: usize,
    /// One row per implementation.
    pub rows: Vec<Row>,
    /// Remote take latency, if measured.
    pub remote_take: Option<RemoteTake>,
    /// The library's counters in this process at the end of the run.
    pub library: Library,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles() {
        let calls: Vec<(u64, u64)> = (1..=100).map(|i| (i * 1000, i % 2)).collect();
        let l = Latency::of(&calls);
        assert_eq!((l.samples, l.median_us, l.p99_us), (100, 50.0, 99.0));
        assert_eq!((l.found, l.found_median_us, l.found_p99_us), (50, 49.0, 99.0));
        let one = Latency::of(&[(2000, 1)]);
        assert_eq!((one.median_us, one.p99_us), (2.0, 2.0));
        let none = Latency::of(&[(2000, 0)]);
        assert_eq!((none.found, none.found_median_us), (0, 0.0));
    }

    #[test]
    fn median_cell_is_one_round() {
        let s = |ops| Sample { threads: 1, elapsed_ns: 1000, ops };
        let c = Cell::new(1, vec![s(10), s(1000), s(100)]);
        assert_eq!(c.median.ops, 100);
        assert_eq!(c.rounds.len(), 3);
    }

    #[test]
    fn sample_math() {
        let s = Sample { threads: 2, elapsed_ns: 1_000, ops: 500 };
        assert_eq!(s.ns_per_op(), 4.0);
        assert_eq!(s.mops(), 500.0);
    }
}
