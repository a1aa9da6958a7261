//! Progress reporting for long fetch steps: an indicatif bar on a terminal, log lines otherwise.
//!
//! This is the deliberate user-facing output layer of the fetch paths (the bar draws on stderr);
//! when stderr is not a TTY (CI, `kubectl logs`, tests) it degrades to an `info!` line every few
//! seconds so logs stay readable. `Progress` is `Sync`: rayon workers share one.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain-log fallback reports.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What a progress count measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Bytes,
    Files,
}

/// One progress line: a bar on a TTY, periodic log lines otherwise.
#[derive(Debug)]
pub(crate) struct Progress {
    label: &'static str,
    unit: Unit,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    done: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// Starts reporting `label`; `total` is `None` when unknown (no Content-Length).
    pub(crate) fn new(label: &'static str, unit: Unit, total: Option<u64>) -> Self {
        let bar = std::io::stderr()
            .is_terminal()
            .then(|| make_bar(label, unit, total));
        let now = Instant::now();
        Self {
            label,
            unit,
            total,
            bar,
            done: AtomicU64::new(0),
            started: now,
            last_log: Mutex::new(now),
        }
    }

    /// Adds `n` to the count.
    pub(crate) fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        // try_lock: a worker that finds another one logging just skips; the next call will log.
        if let Ok(mut last) = self.last_log.try_lock() {
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                tracing::info!(progress = %self.render(done), "{}", self.label);
            }
        }
    }

    /// Ends the bar (cleared from the terminal) and logs the final count once.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let done = self.done.load(Ordering::Relaxed);
        tracing::info!(
            progress = %self.render(done),
            elapsed_s = %format!("{:.1}", self.started.elapsed().as_secs_f32()),
            "{} done",
            self.label
        );
    }

    fn render(&self, done: u64) -> String {
        let fmt = |n: u64| match self.unit {
            Unit::Bytes => HumanBytes(n).to_string(),
            Unit::Files => n.to_string(),
        };
        match self.total {
            Some(total) if total > 0 => {
                format!(
                    "{}/{} ({:.0}%)",
                    fmt(done),
                    fmt(total),
                    100.0 * done as f64 / total as f64
                )
            }
            _ => fmt(done),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error path never calls finish(); don't leave a frozen bar on the terminal.
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn make_bar(label: &'static str, unit: Unit, total: Option<u64>) -> ProgressBar {
    let template = match (unit, total) {
        (Unit::Bytes, Some(_)) => {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        }
        (Unit::Bytes, None) => "{msg} {spinner} {bytes} {bytes_per_sec}",
        (Unit::Files, Some(_)) => "{msg} [{bar:30}] {human_pos}/{human_len} {per_sec:0} ETA {eta}",
        (Unit::Files, None) => "{msg} {spinner} {human_pos} {per_sec:0}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(label)
}
