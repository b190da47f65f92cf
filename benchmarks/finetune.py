"""Benchmark: on-device fine-tuning on a shifted local partition, per scope, side by side.

    python -m benchmarks.finetune [--epochs 10] [--noise 0.2] [--rotate 1] [--json]

Trains a DS-CNN (width 0.5) on digits as the coordinator does (``register_model``), builds its
fp32 bundle and its static-int8 bundle (which carries the mcu-sim graph), and loads them the way
the agent does (``edgefleet.agent.serving.Serving``): the fp32 bundle into the ``torch`` runtime of an
``rpi4`` device and the int8 bundle into the ``mcu-sim`` runtime of a ``cortex-m7``. One simulated
device's local data is ``edgefleet.agent.workload.load_local_data``: a Dirichlet partition of the 40 % of
digits the coordinator never trains on, shifted by Gaussian noise and a seeded 90-degree rotation
(``--data-shift noise=F,rotate=K`` on the agent). Each scope is then fine-tuned with the agent's
own ``edgefleet.agent.finetune.finetune`` -- ``full``, ``tinytl`` (biases + head) and ``head`` on torch, the
last layer on mcu-sim -- always from the same served variant (the agent trains a copy), and for
each the table shows:

* accuracy on the device's local held-out part before and after,
* the peak the agent's memory plan predicted (params + grads + optimizer + saved activations),
* the agent's own census of the training tensors that existed (``measured_peak_bytes``),
* an independent measured peak over the whole ``finetune()`` call: for torch, the CPU
  allocator's allocation/free events from the torch profiler (``profile_memory=True``; every
  tensor allocation, including the model copy, the evaluation passes and temporaries such as
  im2col buffers), accumulated in order and maxed; for mcu-sim (numpy), the ``tracemalloc``
  peak (numpy reports its buffers to tracemalloc),
* wall time of the call (a separate, unprofiled run with the same seed; the two runs must end
  at the same accuracy, which the table checks).

Finally a budget between the TinyTL and full plans is offered: ``full`` is refused with the
agent's reason and ``auto`` picks TinyTL. Everything is seeded: two runs of ``--json`` agree in
every accuracy, step count and memory figure; only the wall times and the variant ids differ (the
bundles' manifests record the build's measured latency, and ids hash the manifest).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.agent.finetune import FinetuneResult
    from edgefleet.agent.runtimes import Runtime
    from edgefleet.fl.partition import Shard

KIB = 1024
#: (row label, runtime, finetune scope)
CASES = (
    ("full", "torch", "full"),
    ("tinytl (biases + head)", "torch", "tinytl"),
    ("head only", "torch", "head"),
    ("mcu-sim last layer", "mcu-sim", "head"),
)
TORCH_PROFILE = "rpi4"
MCU_PROFILE = "cortex-m7"


@dataclass(frozen=True)
class Row:
    label: str
    runtime: str
    profile: str
    scope: str
    steps: int
    served_accuracy: float
    accuracy_before: float
    accuracy_after: float
    planned_bytes: int
    census_bytes: int
    measured_bytes: int
    measured_train_bytes: int | None
    measured_by: str
    wall_seconds: float
    repeat_identical: bool


def _torch_allocator_peaks(call: Callable[[], FinetuneResult]) -> tuple[FinetuneResult, int, int]:
    """Run ``call`` under the torch profiler; peaks of the net CPU bytes allocated since it began.

    Returns the peak over the whole call and the peak inside its training loop (from the first
    ``optimizer.zero_grad`` to the end of the last ``optimizer.step``, which the profiler
    annotates), both counted from the start of the call, so the model copy made for training
    is included and the evaluation passes before and after are not (in the second figure).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    # kineto_results holds every [memory] event; prof.events() folds some into their ops.
    events = list(prof.profiler.kineto_results.events())
    optim = [e for e in events if e.name().startswith(("Optimizer.zero_grad#", "Optimizer.step#"))]
    begin = min(e.start_ns() for e in optim)
    end = max(e.end_ns() for e in optim)
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = train_peak = 0
    for at, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
        if begin <= at <= end:
            train_peak = max(train_peak, live)
    return result, peak, train_peak


def _tracemalloc_peak(call: Callable[[], FinetuneResult]) -> tuple[FinetuneResult, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak


def _accuracy(rt: Runtime, x: Any, y: Any) -> float:
    return float((rt.infer(x).argmax(1) == y).mean())


def _rotation(shifted: Shard, clean: Shard) -> int:
    """How many 90-degree turns the shift applied (same permutation, so compare directly)."""
    import numpy as np

    errs = [
        float(np.abs(np.rot90(clean.x_eval, k=k, axes=(-2, -1)) - shifted.x_eval).mean())
        for k in range(4)
    ]
    return int(np.argmin(errs))


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--base-epochs", type=int, default=8, help="coordinator training")
    parser.add_argument("--epochs", type=int, default=10, help="on-device fine-tuning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--partition", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--rotate", type=int, default=1, help="max 90-degree turns")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        if not args.json:
            print(message, flush=True)

    import torch

    from edgefleet.agent.finetune import FinetuneRefused, default_budget, finetune
    from edgefleet.agent.serving import Serving
    from edgefleet.agent.workload import LocalDataSpec, load_local_data
    from edgefleet.catalog import get_profile
    from edgefleet.modelops.build import BuildOptions, build_variants, register_model
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.variant_store import VariantStore
    from edgefleet.zoo import ArchitectureSpec

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = VariantStore(Path(tmp) / "store")
        options = BuildOptions(latency=LatencyConfig(warmup=2, runs=5), seed=args.seed)
        spec = ArchitectureSpec.zoo("ds-cnn", width=args.width)
        log(f"training ds-cnn width {args.width} on digits ({args.base_epochs} epochs)...")
        entry = register_model(
            store, "bench-ft", spec, "digits", epochs=args.base_epochs, options=options
        )
        log("building the int8-static variant (mcu-sim graph)...")
        (int8,) = build_variants(store, "bench-ft", ["int8-static"], options=options)
        servings: dict[str, Serving] = {}
        for runtime, profile, variant in (
            ("torch", TORCH_PROFILE, entry.base),
            ("mcu-sim", MCU_PROFILE, int8),
        ):
            serving = Serving(get_profile(profile))
            reason = serving.load(store.load(variant), runtime)
            if reason is not None:
                raise SystemExit(f"cannot load {variant[:12]} into {runtime}: {reason}")
            servings[runtime] = serving

    def rt(name: str) -> Runtime:
        runtime = servings[name].runtime
        assert runtime is not None
        return runtime

    def local(noise: float, rotate: int) -> Shard:
        return load_local_data(
            LocalDataSpec(
                "digits", args.partition, args.partitions, args.seed, args.alpha, noise, rotate
            )
        )

    shard = local(args.noise, args.rotate)
    clean = local(0.0, 0)
    turns = _rotation(shard, clean)
    base_clean = _accuracy(rt("torch"), clean.x_eval, clean.y_eval)
    base_shifted = _accuracy(rt("torch"), shard.x_eval, shard.y_eval)
    log(
        f"device partition {args.partition}/{args.partitions} (Dirichlet alpha {args.alpha}, "
        f"seed {args.seed}): {len(shard.y_train)} train / {len(shard.y_eval)} held-out samples, "
        f"shift noise sigma {args.noise} + rotation {90 * turns} deg; base fp32 model on its "
        f"held-out part: {base_clean:.3f} unshifted, {base_shifted:.3f} shifted"
    )

    common: dict[str, Any] = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    rows: list[Row] = []
    results: dict[str, FinetuneResult] = {}
    for label, runtime, scope in CASES:
        log(f"fine-tuning: {label} ({runtime})...")
        device_rt = rt(runtime)

        def call(r: Runtime = device_rt, s: str = scope) -> FinetuneResult:
            return finetune(r, shard, s, seed=args.seed, **common)

        t0 = time.perf_counter()
        timed = call()
        wall = time.perf_counter() - t0
        train_peak: int | None = None
        if runtime == "torch":
            result, peak, train_peak = _torch_allocator_peaks(call)
            how = "torch allocator"
        else:
            result, peak = _tracemalloc_peak(call)
            how = "tracemalloc"
        results[scope if runtime == "torch" else "mcu"] = result
        rows.append(
            Row(
                label=label,
                runtime=runtime,
                profile=device_rt.profile.name,
                scope=result.scope,
                steps=result.steps,
                served_accuracy=_accuracy(device_rt, shard.x_eval, shard.y_eval),
                accuracy_before=result.accuracy_before,
                accuracy_after=result.accuracy_after,
                planned_bytes=result.plan.total,
                census_bytes=result.measured_peak_bytes,
                measured_bytes=peak,
                measured_train_bytes=train_peak,
                measured_by=how,
                wall_seconds=wall,
                repeat_identical=(
                    timed.accuracy_after == result.accuracy_after
                    and timed.measured_peak_bytes == result.measured_peak_bytes
                ),
            )
        )

    # A budget between TinyTL's plan and full's: full is refused, auto falls back to TinyTL.
    full_plan, tiny_plan = results["full"].plan.total, results["tinytl"].plan.total
    budget = (full_plan + tiny_plan) // 2
    try:
        finetune(rt("torch"), shard, "full", budget_bytes=budget, seed=args.seed, **common)
        refusal = ""
    except FinetuneRefused as exc:
        refusal = str(exc)
    auto = finetune(rt("torch"), shard, "auto", budget_bytes=budget, seed=args.seed, **common)

    report = {
        "config": vars(args) | {"torch_profile": TORCH_PROFILE, "mcu_profile": MCU_PROFILE},
        "variants": {"fp32": entry.base, "int8": int8},
        "local_data": {
            "train": len(shard.y_train),
            "held_out": len(shard.y_eval),
            "noise": args.noise,
            "rotation_degrees": 90 * turns,
            "base_accuracy_unshifted": base_clean,
            "base_accuracy_shifted": base_shifted,
        },
        "default_budget_bytes": {
            TORCH_PROFILE: default_budget(rt("torch")),
            MCU_PROFILE: default_budget(rt("mcu-sim")),
        },
        "rows": [r.__dict__ for r in rows],
        "budget_check": {
            "budget_bytes": budget,
            "full_refused": bool(refusal),
            "reason": refusal,
            "auto_scope": auto.scope,
            "auto_accuracy_before": auto.accuracy_before,
            "auto_accuracy_after": auto.accuracy_after,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    print(
        f"\n{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} momentum 0.9, "
        f"seed {args.seed}, {args.threads} torch thread(s); torch rows on {TORCH_PROFILE} "
        f"(fp32 {entry.base[:8]}), mcu-sim row on {MCU_PROFILE} (int8 {int8[:8]})\n"
    )
    _table(
        ["scope", "runtime", "steps", "served acc", "acc before", "acc after", "gain",
         "planned KiB", "agent census KiB", "measured loop KiB", "measured call KiB",
         "measured by", "wall s", "rerun same"],
        [
            [
                r.label,
                r.runtime,
                str(r.steps),
                f"{r.served_accuracy:.3f}",
                f"{r.accuracy_before:.3f}",
                f"{r.accuracy_after:.3f}",
                f"{r.accuracy_after - r.accuracy_before:+.3f}",
                f"{r.planned_bytes / KIB:,.1f}",
                f"{r.census_bytes / KIB:,.1f}",
                "-" if r.measured_train_bytes is None else f"{r.measured_train_bytes / KIB:,.1f}",
                f"{r.measured_bytes / KIB:,.1f}",
                r.measured_by,
                f"{r.wall_seconds:.2f}",
                "yes" if r.repeat_identical else "NO",
            ]
            for r in rows
        ],
    )  # fmt: skip
    print(
        f"\nbudget {budget} bytes (between the tinytl and full plans): full -> "
        f"{'refused: ' + refusal if refusal else 'NOT refused'}\n"
        f"auto under the same budget -> {auto.scope} "
        f"(acc {auto.accuracy_before:.3f} -> {auto.accuracy_after:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
