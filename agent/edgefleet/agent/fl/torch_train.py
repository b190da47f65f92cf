"""Torch fine-tuning for zoo conv nets (DS-CNN, ResNet-8); imported only inside a handler.

Kept apart from ``clientapp.py`` so the light path (numpy MLP) never pays ``import torch``.

What a round trains is planned under the device's memory budget, with the planner and the
memory-light training on-device fine-tuning uses (:mod:`edgefleet.agent.finetune`,
:mod:`edgefleet.agent.finetune_light`): the first scope of ``full``, ``sparse`` (biases, the
classifier and the last pointwise convs' weights), ``tinytl`` (biases + classifier) and
``head`` whose measured plan fits -- so a memory-tight device joins the round training fewer
tensors instead of failing it. The light scopes keep BatchNorm statistics frozen and run the
frozen Conv-BN-ReLU blocks through the bit-packed-mask autograd Function, and the device
reports only the tensors it trained (:attr:`Fitted.trained`); the others are the model it
received, unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edgefleet.fl.budget import MemoryPlan
from edgefleet.fl.partition import Shard
from edgefleet.zoo import ArchitectureSpec, build_model

__all__ = ["Fitted", "Scoped", "fit", "plan_scope", "score"]

Arrays = dict[str, npt.NDArray[np.float32]]
#: the smallest batch the planner shrinks to (BatchNorm cannot normalise a batch of one)
MIN_BATCH = 2


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
    modes = {m: m.training for m in model.modules()}  # a light scope's BatchNorms stay eval
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        target = torch.from_numpy(y)
        loss = float(nn.functional.cross_entropy(logits, target))
        acc = float((logits.argmax(1) == target).float().mean())
    for module, training in modes.items():
        module.training = training
    return loss, acc


def score(arch: str, config: dict[str, Any], params: Arrays, shard: Shard) -> tuple[float, float]:
    """Loss and accuracy of ``params`` on the shard's held-out part."""
    return _score(_model(arch, config, params), shard.x_eval, shard.y_eval)


@dataclass(frozen=True)
class Scoped:
    """A model ready to train: its scope, batch size and the plan that fits (None: no budget)."""

    model: nn.Module
    scope: str
    batch_size: int
    plan: MemoryPlan | None
    #: state-dict keys this scope changes (every key for ``full``: BatchNorm statistics too)
    trained: tuple[str, ...]


def _scoped(arch: str, config: dict[str, Any], params: Arrays, scope: str, layers: int) -> Scoped:
    """The round's model with ``scope``'s parameters trainable (plan and batch filled later)."""
    from edgefleet.agent.finetune_light import make_memory_light, sparse_trainable
    from edgefleet.agent.runtimes.torch_rt import scope_trainable

    model = scope_trainable(_model(arch, config, params), "tinytl" if scope == "sparse" else scope)
    if scope == "sparse":
        sparse_trainable(model, layers)
    if scope == "full":
        trained = tuple(model.state_dict())
    else:
        make_memory_light(model)
        trained = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    return Scoped(model, scope, 0, None, trained)


#: light-scope plans this process made, by what they depend on: a plan's measured memory is
#: a function of the tensors' shapes, the input shape, the budget and the batch -- not of the
#: weights' values, which change every round. Why: the dry runs cost ~1 s of CPU per plan on
#: DS-CNN, and a process that trains round after round (a device's train worker, a simulation's
#: Ray actor serving many devices of one class) would pay them every round for the same plan:
#: a simulated 1,000-device DS-CNN round took 21 s with ~10 head-only devices against 6.3 s
#: with none (benchmarks/fl_sim.py).
_PLANS: dict[tuple[Any, ...], tuple[str, int, int, MemoryPlan]] = {}
_PLANS_KEPT = 64


def _plan_key(
    arch: str,
    config: dict[str, Any],
    params: Arrays,
    input_shape: list[int],
    budget: int,
    batch_size: int,
    sparse_layers: int,
) -> tuple[Any, ...]:
    shapes = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in params.items()))
    conf = json.dumps(config, sort_keys=True, default=str)
    return (arch, conf, shapes, tuple(input_shape), budget, batch_size, sparse_layers)


def plan_scope(
    arch: str,
    config: dict[str, Any],
    params: Arrays,
    input_shape: list[int],
    budget: int,
    batch_size: int,
    sparse_layers: int = 2,
) -> Scoped:
    """The widest scope whose measured plan fits ``budget`` at ``batch_size``.

    Scope before batch: a smaller scope keeps the round's batch (and so its gradient noise)
    as the server configured it; the batch is halved only when not even the head fits.
    ``budget`` 0 means unknown (no limit): ``full``, unplanned; a budget that holds full
    fine-tuning's tensors twice over takes ``full`` without dry runs (:func:`_ample`), and a
    plan this process made before for the same shapes, budget and batch is reused
    (:data:`_PLANS`). Raises
    :class:`MemoryError`
    with every plan's numbers when nothing fits at :data:`MIN_BATCH`.
    """
    from edgefleet.agent.finetune import SCOPE_ORDER, plan_memory
    from edgefleet.agent.finetune_light import pointwise_convs

    if budget <= 0:
        return _with(_scoped(arch, config, params, "full", 0), batch_size, None)
    weights = sum(int(v.nbytes) for v in params.values())
    if weights > budget:  # every scope holds the whole model: no plan can fit
        raise MemoryError(f"the model alone is {weights} bytes; the budget is {budget} bytes")
    full = _scoped(arch, config, params, "full", 0)
    ample = _ample(full.model, batch_size, input_shape, budget)
    if ample is not None:
        return _with(full, batch_size, ample)
    key = _plan_key(arch, config, params, input_shape, budget, batch_size, sparse_layers)
    if key in _PLANS:
        scope, layers, batch, plan = _PLANS[key]
        return _with(_scoped(arch, config, params, scope, layers), batch, plan)
    plans: list[MemoryPlan] = []
    pointwise = pointwise_convs(full.model)
    batch = max(MIN_BATCH, batch_size)
    while True:
        for scope in SCOPE_ORDER:
            for layers in range(sparse_layers, 0, -1) if scope == "sparse" else (0,):
                if scope == "sparse" and layers > len(pointwise):
                    continue  # the same update as with fewer layers: planned below
                candidate = _scoped(arch, config, params, scope, layers)
                plan = plan_memory(candidate.model, scope, batch, input_shape, budget)
                if plan.fits:
                    if len(_PLANS) >= _PLANS_KEPT:
                        _PLANS.pop(next(iter(_PLANS)))  # the oldest
                    _PLANS[key] = (scope, layers, batch, plan)
                    return _with(candidate, batch, plan)
                plans.append(plan)
        if batch <= MIN_BATCH:
            raise MemoryError("nothing fits: " + "; ".join(p.describe() for p in plans[-4:]))
        if batch == max(MIN_BATCH, batch_size):  # before halving: can the narrowest fit at all?
            floor = _floor_plan(arch, config, params, input_shape, budget)
            if floor is not None:
                raise MemoryError(f"nothing fits: {floor.describe()}")
        batch = max(MIN_BATCH, batch // 2)


def _floor_plan(
    arch: str, config: dict[str, Any], params: Arrays, input_shape: list[int], budget: int
) -> MemoryPlan | None:
    """The narrowest scope at the smallest batch, when even that does not fit (else None).

    Why: halving the batch and re-planning every scope costs a device one profiled dry run per
    plan (~0.3 s each; a Cortex-M's agent spent ~7 s of CPU per round failing DS-CNN this
    way). The head at :data:`MIN_BATCH` is the least memory any plan needs, so when it does not
    fit, no smaller batch of a wider scope will: one dry run settles it.
    """
    from edgefleet.agent.finetune import SCOPE_ORDER, plan_memory

    narrowest = SCOPE_ORDER[-1]
    model = _scoped(arch, config, params, narrowest, 0).model
    plan = plan_memory(model, narrowest, MIN_BATCH, input_shape, budget)
    return None if plan.fits else plan


#: full fine-tuning skips the measured plan when its tensors fit this many times over
AMPLE = 2.0


def _ample(model: nn.Module, batch: int, input_shape: list[int], budget: int) -> MemoryPlan | None:
    """Full fine-tuning's plan without the dry runs, when the budget is ample for it.

    Why: the measured plan's dry runs (the profiler, three passes) cost a device about as much
    as a small round's training, and most devices have memory to spare. The step's tensors
    (weights, gradients, momentum and the saved activations, counted on one batch-1 forward)
    are cheap to get; the dry runs add the kernels' working memory, which measured 0-22 % of
    them on DS-CNN, ResNet-8 and KWS's DS-CNN -- so where twice the tensors fit, full fits.
    """
    from edgefleet.agent.finetune import _saved_activation_bytes

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:  # a training-mode forward folds its input into BatchNorm's statistics: undo it
        per_sample, _ = _saved_activation_bytes(model, torch.zeros(input_shape))
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    plan = MemoryPlan.sgd_momentum("full", batch, weights, trainable, per_sample, budget)
    return plan if AMPLE * plan.total <= budget else None


def _with(scoped: Scoped, batch: int, plan: MemoryPlan | None) -> Scoped:
    return Scoped(scoped.model, scoped.scope, batch, plan, scoped.trained)


@dataclass(frozen=True)
class Fitted:
    """What a round's local training produced."""

    #: the trained tensors only (every state-dict key for ``full``)
    params: Arrays
    train_loss: float
    before: tuple[float, float]  # (loss, accuracy) of the received model on held-out data
    after: tuple[float, float]
    scope: str
    batch_size: int
    trained_params: int  # parameters (elements) the step updated


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
    budget: int = 0,
) -> Fitted:
    """SGD (momentum, optional FedProx term) on the shard, in the scope that fits ``budget``."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    shape = [1, *(int(d) for d in shard.x_train.shape[1:])]
    scoped = plan_scope(arch, config, params, shape, budget, batch_size)
    model = scoped.model
    pre = _score(model, shard.x_eval, shard.y_eval)
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if proximal_mu else []
    opt = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    x, y = torch.from_numpy(shard.x_train), torch.from_numpy(shard.y_train)
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), scoped.batch_size):
            idx = order[start : start + scoped.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot normalise a batch of one
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if proximal_mu:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(trainable, anchor, strict=True))
                loss = loss + proximal_mu / 2 * prox
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses.append(float(loss.detach()))
    post = _score(model, shard.x_eval, shard.y_eval)
    state = model.state_dict()
    out = {k: state[k].detach().cpu().numpy().astype(np.float32) for k in scoped.trained}
    return Fitted(
        params=out,
        train_loss=float(np.mean(losses)) if losses else 0.0,
        before=pre,
        after=post,
        scope=scoped.scope,
        batch_size=scoped.batch_size,
        trained_params=sum(p.numel() for p in trainable),
    )
