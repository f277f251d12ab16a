//! `restartable bench`: counters side by side in one run.
//!
//! Every implementation of the counters suite ([`counters::Impl`]) is measured at every thread
//! count, interleaved ([`rounds`]): each round visits every thread count and, for each, every
//! implementation (starting at a different one each round); each cell reports the median
//! round. `Counter::add` in degraded mode runs in a child process (the mode is decided once per
//! process): the bench re-executes itself with `RESTARTABLE_FORCE_DEGRADED=1` and the hidden
//! `--internal-only counter-degraded`, and reads the child's JSON, in its turn within each
//! round. Every run checks that the final count equals the operations performed. Then, while
//! threads add to a `Counter`, another thread times remote `take()` and `take_cpu(c)` calls.
//!
//! The modules: [`args`] (the command line), [`suite`] (what a suite of implementations is,
//! and the measuring tools), [`counters`] (the counters suite), [`rounds`] (the interleaved
//! rounds and the degraded child), [`report`] (the model: implementations x thread counts ->
//! samples), and one per output format: [`text`], [`json`], [`svg`].

mod args;
mod counters;
mod json;
mod report;
mod rounds;
mod suite;
mod svg;
mod text;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

pub use args::{Args, DEFAULT_ROUNDS};
pub use report::Table;
use rounds::Schedule;

use crate::CmdResult;

/// Run `restartable bench`.
pub fn run(args: &Args) -> CmdResult {
    let threads = args.threads();
    if let Some(which) = args.internal_only {
        return rounds::internal(which, &threads, args.duration);
    }
    // Fail on an unwritable chart path now, not after the whole run.
    if let Some(path) = &args.svg {
        std::fs::File::create(path).map_err(|e| format!("cannot write the SVG file {}: {e}", path.display()))?;
    }
    let table = counters::table(&Schedule { threads, duration: args.duration, rounds: args.rounds })?;
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
