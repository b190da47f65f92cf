"""Local data and the replayed workload of a simulated device.

Why: a simulated device has no users, yet the rollout gates and dashboards need real
inference traffic with known labels. :class:`Workload` replays the device's own local shard
(non-IID Dirichlet over the digits labels, optionally shifted -- see
``edgefleet/fl/partition.py``) through the active variant at a fixed rate, via the same
:meth:`Serving.infer` path the local endpoint uses, so latency, throughput, errors and accuracy
are measured exactly as for real requests.

Local data is either a ``.npz`` shard written by ``save_shard`` (what a real deployment or the
simulator hands a device) or ``digits``: scikit-learn's digits partitioned on the device itself
(imported lazily: only simulated devices need scikit-learn). The device partitions the 40 %
of digits the coordinator never trains on, with the coordinator's own split, so replayed
accuracy is held-out accuracy.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.runtimes import InferenceError, NotLoadedError
from edgefleet.agent.serving import Serving
from edgefleet.fl.contract import DIGITS_SPLIT_SEED

if TYPE_CHECKING:
    from edgefleet.fl.partition import Shard

__all__ = ["LocalDataSpec", "Workload", "load_local_data"]

log = logging.getLogger("edgefleet.agent.workload")


@dataclass(frozen=True)
class LocalDataSpec:
    """Where a device's local data comes from (``--local-data`` and the partition flags)."""

    source: str  # "digits" or a path to a .npz shard
    partition: int = 0
    partitions: int = 1
    seed: int = 0
    alpha: float = 0.5
    noise: float = 0.0
    rotate: int = 0  # max number of 90-degree turns (0: none)


def load_local_data(spec: LocalDataSpec) -> Shard:
    """This device's shard: train part (for fine-tuning) and held-out part (for replay/eval)."""
    from edgefleet.fl.partition import load_shard, make_shards

    if spec.source != "digits":
        return load_shard(Path(spec.source))
    if not 0 <= spec.partition < spec.partitions:
        raise ValueError(f"partition {spec.partition} is not in 0..{spec.partitions - 1}")
    import numpy as np
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    _, x_rest, _, y_rest = train_test_split(
        x, y, test_size=0.4, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    shards = make_shards(
        x_rest,
        y_rest,
        spec.partitions,
        alpha=spec.alpha,
        seed=spec.seed,
        eval_fraction=0.4,
        noise=spec.noise,
        max_rotate=spec.rotate,
    )
    return shards[spec.partition]


class Workload:
    """Replays samples (one per request) at ``rate`` requests/s in a daemon thread.

    Paced against a clock (not sleep-after-work), so the rate holds while inference is fast
    and degrades visibly (throughput below rate) when the device cannot keep up. Before a
    variant is active, requests are skipped, not counted.
    """

    def __init__(self, serving: Serving, shard: Shard, rate: float, use_train: bool = True):
        import numpy as np

        if rate <= 0:
            raise ValueError("workload rate must be > 0")
        self.serving = serving
        self.rate = rate
        # Replay everything the device has: requests are not training.
        x, y = shard.x_eval, shard.y_eval
        if use_train:
            x = np.concatenate([shard.x_eval, shard.x_train])
            y = np.concatenate([shard.y_eval, shard.y_train])
        self._x, self._y = x, y
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        i = 0
        while not self._stop.is_set():
            k = i % len(self._y)
            try:
                self.serving.infer(self._x[k : k + 1], [int(self._y[k])])
                self.sent += 1
            except NotLoadedError:
                pass
            except InferenceError as exc:
                self.failed += 1
                log.debug("workload request failed: %s", exc)
            i += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay < -1.0:  # fell far behind: do not burst to catch up
                next_at = time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
