"""Talking to Flower's Grid, shared by every round shape (sync rounds, FedBuff, SecAgg+).

Kept apart from :mod:`edgefleet.flower.serverapp` so the round-shape modules it calls
(:mod:`edgefleet.flower.fedbuff`, :mod:`edgefleet.flower.secagg`) can use the same push/pull
driver and reply metrics without importing the ServerApp back (no import circle).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["exchange", "per_device_metric", "weighted_metric"]


def exchange(
    grid: Grid, messages: Sequence[Message], timeout: float, poll_interval: float
) -> list[Message]:
    """Push ``messages`` and pull replies every ``poll_interval`` until all came or ``timeout``.

    A node that dies mid-round costs at most ``timeout``; its missing reply is simply absent
    (Flower also turns messages to nodes it sees go offline into error replies).
    """
    if not messages:
        return []
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(pending)))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(poll_interval)
    return replies


def weighted_metric(replies: Sequence[Message], key: str, weight_key: str) -> float | None:
    """The ``weight_key``-weighted mean of metric ``key`` over the replies that carry it."""
    num = den = 0.0
    for r in replies:
        m = next(iter(r.content.metric_records.values()), None)
        if m is None or key not in m:
            continue
        w = float(m.get(weight_key, 1))  # type: ignore[arg-type]
        num += w * float(m[key])  # type: ignore[arg-type]
        den += w
    return num / den if den else None


def per_device_metric(
    replies: Sequence[Message], facts: Mapping[int, Mapping[str, Any]], key: str
) -> dict[str, float]:
    """``{device id: metric}`` over the replies that carry ``key``."""
    out: dict[str, float] = {}
    for r in replies:
        metrics = next(iter(r.content.metric_records.values()), None)
        if metrics is not None and key in metrics:
            device = str(
                facts.get(r.metadata.src_node_id, {}).get("device", r.metadata.src_node_id)
            )
            out[device] = float(metrics[key])  # type: ignore[arg-type]
    return out
