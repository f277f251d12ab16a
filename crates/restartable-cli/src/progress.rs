//! The one progress bar (indicatif) that long runs show on stderr: the stress matrix and the
//! tour. It is drawn only when stderr is a terminal; otherwise it is hidden (callers that want
//! a line per step in logs check [`ProgressBar::is_hidden`]).

use std::io::{self, IsTerminal};

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps: elapsed time, the bar, steps done, the estimated time left, and the
/// message (set it to what is running). Hidden when stderr is not a terminal.
pub fn bar(len: usize) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}
