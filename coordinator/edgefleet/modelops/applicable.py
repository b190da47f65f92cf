"""Which recipes apply to a model: the default build set, with each skip said and explained.

Why a check before building rather than letting a recipe fail: ``models build NAME`` without
``--recipes`` means "every compression that makes sense here", and a custom model used to stop
at the first recipe that cannot apply (``prune-channels``), with nothing built after it. Each
step is checked on the real model: channel pruning and distillation need a zoo family (a
device rebuilds changed widths from the family's config), unstructured pruning needs Conv2d /
Linear weights, low-rank needs a layer whose truncated SVD is smaller at the step's energy.
Precision steps apply to any graph onnxruntime runs; whether the int8 graph also exports to the
MCU format (its ops: conv, depthwise conv, fully connected, add, global average pool, reshape)
is found by quantising on a few training rows and exporting, and is a note, not a skip, since
the int8 variant still serves onnxruntime devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from edgefleet.modelops.data import Dataset
from edgefleet.modelops.recipes import DEFAULT_RECIPES, Recipe, Step, parse_recipe
from edgefleet.modelops.transforms import factorisable_layers, prunable_layers
from edgefleet.zoo import ArchitectureSpec

__all__ = ["Applicability", "default_recipes", "mcu_blocker", "step_blocker"]

#: rows of the training split used to calibrate the trial int8 graph (enough for the export)
_TRIAL_CALIBRATION = 16


@dataclass(frozen=True)
class Applicability:
    """The recipes to build, the ones skipped with why, and notes that do not skip."""

    recipes: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def step_blocker(step: Step, model: nn.Module, spec: ArchitectureSpec) -> str | None:
    """Why ``step`` cannot apply to ``model`` (``None``: it applies)."""
    custom = spec.name == "custom"
    if step.kind == "prune-channels" and custom:
        return (
            "prune-channels changes layer widths, which a device rebuilds only for zoo "
            "architectures (prune-unstructured applies)"
        )
    if step.kind == "distill" and custom:
        return "distill derives a narrower student from a zoo family's config"
    if step.kind == "prune-unstructured" and not prunable_layers(model):
        return "no Conv2d or Linear weights to prune"
    if step.kind == "low-rank":
        energy = float(step.params["energy"])
        if not factorisable_layers(model, energy):
            return (
                f"no Linear or dense conv whose rank at energy={energy:g} is smaller than the "
                "layer (depthwise convs are never split)"
            )
    return None


def mcu_blocker(model: nn.Module, spec: ArchitectureSpec, data: Dataset) -> str | None:
    """Why a static-int8 graph of ``model`` would not export to the MCU format, if it would not."""
    from edgefleet.modelops.mcu import McuExportError, export_mcu
    from edgefleet.modelops.onnx_export import export_onnx
    from edgefleet.modelops.quantize import to_int8_static

    graph = export_onnx(model, spec.input_shape)
    int8 = to_int8_static(graph, data.x_train[:_TRIAL_CALIBRATION], "minmax")
    try:
        export_mcu(int8)
    except McuExportError as exc:
        return str(exc)
    return None


def default_recipes(
    model: nn.Module,
    spec: ArchitectureSpec,
    data: Dataset,
    candidates: Sequence[str] = DEFAULT_RECIPES,
) -> Applicability:
    """The ``candidates`` whose every step applies to ``model``, in order, with the skips."""
    parsed: list[tuple[str, Recipe]] = [(text, parse_recipe(text)) for text in candidates]
    cache: dict[str, str | None] = {}
    recipes: list[str] = []
    skipped: dict[str, str] = {}
    for text, recipe in parsed:
        reason = None
        for step in recipe.steps:
            if step.label not in cache:
                cache[step.label] = step_blocker(step, model, spec)
            reason = cache[step.label]
            if reason is not None:
                break
        if reason is None:
            recipes.append(text)
        else:
            skipped[text] = reason
    notes = []
    if any(parse_recipe(r).precision == "int8" for r in recipes):
        blocker = mcu_blocker(model, spec, data)
        if blocker is not None:
            notes.append(f"int8-static variants will have no mcu-sim files: {blocker}")
    return Applicability(recipes, skipped, notes)
