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

Modules: :mod:`.layouts` (the layouts above), :mod:`.images` (image files),
:mod:`.slides` (slides: tile bags and sampling inputs), :mod:`.synthetic`
(generated scenes in memory). Everything is re-exported here.
"""

from __future__ import annotations

from napari_histattn.training.datasets.features import FeatureBagDataset
from napari_histattn.training.datasets.images import (
    ImageDataset,
    estimate_normalisation,
    read_rgb,
)
from napari_histattn.training.datasets.layouts import (
    BREAKHIS_MAGNIFICATIONS,
    BREAKHIS_TYPES,
    IMAGE_EXTENSIONS,
    BreakHisName,
    DatasetError,
    LabelledData,
    Sample,
    load_layout,
    parse_breakhis_name,
    read_slide_csv,
    scan_breakhis,
    scan_image_folder,
)
from napari_histattn.training.datasets.slides import (
    SlideBagDataset,
    SlideOptions,
    SlideSamplingDataset,
)
from napari_histattn.training.datasets.synthetic import (
    SyntheticBagDataset,
    SyntheticImageDataset,
    SyntheticSamplingDataset,
    SyntheticScenes,
    SyntheticSpec,
)

__all__ = [
    "FeatureBagDataset",
    "BREAKHIS_MAGNIFICATIONS",
    "BREAKHIS_TYPES",
    "BreakHisName",
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "LabelledData",
    "Sample",
    "SlideBagDataset",
    "SlideOptions",
    "SlideSamplingDataset",
    "SyntheticBagDataset",
    "SyntheticImageDataset",
    "SyntheticSamplingDataset",
    "SyntheticScenes",
    "SyntheticSpec",
    "estimate_normalisation",
    "load_layout",
    "parse_breakhis_name",
    "read_rgb",
    "read_slide_csv",
    "scan_breakhis",
    "scan_image_folder",
]
