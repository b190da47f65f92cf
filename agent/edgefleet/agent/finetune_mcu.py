"""Last-layer fine-tuning for the ``mcu-sim`` runtime (numpy only).

Why last-layer only: a microcontroller has no room for gradients of the int8 backbone (and no
float backward kernels); what it can afford is one float copy of the final fully-connected
layer in SRAM, trained on the int8 backbone's penultimate features. The float layer starts
from the exact dequantised int8 layer -- ``W = W_q * M * out_scale`` per output channel, where
``M = multiplier * 2**(shift - 31)`` is the layer's requantisation factor -- so before training
its logits equal the int8 graph's up to rounding, and training only moves it from there.
Memory is planned before the first step against the SRAM the serving arena leaves free.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.agent.finetune_plan import FinetuneRefused, FinetuneResult, MemoryPlan

if TYPE_CHECKING:
    from edgefleet.agent.runtimes import Runtime
    from edgefleet.agent.runtimes.mcu_sim import McuSimRuntime
    from edgefleet.fl.partition import Shard

__all__ = ["finetune_last_layer"]


def _features(rt: McuSimRuntime, x: np.ndarray[Any, Any], upto: int) -> np.ndarray[Any, Any]:
    """Int8 backbone activations entering op ``upto``, as float (x_q - zero point)."""
    g = rt.graph
    vals = rt.activations(rt.quantize_input(x), stop=upto)
    n = x.shape[0]
    head = g.ops[upto]
    zp = g.tensors[head["inputs"][0]].zero_point
    q = vals[head["inputs"][0]]
    out: np.ndarray[Any, Any] = (q.reshape(n, -1).astype(np.float32) - np.float32(zp)).astype(
        np.float32
    )
    return out


def finetune_last_layer(
    runtime: Runtime,
    shard: Shard,
    budget: int,
    epochs: int,
    batch_size: int,
    lr: float,
) -> FinetuneResult:
    rt: Any = runtime
    g = rt.graph
    fcs = [i for i, op in enumerate(g.ops) if op["op"] == "fully_connected"]
    if not fcs:
        raise FinetuneRefused("the int8 graph has no fully-connected classifier to fine-tune")
    i = fcs[-1]
    op = g.ops[i]
    w_q = g.params[op["weight"]].astype(np.float32)  # [classes, features]
    b_q = g.params[op["bias"]].astype(np.float32)
    m = g.params[op["multiplier"]].astype(np.float64) * np.exp2(
        g.params[op["shift"]].astype(np.float64) - 31
    )
    out_scale = g.tensors[op["output"]].scale
    per_channel = (m * out_scale).astype(np.float32)
    w = w_q * per_channel[:, None]
    b = b_q * per_channel
    classes, feats = w.shape
    head = (w.size + b.size) * 4
    plan = MemoryPlan.sgd_momentum(
        "head",
        batch_size,
        head,
        head,
        activation_bytes_per_sample=(feats + classes) * 4,
        budget=budget,
    )
    if not plan.fits:
        raise FinetuneRefused("does not fit: " + plan.describe())
    start = time.thread_time()
    f_train = _features(rt, shard.x_train, i)
    f_eval = _features(rt, shard.x_eval, i)

    def acc() -> float:
        pred = (f_eval @ w.T + b).argmax(axis=1)
        return float((pred == shard.y_eval).mean()) if len(shard.y_eval) else 0.0

    before = acc()
    # Features are integer-valued (|f| up to 255): normalise the step by their scale.
    step = lr / max(1.0, float(np.mean(f_train**2)))
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    rng = np.random.default_rng(0)
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(shard.y_train))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            f, y = f_train[idx], shard.y_train[idx]
            z = f @ w.T + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(y)), y] -= 1.0
            p /= len(y)
            vw = 0.9 * vw + p.T @ f
            vb = 0.9 * vb + p.sum(axis=0)
            w -= step * vw
            b -= lr * vb
            steps += 1
    after = acc()
    measured = {
        "params": head,
        "grads": head,
        "optimizer_state": int(vw.nbytes + vb.nbytes),
        "activations": int(min(batch_size, len(f_train)) * (feats + classes) * 4),
    }
    return FinetuneResult(
        scope="head",
        plan=plan,
        epochs=epochs,
        steps=steps,
        accuracy_before=before,
        accuracy_after=after,
        measured_peak_bytes=sum(measured.values()),
        measured=measured,
        busy_seconds=time.thread_time() - start,
    )
