//! `restartable bench`: counters side by side in one run.
//!
//! Every implementation ([`impls::Impl`]) is measured at every thread count, interleaved:
//! each round visits every thread count and, for each, every implementation (starting at a
//! different one each round); each cell reports the median round. `Counter::add` in degraded
//! mode runs in a child process (the mode is decided once per process): the bench re-executes
//! itself with `RESTARTABLE_FORCE_DEGRADED=1` and the hidden `--internal-only counter-degraded`,
//! and reads the child's JSON, in its turn within each round. Every run checks that the final
//! count equals the operations performed. Then, while threads add to a `Counter`, another
//! thread times remote `take()` and `take_cpu(c)` calls.

mod impls;
mod svg;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

pub use impls::{Impl, Sample};

use crate::CmdResult;

/// Rounds per cell unless `--rounds` says otherwise (odd, so the median is one round).
pub const DEFAULT_ROUNDS: usize = 3;
/// The most threads one measurement may use.
const MAX_THREADS: usize = 1024;

/// Arguments of `restartable bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Thread counts to measure, comma-separated [default: 1 and 1x, 2x, 4x the CPUs this process may run on].
    #[arg(long, value_delimiter = ',', value_parser = parse_threads, value_name = "N,N,...")]
    pub threads: Vec<usize>,
    /// Seconds per measurement (a positive number, fractions allowed).
    #[arg(long, default_value = "0.2", value_parser = parse_duration, allow_negative_numbers = true, value_name = "S")]
    pub duration: Duration,
    /// Measurements per cell; the table shows the median.
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
    pub internal_only: Option<Impl>,
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

/// Run `restartable bench`.
pub fn run(args: &Args) -> CmdResult {
    let threads = if args.threads.is_empty() { default_threads() } else { dedup(&args.threads) };
    if let Some(which) = args.internal_only {
        return internal(which, &threads, args.duration);
    }
    // Fail on an unwritable chart path now, not after the whole run.
    if let Some(path) = &args.svg {
        std::fs::File::create(path).map_err(|e| format!("cannot write the SVG file {}: {e}", path.display()))?;
    }
    let table = Config { threads, duration: args.duration, rounds: args.rounds, remote_take: true }.run()?;
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", table.to_json())?;
    } else {
        table.write(&mut out)?;
    }
    out.flush()?;
    if let Some(path) = &args.svg {
        write_svg(&table, path)?;
        if !args.json {
            eprintln!("chart written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench the tour shows: `threads` x every implementation, [`DEFAULT_ROUNDS`] rounds of
/// `duration`, and the remote `take()` latency at the largest thread count. The degraded-mode
/// row re-executes the current executable, so call this from the `restartable` binary.
pub fn run_table(threads: &[usize], duration: Duration) -> Result<Table, String> {
    Config { threads: dedup(threads), duration, rounds: DEFAULT_ROUNDS, remote_take: true }.run()
}

/// Write the chart of `table` to `path`.
pub fn write_svg(table: &Table, path: &Path) -> Result<(), String> {
    let doc = svg::render(table)?;
    std::fs::write(path, doc).map_err(|e| format!("cannot write the SVG file {}: {e}", path.display()))
}

fn dedup(threads: &[usize]) -> Vec<usize> {
    let mut seen = Vec::new();
    for &t in threads {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    seen
}

/// What one bench run measures.
struct Config {
    threads: Vec<usize>,
    duration: Duration,
    rounds: usize,
    remote_take: bool,
}

impl Config {
    fn run(&self) -> Result<Table, String> {
        if self.threads.is_empty() || self.threads.contains(&0) {
            return Err("thread counts must be a non-empty list of positive numbers".into());
        }
        if self.duration.is_zero() {
            return Err("the duration must be positive".into());
        }
        let machine = Machine::detect();
        // rounds[impl][threads] = the samples of every round.
        let mut samples = vec![vec![Vec::with_capacity(self.rounds); self.threads.len()]; Impl::ALL.len()];
        for round in 0..self.rounds {
            for (ti, &t) in self.threads.iter().enumerate() {
                for k in 0..Impl::ALL.len() {
                    // Start at a different implementation each round, so none always runs first.
                    let ii = (k + round) % Impl::ALL.len();
                    let which = Impl::ALL[ii];
                    let s = if which.in_child() {
                        child(which, t, self.duration)?
                    } else {
                        which.measure(t, self.duration)?
                    };
                    samples[ii][ti].push(s);
                }
            }
        }
        let rows = Impl::ALL
            .iter()
            .zip(samples)
            .map(|(&which, per_threads)| Row {
                key: which.key(),
                name: which.name(),
                cells: self
                    .threads
                    .iter()
                    .zip(per_threads)
                    .map(|(&threads, rounds)| Cell::new(threads, rounds))
                    .collect(),
            })
            .collect();
        let remote_take = match self.threads.iter().max() {
            Some(&t) if self.remote_take => Some(RemoteTake::measure(t, self.duration)?),
            _ => None,
        };
        Ok(Table {
            machine,
            threads: self.threads.clone(),
            duration: self.duration,
            rounds: self.rounds,
            rows,
            remote_take,
            aborts: restartable::retry::aborts(),
            slow_path_uses: restartable::retry::slow_path_uses(),
        })
    }
}

/// `--internal-only IMPL`: measure once per thread count here and print the samples as JSON.
fn internal(which: Impl, threads: &[usize], duration: Duration) -> CmdResult {
    let samples = threads
        .iter()
        .map(|&t| {
            which
                .measure(t, duration)
                .map(|s| json!({ "threads": s.threads, "elapsed_ns": s.elapsed_ns, "ops": s.ops }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let v = json!({ "internal": which.key(), "mode": restartable::mode().to_string(), "samples": samples });
    let mut out = io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Measure `which` at `threads` in a child: this executable, `RESTARTABLE_FORCE_DEGRADED=1`.
fn child(which: Impl, threads: usize, duration: Duration) -> Result<Sample, String> {
    let args = ["bench", "--internal-only", which.key(), "--threads", &threads.to_string()];
    let duration_s = duration.as_secs_f64().to_string();
    // One measurement and a process start: a child still running a minute later hangs.
    let out = crate::reexec::Reexec::new(args.iter().copied().chain(["--duration", &duration_s, "--json"]))
        .degraded(true)
        .timeout(duration + Duration::from_secs(60))
        .run()
        .map_err(|e| format!("the child measuring {}: {e}", which.name()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("the child measuring {} failed ({}): {}", which.name(), out.status, stderr.trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the child measuring {} printed no JSON ({e}): {}", which.name(), text.trim()))?;
    let s = &v["samples"][0];
    match (s["threads"].as_u64(), s["elapsed_ns"].as_u64(), s["ops"].as_u64()) {
        (Some(t), Some(elapsed_ns), Some(ops)) if t == threads as u64 && ops > 0 => {
            Ok(Sample { threads, elapsed_ns, ops })
        }
        _ => Err(format!("the child measuring {} printed an unexpected result: {}", which.name(), text.trim())),
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
    fn detect() -> Machine {
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
    fn new(threads: usize, rounds: Vec<Sample>) -> Cell {
        let mut sorted = rounds.clone();
        sorted.sort_by(|a, b| a.ns_per_op().total_cmp(&b.ns_per_op()));
        Cell { threads, median: sorted[(sorted.len() - 1) / 2], rounds }
    }
}

/// One implementation's row.
#[derive(Debug, Clone)]
pub struct Row {
    /// The JSON key.
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
    fn of(calls: &[(u64, u64)]) -> Latency {
        let (median_us, p99_us) = percentiles(calls.iter().map(|&(ns, _)| ns).collect());
        let found: Vec<u64> = calls.iter().filter(|&&(_, v)| v != 0).map(|&(ns, _)| ns).collect();
        let n_found = found.len();
        let (found_median_us, found_p99_us) = percentiles(found);
        Latency { samples: calls.len(), median_us, p99_us, found: n_found, found_median_us, found_p99_us }
    }

    fn to_json(self) -> Value {
        json!({
            "samples": self.samples,
            "median_us": self.median_us,
            "p99_us": self.p99_us,
            "found": self.found,
            "found_median_us": self.found_median_us,
            "found_p99_us": self.found_p99_us,
        })
    }

    fn describe(&self) -> String {
        let mut s = format!("median {:.2} us, p99 {:.2} us ({} calls", self.median_us, self.p99_us, self.samples);
        if self.found == 0 {
            s.push_str(", none found anything to take)");
        } else {
            s.push_str(&format!(
                "; the {} that took something: median {:.2} us, p99 {:.2} us)",
                self.found, self.found_median_us, self.found_p99_us
            ));
        }
        s
    }
}

/// Remote `take()` / `take_cpu(c)` latency while `threads` threads add.
#[derive(Debug, Clone)]
pub struct RemoteTake {
    /// Adding threads.
    pub threads: usize,
    /// Adds performed meanwhile (all taken exactly once: checked).
    pub adds: u64,
    /// `take()`.
    pub take: Latency,
    /// `take_cpu(c)`, c rotating over every CPU.
    pub take_cpu: Latency,
}

impl RemoteTake {
    fn measure(threads: usize, duration: Duration) -> Result<RemoteTake, String> {
        let r = impls::remote_take(threads, duration)?;
        Ok(RemoteTake { threads, adds: r.adders.ops, take: Latency::of(&r.take), take_cpu: Latency::of(&r.take_cpu) })
    }
}

/// A finished bench run.
#[derive(Debug, Clone)]
pub struct Table {
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
    /// `retry::aborts()` in this process at the end (the library's restart count).
    pub aborts: u64,
    /// `retry::slow_path_uses()` in this process at the end.
    pub slow_path_uses: u64,
}

impl Table {
    /// Print the table on stdout.
    pub fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        self.write(&mut out)?;
        out.flush()
    }

    /// Write the table: the machine, then rows = implementations, columns = thread counts,
    /// cells "ns/op (Mops/s)", then the remote take latency.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let m = &self.machine;
        writeln!(
            out,
            "machine: {}, {} cores ({} possible CPUs), kernel {}",
            m.cpu_model, m.cores, m.possible_cpus, m.kernel
        )?;
        writeln!(out, "mode:    {}", m.mode)?;
        writeln!(
            out,
            "method:  {:.3} s per measurement, {} round{} interleaved over implementations, median shown",
            self.duration.as_secs_f64(),
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        )?;
        writeln!(out, "cells:   ns/op per thread (total Mops/s); every count checked")?;
        writeln!(out)?;
        let name_w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max("implementation".len());
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.cells.iter().map(|c| format!("{:.2} ({:.1})", c.median.ns_per_op(), c.median.mops())).collect())
            .collect();
        let headers: Vec<String> =
            self.threads.iter().map(|&t| format!("{t} thread{}", if t == 1 { "" } else { "s" })).collect();
        let col_w: Vec<usize> = (0..self.threads.len())
            .map(|j| cells.iter().map(|row| row[j].len()).chain([headers[j].len()]).max().unwrap_or(0))
            .collect();
        write!(out, "{:<name_w$}", "implementation")?;
        for (h, w) in headers.iter().zip(&col_w) {
            write!(out, "  {h:>w$}")?;
        }
        writeln!(out)?;
        for (r, row) in self.rows.iter().zip(&cells) {
            write!(out, "{:<name_w$}", r.name)?;
            for (c, w) in row.iter().zip(&col_w) {
                write!(out, "  {c:>w$}")?;
            }
            writeln!(out)?;
        }
        if let Some(rt) = &self.remote_take {
            writeln!(out)?;
            let s = if rt.threads == 1 { "" } else { "s" };
            writeln!(
                out,
                "remote Counter::take() while {} thread{s} add (one call, then a {} us pause):",
                rt.threads,
                impls::TAKE_PAUSE.as_micros()
            )?;
            writeln!(out, "  {:<25} {}", "take():", rt.take.describe())?;
            writeln!(out, "  {:<25} {}", "take_cpu(c), c rotating:", rt.take_cpu.describe())?;
        }
        Ok(())
    }

    /// The JSON form: `machine`, `params`, `results` (per implementation, per thread count:
    /// `ns_per_op`, `mops`, `ops` of the median round, and every round), `remote_take`.
    pub fn to_json(&self) -> Value {
        let m = &self.machine;
        let sample = |s: &Sample| json!({ "ns_per_op": s.ns_per_op(), "mops": s.mops(), "ops": s.ops, "elapsed_ns": s.elapsed_ns });
        let results: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let cells: Vec<Value> = r
                    .cells
                    .iter()
                    .map(|c| {
                        json!({
                            "threads": c.threads,
                            "ns_per_op": c.median.ns_per_op(),
                            "mops": c.median.mops(),
                            "ops": c.median.ops,
                            "elapsed_ns": c.median.elapsed_ns,
                            "rounds": c.rounds.iter().map(sample).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({ "key": r.key, "name": r.name, "cells": cells })
            })
            .collect();
        json!({
            "machine": {
                "cpu_model": m.cpu_model,
                "cores": m.cores,
                "possible_cpus": m.possible_cpus,
                "kernel": m.kernel,
                "mode": { "kind": if m.fast { "fast" } else { "degraded" }, "description": m.mode },
            },
            "params": {
                "threads": self.threads,
                "duration_s": self.duration.as_secs_f64(),
                "rounds": self.rounds,
            },
            "results": results,
            "remote_take": self.remote_take.as_ref().map(|rt| json!({
                "threads": rt.threads,
                "adds": rt.adds,
                "median_us": rt.take.median_us,
                "p99_us": rt.take.p99_us,
                "take": rt.take.to_json(),
                "take_cpu": rt.take_cpu.to_json(),
                "pause_us": impls::TAKE_PAUSE.as_micros() as u64,
            })),
            "library": { "aborts": self.aborts, "slow_path_uses": self.slow_path_uses },
        })
    }
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
    fn dedup_keeps_order() {
        assert_eq!(dedup(&[4, 1, 4, 2, 1]), [4, 1, 2]);
    }
}
