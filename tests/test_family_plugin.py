"""A model family defined only here, registered with one line, runs everywhere a built-in does.

The family ("test_pool": a tiny tile encoder, attention from a linear score with a
temperature, mean-free attention pooling) is declared in this module alone. With
``register_family(FAMILY)`` it classifies a slide through ``classify()``, trains
through the training loop, is listed by ``histattn families`` and shows its own
parameters in the widget: nothing in the package names it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from napari_histattn.errors import HistattnError
from napari_histattn.models.family import (
    Family,
    FamilyParam,
    SlideOutput,
    TaskOptions,
    register_family,
    softmax64,
    unregister_family,
)
from napari_histattn.models.outputs import MILOutput
from napari_histattn.models.registry import ModelExample, register_model, unregister_model
from napari_histattn.models.tasks import ImageTask
from napari_histattn.progress import Progress, run_to_completion

PATCH = 16


class TinyPool(nn.Module):
    """Tiles -> 4-d features -> softmax(score / temperature) pooling -> 2 logits."""

    def __init__(self, n_classes: int = 2, patch_size: int = PATCH) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1))
        self.score = nn.Linear(4, 1)
        self.head = nn.Linear(4, n_classes)

    def forward(self, tiles: torch.Tensor, temperature: float = 1.0) -> MILOutput:
        # tiles (B, N, 3, p, p)
        b, n = tiles.shape[:2]
        features = self.encoder(tiles.flatten(0, 1)).reshape(b, n, 4)
        scores = self.score(features)[..., 0] / temperature
        attention = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bn,bnd->bd", attention, features)
        return MILOutput(logits=self.head(pooled), attention=attention, attention_logits=scores)


class PoolTask(ImageTask):
    """Bags of equal size stack like images: the shared image adapter does the rest."""

    family = "test_pool"


def run_on_slide(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    ds = ctx.downsample()
    plan = yield from ctx.plan(PATCH, ds)
    with torch.inference_mode():
        tiles = ctx.read_tiles(plan, np.arange(len(plan)))
        out = ctx.call(lambda: ctx.model(tiles[None], float(ctx.param("temperature"))), "tiles")
    yield from ctx.report("pool", 1, 1)
    rows, cols = plan.grid_shape
    attention = np.full((rows, cols), np.nan, dtype=np.float32)
    attention[plan.grid_rc[:, 0], plan.grid_rc[:, 1]] = out.attention[0].numpy()
    return SlideOutput(
        probabilities=softmax64(out.logits)[0],
        attention=attention,
        cell_l0=plan.tile_l0,
        info={"downsample": ds, "n_tiles": len(plan)},
    )


FAMILY = Family(
    name="test_pool",
    models=("test_pool",),
    run=run_on_slide,
    task=lambda options: PoolTask(),
    input="mil",
    default_batch_size=7,
    params=(
        FamilyParam(
            "temperature",
            "attention temperature",
            "divides the attention scores",
            default=lambda config, pre: pre.get("temperature", 1.0),
            minimum=0.01,
            maximum=100.0,
            kind=float,
        ),
    ),
    description="a family that lives in a test module",
)


def _example(config: dict[str, Any], batch_size: int, seed: int) -> tuple[tuple[Any, ...], dict]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch_size, 3, 3, PATCH, PATCH, generator=g),), {}


@pytest.fixture
def plugin() -> Iterator[Family]:
    register_model("test_pool", example=ModelExample({}, _example))(TinyPool)
    register_family(FAMILY)  # the one registry line a new family needs
    yield FAMILY
    unregister_family("test_pool")
    unregister_model("test_pool")


@pytest.fixture
def pool_checkpoint(plugin: Family, tmp_path: Path) -> Path:
    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model

    torch.manual_seed(0)
    return save(
        tmp_path / "pool.safetensors",
        create_model("test_pool"),
        class_names=["benign", "lesion"],
        preprocessing={"input": "mil", "target_mpp": 4.0, "temperature": 2.0},
    )


@pytest.fixture(scope="module")
def pink_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tifffile

    rng = np.random.default_rng(0)
    pixels = np.full((256, 256, 3), 245, dtype=np.uint8)  # glass
    pixels[64:192, 32:224] = rng.integers(100, 200, size=(128, 192, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("pool") / "pink.tiff"
    tifffile.imwrite(
        path, pixels, photometric="rgb", resolution=(1e4, 1e4), resolutionunit="CENTIMETER"
    )
    return path  # 1 um/px: a 16-px tile at 4 um/px covers 64 level-0 px


def test_the_registered_family_classifies_a_slide(pool_checkpoint: Path, pink_slide: Path) -> None:
    from napari_histattn.inference.engine import classify

    result = run_to_completion(classify(pink_slide, pool_checkpoint, device="cpu"))
    assert result.family == "test_pool"
    assert result.provenance["family"] == "test_pool" and result.provenance["batch_size"] == 7
    assert result.attention.shape == (4, 4)  # 256 px / 64 px per tile
    finite = result.attention[np.isfinite(result.attention)]
    assert finite.size == result.provenance["n_tiles"] >= 4
    assert np.isclose(finite.sum(), 1.0, atol=1e-5)
    assert result.geometry.stride_l0_xy == (64.0, 64.0)
    assert np.isclose(result.probabilities.sum(), 1.0)

    # Its own parameter reaches its runner: a higher temperature flattens the attention.
    flat = run_to_completion(
        classify(pink_slide, pool_checkpoint, device="cpu", params={"temperature": 100.0})
    )
    assert np.nanstd(flat.attention) < np.nanstd(result.attention)
    with pytest.raises(HistattnError, match="'bag_size'.*it takes: temperature"):
        run_to_completion(classify(pink_slide, pool_checkpoint, params={"bag_size": 3}))
    with pytest.raises(HistattnError, match="temperature.*0.01-100"):
        run_to_completion(classify(pink_slide, pool_checkpoint, params={"temperature": 0}))


class _Bags(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 3, PATCH, PATCH, generator=g) * (1 + i % 2), i % 2


def test_the_registered_family_trains_through_the_loop(plugin: Family) -> None:
    from napari_histattn.models.registry import create_model
    from napari_histattn.training.experiment import family_of, make_task
    from napari_histattn.training.loop import TrainConfig, train
    from napari_histattn.training.tasks import task_for_model
    from napari_histattn.training.transforms import Normalise

    assert family_of("test_pool") is plugin
    assert isinstance(make_task(plugin, Normalise()), PoolTask)
    assert isinstance(task_for_model("test_pool"), PoolTask)
    model = create_model("test_pool")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-2, device="cpu", patience=None)
    result = run_to_completion(
        train(model, plugin.task(TaskOptions()), _Bags(), None, config, class_names=["a", "b"])
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0].train_loss)
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one epoch of training changed no weight"


def test_histattn_families_lists_it(plugin: Family) -> None:
    from napari_histattn.cli.families import describe_families

    text = describe_families()
    assert "test_pool: a family that lives in a test module" in text
    assert "--param temperature=<float 0.01-100>" in text


@pytest.mark.gui
def test_the_widget_shows_its_parameters(make_napari_viewer, pool_checkpoint: Path) -> None:
    from napari_histattn._napari.classify_widget import ClassifyWidget

    widget = ClassifyWidget(make_napari_viewer())
    assert widget.add_checkpoint(pool_checkpoint)
    control = widget.params["temperature"]
    assert not control.native.isHidden() and control.label == "attention temperature"
    assert control.value == pytest.approx(2.0)  # read from the checkpoint's preprocessing
    assert control.tooltip == "divides the attention scores"
    assert widget.params["n_patches"].native.isHidden()  # A-MIL's, not this family's
    assert widget.batch_size.value == 7
    control.value = 3.5
    assert widget.param_values() == {"temperature": 3.5}
