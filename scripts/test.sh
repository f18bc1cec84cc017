#!/usr/bin/env bash
# Install napari-histattn with its test dependencies into .venv and run the whole
# test suite (everything a CPU machine can run; GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all,test
exec .venv/bin/python -m pytest "$@"
