"""Benchmark: light-scope devices under SecAgg+ -- per-tensor means vs whole models vs no masking.

    python -m benchmarks.fl_secagg_partial [--rounds 3] [--json benchmarks/results/fl_secagg_partial.json]

Real ``flower-superlink``/``flower-supernode`` processes on loopback, our ServerApp/ClientApp,
4 devices holding digits shards (Dirichlet alpha 1.0), a small DS-CNN pre-trained on 150
digits (``--pretrain subset``; or on digits 0-4 only, ``biased``) so the federation
fine-tunes a deployed model rather than train from scratch. Two devices are memory-tight: their
budget (``ram-bytes``, all of it for training) lets the round's planner pick the head only
(270 kB) and a sparse update (350 kB: biases, head, last pointwise convs) instead of full
fine-tuning. Three runs from the same start and seeds:

* ``plain-partial``: no masking; light devices reply with their trained tensors only and
  PartialFedAvg averages each tensor over the replies holding it;
* ``secagg-partial``: SecAgg+; every device sends the same fixed layout (its trained tensors,
  zeros elsewhere, a 0/1 weight per tensor) and the server divides the two secure sums
  tensor by tensor (``edgefleet.flower.secagg``): the same per-tensor mean, masked;
* ``secagg-whole``: SecAgg+ with whole models (``secure-agg-partial`` off): the light
  devices' untrained tensors, equal to the global model, dilute the others' mean.

Reported per run: test accuracy on the server's held-out split after each round, uplink and
downlink payload bytes per round, and seconds per round (SecAgg+ is four message exchanges a
round, each a fresh ClientApp process per device).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: a DS-CNN small enough that the light devices' plans are quick (1,103 parameters)
ARCH_CONFIG = {"channels": [8, 16, 16], "strides": [1, 1], "num_classes": 10, "in_channels": 1}
#: training budgets (bytes) of the two light devices: head only, and a sparse update
LIGHT_BUDGETS = {2: 270_000, 3: 350_000}


def _pretrain(out: Path, seed: int, how: str) -> Path:
    """The run's start: the small DS-CNN trained on 150 digits of every class (``subset``) or
    on digits 0-4 only (``biased``: the others never seen)."""
    import numpy as np
    import torch
    from torch import nn

    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.zoo import ArchitectureSpec, build_model

    torch.manual_seed(seed)
    ds = load_dataset("digits")
    keep = ds.y_train < 5 if how == "biased" else np.arange(len(ds.y_train)) < 150
    x = torch.from_numpy(np.asarray(ds.x_train[keep], np.float32))
    y = torch.from_numpy(np.asarray(ds.y_train[keep], np.int64))
    model = build_model(
        ArchitectureSpec(name="ds-cnn", config=dict(ARCH_CONFIG), input_shape=(1, 8, 8))
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(15):
        for idx in torch.randperm(len(y)).split(32):  # type: ignore[no-untyped-call]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    params = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    return fl_model.save_params(params, out)


def _run(fed: Any, config: dict[str, Any], name: str, timeout: float) -> dict[str, Any]:
    from edgefleet.devtools.fl_local import wait_progress

    started = time.perf_counter()
    doc = wait_progress(fed.run(config, name=name), timeout=timeout)
    if doc["state"] != "succeeded":
        raise RuntimeError(f"{name}: {doc['state']}: {doc.get('reason')}")
    print(f"  {name}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return doc


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    rounds = doc["rounds"]
    return {
        "initial_test_acc": doc["initial"]["test_acc"],
        "test_acc_per_round": [r["test_acc"] for r in rounds],
        "final_test_acc": rounds[-1]["test_acc"],
        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in rounds),
        "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in rounds),
        "s_per_round": statistics.median(r["seconds"] for r in rounds),
        # plain rounds only: the server sees who trained what (SecAgg+ hides it)
        "device_trained_params": rounds[0].get("device_trained_params"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.02, help="the devices' SGD step")
    parser.add_argument("--pretrain", choices=("subset", "biased"), default="subset")
    parser.add_argument("--round-timeout", type=float, default=900.0)
    parser.add_argument(
        "--runs", default="plain-partial,secagg-partial,secagg-whole", help="which, in order"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from edgefleet.devtools.fl_local import LocalFederation
    from edgefleet.fl.contract import Node

    runs = {
        "plain-partial": {},
        "secagg-partial": {"secure-agg": True},
        "secagg-whole": {"secure-agg": True, "secure-agg-partial": False},
    }
    wanted = [r for r in args.runs.split(",") if r]
    unknown = [r for r in wanted if r not in runs]
    if unknown:
        print(f"error: unknown run(s) {', '.join(unknown)}; choose among {', '.join(runs)}",
              file=sys.stderr)  # fmt: skip
        return 2
    light = {i: {Node.RAM_BYTES: b, Node.BUDGET_FRACTION: 1.0} for i, b in LIGHT_BUDGETS.items()}
    results: dict[str, Any] = {
        "devices": 4, "light_budgets": {f"sim-{i:03d}": b for i, b in LIGHT_BUDGETS.items()},
        "arch": "ds-cnn", "arch_config": ARCH_CONFIG, "rounds": args.rounds, "lr": args.lr,
        "pretrain": args.pretrain, "runs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fl-secagg-partial-") as tmp:
        root = Path(tmp)
        init = _pretrain(root / "init.npz", args.seed, args.pretrain)
        base = {
            "arch": "ds-cnn", "arch-config": json.dumps(ARCH_CONFIG), "init-path": str(init),
            "num-rounds": args.rounds, "min-devices": 4, "lr": args.lr, "batch-size": 16,
            "local-epochs": 1, "final-evaluate": False, "round-timeout": args.round_timeout,
            "seed": args.seed,
        }  # fmt: skip
        with LocalFederation(
            root / "fed", num_nodes=4, alpha=1.0, seed=args.seed, node_facts=light
        ) as fed:
            for name in wanted:
                doc = _run(fed, {**base, **runs[name]}, name, args.rounds * args.round_timeout)
                results["runs"][name] = _summary(doc)
                print(json.dumps({name: results["runs"][name]}), flush=True)
    plain = results["runs"].get("plain-partial")
    for name, row in results["runs"].items():
        if plain is not None and name != "plain-partial":
            row["s_per_round_vs_plain"] = row["s_per_round"] / plain["s_per_round"]
            row["bytes_up_vs_plain"] = row["bytes_up_per_round"] / plain["bytes_up_per_round"]
    print("\n| run | test acc after each round | uplink B/round | s/round |")
    print("|---|---|---:|---:|")
    for name, row in results["runs"].items():
        accs = " / ".join(f"{a:.1%}" for a in row["test_acc_per_round"])
        print(f"| {name} | {row['initial_test_acc']:.1%} -> {accs} | "
              f"{row['bytes_up_per_round']:,.0f} | {row['s_per_round']:.1f} |")  # fmt: skip
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
