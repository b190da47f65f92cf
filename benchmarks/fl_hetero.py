"""HeteroFL across a mixed fleet vs "only the devices that can hold the full model".

Six simulated devices of four classes (SBC, phone, two MCUs; one forced to width 0.25) on
real SuperLink/SuperNodes, non-IID Dirichlet shards (alpha 0.3), a base MLP trained on a
small biased subset. Both runs use the same federation, shards, seeds and rounds; the only
difference is who takes part and how they are aggregated. Prints global held-out (test
split) accuracy before and after, per strategy.

Run: ``python benchmarks/fl_hetero.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.devtools.fl_local import LocalFederation, pretrain_biased, wait_progress
from edgefleet.fl.contract import Node
from edgefleet.flower.serverapp import device_facts, pick_width

PROFILES = ("rpi4", "phone-flagship", "cortex-m7", "esp32-s3", "cortex-m4", "rpi-zero2w")
FORCED = {4: {Node.WIDTH: 0.25}}  # the cortex-m4 trains a quarter-width slice


def compare(rounds: int = 5) -> list[dict[str, Any]]:
    """Run HeteroFL with all six devices, then FedAvg with only the full-model ones.

    One function (not only ``main``) so ``benchmarks/federated.py`` prints the same rows.
    """
    with tempfile.TemporaryDirectory(prefix="fl-hetero-") as tmp:
        root = Path(tmp)
        init = pretrain_biased("mlp", root / "init.npz")
        fed = LocalFederation(
            root / "fed", num_nodes=len(PROFILES), profiles=PROFILES, alpha=0.3, seed=3,
            node_facts=FORCED,
        )  # fmt: skip
        with fed:
            full = []
            for node in fed.supernodes:
                facts = device_facts({**node.node_config})
                if pick_width(facts, "mlp", 0.25) == 1.0:
                    full.append(str(node.node_config[Node.DEVICE_ID]))
            only_full = " or ".join(f"device=={d}" for d in full)
            common: dict[str, Any] = {
                "num-rounds": rounds, "init-path": str(init), "local-epochs": 2,
                "lr": 0.05, "seed": 3,
            }  # fmt: skip
            runs = {
                "heterofl (all 6)": {**common, "strategy": "heterofl", "min-devices": 6},
                f"fedavg (full-model only: {len(full)})": {
                    **common,
                    "strategy": "fedavg",
                    "min-devices": len(full),
                    "select": only_full,
                },
            }
            rows = []
            for i, (label, cfg) in enumerate(runs.items()):
                doc = wait_progress(fed.run(cfg, name=f"run{i}"), timeout=900)
                if doc["state"] != "succeeded":
                    raise RuntimeError(f"{label}: {doc.get('reason')}")
                widths = sorted(
                    d["width"] for d in doc["devices"].values() if d["selected"]
                )  # fmt: skip
                rows.append({
                    "strategy": label, "widths": widths,
                    "test_acc_before": doc["initial"]["test_acc"],
                    "test_acc_after": doc["final"]["test_acc"],
                    "client_acc_after": doc["final"]["client_eval_acc"],
                    "s_per_round": [round(r["seconds"], 2) for r in doc["rounds"]],
                })  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The comparison as a text table (test accuracy before -> after, per strategy)."""
    print(f"{'strategy':<34} | widths                 | test acc before -> after")
    for r in rows:
        print(f"{r['strategy']:<34} | {','.join(f'{w:g}' for w in r['widths']):<22} | "
              f"{100 * r['test_acc_before']:.1f}% -> {100 * r['test_acc_after']:.1f}%")  # fmt: skip


def main() -> None:
    """Run both strategies and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = compare(args.rounds)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print_table(rows)


if __name__ == "__main__":
    main()
