"""The committed demo checkpoints (sample_data/, made by sample_data/make_demo_checkpoints.py).

They load safely (strict), carry the documented classes and preprocessing, and
classify a small generated image correctly and point at the lesion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histattn.inference.patches import rgb_to_tensor, tissue_mask
from napari_histattn.io.synthetic import make_scene, render_region
from napari_histattn.models import checkpoint
from napari_histattn.models.attention_sampling import downscale_image
from napari_histattn.models.patch_source import TensorPatchSource

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"
DEMOS = {
    "demo_attention_sampling": ("attention_sampling", ["benign", "lesion"]),
    "demo_amil": ("amil", ["benign", "lesion"]),
    "demo_hatnet": ("hatnet", ["benign", "lesion"]),
    "demo_dafl_cnn": ("dafl_cnn", ["normal", "lookalike", "lesion"]),
    "demo_mldam": ("mldam", ["normal", "lookalike", "lesion"]),
}
SCENE_MPP = 0.5
SIZE_L0 = 1024


def _path(stem: str) -> Path:
    path = SAMPLE_DATA / f"{stem}.safetensors"
    assert path.is_file(), f"{path} is missing: run sample_data/make_demo_checkpoints.py"
    return path


@pytest.fixture(scope="module", params=sorted(DEMOS))
def loaded(request: pytest.FixtureRequest) -> tuple[str, checkpoint.LoadedCheckpoint]:
    return request.param, checkpoint.load(_path(request.param), device="cpu")


def test_loads_strictly_with_documented_metadata(
    loaded: tuple[str, checkpoint.LoadedCheckpoint],
) -> None:
    stem, ckpt = loaded
    name, classes = DEMOS[stem]
    assert ckpt.model_name == name
    assert ckpt.class_names == classes
    pre = ckpt.preprocessing
    assert pre["target_mpp"] == 1.0
    assert pre["patch_size"] == 32
    assert len(pre["mean"]) == 3 and len(pre["std"]) == 3
    assert all(0.0 < s < 1.0 for s in pre["std"])
    if name == "attention_sampling":
        assert pre["downscale"] == ckpt.model.downscale == 8
        assert pre["n_patches"] == ckpt.model.n_patches
    training = ckpt.metadata["training"]
    assert training["seed"] == 20241126
    assert training["family"] == name
    if name not in ("dafl_cnn", "mldam"):
        assert training["recipe"].startswith("two-stage")
        check = training["sample_slide_check"]
        assert check["predicted"] == "lesion"
        assert check["lesion_regions_on_lesions"] >= 1
        assert check["lesion_regions_on_lookalikes"] == 0
        if name in ("amil", "hatnet"):
            assert check["max_attention_in_lesion"]
    # Small enough to commit.
    assert ckpt.path.stat().st_size < 2_000_000
    # The sidecar's digest is the file's (load refuses a mismatch; this pins that it exists).
    assert checkpoint.sidecar_path(ckpt.path).is_file()


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A lesion image (1 lesion, 1 look-alike) and a benign one (2 look-alikes) at 1.0 um/px,
    with their lesion masks: a 1024 px scene at 0.5 um/px averaged over 2 x 2 pixels."""
    out = {}
    for kind, n_lesions, seed in (("lesion", 1, 11), ("benign", 0, 12)):
        scene = make_scene(
            SIZE_L0,
            SIZE_L0,
            n_lesions=n_lesions,
            n_lookalikes=2 - n_lesions,
            lesion_radius_px=110.0 / SCENE_MPP,
            tissue_fraction=0.85,
            mpp=SCENE_MPP,
            seed=seed,
        )
        full = render_region(scene, (0, 0), (SIZE_L0, SIZE_L0), 1.0)
        half = SIZE_L0 // 2
        rgb = full.reshape(half, 2, half, 2, 3).astype(np.float32).mean(axis=(1, 3))
        centres = (np.arange(half) + 0.5) * 2.0
        mask = np.zeros((half, half), bool)
        for region in scene.lesions:
            mask |= region.rho(centres[None, :], centres[:, None]) < 1.0
        out[kind] = (np.round(rgb).astype(np.uint8), mask)
    return out


def _in_lesion(mask: np.ndarray, x: float, y: float) -> bool:
    return bool(mask[int(y), int(x)])


def test_attention_sampling_demo_finds_the_lesion(
    images: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    ckpt = checkpoint.load(_path("demo_attention_sampling"), device="cpu")
    model, pre = ckpt.model, ckpt.preprocessing
    for kind, (rgb, mask) in images.items():
        high = rgb_to_tensor(rgb, pre["mean"], pre["std"])[None]
        low = downscale_image(high, pre["downscale"])
        with torch.inference_mode():
            out = model(low, TensorPatchSource(high), generator=torch.Generator().manual_seed(0))
        assert ckpt.class_names[int(out.logits.argmax())] == kind
        if kind == "lesion":
            # The attention network sees only the 8 um/px view, where the lesion and the
            # look-alike look alike; the patches it reads tell them apart: the sample with
            # the strongest lesion evidence lies in the lesion.
            with torch.inference_mode():
                evidence = torch.softmax(model.classifier(out.features[0]), dim=-1)[:, 1]
            r, c = out.samples_rc[0, int(evidence.argmax())].tolist()
            d = pre["downscale"]
            assert _in_lesion(mask, (c + 0.5) * d, (r + 0.5) * d)


@pytest.mark.parametrize("stem", ["demo_amil", "demo_hatnet"])
def test_bag_demos_find_the_lesion(
    stem: str, images: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    ckpt = checkpoint.load(_path(stem), device="cpu")
    model, pre = ckpt.model, ckpt.preprocessing
    p = pre["patch_size"]
    for kind, (rgb, mask) in images.items():
        g = rgb.shape[0] // p
        tiles = rgb[: g * p, : g * p].reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4)
        tiles = tiles.reshape(g * g, p, p, 3)
        tissue = tissue_mask(rgb)[: g * p, : g * p].reshape(g, p, g, p).mean(axis=(1, 3))
        keep = np.nonzero(tissue.ravel() >= 0.5)[0]
        x = rgb_to_tensor(tiles[keep], pre["mean"], pre["std"])[None]
        with torch.inference_mode():
            if ckpt.model_name == "hatnet":  # each tile's grid (row, col) too
                out = model(x, torch.from_numpy(np.stack(np.divmod(keep, g), axis=1))[None])
            else:
                out = model(x)
        assert ckpt.class_names[int(out.logits.argmax())] == kind
        if kind == "lesion":
            r, c = divmod(int(keep[int(out.attention[0].argmax())]), g)
            assert _in_lesion(mask, (c + 0.5) * p, (r + 0.5) * p)


@pytest.mark.parametrize("stem", ["demo_dafl_cnn", "demo_mldam"])
def test_patch_demos_tell_lesion_from_lookalike_patches(
    stem: str, images: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    ckpt = checkpoint.load(_path(stem), device="cpu")
    pre = ckpt.preprocessing
    p = pre["patch_size"]
    rgb, mask = images["lesion"]
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    lesion_patch = rgb[cy - p // 2 : cy + p // 2, cx - p // 2 : cx + p // 2]
    with torch.inference_mode():
        probs = torch.softmax(
            ckpt.model(rgb_to_tensor(lesion_patch, pre["mean"], pre["std"])[None]).logits, 1
        )[0]
    assert ckpt.class_names[int(probs.argmax())] == "lesion"
