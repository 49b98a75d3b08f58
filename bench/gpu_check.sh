#!/usr/bin/env bash
# All GPU checks in one run, no network: the Triton kernel tests on the device, bfloat16
# dense GEMV vs the Triton kernel at Llama-2-7B shapes, then end-to-end decode of a 7B-shaped
# stack (4 blocks, 50/50) on the GPU: dense model vs the sparse runtime. Results under $OUT
# (default runs/gpu). Expects the venv (with triton) to be carried along.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
.venv/bin/python -m pytest -q tests/runtime/test_kernels_triton.py tests/test_checkpoint.py 2>&1 | tee "$OUT/triton-tests.txt"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from duogpt.runtime import bench
result = bench.gemv_gpu()
open(f"{sys.argv[1]}/gemv-gpu.json", "w").write(json.dumps(result, indent=1))
result = bench.decode(None, layers=4, device="cuda")
open(f"{sys.argv[1]}/decode-gpu.json", "w").write(json.dumps(result, indent=1))
open(f"{sys.argv[1]}/decode-gpu.md", "w").write(bench.decode_markdown(result))
PY
