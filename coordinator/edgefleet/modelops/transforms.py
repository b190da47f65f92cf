"""Float-to-float compressions: pruning, distillation, low-rank factorisation.

Each transform takes a trained network and its :class:`ArchitectureSpec` and returns a new
(trained) network and the spec that rebuilds it exactly on a device. The heavy lifting is done
by the libraries made for it: ``torch.nn.utils.prune`` for magnitude pruning, ``torch_pruning``
for dependency-aware channel removal; only the SVD split and the fine-tune loops are ours.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from edgefleet.modelops.data import Dataset
from edgefleet.modelops.recipes import Param, RecipeError, Step
from edgefleet.modelops.train import TrainConfig, train
from edgefleet.zoo import (
    ArchitectureSpec,
    LowRankConv2d,
    LowRankLinear,
    architecture_of,
    build_model,
    low_rank_compatible,
)

__all__ = ["apply_float_step", "factorisable_layers", "prunable_layers", "sparsity"]

Model = tuple[nn.Module, ArchitectureSpec]


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear layers magnitude pruning works on."""
    return [n for n, _ in _weighted_layers(model)]


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all conv/linear weight tensors."""
    total = zeros = 0
    for _, layer in _weighted_layers(model):
        total += layer.weight.numel()
        zeros += int((layer.weight == 0).sum())
    return zeros / max(total, 1)


def prune_unstructured(
    model: nn.Module, spec: ArchitectureSpec, data: Dataset, amount: float, epochs: int, seed: int
) -> Model:
    """Global L1 magnitude pruning, fine-tuned with the masks held (torch.nn.utils.prune).

    The pruning re-parametrisation stays on during fine-tuning, so pruned weights remain
    exactly zero; ``prune.remove`` then bakes the zeros into plain weights.
    """
    model = copy.deepcopy(model)
    targets = [(layer, "weight") for _, layer in _weighted_layers(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    if epochs:
        train(model, data, TrainConfig(epochs=epochs, lr=1e-3, seed=seed))
    for layer, name in targets:
        prune.remove(layer, name)  # type: ignore[no-untyped-call]
    return model.eval(), spec


def prune_channels(
    model: nn.Module, spec: ArchitectureSpec, data: Dataset, ratio: float, epochs: int, seed: int
) -> Model:
    """Remove ``ratio`` of the channels of every prunable group (torch-pruning), then fine-tune.

    torch-pruning traces the dependency graph, so depthwise convs, BatchNorms and residual
    additions lose the same channels as the layers that feed them. The classifier's outputs
    are kept (they are the classes).
    """
    if spec.name == "custom":
        raise RecipeError(
            "prune-channels changes layer widths, which a device can only rebuild for zoo "
            "architectures; use prune-unstructured for custom models"
        )
    import torch_pruning as tp  # type: ignore[import-untyped]

    model = copy.deepcopy(model).eval()
    example = torch.zeros(1, *spec.input_shape)
    classifier = getattr(model, "classifier", None)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[classifier] if isinstance(classifier, nn.Module) else [],
        round_to=4,
    )
    pruner.step()
    new_spec = architecture_of(model, spec)
    if epochs:
        train(model, data, TrainConfig(epochs=epochs, lr=2e-3, seed=seed))
    return _rebuilt(model, new_spec), new_spec


def distill(
    teacher: nn.Module,
    spec: ArchitectureSpec,
    data: Dataset,
    width: float,
    epochs: int,
    temperature: float,
    alpha: float,
    seed: int,
) -> Model:
    """Train a fresh student of the same family at ``width`` x the teacher's channels.

    The student's layout is the teacher's (possibly pruned) per-layer widths scaled down, so
    distilling a pruned teacher gives a proportionally narrower student.
    """
    if spec.name == "custom":
        raise RecipeError("distill needs a zoo architecture to derive a narrower student")
    student_spec = ArchitectureSpec(
        spec.name, _scale_config(spec.config, width), spec.input_shape, None, {}
    )
    torch.manual_seed(seed)
    student = build_model(student_spec)
    config = TrainConfig(
        epochs=epochs, lr=3e-3, seed=seed, kd_alpha=alpha, kd_temperature=temperature
    )
    train(student, data, config, teacher=teacher)
    return student.eval(), student_spec


_WIDTH_KEYS = ("channels", "stage_channels", "mid_channels", "hidden", "stem_channels")


def _scale_config(config: Mapping[str, object], width: float) -> dict[str, object]:
    out = dict(config)
    for key in _WIDTH_KEYS:
        value = out.get(key)
        if isinstance(value, int):
            out[key] = max(4, round(value * width))
        elif isinstance(value, list):
            out[key] = [max(4, round(int(v) * width)) for v in value]
    return out


def low_rank(
    model: nn.Module, spec: ArchitectureSpec, data: Dataset, energy: float, epochs: int, seed: int
) -> Model:
    """Truncated SVD of every Linear and dense conv where the factorisation is smaller.

    A conv's kernel is viewed as an ``out x (in*kh*kw)`` matrix. The rank keeps ``energy`` of
    the squared singular values; a layer is only split when ``r * (fan_in + out) < fan_in *
    out``, i.e. when it really saves weights and MACs (depthwise convs are never split).
    """
    model = copy.deepcopy(model).eval()
    for name, layer in list(model.named_modules()):
        twin = _factorise(layer, energy)
        if twin is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, twin)
    new_spec = architecture_of(model, spec)
    if not new_spec.low_rank:
        raise RecipeError(
            f"low-rank: no layer can be factorised at energy={energy:g} "
            "(no Linear/conv layer where the split is smaller)"
        )
    if epochs:
        train(model, data, TrainConfig(epochs=epochs, lr=1e-3, seed=seed))
    return _rebuilt(model, new_spec), new_spec


def factorisable_layers(model: nn.Module, energy: float) -> list[str]:
    """Names of the layers :func:`low_rank` would split at ``energy`` (an SVD each, no copy)."""
    with torch.no_grad():
        return [n for n, m in model.named_modules() if _factorise(m, energy) is not None]


def _factorise(layer: nn.Module, energy: float) -> nn.Module | None:
    if isinstance(layer, nn.Linear):
        w = layer.weight.detach()
    elif isinstance(layer, nn.Conv2d) and low_rank_compatible(layer):
        w = layer.weight.detach().reshape(layer.out_channels, -1)
    else:
        return None
    out_f, in_f = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    cumulative = torch.cumsum(s**2, 0) / torch.sum(s**2)
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy)).item()) + 1
    if rank * (in_f + out_f) >= in_f * out_f:
        return None
    root = torch.sqrt(s[:rank])
    down = (root[:, None] * vh[:rank]).contiguous()  # (rank, in)
    up = (u[:, :rank] * root[None, :]).contiguous()  # (out, rank)
    bias = layer.bias is not None
    twin: LowRankLinear | LowRankConv2d
    if isinstance(layer, nn.Linear):
        twin = LowRankLinear(in_f, out_f, rank, bias)
        twin.down.weight.data.copy_(down)
        twin.up.weight.data.copy_(up)
    else:
        assert isinstance(layer, nn.Conv2d)
        twin = LowRankConv2d(
            layer.in_channels,
            out_f,
            rank,
            bias,
            layer.weight.shape[2:],  # type: ignore[arg-type]
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
        )
        twin.down.weight.data.copy_(down.reshape(rank, *layer.weight.shape[1:]))
        twin.up.weight.data.copy_(up[:, :, None, None])
    if bias and layer.bias is not None:
        twin.up.bias.data.copy_(layer.bias.detach())  # type: ignore[union-attr]
    return twin


def _rebuilt(model: nn.Module, spec: ArchitectureSpec) -> nn.Module:
    """Round-trip through the spec, proving the manifest alone rebuilds this network."""
    fresh = build_model(spec)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


def apply_float_step(
    step: Step, model: nn.Module, spec: ArchitectureSpec, data: Dataset, seed: int
) -> Model:
    """Dispatch one non-terminal recipe step."""
    p: Mapping[str, Param] = step.params
    if step.kind == "prune-unstructured":
        return prune_unstructured(model, spec, data, float(p["sparsity"]), int(p["epochs"]), seed)
    if step.kind == "prune-channels":
        return prune_channels(model, spec, data, float(p["ratio"]), int(p["epochs"]), seed)
    if step.kind == "distill":
        return distill(
            model,
            spec,
            data,
            float(p["width"]),
            int(p["epochs"]),
            float(p["temperature"]),
            float(p["alpha"]),
            seed,
        )
    if step.kind == "low-rank":
        return low_rank(model, spec, data, float(p["energy"]), int(p["epochs"]), seed)
    raise RecipeError(f"{step.kind} is not a float-to-float step")
