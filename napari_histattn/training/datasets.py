"""Training data: layouts on disk, and the torch datasets that read them.

Layouts (each parsed into a :class:`LabelledData`, the list of labelled files
with a patient/group id used by the patient-wise splits):

``imagefolder``
    One sub-folder per class (class names are the sorted folder names), images
    inside, for example the Kather 2016 sample. Each image is its own group
    unless ``group_regex`` extracts a patient/slide id from the file name.
``breakhis``
    BreakHis file names ``SOB_<B|M>_<type>-<yy>-<slide>-<mag>-<seq>.png`` anywhere
    below the root: class benign/malignant (or the eight tumour types),
    patient ``<yy>-<slide>``, optional magnification filter.
``slides``
    A CSV with columns ``slide,label`` (optional ``patient``); slide paths are
    relative to the CSV. Used by A-MIL (bags of tissue patches) and attention
    sampling (a low-resolution view plus a slide-backed patch source).

Datasets return float tensors in [0, 1], augmented (when training) and then
normalised with a mean/std that the checkpoint records.
"""

from __future__ import annotations

import csv
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.errors import HistattnError
from napari_histattn.inference.patches import (
    SlidePatchSource,
    TilePlan,
    TissueSettings,
    plan_tiles,
    read_tiles,
    read_view,
    target_downsample,
)
from napari_histattn.training.transforms import (
    Augment,
    Normalise,
    as_triple,
    mean_std,
    sample_generator,
    to_float_tensor,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Names accepted by :func:`load_layout` (``csv`` is ``slides`` for any labelled files).


class DatasetError(HistattnError):
    """Training data cannot be used: empty, one class, or unparsable names.

    Parameters
    ----------
    path
        The folder or file concerned.
    cause
        What is wrong and how to fix it.
    """

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot use training data {str(self.path)!r}: {cause}")


@dataclass(frozen=True)
class Sample:
    """One labelled file.

    Attributes
    ----------
    path
        Image or slide file.
    label
        Index into the class names.
    group
        Patient (or slide) id; splits never put one group on two sides.
    subtype
        BreakHis tumour type code (``A``, ``F``, ``PT``, ``TA``, ``DC``, ``LC``,
        ``MC``, ``PC``), else None.
    magnification
        BreakHis magnification (40, 100, 200, 400), else None.
    """

    path: Path
    label: int
    group: str
    subtype: str | None = None
    magnification: int | None = None


@dataclass
class LabelledData:
    """Labelled files of one layout.

    Attributes
    ----------
    layout
        ``"imagefolder"``, ``"breakhis"``, ``"slides"`` or ``"synthetic"``.
    root
        The folder or CSV the data came from.
    class_names
        Class names in label order.
    samples
        The labelled files.
    """

    layout: str
    root: Path
    class_names: list[str]
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """``(n,)`` int64 labels."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        """Patient/group id per sample."""
        return [s.group for s in self.samples]

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledData:
        """The samples at ``indices`` (class names unchanged)."""
        return replace(self, samples=[self.samples[int(i)] for i in indices])

    def summary(self) -> dict[str, Any]:
        """Counts per class and number of groups, for the checkpoint's metadata."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        mags = sorted({s.magnification for s in self.samples if s.magnification is not None})
        out: dict[str, Any] = {
            "layout": self.layout,
            "source": str(self.root),
            "n_samples": len(self.samples),
            "n_groups": len(set(self.groups)),
            "class_counts": {n: int(c) for n, c in zip(self.class_names, counts, strict=True)},
        }
        if mags:
            out["magnifications"] = mags
        return out


def _require_classes(data: LabelledData, min_classes: int = 2) -> LabelledData:
    if not data.samples:
        raise DatasetError(data.root, "no labelled images or slides were found")
    present = sorted({s.label for s in data.samples})
    if len(present) < min_classes:
        only = data.class_names[present[0]]
        raise DatasetError(
            data.root,
            f"all {len(data.samples)} samples belong to one class ({only!r}); "
            "training a classifier needs at least two classes",
        )
    return data


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def scan_image_folder(
    root: str | Path,
    group_regex: str | None = None,
    min_classes: int = 2,
) -> LabelledData:
    """Read an image-folder layout: one sub-folder per class.

    Parameters
    ----------
    root
        Folder whose sub-folders are the classes (sorted names = label order).
    group_regex
        Optional regular expression searched in each file name; its first
        capture group (or the whole match) is the patient/slide id. Without it
        each image is its own group.
    min_classes
        Fewest classes with samples (2 for training; 1 to evaluate on one class).

    Raises
    ------
    DatasetError
        If the folder is missing, a class folder has no images, there are no
        images, or only one class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "not a folder (expected one sub-folder of images per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(root, "has no class sub-folders (expected one per class)")
    pattern = re.compile(group_regex) if group_regex else None
    samples: list[Sample] = []
    empty: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if _is_image(p))
        if not files:
            empty.append(class_dir.name)
        for path in files:
            samples.append(
                Sample(path, label, _group_of(path, root, pattern), None, None),
            )
    if empty:
        raise DatasetError(
            root,
            f"class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}",
        )
    return _require_classes(
        LabelledData("imagefolder", root, [d.name for d in class_dirs], samples), min_classes
    )


def _group_of(path: Path, root: Path, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return path.relative_to(root).as_posix()
    match = pattern.search(path.name)
    if match is None:
        raise DatasetError(path, f"group regex {pattern.pattern!r} does not match the file name")
    return match.group(1) if pattern.groups else match.group(0)


BREAKHIS_TYPES = {
    "A": ("B", "adenosis"),
    "F": ("B", "fibroadenoma"),
    "PT": ("B", "phyllodes_tumor"),
    "TA": ("B", "tubular_adenoma"),
    "DC": ("M", "ductal_carcinoma"),
    "LC": ("M", "lobular_carcinoma"),
    "MC": ("M", "mucinous_carcinoma"),
    "PC": ("M", "papillary_carcinoma"),
}
BREAKHIS_MAGNIFICATIONS = (40, 100, 200, 400)

_BREAKHIS_RE = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<type>A|F|PT|TA|DC|LC|MC|PC)"
    r"-(?P<yy>\d{2})-(?P<slide>[0-9A-Za-z]+)-(?P<mag>40|100|200|400)-(?P<seq>\d{3})"
    r"\.png$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BreakHisName:
    """The fields of a BreakHis file name."""

    malignant: bool
    subtype: str
    patient: str
    magnification: int
    sequence: int


def parse_breakhis_name(name: str) -> BreakHisName | None:
    """Parse ``SOB_<B|M>_<type>-<yy>-<slide>-<mag>-<seq>.png``; None if it does not match
    or the tumour type does not belong to the benign/malignant letter."""
    match = _BREAKHIS_RE.match(name)
    if match is None:
        return None
    cls, subtype = match["cls"].upper(), match["type"].upper()
    if BREAKHIS_TYPES[subtype][0] != cls:
        return None
    return BreakHisName(
        malignant=cls == "M",
        subtype=subtype,
        patient=f"{match['yy']}-{match['slide'].upper()}",
        magnification=int(match["mag"]),
        sequence=int(match["seq"]),
    )


def scan_breakhis(
    root: str | Path,
    magnification: int | None = None,
    labels: str = "binary",
    min_classes: int = 2,
) -> LabelledData:
    """Read BreakHis images anywhere below ``root``.

    Parameters
    ----------
    root
        Folder searched recursively for images.
    magnification
        Keep only 40, 100, 200 or 400 (x); None keeps all.
    labels
        ``"binary"`` (benign, malignant) or ``"subtype"`` (the eight tumour
        types, in the order adenosis, fibroadenoma, phyllodes_tumor,
        tubular_adenoma, ductal_, lobular_, mucinous_, papillary_carcinoma,
        keeping those present).
    min_classes
        Fewest classes with samples.

    Raises
    ------
    DatasetError
        If an image name does not parse (the message lists them), nothing is
        left after the magnification filter, or one class only remains.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "not a folder")
    if magnification is not None and magnification not in BREAKHIS_MAGNIFICATIONS:
        raise DatasetError(
            root, f"magnification must be one of {BREAKHIS_MAGNIFICATIONS}, got {magnification}"
        )
    if labels not in ("binary", "subtype"):
        raise ValueError(f"labels must be 'binary' or 'subtype', got {labels!r}")
    files = sorted(p for p in root.rglob("*") if _is_image(p))
    if not files:
        raise DatasetError(root, "contains no images")
    parsed: list[tuple[Path, BreakHisName]] = []
    bad: list[str] = []
    for path in files:
        info = parse_breakhis_name(path.name)
        if info is None:
            bad.append(path.relative_to(root).as_posix())
        else:
            parsed.append((path, info))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DatasetError(
            root,
            f"{len(bad)} file name(s) do not follow the BreakHis pattern "
            f"SOB_<B|M>_<type>-<yy>-<slide>-<mag>-<seq>.png: {shown}",
        )
    if magnification is not None:
        parsed = [(p, i) for p, i in parsed if i.magnification == magnification]
        if not parsed:
            raise DatasetError(root, f"no images at magnification {magnification}x")
    if labels == "binary":
        class_names = ["benign", "malignant"]

        def label_of(info: BreakHisName) -> int:
            return int(info.malignant)
    else:
        present = {i.subtype for _, i in parsed}
        codes = [c for c in BREAKHIS_TYPES if c in present]
        class_names = [BREAKHIS_TYPES[c][1] for c in codes]

        def label_of(info: BreakHisName) -> int:
            return codes.index(info.subtype)

    samples = [
        Sample(path, label_of(info), info.patient, info.subtype, info.magnification)
        for path, info in parsed
    ]
    return _require_classes(LabelledData("breakhis", root, class_names, samples), min_classes)


def read_slide_csv(csv_path: str | Path, min_classes: int = 2) -> LabelledData:
    """Read a CSV of slide labels.

    Columns ``slide`` (path relative to the CSV's folder, or absolute) and
    ``label`` (class name); an optional ``patient`` column groups slides of
    one patient (default: each slide its own group). Class names are the
    sorted distinct labels. ``min_classes`` is the fewest classes accepted.

    Raises
    ------
    DatasetError
        If the file or a column is missing, a slide file does not exist, or
        fewer than two classes are present.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(csv_path, "CSV file not found")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "slide" not in columns or "label" not in columns:
            raise DatasetError(
                csv_path, f"needs columns 'slide' and 'label' (optional 'patient'), found {columns}"
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    rows = [r for r in rows if r.get("slide")]
    missing = []
    entries = []
    for r in rows:
        path = Path(r["slide"])
        if not path.is_absolute():
            path = csv_path.parent / path
        if not path.exists():
            missing.append(r["slide"])
        if not r.get("label"):
            raise DatasetError(csv_path, f"slide {r['slide']!r} has no label")
        entries.append((path, r["label"], r.get("patient") or path.name))
    if missing:
        raise DatasetError(csv_path, f"slide file(s) not found: {', '.join(missing[:10])}")
    class_names = sorted({label for _, label, _ in entries})
    samples = [Sample(p, class_names.index(lab), g) for p, lab, g in entries]
    return _require_classes(LabelledData("slides", csv_path, class_names, samples), min_classes)


def load_layout(
    data: str | Path,
    layout: str,
    *,
    magnification: int | None = None,
    breakhis_labels: str = "binary",
    group_regex: str | None = None,
    min_classes: int = 2,
) -> LabelledData:
    """Dispatch to :func:`scan_image_folder` (``imagefolder``), :func:`scan_breakhis`
    (``breakhis``) or :func:`read_slide_csv` (``slides`` or ``csv``: a CSV of
    labelled files, slides or images)."""
    if layout == "imagefolder":
        return scan_image_folder(data, group_regex=group_regex, min_classes=min_classes)
    if layout == "breakhis":
        return scan_breakhis(
            data, magnification=magnification, labels=breakhis_labels, min_classes=min_classes
        )
    if layout in ("slides", "csv"):
        return read_slide_csv(data, min_classes=min_classes)
    raise DatasetError(data, f"unknown layout {layout!r}; use imagefolder, breakhis, slides or csv")


def read_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, resized to ``size`` x ``size``
    (bilinear, antialiased) when given."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(rgb, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(path, f"cannot read image: {exc}") from exc


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """Whole images (patches) for a patch classifier such as ``dafl_cnn``.

    Parameters
    ----------
    data
        Labelled image files.
    image_size
        Images are resized to ``image_size`` x ``image_size``; None keeps the
        file's size (then every file must have the same size to batch).
    augment
        Random augmentation, or None (evaluation).
    normalise
        Applied after augmentation.
    seed
        Seeds augmentation together with the epoch (:meth:`set_epoch`) and index.
    cache
        Keep decoded (resized) images in memory after the first read.
    """

    def __init__(
        self,
        data: LabelledData,
        image_size: int | None = None,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.data = data
        self.image_size = image_size
        self.augment = augment
        self.normalise = normalise or Normalise()
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = epoch

    def raw(self, index: int) -> Tensor:
        """Image ``index`` as ``(3, H, W)`` float in [0, 1], without augmentation."""
        if self._cache is not None and index in self._cache:
            rgb = self._cache[index]
        else:
            rgb = read_rgb(self.data.samples[index].path, self.image_size)
            if self._cache is not None:
                self._cache[index] = rgb
        return to_float_tensor(rgb)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.raw(index)
        if self.augment is not None:
            image = self.augment(image, sample_generator(self.seed, self.epoch, index))
        return self.normalise(image), self.data.samples[index].label


def estimate_normalisation(dataset: Any, max_items: int = 32) -> Normalise:
    """Per-channel mean/std over the raw pixels of up to ``max_items`` items
    (evenly spread over the dataset), for :class:`Normalise`.

    ``dataset.raw(index)`` must return ``(..., 3, H, W)`` floats in [0, 1].
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot estimate normalisation from an empty dataset")
    picks = np.unique(np.linspace(0, n - 1, min(n, max_items)).round().astype(int))
    mean, std = mean_std(dataset.raw(int(i)) for i in picks)
    return Normalise(as_triple(mean), as_triple(std))


# -- slides (and any image io.slide opens) -----------------------------------------------


@dataclass(frozen=True)
class SlideOptions:
    """How slides become model inputs.

    Attributes
    ----------
    patch_size
        Side of the patches in output pixels.
    target_mpp, level, downsample
        The resolution of the patches: at most one of micrometres per pixel,
        a pyramid level, or level-0 pixels per pixel (none: level 0).
    tissue
        Tissue detection and tile filter (A-MIL bags).
    max_patches
        Most patches per A-MIL bag: training draws a new random subset each
        epoch, evaluation takes an evenly spaced one; None keeps every tissue
        tile (memory grows with the slide).
    downscale
        Attention sampling: high-resolution pixels per low-resolution pixel.
    """

    patch_size: int = 224
    target_mpp: float | None = None
    level: int | None = None
    downsample: float | None = None
    tissue: TissueSettings = field(default_factory=TissueSettings)
    max_patches: int | None = 512
    downscale: int = 8

    def preprocessing(self) -> dict[str, Any]:
        """The checkpoint's view of these options."""
        return {
            "patch_size": self.patch_size,
            "target_mpp": self.target_mpp,
            "level": self.level,
            "downsample": self.downsample,
            "downscale": self.downscale,
            "max_patches": self.max_patches,
            "tissue": vars(self.tissue),
        }


class _SlideCache:
    """Open slides, least recently used closed first (bounded file handles)."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._open: OrderedDict[Path, Any] = OrderedDict()

    def get(self, path: Path) -> Any:
        from napari_histattn.io.slide import open_slide

        slide = self._open.pop(path, None)
        if slide is None:
            slide = open_slide(path)
        self._open[path] = slide
        while len(self._open) > self.capacity:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return slide

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class SlideBagDataset(Dataset[tuple[Tensor, int]]):
    """A-MIL bags: the tissue patches of each slide (or image), read lazily.

    Item ``(patches (n, 3, p, p), label)``. The tile plan of a slide is computed
    once (tissue on a thumbnail); each access reads only the patches of the bag
    (at most ``options.max_patches``). Augmentation is drawn per patch.
    """

    def __init__(
        self,
        data: LabelledData,
        options: SlideOptions,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.options = options
        self.augment = None if augment is None else replace(augment, per_instance=True)
        self.normalise = normalise or Normalise()
        self.seed = seed
        self.epoch = 0
        self._slides = _SlideCache()
        self._plans: dict[int, TilePlan] = {}

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, index: int) -> TilePlan:
        """The tissue tiles of item ``index``."""
        if index not in self._plans:
            slide = self._slides.get(self.data.samples[index].path)
            ds = target_downsample(
                slide,
                target_mpp=self.options.target_mpp,
                level=self.options.level,
                downsample=self.options.downsample,
            )
            self._plans[index] = plan_tiles(slide, self.options.patch_size, ds, self.options.tissue)
        return self._plans[index]

    def chosen_tiles(self, index: int) -> np.ndarray:
        """Indices into :meth:`plan` of the patches item ``index`` reads now."""
        n = len(self.plan(index))
        cap = self.options.max_patches
        if cap is None or n <= cap:
            return np.arange(n)
        if self.augment is None:
            return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))
        gen = sample_generator(self.seed, self.epoch, index)
        return np.sort(torch.randperm(n, generator=gen)[:cap].numpy())

    def raw(self, index: int) -> Tensor:
        """The bag's patches without augmentation or normalisation."""
        slide = self._slides.get(self.data.samples[index].path)
        return to_float_tensor(read_tiles(slide, self.plan(index), self.chosen_tiles(index)))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        bag = self.raw(index)
        if self.augment is not None:
            bag = self.augment(bag, sample_generator(self.seed, self.epoch, index))
        return self.normalise(bag), self.data.samples[index].label

    def close(self) -> None:
        """Close the slides this dataset opened."""
        self._slides.close()


class SlideSamplingDataset(Dataset[tuple[Tensor, SlidePatchSource, int]]):
    """Attention sampling over slides: a low-resolution view plus a patch source.

    Item ``(low_res (3, h, w), source, label)``: the view is the slide at
    ``downsample * downscale`` level-0 pixels per pixel (``downsample`` from
    ``target_mpp``/``level``/``downsample`` of the options); ``source`` is a
    :class:`~napari_histattn.inference.patches.SlidePatchSource` at
    ``downsample`` reporting ``view size * downscale`` as its size, so that grid
    cells and patches cover the same area. Only the sampled patches are read.
    No augmentation (a flipped view would no longer match its source).
    """

    def __init__(
        self,
        data: LabelledData,
        options: SlideOptions,
        normalise: Normalise | None = None,
    ) -> None:
        self.data = data
        self.options = options
        self.normalise = normalise or Normalise()
        self._slides = _SlideCache()

    def __len__(self) -> int:
        return len(self.data)

    def _downsample(self, slide: Any) -> float:
        return target_downsample(
            slide,
            target_mpp=self.options.target_mpp,
            level=self.options.level,
            downsample=self.options.downsample,
        )

    def raw(self, index: int) -> Tensor:
        """The low-resolution view without normalisation."""
        slide = self._slides.get(self.data.samples[index].path)
        return to_float_tensor(read_view(slide, self._downsample(slide) * self.options.downscale))

    def __getitem__(self, index: int) -> tuple[Tensor, SlidePatchSource, int]:
        slide = self._slides.get(self.data.samples[index].path)
        ds = self._downsample(slide)
        view = to_float_tensor(read_view(slide, ds * self.options.downscale))
        h, w = int(view.shape[-2]), int(view.shape[-1])
        source = SlidePatchSource(
            slide,
            ds,
            size_wh=(w * self.options.downscale, h * self.options.downscale),
            mean=self.normalise.mean,
            std=self.normalise.std,
        )
        return self.normalise(view), source, self.data.samples[index].label

    def close(self) -> None:
        """Close the slides this dataset opened."""
        self._slides.close()


# -- synthetic, in memory ------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSpec:
    """Generated square images with or without lesions (io.synthetic).

    Positives (label 1, ``"lesion"``) carry ``n_lesions`` lesions and
    ``positive_lookalikes`` benign look-alikes; negatives (label 0,
    ``"normal"``) carry ``negative_lookalikes`` look-alikes. Look-alikes match
    lesions at low resolution and differ only in nuclear morphology, so with
    look-alikes in the negatives only high resolution separates the classes;
    without them the task is easy (a dark region or none).

    Attributes
    ----------
    image_size
        Side in level-0 pixels.
    lesion_radius_px
        Mean lesion (and look-alike) radius in level-0 pixels.
    tissue_fraction, mpp
        As :func:`napari_histattn.io.synthetic.make_scene`.
    """

    image_size: int = 256
    lesion_radius_px: float = 24.0
    n_lesions: int = 1
    positive_lookalikes: int = 0
    negative_lookalikes: int = 0
    tissue_fraction: float = 0.8
    mpp: float = 0.5


class SyntheticScenes:
    """Deterministic generated images, lesion masks and labels from a list of seeds.

    Parameters
    ----------
    spec
        What to generate.
    seeds
        One image per seed (the scene's seed).
    labels
        Label per seed; by default ``seed % 2`` (1 = lesion).
    cache
        Keep rendered images in memory.
    """

    class_names = ("normal", "lesion")

    def __init__(
        self,
        spec: SyntheticSpec,
        seeds: Sequence[int],
        labels: Sequence[int] | None = None,
        cache: bool = True,
    ) -> None:
        self.spec = spec
        self.seeds = [int(s) for s in seeds]
        self.labels = np.array(
            [s % 2 for s in self.seeds] if labels is None else list(labels), dtype=np.int64
        )
        if self.labels.shape != (len(self.seeds),):
            raise ValueError(f"{len(self.seeds)} seeds but {self.labels.size} labels")
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._scenes: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def groups(self) -> list[str]:
        """One group per image (its seed)."""
        return [f"seed-{s}" for s in self.seeds]

    def scene(self, index: int) -> Any:
        """The :class:`napari_histattn.io.synthetic.Scene` of image ``index``."""
        if index not in self._scenes:
            from napari_histattn.io.synthetic import make_scene

            positive = bool(self.labels[index])
            spec = self.spec
            self._scenes[index] = make_scene(
                spec.image_size,
                spec.image_size,
                n_lesions=spec.n_lesions if positive else 0,
                lesion_radius_px=spec.lesion_radius_px,
                n_lookalikes=spec.positive_lookalikes if positive else spec.negative_lookalikes,
                tissue_fraction=spec.tissue_fraction,
                mpp=spec.mpp,
                seed=self.seeds[index],
            )
        return self._scenes[index]

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` at full resolution, ``(S, S, 3)`` uint8."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        from napari_histattn.io.synthetic import render_region

        size = self.spec.image_size
        rgb = np.asarray(render_region(self.scene(index), (0, 0), (size, size), 1.0))
        if self._cache is not None:
            self._cache[index] = rgb
        return rgb

    def lesion_mask(self, index: int, downsample: int = 1) -> np.ndarray:
        """Boolean lesion mask of image ``index`` at ``downsample`` (pixel centres tested)."""
        size = self.spec.image_size // downsample
        centres = (np.arange(size) + 0.5) * downsample
        mask = np.zeros((size, size), dtype=bool)
        for region in self.scene(index).lesions:
            mask |= region.rho(centres[None, :], centres[:, None]) < 1.0
        return mask


class _SyntheticBase:
    def __init__(
        self,
        scenes: SyntheticScenes,
        augment: Augment | None,
        normalise: Normalise | None,
        seed: int,
    ) -> None:
        self.scenes = scenes
        self.augment = augment
        self.normalise = normalise or Normalise()
        self.seed = seed
        self.epoch = 0
        self.class_names = list(scenes.class_names)

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def labels(self) -> np.ndarray:
        return self.scenes.labels

    @property
    def groups(self) -> list[str]:
        return self.scenes.groups

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _augmented(self, index: int) -> Tensor:
        image = to_float_tensor(self.scenes.image(index))
        if self.augment is not None:
            image = self.augment(image, sample_generator(self.seed, self.epoch, index))
        return image


class SyntheticImageDataset(_SyntheticBase, Dataset[tuple[Tensor, int]]):
    """Generated images for patch classifiers: item ``(image (3, s, s), label)``.

    ``image_size`` resizes (area filter) the ``spec.image_size`` render to ``s``.
    """

    def __init__(
        self,
        scenes: SyntheticScenes,
        image_size: int | None = None,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(scenes, augment, normalise, seed)
        self.image_size = image_size

    def _resize(self, image: Tensor) -> Tensor:
        if self.image_size is None or image.shape[-1] == self.image_size:
            return image
        size = (self.image_size, self.image_size)
        return F.interpolate(image[None], size=size, mode="area")[0]

    def raw(self, index: int) -> Tensor:
        return self._resize(to_float_tensor(self.scenes.image(index)))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self._resize(self._augmented(index))
        return self.normalise(image), int(self.scenes.labels[index])


class SyntheticBagDataset(_SyntheticBase, Dataset[tuple[Tensor, int]]):
    """Generated images as A-MIL bags of ``patch_size`` tiles: item ``(bag (n, 3, p, p), label)``.

    Every tile of the grid is an instance (the tile order is row-major on
    :meth:`grid_shape`); augmentation flips/rotates each tile on its own.
    """

    def __init__(
        self,
        scenes: SyntheticScenes,
        patch_size: int = 32,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            scenes,
            None if augment is None else replace(augment, per_instance=True),
            normalise,
            seed,
        )
        if scenes.spec.image_size < patch_size:
            raise ValueError("patch_size is larger than the images")
        self.patch_size = patch_size

    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tile grid."""
        n = self.scenes.spec.image_size // self.patch_size
        return n, n

    def _tiles(self, image: Tensor) -> Tensor:
        rows, cols = self.grid_shape()
        p = self.patch_size
        crop = image[:, : rows * p, : cols * p]
        tiles = crop.reshape(3, rows, p, cols, p).permute(1, 3, 0, 2, 4)
        return tiles.reshape(rows * cols, 3, p, p).contiguous()

    def raw(self, index: int) -> Tensor:
        return self._tiles(to_float_tensor(self.scenes.image(index)))

    def tile_lesion_fraction(self, index: int) -> np.ndarray:
        """``(rows, cols)`` fraction of each tile inside a lesion."""
        rows, cols = self.grid_shape()
        p = self.patch_size
        mask = self.scenes.lesion_mask(index)[: rows * p, : cols * p]
        return mask.reshape(rows, p, cols, p).mean(axis=(1, 3))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        bag = self.raw(index)
        if self.augment is not None:
            bag = self.augment(bag, sample_generator(self.seed, self.epoch, index))
        return self.normalise(bag), int(self.scenes.labels[index])


class SyntheticSamplingDataset(_SyntheticBase, Dataset[tuple[Tensor, Tensor, int]]):
    """Generated images for attention sampling: item ``(low_res (3, s/d, s/d),
    high_res (3, s, s), label)`` with ``d = downscale``; the view is the area
    average of the (augmented) full-resolution image."""

    def __init__(
        self,
        scenes: SyntheticScenes,
        downscale: int = 8,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(scenes, augment, normalise, seed)
        self.downscale = downscale

    def _view(self, image: Tensor) -> Tensor:
        size = max(1, image.shape[-1] // self.downscale)
        return F.interpolate(image[None], size=(size, size), mode="area")[0]

    def raw(self, index: int) -> Tensor:
        return self._view(to_float_tensor(self.scenes.image(index)))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image = self._augmented(index)
        high = self.normalise(image)
        return self._view(high), high, int(self.scenes.labels[index])
