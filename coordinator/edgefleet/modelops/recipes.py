"""Recipes as data: a recipe is a pipeline of steps, each a kind name plus parameters.

Text form (what the CLI takes and what the manifest's ``recipe_label`` shows)::

    int8-static
    prune-channels:ratio=0.4
    prune-channels:ratio=0.4+distill:width=0.5+int8-static

Steps are joined with ``+``; parameters follow ``:`` as ``key=value`` pairs (``:``-separated, so
a comma-separated list of recipes stays unambiguous). Every parameter is validated here, before
any work starts, so an impossible recipe (``prune-unstructured:sparsity=1.2``) fails with a
message naming the problem. Float-to-float steps compose freely; a precision step (fp16, int8)
ends the pipeline because its output is a graph, not a trainable network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_RECIPES",
    "STEP_KINDS",
    "Recipe",
    "RecipeError",
    "Step",
    "StepKind",
    "parse_recipe",
    "parse_recipes",
]

Param = float | int | str


class RecipeError(ValueError):
    """A recipe that is unknown, malformed or impossible."""


@dataclass(frozen=True)
class ParamSpec:
    default: Param
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    #: Whether ``low``/``high`` are exclusive bounds.
    open_low: bool = False
    open_high: bool = False

    def check(self, step: str, key: str, value: Param) -> Param:
        if self.choices:
            if str(value) not in self.choices:
                raise RecipeError(
                    f"{step}: {key}={value!r} is not one of {', '.join(self.choices)}"
                )
            return str(value)
        kind = type(self.default)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{step}: {key}={value!r} is not a {kind.__name__}") from None
        if isinstance(number, float | int):
            lo_bad = self.low is not None and (
                number <= self.low if self.open_low else number < self.low
            )
            hi_bad = self.high is not None and (
                number >= self.high if self.open_high else number > self.high
            )
            if lo_bad or hi_bad:
                lo = "(" if self.open_low else "["
                hi = ")" if self.open_high else "]"
                raise RecipeError(
                    f"{step}: {key}={value} is impossible (must be in {lo}{self.low}, {self.high}{hi})"
                )
        return number


@dataclass(frozen=True)
class StepKind:
    """One compression family: its parameters and whether it ends a pipeline."""

    name: str
    doc: str
    params: Mapping[str, ParamSpec]
    terminal: bool
    #: Parameters printed in labels even at their default (the ones a reader compares).
    always_show: tuple[str, ...] = ()


def _fraction(default: float) -> ParamSpec:
    return ParamSpec(default, 0.0, 1.0, open_low=True, open_high=True)


_EPOCHS = ParamSpec(5, 0, 200)
_CALIB = ParamSpec(256, 1, 100_000)

STEP_KINDS: Mapping[str, StepKind] = {
    k.name: k
    for k in (
        StepKind("fp16", "half-precision weights and activations", {}, terminal=True),
        StepKind(
            "int8-dynamic",
            "int8 weights (per channel); activations quantised at run time (onnxruntime)",
            {},
            terminal=True,
        ),
        StepKind(
            "int8-static",
            "int8 PTQ: per-channel weights, activations calibrated on training images",
            {
                "calibration": _CALIB,
                "method": ParamSpec("minmax", choices=("minmax", "entropy", "percentile")),
            },
            terminal=True,
        ),
        StepKind(
            "prune-unstructured",
            "global L1 magnitude pruning of conv/linear weights, then a masked fine-tune",
            {"sparsity": _fraction(0.5), "epochs": _EPOCHS},
            terminal=False,
        ),
        StepKind(
            "prune-channels",
            "structured channel pruning (torch-pruning, L2 group importance) + fine-tune",
            {"ratio": _fraction(0.4), "epochs": ParamSpec(8, 0, 200)},
            terminal=False,
        ),
        StepKind(
            "distill",
            "knowledge distillation into a narrower student of the same architecture",
            {
                "width": ParamSpec(0.5, 0.0, 1.0, open_low=True),
                "epochs": ParamSpec(30, 1, 500),
                "temperature": ParamSpec(4.0, 0.0, 100.0, open_low=True),
                "alpha": ParamSpec(0.7, 0.0, 1.0),
            },
            terminal=False,
            always_show=("width",),
        ),
        StepKind(
            "low-rank",
            "truncated SVD of Linear and dense conv weights where it saves parameters, + fine-tune",
            {"energy": _fraction(0.9), "epochs": _EPOCHS},
            terminal=False,
        ),
    )
}


@dataclass(frozen=True)
class Step:
    kind: str
    params: Mapping[str, Param]

    @property
    def label(self) -> str:
        spec = STEP_KINDS[self.kind]
        changed = [
            f"{k}={_fmt(v)}"
            for k, v in sorted(self.params.items())
            if v != spec.params[k].default or k in spec.always_show
        ]
        return ":".join([self.kind, *changed])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}


@dataclass(frozen=True)
class Recipe:
    """An ordered pipeline of steps; the empty pipeline is the unmodified base (``fp32``)."""

    steps: tuple[Step, ...]

    @property
    def label(self) -> str:
        return "+".join(s.label for s in self.steps) or "fp32"

    @property
    def precision(self) -> str:
        last = self.steps[-1].kind if self.steps else ""
        return {"fp16": "fp16", "int8-dynamic": "int8-dynamic", "int8-static": "int8"}.get(
            last, "fp32"
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]


def _fmt(value: Param) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parse_step(text: str) -> Step:
    name, *pairs = text.strip().split(":")
    kind = STEP_KINDS.get(name.strip())
    if kind is None:
        known = ", ".join(STEP_KINDS)
        raise RecipeError(f"unknown recipe step {name.strip()!r} (known: {known})")
    params: dict[str, Param] = {k: p.default for k, p in kind.params.items()}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise RecipeError(f"{kind.name}: parameter {pair!r} must look like key=value")
        if key not in kind.params:
            allowed = ", ".join(kind.params) or "none"
            raise RecipeError(f"{kind.name}: unknown parameter {key!r} (allowed: {allowed})")
        params[key] = kind.params[key].check(kind.name, key, value.strip())
    return Step(kind.name, params)


def parse_recipe(text: str) -> Recipe:
    """Parse one pipeline (``a:k=v+b+c``); ``fp32`` is the empty pipeline."""
    text = text.strip()
    if not text:
        raise RecipeError("empty recipe")
    if text == "fp32":
        return Recipe(())
    steps = tuple(_parse_step(part) for part in text.split("+"))
    for step in steps[:-1]:
        if STEP_KINDS[step.kind].terminal:
            raise RecipeError(
                f"{step.kind} must be the last step of a pipeline (it produces a fixed graph)"
            )
    return Recipe(steps)


def parse_recipes(text: str | Sequence[str]) -> list[Recipe]:
    """Parse a comma-separated list (or a sequence) of pipelines."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    recipes = [parse_recipe(p) for p in parts if p.strip()]
    if not recipes:
        raise RecipeError("no recipes given")
    return recipes


#: What ``edgefleet models build`` does without ``--recipes``: every family, and the
#: pipelines the survey recommends (prune -> int8, distill -> int8, prune -> distill -> int8),
#: less those that cannot apply to the model (:mod:`edgefleet.modelops.applicable` says why).
DEFAULT_RECIPES: tuple[str, ...] = (
    "fp16",
    "int8-dynamic",
    "int8-static",
    "prune-unstructured",
    "prune-channels",
    "distill:width=0.5",
    "distill:width=0.25",
    "low-rank",
    "prune-unstructured:sparsity=0.6+int8-static",
    "prune-channels+int8-static",
    "distill:width=0.5+int8-static",
    "prune-channels+distill:width=0.5+int8-static",
)
