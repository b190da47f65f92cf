"""Federated fine-tuning benchmark (issue 7): both must-show tables from one command.

(a) **Per-round overhead**: wall time per round of our ServerApp/ClientApp with K devices next
    to Flower's own deployment-engine floor (stock ``FedAvg`` ServerApp + minimal ClientApp,
    same tiny MLP, same shards), measured side by side in this run, and the ratio
    (``benchmarks/fl_rounds.py``).
(b) **Heterogeneous fleet**: six simulated devices of four classes (one limited to width 0.25),
    non-IID Dirichlet shards, a base model trained on a small biased subset; HeteroFL with all
    six vs FedAvg with only the devices that hold the full model, same seeds and rounds
    (``benchmarks/fl_hetero.py``).

The measuring code lives in those two modules and is imported here, so the numbers this script
prints and the ones the per-topic scripts print come from the same code. Every run is real
``flower-superlink``/``flower-supernode`` processes on loopback.

Run: ``python -m benchmarks.federated [--rounds 8] [--nodes 2,4] [--hetero-rounds 5]
[--skip-hetero] [--skip-rounds] [--json]``. The defaults take ~15-25 min on a quiet 2-core box
(the stock floor is ~12-19 s per round); ``--rounds 3 --hetero-rounds 3`` is a ~5 min check.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.fl_hetero import compare, print_table
from benchmarks.fl_rounds import run_ours, run_stock


def overhead_rows(nodes: list[int], rounds: int) -> list[dict[str, Any]]:
    """Stock floor and ours for each K, stock first (same order for every K, so a loaded box
    penalises both columns alike rather than only the one measured second)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="fl-federated-") as tmp:
        for n in nodes:
            stock = run_stock(Path(tmp) / f"stock-{n}", n, rounds)
            ours, _ = run_ours(Path(tmp) / f"ours-{n}", n, rounds)
            rows.append(
                {"nodes": n, "flower_stock_s": stock, "edgefleet_s": ours, "ratio": ours / stock}
            )
            print(f"  K={n}: stock {stock:.2f} s/round, ours {ours:.2f} s/round", flush=True)
    return rows


def print_overhead(rows: list[dict[str, Any]], rounds: int) -> None:
    """Table (a), markdown so the README can quote it as printed."""
    print(f"\n(a) wall time per round, median from round 2 of {rounds} (s)\n")
    print("| devices (K) | Flower stock FedAvg app | edgefleet | ratio |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nodes']} | {r['flower_stock_s']:.2f} | {r['edgefleet_s']:.2f} | "
              f"{r['ratio']:.2f} |")  # fmt: skip


def main() -> None:
    """Run (a) then (b) and print both tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="rounds per overhead run (>= 3)")
    ap.add_argument("--nodes", default="2,4", help="K values for the overhead table")
    ap.add_argument("--hetero-rounds", type=int, default=5, help="rounds of each hetero run")
    ap.add_argument("--skip-hetero", action="store_true", help="only table (a)")
    ap.add_argument("--skip-rounds", action="store_true", help="only table (b)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    args = ap.parse_args()
    if args.rounds < 3 and not args.skip_rounds:
        ap.error("--rounds must be >= 3: s/round is taken from round 2 on (round 1 is start-up)")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    if not args.skip_rounds:
        nodes = [int(x) for x in args.nodes.split(",")]
        print(f"(a) per-round overhead, K = {nodes}, {args.rounds} rounds each", flush=True)
        result["overhead"] = overhead_rows(nodes, args.rounds)
        result["overhead_seconds"] = round(time.monotonic() - t0, 1)
    if not args.skip_hetero:
        t1 = time.monotonic()
        print(f"(b) heterogeneous fleet, {args.hetero_rounds} rounds per strategy", flush=True)
        result["hetero"] = compare(args.hetero_rounds)
        result["hetero_seconds"] = round(time.monotonic() - t1, 1)
    if "overhead" in result:
        print_overhead(result["overhead"], args.rounds)
    if "hetero" in result:
        print(f"\n(b) global held-out (test split) accuracy, {args.hetero_rounds} rounds\n")
        print_table(result["hetero"])
        hetero, full_only = result["hetero"][0], result["hetero"][1]
        print(
            f"\nheterofl - full-model-only: "
            f"{100 * (hetero['test_acc_after'] - full_only['test_acc_after']):+.1f} pt; "
            f"heterofl gain over the base: "
            f"{100 * (hetero['test_acc_after'] - hetero['test_acc_before']):+.1f} pt"
        )
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
