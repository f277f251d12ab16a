//! Orchestration: measure every implementation of a suite at every thread count, in
//! interleaved rounds, into a [`Table`].
//!
//! Each round visits every thread count and, for each, every implementation, starting at a
//! different implementation each round so that none always runs first; each cell reports its
//! median round. An implementation that must run degraded is measured, in its turn, by a child
//! process of this binary (`bench --internal-only KEY` with `RESTARTABLE_FORCE_DEGRADED=1`,
//! through [`Reexec`]), which prints its samples as JSON ([`internal`]).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use super::report::{Cell, Library, Machine, Row, Sample, Table};
use super::suite::Implementation;
use crate::CmdResult;
use crate::reexec::Reexec;

/// What one bench run measures: the thread counts (columns), the time per measurement, and the
/// measurements per cell.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Thread counts, in table order.
    pub threads: Vec<usize>,
    /// Time per measurement.
    pub duration: Duration,
    /// Measurements per cell.
    pub rounds: usize,
}

impl Schedule {
    /// Measure suite `I`: every implementation x every thread count x every round. The table
    /// has no remote take section; its library counters are those at the end of the rounds.
    pub fn run<I: Implementation>(&self) -> Result<Table, String> {
        if self.threads.is_empty() || self.threads.contains(&0) {
            return Err("thread counts must be a non-empty list of positive numbers".into());
        }
        if self.duration.is_zero() {
            return Err("the duration must be positive".into());
        }
        let machine = Machine::detect();
        let all = I::all();
        // samples[impl][threads] = the samples of every round.
        let mut samples = vec![vec![Vec::with_capacity(self.rounds); self.threads.len()]; all.len()];
        for round in 0..self.rounds {
            for (ti, &t) in self.threads.iter().enumerate() {
                for k in 0..all.len() {
                    // Start at a different implementation each round, so none always runs first.
                    let ii = (k + round) % all.len();
                    let which = all[ii];
                    let s = if which.in_degraded_child() {
                        in_child(which, t, self.duration)?
                    } else {
                        which.measure(t, self.duration)?
                    };
                    samples[ii][ti].push(s);
                }
            }
        }
        let rows = all
            .iter()
            .zip(samples)
            .map(|(&which, per_threads)| Row {
                key: which.key(),
                name: which.name(),
                cells: self.threads.iter().zip(per_threads).map(|(&t, rounds)| Cell::new(t, rounds)).collect(),
            })
            .collect();
        Ok(Table {
            suite: I::SUITE,
            op: I::OP,
            machine,
            threads: self.threads.clone(),
            duration: self.duration,
            rounds: self.rounds,
            rows,
            remote_take: None,
            library: Library::now(),
        })
    }
}

/// `--internal-only KEY`, the child's side: measure `which` once per thread count in this
/// process and print the samples as one JSON object.
pub fn internal<I: Implementation>(which: I, threads: &[usize], duration: Duration) -> CmdResult {
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

/// Measure `which` at `threads` in a child: this executable, degraded mode forced.
fn in_child<I: Implementation>(which: I, threads: usize, duration: Duration) -> Result<Sample, String> {
    let (threads_arg, duration_arg) = (threads.to_string(), duration.as_secs_f64().to_string());
    let args = ["bench", "--internal-only", which.key(), "--threads", &threads_arg, "--duration", &duration_arg];
    // One measurement and a process start: a child still running a minute later hangs.
    let out = Reexec::new(args.iter().chain(&["--json"]))
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
