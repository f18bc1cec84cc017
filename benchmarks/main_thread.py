"""Main-thread time of the review steps in the viewer (issue 12: no step over 100 ms).

Opens the sample slide (``histattn``'s File > Open Sample slide, generated and cached on
first use) in a shown napari viewer under Xvfb, classifies it with the demo A-MIL, then
times on the main thread, each step until Qt has processed its events:

- adding the result to the viewer (the widget's ``_on_returned``: layers and panel);
- each step of the region-threshold slider over 0.05-0.95 (regions rebuilt, layer
  redrawn, panel and table refreshed);
- an accept decision on a region (layer redrawn with its new outline and label);
- a cursor readout (the mouse-move callback);
- a drag of the threshold slider (20 moves 30 ms apart, as a hand drags it) and the
  sample slide's first use (File > Open Sample with an empty cache: generated in a
  worker), each as the longest time the event loop went without a turn (a 5 ms timer
  watches it): what a user feels as a freeze.

Results go to ``RESULTS.md`` between ``<!-- main-thread:start -->`` and
``<!-- main-thread:end -->``.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/main_thread.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
START, END = "<!-- main-thread:start -->", "<!-- main-thread:end -->"
DEMO = ROOT / "sample_data" / "demo_amil.safetensors"
LIMIT_S = 0.1


CALLS: dict[str, list[float]] = {}


def _timed(app: Any, step: Any, name: str = "") -> float:
    """Seconds until ``step`` and the events it queued (the redraw) are done; the call
    alone is kept in :data:`CALLS` under ``name``."""
    started = time.perf_counter()
    step()
    CALLS.setdefault(name, []).append(time.perf_counter() - started)
    app.processEvents()
    return time.perf_counter() - started


class LoopWatch:
    """The longest gap between turns of the Qt event loop while it runs (a 5 ms timer)."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.worst = 0.0
        self.last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def spin(self, app: Any, seconds: float) -> None:
        """Run the event loop for ``seconds``."""
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            app.processEvents()
            time.sleep(0.001)

    def start(self) -> None:
        self.worst, self.last = 0.0, time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        self._tick()
        return self.worst


def first_use_of_sample(viewer: Any, app: Any) -> dict[str, float]:
    """File > Open Sample with an empty cache: the call's time, the longest event-loop
    gap until the slide is shown, and the seconds until then."""
    import os
    import tempfile

    watch = LoopWatch()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HISTATTN_CACHE"] = cache
        try:
            watch.start()
            started = time.perf_counter()
            viewer.open_sample("napari-histattn", "synthetic")
            returned = time.perf_counter() - started
            while len(viewer.layers) < 2 and time.perf_counter() - started < 600:
                watch.spin(app, 0.05)
            shown = time.perf_counter() - started
            worst = watch.stop()
        finally:
            del os.environ["HISTATTN_CACHE"]
    viewer.layers.clear()
    return {"call": returned, "worst_gap": worst, "shown": shown}


def main() -> int:
    import napari
    from features import _machine, _write_section
    from qtpy.QtWidgets import QApplication

    from napari_histattn.io.synthetic import synthetic_sample_slide

    sample = synthetic_sample_slide()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(sample.path), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget("napari-histattn", "Classify with attention")
    assert widget.add_checkpoint(DEMO)
    widget.device.value = "cpu"
    app = QApplication.instance()

    timings: dict[str, list[float]] = {
        "display": [],
        "threshold": [],
        "decision": [],
        "readout": [],
    }
    original = widget._on_returned

    def timed_return(run: Any, source: Any, result: Any) -> None:
        timings["display"].append(_timed(app, lambda: original(run, source, result), "display"))

    widget._on_returned = timed_return  # type: ignore[method-assign]
    for _ in range(3):
        widget.run_classify()
        while not widget.is_idle:
            app.processEvents()
            time.sleep(0.01)
    shown = widget._current()
    assert shown is not None
    for value in [round(0.05 * k, 2) for k in range(1, 20)] + [0.5]:
        LoopWatch().spin(app, 0.3)  # a pause: each step is drawn at once, not deferred
        timings["threshold"].append(
            _timed(app, lambda v=value: setattr(widget.threshold, "value", v), "threshold")
        )
    watch = LoopWatch()
    watch.spin(app, 0.5)
    watch.start()
    for value in [round(0.05 * k, 2) for k in range(19, 0, -1)] + [0.5]:
        widget.threshold.value = value
        watch.spin(app, 0.03)
    watch.spin(app, 0.5)  # the value it stopped on lands
    drag_worst = watch.stop()
    for index in range(min(3, len(widget.regions_for()))):
        widget.review.select(index)  # the camera moves: let the new view's tiles load first
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        timings["decision"].append(
            _timed(app, lambda: widget.review.decide("accepted"), "decision")
        )
    r, c = shown.result.top_cell()
    x, y = shown.result.cell_center_l0_xy(r, c)
    mpp = shown.source.mpp_xy or (1.0, 1.0)

    class Move:
        position = (y * mpp[1], x * mpp[0])

    for _ in range(20):
        timings["readout"].append(
            _timed(app, lambda: widget._on_mouse_move(viewer, Move()), "readout")
        )
    viewer.layers.clear()
    first_use = first_use_of_sample(viewer, app)
    viewer.close()

    grid = "x".join(str(v) for v in shown.result.grid_shape)
    rows = []
    ours_within: list[str] = []
    ours_over: list[str] = []
    for name, label in (
        ("display", "result added to the viewer (layers + panel), 3 runs"),
        ("threshold", "region-threshold slider step, 20 steps over 0.05-0.95, 0.3 s apart"),
        ("decision", "accept a region (layer redrawn, table and panel), up to 3 decisions"),
        ("readout", "cursor readout, 20 moves"),
    ):
        values = timings[name]
        median, worst = statistics.median(values), max(values)
        call = statistics.median(CALLS[name])
        (ours_within if call <= LIMIT_S else ours_over).append(label.split(" (")[0].split(",")[0])
        met = "yes" if worst <= LIMIT_S else f"**no** (worst {worst * 1000:.0f} ms)"
        rows.append(
            f"| {label} | {call * 1000:.0f} | {median * 1000:.0f} | {worst * 1000:.0f} | {met} |"
        )
        print(name, [round(v * 1000) for v in values], flush=True)
    met = "yes" if drag_worst <= LIMIT_S else f"**no** ({drag_worst * 1000:.0f} ms)"
    rows.append(
        f"| slider dragged (20 moves 30 ms apart): longest event-loop gap | | | "
        f"{drag_worst * 1000:.0f} | {met} |"
    )
    gap = first_use["worst_gap"]
    met = "yes" if gap <= LIMIT_S else f"**no** ({gap * 1000:.0f} ms)"
    rows.append(
        f"| sample slide, first use (empty cache): Open Sample returns; longest event-loop "
        f"gap until the slide shows, {first_use['shown']:.0f} s later | "
        f"{first_use['call'] * 1000:.0f} | | {gap * 1000:.0f} | {met} |"
    )
    print("drag", round(drag_worst * 1000), "first use", first_use, flush=True)
    w, h = shown.source.size_l0_wh
    lines = [
        START,
        "## Main-thread time of reviewing (`benchmarks/main_thread.py`)",
        "",
        f"Machine: {_machine()}; napari {napari.__version__} on Xvfb (llvmpipe), window "
        f"1600x1000. The sample slide ({w} x {h} px), demo A-MIL on the CPU (attention grid "
        f"{grid}). Each step is timed on the main thread until Qt has processed its events; "
        f"the limit is the issue's {LIMIT_S * 1000:.0f} ms.",
        "",
        "| step | our code alone, median (ms) | with the redraw, median (ms) | worst (ms) "
        "| within 100 ms? |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Where the time goes (cProfile of the same steps): the first result on a slide is "
        "napari's first draw of new canvas nodes (shader builds in software OpenGL, about 0.5 s) "
        "and layer creation; running a model again now redraws its layers in place (removing "
        "layers cost napari a garbage collection each: 1.1 s before, 0.14-0.3 s now). A slider "
        "step or decision is napari's Shapes redraw (triangulation by bermuda, text, features) "
        "plus the canvas redraw (llvmpipe, about 70-100 ms a frame); a drag redraws at most every "
        "250 ms; a decision restyles the layer (colours, labels) without re-adding its "
        "polygons (our code 160-190 ms a decision before, cProfile). The sample's first use no longer blocks for its 25 s of writing: Open Sample "
        f"returns its outlines ({first_use['call']:.1f} s, most of it napari's first Shapes "
        "layer), the longest gap after is napari adding the image layer (vispy nodes; reading "
        "is done in the worker). The colour bar's label in the dock is always shown: its "
        "appearing with the first result changed the dock's layout and napari redrew the canvas "
        "within that call, and result layers are added without napari selecting each (which "
        "built and showed its controls): our code in a first result 2.26 s, then 1.40 s, now "
        "1.07 s (cProfile). "
        "Missed on this GPU-less machine: every step that redraws the canvas. Our own code's "
        f"median is within 100 ms for: {', '.join(ours_within) or 'none'}; over it for: "
        f"{', '.join(ours_over) or 'none'}. Runs minutes apart on this shared machine differ "
        "by up to 2x (the same commit's slider step measured 77/190 ms and 145/364 ms on "
        "2026-12-03), so compare rows of one run.",
        END,
    ]
    _write_section("\n".join(lines), START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
