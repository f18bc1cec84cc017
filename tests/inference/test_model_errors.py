"""An error inside a model reaches the user as our error naming the stage, never a raw
ZeroDivisionError or KeyError; the CPU running out of memory is our error too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_histattn.errors import HistattnError
from napari_histattn.inference.engine import classify
from napari_histattn.inference.errors import ModelRunError
from napari_histattn.progress import run_to_completion


def _break_convolutions(model: nn.Module, exc: BaseException) -> None:
    def fail(*_args, **_kwargs):
        raise exc

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert convs
    for module in convs:
        module.forward = fail  # type: ignore[method-assign]


@pytest.mark.parametrize("family", ["amil", "attention_sampling", "dafl_cnn"])
@pytest.mark.parametrize(
    "exc", [ZeroDivisionError("division by zero"), KeyError("weight"), IndexError("3")]
)
def test_an_error_inside_the_model_names_the_stage(lesion_slide, loaded, family, exc) -> None:
    ckpt = loaded[family]
    _break_convolutions(ckpt.model, exc)
    with pytest.raises(ModelRunError) as caught:
        run_to_completion(classify(lesion_slide.path, ckpt, device="cpu"))
    assert type(exc).__name__ in str(caught.value)
    assert f"stage {caught.value.stage!r}" in str(caught.value)


def test_the_cpu_running_out_of_memory_is_our_error(lesion_slide, loaded) -> None:
    ckpt = loaded["amil"]
    _break_convolutions(ckpt.model, MemoryError())
    with pytest.raises(HistattnError, match="out of memory on the CPU"):
        run_to_completion(classify(lesion_slide.path, ckpt, device="cpu", batch_size=4))
    assert torch.get_num_threads() >= 1
