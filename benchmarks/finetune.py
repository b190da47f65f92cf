"""Benchmark: on-device fine-tuning of MLPerf Tiny's DS-CNN on keyword spotting, per scope.

    python -m benchmarks.finetune [--data-dir DIR] [--model kws] [--epochs 10] [--json]

The device is an ``rpi4`` running the ``torch`` runtime on the model's fp32 variant, loaded the
way the agent loads it (``edgefleet.agent.serving.Serving``). Its local data is what
``edgefleet simulate --local-data kws`` gives a device: whole voices the model never heard
(the kws set's validation and test voices, dealt round-robin to ``--devices`` devices by
``edgefleet.devtools.sim_data``), as **raw 1 s audio**; the agent's ``finetune`` computes the
MFCC with the shared frontend code, trains on the device's train part and scores its held-out
part. Each scope starts from the same served variant:

* ``full``: every parameter (plain autograd);
* ``sparse``: biases, classifier and the last two pointwise convs' weights (Lin et al. 2022);
* ``tinytl``: biases + classifier (Cai et al. 2020);
* ``head``: the classifier only;

all but ``full`` on the memory-light path (frozen layers keep a bit-packed ReLU mask). For each
the table shows the planned peak (what the agent checks against its budget before training),
the measured peak -- the CPU allocator's events recorded by the torch profiler, summed in order
from the start of the ``finetune`` call and maxed inside its training loop (first
``zero_grad`` to last ``step``, which the profiler annotates) and over the whole call --, the
plan's error, the peak relative to full, and accuracy on the device's held-out clips before
and after ``--epochs`` epochs. Everything is seeded; allocations are deterministic, so two runs
print the same memory figures.

``--mcu PROFILE`` (default ``nucleo-l4r5zi``, the Cortex-M4 board; ``--mcu ""`` skips it) adds
the microcontroller's row: the model's ``int8-static`` variant (built when the store lacks it)
served by ``mcu-sim`` on that board, fine-tuned the only way it can be -- its last layer in
float on the frozen int8 backbone's features (``edgefleet.agent.finetune_mcu``) -- on the same
device's clips (MFCC in fixed point, as the board computes it), against the SRAM the serving
arena and the frontend leave free; planned vs the census of what training held.

``--data-dir`` is a coordinator data dir: when it already holds ``--model`` (e.g. the demo's
``kws``), its base variant is used; otherwise the kws set is synthesized there and the DS-CNN
trained (``--base-epochs``), as ``edgefleet models add kws --dataset kws --arch ds-cnn-kws``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.agent.finetune import FinetuneResult

KIB = 1024
SCOPES = ("full", "sparse", "tinytl", "head")
PROFILE = "rpi4"
MCU_PROFILE = "nucleo-l4r5zi"
MCU_RECIPE = "int8-static"


@dataclass(frozen=True)
class Row:
    scope: str
    trained_params: int
    trained_layers: list[str]
    steps: int
    accuracy_before: float
    accuracy_after: float
    planned_bytes: int
    plan: dict[str, int]
    measured_loop_bytes: int
    measured_call_bytes: int


@dataclass(frozen=True)
class McuRow:
    profile: str
    variant: str
    sram_bytes: int
    serving_bytes: int
    budget_bytes: int
    planned_bytes: int
    measured_bytes: int
    trained_params: int
    steps: int
    accuracy_before: float
    accuracy_after: float


def _mcu_variant(data_dir: Path, model: str, log: Callable[[str], None]) -> str:
    """The model's int8-static variant, built when the store has none."""
    from edgefleet.modelops.build import build_variants
    from edgefleet.variant_store import VariantStore

    store = VariantStore(data_dir)
    for variant in store.model(model).variants:
        if store.load(variant).manifest.get("recipe_label") == MCU_RECIPE:
            return variant
    log(f"building {model}'s {MCU_RECIPE} variant...")
    (variant,) = build_variants(store, model, [MCU_RECIPE])
    return variant


def _allocator_peaks(call: Callable[[], FinetuneResult]) -> tuple[FinetuneResult, int, int]:
    """``call()`` under the profiler: peak net CPU-allocator bytes over the call and inside its
    training loop (first ``Optimizer.zero_grad`` to last ``Optimizer.step``), both counted from
    the start of the call (the model copy made for training included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    assert prof.profiler is not None
    events = list(prof.profiler.kineto_results.events())
    optim = [e for e in events if e.name().startswith(("Optimizer.zero_grad#", "Optimizer.step#"))]
    begin = min(e.start_ns() for e in optim)
    end = max(e.end_ns() for e in optim)
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = loop_peak = 0
    for at, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
        if begin <= at <= end:
            loop_peak = max(loop_peak, live)
    return result, peak, loop_peak


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def _base_variant(data_dir: Path, model: str, base_epochs: int, log: Callable[[str], None]) -> str:
    from edgefleet.modelops.build import BuildOptions, register_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.variant_store import StoreError, VariantStore
    from edgefleet.zoo import ArchitectureSpec

    store = VariantStore(data_dir)
    try:
        return store.model(model).base
    except StoreError:
        pass
    log(f"synthesizing kws under {data_dir} and training ds-cnn-kws ({base_epochs} epochs)...")
    data = load_dataset("kws", data_dir)
    spec = ArchitectureSpec.zoo(
        "ds-cnn-kws", num_classes=data.num_classes, input_shape=data.input_shape
    )
    options = BuildOptions(latency=LatencyConfig(warmup=1, runs=3))
    return register_model(store, model, spec, data, epochs=base_epochs, options=options).base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--model", default="kws")
    parser.add_argument("--base-epochs", type=int, default=15, help="coordinator training")
    parser.add_argument("--devices", type=int, default=8, help="voices are dealt to this many")
    parser.add_argument("--device", type=int, default=0, help="which device's data")
    parser.add_argument("--epochs", type=int, default=10, help="on-device fine-tuning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mcu", default=MCU_PROFILE, help='the MCU row\'s board ("" skips it)')
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        if not args.json:
            print(message, flush=True)

    import torch

    from edgefleet.agent.finetune import (
        Prepared,
        default_budget,
        device_features,
        finetune,
        prepare,
        train,
    )
    from edgefleet.agent.serving import Serving
    from edgefleet.catalog import get_profile
    from edgefleet.devtools.sim_data import group_local_data
    from edgefleet.fl.partition import load_shard
    from edgefleet.variant_store import VariantStore

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        base = _base_variant(data_dir, args.model, args.base_epochs, log)
        serving = Serving(get_profile(PROFILE))
        reason = serving.load(VariantStore(data_dir).load(base), "torch")
        if reason is not None or serving.runtime is None:
            raise SystemExit(f"cannot load {base[:12]} into torch: {reason}")
        runtime = serving.runtime
        local = group_local_data("kws", args.devices, Path(tmp) / "local", data_dir=data_dir)
        shard = load_shard(local.paths[args.device])
        voices = local.groups[args.device]
        mcu_runtime = None
        if args.mcu:
            mcu_variant = _mcu_variant(data_dir, args.model, log)
            mcu_serving = Serving(get_profile(args.mcu))
            reason = mcu_serving.load(VariantStore(data_dir).load(mcu_variant), "mcu-sim")
            if reason is not None or mcu_serving.runtime is None:
                raise SystemExit(f"cannot load {mcu_variant[:12]} into mcu-sim: {reason}")
            mcu_runtime = mcu_serving.runtime
    log(
        f"device {args.device}/{args.devices}: voices {', '.join(voices)} (never trained on); "
        f"{len(shard.y_train)} train / {len(shard.y_eval)} held-out raw 1 s clips "
        f"{list(shard.x_train.shape[1:])}; fp32 variant {base[:12]} on {PROFILE}/torch"
    )

    features = device_features(runtime, shard)  # the MFCC, with the code the ClientApp uses
    rows: list[Row] = []
    for scope in SCOPES:
        log(f"fine-tuning: {scope}...")

        # The planning half runs outside the measured call: it measures with the profiler
        # itself (dry runs), and profiler sessions do not nest. The training copy is made
        # inside the measured call, as finetune() holds it while training.
        prepared = prepare(
            runtime, scope, budget_bytes=1 << 40, batch_size=args.batch_size
        )  # fmt: skip

        def call(p: Prepared = prepared) -> FinetuneResult:
            copy = Prepared(deepcopy(p.model), p.plan, p.trained_layers)
            return train(copy, features, args.epochs, args.lr, args.seed)

        result, call_peak, loop_peak = _allocator_peaks(call)
        plan = result.plan
        rows.append(
            Row(
                scope=result.scope,
                trained_params=plan.grads // 4,
                trained_layers=list(result.trained_layers),
                steps=result.steps,
                accuracy_before=result.accuracy_before,
                accuracy_after=result.accuracy_after,
                planned_bytes=plan.total,
                plan={
                    k: getattr(plan, k)
                    for k in ("params", "grads", "optimizer_state", "activations", "working")
                },
                measured_loop_bytes=loop_peak,
                measured_call_bytes=call_peak,
            )
        )
    mcu_row = None
    if mcu_runtime is not None:
        log(f"fine-tuning: last layer on {args.mcu}/mcu-sim...")
        budget = default_budget(mcu_runtime)
        result = finetune(mcu_runtime, shard, "head", None, args.epochs, args.batch_size, args.lr)
        mcu_row = McuRow(
            profile=args.mcu,
            variant=mcu_variant,
            sram_bytes=mcu_runtime.profile.ram_bytes,
            serving_bytes=mcu_runtime.memory().working,
            budget_bytes=budget,
            planned_bytes=result.plan.total,
            measured_bytes=result.measured_peak_bytes,
            trained_params=result.plan.grads // 4,
            steps=result.steps,
            accuracy_before=result.accuracy_before,
            accuracy_after=result.accuracy_after,
        )
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "variant": base,
        "profile": PROFILE,
        "voices": voices,
        "train_clips": len(shard.y_train),
        "held_out_clips": len(shard.y_eval),
        "rows": [asdict(r) for r in rows],
        "mcu": asdict(mcu_row) if mcu_row else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    full = rows[0].measured_loop_bytes
    print(
        f"\n{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} momentum 0.9, seed "
        f"{args.seed}, 1 torch thread; measured = CPU allocator events (torch profiler)\n"
    )
    _table(
        ["scope", "trained params", "steps", "acc before", "acc after", "gain", "planned KiB",
         "measured loop KiB", "plan error", "measured call KiB", "full / this"],
        [
            [
                r.scope,
                f"{r.trained_params:,}",
                str(r.steps),
                f"{r.accuracy_before:.3f}",
                f"{r.accuracy_after:.3f}",
                f"{r.accuracy_after - r.accuracy_before:+.3f}",
                f"{r.planned_bytes / KIB:,.1f}",
                f"{r.measured_loop_bytes / KIB:,.1f}",
                f"{(r.planned_bytes - r.measured_call_bytes) / r.measured_call_bytes:+.1%}",
                f"{r.measured_call_bytes / KIB:,.1f}",
                f"{full / r.measured_loop_bytes:.2f}x",
            ]
            for r in rows
        ],
    )  # fmt: skip
    sparse = next(r for r in rows if r.scope == "sparse")
    print(f"\nsparse update trains the weights of: {', '.join(sparse.trained_layers)}")
    if mcu_row is not None:
        m = mcu_row
        print(
            f"\n{m.profile} (mcu-sim, {MCU_RECIPE} {m.variant[:12]}): last layer in float on the "
            f"int8 backbone; SRAM {m.sram_bytes / KIB:,.0f} KiB, serving arena + frontend "
            f"{m.serving_bytes / KIB:,.1f} KiB, training budget {m.budget_bytes / KIB:,.1f} KiB\n"
        )
        _table(
            ["scope", "trained params", "steps", "acc before", "acc after", "gain",
             "planned KiB", "measured KiB", "plan error", "budget used"],
            [[
                "last layer",
                f"{m.trained_params:,}",
                str(m.steps),
                f"{m.accuracy_before:.3f}",
                f"{m.accuracy_after:.3f}",
                f"{m.accuracy_after - m.accuracy_before:+.3f}",
                f"{m.planned_bytes / KIB:,.1f}",
                f"{m.measured_bytes / KIB:,.1f}",
                f"{(m.planned_bytes - m.measured_bytes) / m.measured_bytes:+.1%}",
                f"{m.planned_bytes / m.budget_bytes:.1%}",
            ]],
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
