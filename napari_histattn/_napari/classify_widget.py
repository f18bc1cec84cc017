"""The "Classify with attention" dock widget: controls wired to the inference engine.

One run per slide layer, each in its own ``thread_worker`` with its own cancel
event, so two slides can be classified at once. Cancel (or removing the slide
layer) sets the event and asks the worker to quit: the engine stops at its next
progress report (one batch) and nothing is added. On completion the result
becomes layers (:mod:`napari_histattn._napari.result_layers`): the attention
heatmap, the top-k regions and, for attention sampling, the sampled patches.
Errors reach the user as napari notifications and the widget returns to idle.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_error, show_info

from napari_histattn._napari import result_layers as rl
from napari_histattn._napari.checkpoints import (
    CheckpointChoice,
    checkpoint_defaults,
    describe_checkpoint,
    device_choices,
    find_checkpoints,
)
from napari_histattn._napari.display_panel import DisplayPanel, show_only
from napari_histattn._napari.drawings import adopt_drawing_layer
from napari_histattn._napari.family_params import (
    EXPLAIN_CHOICES,
    configure_controls,
    explain_control,
    param_controls,
    param_values,
    slide_mpp_control,
)
from napari_histattn._napari.finetune_panel import FineTunePanel
from napari_histattn._napari.result_actions import ResultActions
from napari_histattn._napari.review_panel import ReviewPanel
from napari_histattn._napari.shown import (
    Shown,
    ShownResults,
    present_result,
    replace_regions_layer,
    shown_text,
)
from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress, timing_text

RESEARCH_ONLY = "Research use only — not for diagnosis"
_BAR_MAX = 1000
#: Shown under the slide picker for a slide that records no pixel size.
NO_MPP_NOTE = (
    "This slide records no pixel size: enter its um/px in 'slide um/px' before Classify "
    "(about 0.25 at 40x, 0.5 at 20x; it is recorded with the result)."
)
#: The dock's widest (px).
MAX_WIDTH = 600


@dataclass
class _Run:
    layer: Any
    cancel: threading.Event
    key: str = ""
    worker: Any = None
    last: Progress | None = None
    failed: bool = False
    started: float = field(default_factory=time.monotonic)


class ClassifyWidget(ResultActions, Container):
    """Classify a slide layer with an attention model and show where the model looked.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the manifest).
    """

    def __init__(self, napari_viewer: Any) -> None:
        # Scrollable: with the review panel it is taller than a laptop's screen, and a
        # squeezed dock once cut the result panel's text.
        super().__init__(labels=True, scrollable=True)
        self._viewer = napari_viewer
        self._runs: dict[Any, _Run] = {}
        self._shown = ShownResults()
        self._checkpoints: dict[str, CheckpointChoice] = {
            str(c.path): c for c in find_checkpoints()
        }

        self.layer = ComboBox(label="slide layer", choices=self._layer_choices, nullable=True)
        self.layer_note = Label(label="", value="")
        self.model = ComboBox(label="model", choices=self._model_choices, nullable=True)
        self.open_checkpoint = PushButton(label="", text="Open checkpoint file...")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        # One control per run parameter any family declares; the chosen model's family
        # says which are shown, with its labels, bounds and defaults.
        self.params = param_controls()
        for name, control in self.params.items():
            if hasattr(self, name):
                raise HistattnError(f"a model family declares parameter {name!r}, a widget name")
            setattr(self, name, control)
        self.batch_size = SpinBox(label="batch size", min=1, max=65536)
        self.slide_mpp = slide_mpp_control()
        self.explain = explain_control()
        # A slide much coarser than the model's resolution is refused (the model would
        # see blurred pixels); this is the explicit "yes, I mean it".
        self.allow_upsample = CheckBox(
            text="allow upsampling a coarse slide (blurred input)", value=False
        )
        self.allow_upsample.tooltip = (
            "A slide more than 4x coarser than the model's resolution is refused; "
            "tick to run it anyway (the result says how much it was upsampled)."
        )
        self._family: Any = None
        self._explainable = False
        self._param_names: set[str] = set()
        self.classify_button = PushButton(label="", text="Classify")
        self.cancel_button = PushButton(label="", text="Cancel", enabled=False)
        self.progress = ProgressBar(label="", min=0, max=_BAR_MAX, value=0)
        self.status = Label(label="", value="idle")
        self.result_label = Label(label="", value="—")
        self.readout = Label(label="", value="at cursor: —")
        self.review = ReviewPanel(napari_viewer, self._on_review_changed, self._on_load_review)
        self.threshold = FloatSlider(
            label="region threshold", min=0.05, max=0.95, step=0.05, value=0.5
        )
        self.show_overlay = CheckBox(text="Show attention overlay", value=True)
        self.heatmap_display = DisplayPanel(
            napari_viewer, self._on_display_changed, self.flip_models
        )
        self.crops = CheckBox(text="also write PNG crops", value=False)
        self.export_button = PushButton(label="", text="Export regions...", enabled=False)
        self.fine_tune = FineTunePanel(self)
        self.research_only = Label(label="", value=RESEARCH_ONLY)
        self.research_only.native.setStyleSheet("font-weight: bold; color: #e0a000;")
        self.extend(
            [
                self.layer,
                self.layer_note,
                self.model,
                self.open_checkpoint,
                self.device,
                *self.params.values(),
                self.batch_size,
                self.slide_mpp,
                self.explain,
                self.allow_upsample,
                self.classify_button,
                self.cancel_button,
                self.progress,
                self.status,
                self.result_label,
                self.readout,
                self.review,
                self.threshold,
                self.show_overlay,
                self.heatmap_display,
                self.export_button,
                self.crops,
                self.fine_tune,
                self.research_only,
            ]
        )

        for label in (self.layer_note, self.status):
            _wrapping(label)
        # Under 40 % of a 1600 px window: the canvas keeps the rest.
        self.native.setMaximumWidth(MAX_WIDTH)
        self.layer.changed.connect(self._on_layer_changed)
        self.model.changed.connect(self._on_model_changed)
        self.open_checkpoint.changed.connect(self._on_open_checkpoint_clicked)
        self.classify_button.changed.connect(self.run_classify)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._on_threshold_changed)
        self.show_overlay.changed.connect(self._on_show_overlay_changed)
        self.export_button.changed.connect(self._on_export_clicked)
        events = self._viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        events.reordered.connect(self._refresh_layers)
        self._viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.native.destroyed.connect(self._on_destroyed)
        # napari imports pandas for the first Shapes layer with features: 0.4 s of the first
        # result's display on the main thread (benchmarks/main_thread.py), done here instead.
        threading.Thread(target=importlib.import_module, args=("pandas",), daemon=True).start()
        self._viewer.mouse_move_callbacks.append(self._on_mouse_move)
        # The scale bar, in micrometres on a slide with a pixel size.
        self._viewer.canvas.overlays["scale_bar"].visible = True
        self.review.bind_keys()
        self.heatmap_display.bind_keys()

        self._refresh_layers()
        models = [c for c in self.model.choices if c is not None]
        if models:
            self.model.value = models[0]
        self._on_model_changed(self.model.value)

    # ------------------------------------------------------------------ pickers

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        layers = [layer for layer in self._viewer.layers if isinstance(layer, Image)]
        # Our result heatmaps are images too, but not slides.
        return [(layer.name, layer) for layer in layers if rl.RESULT_KEY not in layer.metadata]

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(c.label, key) for key, c in self._checkpoints.items()]

    def _refresh_layers(self, _event: Any = None) -> None:
        self.layer.reset_choices()
        layers = [c for c in self.layer.choices if c is not None]
        if self.layer.value is None and layers:
            self.layer.value = layers[0]
        self._on_layer_changed(self.layer.value)

    def _on_layer_changed(self, layer: Any) -> None:
        note = ""
        if layer is not None:
            try:
                if rl.slide_source(layer).mpp_xy is None:
                    note = NO_MPP_NOTE
            except HistattnError as exc:
                note = str(exc)
        self.layer_note.value = note
        self.layer_note.visible = bool(note)
        self._update_state()

    def _on_active_layer(self, event: Any) -> None:
        """The panel follows the slide chosen in the layer list."""
        layer = event.value
        slides = [choice for choice in self.layer.choices if choice is not None]
        if layer is not None and layer is not self.layer.value and layer in slides:
            self.layer.value = layer

    def _on_layer_inserted(self, event: Any) -> None:
        from napari.layers import Shapes

        slide = self.layer.value
        if isinstance(event.value, Shapes) and slide is not None:
            # A new Shapes layer takes the chosen slide's frame, so its drawings export.
            with contextlib.suppress(HistattnError):
                adopt_drawing_layer(event.value, rl.slide_source(slide), self._positive_class())
        self._refresh_layers()

    def _on_model_changed(self, key: str | None) -> None:
        self._update_state()
        choice = self._checkpoints.get(key) if key else None
        if choice is None:
            return
        try:
            defaults = checkpoint_defaults(choice)
        except HistattnError as exc:
            show_error(str(exc))
            return
        self._family = defaults.family
        self._explainable = defaults.explains
        self._param_names = set(defaults.values)
        configure_controls(self.params, defaults.family, defaults.values)
        self.explain.visible = self._explains()
        self.batch_size.value = defaults.batch_size

    def _explains(self) -> bool:
        """Whether the chosen checkpoint gets post-hoc explanations."""
        return bool(self._family is not None and self._explainable)

    def add_checkpoint(self, path: str | Path) -> bool:
        """Add a checkpoint file to the model picker and select it.

        Returns False (after a notification naming the file and the cause) when it
        is not a usable napari-histattn checkpoint.
        """
        try:
            choice = describe_checkpoint(path)
            checkpoint_defaults(choice)
        except HistattnError as exc:
            show_error(str(exc))
            return False
        self._checkpoints[str(choice.path)] = choice
        self.model.reset_choices()
        self.model.value = str(choice.path)
        return True

    def _on_open_checkpoint_clicked(self, _value: Any = None) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native, "Open checkpoint", "", "napari-histattn checkpoints (*.safetensors)"
        )
        if path:
            self.add_checkpoint(path)

    def param_values(self) -> dict[str, Any]:
        """The chosen model family's run parameters, as the controls show them."""
        return param_values(self.params, self._family, self._param_names)

    # ------------------------------------------------------------------ runs

    @property
    def is_idle(self) -> bool:
        """True when no classification is running."""
        return not self._runs

    def run_classify(self, _value: Any = None) -> None:
        """Classify the chosen slide layer with the chosen checkpoint (in a worker thread)."""
        layer = self.layer.value
        if layer is None:
            show_info("Open a slide first (File > Open... or File > Open Sample > HistAttn).")
            return
        if layer in self._runs:
            show_info(f"{layer.name!r} is already being classified.")
            return
        try:
            source = rl.slide_source(layer)
        except HistattnError as exc:
            show_error(str(exc))
            return
        key = self.model.value
        if not key:
            show_error("Choose a model checkpoint first (Open checkpoint file...).")
            return
        from napari_histattn.inference import engine

        run = _Run(layer=layer, cancel=threading.Event(), key=str(key))
        worker = thread_worker(
            engine.classify, ignore_errors=True, start_thread=False, worker_class=GeneratorWorker
        )(
            source.slide,
            Path(key),
            device=self.device.value,
            batch_size=int(self.batch_size.value),
            params=self.param_values(),
            threshold=float(self.threshold.value),
            allow_upsample=bool(self.allow_upsample.value),
            slide_mpp=float(self.slide_mpp.value) or None,
            explain=EXPLAIN_CHOICES[self.explain.value] if self._explains() else None,
            cancel=run.cancel,
        )
        run.worker = worker
        worker.yielded.connect(lambda p: self._on_progress(run, p))
        worker.returned.connect(lambda result: self._on_returned(run, source, result))
        worker.errored.connect(lambda exc: self._on_errored(run, exc))
        worker.finished.connect(lambda: self._on_finished(run))
        self._runs[layer] = run
        self.status.value = f"classifying {layer.name!r}..."
        self.progress.value = 0
        self._update_state()
        worker.start()

    def cancel(self, _value: Any = None, layer: Any = None) -> None:
        """Cancel the run of ``layer`` (default: the chosen layer); it stops within one batch."""
        run = self._runs.get(self.layer.value if layer is None else layer)
        if run is None:
            return
        run.cancel.set()
        run.worker.quit()
        if self._is_current(run):
            self.status.value = "cancelling..."

    def _is_current(self, run: _Run) -> bool:
        return bool(self.layer.value is not None and self.layer.value == run.layer)

    def _on_progress(self, run: _Run, report: Progress) -> None:
        run.last = report
        if not self._is_current(run) or run.cancel.is_set():
            return
        fraction = report.fraction
        self.progress.value = 0 if fraction is None else int(round(fraction * _BAR_MAX))
        counts = f" {report.done}/{report.total}" if report.total else ""
        detail = f" — {report.message}" if report.message else ""
        self.status.value = f"{report.stage}{counts}{detail}{timing_text(run.started, fraction)}"

    def _on_returned(self, run: _Run, source: rl.SlideSource, result: Any) -> None:
        if run.cancel.is_set() or run.layer not in self._viewer.layers:
            return  # cancelled after its last batch: present nothing
        shown = present_result(  # the same model's earlier result redrawn in place
            self._viewer,
            self._shown,
            run.layer,
            result,
            source,
            float(self.threshold.value),
            self.show_overlay.value,
            key=run.key,
            display=self.heatmap_display.display(),
        )
        shown.review.author = self.review.reviewer.value.strip() or None
        if self.show_overlay.value:  # the new result in front; flip to see the others
            show_only(self._shown.of(run.layer), shown)
        # Keep the slide selected, so that Classify and Export act on it.
        self.layer.value = run.layer
        self._viewer.layers.selection.active = run.layer
        self._show_result(shown)

    def _on_errored(self, run: _Run, exc: BaseException) -> None:
        from napari_histattn.inference.errors import Cancelled

        if isinstance(exc, Cancelled) or run.cancel.is_set():
            return
        if isinstance(exc, HistattnError):
            show_error(str(exc))
        else:
            show_error(f"Classifying {run.layer.name!r} failed: {type(exc).__name__}: {exc}")
        run.failed = True

    def _on_finished(self, run: _Run) -> None:
        self._runs.pop(run.layer, None)
        if self._is_current(run) or not self._runs:
            stopped = run.cancel.is_set() or run.failed
            self.progress.value = 0 if stopped else _BAR_MAX
            if run.failed:
                self.status.value = "failed: nothing shown (see the notification)"
            elif run.cancel.is_set():
                self.status.value = "cancelled: nothing shown"
            else:
                self.status.value = "done"
        self._update_state()

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        if layer in self._runs:
            self.cancel(layer=layer)
        self._shown.drop_layer(layer)
        self._refresh_layers()

    def _on_destroyed(self, *_args: Any) -> None:
        for run in list(self._runs.values()):
            run.cancel.set()
            run.worker.quit()
        self.fine_tune.stop()
        # Nothing of a closed dock may stay wired to the viewer.
        with contextlib.suppress(ValueError, RuntimeError):
            self._viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        with contextlib.suppress(RuntimeError):
            self._viewer.layers.selection.events.active.disconnect(self._on_active_layer)
            self.review.unbind_keys()
            self.heatmap_display.unbind_keys()

    def _update_state(self) -> None:
        layer = self.layer.value
        running = layer is not None and layer in self._runs
        self.classify_button.enabled = layer is not None and not running
        self.cancel_button.enabled = running
        self.export_button.enabled = layer is not None and layer in self._shown
        shown = self._current()
        if shown is not None:
            self._show_result(shown)
        else:  # never the previous slide's result
            self.result_label.value = "classifying..." if running else "—"
            self.review.set_result([], None)
            self.fine_tune.follow(None)
            self._show_scale()
        run = self._runs.get(layer) if running else None
        if run is not None and run.last is not None:
            self._on_progress(run, run.last)  # show the chosen layer's own progress

    def _show_result(self, shown: Shown) -> None:
        self.result_label.value = shown_text(self._viewer, shown, self._shown.of(self.layer.value))
        self.review.set_result(shown.regions, shown.review, shown.source, shown.result.class_names)
        self.export_button.enabled = True
        self.fine_tune.follow(shown)
        self._show_scale()

    def _on_review_changed(self) -> None:
        shown = self._current()
        if shown is not None:
            replace_regions_layer(self._viewer, shown, self._regions_visible(shown))
            self.result_label.value = shown_text(
                self._viewer, shown, self._shown.of(self.layer.value)
            )


def _wrapping(label: Label) -> None:
    """Wrap a label's text at spaces (the dock's :data:`MAX_WIDTH` bounds the rest: a long
    note once widened the dock until the canvas had no room)."""
    label.native.setWordWrap(True)
