"""What a fine-tuning run plans and returns, shared by the torch path (``finetune.py``) and the
microcontroller path (``finetune_mcu.py``) so that neither imports the other's module. The plan
itself is the shared training-memory model, :class:`edgefleet.fl.budget.MemoryPlan`."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.fl.budget import MemoryPlan

__all__ = ["FinetuneRefused", "FinetuneResult", "MemoryPlan"]


class FinetuneRefused(Exception):
    """Fine-tuning cannot run on this device as asked; the message says why, with numbers."""


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
    #: the sparse update's conv layers whose weights were trained (``()`` for other scopes)
    trained_layers: tuple[str, ...] = ()
