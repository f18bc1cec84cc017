"""The classify widget's result accessors, cursor readout and export, kept beside it
(a mixin of :class:`~napari_histattn._napari.classify_widget.ClassifyWidget`).

Exports write the chosen slide's chosen result with the reviewer's decisions and every
shape the reviewer drew on that slide (:func:`~napari_histattn._napari.shown.expert_annotations`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info

from napari_histattn._napari.readout import readout_text
from napari_histattn._napari.result_export import export_result
from napari_histattn._napari.result_panel import RESULT_WIDTH
from napari_histattn._napari.shown import Shown, ShownResults, expert_annotations
from napari_histattn.errors import HistattnError

__all__ = ["ResultActions"]


class ResultActions:
    """Reading and exporting the results a classify widget shows."""

    _shown: ShownResults
    _viewer: Any
    layer: Any
    model: Any
    readout: Any
    review: Any
    threshold: Any
    crops: Any
    status: Any
    native: Any

    def _current(self, layer: Any = None) -> Shown | None:
        """The chosen slide's result of the chosen model, else its latest result."""
        layer = self.layer.value if layer is None else layer
        return None if layer is None else self._shown.get(layer, self.model.value)

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
            start = str(shown.source.path.with_name(f"{shown.source.path.stem}_regions.geojson"))
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
