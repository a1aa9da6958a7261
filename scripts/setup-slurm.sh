#!/usr/bin/env bash
# Installs what the Slurm test needs, once per machine (tests/tests/slurm.rs starts its own
# munged, slurmctld and slurmd from a generated slurm.conf and submits
# deploy/slurm/ringtrain.sbatch to them):
#
#   * Debian's slurm-wlm (slurmctld, slurmd, sbatch, srun, scontrol) and munge, with apt-get
#     when one of those commands is missing (as root, or with `sudo -n`).
#
# Idempotent and quiet when everything is there. Two callers at once wait on a lock. Nothing is
# started or enabled here: on a machine with systemd, Debian's packages enable their own
# services (`systemctl disable --now slurmctld slurmd munge` stops them); CI containers have no
# init system, so nothing starts there. The test's daemons use their own files and ports.
set -euo pipefail
say() { echo "setup-slurm: $*" >&2; }

lock="${TMPDIR:-/tmp}/ringtrain-setup-slurm.lock"
exec 9>"$lock"
flock 9

missing=()
for cmd in slurmctld slurmd sbatch srun scontrol squeue munged munge; do
  command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get to install them"; exit 1; }
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "installing slurm-wlm and munge needs root (or sudo)"; exit 1; }
    SUDO=(sudo -n)
  fi
  say "installing Debian's slurm-wlm and munge with apt-get (once per machine; missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >&2
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
  for cmd in "${missing[@]}"; do
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || { say "apt-get ran but $cmd is still missing"; exit 1; }
  done
fi
flock -u 9
