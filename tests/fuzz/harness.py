"""A small mutation fuzzer for what users hand us: slides, checkpoints, GeoJSON.

:func:`mutants` derives damaged copies of seed files (truncation, bit flips in the
header and in the data, TIFF tag values set to hostile numbers, JSON values swapped
for NaN, huge, negative, wrong-typed or deeply nested ones). :class:`Runner` feeds
them to a :mod:`worker` process that opens, reads, loads or classifies each under
a memory cap, and classifies how each ended: ``ok``, ``refused`` (our error),
``traceback`` (any other exception), ``crash`` (the process died: a signal, an
abort in a C library) or ``hang`` (past the timeout). Anything but ``ok`` and
``refused`` is a bug. Everything is deterministic from the seed.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")
BAD_OUTCOMES = ("traceback", "crash", "hang")

#: Values a mutated TIFF tag takes: the edges where parsers overflow or allocate.
TAG_VALUES = (0, 1, 2, 3, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)
JSON_VALUES: tuple[Any, ...] = (
    float("nan"),
    float("inf"),
    -1,
    0,
    10**9,
    2**70,
    1e308,
    "32",
    None,
    [],
    {},
    [1, 2],
    True,
)


@dataclass
class Mutant:
    kind: str  # the worker job kind
    path: Path
    how: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- mutators


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(1, len(data)))]


def flip_bits(data: bytes, rng: random.Random, start: int, stop: int, n: int = 8) -> bytes:
    out = bytearray(data)
    stop = min(stop, len(out))
    if stop <= start:
        return bytes(out)
    for _ in range(n):
        i = rng.randrange(start, stop)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def tiff_entries(data: bytes) -> list[int]:
    """Byte offsets of the value fields of the first IFD's entries (classic TIFF only)."""
    if data[:4] not in (b"II*\x00", b"MM\x00*") or len(data) < 8:
        return []
    end = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", data[4:8])
    if ifd + 2 > len(data):
        return []
    (count,) = struct.unpack(end + "H", data[ifd : ifd + 2])
    return [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]


def mutate_tag(data: bytes, rng: random.Random) -> bytes:
    entries = tiff_entries(data)
    if not entries:
        return flip_bits(data, rng, 0, 64)
    end = "<" if data[:2] == b"II" else ">"
    at = rng.choice(entries)
    out = bytearray(data)
    kind = struct.unpack(end + "H", data[at + 2 : at + 4])[0]
    value = rng.choice(TAG_VALUES)
    if kind == 3:  # SHORT, left-justified in the value field
        out[at + 8 : at + 10] = struct.pack(end + "H", value & 0xFFFF)
    else:
        out[at + 8 : at + 12] = struct.pack(end + "I", value & 0xFFFFFFFF)
    if rng.random() < 0.3:  # and sometimes the count
        out[at + 4 : at + 8] = struct.pack(end + "I", rng.choice(TAG_VALUES) & 0xFFFFFFFF)
    return bytes(out)


def mutate_json(document: Any, rng: random.Random) -> Any:
    """One hostile change somewhere in a JSON document (a copy)."""
    doc = json.loads(json.dumps(document))
    holders: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else []
        )
        for key, value in items:
            holders.append((node, key))
            if isinstance(value, dict | list):
                stack.append(value)
    if not holders:
        return rng.choice(JSON_VALUES)
    node, key = rng.choice(holders)
    roll = rng.random()
    if roll < 0.15 and isinstance(node, dict):
        del node[key]
    elif roll < 0.25:
        node[key] = f"{_DEEP}{rng.choice((50, 5000, 100_000))}"  # nested lists, see dumps()
    else:
        node[key] = rng.choice(JSON_VALUES)
    return doc


_DEEP = "__deep__"


def dumps(document: Any) -> str:
    """JSON text of a mutated document, with its ``__deep__N`` markers as N nested lists
    (deeper than ``json.dumps`` itself can write)."""
    import re

    text = json.dumps(document)
    return re.sub(
        rf'"{_DEEP}(\d+)"', lambda m: "[" * int(m.group(1)) + "0" + "]" * int(m.group(1)), text
    )


# --------------------------------------------------------------------------- mutants


def binary_mutants(
    seed: Path, kind: str, out: Path, n: int, rng: random.Random
) -> Iterator[Mutant]:
    data = seed.read_bytes()
    header = min(len(data), 4096)
    for i in range(n):
        how = rng.choice(("truncate", "header-bits", "data-bits", "tag"))
        if how == "truncate":
            mutated = truncate(data, rng)
        elif how == "header-bits":
            mutated = flip_bits(data, rng, 0, header, n=rng.choice((1, 4, 16)))
        elif how == "data-bits":
            mutated = flip_bits(data, rng, header, len(data), n=rng.choice((1, 16, 256)))
        else:
            mutated = mutate_tag(data, rng)
        path = out / f"{seed.stem}-{i:04d}-{how}{seed.suffix}"
        path.write_bytes(mutated)
        yield Mutant(kind, path, f"{seed.name}: {how}")


def checkpoint_mutants(seed: Path, out: Path, n: int, rng: random.Random) -> Iterator[Mutant]:
    """Binary damage, and damage to the JSON metadata inside a valid safetensors frame."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(seed)
    (length,) = struct.unpack("<Q", seed.read_bytes()[:8])
    header = json.loads(seed.read_bytes()[8 : 8 + length])
    metadata = json.loads(header["__metadata__"]["napari_histattn"])
    for i in range(n):
        path = out / f"{seed.stem}-{i:04d}.safetensors"
        if rng.random() < 0.5:
            data = seed.read_bytes()
            mutated = (
                truncate(data, rng) if rng.random() < 0.3 else flip_bits(data, rng, 0, len(data))
            )
            path.write_bytes(mutated)
            how = "binary"
        else:
            changed = mutate_json(metadata, rng)
            text = dumps(changed) if not isinstance(changed, str) else changed
            save_file(
                tensors, path, metadata={"format": "napari-histattn", "napari_histattn": text}
            )
            how = "metadata"
        yield Mutant("checkpoint", path, f"{seed.name}: {how}")


def geojson_mutants(seed: Path, out: Path, n: int, rng: random.Random) -> Iterator[Mutant]:
    document = json.loads(seed.read_text())
    for i in range(n):
        path = out / f"{seed.stem}-{i:04d}.geojson"
        if rng.random() < 0.3:
            path.write_bytes(flip_bits(seed.read_bytes(), rng, 0, seed.stat().st_size, n=4))
            how = "bits"
        else:
            path.write_text(dumps(mutate_json(document, rng)))
            how = "json"
        yield Mutant("geojson", path, f"{seed.name}: {how}")


# --------------------------------------------------------------------------- running


class Runner:
    """Runs mutants through one worker process, restarting it after a crash or a hang."""

    def __init__(
        self, *, timeout_s: float = 30.0, memory_gib: float = 3.0, pythonpath: str | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_gib = memory_gib
        self.pythonpath = pythonpath  # another checkout to fuzz (benchmarks/fuzz.py --against)
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--memory-gib", str(self.memory_gib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=None if self.pythonpath is None else {**os.environ, "PYTHONPATH": self.pythonpath},
        )
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if "ready" not in ready:
            raise RuntimeError(f"the fuzz worker did not start: {ready!r}")
        return proc

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, mutant: Mutant) -> dict[str, Any]:
        import selectors

        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        job = {"kind": mutant.kind, "path": str(mutant.path), **mutant.extra}
        started = time.perf_counter()
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self._stop()
            return {"outcome": "crash", "error": "the worker died before the job"}
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.timeout_s):
                self._stop()
                return {"outcome": "hang", "error": f"no answer in {self.timeout_s:g} s"}
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            self.proc = None
            return {"outcome": "crash", "error": f"the worker died (exit status {code})"}
        answer = json.loads(line)
        answer["seconds"] = time.perf_counter() - started
        return answer

    def close(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
            self.proc = None


def campaign(mutants: list[Mutant], **runner: Any) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Run every mutant; the count of each outcome and the records of the bad ones."""
    counts: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    r = Runner(**runner)
    try:
        for mutant in mutants:
            answer = r.run(mutant)
            counts[answer["outcome"]] += 1
            if answer["outcome"] in BAD_OUTCOMES:
                bad.append({"mutant": str(mutant.path), "how": mutant.how, **answer})
    finally:
        r.close()
    return counts, bad


# --------------------------------------------------------------------------- seeds


def make_seeds(folder: Path, shared_slides: Path | None = None) -> dict[str, list[Path]]:
    """Seed files by job kind: a generated pyramid TIFF, an OME-TIFF with a SubIFD
    pyramid and a 12-bit-in-16 grey TIFF (both read by tifffile), a PNG, a tiny A-MIL
    checkpoint, the generator's GeoJSON, and the team's small real slides if present."""
    import numpy as np
    from PIL import Image

    from napari_histattn.io.synthetic import generate_synthetic_slide
    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model

    folder.mkdir(parents=True, exist_ok=True)
    made = generate_synthetic_slide(
        folder / "synthetic.tiff",
        1024,
        1024,
        seed=7,
        n_lesions=1,
        n_lookalikes=0,
        lesion_radius_px=120,
        mpp=0.5,
    )
    png = folder / "patch.png"
    Image.fromarray(np.full((64, 96, 3), (200, 120, 160), dtype=np.uint8)).save(png)
    ome, grey16 = _tifffile_seeds(folder, made.path)
    model = create_model("amil", encoder="tiny", patch_size=16, embed_dim=8, attn_dim=6)
    ckpt = save(
        folder / "tiny_amil",
        model,
        class_names=["benign", "lesion"],
        preprocessing={
            "patch_size": 16,
            "target_mpp": 1.0,
            "mean": [0.8, 0.6, 0.7],
            "std": [0.15, 0.2, 0.15],
        },
    )
    seeds: dict[str, list[Path]] = {
        "slide": [made.path, png, ome, grey16],
        "classify": [made.path],
        "checkpoint": [ckpt],
        "geojson": [made.path.with_suffix(".geojson")],
        "dicom": [],
    }
    if shared_slides is not None and shared_slides.is_dir():
        for name in ("small.svs", "boxes.tiff"):
            if (shared_slides / name).is_file():
                seeds["slide"].append(shared_slides / name)
        if (shared_slides / "boxes_0.dcm").is_file() and (shared_slides / "boxes_1.dcm").is_file():
            seeds["dicom"] = [shared_slides / "boxes_0.dcm", shared_slides / "boxes_1.dcm"]
    return seeds


def _tifffile_seeds(folder: Path, synthetic: Path) -> tuple[Path, Path]:
    """An OME-TIFF (tiled, JPEG, two SubIFD levels, physical size) cut from the
    generated slide, and a tiled 12-bit-in-16 grey TIFF: the tifffile backend's paths."""
    import numpy as np
    import tifffile

    from napari_histattn.io.slide import open_slide

    with open_slide(synthetic) as slide:
        rgb = slide.read_level_region(0, (0, 0), (512, 512))
    ome = folder / "cut.ome.tiff"
    with tifffile.TiffWriter(ome, ome=True) as tw:
        options = {"tile": (128, 128), "compression": "jpeg", "photometric": "rgb"}
        tw.write(
            rgb,
            subifds=1,
            metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "axes": "YXS"},
            **options,
        )
        tw.write(rgb[::2, ::2], subfiletype=1, **options)
    grey16 = folder / "grey12.tif"
    ramp = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 4096).astype(np.uint16)
    tifffile.imwrite(grey16, ramp, tile=(128, 128), compression="zlib")
    return ome, grey16


def all_mutants(
    seeds: dict[str, list[Path]], out: Path, per_seed: int, seed: int = 0
) -> list[Mutant]:
    """``per_seed`` mutants of every seed file (classify jobs get half as many)."""
    import shutil

    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    mutants: list[Mutant] = []
    for path in seeds["slide"]:
        mutants += binary_mutants(path, "slide", out, per_seed, rng)
    checkpoint = seeds["checkpoint"][0]
    (out / "classify").mkdir(exist_ok=True)
    for path in seeds["classify"]:
        for m in binary_mutants(path, "classify", out / "classify", max(1, per_seed // 2), rng):
            m.extra["checkpoint"] = str(checkpoint)
            mutants.append(m)
    mutants += checkpoint_mutants(checkpoint, out, per_seed, rng)
    for path in seeds["geojson"]:
        mutants += geojson_mutants(path, out, per_seed, rng)
    if seeds["dicom"]:
        first, second = seeds["dicom"]
        for i in range(per_seed):
            pair = out / f"dicom-{i:04d}"
            pair.mkdir(exist_ok=True)
            shutil.copy(second, pair / second.name)
            for m in binary_mutants(first, "slide", pair, 1, rng):
                target = pair / first.name
                m.path.replace(target)
                mutants.append(Mutant("slide", target, m.how))
    return mutants
