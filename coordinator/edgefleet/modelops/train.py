"""Training loops: supervised training, knowledge distillation and mask-preserving fine-tunes.

Deterministic on purpose (seeded generator, single-thread-safe ops) so a rebuild of the same
recipe gives the same accuracy. The best epoch on the *validation* split is kept, never the
test split, so test accuracy stays an honest held-out number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgefleet.modelops.data import Dataset

__all__ = ["TrainConfig", "evaluate", "predict", "train"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    #: Distillation: weight of the soft-target loss and the softmax temperature.
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` on ``x`` (eval mode, no grad)."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(x[i : i + batch_size])).float().numpy())
    return np.concatenate(outs)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((predict(model, x).argmax(1) == y).mean())


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    after_step: Callable[[], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on the train split; return it with its best-validation weights.

    With ``teacher``, the loss mixes cross-entropy with Hinton's temperature-scaled KL to the
    teacher's soft targets. ``after_step`` runs after each optimiser step (pruning uses it to
    keep pruned weights at zero).
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    if teacher is not None:
        teacher.eval()
    best_acc, best_state = -1.0, copy.deepcopy(model.state_dict())
    for _ in range(config.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), config.batch_size):
            idx = perm[i : i + config.batch_size]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x[idx]) / config.kd_temperature, dim=1)
                kd = F.kl_div(
                    F.log_softmax(logits / config.kd_temperature, dim=1),
                    soft,
                    reduction="batchmean",
                )
                loss = (
                    1 - config.kd_alpha
                ) * loss + config.kd_alpha * kd * config.kd_temperature**2
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
        acc = evaluate(model, data.x_val, data.y_val)
        if acc >= best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()
