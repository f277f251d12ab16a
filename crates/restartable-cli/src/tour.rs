//! The tour: what `restartable` with no subcommand shows, in under a minute: the environment,
//! a short stress of every collection (with a progress bar), the counters' benchmark table at
//! one thread and at the core count, the collections' at one thread, ending with one line that
//! says what was verified.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::stress::{self, Config, Disturbance, Test};
use crate::{CmdResult, bench, info};

/// Stress repetitions per worker in the tour (each test also stops after two seconds).
const STRESS_REPS: u64 = 200_000;
/// Seconds per benchmark measurement in the tour.
const BENCH_SECONDS: f64 = 0.15;
/// Seconds per measurement of the collections suite in the tour (at one thread only).
const COLLECTIONS_SECONDS: f64 = 0.03;

/// Run the tour.
pub fn tour() -> CmdResult {
    let start = Instant::now();
    let mut out = io::stdout().lock();
    writeln!(out, "== restartable: the environment (restartable info) ==")?;
    info::print_summary(&mut out)?;
    writeln!(out)?;

    let threads = stress::default_threads();
    writeln!(
        out,
        "== a short stress of every collection: {threads} threads, {STRESS_REPS} operations each, a remote \
         thread draining other CPUs (restartable stress) =="
    )?;
    writeln!(out, "  {}", stress::TestReport::header())?;
    out.flush()?;
    let bar = crate::progress::bar(Test::all().len());
    let (mut checks, mut ops, mut aborts, mut slow, mut failed) = (0u64, 0u64, 0u64, 0u64, Vec::new());
    for &test in Test::all() {
        bar.set_message(test.name());
        // By CPU number, at most two seconds per test, and undisturbed: the disturbances are
        // for `stress` and its matrix.
        let cfg = Config {
            test: Some(test),
            disturbance: Disturbance::none(),
            time_limit: Some(2.0),
            ..Config::new(threads, STRESS_REPS)
        };
        let report = stress::run_config(&cfg)?;
        for t in &report.tests {
            bar.suspend(|| println!("  {}", t.row()));
            checks += t.found.checks_passed;
            ops += t.found.ops;
            aborts += t.aborts;
            slow += t.slow_path_uses;
            if !t.ok() {
                failed.push(format!("{}: {}", cfg.command(Some(t.test)), t.found.failures.join("; ")));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !failed.is_empty() {
        writeln!(out, "stress FAILED; reproduce with:")?;
        for f in &failed {
            writeln!(out, "  {f}")?;
        }
        return Ok(ExitCode::FAILURE);
    }
    writeln!(out)?;

    let cores = crate::cpus::cores();
    writeln!(out, "== the benchmark at 1 thread and at {cores} threads (restartable bench) ==")?;
    out.flush()?;
    let table = bench::run_table(&[1, cores], Duration::from_secs_f64(BENCH_SECONDS))?;
    table.print()?;
    writeln!(out)?;

    writeln!(out, "== the collections at 1 thread (restartable bench --collections) ==")?;
    out.flush()?;
    let collections =
        bench::run_collections_table(&[1], Duration::from_secs_f64(COLLECTIONS_SECONDS), bench::DEFAULT_ROUNDS)?;
    writeln!(
        out,
        "method:  {COLLECTIONS_SECONDS:.3} s per measurement, {} rounds interleaved, median shown (the same machine and mode)",
        bench::DEFAULT_ROUNDS
    )?;
    collections.write_rows(&mut out)?;
    writeln!(out)?;
    writeln!(
        out,
        "verified in {:.0} s: {checks} stress checks passed over {ops} operations of every collection \
         ({aborts} aborts, {slow} slow-path uses, nothing lost or doubled), and every benchmarked \
         implementation counted exactly.",
        start.elapsed().as_secs_f64()
    )?;
    writeln!(out, "(more: restartable info | stress --help | bench --help)")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
