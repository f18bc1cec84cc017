"""``histattn demo``: napari with the sample slide, its lesion outlines and the classify widget.

Without ``--slide`` the synthetic sample slide is generated on first use and
cached. The "Classify with attention" widget is docked with a demo checkpoint
from ``sample_data/`` (or ``$HISTATTN_CHECKPOINTS``, or ``--checkpoint``)
selected: click Classify. ``--classify`` clicks it for you and waits for the
overlay. ``--screenshot PATH`` shows the viewer, waits until the canvas has
drawn, saves a PNG and exits; ``--classify --screenshot PATH`` is the headless
run that shows the attention overlay over the whole slide, and
``--zoom-to-top`` zooms onto the most attended region. On a machine without a display run it
under ``xvfb-run -a`` (``scripts/demo.sh`` does this for you).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command
from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress

_WINDOW_WH = (1280, 860)
_WINDOW_WITH_WIDGET_WH = (1560, 900)


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = add_command(
        subparsers,
        "demo",
        "open napari with the synthetic sample slide and its lesion outlines",
        __doc__,
    )
    parser.add_argument(
        "--slide",
        type=Path,
        metavar="PATH",
        help="open this slide instead of the synthetic sample (no ground-truth overlay)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="select this checkpoint in the classify widget instead of the bundled demo one",
    )
    parser.add_argument(
        "--classify",
        action="store_true",
        help="run Classify on the slide at start (with --screenshot: wait for the overlay "
        "and capture it)",
    )
    parser.add_argument(
        "--zoom-to-top",
        action="store_true",
        help="with --classify: zoom onto the most attended region (default: the whole slide)",
    )
    parser.add_argument(
        "--no-widget",
        action="store_true",
        help="do not dock the classify widget",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PATH",
        help="save a PNG of the viewer to PATH and exit (works under xvfb-run)",
    )
    parser.add_argument(
        "--canvas-only",
        action="store_true",
        help="with --screenshot: capture only the image canvas, not the whole window",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --screenshot: how long to let napari load tiles and draw (default 2)",
    )
    parser.set_defaults(func=run)


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def demo_layers(slide_path: Path | None = None) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuples the demo shows: a slide, plus ground truth for the sample.

    Parameters
    ----------
    slide_path
        A slide to open; the synthetic sample slide (generated and cached on
        first use) when ``None``.
    """
    from napari_histattn._napari.layers import ground_truth_shapes_layer, slide_layer_data
    from napari_histattn.io.slide import open_slide

    if slide_path is not None:
        return [slide_layer_data(open_slide(slide_path))]

    from napari_histattn.io.synthetic import synthetic_sample_slide

    print("histattn demo: preparing the synthetic sample slide (cached after the first run)")
    with _ProgressBars() as bars:
        sample = synthetic_sample_slide(callback=bars)
    slide = open_slide(sample.path)
    return [
        slide_layer_data(slide, name="synthetic slide"),
        ground_truth_shapes_layer(sample.geojson_path, slide.mpp_xy, name="ground truth"),
    ]


class _ProgressBars:
    """A progress callback that draws one tqdm bar per stage (first-run generation)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage: str | None = None

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, report: Progress) -> None:
        from tqdm.auto import tqdm

        if report.stage != self._stage:
            if self._bar is not None:
                self._bar.close()
            self._stage = report.stage
            self._bar = tqdm(total=report.total, desc=report.stage, leave=False)
        if report.total is not None and self._bar.total != report.total:
            self._bar.total = report.total
        self._bar.n = report.done
        self._bar.refresh()


def _settle(seconds: float) -> None:
    """Run Qt's event loop for a while so napari loads tiles and draws the canvas."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + max(seconds, 0.0)
    while True:
        if app is not None:
            app.processEvents()
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)


def _dock_classify_widget(viewer: Any, checkpoint: Path | None) -> Any:
    """Dock the classify widget (through the manifest) with a checkpoint selected."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-histattn", "Classify with attention")
    if checkpoint is not None and not widget.add_checkpoint(checkpoint):
        raise HistattnError(f"cannot use checkpoint {str(checkpoint)!r} (see the message above)")
    return widget


def _classify_and_wait(widget: Any, timeout_s: float = 600.0) -> None:
    """Click Classify and run Qt's event loop until the run ends; raise if it showed nothing."""
    from qtpy.QtWidgets import QApplication

    from napari_histattn._napari.checkpoints import checkpoint_dirs

    if not widget.model.value:
        places = ", ".join(str(p) for p in checkpoint_dirs())
        raise HistattnError(
            f"no demo checkpoint found (looked in {places}): pass --checkpoint PATH, or run "
            "sample_data/make_demo_checkpoints.py"
        )
    print(f"histattn demo: classifying with {Path(widget.model.value).name}")
    widget.run_classify()
    app = QApplication.instance()
    deadline = time.monotonic() + timeout_s
    while not widget.is_idle:
        if app is not None:
            app.processEvents()
        if time.monotonic() > deadline:
            widget.cancel()
            raise HistattnError(f"Classify did not finish within {timeout_s:g} s")
        time.sleep(0.02)
    if widget.result_for() is None:
        raise HistattnError(f"Classify failed: {widget.status.value}")
    result = widget.result_for()
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities_by_class.items())
    print(f"histattn demo: predicted {result.predicted_class} ({probs})")


def _zoom_to_top_region(viewer: Any, widget: Any, fill: float = 0.45) -> None:
    """Centre the view on the most attended region, zoomed so that it fills ``fill`` of it.

    Called right after ``reset_view`` (which fits the whole slide), so the zoom is
    scaled by the ratio of the slide's extent to the region's. Outlines (world
    units, sized for the whole slide) are thinned to a few screen pixels, so that
    the attention under them stays visible.
    """
    import numpy as np

    regions = widget.result_layers().get("regions")
    if regions is None or regions.nshapes == 0:
        return
    ranks = np.asarray(regions.features["rank"])
    top = [np.asarray(regions.data[i])[:, -2:] for i in np.flatnonzero(ranks == ranks.min())]
    translate = np.asarray(regions.translate)[-2:]
    lo = np.min([t.min(axis=0) for t in top], axis=0) + translate
    hi = np.max([t.max(axis=0) for t in top], axis=0) + translate
    slide_lo, slide_hi = (np.asarray(v)[-2:] for v in widget.layer.value.extent.world)
    span = np.maximum(hi - lo, 1e-9)
    factor = max(float(np.min((slide_hi - slide_lo) / span)) * fill, 1.0)
    viewer.camera.center = tuple((lo + hi) / 2.0)
    viewer.camera.zoom = viewer.camera.zoom * factor
    for layer in viewer.layers:
        if layer._type_string == "shapes" and layer.nshapes:
            pixels = 1.5 if layer is regions else 2.5
            layer.edge_width = pixels / float(viewer.camera.zoom)
            layer.refresh()


def run(args: argparse.Namespace) -> int:
    """Open the viewer; with ``--screenshot`` save a PNG and return 0."""
    if not _has_display():
        if args.screenshot is None:
            raise HistattnError(
                "no display (DISPLAY is unset): run `xvfb-run -a histattn demo --screenshot "
                "demo.png` to save a screenshot instead, or use scripts/demo.sh"
            )
        raise HistattnError(
            "no display (DISPLAY is unset): napari's canvas needs an X server with OpenGL; "
            "run this command under `xvfb-run -a` (scripts/demo.sh does)"
        )

    layers = demo_layers(args.slide)

    import napari

    viewer = napari.Viewer(title="napari-histattn demo", show=True)
    try:
        viewer.window.resize(*_WINDOW_WH)
        for data, kwargs, layer_type in layers:
            getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        image_meta = layers[0][1]["metadata"]
        # A scale bar only means something in physical units.
        viewer.scale_bar.visible = image_meta.get("mpp_source", "none") != "none"
        viewer.scale_bar.box = True
        viewer.scale_bar.font_size = 12
        if len(viewer.layers) > 1:
            viewer.layers.selection.active = viewer.layers[0]
        viewer.reset_view()
        if not args.no_widget or args.classify:
            viewer.window.resize(*_WINDOW_WITH_WIDGET_WH)
            widget = _dock_classify_widget(viewer, args.checkpoint)
            if args.classify:
                _classify_and_wait(widget)
            _settle(0.2)  # let the dock take its width before fitting the slide
            viewer.reset_view()
            if args.classify and args.zoom_to_top:
                _zoom_to_top_region(viewer, widget)

        if args.screenshot is None:
            napari.run()
            return 0

        _settle(args.settle)
        out = args.screenshot.expanduser().resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=args.canvas_only, flash=False)
        print(f"histattn demo: screenshot saved to {out}")
        return 0
    finally:
        if args.screenshot is not None:
            viewer.close()
