#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a GPU machine that has python3 + torch 2.11.0 but no
# Rust, into one folder (default target/gpu-check, about 35 MB, small enough to carry):
#   release/ringtrain, release/ringtrain-worker   stripped release binaries
#   release/synth-shapes                          the RGB shapes generator (your-own-images run)
#   release/gpu-tests                             the `cuda-tests` test binary (tests/tests/gpu.rs)
#   mnist/*.gz                                    the four MNIST idx files (../shared/data/mnist)
#   bench/torch_ref.py                            the PyTorch reference
# The binaries find libtorch and NCCL through LD_LIBRARY_PATH there (gpu-check.sh sets it from
# that machine's torch). Usage: scripts/gpu-bundle.sh [DEST]   (make gpu-bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-target/gpu-check}"
IDX="${MNIST_IDX:-../shared/data/mnist}"
CARGO="${CARGO:-cargo}"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$IDX/$f" ] || { echo "gpu-bundle: $IDX/$f missing; set MNIST_IDX to the idx folder" >&2; exit 1; }
done
echo "gpu-bundle: building release binaries and the cuda-tests test binary" >&2
"$CARGO" build --release --bins >&2
tests_bin=$("$CARGO" test --release -p ringtrain-tests --features cuda-tests --test gpu --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$tests_bin" ] || { echo "gpu-bundle: could not build the cuda-tests test binary" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/release" "$DEST/mnist" "$DEST/bench"
cp target/release/ringtrain target/release/ringtrain-worker target/release/synth-shapes "$DEST/release/"
cp "$tests_bin" "$DEST/release/gpu-tests"
strip "$DEST"/release/*
cp "$IDX"/*.gz "$DEST/mnist/"
cp bench/torch_ref.py "$DEST/bench/"
du -sh "$DEST" >&2
echo "$DEST"
