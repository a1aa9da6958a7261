//! `ringtrain`: the user CLI of ringtrain.
//!
//! Thin on purpose: parse the command line, set up tracing, call the subcommand (the library's
//! `serve` / `launch`, or `data_cmd.rs`), print the final line, turn an error into one message
//! on stderr and a non-zero exit code.
//!
//! Logs go to stderr (`RUST_LOG` filters, default `info`; `RINGTRAIN_LOG_FORMAT=json` for
//! clusters); results meant for people or scripts (the table, the final line) go to stdout.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ringtrain_coordinator::cli::{LaunchArgs, LrFindArgs, ServeArgs};
use ringtrain_coordinator::{output, RunOutcome};

mod data_cmd;
mod show_batch_cmd;

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
    /// Coordinate one run: wait for workers, hand out ranks and shards, print the table.
    ///
    /// Exits 0 when the run finished, 1 when it failed (or on Ctrl-C).
    Serve(ServeArgs),
    /// Run the coordinator and N local workers (ringtrain-worker processes) in one command.
    ///
    /// Worker logs go to RUN_DIR/logs/worker-<i>.log. Exits 0 when the run finished.
    Launch(LaunchArgs),
    /// LR range test (fastai's lr_find) on N local workers: one epoch of an exponential
    /// learning-rate sweep; prints the suggested max_lr, writes RUN_DIR/plots/lr_find.png.
    ///
    /// Training flags (--model, --batch-size, --wd, ...) apply; --epochs and the one-cycle
    /// knobs do not.
    LrFind(LrFindArgs),
    /// A PNG grid of augmented training images with their labels (the lesson's show_batch),
    /// drawn by ringtrain-worker from the real training pipeline.
    ShowBatch(show_batch_cmd::ShowBatchArgs),
    /// Where a run stands: RUN_DIR (its files) or URL (a coordinator's --http-listen, live).
    Status {
        /// A run folder, or http://HOST:PORT.
        target: String,
    },
    /// The gRPC health check the kubelet's probe makes: exits 0 when the coordinator at --addr
    /// answers SERVING for --service, 1 otherwise (for exec probes and scripts).
    Health(ringtrain_coordinator::health_cmd::HealthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `launch` is interactive: the table, a live progress line and the final line say what
    // matters, so its default log level is `warn` (RUST_LOG=info shows every state change).
    ringtrain_common::logging::init(
        if matches!(
            cli.command,
            Command::Launch(_) | Command::LrFind(_) | Command::Health(_)
        ) {
            "warn"
        } else {
            "info"
        },
    );
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // The one place errors are handled: the whole chain, once, for the person at the terminal.
            output::notice(format_args!("ringtrain: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Ok(true) when the command succeeded, Ok(false) when the run it coordinated failed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Status { target } => {
            for line in ringtrain_coordinator::status_cmd::describe(&target)? {
                output::line(line);
            }
            Ok(true)
        }
        Command::Health(args) => {
            let line = runtime()?.block_on(ringtrain_coordinator::health_cmd::check(&args))?;
            output::line(line);
            Ok(true)
        }
        Command::ShowBatch(args) => show_batch_cmd::run(args),
        Command::Data(args) => {
            let what = args.describe();
            data_cmd::run(args).with_context(|| what)?;
            Ok(true)
        }
        Command::Serve(args) => {
            let config = args.load()?;
            if args.run.print_config {
                return print_config(config);
            }
            let listen = config.listen.clone();
            let outcome = runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                anyhow::Ok(ringtrain_coordinator::serve(listener, config, ctrl_c()).await)
            })?;
            finished_already(outcome).context("serving the run")
        }
        Command::Launch(args) => {
            let config = args.run.load()?;
            if args.run.print_config {
                return print_config(config);
            }
            launch(config, args.options())
        }
        Command::LrFind(args) => {
            let config = args.load()?;
            if args.launch.run.print_config {
                return print_config(config);
            }
            launch(config, args.launch.options())
        }
    }
}

/// `launch` and `lr-find`: the coordinator and its local workers.
fn launch(
    config: ringtrain_coordinator::RunConfig,
    opts: ringtrain_coordinator::LaunchOptions,
) -> anyhow::Result<bool> {
    let outcome = runtime()?.block_on(ringtrain_coordinator::launch(config, opts, ctrl_c()));
    let outcome = match outcome {
        Err(ringtrain_coordinator::LaunchError::Serve(e)) => Err(e),
        Err(e) => return Err(e).context("launching the run"),
        Ok(o) => Ok(o),
    };
    finished_already(outcome).context("launching the run")
}

/// The run's result; a run that had already finished (a restarted coordinator with
/// `--auto-resume`, or `--resume` of a finished run) is a success with nothing done.
fn finished_already(
    outcome: Result<RunOutcome, ringtrain_coordinator::ServeError>,
) -> anyhow::Result<bool> {
    match outcome {
        Ok(o) => Ok(report(&o)),
        Err(
            e @ ringtrain_coordinator::ServeError::Resume(
                ringtrain_coordinator::resume::ResumeError::AlreadyFinished { .. },
            ),
        ) => {
            output::line(e);
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// `--print-config`: the effective configuration, validated (token and TLS files read), as
/// JSON on stdout; nothing is scanned, written or served.
fn print_config(config: ringtrain_coordinator::RunConfig) -> anyhow::Result<bool> {
    config.validate().context("invalid configuration")?;
    ringtrain_coordinator::security::load_token(&config)?;
    ringtrain_coordinator::security::load_tls(&config)?;
    output::line(serde_json::to_string_pretty(&config)?);
    Ok(true)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ringtrain")
        .build()
        .context("starting the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM (preemption); never, if no handler can be installed (the run
/// still ends normally). The run then stops as "interrupted": its checkpoints stay, and
/// `--resume RUN_DIR` continues it from the last one.
async fn ctrl_c() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = int => {}
    }
}

fn report(outcome: &RunOutcome) -> bool {
    match lr_find_line(outcome) {
        // A sweep that never found the edge has no answer: say so, and fail the command.
        Some((line, suggested)) => {
            output::line(line);
            suggested
        }
        None => {
            output::line(outcome.final_line());
            outcome.succeeded()
        }
    }
}

/// The final line of a finished `lr-find`, from the `lr_find.json` it wrote: the suggestion, or
/// why there is none and what to run instead; and whether there is one.
fn lr_find_line(outcome: &RunOutcome) -> Option<(String, bool)> {
    if !outcome.succeeded() {
        return None;
    }
    let text = std::fs::read_to_string(outcome.run_dir.join("lr_find.json")).ok()?;
    let r: ringtrain_common::lr_find::LrFindResult = serde_json::from_str(&text).ok()?;
    Some((
        format!(
            "{} | plot {} | run folder {}",
            r.verdict(),
            outcome.run_dir.join("plots").join("lr_find.png").display(),
            outcome.run_dir.display()
        ),
        r.suggested().is_some(),
    ))
}
