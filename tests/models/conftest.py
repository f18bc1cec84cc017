"""Fixtures for the registry-driven model tests.

Every registered model is tested through the ``ModelExample`` its family
registers with it (``register_model(name, example=ModelExample(config,
make_input))``, see ``napari_histattn.models.registry``): a new family gets the
forward/backward/attention/save-load checks of ``test_registry.py`` by giving
an example; nothing needs adding here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch.nn as nn

from napari_histattn.models.registry import create_model, list_models, model_example

MODEL_NAMES = list_models()

TinyInputs = tuple[tuple[Any, ...], dict[str, Any]]


@pytest.fixture(params=MODEL_NAMES)
def model_name(request: pytest.FixtureRequest) -> str:
    """Each registered model name in turn."""
    return request.param


@pytest.fixture
def build_tiny() -> Callable[..., tuple[nn.Module, Callable[..., TinyInputs]]]:
    """``build_tiny(name, **overrides) -> (model, make_inputs)``.

    ``model`` is built from the family's tiny example configuration (plus
    ``overrides``) and ``make_inputs(batch_size=2, seed=0)`` gives its
    ``(args, kwargs)``.
    """

    def build(name: str, **overrides: Any) -> tuple[nn.Module, Callable[..., TinyInputs]]:
        example = model_example(name)
        model = create_model(name, **{**example.config, **overrides})

        def make_inputs(batch_size: int = 2, seed: int = 0) -> TinyInputs:
            return example.inputs(model.model_config, batch_size, seed)

        return model, make_inputs

    return build
