#!/usr/bin/env bash
# All GPU checks in one run, no network, on the machine's own python3 (torch, triton, transformers):
# `duogpt bench gpu` (launch-shape sweep, dense cuBLAS vs the Triton kernel at Llama-2-7B shapes, a
# 7B-shaped stack per token and in greedy decoding), then the Triton kernel tests on the device
# (TESTS: a -k selection; each launch shape and dtype compiles anew). Results under $OUT (default runs/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 DUOGPT_KERNEL_PLAN=off
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -m duogpt bench gpu --json "$OUT/gpu-check.json" --markdown "$OUT/gpu-check.md" 2>&1 | tee "$OUT/gpu-check.log"
$PY -m pytest -q -p no:cacheprovider tests/runtime/test_kernels_triton.py ${TESTS:+-k "$TESTS"} 2>&1 | tail -15 \
    | tee "$OUT/triton-tests.txt"
