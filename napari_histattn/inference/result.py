"""What a classification returns: :class:`ClassificationResult` and :class:`SampledLocations`.

GUI-free and torch-free (NumPy, shapely through :mod:`napari_histattn.io.regions`),
so that the widget, the CLI and the exporters can hold and pass results around
without importing torch.

Frames: everything is in level-0 pixels of the slide (``l0_xy``, x first). The
attention map is a ``(rows, cols)`` grid whose :class:`~napari_histattn.io.regions.GridGeometry`
places cell ``(r, c)`` on the patch at ``origin + (c * stride_x, r * stride_y)``
of size ``patch``; :func:`napari_histattn.inference.outputs.heatmap_napari_geometry`
turns that into napari's scale and translate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import Point

from napari_histattn.inference.integrity import UNREADABLE_LIMIT
from napari_histattn.io.regions import (
    DEFAULT_CLASS_NAME,
    GridGeometry,
    Patch,
    Region,
    percentile_normalise,
    threshold_regions,
)
from napari_histattn.models.family import SampledLocations

#: How each post-hoc explanation method is titled on screen.
EXPLANATION_TITLES = {
    "gradcam": "Grad-CAM",
    "guided_gradcam": "guided Grad-CAM",
    "saliency": "saliency",
}


@dataclass(frozen=True)
class SideMap:
    """A map beside the attention, on its grid: one of the model's further attention levels
    or a post-hoc explanation.

    Attributes
    ----------
    key
        ``"attention:<name>"`` or ``"explanation:<method>"``.
    stem
        Its files' name without the suffix (``attention-word``, ``explanation-gradcam``).
    title
        What a layer showing it is called (``word attention``, ``Grad-CAM``).
    values
        ``(rows, cols)`` float32, NaN where the attention is.
    """

    key: str
    stem: str
    title: str
    values: NDArray[np.float32]


@dataclass
class ClassificationResult:
    """The outcome of :func:`napari_histattn.inference.engine.classify` on one slide.

    Attributes
    ----------
    class_names
        Class names in logit order.
    probabilities
        ``(C,)`` float64 slide-level class probabilities (sum to 1).
    attention
        ``(rows, cols)`` float32 attention map; ``NaN`` where there is no tissue
        (or, for A-MIL and the attention CNN, no tile was classified). Values are
        the model's own (softmax weights for attention sampling and A-MIL; see the
        engine for the attention CNN); use :meth:`normalised_attention` for display.
    geometry
        Where the grid lies on the slide, in level-0 pixels.
    patches
        The patches with their attention (and class probabilities where the
        model gives per-patch ones): the sampled patches for attention sampling,
        one per attention cell otherwise.
    regions
        The top-k attended regions (thresholded connected components of the
        percentile-normalised map), best first, classified by their own
        evidence (see :func:`make_regions`), else ``"Attention"``.
    provenance
        Package version, model, checkpoint path and SHA-256, seed, device, slide
        path and quickhash, mpp and level used, timings, UTC time...
    family
        ``"sampling"``, ``"mil"`` or ``"image"``.
    samples
        Attention sampling only: the drawn locations.
    cell_probs
        ``(rows, cols, C)`` per-cell class probabilities (NaN outside), when the
        model gives them (A-MIL, attention CNN); used to classify regions.
    threshold, top_k
        The settings the regions were made with.
    unreadable
        ``(len(patches),)`` bool: the patches that overlap a tile that could not be
        decoded (read as grey placeholders); None when every tile decoded. Its share
        is ``provenance["unreadable_fraction"]`` (see :meth:`unreliable_reason`).
    explanations
        Post-hoc explanations asked for, by method, on the attention's grid.
    attention_maps
        The model's further attention levels, by name (HATNet's ``"word"`` and
        ``"region"``), on the attention's grid.
    """

    class_names: list[str]
    probabilities: NDArray[np.float64]
    attention: NDArray[np.float32]
    geometry: GridGeometry
    patches: Sequence[Patch]
    regions: list[Region]
    provenance: dict[str, Any]
    family: str
    samples: SampledLocations | None = None
    cell_probs: NDArray[np.float64] | None = field(default=None, repr=False)
    threshold: float = 0.5
    top_k: int | None = 5
    unreadable: NDArray[np.bool_] | None = field(default=None, repr=False)
    explanations: dict[str, NDArray[np.float32]] = field(default_factory=dict, repr=False)
    attention_maps: dict[str, NDArray[np.float32]] = field(default_factory=dict, repr=False)

    def side_maps(self) -> list[SideMap]:
        """The further attention levels, then the explanations, as :class:`SideMap`."""
        maps = [
            SideMap(f"attention:{name}", f"attention-{name}", f"{name} attention", values)
            for name, values in self.attention_maps.items()
        ]
        return maps + [
            SideMap(
                f"explanation:{method}",
                f"explanation-{method}",
                EXPLANATION_TITLES.get(method, method),
                values,
            )
            for method, values in self.explanations.items()
        ]

    @property
    def predicted_index(self) -> int:
        """Index of the most probable class."""
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        """Name of the most probable class."""
        return self.class_names[self.predicted_index]

    @property
    def probabilities_by_class(self) -> dict[str, float]:
        """Class name to probability."""
        return {n: float(p) for n, p in zip(self.class_names, self.probabilities, strict=True)}

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the attention map."""
        return int(self.attention.shape[0]), int(self.attention.shape[1])

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """The slide's level-0 micrometres per pixel (None when unknown)."""
        mpp = self.provenance.get("slide_mpp_xy")
        return None if mpp is None else (float(mpp[0]), float(mpp[1]))

    def normalised_attention(self, lo: float = 1.0, hi: float = 99.0) -> NDArray[np.float64]:
        """The map scaled to [0, 1] between two percentiles of its finite values (NaN kept)."""
        return percentile_normalise(self.attention, lo, hi)

    def regions_at(self, threshold: float, top_k: int | None = None) -> list[Region]:
        """Regions for another threshold (the widget's slider), without rerunning the model.

        Parameters
        ----------
        threshold
            Threshold on the percentile-normalised attention, 0 to 1.
        top_k
            Keep the best ``top_k``; None keeps all.
        """
        return make_regions(self, threshold, top_k)

    def top_cell(self) -> tuple[int, int]:
        """``(row, col)`` of the cell with the highest finite attention."""
        finite = np.where(np.isfinite(self.attention), self.attention, -np.inf)
        r, c = np.unravel_index(int(np.argmax(finite)), finite.shape)
        return int(r), int(c)

    def cell_center_l0_xy(self, r: int, c: int) -> tuple[float, float]:
        """Centre of cell ``(r, c)``'s patch in level-0 pixels."""
        x, y, w, h = self.geometry.cell_l0_xywh(r, c)
        return x + w / 2.0, y + h / 2.0

    @property
    def unreadable_fraction(self) -> float:
        """Share of the patches the model read that came from undecodable tiles."""
        return float(self.provenance.get("unreadable_fraction") or 0.0)

    def unreliable_reason(self) -> str | None:
        """Why this result is not a diagnosis (too many placeholder pixels), else None."""
        share = self.unreadable_fraction
        limit = float(self.provenance.get("unreadable_limit", UNREADABLE_LIMIT))
        if share <= limit:
            return None
        return (
            f"{share:.1%} of what the model read came from tiles that could not be decoded "
            f"(shown mid-grey; limit {limit:.0%}): the slide file is damaged, do not use this call"
        )

    def evidence_lines(self) -> list[str]:
        """What a reviewer reads beside the probabilities: how the slide call was made,
        the attention-weighted patch probability against the most confident patch (so that
        "one small region, very confident" reads as such), the calibration, and the spread
        over sampling rounds when the model samples."""
        prov = self.provenance
        # The class the evidence is about: the positive class of a two-class model.
        index = 1 if len(self.class_names) == 2 else self.predicted_index
        name = self.class_names[index]
        lines = [f"warning: {text}" for text in prov.get("domain_warnings") or ()]
        ood = prov.get("ood")
        if ood:
            lines.append(
                f"out-of-distribution score {float(ood['score']):.2f} (tile features against "
                f"training; 1.0 = the most unusual 5 % of {ood['n_held_out']} held-out slides)"
            )
        if prov.get("glass_warning"):
            lines.append(f"warning: {prov['glass_warning']}")
        tiles = int(prov.get("unreadable_tiles") or 0)
        if tiles:
            lines.append(
                f"{tiles} undecodable tile(s) read as grey: {self.unreadable_fraction:.1%} of the "
                "patches the model read"
            )
        rule = prov.get("decision")
        if rule and rule != "attention":
            k = prov.get("decision_k", 1)
            lines.append(
                f"call: top-{k} patch evidence" + (" or attention" if rule == "max" else "")
            )
        lines += _tile_call_lines(prov)
        threshold = float(prov.get("decision_threshold") or 0.0)
        if threshold:
            lines.append(f"called {name} above margin {threshold:+.2f} (set on validation data)")
        weighted, top = (
            prov.get("attention_weighted_patch_probability"),
            prov.get("top_patch_probability"),
        )
        if weighted is not None and top is not None:
            lines.append(
                f"p({name}): attention-weighted patches {float(weighted[index]):.3f}, "
                f"most confident patch {float(top[index]):.3f}"
            )
        levels = [side.title for side in self.side_maps() if side.key.startswith("attention:")]
        if prov.get("region_size") and levels:  # HATNet
            k = int(prov["region_size"])
            lines.append(
                f"attention = word x region ({prov.get('n_regions')} regions of {k} x {k} "
                f"tiles); layers: {', '.join(levels)}"
            )
        elif levels:
            lines.append(f"further attention layers: {', '.join(levels)}")
        spread = prov.get("probability_spread")
        if spread is not None:
            lines.append(
                f"over {prov.get('sampling_rounds')} sampling rounds p({name}) "
                f"{float(spread['min'][index]):.3f}-{float(spread['max'][index]):.3f}"
                + (" - unstable, review" if spread.get("unstable") else "")
            )
        t = prov.get("calibration_temperature")
        if t is not None and float(t) != 1.0:
            lines.append(f"calibrated on validation data (temperature {float(t):.2f})")
        return lines

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (no per-cell arrays)."""
        return {
            "predicted_class": self.predicted_class,
            "predicted_index": self.predicted_index,
            "class_names": list(self.class_names),
            "probabilities": self.probabilities_by_class,
            "family": self.family,
            "geometry": geometry_dict(self.geometry, self.grid_shape),
            "threshold": self.threshold,
            "top_k": self.top_k,
            "n_patches": len(self.patches),
            "regions": [
                {
                    "rank": r.rank,
                    "name": r.name,
                    "class_name": r.class_name,
                    "bounds_l0_xyxy": list(r.polygon.bounds),
                    "measurements": {
                        k: float(v) for k, v in r.measurements.items() if math.isfinite(float(v))
                    },
                }
                for r in self.regions
            ],
            "samples": None if self.samples is None else self.samples.to_dict(),
            "unreadable_fraction": self.unreadable_fraction,
            "unreliable": self.unreliable_reason(),
            "provenance": self.provenance,
        }


def geometry_dict(geometry: GridGeometry, shape: Sequence[int]) -> dict[str, Any]:
    """The grid geometry and shape as JSON-ready values (level-0 pixels)."""
    return {
        "origin_l0_xy": list(geometry.origin_l0_xy),
        "stride_l0_xy": list(geometry.stride_l0_xy),
        "patch_l0_wh": list(geometry.patch_l0_wh),
        "shape_rc": [int(shape[0]), int(shape[1])],
    }


def make_regions(result: ClassificationResult, threshold: float, top_k: int | None) -> list[Region]:
    """Threshold ``result``'s percentile-normalised attention into ranked regions.

    A region is where the model looked, not a diagnosis, so its class comes from
    evidence about that region only:

    - A-MIL and the attention CNN: the attention-weighted mean of the per-cell
      class probabilities (:func:`~napari_histattn.io.regions.threshold_regions`);
    - attention sampling: the classifier applied to the mean feature of the
      samples drawn inside the region (each weighted by its number of draws),
      with measurement ``n_samples``: the model's own pooling, restricted to the
      region. The model was trained to classify pooled features, never single
      patches, so this is the question it can answer. The classifier is linear,
      so it is the softmax of the mean per-patch log-probabilities;
    - otherwise (no sample inside the region, or no per-patch probabilities):
      the neutral class ``"Attention"`` and no ``prob_<class>`` measurement.

    The slide's predicted class is never copied onto a region.
    """
    has_probs = result.cell_probs is not None
    regions = threshold_regions(
        result.attention,
        result.geometry,
        threshold,
        class_name=None if has_probs else DEFAULT_CLASS_NAME,
        class_names=result.class_names if has_probs else None,
        cell_probs=result.cell_probs,
        mpp_xy=result.mpp_xy,
        top_k=top_k,
    )
    if has_probs or result.samples is None:
        return regions
    return [_classified_by_samples(result, region) for region in regions]


def _classified_by_samples(result: ClassificationResult, region: Region) -> Region:
    """``region`` classified by the sampled patches whose attention cell lies inside it."""
    samples = result.samples
    assert samples is not None
    probs = np.full((len(samples), len(result.class_names)), np.nan)
    for j, patch in enumerate(result.patches[: len(samples)]):
        if set(patch.probs) == set(result.class_names):
            probs[j] = [patch.probs[name] for name in result.class_names]
    inside = np.asarray(
        [
            region.polygon.contains(Point(*result.cell_center_l0_xy(int(r), int(c))))
            for r, c in samples.grid_rc
        ],
        dtype=bool,
    ).reshape(-1)
    inside &= np.isfinite(probs).all(axis=1)
    weights = samples.counts[inside].astype(np.float64)
    if weights.sum() <= 0:
        return region
    log_p = np.log(np.clip(probs[inside], 1e-300, None))
    mean_log = (weights[:, None] * log_p).sum(axis=0) / weights.sum()
    mean_probs = np.exp(mean_log - mean_log.max())
    mean_probs /= mean_probs.sum()
    measurements = dict(region.measurements)
    measurements["n_samples"] = float(weights.sum())
    for name, p in zip(result.class_names, mean_probs, strict=True):
        measurements[f"prob_{name}"] = float(p)
    return replace(
        region,
        class_name=str(result.class_names[int(np.argmax(mean_probs))]),
        color_rgb=None,
        measurements=measurements,
    )


def _tile_call_lines(prov: Mapping[str, Any]) -> list[str]:
    """A patch classifier's call in words, and its tiles of each class after the first
    (the share and the most confident one, so one small confident focus reads as such)."""
    calls = prov.get("tile_calls")
    if not isinstance(calls, Mapping):
        return []
    lines = [f"call: {prov['slide_probability']}"] if prov.get("slide_probability") else []
    for name, c in list(calls.items())[1:]:
        lines.append(
            f"{name} tiles: {int(c['tiles'])} ({float(c['fraction']):.1%}), "
            f"max p {float(c['max_probability']):.2f}"
        )
    return lines
