"""Benchmark: federated LoRA fine-tuning of the byte-level LM on devices' own text, on Flower.

    python -m benchmarks.lm_lora [--devices 4] [--rounds 5] [--rank 8] [--targets q,v]
                                 [--steps 30] [--data-dir DIR]

The base is :mod:`benchmarks.lm`'s ``byte-lm`` (2 layers, width 128; trained on the *top-level*
modules of Python's standard library, cached per data dir). Each device holds whole packages of
the standard library the base never saw (asyncio, email/http/urllib, tkinter, unittest: non-IID
by source, :mod:`edgefleet.datasets.text_shards`) with its own held-out modules. A real Flower
federation on loopback -- a SuperLink, one SuperNode per device, our ServerApp and ClientApp
(``edgefleet.devtools.fl_local``) -- runs ``--rounds`` FedAvg rounds in which each device trains
rank-r LoRA adapters on q and v with the base frozen and sends back the adapters only.

Reported in one run: each device's held-out perplexity (and the mean) after every round,
starting from the base; the bytes each round moved (measured by the ServerApp: the serialized
arrays of every message) against what the same round would move with the full model; then the
averaged adapters merged into the base and exported through the LM export path (ONNX fp32 and
weight-only int8): the merged variant's perplexity in onnxruntime on each device's held-out
text, beside the base's. Saves ``benchmarks/results/lm_lora.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "lm_lora.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_lora", description=__doc__)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", default="q,v")
    parser.add_argument("--steps", type=int, default=30, help="local adapter steps per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--device-bytes", type=int, default=150_000, help="text per device")
    parser.add_argument("--eval-bytes", type=int, default=16384)
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--data-dir", type=Path, default=Path(".edgefleet/bench-lm"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    import torch

    torch.set_num_threads(1)

    from edgefleet.datasets.text import load_text
    from edgefleet.datasets.text_shards import save_text_shard, stdlib_package_shards
    from edgefleet.devtools.fl_local import LocalFederation, wait_progress
    from edgefleet.flower import model as fl_model
    from edgefleet.lora import LoRAConfig
    from edgefleet.modelops.lm_lora import (
        export_merged,
        merge_adapters,
        prepare_lora_run,
        wire_bytes,
    )
    from edgefleet.modelops.lm_measure import ort_perplexity, session
    from edgefleet.modelops.lm_train import LMTrainConfig, train_lm

    corpus = load_text("python-stdlib", args.data_dir)
    config = LMTrainConfig(dim=128, layers=2, heads=2, context=128, steps=args.base_steps)
    base = train_lm(corpus, config, args.data_dir, quiet=True)
    model = base.model
    print(f"base byte-lm {config.arch()}: {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, held-out perplexity on the top-level stdlib {base.metrics['perplexity']:.3f}"
          f"{' (cached)' if base.cached else ''}")  # fmt: skip
    lora = LoRAConfig(args.rank, args.alpha, tuple(args.targets.split(",")))
    shards = stdlib_package_shards(args.devices, max_bytes=args.device_bytes)
    work = args.data_dir / "lora-run"
    paths = [save_text_shard(s, work / "data" / f"device-{i}.npz") for i, s in enumerate(shards)]
    for i, s in enumerate(shards):
        print(f"  sim-{i:03d}: {s.name}: {s.train.size:,} train / {s.eval.size:,} held-out bytes")
    run = prepare_lora_run(model, lora, work / "run", steps=args.steps, eval_bytes=args.eval_bytes)
    sizes = wire_bytes(run, model)
    print(f"adapters: {run.adapter_params:,} parameters ({sizes['adapters']:,} B on the wire) vs "
          f"the model's {run.model_params:,} ({sizes['full_model']:,} B): "
          f"{sizes['adapters'] / sizes['full_model']:.2%}")  # fmt: skip
    t0 = time.perf_counter()
    with LocalFederation(work / "fed", num_nodes=args.devices, data_paths=paths) as fed:
        out = fed.run({
            **run.run_config(), "num-rounds": args.rounds, "min-devices": args.devices,
            "lr": args.lr, "batch-size": args.batch, "round-timeout": 600.0,
                "node-wait-timeout": 300.0,
        }, name=f"run-{int(time.time())}")  # fmt: skip
        doc = wait_progress(out, timeout=600 + 300 * args.rounds)
    seconds = time.perf_counter() - t0
    if doc["state"] != "succeeded":
        parser.exit(1, f"error: the federated run {doc['state']}: {doc.get('reason')}\n")

    # round r's reply scores the model of round r-1 (round 1: the base); final: after the last
    curves: dict[str, list[float]] = {}
    for r in doc["rounds"]:
        for device, loss in r["device_eval_loss"].items():
            curves.setdefault(device, []).append(math.exp(loss))
    for device, loss in doc["final"]["device_eval_loss"].items():
        curves[device].append(math.exp(loss))
    devices = sorted(curves)
    mean = [sum(curves[d][i] for d in devices) / len(devices) for i in range(args.rounds + 1)]
    print(f"\nheld-out perplexity per device after each round ({seconds:.0f} s in all)")
    print(f"{'round':>5} " + " ".join(f"{d:>9}" for d in devices) + f" {'mean':>8}"
          f" {'bytes up':>10} {'full up':>10}")  # fmt: skip
    rows = []
    for i in range(args.rounds + 1):
        up = doc["rounds"][i - 1]["bytes_up"] if i else 0
        full = sizes["full_model"] * len(devices) if i else 0
        rows.append({"round": i, "perplexity": {d: curves[d][i] for d in devices},
                     "mean_perplexity": mean[i], "bytes_up": up,
                     "bytes_down": doc["rounds"][i - 1]["bytes_down"] if i else 0,
                     "full_model_bytes_up": full,
                     "seconds": doc["rounds"][i - 1]["seconds"] if i else 0.0})  # fmt: skip
        print(f"{i:5d} " + " ".join(f"{curves[d][i]:9.3f}" for d in devices)
              + f" {mean[i]:8.3f} {up:10,} {full:10,}")  # fmt: skip

    final = fl_model.load_params(out / "final.npz")
    merged = merge_adapters(model, lora, final)
    exported = export_merged(merged, work / "merged")
    base_graphs = export_merged(model, work / "base", ("fp32",))
    print("\nmerged into the base, exported as LM variants (onnxruntime, held-out perplexity)")
    variants: list[dict[str, Any]] = []
    base_sess = session(base_graphs[0].path)
    for v in exported:
        sess = session(v.path)
        per = {}
        for d, shard in zip(devices, shards, strict=True):
            per[d] = {
                "base_fp32": ort_perplexity(base_sess, shard.eval, 128, args.eval_bytes),
                "merged": ort_perplexity(sess, shard.eval, 128, args.eval_bytes),
            }
        variants.append({"recipe": v.recipe, "bytes": v.bytes, "perplexity": per})
        print(f"  {v.recipe:5} {v.bytes:>10,} B  "
              + "  ".join(f"{d}: {p['base_fp32']:.3f} -> {p['merged']:.3f}" for d, p in per.items()))  # fmt: skip

    # the merged model is an ordinary LM: signed into a variant store like any byte-lm
    from edgefleet.modelops.lm_bundle import register_lm_model
    from edgefleet.variant_store import VariantStore

    entry = register_lm_model(
        VariantStore(work / "store"), "byte-lm-lora", merged, exported, dataset="stdlib-packages"
    )
    print(f"registered byte-lm-lora: base {entry.base[:12]}, variants "
          f"{[v[:12] for v in entry.variants]}")  # fmt: skip
    result = {
        "base": {"arch": config.arch(), "train": base.metrics, "corpus": corpus.describe()},
        "devices": {
            f"sim-{i:03d}": {
                "sources": list(s.sources),
                "train_bytes": int(s.train.size),
                "eval_bytes": int(s.eval.size),
            }
            for i, s in enumerate(shards)
        },
        "lora": lora.to_json(),
        "config": {
            "rounds": args.rounds,
            "local_steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "strategy": "fedavg",
            "eval_bytes": args.eval_bytes,
            "threads": 1,
        },
        "adapter_params": run.adapter_params,
        "model_params": run.model_params,
        "wire_bytes_per_device": sizes,
        "rounds": rows,
        "seconds": seconds,
        "merged_variants": variants,
        "registered": {"model": entry.name, "base": entry.base, "variants": entry.variants},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
