"""Per-round wall time: Flower's stock FedAvg ServerApp/ClientApp vs ours, 2 and 4 SuperNodes.

Both run on real ``flower-superlink``/``flower-supernode`` processes on loopback, with the
same tiny MLP (64-32-10) and the same Dirichlet shards, in one invocation:

* **flower-stock**: ``benchmarks/fl_stock_app.py`` -- ``FedAvg.start`` (``send_and_receive``,
  3 s pulls), separate train and evaluate messages, torch imported by the ClientApp module,
  SuperExec at its default 1 s task poll. This is Flower 1.41's own floor.
* **edgefleet**: our ServerApp/ClientApp (push/pull at 50 ms, evaluation folded into the
  train reply, numpy-only ClientApp imports, ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05``).

s/round is the median of the gaps between consecutive round ends from round 2 on (round 1
includes app start-up). Run: ``python benchmarks/fl_rounds.py [--rounds 8] [--nodes 2,4]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet.coordinator.fl.superlink import submit, write_app
from edgefleet.devtools.fl_local import LocalFederation, wait_progress
from edgefleet.fl.contract import FAST_POLL_ENV

TINY = json.dumps({"in_features": 64, "hidden": [32], "num_classes": 10})


def _per_round(ends: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    return statistics.median(gaps) if gaps else float("nan")


def run_stock(root: Path, nodes: int, rounds: int) -> float:
    """Flower's stock app on a default-configured federation; returns s/round."""
    env = {"FLWR_TELEMETRY_ENABLED": "0"}
    with LocalFederation(root, num_nodes=nodes, env=env) as fed:
        app = root / "stock-app"
        app.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(__file__).with_name("fl_stock_app.py"), app / "stock_app.py")
        times = root / "stock-times.json"
        write_app(
            app,
            {"num-rounds": rounds, "min-nodes": nodes, "times-path": str(times)},
            components={"serverapp": "stock_app:server", "clientapp": "stock_app:client"},
            name="flower-stock",
        )
        submit(app, root / "flwr-home", fed.address)
        deadline = time.monotonic() + rounds * 60 + 120
        ends: list[float] = []
        while time.monotonic() < deadline:
            ends = json.loads(times.read_text()) if times.exists() else []
            if len(ends) > rounds:  # evaluate_fn runs once before round 1 too
                break
            time.sleep(0.5)
        if len(ends) <= rounds:
            raise TimeoutError(f"stock run finished {max(len(ends) - 1, 0)} of {rounds} rounds")
        return _per_round(ends[1:])


def run_ours(root: Path, nodes: int, rounds: int) -> tuple[float, dict[str, Any]]:
    """Our app on a federation with our tuning; returns s/round and the run record."""
    with LocalFederation(root, num_nodes=nodes, env=dict(FAST_POLL_ENV)) as fed:
        out = fed.run(
            {"num-rounds": rounds, "min-devices": nodes, "arch-config": TINY,
             "batch-size": 32, "local-epochs": 1, "final-evaluate": False},
        )  # fmt: skip
        doc = wait_progress(out, timeout=rounds * 60 + 120)
        if doc["state"] != "succeeded":
            raise RuntimeError(f"our run failed: {doc.get('reason')}")
        return _per_round([r["ended"] for r in doc["rounds"]]), doc


def main() -> None:
    """Print the side-by-side table (and ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--nodes", default="2,4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fl-rounds-") as tmp:
        for n in [int(x) for x in args.nodes.split(",")]:
            stock = run_stock(Path(tmp) / f"stock-{n}", n, args.rounds)
            ours, _ = run_ours(Path(tmp) / f"ours-{n}", n, args.rounds)
            rows.append({"nodes": n, "flower_stock_s": stock, "edgefleet_s": ours,
                         "ratio": ours / stock})  # fmt: skip
            print(f"nodes={n}: stock {stock:.2f} s/round, ours {ours:.2f} s/round", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"\n{'nodes':>5} | {'flower stock s/round':>20} | {'edgefleet s/round':>17} | ratio")
    for r in rows:
        print(f"{r['nodes']:>5} | {r['flower_stock_s']:>20.2f} | {r['edgefleet_s']:>17.2f} | "
              f"{r['ratio']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
