"""Run a snippet in a fresh interpreter with a memory cap and a timeout.

A decompression bomb that gets through kills the process (OpenSlide's allocation
failure aborts in GLib) or swaps the machine; run in-process, it would take the
test session down with it. :func:`run_isolated` caps the child's address space
with ``resource.setrlimit`` and reports how it ended.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

PRELUDE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
"""


@dataclass
class Ended:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str

    @property
    def crashed(self) -> bool:
        """Killed by a signal (negative code), hung, or ended with a raw traceback."""
        return (
            self.returncode is None
            or self.returncode < 0
            or "Traceback (most recent call last)" in self.stderr
        )


def run_isolated(code: str, *, memory_gib: float = 3.0, timeout_s: float = 120.0) -> Ended:
    """Run ``code`` in a child Python; its stdout, stderr and exit status."""
    script = PRELUDE.format(cap=int(memory_gib * 2**30)) + textwrap.dedent(code)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        return Ended(None, str(exc.stdout or ""), str(exc.stderr or ""))
    return Ended(done.returncode, done.stdout, done.stderr)
