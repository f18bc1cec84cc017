"""The model registry: one ``create_model(name, **config)`` for every family.

A family registers a builder (a function, or the model class itself) with
:func:`register_model`. The builder takes keyword configuration
(JSON-serialisable values only) and returns an ``nn.Module``. :func:`create_model` records the name and the full configuration
on the model (``model.model_name``, ``model.model_config``) so that
:mod:`napari_histattn.models.checkpoint` can save and rebuild it.

A family also registers a :class:`ModelExample` with its builder: a tiny
configuration and a function that makes example inputs. The registry-driven
tests (``tests/models/test_registry.py``) run forward, backward and
save/load on every registered model through it, so a new family is tested by
registering ``register_model(name, example=ModelExample(...))``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch.nn as nn

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

#: ``make_input(config, batch_size, seed) -> (args, kwargs)`` for ``model(*args, **kwargs)``.
InputMaker = Callable[[dict[str, Any], int, int], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(frozen=True)
class ModelExample:
    """A tiny configuration of a registered model and a maker of example inputs.

    Attributes
    ----------
    config
        Keyword configuration small enough for a CPU test in well under a second;
        merged over the builder's defaults by :func:`create_model`.
    make_input
        ``make_input(config, batch_size, seed) -> (args, kwargs)``: the positional
        and keyword arguments of one ``model(*args, **kwargs)`` call. ``config``
        is the full configuration (``model.model_config``). The same ``seed``
        must give equal inputs (including any ``torch.Generator`` passed as a
        keyword), so that two calls of a model in eval mode give equal outputs.
    """

    config: dict[str, Any] = field(default_factory=dict)
    make_input: InputMaker | None = None

    def inputs(
        self, config: dict[str, Any], batch_size: int = 2, seed: int = 0
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Example ``(args, kwargs)`` for a model built with ``config``."""
        if self.make_input is None:
            raise ValueError("this ModelExample has no make_input")
        return self.make_input(config, batch_size, seed)


_REGISTRY: dict[str, Builder] = {}
_EXAMPLES: dict[str, ModelExample] = {}


def register_model(name: str, *, example: ModelExample | None = None) -> Callable[[B], B]:
    """Register ``builder`` under ``name``; a duplicate name raises ``ValueError``.

    Parameters
    ----------
    name
        The registry name (stored in checkpoints).
    example
        A tiny configuration and example inputs, used by the registry-driven
        tests; every family should give one.
    """

    def decorator(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        if example is not None:
            _EXAMPLES[name] = example
        return builder

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` (tests that register a model of their own clean up with this)."""
    _REGISTRY.pop(name, None)
    _EXAMPLES.pop(name, None)


def model_example(name: str) -> ModelExample:
    """The :class:`ModelExample` registered with ``name``.

    Raises
    ------
    KeyError
        If ``name`` is unknown or was registered without an example.
    """
    _ensure_families_imported()
    _get_builder(name)
    try:
        return _EXAMPLES[name]
    except KeyError:
        raise KeyError(
            f"model {name!r} was registered without an example; pass "
            "register_model(name, example=ModelExample(...))"
        ) from None


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
    # nn.Module types __setattr__ for tensors and modules; plain attributes are fine at runtime.
    model.model_name = name  # type: ignore[assignment]
    model.model_config = full_config  # type: ignore[assignment]
    return model
