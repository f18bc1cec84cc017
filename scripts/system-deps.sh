#!/usr/bin/env bash
# System libraries that napari's canvas needs on a machine without a display:
# Xvfb (a virtual screen with Mesa OpenGL) and the xcb libraries Qt 6 loads.
# Skips apt when everything is present; uses sudo when not root.
set -euo pipefail
pkgs=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0
      libxcb-image0 libxcb-render-util0 libxcb-shape0 libegl1 libgl1 libglx-mesa0
      libgl1-mesa-dri libdbus-1-3 libfontconfig1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "Please install with your package manager: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
