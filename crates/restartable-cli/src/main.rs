//! `restartable`: inspect, stress and benchmark the `restartable` per-CPU library.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap derive) and a
//! `run(&Args) -> CmdResult`; adding one is a variant in [`Command`] and an arm in [`main`].
//! With no subcommand the binary runs the [`tour`].
//!
//! Shared by all of them, each defined once: [`cpus`] (the CPUs this process may run on, and
//! so what "cores" means everywhere), [`reexec`] (running this binary again in a child, with a
//! time limit and degraded mode forced or not), and [`progress`] (the progress bar).

#[cfg(feature = "count-allocations")]
mod alloc_check;
mod bench;
mod cpus;
mod info;
mod progress;
mod reexec;
mod stress;
mod tour;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(all(feature = "count-allocations", not(feature = "percpu-alloc")))]
#[global_allocator]
static GLOBAL: alloc_check::Counting = alloc_check::Counting;

#[cfg(all(feature = "percpu-alloc", not(feature = "count-allocations")))]
#[global_allocator]
static GLOBAL: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

// Both: the per-CPU caches in front of the counting allocator, which then checks that the caches
// never call their inner allocator while holding a guard.
#[cfg(all(feature = "percpu-alloc", feature = "count-allocations"))]
#[global_allocator]
static GLOBAL: restartable::alloc::PerCpuAlloc<alloc_check::Counting> =
    restartable::alloc::PerCpuAlloc::new(alloc_check::Counting);

// The default build: the allocator `bench --alloc` names for each of its children (System
// everywhere else), one predictable branch per call.
#[cfg(not(any(feature = "count-allocations", feature = "percpu-alloc")))]
#[global_allocator]
static GLOBAL: bench::alloc::Switch = bench::alloc::Switch;

/// What a subcommand returns: the exit code to end with, or an error to report (exit 1).
pub type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Per-CPU data via rseq: inspect the environment, stress and benchmark the library.
///
/// With no subcommand, runs a short tour of everything below.
#[derive(Debug, Parser)]
#[command(name = "restartable", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what the library found: kernel, glibc, rseq registration, CPUs, membarrier.
    Info(info::Args),
    /// Benchmark side by side: per-CPU counters (Counter, raw rseq, atomics, thread-locals, a
    /// mutex), or with --collections the collections against crossbeam, parking_lot and std,
    /// --rwlock the read-mostly locks, --alloc PerCpuAlloc against glibc and mimalloc.
    Bench(bench::Args),
    /// Stress every collection under contention, delay injection, signals and affinity churn,
    /// checking conservation exactly (exit 1 on any loss, with the command that reproduces it).
    Stress(stress::Args),
}

fn main() -> ExitCode {
    // A bad argument prints clap's usage error and exits 2; --help/--version exit 0.
    let cli = Cli::parse();
    let result = match &cli.command {
        None => tour::tour(),
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Stress(args)) => stress::run(args),
    };
    finish(result)
}

/// Turn a subcommand's result into the process's exit code. A closed stdout (`restartable info
/// | head -1`) is not an error worth a message.
fn finish(result: CmdResult) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("restartable: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses() {
        assert!(Cli::try_parse_from(["restartable"]).unwrap().command.is_none());
        let c = Cli::try_parse_from(["restartable", "info", "--json"]).unwrap();
        assert!(matches!(c.command, Some(Command::Info(info::Args { json: true }))));
        assert!(Cli::try_parse_from(["restartable", "info", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["restartable", "nope"]).is_err());
    }
}
