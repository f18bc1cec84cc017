"""One-call generation of synthetic slides, and the cached demo slide for napari's sample data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from napari_histattn.io.synthetic.scene import RENDER_VERSION, Scene, make_scene
from napari_histattn.io.synthetic.writer import SyntheticSlide, write_synthetic_slide
from napari_histattn.progress import Progress, ProgressGen, run_to_completion

SAMPLE_SIZE_WH = (12000, 9000)


def generate_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    seed: int = 0,
    n_lesions: int = 2,
    lesion_radius_px: float | None = None,
    n_lookalikes: int = 2,
    lookalike_radius_px: float | None = None,
    diffuse: str | None = None,
    tissue_fraction: float = 0.6,
    mpp: float = 0.5,
    tile_size: int = 256,
    jpeg_quality: int = 85,
    levels: int | None = None,
    workers: int = 1,
    callback: Callable[[Progress], None] | None = None,
) -> SyntheticSlide:
    """Lay out a scene (:func:`make_scene`) and write it (:func:`write_synthetic_slide`).

    Parameters are those of the two functions; ``callback`` receives each progress report.
    """
    scene = make_scene(
        width,
        height,
        n_lesions=n_lesions,
        lesion_radius_px=lesion_radius_px,
        n_lookalikes=n_lookalikes,
        lookalike_radius_px=lookalike_radius_px,
        diffuse=diffuse,
        tissue_fraction=tissue_fraction,
        mpp=mpp,
        seed=seed,
    )
    gen = write_synthetic_slide(
        path, scene, tile_size=tile_size, jpeg_quality=jpeg_quality, levels=levels, workers=workers
    )
    return run_to_completion(gen, callback)


def default_cache_dir() -> Path:
    """``$HISTATTN_CACHE``, else the platform's user cache folder for napari-histattn."""
    env = os.environ.get("HISTATTN_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-histattn"))


def synthetic_sample_slide(
    cache_dir: str | Path | None = None,
    *,
    width: int = SAMPLE_SIZE_WH[0],
    height: int = SAMPLE_SIZE_WH[1],
    seed: int = 0,
    n_lesions: int = 2,
    n_lookalikes: int = 2,
    lesion_radius_px: float | None = None,
    mpp: float = 0.5,
    workers: int | None = None,
    callback: Callable[[Progress], None] | None = None,
) -> SyntheticSlide:
    """The demo slide: generated on first use (about 20 s on a busy 2-core machine), then cached.

    The cache entry is a folder named by a hash of the parameters, the package
    version and the renderer version. It is written under a temporary name and
    renamed when complete, so an interrupted run never leaves a half-written
    entry that a later call would use.

    Parameters
    ----------
    cache_dir
        Folder of cache entries; default :func:`default_cache_dir`.
    width, height, seed, n_lesions, n_lookalikes, lesion_radius_px, mpp
        The slide (defaults: 12000 x 9000 px at 0.5 um/px, 2 lesions and 2 look-alikes
        of 200 um radius).
    workers
        Rendering processes; default: the number of CPUs, at most 4.
    callback
        Receives progress reports while generating.
    """
    params = SampleParams(width, height, seed, n_lesions, n_lookalikes, lesion_radius_px, mpp)
    return run_to_completion(iter_sample_slide(params, cache_dir, workers=workers), callback)


@dataclass(frozen=True)
class SampleParams:
    """What makes a sample slide (the cache key, with the package and renderer versions)."""

    width: int = SAMPLE_SIZE_WH[0]
    height: int = SAMPLE_SIZE_WH[1]
    seed: int = 0
    n_lesions: int = 2
    n_lookalikes: int = 2
    lesion_radius_px: float | None = None
    mpp: float = 0.5

    def scene(self) -> Scene:
        """The slide's layout (outlines, no pixels): a fraction of a second."""
        return make_scene(
            self.width,
            self.height,
            n_lesions=self.n_lesions,
            lesion_radius_px=self.lesion_radius_px,
            n_lookalikes=self.n_lookalikes,
            mpp=self.mpp,
            seed=self.seed,
        )

    def entry(self, cache_dir: str | Path | None = None) -> Path:
        """The cache folder these parameters' slide lives in (complete or not)."""
        from napari_histattn import __version__

        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key_params = {
            "width": int(self.width),
            "height": int(self.height),
            "seed": int(self.seed),
            "n_lesions": int(self.n_lesions),
            "n_lookalikes": int(self.n_lookalikes),
            "lesion_radius_px": (
                None if self.lesion_radius_px is None else float(self.lesion_radius_px)
            ),
            "mpp": float(self.mpp),
            "version": __version__,
            "render_version": RENDER_VERSION,
        }
        key = hashlib.sha256(json.dumps(key_params, sort_keys=True).encode()).hexdigest()[:16]
        return folder / f"synthetic-{key}"


def cached_sample_slide(
    params: SampleParams | None = None, cache_dir: str | Path | None = None
) -> SyntheticSlide | None:
    """The sample slide if a complete cache entry holds it, else ``None`` (nothing generated)."""
    meta = (params or SampleParams()).entry(cache_dir) / "synthetic-sample.json"
    if not meta.is_file():
        return None
    try:
        slide = SyntheticSlide.from_meta(meta)
    except (OSError, ValueError, KeyError):
        return None
    if all(p.is_file() for p in (slide.path, slide.geojson_path, slide.mask_path)):
        return slide
    return None


def iter_sample_slide(
    params: SampleParams | None = None,
    cache_dir: str | Path | None = None,
    *,
    workers: int | None = None,
) -> ProgressGen[SyntheticSlide]:
    """:func:`synthetic_sample_slide` as a generator of progress (for a worker thread)."""
    params = params or SampleParams()
    cached = cached_sample_slide(params, cache_dir)
    if cached is not None:
        return cached
    entry = params.entry(cache_dir)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        if workers is None:
            workers = max(1, min(4, os.cpu_count() or 1))
        yield from write_synthetic_slide(
            tmp / "synthetic-sample.tiff", params.scene(), workers=workers
        )
        if entry.exists():
            # A stale or broken entry (or a concurrent run finished first): replace it.
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "synthetic-sample.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticSlide.from_meta(entry / "synthetic-sample.json")
