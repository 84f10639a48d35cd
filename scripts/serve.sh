#!/usr/bin/env bash
# Installs Helios Serve and serves the embedded default (tiny random Helios on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
# Direct ingress (HAProxy in front, replicas serve HTTP): a viewer that stops reading is bounded,
# skipped forward and disconnected instead of piling bytes in Serve's proxy (docs/limits.md).
# HELIOS_DIRECT_INGRESS=0 keeps Serve's Python proxy.
if [ "${HELIOS_DIRECT_INGRESS:-1}" = "1" ]; then
  eval "$(python -m deployments.ingress_env 8000)"
fi
exec serve run serve_config.yaml "$@"
