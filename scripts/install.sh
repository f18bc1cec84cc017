#!/usr/bin/env bash
# Install napari-histattn (editable) with the given extras into .venv, after the
# system libraries napari's canvas needs. Used by demo.sh ("all") and test.sh
# ("all,test"). Usage: bash scripts/install.sh EXTRAS
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:?usage: install.sh EXTRAS (for example all,test)}"
bash scripts/system-deps.sh
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, pinned to releases that pip finds as wheels
# (a CPU-only machine runs the CUDA build on the CPU).
.venv/bin/python -m pip install -q "torch>=2.10" "torchvision>=0.25"
.venv/bin/python -m pip install -q -e ".[${extras}]"
