"""Everything napari and Qt: reader, writer, sample data, dock widgets (thin over the core).

Importing this package installs one process-wide guard, :func:`block_triton_in_gl_process`:
napari's OpenGL canvas on Mesa (llvmpipe under Xvfb, radeonsi, ...) loads Mesa's LLVM,
and importing ``triton`` afterwards (torch's compiler backend, pulled in by
``torchvision.models`` through ``torch._dynamo``) crashes the process with a
segmentation fault while triton's own LLVM initialises. napari-histattn never compiles
kernels, so in a napari process torch is told that triton is absent.
"""

from __future__ import annotations

import os
import sys


def block_triton_in_gl_process() -> bool:
    """Make ``import triton`` raise ImportError in this process unless already imported.

    Set ``HISTATTN_ALLOW_TRITON=1`` to opt out (for example with a vendor OpenGL
    driver and a need for ``torch.compile`` in the same napari session).

    Returns
    -------
    bool
        True when the guard is in place (triton was not yet imported).
    """
    if os.environ.get("HISTATTN_ALLOW_TRITON") == "1":
        return False
    if sys.modules.get("triton") is not None:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


block_triton_in_gl_process()
