"""Benchmark: federated fine-tuning on KWS with one voice per device, held-out accuracy per device.

    python -m benchmarks.fl_kws [--data-dir .edgefleet/demo] [--model kws] [--devices 12]
        [--rounds 3] [--local-epochs 5] [--lr 0.003] [--json out.json]

Takes a registered KWS model (``make demo`` leaves one in ``.edgefleet/demo``), starts a real
Flower SuperLink and one SuperNode per device on loopback, and gives each device the raw audio of
ONE voice the model never trained on (the test voices): each device computes the MFCC itself and
fine-tunes on 60 % of its voice's clips; the other 40 % (per class) are its held-out clips.
Before = the deployed model on the device's held-out clips (round 1), after = the final
federated model on the same clips. With 72 clips per voice (24 held out) one clip is 4.2 points,
so per-device differences are noisy; the mean over devices is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path(".edgefleet/demo"))
    parser.add_argument("--model", default="kws")
    parser.add_argument("--devices", type=int, default=12, help="one test voice each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from safetensors.numpy import load_file

    from edgefleet.devtools.fl_local import LocalFederation, wait_progress
    from edgefleet.fl.partition import group_shards
    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.data import load_dataset

    data_dir = args.data_dir.resolve()
    models_path = data_dir / "models.json"
    if not models_path.is_file():
        print(f"error: no models in {data_dir} (run `make demo` first)", file=sys.stderr)
        return 2
    entry = json.loads(models_path.read_text())["models"].get(args.model)
    if entry is None:
        print(f"error: no model {args.model!r} in {data_dir}", file=sys.stderr)
        return 2
    base = data_dir / "variants" / entry["base"]
    arch = json.loads((base / "manifest.json").read_text())["architecture"]
    data = load_dataset(entry["dataset"], data_dir)
    src = data.source
    if src is None or src.groups is None or data.frontend is None:
        print(f"error: {entry['dataset']} is not an audio dataset with voices", file=sys.stderr)
        return 2
    voices = src.groups[src.test]
    shards = group_shards(src.x[src.test], src.y[src.test], voices, eval_fraction=0.4)
    names = sorted(shards)[: args.devices]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-kws-") as tmp:
        root = Path(tmp)
        weights = load_file(str(base / "weights.safetensors"))
        init = fl_model.save_params(
            {k: np.asarray(v, np.float32) for k, v in weights.items()}, root / "init.npz"
        )
        fed = LocalFederation(
            root / "fed",
            num_nodes=len(names),
            profiles=("rpi4",),
            local_shards=[shards[v] for v in names],
            test_set=(data.x_test, data.y_test),
        )
        with fed:
            out = fed.run(
                {
                    "num-rounds": args.rounds,
                    "min-devices": len(names),
                    "strategy": "fedavg",
                    "arch": arch["name"],
                    "arch-config": json.dumps(arch["config"]),
                    "frontend": json.dumps(data.frontend),
                    "init-path": str(init),
                    "local-epochs": args.local_epochs,
                    "lr": args.lr,
                    "batch-size": 16,
                    "node-wait-timeout": 120.0,
                    "round-timeout": 600.0,
                }
            )
            doc = wait_progress(out, timeout=1800)
    if doc["state"] != "succeeded":
        print(f"error: the run {doc['state']}: {doc.get('reason')}", file=sys.stderr)
        return 1
    before = doc["rounds"][0]["device_eval_acc"]
    after = doc["final"]["device_eval_acc"]
    devices = sorted(before)
    print(
        f"# federated fine-tuning on {entry['dataset']}: {len(devices)} devices, one held-out "
        f"voice each, {args.rounds} rounds FedAvg, {args.local_epochs} local epochs, "
        f"lr {args.lr}; {time.perf_counter() - started:.0f}s"
    )
    print(f"{'device':<10} {'voice':<28} {'before %':>9} {'after %':>8}")
    rows = []
    for i, d in enumerate(devices):
        voice = names[int(d.rsplit("-", 1)[-1])] if d.startswith("sim-") else str(i)
        rows.append({"device": d, "voice": voice, "before": before[d], "after": after.get(d)})
        a = after.get(d)
        print(
            f"{d:<10} {voice:<28} {100 * before[d]:>9.1f} "
            f"{'-' if a is None else f'{100 * a:.1f}':>8}"
        )
    mean_b = float(np.mean([r["before"] for r in rows]))
    mean_a = float(np.mean([r["after"] for r in rows if r["after"] is not None]))
    print(f"{'mean':<39} {100 * mean_b:>9.1f} {100 * mean_a:>8.1f}")
    print(
        f"server test split (all test voices, incl. the clips devices trained on): "
        f"{100 * doc['initial']['test_acc']:.1f}% -> {100 * doc['final']['test_acc']:.1f}%"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "mean_before": mean_b, "mean_after": mean_a}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
