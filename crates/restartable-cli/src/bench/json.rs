//! The JSON form of a bench [`Table`] (`bench --json`): `suite` (`counters` or `collections`),
//! `op` (what one operation is), `machine`, `params`, `results` (per
//! implementation: `key`, `name`, and per thread count `threads`, `ns_per_op`, `mops`, `ops`,
//! `elapsed_ns` of the median round, and every round), `remote_take`, `library`.

use serde_json::{Value, json};

use super::report::{Latency, Sample, Table};

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
                "take": latency(&rt.take),
                "take_cpu": latency(&rt.take_cpu),
                "pause_us": rt.pause.as_micros() as u64,
            })),
            "library": { "aborts": self.library.aborts, "slow_path_uses": self.library.slow_path_uses },
        })
    }
}

/// One round of a cell.
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
