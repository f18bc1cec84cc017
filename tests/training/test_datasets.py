"""Data layouts parse as documented and fail with clear messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from napari_histattn.errors import HistattnError
from napari_histattn.training.datasets import (
    DatasetError,
    ImageDataset,
    parse_breakhis_name,
    read_slide_csv,
    scan_breakhis,
    scan_image_folder,
)
from napari_histattn.training.transforms import Augment, Normalise, mean_std, sample_generator


def _png(path, value=128, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def test_kather_sample_image_folder(shared_data):
    data = scan_image_folder(shared_data / "patches" / "kather2016-sample")
    assert data.class_names == [
        "01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO",
        "05_DEBRIS", "06_MUCOSA", "07_ADIPOSE", "08_EMPTY",
    ]  # fmt: skip
    assert len(data) == 24
    assert np.bincount(data.labels).tolist() == [3] * 8
    assert len(set(data.groups)) == 24
    ds = ImageDataset(data, image_size=32)
    image, label = ds[4]
    assert image.shape == (3, 32, 32) and label == 1
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # group regex: the source slide id of the Kather tiles
    grouped = scan_image_folder(
        shared_data / "patches" / "kather2016-sample", group_regex=r"(CRC-Prim-HE-\d+)"
    )
    assert all(g.startswith("CRC-Prim-HE-") for g in grouped.groups)
    assert len(set(grouped.groups)) < 24


BREAKHIS = [
    "SOB_B_A-14-22549AB-40-001.png",
    "SOB_B_A-14-22549AB-100-001.png",
    "SOB_B_F-14-9133-40-002.png",
    "SOB_M_DC-14-2523-40-010.png",
    "SOB_M_DC-14-2523-400-010.png",
    "SOB_M_LC-14-12204-40-001.png",
]


def test_parse_breakhis_names():
    info = parse_breakhis_name("SOB_M_DC-14-2523-400-010.png")
    assert info is not None
    assert (info.malignant, info.subtype, info.patient, info.magnification, info.sequence) == (
        True, "DC", "14-2523", 400, 10,
    )  # fmt: skip
    assert parse_breakhis_name("SOB_B_DC-14-2523-40-010.png") is None  # DC is malignant
    assert parse_breakhis_name("SOB_M_DC-14-2523-50-010.png") is None  # no 50x
    assert parse_breakhis_name("SOB_M_DC-14-2523-40-010.jpg") is None


def test_breakhis_layout_binary_subtype_and_magnification(tmp_path):
    for name in BREAKHIS:
        _png(tmp_path / "deep" / "folder" / name)
    data = scan_breakhis(tmp_path)
    assert data.class_names == ["benign", "malignant"]
    assert len(data) == 6
    by_name = {s.path.name: s for s in data.samples}
    assert by_name["SOB_B_A-14-22549AB-40-001.png"].group == "14-22549AB"
    assert by_name["SOB_M_DC-14-2523-40-010.png"].label == 1
    assert len(set(data.groups)) == 4
    mag40 = scan_breakhis(tmp_path, magnification=40)
    assert len(mag40) == 4 and {s.magnification for s in mag40.samples} == {40}
    sub = scan_breakhis(tmp_path, labels="subtype")
    assert sub.class_names == ["adenosis", "fibroadenoma", "ductal_carcinoma", "lobular_carcinoma"]
    assert sorted(set(sub.labels.tolist())) == [0, 1, 2, 3]
    assert data.summary()["class_counts"] == {"benign": 3, "malignant": 3}


def test_breakhis_unparsable_names_are_listed(tmp_path):
    for name in BREAKHIS[:3]:
        _png(tmp_path / name)
    _png(tmp_path / "holiday.png")
    _png(tmp_path / "SOB_X_A-14-1-40-001.png")
    with pytest.raises(DatasetError) as info:
        scan_breakhis(tmp_path)
    message = str(info.value)
    assert "holiday.png" in message and "SOB_X_A-14-1-40-001.png" in message
    assert "2 file name(s)" in message


def test_one_class_and_empty_folders_are_refused(tmp_path):
    for name in BREAKHIS[:3]:  # all benign
        _png(tmp_path / "bh" / name)
    with pytest.raises(DatasetError, match="one class"):
        scan_breakhis(tmp_path / "bh")
    with pytest.raises(DatasetError, match="no images at magnification 400"):
        scan_breakhis(tmp_path / "bh", magnification=400)
    (tmp_path / "folders" / "cats").mkdir(parents=True)
    _png(tmp_path / "folders" / "dogs" / "a.png")
    with pytest.raises(DatasetError, match="cats"):
        scan_image_folder(tmp_path / "folders")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(HistattnError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "nothing")


def test_slide_csv(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "slides" / name)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "slide,label,patient\nslides/a.png,tumour,p1\nslides/b.png,normal,p1\nslides/c.png,normal,\n"
    )
    data = read_slide_csv(csv)
    assert data.class_names == ["normal", "tumour"]
    assert data.labels.tolist() == [1, 0, 0]
    assert data.groups == ["p1", "p1", "c.png"]
    assert data.samples[0].path == tmp_path / "slides" / "a.png"
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,label\nslides/missing.svs,tumour\nslides/a.png,normal\n")
    with pytest.raises(DatasetError, match="missing.svs"):
        read_slide_csv(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("file,class\na,b\n")
    with pytest.raises(DatasetError, match="'slide' and 'label'"):
        read_slide_csv(nocol)


def test_augment_is_seeded_and_preserves_content():
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    geometric = Augment(brightness=0, contrast=0, saturation=0)
    a = geometric(img, sample_generator(1, 2, 3))
    b = geometric(img, sample_generator(1, 2, 3))
    assert torch.equal(a, b)
    # flips/rotations only permute pixels
    assert torch.allclose(a.flatten().sort().values, img.flatten().sort().values)
    outs = {
        tuple(geometric(img, sample_generator(1, 0, i)).flatten()[:5].tolist()) for i in range(20)
    }
    assert len(outs) > 3
    jitter = Augment(flips=False, rotate90=False, brightness=0.1)(img, sample_generator(0, 0, 0))
    assert not torch.equal(jitter, img) and float((jitter - img).abs().max()) < 0.2


def test_mean_std_and_normalise():
    imgs = [torch.full((3, 4, 4), 0.25), torch.full((3, 4, 4), 0.75)]
    mean, std = mean_std(imgs)
    assert mean == pytest.approx((0.5, 0.5, 0.5))
    assert std == pytest.approx((0.25, 0.25, 0.25))
    out = Normalise(mean, std)(imgs[0])
    assert torch.allclose(out, torch.full((3, 4, 4), -1.0))
