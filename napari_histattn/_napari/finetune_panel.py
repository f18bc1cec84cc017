""" "Fine-tune on my corrections": the classify widget's expert-in-the-loop action.

The button saves the chosen result's review beside the slide (the export's
``<slide stem>_regions.geojson``: the decisions and every outline drawn on the slide),
fine-tunes that result's A-MIL checkpoint on it in a worker
(:func:`~napari_histattn.training.corrections.fine_tune_on_corrections`, the same as
``histattn finetune``), and then adds the new checkpoint to the model picker and
classifies the slide with it: the two results sit on the slide side by side (``/`` flips
between them) and the panel states the localisation against the reviewer's marks before
and after. While it runs, the button cancels.
"""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, PushButton
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_error

from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress

__all__ = ["FINE_TUNE_TEXT", "FineTunePanel"]

FINE_TUNE_TEXT = "Fine-tune on my corrections"
_CANCEL_TEXT = "Cancel fine-tuning"
#: Models the action fine-tunes (the registry names).
_TUNABLE = ("amil",)
#: Characters per line of the note: it sits in the dock's value column, narrower than
#: the result panel's.
NOTE_WIDTH = 42


class FineTunePanel(Container):
    """The button and what the last fine-tune of each slide did.

    Parameters
    ----------
    widget
        The classify widget: its current result (``_current``), ``export_to``,
        ``add_checkpoint``, ``run_classify``, ``device``, ``slide_mpp`` and ``layer``.
    """

    def __init__(self, widget: Any) -> None:
        super().__init__(labels=False)
        self._owner = widget
        self.button = PushButton(text=FINE_TUNE_TEXT, enabled=False)
        self.button.tooltip = (
            "Save your decisions and outlines beside the slide, fine-tune this A-MIL model on "
            "them (attention and head; the encoder is kept), then classify with the new model"
        )
        self.note = Label(value="")  # wrapped by _say (a wrapped QLabel here was cut short)
        self.note.visible = False
        self.extend([self.button, self.note])
        self.button.changed.connect(self._on_clicked)
        self._cancel: threading.Event | None = None
        self._worker: Any = None
        self._notes: dict[Any, str] = {}  # slide layer -> what its last fine-tune did
        self.last: Any = None  # the last FineTuned (for tests and scripts)

    @property
    def running(self) -> bool:
        """Whether a fine-tune is in progress."""
        return self._worker is not None

    def follow(self, shown: Any | None) -> None:
        """Enable the button for a result of a tunable model; show the slide's note."""
        if self.running:
            return
        self._enable(shown)
        text = self._notes.get(self._owner.layer.value, "")
        self._say(text)

    def _enable(self, shown: Any | None) -> None:
        self.button.enabled = shown is not None and _model_name(shown) in _TUNABLE

    def _on_clicked(self, _value: Any = None) -> None:
        if self.running:
            assert self._cancel is not None
            self._cancel.set()
            self._worker.quit()
            self._say("cancelling...")
            return
        try:
            self.start()
        except HistattnError as exc:
            show_error(str(exc))

    def start(self) -> None:
        """Save the review beside the slide and start fine-tuning on it (in a worker)."""
        from napari_histattn._napari.result_export import default_export_path
        from napari_histattn.training.corrections import default_output, fine_tune_on_corrections

        widget = self._owner
        shown = widget._current()
        if shown is None:
            raise HistattnError("classify the slide first, then review its regions")
        slide = shown.source.path
        written = widget.export_to(default_export_path(slide), crops=False)
        out = default_output(shown.key, slide)
        layer, self._cancel = widget.layer.value, threading.Event()
        worker = thread_worker(
            fine_tune_on_corrections,
            ignore_errors=True,
            start_thread=False,
            worker_class=GeneratorWorker,
        )(
            Path(shown.key),
            slide,
            written["geojson"],
            out,
            device=widget.device.value,
            slide_mpp=float(widget.slide_mpp.value) or None,
            cancel=self._cancel,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda tuned: self._on_returned(layer, tuned))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.button.text = _CANCEL_TEXT
        self._say(f"saved your corrections to {written['geojson']}; fine-tuning...")
        worker.start()

    def _on_progress(self, report: Progress) -> None:
        counts = f" {report.done}/{report.total}" if report.total else ""
        detail = f" — {report.message}" if report.message else ""
        self._say(f"fine-tuning: {report.stage}{counts}{detail}")

    def _on_returned(self, layer: Any, tuned: Any) -> None:
        self.last = tuned
        widget = self._owner
        self._notes[layer] = (
            f"fine-tuned as {tuned.checkpoint_path.name}: {tuned.summary()} "
            "Its result is on the slide beside the original ('/' flips)."
        )
        if layer not in widget._viewer.layers:
            return
        widget.layer.value = layer
        if widget.add_checkpoint(tuned.checkpoint_path):
            widget.run_classify()

    def _on_errored(self, exc: BaseException) -> None:
        from napari_histattn.inference.errors import Cancelled

        if isinstance(exc, Cancelled):
            self._say("fine-tuning cancelled: nothing was saved")
            return
        message = str(exc) if isinstance(exc, HistattnError) else f"{type(exc).__name__}: {exc}"
        show_error(f"Fine-tuning failed: {message}")
        self._say(f"fine-tuning failed: {message}")

    def _on_finished(self) -> None:
        self._worker = None
        self.button.text = FINE_TUNE_TEXT
        self._enable(self._owner._current())  # the note keeps what happened

    def _say(self, text: str) -> None:
        self.note.value = textwrap.fill(text, NOTE_WIDTH)
        self.note.visible = bool(text)

    def stop(self) -> None:
        """Cancel a running fine-tune (the widget is closing)."""
        if self._cancel is not None:
            self._cancel.set()
        if self._worker is not None:
            self._worker.quit()


def _model_name(shown: Any) -> str:
    return str(shown.result.provenance.get("model_name", ""))
