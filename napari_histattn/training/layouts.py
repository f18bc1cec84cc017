"""Names of the data layouts that training and evaluation read (torch-free, for the CLI)."""

from __future__ import annotations

LAYOUTS = ("imagefolder", "breakhis", "slides", "csv")
