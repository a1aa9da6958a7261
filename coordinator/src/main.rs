//! `ringtrain`: the user CLI of ringtrain.
//!
//! Thin on purpose: parse the command line, set up tracing, call the subcommand's module, turn an
//! error into one message on stderr and a non-zero exit code. Each subcommand lives in its own
//! module (`data_cmd.rs` for `ringtrain data ...`); add `serve` / `launch` the same way.
//!
//! Logs go to stderr (`RUST_LOG` filters, default `info`; `RINGTRAIN_LOG_FORMAT=json` for
//! clusters); results meant for people or scripts go to stdout.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod data_cmd;

/// ringtrain: distributed data-parallel training of the fast.ai lesson-7 MNIST CNN.
#[derive(Debug, Parser)]
#[command(name = "ringtrain", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Get and prepare datasets.
    Data(data_cmd::DataArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place errors are handled: the whole chain, once, for the person at the terminal.
            eprintln!("ringtrain: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(args) => {
            let what = args.describe();
            data_cmd::run(args).with_context(|| what)
        }
    }
}

/// stderr subscriber: `RUST_LOG` filter (default `info`), JSON lines when `RINGTRAIN_LOG_FORMAT=json`.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let json = std::env::var("RINGTRAIN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // try_init only fails when a subscriber is already set, which leaves logging working anyway.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
