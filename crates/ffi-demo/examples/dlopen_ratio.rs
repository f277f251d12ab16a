//! The hot path in a `dlopen`ed cdylib against the same loop linked into an executable:
//!
//! ```sh
//! cargo run --release -p restartable-ffi-demo --example dlopen_ratio [-- ROUNDS]
//! ```
//!
//! Each round runs the C host (`host.c`, compiled with gcc) as a fresh process that `dlopen`s
//! `librestartable_ffi_demo.so` and times `rs_counter_add_n` (3 timings after a warm-up), then
//! times the same function of the rlib linked into this executable (3 timings after a
//! warm-up). Rounds interleave the two; the medians and their ratio are printed. A measurement,
//! never a pass/fail check.

use std::process::Command;
use std::time::Instant;

#[path = "../tests/support/mod.rs"]
mod support;

use restartable_ffi_demo::{rs_counter_add_n, rs_counter_free, rs_counter_new, rs_counter_sum};

const TIMES: u64 = 20_000_000;
const PER_ROUND: usize = 3;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(9, |a| a.parse().expect("ROUNDS: a number"));
    let lib = support::library();
    let dir = std::env::current_exe().expect("current_exe").parent().expect("a directory").to_path_buf();
    let host = support::compile_host(&dir).expect("gcc host.c").expect("gcc is needed for the C host");

    let (mut cdylib, mut exe) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let out = Command::new(&host)
            .arg(&lib)
            .args(["bench", &TIMES.to_string(), &PER_ROUND.to_string()])
            .output()
            .expect("run the host");
        assert!(out.status.success(), "host: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        cdylib.extend(text.lines().filter_map(|l| l.strip_prefix("ns_per_add ")).map(|v| v.parse::<f64>().unwrap()));

        let c = rs_counter_new();
        // SAFETY: `c` is a live counter until freed below.
        unsafe {
            rs_counter_add_n(c, 1, 1_000_000);
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                rs_counter_add_n(c, 1, TIMES);
                exe.push(t.elapsed().as_nanos() as f64 / TIMES as f64);
            }
            assert_eq!(rs_counter_sum(c), 1_000_000 + TIMES * PER_ROUND as u64);
            rs_counter_free(c);
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let (d, e) = (median(&mut cdylib), median(&mut exe));
    println!("cpu:        {cpu} ({} online)", restartable::sys::online_cpus());
    println!("mode:       {}", restartable::mode());
    println!("rseq area:  {}", restartable::registration());
    println!("method:     {rounds} rounds x {PER_ROUND} timings of {TIMES} adds each, interleaved; medians");
    println!("cdylib (dlopen from C):   {d:.3} ns/add   (min {:.3}, max {:.3})", cdylib[0], cdylib[cdylib.len() - 1]);
    println!("executable (rlib linked): {e:.3} ns/add   (min {:.3}, max {:.3})", exe[0], exe[exe.len() - 1]);
    println!("ratio cdylib/executable:  {:.3}", d / e);
}
