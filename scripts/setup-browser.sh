#!/usr/bin/env bash
# Installs what the dashboard's browser test needs, once per machine:
#
#   * Debian's chromium (apt-get), when /usr/bin/chromium is missing;
#   * playwright-core (pinned, from npm) into ~/.cache/ringtrain/browser-tools, which drives it.
#
# No tool downloads a browser of its own: playwright-core has no install step and the test
# launches /usr/bin/chromium (tests/browser/dashboard.cjs).
#
# Environment:
#   RINGTRAIN_BROWSER_TOOLS  where playwright-core goes (default ~/.cache/ringtrain/browser-tools)
#   RINGTRAIN_CHROMIUM       the browser (default /usr/bin/chromium; not installed when set to
#                            another existing file)
#
# Idempotent and quiet when everything is there; prints the tools folder last (for NODE_PATH).
# Two callers at once (tests run in parallel) wait for each other on a lock.
set -euo pipefail
PLAYWRIGHT_VERSION=1.64.1
TOOLS="${RINGTRAIN_BROWSER_TOOLS:-$HOME/.cache/ringtrain/browser-tools}"
CHROMIUM="${RINGTRAIN_CHROMIUM:-/usr/bin/chromium}"

say() { echo "setup-browser: $*" >&2; }

mkdir -p "$(dirname "$TOOLS")"
exec 9>"$TOOLS.lock"
flock 9

if [ ! -x "$CHROMIUM" ]; then
  if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    say "RINGTRAIN_CHROMIUM=$CHROMIUM is not an executable file"
    exit 1
  fi
  command -v apt-get >/dev/null || { say "no $CHROMIUM and no apt-get to install it"; exit 1; }
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "installing chromium needs root (or sudo)"; exit 1; }
    SUDO=(sudo -n)
  fi
  say "installing Debian's chromium with apt-get (about 100 MB, once per machine)"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >&2
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >&2
  [ -x "$CHROMIUM" ] || { say "apt-get ran but $CHROMIUM is still missing"; exit 1; }
fi

stamp="$TOOLS/.ringtrain-playwright-core"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$PLAYWRIGHT_VERSION" ] ||
  [ ! -f "$TOOLS/node_modules/playwright-core/package.json" ]; then
  command -v npm >/dev/null || { say "npm is missing (Debian: apt-get install nodejs npm)"; exit 1; }
  say "installing playwright-core@$PLAYWRIGHT_VERSION into $TOOLS"
  mkdir -p "$TOOLS"
  # playwright-core has no postinstall; the variable guards against one ever fetching a browser.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$TOOLS" --no-audit --no-fund \
    --no-update-notifier --loglevel=error --save-exact "playwright-core@$PLAYWRIGHT_VERSION" >&2
  echo "$PLAYWRIGHT_VERSION" >"$stamp"
fi
flock -u 9
echo "$TOOLS"
