# syntax=docker/dockerfile:1.7
# The coordinator image: `ringtrain` (serve, launch, data fetch) on Debian slim. No libtorch, no
# Python, no CUDA: the coordinator never links them.
#
# From the repository root (deploy/README.md, "Images"):
#   docker build -f deploy/docker/coordinator.Dockerfile -t localhost/ringtrain/coordinator:0.1.0 .
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

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Only the coordinator package is built. Cargo resolves the whole workspace (Cargo.lock lists
# tch and torch-sys for the worker) but downloads and compiles only what ringtrain-coordinator
# depends on, so this stage needs neither libtorch nor Python; protoc is vendored
# (protoc-bin-vendored). The target folder is a cache mount, so the binary is copied out in the
# same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=ringtrain-coordinator-target \
    cargo build --release --locked -p ringtrain-coordinator --bin ringtrain \
    && install -D -m 0755 target/release/ringtrain /out/ringtrain

FROM ${DEBIAN_IMAGE}
COPY --from=build /out/ringtrain /usr/local/bin/ringtrain
# Nothing in the image is writable by the runtime user; Kubernetes mounts /tmp, the run folder
# and the dataset (deploy/k8s). HOME only matters for defaults that the manifests override.
ENV HOME=/tmp
# Numeric, so that runAsNonRoot can verify it without an /etc/passwd entry (65532: distroless's
# "nonroot").
USER 65532:65532
EXPOSE 29400
ENTRYPOINT ["/usr/local/bin/ringtrain"]
