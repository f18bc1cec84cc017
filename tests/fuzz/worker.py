"""Fuzz worker: reads one JSON job per line on stdin, runs it, writes one JSON line back.

A job is ``{"kind": "slide" | "classify" | "checkpoint" | "geojson", "path": ...}``
(``classify`` also names a ``checkpoint``). The answer is ``{"outcome": "ok"}``,
``{"outcome": "refused", "error": ...}`` for our own error (a
:class:`~napari_histattn.errors.HistattnError`, or a ``ValueError`` our API
documents), or ``{"outcome": "traceback", "error": ...}`` for anything else. A
crash or a hang ends the process; the harness sees that and restarts it. The
address space is capped (``--memory-gib`` above what the imports mapped) so that an allocation bomb is a
``MemoryError`` here (a failure), not a swapped machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import traceback
import warnings


def _slide(path: str) -> None:
    from napari_histattn.io.slide import open_slide

    with open_slide(path) as slide:
        w, h = slide.level_dimensions[0]
        slide.read_region((0, 0), 0, (min(w, 256), min(h, 256)))
        slide.read_region((max(0, w // 2 - 64), max(0, h // 2 - 64)), 0, (128, 128))
        last = slide.level_count - 1
        lw, lh = slide.level_dimensions[last]
        slide.read_level_region(last, (0, 0), (min(lw, 512), min(lh, 512)))
        slide.thumbnail(256)


def _classify(path: str, checkpoint: str) -> None:
    from napari_histattn.inference.engine import classify
    from napari_histattn.progress import run_to_completion

    run_to_completion(classify(path, checkpoint, device="cpu"))


def _checkpoint(path: str) -> None:
    from napari_histattn.models.checkpoint import load

    load(path, device="cpu")


def _geojson(path: str) -> None:
    from napari_histattn.io.export import read_geojson_regions

    read_geojson_regions(path)


def _address_space() -> int:
    """This process's mapped address space in bytes (VmSize)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run(job: dict) -> dict:
    from napari_histattn.errors import HistattnError

    kind = job["kind"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "slide":
                _slide(job["path"])
            elif kind == "classify":
                _classify(job["path"], job["checkpoint"])
            elif kind == "checkpoint":
                _checkpoint(job["path"])
            elif kind == "geojson":
                _geojson(job["path"])
            else:
                raise SystemExit(f"unknown job kind {kind!r}")
    except HistattnError as exc:
        return {"outcome": "refused", "error": f"{type(exc).__name__}: {exc}"[:300]}
    except Exception as exc:  # noqa: BLE001  (what the harness counts as a failure)
        tail = traceback.format_exc(limit=4)[-1200:]
        return {"outcome": "traceback", "error": f"{type(exc).__name__}: {exc}"[:300], "tb": tail}
    return {"outcome": "ok"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-gib", type=float, default=3.0)
    args = parser.parse_args()
    import napari_histattn.inference.engine  # noqa: F401  (imported once, before the jobs)

    # The cap is on top of what the imports mapped: torch's CUDA build reserves
    # gigabytes of address space at import and faults under a flat 3 GiB limit.
    cap = _address_space() + int(args.memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        answer = run(json.loads(line))
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
