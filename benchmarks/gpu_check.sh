#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA tests, throughput, two KSDD epochs, scoring;
# one table at the end, at most 8 minutes on one H100/H200. --dry-run: the same on the CPU at
# tiny sizes. Uses .venv's Python when there is one, else python3 (a GPU machine's own torch),
# with this checkout's src/ on the path, so nothing needs installing.
#   bash benchmarks/gpu_check.sh --ksdd /data/KolektorSDD [--results FILE]
#   bash benchmarks/gpu_check.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then :; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-480}" "$PYTHON" benchmarks/gpu_check.py "$@"
