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
worker's torch import once) and the **training CPU per update**: the CPU of every ClientApp
process the device's SuperExec started and reaped, plus its worker's, over the run divided by
the updates, and over the rounds after the first (steady). Read from ``/proc`` (the SuperExec's
children times), so nothing is sampled and no ClientApp exit is missed. The SuperNode's own
polling CPU is reported apart (``node_overhead``): it grows with wall time, whatever trains.
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


def _proc_stats(pgid: int) -> list[tuple[str, list[int]]]:
    """(command name, [utime, stime, cutime, cstime] in ticks) of each live member of a group."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            head, tail = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue  # exited meanwhile: its time is in its reaper's children times
        fields = tail.split()  # state ppid pgrp ... utime(11) stime cutime cstime
        if int(fields[2]) == pgid:
            out.append((head.split("(", 1)[1], [int(v) for v in fields[11:15]]))
    return out


def node_cpu_seconds(pgid: int) -> tuple[float, float]:
    """(ClientApp CPU, the node's own CPU) of a SuperNode's process group, in seconds.

    ClientApp processes are started and reaped by the node's SuperExec: their CPU is the
    SuperExec's children times, plus the own time of any not reaped yet. The SuperNode's and
    SuperExec's own time (polling, gRPC) is the node's overhead, paid whatever trains.
    """
    apps = node = 0
    for name, (utime, stime, cutime, cstime) in _proc_stats(pgid):
        if name.startswith("flwr-clientapp"):
            apps += utime + stime
        elif name.startswith("flower-superexe"):
            apps += cutime + cstime
            node += utime + stime
        else:
            node += utime + stime
    return apps / _TICK, node / _TICK


def _device_cpu(fed: Any) -> list[tuple[float, float, float]]:
    """Each device's (ClientApp, worker, node overhead) CPU seconds so far."""
    out = []
    for i, node in enumerate(fed.supernodes):
        apps, own = node_cpu_seconds(node.pid) if node.pid else (0.0, 0.0)
        worker = 0.0
        if i < len(fed.workers) and fed.workers[i].pid:
            worker = sum(sum(t[:2]) for _, t in _proc_stats(fed.workers[i].pid)) / _TICK
        out.append((apps, worker, own))
    return out


def _per_update(
    a: list[tuple[float, float, float]], b: list[tuple[float, float, float]], updates: int
) -> dict[str, float]:
    apps, worker, node = (sum(y[k] - x[k] for x, y in zip(a, b, strict=True)) for k in range(3))
    n = max(1, updates)
    return {"clientapp": apps / n, "worker": worker / n, "training": (apps + worker) / n,
            "node_overhead": node / n}  # fmt: skip


def _measured(fed: Any, config: dict[str, Any], name: str) -> dict[str, Any]:
    """One run on ``fed``: its round times and the devices' CPU per update (all rounds, and
    after the first: the steady state, once the worker has imported torch)."""
    progress = fed.run(config, name=name) / "progress.json"
    before = _device_cpu(fed)
    load_before = os.getloadavg()[0]
    after_first: list[tuple[float, float, float]] | None = None
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
    rounds = [float(r["seconds"]) for r in doc["rounds"]]
    updates = [len(r["participants"]) for r in doc["rounds"]]
    return {
        "round_seconds": rounds,
        "first_round_s": rounds[0],
        "steady_round_s": statistics.median(rounds[1:]),
        "updates": sum(updates),
        "failed": sum(r["failed"] for r in doc["rounds"]),
        # CPU seconds per update: ClientApp processes, the worker, both, the node's own
        "cpu_per_update_s": _per_update(before, end, sum(updates)),
        "steady_cpu_per_update_s": _per_update(after_first, end, sum(updates[1:])),
        "train_loss": [r["train_loss"] for r in doc["rounds"]],
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
    print(f"\n# {title}: CPU s per update (ClientApp processes + worker; steady = after round 1)")
    print(f"{'arm':<14} {'1st round s':>11} {'round s':>8} {'CPU/update':>10} {'steady':>7} "
          f"{'of it worker':>12} {'node s':>7} {'loss':>6} {'load':>10}")  # fmt: skip
    for arm, r in rows.items():
        if not isinstance(r, dict):
            continue
        load = "-".join(f"{v:.1f}" for v in r["load_average_1m"])
        cpu, steady = r["cpu_per_update_s"], r["steady_cpu_per_update_s"]
        print(
            f"{arm:<14} {r['first_round_s']:>11.1f} {r['steady_round_s']:>8.1f} "
            f"{cpu['training']:>10.2f} {steady['training']:>7.2f} {steady['worker']:>12.2f} "
            f"{steady['node_overhead']:>7.2f} {r['train_loss'][-1]:>6.3f} {load:>10}"
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
