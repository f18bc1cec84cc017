#!/usr/bin/env bash
# Install napari-histattn into .venv and open napari with the synthetic sample
# slide, its lesion outlines and the "Classify with attention" widget (a demo
# checkpoint selected: click Classify). Without a display (a server, CI), run the
# demo under Xvfb: it clicks Classify for you and saves a screenshot with the
# attention overlay instead: demo.png in the project root.
# Extra arguments go to `histattn demo` (for example --slide PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/histattn demo "$@"
fi
echo "No display found: running Classify under Xvfb and saving a screenshot of the overlay."
out="$PWD/demo.png"
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/histattn demo --classify --screenshot "$out" "$@"
echo "Screenshot: $out"
