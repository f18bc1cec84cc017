"""The model registry: one ``create_model(name, **config)`` for every family.

A family registers a builder with :func:`register_model`. The builder takes
keyword configuration (JSON-serialisable values only) and returns an
``nn.Module``. :func:`create_model` records the name and the full configuration
on the model (``model.model_name``, ``model.model_config``) so that
:mod:`napari_histattn.models.checkpoint` can save and rebuild it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[B], B]:
    """Register ``builder`` under ``name``; a duplicate name raises ``ValueError``."""

    def decorator(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def _ensure_families_imported() -> None:
    # Importing the family modules runs their @register_model decorators.
    from napari_histattn.models import families  # noqa: F401


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_families_imported()
    return sorted(_REGISTRY)


def default_config(name: str) -> dict[str, Any]:
    """The builder's keyword defaults for ``name``."""
    _ensure_families_imported()
    builder = _get_builder(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _get_builder(name: str) -> Builder:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name
        A name from :func:`list_models`.
    **config
        Keyword configuration for the family's builder; omitted keys take the
        builder's defaults.

    Returns
    -------
    nn.Module
        The model, with ``model_name`` and ``model_config`` (defaults filled in)
        attributes set.
    """
    _ensure_families_imported()
    builder = _get_builder(name)
    full_config = {**default_config(name), **config}
    model = builder(**full_config)
    model.model_name = name
    model.model_config = full_config
    return model
