"""On-device fine-tuning on local data, inside the device's memory budget.

Why memory is planned first: a device that runs out of RAM half-way through training kills
its own serving (or the whole agent). So before any step runs, :func:`plan_memory` adds up
what one training step holds -- parameters, gradients of the trainable ones, the optimizer's
state (SGD momentum: one buffer per trainable parameter), the activations autograd saves for
the backward pass, and the step's transient working memory -- and a plan over the budget is
refused with the numbers. Nothing is guessed: saved activations are the bytes autograd saves
on a batch-1 pass (``saved_tensors_hooks``) times the batch size, and the working memory comes
from two small dry-run steps (batch 2 and 4) measured on the CPU allocator
(:mod:`.finetune_memory`), extrapolated linearly to the batch size -- a step's memory is
linear in the batch, and the fixed part (kernels' weight reorders, the loss) is caught by the
intercept. The dry runs allocate a few percent of the planned peak.

Scopes (``SCOPE_ORDER``): ``full`` trains every parameter; ``sparse`` (Lin et al., NeurIPS
2022) trains biases, the classifier and the weights of the last pointwise convolutions -- as
many (up to ``sparse_layers``) as the budget allows; ``tinytl`` (Cai et al., NeurIPS 2020)
trains biases and the classifier; ``head`` the classifier only. ``auto`` picks the first that
fits, in that order. Every scope but ``full`` runs the frozen layers through
:mod:`.finetune_light`, whose backward keeps a bit-packed ReLU mask per frozen layer instead
of its activations -- without it TinyTL saved as much as full fine-tuning. The ``mcu-sim``
runtime trains its last layer only (:mod:`.finetune_mcu`).

Raw audio: a variant with a signal frontend (keyword spotting) is fine-tuned on the device's
own clips as its microphone gave them; the features come from the one shared function the
federated ClientApp uses (:func:`edgefleet.fl.features.featurize_shard`), in fixed point on a
microcontroller as the runtime serves them.

The measured census (:attr:`FinetuneResult.measured_peak_bytes`) counts the training tensors
that existed: the largest saved-activation set of any step, the gradients and the optimizer
state; ``benchmarks/finetune.py`` measures the real allocator peak against the plan.

Fine-tuning works on a copy: the served variant keeps serving throughout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.agent.finetune_plan import FinetuneRefused, FinetuneResult, MemoryPlan
from edgefleet.agent.runtimes import Runtime, TrainingUnsupportedError
from edgefleet.fl.budget import DEFAULT_RAM_FRACTION

if TYPE_CHECKING:
    from edgefleet.fl.partition import Shard

__all__ = [
    "DEFAULT_RAM_FRACTION",
    "SCOPE_ORDER",
    "FinetuneRefused",
    "FinetuneResult",
    "MemoryPlan",
    "Prepared",
    "default_budget",
    "device_features",
    "finetune",
    "plan_memory",
    "prepare",
    "train",
]

SCOPE_ORDER = ("full", "sparse", "tinytl", "head")
#: the sparse update trains at most this many pointwise convs' weights (the last ones)
SPARSE_LAYERS = 2
#: the dry-run batch sizes the working memory is extrapolated from
_DRY_BATCHES = (2, 4)


def default_budget(runtime: Runtime) -> int:
    """Bytes fine-tuning may use on this device."""
    profile = runtime.profile
    if profile.is_mcu:
        return max(0, profile.ram_bytes - runtime.memory().working)
    return int(profile.ram_bytes * DEFAULT_RAM_FRACTION)


def device_features(runtime: Runtime, shard: Shard) -> Shard:
    """``shard`` as the network takes it: raw audio through the variant's frontend (the shared
    code the ClientApp uses, fixed point where the runtime serves in fixed point)."""
    spec = runtime.frontend
    if spec is None or not (runtime.is_raw(shard.x_train) or runtime.is_raw(shard.x_eval)):
        return shard
    from edgefleet.fl.features import featurize_shard
    from edgefleet.frontend.spec import FrontendError

    try:
        return featurize_shard(shard, spec, fixed_point=runtime.frontend_fixed_point)
    except FrontendError as exc:
        raise FinetuneRefused(f"local data: {exc}") from exc


def finetune(
    runtime: Runtime,
    shard: Shard,
    scope: str = "auto",
    budget_bytes: int | None = None,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
    sparse_layers: int = SPARSE_LAYERS,
) -> FinetuneResult:
    """Fine-tune a copy of the runtime's variant on ``shard`` (train part; eval on held-out).

    Raises :class:`FinetuneRefused` before any training when nothing fits or the runtime
    cannot train.
    """
    budget = default_budget(runtime) if budget_bytes is None else budget_bytes
    if scope != "auto" and scope not in SCOPE_ORDER:
        raise FinetuneRefused(
            f"unknown fine-tuning scope {scope!r} (use auto, {', '.join(SCOPE_ORDER)})"
        )
    if len(shard.y_train) == 0:
        raise FinetuneRefused("the local data has no training rows")
    shard = device_features(runtime, shard)
    want = [int(d) for d in runtime.input_spec["shape"][1:]]
    if list(shard.x_train.shape[1:]) != want:
        raw = runtime.request_spec["shape"][1:] if runtime.frontend is not None else None
        raise FinetuneRefused(
            f"local data rows are {list(shard.x_train.shape[1:])}; the variant takes {want}"
            + (f" (or raw audio {list(raw)})" if raw else "")
        )
    if runtime.name == "mcu-sim":
        if scope not in ("auto", "head"):
            raise FinetuneRefused(f"mcu-sim trains the last layer only (asked for {scope!r})")
        from edgefleet.agent.finetune_mcu import finetune_last_layer

        return finetune_last_layer(runtime, shard, budget, epochs, batch_size, lr)
    prepared = prepare(runtime, scope, budget, batch_size, sparse_layers)
    return train(prepared, shard, epochs, lr, seed)


@dataclass(frozen=True)
class Prepared:
    """A training copy of the served model and its plan, which fits the budget."""

    model: Any
    plan: MemoryPlan
    trained_layers: tuple[str, ...] = ()


def prepare(
    runtime: Runtime,
    scope: str = "auto",
    budget_bytes: int | None = None,
    batch_size: int = 32,
    sparse_layers: int = SPARSE_LAYERS,
) -> Prepared:
    """The first scope (in :data:`SCOPE_ORDER` for ``auto``) whose plan fits; the planning half
    of :func:`finetune` (torch runtimes). Raises :class:`FinetuneRefused` when none fits."""
    budget = default_budget(runtime) if budget_bytes is None else budget_bytes
    if not runtime.supports_training:
        raise FinetuneRefused(
            f"the {runtime.name} runtime is inference-only; fine-tuning needs the torch runtime"
        )
    scopes = SCOPE_ORDER if scope == "auto" else (scope,)
    plans = []
    for s in scopes:
        for layers in range(sparse_layers, 0, -1) if s == "sparse" else (0,):
            model, trained = _trainable(runtime, s, layers)
            plan = plan_memory(model, s, batch_size, runtime.input_spec["shape"], budget)
            if plan.fits:
                return Prepared(model, plan, trained)
            del model
        plans.append(plan)
    raise FinetuneRefused("does not fit: " + "; ".join(p.describe() for p in plans))


def train(prepared: Prepared, shard: Shard, epochs: int, lr: float, seed: int) -> FinetuneResult:
    """The training half of :func:`finetune`: ``shard`` must hold the network's input."""
    return _train_torch(
        prepared.model, prepared.plan, shard, epochs, lr, seed, prepared.trained_layers
    )


def _trainable(runtime: Runtime, scope: str, layers: int) -> tuple[Any, tuple[str, ...]]:
    """The runtime's training copy for ``scope``, on the memory-light path unless ``full``."""
    from edgefleet.agent.finetune_light import make_memory_light, sparse_trainable

    try:
        model = runtime.trainable("tinytl" if scope == "sparse" else scope)
    except TrainingUnsupportedError as exc:
        raise FinetuneRefused(str(exc)) from exc
    trained: tuple[str, ...] = ()
    if scope == "sparse":
        trained = tuple(sparse_trainable(model, layers))
        if not trained:
            raise FinetuneRefused("the sparse update needs pointwise (1x1) convolutions to train")
    make_memory_light(model)
    return model, trained


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


def _dry_step_peak(model: Any, x: Any) -> int:
    """Allocator peak of one forward + backward on ``x`` (no optimizer step; grads cleared)."""
    import torch

    from edgefleet.agent.finetune_memory import allocator_peak

    def step() -> None:
        out = model(x)
        target = torch.zeros(out.shape[0], dtype=torch.long)
        loss = torch.nn.functional.cross_entropy(out, target)
        loss.backward()  # type: ignore[no-untyped-call]

    _, peak = allocator_peak(step)
    for p in model.parameters():
        p.grad = None
    return peak


def plan_memory(
    model: Any, scope: str, batch_size: int, input_shape: list[int], budget: int
) -> MemoryPlan:
    """What one training step of ``model`` holds at ``batch_size`` (see the module doc)."""
    import torch

    params = sum(_tensor_bytes(t) for t in model.state_dict().values())
    trainable = sum(_tensor_bytes(p) for p in model.parameters() if p.requires_grad)
    dims = [int(d) for d in input_shape[1:]]
    gen = torch.Generator().manual_seed(0)
    # The measuring passes run in the model's training mode (that is what they must measure),
    # which would fold their inputs into BatchNorm's running statistics: keep the buffers as
    # they were, so planning never changes the model it plans for.
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        per_sample, out = _saved_activation_bytes(model, torch.zeros([1, *dims]))
        del out
        if not any(p.requires_grad for p in model.parameters()):
            working = 0
        else:
            small, large = _DRY_BATCHES
            batches = {b: torch.randn([b, *dims], generator=gen) for b in _DRY_BATCHES}
            _dry_step_peak(model, batches[small])  # first calls allocate kernels' caches
            peaks = {b: _dry_step_peak(model, batches[b]) for b in _DRY_BATCHES}
            slope = (peaks[large] - peaks[small]) / (large - small)
            step_peak = peaks[small] + slope * (batch_size - small)
            working = max(0, round(step_peak) - trainable - per_sample * batch_size)
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    return MemoryPlan.sgd_momentum(
        scope, batch_size, params, trainable, per_sample, budget, working=working
    )


def _accuracy(model: Any, x: Any, y: Any, batch_size: int) -> float:
    """Held-out accuracy, in batches (one pass over a whole eval set would outgrow the plan)."""
    import torch

    if not len(y):
        return 0.0
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            pred = model(torch.from_numpy(x[i : i + batch_size])).argmax(dim=1).numpy()
            correct += int((pred == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(y)


def _train_torch(
    model: Any,
    plan: MemoryPlan,
    shard: Shard,
    epochs: int,
    lr: float,
    seed: int,
    trained_layers: tuple[str, ...] = (),
) -> FinetuneResult:
    import numpy as np
    import torch
    from torch import nn

    start_cpu = time.thread_time()
    before = _accuracy(model, shard.x_eval, shard.y_eval, plan.batch_size)
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
            del out
            opt.step()
            steps += 1
    after = _accuracy(model, shard.x_eval, shard.y_eval, plan.batch_size)
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
        trained_layers=trained_layers,
    )
