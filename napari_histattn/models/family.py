"""Model families as plug-ins: what a family declares, and the registry that finds it.

A family is one module or small package (``models/dafl.py``, ``models/amil/``,
``models/attention_sampling/``) that registers its builders with
:func:`~napari_histattn.models.registry.register_model` and declares one
:class:`Family` with :func:`register_family`:

- ``models``: the registry names it owns (a checkpoint's ``model_name`` picks the family);
- ``run``: how it runs over a slide, a generator ``run(ctx)`` that yields
  :class:`~napari_histattn.progress.Progress` and returns a :class:`SlideOutput`.
  ``ctx`` is the engine's :class:`~napari_histattn.inference.runtime.SlideRun`:
  every slide access (views, tissue tiles, patch reading, progress, the model
  call) goes through it, so a family module never imports ``io`` and the engine
  holds no per-family branch;
- ``task``: its training adapter (:class:`~napari_histattn.models.tasks.Task`:
  how a batch is collated and the model called), built from :class:`TaskOptions`;
- ``input``: the kind of training data it consumes (``"image"``: fixed-size
  images, ``"mil"``: bags of tissue tiles, ``"sampling"``: a low-resolution view
  plus a high-resolution patch source); :mod:`napari_histattn.training.datasets`
  builds one dataset per kind, so a new family that eats images or bags needs no
  new data code;
- ``default_batch_size`` and ``params``: the run parameters the widget and the
  CLI show (:class:`FamilyParam`, with label, help, bounds and a default read
  from the checkpoint's metadata).

To add a family, write its module and add it to
:data:`napari_histattn.models.families.FAMILY_MODULES` (one line). This module
imports no torch, so the widget and the CLI can read declarations cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from napari_histattn.errors import HistattnError
from napari_histattn.models.validation import INT_FIELDS

if TYPE_CHECKING:
    from napari_histattn.models.tasks import Task
    from napari_histattn.progress import Progress

__all__ = [
    "Family",
    "FamilyParam",
    "SampledLocations",
    "SlideOutput",
    "TaskOptions",
    "family_for_model",
    "get_family",
    "list_families",
    "register_family",
    "subset",
    "tile_info",
    "tile_params",
]

#: ``default(config, preprocessing) -> value``: a parameter's value for one checkpoint.
DefaultFn = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class FamilyParam:
    """One run parameter a family shows in the widget and accepts from the CLI.

    ``seed``, ``n_patches`` and ``patch_size`` are also keywords of
    :func:`~napari_histattn.inference.engine.classify`; any other name reaches
    the family as ``ctx.param(name)`` (``classify(..., params={name: value})``,
    ``histattn classify --param name=value``).

    Attributes
    ----------
    name
        Identifier (``n_patches``).
    label
        Text beside the widget's control.
    help
        One sentence for the tooltip and ``histattn families``.
    default
        ``default(config, preprocessing)``: the value for a checkpoint, from its
        model configuration and preprocessing.
    minimum, maximum
        Bounds (inclusive).
    kind
        ``int`` or ``float``.
    applies
        ``applies(config, preprocessing)``: whether the parameter means anything for a
        checkpoint (``None``: always). The widget hides, and the engine ignores with a
        note, a parameter that does not apply.
    """

    name: str
    label: str
    help: str
    default: DefaultFn
    minimum: float = 0
    maximum: float = 2**31 - 1
    kind: type = int
    applies: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None

    def applies_to(self, config: Mapping[str, Any], pre: Mapping[str, Any]) -> bool:
        """Whether this parameter means anything for a checkpoint."""
        return self.applies is None or bool(self.applies(config, pre))

    def value_from(self, config: Mapping[str, Any], pre: Mapping[str, Any]) -> Any:
        """The default for a checkpoint with this configuration and preprocessing."""
        return self.kind(self.default(config, pre))

    def check(self, value: Any) -> Any:
        """``value`` as this parameter's kind within its bounds, else :class:`HistattnError`."""
        try:
            number = self.kind(value)
        except (TypeError, ValueError, OverflowError):
            raise HistattnError(
                f"parameter {self.name!r} must be {self.kind.__name__}, got {value!r}"
            ) from None
        if not (self.minimum <= number <= self.maximum):
            raise HistattnError(
                f"parameter {self.name!r} must be within {_shown(self.minimum)}-{_shown(self.maximum)}, "
                f"got {value!r}"
            )
        return number


@dataclass(frozen=True)
class TaskOptions:
    """What a family's training adapter may need to know about the data.

    Attributes
    ----------
    mean, std
        Per-channel normalisation of the inputs (``None``: inputs in [0, 1]).
    chunk_size
        Patches encoded at once by bag models (bounds activation memory).
    """

    mean: list[float] | None = None
    std: list[float] | None = None
    chunk_size: int | None = 256


@dataclass(frozen=True)
class SampledLocations:
    """The locations attention sampling drew, one row per distinct location.

    Attributes
    ----------
    centers_l0_xy
        ``(m, 2)`` float64 patch centres in level-0 pixels.
    origins_l0_xy
        ``(m, 2)`` int64 top-left corners of the patches that were read.
    grid_rc
        ``(m, 2)`` int64 cell (row, col) on the attention grid.
    attention
        ``(m,)`` float64 attention of each location's cell.
    counts
        ``(m,)`` int64 number of draws of each location (1 without replacement).
    patch_l0_wh
        Size of every patch in level-0 pixels.
    """

    centers_l0_xy: NDArray[np.float64]
    origins_l0_xy: NDArray[np.int64]
    grid_rc: NDArray[np.int64]
    attention: NDArray[np.float64]
    counts: NDArray[np.int64]
    patch_l0_wh: tuple[float, float]

    def __len__(self) -> int:
        return int(self.centers_l0_xy.shape[0])

    @property
    def n_draws(self) -> int:
        """Total number of draws (the model's ``n_patches``)."""
        return int(self.counts.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists."""
        return {
            "centers_l0_xy": self.centers_l0_xy.tolist(),
            "origins_l0_xy": self.origins_l0_xy.tolist(),
            "grid_rc": self.grid_rc.tolist(),
            "attention": self.attention.tolist(),
            "counts": self.counts.tolist(),
            "patch_l0_wh": list(self.patch_l0_wh),
        }


@dataclass
class SlideOutput:
    """What a family's ``run`` returns; the engine adds regions and provenance.

    Frames are level-0 pixels (x first). The attention grid starts at the
    slide's origin and its cells are squares of ``cell_l0`` level-0 pixels
    (stride = size).

    Attributes
    ----------
    probabilities
        ``(C,)`` slide-level class probabilities.
    attention
        ``(rows, cols)`` float32 attention map; NaN where the model did not look.
    cell_l0
        Side of one grid cell in level-0 pixels.
    cell_probs
        Optional ``(rows, cols, C)`` per-cell class probabilities.
    patches
        ``(xy_l0 (n, 2), wh_l0 (n, 2), attention (n,), probs (n, C))`` of the
        patch table, or ``None`` for one row per finite grid cell.
    samples
        The sampled locations (attention sampling), else ``None``.
    info
        Family-specific provenance; must contain ``"downsample"`` (level-0
        pixels per model pixel). ``"round_probabilities"`` (``(rounds, C)``, a
        sampling family's per-round slide probabilities) makes the engine report
        their spread after calibration.
    explanations
        Post-hoc explanations asked for (``ctx.explain``), by method name: maps on the
        attention's grid (NaN where it is), so that they overlay as it does.
    attention_maps
        The model's further attention maps on the same grid, by name (HATNet's
        ``"word"`` and ``"region"`` levels, MLDAM's per-level maps), shown beside
        ``attention`` as their own layers.
    """

    probabilities: NDArray[np.float64]
    attention: NDArray[np.float32]
    cell_l0: float
    cell_probs: NDArray[np.float64] | None = None
    patches: tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]] | None = None
    samples: SampledLocations | None = None
    info: dict[str, Any] = field(default_factory=dict)
    explanations: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    attention_maps: dict[str, NDArray[np.float32]] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A model family's declaration (see the module docstring).

    Attributes
    ----------
    name
        Family name, recorded in provenance (``"mil"``).
    models
        Registry names of the models it runs.
    run
        ``run(ctx) -> Generator[Progress, None, SlideOutput]``.
    task
        ``task(TaskOptions) -> Task``: the training adapter.
    input
        Training data kind (``"image"``, ``"mil"`` or ``"sampling"``).
    default_batch_size
        Patches (or tiles) per model call when the user gives none.
    params
        Run parameters shown by the widget and the CLI.
    description
        One line for ``histattn families``.
    explains
        Whether ``run`` computes the post-hoc explanations that ``ctx.explain`` asks for
        (:attr:`SlideOutput.explanations`).
    explain_refusal
        ``explain_refusal(config, preprocessing)``: why a checkpoint of an explaining
        family cannot be explained (a sentence), or None when it can (``None``: all can).
    bag_positions
        ``input="mil"`` only: whether the bags carry each tile's grid (row, col), items
        ``(bag, positions, [tile labels,] label)`` (HATNet groups tiles into regions).
    """

    name: str
    models: tuple[str, ...]
    run: Callable[[Any], Generator[Progress, None, SlideOutput]]
    task: Callable[[TaskOptions], Task]
    input: str
    default_batch_size: int
    params: tuple[FamilyParam, ...] = ()
    description: str = ""
    explains: bool = False
    explain_refusal: Callable[[Mapping[str, Any], Mapping[str, Any]], str | None] | None = None
    bag_positions: bool = False

    def param(self, name: str) -> FamilyParam | None:
        """The declared parameter called ``name``, or ``None``."""
        return next((p for p in self.params if p.name == name), None)

    def cannot_explain(self, config: Mapping[str, Any], pre: Mapping[str, Any]) -> str | None:
        """Why a checkpoint with this configuration gets no post-hoc explanations, or None."""
        if not self.explains:
            return f"model family {self.name!r} computes no post-hoc explanations yet"
        return None if self.explain_refusal is None else self.explain_refusal(config, pre)

    def defaults(self, config: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
        """The default of every parameter that applies to a checkpoint with this configuration."""
        return {p.name: p.value_from(config, pre) for p in self.params if p.applies_to(config, pre)}


def tile_params(patch_size: DefaultFn) -> tuple[FamilyParam, FamilyParam]:
    """``n_patches`` (a cap on tiles, 0: all) and ``patch_size`` for families that read tissue tiles.

    ``patch_size(config, preprocessing)`` gives the checkpoint's tile side.
    """
    return (
        FamilyParam(
            "n_patches",
            "max tiles (0 = all)",
            "at most this many tissue tiles, evenly spaced over the slide (0: every tile)",
            default=lambda config, pre: 0,
        ),
        FamilyParam(
            "patch_size",
            "patch size (px)",
            "tile side in model pixels",
            patch_size,
            1,
            INT_FIELDS["patch_size"][1],  # as a checkpoint's patch_size
            # A model trained on cached features takes its encoder's tiles.
            applies=lambda config, pre: pre.get("input") != "features",
        ),
    )


def tile_info(downsample: float, patch_size: int, n_read: int, n_tissue: int) -> dict[str, Any]:
    """The provenance every tile-reading family records (:attr:`SlideOutput.info`)."""
    return {
        "downsample": downsample,
        "patch_size": patch_size,
        "n_patches": n_read,
        "n_tissue_tiles": n_tissue,
    }


_FAMILIES: dict[str, Family] = {}
_BY_MODEL: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Register ``family``; a duplicate family or model name raises ``ValueError``."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    taken = [m for m in family.models if m in _BY_MODEL]
    if taken:
        raise ValueError(f"model(s) {taken} already belong to family {_BY_MODEL[taken[0]].name!r}")
    _FAMILIES[family.name] = family
    for model in family.models:
        _BY_MODEL[model] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests that register their own use this to clean up)."""
    family = _FAMILIES.pop(name, None)
    for model in family.models if family else ():
        _BY_MODEL.pop(model, None)


def _ensure_imported() -> None:
    from napari_histattn.models import families  # noqa: F401  (registers the built-ins)


def list_families() -> list[Family]:
    """Every registered family, by name."""
    _ensure_imported()
    return [_FAMILIES[name] for name in sorted(_FAMILIES)]


def get_family(name: str) -> Family:
    """The family called ``name``; ``KeyError`` naming the known ones otherwise."""
    _ensure_imported()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}") from None


def family_for_model(model_name: str) -> Family | None:
    """The family that runs registry model ``model_name``, or ``None``."""
    _ensure_imported()
    return _BY_MODEL.get(model_name)


def runnable_models() -> list[str]:
    """Every model name some family runs, sorted."""
    _ensure_imported()
    return sorted(_BY_MODEL)


def subset(n: int, cap: int | None) -> NDArray[np.int64]:
    """All of ``range(n)``, or an evenly spaced subset of at most ``cap`` (as evaluation does).

    ``cap`` of ``None`` or 0 means all.
    """
    if not cap or n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, max(1, cap)).round().astype(np.int64))


def softmax64(logits: Any) -> NDArray[np.float64]:
    """Softmax over the last axis of a torch tensor, in float64, as NumPy."""
    import torch

    probs: NDArray[np.float64] = torch.softmax(logits.detach().double(), dim=-1).cpu().numpy()
    return probs


def _shown(bound: float) -> str:
    """A bound as a user reads it: 2147483647, not 2.14748e+09."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"
