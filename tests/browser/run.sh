#!/usr/bin/env bash
# Runs the dashboard's browser tests against an automa binary the caller built:
#   tests/browser/run.sh target/debug/automa
# Installs the npm packages on first use. Without Chromium it prints a notice and skips (exit 0), unless
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

cd "$here"
node --test "$here"/diff.test.js

chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "${AUTOMA_REQUIRE_BROWSER:-}" = 1 ]; then
    echo "error: browser tests need Chromium at $chromium (apt-get install -y chromium)" >&2
    exit 1
  fi
  echo "SKIPPED: dashboard browser tests: no Chromium at $chromium (apt-get install -y chromium)"
  exit 0
fi

if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi
AUTOMA_BIN="$binary" CHROMIUM_PATH="$chromium" node --test --test-concurrency=1 "$here"/dashboard.test.js
