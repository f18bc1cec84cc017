"""`import napari_histattn` must stay cheap: no Qt, napari, magicgui or torch."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("torch", "napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")

CORE_MODULES = (
    "napari_histattn",
    "napari_histattn.io",
    "napari_histattn.progress",
    "napari_histattn.errors",
)


def _loaded_after_import(module: str) -> list[str]:
    code = (
        "import json, sys\n"
        f"import {module}\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_package_import_pulls_in_no_gui_or_torch() -> None:
    for module in CORE_MODULES:
        loaded = set(_loaded_after_import(module))
        bad = sorted(loaded.intersection(FORBIDDEN))
        assert not bad, f"`import {module}` imported {bad}"


def test_cli_help_runs_without_gui() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "napari_histattn", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "histattn" in result.stdout


def test_building_the_cli_parser_imports_no_torch_or_gui() -> None:
    # Every `histattn` command builds the full parser; a subcommand that imports
    # torch at registration makes `histattn synth` pay ~600 MB and seconds for nothing.
    loaded = set(_loaded_after_import("napari_histattn.cli"))
    code = (
        "import json, sys\n"
        "from napari_histattn.cli import build_parser\n"
        "build_parser()\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded |= set(json.loads(out.strip().splitlines()[-1]))
    bad = sorted(loaded.intersection(FORBIDDEN))
    assert not bad, f"building the CLI parser imported {bad}"
