#!/usr/bin/env bash
# Set up .venv, prune the embedded default model (SmolLM2-135M-Instruct) with DuoGPT at
# 50% weights / 50% activations on the packaged Brown text, evaluate the dense and the
# pruned model on the Brown evaluation part, and print the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
RUN=${RUN:-runs/quickstart}
mkdir -p "$RUN"
rm -rf "$RUN/duogpt-50-50"
.venv/bin/duogpt prune --method duogpt --weight-sparsity 0.5 --act-sparsity 0.5 --out "$RUN/duogpt-50-50"
.venv/bin/duogpt eval --json "$RUN/dense.json"
.venv/bin/duogpt eval "$RUN/duogpt-50-50" --json "$RUN/duogpt-50-50.json"
.venv/bin/duogpt report "$RUN/dense.json" "$RUN/duogpt-50-50.json" --markdown "$RUN/summary.md"
