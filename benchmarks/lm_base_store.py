"""Benchmark: memory a device allocates to store a LoRA base it received by message.

    python -m benchmarks.lm_base_store [--mib 256] [--json benchmarks/results/lm_base_store.json]

A federated LoRA run sends a device that lacks the run's base the base's tensors in one
message (``edgefleet.flower.lora_run.BaseSender``); the device verifies them against the run's
``base_sha256`` and caches them as ``<sha256>.safetensors``
(:func:`edgefleet.agent.fl.lm_base_cache.store_base`). Side by side, in one run, on the same
message:

* ``decode+serialize`` (the previous code): every ``Array.numpy()`` decoded (a copy of the base),
  ``safetensors.numpy.save`` into one ``bytes`` (a second copy), hashed, written;
* ``views+save_file`` (now): each tensor a read-only view into the message's own bytes,
  ``safetensors.numpy.save_file`` writes from those pointers into a temporary file, which is
  hashed and renamed into place.

Reported: the peak of Python-traced allocations while storing (``tracemalloc``: numpy and
``bytes`` buffers are traced; the message's own bytes, allocated before, are not counted) and
the wall time. Synthetic float32 tensors of 1024 x 1024 (4 MiB each) stand in for a base: what
is measured depends on the bytes, not on what they hold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _old_store(record: Any, digest: str, cache: Path) -> None:
    """What store_base did before: decode, serialize to bytes, hash, write."""
    from safetensors.numpy import save

    from edgefleet.fsutil import atomic_write

    data = save({k: v.numpy() for k, v in record.items()})
    if hashlib.sha256(data).hexdigest() != digest:
        raise SystemExit("the old path's bytes do not match the base's digest")
    atomic_write(cache / f"{digest}.safetensors", data)


def _measure(label: str, store: Any) -> dict[str, Any]:
    tracemalloc.start()
    start = time.perf_counter()
    store()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"path": label, "peak_allocated_bytes": peak, "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256, help="size of the base (MiB, >= 4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.mib < 4:
        parser.error("--mib must be at least 4")

    import numpy as np
    from flwr.app import Array, ArrayRecord
    from safetensors.numpy import save

    from edgefleet.agent.fl.lm_base_cache import store_base
    from edgefleet.fl.contract import Node

    rng = np.random.default_rng(0)
    n = args.mib // 4
    tensors = {
        f"blocks.{i}.weight": rng.standard_normal((1024, 1024), np.float32) for i in range(n)
    }
    record = ArrayRecord({k: Array(v) for k, v in tensors.items()})
    digest = hashlib.sha256(save(tensors)).hexdigest()
    del tensors
    size = sum(len(a.data) for a in record.values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp, "old"), Path(tmp, "new")
        old.mkdir()
        rows.append(_measure("decode+serialize", lambda: _old_store(record, digest, old)))
        node = {Node.LM_BASE_DIR: str(new)}
        rows.append(
            _measure("views+save_file", lambda: store_base(record, {"base_sha256": digest}, node))
        )
        same = (old / f"{digest}.safetensors").read_bytes() == (
            new / f"{digest}.safetensors"
        ).read_bytes()
    if not same:
        raise SystemExit("the two paths wrote different files")
    print(f"base: {n} float32 tensors, {size / MIB:,.1f} MiB in the message; both files identical")
    for r in rows:
        print(
            f"  {r['path']:<18} peak allocated {r['peak_allocated_bytes'] / MIB:8.1f} MiB  {r['seconds']:6.2f} s"
        )
    if args.json:
        doc = {"message_bytes": size, "tensors": n, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
