"""Flower's Simulation Engine (Ray) with our ServerApp/ClientApp: 1,000 virtual devices, the
numpy MLP on digits and MLPerf Tiny's DS-CNN on keyword spotting, side by side in one run.

Each configuration is one ``edgefleet train simulate`` run (:func:`edgefleet.devtools.fl_sim.
run_simulation`) in a fresh child process, so Ray starts and stops with it and peak RSS is
that run's alone: the heterogeneous default mix (phones, Pis, a Jetson, MCUs), 20 non-IID
groups (digits: label-skewed parts; kws: one training voice each, raw audio, the MFCC computed
on the device), 32 rows per device, on the CPUs given to Ray (2 here). The MLP runs HeteroFL
from scratch; DS-CNN runs FedAvg (its MLPerf Tiny config has one width) from the model
pre-trained on 6 other training voices, each device's round planned under its profile's memory
(the scope mix per round is recorded), selected with ``ram >= 2MiB``: no SRAM-only
microcontroller holds even DS-CNN's head-only plan in float32 torch (measured: 373 KB at batch
2 against at most 353 KB, a quarter of the largest one's 1.4 MB), while the ESP32-S3 modules
with 8 MB PSRAM (a tenth of the default mix) plan head-only at batch 16 under their 2.1 MB
budget: the light scope at fleet scale. Each configuration names its engine: ``superlink``
(``flwr run`` against ``flower-superlink --simulation``, the default) or ``python-api`` (the
deprecated ``run_simulation``).

Reported per configuration: s/round (the median of the rounds' own ``seconds``, from
configure to aggregate, so Ray's start-up and the one-off facts query are not in it), the
first round apart (ClientApp actors warm up in it), the set-up and total run seconds, peak
RSS of the whole process tree (driver + SuperLink + Ray's GCS, raylet, workers; sampled every
0.25 s with psutil; per process name at the peak) and its peak PSS (shared pages such as
Ray's object store split among the processes mapping them, not counted once each), torch
imports per ClientApp actor, the scope mix per round and the test accuracy after each round.

Run: ``python benchmarks/fl_sim.py [--configs MODEL:DEVICES:FRACTION[:ENGINE[:SELECT]],...]
[--rounds 4] [--data-dir DIR]``; results go to ``benchmarks/results/fl_sim.json``, where a
run replaces the row of the same configuration (model, devices, fraction, engine, select) and
keeps the others, so one configuration can be re-run alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
from pathlib import Path
from queue import Empty
from typing import Any


def _one(opts: Any, queue: Any) -> None:
    from edgefleet.devtools.fl_sim import run_simulation

    def progress(r: dict[str, Any]) -> None:
        print(
            f"  {opts.model} round {r['round']}: {len(r['participants'])} trained, "
            f"{r['failed']} failed, test acc {r['test_acc']:.3f}, {r['seconds']:.1f}s, "
            f"scopes {r.get('scopes')}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="fl-sim-") as tmp:
        doc = run_simulation(opts, Path(tmp), progress)
    queue.put(doc)


def run(
    model: str,
    devices: int,
    fraction: float,
    rounds: int,
    select: str,
    data_dir: Path | None,
    engine: str = "superlink",
    mix: str = "",
) -> dict[str, Any]:
    """One configuration in a child process; its summary row (``mix`` empty: the default)."""
    from edgefleet.devtools.fl_sim import DEFAULT_MIX, SimOptions

    opts = SimOptions(
        devices=devices, rounds=rounds, fraction=fraction, model=model, select=select,
        data_dir=data_dir, engine=engine, mix=mix or DEFAULT_MIX,
    )  # fmt: skip
    load_start = os.getloadavg()[0]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(opts, queue))
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
    actors = doc["simulation"].pop("actors")
    return {
        "model": model,
        "strategy": doc["settings"]["strategy"],
        "select": select,
        "devices": devices,
        "fraction": fraction,
        "state": doc["state"],
        "selected": selected,
        "trained_per_round": [len(r["participants"]) for r in rs],
        "failed_per_round": [r["failed"] for r in rs],
        "s_per_round_median": statistics.median(secs[1:] or secs),
        "s_round_1": secs[0] if secs else None,
        "test_acc": [doc["initial"]["test_acc"], *[r["test_acc"] for r in rs]],
        "scopes_per_round": [r.get("scopes") for r in rs],
        # device-rounds per scope over the run (a device sampled twice counts twice)
        "scopes_total": _scope_total(rs),
        "mix": opts.mix,
        "errors": sorted({e for r in rs for e in r.get("errors", [])})[:3],
        # Ray keeps its ClientApp actors for the run: torch is imported once in each
        "actor_processes": len(actors),
        "actor_messages": [a["messages"] for a in actors],
        "actor_torch_imports": [a["torch_imports"] for a in actors],
        "load_average_1m_start": load_start,
        "load_average_1m_end": os.getloadavg()[0],
        **doc["simulation"],
    }


def _scope_total(rounds: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in rounds:
        for scope, n in (r.get("scopes") or {}).items():
            total[scope] = total.get(scope, 0) + int(n)
    return dict(sorted(total.items()))


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What names a configuration in the results file."""
    return (row["model"], row["devices"], row["fraction"], row["engine"], row["select"])


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows with each of ``new`` in place of the row of its configuration (or
    appended): re-running one configuration keeps the others' results."""
    rows = list(old)
    for row in new:
        at = [i for i, r in enumerate(rows) if _key(r) == _key(row)]
        if at:
            rows[at[0]] = row
        else:
            rows.append(row)
    return rows


def _previous(path: Path, rounds: int) -> list[dict[str, Any]]:
    """The rows already in ``path`` when they ran the same number of rounds (else none)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(doc.get("runs", [])) if doc.get("rounds") == rounds else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--configs",
        default="mlp:1000:0.1:python-api,mlp:1000:0.1,ds-cnn-kws:1000:0.1::ram >= 2MiB",
        help="MODEL:DEVICES:FRACTION[:ENGINE[:SELECT]],... (ENGINE superlink or python-api)",
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--data-dir", type=Path, default=None, help="where the kws set is cached")
    ap.add_argument("--mix", default="", help="the profile mix (default: the simulation's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fl_sim.json")
    args = ap.parse_args()
    previous = _previous(args.out, args.rounds)
    rows: list[dict[str, Any]] = []
    for spec in args.configs.split(","):
        model, n, frac, *rest = spec.split(":")
        engine = rest[0] if rest and rest[0] else "superlink"
        select = ":".join(rest[1:])
        row = run(
            model, int(n), float(frac or 0.1), args.rounds, select, args.data_dir, engine,
            mix=args.mix,
        )  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        runs = merge(previous, rows)
        args.out.write_text(json.dumps({"rounds": args.rounds, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
