"""Benchmark: FedBuff vs synchronous FedAvg on keyword spotting, one voice per device, slow devices.

    python -m benchmarks.fl_async_kws [--virtual] [--devices 10] [--slow-fraction 0.3]
        [--slowdown 5] [--target 0.6] [--sync-rounds 5] [--data-dir DIR]
        [--json benchmarks/results/fl_async_kws.json]

``--virtual`` (what ``benchmarks/results/fl_async_kws.json`` holds) runs the same devices,
start and seeds on a virtual clock instead (:mod:`benchmarks.fl_async_virtual`): on the loaded
2-core box the loopback run failed (SuperNode heartbeats missed, the SuperLink's SQLite locked).

Issue 19's must-show on the real task, with the machinery of :mod:`benchmarks.fl_async` (real
``flower-superlink``/``flower-supernode`` processes on loopback, our ServerApp/ClientApp):

* **Task**: the built-in ``kws`` set (12 classes, synthetic voices), MLPerf Tiny's DS-CNN
  (``ds-cnn-kws``, the deployed family) on 49x10 MFCC. Each device holds the raw audio of ONE
  training voice and computes the MFCC itself (the round's ``frontend``, through
  :func:`edgefleet.fl.features.featurize_shard`, as when serving); the server scores every new
  global model on the test split -- 12 voices no device and no pre-training ever heard.
* **Start**: the same DS-CNN pre-trained centrally on ``--base-voices`` other training voices
  (seeded), so the federation starts from a weak deployed model, not from chance.
* **Slow devices**: ``--slow-fraction`` of the devices are ``--slowdown`` times slower. "Times
  slower" is measured, not assumed: a calibration federation (the same devices, none delayed)
  runs ``--calibration-rounds`` synchronous rounds; a round's time is what a fast device's
  update takes here (all devices training at once on this box), and a slow device sleeps
  ``(slowdown - 1)`` times that after training (the ClientApp's ``sim-delay``, the mechanism
  :mod:`benchmarks.fl_async` uses). ``--delay`` skips the calibration.
* **Runs**: synchronous FedAvg for ``--sync-rounds`` rounds (every round waits for its slowest
  device), then FedBuff (``--buffer`` arrivals per aggregation, bounded staleness) on the same
  federation with the same start and seeds, allowed ``--fedbuff-updates`` times FedAvg's local
  updates (its devices never wait, so they do more work in the same time).

Reported: wall time from a run's start to its first global model at ``--target`` (and at each
of ``--targets``) on the held-out voices, the final accuracy of each, and the per-update times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fl_async import _run, _time_to
from edgefleet.devtools.fl_sim_tasks import pretrain_ds_cnn

ARCH = "ds-cnn-kws"


def _row(doc: dict[str, Any], targets: list[float], fedbuff: bool) -> dict[str, Any]:
    last = doc["rounds"][-1]
    return {
        "time_to_target_s": {f"{t:g}": _time_to(doc, t) for t in targets},
        "final_test_acc": last["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in doc["rounds"]),
        "aggregations": len(doc["rounds"]),
        "local_updates": sum(len(r["participants"]) for r in doc["rounds"]),
        "wall_s": last["ended"] - doc["started"],
        "acc_by_time": [
            (round(r["ended"] - doc["started"], 1), round(r["test_acc"], 4)) for r in doc["rounds"]
        ],
        "failed": sum(r.get("failed", 0) for r in doc["rounds"]),
        "dropped_stale": sum(r.get("dropped_stale", 0) for r in doc["rounds"]),
        "mean_staleness": (
            statistics.mean(s for r in doc["rounds"] for s in r["staleness"]) if fedbuff else 0.0
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=10, help="one training voice each")
    parser.add_argument("--slow-fraction", type=float, default=0.3)
    parser.add_argument("--slowdown", type=float, default=5.0, help="a slow device's update time")
    parser.add_argument(
        "--delay", type=float, default=None, help="s a slow device adds (skip calibration)"
    )
    parser.add_argument("--calibration-rounds", type=int, default=2)
    parser.add_argument("--base-voices", type=int, default=6, help="voices of the pre-training")
    parser.add_argument("--base-epochs", type=int, default=10)
    parser.add_argument("--sync-rounds", type=int, default=5)
    parser.add_argument("--fedbuff-updates", type=float, default=1.5, help="x FedAvg's updates")
    parser.add_argument("--buffer", type=int, default=4)
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--targets", default="0.55,0.6,0.62", help="also report these")
    parser.add_argument("--data-dir", type=Path, default=None, help="where kws is cached")
    parser.add_argument("--server-lr", type=float, default=0.5, help="FedBuff's server step")
    parser.add_argument(
        "--poll", type=float, default=0.05,
        help="s between a SuperExec's task polls (loopback; slower eases the SuperLink's SQLite)",
    )  # fmt: skip
    parser.add_argument(
        "--virtual", action="store_true",
        help="device time on a virtual clock (benchmarks/fl_async_virtual.py), no Flower processes",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from edgefleet.fl.partition import group_shards
    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.zoo import DSCNN

    t0 = time.perf_counter()
    data = load_dataset("kws", args.data_dir)
    src = data.source
    if src is None or src.groups is None or data.frontend is None:
        print("error: the kws set came without voices or its frontend", file=sys.stderr)
        return 2
    voices = src.groups[src.train]
    names = sorted(set(voices.tolist()))
    if args.base_voices + args.devices > len(names):
        print(
            f"error: {len(names)} training voices; --base-voices {args.base_voices} + "
            f"--devices {args.devices} do not fit",
            file=sys.stderr,
        )
        return 2
    base_names, device_names = names[: args.base_voices], names[args.base_voices :][: args.devices]
    num_classes = int(src.y.max()) + 1
    arch_config = dict(DSCNN.kws_config(1.0, num_classes, 1))
    on_base = np.isin(voices, base_names)
    params = pretrain_ds_cnn(
        data.x_train[on_base], data.y_train[on_base], arch_config, epochs=args.base_epochs,
        lr=0.05, seed=0,
    )  # fmt: skip
    _, start_acc = fl_model.score(ARCH, params, data.x_test, data.y_test, json.dumps(arch_config))
    # devices hold raw audio (what a microphone gives); one training voice each
    raw_rows = src.train[np.isin(voices, device_names)]
    by_voice = group_shards(
        src.x[raw_rows], src.y[raw_rows], src.groups[raw_rows], eval_fraction=0.4
    )
    shards = [by_voice[v] for v in device_names]
    n_slow = round(args.devices * args.slow_fraction)
    slow_ids = list(range(args.devices - n_slow, args.devices))
    targets = sorted({args.target, *(float(t) for t in args.targets.split(",") if t)})
    print(
        f"# kws: {args.devices} devices (one voice each, {len(shards[0].y_train)} clips to train "
        f"on), start {start_acc:.1%} on {len(data.y_test)} clips of held-out voices; "
        f"setup {time.perf_counter() - t0:.0f}s",
        file=sys.stderr, flush=True,
    )  # fmt: skip

    results: dict[str, Any] = {
        "args": vars(args) | {"json": str(args.json), "data_dir": str(args.data_dir)}
    }
    updates = args.sync_rounds * args.devices
    aggregations = round(args.fedbuff_updates * updates / args.buffer)
    delay: float | None = args.delay
    if args.virtual:
        sync, buff = _virtual(args, params, shards, set(slow_ids), arch_config, data, aggregations)
        cpu = [s for i, s in sync["seconds"] if i not in slow_ids]
        results["fast_update_cpu_s"] = statistics.median(cpu)
        print(f"  a fast update: median {statistics.median(cpu):.2f} CPU s", flush=True)
    else:
        sync, buff, delay = _loopback(args, params, shards, slow_ids, arch_config, data,
                                      aggregations, results)  # fmt: skip
    if args.json:  # the raw run records first: a table that fails to print loses nothing
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "runs": {"fedavg": sync, "fedbuff": buff}}))
    rows = {"fedavg": _row(sync, targets, False), "fedbuff": _row(buff, targets, True)}
    key = f"{args.target:g}"
    a, b = rows["fedavg"]["time_to_target_s"][key], rows["fedbuff"]["time_to_target_s"][key]
    results |= {
        "slow_devices": rows,
        "slow_delay_s": delay,
        "initial_test_acc": start_acc,
        "speedup_to_target": a / b if a and b else None,
        "speedups": {
            t: (rows["fedavg"]["time_to_target_s"][t] / rows["fedbuff"]["time_to_target_s"][t])
            if rows["fedavg"]["time_to_target_s"][t] and rows["fedbuff"]["time_to_target_s"][t]
            else None
            for t in rows["fedavg"]["time_to_target_s"]
        },
        "voices": {"base": base_names, "devices": device_names},
        # the machine's load when the run ended: per-update times scale with it (2 shared cores)
        "load_average_1m": os.getloadavg()[0],
        "seconds": time.perf_counter() - t0,
    }
    slower = "virtual clock" if args.virtual else f"+{delay:.0f}s per update"
    print(
        f"# kws, {args.devices} devices (one voice each), {n_slow} of them {args.slowdown:g}x "
        f"slower ({slower}); FedAvg {updates} local updates, FedBuff up to "
        f"{aggregations * args.buffer}; start {start_acc:.1%} on held-out voices"
    )
    head = " ".join(f"{'to ' + t:>9}" for t in rows["fedavg"]["time_to_target_s"])
    print(f"{'strategy':<9} {head} {'final':>7} {'best':>7} {'aggs':>5} {'wall s':>7}")
    for name, r in rows.items():
        cells = " ".join(
            f"{'-' if v is None else f'{v:.{1 if args.virtual else 0}f}s':>9}"
            for v in r["time_to_target_s"].values()
        )
        print(
            f"{name:<9} {cells} {100 * r['final_test_acc']:>6.1f}% {100 * r['best_test_acc']:>6.1f}% "
            f"{r['aggregations']:>5} {r['wall_s']:>7.1f}"
        )
    for t, s in results["speedups"].items():
        if s:
            print(f"FedBuff reaches {float(t):.0%} {s:.2f}x sooner")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _virtual(
    args: Any, params: Any, shards: Any, slow: set[int], arch_config: Any, data: Any,
    aggregations: int,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Both runs on the virtual clock (:mod:`benchmarks.fl_async_virtual`)."""
    from benchmarks.fl_async_virtual import Devices, round_config, run_fedavg, run_fedbuff
    from edgefleet.flower import model as fl_model

    override = json.dumps(arch_config)

    def score(p: Any) -> float:
        return fl_model.score(ARCH, p, data.x_test, data.y_test, override)[1]

    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-async-virtual-") as tmp:
        cfg = round_config(ARCH, arch_config, data.frontend, args)
        devices = Devices(Path(tmp), shards, cfg)
        print("  fedavg", flush=True)
        sync = run_fedavg(devices, params, slow, args.slowdown, args.sync_rounds, score)
        sync["seconds"], devices.seconds = devices.seconds, []
        print("  fedbuff", flush=True)
        buff = run_fedbuff(
            devices, params, slow, args.slowdown, aggregations, score, buffer=args.buffer,
            max_staleness=args.max_staleness, server_lr=args.server_lr,
        )  # fmt: skip
        buff["seconds"] = devices.seconds
    return sync, buff


def _loopback(
    args: Any, params: Any, shards: Any, slow_ids: list[int], arch_config: Any, data: Any,
    aggregations: int, results: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], float]:  # fmt: skip
    """Both runs on real SuperLink/SuperNodes (after a calibration federation)."""
    from edgefleet.devtools.fl_local import LocalFederation
    from edgefleet.fl.contract import FAST_POLL_ENV, Node
    from edgefleet.flower import model as fl_model

    env = {**FAST_POLL_ENV, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": f"{args.poll:g}"}

    common = {
        "arch": ARCH, "arch-config": json.dumps(arch_config), "frontend": json.dumps(data.frontend),
        "lr": args.lr, "local-epochs": args.local_epochs, "batch-size": args.batch_size,
        "final-evaluate": False, "round-timeout": 900.0, "node-wait-timeout": 300.0, "seed": 0,
        "server-lr": args.server_lr,
        # a device failing an update (it happens on a saturated box) must not end the run
        "min-devices": args.devices - 1,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-async-kws-") as tmp:
        root = Path(tmp)
        init = str(fl_model.save_params(params, root / "init.npz"))
        base = {**common, "init-path": init}
        test_set = (data.x_test, data.y_test)
        delay = args.delay
        if delay is None:
            with LocalFederation(
                root / "calibrate", num_nodes=args.devices, local_shards=shards, test_set=test_set,
                env=env,
            ) as fed:  # fmt: skip
                cal = _run(fed, {**base, "strategy": "fedavg",
                                 "num-rounds": args.calibration_rounds}, "calibrate", 3600)  # fmt: skip
            # the first round pays cold caches; the last is the steady state
            fast = float(cal["rounds"][-1]["seconds"])
            delay = (args.slowdown - 1.0) * fast
            results["calibration"] = {
                "round_seconds": [r["seconds"] for r in cal["rounds"]], "fast_update_s": fast,
            }  # fmt: skip
            print(f"  a fast update takes {fast:.1f}s: slow devices add {delay:.1f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
        slow = {i: {Node.SIM_DELAY: delay} for i in slow_ids}
        with LocalFederation(
            root / "slow", num_nodes=args.devices, local_shards=shards, test_set=test_set,
            node_facts=slow, env=env,
        ) as fed:  # fmt: skip
            sync = _run(fed, {**base, "strategy": "fedavg", "num-rounds": args.sync_rounds},
                        "fedavg", 4 * 3600)  # fmt: skip
            buff = _run(
                fed,
                {**base, "strategy": "fedbuff", "num-rounds": aggregations,
                 "buffer": args.buffer, "max-staleness": args.max_staleness},
                "fedbuff", 4 * 3600,
            )  # fmt: skip
    return sync, buff, float(delay)


if __name__ == "__main__":
    raise SystemExit(main())
