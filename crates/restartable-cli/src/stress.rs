//! `restartable stress`: hammer every collection from 6 x cores threads while a remote thread
//! drains, takes and swaps other CPUs' data through the guard, with optional delay injection
//! inside the critical sections, signal storms, yields, sleeps and affinity churn; then check
//! conservation exactly (see [`cases`]). Any broken invariant exits 1 and prints the command
//! line that reproduces it. `--matrix quick|full` runs the whole grid of options ([`matrix`]).
//!
//! The pieces: [`Args`] (the command line) resolves once into a [`Config`] (one run: which
//! tests, how many threads and operations, the index mode, the [`Disturbance`], the mode);
//! [`run_config`] runs it in this process through the [`harness`] and returns a [`Report`];
//! [`Config::args`] renders it back to a command line, for the matrix's children and the
//! reproduce lines.
//!
//! - Adding a test: a variant of [`Test`] and its function in [`cases`] (see there).
//! - Adding a disturbance: a field of [`Disturbance`] and its function in [`disturbance`] (see
//!   there). The matrix gets new option groups in [`matrix`]'s `groups`.

mod cases;
mod disturbance;
mod harness;
mod matrix;
mod report;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Instant;

use restartable::ops::{Cpu, MmCid};
use restartable::{Degraded, Mode};
use serde_json::{Value, json};

use crate::CmdResult;
use crate::reexec::{FORCE_DEGRADED, Reexec, forced};
pub use cases::Test;
pub use disturbance::Disturbance;
pub use report::{Report, TestReport};

/// `--reps` default.
const DEFAULT_REPS: u64 = 100_000;

/// How per-CPU data is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexArg {
    /// By CPU number.
    Cpu,
    /// By memory-map concurrency id (rseq `mm_cid`).
    #[value(alias = "mm_cid", alias = "mmcid")]
    MmCid,
}

impl IndexArg {
    fn name(self) -> &'static str {
        match self {
            IndexArg::Cpu => "cpu",
            IndexArg::MmCid => "mm-cid",
        }
    }
}

/// The size of `--matrix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatrixArg {
    /// Every option group once, short runs (a few minutes).
    Quick,
    /// More loop counts, intervals and combinations, longer runs.
    Full,
}

/// Arguments of `restartable stress`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each test checks conservation exactly and exits 1 on any loss, printing the command line that \
reproduces it. Delay injection (--inject-point) needs a binary built with `--features inject`:
  cargo run --release -p restartable-cli --features inject -- stress --inject-point 5 --inject-loops 10000")]
pub struct Args {
    /// The test to run.
    // `std::option::Option`, spelled out, so that clap takes the parser's `Option<Test>` as
    // the value (`all` is `None`) instead of making the argument optional.
    #[arg(long, default_value = "all", value_parser = cases::selection())]
    pub test: std::option::Option<Test>,

    /// Worker threads [default: 6 x the CPUs this process may use].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Operations per worker thread, per test.
    #[arg(long, default_value_t = DEFAULT_REPS, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub reps: u64,

    /// Index per-CPU data by CPU number or by mm_cid.
    #[arg(long, value_enum, default_value = "cpu")]
    pub index: IndexArg,

    /// Print the injection points and exit.
    #[arg(long)]
    pub list_points: bool,

    /// The disturbances (--inject-point ... --affinity-churn).
    #[command(flatten)]
    pub disturbance: Disturbance,

    /// Run in degraded mode (every operation through the guard words): re-runs this command
    /// with RESTARTABLE_FORCE_DEGRADED=1, since the mode is decided once per process.
    #[arg(long)]
    pub force_degraded: bool,

    /// Stop each test's workers after this many seconds even if --reps is not reached.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_hyphen_values = true)]
    pub time_limit: Option<f64>,

    /// Print one JSON object instead of the table: `config` (with the process's `mode` and the
    /// `command` that reproduces the run), `tests` (each with `ops`, `checks_passed`,
    /// `checks_failed`, `aborts` and `slow_path_uses` seen by the retry driver, `opv_runs`,
    /// `handler_ops` (`--signal-ops`), `forks` (`--fork`), `remote_rounds`, `seconds`, `ok`,
    /// `failures` and `reproduce`), and `ok`.
    #[arg(long)]
    pub json: bool,

    /// Run the whole matrix: every option group x test x index mode x {fast, degraded}, each
    /// configuration in a child process; a summary table at the end. --threads, --reps and
    /// --time-limit override the matrix's own; --json prints the summary as one object.
    #[arg(long, value_enum, conflicts_with_all = [
        "test", "index", "inject_point", "inject_loops", "every", "yield_now", "signal", "sleep_ms",
        "affinity_churn", "force_degraded", "list_points",
    ])]
    pub matrix: Option<MatrixArg>,

    /// (Testing the tester) make the counter test use a deliberately broken op that commits
    /// twice, so that the run must fail. Inject builds only.
    #[arg(long, hide = true)]
    pub sabotage: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("`{s}`: expected a number of seconds above 0 and at most 86400"))
    }
}

/// One fully resolved stress run: what `stress` runs in this process, what the harness reads,
/// and what a matrix child is told to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `None` for all tests.
    pub test: Option<Test>,
    /// Worker threads.
    pub threads: usize,
    /// Operations per worker, per test.
    pub reps: u64,
    /// How per-CPU data is indexed.
    pub index: IndexArg,
    /// What is done to the workers besides running them.
    pub disturbance: Disturbance,
    /// Stop each test's workers after this many seconds.
    pub time_limit: Option<f64>,
    /// Degraded mode (forced by the environment variable, in this process or the child's).
    pub degraded: bool,
    /// Use the deliberately broken op in the counter test.
    pub sabotage: bool,
}

impl Config {
    /// Every test, `threads` workers of `reps` operations, by CPU number, undisturbed, no time
    /// limit, not degraded.
    pub fn new(threads: usize, reps: u64) -> Config {
        Config {
            test: None,
            threads,
            reps,
            index: IndexArg::Cpu,
            disturbance: Disturbance::none(),
            time_limit: None,
            degraded: false,
            sabotage: false,
        }
    }

    /// The run `args` ask for, in degraded mode or not.
    fn from_args(args: &Args, degraded: bool) -> Config {
        Config {
            test: args.test,
            index: args.index,
            disturbance: args.disturbance.clone(),
            time_limit: args.time_limit,
            degraded,
            sabotage: args.sabotage,
            ..Config::new(args.threads.map_or_else(default_threads, |t| t as usize), args.reps)
        }
    }

    /// The arguments after `restartable` that reproduce this configuration, for `test`
    /// (or for the configuration's own selection when `None`).
    pub fn args(&self, test: Option<Test>) -> Vec<String> {
        let mut a: Vec<String> = vec!["stress".into(), "--test".into()];
        a.push(test.or(self.test).map_or("all", Test::name).into());
        a.extend(["--index".into(), self.index.name().into()]);
        a.extend(["--threads".into(), self.threads.to_string(), "--reps".into(), self.reps.to_string()]);
        a.extend(self.disturbance.argv());
        if let Some(t) = self.time_limit {
            a.extend(["--time-limit".into(), t.to_string()]);
        }
        if self.sabotage {
            a.push("--sabotage".into());
        }
        if self.degraded {
            a.push("--force-degraded".into());
        }
        a
    }

    /// `restartable stress ...` for `test`.
    pub fn command(&self, test: Option<Test>) -> String {
        format!("restartable {}", self.args(test).join(" "))
    }

    /// The same through cargo, with the features it needs.
    pub fn cargo_command(&self, test: Option<Test>) -> String {
        let inject = self.disturbance.inject_point.is_some() || self.sabotage;
        let features = if inject { " --features inject" } else { "" };
        format!("cargo run --release -p restartable-cli{features} -- {}", self.args(test).join(" "))
    }

    /// The `config` object of the JSON report (without the mode).
    fn to_json(&self) -> Value {
        let mut c = json!({
            "test": self.test.map_or("all", Test::name),
            "threads": self.threads,
            "reps": self.reps,
            "index": self.index.name(),
        });
        if let Value::Object(m) = &mut c {
            m.extend(self.disturbance.json());
        }
        c["time_limit_s"] = json!(self.time_limit);
        c["force_degraded"] = json!(self.degraded);
        c["sabotage"] = json!(self.sabotage);
        c["command"] = json!(self.command(None));
        c
    }
}

/// 6 x the [cores](crate::cpus::cores) (the CPUs this process may run on).
pub fn default_threads() -> usize {
    6 * crate::cpus::cores()
}

/// Whether the `inject` feature (and so `restartable::inject`) is compiled into this binary.
pub const INJECT: bool = cfg!(feature = "inject");

fn need_inject(what: &str) -> Box<dyn std::error::Error> {
    format!(
        "{what} needs delay injection, which this binary was built without: build it with \
         `--features inject` (for example `cargo run --release -p restartable-cli --features inject -- stress ...`)"
    )
    .into()
}

/// Run `restartable stress`.
pub fn run(args: &Args) -> CmdResult {
    if args.list_points {
        return list_points();
    }
    if !INJECT && args.sabotage {
        return Err(need_inject("--sabotage"));
    }
    if let Some(size) = args.matrix {
        return matrix::run(size, args);
    }
    if !INJECT && args.disturbance.inject_point.is_some() {
        return Err(need_inject("--inject-point"));
    }
    if args.force_degraded && !forced() {
        return reexec_degraded();
    }
    // Degraded also when the variable came from the environment: the reproduce line must say so.
    let cfg = Config::from_args(args, forced());
    if cfg.degraded && restartable::mode() != &Mode::Degraded(Degraded::Forced) {
        return Err(format!("{FORCE_DEGRADED}=1 did not force degraded mode (mode: {})", restartable::mode()).into());
    }
    let report = run_config(&cfg)?;
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", report.to_json(&cfg))?;
    } else {
        report.print(&cfg, &mut out)?;
    }
    out.flush()?;
    if report.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        report.print_failures(&cfg, &mut io::stderr().lock())?;
        Ok(ExitCode::FAILURE)
    }
}

fn list_points() -> CmdResult {
    let mut out = io::stdout().lock();
    #[cfg(feature = "inject")]
    for d in &restartable::inject::DESCRIPTIONS[1..] {
        writeln!(out, "{d}")?;
    }
    #[cfg(not(feature = "inject"))]
    writeln!(out, "this binary was built without delay injection (build with `--features inject`)")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Run this very command again with degraded mode forced, and end as it ends.
fn reexec_degraded() -> CmdResult {
    let run = Reexec::new(std::env::args_os().skip(1)).degraded(true).inherit_output().run()?;
    match run.status.code() {
        Some(c) => Ok(ExitCode::from(u8::try_from(c).unwrap_or(1))),
        None => Err(format!("the degraded run ended without an exit code: {}", run.status).into()),
    }
}

/// Run a configuration in this process.
pub fn run_config(cfg: &Config) -> Result<Report, Box<dyn std::error::Error>> {
    // Decide the mode before the first test, so that its cost is not in a test's time.
    let _ = restartable::mode();
    cfg.disturbance.prepare()?;
    let reports = run_tests(cfg);
    cfg.disturbance.finish();
    Ok(Report { tests: reports? })
}

/// Each test of `cfg`, with the library's counters read around it.
fn run_tests(cfg: &Config) -> Result<Vec<TestReport>, Box<dyn std::error::Error>> {
    let tests = cfg.test.as_ref().map_or(Test::all(), std::slice::from_ref);
    let mut reports = Vec::with_capacity(tests.len());
    for &test in tests {
        let (aborts, slow, opv) =
            (restartable::retry::aborts(), restartable::retry::slow_path_uses(), restartable::opv::runs());
        let (handled, forked) = (disturbance::handler_runs(), disturbance::forked());
        #[cfg(feature = "count-allocations")]
        let under_guard = crate::alloc_check::under_guard();
        let start = Instant::now();
        let found = match cfg.index {
            IndexArg::Cpu => cases::run::<Cpu>(test, cfg),
            IndexArg::MmCid => cases::run::<MmCid>(test, cfg),
        };
        let seconds = start.elapsed().as_secs_f64();
        #[allow(unused_mut)]
        let mut found = found.map_err(|e| format!("{}: {e}", test.name()))?;
        #[cfg(feature = "count-allocations")]
        {
            let n = crate::alloc_check::under_guard() - under_guard;
            let calls = crate::alloc_check::calls();
            found.check(n == 0 && calls > 0, || {
                format!("{n} of {calls} allocations or frees were made while holding a guard (count-allocations)")
            });
        }
        reports.push(TestReport {
            test,
            found,
            aborts: restartable::retry::aborts() - aborts,
            slow_path_uses: restartable::retry::slow_path_uses() - slow,
            opv_runs: restartable::opv::runs() - opv,
            handler_ops: disturbance::handler_runs() - handled,
            forks: disturbance::forked() - forked,
            seconds,
        });
    }
    Ok(reports)
}
