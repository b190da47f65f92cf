"""FedAvg vs FedBuff on a virtual clock: the real device training and FedBuff's own Buffer.

Why a virtual clock beside the loopback run (:mod:`benchmarks.fl_async_kws` without
``--virtual``): on a 2-core box shared with a loaded test suite (load average 30-50), Flower's
SuperNodes missed their heartbeats (``Node Unavailable``) and the SuperLink's SQLite state
was locked, so the loopback run failed before its first round -- and where it runs, its wall
times measure the box's other work as much as the devices'.

What is real: every update is the ClientApp's own train handler
(:func:`edgefleet.agent.fl.clientapp.fine_tune`: the device computes the MFCC of its raw audio
and trains DS-CNN with torch), one at a time in this process; FedBuff's aggregation is
:class:`edgefleet.flower.fedbuff.Buffer` (staleness discount, bounded staleness, server step)
and FedAvg's is the weighted mean of whole models (:func:`edgefleet.flower.heterofl.aggregate`).
What is simulated: time. An update lasts the CPU time it took here (``process_time``: what it
would take on a device of its own, whatever else the box runs), times ``slowdown`` on a slow
device; a discrete-event clock orders the arrivals. Not counted, for either strategy:
transport, the ClientApp's process start and the server's scoring of each new model.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

Arrays = dict[str, npt.NDArray[np.float32]]
Score = Callable[[Arrays], float]

__all__ = ["Devices", "run_fedavg", "run_fedbuff"]


class Devices:
    """The devices' shards on disk and one training update of device ``i`` from a model."""

    def __init__(self, root: Path, shards: Sequence[Any], round_config: dict[str, Any]) -> None:
        from edgefleet.fl.partition import save_shard

        self.paths = [save_shard(s, root / f"device-{i}.npz") for i, s in enumerate(shards)]
        self.config = round_config
        self.seconds: list[tuple[int, float]] = []  # (device, CPU seconds) of every update

    def __len__(self) -> int:
        return len(self.paths)

    def update(self, i: int, params: Arrays, version: int) -> tuple[Arrays, float, float]:
        """Device ``i`` trains ``params`` (model version ``version``): model, examples, CPU s."""
        from flwr.app import ConfigRecord, Context, RecordDict

        from edgefleet.agent.fl.clientapp import fine_tune
        from edgefleet.agent.fl.supernode import node_config_for
        from edgefleet.fl.contract import Metric, Record, TrainConfig
        from edgefleet.flower.strategies import arrays_of

        # no RAM figure: the device trains the full model, as on the loopback run's Pi 4s
        node = node_config_for(f"sim-{i:03d}", "rpi4", 0, str(self.paths[i]), partition_id=i)
        context = Context(1, 2, node, RecordDict(), {})  # type: ignore[arg-type]
        cfg = ConfigRecord({**self.config, TrainConfig.SERVER_ROUND: version + 1})
        started = time.process_time()
        content = fine_tune(params, cfg, context)
        seconds = time.process_time() - started
        self.seconds.append((i, seconds))
        metrics = content.metric_records[Record.METRICS]
        examples = float(cast(float, metrics[Metric.NUM_EXAMPLES]))
        return arrays_of(content.array_records[Record.ARRAYS]), examples, seconds


def _record(rounds: list[dict[str, Any]], t: float, acc: float, **extra: Any) -> None:
    rounds.append({"round": len(rounds) + 1, "ended": t, "test_acc": acc, **extra})
    print(f"    v{len(rounds)} at {t:.1f}s: {acc:.1%}", flush=True)


def run_fedavg(
    devices: Devices, params: Arrays, slow: set[int], slowdown: float, rounds: int, score: Score
) -> dict[str, Any]:
    """Synchronous rounds: each ends when its slowest device's update arrives."""
    from edgefleet.flower import heterofl

    out: list[dict[str, Any]] = []
    now = 0.0
    for rnd in range(rounds):
        updates, durations = [], []
        for i in range(len(devices)):
            new, examples, seconds = devices.update(i, params, rnd)
            updates.append((new, examples))
            durations.append(seconds * (slowdown if i in slow else 1.0))
        params = heterofl.aggregate(params, updates)
        now += max(durations)
        _record(out, now, score(params), participants=list(range(len(devices))), failed=0)
    return {"started": 0.0, "rounds": out, "state": "succeeded"}


def run_fedbuff(
    devices: Devices,
    params: Arrays,
    slow: set[int],
    slowdown: float,
    aggregations: int,
    score: Score,
    *,
    buffer: int,
    max_staleness: int,
    server_lr: float,
) -> dict[str, Any]:
    """Every device always busy on the newest model; every ``buffer`` arrivals, one step."""
    from flwr.app import Message

    from edgefleet.flower.fedbuff import Buffer

    buf = Buffer(params, buffer, max_staleness, server_lr)
    out: list[dict[str, Any]] = []
    pending: list[tuple[float, int, int, int, Arrays, Arrays, float]] = []
    seq = 0

    def dispatch(i: int, now: float) -> None:
        nonlocal seq
        sent = buf.params
        new, examples, seconds = devices.update(i, sent, buf.version)
        finish = now + seconds * (slowdown if i in slow else 1.0)
        heapq.heappush(pending, (finish, seq, i, buf.version, sent, new, examples))
        seq += 1

    for i in range(len(devices)):
        dispatch(i, 0.0)
    arrived: list[int] = []
    while buf.version < aggregations:
        now, _, i, version, sent, new, examples = heapq.heappop(pending)
        delta = {k: v - sent[k] for k, v in new.items()}
        buf.offer(version, delta, examples, cast(Message, None))
        arrived.append(i)
        if buf.full:
            used = buf.aggregate()
            _record(
                out, now, score(buf.params), participants=arrived,
                staleness=[u.staleness for u in used], dropped_stale=buf.dropped, failed=0,
            )  # fmt: skip
            arrived, buf.dropped = [], 0
        if buf.version < aggregations:
            dispatch(i, now)
    return {"started": 0.0, "rounds": out, "state": "succeeded"}


def round_config(
    arch: str, arch_config: dict[str, Any], frontend: dict[str, Any], args: Any
) -> dict[str, Any]:
    """The train config a ServerApp sends (the loopback run's settings)."""
    from edgefleet.fl.contract import TrainConfig

    return {
        TrainConfig.ARCH: arch, TrainConfig.ARCH_CONFIG: json.dumps(arch_config),
        TrainConfig.FRONTEND: json.dumps(frontend), TrainConfig.LR: args.lr,
        TrainConfig.LOCAL_EPOCHS: args.local_epochs, TrainConfig.BATCH_SIZE: args.batch_size,
        TrainConfig.PROXIMAL_MU: 0.0, TrainConfig.UPDATE_CODEC: "none",
    }  # fmt: skip
