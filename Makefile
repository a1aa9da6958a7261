# ringtrain: every command in the README is a target here. Each one does the setup it needs
# (idempotently, with visible progress) so a fresh clone needs nothing but `make run` / `make test`.

SHELL := /bin/bash
TORCH_VENV ?= $(or $(RINGTRAIN_TORCH_VENV),$(HOME)/.cache/ringtrain/torch-2.11.0)
MNIST_DIR ?= $(or $(RINGTRAIN_MNIST_DIR),$(HOME)/.cache/ringtrain/data/mnist_png)
MNIST_IDX ?= $(RINGTRAIN_MNIST_IDX)
RUN_DIR ?= runs/lesson7-resnet-$(shell date +%Y%m%d-%H%M%S)
WORKERS ?= 2
CARGO ?= cargo

# tch (torch-sys) finds libtorch through the venv's python; see scripts/setup-torch.sh.
export VIRTUAL_ENV := $(TORCH_VENV)
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(TORCH_VENV)/bin:$(PATH)

BIN := target/release
.PHONY: run run-single run-gpus run-shapes shapes test bench build setup setup-browser setup-netlab setup-promtool setup-slurm deploy-smoke deploy-smoke-binaries data clean-runs cycles gpu-bundle gpu-check

setup: $(TORCH_VENV)/.ringtrain-ok
$(TORCH_VENV)/.ringtrain-ok: scripts/setup-torch.sh
	RINGTRAIN_TORCH_VENV=$(TORCH_VENV) ./scripts/setup-torch.sh >/dev/null
	touch $@

# Debian's chromium (apt-get, when /usr/bin/chromium is missing) and playwright-core (npm, into
# ~/.cache/ringtrain/browser-tools) for the dashboard's browser test; quiet when already there.
setup-browser:
	./scripts/setup-browser.sh >/dev/null

# iproute2 and iptables (apt-get, when missing) for the network tests' lab of namespaces.
setup-netlab:
	./scripts/setup-netlab.sh

# promtool (Debian's prometheus package, apt-get when missing) for the metrics test, which
# lints the coordinator's /metrics with `promtool check metrics`.
setup-promtool:
	./scripts/setup-promtool.sh >/dev/null

# slurm-wlm and munge (apt-get, when missing) for the Slurm test, which starts its own
# munged, slurmctld and slurmd and submits deploy/slurm/ringtrain.sbatch.
setup-slurm:
	./scripts/setup-slurm.sh

build: setup
	$(CARGO) build --release --bins

# The lesson-7 recipe on real MNIST: ResNet-ish, 12 epochs, max_lr 0.05, global batch 128,
# on $(WORKERS) local worker processes (coordinator in-process, ring all-reduce between them).
run: build data
	$(BIN)/ringtrain launch --data $(MNIST_DIR) --workers $(WORKERS) --model resnet --epochs 12 \
		--max-lr 0.05 --batch-size 128 --run-dir $(RUN_DIR) $(if $(HTTP_LISTEN),--http-listen $(HTTP_LISTEN))

# Your own images, shown on a generated set: 4 classes of coloured shapes on noise, RGB, 32x32
# and 48x40 mixed, half PNG and half JPEG (synth-shapes), resized to 32x32, with flips.
SHAPES_DIR ?= $(HOME)/.cache/ringtrain/data/shapes
shapes: build
	@if [ -d "$(SHAPES_DIR)/training" ]; then echo "shapes: already in $(SHAPES_DIR)"; \
	else $(BIN)/synth-shapes $(SHAPES_DIR) --train-per-class 1000 --valid-per-class 200 --seed 7; fi

run-shapes: build shapes
	$(BIN)/ringtrain launch --data $(SHAPES_DIR) --workers $(WORKERS) --image-size 32 --augment pad,flip \
		--epochs 15 --max-lr 0.05 --batch-size 64 --run-dir $(subst lesson7-resnet,shapes-resnet,$(RUN_DIR))

# The same recipe in one standalone process (no coordinator).
run-single: build data
	$(BIN)/ringtrain-worker train --data $(MNIST_DIR) --model resnet --epochs 12 \
		--max-lr 0.05 --batch-size 128 --run-dir $(RUN_DIR)-single

# The recipe with one worker per GPU of this machine (NCCL between them); CPU workers without one.
run-gpus: build data
	$(BIN)/ringtrain launch --gpus all --data $(MNIST_DIR) --model resnet --epochs 12 \
		--max-lr 0.05 --batch-size 128 --run-dir $(RUN_DIR)-gpus

# MNIST in the fast.ai mnist_png layout: imported from idx files when RINGTRAIN_MNIST_IDX
# names a folder of them, downloaded from fast.ai otherwise. Skipped when already there.
data: build
	@if [ -d "$(MNIST_DIR)/training" ] && [ -d "$(MNIST_DIR)/testing" ]; then \
		echo "data: MNIST already in $(MNIST_DIR)"; \
	elif [ -n "$(MNIST_IDX)" ]; then \
		$(BIN)/ringtrain data fetch mnist --from-idx "$(MNIST_IDX)" --dest "$(MNIST_DIR)"; \
	else \
		$(BIN)/ringtrain data fetch mnist --dest "$(MNIST_DIR)"; \
	fi

test: setup setup-browser setup-netlab setup-promtool setup-slurm cycles
	$(CARGO) build --release --bins
	$(CARGO) build --release -p ringtrain-worker --features failpoints --bin ringtrain-worker-failpoints
	$(CARGO) test --release --workspace
	$(MAKE) --no-print-directory deploy-smoke-binaries

# The images built with podman and run with the manifests' settings (deploy/smoke.sh; root).
# deploy-smoke builds the whole Dockerfiles (the binaries are compiled inside the build);
# deploy-smoke-binaries, which make test runs, puts this machine's release binaries in place
# of the build stages and runs the same containers.
deploy-smoke: build data
	SMOKE_BUILD=full MNIST_DIR=$(MNIST_DIR) TORCH_VENV=$(TORCH_VENV) ./deploy/smoke.sh

deploy-smoke-binaries: build data
	SMOKE_BUILD=binaries MNIST_DIR=$(MNIST_DIR) TORCH_VENV=$(TORCH_VENV) ./deploy/smoke.sh

# Import cycles between modules (scripts/module-cycles.py says which levels it checks).
cycles:
	python3 scripts/module-cycles.py

bench: build data
	$(CARGO) build --release -p ringtrain-worker --example ringbench
	MNIST_DIR=$(MNIST_DIR) TORCH_VENV=$(TORCH_VENV) ./bench/run.sh

# Binaries, the cuda-tests test binary and the MNIST idx files for a GPU machine without Rust
# (target/gpu-check, ~30 MB); there, `scripts/gpu-check.sh` runs the device check.
gpu-bundle: setup
	MNIST_IDX=$(or $(MNIST_IDX),../shared/data/mnist) CARGO=$(CARGO) ./scripts/gpu-bundle.sh

# The device check itself (on a GPU machine; with the bundle built here or carried there).
gpu-check:
	./scripts/gpu-check.sh

clean-runs:
	rm -rf runs
