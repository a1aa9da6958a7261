//! `ringtrain data fetch mnist`: the real binary against a local HTTP server and the real idx files.
//!
//! The server is a few lines of HTTP/1.1 on `127.0.0.1:0` in a thread, serving archives this file
//! builds in memory (tiny real PNGs), so nothing is downloaded. Each run's stderr is kept under
//! `target/test-logs/fetch/`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

/// A one-request-per-connection HTTP/1.1 server; unknown paths get 404. Stops on drop or after a minute.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: HashMap<&'static str, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop_flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // A broken client connection only fails that request; the test sees it.
                        let _ = serve(stream, &routes);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, routes: &HashMap<&'static str, Vec<u8>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body): (&str, &[u8]) = match routes.get(path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", b"no such file\n"),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// A 28x28 grayscale PNG whose pixels depend on `seed`.
fn png_bytes(seed: u8) -> Vec<u8> {
    let pixels: Vec<u8> = (0..784u32)
        .map(|i| (i as u8).wrapping_mul(seed.wrapping_add(1)))
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 28, 28);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&pixels).unwrap();
    writer.finish().unwrap();
    out
}

/// A tgz of `(path, bytes)` files; names go raw into the header so hostile ones survive.
fn tgz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// The fixture archive: training 0: 3 images, 1: 2 images; testing 0: 1, 1: 1; all under `mnist_png/`.
fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut seed = 0u8;
    for (split, counts) in [("training", [3, 2]), ("testing", [1, 1])] {
        for (class, &n) in counts.iter().enumerate() {
            for i in 0..n {
                files.push((
                    format!("mnist_png/{split}/{class}/{i}.png"),
                    png_bytes(seed),
                ));
                seed += 1;
            }
        }
    }
    files
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `ringtrain data fetch mnist ARGS`, keeping stderr in `target/test-logs/fetch/<log>.log`.
fn fetch(log: &str, args: &[&str]) -> Output {
    let output = Command::new(ringtrain_tests::bin("ringtrain"))
        .args(["data", "fetch", "mnist"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RINGTRAIN_MNIST_DIR")
        .env_remove("RINGTRAIN_LOG_FORMAT")
        .output()
        .unwrap();
    let log_path = ringtrain_tests::log_dir("fetch").join(format!("{log}.log"));
    std::fs::write(log_path, &output.stderr).unwrap();
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_file())
        .count()
}

fn dest_arg(dest: &Path) -> &str {
    dest.to_str().unwrap()
}

#[test]
fn download_with_sha256_produces_the_layout() {
    let files = fixture_files();
    let archive = tgz(&files);
    let server = Server::start(HashMap::from([("/mnist_png.tgz", archive.clone())]));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("mnist_png");

    let sha = sha256_hex(&archive);
    let out = fetch(
        "download-ok",
        &[
            "--url",
            &server.url("/mnist_png.tgz"),
            "--sha256",
            &sha,
            "--dest",
            dest_arg(&dest),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("training 5 images in 2 classes, testing 2 images in 2 classes"),
        "{stdout}"
    );
    assert!(stdout.contains("verified"), "{stdout}");

    assert_eq!(
        names(&dest),
        ["testing", "training"],
        "top folder mnist_png/ stripped"
    );
    assert_eq!(names(&dest.join("training")), ["0", "1"]);
    assert_eq!(names(&dest.join("testing")), ["0", "1"]);
    assert_eq!(
        (
            count_files(&dest.join("training/0")),
            count_files(&dest.join("training/1"))
        ),
        (3, 2)
    );
    assert_eq!(
        (
            count_files(&dest.join("testing/0")),
            count_files(&dest.join("testing/1"))
        ),
        (1, 1)
    );
    for (name, bytes) in &files {
        let rel = name.strip_prefix("mnist_png/").unwrap();
        assert_eq!(&std::fs::read(dest.join(rel)).unwrap(), bytes, "{rel}");
    }
    assert_eq!(
        names(tmp.path()),
        ["mnist_png"],
        "no scratch left beside DEST"
    );

    // A second run finds it and does nothing.
    let again = fetch(
        "download-again",
        &[
            "--url",
            &server.url("/mnist_png.tgz"),
            "--dest",
            dest_arg(&dest),
        ],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already present"));
}

#[test]
fn wrong_sha256_fails_and_creates_no_dest() {
    let server = Server::start(HashMap::from([("/mnist_png.tgz", tgz(&fixture_files()))]));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("mnist_png");
    let wrong = "0".repeat(64);
    let out = fetch(
        "download-bad-sha",
        &[
            "--url",
            &server.url("/mnist_png.tgz"),
            "--sha256",
            &wrong,
            "--dest",
            dest_arg(&dest),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("checksum mismatch") && err.contains("sha256") && err.contains(&wrong),
        "{err}"
    );
    assert!(!dest.exists());
    assert!(
        names(tmp.path()).is_empty(),
        "scratch removed: {:?}",
        names(tmp.path())
    );
}

#[test]
fn http_404_is_a_clear_error() {
    let server = Server::start(HashMap::new());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("mnist_png");
    let url = server.url("/missing.tgz");
    let out = fetch("download-404", &["--url", &url, "--dest", dest_arg(&dest)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("GET {url} failed: HTTP 404")),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn archive_escaping_with_dotdot_is_refused() {
    let mut files = fixture_files();
    files.insert(1, ("mnist_png/../../evil".to_owned(), b"pwned".to_vec()));
    let server = Server::start(HashMap::from([("/evil.tgz", tgz(&files))]));
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("data");
    let dest = parent.join("mnist_png");
    let out = fetch(
        "download-dotdot",
        &["--url", &server.url("/evil.tgz"), "--dest", dest_arg(&dest)],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing archive entry \"mnist_png/../../evil\""),
        "{err}"
    );
    assert_eq!(names(tmp.path()), ["data"], "nothing written outside");
    assert!(
        names(&parent).is_empty(),
        "no DEST, no scratch: {:?}",
        names(&parent)
    );
}

/// Record `i` of an idx file: `size` bytes after a `header`-byte header, gunzipped.
fn idx_record(path: &Path, header: usize, size: usize, i: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes[header + i * size..header + (i + 1) * size].to_vec()
}

fn decode_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height, info.color_type),
        (28, 28, png::ColorType::Grayscale)
    );
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn from_idx_converts_real_mnist() {
    let idx = ringtrain_tests::shared_mnist_idx();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("mnist_png");
    let out = fetch(
        "from-idx",
        &[
            "--from-idx",
            idx.to_str().unwrap(),
            "--dest",
            dest_arg(&dest),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("training 60000 images in 10 classes, testing 10000 images in 10 classes"),
        "{stdout}"
    );
    assert!(stdout.contains("4 verified against SHA256SUMS"), "{stdout}");

    // Canonical MNIST class counts (shared/data/mnist/README.md).
    let want: [(&str, [usize; 10]); 2] = [
        (
            "training",
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        ),
        (
            "testing",
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        ),
    ];
    for (split, counts) in want {
        let classes: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        assert_eq!(names(&dest.join(split)), classes, "{split}");
        let got: Vec<usize> = (0..10)
            .map(|d| count_files(&dest.join(split).join(d.to_string())))
            .collect();
        assert_eq!(got, counts, "{split}");
    }

    // Spot checks: the PNG holds exactly the idx record's 784 bytes, in the label's folder.
    for (split, prefix, i) in [
        ("testing", "t10k", 1234usize),
        ("training", "train", 59_999),
    ] {
        let label = idx_record(&idx.join(format!("{prefix}-labels-idx1-ubyte.gz")), 8, 1, i)[0];
        let pixels = idx_record(
            &idx.join(format!("{prefix}-images-idx3-ubyte.gz")),
            16,
            784,
            i,
        );
        let png: PathBuf = dest
            .join(split)
            .join(label.to_string())
            .join(format!("{i}.png"));
        assert_eq!(decode_png(&png), pixels, "{}", png.display());
    }
    assert_eq!(
        names(tmp.path()),
        ["mnist_png"],
        "no scratch left beside DEST"
    );
}

#[test]
fn from_idx_with_corrupt_file_names_it() {
    let idx = ringtrain_tests::shared_mnist_idx();
    let copy = tempfile::tempdir().unwrap();
    for name in [
        "SHA256SUMS",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(idx.join(name), copy.path().join(name)).unwrap();
    }
    let victim = copy.path().join("t10k-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("mnist_png");
    let out = fetch(
        "from-idx-corrupt",
        &[
            "--from-idx",
            copy.path().to_str().unwrap(),
            "--dest",
            dest_arg(&dest),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("checksum mismatch") && err.contains(victim.to_str().unwrap()),
        "{err}"
    );
    assert!(!dest.exists());
    assert!(names(tmp.path()).is_empty());
}
