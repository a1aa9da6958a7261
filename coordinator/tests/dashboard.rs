//! The dashboard's HTTP side on a serving coordinator, over real sockets: the page and its assets
//! (types, Content-Security-Policy), `/history`, the `/events` stream (framing, updates while a
//! run goes on, its end), and the limits that keep many or vanished clients from piling up.
//! The page itself, in a real browser: `tests/tests/dashboard.rs`.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::Behaviour;
use ringtrain_coordinator::{Run, RunConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A served run of `workers` with its HTTP endpoint; returns (gRPC url, HTTP address, the
/// dataset fingerprint, the server task).
async fn start(
    dir: &std::path::Path,
    workers: u32,
) -> (
    String,
    String,
    String,
    tokio::task::JoinHandle<
        Result<ringtrain_coordinator::RunOutcome, ringtrain_coordinator::ServeError>,
    >,
) {
    let http = format!("127.0.0.1:{}", common::free_port());
    let config = RunConfig {
        http_listen: Some(http.clone()),
        heartbeat_interval_s: 0.2,
        ..common::config(dir, workers)
    };
    let run = Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap();
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    // The HTTP listener binds inside serve.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&http).is_err() {
        assert!(Instant::now() < deadline, "no HTTP endpoint on {http}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (url, http, fp, server)
}

/// One complete HTTP exchange (code 0: the connection closed without an answer).
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

async fn request(addr: &str, method: &str, path: &str) -> Answer {
    let (addr, method, path) = (addr.to_string(), method.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A refused connection (503 before the request was read) may be reset under the write.
        let _ = write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let Some((head, body)) = raw.split_once("\r\n\r\n") else {
            return Answer {
                code: 0,
                headers: vec![],
                body: raw,
            };
        };
        let mut lines = head.lines();
        let code = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Answer {
            code,
            headers,
            body: body.to_string(),
        }
    })
    .await
    .unwrap()
}

/// True when the server closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A client of `/events` reading the raw stream (HTTP/1.1 chunked, as browsers get it).
struct Events {
    reader: BufReader<TcpStream>,
    /// Body bytes read but not yet returned as lines.
    body: String,
    head: Vec<String>,
}

/// One event: its name and its `data:` parsed as JSON.
#[derive(Debug)]
struct Event {
    name: String,
    data: Value,
}

impl Events {
    async fn open(addr: &str) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut head = Vec::new();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).await.unwrap() == 0 || l.trim_end().is_empty() {
                break;
            }
            head.push(l.trim_end().to_string());
        }
        Self {
            reader,
            body: String::new(),
            head,
        }
    }

    /// The next line of the body, across chunk boundaries (`None` at its end).
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.body.find('\n') {
                let line = self.body[..i].to_string();
                self.body.drain(..=i);
                return Ok(Some(line));
            }
            let mut size = String::new();
            if self.reader.read_line(&mut size).await? == 0 {
                return Ok(None);
            }
            let size = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
            if size == 0 {
                return Ok(None);
            }
            let mut chunk = vec![0u8; size + 2];
            self.reader.read_exact(&mut chunk).await?;
            assert!(chunk.ends_with(b"\r\n"), "a chunk ends with CRLF");
            self.body
                .push_str(std::str::from_utf8(&chunk[..size]).expect("UTF-8 events"));
        }
    }

    /// The next event (`None` at the end of the stream); fails after 5 s without one.
    async fn next(&mut self) -> Option<Event> {
        let (mut name, mut data) = (String::new(), Vec::new());
        loop {
            let line = tokio::time::timeout(Duration::from_secs(5), self.next_line())
                .await
                .expect("an event at least every second")
                .ok()
                .flatten()?;
            if line.is_empty() {
                if data.is_empty() {
                    continue; // `retry:` alone, or the blank line after it
                }
                let data = data.join("\n");
                let data: Value = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"));
                return Some(Event { name, data });
            }
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_string());
            } else {
                assert!(
                    line.starts_with("retry: ") || line.starts_with(':'),
                    "not an event-stream field: {line:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_assets_and_history_are_served_with_types_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (_url, http, _fp, server) = start(dir.path(), 1).await;

    let page = request(&http, "GET", "/").await;
    assert_eq!(page.code, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(
        page.header("content-security-policy")
            .starts_with("default-src 'self'"),
        "{:?}",
        page.headers
    );
    assert_eq!(page.header("cache-control"), "no-store");
    assert!(
        page.body.contains("<canvas id=\"chart-loss\""),
        "{}",
        page.body
    );
    for (path, kind) in [
        ("/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
        ("/index.html", "text/html; charset=utf-8"),
    ] {
        let a = request(&http, "GET", path).await;
        assert_eq!((a.code, a.header("content-type")), (200, kind), "{path}");
        assert_eq!(
            a.header("content-length"),
            a.body.len().to_string(),
            "{path}"
        );
        assert!(page.body.contains(path) || path == "/index.html", "{path}");
    }
    assert_eq!(request(&http, "GET", "/nope").await.code, 404);
    let post = request(&http, "POST", "/status").await;
    assert_eq!((post.code, post.header("allow")), (405, "GET,HEAD"));
    let head = request(&http, "HEAD", "/").await;
    assert_eq!(head.code, 200);
    assert_eq!(
        (head.header("content-length"), head.body.as_str()),
        (page.body.len().to_string().as_str(), ""),
        "HEAD: GET's headers, no body"
    );
    assert_eq!(request(&http, "GET /x", "HTTP/1.1").await.code, 400);

    let history = request(&http, "GET", "/history").await;
    assert_eq!(history.header("content-type"), "application/json");
    let h: Value = serde_json::from_str(&history.body).unwrap();
    assert_eq!(h["epochs"], serde_json::json!([]));
    assert_eq!(h["steps"]["smooth_loss"], serde_json::json!([]));
    // /metrics and /status still answer on the same port.
    assert!(request(&http, "GET", "/metrics")
        .await
        .body
        .contains("ringtrain_global_step "));
    let status: Value = serde_json::from_str(&request(&http, "GET", "/status").await.body).unwrap();
    assert_eq!(status["status"], "rendezvous");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_json_status_on_changes_every_second_and_end_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (url, http, fp, server) = start(dir.path(), 1).await;
    let mut events = Events::open(&http).await;
    assert_eq!(events.head[0], "HTTP/1.1 200 OK", "{:?}", events.head);
    assert!(
        events
            .head
            .iter()
            .any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream")),
        "{:?}",
        events.head
    );
    let history = events.next().await.unwrap();
    assert_eq!(
        history.name, "history",
        "the history first, then the status"
    );
    assert_eq!(history.data["epochs"], serde_json::json!([]));
    let first = events.next().await.unwrap();
    assert_eq!(first.name, "status");
    assert_eq!(
        (first.data["run_id"].as_str(), first.data["status"].as_str()),
        (Some("test-run"), Some("rendezvous"))
    );
    assert!(first.data["reason"].is_null() && first.data["ranks"].is_array());

    // A worker that takes 1.2 s per epoch: the run lasts long enough to watch.
    let worker = tokio::spawn(async move {
        common::fake_worker(
            &url,
            "w0",
            &fp,
            Behaviour::Slow(Duration::from_millis(1200)),
        )
        .await
    });
    let mut seen = Vec::new();
    let mut history_mid_run = None;
    let mut streamed_epochs = 0;
    let mut last_at = Instant::now();
    let end = loop {
        let e = events
            .next()
            .await
            .expect("the stream ends with an `end` event");
        let gap = last_at.elapsed();
        last_at = Instant::now();
        assert!(
            gap < Duration::from_millis(1600),
            "{gap:?} without an event"
        );
        if e.name == "end" {
            break e;
        }
        if e.name == "history" {
            streamed_epochs = e.data["epochs"].as_array().unwrap().len();
            continue;
        }
        assert_eq!(e.name, "status");
        assert_eq!(
            e.data["epochs_completed"], streamed_epochs,
            "every epoch's history arrives before the status that counts it"
        );
        if e.data["epochs_completed"] == 1 && history_mid_run.is_none() {
            history_mid_run = Some(request(&http, "GET", "/history").await);
        }
        seen.push(e.data);
    };
    assert_eq!(worker.await.unwrap(), 0);
    assert!(
        seen.iter().any(|s| s["status"] == "running"
            && s["world_size"] == 1
            && s["ranks"][0]["worker_id"] == "w0"),
        "{seen:?}"
    );
    // Published changes arrive at once, and ticks keep coming in between.
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(end.data["status"], "finished");
    assert_eq!(end.data["epochs_completed"], 2);
    assert_eq!(
        seen.last().unwrap()["status"],
        "finished",
        "the last status, then end"
    );
    assert!(
        events.next().await.is_none(),
        "the stream closes after `end`"
    );

    let h: Value =
        serde_json::from_str(&history_mid_run.expect("an update after epoch 0").body).unwrap();
    assert_eq!(h["epochs"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h["epochs"][0]["epoch"], 0);
    assert_eq!(h["epochs"][0]["end_step"], 4, "16 images, batch 4: 4 steps");
    assert_eq!(h["steps"]["step"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(h["steps"]["loss"], serde_json::json!([1.0, 1.0, 1.0, 1.0]));
    assert_eq!(h["steps"]["lr"].as_array().unwrap().len(), 4);
    // The run is over: serve returns, the endpoint closes.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after the run")
        .unwrap()
        .unwrap();
    assert!(std::net::TcpStream::connect(&http).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_connections_are_bounded_and_freed_when_clients_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (_url, http, _fp, server) = start(dir.path(), 1).await;
    let mut open = Vec::new();
    for _ in 0..32 {
        let mut e = Events::open(&http).await;
        assert_eq!(e.head[0], "HTTP/1.1 200 OK");
        e.next().await.unwrap();
        open.push(e);
    }
    let refused = Events::open(&http).await;
    assert!(
        refused.head[0].starts_with("HTTP/1.1 503"),
        "a 33rd stream: {:?}",
        refused.head
    );
    assert_eq!(
        request(&http, "GET", "/status").await.code,
        200,
        "plain requests still answer"
    );

    // Clients that vanish give their streams back.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut again = Vec::new();
    while again.len() < 32 {
        let e = Events::open(&http).await;
        if e.head[0] == "HTTP/1.1 200 OK" {
            again.push(e);
        } else {
            assert!(Instant::now() < deadline, "streams not freed: {:?}", e.head);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(again);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Connections that never send a request cannot keep requests out: past 256 of them the
    // oldest are closed to make room, and a request is answered as if they were not there.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    assert_eq!(
        request(&http, "GET", "/status").await.code,
        200,
        "a request among 300 idle connections"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        closed_by_server(&mut idle[0], Duration::from_secs(1)).await,
        "the oldest idle connection was closed for a newer one"
    );
    // The others at the 5 s head deadline.
    let last = idle.last_mut().unwrap();
    assert!(
        closed_by_server(last, Duration::from_secs(8)).await,
        "an idle connection outlived its deadline"
    );
    server.abort();
}
