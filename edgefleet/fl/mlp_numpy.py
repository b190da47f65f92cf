"""Train and evaluate a zoo ``mlp`` in plain numpy.

Why it still exists: devices without torch (the base agent and ``agent-onnx`` installs) can
still join an ``mlp`` federation, and the coordinator scores with it. Speed is no longer the
reason: since each device with torch runs a long-lived training worker
(:mod:`edgefleet.agent.fl.train_worker`), the same MLP trained there costs the same CPU per
update (``benchmarks/fl_worker.py``: 1.40 vs 1.41 s), and ``mlp-in-worker`` sends it there. An
MLP's forward/backward is a few matrix products, so numpy trains the *same* network (same
state-dict names and layouts as ``edgefleet.zoo.MLP``: ``features.<i>.weight [out, in]``,
``.bias``, ``classifier.*``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

__all__ = ["TrainResult", "evaluate", "train"]

Arrays = dict[str, npt.NDArray[np.float32]]


class TrainResult(dict[str, float]):
    """Metrics of one local fine-tuning pass (loss/accuracy before and after, sample count)."""


def _layers(params: Mapping[str, npt.NDArray[np.float32]]) -> list[tuple[str, str]]:
    """(weight name, bias name) pairs in forward order (the state dict's own order)."""
    names = [n for n in params if n.endswith(".weight")]
    return [(n, n[: -len("weight")] + "bias") for n in names]


def _forward(
    params: Mapping[str, npt.NDArray[np.float32]], x: npt.NDArray[np.float32]
) -> tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    acts = [x.reshape(len(x), -1)]
    layers = _layers(params)
    for i, (w, b) in enumerate(layers):
        z = acts[-1] @ params[w].T + params[b]
        if i < len(layers) - 1:
            z = np.maximum(z, 0.0)
            acts.append(z.astype(np.float32))
        else:
            return acts, z.astype(np.float32)
    raise ValueError("an MLP needs at least one linear layer")


def _softmax_xent(
    logits: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> tuple[float, npt.NDArray[np.float32]]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    grad = p
    grad[np.arange(len(y)), y] -= 1.0
    return loss, (grad / len(y)).astype(np.float32)


def evaluate(
    params: Mapping[str, npt.NDArray[np.float32]],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``params`` on ``(x, y)``."""
    _, logits = _forward(params, x)
    loss, _ = _softmax_xent(logits, y)
    return loss, float((logits.argmax(axis=1) == y).mean())


def train(
    params: Mapping[str, npt.NDArray[np.float32]],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> tuple[Arrays, float]:
    """Mini-batch SGD (momentum, optional FedProx proximal term); returns (params, mean loss)."""
    p: Arrays = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}
    anchor = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    layers = _layers(p)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            acts, logits = _forward(p, x[idx])
            loss, delta = _softmax_xent(logits, y[idx])
            losses.append(loss)
            grads: Arrays = {}
            for i in range(len(layers) - 1, -1, -1):
                w, b = layers[i]
                grads[w] = delta.T @ acts[i]
                grads[b] = delta.sum(axis=0)
                if i:
                    delta = (delta @ p[w]) * (acts[i] > 0)
            for k, g in grads.items():
                if proximal_mu:
                    g = g + proximal_mu * (p[k] - anchor[k])
                vel[k] = momentum * vel[k] + g
                p[k] -= lr * vel[k]
    return p, float(np.mean(losses)) if losses else 0.0
