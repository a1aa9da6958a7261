#!/usr/bin/env bash
# Installs what deploy/smoke.sh needs, once per machine, and writes its podman configuration:
#
#   * Debian's podman, runc, debootstrap and the rootful network stack (netavark, aardvark-dns),
#     with apt-get when a command is missing (as root, or with `sudo -n`);
#   * $RINGTRAIN_PODMAN_DIR/containers.conf (default ~/.cache/ringtrain/podman): no default
#     ulimits (raising NPROC is refused on these machines). Nothing under /etc is changed:
#     the smoke test points CONTAINERS_CONF at this file.
#
# Containers run with `--runtime runc`: crun refuses this kernel's hybrid cgroups. Idempotent;
# prints the containers.conf path last. Two callers at once wait on a lock.
set -euo pipefail
say() { echo "setup-podman: $*" >&2; }

dir="${RINGTRAIN_PODMAN_DIR:-$HOME/.cache/ringtrain/podman}"
mkdir -p "$dir"
exec 9>"$dir/.setup.lock"
flock 9

missing=()
for cmd in podman runc debootstrap; do
  command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
done
[ -x /usr/lib/podman/netavark ] || missing+=(netavark)
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get to install them"; exit 1; }
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "installing podman needs root (or sudo)"; exit 1; }
    SUDO=(sudo -n)
  fi
  say "installing Debian's podman, runc and debootstrap with apt-get (once per machine; missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >&2
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends podman runc debootstrap uidmap \
    slirp4netns netavark aardvark-dns fuse-overlayfs >&2
fi
conf="$dir/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' > "$conf.tmp"
mv "$conf.tmp" "$conf"
flock -u 9
echo "$conf"
