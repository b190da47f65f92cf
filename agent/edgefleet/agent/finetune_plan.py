"""What a fine-tuning run plans and returns, shared by the torch path (``finetune.py``) and the
microcontroller path (``finetune_mcu.py``) so that neither imports the other's module."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FinetuneRefused", "FinetuneResult", "MemoryPlan"]


class FinetuneRefused(Exception):
    """Fine-tuning cannot run on this device as asked; the message says why, with numbers."""


@dataclass(frozen=True)
class MemoryPlan:
    scope: str
    batch_size: int
    params: int
    grads: int
    optimizer_state: int
    activations: int
    budget: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer_state + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def describe(self) -> str:
        return (
            f"{self.scope} fine-tuning at batch {self.batch_size} needs {self.total} bytes "
            f"(params {self.params} + grads {self.grads} + optimizer {self.optimizer_state} "
            f"+ activations {self.activations}); budget {self.budget} bytes"
        )


@dataclass(frozen=True)
class FinetuneResult:
    scope: str
    plan: MemoryPlan
    epochs: int
    steps: int
    accuracy_before: float
    accuracy_after: float
    measured_peak_bytes: int
    measured: dict[str, int] = field(default_factory=dict)
    busy_seconds: float = 0.0  # thread CPU time of the run (drives the battery model)
