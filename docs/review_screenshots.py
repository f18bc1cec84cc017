"""Screenshots of reviewing in the viewer, for the README (docs/images/review*.png).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/review_screenshots.py

1. ``review.png``: the sample slide after Classify with the demo A-MIL, region 1 accepted,
   region 2 rejected, a lesion the reviewer outlined, the camera on region 1.
2. ``review_compare.png``: the same slide with HATNet's result in front of A-MIL's (``/``
   flips between them), drawn on the 1-99 percentile contrast.
3. ``review_domain.png``: the synthetic-trained demo on CMU-1-Small-Region (skin), which
   the panel flags as outside the model's training domain.
4. ``review_finetune.png``: the demo A-MIL fine-tuned on the reviewer's outlines of the
   sample's lesions and look-alikes ("Fine-tune on my corrections"), its result in front
   of the original's, before and after under the button.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
DEMO = ROOT / "sample_data"
CMU = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def _settle(app: Any, seconds: float = 2.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.05)


def _viewer(slide: Path, checkpoint: Path) -> tuple[Any, Any, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(slide), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget("napari-histattn", "Classify with attention")
    widget.add_checkpoint(checkpoint)
    widget.device.value = "cpu"
    return viewer, widget, QApplication.instance()


def _classify(widget: Any, app: Any) -> None:
    widget.run_classify()
    while not widget.is_idle:
        app.processEvents()
        time.sleep(0.02)


def _save(viewer: Any, app: Any, name: str) -> None:
    _settle(app)
    viewer.screenshot(str(IMAGES / name), canvas_only=False)
    print("saved", IMAGES / name)


def main() -> int:
    import numpy as np

    from napari_histattn.io.synthetic import synthetic_sample_slide

    sample = synthetic_sample_slide()
    viewer, widget, app = _viewer(sample.path, DEMO / "demo_amil.safetensors")
    from napari_histattn._napari.layers import _units_kwargs, ground_truth_shapes_layer

    data, kwargs, _ = ground_truth_shapes_layer(sample.geojson_path, (0.5, 0.5))
    viewer.add_shapes(data, **kwargs)  # the ground truth, as File > Open Sample shows it
    widget.layer.value = viewer.layers[0]
    widget.threshold.value = 0.3
    _classify(widget, app)
    panel = widget.review
    panel.reviewer.value = "JD"
    panel.select(1)
    panel.decide("rejected")
    panel.select(0)
    panel.decide("accepted")
    top = widget.regions_for()[0].polygon.bounds
    x0, y0, x1, y1 = (v * 0.5 for v in top)  # the sample's 0.5 um/px
    drawn = viewer.add_shapes(name="my outline", **_units_kwargs(True))
    drawn.add(  # around the accepted region, as a reviewer would mark it
        [
            np.array(
                [[y0 - 15, x0 - 15], [y0 - 15, x1 + 15], [y1 + 15, x1 + 15], [y1 + 15, x0 - 15]]
            )
        ],
        shape_type="ellipse",
        edge_width=4,
        edge_color="magenta",
        face_color="transparent",
    )
    widget.layer.value = viewer.layers[0]
    panel.select(0)
    viewer.layers.selection.active = viewer.layers[0]
    _save(viewer, app, "review.png")

    widget.add_checkpoint(DEMO / "demo_hatnet.safetensors")
    _classify(widget, app)
    widget.heatmap_display.contrast.value = "1-99 percentile"
    viewer.reset_view()
    _save(viewer, app, "review_compare.png")
    viewer.close()

    _fine_tune(sample)
    if CMU.is_file():
        viewer, widget, app = _viewer(CMU, DEMO / "demo_amil.safetensors")
        _classify(widget, app)
        _save(viewer, app, "review_domain.png")
        viewer.close()
    return 0


def _fine_tune(sample: Any) -> None:
    """Outline the sample's lesions (lesion) and look-alikes (benign), fine-tune, show both."""
    import numpy as np

    from napari_histattn._napari.layers import _units_kwargs
    from napari_histattn.io.export.geojson import read_geojson_regions

    viewer, widget, app = _viewer(sample.path, DEMO / "demo_amil.safetensors")
    widget.threshold.value = 0.3
    _classify(widget, app)
    widget.review.reviewer.value = "JD"
    truth = read_geojson_regions(sample.geojson_path)
    # a new Shapes layer takes the slide's frame, and class lesion for its shapes
    drawn = viewer.add_shapes(name="my outlines", **_units_kwargs(True))
    world = [np.asarray(r.polygon.exterior.coords)[:-1, ::-1] * 0.5 for r in truth]
    drawn.add(world, shape_type="polygon", edge_width=25, face_color="transparent")
    features = drawn.features.copy()
    features["class"] = ["lesion" if r.class_name == "lesion" else "benign" for r in truth]
    drawn.features = features
    drawn.edge_color = ["magenta" if c == "lesion" else "cyan" for c in features["class"]]
    widget.layer.value = viewer.layers[0]
    widget.fine_tune.start()
    while widget.fine_tune.running or not widget.is_idle or len(widget.results_on()) < 2:
        app.processEvents()
        time.sleep(0.02)
    viewer.layers.selection.active = viewer.layers[0]
    viewer.reset_view()
    bar = getattr(widget.native, "verticalScrollBar", None)  # the dock scrolls: show the end
    if bar is not None:
        bar().setValue(bar().maximum())
    _save(viewer, app, "review_finetune.png")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
