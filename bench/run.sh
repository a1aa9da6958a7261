#!/usr/bin/env bash
# `make bench`: ringtrain against the PyTorch 2.11 references, same model, recipe, data and
# threads, measured in the same run:
#   1. ringtrain-worker (1 process, BENCH_THREADS threads) vs bench/torch_ref.py
#   2. ringtrain launch --workers 2 (1 thread each) vs torchrun bench/ddp_ref.py (2 ranks, gloo)
#   3. the ring all-reduce between 2 processes: 41,132 floats (the ResNet-ish gradient), 64 MB
#
# Prints a table with ratios and writes target/bench/results.json. Knobs (environment):
#   BENCH_MODEL (resnet)  BENCH_EPOCHS (1)  BENCH_THREADS (2)  BENCH_REPEATS (2, best of)
#   MNIST_DIR (the PNG folder, made by `make data`)  MNIST_IDX (../shared/data/mnist)
# Throughput = training images / seconds inside training steps, every step of the epoch counted
# for both (the reference is run with --warmup-steps 0); validation and start-up excluded.
# Start-up = wall time from launching ringtrain-worker to its first training step, warm cache.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${BENCH_MODEL:-resnet}"
EPOCHS="${BENCH_EPOCHS:-1}"
THREADS="${BENCH_THREADS:-2}"
REPEATS="${BENCH_REPEATS:-2}"
MNIST_DIR="${MNIST_DIR:?set MNIST_DIR to the mnist_png folder (make bench does)}"
MNIST_IDX="${MNIST_IDX:-../shared/data/mnist}"
PY="${TORCH_VENV:-$HOME/.cache/ringtrain/torch-2.11.0}/bin/python"
OUT=target/bench
mkdir -p "$OUT"
WORKER=target/release/ringtrain-worker

echo "bench: $MODEL, $EPOCHS epoch(s), $THREADS threads, best of $REPEATS; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Warm the decoded-image cache (and the page cache) once, outside the measurement.
"$WORKER" cache --data "$MNIST_DIR" >&2

for i in $(seq 1 "$REPEATS"); do
  echo "bench: ringtrain-worker run $i/$REPEATS" >&2
  start=$(date +%s.%N)
  "$WORKER" train --data "$MNIST_DIR" --model "$MODEL" --epochs "$EPOCHS" --threads "$THREADS" \
    --no-progress --run-dir "$OUT/ringtrain-$i" > "$OUT/ringtrain-$i.log" 2>&1
  echo "$start" > "$OUT/ringtrain-$i.start"
  echo "bench: PyTorch reference run $i/$REPEATS" >&2
  "$PY" bench/torch_ref.py --idx "$MNIST_IDX" --model "$MODEL" --epochs "$EPOCHS" --threads "$THREADS" \
    --warmup-steps 0 --json "$OUT/torch-$i.json" > "$OUT/torch-$i.log" 2>&1
  echo "bench: ringtrain launch --workers 2, run $i/$REPEATS" >&2
  target/release/ringtrain launch --data "$MNIST_DIR" --workers 2 --threads-per-worker 1 --model "$MODEL" \
    --epochs "$EPOCHS" --run-dir "$OUT/launch-$i" > "$OUT/launch-$i.log" 2>&1
  echo "bench: torchrun DDP (gloo) reference, run $i/$REPEATS" >&2
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 bench/ddp_ref.py --idx "$MNIST_IDX" \
    --model "$MODEL" --epochs "$EPOCHS" --threads 1 --json "$OUT/ddp-$i.json" > "$OUT/ddp-$i.log" 2>&1
done
echo "bench: ring all-reduce between 2 processes" >&2
target/release/examples/ringbench > "$OUT/ring.json"

"$PY" - "$OUT" "$REPEATS" "$MODEL" "$EPOCHS" "$THREADS" <<'PYEOF'
import json, sys, platform, os
out, repeats, model, epochs, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rt, ref = [], []
for i in range(1, repeats + 1):
    s = json.load(open(f"{out}/ringtrain-{i}/summary.json"))
    start = float(open(f"{out}/ringtrain-{i}.start").read())
    s["startup_to_first_step_s"] = s["first_step_unix"] - start
    rt.append(s)
    ref.append(json.load(open(f"{out}/torch-{i}.json")))
launch = [json.load(open(f"{out}/launch-{i}/summary.json")) for i in range(1, repeats + 1)]
ddp = [json.load(open(f"{out}/ddp-{i}.json")) for i in range(1, repeats + 1)]
ring = json.load(open(f"{out}/ring.json"))
best_launch = max(launch, key=lambda s: s["train_images_per_s"])
best_ddp = max(ddp, key=lambda s: s["train_images_per_s"])
ratio2 = best_launch["train_images_per_s"] / best_ddp["train_images_per_s"]
best_rt = max(rt, key=lambda s: s["train_images_per_s"])
best_ref = max(ref, key=lambda s: s["train_images_per_s"])
startup = min(s["startup_to_first_step_s"] for s in rt)
ratio = best_rt["train_images_per_s"] / best_ref["train_images_per_s"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rows = [
    ("train images/s", f"{best_rt['train_images_per_s']:.0f}", f"{best_ref['train_images_per_s']:.0f}", f"{ratio:.2f}x"),
    ("valid accuracy", f"{best_rt['final_accuracy']:.4f}", f"{best_ref['valid_accuracy']:.4f}", ""),
    ("start-up to first step (warm cache)", f"{startup:.2f} s", "", "target < 2 s"),
    ("2 workers: train images/s", f"{best_launch['train_images_per_s']:.0f}", f"{best_ddp['train_images_per_s']:.0f}",
     f"{ratio2:.2f}x"),
    ("2 workers: seconds per epoch (training)", f"{60000 / best_launch['train_images_per_s']:.1f}",
     f"{sum(best_ddp['epoch_seconds']) / len(best_ddp['epoch_seconds']):.1f}", ""),
    ("ring all-reduce, 41,132 floats", f"{ring['grad_us_median']:.0f} us", "", ""),
    ("ring all-reduce, 64 MB", f"{ring['big_ms_median']:.0f} ms", "", f"{ring['big_gbps']:.2f} GB/s"),
]
print(f"\n{model}, {epochs} epoch(s), {threads} threads, {os.cpu_count()} cores ({cpu}), best of {repeats}")
print(f"{'':42} {'ringtrain':>12} {'PyTorch ref':>12} {'ratio':>12}")
for r in rows:
    print(f"{r[0]:42} {r[1]:>12} {r[2]:>12} {r[3]:>12}")
json.dump({"model": model, "epochs": int(epochs), "threads": int(threads), "cpu": cpu,
           "ringtrain": rt, "torch_ref": ref, "throughput_ratio": ratio, "startup_s": startup,
           "launch": launch, "ddp_ref": ddp, "launch_vs_ddp_ratio": ratio2, "ring": ring},
          open(f"{out}/results.json", "w"), indent=2)
print(f"\nfull results: {out}/results.json")
PYEOF
