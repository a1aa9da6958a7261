//! The coordinator's user-facing output: what a command prints for the person who ran it, apart
//! from the log (`tracing`, on stderr).
//!
//! Owns where those lines go: results (`--print-config`, `status`, `data`, a run's final line)
//! on stdout, the one error line on stderr. A run's epoch table and progress line are written by
//! the run folder's writer (`artifacts`), which owns that table's sink. Every other user-facing
//! line of the coordinator goes through here, so a closed pipe (`ringtrain status … | head -1`)
//! drops the line instead of panicking.

use std::fmt::Display;
use std::io::Write;

/// A result line on stdout.
pub fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    // A reader that went away (a closed pipe) is not the coordinator's failure.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// A line on stderr for the person at the terminal (the final error of a command).
pub fn notice(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
