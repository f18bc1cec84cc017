"""Cached slide features: every tissue tile encoded once, one HDF5 file per slide.

:func:`extract_features` tiles a slide at the encoder's resolution (the tiling,
tissue detection and reading of training and classification,
:mod:`napari_histattn.inference.patches`), encodes the tiles in batches and
writes ``<out>/<slide stem>.h5``. Reading and JPEG decoding run in reader
threads ahead of the model (OpenSlide releases the GIL), so the throughput
approaches the slower of reading and encoding; memory is one batch per reader
plus the model, whatever the slide size (features go to disk batch by batch).

File layout (HDF5, the format CLAM and TRIDENT cache features in, so their tools
read ours): dataset ``features`` ``(N, D)`` float32, ``coords`` ``(N, 2)``
int64 level-0 top-left ``(x, y)`` of each tile (CLAM's convention), ``grid_rc``
``(N, 2)``; attributes ``format``, ``format_version``, ``encoder`` (JSON: name,
width, weights SHA-256, preprocessing), ``patch_size`` (model pixels),
``downsample`` (level-0 pixels per model pixel), ``tile_l0``, ``grid_shape``,
``mpp_xy``, ``tissue`` (JSON) and ``slide`` (JSON: file name, size in bytes,
modification time, quickhash, level-0 size), and ``complete`` = 1 written last.

Atomic and resumable: a file is written as ``.<name>.partial`` beside its target
and renamed only when complete, so a killed run leaves nothing that is taken as
done; :func:`is_done` accepts an existing file only if it is complete and was
made from the same slide file with the same encoder, weights and tiling.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from napari_histattn.errors import HistattnError
from napari_histattn.inference.errors import Cancelled, NoTissueError
from napari_histattn.inference.patches import (
    TilePlan,
    TissueSettings,
    plan_tiles,
    read_tiles,
    rgb_to_tensor,
    target_downsample,
)
from napari_histattn.inference.threads import run_threads, torch_threads
from napari_histattn.io.slide import Slide
from napari_histattn.models.device import resolve_device
from napari_histattn.models.encoders import Encoder
from napari_histattn.progress import Progress

__all__ = [
    "FORMAT",
    "FeatureFile",
    "FeatureFileError",
    "extract_features",
    "feature_info",
    "feature_path",
    "is_done",
    "plan_for_encoder",
    "feature_chunks",
    "read_features",
    "slide_identity",
]

FORMAT = "napari-histattn features"
FORMAT_VERSION = 1


class FeatureFileError(HistattnError):
    """A feature file is missing, torn, of another format, or made from something else."""


@dataclass
class FeatureFile:
    """A slide's cached features (see the module docstring for the fields)."""

    path: Path
    features: NDArray[np.float32]
    coords_l0_xy: NDArray[np.int64]
    grid_rc: NDArray[np.int64]
    grid_shape: tuple[int, int]
    patch_size: int
    downsample: float
    encoder: dict[str, Any]
    slide: dict[str, Any]
    tissue: dict[str, Any]

    @property
    def tile_l0(self) -> float:
        return self.patch_size * self.downsample

    def __len__(self) -> int:
        return int(self.features.shape[0])


def feature_path(out_dir: str | os.PathLike[str], slide_path: str | os.PathLike[str]) -> Path:
    """Where the features of ``slide_path`` go in ``out_dir``: ``<stem>.h5``."""
    return Path(out_dir) / f"{Path(slide_path).stem}.h5"


def slide_identity(slide: Slide) -> dict[str, Any]:
    """What identifies the slide file a feature file was made from."""
    stat = slide.path.stat()
    return {
        "name": slide.path.name,
        "size_bytes": int(stat.st_size),
        "mtime_ns": int(stat.st_mtime_ns),
        "quickhash": slide.quickhash,
        "size_l0_wh": [int(v) for v in slide.level_dimensions[0]],
    }


def _same_source(attrs: dict[str, Any], identity: dict[str, Any], encoder: dict[str, Any]) -> bool:
    made_from = attrs.get("slide", {})
    same_slide = all(made_from.get(k) == identity[k] for k in ("name", "size_bytes", "size_l0_wh"))
    if identity.get("quickhash") and made_from.get("quickhash"):
        same_slide = same_slide and made_from["quickhash"] == identity["quickhash"]
    else:
        same_slide = same_slide and made_from.get("mtime_ns") == identity["mtime_ns"]
    mine = attrs.get("encoder", {})
    keys = ("name", "weights_sha256", "random_seed", "dim")
    same_encoder = all(mine.get(k) == encoder.get(k) for k in keys)
    return bool(
        same_slide and same_encoder and mine.get("preprocessing") == encoder.get("preprocessing")
    )


def feature_info(path: Path) -> dict[str, Any]:
    """A complete feature file's attributes (JSON ones decoded) and ``n``, without its arrays."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            attrs = dict(h5.attrs)
            if attrs.get("format") != FORMAT or int(attrs.get("complete", 0)) != 1:
                raise FeatureFileError(f"{path} is not a complete napari-histattn feature file")
            out = {k: v for k, v in attrs.items() if k not in ("encoder", "slide", "tissue")}
            for key in ("encoder", "slide", "tissue"):
                out[key] = json.loads(attrs[key])
            out["n"] = int(h5["features"].shape[0])
            return out
    except FeatureFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise FeatureFileError(f"{path} cannot be read as a feature file: {exc}") from exc


def is_done(
    path: Path, slide: Slide, encoder: dict[str, Any], tissue: TissueSettings | None = None
) -> bool:
    """Whether ``path`` is a complete feature file of this slide file with this encoder
    (and these tissue settings)."""
    if not path.is_file():
        return False
    try:
        attrs = feature_info(path)
    except FeatureFileError:
        return False
    same_tissue = attrs["tissue"] == asdict(tissue or TissueSettings())
    return same_tissue and _same_source(attrs, slide_identity(slide), encoder)


def read_features(path: str | os.PathLike[str], features: bool = True) -> FeatureFile:
    """Read a complete feature file; :class:`FeatureFileError` for anything else.

    With ``features=False`` the tiles are read but not their features (``features`` is
    then ``(n, 0)``): read those in chunks with :func:`feature_chunks`."""
    import h5py

    p = Path(path)
    attrs = feature_info(p)
    try:
        with h5py.File(p, "r") as h5:
            n = int(h5["features"].shape[0])
            values = (
                np.asarray(h5["features"], dtype=np.float32)
                if features
                else np.zeros((n, 0), dtype=np.float32)
            )
            coords = np.asarray(h5["coords"], dtype=np.int64)
            grid_rc = np.asarray(h5["grid_rc"], dtype=np.int64)
    except (OSError, KeyError) as exc:
        raise FeatureFileError(f"{p} cannot be read as a feature file: {exc}") from exc
    if not (values.ndim == 2 and coords.shape == (len(values), 2) == grid_rc.shape):
        raise FeatureFileError(f"{p}: features {values.shape} and coords {coords.shape} disagree")
    if not np.all(np.isfinite(values)):
        raise FeatureFileError(f"{p}: the features hold NaN or infinite values")
    rows, cols = (int(v) for v in attrs["grid_shape"])
    return FeatureFile(
        p,
        values,
        coords,
        grid_rc,
        (rows, cols),
        int(attrs["patch_size"]),
        float(attrs["downsample"]),
        attrs["encoder"],
        attrs["slide"],
        attrs["tissue"],
    )


def feature_chunks(
    path: str | os.PathLike[str], rows: NDArray[np.int64], size: int
) -> Iterator[NDArray[np.float32]]:
    """The features of tiles ``rows`` (increasing) of a complete feature file, ``size``
    rows at a time, so that a bag of millions of tiles is never all in memory;
    :class:`FeatureFileError` at the first chunk that cannot be read or is not finite."""
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as h5:
            data = h5["features"]
            for start in range(0, len(rows), max(1, int(size))):
                index = rows[start : start + size]
                # A contiguous run is one slice (fast); otherwise h5py's point selection.
                if index[-1] - index[0] + 1 == len(index):
                    chunk = np.asarray(data[int(index[0]) : int(index[-1]) + 1], np.float32)
                else:
                    chunk = np.asarray(data[index], dtype=np.float32)
                if not np.all(np.isfinite(chunk)):
                    raise FeatureFileError(f"{p}: the features hold NaN or infinite values")
                yield chunk
    except (OSError, KeyError, TypeError) as exc:
        raise FeatureFileError(f"{p} cannot be read as a feature file: {exc}") from exc


def plan_for_encoder(slide: Slide, encoder: Encoder, tissue: TissueSettings) -> TilePlan:
    """The tissue tiles of ``slide`` at the encoder's input size and mpp (level 0 without mpp)."""
    spec = encoder.spec
    mpp = spec.target_mpp if slide.mpp_xy is not None else None
    downsample = target_downsample(slide, target_mpp=mpp)
    plan = plan_tiles(slide, spec.input_size, downsample, tissue)
    if len(plan) == 0 or float(plan.tissue_fraction.max()) < 0.01:
        raise NoTissueError(slide.path, "no tissue found to extract features from")
    return plan


def _batches(
    slide: Slide, plan: TilePlan, batch_size: int, workers: int, pre: dict[str, Any]
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, normalised tiles)`` per batch, read ``workers`` batches ahead in threads."""
    starts = list(range(0, len(plan), batch_size))

    def load(start: int) -> torch.Tensor:
        idx = np.arange(start, min(start + batch_size, len(plan)))
        pixels = read_tiles(slide, plan, idx)
        return rgb_to_tensor(pixels, pre["mean"], pre["std"], channels_last=True)

    with ThreadPoolExecutor(
        max_workers=max(1, workers), thread_name_prefix="histattn-read"
    ) as pool:
        pending: list[tuple[int, Future[torch.Tensor]]] = []
        ahead = max(1, workers) + 1
        for start in starts:
            pending.append((start, pool.submit(load, start)))
            if len(pending) >= ahead:
                first, future = pending.pop(0)
                yield first, future.result()
        for first, future in pending:
            yield first, future.result()


def extract_features(
    slide: Slide,
    encoder: Encoder,
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    workers: int = 2,
    tissue: TissueSettings | None = None,
    plan: TilePlan | None = None,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> Generator[Progress, None, FeatureFile]:
    """Encode every tissue tile of ``slide`` and write ``out_path``; yields ``features`` progress.

    ``threads``: torch's CPU threads while encoding (default: the usable cores less
    the busy ones, :func:`~napari_histattn.inference.threads.torch_threads`).

    The encoder runs on channels-last inputs, on CUDA in bfloat16 autocast, on the
    CPU in float32. The file appears only when complete (see the module docstring).
    Returns the file's tiles without their features (``features`` is ``(n, 0)``: read
    them with :func:`read_features` or :func:`feature_chunks`).
    ``plan`` gives the tiles instead of the slide's tissue tiles at the encoder's
    resolution (its patch size must be the encoder's input size).

    Raises
    ------
    NoTissueError
        The slide has no tissue; :class:`~napari_histattn.inference.errors.Cancelled`
        when ``cancel`` is set (the partial file is removed).
    """
    import h5py

    if batch_size < 1:
        raise HistattnError(f"batch_size must be at least 1, got {batch_size}")
    target = Path(out_path)
    tissue = tissue or TissueSettings()
    dev = resolve_device(device)
    if plan is None:
        plan = plan_for_encoder(slide, encoder, tissue)
    elif plan.patch_size != encoder.spec.input_size:
        raise HistattnError(
            f"the tiles are {plan.patch_size} px, encoder {encoder.name!r} takes "
            f"{encoder.spec.input_size} px"
        )
    description = encoder.describe()
    pre = description["preprocessing"]
    # Channels-last lets oneDNN and cuDNN pick faster convolutions (1.5x for the
    # ResNet-50 trunk on this project's 2-core CPU, benchmarks/RESULTS.md).
    model = encoder.module.to(dev).eval().to(memory_format=torch.channels_last)
    cuda = dev.type == "cuda"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    n, dim = len(plan), int(encoder.spec.dim)
    note = f"{slide.path.name}: {n} tiles"
    if slide.mpp_xy is None and encoder.spec.target_mpp is not None:
        note += (
            f" (the slide has no mpp: tiles are read at level 0, not at the encoder's "
            f"{encoder.spec.target_mpp:g} um/px)"
        )
    yield Progress("features", 0, n, note)
    n_threads = torch_threads(threads)[0]
    try:
        with h5py.File(partial, "w") as h5, run_threads(n_threads):
            feats = h5.create_dataset(
                "features", (n, dim), dtype="float32", chunks=(min(n, 256), dim)
            )
            h5.create_dataset("coords", data=plan.l0_xy.astype(np.int64))
            h5.create_dataset("grid_rc", data=plan.grid_rc.astype(np.int64))
            for start, tiles in _batches(slide, plan, batch_size, workers, pre):
                with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=cuda):
                    x = tiles.to(dev, non_blocking=True)
                    x = x.contiguous(memory_format=torch.channels_last)
                    out = model(x).float().cpu().numpy()
                if out.shape != (len(tiles), dim) or not np.all(np.isfinite(out)):
                    raise HistattnError(
                        f"encoder {encoder.name!r} gave features of shape {out.shape} "
                        f"(expected {(len(tiles), dim)}) or non-finite values"
                    )
                feats[start : start + len(tiles)] = out
                done = start + len(tiles)
                yield Progress("features", done, n)
                if cancel is not None and cancel.is_set():
                    raise Cancelled("features", done, n)
            h5.attrs.update(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "encoder": json.dumps(description),
                    "slide": json.dumps(slide_identity(slide)),
                    "tissue": json.dumps(asdict(tissue)),
                    "patch_size": int(plan.patch_size),
                    "downsample": float(plan.downsample),
                    "tile_l0": float(plan.tile_l0),
                    "grid_shape": list(plan.grid_shape),
                    "mpp_xy": [] if slide.mpp_xy is None else [float(v) for v in slide.mpp_xy],
                }
            )
            h5.attrs["complete"] = 1
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    # The tiles only: the features were just written, and a 1.5 M-tile slide's from a
    # 1,024-d encoder would be 6 GB read back (feature_chunks reads them in bounded pieces).
    return read_features(target, features=False)
