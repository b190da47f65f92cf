"""Benchmark: the device's long-lived training worker vs training inside each ClientApp process.

    python -m benchmarks.fl_worker [--devices 3] [--rounds 4] [--data-dir DIR]
        [--skip kws|digits] [--json benchmarks/results/fl_worker.json]

Real ``flower-superlink``/``flower-supernode`` processes on loopback (:mod:`edgefleet.devtools.
fl_local`), our ServerApp/ClientApp, synchronous FedAvg; each pair of runs uses the same devices,
start and seeds, one after the other on this machine (the load average is recorded per run: on
2 shared cores every number scales with it).

1. **kws / DS-CNN** (the deployed family): MLPerf Tiny's DS-CNN on the built-in keyword-spotting
   set, one training voice per device, raw audio on the device (the round's ``frontend``
   computes the MFCC there). ``in-process``: no worker, so every per-message ClientApp process
   imports torch and the zoo and featurizes the shard (what every conv-net round did before).
   ``worker``: each device's training worker does it once and keeps it warm.
2. **digits / MLP**: the numpy MLP inside the ClientApp (``numpy``) vs the same network trained
   by torch in the worker (``mlp-in-worker``): does the numpy MLP still earn its place?

Reported per run: each round's wall time (the ServerApp's, first round apart: it pays the
worker's torch import once) and the **device CPU per update**: the CPU of each device's whole
process tree -- SuperNode, SuperExec, every ClientApp process it started and reaped, and its
worker -- over the run divided by the updates, and over the rounds after the first (steady). Read from ``/proc`` (utime+stime of each live
process plus what it reaped), so nothing is sampled and no ClientApp exit is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARCH = "ds-cnn-kws"
_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of process group ``pgid``: every live member's own time plus its reaped
    children's (a ClientApp process is reaped by the SuperExec, a member of the group)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile: its time is in its reaper's children times
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ... utime(11) stime cutime cstime
            total += sum(int(v) for v in fields[11:15])
    return total / _TICK


def _device_cpu(fed: Any) -> list[float]:
    """Each device's CPU so far: its SuperNode's group, plus its worker's group when it has one."""
    out = []
    for i, node in enumerate(fed.supernodes):
        cpu = group_cpu_seconds(node.pid) if node.pid else 0.0
        if i < len(fed.workers) and fed.workers[i].pid:
            cpu += group_cpu_seconds(fed.workers[i].pid)
        out.append(cpu)
    return out


def _measured(fed: Any, config: dict[str, Any], name: str) -> dict[str, Any]:
    """One run on ``fed``: its round times and the devices' CPU per update (all rounds, and
    after the first: the steady state, once the worker has imported torch)."""
    progress = fed.run(config, name=name) / "progress.json"
    before = _device_cpu(fed)
    load_before = os.getloadavg()[0]
    after_first: list[float] | None = None
    deadline = time.monotonic() + 3600
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if progress.exists():
            with contextlib.suppress(ValueError):  # a reader may race the ServerApp's write
                doc = json.loads(progress.read_text())
            if after_first is None and len(doc.get("rounds", [])) >= 1:
                after_first = _device_cpu(fed)
            if doc.get("state") not in (None, "running"):
                break
        time.sleep(0.2)
    if doc.get("state") != "succeeded":
        raise RuntimeError(f"{name}: {doc.get('state')}: {doc.get('reason')}")
    end = _device_cpu(fed)
    print(f"  {name}: {doc['rounds'][-1]['ended'] - doc['started']:.0f}s", file=sys.stderr,
          flush=True)  # fmt: skip
    assert after_first is not None
    cpu = [b - a for a, b in zip(before, end, strict=True)]
    steady = [b - a for a, b in zip(after_first, end, strict=True)]
    rounds = [float(r["seconds"]) for r in doc["rounds"]]
    updates = [len(r["participants"]) for r in doc["rounds"]]
    return {
        "round_seconds": rounds,
        "first_round_s": rounds[0],
        "steady_round_s": statistics.median(rounds[1:]),
        "updates": sum(updates),
        "failed": sum(r["failed"] for r in doc["rounds"]),
        "device_cpu_s": cpu,
        "cpu_per_update_s": sum(cpu) / max(1, sum(updates)),
        "steady_cpu_per_update_s": sum(steady) / max(1, sum(updates[1:])),
        "final_test_acc": doc["rounds"][-1]["test_acc"],
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def _kws(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from edgefleet.devtools.fl_local import LocalFederation
    from edgefleet.fl.partition import group_shards
    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.zoo import DSCNN

    data = load_dataset("kws", args.data_dir)
    src = data.source
    if src is None or src.groups is None or data.frontend is None:
        raise SystemExit("error: the kws set came without voices or its frontend")
    import numpy as np

    voices = src.groups[src.train]
    names = sorted(set(voices.tolist()))[: args.devices]
    rows = src.train[np.isin(voices, names)]
    by_voice = group_shards(src.x[rows], src.y[rows], src.groups[rows], eval_fraction=0.4)
    arch_config = dict(DSCNN.kws_config(1.0, int(src.y.max()) + 1, 1))
    params = fl_model.initial_params(ARCH, override=json.dumps(arch_config))
    init = fl_model.save_params(params, root / "kws-init.npz")
    config = {
        "arch": ARCH, "arch-config": json.dumps(arch_config), "frontend": json.dumps(data.frontend),
        "lr": 0.05, "local-epochs": 1, "batch-size": 16, "strategy": "fedavg",
        "num-rounds": args.rounds, "min-devices": args.devices, "final-evaluate": False,
        "round-timeout": 900.0, "node-wait-timeout": 300.0, "seed": 0, "init-path": str(init),
    }  # fmt: skip
    out: dict[str, Any] = {"clips_per_device": len(by_voice[names[0]].y_train)}
    for arm, workers in (("in-process", False), ("worker", True)):
        with LocalFederation(
            root / f"kws-{arm}", num_nodes=args.devices, local_shards=[by_voice[v] for v in names],
            test_set=(data.x_test, data.y_test), train_workers=workers,
        ) as fed:  # fmt: skip
            out[arm] = _measured(fed, config, f"kws-{arm}")
    return out


def _digits(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from edgefleet.devtools.fl_local import LocalFederation, pretrain_biased
    from edgefleet.fl.contract import Node

    init = pretrain_biased("mlp", root / "mlp-init.npz")
    config = {
        "arch": "mlp", "lr": 0.05, "local-epochs": 2, "strategy": "fedavg",
        "num-rounds": args.rounds, "min-devices": args.devices, "final-evaluate": False,
        "round-timeout": 900.0, "node-wait-timeout": 300.0, "seed": 0, "init-path": str(init),
    }  # fmt: skip
    out: dict[str, Any] = {}
    for arm, in_worker in (("numpy", False), ("mlp-in-worker", True)):
        facts = {i: {Node.MLP_IN_WORKER: True} for i in range(args.devices)} if in_worker else {}
        with LocalFederation(
            root / f"digits-{arm}", num_nodes=args.devices, alpha=1.0, seed=1, node_facts=facts,
        ) as fed:  # fmt: skip
            out[arm] = _measured(fed, config, f"digits-{arm}")
    return out


def _print(title: str, rows: dict[str, Any]) -> None:
    print(f"\n# {title}")
    print(f"{'arm':<14} {'1st round s':>11} {'round s':>8} {'CPU s/update':>12} "
          f"{'steady':>7} {'test acc':>9} {'load':>10}")  # fmt: skip
    for arm, r in rows.items():
        if not isinstance(r, dict):
            continue
        load = "-".join(f"{v:.1f}" for v in r["load_average_1m"])
        print(
            f"{arm:<14} {r['first_round_s']:>11.1f} {r['steady_round_s']:>8.1f} "
            f"{r['cpu_per_update_s']:>12.2f} {r['steady_cpu_per_update_s']:>7.2f} "
            f"{100 * r['final_test_acc']:>8.1f}% {load:>10}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=None, help="where kws is cached")
    parser.add_argument("--skip", choices=("kws", "digits"), default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.rounds < 2:
        print("error: --devices must be >= 1 and --rounds >= 2", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results: dict[str, Any] = {"args": vars(args) | {"json": str(args.json),
                                                     "data_dir": str(args.data_dir)}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-worker-") as tmp:
        root = Path(tmp)
        if args.skip != "kws":
            results["kws_ds_cnn"] = _kws(args, root)
            _print(
                f"kws, DS-CNN, {args.devices} devices x {args.rounds} rounds", results["kws_ds_cnn"]
            )
        if args.skip != "digits":
            results["digits_mlp"] = _digits(args, root)
            _print(
                f"digits, MLP, {args.devices} devices x {args.rounds} rounds", results["digits_mlp"]
            )
    results["seconds"] = time.perf_counter() - t0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
