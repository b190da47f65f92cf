"""How much memory fine-tuning needs on a device: the one training-memory model.

Shared by the ServerApp (to pick each device's HeteroFL width), the ClientApp (to shrink its
batch or refuse a model that would not fit) and on-device fine-tuning (the torch and the MCU
paths plan a step before running it) -- the same budget fraction and the same accounting on
every side, so they agree. Torch-free: callers measure their tensors, this module adds them up.

One training step with SGD and momentum holds the parameters, a gradient and a momentum
buffer per *trainable* parameter, and the activations saved for the backward pass at the
chosen batch size (:class:`MemoryPlan`). Where only parameter shapes are known (Flower's
arrays), :func:`training_bytes` fills the same plan with fp32 sizes and two saved copies of the
widest layer per sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_RAM_FRACTION", "MemoryPlan", "training_bytes", "widest_activation"]

#: Share of a device's RAM fine-tuning may use: the OS, the agent and the served variant need
#: the rest. (On an MCU the on-device budget is the SRAM the serving arena leaves free.)
DEFAULT_RAM_FRACTION = 0.25

_FP32 = 4


@dataclass(frozen=True)
class MemoryPlan:
    """What one training step holds, in bytes, against the budget."""

    scope: str
    batch_size: int
    params: int
    grads: int
    optimizer_state: int
    activations: int
    budget: int
    #: transient working memory of a step beyond the above (kernels' temporaries, the
    #: gradients in flight, the forward's live layer outputs); on-device planning measures it
    working: int = 0

    @classmethod
    def sgd_momentum(
        cls,
        scope: str,
        batch_size: int,
        param_bytes: int,
        trainable_bytes: int,
        activation_bytes_per_sample: int,
        budget: int = 0,
        working: int = 0,
    ) -> MemoryPlan:
        """A step of SGD with momentum: one gradient and one momentum buffer per trainable
        parameter, and the per-sample saved activations times the batch size."""
        return cls(
            scope=scope,
            batch_size=batch_size,
            params=param_bytes,
            grads=trainable_bytes,
            optimizer_state=trainable_bytes,
            activations=activation_bytes_per_sample * batch_size,
            budget=budget,
            working=working,
        )

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer_state + self.activations + self.working

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def describe(self) -> str:
        return (
            f"{self.scope} fine-tuning at batch {self.batch_size} needs {self.total} bytes "
            f"(params {self.params} + grads {self.grads} + optimizer {self.optimizer_state} "
            f"+ activations {self.activations} + working {self.working}); "
            f"budget {self.budget} bytes"
        )


def widest_activation(shapes: Iterable[Sequence[int]]) -> int:
    """Largest per-sample activation: widest layer x 8x8 pixels for conv nets, x 1 for MLPs."""
    shapes = [tuple(s) for s in shapes if len(s) >= 1]
    spatial = 64 if any(len(s) == 4 for s in shapes) else 1
    return max(int(s[0]) for s in shapes) * spatial


def training_bytes(num_params: int, batch_size: int, widest_activation: int) -> int:
    """Peak fp32 training memory of a full step: weights + grads + momentum, plus activations
    kept for backprop (two copies of the widest layer per sample)."""
    plan = MemoryPlan.sgd_momentum(
        "full",
        batch_size,
        param_bytes=_FP32 * num_params,
        trainable_bytes=_FP32 * num_params,
        activation_bytes_per_sample=2 * _FP32 * widest_activation,
    )
    return plan.total
