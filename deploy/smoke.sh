#!/usr/bin/env bash
# The deployment, for real: both images built from deploy/docker/*.Dockerfile and run as
# containers with exactly the settings the rendered Kubernetes manifests give them. From the
# repository root, as root, after `make build` and `make data`:
#
#   deploy/smoke.sh            (make deploy-smoke)
#
#   1. podman, runc and debootstrap (scripts/setup-podman.sh); a Debian bookworm base image made
#      with debootstrap (no registry is reachable here), once per machine. With SMOKE_BUILD=full,
#      also a Rust image for the build stages: that base, Debian's C/C++ toolchain, this
#      machine's Rust toolchain (`rustc --print sysroot`), CA bundle and pip settings.
#   2. Both images from the Dockerfiles, unchanged; only their base-image arguments (RUST_IMAGE,
#      DEBIAN_IMAGE) are given.
#        SMOKE_BUILD=full      the whole Dockerfile: the build stages compile the binaries and
#                              install the torch wheel inside the build (make deploy-smoke);
#        SMOKE_BUILD=binaries  `podman build --build-context build=DIR` gives the runtime stages
#                              this machine's release binaries (and the torch wheel's libraries)
#                              in place of the build stage (make test: minutes, not tens).
#      Sizes and build times are printed.
#   3. deploy/check.sh renders overlays/cpu; deploy/smoke/podman_run.py turns its coordinator
#      Deployment and worker Job into `podman run` arguments: image, command, args, env,
#      uid 65532, read-only root, all capabilities dropped, the token as a mounted file like
#      the Secret, MNIST and the checkpoints on host folders like the PVCs, emptyDirs as tmpfs,
#      the liveness probe as podman's health check.
#   4. On a podman network the script creates (10.213.0.0/24, fixed addresses) and always removes: the
#      coordinator and 2 workers train the plain CNN (RINGTRAIN_MODEL, EPOCHS; default basic,
#      3 epochs). Once training runs, the probes are called inside the coordinator container
#      (`podman healthcheck run`, and `ringtrain health` against the pod's address as the
#      readiness probe). Mid-run one worker container is killed and a replacement started, as
#      the Job would; later the coordinator container is stopped and started again (its
#      --auto-resume continues from the checkpoint volume). The run must finish at >= 97%.
#
# Environment: SMOKE_BUILD (full), MNIST_DIR (default ~/.cache/ringtrain/data/mnist_png), TORCH_VENV (default
# ~/.cache/ringtrain/torch-2.11.0), RINGTRAIN_MODEL (basic), EPOCHS (3), MAX_LR (0.1),
# SMOKE_KEEP=1 keeps the containers and the work folder for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "smoke: $*"; }
die() { say "FAIL: $*"; exit 1; }
started=$(date +%s)

MNIST_DIR="${MNIST_DIR:-$HOME/.cache/ringtrain/data/mnist_png}"
TORCH_VENV="${TORCH_VENV:-$HOME/.cache/ringtrain/torch-2.11.0}"
MODEL="${RINGTRAIN_MODEL:-basic}"
EPOCHS="${EPOCHS:-3}"
MAX_LR="${MAX_LR:-0.1}"
BIN=target/release
TOOLS="${RINGTRAIN_DEPLOY_TOOLS:-$HOME/.cache/ringtrain/deploy-tools}"
BUILD="${SMOKE_BUILD:-full}"
BASE=localhost/debian:bookworm-20260518-slim
NET=ringtrain-smoke
SUBNET=10.213.0.0/24

[ "$(id -u)" = 0 ] || die "run as root (rootful podman with its own network)"
case "$BUILD" in full | binaries) ;; *) die "SMOKE_BUILD must be full or binaries, not '$BUILD'" ;; esac
[ -x "$BIN/ringtrain" ] && [ -x "$BIN/ringtrain-worker" ] || die "no release binaries: make build"
[ -d "$MNIST_DIR/training" ] || die "no MNIST in $MNIST_DIR: make data"
# The dataset volume holds mnist_png/ at its root (the manifests read /data/mnist_png).
[ "$(basename "$MNIST_DIR")" = mnist_png ] || die "MNIST_DIR must be a folder named mnist_png (the volume's layout)"
DATASET_VOLUME="$(cd "$MNIST_DIR/.." && pwd)"
SITE="$(ls -d "$TORCH_VENV"/lib/python3*/site-packages 2>/dev/null | head -1)"
[ -f "$SITE/torch/lib/libtorch.so" ] || die "no torch wheel in $TORCH_VENV: make setup"

CONTAINERS_CONF="$(scripts/setup-podman.sh)"
export CONTAINERS_CONF
P=(podman --runtime runc)

work="$(mktemp -d /tmp/ringtrain-smoke.XXXXXX)"
cleanup() {
  if [ "${SMOKE_KEEP:-}" = 1 ]; then
    say "kept: containers on network $NET, work folder $work"
    return
  fi
  "${P[@]}" rm -f -t 2 ringtrain-coordinator ringtrain-worker-0 ringtrain-worker-1 >/dev/null 2>&1 || true
  "${P[@]}" network rm -f "$NET" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. base image ------------------------------------------------------------------------------
if ! "${P[@]}" image exists "$BASE"; then
  say "base: debootstrap --variant=minbase bookworm (once per machine)"
  t0=$(date +%s)
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; die "debootstrap"; }
  tar -C "$work/rootfs" -c . | "${P[@]}" import - "$BASE" >/dev/null
  rm -rf "$work/rootfs"
  say "base: $BASE in $(($(date +%s) - t0)) s"
fi

if [ "$BUILD" = full ]; then
  sysroot="$(rustc --print sysroot)" || die "no rustc for the Rust image"
  rust_version="$("$sysroot/bin/rustc" --version | awk '{print $2}')"
  RUST_IMAGE="localhost/rust:$rust_version-bookworm"
  if ! "${P[@]}" image exists "$RUST_IMAGE"; then
    say "base: $RUST_IMAGE from $BASE and $sysroot (once per machine)"
    t0=$(date +%s)
    ctx="$work/ctx-rust"
    mkdir -p "$ctx/toolchain"
    for d in bin lib libexec; do cp -a "$sysroot/$d" "$ctx/toolchain/"; done
    # The machine's trust store and pip settings: its proxy's CA is only there.
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$ctx/pip.conf"; else : >"$ctx/pip.conf"; fi
    cat >"$ctx/Containerfile" <<CONTAINERFILE
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc g++ libc6-dev make pkg-config && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN cargo --version && rustc --version
CONTAINERFILE
    "${P[@]}" build --pull=never -t "$RUST_IMAGE" "$ctx" >"$work/build-rust.log" 2>&1 ||
      { tail -20 "$work/build-rust.log"; die "building $RUST_IMAGE"; }
    rm -rf "$ctx"
    say "base: $RUST_IMAGE in $(($(date +%s) - t0)) s"
  fi
fi

# --- 2. images ----------------------------------------------------------------------------------
base_args=(--build-arg "DEBIAN_IMAGE=$BASE")
if [ "$BUILD" = binaries ]; then
  link_or_copy() { cp -al "$1" "$2" 2>/dev/null || cp -a "$1" "$2"; }
  site_in_image=opt/venv/lib/python3.11/site-packages
  mkdir -p "$work/ctx-coordinator/out" "$work/ctx-worker/out/nccl" "$work/ctx-worker/$site_in_image/torch"
  cp "$BIN/ringtrain" "$work/ctx-coordinator/out/"
  cp "$BIN/ringtrain-worker" "$work/ctx-worker/out/"
  link_or_copy "$SITE/torch/lib" "$work/ctx-worker/$site_in_image/torch/lib"
  link_or_copy "$SITE/nvidia" "$work/ctx-worker/$site_in_image/nvidia"
  ln -s "/$site_in_image/nvidia/nccl/lib/libnccl.so.2" "$work/ctx-worker/out/nccl/libnccl.so"
else
  base_args+=(--build-arg "RUST_IMAGE=$RUST_IMAGE")
fi
for image in coordinator worker; do
  t0=$(date +%s)
  build_args=("${base_args[@]}" --ignorefile "deploy/docker/$image.Dockerfile.dockerignore")
  [ "$BUILD" = binaries ] && build_args+=(--build-context "build=$work/ctx-$image")
  "${P[@]}" build --pull=never "${build_args[@]}" \
    -f "deploy/docker/$image.Dockerfile" -t "localhost/ringtrain/$image:0.1.0" . >"$work/build-$image.log" 2>&1 ||
    { tail -20 "$work/build-$image.log"; die "building the $image image"; }
  size=$("${P[@]}" image inspect --format '{{.Size}}' "localhost/ringtrain/$image:0.1.0")
  say "image: localhost/ringtrain/$image:0.1.0 ($BUILD) built in $(($(date +%s) - t0)) s, $((size / 1000000)) MB"
done
# A rebuilt tag leaves the previous image dangling; the worker's carries libtorch (GBs), so a
# machine that runs this often would fill its disk with them.
"${P[@]}" image prune -f >/dev/null 2>&1 || true

# --- 3. the manifests' settings -----------------------------------------------------------------
deploy/check.sh >"$work/check.txt" 2>&1 || { tail -20 "$work/check.txt"; die "deploy/check.sh"; }
rendered=target/deploy/overlays-cpu.yaml
[ -f "$rendered" ] || die "deploy/check.sh left no $rendered"
mkdir -p "$work/secret" "$work/checkpoints"
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$work/secret/token"
chmod 0444 "$work/secret/token"
chown 65532:65532 "$work/checkpoints"
run_args() { # WORKLOAD NAME [IP]
  "$TOOLS/bin/python" deploy/smoke/podman_run.py "$rendered" "$1" --name "$2" --network "$NET" \
    ${3:+--ip "$3"} --pvc "ringtrain-dataset=$DATASET_VOLUME" --pvc "ringtrain-checkpoints=$work/checkpoints" \
    --secret "ringtrain-auth=$work/secret" --scratch "$work"
}
# Fixed addresses for all three: podman's IPAM hands out addresses after the last one it gave,
# so an automatic one could be a worker's.
mapfile -t coordinator < <(run_args Deployment/ringtrain-coordinator ringtrain-coordinator 10.213.0.2) || die "coordinator settings"
mapfile -t worker0 < <(run_args Job/ringtrain-worker ringtrain-worker-0 10.213.0.10) || die "worker settings"
mapfile -t worker1 < <(run_args Job/ringtrain-worker ringtrain-worker-1 10.213.0.11) || die "worker settings"
[ "${#coordinator[@]}" -gt 5 ] && [ "${#worker0[@]}" -gt 5 ] || die "podman_run.py printed nothing"
# The job file's recipe is the lesson's ResNet-ish for 12 epochs; environment wins over it.
recipe=(--env "RINGTRAIN_MODEL=$MODEL" --env "RINGTRAIN_EPOCHS=$EPOCHS" --env "RINGTRAIN_MAX_LR=$MAX_LR")

# --- 4. run ---------------------------------------------------------------------------------------
"${P[@]}" network rm -f "$NET" >/dev/null 2>&1 || true
"${P[@]}" network create --subnet "$SUBNET" "$NET" >/dev/null
start_coordinator() { "${P[@]}" run -d "${recipe[@]}" "${coordinator[@]}" >/dev/null; }
start_worker() { # I
  local -n args="worker$1"
  "${P[@]}" rm -f -t 0 "ringtrain-worker-$1" >/dev/null 2>&1 || true
  "${P[@]}" run -d "${args[@]}" >/dev/null
}
logs() { "${P[@]}" logs "$1" 2>&1; }
wait_log() { # CONTAINER PATTERN SECONDS
  local end=$(($(date +%s) + $3))
  until logs "$1" | grep -q -- "$2"; do
    [ "$(date +%s)" -lt "$end" ] || { logs "$1" | tail -20; die "no '$2' from $1 within $3 s"; }
    sleep 0.5
  done
}
t_run=$(date +%s)
start_coordinator
start_worker 0
start_worker 1
wait_log ringtrain-worker-0 "training starts" 120
say "run: the first training step $(($(date +%s) - t_run)) s after the first podman run"

# The probes, inside the coordinator container: the liveness probe as the manifest gives it
# (podman's health check, podman_run.py), and the readiness probe's check against the pod's
# address on the network, as the kubelet calls it.
health=$("${P[@]}" healthcheck run ringtrain-coordinator 2>&1) || die "liveness probe: ${health:-unhealthy}"
say "probe: liveness ${health:-healthy} (podman healthcheck run)"
pod_ip=$("${P[@]}" inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" ringtrain-coordinator)
ready=$("${P[@]}" exec ringtrain-coordinator ringtrain health --addr "http://$pod_ip:29400" --service "" 2>&1) ||
  die "readiness probe: $ready"
say "probe: readiness: $ready"

# A worker container dies mid-run (as a killed pod); the Job would start a replacement.
"${P[@]}" kill -s KILL ringtrain-worker-1 >/dev/null
say "run: killed ringtrain-worker-1; starting a replacement"
start_worker 1
wait_log ringtrain-coordinator "round 2" 120

# The coordinator stops after the first checkpoint and is started again.
until ls "$work/checkpoints/run/checkpoints" 2>/dev/null | grep -q '^e0001'; do
  "${P[@]}" container exists ringtrain-coordinator || die "the coordinator is gone"
  sleep 0.5
done
"${P[@]}" logs ringtrain-coordinator >"$work/coordinator-1.log" 2>&1
"${P[@]}" stop -t 30 ringtrain-coordinator >/dev/null
"${P[@]}" rm -f ringtrain-coordinator >/dev/null
say "run: coordinator stopped after its first checkpoint; starting it again (--auto-resume)"
start_coordinator
end=$(($(date +%s) + 900))
while [ "$("${P[@]}" inspect -f '{{.State.Running}}' ringtrain-coordinator)" = true ]; do
  [ "$(date +%s)" -lt "$end" ] || die "the run did not finish within 900 s"
  sleep 1
done
logs ringtrain-coordinator >"$work/coordinator-2.log"
code=$("${P[@]}" inspect -f '{{.State.ExitCode}}' ringtrain-coordinator)
grep -q "continuing from checkpoint\|resum" "$work/coordinator-2.log" ||
  { tail -20 "$work/coordinator-2.log"; die "the restarted coordinator did not resume"; }
[ "$code" = 0 ] || { tail -20 "$work/coordinator-2.log"; die "the coordinator exited with $code"; }
summary="$work/checkpoints/run/summary.json"
accuracy=$("$TOOLS/bin/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["status"], d["accuracy"])' "$summary")
say "run: $accuracy after $(($(date +%s) - t_run)) s (summary.json)"
case "$accuracy" in
  finished\ 0.9[7-9]*|finished\ 1*) ;;
  *) die "expected a finished run at >= 97%, got: $accuracy" ;;
esac
say "all passed in $(($(date +%s) - started)) s"
