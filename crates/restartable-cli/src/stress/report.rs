//! What a stress run found: a [`TestReport`] per test and the [`Report`] of a run, as the text
//! table (whose rows the tour prints too) and as the `--json` object.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::Config;
use super::cases::{Found, Test};

/// One test's result.
pub struct TestReport {
    /// The test.
    pub test: Test,
    /// Its operations and checks.
    pub found: Found,
    /// Critical sections the retry driver saw abort during the test.
    pub aborts: u64,
    /// Operations that took the slow path during the test.
    pub slow_path_uses: u64,
    /// Op vectors run during the test.
    pub opv_runs: u64,
    /// Operations done by a signal handler on the structure (`--signal-ops`).
    pub handler_ops: u64,
    /// Forked children that checked the structure (`--fork`).
    pub forks: u64,
    /// Its wall time.
    pub seconds: f64,
}

impl TestReport {
    /// Whether every check held.
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
    /// One per test, in the order they ran.
    pub tests: Vec<TestReport>,
}

impl Report {
    /// Whether every test passed.
    pub fn ok(&self) -> bool {
        self.tests.iter().all(TestReport::ok)
    }

    /// The `--json` form: `config` (with the process's `mode`), `tests`, `ok`.
    pub fn to_json(&self, cfg: &Config) -> Value {
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
                    "handler_ops": t.handler_ops,
                    "forks": t.forks,
                    "seconds": t.seconds,
                    "failures": t.found.failures,
                    "reproduce": (!t.ok()).then(|| cfg.command(Some(t.test))),
                })
            })
            .collect();
        json!({ "config": c, "tests": tests, "ok": self.ok() })
    }

    /// The text form: the command, the mode, a row per test, and a count of those that passed.
    pub fn print(&self, cfg: &Config, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "{}", cfg.command(None))?;
        writeln!(out, "mode: {}", restartable::mode())?;
        writeln!(out, "{}", TestReport::header())?;
        for t in &self.tests {
            writeln!(out, "{}", t.row())?;
        }
        let passed = self.tests.iter().filter(|t| t.ok()).count();
        writeln!(out, "stress: {passed} of {} tests passed", self.tests.len())
    }

    /// On stderr, for every failed test: what broke, and the command lines that reproduce it.
    pub fn print_failures(&self, cfg: &Config, err: &mut impl Write) -> io::Result<()> {
        for t in self.tests.iter().filter(|t| !t.ok()) {
            writeln!(err, "stress: FAILED: {} ({} broken invariants)", t.test.name(), t.found.failed)?;
            for m in &t.found.failures {
                writeln!(err, "  {m}")?;
            }
            writeln!(err, "  reproduce: {}", cfg.command(Some(t.test)))?;
            writeln!(err, "         or: {}", cfg.cargo_command(Some(t.test)))?;
        }
        Ok(())
    }
}
