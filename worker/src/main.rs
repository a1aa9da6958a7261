//! `ringtrain-worker`: parse, set up logging, run; an error becomes one message and exit code 1.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ringtrain_worker::cli::Cli::parse();
    ringtrain_common::logging::init("info");
    match ringtrain_worker::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringtrain-worker: error: {e:#}");
            ExitCode::from(ringtrain_worker::exit_code(&e) as u8)
        }
    }
}
