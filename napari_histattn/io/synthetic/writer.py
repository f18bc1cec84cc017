"""Write a synthetic scene as a pyramidal JPEG TIFF plus its ground truth.

Memory stays bounded at any slide size: level 0 is rendered one tile row at a
time (optionally in worker processes) and its JPEG tiles stream straight into
tifffile, which runs in a writer thread fed by a bounded queue. Each lower level
is built while level 0 streams: the level-0 row is mean-downsampled by the level
factor in the worker, the main process accumulates one tile row of each lower
level, JPEG-encodes it and appends the bytes to a temporary file. After level 0,
the lower levels are copied from those files into the TIFF as pre-encoded tiles.
The largest buffers are one tile row per level (``tile_size x width / factor``).

Tiles that lie wholly outside the tissue are not rendered: they reuse one cached
encoded glass tile.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.io.synthetic.ground_truth import (
    LABELS,
    label_mask,
    scene_geojson,
)
from napari_histattn.io.synthetic.marker import SYNTHETIC_DESCRIPTION
from napari_histattn.io.synthetic.render import BACKGROUND
from napari_histattn.io.synthetic.scene import Scene
from napari_histattn.io.synthetic.tiles import (
    SyntheticWriteError,
    _init_worker,
    _render_row,
    _render_row_in_worker,
    _RowJob,
)
from napari_histattn.io.tiff_writer import (
    LevelBuilder,
    TiffStreamWriter,
    encode_jpeg,
    level_builders,
)
from napari_histattn.progress import Progress

_CHUNK_TILES = 4  # level-0 tiles rendered per render_region call


@dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and its ground truth.

    Attributes
    ----------
    path
        The pyramidal TIFF.
    geojson_path
        ``<stem>.geojson``: tissue, lesion and look-alike polygons in level-0 (x, y).
    mask_path
        ``<stem>.mask.png``: labels 0 background, 1 tissue, 2 look-alike, 3 lesion.
    meta_path
        ``<stem>.json``: the scene, size, mpp, seed, levels, mask downsample, version.
    scene
        The scene that was rendered.
    level_dimensions
        ``(width, height)`` of each pyramid level.
    mask_downsample
        Level-0 pixels per mask pixel.
    """

    path: Path
    geojson_path: Path
    mask_path: Path
    meta_path: Path
    scene: Scene
    level_dimensions: tuple[tuple[int, int], ...] = field(default=())
    mask_downsample: int = 16

    @classmethod
    def from_meta(cls, meta_path: str | Path) -> SyntheticSlide:
        """Reload the description of a slide written earlier from its ``<stem>.json``."""
        meta_path = Path(meta_path)
        meta = json.loads(meta_path.read_text())
        folder = meta_path.parent
        return cls(
            path=folder / meta["files"]["slide"],
            geojson_path=folder / meta["files"]["geojson"],
            mask_path=folder / meta["files"]["mask"],
            meta_path=meta_path,
            scene=Scene.from_dict(meta["scene"]),
            level_dimensions=tuple(tuple(d) for d in meta["level_dimensions"]),  # type: ignore[misc]
            mask_downsample=int(meta["mask_downsample"]),
        )


def sidecar_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """``(<stem>.geojson, <stem>.mask.png, <stem>.json)`` beside a slide path."""
    path = Path(path)
    stem = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return (
        path.with_name(stem + ".geojson"),
        path.with_name(stem + ".mask.png"),
        path.with_name(stem + ".json"),
    )


def level_dimensions(
    width: int, height: int, levels: int | None, factor: int
) -> list[tuple[int, int]]:
    """Pyramid sizes: each level ``ceil(previous / factor)``; by default down to <= 1024 px."""
    dims = [(int(width), int(height))]
    while (levels is None and max(dims[-1]) > 1024) or (levels is not None and len(dims) < levels):
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / factor)), max(1, math.ceil(h / factor))))
    return dims


def default_mask_downsample(width: int, height: int) -> int:
    """Smallest power of two (>= 4) that keeps the mask within 4096 px."""
    return max(4, 2 ** math.ceil(math.log2(max(1.0, max(width, height) / 4096))))


def write_synthetic_slide(
    path: str | Path,
    scene: Scene,
    *,
    tile_size: int = 256,
    jpeg_quality: int = 85,
    levels: int | None = None,
    level_factor: int = 4,
    workers: int = 1,
    mask_downsample: int | None = None,
) -> Generator[Progress, None, SyntheticSlide]:
    """Write a scene as a JPEG-compressed tiled pyramidal TIFF plus ground truth.

    A generator: it yields :class:`~napari_histattn.progress.Progress` once per
    level-0 tile row (stage ``"tiles"``), then per lower level (``"pyramid"``),
    and returns a :class:`SyntheticSlide`. Drain it with
    :func:`~napari_histattn.progress.run_to_completion`.

    The TIFF holds each level as a top-level IFD (the first full size, the
    others reduced-resolution), 4:2:0 YCbCr JPEG tiles, and X/YResolution in
    pixels per centimetre, from which OpenSlide (vendor ``generic-tiff``)
    reports ``openslide.mpp-x`` / ``mpp-y``. Files are written under temporary
    names and renamed when complete, the JSON last.

    Parameters
    ----------
    path
        Output ``.tiff`` path; ``<stem>.geojson``, ``<stem>.mask.png`` and
        ``<stem>.json`` are written beside it.
    scene
        The layout (:func:`~napari_histattn.io.synthetic.make_scene`).
    tile_size
        Tile edge in pixels, a multiple of 16.
    jpeg_quality
        JPEG quality, 1 to 100.
    levels
        Number of pyramid levels; default: until the smallest is <= 1024 px.
    level_factor
        Downsample between consecutive levels (2 or 4).
    workers
        Processes that render level-0 tile rows (1: render in this process).
    mask_downsample
        Level-0 pixels per pixel of the label mask; default from the size.
    """
    path = Path(path)
    if tile_size < 16 or tile_size % 16:
        raise SyntheticWriteError(
            path, f"tile_size must be a positive multiple of 16, got {tile_size}"
        )
    if tile_size % level_factor or level_factor not in (2, 4):
        raise SyntheticWriteError(path, f"level_factor must be 2 or 4, got {level_factor}")
    if not 1 <= jpeg_quality <= 100:
        raise SyntheticWriteError(path, f"jpeg_quality must be within 1..100, got {jpeg_quality}")
    if levels is not None and levels < 1:
        raise SyntheticWriteError(path, f"levels must be >= 1, got {levels}")
    if workers < 1:
        raise SyntheticWriteError(path, f"workers must be >= 1, got {workers}")
    if not path.parent.is_dir():
        raise SyntheticWriteError(path, f"folder {str(path.parent)!r} does not exist")
    dims = level_dimensions(scene.width, scene.height, levels, level_factor)
    mask_ds = mask_downsample or default_mask_downsample(scene.width, scene.height)
    geojson_path, mask_path, meta_path = sidecar_paths(path)

    t = tile_size
    n_rows = math.ceil(scene.height / t)
    n_cols = math.ceil(scene.width / t)
    glass = encode_jpeg(np.full((t, t, 3), BACKGROUND, np.uint8), jpeg_quality)
    tmp_tiff = path.with_name(f".{path.name}.{os.getpid()}.partial")
    builders: list[LevelBuilder] = []
    writer: TiffStreamWriter | None = None
    pool: Any = None
    ok = False
    try:
        builders = level_builders(
            dims,
            t,
            level_factor,
            partial(encode_jpeg, quality=jpeg_quality),
            path.parent,
            BACKGROUND,
        )
        desc = (
            f"{SYNTHETIC_DESCRIPTION}|seed={scene.seed}|mpp={scene.mpp}"
            f"|lesions={len(scene.lesions)}|lookalikes={len(scene.lookalikes)}"
        )
        writer = TiffStreamWriter(
            tmp_tiff, dims, t, mpp_xy=(scene.mpp, scene.mpp), description=desc
        )
        job = _RowJob(scene, t, level_factor, jpeg_quality, n_cols)
        if workers > 1:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(
                workers,
                initializer=_init_worker,
                initargs=(scene.to_dict(), t, level_factor, jpeg_quality, n_cols),
            )
            results: Iterator[tuple[list[bytes | None], np.ndarray]] = pool.imap(
                _render_row_in_worker, range(n_rows)
            )
        else:
            results = (_render_row(job, r) for r in range(n_rows))
        for row, (tiles, down) in enumerate(results):
            for data in tiles:
                writer.put(glass if data is None else data)
            if builders:
                builders[0].feed(down)
            yield Progress("tiles", row + 1, n_rows, f"level 0 row {row + 1}/{n_rows}")
        if pool is not None:
            pool.close()
        if builders:
            builders[0].finish()
        for k, b in enumerate(builders, start=1):
            for data in b.tiles():
                writer.put(data)
            yield Progress("pyramid", k, len(builders), f"level {k}")
        writer.join()
        os.replace(tmp_tiff, path)

        geojson_tmp = geojson_path.with_name(f".{geojson_path.name}.partial")
        geojson_tmp.write_text(json.dumps(scene_geojson(scene)))
        os.replace(geojson_tmp, geojson_path)
        _write_mask(mask_path, label_mask(scene, mask_ds))
        meta = _metadata(path, scene, dims, level_factor, t, jpeg_quality, mask_ds)
        meta_tmp = meta_path.with_name(f".{meta_path.name}.partial")
        meta_tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(meta_tmp, meta_path)
        ok = True
        yield Progress("ground truth", 1, 1, "GeoJSON, mask, metadata")
    except OSError as err:
        raise SyntheticWriteError(path, str(err)) from err
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if writer is not None and not ok:
            writer.abort()
        for b in builders:
            b.close()
        if not ok:
            tmp_tiff.unlink(missing_ok=True)
    return SyntheticSlide(
        path=path,
        geojson_path=geojson_path,
        mask_path=mask_path,
        meta_path=meta_path,
        scene=scene,
        level_dimensions=tuple(dims),
        mask_downsample=mask_ds,
    )


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.partial")
    Image.fromarray(mask, mode="L").save(tmp, format="PNG", optimize=False)
    os.replace(tmp, path)


def _metadata(
    path: Path,
    scene: Scene,
    dims: list[tuple[int, int]],
    factor: int,
    tile: int,
    quality: int,
    mask_ds: int,
) -> dict[str, Any]:
    from napari_histattn import __version__

    geojson_path, mask_path, _ = sidecar_paths(path)
    return {
        "generator": "napari_histattn.io.synthetic",
        "version": __version__,
        "scene": scene.to_dict(),
        "size_wh": [scene.width, scene.height],
        "mpp": scene.mpp,
        "seed": scene.seed,
        "diffuse": scene.diffuse,
        "levels": len(dims),
        "level_dimensions": [list(d) for d in dims],
        "level_factor": factor,
        "tile_size": tile,
        "jpeg_quality": quality,
        "mask_downsample": mask_ds,
        "mask_labels": {str(k): v for k, v in LABELS.items()},
        "files": {"slide": path.name, "geojson": geojson_path.name, "mask": mask_path.name},
    }
