#!/usr/bin/env bash
# Set up .venv, then lint and run the tests: all fast tests plus the bounded subset of
# slow tests on the real default model (marker ci_slow). Fails when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
.venv/bin/ruff check src tests scripts bench
.venv/bin/python -m pytest -q -m "not slow"
.venv/bin/python -m pytest -q -m "ci_slow"
