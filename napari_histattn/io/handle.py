"""The :class:`Slide` handle: validated, thread-safe reads over one backend.

Reads are validated before any backend call: a level that does not exist, a
negative size or an oversized region raise :class:`InvalidRegionError`. Tiles
that a backend cannot decode are served mid-grey, recorded in
:attr:`Slide.failed_tiles` and reported once with :class:`SlideReadWarning`.
Open slides with :func:`napari_histattn.io.slide.open_slide`.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io.backend import (
    BackendFactory,
    _white,
    logger,
)
from napari_histattn.io.levels import (
    COMPUTED_BLOCK,
    DEFAULT_MAX_ARRAY_BYTES,
    ComputedLevels,
    LevelArray,
    plan_computed_levels,
)
from napari_histattn.io.limits import (
    MAX_COORDINATE,
    check_geometry,
    check_mpp_override,
    overview_problem,
    plausible_mpp,
)
from napari_histattn.io.openslide_backend import _OpenSlideBackend

#: Largest region (width x height) one read may ask for.
DEFAULT_MAX_REGION_PIXELS = 16384 * 16384


class SlideReadWarning(UserWarning):
    """Some tiles of a slide could not be decoded and are shown as grey placeholders."""


class InvalidRegionError(SlideError, ValueError):
    """A read asked for a level, size or region that the slide cannot serve.

    Raised before any backend call. It is both a :class:`SlideError` and a
    :class:`ValueError`.
    """

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        Exception.__init__(self, f"Invalid read from slide {str(self.path)!r}: {cause}")


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Slide:
    """An open slide: metadata, region reads and lazy pyramid levels.

    Create with :func:`open_slide`. Read-only and safe to read from several
    threads. Use as a context manager or call :meth:`close`.

    Attributes
    ----------
    path : Path
    backend : str
        ``"openslide"``, ``"tifffile"`` or ``"pillow"``.
    vendor : str or None
        OpenSlide's vendor (``"aperio"``, ``"generic-tiff"``, ``"dicom"``, ...), else
        the backend name.
    format : str
        The vendor for OpenSlide; ``"tiff"``, ``"ome-tiff"``, ``"png"``, ``"jpeg"``, ...
        otherwise.
    mpp_xy : tuple of float or None
        Micrometres per level-0 pixel (x, y); None when unknown.
    mpp_source : str
        ``"openslide"``, ``"tiff-resolution"``, ``"ome"``, ``"svs-description"``
        (Aperio SVS read by tifffile), ``"override"`` or ``"none"``.
    objective_power : float or None
    level_count : int
        Stored plus computed levels.
    level_dimensions : tuple of (int, int)
        ``(width, height)`` per level, level 0 first.
    level_downsamples : tuple of float
        Stored levels as the backend reports them (OpenSlide averages x and y);
        computed level ``j`` above the smallest stored level ``b`` has exactly
        ``level_downsamples[b] * 2**j``.
    level_tile_sizes : tuple of (int, int)
        ``(tile_w, tile_h)`` of the file's tile grid (strip: ``(width, rows)``;
        computed levels: their cache blocks).
    computed_levels : tuple of int
        Indices of the levels computed on demand.
    quickhash : str or None
        OpenSlide's ``openslide.quickhash-1``.
    properties : Mapping[str, str]
    associated_image_names : tuple of str
    metadata_warnings : list of str
        What was wrong with the file's metadata and ignored (a resolution that is a
        print DPI or outside :data:`~napari_histattn.io.limits.MPP_RANGE`).
    failed_tiles : list of (level, lvl_x, lvl_y)
        Tiles that could not be decoded: level and the tile's top-left corner in
        that level's pixels.
    max_region_pixels : int
        Largest ``width * height`` one read may request.
    """

    def __init__(
        self,
        path: Path,
        backend_factory: BackendFactory,
        *,
        mpp_override: tuple[float, float] | None = None,
        max_region_pixels: int = DEFAULT_MAX_REGION_PIXELS,
        max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
        computed_cache_bytes: int = 128 * 2**20,
    ) -> None:
        if mpp_override is not None:
            mx, my = check_mpp_override(mpp_override)
        self.path = path
        self._closed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._warned = False
        self.failed_tiles: list[tuple[int, int, int]] = []
        self.metadata_warnings: list[str] = []
        self._identity = _identity(path)
        self._backend = backend = backend_factory(self)
        try:  # from the header alone, before anything is decoded
            check_geometry(path, backend.level_dimensions, backend.level_tile_sizes)
        except SlideError:
            backend.close()
            raise
        self.max_region_pixels = int(max_region_pixels)
        self.max_array_bytes = int(max_array_bytes)

        self.backend = backend.name
        self.vendor = backend.vendor
        self.format = backend.format
        self.properties: Mapping[str, str] = backend.properties
        self.quickhash = backend.quickhash
        self.objective_power = backend.objective_power
        self.associated_image_names = backend.associated_image_names
        if mpp_override is not None:
            self.mpp_xy: tuple[float, float] | None = (mx, my)
            self.mpp_source = "override"
        else:
            self.mpp_xy, implausible = plausible_mpp(backend.mpp_xy)
            self.mpp_source = backend.mpp_source if self.mpp_xy is not None else "none"
            self.metadata_warnings += [note for note in (backend.mpp_note, implausible) if note]
        self.metadata_warnings += list(backend.metadata_notes)
        for note in self.metadata_warnings:
            logger.warning("%s: %s", path.name, note)

        self._n_stored = len(backend.level_dimensions)
        base = self._n_stored - 1
        #: Why this slide has no overview (its smallest level is too large to compute
        #: one from), or ``None``; :meth:`thumbnail` and the napari layer refuse with it.
        self.overview_problem = overview_problem(path, backend.level_dimensions[base], base + 1)
        if self.overview_problem is not None:
            self.metadata_warnings.append(self.overview_problem)
            logger.warning("%s", self.overview_problem)
        sizes = (
            [] if self.overview_problem else plan_computed_levels(backend.level_dimensions[base])
        )
        self._computed = ComputedLevels(
            self._read_checked,
            base,
            backend.level_dimensions[base],
            sizes,
            cache_bytes=computed_cache_bytes,
        )
        base_ds = backend.level_downsamples[base]
        self.level_dimensions: tuple[tuple[int, int], ...] = backend.level_dimensions + tuple(sizes)
        self.level_downsamples: tuple[float, ...] = backend.level_downsamples + tuple(
            base_ds * 2.0**j for j in range(1, len(sizes) + 1)
        )
        self.level_tile_sizes: tuple[tuple[int, int], ...] = backend.level_tile_sizes + tuple(
            (COMPUTED_BLOCK, COMPUTED_BLOCK) for _ in sizes
        )
        self.level_count = len(self.level_dimensions)
        self.computed_levels: tuple[int, ...] = tuple(range(self._n_stored, self.level_count))
        self._level_arrays: dict[int, LevelArray] = {}

    # -- lifecycle

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release file handles and caches. Reads afterwards raise :class:`SlideError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # OpenSlide must not close a handle while another thread reads from it.
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=60):
                logger.warning("%s: closing while reads are still running", self.path)
        self._computed.clear()
        self._backend.close()

    def _check_unchanged(self) -> None:
        """Refuse to read when the file was replaced or rewritten since it was opened:
        its pixels would be served under the old file's levels, tiles and mpp."""
        try:
            now = _identity(self.path)
        except OSError as exc:
            raise SlideError(self.path, f"the file is gone since it was opened ({exc})") from exc
        if now != self._identity:
            raise SlideError(
                self.path,
                "the file was replaced or modified since it was opened (size, modification "
                "time or inode changed); close it and open it again",
            )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Mark a read in flight so that :meth:`close` waits for it."""
        with self._lock:
            if self._closed:
                raise SlideError(self.path, "the slide is closed")
        self._check_unchanged()
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                if self._closed and self._inflight == 0:
                    self._idle.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        state = " closed" if self._closed else ""
        return (
            f"<Slide {self.path.name!r} {self.backend}/{self.vendor} {w}x{h} "
            f"levels={self.level_count} mpp={self.mpp_xy}{state}>"
        )

    # -- failures

    def tile_failed(self, level: int, lvl_xy: tuple[int, int], exc: BaseException) -> None:
        entry = (int(level), int(lvl_xy[0]), int(lvl_xy[1]))
        with self._lock:
            if entry in self.failed_tiles:
                return
            self.failed_tiles.append(entry)
            first = not self._warned
            self._warned = True
        logger.debug("tile at level %d %s of %s unreadable: %s", level, lvl_xy, self.path, exc)
        if first:
            msg = (
                f"{self.path.name}: a tile at level {level}, {lvl_xy} could not be decoded "
                f"({exc}); unreadable tiles are shown mid-grey and listed in Slide.failed_tiles"
            )
            warnings.warn(msg, SlideReadWarning, stacklevel=4)

    # -- validation

    def _check_level(self, level: Any) -> int:
        if isinstance(level, (bool, np.bool_)):
            raise InvalidRegionError(self.path, f"level must be an integer, got {level!r}")
        try:
            k = operator.index(level)
        except TypeError:
            raise InvalidRegionError(
                self.path, f"level must be an integer, got {level!r}"
            ) from None
        if not 0 <= k < self.level_count:
            raise InvalidRegionError(
                self.path,
                f"level {k} does not exist; the slide has levels 0 to {self.level_count - 1}",
            )
        return k

    def _check_region(
        self, xy: Any, size_wh: Any, what: str
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        try:
            x, y = (operator.index(v) for v in xy)
            w, h = (operator.index(v) for v in size_wh)
        except (TypeError, ValueError):
            raise InvalidRegionError(
                self.path,
                f"{what} and size must be pairs of integers, got {xy!r} and {size_wh!r}",
            ) from None
        if w < 0 or h < 0:
            raise InvalidRegionError(self.path, f"negative region size {w}x{h}")
        if max(abs(x), abs(y)) > MAX_COORDINATE:
            raise InvalidRegionError(
                self.path, f"{what} {(x, y)} is beyond +-{MAX_COORDINATE:,} px (never wrapped)"
            )
        if w * h > self.max_region_pixels:
            raise InvalidRegionError(
                self.path,
                f"region {w}x{h} has {w * h} pixels, more than the limit of "
                f"{self.max_region_pixels} (Slide.max_region_pixels); read it in pieces",
            )
        return (int(x), int(y)), (int(w), int(h))

    # -- reading

    def _read_checked(
        self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]
    ) -> np.ndarray:
        if size_wh[0] == 0 or size_wh[1] == 0:
            return _white(size_wh)
        if level < self._n_stored:
            return self._backend.read(level, lvl_xy, size_wh)
        return self._computed.read(level, lvl_xy, size_wh)

    def read_level_region(
        self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]
    ) -> np.ndarray:
        """Read a region whose origin is in the pixels of ``level``.

        Parameters
        ----------
        level
            Pyramid level (stored or computed).
        lvl_xy
            Top-left corner ``(x, y)`` in that level's pixels; may lie outside.
        size_wh
            ``(width, height)`` of the region.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 3)`` uint8 RGB, writable; pixels outside the slide are white.
            Possibly a non-contiguous view with positive strides (OpenSlide reads
            are not copied once more); ``np.ascontiguousarray`` it if needed.

        Raises
        ------
        InvalidRegionError
            Level out of range, negative or oversized region (before any read).
        """
        k = self._check_level(level)
        xy, wh = self._check_region(lvl_xy, size_wh, "lvl_xy")
        with self._reading():
            return self._read_checked(k, xy, wh)

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        """Read a region like ``OpenSlide.read_region``, as RGB composited onto white.

        Parameters
        ----------
        l0_xy
            Top-left corner ``(x, y)`` in level-0 pixels.
        level
            Pyramid level to read from.
        size_wh
            ``(width, height)`` in that level's pixels.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 3)`` uint8 RGB, as for :meth:`read_level_region`.
        """
        k = self._check_level(level)
        xy, wh = self._check_region(l0_xy, size_wh, "l0_xy")
        with self._reading():
            if wh[0] == 0 or wh[1] == 0:
                return _white(wh)
            if k < self._n_stored and isinstance(self._backend, _OpenSlideBackend):
                return self._backend.read_l0(xy, k, wh)
            ds = self.level_downsamples[k]
            return self._read_checked(k, (round(xy[0] / ds), round(xy[1] / ds)), wh)

    def level_array(self, level: int) -> LevelArray:
        """The lazy ``(h, w, 3)`` uint8 array of one level (for napari)."""
        k = self._check_level(level)
        with self._lock:
            arr = self._level_arrays.get(k)
            if arr is None:
                arr = LevelArray(
                    self.read_level_region,
                    k,
                    self.level_dimensions[k],
                    self.level_downsamples[k],
                    name=self.path.name,
                    max_array_bytes=self.max_array_bytes,
                    computed=k in self.computed_levels,
                )
                self._level_arrays[k] = arr
        return arr

    @property
    def levels(self) -> list[LevelArray]:
        """One :class:`LevelArray` per level, largest first (napari multiscale data)."""
        return [self.level_array(k) for k in range(self.level_count)]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample does not exceed ``downsample``."""
        best = 0
        for k, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-9):
                best = k
        return best

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (``label``, ``macro``, ``thumbnail``, ...) as RGB uint8.

        Raises
        ------
        KeyError
            The slide has no such image (see :attr:`associated_image_names`).
        """
        if name not in self.associated_image_names:
            raise KeyError(
                f"{self.path.name} has no associated image {name!r}; "
                f"it has {list(self.associated_image_names)}"
            )
        with self._reading():
            return self._backend.associated_image(name)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """A downscaled view whose longer side is at most ``max_size``.

        Read whole from the smallest level that is at least ``max_size`` on its
        longer side (or the smallest level when that one would be too large to
        read whole), then resized with a box filter.

        Raises
        ------
        SlideError
            The slide has no level small enough to read whole and is too large to
            compute one from (:attr:`overview_problem` says so and how to fix it).
        """
        from PIL import Image

        if max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        order = sorted(range(self.level_count), key=lambda k: max(self.level_dimensions[k]))
        k = next((k for k in order if max(self.level_dimensions[k]) >= max_size), order[-1])
        w, h = self.level_dimensions[k]
        if w * h > 4096 * 4096:
            k = order[0]
            w, h = self.level_dimensions[k]
        if self.overview_problem is not None and w * h > 4096 * 4096:
            raise SlideError(self.path, self.overview_problem)
        rgb = self.read_level_region(k, (0, 0), (w, h))
        scale = max_size / max(w, h)
        if scale >= 1:
            return rgb
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description of the slide (for napari layer metadata)."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "format": self.format,
            "mpp_xy": None if self.mpp_xy is None else list(self.mpp_xy),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "level_tile_sizes": [list(t) for t in self.level_tile_sizes],
            "computed_levels": list(self.computed_levels),
            "quickhash": self.quickhash,
            "associated_image_names": list(self.associated_image_names),
            "failed_tiles": [list(t) for t in self.failed_tiles],
        }
