#!/usr/bin/env bash
# Installs everything the test suite needs (venv, CPU torch, the project, headless Chromium)
# and runs the whole suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
. .venv/bin/activate
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "chromium missing and not root: browser tests will be skipped" >&2
  fi
fi
export RAY_USAGE_STATS_ENABLED=0
python -m pytest "$@"
