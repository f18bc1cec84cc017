"""The inference engine: every family on a generated slide, reproducibility, reads, cancel, errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from inference_helpers import CLASS_NAMES, FAMILIES, make_checkpoint

from napari_histattn.errors import CheckpointError, HistattnError, SlideError
from napari_histattn.inference.engine import classify, select_device
from napari_histattn.inference.errors import (
    Cancelled,
    NoTissueError,
    SlideTooSmallError,
    UnsupportedModelError,
)
from napari_histattn.inference.patches import SlidePatchSource, read_view, rgb_to_tensor
from napari_histattn.inference.result import ClassificationResult
from napari_histattn.io.slide import open_slide
from napari_histattn.models import tile_calls
from napari_histattn.models.checkpoint import LoadedCheckpoint, load
from napari_histattn.progress import Progress, run_to_completion

PROVENANCE_KEYS = {
    "package_version",
    "model_name",
    "checkpoint_path",
    "checkpoint_sha256",
    "seed",
    "device",
    "slide_path",
    "slide_quickhash",
    "slide_mpp_xy",
    "mpp_used_xy",
    "downsample_used",
    "level_used",
    "timings_s",
    "created_utc",
}


def run(slide: Any, checkpoint: Any, **kwargs: Any) -> tuple[ClassificationResult, list[Progress]]:
    reports: list[Progress] = []
    result = run_to_completion(classify(slide, checkpoint, **kwargs), reports.append)
    return result, reports


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_classifies_a_generated_slide(name, lesion_slide, loaded) -> None:
    ckpt = loaded[name]
    with open_slide(lesion_slide.path) as slide:
        result, reports = run(slide, ckpt, device="cpu", seed=1)
        quickhash = slide.quickhash

    assert result.class_names == CLASS_NAMES
    assert result.probabilities.shape == (2,)
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    assert result.predicted_class == CLASS_NAMES[int(np.argmax(result.probabilities))]

    att = result.attention
    assert att.dtype == np.float32
    finite = np.isfinite(att)
    # Tissue covers ~60% of the generated slide; the map is finite there and NaN on glass.
    assert 0.3 < finite.mean() < 0.9
    assert np.all(att[finite] >= 0)

    # The grid covers the slide: no cell starts outside it, less than a cell is left over.
    g = result.geometry
    rows, cols = result.grid_shape
    w0, h0 = lesion_slide.size_wh
    assert g.origin_l0_xy == (0.0, 0.0)
    assert (
        cols * g.stride_l0_xy[0] <= w0 + 1e-6 and w0 - cols * g.stride_l0_xy[0] < g.stride_l0_xy[0]
    )
    assert (
        rows * g.stride_l0_xy[1] <= h0 + 1e-6 and h0 - rows * g.stride_l0_xy[1] < g.stride_l0_xy[1]
    )
    x, y = result.cell_center_l0_xy(*result.top_cell())
    assert 0 <= x < w0 and 0 <= y < h0
    assert np.isfinite(att[result.top_cell()])

    # Patches lie inside the slide and carry attention and class probabilities.
    assert result.patches
    for patch in result.patches:
        assert patch.l0_xy[0] >= 0 and patch.l0_xy[0] + patch.size_l0_wh[0] <= w0 + 1e-6
        assert patch.l0_xy[1] >= 0 and patch.l0_xy[1] + patch.size_l0_wh[1] <= h0 + 1e-6
        assert set(patch.probs) == set(CLASS_NAMES)
        assert sum(patch.probs.values()) == pytest.approx(1.0)

    assert 1 <= len(result.regions) <= 5
    assert [r.rank for r in result.regions] == list(range(1, len(result.regions) + 1))
    for region in result.regions:
        minx, miny, maxx, maxy = region.polygon.bounds
        assert minx >= 0 and miny >= 0 and maxx <= w0 and maxy <= h0
        # Region-level evidence gives a class (with its probabilities); else "Attention".
        own = {f"prob_{c}" for c in CLASS_NAMES} <= set(region.measurements)
        assert region.class_name in (CLASS_NAMES if own else ["Attention"])

    prov = result.provenance
    assert set(prov) >= PROVENANCE_KEYS
    assert prov["model_name"] == name
    assert prov["checkpoint_sha256"] == ckpt.sha256
    assert prov["checkpoint_path"] == str(ckpt.path)
    assert prov["seed"] == 1 and prov["device"] == "cpu"
    assert prov["slide_quickhash"] == quickhash and quickhash
    assert prov["slide_path"] == str(lesion_slide.path)
    assert prov["slide_mpp_xy"] == [0.5, 0.5]
    assert prov["mpp_used_xy"] == [0.5 * prov["downsample_used"]] * 2
    assert prov["created_utc"].endswith("+00:00")
    assert prov["timings_s"]["wall"] > 0

    # Progress: counts never exceed totals and every batch stage ends complete.
    assert reports[-1].stage == "regions"
    for report in reports:
        assert report.total is None or 0 <= report.done <= report.total
    batch_stage = {"attention_sampling": "patches", "amil": "encode", "hatnet": "encode"}.get(
        name, "tiles"
    )
    last = [r for r in reports if r.stage == batch_stage][-1]
    assert last.done == last.total


def test_family_specific_results(lesion_slide, loaded) -> None:
    with open_slide(lesion_slide.path) as slide:
        ats, _ = run(slide, loaded["attention_sampling"], device="cpu")
        mil, _ = run(slide, loaded["amil"], device="cpu")
        cnn, _ = run(slide, loaded["dafl_cnn"], device="cpu")
    # Attention sampling: the map is the distribution over the low-res view (16 px cells).
    assert ats.geometry.stride_l0_xy == (16.0, 16.0) and ats.grid_shape == (128, 128)
    assert ats.samples is not None and ats.samples.n_draws == 8 and len(ats.patches) == 8
    assert np.nansum(ats.attention) <= 1.0 + 1e-5
    assert ats.cell_probs is None
    rc = ats.samples.grid_rc
    on_map = ats.attention[rc[:, 0], rc[:, 1]]
    # A sample may fall on glass, whose map cell is NaN; elsewhere the values agree.
    inside = np.isfinite(on_map)
    assert np.allclose(ats.samples.attention[inside], on_map[inside])
    # A-MIL: one cell per tissue tile, weights sum to 1 over the bag, one patch per tile.
    assert mil.samples is None
    assert mil.geometry.stride_l0_xy == (128.0, 128.0)  # 32 px at 2 um/px on a 0.5 um/px slide
    assert np.nansum(mil.attention) == pytest.approx(1.0, abs=1e-5)
    assert len(mil.patches) == int(np.isfinite(mil.attention).sum())
    # Attention CNN: k x k cells per tile; the call is the top-k rule over the tiles, the
    # map each tile's attention times its evidence for the call.
    k = cnn.provenance["cells_per_tile"]
    assert k > 1 and cnn.geometry.stride_l0_xy[0] * k == pytest.approx(32 * 16.0)
    tile_probs = np.array([[p.probs[c] for c in CLASS_NAMES] for p in cnn.patches])
    top_k = cnn.provenance["slide_top_k"]
    assert top_k == tile_calls.DEFAULT_TOP_K
    assert np.allclose(tile_calls.slide_call(tile_probs, top_k), cnn.probabilities)
    calls = cnn.provenance["tile_calls"]
    assert sum(c["tiles"] for c in calls.values()) == len(cnn.patches)
    support = tile_calls.evidence(tile_probs, cnn.predicted_index)
    tile_att = np.array([p.attention for p in cnn.patches])
    assert np.all(tile_att[support < 1e-6] < 1e-3)  # a tile without evidence stays dark


def test_sampling_matches_the_models_own_forward(lesion_slide, loaded) -> None:
    """The engine reads and aggregates exactly as AttentionSampling.forward does."""
    ckpt = loaded["attention_sampling"]
    model = ckpt.model
    pre = ckpt.preprocessing
    with open_slide(lesion_slide.path) as slide:
        result, _ = run(slide, ckpt, device="cpu", seed=5, batch_size=3)
        view = read_view(slide, pre["downsample"] * pre["downscale"])
        h, w = view.shape[:2]
        low = rgb_to_tensor(view, pre["mean"], pre["std"]).unsqueeze(0)
        source = SlidePatchSource(
            slide, pre["downsample"], size_wh=(w * 8, h * 8), mean=pre["mean"], std=pre["std"]
        )
        with torch.inference_mode():
            out = model(low, source, generator=torch.Generator().manual_seed(5))
    expected = torch.softmax(out.logits.double(), -1)[0].numpy()
    assert np.allclose(result.probabilities, expected, atol=1e-6)
    assert result.samples is not None
    assert result.samples.grid_rc.tolist() == out.samples_rc[0].tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_result(name, lesion_slide, loaded) -> None:
    with open_slide(lesion_slide.path) as slide:
        a, _ = run(slide, loaded[name], device="cpu", seed=7)
        b, _ = run(slide, loaded[name], device="cpu", seed=7)
    assert np.array_equal(a.probabilities, b.probabilities)
    assert np.array_equal(a.attention, b.attention, equal_nan=True)
    assert a.patches == b.patches
    assert [r.polygon.equals(s.polygon) for r, s in zip(a.regions, b.regions, strict=True)]
    if a.samples is not None:
        assert b.samples is not None
        assert np.array_equal(a.samples.centers_l0_xy, b.samples.centers_l0_xy)


@pytest.mark.parametrize(
    ("name", "levels"), [("hatnet", {"word", "region"}), ("mldam", {"level 2"}), ("amil", set())]
)
def test_further_attention_levels_lie_on_the_attention_grid(
    name, levels, lesion_slide, loaded
) -> None:
    with open_slide(lesion_slide.path) as slide:
        result, _ = run(slide, loaded[name], device="cpu", seed=1)
    assert set(result.attention_maps) == levels
    tiles = np.isfinite(result.attention)
    for values in result.attention_maps.values():
        assert values.shape == result.attention.shape and values.dtype == np.float32
        assert (np.isfinite(values) == tiles).all() and (values[tiles] >= 0).all()
    keys = [side.key for side in result.side_maps()]
    assert keys == [f"attention:{level}" for level in result.attention_maps]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", FAMILIES)
def test_cuda_gives_the_cpu_result(name, lesion_slide, loaded) -> None:
    with open_slide(lesion_slide.path) as slide:
        cpu, _ = run(slide, loaded[name], device="cpu", seed=7)
        gpu, reports = run(slide, loaded[name], device="auto", seed=7)
    assert gpu.provenance["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.attention, cpu.attention, rtol=1e-3, atol=1e-6)
    assert gpu.top_cell() == cpu.top_cell()
    if cpu.samples is not None:
        # Draws come from a CPU generator, so the device does not change them.
        assert gpu.samples is not None
        assert np.array_equal(gpu.samples.grid_rc, cpu.samples.grid_rc)
    # The checkpoint's model went to the GPU; a CPU run afterwards brings it back.
    again, _ = run(lesion_slide.path, loaded[name], device="cpu", seed=7)
    assert np.array_equal(again.probabilities, cpu.probabilities)


def test_different_seed_draws_different_samples(lesion_slide, loaded) -> None:
    with open_slide(lesion_slide.path) as slide:
        a, _ = run(slide, loaded["attention_sampling"], device="cpu", seed=1)
        b, _ = run(slide, loaded["attention_sampling"], device="cpu", seed=2)
    assert a.samples is not None and b.samples is not None
    assert not np.array_equal(a.samples.centers_l0_xy, b.samples.centers_l0_xy)
    # The attention network does not depend on the seed.
    assert np.array_equal(a.attention, b.attention, equal_nan=True)


def test_path_arguments_open_and_close(lesion_slide, checkpoint_paths) -> None:
    result, _ = run(lesion_slide.path, checkpoint_paths["amil"], device="cpu")
    assert result.provenance["checkpoint_path"] == str(checkpoint_paths["amil"])
    assert result.provenance["slide_path"] == str(lesion_slide.path)


class ReadLog:
    """Wraps ``slide.read_region`` and records ``(level, w, h)`` of each call."""

    def __init__(self, slide: Any) -> None:
        self.calls: list[tuple[int, int, int]] = []
        inner = slide.read_region

        def read_region(l0_xy: Any, level: int, size_wh: Any) -> np.ndarray:
            self.calls.append((int(level), int(size_wh[0]), int(size_wh[1])))
            return inner(l0_xy, level, size_wh)

        slide.read_region = read_region


def test_attention_sampling_reads_only_the_sampled_patches(lesion_slide, loaded) -> None:
    ckpt = loaded["attention_sampling"]
    n, p, ds = 8, 32, 2.0
    with open_slide(lesion_slide.path) as slide:
        log = ReadLog(slide)
        result, _ = run(slide, ckpt, device="cpu", n_patches=n)
        downsamples = slide.level_downsamples
    assert result.samples is not None and result.samples.n_draws == n
    level0 = [c for c in log.calls if c[0] == 0]
    others = [c for c in log.calls if c[0] != 0]
    # Each sampled patch is one level-0 read of (p * ds)^2 pixels; nothing else at level 0.
    assert len(level0) == n
    assert sum(w * h for _, w, h in level0) <= n * (p * ds) ** 2
    # The low-resolution view is one read from a reduced level (a 128 x 128 view at 1/16).
    assert len(others) == 1
    level, w, h = others[0]
    assert w * h * downsamples[level] ** 2 <= 2048 * 2048
    assert (w, h) == (512, 512)


def test_amil_reads_one_batch_at_a_time(lesion_slide, loaded) -> None:
    """Bounded memory: between two progress reports at most two batches of tiles are read
    (the next batch is read while one is encoded; adjacent tiles may come in one strip,
    so count pixels, not calls)."""
    with open_slide(lesion_slide.path) as slide:
        ds = 2.0 / 0.5  # the checkpoint's target_mpp over the slide's mpp
        level = slide.best_level_for_downsample(ds)
        tile_px = (32 * ds / slide.level_downsamples[level]) ** 2
        log = ReadLog(slide)
        gen = classify(slide, loaded["amil"], device="cpu", batch_size=16)
        seen = 0
        batches = []
        for report in gen:
            if report.stage == "encode":
                batches.append(sum(w * h for _, w, h in log.calls[seen:]))
            seen = len(log.calls)
    assert len(batches) > 3
    assert 0 < max(batches) <= 2 * 16 * tile_px
    assert sum(batches) <= len(batches) * 16 * tile_px


@pytest.mark.parametrize(
    ("name", "stage"),
    [("amil", "encode"), ("attention_sampling", "patches"), ("dafl_cnn", "tiles")],
)
def test_cancel_stops_within_one_batch(name, stage, lesion_slide, loaded) -> None:
    cancel = threading.Event()
    with open_slide(lesion_slide.path) as slide:
        log = ReadLog(slide)
        gen = classify(slide, loaded[name], device="cpu", batch_size=2, cancel=cancel)
        for report in gen:
            if report.stage == stage:
                first = report
                break
        cancel.set()
        reads_at_cancel = len(log.calls)
        with pytest.raises(Cancelled) as info:
            next(gen)
    assert first.done < first.total  # there was more to do
    # No further batch was read: at most the one being read ahead finished (two tiles).
    assert len(log.calls) <= reads_at_cancel + 2
    assert info.value.stage == stage
    assert isinstance(info.value, HistattnError)


def test_cancel_before_start_gives_no_result(lesion_slide, loaded) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run(lesion_slide.path, loaded["amil"], device="auto", cancel=cancel)


def test_out_of_memory_halves_the_batch_then_succeeds(lesion_slide, loaded, monkeypatch) -> None:
    ckpt = loaded["amil"]
    with open_slide(lesion_slide.path) as slide:
        reference, _ = run(slide, ckpt, device="cpu", batch_size=8)
        encode = ckpt.model.encode

        def fussy_encode(images: torch.Tensor, chunk_size: Any = None) -> torch.Tensor:
            if images.shape[0] > 8:
                raise torch.OutOfMemoryError("simulated: out of memory")
            return encode(images, chunk_size=chunk_size)

        monkeypatch.setattr(ckpt.model, "encode", fussy_encode)
        result, reports = run(slide, ckpt, device="cpu", batch_size=32)
    messages = [r.message for r in reports if r.stage == "device"]
    assert any("batch size 16" in m for m in messages)
    assert any("batch size 8" in m for m in messages)
    assert result.provenance["batch_size"] == 8
    assert result.provenance["messages"][-1] == messages[-1]
    assert np.allclose(result.probabilities, reference.probabilities, atol=1e-6)
    assert np.allclose(result.attention, reference.attention, atol=1e-7, equal_nan=True)


def test_out_of_memory_on_the_cpu_at_batch_one_is_our_error(
    lesion_slide, loaded, monkeypatch
) -> None:
    ckpt = loaded["amil"]

    def always_oom(images: torch.Tensor, chunk_size: Any = None) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(ckpt.model, "encode", always_oom)
    with pytest.raises(HistattnError, match="out of memory on the CPU"):
        run(lesion_slide.path, ckpt, device="cpu", batch_size=2)


def test_missing_cuda_falls_back_to_the_cpu_with_a_message(
    lesion_slide, loaded, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, messages = select_device("auto")
    assert device.type in ("cpu", "mps") and "CUDA is not available" in messages[0]
    device, messages = select_device("cuda")
    assert device.type == "cpu" and "falling back to the CPU" in messages[0]
    with pytest.raises(HistattnError):
        select_device("tpu")
    result, reports = run(lesion_slide.path, loaded["amil"], device="cuda")
    assert result.provenance["device"] == "cpu"
    assert result.provenance["device_requested"] == "cuda"
    assert reports[0].stage == "device" and "CPU" in reports[0].message


# --------------------------------------------------------------------------- errors


def test_unknown_model_family_is_refused(lesion_slide, loaded) -> None:
    real = loaded["amil"]
    odd = LoadedCheckpoint(
        model=torch.nn.Linear(2, 2),
        model_name="mystery_net",
        config={},
        class_names=["a", "b"],
        preprocessing={},
        metadata={},
        sha256="0" * 64,
        path=real.path,
    )
    with pytest.raises(UnsupportedModelError, match="mystery_net") as info:
        run(lesion_slide.path, odd, device="cpu")
    assert isinstance(info.value, CheckpointError)


def test_pickle_checkpoint_is_refused(lesion_slide, tmp_path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="pickle"):
        run(lesion_slide.path, bad, device="cpu")


def test_truncated_checkpoint_is_refused(lesion_slide, checkpoint_paths, tmp_path) -> None:
    data = Path(checkpoint_paths["amil"]).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        run(lesion_slide.path, cut, device="cpu")


def test_unreadable_slide_is_a_slide_error(checkpoint_paths, tmp_path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all" * 10)
    with pytest.raises(SlideError, match="junk.svs"):
        run(junk, checkpoint_paths["amil"], device="cpu")
    with pytest.raises(SlideError, match="no such file"):
        run(tmp_path / "missing.tiff", checkpoint_paths["amil"], device="cpu")


@pytest.mark.parametrize("name", FAMILIES)
def test_no_tissue_is_a_clear_error(name, blank_slide, checkpoint_paths) -> None:
    with pytest.raises(NoTissueError, match="no tissue") as info:
        run(blank_slide, checkpoint_paths[name], device="cpu")
    assert isinstance(info.value, SlideError)
    assert "blank.tiff" in str(info.value)


@pytest.mark.parametrize("name", FAMILIES)
def test_slide_smaller_than_a_patch_is_a_clear_error(name, tiny_slide, checkpoint_paths) -> None:
    with pytest.raises(SlideTooSmallError, match="smaller than"):
        run(tiny_slide, checkpoint_paths[name], device="cpu")


def test_n_patches_caps_an_amil_bag(lesion_slide, loaded) -> None:
    result, _ = run(lesion_slide.path, loaded["amil"], device="cpu", n_patches=10)
    assert int(np.isfinite(result.attention).sum()) == 10
    assert result.provenance["n_patches"] == 10
    assert np.nansum(result.attention) == pytest.approx(1.0, abs=1e-5)


def test_checkpoint_without_preprocessing_runs_at_level_0(tmp_path, checkpoint_paths) -> None:
    from PIL import Image

    ck = make_checkpoint(tmp_path, "amil", downsample=None, target_mpp=None)
    path = tmp_path / "pink.png"
    rgb = np.full((96, 128, 3), (200, 100, 160), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    result, _ = run(path, ck, device="cpu")
    assert result.provenance["downsample_used"] == 1.0
    assert result.grid_shape == (3, 4)  # 32 px tiles at level 0
    assert result.provenance["mpp_used_xy"] is None


@pytest.mark.parametrize("name", FAMILIES)
def test_a_recorded_temperature_calibrates_the_slide_probabilities(
    name, lesion_slide, checkpoint_paths, tmp_path
) -> None:
    from napari_histattn.models.checkpoint import save
    from napari_histattn.stats import apply_temperature

    plain = load(checkpoint_paths[name], device="cpu")
    calibrated = save(
        tmp_path / f"{name}-calibrated.safetensors",
        plain.model,
        class_names=plain.class_names,
        preprocessing=plain.preprocessing,
        calibration={"temperature": 3.0},
    )
    before = run_to_completion(classify(lesion_slide.path, plain, device="cpu", seed=0))
    after = run_to_completion(classify(lesion_slide.path, calibrated, device="cpu", seed=0))
    np.testing.assert_allclose(after.probabilities, apply_temperature(before.probabilities, 3.0))
    assert after.provenance["calibration_temperature"] == 3.0
    np.testing.assert_allclose(after.provenance["probabilities_uncalibrated"], before.probabilities)
    assert any("temperature 3.00" in line for line in after.evidence_lines())
    if name == "amil":  # the patch evidence beside the slide call
        top = after.provenance["top_patch_probability"]
        weighted = after.provenance["attention_weighted_patch_probability"]
        assert top[1] >= weighted[1] - 1e-9 and len(top) == 2
        assert any("most confident patch" in line for line in after.evidence_lines())


def test_sampling_rounds_average_independent_draws_and_report_their_spread(
    lesion_slide, loaded
) -> None:
    from napari_histattn.models.attention_sampling.slide import ROUND_SEED_STRIDE

    ckpt = loaded["attention_sampling"]
    singles = [
        run_to_completion(
            classify(lesion_slide.path, ckpt, device="cpu", seed=5 + ROUND_SEED_STRIDE * r)
        )
        for r in range(4)
    ]
    averaged = run_to_completion(
        classify(lesion_slide.path, ckpt, device="cpu", seed=5, params={"rounds": 4})
    )
    per_round = np.stack([s.probabilities for s in singles])
    np.testing.assert_allclose(averaged.probabilities, per_round.mean(axis=0), atol=1e-9)
    prov = averaged.provenance
    assert prov["sampling_rounds"] == 4
    np.testing.assert_allclose(prov["probability_spread"]["min"], per_round.min(axis=0))
    np.testing.assert_allclose(prov["probability_spread"]["max"], per_round.max(axis=0))
    assert any("over 4 sampling rounds" in line for line in averaged.evidence_lines())
    # The patch table holds the draws of every round.
    assert averaged.samples.counts.sum() == 4 * singles[0].samples.counts.sum()
    assert "probability_spread" not in singles[0].provenance


def test_spread_flags_rounds_that_disagree() -> None:
    from napari_histattn.stats import probability_spread as spread

    steady = spread(np.array([[0.2, 0.8], [0.25, 0.75], [0.22, 0.78]]))
    assert not steady["unstable"]
    assert spread(np.array([[0.6, 0.4], [0.4, 0.6]]))["unstable"]  # the call flips
    assert spread(np.array([[0.05, 0.95], [0.3, 0.7]]))["unstable"]  # 0.25 wide


def test_the_spread_over_rounds_is_on_the_calibrated_scale(lesion_slide, loaded, tmp_path) -> None:
    from napari_histattn.models.checkpoint import save
    from napari_histattn.stats import apply_temperature

    plain = loaded["attention_sampling"]
    calibrated = save(
        tmp_path / "as-calibrated.safetensors",
        plain.model,
        class_names=plain.class_names,
        preprocessing=plain.preprocessing,
        calibration={"temperature": 3.0},
    )
    params = {"rounds": 3}
    raw = run_to_completion(classify(lesion_slide.path, plain, device="cpu", seed=1, params=params))
    cal = run_to_completion(
        classify(lesion_slide.path, calibrated, device="cpu", seed=1, params=params)
    )
    rounds = np.asarray(raw.provenance["round_probabilities"])
    np.testing.assert_allclose(
        cal.provenance["probability_spread"]["max"],
        apply_temperature(rounds, 3.0).max(axis=0),
    )
