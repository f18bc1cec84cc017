"""Self-supervised pretraining: the loss falls, it is deterministic, the weights load as a
registry encoder, and (slow) its frozen features separate lesion from look-alike tiles better
than random weights do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histattn.io.synthetic import class_tiles
from napari_histattn.models.encoders import create_encoder
from napari_histattn.progress import run_to_completion
from napari_histattn.training.ssl import (
    PretrainConfig,
    augment_views,
    frozen_features,
    linear_probe_accuracy,
    nt_xent,
    pretrain,
    sample_tiles,
)


def test_nt_xent_is_low_for_matching_views_and_high_for_random_ones():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=gen)
    assert nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=gen), 0.1) < 0.5
    assert nt_xent(z, torch.randn(32, 16, generator=gen), 0.1) > 2.5


def test_views_are_random_in_range_and_reproducible_from_the_seed():
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = augment_views(x, torch.Generator().manual_seed(7))
    b = augment_views(x, torch.Generator().manual_seed(7))
    c = augment_views(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, x)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list:
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder = tmp_path_factory.mktemp("ssl-slides")
    return [
        generate_synthetic_slide(
            folder / f"s{i}.tiff",
            1024,
            1024,
            seed=700 + i,
            n_lesions=1,
            n_lookalikes=1,
            lesion_radius_px=140,
            mpp=0.5,
        )
        for i in range(6)
    ]


def test_pretraining_lowers_the_loss_and_writes_weights_the_registry_loads(slides, tmp_path):
    from napari_histattn.cli import main

    paths = [s.path for s in slides[:2]]
    tiles = run_to_completion(sample_tiles(paths, create_encoder("tiny"), 96, seed=0))
    assert tiles.shape == (192, 32, 32, 3) and tiles.dtype == np.uint8
    config = PretrainConfig(epochs=6, batch_size=64, lr=3e-3, device="cpu")
    out = tmp_path / "tiny-ssl.safetensors"
    first = run_to_completion(pretrain("tiny", tiles, config, out_path=out))
    assert first.losses[-1] < first.losses[0]
    again = run_to_completion(pretrain("tiny", tiles, config))
    assert again.losses == first.losses  # deterministic from the seed
    loaded = create_encoder("tiny", out)
    for key, value in first.encoder.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value)
    assert (tmp_path / "tiny-ssl.json").is_file()
    # The CLI path: pretrain, then extract features with the result.
    cli_out = tmp_path / "cli.safetensors"
    argv = ["pretrain", str(paths[0]), "--encoder", "tiny", "--out", str(cli_out), "--epochs", "1"]
    assert main([*argv, "--batch-size", "32", "--tiles-per-slide", "64", "--quiet"]) == 0
    feats = tmp_path / "feats"
    argv = ["features", str(paths[0]), "--encoder", "tiny", "--encoder-weights", str(cli_out)]
    assert main([*argv, "--out", str(feats), "--quiet"]) == 0
    assert (feats / f"{paths[0].stem}.h5").is_file()


def test_pretrain_refuses_too_few_tiles(slides, tmp_path):
    from napari_histattn.cli import main

    argv = ["pretrain", str(slides[0].path), "--encoder", "tiny", "--out", str(tmp_path / "x")]
    assert main([*argv, "--tiles-per-slide", "4", "--batch-size", "64"]) != 0


def _probe_accuracy(encoder, train, test) -> float:
    (xa, ya), (xb, yb) = (
        (torch.cat([frozen_features(encoder, t) for t in part[0]]), part[1])
        for part in (train, test)
    )
    return linear_probe_accuracy(xa, ya, xb, yb)


@pytest.mark.slow
def test_ssl_features_separate_lesion_from_look_alike_better_than_random_weights(slides):
    LESION, LOOKALIKE = 3, 2  # label_mask values

    side = 28  # small_cnn's input

    def split(made_list, seed):
        tiles, labels = [], []
        for made in made_list:
            for label in (LESION, LOOKALIKE):
                t = class_tiles(made.path, made.scene, label, side, 60, seed)
                tiles.append(t)
                labels.append(torch.full((len(t),), float(label == LESION)))
        return tiles, torch.cat(labels)

    train, test = split(slides[:4], 0), split(slides[4:], 1)
    tiles = run_to_completion(
        sample_tiles([s.path for s in slides[:4]], create_encoder("small_cnn"), 512, seed=0)
    )
    config = PretrainConfig(epochs=25, batch_size=128, lr=1e-3, device="cpu")
    ssl = run_to_completion(pretrain("small_cnn", tiles, config))
    random_acc = _probe_accuracy(create_encoder("small_cnn"), train, test)
    ssl_acc = _probe_accuracy(ssl.encoder, train, test)
    assert ssl.losses[-1] < 0.8 * ssl.losses[0]
    assert ssl_acc > random_acc + 0.05, (ssl_acc, random_acc)


def test_pretraining_at_a_larger_tile_size_samples_and_records_it(slides, tmp_path):
    import json

    from napari_histattn.cli import main

    out = tmp_path / "wide.safetensors"
    argv = ["pretrain", str(slides[0].path), "--encoder", "tiny", "--out", str(out)]
    argv += ["--epochs", "1", "--batch-size", "16", "--tiles-per-slide", "32", "--quiet"]
    assert main([*argv, "--tile-size", "48"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["config"]["tile_size"] == 48
    wide = run_to_completion(
        sample_tiles([slides[0].path], create_encoder("tiny", input_size=48), 8)
    )
    assert wide.shape == (8, 48, 48, 3)
    assert main([*argv[:3], "resnet18", *argv[4:], "--tile-size", "112"]) != 0


def test_the_linear_probe_reads_separable_features_and_not_random_labels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=gen)
    y = (x[:, 2] + 0.1 * x[:, 5] > 0).float()
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    shuffled = y[torch.randperm(400, generator=gen)]
    assert 0.35 < linear_probe_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:]) < 0.65
