"""The classify widget's run-parameter controls, built from the model families' declarations.

One spin box per parameter that any registered family declares
(:attr:`~napari_histattn.models.family.Family.params`); choosing a checkpoint
shows its family's parameters with their labels, tooltips, bounds and the
checkpoint's defaults, and hides the rest. Adding a family adds its controls here
without touching the widget.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import FloatSpinBox, SpinBox

__all__ = ["configure_controls", "param_controls", "param_values"]


def param_controls() -> dict[str, Any]:
    """A hidden spin box for every run parameter that a registered family declares."""
    from napari_histattn.models.family import list_families

    controls: dict[str, Any] = {}
    for family in list_families():
        for param in family.params:
            if param.name not in controls:
                kind = FloatSpinBox if param.kind is float else SpinBox
                control = kind(
                    name=param.name, label=param.label, min=param.minimum, max=param.maximum
                )
                control.visible = False
                controls[param.name] = control
    return controls


def configure_controls(controls: dict[str, Any], family: Any, values: dict[str, Any]) -> None:
    """Show the parameters in ``values`` (those of ``family`` that apply to the checkpoint)
    with their declared look; hide the others."""
    for name, control in controls.items():
        param = family.param(name) if name in values else None
        control.visible = param is not None
        if param is None:
            continue
        control.label = param.label
        control.tooltip = param.help
        control.range = (param.minimum, param.maximum)
        control.value = values[name]


def param_values(controls: dict[str, Any], family: Any, names: Any) -> dict[str, Any]:
    """``family``'s parameters called ``names`` as the controls show them (empty without a family)."""
    if family is None:
        return {}
    return {p.name: p.kind(controls[p.name].value) for p in family.params if p.name in names}
