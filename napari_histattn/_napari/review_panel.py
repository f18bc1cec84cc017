"""The region review panel: a table of the attended regions, stepping through them, and a
reviewer's accept / reject / reclassify on each.

Thin over :class:`~napari_histattn.inference.review.RegionReview` (GUI-free): the panel
shows the chosen result's regions with their decisions, moves the camera to the one
selected, and hands decisions to the review; the classify widget redraws the regions
layer (outline colour and marker per decision) when ``on_change`` is called.

Keyboard (viewer-wide, while the widget is open): ``.`` next region, ``,`` previous,
``Alt-A`` accept, ``Alt-R`` reject.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton, Table

from napari_histattn.inference.review import RegionReview
from napari_histattn.io.regions import Region

__all__ = ["KEYS", "ReviewPanel", "region_rows"]

#: Viewer key bindings of the panel: action to key.
KEYS = {"next": ".", "previous": ",", "accept": "Alt-A", "reject": "Alt-R"}
_COLUMNS = ("#", "class", "p", "attn", "um²", "review")
#: Share of the canvas a selected region fills after the camera moves to it.
_FILL = 0.35


def region_rows(regions: Sequence[Region], review: RegionReview) -> list[list[str]]:
    """The table's rows: rank, class (the reviewer's, else the model's), the class
    probability, the peak attention (0-1 scale), the area and the decision."""
    rows = []
    for region in regions:
        made = review.decision_for(region)
        shown_class = made.class_name if made is not None and made.class_name else None
        m = region.measurements
        p = m.get(f"prob_{region.class_name}")
        attention = m.get("attention_norm_max", m.get("attention_max"))
        area = m.get("area_um2")
        rows.append(
            [
                f"{region.rank}",
                (f"{shown_class} (model: {region.class_name})" if shown_class else "")
                or str(region.class_name or "attended"),
                "—" if p is None or not math.isfinite(float(p)) else f"{float(p):.2f}",
                "—" if attention is None else f"{float(attention):.2f}",
                "—" if area is None else f"{float(area):,.0f}",
                "pending" if made is None else made.decision,
            ]
        )
    return rows


class ReviewPanel(Container):
    """The review controls of one viewer.

    Parameters
    ----------
    viewer
        The napari viewer (its camera moves to the selected region).
    on_change
        Called after every decision (the widget redraws the regions layer).
    on_load
        Called by "Load saved review..." (the widget asks for the file and restores it).
    """

    def __init__(
        self,
        viewer: Any,
        on_change: Callable[[], None],
        on_load: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._on_change = on_change
        self._regions: list[Region] = []
        self._review: RegionReview | None = None
        self._frame: Any = None  # the result's SlideSource (mpp, translate)
        from qtpy.QtWidgets import QStyledItemDelegate

        self.heading = Label(label="", value="attended regions: none yet")
        self.table = Table(label="", value={"data": [], "columns": list(_COLUMNS)})
        # Qt's own delegate: magicgui's would show "1.00" as "1.0000".
        self._delegate = QStyledItemDelegate(self.table.native)
        self.table.native.setItemDelegate(self._delegate)
        self.table.native.setColumnCount(len(_COLUMNS))
        self.table.native.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.native.verticalHeader().setVisible(False)
        self.table.native.setEditTriggers(self.table.native.EditTrigger.NoEditTriggers)
        self.table.native.setSelectionBehavior(self.table.native.SelectionBehavior.SelectRows)
        self.table.native.setSelectionMode(self.table.native.SelectionMode.SingleSelection)
        self.table.native.setMinimumHeight(140)
        self.table.native.itemSelectionChanged.connect(self._on_selection)
        self.previous_button = PushButton(text="◀ previous (,)")
        self.next_button = PushButton(text="next (.) ▶")
        self.accept_button = PushButton(text="Accept (Alt-A)")
        self.reject_button = PushButton(text="Reject (Alt-R)")
        self._classes: list[str] = []
        # Choices from a function: napari resets a dock's choices when layers change.
        self.reclassify = ComboBox(
            label="reclassify as", choices=lambda _widget: list(self._classes), nullable=True
        )
        self.load_button = PushButton(text="Load saved review...", enabled=False)
        self.load_button.tooltip = (
            "Put back the decisions and your own annotations of an exported review "
            "(<slide>_regions.geojson beside the slide)"
        )
        self.reviewer = LineEdit(label="reviewer", value="")
        self.reviewer.native.setPlaceholderText("your name or initials")
        self.reviewer.tooltip = "Your name or initials: written with each decision and drawing"
        steps = Container(
            label="", widgets=[self.previous_button, self.next_button], layout="horizontal"
        )
        decide = Container(
            label="", widgets=[self.accept_button, self.reject_button], layout="horizontal"
        )
        reclass = Container(
            widgets=[Label(value="reclassify as"), self.reclassify],
            layout="horizontal",
            labels=False,
        )
        who = Container(
            widgets=[Label(value="reviewer"), self.reviewer], layout="horizontal", labels=False
        )
        for row in (steps, decide, reclass, who):
            row.margins = (0, 0, 0, 0)
        self.extend([self.heading, self.table, steps, decide, reclass, who, self.load_button])
        if on_load is not None:
            self.load_button.changed.connect(lambda: on_load())
        self.previous_button.changed.connect(lambda: self.step(-1))
        self.next_button.changed.connect(lambda: self.step(1))
        self.accept_button.changed.connect(lambda: self.decide("accepted"))
        self.reject_button.changed.connect(lambda: self.decide("rejected"))
        self.reclassify.changed.connect(self._on_reclassify)
        self.reviewer.changed.connect(self._on_reviewer)
        self._set_enabled(False)

    # ------------------------------------------------------------------ content

    def set_result(
        self,
        regions: Sequence[Region],
        review: RegionReview | None,
        frame: Any = None,
        class_names: Sequence[str] = (),
    ) -> None:
        """Show ``regions`` of a result (with its ``review`` and its slide layer's ``frame``,
        a ``SlideSource``), or nothing (``review`` None)."""
        keep = self.selected_index()
        self._regions = list(regions)
        self._review = review
        self._frame = frame
        self._classes = list(class_names) if review is not None else []
        self.load_button.enabled = review is not None
        self.reclassify.changed.block()
        self.reclassify.reset_choices()
        self.reclassify.value = None
        self.reclassify.changed.unblock()
        if review is not None:
            self.reviewer.changed.block()
            self.reviewer.value = review.author or self.reviewer.value
            self.reviewer.changed.unblock()
        self._fill(keep)

    def _fill(self, keep: int | None = None) -> None:
        review = self._review
        rows = [] if review is None else region_rows(self._regions, review)
        from qtpy.QtWidgets import QTableWidgetItem

        native = self.table.native
        native.blockSignals(True)
        native.clearContents()
        native.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                native.setItem(r, c, QTableWidgetItem(text))
        native.resizeColumnsToContents()
        native.blockSignals(False)
        if review is None:
            self.heading.value = "attended regions: none yet"
        else:
            counts = review.counts(self._regions)
            self.heading.value = textwrap.fill(
                f"{len(rows)} attended region(s): {counts['accepted']} accepted, "
                f"{counts['rejected']} rejected, {counts['pending']} to review",
                48,
            )
        self._set_enabled(bool(rows))
        if keep is not None and 0 <= keep < len(rows):
            native.blockSignals(True)
            native.selectRow(keep)
            native.blockSignals(False)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (
            self.previous_button,
            self.next_button,
            self.accept_button,
            self.reject_button,
            self.reclassify,
        ):
            widget.enabled = enabled

    # ------------------------------------------------------------------ navigation

    def selected_index(self) -> int | None:
        """The selected row, or None."""
        rows = self.table.native.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    def select(self, index: int) -> None:
        """Select region ``index`` (table order) and centre the camera on it."""
        if not self._regions:
            return
        index = max(0, min(int(index), len(self._regions) - 1))
        self.table.native.selectRow(index)  # emits the selection, which centres
        self.centre_on(index)

    def step(self, by: int) -> None:
        """Select the next (``by=1``) or previous (``-1``) region, wrapping around."""
        if not self._regions:
            return
        current = self.selected_index()
        start = -1 if current is None and by > 0 else (0 if current is None else current)
        self.select((start + by) % len(self._regions))

    def _on_selection(self) -> None:
        index = self.selected_index()
        if index is not None:
            self.centre_on(index)

    def centre_on(self, index: int) -> None:
        """Move the camera to region ``index`` so that it fills about a third of the canvas."""
        frame = self._frame
        if frame is None or not 0 <= index < len(self._regions):
            return
        x0, y0, x1, y1 = self._regions[index].polygon.bounds
        unit_x, unit_y = frame.mpp_xy if frame.mpp_xy is not None else (1.0, 1.0)
        ty, tx = frame.translate_yx
        centre_yx = ((y0 + y1) / 2.0 * unit_y + ty, (x0 + x1) / 2.0 * unit_x + tx)
        extent_yx = (max((y1 - y0) * unit_y, 1e-9), max((x1 - x0) * unit_x, 1e-9))
        height, width = self._viewer.canvas.size
        zoom = _FILL * min(height / extent_yx[0], width / extent_yx[1])
        camera = self._viewer.camera
        camera.center = (*tuple(camera.center)[:-2], *centre_yx)
        camera.zoom = zoom

    # ------------------------------------------------------------------ decisions

    def decide(self, decision: str, class_name: str | None = None) -> None:
        """Record ``decision`` on the selected region (the first when none is selected)."""
        if self._review is None or not self._regions:
            return
        index = self.selected_index()
        index = 0 if index is None else index
        self._review.decide(self._regions[index], decision, class_name=class_name)
        self._fill(index)
        self._on_change()

    def _on_reclassify(self, class_name: str | None) -> None:
        if class_name:
            self.decide("accepted", class_name)

    def _on_reviewer(self, name: str) -> None:
        if self._review is not None:
            self._review.author = name.strip() or None

    def bind_keys(self) -> list[str]:
        """Bind :data:`KEYS` on the viewer; returns the keys bound (to unbind later)."""
        actions: dict[str, Callable[[], None]] = {
            "next": lambda: self.step(1),
            "previous": lambda: self.step(-1),
            "accept": lambda: self.decide("accepted"),
            "reject": lambda: self.decide("rejected"),
        }
        bound = []
        for action, key in KEYS.items():
            callback = actions[action]
            self._viewer.bind_key(key, lambda _viewer, cb=callback: cb(), overwrite=True)
            bound.append(key)
        return bound

    def unbind_keys(self) -> None:
        """Undo :meth:`bind_keys` (the widget is closing)."""
        for key in KEYS.values():
            with contextlib.suppress(KeyError, ValueError):
                self._viewer.bind_key(key, None)
