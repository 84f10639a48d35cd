#!/usr/bin/env bash
# Installs Helios Serve and serves the embedded default (tiny random Helios on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
exec serve run serve_config.yaml "$@"
