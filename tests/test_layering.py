"""Imports flow one way: ``io``, ``models`` -> ``inference``, ``training`` -> ``cli``, ``_napari``.

Checked twice: statically (every ``import`` statement in a layer's files, those
inside functions too) and at run time (what importing a layer, and loading every
model family, puts in ``sys.modules``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "napari_histattn"

#: Layer -> package prefixes it must never import.
FORBIDDEN = {
    "io": ("napari_histattn.models", "napari_histattn.inference", "napari_histattn.training"),
    "models": ("napari_histattn.io", "napari_histattn.inference", "napari_histattn.training"),
    "inference": ("napari_histattn.training",),
}
ABOVE = ("napari_histattn.cli", "napari_histattn._napari")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_no_import_statement_runs_back_up_the_layers() -> None:
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, module in _imports(path):
                if module.startswith(forbidden + ABOVE):
                    bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def _loaded(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_loading_inference_and_every_family_imports_no_training_cli_or_gui() -> None:
    loaded = _loaded(
        "import napari_histattn.inference.engine, napari_histattn.inference.localisation\n"
        "import napari_histattn.inference.outputs\n"
        "from napari_histattn.models.family import list_families\n"
        "assert len(list_families()) >= 3"
    )
    bad = [m for m in loaded if m.startswith(("napari_histattn.training",) + ABOVE)]
    assert not bad, bad
    assert "napari_histattn.models.attention_sampling" in loaded  # the families did load


def test_models_and_io_load_without_each_other() -> None:
    loaded = _loaded("import napari_histattn.models.checkpoint, napari_histattn.models.families")
    assert not [m for m in loaded if m.startswith("napari_histattn.io")]
    loaded = _loaded("import napari_histattn.io.slide, napari_histattn.io.export")
    assert not [
        m for m in loaded if m.startswith(("napari_histattn.models", "napari_histattn.inference"))
    ]
