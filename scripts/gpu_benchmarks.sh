#!/usr/bin/env bash
# The GPU run-book in one command: every "pending: needs a GPU" row of BENCHMARKS.md (see
# scripts/gpu_benchmarks.py for the parts, flags and the device-tool call). On the GPU machine:
#   bash scripts/gpu_benchmarks.sh --install --out_dir "$OUT"
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_benchmarks.py" "$@"
