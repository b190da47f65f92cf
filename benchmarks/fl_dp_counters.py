"""Benchmark: client-side DP accuracy with BatchNorm's counters kept out of the update, vs in.

    python -m benchmarks.fl_dp_counters [--model resnet-8] [--rounds 10] [--devices 8]
        [--dp 0:5,0:10,0.02:5] [--json benchmarks/results/fl_dp_counters.json]

Under ``--dp client-fixed`` each device clips its update to norm ``C``. DS-CNN and ResNet-8
carry 9 BatchNorm ``num_batches_tracked`` counters; before :mod:`edgefleet.fl.counters` a
device that ran ``B`` batches moved each by ``B``, adding ``3 * B`` to its update's norm, so
the clip shrank the real weight update. The same seeded federated run (our round loop and the
agent's ClientApp with its DP mod, through the in-process Grid the fast tests use) is run
three ways: no DP, client-fixed DP with the counters kept out (``fixed``), and client-fixed DP
with the counters treated as weights again (``counters-in``: the rule's name list emptied, the
old behaviour), for each ``noise:clip`` pair of ``--dp``. Reported: the global model's test
accuracy after every round, the batches a device runs per round, and the norm the counters
alone added. The DP noise is drawn from numpy's global generator (as Flower's is), seeded
before every run, so the variants of a pair see the same draws.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def run(
    root: Path, args: argparse.Namespace, dp: str, noise: float, clip: float, counters_in: bool
) -> dict[str, Any]:
    """One seeded run; ``counters_in`` restores the old rule (counters are weights)."""
    import numpy as np
    from flwr.supercore.task_identity import TaskIdentity

    from edgefleet.devtools.fl_sim import FLEET_FILE, SimOptions, SimulatedClientApp, write_fleet
    from edgefleet.fl import counters
    from edgefleet.flower.serverapp import run_rounds
    from tests.fl.inline_grid import InlineGrid

    opts = SimOptions(devices=args.devices, rounds=args.rounds, fraction=1.0, model=args.model,
                      strategy="fedavg", groups=args.devices, mix="rpi4:1",
                      samples=args.samples, batch_size=args.batch, base_voices=0,
                      data_dir=root.parent / "kws", kws_size="tiny", seed=0)  # fmt: skip
    _, settings = write_fleet(root, opts)
    for attr in ("_run_id", "_task_id", "_node_id"):  # Messages need a task identity
        setattr(TaskIdentity, attr, 1)
    if dp:
        settings = replace(settings, dp=dp, dp_noise=noise, dp_clip=clip)
    np.random.seed(0)
    saved = counters.COUNTER_NAMES
    if counters_in:
        counters.COUNTER_NAMES = frozenset()  # type: ignore[misc]
    try:
        t0 = time.monotonic()
        grid = InlineGrid(SimulatedClientApp(str(root / FLEET_FILE)), opts.devices)
        doc = run_rounds(grid, settings)
    finally:
        counters.COUNTER_NAMES = saved  # type: ignore[misc]
    assert doc["state"] == "succeeded", doc.get("reason")
    local = opts.resolved()
    batches = math.ceil(args.samples / (local.batch_size or 16)) * (local.local_epochs or 1)
    return {
        "test_acc": [round(float(r["test_acc"]), 4) for r in doc["rounds"]],
        "final_test_acc": round(float(doc["rounds"][-1]["test_acc"]), 4),
        "batches_per_round": batches,
        "counter_norm": round(3.0 * batches, 1),  # sqrt(9 * B^2): 9 counters moved by B
        "seconds": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="resnet-8", choices=["resnet-8", "ds-cnn-kws"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64, help="training rows per device")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dp", default="0:5,0:10,0.02:5", help="noise:clip pairs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    pairs = [tuple(float(x) for x in p.split(":")) for p in args.dp.split(",")]
    results: dict[str, Any] = {"settings": vars(args) | {"json": None}}
    with tempfile.TemporaryDirectory() as tmp:  # one kws set for every run
        results["no-dp"] = run(Path(tmp) / "no-dp", args, "", 0.0, 0.0, False)
        print("no-dp", json.dumps(results["no-dp"]), flush=True)
        for noise, clip in pairs:
            for name, counters_in in (("fixed", False), ("counters-in", True)):
                key = f"z={noise:g} C={clip:g} {name}"
                results[key] = run(Path(tmp) / key.replace(" ", "_"), args, "client-fixed", noise, clip,
                                   counters_in)  # fmt: skip
                print(key, json.dumps(results[key]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
