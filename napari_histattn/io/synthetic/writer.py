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

import contextlib
import json
import math
import os
import queue
import tempfile
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.errors import HistattnError
from napari_histattn.io.synthetic.render import BACKGROUND, _tissue_state, render_region
from napari_histattn.io.synthetic.scene import Scene
from napari_histattn.progress import Progress

LABELS = {0: "background", 1: "tissue", 2: "lookalike", 3: "lesion"}
CLASS_COLORS = {"tissue": [80, 160, 80], "lookalike": [40, 110, 230], "lesion": [220, 30, 30]}
_CHUNK_TILES = 4  # level-0 tiles rendered per render_region call


class SyntheticWriteError(HistattnError):
    """A synthetic slide could not be written (bad writer options or an I/O failure)."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot write synthetic slide {str(self.path)!r}: {cause}")


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


# ----------------------------------------------------------------------------- masks


def label_mask(scene: Scene, downsample: float) -> np.ndarray:
    """Label mask at ``1 / downsample``: 0 glass, 1 tissue, 2 look-alike, 3 lesion.

    Pixel ``(i, j)`` takes the label of the level-0 point at its centre,
    ``((j + 0.5) * downsample, (i + 0.5) * downsample)``, tested against the
    same polygons as the GeoJSON. Shape ``(ceil(height / d), ceil(width / d))``.
    """
    d = float(downsample)
    if not d > 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    h, w = math.ceil(scene.height / d), math.ceil(scene.width / d)
    out = np.zeros((h, w), np.uint8)
    xs = (np.arange(w) + 0.5) * d
    band = max(1, 262_144 // max(w, 1))  # rows per batch: bounds the temporaries
    for r0 in range(0, h, band):
        ys = (np.arange(r0, min(h, r0 + band)) + 0.5) * d
        out[r0 : r0 + ys.size][scene.tissue.rho(xs[None, :], ys[:, None]) < 1.0] = 1
    for kind, label in (("lookalike", 2), ("lesion", 3)):
        for region in scene.regions:
            if region.kind != kind:
                continue
            x0, y0, x1, y1 = region.bbox_l0
            j0, j1 = max(0, int(x0 / d) - 1), min(w, int(x1 / d) + 2)
            i0, i1 = max(0, int(y0 / d) - 1), min(h, int(y1 / d) + 2)
            if j1 <= j0 or i1 <= i0:
                continue
            inside = region.rho(xs[None, j0:j1], ((np.arange(i0, i1) + 0.5) * d)[:, None]) < 1.0
            out[i0:i1, j0:j1][inside] = label
    return out


def lesion_mask(scene: Scene, downsample: float) -> np.ndarray:
    """Boolean lesion mask at ``1 / downsample`` (see :func:`label_mask`)."""
    return label_mask(scene, downsample) == 3


def scene_geojson(scene: Scene) -> dict[str, Any]:
    """Ground truth as a GeoJSON FeatureCollection (level-0 pixels, QuPath conventions)."""
    features = []
    counts: dict[str, int] = {}
    for region in (scene.tissue, *scene.regions):
        counts[region.kind] = counts.get(region.kind, 0) + 1
        ring = np.round(region.polygon_xy(), 2).tolist()
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"{region.kind} {counts[region.kind]}",
                    "classification": {"name": region.kind, "color": CLASS_COLORS[region.kind]},
                    "isLocked": True,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


# ----------------------------------------------------------------------------- tiles


def _encode(tile: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    # The same JPEG flavour tifffile writes: YCbCr 4:2:0 (PhotometricInterpretation YCbCr).
    return bytes(
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(tile),
            level=quality,
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling=(2, 2),
        )
    )


def _downsample(block: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (shape divisible by factor), rounded to uint8."""
    h, w, _ = block.shape
    s = block.reshape(h // factor, factor, w // factor, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = factor * factor
    return ((s + n // 2) // n).astype(np.uint8)


@dataclass(frozen=True)
class _RowJob:
    scene: Scene
    tile: int
    factor: int
    quality: int
    n_cols: int


_JOB: _RowJob | None = None


def _init_worker(
    scene_dict: dict[str, Any], tile: int, factor: int, quality: int, n_cols: int
) -> None:
    global _JOB
    _JOB = _RowJob(Scene.from_dict(scene_dict), tile, factor, quality, n_cols)


def _render_row_in_worker(row: int) -> tuple[list[bytes | None], np.ndarray]:
    assert _JOB is not None
    return _render_row(_JOB, row)


def _render_row(job: _RowJob, row: int) -> tuple[list[bytes | None], np.ndarray]:
    """Encoded tiles of one level-0 tile row (``None`` for glass) and the row downsampled."""
    t, f = job.tile, job.factor
    y0 = row * t
    tiles: list[bytes | None] = []
    down = np.full((t // f, job.n_cols * t // f, 3), BACKGROUND, np.uint8)
    for c0 in range(0, job.n_cols, _CHUNK_TILES):
        c1 = min(job.n_cols, c0 + _CHUNK_TILES)
        x0, x1 = c0 * t, c1 * t
        if _tissue_state(job.scene, x0, y0, x1, y0 + t) == "outside":
            tiles.extend([None] * (c1 - c0))
            continue
        block = render_region(job.scene, (x0, y0), (x1 - x0, t))
        for c in range(c0, c1):
            tile = block[:, (c - c0) * t : (c - c0 + 1) * t]
            glass = _tissue_state(job.scene, c * t, y0, (c + 1) * t, y0 + t) == "outside"
            tiles.append(None if glass else _encode(tile, job.quality))
        down[:, x0 // f : x1 // f] = _downsample(block, f)
    return tiles, down


class _LevelBuilder:
    """Accumulates one tile row of a lower level, encodes it to a temp file, feeds the next."""

    def __init__(
        self,
        dims: tuple[int, int],
        tile: int,
        factor: int,
        quality: int,
        folder: Path,
        glass: bytes,
    ) -> None:
        self.width, self.height = dims
        self.tile, self.factor, self.quality, self.glass = tile, factor, quality, glass
        self.n_cols = math.ceil(self.width / tile)
        self.n_rows = math.ceil(self.height / tile)
        self.band = np.full((tile, self.n_cols * tile, 3), BACKGROUND, np.uint8)
        self.filled = 0
        self.rows_done = 0
        self.sizes: list[int] = []
        fd, name = tempfile.mkstemp(prefix="level-", suffix=".jpegs", dir=folder)
        self.file = os.fdopen(fd, "w+b")
        self.file_path = Path(name)
        self.next: _LevelBuilder | None = None

    def feed(self, rows: np.ndarray) -> None:
        while rows.shape[0] and self.rows_done < self.n_rows:
            take = min(self.tile - self.filled, rows.shape[0])
            w = min(rows.shape[1], self.band.shape[1])
            self.band[self.filled : self.filled + take, :w] = rows[:take, :w]
            self.filled += take
            rows = rows[take:]
            if self.filled == self.tile:
                self._flush_band()

    def finish(self) -> None:
        if self.filled and self.rows_done < self.n_rows:
            self._flush_band()
        # Rows that never received data (rounding at the bottom edge) are glass.
        while self.rows_done < self.n_rows:
            self._flush_band()
        if self.next is not None:
            self.next.finish()

    def _flush_band(self) -> None:
        t = self.tile
        if self.filled < t:
            self.band[self.filled :] = BACKGROUND
        for c in range(self.n_cols):
            tile = self.band[:, c * t : (c + 1) * t]
            if tile.min() == BACKGROUND and tile.max() == BACKGROUND:
                data = self.glass
            else:
                data = _encode(tile, self.quality)
            self.file.write(data)
            self.sizes.append(len(data))
        if self.next is not None:
            self.next.feed(_downsample(self.band, self.factor))
        self.band[:] = BACKGROUND
        self.filled = 0
        self.rows_done += 1

    def tiles(self) -> Iterator[bytes]:
        self.file.flush()
        self.file.seek(0)
        for size in self.sizes:
            yield self.file.read(size)

    def close(self) -> None:
        self.file.close()
        self.file_path.unlink(missing_ok=True)


class _Abort(Exception):
    pass


_STOP = object()


class _TiffThread:
    """Runs tifffile in a thread; tiles arrive through a bounded queue in file order."""

    def __init__(
        self, path: Path, dims: list[tuple[int, int]], tile: int, scene: Scene, quality: int
    ) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=512)
        self.error: BaseException | None = None
        self.path, self.dims, self.tile, self.scene, self.quality = path, dims, tile, scene, quality
        self.thread = threading.Thread(target=self._run, name="histattn-synth-tiff", daemon=True)
        self.thread.start()

    def _tiles(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            item = self.queue.get()
            if item is _STOP:
                raise _Abort
            yield item

    def _run(self) -> None:
        import tifffile

        try:
            w0, h0 = self.dims[0]
            bigtiff = w0 * h0 > 2**31
            desc = (
                f"napari-histattn synthetic H&E slide|seed={self.scene.seed}|mpp={self.scene.mpp}"
                f"|lesions={len(self.scene.lesions)}|lookalikes={len(self.scene.lookalikes)}"
            )
            with tifffile.TiffWriter(self.path, bigtiff=bigtiff) as tw:
                for level, (w, h) in enumerate(self.dims):
                    n = math.ceil(w / self.tile) * math.ceil(h / self.tile)
                    mpp = self.scene.mpp * (w0 / w)
                    tw.write(
                        self._tiles(n),
                        shape=(h, w, 3),
                        dtype=np.uint8,
                        photometric="rgb",
                        subsampling=(2, 2),
                        tile=(self.tile, self.tile),
                        compression="jpeg",
                        compressionargs={"level": self.quality},
                        resolution=(1e4 / mpp, 1e4 / (self.scene.mpp * (h0 / h))),
                        resolutionunit="CENTIMETER",
                        subfiletype=0 if level == 0 else 1,
                        description=desc if level == 0 else None,
                        metadata=None,
                        software="napari-histattn",
                    )
        except BaseException as err:  # handed to the main thread, which re-raises
            self.error = err

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self.thread.is_alive():
                    raise SyntheticWriteError(self.path, "the TIFF writer stopped") from self.error

    def abort(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self.queue.get_nowait()
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(_STOP)
            self.thread.join(timeout=30)

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


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
    glass = _encode(np.full((t, t, 3), BACKGROUND, np.uint8), jpeg_quality)
    tmp_tiff = path.with_name(f".{path.name}.{os.getpid()}.partial")
    builders: list[_LevelBuilder] = []
    writer: _TiffThread | None = None
    pool: Any = None
    ok = False
    try:
        for d in dims[1:]:
            builders.append(_LevelBuilder(d, t, level_factor, jpeg_quality, path.parent, glass))
        for a, b in zip(builders, builders[1:], strict=False):
            a.next = b
        writer = _TiffThread(tmp_tiff, dims, t, scene, jpeg_quality)
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
