//! Cluster mode with the real binaries: the run's token on every call (workers without it or
//! with another are refused and logged, and the run goes on with the right one), a TLS run,
//! and a coordinator that names a file outside the data root (refused by the worker).

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use ringtrain_tests::{
    free_listen, log_dir, run, spawn_logged, synthetic_folder, wait_with_limit, Output,
};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// `ringtrain serve` for 1 worker on `data`, with `extra` flags.
fn serve(data: &Path, run_dir: &Path, listen: &str, extra: &[&str], logs: &Path) -> Child {
    let mut args = vec![
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        listen,
        "--workers",
        "1",
        "--model",
        "basic",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--join-timeout-s",
        "120",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    spawn_logged("ringtrain", &args, &[], logs, "serve")
}

fn worker(url: &str, data: &Path, extra: &[&str], env: &[(&str, &str)], log: &str) -> Output {
    let mut args = vec![
        "--coordinator",
        url,
        "--data",
        data.to_str().unwrap(),
        "--collective-listen",
        "127.0.0.1:0",
        "--connect-timeout-s",
        "30",
        "--no-cache",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    run(
        "ringtrain-worker",
        &args,
        log,
        env,
        Duration::from_secs(120),
    )
    .unwrap()
}

#[test]
fn workers_without_the_token_or_with_another_are_refused_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 2, 12).unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let listen = free_listen();
    let logs = log_dir("security-token");
    let run_dir = tmp.path().join("run");
    let mut coord = serve(
        &data,
        &run_dir,
        &listen,
        &["--auth-token-file", token.to_str().unwrap()],
        &logs,
    );
    let url = format!("http://{listen}");

    let out = worker(
        &url,
        &data,
        &["--worker-id", "anonymous"],
        &[],
        "security-no-token",
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("refused: no auth token"),
        "{}",
        out.stderr
    );
    let wrong = [("RINGTRAIN_AUTH_TOKEN", "ffffffffffffffffffffffffffffffff")];
    let out = worker(
        &url,
        &data,
        &["--worker-id", "impostor"],
        &wrong,
        "security-wrong-token",
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("refused: a wrong auth token"),
        "{}",
        out.stderr
    );

    // The refused ones left no trace in the run: the right worker completes it alone.
    let out = worker(
        &url,
        &data,
        &[
            "--worker-id",
            "good",
            "--auth-token-file",
            token.to_str().unwrap(),
        ],
        &[],
        "security-good",
    );
    assert!(out.success(), "{}", out.stderr);
    let status = wait_with_limit(&mut coord, Duration::from_secs(60), "serve");
    assert!(status.success());
    let log = std::fs::read_to_string(logs.join("serve.stderr.txt")).unwrap();
    assert!(
        log.contains("call refused")
            && log.contains("no auth token")
            && log.contains("a wrong auth token"),
        "{log}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["ranks"].as_array().unwrap().len(), 1);
    assert_eq!(info["ranks"][0]["worker_id"], "good");
    assert!(
        !std::fs::read_to_string(run_dir.join("run.json"))
            .unwrap()
            .contains(TOKEN),
        "the token is never written"
    );

    // A cluster restarts a finished coordinator (Deployment): with --auto-resume it must see the
    // run is over, exit 0 at once and leave the run folder alone.
    let summary = std::fs::read(run_dir.join("summary.json")).unwrap();
    let again = run(
        "ringtrain",
        &[
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &free_listen(),
            "--workers",
            "1",
            "--auto-resume",
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
        "security-finished-again",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(again.success(), "{}", again.stderr);
    assert!(
        again.stdout.contains("already finished; nothing to resume"),
        "{}",
        again.stdout
    );
    assert_eq!(
        std::fs::read(run_dir.join("summary.json")).unwrap(),
        summary
    );
}

#[test]
fn a_tls_run_completes_and_a_plain_or_untrusting_worker_cannot_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 2, 12).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_pem = tmp.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();

    let listen = free_listen();
    let port = listen.rsplit(':').next().unwrap().to_string();
    let logs = log_dir("security-tls");
    let run_dir = tmp.path().join("run");
    let tls = [
        "--tls-cert",
        cert_pem.to_str().unwrap(),
        "--tls-key",
        key_pem.to_str().unwrap(),
        "--auth-token-file",
        token.to_str().unwrap(),
    ];
    let mut coord = serve(&data, &run_dir, &listen, &tls, &logs);
    let https = format!("https://localhost:{port}");
    let tok = ["--auth-token-file", token.to_str().unwrap()];

    // A worker that trusts another CA, or speaks plain HTTP/2, gets nowhere.
    let mut args = tok.to_vec();
    args.extend([
        "--worker-id",
        "untrusting",
        "--tls-ca",
        other_pem.to_str().unwrap(),
        "--connect-timeout-s",
        "2",
    ]);
    let out = worker(&https, &data, &args, &[], "security-tls-untrusting");
    assert!(
        !out.success(),
        "a certificate from another CA must be refused"
    );
    let mut args = tok.to_vec();
    args.extend(["--worker-id", "plain", "--connect-timeout-s", "2"]);
    let out = worker(
        &format!("http://localhost:{port}"),
        &data,
        &args,
        &[],
        "security-tls-plain",
    );
    assert!(
        !out.success(),
        "plain HTTP/2 against a TLS server must fail"
    );

    let mut args = tok.to_vec();
    args.extend(["--worker-id", "tls", "--tls-ca", cert_pem.to_str().unwrap()]);
    let out = worker(&https, &data, &args, &[], "security-tls-good");
    assert!(out.success(), "{}", out.stderr);
    assert!(wait_with_limit(&mut coord, Duration::from_secs(60), "serve").success());
    let log = std::fs::read_to_string(logs.join("serve.stderr.txt")).unwrap();
    assert!(
        log.contains("tls=true") && log.contains("auth=true"),
        "{log}"
    );
    assert!(run_dir.join("summary.json").is_file());
}
