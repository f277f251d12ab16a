//! The text form of a bench [`Table`]: the machine, the method and the operation, then rows = implementations,
//! columns = thread counts, cells "ns/op (Mops/s)", then the remote take latency.

use std::io::{self, Write};

use super::report::{Latency, Table};

impl Table {
    /// Print the table on stdout.
    pub fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        self.write(&mut out)?;
        out.flush()
    }

    /// Write the table to `out`.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let m = &self.machine;
        writeln!(
            out,
            "machine: {}, {} cores ({} possible CPUs), kernel {}",
            m.cpu_model, m.cores, m.possible_cpus, m.kernel
        )?;
        writeln!(out, "mode:    {}", m.mode)?;
        writeln!(
            out,
            "method:  {:.3} s per measurement, {} round{} interleaved over implementations, median shown",
            self.duration.as_secs_f64(),
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        )?;
        self.write_rows(out)
    }

    /// Write the operation, the cells' unit and the rows (and the remote take latency), without
    /// the machine and the method.
    pub fn write_rows(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "op:      {}", self.op)?;
        writeln!(out, "cells:   ns/op per thread (total Mops/s); every count checked")?;
        writeln!(out)?;
        let name_w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max("implementation".len());
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.cells.iter().map(|c| format!("{:.2} ({:.1})", c.median.ns_per_op(), c.median.mops())).collect())
            .collect();
        let headers: Vec<String> =
            self.threads.iter().map(|&t| format!("{t} thread{}", if t == 1 { "" } else { "s" })).collect();
        let col_w: Vec<usize> = (0..self.threads.len())
            .map(|j| cells.iter().map(|row| row[j].len()).chain([headers[j].len()]).max().unwrap_or(0))
            .collect();
        write!(out, "{:<name_w$}", "implementation")?;
        for (h, w) in headers.iter().zip(&col_w) {
            write!(out, "  {h:>w$}")?;
        }
        writeln!(out)?;
        for (r, row) in self.rows.iter().zip(&cells) {
            write!(out, "{:<name_w$}", r.name)?;
            for (c, w) in row.iter().zip(&col_w) {
                write!(out, "  {c:>w$}")?;
            }
            writeln!(out)?;
        }
        if let Some(rt) = &self.remote_take {
            writeln!(out)?;
            let s = if rt.threads == 1 { "" } else { "s" };
            writeln!(
                out,
                "remote Counter::take() while {} thread{s} add (one call, then a {} us pause):",
                rt.threads,
                rt.pause.as_micros()
            )?;
            writeln!(out, "  {:<25} {}", "take():", describe(&rt.take))?;
            writeln!(out, "  {:<25} {}", "take_cpu(c), c rotating:", describe(&rt.take_cpu))?;
        }
        Ok(())
    }
}

/// "median M us, p99 P us (N calls; ...)".
fn describe(l: &Latency) -> String {
    let mut s = format!("median {:.2} us, p99 {:.2} us ({} calls", l.median_us, l.p99_us, l.samples);
    if l.found == 0 {
        s.push_str(", none found anything to take)");
    } else {
        s.push_str(&format!(
            "; the {} that took something: median {:.2} us, p99 {:.2} us)",
            l.found, l.found_median_us, l.found_p99_us
        ));
    }
    s
}
