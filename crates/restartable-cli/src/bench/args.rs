//! The command line of `restartable bench`: [`Args`], its value parsers, and the thread counts
//! it asks for.

use std::path::PathBuf;
use std::time::Duration;

/// Rounds per cell unless `--rounds` says otherwise (odd, so the median is one round).
pub const DEFAULT_ROUNDS: usize = 3;
/// The most threads one measurement may use.
const MAX_THREADS: usize = 1024;

/// Arguments of `restartable bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measure the collections suite instead of the counters: Stack, Buffer, MemcpyBuffer and
    /// SpinLock against crossbeam's SegQueue and ArrayQueue, parking_lot's and std's Mutex.
    #[arg(long, conflicts_with_all = ["internal_only", "rwlock"])]
    pub collections: bool,
    /// Measure the read-mostly suite instead: restartable's RwLock against std's and
    /// parking_lot's RwLock, crossbeam's ShardedLock and an ArcSwap load, with 0%, 0.1% and 1%
    /// writes, then the uncontended write lock + unlock latency.
    #[arg(long, conflicts_with = "internal_only")]
    pub rwlock: bool,
    /// Measure the allocator suite instead: the library's PerCpuAlloc (over glibc's malloc, and
    /// over mimalloc) against glibc's malloc and mimalloc, each in processes of its own, on alloc+free pairs,
    /// producers and consumers (over std channels and over a lock-free queue), thread churn and
    /// resident memory; default threads 1, 2x and 4x the CPUs; ends with a chart.
    #[arg(long, conflicts_with_all = ["internal_only", "collections", "rwlock", "duration"])]
    pub alloc: bool,
    /// With --alloc: the workloads to run [default: all].
    #[arg(long, requires = "alloc", value_enum, value_delimiter = ',', value_name = "W,W,...")]
    pub workloads: Vec<super::alloc::Workload>,
    /// With --alloc: the work of each measurement as a fraction of the full run (the
    /// resident-memory workload always runs whole).
    #[arg(long, requires = "alloc", default_value = "1", value_parser = parse_scale, value_name = "F")]
    pub scale: f64,
    /// Internal: measure one allocator cell (WORKLOAD:THREADS:SCALE) in this process, under the
    /// allocator `RESTARTABLE_BENCH_ALLOCATOR` names, and print it as JSON.
    #[arg(long, hide = true, value_name = "CELL")]
    pub internal_alloc_cell: Option<String>,
    /// Thread counts to measure, comma-separated [default: 1 and 1x, 2x, 4x the CPUs this process may run on; with
    /// --alloc 1, 2x and 4x].
    #[arg(long, value_delimiter = ',', value_parser = parse_threads, value_name = "N,N,...")]
    pub threads: Vec<usize>,
    /// Seconds per measurement (a positive number, fractions allowed).
    #[arg(long, default_value = "0.2", value_parser = parse_duration, allow_negative_numbers = true, value_name = "S")]
    pub duration: Duration,
    /// Measurements per cell; the table shows the median (with --alloc, the channel and queue
    /// cells run five times as many).
    #[arg(long, default_value_t = DEFAULT_ROUNDS, value_parser = parse_rounds, value_name = "N")]
    pub rounds: usize,
    /// Print one JSON object (on one line) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG line chart of ns/op against threads to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Internal: measure only this implementation, once per thread count, in this process, and
    /// print its samples as JSON (the degraded-mode child).
    #[arg(long, hide = true, value_enum, value_name = "IMPL")]
    pub internal_only: Option<Internal>,
}

/// The implementations a degraded-mode child measures (`--internal-only KEY`, the row's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Internal {
    /// The counters suite's `Counter::add` in degraded mode.
    CounterDegraded,
    /// The rwlock suite's read-only `RwLock` in degraded mode.
    RwlockDegraded,
}

impl Args {
    /// The thread counts asked for, each once, in the order given ([`default_threads`] if none).
    pub fn threads(&self) -> Vec<usize> {
        if self.threads.is_empty() { default_threads() } else { dedup(&self.threads) }
    }
}

fn parse_threads(s: &str) -> Result<usize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty thread count (expected a list like 1,2,4)".into());
    }
    match s.parse::<usize>() {
        Ok(0) => Err("a thread count must be at least 1".into()),
        Ok(n) if n > MAX_THREADS => Err(format!("at most {MAX_THREADS} threads")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a thread count (expected a positive integer)")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("the duration must be a positive number of seconds, not {s}"));
    }
    if secs > 3600.0 {
        return Err("the duration is at most 3600 seconds per measurement".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_scale(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 100.0 => Ok(f),
        _ => Err(format!("`{s}` is not a scale (a number above 0, at most 100)")),
    }
}

fn parse_rounds(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=1000) => Ok(n),
        _ => Err(format!("`{s}` is not a round count (1 to 1000)")),
    }
}

/// The default thread counts: 1, and 1x, 2x, 4x the [cores](crate::cpus::cores).
pub fn default_threads() -> Vec<usize> {
    let cores = crate::cpus::cores();
    let mut t = vec![1, cores, 2 * cores, 4 * cores];
    t.dedup();
    t
}

/// `threads` without repeats, in order.
pub fn dedup(threads: &[usize]) -> Vec<usize> {
    let mut seen = Vec::new();
    for &t in threads {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_threads("4"), Ok(4));
        for bad in ["0", "", " ", "x", "-1", "1.5", "99999"] {
            assert!(parse_threads(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "nan", "inf", "abc", "", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_rounds("5"), Ok(5));
        assert!(parse_rounds("0").is_err());
    }

    #[test]
    fn dedup_keeps_order() {
        assert_eq!(dedup(&[4, 1, 4, 2, 1]), [4, 1, 2]);
    }
}
