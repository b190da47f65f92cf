"""On-device fine-tuning on local data, inside the device's memory budget.

Why memory is accounted first: a device that runs out of RAM half-way through training
kills its own serving (or the whole agent). So before any step runs, :func:`plan_memory`
adds up what one training step holds -- parameters, gradients of the trainable ones, the
optimizer's state (SGD momentum: one buffer per trainable parameter) and the activations
autograd saves for the backward pass at the chosen batch size -- and a plan over the budget
is refused with the numbers. The activation figure is not guessed: it is the bytes autograd
actually saves on one batch-1 forward pass (``saved_tensors_hooks``), times the batch size.

Scopes (``edgefleet.agent.runtimes.torch_rt.TRAIN_SCOPES``): ``full`` trains every parameter;
``tinytl`` (Cai et al., TinyTL, NeurIPS 2020) trains biases and the classifier only -- frozen
weights need no gradient or optimizer buffers, and autograd does not save the inputs of
layers whose weight is frozen, which is where TinyTL's memory saving comes from; ``head``
trains the classifier only. ``auto`` picks the first that fits in that order. The ``mcu-sim``
runtime trains its last layer only, in float on the dequantised fully-connected weights over
the int8 graph's penultimate features (an MCU keeps one float layer in SRAM).

The measured peak (:attr:`FinetuneResult.measured_peak_bytes`) counts the training tensors
that actually existed: the largest saved-activation set of any step, the gradient tensors
and the optimizer state after the run. Process RSS cannot resolve these sizes (kilobytes
under a torch runtime of hundreds of megabytes), so it is not used.

Fine-tuning works on a copy: the served variant keeps serving throughout.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edgefleet.agent.finetune_plan import FinetuneRefused, FinetuneResult, MemoryPlan
from edgefleet.agent.runtimes import Runtime, TrainingUnsupportedError
from edgefleet.fl.budget import DEFAULT_RAM_FRACTION

if TYPE_CHECKING:
    from edgefleet.fl.partition import Shard

__all__ = [
    "DEFAULT_RAM_FRACTION",
    "FinetuneRefused",
    "FinetuneResult",
    "MemoryPlan",
    "default_budget",
    "finetune",
]

SCOPE_ORDER = ("full", "tinytl", "head")


def default_budget(runtime: Runtime) -> int:
    """Bytes fine-tuning may use on this device."""
    profile = runtime.profile
    if profile.is_mcu:
        return max(0, profile.ram_bytes - runtime.memory().working)
    return int(profile.ram_bytes * DEFAULT_RAM_FRACTION)


def finetune(
    runtime: Runtime,
    shard: Shard,
    scope: str = "auto",
    budget_bytes: int | None = None,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune a copy of the runtime's variant on ``shard`` (train part; eval on held-out).

    Raises :class:`FinetuneRefused` before any training when nothing fits or the runtime
    cannot train.
    """
    budget = default_budget(runtime) if budget_bytes is None else budget_bytes
    if runtime.name == "mcu-sim":
        if scope not in ("auto", "head"):
            raise FinetuneRefused(f"mcu-sim trains the last layer only (asked for {scope!r})")
        from edgefleet.agent.finetune_mcu import finetune_last_layer

        return finetune_last_layer(runtime, shard, budget, epochs, batch_size, lr)
    if not runtime.supports_training:
        raise FinetuneRefused(
            f"the {runtime.name} runtime is inference-only; fine-tuning needs the torch runtime"
        )
    scopes = SCOPE_ORDER if scope == "auto" else (scope,)
    plans = []
    for s in scopes:
        try:
            model = runtime.trainable(s)
        except TrainingUnsupportedError as exc:
            raise FinetuneRefused(str(exc)) from exc
        plan = plan_memory(model, s, batch_size, runtime.input_spec["shape"], budget)
        if plan.fits:
            return _train_torch(model, plan, shard, epochs, lr, seed)
        plans.append(plan)
        del model
    raise FinetuneRefused("does not fit: " + "; ".join(p.describe() for p in plans))


def _tensor_bytes(t: Any) -> int:
    return int(t.numel() * t.element_size())


def _saved_activation_bytes(model: Any, x: Any) -> tuple[int, Any]:
    """Bytes autograd saves for backward during ``model(x)`` (parameters excluded)."""
    import torch

    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.data_ptr() not in param_ptrs and key not in seen:
            seen.add(key)
            total += int(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return total, out


def plan_memory(
    model: Any, scope: str, batch_size: int, input_shape: list[int], budget: int
) -> MemoryPlan:
    """What one training step of ``model`` holds at ``batch_size`` (see the module doc)."""
    import torch

    params = sum(_tensor_bytes(t) for t in model.state_dict().values())
    trainable = sum(_tensor_bytes(p) for p in model.parameters() if p.requires_grad)
    x = torch.zeros([1, *[int(d) for d in input_shape[1:]]])
    # The measuring pass runs in the model's training mode (that is what it must measure),
    # which would fold this all-zeros input into BatchNorm's running statistics: keep the
    # buffers as they were, so planning never changes the model it plans for.
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    per_sample, out = _saved_activation_bytes(model, x)
    del out
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return MemoryPlan.sgd_momentum(scope, batch_size, params, trainable, per_sample, budget)


def _accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    model.train(was_training)
    return float((pred == y).mean()) if len(y) else 0.0


def _train_torch(
    model: Any, plan: MemoryPlan, shard: Shard, epochs: int, lr: float, seed: int
) -> FinetuneResult:
    import numpy as np
    import torch
    from torch import nn

    start_cpu = time.thread_time()
    before = _accuracy(model, shard.x_eval, shard.y_eval)
    model.train()
    if plan.scope != "full":  # keep BatchNorm statistics frozen (TinyTL)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    n = len(shard.y_train)
    steps, peak_saved = 0, 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, plan.batch_size):
            idx = order[i : i + plan.batch_size]
            xb = torch.from_numpy(shard.x_train[idx])
            yb = torch.from_numpy(shard.y_train[idx])
            opt.zero_grad(set_to_none=True)
            saved, out = _saved_activation_bytes(model, xb)
            peak_saved = max(peak_saved, saved)
            loss_fn(out, yb).backward()
            opt.step()
            steps += 1
    after = _accuracy(model, shard.x_eval, shard.y_eval)
    measured = {
        "params": sum(_tensor_bytes(t) for t in model.state_dict().values()),
        "grads": sum(_tensor_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer_state": sum(
            _tensor_bytes(v)
            for state in opt.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor)
        ),
        "activations": peak_saved,
    }
    return FinetuneResult(
        scope=plan.scope,
        plan=plan,
        epochs=epochs,
        steps=steps,
        accuracy_before=before,
        accuracy_after=after,
        measured_peak_bytes=sum(measured.values()),
        measured=measured,
        busy_seconds=time.thread_time() - start_cpu,
    )
