//! The tour: what `restartable` with no subcommand shows, a short walk through everything the
//! tool can do. Each step is a function; later steps (stress, bench) are added here.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::{CmdResult, info};

/// Run the tour: the environment summary, then each later step.
pub fn tour() -> CmdResult {
    let mut out = io::stdout().lock();
    writeln!(out, "== restartable: environment (restartable info) ==")?;
    info::print_summary(&mut out)?;
    writeln!(out)?;
    // Later: a short stress run (restartable stress) and a benchmark (restartable bench).
    writeln!(out, "== stress, bench: not yet implemented ==")?;
    writeln!(out, "(see `restartable --help`)")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
