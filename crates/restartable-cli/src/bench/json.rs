//! The JSON form of a bench [`Table`] (`bench --json`): `suite` (`counters` or `collections`),
//! `op` (what one operation is), `machine`, `params`, `results` (per
//! implementation: `key`, `name`, and per thread count `threads`, `ns_per_op`, `mops`, `ops`,
//! `elapsed_ns` of the median round, and every round), `remote_take`, `latencies` (the rwlock
//! suite's uncontended writes: `title` and per implementation `key`, `name`, `median_ns`,
//! `p99_ns`, `samples`), `library`.

use serde_json::{Value, json};

use super::report::{Latency, Machine, Sample, Table};

impl Table {
    /// The JSON object of the whole run.
    pub fn to_json(&self) -> Value {
        let m = &self.machine;
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
            "suite": self.suite,
            "op": self.op,
            "machine": m.to_json(),
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
                "take": latency(&rt.take),
                "take_cpu": latency(&rt.take_cpu),
                "pause_us": rt.pause.as_micros() as u64,
            })),
            "latencies": self.latencies.as_ref().map(|l| json!({
                "title": l.title,
                "rows": l.rows.iter().map(|(name, key, lat)| json!({
                    "key": key,
                    "name": name,
                    "median_ns": lat.median_us * 1e3,
                    "p99_ns": lat.p99_us * 1e3,
                    "samples": lat.samples,
                })).collect::<Vec<_>>(),
            })),
            "library": { "aborts": self.library.aborts, "slow_path_uses": self.library.slow_path_uses },
        })
    }
}

/// One round of a cell.
impl Machine {
    /// The `machine` object of every suite's JSON: `cpu_model`, `cores`, `possible_cpus`,
    /// `kernel`, `mode` (`kind`: `fast` or `degraded`, and `description`).
    pub fn to_json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "possible_cpus": self.possible_cpus,
            "kernel": self.kernel,
            "mode": { "kind": if self.fast { "fast" } else { "degraded" }, "description": self.mode },
        })
    }
}

fn sample(s: &Sample) -> Value {
    json!({ "ns_per_op": s.ns_per_op(), "mops": s.mops(), "ops": s.ops, "elapsed_ns": s.elapsed_ns })
}

fn latency(l: &Latency) -> Value {
    json!({
        "samples": l.samples,
        "median_us": l.median_us,
        "p99_us": l.p99_us,
        "found": l.found,
        "found_median_us": l.found_median_us,
        "found_p99_us": l.found_p99_us,
    })
}
