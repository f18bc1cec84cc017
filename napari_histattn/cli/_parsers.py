"""Shared parser building for the ``histattn`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(subparsers: Any, name: str, help: str, description: str | None) -> Any:
    """A subcommand parser whose ``--help`` shows ``description`` (the module docstring) as written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


#: Seeds the command line takes: what every RNG here (torch, numpy, random) accepts.
MAX_SEED = 2**32 - 1


def seed_arg(text: str) -> int:
    """``--seed``: an integer 0 to 2^32 - 1, else a usage error (never an OverflowError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is within 0-{MAX_SEED}, got {value}")
    return value
