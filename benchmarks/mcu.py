"""Microcontroller figures per architecture x board: predicted latency, arena, flash, host cost.

Why this benchmark: a user choosing a board for a model needs the three numbers a board can
refuse on (latency, SRAM arena, flash) before anything is flashed, and the cycle model that
predicts the latency has to be held against published measurements. For each net (the MLPerf
Tiny reference shapes -- KWS DS-CNN on 49x10 MFCC, ResNet-8 on 32x32x3 -- and narrower
widths) it builds the real int8 artifacts (ONNX export, static int8, the integer graph, the
full-integer ``.tflite``) from seeded random weights (latency and memory do not depend on the
values) and prints:

- per board (the MCU profiles of ``edgefleet.catalog``): the per-op cycle model's latency
  (``edgefleet.cycles``), and whether the arena fits the board's largest contiguous SRAM
  region and the model its flash;
- the arena two ways: ours (the coordinator's greedy plan over the float graph at one byte
  per activation) and TFLM's own (``RecordingMicroAllocator`` on the ``.tflite``, 64-bit host
  build), the flash the model itself takes (``.tflite`` bytes) and with the TFLM code its ops
  link (``edgefleet.mcu_flash``);
- for the MLPerf reference nets: predicted / published latency on the boards the MLPerf Tiny
  v1.0 closed results were measured on, and the stall factor those four results imply
  (``edgefleet.cycles.STALL_FACTOR`` is their geometric mean);
- host CPU per mcu-sim inference (process time, batch 1), what simulating a fleet costs.

Usage: ``python -m benchmarks.mcu [--runs 200] [--json benchmarks/results/mcu.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgefleet.agent.runtimes.tflite_io import tflite_ops
from edgefleet.catalog import ALIASES, CATALOG
from edgefleet.cycles import STALL_FACTOR, Layer, predict
from edgefleet.mcu_flash import flash_image
from edgefleet.perf import mcu_core
from edgefleet.profiles import DeviceProfile

#: MLPerf Tiny v1.0 closed, STMicroelectronics, X-CUBE-AI, int8; latency = 1 / median
#: throughput (mlcommons/tiny_results_v1.0; ../shared/notes/real-device-artifacts.md).
PUBLISHED_MS: dict[tuple[str, str], float] = {
    ("kws ds-cnn", "nucleo-l4r5zi"): 75.06,
    ("kws ds-cnn", "nucleo-h7a3zi-q"): 16.76,
    ("resnet-8", "nucleo-l4r5zi"): 226.9,
    ("resnet-8", "nucleo-h7a3zi-q"): 54.35,
}


@dataclass(frozen=True)
class Net:
    label: str
    arch: str
    width: float
    input_shape: tuple[int, ...]
    classes: int
    reference: str | None = None  # the key into PUBLISHED_MS, for the MLPerf nets at width 1


NETS = (
    Net("kws ds-cnn", "ds-cnn-kws", 1.0, (1, 49, 10), 12, "kws ds-cnn"),
    Net("kws ds-cnn x0.5", "ds-cnn-kws", 0.5, (1, 49, 10), 12),
    Net("resnet-8", "resnet-8", 1.0, (3, 32, 32), 10, "resnet-8"),
    Net("resnet-8 x0.5", "resnet-8", 0.5, (3, 32, 32), 10),
    Net("ds-cnn 8x8 x0.5", "ds-cnn", 0.5, (1, 8, 8), 10),
)


def boards() -> list[DeviceProfile]:
    return [p for name, p in CATALOG.items() if p.is_mcu and name not in ALIASES]


def build(net: Net, runs: int) -> dict[str, Any]:
    """Export one net to every artifact and measure what does not depend on the board."""
    from edgefleet.agent.runtimes.mcu_sim import McuSimRuntime
    from edgefleet.bundle import Bundle
    from edgefleet.modelops.mcu import export_mcu
    from edgefleet.modelops.measure import count_layers, count_macs
    from edgefleet.modelops.memplan import plan_memory
    from edgefleet.modelops.onnx_export import export_onnx
    from edgefleet.modelops.quantize import to_int8_static
    from edgefleet.modelops.tflite_export import TFLITE_FILE, TFLITE_LAYOUT, export_tflite
    from edgefleet.modelops.tflm_arena import tflm_arena
    from edgefleet.zoo import ArchitectureSpec, build_model

    torch.manual_seed(0)
    spec = ArchitectureSpec.zoo(
        net.arch, width=net.width, num_classes=net.classes, input_shape=net.input_shape
    )
    graph = export_onnx(build_model(spec), spec.input_shape)
    layers = count_layers(graph)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, *net.input_shape)).astype(np.float32)
    mcu = export_mcu(to_int8_static(graph, calib, "minmax"))
    tflite = export_tflite(mcu)
    tflm = tflm_arena(tflite)

    # host cost of the emulator: a real mcu-sim runtime on the same .tflite, batch 1
    manifest = {
        "precision": "int8",
        "input": {"shape": [1, *net.input_shape], "dtype": "float32"},
        "runtimes": {"mcu-sim": {"model": TFLITE_FILE, "layout": TFLITE_LAYOUT}},
    }
    bundle = Bundle("0" * 64, manifest, {TFLITE_FILE: tflite}, Path("."), "benchmark")
    sim = McuSimRuntime(CATALOG["nucleo-h7a3zi-q"])
    sim.load(bundle)
    x = calib[:1]
    for _ in range(5):
        sim.infer(x)
    start = time.process_time()
    for _ in range(runs):
        sim.infer(x)
    host_ms = (time.process_time() - start) / runs * 1e3
    return {
        "label": net.label,
        "arch": net.arch,
        "width": net.width,
        "input_shape": list(net.input_shape),
        "macs": count_macs(graph),
        "layers": layers,
        "arena_ours_bytes": plan_memory(graph, 1).arena_bytes,
        "arena_tflm_bytes": tflm.total,
        "flash_model_bytes": len(tflite),
        # + the TFLM code its ops link (edgefleet.mcu_flash: what the build records)
        "flash_bytes": flash_image(len(tflite), tflite_ops(tflite)).total,
        "host_ms_per_mcu_sim_inference": host_ms,
    }


def table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed mcu-sim inferences per net")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    nets = [build(net, args.runs) for net in NETS]
    mcus = boards()

    print("\narena, flash and host cost per net (int8; arena in bytes, TFLM on a 64-bit host)")
    table(
        ["net", "MACs", "arena ours", "arena TFLM", "flash model", "flash+code", "host ms/inf"],
        [
            [
                n["label"],
                f"{n['macs']:,}",
                f"{n['arena_ours_bytes']:,}",
                f"{n['arena_tflm_bytes']:,}",
                f"{n['flash_model_bytes']:,}",
                f"{n['flash_bytes']:,}",
                f"{n['host_ms_per_mcu_sim_inference']:.2f}",
            ]
            for n in nets
        ],
    )

    print("\npredicted latency, ms (x: arena over the largest contiguous SRAM region or flash)")
    rows, per_board = [], []
    for n in nets:
        row = [n["label"]]
        for p in mcus:
            ms = predict(mcu_core(p), n["layers"], p.cpu_mhz).ms
            fits = (
                n["arena_tflm_bytes"] <= p.largest_ram_region
                and n["flash_bytes"] <= p.storage_bytes
            )
            row.append(f"{ms:.2f}" + ("" if fits else " x"))
            per_board.append(
                {"net": n["label"], "board": p.name, "core": mcu_core(p).value,
                 "mhz": p.cpu_mhz, "predicted_ms": round(ms, 4), "fits": fits}
            )  # fmt: skip
        rows.append(row)
    table(["net", *[f"{p.name} ({p.cpu_mhz} MHz)" for p in mcus]], rows)

    print(f"\nMLPerf Tiny v1.0 reference nets: predicted / published (stall factor {STALL_FACTOR})")
    reference, implied = [], []
    for n, net in zip(nets, NETS, strict=True):
        if net.reference is None:
            continue
        for (ref, board), published in PUBLISHED_MS.items():
            if ref != net.reference:
                continue
            p = CATALOG[board]
            ms = predict(mcu_core(p), n["layers"], p.cpu_mhz).ms
            ideal = predict(mcu_core(p), n["layers"], p.cpu_mhz, stall=1.0).ms
            implied.append(published / ideal)
            reference.append(
                {"net": n["label"], "board": board, "predicted_ms": round(ms, 3),
                 "published_ms": published, "ratio": round(ms / published, 3),
                 "implied_stall": round(published / ideal, 3)}
            )  # fmt: skip
    table(
        ["net", "board", "predicted ms", "published ms", "ratio", "implied stall"],
        [
            [r["net"], r["board"], f"{r['predicted_ms']:.2f}", f"{r['published_ms']:.2f}",
             f"{r['ratio']:.3f}", f"{r['implied_stall']:.3f}"]
            for r in reference
        ],
    )  # fmt: skip
    geomean = math.exp(sum(math.log(s) for s in implied) / len(implied))
    print(f"geometric mean of the implied stall factors: {geomean:.3f} (model uses {STALL_FACTOR})")

    from edgefleet.cycles import frontend_layers
    from edgefleet.frontend import FrontendSpec

    cost = FrontendSpec.for_rate(16000).cost(16000)
    mfcc = frontend_layers({**cost.macs, **cost.ops})
    frontend_ms = {p.name: round(predict(mcu_core(p), mfcc, p.cpu_mhz).ms, 4) for p in mcus}
    print("\nMFCC frontend on the device (1 s at 16 kHz -> 49x10, q15 CMSIS-DSP), ms per window")
    table(
        ["frontend", *[p.name for p in mcus]],
        [["mfcc 49x10", *[f"{frontend_ms[p.name]:.2f}" for p in mcus]]],
    )

    print("\ncycles by op kind on nucleo-l4r5zi (Cortex-M4, % of the net's cycles)")
    kinds = ["conv", "depthwise", "pointwise", "fc", "pool", "add", "softmax"]
    m4 = CATALOG["nucleo-l4r5zi"]
    kind_rows = []
    for n in nets:
        pred = predict(mcu_core(m4), n["layers"], m4.cpu_mhz)
        kind_rows.append(
            [n["label"], *[f"{100 * pred.by_kind.get(k, 0.0) / pred.cycles:.0f}" for k in kinds]]
        )
    table(["net", *kinds], kind_rows)

    if args.json is not None:
        out = {
            "nets": [
                {k: v for k, v in n.items() if k != "layers"}
                | {"ops": [layer.__dict__ for layer in n["layers"] if isinstance(layer, Layer)]}
                for n in nets
            ],
            "predictions": per_board,
            "reference": reference,
            "mfcc_frontend_ms": frontend_ms,
            "stall_factor": STALL_FACTOR,
            "implied_stall_geomean": round(geomean, 4),
            "runs": args.runs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
