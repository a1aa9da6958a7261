//! Integration: the real gRPC server on 127.0.0.1:0 with fake workers over real sockets; the run
//! folder and the outcome afterwards.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Behaviour;
use ringtrain_coordinator::{Run, Status};
use tokio::net::TcpListener;

/// A table sink the test can read afterwards.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn two_workers_finish_a_run_and_leave_a_complete_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let table = Buffer::default();
    let run =
        Run::prepare_with_table(common::config(dir.path(), 2), Box::new(table.clone())).unwrap();
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    let (c0, c1) = tokio::join!(
        common::fake_worker(&url, "w1", &fp, Behaviour::Complete),
        common::fake_worker(&url, "w0", &fp, Behaviour::Complete)
    );
    assert_eq!((c0, c1), (0, 0));
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, Status::Finished, "{:?}", outcome.reason);
    assert!(
        outcome
            .final_line()
            .starts_with("accuracy 1.0000 (16 of 16 validation images)"),
        "{}",
        outcome.final_line()
    );

    let run_dir = dir.path().join("run");
    assert_eq!(
        std::fs::read(run_dir.join("final.safetensors")).unwrap(),
        common::fake_model(1)
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["world_size"], 2);
    assert_eq!(info["ranks"][0]["worker_id"], "w0");
    assert_eq!(info["ranks"][1]["train_images"], 8);
    assert_eq!(info["classes"], serde_json::json!(["c0", "c1"]));
    assert!((info["normalize"]["mean"][0].as_f64().unwrap() - 100.0 / 255.0).abs() < 1e-6);
    assert_eq!(info["config"]["epochs"], 2);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["status"].as_str(), summary["epochs"].as_u64()),
        (Some("finished"), Some(2))
    );
    assert_eq!(summary["params_hash"], common::fake_hash(1));
    // 4 steps × 4 images per epoch, slowest rank 0.5 s.
    assert_eq!(summary["train_images_per_s"], 32.0);
    let steps = std::fs::read_to_string(run_dir.join("steps.csv")).unwrap();
    assert_eq!(steps.lines().count(), 1 + 2 * 4);
    assert_eq!(
        std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    let table = String::from_utf8(table.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("epoch      train_loss"));
    assert!(lines[2].starts_with("1          "), "{table}");
}

#[tokio::test]
async fn shutdown_fails_the_run_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mut run =
        Run::prepare_with_table(common::config(dir.path(), 2), Box::new(std::io::sink())).unwrap();
    run.set_linger(Duration::from_millis(200));
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run.serve(listener, async {
        let _ = stopped.await;
    }));
    // One worker of two waits in Join; the interrupt must release it.
    let worker =
        tokio::spawn(
            async move { common::fake_worker(&url, "w0", &fp, Behaviour::Complete).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (outcome.status, outcome.reason.as_deref()),
        (
            Status::Failed,
            Some("interrupted; the checkpoints stay: continue with --resume RUN_DIR")
        )
    );
    assert_eq!(worker.await.unwrap(), 1, "the waiting Join got an error");
    let summary = std::fs::read_to_string(dir.path().join("run/summary.json")).unwrap();
    assert!(summary.contains("\"interrupted; "), "{summary}");
}

#[tokio::test]
async fn refuses_to_start_when_the_dataset_is_too_small_for_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), 2);
    config.recipe.batch_size = 32;
    let err = anyhow::Error::from(
        Run::prepare_with_table(config, Box::new(std::io::sink()))
            .err()
            .unwrap(),
    );
    let msg = format!("{err:#}");
    assert!(msg.starts_with("cannot plan a run of world size 2: no full batch per rank: 16 training images over 2 ranks"), "{msg}");
}
