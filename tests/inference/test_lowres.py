"""Attention sampling's view in tiles: the same scores as one pass, glass tiles skipped,
draws only where the network ran, memory bounded by a tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histattn.inference.engine import classify
from napari_histattn.inference.lowres import LowResView
from napari_histattn.inference.patches import TissueSettings, read_view, rgb_to_tensor, tissue_mask
from napari_histattn.io.slide import open_slide
from napari_histattn.models.attention_sampling import slide as ats_slide
from napari_histattn.progress import run_to_completion


def _view(slide, tile: int, halo: int, pre) -> LowResView:
    ds = pre["downsample"] * pre["downscale"]
    return LowResView(
        slide, ds, tile=tile, halo=halo, tissue=TissueSettings(), mean=pre["mean"], std=pre["std"]
    )


def test_tiles_with_their_halo_give_the_scores_of_one_pass(lesion_slide, loaded) -> None:
    ckpt = loaded["attention_sampling"]
    model, pre = ckpt.model.eval(), ckpt.preprocessing
    halo = model.attention_net.halo
    assert halo == 4  # four padded 3x3 convolutions
    with open_slide(lesion_slide.path) as slide:
        whole_rgb = read_view(slide, pre["downsample"] * pre["downscale"])
        whole = rgb_to_tensor(whole_rgb, pre["mean"], pre["std"]).unsqueeze(0)
        view = _view(slide, 24, halo, pre)  # 128^2 view: 6 x 6 tiles, ragged at the border
        view.kept[:] = True
        tiled = torch.full(view.size_hw, float("nan"))
        tissue = np.zeros(view.size_hw, dtype=bool)
        with torch.inference_mode():
            one_pass = model.attention_scores(whole)[0]
            for tile in view:
                assert tile.crop.shape[-1] <= 24 + 2 * halo
                tiled[tile.rows, tile.cols] = model.attention_scores(tile.crop)[0][tile.inner]
                tissue[tile.rows, tile.cols] = tile.tissue
    assert torch.isfinite(tiled).all()
    torch.testing.assert_close(tiled, one_pass, atol=1e-5, rtol=1e-5)
    assert (tissue == tissue_mask(whole_rgb)).all()
    # Too little halo is not the same: the test can tell.
    with open_slide(lesion_slide.path) as slide:
        short = _view(slide, 24, halo - 1, pre)
        short.kept[:] = True
        with torch.inference_mode():
            worse = torch.full(short.size_hw, float("nan"))
            for tile in short:
                worse[tile.rows, tile.cols] = model.attention_scores(tile.crop)[0][tile.inner]
    assert not torch.allclose(worse, one_pass, atol=1e-5)


def test_folded_batch_norm_computes_what_the_layers_do(loaded) -> None:
    net = loaded["attention_sampling"].model.attention_net
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    net.eval()
    with torch.no_grad():
        folded = net(x)
        layered = net.body(x).squeeze(1)
    torch.testing.assert_close(folded, layered, atol=1e-5, rtol=1e-5)


def test_glass_tiles_are_skipped_and_never_drawn(lesion_slide, loaded, monkeypatch) -> None:
    ckpt = loaded["attention_sampling"]
    pre = ckpt.preprocessing
    with open_slide(lesion_slide.path) as slide:
        view = _view(slide, 16, 4, pre)
        whole_rgb = read_view(slide, pre["downsample"] * pre["downscale"])
        one = run_to_completion(classify(slide, ckpt, device="cpu", seed=3))
        monkeypatch.setattr(ats_slide, "VIEW_TILE", 16)
        tiled = run_to_completion(classify(slide, ckpt, device="cpu", seed=3))
    kept = view.kept
    assert 0 < kept.sum() < kept.size  # the slide's glass corners are not read
    # Every tissue pixel of the view lies in a kept tile.
    tissue = tissue_mask(whole_rgb)
    rows, cols = np.nonzero(tissue)
    assert kept[rows // 16, cols // 16].all()
    # On the kept tiles, the attention is the one-pass attention renormalised over them
    # (the skipped tiles' mass, glass, shared out): one ratio above 1 everywhere.
    inside = np.kron(kept, np.ones((16, 16), dtype=bool))[: tissue.shape[0], : tissue.shape[1]]
    a, b = one.attention, tiled.attention
    assert np.array_equal(np.isfinite(a), np.isfinite(b))  # NaN off tissue in both
    finite = np.isfinite(a)
    assert inside[finite].all()
    ratio = b[finite] / a[finite]
    assert ratio.min() > 1.0
    np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-4)
    assert tiled.samples is not None
    rc = tiled.samples.grid_rc
    assert inside[rc[:, 0], rc[:, 1]].all()  # draws only where the network ran
    assert tiled.predicted_class in ("benign", "lesion")


def test_a_slide_whose_view_shows_no_tissue_is_a_clear_error(blank_slide, checkpoint_paths) -> None:
    from napari_histattn.inference.errors import NoTissueError

    with pytest.raises(NoTissueError, match="no tissue"):
        run_to_completion(classify(blank_slide, checkpoint_paths["attention_sampling"]))
