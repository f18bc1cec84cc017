"""The classify widget's result accessors, cursor readout and export, kept beside it
(a mixin of :class:`~napari_histattn._napari.classify_widget.ClassifyWidget`).

Exports write the chosen slide's chosen result with the reviewer's decisions and every
shape the reviewer drew on that slide (:func:`~napari_histattn._napari.drawings.expert_annotations`).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info

from napari_histattn._napari.display_panel import Display, apply_display, flip_target, show_only
from napari_histattn._napari.drawings import expert_annotations
from napari_histattn._napari.readout import readout_text
from napari_histattn._napari.result_export import default_export_path, export_result
from napari_histattn._napari.result_panel import RESULT_WIDTH
from napari_histattn._napari.shown import (
    Shown,
    ShownResults,
    replace_regions_layer,
    set_overlay_visible,
)
from napari_histattn.errors import HistattnError

__all__ = ["THRESHOLD_EVERY_MS", "ResultActions"]

#: While the region-threshold slider moves, its regions are redrawn at most this often.
THRESHOLD_EVERY_MS = 250


def _outlines(regions: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.rank, r.class_name, r.polygon.wkb) for r in regions]


class ResultActions:
    """Reading and exporting the results a classify widget shows."""

    _shown: ShownResults
    _checkpoints: dict[str, Any]
    _viewer: Any
    layer: Any
    model: Any
    readout: Any
    review: Any
    threshold: Any
    crops: Any
    status: Any
    native: Any
    show_overlay: Any
    heatmap_display: Any
    _show_result: Callable[[Shown], None]  # the widget's: fills the panel for a result

    def _current(self, layer: Any = None) -> Shown | None:
        """The chosen slide's result of the chosen model, else its latest result."""
        layer = self.layer.value if layer is None else layer
        return None if layer is None else self._shown.get(layer, self.model.value)

    def _positive_class(self) -> str | None:
        """The chosen two-class model's positive class (a new outline's class), else None."""
        choice = self._checkpoints.get(self.model.value or "")
        return choice.class_names[1] if choice and len(choice.class_names) == 2 else None

    def _on_mouse_move(self, _viewer: Any, event: Any) -> None:
        """The cursor readout (a viewer mouse-move callback), whatever layer is selected."""
        shown = self._current()
        text = "" if shown is None else readout_text(shown, event.position)
        self.readout.value = textwrap.fill(f"at cursor: {text or '—'}", RESULT_WIDTH)

    def result_layers(self, layer: Any = None) -> dict[str, Any]:
        """The result layers (``heatmap``, ``regions``, ``samples``) of a slide layer's
        current result (the chosen model's, else the latest)."""
        shown = self._current(layer)
        return dict(shown.layers) if shown is not None else {}

    def result_for(self, layer: Any = None) -> Any:
        """The ClassificationResult shown for a slide layer (default: the chosen one), or None."""
        shown = self._current(layer)
        return None if shown is None else shown.result

    def regions_for(self, layer: Any = None) -> list[Any]:
        """The regions at the slider's threshold for a slide layer (default: the chosen one),
        with the reviewer's decisions."""
        shown = self._current(layer)
        return [] if shown is None else shown.reviewed_regions()

    def results_on(self, layer: Any = None) -> list[Shown]:
        """Every model's result shown on a slide layer (default: the chosen one)."""
        return self._shown.of(self.layer.value if layer is None else layer)

    def export_to(self, path: str | Path, *, crops: bool | None = None) -> dict[str, Path]:
        """Export the chosen slide's regions (GeoJSON), patches (CSV) and optional crops.

        Raises
        ------
        HistattnError
            No result for the chosen layer; :class:`~napari_histattn.errors.ExportError`
            when a file cannot be written (an earlier file of that name is kept).
        """
        shown = self._current()
        if shown is None:
            raise HistattnError("no classification result for this layer yet: click Classify")
        author = self.review.reviewer.value.strip() or None
        shown.review.author = author
        return export_result(
            shown.result,
            shown.source.slide,
            path,
            regions=shown.regions,
            threshold=float(self.threshold.value),
            crops=bool(self.crops.value if crops is None else crops),
            review=shown.review,
            expert=expert_annotations(self._viewer, shown.source, author),
        )

    def _on_export_clicked(self, _value: Any = None) -> None:
        from qtpy.QtWidgets import QFileDialog

        shown = self._current()
        start = "regions.geojson"
        if shown is not None:
            start = str(default_export_path(shown.source.path))
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export regions", start, "GeoJSON (*.geojson)"
        )
        if not path:
            return
        try:
            written = self.export_to(path)
        except HistattnError as exc:
            show_error(str(exc))
            return
        message = "Exported " + ", ".join(str(p) for p in written.values())
        self.status.value = f"exported to {written['geojson']}"  # the full destination
        show_info(message)

    def load_review_from(self, path: str | Path) -> str:
        """Restore an exported review onto the chosen slide's result: the region threshold
        it was exported at, its decisions on this model's regions (redrawn on the canvas
        and in the table) and the expert's annotations (into the slide's annotations layer).
        Returns what was restored (also shown in the status line).

        Raises
        ------
        HistattnError
            No result for the chosen layer, the file cannot be read, or it is another
            slide's review (nothing is changed).
        """
        from napari_histattn._napari.result_export import read_review
        from napari_histattn._napari.review_import import restore_saved_review

        shown = self._current()
        if shown is None:
            raise HistattnError("no classification result for this layer yet: click Classify")
        saved = read_review(path)
        restored = restore_saved_review(self._viewer, shown, saved)
        moved = saved.threshold is not None and abs(saved.threshold - self.threshold.value) > 1e-9
        if moved:  # the regions the decisions were made on, and the panel
            self.threshold.changed.block()
            self.threshold.value = saved.threshold
            self.threshold.changed.unblock()
            self._apply_threshold()
        # The decisions drawn: a restyle where the outlines stand (or were just redrawn).
        replace_regions_layer(self._viewer, shown, self._regions_visible(shown))
        if not moved:
            self._show_result(shown)
        text = restored.text(saved)
        self.status.value = text
        return text

    def _on_load_review(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        shown = self._current()
        if shown is None:
            return
        start = default_export_path(shown.source.path)
        path, _ = QFileDialog.getOpenFileName(
            self.native,
            "Load a saved review",
            str(start if start.is_file() else start.parent),
            "GeoJSON (*.geojson *.json)",
        )
        if not path:
            return
        try:
            show_info(self.load_review_from(path))
        except HistattnError as exc:
            show_error(str(exc))

    # ------------------------------------------------------------------ display and compare

    def _on_display_changed(self, display: Display) -> None:
        apply_display(self._shown.values(), display)
        self._show_scale()

    def _show_scale(self) -> None:
        layer = self.layer.value
        on_slide = self._shown.of(layer) if layer is not None else []
        self.heatmap_display.show_scale(self._current(), len(on_slide))

    def flip_models(self) -> None:
        """Show the next model's result on the chosen slide (its heatmap and regions; the
        others' hidden) and make it the chosen model, so the panel and review follow."""
        layer = self.layer.value
        current = self._current()
        on_slide = self._shown.of(layer) if layer is not None else []
        target = flip_target(on_slide, None if current is None else current.key)
        if target is None:
            return
        self.show_overlay.value = True
        show_only(on_slide, target)
        self.model.value = target.key  # the panel, review table and readout follow
        self._show_result(target)

    def _on_threshold_changed(self, _threshold: float) -> None:
        """Redraw the regions at once, and while the slider is dragged at most every
        :data:`THRESHOLD_EVERY_MS` (the value it stops on always lands): each redraw
        holds the main thread for about 0.1 s on the sample slide here."""
        timer = getattr(self, "_threshold_timer", None)
        if timer is None:
            from qtpy.QtCore import QTimer

            timer = self._threshold_timer = QTimer(self.native)  # dies with the dock
            timer.setSingleShot(True)
            timer.setInterval(THRESHOLD_EVERY_MS)
            timer.timeout.connect(self._apply_threshold)
        since_ms = 1000.0 * (time.monotonic() - getattr(self, "_threshold_at", -1e9))
        if since_ms >= THRESHOLD_EVERY_MS and not timer.isActive():
            self._apply_threshold()
        else:
            timer.start()

    @property
    def threshold_pending(self) -> bool:
        """Whether the slider's last value is still to be drawn (it was dragged)."""
        timer = getattr(self, "_threshold_timer", None)
        return timer is not None and timer.isActive()

    def _apply_threshold(self) -> None:
        self._threshold_at = time.monotonic()
        threshold = float(self.threshold.value)
        for shown in self._shown.values():
            regions = shown.result.regions_at(threshold, shown.result.top_k)
            if _outlines(regions) == _outlines(shown.regions):
                continue  # nothing to redraw
            shown.regions = regions
            replace_regions_layer(self._viewer, shown, self._regions_visible(shown))
        current = self._current()
        if current is not None:
            self._show_result(current)

    def _regions_visible(self, shown: Shown) -> bool:
        """Whether ``shown``'s regions are drawn: the overlay is on and, where models are
        flipped, this one is shown."""
        layer = shown.layers.get("regions")
        flipped_away = layer is not None and not layer.visible and bool(self.show_overlay.value)
        return bool(self.show_overlay.value) and not flipped_away

    def _on_show_overlay_changed(self, visible: bool) -> None:
        set_overlay_visible(list(self._shown.values()), bool(visible))
        if visible:  # one model's result per slide in front, never two heatmaps on top
            for slide in self._shown.slides():
                chosen = self._current(slide)
                if chosen is not None:
                    show_only(self._shown.of(slide), chosen)
        self._show_scale()
