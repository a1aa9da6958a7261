# syntax=docker/dockerfile:1.7
# The worker image: `ringtrain-worker` with libtorch and the CUDA 13 libraries of PyPI's
# torch==2.11.0 wheel (cuDNN, cuBLAS, NCCL, ...). The same image trains on CPU nodes and, with the
# NVIDIA container toolkit providing the driver, on GPU nodes.
#
# From the repository root (deploy/README.md, "Images"):
#   docker build -f deploy/docker/worker.Dockerfile -t localhost/ringtrain/worker:0.1.0 .
#
# Base images are pinned by exact tag (Rust 1.88.0 = the workspace's rust-version; Debian 12
# "bookworm", the same glibc in both stages). For production builds, pin their digests too:
# append `@sha256:<digest>` from `docker buildx imagetools inspect IMAGE` to both defaults below,
# or pass them (deploy/README.md, "Images"). They were not looked up here: this was written
# offline. A registry mirror, or a base image made locally (deploy/smoke.sh makes both from
# Debian's packages and this machine's toolchain), comes in through the same two arguments:
#   --build-arg RUST_IMAGE=registry.example/rust:1.88.0-bookworm
#   --build-arg DEBIAN_IMAGE=registry.example/debian:bookworm-20260518-slim
ARG RUST_IMAGE=rust:1.88.0-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-20260518-slim

# Where the venv's packages sit: Debian bookworm's python3 is 3.11 (pinned below). The runtime
# stage keeps the same path, so the binary's run path (worker/build.rs) stays valid there.
ARG SITE=/opt/venv/lib/python3.11/site-packages

FROM ${RUST_IMAGE} AS build
ARG SITE
# python3-venv: the virtualenv that holds the torch wheel; tch's build finds libtorch (headers
# and libraries) through that Python (LIBTORCH_USE_PYTORCH=1), as `make setup` does.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
# pip's cache is a cache mount: a rebuild does not download the wheels (about 4 GB) again.
RUN --mount=type=cache,target=/root/.cache/pip \
    /usr/bin/python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install torch==2.11.0 \
    && test -f "${SITE}/torch/lib/libtorch.so" \
    && test -f "${SITE}/nvidia/nccl/lib/libnccl.so.2"
ENV VIRTUAL_ENV=/opt/venv \
    LIBTORCH_USE_PYTORCH=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# The target folder is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=ringtrain-worker-target \
    cargo build --release --locked -p ringtrain-worker --bin ringtrain-worker \
    && install -D -m 0755 target/release/ringtrain-worker /out/ringtrain-worker
# cudarc opens only `libnccl.so`; the wheel ships `libnccl.so.2` (README, "GPUs").
RUN mkdir -p /out/nccl \
    && ln -s "${SITE}/nvidia/nccl/lib/libnccl.so.2" /out/nccl/libnccl.so

FROM ${DEBIAN_IMAGE}
ARG SITE
# libtorch and the CUDA libraries it loads, laid out as the wheel has them: torch/lib finds
# ../../nvidia/* through its own run path ($ORIGIN), so both folders keep their places. Python
# itself is not needed at run time. Debian slim brings the glibc and libstdc++ they were built
# against; the GPU driver (libcuda) comes from the node through the NVIDIA container toolkit.
COPY --from=build ${SITE}/torch/lib ${SITE}/torch/lib
COPY --from=build ${SITE}/nvidia ${SITE}/nvidia
COPY --from=build /out/nccl /opt/ringtrain/nccl
COPY --from=build /out/ringtrain-worker /usr/local/bin/ringtrain-worker
ENV LD_LIBRARY_PATH=${SITE}/torch/lib:/opt/ringtrain/nccl \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp
# Numeric, so that runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532
EXPOSE 29500
ENTRYPOINT ["/usr/local/bin/ringtrain-worker"]
