"""LoRA adapters for the zoo's byte-level LM: rank-``r`` A/B pairs beside frozen linears.

Why here, shared, with torch: the device trains the adapters (the agent's ClientApp) and the
coordinator merges and exports them (:mod:`edgefleet.modelops.lm_lora`); both must agree on
the adapter's tensor names, shapes and scale, and the agent may not import the coordinator
side. Like :mod:`edgefleet.zoo` it imports torch; the light shared modules never import it.

Why our own few lines and not PEFT: PEFT is not installed here (no new dependencies), and it
would bring transformers/accelerate onto a device for ~100 lines of arithmetic. ByteLM also
fuses q, k and v into one ``qkv`` linear; LoRA as the field uses it (Hu et al. 2021, PEFT's
``target_modules=["q_proj", "v_proj"]``) adapts q and v only, so an adapter here targets *row
slices* of a linear's output: ``y = W x + (alpha / r) * pad(B_s (A_s x))`` for each targeted
slice ``s``. The arithmetic is PEFT's: A Kaiming-uniform, B zero (the adapted model starts
equal to the base), scale ``alpha / r``; the base weights are frozen (``requires_grad``
off), so only the adapters train, and only they travel in a federated round.

Merging (:func:`merge_lora`) folds ``scale * B_s A_s`` into the slice's rows of ``W`` and
returns a plain :class:`~edgefleet.zoo.ByteLM` with the base's state-dict keys: what the LM
export path (ONNX, weight-only quantizers) already takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edgefleet.zoo import ByteLM

__all__ = [
    "LORA_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "adapter_arrays",
    "add_lora",
    "heldout_nll",
    "load_adapter_arrays",
    "merge_lora",
]

#: what an adapter may target in each ByteLM block: q/k/v are row slices of the fused ``qkv``
#: linear, ``proj`` the attention output, ``up``/``down`` the MLP
LORA_TARGETS = ("q", "k", "v", "proj", "up", "down")
_QKV = {"q": 0, "k": 1, "v": 2}
Arrays = dict[str, npt.NDArray[np.float32]]


class LoRAError(ValueError):
    """A LoRA config or a set of adapter tensors that does not fit the model."""


@dataclass(frozen=True)
class LoRAConfig:
    """Rank, scale numerator and targets (``alpha / rank`` scales the update, as in PEFT)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise LoRAError(f"lora rank must be >= 1, got {self.rank}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise LoRAError(f"lora targets must be among {', '.join(LORA_TARGETS)}, got {bad}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoRAConfig:
        try:
            return cls(
                int(data.get("rank", 8)),
                float(data.get("alpha", 16.0)),
                tuple(str(t) for t in data.get("targets", ("q", "v"))),
            )
        except (TypeError, ValueError) as exc:
            raise LoRAError(f"malformed lora config: {exc}") from None


class LoRALinear(nn.Module):
    """A frozen ``Linear`` plus one A/B pair per targeted row slice of its output."""

    def __init__(
        self, base: nn.Linear, slices: Mapping[str, tuple[int, int]], config: LoRAConfig
    ) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.slices = dict(slices)
        self.scale = config.scale
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for name, (start, stop) in self.slices.items():
            a = torch.empty(config.rank, base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # PEFT's (and nn.Linear's) init
            self.lora_a[name] = nn.Parameter(a)
            self.lora_b[name] = nn.Parameter(torch.zeros(stop - start, config.rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        out = self.base.out_features
        for name, (start, stop) in self.slices.items():
            delta = (x @ self.lora_a[name].T) @ self.lora_b[name].T
            y = y + nn.functional.pad(delta * self.scale, (start, out - stop))
        return y

    def merged_weight(self) -> torch.Tensor:
        """``W`` with every slice's ``scale * B A`` added to its rows."""
        w = self.base.weight.detach().clone()
        for name, (start, stop) in self.slices.items():
            w[start:stop] += self.scale * (self.lora_b[name] @ self.lora_a[name]).detach()
        return w


def _targets_of(block: nn.Module, dim: int, config: LoRAConfig) -> dict[str, dict[str, Any]]:
    """``{attribute: {slice name: (start, stop)}}`` for one block."""
    out: dict[str, dict[str, Any]] = {}
    qkv = {t: (_QKV[t] * dim, (_QKV[t] + 1) * dim) for t in config.targets if t in _QKV}
    if qkv:
        out["qkv"] = qkv
    for attr in ("proj", "up", "down"):
        if attr in config.targets:
            layer = getattr(block, attr)
            out[attr] = {attr: (0, layer.out_features)}
    return out


def add_lora(model: ByteLM, config: LoRAConfig, seed: int = 0) -> ByteLM:
    """Freeze every base weight of ``model`` and wrap its targeted linears (in place).

    ``seed`` fixes the A initialisation, so a coordinator and its devices can start from the
    same adapters without shipping them (they are shipped anyway: B is zero, A is not).
    """
    if not isinstance(model, ByteLM):
        raise LoRAError(f"LoRA adapters are for byte-lm, not {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for block in model.blocks:
            for attr, slices in _targets_of(block, model.dim, config).items():
                layer = getattr(block, attr)
                if isinstance(layer, LoRALinear):
                    raise LoRAError("model already carries LoRA adapters")
                setattr(block, attr, LoRALinear(layer, slices, config))
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def _lora_layers(model: nn.Module) -> Iterable[tuple[str, LoRALinear]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def adapter_arrays(model: nn.Module) -> Arrays:
    """The adapters alone, as float32 arrays named like the model's state dict."""
    return {
        k: v.detach().cpu().numpy().astype(np.float32)
        for k, v in model.state_dict().items()
        if ".lora_a." in k or ".lora_b." in k
    }


def load_adapter_arrays(model: nn.Module, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Set the adapters from ``arrays``; names and shapes must match exactly (one error)."""
    own = adapter_arrays(model)
    if set(own) != set(arrays):
        diff = sorted(set(own) ^ set(arrays))
        raise LoRAError(f"adapter tensors do not match the model's: {diff[:3]}")
    wrong = [k for k, v in own.items() if tuple(np.shape(arrays[k])) != v.shape]
    if wrong:
        raise LoRAError(f"adapter {wrong[0]!r}: shape {np.shape(arrays[wrong[0]])}, expected "
                        f"{own[wrong[0]].shape}")  # fmt: skip
    state = {k: torch.from_numpy(np.asarray(arrays[k], np.float32).copy()) for k in own}
    model.load_state_dict(state, strict=False)


def merge_lora(model: ByteLM) -> ByteLM:
    """A plain ByteLM whose weights are the base plus every adapter's update."""
    plain = ByteLM(**model.config())
    state = {}
    for k, v in model.state_dict().items():
        if ".lora_a." in k or ".lora_b." in k:
            continue
        state[k.replace(".base.", ".")] = v.detach().clone()
    for name, layer in _lora_layers(model):
        state[f"{name}.weight"] = layer.merged_weight()
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def heldout_nll(
    model: ByteLM, data: npt.NDArray[np.uint8], context: int, max_bytes: int
) -> tuple[float, float, int]:
    """Mean next-byte NLL (nats), next-byte accuracy and bytes scored over consecutive
    ``context`` windows of the first ``max_bytes`` (``exp(nll)`` is the perplexity)."""
    n = min(int(data.size), max_bytes)
    windows = (n - 1) // context
    if windows < 1:
        raise LoRAError(f"held-out text too short: {n} bytes for context {context}")
    rows = torch.from_numpy(data[: windows * context + 1].astype(np.int64))
    x, y = rows[:-1].view(windows, context), rows[1:].view(windows, context)
    total = correct = 0.0
    with torch.no_grad():
        for i in range(0, windows, 16):
            pk, pv = model.empty_cache(x[i : i + 16].shape[0])
            logits, _, _ = model(x[i : i + 16], pk, pv)
            flat = logits.reshape(-1, logits.shape[-1])
            target = y[i : i + 16].reshape(-1)
            total += float(nn.functional.cross_entropy(flat, target, reduction="sum"))
            correct += float((flat.argmax(-1) == target).sum())
    scored = windows * context
    return total / scored, correct / scored, scored
