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
