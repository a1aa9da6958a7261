//! The worker's user-facing output: what a command prints for the person who ran it, apart from
//! the log (`tracing`, on stderr).
//!
//! Owns where those lines go: results (`--print-config`, `eval`, `devices`, the standalone
//! run's epoch table and summary) on stdout, notices for the person watching on stderr. Every
//! user-facing line of the library goes through here; no `println!` elsewhere, so a closed pipe
//! (`ringtrain-worker devices | head -1`) ends nothing with a panic: the line is dropped.

use std::fmt::Display;
use std::io::Write;

/// A result line on stdout.
pub fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    // A reader that went away (a closed pipe) is not the worker's failure.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// A notice on stderr: something the person watching should act on, not a log line.
pub fn notice(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
