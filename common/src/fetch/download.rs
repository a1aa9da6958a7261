//! HTTP download of one file, streamed to disk with progress and digests computed on the way.
//!
//! Owns the HTTP GET and the byte stream; not where the file goes afterwards (`mod.rs` decides and
//! cleans up) nor what it must match (`checksum.rs`). Blocking I/O via ureq on the calling thread.
//!
//! Tests: `tests/tests/fetch.rs` runs this against a local HTTP server (200, 404, bad checksum).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use super::checksum::{Digested, Digests};
use super::progress::{Progress, Unit};
use super::FetchError;

/// Connecting and waiting for the response head; the body itself has no overall deadline, since
/// a slow link may need minutes for a large archive.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// GETs `url` into `file` (created or truncated), reporting progress, and returns the digests.
///
/// On error `file` may hold a partial download; the caller removes it.
pub fn download(url: &str, file: &Path) -> Result<Digested, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .build()
        .into();
    let network = |e: ureq::Error| FetchError::Network {
        url: url.to_owned(),
        source: Box::new(e),
    };

    tracing::info!(url, to = %file.display(), "downloading");
    let mut response = agent.get(url).call().map_err(network)?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(FetchError::Http {
            url: url.to_owned(),
            status,
        });
    }

    let total = response.body().content_length();
    let progress = Progress::new("downloading", Unit::Bytes, total);
    let mut body = response.body_mut().as_reader();
    let mut out = BufWriter::new(File::create(file).map_err(FetchError::io("creating", file))?);
    let mut digests = Digests::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(network(ureq::Error::Io(e))),
        };
        digests.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(FetchError::io("writing", file))?;
        progress.inc(n as u64);
    }
    out.into_inner()
        .map_err(|e| FetchError::io("writing", file)(e.into_error()))?
        .sync_all()
        .map_err(FetchError::io("syncing", file))?;
    progress.finish();

    // ureq itself fails a body shorter or longer than its Content-Length.
    Ok(digests.finish())
}
