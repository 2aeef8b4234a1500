#!/usr/bin/env bash
# Runs the dashboard's browser tests against an automa binary the caller built:
#   tests/browser/run.sh target/debug/automa
# Installs the npm packages on first use. Without Node.js or Chromium it prints a notice and skips (exit 0), unless
# AUTOMA_REQUIRE_BROWSER=1 (CI) makes that a failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-${AUTOMA_BIN:-}}
if [ -z "$binary" ]; then
  echo "usage: $0 PATH_TO_AUTOMA_BINARY" >&2
  exit 2
fi
binary=$(realpath "$binary")
if [ ! -x "$binary" ]; then
  echo "error: $binary is not an executable automa binary" >&2
  exit 2
fi

skip() {
  if [ "${AUTOMA_REQUIRE_BROWSER:-}" = 1 ]; then
    echo "error: browser tests need $1" >&2
    exit 1
  fi
  echo "SKIPPED: dashboard browser tests: no $1"
  exit 0
}

command -v node >/dev/null || skip "Node.js (apt-get install -y nodejs npm)"
cd "$here"
node --test "$here"/diff.test.js "$here"/modules.test.js "$here"/packages.test.js

chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
[ -x "$chromium" ] || skip "Chromium at $chromium (apt-get install -y chromium)"

if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi
AUTOMA_BIN="$binary" CHROMIUM_PATH="$chromium" node --test --test-concurrency=1 "$here"/dashboard.test.js "$here"/dependencies.test.js
