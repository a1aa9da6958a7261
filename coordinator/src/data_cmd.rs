//! `ringtrain data ...`: dataset commands. Today `fetch mnist`, backed by `ringtrain_common::fetch`.
//!
//! Owns argument shapes and the one-line summary on stdout; the work (download, verification,
//! extraction, idx conversion, atomic move into place) and its logging live in the library.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use ringtrain_common::fetch::{self, Action, FetchError, MnistSource};

/// `ringtrain data`.
#[derive(Debug, Args)]
pub(crate) struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Download a dataset (or convert local files) into the layout training reads.
    ///
    /// MNIST ends up as DEST/training/<digit>/*.png and DEST/testing/<digit>/*.png (fast.ai's
    /// mnist_png layout). DEST is written atomically: an interrupted fetch leaves no half folder.
    Fetch(FetchArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dataset {
    /// MNIST handwritten digits: 60,000 training and 10,000 testing 28x28 images.
    Mnist,
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// The dataset to fetch.
    dataset: Dataset,
    /// Destination folder [default: ~/.cache/ringtrain/data/mnist_png].
    #[arg(long, value_name = "DIR", env = fetch::MNIST_DIR_ENV)]
    dest: Option<PathBuf>,
    /// Archive to download: a .tgz in the mnist_png layout, optionally under one top folder.
    #[arg(long, value_name = "URL", default_value = fetch::MNIST_URL)]
    url: String,
    /// Full-file sha256 the archive must have; replaces the built-in check of the default URL.
    #[arg(long, value_name = "HEX", conflicts_with = "from_idx")]
    sha256: Option<String>,
    /// Convert the four MNIST idx files in DIR (each optionally .gz; checked against DIR/SHA256SUMS
    /// when present) instead of downloading.
    #[arg(long, value_name = "DIR", conflicts_with = "url")]
    from_idx: Option<PathBuf>,
    /// Replace DEST even if it already holds the dataset.
    #[arg(long)]
    force: bool,
}

impl DataArgs {
    /// What the command was doing, for the error context line.
    pub(crate) fn describe(&self) -> String {
        match &self.command {
            DataCommand::Fetch(args) => match &args.from_idx {
                Some(dir) => format!("importing MNIST from idx files in {}", dir.display()),
                None => format!("fetching MNIST from {}", args.url),
            },
        }
    }
}

/// Runs `ringtrain data ...` and prints its one-line summary.
pub(crate) fn run(args: DataArgs) -> Result<(), FetchError> {
    match args.command {
        DataCommand::Fetch(args) => fetch_cmd(args),
    }
}

fn fetch_cmd(args: FetchArgs) -> Result<(), FetchError> {
    let Dataset::Mnist = args.dataset;
    let dest = match args.dest {
        Some(dest) => dest,
        None => fetch::default_mnist_dir()?,
    };
    let source = match args.from_idx {
        Some(dir) => MnistSource::Idx { dir },
        None => MnistSource::Url {
            url: args.url,
            sha256: args.sha256,
        },
    };
    let report = fetch::fetch_mnist(&source, &dest, args.force)?;
    let how = match &report.action {
        Action::AlreadyPresent => "already present, nothing done (--force replaces it)".to_owned(),
        Action::Downloaded {
            sha256,
            checked: true,
        } => format!("downloaded, archive sha256 {sha256} verified"),
        Action::Downloaded {
            sha256,
            checked: false,
        } => format!("downloaded, archive sha256 {sha256} NOT checked"),
        Action::Imported { verified: 0 } => "imported from idx files (no SHA256SUMS)".to_owned(),
        Action::Imported { verified } => {
            format!("imported from idx files, {verified} verified against SHA256SUMS")
        }
    };
    crate::output::line(format_args!(
        "mnist at {}: {}; {how}",
        report.dest.display(),
        report.summary
    ));
    Ok(())
}
