"""A patch classifier's slide call: one small confident focus turns the slide positive."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histattn.models import tile_calls

CLASSES = ["normal", "lookalike", "lesion"]


def _tiles(n_normal: int, extra: list[list[float]]) -> np.ndarray:
    normal = np.tile([0.96, 0.03, 0.01], (n_normal, 1))
    return np.vstack([normal, np.asarray(extra, dtype=np.float64).reshape(-1, 3)])


def test_a_small_confident_lesion_makes_the_slide_positive() -> None:
    # 4 lesion tiles among 2,000 (0.2 % of the tissue).
    tiles = _tiles(2000, [[0.01, 0.01, 0.98]] * 4)
    mean = tile_calls.slide_call(tiles, 0)
    assert CLASSES[int(np.argmax(mean))] == "normal"  # the mean dilutes it away
    call = tile_calls.slide_call(tiles, 4)
    assert CLASSES[int(np.argmax(call))] == "lesion" and call[2] > 0.95
    assert call.sum() == pytest.approx(1.0) and np.all(call >= 0)


def test_lookalikes_alone_do_not_make_a_lesion_call() -> None:
    tiles = _tiles(2000, [[0.02, 0.95, 0.03]] * 30)
    call = tile_calls.slide_call(tiles, 4)
    assert CLASSES[int(np.argmax(call))] == "lookalike"
    assert call[2] < 0.05
    assert CLASSES[int(np.argmax(tile_calls.slide_call(_tiles(50, []), 4)))] == "normal"


def test_the_call_is_the_cumulative_top_k_rule() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.dirichlet([1.0, 1.0, 1.0], size=37)
    k = 5
    at_least = np.cumsum(tiles[:, ::-1], axis=1)[:, ::-1]
    s = np.sort(at_least, axis=0)[-k:].mean(axis=0)
    expected = np.append(s[:-1] - s[1:], s[-1])
    expected[0] = 1.0 - s[1]
    assert np.allclose(tile_calls.slide_call(tiles, k), expected)
    # k beyond the tiles uses them all; order of the tiles does not matter.
    assert np.allclose(tile_calls.slide_call(tiles, 100), tile_calls.slide_call(tiles, 37))
    assert np.allclose(tile_calls.slide_call(tiles[::-1], k), tile_calls.slide_call(tiles, k))


def test_two_classes_top_1_is_the_max_instance() -> None:
    tiles = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]])
    assert np.allclose(tile_calls.slide_call(tiles, 1), [0.3, 0.7])


def test_evidence_is_for_the_call_never_for_a_benign_one() -> None:
    tiles = _tiles(3, [[0.01, 0.01, 0.98], [0.05, 0.9, 0.05]])
    lesion = tile_calls.evidence(tiles, 2)
    assert np.argmax(lesion) == 3 and lesion[:3].max() < 0.02
    # A benign call: evidence is for anything above the first class, so normal tiles stay dark.
    benign = tile_calls.evidence(tiles, 0)
    assert np.allclose(benign, 1.0 - tiles[:, 0])
    assert benign[:3].max() < 0.05


def test_summary_and_rule_in_words() -> None:
    tiles = _tiles(8, [[0.01, 0.01, 0.98], [0.1, 0.1, 0.8]])
    summary = tile_calls.tile_summary(tiles, CLASSES)
    assert summary["lesion"]["tiles"] == 2 and summary["lesion"]["fraction"] == pytest.approx(0.2)
    assert summary["lesion"]["max_probability"] == pytest.approx(0.98)
    assert sum(c["tiles"] for c in summary.values()) == 10
    assert "4 most suspicious tiles" in tile_calls.rule_name(4, CLASSES)
    assert "normal < lookalike < lesion" in tile_calls.rule_name(1, CLASSES)
    assert tile_calls.rule_name(0, CLASSES) == "mean of the tile probabilities"


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(3)])
def test_bad_input_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        tile_calls.slide_call(bad, 1)
    with pytest.raises(ValueError):
        tile_calls.slide_call(np.ones((2, 2)) / 2, -1)
