"""Selection over a model's variants in the shared variant store: manifest keys vs archives.

Selection (and explain, and rollout creation) needs each variant's manifest: a ~1.5 KB JSON with
the measured numbers. Before, a replica read it by fetching the variant's whole bundle archive
(50 KB to 0.5 MB for the DS-CNN recipes of ``benchmarks/compression.py``) from Redis and
unpacking it into its data dir, per variant, on every replica that had not seen that variant
yet (a new replica, a restarted pod with an empty data dir, every variant a worker just built).
Now each variant's manifest has its own key, written in the same script as the variant's record,
and a model's manifests are read with one MGET (``SharedStore.manifests``).

This script starts one private ``redis-server`` (127.0.0.1, no persistence), publishes
``--variants`` variants of one model whose bundle sizes cycle through the compression table's,
then times ``store.model`` + reading every variant's facts + ``select`` for an ``rpi4``, and
counts what Redis sent (``INFO``: ``total_net_output_bytes`` and commands processed, less what
``INFO`` itself costs), for:

- **before, cold**: the old read path (``bundle_dir_of`` + the manifest file) on an empty data
  dir: every archive is fetched and unpacked;
- **before, warm**: the same data dir again: the bundles are local now, only the index is read;
- **after, cold / warm**: ``model_variants`` (the manifest keys, one MGET) on an empty data dir,
  and again with the same store (the manifests, immutable, are remembered in memory: only the
  model's index is read; the data dir stays empty);
- **after, first read of variants published before manifest keys**: their keys deleted: each
  falls back to its archive once and writes its key (the migration cost, paid once per store).

    python -m benchmarks.shared_store                  # 50 variants, 5 repeats; table + JSON
    python -m benchmarks.shared_store --variants 200 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis

from edgefleet.bundle import MANIFEST_NAME
from edgefleet.catalog import get_profile
from edgefleet.coordinator.embedded_redis import redis_server_binary
from edgefleet.coordinator.latency import DeviceLatencyModel
from edgefleet.coordinator.shared_store import SharedStore, bundle_dir_of
from edgefleet.coordinator.variant_selection import VariantFacts, select
from edgefleet.coordinator.variants import facts_from_manifest, model_variants
from edgefleet.variant_store import ModelEntry
from edgefleet.version import __version__

RESULTS = Path(__file__).resolve().parent / "results" / "shared_store.json"
#: bundle bytes of the DS-CNN recipes in the README's compression table (fp32 .. pruned int8)
BUNDLE_BYTES = (538_279, 273_206, 153_810, 164_479, 203_449, 150_169, 48_264, 502_153, 74_415)
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
MODEL = "dscnn"


@dataclass
class Row:
    case: str
    variants: int
    ms_median: float
    ms_min: float
    redis_bytes_out: int
    redis_commands: int
    repeats: int


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private ``redis-server`` on 127.0.0.1 (nothing else talks to it: INFO deltas are ours)."""
    port = _port()
    proc = subprocess.Popen(
        [
            *(redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"),
            *("--dir", str(workdir), "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
                if client.ping():
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server on {port} did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def manifest_body(i: int) -> dict[str, Any]:
    """A manifest body shaped like a real build's (~1.5 KB signed: architecture, metrics)."""
    precision = PRECISIONS[i % len(PRECISIONS)]
    accuracy = 0.95 + (i % 7) / 200
    latency = 0.02 + (i % 11) / 100
    return {
        "model": MODEL,
        "recipe": {"name": f"recipe-{i}", "params": {"width": 1.0 - (i % 4) / 8}},
        "recipe_label": f"recipe-{i}",
        "precision": precision,
        "architecture": {"name": "ds-cnn", "width": 1.0, "classes": 12, "input": [1, 49, 10]},
        "input": {"shape": [1, 1, 49, 10], "dtype": "float32"},
        "output": {"shape": [1, 12], "dtype": "float32"},
        "parent": "",
        "seed": i,
        "edgefleet_version": __version__,
        "metrics": {
            "accuracy": accuracy,
            "parent_accuracy": 0.97,
            "bytes": BUNDLE_BYTES[i % len(BUNDLE_BYTES)],
            "weight_bytes": BUNDLE_BYTES[i % len(BUNDLE_BYTES)] - 8000,
            "peak_memory_bytes": 12_288 * (1 + i % 4),
            "peak_memory_lower_bound_bytes": 12_288,
            "macs": 2_509_312 - 10_000 * i,
            "params": 134_026,
            "sparsity": 0.0,
            "test_samples": 360,
            "latency_ms": latency,
            "latency_ms_p95": latency * 1.3,
            "latency_runs": 500,
            "host": {"cpu": platform.processor() or platform.machine(), "threads": 1},
            "runtimes": {"onnxruntime": {"latency_ms_p50": latency, "accuracy": accuracy}},
        },
        "runtimes": {"onnxruntime": {"file": "model.onnx"}},
    }


def publish(store: SharedStore, n: int) -> list[str]:
    """``n`` signed variants of one model, bundle sizes cycling through ``BUNDLE_BYTES``."""
    ids = []
    for i in range(n):
        payload = os.urandom(BUNDLE_BYTES[i % len(BUNDLE_BYTES)] - 2000)  # incompressible
        ids.append(store.put(manifest_body(i), {"model.onnx": payload}))
    store.add_model(ModelEntry(MODEL, {"name": "ds-cnn"}, "kws", ids[0], ids))
    return ids


def old_model_variants(store: SharedStore, model: str) -> list[VariantFacts]:
    """Selection's read before manifest keys: each manifest from the fetched bundle dir."""
    entry = store.model(model)
    ids = list(dict.fromkeys(v for v in [entry.base, *entry.variants] if v))
    return [
        facts_from_manifest(v, json.loads((bundle_dir_of(store, v) / MANIFEST_NAME).read_text()))
        for v in ids
    ]


class RedisMeter:
    """Bytes Redis sent and commands it ran between two ``INFO`` calls, less INFO's own."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        a, b = self._sample(), self._sample()
        self._overhead = (b[0] - a[0], b[1] - a[1])

    def _sample(self) -> tuple[int, int]:
        info = self._client.info("stats")
        return int(info["total_net_output_bytes"]), int(info["total_commands_processed"])

    def measure(self, fn: Callable[[], object]) -> tuple[float, int, int]:
        before = self._sample()
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        after = self._sample()
        return (
            ms,
            after[0] - before[0] - self._overhead[0],
            after[1] - before[1] - self._overhead[1],
        )


def run(n: int, repeats: int) -> list[Row]:
    profile = get_profile("rpi4")
    predictor = DeviceLatencyModel(profile, 1e9, 1e9)
    with tempfile.TemporaryDirectory(prefix="bench-shared-store-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "redis").mkdir()
        with redis_server(tmp / "redis") as url:
            key = tmp / "key.pem"
            publisher = SharedStore(tmp / "publisher", redis.Redis.from_url(url))
            publisher.key_path = key
            ids = publish(publisher, n)
            meter = RedisMeter(url)
            raw = redis.Redis.from_url(url)
            samples: dict[str, list[tuple[float, int, int]]] = {}

            def fresh(name: str) -> SharedStore:
                root = tmp / name
                shutil.rmtree(root, ignore_errors=True)
                store = SharedStore(root, redis.Redis.from_url(url))
                store.key_path = key
                store.materialize_datasets = False
                return store

            def choose(store: SharedStore, read: Callable[[SharedStore, str], Any]) -> None:
                if select(profile, read(store, MODEL), predictor).winner is None:
                    raise RuntimeError("nothing fits an rpi4: the benchmark's variants are wrong")

            for _ in range(repeats):
                old = fresh("old")
                for case in ("before, cold", "before, warm"):
                    sample = meter.measure(partial(choose, old, old_model_variants))
                    samples.setdefault(case, []).append(sample)
                new = fresh("new")
                for case in ("after, cold", "after, warm"):
                    sample = meter.measure(partial(choose, new, model_variants))
                    samples.setdefault(case, []).append(sample)
                raw.delete(*[f"{{edgefleet}}:store:manifest:{v}" for v in ids])
                legacy = fresh("legacy")
                sample = meter.measure(partial(choose, legacy, model_variants))
                samples.setdefault("after, first read of pre-manifest-key variants", []).append(
                    sample
                )
    return [
        Row(
            case=case,
            variants=n,
            ms_median=round(statistics.median(s[0] for s in got), 2),
            ms_min=round(min(s[0] for s in got), 2),
            redis_bytes_out=int(statistics.median(s[1] for s in got)),
            redis_commands=int(statistics.median(s[2] for s in got)),
            repeats=len(got),
        )
        for case, got in samples.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variants", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.variants < 1 or args.repeats < 1:
        parser.error("--variants and --repeats must be at least 1")
    rows = run(args.variants, args.repeats)
    print(f"{'case':<48} {'ms median':>10} {'ms min':>9} {'bytes from Redis':>17} {'cmds':>6}")
    for r in rows:
        print(
            f"{r.case:<48} {r.ms_median:>10.2f} {r.ms_min:>9.2f} "
            f"{r.redis_bytes_out:>17,} {r.redis_commands:>6}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "bundle_bytes_cycle": list(BUNDLE_BYTES),
        "rows": [asdict(r) for r in rows],
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
