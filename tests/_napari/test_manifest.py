"""The npe2 manifest is valid, discoverable, and every command it names imports."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import napari_histattn

npe2 = pytest.importorskip("npe2")

MANIFEST_PATH = Path(napari_histattn.__file__).parent / "napari.yaml"
MANIFEST = npe2.PluginManifest.from_file(MANIFEST_PATH)
COMMANDS = list(MANIFEST.contributions.commands or [])


def test_manifest_parses_and_names_the_distribution() -> None:
    assert MANIFEST.name == "napari-histattn"
    assert COMMANDS, "the manifest declares no commands"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_every_command_imports(command) -> None:
    module_name, _, attr = command.python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), command.python_name


def test_every_contribution_points_at_a_declared_command() -> None:
    ids = {c.id for c in COMMANDS}
    used = [r.command for r in MANIFEST.contributions.readers or []]
    used += [s.command for s in MANIFEST.contributions.sample_data or []]
    used += [w.command for w in MANIFEST.contributions.widgets or []]
    used += [w.command for w in MANIFEST.contributions.writers or []]
    assert set(used) <= ids
    # Nothing declared that is not used (no dangling widget commands).
    assert ids == set(used)


def test_classify_widget_and_geojson_io_are_declared() -> None:
    (widget,) = MANIFEST.contributions.widgets
    assert widget.display_name == "Classify with attention"
    (writer,) = MANIFEST.contributions.writers
    assert writer.layer_types == ["shapes"] and writer.filename_extensions == [".geojson"]
    patterns = {p for r in MANIFEST.contributions.readers for p in r.filename_patterns}
    assert "*.geojson" in patterns


def test_reader_accepts_every_openslide_suffix_including_tiff() -> None:
    from napari_histattn._napari.reader import SLIDE_SUFFIXES

    (reader,) = [
        r for r in MANIFEST.contributions.readers if r.command == "napari-histattn.get_reader"
    ]
    assert reader.accepts_directories is False
    patterns = set(reader.filename_patterns)
    for suffix in SLIDE_SUFFIXES:
        assert f"*{suffix}" in patterns
    # napari-wsi refuses `.tiff` for OpenSlide; ours must not.
    assert {"*.tif", "*.tiff", "*.ome.tif", "*.ome.tiff", "*.svs", "*.ndpi", "*.mrxs"} <= patterns


def test_sample_data_is_declared() -> None:
    names = {s.display_name for s in MANIFEST.contributions.sample_data}
    assert "Synthetic slide with lesions" in names
    assert "CMU-1-Small-Region (Aperio SVS)" in names


def test_plugin_is_discovered_through_its_entry_point() -> None:
    pm = npe2.PluginManager()
    pm.discover()
    manifest = pm.get_manifest("napari-histattn")
    assert manifest.contributions.readers
    # The installed entry point serves this very file.
    assert {c.id for c in manifest.contributions.commands} == {c.id for c in COMMANDS}
