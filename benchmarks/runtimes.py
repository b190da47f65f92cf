"""Benchmark: the three agent runtimes on the same variants, side by side, one process each.

    python -m benchmarks.runtimes [--width 1.0] [--epochs 10] [--runs 300]

Trains a DS-CNN on digits and builds its fp32 and static-int8 variants into a temporary store.
Each (runtime, variant) pair is then measured in a *fresh subprocess* that imports only what
the agent would (never the coordinator, sklearn or the other runtimes), so peak RSS is that
runtime's own footprint rather than the benchmark's:

* batch-1 latency p50/p95 of ``Runtime.infer`` over the test images (host wall time; for
  mcu-sim also the cycle-model time on a Cortex-M7, which is what a device would report),
* peak RSS of the process (``VmHWM``), the RSS after loading, and ``memory_bytes()``,
* test accuracy, as a check that every row served the same model.

A last subprocess imports the agent (``edgefleet.agent.main``: gRPC, protos, session) and measures its
idle RSS without a runtime and with the onnxruntime runtime holding the int8 variant.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
#: (runtime, variant key, device profile it runs as)
CASES = (
    ("torch", "fp32", "rpi4"),
    ("onnxruntime", "fp32", "rpi4"),
    ("onnxruntime", "int8", "rpi4"),
    ("mcu-sim", "int8", "cortex-m7"),
)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    """This process's RSS high-water mark.

    ``VmHWM`` belongs to the address space and starts afresh at ``exec``; ``ru_maxrss`` would
    carry over the parent's peak (the training benchmark process) into every worker.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _load(bundle_dir: str, key_hex: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edgefleet.bundle import load_bundle

    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
    return load_bundle(bundle_dir, [key])


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one runtime on one bundle; runs in its own process."""
    rss_start = _rss()
    from edgefleet.agent.runtimes import open_runtime
    from edgefleet.catalog import get_profile

    bundle = _load(args.bundle, args.key)
    rt = open_runtime(args.runtime, get_profile(args.profile))
    rt.load(bundle)
    import numpy as np

    data = np.load(args.data)
    x, y = data["x"], data["y"]
    rss_loaded = _rss()
    accuracy = float((rt.infer(x).argmax(1) == y).mean())
    for i in range(20):
        rt.infer(x[i % len(x)][None])
    times, device = [], []
    for i in range(args.runs):
        sample = x[i % len(x)][None]
        t0 = time.perf_counter_ns()
        rt.infer(sample)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if rt.latency_source == "cycle-model" and rt.last_latency_ms is not None:
            device.append(rt.last_latency_ms)
    times.sort()
    return {
        "p50": statistics.median(times),
        "p95": times[int(0.95 * (len(times) - 1))],
        "device_ms": statistics.median(device) if device else None,
        "rss_start": rss_start,
        "rss_loaded": rss_loaded,
        "peak_rss": _peak_rss(),
        "memory_bytes": rt.memory_bytes(),
        "accuracy": accuracy,
    }


def idle_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The agent's idle RSS, before and after it opens onnxruntime with the int8 variant."""
    import edgefleet.agent.main  # noqa: F401  (the agent process's own imports: gRPC, protos, session)

    gc.collect()
    time.sleep(0.2)
    agent_only = _rss()
    from edgefleet.agent.runtimes import open_runtime
    from edgefleet.catalog import get_profile

    rt = open_runtime("onnxruntime", get_profile("rpi4"))
    rt.load(_load(args.bundle, args.key))
    gc.collect()
    time.sleep(0.5)
    return {"agent": agent_only, "agent_ort": _rss(), "memory_bytes": rt.memory_bytes()}


def _spawn(*argv: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.runtimes", *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        raise SystemExit(f"worker {argv[:2]} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--worker", choices=["run", "idle"])
    parser.add_argument("--runtime")
    parser.add_argument("--bundle")
    parser.add_argument("--key")
    parser.add_argument("--profile")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    if args.worker == "run":
        print(json.dumps(worker(args)))
        return 0
    if args.worker == "idle":
        print(json.dumps(idle_worker(args)))
        return 0

    import numpy as np

    from edgefleet.bundle import public_key_hex
    from edgefleet.modelops.build import BuildOptions, build_variants, register_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.modelops.measure import LatencyConfig, host_info
    from edgefleet.zoo import ArchitectureSpec

    with tempfile.TemporaryDirectory() as tmp:
        from edgefleet.variant_store import VariantStore

        store = VariantStore(Path(tmp) / "store")
        options = BuildOptions(latency=LatencyConfig(warmup=2, runs=5))
        spec = ArchitectureSpec.zoo("ds-cnn", width=args.width)
        print(f"training ds-cnn width {args.width} on digits ({args.epochs} epochs)...", flush=True)
        entry = register_model(store, "bench", spec, "digits", epochs=args.epochs, options=options)
        (int8,) = build_variants(store, "bench", ["int8-static"], options=options)
        ids = {"fp32": entry.base, "int8": int8}
        data = load_dataset("digits")
        data_file = Path(tmp) / "test.npz"
        np.savez(data_file, x=data.x_test, y=data.y_test)
        key = public_key_hex(store.public_key())
        common = ["--key", key, "--data", str(data_file), "--runs", str(args.runs)]
        rows = []
        for runtime, variant, profile in CASES:
            bundle = str(store.variants_dir / ids[variant])
            r = _spawn("--worker", "run", "--runtime", runtime, "--bundle", bundle,
                       "--profile", profile, *common)  # fmt: skip
            rows.append(
                [
                    runtime,
                    f"{variant} ({ids[variant][:8]})",
                    f"{r['p50']:.3f}",
                    f"{r['p95']:.3f}",
                    f"{r['device_ms']:.3f} ({profile})" if r["device_ms"] is not None else "-",
                    f"{r['rss_loaded'] / MIB:.1f}",
                    f"{r['peak_rss'] / MIB:.1f}",
                    f"{r['memory_bytes'] / 1024:,.1f}",
                    f"{100 * r['accuracy']:.2f}",
                ]
            )
        idle = _spawn("--worker", "idle", "--bundle", str(store.variants_dir / int8),
                      "--key", key)  # fmt: skip
    info = host_info()
    print(f"\nhost: {info}; batch 1, 1 thread, {args.runs} runs; one subprocess per row\n")
    _table(
        ["runtime", "variant", "host p50 ms", "host p95 ms", "device ms (cycle model)",
         "RSS loaded MiB", "peak RSS MiB", "memory_bytes() KiB", "acc %"],
        rows,
    )  # fmt: skip
    print(
        f"\nagent idle RSS: {idle['agent'] / MIB:.1f} MiB without a runtime, "
        f"{idle['agent_ort'] / MIB:.1f} MiB with onnxruntime serving the int8 variant "
        f"(+{(idle['agent_ort'] - idle['agent']) / MIB:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
