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
    from napari_histattn.inference.patches import rgb_to_tensor

    def feats(tiles):
        with torch.no_grad():
            return encoder.module(
                rgb_to_tensor(tiles, list(encoder.spec.mean), list(encoder.spec.std))
            )

    (xa, ya), (xb, yb) = ((torch.cat([feats(t) for t in s[0]]), s[1]) for s in (train, test))
    mu, sd = xa.mean(0), xa.std(0) + 1e-6
    xa, xb = (xa - mu) / sd, (xb - mu) / sd
    w = torch.zeros(xa.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xa @ w + b, ya)
        loss = loss + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float((((xb @ w + b) > 0).float() == yb).float().mean())


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
