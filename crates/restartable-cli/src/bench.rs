//! `restartable bench`: implementations of one operation side by side in one run.
//!
//! Three suites: the counters (the default: [`counters::Impl`]), with `--collections` the
//! collections against crossbeam, parking_lot and std ([`collections::Impl`]), and with
//! `--rwlock` the read-mostly locks ([`rwlock::Impl`]: `RwLock` against std, parking_lot,
//! crossbeam's `ShardedLock` and `ArcSwap`, then the uncontended write latency). Every
//! implementation of the suite is measured at every thread count, interleaved ([`rounds`]):
//! each round visits every thread count and, for each, every implementation (starting at a
//! different one each round); each cell reports the median round. Every run checks its own
//! counts (a final count equal to the operations performed; items pushed = popped + left).
//!
//! In the counters suite, `Counter::add` in degraded mode runs in a child process (the mode is
//! decided once per process): the bench re-executes itself with `RESTARTABLE_FORCE_DEGRADED=1`
//! and the hidden `--internal-only counter-degraded`, and reads the child's JSON, in its turn
//! within each round. Then, while threads add to a `Counter`, another thread times remote
//! `take()` and `take_cpu(c)` calls.
//!
//! The modules: [`args`] (the command line), [`suite`] (what a suite of implementations is,
//! and the measuring tools), [`counters`], [`collections`] and [`rwlock`] (the suites), [`rounds`] (the
//! interleaved rounds and the degraded child), [`report`] (the model: implementations x thread
//! counts -> samples), and one per output format: [`text`], [`json`], [`svg`].

pub mod alloc;
mod args;
mod collections;
mod counters;
mod json;
mod report;
mod rounds;
mod rwlock;
mod suite;
mod svg;
mod text;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use args::Internal;
pub use args::{Args, DEFAULT_ROUNDS};
pub use report::Table;
use rounds::Schedule;

use crate::CmdResult;

/// Run `restartable bench`.
pub fn run(args: &Args) -> CmdResult {
    let threads = args.threads();
    match args.internal_only {
        Some(Internal::CounterDegraded) => {
            return rounds::internal(counters::Impl::CounterDegraded, &threads, args.duration);
        }
        Some(Internal::RwlockDegraded) => return rounds::internal(rwlock::Impl::DEGRADED, &threads, args.duration),
        None => {}
    }
    if let Some(cell) = &args.internal_alloc_cell {
        return alloc::child(cell);
    }
    // Fail on an unwritable chart path now, not after the whole run.
    if let Some(path) = &args.svg {
        std::fs::File::create(path).map_err(|e| format!("cannot write the SVG file {}: {e}", path.display()))?;
    }
    if args.alloc {
        let plan = alloc::Plan {
            workloads: if args.workloads.is_empty() {
                alloc::WORKLOADS.to_vec()
            } else {
                alloc::WORKLOADS.into_iter().filter(|w| args.workloads.contains(w)).collect()
            },
            threads: if args.threads.is_empty() { alloc::default_threads() } else { threads },
            rounds: args.rounds,
            scale: args.scale,
        };
        return alloc::run(&plan, args.json, args.svg.as_deref());
    }
    let schedule = Schedule { threads, duration: args.duration, rounds: args.rounds };
    let table = if args.collections {
        schedule.run::<collections::Impl>()?
    } else if args.rwlock {
        rwlock::table(&schedule)?
    } else {
        counters::table(&schedule)?
    };
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", table.to_json())?;
    } else {
        table.write(&mut out)?;
    }
    out.flush()?;
    if let Some(path) = &args.svg {
        svg::write(&table, path)?;
        if !args.json {
            eprintln!("chart written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench the tour shows: `threads` x every counter implementation, [`DEFAULT_ROUNDS`]
/// rounds of `duration`, and the remote `take()` latency at the largest thread count. The
/// degraded-mode row re-executes the current executable, so call this from the `restartable`
/// binary.
pub fn run_table(threads: &[usize], duration: Duration) -> Result<Table, String> {
    counters::table(&Schedule { threads: args::dedup(threads), duration, rounds: DEFAULT_ROUNDS })
}

/// The rwlock suite as the tour shows it: `threads` x every implementation, `rounds` rounds of
/// `duration`, and the uncontended write latency.
pub fn run_rwlock_table(threads: &[usize], duration: Duration, rounds: usize) -> Result<Table, String> {
    rwlock::table(&Schedule { threads: args::dedup(threads), duration, rounds })
}

/// The collections suite as the tour shows it: `threads` x every implementation, `rounds`
/// rounds of `duration`.
pub fn run_collections_table(threads: &[usize], duration: Duration, rounds: usize) -> Result<Table, String> {
    Schedule { threads: args::dedup(threads), duration, rounds }.run::<collections::Impl>()
}
