"""How the heatmaps look, and flipping between two models' results on one slide.

:class:`DisplayPanel` holds the colormap (every one with a transparent low end), the
contrast (default: the raw attention's full range, so that what the raw attention
tells apart stays apart on screen) and the opacity; :func:`apply_display` gives them to
every heatmap and side map on screen. The colour bar's ticks are raw values (the
heatmap layers hold the raw map); the canvas's text overlay names what it shows
(:func:`colour_bar_title`) from the top left, opposite the colour bar.

Compare: with two or more models' results on the chosen slide, the panel's flip button
(or ``/``) shows the next model's heatmap and regions and hides the others, so the two
maps alternate in the same place; the result panel states how their calls and top
regions differ.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider, Label, PushButton

from napari_histattn._napari.layers import set_visible
from napari_histattn._napari.result_layers import HEATMAP_OPACITY, heatmap_colormap
from napari_histattn.inference import heatmap_scale

__all__ = [
    "FLIP_KEY",
    "Display",
    "DisplayPanel",
    "apply_display",
    "colour_bar_title",
    "flip_target",
    "heatmap_layers",
    "show_only",
]

#: Key that flips between the models' results on the chosen slide.
FLIP_KEY = "/"
#: Result layer kinds drawn as heatmaps (the attention, further levels, explanations).
_SIDE = ("attention:", "explanation:")


@dataclass(frozen=True)
class Display:
    """How heatmaps are drawn."""

    colormap: str = heatmap_scale.DEFAULT_COLORMAP
    contrast: str = heatmap_scale.DEFAULT_CONTRAST
    opacity: float = HEATMAP_OPACITY


def heatmap_layers(shown: Any) -> list[Any]:
    """``shown``'s heatmap layers: the attention first, then its side maps."""
    layers = shown.layers
    kinds = ["heatmap", *(k for k in layers if k.startswith(_SIDE))]
    return [layers[k] for k in kinds if k in layers]


def apply_display(shown: Iterable[Any], display: Display) -> None:
    """Draw every heatmap of ``shown`` with ``display``'s colormap, contrast and opacity."""
    colormap = heatmap_colormap(display.colormap)
    for one in shown:
        for layer in heatmap_layers(one):
            layer.colormap = colormap
            layer.contrast_limits = heatmap_scale.contrast_limits(
                np.asarray(layer.data), display.contrast
            )
            layer.opacity = float(display.opacity)
            layer.metadata["contrast"] = display.contrast


def colour_bar_title(shown: Any | None) -> str:
    """What the colour bars on screen show: one line per visible heatmap of ``shown``, its
    title and the raw range between the ends of its ramp; ``""`` when none is visible."""
    if shown is None:
        return ""
    lines = []
    for layer in heatmap_layers(shown):
        if not layer.visible:
            continue
        limits = (float(layer.contrast_limits[0]), float(layer.contrast_limits[1]))
        contrast = str(layer.metadata.get("contrast", heatmap_scale.DEFAULT_CONTRAST))
        title = layer.name.removeprefix(f"{shown.source.name} ")
        lines.append(f"{title}: {heatmap_scale.scale_text(limits, contrast, 'value')}")
    return "\n".join(lines)


def flip_target(on_slide: list[Any], current_key: str | None) -> Any | None:
    """The result after ``current_key``'s among a slide's results (wrapping), or None with
    fewer than two."""
    if len(on_slide) < 2:
        return None
    keys = [one.key for one in on_slide]
    index = keys.index(current_key) if current_key in keys else -1
    return on_slide[(index + 1) % len(on_slide)]


def show_only(on_slide: list[Any], chosen: Any) -> None:
    """Show ``chosen``'s attention, regions and samples and hide the other results' layers
    on the slide (side maps keep their state on the chosen result; the others' are
    hidden)."""
    for one in on_slide:
        for kind, layer in one.layers.items():
            if one is not chosen:
                set_visible(layer, False)
            elif not kind.startswith(_SIDE):
                set_visible(layer, True)


def _colormap_choices(_widget: Any = None) -> list[str]:
    return list(heatmap_scale.COLORMAPS)


def _contrast_choices(_widget: Any = None) -> list[str]:
    return list(heatmap_scale.CONTRASTS)


class DisplayPanel(Container):
    """Colormap, contrast and opacity of the heatmaps, the colour bar's scale in words and
    the flip between models.

    Parameters
    ----------
    on_display
        Called with the new :class:`Display` when a control changes.
    on_flip
        Called when the flip button (or :data:`FLIP_KEY`) is pressed.
    """

    def __init__(
        self, viewer: Any, on_display: Callable[[Display], None], on_flip: Callable[[], None]
    ) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.colormap = ComboBox(
            label="heatmap colours",
            choices=_colormap_choices,
            value=heatmap_scale.DEFAULT_COLORMAP,
        )
        self.contrast = ComboBox(
            label="heatmap contrast",
            choices=_contrast_choices,
            value=heatmap_scale.DEFAULT_CONTRAST,
        )
        self.contrast.tooltip = "\n".join(f"{k}: {v}" for k, v in heatmap_scale.CONTRASTS.items())
        self.opacity = FloatSlider(
            label="heatmap opacity", min=0.0, max=1.0, step=0.05, value=HEATMAP_OPACITY
        )
        # Explicit line breaks, no word wrap: a wrapped label in this form layout was given
        # the height of one line and cut its text.
        self.scale = Label(label="colour bar", value="—")
        self.flip = PushButton(label="", text=f"Flip to the other model's result ({FLIP_KEY})")
        self.flip.enabled = False
        self.extend([self.colormap, self.contrast, self.opacity, self.scale, self.flip])
        self._on_display = on_display
        self._on_flip = on_flip
        for control in (self.colormap, self.contrast, self.opacity):
            control.changed.connect(lambda _v: self._on_display(self.display()))
        self.flip.changed.connect(lambda _v: self._on_flip())

    def display(self) -> Display:
        """The settings as the controls show them."""
        return Display(
            colormap=str(self.colormap.value),
            contrast=str(self.contrast.value),
            opacity=float(self.opacity.value),
        )

    def show_scale(self, shown: Any | None, models_on_slide: int) -> None:
        """State the colour bars' scale for ``shown`` in the panel and on the canvas (the text
        overlay at the top left), and enable the flip with two or more models."""
        title = colour_bar_title(shown)
        # Each heatmap's name, then its range, then the contrast, on lines of their own: the
        # panel's column and the canvas's corner both stay narrow.
        canvas_lines: list[str] = []
        panel_lines: list[str] = []
        for line in title.splitlines():
            name, scale = line.split(": ", 1)
            values, contrast = scale.rsplit(" (", 1)
            canvas_lines += [name, scale]
            # a fine-tuned model's name is long: wrapped at a dash or plus, never cut
            panel_lines += [*textwrap.wrap(name, 30), values, f"({contrast}"]
        # Always shown ("—" without a heatmap): a label appearing changed the dock's layout,
        # and the canvas redrew at once within it (0.7 s on the first result here).
        self.scale.value = "\n".join(panel_lines) or "—"
        self.flip.enabled = models_on_slide >= 2
        with contextlib.suppress(KeyError, AttributeError):
            text = self._viewer.canvas.overlays["text"]
            # The colour bar keeps the top right; overlays sharing a corner are set side by
            # side, and a long title there pushed the colour bar off the canvas. Each set
            # only when it changes: every assignment redraws the canvas's overlays.
            wanted = {
                "text": "\n".join(canvas_lines),
                "position": "top_left",
                "font_size": 9,
                "visible": bool(title),
            }
            for name, value in wanted.items():
                if getattr(text, name) != value:
                    setattr(text, name, value)

    def bind_keys(self) -> None:
        """Bind :data:`FLIP_KEY` on the viewer."""
        self._viewer.bind_key(FLIP_KEY, lambda _viewer: self._on_flip(), overwrite=True)

    def unbind_keys(self) -> None:
        """Undo :meth:`bind_keys` (the widget is closing)."""
        with contextlib.suppress(KeyError, ValueError):
            self._viewer.bind_key(FLIP_KEY, None)
