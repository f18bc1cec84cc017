"""The ``histattn`` command line: a thin layer over the GUI-free core.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from napari_histattn import __version__
from napari_histattn.errors import HistattnError

# Subcommand modules, in the order `histattn --help` lists them. A module that
# is missing is skipped so that a partial install still runs the rest.
_SUBCOMMANDS = (
    "demo",
    "synth",
    "pyramid",
    "features",
    "pretrain",
    "train",
    "pseudo_label",
    "finetune",
    "evaluate",
    "classify",
    "batch",
    "families",
    "encoders",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histattn",
        description="Whole-slide images with attention models: synthesise, train, evaluate, classify.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"napari_histattn.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"napari_histattn.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HistattnError as err:
        print(f"histattn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"histattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
