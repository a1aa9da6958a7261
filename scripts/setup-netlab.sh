#!/usr/bin/env bash
# Installs what the network tests' lab needs, once per machine (tests/src/netlab: hosts in
# network namespaces, delay and loss through NFQUEUE):
#
#   * iproute2 (`ip`, `bridge`) and Debian's iptables (the nf_tables variant), with apt-get when
#     missing.
#
# The kernel must offer network namespaces, veth, bridges and NFQUEUE; the tests say so by
# name when it does not. Root is required by the tests themselves (CI runs as root).
#
# Idempotent and quiet when everything is there. Two callers at once wait on a lock.
set -euo pipefail
say() { echo "setup-netlab: $*" >&2; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

lock="${TMPDIR:-/tmp}/ringtrain-setup-netlab.lock"
exec 9>"$lock"
flock 9

missing=()
have ip || missing+=(iproute2)
have bridge || missing+=(iproute2)
have iptables || missing+=(iptables)
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get to install them"; exit 1; }
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "installing ${missing[*]} needs root (or sudo)"; exit 1; }
    SUDO=(sudo -n)
  fi
  say "installing Debian's ${missing[*]} with apt-get (once per machine)"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >&2
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >&2
fi
have iptables || { say "apt-get ran but iptables is still missing"; exit 1; }
flock -u 9
