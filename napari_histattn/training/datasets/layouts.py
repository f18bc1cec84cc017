"""Training data layouts on disk, parsed into :class:`LabelledData`: image folders, BreakHis names, slide CSVs."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.errors import HistattnError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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


def data_domain(data: LabelledData) -> dict[str, Any]:
    """The training domain of ``data`` for the checkpoint (``training.domain``).

    Whole slides are opened (headers only) to tell our generator's from scanned
    ones and to take their pixel sizes; BreakHis is scanned H&E; a folder of
    images says neither, so its source is recorded as unknown.
    """
    from napari_histattn.inference.domain import TrainingDomain, domain_of_slides

    classes = tuple(data.class_names)
    if data.layout == "breakhis":
        return TrainingDomain(source="real", stain="H&E", classes=classes, recorded=True).as_dict()
    if data.layout not in ("slides", "synthetic"):
        return TrainingDomain(classes=classes, recorded=True).as_dict()
    from napari_histattn.io.slide import open_slide

    opened = []
    try:
        for sample in data.samples:
            try:
                opened.append(open_slide(sample.path))
            except HistattnError:
                continue  # unreadable slides are reported where they are read
        return domain_of_slides(opened, classes=classes).as_dict()
    finally:
        for slide in opened:
            slide.close()


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
