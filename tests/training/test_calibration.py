"""Calibration and slide decision rules: temperature scaling lowers ECE on held-out data, and
a slide with one small, confident lesion focus is called positive by the instance rules that
validation picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from napari_histattn.models import checkpoint
from napari_histattn.models.amil import MILTask
from napari_histattn.models.amil.slide import evidence
from napari_histattn.models.registry import create_model
from napari_histattn.progress import run_to_completion
from napari_histattn.stats import apply_temperature
from napari_histattn.training.calibration import Calibration, choose_decision, fit_temperature
from napari_histattn.training.loop import TrainConfig, evaluate, seed_everything, train
from napari_histattn.training.metrics import expected_calibration_error


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, seed: int, scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true class follows softmax(z), reported as ``scale * z``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 2))
    labels = (rng.random(n) < _softmax(z)[:, 1]).astype(np.int64)
    return scale * z, labels


def test_fit_temperature_recovers_the_overconfidence_and_lowers_ece_on_held_out_data():
    val_logits, val_labels = _overconfident(4000, seed=0)
    test_logits, test_labels = _overconfident(4000, seed=1)
    t = fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(test_labels, _softmax(test_logits))
    after = expected_calibration_error(test_labels, _softmax(test_logits / t))
    assert after < before / 2
    cal = Calibration.fit(val_logits, val_labels)
    assert cal.nll_after < cal.nll_before and cal.ece_after < cal.ece_before
    assert cal.as_dict()["temperature"] == pytest.approx(t, rel=1e-5)


def test_temperature_on_probabilities_equals_temperature_on_logits():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    np.testing.assert_allclose(apply_temperature(_softmax(logits), 2.5), _softmax(logits / 2.5))
    np.testing.assert_allclose(apply_temperature(_softmax(logits), 1.0), _softmax(logits))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(_softmax(logits), 0.0)


def test_fit_temperature_never_makes_a_calibrated_model_worse():
    logits, labels = _overconfident(2000, seed=3, scale=1.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(1.0, rel=0.15)
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0)) == 1.0
    separated = np.array([[3.0, -3.0], [-3.0, 3.0]] * 5)
    assert fit_temperature(separated, np.array([0, 1] * 5)) == 1.0  # no sharpening


def _focus_model(decision: str = "attention") -> torch.nn.Module:
    """A-MIL on 2-d features whose head reads feature 0 (lesion evidence) and whose
    attention is uniform: the bag logit is the mean instance logit."""
    model = create_model(
        "amil", encoder="none", embed_dim=2, attn_dim=2, n_classes=2, decision=decision
    )
    with torch.no_grad():
        for p in model.pooling.parameters():
            p.zero_()
        linear = model.head[-1]
        linear.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.0, -5.0]))
    return model.eval()


def _small_focus_bag(n: int = 400, focus: int = 2) -> torch.Tensor:
    """One bag: ``focus`` instances with strong lesion evidence among ``n`` normal ones
    (0.5 % of the bag)."""
    bag = torch.zeros(1, n, 2)
    bag[0, :focus, 0] = 1.5  # margin 10 * 1.5 - 5 = +10 on the focus, -5 elsewhere
    return bag


def test_attention_pooling_dilutes_a_small_focus_and_the_instance_rules_keep_it():
    bag = _small_focus_bag()
    attention = _focus_model("attention")(bag)
    assert torch.softmax(attention.logits, 1)[0, 1] < 0.01  # the mean logit: benign
    for rule in ("top_k", "max"):
        out = _focus_model(rule)(bag)
        assert torch.softmax(out.logits, 1)[0, 1] > 0.99, rule
        torch.testing.assert_close(out.bag_logits, attention.logits)
    empty = _focus_model("top_k")(torch.zeros(1, 400, 2))
    assert torch.softmax(empty.logits, 1)[0, 1] < 0.01  # no focus: benign under every rule
    with pytest.raises(ValueError, match="two classes"):
        create_model("amil", encoder="none", embed_dim=2, n_classes=3, decision="top_k")


def test_the_result_shows_the_confident_patch_beside_the_diluted_attention():
    model = _focus_model("top_k")
    with torch.inference_mode():
        out = model(_small_focus_bag())
        per_patch = torch.softmax(out.instance_logits[0].double(), 1).numpy()
    info = evidence(model, out.attention[0].numpy(), per_patch)
    assert info["decision"] == "top_k" and info["decision_threshold"] == 0.0
    assert info["top_patch_probability"][1] > 0.99
    assert info["attention_weighted_patch_probability"][1] < 0.02


class _FeatureBags(Dataset):
    """Bags of 200 2-d features; a positive bag holds ``focus`` lesion instances (feature 0
    shifted by 4 noise widths). Training bags hold large lesions (40 instances), validation
    and test bags a single one (0.5 % of the bag), as a micrometastasis."""

    def __init__(self, n: int, seed: int, focus: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            label = i % 2
            bag = rng.normal(0, 0.5, size=(200, 2)).astype(np.float32)
            if label:
                bag[:focus, 0] += 4.0
            self.items.append((torch.from_numpy(bag), label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_training_picks_a_rule_and_threshold_on_validation_and_records_them_with_a_temperature(
    tmp_path,
):
    seed_everything(0)
    model = create_model(
        "amil", encoder="none", embed_dim=2, attn_dim=8, n_classes=2, topk_loss_weight=1.0
    )
    config = TrainConfig(epochs=20, batch_size=8, lr=1e-2, scheduler="none", device="cpu")
    result = run_to_completion(
        train(
            model,
            MILTask(),
            _FeatureBags(32, 0, focus=40),
            _FeatureBags(24, 1, focus=1),
            config,
            class_names=["benign", "lesion"],
            checkpoint_path=tmp_path / "m.safetensors",
        )
    )
    assert set(result.decision["candidates"]) == {"attention", "top_k", "max"}
    chosen = result.decision["candidates"][result.decision["chosen"]]
    attention = result.decision["candidates"]["attention"]
    assert chosen["balanced_accuracy"] >= attention["balanced_accuracy"]
    assert chosen["balanced_accuracy"] >= 0.9  # each rule at its own threshold
    assert result.calibration is not None and result.calibration.n == 24
    loaded = checkpoint.load(result.checkpoint_path, device="cpu")
    assert loaded.config["decision"] == result.decision["chosen"]
    assert loaded.model.decision == result.decision["chosen"]
    assert loaded.model.decision_threshold == pytest.approx(result.decision["threshold"])
    assert loaded.temperature == pytest.approx(result.calibration.temperature, rel=1e-5)
    test = run_to_completion(
        evaluate(
            loaded.model,
            MILTask(),
            _FeatureBags(40, 2, focus=1),
            loaded.class_names,
            device="cpu",
            temperature=loaded.temperature,
        )
    )
    assert test.metrics["accuracy"] >= 0.8  # the attention call is near chance (~0.58) here


def test_choose_decision_prefers_the_earlier_rule_on_ties():
    logits = np.array([[0.0, 1.0], [1.0, 0.0]])
    labels = np.array([1, 0])
    chosen, scores, threshold = choose_decision(
        ("attention", "top_k"), {"attention": logits, "top_k": logits}, labels
    )
    assert chosen == "attention" and scores["top_k"]["balanced_accuracy"] == 1.0
    assert threshold == 0.0  # already separated at the arg-max: no shift


def test_the_threshold_moves_to_where_validation_separates_the_classes():
    from napari_histattn.training.calibration import best_threshold

    # Ranked right, but every margin is above 0 (all called positive at the arg-max).
    margins = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    labels = np.array([0, 0, 0, 1, 1])
    assert best_threshold(margins, labels) == pytest.approx(3.5)
    assert best_threshold(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1])) == 0.0
    assert best_threshold(margins, np.zeros(5, dtype=int)) == 0.0  # one class: no evidence
    logits = np.stack([np.zeros(5), margins], axis=1)
    chosen, scores, t = choose_decision(("attention",), {"attention": logits}, labels)
    assert t == pytest.approx(3.5) and scores["attention"]["balanced_accuracy"] == 1.0


def test_a_recorded_threshold_moves_the_call_and_survives_a_checkpoint(tmp_path):
    model = _focus_model("top_k")
    bag = _small_focus_bag()  # top margin +10
    assert torch.softmax(model(bag).logits, 1)[0, 1] > 0.99
    model.set_decision("top_k", threshold=12.0)
    assert torch.softmax(model(bag).logits, 1)[0, 1] < 0.5
    path = checkpoint.save(
        tmp_path / "t.safetensors", model, class_names=["benign", "lesion"], preprocessing={}
    )
    loaded = checkpoint.load(path, device="cpu")
    assert loaded.model.decision_threshold == 12.0
    torch.testing.assert_close(loaded.model(bag).logits, model(bag).logits)


def test_the_result_panel_says_when_the_call_threshold_moved():
    from napari_histattn.inference.result import ClassificationResult

    result = ClassificationResult.__new__(ClassificationResult)
    result.class_names = ["benign", "lesion"]
    result.probabilities = np.array([0.2, 0.8])
    result.attention_maps, result.explanations = {}, {}
    result.provenance = {"decision": "attention", "decision_threshold": -2.5}
    assert result.evidence_lines() == ["called lesion above margin -2.50 (set on validation data)"]
    result.provenance = {"decision": "attention", "decision_threshold": 0.0}
    assert result.evidence_lines() == []
