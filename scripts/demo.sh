#!/usr/bin/env bash
# Install napari-histattn into .venv and open napari with the synthetic sample
# slide, its lesion outlines and the "Classify with attention" widget (a demo
# checkpoint selected: click Classify). Without a display (a server, CI), run the
# demo under Xvfb: it clicks Classify for you and saves a screenshot with the
# attention overlay instead: demo.png in the project root.
# Extra arguments go to `histattn demo` (for example --slide PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, as scripts/test.sh does.
.venv/bin/python -m pip install -q "torch>=2.10" "torchvision>=0.25"
.venv/bin/python -m pip install -q -e ".[all]"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/histattn demo "$@"
fi
echo "No display found: running Classify under Xvfb and saving a screenshot of the overlay."
out="$PWD/demo.png"
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/histattn demo --classify --screenshot "$out" "$@"
echo "Screenshot: $out"
