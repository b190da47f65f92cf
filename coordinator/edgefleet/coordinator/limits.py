"""Bounds on what clients can make the coordinator hold: descriptors, connections, streams.

Without them a few hostile or broken clients hold the coordinator's resources for as long as
they like (issue 14): a thousand DownloadArtifact streams nobody reads kept 1,081 descriptors
and 424 MB, health checks slowed from 1.4 to 364 ms, and at a 1,024-descriptor limit another
device's download failed with ``Too many open files``. Here:

- :func:`raise_fd_limit`: the soft descriptor limit goes up to the hard one at start, so
  the limit is the operator's (``ulimit -Hn``), not a distribution's default of 1,024.
- :func:`server_options`: gRPC core closes connections that never finish their handshake
  (raw TCP or TLS), sit idle, or live too long, and refuses clients that ping too often.
- :class:`StreamSlots`: concurrent DownloadArtifact streams are capped per device and in
  total; over the cap a caller gets RESOURCE_EXHAUSTED at once instead of a slot.

The per-message write deadline of a stream whose client stops reading is
:class:`edgefleet.interceptors.WriteDeadlineInterceptor`.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Limits", "StreamLimitError", "StreamSlots", "raise_fd_limit", "server_options"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """The coordinator's resource limits (``edgefleet coordinator start --help`` sets them)."""

    # An agent downloads one variant at a time; two leaves room for a resume racing the
    # cancel of the stream it replaces.
    max_streams_per_device: int = 2
    max_streams: int = 256  # each holds an open archive and up to a flow-control window
    # seconds one chunk may wait for the client to take it: a 64 KiB chunk at 20 kbit/s
    # takes 26 s, so a slow link never trips it; a client that stopped reading does
    stream_write_timeout: float = 60.0
    handshake_timeout: float = 10.0  # TCP accept -> TLS and HTTP/2 settings done
    connection_idle: float = 300.0  # no call in flight for this long: close (GOAWAY)
    connection_age: float = 3600.0  # then GOAWAY; clients reconnect transparently
    connection_age_grace: float = 600.0  # calls in flight get this long to finish

    def __post_init__(self) -> None:
        for name in ("max_streams_per_device", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        for name in (
            "stream_write_timeout",
            "handshake_timeout",
            "connection_idle",
            "connection_age",
            "connection_age_grace",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0 seconds")


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC core channel arguments that bound connections (see gRPC's ``grpc_types.h``)."""

    def ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    return [
        # a connection that has not finished TLS and sent its HTTP/2 settings by then is closed
        ("grpc.server_handshake_timeout_ms", ms(limits.handshake_timeout)),
        ("grpc.max_connection_idle_ms", ms(limits.connection_idle)),
        ("grpc.max_connection_age_ms", ms(limits.connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(limits.connection_age_grace)),
        # find dead peers: ping after 2 min of silence, drop the connection if no answer in 20 s
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # agents do not ping; a client pinging more often than this, or with no call in
        # flight, is told GOAWAY (too_many_pings) after max_ping_strikes
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 60_000),
        ("grpc.http2.max_ping_strikes", 2),
        # calls in flight on one connection (an edge gateway multiplexes many devices on
        # one); more wait in the client until one finishes
        ("grpc.max_concurrent_streams", 1000),
    ]


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (before, after).

    The soft limit is all a process gets by default, often 1,024, and exceeding it fails
    unrelated calls with ``Too many open files``. Raising it needs no privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS caps below an infinite hard limit
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft, soft
    log.info("raised the open-file limit from %d to %d", soft, target)
    return soft, target


class StreamLimitError(Exception):
    """Over a stream cap; ``str()`` is the message for the client (RESOURCE_EXHAUSTED)."""


class StreamSlots:
    """Counts the streams in flight, per device and in total, and refuses one over a cap.

    Used from the event loop only (no lock needed: take and release never await).
    """

    def __init__(self, per_device: int, total: int) -> None:
        self.per_device = per_device
        self.total = total
        self._by_device: dict[str, int] = {}
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def hold(self, device_id: str) -> Iterator[None]:
        """A slot for ``device_id`` for the ``with`` block, or :class:`StreamLimitError`."""
        held = self._by_device.get(device_id, 0)
        if held >= self.per_device:
            raise StreamLimitError(
                f"device {device_id} already has {held} downloads in flight "
                f"(limit {self.per_device}); finish or cancel one first"
            )
        if self._in_flight >= self.total:
            raise StreamLimitError(
                f"the coordinator is serving its limit of {self.total} downloads; retry later"
            )
        self._by_device[device_id] = held + 1
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            left = self._by_device[device_id] - 1
            if left:
                self._by_device[device_id] = left
            else:
                del self._by_device[device_id]
