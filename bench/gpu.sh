#!/usr/bin/env bash
# The GPU fast path in one command: random 14B-Distilled weights built on the GPU (nothing is
# downloaded), 384x640 at [1,1,1] and [2,2,2], JSON lines on stdout (bench/bench_gpu.py --help).
#   bench/gpu.sh                                   # every visible GPU; served at TP=1 and TP=N
#   bench/gpu.sh --compile --attention auto --fp8  # with the transformer fast-path levers
#   bench/gpu.sh --device cpu --preset tiny        # the same code on the tiny model (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/bench_gpu.py "$@"
