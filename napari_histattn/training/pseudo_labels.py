"""Pseudo-annotations from a slide-label model: the tiles it is surest of, written as the
GeoJSON that ``histattn train --annotations`` reads, so that a patch encoder can learn from
them (the second half of Campanella et al. 2019, where the CNN itself trains on the top
tiles).

A model trained from slide labels by instance MIL (:mod:`.instance_mil`) puts its most
suspicious tiles on the lesion, but its frozen features may not tell a lesion from a
look-alike. The tiles it scores give labels a pixel encoder can learn that difference from:

- a positive slide: its ``top_k`` most suspicious tiles, labelled the positive class
  (the second class);
- a benign slide: its ``hard_negatives`` most suspicious tiles (the look-alikes the model
  mistakes for lesion: every tile of a benign slide is benign) and ``random_negatives``
  other tissue tiles, labelled the benign class (the first).

Several models can vote (:func:`consensus_order`): each ranks a slide's tiles and a tile's
place is the sum of its ranks, so it leads only if every model puts it high. Models that
err differently, such as one on random and one on SSL features of the same tiles, agree
more often on the lesion than either does alone: on the small-lesion benchmark's 36
training slides, 37 of the 54 voted top-3 tiles were a lesion, against 30 and 24 for
either model alone (``benchmarks/learning_curve.py``). A pixel encoder trained on them
ranked the test slides at ROC AUC 0.70, against 0.69 and 0.50: cleaner, not yet clean.

Every other tile stays unlabelled. Each polygon is one tile's square in level-0 pixels, with
its tile margin in its properties; the file records the slide's mpp (so File > Open lays it
on the slide in micrometres) and its provenance names the checkpoint, so that a reviewer
opening it on the slide sees which tiles will train the encoder and why.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_histattn.errors import HistattnError
from napari_histattn.inference.features import (
    FeatureFile,
    FeatureFileError,
    feature_info,
    feature_path,
    read_features,
)
from napari_histattn.io.export.geojson import write_geojson
from napari_histattn.io.slide import open_slide
from napari_histattn.progress import Progress
from napari_histattn.training.datasets.layouts import LabelledData

__all__ = ["PseudoLabelConfig", "consensus_order", "pseudo_annotations", "tile_margins"]

#: What must agree between a feature file's encoder and the checkpoint's.
_ENCODER_KEYS = ("name", "weights_sha256", "random_seed", "dim")
#: Tiles scored at once.
_CHUNK = 8192


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Which tiles become pseudo-annotations (see the module docstring)."""

    top_k: int = 3
    hard_negatives: int = 8
    random_negatives: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.hard_negatives < 0 or self.random_negatives < 0:
            raise HistattnError(
                "pseudo-labels need top_k >= 1, hard_negatives >= 0 and random_negatives >= 0"
            )
        if self.hard_negatives + self.random_negatives == 0:
            raise HistattnError("pseudo-labels need some benign tiles (hard or random negatives)")


def tile_margins(model: Any, features: np.ndarray) -> np.ndarray:
    """``(n,)`` each tile's instance margin ``l1 - l0`` under a two-class bag model on
    cached features (its head on the tile alone, after its feature scaling)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), _CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(features[start : start + _CHUNK]))[None]
            logits = model.forward_features(x.float()).instance_logits
            if logits is None:
                raise HistattnError("this model has no per-tile (instance) logits to rank tiles")
            out.append((logits[0, :, 1] - logits[0, :, 0]).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _tile_feature(xy: np.ndarray, side: float, name: str, margin: float) -> dict[str, Any]:
    x, y = float(xy[0]), float(xy[1])
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name},
            "tile_margin": round(float(margin), 4),
        },
    }


def _checked_model(checkpoint: Path, data: LabelledData, features_dir: Path) -> Any:
    """The checkpoint loaded, once it is known to be a two-class bag model on the data's
    classes whose encoder made every slide's feature file in ``features_dir``."""
    from napari_histattn.models.checkpoint import load

    loaded = load(checkpoint, device="cpu")
    if getattr(loaded.model, "encoder", 0) is not None or len(loaded.class_names) != 2:
        raise HistattnError(
            f"{checkpoint.name}: pseudo-labels need a two-class amil checkpoint trained on "
            "cached features (histattn train --features ... --instance-mil)"
        )
    if list(loaded.class_names) != list(data.class_names):
        raise HistattnError(
            f"{checkpoint.name}: the checkpoint's classes {loaded.class_names} are not the "
            f"labels' {list(data.class_names)}"
        )
    files = [feature_path(features_dir, s.path) for s in data.samples]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise HistattnError(
            f"no features for {len(missing)} slide(s) in {features_dir} ({missing[0]} first)"
        )
    described = loaded.preprocessing.get("feature_encoder") or {}
    trained_on = {k: described.get(k) for k in _ENCODER_KEYS}
    for path in files:  # attributes only
        try:
            encoder = feature_info(path)["encoder"]
        except FeatureFileError as exc:
            raise HistattnError(f"{path.name}: {exc}") from exc
        made_by = {k: encoder.get(k) for k in _ENCODER_KEYS}
        if made_by != trained_on:
            raise HistattnError(
                f"{path.name} was made by encoder {made_by}, {checkpoint.name} was trained on "
                f"features of {trained_on}: give the features it was trained on"
            )
    return loaded


def consensus_order(margins: Sequence[np.ndarray]) -> np.ndarray:
    """Tile indices from the most to the least suspicious. One model: by its margin.
    Several: by the sum of each model's rank of the tile (0 = its most suspicious), ties
    by the first model's margin, so a tile leads only if every model puts it high."""
    first = np.asarray(margins[0], dtype=np.float64)
    if len(margins) == 1:
        return np.argsort(-first, kind="stable")
    ranks = [np.argsort(np.argsort(-np.asarray(m), kind="stable"), kind="stable") for m in margins]
    return np.lexsort((-first, np.sum(ranks, axis=0)))


def _read_tiles(dirs: Sequence[Path], slide: Path, features: bool = True) -> list[FeatureFile]:
    """A slide's feature files, one per model, which must hold the same tiles (with
    ``features=False`` their tiles only, for the check)."""
    try:
        cached = [read_features(feature_path(d, slide), features=features) for d in dirs]
    except FeatureFileError as exc:
        raise HistattnError(str(exc)) from exc
    for other, d in zip(cached[1:], dirs[1:], strict=True):
        if not np.array_equal(other.coords_l0_xy, cached[0].coords_l0_xy):
            raise HistattnError(
                f"{slide.name}: its features in {d} hold other tiles than in {dirs[0]}; "
                "models voted together must see the same tiles (the same tile size and "
                "tissue settings)"
            )
    return cached


def pseudo_annotations(
    checkpoint: str | Path | Sequence[str | Path],
    data: LabelledData,
    features_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    config: PseudoLabelConfig | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Write ``<slide stem>.geojson`` of pseudo-annotations for every slide of ``data`` into
    ``out_dir`` (see the module docstring), from ``checkpoint`` (two classes, trained on
    the cached features in ``features_dir``). Several checkpoints, each with its own
    features folder (the same tiles: for example random and SSL features of one tile
    size), vote: tiles are ranked by :func:`consensus_order`. Yields stage
    ``pseudo-labels`` once per slide; returns a summary (slides, tiles per class, the
    checkpoints).

    Raises
    ------
    HistattnError
        A checkpoint is not a two-class bag model on features, its classes are not the
        data's, a slide's feature file is missing, torn or made by another encoder, or
        the models' feature files hold different tiles: all are checked before anything
        is written.
    """
    config = config or PseudoLabelConfig()
    checkpoints = (
        [Path(checkpoint)] if isinstance(checkpoint, str | Path) else [Path(c) for c in checkpoint]
    )
    dirs = (
        [Path(features_dir)]
        if isinstance(features_dir, str | Path)
        else [Path(d) for d in features_dir]
    )
    if not checkpoints or len(checkpoints) != len(dirs):
        raise HistattnError(
            f"give one features folder per checkpoint ({len(checkpoints)} checkpoint(s), "
            f"{len(dirs)} folder(s))"
        )
    loaded = [_checked_model(c, data, d) for c, d in zip(checkpoints, dirs, strict=True)]
    if len(dirs) > 1:  # the voters' tiles agree on every slide before a file is written
        for sample in data.samples:
            _read_tiles(dirs, sample.path, features=False)
    benign, positive = loaded[0].class_names
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    counts = {benign: 0, positive: 0}
    voted = len(loaded) > 1
    for index, sample in enumerate(data.samples):
        cached = _read_tiles(dirs, sample.path)
        margins = [tile_margins(m.model, c.features) for m, c in zip(loaded, cached, strict=True)]
        order = consensus_order(margins)
        if int(sample.label) == 1:
            rows, name = order[: config.top_k], positive
        else:
            hard = order[: config.hard_negatives]
            rest = order[config.hard_negatives :]
            extra = rng.choice(rest, min(config.random_negatives, rest.size), replace=False)
            rows, name = np.concatenate([hard, extra]), benign
        counts[name] += int(rows.size)
        with open_slide(sample.path) as slide:  # its mpp: the file opens in micrometres
            mpp_xy = slide.mpp_xy
        features = []
        for r in rows:
            feature = _tile_feature(
                cached[0].coords_l0_xy[r], cached[0].tile_l0, name, margins[0][r]
            )
            if voted:
                feature["properties"]["tile_margins"] = [round(float(m[r]), 4) for m in margins]
            features.append(feature)
        collection = {
            "type": "FeatureCollection",
            "properties": {"mpp_xy": None if mpp_xy is None else [float(v) for v in mpp_xy]},
            "features": features,
        }
        rule = (
            f"top {config.top_k} of a {positive} slide; {config.hard_negatives} most "
            f"suspicious and {config.random_negatives} random tiles of a {benign} slide"
        )
        provenance: dict[str, Any] = {
            "source": "pseudo-labels",
            "checkpoint": checkpoints[0].name,
            "checkpoint_sha256": loaded[0].sha256,
            "rule": rule + (f"; ranked by the sum of {len(loaded)} models' ranks" if voted else ""),
        }
        if voted:
            provenance["checkpoints"] = [c.name for c in checkpoints]
            provenance["checkpoints_sha256"] = [m.sha256 for m in loaded]
        write_geojson(out / f"{sample.path.stem}.geojson", collection, provenance=provenance)
        yield Progress("pseudo-labels", index + 1, len(data.samples), sample.path.name)
    return {
        "slides": len(data.samples),
        "tiles": counts,
        "checkpoint_sha256": loaded[0].sha256,
        "checkpoints_sha256": [m.sha256 for m in loaded],
    }
