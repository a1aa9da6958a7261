#!/usr/bin/env bash
# Installs what the metrics test needs, once per machine (tests/tests/metrics.rs pipes the
# coordinator's /metrics into `promtool check metrics`):
#
#   * Debian's prometheus package, which brings /usr/bin/promtool, with apt-get when promtool is
#     missing (as root, or with `sudo -n`).
#
# Environment:
#   RINGTRAIN_PROMTOOL  the promtool to use (default: `promtool` on PATH, else /usr/bin/promtool;
#                       not installed when set to another existing file)
#
# Idempotent and quiet when everything is there; prints promtool's path last. Two callers at
# once wait on a lock.
set -euo pipefail
say() { echo "setup-promtool: $*" >&2; }

lock="${TMPDIR:-/tmp}/ringtrain-setup-promtool.lock"
exec 9>"$lock"
flock 9

if [ -n "${RINGTRAIN_PROMTOOL:-}" ]; then
  [ -x "$RINGTRAIN_PROMTOOL" ] || { say "RINGTRAIN_PROMTOOL=$RINGTRAIN_PROMTOOL is not an executable file"; exit 1; }
  promtool="$RINGTRAIN_PROMTOOL"
else
  promtool="$(command -v promtool || true)"
  if [ -z "$promtool" ] && [ ! -x /usr/bin/promtool ]; then
    command -v apt-get >/dev/null || { say "no promtool and no apt-get to install it"; exit 1; }
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null || { say "installing prometheus (for promtool) needs root (or sudo)"; exit 1; }
      SUDO=(sudo -n)
    fi
    say "installing Debian's prometheus (for promtool) with apt-get (once per machine)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2
    # Debian ships promtool only inside the server's package. On a machine with systemd this
    # also enables Debian's prometheus service (stop it with `systemctl disable --now
    # prometheus`); CI containers have no init system, so nothing starts there.
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >&2
  fi
  promtool="${promtool:-/usr/bin/promtool}"
  [ -x "$promtool" ] || { say "apt-get ran but $promtool is still missing"; exit 1; }
fi
flock -u 9
echo "$promtool"
