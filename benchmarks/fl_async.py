"""Benchmark: asynchronous buffered rounds vs synchronous ones with slow devices; update codecs.

    python -m benchmarks.fl_async [--nodes 6] [--slow 2] [--delay 12] [--target 0.8]
        [--codec-rounds 5] [--json benchmarks/results/fl_async.json]

Real ``flower-superlink``/``flower-supernode`` processes on loopback, our ServerApp/ClientApp,
digits shards (Dirichlet alpha 1.0), the same pre-trained start and seeds for every run.

1. **Slow devices**: ``--slow`` of ``--nodes`` devices wait ``--delay`` s before replying (the
   ClientApp's ``sim-delay``; a fast device's message takes a few seconds here, so the slow
   ones are several times slower). Synchronous FedAvg (every round waits for its slowest
   device) vs FedBuff (aggregate every ``--buffer`` arrivals, staleness-weighted, bounded),
   run one after the other on the same federation; FedBuff may use up to twice the local
   updates (its devices never wait, so they do more work in the same time).
   Reported: wall time from the run's start to the first model at ``--target`` accuracy on
   the server's held-out test split, and the final accuracy.
2. **Codecs**: synchronous FedAvg on fast devices for ``--codec-rounds`` rounds with fp32,
   8-bit, 4-bit and top-10 % updates (error feedback on the devices): uplink bytes per round
   and test accuracy after the last round; plus client-side DP (Flower's fixedclipping_mod and
   its server-side noise wrapper) and SecAgg+ (four exchanges per round) against the plain
   run's seconds and bytes per round.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _time_to(doc: dict[str, Any], target: float) -> float | None:
    for r in doc["rounds"]:
        if r["test_acc"] is not None and r["test_acc"] >= target:
            return float(r["ended"] - doc["started"])
    return None


def _per_round(doc: dict[str, Any]) -> float:
    gaps = [b["ended"] - a["ended"] for a, b in itertools.pairwise(doc["rounds"])]
    return statistics.median(gaps) if gaps else float("nan")


def _run(fed: Any, config: dict[str, Any], name: str, timeout: float) -> dict[str, Any]:
    from edgefleet.devtools.fl_local import wait_progress

    started = time.perf_counter()
    doc = wait_progress(fed.run(config, name=name), timeout=timeout)
    if doc["state"] != "succeeded":
        raise RuntimeError(f"{name}: {doc['state']}: {doc.get('reason')}")
    print(f"  {name}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--slow", type=int, default=2)
    parser.add_argument("--delay", type=float, default=12.0, help="s a slow device adds")
    parser.add_argument("--sync-rounds", type=int, default=6)
    parser.add_argument("--buffer", type=int, default=4)
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--codec-nodes", type=int, default=4)
    parser.add_argument("--codec-rounds", type=int, default=5)
    parser.add_argument("--skip", choices=("async", "codecs"), default=None)
    parser.add_argument(
        "--codec-runs", default="", help="only these rows, e.g. fp32,fp32+secagg (default: all)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from edgefleet.devtools.fl_local import LocalFederation, pretrain_biased
    from edgefleet.fl.contract import Node

    common = {"lr": 0.05, "local-epochs": 2, "final-evaluate": False, "round-timeout": 300.0,
              "node-wait-timeout": 120.0, "seed": 0}  # fmt: skip
    results: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}}
    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-async-") as tmp:
        root = Path(tmp)
        init = str(pretrain_biased("mlp", root / "init.npz"))
        if args.skip != "async":
            slow = {
                i: {Node.SIM_DELAY: args.delay} for i in range(args.nodes - args.slow, args.nodes)
            }
            updates = args.sync_rounds * args.nodes
            with LocalFederation(
                root / "slow", num_nodes=args.nodes, alpha=1.0, seed=1, node_facts=slow
            ) as fed:
                # a device failing a round (it happens on a saturated box) must not end the run
                base = {**common, "init-path": init, "min-devices": args.nodes - 1}
                sync = _run(fed, {**base, "strategy": "fedavg", "num-rounds": args.sync_rounds},
                            "fedavg", 1800)  # fmt: skip
                buff = _run(
                    fed,
                    {**base, "strategy": "fedbuff", "num-rounds": 2 * updates // args.buffer,
                     "buffer": args.buffer, "max-staleness": args.max_staleness},
                    "fedbuff", 1800,
                )  # fmt: skip
            rows = {}
            for name, doc in (("fedavg", sync), ("fedbuff", buff)):
                last = doc["rounds"][-1]
                rows[name] = {
                    "time_to_target_s": _time_to(doc, args.target),
                    "final_test_acc": last["test_acc"],
                    "aggregations": len(doc["rounds"]),
                    "wall_s": last["ended"] - doc["started"],
                    "acc_by_time": [
                        (round(r["ended"] - doc["started"], 1), round(r["test_acc"], 4))
                        for r in doc["rounds"]
                    ],
                    "dropped_stale": sum(r.get("dropped_stale", 0) for r in doc["rounds"]),
                    "mean_staleness": (
                        statistics.mean(s for r in doc["rounds"] for s in r["staleness"])
                        if name == "fedbuff" else 0.0
                    ),
                }  # fmt: skip
            results["slow_devices"] = rows
            results["initial_test_acc"] = sync["initial"]["test_acc"]
            a, b = rows["fedavg"]["time_to_target_s"], rows["fedbuff"]["time_to_target_s"]
            results["speedup_to_target"] = a / b if a and b else None
            print(
                f"# {args.nodes} devices, {args.slow} of them +{args.delay:g}s per update; "
                f"FedAvg {updates} local updates, FedBuff up to {2 * updates}; target {args.target:.0%} on the test split "
                f"(start {sync['initial']['test_acc']:.1%})"
            )
            print(f"{'strategy':<9} {'to target s':>11} {'final acc':>9} {'aggs':>5} {'wall s':>7}")
            for name, r in rows.items():
                t = r["time_to_target_s"]
                print(
                    f"{name:<9} {'-' if t is None else f'{t:.0f}':>11} "
                    f"{100 * r['final_test_acc']:>8.1f}% {r['aggregations']:>5} {r['wall_s']:>7.0f}"
                )
            if results["speedup_to_target"]:
                print(
                    f"FedBuff reaches {args.target:.0%} {results['speedup_to_target']:.2f}x sooner"
                )

        if args.skip != "codecs":
            rows_c = {}
            with LocalFederation(
                root / "codecs", num_nodes=args.codec_nodes, alpha=1.0, seed=1
            ) as fed:
                base = {**common, "init-path": init, "min-devices": max(2, args.codec_nodes - 1),
                        "strategy": "fedavg", "num-rounds": args.codec_rounds}  # fmt: skip
                runs: list[tuple[str, dict[str, Any]]] = [
                    ("fp32", {"update-codec": "none"}), ("q8", {"update-codec": "q8"}),
                    ("q4", {"update-codec": "q4"}), ("topk:0.1", {"update-codec": "topk:0.1"}),
                    ("fp32+client-dp", {"dp": "client-fixed", "dp-clip": 5.0, "dp-noise": 0.1}),
                    ("fp32+secagg", {"secure-agg": True}),
                ]  # fmt: skip
                wanted = set(args.codec_runs.split(",")) if args.codec_runs else None
                for label, extra in runs:
                    if wanted is not None and label not in wanted:
                        continue
                    doc = _run(
                        fed, {**base, **extra}, label.replace(":", "-").replace("+", "-"), 1200
                    )
                    rs = doc["rounds"]
                    rows_c[label] = {
                        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in rs),
                        "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in rs),
                        "test_acc": rs[-1]["test_acc"],
                        "s_per_round": _per_round(doc),
                        "failed_updates": sum(r["failed"] for r in rs),
                    }
            fp32 = rows_c.get("fp32", next(iter(rows_c.values())))["bytes_up_per_round"]
            results["codecs"] = rows_c
            print(f"\n# {args.codec_nodes} devices, FedAvg, {args.codec_rounds} rounds")
            print(
                f"{'update':<15} {'up B/round':>11} {'vs fp32':>8} {'test acc':>9} {'s/round':>8}"
            )
            for label, r in rows_c.items():
                print(
                    f"{label:<15} {r['bytes_up_per_round']:>11.0f} "
                    f"{r['bytes_up_per_round'] / fp32:>7.3f}x {100 * r['test_acc']:>8.1f}% "
                    f"{r['s_per_round']:>8.2f}"
                )
    # the machine's load when the run ended: per-message times scale with it (2 shared cores)
    results["load_average_1m"] = os.getloadavg()[0]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
