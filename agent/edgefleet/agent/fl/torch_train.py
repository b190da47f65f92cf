"""Torch fine-tuning for zoo conv nets (DS-CNN, ResNet-8); imported only inside a handler.

Kept apart from ``clientapp.py`` so the light path (numpy MLP) never pays ``import torch``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edgefleet.fl.partition import Shard
from edgefleet.zoo import ArchitectureSpec, build_model

__all__ = ["fit", "score"]

Arrays = dict[str, npt.NDArray[np.float32]]


def _model(arch: str, config: dict[str, Any], params: Arrays) -> nn.Module:
    model = build_model(ArchitectureSpec(name=arch, config=config, input_shape=(1, 8, 8)))
    state = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
    ref = model.state_dict()
    for k, v in state.items():
        if k in ref and ref[k].dtype != v.dtype:
            state[k] = v.to(ref[k].dtype)  # e.g. BatchNorm's int64 num_batches_tracked
    model.load_state_dict(state)
    return model


def _score(
    model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        target = torch.from_numpy(y)
        loss = float(nn.functional.cross_entropy(logits, target))
        acc = float((logits.argmax(1) == target).float().mean())
    return loss, acc


def score(arch: str, config: dict[str, Any], params: Arrays, shard: Shard) -> tuple[float, float]:
    """Loss and accuracy of ``params`` on the shard's held-out part."""
    return _score(_model(arch, config, params), shard.x_eval, shard.y_eval)


def fit(
    arch: str,
    config: dict[str, Any],
    params: Arrays,
    shard: Shard,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    proximal_mu: float,
    seed: int,
) -> tuple[Arrays, float, tuple[float, float], tuple[float, float]]:
    """SGD (momentum, optional FedProx term) on the shard; returns params, loss, pre/post scores."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = _model(arch, config, params)
    pre = _score(model, shard.x_eval, shard.y_eval)
    anchor = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = torch.from_numpy(shard.x_train), torch.from_numpy(shard.y_train)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot normalise a batch of one
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if proximal_mu:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + proximal_mu / 2 * prox
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses.append(float(loss))
    post = _score(model, shard.x_eval, shard.y_eval)
    out = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    return out, float(np.mean(losses)) if losses else 0.0, pre, post
