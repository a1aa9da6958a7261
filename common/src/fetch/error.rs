//! The one error type of the fetch/import paths.

use std::path::PathBuf;

/// Everything that can go wrong while getting MNIST onto disk.
///
/// Every variant names the file, entry or URL it is about, so the CLI message alone says where to look.
/// Underlying errors are exposed as `source()`, not repeated in the message: print the chain
/// (anyhow's `{:#}`) to see them.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with a non-success HTTP status.
    #[error("GET {url} failed: HTTP {status}")]
    Http {
        /// The URL requested.
        url: String,
        /// The HTTP status code received.
        status: u16,
    },
    /// The request never got an HTTP answer (DNS, connect, TLS, timeout, broken body).
    #[error("GET {url} failed")]
    Network {
        /// The URL requested.
        url: String,
        /// What ureq reported.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A file (downloaded or local) does not match the checksum it must have.
    #[error("checksum mismatch for {what}: {algo} want {want}, got {got}")]
    ChecksumMismatch {
        /// The URL or path checked.
        what: String,
        /// Which check failed (`sha256`, `size`, `md5 of first MiB`).
        algo: &'static str,
        /// The expected value.
        want: String,
        /// The value found.
        got: String,
    },
    /// `--sha256` is not 64 hexadecimal digits.
    #[error("invalid sha256 {value:?}: expected 64 hexadecimal digits")]
    InvalidSha256 {
        /// The value given.
        value: String,
    },
    /// An archive entry would escape the destination or is not a plain file/folder.
    #[error("refusing archive entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The entry's path as stored in the archive.
        entry: String,
        /// Why it is refused (absolute path, `..` component, symlink, ...).
        reason: &'static str,
    },
    /// The archive itself is unreadable (bad gzip stream, bad tar header).
    #[error("corrupt archive {path}")]
    BadArchive {
        /// The archive file.
        path: PathBuf,
        /// What the gzip/tar reader reported.
        #[source]
        source: std::io::Error,
    },
    /// A required input file is absent.
    #[error("missing file {path}")]
    MissingFile {
        /// The file looked for (for idx files: the name without `.gz`).
        path: PathBuf,
    },
    /// An idx file has a bad header or the wrong amount of data.
    #[error("bad idx file {path}: {reason}")]
    BadIdx {
        /// The idx file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An images file and its labels file disagree on the number of records.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The idx3 images file.
        images: PathBuf,
        /// Records in the images file.
        n_images: usize,
        /// The idx1 labels file.
        labels: PathBuf,
        /// Records in the labels file.
        n_labels: usize,
    },
    /// A `SHA256SUMS` line is not `<64 hex digits> <name>`.
    #[error("{path}:{line}: not a sha256sum line")]
    BadChecksumList {
        /// The `SHA256SUMS` file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// Encoding a PNG failed.
    #[error("writing PNG {path}")]
    Png {
        /// The PNG being written.
        path: PathBuf,
        /// What the encoder reported.
        #[source]
        source: png::EncodingError,
    },
    /// The dataset folder does not have the `training/<class>/`, `testing/<class>/` layout.
    #[error("bad dataset layout at {dir}: {reason}")]
    BadLayout {
        /// The folder checked.
        dir: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The destination exists, is not empty and is not a dataset; only `--force` replaces it.
    #[error("{dest} exists and is not an MNIST folder; use --force to replace it")]
    DestOccupied {
        /// The destination folder.
        dest: PathBuf,
    },
    /// The destination path cannot hold a dataset folder (no final name, e.g. `/` or `..`).
    #[error("invalid destination {dest}: it must end in a folder name")]
    BadDest {
        /// The destination given.
        dest: PathBuf,
    },
    /// No home folder to put the default destination in.
    #[error("no home folder: set RINGTRAIN_MNIST_DIR or pass --dest")]
    NoHome,
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`creating`, `reading`, `renaming`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Builds an [`FetchError::Io`] closure for `map_err`: `.map_err(FetchError::io("reading", &path))`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.into();
        move |source| FetchError::Io { op, path, source }
    }
}
