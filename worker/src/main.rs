//! `ringtrain-worker`: parse, set up logging, run; an error becomes one message and its exit
//! code (`ringtrain_worker::exit_code`). The one `process::exit` of the worker lives here: a
//! backstop for a training thread that does not return after the distributed client stopped
//! (SIGTERM past its grace, a failed run, a lost coordinator).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ringtrain_worker::output::notice;

pub fn main() -> ExitCode {
    let cli = ringtrain_worker::cli::Cli::parse();
    ringtrain_common::logging::init("info");
    // Failpoints from FAILPOINTS (ringtrain-worker-failpoints, for tests); without the
    // `failpoints` feature there is no such code.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    std::thread::spawn(|| loop {
        if let Some((deadline, code)) = ringtrain_worker::dist::exit_deadline() {
            if Instant::now() >= deadline {
                notice(format_args!(
                    "ringtrain-worker: the worker did not stop in time; exiting with code {code}"
                ));
                std::process::exit(code);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    match ringtrain_worker::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            notice(format_args!("ringtrain-worker: error: {e:#}"));
            ExitCode::from(ringtrain_worker::exit_code(&e) as u8)
        }
    }
}
