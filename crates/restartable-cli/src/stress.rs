//! `restartable stress`: hammer every collection from 6 x cores threads while a remote thread
//! drains, takes and swaps other CPUs' data through the guard, with optional delay injection
//! inside the critical sections, signal storms, yields, sleeps and affinity churn; then check
//! conservation exactly (see [`cases`]). Any broken invariant exits 1 and prints the command
//! line that reproduces it. `--matrix quick|full` runs the whole grid of options ([`matrix`]).

mod cases;
pub use cases::ALL;
mod harness;
mod matrix;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use restartable::ops::{Cpu, MmCid};
use restartable::{Degraded, Mode};
use serde_json::{Value, json};

use crate::CmdResult;
use crate::reexec::{FORCE_DEGRADED, Reexec, forced};
pub use cases::Test;
/// `--every` when a disturbance is asked for without it.
const DEFAULT_EVERY: u64 = 64;
/// `--reps` default.
const DEFAULT_REPS: u64 = 100_000;

/// Which tests `--test` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestArg {
    /// Counter: add on the current CPU, `take_cpu` remotely; totals must match.
    Counter,
    /// SpinLock: plain counters under per-CPU locks, locked remotely too.
    Spinlock,
    /// Stack: push/pop unique items, drain remotely; every item exactly once.
    Stack,
    /// Buffer: push/pop boxed items in small per-CPU buffers (full ones give items back).
    Buffer,
    /// MemcpyBuffer: 128-byte items with a checksum in every word (torn copies are caught).
    Memcpy,
    /// Two copies of a per-CPU array behind a pointer, swapped and drained with op vectors.
    Remote,
    /// Every test above, one after the other.
    All,
}

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
#[command(group(clap::ArgGroup::new("disturbance").multiple(true)))]
#[command(after_help = "\
Each test checks conservation exactly and exits 1 on any loss, printing the command line that \
reproduces it. Delay injection (--inject-point) needs a binary built with `--features inject`:
  cargo run --release -p restartable-cli --features inject -- stress --inject-point 5 --inject-loops 10000")]
pub struct Args {
    /// The test to run.
    #[arg(long, value_enum, default_value = "all")]
    pub test: TestArg,

    /// Worker threads [default: 6 x the CPUs this process may use].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Operations per worker thread, per test.
    #[arg(long, default_value_t = DEFAULT_REPS, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub reps: u64,

    /// Index per-CPU data by CPU number or by mm_cid.
    #[arg(long, value_enum, default_value = "cpu")]
    pub index: IndexArg,

    /// Spin inside every critical section at this point (1-8; see --list-points). Needs the
    /// `inject` feature.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub inject_point: Option<u8>,

    /// Spin count at the injection point [default: 10000].
    #[arg(long, value_name = "L", requires = "inject_point", value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub inject_loops: Option<u64>,

    /// Print the injection points and exit.
    #[arg(long)]
    pub list_points: bool,

    /// Disturb after every M-th operation of each worker (with --yield, --signal, --sleep-ms)
    /// [default: 64].
    #[arg(long, value_name = "M", requires = "disturbance", value_parser = clap::value_parser!(u64).range(1..))]
    pub every: Option<u64>,

    /// sched_yield at each disturbance.
    #[arg(long = "yield", group = "disturbance")]
    pub yield_now: bool,

    /// Send SIGUSR1 (empty handler) at each disturbance: to the process and to another worker
    /// thread by turns, so that signals land inside critical sections.
    #[arg(long, group = "disturbance")]
    pub signal: bool,

    /// Sleep this many milliseconds at each disturbance.
    #[arg(long, value_name = "MS", group = "disturbance", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub sleep_ms: Option<u64>,

    /// Run a thread that keeps moving the workers between CPUs (sched_setaffinity).
    #[arg(long)]
    pub affinity_churn: bool,

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
    /// `remote_rounds`, `seconds`, `ok`, `failures` and `reproduce`), and `ok`.
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

/// One fully resolved stress configuration: what a single run does, and what a matrix child
/// is told to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `None` for all tests.
    pub test: Option<Test>,
    pub threads: usize,
    pub reps: u64,
    pub index: IndexArg,
    /// `(point, loops)`.
    pub inject: Option<(u8, u64)>,
    pub every: u64,
    pub yield_now: bool,
    pub signal: bool,
    pub sleep_ms: Option<u64>,
    pub affinity_churn: bool,
    pub time_limit: Option<f64>,
    pub degraded: bool,
    pub sabotage: bool,
}

impl Config {
    fn disturbs(&self) -> bool {
        self.yield_now || self.signal || self.sleep_ms.is_some()
    }

    /// The arguments after `restartable` that reproduce this configuration, for `test`
    /// (or for the configuration's own selection when `None`).
    pub fn args(&self, test: Option<Test>) -> Vec<String> {
        let mut a: Vec<String> = vec!["stress".into(), "--test".into()];
        a.push(test.or(self.test).map_or("all", Test::name).into());
        a.extend(["--index".into(), self.index.name().into()]);
        a.extend(["--threads".into(), self.threads.to_string(), "--reps".into(), self.reps.to_string()]);
        if let Some((k, l)) = self.inject {
            a.extend(["--inject-point".into(), k.to_string(), "--inject-loops".into(), l.to_string()]);
        }
        if self.disturbs() {
            a.extend(["--every".into(), self.every.to_string()]);
        }
        if self.yield_now {
            a.push("--yield".into());
        }
        if self.signal {
            a.push("--signal".into());
        }
        if let Some(ms) = self.sleep_ms {
            a.extend(["--sleep-ms".into(), ms.to_string()]);
        }
        if self.affinity_churn {
            a.push("--affinity-churn".into());
        }
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
        let features = if self.inject.is_some() || self.sabotage { " --features inject" } else { "" };
        format!("cargo run --release -p restartable-cli{features} -- {}", self.args(test).join(" "))
    }

    fn plan(&self) -> harness::Plan {
        harness::Plan {
            threads: self.threads,
            reps: self.reps,
            time_limit: self.time_limit.map(Duration::from_secs_f64),
            every: self.every,
            yield_now: self.yield_now,
            signal: self.signal,
            sleep: self.sleep_ms.map(Duration::from_millis),
            affinity_churn: self.affinity_churn,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "test": self.test.map_or("all", Test::name),
            "threads": self.threads,
            "reps": self.reps,
            "index": self.index.name(),
            "inject_point": self.inject.map(|(k, _)| k),
            "inject_loops": self.inject.map(|(_, l)| l),
            "every": self.disturbs().then_some(self.every),
            "yield": self.yield_now,
            "signal": self.signal,
            "sleep_ms": self.sleep_ms,
            "affinity_churn": self.affinity_churn,
            "time_limit_s": self.time_limit,
            "force_degraded": self.degraded,
            "sabotage": self.sabotage,
            "command": self.command(None),
        })
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
    if !INJECT && args.inject_point.is_some() {
        return Err(need_inject("--inject-point"));
    }
    if args.force_degraded && !forced() {
        return reexec_degraded();
    }
    let test = match args.test {
        TestArg::Counter => Some(Test::Counter),
        TestArg::Spinlock => Some(Test::Spinlock),
        TestArg::Stack => Some(Test::Stack),
        TestArg::Buffer => Some(Test::Buffer),
        TestArg::Memcpy => Some(Test::Memcpy),
        TestArg::Remote => Some(Test::Remote),
        TestArg::All => None,
    };
    let cfg = Config {
        test,
        threads: args.threads.map_or_else(default_threads, |t| t as usize),
        reps: args.reps,
        index: args.index,
        inject: args.inject_point.map(|k| (k, args.inject_loops.unwrap_or(10_000))),
        every: args.every.unwrap_or(DEFAULT_EVERY),
        yield_now: args.yield_now,
        signal: args.signal,
        sleep_ms: args.sleep_ms,
        affinity_churn: args.affinity_churn,
        time_limit: args.time_limit,
        // Also when the variable came from the environment: the reproduce line must say so.
        degraded: forced(),
        sabotage: args.sabotage,
    };
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
        let mut err = io::stderr().lock();
        for t in report.tests.iter().filter(|t| !t.ok()) {
            writeln!(err, "stress: FAILED: {} ({} broken invariants)", t.test.name(), t.found.failed)?;
            for m in &t.found.failures {
                writeln!(err, "  {m}")?;
            }
            writeln!(err, "  reproduce: {}", cfg.command(Some(t.test)))?;
            writeln!(err, "         or: {}", cfg.cargo_command(Some(t.test)))?;
        }
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

/// One test's result.
pub struct TestReport {
    pub test: Test,
    pub found: cases::Found,
    pub aborts: u64,
    pub slow_path_uses: u64,
    pub opv_runs: u64,
    pub seconds: f64,
}

impl TestReport {
    pub fn ok(&self) -> bool {
        self.found.failed == 0
    }

    /// The column titles of [`row`](Self::row).
    pub fn header() -> String {
        format!(
            "{:<9} {:>4} {:>10} {:>7} {:>7} {:>9} {:>7} {:>8}",
            "test", "ok", "ops", "checks", "aborts", "slow path", "op vecs", "seconds"
        )
    }

    /// One line of the text report (also used by the tour).
    pub fn row(&self) -> String {
        format!(
            "{:<9} {:>4} {:>10} {:>7} {:>7} {:>9} {:>7} {:>8.2}",
            self.test.name(),
            if self.ok() { "ok" } else { "FAIL" },
            self.found.ops,
            self.found.checks_passed,
            self.aborts,
            self.slow_path_uses,
            self.opv_runs,
            self.seconds
        )
    }
}

/// A whole run's result.
pub struct Report {
    pub tests: Vec<TestReport>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.tests.iter().all(TestReport::ok)
    }

    fn to_json(&self, cfg: &Config) -> Value {
        let mode = restartable::mode();
        let mut c = cfg.to_json();
        c["mode"] =
            json!({ "kind": if mode.is_fast() { "fast" } else { "degraded" }, "description": mode.to_string() });
        let tests: Vec<Value> = self
            .tests
            .iter()
            .map(|t| {
                json!({
                    "test": t.test.name(),
                    "ok": t.ok(),
                    "ops": t.found.ops,
                    "remote_rounds": t.found.remote_rounds,
                    "checks_passed": t.found.checks_passed,
                    "checks_failed": t.found.failed,
                    "aborts": t.aborts,
                    "slow_path_uses": t.slow_path_uses,
                    "opv_runs": t.opv_runs,
                    "seconds": t.seconds,
                    "failures": t.found.failures,
                    "reproduce": (!t.ok()).then(|| cfg.command(Some(t.test))),
                })
            })
            .collect();
        json!({ "config": c, "tests": tests, "ok": self.ok() })
    }

    fn print(&self, cfg: &Config, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "{}", cfg.command(None))?;
        writeln!(out, "mode: {}", restartable::mode())?;
        writeln!(out, "{}", TestReport::header())?;
        for t in &self.tests {
            writeln!(out, "{}", t.row())?;
        }
        let passed = self.tests.iter().filter(|t| t.ok()).count();
        writeln!(out, "stress: {passed} of {} tests passed", self.tests.len())
    }
}

/// Run a configuration in this process.
pub fn run_config(cfg: &Config) -> Result<Report, Box<dyn std::error::Error>> {
    if cfg.signal {
        harness::install_signal_handler()?;
    }
    // Decide the mode before the first test, so that its cost is not in a test's time.
    let _ = restartable::mode();
    set_inject(cfg.inject);
    let plan = cfg.plan();
    let tests: Vec<Test> = cfg.test.map_or_else(|| cases::ALL.to_vec(), |t| vec![t]);
    let mut reports = Vec::new();
    for test in tests {
        let (aborts, slow, opv) =
            (restartable::retry::aborts(), restartable::retry::slow_path_uses(), restartable::opv::runs());
        let start = Instant::now();
        let found = match cfg.index {
            IndexArg::Cpu => cases::run::<Cpu>(test, &plan, cfg.sabotage),
            IndexArg::MmCid => cases::run::<MmCid>(test, &plan, cfg.sabotage),
        };
        let seconds = start.elapsed().as_secs_f64();
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                set_inject(None);
                return Err(format!("{}: {e}", test.name()).into());
            }
        };
        reports.push(TestReport {
            test,
            found,
            aborts: restartable::retry::aborts() - aborts,
            slow_path_uses: restartable::retry::slow_path_uses() - slow,
            opv_runs: restartable::opv::runs() - opv,
            seconds,
        });
    }
    set_inject(None);
    Ok(Report { tests: reports })
}

#[cfg(feature = "inject")]
fn set_inject(point: Option<(u8, u64)>) {
    restartable::inject::clear();
    if let Some((k, loops)) = point {
        restartable::inject::set(usize::from(k), loops);
    }
}

#[cfg(not(feature = "inject"))]
fn set_inject(_: Option<(u8, u64)>) {}
