#!/usr/bin/env bash
# Creates .venv (if needed) and installs Helios Serve with CPU torch. Idempotent.
# Usage: scripts/install.sh [extra]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# pip's own chatter goes to a log; it is shown only when an install fails.
LOG=.venv/install.log
pip_install() {
  if ! python -m pip install -q "$@" >>"$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    echo "pip install $* failed; full log: $LOG" >&2
    return 1
  fi
}
: >"$LOG"
pip_install --upgrade pip
# CPU torch first: a bare "torch" requirement would otherwise pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip_install torch==2.13.0
extra=${1:-}
if [ -n "$extra" ]; then
  pip_install -e ".[$extra]"
else
  pip_install -e .
fi
echo "installed helios-serve into .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
