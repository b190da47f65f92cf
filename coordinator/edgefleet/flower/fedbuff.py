"""FedBuff: asynchronous buffered aggregation on Flower's Grid (``strategy=fedbuff``).

Why: a synchronous round waits for its slowest device (or its timeout), so on a real fleet,
where a few devices are several times slower than the rest, every round costs the slowest
device's time. FedBuff (Nguyen et al., AISTATS 2022) keeps every device busy instead: each one
trains on whatever model version is current when it becomes free, the server folds each update
into a buffer as it arrives and, every ``buffer`` (K) arrivals, applies their weighted mean to
the global model. An update computed on version ``v`` arriving when the model is at version
``t`` has staleness ``s = t - v``; it weighs ``num_examples / sqrt(1 + s)`` and is dropped when
``s > max_staleness``, so a very slow device cannot drag the model back.

Flower's strategies are round-shaped (``configure_train`` then ``aggregate_train`` over the
round's replies), so this is a driver of its own on the Grid's ``push_messages`` /
``pull_messages``: one train message out per free node, replies pulled every
``poll-interval``, a new message to a node the moment its reply is in. It reuses the rest:

* **Selection**: only the nodes the ServerApp selected (its :class:`SelectedGrid` view) get
  work; ``fraction-train`` caps how many train at once.
* **HeteroFL widths**: every node gets the leading slice of its width
  (:func:`edgefleet.flower.serverapp.pick_width`), returns a delta of that slice, and
  :func:`edgefleet.flower.heterofl.aggregate` averages each element over the buffered updates
  that hold it.
* **Compressed updates**: the deltas may arrive encoded (:mod:`edgefleet.fl.update_codec`).

"Round" ``r`` in the run record is the ``r``-th aggregation (model version ``r``); its
``seconds`` is the time since the previous aggregation.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from edgefleet.fl.contract import Metric, Record, TrainConfig
from edgefleet.fl.update_codec import parse_codec
from edgefleet.flower import heterofl
from edgefleet.flower import model as fl_model
from edgefleet.flower.grid_io import per_device_metric, weighted_metric
from edgefleet.flower.strategies import to_record
from edgefleet.flower.updates import delta_of, wire_bytes

if TYPE_CHECKING:
    from edgefleet.flower.run_settings import RunSettings

__all__ = ["Buffer", "run_buffered", "staleness_weight"]


def staleness_weight(staleness: int) -> float:
    """FedBuff's polynomial discount: ``1 / sqrt(1 + s)``."""
    return 1.0 / math.sqrt(1.0 + max(0, staleness))


@dataclass
class _Update:
    delta: fl_model.Arrays
    weight: float
    staleness: int
    reply: Message


@dataclass
class Buffer:
    """The server's state: the global model's versions and the buffered updates.

    Pure bookkeeping (no Flower I/O), so the aggregation rule is testable on its own.
    """

    params: fl_model.Arrays
    size: int
    max_staleness: int
    server_lr: float = 1.0
    version: int = 0
    dropped: int = 0
    pending: list[_Update] = field(default_factory=list)
    _snapshots: dict[int, fl_model.Arrays] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"buffer must be at least 1, got {self.size}")
        if self.max_staleness < 0:
            raise ValueError(f"max-staleness must be at least 0, got {self.max_staleness}")
        self._snapshots[self.version] = self.params

    def snapshot(self, version: int) -> fl_model.Arrays:
        """The global model at ``version`` (kept while an update from it may still count)."""
        return self._snapshots[version]

    def offer(self, version: int, delta: fl_model.Arrays, examples: float, reply: Message) -> bool:
        """Buffer an update trained on ``version``; False (and counted) when too stale."""
        staleness = self.version - version
        if staleness > self.max_staleness:
            self.dropped += 1
            return False
        self.pending.append(_Update(delta, float(examples), staleness, reply))
        return True

    @property
    def full(self) -> bool:
        """K updates are in: time to aggregate."""
        return len(self.pending) >= self.size

    def aggregate(self) -> list[_Update]:
        """Apply the buffer's weighted mean delta (element-wise over holders); next version.

        Returns the updates that went in (their replies carry the round's metrics).
        """
        used, self.pending = self.pending, []
        zeros = {k: np.zeros_like(v) for k, v in self.params.items()}
        # the discount scales each delta; the mean is over example counts only, so a buffer of
        # equally stale updates still moves the model less (a normalised weight would cancel it)
        scaled = [
            (
                {k: d * np.float32(staleness_weight(u.staleness)) for k, d in u.delta.items()},
                u.weight,
            )
            for u in used
        ]
        mean = heterofl.aggregate(zeros, scaled)
        self.params = {
            k: (v + np.float32(self.server_lr) * mean[k]).astype(np.float32)
            for k, v in self.params.items()
        }
        self.version += 1
        self._snapshots[self.version] = self.params
        for old in [v for v in self._snapshots if v < self.version - self.max_staleness]:
            del self._snapshots[old]  # no update trained on it can be accepted any more
        return used


class _Recorder(Protocol):
    doc: dict[str, Any]

    def write(self, **update: Any) -> None: ...


@dataclass
class _Flight:
    node: int
    version: int
    sent: fl_model.Arrays
    at: float


def run_buffered(
    grid: Grid,
    view: Grid,
    settings: RunSettings,
    params: fl_model.Arrays,
    facts: Mapping[int, Mapping[str, Any]],
    widths: Mapping[int, float],
    test_score: Callable[[Mapping[str, Any]], tuple[float, float] | tuple[None, None]],
    rec: _Recorder,
) -> fl_model.Arrays:
    """Run ``settings.num_rounds`` buffered aggregations; returns the final global model.

    Fails (RuntimeError) when no update arrives for ``round-timeout`` seconds or fewer than
    ``min-devices`` selected nodes are online with nothing in flight; a single message that
    outlives ``round-timeout`` only frees its node for new work.
    """
    codec = parse_codec(settings.update_codec)
    buf = Buffer(params, settings.buffer, settings.max_staleness, settings.server_lr)
    rng = random.Random(settings.seed)
    shapes = {
        w: fl_model.shapes(settings.arch, w, settings.arch_config) for w in set(widths.values())
    }
    arch_configs = {
        w: json.dumps(fl_model.arch_config(settings.arch, w, settings.arch_config))
        for w in set(widths.values())
    }
    selected = list(widths)
    concurrency = max(settings.min_devices, math.ceil(len(selected) * settings.fraction_train))
    flights: dict[str, _Flight] = {}
    bytes_up = bytes_down = failed = 0
    last_agg = last_progress = time.monotonic()

    def dispatch(nodes: list[int]) -> None:
        nonlocal bytes_down
        messages = []
        for node in nodes:
            width = widths[node]
            local = heterofl.slice_params(buf.params, shapes[width])
            config = ConfigRecord(
                {
                    TrainConfig.ARCH: settings.arch, TrainConfig.ARCH_CONFIG: arch_configs[width],
                    TrainConfig.FRONTEND: settings.frontend, TrainConfig.LR: settings.lr,
                    TrainConfig.LOCAL_EPOCHS: settings.local_epochs,
                    TrainConfig.BATCH_SIZE: settings.batch_size,
                    TrainConfig.SERVER_ROUND: buf.version + 1, TrainConfig.PROXIMAL_MU: 0.0,
                    TrainConfig.UPDATE_CODEC: str(codec), TrainConfig.PARTIAL_UPDATES: True,
                }
            )  # fmt: skip
            content = RecordDict({Record.ARRAYS: to_record(local), Record.CONFIG: config})
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        if not messages:
            return
        ids = list(grid.push_messages(messages))
        now = time.monotonic()
        for mid, msg in zip(ids, messages, strict=True):
            node = msg.metadata.dst_node_id
            sent = {k: v.numpy() for k, v in msg.content.array_records[Record.ARRAYS].items()}
            flights[mid] = _Flight(node, buf.version, sent, now)
        bytes_down += wire_bytes(messages)

    while buf.version < settings.num_rounds:
        busy = {f.node for f in flights.values()}
        online = [n for n in view.get_node_ids() if n in widths]
        if len(online) < settings.min_devices and not flights:
            raise RuntimeError(
                f"fedbuff version {buf.version}: {len(online)} selected device(s) online, "
                f"min-devices is {settings.min_devices}"
            )
        free = [n for n in online if n not in busy]
        rng.shuffle(free)
        dispatch(free[: max(0, concurrency - len(flights))])

        replies = list(grid.pull_messages(list(flights))) if flights else []
        for reply in replies:
            flight = flights.pop(reply.metadata.reply_to_message_id, None)
            if flight is None:
                continue
            if reply.has_error():
                failed += 1
                continue
            bytes_up += wire_bytes([reply])
            last_progress = time.monotonic()
            metrics = next(iter(reply.content.metric_records.values()))
            delta = delta_of(flight.sent, reply, codec)
            buf.offer(flight.version, delta, float(metrics[Metric.NUM_EXAMPLES]), reply)  # type: ignore[arg-type]
            if buf.full:
                used = buf.aggregate()
                ok = [u.reply for u in used]
                test_loss, test_acc = test_score(buf.params)
                now = time.monotonic()
                rec.doc["rounds"].append(
                    {
                        "round": buf.version,
                        "participants": [facts[r.metadata.src_node_id]["device"] for r in ok],
                        "staleness": [u.staleness for u in used],
                        "dropped_stale": buf.dropped,
                        "failed": failed,
                        "train_loss": weighted_metric(ok, Metric.TRAIN_LOSS, Metric.NUM_EXAMPLES),
                        "client_eval_acc": weighted_metric(
                            ok, Metric.EVAL_ACC, Metric.EVAL_EXAMPLES
                        ),
                        "client_local_acc": weighted_metric(
                            ok, Metric.LOCAL_EVAL_ACC, Metric.EVAL_EXAMPLES
                        ),
                        "device_eval_acc": per_device_metric(ok, facts, Metric.EVAL_ACC),
                        "test_loss": test_loss,
                        "test_acc": test_acc,
                        "seconds": now - last_agg,
                        "ended": time.time(),
                        "codec": str(codec),
                        "codec_residual": weighted_metric(
                            ok, Metric.CODEC_RESIDUAL, Metric.NUM_EXAMPLES
                        ),
                        "bytes_up": bytes_up,
                        "bytes_down": bytes_down,
                    }
                )
                rec.write()
                last_agg = now
                bytes_up = bytes_down = failed = 0
                buf.dropped = 0
                if buf.version >= settings.num_rounds:
                    break
        now = time.monotonic()
        for mid, flight in list(flights.items()):
            if now - flight.at > settings.round_timeout:
                del flights[mid]  # its node gets new work; a late reply is never pulled
                failed += 1
        if now - last_progress > settings.round_timeout:
            raise RuntimeError(
                f"fedbuff version {buf.version}: no update arrived in "
                f"{settings.round_timeout:.0f}s ({len(buf.pending)} of {buf.size} buffered)"
            )
        if not replies:
            time.sleep(settings.poll_interval)
    return buf.params
