//! `restartable stress --matrix quick|full`: every option group x test x index mode x
//! {fast, degraded}. Each configuration (group, index, mode) runs `--test all --json` in a child
//! process of this same binary (degraded ones with `RESTARTABLE_FORCE_DEGRADED=1`, since the
//! mode is decided once per process); a check is one (configuration, test) verification. A
//! progress bar runs meanwhile, a summary table per option group comes at the end, and every
//! broken invariant is reported with the exact command line that reproduces it (exit 1).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Args, Config, DEFAULT_REPS, Disturbance, INJECT, IndexArg, MatrixArg, Test, default_threads};
use crate::CmdResult;
use crate::reexec::{self, Reexec};

/// One option group: a name and the disturbances its configurations add to the plain run.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    disturbance: Disturbance,
}

/// The group `name` with disturbance `d`.
fn group(name: impl Into<String>, d: Disturbance) -> Group {
    Group { name: name.into(), disturbance: d }
}

/// No disturbance yet (to build on).
fn none() -> Disturbance {
    Disturbance::none()
}

/// The option groups of a matrix size.
fn groups(size: MatrixArg) -> Vec<Group> {
    let mut g = vec![group("plain", none())];
    match size {
        MatrixArg::Quick => {
            g.extend((1..=8).map(|k| group(format!("inject {k}"), none().inject(k, 20_000))));
            g.push(group("yield", none().yields().every(16)));
            g.push(group("signal", none().signals().every(32)));
            g.push(group("sleep", none().sleeps(1).every(256)));
            g.push(group("affinity churn", none().churns()));
            g.push(group("inject 5 + signal", none().inject(5, 20_000).signals().every(32)));
            g.push(group("inject 3 + yield + churn", none().inject(3, 20_000).yields().every(16).churns()));
            g.push(group("inject 8 + signal + sleep", none().inject(8, 20_000).signals().sleeps(1).every(256)));
            g.push(group("signal ops", none().signal_ops().every(16)));
            g.push(group("inject 5 + signal ops", none().inject(5, 20_000).signal_ops().every(32)));
            g.push(group("fork", none().forks()));
        }
        MatrixArg::Full => {
            for k in 1..=8 {
                for loops in [1_000, 100_000] {
                    g.push(group(format!("inject {k} x{loops}"), none().inject(k, loops)));
                }
            }
            for m in [1, 16] {
                g.push(group(format!("yield /{m}"), none().yields().every(m)));
            }
            for m in [4, 64] {
                g.push(group(format!("signal /{m}"), none().signals().every(m)));
            }
            for m in [64, 1024] {
                g.push(group(format!("sleep 1ms /{m}"), none().sleeps(1).every(m)));
            }
            g.push(group("affinity churn", none().churns()));
            g.push(group("churn + yield", none().churns().yields().every(16)));
            for k in 1..=8 {
                g.push(group(format!("inject {k} + signal"), none().inject(k, 20_000).signals().every(16)));
            }
            for k in 1..=8 {
                g.push(group(format!("inject {k} + churn"), none().inject(k, 20_000).churns()));
            }
            for k in 1..=8 {
                g.push(group(format!("inject {k} + yield"), none().inject(k, 20_000).yields().every(8)));
            }
            g.push(group("inject 5 + everything", none().inject(5, 20_000).signals().yields().churns().every(16)));
            g.push(group("sleep + signal", none().sleeps(1).signals().every(128)));
            g.push(group("inject 7 + sleep", none().inject(7, 100_000).sleeps(1).every(128)));
            for m in [4, 64] {
                g.push(group(format!("signal ops /{m}"), none().signal_ops().every(m)));
            }
            for k in [4, 5, 8] {
                g.push(group(format!("inject {k} + signal ops"), none().inject(k, 20_000).signal_ops().every(16)));
            }
            g.push(group("fork", none().forks()));
            g.push(group("fork + signal ops + churn", none().forks().signal_ops().every(32).churns()));
            g.push(group("inject 8 + fork", none().inject(8, 20_000).forks()));
        }
    }
    g
}

/// The run every configuration of a matrix size starts from (the matrix's own lengths unless
/// --threads, --reps or --time-limit say otherwise), and the time limit of each child.
fn base(size: MatrixArg, args: &Args) -> (Config, Duration) {
    let (reps, time_limit, timeout) = match size {
        MatrixArg::Quick => (200_000, 0.3, 90),
        MatrixArg::Full => (1_000_000, 1.0, 300),
    };
    let threads = args.threads.map_or_else(default_threads, |t| t as usize);
    let mut cfg = Config::new(threads, if args.reps == DEFAULT_REPS { reps } else { args.reps });
    cfg.time_limit = Some(args.time_limit.unwrap_or(time_limit));
    cfg.sabotage = args.sabotage;
    (cfg, Duration::from_secs(timeout))
}

/// Totals of a group (or of everything).
#[derive(Debug, Default, Clone)]
struct Tally {
    configurations: u64,
    checks: u64,
    passed: u64,
    aborts: u64,
    slow_path_uses: u64,
    seconds: f64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.configurations += o.configurations;
        self.checks += o.checks;
        self.passed += o.passed;
        self.aborts += o.aborts;
        self.slow_path_uses += o.slow_path_uses;
        self.seconds += o.seconds;
    }
}

/// A broken check: the command that reproduces it and what went wrong.
struct Failure {
    command: String,
    cargo: String,
    reasons: Vec<String>,
}

/// Run the matrix.
pub fn run(size: MatrixArg, args: &Args) -> CmdResult {
    let (base, child_timeout) = base(size, args);
    let all = groups(size);
    let (groups, skipped): (Vec<Group>, Vec<Group>) =
        all.into_iter().partition(|g| g.disturbance.inject_point.is_none() || INJECT);
    let mut err = io::stderr();
    if !skipped.is_empty() {
        writeln!(
            err,
            "stress --matrix: skipping {} delay-injection groups: this binary was built without them \
             (build with `--features inject` to run the whole matrix)",
            skipped.len()
        )?;
    }
    let mut configs = Vec::new();
    for g in &groups {
        for index in [IndexArg::Cpu, IndexArg::MmCid] {
            for degraded in [false, true] {
                let cfg = Config { index, degraded, disturbance: g.disturbance.clone(), ..base.clone() };
                configs.push((g.name.clone(), cfg));
            }
        }
    }
    let size_name = match size {
        MatrixArg::Quick => "quick",
        MatrixArg::Full => "full",
    };
    let checks_planned = configs.len() * Test::all().len();
    writeln!(
        err,
        "stress --matrix {size_name}: {} option groups x {} tests x 2 index modes x 2 modes = {} configurations, \
         {checks_planned} checks ({} threads, {} reps, time limit {} s per test)",
        groups.len(),
        Test::all().len(),
        configs.len(),
        base.threads,
        base.reps,
        base.time_limit.unwrap_or_default()
    )?;
    let bar = crate::progress::bar(configs.len());
    let start = Instant::now();
    let mut rows: Vec<(String, Tally)> = groups.iter().map(|g| (g.name.clone(), Tally::default())).collect();
    let mut failures = Vec::new();
    for (n, (group, cfg)) in configs.iter().enumerate() {
        let label = format!("{group} | {} | {}", cfg.index.name(), if cfg.degraded { "degraded" } else { "fast" });
        bar.set_message(label.clone());
        let (tally, fails) = run_child(cfg, child_timeout);
        if bar.is_hidden() {
            let status = if fails.is_empty() { "ok" } else { "FAIL" };
            writeln!(
                err,
                "[{}/{}] {status:<4} {label}: {}/{} checks, {:.1} s",
                n + 1,
                configs.len(),
                tally.passed,
                tally.checks,
                tally.seconds
            )?;
        }
        for f in &fails {
            bar.suspend(|| print_failure(&mut io::stderr(), f));
        }
        failures.extend(fails);
        if let Some((_, row)) = rows.iter_mut().find(|(name, _)| name == group) {
            row.add(&tally);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    let mut total = Tally::default();
    for (_, r) in &rows {
        total.add(r);
    }
    let mut out = io::stdout().lock();
    if args.json {
        let groups: Vec<Value> = rows.iter().map(|(name, t)| tally_json(Some(name), t)).collect();
        let fails: Vec<Value> =
            failures.iter().map(|f| json!({ "command": f.command, "cargo": f.cargo, "reasons": f.reasons })).collect();
        let mut v = tally_json(None, &total);
        v["matrix"] = json!(size_name);
        v["wall_seconds"] = json!(wall);
        v["skipped_groups"] = json!(skipped.iter().map(|g| g.name.clone()).collect::<Vec<_>>());
        v["groups"] = json!(groups);
        v["failures"] = json!(fails);
        v["ok"] = json!(failures.is_empty());
        writeln!(out, "{v}")?;
    } else {
        print_table(&mut out, &rows, &total)?;
        writeln!(out, "matrix {size_name}: {} of {} checks passed in {wall:.1} s", total.passed, total.checks)?;
    }
    out.flush()?;
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(err, "stress --matrix {size_name}: {} failed checks; reproduce with:", total.checks - total.passed)?;
        for f in &failures {
            writeln!(err, "  {}", f.command)?;
        }
        Ok(ExitCode::FAILURE)
    }
}

fn tally_json(name: Option<&str>, t: &Tally) -> Value {
    let mut v = json!({
        "configurations": t.configurations,
        "checks": t.checks,
        "checks_passed": t.passed,
        "aborts": t.aborts,
        "slow_path_uses": t.slow_path_uses,
        "seconds": t.seconds,
    });
    if let Some(n) = name {
        v["group"] = json!(n);
    }
    v
}

fn print_failure(err: &mut impl Write, f: &Failure) {
    let _ = writeln!(err, "FAILED: {}", f.command);
    for r in &f.reasons {
        let _ = writeln!(err, "  {r}");
    }
    let _ = writeln!(err, "  (through cargo: {})", f.cargo);
}

fn print_table(out: &mut impl Write, rows: &[(String, Tally)], total: &Tally) -> io::Result<()> {
    let w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    let line = |out: &mut dyn Write, name: &str, t: &Tally| {
        writeln!(
            out,
            "{name:<w$}  {:>7}  {:>5}/{:<5}  {:>9}  {:>9}  {:>8.1}",
            t.configurations, t.passed, t.checks, t.aborts, t.slow_path_uses, t.seconds
        )
    };
    writeln!(
        out,
        "{:<w$}  {:>7}  {:>11}  {:>9}  {:>9}  {:>8}",
        "group", "configs", "checks", "aborts", "slow path", "seconds"
    )?;
    for (name, t) in rows {
        line(out, name, t)?;
    }
    line(out, "total", total)
}

/// Run one configuration as a child process and read its JSON report.
fn run_child(cfg: &Config, timeout: Duration) -> (Tally, Vec<Failure>) {
    let mut tally = Tally { configurations: 1, checks: Test::all().len() as u64, ..Tally::default() };
    let whole = |reasons: Vec<String>| Failure { command: cfg.command(None), cargo: cfg.cargo_command(None), reasons };
    let started = Instant::now();
    let args = cfg.args(None).into_iter().chain(["--json".to_string()]);
    let child = Reexec::new(args).degraded(cfg.degraded).timeout(timeout).run();
    let out = match child {
        Ok(o) => o,
        Err(reexec::Error::TimedOut(t)) => {
            let why = format!("timed out after {} s (a hang: lost wake-up, livelock?)", t.as_secs());
            return (tally, vec![whole(vec![why])]);
        }
        Err(e) => return (tally, vec![whole(vec![e.to_string()])]),
    };
    tally.seconds = started.elapsed().as_secs_f64();
    let report: Option<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["tests"].is_array());
    let Some(report) = report else {
        let mut reasons = vec![format!("the child ended with {} and printed no report", out.status)];
        reasons.extend(tail(&out.stderr));
        return (tally, vec![whole(reasons)]);
    };
    let mut failures = Vec::new();
    let tests = report["tests"].as_array().map(Vec::as_slice).unwrap_or_default();
    for t in tests {
        tally.aborts += t["aborts"].as_u64().unwrap_or(0);
        tally.slow_path_uses += t["slow_path_uses"].as_u64().unwrap_or(0);
        let name = t["test"].as_str().unwrap_or("?");
        let test = Test::all().iter().copied().find(|x| x.name() == name);
        if t["ok"].as_bool() == Some(true) {
            tally.passed += 1;
        } else {
            let reasons = t["failures"]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            failures.push(Failure { command: cfg.command(test), cargo: cfg.cargo_command(test), reasons });
        }
    }
    if tests.len() != Test::all().len() {
        failures.push(whole(vec![format!("the child reported {} tests, not {}", tests.len(), Test::all().len())]));
    } else if !out.status.success() && failures.is_empty() {
        let mut reasons = vec![format!("the child ended with {} although every test passed", out.status)];
        reasons.extend(tail(&out.stderr));
        failures.push(whole(reasons));
    }
    (tally, failures)
}

/// The last lines of a child's stderr.
fn tail(stderr: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].iter().map(|l| format!("stderr: {l}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matrix_has_more_checks_than_the_c_reference() {
        let checks = groups(MatrixArg::Full).len() * Test::all().len() * 2 * 2;
        assert!(checks > 1184, "{checks}");
        let quick = groups(MatrixArg::Quick).len() * Test::all().len() * 2 * 2;
        assert!(quick < checks);
    }

    #[test]
    fn every_group_name_is_unique_and_every_point_is_covered() {
        for size in [MatrixArg::Quick, MatrixArg::Full] {
            let g = groups(size);
            let mut names: Vec<&str> = g.iter().map(|g| g.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), g.len());
            let d: Vec<&Disturbance> = g.iter().map(|g| &g.disturbance).collect();
            for k in 1..=8 {
                assert!(d.iter().any(|d| d.injection().is_some_and(|(p, _)| p == k)), "point {k}");
            }
            assert!(
                d.iter().any(|d| d.yield_now) && d.iter().any(|d| d.signal) && d.iter().any(|d| d.sleep_ms.is_some())
            );
            assert!(d.iter().any(|d| d.affinity_churn));
            assert!(d.iter().any(|d| d.injection().is_some() && d.signal));
        }
    }

    #[test]
    fn configurations_round_trip_through_the_command_line() {
        let cfg = Config {
            test: None,
            threads: 3,
            reps: 10,
            index: IndexArg::MmCid,
            disturbance: Disturbance::none().inject(5, 100).every(7).yields().signals().sleeps(0).churns(),
            time_limit: Some(0.5),
            degraded: true,
            sabotage: false,
        };
        let cmd = cfg.command(Some(Test::Memcpy));
        assert_eq!(
            cmd,
            "restartable stress --test memcpy --index mm-cid --threads 3 --reps 10 --inject-point 5 \
             --inject-loops 100 --every 7 --yield --signal --sleep-ms 0 --affinity-churn --time-limit 0.5 \
             --force-degraded"
        );
        // ... and parses back into the same configuration.
        use clap::Parser;
        let argv = std::iter::once("restartable".to_string()).chain(cfg.args(Some(Test::Memcpy)));
        let cli = crate::Cli::try_parse_from(argv).expect("the reproduce line parses");
        let Some(crate::Command::Stress(a)) = cli.command else { panic!("not a stress command") };
        assert_eq!(a.test, Some(Test::Memcpy));
        assert_eq!((a.threads, a.reps, a.index), (Some(3), 10, IndexArg::MmCid));
        let d = &a.disturbance;
        assert_eq!((d.inject_point, d.inject_loops, d.every), (Some(5), Some(100), Some(7)));
        assert!(d.yield_now && d.signal && d.affinity_churn && a.force_degraded && !a.sabotage);
        assert_eq!((d.sleep_ms, a.time_limit), (Some(0), Some(0.5)));
        // The whole configuration comes back.
        assert_eq!(Config::from_args(&a, a.force_degraded), Config { test: Some(Test::Memcpy), ..cfg });
    }
}
