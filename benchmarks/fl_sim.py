"""Flower's Simulation Engine (Ray) with our ServerApp/ClientApp: 100 and 1,000 virtual devices.

Each configuration is one ``edgefleet train simulate`` run (:func:`edgefleet.devtools.fl_sim.
run_simulation`) in a fresh child process, so Ray starts and stops with it and peak RSS is
that run's alone: the heterogeneous default mix (phones, Pis, a Jetson, MCUs), 20 non-IID
groups, 32 rows per device, HeteroFL, on the CPUs given to Ray (2 here).

Reported per configuration: s/round (the median of the rounds' own ``seconds``, from
configure to aggregate, so Ray's start-up and the one-off facts query are not in it), the
first round apart (ClientApp actors warm up in it), the set-up and total run seconds, peak
RSS of the whole process tree (driver + Ray's GCS, raylet, workers; sampled every 0.25 s
with psutil) and the test accuracy after each round.

Run: ``python benchmarks/fl_sim.py [--configs 100:0.1,1000:0.1,1000:1.0] [--rounds 4]``;
results go to ``benchmarks/results/fl_sim.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
from pathlib import Path
from queue import Empty
from typing import Any


def _one(devices: int, fraction: float, rounds: int, queue: Any) -> None:
    from edgefleet.devtools.fl_sim import SimOptions, run_simulation

    with tempfile.TemporaryDirectory(prefix="fl-sim-") as tmp:
        opts = SimOptions(devices=devices, rounds=rounds, fraction=fraction, local_epochs=5, lr=0.1)
        doc = run_simulation(opts, Path(tmp))
    queue.put(doc)


def run(devices: int, fraction: float, rounds: int) -> dict[str, Any]:
    """One configuration in a child process; its summary row."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(devices, fraction, rounds, queue))
    proc.start()
    doc = None
    while doc is None:
        try:
            doc = queue.get(timeout=5.0)
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{devices} devices: the run died ({proc.exitcode})") from None
    proc.join()
    rs = doc["rounds"]
    secs = [r["seconds"] for r in rs]
    selected = sum(1 for d in doc["devices"].values() if d["selected"])
    return {
        "devices": devices,
        "fraction": fraction,
        "state": doc["state"],
        "selected": selected,
        "trained_per_round": [len(r["participants"]) for r in rs],
        "failed_per_round": [r["failed"] for r in rs],
        "s_per_round_median": statistics.median(secs[1:] or secs),
        "s_round_1": secs[0] if secs else None,
        "test_acc": [doc["initial"]["test_acc"], *[r["test_acc"] for r in rs]],
        **doc["simulation"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="100:0.1,1000:0.1,1000:1.0", help="DEVICES:FRACTION,...")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fl_sim.json")
    args = ap.parse_args()
    rows = []
    for spec in args.configs.split(","):
        n, _, frac = spec.partition(":")
        row = run(int(n), float(frac or 0.1), args.rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rounds": args.rounds, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
