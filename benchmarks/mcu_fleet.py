"""Benchmark: how many simulated KWS microcontrollers this host sustains at 1 inference/s each.

    python -m benchmarks.mcu_fleet [--devices 100] [--seconds 20] [--workers 2]

Each simulated MCU is its own mcu-sim runtime holding the MLPerf Tiny KWS DS-CNN (int8
``model.tflite``, the TFLM-exact emulator) for a NUCLEO-L4R5ZI. ``--workers`` processes (one per
core) each drive their share of the devices: every second, one inference per device on a fresh
49x10 feature input. Reported: inferences done vs due, the share of each second the workers were
busy, and the p95 lateness of a second's batch. The MFCC frontend is not included (it runs in
numpy once per clip: ``benchmarks/frontend.py`` measures it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _bundle() -> Any:
    import torch

    from edgefleet.bundle import Bundle
    from edgefleet.mcu_format import TFLITE_FILE, TFLITE_LAYOUT
    from edgefleet.modelops.mcu import export_mcu
    from edgefleet.modelops.onnx_export import export_onnx
    from edgefleet.modelops.quantize import to_int8_static
    from edgefleet.modelops.tflite_export import export_tflite
    from edgefleet.zoo import ArchitectureSpec, build_model

    torch.manual_seed(0)
    spec = ArchitectureSpec.zoo("ds-cnn-kws", num_classes=12, input_shape=(1, 49, 10))
    graph = export_onnx(build_model(spec), spec.input_shape)
    calib = np.random.default_rng(0).standard_normal((32, 1, 49, 10)).astype(np.float32)
    tflite = export_tflite(export_mcu(to_int8_static(graph, calib, "minmax")))
    manifest = {
        "precision": "int8",
        "input": {"shape": [1, 1, 49, 10], "dtype": "float32"},
        "runtimes": {"mcu-sim": {"model": TFLITE_FILE, "layout": TFLITE_LAYOUT}},
    }
    return Bundle("0" * 64, manifest, {TFLITE_FILE: tflite}, Path("."), "benchmark")


def _worker(devices: int, seconds: int, bundle: Any, out: Any) -> None:
    from edgefleet.agent.runtimes.mcu_sim import McuSimRuntime
    from edgefleet.catalog import get_profile

    profile = get_profile("nucleo-l4r5zi")
    fleet = []
    for _ in range(devices):
        rt = McuSimRuntime(profile)
        rt.load(bundle)
        fleet.append(rt)
    rng = np.random.default_rng(devices)
    done, busy, late = 0, 0.0, []
    start = time.monotonic()
    for second in range(seconds):
        tick = start + second
        t0 = time.monotonic()
        for rt in fleet:
            rt.infer(rng.standard_normal((1, 1, 49, 10)).astype(np.float32))
            done += 1
        t1 = time.monotonic()
        busy += t1 - t0
        late.append(max(0.0, t1 - (tick + 1.0)))
        time.sleep(max(0.0, tick + 1.0 - time.monotonic()))
    out.put({"devices": devices, "done": done, "busy_s": busy, "late": late})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.seconds < 1 or args.workers < 1:
        print("error: --devices, --seconds and --workers must be >= 1", file=sys.stderr)
        return 2
    bundle = _bundle()
    ctx = mp.get_context("fork")
    out: Any = ctx.Queue()
    shares = [
        args.devices // args.workers + (i < args.devices % args.workers)
        for i in range(args.workers)
    ]
    procs = [ctx.Process(target=_worker, args=(n, args.seconds, bundle, out)) for n in shares if n]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    done = sum(r["done"] for r in results)
    due = args.devices * args.seconds
    busy = max(r["busy_s"] for r in results) / args.seconds
    late = sorted(x for r in results for x in r["late"])
    p95 = late[int(0.95 * (len(late) - 1))] if late else 0.0
    summary = {
        "devices": args.devices,
        "seconds": args.seconds,
        "workers": len(procs),
        "inferences_done": done,
        "inferences_due": due,
        "busiest_worker_busy_fraction": round(busy, 3),
        "p95_lateness_s": round(p95, 4),
        "sustained": done == due and p95 == 0.0,
    }
    print(
        f"{args.devices} simulated KWS MCUs (mcu-sim, NUCLEO-L4R5ZI) at 1 inference/s on "
        f"{len(procs)} worker process(es) for {args.seconds}s: {done}/{due} inferences, busiest "
        f"worker busy {100 * busy:.0f}% of each second, p95 lateness {1000 * p95:.0f} ms -> "
        f"{'sustained' if summary['sustained'] else 'NOT sustained'}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if summary["sustained"] else 1


if __name__ == "__main__":
    sys.exit(main())
