//! Checkpoints and exact resume with the real binaries: a run killed mid-way and resumed
//! (after its newest checkpoint was truncated) ends bit for bit where the undisturbed run ends;
//! a read-only checkpoint folder is a clear error that keeps the last good checkpoint.

mod recovery;

use std::process::{Command, Stdio};
use std::time::Duration;

use recovery::{
    checkpoints, dataset, final_hash, launch, run_args, summary, undisturbed, wait_for_checkpoint,
    EPOCHS,
};
use ringtrain_tests::{bin, kill9, log_dir, ringtrain, run, spawn_logged};

#[test]
fn interrupted_run_resumes_bitwise_exact_even_from_an_older_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("interrupted");
    let logs = log_dir("resume-interrupted");
    let args = run_args(&data, &run_dir);
    let mut launch_args: Vec<&str> = vec!["launch", "--threads-per-worker", "1"];
    launch_args.extend(args.iter().map(String::as_str));
    let mut child = spawn_logged(
        "ringtrain",
        &launch_args,
        &[("RINGTRAIN_CACHE_DIR", &cache)],
        &logs,
        "launch",
    );
    wait_for_checkpoint(&run_dir, 3, &mut child, &logs);
    // The launcher dies without a word; its workers die with it (PDEATHSIG).
    kill9(child.id());
    child.wait().unwrap();
    let before = checkpoints(&run_dir);
    let newest = before.last().unwrap().clone();
    assert!(!run_dir.join("summary.json").exists() || summary(&run_dir)["status"] != "finished");
    // A torn write of the newest checkpoint: resume must fall back to the previous one.
    let model = run_dir
        .join("checkpoints")
        .join(&newest)
        .join("model.safetensors");
    let len = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Starting the same run folder again without --resume is refused: nothing is overwritten.
    let refused = launch(&args, &[], "resume-refused", &cache);
    assert!(!refused.success());
    assert!(refused.stderr.contains("--resume"), "{}", refused.stderr);

    let out = ringtrain(
        &[
            "launch",
            "--resume",
            run_dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
            "--heartbeat-interval-s",
            "0.5",
        ],
        &cache,
        "resume-resumed",
        Duration::from_secs(600),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&newest),
        "the bad checkpoint is named:\n{}",
        out.stderr
    );
    let previous = &before[before.len() - 2];
    // The notice is output for the person (stdout); the bad checkpoint is a log warning.
    assert!(
        out.stdout.contains(&format!(
            "from {}",
            run_dir.join("checkpoints").join(previous).display()
        )),
        "resumes from the previous checkpoint {previous}:\n{}",
        out.stdout
    );
    assert_eq!(final_hash(&run_dir), reference, "resume is bitwise exact");
    // The metrics cover every epoch exactly once.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, (0..EPOCHS).collect::<Vec<u64>>());

    // The lesson's inference on the best checkpoint.
    let image = data.join("testing/c1/0000.png");
    let p = run(
        "ringtrain-worker",
        &[
            "predict",
            "--checkpoint",
            run_dir.join("best").to_str().unwrap(),
            image.to_str().unwrap(),
        ],
        "resume-predict",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(p.success(), "{}", p.stderr);
    assert!(p.stdout.contains("c1"), "{}", p.stdout);
}

#[test]
fn a_read_only_checkpoint_folder_is_a_clear_error_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let run_dir = tmp.path().join("ro");
    let mut args = run_args(&data, &run_dir);
    args[9] = "2".into(); // --epochs 2
    let out = launch(&args, &[], "resume-ro-first", &cache);
    assert!(out.success(), "{}", out.stderr);
    let ckpt = run_dir.join("checkpoints");
    // Without the final checkpoint the run is unfinished (a finished one has nothing to write
    // and ends at once: `already finished`), so resuming it must write.
    let last = checkpoints(&run_dir).pop().unwrap();
    std::fs::remove_dir_all(ckpt.join(&last)).unwrap();
    let before = checkpoints(&run_dir);
    assert!(!before.is_empty());
    let manifest = std::fs::read(ckpt.join(&before[0]).join("MANIFEST.json")).unwrap();
    // Root ignores permission bits: then a read-only bind mount in a private mount namespace.
    let root = is_root();
    let cmd = format!(
        "{} launch --resume {} --data {} --workers 2 --threads-per-worker 1",
        bin("ringtrain").display(),
        run_dir.display(),
        data.display()
    );
    let script = if root {
        format!(
            "mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec {cmd}",
            d = ckpt.display()
        )
    } else {
        let mut p = std::fs::metadata(&ckpt).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o555);
        std::fs::set_permissions(&ckpt, p).unwrap();
        format!("exec {cmd}")
    };
    let mut c = if root {
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let out = c
        .env("RINGTRAIN_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(log_dir("resume-ro").join("stderr.txt"), stderr.as_bytes()).unwrap();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write checkpoint folder {}",
            ckpt.display()
        )),
        "{stderr}"
    );
    // The last good checkpoint is untouched and still loads.
    assert_eq!(checkpoints(&run_dir), before);
    assert_eq!(
        std::fs::read(ckpt.join(&before[0]).join("MANIFEST.json")).unwrap(),
        manifest
    );
    let image = data.join("testing/c0/0000.png");
    let p = run(
        "ringtrain-worker",
        &[
            "predict",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
        "resume-ro-predict",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(p.success(), "{}", p.stderr);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
