"""Post-hoc explanations: they find evidence planted in a known place, leave the model as it
was, and come out of classify() on the attention's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_histattn.errors import HistattnError
from napari_histattn.inference.engine import classify
from napari_histattn.inference.explain import METHODS, evidence_score, explain, parse_methods
from napari_histattn.models.checkpoint import load
from napari_histattn.progress import run_to_completion


class Brightness(nn.Module):
    """Evidence for class 1 is bright pixels in channel 0, wherever they are."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[:, 0, 1, 1] = 1.0  # each map: the centre pixel of channel 0
            self.features[0].bias.fill_(-0.5)  # ... above 0.5
            self.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return out


def _planted(quadrants: list[int], size: int = 16) -> torch.Tensor:
    """One image per quadrant index (0 top-left .. 3 bottom-right) with a bright 4x4 blob in it."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(len(quadrants), 3, size, size, generator=gen) * 0.4
    h = size // 2
    for i, q in enumerate(quadrants):
        y, x = (q // 2) * h + 2, (q % 2) * h + 2
        images[i, 0, y : y + 4, x : x + 4] = 1.0
    return images


def _quadrant(values: torch.Tensor) -> list[int]:
    size = values.shape[-1]
    flat = values.flatten(1).argmax(dim=1)
    rows, cols = flat // size, flat % size
    return [int(r >= size // 2) * 2 + int(c >= size // 2) for r, c in zip(rows, cols, strict=True)]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_peaks_where_the_evidence_was_planted(method: str) -> None:
    model = Brightness()
    quadrants = [0, 1, 2, 3, 2]
    maps = explain(model, _planted(quadrants), [1], [method], layer=model.features,
                   logits_of=lambda out: out)  # fmt: skip
    values = maps[(method, 1)]
    assert values.shape == (5, 16, 16)
    assert torch.all(values >= 0)
    assert _quadrant(values) == quadrants


def test_explanations_are_deterministic_and_leave_the_model_as_it_was() -> None:
    model = Brightness()
    relu = model.features[1]
    images = _planted([3, 0])
    first = explain(model, images, [1], METHODS, layer=model.features, logits_of=lambda o: o)
    again = explain(model, images, [1], METHODS, layer=model.features, logits_of=lambda o: o)
    for key, value in first.items():
        assert torch.equal(value, again[key])
    assert all(p.grad is None for p in model.parameters())
    assert relu.inplace is True
    assert not model.features._forward_hooks and not relu._backward_hooks
    assert model.training  # restored: explain() runs it in eval mode meanwhile


def test_the_score_is_the_evidence_log_odds() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]])
    p = torch.softmax(logits, dim=1)
    for c in (1, 2):
        at_least = p[:, c:].sum(dim=1)
        expected = torch.log(at_least / (1 - at_least))
        assert torch.allclose(evidence_score(logits, c), expected, atol=1e-6)
    with pytest.raises(ValueError):
        evidence_score(logits, 0)


def test_method_names() -> None:
    assert parse_methods("gradcam, Saliency,gradcam") == ("gradcam", "saliency")
    assert parse_methods(["guided-gradcam"]) == ("guided_gradcam",)
    assert parse_methods(None) == () and parse_methods("") == ()
    with pytest.raises(HistattnError, match="unknown explanation 'lime'"):
        parse_methods("gradcam,lime")


@pytest.mark.parametrize("name", ["dafl_cnn", "amil", "hatnet"])
def test_classify_returns_explanations_on_the_attention_grid(
    name, lesion_slide, checkpoint_paths: dict[str, Path], tmp_path: Path
) -> None:
    ck = load(checkpoint_paths[name], device="cpu")
    result = run_to_completion(
        classify(lesion_slide.path, ck, device="cpu", explain="gradcam,saliency,guided_gradcam")
    )
    assert set(result.explanations) == set(METHODS)
    tissue = np.isfinite(result.attention)
    for values in result.explanations.values():
        assert values.shape == result.attention.shape
        assert np.array_equal(np.isfinite(values), tissue)
        assert np.all(values[tissue] >= 0) and np.nanmax(values) > 0
    assert result.provenance["explained_class"] == "lesion"  # the only class after the first
    assert not ck.model.training  # explaining left the model in eval mode
    # Without the option, nothing is computed; the call is the same either way.
    plain = run_to_completion(classify(lesion_slide.path, ck, device="cpu"))
    assert plain.explanations == {}
    assert np.allclose(plain.probabilities, result.probabilities)
    assert np.allclose(plain.attention, result.attention, equal_nan=True)


def test_a_bag_models_tile_explanation_is_its_tile_classifiers_map_averaged(
    lesion_slide, checkpoint_paths: dict[str, Path]
) -> None:
    from napari_histattn.inference.patches import (
        TissueSettings,
        plan_tiles,
        read_tiles,
        rgb_to_tensor,
    )
    from napari_histattn.io.slide import open_slide

    ck = load(checkpoint_paths["amil"], device="cpu")
    result = run_to_completion(classify(lesion_slide.path, ck, device="cpu", explain="saliency"))
    pre, model = ck.preprocessing, ck.model
    with open_slide(lesion_slide.path) as slide:
        ds = result.provenance["downsample_used"]
        plan = plan_tiles(slide, int(pre["patch_size"]), ds, TissueSettings(**pre["tissue"]))
        some = np.arange(0, len(plan), max(1, len(plan) // 5))
        tiles = rgb_to_tensor(read_tiles(slide, plan, some), pre["mean"], pre["std"])
    # The head on each tile's own embedding: A-MIL's per-tile probabilities.
    with torch.no_grad():
        logits = model.tile_classifier()(tiles).logits
    expected_probs = torch.softmax(logits.double(), dim=1).numpy()
    maps = explain(model.tile_classifier(), tiles, [1], ["saliency"], layer=None)
    rc = plan.grid_rc[some]
    got = result.explanations["saliency"][rc[:, 0], rc[:, 1]]
    np.testing.assert_allclose(got, maps[("saliency", 1)].flatten(1).mean(1).numpy(), rtol=1e-4)
    np.testing.assert_allclose(result.cell_probs[rc[:, 0], rc[:, 1]], expected_probs, atol=1e-5)


def test_written_beside_the_attention(lesion_slide, checkpoint_paths, tmp_path: Path) -> None:
    from napari_histattn.cli import main as cli

    out = tmp_path / "out"
    argv = ["classify", str(lesion_slide.path), "--checkpoint", str(checkpoint_paths["dafl_cnn"])]
    assert (
        cli([*argv, "--out", str(out), "--device", "cpu", "--quiet", "--explain", "gradcam"]) == 0
    )
    values = np.load(out / "explanation-gradcam.npy")
    assert values.shape == np.load(out / "attention.npy").shape
    assert (out / "explanation-gradcam.png").stat().st_size > 0


def test_a_family_without_explanations_refuses_them(
    lesion_slide, checkpoint_paths, monkeypatch
) -> None:
    from dataclasses import replace

    from napari_histattn.models import family as families

    plain = replace(families.family_for_model("attention_sampling"), explains=False)
    monkeypatch.setitem(families._BY_MODEL, "attention_sampling", plain)
    with pytest.raises(
        HistattnError,
        match=r"'sampling' computes no post-hoc explanations yet .*families that explain: ",
    ):
        run_to_completion(
            classify(lesion_slide.path, checkpoint_paths["attention_sampling"], explain="gradcam")
        )


def test_attention_sampling_explains_the_patches_it_drew(lesion_slide, checkpoint_paths) -> None:
    ck = load(checkpoint_paths["attention_sampling"], device="cpu")
    result = run_to_completion(
        classify(lesion_slide.path, ck, device="cpu", seed=3, explain="gradcam,saliency")
    )
    assert result.samples is not None and set(result.explanations) == {"gradcam", "saliency"}
    drawn = np.zeros(result.attention.shape, dtype=bool)
    drawn[result.samples.grid_rc[:, 0], result.samples.grid_rc[:, 1]] = True
    for values in result.explanations.values():
        assert np.array_equal(np.isfinite(values), drawn)  # only where a patch was read
        assert np.all(values[drawn] >= 0)
    assert not ck.model.training
    plain = run_to_completion(classify(lesion_slide.path, ck, device="cpu", seed=3))
    assert np.allclose(plain.probabilities, result.probabilities)


def test_a_bag_model_on_cached_features_refuses_them(lesion_slide, tmp_path) -> None:
    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model

    model = create_model("amil", encoder="none", embed_dim=8, n_classes=2)
    path = save(tmp_path / "features.safetensors", model, class_names=["benign", "lesion"],
                preprocessing={"input": "features", "patch_size": 32})  # fmt: skip
    with pytest.raises(HistattnError, match="trained on cached features and has no patch encoder"):
        run_to_completion(classify(lesion_slide.path, path, explain="saliency"))
