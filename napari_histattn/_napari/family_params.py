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

__all__ = [
    "EXPLAIN_CHOICES",
    "configure_controls",
    "explain_control",
    "param_controls",
    "param_values",
    "slide_mpp_control",
]


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


def slide_mpp_control() -> Any:
    """The "slide um/px" box: 0 uses the file's pixel size; a value gives one to a file that
    records none (a TCGA SVS without it, a BreakHis PNG) or overrides a wrong one."""
    control = FloatSpinBox(label="slide um/px (0 = file's)", min=0.0, max=100.0, step=0.01)
    control.tooltip = (
        "The slide's level-0 micrometres per pixel. 0: as the file records it. Files without "
        "one need it for slide models; image-level models otherwise read the image as if it "
        "were at their training resolution, and say so."
    )
    return control


#: The widget's "explain with" choices: what a reviewer reads -> the engine's methods.
EXPLAIN_CHOICES: dict[str, tuple[str, ...]] = {
    "attention only": (),
    "+ Grad-CAM": ("gradcam",),
    "+ guided Grad-CAM": ("guided_gradcam",),
    "+ saliency": ("saliency",),
    "+ all three": ("gradcam", "guided_gradcam", "saliency"),
}


def explain_control() -> Any:
    """The "explain with" box: post-hoc explanations beside the model's attention, each an
    aligned layer named after its method (shown for families that compute them)."""
    from magicgui.widgets import ComboBox

    control = ComboBox(label="explain with", choices=list(EXPLAIN_CHOICES), value="attention only")
    control.tooltip = (
        "Also compute post-hoc explanations of each tile's evidence (Grad-CAM, guided "
        "Grad-CAM, gradient saliency): one more layer each, hidden at first; all three "
        "take about 7x the run time (measured on the sample slide)."
    )
    control.visible = False
    return control
