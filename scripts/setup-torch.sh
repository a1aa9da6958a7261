#!/usr/bin/env bash
# Installs libtorch (PyPI torch==2.11.0) into a virtualenv outside the clone, once per machine.
#
# RINGTRAIN_TORCH_VENV overrides the location (default ~/.cache/ringtrain/torch-2.11.0).
# Idempotent: a venv whose torch imports as 2.11.0 is left alone. Prints the venv path last.
set -euo pipefail
TORCH_VERSION=2.11.0
VENV="${RINGTRAIN_TORCH_VENV:-$HOME/.cache/ringtrain/torch-$TORCH_VERSION}"
PY="${PYTHON:-python3}"

have_torch() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null
}

if have_torch; then
  echo "setup-torch: torch $TORCH_VERSION already in $VENV" >&2
else
  echo "setup-torch: installing torch==$TORCH_VERSION into $VENV (about 5 GB with its CUDA libraries; progress below)" >&2
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --progress-bar on "torch==$TORCH_VERSION" numpy >&2
  have_torch || { echo "setup-torch: torch $TORCH_VERSION still not importable from $VENV" >&2; exit 1; }
fi
echo "$VENV"
