#!/usr/bin/env bash
# Install napari-histattn with its test dependencies into .venv and run the whole
# test suite (everything a CPU machine can run; GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, pinned to releases that pip finds as wheels
# (a CPU-only machine runs the CUDA build on the CPU).
.venv/bin/python -m pip install -q "torch>=2.10" "torchvision>=0.25"
.venv/bin/python -m pip install -q -e ".[all,test]"
exec .venv/bin/python -m pytest "$@"
