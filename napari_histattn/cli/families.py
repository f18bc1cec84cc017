"""``histattn families``: the model families this install runs, and their run parameters.

Read from each family's declaration (:class:`~napari_histattn.models.family.Family`),
the same one the napari widget builds its controls from. A parameter is given
to ``histattn classify`` / ``batch`` as ``--param NAME=VALUE`` (``n_patches``,
``patch_size`` and ``seed`` also have their own options).
"""

from __future__ import annotations

import argparse
from typing import Any

from napari_histattn.cli._parsers import add_command


def register(subparsers: Any) -> None:
    """Add the ``families`` subcommand."""
    parser = add_command(
        subparsers, "families", "list the model families, their models and run parameters", __doc__
    )
    parser.set_defaults(func=run)


def describe_families() -> str:
    """The text ``histattn families`` prints."""
    from napari_histattn.models.family import list_families

    lines = []
    for family in list_families():
        lines.append(f"{family.name}: {family.description}".rstrip(": "))
        lines.append(f"  models: {', '.join(family.models)}")
        lines.append(
            f"  training input: {family.input}; default batch size {family.default_batch_size}"
        )
        for p in family.params:
            bounds = f"{p.minimum:.12g}-{p.maximum:.12g}"
            lines.append(f"  --param {p.name}=<{p.kind.__name__} {bounds}>  {p.help}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(describe_families())
    return 0
